//! [`serve`]: the federation's gRPC server ([`grpc::serve_with`]) with the
//! Prometheus endpoint of `[metrics] listen` beside it, started before the
//! federation and stopped after it. Callers that bind the metrics port
//! themselves (tests, `confide demo`) use [`MetricsServer`] and
//! [`grpc::serve_with`] directly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::error::CoordinatorError;
use crate::federation::ServeReport;
use crate::grpc;
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
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone without a signal: never stop.
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let linger = Duration::from_secs(settings.metrics.linger_secs);
    let report = grpc::serve_with(settings, listener, metrics, stopped(stop_rx.clone())).await;
    if let Some(server) = server {
        if !linger.is_zero() && !*stop_rx.borrow() {
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
