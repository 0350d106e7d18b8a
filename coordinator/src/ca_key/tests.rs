use super::*;

#[test]
fn record_round_trips_and_refuses_junk() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    assert_eq!(CaKeySource::recorded(tmp.path())?, CaKeySource::File);
    for s in [
        CaKeySource::EncryptedFile {
            passphrase_env: "CA_PASS".into(),
        },
        CaKeySource::Pkcs11 {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: "confide ca".into(),
            key_label: "ca-2026".into(),
            pin_env: "CA_PIN".into(),
        },
    ] {
        s.record(tmp.path())?;
        assert_eq!(CaKeySource::recorded(tmp.path())?, s);
    }
    CaKeySource::File.record(tmp.path())?;
    assert!(!tmp.path().join(SOURCE_FILE).exists());
    for bad in [
        "source = tape\n",
        "source = encrypted-file\n",
        "source = encrypted-file\npassphrase-env = A\nextra = 1\n",
        "source = encrypted-file\nsource = pkcs11\n",
        "junk\n",
    ] {
        assert!(CaKeySource::parse_record(bad).is_err(), "{bad}");
    }
    let newline = CaKeySource::EncryptedFile {
        passphrase_env: "A\nsource = pkcs11".into(),
    };
    assert!(newline.record(tmp.path()).is_err());
    Ok(())
}

#[test]
fn flags_describe_one_source() {
    let none = CaKeyArgs::default();
    assert!(matches!(none.source(), Ok(None)));
    let enc = CaKeyArgs {
        ca_passphrase_env: Some("P".into()),
        ..Default::default()
    };
    assert!(matches!(
        enc.source(),
        Ok(Some(CaKeySource::EncryptedFile { .. }))
    ));
    let partial = CaKeyArgs {
        pkcs11_module: Some("/m.so".into()),
        ..Default::default()
    };
    assert!(partial.source().is_err());
    let both = CaKeyArgs {
        ca_passphrase_env: Some("P".into()),
        pkcs11_module: Some("/m.so".into()),
        pkcs11_token: Some("t".into()),
        pkcs11_key_label: Some("k".into()),
        pkcs11_pin_env: Some("PIN".into()),
    };
    assert!(both.source().is_err());
}

#[test]
fn encrypted_pkcs8_decrypts_only_with_its_passphrase() -> Result<(), Box<dyn std::error::Error>> {
    let key = KeyPair::generate()?;
    let der = Zeroizing::new(key.serialize_der());
    let pem = encrypt_pkcs8(&der, b"correct horse")?;
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let path = Path::new("ca.key");
    let back = decrypt_pkcs8(&pem, b"correct horse", path)?.ok_or("did not decrypt")?;
    assert_eq!(back.public_key_raw(), key.public_key_raw());
    assert!(decrypt_pkcs8(&pem, b"wrong horse", path)?.is_none());
    Ok(())
}

#[test]
fn raw_signature_becomes_der_that_verifies() -> Result<(), Box<dyn std::error::Error>> {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
        UnparsedPublicKey,
    };
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "keygen")?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| e.to_string())?;
    // Many messages, so that r or s with a high bit (DER needs a 0x00) and
    // short values (DER drops leading zeros) both occur.
    for i in 0..64u32 {
        let msg = i.to_be_bytes();
        let raw = kp.sign(&rng, &msg).map_err(|_| "sign")?;
        let der = raw_ecdsa_to_der(raw.as_ref()).ok_or("not r||s")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref())
            .verify(&msg, &der)
            .map_err(|_| "DER signature does not verify")?;
    }
    assert!(
        raw_ecdsa_to_der(&[0u8; 64]).is_none(),
        "r = s = 0 is invalid"
    );
    assert!(raw_ecdsa_to_der(&[1u8; 63]).is_none());
    Ok(())
}

#[cfg(unix)]
#[test]
fn readable_key_file_is_refused_with_the_fix() -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    crate::certs::init(tmp.path(), "t", &[], &CaKeySource::File)?;
    let key = tmp.path().join(CA_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640))?;
    let e = CaSigner::load(tmp.path(), &CaKeySource::File)
        .err()
        .ok_or("accepted a 0640 CA key")?;
    assert!(
        e.to_string()
            .contains(&format!("chmod 600 {}", key.display())),
        "{e}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    CaSigner::load(tmp.path(), &CaKeySource::File)?;
    Ok(())
}
