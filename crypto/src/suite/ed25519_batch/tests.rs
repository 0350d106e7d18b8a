use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::suite::{SigningKey, Suite};

/// ring's single verification: the reference.
fn single(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(msg, sig)
        .is_ok()
}

/// `n` keys, each signing its own message (or all one message).
fn signed(n: usize, one_message: bool, seed: u64) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let sk = SigningKey::from_bytes(Suite::Intl, &secret).expect("key");
            let msg = if one_message {
                b"survivor set".to_vec()
            } else {
                format!("masking set of member {i}").into_bytes()
            };
            let sig = sk.sign(&msg).expect("sign");
            let vk = sk.verifying_key().expect("vk");
            (vk.as_bytes().to_vec(), msg, sig)
        })
        .collect()
}

fn check(items: &[(Vec<u8>, Vec<u8>, Vec<u8>)]) -> Result<(), CryptoError> {
    let refs: Vec<(&[u8], &[u8], &[u8])> = items
        .iter()
        .map(|(k, m, s)| (k.as_slice(), m.as_slice(), s.as_slice()))
        .collect();
    verify_all(&refs)
}

#[test]
fn valid_sets_verify_whatever_their_messages() {
    for one in [true, false] {
        for n in [1, 2, 15, 51] {
            assert!(check(&signed(n, one, n as u64)).is_ok(), "n = {n}");
        }
    }
    assert!(check(&[]).is_ok(), "nothing to check");
}

#[test]
fn one_bad_signature_fails_the_set() {
    let good = signed(20, false, 1);
    for i in [0, 7, 19] {
        let mut msg = good.clone();
        msg[i].1.push(b'!');
        assert!(check(&msg).is_err(), "message {i} altered");
        let mut other = good.clone();
        other[i].0 = good[(i + 1) % 20].0.clone();
        assert!(check(&other).is_err(), "signature {i} under another key");
        let mut swapped = good.clone();
        swapped[i].2 = good[(i + 1) % 20].2.clone();
        assert!(
            check(&swapped).is_err(),
            "signature {i} from another signer"
        );
    }
}

#[test]
fn malformed_keys_and_signatures_fail() {
    let good = signed(3, true, 2);
    let mut short_key = good.clone();
    short_key[1].0.pop();
    assert!(matches!(
        check(&short_key),
        Err(CryptoError::InvalidPublicKey(_))
    ));
    let mut short_sig = good.clone();
    short_sig[2].2.pop();
    assert!(check(&short_sig).is_err());
    // s + L: the same s modulo the group order, refused as non-canonical by
    // both checks.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut big_s = good.clone();
    let s = &mut big_s[0].2[32..];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let v = u16::from(*b) + u16::from(l) + carry;
        *b = v as u8;
        carry = v >> 8;
    }
    assert!(!single(&big_s[0].0, &big_s[0].1, &big_s[0].2));
    assert!(check(&big_s).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any one bit flipped in any key, message or signature of a set: the
    /// batch passes exactly when ring passes every one of them.
    #[test]
    fn agrees_with_single_verification(
        seed in any::<u64>(),
        n in 2usize..24,
        at in any::<prop::sample::Index>(),
        part in 0usize..3,
        bit in 0usize..256,
    ) {
        let mut items = signed(n, seed % 2 == 0, seed);
        let i = at.index(n);
        let field = match part {
            0 => &mut items[i].0,
            1 => &mut items[i].1,
            _ => &mut items[i].2,
        };
        let b = bit % (8 * field.len());
        field[b / 8] ^= 1 << (b % 8);
        let all_single = items.iter().all(|(k, m, s)| single(k, m, s));
        prop_assert_eq!(check(&items).is_ok(), all_single);
    }
}

/// `VerifyingKey::verify_each` names exactly the bad signatures, whether the
/// set went through a batch first (Ed25519) or not (SM2).
#[test]
fn verify_each_names_the_bad_signatures_in_both_suites() {
    use crate::suite::VerifyingKey as Key;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for suite in Suite::ALL {
        let keys: Vec<SigningKey> = (0..5)
            .map(|_| SigningKey::generate(suite, &mut rng))
            .collect();
        let vks: Vec<Key> = keys
            .iter()
            .map(|k| k.verifying_key().expect("vk"))
            .collect();
        let msg = b"masking set".as_slice();
        let mut sigs: Vec<Vec<u8>> = keys.iter().map(|k| k.sign(msg).expect("sign")).collect();
        let check = |sigs: &[Vec<u8>]| {
            let items: Vec<(&Key, &[u8], &[u8])> = vks
                .iter()
                .zip(sigs)
                .map(|(k, s)| (k, msg, s.as_slice()))
                .collect();
            Key::verify_each(&items)
        };
        assert_eq!(check(&sigs), vec![true; 5], "{suite}");
        sigs[2][0] ^= 1;
        sigs[4][10] ^= 1;
        assert_eq!(check(&sigs), [true, true, false, true, false], "{suite}");
        assert_eq!(check(&sigs[..1]), [true], "{suite}: a set of one");
        assert!(Key::verify_each(&[]).is_empty());
    }
}

/// A key's second set is checked with the key kept from its first, and
/// gets the same answers, as does a set checked with the store full.
#[test]
fn kept_keys_give_the_same_answers() {
    let good = signed(8, false, 77);
    let mut bad = good.clone();
    bad[3].2[10] ^= 1;
    for room in [16, 3] {
        let kept = Kept::new(room);
        let check_in = |items: &[(Vec<u8>, Vec<u8>, Vec<u8>)]| {
            let items: Vec<(&[u8], &[u8], &[u8])> = items
                .iter()
                .map(|(k, m, s)| (k.as_slice(), m.as_slice(), s.as_slice()))
                .collect();
            verify_all_in(&kept, &items)
        };
        for _ in 0..2 {
            assert!(check_in(&good).is_ok(), "room {room}");
            assert!(check_in(&bad).is_err(), "room {room}");
            for (k, m, s) in &bad {
                let one = [(k.clone(), m.clone(), s.clone())];
                assert_eq!(check_in(&one).is_ok(), single(k, m, s), "room {room}");
            }
        }
        assert_eq!(kept.len(), room.min(good.len()));
    }
    // A malformed key fails the set and is not kept.
    let kept = Kept::new(16);
    let mut short = good.clone();
    short[0].0.truncate(31);
    let items: Vec<(&[u8], &[u8], &[u8])> = short
        .iter()
        .map(|(k, m, s)| (k.as_slice(), m.as_slice(), s.as_slice()))
        .collect();
    assert!(verify_all_in(&kept, &items).is_err());
    assert_eq!(kept.len(), 0);
}
