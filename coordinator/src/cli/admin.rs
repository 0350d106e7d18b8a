//! The operator's side of the Admin API and the gRPC health probe, as used by
//! `confide status`, `confide rounds` and `confide health`.
//!
//! Every connection is built by [`endpoint`], so the TLS setup (TLS 1.3 only,
//! CA, optional client identity, the name expected in the coordinator's
//! certificate) is written once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confide_proto::tls::{self, TlsConnector};
use confide_proto::v1 as pb;
use tonic::Response;
use tonic::transport::{Channel, Endpoint};

use crate::checkpoint::RoundRecord;
use crate::convert::record_from_pb;
use crate::error::CoordinatorError;

/// The name `confide certs init` always puts in the coordinator's
/// certificate, hence the default a client expects there.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// TLS material for an operator's connection to the Admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorTls {
    /// Federation CA (PEM).
    pub ca: PathBuf,
    /// Operator certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Name to expect in the coordinator's certificate.
    pub domain: String,
}

impl OperatorTls {
    /// The layout `confide certs` writes: `DIR/ca.pem` and
    /// `DIR/operators/NAME.{pem,key}`.
    pub fn from_certs_dir(dir: &Path, operator: &str, domain: &str) -> OperatorTls {
        OperatorTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("operators").join(format!("{operator}.pem")),
            key: dir.join("operators").join(format!("{operator}.key")),
            domain: domain.to_string(),
        }
    }
}

/// How to reach the coordinator over TLS: the CA to trust, the client
/// identity to present (none for the health probe) and the expected name.
#[derive(Clone, Copy, Debug)]
pub struct ClientTls<'a> {
    /// Federation CA (PEM).
    pub ca: &'a Path,
    /// Client certificate and key (PEM), if one is presented.
    pub identity: Option<(&'a Path, &'a Path)>,
    /// Name to expect in the coordinator's certificate.
    pub domain: &'a str,
}

fn read(p: &Path) -> Result<Vec<u8>, CoordinatorError> {
    std::fs::read(p).map_err(|e| CoordinatorError::Tls(format!("{}: {e}", p.display())))
}

/// How long connecting (TCP and the TLS handshake) may take by default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to make: the tonic endpoint and, over TLS, the connector
/// that dials and secures it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as the user gave it (for messages).
    url: String,
    /// The tonic endpoint; `http://` even for TLS, which the connector does.
    endpoint: Endpoint,
    /// TLS 1.3 connector, or `None` for plaintext.
    tls: Option<TlsConnector>,
}

impl Target {
    /// Bound connecting and every call by `timeout` (health probes).
    fn with_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.connect_timeout(timeout).timeout(timeout);
        self.tls = self.tls.map(|c| c.with_timeout(timeout));
        self
    }

    async fn connect(&self) -> Result<Channel, CoordinatorError> {
        let r = match &self.tls {
            Some(c) => self.endpoint.connect_with_connector(c.clone()).await,
            None => self.endpoint.connect().await,
        };
        r.map_err(|source| CoordinatorError::Connect {
            url: self.url.clone(),
            source,
        })
    }
}

/// A connection target for `url`, over TLS 1.3 when `tls` is given
/// (plaintext otherwise).
pub fn endpoint(url: &str, tls: Option<ClientTls<'_>>) -> Result<Target, CoordinatorError> {
    let Some(t) = tls else {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(CoordinatorError::Transport)?
            .connect_timeout(CONNECT_TIMEOUT);
        return Ok(Target {
            url: url.to_string(),
            endpoint,
            tls: None,
        });
    };
    let endpoint =
        Endpoint::from_shared(tls::http_uri(url)).map_err(CoordinatorError::Transport)?;
    let identity = match t.identity {
        Some((cert, key)) => {
            confide_proto::keys::check_private_file(key)
                .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
            Some((read(cert)?, read(key)?))
        }
        None => None,
    };
    let config = tls::client_config(
        &read(t.ca)?,
        identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        Vec::new(),
    )?;
    let connector = TlsConnector::new(Arc::new(config), t.domain, None, CONNECT_TIMEOUT)?;
    Ok(Target {
        url: url.to_string(),
        endpoint,
        tls: Some(connector),
    })
}

async fn admin_client(
    url: &str,
    tls: Option<&OperatorTls>,
) -> Result<pb::admin_client::AdminClient<Channel>, CoordinatorError> {
    let tls = tls.map(|t| ClientTls {
        ca: &t.ca,
        identity: Some((&t.cert, &t.key)),
        domain: &t.domain,
    });
    let ch = endpoint(url, tls)?.connect().await?;
    Ok(pb::admin_client::AdminClient::new(ch))
}

/// `confide health`: ask the standard gRPC health service whether the Site
/// service is serving. TLS uses only the CA (no client certificate), so a
/// container healthcheck needs nothing secret.
pub async fn health_check(
    url: &str,
    ca: Option<&Path>,
    domain: &str,
) -> Result<bool, CoordinatorError> {
    let tls = ca.map(|ca| ClientTls {
        ca,
        identity: None,
        domain,
    });
    // A healthcheck must answer quickly either way.
    let ch = endpoint(url, tls)?
        .with_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let reply = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "confide.v1.Site".into(),
        })
        .await
        .map_err(|e| CoordinatorError::Rpc(Box::new(e)))?
        .into_inner();
    Ok(reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

/// `confide status`: the Admin API's Status.
pub async fn status(
    url: &str,
    tls: Option<&OperatorTls>,
) -> Result<pb::StatusResponse, CoordinatorError> {
    let mut c = admin_client(url, tls).await?;
    c.status(pb::StatusRequest {})
        .await
        .map(Response::into_inner)
        .map_err(|e| CoordinatorError::Rpc(Box::new(e)))
}

/// `confide rounds`: the Admin API's history, as records.
pub async fn rounds(
    url: &str,
    tls: Option<&OperatorTls>,
) -> Result<Vec<RoundRecord>, CoordinatorError> {
    let mut c = admin_client(url, tls).await?;
    let r = c
        .rounds(pb::RoundsRequest {})
        .await
        .map_err(|e| CoordinatorError::Rpc(Box::new(e)))?
        .into_inner();
    Ok(r.rounds.into_iter().map(record_from_pb).collect())
}

/// [`status`] with the TLS files as a `(ca, cert, key)` triple and the
/// [`DEFAULT_DOMAIN`]: the signature of the former `grpc::admin_status`,
/// kept for its callers.
pub async fn admin_status(
    url: &str,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
) -> Result<pb::StatusResponse, CoordinatorError> {
    let tls = tls.map(|(ca, cert, key)| OperatorTls {
        ca,
        cert,
        key,
        domain: DEFAULT_DOMAIN.to_string(),
    });
    status(url, tls.as_ref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_files_follow_the_certs_layout() {
        let t = OperatorTls::from_certs_dir(Path::new("certs"), "admin", "coord.example");
        assert_eq!(t.ca, Path::new("certs/ca.pem"));
        assert_eq!(t.cert, Path::new("certs/operators/admin.pem"));
        assert_eq!(t.key, Path::new("certs/operators/admin.key"));
        assert_eq!(t.domain, "coord.example");
    }

    #[test]
    fn missing_tls_files_are_named_in_the_error() {
        let tls = ClientTls {
            ca: Path::new("/nonexistent/ca.pem"),
            identity: None,
            domain: DEFAULT_DOMAIN,
        };
        match endpoint("https://localhost:7443", Some(tls)) {
            Err(CoordinatorError::Tls(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }

    #[test]
    fn plaintext_endpoints_need_no_files() {
        assert!(endpoint("http://127.0.0.1:7443", None).is_ok());
        assert!(matches!(
            endpoint("not a url", None),
            Err(CoordinatorError::Transport(_))
        ));
    }
}
