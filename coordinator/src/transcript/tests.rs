use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn names() -> BTreeMap<MemberId, String> {
    [(1, "a"), (2, "b"), (3, "c")]
        .into_iter()
        .map(|(m, s)| (m, s.to_string()))
        .collect()
}

fn record(round: u64, success: bool) -> Record {
    let rec = RoundRecord {
        round,
        kind: "train".into(),
        success,
        message: if success { "Σweight = 3" } else { "too few" }.into(),
        cohort: 3,
        duration_secs: 2.5,
        blamed: vec![("c".into(), "bad share".into())],
        ..Default::default()
    };
    let stages = vec![StageRecord::new(
        Stage::AdvertiseKeys,
        0.25,
        &[1],
        &[3, 2],
        &BTreeSet::from([1, 2]),
        &names(),
    )];
    let ending = Ending {
        survivors: if success { vec![1, 2] } else { vec![] },
        reconstructed: Reconstructed {
            self_mask_seeds: 2,
            mask_keys: 1,
        },
        reason: (!success).then(|| "too_few_survivors".to_string()),
    };
    Record::new(
        &rec,
        "intl",
        &names(),
        None,
        stages,
        ending,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    )
}

#[test]
fn a_record_names_sites_and_times_its_round() {
    let r = record(4, true);
    assert_eq!(r.format, FORMAT);
    assert_eq!(r.ended, "2023-11-14T22:13:20.123Z");
    assert_eq!(r.started, "2023-11-14T22:13:17.623Z");
    let whole_second = Record::new(
        &RoundRecord::default(),
        "gm",
        &names(),
        None,
        vec![],
        Ending::default(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    assert_eq!(whole_second.ended, "2023-11-14T22:13:20.000Z");
    assert_eq!(r.cohort.len(), 3);
    assert_eq!(
        r.cohort[2],
        Member {
            member: 3,
            site: "c".into()
        }
    );
    assert_eq!(r.stages[0].stage, "advertise-keys");
    // b answered but was pruned; c sent nothing.
    let st = &r.stages[0];
    assert_eq!(
        (&st.completed, &st.dropped, &st.pruned),
        (
            &sites(&[1], &names()),
            &sites(&[3], &names()),
            &sites(&[2], &names())
        )
    );
    assert_eq!(r.survivors, ["a", "b"]);
    assert_eq!(r.blamed[0].site, "c");
    assert_eq!(sites(&[9], &names()), ["member 9"]);
}

#[test]
fn appended_records_read_back_as_whole_lines() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The checkpoint directory need not exist yet.
    let ck = dir.path().join("ck");
    let (a, b) = (record(1, true), record(2, false));
    append(&ck, &a)?;
    append(&ck, &b)?;
    let text = fs::read_to_string(path(&ck))?;
    assert_eq!(text.lines().count(), 2);
    assert!(text.ends_with('\n'));
    let t = read(&path(&ck))?;
    assert_eq!(t.torn_line, None);
    let got: Vec<&Record> = t.entries.iter().map(|e| &e.record).collect();
    assert_eq!(got, [&a, &b]);
    assert_eq!(t.entries[1].line, 2);
    assert_eq!(Some(t.entries[1].raw.as_str()), text.lines().nth(1));
    Ok(())
}

#[test]
fn a_torn_last_line_is_reported_then_cut_before_the_next_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    let p = path(dir.path());
    append(dir.path(), &record(1, true))?;
    let whole = fs::read(&p)?;
    // A crash mid-write: the start of a second line, no newline. Longer
    // than the repair's read block, so the scan back crosses blocks.
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"format":1,"round":2,"kind":"train","message":""#);
    torn.extend(std::iter::repeat_n(b'x', 10_000));
    fs::write(&p, &torn)?;
    let t = read(&p)?;
    assert_eq!((t.entries.len(), t.torn_line), (1, Some(2)));

    append(dir.path(), &record(2, false))?;
    let t = read(&p)?;
    assert_eq!(t.torn_line, None);
    let rounds: Vec<u64> = t.entries.iter().map(|e| e.record.round).collect();
    assert_eq!(rounds, [1, 2]);
    assert!(fs::read(&p)?.starts_with(&whole));
    Ok(())
}

#[test]
fn a_file_of_one_torn_line_is_cut_to_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let p = path(dir.path());
    fs::write(&p, b"{\"format\":1,\"rou")?;
    let mut f = OpenOptions::new().read(true).append(true).open(&p)?;
    assert_eq!(repair(&mut f)?, 16);
    assert_eq!(fs::metadata(&p)?.len(), 0);
    // A whole file is left alone.
    append(dir.path(), &record(1, true))?;
    let len = fs::metadata(&p)?.len();
    let mut f = OpenOptions::new().read(true).append(true).open(&p)?;
    assert_eq!(repair(&mut f)?, 0);
    assert_eq!(fs::metadata(&p)?.len(), len);
    Ok(())
}

#[test]
fn a_corrupt_whole_line_is_an_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let p = path(dir.path());
    append(dir.path(), &record(1, true))?;
    let mut text = fs::read_to_string(&p)?;
    text.push_str("{\"round\": oops}\n");
    text.push_str(&serde_json::to_string(&record(3, true))?);
    text.push('\n');
    fs::write(&p, text)?;
    let e = read(&p).err().ok_or("a corrupt line must not read")?;
    assert!(
        matches!(e, CoordinatorError::TranscriptLine { line: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(matches!(
        read(&dir.path().join("missing.jsonl")),
        Err(CoordinatorError::Transcript { .. })
    ));
    Ok(())
}
