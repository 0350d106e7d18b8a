//! The standby's timing rules (pure) and the lease's conditional writes
//! against an in-memory store; `coordinator/tests/failover.rs` runs the same
//! against SeaweedFS with real processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::memory::InMemory;
use object_store::path::Path;
use tokio::sync::watch;

use super::*;

fn doc(holder: &str, token: u64, released: bool) -> LeaseDoc {
    LeaseDoc {
        holder: holder.into(),
        instance: "i".into(),
        token,
        ttl_ms: 10_000,
        renewals: 0,
        released,
    }
}

#[test]
fn a_standby_takes_over_only_after_one_ttl_without_change() {
    let ttl = Duration::from_secs(10);
    let t0 = Instant::now();
    let mut seen = None;
    assert_eq!(next_step(None, &mut seen, t0, ttl, 4), Step::Create);
    let d = doc("a", 7, false);
    let wait = next_step(Some((&d, "e1")), &mut seen, t0, ttl, 4);
    assert!(matches!(wait, Step::Wait { ref holder, left } if holder == "a" && left == ttl));
    let s = t0 + Duration::from_secs(9);
    assert!(matches!(
        next_step(Some((&d, "e1")), &mut seen, s, ttl, 4),
        Step::Wait { left, .. } if left == Duration::from_secs(1)
    ));
    // A renewal (new ETag) restarts the count.
    assert!(matches!(
        next_step(Some((&d, "e2")), &mut seen, s, ttl, 4),
        Step::Wait { left, .. } if left == ttl
    ));
    let late = s + ttl;
    assert_eq!(
        next_step(Some((&d, "e2")), &mut seen, late, ttl, 4),
        Step::Take {
            etag: "e2".into(),
            token: 8
        }
    );
    // The holder's longer TTL counts; a checkpoint's higher token lifts the next one.
    let mut long = doc("a", 7, false);
    long.ttl_ms = 30_000;
    let mut seen = None;
    next_step(Some((&long, "x")), &mut seen, t0, ttl, 0);
    assert!(matches!(
        next_step(Some((&long, "x")), &mut seen, t0 + ttl, ttl, 0),
        Step::Wait { .. }
    ));
    assert_eq!(
        next_step(Some((&doc("a", 2, true), "r")), &mut None, t0, ttl, 9),
        Step::Take {
            etag: "r".into(),
            token: 10
        },
        "a released lease is taken at once, above the checkpoints' tokens"
    );
}

fn lease(mem: &Arc<InMemory>, holder: &str, ttl_ms: u64) -> Arc<Lease> {
    Arc::new(Lease::new(
        mem.clone(),
        Path::from("fed/lease.json"),
        "mem://fed/lease.json".into(),
        holder,
        Duration::from_millis(ttl_ms),
        Duration::from_millis(ttl_ms / 4),
    ))
}

#[tokio::test]
async fn one_holder_at_a_time_and_the_old_one_is_fenced() -> Result<(), CoordinatorError> {
    let mem = Arc::new(InMemory::new());
    let (_stop_tx, stop) = watch::channel(false);
    let a = lease(&mem, "a", 400);
    assert_eq!(a.acquire(0, stop.clone()).await?, Some(1));
    assert_eq!(a.check()?, 1);
    assert_eq!(a.renew().await?, 1);

    // b waits while a renews, and takes over only once a stops renewing.
    let b = lease(&mem, "b", 400);
    let (a_lost_tx, a_lost) = watch::channel(None);
    let keeper = tokio::spawn(a.clone().keep(a_lost_tx));
    let b2 = b.clone();
    let stop2 = stop.clone();
    let take = tokio::spawn(async move { b2.acquire(0, stop2).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!take.is_finished(), "b took a lease that a kept renewing");
    keeper.abort();
    let started = Instant::now();
    let token = take
        .await
        .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))??;
    assert_eq!(token, Some(2));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(a_lost.borrow().is_none());

    // a's validity runs out, and its next renewal learns who holds it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(a.check(), Err(CoordinatorError::Fenced { .. })));
    let e = a
        .renew()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("taken by b with token 2"), "{e}");
    assert!(a.check().is_err());

    // A clean stop hands over at once.
    b.release().await;
    let c = lease(&mem, "c", 60_000);
    let t = Instant::now();
    assert_eq!(c.acquire(0, stop.clone()).await?, Some(3));
    assert!(t.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn concurrent_creates_have_one_winner_and_stop_ends_the_wait() -> Result<(), CoordinatorError>
{
    let mem = Arc::new(InMemory::new());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..5 {
        let l = lease(&mem, &format!("n{i}"), 60_000);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { l.acquire(0, stop).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let mut winners = 0;
    for t in tasks {
        let got = t
            .await
            .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))??;
        if let Some(token) = got {
            assert_eq!(token, 1);
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    Ok(())
}
