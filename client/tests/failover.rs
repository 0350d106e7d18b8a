//! Failover between coordinator URLs (`--coordinator URL1,URL2,…`): the site
//! skips a closed port and a standby (health NOT_SERVING, every call
//! UNAVAILABLE "standby coordinator …") and joins the one that serves.
//! The coordinators here are small tonic servers on loopback: the real one
//! lives in `confide-coordinator`, which this crate does not depend on.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use confide_client::{ClientError, SiteConfig, run_site};
use confide_proto::v1;
use confide_proto::v1::site_server::{Site, SiteServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type Tasks = Pin<Box<dyn Stream<Item = Result<v1::Task, Status>> + Send>>;
type Chunks = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;
type Replies = Pin<Box<dyn Stream<Item = Result<v1::UploadReply, Status>> + Send>>;

/// A coordinator that is active (Join, then Done) or a standby.
#[derive(Clone)]
struct Fake {
    active: bool,
    /// Calls it received, of any kind.
    calls: Arc<AtomicUsize>,
}

impl Fake {
    fn gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.active {
            Ok(())
        } else {
            Err(Status::unavailable(
                "standby coordinator: another coordinator holds the lease",
            ))
        }
    }
}

#[tonic::async_trait]
impl Site for Fake {
    async fn join(
        &self,
        r: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        self.gate()?;
        assert_eq!(r.get_ref().site, "site-a");
        Ok(Response::new(v1::JoinResponse {
            session: "session-1".into(),
            federation: "f".into(),
            suite: "intl".into(),
            crl: Vec::new(),
        }))
    }

    type TasksStream = Tasks;

    async fn tasks(&self, r: Request<v1::TasksRequest>) -> Result<Response<Tasks>, Status> {
        self.gate()?;
        if r.get_ref().session != "session-1" {
            return Err(Status::unauthenticated("unknown session"));
        }
        let done = v1::Task {
            kind: Some(v1::task::Kind::Done(v1::FederationDone { rounds: 0 })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(done)]))))
    }

    type DownloadModelStream = Chunks;

    async fn download_model(
        &self,
        _: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Chunks>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    async fn advertise_keys(
        &self,
        _: Request<v1::AdvertiseKeysRequest>,
    ) -> Result<Response<v1::Ack>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    async fn share_keys(
        &self,
        _: Request<v1::ShareKeysRequest>,
    ) -> Result<Response<v1::Ack>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    type SubmitMaskedInputStream = Replies;

    async fn submit_masked_input(
        &self,
        _: Request<Streaming<v1::MaskedInputChunk>>,
    ) -> Result<Response<Replies>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    async fn consistency(
        &self,
        _: Request<v1::ConsistencyResponse>,
    ) -> Result<Response<v1::Ack>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    async fn unmask(&self, _: Request<v1::UnmaskResponse>) -> Result<Response<v1::Ack>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }

    async fn decline(&self, _: Request<v1::DeclineRequest>) -> Result<Response<v1::Ack>, Status> {
        self.gate()?;
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `fake` on a loopback port (with the health service unless
/// `health` is false); returns its URL and its call counter.
async fn serve(
    active: bool,
    health: bool,
) -> Result<(String, Arc<AtomicUsize>), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let fake = Fake {
        active,
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let calls = fake.calls.clone();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    if active {
        reporter.set_serving::<SiteServer<Fake>>().await;
    } else {
        reporter.set_not_serving::<SiteServer<Fake>>().await;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder().add_service(SiteServer::new(fake));
    let router = if health {
        router.add_service(health_service)
    } else {
        router
    };
    tokio::spawn(router.serve_with_incoming(incoming));
    Ok((url, calls))
}

/// A loopback port nobody listens on.
fn closed_port() -> Result<String, std::io::Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(format!("http://{}", l.local_addr()?))
}

fn csv() -> Result<tempfile::NamedTempFile, std::io::Error> {
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(f, "a,b,y")?;
    for i in 0..20 {
        writeln!(f, "{},{},{}", i, 20 - i, i % 2)?;
    }
    Ok(f)
}

fn config(urls: &[&str], data: &std::path::Path) -> SiteConfig {
    let mut cfg = SiteConfig::new(urls.join(","), "site-a", data, "y");
    cfg.insecure = true;
    cfg.max_reconnect = Duration::from_secs(20);
    cfg
}

#[tokio::test]
async fn joins_the_serving_coordinator_past_a_closed_port_and_a_standby()
-> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let dead = closed_port()?;
    let (standby, standby_calls) = serve(false, true).await?;
    let (active, active_calls) = serve(true, true).await?;
    let cfg = config(&[&dead, &standby, &active], data.path());
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_site(cfg, std::future::pending()),
    )
    .await??;
    assert!(!report.vanished);
    // Join and Tasks at the active one; the standby said NOT_SERVING on the
    // health service, so the site never called it.
    assert_eq!(active_calls.load(Ordering::SeqCst), 2);
    assert_eq!(standby_calls.load(Ordering::SeqCst), 0);
    Ok(())
}

/// A standby without the health service: its UNAVAILABLE answer to Join is
/// enough to move on, whichever position it has in the list.
#[tokio::test]
async fn an_unavailable_answer_moves_on_too() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let (standby, standby_calls) = serve(false, false).await?;
    let (active, active_calls) = serve(true, false).await?;
    let cfg = config(&[&standby, &active], data.path());
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_site(cfg, std::future::pending()),
    )
    .await??;
    assert!(!report.vanished);
    assert_eq!(standby_calls.load(Ordering::SeqCst), 1, "one Join, refused");
    assert_eq!(active_calls.load(Ordering::SeqCst), 2);
    Ok(())
}

/// With no coordinator serving, the give-up budget spans every URL and the
/// error names them all.
#[tokio::test]
async fn gives_up_on_all_urls_together() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let (standby, standby_calls) = serve(false, true).await?;
    let dead = closed_port()?;
    let mut cfg = config(&[&standby, &dead], data.path());
    cfg.max_reconnect = Duration::from_millis(800);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        run_site(cfg, std::future::pending()),
    )
    .await?;
    match r {
        Err(ClientError::GaveUp { url, .. }) => {
            assert!(url.contains(&standby) && url.contains(&dead), "{url}")
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert_eq!(standby_calls.load(Ordering::SeqCst), 0, "health only");
    Ok(())
}

/// Bad lists are refused before any connection.
#[tokio::test]
async fn bad_url_lists_are_refused_up_front() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    for (list, want) in [
        ("http://127.0.0.1:1,,http://127.0.0.1:2", "empty"),
        ("http://127.0.0.1:1,http://127.0.0.1:1", "twice"),
        ("http://127.0.0.1:1,ftp://127.0.0.1:2", "expected https://"),
    ] {
        let r = run_site(config(&[list], data.path()), std::future::pending()).await;
        assert!(
            matches!(&r, Err(ClientError::InvalidUrl { reason, .. }) if reason.contains(want)),
            "{list}: {r:?}"
        );
    }
    Ok(())
}
