//! The `Site` service: thin handlers that admit the peer, validate and
//! convert the request, call the [`Federation`](crate::Federation) and map
//! its error to a status. Round logic lives in the federation, admission
//! rules in [`access`](crate::access).

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use confide_proto::v1 as pb;
use pb::site_server::Site;

use super::{BoxStream, Handlers};
use crate::access::{KeyBindingRefusal, check_join_key};
use crate::error::RequestError;

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
        let s = self.fed.settings();
        if let Err(refusal) = check_join_key(
            cert.as_ref(),
            &r.verifying_key,
            s.suite.name(),
            s.secure_aggregation,
        ) {
            let peer = cert.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
            match refusal {
                KeyBindingRefusal::Mismatch { .. } => {
                    warn!(peer = %peer, "join refused: verifying key differs from the certificate's")
                }
                KeyBindingRefusal::Unbound { .. } => {
                    warn!(peer = %peer, "join refused: certificate binds no verifying key")
                }
            }
            return Err(Status::permission_denied(refusal.to_string()));
        }
        let peer = cert.as_ref().map(|c| c.name.as_str());
        let session = self.fed.join(&r.site, &r.verifying_key, peer)?;
        let s = self.fed.settings();
        Ok(Response::new(pb::JoinResponse {
            session,
            federation: s.federation.clone(),
            suite: s.suite.name().into(),
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
        // The signed masking set travels in the first chunk only.
        let masking = first.masking.clone();
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
        self.fed
            .finish_upload(&session, peer.as_deref(), up, masking)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn consistency(
        &self,
        req: Request<pb::ConsistencyResponse>,
    ) -> Result<Response<pb::Ack>, Status> {
        let peer = self.peer(&req)?;
        let r = req.into_inner();
        let session = r.session.clone();
        self.fed.consistency(&session, peer.as_deref(), r)?;
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
