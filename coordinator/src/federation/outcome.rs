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
use crate::checkpoint::{Preprocess, RoundRecord};
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

/// Writes the evaluation, if any, into the round's record.
pub(super) fn record_evaluation(rec: &mut RoundRecord, e: Option<&Evaluation>) {
    if let Some(e) = e {
        rec.accuracy = Some(e.accuracy);
        rec.loss = Some(e.loss);
        rec.eval_examples = e.examples;
    }
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
            let mut model = cx.model.clone();
            let mut optimiser = cx.optimiser.clone();
            let trained = train(
                cx.quant,
                result,
                cx.model_len,
                cx.max_model_bytes,
                &mut model,
                &mut optimiser,
            )?;
            let bytes = model.to_safetensors(None)?;
            let update = Update {
                model,
                bytes,
                optimiser,
                total_weight: trained.total_weight,
            };
            Ok(Outcome::Trained(Box::new(update), trained.evaluation))
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

/// Elements of the sum decoded at a time: the f64 mean deltas of one block
/// (512 KiB) rather than of the whole model (8 bytes per parameter).
const BLOCK: usize = 64 * 1024;

/// What a training sum did besides stepping the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// Σ of the survivors' (capped) weights.
    pub total_weight: u64,
    /// The sites' evaluation of the model the round started from.
    pub evaluation: Option<Evaluation>,
}

/// One server-optimiser step of `model` along the mean delta of a training
/// sum, in place and without a second copy of the model: the sum is decoded
/// block by block (every check of [`layout::decode_sum`], on each block),
/// first to check the whole outcome (every element in range, every stepped
/// value representable in its tensor's dtype, the model within
/// `max_model_bytes`), then again to step. On an error nothing has changed.
pub fn train(
    quant: &Quantiser,
    result: &AnyRoundResult,
    model_len: usize,
    max_model_bytes: u64,
    model: &mut Model,
    optimiser: &mut ServerOptimiser,
) -> Result<Trained, OutcomeError> {
    let sum = &result.sum;
    let contributors = result.survivors.len();
    if sum.len() <= model_len {
        // The quantiser's own refusal (ring, then length), as a whole decode gives it.
        layout::decode_sum(quant, sum, model_len, contributors)?;
    }
    let params = model.num_params();
    if params != model_len {
        return Err(OutcomeError::Optimiser(format!(
            "delta has {model_len} elements, model {params}"
        )));
    }
    optimiser
        .check_dim(model_len)
        .map_err(OutcomeError::Optimiser)?;
    if model.safetensors_layout(None)?.len() > max_model_bytes {
        return Err(OutcomeError::TooLarge);
    }
    let decode =
        |start: usize, end: usize| decode_block(quant, sum, model_len, contributors, start, end);
    let (_, total_weight, metrics) = decode(0, model_len.min(BLOCK))?;
    // Pass 1: everything that can fail, nothing changed.
    let mut at = 0;
    for (name, t) in &model.tensors {
        for (i, piece) in t.data.chunks(BLOCK).enumerate() {
            let start = at + i * BLOCK;
            let (mean, _, _) = decode(start, start + piece.len())?;
            optimiser.preview(start, piece, &mean, |index, value| {
                t.dtype.check_fits(name, index - at, value)
            })?;
        }
        at += t.len();
    }
    // Pass 2: the same decode, now stepping in place; it cannot fail.
    let mut at = 0;
    for t in model.tensors.values_mut() {
        let len = t.len();
        for (i, piece) in t.data.chunks_mut(BLOCK).enumerate() {
            let start = at + i * BLOCK;
            let (mean, _, _) = decode(start, start + piece.len())?;
            optimiser
                .step_at(start, piece, &mean)
                .map_err(OutcomeError::Optimiser)?;
        }
        at += len;
    }
    Ok(Trained {
        total_weight,
        evaluation: metrics.and_then(evaluation),
    })
}

/// Elements `start..end` of a training sum decoded as a sum of their own
/// (the block, then the weight and metric slots): the block's mean deltas,
/// the total weight and the metrics, with indices in errors those of the
/// whole sum.
fn decode_block(
    quant: &Quantiser,
    sum: &RingVec,
    model_len: usize,
    contributors: usize,
    start: usize,
    end: usize,
) -> Result<(Vec<f64>, u64, Option<Metrics>), OutcomeError> {
    fn part<T: Copy>(v: &[T], start: usize, end: usize, model_len: usize) -> Vec<T> {
        let head = v.get(start..end).unwrap_or_default();
        let tail = v.get(model_len..).unwrap_or_default();
        let mut out = Vec::with_capacity(head.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(tail);
        out
    }
    let block = match sum {
        RingVec::U32(v) => RingVec::U32(part(v, start, end, model_len)),
        RingVec::U64(v) => RingVec::U64(part(v, start, end, model_len)),
    };
    let len = end - start;
    match layout::decode_sum(quant, &block, len, contributors) {
        Ok(d) => Ok((d.mean, d.total_weight, d.metrics)),
        Err(mut e) => {
            match &mut e {
                DecodeError::Quant(QuantError::ElementOutOfRange { index, .. }) => *index += start,
                DecodeError::Quant(QuantError::OutOfRange { slot, .. }) => *slot += model_len - len,
                _ => {}
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests;
