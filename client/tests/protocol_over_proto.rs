//! Drives real `SiteMachine`s and a `CoordinatorMachine` with every message
//! passing through the wire types (prost-encoded bytes) and the conversions in
//! `confide_client::convert`, in both directions. If a conversion lost or
//! altered anything, signatures, AEAD tags or the unmasked sum would fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_client::RelayedKeyVerifier;
use confide_client::convert::{self, round_config, round_start};
use confide_client::wire::{self, masked_input_chunks, train_vector};
use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::protocol::{
    CoordinatorOutput, IdentityVerifier, SiteOutput, SitePolicy, StageTimeouts,
};
use confide_crypto::quant::{QuantConfig, Quantiser};
use confide_crypto::ring::{self, RingElement};
use confide_crypto::suite::SigningKey;
use confide_crypto::{CoordinatorMachine, MemberId, Ring, RoundConfig, SiteMachine, Stage, Suite};
use confide_proto::layout::pack::{self, Packing, packed_bytes};
use confide_proto::v1;
use prost::Message;

type Error = Box<dyn std::error::Error>;

/// Encode to bytes and decode again, as the network would.
fn wire<M: Message + Default>(m: &M) -> Result<M, Error> {
    Ok(M::decode(m.encode_to_vec().as_slice())?)
}

struct Outcome {
    mean: Vec<f64>,
    total_weight: u64,
    extras: Vec<i64>,
    survivors: Vec<MemberId>,
    bound: f64,
}

/// The announcement of `cfg` to `member`, with what the layer above binds.
fn announce(cfg: &RoundConfig, member: MemberId) -> v1::RoundStart {
    v1::RoundStart {
        kind: v1::RoundKind::Train as i32,
        attempt: vec![0xa7; 32],
        model_sha256: vec![0x5e; 32],
        ..round_start(cfg, member)
    }
}

const FEDERATION: &str = "over-proto";

/// Runs one round; `vanish` names a member that never sends its masked input.
fn run_round<R: RingElement>(
    suite: Suite,
    inputs: &[(Vec<f32>, u64)],
    vanish: Option<MemberId>,
) -> Result<Outcome, Error> {
    let mut rng = rand::rng();
    let n = inputs.len();
    let d = inputs[0].0.len();
    let members: Vec<MemberId> = (1..=n as MemberId).map(|i| i * 10).collect();
    // What the coordinator schedules for a small cohort: the complete graph
    // and a threshold covering ⌈0.1·n⌉ colluders.
    let mut cfg = RoundConfig {
        round: 7,
        suite,
        ring: R::RING,
        cohort: members.clone(),
        params: graph::choose_complete(n, 0.1, 0.1)?,
        graph_seed: [3; 32],
        vector_len: wire::train_len(d),
        min_survivors: 3,
        max_colluders: graph::colluders(n, 0.1)?,
        context: [0; 32],
    };
    cfg.context = round_config(&announce(&cfg, 0), FEDERATION, &[0; 32])?.context;
    let q = Quantiser::new(&QuantConfig {
        ring: R::RING,
        clip: 1.0,
        max_weight: 1000,
        max_cohort: n,
        scale: Some(1000.0),
        levels: None,
        bits: None,
        min_levels: 1,
    })?;
    let now = Instant::now();
    let mut coord = CoordinatorMachine::<R>::new(
        cfg.clone(),
        StageTimeouts::uniform(Duration::from_secs(60)),
        now,
    )?;
    let verifier: Arc<dyn IdentityVerifier> = Arc::new(RelayedKeyVerifier { suite });

    // Every site learns its round through a wire RoundStart.
    let mut sites = BTreeMap::new();
    let mut verifying = BTreeMap::new();
    for &m in &members {
        let rs = wire(&announce(&cfg, m))?;
        let site_cfg = round_config(&rs, FEDERATION, &[0; 32])?;
        assert_eq!(site_cfg, cfg, "RoundStart conversion must be lossless");
        let key = SigningKey::generate(suite, &mut rng);
        verifying.insert(m, key.verifying_key()?.as_bytes().to_vec());
        sites.insert(
            m,
            SiteMachine::<R>::new(
                site_cfg,
                rs.member,
                key,
                verifier.clone(),
                &SitePolicy::default(),
                &mut rng,
            )?,
        );
    }
    let session = "session-token";
    let mut stage_guard = 0;
    loop {
        stage_guard += 1;
        assert!(stage_guard < 20, "round did not finish");
        // Sites → coordinator, through the wire types.
        for (i, (&m, site)) in sites.iter_mut().enumerate() {
            if site.stage() == Stage::MaskedInput && vanish != Some(m) {
                let (delta, weight) = &inputs[i];
                let v: Vec<R> = train_vector(&q, delta, *weight, None, &mut rng, Vec::new())?;
                site.handle_input(v)?;
            }
            while let Some(out) = site.poll_output() {
                match out {
                    SiteOutput::Advertise(a) => {
                        let req = wire(&v1::AdvertiseKeysRequest {
                            session: session.into(),
                            advert: Some(convert::key_advert_to_proto(&a)),
                        })?;
                        let advert =
                            convert::key_advert_from_proto(req.advert.as_ref().ok_or("no advert")?);
                        coord.handle_advert(advert, verifying[&m].clone(), now)?;
                    }
                    SiteOutput::Shares(b) => {
                        let req = wire(&convert::share_bundle_to_proto(&b, session))?;
                        assert_eq!(req.session, session);
                        coord.handle_shares(convert::share_bundle_from_proto(&req)?, now)?;
                    }
                    SiteOutput::MaskedInput { vector, masking } => {
                        // The model slots travel packed at the quantiser's bits.
                        let (bits, len) = (q.bits(), wire::train_len(d));
                        let packing = Packing::new(R::RING, bits, d, len)?;
                        let mut bytes = Vec::new();
                        let mut relayed = None;
                        let chunks = masked_input_chunks(
                            session,
                            cfg.round,
                            &vector,
                            Some(&masking),
                            &packing,
                        );
                        for c in chunks {
                            let c = wire(&c)?;
                            assert_eq!(packing.bytes_at(c.offset as usize), Some(bytes.len()));
                            bytes.extend_from_slice(&c.data);
                            relayed = relayed.or(c.masking);
                        }
                        assert_eq!(bytes.len(), packed_bytes(d, bits) + (len - d) * R::BYTES);
                        let (head, tail) = bytes.split_at(packed_bytes(d, bits));
                        let mut assembled: Vec<R> = pack::unpack(head, bits, d)?;
                        assembled.extend(ring::from_le_bytes::<R>(tail)?);
                        let relayed = convert::masking_set_from_proto(
                            relayed.as_ref().ok_or("no masking set uploaded")?,
                        );
                        assert_eq!(relayed, masking);
                        coord.handle_masked_input(cfg.round, m, &assembled, relayed, now)?;
                    }
                    SiteOutput::Consistency(sig) => {
                        let req = wire(&convert::consistency_response_to_proto(&sig, session))?;
                        let back = convert::consistency_response_from_proto(&req);
                        assert_eq!(back, sig);
                        coord.handle_consistency(back, now)?;
                    }
                    SiteOutput::Unmask(u) => {
                        let req = wire(&convert::unmask_response_to_proto(&u, session))?;
                        coord.handle_unmask_response(
                            convert::unmask_response_from_proto(&req)?,
                            now,
                        )?;
                    }
                }
            }
        }
        let all_in = sites
            .iter()
            .all(|(&m, s)| vanish == Some(m) || s.stage() == Stage::Consistency);
        if coord.stage() == Stage::MaskedInput && vanish.is_some() && all_in {
            // The vanished site never answers: let the deadline pass.
            if let Some(t) = coord.poll_timeout() {
                coord.handle_timeout(t);
            }
        }
        // Coordinator → sites, through the wire types.
        while let Some(out) = coord.poll_output() {
            match out {
                CoordinatorOutput::NeighbourKeys { to, msg } => {
                    let p = wire(&convert::neighbour_keys_to_proto(&msg))?;
                    let back = convert::neighbour_keys_from_proto(&p)?;
                    assert_eq!(back, msg);
                    if let Some(s) = sites.get_mut(&to) {
                        s.handle_neighbour_keys(back, &mut rng)?;
                    }
                }
                CoordinatorOutput::IncomingShares { to, msg } => {
                    let back = convert::incoming_shares_from_proto(&wire(
                        &convert::incoming_shares_to_proto(&msg),
                    )?);
                    assert_eq!(back, msg);
                    if let Some(s) = sites.get_mut(&to) {
                        s.handle_incoming_shares(back)?;
                    }
                }
                CoordinatorOutput::ConsistencyRequest { to, msg } => {
                    let back = convert::consistency_request_from_proto(&wire(
                        &convert::consistency_request_to_proto(&msg),
                    )?);
                    assert_eq!(back, *msg);
                    if let Some(s) = sites.get_mut(&to).filter(|_| vanish != Some(to)) {
                        s.handle_consistency_request(back)?;
                    }
                }
                CoordinatorOutput::UnmaskRequest { to, msg } => {
                    let back = convert::unmask_request_from_proto(&wire(
                        &convert::unmask_request_to_proto(&msg),
                    )?)?;
                    assert_eq!(back, *msg);
                    if let Some(s) = sites.get_mut(&to).filter(|_| vanish != Some(to)) {
                        s.handle_unmask_request(back)?;
                    }
                }
                CoordinatorOutput::StageClosed { .. } | CoordinatorOutput::Blamed { .. } => {}
                CoordinatorOutput::Finished(result) => {
                    let result = result?;
                    let decoded = q.decode(&result.sum, d, result.survivors.len())?;
                    return Ok(Outcome {
                        mean: decoded.mean,
                        total_weight: decoded.total_weight,
                        extras: decoded.extras,
                        survivors: result.survivors,
                        bound: q.error_bound(n, decoded.total_weight),
                    });
                }
            }
        }
    }
}

fn weighted_mean(inputs: &[(Vec<f32>, u64)]) -> Vec<f64> {
    let total: u64 = inputs.iter().map(|(_, w)| w).sum();
    (0..inputs[0].0.len())
        .map(|j| {
            inputs
                .iter()
                .map(|(x, w)| f64::from(x[j]) * *w as f64)
                .sum::<f64>()
                / total as f64
        })
        .collect()
}

fn inputs(n: usize, d: usize) -> Vec<(Vec<f32>, u64)> {
    (0..n)
        .map(|i| {
            (
                (0..d)
                    .map(|j| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.45)
                    .collect(),
                10 + 5 * i as u64,
            )
        })
        .collect()
}

#[test]
fn secure_round_through_proto_matches_plain_weighted_mean() -> Result<(), Error> {
    for suite in Suite::ALL {
        for n in [3, 5] {
            let xs = inputs(n, 9);
            let out = run_round::<u32>(suite, &xs, None)?;
            assert_eq!(out.survivors.len(), n);
            assert_eq!(out.total_weight, xs.iter().map(|(_, w)| w).sum::<u64>());
            assert_eq!(out.extras, vec![0; wire::EXTRA_SLOTS]);
            for (a, b) in out.mean.iter().zip(weighted_mean(&xs)) {
                assert!(
                    (a - b).abs() <= out.bound,
                    "{suite} n={n}: {a} vs {b} (bound {})",
                    out.bound
                );
            }
        }
    }
    Ok(())
}

/// Five sites: the smallest complete-graph cohort that survives a dropout
/// (k = 4, t = 3, signature quorum 4); with 3 or 4 sites the threshold
/// that covers one colluder leaves no room for one.
#[test]
fn dropout_recovery_through_proto_in_the_u64_ring() -> Result<(), Error> {
    for suite in Suite::ALL {
        let xs = inputs(5, 5);
        let out = run_round::<u64>(suite, &xs, Some(20))?;
        assert_eq!(out.survivors, vec![10, 30, 40, 50]);
        let kept: Vec<(Vec<f32>, u64)> = xs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, x)| x.clone())
            .collect();
        assert_eq!(out.total_weight, kept.iter().map(|(_, w)| w).sum::<u64>());
        for (a, b) in out.mean.iter().zip(weighted_mean(&kept)) {
            assert!((a - b).abs() <= out.bound, "{suite}: {a} vs {b}");
        }
    }
    Ok(())
}

#[test]
fn ring_names_round_trip() -> Result<(), Error> {
    for ring in [Ring::U32, Ring::U64] {
        let cfg = RoundConfig {
            round: 1,
            suite: Suite::Intl,
            ring,
            cohort: vec![1, 2],
            params: SecAggParams { k: 1, t: 1 },
            graph_seed: [0; 32],
            vector_len: 4,
            min_survivors: 2,
            max_colluders: 0,
            context: [0; 32],
        };
        let rs = wire(&announce(&cfg, 1))?;
        assert_eq!(round_config(&rs, FEDERATION, &[0; 32])?.ring, ring);
    }
    Ok(())
}
