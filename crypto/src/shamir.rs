//! Shamir secret sharing of 32-byte secrets, as used by SecAgg+ to share each
//! client's mask seed and key-agreement secret with its neighbours.
//!
//! # Field
//!
//! Arithmetic is in GF(p) with the Mersenne prime p = 2^61 − 1. A product of
//! two field elements fits in a `u128` and reduces with two shift-and-add folds
//! (2^61 ≡ 1 mod p), with no division and no data-dependent branch: the final
//! conditional subtraction is a mask.
//!
//! # Secret encoding
//!
//! A 32-byte secret is cut into 5 limbs, read little-endian: bytes 0..7, 7..14,
//! 14..21 and 21..28 (7 bytes each, so every limb is < 2^56 < p) and bytes
//! 28..32 (4 bytes, < 2^32). Each limb is shared with its own independent
//! polynomial of degree t − 1 whose constant term is the limb and whose other
//! t − 1 coefficients are uniform in GF(p) (rejection-sampled from 61 random
//! bits, so there is no modulo bias). A share holds the 5 evaluations at the
//! share's x-coordinate. Any t − 1 shares are therefore independent of the
//! secret: for every candidate secret there is exactly one polynomial per limb
//! through the t − 1 share points and that secret.
//!
//! x-coordinates are nonzero, distinct `u32`s chosen by the caller (for
//! example member id + 1); every `u32` is < p, so they are distinct field
//! elements. The threshold must be at least 2 ([`MIN_THRESHOLD`]): with t = 1
//! every share *is* the secret, which is never what a caller of a secret
//! sharing scheme wants, so it is rejected rather than silently allowed.
//!
//! # Share wire format
//!
//! [`SHARE_LEN`] = 44 bytes: `x` as `u32` little-endian, then the 5 limb
//! evaluations `y[0..5]` as `u64` little-endian, each a canonical field element
//! (< p). [`Share::from_bytes`] rejects any other length, x = 0 and
//! non-canonical limbs.
//!
//! # Detection guarantees
//!
//! With k shares and threshold t, the k share vectors of every limb must form a
//! codeword of the Reed–Solomon code {(f(x₁), …, f(x_k)) : deg f < t}.
//! [`Reconstructor::reconstruct`] checks this with the code's k − t parity
//! checks (syndromes Σᵢ wᵢ·xᵢʲ·yᵢ = 0 for j < k − t, wᵢ = 1/Πₘ≠ᵢ(xᵢ − xₘ)),
//! which is equivalent to interpolating from t shares and evaluating at the
//! other k − t, but costs one pass and does not single out any t shares:
//!
//! * if between 1 and k − t shares are wrong, [`ShamirError::Inconsistent`]
//!   is **always** returned (the code has minimum distance k − t + 1);
//! * if exactly one share is wrong and k ≥ t + 2, the error names its x
//!   (`offender: Some(x)`). More generally, when fewer than k − t shares are
//!   wrong, `Some(x)` is returned only if exactly that one share is wrong. With
//!   k = t + 1 a wrong share is detected but cannot be located (`None`), and
//!   k − t or more colluding wrong shares could in principle implicate an
//!   honest member, so treat `offender` as a hint for logs, not as proof;
//! * with exactly t shares (or k − t + 1 or more wrong shares that agree on
//!   another polynomial) nothing can be checked by interpolation. The only
//!   local check left is that every reconstructed limb fits its 7-byte (or
//!   4-byte) width ([`ShamirError::InvalidSecretEncoding`]); a random error
//!   passes it with probability about 1/32 for limbs 0–3 and 2^-29 for limb 4.
//!   A caller that needs certainty must compare the result against a
//!   commitment or public key, which the SecAgg+ protocol does.
//!
//! Polynomial coefficients, encoded limbs and every intermediate buffer derived
//! from shares are zeroized after use; [`Share`] zeroizes itself on drop and
//! its `Debug` output shows only `x`.

use core::fmt;

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

mod field;

use field::{P, batch_invert, finv, fmul, fold, fsub, random_field_element, reduce};

/// Length in bytes of a secret.
pub const SECRET_LEN: usize = 32;
/// Length in bytes of an encoded [`Share`].
pub const SHARE_LEN: usize = 4 + 8 * LIMBS;
/// Smallest accepted threshold (t = 1 would make every share equal the secret).
pub const MIN_THRESHOLD: usize = 2;
/// Largest number of shares accepted by [`split`] and [`Reconstructor::new`].
///
/// Bounds the O(k²) setup and O(k·(k − t)) consistency check (a few tens of
/// milliseconds at this size) so hostile input cannot request unbounded work.
pub const MAX_SHARES: usize = 4096;

/// Number of field elements a secret is encoded into.
const LIMBS: usize = 5;
/// Bytes of the secret carried by each limb; they add up to [`SECRET_LEN`].
const LIMB_BYTES: [usize; LIMBS] = [7, 7, 7, 7, 4];

/// Errors from splitting, reconstructing or decoding shares.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are spelled out by each message
pub enum ShamirError {
    /// The threshold is below [`MIN_THRESHOLD`].
    #[error(
        "threshold must be at least {MIN_THRESHOLD}, got {threshold} (with a threshold of 1 every share is the secret)"
    )]
    ThresholdTooSmall { threshold: usize },
    /// Fewer shares (or x-coordinates) than the threshold.
    #[error("threshold {threshold} needs at least {threshold} shares, got {got}")]
    NotEnoughShares { threshold: usize, got: usize },
    /// More shares than [`MAX_SHARES`].
    #[error("at most {max} shares are supported, got {got}")]
    TooManyShares { max: usize, got: usize },
    /// An x-coordinate is 0 (the point where the secret itself lives).
    #[error("share x-coordinate 0 is not allowed (f(0) is the secret)")]
    ZeroX,
    /// The same x-coordinate appears twice.
    #[error("duplicate share x-coordinate {x}")]
    DuplicateX { x: u32 },
    /// [`Reconstructor::reconstruct`] got a different number of shares than the
    /// x set it was built for.
    #[error("this reconstructor was built for {expected} shares, got {got}")]
    ShareCountMismatch { expected: usize, got: usize },
    /// [`Reconstructor::reconstruct`] got a share whose x is not in its x set.
    #[error("share with x-coordinate {x} is not in this reconstructor's x set")]
    UnexpectedShare { x: u32 },
    /// An encoded share has the wrong length.
    #[error("an encoded share is {expected} bytes, got {got}")]
    InvalidLength { expected: usize, got: usize },
    /// An encoded share holds a limb that is not a canonical field element.
    #[error("encoded share limb {index} is not a canonical field element (must be < 2^61 - 1)")]
    NonCanonicalLimb { index: usize },
    /// The shares do not all lie on one polynomial of degree < threshold.
    #[error(
        "shares are inconsistent: they do not lie on one polynomial of degree < threshold{}",
        offender_note(*offender)
    )]
    Inconsistent {
        /// The x of the single share whose replacement makes the set consistent,
        /// when there is one and enough redundancy (k ≥ t + 2) to find it.
        offender: Option<u32>,
    },
    /// The reconstructed value is not the encoding of any 32-byte secret.
    #[error(
        "reconstructed value is not a valid secret encoding: at least one share is corrupted or belongs to another secret"
    )]
    InvalidSecretEncoding,
}

fn offender_note(offender: Option<u32>) -> String {
    match offender {
        Some(x) => format!(" (the share with x-coordinate {x} is wrong)"),
        None => " (the wrong share cannot be identified)".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Secret encoding
// ---------------------------------------------------------------------------

fn encode_secret(secret: &[u8; SECRET_LEN]) -> Zeroizing<[u64; LIMBS]> {
    let mut limbs = Zeroizing::new([0u64; LIMBS]);
    let mut bytes = secret.iter();
    for (limb, &len) in limbs.iter_mut().zip(LIMB_BYTES.iter()) {
        for (shift, &byte) in (0..len).zip(bytes.by_ref()) {
            *limb |= u64::from(byte) << (8 * shift);
        }
    }
    limbs
}

/// Writes the limbs back as bytes; fails if a limb is wider than its slot.
fn decode_secret(limbs: &[u64; LIMBS]) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    // Accumulate overflow bits rather than returning early, so the time taken
    // does not depend on which limb is bad.
    let mut overflow = 0u64;
    for (&limb, &len) in limbs.iter().zip(LIMB_BYTES.iter()) {
        overflow |= limb >> (8 * len);
    }
    if overflow != 0 {
        return Err(ShamirError::InvalidSecretEncoding);
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    let mut out = secret.iter_mut();
    for (&limb, &len) in limbs.iter().zip(LIMB_BYTES.iter()) {
        for (shift, byte) in (0..len).zip(out.by_ref()) {
            *byte = (limb >> (8 * shift)) as u8;
        }
    }
    Ok(secret)
}

// ---------------------------------------------------------------------------
// Shares
// ---------------------------------------------------------------------------

/// One member's share of a 32-byte secret: the evaluations of the 5 limb
/// polynomials at `x`. Zeroized on drop; `Debug` shows only `x`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    x: u32,
    y: [u64; LIMBS],
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// The share's x-coordinate (nonzero).
    pub fn x(&self) -> u32 {
        self.x
    }

    /// Encodes the share as `x` (u32 LE) followed by 5 limbs (u64 LE).
    ///
    /// The bytes are secret: the caller should zeroize them after use (for
    /// example by wrapping them in [`Zeroizing`]).
    pub fn to_bytes(&self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        let (x_bytes, y_bytes) = out.split_at_mut(4);
        x_bytes.copy_from_slice(&self.x.to_le_bytes());
        for (chunk, &limb) in y_bytes.chunks_exact_mut(8).zip(self.y.iter()) {
            for (shift, byte) in chunk.iter_mut().enumerate() {
                *byte = (limb >> (8 * shift)) as u8;
            }
        }
        out
    }

    /// Decodes a share written by [`Share::to_bytes`], rejecting a wrong
    /// length, x = 0 and limbs that are not canonical field elements.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShamirError> {
        if bytes.len() != SHARE_LEN {
            return Err(ShamirError::InvalidLength {
                expected: SHARE_LEN,
                got: bytes.len(),
            });
        }
        let (x_bytes, y_bytes) = bytes.split_at(4);
        let x = x_bytes
            .iter()
            .rev()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        // Built in place so that a rejected share is still zeroized on drop.
        let mut share = Share { x, y: [0; LIMBS] };
        let mut non_canonical = 0u32;
        for (index, (limb, chunk)) in share.y.iter_mut().zip(y_bytes.chunks_exact(8)).enumerate() {
            *limb = chunk
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            non_canonical |= u32::from(*limb >= P) << index;
        }
        if non_canonical != 0 {
            return Err(ShamirError::NonCanonicalLimb {
                index: non_canonical.trailing_zeros() as usize,
            });
        }
        Ok(share)
    }
}

/// Checks threshold and x set; returns the x set sorted ascending.
fn validate(xs: &[u32], threshold: usize) -> Result<Vec<u32>, ShamirError> {
    if threshold < MIN_THRESHOLD {
        return Err(ShamirError::ThresholdTooSmall { threshold });
    }
    if xs.len() < threshold {
        return Err(ShamirError::NotEnoughShares {
            threshold,
            got: xs.len(),
        });
    }
    if xs.len() > MAX_SHARES {
        return Err(ShamirError::TooManyShares {
            max: MAX_SHARES,
            got: xs.len(),
        });
    }
    let mut sorted = xs.to_vec();
    sorted.sort_unstable();
    if sorted.first() == Some(&0) {
        return Err(ShamirError::ZeroX);
    }
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(ShamirError::DuplicateX { x: pair[0] });
    }
    Ok(sorted)
}

/// Splits `secret` into one share per x in `xs` (same order), any `threshold`
/// of which reconstruct it and any `threshold − 1` of which reveal nothing.
///
/// Requires `MIN_THRESHOLD ≤ threshold ≤ xs.len() ≤ MAX_SHARES` and distinct,
/// nonzero x-coordinates.
pub fn split<R: CryptoRng>(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    validate(xs, threshold)?;
    let limbs = encode_secret(secret);
    let mut shares: Vec<Share> = xs.iter().map(|&x| Share { x, y: [0; LIMBS] }).collect();
    // One coefficient buffer reused for every limb, zeroized when dropped.
    let mut coeffs = Zeroizing::new(vec![0u64; threshold]);
    for (index, &limb) in limbs.iter().enumerate() {
        let (constant, rest) = coeffs.split_at_mut(1);
        constant[0] = limb;
        for c in rest {
            *c = random_field_element(rng);
        }
        // Horner's rule for all shares at once: coefficient-outer order makes
        // the per-share chains independent, so the loop is throughput- rather
        // than latency-bound. Lazily reduced acc < 2^62, so acc·x + c < 2^95.
        for &c in coeffs.iter().rev() {
            for share in shares.iter_mut() {
                let acc = share.y[index];
                share.y[index] = fold(u128::from(acc) * u128::from(share.x) + u128::from(c));
            }
        }
        for share in shares.iter_mut() {
            share.y[index] = reduce(u128::from(share.y[index]));
        }
    }
    Ok(shares)
}

/// Precomputed reconstruction for one fixed set of x-coordinates.
///
/// Building it costs O(k²) field operations for k shares; a SecAgg+ round
/// reconstructs many secrets from shares held by the same responders, so the
/// setup is done once and [`Reconstructor::reconstruct`] is O(k·(k − t + 1)).
#[derive(Clone, Debug)]
pub struct Reconstructor {
    threshold: usize,
    /// Sorted ascending, so shares can be matched in any order.
    xs: Vec<u32>,
    /// Lagrange coefficients at 0 over all k points, aligned with `xs`.
    lagrange: Vec<u64>,
    /// Barycentric weights 1/Πₘ≠ᵢ(xᵢ − xₘ): together with powers of xᵢ they
    /// form the parity checks of the code of degree-< t polynomials.
    weights: Vec<u64>,
}

impl Reconstructor {
    /// Prepares reconstruction from shares with exactly the x-coordinates `xs`
    /// (any order) for a secret split with `threshold`.
    pub fn new(xs: &[u32], threshold: usize) -> Result<Self, ShamirError> {
        let xs = validate(xs, threshold)?;
        let k = xs.len();
        // Πₘ≠ᵢ(xᵢ − xₘ) = (−1)^(k−1−i) · Πₘ≠ᵢ|xᵢ − xₘ| because `xs` is sorted
        // (the k − 1 − i larger xₘ give negative differences). The absolute
        // differences are < 2^32, so one fold per factor; the factor for
        // m = i is replaced by 1 (the only zero difference, xs being distinct).
        let mut denominators = vec![1u64; k];
        for &xm in &xs {
            for (d, &xi) in denominators.iter_mut().zip(&xs) {
                let factor = xi.abs_diff(xm).max(1);
                *d = fold(u128::from(*d) * u128::from(factor));
            }
        }
        // First k entries: the denominators; last k: xᵢ. Inverted together.
        let mut inverses: Vec<u64> = denominators
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let d = reduce(u128::from(d));
                if (k - 1 - i) % 2 == 1 { fsub(0, d) } else { d }
            })
            .collect();
        inverses.extend(xs.iter().map(|&x| u64::from(x)));
        batch_invert(&mut inverses);
        let (weights, inv_xs) = inverses.split_at(k);

        // λᵢ = Πₘ≠ᵢ (0 − xₘ)/(xᵢ − xₘ) = (−1)^(k−1) · (Πₘ xₘ) · wᵢ / xᵢ.
        let mut scale = xs.iter().fold(1, |acc, &x| fmul(acc, u64::from(x)));
        if (k - 1) % 2 == 1 {
            scale = fsub(0, scale);
        }
        let lagrange = weights
            .iter()
            .zip(inv_xs)
            .map(|(&w, &inv_x)| fmul(scale, fmul(w, inv_x)))
            .collect();
        Ok(Self {
            threshold,
            lagrange,
            weights: weights.to_vec(),
            xs,
        })
    }

    /// The threshold this reconstructor checks against.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The x set, sorted ascending.
    pub fn xs(&self) -> &[u32] {
        &self.xs
    }

    /// Reconstructs the secret from one share per x of this reconstructor's
    /// x set, in any order.
    ///
    /// When there are more shares than the threshold, all of them must lie on
    /// one polynomial of degree < threshold (per limb), else
    /// [`ShamirError::Inconsistent`]; see the module docs for what is detected.
    pub fn reconstruct(
        &self,
        shares: &[Share],
    ) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
        let k = self.xs.len();
        if shares.len() < self.threshold {
            return Err(ShamirError::NotEnoughShares {
                threshold: self.threshold,
                got: shares.len(),
            });
        }
        if shares.len() != k {
            return Err(ShamirError::ShareCountMismatch {
                expected: k,
                got: shares.len(),
            });
        }

        // Shares put into the order of `self.xs`.
        let mut ys = Zeroizing::new(vec![[0u64; LIMBS]; k]);
        let mut seen = vec![false; k];
        for share in shares {
            let pos = self
                .xs
                .binary_search(&share.x)
                .map_err(|_| ShamirError::UnexpectedShare { x: share.x })?;
            if seen[pos] {
                return Err(ShamirError::DuplicateX { x: share.x });
            }
            seen[pos] = true;
            ys[pos] = share.y;
        }

        let redundancy = k - self.threshold;
        let mut limbs = Zeroizing::new([0u64; LIMBS]);
        // Syndromes, limb-major; all zero iff every limb is consistent.
        let mut syndromes = Zeroizing::new(vec![0u64; LIMBS * redundancy]);
        let mut scratch = Zeroizing::new(vec![0u64; k]);
        let mut any_nonzero = 0u64;
        for (limb_index, limb) in limbs.iter_mut().enumerate() {
            // Each term is reduced (< 2^61) and k ≤ 4096, so the u128 sum is
            // far below reduce()'s 2^122 bound.
            let sum: u128 = self
                .lagrange
                .iter()
                .zip(ys.iter())
                .map(|(&l, y)| u128::from(fmul(l, y[limb_index])))
                .sum();
            *limb = reduce(sum);

            if redundancy == 0 {
                continue;
            }
            for ((s, &w), y) in scratch.iter_mut().zip(&self.weights).zip(ys.iter()) {
                *s = fmul(w, y[limb_index]);
            }
            let row = &mut syndromes[limb_index * redundancy..(limb_index + 1) * redundancy];
            for syndrome in row.iter_mut() {
                // Sum the current row and step every term to the next power of
                // xᵢ in one pass; terms stay lazily reduced (< 2^62), so the
                // sum of at most 4096 of them is < 2^74.
                let mut sum = 0u128;
                for (s, &x) in scratch.iter_mut().zip(&self.xs) {
                    sum += u128::from(*s);
                    *s = fold(u128::from(*s) * u128::from(x));
                }
                *syndrome = reduce(sum);
                any_nonzero |= *syndrome;
            }
        }
        if any_nonzero != 0 {
            return Err(ShamirError::Inconsistent {
                offender: self.locate_single_error(&syndromes, redundancy),
            });
        }
        decode_secret(&limbs)
    }

    /// Finds the x of the one share that explains every nonzero syndrome row.
    ///
    /// A single error E at xᵢ gives syndromes sⱼ = wᵢ·E·xᵢʲ, a geometric
    /// sequence with ratio xᵢ; this needs at least two syndromes per limb.
    /// Runs only on the error path, so its data-dependent branches reveal
    /// nothing beyond the (already public) failure.
    fn locate_single_error(&self, syndromes: &[u64], redundancy: usize) -> Option<u32> {
        if redundancy < 2 {
            return None;
        }
        let mut located: Option<u64> = None;
        for row in syndromes.chunks_exact(redundancy) {
            if row.iter().all(|&s| s == 0) {
                continue; // this limb of the bad share happens to be right
            }
            let first = row[0];
            if first == 0 {
                return None;
            }
            let ratio = fmul(row[1], finv(first));
            let mut expected = first;
            for &s in row {
                if s != expected {
                    return None;
                }
                expected = fmul(expected, ratio);
            }
            match located {
                Some(x) if x != ratio => return None,
                _ => located = Some(ratio),
            }
        }
        let x = u32::try_from(located?).ok()?;
        self.xs.binary_search(&x).ok().map(|_| x)
    }
}

/// Reconstructs a secret from `shares` (any order), building a one-off
/// [`Reconstructor`]; use a `Reconstructor` directly to reconstruct many
/// secrets from the same x set.
pub fn reconstruct(
    shares: &[Share],
    threshold: usize,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    let xs: Vec<u32> = shares.iter().map(Share::x).collect();
    Reconstructor::new(&xs, threshold)?.reconstruct(shares)
}

#[cfg(test)]
mod tests;
