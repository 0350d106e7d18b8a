//! Crash safety on object storage: the real `confide serve` binary writes
//! its checkpoints to SeaweedFS (`[checkpoints] url = "s3://…"`) while three
//! in-process sites train an MLP of about 1.3 M parameters with FedAdam, so
//! each checkpoint is ~16 MB (the optimiser state by multipart upload). The
//! test watches the bucket and `kill -9`s the coordinator as soon as a
//! round's model object is there but its manifest is not — mid-upload —
//! then restarts it: resume must pick the newest *complete* checkpoint,
//! never the torn one, and the federation goes on with no round lost or
//! applied twice.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use confide_client::SiteConfig;
use confide_coordinator::checkpoint::{CheckpointStore, ObjectStoreCheckpoints};
use object_store::ObjectStore;
use object_store::path::Path as Key;
use support::data::split;
use support::process::serve;
use support::seaweed::{BoxError, Seaweed};
use tokio_stream::StreamExt;

const PREFIX: &str = "fed/crash";

fn config(url: &str, transcript: &Path) -> String {
    format!(
        r#"federation = "crash-test"
suite = "intl"
rounds = 1000
min_sites = 3
max_sites = 3
join_grace_secs = 5.0
statistics_round = false
evaluate_every_round = false
final_evaluation = false
[secagg]
stage_timeout_secs = 60
[model]
kind = "mlp"
features = 30
classes = 2
hidden = [40000]
[training]
epochs = 1
batch_size = 64
learning_rate = 0.01
[optimiser]
kind = "fedadam"
server_lr = 0.01
[checkpoints]
url = "{url}"
transcript_dir = "{}"
keep_last = 2
"#,
        transcript.display()
    )
}

/// Every object under the prefix, by round directory: file names.
async fn listing(raw: &dyn ObjectStore) -> Result<BTreeMap<String, Vec<String>>, BoxError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut s = raw.list(Some(&Key::from(PREFIX)));
    while let Some(m) = s.next().await {
        let m = m?;
        let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
        if let [.., dir, file] = parts.as_slice() {
            out.entry(dir.clone()).or_default().push(file.clone());
        }
    }
    Ok(out)
}

/// Poll the store off the runtime (its calls block).
async fn rounds(store: &ObjectStoreCheckpoints) -> Result<Vec<u64>, BoxError> {
    let s = store.clone();
    Ok(tokio::task::spawn_blocking(move || s.rounds()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_object_store_upload_resumes_from_the_newest_complete_checkpoint()
-> Result<(), BoxError> {
    let Some(s3) = Seaweed::start("kill_9_during_an_object_store_upload")? else {
        return Ok(());
    };
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let data = split(tmp.path(), 3)?;
    let cfg = tmp.path().join("federation.toml");
    std::fs::write(
        &cfg,
        config(&s3.url(PREFIX), &tmp.path().join("transcript")),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let log = tmp.path().join("coordinator.log");
    let store = s3.store(PREFIX)?;
    let raw = s3.raw()?;

    let mut coordinator = serve(&s3, &cfg, &listen, &log, &[])?;
    let start_sites =
        || -> Vec<tokio::task::JoinHandle<Result<(), confide_client::ClientError>>> {
            data.iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut c = SiteConfig::new(&url, format!("site-{i}"), d, "malignant");
                    c.insecure = true;
                    c.max_reconnect = Duration::from_secs(2);
                    tokio::spawn(async move {
                        confide_client::run_site(c, std::future::pending())
                            .await
                            .map(|_| ())
                    })
                })
                .collect()
        };
    let sites = start_sites();

    // Kill -9 while a round's upload is under way: its model object is in
    // the bucket, its manifest not yet. A kill that comes too late (the
    // manifest landed between the look and the kill) restarts and tries
    // on a later round.
    let mut torn = None;
    for attempt in 1..=5 {
        let until = Instant::now() + Duration::from_secs(240);
        let caught = loop {
            if let Some(s) = coordinator.0.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the coordinator exited: {s}\n{text}").into());
            }
            if Instant::now() > until {
                return Err(format!("no checkpoint upload seen in attempt {attempt}").into());
            }
            let l = listing(&raw).await?;
            let complete = l
                .values()
                .filter(|f| f.iter().any(|f| f == "manifest.json"))
                .count();
            let uploading = l.iter().find(|(_, f)| {
                f.iter().any(|f| f == "model.safetensors")
                    && !f.iter().any(|f| f == "manifest.json")
            });
            // Only once a complete one exists, so there is something to resume.
            if let (true, Some((dir, _))) = (complete > 0, uploading) {
                break dir.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        coordinator.0.kill()?;
        let status = coordinator.0.wait()?;
        assert_eq!(status.signal(), Some(9), "{status}");
        let after = listing(&raw).await?;
        let still_torn = after
            .get(&caught)
            .is_some_and(|f| !f.iter().any(|f| f == "manifest.json"));
        eprintln!(
            "attempt {attempt}: killed at {:.1} s during the upload of {caught}: {:?} (torn: {still_torn})",
            t0.elapsed().as_secs_f64(),
            after.get(&caught)
        );
        if still_torn {
            torn = Some(caught);
            break;
        }
        coordinator = serve(&s3, &cfg, &listen, &log, &[])?;
    }
    let torn = torn.ok_or("the upload was never caught mid-way in 5 attempts")?;
    let torn_round: u64 = torn.trim_start_matches("round-").parse()?;

    // The store lists only complete checkpoints; the newest is the round before.
    let complete = rounds(&store).await?;
    assert!(!complete.contains(&torn_round), "{complete:?}");
    let newest = *complete.last().ok_or("no complete checkpoint")?;
    assert_eq!(newest, torn_round - 1, "{complete:?}");

    // Restart: resume from `newest`, redo the torn round, carry on. The
    // sites restart too: a site that already sent an update on `newest`'s
    // model (the torn round's) refuses a second one on it until the model
    // changes or it restarts (client/src/round/contribution.rs), so after a
    // coordinator crash between the unmask and a complete checkpoint the
    // hospitals restart their site daemons.
    for s in &sites {
        s.abort();
    }
    let logged_before = std::fs::read_to_string(&log)?.len();
    let _coordinator = serve(&s3, &cfg, &listen, &log, &[])?;
    let sites = start_sites();
    let until = Instant::now() + Duration::from_secs(240);
    let resumed = loop {
        let c = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.latest()).await??
        };
        if let Some(c) = c.filter(|c| c.manifest.round > torn_round) {
            break c;
        }
        if Instant::now() > until {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("no checkpoint after round {torn_round} in time\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = std::fs::read_to_string(&log)?;
    let restart_log = &text[logged_before..];
    assert!(
        restart_log.contains("resuming from checkpoint")
            && restart_log.contains(&format!("next_round={}", newest + 1)),
        "{restart_log}"
    );
    // Every round exactly once, in order, all successful: the torn round
    // was redone, not lost and not applied twice.
    let ids: Vec<(u64, bool)> = resumed
        .manifest
        .history
        .iter()
        .map(|r| (r.round, r.success))
        .collect();
    let expected: Vec<(u64, bool)> = (1..=resumed.manifest.round).map(|r| (r, true)).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        resumed.manifest.completed_train_rounds,
        resumed.manifest.round
    );
    eprintln!(
        "resumed from round {newest} after the torn {torn}; reached round {} in {:.1} s",
        resumed.manifest.round,
        t0.elapsed().as_secs_f64()
    );
    for s in sites {
        s.abort();
    }
    Ok(())
}
