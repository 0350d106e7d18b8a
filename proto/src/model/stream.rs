//! Streaming safetensors: the header computed from names, dtypes and shapes
//! alone, the data encoded piece by piece into any writer. A model of
//! gigabytes is written (to a file, a hasher, an upload) without a second
//! copy of it in memory, and the bytes are exactly those of
//! `safetensors::serialize` (same header JSON, same tensor order).
//!
//! Byte offsets and lengths are `u64` with checked arithmetic: nothing here
//! depends on a 4 GiB (or 2 GiB) boundary.

use std::collections::HashMap;
use std::io::Write;

use safetensors::tensor::{Metadata, TensorInfo};

use super::{Dtype, ModelError, Result};

/// Length of the little-endian header-size prefix.
const PREFIX: u64 = 8;
/// The largest header `safetensors` reads back.
const MAX_HEADER: u64 = 100_000_000;
/// Elements encoded per write: 256 KiB of F32.
const PIECE: usize = 64 * 1024;

/// One tensor to write: values held as f32, written in `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Its name in the file.
    pub name: &'a str,
    /// The dtype it is written in.
    pub dtype: Dtype,
    /// Its shape, outermost first.
    pub shape: &'a [usize],
    /// Its values, row-major.
    pub data: &'a [f32],
}

/// A safetensors file laid out but not written: the header is built, the
/// tensors are borrowed in file order.
#[derive(Debug)]
pub struct Layout<'a> {
    /// The 8-byte size prefix and the space-padded JSON header.
    head: Vec<u8>,
    /// Tensors in file order (descending dtype alignment, then name).
    tensors: Vec<TensorRef<'a>>,
    /// Bytes of the data section.
    data_len: u64,
}

/// `a * b` for a byte count, or the overflow error naming `what`.
fn mul(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| ModelError::Overflow {
        what: what.to_string(),
    })
}

/// `a + b` for a byte count, or the overflow error naming `what`.
fn add(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| ModelError::Overflow {
        what: what.to_string(),
    })
}

/// A `u64` byte offset as the `usize` the safetensors header holds.
fn offset(v: u64, name: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| ModelError::Overflow {
        what: format!("tensor '{name}': offset {v} on this platform"),
    })
}

/// Bytes of `elements` values of `dtype` (u64: never truncated).
pub fn data_bytes(elements: u64, dtype: Dtype) -> Result<u64> {
    mul(elements, dtype.size() as u64, "tensor bytes")
}

/// Byte ranges `[start, end)` of tensors of the given element counts and
/// dtypes laid out back to back, in the order given.
pub fn offsets(tensors: &[(u64, Dtype)]) -> Result<Vec<(u64, u64)>> {
    let mut at = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for &(elements, dtype) in tensors {
        let end = add(at, data_bytes(elements, dtype)?, "data section")?;
        out.push((at, end));
        at = end;
    }
    Ok(out)
}

impl<'a> Layout<'a> {
    /// Lays out `tensors` with optional string metadata in the header.
    pub fn new(
        mut tensors: Vec<TensorRef<'a>>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Self> {
        // The order `safetensors::serialize` uses, so the bytes are its bytes.
        tensors.sort_by(|a, b| b.dtype.st().cmp(&a.dtype.st()).then(a.name.cmp(b.name)));
        let sizes: Vec<(u64, Dtype)> = tensors
            .iter()
            .map(|t| (t.data.len() as u64, t.dtype))
            .collect();
        let ranges = offsets(&sizes)?;
        let mut infos = Vec::with_capacity(tensors.len());
        for (t, &(start, end)) in tensors.iter().zip(&ranges) {
            let elements: u64 = t.shape.iter().try_fold(1u64, |acc, &d| {
                mul(acc, d as u64, &format!("tensor '{}': shape", t.name))
            })?;
            if elements != t.data.len() as u64 {
                return Err(ModelError::TensorSize {
                    shape: t.shape.to_vec(),
                    expected: usize::try_from(elements).unwrap_or(usize::MAX),
                    found: t.data.len(),
                });
            }
            let info = TensorInfo {
                dtype: t.dtype.st(),
                shape: t.shape.to_vec(),
                data_offsets: (offset(start, t.name)?, offset(end, t.name)?),
            };
            infos.push((t.name.to_string(), info));
        }
        let data_len = ranges.last().map_or(0, |&(_, end)| end);
        let meta = Metadata::new(metadata, infos)
            .map_err(|e| ModelError::File(format!("cannot lay out model: {e}")))?;
        let json = serde_json::to_vec(&meta)
            .map_err(|e| ModelError::File(format!("cannot serialise model header: {e}")))?;
        let header_len = padded(json.len() as u64);
        if header_len > MAX_HEADER {
            return Err(ModelError::File(format!(
                "model header of {header_len} bytes is above the safetensors limit of {MAX_HEADER}"
            )));
        }
        let mut head = Vec::with_capacity(json.len() + 16);
        head.extend_from_slice(&header_len.to_le_bytes());
        head.extend_from_slice(&json);
        // Padded with spaces to a multiple of 8, as safetensors does.
        head.resize(PREFIX as usize + header_len as usize, b' ');
        Ok(Layout {
            head,
            tensors,
            data_len,
        })
    }

    /// Bytes of the whole file.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.data_len
    }

    /// The size prefix and header: the file's first bytes.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorRef<'a>] {
        &self.tensors
    }

    /// True when the file would hold nothing (it always holds a header).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the file to `w` in pieces of a few hundred KiB; returns the
    /// bytes written. An I/O error or a value that does not fit its dtype
    /// stops the write (what was written so far is the caller's to discard).
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> Result<u64> {
        let io = |e: std::io::Error| ModelError::File(format!("cannot write model: {e}"));
        w.write_all(&self.head).map_err(io)?;
        let mut buf = Vec::with_capacity(PIECE * 4);
        for t in &self.tensors {
            for (i, piece) in t.data.chunks(PIECE).enumerate() {
                buf.clear();
                t.dtype.encode_into(t.name, i * PIECE, piece, &mut buf)?;
                w.write_all(&buf).map_err(io)?;
            }
        }
        Ok(self.len())
    }
}

/// `len` rounded up to a multiple of 8.
fn padded(len: u64) -> u64 {
    len.div_ceil(PREFIX) * PREFIX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_above_four_gib_are_exact() -> Result<()> {
        // 2^31 F32 elements are 8 GiB; a u32 computation would wrap to 0.
        let big = 1u64 << 31;
        let r = offsets(&[(big, Dtype::F32), (3, Dtype::F16), (big + 1, Dtype::BF16)])?;
        assert_eq!(r[0], (0, 1 << 33));
        assert_eq!(r[1], (1 << 33, (1 << 33) + 6));
        assert_eq!(r[2], ((1 << 33) + 6, (1 << 33) + 6 + (big + 1) * 2));
        assert!(r[2].1 > u64::from(u32::MAX));
        assert_eq!(data_bytes(u64::from(u32::MAX) + 1, Dtype::F32)?, 1 << 34);
        Ok(())
    }

    #[test]
    fn byte_counts_that_overflow_u64_are_errors_not_wraps() {
        assert!(matches!(
            data_bytes(u64::MAX / 2, Dtype::F32),
            Err(ModelError::Overflow { .. })
        ));
        assert!(matches!(
            offsets(&[(u64::MAX / 4, Dtype::F32), (1, Dtype::F32)]),
            Err(ModelError::Overflow { .. })
        ));
    }

    #[test]
    fn padding_is_to_eight_bytes() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 8);
        assert_eq!(padded(8), 8);
        assert_eq!(padded(u64::from(u32::MAX)), u64::from(u32::MAX) + 1);
    }
}
