use super::*;

fn ctx(suite: Suite, name: &str) -> ObjectContext<'_> {
    ObjectContext {
        suite,
        round: 7,
        name,
    }
}

/// Plaintexts at the segment boundaries and inside them.
fn lengths() -> [usize; 6] {
    [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 123]
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn objects_round_trip_at_every_boundary_in_both_suites() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        for n in lengths() {
            let pt = data(n);
            let sealed = seal_object(&dk, ctx(suite, "model.safetensors"), &pt)?;
            assert_eq!(sealed.len(), n + n.div_ceil(SEGMENT).max(1) * TAG);
            if n > 0 {
                assert_ne!(&sealed[..n.min(64)], &pt[..n.min(64)], "{suite} {n}");
            }
            assert_eq!(
                open_object(&dk, ctx(suite, "model.safetensors"), &sealed)?,
                pt
            );
        }
    }
    Ok(())
}

#[test]
fn wrong_key_name_round_or_suite_do_not_open() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        let pt = data(SEGMENT + 10);
        let sealed = seal_object(&dk, ctx(suite, "model.safetensors"), &pt)?;
        let other = DataKey::generate();
        let bad =
            |r: Result<Vec<u8>, SealError>| matches!(r, Err(SealError::Segment { index: 0, .. }));
        assert!(bad(open_object(
            &other,
            ctx(suite, "model.safetensors"),
            &sealed
        )));
        assert!(bad(open_object(
            &dk,
            ctx(suite, "optimiser.safetensors"),
            &sealed
        )));
        let mut c = ctx(suite, "model.safetensors");
        c.round = 8;
        assert!(bad(open_object(&dk, c, &sealed)));
        let other_suite = if suite == Suite::Intl {
            Suite::Gm
        } else {
            Suite::Intl
        };
        assert!(bad(open_object(
            &dk,
            ctx(other_suite, "model.safetensors"),
            &sealed
        )));
    }
    Ok(())
}

#[test]
fn a_flipped_byte_anywhere_is_caught_in_its_segment() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        let pt = data(2 * SEGMENT + 5);
        let sealed = seal_object(&dk, ctx(suite, "m"), &pt)?;
        // First byte, a tag byte of segment 0, a byte of segment 1, the last byte.
        for (at, seg) in [
            (0, 0),
            (SEGMENT + 3, 0),
            (SEGMENT + TAG + 9, 1),
            (sealed.len() - 1, 2),
        ] {
            let mut t = sealed.clone();
            t[at] ^= 0x01;
            assert_eq!(
                open_object(&dk, ctx(suite, "m"), &t),
                Err(SealError::Segment {
                    object: "m".into(),
                    index: seg,
                    segments: 3
                }),
                "{suite} byte {at}"
            );
        }
    }
    Ok(())
}

#[test]
fn truncated_reordered_or_extended_objects_do_not_open() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        let pt = data(3 * SEGMENT);
        let sealed = seal_object(&dk, ctx(suite, "m"), &pt)?;
        let seg = SEGMENT + TAG;
        // Whole last segment dropped: the new last one was not sealed as final.
        assert!(open_object(&dk, ctx(suite, "m"), &sealed[..2 * seg]).is_err());
        // Cut inside a segment, or down to less than a tag.
        assert!(open_object(&dk, ctx(suite, "m"), &sealed[..sealed.len() - 1]).is_err());
        assert!(matches!(
            open_object(&dk, ctx(suite, "m"), &sealed[..TAG - 1]),
            Err(SealError::TooShort { .. })
        ));
        // Segments 0 and 1 swapped.
        let mut swapped = sealed[seg..2 * seg].to_vec();
        swapped.extend_from_slice(&sealed[..seg]);
        swapped.extend_from_slice(&sealed[2 * seg..]);
        assert!(open_object(&dk, ctx(suite, "m"), &swapped).is_err());
        // A tag-only segment appended.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; TAG]);
        assert!(open_object(&dk, ctx(suite, "m"), &longer).is_err());
    }
    Ok(())
}

#[test]
fn the_manifest_mac_binds_every_byte_and_the_key() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        let text = b"{\"round\": 3, \"history\": []}".to_vec();
        let tag = manifest_mac(suite, &dk, &text)?;
        verify_manifest_mac(suite, &dk, &text, &tag)?;
        for i in 0..text.len() {
            let mut t = text.clone();
            t[i] ^= 0x20;
            assert_eq!(
                verify_manifest_mac(suite, &dk, &t, &tag),
                Err(SealError::Mac)
            );
        }
        let other = DataKey::generate();
        assert_eq!(
            verify_manifest_mac(suite, &other, &text, &tag),
            Err(SealError::Mac)
        );
        assert_eq!(
            verify_manifest_mac(suite, &dk, &text, &tag[..31]),
            Err(SealError::Mac)
        );
    }
    Ok(())
}

#[test]
fn key_wrapping_aead_round_trips_and_refuses_another_context() -> Result<(), SealError> {
    for suite in Suite::ALL {
        let key = derive(suite, b"kek", b"kek", aead_key_len(suite))?;
        let aead = Aead::new(suite, &key)?;
        let sealed = aead.seal_random(b"ctx", b"data key")?;
        assert_eq!(
            aead.open_random(b"ctx", &sealed)
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"data key"[..])
        );
        assert!(aead.open_random(b"ctx2", &sealed).is_none());
        let mut t = sealed.clone();
        t[0] ^= 1;
        assert!(aead.open_random(b"ctx", &t).is_none());
        assert!(aead.open_random(b"ctx", &sealed[..20]).is_none());
    }
    Ok(())
}

#[test]
fn data_keys_never_print() {
    let dk = DataKey::generate();
    let shown = format!("{dk:?}");
    assert_eq!(shown, "DataKey(<redacted>)");
    assert!(!shown.contains(&hex::encode(dk.expose())));
}

/// Throughput of sealing and opening (and, for comparison, SHA-256) on
/// 256 MiB, both suites: where the time of an encrypted checkpoint goes.
/// `cargo test -p confide-coordinator --lib seal_throughput -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand"]
fn seal_throughput() -> Result<(), SealError> {
    use sha2::Digest;
    let pt = data(256 << 20);
    let t = std::time::Instant::now();
    let d = sha2::Sha256::digest(&pt);
    let mb_s = |t: std::time::Instant| pt.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("SHA-256: {:.0} MB/s ({:02x})", mb_s(t), d[0]);
    for suite in Suite::ALL {
        let dk = DataKey::generate();
        let t = std::time::Instant::now();
        let sealed = seal_object(&dk, ctx(suite, "m"), &pt)?;
        let seal_rate = mb_s(t);
        let t = std::time::Instant::now();
        let back = open_object(&dk, ctx(suite, "m"), &sealed)?;
        println!(
            "{}: seal {seal_rate:.0} MB/s, open {:.0} MB/s on {} workers",
            aead_name(suite),
            mb_s(t),
            workers(usize::MAX)
        );
        assert_eq!(back.len(), pt.len());
    }
    Ok(())
}
