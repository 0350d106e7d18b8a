//! The federation's certificate revocation list (X.509 CRL), as the
//! coordinator and the sites read it.
//!
//! The CA operator signs it (`confide certs revoke` / `confide certs crl`);
//! the coordinator serves its DER in `JoinResponse.crl` and `RoundStart.crl`;
//! every party checks certificates against it with webpki (rustls's
//! verifiers, `verify_for_usage`). This module is the small part webpki does
//! not expose: the CRL number (so a site never goes back to an older list),
//! `nextUpdate` (so an expired list is noticed), the signature check against
//! the CA before a list is adopted, and the revoked serials for the
//! coordinator's per-request check. Parsing and the signature are
//! x509-parser's.

use std::collections::BTreeSet;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Why a CRL is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// Not a DER (or PEM) X.509 CRL.
    #[error("not an X.509 CRL: {0}")]
    Parse(String),
    /// No CRL number extension: lists could not be ordered.
    #[error("the CRL carries no CRL number")]
    NoNumber,
    /// A CRL number beyond 64 bits (Confide's CA counts from 1).
    #[error("the CRL number {0} is too large")]
    NumberTooLarge(String),
    /// The federation CA certificate is unusable.
    #[error("federation CA certificate unusable: {0}")]
    Ca(String),
    /// Issued by another name than the federation CA.
    #[error("the CRL is not issued by the federation CA")]
    Issuer,
    /// The signature does not verify under the CA's key.
    #[error("the CRL's signature does not verify under the federation CA: {0}")]
    Signature(String),
    /// Past its `nextUpdate`.
    #[error(
        "CRL number {number} expired (next update was due at {next_update} s after the epoch); \
         the CA operator must re-issue it with `confide certs crl`"
    )]
    Expired {
        /// Its CRL number.
        number: u64,
        /// Its `nextUpdate`, seconds since the Unix epoch.
        next_update: i64,
    },
}

/// A parsed CRL: its DER and the fields Confide decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    number: u64,
    this_update: i64,
    next_update: Option<i64>,
    /// Serials as unsigned big-endian bytes without leading zeros.
    revoked: BTreeSet<Vec<u8>>,
}

/// An integer's magnitude without leading zero bytes (DER serials of
/// positive numbers may carry one sign byte), so equal serials compare equal.
fn serial_key(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

fn parse(der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlError> {
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok(_) => Err(CrlError::Parse("trailing bytes after the CRL".into())),
        Err(e) => Err(CrlError::Parse(e.to_string())),
    }
}

impl Crl {
    /// Parse a DER CRL (its signature is not checked: see [`Crl::verify`]).
    pub fn from_der(der: &[u8]) -> Result<Self, CrlError> {
        let crl = parse(der)?;
        let number = crl.crl_number().ok_or(CrlError::NoNumber)?;
        let number = match number.to_u64_digits().as_slice() {
            [] => 0,
            [n] => *n,
            _ => return Err(CrlError::NumberTooLarge(number.to_string())),
        };
        Ok(Crl {
            der: der.to_vec(),
            number,
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| serial_key(r.raw_serial()))
                .collect(),
        })
    }

    /// Parse the first CRL in a PEM document.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CrlError> {
        let der = CertificateRevocationListDer::from_pem_slice(pem)
            .map_err(|e| CrlError::Parse(e.to_string()))?;
        Self::from_der(der.as_ref())
    }

    /// Parse `der` and check that the CA in `ca_pem` (its first
    /// certificate) issued and signed it.
    pub fn verified(der: &[u8], ca_pem: &[u8]) -> Result<Self, CrlError> {
        let crl = Self::from_der(der)?;
        crl.verify(ca_pem)?;
        Ok(crl)
    }

    /// Check that the CA in `ca_pem` (its first certificate) issued and
    /// signed this CRL.
    pub fn verify(&self, ca_pem: &[u8]) -> Result<(), CrlError> {
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem).map_err(|e| CrlError::Ca(e.to_string()))?;
        let (_, ca) =
            X509Certificate::from_der(ca_der.as_ref()).map_err(|e| CrlError::Ca(e.to_string()))?;
        let crl = parse(&self.der)?;
        if crl.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CrlError::Issuer);
        }
        crl.verify_signature(ca.public_key())
            .map_err(|e| CrlError::Signature(e.to_string()))
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The DER, as rustls and webpki take it.
    pub fn to_rustls(&self) -> CertificateRevocationListDer<'static> {
        CertificateRevocationListDer::from(self.der.clone())
    }

    /// The CRL number: higher is newer.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// `thisUpdate`, seconds since the Unix epoch.
    pub fn this_update(&self) -> i64 {
        self.this_update
    }

    /// `nextUpdate`, seconds since the Unix epoch, if the CRL has one.
    pub fn next_update(&self) -> Option<i64> {
        self.next_update
    }

    /// Whether the CRL is past its `nextUpdate` at `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.next_update.is_some_and(|n| now >= n)
    }

    /// [`CrlError::Expired`] if the CRL is past its `nextUpdate` at `now`.
    pub fn check_fresh(&self, now: i64) -> Result<(), CrlError> {
        match self.next_update {
            Some(next_update) if now >= next_update => Err(CrlError::Expired {
                number: self.number,
                next_update,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the certificate with this serial (DER integer content, as
    /// x509-parser's `raw_serial` gives it) is revoked.
    pub fn revokes(&self, raw_serial: &[u8]) -> bool {
        self.revoked.contains(&serial_key(raw_serial))
    }

    /// How many certificates it revokes.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }
}

/// Now, in seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_by_value() {
        assert_eq!(serial_key(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(serial_key(&[0]), Vec::<u8>::new());
    }

    #[test]
    fn garbage_is_not_a_crl() {
        assert!(matches!(Crl::from_der(b"nope"), Err(CrlError::Parse(_))));
        assert!(matches!(Crl::from_pem(b"nope"), Err(CrlError::Parse(_))));
    }
}
