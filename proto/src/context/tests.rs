use super::*;

fn start() -> v1::RoundStart {
    v1::RoundStart {
        round: 4,
        kind: v1::RoundKind::Train as i32,
        member: 2,
        cohort: vec![1, 2, 3],
        suite: "intl".into(),
        ring: "u32".into(),
        k: 2,
        t: 2,
        graph_seed: vec![9; 32],
        vector_len: 10,
        min_survivors: 3,
        quantisation: Some(v1::Quantisation {
            clip: 4.0,
            scale: 1000.0,
            max_weight: 10,
            max_cohort: 3,
            bits: 24,
        }),
        training: Some(v1::TrainingConfig {
            model: "logistic".into(),
            features: 30,
            classes: 2,
            epochs: 5,
            batch_size: 16,
            learning_rate: 0.05,
            ..Default::default()
        }),
        model_bytes: 100,
        evaluate: true,
        feature_mean: vec![0.5, 1.5],
        feature_std: vec![1.0, 2.0],
        stage_timeout_secs: 60,
        plaintext: false,
        attempt: vec![7; 32],
        max_colluders: 1,
        model_sha256: vec![8; 32],
        crl: Vec::new(),
    }
}

fn ctx(rs: &v1::RoundStart) -> [u8; 32] {
    round_context(Suite::Intl, "fed", &[5; 32], rs)
}

#[test]
fn member_and_crl_are_not_bound() {
    let a = start();
    let b = v1::RoundStart {
        member: 3,
        ..a.clone()
    };
    assert_eq!(ctx(&a), ctx(&b));
    // The coordinator stamps its current CRL on each copy as it is delivered.
    let c = v1::RoundStart {
        crl: vec![0x30, 0x03, 1, 2, 3],
        ..a.clone()
    };
    assert_eq!(ctx(&a), ctx(&c));
}

#[test]
fn every_other_field_is_bound() {
    type Mutate = fn(&mut v1::RoundStart);
    let cases: &[(&str, Mutate)] = &[
        ("round", |r| r.round += 1),
        ("kind", |r| r.kind = v1::RoundKind::Evaluate as i32),
        ("cohort", |r| r.cohort.push(4)),
        ("suite", |r| r.suite = "gm".into()),
        ("ring", |r| r.ring = "u64".into()),
        ("k", |r| r.k += 1),
        ("t", |r| r.t += 1),
        ("graph_seed", |r| r.graph_seed[0] ^= 1),
        ("vector_len", |r| r.vector_len += 1),
        ("min_survivors", |r| r.min_survivors += 1),
        ("quantisation", |r| {
            if let Some(q) = r.quantisation.as_mut() {
                q.scale *= 2.0;
            }
        }),
        ("training", |r| {
            if let Some(t) = r.training.as_mut() {
                t.learning_rate *= 2.0;
            }
        }),
        ("model_bytes", |r| r.model_bytes += 1),
        ("evaluate", |r| r.evaluate = !r.evaluate),
        ("feature_mean", |r| r.feature_mean[0] += 1.0),
        ("feature_std", |r| r.feature_std[1] += 1.0),
        ("stage_timeout_secs", |r| r.stage_timeout_secs += 1),
        ("plaintext", |r| r.plaintext = !r.plaintext),
        ("attempt", |r| r.attempt[31] ^= 1),
        ("max_colluders", |r| r.max_colluders += 1),
        ("model_sha256", |r| r.model_sha256[0] ^= 1),
    ];
    let base = ctx(&start());
    for (name, mutate) in cases {
        let mut rs = start();
        mutate(&mut rs);
        assert_ne!(ctx(&rs), base, "{name} is not bound into the context");
    }
}

#[test]
fn federation_ca_and_suite_are_bound() {
    let rs = start();
    let base = ctx(&rs);
    assert_ne!(round_context(Suite::Intl, "fed2", &[5; 32], &rs), base);
    assert_ne!(round_context(Suite::Intl, "fed", &NO_CA, &rs), base);
    assert_ne!(round_context(Suite::Gm, "fed", &[5; 32], &rs), base);
    // Length-prefixed: moving bytes between federation and the rest differs.
    assert_ne!(
        round_context(Suite::Intl, "", &[5; 32], &rs),
        round_context(Suite::Intl, "f", &[5; 32], &rs)
    );
}

#[test]
fn ca_fingerprint_is_the_sha256_of_the_first_certificate_der() {
    // DER bytes 30 03 02 01 01, base64 "MAMCAQE=".
    let pem = b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    assert_eq!(
        ca_fingerprint_pem(pem),
        Ok(sha256(&[0x30, 0x03, 0x02, 0x01, 0x01]))
    );
    assert!(ca_fingerprint_pem(b"not a certificate").is_err());
    assert_eq!(
        hex::encode(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
