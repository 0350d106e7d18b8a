use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use sm4::cipher::{BlockCipherDecrypt, BlockCipherEncrypt};

use super::*;
use crate::simd::Backend;
use crate::sm4fast::{SBOX, Sm4Keystream};
use crate::suite::Suite;

const GB_KEY: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
];

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex"))
        .collect()
}

fn seeded() -> StdRng {
    let seed: u64 = rand::rng().random();
    println!("rng seed = {seed:#x}");
    StdRng::seed_from_u64(seed)
}

fn random_key(rng: &mut StdRng) -> [u8; 16] {
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);
    key
}

/// CTR keystream from the RustCrypto `sm4` crate, block by block.
fn reference(key: &[u8; 16], counter: u128, blocks: usize) -> Vec<u8> {
    let cipher = <sm4::Sm4 as KeyInit>::new(&(*key).into());
    let mut out = Vec::with_capacity(16 * blocks);
    for i in 0..blocks {
        let mut block = counter.wrapping_add(i as u128).to_be_bytes().into();
        cipher.encrypt_block(&mut block);
        out.extend_from_slice(&block);
    }
    out
}

#[test]
fn sbox_circuit_matches_table() {
    // Four calls of 64 instances: lane k of call n computes
    // S((64n + k) ⊕ K0 ⊕ K0) ⊕ c = S(64n + k) ⊕ c.
    for n in 0..4u8 {
        let planes: [u64; 8] = core::array::from_fn(|i| {
            (0..64u8).fold(0, |acc, k| {
                let x = (64 * n + k) ^ circuit::K0;
                acc | (u64::from((x >> i) & 1) << k)
            })
        });
        let out = circuit::sbox(planes);
        for k in 0..64u8 {
            let y = (0..8).fold(0u8, |acc, i| acc | ((((out[i] >> k) & 1) as u8) << i));
            let x = 64 * n + k;
            assert_eq!(y ^ circuit::C, SBOX[usize::from(x)], "S({x:#04x})");
        }
    }
}

#[test]
fn tau_matches_table_in_every_byte() {
    for v in 0..=255u8 {
        for pos in 0..4 {
            let filler = 0x5A17_C3E9u32;
            let w = (filler & !(0xFF << (8 * pos))) | (u32::from(v) << (8 * pos));
            let want = u32::from_be_bytes(w.to_be_bytes().map(|b| SBOX[usize::from(b)]));
            assert_eq!(tau(w), want, "word {w:#010x}");
        }
    }
}

#[test]
fn transpose_swaps_rows_and_columns_and_is_an_involution() {
    let mut rng = seeded();
    let orig: [[u64; 32]; 2] = core::array::from_fn(|_| core::array::from_fn(|_| rng.random()));
    let row = |m: &[[u64; 32]; 2], r: usize| m[r / 32][r % 32];
    let mut m = orig;
    let [a, b] = &mut m;
    transpose(a, b);
    for r in 0..64 {
        for c in 0..64 {
            assert_eq!((row(&m, r) >> c) & 1, (row(&orig, c) >> r) & 1);
        }
    }
    let [a, b] = &mut m;
    transpose(a, b);
    assert_eq!(m, orig);
}

#[test]
fn sliced_keys_offsets_vanish_after_32_rounds() {
    // The offsets cancel only if rounds come in an even number of groups.
    assert_eq!(CK.len() % 8, 0);
    let rk = [0u32; 32];
    let sk = sliced_keys(&rk);
    let k0 = splat_byte(circuit::K0);
    let lc = l(splat_byte(circuit::C));
    // Round 0 reads E[1..4] = 0; round 3 reads E[4..7] = lc three times.
    assert_eq!(sk[0], k0);
    assert_eq!(sk[3], k0 ^ lc);
    assert_eq!(sk[31], k0);
}

#[test]
fn gbt_32907_appendix_a1_every_path() {
    let want = hex("681edf34d206965e86b3e94f536e4246");
    let mut block = GB_KEY;
    encrypt_block(&expand_key(&GB_KEY), &mut block);
    assert_eq!(block.to_vec(), want);
    decrypt_block(&expand_key(&GB_KEY), &mut block);
    assert_eq!(block, GB_KEY);

    let mut blocks = [GB_KEY; 3];
    crypt_blocks(&sliced_keys(&expand_key(&GB_KEY)), &mut blocks);
    assert!(blocks.iter().all(|b| b[..] == want[..]));

    let cipher = <Sm4 as KeyInit>::new(&GB_KEY.into());
    let mut b = GB_KEY.into();
    cipher.encrypt_block(&mut b);
    assert_eq!(b[..], want[..]);
    cipher.decrypt_block(&mut b);
    assert_eq!(b[..], GB_KEY[..]);
}

/// GB/T 32907-2016 A.2 through the bitsliced batch: 64 chains encrypted a
/// million times each; chain 0 is the standard's. (The one-block path runs
/// the same vector in `sm4fast` and `tests/kat.rs` on every test run.)
#[test]
#[ignore = "several seconds (4.6 s in release on 2 EPYC cores); run with --release -- --ignored"]
fn gbt_32907_appendix_a2_million_bitsliced() {
    let mut rng = seeded();
    let sk = sliced_keys(&expand_key(&GB_KEY));
    let mut blocks: [[u8; 16]; 64] = core::array::from_fn(|_| random_key(&mut rng));
    blocks[0] = GB_KEY;
    let start = blocks;
    for _ in 0..1_000_000 {
        crypt_blocks(&sk, &mut blocks);
    }
    assert_eq!(blocks[0].to_vec(), hex("595298c7c6fd271f0402f804c33d3f66"));
    // Another chain against the one-block path, 1000 steps from its start.
    let mut one = start[17];
    let mut many = [start[17]];
    for _ in 0..1000 {
        encrypt_block(&expand_key(&GB_KEY), &mut one);
        crypt_blocks(&sk, &mut many);
    }
    assert_eq!(one, many[0]);
}

#[test]
fn key_schedule_and_blocks_match_sm4_crate() {
    let mut rng = seeded();
    for _ in 0..200 {
        let key = random_key(&mut rng);
        let theirs = <sm4::Sm4 as KeyInit>::new(&key.into());
        let ours = <Sm4 as KeyInit>::new(&key.into());
        let pt = random_key(&mut rng);
        let (mut a, mut b) = (pt.into(), pt.into());
        theirs.encrypt_block(&mut a);
        ours.encrypt_block(&mut b);
        assert_eq!(a, b, "key {key:02x?}");
        ours.decrypt_block(&mut b);
        assert_eq!(b[..], pt[..]);
    }
    // Runs of blocks take the 64-block parallel path, with a ragged tail.
    let key = random_key(&mut rng);
    let theirs = <sm4::Sm4 as KeyInit>::new(&key.into());
    let ours = <Sm4 as KeyInit>::new(&key.into());
    for n in [1usize, 63, 64, 65, 130, 200] {
        let mut a = vec![sm4::cipher::Block::<sm4::Sm4>::default(); n];
        for blk in a.iter_mut() {
            rng.fill_bytes(blk);
        }
        let mut b = a.clone();
        let pt = a.clone();
        theirs.encrypt_blocks(&mut a);
        ours.encrypt_blocks(&mut b);
        assert_eq!(a, b, "{n} blocks");
        ours.decrypt_blocks(&mut b);
        assert_eq!(b, pt, "{n} blocks round trip");
    }
}

#[test]
fn keystream_paths_agree() {
    let mut rng = seeded();
    let block_counts = [
        0usize,
        1,
        3,
        17,
        63,
        64,
        65,
        BATCH - 1,
        BATCH,
        BATCH + 1,
        2 * BATCH + 37,
        1000,
    ];
    let specials = [
        0u128,
        u128::from(u32::MAX) - 7,
        u128::from(u64::MAX) - 100,
        u128::from(u64::MAX),
        (u128::from(u64::MAX) << 32) | 0xFFFF_FFF0,
        u128::MAX - 300,
        u128::MAX,
        // Aligned batches (no transpose on the way in), up to the wraps.
        (1u128 << 64) - 3 * BATCH as u128,
        u128::MAX - (BATCH as u128 - 1),
        u128::MAX - (2 * BATCH as u128 - 1),
        512,
    ];
    for round in 0..24 {
        let key = random_key(&mut rng);
        let ks = Sm4Keystream::new(&key);
        let counter = match specials.get(round) {
            Some(&c) => c,
            None if round % 2 == 0 => rng.random::<u128>() & !(BATCH as u128 - 1),
            None => rng.random(),
        };
        for &n in &block_counts {
            let mut table = vec![0u8; 16 * n];
            ks.keystream_table(counter, &mut table);
            let mut ct = vec![0u8; 16 * n];
            keystream(&expand_key(&key), counter, &mut ct);
            assert!(
                ct == table,
                "constant-time vs table, ctr {counter:#x}, {n} blocks"
            );
            for backend in Backend::ALL {
                let mut got = vec![0x33u8; 16 * n];
                ks.keystream_with(backend, counter, &mut got);
                assert!(got == table, "{backend:?}, ctr {counter:#x}, {n} blocks");
            }
        }
    }
    // Counter wrap against the independent `sm4` crate as well.
    let mut v = vec![0u8; 16 * 70];
    keystream(&expand_key(&GB_KEY), u128::MAX - 30, &mut v);
    assert!(v == reference(&GB_KEY, u128::MAX - 30, 70));
}

#[test]
fn keystream_leaves_partial_tail_alone() {
    let mut out = [0xAAu8; 16 * 5 + 9];
    keystream(&expand_key(&GB_KEY), 5, &mut out);
    assert_eq!(out[..80], reference(&GB_KEY, 5, 5)[..]);
    assert_eq!(out[80..], [0xAA; 9]);
}

type OldSm4Gcm = aes_gcm::AesGcm<sm4::Sm4, U12>;
type NewSm4Gcm = aes_gcm::AesGcm<Sm4, U12>;

#[test]
fn sm4_gcm_matches_sm4_crate_and_known_answers() {
    let p = Suite::Gm.provider();
    // Computed with the previous `AesGcm<sm4::Sm4, U12>` before the switch.
    let key: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(17) ^ 0xA5);
    let nonce: [u8; 12] = core::array::from_fn(|i| 0xF0 ^ i as u8);
    let aad = b"confide share aad";
    let pt: Vec<u8> = (0..77u32).map(|i| (i * 7 + 3) as u8).collect();
    let sealed = p.seal(&key, &nonce, aad, &pt).expect("seal");
    assert_eq!(
        sealed,
        hex(concat!(
            "8bb7129bb86d372a05d4e7566450273f40b21a778ce6890303e2abdfd1eb5eb8",
            "a8fad403bed2e9150e6681d764daf6737f70393cec27e27878d74eb15bae0695",
            "a35c1512b7439823cab6c62e867c04b3a82a7172cea28ac66a4dc8cce1"
        ))
    );
    assert_eq!(*p.open(&key, &nonce, aad, &sealed).expect("open"), pt);
    let big: Vec<u8> = (0..1500u32).map(|i| (i * 13 + 1) as u8).collect();
    let sealed = p.seal(&key, &nonce, aad, &big).expect("seal");
    assert_eq!(sealed[1500..], hex("e8ac37834a0b536c9e62144da08b1aa0")[..]);

    let mut rng = seeded();
    for len in [
        0usize,
        1,
        15,
        16,
        17,
        33,
        77,
        1023,
        1024,
        1025,
        1500,
        4096 + 5,
    ] {
        let key = random_key(&mut rng);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let mut msg = vec![0u8; len];
        rng.fill_bytes(&mut msg);
        let aad = [len as u8; 5];
        let payload = || Payload {
            msg: &msg,
            aad: &aad,
        };
        let old = OldSm4Gcm::new(&key.into())
            .encrypt(&nonce.into(), payload())
            .expect("old seal");
        let new = NewSm4Gcm::new(&key.into())
            .encrypt(&nonce.into(), payload())
            .expect("new seal");
        assert!(old == new, "len {len}");
        assert_eq!(p.seal(&key, &nonce, &aad, &msg).expect("seal"), new);
        assert_eq!(*p.open(&key, &nonce, &aad, &new).expect("open"), msg);
        let mut bad = new.clone();
        bad[len / 2] ^= 0x80;
        assert!(p.open(&key, &nonce, &aad, &bad).is_err(), "len {len}");
    }
}

#[test]
fn debug_hides_round_keys() {
    let cipher = <Sm4 as KeyInit>::new(&GB_KEY.into());
    let s = format!("{cipher:?}");
    let rk = expand_key(&GB_KEY);
    assert!(!s.to_lowercase().contains(&format!("{:x}", rk[0])));
    assert!(!s.contains(&rk[0].to_string()));
}
