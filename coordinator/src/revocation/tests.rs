use super::*;
use crate::certs::{self, RevokeTarget};
use confide_crypto::Suite;

type R = Result<(), Box<dyn std::error::Error>>;

fn serial(dir: &std::path::Path, site: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let pem = std::fs::read(dir.join(format!("sites/{site}.pem")))?;
    let der = x509_parser::pem::parse_x509_pem(&pem)?.1.contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    Ok(cert.raw_serial().to_vec())
}

#[test]
fn crl_is_reloaded_when_the_file_changes_and_fails_closed() -> R {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    certs::init(dir, "test", &[], &crate::ca_key::CaKeySource::File)?;
    certs::issue_site(dir, "a", Suite::Intl)?;
    certs::issue_site(dir, "b", Suite::Intl)?;
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let path = dir.join(certs::CRL_FILE);
    // Missing: nothing revoked yet, nothing to serve.
    let r = Revocation::new(Some(path.clone()), &ca)?;
    assert_eq!(r.is_revoked(&serial(dir, "a")?), Ok(false));
    assert!(r.crl_der().is_empty());

    certs::revoke(dir, RevokeTarget::Site("a"), 7)?;
    assert_eq!(r.is_revoked(&serial(dir, "a")?), Ok(true));
    assert_eq!(r.is_revoked(&serial(dir, "b")?), Ok(false));
    let served = Crl::from_der(&r.crl_der())?;
    assert_eq!(served.number(), 1);

    // A file that is not a CRL of this CA: everyone is refused.
    let good = std::fs::read(&path)?;
    std::fs::write(&path, b"garbage")?;
    assert!(r.is_revoked(&serial(dir, "b")?).is_err());
    let other = tempfile::tempdir()?;
    certs::init(other.path(), "evil", &[], &crate::ca_key::CaKeySource::File)?;
    certs::issue_crl(other.path(), 7)?;
    std::fs::copy(other.path().join(certs::CRL_FILE), &path)?;
    match r.is_revoked(&serial(dir, "b")?) {
        Err(why) => assert!(why.contains("federation CA"), "{why}"),
        Ok(v) => return Err(format!("a foreign CRL was accepted ({v})").into()),
    }
    std::fs::write(&path, good)?;
    assert_eq!(r.is_revoked(&serial(dir, "a")?), Ok(true));

    // An unusable file at start is an error, not a silent "nothing revoked".
    std::fs::write(&path, b"garbage")?;
    assert!(Revocation::new(Some(path), &ca).is_err());
    Ok(())
}
