//! Model parameters as a named set of dense `f32` tensors.
//!
//! Tensors are stored row-major (C order), the layout NumPy and safetensors
//! use, so `np.asarray(data).reshape(shape)` recovers a tensor exactly.
//! The flat vector order used by [`Model::flatten`] is the tensors' name order
//! (byte-wise, as in a `BTreeMap`), each tensor row-major; every party
//! derives the same order from the names alone, which secure aggregation of
//! flat vectors relies on.

use std::collections::BTreeMap;

use super::error::{Result, TrainError};

/// A dense row-major `f32` tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values in row-major order.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that `data` fits `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TrainError::TensorSize {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// An all-zero tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; len],
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A model: tensors keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// The parameters, in name order.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(Tensor::len).sum()
    }

    /// All parameters in one vector: tensors in name order, each row-major.
    pub fn flatten(&self) -> Vec<f32> {
        let mut flat = Vec::with_capacity(self.num_params());
        for tensor in self.tensors.values() {
            flat.extend_from_slice(&tensor.data);
        }
        flat
    }

    /// The inverse of [`flatten`](Self::flatten): a model with `self`'s names
    /// and shapes holding the values of `flat`.
    pub fn unflatten_like(&self, flat: &[f32]) -> Result<Model> {
        let expected = self.num_params();
        if flat.len() != expected {
            return Err(TrainError::FlatLength {
                expected,
                found: flat.len(),
            });
        }
        let mut rest = flat;
        let mut tensors = BTreeMap::new();
        for (name, tensor) in &self.tensors {
            let (head, tail) = rest.split_at(tensor.len());
            tensors.insert(
                name.clone(),
                Tensor {
                    shape: tensor.shape.clone(),
                    data: head.to_vec(),
                },
            );
            rest = tail;
        }
        Ok(Model { tensors })
    }

    /// A model with the same layout and every value zero.
    pub fn zeros_like(&self) -> Model {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), Tensor::zeros(t.shape.clone())))
            .collect();
        Model { tensors }
    }

    /// Errors unless `other` has exactly the same tensor names and shapes.
    pub fn check_same_layout(&self, other: &Model) -> Result<()> {
        for name in other.tensors.keys() {
            if !self.tensors.contains_key(name) {
                return Err(TrainError::LayoutMismatch { name: name.clone() });
            }
        }
        for (name, tensor) in &self.tensors {
            let Some(theirs) = other.tensors.get(name) else {
                return Err(TrainError::LayoutMismatch { name: name.clone() });
            };
            if theirs.shape != tensor.shape {
                return Err(TrainError::ShapeMismatch {
                    name: name.clone(),
                    expected: tensor.shape.clone(),
                    found: theirs.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// `self - other`, element-wise (for example local − global = update).
    pub fn sub(&self, other: &Model) -> Result<Model> {
        let mut out = self.clone();
        out.add_scaled(other, -1.0)?;
        Ok(out)
    }

    /// `self += alpha * other`, element-wise.
    pub fn add_scaled(&mut self, other: &Model, alpha: f32) -> Result<()> {
        self.check_same_layout(other)?;
        for (name, tensor) in &mut self.tensors {
            // Layout was checked above, so the lookup cannot miss.
            if let Some(theirs) = other.tensors.get(name) {
                for (a, b) in tensor.data.iter_mut().zip(&theirs.data) {
                    *a += alpha * b;
                }
            }
        }
        Ok(())
    }

    /// `self *= alpha`, element-wise.
    pub fn scale(&mut self, alpha: f32) {
        for tensor in self.tensors.values_mut() {
            tensor.data.iter_mut().for_each(|v| *v *= alpha);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Model {
        let mut m = Model::new();
        m.insert(
            "weight",
            Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap(),
        );
        m.insert("bias", Tensor::new(vec![2], vec![-1., -2.]).unwrap());
        m
    }

    #[test]
    fn flatten_uses_name_order_and_round_trips() {
        let m = sample();
        assert_eq!(m.num_params(), 8);
        // "bias" sorts before "weight".
        assert_eq!(m.flatten(), vec![-1., -2., 1., 2., 3., 4., 5., 6.]);
        let back = m.unflatten_like(&m.flatten()).unwrap();
        assert_eq!(back, m);
        let other = m.unflatten_like(&[0.5; 8]).unwrap();
        assert_eq!(other.get("weight").unwrap().shape, vec![2, 3]);
        assert_eq!(other.flatten(), vec![0.5; 8]);
    }

    #[test]
    fn unflatten_rejects_wrong_length() {
        let err = sample().unflatten_like(&[0.0; 7]).unwrap_err();
        assert!(matches!(
            err,
            TrainError::FlatLength {
                expected: 8,
                found: 7
            }
        ));
    }

    #[test]
    fn tensor_new_checks_size() {
        let err = Tensor::new(vec![2, 2], vec![0.0; 3]).unwrap_err();
        assert!(err.to_string().contains("needs 4 values, got 3"), "{err}");
    }

    #[test]
    fn arithmetic_checks_layout() {
        let a = sample();
        let mut b = sample();
        b.scale(2.0);
        let d = b.sub(&a).unwrap();
        assert_eq!(d, a);
        let mut c = a.zeros_like();
        c.add_scaled(&a, 3.0).unwrap();
        assert_eq!(
            c.flatten(),
            a.flatten().iter().map(|v| v * 3.0).collect::<Vec<_>>()
        );
        let mut wrong = sample();
        wrong.insert("bias", Tensor::zeros(vec![3]));
        assert!(matches!(
            a.sub(&wrong),
            Err(TrainError::ShapeMismatch { .. })
        ));
        wrong.tensors.remove("bias");
        assert!(matches!(
            a.sub(&wrong),
            Err(TrainError::LayoutMismatch { .. })
        ));
    }
}

/// safetensors (de)serialisation: the format the global model, every
/// checkpoint and the external-trainer hand-off use, loadable unchanged by
/// NumPy (`safetensors.numpy.load_file`) and PyTorch.
impl Model {
    /// Serialise as safetensors (all tensors F32, little-endian), with
    /// optional string metadata in the header.
    pub fn to_safetensors(
        &self,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, data) in &bytes {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map_err(|e| TrainError::ModelFile(format!("tensor '{name}': {e}")))?;
            views.push((name.as_str(), view));
        }
        safetensors::serialize(views, metadata)
            .map_err(|e| TrainError::ModelFile(format!("cannot serialise model: {e}")))
    }

    /// Parse safetensors bytes; every tensor must be F32.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| TrainError::ModelFile(format!("not a valid safetensors file: {e}")))?;
        let mut model = Model::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(TrainError::ModelFile(format!(
                    "tensor '{name}' has dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            model.insert(name, Tensor::new(view.shape().to_vec(), data)?);
        }
        Ok(model)
    }

    /// The header metadata of safetensors bytes.
    pub fn safetensors_metadata(bytes: &[u8]) -> Result<std::collections::HashMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| TrainError::ModelFile(format!("not a valid safetensors file: {e}")))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod safetensors_tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_values_and_metadata() -> Result<()> {
        let mut m = Model::new();
        m.insert(
            "weight",
            Tensor::new(
                vec![2, 3],
                vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0],
            )?,
        );
        m.insert("bias", Tensor::new(vec![2], vec![0.5, -0.5])?);
        let meta: std::collections::HashMap<String, String> =
            [("round".to_string(), "4".to_string())].into();
        let bytes = m.to_safetensors(Some(meta.clone()))?;
        let back = Model::from_safetensors(&bytes)?;
        assert_eq!(back, m);
        assert_eq!(Model::safetensors_metadata(&bytes)?, meta);
        assert!(Model::from_safetensors(&bytes[..bytes.len() - 1]).is_err());
        Ok(())
    }
}
