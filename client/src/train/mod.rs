//! Built-in model trainers for Confide's federated-learning client.
//!
//! A site's round, end to end:
//!
//! 1. [`Dataset::from_csv`] loads its CSV (header row, integer label column).
//! 2. Every site sends [`Dataset::stats`] into a secure sum; each builds the
//!    same [`Standardiser::from_global`] from the total and
//!    [`applies`](Standardiser::apply) it to its data. The statistics are the
//!    caller's to keep; they are not model tensors.
//! 3. [`Trainer::fit`] starts from the global [`Model`] and returns the local
//!    update `delta = local − global` with its example count, for the
//!    server's example-weighted mean (FedAvg).
//! 4. [`Trainer::evaluate`] returns sums (examples, correct, loss) that can
//!    themselves be summed across sites.
//!
//! # Tensor names
//!
//! All tensors are `f32`, row-major (NumPy C order); a layer computes
//! `x @ weight.T + bias`.
//!
//! | trainer | tensors |
//! | --- | --- |
//! | [`LogisticRegression`], 2 classes | `weight` `[1, features]`, `bias` `[1]` (logit of class 1, sigmoid) |
//! | [`LogisticRegression`], C > 2 classes | `weight` `[C, features]`, `bias` `[C]` (softmax) |
//! | [`Mlp`] | `layer{i}.weight` `[out_i, in_i]`, `layer{i}.bias` `[out_i]`; ReLU between layers, the last has `classes` outputs (softmax) |
//!
//! [`Model::flatten`] concatenates tensors in name order (byte-wise, so
//! `layer10` sorts before `layer2`), which is what secure aggregation of flat
//! vectors must agree on.

mod data;
mod error;
mod external_error;
mod logreg;
mod mlp;
mod model;
mod net;
#[cfg(test)]
mod sim;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use data::{Dataset, FeatureStats, STD_FLOOR, Standardiser};
pub use error::{Result, TrainError};
pub use external_error::{ExternalError, Mode};
pub use logreg::LogisticRegression;
pub use mlp::Mlp;
pub use model::{Model, Tensor};

/// Local training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// Passes over the local data per round (at least 1).
    pub epochs: usize,
    /// Examples per SGD step (at least 1); the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// SGD step size (positive).
    pub learning_rate: f32,
    /// Weight decay: adds `l2 · w` to each weight gradient (biases excluded).
    pub l2: f32,
    /// FedProx: adds `mu · (w − w_global)` to every gradient; 0 disables it.
    pub proximal_mu: f32,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.0,
            proximal_mu: 0.0,
        }
    }
}

impl FitConfig {
    /// Errors on values that cannot train (zero sizes, non-positive or
    /// non-finite rates, negative penalties).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::InvalidConfig(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad(format!("l2 must be non-negative, got {}", self.l2));
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return bad(format!(
                "proximal_mu must be non-negative, got {}",
                self.proximal_mu
            ));
        }
        Ok(())
    }
}

/// Outcome of one site's local training.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    /// `local − global`, same layout as the global model.
    pub delta: Model,
    /// Rows trained on (the FedAvg weight).
    pub num_examples: u64,
    /// Mean cross-entropy over the last local epoch, each batch measured
    /// just before its update (regularisation terms excluded).
    pub train_loss: f64,
}

/// Evaluation sums; add them across sites for a global figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalResult {
    /// Rows evaluated.
    pub num_examples: u64,
    /// Rows whose predicted class equals the label.
    pub correct: u64,
    /// Summed per-row cross-entropy (natural log).
    pub loss_sum: f64,
}

impl EvalResult {
    /// `correct / num_examples`, 0 for no rows.
    pub fn accuracy(&self) -> f64 {
        if self.num_examples == 0 {
            0.0
        } else {
            self.correct as f64 / self.num_examples as f64
        }
    }

    /// `loss_sum / num_examples`, 0 for no rows.
    pub fn mean_loss(&self) -> f64 {
        if self.num_examples == 0 {
            0.0
        } else {
            self.loss_sum / self.num_examples as f64
        }
    }

    /// Adds another site's sums.
    pub fn add(&mut self, other: &EvalResult) {
        self.num_examples += other.num_examples;
        self.correct += other.correct;
        self.loss_sum += other.loss_sum;
    }
}

/// A model family that can be trained locally and evaluated.
///
/// Randomness comes only from the `rng` passed in, so a seeded generator
/// makes training reproducible.
pub trait Trainer {
    /// A fresh model for round 0.
    fn init(&self, rng: &mut dyn Rng) -> Model;

    /// Trains from `global` on `data` (reshuffled every epoch with `rng`) and
    /// returns the update.
    fn fit(
        &mut self,
        global: &Model,
        data: &Dataset,
        cfg: &FitConfig,
        rng: &mut dyn Rng,
    ) -> Result<FitResult>;

    /// Loss and accuracy sums of `model` on `data`.
    fn evaluate(&self, model: &Model, data: &Dataset) -> Result<EvalResult>;

    /// Whether the trainer works on the site's [`Dataset`]: a site without
    /// held-out rows then reports an empty evaluation. An external command
    /// that reads its own data says no, and is asked to evaluate anyway.
    fn needs_data(&self) -> bool {
        true
    }
}
