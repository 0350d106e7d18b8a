//! Stochastic rounding for `Quantiser::encode`: the draws (an AES-CTR
//! keystream keyed from the caller's CSPRNG), and the rounding of one
//! element in two forms — all in `f64` where that is exact (so the loop runs
//! in vector registers), and through `i64` for any value.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::narrow::{Scale, clamp, draw, rounds_up};
use crate::aesfast::AesKeystream;
use crate::ring::RingElement;

/// Elements rounded per batch of draws (4 bytes each).
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
    // The draws come a batch at a time (one call per element was most of
    // the encode's cost), from a keystream rather than the caller's CSPRNG
    // itself (`Draws`).
    let mut source = Draws::new(rng);
    let mut draws = [0u8; 4 * ROUNDING_BATCH];
    let mut q = [0i64; ROUNDING_BATCH];
    for xs in update.chunks(ROUNDING_BATCH) {
        let draws = source.next(&mut draws, 4 * xs.len());
        let q = &mut q[..xs.len()];
        if narrow {
            // All in f64, so that the loop runs in vector registers, as
            // wide as this CPU has (`simd::round_narrow_batch`).
            let cap = cap as f64;
            crate::simd::round_narrow_batch(q, xs, draws, Scale { clip, ws, cap });
        } else {
            for ((q, &x), u) in q.iter_mut().zip(xs).zip(draws.chunks_exact(4)) {
                let v = clamp(f64::from(x), clip) * ws;
                // Never bites for honest values (see module docs); keeps n sites in range.
                *q = round_wide(v, draw(u)).clamp(-cap, cap);
            }
        }
        out.extend(q.iter().map(|&q| R::from_i64(q)));
    }
}

/// The rounding draws: AES-128-CTR under a key taken from the caller's
/// CSPRNG (CTR_DRBG's generator, rekeyed from that CSPRNG well before 2^32
/// blocks). The draws are the site's own randomness, not part of the
/// protocol; drawn from ChaCha12 they were about half of the rounding's
/// time, and the AES keystream is several times cheaper per byte.
struct Draws<'a, G: CryptoRng> {
    rng: &'a mut G,
    aes: AesKeystream,
    /// Next counter block.
    counter: u128,
}

impl<'a, G: CryptoRng> Draws<'a, G> {
    /// Blocks one key makes at most.
    const BLOCKS_PER_KEY: u128 = 1 << 32;

    fn new(rng: &'a mut G) -> Self {
        let aes = Self::fresh_key(rng);
        Draws {
            rng,
            aes,
            counter: 0,
        }
    }

    fn fresh_key(rng: &mut G) -> AesKeystream {
        let mut key = Zeroizing::new([0u8; 16]);
        rng.fill_bytes(&mut key[..]);
        AesKeystream::new(&key)
    }

    /// The next `len` draw bytes, in `buf` (its length a multiple of 16).
    fn next<'b>(&mut self, buf: &'b mut [u8], len: usize) -> &'b [u8] {
        let whole = len.div_ceil(16) * 16;
        let blocks = (whole / 16) as u128;
        if self.counter + blocks > Self::BLOCKS_PER_KEY {
            self.aes = Self::fresh_key(self.rng);
            self.counter = 0;
        }
        self.aes.keystream(self.counter, &mut buf[..whole]);
        self.counter += blocks;
        &buf[..len]
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

/// Per-site element caps below this take the all-`f64` rounding path.
pub(super) const NARROW_CAP: i64 = 1 << 50;

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

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn draws_are_the_aes_keystream_under_a_key_from_the_rng() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut twin = ChaCha20Rng::seed_from_u64(7);
        let mut key = [0u8; 16];
        twin.fill_bytes(&mut key);
        let aes = AesKeystream::new(&key);
        let mut d = Draws::new(&mut rng);
        let mut buf = [0u8; 4 * ROUNDING_BATCH];
        // A first batch, then a short one (not a multiple of 16), then
        // another: each starts on the block after the last one used.
        let mut want = vec![0u8; 3 * 4 * ROUNDING_BATCH];
        aes.keystream(0, &mut want);
        let a = d.next(&mut buf, 4 * ROUNDING_BATCH).to_vec();
        assert_eq!(a, want[..4 * ROUNDING_BATCH]);
        let b = d.next(&mut buf, 20).to_vec();
        assert_eq!(b, want[4 * ROUNDING_BATCH..4 * ROUNDING_BATCH + 20]);
        let c = d.next(&mut buf, 16).to_vec();
        let at = 4 * ROUNDING_BATCH + 32;
        assert_eq!(c, want[at..at + 16]);
    }

    #[test]
    fn draws_take_a_fresh_key_before_one_runs_out() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut twin = ChaCha20Rng::seed_from_u64(9);
        let (mut k1, mut k2) = ([0u8; 16], [0u8; 16]);
        twin.fill_bytes(&mut k1);
        twin.fill_bytes(&mut k2);
        let mut d = Draws::new(&mut rng);
        let mut buf = [0u8; 4 * ROUNDING_BATCH];
        // Two blocks left under the first key: a one-block request still
        // uses it, a two-block one that would pass the end rekeys.
        d.counter = Draws::<ChaCha20Rng>::BLOCKS_PER_KEY - 2;
        let mut want = [0u8; 32];
        AesKeystream::new(&k1).keystream(d.counter, &mut want[..16]);
        assert_eq!(d.next(&mut buf, 16), &want[..16]);
        AesKeystream::new(&k2).keystream(0, &mut want);
        assert_eq!(d.next(&mut buf, 32), &want[..]);
        assert_eq!(d.counter, 2);
    }
}
