//! A coordinator that lies, against real sites with the default policy: one
//! test per attack from the security review, each ending with the isolation
//! oracle (`confide_crypto::sim::isolation`) asked whether any honest input
//! — or any sum of fewer honest inputs than the protocol allows — can be
//! computed from everything the coordinator collected. Then a property test
//! with random lies per site.
//!
//! The plaintext-flag attack has no crypto-level form (a `SiteMachine` has no
//! plaintext mode); the site's refusal is tested in the client crate
//! (`a_plaintext_round_is_refused_unless_the_site_opted_in`).

#[path = "malicious_coordinator/harness.rs"]
mod harness;
#[path = "malicious_coordinator/sparse.rs"]
mod sparse;

use std::collections::BTreeSet;

use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::protocol::{RelayedAdvert, SiteOutput, SitePolicy, UnmaskRequest};
use confide_crypto::suite::Suite;
use confide_crypto::{MemberId, ProtocolError};
use harness::{World, honest_config, view};

fn all(n: usize) -> Vec<MemberId> {
    (1..=n as MemberId).collect()
}

/// Sign `survivors` at every site in it and, given a quorum, unmask at each
/// signer. Returns how many signed.
fn agree_and_unmask(w: &mut World, survivors: &[MemberId]) -> usize {
    let req = w.request(survivors);
    let sigs: Vec<_> = survivors
        .iter()
        .filter_map(|&m| w.ask_to_sign(m, req.clone()))
        .collect();
    let signers: Vec<MemberId> = sigs.iter().map(|s| s.signature.member).collect();
    for m in &signers {
        w.ask_to_unmask(
            *m,
            UnmaskRequest {
                round: harness::ROUND,
                survivors: survivors.to_vec(),
                signatures: sigs.clone(),
            },
        );
    }
    signers.len()
}

#[test]
fn the_oracle_recovers_what_collusion_beyond_the_bound_reveals() {
    // Its teeth: with t = 3 of 5 sites colluding (the round assumes 1), they
    // hold t shares of both secrets of each honest site, so an honest round
    // hands the coordinator x1 and x5 separately; with 4 of 5, x1 (the sum
    // minus the colluders' inputs). Each recovered value is checked against
    // the true input inside the oracle.
    for (colluders, isolated) in [(vec![2, 3, 4], vec![1, 5]), (vec![2, 3, 4, 5], vec![1])] {
        let cfg = honest_config(Suite::Intl, 5, [1; 32]);
        let mut w = World::new(Suite::Intl, &all(5), |_| cfg.clone(), &colluders, 1);
        w.honest_until_masked();
        assert_eq!(agree_and_unmask(&mut w, &all(5)), 5);
        let leaks = w.leaks(2);
        let found: Vec<BTreeSet<MemberId>> = leaks.iter().map(|l| l.honest.clone()).collect();
        let want: Vec<BTreeSet<MemberId>> = isolated.iter().map(|&m| BTreeSet::from([m])).collect();
        assert_eq!(found, want);
        for l in &leaks {
            let m = *l.honest.first().expect("one member");
            assert_eq!(l.sum, w.inputs[&m]);
        }
    }
    // Two colluders (below t) who hand over their shares do not suffice.
    let cfg = honest_config(Suite::Intl, 5, [1; 32]);
    let mut w = World::new(Suite::Intl, &all(5), |_| cfg.clone(), &[2, 3], 1);
    w.honest_until_masked();
    assert_eq!(agree_and_unmask(&mut w, &all(5)), 5);
    assert!(w.leaks(2).is_empty());
}

#[test]
fn an_honest_round_isolates_nothing_within_the_collusion_bound() {
    for suite in Suite::ALL {
        for colluders in [vec![], vec![3]] {
            let cfg = honest_config(suite, 5, [1; 32]);
            let mut w = World::new(suite, &all(5), |_| cfg.clone(), &colluders, 2);
            w.honest_until_masked();
            assert_eq!(agree_and_unmask(&mut w, &all(5)), 5);
            assert!(w.errors.is_empty(), "{:?}", w.errors);
            // Seeds of all five are out; the sum is all the coordinator has.
            assert!(w.leaks(2).is_empty());
        }
    }
}

#[test]
fn withholding_shares_then_calling_the_victims_peers_dropped_is_refused_at_20() {
    // Default chooser at n = 20: complete graph, k = 19, t = 11, 2 colluders
    // assumed, quorum 12. The victim gets only t shares, so it masks with
    // members 2..=12 alone; the coordinator then wants their mask keys
    // ("dropped") and the victim's seed ("survived").
    for suite in Suite::ALL {
        let cfg = honest_config(suite, 20, [2; 32]);
        assert_eq!(cfg.params, SecAggParams { k: 19, t: 11 });
        let mut w = World::new(suite, &all(20), |_| cfg.clone(), &[], 3);
        for m in all(20) {
            let a = w.honest_adverts(m);
            w.send_keys(m, a);
        }
        for m in all(20) {
            let mut s = w.shares_for(m);
            if m == 1 {
                s.retain(|e| (2..=12).contains(&e.from));
            }
            w.send_shares(m, s);
        }
        for m in all(20) {
            w.mask(m);
        }
        assert_eq!(w.masking[&1].peers, (2..=12).collect::<Vec<_>>());
        // The set the attack needs: victim in, its peers out.
        let wanted: Vec<MemberId> = std::iter::once(1).chain(13..=20).collect();
        let mut signed = 0;
        for &m in &wanted {
            signed += usize::from(w.ask_to_sign(m, w.request(&wanted)).is_some());
        }
        assert_eq!(signed, 0, "{suite}: a site signed the withholding set");
        for &m in &wanted {
            assert!(
                matches!(w.errors.get(&m), Some(ProtocolError::Inconsistent(_))),
                "{suite} {m}: {:?}",
                w.errors.get(&m)
            );
        }
        // Nor will anyone unmask on it without signatures.
        for m in 2..=12 {
            w.ask_to_unmask(
                m,
                UnmaskRequest {
                    round: harness::ROUND,
                    survivors: wanted.clone(),
                    signatures: Vec::new(),
                },
            );
        }
        assert!(w.know.seed_shares.is_empty() && w.know.key_shares.is_empty());
        assert!(w.leaks(2).is_empty());
    }
}

#[test]
fn one_sided_pairs_from_withholding_reveal_their_keys_and_no_input_at_20() {
    // As above, but the coordinator keeps everyone a survivor: members 13..=20
    // got the victim's share and masked with it, the victim did not mask with
    // them, so those 8 pairs are one-sided and their keys come out. Two
    // colluders sit among the victim's remaining peers. The victim keeps
    // t = 11 mutual masks, 9 of them with honest peers: the round completes
    // and the oracle finds nothing finer than the sum. One share fewer and
    // every site refuses the set.
    for suite in Suite::ALL {
        for (kept, completes) in [(2..=12, true), (2..=11, false)] {
            let cfg = honest_config(suite, 20, [2; 32]);
            let mut w = World::new(suite, &all(20), |_| cfg.clone(), &[2, 3], 5);
            for m in all(20) {
                let a = w.honest_adverts(m);
                w.send_keys(m, a);
            }
            for m in all(20) {
                let mut s = w.shares_for(m);
                if m == 1 {
                    s.retain(|e| kept.contains(&e.from));
                }
                w.send_shares(m, s);
            }
            for m in all(20) {
                w.mask(m);
            }
            let signed = agree_and_unmask(&mut w, &all(20));
            if completes {
                assert_eq!(signed, 20, "{suite}: {:?}", w.errors);
                let pairs: Vec<(MemberId, MemberId)> = w.know.pair_keys.keys().copied().collect();
                let want: Vec<(MemberId, MemberId)> = (13..=20).map(|m| (1, m)).collect();
                assert_eq!(pairs, want, "{suite}");
            } else {
                assert_eq!(signed, 0, "{suite}: a site signed with 10 mutual masks");
                assert!(w.know.pair_keys.is_empty(), "{suite}");
            }
            assert!(w.leaks(2).is_empty(), "{suite}: {:?}", w.leaks(2));
        }
    }
}

#[test]
fn a_split_view_is_refused_by_the_neighbours_at_6_and_8() {
    for n in [6usize, 8] {
        let full = honest_config(Suite::Intl, n, [3; 32]);
        // The victim alone sees a three-member cohort {1, 2, 3}.
        let small = view(&full, vec![1, 2, 3], 1);
        let mut w = World::new(
            Suite::Intl,
            &all(n),
            |m| if m == 1 { small.clone() } else { full.clone() },
            &[],
            4,
        );
        // Every site is sent every other site's advert: views decide.
        for m in all(n) {
            let adverts: Vec<RelayedAdvert> = w
                .adverts
                .iter()
                .filter(|(v, _)| **v != m)
                .map(|(v, a)| RelayedAdvert {
                    advert: a.clone(),
                    identity: w.identity(*v),
                })
                .collect();
            let topo = w.views[&m].topology().expect("topology");
            let mine = adverts
                .into_iter()
                .filter(|r| topo.are_neighbours(m, r.advert.member))
                .collect();
            w.send_keys(m, mine);
        }
        // The victim refused 2 and 3 (signed for another view) and stopped;
        // everyone else refused the victim.
        assert!(matches!(
            w.errors.get(&1),
            Some(ProtocolError::BelowThreshold { member: 1, .. })
        ));
        for m in 2..=n as MemberId {
            assert!(!w.bundles[&m].shares.iter().any(|s| s.to == 1), "n={n} {m}");
        }
        for m in 2..=n as MemberId {
            let s = w.shares_for(m);
            w.send_shares(m, s);
            w.mask(m);
        }
        let rest: Vec<MemberId> = (2..=n as MemberId).collect();
        assert_eq!(agree_and_unmask(&mut w, &rest), n - 1);
        assert!(!w.know.masked.contains_key(&1));
        assert!(w.leaks(3).is_empty(), "n={n}");
    }
}

#[test]
fn a_site_in_a_sparse_graph_view_refuses_the_round() {
    // The review's 6-site variant used k = 3 with a per-site graph seed; a
    // cohort of 6 must use the complete graph.
    let full = honest_config(Suite::Intl, 6, [3; 32]);
    let sparse = confide_crypto::protocol::RoundConfig {
        params: SecAggParams { k: 3, t: 2 },
        ..full.clone()
    };
    let w = World::new(Suite::Intl, &all(6), |_| sparse.clone(), &[], 5);
    assert_eq!(w.errors.len(), 6);
    assert!(
        w.errors
            .values()
            .all(|e| matches!(e, ProtocolError::Policy(_)))
    );
}

#[test]
fn a_different_model_for_one_site_cuts_it_off() {
    // The model hash is in the context: the victim's view differs only there.
    let cfg = honest_config(Suite::Gm, 6, [4; 32]);
    let other_model = confide_crypto::protocol::RoundConfig {
        context: [5; 32],
        ..cfg.clone()
    };
    let mut w = World::new(
        Suite::Gm,
        &all(6),
        |m| {
            if m == 1 {
                other_model.clone()
            } else {
                cfg.clone()
            }
        },
        &[],
        6,
    );
    for m in all(6) {
        let a = w.honest_adverts(m);
        w.send_keys(m, a);
    }
    assert!(matches!(
        w.errors.get(&1),
        Some(ProtocolError::BelowThreshold { member: 1, .. })
    ));
    for m in 2..=6 {
        let rejected: Vec<MemberId> = w.sites[&m].rejected().iter().map(|r| r.0).collect();
        assert_eq!(rejected, vec![1], "site {m}");
    }
    for m in 2..=6 {
        let s = w.shares_for(m);
        w.send_shares(m, s);
        w.mask(m);
    }
    assert_eq!(agree_and_unmask(&mut w, &[2, 3, 4, 5, 6]), 5);
    assert!(w.leaks(3).is_empty());
}

#[test]
fn downgraded_parameters_are_refused_and_the_graph_seed_is_moot() {
    let base = honest_config(Suite::Intl, 20, [6; 32]);
    type Downgrade = (&'static str, fn(&mut confide_crypto::protocol::RoundConfig));
    let downgrades: [Downgrade; 4] = [
        ("sparse graph", |c| c.params = SecAggParams { k: 4, t: 3 }),
        ("threshold below the floor", |c| {
            c.params = SecAggParams { k: 19, t: 10 }
        }),
        ("no colluders assumed", |c| c.max_colluders = 0),
        ("cohort of 2", |c| {
            c.cohort = vec![1, 2];
            c.params = SecAggParams { k: 1, t: 1 };
        }),
    ];
    for (what, f) in downgrades {
        let mut cfg = base.clone();
        f(&mut cfg);
        let members = cfg.cohort.clone();
        let w = World::new(Suite::Intl, &members, |_| cfg.clone(), &[], 7);
        assert_eq!(w.errors.len(), members.len(), "{what}");
        assert!(w.sites.is_empty(), "{what}");
    }
    // With the complete graph required up to 32 sites, no seed changes who
    // neighbours whom: there is nothing to grind.
    let policy = SitePolicy::default();
    for n in 3..=policy.complete_graph_up_to {
        let params = graph::choose_complete(n, 0.1, 0.1).expect("params");
        let a = graph::NeighbourGraph::harary(n, params.k, &[0; 32]).expect("graph");
        let b = graph::NeighbourGraph::harary(n, params.k, &[0xff; 32]).expect("graph");
        for i in 0..n {
            assert_eq!(a.neighbours(i).len(), n - 1);
            let mut x = a.neighbours(i).to_vec();
            let mut y = b.neighbours(i).to_vec();
            x.sort_unstable();
            y.sort_unstable();
            assert_eq!(x, y);
        }
    }
}

#[test]
fn adverts_replayed_from_another_attempt_are_refused() {
    // Attempt A and attempt B of the same round differ only in the nonce
    // (inside the context). Relaying A's adverts in B gets nowhere.
    let a_cfg = honest_config(Suite::Intl, 5, [8; 32]);
    let b_cfg = honest_config(Suite::Intl, 5, [9; 32]);
    let a = World::new(Suite::Intl, &all(5), |_| a_cfg.clone(), &[], 8);
    let mut b = World::new(Suite::Intl, &all(5), |_| b_cfg.clone(), &[], 8);
    // Same identities (same seed), so only the session differs.
    assert_eq!(a.identity(1), b.identity(1));
    for m in all(5) {
        let replayed = a.honest_adverts(m);
        b.send_keys(m, replayed);
    }
    assert_eq!(b.errors.len(), 5);
    assert!(
        b.errors
            .values()
            .all(|e| matches!(e, ProtocolError::BelowThreshold { have: 0, .. }))
    );
    assert!(b.leaks(2).is_empty());
}

#[test]
fn an_equivocated_survivor_set_reaches_a_quorum_at_most_once() {
    // n = 8 with one colluder (member 8) assumed and present: quorum
    // ⌊9/2⌋ + 1 = 5. The coordinator tells sites 1..=4 "7 dropped" and sites
    // 5..=7 "everyone survived", hoping for 7's key from the first group and
    // 7's seed from the second.
    for suite in Suite::ALL {
        let cfg = honest_config(suite, 8, [10; 32]);
        assert_eq!(cfg.quorum(), 5);
        let mut w = World::new(suite, &all(8), |_| cfg.clone(), &[8], 9);
        w.honest_until_masked();
        let s1: Vec<MemberId> = vec![1, 2, 3, 4, 5, 6, 8];
        let s2: Vec<MemberId> = all(8);
        let mut sigs1: Vec<_> = (1..=4)
            .filter_map(|m| w.ask_to_sign(m, w.request(&s1)))
            .collect();
        let mut sigs2: Vec<_> = (5..=7)
            .filter_map(|m| w.ask_to_sign(m, w.request(&s2)))
            .collect();
        assert_eq!((sigs1.len(), sigs2.len()), (4, 3));
        // The colluder signs both.
        sigs1.push(w.forge(8, &s1, 1));
        sigs2.push(w.forge(8, &s2, 1));
        // A signer's second request for another set is refused too.
        assert!(w.ask_to_sign(5, w.request(&s1)).is_none());
        for m in 1..=4 {
            w.ask_to_unmask(
                m,
                UnmaskRequest {
                    round: harness::ROUND,
                    survivors: s1.clone(),
                    signatures: sigs1.clone(),
                },
            );
        }
        for m in 6..=7 {
            w.ask_to_unmask(
                m,
                UnmaskRequest {
                    round: harness::ROUND,
                    survivors: s2.clone(),
                    signatures: sigs2.clone(),
                },
            );
        }
        // S1 had its quorum: 7's key shares are out, its seed shares are not.
        assert!(w.know.key_shares.get(&7).is_some_and(|v| v.len() >= 4));
        let seed7 = w.know.seed_shares.get(&7).map_or(0, Vec::len);
        assert!(seed7 < cfg.params.t, "{suite}: {seed7} seed shares of 7");
        for m in 6..=7 {
            assert!(
                matches!(w.errors.get(&m), Some(ProtocolError::Inconsistent(_))),
                "{suite} {m}"
            );
        }
        assert!(w.leaks(2).is_empty(), "{suite}");
    }
}

#[test]
fn a_site_signs_one_survivor_set_per_round() {
    let cfg = honest_config(Suite::Intl, 5, [11; 32]);
    let mut w = World::new(Suite::Intl, &all(5), |_| cfg.clone(), &[], 10);
    w.honest_until_masked();
    assert!(w.ask_to_sign(1, w.request(&all(5))).is_some());
    let other = w.request(&[1, 2, 3, 4]);
    let again = w
        .sites
        .get_mut(&1)
        .map(|s| s.handle_consistency_request(other));
    assert!(matches!(again, Some(Err(ProtocolError::WrongStage { .. }))));
    assert!(
        w.sites
            .get_mut(&1)
            .is_some_and(|s| !matches!(s.poll_output(), Some(SiteOutput::Consistency(_))))
    );
}

#[path = "malicious_coordinator/random_lies.rs"]
mod random_lies;
