//! The one-contribution rule on the secure path: a masked update counts once
//! the site has signed a survivor set, not at upload. Three drivers run real
//! secure training rounds against the coordinator's machine.

use std::collections::BTreeMap;

use confide_crypto::protocol::{AnyCoordinator, AnyOutput, StageTimeouts};

use super::*;

type Drivers = BTreeMap<u32, RoundDriver>;

/// An announced round: the coordinator's machine, the configuration the
/// drivers derived, and each driver's first action.
struct Announced {
    coord: AnyCoordinator,
    cfg: RoundConfig,
    actions: Vec<(u32, Action)>,
}

/// Member `m`'s secure training round `cfg.round` on `model` (of `d`
/// parameters), as announced: [`train_start`] with masking on.
fn secure_train_start(cfg: &RoundConfig, m: u32, model: &[u8], d: usize) -> v1::RoundStart {
    let hash = confide_proto::context::sha256(model).to_vec();
    v1::RoundStart {
        plaintext: false,
        member: convert::round_start(cfg, m).member,
        ..train_start(cfg.round, model, hash, d)
    }
}

/// Announces training round `round` on `model` to every driver; returns the
/// coordinator's machine (bound to the context the drivers derive) and each
/// driver's first action.
fn announce(
    drivers: &mut Drivers,
    round: u64,
    model: &[u8],
    d: usize,
    now: Instant,
) -> Result<Announced, Box<dyn std::error::Error>> {
    let mut cfg = round_cfg(round, Ring::U32, crate::wire::train_len(d));
    cfg.context =
        convert::round_config(&secure_train_start(&cfg, 1, model, d), "f", &[0; 32])?.context;
    let coord = AnyCoordinator::secure(
        cfg.clone(),
        StageTimeouts::uniform(Duration::from_secs(60)),
        now,
    )?;
    let mut actions = Vec::new();
    for (&m, drv) in drivers.iter_mut() {
        let rs = secure_train_start(&cfg, m, model, d);
        actions.push((m, drv.on_task(start(&rs), now)?));
    }
    Ok(Announced {
        coord,
        cfg,
        actions,
    })
}

/// Delivers messages both ways until the round finishes, or — with
/// `until_consistency` — until the coordinator asks the survivors to sign,
/// which is then not delivered. Returns whether the round finished.
fn drive(
    round: Announced,
    drivers: &mut Drivers,
    keys: &BTreeMap<u32, Vec<u8>>,
    model: &[u8],
    until_consistency: bool,
    now: Instant,
) -> Result<bool, Box<dyn std::error::Error>> {
    let Announced {
        mut coord,
        cfg,
        mut actions,
    } = round;
    for _ in 0..30 {
        while let Some((m, action)) = actions.pop() {
            let d = drivers.get_mut(&m).ok_or("unknown member")?;
            match action {
                Action::Download(_) => actions.push((m, d.model_downloaded(&model_chunks(model))?)),
                Action::Compute(_) => {
                    let input = vec![m; cfg.vector_len];
                    actions.push((m, d.input_ready(RingVec::U32(input))?));
                }
                Action::Send => {
                    match d.outbox().ok_or("nothing queued")? {
                        Outgoing::Advertise(req) => {
                            let a = req.advert.as_ref().ok_or("no advert")?;
                            coord.handle_advert(
                                convert::key_advert_from_proto(a),
                                keys[&m].clone(),
                                now,
                            )?;
                        }
                        Outgoing::Shares(req) => {
                            coord.handle_shares(convert::share_bundle_from_proto(&req)?, now)?
                        }
                        Outgoing::Masked(chunks) => {
                            let bytes: Vec<u8> =
                                chunks.iter().flat_map(|c| c.data.clone()).collect();
                            let masking = chunks[0]
                                .masking
                                .as_ref()
                                .map(convert::masking_set_from_proto);
                            coord.handle_masked_input_bytes(cfg.round, m, &bytes, masking, now)?;
                        }
                        Outgoing::Consistency(r) => coord.handle_consistency(
                            convert::consistency_response_from_proto(&r),
                            now,
                        )?,
                        Outgoing::Unmask(r) => coord.handle_unmask_response(
                            convert::unmask_response_from_proto(&r)?,
                            now,
                        )?,
                    }
                    d.sent(now);
                }
                Action::Wait => {}
                other => return Err(format!("unexpected action {other:?}").into()),
            }
        }
        while let Some(o) = coord.poll_output() {
            let (to, kind) = match o {
                AnyOutput::NeighbourKeys { to, msg } => (
                    to,
                    v1::task::Kind::NeighbourKeys(convert::neighbour_keys_to_proto(&msg)),
                ),
                AnyOutput::IncomingShares { to, msg } => (
                    to,
                    v1::task::Kind::IncomingShares(convert::incoming_shares_to_proto(&msg)),
                ),
                AnyOutput::ConsistencyRequest { .. } if until_consistency => return Ok(false),
                AnyOutput::ConsistencyRequest { to, msg } => (
                    to,
                    v1::task::Kind::ConsistencyRequest(convert::consistency_request_to_proto(&msg)),
                ),
                AnyOutput::UnmaskRequest { to, msg } => (
                    to,
                    v1::task::Kind::UnmaskRequest(convert::unmask_request_to_proto(&msg)),
                ),
                AnyOutput::StageClosed { .. } | AnyOutput::Blamed { .. } => continue,
                AnyOutput::Finished(r) => {
                    r?;
                    return Ok(true);
                }
            };
            let d = drivers.get_mut(&to).ok_or("unknown member")?;
            actions.push((to, d.on_task(task(kind), now)?));
        }
    }
    Err("the round neither finished nor reached the consistency stage".into())
}

#[test]
fn a_masked_update_counts_once_signed_not_at_upload() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let mut drivers = Drivers::new();
    let mut keys = BTreeMap::new();
    for m in [1u32, 2, 3] {
        let drv = seeded_driver(None, u64::from(m))?;
        keys.insert(m, drv.join_request()?.verifying_key);
        drivers.insert(m, drv);
    }

    // Round 21: every masked input is uploaded, then the round fails before
    // anyone is asked to sign. No sum can be unmasked without the survivors'
    // signatures, so the update has not counted: a retry on the same model
    // is served.
    let round = announce(&mut drivers, 21, &model, d, now)?;
    assert!(!drive(round, &mut drivers, &keys, &model, true, now)?);
    for drv in drivers.values_mut() {
        drv.on_task(end(21, false), now)?;
    }

    // Round 22, same model: served, signed, finished. Each site has now
    // signed a survivor set holding its update.
    let round = announce(&mut drivers, 22, &model, d, now)?;
    assert!(
        round
            .actions
            .iter()
            .all(|(_, a)| matches!(a, Action::Send | Action::Download(_))),
        "the retry on an uncounted model was refused: {:?}",
        round.actions
    );
    assert!(drive(round, &mut drivers, &keys, &model, false, now)?);
    // Even if the coordinator then calls it a failure, the update counted:
    // a quorum could have unmasked it.
    for drv in drivers.values_mut() {
        drv.on_task(end(22, false), now)?;
    }

    // Round 23, same model again: every site refuses.
    let cfg = round_cfg(23, Ring::U32, crate::wire::train_len(d));
    for (&m, drv) in drivers.iter_mut() {
        let r = drv.on_task(start(&secure_train_start(&cfg, m, &model, d)), now);
        assert!(
            matches!(r, Err(ClientError::AlreadyContributed { round: 23, .. })),
            "member {m}: {r:?}"
        );
    }
    Ok(())
}
