use super::*;

fn sample_start() -> v1::RoundStart {
    v1::RoundStart {
        round: 4,
        kind: v1::RoundKind::Train as i32,
        member: 2,
        cohort: vec![1, 2, 3],
        suite: "gm".into(),
        ring: "u32".into(),
        k: 2,
        t: 2,
        graph_seed: vec![9; 32],
        vector_len: 10,
        min_survivors: 3,
        max_colluders: 1,
        attempt: vec![1; 32],
        model_sha256: vec![2; 32],
        ..Default::default()
    }
}

const FP: [u8; 32] = [3; 32];

fn config(rs: &v1::RoundStart) -> Result<RoundConfig, ConvertError> {
    round_config(rs, "fed", &FP)
}

#[test]
fn round_start_converts_both_ways() -> Result<(), ConvertError> {
    let rs = sample_start();
    let cfg = config(&rs)?;
    assert_eq!(cfg.suite, Suite::Gm);
    assert_eq!(cfg.ring, Ring::U32);
    assert_eq!(cfg.params, SecAggParams { k: 2, t: 2 });
    assert_eq!(cfg.vector_len, 10);
    assert_eq!((cfg.min_survivors, cfg.max_colluders), (3, 1));
    assert_eq!(
        cfg.context,
        crate::context::round_context(Suite::Gm, "fed", &FP, &rs)
    );
    assert!(cfg.topology().is_ok());
    // The context is derived, not carried: the caller adds what it binds.
    let back = v1::RoundStart {
        kind: rs.kind,
        attempt: rs.attempt.clone(),
        model_sha256: rs.model_sha256.clone(),
        ..round_start(&cfg, 2)
    };
    assert_eq!(back, rs);
    assert_eq!(config(&back)?, cfg);
    // Another federation or CA: same parameters, another context.
    assert_ne!(round_config(&rs, "other", &FP)?.context, cfg.context);
    assert_ne!(round_config(&rs, "fed", &[0; 32])?.context, cfg.context);
    Ok(())
}

#[test]
fn round_start_validation_names_the_field() {
    type Mutate = fn(&mut v1::RoundStart);
    let cases: [(Mutate, &str); 8] = [
        (|r| r.suite = "rsa".into(), "suite"),
        (|r| r.ring = "u16".into(), "ring"),
        (|r| r.graph_seed = vec![0; 31], "graph_seed"),
        (|r| r.vector_len = 0, "vector_len"),
        (|r| r.vector_len = MAX_VECTOR_LEN + 1, "vector_len"),
        (|r| r.cohort.clear(), "cohort"),
        (|r| r.attempt.clear(), "attempt"),
        (|r| r.model_sha256 = vec![0; 31], "model_sha256"),
    ];
    for (mutate, field) in cases {
        let mut rs = sample_start();
        mutate(&mut rs);
        match config(&rs) {
            Ok(_) => panic!("accepted a bad {field}"),
            Err(e) => assert!(e.field.ends_with(field), "{e} should name {field}"),
        }
    }
}

#[test]
fn quant_config_requires_a_positive_scale() {
    let q = v1::Quantisation {
        clip: 1.0,
        scale: 0.0,
        max_weight: 10,
        max_cohort: 3,
        bits: 0,
    };
    assert!(quant_config(Some(&q), Ring::U32).is_err());
    assert!(quant_config(None, Ring::U32).is_err());
    let q = v1::Quantisation { scale: 1000.0, ..q };
    let c = quant_config(Some(&q), Ring::U64);
    assert_eq!(
        c.map(|c| (c.scale, c.max_cohort, c.ring, c.bits)),
        Ok((Some(1000.0), 3, Ring::U64, Some(64)))
    );
    let q = v1::Quantisation { bits: 24, ..q };
    assert_eq!(
        quant_config(Some(&q), Ring::U32).map(|c| c.bits),
        Ok(Some(24))
    );
}

#[test]
fn malformed_shares_and_commitments_are_refused() {
    let r = v1::UnmaskResponse {
        seed_shares: vec![v1::Share {
            owner: 3,
            share: vec![1; 10],
        }],
        ..Default::default()
    };
    assert!(unmask_response_from_proto(&r).is_err_and(|e| e.field == "unmask.seed_shares"));
    let b = v1::ShareKeysRequest {
        seed_commitment: vec![0; 5],
        ..Default::default()
    };
    assert!(share_bundle_from_proto(&b).is_err());
    let nk = v1::NeighbourKeys {
        round: 1,
        adverts: vec![v1::RelayedAdvert {
            advert: Some(v1::KeyAdvert::default()),
            ..Default::default()
        }],
    };
    assert!(neighbour_keys_from_proto(&nk).is_err_and(|e| e.field.ends_with("verifying_key")));
}

#[test]
fn relayed_keys_carry_site_and_certificate_and_convert_back() -> Result<(), ConvertError> {
    let advert = |member| KeyAdvert {
        round: 7,
        member,
        enc_public: vec![member as u8; 3],
        mask_public: vec![9; 3],
        signature: vec![1, 2],
    };
    let msg = NeighbourKeys {
        round: 7,
        adverts: vec![
            RelayedAdvert {
                advert: advert(1),
                identity: vec![0xaa],
            },
            RelayedAdvert {
                advert: advert(2),
                identity: vec![0xbb],
            },
        ],
    };
    let alice = RelayedIdentity {
        site: "alice".into(),
        certificate: vec![0x30, 0x01],
    };
    let wire = v1::NeighbourKeys {
        round: msg.round,
        adverts: msg
            .adverts
            .iter()
            .map(|r| relayed_advert_to_proto(r, (r.advert.member == 1).then_some(&alice)))
            .collect(),
    };
    assert_eq!(wire.adverts[0].site, "alice");
    assert_eq!(wire.adverts[0].certificate, vec![0x30, 0x01]);
    assert_eq!(wire.adverts[1].site, "");
    assert_eq!(neighbour_keys_from_proto(&wire)?, msg);
    assert_eq!(
        neighbour_keys_from_proto(&neighbour_keys_to_proto(&msg))?,
        msg
    );
    Ok(())
}

fn masking(member: MemberId) -> confide_crypto::protocol::MaskingSet {
    confide_crypto::protocol::MaskingSet {
        round: 7,
        member,
        peers: vec![1, 2, 3].into_iter().filter(|&p| p != member).collect(),
        signature: vec![member as u8; 4],
    }
}

#[test]
fn consistency_request_relays_compact_sets_and_converts_back() {
    use confide_crypto::protocol::{ConsistencyRequest, RelayedMaskingSet};
    let msg = ConsistencyRequest {
        round: 7,
        survivors: vec![1, 2, 3],
        masking: (1..=3)
            .map(|m| RelayedMaskingSet {
                member: m,
                unmasked: if m == 2 { vec![4, 9] } else { Vec::new() },
                signature: vec![m as u8; 4],
            })
            .collect(),
    };
    let wire = consistency_request_to_proto(&msg);
    assert_eq!(wire.masking[1].member, 2);
    assert_eq!(wire.masking[1].unmasked, vec![4, 9]);
    assert_eq!(consistency_request_from_proto(&wire), msg);
    // The masking set alone, as the first upload chunk carries it.
    let set = masking(2);
    assert_eq!(masking_set_from_proto(&masking_set_to_proto(&set)), set);
}

/// The request every survivor receives grows with the survivors, not with
/// their neighbourhoods: at 1000 sites, 950 survivors, Ed25519 signatures
/// and nobody unmasked, 69 201 bytes (73 a survivor). A certificate or a
/// peer list per set would be 500+ bytes each and fail this.
#[test]
fn consistency_request_is_about_a_signature_per_survivor() {
    use confide_crypto::protocol::{ConsistencyRequest, RelayedMaskingSet};
    let survivors: Vec<MemberId> = (51..=1000).collect();
    let msg = ConsistencyRequest {
        round: 1,
        masking: survivors
            .iter()
            .map(|&m| RelayedMaskingSet {
                member: m,
                unmasked: Vec::new(),
                signature: vec![0xa5; 64],
            })
            .collect(),
        survivors,
    };
    let len = prost::Message::encoded_len(&consistency_request_to_proto(&msg));
    assert!((950 * 64..=950 * 76).contains(&len), "{len} bytes");
}

#[test]
fn consistency_response_and_unmask_request_convert_both_ways() -> Result<(), ConvertError> {
    use confide_crypto::protocol::{RelayedSignature, SurvivorSignature, UnmaskRequest};
    let sig = |member| SurvivorSignature {
        round: 7,
        member,
        signature: vec![member as u8; 3],
    };
    let resp = consistency_response_to_proto(&sig(2), "sess");
    assert_eq!(
        (resp.session.as_str(), resp.member, resp.round),
        ("sess", 2, 7)
    );
    assert_eq!(consistency_response_from_proto(&resp), sig(2));
    let msg = UnmaskRequest {
        round: 7,
        survivors: vec![1, 2, 3],
        signatures: (1..=3)
            .map(|m| RelayedSignature {
                signature: sig(m),
                identity: vec![0xb0 + m as u8],
            })
            .collect(),
    };
    let carol = RelayedIdentity {
        site: "carol".into(),
        certificate: vec![0x30, 0x03],
    };
    let wire = unmask_request_with_certificates(&msg, |m| (m == 3).then_some(&carol));
    assert_eq!(wire.signatures[2].site, "carol");
    assert_eq!(wire.signatures[2].certificate, vec![0x30, 0x03]);
    assert_eq!(wire.signatures[0].certificate, Vec::<u8>::new());
    assert_eq!(unmask_request_from_proto(&wire)?, msg);
    assert_eq!(
        unmask_request_from_proto(&unmask_request_to_proto(&msg))?,
        msg
    );
    let mut bad = wire.clone();
    bad.signatures[1].verifying_key.clear();
    assert!(unmask_request_from_proto(&bad).is_err_and(|e| e.field.ends_with("verifying_key")));
    let mut bad = wire;
    bad.signatures[1].signature = None;
    assert!(unmask_request_from_proto(&bad).is_err_and(|e| e.field.ends_with("signature")));
    Ok(())
}
