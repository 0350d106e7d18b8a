//! Active / standby coordinators against a real S3 server (SeaweedFS):
//! the lease's conditional writes and the fence on checkpoint writes, in
//! process; and the whole failover with real `confide serve` processes, one
//! of them killed with SIGKILL mid-federation (`failover_*`).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_client::SiteConfig;
use confide_coordinator::checkpoint::{CheckpointStore, Manifest, ObjectStoreCheckpoints};
use confide_coordinator::error::CoordinatorError;
use confide_proto::model::{Model, Tensor};
use support::data::split;
use support::process::{KillOnDrop, serve};
use support::seaweed::{BoxError, Seaweed};
use tokio::sync::watch;

fn manifest(round: u64) -> Manifest {
    Manifest {
        format: 1,
        round,
        model_round: round,
        next_round: round + 1,
        completed_train_rounds: round,
        suite: "intl".into(),
        config_hash: "test".into(),
        optimiser: "fedavg".into(),
        optimiser_state: None,
        preprocess: None,
        tensors: vec![("w".into(), vec![4])],
        history: vec![],
        objects: vec![],
        lease_token: None,
    }
}

fn model_bytes(round: u64) -> Result<Vec<u8>, BoxError> {
    let mut m = Model::new();
    m.insert("w", Tensor::new(vec![4], vec![round as f32; 4])?);
    Ok(m.to_safetensors(None)?)
}

/// `save` off the runtime (it blocks).
async fn save(store: &ObjectStoreCheckpoints, round: u64) -> Result<(), CoordinatorError> {
    let s = store.clone();
    let bytes = model_bytes(round).map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
    tokio::task::spawn_blocking(move || s.save(&manifest(round), &bytes, None).map(|_| ()))
        .await
        .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?
}

async fn rounds(store: &ObjectStoreCheckpoints) -> Result<Vec<u64>, BoxError> {
    let s = store.clone();
    Ok(tokio::task::spawn_blocking(move || s.rounds()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_fenced_and_its_late_checkpoint_ignored() -> Result<(), BoxError> {
    let Some(s3) = Seaweed::start("lease_fence")? else {
        return Ok(());
    };
    const PREFIX: &str = "fed/lease";
    let ttl = Duration::from_secs(3);
    let renew = Duration::from_millis(500);
    let (_stop_tx, stop) = watch::channel(false);
    let base = s3.store(PREFIX)?;

    // A takes the lease (it did not exist) and checkpoints round 1 under it.
    let a = Arc::new(base.lease("a", ttl, renew));
    assert_eq!(a.acquire(0, stop.clone()).await?, Some(1));
    let store_a = base.clone().fenced_by(a.clone());
    save(&store_a, 1).await?;
    let m1 = {
        let s = base.clone();
        tokio::task::spawn_blocking(move || s.load_manifest(1)).await??
    };
    assert_eq!(m1.lease_token, Some(1));

    // A stalls (no renewals). B waits one TTL of no change, then takes it.
    let b = Arc::new(base.lease("b", ttl, renew));
    let t = Instant::now();
    assert_eq!(b.acquire(0, stop.clone()).await?, Some(2));
    let waited = t.elapsed();
    assert!(waited >= ttl, "B took a live lease after {waited:?}");
    assert!(waited < ttl + Duration::from_secs(3), "{waited:?}");
    let store_b = base.clone().fenced_by(b.clone());
    save(&store_b, 2).await?;

    // A wakes up: its next checkpoint is refused before anything is written.
    match save(&store_a, 3).await {
        Err(CoordinatorError::Fenced { reason, .. }) => {
            assert!(reason.contains("not renewed"), "{reason}")
        }
        other => return Err(format!("a stale holder wrote: {other:?}").into()),
    }
    assert_eq!(rounds(&base).await?, vec![1, 2]);
    // Its renewal learns who holds the lease now.
    let e = a
        .renew()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("taken by b with token 2"), "{e}");

    // Even a checkpoint that slipped past the fence (a writer stopped
    // between its check and its write) carries the old token: readers
    // ignore it, so resume takes B's round 2, not A's round 3.
    let mut late = manifest(3);
    late.lease_token = Some(1);
    let bytes = model_bytes(3)?;
    let s = base.clone();
    tokio::task::spawn_blocking(move || s.save(&late, &bytes, None)).await??;
    assert_eq!(rounds(&base).await?, vec![1, 2]);
    let latest = {
        let s = base.clone();
        tokio::task::spawn_blocking(move || s.latest()).await??
    };
    assert_eq!(latest.map(|c| c.manifest.round), Some(2));

    // B keeps it while renewing; a third coordinator waits.
    let (lost_tx, lost) = watch::channel(None);
    let keeper = tokio::spawn(b.clone().keep(lost_tx));
    let c = Arc::new(base.lease("c", ttl, renew));
    let (stop_c_tx, stop_c) = watch::channel(false);
    let c2 = c.clone();
    let waiting = tokio::spawn(async move { c2.acquire(0, stop_c).await });
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "C took a lease B kept renewing");
    assert!(lost.borrow().is_none());
    let _ = stop_c_tx.send(true);
    assert_eq!(waiting.await??, None);
    keeper.abort();
    // A clean stop hands it over at once, with the next token.
    b.release().await;
    let t = Instant::now();
    assert_eq!(c.acquire(0, stop.clone()).await?, Some(3));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    Ok(())
}

const ROUNDS: u64 = 10;
const TTL_SECS: u64 = 4;

fn ha_config(url: &str) -> String {
    format!(
        r#"federation = "failover-test"
suite = "intl"
rounds = {ROUNDS}
min_sites = 3
max_sites = 3
join_grace_secs = 5.0
statistics_round = true
evaluate_every_round = false
final_evaluation = false
[secagg]
stage_timeout_secs = 30
[model]
kind = "mlp"
features = 30
classes = 2
hidden = [256]
[training]
epochs = 300
batch_size = 8
learning_rate = 0.01
[checkpoints]
url = "{url}"
keep_last = 3
[ha]
enabled = true
lease_ttl_secs = {TTL_SECS}
renew_secs = 1
"#
    )
}

fn free_listen() -> Result<String, BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

fn text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Until `log` has a line containing `what` (or the process exits, or time is up).
async fn wait_log(
    p: &mut KillOnDrop,
    log: &Path,
    what: &str,
    within: Duration,
) -> Result<Instant, BoxError> {
    let until = Instant::now() + within;
    loop {
        if text(log).contains(what) {
            return Ok(Instant::now());
        }
        if let Some(s) = p.0.try_wait()? {
            return Err(format!("exited ({s}) before {what:?}:\n{}", text(log)).into());
        }
        if Instant::now() > until {
            return Err(format!("no {what:?} within {within:?}:\n{}", text(log)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_kill_9_of_the_active_coordinator_the_standby_finishes_every_round()
-> Result<(), BoxError> {
    let Some(s3) = Seaweed::start("failover")? else {
        return Ok(());
    };
    const PREFIX: &str = "fed/failover";
    let tmp = tempfile::tempdir()?;
    let data = split(tmp.path(), 3)?;
    let cfg = tmp.path().join("federation.toml");
    std::fs::write(&cfg, ha_config(&s3.url(PREFIX)))?;
    let (listen_a, listen_b) = (free_listen()?, free_listen()?);
    let (url_a, url_b) = (format!("http://{listen_a}"), format!("http://{listen_b}"));
    let (log_a, log_b, log_a2) = (
        tmp.path().join("a.log"),
        tmp.path().join("b.log"),
        tmp.path().join("a2.log"),
    );
    let store = s3.store(PREFIX)?;

    // A starts first and takes the lease; B finds it held and waits.
    let mut a = serve(&s3, &cfg, &listen_a, &log_a, &[("CONFIDE_HA__NODE", "a")])?;
    wait_log(&mut a, &log_a, "lease taken", Duration::from_secs(60)).await?;
    let mut b = serve(&s3, &cfg, &listen_b, &log_b, &[("CONFIDE_HA__NODE", "b")])?;
    let standby_msg = "standby: another coordinator is active";
    wait_log(&mut b, &log_b, standby_msg, Duration::from_secs(60)).await?;
    let serving = |u: String| async move {
        confide_coordinator::grpc::health_check(&u, None, "localhost").await
    };
    assert!(
        serving(url_a.clone()).await?,
        "the active coordinator is not serving"
    );
    assert!(
        !serving(url_b.clone()).await?,
        "the standby reports serving"
    );

    // Three sites that know both coordinators.
    let urls = format!("{url_a},{url_b}");
    let sites: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut c = SiteConfig::new(&urls, format!("site-{i}"), d, "malignant");
            c.insecure = true;
            c.max_reconnect = Duration::from_secs(120);
            tokio::spawn(async move {
                confide_client::run_site(c, std::future::pending())
                    .await
                    .map(|_| ())
            })
        })
        .collect();

    // Checkpoints as they appear, on the test's clock.
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let watch = |seen: &mut Vec<(u64, Instant)>, rounds: Vec<u64>| {
        for r in rounds {
            if !seen.iter().any(|(s, _)| *s == r) {
                seen.push((r, Instant::now()));
            }
        }
    };
    let until = Instant::now() + Duration::from_secs(240);
    while seen.len() < 3 {
        watch(&mut seen, rounds(&store).await?);
        if Instant::now() > until {
            return Err(format!("fewer than 3 checkpoints in time:\n{}", text(&log_a)).into());
        }
        if let Some(s) = a.0.try_wait()? {
            return Err(format!("the active coordinator exited: {s}\n{}", text(&log_a)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kill -9 inside the next round.
    let started = text(&log_a).matches("round started").count();
    while text(&log_a).matches("round started").count() <= started {
        watch(&mut seen, rounds(&store).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.0.kill()?;
    let killed = Instant::now();
    assert_eq!(a.0.wait()?.signal(), Some(9));
    watch(&mut seen, rounds(&store).await?);
    let (last_round, last_at) = *seen.last().ok_or("no checkpoint")?;
    let in_flight = text(&log_a).matches("round started").count() as u64;
    let log_text = text(&log_a);
    let stages: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains(&format!("stage closed round={in_flight} ")))
        .filter_map(|l| l.split("stage=").nth(1)?.split(' ').next())
        .collect();
    eprintln!(
        "killed the active coordinator inside its round {in_flight} (stages closed: {stages:?}); \
         newest checkpoint: round {last_round}"
    );
    assert_eq!(
        last_round + 1,
        in_flight,
        "the kill did not land inside a round"
    );

    // B takes over within the TTL and a little.
    let took = wait_log(
        &mut b,
        &log_b,
        "lease taken",
        Duration::from_secs(TTL_SECS + 20),
    )
    .await?;
    let takeover = took - killed;
    assert!(
        takeover <= Duration::from_secs(TTL_SECS + 3),
        "takeover after {takeover:?} (TTL {TTL_SECS} s)"
    );
    // Its resume reads the newest checkpoint after taking the lease.
    wait_log(
        &mut b,
        &log_b,
        "resuming from checkpoint",
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        text(&log_b).contains(&format!("next_round={}", last_round + 1)),
        "B did not resume after round {last_round}:\n{}",
        text(&log_b)
    );

    // A comes back (its machine restarted): a standby, fenced while B runs.
    let mut a2 = serve(&s3, &cfg, &listen_a, &log_a2, &[("CONFIDE_HA__NODE", "a")])?;
    wait_log(&mut a2, &log_a2, standby_msg, Duration::from_secs(60)).await?;

    let until = Instant::now() + Duration::from_secs(300);
    let status = loop {
        watch(&mut seen, rounds(&store).await?);
        // Read before B's state: anything A2 logged so far happened while B ran.
        let a2_text = text(&log_a2);
        if let Some(s) = b.0.try_wait()? {
            break s;
        }
        // Only once B has released the lease at its clean end may A2 take it.
        if a2_text.contains("lease taken") || a2_text.contains("checkpoint written") {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                text(&log_b).contains("lease released"),
                "the revived coordinator acted while B held the lease:\n{a2_text}"
            );
        }
        if Instant::now() > until {
            return Err(format!("B did not finish in time:\n{}", text(&log_b)).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "B: {status}\n{}", text(&log_b));
    for s in sites {
        s.await??;
    }
    let first_after = seen
        .iter()
        .find(|(r, _)| *r > last_round)
        .map(|(_, t)| *t)
        .ok_or("no checkpoint after the takeover")?;
    eprintln!(
        "failover gap: newest checkpoint before the kill -> kill {:.2} s -> lease taken {:.2} s \
         -> first checkpoint after {:.2} s (checkpoint to checkpoint {:.2} s; TTL {TTL_SECS} s)",
        (killed - last_at).as_secs_f64(),
        takeover.as_secs_f64(),
        (first_after - took).as_secs_f64(),
        (first_after - last_at).as_secs_f64(),
    );

    // Every round once, all applied: what an uninterrupted run records.
    let last = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.latest())
            .await??
            .ok_or("no checkpoint")?
    };
    let ids: Vec<(u64, bool)> = last
        .manifest
        .history
        .iter()
        .map(|r| (r.round, r.success))
        .collect();
    // The statistics round, then the training rounds (the feature
    // statistics a re-run announces must be bit for bit those of the
    // killed coordinator, or the sites refuse the replay).
    let want: Vec<(u64, bool)> = (1..=ROUNDS + 1).map(|r| (r, true)).collect();
    assert_eq!(ids, want, "{:?}", last.manifest.history);
    assert_eq!(last.manifest.completed_train_rounds, ROUNDS);
    assert!(
        last.manifest.lease_token >= Some(2),
        "{:?}",
        last.manifest.lease_token
    );
    let secs: Vec<String> = last
        .manifest
        .history
        .iter()
        .map(|r| format!("{:.2}", r.duration_secs))
        .collect();
    eprintln!("round durations (s): {secs:?}");
    Ok(())
}
