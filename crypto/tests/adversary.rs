//! A coordinator or network that misbehaves, driven message by message:
//! substituted keys, forged signatures, unsigned or altered survivor sets,
//! replays, wrong stages, duplicates, wrong lengths; and the statistical look
//! of a masked vector. (Whole attacks on privacy, with an isolation oracle,
//! are in `malicious_coordinator.rs`.)

use confide_crypto::graph::SecAggParams;
use std::sync::Arc;

use confide_crypto::protocol::{
    CoordinatorOutput, MaskingSet, MemberId, RelayedKeyVerifier, RelayedSignature, RoundConfig,
    SiteOutput, SurvivorSignature, UnmaskRequest,
};
use confide_crypto::ring::Ring;
use confide_crypto::sim::Stepper;
use confide_crypto::suite::{SigningKey, Suite};
use confide_crypto::{ProtocolError, Stage};

type Res = Result<(), Box<dyn std::error::Error>>;

fn round(
    suite: Suite,
    n: usize,
    k: usize,
    t: usize,
    len: usize,
) -> Result<Stepper<u32>, ProtocolError> {
    let cfg = RoundConfig {
        round: 5,
        suite,
        ring: Ring::U32,
        cohort: (1..=n as MemberId).collect(),
        params: SecAggParams { k, t },
        graph_seed: [3u8; 32],
        vector_len: len,
        min_survivors: 3,
        max_colluders: 0,
        context: [5; 32],
    };
    Stepper::new(cfg, 99)
}

/// A round of 4 (k 3, t 2) run to its consistency stage, and the four
/// survivor-set signatures as the coordinator relays them.
fn signed_survivor_set(
    suite: Suite,
) -> Result<(Stepper<u32>, Vec<RelayedSignature>), ProtocolError> {
    let mut r = round(suite, 4, 3, 2, 8)?;
    let nk = r.advertise()?;
    let sh = r.share(nk)?;
    let masked = r.mask(sh, vec![Some(vec![1u32; 8]); 4])?;
    let out = r.submit(&masked)?;
    let relayed = r
        .consistency(out)?
        .into_iter()
        .map(|s| {
            Ok(RelayedSignature {
                identity: r.identity(s.member)?,
                signature: s,
            })
        })
        .collect::<Result<Vec<_>, ProtocolError>>()?;
    Ok((r, relayed))
}

/// The unmask request for the full survivor set {1, 2, 3, 4}.
fn unmask_all(signatures: Vec<RelayedSignature>) -> UnmaskRequest {
    UnmaskRequest {
        round: 5,
        survivors: vec![1, 2, 3, 4],
        signatures,
    }
}

fn requests(outputs: Vec<CoordinatorOutput<u32>>) -> Vec<(MemberId, UnmaskRequest)> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            CoordinatorOutput::UnmaskRequest { to, msg } => {
                Some((to, std::sync::Arc::unwrap_or_clone(msg)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn substituted_key_or_forged_signature_is_detected_by_the_neighbour() -> Res {
    for suite in Suite::ALL {
        // Substitute member 2's mask key in what member 1 receives.
        let mut r = round(suite, 4, 3, 2, 8)?;
        let mut nk = r.advertise()?;
        let evil = SigningKey::generate(suite, &mut r.rng);
        for o in nk.iter_mut() {
            let CoordinatorOutput::NeighbourKeys { to, msg } = o else {
                continue;
            };
            if *to == 1 {
                for ra in msg.adverts.iter_mut().filter(|ra| ra.advert.member == 2) {
                    ra.advert.mask_public = suite.provider().agreement_public(&[9u8; 32])?;
                }
            }
            if *to == 3 {
                // A coordinator that re-signs with its own key and relays its own identity.
                for ra in msg.adverts.iter_mut().filter(|ra| ra.advert.member == 4) {
                    ra.advert.signature = evil.sign(b"anything")?;
                    ra.identity = evil.verifying_key()?.as_bytes().to_vec();
                }
            }
        }
        for o in nk {
            let CoordinatorOutput::NeighbourKeys { to, msg } = o else {
                continue;
            };
            let i = to as usize - 1;
            // The bad advert is left out; the site goes on with its other two
            // neighbours (t = 2) and deals them, not the impostor, shares.
            r.sites[i].handle_neighbour_keys(msg, &mut r.rng)?;
            let bad = match to {
                1 => Some(2),
                3 => Some(4),
                _ => None,
            };
            let rejected: Vec<MemberId> = r.sites[i].rejected().iter().map(|(m, _)| *m).collect();
            assert_eq!(rejected, bad.into_iter().collect::<Vec<_>>(), "{suite}");
            let Some(SiteOutput::Shares(b)) = r.sites[i].poll_output() else {
                return Err("no shares dealt".into());
            };
            assert_eq!(b.shares.len(), if bad.is_some() { 2 } else { 3 });
            assert!(b.shares.iter().all(|s| Some(s.to) != bad), "{suite}");
        }
    }
    Ok(())
}

#[test]
fn site_reveals_nothing_without_a_quorum_on_the_set_it_signed() -> Res {
    for suite in Suite::ALL {
        let (mut r, relayed) = signed_survivor_set(suite)?;
        assert_eq!(relayed.len(), 4);
        // Quorum is ⌊4/2⌋ + 1 = 3: two signatures are not enough.
        assert!(matches!(
            r.sites[0].handle_unmask_request(unmask_all(relayed[..2].to_vec())),
            Err(ProtocolError::Inconsistent(_))
        ));
        assert!(r.sites[0].poll_output().is_none());
        // A different set than the one signed, even with signatures: refused.
        let other = UnmaskRequest {
            round: 5,
            survivors: vec![1, 2, 3],
            signatures: relayed.clone(),
        };
        assert!(matches!(
            r.sites[1].handle_unmask_request(other),
            Err(ProtocolError::Inconsistent(_))
        ));
        // Forged signatures (right members, wrong bytes) do not count.
        let mut forged = relayed.clone();
        for f in forged.iter_mut().skip(1) {
            f.signature.signature[4] ^= 1;
        }
        assert!(matches!(
            r.sites[2].handle_unmask_request(unmask_all(forged)),
            Err(ProtocolError::Inconsistent(_))
        ));
        // The honest request is answered.
        r.sites[3].handle_unmask_request(unmask_all(relayed))?;
        assert!(matches!(
            r.sites[3].poll_output(),
            Some(SiteOutput::Unmask(_))
        ));
    }
    Ok(())
}

#[test]
fn a_quorum_counts_each_member_once_and_survives_a_forgery_ahead_of_it() -> Res {
    for suite in Suite::ALL {
        let (mut r, relayed) = signed_survivor_set(suite)?;
        // Quorum 3: one member's signature twice and another's are two.
        let mut twice = relayed[..2].to_vec();
        twice.push(relayed[0].clone());
        let e = r.sites[0].handle_unmask_request(unmask_all(twice));
        assert!(
            matches!(e, Err(ProtocolError::Inconsistent(_))),
            "{suite}: {e:?}"
        );
        assert!(r.sites[0].poll_output().is_none());
        // A forgery ahead of the valid signatures fails among the first
        // three checked; the valid signature of the same member after them
        // still makes the quorum.
        let mut forged = relayed[0].clone();
        forged.signature.signature[4] ^= 1;
        let mut first_forged = vec![forged];
        first_forged.extend(relayed.iter().cloned());
        r.sites[1].handle_unmask_request(unmask_all(first_forged))?;
        assert!(matches!(
            r.sites[1].poll_output(),
            Some(SiteOutput::Unmask(_))
        ));
    }
    Ok(())
}

/// Unmask requests by recipient.
type Requests = Vec<(MemberId, UnmaskRequest)>;

/// A round of 10 (k 9, t 6) assuming 2 colluders (quorum 7), everyone's
/// input 1, to the survivor-set signatures, with those of `forgers` altered
/// before the coordinator gets them; `check`: the coordinator checks them
/// ([`confide_crypto::protocol::CoordinatorMachine::check_signatures`]).
fn signatures_with_forgers(
    suite: Suite,
    forgers: &[MemberId],
    check: bool,
) -> Result<(Stepper<u32>, Vec<SurvivorSignature>), ProtocolError> {
    let cfg = RoundConfig {
        round: 5,
        suite,
        ring: Ring::U32,
        cohort: (1..=10).collect(),
        params: SecAggParams { k: 9, t: 6 },
        graph_seed: [3u8; 32],
        vector_len: 4,
        min_survivors: 6,
        max_colluders: 2,
        context: [5; 32],
    };
    let mut r = Stepper::new(cfg, 99)?;
    if check {
        r.coord
            .check_signatures(Arc::new(RelayedKeyVerifier { suite }));
    }
    let nk = r.advertise()?;
    let sh = r.share(nk)?;
    let masked = r.mask(sh, vec![Some(vec![1u32; 4]); 10])?;
    let out = r.submit(&masked)?;
    let mut sigs = r.consistency(out)?;
    for s in &mut sigs {
        if forgers.contains(&s.member) {
            s.signature[4] ^= 1;
        }
    }
    Ok((r, sigs))
}

/// [`signatures_with_forgers`] relayed unchecked, to the unmask requests.
fn unmask_requests_with_forgers(
    suite: Suite,
    forgers: &[MemberId],
) -> Result<(Stepper<u32>, Requests), ProtocolError> {
    let (mut r, sigs) = signatures_with_forgers(suite, forgers, false)?;
    let reqs = requests(r.sign(sigs)?);
    Ok((r, reqs))
}

/// Every site answers its unmask request; the round's sum.
fn unmask(r: &mut Stepper<u32>, reqs: Requests) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let mut responses = Vec::new();
    for (to, msg) in reqs {
        let site = &mut r.sites[to as usize - 1];
        site.handle_unmask_request(msg)?;
        while let Some(SiteOutput::Unmask(u)) = site.poll_output() {
            responses.push(u);
        }
    }
    Ok(r.finish(responses)?.ok_or("round did not finish")??.sum)
}

#[test]
fn the_coordinator_relays_quorum_plus_colluders_signatures_which_survive_forgeries() -> Res {
    for suite in Suite::ALL {
        // Quorum ⌊(10 + 2)/2⌋ + 1 = 7; 7 + 2 of the 10 signatures relayed,
        // the two colluders' forgeries among them.
        let (mut r, reqs) = unmask_requests_with_forgers(suite, &[1, 2])?;
        assert_eq!(reqs.len(), 10, "{suite}");
        assert!(reqs.iter().all(|(_, m)| m.signatures.len() == 9), "{suite}");
        assert_eq!(unmask(&mut r, reqs)?, vec![10; 4], "{suite}");

        // A third forger is beyond the assumed collusion: 6 valid of the 9
        // relayed, and no site reveals anything.
        let (mut r, reqs) = unmask_requests_with_forgers(suite, &[1, 2, 3])?;
        for (to, msg) in reqs {
            let site = &mut r.sites[to as usize - 1];
            let e = site.handle_unmask_request(msg);
            assert!(
                matches!(e, Err(ProtocolError::Inconsistent(_))),
                "{suite}: {e:?}"
            );
            assert!(site.poll_output().is_none(), "{suite}");
        }
    }
    Ok(())
}

#[test]
fn a_coordinator_checking_signatures_refuses_forgeries_and_relays_only_valid_ones() -> Res {
    for suite in Suite::ALL {
        // Three forgers, one beyond the assumed collusion: relayed unchecked
        // they leave the sites short of a quorum (above). Checked, each is
        // refused as it arrives and the 7 valid ones are a quorum.
        let forgers = [1, 2, 3];
        let (mut r, sigs) = signatures_with_forgers(suite, &forgers, true)?;
        let now = r.now;
        for s in sigs {
            let m = s.member;
            let e = r.coord.handle_consistency(s, now);
            if forgers.contains(&m) {
                assert!(
                    matches!(&e, Err(ProtocolError::Malformed { member, reason })
                        if *member == m && reason.contains("survivor-set signature refused")),
                    "{suite}: {e:?}"
                );
            } else {
                e?;
            }
        }
        // No deadline passed: the stage closed once only refused signers
        // were left, and their signatures are not relayed.
        assert_eq!(r.coord.stage(), Stage::Unmask, "{suite}");
        let out: Vec<_> = std::iter::from_fn(|| r.coord.poll_output()).collect();
        let blamed: Vec<MemberId> = out
            .iter()
            .filter_map(|o| match o {
                CoordinatorOutput::Blamed { member, .. } => Some(*member),
                _ => None,
            })
            .collect();
        assert_eq!(blamed, forgers, "{suite}");
        let reqs = requests(out);
        let to: Vec<MemberId> = reqs.iter().map(|(m, _)| *m).collect();
        assert_eq!(to, (4..=10).collect::<Vec<_>>(), "{suite}");
        for (_, msg) in &reqs {
            let relayed: Vec<MemberId> =
                msg.signatures.iter().map(|s| s.signature.member).collect();
            assert_eq!(relayed, to, "{suite}");
        }
        // The forgers' inputs are in the sum all the same: they were
        // survivors of the masked input.
        assert_eq!(unmask(&mut r, reqs)?, vec![10; 4], "{suite}");
    }
    Ok(())
}

#[test]
fn coordinator_rejects_replays_wrong_stage_duplicates_and_wrong_lengths_without_harm() -> Res {
    for suite in Suite::ALL {
        let mut r = round(suite, 4, 3, 2, 8)?;
        let now = r.now;
        // Wrong stage: a masked input during key advertisement.
        let none = MaskingSet {
            round: 5,
            member: 1,
            peers: Vec::new(),
            signature: Vec::new(),
        };
        assert!(matches!(
            r.coord.handle_masked_input(5, 1, &[0; 8], none, now),
            Err(ProtocolError::WrongStage {
                expected: Stage::AdvertiseKeys,
                got: Stage::MaskedInput
            })
        ));
        let first = match r.sites[0].poll_output() {
            Some(SiteOutput::Advertise(a)) => a,
            other => return Err(format!("expected an advert, got {other:?}").into()),
        };
        let mut replay = first.clone();
        replay.round = 4;
        assert_eq!(
            r.coord.handle_advert(replay, vec![], now),
            Err(ProtocolError::WrongRound {
                expected: 5,
                got: 4
            })
        );
        let mut stranger = first.clone();
        stranger.member = 77;
        assert_eq!(
            r.coord.handle_advert(stranger, vec![], now),
            Err(ProtocolError::NotParticipant(77))
        );
        let id = r.identity(1)?;
        r.coord.handle_advert(first.clone(), id.clone(), now)?;
        assert_eq!(
            r.coord.handle_advert(first, id, now),
            Err(ProtocolError::Duplicate(1))
        );
        let nk = r.advertise()?;
        let sh = r.share(nk)?;
        let inputs: Vec<Vec<u32>> = (0..4).map(|i| vec![i as u32 + 1; 8]).collect();
        let masked = r.mask(sh, inputs.into_iter().map(Some).collect())?;
        assert_eq!(
            r.coord
                .handle_masked_input(5, 1, &masked[0].1[..7], masked[0].2.clone(), now),
            Err(ProtocolError::WrongLength {
                expected: 8,
                got: 7
            })
        );
        // A masking set naming someone else, or a non-neighbour: refused.
        let mut other = masked[0].2.clone();
        other.member = 2;
        assert!(matches!(
            r.coord.handle_masked_input(5, 1, &masked[0].1, other, now),
            Err(ProtocolError::Malformed { member: 1, .. })
        ));
        let mut stranger = masked[0].2.clone();
        stranger.peers.push(9);
        assert!(matches!(
            r.coord
                .handle_masked_input(5, 1, &masked[0].1, stranger, now),
            Err(ProtocolError::Malformed { member: 1, .. })
        ));
        for (m, v, set) in &masked {
            r.coord.handle_masked_input(5, *m, v, set.clone(), now)?;
        }
        let out: Vec<_> = std::iter::from_fn(|| r.coord.poll_output()).collect();
        assert_eq!(
            r.coord
                .handle_masked_input(5, 2, &masked[1].1, masked[1].2.clone(), now),
            Err(ProtocolError::WrongStage {
                expected: Stage::Consistency,
                got: Stage::MaskedInput
            })
        );
        let sigs = r.consistency(out)?;
        let dup = sigs[0].clone();
        for s in sigs {
            r.coord.handle_consistency(s, now)?;
        }
        assert_eq!(
            r.coord.handle_consistency(dup, now),
            Err(ProtocolError::WrongStage {
                expected: Stage::Unmask,
                got: Stage::Consistency
            })
        );
        let reqs = requests(std::iter::from_fn(|| r.coord.poll_output()).collect());
        assert_eq!(reqs.len(), 4);
        for (to, msg) in reqs {
            r.sites[to as usize - 1].handle_unmask_request(msg)?;
            while let Some(SiteOutput::Unmask(u)) = r.sites[to as usize - 1].poll_output() {
                let dup = u.clone();
                r.coord.handle_unmask_response(u, now)?;
                if to == 1 {
                    assert_eq!(
                        r.coord.handle_unmask_response(dup, now),
                        Err(ProtocolError::Duplicate(1))
                    );
                }
            }
        }
        let result = r.finish(Vec::new())?;
        let sum = result.ok_or("round did not finish")??.sum;
        assert_eq!(
            sum,
            vec![1 + 2 + 3 + 4; 8],
            "{suite}: rejected messages disturbed the sum"
        );
    }
    Ok(())
}

#[test]
fn round_fails_when_fewer_than_t_shares_arrive_and_a_late_site_cannot_rejoin() -> Res {
    for suite in Suite::ALL {
        // Deadline passes in the unmask stage with only one responder; t = 3.
        let mut r = round(suite, 5, 4, 3, 4)?;
        let nk = r.advertise()?;
        let sh = r.share(nk)?;
        let masked = r.mask(sh, vec![Some(vec![5u32; 4]); 5])?;
        let out = r.submit(&masked)?;
        let mut reqs = requests(r.agree(out)?);
        let (to, msg) = reqs.remove(0);
        r.sites[to as usize - 1].handle_unmask_request(msg)?;
        if let Some(SiteOutput::Unmask(u)) = r.sites[to as usize - 1].poll_output() {
            r.coord.handle_unmask_response(u, r.now)?;
        }
        let deadline = r.coord.poll_timeout().ok_or("no deadline")?;
        r.coord.handle_timeout(deadline);
        let failed = r.finish(Vec::new())?;
        assert!(
            matches!(failed, Some(Err(ProtocolError::Reconstruction { have, need: 3, .. })) if have < 3),
            "{failed:?}"
        );
        let (to2, msg2) = reqs.remove(0);
        r.sites[to2 as usize - 1].handle_unmask_request(msg2)?;
        if let Some(SiteOutput::Unmask(u)) = r.sites[to2 as usize - 1].poll_output() {
            assert_eq!(
                r.coord.handle_unmask_response(u, r.now),
                Err(ProtocolError::Ended)
            );
        }
    }
    Ok(())
}

#[test]
fn a_masked_vector_alone_looks_uniform() -> Res {
    const LEN: usize = 1 << 20;
    for suite in Suite::ALL {
        let mut r = round(suite, 3, 2, 2, LEN)?;
        let nk = r.advertise()?;
        let sh = r.share(nk)?;
        // Worst case for hiding: every input is all zeros.
        let masked = r.mask(sh, vec![Some(vec![0u32; LEN]); 3])?;
        for (m, v, _) in masked {
            // Chi-square of the top byte over 256 bins (df = 255). The 1e-9
            // quantile is about 410; an unmasked zero vector scores ~ 2.7e8.
            let mut bins = [0u64; 256];
            let mut ones = [0u64; 32];
            for &w in &v {
                bins[(w >> 24) as usize] += 1;
                for (b, o) in ones.iter_mut().enumerate() {
                    *o += u64::from((w >> b) & 1);
                }
            }
            let e = LEN as f64 / 256.0;
            let chi2: f64 = bins.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
            assert!(chi2 < 410.0, "{suite} member {m}: chi-square {chi2}");
            // Each bit is balanced within 6 standard deviations (σ = 512).
            for (b, &o) in ones.iter().enumerate() {
                let dev = (o as f64 - LEN as f64 / 2.0).abs();
                assert!(dev < 6.0 * 512.0, "{suite} member {m} bit {b}: {o} ones");
            }
        }
    }
    Ok(())
}

#[test]
fn secrets_never_show_in_debug_output() -> Res {
    for suite in Suite::ALL {
        let r = round(suite, 3, 2, 2, 4)?;
        let key_hex = hex::encode(r.keys[0].secret_bytes());
        for s in [
            format!("{:?}", r.sites[0]),
            format!("{:?}", r.keys[0]),
            format!("{:?}", r.coord),
        ] {
            assert!(!s.contains(&key_hex), "{s}");
        }
    }
    Ok(())
}
