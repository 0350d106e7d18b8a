//! One bad site against an honest coordinator and honest peers: an unusable
//! advertised key, a garbage share ciphertext, an inconsistent unmask share, a
//! one-sided masking claim. The round completes with the others and names the
//! culprit, or fails once, naming it, so the federation can exclude it; a
//! one-sided pair completes too (its masker reveals that pair's key).

use confide_crypto::ProtocolError;
use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::protocol::{
    CoordinatorOutput, MemberId, RoundConfig, RoundResult, SiteOutput, UnmaskResponse,
};
use confide_crypto::ring::Ring;
use confide_crypto::shamir::Share;
use confide_crypto::sim::Stepper;
use confide_crypto::suite::Suite;

type Res = Result<(), Box<dyn std::error::Error>>;
const LEN: usize = 5;

fn config(suite: Suite, n: usize) -> RoundConfig {
    let params = graph::choose_complete(n, 0.1, 0.1).expect("params");
    RoundConfig {
        round: 3,
        suite,
        ring: Ring::U32,
        cohort: (1..=n as MemberId).collect(),
        params,
        graph_seed: [0; 32],
        vector_len: LEN,
        min_survivors: 3,
        max_colluders: graph::colluders(n, 0.1).expect("γ"),
        context: [3; 32],
    }
}

fn input(m: MemberId) -> Vec<u32> {
    (0..LEN as u32).map(|j| m * 1000 + j).collect()
}

fn sum_of(members: &[MemberId]) -> Vec<u32> {
    let mut acc = vec![0u32; LEN];
    for &m in members {
        for (a, b) in acc.iter_mut().zip(input(m)) {
            *a = a.wrapping_add(b);
        }
    }
    acc
}

/// Adverts from every site to the coordinator, `tamper` applied first.
fn advertise(
    st: &mut Stepper<u32>,
    tamper: impl Fn(&mut confide_crypto::protocol::KeyAdvert),
) -> Result<Vec<CoordinatorOutput<u32>>, ProtocolError> {
    for i in 0..st.sites.len() {
        while let Some(SiteOutput::Advertise(mut a)) = st.sites[i].poll_output() {
            tamper(&mut a);
            let id = st.identity(a.member)?;
            st.coord.handle_advert(a, id, st.now)?;
        }
    }
    Ok(std::iter::from_fn(|| st.coord.poll_output()).collect())
}

/// Run the stages from the shares on; a member without input is silent.
fn finish_round(
    st: &mut Stepper<u32>,
    shares: Vec<CoordinatorOutput<u32>>,
    inputs: Vec<Option<Vec<u32>>>,
) -> Result<Result<RoundResult<u32>, ProtocolError>, ProtocolError> {
    let masked = st.mask(shares, inputs)?;
    let out = st.submit(&masked)?;
    let req = st.agree(out)?;
    let resp = st.responses(req)?;
    st.finish(resp)?.ok_or(ProtocolError::Aborted {
        reason: "round did not finish".into(),
    })
}

#[test]
fn an_unusable_advertised_key_costs_only_its_owner() -> Res {
    for suite in Suite::ALL {
        // Member 3 signs an advert whose encryption key is not a curve point.
        let mut st = Stepper::<u32>::new(config(suite, 6), 1)?;
        let key3 = st.keys[2].clone();
        let bad_key = vec![4u8; 65];
        let session = st.coord.config().session_id();
        let out = advertise(&mut st, |a| {
            if a.member == 3 {
                a.enc_public = bad_key.clone();
                let bytes = confide_crypto::protocol::KeyAdvert::signed_bytes(
                    &session,
                    3,
                    &a.enc_public,
                    &a.mask_public,
                );
                a.signature = key3.sign(&bytes).expect("sign");
            }
        })?;
        let shares = st.share(out)?;
        for m in [1, 2, 4, 5, 6] {
            let site = st.site(m)?;
            assert_eq!(
                site.rejected().iter().map(|r| r.0).collect::<Vec<_>>(),
                vec![3],
                "{suite} {m}"
            );
        }
        // Nobody dealt member 3 a share: it cannot go on (its own error).
        let shares: Vec<_> = shares
            .into_iter()
            .filter(|o| {
                let CoordinatorOutput::IncomingShares { to: 3, msg } = o else {
                    return true;
                };
                assert!(msg.shares.is_empty());
                false
            })
            .collect();
        let inputs = (1..=6).map(|m| (m != 3).then(|| input(m))).collect();
        let r = finish_round(&mut st, shares, inputs)??;
        assert_eq!(r.survivors, vec![1, 2, 4, 5, 6]);
        assert_eq!(r.sum, sum_of(&[1, 2, 4, 5, 6]), "{suite}");
        // Refused by five sites, more than the one that may collude: named.
        let named: Vec<MemberId> = st.blamed.iter().map(|b| b.0).collect();
        assert_eq!(named, vec![3], "{suite}: {:?}", st.blamed);
    }
    Ok(())
}

#[test]
fn a_garbage_share_is_left_out_and_the_round_completes() -> Res {
    for suite in Suite::ALL {
        let mut st = Stepper::<u32>::new(config(suite, 6), 2)?;
        let out = st.advertise()?;
        // Member 4's sealed share for member 1 is garbage; then 4 vanishes.
        for o in out {
            if let CoordinatorOutput::NeighbourKeys { to, msg } = o {
                let i = (to - 1) as usize;
                st.sites[i].handle_neighbour_keys(msg, &mut st.rng)?;
            }
        }
        for i in 0..6 {
            while let Some(SiteOutput::Shares(mut b)) = st.sites[i].poll_output() {
                if b.from == 4 {
                    for s in b.shares.iter_mut().filter(|s| s.to == 1) {
                        s.ciphertext.iter_mut().for_each(|c| *c ^= 0x5a);
                    }
                }
                st.coord.handle_shares(b, st.now)?;
            }
        }
        let shares: Vec<_> = std::iter::from_fn(|| st.coord.poll_output()).collect();
        let inputs = (1..=6).map(|m| (m != 4).then(|| input(m))).collect();
        let masked = st.mask(shares, inputs)?;
        let named: Vec<MemberId> = st.site(1)?.rejected().iter().map(|r| r.0).collect();
        assert_eq!(named, vec![4], "{suite}");
        let set1 = &masked.iter().find(|m| m.0 == 1).ok_or("no input from 1")?.2;
        assert_eq!(set1.peers, vec![2, 3, 5, 6]);
        let out = st.submit(&masked)?;
        let req = st.agree(out)?;
        let resp = st.responses(req)?;
        let r = st.finish(resp)?.ok_or("not finished")??;
        assert_eq!(r.dropped, vec![4]);
        assert_eq!(r.sum, sum_of(&[1, 2, 3, 5, 6]), "{suite}");
        // One refusal could be a lie by the refuser: nobody is named for it.
        assert!(st.blamed.is_empty(), "{suite}: {:?}", st.blamed);
    }
    Ok(())
}

#[test]
fn an_inconsistent_unmask_share_is_located_and_its_sender_named() -> Res {
    // n = 8: k = 7, t = 5, so each secret has up to two spare shares.
    for suite in Suite::ALL {
        let mut st = Stepper::<u32>::new(config(suite, 8), 3)?;
        assert_eq!(st.coord.config().params, SecAggParams { k: 7, t: 5 });
        let out = st.advertise()?;
        let shares = st.share(out)?;
        let inputs = (1..=8).map(|m| Some(input(m))).collect();
        let masked = st.mask(shares, inputs)?;
        let out = st.submit(&masked)?;
        let req = st.agree(out)?;
        let mut resp = st.responses(req)?;
        // Member 2 corrupts its share of member 1's self-mask seed.
        let r2: &mut UnmaskResponse = resp.iter_mut().find(|r| r.from == 2).ok_or("no response")?;
        for (owner, share) in r2.seed_shares.iter_mut() {
            if *owner == 1 {
                let mut b = share.to_bytes();
                b[10] ^= 1;
                *share = Share::from_bytes(&b)?;
            }
        }
        let r = st.finish(resp)?.ok_or("not finished")??;
        assert_eq!(r.sum, sum_of(&(1..=8).collect::<Vec<_>>()), "{suite}");
        assert_eq!(st.blamed.len(), 1, "{suite}: {:?}", st.blamed);
        assert_eq!(st.blamed[0].0, 2);
    }
    Ok(())
}

/// A round of 6 in which member 1 never receives member 6's share (the relay
/// withholds it), so 6 masks with 1 but 1 does not mask with 6: a one-sided
/// pair. With an honest relay only a lying site can make one (by leaving an
/// honest peer out of its own set); either way the masker is honest here.
fn one_sided_round(
    suite: Suite,
) -> Result<(Stepper<u32>, Vec<CoordinatorOutput<u32>>), ProtocolError> {
    let mut st = Stepper::<u32>::new(config(suite, 6), 4)?;
    let out = st.advertise()?;
    let shares = st.share(out)?;
    let shares: Vec<_> = shares
        .into_iter()
        .map(|o| match o {
            CoordinatorOutput::IncomingShares { to: 1, mut msg } => {
                msg.shares.retain(|s| s.from != 6);
                CoordinatorOutput::IncomingShares { to: 1, msg }
            }
            other => other,
        })
        .collect();
    let inputs = (1..=6).map(|m| Some(input(m))).collect();
    let masked = st.mask(shares, inputs)?;
    let out = st.submit(&masked)?;
    let req = st.agree(out)?;
    Ok((st, req))
}

#[test]
fn a_one_sided_pair_is_unmasked_with_its_key_and_the_round_completes() -> Res {
    for suite in [Suite::Intl, Suite::Gm] {
        let (mut st, req) = one_sided_round(suite)?;
        let resp = st.responses(req)?;
        // Only the masker reveals, and only that one pair's key.
        for r in &resp {
            let peers: Vec<MemberId> = r.pair_keys.iter().map(|(p, _)| *p).collect();
            let want: Vec<MemberId> = if r.from == 6 { vec![1] } else { vec![] };
            assert_eq!(peers, want, "{suite}: member {}", r.from);
        }
        let r = st.finish(resp)?.ok_or("not finished")??;
        assert_eq!(r.sum, sum_of(&[1, 2, 3, 4, 5, 6]), "{suite}");
        assert!(r.dropped.is_empty(), "{suite}: {:?}", r.dropped);
        // Nobody is blamed: the masker may have been framed by its peer.
        assert!(st.blamed.is_empty(), "{suite}: {:?}", st.blamed);
    }
    Ok(())
}

#[test]
fn a_one_sided_pair_needs_its_masker_and_a_forged_key_set_is_refused() -> Res {
    let (mut st, req) = one_sided_round(Suite::Intl)?;
    let mut resp = st.responses(req)?;
    // A response naming a pair key it does not owe is malformed.
    let mut extra = resp
        .iter()
        .find(|r| r.from == 2)
        .cloned()
        .ok_or("no response from 2")?;
    let key = resp
        .iter()
        .find(|r| r.from == 6)
        .and_then(|r| r.pair_keys.first().cloned())
        .ok_or("no pair key from 6")?;
    extra.pair_keys.push((3, key.1));
    let refused = st.coord.handle_unmask_response(extra, st.now);
    assert!(
        matches!(refused, Err(ProtocolError::Malformed { member: 2, .. })),
        "{refused:?}"
    );
    // Without the masker's answer the mask cannot come off: the round fails
    // naming the pair, and blames nobody (the masker may just have crashed).
    resp.retain(|r| r.from != 6);
    assert!(st.finish(resp)?.is_none(), "finished without member 6");
    let d = st.coord.poll_timeout().ok_or("no unmask deadline")?;
    st.coord.handle_timeout(d);
    let failed = std::iter::from_fn(|| st.coord.poll_output()).find_map(|o| match o {
        CoordinatorOutput::Finished(r) => Some(r),
        _ => None,
    });
    assert!(
        matches!(
            failed,
            Some(Err(ProtocolError::MissingPairKey { masker: 6, peer: 1 }))
        ),
        "{failed:?}"
    );
    assert!(st.blamed.is_empty(), "{:?}", st.blamed);
    Ok(())
}
