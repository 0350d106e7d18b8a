//! The replay rule (`round/contribution.rs`): after a failover the new
//! coordinator re-runs the lost round on the same model; a site that had
//! signed re-sends its exact input to exactly the sites it signed for, and
//! refuses anything else. Real drivers against the coordinator's machine.

use std::cell::Cell;
use std::collections::BTreeMap;

use confide_crypto::protocol::{AnyCoordinator, StageTimeouts};

use super::contribution::secure_train_start;
use super::*;
use crate::round::contribution::{Contributions, KEPT, Plan};

pub(super) type Keys = BTreeMap<u32, Vec<u8>>;

/// The round configuration of a complete-graph training round over
/// `members` (k = n − 1, one colluder assumed, the least t the site's
/// policy takes).
pub(super) fn cfg_for(round: u64, members: &[u32], d: usize) -> RoundConfig {
    RoundConfig {
        cohort: members.to_vec(),
        params: SecAggParams {
            k: members.len() - 1,
            t: if members.len() > 3 { 3 } else { 2 },
        },
        ..round_cfg(round, Ring::U32, crate::wire::train_len(d))
    }
}

/// Member `m`'s announcement of `cfg` on `model`, attempt nonce `attempt`.
pub(super) fn start_for(
    cfg: &RoundConfig,
    m: u32,
    attempt: u8,
    model: &[u8],
    d: usize,
) -> v1::RoundStart {
    let shape = convert::round_start(cfg, m);
    v1::RoundStart {
        cohort: shape.cohort,
        k: shape.k,
        t: shape.t,
        attempt: vec![attempt; 32],
        ..secure_train_start(cfg, m, model, d)
    }
}

/// Announces `cfg` (attempt `attempt`) to every driver.
pub(super) fn announce(
    drivers: &mut Drivers,
    mut cfg: RoundConfig,
    attempt: u8,
    model: &[u8],
    d: usize,
    now: Instant,
) -> Result<Announced, Box<dyn std::error::Error>> {
    let first = *cfg.cohort.first().ok_or("empty cohort")?;
    cfg.context =
        convert::round_config(&start_for(&cfg, first, attempt, model, d), "f", &[0; 32])?.context;
    let coord = AnyCoordinator::secure(
        cfg.clone(),
        StageTimeouts::uniform(Duration::from_secs(60)),
        now,
    )?;
    let mut actions = Vec::new();
    for (&m, drv) in drivers.iter_mut() {
        let rs = start_for(&cfg, m, attempt, model, d);
        actions.push((m, drv.on_task(start(&rs), now)?));
    }
    Ok(Announced {
        coord,
        cfg,
        actions,
    })
}

/// Drivers for `members`, keys from `seed + m`, and their verifying keys.
pub(super) fn drivers(members: &[u32], seed: u64) -> Result<(Drivers, Keys), ClientError> {
    let mut drivers = Drivers::new();
    let mut keys = Keys::new();
    for &m in members {
        let drv = seeded_driver(None, seed + u64::from(m))?;
        keys.insert(m, drv.join_request()?.verifying_key);
        drivers.insert(m, drv);
    }
    Ok((drivers, keys))
}

/// The coordinator died; each site joins the one that took over (a new
/// session drops the round in progress, as `session.rs` does).
pub(super) fn fail_over(drivers: &mut Drivers) -> Result<(), ClientError> {
    for drv in drivers.values_mut() {
        drv.joined(v1::JoinResponse {
            session: "s1".into(),
            federation: "f".into(),
            suite: "intl".into(),
            crl: Vec::new(),
        })?;
        assert_eq!(drv.current_round(), None);
    }
    Ok(())
}

/// A replay refused for its cohort, naming the signed set to the coordinator.
fn replay_cohort(e: &(dyn std::error::Error + 'static), want: &str) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::ReplayCohort { why, survivors, .. }) if why.contains(want) && !survivors.is_empty()
    )
}

/// (a) The lost round re-run under the same id and model by the new
/// coordinator: every site replays, nobody trains, and the unmasked sum is
/// the first one bit for bit (each call of the trainer would give another
/// input, so a retrained input would show).
#[test]
fn a_rerun_after_failover_replays_the_exact_input() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let (mut drivers, keys) = drivers(&[1, 2, 3], 10)?;
    let calls = Cell::new(0u32);
    let input = |m: u32, len: usize| {
        calls.set(calls.get() + 1);
        RingVec::U32(
            (0..len as u32)
                .map(|i| m * 7919 + i * calls.get())
                .collect(),
        )
    };
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    let first = drive(
        announce(&mut drivers, cfg_for(30, &[1, 2, 3], d), 1, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert!(first.is_some());
    assert_eq!(calls.get(), 3, "each site trained once");

    fail_over(&mut drivers)?;
    let rerun = announce(&mut drivers, cfg_for(30, &[1, 2, 3], d), 2, &model, d, now)?;
    assert!(
        rerun
            .actions
            .iter()
            .all(|(_, a)| matches!(a, Action::Download(_))),
        "the re-run is served: {:?}",
        rerun.actions
    );
    let second = drive(rerun, &mut drivers, &h, now)?;
    assert_eq!(calls.get(), 3, "no site trained again");
    assert_eq!(second, first, "the same inputs, so the same sum");
    // And once more (the new coordinator's own retry): still the same.
    fail_over(&mut drivers)?;
    let third = drive(
        announce(&mut drivers, cfg_for(31, &[1, 2, 3], d), 3, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert_eq!(third, first);
    Ok(())
}

/// (b) A re-run whose survivor set leaves out one site of the signed set
/// (site 5, after every site uploaded): refused at the consistency stage,
/// nothing signed.
#[test]
fn a_survivor_set_differing_by_one_site_is_not_signed() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let members = [1, 2, 3, 4, 5];
    let (mut drivers, keys) = drivers(&members, 20)?;
    let input = |m: u32, len: usize| RingVec::U32(vec![m; len]);
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    let cfg = cfg_for(40, &members, d);
    assert!(
        drive(
            announce(&mut drivers, cfg.clone(), 1, &model, d, now)?,
            &mut drivers,
            &h,
            now
        )?
        .is_some()
    );

    fail_over(&mut drivers)?;
    // Without the rule this set would be signed: 4 survivors reach the
    // quorum of 4, and each keeps t = 3 surviving peers.
    let h = Harness {
        drop_survivor: Some(5),
        ..h
    };
    let r = drive(
        announce(&mut drivers, cfg, 2, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    );
    match r {
        Err(e) => assert!(
            replay_cohort(e.as_ref(), "differs from the one this site signed"),
            "{e}"
        ),
        Ok(sum) => panic!("a survivor set without site 5 was unmasked: {sum:?}"),
    }
    for drv in drivers.values() {
        assert!(
            !matches!(drv.outbox(), Some(Outgoing::Consistency(_))),
            "no signature queued"
        );
    }
    Ok(())
}

/// Rule 2: after signing, the input leaves only into a cohort of exactly
/// the signed sites. Member 3 is now another site (another key): sites 1
/// and 2 refuse before uploading; a cohort of another size is refused at
/// the announcement.
#[test]
fn a_replay_goes_only_to_the_sites_it_was_signed_for() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let (mut drivers, keys) = drivers(&[1, 2, 3], 30)?;
    let input = |m: u32, len: usize| RingVec::U32(vec![m; len]);
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    assert!(
        drive(
            announce(&mut drivers, cfg_for(50, &[1, 2, 3], d), 1, &model, d, now)?,
            &mut drivers,
            &h,
            now
        )?
        .is_some()
    );

    // A larger cohort: refused when announced.
    let (extra, _) = self::drivers(&[4], 30)?;
    let mut four = std::mem::take(&mut drivers);
    four.extend(extra);
    fail_over(&mut four)?;
    let cfg = cfg_for(51, &[1, 2, 3, 4], d);
    for m in [1u32, 2, 3] {
        let drv = four.get_mut(&m).ok_or("member")?;
        let r = drv.on_task(start(&start_for(&cfg, m, 2, &model, d)), now);
        assert!(
            matches!(&r, Err(ClientError::ReplayCohort { why, survivors, .. }) if why.contains("cohort of 4") && survivors.len() == 3),
            "{r:?}"
        );
    }

    // Same size, but member 3 is another site.
    let mut drivers = four;
    let stranger = drivers.remove(&4).ok_or("member 4")?;
    drivers.insert(3, stranger);
    let mut keys = keys.clone();
    keys.insert(3, drivers[&3].join_request()?.verifying_key);
    fail_over(&mut drivers)?;
    let h = Harness { keys: &keys, ..h };
    let r = drive(
        announce(&mut drivers, cfg_for(52, &[1, 2, 3], d), 3, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    );
    match r {
        Err(e) => assert!(replay_cohort(e.as_ref(), "would mask with"), "{e}"),
        Ok(sum) => panic!("a replay went to another site: {sum:?}"),
    }
    Ok(())
}

/// (c) A round on another model is a normal round: trained afresh.
#[test]
fn another_model_trains_as_usual() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let (mut drivers, keys) = drivers(&[1, 2, 3], 40)?;
    let calls = Cell::new(0u32);
    let input = |m: u32, len: usize| {
        calls.set(calls.get() + 1);
        RingVec::U32(vec![m; len])
    };
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    drive(
        announce(&mut drivers, cfg_for(60, &[1, 2, 3], d), 1, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert_eq!(calls.get(), 3);
    // The next global model (another bias stands in for the update).
    let next = {
        let mut m = Model::from_safetensors(&model)?;
        m.insert(
            "bias",
            confide_proto::model::Tensor::new(vec![1], vec![0.5])?,
        );
        m.to_safetensors(None)?
    };
    assert_ne!(next, model);
    let h = Harness { model: &next, ..h };
    // A cohort other than the signed one is fine on a new model.
    let sum = drive(
        announce(&mut drivers, cfg_for(61, &[1, 2, 3], d), 2, &next, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert!(sum.is_some());
    assert_eq!(calls.get(), 6, "every site trained on the new model");
    Ok(())
}

/// The plan itself: what a replay must keep equal, and what is forgotten.
#[test]
fn replay_plans_and_refusals() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let cfg = cfg_for(70, &[1, 2, 3], d);
    let rs = start_for(&cfg, 1, 1, &model, d);
    let x = RingVec::U32(vec![5; crate::wire::train_len(d)]);
    let mut c = Contributions::default();
    assert_eq!(c.plan("f", &rs)?, Plan::Fresh);
    c.remember_input("f", &rs, x.clone())?;
    // Uploaded, not signed: replayed anywhere (no signature binds it yet).
    let wider = start_for(&cfg_for(71, &[1, 2, 3, 4], d), 1, 2, &model, d);
    assert!(
        matches!(c.plan("f", &wider)?, Plan::Replay { ref input, survivors: None } if *input == x)
    );
    let names: std::collections::BTreeSet<String> =
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    c.record_signed("f", &rs, names.clone())?;
    let again = start_for(&cfg_for(72, &[1, 2, 3], d), 1, 3, &model, d);
    assert_eq!(
        c.plan("f", &again)?,
        Plan::Replay {
            input: x.clone(),
            survivors: Some(names)
        }
    );
    assert_eq!(c.plan("other federation", &again)?, Plan::Fresh);
    let refused = |rs: &v1::RoundStart, want: &str| matches!(c.plan("f", rs), Err(ClientError::ReplayRefused { ref why, .. }) if why.contains(want));
    let cohort = |rs: &v1::RoundStart, want: &str| matches!(c.plan("f", rs), Err(ClientError::ReplayCohort { ref why, ref survivors, .. }) if why.contains(want) && survivors == &["a", "b", "c"]);
    assert!(cohort(&wider, "cohort of 4"));
    let mut lr = again.clone();
    if let Some(t) = lr.training.as_mut() {
        t.learning_rate = 0.2;
    }
    assert!(refused(&lr, "settings differ"));
    let plain = v1::RoundStart {
        plaintext: true,
        ..again.clone()
    };
    assert!(refused(&plain, "plaintext"));
    let sparse = v1::RoundStart {
        k: 1,
        ..again.clone()
    };
    assert!(cohort(&sparse, "complete graph"));
    // Statistics and evaluation rounds are not contributions.
    let stats = v1::RoundStart {
        kind: v1::RoundKind::Evaluate as i32,
        ..again.clone()
    };
    assert_eq!(c.plan("f", &stats)?, Plan::Fresh);
    // Only the newest KEPT models' inputs are kept; an older one is refused
    // (never retrained).
    for i in 0..KEPT {
        let mut other = again.clone();
        other.model_sha256[0] ^= 1 + i as u8;
        c.remember_input("f", &other, x.clone())?;
    }
    assert!(matches!(
        c.plan("f", &again),
        Err(ClientError::AlreadyContributed { .. })
    ));
    Ok(())
}

/// In memory, the copy for the next replay goes into the oldest input's
/// buffer once KEPT are held; that model is then forgotten (refused, never
/// retrained) and the newer ones still replay their own inputs exactly.
#[test]
fn the_copy_for_a_replay_reuses_the_oldest_inputs_buffer() -> Result<(), Box<dyn std::error::Error>>
{
    let (model, d) = logistic_model()?;
    let len = crate::wire::train_len(d);
    let base = start_for(&cfg_for(80, &[1, 2, 3], d), 1, 1, &model, d);
    let on = |i: u8| {
        let mut rs = base.clone();
        rs.model_sha256[0] ^= i;
        rs
    };
    let input = |i: u8| RingVec::U32(vec![u32::from(i); len]);
    let mut c = Contributions::default();
    let pointer = |x: &RingVec| match x {
        RingVec::U32(v) => v.as_ptr() as usize,
        RingVec::U64(v) => v.as_ptr() as usize,
    };
    let mut first = 0;
    for i in 1..=KEPT as u8 {
        // Below KEPT held: a fresh copy, nothing forgotten.
        let copy = c.copy_for_replay(&input(i));
        assert_eq!(copy, input(i));
        if i == 1 {
            first = pointer(&copy);
        }
        c.remember_input("f", &on(i), copy)?;
    }
    for i in 1..=KEPT as u8 {
        assert!(
            matches!(c.plan("f", &on(i))?, Plan::Replay { input: ref x, .. } if *x == input(i))
        );
    }
    let next = KEPT as u8 + 1;
    let copy = c.copy_for_replay(&input(next));
    assert_eq!(copy, input(next));
    assert_eq!(
        pointer(&copy),
        first,
        "the oldest input's buffer was not reused"
    );
    assert!(matches!(
        c.plan("f", &on(1)),
        Err(ClientError::AlreadyContributed { .. })
    ));
    c.remember_input("f", &on(next), copy)?;
    for i in 2..=next {
        assert!(
            matches!(c.plan("f", &on(i))?, Plan::Replay { input: ref x, .. } if *x == input(i))
        );
    }
    Ok(())
}
