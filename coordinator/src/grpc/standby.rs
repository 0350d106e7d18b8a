//! What a standby coordinator serves while another one holds the lease:
//! the gRPC health service answering NOT_SERVING, and the Site and Admin
//! services answering every call with UNAVAILABLE ("standby coordinator …"),
//! so that a site with several coordinator URLs moves on to the next one and
//! an operator's `confide status` says why. Same TLS as the active server,
//! on the same socket, which the active server takes over on promotion.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use confide_proto::v1 as pb;
use pb::admin_server::AdminServer;
use pb::site_server::SiteServer;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::{Handlers, spawn_server, tls_setup};
use crate::error::CoordinatorError;
use crate::settings::Settings;

/// Answers every call of service `S` with UNAVAILABLE.
struct Refuse<S> {
    message: Arc<str>,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for Refuse<S> {
    fn clone(&self) -> Self {
        Refuse {
            message: self.message.clone(),
            service: PhantomData,
        }
    }
}

impl<S: NamedService> NamedService for Refuse<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Refuse<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        ready(Ok(
            tonic::Status::unavailable(self.message.to_string()).into_http()
        ))
    }
}

/// A running standby server; [`Standby::stop`] hands the socket back.
pub struct Standby {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Standby {
    /// Serve the standby's answers on `listener` (node `node`, waiting for
    /// the lease at `lease`).
    pub async fn start(
        settings: &Settings,
        listener: Arc<tokio::net::TcpListener>,
        node: &str,
        lease: &str,
    ) -> Result<Self, CoordinatorError> {
        let (acceptor, _) = tls_setup(settings)?;
        let message: Arc<str> = format!(
            "standby coordinator {node}: another coordinator holds the lease {lease}; \
             try the federation's other coordinator URLs"
        )
        .into();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter.set_not_serving::<SiteServer<Handlers>>().await;
        let router = Server::builder()
            .add_service(health)
            .add_service(Refuse::<SiteServer<Handlers>> {
                message: message.clone(),
                service: PhantomData,
            })
            .add_service(Refuse::<AdminServer<Handlers>> {
                message,
                service: PhantomData,
            });
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stop_rx.await;
        };
        info!(addr = ?listener.local_addr().ok(), %node, "standby: serving health NOT_SERVING until the lease is free");
        let (server, accept) = spawn_server(
            router,
            listener,
            acceptor,
            super::conns::PerIdentity::new(settings.limits.max_connections_per_site, None),
            stopped,
        );
        Ok(Standby {
            stop,
            server,
            accept,
        })
    }

    /// Stop answering (open connections are closed; sites reconnect to the
    /// active server that follows on the same socket).
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let _ = self.stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            warn!("standby server did not stop within 5 s; aborting it");
            server.abort();
        }
    }
}
