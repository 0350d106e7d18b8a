//! The federation CRL as the coordinator enforces and serves it, reloaded
//! when its file changes (no restart).
//!
//! ```text
//! crl.pem ──stat per use; reload on change──▶ Revocation ─┬─▶ handshake: CrlClientVerifier → webpki (with the CRL)
//!   (signature checked against the CA)                    ├─▶ every RPC: Access::check → revoked serial?
//!                                                         └─▶ JoinResponse.crl, RoundStart.crl (DER)
//! ```
//!
//! - A missing file means "no revocations yet" (warned once per change):
//!   `confide certs crl` creates it.
//! - A file that cannot be read, parsed or verified: every RPC is refused
//!   until it is fixed (fail closed); handshakes keep the last good CRL.
//! - An expired CRL (past nextUpdate) is still enforced — revocations do not
//!   lapse — and logged as an error at load and at most hourly after that:
//!   the CA operator must run `confide certs crl`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use confide_proto::crl::{Crl, unix_now};
use confide_proto::tls;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tracing::{error, info, warn};

use crate::error::CoordinatorError;

/// How often an expired CRL is complained about while it stays in use.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct State {
    /// (mtime, length) of the file when last read; `None` = missing.
    stamp: Option<(SystemTime, u64)>,
    loaded: bool,
    crl: Option<Arc<Crl>>,
    /// Why the current file is unusable (every RPC is refused meanwhile).
    broken: Option<String>,
    verifier: Arc<dyn ClientCertVerifier>,
    expiry_warned: Option<Instant>,
}

/// The CRL file, its parsed content and the handshake verifier built from it.
#[derive(Debug)]
pub struct Revocation {
    path: Option<PathBuf>,
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    state: Mutex<State>,
}

impl Revocation {
    /// Enforce the CRL at `path` (none: nothing is revoked) for the CA in
    /// `ca_pem`. Loads it now: an unusable file at start is an error.
    pub fn new(path: Option<PathBuf>, ca_pem: &[u8]) -> Result<Self, CoordinatorError> {
        let roots = tls::roots(ca_pem)?;
        let verifier = tls::client_verifier(roots.clone(), Vec::new())?;
        let r = Revocation {
            path,
            ca_pem: ca_pem.to_vec(),
            roots,
            state: Mutex::new(State {
                stamp: None,
                loaded: false,
                crl: None,
                broken: None,
                verifier,
                expiry_warned: None,
            }),
        };
        let broken = r.refresh().broken.clone();
        match broken {
            Some(why) => Err(CoordinatorError::Tls(why)),
            None => Ok(r),
        }
    }

    /// The CRL file, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// Reload if the file changed (one `stat` otherwise) and return the
    /// state; cheap enough for every request and every handshake.
    fn refresh(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-reload; reload again.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.path else {
            return st;
        };
        let stamp = match std::fs::metadata(path) {
            Ok(m) => Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                st.broken = Some(format!("{}: {e}", path.display()));
                return st;
            }
        };
        if st.loaded && st.stamp == stamp {
            self.warn_if_expired(&mut st);
            return st;
        }
        st.stamp = stamp;
        st.loaded = true;
        if stamp.is_none() {
            warn!(path = %path.display(), "no CRL file: no certificate is revoked yet (`confide certs crl` creates it)");
            st.crl = None;
            st.broken = None;
            match tls::client_verifier(self.roots.clone(), Vec::new()) {
                Ok(v) => st.verifier = v,
                Err(e) => st.broken = Some(e.to_string()),
            }
            return st;
        }
        match self.load(path) {
            Ok((crl, verifier)) => {
                info!(path = %path.display(), number = crl.number(), revoked = crl.revoked_count(), "CRL (re)loaded");
                st.crl = Some(Arc::new(crl));
                st.verifier = verifier;
                st.broken = None;
                st.expiry_warned = None;
                self.warn_if_expired(&mut st);
            }
            Err(why) => {
                error!(path = %path.display(), error = %why, "CRL unusable: refusing every request until it is fixed");
                st.broken = Some(why);
            }
        }
        st
    }

    fn load(&self, path: &std::path::Path) -> Result<(Crl, Arc<dyn ClientCertVerifier>), String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crl = Crl::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        crl.verify(&self.ca_pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let verifier = tls::client_verifier(self.roots.clone(), vec![crl.to_rustls()])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((crl, verifier))
    }

    fn warn_if_expired(&self, st: &mut State) {
        let Some(crl) = &st.crl else { return };
        if !crl.is_expired(unix_now()) {
            return;
        }
        if st
            .expiry_warned
            .is_some_and(|t| t.elapsed() < EXPIRY_WARNING_EVERY)
        {
            return;
        }
        st.expiry_warned = Some(Instant::now());
        error!(
            number = crl.number(),
            next_update = crl.next_update().unwrap_or_default(),
            "the CRL has EXPIRED: still enforced here, but sites refuse it; run `confide certs crl` on the CA"
        );
    }

    /// Whether the certificate with this raw serial is revoked; `Err` with
    /// the reason while the CRL file is unusable.
    pub fn is_revoked(&self, raw_serial: &[u8]) -> Result<bool, String> {
        let st = self.refresh();
        if let Some(why) = &st.broken {
            return Err(why.clone());
        }
        Ok(st.crl.as_ref().is_some_and(|c| c.revokes(raw_serial)))
    }

    /// DER of the current CRL (empty without one), for sites.
    pub fn crl_der(&self) -> Vec<u8> {
        let st = self.refresh();
        st.crl
            .as_ref()
            .map(|c| c.der().to_vec())
            .unwrap_or_default()
    }

    /// The handshake's client verifier for the current CRL.
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.refresh().verifier.clone()
    }
}

/// The TLS server's client-certificate verifier: the webpki verifier of the
/// CRL current at each handshake ([`Revocation`] swaps it on change).
#[derive(Debug)]
pub struct CrlClientVerifier {
    revocation: Arc<Revocation>,
    /// The CA never changes while running, so neither do the hints.
    hints: Vec<DistinguishedName>,
}

impl CrlClientVerifier {
    /// A verifier following `revocation`.
    pub fn new(revocation: Arc<Revocation>) -> Arc<Self> {
        let hints = revocation.verifier().root_hint_subjects().to_vec();
        Arc::new(CrlClientVerifier { revocation, hints })
    }
}

impl ClientCertVerifier for CrlClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.revocation.verifier().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.revocation.verifier().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.revocation
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.revocation
            .verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.revocation
            .verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.revocation.verifier().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
