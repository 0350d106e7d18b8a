//! SM4 (GB/T 32907-2016) encryption and a fast CTR-mode keystream.
//!
//! # Implementations
//!
//! Every path is constant-time: no table look-up, branch or memory address
//! depends on the key or the data. On x86_64 with AVX2 the keystream comes
//! from the SIMD kernels in [`crate::simd`] (GFNI or AES-NI S-box); elsewhere —
//! aarch64 servers, x86 without AVX2 — from the portable bitsliced code in
//! [`crate::sm4ct`] (S-box as a boolean circuit, 64 blocks per batch). The key
//! schedule and [`Sm4Keystream::encrypt_block`] use the same circuit on one
//! word at a time.
//!
//! The former portable path (four 256-entry T-tables indexed by secret bytes,
//! open to cache-timing attacks) survives only as a reference for tests and
//! benchmarks (`keystream_table`, behind `cfg(test)` / the `test-util`
//! feature).
//!
//! # CTR counter convention
//!
//! Counter block number `i` is the 16-byte **big-endian** encoding of
//! `counter + i` (wrapping mod 2^128), and keystream block `i` is its SM4
//! encryption. This is exactly OpenSSL's `-sm4-ctr` (and NIST SP 800-38A's
//! full-width increment) with `IV = counter.to_be_bytes()`; e.g. an all-zero
//! IV is `counter = 0`.

use core::fmt;

use zeroize::Zeroize;

use crate::simd::{self, Backend};
use crate::sm4ct;

/// The T-table SM4 this crate used before [`crate::sm4ct`]: **not**
/// constant-time (look-ups indexed by secret bytes). Kept only as a
/// reference for tests and benchmarks.
#[cfg(any(test, feature = "test-util"))]
mod table {
    use crate::sm4ct::l;

    /// The SM4 S-box (GB/T 32907-2016, table 1).
    pub(crate) const SBOX: [u8; 256] = [
        0xD6, 0x90, 0xE9, 0xFE, 0xCC, 0xE1, 0x3D, 0xB7, 0x16, 0xB6, 0x14, 0xC2, 0x28, 0xFB, 0x2C,
        0x05, 0x2B, 0x67, 0x9A, 0x76, 0x2A, 0xBE, 0x04, 0xC3, 0xAA, 0x44, 0x13, 0x26, 0x49, 0x86,
        0x06, 0x99, 0x9C, 0x42, 0x50, 0xF4, 0x91, 0xEF, 0x98, 0x7A, 0x33, 0x54, 0x0B, 0x43, 0xED,
        0xCF, 0xAC, 0x62, 0xE4, 0xB3, 0x1C, 0xA9, 0xC9, 0x08, 0xE8, 0x95, 0x80, 0xDF, 0x94, 0xFA,
        0x75, 0x8F, 0x3F, 0xA6, 0x47, 0x07, 0xA7, 0xFC, 0xF3, 0x73, 0x17, 0xBA, 0x83, 0x59, 0x3C,
        0x19, 0xE6, 0x85, 0x4F, 0xA8, 0x68, 0x6B, 0x81, 0xB2, 0x71, 0x64, 0xDA, 0x8B, 0xF8, 0xEB,
        0x0F, 0x4B, 0x70, 0x56, 0x9D, 0x35, 0x1E, 0x24, 0x0E, 0x5E, 0x63, 0x58, 0xD1, 0xA2, 0x25,
        0x22, 0x7C, 0x3B, 0x01, 0x21, 0x78, 0x87, 0xD4, 0x00, 0x46, 0x57, 0x9F, 0xD3, 0x27, 0x52,
        0x4C, 0x36, 0x02, 0xE7, 0xA0, 0xC4, 0xC8, 0x9E, 0xEA, 0xBF, 0x8A, 0xD2, 0x40, 0xC7, 0x38,
        0xB5, 0xA3, 0xF7, 0xF2, 0xCE, 0xF9, 0x61, 0x15, 0xA1, 0xE0, 0xAE, 0x5D, 0xA4, 0x9B, 0x34,
        0x1A, 0x55, 0xAD, 0x93, 0x32, 0x30, 0xF5, 0x8C, 0xB1, 0xE3, 0x1D, 0xF6, 0xE2, 0x2E, 0x82,
        0x66, 0xCA, 0x60, 0xC0, 0x29, 0x23, 0xAB, 0x0D, 0x53, 0x4E, 0x6F, 0xD5, 0xDB, 0x37, 0x45,
        0xDE, 0xFD, 0x8E, 0x2F, 0x03, 0xFF, 0x6A, 0x72, 0x6D, 0x6C, 0x5B, 0x51, 0x8D, 0x1B, 0xAF,
        0x92, 0xBB, 0xDD, 0xBC, 0x7F, 0x11, 0xD9, 0x5C, 0x41, 0x1F, 0x10, 0x5A, 0xD8, 0x0A, 0xC1,
        0x31, 0x88, 0xA5, 0xCD, 0x7B, 0xBD, 0x2D, 0x74, 0xD0, 0x12, 0xB8, 0xE5, 0xB4, 0xB0, 0x89,
        0x69, 0x97, 0x4A, 0x0C, 0x96, 0x77, 0x7E, 0x65, 0xB9, 0xF1, 0x09, 0xC5, 0x6E, 0xC6, 0x84,
        0x18, 0xF0, 0x7D, 0xEC, 0x3A, 0xDC, 0x4D, 0x20, 0x79, 0xEE, 0x5F, 0x3E, 0xD7, 0xCB, 0x39,
        0x48,
    ];

    /// `TABLES[k][v] = L(S(v) << (24 - 8k))`: since `L` is linear, `T(x)` is
    /// the XOR of the four byte contributions.
    static TABLES: [[u32; 256]; 4] = {
        let mut t = [[0u32; 256]; 4];
        let mut v = 0;
        while v < 256 {
            let s = SBOX[v] as u32;
            let mut k = 0;
            while k < 4 {
                t[k][v] = l(s << (24 - 8 * k));
                k += 1;
            }
            v += 1;
        }
        t
    };

    /// Round function `T = L ∘ τ` via the tables.
    pub(crate) fn t_table(x: u32) -> u32 {
        let [b0, b1, b2, b3] = x.to_be_bytes();
        TABLES[0][usize::from(b0)]
            ^ TABLES[1][usize::from(b1)]
            ^ TABLES[2][usize::from(b2)]
            ^ TABLES[3][usize::from(b3)]
    }

    /// Runs the 32 rounds on `N` independent blocks, round-interleaved so the
    /// CPU can overlap their (otherwise serial) dependency chains.
    #[inline(always)]
    fn rounds<const N: usize>(rk: &[u32; 32], x: &mut [[u32; 4]; N]) {
        let (rk4, _) = rk.as_chunks::<4>();
        for k in rk4 {
            for b in x.iter_mut() {
                b[0] ^= t_table(b[1] ^ b[2] ^ b[3] ^ k[0]);
            }
            for b in x.iter_mut() {
                b[1] ^= t_table(b[2] ^ b[3] ^ b[0] ^ k[1]);
            }
            for b in x.iter_mut() {
                b[2] ^= t_table(b[3] ^ b[0] ^ b[1] ^ k[2]);
            }
            for b in x.iter_mut() {
                b[3] ^= t_table(b[0] ^ b[1] ^ b[2] ^ k[3]);
            }
        }
    }

    /// Encrypts `N` consecutive counter blocks starting at `ctr` into `out`.
    #[inline(always)]
    fn ctr_blocks<const N: usize>(rk: &[u32; 32], ctr: u128, out: &mut [[u8; 16]; N]) {
        let mut x = [[0u32; 4]; N];
        for (i, w) in x.iter_mut().enumerate() {
            let v = ctr.wrapping_add(i as u128);
            *w = [
                (v >> 96) as u32,
                (v >> 64) as u32,
                (v >> 32) as u32,
                v as u32,
            ];
        }
        rounds(rk, &mut x);
        for (o, w) in out.iter_mut().zip(&x) {
            let v = (u128::from(w[3]) << 96)
                | (u128::from(w[2]) << 64)
                | (u128::from(w[1]) << 32)
                | u128::from(w[0]);
            *o = v.to_be_bytes();
        }
    }

    /// CTR keystream over whole blocks of `out`, four blocks interleaved.
    pub(crate) fn keystream(rk: &[u32; 32], counter: u128, out: &mut [u8]) {
        let (blocks, _) = out.as_chunks_mut::<16>();
        let (quads, rest) = blocks.as_chunks_mut::<4>();
        let mut ctr = counter;
        for q in quads {
            ctr_blocks::<4>(rk, ctr, q);
            ctr = ctr.wrapping_add(4);
        }
        for b in rest {
            ctr_blocks::<1>(rk, ctr, core::array::from_mut(b));
            ctr = ctr.wrapping_add(1);
        }
    }
}

/// SM4 round keys, expanded once.
#[derive(Clone)]
pub struct Sm4Keystream {
    rk: [u32; 32],
}

impl Sm4Keystream {
    /// Expands `key` into the 32 round keys (GB/T 32907-2016, §7.3).
    pub fn new(key: &[u8; 16]) -> Self {
        Self {
            rk: sm4ct::expand_key(key),
        }
    }

    /// Encrypt one 16-byte block in place (constant-time, one block at a
    /// time: for tests and KATs, not bulk data).
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        sm4ct::encrypt_block(&self.rk, block);
    }

    /// Fill `out` with the CTR keystream for counter blocks `counter,
    /// counter + 1, ...` (128-bit big-endian, wrapping mod 2^128): OpenSSL
    /// `-sm4-ctr` with `IV = counter.to_be_bytes()`.
    ///
    /// `out.len()` must be a multiple of 16; only whole blocks are written
    /// (a trailing partial block is left untouched, and debug builds assert).
    /// Uses the fastest implementation this CPU supports, detected once.
    pub fn keystream(&self, counter: u128, out: &mut [u8]) {
        self.keystream_with(Backend::detect(), counter, out);
    }

    /// Same as [`Self::keystream`], forced onto the portable bitsliced path
    /// ([`crate::sm4ct`]).
    pub fn keystream_portable(&self, counter: u128, out: &mut [u8]) {
        debug_assert!(
            out.len().is_multiple_of(16),
            "keystream length must be whole blocks"
        );
        sm4ct::keystream(&self.rk, counter, out);
    }

    /// The old T-table keystream (not constant-time), to compare against in
    /// tests and benchmarks only.
    #[cfg(any(test, feature = "test-util"))]
    #[doc(hidden)]
    pub fn keystream_table(&self, counter: u128, out: &mut [u8]) {
        table::keystream(&self.rk, counter, out);
    }

    /// Same as [`Self::keystream`] with an explicit implementation (for tests
    /// and benchmarks). If `backend` is not supported by this CPU the portable
    /// path is used instead; the backend actually used is returned.
    pub fn keystream_with(&self, backend: Backend, counter: u128, out: &mut [u8]) -> Backend {
        debug_assert!(
            out.len().is_multiple_of(16),
            "keystream length must be whole blocks"
        );
        let whole = out.len() - out.len() % 16;
        let out = &mut out[..whole];
        if simd::keystream(backend, &self.rk, counter, out) {
            backend
        } else {
            sm4ct::keystream(&self.rk, counter, out);
            Backend::Portable
        }
    }
}

impl Drop for Sm4Keystream {
    fn drop(&mut self) {
        self.rk.zeroize();
    }
}

impl fmt::Debug for Sm4Keystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print round keys: they are equivalent to the key.
        f.debug_struct("Sm4Keystream")
            .field("backend", &Backend::detect())
            .finish_non_exhaustive()
    }
}

/// The S-box table, for the SIMD module's tests.
#[cfg(test)]
pub(crate) use table::SBOX;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngExt, SeedableRng};
    use sm4::cipher::{BlockCipherEncrypt, KeyInit};

    const GB_KEY: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex"))
            .collect()
    }

    /// Reference CTR keystream from the RustCrypto `sm4` crate, block by block.
    fn reference(key: &[u8; 16], counter: u128, len: usize) -> Vec<u8> {
        let cipher = sm4::Sm4::new(&(*key).into());
        let mut out = Vec::with_capacity(len);
        for i in 0..len / 16 {
            let mut block = counter.wrapping_add(i as u128).to_be_bytes().into();
            cipher.encrypt_block(&mut block);
            out.extend_from_slice(&block);
        }
        out
    }

    fn seeded() -> StdRng {
        let seed: u64 = rand::rng().random();
        println!("rng seed = {seed:#x}");
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn ck_matches_standard() {
        assert_eq!(sm4ct::CK[0], 0x0007_0E15);
        assert_eq!(sm4ct::CK[1], 0x1C23_2A31);
        assert_eq!(sm4ct::CK[31], 0x646B_7279);
    }

    #[test]
    fn tables_match_circuit_and_l() {
        for x in [0u32, 1, 0x0123_4567, 0x89AB_CDEF, u32::MAX, 0xDEAD_BEEF] {
            assert_eq!(table::t_table(x), sm4ct::l(sm4ct::tau(x)));
        }
    }

    #[test]
    fn gbt_32907_appendix_a1() {
        let ks = Sm4Keystream::new(&GB_KEY);
        let mut block = GB_KEY;
        ks.encrypt_block(&mut block);
        assert_eq!(block.to_vec(), hex("681edf34d206965e86b3e94f536e4246"));
    }

    #[test]
    fn gbt_32907_appendix_a2_million() {
        let ks = Sm4Keystream::new(&GB_KEY);
        let mut block = GB_KEY;
        for _ in 0..1_000_000 {
            ks.encrypt_block(&mut block);
        }
        assert_eq!(block.to_vec(), hex("595298c7c6fd271f0402f804c33d3f66"));
    }

    #[test]
    fn round_keys_match_standard_example() {
        // GB/T 32907-2016 appendix A lists rk0 and rk31 for this key.
        let ks = Sm4Keystream::new(&GB_KEY);
        assert_eq!(ks.rk[0], 0xF121_86F9);
        assert_eq!(ks.rk[31], 0x9124_A012);
    }

    #[test]
    fn openssl_zero_iv_is_counter_zero() {
        // `openssl enc -sm4-ctr -iv 00..00` encrypts counter blocks 0, 1, ...
        let ks = Sm4Keystream::new(&GB_KEY);
        let mut out = [0u8; 48];
        ks.keystream(0, &mut out);
        let mut zero = [0u8; 16];
        ks.encrypt_block(&mut zero);
        assert_eq!(out[..16], zero);
        assert_eq!(out.to_vec(), reference(&GB_KEY, 0, 48));
    }

    #[test]
    fn ctr_kat_draft_ribose_cfrg_sm4() {
        // draft-ribose-cfrg-sm4-10, A.2.5.1 / A.2.5.2 (OpenSSL-compatible CTR).
        let pt = hex(concat!(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd",
            "eeeeeeeeeeeeeeeeffffffffffffffffaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb"
        ));
        let iv = u128::from_str_radix("000102030405060708090a0b0c0d0e0f", 16).expect("hex");
        let cases = [
            (
                "0123456789abcdeffedcba9876543210",
                concat!(
                    "ac3236cb970cc20791364c395a1342d1a3cbc1878c6f30cd074cce385cdd70c7",
                    "f234bc0e24c11980fd1286310ce37b926e02fcd0faa0baf38b2933851d824514"
                ),
            ),
            (
                "fedcba98765432100123456789abcdef",
                concat!(
                    "5dcccd25b95ab07417a08512ee160e2f8f661521cbbab44cc87138445bc29e5c",
                    "0ae0297205d62704173b21239b887f6c8cb5b800917a2488284bde9e16ea2906"
                ),
            ),
        ];
        for (key, ct) in cases {
            let key: [u8; 16] = hex(key).try_into().expect("16-byte key");
            let ks = Sm4Keystream::new(&key);
            for portable in [false, true] {
                let mut stream = vec![0u8; pt.len()];
                if portable {
                    ks.keystream_portable(iv, &mut stream);
                } else {
                    ks.keystream(iv, &mut stream);
                }
                let got: Vec<u8> = pt.iter().zip(&stream).map(|(p, k)| p ^ k).collect();
                assert_eq!(got, hex(ct), "portable = {portable}");
            }
        }
    }

    #[test]
    fn keystream_matches_reference() {
        let mut rng = seeded();
        let lens = [
            0usize,
            16,
            48,
            80,
            16 * 15,
            16 * 17,
            16 * 31,
            16 * 33,
            4096 + 16 * 7,
        ];
        let specials = [
            0u128,
            u128::from(u32::MAX) - 3,
            u128::from(u64::MAX) - 5,
            (u128::from(u64::MAX) << 32) | 0xFFFF_FFF0,
            u128::MAX - 9,
            u128::MAX,
        ];
        for round in 0..24 {
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            let ks = Sm4Keystream::new(&key);
            let counter = if round < specials.len() {
                specials[round]
            } else {
                rng.random()
            };
            for &len in &lens {
                let want = reference(&key, counter, len);
                let mut fast = vec![0u8; len];
                ks.keystream(counter, &mut fast);
                let mut port = vec![0u8; len];
                ks.keystream_portable(counter, &mut port);
                assert_eq!(port, want, "portable, counter {counter:#x}, len {len}");
                let mut table = vec![0u8; len];
                ks.keystream_table(counter, &mut table);
                assert_eq!(table, want, "table, counter {counter:#x}, len {len}");
                assert_eq!(fast, want, "dispatch, counter {counter:#x}, len {len}");
            }
        }
    }

    #[test]
    fn keystream_large_buffer() {
        let mut rng = seeded();
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        let ks = Sm4Keystream::new(&key);
        // Cross 2^64 in the middle of the buffer.
        let counter = u128::from(u64::MAX) - 1000 + u128::from(rng.random_range(0u32..100));
        let len = (1 << 20) + 48;
        let want = reference(&key, counter, len);
        let mut fast = vec![0u8; len];
        ks.keystream(counter, &mut fast);
        let mut port = vec![0u8; len];
        ks.keystream_portable(counter, &mut port);
        assert!(port == want, "portable keystream differs from reference");
        assert!(fast == want, "dispatched keystream differs from reference");
    }

    #[test]
    fn keystream_ignores_partial_tail_in_release() {
        if cfg!(debug_assertions) {
            return;
        }
        let ks = Sm4Keystream::new(&GB_KEY);
        let mut out = [0xAAu8; 37];
        ks.keystream(5, &mut out);
        assert_eq!(out[..32], reference(&GB_KEY, 5, 32)[..]);
        assert_eq!(out[32..], [0xAA; 5]);
    }

    #[test]
    fn debug_hides_key_material() {
        let ks = Sm4Keystream::new(&GB_KEY);
        let s = format!("{ks:?}");
        assert!(s.starts_with("Sm4Keystream"));
        assert!(!s.to_lowercase().contains(&format!("{:x}", ks.rk[0])));
        assert!(!s.contains(&ks.rk[0].to_string()));
    }
}
