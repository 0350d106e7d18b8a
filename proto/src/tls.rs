//! TLS 1.3 only, for both ends of every Confide connection.
//!
//! tonic's own TLS settings let rustls negotiate TLS 1.2 as well, so the
//! coordinator, the site and the operator CLI build their rustls
//! configurations here instead: the ring provider, TLS 1.3 as the only
//! protocol version, ALPN `h2`, and certificates verified by webpki against
//! the federation CA (and its CRLs, when given).
//!
//! ```text
//! coordinator: TcpListener ─▶ TlsAcceptor(server_config) ─▶ tonic Server::serve_with_incoming
//! site, CLI:   Endpoint(http_uri(url)).connect_with_connector(TlsConnector) ─▶ TcpStream ─▶ TLS 1.3
//! ```
//!
//! The connector owns the TLS, so the tonic endpoint is given the URL with
//! `http://` ([`http_uri`]): tonic refuses an `https` URI it cannot secure
//! itself. Users still write and see `https://`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

/// The only protocol versions offered or accepted.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// ALPN of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// Why TLS material or a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file holds no usable item of the expected kind.
    #[error("{what}: {reason}")]
    Pem {
        /// What was expected (e.g. "federation CA certificate").
        what: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate verifier could not be built (no CA, an unparsable CRL).
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A name that cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The one crypto provider Confide's TLS uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem` (at least one).
pub fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem { what, reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The private key in `pem`.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// The federation CA (every certificate in `ca_pem`) as trust anchors.
pub fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "federation CA certificate")? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// The coordinator's client-certificate check: a presented certificate must
/// chain to `roots` and, when `crls` are given, not be revoked by them; a
/// connection without one passes the handshake so that every RPC can refuse
/// it with a clear status (the health service stays reachable).
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .allow_unauthenticated()
            .build()?,
    )
}

/// A TLS 1.3-only server configuration with the certificate chain and key
/// in PEM, client certificates checked by `verifier`, ALPN `h2`.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, TlsError> {
    let chain = certs_from_pem(cert_pem, "server certificate")?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_from_pem(key_pem)?)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A TLS 1.3-only client configuration: the server's certificate must chain
/// to the CA in `ca_pem` and not be revoked by `crls`; `identity` is the
/// client certificate chain and key (PEM) to present, if any; ALPN `h2`.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<ClientConfig, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .with_crls(crls)
        .build()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_webpki_verifier(verifier);
    let mut cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            certs_from_pem(cert, "client certificate")?,
            key_from_pem(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// `url` with an `https://` scheme turned into `http://`, for the tonic
/// endpoint of a [`TlsConnector`] (which does the TLS itself).
pub fn http_uri(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    }
}

/// Dials the endpoint's host and port over TCP (no Nagle delay, optional
/// keep-alive) and runs a TLS 1.3 handshake, all within `timeout`: give it
/// to `Endpoint::connect_with_connector`. A URI without a port means 443.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    domain: ServerName<'static>,
    tcp_keepalive: Option<Duration>,
    timeout: Duration,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("domain", &self.domain)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Connections with `config`, expecting `domain` in the server's
    /// certificate.
    pub fn new(
        config: Arc<ClientConfig>,
        domain: &str,
        tcp_keepalive: Option<Duration>,
        timeout: Duration,
    ) -> Result<Self, TlsError> {
        let domain = ServerName::try_from(domain.to_string())
            .map_err(|_| TlsError::ServerName(domain.to_string()))?;
        Ok(TlsConnector {
            config,
            domain,
            tcp_keepalive,
            timeout,
        })
    }

    /// The same connector with another time limit.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        TlsConnector { timeout, ..self }
    }

    async fn connect(self, uri: Uri) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI without a host"))?;
        // IPv6 literals keep their brackets in a URI, not in a socket address.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await?;
        // Small stage messages must not wait out delayed ACKs.
        tcp.set_nodelay(true)?;
        if let Some(idle) = self.tcp_keepalive {
            socket2::SockRef::from(&tcp)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
        }
        let tls = tokio_rustls::TlsConnector::from(self.config)
            .connect(self.domain, tcp)
            .await?;
        Ok(TokioIo::new(tls))
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, this.connect(uri))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("TCP connect and TLS handshake took over {timeout:?}"),
                    )
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_becomes_http_for_the_endpoint_only() {
        assert_eq!(http_uri("https://c.example:7443"), "http://c.example:7443");
        assert_eq!(http_uri("http://127.0.0.1:1"), "http://127.0.0.1:1");
    }

    #[test]
    fn unusable_inputs_are_named() -> Result<(), Box<dyn std::error::Error>> {
        assert!(matches!(
            roots(b"not pem"),
            Err(TlsError::Pem {
                what: "federation CA certificate",
                ..
            })
        ));
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let c = TlsConnector::new(Arc::new(cfg), "not a name!", None, Duration::from_secs(1));
        assert!(matches!(c, Err(TlsError::ServerName(_))));
        Ok(())
    }
}
