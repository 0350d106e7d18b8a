use elliptic_curve::Field;
use elliptic_curve::ff::PrimeField;
use elliptic_curve::sec1::ToSec1Point;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sm2::dsa::signature::{Signer, Verifier};
use sm2::{Scalar, SecretKey};

use super::*;

/// The `sm2` crate's own verification: the reference.
fn reference(public: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    let Ok(vk) = sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DIST_ID, public) else {
        return false;
    };
    let Ok(sig) = sm2::dsa::Signature::from_slice(signature) else {
        return false;
    };
    vk.verify(msg, &sig).is_ok()
}

fn key(seed: u64) -> (SecretKey, Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sk = loop {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        if let Ok(sk) = SecretKey::from_slice(&b) {
            break sk;
        }
    };
    let public = sk.public_key().to_sec1_point(false).as_bytes().to_vec();
    (sk, public)
}

fn sign(sk: &SecretKey, msg: &[u8]) -> Vec<u8> {
    let signer = sm2::dsa::SigningKey::new(SM2_DIST_ID, sk).expect("signing key");
    let sig: sm2::dsa::Signature = signer.sign(msg);
    sig.to_bytes().to_vec()
}

fn agree(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let ours = verify(public, msg, sig).is_ok();
    assert_eq!(
        ours,
        reference(public, msg, sig),
        "key {public:02x?} sig {sig:02x?}"
    );
    ours
}

#[test]
fn valid_signatures_verify_as_the_crate_verifies_them() {
    for seed in 0..16u64 {
        let (sk, public) = key(seed);
        for msg in [&b""[..], b"abc", &[7u8; 1000][..]] {
            let sig = sign(&sk, msg);
            assert!(agree_every_way(&public, msg, &sig));
        }
    }
}

#[test]
fn another_key_or_message_is_refused() {
    let (sk, public) = key(1);
    let (_, other) = key(2);
    let sig = sign(&sk, b"survivors");
    assert!(!agree(&other, b"survivors", &sig));
    assert!(!agree(&public, b"survivorz", &sig));
    assert!(agree(&public, b"survivors", &sig));
}

#[test]
fn malformed_signatures_and_keys_are_refused() {
    let (sk, public) = key(3);
    let sig = sign(&sk, b"m");
    // Wrong lengths.
    assert!(!agree(&public, b"m", &sig[..63]));
    assert!(!agree(&public, b"m", &[sig.clone(), vec![0]].concat()));
    // r = 0, s = 0, r ≥ n.
    let mut zero_r = sig.clone();
    zero_r[..32].fill(0);
    assert!(!agree(&public, b"m", &zero_r));
    let mut zero_s = sig.clone();
    zero_s[32..].fill(0);
    assert!(!agree(&public, b"m", &zero_s));
    let mut big_r = sig.clone();
    big_r[..32].fill(0xff);
    assert!(!agree(&public, b"m", &big_r));
    // r + s = n (t = 0).
    let r = sig[..32].to_vec();
    let r_scalar = Option::<Scalar>::from(Scalar::from_repr(
        sm2::FieldBytes::try_from(&r[..]).expect("32 bytes"),
    ))
    .expect("r < n");
    let s = (-r_scalar).to_bytes();
    assert!(!agree(&public, b"m", &[r, s.to_vec()].concat()));
    // Keys: off the curve, the identity, truncated; the compressed form of
    // a good key is read as the crate reads it.
    let mut off = public.clone();
    off[64] ^= 1;
    assert!(!agree_every_way(&off, b"m", &sig));
    assert!(!agree_every_way(&[0u8], b"m", &sig));
    assert!(!agree_every_way(&public[..40], b"m", &sig));
    let compressed = sk.public_key().to_sec1_point(true).as_bytes().to_vec();
    assert!(agree_every_way(&compressed, b"m", &sig));
}

#[test]
fn a_random_scalar_pair_is_refused() {
    let (_, public) = key(4);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for _ in 0..8 {
        let r = Scalar::random(&mut rng).to_bytes();
        let s = Scalar::random(&mut rng).to_bytes();
        assert!(!agree(&public, b"m", &[r.to_vec(), s.to_vec()].concat()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any one bit flipped in the message, the signature or the key: the
    /// same answer as the crate's.
    #[test]
    fn one_flipped_bit_gets_the_crates_answer(
        seed in any::<u64>(),
        msg in proptest::collection::vec(any::<u8>(), 0..200),
        which in 0usize..3,
        bit in any::<usize>(),
    ) {
        let (sk, mut public) = key(seed);
        let mut sig = sign(&sk, &msg);
        let mut msg = msg;
        match which {
            0 if !msg.is_empty() => { let i = bit % (msg.len() * 8); msg[i / 8] ^= 1 << (i % 8); }
            1 => { let i = bit % 512; sig[i / 8] ^= 1 << (i % 8); }
            _ => { let i = 8 + bit % 512; public[i / 8] ^= 1 << (i % 8); }
        }
        let ours = agree_every_way(&public, &msg, &sig);
        prop_assert_eq!(ours, reference(&public, &msg, &sig));
    }
}

/// The same check through a key with a table and one without, and as part
/// of a set: all must give the crate's answer.
fn agree_every_way(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let ours = agree(public, msg, sig);
    for with_table in [false, true] {
        let by_key = KeyData::new(public, with_table)
            .and_then(|key| prepare(&key, msg, sig))
            .and_then(|p| p.finish(&p.point.to_affine()))
            .is_ok();
        assert_eq!(by_key, ours, "with_table {with_table}");
    }
    assert_eq!(verify_each(&[(public, msg, sig)]), vec![ours]);
    ours
}

#[test]
fn a_key_with_a_table_multiplies_as_the_crate_does() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let minus_one = -Scalar::ONE;
    // 0x88… and 0x77… put every radix-16 digit at the ends of [−8, 8].
    let edges = [
        Scalar::ZERO,
        Scalar::ONE,
        minus_one,
        Scalar::reduce(&sm2::FieldBytes::from([0x88; 32])),
        Scalar::reduce(&sm2::FieldBytes::from([0x77; 32])),
    ];
    for seed in 0..4u64 {
        let (_, public) = key(100 + seed);
        let plain = KeyData::new(&public, false).expect("key");
        let tabled = KeyData::new(&public, true).expect("key");
        assert!(plain.table.is_none() && tabled.table.is_some());
        let mut pairs: Vec<(Scalar, Scalar)> = edges
            .iter()
            .flat_map(|&s| edges.iter().map(move |&t| (s, t)))
            .collect();
        pairs.extend((0..16).map(|_| (Scalar::random(&mut rng), Scalar::random(&mut rng))));
        for (s, t) in pairs {
            assert_eq!(
                tabled.mul_add(&s, &t).to_affine(),
                plain.mul_add(&s, &t).to_affine()
            );
        }
    }
}

#[test]
fn a_set_is_checked_signature_by_signature() {
    let keys: Vec<_> = (0..5u64).map(|s| key(200 + s)).collect();
    let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
    let sigs: Vec<Vec<u8>> = keys
        .iter()
        .zip(&msgs)
        .map(|((sk, _), m)| sign(sk, m))
        .collect();
    let mut bad_sig = sigs[2].clone();
    bad_sig[40] ^= 4;
    let mut zero_r = sigs[1].clone();
    zero_r[..32].fill(0);
    let bad_key = vec![4u8; 65];
    let items: Vec<(&[u8], &[u8], &[u8])> = vec![
        (&keys[0].1, &msgs[0], &sigs[0]),
        (&keys[1].1, &msgs[1], &zero_r),
        (&keys[2].1, &msgs[2], &bad_sig),
        (&bad_key, &msgs[3], &sigs[3]),
        (&keys[3].1, &msgs[3], &sigs[3]),
        (&keys[4].1, &msgs[0], &sigs[4]),
        (&keys[4].1, &msgs[4], &sigs[4]),
    ];
    let expected: Vec<bool> = items
        .iter()
        .map(|&(k, m, s)| agree_every_way(k, m, s))
        .collect();
    assert_eq!(expected, [true, false, false, false, true, false, true]);
    assert_eq!(verify_each(&items), expected);
    assert!(verify_each(&[]).is_empty());
}

#[test]
fn keys_keep_tables_up_to_the_limit_and_are_checked_without_beyond_it() {
    let kept = Kept::new(2);
    let (_, a) = key(300);
    let (_, b) = key(301);
    let (sk_c, c) = key(302);
    let first = kept.get_or_make(&a, KeyData::new).expect("key");
    assert!(first.table.is_some());
    assert!(Arc::ptr_eq(
        &first,
        &kept.get_or_make(&a, KeyData::new).expect("key")
    ));
    assert!(
        kept.get_or_make(&b, KeyData::new)
            .expect("key")
            .table
            .is_some()
    );
    // Full: the third key is checked without a table and not kept.
    let third = kept.get_or_make(&c, KeyData::new).expect("key");
    assert!(third.table.is_none());
    assert_eq!(kept.len(), 2);
    let sig = sign(&sk_c, b"m");
    let pending = prepare(&third, b"m", &sig).expect("valid");
    assert!(pending.finish(&pending.point.to_affine()).is_ok());
    // A malformed key is refused and not kept.
    let kept = Kept::new(2);
    assert!(kept.get_or_make(&[4u8; 65], KeyData::new).is_err());
    assert_eq!(kept.len(), 0);
}
