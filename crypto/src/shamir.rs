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
/// The Mersenne prime 2^61 − 1.
const P: u64 = (1 << 61) - 1;

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
// GF(2^61 - 1)
// ---------------------------------------------------------------------------

/// Maps `s < 2p` to `s mod p` with a mask instead of a branch.
#[inline(always)]
fn cond_sub_p(s: u64) -> u64 {
    let t = s.wrapping_sub(P);
    // The top bit of `t` is set exactly when `s < p` (the subtraction wrapped).
    let keep_s = 0u64.wrapping_sub(t >> 63);
    (t & !keep_s) | (s & keep_s)
}

/// Reduces `v < 2^122` (a product of two field elements, or a sum of up to
/// 2^60 values below 2^62) to its canonical representative.
#[inline(always)]
fn reduce(v: u128) -> u64 {
    // 2^61 ≡ 1, so the high part folds onto the low part: < 2^61 + 2^61.
    let folded = ((v as u64) & P) + ((v >> 61) as u64);
    // A second fold leaves at most p + 1 < 2p.
    cond_sub_p((folded & P) + (folded >> 61))
}

/// Partial reduction of `v < 2^96` to a value `< 2^62` congruent to it mod p.
///
/// Hot loops multiply by x-coordinates (< 2^32), so a lazily reduced value
/// times x stays below 2^94 and one fold per step is enough; values are made
/// canonical with [`reduce`] only at the end.
#[inline(always)]
fn fold(v: u128) -> u64 {
    ((v as u64) & P) + ((v >> 61) as u64)
}

#[inline(always)]
fn fsub(a: u64, b: u64) -> u64 {
    cond_sub_p(a + P - b)
}

#[inline(always)]
fn fmul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn fpow(mut base: u64, mut exp: u64) -> u64 {
    let mut acc = 1;
    // Branches only on the exponent, which is always public (p − 2).
    while exp != 0 {
        if exp & 1 == 1 {
            acc = fmul(acc, base);
        }
        base = fmul(base, base);
        exp >>= 1;
    }
    acc
}

/// Multiplicative inverse by Fermat (a^(p−2)); maps 0 to 0, callers never pass 0.
fn finv(a: u64) -> u64 {
    fpow(a, P - 2)
}

/// Inverts every element in place with one field inversion (Montgomery's trick).
/// All elements must be nonzero; they are public values (x-coordinates).
fn batch_invert(values: &mut [u64]) {
    let mut prefix = Vec::with_capacity(values.len());
    let mut acc = 1;
    for &v in values.iter() {
        prefix.push(acc);
        acc = fmul(acc, v);
    }
    let mut inv = finv(acc);
    for (v, before) in values.iter_mut().zip(prefix).rev() {
        let original = *v;
        *v = fmul(inv, before);
        inv = fmul(inv, original);
    }
}

/// Uniform field element: 61 random bits, rejecting the single value p
/// (probability 2^-61), so there is no modulo bias.
fn random_field_element<R: CryptoRng>(rng: &mut R) -> u64 {
    loop {
        let candidate = rng.next_u64() >> 3;
        if candidate < P {
            return candidate;
        }
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashSet;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn random_secret(rng: &mut StdRng) -> [u8; SECRET_LEN] {
        let mut s = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut s);
        s
    }

    /// `n` distinct nonzero x-coordinates spread over the whole u32 range.
    fn random_xs(rng: &mut StdRng, n: usize) -> Vec<u32> {
        let mut seen = HashSet::new();
        let mut xs = Vec::with_capacity(n);
        while xs.len() < n {
            let x: u32 = rng.random_range(1..=u32::MAX);
            if seen.insert(x) {
                xs.push(x);
            }
        }
        xs
    }

    /// Only tests need a standalone field addition (sums are accumulated in u128).
    fn fadd(a: u64, b: u64) -> u64 {
        cond_sub_p(a + b)
    }

    fn naive_mul(a: u64, b: u64) -> u64 {
        ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64
    }

    /// Value at `at` of the polynomial of degree < points.len() through `points`.
    fn interpolate_at(points: &[(u64, u64)], at: u64) -> u64 {
        points.iter().enumerate().fold(0, |acc, (i, &(xi, yi))| {
            let basis = points
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != i)
                .fold(1, |b, (_, &(xm, _))| {
                    fmul(b, fmul(fsub(at, xm), finv(fsub(xi, xm))))
                });
            fadd(acc, fmul(yi, basis))
        })
    }

    /// Adds a nonzero error to one limb of a share.
    fn tamper(share: &mut Share, limb: usize, delta: u64) {
        assert!(!delta.is_multiple_of(P));
        share.y[limb] = fadd(share.y[limb], delta % P);
    }

    // ---- field -------------------------------------------------------------

    fn edge_values() -> Vec<u64> {
        vec![
            0,
            1,
            2,
            3,
            P - 1,
            P - 2,
            P / 2,
            1 << 32,
            (1 << 56) - 1,
            (1 << 60) + 12345,
        ]
    }

    #[test]
    fn mul_matches_naive_u128_mod() {
        let mut r = rng(1);
        let mut values = edge_values();
        values.extend((0..200).map(|_| random_field_element(&mut r)));
        for &a in &values {
            for &b in &values {
                assert_eq!(fmul(a, b), naive_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn add_sub_match_naive() {
        let mut r = rng(2);
        let mut values = edge_values();
        values.extend((0..100).map(|_| random_field_element(&mut r)));
        for &a in &values {
            for &b in &values {
                assert_eq!(
                    u128::from(fadd(a, b)),
                    (u128::from(a) + u128::from(b)) % u128::from(P)
                );
                assert_eq!(fsub(fadd(a, b), b), a);
                assert_eq!(fadd(fsub(a, b), b), a);
            }
        }
    }

    #[test]
    fn reduce_handles_extremes() {
        assert_eq!(reduce(0), 0);
        assert_eq!(reduce(u128::from(P)), 0);
        assert_eq!(reduce(u128::from(P) + 5), 5);
        let max = u128::from(P - 1) * u128::from(P - 1);
        assert_eq!(u128::from(reduce(max)), max % u128::from(P));
        let near_bound = (1u128 << 122) - 1;
        assert_eq!(u128::from(reduce(near_bound)), near_bound % u128::from(P));
        for s in [0, 1, P - 1, P, P + 1, 2 * P - 1] {
            assert_eq!(cond_sub_p(s), s % P);
        }
    }

    #[test]
    fn fold_is_congruent_and_below_2_62() {
        let mut r = rng(16);
        for _ in 0..2000 {
            let v = u128::from(r.next_u64() >> 2) * u128::from(r.next_u32()) + u128::from(P);
            let f = fold(v);
            assert!(f < 1 << 62);
            assert_eq!(u128::from(reduce(u128::from(f))), v % u128::from(P));
        }
    }

    #[test]
    fn reconstructor_matches_naive_lagrange_and_weights() {
        let mut r = rng(17);
        for k in [2usize, 3, 8, 33] {
            let rec = Reconstructor::new(&random_xs(&mut r, k), 2).expect("new");
            for (i, &xi) in rec.xs.iter().enumerate() {
                let (mut num, mut den) = (1, 1);
                for (_, &xm) in rec.xs.iter().enumerate().filter(|&(m, _)| m != i) {
                    num = fmul(num, fsub(0, u64::from(xm)));
                    den = fmul(den, fsub(u64::from(xi), u64::from(xm)));
                }
                assert_eq!(rec.weights[i], finv(den), "k={k} i={i}");
                assert_eq!(rec.lagrange[i], fmul(num, finv(den)), "k={k} i={i}");
            }
        }
    }

    #[test]
    fn inverse_is_inverse() {
        let mut r = rng(3);
        let mut values: Vec<u64> = edge_values().into_iter().filter(|&v| v != 0).collect();
        values.extend(
            (0..500)
                .map(|_| random_field_element(&mut r))
                .filter(|&v| v != 0),
        );
        for &a in &values {
            assert_eq!(fmul(a, finv(a)), 1, "inverse of {a}");
        }
        let mut batch = values.clone();
        batch_invert(&mut batch);
        for (&a, &inv) in values.iter().zip(&batch) {
            assert_eq!(inv, finv(a));
        }
        assert_eq!(fpow(3, P - 1), 1); // Fermat
    }

    /// Yields a scripted sequence of u64 words.
    struct ScriptedRng(std::vec::IntoIter<u64>);

    impl rand_core::TryRng for ScriptedRng {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.0.next().unwrap_or(0) as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(self.0.next().unwrap_or(0))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(0);
            Ok(())
        }
    }
    impl rand_core::TryCryptoRng for ScriptedRng {}

    #[test]
    fn sampling_rejects_p_without_reducing() {
        // Top 61 bits all ones is exactly p: must be rejected, not mapped to 0.
        let mut r = ScriptedRng(vec![u64::MAX, u64::MAX, (P - 1) << 3 | 0b111].into_iter());
        assert_eq!(random_field_element(&mut r), P - 1);
        let mut r = ScriptedRng(vec![0b101].into_iter());
        assert_eq!(random_field_element(&mut r), 0); // low 3 bits discarded
    }

    // ---- encoding ----------------------------------------------------------

    #[test]
    fn secret_encoding_roundtrip_and_widths() {
        let mut r = rng(4);
        for secret in [[0u8; 32], [0xff; 32], random_secret(&mut r)] {
            let limbs = encode_secret(&secret);
            for (&limb, &len) in limbs.iter().zip(&LIMB_BYTES) {
                assert!(limb < 1 << (8 * len));
            }
            assert_eq!(*decode_secret(&limbs).expect("valid"), secret);
        }
        let mut limbs = [0u64; LIMBS];
        limbs[4] = 1 << 32;
        assert_eq!(
            decode_secret(&limbs),
            Err(ShamirError::InvalidSecretEncoding)
        );
        limbs = [0; LIMBS];
        limbs[0] = 1 << 56;
        assert_eq!(
            decode_secret(&limbs),
            Err(ShamirError::InvalidSecretEncoding)
        );
    }

    #[test]
    fn share_bytes_roundtrip() {
        let mut r = rng(5);
        let shares = split(&random_secret(&mut r), 3, &[1, 7, u32::MAX], &mut r).expect("split");
        for share in &shares {
            let bytes = share.to_bytes();
            assert_eq!(&bytes[..4], &share.x.to_le_bytes());
            let back = Share::from_bytes(&bytes).expect("decode");
            assert_eq!(back.x(), share.x());
            assert_eq!(back.y, share.y);
        }
        let max = Share {
            x: 9,
            y: [P - 1; LIMBS],
        };
        assert_eq!(
            Share::from_bytes(&max.to_bytes()).expect("p - 1 ok").y,
            [P - 1; LIMBS]
        );
    }

    #[test]
    fn from_bytes_rejects_bad_input() {
        let good = Share {
            x: 5,
            y: [1, 2, 3, 4, 5],
        }
        .to_bytes();
        for len in [0, 1, 43, 45, 88] {
            let mut v = good.to_vec();
            v.resize(len, 0);
            assert_eq!(
                Share::from_bytes(&v).map(|s| s.x()),
                Err(ShamirError::InvalidLength {
                    expected: 44,
                    got: len
                })
            );
        }
        let mut zero_x = good;
        zero_x[..4].fill(0);
        assert_eq!(
            Share::from_bytes(&zero_x).map(|s| s.x()),
            Err(ShamirError::ZeroX)
        );
        for index in 0..LIMBS {
            for bad in [P, P + 1, u64::MAX] {
                let mut b = good;
                b[4 + 8 * index..12 + 8 * index].copy_from_slice(&bad.to_le_bytes());
                assert_eq!(
                    Share::from_bytes(&b).map(|s| s.x()),
                    Err(ShamirError::NonCanonicalLimb { index })
                );
            }
        }
    }

    #[test]
    fn debug_hides_y_and_zeroize_clears() {
        let mut share = Share {
            x: 42,
            y: [123_456_789; LIMBS],
        };
        let shown = format!("{share:?}");
        assert!(shown.contains("42"));
        assert!(!shown.contains("123456789"), "{shown}");
        share.zeroize();
        assert_eq!((share.x, share.y), (0, [0; LIMBS]));
    }

    // ---- split / reconstruct ---------------------------------------------------

    #[test]
    fn roundtrip_many_thresholds_and_sizes() {
        let mut r = rng(6);
        for t in 2..=12 {
            for n in t..=14 {
                let secret = random_secret(&mut r);
                let xs = random_xs(&mut r, n);
                let shares = split(&secret, t, &xs, &mut r).expect("split");
                assert_eq!(shares.iter().map(Share::x).collect::<Vec<_>>(), xs);
                assert_eq!(
                    *reconstruct(&shares, t).expect("all"),
                    secret,
                    "t={t} n={n}"
                );
                assert_eq!(*reconstruct(&shares[n - t..], t).expect("t"), secret);
            }
        }
        for secret in [[0u8; 32], [0xff; 32]] {
            let shares = split(&secret, 2, &[1, 2], &mut r).expect("split");
            assert_eq!(*reconstruct(&shares, 2).expect("extreme"), secret);
        }
    }

    #[test]
    fn roundtrip_1000_shares_threshold_501() {
        let mut r = rng(7);
        let secret = random_secret(&mut r);
        let xs: Vec<u32> = (1..=1000).collect();
        let mut shares = split(&secret, 501, &xs, &mut r).expect("split");
        shares.shuffle(&mut r);
        assert_eq!(*reconstruct(&shares, 501).expect("all 1000"), secret);
        assert_eq!(*reconstruct(&shares[..501], 501).expect("501"), secret);
        assert_eq!(*reconstruct(&shares[300..900], 501).expect("600"), secret);
        tamper(&mut shares[700], 2, 99);
        let x = shares[700].x();
        assert_eq!(
            reconstruct(&shares, 501).map(|_| ()),
            Err(ShamirError::Inconsistent { offender: Some(x) })
        );
        assert_eq!(
            reconstruct(&shares[..500], 501).map(|_| ()),
            Err(ShamirError::NotEnoughShares {
                threshold: 501,
                got: 500
            })
        );
    }

    #[test]
    fn every_subset_of_at_least_t_reconstructs() {
        let mut r = rng(8);
        let (n, t) = (7usize, 4usize);
        let secret = random_secret(&mut r);
        let shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
        let mut checked = 0;
        for mask in 0u32..(1 << n) {
            let subset: Vec<Share> = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| shares[i].clone())
                .collect();
            let result = reconstruct(&subset, t).map(|s| *s);
            if subset.len() >= t {
                assert_eq!(result, Ok(secret), "mask {mask:b}");
                checked += 1;
            } else {
                assert_eq!(
                    result,
                    Err(ShamirError::NotEnoughShares {
                        threshold: t,
                        got: subset.len()
                    })
                );
            }
        }
        assert_eq!(checked, 64); // C(7,4)+C(7,5)+C(7,6)+C(7,7)
    }

    #[test]
    fn fewer_than_t_shares_is_an_error() {
        let mut r = rng(9);
        let shares = split(&random_secret(&mut r), 5, &[1, 2, 3, 4, 5, 6], &mut r).expect("split");
        for m in 0..5 {
            assert_eq!(
                reconstruct(&shares[..m], 5).map(|_| ()),
                Err(ShamirError::NotEnoughShares {
                    threshold: 5,
                    got: m
                })
            );
        }
        let rec = Reconstructor::new(&[1, 2, 3, 4, 5], 5).expect("new");
        assert_eq!(
            rec.reconstruct(&shares[..4]).map(|_| ()),
            Err(ShamirError::NotEnoughShares {
                threshold: 5,
                got: 4
            })
        );
    }

    /// Information-theoretic hiding: t − 1 real shares are consistent with ANY
    /// secret. For each candidate secret we build the polynomial through
    /// (0, candidate) and the t − 1 share points and fabricate further shares
    /// from it; together with the real t − 1 shares they reconstruct the
    /// candidate and pass the full consistency check.
    #[test]
    fn t_minus_1_shares_do_not_determine_the_secret() {
        let mut r = rng(10);
        for t in 2..=8 {
            let real_secret = random_secret(&mut r);
            let xs: Vec<u32> = (1..=t as u32 + 1).collect();
            let shares = split(&real_secret, t, &xs, &mut r).expect("split");
            let known = &shares[..t - 1];
            let other_secret = random_secret(&mut r);
            assert_ne!(real_secret, other_secret);
            for candidate in [real_secret, other_secret, [0u8; 32], [0xff; 32]] {
                let limbs = encode_secret(&candidate);
                let fabricate = |x: u32| {
                    let mut y = [0u64; LIMBS];
                    for (l, y_l) in y.iter_mut().enumerate() {
                        let mut points = vec![(0, limbs[l])];
                        points.extend(known.iter().map(|s| (u64::from(s.x), s.y[l])));
                        *y_l = interpolate_at(&points, u64::from(x));
                    }
                    Share { x, y }
                };
                let mut set: Vec<Share> = known.to_vec();
                set.push(fabricate(5000));
                assert_eq!(*reconstruct(&set, t).expect("t shares"), candidate);
                set.push(fabricate(6000));
                set.push(fabricate(7000));
                assert_eq!(*reconstruct(&set, t).expect("consistent t + 2"), candidate);
                if candidate == real_secret {
                    // The polynomial through the real secret is the dealer's.
                    let again = fabricate(shares[t - 1].x);
                    assert_eq!(again.y, shares[t - 1].y);
                }
            }
        }
    }

    #[test]
    fn tampered_share_is_named_with_two_extra_shares() {
        let mut r = rng(11);
        for t in [2usize, 3, 5, 8] {
            let n = t + 2;
            let secret = random_secret(&mut r);
            let shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
            for victim in 0..n {
                for limbs in [vec![0], vec![4], vec![1, 3], vec![0, 1, 2, 3, 4]] {
                    let mut bad = shares.clone();
                    for &l in &limbs {
                        tamper(&mut bad[victim], l, r.random_range(1..P));
                    }
                    bad.shuffle(&mut r);
                    assert_eq!(
                        reconstruct(&bad, t).map(|_| ()),
                        Err(ShamirError::Inconsistent {
                            offender: Some(shares[victim].x)
                        }),
                        "t={t} victim={victim} limbs={limbs:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tampering_is_detected_up_to_k_minus_t_bad_shares() {
        let mut r = rng(12);
        let (k, t) = (20usize, 8usize);
        let shares =
            split(&random_secret(&mut r), t, &random_xs(&mut r, k), &mut r).expect("split");
        // One extra share: detected but not locatable.
        let mut bad = shares[..t + 1].to_vec();
        tamper(&mut bad[3], 1, 1);
        assert_eq!(
            reconstruct(&bad, t).map(|_| ()),
            Err(ShamirError::Inconsistent { offender: None })
        );
        for wrong in 2..=k - t {
            let mut bad = shares.clone();
            let mut victims: Vec<usize> = (0..k).collect();
            victims.shuffle(&mut r);
            for &v in &victims[..wrong] {
                tamper(&mut bad[v], r.random_range(0..LIMBS), r.random_range(1..P));
            }
            assert!(
                matches!(reconstruct(&bad, t), Err(ShamirError::Inconsistent { .. })),
                "{wrong} wrong shares"
            );
        }
    }

    #[test]
    fn corrupted_share_with_exactly_t_fails_limb_width_check() {
        let mut r = rng(13);
        let shares = split(&random_secret(&mut r), 4, &[1, 2, 3, 4], &mut r).expect("split");
        let mut bad = shares.clone();
        // An error in the 4-byte limb survives the width check with prob 2^-29.
        tamper(&mut bad[2], 4, 0x1234_5678_9abc);
        assert_eq!(
            reconstruct(&bad, 4).map(|_| ()),
            Err(ShamirError::InvalidSecretEncoding)
        );
    }

    #[test]
    fn parameter_validation() {
        let mut r = rng(14);
        let s = random_secret(&mut r);
        let split_err = |t: usize, xs: &[u32], r: &mut StdRng| split(&s, t, xs, r).map(|_| ());
        assert_eq!(
            split_err(0, &[1, 2], &mut r),
            Err(ShamirError::ThresholdTooSmall { threshold: 0 })
        );
        assert_eq!(
            split_err(1, &[1, 2], &mut r),
            Err(ShamirError::ThresholdTooSmall { threshold: 1 })
        );
        assert_eq!(
            split_err(3, &[1, 2], &mut r),
            Err(ShamirError::NotEnoughShares {
                threshold: 3,
                got: 2
            })
        );
        assert_eq!(split_err(2, &[1, 0, 3], &mut r), Err(ShamirError::ZeroX));
        assert_eq!(
            split_err(2, &[4, 9, 4], &mut r),
            Err(ShamirError::DuplicateX { x: 4 })
        );
        let too_many: Vec<u32> = (1..=MAX_SHARES as u32 + 1).collect();
        assert_eq!(
            split_err(2, &too_many, &mut r),
            Err(ShamirError::TooManyShares {
                max: MAX_SHARES,
                got: MAX_SHARES + 1
            })
        );
        assert_eq!(
            Reconstructor::new(&[1, 2, 2], 2).map(|_| ()),
            Err(ShamirError::DuplicateX { x: 2 })
        );
        assert_eq!(
            Reconstructor::new(&[1, 2], 1).map(|_| ()),
            Err(ShamirError::ThresholdTooSmall { threshold: 1 })
        );
        assert_eq!(
            Reconstructor::new(&[0, 2], 2).map(|_| ()),
            Err(ShamirError::ZeroX)
        );
    }

    #[test]
    fn reconstructor_is_reusable_and_order_insensitive() {
        let mut r = rng(15);
        let xs = random_xs(&mut r, 15);
        let rec = Reconstructor::new(&xs, 8).expect("new");
        assert_eq!(rec.threshold(), 8);
        assert!(rec.xs().windows(2).all(|w| w[0] < w[1]));
        for _ in 0..20 {
            let secret = random_secret(&mut r);
            let mut shares = split(&secret, 8, &xs, &mut r).expect("split");
            shares.shuffle(&mut r);
            assert_eq!(*rec.reconstruct(&shares).expect("reconstruct"), secret);
        }
        let shares = split(&random_secret(&mut r), 8, &xs, &mut r).expect("split");
        assert_eq!(
            rec.reconstruct(&shares[..10]).map(|_| ()),
            Err(ShamirError::ShareCountMismatch {
                expected: 15,
                got: 10
            })
        );
        let mut dup = shares.clone();
        dup[1] = dup[0].clone();
        assert_eq!(
            rec.reconstruct(&dup).map(|_| ()),
            Err(ShamirError::DuplicateX { x: xs[0] })
        );
        let outsider = xs.iter().max().map_or(1, |m| m.wrapping_add(1).max(1));
        let mut foreign = shares.clone();
        foreign[4].x = outsider;
        assert_eq!(
            rec.reconstruct(&foreign).map(|_| ()),
            Err(ShamirError::UnexpectedShare { x: outsider })
        );
    }

    #[test]
    fn error_messages_are_readable() {
        let named = ShamirError::Inconsistent { offender: Some(7) }.to_string();
        assert!(named.contains("x-coordinate 7 is wrong"), "{named}");
        let unnamed = ShamirError::Inconsistent { offender: None }.to_string();
        assert!(unnamed.contains("cannot be identified"), "{unnamed}");
        assert!(
            ShamirError::ThresholdTooSmall { threshold: 1 }
                .to_string()
                .contains("at least 2")
        );
    }

    proptest! {
        #[test]
        fn prop_any_subset_of_at_least_t_reconstructs(
            secret in any::<[u8; 32]>(),
            t in 2usize..=12,
            extra in 0usize..=10,
            seed in any::<u64>(),
        ) {
            let mut r = rng(seed);
            let n = t + extra;
            let xs = random_xs(&mut r, n);
            let mut shares = split(&secret, t, &xs, &mut r).expect("split");
            shares.shuffle(&mut r);
            let m = r.random_range(t..=n);
            prop_assert_eq!(*reconstruct(&shares[..m], t).expect("reconstruct"), secret);
            let rec = Reconstructor::new(&xs, t).expect("new");
            prop_assert_eq!(*rec.reconstruct(&shares).expect("prebuilt"), secret);
            if m > t {
                prop_assert!(reconstruct(&shares[..t - 1], t).is_err());
            }
        }

        #[test]
        fn prop_single_tamper_detected(
            secret in any::<[u8; 32]>(),
            t in 2usize..=10,
            extra in 1usize..=6,
            seed in any::<u64>(),
        ) {
            let mut r = rng(seed);
            let n = t + extra;
            let mut shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
            let victim = r.random_range(0..n);
            tamper(&mut shares[victim], r.random_range(0..LIMBS), r.random_range(1..P));
            let expected = (extra >= 2).then(|| shares[victim].x());
            prop_assert_eq!(
                reconstruct(&shares, t).map(|_| ()),
                Err(ShamirError::Inconsistent { offender: expected })
            );
        }
    }
}
