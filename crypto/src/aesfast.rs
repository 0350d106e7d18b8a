//! A fast AES-128 CTR-mode keystream (the mask PRG of the international suite).
//!
//! # Why not just the `aes` crate?
//!
//! The RustCrypto `aes` crate detects AES-NI/VAES at run time, but its
//! generic block-processing closure is not inlined into the target-feature
//! context, so its wide paths run far below what the hardware does. The
//! kernels in [`crate::simd`] are whole CTR loops compiled for VAES +
//! AVX-512 (4 blocks per register, 32 blocks in flight), VAES + AVX2 or
//! AES-NI and are picked once at run time; the `aes` crate remains the
//! portable fallback and the reference the tests compare against.
//!
//! # CTR counter convention
//!
//! Counter block number `i` is the 16-byte **big-endian** encoding of
//! `counter + i` (wrapping mod 2^128), and keystream block `i` is its AES-128
//! encryption. This is exactly OpenSSL's `-aes-128-ctr` (and NIST SP 800-38A's
//! full-width increment) with `IV = counter.to_be_bytes()`; e.g. an all-zero
//! IV is `counter = 0`.
//!
//! # Key schedule
//!
//! The 11 round keys are expanded here (FIPS-197 §5.2) with an S-box that is
//! *computed* — inversion in GF(2⁸) by a fixed square-and-multiply chain, then
//! the affine map — rather than looked up, so the key schedule has no
//! key-dependent memory access or branches either.

use core::fmt;

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use zeroize::Zeroize;

use crate::simd;
pub use crate::simd::AesBackend;

/// Expanded AES-128 encryption round keys, in FIPS-197 byte order.
pub(crate) type RoundKeys = [[u8; 16]; 11];

/// Multiplication in GF(2⁸) modulo x⁸ + x⁴ + x³ + x + 1, branch-free.
const fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    let mut i = 0;
    while i < 8 {
        r ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1B & carry);
        b >>= 1;
        i += 1;
    }
    r
}

/// The AES S-box, computed: `x²⁵⁴` (the inverse, with 0 ↦ 0) followed by the
/// affine map `b ⊕ (b <<< 1) ⊕ (b <<< 2) ⊕ (b <<< 3) ⊕ (b <<< 4) ⊕ 0x63`.
const fn sub_byte(x: u8) -> u8 {
    // 254 = 0b1111_1110; the exponent is public, so the chain is fixed.
    let mut r = 1u8;
    let mut bit = 8;
    while bit > 0 {
        bit -= 1;
        r = gmul(r, r);
        if (254u32 >> bit) & 1 == 1 {
            r = gmul(r, x);
        }
    }
    r ^ r.rotate_left(1) ^ r.rotate_left(2) ^ r.rotate_left(3) ^ r.rotate_left(4) ^ 0x63
}

/// FIPS-197 §5.2 key expansion for a 128-bit key.
fn expand_key(key: &[u8; 16]) -> RoundKeys {
    let mut w = [[0u8; 4]; 44];
    for (i, word) in w.iter_mut().take(4).enumerate() {
        word.copy_from_slice(&key[4 * i..4 * i + 4]);
    }
    let mut rcon = 1u8;
    for i in 4..44 {
        let mut t = w[i - 1];
        if i % 4 == 0 {
            // SubWord(RotWord(t)) ⊕ Rcon[i / 4]
            t = [
                sub_byte(t[1]) ^ rcon,
                sub_byte(t[2]),
                sub_byte(t[3]),
                sub_byte(t[0]),
            ];
            rcon = gmul(rcon, 2);
        }
        for (j, b) in t.iter().enumerate() {
            w[i][j] = w[i - 4][j] ^ b;
        }
    }
    let mut rk = [[0u8; 16]; 11];
    for (r, k) in rk.iter_mut().enumerate() {
        for (c, word) in w[4 * r..4 * r + 4].iter().enumerate() {
            k[4 * c..4 * c + 4].copy_from_slice(word);
        }
    }
    w.zeroize();
    rk
}

/// Counter blocks per `encrypt_blocks` call on the portable path (keeps the
/// working set in L1 while giving the crate's parallel paths enough blocks).
const PORTABLE_BLOCKS: usize = 64;

/// AES-128 CTR keystream generator for one key.
#[derive(Clone)]
pub struct AesKeystream {
    rk: RoundKeys,
    /// Portable path (zeroizes its own key schedule on drop).
    cipher: aes::Aes128,
}

impl AesKeystream {
    /// Expands `key` into the AES-128 encryption round keys.
    pub fn new(key: &[u8; 16]) -> Self {
        Self {
            rk: expand_key(key),
            cipher: aes::Aes128::new(&(*key).into()),
        }
    }

    /// Fill `out` with the CTR keystream for counter blocks `counter,
    /// counter + 1, ...` (128-bit big-endian, wrapping mod 2^128): OpenSSL
    /// `-aes-128-ctr` with `IV = counter.to_be_bytes()`.
    ///
    /// `out.len()` must be a multiple of 16; only whole blocks are written
    /// (a trailing partial block is left untouched, and debug builds assert).
    /// Uses the fastest implementation this CPU supports, detected once.
    pub fn keystream(&self, counter: u128, out: &mut [u8]) {
        self.keystream_with(AesBackend::detect(), counter, out);
    }

    /// Same as [`Self::keystream`], forced onto the portable path (the
    /// `aes` crate's `encrypt_blocks` over laid-out counter blocks).
    pub fn keystream_portable(&self, counter: u128, out: &mut [u8]) {
        debug_assert!(
            out.len().is_multiple_of(16),
            "keystream length must be whole blocks"
        );
        let (blocks, _) = aes::Block::slice_as_chunks_mut(out);
        let mut ctr = counter;
        for chunk in blocks.chunks_mut(PORTABLE_BLOCKS) {
            for b in chunk.iter_mut() {
                *b = ctr.to_be_bytes().into();
                ctr = ctr.wrapping_add(1);
            }
            self.cipher.encrypt_blocks(chunk);
        }
    }

    /// Same as [`Self::keystream`] with an explicit implementation (for tests
    /// and benchmarks). If `backend` is not supported by this CPU the portable
    /// path is used instead; the backend actually used is returned.
    pub fn keystream_with(&self, backend: AesBackend, counter: u128, out: &mut [u8]) -> AesBackend {
        debug_assert!(
            out.len().is_multiple_of(16),
            "keystream length must be whole blocks"
        );
        let whole = out.len() - out.len() % 16;
        let out = &mut out[..whole];
        if simd::aes_keystream(backend, &self.rk, counter, out) {
            backend
        } else {
            self.keystream_portable(counter, out);
            AesBackend::Portable
        }
    }
}

impl Drop for AesKeystream {
    fn drop(&mut self) {
        self.rk.zeroize();
    }
}

impl fmt::Debug for AesKeystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print round keys: they are equivalent to the key.
        f.debug_struct("AesKeystream")
            .field("backend", &AesBackend::detect())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngExt, SeedableRng};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex"))
            .collect()
    }

    fn key(s: &str) -> [u8; 16] {
        hex(s).try_into().expect("16-byte key")
    }

    /// Reference CTR keystream from the `aes` crate, one block at a time.
    fn reference(key: &[u8; 16], counter: u128, len: usize) -> Vec<u8> {
        let cipher = aes::Aes128::new(&(*key).into());
        let mut out = Vec::with_capacity(len);
        for i in 0..len / 16 {
            let mut block = counter.wrapping_add(i as u128).to_be_bytes().into();
            cipher.encrypt_block(&mut block);
            out.extend_from_slice(&block);
        }
        out
    }

    /// Every backend this CPU runs (the portable one included).
    fn supported() -> Vec<AesBackend> {
        AesBackend::ALL
            .into_iter()
            .filter(|b| b.is_supported())
            .collect()
    }

    fn seeded() -> StdRng {
        let seed: u64 = rand::rng().random();
        println!("rng seed = {seed:#x}");
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn sbox_spot_values_and_bijective() {
        // FIPS-197 Figure 7.
        for (x, s) in [
            (0x00, 0x63),
            (0x01, 0x7C),
            (0x53, 0xED),
            (0xFF, 0x16),
            (0x9A, 0xB8),
        ] {
            assert_eq!(sub_byte(x), s, "S({x:#04x})");
        }
        let mut seen = [false; 256];
        for x in 0..=255u8 {
            seen[usize::from(sub_byte(x))] = true;
        }
        assert!(seen.iter().all(|&b| b));
    }

    #[test]
    fn key_expansion_fips197_a1() {
        let rk = expand_key(&key("2b7e151628aed2a6abf7158809cf4f3c"));
        let want = hex(concat!(
            "2b7e151628aed2a6abf7158809cf4f3c",
            "a0fafe1788542cb123a339392a6c7605",
            "f2c295f27a96b9435935807a7359f67f",
            "3d80477d4716fe3e1e237e446d7a883b",
            "ef44a541a8525b7fb671253bdb0bad00",
            "d4d1c6f87c839d87caf2b8bc11f915bc",
            "6d88a37a110b3efddbf98641ca0093fd",
            "4e54f70e5f5fc9f384a64fb24ea6dc4f",
            "ead27321b58dbad2312bf5607f8d292f",
            "ac7766f319fadc2128d12941575c006e",
            "d014f9a8c9ee2589e13f0cc8b6630ca6",
        ));
        assert_eq!(rk.concat(), want);
    }

    #[test]
    fn fips197_c1_block_every_backend() {
        // E_k(p) is keystream block 0 for counter = p.
        let ks = AesKeystream::new(&key("000102030405060708090a0b0c0d0e0f"));
        let pt = u128::from_str_radix("00112233445566778899aabbccddeeff", 16).expect("hex");
        for backend in supported() {
            let mut out = [0u8; 16];
            assert_eq!(ks.keystream_with(backend, pt, &mut out), backend);
            assert_eq!(
                out.to_vec(),
                hex("69c4e0d86a7b0430d8cdb78070b4c55a"),
                "{backend:?}"
            );
        }
    }

    #[test]
    fn sp800_38a_f51_ctr_aes128_every_backend() {
        let ks = AesKeystream::new(&key("2b7e151628aed2a6abf7158809cf4f3c"));
        let counter = u128::from_str_radix("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", 16).expect("hex");
        let pt = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
        ));
        let ct = hex(concat!(
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff",
            "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"
        ));
        for backend in supported() {
            let mut stream = vec![0u8; pt.len()];
            ks.keystream_with(backend, counter, &mut stream);
            let got: Vec<u8> = pt.iter().zip(&stream).map(|(p, k)| p ^ k).collect();
            assert_eq!(got, ct, "{backend:?}");
        }
        let mut stream = vec![0u8; pt.len()];
        ks.keystream(counter, &mut stream);
        let got: Vec<u8> = pt.iter().zip(&stream).map(|(p, k)| p ^ k).collect();
        assert_eq!(got, ct, "dispatch");
    }

    #[test]
    fn openssl_pin_counter_zero() {
        // openssl enc -aes-128-ctr -K 000102..0f -iv 00..00 on 64 zero bytes.
        let ks = AesKeystream::new(&key("000102030405060708090a0b0c0d0e0f"));
        let want = hex(concat!(
            "c6a13b37878f5b826f4f8162a1c8d8797346139595c0b41e497bbde365f42d0a",
            "49d68753999ba68ce3897a686081b09db9ad2b2e346ac238505d365e9cb7fc56"
        ));
        for backend in supported() {
            let mut out = [0u8; 64];
            ks.keystream_with(backend, 0, &mut out);
            assert_eq!(out.to_vec(), want, "{backend:?}");
        }
        let mut out = [0u8; 64];
        ks.keystream(0, &mut out);
        assert_eq!(out.to_vec(), want, "dispatch");
    }

    #[test]
    fn every_backend_matches_portable_and_reference() {
        let mut rng = seeded();
        let lens = [
            0usize,
            16,
            32,
            48,
            64,
            112,
            128,
            240,
            256,
            272,
            16 * 31,
            512,
            16 * 33,
            16 * 63,
            16 * 100 + 48,
        ];
        let specials = [
            0u128,
            u128::from(u32::MAX) - 3,
            u128::from(u32::MAX) - 40,
            u128::from(u64::MAX) - 5,
            u128::from(u64::MAX) - 70,
            (u128::from(u64::MAX) << 64) | (u128::from(u64::MAX) - 17),
            (u128::from(u32::MAX) << 32) | 0xFFFF_FFF0,
            u128::MAX - 9,
            u128::MAX - 100,
            u128::MAX,
        ];
        let backends = supported();
        println!("backends: {backends:?}");
        for round in 0..32 {
            let mut k = [0u8; 16];
            rng.fill_bytes(&mut k);
            let ks = AesKeystream::new(&k);
            let counter = specials.get(round).copied().unwrap_or_else(|| rng.random());
            for &len in &lens {
                let want = reference(&k, counter, len);
                let mut port = vec![0u8; len];
                ks.keystream_portable(counter, &mut port);
                assert!(port == want, "portable counter {counter:#x} len {len}");
                for &backend in &backends {
                    let mut got = vec![0x55u8; len];
                    assert_eq!(ks.keystream_with(backend, counter, &mut got), backend);
                    assert!(got == want, "{backend:?} counter {counter:#x} len {len}");
                }
                let mut fast = vec![0u8; len];
                ks.keystream(counter, &mut fast);
                assert!(fast == want, "dispatch counter {counter:#x} len {len}");
            }
        }
    }

    #[test]
    fn large_buffer_crossing_2_64_and_2_128() {
        let mut rng = seeded();
        let mut k = [0u8; 16];
        rng.fill_bytes(&mut k);
        let ks = AesKeystream::new(&k);
        let len = (1 << 20) + 48;
        let jitter = u128::from(rng.random_range(0u32..100));
        let counters = [
            u128::from(u64::MAX) - 1000 + jitter,
            u128::MAX - 30_000 - jitter,
            u128::from(u32::MAX) - 5000 - jitter,
            rng.random(),
        ];
        for counter in counters {
            let mut want = vec![0u8; len];
            ks.keystream_portable(counter, &mut want);
            for backend in supported() {
                let mut got = vec![0u8; len];
                ks.keystream_with(backend, counter, &mut got);
                assert!(got == want, "{backend:?} counter {counter:#x}");
            }
        }
        // The portable path itself against the block-by-block reference once.
        let counter = counters[0];
        let mut port = vec![0u8; len];
        ks.keystream_portable(counter, &mut port);
        assert!(port == reference(&k, counter, len));
    }

    #[test]
    fn unsupported_or_portable_falls_back() {
        let ks = AesKeystream::new(&[7u8; 16]);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        assert_eq!(
            ks.keystream_with(AesBackend::Portable, 3, &mut a),
            AesBackend::Portable
        );
        ks.keystream_portable(3, &mut b);
        assert_eq!(a, b);
        for backend in AesBackend::ALL {
            let used = ks.keystream_with(backend, 3, &mut a);
            assert_eq!(used == backend, backend.is_supported());
            assert_eq!(a, b);
        }
        println!("detected: {:?}", AesBackend::detect());
    }

    #[test]
    fn keystream_ignores_partial_tail_in_release() {
        if cfg!(debug_assertions) {
            return;
        }
        let k = [9u8; 16];
        let ks = AesKeystream::new(&k);
        for backend in AesBackend::ALL {
            let mut out = [0xAAu8; 37];
            ks.keystream_with(backend, 5, &mut out);
            assert_eq!(out[..32], reference(&k, 5, 32)[..], "{backend:?}");
            assert_eq!(out[32..], [0xAA; 5], "{backend:?}");
        }
    }

    #[test]
    fn debug_hides_key_material() {
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        let ks = AesKeystream::new(&k);
        let s = format!("{ks:?}");
        assert!(s.starts_with("AesKeystream"));
        assert!(!s.to_lowercase().contains("2b7e"));
        assert!(!s.contains("43"), "no decimal key bytes: {s}");
    }
}
