//! `[metrics]`: the Prometheus endpoint (off unless `listen` is set).

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

/// The Prometheus endpoint: plain HTTP on its own port, `GET /metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `IP:PORT` to serve `/metrics` on; none (the default) serves nothing.
    /// Port 0 picks a free port (logged at start).
    pub listen: Option<String>,
    /// Seconds to keep answering `/metrics` after the federation has ended,
    /// so that a scraper's next visit still sees the final counts (0, the
    /// default: stop with the federation). A shutdown signal ends it early.
    pub linger_secs: u64,
}

impl MetricsSettings {
    /// The address to bind, if any: an `IP:PORT` other than the gRPC one.
    pub fn address(
        &self,
        grpc_listen: &str,
    ) -> Result<Option<std::net::SocketAddr>, CoordinatorError> {
        let Some(listen) = &self.listen else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = listen.trim().parse().map_err(|_| {
            CoordinatorError::Config(format!(
                "metrics.listen must be IP:PORT (e.g. 127.0.0.1:9464), got {listen:?}"
            ))
        })?;
        // Same port as gRPC would fail at bind time, after the federation
        // started; say so now instead.
        if addr.port() != 0 && grpc_listen.trim().parse::<std::net::SocketAddr>() == Ok(addr) {
            return Err(CoordinatorError::Config(format!(
                "metrics.listen ({addr}) must differ from listen"
            )));
        }
        Ok(Some(addr))
    }
}
