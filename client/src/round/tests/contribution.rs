//! The contribution rule on the secure path: a masked update binds the site
//! to one survivor set once it has signed it, not at upload. Three drivers
//! run real secure training rounds against the coordinator's machine.

use std::collections::BTreeMap;

use confide_crypto::protocol::{AnyCoordinator, StageTimeouts};

use super::*;

/// Member `m`'s secure training round `cfg.round` on `model` (of `d`
/// parameters), as announced: [`train_start`] with masking on.
pub(super) fn secure_train_start(
    cfg: &RoundConfig,
    m: u32,
    model: &[u8],
    d: usize,
) -> v1::RoundStart {
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
    let input = |m: u32, len: usize| RingVec::U32(vec![m; len]);
    let round = announce(&mut drivers, 21, &model, d, now)?;
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: true,
        drop_survivor: None,
    };
    assert_eq!(drive(round, &mut drivers, &h, now)?, None);
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
    let h = Harness {
        until_consistency: false,
        ..h
    };
    assert!(drive(round, &mut drivers, &h, now)?.is_some());
    // Even if the coordinator then calls it a failure, the update counted:
    // a quorum could have unmasked it.
    for drv in drivers.values_mut() {
        drv.on_task(end(22, false), now)?;
    }

    // Round 23, same model again: served only as a replay of the signed
    // input to the same three sites (round/tests/replay.rs); a plaintext
    // retry is refused outright.
    let cfg = round_cfg(23, Ring::U32, crate::wire::train_len(d));
    for (&m, drv) in drivers.iter_mut() {
        let rs = v1::RoundStart {
            plaintext: true,
            ..secure_train_start(&cfg, m, &model, d)
        };
        let r = drv.on_task(start(&rs), now);
        assert!(
            matches!(r, Err(ClientError::ReplayRefused { round: 23, .. })),
            "member {m}: {r:?}"
        );
    }
    Ok(())
}
