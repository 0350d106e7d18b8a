//! Certificates this site has already checked against the federation CA,
//! so that a neighbour's certificate costs one CA signature check while it
//! stays the same, not one per stage of every round.
//!
//! A neighbour's certificate arrives with its advert and again with its
//! survivor signature, every round; checking the CA's signature on it was
//! about a tenth of a site's CPU in a 100-site round. What a full check
//! established depends only on the certificate's bytes, the CA, the CRL and
//! the time, so the entry's key covers the first three and the entry keeps
//! the certificate's validity window for the fourth. The name, the bound
//! key and one-member-per-site are still checked on every use.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Entries kept at most; the whole cache is dropped when it is full (a
/// federation's sites number far fewer).
pub const MAX_CHECKED: usize = 4096;

/// Checked certificates, shared by a site's rounds.
#[derive(Debug, Default)]
pub struct CheckedCertificates {
    entries: Mutex<HashMap<[u8; 32], Validity>>,
}

/// Seconds since the Unix epoch, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

impl Validity {
    /// The window of certificate `der`, if it parses.
    pub fn of(der: &[u8]) -> Option<Validity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        Some(Validity {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }

    fn covers(self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// What a check of one certificate under one CA and CRL is remembered by.
pub fn entry_key(anchor: &[u8; 32], crl: &[u8; 32], cert: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"confide/v1/checked-certificate")
        .chain_update(anchor)
        .chain_update(crl)
        .chain_update(cert)
        .finalize()
        .into()
}

impl CheckedCertificates {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `key` passed a full check and its certificate is valid at `now`.
    pub fn holds(&self, key: &[u8; 32], now: i64) -> bool {
        self.lock().get(key).is_some_and(|v| v.covers(now))
    }

    /// Remember that `key` passed a full check.
    pub fn insert(&self, key: [u8; 32], validity: Validity) {
        let mut e = self.lock();
        if e.len() >= MAX_CHECKED {
            e.clear();
        }
        e.insert(key, validity);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Validity>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_holds_only_inside_its_window_and_for_its_own_key() {
        let c = CheckedCertificates::new();
        let k = entry_key(&[1; 32], &[0; 32], b"cert");
        c.insert(
            k,
            Validity {
                not_before: 100,
                not_after: 200,
            },
        );
        assert!(c.holds(&k, 100) && c.holds(&k, 200));
        assert!(!c.holds(&k, 99) && !c.holds(&k, 201));
        // Another CRL, another CA or other bytes: a different entry.
        for other in [
            entry_key(&[1; 32], &[9; 32], b"cert"),
            entry_key(&[2; 32], &[0; 32], b"cert"),
            entry_key(&[1; 32], &[0; 32], b"cert2"),
        ] {
            assert_ne!(other, k);
            assert!(!c.holds(&other, 150));
        }
    }

    #[test]
    fn a_full_cache_starts_again() {
        let c = CheckedCertificates::new();
        let v = Validity {
            not_before: 0,
            not_after: 10,
        };
        for i in 0..MAX_CHECKED as u32 {
            c.insert(entry_key(&[0; 32], &[0; 32], &i.to_be_bytes()), v);
        }
        assert_eq!(c.len(), MAX_CHECKED);
        c.insert(entry_key(&[0; 32], &[0; 32], b"one more"), v);
        assert_eq!(c.len(), 1);
    }
}
