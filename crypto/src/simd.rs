//! x86_64 SIMD SM4 and AES-128 CTR keystreams, and stochastic rounding at
//! the CPU's widest vectors (the only module with `unsafe`).
//!
//! The AES-128 kernels (VAES/AVX-512, VAES/AVX2, AES-NI) are described at
//! [`AesBackend`], the rounding at `round_narrow_batch`; everything below
//! up to the AES section is about SM4.
//!
//! # The affine-isomorphism trick
//!
//! The SM4 S-box is `S(x) = A·I_P(A·x ⊕ c) ⊕ c`, where `I_P` is inversion in
//! GF(2⁸) modulo `P = x⁸+x⁷+x⁶+x⁵+x⁴+x²+1` (0x1F5), `c = 0xD3` and `A` is the
//! circulant bit matrix whose row `i` (output bit `i`, LSB = bit 0) is
//! `0xA7 <<< i`. AES inverts modulo `Q = 0x11B`. Both are GF(2⁸), so there is
//! a field isomorphism `φ : GF(2)[x]/P → GF(2)[x]/Q`, `φ(α) = β` for a root
//! `β` of `P` in the AES field (we take the smallest, `β = 0x23`). `φ` is
//! GF(2)-linear (column `i` of its matrix is `βⁱ`) and multiplicative, so
//! `I_P = φ⁻¹ ∘ I_Q ∘ φ` and
//!
//! ```text
//! S(x) = M2·I_Q(M1·x ⊕ c1) ⊕ c2,   M1 = φ·A, c1 = φ(c), M2 = A·φ⁻¹, c2 = c.
//! ```
//!
//! * **GFNI**: `gf2p8affine(x, M1, c1)` then `gf2p8affineinv(y, M2, c2)` (the
//!   latter inverts modulo 0x11B, then applies the affine map) is exactly one
//!   S-box per byte, two instructions for 64 bytes. In the instructions'
//!   64-bit matrix operand, byte `7 - i` holds the row of output bit `i`.
//! * **AES-NI**: `aesenclast(y, 0) = ShiftRows(Aₐ·I_Q(y) ⊕ 0x63)`, so
//!   `S(x) = M2·Aₐ⁻¹·(aesenclast(M1·x ⊕ c1) ⊕ 0x63) ⊕ c2` with the ShiftRows
//!   byte shuffle undone by `pshufb`. The two affine maps are done with
//!   16-entry nibble tables (`pshufb`); the inverse ShiftRows is merged into
//!   the byte rotations of `L`. With VAES one `vaesenclast` covers both
//!   128-bit lanes of an AVX2 register; without it each lane takes its own.
//!
//! The constants below were computed this way; the tests recompute them from
//! `A`, `c`, `P` and `β` and rebuild the whole S-box through them.
//!
//! # Data layout
//!
//! Blocks are processed "bitsliced by word": register `j` holds word `Xj` of
//! 16 (AVX-512) or 8 (AVX2) blocks, so one round is a handful of vector ops
//! for all of them, and the counter words are generated directly in that
//! layout. Lane `e` of 128-bit lane `L` holds block `NL·e + L` (`NL` = number
//! of 128-bit lanes), so the in-lane 4×4 transpose at the end leaves blocks in
//! memory order. Up to four groups are interleaved to hide instruction
//! latency. These paths use no secret-dependent memory access or branches.
//!
//! Round keys are held in vector registers and (spilled) stack slots that
//! cannot be wiped from Rust; the keystream tail buffer is zeroized.

use std::sync::OnceLock;

use crate::quant::narrow::{Scale, round_narrow_into};

/// An SM4-CTR keystream implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable code (any target): table-free, bitsliced SM4 (`crate::sm4ct`).
    Portable,
    /// AES-NI S-box with AVX2 (256-bit, 8 blocks per register).
    AesniAvx2,
    /// The AES-NI S-box on both 128-bit lanes in one VAES instruction
    /// (AVX2, 8 blocks per register): CPUs with VAES but no GFNI (AMD Zen 3)
    /// skip the lane split and merge around each `aesenclast`.
    VaesAvx2,
    /// GFNI S-box with AVX2 (256-bit, 8 blocks per register).
    GfniAvx2,
    /// GFNI S-box with AVX-512F/BW (512-bit, 16 blocks per register).
    GfniAvx512,
}

impl Backend {
    /// Every backend, fastest first.
    pub const ALL: [Backend; 5] = [
        Backend::GfniAvx512,
        Backend::GfniAvx2,
        Backend::VaesAvx2,
        Backend::AesniAvx2,
        Backend::Portable,
    ];

    /// The fastest backend this CPU supports (detected once, then cached).
    pub fn detect() -> Backend {
        static CHOICE: OnceLock<Backend> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            Self::ALL
                .into_iter()
                .find(|b| b.is_supported())
                .unwrap_or(Backend::Portable)
        })
    }

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::AesniAvx2 => {
                std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::VaesAvx2 => {
                std::is_x86_feature_detected!("aes")
                    && std::is_x86_feature_detected!("vaes")
                    && std::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx2 => {
                std::is_x86_feature_detected!("gfni") && std::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx512 => {
                std::is_x86_feature_detected!("gfni")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Fills `out` (whole blocks) with the keystream using `backend`. Returns
/// `false`, writing nothing, if `backend` is portable or not supported here.
pub(crate) fn keystream(backend: Backend, rk: &[u32; 32], counter: u128, out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if backend != Backend::Portable && backend.is_supported() {
        match backend {
            // SAFETY: `is_supported` just confirmed the CPU has every target
            // feature the called function is compiled with.
            Backend::GfniAvx512 => unsafe { x86::avx512_gfni::keystream(rk, counter, out) },
            // SAFETY: as above (gfni + avx2 detected).
            Backend::GfniAvx2 => unsafe { x86::avx2::keystream_gfni(rk, counter, out) },
            // SAFETY: as above (aes + avx2 detected).
            Backend::AesniAvx2 => unsafe { x86::avx2::keystream_aesni(rk, counter, out) },
            // SAFETY: as above (aes + vaes + avx2 detected).
            Backend::VaesAvx2 => unsafe { x86::avx2::keystream_vaes(rk, counter, out) },
            Backend::Portable => return false,
        }
        return true;
    }
    let _ = (backend, rk, counter, out);
    false
}

/// Constants shared by the kernels and the derivation tests (dead code on
/// targets without the SIMD paths).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod consts {
    /// GFNI matrix for `x ↦ M1·x` (rows packed as described in the module docs).
    pub(super) const PRE_MATRIX: u64 = 0x4C28_7DB9_1A22_505D;
    /// `c1 = φ(0xD3)`.
    pub(super) const PRE_CONST: u8 = 0x3E;
    /// GFNI matrix for `y ↦ M2·y`, applied after inversion.
    pub(super) const POST_MATRIX: u64 = 0xF3AB_34A9_74A6_B589;
    /// `c2 = 0xD3`.
    pub(super) const POST_CONST: u8 = 0xD3;

    /// Nibble tables for `x ↦ M1·x ⊕ c1`: `PRE_LO[x & 15] ^ PRE_HI[x >> 4]`.
    pub(super) const PRE_LO: [u8; 16] = [
        0x3E, 0xB2, 0x0E, 0x82, 0xBB, 0x37, 0x8B, 0x07, 0xA1, 0x2D, 0x91, 0x1D, 0x24, 0xA8, 0x14,
        0x98,
    ];
    pub(super) const PRE_HI: [u8; 16] = [
        0x00, 0xDC, 0x2E, 0xF2, 0xC5, 0x19, 0xEB, 0x37, 0x08, 0xD4, 0x26, 0xFA, 0xCD, 0x11, 0xE3,
        0x3F,
    ];
    /// Nibble tables for `z ↦ M2·Aₐ⁻¹·(z ⊕ 0x63) ⊕ c2` (undoes AES's affine map).
    pub(super) const POST_LO: [u8; 16] = [
        0x6C, 0xD4, 0xA6, 0x1E, 0x52, 0xEA, 0x98, 0x20, 0x0B, 0xB3, 0xC1, 0x79, 0x35, 0x8D, 0xFF,
        0x47,
    ];
    pub(super) const POST_HI: [u8; 16] = [
        0x00, 0xE0, 0x50, 0xB0, 0x9D, 0x7D, 0xCD, 0x2D, 0xC0, 0x20, 0x90, 0x70, 0x5D, 0xBD, 0x0D,
        0xED,
    ];

    /// Byte permutation within each 128-bit lane (`pshufb` operand).
    pub(super) type Perm = [u8; 16];

    /// `v <<< 8k` on each 32-bit little-endian word: new byte `i` is old byte `i - k`.
    pub(super) const fn rol_bytes(k: usize) -> Perm {
        let mut p = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            p[i] = ((i & !3) | ((i + 4 - k) & 3)) as u8;
            i += 1;
        }
        p
    }

    /// Inverse of AES ShiftRows (`aesenclast` output byte `i` is S-box output
    /// byte `SR[i]`, `SR[r + 4c] = r + 4((c + r) mod 4)`).
    pub(super) const INV_SHIFT_ROWS: Perm = {
        let mut p = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let (r, c) = (i % 4, i / 4);
            let sr = r + 4 * ((c + r) % 4);
            p[sr] = i as u8;
            i += 1;
        }
        p
    };

    /// `first` then `second`: `pshufb(pshufb(v, first), second) = pshufb(v, compose(first, second))`.
    pub(super) const fn compose(first: Perm, second: Perm) -> Perm {
        let mut p = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            p[i] = first[second[i] as usize];
            i += 1;
        }
        p
    }

    pub(super) const IDENTITY: Perm = rol_bytes(0);
    pub(super) const BSWAP32: Perm = [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12];
}

/// Counter words for one group of `N` blocks starting at `ctr`, in the lane
/// layout described in the module docs (scalar path for carries out of the
/// low word).
#[cfg(target_arch = "x86_64")]
fn counter_words<const N: usize>(ctr: u128) -> [[u32; N]; 4] {
    let lanes = N / 4;
    let blocks: [u128; N] =
        core::array::from_fn(|k| ctr.wrapping_add((lanes * (k % 4) + k / 4) as u128));
    core::array::from_fn(|j| core::array::from_fn(|k| (blocks[k] >> (96 - 32 * j)) as u32))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::counter_words;
    use zeroize::Zeroize;

    /// GFNI + AVX-512F/BW: 16 blocks per group, up to 4 groups interleaved.
    pub(super) mod avx512_gfni {
        use super::super::consts::{BSWAP32, POST_CONST, POST_MATRIX, PRE_CONST, PRE_MATRIX, Perm};
        use super::{Zeroize, counter_words};
        use core::arch::x86_64::*;

        type State = [__m512i; 4];
        const GROUP_BYTES: usize = 256;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        fn bcast(p: Perm) -> __m512i {
            let v = u128::from_le_bytes(p);
            let (lo, hi) = (v as i64, (v >> 64) as i64);
            _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo)
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        fn counters(ctr: u128) -> State {
            let low = ctr as u32;
            if low <= u32::MAX - 15 {
                // No carry out of the low word inside this group.
                let offs = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                [
                    _mm512_set1_epi32((ctr >> 96) as u32 as i32),
                    _mm512_set1_epi32((ctr >> 64) as u32 as i32),
                    _mm512_set1_epi32((ctr >> 32) as u32 as i32),
                    _mm512_add_epi32(_mm512_set1_epi32(low as i32), offs),
                ]
            } else {
                let w = counter_words::<16>(ctr);
                // SAFETY: each `w[j]` is 16 readable `u32`s (64 bytes);
                // `loadu` has no alignment requirement.
                unsafe {
                    [
                        _mm512_loadu_si512(w[0].as_ptr().cast()),
                        _mm512_loadu_si512(w[1].as_ptr().cast()),
                        _mm512_loadu_si512(w[2].as_ptr().cast()),
                        _mm512_loadu_si512(w[3].as_ptr().cast()),
                    ]
                }
            }
        }

        /// `x0 ^ L(S(x1 ^ x2 ^ x3 ^ rk))` with `L(s) = s ^ (s<<<24) ^ ((s ^ s<<<8 ^ s<<<16) <<< 2)`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        fn round<const G: usize>(s: &mut [State; G], i: usize, rk: u32) {
            let k = _mm512_set1_epi32(rk as i32);
            let pre = _mm512_set1_epi64(PRE_MATRIX as i64);
            let post = _mm512_set1_epi64(POST_MATRIX as i64);
            for st in s.iter_mut() {
                let x = _mm512_ternarylogic_epi32::<0x96>(
                    st[(i + 1) % 4],
                    st[(i + 2) % 4],
                    st[(i + 3) % 4],
                );
                let x = _mm512_xor_si512(x, k);
                let y = _mm512_gf2p8affine_epi64_epi8::<{ PRE_CONST as i32 }>(x, pre);
                let t = _mm512_gf2p8affineinv_epi64_epi8::<{ POST_CONST as i32 }>(y, post);
                let a = _mm512_ternarylogic_epi32::<0x96>(
                    t,
                    _mm512_rol_epi32::<8>(t),
                    _mm512_rol_epi32::<16>(t),
                );
                let b = _mm512_ternarylogic_epi32::<0x96>(st[i], t, _mm512_rol_epi32::<24>(t));
                st[i] = _mm512_xor_si512(b, _mm512_rol_epi32::<2>(a));
            }
        }

        /// Transposes back to blocks, byte-swaps to big-endian and stores.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        fn store(s: &State, out: &mut [u8; GROUP_BYTES]) {
            let bswap = bcast(BSWAP32);
            // Output block is X35 || X34 || X33 || X32 = s[3], s[2], s[1], s[0].
            let t0 = _mm512_unpacklo_epi32(s[3], s[2]);
            let t1 = _mm512_unpackhi_epi32(s[3], s[2]);
            let t2 = _mm512_unpacklo_epi32(s[1], s[0]);
            let t3 = _mm512_unpackhi_epi32(s[1], s[0]);
            let rows = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
            let (chunks, _) = out.as_chunks_mut::<64>();
            for (dst, row) in chunks.iter_mut().zip(rows) {
                // SAFETY: `dst` is 64 writable bytes; `storeu` is unaligned.
                unsafe {
                    _mm512_storeu_si512(dst.as_mut_ptr().cast(), _mm512_shuffle_epi8(row, bswap))
                };
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        fn groups<const G: usize>(rk: &[u32; 32], ctr: u128, out: &mut [[u8; GROUP_BYTES]; G]) {
            let mut s = [[_mm512_setzero_si512(); 4]; G];
            for (g, st) in s.iter_mut().enumerate() {
                *st = counters(ctr.wrapping_add((16 * g) as u128));
            }
            let (rk4, _) = rk.as_chunks::<4>();
            for k in rk4 {
                round(&mut s, 0, k[0]);
                round(&mut s, 1, k[1]);
                round(&mut s, 2, k[2]);
                round(&mut s, 3, k[3]);
            }
            for (st, o) in s.iter().zip(out.iter_mut()) {
                store(st, o);
            }
        }

        /// Keystream for whole blocks of `out` (see [`crate::simd`]).
        #[target_feature(enable = "avx512f,avx512bw,gfni")]
        pub(crate) fn keystream(rk: &[u32; 32], counter: u128, out: &mut [u8]) {
            // Four interleaved groups (64 blocks) measured fastest; the
            // remaining 0..=3 groups go two and one at a time.
            let (full, tail) = out.as_chunks_mut::<GROUP_BYTES>();
            let (quads, rest) = full.as_chunks_mut::<4>();
            let (pairs, single) = rest.as_chunks_mut::<2>();
            let mut ctr = counter;
            for m in quads {
                groups::<4>(rk, ctr, m);
                ctr = ctr.wrapping_add(64);
            }
            for m in pairs {
                groups::<2>(rk, ctr, m);
                ctr = ctr.wrapping_add(32);
            }
            for g in single {
                groups::<1>(rk, ctr, core::array::from_mut(g));
                ctr = ctr.wrapping_add(16);
            }
            let whole = tail.len() - tail.len() % 16;
            if whole > 0 {
                let mut buf = [[0u8; GROUP_BYTES]; 1];
                groups::<1>(rk, ctr, &mut buf);
                tail[..whole].copy_from_slice(&buf[0][..whole]);
                buf.zeroize();
            }
        }
    }

    /// AVX2 with either a GFNI or an AES-NI S-box: 8 blocks per group.
    pub(super) mod avx2 {
        use super::super::consts::{
            BSWAP32, IDENTITY, INV_SHIFT_ROWS, POST_CONST, POST_HI, POST_LO, POST_MATRIX,
            PRE_CONST, PRE_HI, PRE_LO, PRE_MATRIX, Perm, compose, rol_bytes,
        };
        use super::{Zeroize, counter_words};
        use core::arch::x86_64::*;

        type State = [__m256i; 4];
        const GROUP_BYTES: usize = 128;

        /// The S-box plus the three byte rotations `L` needs. The AES-NI
        /// variant's output is still ShiftRows-permuted, so it folds the
        /// inverse permutation into each rotation's shuffle.
        trait SboxKind {
            /// Permutation applied to the raw S-box output to get `S(x)`.
            const FIX: Perm;
        }
        struct Gfni;
        struct Aesni;
        impl SboxKind for Gfni {
            const FIX: Perm = IDENTITY;
        }
        impl SboxKind for Aesni {
            const FIX: Perm = INV_SHIFT_ROWS;
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn bcast(p: Perm) -> __m256i {
            let v = u128::from_le_bytes(p);
            let (lo, hi) = (v as i64, (v >> 64) as i64);
            _mm256_set_epi64x(hi, lo, hi, lo)
        }

        #[inline]
        #[target_feature(enable = "avx2,gfni")]
        fn sbox_gfni(x: __m256i) -> __m256i {
            let pre = _mm256_set1_epi64x(PRE_MATRIX as i64);
            let post = _mm256_set1_epi64x(POST_MATRIX as i64);
            let y = _mm256_gf2p8affine_epi64_epi8::<{ PRE_CONST as i32 }>(x, pre);
            _mm256_gf2p8affineinv_epi64_epi8::<{ POST_CONST as i32 }>(y, post)
        }

        /// Byte-wise affine map given by nibble tables.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn affine_nibbles(x: __m256i, lo: Perm, hi: Perm) -> __m256i {
            let m = _mm256_set1_epi8(0x0F);
            let l = _mm256_and_si256(x, m);
            let h = _mm256_and_si256(_mm256_srli_epi32::<4>(x), m);
            _mm256_xor_si256(
                _mm256_shuffle_epi8(bcast(lo), l),
                _mm256_shuffle_epi8(bcast(hi), h),
            )
        }

        /// S-box up to ShiftRows (see `Aesni::FIX`).
        #[inline]
        #[target_feature(enable = "avx2,aes")]
        fn sbox_aesni(x: __m256i) -> __m256i {
            let y = affine_nibbles(x, PRE_LO, PRE_HI);
            let zero = _mm_setzero_si128();
            let lo = _mm_aesenclast_si128(_mm256_castsi256_si128(y), zero);
            let hi = _mm_aesenclast_si128(_mm256_extracti128_si256::<1>(y), zero);
            affine_nibbles(_mm256_set_m128i(hi, lo), POST_LO, POST_HI)
        }

        /// [`sbox_aesni`] with both lanes in one `vaesenclast`.
        #[inline]
        #[target_feature(enable = "avx2,aes,vaes")]
        fn sbox_vaes(x: __m256i) -> __m256i {
            let y = affine_nibbles(x, PRE_LO, PRE_HI);
            let y = _mm256_aesenclast_epi128(y, _mm256_setzero_si256());
            affine_nibbles(y, POST_LO, POST_HI)
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn counters(ctr: u128) -> State {
            let low = ctr as u32;
            if low <= u32::MAX - 7 {
                let offs = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
                [
                    _mm256_set1_epi32((ctr >> 96) as u32 as i32),
                    _mm256_set1_epi32((ctr >> 64) as u32 as i32),
                    _mm256_set1_epi32((ctr >> 32) as u32 as i32),
                    _mm256_add_epi32(_mm256_set1_epi32(low as i32), offs),
                ]
            } else {
                let w = counter_words::<8>(ctr);
                // SAFETY: each `w[j]` is 8 readable `u32`s (32 bytes);
                // `loadu` has no alignment requirement.
                unsafe {
                    [
                        _mm256_loadu_si256(w[0].as_ptr().cast()),
                        _mm256_loadu_si256(w[1].as_ptr().cast()),
                        _mm256_loadu_si256(w[2].as_ptr().cast()),
                        _mm256_loadu_si256(w[3].as_ptr().cast()),
                    ]
                }
            }
        }

        /// `x0 ^ L(t)` from the raw S-box output `u` (`t = pshufb(u, FIX)`).
        #[inline]
        #[target_feature(enable = "avx2")]
        fn linear<K: SboxKind>(x0: __m256i, u: __m256i) -> __m256i {
            let t = _mm256_shuffle_epi8(u, bcast(K::FIX));
            let r8 = _mm256_shuffle_epi8(u, bcast(compose(K::FIX, rol_bytes(1))));
            let r16 = _mm256_shuffle_epi8(u, bcast(compose(K::FIX, rol_bytes(2))));
            let r24 = _mm256_shuffle_epi8(u, bcast(compose(K::FIX, rol_bytes(3))));
            let a = _mm256_xor_si256(_mm256_xor_si256(t, r8), r16);
            let a = _mm256_or_si256(_mm256_slli_epi32::<2>(a), _mm256_srli_epi32::<30>(a));
            _mm256_xor_si256(_mm256_xor_si256(x0, t), _mm256_xor_si256(r24, a))
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn round_input(st: &State, i: usize, k: __m256i) -> __m256i {
            let x = _mm256_xor_si256(st[(i + 1) % 4], st[(i + 2) % 4]);
            _mm256_xor_si256(x, _mm256_xor_si256(st[(i + 3) % 4], k))
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn store(s: &State, out: &mut [u8; GROUP_BYTES]) {
            let bswap = bcast(BSWAP32);
            let t0 = _mm256_unpacklo_epi32(s[3], s[2]);
            let t1 = _mm256_unpackhi_epi32(s[3], s[2]);
            let t2 = _mm256_unpacklo_epi32(s[1], s[0]);
            let t3 = _mm256_unpackhi_epi32(s[1], s[0]);
            let rows = [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ];
            let (chunks, _) = out.as_chunks_mut::<32>();
            for (dst, row) in chunks.iter_mut().zip(rows) {
                // SAFETY: `dst` is 32 writable bytes; `storeu` is unaligned.
                unsafe {
                    _mm256_storeu_si256(dst.as_mut_ptr().cast(), _mm256_shuffle_epi8(row, bswap))
                };
            }
        }

        /// Generates one kernel (`groups`) and its driver (`keystream`) per
        /// S-box flavour; only the S-box call and target features differ.
        macro_rules! kernel {
            ($groups:ident, $keystream:ident, $kind:ty, $sbox:ident, $features:literal) => {
                #[inline]
                #[target_feature(enable = $features)]
                fn $groups<const G: usize>(
                    rk: &[u32; 32],
                    ctr: u128,
                    out: &mut [[u8; GROUP_BYTES]; G],
                ) {
                    let mut s = [[_mm256_setzero_si256(); 4]; G];
                    for (g, st) in s.iter_mut().enumerate() {
                        *st = counters(ctr.wrapping_add((8 * g) as u128));
                    }
                    // Four explicit rounds per step keep every state index a
                    // constant, so the state stays in registers.
                    let round = |s: &mut [State; G], i: usize, rk: u32| {
                        let k = _mm256_set1_epi32(rk as i32);
                        for st in s.iter_mut() {
                            let u = $sbox(round_input(st, i, k));
                            st[i] = linear::<$kind>(st[i], u);
                        }
                    };
                    let (rk4, _) = rk.as_chunks::<4>();
                    for k in rk4 {
                        round(&mut s, 0, k[0]);
                        round(&mut s, 1, k[1]);
                        round(&mut s, 2, k[2]);
                        round(&mut s, 3, k[3]);
                    }
                    for (st, o) in s.iter().zip(out.iter_mut()) {
                        store(st, o);
                    }
                }

                /// Keystream for whole blocks of `out` (see [`crate::simd`]).
                #[target_feature(enable = $features)]
                pub(crate) fn $keystream(rk: &[u32; 32], counter: u128, out: &mut [u8]) {
                    // Four interleaved groups (32 blocks) measured fastest
                    // despite some register spilling; then two, then one.
                    let (full, tail) = out.as_chunks_mut::<GROUP_BYTES>();
                    let (quads, rest) = full.as_chunks_mut::<4>();
                    let (pairs, single) = rest.as_chunks_mut::<2>();
                    let mut ctr = counter;
                    for m in quads {
                        $groups::<4>(rk, ctr, m);
                        ctr = ctr.wrapping_add(32);
                    }
                    for m in pairs {
                        $groups::<2>(rk, ctr, m);
                        ctr = ctr.wrapping_add(16);
                    }
                    for g in single {
                        $groups::<1>(rk, ctr, core::array::from_mut(g));
                        ctr = ctr.wrapping_add(8);
                    }
                    let whole = tail.len() - tail.len() % 16;
                    if whole > 0 {
                        let mut buf = [[0u8; GROUP_BYTES]; 1];
                        $groups::<1>(rk, ctr, &mut buf);
                        tail[..whole].copy_from_slice(&buf[0][..whole]);
                        buf.zeroize();
                    }
                }
            };
        }

        kernel!(groups_gfni, keystream_gfni, Gfni, sbox_gfni, "avx2,gfni");
        kernel!(groups_aesni, keystream_aesni, Aesni, sbox_aesni, "avx2,aes");
        kernel!(
            groups_vaes,
            keystream_vaes,
            Aesni,
            sbox_vaes,
            "avx2,aes,vaes"
        );
    }
}

// ---------------------------------------------------------------------------
// AES-128 CTR
// ---------------------------------------------------------------------------

/// An AES-128-CTR keystream implementation (see [`crate::aesfast`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AesBackend {
    /// The RustCrypto `aes` crate's `encrypt_blocks` (any target).
    Portable,
    /// AES-NI (+ SSSE3 for the counter byte swap): 1 block per register,
    /// 8 in flight.
    AesNi,
    /// VAES + AVX2: 2 blocks per 256-bit register, 16 in flight.
    Vaes256,
    /// VAES + AVX-512F/BW: 4 blocks per 512-bit register, 32 in flight.
    Vaes512,
}

impl AesBackend {
    /// Every backend, fastest first.
    pub const ALL: [AesBackend; 4] = [
        AesBackend::Vaes512,
        AesBackend::Vaes256,
        AesBackend::AesNi,
        AesBackend::Portable,
    ];

    /// The fastest backend this CPU supports (detected once, then cached).
    pub fn detect() -> AesBackend {
        static CHOICE: OnceLock<AesBackend> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            Self::ALL
                .into_iter()
                .find(|b| b.is_supported())
                .unwrap_or(AesBackend::Portable)
        })
    }

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            AesBackend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            AesBackend::AesNi => {
                std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("ssse3")
            }
            #[cfg(target_arch = "x86_64")]
            AesBackend::Vaes256 => {
                std::is_x86_feature_detected!("aes")
                    && std::is_x86_feature_detected!("vaes")
                    && std::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            AesBackend::Vaes512 => {
                std::is_x86_feature_detected!("aes")
                    && std::is_x86_feature_detected!("vaes")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// How many of `blocks` counter blocks starting at `ctr` come before the low
/// 64 bits of the counter wrap (at least 1 if `blocks > 0`). The kernels add
/// counters as two independent 64-bit halves, so a request is split there.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn blocks_before_low_wrap(ctr: u128, blocks: usize) -> usize {
    let room = (1u128 << 64) - u128::from(ctr as u64);
    usize::try_from(room).map_or(blocks, |r| r.min(blocks))
}

/// Fills `out` (whole blocks) with the AES-128 CTR keystream for round keys
/// `rk` using `backend`. Returns `false`, writing nothing, if `backend` is
/// portable or not supported here.
pub(crate) fn aes_keystream(
    backend: AesBackend,
    rk: &[[u8; 16]; 11],
    counter: u128,
    out: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if backend != AesBackend::Portable && backend.is_supported() {
        let mut ctr = counter;
        let mut rest = out;
        loop {
            let blocks = rest.len() / 16;
            if blocks == 0 {
                break;
            }
            let n = blocks_before_low_wrap(ctr, blocks);
            let (head, tail) = rest.split_at_mut(16 * n);
            match backend {
                // SAFETY: `is_supported` just confirmed the CPU has every
                // target feature the called function is compiled with
                // (aes, vaes, avx512f, avx512bw); `head`'s counters do not
                // wrap in their low 64 bits (`blocks_before_low_wrap`).
                AesBackend::Vaes512 => unsafe { x86_aes::vaes512::keystream(rk, ctr, head) },
                // SAFETY: as above (aes, vaes, avx2 detected).
                AesBackend::Vaes256 => unsafe { x86_aes::vaes256::keystream(rk, ctr, head) },
                // SAFETY: as above (aes, ssse3 detected).
                AesBackend::AesNi => unsafe { x86_aes::aesni::keystream(rk, ctr, head) },
                AesBackend::Portable => return false,
            }
            ctr = ctr.wrapping_add(n as u128);
            rest = tail;
        }
        return true;
    }
    let _ = (backend, rk, counter, out);
    false
}

/// AES-128 CTR kernels. Each keeps the counter as a little-endian `u128` per
/// 128-bit lane (low qword = low half), adds block offsets with 64-bit lane
/// adds — valid because the caller never lets the low half wrap within one
/// call — and byte-reverses each lane with `pshufb` to get the big-endian
/// counter block. The key is whitened in, then 9 `aesenc` and one
/// `aesenclast` run on several registers at once so their latency overlaps.
/// No secret-dependent memory access or branches; round keys live in
/// registers and spilled stack slots that cannot be wiped from Rust, the tail
/// buffer is zeroized.
#[cfg(target_arch = "x86_64")]
mod x86_aes {
    /// `pshufb` operand reversing the 16 bytes of each 128-bit lane.
    const REVERSE: u128 =
        u128::from_le_bytes([15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);

    /// Defines `encrypt` and `keystream` for one register width; the module
    /// invoking it supplies `bcast128` (a `u128` in every 128-bit lane) and
    /// `lane_offsets` (block index `j` in the low qword of lane `j`).
    macro_rules! aes_ctr_kernel {
        (
            features: $features:literal,
            vector: $v:ty,
            lanes: $lanes:literal,
            regs: $regs:literal,
            zero: $zero:ident,
            xor: $xor:ident,
            add64: $add:ident,
            shuffle: $shuf:ident,
            aesenc: $enc:ident,
            aesenclast: $last:ident,
            storeu: $store:ident,
        ) => {
            /// Bytes per register.
            const REG_BYTES: usize = 16 * $lanes;
            /// Bytes per main-loop iteration.
            const CHUNK: usize = REG_BYTES * $regs;

            /// AES-128-encrypts the little-endian counters `ctr` (all lanes).
            #[inline]
            #[target_feature(enable = $features)]
            fn encrypt<const N: usize>(k: &[$v; 11], bswap: $v, ctr: [$v; N]) -> [$v; N] {
                let mut x = ctr;
                for xi in x.iter_mut() {
                    *xi = $xor($shuf(*xi, bswap), k[0]);
                }
                for kr in &k[1..10] {
                    for xi in x.iter_mut() {
                        *xi = $enc(*xi, *kr);
                    }
                }
                for xi in x.iter_mut() {
                    *xi = $last(*xi, k[10]);
                }
                x
            }

            /// Keystream for whole blocks of `out`; the low 64 bits of the
            /// counter must not wrap within `out` (lanes past its end may).
            #[target_feature(enable = $features)]
            pub(crate) fn keystream(rk: &[[u8; 16]; 11], counter: u128, out: &mut [u8]) {
                let mut k = [$zero(); 11];
                for (kr, r) in k.iter_mut().zip(rk) {
                    *kr = bcast128(u128::from_le_bytes(*r));
                }
                let bswap = bcast128(REVERSE);
                let mut base = $add(bcast128(counter), lane_offsets());
                let mut offs = [$zero(); $regs];
                for (i, o) in offs.iter_mut().enumerate() {
                    *o = bcast128(($lanes * i) as u128);
                }
                let step = bcast128(($lanes * $regs) as u128);
                let one = bcast128($lanes);

                let (chunks, tail) = out.as_chunks_mut::<CHUNK>();
                for chunk in chunks {
                    let mut c = [$zero(); $regs];
                    for (ci, o) in c.iter_mut().zip(&offs) {
                        *ci = $add(base, *o);
                    }
                    base = $add(base, step);
                    let x = encrypt(&k, bswap, c);
                    let (dst, _) = chunk.as_chunks_mut::<REG_BYTES>();
                    for (d, xi) in dst.iter_mut().zip(x) {
                        // SAFETY: `d` is `REG_BYTES` writable bytes, the
                        // size of the vector; `storeu` is unaligned.
                        unsafe { $store(d.as_mut_ptr().cast(), xi) };
                    }
                }
                let (regs, rest) = tail.as_chunks_mut::<REG_BYTES>();
                for d in regs {
                    let [xi] = encrypt(&k, bswap, [base]);
                    base = $add(base, one);
                    // SAFETY: as above.
                    unsafe { $store(d.as_mut_ptr().cast(), xi) };
                }
                if !rest.is_empty() {
                    let [xi] = encrypt(&k, bswap, [base]);
                    let mut buf = [0u8; REG_BYTES];
                    // SAFETY: `buf` is `REG_BYTES` writable bytes.
                    unsafe { $store(buf.as_mut_ptr().cast(), xi) };
                    rest.copy_from_slice(&buf[..rest.len()]);
                    buf.zeroize();
                }
            }
        };
    }

    /// VAES + AVX-512F/BW: 4 blocks per register, 8 registers in flight
    /// (measured ~3% faster than 4 on Zen 4; 32 zmm leave room for them).
    pub(super) mod vaes512 {
        use super::REVERSE;
        use core::arch::x86_64::*;
        use zeroize::Zeroize;

        #[inline]
        #[target_feature(enable = "aes,vaes,avx512f,avx512bw")]
        fn bcast128(v: u128) -> __m512i {
            let (lo, hi) = (v as i64, (v >> 64) as i64);
            _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo)
        }

        #[inline]
        #[target_feature(enable = "aes,vaes,avx512f,avx512bw")]
        fn lane_offsets() -> __m512i {
            _mm512_set_epi64(0, 3, 0, 2, 0, 1, 0, 0)
        }

        aes_ctr_kernel! {
            features: "aes,vaes,avx512f,avx512bw",
            vector: __m512i,
            lanes: 4,
            regs: 8,
            zero: _mm512_setzero_si512,
            xor: _mm512_xor_si512,
            add64: _mm512_add_epi64,
            shuffle: _mm512_shuffle_epi8,
            aesenc: _mm512_aesenc_epi128,
            aesenclast: _mm512_aesenclast_epi128,
            storeu: _mm512_storeu_si512,
        }
    }

    /// VAES + AVX2: 2 blocks per register, 8 registers in flight.
    pub(super) mod vaes256 {
        use super::REVERSE;
        use core::arch::x86_64::*;
        use zeroize::Zeroize;

        #[inline]
        #[target_feature(enable = "aes,vaes,avx2")]
        fn bcast128(v: u128) -> __m256i {
            let (lo, hi) = (v as i64, (v >> 64) as i64);
            _mm256_set_epi64x(hi, lo, hi, lo)
        }

        #[inline]
        #[target_feature(enable = "aes,vaes,avx2")]
        fn lane_offsets() -> __m256i {
            _mm256_set_epi64x(0, 1, 0, 0)
        }

        aes_ctr_kernel! {
            features: "aes,vaes,avx2",
            vector: __m256i,
            lanes: 2,
            regs: 8,
            zero: _mm256_setzero_si256,
            xor: _mm256_xor_si256,
            add64: _mm256_add_epi64,
            shuffle: _mm256_shuffle_epi8,
            aesenc: _mm256_aesenc_epi128,
            aesenclast: _mm256_aesenclast_epi128,
            storeu: _mm256_storeu_si256,
        }
    }

    /// AES-NI: 1 block per register, 8 registers in flight.
    pub(super) mod aesni {
        use super::REVERSE;
        use core::arch::x86_64::*;
        use zeroize::Zeroize;

        #[inline]
        #[target_feature(enable = "aes,ssse3")]
        fn bcast128(v: u128) -> __m128i {
            _mm_set_epi64x((v >> 64) as i64, v as i64)
        }

        #[inline]
        #[target_feature(enable = "aes,ssse3")]
        fn lane_offsets() -> __m128i {
            _mm_setzero_si128()
        }

        aes_ctr_kernel! {
            features: "aes,ssse3",
            vector: __m128i,
            lanes: 1,
            regs: 8,
            zero: _mm_setzero_si128,
            xor: _mm_xor_si128,
            add64: _mm_add_epi64,
            shuffle: _mm_shuffle_epi8,
            aesenc: _mm_aesenc_si128,
            aesenclast: _mm_aesenclast_si128,
            storeu: _mm_storeu_si128,
        }
    }
}

/// Stochastic rounding of one batch on the narrow path
/// (`quant::narrow::round_narrow_into`), compiled for the widest vectors
/// this CPU has: AVX-512F (8 `f64` a register) or AVX2 (4), else the
/// baseline's SSE2 (2). The arithmetic is the portable code's, inlined
/// into each kernel, so the results are identical bit for bit (tested).
pub(crate) fn round_narrow_batch(q: &mut [i64], xs: &[f32], draws: &[u8], s: Scale) {
    round_narrow_batch_at(RoundingWidth::detect(), q, xs, draws, s);
}

/// The vector width of [`round_narrow_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoundingWidth {
    /// The baseline target (SSE2 on x86_64).
    Portable,
    /// 256-bit.
    Avx2,
    /// 512-bit.
    Avx512,
}

impl RoundingWidth {
    /// Widest first.
    const ALL: [RoundingWidth; 3] = [
        RoundingWidth::Avx512,
        RoundingWidth::Avx2,
        RoundingWidth::Portable,
    ];

    /// The widest this CPU runs (detected once).
    fn detect() -> Self {
        static CHOICE: OnceLock<RoundingWidth> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            Self::ALL
                .into_iter()
                .find(|w| w.is_supported())
                .unwrap_or(RoundingWidth::Portable)
        })
    }

    /// Whether this CPU can run the width.
    fn is_supported(self) -> bool {
        match self {
            RoundingWidth::Portable => true,
            #[cfg(target_arch = "x86_64")]
            RoundingWidth::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            RoundingWidth::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// [`round_narrow_batch`] at `width`, or portably where this CPU lacks it.
fn round_narrow_batch_at(width: RoundingWidth, q: &mut [i64], xs: &[f32], d: &[u8], s: Scale) {
    #[cfg(target_arch = "x86_64")]
    if width.is_supported() {
        #[target_feature(enable = "avx512f")]
        fn avx512(q: &mut [i64], xs: &[f32], d: &[u8], s: Scale) {
            round_narrow_into(q, xs, d, s)
        }
        #[target_feature(enable = "avx2")]
        fn avx2(q: &mut [i64], xs: &[f32], d: &[u8], s: Scale) {
            round_narrow_into(q, xs, d, s)
        }
        match width {
            // SAFETY: `is_supported` just found avx512f on this CPU.
            RoundingWidth::Avx512 => return unsafe { avx512(q, xs, d, s) },
            // SAFETY: `is_supported` just found avx2 on this CPU.
            RoundingWidth::Avx2 => return unsafe { avx2(q, xs, d, s) },
            RoundingWidth::Portable => {}
        }
    }
    let _ = width;
    round_narrow_into(q, xs, d, s)
}

#[cfg(test)]
mod tests {
    use super::consts::*;
    use super::*;
    use crate::sm4fast::{SBOX, Sm4Keystream};

    // --- Software GF(2^8) / bit-matrix helpers for re-deriving the constants.

    fn gmul(mut a: u8, mut b: u8, poly: u16) -> u8 {
        let mut r = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            b >>= 1;
            let carry = a & 0x80 != 0;
            a <<= 1;
            if carry {
                a ^= (poly & 0xFF) as u8;
            }
        }
        r
    }

    fn ginv(x: u8, poly: u16) -> u8 {
        (1..=255u8).find(|&y| gmul(x, y, poly) == 1).unwrap_or(0)
    }

    /// Bit matrix as 8 rows; `rows[i]` selects the input bits of output bit `i`.
    type Mat = [u8; 8];

    fn apply(m: &Mat, x: u8) -> u8 {
        (0..8).fold(0, |acc, i| acc | (((m[i] & x).count_ones() as u8 & 1) << i))
    }

    fn from_columns(cols: [u8; 8]) -> Mat {
        core::array::from_fn(|row| (0..8).fold(0, |acc, c| acc | (((cols[c] >> row) & 1) << c)))
    }

    fn mul(a: &Mat, b: &Mat) -> Mat {
        from_columns(core::array::from_fn(|c| apply(a, apply(b, 1 << c))))
    }

    fn invert(m: &Mat) -> Mat {
        let mut inv = [0u8; 256];
        for x in 0..=255u8 {
            inv[usize::from(apply(m, x))] = x;
        }
        from_columns(core::array::from_fn(|c| inv[1usize << c]))
    }

    /// GFNI packing: byte `7 - i` of the qword is row `i`.
    fn pack(m: &Mat) -> u64 {
        (0..8).fold(0, |acc, i| acc | (u64::from(m[i]) << (8 * (7 - i))))
    }

    fn unpack(q: u64) -> Mat {
        core::array::from_fn(|i| (q >> (8 * (7 - i))) as u8)
    }

    /// Software model of `gf2p8affine` on one byte.
    fn gf2p8affine(x: u8, q: u64, b: u8) -> u8 {
        apply(&unpack(q), x) ^ b
    }

    /// Software model of `gf2p8affineinv` on one byte.
    fn gf2p8affineinv(x: u8, q: u64, b: u8) -> u8 {
        apply(&unpack(q), ginv(x, 0x11B)) ^ b
    }

    const SM4_POLY: u16 = 0x1F5;
    const SM4_C: u8 = 0xD3;
    const BETA: u8 = 0x23;

    fn sm4_a() -> Mat {
        core::array::from_fn(|i| 0xA7u8.rotate_left(i as u32))
    }

    fn aes_affine() -> Mat {
        core::array::from_fn(|i| {
            [0, 4, 5, 6, 7]
                .iter()
                .fold(0u8, |acc, &d| acc | (1 << ((i + d) % 8)))
        })
    }

    #[test]
    fn sm4_sbox_is_affine_inversion() {
        let a = sm4_a();
        for x in 0..=255u8 {
            let s = apply(&a, ginv(apply(&a, x) ^ SM4_C, SM4_POLY)) ^ SM4_C;
            assert_eq!(s, SBOX[usize::from(x)], "x = {x:#04x}");
        }
    }

    #[test]
    fn derive_gfni_constants() {
        // beta is a root of P in the AES field.
        let mut p_at_beta = 0u8;
        let mut pow = 1u8;
        for bit in 0..9 {
            if SM4_POLY >> bit & 1 != 0 {
                p_at_beta ^= pow;
            }
            pow = gmul(pow, BETA, 0x11B);
        }
        assert_eq!(p_at_beta, 0);

        let mut cols = [1u8; 8];
        for i in 1..8 {
            cols[i] = gmul(cols[i - 1], BETA, 0x11B);
        }
        let phi = from_columns(cols);
        for x in 0..=255u8 {
            assert_eq!(ginv(apply(&phi, x), 0x11B), apply(&phi, ginv(x, SM4_POLY)));
        }
        let a = sm4_a();
        let m1 = mul(&phi, &a);
        let m2 = mul(&a, &invert(&phi));
        assert_eq!(pack(&m1), PRE_MATRIX);
        assert_eq!(apply(&phi, SM4_C), PRE_CONST);
        assert_eq!(pack(&m2), POST_MATRIX);
        assert_eq!(SM4_C, POST_CONST);

        // AES-NI post map: M2·Aa⁻¹, constant M2·Aa⁻¹·0x63 ⊕ c2.
        let post = mul(&m2, &invert(&aes_affine()));
        let post_c = apply(&post, 0x63) ^ POST_CONST;
        for n in 0..16u8 {
            let i = usize::from(n);
            assert_eq!(PRE_LO[i], apply(&m1, n) ^ PRE_CONST);
            assert_eq!(PRE_HI[i], apply(&m1, n << 4));
            assert_eq!(POST_LO[i], apply(&post, n) ^ post_c);
            assert_eq!(POST_HI[i], apply(&post, n << 4));
        }
    }

    #[test]
    fn gfni_model_rebuilds_sbox() {
        for x in 0..=255u8 {
            let y = gf2p8affine(x, PRE_MATRIX, PRE_CONST);
            let s = gf2p8affineinv(y, POST_MATRIX, POST_CONST);
            assert_eq!(s, SBOX[usize::from(x)], "x = {x:#04x}");
        }
    }

    #[test]
    fn aesni_model_rebuilds_sbox() {
        let aa = aes_affine();
        let nib =
            |x: u8, lo: &[u8; 16], hi: &[u8; 16]| lo[usize::from(x & 15)] ^ hi[usize::from(x >> 4)];
        for x in 0..=255u8 {
            let y = nib(x, &PRE_LO, &PRE_HI);
            let aes_sbox = apply(&aa, ginv(y, 0x11B)) ^ 0x63;
            assert_eq!(
                nib(aes_sbox, &POST_LO, &POST_HI),
                SBOX[usize::from(x)],
                "x = {x:#04x}"
            );
        }
    }

    #[test]
    fn permutations() {
        // rol_bytes(k) really is a rotation by 8k on little-endian words.
        let v: [u8; 16] = core::array::from_fn(|i| (i * 17 + 3) as u8);
        for k in 0..4 {
            let p = rol_bytes(k);
            let shuffled: [u8; 16] = core::array::from_fn(|i| v[usize::from(p[i])]);
            for w in 0..4 {
                let word = u32::from_le_bytes([v[4 * w], v[4 * w + 1], v[4 * w + 2], v[4 * w + 3]]);
                let got = u32::from_le_bytes([
                    shuffled[4 * w],
                    shuffled[4 * w + 1],
                    shuffled[4 * w + 2],
                    shuffled[4 * w + 3],
                ]);
                assert_eq!(got, word.rotate_left(8 * k as u32));
            }
        }
        // ShiftRows row r rotates left by r: new[r + 4c] = old[r + 4((c + r) % 4)].
        let shifted: [u8; 16] = core::array::from_fn(|i| v[(i % 4) + 4 * ((i / 4 + i % 4) % 4)]);
        let back: [u8; 16] = core::array::from_fn(|i| shifted[usize::from(INV_SHIFT_ROWS[i])]);
        assert_eq!(back, v);
    }

    #[test]
    fn each_simd_backend_matches_portable() {
        let key: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ 0x5A);
        let ks = Sm4Keystream::new(&key);
        let counters = [
            0u128,
            7,
            u128::from(u32::MAX) - 20,
            u128::from(u32::MAX),
            u128::from(u64::MAX) - 40,
            0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210,
            u128::MAX - 33,
        ];
        let lens = [
            0usize,
            16,
            32,
            112,
            128,
            240,
            256,
            272,
            496,
            512,
            528,
            1024,
            16 * 43,
            16 * 100,
            16 * 117,
            65536 + 48,
        ];
        for backend in Backend::ALL {
            if backend == Backend::Portable {
                continue;
            }
            if !backend.is_supported() {
                println!("note: {backend:?} not supported by this CPU; skipped");
                continue;
            }
            for &counter in &counters {
                for &len in &lens {
                    let mut want = vec![0u8; len];
                    ks.keystream_portable(counter, &mut want);
                    let mut got = vec![0x55u8; len];
                    let used = ks.keystream_with(backend, counter, &mut got);
                    assert_eq!(used, backend);
                    assert!(got == want, "{backend:?} counter {counter:#x} len {len}");
                }
            }
            println!("{backend:?}: ok");
        }
        println!("detected backend: {:?}", Backend::detect());
    }

    #[test]
    fn aes_split_at_low_half_wrap() {
        let max = u128::from(u64::MAX);
        assert_eq!(blocks_before_low_wrap(0, 0), 0);
        assert_eq!(blocks_before_low_wrap(0, 1000), 1000);
        assert_eq!(blocks_before_low_wrap(max, 1000), 1);
        assert_eq!(blocks_before_low_wrap(max - 9, 1000), 10);
        assert_eq!(blocks_before_low_wrap((7 << 64) | (max - 2), 3), 3);
        assert_eq!(blocks_before_low_wrap(u128::MAX - 4, 16), 5);
        assert_eq!(blocks_before_low_wrap(u128::from(u32::MAX), 16), 16);
    }

    #[test]
    fn unsupported_or_portable_falls_back() {
        let ks = Sm4Keystream::new(&[7u8; 16]);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        assert_eq!(
            ks.keystream_with(Backend::Portable, 3, &mut a),
            Backend::Portable
        );
        ks.keystream_portable(3, &mut b);
        assert_eq!(a, b);
        for backend in Backend::ALL {
            let used = ks.keystream_with(backend, 3, &mut a);
            assert_eq!(used == backend, backend.is_supported());
            assert_eq!(a, b);
        }
    }

    #[test]
    fn rounding_is_the_same_at_every_width() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let n = 4099; // not a multiple of any vector width
        let mut xs: Vec<f32> = (0..n)
            .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 3.0)
            .collect();
        // Exact integers after scaling, values at and past the clip, zeros
        // of both signs, the smallest normals.
        xs[..8].copy_from_slice(&[0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 0.25, f32::MIN_POSITIVE]);
        let mut draws = vec![0u8; 4 * n];
        rng.fill_bytes(&mut draws);
        // Draws at both ends of their range.
        draws[..4].copy_from_slice(&[0; 4]);
        draws[4..8].copy_from_slice(&[0xff; 4]);
        for (clip, ws, cap) in [(1.0, 1000.0, 1e9), (1.0, 4096.0, 2000.0), (2.0, 0.5, 1e15)] {
            let s = Scale { clip, ws, cap };
            let mut want = vec![0i64; n];
            round_narrow_into(&mut want, &xs, &draws, s);
            // A width this CPU lacks runs the portable loop.
            for w in RoundingWidth::ALL {
                let mut got = vec![0i64; n];
                round_narrow_batch_at(w, &mut got, &xs, &draws, s);
                assert_eq!(got, want, "{w:?} (supported: {}), {s:?}", w.is_supported());
            }
        }
    }
}
