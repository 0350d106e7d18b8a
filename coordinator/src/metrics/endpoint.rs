//! The `/metrics` HTTP endpoint: plain HTTP/1 on its own listener (axum),
//! apart from the gRPC port so that a scraper needs no client certificate
//! and metrics never share the sites' mTLS port. `GET /metrics` answers the
//! Prometheus text format (0.0.4), or OpenMetrics when the scraper asks for
//! it; every other path and method is 404.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use super::Metrics;
use crate::error::CoordinatorError;

/// `Content-Type` of the Prometheus text format.
pub const TEXT_FORMAT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CoordinatorError::Config(format!("metrics.listen {addr}: {e}")))
}

/// The running endpoint; [`MetricsServer::stop`] ends it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// Serves `metrics` on `listener` until stopped.
    pub fn start(listener: TcpListener, metrics: Arc<Metrics>) -> Result<Self, CoordinatorError> {
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(scrape).fallback(not_found))
            .fallback(not_found)
            .with_state(metrics);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Ok(MetricsServer { addr, stop, task })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Stops serving: open scrapes get a second to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "metrics endpoint ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "metrics endpoint task failed"),
            Err(_) => task.abort(),
        }
    }
}

/// Whether the scraper prefers OpenMetrics (Prometheus asks for it first).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let (body, content_type) = if wants_openmetrics(&headers) {
        (metrics.encode_openmetrics(), OPENMETRICS_FORMAT)
    } else {
        (metrics.encode(), TEXT_FORMAT)
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}
