//! The additive rings `Z / 2^32` and `Z / 2^64` that masked vectors live in.
//!
//! Pairwise and self masks are uniform ring elements, so every sum the
//! coordinator computes is taken with wrapping arithmetic. Signed quantities
//! (quantised model deltas, metric sums) are embedded in two's complement and
//! read back with the *centred lift* [`RingElement::to_signed`], which is
//! correct as long as the true sum lies in `[-2^(b-1), 2^(b-1))`; the
//! quantiser (`crate::quant`) is responsible for guaranteeing that.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The additive ring the masked vectors live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ring {
    /// Integers modulo 2^32.
    U32,
    /// Integers modulo 2^64.
    U64,
}

impl Ring {
    /// Bit width `b` of the ring.
    pub const fn bits(self) -> u32 {
        match self {
            Ring::U32 => 32,
            Ring::U64 => 64,
        }
    }

    /// Bytes per element on the wire.
    pub const fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    /// Largest value the centred lift can return, `2^(b-1) - 1`.
    pub const fn max_signed(self) -> u64 {
        (1u64 << (self.bits() - 1)) - 1
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ring::U32 => "u32",
            Ring::U64 => "u64",
        })
    }
}

/// A ring name that is neither `u32` nor `u64`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown ring {0:?}: expected \"u32\" or \"u64\"")]
pub struct ParseRingError(pub String);

impl FromStr for Ring {
    type Err = ParseRingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "u32" => Ok(Ring::U32),
            "u64" => Ok(Ring::U64),
            _ => Err(ParseRingError(s.to_owned())),
        }
    }
}

/// Byte buffer whose length is not a whole number of ring elements.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{len} bytes is not a whole number of {ring} elements ({bytes} bytes each)")]
pub struct ByteLengthError {
    /// Length of the rejected buffer.
    pub len: usize,
    /// Ring the buffer was meant to hold.
    pub ring: Ring,
    /// Bytes per element of that ring.
    pub bytes: usize,
}

/// An element of one of the rings in [`Ring`].
pub trait RingElement: Copy + Default + Eq + Send + Sync + fmt::Debug + 'static {
    /// Which ring this type implements.
    const RING: Ring;
    /// Bytes per element in little-endian wire form.
    const BYTES: usize;

    /// Addition modulo 2^b.
    fn wrapping_add(self, o: Self) -> Self;
    /// Subtraction modulo 2^b.
    fn wrapping_sub(self, o: Self) -> Self;
    /// Additive inverse modulo 2^b.
    fn wrapping_neg(self) -> Self;
    /// Two's complement embedding (reduces `v` modulo 2^b).
    fn from_i64(v: i64) -> Self;
    /// Centred lift: the unique representative in `[-2^(b-1), 2^(b-1))`.
    fn to_signed(self) -> i64;
    /// Reduction of `v` modulo 2^b (truncating).
    fn from_u64(v: u64) -> Self;
    /// Reads a little-endian element. `b` should be exactly `BYTES` long
    /// (checked in debug builds); a shorter slice is zero-extended and extra
    /// bytes are ignored so that release builds never panic on bad input.
    /// Use [`from_le_bytes`] to parse untrusted buffers with a length check.
    fn from_le_slice(b: &[u8]) -> Self;
    /// Writes the element little-endian into the first `BYTES` bytes of `out`
    /// (`out` should be exactly `BYTES` long; checked in debug builds).
    fn write_le(self, out: &mut [u8]);
}

macro_rules! impl_ring_element {
    ($t:ty, $signed:ty, $ring:expr) => {
        impl RingElement for $t {
            const RING: Ring = $ring;
            const BYTES: usize = std::mem::size_of::<$t>();

            #[inline]
            fn wrapping_add(self, o: Self) -> Self {
                <$t>::wrapping_add(self, o)
            }
            #[inline]
            fn wrapping_sub(self, o: Self) -> Self {
                <$t>::wrapping_sub(self, o)
            }
            #[inline]
            fn wrapping_neg(self) -> Self {
                <$t>::wrapping_neg(self)
            }
            #[inline]
            fn from_i64(v: i64) -> Self {
                // `as` between integers truncates, i.e. reduces modulo 2^b.
                v as $t
            }
            #[inline]
            fn to_signed(self) -> i64 {
                self as $signed as i64
            }
            #[inline]
            fn from_u64(v: u64) -> Self {
                v as $t
            }
            #[inline]
            fn from_le_slice(b: &[u8]) -> Self {
                debug_assert_eq!(b.len(), Self::BYTES, "ring element slice length");
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                <$t>::from_le_bytes(buf)
            }
            #[inline]
            fn write_le(self, out: &mut [u8]) {
                debug_assert_eq!(out.len(), Self::BYTES, "ring element slice length");
                let bytes = self.to_le_bytes();
                let n = out.len().min(bytes.len());
                out[..n].copy_from_slice(&bytes[..n]);
            }
        }
    };
}

impl_ring_element!(u32, i32, Ring::U32);
impl_ring_element!(u64, i64, Ring::U64);

/// `acc[i] += x[i]` modulo 2^b.
///
/// The slices must have equal length (checked in debug builds only; callers
/// validate lengths of untrusted input first). In release builds the shorter
/// length wins, so a mismatch can never panic.
pub fn add_assign<R: RingElement>(acc: &mut [R], x: &[R]) {
    debug_assert_eq!(acc.len(), x.len(), "ring vector length mismatch");
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_add(b);
    }
}

/// `acc[i] -= x[i]` modulo 2^b. Same length contract as [`add_assign`].
pub fn sub_assign<R: RingElement>(acc: &mut [R], x: &[R]) {
    debug_assert_eq!(acc.len(), x.len(), "ring vector length mismatch");
    for (a, &b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_sub(b);
    }
}

/// Little-endian wire form of a vector.
pub fn to_le_bytes<R: RingElement>(v: &[R]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * R::BYTES];
    for (chunk, &x) in out.chunks_exact_mut(R::BYTES).zip(v) {
        x.write_le(chunk);
    }
    out
}

/// Parses the little-endian wire form of a vector, rejecting a length that is
/// not a multiple of the element size.
pub fn from_le_bytes<R: RingElement>(b: &[u8]) -> Result<Vec<R>, ByteLengthError> {
    if !b.len().is_multiple_of(R::BYTES) {
        return Err(ByteLengthError {
            len: b.len(),
            ring: R::RING,
            bytes: R::BYTES,
        });
    }
    Ok(b.chunks_exact(R::BYTES).map(R::from_le_slice).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_names_round_trip() {
        for r in [Ring::U32, Ring::U64] {
            assert_eq!(r.to_string().parse::<Ring>(), Ok(r));
        }
        assert_eq!(" U64 ".parse::<Ring>(), Ok(Ring::U64));
        let err = "u128".parse::<Ring>().unwrap_err();
        assert!(err.to_string().contains("\"u32\" or \"u64\""), "{err}");
        assert_eq!(Ring::U32.bits(), 32);
        assert_eq!(Ring::U64.bytes(), 8);
        assert_eq!(Ring::U32.max_signed(), i32::MAX as u64);
        assert_eq!(Ring::U64.max_signed(), i64::MAX as u64);
    }

    fn lift_cases<R: RingElement>() {
        let half = R::RING.max_signed() as i64;
        for v in [0, 1, -1, 12345, -12345, half, -half - 1] {
            assert_eq!(R::from_i64(v).to_signed(), v, "{v} in {}", R::RING);
        }
        // One past the top wraps to the bottom: the lift is centred.
        assert_eq!(
            R::from_i64(half).wrapping_add(R::from_i64(1)).to_signed(),
            -half - 1
        );
        assert_eq!(R::from_i64(5).wrapping_neg().to_signed(), -5);
        assert_eq!(R::from_i64(3).wrapping_sub(R::from_i64(10)).to_signed(), -7);
    }

    #[test]
    fn centred_lift() {
        lift_cases::<u32>();
        lift_cases::<u64>();
        assert_eq!(<u32 as RingElement>::from_u64(0x1_0000_0005), 5);
    }

    #[test]
    fn vector_ops_wrap_and_cancel() {
        let x: Vec<u32> = vec![u32::MAX, 7, 0];
        let m: Vec<u32> = vec![3, u32::MAX - 1, 123_456];
        let mut acc = x.clone();
        add_assign(&mut acc, &m);
        assert_eq!(acc, vec![2, 5, 123_456]);
        sub_assign(&mut acc, &m);
        assert_eq!(acc, x);
    }

    #[test]
    fn bytes_round_trip_and_length_check() {
        let v: Vec<u64> = vec![0, 1, u64::MAX, 0x0102_0304_0506_0708];
        let b = to_le_bytes(&v);
        assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(from_le_bytes::<u64>(&b), Ok(v));
        let err = from_le_bytes::<u32>(&[1, 2, 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "3 bytes is not a whole number of u32 elements (4 bytes each)"
        );
    }
}
