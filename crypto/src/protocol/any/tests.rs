//! Whole rounds through the ring-erased wrappers, checked against the generic
//! machines (driven by [`Simulation`]) and against the plain sum.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::graph::SecAggParams;
use crate::protocol::KeyDirectory;
use crate::sim::Simulation;
use crate::suite::{SigningKey, Suite};

/// `sum += x` in the same ring.
fn add_ring(sum: &mut RingVec, x: &RingVec) {
    match (sum, x) {
        (RingVec::U32(s), RingVec::U32(x)) => ring::add_assign(s, x),
        (RingVec::U64(s), RingVec::U64(x)) => ring::add_assign(s, x),
        _ => panic!("ring mismatch"),
    }
}

/// Drive one round through [`AnySite`]s and an [`AnyCoordinator`]. Member
/// `drop`, if any, never sends its masked input (nor anything after). With
/// `offload` (secure only) the test keeps the sum of the inputs and runs
/// the unmask job itself, as the coordinator does off its lock.
fn run_any(
    cfg: &RoundConfig,
    inputs: &[RingVec],
    secure: bool,
    drop: Option<MemberId>,
    seed: u64,
    offload: bool,
) -> Result<AnyRoundResult, ProtocolError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut now = Instant::now();
    let timeout = Duration::from_secs(60);
    let mut coord = if secure {
        AnyCoordinator::secure(cfg.clone(), StageTimeouts::uniform(timeout), now)?
    } else {
        AnyCoordinator::plain(cfg, now + timeout)
    };
    assert_eq!(coord.is_secure(), secure);
    if offload {
        assert!(coord.sum_outside()?);
    }
    let mut outside = RingVec::zeros(cfg.ring, cfg.vector_len);
    assert_eq!(coord.ring(), cfg.ring);
    assert_eq!(coord.width(), cfg.ring.bytes());
    let mut keys = BTreeMap::new();
    let mut directory = KeyDirectory::new();
    for &m in &cfg.cohort {
        let k = SigningKey::generate(cfg.suite, &mut rng);
        directory.insert(m, k.verifying_key()?);
        keys.insert(m, k);
    }
    let directory = Arc::new(directory);
    let mut sites = BTreeMap::new();
    if secure {
        for &m in &cfg.cohort {
            let site = AnySite::new(
                cfg.clone(),
                m,
                keys[&m].clone(),
                directory.clone(),
                &crate::sim::lenient_policy(),
                &mut rng,
            )?;
            assert_eq!((site.member(), site.ring()), (m, cfg.ring));
            assert_eq!(site.config(), cfg);
            sites.insert(m, site);
        }
    }
    let mut pending: BTreeMap<MemberId, RingVec> = cfg
        .cohort
        .iter()
        .copied()
        .zip(inputs.iter().cloned())
        .collect();
    loop {
        let stage = coord.stage();
        if !secure {
            // Plaintext mode: the inputs go straight to the coordinator, as bytes.
            for (m, x) in std::mem::take(&mut pending) {
                if Some(m) != drop {
                    coord.handle_masked_input_bytes(cfg.round, m, &x.to_le_bytes(), None, now)?;
                }
            }
        }
        for (&m, site) in sites.iter_mut() {
            let gone = |s: Stage| drop == Some(m) && s >= Stage::MaskedInput;
            if site.stage() == Stage::MaskedInput
                && !gone(Stage::MaskedInput)
                && let Some(x) = pending.remove(&m)
            {
                site.handle_input(x)?;
            }
            while let Some(o) = site.poll_output() {
                if gone(o.stage()) {
                    continue;
                }
                match o {
                    AnySiteOutput::Advertise(a) => {
                        let id = directory_identity(&keys, m)?;
                        coord.handle_advert(a, id, now)?
                    }
                    AnySiteOutput::Shares(b) => coord.handle_shares(b, now)?,
                    AnySiteOutput::MaskedInput { vector, masking } => {
                        assert_eq!((vector.ring(), vector.len()), (cfg.ring, cfg.vector_len));
                        if offload {
                            let len = vector.len();
                            coord.handle_masked_input_outside(
                                cfg.round,
                                m,
                                len,
                                Some(masking),
                                now,
                            )?;
                            add_ring(&mut outside, &vector);
                        } else {
                            coord.handle_masked_input(cfg.round, m, &vector, Some(masking), now)?
                        }
                    }
                    AnySiteOutput::Consistency(sig) => coord.handle_consistency(sig, now)?,
                    AnySiteOutput::Unmask(u) => coord.handle_unmask_response(u, now)?,
                }
            }
        }
        if coord.stage() == stage
            && stage != Stage::Done
            && let Some(d) = coord.poll_timeout()
        {
            // Nobody else will answer: let the deadline pass.
            assert!(!coord.pending().is_empty());
            now = d;
            coord.handle_timeout(now);
        }
        if let Some(mut job) = coord.take_unmask_job() {
            // The machine waits for the job: no deadline, nobody pending.
            assert!(offload);
            assert_eq!(coord.stage(), Stage::Unmask);
            assert!(coord.pending().is_empty() && coord.poll_timeout().is_none());
            job.set_sum(std::mem::replace(&mut outside, RingVec::zeros(cfg.ring, 0)))?;
            let outcome = job.run();
            while let Some(o) = coord.poll_output() {
                assert!(
                    !matches!(o, AnyOutput::Finished(_)),
                    "finished before the job"
                );
            }
            coord.complete_unmask(outcome);
        }
        while let Some(o) = coord.poll_output() {
            match o {
                AnyOutput::Finished(r) => return r,
                AnyOutput::StageClosed { .. } | AnyOutput::Blamed { .. } => {}
                AnyOutput::NeighbourKeys { to, msg } => {
                    sites
                        .get_mut(&to)
                        .expect("site")
                        .handle_neighbour_keys(msg, &mut rng)?;
                }
                AnyOutput::IncomingShares { to, msg } => {
                    sites
                        .get_mut(&to)
                        .expect("site")
                        .handle_incoming_shares(msg)?;
                }
                AnyOutput::ConsistencyRequest { to, msg } => {
                    sites
                        .get_mut(&to)
                        .expect("site")
                        .handle_consistency_request(std::sync::Arc::unwrap_or_clone(msg))?;
                }
                AnyOutput::UnmaskRequest { to, msg } => {
                    sites
                        .get_mut(&to)
                        .expect("site")
                        .handle_unmask_request(std::sync::Arc::unwrap_or_clone(msg))?;
                }
            }
        }
        now += Duration::from_millis(1);
    }
}

fn directory_identity(
    keys: &BTreeMap<MemberId, SigningKey>,
    m: MemberId,
) -> Result<Vec<u8>, ProtocolError> {
    Ok(keys[&m].verifying_key()?.as_bytes().to_vec())
}

fn random_inputs<R: RingElement>(n: usize, len: usize, seed: u64) -> Vec<Vec<R>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..len).map(|_| R::from_u64(rng.next_u64())).collect())
        .collect()
}

fn plain_sum<R: RingElement>(inputs: &[Vec<R>], members: &[MemberId], keep: &[MemberId]) -> Vec<R> {
    let mut acc = vec![R::default(); inputs[0].len()];
    for (m, x) in members.iter().zip(inputs) {
        if keep.contains(m) {
            ring::add_assign(&mut acc, x);
        }
    }
    acc
}

/// The wrappers, secure and plain, give what the generic machines give.
fn same_as_generic<R: RingElement>(
    suite: Suite,
    n: usize,
    params: SecAggParams,
    drop: Option<MemberId>,
) -> Result<(), ProtocolError>
where
    RingVec: From<Vec<R>>,
{
    let mut sim = Simulation::new(suite, n, params).with_seed(11);
    if let Some(d) = drop {
        sim = sim.drop_at(d, Stage::MaskedInput);
    }
    let x = random_inputs::<R>(n, 33, 5);
    let generic = sim.run(&x)?.result?;
    let expected_survivors: Vec<MemberId> = sim
        .members
        .iter()
        .copied()
        .filter(|&m| Some(m) != drop)
        .collect();
    assert_eq!(generic.survivors, expected_survivors);
    assert_eq!(
        generic.sum,
        plain_sum(&x, &sim.members, &expected_survivors)
    );

    let cfg = sim.config::<R>(33);
    let any_inputs: Vec<RingVec> = x.iter().cloned().map(RingVec::from).collect();
    let secure = run_any(&cfg, &any_inputs, true, drop, 3, false)?;
    assert_eq!(secure, AnyRoundResult::from(generic.clone()));
    // The sum kept by the caller and the unmask run outside the machine.
    let offloaded = run_any(&cfg, &any_inputs, true, drop, 3, true)?;
    assert_eq!(offloaded, secure);

    let plain = run_any(&cfg, &any_inputs, false, drop, 3, false)?;
    assert_eq!(plain.sum, RingVec::from(generic.sum));
    assert_eq!(plain.survivors, generic.survivors);
    assert_eq!(plain.dropped, generic.dropped);
    assert_eq!(plain.reconstructions, 0);
    Ok(())
}

#[test]
fn three_sites_both_suites_both_rings() -> Result<(), ProtocolError> {
    for suite in Suite::ALL {
        let params = SecAggParams { k: 2, t: 2 };
        same_as_generic::<u32>(suite, 3, params, None)?;
        same_as_generic::<u64>(suite, 3, params, None)?;
    }
    Ok(())
}

#[test]
fn dropout_before_input_both_suites_both_rings() -> Result<(), ProtocolError> {
    for suite in Suite::ALL {
        let params = SecAggParams { k: 4, t: 3 };
        same_as_generic::<u32>(suite, 5, params, Some(4))?;
        same_as_generic::<u64>(suite, 5, params, Some(4))?;
    }
    Ok(())
}

fn config(ring: Ring) -> RoundConfig {
    RoundConfig {
        round: 7,
        suite: Suite::Intl,
        ring,
        cohort: vec![1, 2, 3],
        params: SecAggParams { k: 2, t: 2 },
        graph_seed: [3; 32],
        vector_len: 2,
        min_survivors: 2,
        max_colluders: 0,
        context: [0; 32],
    }
}

#[test]
fn plain_coordinator_rejects_secure_messages_with_wrong_stage() {
    let now = Instant::now();
    let mut c = AnyCoordinator::plain(&config(Ring::U64), now);
    assert!(!c.is_secure());
    assert_eq!((c.ring(), c.width()), (Ring::U64, 8));
    assert_eq!(c.stage(), Stage::MaskedInput);
    let advert = KeyAdvert {
        round: 7,
        member: 1,
        enc_public: vec![],
        mask_public: vec![],
        signature: vec![],
    };
    assert_eq!(
        c.handle_advert(advert, vec![], now),
        Err(ProtocolError::WrongStage {
            expected: Stage::MaskedInput,
            got: Stage::AdvertiseKeys
        })
    );
    let bundle = ShareBundle {
        round: 7,
        from: 1,
        seed_commitment: [0; 32],
        shares: vec![],
    };
    assert_eq!(
        c.handle_shares(bundle, now),
        Err(ProtocolError::WrongStage {
            expected: Stage::MaskedInput,
            got: Stage::ShareKeys
        })
    );
    let resp = UnmaskResponse {
        round: 7,
        from: 1,
        seed_shares: vec![],
        key_shares: vec![],
        pair_keys: vec![],
    };
    assert_eq!(
        c.handle_unmask_response(resp, now),
        Err(ProtocolError::WrongStage {
            expected: Stage::MaskedInput,
            got: Stage::Unmask
        })
    );
    assert_eq!(c.pending(), vec![1, 2, 3]);
}

#[test]
fn coordinator_input_errors() {
    let now = Instant::now();
    for secure in [false, true] {
        let cfg = config(Ring::U32);
        let mut c = if secure {
            AnyCoordinator::secure(cfg, StageTimeouts::uniform(Duration::from_secs(1)), now)
                .unwrap()
        } else {
            AnyCoordinator::plain(&cfg, now + Duration::from_secs(1))
        };
        // Bytes that are not whole elements: malformed, before any other check.
        assert!(matches!(
            c.handle_masked_input_bytes(99, 2, &[0; 7], None, now),
            Err(ProtocolError::Malformed { member: 2, .. })
        ));
        // A vector in the other ring: malformed.
        let err = c
            .handle_masked_input(7, 2, &RingVec::U64(vec![1, 2]), None, now)
            .unwrap_err();
        assert!(
            matches!(&err, ProtocolError::Malformed { member: 2, reason } if reason.contains("u64")),
            "{err}"
        );
        let got = c.handle_masked_input_bytes(7, 2, &[0; 8], None, now);
        if secure {
            // A secure round needs the signed masking set with every input.
            assert!(matches!(
                got,
                Err(ProtocolError::Malformed { member: 2, .. })
            ));
        } else {
            assert!(got.is_ok());
            assert!(matches!(
                c.handle_masked_input_bytes(7, 3, &[0; 4], None, now),
                Err(ProtocolError::WrongLength {
                    expected: 2,
                    got: 1
                })
            ));
        }
    }
}

#[test]
fn abort_secure_reports_aborted() {
    let now = Instant::now();
    let mut c = AnyCoordinator::secure(
        config(Ring::U64),
        StageTimeouts::uniform(Duration::from_secs(1)),
        now,
    )
    .unwrap();
    assert!(c.is_secure());
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(1)));
    c.abort("shutdown");
    assert_eq!(c.stage(), Stage::Done);
    assert!(c.pending().is_empty());
    match c.poll_output() {
        Some(AnyOutput::Finished(Err(e))) => {
            assert_eq!(
                e,
                ProtocolError::Aborted {
                    reason: "shutdown".into()
                }
            );
            assert_eq!(e.to_string(), "round aborted: shutdown");
        }
        other => panic!("expected an aborted round, got {other:?}"),
    }
    assert!(c.poll_output().is_none());
}

#[test]
fn site_rejects_input_in_the_wrong_ring() -> Result<(), ProtocolError> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let cfg = config(Ring::U32);
    let key = SigningKey::generate(cfg.suite, &mut rng);
    let mut dir = KeyDirectory::new();
    dir.insert(1, key.verifying_key()?);
    let mut site = AnySite::new(
        cfg,
        1,
        key,
        Arc::new(dir),
        &crate::sim::lenient_policy(),
        &mut rng,
    )?;
    assert!(matches!(
        site.poll_output(),
        Some(AnySiteOutput::Advertise(_))
    ));
    let err = site.handle_input(RingVec::U64(vec![1, 2])).unwrap_err();
    assert!(matches!(err, ProtocolError::Config(_)), "{err}");
    assert_eq!(site.stage(), Stage::AdvertiseKeys, "site unchanged");
    // The right ring reaches the machine, which checks the stage.
    assert!(matches!(
        site.handle_input(RingVec::U32(vec![1, 2])),
        Err(ProtocolError::WrongStage { .. })
    ));
    Ok(())
}

#[test]
fn ring_vec_helpers() {
    let v = RingVec::from(vec![1u32, u32::MAX]);
    assert_eq!((v.ring(), v.len(), v.is_empty()), (Ring::U32, 2, false));
    assert_eq!(v.as_u32(), Some(&[1, u32::MAX][..]));
    assert_eq!(v.as_u64(), None);
    assert_eq!(v.to_u64_vec(), vec![1, u64::from(u32::MAX)]);
    assert_eq!(v.to_signed(), vec![1, -1]);
    let b = v.to_le_bytes();
    assert_eq!(b, [1, 0, 0, 0, 255, 255, 255, 255]);
    assert_eq!(RingVec::from_le_bytes(Ring::U32, &b), Ok(v));
    let w = RingVec::from_le_bytes(Ring::U64, &b).unwrap();
    assert_eq!(w, RingVec::U64(vec![0xffff_ffff_0000_0001]));
    assert_eq!(w.as_u64(), Some(&[0xffff_ffff_0000_0001][..]));
    assert!(RingVec::from_le_bytes(Ring::U64, &b[..5]).is_err());
    let z = RingVec::zeros(Ring::U64, 0);
    assert!(z.is_empty());
    assert_eq!(z.to_le_bytes(), Vec::<u8>::new());
    assert_eq!(RingVec::zeros(Ring::U32, 3), RingVec::U32(vec![0; 3]));
}

#[test]
fn clone_from_copies_into_the_buffer_it_has_when_the_rings_match() {
    let src = RingVec::U32(vec![7, 8, 9]);
    let mut dst = RingVec::U32(Vec::with_capacity(16));
    let before = match &dst {
        RingVec::U32(v) => v.as_ptr(),
        RingVec::U64(_) => unreachable!(),
    };
    dst.clone_from(&src);
    assert_eq!(dst, src);
    match &dst {
        RingVec::U32(v) => assert_eq!(v.as_ptr(), before, "the buffer was not reused"),
        RingVec::U64(_) => panic!("ring changed"),
    }
    // Another ring: a copy in the source's ring, whatever it held.
    let wide = RingVec::U64(vec![1 << 40, 2]);
    dst.clone_from(&wide);
    assert_eq!(dst, wide);
    let mut longer = RingVec::U64(vec![5; 10]);
    longer.clone_from(&wide);
    assert_eq!(longer, wide);
}
