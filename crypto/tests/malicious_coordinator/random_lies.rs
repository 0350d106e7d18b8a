//! Random lies per site: views, withheld shares, dropped inputs, several
//! survivor sets told to different sites, a colluder signing anything. The
//! oracle must never find an honest input on its own (nor, without a
//! colluder, a sum of fewer than three). Cases: `CONFIDE_PROPTEST_CASES`,
//! default 3000.

use std::collections::BTreeMap;

use confide_crypto::MemberId;
use confide_crypto::protocol::UnmaskRequest;
use confide_crypto::suite::Suite;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::harness::{self, World, honest_config};

#[derive(Clone, Debug)]
struct Plan {
    n: usize,
    gm: bool,
    colluder: Option<MemberId>,
    seed: u64,
    /// Per site: sees another context (model, nonce).
    other_view: Vec<bool>,
    /// Per site: bit j set = the share from member j+1 is withheld.
    withheld: Vec<u8>,
    /// Per site: sends its masked input.
    submits: Vec<bool>,
    /// Candidate survivor sets (bit j = member j+1); index 0 is replaced by
    /// "everyone who submitted".
    sets: Vec<u8>,
    /// Per site: which candidate it is asked to sign (mostly the true set,
    /// so that quorums form and shares flow; ≥ sets.len(): none).
    asked: Vec<usize>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (5usize..=8, any::<bool>(), any::<u64>()).prop_flat_map(|(n, gm, seed)| {
        (
            Just((n, gm, seed)),
            prop_oneof![Just(None), (1..=n as MemberId).prop_map(Some)],
            proptest::collection::vec(prop::bool::weighted(0.05), n),
            proptest::collection::vec(
                prop_oneof![10 => Just(0u8), 1 => any::<u8>()],
                n,
            ),
            proptest::collection::vec(prop::bool::weighted(0.9), n),
            proptest::collection::vec(any::<u8>(), 3),
            proptest::collection::vec(
                prop_oneof![8 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize), 1 => Just(3usize)],
                n,
            ),
        )
            .prop_map(
                |((n, gm, seed), colluder, other_view, withheld, submits, sets, asked)| Plan {
                    n,
                    gm: gm && seed % 4 == 0,
                    colluder,
                    seed,
                    other_view,
                    withheld,
                    submits,
                    sets,
                    asked,
                },
            )
    })
}

fn members_of(bits: u8, n: usize) -> Vec<MemberId> {
    (1..=n as MemberId)
        .filter(|m| bits & (1 << (m - 1)) != 0)
        .collect()
}

/// Run one plan; returns whether any share was revealed.
fn run(p: &Plan) -> Result<bool, TestCaseError> {
    let suite = if p.gm { Suite::Gm } else { Suite::Intl };
    let cfg = honest_config(suite, p.n, [1; 32]);
    let other = confide_crypto::protocol::RoundConfig {
        context: [2; 32],
        ..cfg.clone()
    };
    let members: Vec<MemberId> = (1..=p.n as MemberId).collect();
    let colluders: Vec<MemberId> = p.colluder.into_iter().collect();
    let mut w = World::new(
        suite,
        &members,
        |m| {
            if p.other_view[m as usize - 1] {
                other.clone()
            } else {
                cfg.clone()
            }
        },
        &colluders,
        p.seed,
    );
    for &m in &members {
        let a = w.honest_adverts(m);
        w.send_keys(m, a);
    }
    for &m in &members {
        let mut s = w.shares_for(m);
        let bits = p.withheld[m as usize - 1];
        s.retain(|e| e.from == 0 || e.from > 8 || bits & (1 << (e.from - 1)) == 0);
        w.send_shares(m, s);
    }
    for &m in &members {
        if p.submits[m as usize - 1] {
            w.mask(m);
        }
    }
    let submitted: Vec<MemberId> = w.know.masked.keys().copied().collect();
    let mut sets: Vec<Vec<MemberId>> = p.sets.iter().map(|&b| members_of(b, p.n)).collect();
    sets[0] = submitted;
    let mut sigs: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    let mut signed: BTreeMap<MemberId, usize> = BTreeMap::new();
    for &m in &members {
        let i = p.asked[m as usize - 1];
        let Some(set) = sets.get(i) else { continue };
        let req = w.request(set);
        if let Some(s) = w.ask_to_sign(m, req) {
            sigs.entry(i).or_default().push(s);
            signed.insert(m, i);
        }
    }
    if let Some(c) = p.colluder {
        for (i, set) in sets.iter().enumerate() {
            let under = if p.other_view[c as usize - 1] { c } else { 1 };
            let forged = w.forge(c, set, under);
            sigs.entry(i).or_default().push(forged);
        }
    }
    let mut revealed = false;
    for (&m, &i) in &signed {
        revealed |= w.ask_to_unmask(
            m,
            UnmaskRequest {
                round: harness::ROUND,
                survivors: sets[i].clone(),
                signatures: sigs.get(&i).cloned().unwrap_or_default(),
            },
        );
    }
    let min_honest = if p.colluder.is_some() { 2 } else { 3 };
    let leaks = w.leaks(min_honest);
    prop_assert!(leaks.is_empty(), "isolated: {:?} under {:?}", leaks, p);
    Ok(revealed)
}

#[test]
fn random_lies_never_isolate_an_honest_input() {
    let cases = std::env::var("CONFIDE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let revealed = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&plan(), |p| {
        if run(&p)? {
            revealed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Not vacuous: a good share of the cases got as far as revealing shares.
    let revealed = revealed.into_inner();
    eprintln!("{revealed} of {cases} cases revealed shares; none isolated an honest input");
    assert!(
        revealed * 5 >= cases,
        "only {revealed} of {cases} cases revealed shares"
    );
}
