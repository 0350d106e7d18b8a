//! Choosing the local trainer: the [`TrainerFactory`] hook an embedding
//! service may replace, and the built-in logistic regression and MLP behind
//! the default [`builtin_trainer`].
//!
//! The factory runs once per round, from the announced
//! [`v1::TrainingConfig`], so a federation can change model or
//! hyper-parameters between rounds without restarting its sites.
//!
//! `local_vector` is a round's local computation (statistics, or
//! training and evaluation, then quantisation in the round's ring) as one
//! blocking function: the round logic describes the work as a `LocalJob`,
//! the run loop runs it off the async runtime.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use confide_crypto::Ring;
use confide_crypto::protocol::RingVec;
use confide_crypto::quant::Quantiser;
use confide_proto::v1;
use rand::rngs::StdRng;
use tracing::info;

use crate::error::ClientError;
use crate::train::{
    Dataset, EvalResult, FitConfig, LogisticRegression, Mlp, Model, Standardiser, Trainer,
};
use crate::wire;

/// A trainer usable from the run loop (training runs on a blocking thread).
pub type BoxTrainer = Box<dyn Trainer + Send>;

/// Chooses the trainer for a round from its announced [`v1::TrainingConfig`].
pub type TrainerFactory =
    Arc<dyn Fn(&v1::TrainingConfig) -> Result<BoxTrainer, ClientError> + Send + Sync>;

/// The built-in trainers: `"logistic"` → [`LogisticRegression`], `"mlp"` →
/// [`Mlp`] with the announced hidden sizes.
pub fn builtin_trainer(t: &v1::TrainingConfig) -> Result<BoxTrainer, ClientError> {
    let features = t.features as usize;
    let classes = t.classes as usize;
    match t.model.as_str() {
        "logistic" | "logreg" | "logistic_regression" => {
            Ok(Box::new(LogisticRegression::new(features, classes)?))
        }
        "mlp" => Ok(Box::new(Mlp::new(
            features,
            t.hidden.iter().map(|&h| h as usize).collect(),
            classes,
        )?)),
        m if m == confide_proto::model::ModelKind::File.name() => Err(ClientError::InvalidRound(
            "the round trains a model of kind \"file\": this site needs its own training command \
             (confide-site run --train-command CMD, see docs/site.md)"
                .into(),
        )),
        other => Err(ClientError::InvalidRound(format!(
            "unknown model '{other}': this site has the built-in trainers \"logistic\" and \"mlp\""
        ))),
    }
}

/// Local SGD settings from the announced training configuration.
pub fn fit_config(t: &v1::TrainingConfig) -> FitConfig {
    FitConfig {
        epochs: t.epochs as usize,
        batch_size: t.batch_size as usize,
        learning_rate: t.learning_rate as f32,
        l2: t.l2 as f32,
        proximal_mu: t.proximal_mu as f32,
    }
}

/// A round's local computation, fully described by the announcement and
/// the downloaded model.
#[derive(Debug)]
pub(crate) enum LocalJob {
    /// Feature sums for the federation's standardiser (always ring u64).
    Statistics {
        /// Fixed-point bits of the encoded sums.
        bits: u32,
        /// The largest cohort the encoding must not overflow for.
        max_cohort: usize,
    },
    /// Training and/or evaluation of the global model.
    Learn(Box<Learn>),
}

/// The inputs of a training or evaluation round.
#[derive(Debug)]
pub(crate) struct Learn {
    /// The round (for logs).
    pub round: u64,
    /// The ring of the vector to produce.
    pub ring: Ring,
    /// The announced quantisation.
    pub quantiser: Quantiser,
    /// The announced training configuration (model, hyper-parameters).
    pub training: v1::TrainingConfig,
    /// The round's global model (shared with the round: at 10⁶ parameters
    /// a copy per job is 4 MB per site per round).
    pub global: std::sync::Arc<Model>,
    /// The federation's feature standardisation, if announced.
    pub standardiser: Option<Standardiser>,
    /// Evaluate the global model on the held-out rows.
    pub evaluate: bool,
    /// Train from the global model (a TRAIN round).
    pub fit: bool,
    /// The last round's masked vector, sent and no longer needed: the new
    /// one is written into its memory rather than into fresh pages.
    pub spare: Option<RingVec>,
}

/// Runs `job` on this site's rows: blocking (training is CPU-bound), so the
/// run loop calls it on a blocking thread.
pub(crate) fn local_vector(
    job: LocalJob,
    train: &Dataset,
    test: &Dataset,
    factory: &TrainerFactory,
    rng: &mut StdRng,
) -> Result<RingVec, ClientError> {
    let job = match job {
        LocalJob::Statistics { bits, max_cohort } => {
            return Ok(RingVec::U64(wire::stats_vector(
                &train.stats(),
                bits,
                max_cohort,
            )?));
        }
        LocalJob::Learn(job) => *job,
    };
    // Copied only when there is a standardisation to apply: a site's rows
    // can be large.
    let (mut train, mut test) = (Cow::Borrowed(train), Cow::Borrowed(test));
    if let Some(st) = &job.standardiser {
        st.apply(train.to_mut())?;
        st.apply(test.to_mut())?;
    }
    let mut trainer = factory(&job.training)?;
    let fit = fit_config(&job.training);
    let started = Instant::now();
    let eval = if !job.evaluate {
        None
    } else if test.is_empty() && trainer.needs_data() {
        Some(EvalResult::default())
    } else {
        Some(trainer.evaluate(&job.global, &test)?)
    };
    let fit_res = if job.fit {
        Some(trainer.fit(&job.global, &train, &fit, rng)?)
    } else {
        None
    };
    let q = &job.quantiser;
    Ok(match fit_res {
        Some(f) => {
            info!(
                round = job.round,
                examples = f.num_examples,
                train_loss = f.train_loss,
                secs = started.elapsed().as_secs_f64(),
                "local training done"
            );
            let delta = f.delta.flatten();
            let (w, e) = (f.num_examples, eval.as_ref());
            // The last masked vector's memory, in whichever ring it was.
            let (b32, b64) = match job.spare {
                Some(RingVec::U32(v)) => (v, Vec::new()),
                Some(RingVec::U64(v)) => (Vec::new(), v),
                None => (Vec::new(), Vec::new()),
            };
            match job.ring {
                Ring::U32 => RingVec::U32(wire::train_vector(q, &delta, w, e, rng, b32)?),
                Ring::U64 => RingVec::U64(wire::train_vector(q, &delta, w, e, rng, b64)?),
            }
        }
        None => {
            let e = eval.unwrap_or_default();
            match job.ring {
                Ring::U32 => RingVec::U32(wire::eval_vector(q, &e, rng)?),
                Ring::U64 => RingVec::U64(wire::eval_vector(q, &e, rng)?),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_trainer_by_model_name() {
        let mut t = v1::TrainingConfig {
            model: "logistic".into(),
            features: 4,
            classes: 2,
            ..Default::default()
        };
        assert!(builtin_trainer(&t).is_ok());
        t.model = "mlp".into();
        t.hidden = vec![8];
        assert!(builtin_trainer(&t).is_ok());
        t.model = "xgboost".into();
        assert!(builtin_trainer(&t).is_err_and(|e| e.to_string().contains("xgboost")));
        t.model = "logistic".into();
        t.classes = 0;
        assert!(builtin_trainer(&t).is_err());
    }
}
