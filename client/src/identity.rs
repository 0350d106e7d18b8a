//! Binding neighbours' signing keys to federation certificates.
//!
//! Under mTLS the coordinator relays, with each neighbour's signed key advert,
//! the certificate that neighbour presented. Before using the advert's keys a
//! site checks, with [`CertificateVerifier`]:
//!
//! ```text
//!  relayed (site, verifying_key, certificate DER)
//!     │ 1. certificate chains to the federation CA, is valid now, is for client auth,
//!     │    and is not revoked by the newest CRL this site holds                   (webpki)
//!     │ 2. its DNS name is the relayed site name                                  (webpki)
//!     │ 3. its `confide:vk:<suite>:<hex>` SAN equals the relayed verifying key     (x509-parser)
//!     │ 4. no other member of this round relayed the same site
//!     ▼
//!  VerifyingKey ──▶ SiteMachine checks the advert signature with it
//! ```
//!
//! Any failure is an [`IdentityVerifier`] error, on which the crypto
//! `SiteMachine` leaves that neighbour out (it never gets a share, and the
//! site names it in `rejected()`). A coordinator that substitutes a key
//! therefore needs the CA's key too. Survivor-set signatures are relayed
//! with the same identity fields and checked the same way
//! ([`unmask_request`]); masking sets travel without identity, checked with
//! the keys verified here. In insecure mode ([`verifier`] with no TLS files)
//! the relayed key is trusted as is and a warning says so.
//!
//! ```
//! use confide_client::identity::{parse_vk_uri, vk_uri};
//! use confide_crypto::Suite;
//! let uri = vk_uri(Suite::Intl, &[1, 2, 255]);
//! assert_eq!(uri, "confide:vk:intl:0102ff");
//! assert_eq!(parse_vk_uri(&uri), Some((Suite::Intl, vec![1, 2, 255])));
//! assert_eq!(parse_vk_uri("https://example.org"), None);
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use confide_crypto::protocol::{IdentityVerifier, NeighbourKeys, UnmaskRequest};
use confide_crypto::suite::VerifyingKey;
use confide_crypto::{MemberId, Suite};
use confide_proto::crl::Crl;
use confide_proto::{context, v1};
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use tracing::warn;

use crate::config::SiteConfig;
use crate::convert::{self, ConvertError};
use crate::error::ClientError;
use crate::revocation::CrlStore;

/// Trusts the verifying key the coordinator relays with each advert (insecure
/// mode: nothing binds keys to sites).
pub use confide_crypto::protocol::RelayedKeyVerifier;
// The URI format is part of the wire contract (the CA writes it, every
// neighbour reads it back), so it lives in `confide_proto::keys`.
pub use confide_proto::keys::{VK_URI_PREFIX, parse_vk_uri, vk_uri};

mod checked;
pub use checked::{CheckedCertificates, MAX_CHECKED, Validity};

/// The verifying key a certificate binds, if it carries a [`vk_uri`].
pub fn certificate_key(der: &[u8]) -> Option<(Suite, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => parse_vk_uri(u),
        _ => None,
    })
}

/// The identity material handed to the crypto machine for one relayed
/// advert: the relayed advert itself minus the advert, protobuf-encoded (it
/// never leaves this process, so the encoding only needs to round-trip).
pub fn identity_blob(r: &v1::RelayedAdvert) -> Vec<u8> {
    relayed_identity_blob(&r.verifying_key, &r.certificate, &r.site)
}

/// [`identity_blob`] from the three relayed identity fields, as every
/// relayed message (advert, masking set, survivor signature) carries them.
fn relayed_identity_blob(verifying_key: &[u8], certificate: &[u8], site: &str) -> Vec<u8> {
    v1::RelayedAdvert {
        advert: None,
        verifying_key: verifying_key.to_vec(),
        certificate: certificate.to_vec(),
        site: site.to_string(),
    }
    .encode_to_vec()
}

/// Wire → crypto for NeighbourKeys. With `authenticated` the identity of
/// each advert is the [`identity_blob`] (for [`CertificateVerifier`]);
/// otherwise the bare relayed key (for [`RelayedKeyVerifier`]).
pub fn neighbour_keys(
    nk: &v1::NeighbourKeys,
    authenticated: bool,
) -> Result<NeighbourKeys, ConvertError> {
    let mut msg = convert::neighbour_keys_from_proto(nk)?;
    if authenticated {
        // from_proto keeps the adverts in wire order.
        for (r, w) in msg.adverts.iter_mut().zip(&nk.adverts) {
            r.identity = identity_blob(w);
        }
    }
    Ok(msg)
}

/// Wire → crypto for an UnmaskRequest, with identities as in
/// [`neighbour_keys`].
pub fn unmask_request(
    u: &v1::UnmaskRequest,
    authenticated: bool,
) -> Result<UnmaskRequest, ConvertError> {
    let mut msg = convert::unmask_request_from_proto(u)?;
    if authenticated {
        // from_proto keeps the signatures in wire order.
        for (r, w) in msg.signatures.iter_mut().zip(&u.signatures) {
            r.identity = relayed_identity_blob(&w.verifying_key, &w.certificate, &w.site);
        }
    }
    Ok(msg)
}

/// The CA fingerprint this site binds into every round's context
/// ([`confide_proto::context`]): SHA-256 of its federation CA certificate's
/// DER when the connection uses TLS, else [`context::NO_CA`] — the
/// coordinator's choice without TLS too, so plaintext test federations agree.
pub fn ca_fingerprint(cfg: &SiteConfig) -> Result<[u8; 32], ClientError> {
    let Some(tls) = cfg.tls_in_use() else {
        return Ok(context::NO_CA);
    };
    let pem = std::fs::read(&tls.ca).map_err(|source| ClientError::CertFile {
        path: tls.ca.clone(),
        source,
    })?;
    context::ca_fingerprint_pem(&pem)
        .map_err(|e| ClientError::Config(format!("{}: {e}", tls.ca.display())))
}

/// Checks relayed identities against the federation CA and its CRL (see the
/// module docs). One per round: it remembers which site each member relayed.
pub struct CertificateVerifier {
    suite: Suite,
    ca: TrustAnchor<'static>,
    /// SHA-256 of the CA certificate and of the CRL (zeros: none), which
    /// [`CheckedCertificates`] entries are keyed under.
    anchor: [u8; 32],
    crl_id: [u8; 32],
    crl: Option<webpki::CertRevocationList<'static>>,
    now: UnixTime,
    seen: Mutex<HashMap<String, MemberId>>,
    checked: Option<Arc<CheckedCertificates>>,
}

impl std::fmt::Debug for CertificateVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateVerifier")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl CertificateVerifier {
    /// Trust the CA certificate in `ca_pem` (the first certificate in it).
    pub fn from_ca_pem(suite: Suite, ca_pem: &[u8]) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(ca_pem)
            .map_err(|e| format!("federation CA is not a PEM certificate: {e}"))?;
        let ca = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| format!("federation CA certificate unusable: {e}"))?
            .to_owned();
        Ok(CertificateVerifier {
            suite,
            ca,
            anchor: context::sha256(&der),
            crl_id: [0; 32],
            crl: None,
            now: UnixTime::now(),
            seen: Mutex::new(HashMap::new()),
            checked: None,
        })
    }

    /// Remember certificates that pass the CA, validity and revocation
    /// checks in `checked`, and skip those checks for one found there
    /// (same bytes, CA and CRL; still valid now).
    pub fn with_checked(mut self, checked: Arc<CheckedCertificates>) -> Self {
        self.checked = Some(checked);
        self
    }

    /// Also refuse certificates `crl` revokes (a CRL of the federation CA,
    /// already verified: [`CrlStore`](crate::revocation::CrlStore) only holds
    /// such). Revocation status is then required for every relayed
    /// certificate; an expired CRL is still enforced.
    pub fn with_crl(mut self, crl: Option<&Crl>) -> Result<Self, String> {
        self.crl_id = crl.map_or([0; 32], |c| context::sha256(c.der()));
        self.crl = match crl {
            Some(c) => Some(
                webpki::OwnedCertRevocationList::from_der(c.der())
                    .map_err(|e| format!("CRL unusable: {e}"))?
                    .into(),
            ),
            None => None,
        };
        Ok(self)
    }

    /// Read the CA from a PEM file.
    pub fn from_ca_file(suite: Suite, path: &Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(path).map_err(|source| ClientError::CertFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_ca_pem(suite, &pem).map_err(ClientError::Config)
    }

    /// The CA's signature, the validity window, client-auth usage and the CRL.
    fn verify_chain(
        &self,
        member: MemberId,
        site: &str,
        cert: &webpki::EndEntityCert<'_>,
    ) -> Result<(), String> {
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crl.iter().collect();
        let revocation = match webpki::RevocationOptionsBuilder::new(&crls) {
            Ok(b) => Some(b.build()),
            // No CRL held yet: nothing is known to be revoked.
            Err(_) => None,
        };
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&self.ca),
            &[],
            self.now,
            webpki::KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertRevoked => {
                format!("member {member}: certificate of {site:?} is revoked by the federation CRL")
            }
            e => format!(
                "member {member}: certificate for {site:?} is not issued by the federation CA: {e}"
            ),
        })?;
        Ok(())
    }

    fn check(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String> {
        let r = v1::RelayedAdvert::decode(identity)
            .map_err(|e| format!("member {member}: malformed relayed identity: {e}"))?;
        if r.certificate.is_empty() {
            return Err(format!(
                "member {member} ({:?}): the coordinator relayed no certificate",
                r.site
            ));
        }
        let der = CertificateDer::from(r.certificate.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| format!("member {member}: relayed certificate unparsable: {e}"))?;
        let key = checked::entry_key(&self.anchor, &self.crl_id, &r.certificate);
        let now = i64::try_from(self.now.as_secs()).unwrap_or(i64::MAX);
        if !self.checked.as_ref().is_some_and(|c| c.holds(&key, now)) {
            self.verify_chain(member, &r.site, &cert)?;
            if let (Some(c), Some(v)) = (&self.checked, Validity::of(&r.certificate)) {
                c.insert(key, v);
            }
        }
        let name = ServerName::try_from(r.site.as_str())
            .map_err(|_| format!("member {member}: relayed site name {:?} invalid", r.site))?;
        cert.verify_is_valid_for_subject_name(&name).map_err(|e| {
            format!(
                "member {member}: certificate is not for site {:?}: {e}",
                r.site
            )
        })?;
        let (suite, key) = certificate_key(&r.certificate).ok_or_else(|| {
            format!(
                "member {member}: certificate of {:?} binds no verifying key",
                r.site
            )
        })?;
        if suite != self.suite {
            return Err(format!(
                "member {member}: certificate of {:?} binds a {suite} key, the round uses {}",
                r.site, self.suite
            ));
        }
        if key != r.verifying_key {
            return Err(format!(
                "member {member}: relayed verifying key of {:?} is not the one in its certificate",
                r.site
            ));
        }
        // One site, one member per round: otherwise a coordinator could count
        // one site's certificate twice towards the threshold.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&r.site) {
            Some(&m) if m != member => {
                return Err(format!(
                    "site {:?} relayed as both member {m} and member {member}",
                    r.site
                ));
            }
            _ => {
                seen.insert(r.site.clone(), member);
            }
        }
        Ok(VerifyingKey::from_bytes(suite, &key))
    }
}

impl IdentityVerifier for CertificateVerifier {
    fn verifying_key(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String> {
        self.check(member, identity)
    }
}

/// Whether `cfg` authenticates neighbours through certificates (mTLS
/// configured and not insecure).
pub fn authenticated(cfg: &SiteConfig) -> bool {
    !cfg.insecure && cfg.tls.is_some()
}

/// The verifier for one round: certificates under mTLS, checked against
/// `crl` (the newest this site holds) too; the bare relayed key (with a
/// warning: neighbours are then unauthenticated) otherwise.
pub fn verifier(
    cfg: &SiteConfig,
    suite: Suite,
    crl: Option<&Crl>,
    checked: &Arc<CheckedCertificates>,
) -> Result<Arc<dyn IdentityVerifier>, ClientError> {
    match (&cfg.tls, authenticated(cfg)) {
        (Some(tls), true) => Ok(Arc::new(
            CertificateVerifier::from_ca_file(suite, &tls.ca)?
                .with_crl(crl)
                .map_err(ClientError::Config)?
                .with_checked(checked.clone()),
        )),
        _ => {
            warn!(
                "insecure mode: neighbours' keys are trusted as relayed by the coordinator (unauthenticated)"
            );
            Ok(Arc::new(RelayedKeyVerifier { suite }))
        }
    }
}

/// The site's CRL store under mTLS (`None` otherwise): the federation CA's,
/// seeded from `cfg.crl` when given.
pub fn crl_store(cfg: &SiteConfig) -> Result<Option<Arc<CrlStore>>, ClientError> {
    let Some(tls) = cfg.tls.as_ref().filter(|_| authenticated(cfg)) else {
        return Ok(None);
    };
    let ca = std::fs::read(&tls.ca).map_err(|source| ClientError::CertFile {
        path: tls.ca.clone(),
        source,
    })?;
    Ok(Some(Arc::new(match &cfg.crl {
        Some(f) => CrlStore::with_file(&ca, f)?,
        None => CrlStore::new(&ca),
    })))
}

#[cfg(test)]
mod tests;
