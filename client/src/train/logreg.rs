//! Logistic regression: binary (sigmoid) for two classes, multinomial
//! (softmax) for more.
//!
//! Tensors: `"weight"` `[k, features]` and `"bias"` `[k]`, where `k = 1` for
//! two classes (the logit of class 1) and `k = classes` otherwise. Scores are
//! `x · weightᵀ + bias`, as `x @ W.T + b` in NumPy.

use rand::Rng;

use super::data::Dataset;
use super::error::{Result, TrainError};
use super::model::Model;
use confide_proto::model::{ModelKind, ModelSpec};

#[cfg(test)]
use super::net::Net;
use super::net::{Architecture, Head, LayerSpec};
use super::{EvalResult, FitConfig, FitResult, Trainer};

/// Linear classifier trained with minibatch SGD on cross-entropy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogisticRegression {
    /// Input features.
    pub features: usize,
    /// Number of classes (at least 2); labels must be `0..classes`.
    pub classes: usize,
}

impl LogisticRegression {
    /// A trainer for `features` inputs and `classes` classes.
    pub fn new(features: usize, classes: usize) -> Result<Self> {
        if features == 0 || classes < 2 {
            return Err(TrainError::InvalidConfig(format!(
                "logistic regression needs at least 1 feature and 2 classes, got {features} and {classes}"
            )));
        }
        Ok(Self { features, classes })
    }

    fn head(&self) -> Head {
        if self.classes == 2 {
            Head::Sigmoid
        } else {
            Head::Softmax
        }
    }

    /// The wire contract's description of this model.
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            kind: ModelKind::Logistic,
            features: self.features,
            hidden: Vec::new(),
            classes: self.classes,
        }
    }

    fn specs(&self) -> Vec<LayerSpec> {
        self.spec().layers()
    }

    /// The shared dense-network description (one layer, no hidden ReLU).
    fn architecture(&self) -> Architecture {
        Architecture {
            features: self.features,
            classes: self.classes,
            specs: self.specs(),
            head: self.head(),
        }
    }

    /// The network in `model`, for the tests' gradient checks.
    #[cfg(test)]
    pub(crate) fn net(&self, model: &Model) -> Result<Net> {
        self.architecture().net(model)
    }
}

impl Trainer for LogisticRegression {
    /// All zeros: the loss is convex, so no symmetry needs breaking and the
    /// start is reproducible without randomness (`rng` is unused).
    fn init(&self, rng: &mut dyn Rng) -> Model {
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
    use crate::train::model::Tensor;
    use crate::train::net::tests::{gradient_check, random_batch};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn random_model(lr: &LogisticRegression, seed: u64) -> Model {
        let template = lr.init(&mut ChaCha8Rng::seed_from_u64(0));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let flat: Vec<f32> = (0..template.num_params())
            .map(|_| 0.5 * confide_proto::model::standard_normal(&mut rng))
            .collect();
        template.unflatten_like(&flat).unwrap()
    }

    #[test]
    fn gradient_check_binary() {
        let lr = LogisticRegression::new(4, 2).unwrap();
        let (x, y) = random_batch(7, 4, 2, 1);
        gradient_check(&lr.net(&random_model(&lr, 2)).unwrap(), &x, &y);
    }

    #[test]
    fn gradient_check_multinomial() {
        let lr = LogisticRegression::new(5, 3).unwrap();
        let (x, y) = random_batch(8, 5, 3, 3);
        gradient_check(&lr.net(&random_model(&lr, 4)).unwrap(), &x, &y);
    }

    #[test]
    fn model_layout_is_checked() {
        let lr = LogisticRegression::new(3, 2).unwrap();
        let m = lr.init(&mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(m.get("weight").unwrap().shape, vec![1, 3]);
        assert_eq!(m.get("bias").unwrap().shape, vec![1]);
        let multi = LogisticRegression::new(3, 4).unwrap();
        let mm = multi.init(&mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(mm.get("weight").unwrap().shape, vec![4, 3]);
        assert!(matches!(
            multi.net(&m),
            Err(TrainError::ShapeMismatch { .. })
        ));
        let mut extra = m.clone();
        extra.insert("mean", Tensor::zeros(vec![3]));
        assert!(matches!(
            lr.net(&extra),
            Err(TrainError::UnexpectedTensor { .. })
        ));
        let mut missing = m.clone();
        missing.tensors.remove("bias");
        assert!(matches!(
            lr.net(&missing),
            Err(TrainError::MissingTensor { .. })
        ));
    }

    #[test]
    fn fit_rejects_mismatched_data_and_config() {
        let mut lr = LogisticRegression::new(2, 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let m = lr.init(&mut rng);
        let data = Dataset::from_reader("a,b,c,y\n1,2,3,0\n".as_bytes(), "y").unwrap();
        let err = lr
            .fit(&m, &data, &FitConfig::default(), &mut rng)
            .unwrap_err();
        assert!(matches!(
            err,
            TrainError::FeatureMismatch {
                expected: 2,
                found: 3
            }
        ));
        let data = Dataset::from_reader("a,b,y\n1,2,2\n".as_bytes(), "y").unwrap();
        let err = lr.evaluate(&m, &data).unwrap_err();
        assert!(matches!(
            err,
            TrainError::LabelOutOfRange {
                label: 2,
                classes: 2
            }
        ));
        let data = Dataset::from_reader("a,b,y\n1,2,1\n".as_bytes(), "y").unwrap();
        let bad = FitConfig {
            batch_size: 0,
            ..FitConfig::default()
        };
        assert!(matches!(
            lr.fit(&m, &data, &bad, &mut rng),
            Err(TrainError::InvalidConfig(_))
        ));
        let wild = FitConfig {
            learning_rate: 1e30,
            epochs: 3,
            ..FitConfig::default()
        };
        let big = Dataset::from_reader("a,b,y\n1e30,2,1\n-1e30,1,0\n".as_bytes(), "y").unwrap();
        assert!(matches!(
            lr.fit(&m, &big, &wild, &mut rng),
            Err(TrainError::Diverged { .. })
        ));
    }

    #[test]
    fn proximal_term_limits_drift() {
        let mut lr = LogisticRegression::new(2, 2).unwrap();
        let data =
            Dataset::from_reader("a,b,y\n1,0,1\n2,1,1\n-1,0,0\n-2,-1,0\n".as_bytes(), "y").unwrap();
        let global = lr.init(&mut ChaCha8Rng::seed_from_u64(0));
        let norm = |mu: f32, lr_: &mut LogisticRegression| {
            let cfg = FitConfig {
                epochs: 20,
                batch_size: 2,
                learning_rate: 0.1,
                proximal_mu: mu,
                ..FitConfig::default()
            };
            let r = lr_
                .fit(&global, &data, &cfg, &mut ChaCha8Rng::seed_from_u64(1))
                .unwrap();
            r.delta.flatten().iter().map(|v| v * v).sum::<f32>().sqrt()
        };
        let free = norm(0.0, &mut lr);
        let prox = norm(5.0, &mut lr);
        assert!(prox < 0.5 * free, "prox {prox} free {free}");
    }
}
