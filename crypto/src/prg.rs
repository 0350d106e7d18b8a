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
//! so masking a vector never allocates a second vector.

use std::fmt;

use zeroize::Zeroizing;

use crate::aesfast::AesKeystream;
use crate::error::CryptoError;
use crate::ring::RingElement;
use crate::sm4fast::Sm4Keystream;
use crate::suite::Suite;

/// Keystream bytes made per step: small enough to stay in L1, large enough
/// for the block ciphers' wide parallel paths.
const SCRATCH: usize = 8 * 1024;

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
        self.stream(acc, |chunk, ks| {
            for (a, k) in chunk.iter_mut().zip(ks.chunks_exact(R::BYTES)) {
                *a = a.wrapping_add(R::from_le_slice(k));
            }
        })
    }

    /// `acc -= mask` (element-wise, wrapping).
    pub fn sub_from<R: RingElement>(&self, acc: &mut [R]) -> Result<(), CryptoError> {
        self.stream(acc, |chunk, ks| {
            for (a, k) in chunk.iter_mut().zip(ks.chunks_exact(R::BYTES)) {
                *a = a.wrapping_sub(R::from_le_slice(k));
            }
        })
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
        mut op: impl FnMut(&mut [R], &[u8]),
    ) -> Result<(), CryptoError> {
        let total = (data.len() as u64).saturating_mul(R::BYTES as u64);
        check_len(total, data.len(), R::BYTES)?;
        let mut buf = Zeroizing::new([0u8; SCRATCH]);
        let mut ks = self.generator();
        for chunk in data.chunks_mut(SCRATCH / R::BYTES) {
            let n = chunk.len() * R::BYTES;
            ks.next(&mut buf[..n]);
            op(chunk, &buf[..n]);
        }
        Ok(())
    }
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
