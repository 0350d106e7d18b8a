//! The narrow path of stochastic rounding (`rounding.rs`): every step in
//! `f64`, exact for elements and caps below 2^50, so that the loop runs in
//! vector registers. Apart from `rounding.rs` so that `crate::simd` can
//! compile [`round_narrow_into`] at each vector width without importing the
//! draws' keystream (which imports `simd`).

/// 2^32 and 2^31, to scale a fraction to a draw's range.
pub(crate) const TWO_POW_32: f64 = (1u64 << 32) as f64;
pub(crate) const TWO_POW_31: f64 = (1u64 << 31) as f64;

/// 1.5·2^52: adding it to an `f64` below 2^51 in magnitude leaves the nearest
/// integer in the low mantissa bits.
pub(crate) const ROUNDING_MAGIC: f64 = 6_755_399_441_055_744.0;

/// `x` within `±c`, for finite `x`: compares that become one vector min
/// and max (`f64::clamp` also orders NaNs, which costs three more).
#[inline(always)]
pub(crate) fn clamp(x: f64, c: f64) -> f64 {
    let x = if x < -c { -c } else { x };
    if x > c { c } else { x }
}

/// A rounding draw, offset to a signed integer so that its conversion to
/// `f64` is one vector instruction: uniform on `[-2^31, 2^31)`.
#[inline(always)]
pub(crate) fn draw(u: &[u8]) -> f64 {
    let u = u32::from_le_bytes([u[0], u[1], u[2], u[3]]);
    f64::from((u ^ (1 << 31)) as i32)
}

/// Whether stochastic rounding goes up, for `frac` in `[0, 1)`: with
/// probability `frac` exactly when `frac` is a multiple of 2^-32 (then both
/// sides are integers), and within 2^-32 of it otherwise (the right side is
/// rounded to `f64`).
#[inline(always)]
pub(crate) fn rounds_up(frac: f64, draw: f64) -> bool {
    draw < frac * TWO_POW_32 - TWO_POW_31
}

/// Stochastic rounding of a finite `v` with `|v| < 2^51`, clamped to
/// `±cap` (`cap < 2^50`), without leaving `f64` until the end: adding and
/// taking away 1.5·2^52 rounds to the nearest integer, and an integer-valued
/// `q` so shifted has `q` in its low bits. Gives exactly what
/// `rounding::round_wide` and a clamp give.
#[inline(always)]
pub(crate) fn round_narrow(v: f64, draw: f64, cap: f64) -> i64 {
    let nearest = (v + ROUNDING_MAGIC) - ROUNDING_MAGIC;
    let floor = if nearest > v { nearest - 1.0 } else { nearest };
    let up = if rounds_up(v - floor, draw) { 1.0 } else { 0.0 };
    let q = clamp(floor + up, cap);
    ((q + ROUNDING_MAGIC).to_bits() as i64).wrapping_sub(ROUNDING_MAGIC.to_bits() as i64)
}

/// What the narrow path rounds with: the clip bound, the scale (weight
/// times levels) and the per-element cap (below 2^50).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scale {
    pub(crate) clip: f64,
    pub(crate) ws: f64,
    pub(crate) cap: f64,
}

/// The narrow path over one batch: `q[i]` rounds `xs[i]` with draw
/// `draws[4i..4i + 4]`. Inlined into each of `simd::round_narrow_batch`'s
/// kernels, so that it compiles to each one's vector width; every kernel
/// does the same f64 operations in the same order, hence the same bits.
#[inline(always)]
pub(crate) fn round_narrow_into(q: &mut [i64], xs: &[f32], draws: &[u8], s: Scale) {
    for ((q, &x), u) in q.iter_mut().zip(xs).zip(draws.chunks_exact(4)) {
        *q = round_narrow(clamp(f64::from(x), s.clip) * s.ws, draw(u), s.cap);
    }
}
