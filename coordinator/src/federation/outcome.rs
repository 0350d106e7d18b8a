//! What a successful round's aggregate means, as pure functions: the feature
//! statistics of a statistics round, the optimiser step of a training round,
//! the evaluation record of either. The vector layouts and the standardiser
//! are the wire contract's (`confide_proto::layout`, `::standardise`): the
//! sites encode with the same code this decodes with.

use confide_crypto::protocol::{AnyRoundResult, RingVec};
use confide_crypto::quant::{QuantError, Quantiser};
use confide_crypto::stats::StatsError;
use confide_proto::layout::{self, DecodeError, Metrics};
use confide_proto::model::{Model, ModelError};
use confide_proto::standardise::{self, Standardiser, ValidationError};

use super::scheduler::RoundKind;
use crate::checkpoint::Preprocess;
use crate::optim::ServerOptimiser;

/// Smallest per-feature standard deviation, so a constant feature does not
/// divide by zero (one floor for the coordinator and the sites).
pub use confide_proto::standardise::STD_FLOOR;

/// Why an aggregate could not be used; the round fails and the global model
/// stays as it was. The message goes into the round's record.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    /// A statistics sum in the u32 ring.
    #[error("statistics round must use the u64 ring")]
    StatisticsRing,
    /// A statistics sum that does not decode.
    #[error(transparent)]
    Statistics(#[from] StatsError),
    /// A statistics sum over no rows.
    #[error("statistics round summed zero rows")]
    NoRows,
    /// Statistics that define no standardiser (a non-finite sum).
    #[error("feature statistics: {0}")]
    Standardise(standardise::StatsError),
    /// A train/evaluate sum that does not decode.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// A sum of a contributor count the round cannot have.
    #[error(transparent)]
    Contributors(DecodeError),
    /// A sum outside what the cohort's honest sites can produce (a poisoned
    /// or corrupted aggregate): the reason names the slot, value and bound.
    #[error("aggregate rejected: {0}")]
    Rejected(#[source] DecodeError),
    /// The optimiser refused the step.
    #[error("{0}")]
    Optimiser(String),
    /// The stepped parameters do not make a model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The updated model is above `limits.max_model_bytes`.
    #[error("updated model exceeds limits.max_model_bytes")]
    TooLarge,
}

impl From<DecodeError> for OutcomeError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::StatisticsRing(_) => OutcomeError::StatisticsRing,
            DecodeError::Stats(e) => OutcomeError::Statistics(e),
            DecodeError::Standardise(ValidationError::Unusable(
                standardise::StatsError::NoRows,
            )) => OutcomeError::NoRows,
            // Shape problems (length, contributor count) are the round's, not a site's.
            DecodeError::Quant(
                e @ (QuantError::LengthMismatch { .. }
                | QuantError::NoContributors
                | QuantError::TooManyContributors { .. }
                | QuantError::RingMismatch { .. }),
            ) => OutcomeError::Quant(e),
            e @ DecodeError::Contributors { .. } => OutcomeError::Contributors(e),
            e @ (DecodeError::Quant(_)
            | DecodeError::OutOfRange { .. }
            | DecodeError::Standardise(_)) => OutcomeError::Rejected(e),
        }
    }
}

/// The sites' evaluation of the global model, summed over the survivors.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Correct predictions / examples.
    pub accuracy: f64,
    /// Mean loss per example.
    pub loss: f64,
    /// Examples evaluated.
    pub examples: u64,
}

/// The feature statistics and the rows they cover.
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    /// Mean and floored standard deviation per feature.
    pub preprocess: Preprocess,
    /// Rows summed.
    pub rows: u64,
}

/// A new global model and optimiser state.
#[derive(Clone, Debug)]
pub struct Update {
    /// The stepped model.
    pub model: Model,
    /// Its safetensors bytes.
    pub bytes: Vec<u8>,
    /// The optimiser after the step.
    pub optimiser: ServerOptimiser,
    /// Σ of the survivors' (capped) weights.
    pub total_weight: u64,
}

/// What a round's sum amounts to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A statistics round.
    Statistics(Statistics),
    /// An evaluation round.
    Evaluated(Option<Evaluation>),
    /// A training round: the update and the sites' evaluation of the model
    /// the round started from.
    Trained(Box<Update>, Option<Evaluation>),
}

/// What the decoding needs besides the sum.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Input features (statistics layout).
    pub features: usize,
    /// Fixed-point bits of statistics rounds.
    pub stats_scale_bits: u32,
    /// The training quantiser.
    pub quant: &'a Quantiser,
    /// Model parameters in the vector (0 for evaluation rounds).
    pub model_len: usize,
    /// The global model the round started from.
    pub model: &'a Model,
    /// The server optimiser before the step.
    pub optimiser: &'a ServerOptimiser,
    /// Largest serialised model.
    pub max_model_bytes: u64,
}

/// Decode the sum of a round of `kind` and apply it (to copies: nothing is
/// changed unless the whole outcome is `Ok`).
pub fn outcome(
    kind: RoundKind,
    result: &AnyRoundResult,
    cx: &Context<'_>,
) -> Result<Outcome, OutcomeError> {
    match kind {
        RoundKind::Statistics => decode_statistics(
            &result.sum,
            cx.features,
            cx.stats_scale_bits,
            result.survivors.len(),
            cx.quant.max_cohort(),
        )
        .map(Outcome::Statistics),
        RoundKind::Evaluate => {
            let decoded = decode_extras(cx.quant, &result.sum, 0, result.survivors.len())?;
            Ok(Outcome::Evaluated(decoded.metrics.and_then(evaluation)))
        }
        RoundKind::Train => {
            let decoded =
                decode_extras(cx.quant, &result.sum, cx.model_len, result.survivors.len())?;
            let evaluation = decoded.metrics.and_then(evaluation);
            let update = step(cx, &decoded.mean, decoded.total_weight)?;
            Ok(Outcome::Trained(Box::new(update), evaluation))
        }
    }
}

/// The quantiser's decode of a train/evaluate sum in either ring.
fn decode_extras(
    quant: &Quantiser,
    sum: &RingVec,
    model_len: usize,
    contributors: usize,
) -> Result<layout::DecodedSum, OutcomeError> {
    Ok(layout::decode_sum(quant, sum, model_len, contributors)?)
}

/// The evaluation slots of a train/evaluate vector, summed:
/// `[correct, examples, loss × 1000]`. `None` when nobody evaluated.
pub fn decode_evaluation(extras: &[i64]) -> Option<Evaluation> {
    evaluation(Metrics::from_slots(extras)?)
}

fn evaluation(m: Metrics) -> Option<Evaluation> {
    Some(Evaluation {
        accuracy: m.accuracy()?,
        loss: m.mean_loss()?,
        examples: u64::try_from(m.examples).ok()?,
    })
}

/// A statistics sum of `contributors` sites (Σx, Σx², n in fixed point,
/// encoded for cohorts of at most `max_cohort`) → per-feature mean and
/// standard deviation (floored at [`STD_FLOOR`]), by the same
/// [`Standardiser`] the sites rebuild from the announcement. A sum no honest
/// sites produce is [`OutcomeError::Rejected`] before anything is derived.
pub fn decode_statistics(
    sum: &RingVec,
    features: usize,
    bits: u32,
    contributors: usize,
    max_cohort: usize,
) -> Result<Statistics, OutcomeError> {
    let totals = layout::decode_statistics(sum, features, bits, contributors, max_cohort)?;
    let rows = totals.n;
    let (mean, std) = Standardiser::from_global(&totals)
        .map_err(|e| match e {
            standardise::StatsError::NoRows => OutcomeError::NoRows,
            other => OutcomeError::Standardise(other),
        })?
        .into_parts();
    Ok(Statistics {
        preprocess: Preprocess { mean, std },
        rows,
    })
}

/// One server-optimiser step of the global model along the mean delta.
fn step(cx: &Context<'_>, mean: &[f64], total_weight: u64) -> Result<Update, OutcomeError> {
    let mut x = cx.model.flatten();
    let mut optimiser = cx.optimiser.clone();
    optimiser
        .step(&mut x, mean)
        .map_err(OutcomeError::Optimiser)?;
    let model = cx.model.unflatten_like(&x)?;
    let bytes = model.to_safetensors(None)?;
    if bytes.len() as u64 > cx.max_model_bytes {
        return Err(OutcomeError::TooLarge);
    }
    Ok(Update {
        model,
        bytes,
        optimiser,
        total_weight,
    })
}

#[cfg(test)]
mod tests;
