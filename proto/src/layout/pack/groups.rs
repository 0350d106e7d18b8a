//! Packing eight elements at a time. Eight elements of `b` bits are exactly
//! `b` bytes, so every group starts and ends on a byte; with `b` a constant
//! (one copy of each loop per width, chosen once per call) every shift and
//! branch below is fixed at compile time. This is each site's per-element
//! work on every upload and the coordinator's on every one it receives.

use confide_crypto::ring::RingElement;

use super::mask;

/// Calls `$f::<R, B>($args)` with `B` = `$bits` for a width of 8 to 64, and
/// returns 0 (no element done) from the caller for any other.
macro_rules! by_width {
    ($bits:expr, $f:ident::<$r:ident>($($arg:expr),*)) => {
        by_width!(@ $bits, $f, $r, ($($arg),*); 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
            24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51
            52 53 54 55 56 57 58 59 60 61 62 63 64)
    };
    (@ $bits:expr, $f:ident, $r:ident, $args:tt; $($b:literal)*) => {
        match $bits {
            $($b => $f::<$r, $b> $args,)*
            _ => return 0,
        }
    };
}

/// Packs the whole groups of eight of `v` at `bits` bits (8 to 64),
/// appended to `out`; returns how many elements that was.
pub(super) fn pack<R: RingElement>(v: &[R], bits: u32, out: &mut Vec<u8>) -> usize {
    let n = v.len() / 8 * 8;
    let at = out.len();
    out.resize(at + n / 8 * bits as usize, 0);
    let (v, out) = (&v[..n], &mut out[at..]);
    by_width!(bits, pack_groups::<R>(v, out));
    n
}

/// Adds the whole groups of eight that `bytes` holds at `bits` bits (8 to
/// 64) into the front of `acc` (wrapping); returns how many elements that
/// was. The caller checks that `bytes` is as long as `acc` needs.
pub(super) fn unpack_add<R: RingElement>(acc: &mut [R], bytes: &[u8], bits: u32) -> usize {
    let n = (acc.len() / 8).min(bytes.len() / bits.max(1) as usize) * 8;
    let (acc, bytes) = (&mut acc[..n], bytes);
    by_width!(bits, add_groups::<R>(acc, bytes));
    n
}

/// Element `j` of a group is bits `[j·B, (j+1)·B)` of the group's `B` bytes
/// read as eight little-endian u64 words: word `j·B / 64` from bit
/// `j·B % 64`, running into the next word when it does not fit.
fn pack_groups<R: RingElement, const B: usize>(v: &[R], out: &mut [u8]) {
    let m = mask(B as u32);
    for (g, o) in v.chunks_exact(8).zip(out.chunks_exact_mut(B)) {
        let mut w = [0u64; 8];
        for (j, &x) in g.iter().enumerate() {
            // Two's complement: the low bits of the lift are the element's.
            let x = x.to_signed() as u64 & m;
            let (k, off) = (j * B / 64, j * B % 64);
            w[k] |= x << off;
            if off + B > 64 {
                w[k + 1] |= x >> (64 - off);
            }
        }
        let mut bytes = [0u8; 64];
        for (c, x) in bytes.chunks_exact_mut(8).zip(w) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        o.copy_from_slice(&bytes[..B]);
    }
}

/// The inverse of [`pack_groups`], added into `acc`.
fn add_groups<R: RingElement, const B: usize>(acc: &mut [R], bytes: &[u8]) {
    let m = mask(B as u32);
    for (a, src) in acc.chunks_exact_mut(8).zip(bytes.chunks_exact(B)) {
        let mut buf = [0u8; 64];
        buf[..B].copy_from_slice(src);
        let mut w = [0u64; 8];
        for (x, c) in w.iter_mut().zip(buf.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(c);
            *x = u64::from_le_bytes(le);
        }
        for (j, a) in a.iter_mut().enumerate() {
            let (k, off) = (j * B / 64, j * B % 64);
            let mut x = w[k] >> off;
            if off + B > 64 {
                x |= w[k + 1] << (64 - off);
            }
            *a = a.wrapping_add(R::from_u64(x & m));
        }
    }
}
