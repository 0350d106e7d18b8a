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
//! SR(v) = ⌊v⌋ + [u < v − ⌊v⌋],       u uniform on {0, 2^-32, …, 1 − 2^-32}
//! ```
//!
//! where `c` is the clip bound, `s` the scale (quanta per unit) and `w` is
//! capped at `max_weight` (`W`) — a site claiming more examples than `W`
//! simply counts as `W`. `u` is 32 bits of an AES-128-CTR keystream under a
//! key drawn from a caller-supplied CSPRNG (a CTR_DRBG generator, rekeyed
//! from that CSPRNG before 2^32 blocks; the caller's generator, called per
//! element, was most of the cost), so `E[SR(v)] = v` exactly whenever
//! `v − ⌊v⌋` is a multiple of 2^-32 and within 2^-32 of a quantum otherwise — far below the quantum itself, the
//! error the bound below counts: stochastic rounding is unbiased, so rounding
//! errors of many sites average out instead of adding up as they would with
//! round-to-nearest biases. Extras are embedded as-is.
//!
//! # Levels and the element width
//!
//! `L = W·c·s` is the number of quanta across the clip range for a site at
//! the weight cap (`levels`, default [`DEFAULT_LEVELS`] = 2^16); it sets
//! `s = L / (W·c)` unless `scale` is given explicitly (then `L = W·c·s`).
//! The element slots are summed and decoded modulo `2^b` for the smallest
//! `b ≥ 8` that holds the sum (next section), so a site need send only the
//! low `b` bits of each masked element (the wire crate's `layout::pack`): the
//! container ring (`u32`, or `u64`) is unchanged and `2^b` divides its
//! modulus, so every sum is still right modulo `2^b`. The weight and extra
//! slots keep the whole ring. With neither `levels` nor `scale` the scale
//! fills the ring as before (`b` = the ring's bits, nothing packed):
//! `L = M/(n·(1 + 2^-40)) − 1`, rounded down.
//!
//! # Why the sum cannot overflow
//!
//! Let `M_b = 2^(b-1) − 1`, `M` that of the ring and `n = max_cohort`.
//! Decoding uses the centred lift (in `b` bits for elements), so a slot is
//! correct iff its true (integer) sum lies in `[-M_b, M_b]` (`[-M, M]`).
//!
//! * Weight slot: `0 < w ≤ W` per site and [`Quantiser::new`] checks
//!   `n · W ≤ M` exactly (in `u128`).
//! * Extras: each must satisfy `|e| ≤ ⌊M / n⌋` ([`Quantiser::extra_bound`]).
//! * Elements: `|SR(v)| ≤ ⌈|v|⌉ < |v| + 1 ≤ w·c·s + 1 ≤ L + 1`.
//!   [`Quantiser::new`] requires `n · (L + 1) ≤ M_b`, evaluated in `f64`
//!   with a relative margin of 2^-40 that dwarfs the ≈ 6·2^-53 rounding of
//!   that check and the three roundings in computing `v`; `b` is the
//!   smallest width meeting it, and a `levels` that needs more than the
//!   ring's bits is an error naming ring, weight cap, cohort and levels
//!   ([`QuantError::LevelsOverflow`]). In addition every element is clamped
//!   to a per-site cap `≤ ⌊M_b / n⌋`, so even a mistake in that float
//!   reasoning could not make `n` sites overflow; the margin is what
//!   guarantees the clamp never changes a value (see `elem_cap` in the code).
//!
//! With 100 sites, `W ≤ 65536` and the default `L = 2^16`, `b = 24`: three
//! bytes per parameter on the wire instead of four.
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
//! |S/(sT) − Σ w_j x_j / T| < N/(sT) + 3.01u·c = c·N·W/(L·T) + 3.01u·c.
//! ```
//!
//! With every site at the weight cap (`T = N·W`) that is `c/L`: `L` is the
//! resolution of the mean across the clip range, and `min_levels` puts a
//! floor under it. Computing `S/(sT)` in `f64` costs four more roundings
//! (converting `S` and `T`, the product `sT`, the division), at most
//! `4.01u` relative on a value bounded by `c + N/(sT)`. Altogether the error
//! is below `N/(sT) + 4.01u·N/(sT) + 7.1u·c`, which
//! [`Quantiser::error_bound`] rounds up to `B + 8ε·(c + B)` with
//! `B = N/(sT) = c·N·W/(L·T)` and `ε = 2u = f64::EPSILON` (the extra factor
//! covers rounding in evaluating the bound itself). The bound is worst case;
//! the typical error is `O(√N / (sT))`.
//!
//! # Validating a sum
//!
//! The decoder sees only the sum, so it checks what `N` honest encodings
//! imply about it: `N ≤ T ≤ N·W`, `|S_i| ≤ ⌊T·c·s·(1 + 2^-41)⌋ + N` (the mean
//! within `±c` up to the rounding slack `N/(sT)`, see
//! [`Quantiser::element_limit`]) and `|Σe| ≤ N·⌊M/n⌋`. A sum outside is an
//! error naming the slot, its value and the bound. What it cannot see: one
//! site moving the mean anywhere inside `±c`, or claiming more weight while
//! the others claim less.

use rand_core::CryptoRng;

use crate::ring::{Ring, RingElement};

mod error;
pub(crate) mod narrow;
mod rounding;
pub use error::QuantError;
pub use rounding::first_non_finite;
use rounding::round_into;

/// Default for [`QuantConfig::min_levels`].
pub const DEFAULT_MIN_LEVELS: u64 = 1024;

/// Default quanta across the clip range for a site at the weight cap
/// (`L = W·c·s`, see the module docs): 2^16.
pub const DEFAULT_LEVELS: u64 = 1 << 16;

/// Narrowest element width the quantiser chooses.
pub const MIN_BITS: u32 = 8;

/// Relative safety margin applied to the float overflow check (see module docs).
const MARGIN: f64 = 1.0 / (1u64 << 40) as f64;

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
    /// Quanta per unit; overrides `levels` when set.
    pub scale: Option<f64>,
    /// Quanta across the clip range for a site at the weight cap,
    /// `L = W·c·s`; sets the scale when `scale` is unset. With both unset the
    /// scale fills the element width (the largest `s` that cannot overflow).
    pub levels: Option<u64>,
    /// Bits `b` of the element slots; `None` picks the smallest `b ≥ 8` that
    /// the scale fits (the ring's bits when the scale fills the ring).
    pub bits: Option<u32>,
    /// Minimum `L = W·c·s`; guards against silently useless precision.
    /// Default [`DEFAULT_MIN_LEVELS`].
    pub min_levels: u64,
}

impl QuantConfig {
    /// Config whose scale fills the ring (no `levels`, no `bits`) with the
    /// default `min_levels`.
    pub fn new(ring: Ring, clip: f64, max_weight: u64, max_cohort: usize) -> Self {
        QuantConfig {
            ring,
            clip,
            max_weight,
            max_cohort,
            scale: None,
            levels: None,
            bits: None,
            min_levels: DEFAULT_MIN_LEVELS,
        }
    }
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
    /// Bits `b` of the element slots.
    bits: u32,
    /// Largest `|q|` one site can emit, `≤ ⌊M_b / max_cohort⌋`.
    elem_cap: i64,
}

/// `n · (W·c·s + 1)`, the float side of the overflow condition.
fn worst_total(n: f64, w: f64, per_weight: f64) -> f64 {
    n * (w * per_weight + 1.0)
}

/// `2^(b−1) − 1`, the largest value the centred lift in `b` bits returns.
pub fn max_signed(bits: u32) -> u64 {
    (1u64 << (bits.clamp(1, 64) - 1)) - 1
}

/// The centred lift of `x` in `b` bits: its low `b` bits, sign-extended.
pub fn lift<R: RingElement>(x: R, bits: u32) -> i64 {
    let shift = 64 - bits.clamp(1, 64);
    ((x.to_signed() as u64) << shift) as i64 >> shift
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
        let budget = |bits: u32| max_signed(bits) as f64 / (1.0 + MARGIN);
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
        if let Some(bits) = cfg.bits
            && !(MIN_BITS..=ring.bits()).contains(&bits)
        {
            return Err(QuantError::InvalidBits { bits, ring });
        }
        // Largest c·s whose worst sum fits `bits` (see the module docs); steps
        // down past float rounding.
        let fits_at = |bits: u32, s: f64| worst_total(n, w, c * s) <= budget(bits);
        let max_scale_at = |bits: u32| {
            let mut s = ((budget(bits) / n - 1.0) / w) / c;
            while s > 0.0 && !fits_at(bits, s) {
                s = s.next_down();
            }
            s.max(0.0)
        };
        let wanted = match (cfg.scale, cfg.levels) {
            (Some(s), _) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(QuantError::InvalidScale { scale: s });
                }
                Some(s)
            }
            (None, Some(levels)) => {
                if levels == 0 {
                    return Err(QuantError::InvalidScale { scale: 0.0 });
                }
                Some(levels as f64 / (w * c))
            }
            (None, None) => None,
        };
        let (scale, bits) = match wanted {
            // Fill the ring (or the given width): today's automatic scale.
            None => {
                let bits = cfg.bits.unwrap_or(ring.bits());
                (max_scale_at(bits), bits)
            }
            Some(s) => {
                let chosen = match cfg.bits {
                    Some(bits) => fits_at(bits, s).then_some(bits),
                    None => (MIN_BITS..=ring.bits()).find(|&b| fits_at(b, s)),
                };
                match (chosen, cfg.scale, cfg.levels) {
                    (Some(bits), _, _) => (s, bits),
                    (None, None, Some(levels)) => {
                        return Err(QuantError::LevelsOverflow {
                            ring,
                            levels,
                            max_cohort: cfg.max_cohort,
                            max_weight: cfg.max_weight,
                            needed: bits_needed(n, levels as f64),
                            max_levels: (max_scale_at(ring.bits()) * w * c).floor(),
                        });
                    }
                    (None, _, _) => {
                        let bits = cfg.bits.unwrap_or(ring.bits());
                        return Err(QuantError::Overflow {
                            ring,
                            half_bits: bits - 1,
                            limit: max_signed(bits),
                            max_cohort: cfg.max_cohort,
                            max_weight: cfg.max_weight,
                            scale: s,
                            per_weight: c * s,
                            total: worst_total(n, w, c * s),
                            max_scale: max_scale_at(bits),
                        });
                    }
                }
            }
        };
        if !scale.is_finite() {
            // Only reachable with a subnormal clip, where c·s loses all meaning.
            return Err(QuantError::InvalidClip { clip: c });
        }

        let levels = w * c * scale;
        if !(levels >= cfg.min_levels as f64 && levels > 0.0) {
            let hint = match (cfg.scale, cfg.levels) {
                (Some(_), _) => "raise scale (or leave it unset), or lower min_levels",
                (None, Some(_)) => "raise levels, or lower min_levels",
                (None, None) => {
                    "use ring = \"u64\" or lower the cohort size \
                     (clip and max_weight do not help: filling the ring gives \
                     levels ≈ 2^(b−1) / cohort), or lower min_levels"
                }
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
        // factor covers the ≤ 3.01u rounding in v), and the margin in `fits_at`
        // keeps it ≤ ⌊M_b/n⌋; the `min` makes overflow impossible regardless.
        let per_site = (max_signed(bits) / cfg.max_cohort as u64) as i64;
        let honest = (levels * (1.0 + MARGIN / 2.0)).floor() as i64;
        let elem_cap = honest.saturating_add(1).min(per_site);

        Ok(Quantiser {
            ring,
            clip: c,
            scale,
            max_weight: cfg.max_weight,
            max_cohort: cfg.max_cohort,
            bits,
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

    /// Quanta across the clip range for a site at the weight cap, `L = W·c·s`.
    pub fn levels(&self) -> f64 {
        self.max_weight as f64 * self.clip * self.scale
    }

    /// Bits `b` of the element slots: the sum of every element is taken, and
    /// decoded, modulo `2^b` (the weight and extra slots use the whole ring).
    pub fn bits(&self) -> u32 {
        self.bits
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
        let mut out = Vec::new();
        self.encode_into(update, weight, extras, rng, &mut out)?;
        Ok(out)
    }

    /// [`Self::encode`] into `out`, replacing what it held: a site encodes a
    /// model-sized vector every round, and writing into last round's memory
    /// costs a fraction of faulting in fresh pages. `out` is left empty on
    /// error.
    pub fn encode_into<R: RingElement>(
        &self,
        update: &[f32],
        weight: u64,
        extras: &[i64],
        rng: &mut impl CryptoRng,
        out: &mut Vec<R>,
    ) -> Result<(), QuantError> {
        out.clear();
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
        if let Some(index) = first_non_finite(update) {
            let value = update[index];
            return Err(QuantError::NonFinite { index, value });
        }

        let w = weight.min(self.max_weight);
        let ws = w as f64 * self.scale;
        out.reserve_exact(update.len() + 1 + extras.len());
        round_into(update, self.clip, ws, self.elem_cap, rng, out);
        out.push(R::from_u64(w));
        out.extend(extras.iter().map(|&e| R::from_i64(e)));
        Ok(())
    }

    /// Decodes the (unmasked) sum of `contributors` encodings of a model with
    /// `model_len` elements. The number of extras is inferred from the length.
    ///
    /// The sum is validated against what `contributors` honest encodings can
    /// hold (the coordinator sees only the sum, so this is all it can check):
    ///
    /// * the weight slot `T` is in `[contributors, contributors × max_weight]`
    ///   (every honest weight is in `[1, max_weight]`);
    /// * every element is within ±[`Self::element_limit`]`(contributors, T)`,
    ///   i.e. the mean stays within `±clip` up to rounding — a sum that would
    ///   rescale the mean beyond the clip is refused, not decoded;
    /// * every extra is within `±contributors × extra_bound`.
    ///
    /// An uncancelled mask fails these with overwhelming probability.
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

        let total = sum[model_len].to_signed();
        let max_total = self.max_weight as u128 * contributors as u128;
        if total == 0 {
            return Err(QuantError::ZeroTotalWeight);
        }
        if total < contributors as i64 || total as u128 > max_total {
            return Err(QuantError::WeightOutOfRange {
                total,
                min: contributors as u64,
                max: max_total,
                contributors,
            });
        }
        // In range, hence positive and at most max_cohort × max_weight.
        let total_weight = total as u64;
        let denom = self.scale * total as f64;
        let limit = self.element_limit(contributors, total_weight);
        let mean = (0..model_len)
            .map(|index| {
                // Only the low b bits of an element slot are meaningful.
                let value = lift(sum[index], self.bits);
                if (value as i128).abs() > limit {
                    return Err(QuantError::ElementOutOfRange {
                        index,
                        value,
                        limit,
                        total_weight,
                        contributors,
                        mean: value as f64 / denom,
                        clip: self.clip,
                    });
                }
                Ok(value as f64 / denom)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let extra_limit = self.extra_bound() as i128 * contributors as i128;
        let extras = (model_len + 1..sum.len())
            .map(|slot| {
                let value = sum[slot].to_signed();
                if (value as i128).abs() > extra_limit {
                    return Err(QuantError::OutOfRange {
                        slot,
                        value,
                        limit: extra_limit,
                        contributors,
                    });
                }
                Ok(value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decoded {
            mean,
            total_weight,
            extras,
        })
    }

    /// Largest `|Σ q_i|` of one element that `contributors` honest sites of
    /// total (capped) weight `total_weight` can produce:
    /// `⌊T·c·s·(1 + 2^-41)⌋ + contributors`, and never more than
    /// `contributors × elem_cap`.
    ///
    /// Each site's `|q| ≤ ⌈w·c·s·(1 + 3.01u)⌉ < w·c·s·(1 + 3.01u) + 1`
    /// (stochastic rounding moves by less than one quantum, see the module
    /// docs); summed, `< T·c·s·(1 + 3.01u) + contributors`. The 2^-41 factor
    /// dwarfs that and the three roundings of evaluating `T·c·s` here, so the
    /// limit holds every honest sum, while a mean beyond `±clip` (by more than
    /// `contributors / (s·T)`, the rounding slack) fails it.
    pub fn element_limit(&self, contributors: usize, total_weight: u64) -> i128 {
        let per_weight = self.clip * self.scale;
        let weighted = (total_weight as f64 * per_weight * (1.0 + MARGIN / 2.0)).floor();
        // Saturating cast: a non-finite or huge value is cut by the min below.
        let weighted = (weighted as i128).saturating_add(contributors as i128);
        weighted.min(self.elem_cap as i128 * contributors as i128)
    }

    /// Worst-case absolute error of each decoded mean element versus the exact
    /// weighted mean of the clipped updates, for a sum of `contributors`
    /// encodings with total (capped) weight `total_weight`:
    /// `B + 8ε·(c + B)` with `B = contributors / (scale · total_weight)`,
    /// i.e. `c·N·W / (L·T)` in terms of the levels `L = W·c·s`.
    /// Returns infinity for `total_weight == 0`.
    pub fn error_bound(&self, contributors: usize, total_weight: u64) -> f64 {
        if total_weight == 0 {
            return f64::INFINITY;
        }
        let quanta = contributors as f64 / (self.scale * total_weight as f64);
        quanta + 8.0 * f64::EPSILON * (self.clip + quanta)
    }
}

/// Smallest `b` with `n·(levels + 1) ≤ 2^(b−1) − 1` (with the margin), for
/// the error message; may exceed 64.
fn bits_needed(n: f64, levels: f64) -> u32 {
    let need = n * (levels + 1.0) * (1.0 + MARGIN);
    (need + 1.0).log2().ceil() as u32 + 1
}

#[cfg(test)]
mod tests;
