//! Arithmetic in GF(p), p = 2^61 − 1 (see the parent module for why this
//! field). Kept apart from the sharing logic so the constant-time reduction
//! tricks can be read, and reviewed, on their own.

use rand_core::CryptoRng;

/// The Mersenne prime 2^61 − 1.
pub(super) const P: u64 = (1 << 61) - 1;

/// Maps `s < 2p` to `s mod p` with a mask instead of a branch.
#[inline(always)]
pub(super) fn cond_sub_p(s: u64) -> u64 {
    let t = s.wrapping_sub(P);
    // The top bit of `t` is set exactly when `s < p` (the subtraction wrapped).
    let keep_s = 0u64.wrapping_sub(t >> 63);
    (t & !keep_s) | (s & keep_s)
}

/// Reduces `v < 2^122` (a product of two field elements, or a sum of up to
/// 2^60 values below 2^62) to its canonical representative.
#[inline(always)]
pub(super) fn reduce(v: u128) -> u64 {
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
pub(super) fn fold(v: u128) -> u64 {
    ((v as u64) & P) + ((v >> 61) as u64)
}

#[inline(always)]
pub(super) fn fsub(a: u64, b: u64) -> u64 {
    cond_sub_p(a + P - b)
}

#[inline(always)]
pub(super) fn fmul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

pub(super) fn fpow(mut base: u64, mut exp: u64) -> u64 {
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
pub(super) fn finv(a: u64) -> u64 {
    fpow(a, P - 2)
}

/// Inverts every element in place with one field inversion (Montgomery's trick).
/// All elements must be nonzero; they are public values (x-coordinates).
pub(super) fn batch_invert(values: &mut [u64]) {
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
pub(super) fn random_field_element<R: CryptoRng>(rng: &mut R) -> u64 {
    loop {
        let candidate = rng.next_u64() >> 3;
        if candidate < P {
            return candidate;
        }
    }
}
