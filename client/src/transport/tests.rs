//! The masked-input upload as the site sends it, against a scripted
//! coordinator: the data waits for `ready`, a refusal after it is the
//! coordinator's own status, and each upload has a connection of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_proto::v1::site_server::{Site, SiteServer};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::*;

type Replies =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::UploadReply, Status>> + Send>>;
type Tasks = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Task, Status>> + Send>>;
type Chunks =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

/// What the scripted coordinator saw of one upload.
#[derive(Default, Debug)]
struct Seen {
    /// Chunks that arrived before `ready` was sent, the header included.
    before_ready: usize,
    /// Data bytes after `ready`.
    after_ready: usize,
}

/// Answers an upload with `ready` after a pause (as if a slot were busy),
/// then accepts it, or refuses it with `refuse` once the data is in.
struct Scripted {
    seen: Arc<Mutex<Seen>>,
    refuse: Option<Status>,
}

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this script"))
}

fn reply(kind: v1::upload_reply::Kind) -> Result<v1::UploadReply, Status> {
    Ok(v1::UploadReply { kind: Some(kind) })
}

#[tonic::async_trait]
impl Site for Scripted {
    async fn join(
        &self,
        _: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        unused()
    }

    type TasksStream = Tasks;

    async fn tasks(&self, _: Request<v1::TasksRequest>) -> Result<Response<Tasks>, Status> {
        unused()
    }

    type DownloadModelStream = Chunks;

    async fn download_model(
        &self,
        _: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Chunks>, Status> {
        unused()
    }

    async fn advertise_keys(
        &self,
        _: Request<v1::AdvertiseKeysRequest>,
    ) -> Result<Response<v1::Ack>, Status> {
        unused()
    }

    async fn share_keys(
        &self,
        _: Request<v1::ShareKeysRequest>,
    ) -> Result<Response<v1::Ack>, Status> {
        unused()
    }

    type SubmitMaskedInputStream = Replies;

    async fn submit_masked_input(
        &self,
        req: Request<tonic::Streaming<v1::MaskedInputChunk>>,
    ) -> Result<Response<Replies>, Status> {
        let mut chunks = req.into_inner();
        let (seen, refuse) = (self.seen.clone(), self.refuse.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // The slot is "busy" for 300 ms: whatever the site sends in that
            // time arrives before `ready`.
            let busy = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(busy);
            loop {
                tokio::select! {
                    () = &mut busy => break,
                    c = chunks.next() => match c {
                        Some(Ok(_)) => lock(&seen).before_ready += 1,
                        _ => return,
                    },
                }
            }
            let _ = tx
                .send(reply(v1::upload_reply::Kind::Ready(v1::Ack {})))
                .await;
            while let Some(Ok(c)) = chunks.next().await {
                lock(&seen).after_ready += c.data.len();
            }
            let end = match refuse {
                Some(s) => Err(s),
                None => reply(v1::upload_reply::Kind::Accepted(v1::Ack {})),
            };
            let _ = tx.send(end).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn consistency(
        &self,
        _: Request<v1::ConsistencyResponse>,
    ) -> Result<Response<v1::Ack>, Status> {
        unused()
    }

    async fn unmask(&self, _: Request<v1::UnmaskResponse>) -> Result<Response<v1::Ack>, Status> {
        unused()
    }

    async fn decline(&self, _: Request<v1::DeclineRequest>) -> Result<Response<v1::Ack>, Status> {
        unused()
    }
}

/// TCP connections through the relay in front of the scripted coordinator.
#[derive(Default, Debug)]
struct Links {
    opened: usize,
    open: usize,
}

/// Serves `script` on a loopback port behind a relay that counts the
/// connections; a connection to it, and the count.
async fn connect(
    script: Scripted,
) -> Result<(GrpcConnection, Arc<Mutex<Links>>), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(SiteServer::new(script))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", relay.local_addr()?);
    let links = Arc::new(Mutex::new(Links::default()));
    let counted = links.clone();
    tokio::spawn(async move {
        while let Ok((mut from, _)) = relay.accept().await {
            let Ok(mut to) = tokio::net::TcpStream::connect(server_addr).await else {
                return;
            };
            lock(&counted).opened += 1;
            lock(&counted).open += 1;
            let counted = counted.clone();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                lock(&counted).open -= 1;
            });
        }
    });
    let dialer = Dialer {
        endpoint: endpoint(&url, false)?,
        url,
        tls: None,
    };
    let conn = GrpcConnection {
        client: site_client(dialer.channel().await?),
        uploads: dialer,
        tasks: None,
        parts: Reassembly::default(),
    };
    Ok((conn, links))
}

/// A header and `n` data chunks of 1000 bytes.
fn upload(n: usize) -> Vec<v1::MaskedInputChunk> {
    let header = v1::MaskedInputChunk {
        session: "s".into(),
        round: 1,
        total_len: n as u64 * 1000,
        ..Default::default()
    };
    let data = (0..n).map(|i| v1::MaskedInputChunk {
        session: "s".into(),
        round: 1,
        offset: i as u64 * 1000,
        total_len: n as u64 * 1000,
        data: vec![7u8; 1000].into(),
        masking: None,
    });
    std::iter::once(header).chain(data).collect()
}

#[tokio::test]
async fn the_data_waits_for_the_coordinators_ready() -> Result<(), Box<dyn std::error::Error>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut conn, _) = connect(Scripted {
        seen: seen.clone(),
        refuse: None,
    })
    .await?;
    conn.submit_masked_input(upload(20)).await?;
    let seen = lock(&seen);
    assert_eq!(
        seen.before_ready, 1,
        "only the header before ready: {seen:?}"
    );
    assert_eq!(seen.after_ready, 20_000, "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_refusal_after_ready_is_the_coordinators_status() -> Result<(), Box<dyn std::error::Error>>
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut conn, _) = connect(Scripted {
        seen,
        refuse: Some(Status::invalid_argument("chunk offset 5, expected 0")),
    })
    .await?;
    let e = conn
        .submit_masked_input(upload(3))
        .await
        .err()
        .ok_or("the upload must be refused")?;
    match e {
        ClientError::Refused {
            call,
            code,
            message,
        } => {
            assert_eq!(call, "SubmitMaskedInput");
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.contains("chunk offset"), "{message}");
        }
        other => return Err(format!("expected a refusal, got {other}").into()),
    }
    Ok(())
}

#[tokio::test]
async fn each_upload_has_a_connection_of_its_own_closed_after_it()
-> Result<(), Box<dyn std::error::Error>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut conn, links) = connect(Scripted {
        seen: seen.clone(),
        refuse: None,
    })
    .await?;
    for _ in 0..2 {
        conn.submit_masked_input(upload(4)).await?;
    }
    assert_eq!(lock(&seen).after_ready, 8_000);
    // The relay sees the close a moment after the call returns.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = {
            let l = lock(&links);
            (l.opened, l.open)
        };
        if now == (3, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "one long-lived connection and two closed upload connections expected, \
             got (opened, open) = {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
