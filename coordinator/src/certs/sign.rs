//! `confide certs sign`: the CA side of enrolment. A site creates its keys
//! and a PKCS#10 request on its own machine (`confide-site init`); the CA
//! checks the request and issues a certificate for the request's public key.
//!
//! ```text
//! NAME.csr ─▶ parse + verify self-signature (rcgen / x509-parser)
//!          ─▶ exactly one DNS name (= --site if given) and one confide:vk URI of --suite,
//!             a key of that suite; nothing else asked for (no operator role, no IPs)
//!          ─▶ certificate built by the CA from scratch: its names, its usages, its
//!             validity; only the public key comes from the request
//!          ─▶ sites/NAME.pem (the CA's record, for revocation) + the copy to send back
//! ```
//!
//! The CA never sees a site private key, so whoever runs it (or the
//! coordinator) cannot sign adverts as a site or open shares sealed to it.

use std::fs;
use std::path::{Path, PathBuf};

use confide_crypto::Suite;
use confide_crypto::suite::VerifyingKey;
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, SanType, SerialNumber,
    string::Ia5String,
};
use sha2::{Digest, Sha256};

use super::{check_name, err, issuer, leaf, parse_vk_uri, vk_uri, write_public};
use crate::error::CoordinatorError;

/// Default validity of a site certificate; sites rotate before it ends
/// (`confide-site init --rotate`).
pub const DEFAULT_SITE_DAYS: u32 = 365;

/// What [`sign_request`] is told besides the request.
#[derive(Clone, Debug)]
pub struct SignOptions {
    /// The federation's suite: the request's verifying key must be of it.
    pub suite: Suite,
    /// The name the CA expects (as agreed out of band); `None` takes the
    /// request's name after checking it.
    pub site: Option<String>,
    /// Days the certificate is valid for.
    pub days: u32,
    /// Replace an existing certificate of the same name (key rotation). The
    /// old one is kept as `sites/NAME.<serial>.pem` so it can be revoked
    /// once the new one is in use.
    pub rotate: bool,
}

/// A certificate [`sign_request`] issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The site name it certifies.
    pub site: String,
    /// `sites/NAME.pem` in the CA directory (send this file to the site).
    pub certificate: PathBuf,
    /// SHA-256 of the request's DER, to compare with the fingerprint
    /// `confide-site init` printed at the site (read out over the phone).
    pub request_sha256: String,
    /// Serial of the new certificate (lowercase hex).
    pub serial: String,
    /// The certificate this one replaced (rotation), as retired in the CA directory.
    pub replaced: Option<PathBuf>,
}

/// SHA-256 of a PEM request's DER, lowercase hex (what both sides print).
pub fn request_fingerprint(csr_pem: &str) -> Result<String, CoordinatorError> {
    let der = pem_der(csr_pem)?;
    Ok(hex::encode(Sha256::digest(der)))
}

fn pem_der(text: &str) -> Result<Vec<u8>, CoordinatorError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(text.as_bytes())
        .map(|d| d.as_ref().to_vec())
        .map_err(|e| err(format!("not a PEM CERTIFICATE REQUEST: {e}")))
}

/// Check a site's certificate request and issue its certificate in `dir`
/// (see the module docs). Nothing is written when any check fails.
pub fn sign_request(
    dir: &Path,
    csr_pem: &str,
    opts: &SignOptions,
) -> Result<Signed, CoordinatorError> {
    let request_sha256 = request_fingerprint(csr_pem)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        err(format!(
            "not a valid certificate request, or its self-signature does not verify: {e}"
        ))
    })?;
    let (name, key) = requested_identity(&csr.params.subject_alt_names)?;
    check_name(&name)?;
    if let Some(want) = &opts.site
        && *want != name
    {
        return Err(err(format!(
            "the request is for site {name:?}, not {want:?}; refusing to sign"
        )));
    }
    if let Some(cn) = csr
        .params
        .distinguished_name
        .get(&rcgen::DnType::CommonName)
    {
        let cn = cn_text(cn).unwrap_or_default();
        if cn != name {
            return Err(err(format!(
                "the request's common name {cn:?} differs from its DNS name {name:?}"
            )));
        }
    }
    let (suite, vk) = key;
    if suite != opts.suite {
        return Err(err(format!(
            "the request binds a {suite} signing key; this federation's suite is {}",
            opts.suite
        )));
    }
    VerifyingKey::parse(suite, &vk).map_err(|e| {
        err(format!(
            "the request's {suite} verifying key is not a valid key: {e}"
        ))
    })?;
    if opts.days == 0 {
        return Err(err("a certificate must be valid for at least one day"));
    }

    let issuer = issuer(dir, &crate::ca_key::CaKeySource::recorded(dir)?)?;
    let sites = dir.join("sites");
    fs::create_dir_all(&sites)?;
    let pem_path = sites.join(format!("{name}.pem"));
    let existing = pem_path.exists();
    if existing && !opts.rotate {
        return Err(err(format!(
            "{} already exists; pass --rotate to replace {name}'s certificate (the old one is kept for revocation)",
            pem_path.display()
        )));
    }

    let mut params = leaf(
        std::slice::from_ref(&name),
        &name,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from(vk_uri(suite, &vk)).map_err(CoordinatorError::Certificate)?,
    ));
    let now = time::OffsetDateTime::now_utc();
    // A little back-dating absorbs clock skew between CA and verifiers.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(opts.days));
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(CoordinatorError::Certificate)?;

    let replaced = if existing {
        let old_serial = super::crl::file_serial(&pem_path).unwrap_or_else(|_| "unknown".into());
        let retired = sites.join(format!("{name}.{old_serial}.pem"));
        fs::rename(&pem_path, &retired)?;
        Some(retired)
    } else {
        None
    };
    write_public(&pem_path, cert.pem().as_bytes())?;
    Ok(Signed {
        site: name,
        certificate: pem_path,
        request_sha256,
        serial: super::crl::serial_hex(&serial),
        replaced,
    })
}

fn cn_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A positive 16-byte serial: unique without a counter the CA must keep.
fn random_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] &= 0x7f;
    // DER integers are minimal; a leading zero byte would change the encoding.
    s[0] |= 0x01;
    s
}

/// The one site name and the one verifying key a request asks for; anything
/// else in its SANs (IP addresses, other URIs, the operator role) is refused
/// rather than silently dropped, so the site learns what its request said.
fn requested_identity(sans: &[SanType]) -> Result<(String, (Suite, Vec<u8>)), CoordinatorError> {
    let mut name = None;
    let mut key = None;
    for san in sans {
        match san {
            SanType::DnsName(d) => {
                if name.replace(d.as_str().to_string()).is_some() {
                    return Err(err("the request names more than one site (DNS names)"));
                }
            }
            SanType::URI(u) if u.as_str() == confide_proto::keys::OPERATOR_ROLE_URI => {
                return Err(err(
                    "the request asks for the operator role; operator certificates are issued with `confide certs issue --operator`",
                ));
            }
            SanType::URI(u) => {
                let k = parse_vk_uri(u.as_str()).ok_or_else(|| {
                    err(format!(
                        "the request carries a URI {:?} that is not a confide:vk key",
                        u.as_str()
                    ))
                })?;
                if key.replace(k).is_some() {
                    return Err(err("the request binds more than one verifying key"));
                }
            }
            other => {
                return Err(err(format!(
                    "the request asks for a name Confide does not issue: {other:?}"
                )));
            }
        }
    }
    let name = name.ok_or_else(|| err("the request names no site (no DNS name)"))?;
    let key = key.ok_or_else(|| {
        err("the request binds no verifying key (no confide:vk URI); create it with `confide-site init`")
    })?;
    Ok((name, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_crypto::suite::SigningKey;
    use rcgen::{CertificateParams, DnType, KeyPair};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A request as a site makes it, with `sans` instead of the usual names.
    fn request(cn: &str, sans: Vec<SanType>) -> Result<String, Box<dyn std::error::Error>> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        Ok(p.serialize_request(&KeyPair::generate()?)?.pem()?)
    }

    fn dns(n: &str) -> Result<SanType, Box<dyn std::error::Error>> {
        Ok(SanType::DnsName(Ia5String::try_from(n)?))
    }

    fn uri(u: &str) -> Result<SanType, Box<dyn std::error::Error>> {
        Ok(SanType::URI(Ia5String::try_from(u)?))
    }

    fn vk(suite: Suite) -> Vec<u8> {
        SigningKey::generate(suite, &mut rand::rng())
            .verifying_key()
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default()
    }

    fn opts(suite: Suite, site: Option<&str>) -> SignOptions {
        SignOptions {
            suite,
            site: site.map(str::to_string),
            days: 30,
            rotate: false,
        }
    }

    fn ca() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        super::super::init(tmp.path(), "test", &[], &crate::ca_key::CaKeySource::File)?;
        Ok(tmp)
    }

    #[test]
    fn a_good_request_is_signed_for_its_key_with_the_cas_own_fields() -> TestResult {
        let ca = ca()?;
        for suite in Suite::ALL {
            let name = format!("hospital-{suite}");
            let key = vk(suite);
            let csr = request(&name, vec![dns(&name)?, uri(&vk_uri(suite, &key))?])?;
            let s = sign_request(ca.path(), &csr, &opts(suite, Some(&name)))?;
            assert_eq!(s.site, name);
            assert_eq!(s.request_sha256, request_fingerprint(&csr)?);
            let pem = fs::read_to_string(&s.certificate)?;
            let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())?.1.contents;
            let peer = crate::access::PeerCert::from_der(&der).ok_or("unparsable")?;
            assert_eq!(peer.name, name);
            assert_eq!(peer.verifying_key, Some((suite, key)));
            assert!(!peer.operator);
            assert_eq!(peer.serial, s.serial);
            let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
            let days = (cert.validity().not_after.timestamp()
                - cert.validity().not_before.timestamp())
                / 86_400;
            assert_eq!(days, 30, "validity is the CA's choice");
            // The request's public key is the one certified.
            let req = CertificateSigningRequestParams::from_pem(&csr)?;
            assert_eq!(
                cert.public_key().raw,
                rcgen::PublicKeyData::subject_public_key_info(&req.public_key)
            );
        }
        // Only public material was written.
        let names: Vec<String> = fs::read_dir(ca.path().join("sites"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert!(names.iter().all(|n| n.ends_with(".pem")), "{names:?}");
        Ok(())
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason_and_nothing_is_written() -> TestResult {
        let ca = ca()?;
        let key = vk(Suite::Intl);
        let good_uri = vk_uri(Suite::Intl, &key);
        let cases: Vec<(String, SignOptions, &str)> = vec![
            (
                request("bank-a", vec![dns("bank-a")?, uri(&good_uri)?])?,
                opts(Suite::Intl, Some("bank-b")),
                "not \"bank-b\"",
            ),
            (
                request("bank-a", vec![dns("bank-a")?, uri(&good_uri)?])?,
                opts(Suite::Gm, None),
                "suite is gm",
            ),
            (
                request(
                    "bank-a",
                    vec![dns("bank-a")?, uri(&vk_uri(Suite::Gm, &[4; 65]))?],
                )?,
                opts(Suite::Gm, None),
                "not a valid key",
            ),
            (
                request("bank-a", vec![dns("bank-a")?])?,
                opts(Suite::Intl, None),
                "binds no verifying key",
            ),
            (
                request(
                    "bank-a",
                    vec![dns("bank-a")?, dns("bank-c")?, uri(&good_uri)?],
                )?,
                opts(Suite::Intl, None),
                "more than one site",
            ),
            (
                request(
                    "bank-a",
                    vec![
                        dns("bank-a")?,
                        uri(&good_uri)?,
                        uri(confide_proto::keys::OPERATOR_ROLE_URI)?,
                    ],
                )?,
                opts(Suite::Intl, None),
                "operator role",
            ),
            (
                request(
                    "bank-a",
                    vec![
                        dns("bank-a")?,
                        uri(&good_uri)?,
                        SanType::IpAddress("10.0.0.1".parse()?),
                    ],
                )?,
                opts(Suite::Intl, None),
                "does not issue",
            ),
            (
                request("bank-x", vec![dns("bank-a")?, uri(&good_uri)?])?,
                opts(Suite::Intl, None),
                "common name",
            ),
            (
                request("../x", vec![dns("../x")?, uri(&good_uri)?])?,
                opts(Suite::Intl, None),
                "DNS label",
            ),
        ];
        for (csr, o, want) in cases {
            match sign_request(ca.path(), &csr, &o) {
                Ok(s) => panic!("signed {s:?}, wanted a refusal mentioning {want:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
            }
        }
        // A request whose body was changed after signing.
        let csr = request("bank-a", vec![dns("bank-a")?, uri(&good_uri)?])?;
        let mut tampered = x509_parser::pem::parse_x509_pem(csr.as_bytes())?.1.contents;
        // Flip a bit inside the name, well before the signature.
        let at = tampered
            .windows(6)
            .position(|w| w == b"bank-a")
            .ok_or("name not found")?;
        tampered[at + 5] ^= 0x01;
        let tampered_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
        let e = sign_request(ca.path(), &tampered_pem, &opts(Suite::Intl, None))
            .err()
            .ok_or("signed a tampered request")?;
        assert!(e.to_string().contains("self-signature"), "{e}");
        assert!(
            !ca.path().join("sites").exists()
                || fs::read_dir(ca.path().join("sites"))?.next().is_none()
        );
        Ok(())
    }

    #[test]
    fn a_second_request_for_a_name_needs_rotate_and_keeps_the_old_certificate() -> TestResult {
        let ca = ca()?;
        let mk = || -> Result<String, Box<dyn std::error::Error>> {
            request(
                "clinic",
                vec![dns("clinic")?, uri(&vk_uri(Suite::Intl, &vk(Suite::Intl)))?],
            )
        };
        let first = sign_request(ca.path(), &mk()?, &opts(Suite::Intl, None))?;
        let e = sign_request(ca.path(), &mk()?, &opts(Suite::Intl, None))
            .err()
            .ok_or("replaced a certificate without --rotate")?;
        assert!(e.to_string().contains("--rotate"), "{e}");
        let second = sign_request(
            ca.path(),
            &mk()?,
            &SignOptions {
                rotate: true,
                ..opts(Suite::Intl, None)
            },
        )?;
        let retired = second.replaced.ok_or("nothing retired")?;
        assert_eq!(
            retired,
            ca.path()
                .join("sites")
                .join(format!("clinic.{}.pem", first.serial))
        );
        assert_ne!(first.serial, second.serial);
        let listed = super::super::list(ca.path())?;
        assert_eq!(listed.iter().filter(|(k, _, _)| k == "site").count(), 1);
        Ok(())
    }
}
