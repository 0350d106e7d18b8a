//! A coordinator or network that misbehaves, driven message by message:
//! substituted keys, forged signatures, requests for both shares, replays,
//! wrong stages, duplicates, wrong lengths; and the statistical look of a
//! masked vector.

use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{
    CoordinatorOutput, MemberId, RoundConfig, SiteOutput, UnmaskRequest,
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
        min_survivors: t.max(2),
    };
    Stepper::new(cfg, 99)
}

fn requests(outputs: Vec<CoordinatorOutput<u32>>) -> Vec<(MemberId, UnmaskRequest)> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            CoordinatorOutput::UnmaskRequest { to, msg } => Some((to, msg)),
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
            let res = r.sites[to as usize - 1].handle_neighbour_keys(msg, &mut r.rng);
            match to {
                1 => assert!(
                    matches!(res, Err(ProtocolError::BadAdvert { member: 2, .. })),
                    "{suite}: {res:?}"
                ),
                3 => assert!(
                    matches!(res, Err(ProtocolError::BadAdvert { member: 4, .. })),
                    "{suite}: {res:?}"
                ),
                _ => assert!(res.is_ok()),
            }
        }
        // The deceived sites have aborted: nothing was dealt, later input is refused.
        for to in [1usize, 3] {
            assert!(r.sites[to - 1].poll_output().is_none());
            assert_eq!(
                r.sites[to - 1].handle_input(vec![0; 8]),
                Err(ProtocolError::Ended)
            );
        }
    }
    Ok(())
}

#[test]
fn site_refuses_to_reveal_both_shares_of_one_member() -> Res {
    for suite in Suite::ALL {
        let mut r = round(suite, 4, 3, 2, 8)?;
        let nk = r.advertise()?;
        let sh = r.share(nk)?;
        let _ = r.mask(sh, vec![Some(vec![1u32; 8]); 4])?;
        // Member 2 listed as survivor and dropped at once.
        let req = UnmaskRequest {
            round: 5,
            survivors: vec![1, 2, 3],
            dropped: vec![2, 4],
        };
        assert_eq!(
            r.sites[0].handle_unmask_request(req.clone()),
            Err(ProtocolError::BothSharesRequested(2))
        );
        // The site has aborted: a second, innocent-looking request gets nothing.
        let again = UnmaskRequest {
            round: 5,
            survivors: vec![1, 3],
            dropped: vec![2, 4],
        };
        assert_eq!(
            r.sites[0].handle_unmask_request(again),
            Err(ProtocolError::Ended)
        );
        assert!(r.sites[0].poll_output().is_none());
        // Too few surviving neighbours: refused too.
        let few = UnmaskRequest {
            round: 5,
            survivors: vec![2],
            dropped: vec![1, 3, 4],
        };
        assert!(matches!(
            r.sites[1].handle_unmask_request(few),
            Err(ProtocolError::BelowThreshold {
                member: 2,
                have: 0,
                need: 2
            })
        ));
        // Not listed as a survivor itself: refused.
        let not_me = UnmaskRequest {
            round: 5,
            survivors: vec![1, 2, 4],
            dropped: vec![3],
        };
        assert!(matches!(
            r.sites[2].handle_unmask_request(not_me),
            Err(ProtocolError::Malformed { member: 3, .. })
        ));
    }
    Ok(())
}

#[test]
fn coordinator_rejects_replays_wrong_stage_duplicates_and_wrong_lengths_without_harm() -> Res {
    for suite in Suite::ALL {
        let mut r = round(suite, 4, 3, 2, 8)?;
        let now = r.now;
        // Wrong stage: a masked input during key advertisement.
        assert!(matches!(
            r.coord.handle_masked_input(5, 1, &[0; 8], now),
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
            r.coord.handle_masked_input(5, 1, &masked[0].1[..7], now),
            Err(ProtocolError::WrongLength {
                expected: 8,
                got: 7
            })
        );
        for (m, v) in &masked {
            r.coord.handle_masked_input(5, *m, v, now)?;
        }
        let reqs = requests(std::iter::from_fn(|| r.coord.poll_output()).collect());
        assert_eq!(reqs.len(), 4);
        assert_eq!(
            r.coord.handle_masked_input(5, 2, &masked[1].1, now),
            Err(ProtocolError::WrongStage {
                expected: Stage::Unmask,
                got: Stage::MaskedInput
            })
        );
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
        let mut reqs = requests(r.submit(&masked)?);
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
        for (m, v) in masked {
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
