//! Unit and property tests of the quantiser.

use super::narrow::*;
use super::rounding::*;
use super::*;
use crate::ring::add_assign;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

type Site = (Vec<f32>, u64);

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Exact-as-f64 weighted mean of the clipped inputs (the decode target).
fn reference(q: &Quantiser, sites: &[Site]) -> Vec<f64> {
    let d = sites[0].0.len();
    let total: f64 = sites
        .iter()
        .map(|(_, w)| (*w).min(q.max_weight()) as f64)
        .sum();
    (0..d)
        .map(|i| {
            sites
                .iter()
                .map(|(x, w)| {
                    (*w).min(q.max_weight()) as f64 * f64::from(x[i]).clamp(-q.clip(), q.clip())
                })
                .sum::<f64>()
                / total
        })
        .collect()
}

fn sum_all<R: RingElement>(
    q: &Quantiser,
    sites: &[Site],
    extras: &[Vec<i64>],
    seed: u64,
) -> Vec<R> {
    let mut r = rng(seed);
    let mut acc: Option<Vec<R>> = None;
    for ((x, w), e) in sites.iter().zip(extras) {
        let enc = q.encode::<R>(x, *w, e, &mut r).expect("encode");
        match acc.as_mut() {
            None => acc = Some(enc),
            Some(a) => add_assign(a, &enc),
        }
    }
    acc.expect("at least one site")
}

fn assert_close(q: &Quantiser, sites: &[Site], dec: &Decoded) {
    let want = reference(q, sites);
    let bound = q.error_bound(sites.len(), dec.total_weight);
    for (i, (got, want)) in dec.mean.iter().zip(&want).enumerate() {
        assert!(
            (got - want).abs() <= bound,
            "element {i}: got {got}, want {want}, bound {bound}"
        );
    }
}

#[test]
fn single_site_round_trip() {
    for ring in [Ring::U32, Ring::U64] {
        let q = Quantiser::new(&QuantConfig::new(ring, 1.0, 1000, 100)).expect("config");
        let x = vec![0.5f32, -0.25, 0.0, 1.0, -1.0, 0.123_456_79, 7.0, -9.5];
        let sites = vec![(x.clone(), 37)];
        let extras = vec![vec![3, -4]];
        let dec = match ring {
            Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, 1), x.len(), 1),
            Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, 1), x.len(), 1),
        }
        .expect("decode");
        assert_eq!(dec.total_weight, 37);
        assert_eq!(dec.extras, vec![3, -4]);
        assert_close(&q, &sites, &dec);
        // Clipping applied: 7.0 → 1.0, -9.5 → -1.0.
        assert!((dec.mean[6] - 1.0).abs() <= q.error_bound(1, 37));
        assert!((dec.mean[7] + 1.0).abs() <= q.error_bound(1, 37));
    }
}

#[test]
fn unbiased_rounding() {
    // scale 1, weight 1: each element is SR(±0.3) ∈ {0, 1} or {-1, 0}.
    let cfg = QuantConfig {
        scale: Some(1.0),
        min_levels: 0,
        ..QuantConfig::new(Ring::U64, 1.0, 1, 1)
    };
    let q = Quantiser::new(&cfg).expect("config");
    let trials = 200_000;
    let mut r = rng(42);
    for target in [0.3f32, -0.3] {
        let enc = q
            .encode::<u64>(&vec![target; trials], 1, &[], &mut r)
            .expect("encode");
        let mean = enc[..trials]
            .iter()
            .map(|v| v.to_signed() as f64)
            .sum::<f64>()
            / trials as f64;
        // Bernoulli(0.3): σ = √(0.21 / n) ≈ 0.001; allow 5σ.
        let se = (0.21f64 / trials as f64).sqrt();
        assert!(
            (mean - f64::from(target)).abs() < 5.0 * se,
            "mean {mean} for {target}"
        );
        assert!(enc[..trials].iter().all(|v| {
            let s = v.to_signed();
            if target > 0.0 {
                s == 0 || s == 1
            } else {
                s == -1 || s == 0
            }
        }));
    }
}

#[test]
fn extremes_do_not_overflow() {
    for ring in [Ring::U32, Ring::U64] {
        let (n, w) = (50usize, 1000u64);
        let q = Quantiser::new(&QuantConfig::new(ring, 0.5, w, n)).expect("config");
        for sign in [1.0f32, -1.0] {
            // Values beyond the clip and weights beyond the cap: worst case.
            let sites: Vec<_> = (0..n).map(|_| (vec![sign * 3.0; 4], w * 10)).collect();
            let bound = q.extra_bound();
            let extras: Vec<_> = (0..n).map(|_| vec![bound, -bound]).collect();
            let dec = match ring {
                Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, 9), 4, n),
                Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, 9), 4, n),
            }
            .expect("decode");
            assert_eq!(dec.total_weight, n as u64 * w);
            assert_eq!(dec.extras, vec![bound * n as i64, -bound * n as i64]);
            for m in &dec.mean {
                assert!((m - f64::from(sign) * 0.5).abs() <= q.error_bound(n, n as u64 * w));
            }
        }
    }
}

#[test]
fn auto_scale_is_tight() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 2.0, 100, 10)).expect("config");
    let m = Ring::U32.max_signed() as f64;
    // n·(L + 1), L = W·c·s.
    let worst = 10.0 * (q.levels() + 1.0);
    assert!(worst <= m && worst > m * (1.0 - 1e-9), "{worst} vs {m}");
    assert_eq!(q.scale() * 2.0 * 100.0, q.levels());
    // Filling the ring packs nothing.
    assert_eq!(q.bits(), 32);
}

#[test]
fn config_errors() {
    let base = QuantConfig::new(Ring::U32, 1.0, 100, 100);
    let bad = |cfg: QuantConfig| Quantiser::new(&cfg).unwrap_err();
    for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            bad(QuantConfig { clip, ..base }),
            QuantError::InvalidClip { .. }
        ));
    }
    assert_eq!(
        bad(QuantConfig {
            max_weight: 0,
            ..base
        }),
        QuantError::ZeroMaxWeight
    );
    assert_eq!(
        bad(QuantConfig {
            max_cohort: 0,
            ..base
        }),
        QuantError::ZeroMaxCohort
    );
    let e = bad(QuantConfig {
        scale: Some(f64::NAN),
        ..base
    });
    assert!(matches!(e, QuantError::InvalidScale { .. }));

    // Explicit scale that overflows u32.
    let e = bad(QuantConfig {
        scale: Some(1e9),
        ..base
    });
    assert!(matches!(e, QuantError::Overflow { .. }));
    let msg = e.to_string();
    for needle in [
        "max_cohort (100)",
        "max_weight (100)",
        "u32",
        "ring = \"u64\"",
        "lower max_weight",
        "cohort size",
        "clip/scale",
        "2147483647",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }

    // Auto scale leaves too few levels in u32 (L ≈ 2^31 / 2^21 − 1 < 1024);
    // fine in u64.
    let coarse = QuantConfig::new(Ring::U32, 1.0, 1, 1 << 21);
    let e = bad(coarse);
    assert!(matches!(e, QuantError::TooCoarse { .. }));
    let msg = e.to_string();
    for needle in [
        "min_levels = 1024",
        "ring = \"u64\"",
        "cohort size",
        "2097152",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }
    assert!(
        Quantiser::new(&QuantConfig {
            ring: Ring::U64,
            ..coarse
        })
        .is_ok()
    );

    // Explicit scale that is safe but too small points at the scale.
    let e = bad(QuantConfig {
        scale: Some(10.0),
        ..base
    });
    assert!(e.to_string().contains("raise scale"), "{e}");

    // Weight slot alone overflows.
    let e = bad(QuantConfig::new(Ring::U32, 1.0, 1 << 16, 1 << 16));
    assert!(matches!(e, QuantError::WeightOverflow { .. }));
    assert!(e.to_string().contains("4294967296"), "{e}");
}

#[test]
fn encode_errors() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 100, 100)).expect("config");
    let mut r = rng(3);
    for (bad, idx) in [(f32::NAN, 2), (f32::INFINITY, 0), (f32::NEG_INFINITY, 4)] {
        let mut x = vec![0.1f32; 5];
        x[idx] = bad;
        let e = q.encode::<u32>(&x, 1, &[], &mut r).unwrap_err();
        assert!(
            matches!(e, QuantError::NonFinite { index, .. } if index == idx),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("element {idx}")), "{e}");
    }
    assert_eq!(
        q.encode::<u32>(&[0.1], 0, &[], &mut r),
        Err(QuantError::ZeroWeight)
    );
    let e = q.encode::<u64>(&[0.1], 1, &[], &mut r).unwrap_err();
    assert!(matches!(e, QuantError::RingMismatch { .. }));
    assert_eq!(
        e.to_string(),
        "quantiser is configured for ring u32 but was asked to use u64"
    );
    let too_big = q.extra_bound() + 1;
    let e = q
        .encode::<u32>(&[0.1], 1, &[0, -too_big], &mut r)
        .unwrap_err();
    assert!(
        matches!(e, QuantError::ExtraOutOfRange { index: 1, .. }),
        "{e}"
    );
    // Weight above the cap is capped, not rejected.
    let enc = q
        .encode::<u32>(&[0.1], 1_000_000, &[], &mut r)
        .expect("capped");
    assert_eq!(enc[1], 100);
}

#[test]
fn decode_errors() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U64, 1.0, 100, 10)).expect("config");
    let mut r = rng(4);
    let enc = q
        .encode::<u64>(&[0.5, -0.5], 3, &[], &mut r)
        .expect("encode");
    assert!(matches!(
        q.decode(&enc, 2, 0),
        Err(QuantError::NoContributors)
    ));
    assert!(matches!(
        q.decode(&enc, 2, 11),
        Err(QuantError::TooManyContributors { .. })
    ));
    assert!(matches!(
        q.decode(&enc, 3, 1),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert_eq!(
        q.decode(&[0u64, 0, 0], 2, 1),
        Err(QuantError::ZeroTotalWeight)
    );
    // An uncancelled mask looks like a huge value: rejected, not decoded.
    let mut masked = enc.clone();
    masked[0] = masked[0].wrapping_add(0x1234_5678_9abc_def0);
    let e = q.decode(&masked, 2, 1).unwrap_err();
    assert!(
        matches!(e, QuantError::ElementOutOfRange { index: 0, .. }),
        "{e}"
    );
    let mut heavy = enc;
    heavy[2] = 101;
    assert!(matches!(
        q.decode(&heavy, 2, 1),
        Err(QuantError::WeightOutOfRange { total: 101, .. })
    ));
}

/// `[element, weight, extra]` in the ring `R`.
fn slots<R: RingElement>(element: i64, weight: i64, extra: i64) -> Vec<R> {
    vec![
        R::from_i64(element),
        R::from_i64(weight),
        R::from_i64(extra),
    ]
}

#[test]
fn the_weight_slot_must_lie_between_contributors_and_their_cap() {
    // max_weight 100, three contributors: honest totals are 3 ..= 300.
    let q = Quantiser::new(&QuantConfig::new(Ring::U64, 1.0, 100, 10)).expect("config");
    for total in [3, 4, 299, 300] {
        let dec = q.decode(&slots::<u64>(0, total, 0), 1, 3).expect("inside");
        assert_eq!(dec.total_weight, total as u64);
    }
    for total in [2, 1, -1, -300, 301, i64::MAX] {
        let e = q.decode(&slots::<u64>(0, total, 0), 1, 3).unwrap_err();
        assert_eq!(
            e,
            QuantError::WeightOutOfRange {
                total,
                min: 3,
                max: 300,
                contributors: 3
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{total}")) && msg.contains("[3, 300]"),
            "{msg}"
        );
    }
    assert_eq!(
        q.decode(&slots::<u64>(0, 0, 0), 1, 3),
        Err(QuantError::ZeroTotalWeight)
    );
}

#[test]
fn elements_must_keep_the_mean_within_the_clip() {
    for ring in [Ring::U32, Ring::U64] {
        let q = Quantiser::new(&QuantConfig::new(ring, 0.5, 1000, 10)).expect("config");
        let (n, total) = (3usize, 7u64);
        let limit = q.element_limit(n, total);
        // The limit is the clip plus the rounding slack of n sites, no more.
        let at_limit = limit as f64 / (q.scale() * total as f64);
        let slack = n as f64 / (q.scale() * total as f64);
        assert!(at_limit <= 0.5 * (1.0 + 1e-11) + slack, "{at_limit}");
        assert!(at_limit >= 0.5, "{at_limit}");
        let limit = i64::try_from(limit).expect("fits");
        for value in [limit, -limit, 0] {
            let dec = match ring {
                Ring::U32 => q.decode(&slots::<u32>(value, total as i64, 0), 1, n),
                Ring::U64 => q.decode(&slots::<u64>(value, total as i64, 0), 1, n),
            };
            assert!(dec.is_ok(), "{ring}: {value} within ±{limit}: {dec:?}");
        }
        for value in [limit + 1, -limit - 1] {
            let e = match ring {
                Ring::U32 => q.decode(&slots::<u32>(value, total as i64, 0), 1, n),
                Ring::U64 => q.decode(&slots::<u64>(value, total as i64, 0), 1, n),
            }
            .unwrap_err();
            assert!(
                matches!(e, QuantError::ElementOutOfRange { index: 0, value: v, total_weight: 7, contributors: 3, .. } if v == value),
                "{ring}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("element 0") && msg.contains("clip 0.5"),
                "{msg}"
            );
        }
    }
}

#[test]
fn extras_must_be_what_contributors_can_sum() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 100, 10)).expect("config");
    let limit = q.extra_bound() * 2;
    for extra in [limit, -limit] {
        assert!(q.decode(&slots::<u32>(0, 2, extra), 1, 2).is_ok());
    }
    for extra in [limit + 1, -limit - 1] {
        assert!(matches!(
            q.decode(&slots::<u32>(0, 2, extra), 1, 2),
            Err(QuantError::OutOfRange { slot: 2, .. })
        ));
    }
}

/// What one malicious site can no longer do through the sum: shrink the
/// total weight to blow the mean up, or send an element beyond the clip.
#[test]
fn a_poisoned_contribution_is_refused_not_rescaled() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 100, 10)).expect("config");
    let mut r = rng(11);
    let honest = q.encode::<u32>(&[0.5], 50, &[], &mut r).expect("encode");
    // A negative weight that leaves T = 1 with two contributors.
    let mut sum = honest.clone();
    add_assign(&mut sum, &slots::<u32>(0, -49, 0)[..2]);
    assert!(matches!(
        q.decode(&sum, 1, 2),
        Err(QuantError::WeightOutOfRange { total: 1, .. })
    ));
    // Weight 1 with the element of a full-weight site at the clip: the mean
    // would be (0.5·50 + 1·100) / 51 ≈ 2.45, beyond the clip of 1.
    let mut sum = honest;
    let cap = q.element_limit(1, 100) as i64;
    add_assign(&mut sum, &slots::<u32>(cap, 1, 0)[..2]);
    assert!(matches!(
        q.decode(&sum, 1, 2),
        Err(QuantError::ElementOutOfRange { index: 0, .. })
    ));
}

#[test]
fn negative_values() {
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 10, 4)).expect("config");
    let sites = vec![
        (vec![-0.75f32, -1.5, -0.001], 3),
        (vec![-0.25f32, 0.5, -0.002], 1),
    ];
    let extras = vec![vec![-5], vec![-7]];
    let dec = q
        .decode(&sum_all::<u32>(&q, &sites, &extras, 5), 3, 2)
        .expect("decode");
    assert_eq!(dec.extras, vec![-12]);
    assert_close(&q, &sites, &dec);
    assert!((dec.mean[0] + 0.625).abs() <= q.error_bound(2, 4));
}

/// (model length, sites as (update, weight), per-site extras).
type Case = (usize, Vec<Site>, Vec<Vec<i64>>);

fn sites_strategy() -> impl Strategy<Value = Case> {
    (1usize..=16, 1usize..=24).prop_flat_map(|(d, n)| {
        let site = (prop::collection::vec(-3.0f32..3.0, d), 1u64..=1500);
        (
            Just(d),
            prop::collection::vec(site, n),
            prop::collection::vec(prop::collection::vec(-1000i64..1000, 2), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn many_sites_within_bound(
        (d, sites, extras) in sites_strategy(),
        clip in 0.01f64..4.0,
        seed in any::<u64>(),
    ) {
        for ring in [Ring::U32, Ring::U64] {
            let q = Quantiser::new(&QuantConfig::new(ring, clip, 1000, 32)).expect("config");
            let dec = match ring {
                Ring::U32 => q.decode(&sum_all::<u32>(&q, &sites, &extras, seed), d, sites.len()),
                Ring::U64 => q.decode(&sum_all::<u64>(&q, &sites, &extras, seed), d, sites.len()),
            }.expect("decode");
            let total: u64 = sites.iter().map(|(_, w)| (*w).min(1000)).sum();
            prop_assert_eq!(dec.total_weight, total);
            let want_extras: Vec<i64> = (0..2).map(|j| extras.iter().map(|e| e[j]).sum()).collect();
            prop_assert_eq!(&dec.extras, &want_extras);
            let want = reference(&q, &sites);
            let bound = q.error_bound(sites.len(), total);
            for (got, want) in dec.mean.iter().zip(&want) {
                prop_assert!((got - want).abs() <= bound, "{} vs {} (bound {})", got, want, bound);
            }
        }
    }
}

fn with_levels(ring: Ring, max_weight: u64, max_cohort: usize, levels: u64) -> QuantConfig {
    QuantConfig {
        levels: Some(levels),
        ..QuantConfig::new(ring, 4.0, max_weight, max_cohort)
    }
}

#[test]
fn levels_choose_the_smallest_width() {
    // The example: 100 sites, W ≤ 65536, L = 2^16 → 24 bits.
    for w in [1, 10_000, 65_536] {
        let q = Quantiser::new(&with_levels(Ring::U32, w, 100, DEFAULT_LEVELS)).expect("config");
        assert_eq!(q.bits(), 24, "W = {w}");
        assert!((q.levels() - DEFAULT_LEVELS as f64).abs() < 1e-6);
        // n·(L + 1) fits 2^23 − 1, not 2^22 − 1.
        assert!(100.0 * (q.levels() + 1.0) <= max_signed(24) as f64);
        assert!(100.0 * (q.levels() + 1.0) > max_signed(23) as f64);
    }
    // Small cohorts and levels go down to 8 bits, never below.
    let q = Quantiser::new(&QuantConfig {
        min_levels: 1,
        ..with_levels(Ring::U32, 10, 3, 4)
    })
    .expect("config");
    assert_eq!(q.bits(), 8);
    // An explicit scale is an override: L = W·c·s.
    let q = Quantiser::new(&QuantConfig {
        scale: Some(1000.0),
        ..with_levels(Ring::U64, 1000, 10, 1)
    })
    .expect("config");
    assert_eq!(q.levels(), 4.0e6);
    assert_eq!(q.bits(), 27);
}

#[test]
fn levels_beyond_the_ring_name_ring_weight_cohort_and_levels() {
    let e = Quantiser::new(&with_levels(Ring::U32, 1000, 1000, 1 << 24)).unwrap_err();
    assert!(
        matches!(e, QuantError::LevelsOverflow { needed: 35, .. }),
        "{e}"
    );
    let msg = e.to_string();
    for needle in [
        "levels = 16777216",
        "max_cohort 1000",
        "max_weight 1000",
        "u32",
        "35 bits",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }
    assert!(Quantiser::new(&with_levels(Ring::U64, 1000, 1000, 1 << 24)).is_ok());
    let e = Quantiser::new(&QuantConfig {
        bits: Some(7),
        ..with_levels(Ring::U32, 10, 10, 100)
    })
    .unwrap_err();
    assert_eq!(
        e,
        QuantError::InvalidBits {
            bits: 7,
            ring: Ring::U32
        }
    );
    // A width announced too narrow for the scale is refused (the site's check).
    let q = Quantiser::new(&with_levels(Ring::U32, 100, 100, DEFAULT_LEVELS)).expect("config");
    let at = |bits| QuantConfig {
        scale: Some(q.scale()),
        bits: Some(bits),
        min_levels: 1,
        ..QuantConfig::new(Ring::U32, 4.0, 100, 100)
    };
    assert_eq!(Quantiser::new(&at(24)).map(|q| q.bits()), Ok(24));
    assert!(matches!(
        Quantiser::new(&at(23)),
        Err(QuantError::Overflow { half_bits: 22, .. })
    ));
}

/// Sums whose element slots are right only modulo 2^b (as after unmasking
/// masks that were reduced mod 2^b) decode like the exact sum.
#[test]
fn elements_decode_modulo_two_to_the_b() {
    let q = Quantiser::new(&with_levels(Ring::U32, 50, 10, 1 << 12)).expect("config");
    let b = q.bits();
    assert!(b < 32);
    let mut r = rng(9);
    let sites: Vec<Vec<u32>> = [0.9f32, -1.5, -4.0, 3.9]
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            q.encode(&[x, -x, 0.0], 10 + i as u64, &[7], &mut r)
                .expect("encode")
        })
        .collect();
    let mut exact = vec![0u32; 5];
    for v in &sites {
        crate::ring::add_assign(&mut exact, v);
    }
    let mut noisy = exact.clone();
    for (i, x) in noisy.iter_mut().take(3).enumerate() {
        // Garbage above bit b, as the container-width masks leave there.
        *x = x.wrapping_add((i as u32 + 1).wrapping_mul(0x9E37_79B9) << b);
    }
    let want = q.decode(&exact, 3, 4).expect("exact");
    assert_eq!(q.decode(&noisy, 3, 4), Ok(want.clone()));
    assert_eq!(want.total_weight, 46);
    assert_eq!(want.extras, vec![28]);
}

#[test]
fn a_draw_below_frac_times_two_to_the_32_rounds_up_and_no_other() {
    // With frac = k / 2^32 the draw u (as unsigned) rounds up iff u < k.
    for k in [1u32, 2, 3, 1 << 20, (1 << 31) - 1, 1 << 31, u32::MAX] {
        let frac = f64::from(k) / TWO_POW_32;
        let as_draw = |u: u32| draw(&u.to_le_bytes());
        assert!(rounds_up(frac, as_draw(k - 1)), "k {k}: u = k - 1");
        assert!(!rounds_up(frac, as_draw(k)), "k {k}: u = k");
        assert!(rounds_up(frac, as_draw(0)), "k {k}: u = 0");
    }
    let never = |u: u32| rounds_up(0.0, draw(&u.to_le_bytes()));
    assert!(!never(0) && !never(u32::MAX) && !never(1 << 31));
}

#[test]
fn the_first_non_finite_element_is_found_across_batches() {
    let n = 3 * ROUNDING_BATCH + 7;
    assert_eq!(first_non_finite(&vec![1.5f32; n]), None);
    assert_eq!(first_non_finite(&[]), None);
    for at in [
        0,
        1,
        ROUNDING_BATCH - 1,
        ROUNDING_BATCH,
        2 * ROUNDING_BATCH + 3,
        n - 1,
    ] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut xs = vec![-0.25f32; n];
            xs[at] = bad;
            // A later one does not hide the first.
            xs[n - 1] = f32::NAN;
            assert_eq!(first_non_finite(&xs), Some(at), "{bad} at {at}");
        }
    }
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 100, 100)).expect("config");
    let mut x = vec![0.1f32; 5000];
    x[4321] = f32::NAN;
    let e = q.encode::<u32>(&x, 1, &[], &mut rng(9)).unwrap_err();
    assert!(
        matches!(e, QuantError::NonFinite { index: 4321, .. }),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The all-f64 path gives what the integer path and its clamp give, at
    /// every magnitude it is used for, integers and negatives included.
    #[test]
    fn narrow_rounding_is_wide_rounding_clamped(
        mantissa in -1.0f64..1.0,
        exponent in 0i32..50,
        integral in any::<bool>(),
        u in any::<u32>(),
        cap_exp in 0u32..50,
    ) {
        let mut v = mantissa * 2f64.powi(exponent);
        if integral {
            v = v.trunc();
        }
        let cap = (1i64 << cap_exp) - 1;
        let d = draw(&u.to_le_bytes());
        let narrow = round_narrow(v, d, cap as f64);
        let wide = round_wide(v, d).clamp(-cap, cap);
        prop_assert_eq!(narrow, wide, "v {} u {} cap {}", v, u, cap);
        // And it is a stochastic rounding: ⌊v⌋ or ⌊v⌋ + 1, before the clamp.
        let unclamped = round_wide(v, d);
        prop_assert!(unclamped as f64 >= v.floor() && unclamped as f64 <= v.floor() + 1.0);
    }
}
