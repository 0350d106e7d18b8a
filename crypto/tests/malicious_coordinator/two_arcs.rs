//! The sparse-graph partition attack: the coordinator knows the ring before it
//! decides who "dropped", so with its colluders placed in two gaps of the ring
//! (a ground seed places them) it drops the rest of each gap. Every survivor
//! still masked with at least t survivors, mutually — yet with the colluders
//! removed the honest survivors form two arcs with no unknown mask between
//! them, and each arc's sum would come out separately. Default site policy:
//! n = 200, γ = 0.1 (20 colluders assumed), k = 20 and the lowest threshold
//! the sites accept, t = 19.

use std::collections::BTreeSet;

use confide_crypto::graph::{self, NeighbourGraph, SecAggParams};
use confide_crypto::protocol::{RoundConfig, SitePolicy, UnmaskRequest};
use confide_crypto::suite::Suite;
use confide_crypto::{MemberId, ProtocolError};

use super::harness::{self, World, honest_config};

const N: usize = 200;
const K: usize = 20;

struct Attack {
    cfg: RoundConfig,
    colluders: Vec<MemberId>,
    dropped: Vec<MemberId>,
    survivors: Vec<MemberId>,
    arcs: [BTreeSet<MemberId>; 2],
}

/// Ring positions 0..200: gaps [90, 100) and [190, 200), each holding nine
/// colluders around one dropped site at its middle; the arcs are the rest.
fn attack() -> Attack {
    let base = honest_config(Suite::Intl, N, [8; 32]);
    let c = base.max_colluders;
    let policy = SitePolicy::default();
    let t = graph::secure_threshold(N, K, c, policy.sigma);
    assert_eq!((c, t), (20, 19), "the sites' own floor");
    let cfg = RoundConfig {
        params: SecAggParams { k: K, t },
        min_survivors: t,
        ..base
    };
    let ring = NeighbourGraph::harary(N, K, &cfg.graph_seed).expect("graph");
    let at = |p: usize| -> MemberId {
        let i = (0..N)
            .find(|&i| ring.position(i) == Some(p))
            .expect("position");
        cfg.cohort[i]
    };
    let gap = |p: usize| p % 100 >= 90;
    let colluders: Vec<MemberId> = (0..N)
        .filter(|&p| gap(p) && p % 100 != 94)
        .map(at)
        .collect();
    let dropped: Vec<MemberId> = [94, 194].into_iter().map(at).collect();
    let arc = |lo: usize| (lo..lo + 90).map(at).collect::<BTreeSet<_>>();
    let mut survivors: Vec<MemberId> = cfg
        .cohort
        .iter()
        .copied()
        .filter(|m| !dropped.contains(m))
        .collect();
    survivors.sort_unstable();
    assert_eq!(colluders.len(), 18);
    Attack {
        arcs: [arc(0), arc(100)],
        cfg,
        colluders,
        dropped,
        survivors,
    }
}

/// Everyone but the two dropped sites gets through masking.
fn world(a: &Attack, check: bool) -> World {
    let cfg = a.cfg.clone();
    let mut w = World::new(
        Suite::Intl,
        &a.cfg.cohort,
        |_| cfg.clone(),
        &a.colluders,
        13,
    );
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    if !check {
        for site in w.sites.values_mut() {
            site.without_connectivity_check();
        }
    }
    let members = a.cfg.cohort.clone();
    for &m in &members {
        let ads = w.honest_adverts(m);
        w.send_keys(m, ads);
    }
    for &m in &members {
        let s = w.shares_for(m);
        w.send_shares(m, s);
    }
    for &m in members.iter().filter(|m| !a.dropped.contains(m)) {
        w.mask(m);
    }
    w
}

/// Honest sites sign; colluders sign anything. Unmask at the honest signers if
/// that makes a quorum.
fn run(w: &mut World, a: &Attack) -> usize {
    let req = w.request(&a.survivors);
    let mut sigs = Vec::new();
    let mut honest_signers = Vec::new();
    for &m in &a.survivors {
        if a.colluders.contains(&m) {
            sigs.push(w.forge(m, &a.survivors, m));
        } else if let Some(s) = w.ask_to_sign(m, req.clone()) {
            sigs.push(s);
            honest_signers.push(m);
        }
    }
    if sigs.len() >= a.cfg.quorum() {
        for &m in &honest_signers {
            w.ask_to_unmask(
                m,
                UnmaskRequest {
                    round: harness::ROUND,
                    survivors: a.survivors.clone(),
                    signatures: sigs.clone(),
                },
            );
        }
    }
    honest_signers.len()
}

#[test]
fn survivors_split_into_two_arcs_by_colluders_are_refused_at_200() {
    let a = attack();
    let honest = a.arcs[0].len() + a.arcs[1].len();
    assert_eq!(honest, 180);

    // Teeth first: with the connectivity rule switched off, every existing
    // check passes, all 180 honest sites sign and reveal, and the oracle
    // computes each arc's sum on its own.
    let mut w = world(&a, false);
    assert_eq!(run(&mut w, &a), honest, "{:?}", w.errors);
    let mut found: Vec<BTreeSet<MemberId>> =
        w.leaks(honest).into_iter().map(|l| l.honest).collect();
    found.sort();
    let mut want = a.arcs.to_vec();
    want.sort();
    assert_eq!(found, want);

    // With the rule every honest survivor refuses: removing the 18 colluders
    // (at most the 20 assumed) splits the masking graph.
    let mut w = world(&a, true);
    assert_eq!(run(&mut w, &a), 0);
    for m in a.arcs.iter().flatten() {
        assert!(
            matches!(w.errors.get(m), Some(ProtocolError::Inconsistent(why)) if why.contains("split")),
            "{m}: {:?}",
            w.errors.get(m)
        );
    }
    assert!(w.leaks(honest).is_empty());
    assert!(w.leaks(2).is_empty());
}
