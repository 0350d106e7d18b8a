//! The safetensors codec and model files.
//!
//! A tensor is held as `f32` whatever its file said: secure aggregation, the
//! optimiser and the external trainers' deltas all work in f32. F16 and BF16
//! tensors are accepted and remember their [`Dtype`], so the global model,
//! every checkpoint and the external trainer's hand-off are written back in
//! the dtype the data scientist chose (values rounded to nearest even).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use half::{bf16, f16};
use sha2::{Digest, Sha256};

use super::stream::{Layout, TensorRef};
use super::{Model, ModelError, Result, Tensor};

/// How a tensor is stored in a safetensors file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE 754 single precision (the default).
    #[default]
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
}

impl Dtype {
    /// The name safetensors uses.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    pub(super) fn st(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
        }
    }

    fn from_st(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F16 => Some(Dtype::F16),
            safetensors::Dtype::BF16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    /// Appends the little-endian bytes of `data` (elements `base..` of
    /// tensor `name`) in this dtype to `out`; a finite value that does not
    /// fit (above 65504 in F16) is an error, not an infinity.
    pub(super) fn encode_into(
        self,
        name: &str,
        base: usize,
        data: &[f32],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        // One loop per dtype over a sized buffer: a per-element match and
        // push kept the f32 case (every download) from running as a copy.
        // A value that does not fit leaves `out` as it was.
        let start = out.len();
        out.resize(start + data.len() * self.size(), 0);
        let dst = &mut out[start..];
        // `conv` gives the two bytes and whether they are finite.
        let half = |conv: fn(f32) -> ([u8; 2], bool), dst: &mut [u8]| {
            for (i, (o, &v)) in dst.chunks_exact_mut(2).zip(data).enumerate() {
                let (h, finite) = conv(v);
                if v.is_finite() && !finite {
                    return Err(i);
                }
                o.copy_from_slice(&h);
            }
            Ok(())
        };
        let done = match self {
            Dtype::F32 => {
                for (o, v) in dst.chunks_exact_mut(4).zip(data) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
                Ok(())
            }
            Dtype::F16 => half(
                |v| {
                    let h = f16::from_f32(v);
                    (h.to_le_bytes(), h.is_finite())
                },
                dst,
            ),
            Dtype::BF16 => half(
                |v| {
                    let h = bf16::from_f32(v);
                    (h.to_le_bytes(), h.is_finite())
                },
                dst,
            ),
        };
        done.or_else(|i| {
            out.truncate(start);
            self.check_fits(name, base + i, data[i])
        })
    }

    /// Whether `value` is stored as what it is: false only for a finite
    /// value that becomes an infinity in this dtype.
    fn fits(self, value: f32) -> bool {
        match self {
            Dtype::F32 => true,
            Dtype::F16 => !value.is_finite() || f16::from_f32(value).is_finite(),
            Dtype::BF16 => !value.is_finite() || bf16::from_f32(value).is_finite(),
        }
    }

    /// Errors when finite `value` (element `index` of tensor `name`) turns
    /// into an infinity in this dtype, so a model is never written with a
    /// value it did not hold; non-finite values pass (they were checked, or
    /// refused, where they came from).
    pub fn check_fits(self, name: &str, index: usize, value: f32) -> Result<()> {
        if !self.fits(value) {
            return Err(ModelError::File(format!(
                "tensor '{name}' element {index} = {value} does not fit dtype {self}"
            )));
        }
        Ok(())
    }

    /// The `f32` values of little-endian bytes in this dtype.
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// Bytes per element in a file.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Model {
    /// Serialise as safetensors, each tensor in its [`Dtype`]
    /// (little-endian), with optional string metadata in the header. The
    /// format of the global model, every checkpoint and the
    /// external-trainer hand-off, loadable unchanged by NumPy and PyTorch.
    pub fn to_safetensors(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        let layout = self.safetensors_layout(metadata)?;
        let len = usize::try_from(layout.len()).map_err(|_| ModelError::Overflow {
            what: format!("a {}-byte safetensors file in memory", layout.len()),
        })?;
        let mut out = Vec::with_capacity(len);
        layout.write_to(&mut out)?;
        Ok(out)
    }

    /// The safetensors layout of this model (header built, data not yet
    /// encoded): [`Layout::write_to`] streams the same bytes
    /// [`to_safetensors`](Self::to_safetensors) returns, without holding them.
    pub fn safetensors_layout(
        &self,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Layout<'_>> {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| TensorRef {
                name,
                dtype: t.dtype,
                shape: &t.shape,
                data: &t.data,
            })
            .collect();
        Layout::new(tensors, metadata)
    }

    /// Parse safetensors bytes; every tensor must be F32, F16 or BF16.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::File(format!("not a valid safetensors file: {e}")))?;
        let mut model = Model::new();
        for (name, view) in st.tensors() {
            let dtype =
                Dtype::from_st(view.dtype()).ok_or_else(|| ModelError::UnsupportedDtype {
                    name: name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                })?;
            let data = dtype.decode(view.data());
            let tensor = Tensor::new(view.shape().to_vec(), data)?.with_dtype(dtype);
            model.insert(name, tensor);
        }
        Ok(model)
    }

    /// The header metadata of safetensors bytes.
    pub fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::File(format!("not a valid safetensors file: {e}")))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Errors on the first NaN or infinity, naming its tensor.
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in &self.tensors {
            if let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ModelError::NonFinite {
                    name: name.clone(),
                    index,
                    value,
                });
            }
        }
        Ok(())
    }

    /// Errors unless `other` has the same names, shapes and dtypes.
    pub fn check_same_layout_and_dtypes(&self, other: &Model) -> Result<()> {
        self.check_same_layout(other)?;
        for (name, t) in &self.tensors {
            if let Some(theirs) = other.tensors.get(name)
                && theirs.dtype != t.dtype
            {
                return Err(ModelError::DtypeMismatch {
                    name: name.clone(),
                    expected: t.dtype,
                    found: theirs.dtype,
                });
            }
        }
        Ok(())
    }

    /// Bytes the model takes as f32, and its largest tensor with its bytes.
    fn f32_bytes(&self) -> (u64, Option<(&str, u64)>) {
        // Saturating: a count beyond u64 is "too large", never a wrapped small one.
        let total = (self.num_params() as u64).saturating_mul(4);
        let largest = self
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), (t.len() as u64).saturating_mul(4)))
            .max_by_key(|&(_, b)| b);
        (total, largest)
    }
}

/// A model read from a safetensors file, checked for use as a federation's
/// initial global model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    /// The tensors (as f32, each remembering its file dtype).
    pub model: Model,
    /// SHA-256 of the file's bytes (the coordinator's config hash covers it).
    pub sha256: [u8; 32],
}

impl ModelFile {
    /// Reads `path` and checks it: safetensors, F32/F16/BF16 only, at least
    /// one parameter, every value finite, and at most `max_bytes` once held
    /// as f32 (the limit is checked against the file size before reading).
    pub fn read(path: &Path, max_bytes: u64) -> Result<ModelFile> {
        let read_err = |e: std::io::Error| ModelError::Read {
            path: path.display().to_string(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".into()
            } else {
                e.to_string()
            },
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        // A file is never more than the f32 data plus the 100 MB header
        // limit of safetensors, so a longer one cannot fit: refuse it unread.
        if len > max_bytes.saturating_add(100 << 20) {
            return Err(ModelError::Read {
                path: path.display().to_string(),
                reason: format!("{len} bytes, far above limits.max_model_bytes = {max_bytes}"),
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let model = Model::from_safetensors(&bytes).map_err(|e| match e {
            ModelError::File(reason) => ModelError::Read {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        model.check_loadable(max_bytes)?;
        Ok(ModelFile { model, sha256 })
    }
}

impl Model {
    /// Errors unless the model is non-empty, finite and within `max_bytes`
    /// as f32.
    pub fn check_loadable(&self, max_bytes: u64) -> Result<()> {
        if self.num_params() == 0 {
            return Err(ModelError::Empty);
        }
        let (bytes, largest) = self.f32_bytes();
        if bytes > max_bytes {
            let (largest, largest_bytes) = largest.unwrap_or(("", 0));
            return Err(ModelError::TooLarge {
                bytes,
                limit: max_bytes,
                largest: largest.to_string(),
                largest_bytes,
            });
        }
        self.check_finite()
    }
}

#[cfg(test)]
mod tests;
