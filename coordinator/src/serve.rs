//! [`serve`]: the federation's gRPC server ([`grpc::serve_with`]) with the
//! Prometheus endpoint of `[metrics] listen` beside it, started before the
//! federation and stopped after it. Callers that bind the metrics port
//! themselves (tests, `confide demo`) use [`MetricsServer`] and
//! [`grpc::serve_with`] directly.
//!
//! With `[ha] enabled`, the process is first a standby (`grpc::standby`)
//! until it holds the lease in the object store (`checkpoint/lease.rs`);
//! then it resumes from the newest complete checkpoint and serves as the
//! active coordinator, renewing the lease, with every checkpoint write
//! fenced by it. Losing the lease ends it with [`CoordinatorError::Fenced`];
//! a clean end releases the lease so a standby takes over at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::checkpoint::io::{io_runtime, on_io};
use crate::checkpoint::{CheckpointStore, Location, ObjectStoreCheckpoints};
use crate::error::CoordinatorError;
use crate::federation::Federation;
use crate::federation::ServeReport;
use crate::grpc;
use crate::grpc::standby::Standby;
use crate::metrics::Metrics;
use crate::metrics::endpoint::{self, MetricsServer};
use crate::settings::Settings;

/// Run the federation on `listener` until the configured rounds are done or
/// `shutdown` fires, serving `/metrics` on `metrics.listen` if set. Binds
/// nothing else itself.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, CoordinatorError> {
    settings.validate()?;
    let metrics = Arc::new(Metrics::new(&settings));
    let server = match settings.metrics.address(&settings.listen)? {
        Some(addr) => {
            let server = MetricsServer::start(endpoint::bind(addr).await?, metrics.clone())?;
            info!(url = %server.url(), "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };
    // The shutdown signal is needed twice: by the federation, and to cut the
    // linger short.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let linger = Duration::from_secs(settings.metrics.linger_secs);
    let report = if settings.ha.enabled {
        serve_ha(settings, listener, metrics, stop_rx.clone()).await
    } else {
        grpc::serve_with(settings, listener, metrics, stopped(stop_rx.clone())).await
    };
    if let Some(server) = server {
        // Only a federation that ran has final counts worth a last scrape.
        if report.is_ok() && !linger.is_zero() && !*stop_rx.borrow() {
            info!(
                secs = linger.as_secs(),
                "federation over; metrics endpoint lingers"
            );
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = stopped(stop_rx) => {}
            }
        }
        server.stop().await;
    }
    report
}

/// Standby until the lease is ours, then the active coordinator (module docs).
async fn serve_ha(
    settings: Settings,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ServeReport, CoordinatorError> {
    let Some(Location::Object { bucket, prefix }) = settings.checkpoints.location()? else {
        return Err(CoordinatorError::Config(
            "ha.enabled needs checkpoints.url (s3://bucket/prefix)".into(),
        ));
    };
    let store = ObjectStoreCheckpoints::s3_from_env(&bucket, &prefix)?;
    let node = settings.ha.node_name();
    let lease = Arc::new(store.lease(&node, settings.ha.ttl(), settings.ha.renew()));
    let listener = Arc::new(listener);
    let standby = Standby::start(&settings, listener.clone(), &node, lease.url()).await?;
    metrics.set_active(false);
    let acquired = {
        let (lease, stop, store) = (lease.clone(), stop.clone(), store.clone());
        on_io(async move {
            // Above every token a checkpoint carries, even if the lease
            // object itself was removed.
            let floor = tokio::task::spawn_blocking(move || store.highest_token())
                .await
                .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))??;
            lease.acquire(floor, stop).await
        })
        .await
    };
    standby.stop().await;
    let token = match acquired? {
        Some(t) => t,
        None => return Ok(ServeReport::default()),
    };
    info!(%node, token, lease = %lease.url(), "active coordinator: resuming from the newest checkpoint");
    metrics.set_active(true);
    // Renewing starts before the resume: reading a large model's checkpoint
    // can take longer than the TTL.
    let (lost_tx, mut lost_rx) = tokio::sync::watch::channel(None::<String>);
    let keeper = io_runtime()?.spawn(lease.clone().keep(lost_tx));
    let fenced: Arc<dyn CheckpointStore> = Arc::new(store.fenced_by(lease.clone()));
    let fed = match Federation::with_store(settings, metrics.clone(), Some(fenced)) {
        Ok(fed) => fed,
        Err(e) => {
            keeper.abort();
            return Err(e);
        }
    };
    let lost = lost_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = stopped(stop) => {}
            _ = lost_rx.wait_for(|l| l.is_some()) => {}
        }
    };
    let report = grpc::serve_federation(fed, listener, shutdown).await;
    keeper.abort();
    metrics.set_active(false);
    if let Some(reason) = lost.borrow().clone() {
        return Err(CoordinatorError::Fenced {
            location: lease.url().into(),
            reason,
        });
    }
    let l = lease.clone();
    let _ = on_io(async move {
        l.release().await;
        Ok(())
    })
    .await;
    report
}

/// Wait for `stop` to turn true (never, if its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
