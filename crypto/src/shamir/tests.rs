//! Unit and property tests of Shamir sharing and the GF(2^61 − 1) arithmetic.

use super::field::{cond_sub_p, fpow};
use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use std::collections::HashSet;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn random_secret(rng: &mut StdRng) -> [u8; SECRET_LEN] {
    let mut s = [0u8; SECRET_LEN];
    rng.fill_bytes(&mut s);
    s
}

/// `n` distinct nonzero x-coordinates spread over the whole u32 range.
fn random_xs(rng: &mut StdRng, n: usize) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut xs = Vec::with_capacity(n);
    while xs.len() < n {
        let x: u32 = rng.random_range(1..=u32::MAX);
        if seen.insert(x) {
            xs.push(x);
        }
    }
    xs
}

/// Only tests need a standalone field addition (sums are accumulated in u128).
fn fadd(a: u64, b: u64) -> u64 {
    cond_sub_p(a + b)
}

fn naive_mul(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64
}

/// Value at `at` of the polynomial of degree < points.len() through `points`.
fn interpolate_at(points: &[(u64, u64)], at: u64) -> u64 {
    points.iter().enumerate().fold(0, |acc, (i, &(xi, yi))| {
        let basis = points
            .iter()
            .enumerate()
            .filter(|&(m, _)| m != i)
            .fold(1, |b, (_, &(xm, _))| {
                fmul(b, fmul(fsub(at, xm), finv(fsub(xi, xm))))
            });
        fadd(acc, fmul(yi, basis))
    })
}

/// Adds a nonzero error to one limb of a share.
fn tamper(share: &mut Share, limb: usize, delta: u64) {
    assert!(!delta.is_multiple_of(P));
    share.y[limb] = fadd(share.y[limb], delta % P);
}

// ---- field -------------------------------------------------------------

fn edge_values() -> Vec<u64> {
    vec![
        0,
        1,
        2,
        3,
        P - 1,
        P - 2,
        P / 2,
        1 << 32,
        (1 << 56) - 1,
        (1 << 60) + 12345,
    ]
}

#[test]
fn mul_matches_naive_u128_mod() {
    let mut r = rng(1);
    let mut values = edge_values();
    values.extend((0..200).map(|_| random_field_element(&mut r)));
    for &a in &values {
        for &b in &values {
            assert_eq!(fmul(a, b), naive_mul(a, b), "{a} * {b}");
        }
    }
}

#[test]
fn add_sub_match_naive() {
    let mut r = rng(2);
    let mut values = edge_values();
    values.extend((0..100).map(|_| random_field_element(&mut r)));
    for &a in &values {
        for &b in &values {
            assert_eq!(
                u128::from(fadd(a, b)),
                (u128::from(a) + u128::from(b)) % u128::from(P)
            );
            assert_eq!(fsub(fadd(a, b), b), a);
            assert_eq!(fadd(fsub(a, b), b), a);
        }
    }
}

#[test]
fn reduce_handles_extremes() {
    assert_eq!(reduce(0), 0);
    assert_eq!(reduce(u128::from(P)), 0);
    assert_eq!(reduce(u128::from(P) + 5), 5);
    let max = u128::from(P - 1) * u128::from(P - 1);
    assert_eq!(u128::from(reduce(max)), max % u128::from(P));
    let near_bound = (1u128 << 122) - 1;
    assert_eq!(u128::from(reduce(near_bound)), near_bound % u128::from(P));
    for s in [0, 1, P - 1, P, P + 1, 2 * P - 1] {
        assert_eq!(cond_sub_p(s), s % P);
    }
}

#[test]
fn fold_is_congruent_and_below_2_62() {
    let mut r = rng(16);
    for _ in 0..2000 {
        let v = u128::from(r.next_u64() >> 2) * u128::from(r.next_u32()) + u128::from(P);
        let f = fold(v);
        assert!(f < 1 << 62);
        assert_eq!(u128::from(reduce(u128::from(f))), v % u128::from(P));
    }
}

#[test]
fn reconstructor_matches_naive_lagrange_and_weights() {
    let mut r = rng(17);
    for k in [2usize, 3, 8, 33] {
        let rec = Reconstructor::new(&random_xs(&mut r, k), 2).expect("new");
        for (i, &xi) in rec.xs.iter().enumerate() {
            let (mut num, mut den) = (1, 1);
            for (_, &xm) in rec.xs.iter().enumerate().filter(|&(m, _)| m != i) {
                num = fmul(num, fsub(0, u64::from(xm)));
                den = fmul(den, fsub(u64::from(xi), u64::from(xm)));
            }
            assert_eq!(rec.weights[i], finv(den), "k={k} i={i}");
            assert_eq!(rec.lagrange[i], fmul(num, finv(den)), "k={k} i={i}");
        }
    }
}

#[test]
fn inverse_is_inverse() {
    let mut r = rng(3);
    let mut values: Vec<u64> = edge_values().into_iter().filter(|&v| v != 0).collect();
    values.extend(
        (0..500)
            .map(|_| random_field_element(&mut r))
            .filter(|&v| v != 0),
    );
    for &a in &values {
        assert_eq!(fmul(a, finv(a)), 1, "inverse of {a}");
    }
    let mut batch = values.clone();
    batch_invert(&mut batch);
    for (&a, &inv) in values.iter().zip(&batch) {
        assert_eq!(inv, finv(a));
    }
    assert_eq!(fpow(3, P - 1), 1); // Fermat
}

/// Yields a scripted sequence of u64 words.
struct ScriptedRng(std::vec::IntoIter<u64>);

impl rand_core::TryRng for ScriptedRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next().unwrap_or(0) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next().unwrap_or(0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0);
        Ok(())
    }
}
impl rand_core::TryCryptoRng for ScriptedRng {}

#[test]
fn sampling_rejects_p_without_reducing() {
    // Top 61 bits all ones is exactly p: must be rejected, not mapped to 0.
    let mut r = ScriptedRng(vec![u64::MAX, u64::MAX, (P - 1) << 3 | 0b111].into_iter());
    assert_eq!(random_field_element(&mut r), P - 1);
    let mut r = ScriptedRng(vec![0b101].into_iter());
    assert_eq!(random_field_element(&mut r), 0); // low 3 bits discarded
}

// ---- encoding ----------------------------------------------------------

#[test]
fn secret_encoding_roundtrip_and_widths() {
    let mut r = rng(4);
    for secret in [[0u8; 32], [0xff; 32], random_secret(&mut r)] {
        let limbs = encode_secret(&secret);
        for (&limb, &len) in limbs.iter().zip(&LIMB_BYTES) {
            assert!(limb < 1 << (8 * len));
        }
        assert_eq!(*decode_secret(&limbs).expect("valid"), secret);
    }
    let mut limbs = [0u64; LIMBS];
    limbs[4] = 1 << 32;
    assert_eq!(
        decode_secret(&limbs),
        Err(ShamirError::InvalidSecretEncoding)
    );
    limbs = [0; LIMBS];
    limbs[0] = 1 << 56;
    assert_eq!(
        decode_secret(&limbs),
        Err(ShamirError::InvalidSecretEncoding)
    );
}

#[test]
fn share_bytes_roundtrip() {
    let mut r = rng(5);
    let shares = split(&random_secret(&mut r), 3, &[1, 7, u32::MAX], &mut r).expect("split");
    for share in &shares {
        let bytes = share.to_bytes();
        assert_eq!(&bytes[..4], &share.x.to_le_bytes());
        let back = Share::from_bytes(&bytes).expect("decode");
        assert_eq!(back.x(), share.x());
        assert_eq!(back.y, share.y);
    }
    let max = Share {
        x: 9,
        y: [P - 1; LIMBS],
    };
    assert_eq!(
        Share::from_bytes(&max.to_bytes()).expect("p - 1 ok").y,
        [P - 1; LIMBS]
    );
}

#[test]
fn from_bytes_rejects_bad_input() {
    let good = Share {
        x: 5,
        y: [1, 2, 3, 4, 5],
    }
    .to_bytes();
    for len in [0, 1, 43, 45, 88] {
        let mut v = good.to_vec();
        v.resize(len, 0);
        assert_eq!(
            Share::from_bytes(&v).map(|s| s.x()),
            Err(ShamirError::InvalidLength {
                expected: 44,
                got: len
            })
        );
    }
    let mut zero_x = good;
    zero_x[..4].fill(0);
    assert_eq!(
        Share::from_bytes(&zero_x).map(|s| s.x()),
        Err(ShamirError::ZeroX)
    );
    for index in 0..LIMBS {
        for bad in [P, P + 1, u64::MAX] {
            let mut b = good;
            b[4 + 8 * index..12 + 8 * index].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(
                Share::from_bytes(&b).map(|s| s.x()),
                Err(ShamirError::NonCanonicalLimb { index })
            );
        }
    }
}

#[test]
fn debug_hides_y_and_zeroize_clears() {
    let mut share = Share {
        x: 42,
        y: [123_456_789; LIMBS],
    };
    let shown = format!("{share:?}");
    assert!(shown.contains("42"));
    assert!(!shown.contains("123456789"), "{shown}");
    share.zeroize();
    assert_eq!((share.x, share.y), (0, [0; LIMBS]));
}

// ---- split / reconstruct ---------------------------------------------------

#[test]
fn roundtrip_many_thresholds_and_sizes() {
    let mut r = rng(6);
    for t in 2..=12 {
        for n in t..=14 {
            let secret = random_secret(&mut r);
            let xs = random_xs(&mut r, n);
            let shares = split(&secret, t, &xs, &mut r).expect("split");
            assert_eq!(shares.iter().map(Share::x).collect::<Vec<_>>(), xs);
            assert_eq!(
                *reconstruct(&shares, t).expect("all"),
                secret,
                "t={t} n={n}"
            );
            assert_eq!(*reconstruct(&shares[n - t..], t).expect("t"), secret);
        }
    }
    for secret in [[0u8; 32], [0xff; 32]] {
        let shares = split(&secret, 2, &[1, 2], &mut r).expect("split");
        assert_eq!(*reconstruct(&shares, 2).expect("extreme"), secret);
    }
}

#[test]
fn roundtrip_1000_shares_threshold_501() {
    let mut r = rng(7);
    let secret = random_secret(&mut r);
    let xs: Vec<u32> = (1..=1000).collect();
    let mut shares = split(&secret, 501, &xs, &mut r).expect("split");
    shares.shuffle(&mut r);
    assert_eq!(*reconstruct(&shares, 501).expect("all 1000"), secret);
    assert_eq!(*reconstruct(&shares[..501], 501).expect("501"), secret);
    assert_eq!(*reconstruct(&shares[300..900], 501).expect("600"), secret);
    tamper(&mut shares[700], 2, 99);
    let x = shares[700].x();
    assert_eq!(
        reconstruct(&shares, 501).map(|_| ()),
        Err(ShamirError::Inconsistent { offender: Some(x) })
    );
    assert_eq!(
        reconstruct(&shares[..500], 501).map(|_| ()),
        Err(ShamirError::NotEnoughShares {
            threshold: 501,
            got: 500
        })
    );
}

#[test]
fn every_subset_of_at_least_t_reconstructs() {
    let mut r = rng(8);
    let (n, t) = (7usize, 4usize);
    let secret = random_secret(&mut r);
    let shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
    let mut checked = 0;
    for mask in 0u32..(1 << n) {
        let subset: Vec<Share> = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| shares[i].clone())
            .collect();
        let result = reconstruct(&subset, t).map(|s| *s);
        if subset.len() >= t {
            assert_eq!(result, Ok(secret), "mask {mask:b}");
            checked += 1;
        } else {
            assert_eq!(
                result,
                Err(ShamirError::NotEnoughShares {
                    threshold: t,
                    got: subset.len()
                })
            );
        }
    }
    assert_eq!(checked, 64); // C(7,4)+C(7,5)+C(7,6)+C(7,7)
}

#[test]
fn fewer_than_t_shares_is_an_error() {
    let mut r = rng(9);
    let shares = split(&random_secret(&mut r), 5, &[1, 2, 3, 4, 5, 6], &mut r).expect("split");
    for m in 0..5 {
        assert_eq!(
            reconstruct(&shares[..m], 5).map(|_| ()),
            Err(ShamirError::NotEnoughShares {
                threshold: 5,
                got: m
            })
        );
    }
    let rec = Reconstructor::new(&[1, 2, 3, 4, 5], 5).expect("new");
    assert_eq!(
        rec.reconstruct(&shares[..4]).map(|_| ()),
        Err(ShamirError::NotEnoughShares {
            threshold: 5,
            got: 4
        })
    );
}

/// Information-theoretic hiding: t − 1 real shares are consistent with ANY
/// secret. For each candidate secret we build the polynomial through
/// (0, candidate) and the t − 1 share points and fabricate further shares
/// from it; together with the real t − 1 shares they reconstruct the
/// candidate and pass the full consistency check.
#[test]
fn t_minus_1_shares_do_not_determine_the_secret() {
    let mut r = rng(10);
    for t in 2..=8 {
        let real_secret = random_secret(&mut r);
        let xs: Vec<u32> = (1..=t as u32 + 1).collect();
        let shares = split(&real_secret, t, &xs, &mut r).expect("split");
        let known = &shares[..t - 1];
        let other_secret = random_secret(&mut r);
        assert_ne!(real_secret, other_secret);
        for candidate in [real_secret, other_secret, [0u8; 32], [0xff; 32]] {
            let limbs = encode_secret(&candidate);
            let fabricate = |x: u32| {
                let mut y = [0u64; LIMBS];
                for (l, y_l) in y.iter_mut().enumerate() {
                    let mut points = vec![(0, limbs[l])];
                    points.extend(known.iter().map(|s| (u64::from(s.x), s.y[l])));
                    *y_l = interpolate_at(&points, u64::from(x));
                }
                Share { x, y }
            };
            let mut set: Vec<Share> = known.to_vec();
            set.push(fabricate(5000));
            assert_eq!(*reconstruct(&set, t).expect("t shares"), candidate);
            set.push(fabricate(6000));
            set.push(fabricate(7000));
            assert_eq!(*reconstruct(&set, t).expect("consistent t + 2"), candidate);
            if candidate == real_secret {
                // The polynomial through the real secret is the dealer's.
                let again = fabricate(shares[t - 1].x);
                assert_eq!(again.y, shares[t - 1].y);
            }
        }
    }
}

#[test]
fn tampered_share_is_named_with_two_extra_shares() {
    let mut r = rng(11);
    for t in [2usize, 3, 5, 8] {
        let n = t + 2;
        let secret = random_secret(&mut r);
        let shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
        for victim in 0..n {
            for limbs in [vec![0], vec![4], vec![1, 3], vec![0, 1, 2, 3, 4]] {
                let mut bad = shares.clone();
                for &l in &limbs {
                    tamper(&mut bad[victim], l, r.random_range(1..P));
                }
                bad.shuffle(&mut r);
                assert_eq!(
                    reconstruct(&bad, t).map(|_| ()),
                    Err(ShamirError::Inconsistent {
                        offender: Some(shares[victim].x)
                    }),
                    "t={t} victim={victim} limbs={limbs:?}"
                );
            }
        }
    }
}

#[test]
fn tampering_is_detected_up_to_k_minus_t_bad_shares() {
    let mut r = rng(12);
    let (k, t) = (20usize, 8usize);
    let shares = split(&random_secret(&mut r), t, &random_xs(&mut r, k), &mut r).expect("split");
    // One extra share: detected but not locatable.
    let mut bad = shares[..t + 1].to_vec();
    tamper(&mut bad[3], 1, 1);
    assert_eq!(
        reconstruct(&bad, t).map(|_| ()),
        Err(ShamirError::Inconsistent { offender: None })
    );
    for wrong in 2..=k - t {
        let mut bad = shares.clone();
        let mut victims: Vec<usize> = (0..k).collect();
        victims.shuffle(&mut r);
        for &v in &victims[..wrong] {
            tamper(&mut bad[v], r.random_range(0..LIMBS), r.random_range(1..P));
        }
        assert!(
            matches!(reconstruct(&bad, t), Err(ShamirError::Inconsistent { .. })),
            "{wrong} wrong shares"
        );
    }
}

#[test]
fn corrupted_share_with_exactly_t_fails_limb_width_check() {
    let mut r = rng(13);
    let shares = split(&random_secret(&mut r), 4, &[1, 2, 3, 4], &mut r).expect("split");
    let mut bad = shares.clone();
    // An error in the 4-byte limb survives the width check with prob 2^-29.
    tamper(&mut bad[2], 4, 0x1234_5678_9abc);
    assert_eq!(
        reconstruct(&bad, 4).map(|_| ()),
        Err(ShamirError::InvalidSecretEncoding)
    );
}

#[test]
fn parameter_validation() {
    let mut r = rng(14);
    let s = random_secret(&mut r);
    let split_err = |t: usize, xs: &[u32], r: &mut StdRng| split(&s, t, xs, r).map(|_| ());
    assert_eq!(
        split_err(0, &[1, 2], &mut r),
        Err(ShamirError::ThresholdTooSmall { threshold: 0 })
    );
    assert_eq!(
        split_err(1, &[1, 2], &mut r),
        Err(ShamirError::ThresholdTooSmall { threshold: 1 })
    );
    assert_eq!(
        split_err(3, &[1, 2], &mut r),
        Err(ShamirError::NotEnoughShares {
            threshold: 3,
            got: 2
        })
    );
    assert_eq!(split_err(2, &[1, 0, 3], &mut r), Err(ShamirError::ZeroX));
    assert_eq!(
        split_err(2, &[4, 9, 4], &mut r),
        Err(ShamirError::DuplicateX { x: 4 })
    );
    let too_many: Vec<u32> = (1..=MAX_SHARES as u32 + 1).collect();
    assert_eq!(
        split_err(2, &too_many, &mut r),
        Err(ShamirError::TooManyShares {
            max: MAX_SHARES,
            got: MAX_SHARES + 1
        })
    );
    assert_eq!(
        Reconstructor::new(&[1, 2, 2], 2).map(|_| ()),
        Err(ShamirError::DuplicateX { x: 2 })
    );
    assert_eq!(
        Reconstructor::new(&[1, 2], 1).map(|_| ()),
        Err(ShamirError::ThresholdTooSmall { threshold: 1 })
    );
    assert_eq!(
        Reconstructor::new(&[0, 2], 2).map(|_| ()),
        Err(ShamirError::ZeroX)
    );
}

#[test]
fn reconstructor_is_reusable_and_order_insensitive() {
    let mut r = rng(15);
    let xs = random_xs(&mut r, 15);
    let rec = Reconstructor::new(&xs, 8).expect("new");
    assert_eq!(rec.threshold(), 8);
    assert!(rec.xs().windows(2).all(|w| w[0] < w[1]));
    for _ in 0..20 {
        let secret = random_secret(&mut r);
        let mut shares = split(&secret, 8, &xs, &mut r).expect("split");
        shares.shuffle(&mut r);
        assert_eq!(*rec.reconstruct(&shares).expect("reconstruct"), secret);
    }
    let shares = split(&random_secret(&mut r), 8, &xs, &mut r).expect("split");
    assert_eq!(
        rec.reconstruct(&shares[..10]).map(|_| ()),
        Err(ShamirError::ShareCountMismatch {
            expected: 15,
            got: 10
        })
    );
    let mut dup = shares.clone();
    dup[1] = dup[0].clone();
    assert_eq!(
        rec.reconstruct(&dup).map(|_| ()),
        Err(ShamirError::DuplicateX { x: xs[0] })
    );
    let outsider = xs.iter().max().map_or(1, |m| m.wrapping_add(1).max(1));
    let mut foreign = shares.clone();
    foreign[4].x = outsider;
    assert_eq!(
        rec.reconstruct(&foreign).map(|_| ()),
        Err(ShamirError::UnexpectedShare { x: outsider })
    );
}

#[test]
fn error_messages_are_readable() {
    let named = ShamirError::Inconsistent { offender: Some(7) }.to_string();
    assert!(named.contains("x-coordinate 7 is wrong"), "{named}");
    let unnamed = ShamirError::Inconsistent { offender: None }.to_string();
    assert!(unnamed.contains("cannot be identified"), "{unnamed}");
    assert!(
        ShamirError::ThresholdTooSmall { threshold: 1 }
            .to_string()
            .contains("at least 2")
    );
}

proptest! {
    #[test]
    fn prop_any_subset_of_at_least_t_reconstructs(
        secret in any::<[u8; 32]>(),
        t in 2usize..=12,
        extra in 0usize..=10,
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let n = t + extra;
        let xs = random_xs(&mut r, n);
        let mut shares = split(&secret, t, &xs, &mut r).expect("split");
        shares.shuffle(&mut r);
        let m = r.random_range(t..=n);
        prop_assert_eq!(*reconstruct(&shares[..m], t).expect("reconstruct"), secret);
        let rec = Reconstructor::new(&xs, t).expect("new");
        prop_assert_eq!(*rec.reconstruct(&shares).expect("prebuilt"), secret);
        if m > t {
            prop_assert!(reconstruct(&shares[..t - 1], t).is_err());
        }
    }

    #[test]
    fn prop_single_tamper_detected(
        secret in any::<[u8; 32]>(),
        t in 2usize..=10,
        extra in 1usize..=6,
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let n = t + extra;
        let mut shares = split(&secret, t, &random_xs(&mut r, n), &mut r).expect("split");
        let victim = r.random_range(0..n);
        tamper(&mut shares[victim], r.random_range(0..LIMBS), r.random_range(1..P));
        let expected = (extra >= 2).then(|| shares[victim].x());
        prop_assert_eq!(
            reconstruct(&shares, t).map(|_| ()),
            Err(ShamirError::Inconsistent { offender: expected })
        );
    }
}
