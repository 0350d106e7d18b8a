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
            assert!(agree(&public, msg, &sig));
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
    assert!(!agree(&off, b"m", &sig));
    assert!(!agree(&[0u8], b"m", &sig));
    assert!(!agree(&public[..40], b"m", &sig));
    let compressed = sk.public_key().to_sec1_point(true).as_bytes().to_vec();
    assert!(agree(&compressed, b"m", &sig));
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
        let ours = verify(&public, &msg, &sig).is_ok();
        prop_assert_eq!(ours, reference(&public, &msg, &sig));
    }
}
