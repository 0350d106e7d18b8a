//! The gRPC layer, the only part of the coordinator that knows tonic:
//! [`serve_with`] sets up the server (TLS, health, message limits) and runs it
//! beside the [`Federation`]; the handlers in `site` and `admin` validate,
//! convert, call the federation and map its error with the one map in
//! `status`.
//!
//! ```text
//! serve ─▶ incoming (TLS 1.3 handshake, client certificate vs CA and CRL)
//!       ─▶ Handlers::admit (access: certificate, CRL, allow-list)
//!       ├─▶ site   (Site service)  ─▶ Federation
//!       ├─▶ admin  (Admin service) ─▶ Federation, checkpoints
//!       └─▶ status (RequestError → Status, exhaustive)
//! ```

mod admin;
mod conns;
mod incoming;
mod rate;
mod site;
pub mod standby;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use confide_proto::tls;
use confide_proto::v1 as pb;
use pb::admin_server::AdminServer;
use pb::site_server::SiteServer;
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::access::{Access, JoinLimiter, PeerCert, Refusal};
use crate::error::CoordinatorError;
use crate::federation::{Federation, ServeReport};
use crate::revocation::{CrlClientVerifier, Revocation};
use crate::settings::Settings;

// The admin client moved to `cli`; these stay reachable here so callers of
// the former paths (the end-to-end tests) keep compiling unchanged.
pub use crate::cli::admin::{admin_status, health_check};

/// The peer's TLS certificate (the leaf), if mTLS is on and one was presented.
fn peer_cert<T>(req: &Request<T>) -> Option<PeerCert> {
    let certs = req.peer_certs()?;
    let der = certs.first()?;
    PeerCert::from_der(der.as_ref())
}

/// Site and Admin handlers.
#[derive(Clone, Debug)]
pub struct Handlers {
    fed: Arc<Federation>,
    tls: bool,
    access: Arc<Access>,
    joins: Arc<JoinLimiter>,
    rates: Arc<rate::SiteLimiter>,
    /// Turns for model downloads (`limits.max_concurrent_downloads`).
    downloads: Arc<tokio::sync::Semaphore>,
}

impl Handlers {
    /// The admitted peer certificate (`None` in insecure mode). Every Site and
    /// Admin call goes through here, so revocation takes effect on the next
    /// call of an already-connected peer too.
    fn admit<T>(&self, req: &Request<T>, operator: bool) -> Result<Option<PeerCert>, Status> {
        if !self.tls {
            return Ok(None);
        }
        let remote = req.remote_addr();
        let Some(cert) = peer_cert(req) else {
            let r = Refusal::NoCertificate;
            warn!(remote = ?remote, reason = %r, "request refused");
            return Err(Status::permission_denied(r.to_string()));
        };
        if let Err(r) = self.access.check(&cert, operator) {
            warn!(remote = ?remote, peer = %cert.name, serial = %cert.serial, reason = %r, "request refused");
            return Err(Status::permission_denied(r.to_string()));
        }
        Ok(Some(cert))
    }

    /// DER of the CRL in force (empty without one), for sites.
    fn crl(&self) -> Vec<u8> {
        self.access
            .revocation()
            .map(|r| r.crl_der())
            .unwrap_or_default()
    }

    fn peer<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        Ok(self.admit(req, false)?.map(|c| c.name))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Run the federation on `listener` until the configured rounds are done or
/// `shutdown` fires, recording into `metrics`. Binds nothing itself.
pub async fn serve_with(
    settings: Settings,
    listener: tokio::net::TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, CoordinatorError> {
    let fed = Federation::with_metrics(settings, metrics)?;
    serve_federation(fed, Arc::new(listener), shutdown).await
}

/// The TLS acceptor of the settings and the CRL it checks (none in
/// insecure mode).
type Tls = (Option<tokio_rustls::TlsAcceptor>, Option<Arc<Revocation>>);

fn tls_setup(s: &Settings) -> Result<Tls, CoordinatorError> {
    if s.tls.insecure {
        warn!(
            "running WITHOUT TLS (--insecure): site identities are not authenticated; for local experiments only"
        );
        return Ok((None, None));
    }
    let (ca, cert, key) = s.tls_files()?;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| CoordinatorError::Tls(format!("{}: {e}", p.display())))
    };
    if s.tls.allowed_sites.is_empty() {
        warn!(
            "tls.allowed_sites is empty: ANY site holding a certificate from the federation CA may join; list the sites in production"
        );
    }
    if s.tls.crl_file.is_none() && s.tls.revocation_file.is_some() {
        warn!(
            "tls.revocation_file is deprecated: rename it tls.crl_file; the file it names is now read as an X.509 CRL (`confide certs crl` writes one)"
        );
    }
    let r = Arc::new(Revocation::new(s.crl_file(), &read(&ca)?)?);
    info!(crl = ?r.path(), allowed_sites = ?s.tls.allowed_sites, "mTLS admission (TLS 1.3 only)");
    // Client certificates are verified against the federation CA and its
    // current CRL during the handshake whenever presented; a connection
    // without one is let through the handshake only so that every RPC
    // can refuse it with a clear PERMISSION_DENIED (the health service
    // stays reachable).
    let verifier = CrlClientVerifier::new(r.clone());
    // A key other accounts on the host can read is not the coordinator's alone.
    confide_proto::keys::check_private_file(&key)
        .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    let config = tls::server_config(&read(&cert)?, &read(&key)?, verifier)?;
    Ok((
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        Some(r),
    ))
}

/// Serve `router` on `listener` (TLS when `acceptor` is set, connections
/// counted per certificate name in `counts`) until `stopped`; returns the
/// server task and the TLS accept loop to abort afterwards.
fn spawn_server(
    router: tonic::transport::server::Router,
    listener: Arc<tokio::net::TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    counts: Arc<conns::PerIdentity>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tokio::task::JoinHandle<()>,
) {
    match acceptor {
        Some(acceptor) => {
            let (incoming, accept) =
                incoming::tls_incoming(listener, acceptor, incoming::HANDSHAKE_TIMEOUT, counts);
            let server = router.serve_with_incoming_shutdown(incoming, stopped);
            (tokio::spawn(server), accept)
        }
        None => {
            let (incoming, accept) = incoming::plain_incoming(listener);
            let server = router.serve_with_incoming_shutdown(incoming, stopped);
            (tokio::spawn(server), accept)
        }
    }
}

/// Run `fed` on `listener` until its rounds are done or `shutdown` fires.
pub(crate) async fn serve_federation(
    fed: Arc<Federation>,
    listener: Arc<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, CoordinatorError> {
    let s = fed.settings().clone();
    let (acceptor, revocation) = tls_setup(&s)?;
    let access = Arc::new(Access::new(&s.tls.allowed_sites, revocation));
    let handlers = Handlers {
        fed: fed.clone(),
        tls: !s.tls.insecure,
        access: access.clone(),
        joins: Arc::new(JoinLimiter::new(
            s.limits.join_rate_per_sec,
            s.limits.join_burst,
        )),
        rates: Arc::new(rate::SiteLimiter::new(
            s.limits.site_rate_per_sec,
            s.limits.site_burst,
        )),
        downloads: Arc::new(tokio::sync::Semaphore::new(
            s.limits.max_concurrent_downloads,
        )),
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SiteServer<Handlers>>().await;
    let max = s.limits.max_message_bytes;
    let site = SiteServer::new(handlers.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(handlers).max_decoding_message_size(max);
    let addr = listener.local_addr().ok();
    info!(addr = ?addr, federation = %s.federation, suite = %s.suite, secure_aggregation = s.secure_aggregation, "coordinator listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    // HTTP/2 flow control bounds what each connection may push before the
    // coordinator reads it, and an upload moves one window per round trip.
    // One window for the stream and the connection alike: a site has one
    // upload at a time, and sends its data only after `ready`.
    let window = s.limits.receive_window_bytes();
    let router = Server::builder()
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window))
        .add_service(health)
        .add_service(site)
        .add_service(admin);
    let (server, accept) = spawn_server(
        router,
        listener,
        acceptor,
        conns::PerIdentity::new(
            s.limits.max_connections_per_site,
            Some(fed.metrics().clone()),
        ),
        stopped,
    );
    let watch = crate::federation::watch::Watch::start(&fed);
    let result = tokio::select! {
        r = fed.run() => r,
        _ = shutdown => {
            info!("shutdown requested");
            Ok(fed.report())
        }
    };
    drop(watch);
    if result.is_ok() {
        fed.send_done();
        // Let sites read Done and hang up (bounded).
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while !fed.all_disconnected() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // End every task stream so graceful shutdown does not wait on them.
    fed.close_streams();
    let _ = stop_tx.send(());
    let mut server = server;
    match tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => {
            warn!("server did not stop within 5 s; aborting it");
            server.abort();
        }
        Ok(Ok(Ok(()))) => {}
    }
    // Stop accepting with the server.
    accept.abort();
    let _ = accept.await;
    result
}
