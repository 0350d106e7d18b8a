//! Sparse graphs against a coordinator that chooses the graph seed. Grinding
//! the seed amounts to choosing where its colluders sit on the ring, so each
//! test here picks the colluders' positions outright — the worst a ground
//! seed can reach. Cohort 200, γ = 0.1: 20 colluders assumed.
//!
//! - Surrounding a victim: with all its neighbours colluding, the threshold
//!   alone protects its self-mask seed. A site that took the colluding
//!   neighbours of a *random* placement as its bound would accept k = 20,
//!   t = 19 — and the victim's input comes out alone. The sites' worst-case
//!   threshold refuses that, and at the smallest degree it accepts (k = 22,
//!   t = 22) the same placement learns nothing.
//! - Two arcs: colluders and dropped sites filling two gaps of ⌊k/2⌋ cut the
//!   ring; at the accepted parameters some survivor then masked with fewer
//!   than t survivors, so every honest site refuses, even with the
//!   connectivity rule switched off.

use std::collections::BTreeSet;

use confide_crypto::graph::{self, NeighbourGraph, SecAggParams};
use confide_crypto::protocol::{RoundConfig, SitePolicy, UnmaskRequest};
use confide_crypto::suite::Suite;
use confide_crypto::{MemberId, ProtocolError};

use super::harness::{self, World, honest_config};

const N: usize = 200;
/// ⌈0.1 · 200⌉.
const C: usize = 20;

fn sparse_config(k: usize, t: usize, max_colluders: usize) -> RoundConfig {
    RoundConfig {
        params: SecAggParams { k, t },
        min_survivors: t,
        max_colluders,
        ..honest_config(Suite::Intl, N, [8; 32])
    }
}

/// The member at each ring position of `cfg`'s graph.
fn ring_order(cfg: &RoundConfig) -> Vec<MemberId> {
    let ring = NeighbourGraph::harary(N, cfg.params.k, &cfg.graph_seed).expect("graph");
    let mut at = vec![0; N];
    for (i, &m) in cfg.cohort.iter().enumerate() {
        at[ring.position(i).expect("position")] = m;
    }
    at
}

/// Runs the round with `policy` at every site: everyone but `dropped`
/// masks, the survivor set is everyone else, honest sites sign (colluders
/// sign anything) and reveal if that makes a quorum. Returns the world and
/// the number of honest signers.
fn play(
    cfg: &RoundConfig,
    colluders: &[MemberId],
    dropped: &[MemberId],
    policy: &SitePolicy,
    connectivity_check: bool,
) -> (World, usize) {
    let view = cfg.clone();
    let mut w = World::with_policy(
        Suite::Intl,
        &cfg.cohort,
        |_| view.clone(),
        colluders,
        13,
        policy,
    );
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    if !connectivity_check {
        for site in w.sites.values_mut() {
            site.without_connectivity_check();
        }
    }
    for &m in &cfg.cohort {
        let ads = w.honest_adverts(m);
        w.send_keys(m, ads);
    }
    for &m in &cfg.cohort {
        let s = w.shares_for(m);
        w.send_shares(m, s);
    }
    let mut survivors: Vec<MemberId> = cfg
        .cohort
        .iter()
        .copied()
        .filter(|m| !dropped.contains(m))
        .collect();
    survivors.sort_unstable();
    for &m in &survivors {
        w.mask(m);
    }
    let req = w.request(&survivors);
    let mut sigs = Vec::new();
    let mut honest_signers = Vec::new();
    for &m in &survivors {
        if colluders.contains(&m) {
            sigs.push(w.forge(m, &survivors, m));
        } else if let Some(s) = w.ask_to_sign(m, req.clone()) {
            sigs.push(s);
            honest_signers.push(m);
        }
    }
    if sigs.len() >= cfg.quorum() {
        for &m in &honest_signers {
            w.ask_to_unmask(
                m,
                UnmaskRequest {
                    round: harness::ROUND,
                    survivors: survivors.clone(),
                    signatures: sigs.clone(),
                },
            );
        }
    }
    let n = honest_signers.len();
    (w, n)
}

#[test]
fn a_victim_surrounded_by_colluders_stays_hidden_at_the_accepted_threshold() {
    // Teeth: k = 20, t = 19 is what a bound on colluding neighbours for a
    // random placement allows. Sites told (and assuming) no colluders accept
    // it; with the victim's 20 neighbours colluding, the coordinator holds
    // 20 ≥ t shares of its self-mask seed and every pairwise key, and the
    // victim's input comes out alone.
    let weak = sparse_config(20, 19, 0);
    let trusting = SitePolicy {
        collusion_fraction: 0.0,
        ..SitePolicy::default()
    };
    let ring = ring_order(&weak);
    let victim = ring[100];
    let surround: Vec<MemberId> = (90..=110).filter(|&p| p != 100).map(|p| ring[p]).collect();
    assert_eq!(surround.len(), C);
    let (w, signers) = play(&weak, &surround, &[], &trusting, true);
    assert_eq!(signers, N - C, "{:?}", w.errors);
    let alone: Vec<_> = w
        .leaks(2)
        .into_iter()
        .filter(|l| l.honest == BTreeSet::from([victim]))
        .collect();
    assert_eq!(alone.len(), 1, "the victim's input alone is computable");

    // The default policy assumes the worst placement: with 20 colluders no
    // t ≤ 20 is enough, so k = 20 is refused outright.
    assert_eq!(graph::secure_threshold(20, C), 21);
    let e = SitePolicy::default()
        .check(&sparse_config(20, 19, C))
        .expect_err("refused");
    assert!(
        matches!(&e, ProtocolError::Policy(why) if why.contains("at least 21 required")),
        "{e}"
    );

    // The smallest degree it accepts: k = 22, t = 22. The same placement
    // (20 of the victim's 22 neighbours) leaves the coordinator two shares
    // short of either secret, and nothing smaller than the whole honest sum
    // is computable.
    let cfg = sparse_config(22, 22, C);
    SitePolicy::default().check(&cfg).expect("accepted");
    let ring = ring_order(&cfg);
    let surround: Vec<MemberId> = (89..=111)
        .filter(|&p| p != 100 && p != 89 && p != 111)
        .map(|p| ring[p])
        .collect();
    assert_eq!(surround.len(), C);
    let (w, signers) = play(&cfg, &surround, &[], &SitePolicy::default(), true);
    assert_eq!(signers, N - C, "{:?}", w.errors);
    assert!(w.leaks(N - C).is_empty());
}

#[test]
fn survivors_split_into_two_arcs_are_refused_at_the_accepted_threshold() {
    // Gaps [89, 100) and [189, 200) of ⌊22/2⌋ = 11 positions, each ten
    // colluders around one dropped site: removing them cuts the ring in two.
    let cfg = sparse_config(22, 22, C);
    SitePolicy::default().check(&cfg).expect("accepted");
    let ring = ring_order(&cfg);
    let gap = |p: usize| p % 100 >= 89;
    let colluders: Vec<MemberId> = (0..N)
        .filter(|&p| gap(p) && p % 100 != 94)
        .map(|p| ring[p])
        .collect();
    assert_eq!(colluders.len(), C);
    let dropped = [ring[94], ring[194]];
    let honest: Vec<MemberId> = (0..N).filter(|&p| !gap(p)).map(|p| ring[p]).collect();

    // A site next to a gap lost a neighbour: 21 surviving peers < t. Every
    // honest site checks every survivor's masking set, so all refuse —
    // with or without the connectivity rule, which 2t > k + c makes a
    // second line of defence here.
    for check in [false, true] {
        let (w, signers) = play(&cfg, &colluders, &dropped, &SitePolicy::default(), check);
        assert_eq!(signers, 0, "connectivity check {check}");
        for m in &honest {
            assert!(
                matches!(w.errors.get(m), Some(ProtocolError::Inconsistent(why))
                    if why.contains("at least 22 required")),
                "{m}: {:?}",
                w.errors.get(m)
            );
        }
        assert!(w.leaks(honest.len()).is_empty());
    }
}
