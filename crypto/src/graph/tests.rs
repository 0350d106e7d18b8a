//! Unit tests of the neighbour graph and parameter choice.

use super::*;
use std::collections::BTreeSet;

fn seed(b: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = b;
    s[31] = b.wrapping_mul(7);
    s
}

fn check_regular(g: &NeighbourGraph) {
    for i in 0..g.n() {
        let nb = g.neighbours(i);
        assert_eq!(nb.len(), g.k(), "site {i} degree");
        assert!(nb.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert!(!nb.contains(&i), "self loop at {i}");
        for &j in nb {
            assert!(g.neighbours(j).contains(&i), "{i}-{j} not symmetric");
        }
        for j in 0..g.n() {
            assert_eq!(
                g.are_neighbours(i, j),
                nb.contains(&j),
                "are_neighbours({i}, {j})"
            );
        }
    }
}

#[test]
fn harary_is_regular_symmetric_loop_free() {
    for (n, k) in [
        (2, 1),
        (3, 2),
        (10, 3),
        (10, 4),
        (11, 4),
        (20, 7),
        (64, 10),
        (101, 6),
    ] {
        let g = NeighbourGraph::harary(n, k, &seed(n as u8)).expect("graph");
        assert_eq!((g.n(), g.k()), (n, k));
        check_regular(&g);
    }
}

#[test]
fn complete_when_k_is_n_minus_one() {
    for n in [2, 3, 8, 9] {
        let g = NeighbourGraph::harary(n, n - 1, &seed(1)).expect("graph");
        for i in 0..n {
            let want: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            assert_eq!(g.neighbours(i), want.as_slice());
        }
    }
}

#[test]
fn deterministic_per_seed() {
    let a = NeighbourGraph::harary(50, 6, &seed(3)).expect("graph");
    let b = NeighbourGraph::harary(50, 6, &seed(3)).expect("graph");
    let c = NeighbourGraph::harary(50, 6, &seed(4)).expect("graph");
    assert_eq!(a, b);
    assert_ne!(a, c);
    let edges = |g: &NeighbourGraph| -> BTreeSet<(usize, usize)> {
        (0..g.n())
            .flat_map(|i| g.neighbours(i).iter().map(move |&j| (i.min(j), i.max(j))))
            .collect()
    };
    assert_ne!(edges(&a), edges(&c));
    assert_eq!(edges(&a).len(), 50 * 6 / 2);
}

#[test]
fn out_of_range_queries_are_safe() {
    let g = NeighbourGraph::harary(6, 2, &seed(5)).expect("graph");
    assert!(g.neighbours(6).is_empty());
    assert!(!g.are_neighbours(0, 6));
    assert!(!g.are_neighbours(2, 2));
}

#[test]
fn harary_rejects_bad_shapes() {
    let s = seed(0);
    assert_eq!(
        NeighbourGraph::harary(1, 1, &s),
        Err(GraphError::TooFewSites { n: 1 })
    );
    assert_eq!(
        NeighbourGraph::harary(5, 0, &s),
        Err(GraphError::ZeroDegree)
    );
    assert_eq!(
        NeighbourGraph::harary(5, 5, &s),
        Err(GraphError::DegreeTooLarge { n: 5, k: 5 })
    );
    let e = NeighbourGraph::harary(5, 3, &s).unwrap_err();
    assert_eq!(e, GraphError::OddDegreeOddCohort { n: 5, k: 3 });
    assert_eq!(
        e.to_string(),
        "odd degree k = 3 needs an even cohort size, got n = 5"
    );
}

#[test]
fn validate_rejects_bad_params() {
    let ok = |n, k, t| validate(n, SecAggParams { k, t });
    assert_eq!(ok(10, 9, 5), Ok(()));
    assert_eq!(ok(10, 3, 2), Ok(()));
    assert_eq!(ok(2, 1, 1), Ok(()));
    assert_eq!(ok(1, 1, 1), Err(GraphError::TooFewSites { n: 1 }));
    assert_eq!(ok(10, 0, 0), Err(GraphError::ZeroDegree));
    assert_eq!(
        ok(10, 10, 6),
        Err(GraphError::DegreeTooLarge { n: 10, k: 10 })
    );
    assert_eq!(
        ok(9, 3, 2),
        Err(GraphError::OddDegreeOddCohort { n: 9, k: 3 })
    );
    let low = ok(10, 4, 2).unwrap_err();
    assert_eq!(low, GraphError::ThresholdTooLow { k: 4, t: 2 });
    assert!(low.to_string().contains("exceed k/2 = 2"), "{low}");
    assert_eq!(
        ok(10, 4, 5),
        Err(GraphError::ThresholdTooHigh { k: 4, t: 5 })
    );
}

/// Exact `ln P[H > c]` for `H ~ Hypergeometric(population, successes, draws)`.
fn ln_hypergeom_tail(population: usize, successes: usize, draws: usize, c: usize) -> f64 {
    let denom = ln_choose(population, draws);
    let mut tail = f64::NEG_INFINITY;
    for j in (c + 1)..=draws.min(successes) {
        if draws - j > population - successes {
            continue;
        }
        let term = ln_choose(successes, j) + ln_choose(population - successes, draws - j) - denom;
        tail = ln_add(tail, term);
    }
    tail
}

fn ln_binom_tail(k: usize, p: f64, c: usize) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    ((c + 1)..=k).fold(f64::NEG_INFINITY, |acc, j| {
        ln_add(
            acc,
            ln_choose(k, j) + j as f64 * p.ln() + (k - j) as f64 * (-p).ln_1p(),
        )
    })
}

#[test]
fn choose_meets_its_inequalities() {
    for n in [3, 10, 100, 1000] {
        for (delta, gamma) in [(0.1, 0.1), (0.3, 0.1), (0.2, 0.3)] {
            let ch = choose_detailed(n, delta, gamma, 40, 20).expect("feasible");
            let SecAggParams { k, t } = ch.params;
            assert_eq!(choose(n, delta, gamma, 40, 20), Ok(ch.params));
            validate(n, ch.params).expect("valid");
            assert!(2 * t > k + ch.c, "security n={n} {ch:?}");
            assert!(t + ch.d <= k, "correctness n={n} {ch:?}");
            assert_eq!(ch.c, count_up(gamma, n).min(k), "worst case n={n}");
            assert!(t >= secure_threshold(k, count_up(gamma, n)), "n={n}");
            assert!(ch.d <= count(delta, n));
            if k < n - 1 {
                let removed = count_up(gamma, n) + count(delta, n);
                assert!(ln_disconnect(n, k, removed) <= -41.0 * std::f64::consts::LN_2);
                // The binomial bound really dominates the exact
                // hypergeometric tail at the chosen dropout cut-off.
                let (bad, cut) = (count(delta, n), ch.d);
                let h = ln_hypergeom_tail(n - 1, bad, k, cut);
                let b = ln_binom_tail(k, bad as f64 / (n - 1) as f64, cut);
                assert!(
                    h <= b + 1e-9,
                    "n={n} k={k} cut={cut}: hyper {h} > binom {b}"
                );
            }
        }
    }
}

#[test]
fn choose_small_cohorts_use_complete_graph() {
    assert_eq!(choose(3, 0.1, 0.1, 40, 20), Ok(SecAggParams { k: 2, t: 2 }));
    // n = 10, C = D = 1: k = 4 already works deterministically — at most
    // 1 colluding and 1 dropped neighbour, and removing 2 < 2·⌊4/2⌋ sites
    // cannot disconnect the graph; t = ⌊(4 + 1)/2⌋ + 1 = 3 ≤ 4 − 1.
    assert_eq!(
        choose(10, 0.1, 0.1, 40, 20),
        Ok(SecAggParams { k: 4, t: 3 })
    );
    // n = 5, γ = δ = 0.2 → C = D = 1; only k = 4 = n − 1 is possible
    // (k = 2 can be cut by the 2 bad sites, odd k needs even n).
    assert_eq!(choose(5, 0.2, 0.2, 40, 20), Ok(SecAggParams { k: 4, t: 3 }));
    // n = 2 with no tolerated bad sites.
    assert_eq!(choose(2, 0.0, 0.0, 40, 20), Ok(SecAggParams { k: 1, t: 1 }));
}

#[test]
fn colluders_are_counted_up() {
    // Small cohorts never assume zero colluders at a positive fraction.
    for (n, gamma, c) in [
        (3, 0.1, 1),
        (5, 0.1, 1),
        (9, 0.1, 1),
        (10, 0.1, 1),
        (11, 0.1, 2),
    ] {
        assert_eq!(colluders(n, gamma), Ok(c), "n={n} γ={gamma}");
    }
    // Float error just above an integer does not add a colluder.
    assert_eq!(colluders(100, 0.29), Ok(29));
    assert_eq!(colluders(20, 0.0), Ok(0));
    assert!(colluders(20, 1.0).is_err());
    // Explicit parameters at n = 20, k = 19: the threshold must beat
    // ⌈0.1·20⌉ = 2 colluders, so t ≥ ⌊21/2⌋ + 1 = 11.
    assert_eq!(secure_threshold(19, 2), 11);
    // A sparse graph gets the same worst case: the coordinator picks the
    // seed, so all 20 colluders of 200 may sit around one victim.
    assert_eq!(secure_threshold(20, 20), 21);
    assert_eq!(secure_threshold(30, 10), 21);
    assert_eq!(secure_threshold(0, 0), usize::MAX);
}

#[test]
fn complete_graph_parameters() {
    // 5 sites, γ = δ = 0.1 → one colluder, no dropout assumed: t = 3 of k = 4.
    assert_eq!(
        choose_complete(5, 0.1, 0.1),
        Ok(SecAggParams { k: 4, t: 3 })
    );
    // 20 sites: c = 2, d = 2 → t = ⌊(19 + 2)/2⌋ + 1 = 11 ≤ 17.
    assert_eq!(
        choose_complete(20, 0.1, 0.1),
        Ok(SecAggParams { k: 19, t: 11 })
    );
    // Every chosen threshold meets the site's floor for the same colluders.
    for n in 3..40 {
        let p = choose_complete(n, 0.1, 0.1).expect("feasible");
        let c = colluders(n, 0.1).expect("γ");
        assert!(p.t >= secure_threshold(p.k, c), "n={n}");
        validate(n, p).expect("valid");
    }
    assert!(matches!(
        choose_complete(4, 0.3, 0.3),
        Err(GraphError::NoParameters { .. })
    ));
}

#[test]
fn choose_refuses_infeasible_inputs() {
    let e = choose(100, 0.5, 0.1, 40, 20).unwrap_err();
    assert!(matches!(e, GraphError::Infeasible { .. }));
    let msg = e.to_string();
    for needle in ["δ = 0.5", "γ = 0.1", "γ + 2δ = 1.1 ≥ 1", "fewer dropouts"] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }
    assert!(matches!(
        choose(100, 1.0, 0.0, 40, 20),
        Err(GraphError::InvalidRate { .. })
    ));
    assert!(matches!(
        choose(100, 0.1, f64::NAN, 40, 20),
        Err(GraphError::InvalidRate { .. })
    ));
    assert!(matches!(
        choose(1, 0.1, 0.1, 40, 20),
        Err(GraphError::TooFewSites { n: 1 })
    ));
    // Feasible rates, but a tiny cohort cannot absorb the worst case:
    // n = 4, γ = 0.25, δ = 0.3 → C = D = 1, k = 3, t = 3 > 3 − 1.
    let e = choose(4, 0.3, 0.25, 40, 20).unwrap_err();
    assert!(
        matches!(
            e,
            GraphError::NoParameters {
                n: 4,
                c: 1,
                d: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("n = 4"), "{e}");
}

#[test]
fn binomial_quantile_sanity() {
    // P[Bin(10, 0.5) > 9] = 2^-10, P[> 8] = 11 · 2^-10.
    let ln = |x: f64| x.ln();
    assert_eq!(binom_upper_quantile(10, 0.5, ln(1.0 / 1024.0) + 1e-12), 9);
    assert_eq!(binom_upper_quantile(10, 0.5, ln(11.0 / 1024.0) + 1e-12), 8);
    assert_eq!(binom_upper_quantile(10, 0.5, ln(0.5e-3)), 10);
    assert_eq!(binom_upper_quantile(10, 0.0, -50.0), 0);
    assert_eq!(binom_upper_quantile(10, 1.0, -50.0), 10);
    // Stirling branch agrees with the direct sum.
    let direct: f64 = (2..=40).map(|i| (i as f64).ln()).sum();
    assert!((ln_factorial(40) - direct).abs() < 1e-12);
}

#[test]
fn print_parameter_table() {
    println!("n      k     t     c     d     (δ = γ = 0.1, σ = 40, η = 20)");
    for n in [10, 100, 1000, 10_000] {
        let ch = choose_detailed(n, 0.1, 0.1, 40, 20).expect("feasible");
        println!(
            "{n:<6} {:<5} {:<5} {:<5} {:<5}",
            ch.params.k, ch.params.t, ch.c, ch.d
        );
    }
}
