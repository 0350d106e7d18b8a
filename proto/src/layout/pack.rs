//! Bit-packed wire form of a masked vector.
//!
//! Sites and the coordinator compute in the container ring (u32 or u64) as
//! before; only the upload is narrower. The first `packed` elements (the
//! model slots of a TRAIN vector) travel as their low `bits` bits: element
//! `i` is bits `[i·b, (i+1)·b)` of a little-endian bit stream of
//! `⌈packed·b/8⌉` bytes. The rest (weight and metric slots, or a whole
//! EVALUATE or STATISTICS vector) follow as little-endian container
//! elements, exactly as an unpacked vector travels:
//!
//! ```text
//!  [ pack_b(v[0..packed]) | le(v[packed..len]) ]      ⌈packed·b/8⌉ + (len − packed)·width bytes
//! ```
//!
//! Because `2^b` divides the container's modulus, sums of unpacked values
//! (high bits zero) are still correct modulo `2^b`: the decoder reduces
//! the packed slots mod `2^b` and lifts them in `b` bits
//! (`confide_crypto::quant`). The tail keeps the container's width so the
//! metric sums keep their range whatever `b` the model slots use.

use std::ops::Range;

use confide_crypto::Ring;
use confide_crypto::protocol::RingVec;
use confide_crypto::ring::RingElement;

mod groups;

/// Smallest packed width.
pub const MIN_BITS: u32 = 8;

/// Why packed bytes do not fit a vector.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// A width outside `8..=` the container's bits.
    #[error("{bits} bits per element: expected {MIN_BITS} to {max} for the {ring} ring")]
    Bits {
        /// The width asked for.
        bits: u32,
        /// The container ring.
        ring: Ring,
        /// Its bits.
        max: u32,
    },
    /// More packed elements than the vector has.
    #[error("{packed} packed elements in a vector of {len}")]
    Packed {
        /// Packed elements.
        packed: usize,
        /// Vector length.
        len: usize,
    },
    /// A byte length that does not hold the expected elements.
    #[error(
        "packed upload of {received} bytes, expected {expected} \
         ({elements} elements at {bits} bits from element {offset})"
    )]
    Length {
        /// Bytes the elements take.
        expected: usize,
        /// Bytes received.
        received: usize,
        /// Elements they should hold.
        elements: usize,
        /// Bits per element.
        bits: u32,
        /// First element.
        offset: usize,
    },
    /// Bytes that start or end inside an element.
    #[error(
        "{bytes} bytes from element {offset} do not end on an element boundary \
         of a vector of {len} elements ({total} bytes)"
    )]
    Boundary {
        /// First element.
        offset: usize,
        /// Bytes given.
        bytes: usize,
        /// Vector length.
        len: usize,
        /// Bytes of the whole vector.
        total: usize,
    },
}

/// `⌈len·bits/8⌉`: bytes of `len` elements packed at `bits` bits.
pub fn packed_bytes(len: usize, bits: u32) -> usize {
    ((len as u128 * u128::from(bits)).div_ceil(8)) as usize
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Appends the low `bits` bits of each element of `v`, packed (see the
/// module docs); `bits` in `1..=64` (larger is taken as 64).
pub fn pack_into<R: RingElement>(v: &[R], bits: u32, out: &mut Vec<u8>) {
    let bits = bits.clamp(1, 64);
    out.reserve(packed_bytes(v.len(), bits));
    // Whole groups of eight end on a byte, so the rest packs on from there.
    let done = if bits >= MIN_BITS {
        groups::pack(v, bits, out)
    } else {
        0
    };
    let m = mask(bits);
    let mut acc: u128 = 0;
    let mut n: u32 = 0;
    for &x in &v[done..] {
        // Two's complement: the low bits of the lift are the element's.
        acc |= u128::from(x.to_signed() as u64 & m) << n;
        n += bits;
        if n >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            n -= 64;
        }
    }
    let tail = n.div_ceil(8) as usize;
    out.extend_from_slice(&(acc as u64).to_le_bytes()[..tail]);
}

/// `v` packed at `bits` bits per element.
pub fn pack<R: RingElement>(v: &[R], bits: u32) -> Vec<u8> {
    let mut out = Vec::new();
    pack_into(v, bits, &mut out);
    out
}

/// `acc[i] += element i of bytes` (wrapping), for bytes packed at `bits`
/// bits; `bytes` must be exactly [`packed_bytes`]`(acc.len(), bits)` long.
pub fn unpack_add<R: RingElement>(acc: &mut [R], bytes: &[u8], bits: u32) -> Result<(), PackError> {
    let bits = bits.clamp(1, 64);
    let expected = packed_bytes(acc.len(), bits);
    if bytes.len() != expected {
        return Err(PackError::Length {
            expected,
            received: bytes.len(),
            elements: acc.len(),
            bits,
            offset: 0,
        });
    }
    // Whole groups of eight first; the last few from where they end.
    let done = if bits >= MIN_BITS {
        groups::unpack_add(acc, bytes, bits)
    } else {
        0
    };
    let rest = bytes.get(done / 8 * bits as usize..).unwrap_or_default();
    add_bits(&mut acc[done..], rest, bits);
    Ok(())
}

/// `acc[i] += element i of bytes` one element at a time, for any width
/// (`bytes` long enough for `acc`).
fn add_bits<R: RingElement>(acc: &mut [R], bytes: &[u8], bits: u32) {
    let m = mask(bits);
    let b = bits as usize;
    // Each element from the 8 bytes at its first byte, shifted. It holds
    // the element whole while `bits + 7 ≤ 64` and the 8 bytes exist.
    let fast = if b <= 57 && bytes.len() >= 8 {
        ((bytes.len() - 8) * 8 / b + 1).min(acc.len())
    } else {
        0
    };
    let (head, rest) = acc.split_at_mut(fast);
    for (i, a) in head.iter_mut().enumerate() {
        let bit = i * b;
        let at = bit / 8;
        if let Some(word) = bytes.get(at..at + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *a = a.wrapping_add(R::from_u64((u64::from_le_bytes(w) >> (bit % 8)) & m));
        }
    }
    // The last few elements (and every element at more than 57 bits): up to
    // 16 bytes, zero-padded past the end.
    for (i, a) in rest.iter_mut().enumerate() {
        let bit = (fast + i) * b;
        let at = bit / 8;
        let have = bytes.len().saturating_sub(at).min(16);
        let mut w = [0u8; 16];
        if let Some(src) = bytes.get(at..at + have) {
            w[..have].copy_from_slice(src);
        }
        *a = a.wrapping_add(R::from_u64(
            (u128::from_le_bytes(w) >> (bit % 8)) as u64 & m,
        ));
    }
}

/// `len` elements packed at `bits` bits, read into the container ring (high
/// bits zero).
pub fn unpack<R: RingElement>(bytes: &[u8], bits: u32, len: usize) -> Result<Vec<R>, PackError> {
    let mut out = vec![R::default(); len];
    unpack_add(&mut out, bytes, bits)?;
    Ok(out)
}

/// How one vector travels: its first `packed` elements at `bits` bits, the
/// rest at the container ring's width (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    ring: Ring,
    bits: u32,
    packed: usize,
    len: usize,
}

impl Packing {
    /// Every element at the container's width: the unpacked form.
    pub fn plain(ring: Ring, len: usize) -> Self {
        Packing {
            ring,
            bits: ring.bits(),
            packed: 0,
            len,
        }
    }

    /// The first `packed` of `len` elements at `bits` bits (8 to the ring's bits).
    pub fn new(ring: Ring, bits: u32, packed: usize, len: usize) -> Result<Self, PackError> {
        if !(MIN_BITS..=ring.bits()).contains(&bits) {
            return Err(PackError::Bits {
                bits,
                ring,
                max: ring.bits(),
            });
        }
        if packed > len {
            return Err(PackError::Packed { packed, len });
        }
        Ok(Packing {
            ring,
            bits,
            packed,
            len,
        })
    }

    /// The container ring.
    pub fn ring(&self) -> Ring {
        self.ring
    }

    /// Bits of each packed element.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Packed (leading) elements.
    pub fn packed(&self) -> usize {
        self.packed
    }

    /// Elements of the vector.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn head_bytes(&self) -> usize {
        packed_bytes(self.packed, self.bits)
    }

    /// Bytes of the whole vector on the wire.
    pub fn total_bytes(&self) -> usize {
        self.head_bytes() + (self.len - self.packed) * self.ring.bytes()
    }

    /// Bytes of the first `elements` elements, if they end on a byte
    /// boundary (a whole number of packed bytes, or past the packed head).
    pub fn bytes_at(&self, elements: usize) -> Option<usize> {
        if elements > self.len {
            return None;
        }
        if elements < self.packed {
            let bits = elements as u128 * u128::from(self.bits);
            return bits.is_multiple_of(8).then_some((bits / 8) as usize);
        }
        Some(self.head_bytes() + (elements - self.packed) * self.ring.bytes())
    }

    /// Elements in the first `bytes` bytes, if those end on an element
    /// boundary.
    pub fn elements_at(&self, bytes: usize) -> Option<usize> {
        let head = self.head_bytes();
        if bytes < head {
            let bits = bytes as u128 * 8;
            return bits
                .is_multiple_of(u128::from(self.bits))
                .then_some((bits / u128::from(self.bits)) as usize);
        }
        let width = self.ring.bytes();
        let rest = bytes - head;
        (rest.is_multiple_of(width) && rest / width <= self.len - self.packed)
            .then_some(self.packed + rest / width)
    }

    /// Element ranges of upload chunks of at most `max_bytes` each (at least
    /// 8 elements, or one container element): packed chunks hold a multiple
    /// of 8 elements, so every chunk is whole bytes; the packed head and the
    /// tail are never in one chunk.
    pub fn chunks(&self, max_bytes: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        // 8 elements of b bits are b bytes.
        let per = (max_bytes / self.bits as usize).max(1) * 8;
        let mut at = 0;
        while at < self.packed {
            let end = (at + per).min(self.packed);
            out.push(at..end);
            at = end;
        }
        let per = (max_bytes / self.ring.bytes()).max(1);
        while at < self.len {
            let end = (at + per).min(self.len);
            out.push(at..end);
            at = end;
        }
        out
    }

    /// Wire bytes of elements `range` of `v` (a range of [`Self::chunks`],
    /// or any range starting and ending on a byte boundary).
    pub fn encode<R: RingElement>(&self, v: &[R], range: Range<usize>) -> Vec<u8> {
        let end = range.end.min(v.len());
        let start = range.start.min(end);
        let split = self.packed.clamp(start, end);
        let mut out = Vec::new();
        pack_into(&v[start..split], self.bits, &mut out);
        let at = out.len();
        out.resize(at + (end - split) * R::BYTES, 0);
        for (chunk, &x) in out[at..].chunks_exact_mut(R::BYTES).zip(&v[split..end]) {
            x.write_le(chunk);
        }
        out
    }

    /// Adds `bytes`, the wire form of elements from `offset` on, into `sum`
    /// (wrapping); an error names what does not fit.
    pub fn add_into(
        &self,
        sum: &mut RingVec,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), PackError> {
        let boundary = || PackError::Boundary {
            offset,
            bytes: bytes.len(),
            len: self.len,
            total: self.total_bytes(),
        };
        let start = self.bytes_at(offset).ok_or_else(boundary)?;
        let end = self
            .elements_at(start.saturating_add(bytes.len()))
            .ok_or_else(boundary)?;
        if sum.len() != self.len || sum.ring() != self.ring {
            return Err(PackError::Length {
                expected: self.total_bytes(),
                received: bytes.len(),
                elements: sum.len(),
                bits: self.bits,
                offset,
            });
        }
        let split = self.packed.clamp(offset, end);
        let (head, tail) = bytes.split_at(packed_bytes(split - offset, self.bits).min(bytes.len()));
        match sum {
            RingVec::U32(s) => add_parts(self, &mut s[offset..end], split - offset, head, tail),
            RingVec::U64(s) => add_parts(self, &mut s[offset..end], split - offset, head, tail),
        }
    }

    /// The whole vector from its wire bytes.
    pub fn unpack(&self, bytes: &[u8]) -> Result<RingVec, PackError> {
        let expected = self.total_bytes();
        if bytes.len() != expected {
            return Err(PackError::Length {
                expected,
                received: bytes.len(),
                elements: self.len,
                bits: self.bits,
                offset: 0,
            });
        }
        let mut sum = RingVec::zeros(self.ring, self.len);
        self.add_into(&mut sum, 0, bytes)?;
        Ok(sum)
    }
}

/// `acc[..split]` from packed `head`, the rest from little-endian `tail`.
fn add_parts<R: RingElement>(
    p: &Packing,
    acc: &mut [R],
    split: usize,
    head: &[u8],
    tail: &[u8],
) -> Result<(), PackError> {
    let (a, b) = acc.split_at_mut(split.min(acc.len()));
    unpack_add(a, head, p.bits)?;
    unpack_add(b, tail, R::RING.bits())
}

#[cfg(test)]
mod tests;
