//! The newest federation CRL this site has seen, from `--crl FILE` (out of
//! band) and from the coordinator (`JoinResponse.crl`, `RoundStart.crl`).
//!
//! ```text
//! --crl FILE (start, every connect) ─┐
//! JoinResponse.crl, RoundStart.crl ──┴─▶ CrlStore::offer: signed by the federation CA?
//!                                        not expired? higher CRL number than held? ─▶ adopted
//! newest ─▶ CertificateVerifier (relayed neighbours), TlsConnector (the coordinator's certificate)
//! ```
//!
//! A CRL is adopted only if the federation CA signed it, it is not past its
//! nextUpdate, and its CRL number is higher than the one held: the store
//! never goes backwards, so a dishonest coordinator cannot hide a revocation
//! by serving an older list. Once adopted, a CRL stays in force after it
//! expires (revocations do not lapse), with a warning until a newer one
//! arrives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use confide_proto::crl::{Crl, CrlError, unix_now};
use rustls_pki_types::CertificateRevocationListDer;
use tracing::{info, warn};

use crate::error::ClientError;

/// What [`CrlStore::offer`] did with a valid CRL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// It is now the newest: its CRL number.
    Adopted(u64),
    /// Its number is not above the one held (`held`): ignored.
    NotNewer {
        /// Number of the CRL offered.
        offered: u64,
        /// Number of the CRL held.
        held: u64,
    },
}

/// The newest verified CRL of the federation CA (see the module docs).
#[derive(Debug)]
pub struct CrlStore {
    ca_pem: Vec<u8>,
    file: Option<PathBuf>,
    newest: Mutex<Option<Arc<Crl>>>,
}

impl CrlStore {
    /// An empty store for the CA in `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> Self {
        CrlStore {
            ca_pem: ca_pem.to_vec(),
            file: None,
            newest: Mutex::new(None),
        }
    }

    /// A store that also reads `file` (PEM) now and at every
    /// [`refresh_file`](Self::refresh_file). A file that cannot be read or is
    /// not a CRL signed by the CA is an error; an expired one is only warned
    /// about.
    pub fn with_file(ca_pem: &[u8], file: &Path) -> Result<Self, ClientError> {
        let store = CrlStore {
            file: Some(file.to_path_buf()),
            ..Self::new(ca_pem)
        };
        match store.offer_file(file) {
            Ok(_) | Err(CrlError::Expired { .. }) => Ok(store),
            Err(e) => Err(ClientError::Config(format!(
                "--crl {}: {e}",
                file.display()
            ))),
        }
    }

    fn offer_file(&self, file: &Path) -> Result<Offered, CrlError> {
        let pem = std::fs::read(file).map_err(|e| CrlError::Parse(e.to_string()))?;
        let crl = Crl::from_pem(&pem)?;
        let r = self.offer(crl.der(), unix_now());
        log(&file.display().to_string(), &r);
        r
    }

    /// Re-read the `--crl` file, if any (an operator may have dropped in a
    /// newer one); problems are logged, the CRL held stays.
    pub fn refresh_file(&self) {
        if let Some(f) = &self.file {
            let _ = self.offer_file(f);
        }
    }

    /// Offer a DER CRL at time `now` (Unix seconds); see the module docs.
    pub fn offer(&self, der: &[u8], now: i64) -> Result<Offered, CrlError> {
        let crl = Crl::verified(der, &self.ca_pem)?;
        crl.check_fresh(now)?;
        // A poisoned lock only means another thread panicked while holding it.
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = newest.as_ref()
            && held.number() >= crl.number()
        {
            return Ok(Offered::NotNewer {
                offered: crl.number(),
                held: held.number(),
            });
        }
        let n = crl.number();
        *newest = Some(Arc::new(crl));
        Ok(Offered::Adopted(n))
    }

    /// [`offer`](Self::offer) of what the coordinator sent in `what`, logged;
    /// an empty field (a coordinator without a CRL) is no offer.
    pub fn offer_from_coordinator(&self, der: &[u8], what: &str) {
        if der.is_empty() {
            return;
        }
        let r = self.offer(der, unix_now());
        log(what, &r);
    }

    /// The newest CRL held, warning if it has expired.
    pub fn current(&self) -> Option<Arc<Crl>> {
        let crl = self
            .newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if crl.is_expired(unix_now()) {
            warn!(
                number = crl.number(),
                "the newest CRL this site has is EXPIRED; still enforced. The CA operator must run `confide certs crl`"
            );
        }
        Some(crl)
    }

    /// The newest CRL as rustls takes it (none: empty).
    pub fn rustls_crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.current()
            .map(|c| vec![c.to_rustls()])
            .unwrap_or_default()
    }
}

fn log(source: &str, r: &Result<Offered, CrlError>) {
    match r {
        Ok(Offered::Adopted(n)) => info!(source, number = n, "CRL adopted"),
        Ok(Offered::NotNewer { .. }) => {}
        Err(e @ CrlError::Expired { .. }) => {
            warn!(source, error = %e, "expired CRL refused")
        }
        Err(e) => warn!(source, error = %e, "CRL refused"),
    }
}
