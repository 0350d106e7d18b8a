//! The federation CA key at rest (issue 10): a passphrase-encrypted `ca.key`,
//! and a CA key inside a PKCS#11 token (SoftHSM2), each issuing certificates
//! (and, from the token, a CRL) that verify against `ca.pem` with webpki.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use confide_coordinator::CoordinatorError;
use confide_coordinator::ca_key::{CaKeyError, CaKeySource, CaSigner, SOURCE_FILE};
use confide_coordinator::certs;
use confide_coordinator::certs::adopt_ca_key as adopt;
use confide_crypto::Suite;
use rustls_pki_types::{CertificateDer, UnixTime};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PASS_VAR: &str = "CONFIDE_TEST_CA_PASSPHRASE";
const WRONG_VAR: &str = "CONFIDE_TEST_CA_WRONG_PASSPHRASE";
const UNSET_VAR: &str = "CONFIDE_TEST_CA_UNSET_PASSPHRASE";
const PIN_VAR: &str = "CONFIDE_TEST_TOKEN_PIN";
const TOKEN: &str = "confide-test";

/// Test environment shared by this binary: the variables the sources name,
/// and a SoftHSM2 configuration whose token directory is private to the run.
struct Env {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    tokens: PathBuf,
}

/// Every test calls this first, so the variables are set before any test
/// thread reads the environment (or loads a PKCS#11 module that does).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        // SAFETY: set inside OnceLock initialisation, which every test runs
        // before anything else; the other test threads wait here and no
        // thread of this binary reads the environment concurrently.
        unsafe {
            std::env::set_var(PASS_VAR, "correct horse battery staple");
            std::env::set_var(WRONG_VAR, "incorrect horse");
            std::env::remove_var(UNSET_VAR);
            std::env::set_var(PIN_VAR, "1234");
            std::env::set_var("SOFTHSM2_CONF", &conf);
        }
        Env {
            _dir: dir,
            conf,
            tokens,
        }
    })
}

fn der_of(pem_path: &Path) -> Result<CertificateDer<'static>, Box<dyn std::error::Error>> {
    let pem = std::fs::read(pem_path)?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem)?;
    Ok(CertificateDer::from(p.contents))
}

/// Verify `leaf` against `ca.pem` of `dir` with webpki (optionally checking `crl`).
fn verify(
    dir: &Path,
    leaf: &Path,
    usage: webpki::KeyUsage,
    crl: Option<&webpki::CertRevocationList<'_>>,
) -> Result<(), webpki::Error> {
    let ca = der_of(&dir.join("ca.pem")).map_err(|_| webpki::Error::BadDer)?;
    let leaf = der_of(leaf).map_err(|_| webpki::Error::BadDer)?;
    let anchors = [webpki::anchor_from_trusted_cert(&ca)?.to_owned()];
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    let crls;
    let revocation = match crl {
        Some(c) => {
            crls = [c];
            Some(
                webpki::RevocationOptionsBuilder::new(&crls)
                    .map_err(|_| webpki::Error::BadDer)?
                    .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build(),
            )
        }
        None => None,
    };
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &anchors,
        &[],
        UnixTime::now(),
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}

/// The self-signature of `ca.pem` (made with the CA key, wherever it lives) verifies.
fn verify_self_signed(dir: &Path) -> TestResult {
    let der = der_of(&dir.join("ca.pem"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(
        cert.tbs_certificate.as_ref(),
        cert.signature_value.data.as_ref(),
    )
    .map_err(|_| "ca.pem's self-signature does not verify")?;
    Ok(())
}

fn encrypted(var: &str) -> CaKeySource {
    CaKeySource::EncryptedFile {
        passphrase_env: var.into(),
    }
}

#[test]
fn encrypted_ca_key_issues_certificates_that_chain_to_ca_pem() -> TestResult {
    env();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    certs::init(dir, "enc", &[], &encrypted(PASS_VAR))?;
    let key = std::fs::read_to_string(dir.join("ca.key"))?;
    assert!(key.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert!(!key.contains("BEGIN PRIVATE KEY"));
    let record = std::fs::read_to_string(dir.join(SOURCE_FILE))?;
    assert!(
        record.contains(PASS_VAR) && !record.contains("horse"),
        "{record}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join("ca.key"))?.permissions().mode() & 0o777,
            0o600
        );
    }
    verify_self_signed(dir)?;
    verify(
        dir,
        &dir.join("coordinator.pem"),
        webpki::KeyUsage::server_auth(),
        None,
    )?;
    // issue_site finds the key (and the passphrase's variable) from ca.key.source.
    certs::issue_site(dir, "hospital-a", Suite::Intl)?;
    verify(
        dir,
        &dir.join("sites/hospital-a.pem"),
        webpki::KeyUsage::client_auth(),
        None,
    )?;
    certs::issue_operator(dir, "alice")?;
    verify(
        dir,
        &dir.join("operators/alice.pem"),
        webpki::KeyUsage::client_auth(),
        None,
    )?;
    Ok(())
}

#[test]
fn encrypted_ca_key_refuses_wrong_or_missing_passphrases() -> TestResult {
    env();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    certs::init(dir, "enc", &[], &encrypted(PASS_VAR))?;

    let wrong = certs::issuer(dir, &encrypted(WRONG_VAR)).err();
    assert!(
        matches!(
            wrong,
            Some(CoordinatorError::CaKey(CaKeyError::WrongPassphrase { ref var, .. })) if var == WRONG_VAR
        ),
        "{wrong:?}"
    );
    assert!(format!("{}", wrong.ok_or("")?).contains("wrong passphrase"));

    let unset = certs::issuer(dir, &encrypted(UNSET_VAR))
        .err()
        .ok_or("no error")?;
    assert!(
        matches!(unset, CoordinatorError::CaKey(CaKeyError::EnvVar { .. })),
        "{unset:?}"
    );
    assert!(unset.to_string().contains(UNSET_VAR), "{unset}");

    // Read as an unencrypted key, the error names the flag to pass.
    let plain = certs::issuer(dir, &CaKeySource::File)
        .err()
        .ok_or("no error")?;
    assert!(
        matches!(
            plain,
            CoordinatorError::CaKey(CaKeyError::NeedsPassphrase { .. })
        ),
        "{plain:?}"
    );
    assert!(plain.to_string().contains("--ca-passphrase-env"), "{plain}");

    // Without its record, issuing fails the same way until the source is adopted.
    std::fs::remove_file(dir.join(SOURCE_FILE))?;
    let e = certs::issue_site(dir, "b", Suite::Intl)
        .err()
        .ok_or("no error")?;
    assert!(e.to_string().contains("--ca-passphrase-env"), "{e}");
    assert!(adopt(dir, &encrypted(WRONG_VAR)).is_err());
    assert!(
        !dir.join(SOURCE_FILE).exists(),
        "a failed adopt records nothing"
    );
    adopt(dir, &encrypted(PASS_VAR))?;
    certs::issue_site(dir, "b", Suite::Intl)?;

    // A key that is not ca.pem's is refused.
    let other = tempfile::tempdir()?;
    certs::init(other.path(), "other", &[], &encrypted(PASS_VAR))?;
    std::fs::copy(other.path().join("ca.key"), dir.join("ca.key"))?;
    let e = certs::issuer(dir, &encrypted(PASS_VAR))
        .err()
        .ok_or("no error")?;
    assert!(
        matches!(e, CoordinatorError::CaKey(CaKeyError::KeyMismatch { .. })),
        "{e:?}"
    );
    Ok(())
}

#[test]
fn cli_takes_the_passphrase_from_the_named_variable() -> TestResult {
    env();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("certs");
    let confide = |args: &[&str], pass: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_confide"));
        c.args(args)
            .arg("--dir")
            .arg(&dir)
            .env_remove("CLI_CA_PASS");
        if let Some(p) = pass {
            c.env("CLI_CA_PASS", p);
        }
        c.output()
    };
    let out = confide(
        &["certs", "init", "--ca-passphrase-env", "CLI_CA_PASS"],
        Some("s3cret passphrase"),
    )?;
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read_to_string(dir.join("ca.key"))?.contains("ENCRYPTED PRIVATE KEY"));
    let out = confide(
        &["certs", "issue", "--site", "a", "--generate-keys-here"],
        Some("s3cret passphrase"),
    )?;
    assert!(out.status.success(), "{out:?}");
    verify(
        &dir,
        &dir.join("sites/a.pem"),
        webpki::KeyUsage::client_auth(),
        None,
    )?;
    let out = confide(
        &["certs", "issue", "--site", "b", "--generate-keys-here"],
        None,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("CLI_CA_PASS"),
        "{stderr}"
    );
    let out = confide(
        &["certs", "issue", "--site", "b", "--generate-keys-here"],
        Some("wrong"),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("wrong passphrase"),
        "{stderr}"
    );
    Ok(())
}

/// The SoftHSM2 module, or why the test cannot run.
fn softhsm() -> Result<PathBuf, String> {
    let module = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or("libsofthsm2.so not found")?;
    match Command::new("softhsm2-util").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(module),
        _ => Err("softhsm2-util not runnable".into()),
    }
}

#[test]
fn pkcs11_ca_key_signs_certificates_and_crls_without_leaving_the_token() -> TestResult {
    let env = env();
    let module = match softhsm() {
        Ok(m) => m,
        // .ci/run installs SoftHSM2: under CI its absence is a failure.
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            return Err(format!("softhsm2 missing under CI=true: {why}").into());
        }
        Err(why) => {
            println!("SKIPPED: softhsm2 not installed ({why}; apt-get install softhsm2)");
            return Ok(());
        }
    };
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &env.conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()?;
    assert!(out.status.success(), "softhsm2-util: {out:?}");
    assert!(std::fs::read_dir(&env.tokens)?.next().is_some());

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let source = CaKeySource::Pkcs11 {
        module: module.clone(),
        token: TOKEN.into(),
        key_label: "confide-ca".into(),
        pin_env: PIN_VAR.into(),
    };
    certs::init(dir, "hsm", &[], &source)?;
    assert!(
        !dir.join("ca.key").exists(),
        "no CA key file for a token key"
    );
    let record = std::fs::read_to_string(dir.join(SOURCE_FILE))?;
    assert!(record.contains("pin-env = CONFIDE_TEST_TOKEN_PIN") && !record.contains("1234"));
    assert_eq!(CaKeySource::recorded(dir)?, source);
    verify_self_signed(dir)?;
    verify(
        dir,
        &dir.join("coordinator.pem"),
        webpki::KeyUsage::server_auth(),
        None,
    )?;

    // A site certificate signed in the token (issue_site finds it through the record).
    certs::issue_site(dir, "hospital-a", Suite::Intl)?;
    let site = dir.join("sites/hospital-a.pem");
    verify(dir, &site, webpki::KeyUsage::client_auth(), None)?;

    // A CRL signed in the token revoking that certificate: webpki checks the
    // CRL's signature against ca.pem before it honours the revocation.
    let issuer = certs::issuer(dir, &source)?;
    let site_der = der_of(&site)?;
    let (_, site_cert) = x509_parser::parse_x509_certificate(&site_der)?;
    let now = SystemTime::now();
    let crl_params = |serial: &[u8]| rcgen::CertificateRevocationListParams {
        this_update: now.into(),
        next_update: (now + Duration::from_secs(7 * 86400)).into(),
        crl_number: rcgen::SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(serial),
            revocation_time: now.into(),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = crl_params(site_cert.raw_serial()).signed_by(&issuer)?;
    let parsed = webpki::OwnedCertRevocationList::from_der(crl.der())?;
    let crl_ref = webpki::CertRevocationList::from(parsed);
    assert_eq!(
        verify(dir, &site, webpki::KeyUsage::client_auth(), Some(&crl_ref)),
        Err(webpki::Error::CertRevoked)
    );
    // The same CRL revoking another serial leaves the certificate valid, so the
    // CRL itself (signature, issuer, next_update) was accepted.
    let other = crl_params(&[0x42]).signed_by(&issuer)?;
    let other =
        webpki::CertRevocationList::from(webpki::OwnedCertRevocationList::from_der(other.der())?);
    verify(dir, &site, webpki::KeyUsage::client_auth(), Some(&other))?;
    let (_, x509_crl) = x509_parser::parse_x509_crl(crl.der())?;
    assert!(x509_crl.next_update().is_some());
    assert_eq!(x509_crl.iter_revoked_certificates().count(), 1);

    // The token keeps the key: sensitive, non-extractable, its value unreadable.
    let CaSigner::Pkcs11(signer) = issuer.key() else {
        return Err("issuer's key is not in the token".into());
    };
    let p = signer.protection()?;
    assert!(!p.extractable && p.sensitive, "{p:?}");
    assert_token_withholds_value(&module)?;

    // A second CA under the same label is refused before anything is written.
    let again = tempfile::tempdir()?;
    let e = certs::init(again.path(), "hsm2", &[], &source)
        .err()
        .ok_or("second key under one label accepted")?;
    assert!(e.to_string().contains("already holds"), "{e}");
    assert!(!again.path().join("ca.pem").exists());

    // The CLI, in its own process, finds the token through the record and
    // needs the PIN from the named variable.
    let confide = |pin: &str, name: &str| {
        Command::new(env!("CARGO_BIN_EXE_confide"))
            .args([
                "certs",
                "issue",
                "--generate-keys-here",
                "--site",
                name,
                "--dir",
            ])
            .arg(dir)
            .env("SOFTHSM2_CONF", &env.conf)
            .env(PIN_VAR, pin)
            .output()
    };
    let out = confide("1234", "cli-site")?;
    assert!(out.status.success(), "{out:?}");
    verify(
        dir,
        &dir.join("sites/cli-site.pem"),
        webpki::KeyUsage::client_auth(),
        None,
    )?;
    let out = confide("0000", "bad-pin")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("log in"),
        "{stderr}"
    );
    Ok(())
}

/// Independently of Confide's signer: the token will not hand out CKA_VALUE.
fn assert_token_withholds_value(module: &Path) -> TestResult {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    let ctx = Pkcs11::new(module)?;
    // Already initialised by the signer in this process: that is fine.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == TOKEN)
        })
        .ok_or("token not found")?;
    let session = ctx.open_ro_session(slot)?;
    let _ = session.login(UserType::User, Some(&"1234".into()));
    let keys = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(b"confide-ca".to_vec()),
    ])?;
    let [key] = keys.as_slice() else {
        return Err(format!("{} private keys labelled confide-ca", keys.len()).into());
    };
    let attrs = session.get_attributes(
        *key,
        &[
            AttributeType::Extractable,
            AttributeType::Sensitive,
            AttributeType::NeverExtractable,
            AttributeType::AlwaysSensitive,
            AttributeType::Value,
        ],
    )?;
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::NeverExtractable(true)),
        "{attrs:?}"
    );
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token revealed the private key"
    );
    Ok(())
}
