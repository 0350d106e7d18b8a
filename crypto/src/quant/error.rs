//! Why a quantiser cannot be configured, an update encoded or a sum decoded.

use thiserror::Error;

use crate::ring::Ring;

/// Errors from configuring, encoding or decoding.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum QuantError {
    /// Clip bound is not a positive finite number.
    #[error("clip must be a finite number > 0, got {clip}")]
    InvalidClip {
        /// The rejected value.
        clip: f64,
    },
    /// Explicit scale is not a positive finite number.
    #[error("scale must be a finite number > 0, got {scale}")]
    InvalidScale {
        /// The rejected value.
        scale: f64,
    },
    /// `max_weight` is zero.
    #[error("max_weight must be at least 1")]
    ZeroMaxWeight,
    /// `max_cohort` is zero.
    #[error("max_cohort must be at least 1")]
    ZeroMaxCohort,
    /// The weight slot alone could overflow.
    #[error(
        "weight slot can overflow: max_cohort ({max_cohort}) × max_weight ({max_weight}) = \
         {product} exceeds the {ring} limit 2^{half_bits}−1 = {limit}; \
         use ring = \"u64\", lower max_weight or lower the cohort size"
    )]
    WeightOverflow {
        /// Configured ring.
        ring: Ring,
        /// `b − 1`.
        half_bits: u32,
        /// `2^(b−1) − 1`.
        limit: u64,
        /// Configured cohort bound.
        max_cohort: usize,
        /// Configured weight cap.
        max_weight: u64,
        /// `max_cohort · max_weight`.
        product: u128,
    },
    /// An explicit scale makes the element sums overflow.
    #[error(
        "scale {scale} can overflow: max_cohort ({max_cohort}) × (max_weight ({max_weight}) × \
         clip·scale ({per_weight:.6e}) + 1) = {total:.6e} exceeds the {ring} limit \
         2^{half_bits}−1 = {limit} (with a 2^-40 safety margin); the largest safe scale is \
         {max_scale:.6e}; use ring = \"u64\", lower max_weight, lower the cohort size, \
         or lower clip/scale"
    )]
    Overflow {
        /// Configured ring.
        ring: Ring,
        /// `b − 1`.
        half_bits: u32,
        /// `2^(b−1) − 1`.
        limit: u64,
        /// Configured cohort bound.
        max_cohort: usize,
        /// Configured weight cap.
        max_weight: u64,
        /// Configured scale.
        scale: f64,
        /// `clip · scale`.
        per_weight: f64,
        /// Worst-case `|sum|`.
        total: f64,
        /// Largest scale that would pass.
        max_scale: f64,
    },
    /// An element width outside `8..=` the ring's bits.
    #[error("element width {bits} bits: expected 8 to {} for the {ring} ring", ring.bits())]
    InvalidBits {
        /// The width asked for.
        bits: u32,
        /// Configured ring.
        ring: Ring,
    },
    /// `levels` needs more bits per element than the ring has.
    #[error(
        "levels = {levels} with max_cohort {max_cohort} and max_weight {max_weight} needs \
         {needed} bits per element (max_cohort × (levels + 1) ≤ 2^(b−1)−1), more than the \
         {ring} ring's {}; use ring = \"u64\", lower levels (at most {max_levels} fit) or \
         lower the cohort size", ring.bits()
    )]
    LevelsOverflow {
        /// Configured ring.
        ring: Ring,
        /// Configured levels.
        levels: u64,
        /// Configured cohort bound.
        max_cohort: usize,
        /// Configured weight cap.
        max_weight: u64,
        /// Bits the levels need.
        needed: u32,
        /// Most levels the ring holds.
        max_levels: f64,
    },
    /// Too few quanta per clip range.
    #[error(
        "quantisation too coarse: max_weight·clip·scale = {levels:.1} quanta per clip range \
         (a site at the weight cap) in ring {ring} \
         with max_cohort {max_cohort} and max_weight {max_weight}, but min_levels = {min_levels}; \
         {hint}"
    )]
    TooCoarse {
        /// Configured ring.
        ring: Ring,
        /// `max_weight · clip · scale` achieved.
        levels: f64,
        /// Required minimum.
        min_levels: u64,
        /// Configured cohort bound.
        max_cohort: usize,
        /// Configured weight cap.
        max_weight: u64,
        /// Which knob to turn.
        hint: &'static str,
    },
    /// Encoding type does not match the configured ring.
    #[error("quantiser is configured for ring {config} but was asked to use {element}")]
    RingMismatch {
        /// Ring in the config.
        config: Ring,
        /// Ring of the element type used.
        element: Ring,
    },
    /// Update contains NaN or an infinity.
    #[error("update element {index} is not finite ({value})")]
    NonFinite {
        /// Position in the update.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// Site weight is zero.
    #[error("site weight must be at least 1 (a site with no examples should not contribute)")]
    ZeroWeight,
    /// An extra slot value is too large to be summed safely.
    #[error(
        "extra slot {index} = {value} exceeds ±{bound} = ⌊(2^(b−1)−1) / max_cohort⌋; \
         use ring = \"u64\" or lower the cohort size"
    )]
    ExtraOutOfRange {
        /// Position among the extras.
        index: usize,
        /// The offending value.
        value: i64,
        /// Allowed magnitude.
        bound: i64,
    },
    /// Sum is too short to hold the model plus the weight slot.
    #[error(
        "sum has {len} slots but a model of {model_len} elements needs at least {} \
         (elements + weight slot)", model_len.saturating_add(1)
    )]
    LengthMismatch {
        /// Length of the sum.
        len: usize,
        /// Expected model length.
        model_len: usize,
    },
    /// No contributors.
    #[error("cannot decode a sum of zero contributors")]
    NoContributors,
    /// More contributors than the overflow analysis allows.
    #[error(
        "{contributors} contributors exceed max_cohort = {max_cohort}; the sum may have \
         overflowed and cannot be decoded"
    )]
    TooManyContributors {
        /// Claimed contributors.
        contributors: usize,
        /// Configured bound.
        max_cohort: usize,
    },
    /// Weight slot sums to zero.
    #[error("total weight is 0: nothing to average")]
    ZeroTotalWeight,
    /// The weight slot is outside `[contributors, contributors × max_weight]`:
    /// every honest site adds a weight in `[1, max_weight]`.
    #[error(
        "total weight {total} is outside [{min}, {max}], the range {contributors} contributors \
         with weights in [1, max_weight] can produce; a site sent a weight no honest \
         encoding holds, or the sum is corrupt"
    )]
    WeightOutOfRange {
        /// Lifted weight slot.
        total: i64,
        /// Smallest honest total (`contributors`).
        min: u64,
        /// Largest honest total (`contributors × max_weight`).
        max: u128,
        /// Claimed contributors.
        contributors: usize,
    },
    /// An element of the sum is larger than `contributors` honest sites with
    /// this total weight can produce, i.e. the mean would leave `±clip`.
    #[error(
        "sum element {index} = {value} is outside ±{limit}, the most {contributors} \
         contributors of total weight {total_weight} can produce within the clip bound \
         (mean {mean:.6e}, clip {clip}); a site encoded a value beyond the clip or the sum is corrupt"
    )]
    ElementOutOfRange {
        /// Position in the model.
        index: usize,
        /// Lifted value found.
        value: i64,
        /// Largest honest magnitude.
        limit: i128,
        /// Decoded total weight.
        total_weight: u64,
        /// Claimed contributors.
        contributors: usize,
        /// The mean this element would have decoded to.
        mean: f64,
        /// The clip bound.
        clip: f64,
    },
    /// A slot of the sum is outside what honest contributors can produce
    /// whatever their weights (an extra slot, or an element beyond even the
    /// per-site cap: masks that did not cancel).
    #[error(
        "sum slot {slot} = {value} is outside ±{limit}, the most {contributors} contributors \
         can produce; the masks did not cancel or the contributor count is wrong"
    )]
    OutOfRange {
        /// Slot index in the sum vector.
        slot: usize,
        /// Lifted value found.
        value: i64,
        /// Largest magnitude possible.
        limit: i128,
        /// Claimed contributors.
        contributors: usize,
    },
}
