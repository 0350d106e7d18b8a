//! Admission control under mTLS: who the peer certificate says it is, the
//! federation's allow-list, the CRL (re-read when its file changes, without
//! a restart: [`Revocation`]) and the join-rate limit.
//!
//! ```text
//! request ─▶ PeerCert::from_der (name, serial, bound key)
//!         ─▶ Access::check: serial in the CRL? (stat crl.pem; reload on change) ─▶ allowed? ─▶ handler
//! Join    ─▶ JoinLimiter::try_take (token bucket) ─▶ check_join_key: key in cert == key in Join
//! ```
//!
//! The TLS layer (rustls) has already verified the chain to the federation CA
//! and the CRL of the handshake's time before any of this runs; the CRL is
//! checked again here so that a peer connected before its revocation is
//! refused on its next call.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use confide_crypto::Suite;

use crate::certs;
use crate::revocation::Revocation;

/// What the coordinator needs from a verified peer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// First DNS SAN, else the CN: the site name (or `operator-NAME`).
    pub name: String,
    /// Serial, lowercase hex without separators.
    pub serial: String,
    /// The verifying key bound by a `confide:vk:` SAN URI, if any.
    pub verifying_key: Option<(Suite, Vec<u8>)>,
    /// Whether the CA gave it the operator role ([`certs::OPERATOR_ROLE_URI`]);
    /// the name alone never makes an operator.
    pub operator: bool,
    /// The certificate itself (relayed to neighbours with key adverts).
    pub der: Vec<u8>,
}

impl PeerCert {
    /// Parse a DER certificate; `None` if it is not X.509 or names nobody.
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut name = None;
        let mut verifying_key = None;
        let mut operator = false;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) if name.is_none() => {
                        name = Some((*d).to_string());
                    }
                    x509_parser::extensions::GeneralName::URI(u)
                        if *u == certs::OPERATOR_ROLE_URI =>
                    {
                        operator = true;
                    }
                    x509_parser::extensions::GeneralName::URI(u) => {
                        if let Some(k) = certs::parse_vk_uri(u) {
                            verifying_key = Some(k);
                        }
                    }
                    _ => {}
                }
            }
        }
        let name = name.or_else(|| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)
        })?;
        Some(PeerCert {
            name,
            serial: hex::encode(cert.raw_serial()),
            verifying_key,
            operator,
            der: der.to_vec(),
        })
    }
}

/// Why a peer is refused (each maps to PERMISSION_DENIED with this text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No client certificate was presented.
    #[error("no client certificate with a site name was presented")]
    NoCertificate,
    /// The certificate's serial is in the federation's CRL.
    #[error("certificate of {name:?} (serial {serial}) is revoked")]
    Revoked {
        /// Name in the certificate.
        name: String,
        /// Its serial.
        serial: String,
    },
    /// An Admin call from a certificate without the operator role.
    #[error(
        "certificate of {0:?} is not an operator certificate (issue one with `confide certs issue --operator`)"
    )]
    NotOperator(String),
    /// A site call from an operator certificate.
    #[error("certificate of {0:?} is an operator's; it cannot take part as a site")]
    OperatorAsSite(String),
    /// The site is not in `tls.allowed_sites`.
    #[error("site {0:?} is not in this federation's allow-list (tls.allowed_sites)")]
    NotAllowed(String),
    /// The CRL file exists but cannot be read, parsed or verified: fail closed.
    #[error("CRL unusable, refusing everyone until it is fixed: {0}")]
    RevocationUnreadable(String),
}

/// Why a Join's verifying key is refused (PERMISSION_DENIED with this text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyBindingRefusal {
    /// The certificate binds a key, but not the one in Join (or not of the
    /// federation's suite).
    #[error("the verifying key in Join is not the {suite} key bound to {site}'s certificate")]
    Mismatch {
        /// Site named by the certificate.
        site: String,
        /// The federation's suite, as configured.
        suite: String,
    },
    /// Secure aggregation is on and the certificate binds no key at all.
    #[error(
        "{site}'s certificate carries no confide:vk SAN; reissue it with `confide certs issue --site`"
    )]
    Unbound {
        /// Site named by the certificate.
        site: String,
    },
}

/// The Join key-binding rule: the verifying key a site advertises in Join
/// must be the `suite` key its certificate binds (`confide:vk` SAN).
///
/// Neighbours only accept adverts signed with the key the CA bound to the
/// site's name, so a mismatch is refused at Join with a clear status instead
/// of letting every round abort later. `cert` is `None` in insecure mode,
/// where nothing is bound and everything passes; a certificate without a
/// binding passes only when secure aggregation is off, since then no advert
/// is ever signed.
pub fn check_join_key(
    cert: Option<&PeerCert>,
    advertised: &[u8],
    suite: &str,
    secure_aggregation: bool,
) -> Result<(), KeyBindingRefusal> {
    let Some(c) = cert else {
        return Ok(());
    };
    // An unparsable configured suite can match no bound key.
    let suite_v = suite.parse::<Suite>().ok();
    match &c.verifying_key {
        Some((s, k)) if Some(*s) == suite_v && k.as_slice() == advertised => Ok(()),
        Some(_) => Err(KeyBindingRefusal::Mismatch {
            site: c.name.clone(),
            suite: suite.to_string(),
        }),
        None if secure_aggregation => Err(KeyBindingRefusal::Unbound {
            site: c.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The allow-list and the CRL.
#[derive(Debug)]
pub struct Access {
    allowed: BTreeSet<String>,
    revocation: Option<Arc<Revocation>>,
}

impl Access {
    /// `allowed` empty = any site with a certificate from the federation CA;
    /// `revocation` none = nothing is revoked (insecure mode).
    pub fn new(allowed: &[String], revocation: Option<Arc<Revocation>>) -> Self {
        Access {
            allowed: allowed.iter().cloned().collect(),
            revocation,
        }
    }

    /// The CRL enforced, if any.
    pub fn revocation(&self) -> Option<&Arc<Revocation>> {
        self.revocation.as_ref()
    }

    /// Admit `peer` as a site (`operator = false`) or as an operator.
    pub fn check(&self, peer: &PeerCert, operator: bool) -> Result<(), Refusal> {
        if let Some(r) = &self.revocation {
            // The serial came from our own parser as hex; the CRL compares values.
            let raw = hex::decode(&peer.serial).unwrap_or_default();
            if r.is_revoked(&raw).map_err(Refusal::RevocationUnreadable)? {
                return Err(Refusal::Revoked {
                    name: peer.name.clone(),
                    serial: peer.serial.clone(),
                });
            }
        }
        match (operator, peer.operator) {
            (true, false) => return Err(Refusal::NotOperator(peer.name.clone())),
            (false, true) => return Err(Refusal::OperatorAsSite(peer.name.clone())),
            _ => {}
        }
        if !operator && !self.allowed.is_empty() && !self.allowed.contains(&peer.name) {
            return Err(Refusal::NotAllowed(peer.name.clone()));
        }
        Ok(())
    }
}

/// A global token bucket for Join: `rate` tokens per second up to `burst`.
/// Global rather than per source address because sites sit behind NATs and
/// proxies; it bounds the cost of a join flood, not who gets in.
#[derive(Debug)]
pub struct JoinLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl JoinLimiter {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        JoinLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Take a token at `now`; `false` if the bucket is empty.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(name: &str, serial: &str) -> PeerCert {
        PeerCert {
            name: name.into(),
            serial: serial.into(),
            verifying_key: None,
            operator: false,
            der: vec![],
        }
    }

    #[test]
    fn allow_list_applies_to_sites_only() {
        let a = Access::new(&["a".into(), "b".into()], None);
        assert_eq!(a.check(&peer("a", "0a1b"), false), Ok(()));
        assert_eq!(
            a.check(&peer("c", "01"), false),
            Err(Refusal::NotAllowed("c".into()))
        );
        assert_eq!(a.check(&peer("b", "02"), false), Ok(()));
        // Operators are not subject to the site allow-list.
        let op = PeerCert {
            operator: true,
            ..peer("operator-x", "03")
        };
        assert_eq!(a.check(&op, true), Ok(()));
        // The role, not the name: a site certificate named like an operator
        // gets no Admin access, and an operator certificate is no site.
        assert_eq!(
            a.check(&peer("operator-x", "04"), true),
            Err(Refusal::NotOperator("operator-x".into()))
        );
        let op_a = PeerCert {
            operator: true,
            ..peer("a", "05")
        };
        assert_eq!(
            a.check(&op_a, false),
            Err(Refusal::OperatorAsSite("a".into()))
        );
    }

    fn bound(key: Option<(Suite, Vec<u8>)>) -> PeerCert {
        PeerCert {
            verifying_key: key,
            ..peer("hospital-a", "01")
        }
    }

    #[test]
    fn join_key_matching_the_certificate_is_admitted() {
        let c = bound(Some((Suite::Intl, vec![7; 32])));
        assert_eq!(check_join_key(Some(&c), &[7; 32], "intl", true), Ok(()));
        assert_eq!(check_join_key(Some(&c), &[7; 32], "intl", false), Ok(()));
    }

    #[test]
    fn join_key_differing_from_the_certificate_is_refused() {
        let c = bound(Some((Suite::Intl, vec![7; 32])));
        let mismatch = Err(KeyBindingRefusal::Mismatch {
            site: "hospital-a".into(),
            suite: "intl".into(),
        });
        assert_eq!(check_join_key(Some(&c), &[8; 32], "intl", true), mismatch);
        // The right bytes under another suite are another key.
        let gm = Err(KeyBindingRefusal::Mismatch {
            site: "hospital-a".into(),
            suite: "gm".into(),
        });
        assert_eq!(check_join_key(Some(&c), &[7; 32], "gm", true), gm);
        assert_eq!(
            check_join_key(Some(&c), &[8; 32], "intl", false),
            mismatch,
            "a bound key is checked even without secure aggregation"
        );
    }

    #[test]
    fn certificate_without_a_binding_is_refused_only_under_secure_aggregation() {
        let c = bound(None);
        assert_eq!(
            check_join_key(Some(&c), &[7; 32], "intl", true),
            Err(KeyBindingRefusal::Unbound {
                site: "hospital-a".into()
            })
        );
        assert_eq!(check_join_key(Some(&c), &[7; 32], "intl", false), Ok(()));
    }

    #[test]
    fn insecure_mode_has_no_binding_to_check() {
        assert_eq!(check_join_key(None, &[7; 32], "intl", true), Ok(()));
    }

    #[test]
    fn join_bucket_refills_at_the_configured_rate() {
        let l = JoinLimiter::new(2.0, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.try_take(t0)));
        assert!(!l.try_take(t0));
        assert!(l.try_take(t0 + Duration::from_millis(600)));
        assert!(!l.try_take(t0 + Duration::from_millis(600)));
    }
}
