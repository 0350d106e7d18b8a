//! Masked-input uploads as the tests send them: all at once (a careless
//! client) or as the real site does, data only after `ready`.

use confide_proto::v1 as pb;
use pb::site_client::SiteClient;
use tonic::transport::Channel;

use crate::BoxError;

/// Sends every chunk of an upload at once, without waiting for the
/// coordinator's `ready` (as a careless client would), and reads the replies
/// to the end: `Ok` once the vector is accepted, else the coordinator's status.
pub async fn upload(
    client: &mut SiteClient<Channel>,
    chunks: Vec<pb::MaskedInputChunk>,
) -> Result<(), tonic::Status> {
    use pb::upload_reply::Kind;
    let mut replies = client
        .submit_masked_input(tokio_stream::iter(chunks))
        .await?
        .into_inner();
    let mut ready = false;
    while let Some(r) = replies.message().await? {
        match r.kind {
            Some(Kind::Ready(_)) if !ready => ready = true,
            Some(Kind::Accepted(_)) if ready => return Ok(()),
            other => {
                return Err(tonic::Status::internal(format!(
                    "unexpected upload reply {other:?}"
                )));
            }
        }
    }
    Err(tonic::Status::internal(
        "upload stream ended without acceptance",
    ))
}

/// An upload sent as the real site sends it: the header, then the data
/// only after the coordinator's `ready`.
pub struct StagedUpload {
    tx: tokio::sync::mpsc::Sender<pb::MaskedInputChunk>,
    replies: tonic::Streaming<pb::UploadReply>,
    data: Vec<pb::MaskedInputChunk>,
}

impl StagedUpload {
    /// Opens the stream with the header (the first of `chunks`) alone.
    pub async fn open(
        client: &mut SiteClient<Channel>,
        chunks: Vec<pb::MaskedInputChunk>,
    ) -> Result<Self, BoxError> {
        let mut chunks = chunks.into_iter();
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        tx.send(chunks.next().ok_or("no header chunk")?).await?;
        let replies = client
            .submit_masked_input(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(StagedUpload {
            tx,
            replies,
            data: chunks.collect(),
        })
    }

    /// The next reply: `Ok(true)` for `ready`, `Ok(false)` for `accepted`.
    pub async fn reply(&mut self) -> Result<bool, BoxError> {
        next_reply(&mut self.replies).await
    }

    /// Sends the data, closes the request stream and waits for `accepted`.
    pub async fn finish(self) -> Result<(), BoxError> {
        let StagedUpload {
            tx,
            mut replies,
            data,
        } = self;
        for c in data {
            tx.send(c).await?;
        }
        drop(tx);
        if next_reply(&mut replies).await? {
            return Err("a second ready where accepted was expected".into());
        }
        Ok(())
    }
}

async fn next_reply(replies: &mut tonic::Streaming<pb::UploadReply>) -> Result<bool, BoxError> {
    use pb::upload_reply::Kind;
    match replies.message().await?.and_then(|r| r.kind) {
        Some(Kind::Ready(_)) => Ok(true),
        Some(Kind::Accepted(_)) => Ok(false),
        None => Err("the upload stream ended without a reply".into()),
    }
}
