//! A re-run after the coordinator lost the survivor set: five real sites
//! over gRPC, each with its own state directory (its contribution ledger).
//! In round 2 one site vanishes before uploading, the other four sign the
//! survivor set S of those four, then every site's process stops before
//! the unmask (a crash) and so does the coordinator: no checkpoint of round
//! 2. A new coordinator resumes from the round-1 checkpoint and the sites
//! restart with their state directories. It announces round 2 again to all
//! five; the four sites of S decline it (REPLAY_COHORT, naming S), and the
//! scheduler's next round is exactly S over the complete graph: the four
//! replay their recorded inputs, the round completes and the model
//! advances.

use std::time::Duration;

use confide_crypto::{Stage, Suite};
use confide_tests::{BoxError, Coordinator, settings, site, spawn_sites, split_round_robin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_coordinator_restart_uses_exactly_the_signed_cohort() -> Result<(), BoxError>
{
    let tmp = tempfile::tempdir()?;
    let data = split_round_robin(tmp.path(), 5)?;
    let state = |i: usize| tmp.path().join(format!("state-{i}"));
    let mut s = settings(2, Suite::Intl);
    s.min_sites = 5;
    s.max_sites = 5;
    // Generous: it ends as soon as all five are connected.
    s.join_grace_secs = 30.0;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.secagg.stage_timeout_secs = 20;
    s.secagg.reconnect_grace_secs = 0.5;
    s.checkpoints.dir = Some(tmp.path().join("ck"));

    // Coordinator A: round 1 completes (checkpoint); in round 2 site-4
    // vanishes before its upload and the others after signing S.
    let coord = Coordinator::start(s.clone()).await?;
    let cfgs = (0..5)
        .map(|i| {
            let mut c = site(&coord.url(), &format!("site-{i}"), &data[i]);
            c.state_dir = Some(state(i));
            c.vanish = Some(confide_client::Vanish {
                round: 2,
                stage: if i == 4 {
                    Stage::MaskedInput
                } else {
                    Stage::Unmask
                },
            });
            c
        })
        .collect();
    for (i, h) in spawn_sites(cfgs).into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .map_err(|_| format!("site {i} did not vanish"))??
            .map_err(|e| format!("site {i}: {e}"))?;
        assert!(r.vanished, "site {i}: {r:?}");
        assert_eq!(r.rounds, 1, "site {i}: {r:?}");
    }
    let mut coord = coord;
    coord.stop();
    let first = coord.finish(Duration::from_secs(60)).await?;
    assert_eq!(first.completed_rounds, 1, "{:#?}", first.history);

    // Coordinator B resumes from round 1's checkpoint and knows nothing of
    // S; the sites restart with their ledgers.
    let coord = Coordinator::start(s).await?;
    let cfgs = (0..5)
        .map(|i| {
            let mut c = site(&coord.url(), &format!("site-{i}"), &data[i]);
            c.state_dir = Some(state(i));
            c
        })
        .collect();
    let sites = spawn_sites(cfgs);
    let report = coord.finish(Duration::from_secs(180)).await?;
    for (i, h) in sites.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .map_err(|_| format!("site {i} did not stop"))??
            .map_err(|e| format!("site {i}: {e}"))?;
        let want = if i == 4 { 0 } else { 1 };
        assert_eq!(r.rounds, want, "site {i}: {r:?}");
    }
    for rec in &report.history {
        eprintln!(
            "round {} ({}): success {}, cohort {}, survivors {}, declined {:?}: {}",
            rec.round, rec.kind, rec.success, rec.cohort, rec.survivors, rec.declined, rec.message
        );
    }
    assert_eq!(report.completed_rounds, 2, "{:#?}", report.history);
    let rounds: Vec<(u64, bool)> = report
        .history
        .iter()
        .map(|r| (r.round, r.success))
        .collect();
    // Round 1 from the checkpoint; round 2 announced to all five and
    // declined by S; round 3 exactly S.
    assert_eq!(rounds, [(1, true), (2, false), (3, true)]);
    let declined = &report.history[1];
    assert_eq!(declined.cohort, 5, "{declined:?}");
    let mut who: Vec<&str> = declined.declined.iter().map(|(s, _)| s.as_str()).collect();
    who.sort();
    assert_eq!(
        who,
        ["site-0", "site-1", "site-2", "site-3"],
        "{declined:?}"
    );
    assert!(
        declined
            .declined
            .iter()
            .all(|(_, why)| why.starts_with("replay_cohort: ")),
        "{declined:?}"
    );
    let rerun = &report.history[2];
    assert_eq!((rerun.cohort, rerun.survivors), (4, 4), "{rerun:?}");
    assert!(rerun.declined.is_empty(), "{rerun:?}");
    // The re-run started from round 1's model and replaced it.
    assert_eq!(rerun.model_round, 1, "{rerun:?}");
    Ok(())
}
