//! Multi-layer perceptron: dense layers with ReLU, softmax cross-entropy output.
//!
//! Tensors for `features → hidden[0] → … → classes`: `"layer{i}.weight"`
//! `[out_i, in_i]` and `"layer{i}.bias"` `[out_i]`, `i = 0..=hidden.len()`.
//! For `Mlp { features: 64, hidden: vec![64], classes: 10 }` these are
//! `layer0.weight` [64, 64], `layer0.bias` [64], `layer1.weight` [10, 64],
//! `layer1.bias` [10]. In NumPy: `h = relu(x @ W0.T + b0)`,
//! `logits = h @ W1.T + b1`.

use rand::Rng;

use super::data::Dataset;
use super::error::{Result, TrainError};
use super::model::Model;
use confide_proto::model::{ModelKind, ModelSpec};

#[cfg(test)]
use super::net::Net;
use super::net::{Architecture, Head, LayerSpec};
use super::{EvalResult, FitConfig, FitResult, Trainer};

/// Fully connected ReLU network trained with minibatch SGD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    /// Input features.
    pub features: usize,
    /// Width of each hidden layer, input side first.
    pub hidden: Vec<usize>,
    /// Number of classes (at least 2); labels must be `0..classes`.
    pub classes: usize,
}

impl Mlp {
    /// A trainer for the given architecture.
    pub fn new(features: usize, hidden: Vec<usize>, classes: usize) -> Result<Self> {
        if features == 0 || classes < 2 || hidden.contains(&0) {
            return Err(TrainError::InvalidConfig(format!(
                "MLP needs at least 1 feature, non-empty hidden layers and 2 classes, \
                 got {features} → {hidden:?} → {classes}"
            )));
        }
        Ok(Self {
            features,
            hidden,
            classes,
        })
    }

    /// The wire contract's description of this network.
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Mlp,
            features: self.features,
            hidden: self.hidden.clone(),
            classes: self.classes,
        }
    }

    fn specs(&self) -> Vec<LayerSpec> {
        self.spec().layers()
    }

    /// The shared dense-network description (ReLU between layers, softmax).
    fn architecture(&self) -> Architecture {
        Architecture {
            features: self.features,
            classes: self.classes,
            specs: self.specs(),
            head: Head::Softmax,
        }
    }

    /// The network in `model`, for the tests' gradient checks.
    #[cfg(test)]
    pub(crate) fn net(&self, model: &Model) -> Result<Net> {
        self.architecture().net(model)
    }
}

impl Trainer for Mlp {
    /// He-normal weights (`N(0, 2 / fan_in)`, suited to ReLU) and zero biases.
    fn init(&self, rng: &mut dyn Rng) -> Model {
        // The coordinator builds its initial model from the same spec.
        self.spec().init(rng)
    }

    fn fit(
        &mut self,
        global: &Model,
        data: &Dataset,
        cfg: &FitConfig,
        rng: &mut dyn Rng,
    ) -> Result<FitResult> {
        self.architecture().fit(global, data, cfg, rng)
    }

    fn evaluate(&self, model: &Model, data: &Dataset) -> Result<EvalResult> {
        self.architecture().evaluate(model, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::net::tests::{gradient_check, random_batch};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gradient_check_two_hidden_layers() {
        let mlp = Mlp::new(4, vec![6, 5], 3).unwrap();
        let mut model = mlp.init(&mut ChaCha8Rng::seed_from_u64(5));
        // Non-zero biases so the bias gradients are exercised away from zero.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for (name, t) in &mut model.tensors {
            if name.ends_with("bias") {
                t.data
                    .iter_mut()
                    .for_each(|v| *v = 0.3 * confide_proto::model::standard_normal(&mut rng));
            }
        }
        let (x, y) = random_batch(9, 4, 3, 7);
        gradient_check(&mlp.net(&model).unwrap(), &x, &y);
    }

    #[test]
    fn tensor_names_and_shapes() {
        let mlp = Mlp::new(64, vec![32], 10).unwrap();
        let m = mlp.init(&mut ChaCha8Rng::seed_from_u64(0));
        let shapes: Vec<(&str, Vec<usize>)> = m
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.clone()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                ("layer0.bias", vec![32]),
                ("layer0.weight", vec![32, 64]),
                ("layer1.bias", vec![10]),
                ("layer1.weight", vec![10, 32]),
            ]
        );
        assert_eq!(m.num_params(), 32 * 64 + 32 + 10 * 32 + 10);
        // He init: weight variance close to 2 / fan_in.
        let w = &m.get("layer0.weight").unwrap().data;
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!((var - 2.0 / 64.0).abs() < 0.1 * 2.0 / 64.0, "{var}");
        assert!(Mlp::new(4, vec![0], 3).is_err());
    }

    #[test]
    fn learns_xor() {
        let mut text = String::from("a,b,y\n");
        for _ in 0..25 {
            text.push_str("0,0,0\n0,1,1\n1,0,1\n1,1,0\n");
        }
        let data = Dataset::from_reader(text.as_bytes(), "y").unwrap();
        let mut mlp = Mlp::new(2, vec![16], 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut model = mlp.init(&mut rng);
        let cfg = FitConfig {
            epochs: 200,
            batch_size: 10,
            learning_rate: 0.1,
            ..FitConfig::default()
        };
        let r = mlp.fit(&model, &data, &cfg, &mut rng).unwrap();
        model.add_scaled(&r.delta, 1.0).unwrap();
        let e = mlp.evaluate(&model, &data).unwrap();
        assert_eq!(e.correct, 100, "{e:?}");
        assert!(r.train_loss < 0.1, "{}", r.train_loss);
    }
}
