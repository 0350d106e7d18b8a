//! Transport and identity security over real mTLS on loopback, and the
//! neighbours' certificate checks against a lying coordinator.
//!
//! - transport: TLS 1.3 only (a TLS 1.2 client is refused at the handshake
//!   and the listener keeps serving);
//! - admission: no certificate, another CA's certificate, a certificate
//!   outside the allow-list, a certificate revoked (signed CRL) while the
//!   coordinator runs — refused on the open connection and at the handshake, one site's certificate acting as another, a Join key that is not
//!   the certificate's, non-operator and revoked operator certificates on the
//!   Admin API, the join-rate limit, connections over the per-site limit;
//! - key binding: a coordinator that substitutes a key, relays a wrong
//!   signature, a foreign-CA certificate or another site's certificate is
//!   caught by the neighbour, which leaves that peer out (no share reaches
//!   it) and names it in `rejected()`; an honest round over the same
//!   verifier, with masking sets and survivor signatures relayed with
//!   certificates too, completes; an unmask request without a quorum of
//!   signatures, or for a set the site did not sign, is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confide_client::config::load_signing_key;
use confide_client::identity::{CertificateVerifier, identity_blob};
use confide_coordinator::certs;
use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{
    CoordinatorOutput, RelayedSignature, SiteOutput, SitePolicy, UnmaskRequest,
};
use confide_crypto::sim::{Simulation, Stepper};
use confide_crypto::suite::SigningKey;
use confide_crypto::{RoundConfig, SiteMachine, Suite};
use confide_proto::v1 as pb;
use confide_proto::v1::admin_client::AdminClient;
use confide_proto::v1::site_client::SiteClient;
use confide_tests::{BoxError, Coordinator, settings};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A federation CA with sites a, b, c (allowed), outsider (not allowed), an
/// operator, and a second CA that also issued an "a".
struct Pki {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    other: PathBuf,
}

impl Pki {
    fn new() -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("certs");
        certs::init(
            &dir,
            "sec",
            &[],
            &confide_coordinator::ca_key::CaKeySource::File,
        )?;
        for s in ["a", "b", "c", "outsider"] {
            certs::issue_site(&dir, s, Suite::Intl)?;
        }
        certs::issue_operator(&dir, "ops")?;
        let other = tmp.path().join("other-ca");
        certs::init(
            &other,
            "evil",
            &[],
            &confide_coordinator::ca_key::CaKeySource::File,
        )?;
        certs::issue_site(&other, "a", Suite::Intl)?;
        Ok(Pki {
            _tmp: tmp,
            dir,
            other,
        })
    }

    /// One round's settings with mTLS on this CA's certificates.
    fn mtls_settings(&self) -> confide_coordinator::settings::Settings {
        let mut s = settings(1, Suite::Intl);
        s.tls.insecure = false;
        s.tls.certs_dir = Some(self.dir.clone());
        s
    }

    fn site(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.join("sites");
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }

    fn vk(&self, name: &str) -> Result<Vec<u8>, BoxError> {
        let k = load_signing_key(&self.dir.join(format!("sites/{name}.signing.toml")))?;
        Ok(k.verifying_key()?.as_bytes().to_vec())
    }
}

async fn channel(
    url: &str,
    ca: &Path,
    id: Option<(PathBuf, PathBuf)>,
) -> Result<Channel, BoxError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    if let Some((cert, key)) = id {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

async fn join(ch: Channel, site: &str, vk: Vec<u8>) -> Result<String, tonic::Status> {
    SiteClient::new(ch)
        .join(pb::JoinRequest {
            site: site.into(),
            verifying_key: vk,
            version: "security-test".into(),
        })
        .await
        .map(|r| r.into_inner().session)
}

fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, why: &str) -> Result<(), BoxError> {
    match r {
        Err(s) if s.code() == Code::PermissionDenied && s.message().contains(why) => Ok(()),
        other => {
            Err(format!("expected PERMISSION_DENIED mentioning {why:?}, got {other:?}").into())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admission_refuses_each_bad_peer_with_a_specific_status() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut s = pki.mtls_settings();
    s.tls.allowed_sites = vec!["a".into(), "b".into(), "c".into()];
    let mut coord = Coordinator::start(s).await?;
    let url = format!("https://{}", coord.addr);
    let ca = pki.dir.join("ca.pem");

    // A valid site is admitted.
    let a_ch = channel(&url, &ca, Some(pki.site("a"))).await?;
    let a_session = join(a_ch.clone(), "a", pki.vk("a")?).await?;

    // No client certificate: through the handshake, refused by every RPC.
    let anon = channel(&url, &ca, None).await?;
    denied(join(anon, "a", pki.vk("a")?).await, "no client certificate")?;

    // Another CA's certificate (even for an allowed name) fails the handshake.
    let foreign = pki.other.join("sites");
    let r = match channel(
        &url,
        &ca,
        Some((foreign.join("a.pem"), foreign.join("a.key"))),
    )
    .await
    {
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        Ok(ch) => join(ch, "a", pki.vk("a")?).await,
    };
    match r {
        Err(s) if s.code() != Code::Ok && s.code() != Code::PermissionDenied => {}
        other => return Err(format!("foreign-CA certificate admitted: {other:?}").into()),
    }

    // A CA-issued certificate whose name is not in the allow-list.
    let out_ch = channel(&url, &ca, Some(pki.site("outsider"))).await?;
    denied(
        join(out_ch, "outsider", pki.vk("outsider")?).await,
        "allow-list",
    )?;

    // Site a's certificate cannot join as b, nor with a key other than its own.
    denied(
        join(a_ch.clone(), "b", pki.vk("b")?).await,
        "may not act as",
    )?;
    denied(join(a_ch.clone(), "a", pki.vk("b")?).await, "verifying key")?;

    // ...nor use b's session: the session's site must be the certificate's.
    let b_ch = channel(&url, &ca, Some(pki.site("b"))).await?;
    let b_session = join(b_ch, "b", pki.vk("b")?).await?;
    let mut a_client = SiteClient::new(a_ch.clone());
    let stolen = confide_tests::upload(
        &mut a_client,
        confide_tests::chunks(&b_session, 1, &[1, 2, 3]),
    )
    .await;
    denied(stolen, "may not act as")?;
    denied(
        a_client
            .tasks(pb::TasksRequest {
                session: b_session.clone(),
            })
            .await,
        "may not act as",
    )?;

    // Revoked while running (a signed CRL written by `certs revoke`): the
    // next call of the already-connected site is refused, without a restart,
    // and a new connection fails the handshake itself.
    certs::revoke(&pki.dir, certs::RevokeTarget::Site("a"), 7)?;
    denied(
        a_client
            .tasks(pb::TasksRequest {
                session: a_session.clone(),
            })
            .await,
        "revoked",
    )?;
    denied(join(a_ch.clone(), "a", pki.vk("a")?).await, "revoked")?;
    let r = match channel(&url, &ca, Some(pki.site("a"))).await {
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        Ok(ch) => join(ch, "a", pki.vk("a")?).await,
    };
    match r {
        Err(s) if s.code() != Code::PermissionDenied => {}
        other => {
            return Err(format!("revoked certificate got through the handshake: {other:?}").into());
        }
    }
    // Site b, not revoked, still joins over a new connection.
    let b_again = channel(&url, &ca, Some(pki.site("b"))).await?;
    join(b_again, "b", pki.vk("b")?).await?;

    // Admin API: site certificates are refused, operator certificates admitted
    // until revoked (by serial here, as `confide certs revoke --serial` takes it).
    denied(
        AdminClient::new(a_ch).status(pb::StatusRequest {}).await,
        "revoked",
    )?;
    let b_ch = channel(&url, &ca, Some(pki.site("b"))).await?;
    denied(
        AdminClient::new(b_ch).status(pb::StatusRequest {}).await,
        "not an operator",
    )?;
    let ops = pki.dir.join("operators");
    let op_ch = channel(&url, &ca, Some((ops.join("ops.pem"), ops.join("ops.key")))).await?;
    AdminClient::new(op_ch.clone())
        .status(pb::StatusRequest {})
        .await?;
    let serial = {
        let pem = std::fs::read(ops.join("ops.pem"))?;
        let der = rustls_pem_der(&pem)?;
        confide_coordinator::access::PeerCert::from_der(&der)
            .ok_or("operator certificate unparsable")?
            .serial
    };
    certs::revoke(&pki.dir, certs::RevokeTarget::Serial(&serial), 7)?;
    denied(
        AdminClient::new(op_ch).status(pb::StatusRequest {}).await,
        "revoked",
    )?;

    coord.stop();
    coord.finish(Duration::from_secs(15)).await?;
    Ok(())
}

/// A bare rustls handshake with the coordinator offering only `version`.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, BoxError> {
    let roots = confide_proto::tls::roots(&std::fs::read(ca)?)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(confide_proto::tls::provider())
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_tls12_and_speaks_tls13() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut coord = Coordinator::start(pki.mtls_settings()).await?;
    let ca = pki.dir.join("ca.pem");

    match handshake(coord.addr, &ca, &rustls::version::TLS12).await {
        Err(e) => {
            let text = e.to_string().to_lowercase().replace([' ', '_'], "");
            assert!(text.contains("protocolversion"), "unexpected error: {e}");
        }
        Ok(_) => return Err("a TLS 1.2-only client completed a handshake".into()),
    }
    let tls = handshake(coord.addr, &ca, &rustls::version::TLS13).await?;
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    // The refused handshake did not stop the listener: gRPC over the
    // operator CLI's TLS 1.3 connector still works.
    let url = format!("https://{}", coord.addr);
    assert!(confide_coordinator::grpc::health_check(&url, Some(&ca), "localhost").await?);
    coord.stop();
    coord.finish(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_refuses_a_coordinator_whose_certificate_is_revoked() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut coord = Coordinator::start(pki.mtls_settings()).await?;
    let ca = std::fs::read(pki.dir.join("ca.pem"))?;
    let coordinator_serial = confide_coordinator::access::PeerCert::from_der(&pem_file_der(
        &pki.dir.join("coordinator.pem"),
    )?)
    .ok_or("coordinator certificate unparsable")?
    .serial;
    certs::revoke(
        &pki.dir,
        certs::RevokeTarget::Serial(&coordinator_serial),
        7,
    )?;
    let crl_file = pki.dir.join(certs::CRL_FILE);
    let crl = confide_proto::crl::Crl::from_pem(&std::fs::read(&crl_file)?)?;

    // The connector's check: without the CRL the coordinator is trusted,
    // with it the handshake fails.
    let connect = |crls| -> Result<_, BoxError> {
        let id = pki.site("a");
        let (cert, key) = (std::fs::read(id.0)?, std::fs::read(id.1)?);
        let cfg = confide_proto::tls::client_config(&ca, Some((&cert, &key)), crls)?;
        let tls = confide_proto::tls::TlsConnector::new(
            Arc::new(cfg),
            "localhost",
            None,
            Duration::from_secs(5),
        )?;
        Ok((
            Endpoint::from_shared(format!("http://{}", coord.addr))?,
            tls,
        ))
    };
    let (ep, tls) = connect(Vec::new())?;
    ep.connect_with_connector(tls).await?;
    let (ep, tls) = connect(vec![crl.to_rustls()])?;
    match ep.connect_with_connector(tls).await {
        Err(e) => assert!(format!("{e:?}").contains("Revoked"), "{e:?}"),
        Ok(_) => return Err("connected to a revoked coordinator".into()),
    }

    // The site itself, given the CRL out of band (`--crl`), gives up
    // connecting and says why.
    let tmp = tempfile::tempdir()?;
    let data = confide_tests::split_round_robin(tmp.path(), 3)?;
    let mut cfg = confide_client::SiteConfig::new(
        format!("https://{}", coord.addr),
        "a",
        &data[0],
        "malignant",
    );
    cfg.tls = Some(confide_client::TlsFiles::from_certs_dir(
        &pki.dir,
        "a",
        "localhost",
    ));
    cfg.signing_key = Some(pki.dir.join("sites/a.signing.toml"));
    cfg.crl = Some(crl_file);
    cfg.max_reconnect = Duration::from_secs(1);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        confide_client::run_site(cfg, std::future::pending()),
    )
    .await?;
    match r {
        Err(e) => assert!(e.to_string().contains("Revoked"), "{e}"),
        Ok(report) => {
            return Err(format!("site ran against a revoked coordinator: {report:?}").into());
        }
    }
    coord.stop();
    coord.finish(Duration::from_secs(15)).await?;
    Ok(())
}

/// DER of the first PEM certificate.
fn rustls_pem_der(pem: &[u8]) -> Result<Vec<u8>, BoxError> {
    use rustls_pki_types::pem::PemObject;
    Ok(rustls_pki_types::CertificateDer::from_pem_slice(pem)?.to_vec())
}

/// A bare TLS 1.3 connection presenting `id` (certificate, key); returns
/// once the coordinator serves it (its first HTTP/2 bytes have arrived).
async fn raw_connection(
    addr: std::net::SocketAddr,
    ca: &Path,
    id: Option<(PathBuf, PathBuf)>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, BoxError> {
    use tokio::io::AsyncReadExt;
    let ca = std::fs::read(ca)?;
    let pems = match id {
        Some((cert, key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
        None => None,
    };
    let ident = pems.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
    let cfg = confide_proto::tls::client_config(&ca, ident, Vec::new())?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    // The server's SETTINGS frame: the connection is past admission.
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut [0u8; 64])).await??;
    if n == 0 {
        return Err("the coordinator closed a new connection".into());
    }
    Ok(tls)
}

/// Whether the coordinator closes `tls` within `wait`.
async fn closes_within(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    wait: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One site's certificate cannot hold more than
/// `limits.max_connections_per_site` connections (each may hold a receive
/// window): one more closes that site's oldest, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_site_limit_close_that_sites_oldest() -> Result<(), BoxError> {
    let pki = Pki::new()?;
    let mut s = pki.mtls_settings();
    s.limits.max_connections_per_site = 2;
    let mut coord = Coordinator::start(s).await?;
    let ca = pki.dir.join("ca.pem");
    let addr = coord.addr;

    let mut a1 = raw_connection(addr, &ca, Some(pki.site("a"))).await?;
    let mut a2 = raw_connection(addr, &ca, Some(pki.site("a"))).await?;
    let mut b1 = raw_connection(addr, &ca, Some(pki.site("b"))).await?;
    let mut anon = raw_connection(addr, &ca, None).await?;
    assert!(!closes_within(&mut a1, Duration::from_millis(300)).await);
    // A third connection of "a" closes a's first.
    let mut a3 = raw_connection(addr, &ca, Some(pki.site("a"))).await?;
    assert!(
        closes_within(&mut a1, Duration::from_secs(10)).await,
        "a's oldest connection stayed open past the limit"
    );
    for (name, c) in [
        ("a2", &mut a2),
        ("a3", &mut a3),
        ("b1", &mut b1),
        ("anon", &mut anon),
    ] {
        assert!(
            !closes_within(c, Duration::from_millis(300)).await,
            "{name} was closed"
        );
    }
    // The site can still reach the coordinator over gRPC (this connection
    // takes a2's place).
    let url = format!("https://{addr}");
    let ch = channel(&url, &ca, Some(pki.site("a"))).await?;
    let r = join(ch, "a", pki.vk("a")?).await;
    assert!(r.is_ok(), "join after the eviction: {r:?}");
    assert!(closes_within(&mut a2, Duration::from_secs(10)).await);
    assert!(!closes_within(&mut b1, Duration::from_millis(100)).await);
    coord.stop();
    coord.finish(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_flood_is_rate_limited() -> Result<(), BoxError> {
    let mut s = settings(1, Suite::Intl);
    s.limits.join_burst = 3;
    s.limits.join_rate_per_sec = 0.01;
    let mut coord = Coordinator::start(s).await?;
    let ch = Endpoint::from_shared(coord.url())?.connect().await?;
    let mut codes = Vec::new();
    for i in 0..5 {
        let r = join(ch.clone(), &format!("s{i}"), vec![7; 32]).await;
        codes.push(r.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ]
    );
    coord.stop();
    coord.finish(Duration::from_secs(15)).await?;
    Ok(())
}

// ---- neighbours against a lying coordinator -------------------------------

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A round of 4 as the coordinator schedules it (complete graph, k = 3,
/// t = 3, one colluder assumed: quorum 3) whose sites hold certificates from
/// one CA, apply the default policy and check every relayed identity with
/// the client's [`CertificateVerifier`].
struct CertRound {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    other: PathBuf,
    cfg: RoundConfig,
    stepper: Stepper<u32>,
    certs: Vec<Vec<u8>>,
}

fn pem_file_der(path: &Path) -> Result<Vec<u8>, BoxError> {
    rustls_pem_der(&std::fs::read(path)?)
}

impl CertRound {
    fn new(seed: u64) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("certs");
        certs::init(
            &dir,
            "sec",
            &[],
            &confide_coordinator::ca_key::CaKeySource::File,
        )?;
        let other = tmp.path().join("other");
        certs::init(
            &other,
            "evil",
            &[],
            &confide_coordinator::ca_key::CaKeySource::File,
        )?;
        certs::issue_site(&other, "b", Suite::Intl)?;
        let mut sim = Simulation::new(Suite::Intl, 4, SecAggParams { k: 3, t: 3 }).with_seed(seed);
        sim.max_colluders = 1;
        let cfg = sim.config::<u32>(5);
        let policy = SitePolicy::default();
        let mut stepper = Stepper::<u32>::with_policy(cfg.clone(), seed, &policy)?;
        let ca = std::fs::read(dir.join("ca.pem"))?;
        let mut keys = Vec::new();
        let mut sites = Vec::new();
        let mut ders = Vec::new();
        for (&m, name) in cfg.cohort.iter().zip(NAMES) {
            certs::issue_site(&dir, name, Suite::Intl)?;
            let key = load_signing_key(&dir.join(format!("sites/{name}.signing.toml")))?;
            let verifier = Arc::new(CertificateVerifier::from_ca_pem(Suite::Intl, &ca)?);
            sites.push(SiteMachine::new(
                cfg.clone(),
                m,
                key.clone(),
                verifier,
                &policy,
                &mut stepper.rng,
            )?);
            keys.push(key);
            ders.push(pem_file_der(&dir.join(format!("sites/{name}.pem")))?);
        }
        stepper.sites = sites;
        stepper.keys = keys;
        Ok(CertRound {
            _tmp: tmp,
            dir,
            other,
            cfg,
            stepper,
            certs: ders,
        })
    }

    /// The identity an honest coordinator relays for member `m` whose
    /// verifying key is `vk`: key, certificate and site name, as the client
    /// hands them to its verifier.
    fn identity(&self, m: confide_crypto::MemberId, vk: &[u8]) -> Vec<u8> {
        let i = (m - 1) as usize;
        identity_blob(&pb::RelayedAdvert {
            advert: None,
            verifying_key: vk.to_vec(),
            certificate: self.certs[i].clone(),
            site: NAMES[i].into(),
        })
    }

    /// What an honest coordinator relays: each advert and survivor-set
    /// signature with its signer's name, key and certificate (masking sets
    /// carry no identity).
    fn relay(
        &self,
        outputs: Vec<CoordinatorOutput<u32>>,
    ) -> Result<Vec<CoordinatorOutput<u32>>, BoxError> {
        outputs
            .into_iter()
            .map(|o| match o {
                CoordinatorOutput::NeighbourKeys { to, mut msg } => {
                    for r in &mut msg.adverts {
                        r.identity = self.identity(r.advert.member, &r.identity);
                    }
                    Ok(CoordinatorOutput::NeighbourKeys { to, msg })
                }
                CoordinatorOutput::UnmaskRequest { to, mut msg } => {
                    for r in &mut std::sync::Arc::make_mut(&mut msg).signatures {
                        r.identity = self.identity(r.signature.member, &r.identity);
                    }
                    Ok(CoordinatorOutput::UnmaskRequest { to, msg })
                }
                other => Ok(other),
            })
            .collect()
    }
}

#[test]
fn honest_round_over_certificate_verifier_completes() -> Result<(), BoxError> {
    let mut r = CertRound::new(1)?;
    let adv = r.stepper.advertise()?;
    let relayed = r.relay(adv)?;
    let shares = r.stepper.share(relayed)?;
    let inputs: Vec<Vec<u32>> = (0..4u32).map(|i| vec![i, 10 * i, 1, 2, 3]).collect();
    let masked = r
        .stepper
        .mask(shares, inputs.iter().cloned().map(Some).collect())?;
    let consistency = r.stepper.submit(&masked)?;
    let unmask = r.stepper.agree(r.relay(consistency)?)?;
    let responses = r.stepper.responses(r.relay(unmask)?)?;
    let sum = r
        .stepper
        .finish(responses)?
        .ok_or("round did not finish")??
        .sum;
    let expect: Vec<u32> = (0..5)
        .map(|j| inputs.iter().map(|v| v[j]).fold(0u32, u32::wrapping_add))
        .collect();
    assert_eq!(sum, expect);
    Ok(())
}

/// No share leaves a site before a quorum of survivors signed the very set
/// it signed: an unmask request with too few signatures, or naming another
/// survivor set, is refused.
#[test]
fn unmask_without_a_quorum_on_the_signed_set_is_refused_over_certificate_verifier()
-> Result<(), BoxError> {
    let mut r = CertRound::new(7)?;
    let adv = r.stepper.advertise()?;
    let relayed = r.relay(adv)?;
    let shares = r.stepper.share(relayed)?;
    let masked = r.stepper.mask(shares, vec![Some(vec![1; 5]); 4])?;
    let submitted = r.stepper.submit(&masked)?;
    let consistency = r.relay(submitted)?;
    // Only site 1 is asked to sign.
    let mine: Vec<_> = consistency
        .into_iter()
        .filter(|o| matches!(o, CoordinatorOutput::ConsistencyRequest { to: 1, .. }))
        .collect();
    let sigs = r.stepper.consistency(mine)?;
    assert_eq!(sigs.len(), 1, "site 1 signs the survivor set");
    let own = RelayedSignature {
        identity: r.identity(1, &r.stepper.identity(1)?),
        signature: sigs[0].clone(),
    };
    let quorum = r.cfg.quorum();
    assert_eq!(quorum, 3);
    let too_few = UnmaskRequest {
        round: r.cfg.round,
        survivors: vec![1, 2, 3, 4],
        signatures: vec![own],
    };
    let site = r.stepper.site(1)?;
    match site.handle_unmask_request(too_few) {
        Err(e) if e.to_string().contains("quorum") => {}
        other => return Err(format!("expected a quorum refusal, got {other:?}").into()),
    }
    assert!(site.poll_output().is_none(), "no share may leave the site");
    // A fresh site machine state is needed for the second refusal: the first
    // one ended site 1's part in the round. Another set than it signed:
    let mut r = CertRound::new(8)?;
    let adv = r.stepper.advertise()?;
    let relayed = r.relay(adv)?;
    let shares = r.stepper.share(relayed)?;
    let masked = r.stepper.mask(shares, vec![Some(vec![1; 5]); 4])?;
    let submitted = r.stepper.submit(&masked)?;
    let consistency = r.relay(submitted)?;
    let sigs = r.stepper.consistency(consistency)?;
    let signatures = sigs
        .into_iter()
        .map(|s| {
            Ok(RelayedSignature {
                identity: r.identity(s.member, &r.stepper.identity(s.member)?),
                signature: s,
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let other_set = UnmaskRequest {
        round: r.cfg.round,
        survivors: vec![1, 2, 3],
        signatures,
    };
    let site = r.stepper.site(1)?;
    match site.handle_unmask_request(other_set) {
        Err(e) if e.to_string().contains("did not sign") => {}
        other => return Err(format!("expected an unsigned-set refusal, got {other:?}").into()),
    }
    assert!(site.poll_output().is_none(), "no share may leave the site");
    Ok(())
}

/// Run one tampering of site `victim`'s NeighbourKeys; the victim must leave
/// member 2 out with a reason mentioning `why`, and no share of it may reach
/// member 2 (with t = 3 of 3 neighbours, it then deals no shares at all).
fn tampered(
    seed: u64,
    why: &str,
    tamper: impl Fn(&CertRound, &mut confide_crypto::protocol::RelayedAdvert) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    let mut r = CertRound::new(seed)?;
    let adv = r.stepper.advertise()?;
    let relayed = r.relay(adv)?;
    let victim = 1;
    let mut outcome = None;
    for o in relayed {
        if let CoordinatorOutput::NeighbourKeys { to, mut msg } = o
            && to == victim
        {
            // Tamper with neighbour 2's relayed advert.
            let target = msg
                .adverts
                .iter_mut()
                .find(|a| a.advert.member == 2)
                .ok_or("no advert of member 2")?;
            tamper(&r, target)?;
            let mut rng = rand::rng();
            let site = r.stepper.site(victim)?;
            let result = site.handle_neighbour_keys(msg, &mut rng);
            // No share reaches the member whose advert failed.
            while let Some(o) = site.poll_output() {
                if let SiteOutput::Shares(b) = o {
                    assert!(
                        b.shares.iter().all(|s| s.to != 2),
                        "a share went to the peer with the bad advert"
                    );
                }
            }
            outcome = Some((result, site.rejected().to_vec()));
        }
    }
    let (result, rejected) = outcome.ok_or("victim got no NeighbourKeys")?;
    if !rejected
        .iter()
        .any(|(m, reason)| *m == 2 && reason.contains(why))
    {
        return Err(format!("expected member 2 left out for {why:?}, got {rejected:?}").into());
    }
    // Two good neighbours remain, below t = 3: the victim stops here.
    match result {
        Err(confide_crypto::ProtocolError::BelowThreshold {
            have: 2, need: 3, ..
        }) => Ok(()),
        other => Err(format!("expected the victim to stop below threshold, got {other:?}").into()),
    }
}

fn relayed_fields(
    a: &confide_crypto::protocol::RelayedAdvert,
) -> Result<pb::RelayedAdvert, BoxError> {
    Ok(prost::Message::decode(a.identity.as_slice())?)
}

#[test]
fn coordinator_substituting_a_key_is_detected() -> Result<(), BoxError> {
    // New keys signed with the coordinator's own key, relayed with b's certificate.
    tampered(2, "not the one in its certificate", |r, a| {
        let evil = SigningKey::generate(Suite::Intl, &mut rand::rng());
        // The coordinator's own agreement key in place of b's.
        a.advert.enc_public = vec![9; a.advert.enc_public.len()];
        a.advert.signature = evil.sign(&confide_crypto::protocol::KeyAdvert::signed_bytes(
            &r.cfg.session_id(),
            a.advert.member,
            &a.advert.enc_public,
            &a.advert.mask_public,
        ))?;
        let mut f = relayed_fields(a)?;
        f.verifying_key = evil.verifying_key()?.as_bytes().to_vec();
        a.identity = prost::Message::encode_to_vec(&f);
        Ok(())
    })
}

#[test]
fn coordinator_relaying_a_wrong_signature_is_detected() -> Result<(), BoxError> {
    tampered(3, "signature", |_, a| {
        let last = a
            .advert
            .signature
            .len()
            .checked_sub(1)
            .ok_or("empty signature")?;
        a.advert.signature[last] ^= 1;
        Ok(())
    })
}

#[test]
fn coordinator_relaying_a_foreign_ca_certificate_is_detected() -> Result<(), BoxError> {
    // A certificate for "b" with the coordinator's key, from a CA it controls.
    tampered(4, "not issued by the federation CA", |r, a| {
        let mut f = relayed_fields(a)?;
        f.certificate = pem_file_der(&r.other.join("sites/b.pem"))?;
        a.identity = prost::Message::encode_to_vec(&f);
        Ok(())
    })
}

#[test]
fn coordinator_relaying_another_sites_certificate_is_detected() -> Result<(), BoxError> {
    // c's genuine certificate and key presented as b's.
    tampered(5, "not for site", |r, a| {
        let mut f = relayed_fields(a)?;
        f.certificate = pem_file_der(&r.dir.join("sites/c.pem"))?;
        a.identity = prost::Message::encode_to_vec(&f);
        Ok(())
    })
}

#[test]
fn coordinator_relaying_no_certificate_is_detected() -> Result<(), BoxError> {
    tampered(6, "no certificate", |_, a| {
        let mut f = relayed_fields(a)?;
        f.certificate.clear();
        a.identity = prost::Message::encode_to_vec(&f);
        Ok(())
    })
}
