//! `confide certs`: the federation CA, coordinator, site and operator
//! certificates (rcgen, ECDSA P-256) and site signing keys, in the layout
//! `ca.pem ca.key coordinator.pem coordinator.key sites/<name>.{pem,key,signing.toml}
//! operators/<name>.{pem,key} revoked.toml crl.pem`. Private key files are 0600 and never
//! printed. Revocation (the CA's database and the signed X.509 CRL) is in [`crl`](self::crl).
//!
//! A site certificate also carries the site's long-term verifying key, as a
//! SAN URI `confide:vk:<suite>:<hex>` ([`VK_URI_PREFIX`]), so that the CA's
//! signature binds the site name to the key its key adverts are signed with;
//! neighbours check this binding before using a relayed key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use confide_crypto::Suite;
use confide_crypto::suite::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};

pub use confide_proto::keys::{OPERATOR_ROLE_URI, VK_URI_PREFIX, parse_vk_uri, vk_uri};

mod sign;
pub use sign::{DEFAULT_SITE_DAYS, SignOptions, Signed, request_fingerprint, sign_request};

mod crl;

pub use self::crl::{
    CRL_FILE, DEFAULT_CRL_DAYS, IssuedCrl, REVOKED_DB, RevocationDb, RevokeTarget, Revoked,
    RevokedEntry, issue_crl, read_db, revoke, serial_hex,
};

use crate::ca_key::{self, CaKeySource, CaSigner};
use crate::error::CoordinatorError;

/// A TLS error from a message (for refusals with no underlying error).
fn err(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Tls(e.to_string())
}

/// Write a file readable only by its owner (0600 on Unix), refusing to overwrite.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    if path.exists() {
        return Err(err(format!(
            "{} already exists; refusing to overwrite",
            path.display()
        )));
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    if path.exists() {
        return Err(err(format!(
            "{} already exists; refusing to overwrite",
            path.display()
        )));
    }
    fs::write(path, bytes)?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), CoordinatorError> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.starts_with('-')
    {
        return Err(err(format!(
            "name {name:?} must be 1–63 characters of [A-Za-z0-9-] (a DNS label)"
        )));
    }
    Ok(())
}

/// The CA as an issuer: `ca.pem` and its key from `source`, refused if the
/// key is not the one `ca.pem` certifies.
pub fn issuer(
    dir: &Path,
    source: &CaKeySource,
) -> Result<Issuer<'static, CaSigner>, CoordinatorError> {
    let ca_pem = fs::read_to_string(dir.join("ca.pem")).map_err(|e| {
        err(format!(
            "{}/ca.pem: {e} (run `confide certs init`)",
            dir.display()
        ))
    })?;
    let key = CaSigner::load(dir, source)?;
    key.check_matches(&ca_pem, &dir.join("ca.pem"))?;
    Issuer::from_ca_cert_pem(&ca_pem, key).map_err(CoordinatorError::Certificate)
}

fn leaf(
    names: &[String],
    cn: &str,
    eku: &[ExtendedKeyUsagePurpose],
) -> Result<CertificateParams, CoordinatorError> {
    let mut p = CertificateParams::new(names.to_vec()).map_err(CoordinatorError::Certificate)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = eku.to_vec();
    Ok(p)
}

/// Check that `source` unlocks the CA key of `dir` and that the key is the
/// one of `ca.pem`, then record it, so later commands need not repeat the flags.
pub fn adopt_ca_key(dir: &Path, source: &CaKeySource) -> Result<(), CoordinatorError> {
    issuer(dir, source)?;
    source.record(dir)
}

/// `certs init`: a federation CA plus the coordinator's server certificate
/// (SAN localhost, 127.0.0.1, coordinator and `extra_names`). The CA key is
/// made where `source` says (`ca.key`, encrypted or not, or a PKCS#11 token);
/// a non-default source is recorded in `ca.key.source` for later commands.
pub fn init(
    dir: &Path,
    federation: &str,
    extra_names: &[String],
    source: &CaKeySource,
) -> Result<Vec<PathBuf>, CoordinatorError> {
    fs::create_dir_all(dir)?;
    // Before making a key: a token key left behind by a refused init would be an orphan.
    for f in ["ca.pem", ca_key::CA_KEY_FILE, ca_key::SOURCE_FILE] {
        if dir.join(f).exists() {
            return Err(err(format!(
                "{} already exists; refusing to overwrite",
                dir.join(f).display()
            )));
        }
    }
    let mut ca =
        CertificateParams::new(Vec::<String>::new()).map_err(CoordinatorError::Certificate)?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("{federation} federation CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (ca_key, ca_key_pem) = CaSigner::generate(source)?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(CoordinatorError::Certificate)?;
    write_public(&dir.join("ca.pem"), ca_cert.pem().as_bytes())?;
    if let Some(pem) = ca_key_pem {
        write_private(&dir.join(ca_key::CA_KEY_FILE), pem.as_bytes())?;
    }
    source.record(dir)?;
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "coordinator"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(extra_names.iter().cloned());
    let issuer = Issuer::new(ca, ca_key);
    let params = leaf(
        &names,
        "coordinator",
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let key = KeyPair::generate().map_err(CoordinatorError::Certificate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CoordinatorError::Certificate)?;
    write_public(&dir.join("coordinator.pem"), cert.pem().as_bytes())?;
    write_private(&dir.join("coordinator.key"), key.serialize_pem().as_bytes())?;
    Ok(vec![dir.join("ca.pem"), dir.join("coordinator.pem")])
}

/// `certs issue --site NAME --generate-keys-here`: TLS client certificate
/// (SAN dns = name) and the site's long-term signing key for `suite`, all
/// made on the CA's machine. For demos and tests only: whoever holds this
/// directory can act as the site. Real sites make their own keys
/// (`confide-site init`) and the CA signs their request ([`sign_request`]).
pub fn issue_site(dir: &Path, name: &str, suite: Suite) -> Result<Vec<PathBuf>, CoordinatorError> {
    check_name(name)?;
    let issuer = issuer(dir, &CaKeySource::recorded(dir)?)?;
    let sites = dir.join("sites");
    fs::create_dir_all(&sites)?;
    let pem = sites.join(format!("{name}.pem"));
    // Check before generating anything so a refused re-issue leaves no partial files.
    if pem.exists() {
        return Err(err(format!(
            "{} already exists; refusing to overwrite",
            pem.display()
        )));
    }
    let sk = SigningKey::generate(suite, &mut rand::rng());
    let vk = sk
        .verifying_key()
        .map_err(|e| err(format!("signing key: {e}")))?;
    let mut params = leaf(
        &[name.to_string()],
        name,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from(vk_uri(suite, vk.as_bytes())).map_err(CoordinatorError::Certificate)?,
    ));
    let key = KeyPair::generate().map_err(CoordinatorError::Certificate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CoordinatorError::Certificate)?;
    write_public(&pem, cert.pem().as_bytes())?;
    write_private(
        &sites.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
    )?;
    let toml = confide_proto::keys::signing_key_toml(&sk);
    let signing = sites.join(format!("{name}.signing.toml"));
    write_private(&signing, toml.as_bytes())?;
    Ok(vec![pem, signing])
}

/// `certs issue --operator NAME`: a client certificate for the Admin API.
pub fn issue_operator(dir: &Path, name: &str) -> Result<Vec<PathBuf>, CoordinatorError> {
    check_name(name)?;
    let issuer = issuer(dir, &CaKeySource::recorded(dir)?)?;
    let ops = dir.join("operators");
    fs::create_dir_all(&ops)?;
    let mut params = leaf(
        &[format!("operator-{name}")],
        &format!("operator {name}"),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    // The role, not the name, is what the coordinator admits to the Admin API.
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from(OPERATOR_ROLE_URI).map_err(CoordinatorError::Certificate)?,
    ));
    let key = KeyPair::generate().map_err(CoordinatorError::Certificate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CoordinatorError::Certificate)?;
    let pem = ops.join(format!("{name}.pem"));
    write_public(&pem, cert.pem().as_bytes())?;
    write_private(
        &ops.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
    )?;
    Ok(vec![pem])
}

/// `certs list`: (kind, name, path) of every certificate in `dir`.
pub fn list(dir: &Path) -> Result<Vec<(String, String, PathBuf)>, CoordinatorError> {
    let mut out = Vec::new();
    for (kind, name) in [("ca", "ca"), ("coordinator", "coordinator")] {
        let p = dir.join(format!("{name}.pem"));
        if p.exists() {
            out.push((kind.to_string(), name.to_string(), p));
        }
    }
    for (kind, sub) in [("site", "sites"), ("operator", "operators")] {
        let Ok(rd) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut v: Vec<(String, String, PathBuf)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            // `NAME.<serial>.pem` is a certificate retired by rotation.
            .filter(|p| {
                p.file_stem()
                    .is_some_and(|s| !s.to_string_lossy().contains('.'))
            })
            .filter_map(|p| {
                p.file_stem().map(|s| {
                    (
                        kind.to_string(),
                        s.to_string_lossy().into_owned(),
                        p.clone(),
                    )
                })
            })
            .collect();
        v.sort();
        out.extend(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_list_with_private_permissions() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        init(tmp.path(), "test", &[], &CaKeySource::File)?;
        issue_site(tmp.path(), "hospital-a", Suite::Gm)?;
        issue_operator(tmp.path(), "alice")?;
        assert!(
            issue_site(tmp.path(), "hospital-a", Suite::Gm).is_err(),
            "must not overwrite"
        );
        assert!(issue_site(tmp.path(), "../evil", Suite::Intl).is_err());
        let l = list(tmp.path())?;
        let names: Vec<&str> = l.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["ca", "coordinator", "hospital-a", "alice"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                "ca.key",
                "coordinator.key",
                "sites/hospital-a.key",
                "sites/hospital-a.signing.toml",
            ] {
                assert_eq!(
                    fs::metadata(tmp.path().join(f))?.permissions().mode() & 0o777,
                    0o600,
                    "{f}"
                );
            }
        }
        let toml = fs::read_to_string(tmp.path().join("sites/hospital-a.signing.toml"))?;
        assert!(toml.starts_with("suite = \"gm\""));
        Ok(())
    }

    #[test]
    fn site_certificate_binds_the_signing_key() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        init(tmp.path(), "test", &[], &CaKeySource::File)?;
        issue_site(tmp.path(), "bank-b", Suite::Intl)?;
        let sk =
            confide_proto::keys::load_signing_key(&tmp.path().join("sites/bank-b.signing.toml"))?;
        let pem = fs::read_to_string(tmp.path().join("sites/bank-b.pem"))?;
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())?.1.contents;
        let peer = crate::access::PeerCert::from_der(&der).ok_or("unparsable")?;
        assert_eq!(peer.name, "bank-b");
        assert_eq!(
            peer.verifying_key,
            Some((Suite::Intl, sk.verifying_key()?.as_bytes().to_vec()))
        );
        Ok(())
    }
}
