//! Arbitrary message sequences against the state machines (the in-suite
//! counterpart of the `fuzz/` targets):
//!
//! - an honest round with hostile messages injected before and after every
//!   stage: every injected message is refused, and the round's sum is
//!   exactly the sum of the honest inputs (rejected messages leave no trace);
//! - a site machine fed arbitrary messages in any order: never panics, and
//!   after any error it sends nothing more.

use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{
    ConsistencyRequest, EncryptedShare, IncomingShares, KeyAdvert, MaskingSet, NeighbourKeys,
    RelayedAdvert, RelayedMaskingSet, ShareBundle, SiteOutput, SurvivorSignature, UnmaskRequest,
    UnmaskResponse,
};
use confide_crypto::shamir::Share;
use confide_crypto::sim::{Simulation, Stepper};
use confide_crypto::{CoordinatorMachine, MemberId, ProtocolError, Suite};
use proptest::prelude::*;

const N: usize = 5;
const LEN: usize = 4;

/// A hostile coordinator-bound message.
#[derive(Clone, Debug)]
enum Hostile {
    Advert {
        round: u64,
        member: MemberId,
        bytes: Vec<u8>,
    },
    Shares {
        round: u64,
        from: MemberId,
        to: MemberId,
        bytes: Vec<u8>,
    },
    Masked {
        round: u64,
        from: MemberId,
        v: Vec<u32>,
    },
    Signature {
        round: u64,
        from: MemberId,
        bytes: Vec<u8>,
    },
    Unmask {
        round: u64,
        from: MemberId,
        owner: MemberId,
        share: Vec<u8>,
    },
}

fn member() -> impl Strategy<Value = MemberId> {
    prop_oneof![
        1..=N as u32,
        Just(0u32),
        Just(6u32),
        Just(u32::MAX),
        any::<u32>()
    ]
}

fn round() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(0u64), Just(2u64), any::<u64>()]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..80);
    prop_oneof![
        (round(), member(), bytes.clone()).prop_map(|(round, member, bytes)| Hostile::Advert {
            round,
            member,
            bytes
        }),
        (round(), member(), member(), bytes.clone()).prop_map(|(round, from, to, bytes)| {
            Hostile::Shares {
                round,
                from,
                to,
                bytes,
            }
        }),
        (
            round(),
            member(),
            proptest::collection::vec(any::<u32>(), 0..8)
        )
            .prop_map(|(round, from, v)| Hostile::Masked { round, from, v }),
        (round(), member(), bytes.clone()).prop_map(|(round, from, bytes)| Hostile::Signature {
            round,
            from,
            bytes
        }),
        (round(), member(), member(), bytes).prop_map(|(round, from, owner, share)| {
            Hostile::Unmask {
                round,
                from,
                owner,
                share,
            }
        }),
    ]
}

/// Whether `h` could be mistaken for a not-yet-sent honest message of the
/// current stage (a genuine first message from a member, which the
/// coordinator cannot tell from garbage without the site's keys): those are
/// not injected before the honest ones.
fn could_be_first(h: &Hostile, stage_open_for: &[MemberId]) -> bool {
    let (round, from) = match h {
        Hostile::Advert { round, member, .. } => (*round, *member),
        Hostile::Shares { round, from, .. } => (*round, *from),
        Hostile::Masked { round, from, .. } => (*round, *from),
        Hostile::Signature { round, from, .. } => (*round, *from),
        Hostile::Unmask { round, from, .. } => (*round, *from),
    };
    round == 1 && stage_open_for.contains(&from)
}

/// Deliver `h`; `Ok(())` means the machine accepted it.
fn deliver(
    c: &mut CoordinatorMachine<u32>,
    h: &Hostile,
    now: std::time::Instant,
) -> Result<(), confide_crypto::ProtocolError> {
    match h.clone() {
        Hostile::Advert {
            round,
            member,
            bytes,
        } => c.handle_advert(
            KeyAdvert {
                round,
                member,
                enc_public: bytes.clone(),
                mask_public: bytes.iter().rev().copied().collect(),
                signature: bytes.clone(),
            },
            bytes,
            now,
        ),
        Hostile::Shares {
            round,
            from,
            to,
            bytes,
        } => c.handle_shares(
            ShareBundle {
                round,
                from,
                seed_commitment: [3; 32],
                shares: vec![EncryptedShare {
                    from,
                    to,
                    ciphertext: bytes,
                }],
            },
            now,
        ),
        Hostile::Masked { round, from, v } => c.handle_masked_input(
            round,
            from,
            &v,
            MaskingSet {
                round,
                member: from,
                peers: Vec::new(),
                signature: Vec::new(),
            },
            now,
        ),
        Hostile::Signature { round, from, bytes } => c.handle_consistency(
            SurvivorSignature {
                round,
                member: from,
                signature: bytes,
            },
            now,
        ),
        Hostile::Unmask {
            round,
            from,
            owner,
            share,
        } => {
            let mut b = [0u8; 44];
            for (d, s) in b.iter_mut().zip(&share) {
                *d = *s;
            }
            let sh = Share::from_bytes(&b)
                .map(|s| vec![(owner, s)])
                .unwrap_or_default();
            c.handle_unmask_response(
                UnmaskResponse {
                    round,
                    from,
                    seed_shares: sh.clone(),
                    key_shares: sh,
                    pair_keys: vec![],
                },
                now,
            )
        }
    }
}

fn inject(st: &mut Stepper<u32>, hs: &[Hostile], open: &[MemberId]) -> Result<(), TestCaseError> {
    let now = st.now;
    for h in hs.iter().filter(|h| !could_be_first(h, open)) {
        let r = deliver(&mut st.coord, h, now);
        prop_assert!(r.is_err(), "hostile message accepted: {h:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn hostile_messages_are_refused_and_leave_the_sum_unchanged(
        seed in any::<u64>(),
        inputs in proptest::collection::vec(proptest::collection::vec(any::<u32>(), LEN), N),
        garbage in proptest::collection::vec(proptest::collection::vec(hostile(), 0..6), 6),
    ) {
        let sim = Simulation::new(Suite::Intl, N, SecAggParams { k: 4, t: 3 }).with_seed(seed);
        let mut st = Stepper::<u32>::new(sim.config::<u32>(LEN), seed)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let all: Vec<MemberId> = (1..=N as u32).collect();
        let fail = |e: confide_crypto::ProtocolError| TestCaseError::fail(e.to_string());
        inject(&mut st, &garbage[0], &all)?;
        let adv = st.advertise().map_err(fail)?;
        inject(&mut st, &garbage[1], &all)?;
        let shares = st.share(adv).map_err(fail)?;
        inject(&mut st, &garbage[2], &all)?;
        let masked = st.mask(shares, inputs.iter().cloned().map(Some).collect()).map_err(fail)?;
        let consistency = st.submit(&masked).map_err(fail)?;
        inject(&mut st, &garbage[3], &all)?;
        let unmask = st.agree(consistency).map_err(fail)?;
        inject(&mut st, &garbage[4], &all)?;
        let responses = st.responses(unmask).map_err(fail)?;
        let result = st.finish(responses).map_err(fail)?;
        inject(&mut st, &garbage[5], &[])?;
        let sum = result
            .ok_or_else(|| TestCaseError::fail("round did not finish"))?
            .map_err(fail)?
            .sum;
        let expect: Vec<u32> = (0..LEN)
            .map(|j| inputs.iter().map(|v| v[j]).fold(0u32, u32::wrapping_add))
            .collect();
        prop_assert_eq!(sum, expect);
    }

    #[test]
    fn site_machine_survives_arbitrary_messages(
        seed in any::<u64>(),
        ops in proptest::collection::vec((0u8..5, round(), member(), member(),
            proptest::collection::vec(any::<u8>(), 0..80)), 0..12),
    ) {
        let sim = Simulation::new(Suite::Intl, N, SecAggParams { k: 4, t: 3 }).with_seed(seed);
        let mut st = Stepper::<u32>::new(sim.config::<u32>(LEN), seed)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut rng = st.rng.clone();
        let site = st.site(1).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Its advert is legitimately out; anything after an error must not be.
        let _ = site.poll_output();
        let mut failed = false;
        for (op, round, a, b, bytes) in ops {
            let r = match op {
                0 => site.handle_neighbour_keys(NeighbourKeys { round, adverts: vec![RelayedAdvert {
                        advert: KeyAdvert { round, member: a, enc_public: bytes.clone(),
                            mask_public: bytes.clone(), signature: bytes.clone() },
                        identity: bytes.clone() }] }, &mut rng),
                1 => site.handle_incoming_shares(IncomingShares { round,
                        shares: vec![EncryptedShare { from: a, to: b, ciphertext: bytes.clone() }] }),
                2 => site.handle_input(bytes.iter().map(|&x| u32::from(x)).collect()),
                3 => site.handle_consistency_request(ConsistencyRequest { round, survivors: vec![a, b],
                        masking: vec![RelayedMaskingSet { member: a, unmasked: vec![b],
                            signature: bytes.clone() }] }),
                _ => site.handle_unmask_request(UnmaskRequest { round, survivors: vec![a],
                        signatures: Vec::new() }),
            };
            failed |= r.is_err();
            if failed {
                prop_assert!(site.poll_output().is_none_or(|o| !matches!(o,
                    SiteOutput::Shares(_) | SiteOutput::MaskedInput { .. }
                    | SiteOutput::Consistency(_) | SiteOutput::Unmask(_))),
                    "output after an error");
            }
        }
    }
}

/// Every survivor's consistency request, and every signer's unmask request,
/// is one shared allocation (the request holds every survivor's masking set:
/// a copy per recipient is O(n²·k) bytes a round).
#[test]
fn fan_out_requests_are_one_allocation_for_all_recipients() -> Result<(), Box<dyn std::error::Error>>
{
    use confide_crypto::protocol::CoordinatorOutput;
    let cfg = small_round(5, 1);
    let mut r = Stepper::<u32>::new(cfg, 7)?;
    let nk = r.advertise()?;
    let sh = r.share(nk)?;
    let masked = r.mask(sh, vec![Some(vec![1u32; 4]); 5])?;
    let out = r.submit(&masked)?;
    let requests: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            CoordinatorOutput::ConsistencyRequest { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 5);
    assert!(
        requests
            .iter()
            .all(|m| std::sync::Arc::ptr_eq(m, &requests[0]))
    );
    drop(requests);
    let unmask: Vec<_> = r
        .agree(out)?
        .into_iter()
        .filter_map(|o| match o {
            CoordinatorOutput::UnmaskRequest { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(unmask.len(), 5);
    assert!(unmask.iter().all(|m| std::sync::Arc::ptr_eq(m, &unmask[0])));
    Ok(())
}

/// The consistency request relays each masking set as the neighbours its
/// member did *not* mask with — after a dropout at masked input, nobody —
/// so it grows with refused and early-dropped edges, not with n·k. A
/// neighbour's set altered in transit is caught by the site holding its
/// shares, with the key it verified at the advert stage.
#[test]
fn consistency_request_relays_only_the_unmasked_neighbours()
-> Result<(), Box<dyn std::error::Error>> {
    use confide_crypto::protocol::CoordinatorOutput;
    let cfg = small_round(8, 3);
    let topo = cfg.topology()?;
    let gone: MemberId = 5;
    let mut inputs = vec![Some(vec![1u32; 4]); 8];
    inputs[(gone - 1) as usize] = None;
    let mut r = Stepper::<u32>::new(cfg, 11)?;
    let nk = r.advertise()?;
    let sh = r.share(nk)?;
    let masked = r.mask(sh, inputs)?;
    let out = r.submit(&masked)?;
    let Some(req) = out.iter().find_map(|o| match o {
        CoordinatorOutput::ConsistencyRequest { msg, .. } => Some(msg.clone()),
        _ => None,
    }) else {
        return Err("no consistency request".into());
    };
    assert_eq!(req.masking.len(), 7);
    for set in &req.masking {
        // It dropped after sharing, so every neighbour masked with it.
        assert!(set.unmasked.is_empty(), "member {}", set.member);
        // Rebuilt, it is the set the member signed.
        let signed = masked
            .iter()
            .find(|(m, ..)| *m == set.member)
            .map(|(_, _, s)| s.peers.clone());
        assert_eq!(Some(set.peers(&topo)?), signed);
    }
    // A survivor that neighbours the dropped member, and a neighbour of it
    // whose relayed set now also claims it unmasked that survivor.
    let Some(victim) = topo
        .neighbours(gone)
        .into_iter()
        .find(|&v| v != gone && !topo.neighbours(v).is_empty())
    else {
        return Err("no neighbour of the dropped member".into());
    };
    let Some(liar) = topo.neighbours(victim).into_iter().find(|&v| v != gone) else {
        return Err("no other neighbour".into());
    };
    let mut forged = (*req).clone();
    for set in &mut forged.masking {
        if set.member == liar {
            set.unmasked.push(victim);
            set.unmasked.sort_unstable();
        }
    }
    let err = r
        .site(victim)?
        .handle_consistency_request(forged.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&format!("masking set of member {liar}")) && err.contains("signature"),
        "{err}"
    );
    // Malformed complements are refused by name, by the other survivors.
    let who = req.masking[0].member;
    let Some(stranger) = (1..=8).find(|&m| m != who && !topo.are_neighbours(who, m)) else {
        return Err("complete graph".into());
    };
    let askers: Vec<MemberId> = (1..=8).filter(|&m| m != gone && m != victim).collect();
    for (asker, bad, why) in [
        (askers[0], vec![stranger], "not a neighbour"),
        (askers[1], vec![liar, liar], "strictly ascending"),
    ] {
        let mut req = (*req).clone();
        req.masking[0].unmasked = bad;
        let err = r
            .site(asker)?
            .handle_consistency_request(req)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&format!("masking set of member {who}")) && err.contains(why),
            "{err}"
        );
    }
    Ok(())
}

/// A site that answered the unmask request has ended its part as it should:
/// the same request replayed after a reconnect is a stale task (the client
/// ignores `WrongStage`), not an error that would make it leave the round
/// with its response unsent — and it never answers twice.
#[test]
fn a_request_replayed_after_the_answer_is_stale() -> Result<(), Box<dyn std::error::Error>> {
    use confide_crypto::protocol::CoordinatorOutput;
    let cfg = small_round(5, 5);
    let mut r = Stepper::<u32>::new(cfg, 13)?;
    let nk = r.advertise()?;
    let sh = r.share(nk)?;
    let masked = r.mask(sh, vec![Some(vec![1u32; 4]); 5])?;
    let out = r.submit(&masked)?;
    let Some(req) = r.agree(out)?.into_iter().find_map(|o| match o {
        CoordinatorOutput::UnmaskRequest { to: 1, msg } => Some(msg),
        _ => None,
    }) else {
        return Err("no unmask request for member 1".into());
    };
    let site = r.site(1)?;
    site.handle_unmask_request((*req).clone())?;
    assert!(matches!(site.poll_output(), Some(SiteOutput::Unmask(_))));
    let again = site.handle_unmask_request((*req).clone());
    assert!(
        matches!(again, Err(ProtocolError::WrongStage { .. })),
        "{again:?}"
    );
    assert!(site.poll_output().is_none(), "answered twice");
    // An aborted site still says its part has ended.
    let site = r.site(2)?;
    let mut bad = (*req).clone();
    bad.survivors.pop();
    assert!(site.handle_unmask_request(bad).is_err());
    assert!(matches!(
        site.handle_unmask_request((*req).clone()),
        Err(ProtocolError::Ended)
    ));
    Ok(())
}

/// Round 1 of an intl round over members 1..=`n`, k 4, t 3, 4 elements,
/// no colluders assumed, graph seed `seed`.
fn small_round(n: MemberId, seed: u8) -> confide_crypto::protocol::RoundConfig {
    confide_crypto::protocol::RoundConfig {
        round: 1,
        suite: Suite::Intl,
        ring: confide_crypto::ring::Ring::U32,
        cohort: (1..=n).collect(),
        params: SecAggParams { k: 4, t: 3 },
        graph_seed: [seed; 32],
        vector_len: 4,
        min_survivors: 3,
        max_colluders: 0,
        context: [2; 32],
    }
}

#[test]
fn advertise_close_reports_first_then_each_members_neighbour_keys() -> Result<(), ProtocolError> {
    use confide_crypto::protocol::CoordinatorOutput;
    // The NeighbourKeys are made one per poll: they must still come after
    // the stage report queued before them, one per member in ascending
    // order, each with exactly its neighbours' adverts.
    let mut r = Stepper::<u32>::new(small_round(9, 5), 1)?;
    let out = r.advertise()?;
    assert!(
        matches!(&out[0], confide_crypto::protocol::CoordinatorOutput::StageClosed { stage, .. } if *stage == confide_crypto::Stage::AdvertiseKeys),
        "{:?}",
        out.first().map(std::mem::discriminant)
    );
    let topo = r.coord.topology().clone();
    let mut to_seen = Vec::new();
    for o in &out[1..] {
        let CoordinatorOutput::NeighbourKeys { to, msg } = o else {
            panic!("only NeighbourKeys after the report");
        };
        let got: Vec<MemberId> = msg.adverts.iter().map(|a| a.advert.member).collect();
        assert_eq!(got, topo.neighbours(*to), "member {to}");
        to_seen.push(*to);
    }
    assert_eq!(to_seen, topo.cohort());
    assert!(r.coord.poll_output().is_none());
    Ok(())
}
