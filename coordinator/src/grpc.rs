//! The gRPC layer: thin handlers that validate, convert, call the
//! [`Federation`] and map [`RequestError`] to a status. The only module that
//! knows tonic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use confide_crypto::ProtocolError;
use confide_proto::v1 as pb;
use pb::admin_server::{Admin, AdminServer};
use pb::site_server::{Site, SiteServer};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::access::{Access, JoinLimiter, PeerCert, Refusal};
use crate::error::{CoordinatorError, RequestError};
use crate::federation::{Federation, ServeReport};
use crate::settings::Settings;

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        let code = status_code(&e);
        // One log line per refusal: identity and limit violations are what
        // an operator must see; the rest (late, duplicate, malformed) are
        // normal under retries and reconnects.
        match code {
            Code::PermissionDenied | Code::ResourceExhausted => {
                warn!(reason = %msg, "request refused")
            }
            _ => info!(reason = %msg, "request refused"),
        }
        Status::new(code, msg)
    }
}

/// The status of each refusal; exhaustive, so a new error variant must be
/// given its code here.
fn status_code(e: &RequestError) -> Code {
    match e {
        RequestError::UnknownSession => Code::Unauthenticated,
        RequestError::IdentityMismatch { .. } | RequestError::MemberMismatch { .. } => {
            Code::PermissionDenied
        }
        RequestError::WrongRound { .. }
        | RequestError::NotInCohort { .. }
        | RequestError::NotUploading { .. } => Code::FailedPrecondition,
        RequestError::AlreadySubmitted(_) => Code::AlreadyExists,
        RequestError::Protocol(p) => protocol_code(p),
        RequestError::Convert(_)
        | RequestError::SiteName
        | RequestError::VerifyingKey
        | RequestError::VectorLength { .. }
        | RequestError::ChunkOffset { .. }
        | RequestError::ChunkSize { .. }
        | RequestError::Truncated { .. } => Code::InvalidArgument,
        RequestError::TooManySites { .. } => Code::ResourceExhausted,
        RequestError::NoModel { .. } => Code::NotFound,
        RequestError::ShuttingDown => Code::Internal,
    }
}

/// The status of a message the round's machine refused.
fn protocol_code(e: &ProtocolError) -> Code {
    match e {
        ProtocolError::WrongRound { .. }
        | ProtocolError::WrongStage { .. }
        | ProtocolError::Ended
        | ProtocolError::NotParticipant(_)
        | ProtocolError::Aborted { .. } => Code::FailedPrecondition,
        ProtocolError::Duplicate(_) => Code::AlreadyExists,
        ProtocolError::WrongLength { .. }
        | ProtocolError::Malformed { .. }
        | ProtocolError::BadAdvert { .. }
        | ProtocolError::BothSharesRequested(_)
        | ProtocolError::CommitmentMismatch { .. }
        | ProtocolError::Crypto(_)
        | ProtocolError::Shamir(_)
        | ProtocolError::Config(_)
        | ProtocolError::BelowThreshold { .. }
        | ProtocolError::TooFewSurvivors { .. }
        | ProtocolError::Reconstruction { .. } => Code::InvalidArgument,
    }
}

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

    fn peer<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        Ok(self.admit(req, false)?.map(|c| c.name))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Site for Handlers {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        // Admission first: peers without an admitted certificate must not
        // drain the join bucket that admitted sites rely on.
        let cert = self.admit(&req, false)?;
        if !self.joins.try_take(std::time::Instant::now()) {
            warn!(remote = ?req.remote_addr(), "join refused: join rate limit");
            return Err(Status::resource_exhausted(
                "too many joins; retry later (limits.join_rate_per_sec)",
            ));
        }
        let r = req.into_inner();
        if let Some(c) = &cert
            && c.name != r.site
        {
            let e = RequestError::IdentityMismatch {
                peer: c.name.clone(),
                site: r.site.clone(),
            };
            return Err(e.into());
        }
        if let Some(c) = &cert {
            // Neighbours will only accept adverts signed with the key the CA
            // bound to this name, so refuse a mismatch now with a clear status
            // instead of letting every round abort later.
            let suite = self
                .fed
                .settings()
                .suite
                .parse::<confide_crypto::Suite>()
                .ok();
            match &c.verifying_key {
                Some((s, k)) if Some(*s) == suite && *k == r.verifying_key => {}
                Some(_) => {
                    warn!(peer = %c.name, "join refused: verifying key differs from the certificate's");
                    return Err(Status::permission_denied(format!(
                        "the verifying key in Join is not the {} key bound to {}'s certificate",
                        self.fed.settings().suite,
                        c.name
                    )));
                }
                None if self.fed.settings().secure_aggregation => {
                    warn!(peer = %c.name, "join refused: certificate binds no verifying key");
                    return Err(Status::permission_denied(format!(
                        "{}'s certificate carries no confide:vk SAN; reissue it with `confide certs issue --site`",
                        c.name
                    )));
                }
                None => {}
            }
        }
        let peer = cert.as_ref().map(|c| c.name.as_str());
        let session = self.fed.join(&r.site, &r.verifying_key, peer)?;
        let s = self.fed.settings();
        Ok(Response::new(pb::JoinResponse {
            session,
            federation: s.federation.clone(),
            suite: s.suite.clone(),
        }))
    }

    type TasksStream = BoxStream<pb::Task>;

    async fn tasks(
        &self,
        req: Request<pb::TasksRequest>,
    ) -> Result<Response<Self::TasksStream>, Status> {
        let peer = self.peer(&req)?;
        let rx = self
            .fed
            .open_tasks(&req.get_ref().session, peer.as_deref())?;
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    type DownloadModelStream = BoxStream<pb::ModelChunk>;

    async fn download_model(
        &self,
        req: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let bytes = self.fed.download(&r.session, peer.as_deref(), r.round)?;
        let total = bytes.len() as u64;
        let chunks = bytes.len().div_ceil(confide_proto::CHUNK_BYTES).max(1);
        let stream = tokio_stream::iter((0..chunks).map(move |i| {
            let a = i * confide_proto::CHUNK_BYTES;
            let b = (a + confide_proto::CHUNK_BYTES).min(bytes.len());
            Ok(pb::ModelChunk {
                offset: a as u64,
                data: bytes[a..b].to_vec(),
                total_len: total,
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn advertise_keys(
        &self,
        req: Request<pb::AdvertiseKeysRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let cert = self.admit(&req, false)?;
        let r = req.into_inner();
        let advert = r
            .advert
            .ok_or_else(|| Status::invalid_argument("advert missing"))?;
        let (peer, der) = match cert {
            Some(c) => (Some(c.name), c.der),
            None => (None, Vec::new()),
        };
        // The certificate of the connection that sent the advert is what
        // neighbours get to check it against.
        self.fed
            .advertise(&r.session, peer.as_deref(), advert, der)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn share_keys(
        &self,
        req: Request<pb::ShareKeysRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let session = r.session.clone();
        self.fed.share_keys(&session, peer.as_deref(), r)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn submit_masked_input(
        &self,
        req: Request<Streaming<pb::MaskedInputChunk>>,
    ) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty masked-input stream"))?;
        let session = first.session.clone();
        let round = first.round;
        let mut up = self
            .fed
            .begin_upload(&session, peer.as_deref(), round, first.total_len)
            .await?;
        up.push(first.offset, &first.data)?;
        // A slow or stalled uploader must not hold an upload slot past the stage deadline.
        let limit = std::time::Duration::from_secs(u64::from(
            self.fed.settings().secagg.stage_timeout_secs,
        ));
        let rest = async {
            while let Some(c) = stream.message().await? {
                if c.round != round || (!c.session.is_empty() && c.session != session) {
                    return Err(Status::invalid_argument(
                        "chunks of one stream must share session and round",
                    ));
                }
                up.push(c.offset, &c.data)?;
            }
            Ok(())
        };
        tokio::time::timeout(limit, rest).await.map_err(|_| {
            Status::deadline_exceeded("masked-input upload took longer than the stage timeout")
        })??;
        self.fed.finish_upload(&session, peer.as_deref(), up)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn unmask(&self, req: Request<pb::UnmaskResponse>) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let session = r.session.clone();
        self.fed.unmask(&session, peer.as_deref(), r)?;
        Ok(Response::new(pb::Ack {}))
    }
}

impl Handlers {
    /// The Admin API takes only operator certificates (SAN `operator-NAME`) under mTLS.
    fn operator<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match self.admit(req, true)? {
            Some(c) if !c.name.starts_with("operator-") => {
                warn!(peer = %c.name, "admin request refused: not an operator certificate");
                Err(Status::permission_denied(format!(
                    "{} is not an operator certificate",
                    c.name
                )))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Admin for Handlers {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.operator(&req)?;
        let (round, stage, sites, completed) = self.fed.status();
        let s = self.fed.settings();
        Ok(Response::new(pb::StatusResponse {
            federation: s.federation.clone(),
            suite: s.suite.clone(),
            current_round: round,
            stage,
            connected_sites: sites,
            completed_rounds: completed,
            target_rounds: s.rounds,
            secure_aggregation: s.secure_aggregation,
        }))
    }

    async fn rounds(
        &self,
        req: Request<pb::RoundsRequest>,
    ) -> Result<Response<pb::RoundsResponse>, Status> {
        self.operator(&req)?;
        let rounds = self
            .fed
            .history()
            .into_iter()
            .map(crate::record_to_pb)
            .collect();
        Ok(Response::new(pb::RoundsResponse { rounds }))
    }

    async fn checkpoints(
        &self,
        req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        self.operator(&req)?;
        let Some(dir) = self.fed.settings().checkpoints.dir.clone() else {
            return Ok(Response::new(pb::CheckpointsResponse {
                checkpoints: vec![],
            }));
        };
        let list = crate::checkpoint_infos(&dir).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CheckpointsResponse { checkpoints: list }))
    }
}

/// Run the federation on `listener` until the configured rounds are done or
/// `shutdown` fires. Binds nothing itself.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, CoordinatorError> {
    let fed = Federation::new(settings)?;
    let s = fed.settings().clone();
    let access = Arc::new(Access::new(&s.tls.allowed_sites, s.revocation_file()));
    let handlers = Handlers {
        fed: fed.clone(),
        tls: !s.tls.insecure,
        access: access.clone(),
        joins: Arc::new(JoinLimiter::new(
            s.limits.join_rate_per_sec,
            s.limits.join_burst,
        )),
    };
    let mut builder = Server::builder();
    if s.tls.insecure {
        warn!(
            "running WITHOUT TLS (--insecure): site identities are not authenticated; for local experiments only"
        );
    } else {
        let (ca, cert, key) = s.tls_files()?;
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CoordinatorError::Tls(format!("{}: {e}", p.display())))
        };
        if s.tls.allowed_sites.is_empty() {
            warn!(
                "tls.allowed_sites is empty: ANY site holding a certificate from the federation CA may join; list the sites in production"
            );
        }
        info!(revocation_list = ?access.revocation_path(), allowed_sites = ?s.tls.allowed_sites, "mTLS admission");
        // Client certificates are verified against the federation CA during
        // the handshake whenever presented; a connection without one is let
        // through the handshake only so that every RPC can refuse it with a
        // clear PERMISSION_DENIED (the health service stays reachable).
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&cert)?, read(&key)?))
            .client_ca_root(Certificate::from_pem(read(&ca)?))
            .client_auth_optional(true);
        builder = builder
            .tls_config(tls)
            .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    }
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
    let server = builder
        .add_service(health)
        .add_service(site)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            // Small stage messages must not wait out delayed ACKs (~40 ms each).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop_rx.await;
            },
        );
    let server = tokio::spawn(server);
    let result = tokio::select! {
        r = fed.run() => r,
        _ = shutdown => {
            info!("shutdown requested");
            Ok(fed.report())
        }
    };
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
    result
}

async fn admin_client(
    url: &str,
    tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, CoordinatorError> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| CoordinatorError::Transport(e.to_string()))?;
    if let Some((ca, cert, key)) = tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CoordinatorError::Tls(format!("{}: {e}", p.display())))
        };
        let cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&ca)?))
            .identity(Identity::from_pem(read(&cert)?, read(&key)?))
            .domain_name("localhost");
        ep = ep
            .tls_config(cfg)
            .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    }
    let ch = ep
        .connect()
        .await
        .map_err(|e| CoordinatorError::Transport(format!("{url}: {e}")))?;
    Ok(pb::admin_client::AdminClient::new(ch))
}

/// `confide health`: ask the standard gRPC health service whether the Site
/// service is serving. TLS uses only the CA (no client certificate), so a
/// container healthcheck needs nothing secret.
pub async fn health_check(
    url: &str,
    ca: Option<&std::path::Path>,
    domain: &str,
) -> Result<bool, CoordinatorError> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| CoordinatorError::Transport(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .map_err(|e| CoordinatorError::Tls(format!("{}: {e}", ca.display())))?;
        let cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(domain);
        ep = ep
            .tls_config(cfg)
            .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    }
    let ch = ep
        .connect()
        .await
        .map_err(|e| CoordinatorError::Transport(format!("{url}: {e}")))?;
    let reply = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "confide.v1.Site".into(),
        })
        .await
        .map_err(|e| CoordinatorError::Transport(e.to_string()))?
        .into_inner();
    Ok(reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

/// `confide status`: the Admin API's Status.
pub async fn admin_status(
    url: &str,
    tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
) -> Result<pb::StatusResponse, CoordinatorError> {
    let mut c = admin_client(url, tls).await?;
    c.status(pb::StatusRequest {})
        .await
        .map(Response::into_inner)
        .map_err(|e| CoordinatorError::Transport(e.to_string()))
}

/// `confide rounds`: the Admin API's history, as records.
pub async fn admin_rounds(
    url: &str,
    tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
) -> Result<Vec<crate::RoundRecord>, CoordinatorError> {
    let mut c = admin_client(url, tls).await?;
    let r = c
        .rounds(pb::RoundsRequest {})
        .await
        .map_err(|e| CoordinatorError::Transport(e.to_string()))?
        .into_inner();
    let opt = |x: f64| if x.is_nan() { None } else { Some(x) };
    Ok(r.rounds
        .into_iter()
        .map(|r| crate::RoundRecord {
            round: r.round,
            kind: r.kind,
            success: r.success,
            message: r.message,
            cohort: r.cohort,
            survivors: r.survivors,
            dropped: r.dropped,
            accuracy: opt(r.accuracy),
            loss: opt(r.loss),
            eval_examples: r.eval_examples,
            model_round: 0,
            duration_secs: r.duration_secs,
            stage_secs: r.stage_secs.into_iter().collect(),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn request_errors_map_to_the_documented_statuses() {
        let cases = [
            (RequestError::UnknownSession, Code::Unauthenticated),
            (
                RequestError::IdentityMismatch {
                    peer: "a".into(),
                    site: "b".into(),
                },
                Code::PermissionDenied,
            ),
            (
                RequestError::MemberMismatch {
                    site: "a".into(),
                    claimed: 2,
                },
                Code::PermissionDenied,
            ),
            (
                RequestError::WrongRound {
                    expected: 2,
                    got: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                RequestError::NotInCohort {
                    site: "a".into(),
                    round: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                RequestError::NotUploading {
                    round: 1,
                    stage: confide_crypto::Stage::ShareKeys,
                },
                Code::FailedPrecondition,
            ),
            (RequestError::AlreadySubmitted(3), Code::AlreadyExists),
            (RequestError::SiteName, Code::InvalidArgument),
            (RequestError::VerifyingKey, Code::InvalidArgument),
            (
                RequestError::ChunkOffset {
                    offset: 1,
                    expected: 0,
                },
                Code::InvalidArgument,
            ),
            (
                RequestError::TooManySites { max_sites: 2 },
                Code::ResourceExhausted,
            ),
            (RequestError::NoModel { round: 1 }, Code::NotFound),
            (RequestError::ShuttingDown, Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e.clone()).code(), code, "{e}");
        }
        let dup: RequestError = confide_crypto::ProtocolError::Duplicate(3).into();
        assert_eq!(Status::from(dup).code(), Code::AlreadyExists);
        let len: RequestError = confide_crypto::ProtocolError::WrongLength {
            expected: 2,
            got: 1,
        }
        .into();
        assert_eq!(Status::from(len).code(), Code::InvalidArgument);
        let stage: RequestError = confide_crypto::ProtocolError::WrongStage {
            expected: confide_crypto::Stage::MaskedInput,
            got: confide_crypto::Stage::AdvertiseKeys,
        }
        .into();
        assert_eq!(Status::from(stage).code(), Code::FailedPrecondition);
    }
}
