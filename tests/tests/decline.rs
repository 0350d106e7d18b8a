//! A site whose policy refuses every training round says so (`Decline`):
//! the coordinator stops waiting for it at once, the rounds complete with
//! the others long before the stage deadline, and every round record names
//! the site and its reason. Real sites over gRPC on loopback.

use std::time::{Duration, Instant};

use confide_crypto::Suite;
use confide_tests::{BoxError, Coordinator, settings, site, spawn_sites, split_round_robin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_over_its_training_budget_declines_and_rounds_go_on_without_waiting()
-> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    // Five sites: the smallest cohort that survives one absence (complete
    // graph k = 4, t = 3, signature quorum 4; docs/compose.md "Dropouts").
    let data = split_round_robin(tmp.path(), 5)?;
    let mut s = settings(2, Suite::Intl);
    s.min_sites = 5;
    s.max_sites = 5;
    s.join_grace_secs = 10.0;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.secagg.k = Some(4);
    s.secagg.t = Some(3);
    s.secagg.min_survivors = Some(3);
    // Only a decline can end the wait early: without it every round would
    // take at least this long.
    s.secagg.stage_timeout_secs = 60;
    s.training.epochs = 2;
    let timeout = f64::from(s.secagg.stage_timeout_secs);
    let coord = Coordinator::start(s).await?;
    let cfgs = data
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = site(&coord.url(), &format!("site-{i}"), p);
            if i == 4 {
                // Its budget is below the rounds' 2 epochs.
                c.max_epochs = 1;
            }
            c
        })
        .collect();
    let began = Instant::now();
    let sites = spawn_sites(cfgs);
    let report = coord.finish(Duration::from_secs(120)).await?;
    let total = began.elapsed().as_secs_f64();
    for (i, h) in sites.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "site did not stop")??;
        let r = r.map_err(|e| format!("site {i}: {e}"))?;
        let want = if i == 4 { 0 } else { 2 };
        assert_eq!(r.rounds, want, "site {i}: {r:?}");
    }
    assert_eq!(report.completed_rounds, 2, "{:#?}", report.history);
    assert_eq!(report.history.len(), 2, "{:#?}", report.history);
    for rec in &report.history {
        eprintln!(
            "round {} ({}): {:.2} s, survivors {}/{}, declined {:?}",
            rec.round, rec.kind, rec.duration_secs, rec.survivors, rec.cohort, rec.declined
        );
        assert!(rec.success, "round {}: {}", rec.round, rec.message);
        assert_eq!(rec.kind, "train");
        assert_eq!(
            (rec.cohort, rec.survivors, rec.dropped),
            (5, 4, 1),
            "{rec:?}"
        );
        // A functional bound, not a benchmark: far below one stage deadline.
        assert!(
            rec.duration_secs < 20.0 && rec.duration_secs < timeout / 3.0,
            "round {} took {:.1} s",
            rec.round,
            rec.duration_secs
        );
        assert_eq!(rec.declined.len(), 1, "{rec:?}");
        let (who, why) = &rec.declined[0];
        assert_eq!(who, "site-4");
        assert!(
            why.starts_with("training_bounds: ") && why.contains("2 epochs"),
            "{why}"
        );
        assert!(rec.blamed.is_empty(), "declining is no fault: {rec:?}");
    }
    eprintln!("2 rounds with one declining site: {total:.1} s in all");
    Ok(())
}
