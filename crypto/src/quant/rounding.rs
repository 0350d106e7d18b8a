//! Stochastic rounding of one element, in the two forms `Quantiser::encode`
//! uses: all in `f64` where that is exact (so the loop runs in vector
//! registers), and through `i64` for any value.

use rand_core::CryptoRng;

use crate::ring::RingElement;

/// Elements rounded per draw from the CSPRNG (4 bytes each).
pub(super) const ROUNDING_BATCH: usize = 1024;

/// Appends `SR(clip(x)·ws)` of each element of `update`, clamped to
/// `±cap` (see the module docs of `quant`).
pub(super) fn round_into<R: RingElement>(
    update: &[f32],
    clip: f64,
    ws: f64,
    cap: i64,
    rng: &mut impl CryptoRng,
    out: &mut Vec<R>,
) {
    // Both the cap and every |v| ≤ c·w·s below 2^50 (always, short of
    // levels near 2^50): the f64 path is exact there.
    let narrow = cap < NARROW_CAP && clip * ws < NARROW_CAP as f64;
    // The rounding draws come from the CSPRNG a batch at a time: one call
    // per element was most of the encode's cost.
    let mut draws = [0u8; 4 * ROUNDING_BATCH];
    let mut q = [0i64; ROUNDING_BATCH];
    for xs in update.chunks(ROUNDING_BATCH) {
        let (draws, q) = (&mut draws[..4 * xs.len()], &mut q[..xs.len()]);
        rng.fill_bytes(draws);
        let each = q.iter_mut().zip(xs).zip(draws.chunks_exact(4));
        if narrow {
            // All in f64, so that the loop runs in vector registers.
            let capf = cap as f64;
            for ((q, &x), u) in each {
                *q = round_narrow(clamp(f64::from(x), clip) * ws, draw(u), capf);
            }
        } else {
            for ((q, &x), u) in each {
                let v = clamp(f64::from(x), clip) * ws;
                // Never bites for honest values (see module docs); keeps n sites in range.
                *q = round_wide(v, draw(u)).clamp(-cap, cap);
            }
        }
        out.extend(q.iter().map(|&q| R::from_i64(q)));
    }
}

/// Index of the first NaN or infinity in `xs`. Checks a batch at a time
/// without stopping early inside it, which runs in vector registers; an
/// element-by-element search does not.
pub fn first_non_finite(xs: &[f32]) -> Option<usize> {
    xs.chunks(ROUNDING_BATCH)
        .enumerate()
        .find(|(_, c)| c.iter().fold(false, |bad, x| bad | !x.is_finite()))
        .and_then(|(i, c)| {
            let at = c.iter().position(|x| !x.is_finite())?;
            Some(i * ROUNDING_BATCH + at)
        })
}

/// 2^32 and 2^31, to scale a fraction to a draw's range.
pub(super) const TWO_POW_32: f64 = (1u64 << 32) as f64;
pub(super) const TWO_POW_31: f64 = (1u64 << 31) as f64;

/// 1.5·2^52: adding it to an `f64` below 2^51 in magnitude leaves the nearest
/// integer in the low mantissa bits.
pub(super) const ROUNDING_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Per-site element caps below this take the all-`f64` rounding path.
pub(super) const NARROW_CAP: i64 = 1 << 50;

/// `x` within `±c`, for finite `x`: compares that become one vector min
/// and max (`f64::clamp` also orders NaNs, which costs three more).
#[inline(always)]
pub(super) fn clamp(x: f64, c: f64) -> f64 {
    let x = if x < -c { -c } else { x };
    if x > c { c } else { x }
}

/// A rounding draw, offset to a signed integer so that its conversion to
/// `f64` is one vector instruction: uniform on `[-2^31, 2^31)`.
#[inline(always)]
pub(super) fn draw(u: &[u8]) -> f64 {
    let u = u32::from_le_bytes([u[0], u[1], u[2], u[3]]);
    f64::from((u ^ (1 << 31)) as i32)
}

/// Whether stochastic rounding goes up, for `frac` in `[0, 1)`: with
/// probability `frac` exactly when `frac` is a multiple of 2^-32 (then both
/// sides are integers), and within 2^-32 of it otherwise (the right side is
/// rounded to `f64`).
#[inline(always)]
pub(super) fn rounds_up(frac: f64, draw: f64) -> bool {
    draw < frac * TWO_POW_32 - TWO_POW_31
}

/// Stochastic rounding of a finite `v` with `|v| < 2^51`, clamped to
/// `±cap` (`cap < 2^50`), without leaving `f64` until the end: adding and
/// taking away 1.5·2^52 rounds to the nearest integer, and an integer-valued
/// `q` so shifted has `q` in its low bits. Gives exactly what [`round_wide`]
/// and a clamp give.
#[inline(always)]
pub(super) fn round_narrow(v: f64, draw: f64, cap: f64) -> i64 {
    let nearest = (v + ROUNDING_MAGIC) - ROUNDING_MAGIC;
    let floor = if nearest > v { nearest - 1.0 } else { nearest };
    let up = if rounds_up(v - floor, draw) { 1.0 } else { 0.0 };
    let q = clamp(floor + up, cap);
    ((q + ROUNDING_MAGIC).to_bits() as i64).wrapping_sub(ROUNDING_MAGIC.to_bits() as i64)
}

/// Stochastic rounding of any finite `v`.
#[inline(always)]
pub(super) fn round_wide(v: f64, draw: f64) -> i64 {
    // ⌊v⌋ by truncation and a step down for negative non-integers (x86-64's
    // baseline has no rounding instruction; a libm call per element cost
    // more than the rest). `as` saturates beyond i64 (never reached:
    // |v| ≤ L, see the module docs), and so do the steps.
    let t = v as i64;
    let floor = t.saturating_sub(i64::from(t as f64 > v));
    // In [0, 1), off by at most one rounding: far below the 2^-32 draw.
    let frac = v - floor as f64;
    floor.saturating_add(i64::from(rounds_up(frac, draw)))
}
