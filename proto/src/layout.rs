//! The vectors a site uploads, slot by slot, encoded by the site and decoded
//! by the coordinator with the same code.
//!
//! ```text
//!  TRAIN       [ q(w·Δ)₀ … q(w·Δ)_{d-1} | w | correct | examples | loss·1000 ]   d + 1 + EXTRA_SLOTS
//!  EVALUATE    [ 1 | correct | examples | loss·1000 ]                            1 + EXTRA_SLOTS
//!  STATISTICS  [ Σx·2^b … | Σx²·2^b … | rows ]   (u64 ring)                     2·features + 1
//! ```
//!
//! `q` is the quantiser of the round (`confide_crypto::quant`); the weight and
//! metric slots are plain integers, so the secure sum yields Σw, Σcorrect,
//! Σexamples and Σloss·1000 exactly. Vectors travel in
//! [`masked_input_chunks`] of at most [`MASKED_CHUNK_BYTES`](crate::MASKED_CHUNK_BYTES),
//! a TRAIN vector's model slots packed at the quantiser's `b` bits
//! ([`pack`], [`round_packing`]); the decoder reads those slots modulo 2^b.
//!
//! The decoders refuse a sum that no cohort of honest sites can produce
//! ([`DecodeError::OutOfRange`] names the slot, its value and the range), so
//! a poisoned or corrupted aggregate fails the round instead of moving the
//! model or the standardiser.
//!
//! ```
//! use confide_proto::layout::{Metrics, train_len, EVAL_LEN, EXTRA_SLOTS};
//! assert_eq!(train_len(31), 35);
//! assert_eq!(EVAL_LEN, 1 + EXTRA_SLOTS);
//! let summed = Metrics::from_slots(&[18, 20, 5000]);
//! assert_eq!(summed.and_then(|m| m.accuracy()), Some(0.9));
//! ```

use confide_crypto::protocol::{MaskingSet, RingVec};
use confide_crypto::quant::{Decoded, QuantError, Quantiser};
use confide_crypto::ring::RingElement;
use confide_crypto::stats::{self, StatsError as EncodeError};
use rand::CryptoRng;

use crate::convert;
pub mod pack;
use crate::standardise::{self, FeatureStats};
use crate::{MASKED_CHUNK_BYTES, v1};
pub use pack::{PackError, Packing};

/// Number of metric slots after the weight slot: correct, examples, loss·1000.
pub const EXTRA_SLOTS: usize = 3;

/// Length of a TRAIN vector for a model with `d` parameters.
pub fn train_len(d: usize) -> usize {
    d + 1 + EXTRA_SLOTS
}

/// Length of an EVALUATE vector.
pub const EVAL_LEN: usize = 1 + EXTRA_SLOTS;

/// Length of a STATISTICS vector over `features` features.
pub fn statistics_len(features: usize) -> usize {
    stats::stats_len(features)
}

/// Why a site's vector cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A local update holds NaN or an infinity (refused before quantising).
    #[error("update element {index} is {value}, not a finite number")]
    NonFinite {
        /// Position in the flattened update.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The quantiser refused the values.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The statistics encoding refused the values.
    #[error(transparent)]
    Stats(#[from] EncodeError),
    /// A statistics vector must be in the u64 ring.
    #[error("statistics vectors use the u64 ring, this sum is {0}")]
    StatisticsRing(confide_crypto::Ring),
}

/// Why a summed vector cannot be used: it does not decode, or it holds what
/// no cohort of honest sites can produce.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The quantiser refused the sum (length, count, or a weight, element
    /// or extra outside what honest encodings hold).
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The statistics sum does not decode (its length).
    #[error(transparent)]
    Stats(#[from] EncodeError),
    /// A statistics round must sum in the u64 ring.
    #[error("statistics vectors use the u64 ring, this sum is {0}")]
    StatisticsRing(confide_crypto::Ring),
    /// A slot of a decoded sum that no cohort of honest sites can produce.
    #[error(
        "{slot} = {value} is outside [{min}, {max}], the range {contributors} honest \
         contributors can produce"
    )]
    OutOfRange {
        /// Which slot.
        slot: SumSlot,
        /// Its (lifted) value.
        value: i128,
        /// Smallest honest value.
        min: i128,
        /// Largest honest value.
        max: i128,
        /// Contributors in the sum.
        contributors: usize,
    },
    /// A contributor count no sum of this round can have.
    #[error("a sum of {contributors} contributors, but the cohort bound is 1..={max_cohort}")]
    Contributors {
        /// Claimed contributors.
        contributors: usize,
        /// Largest cohort the encodings were made for.
        max_cohort: usize,
    },
    /// Statistics sums that no set of rows has.
    #[error("feature statistics: {0}")]
    Standardise(#[from] standardise::ValidationError),
}

/// A slot of a decoded sum, named for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumSlot {
    /// The weight slot of an EVALUATE sum (1 per site).
    EvaluationWeight,
    /// Σ correct predictions.
    Correct,
    /// Σ examples evaluated.
    Examples,
    /// Σ loss·1000.
    LossMilli,
    /// Σx of a feature (fixed point).
    FeatureSum(usize),
    /// Σx² of a feature (fixed point).
    FeatureSumSq(usize),
    /// Σ rows of a statistics round.
    Rows,
}

impl std::fmt::Display for SumSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SumSlot::EvaluationWeight => f.write_str("evaluation weight slot (1 per site)"),
            SumSlot::Correct => f.write_str("metric slot Σcorrect"),
            SumSlot::Examples => f.write_str("metric slot Σexamples"),
            SumSlot::LossMilli => f.write_str("metric slot Σloss·1000"),
            SumSlot::FeatureSum(i) => write!(f, "statistics slot Σx of feature {i} (fixed point)"),
            SumSlot::FeatureSumSq(i) => {
                write!(f, "statistics slot Σx² of feature {i} (fixed point)")
            }
            SumSlot::Rows => f.write_str("statistics slot Σrows"),
        }
    }
}

/// `value` must lie in `[min, max]`.
fn within(
    slot: SumSlot,
    value: i128,
    min: i128,
    max: i128,
    contributors: usize,
) -> Result<(), DecodeError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(DecodeError::OutOfRange {
            slot,
            value,
            min,
            max,
            contributors,
        })
    }
}

/// Metric slots of one site (encode) or their sum over a cohort (decode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Correct predictions.
    pub correct: i64,
    /// Examples evaluated.
    pub examples: i64,
    /// Summed loss times 1000, rounded.
    pub loss_milli: i64,
}

impl Metrics {
    /// One site's metrics; counts beyond `i64` and a non-finite loss saturate
    /// rather than wrap, so a broken trainer cannot fake a good score.
    pub fn new(correct: u64, examples: u64, loss_sum: f64) -> Self {
        let loss_milli = (loss_sum * 1000.0).round();
        let loss_milli = if loss_milli.is_finite() {
            loss_milli as i64
        } else {
            i64::MAX
        };
        Metrics {
            correct: i64::try_from(correct).unwrap_or(i64::MAX),
            examples: i64::try_from(examples).unwrap_or(i64::MAX),
            loss_milli,
        }
    }

    /// The slots, in vector order.
    pub fn slots(&self) -> [i64; EXTRA_SLOTS] {
        [self.correct, self.examples, self.loss_milli]
    }

    /// The slots one site encodes, each slot within `±bound` (the
    /// quantiser's per-site extra bound). The summed loss saturates at the
    /// bound: it is a metric only, and a large loss (a diverging model,
    /// many held-out rows at a high cohort bound) must not make the site
    /// withhold its update; it then reads as at least the bound, never as
    /// better. Counts beyond the bound stay an error.
    pub fn slots_within(&self, bound: i64) -> [i64; EXTRA_SLOTS] {
        let bound = bound.max(0);
        [
            self.correct,
            self.examples,
            self.loss_milli.clamp(-bound, bound),
        ]
    }

    /// Reads the slots of a decoded sum; `None` when there are too few.
    pub fn from_slots(slots: &[i64]) -> Option<Self> {
        match slots {
            [correct, examples, loss_milli, ..] => Some(Metrics {
                correct: *correct,
                examples: *examples,
                loss_milli: *loss_milli,
            }),
            _ => None,
        }
    }

    /// Fraction correct; `None` when nothing was evaluated.
    pub fn accuracy(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.correct as f64 / self.examples as f64)
    }

    /// Mean loss per example; `None` when nothing was evaluated.
    pub fn mean_loss(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.loss_milli as f64 / 1000.0 / self.examples as f64)
    }
}

/// Refuses NaN and infinities in a local update before anything is quantised.
pub fn check_finite(update: &[f32]) -> Result<(), LayoutError> {
    match confide_crypto::quant::first_non_finite(update) {
        Some(index) => Err(LayoutError::NonFinite {
            index,
            value: update[index],
        }),
        None => Ok(()),
    }
}

/// TRAIN: `[q(delta)…, weight, correct, examples, loss_milli]`; the metric
/// slots are zero when the site did not evaluate. Written into `buf`'s
/// memory (an earlier round's vector, or empty): see
/// [`Quantiser::encode_into`].
pub fn train_vector<R: RingElement>(
    q: &Quantiser,
    delta: &[f32],
    weight: u64,
    metrics: Option<Metrics>,
    rng: &mut impl CryptoRng,
    mut buf: Vec<R>,
) -> Result<Vec<R>, LayoutError> {
    check_finite(delta)?;
    let extras = metrics
        .map(|m| m.slots_within(q.extra_bound()))
        .unwrap_or_default();
    q.encode_into::<R>(delta, weight, &extras, rng, &mut buf)?;
    Ok(buf)
}

/// EVALUATE: `[1, correct, examples, loss_milli]`.
pub fn eval_vector<R: RingElement>(
    q: &Quantiser,
    metrics: Metrics,
    rng: &mut impl CryptoRng,
) -> Result<Vec<R>, LayoutError> {
    Ok(q.encode::<R>(&[], 1, &metrics.slots_within(q.extra_bound()), rng)?)
}

/// STATISTICS: `[Σx·2^b…, Σx²·2^b…, n]` in the u64 ring.
pub fn statistics_vector(
    stats: &FeatureStats,
    bits: u32,
    max_cohort: usize,
) -> Result<Vec<u64>, LayoutError> {
    Ok(stats::encode_stats(
        &stats.sum,
        &stats.sum_sq,
        stats.n,
        bits,
        max_cohort,
    )?)
}

/// A decoded TRAIN or EVALUATE sum.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedSum {
    /// Weighted mean update, one value per model parameter (empty for EVALUATE).
    pub mean: Vec<f64>,
    /// Σ weights (for EVALUATE: the number of contributors).
    pub total_weight: u64,
    /// Summed metrics, when the sum carries the slots.
    pub metrics: Option<Metrics>,
}

/// Decodes the sum of `contributors` TRAIN (`model_len` = d) or EVALUATE
/// (`model_len` = 0) vectors and checks it is one honest sites can produce:
/// the quantiser's bounds on weight, elements and extras
/// ([`Quantiser::decode`]), then what the slots mean — an EVALUATE weight
/// slot is exactly `contributors` (each site puts 1), and
/// `0 ≤ Σcorrect ≤ Σexamples`, `Σloss·1000 ≥ 0` (losses are cross-entropies).
pub fn decode_sum(
    q: &Quantiser,
    sum: &RingVec,
    model_len: usize,
    contributors: usize,
) -> Result<DecodedSum, DecodeError> {
    let Decoded {
        mean,
        total_weight,
        extras,
    } = match sum {
        RingVec::U32(v) => q.decode::<u32>(v, model_len, contributors)?,
        RingVec::U64(v) => q.decode::<u64>(v, model_len, contributors)?,
    };
    let n = contributors as i128;
    if model_len == 0 {
        within(
            SumSlot::EvaluationWeight,
            total_weight.into(),
            n,
            n,
            contributors,
        )?;
    }
    let metrics = Metrics::from_slots(&extras);
    if let Some(m) = &metrics {
        // The quantiser already bounds each slot by ±contributors × extra_bound.
        let max = i128::from(q.extra_bound()) * n;
        within(SumSlot::Examples, m.examples.into(), 0, max, contributors)?;
        within(
            SumSlot::Correct,
            m.correct.into(),
            0,
            m.examples.into(),
            contributors,
        )?;
        within(
            SumSlot::LossMilli,
            m.loss_milli.into(),
            0,
            max,
            contributors,
        )?;
    }
    Ok(DecodedSum {
        mean,
        total_weight,
        metrics,
    })
}

/// Decodes the STATISTICS sum of `contributors` sites, each of which encoded
/// for a cohort of at most `max_cohort` ([`statistics_vector`]), into
/// cohort-wide [`FeatureStats`], refusing a sum honest sites cannot produce:
///
/// * every slot within `contributors ×` the per-site encoding bound
///   `(2^63 − 1) / max_cohort` (a wrapped or uncancelled sum fails this);
/// * Σx² ≥ 0 and rows ≥ 0;
/// * [`FeatureStats::validate`]: at least one row, and a variance no more
///   negative than the fixed-point rounding (`contributors · 2^-(bits+1)`
///   per sum) explains.
pub fn decode_statistics(
    sum: &RingVec,
    features: usize,
    bits: u32,
    contributors: usize,
    max_cohort: usize,
) -> Result<FeatureStats, DecodeError> {
    let RingVec::U64(v) = sum else {
        return Err(DecodeError::StatisticsRing(sum.ring()));
    };
    if contributors == 0 || contributors > max_cohort {
        return Err(DecodeError::Contributors {
            contributors,
            max_cohort,
        });
    }
    let (sum, sum_sq, n) = stats::decode_stats(v, features, bits)?;
    // The encoder refuses |q| ≥ this bound as an f64, which may round the
    // integer up; comparing against the same float keeps every honest sum in.
    let per_site = (i64::MAX / max_cohort as i64) as f64 as i128;
    let max = per_site * contributors as i128;
    let signed = |i: usize| i128::from(v[i].to_signed());
    for f in 0..features {
        within(SumSlot::FeatureSum(f), signed(f), -max, max, contributors)?;
        within(
            SumSlot::FeatureSumSq(f),
            signed(features + f),
            0,
            max,
            contributors,
        )?;
    }
    // Zero rows is honest (if useless); `validate` names it `NoRows`.
    within(SumSlot::Rows, signed(2 * features), 0, max, contributors)?;
    let totals = FeatureStats { n, sum, sum_sq };
    let sum_error = contributors as f64 * (-(f64::from(bits) + 1.0)).exp2();
    totals.validate(sum_error)?;
    Ok(totals)
}

/// How the vectors of the round `rs` announces travel in the container
/// ring `ring`: a TRAIN vector's model slots packed at the announced
/// `quantisation.bits`, everything else at the ring's width ([`pack`]).
/// EVALUATE vectors are four slots and STATISTICS sums need the whole u64
/// ring, so neither is packed. Both sides call this on the same
/// announcement, so they agree byte for byte.
pub fn round_packing(rs: &v1::RoundStart, ring: confide_crypto::Ring) -> Packing {
    let len = usize::try_from(rs.vector_len).unwrap_or(usize::MAX);
    let bits = rs.quantisation.as_ref().map_or(0, |q| q.bits);
    let train = rs.kind == v1::RoundKind::Train as i32;
    let model = len.saturating_sub(1 + EXTRA_SLOTS);
    match Packing::new(ring, bits, model, len) {
        Ok(p) if train => p,
        // Not a training round, or no width announced (0: unpacked); a
        // width the quantiser refuses never reaches an upload.
        _ => Packing::plain(ring, len),
    }
}

/// Splits a vector into `SubmitMaskedInput` chunks in the wire form
/// `packing` gives ([`round_packing`]); offsets and `total_len` count
/// elements. The first chunk is a header with no data: it carries
/// `total_len` and `masking`, the signed masking set of a secure round
/// (`None` in plaintext mode). The coordinator reads it before it waits for
/// an upload slot, so a waiting upload holds a few hundred bytes there, not
/// a data chunk. Data chunks follow, at most [`MASKED_CHUNK_BYTES`] each, each a
/// whole number of elements and of bytes ([`Packing::chunks`]).
pub fn masked_input_chunks<R: RingElement>(
    session: &str,
    round: u64,
    v: &[R],
    masking: Option<&MaskingSet>,
    packing: &Packing,
) -> Vec<v1::MaskedInputChunk> {
    let total_len = v.len() as u64;
    let header = v1::MaskedInputChunk {
        session: session.to_string(),
        round,
        offset: 0,
        total_len,
        data: Default::default(),
        masking: masking.map(convert::masking_set_to_proto),
    };
    std::iter::once(header)
        .chain(
            packing
                .chunks(MASKED_CHUNK_BYTES)
                .into_iter()
                .map(|r| v1::MaskedInputChunk {
                    session: session.to_string(),
                    round,
                    offset: r.start as u64,
                    total_len,
                    data: packing.encode(v, r).into(),
                    masking: None,
                }),
        )
        .collect()
}

/// [`masked_input_chunks`] of a vector of either ring.
pub fn ring_vec_chunks(
    session: &str,
    round: u64,
    v: &RingVec,
    masking: Option<&MaskingSet>,
    packing: &Packing,
) -> Vec<v1::MaskedInputChunk> {
    match v {
        RingVec::U32(v) => masked_input_chunks(session, round, v, masking, packing),
        RingVec::U64(v) => masked_input_chunks(session, round, v, masking, packing),
    }
}

#[cfg(test)]
mod tests;
