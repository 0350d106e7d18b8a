//! The mask PRG, fixed exactly so that any implementation can reproduce it.
//!
//! ```text
//! key      16 bytes from crate::kdf::derive_key (purpose, round, member ids bound in)
//! cipher   AES-128 (suite intl) or SM4 (suite gm)
//! stream   CTR mode: counter block i = i as a 128-bit big-endian integer, i = 0, 1, 2, …
//!          (= OpenSSL `-aes-128-ctr` / `-sm4-ctr` with an all-zero IV)
//! element  j of a Z_2^32 mask = keystream bytes [4j, 4j+4) as a little-endian u32
//!          (Z_2^64: bytes [8j, 8j+8) as a little-endian u64)
//! ```
//!
//! A mask is at most 2^32 blocks long ([`Prg::MAX_BYTES`]), so the low 32 bits
//! of the counter never carry into the upper 96 and a 32-bit big-endian counter
//! yields the same bytes.
//!
//! Expansion and addition are fused: a cache-sized block of keystream is
//! generated on the stack and added into the target before the next is made,
//! so masking a vector never allocates a second vector. [`apply_masks`]
//! goes further for many masks: each cache-sized tile of the target gets
//! every mask's keystream in turn, so the vector passes through memory once
//! rather than once per mask.
//!
//! A long vector is split by range across threads ([`threads`]): CTR mode can
//! start at any block, so each range seeks to its own counter and the result
//! is bit-identical to one thread's. Ranges are whole scratch steps, so every
//! range but the last makes exactly the steps one thread would have made.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use zeroize::Zeroizing;

use crate::aesfast::AesKeystream;
use crate::error::CryptoError;
use crate::ring::RingElement;
use crate::sm4fast::Sm4Keystream;
use crate::suite::Suite;

/// Keystream bytes made per step: small enough to stay in L1, large enough
/// for the block ciphers' wide parallel paths.
const SCRATCH: usize = 8 * 1024;

/// Keystream bytes below which a thread is not worth starting: spawning a
/// scoped thread costs tens of microseconds, 512 KiB of keystream a few
/// hundred.
const MIN_BYTES_PER_THREAD: usize = 512 * 1024;

/// Thread count set with [`set_threads`] (0: not set).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Threads one mask operation may use: as set with [`set_threads`], else
/// `CONFIDE_PRG_THREADS` from the environment, else the machine's available
/// parallelism.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => default_threads(),
        n => n,
    }
}

/// Use at most `n` threads per mask operation from now on (0: back to the
/// default of [`threads`]). Process-wide: a server whose cores already serve
/// other work may want fewer.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

fn default_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        std::env::var("CONFIDE_PRG_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// The mask pseudo-random generator of one key.
pub struct Prg {
    inner: Inner,
}

enum Inner {
    Aes(Box<AesKeystream>),
    Sm4(Box<Sm4Keystream>),
}

impl Inner {
    /// CTR keystream for whole blocks from `counter` (runtime-dispatched SIMD).
    fn blocks(&self, counter: u128, out: &mut [u8]) {
        match self {
            Inner::Aes(k) => k.keystream(counter, out),
            Inner::Sm4(k) => k.keystream(counter, out),
        }
    }
}

impl Prg {
    /// Longest keystream one key may produce: 2^32 blocks of 16 bytes.
    pub const MAX_BYTES: u64 = 16 << 32;

    /// A PRG for `suite` keyed with `key`.
    pub fn new(suite: Suite, key: &[u8; 16]) -> Self {
        let inner = match suite {
            Suite::Intl => Inner::Aes(Box::new(AesKeystream::new(key))),
            Suite::Gm => Inner::Sm4(Box::new(Sm4Keystream::new(key))),
        };
        Prg { inner }
    }

    /// Overwrite `out` with the mask.
    pub fn fill<R: RingElement>(&self, out: &mut [R]) -> Result<(), CryptoError> {
        self.stream(out, |chunk, ks| {
            for (a, k) in chunk.iter_mut().zip(ks.chunks_exact(R::BYTES)) {
                *a = R::from_le_slice(k);
            }
        })
    }

    /// `acc += mask` (element-wise, wrapping).
    pub fn add_into<R: RingElement>(&self, acc: &mut [R]) -> Result<(), CryptoError> {
        self.stream(acc, |chunk, ks| Sign::Add.apply(chunk, ks))
    }

    /// `acc -= mask` (element-wise, wrapping).
    pub fn sub_from<R: RingElement>(&self, acc: &mut [R]) -> Result<(), CryptoError> {
        self.stream(acc, |chunk, ks| Sign::Sub.apply(chunk, ks))
    }

    /// Raw keystream from counter 0, for known-answer tests and other implementations.
    pub fn keystream(&self, out: &mut [u8]) -> Result<(), CryptoError> {
        check_len(out.len() as u64, out.len(), 1)?;
        // Written straight into `out`: whole blocks, then a partial last one.
        self.generator().next(out);
        Ok(())
    }

    fn generator(&self) -> Generator<'_> {
        Generator {
            inner: &self.inner,
            counter: 0,
        }
    }

    fn stream<R: RingElement>(
        &self,
        data: &mut [R],
        op: impl Fn(&mut [R], &[u8]) + Sync,
    ) -> Result<(), CryptoError> {
        self.stream_on(data, op, threads(), MIN_BYTES_PER_THREAD)
    }

    /// [`Self::stream`] on up to `threads` threads, each given at least
    /// `min_bytes` of keystream.
    fn stream_on<R: RingElement>(
        &self,
        data: &mut [R],
        op: impl Fn(&mut [R], &[u8]) + Sync,
        threads: usize,
        min_bytes: usize,
    ) -> Result<(), CryptoError> {
        let total = (data.len() as u64).saturating_mul(R::BYTES as u64);
        check_len(total, data.len(), R::BYTES)?;
        on_ranges(data, threads, min_bytes, 1, |range, counter| {
            self.stream_range(range, counter, &op)
        });
        Ok(())
    }

    /// Apply the keystream from block `counter` on to `data`, one scratch
    /// step at a time.
    fn stream_range<R: RingElement>(
        &self,
        data: &mut [R],
        counter: u128,
        op: &impl Fn(&mut [R], &[u8]),
    ) {
        let mut buf = Zeroizing::new([0u8; SCRATCH]);
        let mut ks = Generator {
            inner: &self.inner,
            counter,
        };
        for chunk in data.chunks_mut(SCRATCH / R::BYTES) {
            let n = chunk.len() * R::BYTES;
            ks.next(&mut buf[..n]);
            op(chunk, &buf[..n]);
        }
    }
}

/// Whether a mask is added to a vector or taken from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// `acc += mask`.
    Add,
    /// `acc -= mask`.
    Sub,
}

impl Sign {
    /// `acc ± keystream`, element by element (wrapping); `ks` holds
    /// `R::BYTES` little-endian bytes per element of `acc`.
    #[inline]
    fn apply<R: RingElement>(self, acc: &mut [R], ks: &[u8]) {
        let pairs = acc.iter_mut().zip(ks.chunks_exact(R::BYTES));
        match self {
            Sign::Add => pairs.for_each(|(a, k)| *a = a.wrapping_add(R::from_le_slice(k))),
            Sign::Sub => pairs.for_each(|(a, k)| *a = a.wrapping_sub(R::from_le_slice(k))),
        }
    }
}

/// `acc ± mask` for every `(prg, sign)` in `masks`, in one pass over `acc`.
///
/// The result is what [`Prg::add_into`] and [`Prg::sub_from`] give one mask
/// at a time (the ring sum does not depend on the order), but each
/// scratch-sized tile of `acc` is read and written once, with every mask's
/// keystream for that tile made while it sits in the cache. One mask at a
/// time took the whole vector through memory once per mask, which, with
/// thousands of masks (a coordinator unmasking for dropped sites) or a
/// vector larger than the cache, cost more than the cipher.
pub fn apply_masks<R: RingElement>(
    masks: &[(Prg, Sign)],
    acc: &mut [R],
) -> Result<(), CryptoError> {
    apply_masks_on(masks, acc, threads(), MIN_BYTES_PER_THREAD)
}

/// [`apply_masks`] on up to `threads` threads, each given at least
/// `min_bytes` of keystream.
fn apply_masks_on<R: RingElement>(
    masks: &[(Prg, Sign)],
    acc: &mut [R],
    threads: usize,
    min_bytes: usize,
) -> Result<(), CryptoError> {
    let total = (acc.len() as u64).saturating_mul(R::BYTES as u64);
    check_len(total, acc.len(), R::BYTES)?;
    if masks.is_empty() {
        return Ok(());
    }
    on_ranges(acc, threads, min_bytes, masks.len(), |range, counter| {
        let mut buf = Zeroizing::new([0u8; SCRATCH]);
        for (i, tile) in range.chunks_mut(SCRATCH / R::BYTES).enumerate() {
            let n = tile.len() * R::BYTES;
            let at = counter + (i * SCRATCH / 16) as u128;
            for (prg, sign) in masks {
                let mut ks = Generator {
                    inner: &prg.inner,
                    counter: at,
                };
                ks.next(&mut buf[..n]);
                sign.apply(tile, &buf[..n]);
            }
        }
    });
    Ok(())
}

/// Runs `f(range, first block)` over `data` split by range across up to
/// `threads` threads, each given at least `min_bytes` of keystream when
/// every element takes `streams` keystreams. Ranges are whole scratch
/// steps, so each starts on a block boundary.
fn on_ranges<R: RingElement>(
    data: &mut [R],
    threads: usize,
    min_bytes: usize,
    streams: usize,
    f: impl Fn(&mut [R], u128) + Sync,
) {
    let step = SCRATCH / R::BYTES;
    let steps = data.len().div_ceil(step);
    let min_steps = min_bytes
        .div_ceil(SCRATCH.saturating_mul(streams.max(1)))
        .max(1);
    let n = threads.min(steps / min_steps).max(1);
    if n == 1 {
        f(data, 0);
        return;
    }
    let per = steps.div_ceil(n) * step;
    let f = &f;
    std::thread::scope(|s| {
        let mut ranges = data.chunks_mut(per).enumerate();
        let first = ranges.next();
        for (i, range) in ranges {
            s.spawn(move || f(range, (i * per * R::BYTES / 16) as u128));
        }
        // The calling thread takes the first range itself.
        if let Some((_, range)) = first {
            f(range, 0);
        }
    });
}

fn check_len(bytes: u64, len: usize, width: usize) -> Result<(), CryptoError> {
    if bytes > Prg::MAX_BYTES {
        return Err(CryptoError::VectorTooLong {
            len,
            max: (Prg::MAX_BYTES / width as u64) as usize,
        });
    }
    Ok(())
}

struct Generator<'a> {
    inner: &'a Inner,
    counter: u128,
}

impl Generator<'_> {
    /// Next `out.len()` keystream bytes. Only the final call of a stream may
    /// ask for a length that is not a multiple of 16.
    fn next(&mut self, out: &mut [u8]) {
        let whole = out.len() / 16 * 16;
        self.inner.blocks(self.counter, &mut out[..whole]);
        self.counter = self.counter.wrapping_add((whole / 16) as u128);
        if whole < out.len() {
            let mut last = Zeroizing::new([0u8; 16]);
            self.inner.blocks(self.counter, &mut last[..]);
            self.counter = self.counter.wrapping_add(1);
            let rest = out.len() - whole;
            out[whole..].copy_from_slice(&last[..rest]);
        }
    }
}

impl fmt::Debug for Prg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suite = match self.inner {
            Inner::Aes(_) => Suite::Intl,
            Inner::Sm4(_) => Suite::Gm,
        };
        f.debug_struct("Prg")
            .field("suite", &suite)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `acc += mask` on `threads` threads of at least one scratch step each.
    fn add_on<R: RingElement>(prg: &Prg, acc: &mut [R], threads: usize) {
        let op = |chunk: &mut [R], ks: &[u8]| {
            for (a, k) in chunk.iter_mut().zip(ks.chunks_exact(R::BYTES)) {
                *a = a.wrapping_add(R::from_le_slice(k));
            }
        };
        if let Err(e) = prg.stream_on(acc, op, threads, SCRATCH) {
            panic!("stream_on: {e}");
        }
    }

    /// The mask as elements, from the raw keystream (one thread, counter 0).
    fn reference<R: RingElement>(prg: &Prg, len: usize) -> Vec<R> {
        let mut ks = vec![0u8; len * R::BYTES];
        if let Err(e) = prg.keystream(&mut ks) {
            panic!("keystream: {e}");
        }
        ks.chunks_exact(R::BYTES).map(R::from_le_slice).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Split across any number of threads, every length (whole steps,
        /// partial steps, partial blocks) gives the one-thread mask.
        #[test]
        fn split_by_range_is_bit_identical(
            len in 0usize..40_000,
            threads in 1usize..7,
            gm in any::<bool>(),
            key in any::<[u8; 16]>(),
            start in any::<u32>(),
        ) {
            let suite = if gm { Suite::Gm } else { Suite::Intl };
            let prg = Prg::new(suite, &key);
            let want32: Vec<u32> = reference::<u32>(&prg, len)
                .iter()
                .map(|m| m.wrapping_add(start))
                .collect();
            let mut got32 = vec![start; len];
            add_on(&prg, &mut got32, threads);
            prop_assert_eq!(got32, want32);
            let want64: Vec<u64> = reference::<u64>(&prg, len)
                .iter()
                .map(|m| m.wrapping_add(u64::from(start)))
                .collect();
            let mut got64 = vec![u64::from(start); len];
            add_on(&prg, &mut got64, threads);
            prop_assert_eq!(got64, want64);
        }
    }

    #[test]
    fn the_public_operations_split_large_vectors_identically() -> Result<(), CryptoError> {
        // Above the default threshold, so `add_into` itself goes parallel
        // wherever the machine has more than one core.
        let len = 3 * MIN_BYTES_PER_THREAD / 4 + 12_345;
        for suite in Suite::ALL {
            let prg = Prg::new(suite, &[9u8; 16]);
            let want = reference::<u32>(&prg, len);
            let mut filled = vec![0u32; len];
            prg.fill(&mut filled)?;
            assert_eq!(filled, want, "{suite} fill");
            let mut acc = vec![0u32; len];
            prg.add_into(&mut acc)?;
            assert_eq!(acc, want, "{suite} add_into");
            prg.sub_from(&mut acc)?;
            assert!(acc.iter().all(|&a| a == 0), "{suite} sub_from");
            let mut four = vec![0u32; len];
            add_on(&prg, &mut four, 4);
            assert_eq!(four, want, "{suite} four threads");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Many masks in one pass, on any number of threads, give what
        /// applying them one by one gives, in both suites and rings.
        #[test]
        fn masks_in_one_pass_are_masks_one_by_one(
            len in 0usize..30_000,
            threads in 1usize..6,
            gm in any::<bool>(),
            keys in proptest::collection::vec((any::<[u8; 16]>(), any::<bool>()), 0..7),
            start in any::<u32>(),
        ) {
            let suite = if gm { Suite::Gm } else { Suite::Intl };
            let masks: Vec<(Prg, Sign)> = keys
                .iter()
                .map(|(k, add)| (Prg::new(suite, k), if *add { Sign::Add } else { Sign::Sub }))
                .collect();
            let mut want32 = vec![start; len];
            let mut want64 = vec![u64::from(start) << 7; len];
            for (prg, sign) in &masks {
                let r = match sign {
                    Sign::Add => prg.add_into(&mut want32).and(prg.add_into(&mut want64)),
                    Sign::Sub => prg.sub_from(&mut want32).and(prg.sub_from(&mut want64)),
                };
                prop_assert!(r.is_ok());
            }
            let mut got32 = vec![start; len];
            let mut got64 = vec![u64::from(start) << 7; len];
            prop_assert!(apply_masks_on(&masks, &mut got32, threads, SCRATCH).is_ok());
            prop_assert!(apply_masks_on(&masks, &mut got64, threads, SCRATCH).is_ok());
            prop_assert_eq!(got32, want32);
            prop_assert_eq!(got64, want64);
        }
    }

    #[test]
    fn thread_count_can_be_overridden() {
        set_threads(3);
        assert_eq!(threads(), 3);
        set_threads(0);
        assert!(threads() >= 1);
    }
}
