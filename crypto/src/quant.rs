//! Fixed-point encoding of weighted model updates into a ring, and decoding
//! of their (masked, then unmasked) sum back to a weighted mean.
//!
//! # Encoding
//!
//! A site with update `Δ ∈ f32^d`, example count `w` and optional integer
//! extras `e ∈ i64^m` produces the ring vector
//!
//! ```text
//! [ q_0, …, q_{d-1},  w,  e_0, …, e_{m-1} ]
//! q_i = SR(w · clip(Δ_i) · s)        clip(x) = min(max(x, -c), c)
//! SR(v) = ⌊v⌋ + [u < v − ⌊v⌋],       u uniform on {0, 2^-53, …, 1 − 2^-53}
//! ```
//!
//! where `c` is the clip bound, `s` the scale (quanta per unit) and `w` is
//! capped at `max_weight` (`W`) — a site claiming more examples than `W`
//! simply counts as `W`. `u` is drawn from 53 bits of a caller-supplied CSPRNG,
//! so `E[SR(v)] = v` exactly whenever `v − ⌊v⌋` is a multiple of 2^-53 (always
//! true for |v| ≥ 1) and within 2^-53 otherwise: stochastic rounding is
//! unbiased, so rounding errors of many sites average out instead of adding
//! up as they would with round-to-nearest biases. Extras are embedded as-is.
//!
//! # Why the sum cannot overflow
//!
//! Let `M = 2^(b-1) − 1` and `n = max_cohort`. Decoding uses the centred lift,
//! so a slot is correct iff its true (integer) sum lies in `[-M, M]`.
//!
//! * Weight slot: `0 < w ≤ W` per site and [`Quantiser::new`] checks
//!   `n · W ≤ M` exactly (in `u128`).
//! * Extras: each must satisfy `|e| ≤ ⌊M / n⌋` ([`Quantiser::extra_bound`]).
//! * Elements: `|SR(v)| ≤ ⌈|v|⌉ < |v| + 1 ≤ w·c·s + 1 ≤ W·(c·s + 1)`.
//!   [`Quantiser::new`] requires `n · W · (c·s + 1) ≤ M`, evaluated in `f64`
//!   with a relative margin of 2^-40 that dwarfs the ≈ 6·2^-53 rounding of
//!   that check and the three roundings in computing `v`. In addition every
//!   element is clamped to a per-site cap `≤ ⌊M / n⌋`, so even a mistake in
//!   that float reasoning could not make `n` sites overflow; the margin is what
//!   guarantees the clamp never changes a value (see `elem_cap` in the code).
//!
//! With `scale = None` the largest `s` meeting the element condition is
//! taken: `c·s = M / (n·W·(1 + 2^-40)) − 1`, rounded down. Note that `c·s`
//! (quanta per clip range) then depends only on ring, `n` and `W`, so a
//! [`QuantError::TooCoarse`] error is fixed by a wider ring, a smaller `W` or
//! a smaller cohort, not by changing `c`.
//!
//! # Error bound
//!
//! For sites `j = 1..N` with capped weights `w_j`, `T = Σ w_j`, clipped inputs
//! `x_j` and `v_j = w_j x_j s`, the decoder returns `S / (s·T)` with
//! `S = Σ_j q_j` (exact: the lift is exact by the argument above). Per site
//! `|q_j − v̂_j| < 1` (SR moves by less than one quantum) and
//! `|v̂_j − v_j| ≤ 3.01u·w_j·c·s` (three roundings, `u = 2^-53`), so
//!
//! ```text
//! |S/(sT) − Σ w_j x_j / T| < N/(sT) + 3.01u·c.
//! ```
//!
//! Computing `S/(sT)` in `f64` costs four more roundings (converting `S` and
//! `T`, the product `sT`, the division), at most `4.01u` relative on a value
//! bounded by `c + N/(sT)`. Altogether the error is below
//! `N/(sT) + 4.01u·N/(sT) + 7.1u·c`, which [`Quantiser::error_bound`] rounds
//! up to `B + 8ε·(c + B)` with `B = N/(sT)` and `ε = 2u = f64::EPSILON`
//! (the extra factor covers rounding in evaluating the bound itself).
//! The bound is worst case; the typical error is `O(√N / (sT))`.

use rand_core::CryptoRng;
use thiserror::Error;

use crate::ring::{Ring, RingElement};

/// Default for [`QuantConfig::min_levels`].
pub const DEFAULT_MIN_LEVELS: u64 = 1024;

/// Relative safety margin applied to the float overflow check (see module docs).
const MARGIN: f64 = 1.0 / (1u64 << 40) as f64;

/// 2^-53: turns the top 53 bits of a `u64` into a uniform `f64` in `[0, 1)`.
const TWO_POW_NEG_53: f64 = 1.0 / (1u64 << 53) as f64;

/// Quantiser settings as written in a round configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantConfig {
    /// Ring the encodings live in.
    pub ring: Ring,
    /// Per-element clip bound `c > 0`.
    pub clip: f64,
    /// Largest weight (example count) a site may contribute; larger claims are capped.
    pub max_weight: u64,
    /// Largest number of encodings that will ever be summed.
    pub max_cohort: usize,
    /// Quanta per unit; `None` picks the largest value that cannot overflow.
    pub scale: Option<f64>,
    /// Minimum quanta per clip range (`clip · scale`); guards against silently
    /// useless precision. Default [`DEFAULT_MIN_LEVELS`].
    pub min_levels: u64,
}

impl QuantConfig {
    /// Config with automatic scale and the default `min_levels`.
    pub fn new(ring: Ring, clip: f64, max_weight: u64, max_cohort: usize) -> Self {
        QuantConfig {
            ring,
            clip,
            max_weight,
            max_cohort,
            scale: None,
            min_levels: DEFAULT_MIN_LEVELS,
        }
    }
}

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
        "scale {scale} can overflow: max_cohort ({max_cohort}) × max_weight ({max_weight}) × \
         (clip·scale + 1 = {per_weight:.6e}) = {total:.6e} exceeds the {ring} limit \
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
        /// `clip · scale + 1`.
        per_weight: f64,
        /// Worst-case `|sum|`.
        total: f64,
        /// Largest scale that would pass.
        max_scale: f64,
    },
    /// Too few quanta per clip range.
    #[error(
        "quantisation too coarse: clip·scale = {levels:.1} quanta per clip range in ring {ring} \
         with max_cohort {max_cohort} and max_weight {max_weight}, but min_levels = {min_levels}; \
         {hint}"
    )]
    TooCoarse {
        /// Configured ring.
        ring: Ring,
        /// `clip · scale` achieved.
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
    /// A slot of the sum is outside what honest contributors can produce.
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

/// Result of [`Quantiser::decode`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Weighted mean `Σ w_i clip(Δ_i) / Σ w_i`, per element.
    pub mean: Vec<f64>,
    /// `Σ w_i` (capped weights).
    pub total_weight: u64,
    /// Sums of the extra slots.
    pub extras: Vec<i64>,
}

/// Validated quantiser; see the module docs for the encoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiser {
    ring: Ring,
    clip: f64,
    scale: f64,
    max_weight: u64,
    max_cohort: usize,
    /// Largest `|q|` one site can emit, `≤ ⌊M / max_cohort⌋`.
    elem_cap: i64,
}

/// `n · W · (c·s + 1)`, the float side of the overflow condition.
fn worst_total(n: f64, w: f64, levels: f64) -> f64 {
    n * w * (levels + 1.0)
}

impl Quantiser {
    /// Validates `cfg` and fixes the scale (see module docs for the conditions).
    pub fn new(cfg: &QuantConfig) -> Result<Self, QuantError> {
        let c = cfg.clip;
        if !(c.is_finite() && c > 0.0) {
            return Err(QuantError::InvalidClip { clip: c });
        }
        if cfg.max_weight == 0 {
            return Err(QuantError::ZeroMaxWeight);
        }
        if cfg.max_cohort == 0 {
            return Err(QuantError::ZeroMaxCohort);
        }
        let ring = cfg.ring;
        let limit = ring.max_signed();
        let half_bits = ring.bits() - 1;
        let product = cfg.max_cohort as u128 * cfg.max_weight as u128;
        if product > limit as u128 {
            return Err(QuantError::WeightOverflow {
                ring,
                half_bits,
                limit,
                max_cohort: cfg.max_cohort,
                max_weight: cfg.max_weight,
                product,
            });
        }

        let n = cfg.max_cohort as f64;
        let w = cfg.max_weight as f64;
        let m = limit as f64;
        let budget = m / (1.0 + MARGIN);
        let fits = |s: f64| worst_total(n, w, c * s) <= budget;
        // Largest scale meeting the condition; step down past float rounding.
        let mut max_scale = (budget / (n * w) - 1.0) / c;
        while max_scale > 0.0 && !fits(max_scale) {
            max_scale = max_scale.next_down();
        }

        let scale = match cfg.scale {
            Some(s) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(QuantError::InvalidScale { scale: s });
                }
                if !fits(s) {
                    return Err(QuantError::Overflow {
                        ring,
                        half_bits,
                        limit,
                        max_cohort: cfg.max_cohort,
                        max_weight: cfg.max_weight,
                        scale: s,
                        per_weight: c * s + 1.0,
                        total: worst_total(n, w, c * s),
                        max_scale: max_scale.max(0.0),
                    });
                }
                s
            }
            None => max_scale,
        };
        if !scale.is_finite() {
            // Only reachable with a subnormal clip, where c·s loses all meaning.
            return Err(QuantError::InvalidClip { clip: c });
        }

        let levels = c * scale;
        if !(levels >= cfg.min_levels as f64 && levels > 0.0) {
            let hint = if cfg.scale.is_some() && levels < c * max_scale {
                "raise scale (up to the largest safe value, or leave it unset), or lower min_levels"
            } else {
                "use ring = \"u64\", lower max_weight or lower the cohort size \
                 (clip does not help: the safe clip·scale depends only on these), \
                 or lower min_levels"
            };
            return Err(QuantError::TooCoarse {
                ring,
                levels,
                min_levels: cfg.min_levels,
                max_cohort: cfg.max_cohort,
                max_weight: cfg.max_weight,
                hint,
            });
        }

        // Per-site cap: ⌊W·c·s·(1 + 2^-41)⌋ + 1 bounds every honest |q| (the
        // factor covers the ≤ 3.01u rounding in v), and the margin in `fits`
        // keeps it ≤ ⌊M/n⌋; the `min` makes overflow impossible regardless.
        let per_site = (limit / cfg.max_cohort as u64) as i64;
        let honest = (w * levels * (1.0 + MARGIN / 2.0)).floor() as i64;
        let elem_cap = honest.saturating_add(1).min(per_site);

        Ok(Quantiser {
            ring,
            clip: c,
            scale,
            max_weight: cfg.max_weight,
            max_cohort: cfg.max_cohort,
            elem_cap,
        })
    }

    /// Ring the encodings live in.
    pub fn ring(&self) -> Ring {
        self.ring
    }

    /// Clip bound `c`.
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// Quanta per unit `s` (the chosen one if the config left it unset).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Weight cap `W`.
    pub fn max_weight(&self) -> u64 {
        self.max_weight
    }

    /// Largest number of encodings that may be summed.
    pub fn max_cohort(&self) -> usize {
        self.max_cohort
    }

    /// Quanta per clip range, `c · s`.
    pub fn levels(&self) -> f64 {
        self.clip * self.scale
    }

    /// Largest `|extra|` a site may submit: `⌊(2^(b−1)−1) / max_cohort⌋`.
    pub fn extra_bound(&self) -> i64 {
        (self.ring.max_signed() / self.max_cohort as u64) as i64
    }

    fn check_ring<R: RingElement>(&self) -> Result<(), QuantError> {
        if R::RING == self.ring {
            Ok(())
        } else {
            Err(QuantError::RingMismatch {
                config: self.ring,
                element: R::RING,
            })
        }
    }

    /// Encodes one site's contribution as `[q_0..q_{d-1}, w, extras..]`.
    ///
    /// `weight` above `max_weight` is silently capped to `max_weight` (the
    /// weight slot then holds the cap). Errors: ring mismatch, non-finite
    /// update element, zero weight, extra beyond [`Self::extra_bound`].
    pub fn encode<R: RingElement>(
        &self,
        update: &[f32],
        weight: u64,
        extras: &[i64],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<R>, QuantError> {
        self.check_ring::<R>()?;
        if weight == 0 {
            return Err(QuantError::ZeroWeight);
        }
        let bound = self.extra_bound();
        if let Some((index, &value)) = extras
            .iter()
            .enumerate()
            .find(|&(_, e)| e.unsigned_abs() > bound as u64)
        {
            return Err(QuantError::ExtraOutOfRange {
                index,
                value,
                bound,
            });
        }
        if let Some((index, &value)) = update.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(QuantError::NonFinite { index, value });
        }

        let w = weight.min(self.max_weight);
        let ws = w as f64 * self.scale;
        let mut out = Vec::with_capacity(update.len() + 1 + extras.len());
        for &x in update {
            let clipped = f64::from(x).clamp(-self.clip, self.clip);
            let q = stochastic_round(clipped * ws, rng);
            // Never bites for honest values (see module docs); keeps n sites in range.
            out.push(R::from_i64(q.clamp(-self.elem_cap, self.elem_cap)));
        }
        out.push(R::from_u64(w));
        out.extend(extras.iter().map(|&e| R::from_i64(e)));
        Ok(out)
    }

    /// Decodes the (unmasked) sum of `contributors` encodings of a model with
    /// `model_len` elements. The number of extras is inferred from the length.
    ///
    /// Besides length and count checks, every slot is compared against the
    /// largest value `contributors` honest sites can produce, which catches
    /// masks that failed to cancel with overwhelming probability.
    pub fn decode<R: RingElement>(
        &self,
        sum: &[R],
        model_len: usize,
        contributors: usize,
    ) -> Result<Decoded, QuantError> {
        self.check_ring::<R>()?;
        if sum.len() <= model_len {
            return Err(QuantError::LengthMismatch {
                len: sum.len(),
                model_len,
            });
        }
        if contributors == 0 {
            return Err(QuantError::NoContributors);
        }
        if contributors > self.max_cohort {
            return Err(QuantError::TooManyContributors {
                contributors,
                max_cohort: self.max_cohort,
            });
        }
        let in_range = |slot: usize, per_site: i64| -> Result<i64, QuantError> {
            let value = sum[slot].to_signed();
            let limit = per_site as i128 * contributors as i128;
            if (value as i128).abs() > limit {
                return Err(QuantError::OutOfRange {
                    slot,
                    value,
                    limit,
                    contributors,
                });
            }
            Ok(value)
        };

        let total = in_range(model_len, self.max_weight.min(i64::MAX as u64) as i64)?;
        if total <= 0 {
            // Every honest weight is ≥ 1, so a non-positive total is corruption
            // unless it is exactly zero.
            return Err(if total == 0 {
                QuantError::ZeroTotalWeight
            } else {
                QuantError::OutOfRange {
                    slot: model_len,
                    value: total,
                    limit: self.max_weight as i128 * contributors as i128,
                    contributors,
                }
            });
        }
        let denom = self.scale * total as f64;
        let mean = (0..model_len)
            .map(|i| in_range(i, self.elem_cap).map(|v| v as f64 / denom))
            .collect::<Result<Vec<_>, _>>()?;
        let extra_bound = self.extra_bound();
        let extras = (model_len + 1..sum.len())
            .map(|i| in_range(i, extra_bound))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decoded {
            mean,
            total_weight: total as u64,
            extras,
        })
    }

    /// Worst-case absolute error of each decoded mean element versus the exact
    /// weighted mean of the clipped updates, for a sum of `contributors`
    /// encodings with total (capped) weight `total_weight`:
    /// `B + 8ε·(c + B)` with `B = contributors / (scale · total_weight)`.
    /// Returns infinity for `total_weight == 0`.
    pub fn error_bound(&self, contributors: usize, total_weight: u64) -> f64 {
        if total_weight == 0 {
            return f64::INFINITY;
        }
        let quanta = contributors as f64 / (self.scale * total_weight as f64);
        quanta + 8.0 * f64::EPSILON * (self.clip + quanta)
    }
}

/// Unbiased stochastic rounding of a finite `v` to an integer.
fn stochastic_round(v: f64, rng: &mut impl CryptoRng) -> i64 {
    let floor = v.floor();
    // Exact: v and ⌊v⌋ share a grid and differ by less than 1.
    let frac = v - floor;
    let u = (rng.next_u64() >> 11) as f64 * TWO_POW_NEG_53;
    let up = if u < frac { 1.0 } else { 0.0 };
    // Saturating cast; the caller's clamp brings it into range.
    (floor + up) as i64
}

#[cfg(test)]
mod tests;
