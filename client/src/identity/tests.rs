use super::*;
use crate::revocation::{CrlStore, Offered};
use confide_crypto::suite::SigningKey;
use confide_proto::crl::{CrlError, unix_now};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, string::Ia5String,
};
use time::{Duration, OffsetDateTime};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn relayed_key_verifier_refuses_an_empty_key() {
    let v = RelayedKeyVerifier { suite: Suite::Gm };
    assert!(v.verifying_key(3, &[]).is_err());
    assert!(
        v.verifying_key(3, &[4; 65])
            .is_ok_and(|k| k.suite() == Suite::Gm)
    );
}

/// A federation CA that issues site certificates and CRLs, as
/// `confide certs` does (built here with rcgen directly: the client does not
/// depend on the coordinator).
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let pem = p.self_signed(&key)?.pem();
        Ok(Ca {
            pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// A site certificate with serial `serial` binding a fresh Intl key;
    /// returns (DER, verifying key).
    fn site(
        &self,
        name: &str,
        serial: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
        let vk = SigningKey::generate(Suite::Intl, &mut rand::rng())
            .verifying_key()?
            .as_bytes()
            .to_vec();
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::ExplicitNoCa;
        p.serial_number = Some(SerialNumber::from(serial));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.subject_alt_names
            .push(SanType::URI(Ia5String::try_from(vk_uri(Suite::Intl, &vk))?));
        let cert = p.signed_by(&KeyPair::generate()?, &self.issuer)?;
        Ok((cert.der().to_vec(), vk))
    }

    /// A CRL numbered `number` revoking `serials`, issued `age` ago and
    /// valid for `validity` from then.
    fn crl(
        &self,
        number: u64,
        serials: &[u64],
        age: Duration,
        validity: Duration,
    ) -> Result<Vec<u8>, rcgen::Error> {
        let this_update = OffsetDateTime::now_utc() - age;
        let p = CertificateRevocationListParams {
            this_update,
            next_update: this_update + validity,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(p.signed_by(&self.issuer)?.der().to_vec())
    }
}

fn relayed(site: &str, cert: &[u8], vk: &[u8]) -> Vec<u8> {
    identity_blob(&v1::RelayedAdvert {
        advert: None,
        verifying_key: vk.to_vec(),
        certificate: cert.to_vec(),
        site: site.into(),
    })
}

const WEEK: Duration = Duration::days(7);

/// A coordinator that relays a revoked neighbour's genuine certificate and
/// key (as a dishonest one would) does not get it past the site's CRL, and
/// cannot undo the revocation by serving an older CRL.
#[test]
fn a_revoked_neighbour_is_refused_and_older_crls_do_not_replace_newer() -> R {
    let ca = Ca::new("fed CA")?;
    let (a_cert, a_vk) = ca.site("a", 10)?;
    let (b_cert, b_vk) = ca.site("b", 11)?;
    let store = CrlStore::new(ca.pem.as_bytes());
    let old = ca.crl(1, &[], Duration::ZERO, WEEK)?;
    let new = ca.crl(2, &[11], Duration::ZERO, WEEK)?;
    let now = unix_now();
    assert_eq!(store.offer(&new, now)?, Offered::Adopted(2));
    assert_eq!(
        store.offer(&old, now)?,
        Offered::NotNewer {
            offered: 1,
            held: 2
        }
    );
    let held = store.current().ok_or("no CRL held")?;
    assert_eq!(held.number(), 2);

    let v =
        CertificateVerifier::from_ca_pem(Suite::Intl, ca.pem.as_bytes())?.with_crl(Some(&held))?;
    assert!(v.verifying_key(1, &relayed("a", &a_cert, &a_vk)).is_ok());
    match v.verifying_key(2, &relayed("b", &b_cert, &b_vk)) {
        Err(e) => assert!(e.contains("revoked"), "{e}"),
        Ok(_) => return Err("a revoked neighbour was accepted".into()),
    }
    // What the rollback would have bought: under the older CRL b passes.
    let older = Crl::verified(&old, ca.pem.as_bytes())?;
    let v_old =
        CertificateVerifier::from_ca_pem(Suite::Intl, ca.pem.as_bytes())?.with_crl(Some(&older))?;
    assert!(
        v_old
            .verifying_key(2, &relayed("b", &b_cert, &b_vk))
            .is_ok()
    );
    Ok(())
}

#[test]
fn crls_that_are_expired_or_not_the_cas_are_refused() -> R {
    let ca = Ca::new("fed CA")?;
    let store = CrlStore::new(ca.pem.as_bytes());
    let now = unix_now();
    let expired = ca.crl(5, &[], Duration::days(8), WEEK)?;
    assert!(matches!(
        store.offer(&expired, now),
        Err(CrlError::Expired { number: 5, .. })
    ));
    let evil = Ca::new("fed CA")?; // same name, another key
    let forged = evil.crl(9, &[], Duration::ZERO, WEEK)?;
    assert!(matches!(
        store.offer(&forged, now),
        Err(CrlError::Signature(_))
    ));
    assert!(matches!(
        store.offer(b"not a crl", now),
        Err(CrlError::Parse(_))
    ));
    assert!(store.current().is_none(), "nothing was adopted");
    // A CRL adopted while fresh stays in force once it expires.
    let fresh = ca.crl(6, &[1], Duration::ZERO, WEEK)?;
    store.offer(&fresh, now)?;
    assert!(
        store
            .current()
            .is_some_and(|c| c.is_expired(now + 8 * 86_400))
    );
    Ok(())
}

/// A certificate that passed the full check is remembered under its CA and
/// CRL: the entry is what skips the CA check (a planted one lets a foreign
/// certificate through, which is why only full checks insert), and a new CRL
/// or another CA checks it in full again.
#[test]
fn a_checked_certificate_is_remembered_per_ca_and_crl() -> R {
    let ca = Ca::new("fed CA")?;
    let other_ca = Ca::new("other CA")?;
    let (b_cert, b_vk) = ca.site("b", 11)?;
    let (f_cert, f_vk) = other_ca.site("f", 12)?;
    let empty = Crl::verified(&ca.crl(1, &[], Duration::ZERO, WEEK)?, ca.pem.as_bytes())?;
    let revoking = Crl::verified(&ca.crl(2, &[11], Duration::ZERO, WEEK)?, ca.pem.as_bytes())?;
    let checked = Arc::new(CheckedCertificates::new());
    let verifier = |pem: &str, crl: &Crl| -> Result<CertificateVerifier, String> {
        Ok(
            CertificateVerifier::from_ca_pem(Suite::Intl, pem.as_bytes())?
                .with_crl(Some(crl))?
                .with_checked(checked.clone()),
        )
    };

    let v = verifier(&ca.pem, &empty)?;
    assert!(v.verifying_key(1, &relayed("b", &b_cert, &b_vk)).is_ok());
    assert_eq!(checked.len(), 1);
    // Refused certificates are not remembered.
    assert!(v.verifying_key(2, &relayed("f", &f_cert, &f_vk)).is_err());
    assert_eq!(checked.len(), 1);
    // The next round's verifier finds b without a second entry.
    let v = verifier(&ca.pem, &empty)?;
    assert!(v.verifying_key(1, &relayed("b", &b_cert, &b_vk)).is_ok());
    assert_eq!(checked.len(), 1);

    // The name and the bound key are checked on every use all the same.
    let e = v
        .verifying_key(3, &relayed("c", &b_cert, &b_vk))
        .err()
        .ok_or("a remembered certificate passed for another site")?;
    assert!(e.contains("not for site"), "{e}");
    let e = v
        .verifying_key(1, &relayed("b", &b_cert, &f_vk))
        .err()
        .ok_or("a remembered certificate passed with another key")?;
    assert!(e.contains("not the one in its certificate"), "{e}");

    // A CRL that revokes b: a different entry, so b is checked and refused.
    let v = verifier(&ca.pem, &revoking)?;
    let e = v
        .verifying_key(1, &relayed("b", &b_cert, &b_vk))
        .err()
        .ok_or("a remembered certificate outlived its revocation")?;
    assert!(e.contains("revoked"), "{e}");
    // Under another CA b is not the federation's.
    let v = CertificateVerifier::from_ca_pem(Suite::Intl, other_ca.pem.as_bytes())?
        .with_checked(checked.clone());
    assert!(v.verifying_key(1, &relayed("b", &b_cert, &b_vk)).is_err());

    // The entry is the whole of the skip: plant one for the foreign
    // certificate and it passes (only full checks insert).
    let anchor = context::sha256(&CertificateDer::from_pem_slice(ca.pem.as_bytes())?);
    let crl_id = context::sha256(empty.der());
    checked.insert(
        checked::entry_key(&anchor, &crl_id, &f_cert),
        Validity::of(&f_cert).ok_or("no validity")?,
    );
    let v = verifier(&ca.pem, &empty)?;
    assert!(v.verifying_key(4, &relayed("f", &f_cert, &f_vk)).is_ok());
    Ok(())
}
