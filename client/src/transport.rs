//! The coordinator calls a site makes, behind a small trait, and their gRPC
//! (tonic) implementation.
//!
//! The run loop (`run.rs`) and the round logic (`round.rs`) only see
//! [`Transport`] and [`Connection`], so an in-memory coordinator can drive
//! them in tests; this module and `main.rs` are the only client modules that
//! know tonic. Every call returns [`ClientError`]; a gRPC status becomes
//! [`ClientError::Refused`] with its code, which the reconnect policy reads
//! through [`ClientError::is_transient`] and its companions.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_proto::task_parts::Reassembly;
use confide_proto::tls::{self, TlsConnector};
use confide_proto::v1;
use confide_proto::v1::site_client::SiteClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::config::SiteConfig;
use crate::error::ClientError;
use crate::progress::Transfer;
use crate::revocation::CrlStore;

/// Opens connections to the coordinator; one per attempt of the run loop.
pub(crate) trait Transport: Send {
    /// An open connection.
    type Conn: Connection;

    /// Connects (TCP, TLS and HTTP/2 for gRPC). Failing here is transient.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, ClientError>> + Send;

    /// The coordinator the next connection goes to, for logs.
    fn url(&self) -> String {
        String::new()
    }

    /// The run loop lost the link with `e`: move to the next coordinator if
    /// the failover policy says so ([`crate::coordinators::next_target`]).
    fn failed(&mut self, _e: &ClientError) {}
}

/// One connection's calls, in the order a site uses them. Stage messages
/// carry the session inside the request; `ALREADY_EXISTS` comes back as a
/// refusal for the caller to treat as success (an earlier attempt arrived).
pub(crate) trait Connection: Send {
    /// Registers the site's name and verifying key; returns the session.
    fn join(
        &mut self,
        req: v1::JoinRequest,
    ) -> impl Future<Output = Result<v1::JoinResponse, ClientError>> + Send;

    /// Opens the task stream of `session`.
    fn open_tasks(
        &mut self,
        session: String,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// The next task of the stream opened last; `Ok(None)` when it ended.
    fn next_task(&mut self) -> impl Future<Output = Result<Option<v1::Task>, ClientError>> + Send;

    /// The global model of a round, as the chunks the coordinator sent.
    fn download_model(
        &mut self,
        req: v1::DownloadModelRequest,
    ) -> impl Future<Output = Result<Vec<v1::ModelChunk>, ClientError>> + Send;

    /// Stage 1: the signed key advert.
    fn advertise_keys(
        &mut self,
        req: v1::AdvertiseKeysRequest,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Stage 2: the sealed shares.
    fn share_keys(
        &mut self,
        req: v1::ShareKeysRequest,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Stage 3: the (masked) input vector, in chunks.
    fn submit_masked_input(
        &mut self,
        chunks: Vec<v1::MaskedInputChunk>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Stage 4: the signature on the survivor set.
    fn consistency(
        &mut self,
        req: v1::ConsistencyResponse,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Stage 5: the shares that unmask the sum.
    fn unmask(
        &mut self,
        req: v1::UnmaskResponse,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// This site refuses the round it was announced, and why.
    fn decline(
        &mut self,
        req: v1::DeclineRequest,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// gRPC over HTTP/2, with mutual TLS 1.3 unless the configuration is
/// insecure, to one of the configured coordinators at a time.
pub(crate) struct GrpcTransport {
    targets: Vec<Target>,
    current: usize,
}

/// One coordinator URL and what connecting to it is made from.
struct Target {
    url: String,
    endpoint: Endpoint,
    tls: Option<Tls>,
}

impl Target {
    /// What this attempt's connections are dialled with: the TLS
    /// configuration built now, with the newest CRL.
    fn dialer(&self) -> Result<Dialer, ClientError> {
        Ok(Dialer {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            tls: self.tls.as_ref().map(Tls::connector).transpose()?,
        })
    }
}

/// Dials one coordinator. The connections of one attempt share its TLS
/// configuration, and with it rustls's session cache: an upload's
/// connection resumes the session of the long-lived one, while the
/// coordinator's cache still holds it, instead of checking both
/// certificates again (the coordinator still checks the site's
/// certificate against its CRL on every call).
#[derive(Clone)]
struct Dialer {
    url: String,
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
}

impl Dialer {
    /// A new HTTP/2 connection (TCP, then TLS).
    async fn channel(&self) -> Result<Channel, ClientError> {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
            None => self.endpoint.connect().await,
        }
        .map_err(|e| ClientError::Connect {
            url: self.url.clone(),
            reason: error_chain(&e),
        })
    }
}

/// The site's client with the message limits every call uses.
fn site_client(channel: Channel) -> SiteClient<Channel> {
    SiteClient::new(channel)
        .max_decoding_message_size(4 * confide_proto::CHUNK_BYTES)
        .max_encoding_message_size(4 * confide_proto::CHUNK_BYTES)
}

/// What each TLS connection is made from: the files' contents (read once)
/// and the CRL store, whose newest CRL the coordinator's certificate is
/// checked against at every connect.
struct Tls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    domain: String,
    crls: Option<Arc<CrlStore>>,
}

impl Tls {
    fn connector(&self) -> Result<TlsConnector, ClientError> {
        let crls = match &self.crls {
            Some(store) => {
                store.refresh_file();
                store.rustls_crls()
            }
            None => Vec::new(),
        };
        let tls_err = |e: tls::TlsError| ClientError::Config(format!("TLS: {e}"));
        let config =
            tls::client_config(&self.ca, Some((&self.cert, &self.key)), crls).map_err(tls_err)?;
        TlsConnector::new(
            Arc::new(config),
            &self.domain,
            Some(TCP_KEEPALIVE),
            CONNECT_TIMEOUT,
        )
        .map_err(tls_err)
    }
}

impl GrpcTransport {
    /// Checks the URLs and reads the TLS files now, so a bad configuration
    /// fails before the first connection attempt instead of being retried.
    pub(crate) fn new(cfg: &SiteConfig, crls: Option<Arc<CrlStore>>) -> Result<Self, ClientError> {
        let urls = crate::coordinators::parse_urls(&cfg.coordinator, cfg.insecure)?;
        let files = cfg.tls_in_use();
        let material = match files {
            // A key file other users can read is no longer the site's alone.
            Some(f) => {
                confide_proto::keys::check_private_file(&f.key)
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                Some((read_file(&f.ca)?, read_file(&f.cert)?, read_file(&f.key)?))
            }
            None => None,
        };
        let mut targets = Vec::with_capacity(urls.len());
        for url in urls {
            let tls = match (&material, files) {
                (Some((ca, cert, key)), Some(f)) => Some(Tls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    domain: server_name(&f.domain, &url)?,
                    crls: crls.clone(),
                }),
                _ => None,
            };
            if let Some(tls) = &tls {
                // Refuse unusable material now rather than at every reconnect.
                tls.connector()?;
            }
            targets.push(Target {
                endpoint: endpoint(&url, tls.is_some())?,
                url,
                tls,
            });
        }
        Ok(GrpcTransport {
            targets,
            current: 0,
        })
    }
}

/// The name expected in coordinator `url`'s certificate: the configured one
/// for every URL, or (empty) the URL's own host.
fn server_name(configured: &str, url: &str) -> Result<String, ClientError> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    crate::coordinators::host(url).ok_or_else(|| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: "no host to expect in the coordinator's certificate".into(),
    })
}

/// Connecting (TCP and the TLS handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive probes after this much idleness.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// The health service name the coordinator marks serving while it is active.
const SITE_SERVICE: &str = "confide.v1.Site";

/// The one place the client builds an endpoint: keep-alives so a dead link
/// is noticed while a site waits for its next task and, under mTLS, the URL
/// as `http://` (the TLS 1.3 connector of each connection does the TLS).
fn endpoint(url: &str, tls: bool) -> Result<Endpoint, ClientError> {
    let target = if tls {
        tls::http_uri(url)
    } else {
        url.to_string()
    };
    Ok(Endpoint::from_shared(target)
        .map_err(|e| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: error_chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// Asks the standard gRPC health service whether `url` serves the site API.
/// A standby answers `NOT_SERVING`; a coordinator without the health service
/// (`UNIMPLEMENTED`, or any other refusal) is taken at its word by the calls
/// that follow.
async fn check_health(channel: Channel, url: &str) -> Result<(), ClientError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let call = client.check(tonic_health::pb::HealthCheckRequest {
        service: SITE_SERVICE.into(),
    });
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, call)
        .await
        .map_err(|_| ClientError::Connect {
            url: url.to_string(),
            reason: "no health answer in time".into(),
        })?;
    match answer {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(_) => Err(ClientError::NotServing {
            url: url.to_string(),
        }),
        // The link or the server is failing: as good as not serving.
        Err(s) if ClientError::refused("Health", s.clone()).is_transient() => {
            tracing::debug!(url, status = %s, "health check failed");
            Err(ClientError::NotServing {
                url: url.to_string(),
            })
        }
        // Advisory only: the calls that follow say what they will.
        Err(s) => {
            tracing::debug!(url, status = %s, "no usable health answer");
            Ok(())
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::CertFile {
        path: path.to_path_buf(),
        source,
    })
}

/// A poisoned lock only means an update panicked; the value is still usable.
pub(crate) fn lock<T>(t: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error with its causes, for messages an operator reads.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Layers often repeat their cause's text; keep each piece once.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

impl Transport for GrpcTransport {
    type Conn = GrpcConnection;

    async fn connect(&mut self) -> Result<GrpcConnection, ClientError> {
        let several = self.targets.len() > 1;
        let Some(t) = self.targets.get(self.current) else {
            return Err(ClientError::Config("no coordinator URL".into()));
        };
        let dialer = t.dialer()?;
        let channel = dialer.channel().await?;
        if several {
            // Only with a standby to fail over to: a single URL behaves as
            // before (its calls answer UNAVAILABLE while it does not serve).
            check_health(channel.clone(), &t.url).await?;
        }
        Ok(GrpcConnection {
            client: site_client(channel),
            uploads: dialer,
            tasks: None,
            parts: Reassembly::default(),
        })
    }

    fn url(&self) -> String {
        self.targets
            .get(self.current)
            .map(|t| t.url.clone())
            .unwrap_or_default()
    }

    fn failed(&mut self, e: &ClientError) {
        let failure = crate::coordinators::Failure::of(e);
        let next = crate::coordinators::next_target(self.targets.len(), self.current, failure);
        if next != self.current {
            let from = self.url();
            self.current = next;
            tracing::warn!(from = %from, to = %self.url(), error = %e, "switching to the next coordinator");
        }
    }
}

/// A tonic client and the task stream opened on it.
pub(crate) struct GrpcConnection {
    client: SiteClient<Channel>,
    /// Where each masked upload opens a connection of its own, closed when
    /// the upload ends. HTTP/2 keeps a connection's receive queue at the
    /// largest it has been, and an upload fills the whole receive window
    /// (`limits.receive_window_kib`): on the long-lived connection that
    /// memory would stay at the coordinator for every site.
    uploads: Dialer,
    tasks: Option<Streaming<v1::Task>>,
    /// The open stream's large task in parts, so far.
    parts: Reassembly,
}

impl Connection for GrpcConnection {
    async fn join(&mut self, req: v1::JoinRequest) -> Result<v1::JoinResponse, ClientError> {
        self.client
            .join(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::refused("Join", s))
    }

    async fn open_tasks(&mut self, session: String) -> Result<(), ClientError> {
        let stream = self
            .client
            .tasks(v1::TasksRequest { session })
            .await
            .map_err(|s| ClientError::refused("Tasks", s))?
            .into_inner();
        self.tasks = Some(stream);
        // A new stream sends every task from its start.
        self.parts = Reassembly::default();
        Ok(())
    }

    async fn next_task(&mut self) -> Result<Option<v1::Task>, ClientError> {
        let Some(stream) = self.tasks.as_mut() else {
            return Ok(None);
        };
        loop {
            let Some(item) = stream
                .message()
                .await
                .map_err(|s| ClientError::refused("Tasks", s))?
            else {
                return Ok(None);
            };
            if let Some(task) = self.parts.push(item)? {
                return Ok(Some(task));
            }
        }
    }

    async fn download_model(
        &mut self,
        req: v1::DownloadModelRequest,
    ) -> Result<Vec<v1::ModelChunk>, ClientError> {
        let refused = |s| ClientError::refused("DownloadModel", s);
        let mut shown = Transfer::start(format!("round {} model download", req.round), 0);
        let mut stream = self
            .client
            .download_model(req)
            .await
            .map_err(refused)?
            .into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(refused)? {
            if chunks.is_empty() {
                // Shown only; the assembler checks the coordinator's figures.
                shown.set_total(chunk.total_len);
            }
            shown.advance(chunk.data.len() as u64);
            chunks.push(chunk);
        }
        shown.finish();
        Ok(chunks)
    }

    async fn advertise_keys(&mut self, req: v1::AdvertiseKeysRequest) -> Result<(), ClientError> {
        self.client
            .advertise_keys(req)
            .await
            .map(drop)
            .map_err(|s| ClientError::refused("AdvertiseKeys", s))
    }

    async fn share_keys(&mut self, req: v1::ShareKeysRequest) -> Result<(), ClientError> {
        self.client
            .share_keys(req)
            .await
            .map(drop)
            .map_err(|s| ClientError::refused("ShareKeys", s))
    }

    async fn submit_masked_input(
        &mut self,
        chunks: Vec<v1::MaskedInputChunk>,
    ) -> Result<(), ClientError> {
        let total = chunks.iter().map(|c| c.data.len() as u64).sum();
        let round = chunks.first().map(|c| c.round).unwrap_or_default();
        let shown = Arc::new(Mutex::new(Transfer::start(
            format!("round {round} masked upload"),
            total,
        )));
        // Counted as tonic takes each chunk to send it (flow control paces that).
        let counter = shown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::MaskedInputChunk>(2);
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |c| {
            lock(&counter).advance(c.data.len() as u64);
            c
        });
        let mut chunks = chunks.into_iter();
        // The header alone first: the data waits for the coordinator's
        // `ready`, so no upload sits unread in its buffers while it waits
        // for a slot.
        if let Some(header) = chunks.next() {
            // The receiver is alive: it is in `stream`, not yet sent.
            let _ = tx.send(header).await;
        }
        // Dropped at return, which closes the connection.
        let mut client = site_client(self.uploads.channel().await?);
        let mut replies = client
            .submit_masked_input(stream)
            .await
            .map_err(|s| ClientError::refused(UPLOAD_CALL, s))?
            .into_inner();
        expect_reply(&mut replies, "ready").await?;
        for c in chunks {
            // A closed request stream means the coordinator ended the call:
            // its status follows on the replies.
            if tx.send(c).await.is_err() {
                break;
            }
        }
        drop(tx);
        expect_reply(&mut replies, "accepted").await?;
        lock(&shown).finish();
        Ok(())
    }

    async fn consistency(&mut self, req: v1::ConsistencyResponse) -> Result<(), ClientError> {
        self.client
            .consistency(req)
            .await
            .map(drop)
            .map_err(|s| ClientError::refused("Consistency", s))
    }

    async fn unmask(&mut self, req: v1::UnmaskResponse) -> Result<(), ClientError> {
        self.client
            .unmask(req)
            .await
            .map(drop)
            .map_err(|s| ClientError::refused("Unmask", s))
    }

    async fn decline(&mut self, req: v1::DeclineRequest) -> Result<(), ClientError> {
        self.client
            .decline(req)
            .await
            .map(drop)
            .map_err(|s| ClientError::refused("Decline", s))
    }
}

/// The call named in an upload's errors.
const UPLOAD_CALL: &str = "SubmitMaskedInput";

/// The next reply on a masked-input stream, which must be `want`; the
/// coordinator's status if it ended the call instead.
async fn expect_reply(
    replies: &mut Streaming<v1::UploadReply>,
    want: &'static str,
) -> Result<(), ClientError> {
    use v1::upload_reply::Kind;
    let refused = |s| ClientError::refused(UPLOAD_CALL, s);
    let got = match replies.message().await.map_err(refused)? {
        Some(v1::UploadReply {
            kind: Some(Kind::Ready(_)),
        }) => "ready",
        Some(v1::UploadReply {
            kind: Some(Kind::Accepted(_)),
        }) => "accepted",
        Some(v1::UploadReply { kind: None }) => "an empty reply",
        None => "the end of the stream",
    };
    if got == want {
        return Ok(());
    }
    Err(refused(tonic::Status::unavailable(format!(
        "the coordinator sent {got} where the upload expected {want}"
    ))))
}

#[cfg(test)]
mod tests;
