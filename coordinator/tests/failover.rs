//! Active / standby coordinators against a real S3 server (SeaweedFS):
//! the lease's conditional writes and the fence on checkpoint writes, in
//! process; and the whole failover with real `confide serve` processes, one
//! of them killed with SIGKILL mid-federation (`failover_*`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_coordinator::checkpoint::{CheckpointStore, Manifest, ObjectStoreCheckpoints};
use confide_coordinator::error::CoordinatorError;
use confide_proto::model::{Model, Tensor};
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
