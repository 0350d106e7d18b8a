//! Property tests over random cohorts, parameters, dropout patterns at every
//! stage and message orders. The number of cases defaults to 2000 (and 500 for the
//! quantisation property); set `CONFIDE_PROPTEST_CASES` for more.

use std::collections::BTreeSet;

use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::protocol::{MemberId, SitePolicy, Stage};
use confide_crypto::quant::{QuantConfig, Quantiser};
use confide_crypto::ring::{Ring, RingElement};
use confide_crypto::sim::Simulation;
use confide_crypto::{ProtocolError, Suite};
use proptest::prelude::*;
use rand::SeedableRng;

fn cases(default: u32) -> u32 {
    std::env::var("CONFIDE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The wrapping sum of the inputs of `members` that are in `survivors`.
fn sum_of(
    members: &[MemberId],
    x: &[Vec<u32>],
    survivors: &BTreeSet<MemberId>,
    len: usize,
) -> Vec<u32> {
    let mut sum = vec![0u32; len];
    for (m, v) in members.iter().zip(x) {
        if survivors.contains(m) {
            for (a, b) in sum.iter_mut().zip(v) {
                *a = a.wrapping_add(*b);
            }
        }
    }
    sum
}

/// Independent statement of when a round must succeed, and with whom.
fn oracle(sim: &Simulation, vector_len: usize) -> Result<BTreeSet<MemberId>, &'static str> {
    let cfg = sim.config::<u32>(vector_len);
    let topo = cfg.topology().map_err(|_| "config")?;
    let t = sim.params.t;
    let alive = |set: &BTreeSet<MemberId>, stage: Stage| -> BTreeSet<MemberId> {
        set.iter()
            .copied()
            .filter(|m| sim.drops.get(m).is_none_or(|&s| s > stage))
            .collect()
    };
    let nb_in = |u: MemberId, set: &BTreeSet<MemberId>| {
        topo.neighbours(u)
            .iter()
            .filter(|v| set.contains(v))
            .count()
    };
    let prune = |set: &mut BTreeSet<MemberId>| loop {
        let weak: Vec<MemberId> = set.iter().copied().filter(|&u| nb_in(u, set) < t).collect();
        if weak.is_empty() {
            break;
        }
        for u in weak {
            set.remove(&u);
        }
    };
    let all: BTreeSet<MemberId> = sim.members.iter().copied().collect();
    let mut u1 = alive(&all, Stage::AdvertiseKeys);
    prune(&mut u1);
    if u1.len() < sim.min_survivors {
        return Err("too few after advertise");
    }
    let mut u2 = alive(&u1, Stage::ShareKeys);
    prune(&mut u2);
    if u2.len() < sim.min_survivors {
        return Err("too few after share");
    }
    let u3 = alive(&u2, Stage::MaskedInput);
    if u3.len() < sim.min_survivors {
        return Err("too few inputs");
    }
    if u3.iter().any(|&u| nb_in(u, &u3) < t) {
        return Err("survivor below threshold");
    }
    // The survivor masking graph must survive the removal of any
    // max_colluders survivors (else partial sums would come out).
    let ids: Vec<MemberId> = u3.iter().copied().collect();
    let adj: Vec<Vec<usize>> = ids
        .iter()
        .map(|&u| {
            (0..ids.len())
                .filter(|&j| topo.are_neighbours(u, ids[j]))
                .collect()
        })
        .collect();
    if !graph::connectivity::survives_removal(&adj, sim.max_colluders) {
        return Err("survivor graph splits without some colluders");
    }
    // Sites sign only a set at least as large as their own minimum (3) and
    // the quorum; the coordinator needs a quorum of signers.
    let quorum = cfg.quorum();
    let signers = if u3.len() >= sim.min_survivors.max(sim.policy.min_survivors).max(quorum) {
        alive(&u3, Stage::Consistency)
    } else {
        BTreeSet::new()
    };
    if signers.len() < quorum {
        return Err("no quorum on the survivor set");
    }
    let u5 = alive(&signers, Stage::Unmask);
    if u3.iter().any(|&u| nb_in(u, &u5) < t) {
        return Err("self mask not reconstructible");
    }
    // Only peers some survivor masked with need their mask key rebuilt.
    let dropped: BTreeSet<MemberId> = u2
        .difference(&u3)
        .copied()
        .filter(|&v| u3.iter().any(|&u| topo.are_neighbours(u, v)))
        .collect();
    if dropped.iter().any(|&v| nb_in(v, &u5) < t) {
        return Err("mask key not reconstructible");
    }
    Ok(u3)
}

fn scenario() -> impl Strategy<Value = (Simulation, usize)> {
    (
        3usize..=9,
        any::<bool>(),
        any::<u64>(),
        1usize..=24,
        0u32..100,
    )
        .prop_flat_map(|(n, gm, seed, len, drop_pct)| {
            let suite = if gm { Suite::Gm } else { Suite::Intl };
            // Valid degrees: 2..=n-1, odd degree needs even n.
            let ks: Vec<usize> = (2..n).filter(|k| k % 2 == 0 || n % 2 == 0).collect();
            (
                proptest::sample::select(ks),
                Just((n, suite, seed, len, drop_pct)),
            )
                .prop_flat_map(|(k, rest)| ((k / 2 + 1)..=k, Just(k), Just(rest)))
                .prop_flat_map(|(t, k, (n, suite, seed, len, drop_pct))| {
                    let drops = proptest::collection::vec(
                        (
                            0u32..100,
                            proptest::sample::select(vec![
                                Stage::AdvertiseKeys,
                                Stage::ShareKeys,
                                Stage::MaskedInput,
                                Stage::Consistency,
                                Stage::Unmask,
                            ]),
                        ),
                        n,
                    );
                    (Just((n, k, t, suite, seed, len, drop_pct)), drops)
                })
                .prop_map(|((n, k, t, suite, seed, len, drop_pct), drops)| {
                    let mut sim = Simulation::new(suite, n, SecAggParams { k, t }).with_seed(seed);
                    sim.min_survivors = t.clamp(2, n);
                    for (i, (roll, stage)) in drops.into_iter().enumerate() {
                        if roll < drop_pct / 2 {
                            sim = sim.drop_at(i as MemberId + 1, stage);
                        }
                    }
                    (sim, len)
                })
        })
}

fn inputs<R: RingElement>(n: usize, len: usize, seed: u64) -> Vec<Vec<R>> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..len).map(|_| R::from_u64(rng.next_u64())).collect())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), failure_persistence: None, ..ProptestConfig::default() })]

    /// Whenever the threshold holds the result is the exact ring sum of the
    /// survivors' inputs; otherwise the round fails with a typed error.
    #[test]
    fn unmasked_sum_is_exact_or_round_fails_cleanly((sim, len) in scenario()) {
        let x = inputs::<u32>(sim.members.len(), len, sim.seed);
        let expected = oracle(&sim, len);
        let out = sim.run(&x).map_err(|e| TestCaseError::fail(format!("harness: {e}")))?;
        match (expected, out.result) {
            (Ok(survivors), Ok(r)) => {
                prop_assert_eq!(r.survivors.iter().copied().collect::<BTreeSet<_>>(), survivors.clone());
                prop_assert_eq!(r.sum, sum_of(&sim.members, &x, &survivors, len));
            }
            (Err(why), Err(e)) => {
                prop_assert!(
                    matches!(e, ProtocolError::TooFewSurvivors { .. } | ProtocolError::BelowThreshold { .. }
                        | ProtocolError::Reconstruction { .. } | ProtocolError::Inconsistent(_)),
                    "expected failure ({}) but got unexpected error {:?}", why, e
                );
            }
            (Ok(s), Err(e)) => prop_assert!(false, "oracle expected success with {:?}, got {:?}", s, e),
            (Err(why), Ok(r)) => prop_assert!(false, "oracle expected failure ({}), got survivors {:?}", why, r.survivors),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000) / 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Quantise real updates, aggregate securely, dequantise: the weighted mean
    /// is within the documented bound of the f64 weighted mean of the clipped inputs.
    #[test]
    fn secure_weighted_mean_is_within_the_documented_bound(
        n in 3usize..=7,
        gm in any::<bool>(),
        u64ring in any::<bool>(),
        seed in any::<u64>(),
        updates in proptest::collection::vec(proptest::collection::vec(-3.0f32..3.0, 12), 7),
        weights in proptest::collection::vec(1u64..=500, 7),
        drop_one in any::<bool>(),
    ) {
        let suite = if gm { Suite::Gm } else { Suite::Intl };
        let ring = if u64ring { Ring::U64 } else { Ring::U32 };
        let q = Quantiser::new(&QuantConfig::new(ring, 1.0, 500, n)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sim = Simulation::new(suite, n, SecAggParams { k: n - 1, t: (n - 1) / 2 + 1 }).with_seed(seed);
        let drop_one = drop_one && n >= 4;
        if drop_one { sim = sim.drop_at(1, Stage::MaskedInput); }
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let check = |sum_mean: Vec<f64>, total: u64, contributors: usize| -> Result<(), TestCaseError> {
            let live: Vec<usize> = (0..n).filter(|&i| !(drop_one && i == 0)).collect();
            let wsum: f64 = live.iter().map(|&i| weights[i] as f64).sum();
            prop_assert_eq!(total as f64, wsum);
            let bound = q.error_bound(contributors, total);
            for j in 0..12 {
                let exact: f64 = live.iter().map(|&i| weights[i] as f64 * (updates[i][j] as f64).clamp(-1.0, 1.0)).sum::<f64>() / wsum;
                prop_assert!((sum_mean[j] - exact).abs() <= bound, "element {}: {} vs {} (bound {})", j, sum_mean[j], exact, bound);
            }
            Ok(())
        };
        macro_rules! run {
            ($t:ty) => {{
                let x: Vec<Vec<$t>> = (0..n)
                    .map(|i| q.encode::<$t>(&updates[i], weights[i], &[], &mut rng))
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let r = sim.run(&x).map_err(|e| TestCaseError::fail(e.to_string()))?.result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let d = q.decode(&r.sum, 12, r.survivors.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                check(d.mean, d.total_weight, r.survivors.len())?;
            }};
        }
        if u64ring { run!(u64) } else { run!(u32) }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000) / 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Telling the coordinator that a dropped member has gone (its connection
    /// closed) changes when stages close, never the verdict: the same sum of
    /// the same survivors, or the same failure, as waiting out every
    /// deadline — and, when no site refused anything, without waiting for
    /// a single deadline.
    #[test]
    fn member_gone_notices_give_the_deadline_verdict_without_the_wait((sim, len) in scenario()) {
        let x = inputs::<u32>(sim.members.len(), len, sim.seed);
        let waited = sim.run(&x).map_err(|e| TestCaseError::fail(format!("harness: {e}")))?;
        let told = sim.clone().notifying_gone().run(&x).map_err(|e| TestCaseError::fail(format!("harness: {e}")))?;
        match (&waited.result, &told.result) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.survivors, &b.survivors);
                prop_assert_eq!(&a.sum, &b.sum);
            }
            (Err(a), Err(b)) => prop_assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{:?} vs {:?}", a, b),
            (a, b) => prop_assert!(false, "deadline verdict {:?}, notified verdict {:?}", a.as_ref().map(|r| &r.survivors), b.as_ref().map(|r| &r.survivors)),
        }
        if told.site_errors.is_empty() {
            prop_assert!(told.elapsed < std::time::Duration::from_secs(60), "waited {:?}", told.elapsed);
        }
    }
}

/// A sparse cohort as an honest coordinator would run it: the default site
/// policy, the chooser's k and t for δ = γ = 0.1, ⌈γ·n⌉ colluders assumed, and
/// up to ⌊δ·n⌋ sites dropping at random stages.
fn sparse_scenario() -> impl Strategy<Value = Simulation> {
    (60usize..=100, any::<bool>(), any::<u64>()).prop_flat_map(|(n, gm, seed)| {
        let drops = proptest::collection::btree_map(
            1..=n as MemberId,
            proptest::sample::select(vec![
                Stage::AdvertiseKeys,
                Stage::ShareKeys,
                Stage::MaskedInput,
                Stage::Consistency,
                Stage::Unmask,
            ]),
            0..=n / 10,
        );
        (Just((n, gm, seed)), drops).prop_map(|((n, gm, seed), drops)| {
            let suite = if gm { Suite::Gm } else { Suite::Intl };
            let params = graph::choose(n, 0.1, 0.1, 40, 20).expect("parameters");
            let mut sim = Simulation::new(suite, n, params)
                .with_seed(seed)
                .with_policy(SitePolicy::default());
            sim.max_colluders = graph::colluders(n, 0.1).expect("γ");
            sim.min_survivors = params.t;
            for (m, stage) in drops {
                sim = sim.drop_at(m, stage);
            }
            sim
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000) / 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// With at most δ·n dropouts a sparse round succeeds with the exact sum:
    /// the connectivity rule refuses no honest round the chooser plans for.
    #[test]
    fn sparse_rounds_with_planned_dropouts_succeed(sim in sparse_scenario()) {
        let len = 4;
        let x = inputs::<u32>(sim.members.len(), len, sim.seed);
        let expected = oracle(&sim, len).map_err(|why| TestCaseError::fail(format!("oracle: {why}")))?;
        let out = sim.run(&x).map_err(|e| TestCaseError::fail(format!("harness: {e}")))?;
        let r = out.result.map_err(|e| TestCaseError::fail(format!("round failed: {e}")))?;
        prop_assert_eq!(r.survivors.iter().copied().collect::<BTreeSet<_>>(), expected.clone());
        prop_assert_eq!(r.sum, sum_of(&sim.members, &x, &expected, len));
    }
}
