use super::*;
use crate::certs::{init, issue_operator, issue_site};
use confide_crypto::Suite;

type R = Result<(), Box<dyn std::error::Error>>;

fn ca(dir: &Path) -> Result<Vec<u8>, std::io::Error> {
    fs::read(dir.join("ca.pem"))
}

fn published(dir: &Path) -> Result<Crl, Box<dyn std::error::Error>> {
    let crl = Crl::from_pem(&fs::read(dir.join(CRL_FILE))?)?;
    crl.verify(&ca(dir)?)?;
    Ok(crl)
}

fn raw_serial(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let pem = fs::read(path)?;
    let der = x509_parser::pem::parse_x509_pem(&pem)?.1.contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    Ok(cert.raw_serial().to_vec())
}

#[test]
fn revoke_writes_a_signed_crl_of_the_certificates_serial() -> R {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    init(dir, "test", &[], &crate::ca_key::CaKeySource::File)?;
    issue_site(dir, "a", Suite::Intl)?;
    issue_site(dir, "b", Suite::Intl)?;
    let r = revoke(dir, RevokeTarget::Site("a"), DEFAULT_CRL_DAYS)?;
    assert!(!r.already);
    assert_eq!(
        (r.entry.name.as_str(), r.entry.kind.as_str()),
        ("a", "site")
    );
    assert_eq!((r.crl.number, r.crl.entries), (1, 1));
    let crl = published(dir)?;
    assert_eq!(crl.number(), 1);
    assert!(crl.revokes(&raw_serial(&dir.join("sites/a.pem"))?));
    assert!(!crl.revokes(&raw_serial(&dir.join("sites/b.pem"))?));
    let now = confide_proto::crl::unix_now();
    let next = crl.next_update().ok_or("no nextUpdate")?;
    assert!(
        (next - now - 7 * 86_400).abs() < 120,
        "next update in 7 days"
    );
    assert!(crl.check_fresh(now).is_ok());
    assert!(crl.check_fresh(next).is_err());
    Ok(())
}

#[test]
fn crl_numbers_only_grow_and_entries_are_kept_once() -> R {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    init(dir, "test", &[], &crate::ca_key::CaKeySource::File)?;
    issue_site(dir, "a", Suite::Intl)?;
    issue_operator(dir, "ops")?;
    // `certs crl` before any revocation creates an empty list.
    assert_eq!(issue_crl(dir, 1)?.number, 1);
    assert_eq!(published(dir)?.revoked_count(), 0);
    revoke(dir, RevokeTarget::Site("a"), 7)?;
    let again = revoke(dir, RevokeTarget::Site("a"), 7)?;
    assert!(again.already);
    assert_eq!((again.crl.number, again.crl.entries), (3, 1));
    // By serial, with the colon form tools print: the name is found.
    let serial = serial_hex(&raw_serial(&dir.join("operators/ops.pem"))?);
    let colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    let r = revoke(dir, RevokeTarget::Serial(&colons.join(":")), 7)?;
    assert_eq!(
        (r.entry.kind.as_str(), r.entry.name.as_str()),
        ("operator", "ops")
    );
    let crl = published(dir)?;
    assert_eq!((crl.number(), crl.revoked_count()), (4, 2));
    assert_eq!(read_db(dir)?.crl_number, 4);
    // A lost database does not reset the number below the published CRL.
    fs::remove_file(dir.join(REVOKED_DB))?;
    assert_eq!(issue_crl(dir, 7)?.number, 5);
    Ok(())
}

#[test]
fn bad_revocations_are_refused() -> R {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    init(dir, "test", &[], &crate::ca_key::CaKeySource::File)?;
    assert!(revoke(dir, RevokeTarget::Site("nobody"), 7).is_err());
    assert!(revoke(dir, RevokeTarget::Site("../ca"), 7).is_err());
    assert!(revoke(dir, RevokeTarget::Serial("xyz"), 7).is_err());
    assert!(revoke(dir, RevokeTarget::Serial("00"), 7).is_err());
    assert!(issue_crl(dir, 0).is_err());
    assert!(!dir.join(CRL_FILE).exists());
    // An unknown serial is still revoked (a certificate issued elsewhere).
    let r = revoke(dir, RevokeTarget::Serial("0A1B"), 7)?;
    assert_eq!(
        (r.entry.serial.as_str(), r.entry.kind.as_str()),
        ("0a1b", "serial")
    );
    assert!(published(dir)?.revokes(&[0x0a, 0x1b]));
    Ok(())
}

#[test]
fn a_crl_of_another_ca_does_not_verify() -> R {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "a", &[], &crate::ca_key::CaKeySource::File)?;
    init(&b, "b", &[], &crate::ca_key::CaKeySource::File)?;
    issue_crl(&b, 7)?;
    let other = Crl::from_pem(&fs::read(b.join(CRL_FILE))?)?;
    assert!(other.verify(&ca(&a)?).is_err());
    assert!(other.verify(&ca(&b)?).is_ok());
    Ok(())
}
