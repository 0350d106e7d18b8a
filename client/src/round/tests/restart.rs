//! The contribution ledger across restarts (`round/ledger.rs`): a site that
//! uploaded and signed replays its exact input from the ledger's file, before
//! and after a restart with the same state directory, and still refuses any
//! cohort but the signed set; a damaged ledger or input file stops the site
//! with the file's path.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use super::replay::{Keys, announce, cfg_for, fail_over, start_for};
use super::*;

/// Drivers for `members` with keys from `seed + m` (the same identity at
/// every restart) and their ledgers in `state/<m>`.
fn drivers_in(state: &Path, members: &[u32], seed: u64) -> Result<(Drivers, Keys), ClientError> {
    let mut drivers = Drivers::new();
    let mut keys = Keys::new();
    for &m in members {
        let drv = seeded_driver(None, seed + u64::from(m))?
            .with_state_dir(Some(&state.join(m.to_string())))?;
        keys.insert(m, drv.join_request()?.verifying_key);
        drivers.insert(m, drv);
    }
    Ok((drivers, keys))
}

/// Member `m`'s one input file.
fn input_file_of(state: &Path, m: u32) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = state.join(m.to_string()).join("contributions");
    Ok(std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "bin"))
        .ok_or("no input file")?)
}

fn ledger_of(state: &Path, m: u32) -> PathBuf {
    state
        .join(m.to_string())
        .join("contributions")
        .join("ledger")
}

#[test]
fn a_restarted_site_replays_its_exact_input_and_only_to_the_signed_set()
-> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let state = tempfile::tempdir()?;
    let (mut drivers, keys) = drivers_in(state.path(), &[1, 2, 3], 60)?;
    // Every call trains something new: a retrained input would show.
    let calls = Cell::new(0u32);
    let input = |m: u32, len: usize| {
        calls.set(calls.get() + 1);
        RingVec::U32((0..len as u32).map(|i| m * 31 + i * calls.get()).collect())
    };
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    let cfg = cfg_for(80, &[1, 2, 3], d);
    let first = drive(
        announce(&mut drivers, cfg.clone(), 1, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert!(first.is_some());
    assert_eq!(calls.get(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ledger_of(state.path(), 1))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "ledger mode {mode:o}");
    }

    // A retry in the same processes: written to the ledger, the inputs are
    // no longer held in memory, so each is read back from its file.
    fail_over(&mut drivers)?;
    let again = drive(
        announce(&mut drivers, cfg.clone(), 2, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert_eq!(calls.get(), 3, "no site trained again");
    assert_eq!(again, first, "the same inputs read back, so the same sum");
    // The file is what is replayed: changed under the running site, the
    // replay is refused, naming it, instead of sending something else.
    let input_file = input_file_of(state.path(), 1)?;
    let kept = std::fs::read(&input_file)?;
    let mut changed = kept.clone();
    changed[40] ^= 1;
    std::fs::write(&input_file, &changed)?;
    fail_over(&mut drivers)?;
    let drv = drivers.get_mut(&1).ok_or("member 1")?;
    let r = drv.on_task(start(&start_for(&cfg, 1, 3, &model, d)), now);
    assert!(
        matches!(&r, Err(ClientError::Ledger { path, reason })
            if *path == input_file && reason.contains("checksum")),
        "{r:?}"
    );
    std::fs::write(&input_file, &kept)?;

    // The site processes restart (the old ones are gone, and with them
    // their locks), join the coordinator that took over, and are asked
    // for the same round again.
    drop(drivers);
    let (mut drivers, _) = drivers_in(state.path(), &[1, 2, 3], 60)?;
    fail_over(&mut drivers)?;
    let again = drive(
        announce(&mut drivers, cfg_for(80, &[1, 2, 3], d), 4, &model, d, now)?,
        &mut drivers,
        &h,
        now,
    )?;
    assert_eq!(calls.get(), 3, "no restarted site trained again");
    assert_eq!(again, first, "the same inputs, so the same sum");

    // Restarted once more: a cohort of four is refused at the announcement,
    // naming the three sites signed for, so the coordinator can re-run.
    drop(drivers);
    let (mut four, _) = drivers_in(state.path(), &[1, 2, 3, 4], 60)?;
    fail_over(&mut four)?;
    let wider = cfg_for(81, &[1, 2, 3, 4], d);
    for m in [1u32, 2, 3] {
        let drv = four.get_mut(&m).ok_or("member")?;
        let r = drv.on_task(start(&start_for(&wider, m, 3, &model, d)), now);
        assert!(
            matches!(&r, Err(ClientError::ReplayCohort { survivors, .. }) if survivors.len() == 3),
            "member {m}: {r:?}"
        );
        let decline = r.err().and_then(|e| drv.decline(&e)).ok_or("no decline")?;
        assert_eq!(decline.reason_code, v1::DeclineReason::ReplayCohort as i32);
        assert_eq!(decline.replay_cohort.len(), 3);
    }
    // The newcomer has no ledger entry: it would train.
    let newcomer = four.get_mut(&4).ok_or("member 4")?;
    assert!(matches!(
        newcomer.on_task(start(&start_for(&wider, 4, 3, &model, d)), now)?,
        Action::Download(_)
    ));

    Ok(())
}

#[test]
fn a_damaged_ledger_is_a_startup_error_naming_its_file() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let now = Instant::now();
    let state = tempfile::tempdir()?;
    let (mut drivers, keys) = drivers_in(state.path(), &[1, 2, 3], 70)?;
    let input = |m: u32, len: usize| RingVec::U32(vec![m; len]);
    let h = Harness {
        keys: &keys,
        model: &model,
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    let cfg = cfg_for(90, &[1, 2, 3], d);
    assert!(
        drive(
            announce(&mut drivers, cfg, 1, &model, d, now)?,
            &mut drivers,
            &h,
            now
        )?
        .is_some()
    );

    // A second process on the same state directory is refused.
    let open = |m: u32| {
        seeded_driver(None, 70 + u64::from(m))
            .and_then(|drv| drv.with_state_dir(Some(&state.path().join(m.to_string()))))
            .err()
            .map(|e| e.to_string())
    };
    let e = open(1).unwrap_or_default();
    assert!(e.contains("another site process"), "{e}");
    drop(drivers);
    assert_eq!(open(1), None, "the lock goes with the process");

    // One flipped byte in the ledger.
    let ledger = ledger_of(state.path(), 1);
    let mut bytes = std::fs::read(&ledger)?;
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&ledger, &bytes)?;
    let e = open(1).unwrap_or_default();
    assert!(
        e.contains(&ledger.display().to_string()) && e.contains("checksum"),
        "{e}"
    );
    // A truncated input file.
    let input_file = input_file_of(state.path(), 2)?;
    let len = std::fs::metadata(&input_file)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&input_file)?
        .set_len(len - 1)?;
    let e = open(2).unwrap_or_default();
    assert!(e.contains(&input_file.display().to_string()), "{e}");
    // Something that is not a ledger at all.
    std::fs::write(ledger_of(state.path(), 3), "{}")?;
    let e = open(3).unwrap_or_default();
    assert!(e.contains("not a Confide contribution ledger"), "{e}");
    // The documented operator step: remove the site's ledger directory;
    // the site then starts with an empty one.
    std::fs::remove_dir_all(state.path().join("3").join("contributions"))?;
    assert_eq!(open(3), None);
    Ok(())
}
