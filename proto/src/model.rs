//! Models on the wire: a named set of dense row-major `f32` tensors, the flat
//! vector order secure aggregation agrees on, the safetensors codec
//! ([`file`]: F32, F16 and BF16 files, each tensor written back in its own
//! dtype), and the built-in model specifications ([`ModelSpec`]) with their
//! seeded initialisation.
//!
//! The flat order of [`Model::flatten`] is the tensors' name order (byte-wise,
//! as in a `BTreeMap`; so `layer10` sorts before `layer2`), each tensor
//! row-major; every party derives the same order from the names alone.
//! Tensors are row-major (C order), the layout NumPy and safetensors use, so
//! `np.asarray(data).reshape(shape)` recovers a tensor exactly.

mod file;
mod image;
mod stream;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub use file::{Dtype, ModelFile};
pub use image::ModelImage;
pub use stream::{Layout, TensorRef, data_bytes, offsets};

/// What goes wrong with a model, its tensors or its file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// `data` does not fit `shape`.
    #[error("tensor of shape {shape:?} needs {expected} values, got {found}")]
    TensorSize {
        /// The claimed shape.
        shape: Vec<usize>,
        /// Values the shape needs.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A flat vector of the wrong length.
    #[error("flat parameter vector has {found} values, model has {expected}")]
    FlatLength {
        /// Parameters of the model.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// Tensor names differ.
    #[error("models have different tensors: '{name}' is only in one of them")]
    LayoutMismatch {
        /// The tensor only one side has.
        name: String,
    },
    /// Same name, other shape.
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape expected.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// safetensors bytes that do not parse or serialise.
    #[error("model file: {0}")]
    File(String),
    /// A model specification that cannot build a model.
    #[error("invalid model: {0}")]
    Spec(String),
    /// A model file that cannot be read (missing, unreadable).
    #[error("model file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A tensor of a dtype Confide does not aggregate.
    #[error("tensor '{name}' has dtype {dtype}: only F32, F16 and BF16 tensors can be aggregated")]
    UnsupportedDtype {
        /// Tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// Same name and shape, another dtype.
    #[error("tensor '{name}': expected dtype {expected}, found {found}")]
    DtypeMismatch {
        /// Tensor name.
        name: String,
        /// Dtype expected.
        expected: Dtype,
        /// Dtype found.
        found: Dtype,
    },
    /// A model without a single parameter.
    #[error("the model has no parameters (no tensors, or only empty ones)")]
    Empty,
    /// A model larger than the configured limit.
    #[error(
        "the model needs {bytes} bytes as f32, above the limit of {limit} bytes \
         (largest tensor '{largest}', {largest_bytes} bytes); raise limits.max_model_bytes or shrink the model"
    )]
    TooLarge {
        /// Bytes as f32 (how the coordinator aggregates it).
        bytes: u64,
        /// The limit.
        limit: u64,
        /// The largest tensor.
        largest: String,
        /// Its bytes as f32.
        largest_bytes: u64,
    },
    /// A byte count or offset beyond what u64 (or this platform's usize)
    /// holds: refused, never truncated.
    #[error("{what} overflows")]
    Overflow {
        /// What was being computed.
        what: String,
    },
    /// NaN or an infinity in a tensor.
    #[error("tensor '{name}' element {index} is {value}, not a finite number")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Row-major index inside the tensor.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Result alias of this module.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A dense row-major tensor, held as `f32` (aggregation happens in f32)
/// and written to safetensors in `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values in row-major order.
    pub data: Vec<f32>,
    /// The dtype of the file it came from, and the one it is written in.
    pub dtype: Dtype,
}

impl Tensor {
    /// Builds a tensor, checking that `data` fits `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ModelError::TensorSize {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            shape,
            data,
            dtype: Dtype::F32,
        })
    }

    /// An all-zero F32 tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; len],
            dtype: Dtype::F32,
        }
    }

    /// The same tensor, written in `dtype`.
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
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
            return Err(ModelError::FlatLength {
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
                    dtype: tensor.dtype,
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
            .map(|(name, t)| {
                let zero = Tensor::zeros(t.shape.clone()).with_dtype(t.dtype);
                (name.clone(), zero)
            })
            .collect();
        Model { tensors }
    }

    /// Errors unless `other` has exactly the same tensor names and shapes.
    pub fn check_same_layout(&self, other: &Model) -> Result<()> {
        for name in other.tensors.keys() {
            if !self.tensors.contains_key(name) {
                return Err(ModelError::LayoutMismatch { name: name.clone() });
            }
        }
        for (name, tensor) in &self.tensors {
            let Some(theirs) = other.tensors.get(name) else {
                return Err(ModelError::LayoutMismatch { name: name.clone() });
            };
            if theirs.shape != tensor.shape {
                return Err(ModelError::ShapeMismatch {
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

/// The built-in model families, by the name settings and `RoundStart` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Logistic regression (sigmoid for 2 classes, softmax above).
    Logistic,
    /// Multi-layer perceptron with ReLU hidden layers and a softmax head.
    Mlp,
    /// Any named tensors from a safetensors file, trained at the sites by
    /// their own external command (no built-in trainer, no specification).
    File,
}

impl ModelKind {
    /// Every kind, for error messages.
    pub const ALL: [ModelKind; 3] = [ModelKind::Logistic, ModelKind::Mlp, ModelKind::File];

    /// The name in settings and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Logistic => "logistic",
            ModelKind::Mlp => "mlp",
            ModelKind::File => "file",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ModelError::Spec(format!(
                    "unknown model kind '{s}': expected \"logistic\", \"mlp\" or \"file\""
                ))
            })
    }
}

/// One dense layer of a built-in model: `x @ weight.T + bias`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Name of the `[outputs, inputs]` weight tensor.
    pub weight: String,
    /// Name of the `[outputs]` bias tensor.
    pub bias: String,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
}

/// A built-in model's architecture: everything needed to count, name and
/// initialise its tensors without any training code.
///
/// | kind | tensors |
/// | --- | --- |
/// | logistic, 2 classes | `weight` `[1, features]`, `bias` `[1]` |
/// | logistic, C > 2 classes | `weight` `[C, features]`, `bias` `[C]` |
/// | mlp | `layer{i}.weight` `[out_i, in_i]`, `layer{i}.bias` `[out_i]` |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The family.
    pub kind: ModelKind,
    /// Input features.
    pub features: usize,
    /// Hidden-layer widths (MLP only; ignored for logistic regression).
    pub hidden: Vec<usize>,
    /// Classes (at least 2).
    pub classes: usize,
}

impl ModelSpec {
    /// A checked specification.
    pub fn new(
        kind: ModelKind,
        features: usize,
        hidden: Vec<usize>,
        classes: usize,
    ) -> Result<Self> {
        let spec = ModelSpec {
            kind,
            features,
            hidden: match kind {
                ModelKind::Logistic | ModelKind::File => Vec::new(),
                ModelKind::Mlp => hidden,
            },
            classes,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Errors on a specification no model can have.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            ModelKind::Logistic if self.features == 0 || self.classes < 2 => {
                Err(ModelError::Spec(format!(
                    "logistic regression needs at least 1 feature and 2 classes, got {} and {}",
                    self.features, self.classes
                )))
            }
            ModelKind::Mlp
                if self.features == 0
                    || self.classes < 2
                    || self.hidden.is_empty()
                    || self.hidden.contains(&0) =>
            {
                Err(ModelError::Spec(format!(
                    "MLP needs at least 1 feature, non-empty hidden layers and 2 classes, \
                     got {} → {:?} → {}",
                    self.features, self.hidden, self.classes
                )))
            }
            // A file model's tensors come from its file, not from a spec.
            ModelKind::File => Err(ModelError::Spec(
                "a model of kind \"file\" has no specification: its tensors come from its \
                 safetensors file (ModelFile::read)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The layers, input first.
    pub fn layers(&self) -> Vec<LayerSpec> {
        match self.kind {
            ModelKind::File => Vec::new(),
            ModelKind::Logistic => vec![LayerSpec {
                weight: "weight".into(),
                bias: "bias".into(),
                inputs: self.features,
                // Two classes need one logit (sigmoid), more need one each.
                outputs: if self.classes == 2 { 1 } else { self.classes },
            }],
            ModelKind::Mlp => {
                let mut widths = Vec::with_capacity(self.hidden.len() + 2);
                widths.push(self.features);
                widths.extend_from_slice(&self.hidden);
                widths.push(self.classes);
                widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| LayerSpec {
                        weight: format!("layer{i}.weight"),
                        bias: format!("layer{i}.bias"),
                        inputs: w[0],
                        outputs: w[1],
                    })
                    .collect()
            }
        }
    }

    /// Parameters of the model, computed from the shapes alone.
    pub fn num_params(&self) -> usize {
        self.layers()
            .iter()
            .map(|l| l.outputs * l.inputs + l.outputs)
            .sum()
    }

    /// The initial model from `rng`: logistic regression starts at zero; an
    /// MLP draws He-normal weights (layer by layer, row-major) and zero
    /// biases.
    pub fn init(&self, rng: &mut dyn Rng) -> Model {
        let mut model = Model::new();
        for l in self.layers() {
            let data = match self.kind {
                ModelKind::Logistic | ModelKind::File => vec![0.0; l.outputs * l.inputs],
                ModelKind::Mlp => {
                    let scale = (2.0 / l.inputs as f32).sqrt();
                    (0..l.outputs * l.inputs)
                        .map(|_| scale * standard_normal(rng))
                        .collect()
                }
            };
            model.insert(
                l.weight.clone(),
                Tensor {
                    shape: vec![l.outputs, l.inputs],
                    data,
                    dtype: Dtype::F32,
                },
            );
            model.insert(l.bias.clone(), Tensor::zeros(vec![l.outputs]));
        }
        model
    }

    /// The initial model from a seed (ChaCha20), the same on every fresh
    /// start of a coordinator with the same settings.
    pub fn init_seeded(&self, seed: u64) -> Model {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        self.init(&mut rng)
    }
}

/// One N(0, 1) draw by Box–Muller; the built-in MLP's initialisation depends
/// on exactly this sequence of draws.
pub fn standard_normal(rng: &mut dyn Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1], so ln is finite
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests;
