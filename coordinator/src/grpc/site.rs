//! The `Site` service: thin handlers that admit the peer, validate and
//! convert the request, call the [`Federation`](crate::Federation) and map
//! its error to a status. Round logic lives in the federation, admission
//! rules in [`access`](crate::access).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use confide_proto::convert;
use confide_proto::v1 as pb;
use pb::site_server::Site;

use super::{BoxStream, Handlers};
use crate::access::{KeyBindingRefusal, check_join_key};
use crate::error::RequestError;
use crate::federation::{PendingUpload, Upload};
use crate::metrics::JoinRefusal;

/// A refused Join: the status for the peer, the reason for the metrics.
type Refused = (JoinRefusal, Status);

impl Handlers {
    /// The per-identity rate limit of a Site call made with `session`: the
    /// certificate name under mTLS, else the session's site. Without TLS an
    /// unknown session has no identity; the call itself refuses it.
    fn limit(&self, peer: Option<&str>, session: &str) -> Result<(), Status> {
        let site = match peer {
            Some(p) => p.to_string(),
            None => match self.fed.session(session, None) {
                Ok(info) => info.site,
                Err(_) => return Ok(()),
            },
        };
        self.limit_site(site)
    }

    /// Join's checks in order; each refusal carries its reason.
    fn join_checked(&self, req: Request<pb::JoinRequest>) -> Result<pb::JoinResponse, Refused> {
        // Admission first: peers without an admitted certificate must not
        // drain the join bucket that admitted sites rely on.
        let cert = self.admit(&req, false).map_err(|e| {
            let reason = match super::peer_cert(&req) {
                None => JoinRefusal::no_certificate,
                Some(_) => JoinRefusal::certificate_refused,
            };
            (reason, e)
        })?;
        // Per identity first, so one site's retries cannot drain the global
        // bucket; without TLS a joining peer has no identity yet.
        if let Some(c) = &cert {
            self.limit_site(c.name.clone())
                .map_err(|e| (JoinRefusal::site_rate_limit, e))?;
        }
        if !self.joins.try_take(Instant::now()) {
            warn!(remote = ?req.remote_addr(), "join refused: join rate limit");
            return Err((
                JoinRefusal::join_rate_limit,
                Status::resource_exhausted(
                    "too many joins; retry later (limits.join_rate_per_sec)",
                ),
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
            return Err((JoinRefusal::identity_mismatch, e.into()));
        }
        let s = self.fed.settings();
        if let Err(refusal) = check_join_key(
            cert.as_ref(),
            &r.verifying_key,
            s.suite.name(),
            s.secure_aggregation,
        ) {
            let peer = cert.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
            let reason = match refusal {
                KeyBindingRefusal::Mismatch { .. } => {
                    warn!(peer = %peer, "join refused: verifying key differs from the certificate's");
                    JoinRefusal::key_mismatch
                }
                KeyBindingRefusal::Unbound { .. } => {
                    warn!(peer = %peer, "join refused: certificate binds no verifying key");
                    JoinRefusal::key_unbound
                }
            };
            return Err((reason, Status::permission_denied(refusal.to_string())));
        }
        let peer = cert.as_ref().map(|c| c.name.as_str());
        let session = self
            .fed
            .join(&r.site, &r.verifying_key, peer)
            .map_err(|e| {
                let reason = match &e {
                    RequestError::SiteName | RequestError::VerifyingKey => {
                        JoinRefusal::invalid_request
                    }
                    RequestError::TooManySites { .. } => JoinRefusal::too_many_sites,
                    RequestError::IdentityMismatch { .. } => JoinRefusal::identity_mismatch,
                    _ => JoinRefusal::other,
                };
                (reason, Status::from(e))
            })?;
        let s = self.fed.settings();
        Ok(pb::JoinResponse {
            session,
            federation: s.federation.clone(),
            suite: s.suite.name().into(),
            crl: self.crl(),
        })
    }

    fn limit_site(&self, site: String) -> Result<(), Status> {
        if self.rates.try_take(&site, Instant::now()) {
            return Ok(());
        }
        let l = &self.fed.settings().limits;
        Err(RequestError::RateLimited {
            site,
            rate: l.site_rate_per_sec,
            burst: l.site_burst,
        }
        .into())
    }
}

/// Reads the rest of an upload's chunks into `up`: each within `idle_secs`
/// of the previous one, all by the stage deadline. On an error the caller
/// drops `up`, which releases its slot and the member's claim.
async fn receive_chunks<S>(
    stream: &mut S,
    up: &mut Upload,
    session: &str,
    round: u64,
    idle_secs: u32,
) -> Result<(), Status>
where
    S: Stream<Item = Result<pb::MaskedInputChunk, Status>> + Unpin,
{
    let idle = Duration::from_secs(u64::from(idle_secs));
    loop {
        let idle_until = tokio::time::Instant::now() + idle;
        let until = idle_until.min(up.deadline());
        let next = match tokio::time::timeout_at(until, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                let (received, elements) = (up.received(), up.elements());
                return Err(if until < idle_until {
                    RequestError::UploadPastDeadline { received, elements }
                } else {
                    RequestError::UploadStalled {
                        idle_secs,
                        received,
                        elements,
                    }
                }
                .into());
            }
        };
        let Some(c) = next.transpose()? else {
            return Ok(());
        };
        if c.round != round || (!c.session.is_empty() && c.session != session) {
            return Err(Status::invalid_argument(
                "chunks of one stream must share session and round",
            ));
        }
        up.push(c.offset, &c.data)?;
    }
}

type Reply = pb::upload_reply::Kind;

fn reply(kind: Reply) -> pb::UploadReply {
    pb::UploadReply { kind: Some(kind) }
}

impl Handlers {
    /// An upload after its header: waits for a slot, says `ready`, reads the
    /// data into the upload and hands the vector to the sum.
    async fn receive_upload(
        &self,
        pending: PendingUpload,
        first: pb::MaskedInputChunk,
        mut stream: Streaming<pb::MaskedInputChunk>,
        peer: Option<String>,
        replies: &mpsc::Sender<Result<pb::UploadReply, Status>>,
    ) -> Result<(), Status> {
        let gone = || Status::cancelled("the site closed its upload stream");
        // A site that hangs up while it waits gives its claim back at once.
        let mut up = tokio::select! {
            up = self.fed.upload_slot(pending) => up?,
            () = replies.closed() => return Err(gone()),
        };
        replies
            .send(Ok(reply(Reply::Ready(pb::Ack {}))))
            .await
            .map_err(|_| gone())?;
        let (session, round) = (first.session, first.round);
        let idle_secs = self.fed.settings().limits.upload_idle_secs;
        up.push(first.offset, &first.data)?;
        receive_chunks(&mut stream, &mut up, &session, round, idle_secs).await?;
        // The signed masking set travels in the first chunk only.
        self.fed
            .finish_upload(&session, peer.as_deref(), up, first.masking)
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Site for Handlers {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        match self.join_checked(req) {
            Ok(resp) => Ok(Response::new(resp)),
            Err((reason, status)) => {
                self.fed.metrics().join_refused(reason);
                Err(status)
            }
        }
    }

    type TasksStream = BoxStream<pb::Task>;

    async fn tasks(
        &self,
        req: Request<pb::TasksRequest>,
    ) -> Result<Response<Self::TasksStream>, Status> {
        let peer = self.peer(&req)?;
        self.limit(peer.as_deref(), &req.get_ref().session)?;
        // Dropped when the site hangs up: the federation then gives it the
        // reconnect grace before the round stops waiting for it.
        let handlers = self.clone();
        let stream = self
            .fed
            .open_tasks(&req.get_ref().session, peer.as_deref())?
            // Each announcement carries the CRL in force when it is delivered.
            .map(move |mut t| {
                if let Some(pb::task::Kind::RoundStart(rs)) = &mut t.kind {
                    rs.crl = handlers.crl();
                }
                Ok(t)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type DownloadModelStream = BoxStream<pb::ModelChunk>;

    async fn download_model(
        &self,
        req: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        self.limit(peer.as_deref(), &r.session)?;
        let image = self.fed.download(&r.session, peer.as_deref(), r.round)?;
        // A turn is held until the stream is done or dropped: chunks are
        // made as HTTP/2 takes them, so download memory is bounded by the
        // turns, not the sites. A site waiting for a turn holds nothing.
        let turn = self
            .downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        // Offsets in u64 from end to end: chunks are encoded from the f32
        // model as they are sent, so no copy of the file exists.
        let total = image.len();
        let chunk = self.fed.settings().limits.download_chunk_bytes();
        let chunks = total.div_ceil(chunk).max(1);
        let stream = tokio_stream::iter((0..chunks).map(move |i| {
            let _turn = &turn;
            let a = i.saturating_mul(chunk).min(total);
            let b = a.saturating_add(chunk).min(total);
            let data = image
                .range(a, b)
                .map_err(|e| Status::internal(format!("encoding the model: {e}")))?;
            Ok(pb::ModelChunk {
                offset: a,
                data: data.into(),
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
        self.limit(peer.as_deref(), &r.session)?;
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
        self.limit(peer.as_deref(), &session)?;
        self.fed.share_keys(&session, peer.as_deref(), r)?;
        Ok(Response::new(pb::Ack {}))
    }

    type SubmitMaskedInputStream = BoxStream<pb::UploadReply>;

    async fn submit_masked_input(
        &self,
        req: Request<Streaming<pb::MaskedInputChunk>>,
    ) -> Result<Response<Self::SubmitMaskedInputStream>, Status> {
        let peer = self.peer(&req)?;
        let idle_secs = self.fed.settings().limits.upload_idle_secs;
        let mut stream = req.into_inner();
        // No slot is held yet, but a silent stream should not linger either.
        let first = tokio::time::timeout(
            Duration::from_secs(u64::from(idle_secs)),
            stream.message(),
        )
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "upload stalled: no first chunk within {idle_secs} s (limits.upload_idle_secs)"
            ))
        })??
        .ok_or_else(|| Status::invalid_argument("empty masked-input stream"))?;
        // One token per stream, not per chunk.
        self.limit(peer.as_deref(), &first.session)?;
        // Refused here, before any reply, if the header is wrong.
        let pending = self.fed.claim_upload(
            &first.session,
            peer.as_deref(),
            first.round,
            first.total_len,
        )?;
        let (replies, rx) = tokio::sync::mpsc::channel(2);
        let handlers = self.clone();
        tokio::spawn(async move {
            let done = handlers
                .receive_upload(pending, first, stream, peer, &replies)
                .await;
            let _ = replies
                .send(done.map(|()| reply(Reply::Accepted(pb::Ack {}))))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn consistency(
        &self,
        req: Request<pb::ConsistencyResponse>,
    ) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let session = r.session.clone();
        self.limit(peer.as_deref(), &session)?;
        self.fed.consistency(&session, peer.as_deref(), r)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn unmask(&self, req: Request<pb::UnmaskResponse>) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let session = r.session.clone();
        self.limit(peer.as_deref(), &session)?;
        self.fed.unmask(&session, peer.as_deref(), r)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn decline(&self, req: Request<pb::DeclineRequest>) -> Result<Response<pb::Ack>, Status> {
        // Authenticated and rate-limited like every stage message: only a
        // cohort member's own session can take it out of the round.
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        self.limit(peer.as_deref(), &r.session)?;
        let d = convert::decline_from_proto(&r);
        self.fed.decline(&r.session, peer.as_deref(), &d)?;
        Ok(Response::new(pb::Ack {}))
    }
}

#[cfg(test)]
mod tests;
