use super::*;
use crate::checkpoint::LocalKek;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn manifest(suite: Suite, round: u64) -> Manifest {
    Manifest {
        format: 1,
        round,
        model_round: round,
        next_round: round + 1,
        completed_train_rounds: round,
        suite: suite.name().into(),
        config_hash: "cafe".into(),
        optimiser: "fedadam".into(),
        optimiser_state: None,
        preprocess: None,
        tensors: vec![],
        history: vec![crate::checkpoint::RoundRecord {
            round,
            accuracy: Some(0.123_456_789_012_345_67),
            message: "a \"tag\": \"quoted\" note".into(),
            ..Default::default()
        }],
        objects: vec![],
        lease_token: None,
    }
}

fn kek(id: &str, byte: u8) -> Arc<dyn KeyWrapper> {
    Arc::new(LocalKek::from_bytes(id, [byte; 32]))
}

fn sealed(suite: Suite, round: u64, s: &Sealing) -> Result<SealedCheckpoint, CoordinatorError> {
    s.seal(
        &manifest(suite, round),
        b"model bytes",
        Some(b"optimiser bytes"),
    )?
    .ok_or_else(|| CoordinatorError::Checkpoint("not sealed".into()))
}

fn open(s: &Sealing, json: &[u8], round: u64) -> Result<Opened, CoordinatorError> {
    let raw = RawManifest::parse(json.to_vec()).map_err(CoordinatorError::ManifestJson)?;
    s.open(raw, round, "here")
}

#[test]
fn a_sealed_checkpoint_opens_with_its_key_in_both_suites() -> TestResult {
    for suite in Suite::ALL {
        let s = Sealing::with_key(kek("k1", 1));
        let c = sealed(suite, 4, &s)?;
        let o = open(&s, &c.manifest_json, 4)?;
        assert!(o.sealed());
        assert_eq!(o.manifest.history, manifest(suite, 4).history);
        assert_eq!(o.manifest.optimiser_state.as_deref(), Some(OPTIMISER));
        let (name, bytes) = &c.objects[0];
        assert_eq!(
            Sealing::open_object(&o, name, bytes.clone(), "here")?,
            b"model bytes"
        );
        let (name, bytes) = &c.objects[1];
        assert_eq!(
            Sealing::open_object(&o, name, bytes.clone(), "here")?,
            b"optimiser bytes"
        );
        // The envelope names the suite's algorithms, and no key material.
        let text = String::from_utf8(c.manifest_json.clone())?;
        assert!(text.contains(seal::aead_name(suite)) && text.contains(seal::mac_name(suite)));
        assert!(!text.contains(&hex::encode([1u8; 32])));
    }
    Ok(())
}

#[test]
fn every_flipped_manifest_byte_is_refused() -> TestResult {
    for suite in Suite::ALL {
        let s = Sealing::with_key(kek("k1", 1));
        let json = sealed(suite, 4, &s)?.manifest_json;
        let mut refused = 0;
        for i in 0..json.len() {
            let mut t = json.clone();
            t[i] ^= 0x01;
            // A flip that breaks the JSON fails to parse, as the backends report.
            if let Ok(raw) = RawManifest::parse(t) {
                let r = s.open(raw, 4, "here");
                assert!(
                    matches!(
                        r,
                        Err(CoordinatorError::TamperedCheckpoint { .. }
                            | CoordinatorError::CheckpointKey { .. })
                    ),
                    "{suite}: byte {i} flipped was accepted: {r:?}"
                );
                refused += 1;
            }
        }
        // Every flip that still parses (about 40%) is one the MAC must catch.
        assert!(refused > json.len() / 4, "{refused} of {}", json.len());
    }
    Ok(())
}

#[test]
fn a_flipped_object_byte_names_the_object() -> TestResult {
    let s = Sealing::with_key(kek("k1", 1));
    let c = sealed(Suite::Gm, 4, &s)?;
    let o = open(&s, &c.manifest_json, 4)?;
    let mut b = c.objects[0].1.clone();
    b[3] ^= 0x80;
    let e = Sealing::open_object(&o, MODEL, b, "here")
        .err()
        .map(|e| e.to_string());
    let e = e.unwrap_or_default();
    assert!(
        e.contains("fails authentication") && e.contains(MODEL),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_manifest_from_another_round_or_checkpoint_is_refused() -> TestResult {
    let s = Sealing::with_key(kek("k1", 1));
    let three = sealed(Suite::Intl, 3, &s)?;
    let four = sealed(Suite::Intl, 4, &s)?;
    let e = open(&s, &three.manifest_json, 4)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("swapped in") && e.contains("round 3"), "{e}");
    // Round 4's own manifest re-saved (fresh data key): the old objects do not open.
    let again = sealed(Suite::Intl, 4, &s)?;
    let o = open(&s, &again.manifest_json, 4)?;
    let r = Sealing::open_object(&o, MODEL, four.objects[0].1.clone(), "here");
    assert!(
        matches!(r, Err(CoordinatorError::TamperedCheckpoint { .. })),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn without_the_key_or_with_another_one_the_error_names_the_key_id() -> TestResult {
    let c = sealed(Suite::Intl, 4, &Sealing::with_key(kek("k1", 1)))?;
    for (s, says) in [
        (Sealing::none(), "no key-encryption key is configured"),
        (
            Sealing::with_key(kek("k2", 2)),
            "the configured key is \"k2\"",
        ),
        (Sealing::with_key(kek("k1", 9)), "does not unwrap"),
    ] {
        match open(&s, &c.manifest_json, 4) {
            Err(e @ CoordinatorError::CheckpointKey { .. }) => {
                let e = e.to_string();
                assert!(e.contains("\"k1\"") && e.contains(says), "{e}");
            }
            other => panic!("expected a key error, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn plaintext_is_refused_where_encryption_is_required_unless_allowed() -> TestResult {
    let json = serde_json::to_vec_pretty(&manifest(Suite::Intl, 2))?;
    let s = Sealing::with_key(kek("k1", 1));
    let r = open(&s, &json, 2);
    assert!(
        matches!(r, Err(CoordinatorError::TamperedCheckpoint { .. })),
        "{r:?}"
    );
    assert!(!open(&s.clone().allow_plaintext(true), &json, 2)?.sealed());
    assert!(!open(&Sealing::none(), &json, 2)?.sealed());
    Ok(())
}

#[test]
fn rewrap_moves_the_key_and_keeps_the_objects() -> TestResult {
    let (old, new) = (kek("k1", 1), kek("k2", 2));
    let c = sealed(Suite::Gm, 5, &Sealing::with_key(old.clone()))?;
    let raw = RawManifest::parse(c.manifest_json.clone())?;
    let Rewrap::Write(json) = Sealing::rewrap(raw, 5, "here", old.clone(), new.as_ref())? else {
        panic!("nothing rewritten");
    };
    let o = open(&Sealing::with_key(new.clone()), &json, 5)?;
    assert_eq!(
        Sealing::open_object(&o, MODEL, c.objects[0].1.clone(), "here")?,
        b"model bytes"
    );
    assert!(matches!(
        open(&Sealing::with_key(old.clone()), &json, 5),
        Err(CoordinatorError::CheckpointKey { .. })
    ));
    // Again: nothing to do. With the wrong old key: refused, nothing written.
    let raw = RawManifest::parse(json)?;
    assert!(matches!(
        Sealing::rewrap(raw, 5, "here", old.clone(), new.as_ref())?,
        Rewrap::Skip(RewrapOutcome::AlreadyUnderNewKey)
    ));
    let raw = RawManifest::parse(c.manifest_json)?;
    assert!(Sealing::rewrap(raw, 5, "here", kek("k1", 7), new.as_ref()).is_err());
    Ok(())
}
