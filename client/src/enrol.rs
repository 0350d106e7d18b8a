//! Enrolment: a site's keys are born on the site's machine and never leave
//! it. `confide-site init` makes the TLS key, the long-term signing key and
//! a PKCS#10 request; the CA (`confide certs sign`) returns a certificate;
//! `confide-site install-cert` checks that certificate against the site's
//! own keys and the federation CA before using it.
//!
//! ```text
//! DIR/ (0700)  NAME.key            TLS private key (0600)        ─┐ never leave DIR
//!              NAME.signing.toml   long-term signing key (0600)  ─┘
//!              NAME.csr            request: DNS NAME + confide:vk:<suite>:<hex>  ──▶ CA
//!              NAME.pem, ca.pem    from the CA, checked by install-cert          ◀── CA
//!              NAME.next.*         a rotation in progress (`init --rotate`)
//!              retired/            keys and certificates a rotation replaced
//! ```
//!
//! ```
//! use confide_client::enrol;
//! use confide_crypto::Suite;
//! let dir = tempfile::tempdir()?;
//! let e = enrol::init(dir.path(), "hospital-a", Suite::Intl, false)?;
//! assert!(e.request.ends_with("hospital-a.csr"));
//! assert_eq!(e.request_sha256.len(), 64);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use confide_crypto::Suite;
use confide_crypto::suite::SigningKey;
use confide_proto::keys;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType, string::Ia5String};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::TlsFiles;
use crate::error::ClientError;

/// The files of one site's identity in its own directory (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteFiles {
    dir: PathBuf,
    stem: String,
}

impl SiteFiles {
    /// The current identity of `site` in `dir`.
    pub fn new(dir: &Path, site: &str) -> Self {
        SiteFiles {
            dir: dir.to_path_buf(),
            stem: site.to_string(),
        }
    }

    /// The identity being prepared by a rotation.
    fn next(&self) -> Self {
        SiteFiles {
            dir: self.dir.clone(),
            stem: format!("{}.next", self.stem),
        }
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    /// TLS private key.
    pub fn key(&self) -> PathBuf {
        self.file("key")
    }
    /// Long-term signing key.
    pub fn signing_key(&self) -> PathBuf {
        self.file("signing.toml")
    }
    /// Certificate request.
    pub fn request(&self) -> PathBuf {
        self.file("csr")
    }
    /// Certificate from the CA.
    pub fn certificate(&self) -> PathBuf {
        self.file("pem")
    }
    /// Federation CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The TLS files for the transport.
    pub fn tls(&self, domain: impl Into<String>) -> TlsFiles {
        TlsFiles {
            ca: self.ca(),
            cert: self.certificate(),
            key: self.key(),
            domain: domain.into(),
        }
    }
}

/// The TLS files and signing-key file of `site` in `dir`: the site's own
/// directory from `confide-site init` (`NAME.pem`, `NAME.key`,
/// `NAME.signing.toml`, `ca.pem`; see the module docs), or a demo CA
/// directory from `confide certs issue --generate-keys-here`
/// (`sites/NAME.*`), whichever holds the site's certificate.
pub fn identity_in_dir(dir: &Path, site: &str, domain: impl Into<String>) -> (TlsFiles, PathBuf) {
    let ca_made = dir.join("sites").join(format!("{site}.pem"));
    if ca_made.exists() {
        (
            TlsFiles::from_certs_dir(dir, site, domain),
            dir.join("sites").join(format!("{site}.signing.toml")),
        )
    } else {
        let f = SiteFiles::new(dir, site);
        (f.tls(domain), f.signing_key())
    }
}

/// What [`init`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolment {
    /// The request to send to the CA.
    pub request: PathBuf,
    /// SHA-256 of the request's DER (lowercase hex): read it out to the CA
    /// over a second channel; `confide certs sign` prints the same value.
    pub request_sha256: String,
    /// The verifying key the request binds, as its `confide:vk` URI.
    pub verifying_key_uri: String,
    /// The private-key files written (0600).
    pub private: Vec<PathBuf>,
}

fn cfg_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::CertFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Create `site`'s keys and certificate request in `dir` (see the module
/// docs). Refuses to overwrite anything; with `rotate`, the new identity is
/// written as `NAME.next.*` beside the current one, which keeps working
/// until [`install_certificate`] promotes the new one.
pub fn init(dir: &Path, site: &str, suite: Suite, rotate: bool) -> Result<Enrolment, ClientError> {
    check_site_name(site)?;
    let current = SiteFiles::new(dir, site);
    let files = if rotate {
        if !current.key().exists() {
            return Err(cfg_err(format!(
                "--rotate: {} has no current identity of {site}; run init without --rotate",
                dir.display()
            )));
        }
        current.next()
    } else {
        current
    };
    for p in [files.key(), files.signing_key(), files.request()] {
        if p.exists() {
            return Err(cfg_err(format!(
                "{} already exists; refusing to overwrite a site's keys{}",
                p.display(),
                if rotate {
                    " (a rotation is already pending: install its certificate or remove NAME.next.*)"
                } else {
                    " (use --rotate to make new ones)"
                }
            )));
        }
    }
    create_private_dir(dir)?;

    let tls_key = KeyPair::generate().map_err(|e| cfg_err(format!("TLS key: {e}")))?;
    let signing = SigningKey::generate(suite, &mut rand::rng());
    let vk = signing
        .verifying_key()
        .map_err(|e| cfg_err(format!("signing key: {e}")))?;
    let uri = keys::vk_uri(suite, vk.as_bytes());

    let mut params = CertificateParams::new(vec![site.to_string()]).map_err(cfg_err)?;
    params.distinguished_name.push(DnType::CommonName, site);
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from(uri.clone()).map_err(cfg_err)?,
    ));
    let csr = params
        .serialize_request(&tls_key)
        .map_err(|e| cfg_err(format!("certificate request: {e}")))?;
    let pem = csr.pem().map_err(cfg_err)?;

    let key_pem = zeroize::Zeroizing::new(tls_key.serialize_pem());
    write_new(&files.key(), key_pem.as_bytes(), true)?;
    let toml = zeroize::Zeroizing::new(keys::signing_key_toml(&signing));
    write_new(&files.signing_key(), toml.as_bytes(), true)?;
    write_new(&files.request(), pem.as_bytes(), false)?;
    Ok(Enrolment {
        request: files.request(),
        request_sha256: hex::encode(Sha256::digest(csr.der())),
        verifying_key_uri: uri,
        private: vec![files.key(), files.signing_key()],
    })
}

/// What [`install_certificate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The certificate now in use.
    pub certificate: PathBuf,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Its expiry (RFC 3339-ish, as x509-parser prints it).
    pub not_after: String,
    /// Serial of the certificate a rotation retired (ask the CA to revoke it).
    pub retired_serial: Option<String>,
}

/// Check a certificate from the CA and install it as `site`'s: it must chain
/// to the federation CA (`ca`, else `DIR/ca.pem`), be a client certificate
/// for `site`, certify this site's own TLS key and bind this site's own
/// signing key. It is matched against a pending rotation (`NAME.next.*`)
/// first, which it then promotes, retiring the old files into `DIR/retired/`.
pub fn install_certificate(
    dir: &Path,
    site: &str,
    cert_pem: &[u8],
    ca: Option<&Path>,
) -> Result<Installed, ClientError> {
    let current = SiteFiles::new(dir, site);
    let ca_pem = match ca {
        Some(p) => fs::read(p).map_err(io_err(p))?,
        None => fs::read(current.ca()).map_err(io_err(&current.ca()))?,
    };
    let der = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| cfg_err(format!("the certificate is not PEM: {e}")))?;
    verify_chain(&der, &ca_pem, site)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| cfg_err(format!("the certificate is unparsable: {e}")))?;
    let spki = cert.public_key().raw;
    let bound = crate::identity::certificate_key(der.as_ref());

    let next = current.next();
    let candidates = [&next, &current];
    let mut matched = None;
    for files in candidates {
        if !files.key().exists() {
            continue;
        }
        let (key_spki, vk) = own_public_keys(files)?;
        if key_spki == spki {
            if bound.as_ref() != Some(&vk) {
                return Err(cfg_err(format!(
                    "the certificate certifies {}'s TLS key but not its signing key ({}); ask the CA to sign the request again",
                    site,
                    keys::vk_uri(vk.0, &vk.1)
                )));
            }
            matched = Some(files);
            break;
        }
    }
    let Some(files) = matched else {
        return Err(cfg_err(format!(
            "the certificate is for another key than {site}'s in {}; it was not issued for this site's request",
            dir.display()
        )));
    };
    let serial = hex::encode(cert.raw_serial());
    let not_after = cert.validity().not_after.to_string();
    if ca.is_some() && !current.ca().exists() {
        write_new(&current.ca(), &ca_pem, false)?;
    }
    let mut retired_serial = None;
    if *files == next {
        // Promote: the old identity moves to retired/, the new one takes its names.
        let retired = dir.join("retired");
        create_private_dir(&retired)?;
        let old_serial = fs::read(current.certificate())
            .ok()
            .and_then(|p| CertificateDer::from_pem_slice(&p).ok())
            .and_then(|d| {
                x509_parser::parse_x509_certificate(d.as_ref())
                    .ok()
                    .map(|(_, c)| hex::encode(c.raw_serial()))
            })
            .unwrap_or_else(|| "unknown".into());
        for (ext, from) in [
            ("key", current.key()),
            ("signing.toml", current.signing_key()),
            ("csr", current.request()),
            ("pem", current.certificate()),
        ] {
            if from.exists() {
                let to = retired.join(format!("{site}.{old_serial}.{ext}"));
                fs::rename(&from, &to).map_err(io_err(&from))?;
            }
        }
        for (from, to) in [
            (next.key(), current.key()),
            (next.signing_key(), current.signing_key()),
            (next.request(), current.request()),
        ] {
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        retired_serial = Some(old_serial);
    } else if current.certificate().exists() {
        let old = fs::read(current.certificate()).map_err(io_err(&current.certificate()))?;
        if old != cert_pem {
            return Err(cfg_err(format!(
                "{} already holds a certificate; to change keys use `init --rotate`",
                current.certificate().display()
            )));
        }
    }
    if !current.certificate().exists() {
        write_new(&current.certificate(), cert_pem, false)?;
    }
    Ok(Installed {
        certificate: current.certificate(),
        serial,
        not_after,
        retired_serial,
    })
}

/// A verifying key as a certificate binds it.
type BoundKey = (Suite, Vec<u8>);

/// The SPKI of a site's TLS key and the verifying key of its signing key.
fn own_public_keys(files: &SiteFiles) -> Result<(Vec<u8>, BoundKey), ClientError> {
    keys::check_private_file(&files.key()).map_err(|e| cfg_err(e.to_string()))?;
    let pem =
        zeroize::Zeroizing::new(fs::read_to_string(files.key()).map_err(io_err(&files.key()))?);
    let kp =
        KeyPair::from_pem(&pem).map_err(|e| cfg_err(format!("{}: {e}", files.key().display())))?;
    let sk = crate::config::load_signing_key(&files.signing_key())?;
    let vk = sk
        .verifying_key()
        .map_err(|e| cfg_err(format!("signing key: {e}")))?;
    Ok((
        kp.subject_public_key_info(),
        (sk.suite(), vk.as_bytes().to_vec()),
    ))
}

fn verify_chain(der: &CertificateDer<'_>, ca_pem: &[u8], site: &str) -> Result<(), ClientError> {
    let ca_der = CertificateDer::from_pem_slice(ca_pem)
        .map_err(|e| cfg_err(format!("the federation CA is not a PEM certificate: {e}")))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|e| cfg_err(format!("the federation CA certificate is unusable: {e}")))?;
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| cfg_err(format!("the certificate is unparsable: {e}")))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        cfg_err(format!(
            "the certificate is not a valid client certificate from this federation CA: {e}"
        ))
    })?;
    let name = ServerName::try_from(site)
        .map_err(|_| cfg_err(format!("site name {site:?} is not a DNS name")))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| cfg_err(format!("the certificate is not for {site:?}: {e}")))
}

/// Site names are DNS labels: they appear in certificates and file names.
fn check_site_name(site: &str) -> Result<(), ClientError> {
    let ok = !site.is_empty()
        && site.len() <= 63
        && site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !site.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(cfg_err(format!(
            "site name {site:?} must be 1–63 characters of [A-Za-z0-9-] (a DNS label)"
        )))
    }
}

/// The key directory: created 0700 (an existing one is left as it is).
fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Write a file that must not exist yet; `private` makes it 0600.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), ClientError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A federation CA as `confide certs` makes one (the client crate does
    /// not link the coordinator, so the test plays the CA with rcgen).
    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    impl TestCa {
        fn new() -> Result<Self, Box<dyn std::error::Error>> {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name.push(DnType::CommonName, "test CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate()?;
            let pem = p.self_signed(&key)?.pem();
            Ok(TestCa {
                issuer: Issuer::new(p, key),
                pem,
            })
        }

        /// A client certificate for `name` binding `vk_uri` to the TLS key in `key_file`.
        fn sign(
            &self,
            name: &str,
            vk_uri: &str,
            key_file: &Path,
        ) -> Result<String, Box<dyn std::error::Error>> {
            let key = KeyPair::from_pem(&fs::read_to_string(key_file)?)?;
            let mut p = CertificateParams::new(vec![name.to_string()])?;
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::ExplicitNoCa;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.subject_alt_names
                .push(SanType::URI(Ia5String::try_from(vk_uri)?));
            Ok(p.signed_by(&key, &self.issuer)?.pem())
        }
    }

    #[test]
    fn init_makes_private_keys_and_a_request_and_never_overwrites() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("keys");
        let e = init(&dir, "hospital-a", Suite::Gm, false)?;
        assert!(e.verifying_key_uri.starts_with("confide:vk:gm:"));
        let pem = fs::read_to_string(&e.request)?;
        assert!(pem.contains("BEGIN CERTIFICATE REQUEST"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in &e.private {
                assert_eq!(
                    fs::metadata(p)?.permissions().mode() & 0o777,
                    0o600,
                    "{p:?}"
                );
            }
            assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        }
        let key_before = fs::read(dir.join("hospital-a.key"))?;
        let again = init(&dir, "hospital-a", Suite::Gm, false);
        assert!(again.is_err_and(|e| e.to_string().contains("refusing to overwrite")));
        assert_eq!(fs::read(dir.join("hospital-a.key"))?, key_before);
        assert!(
            init(&dir, "other", Suite::Gm, true)
                .is_err_and(|e| e.to_string().contains("no current identity"))
        );
        assert!(init(&dir, "../x", Suite::Gm, false).is_err());
        Ok(())
    }

    #[test]
    fn install_accepts_only_a_certificate_for_this_sites_own_keys_from_the_ca() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let ca = TestCa::new()?;
        let ca_file = tmp.path().join("federation-ca.pem");
        fs::write(&ca_file, &ca.pem)?;
        let e = init(dir, "bank-a", Suite::Intl, false)?;
        let key = dir.join("bank-a.key");

        // Another CA's certificate.
        let rogue = TestCa::new()?.sign("bank-a", &e.verifying_key_uri, &key)?;
        let err = install_certificate(dir, "bank-a", rogue.as_bytes(), Some(&ca_file));
        assert!(err.is_err_and(|e| e.to_string().contains("not a valid client certificate")));
        // The right CA, another key.
        let other = tmp.path().join("other.key");
        fs::write(&other, KeyPair::generate()?.serialize_pem())?;
        let wrong_key = ca.sign("bank-a", &e.verifying_key_uri, &other)?;
        let err = install_certificate(dir, "bank-a", wrong_key.as_bytes(), Some(&ca_file));
        assert!(err.is_err_and(|e| e.to_string().contains("another key")));
        // The right TLS key but someone else's signing key.
        let wrong_vk = ca.sign("bank-a", &keys::vk_uri(Suite::Intl, &[9; 32]), &key)?;
        let err = install_certificate(dir, "bank-a", wrong_vk.as_bytes(), Some(&ca_file));
        assert!(err.is_err_and(|e| e.to_string().contains("not its signing key")));
        // Another name.
        let wrong_name = ca.sign("bank-b", &e.verifying_key_uri, &key)?;
        let err = install_certificate(dir, "bank-a", wrong_name.as_bytes(), Some(&ca_file));
        assert!(err.is_err_and(|e| e.to_string().contains("not for \"bank-a\"")));
        assert!(!dir.join("bank-a.pem").exists() && !dir.join("ca.pem").exists());

        let good = ca.sign("bank-a", &e.verifying_key_uri, &key)?;
        let i = install_certificate(dir, "bank-a", good.as_bytes(), Some(&ca_file))?;
        assert_eq!(i.certificate, dir.join("bank-a.pem"));
        assert_eq!(i.retired_serial, None);
        assert_eq!(fs::read_to_string(dir.join("ca.pem"))?, ca.pem);
        // Installing the same certificate again is harmless.
        install_certificate(dir, "bank-a", good.as_bytes(), None)?;
        Ok(())
    }

    #[test]
    fn rotation_keeps_the_old_identity_until_the_new_certificate_is_installed() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let ca = TestCa::new()?;
        fs::write(dir.join("ca.pem"), &ca.pem)?;
        let first = init(dir, "clinic", Suite::Intl, false)?;
        let cert1 = ca.sign("clinic", &first.verifying_key_uri, &dir.join("clinic.key"))?;
        let i1 = install_certificate(dir, "clinic", cert1.as_bytes(), None)?;
        let old_key = fs::read(dir.join("clinic.key"))?;

        let second = init(dir, "clinic", Suite::Intl, true)?;
        assert_eq!(second.request, dir.join("clinic.next.csr"));
        // The current identity is untouched while the request is with the CA.
        assert_eq!(fs::read(dir.join("clinic.key"))?, old_key);
        assert_eq!(fs::read_to_string(dir.join("clinic.pem"))?, cert1);
        let cert2 = ca.sign(
            "clinic",
            &second.verifying_key_uri,
            &dir.join("clinic.next.key"),
        )?;
        let i2 = install_certificate(dir, "clinic", cert2.as_bytes(), None)?;
        assert_eq!(i2.retired_serial.as_deref(), Some(i1.serial.as_str()));
        assert_eq!(fs::read_to_string(dir.join("clinic.pem"))?, cert2);
        assert_ne!(fs::read(dir.join("clinic.key"))?, old_key);
        assert!(!dir.join("clinic.next.key").exists());
        let retired = dir
            .join("retired")
            .join(format!("clinic.{}.key", i1.serial));
        assert_eq!(fs::read(retired)?, old_key);
        let (tls, signing) = crate::enrol::identity_in_dir(dir, "clinic", "c");
        assert_eq!(
            crate::config::load_signing_key(&signing)?
                .verifying_key()
                .map(|k| keys::vk_uri(Suite::Intl, k.as_bytes()))?,
            second.verifying_key_uri
        );
        assert_eq!(tls.cert, dir.join("clinic.pem"));
        Ok(())
    }
}
