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
mod tests {
    use super::*;
    use crate::ring::add_assign;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    type Site = (Vec<f32>, u64);

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// Exact-as-f64 weighted mean of the clipped inputs (the decode target).
    fn reference(q: &Quantiser, sites: &[Site]) -> Vec<f64> {
        let d = sites[0].0.len();
        let total: f64 = sites
            .iter()
            .map(|(_, w)| (*w).min(q.max_weight()) as f64)
            .sum();
        (0..d)
            .map(|i| {
                sites
                    .iter()
                    .map(|(x, w)| {
                        (*w).min(q.max_weight()) as f64 * f64::from(x[i]).clamp(-q.clip(), q.clip())
                    })
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    fn sum_all<R: RingElement>(
        q: &Quantiser,
        sites: &[Site],
        extras: &[Vec<i64>],
        seed: u64,
    ) -> Vec<R> {
        let mut r = rng(seed);
        let mut acc: Option<Vec<R>> = None;
        for ((x, w), e) in sites.iter().zip(extras) {
            let enc = q.encode::<R>(x, *w, e, &mut r).expect("encode");
            match acc.as_mut() {
                None => acc = Some(enc),
                Some(a) => add_assign(a, &enc),
            }
        }
        acc.expect("at least one site")
    }

    fn assert_close(q: &Quantiser, sites: &[Site], dec: &Decoded) {
        let want = reference(q, sites);
        let bound = q.error_bound(sites.len(), dec.total_weight);
        for (i, (got, want)) in dec.mean.iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() <= bound,
                "element {i}: got {got}, want {want}, bound {bound}"
            );
        }
    }

    #[test]
    fn single_site_round_trip() {
        for ring in [Ring::U32, Ring::U64] {
            let q = Quantiser::new(&QuantConfig::new(ring, 1.0, 1000, 100)).expect("config");
            let x = vec![0.5f32, -0.25, 0.0, 1.0, -1.0, 0.123_456_79, 7.0, -9.5];
            let sites = vec![(x.clone(), 37)];
            let extras = vec![vec![3, -4]];
            let dec = match ring {
                Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, 1), x.len(), 1),
                Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, 1), x.len(), 1),
            }
            .expect("decode");
            assert_eq!(dec.total_weight, 37);
            assert_eq!(dec.extras, vec![3, -4]);
            assert_close(&q, &sites, &dec);
            // Clipping applied: 7.0 → 1.0, -9.5 → -1.0.
            assert!((dec.mean[6] - 1.0).abs() <= q.error_bound(1, 37));
            assert!((dec.mean[7] + 1.0).abs() <= q.error_bound(1, 37));
        }
    }

    #[test]
    fn unbiased_rounding() {
        // scale 1, weight 1: each element is SR(±0.3) ∈ {0, 1} or {-1, 0}.
        let cfg = QuantConfig {
            scale: Some(1.0),
            min_levels: 0,
            ..QuantConfig::new(Ring::U64, 1.0, 1, 1)
        };
        let q = Quantiser::new(&cfg).expect("config");
        let trials = 200_000;
        let mut r = rng(42);
        for target in [0.3f32, -0.3] {
            let enc = q
                .encode::<u64>(&vec![target; trials], 1, &[], &mut r)
                .expect("encode");
            let mean = enc[..trials]
                .iter()
                .map(|v| v.to_signed() as f64)
                .sum::<f64>()
                / trials as f64;
            // Bernoulli(0.3): σ = √(0.21 / n) ≈ 0.001; allow 5σ.
            let se = (0.21f64 / trials as f64).sqrt();
            assert!(
                (mean - f64::from(target)).abs() < 5.0 * se,
                "mean {mean} for {target}"
            );
            assert!(enc[..trials].iter().all(|v| {
                let s = v.to_signed();
                if target > 0.0 {
                    s == 0 || s == 1
                } else {
                    s == -1 || s == 0
                }
            }));
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        for ring in [Ring::U32, Ring::U64] {
            let (n, w) = (50usize, 1000u64);
            let q = Quantiser::new(&QuantConfig::new(ring, 0.5, w, n)).expect("config");
            for sign in [1.0f32, -1.0] {
                // Values beyond the clip and weights beyond the cap: worst case.
                let sites: Vec<_> = (0..n).map(|_| (vec![sign * 3.0; 4], w * 10)).collect();
                let bound = q.extra_bound();
                let extras: Vec<_> = (0..n).map(|_| vec![bound, -bound]).collect();
                let dec = match ring {
                    Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, 9), 4, n),
                    Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, 9), 4, n),
                }
                .expect("decode");
                assert_eq!(dec.total_weight, n as u64 * w);
                assert_eq!(dec.extras, vec![bound * n as i64, -bound * n as i64]);
                for m in &dec.mean {
                    assert!((m - f64::from(sign) * 0.5).abs() <= q.error_bound(n, n as u64 * w));
                }
            }
        }
    }

    #[test]
    fn auto_scale_is_tight() {
        let q = Quantiser::new(&QuantConfig::new(Ring::U32, 2.0, 100, 10)).expect("config");
        let m = Ring::U32.max_signed() as f64;
        let worst = 10.0 * 100.0 * (q.levels() + 1.0);
        assert!(worst <= m && worst > m * (1.0 - 1e-9), "{worst} vs {m}");
        assert_eq!(q.scale() * 2.0, q.levels());
    }

    #[test]
    fn config_errors() {
        let base = QuantConfig::new(Ring::U32, 1.0, 100, 100);
        let bad = |cfg: QuantConfig| Quantiser::new(&cfg).unwrap_err();
        for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                bad(QuantConfig { clip, ..base }),
                QuantError::InvalidClip { .. }
            ));
        }
        assert_eq!(
            bad(QuantConfig {
                max_weight: 0,
                ..base
            }),
            QuantError::ZeroMaxWeight
        );
        assert_eq!(
            bad(QuantConfig {
                max_cohort: 0,
                ..base
            }),
            QuantError::ZeroMaxCohort
        );
        let e = bad(QuantConfig {
            scale: Some(f64::NAN),
            ..base
        });
        assert!(matches!(e, QuantError::InvalidScale { .. }));

        // Explicit scale that overflows u32.
        let e = bad(QuantConfig {
            scale: Some(1e9),
            ..base
        });
        assert!(matches!(e, QuantError::Overflow { .. }));
        let msg = e.to_string();
        for needle in [
            "max_cohort (100)",
            "max_weight (100)",
            "u32",
            "ring = \"u64\"",
            "lower max_weight",
            "cohort size",
            "clip/scale",
            "2147483647",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg}");
        }

        // Auto scale leaves too few levels in u32; fine in u64.
        let coarse = QuantConfig::new(Ring::U32, 1.0, 1000, 10_000);
        let e = bad(coarse);
        assert!(matches!(e, QuantError::TooCoarse { .. }));
        let msg = e.to_string();
        for needle in [
            "min_levels = 1024",
            "ring = \"u64\"",
            "lower max_weight",
            "cohort size",
            "10000",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg}");
        }
        assert!(
            Quantiser::new(&QuantConfig {
                ring: Ring::U64,
                ..coarse
            })
            .is_ok()
        );

        // Explicit scale that is safe but too small points at the scale.
        let e = bad(QuantConfig {
            scale: Some(10.0),
            ..base
        });
        assert!(e.to_string().contains("raise scale"), "{e}");

        // Weight slot alone overflows.
        let e = bad(QuantConfig::new(Ring::U32, 1.0, 1 << 16, 1 << 16));
        assert!(matches!(e, QuantError::WeightOverflow { .. }));
        assert!(e.to_string().contains("4294967296"), "{e}");
    }

    #[test]
    fn encode_errors() {
        let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 100, 100)).expect("config");
        let mut r = rng(3);
        for (bad, idx) in [(f32::NAN, 2), (f32::INFINITY, 0), (f32::NEG_INFINITY, 4)] {
            let mut x = vec![0.1f32; 5];
            x[idx] = bad;
            let e = q.encode::<u32>(&x, 1, &[], &mut r).unwrap_err();
            assert!(
                matches!(e, QuantError::NonFinite { index, .. } if index == idx),
                "{e}"
            );
            assert!(e.to_string().contains(&format!("element {idx}")), "{e}");
        }
        assert_eq!(
            q.encode::<u32>(&[0.1], 0, &[], &mut r),
            Err(QuantError::ZeroWeight)
        );
        let e = q.encode::<u64>(&[0.1], 1, &[], &mut r).unwrap_err();
        assert!(matches!(e, QuantError::RingMismatch { .. }));
        assert_eq!(
            e.to_string(),
            "quantiser is configured for ring u32 but was asked to use u64"
        );
        let too_big = q.extra_bound() + 1;
        let e = q
            .encode::<u32>(&[0.1], 1, &[0, -too_big], &mut r)
            .unwrap_err();
        assert!(
            matches!(e, QuantError::ExtraOutOfRange { index: 1, .. }),
            "{e}"
        );
        // Weight above the cap is capped, not rejected.
        let enc = q
            .encode::<u32>(&[0.1], 1_000_000, &[], &mut r)
            .expect("capped");
        assert_eq!(enc[1], 100);
    }

    #[test]
    fn decode_errors() {
        let q = Quantiser::new(&QuantConfig::new(Ring::U64, 1.0, 100, 10)).expect("config");
        let mut r = rng(4);
        let enc = q
            .encode::<u64>(&[0.5, -0.5], 3, &[], &mut r)
            .expect("encode");
        assert!(matches!(
            q.decode(&enc, 2, 0),
            Err(QuantError::NoContributors)
        ));
        assert!(matches!(
            q.decode(&enc, 2, 11),
            Err(QuantError::TooManyContributors { .. })
        ));
        assert!(matches!(
            q.decode(&enc, 3, 1),
            Err(QuantError::LengthMismatch { .. })
        ));
        assert_eq!(
            q.decode(&[0u64, 0, 0], 2, 1),
            Err(QuantError::ZeroTotalWeight)
        );
        // An uncancelled mask looks like a huge value: rejected, not decoded.
        let mut masked = enc.clone();
        masked[0] = masked[0].wrapping_add(0x1234_5678_9abc_def0);
        let e = q.decode(&masked, 2, 1).unwrap_err();
        assert!(matches!(e, QuantError::OutOfRange { slot: 0, .. }), "{e}");
        let mut heavy = enc;
        heavy[2] = 101;
        assert!(matches!(
            q.decode(&heavy, 2, 1),
            Err(QuantError::OutOfRange { slot: 2, .. })
        ));
    }

    #[test]
    fn negative_values() {
        let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 10, 4)).expect("config");
        let sites = vec![
            (vec![-0.75f32, -1.5, -0.001], 3),
            (vec![-0.25f32, 0.5, -0.002], 1),
        ];
        let extras = vec![vec![-5], vec![-7]];
        let dec = q
            .decode(&sum_all::<u32>(&q, &sites, &extras, 5), 3, 2)
            .expect("decode");
        assert_eq!(dec.extras, vec![-12]);
        assert_close(&q, &sites, &dec);
        assert!((dec.mean[0] + 0.625).abs() <= q.error_bound(2, 4));
    }

    /// (model length, sites as (update, weight), per-site extras).
    type Case = (usize, Vec<Site>, Vec<Vec<i64>>);

    fn sites_strategy() -> impl Strategy<Value = Case> {
        (1usize..=16, 1usize..=24).prop_flat_map(|(d, n)| {
            let site = (prop::collection::vec(-3.0f32..3.0, d), 1u64..=1500);
            (
                Just(d),
                prop::collection::vec(site, n),
                prop::collection::vec(prop::collection::vec(-1000i64..1000, 2), n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn many_sites_within_bound(
            (d, sites, extras) in sites_strategy(),
            clip in 0.01f64..4.0,
            seed in any::<u64>(),
        ) {
            for ring in [Ring::U32, Ring::U64] {
                let q = Quantiser::new(&QuantConfig::new(ring, clip, 1000, 32)).expect("config");
                let dec = match ring {
                    Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, seed), d, sites.len()),
                    Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, seed), d, sites.len()),
                }.expect("decode");
                let total: u64 = sites.iter().map(|(_, w)| (*w).min(1000)).sum();
                prop_assert_eq!(dec.total_weight, total);
                let want_extras: Vec<i64> = (0..2).map(|j| extras.iter().map(|e| e[j]).sum()).collect();
                prop_assert_eq!(&dec.extras, &want_extras);
                let want = reference(&q, &sites);
                let bound = q.error_bound(sites.len(), total);
                for (got, want) in dec.mean.iter().zip(&want) {
                    prop_assert!((got - want).abs() <= bound, "{} vs {} (bound {})", got, want, bound);
                }
            }
        }
    }
}
