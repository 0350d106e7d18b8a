use super::*;
use confide_crypto::protocol::RingVec;
use confide_crypto::quant::QuantConfig;
use confide_proto::model::ModelKind;

fn insecure(min_sites: usize, max_sites: usize) -> Settings {
    let mut s = Settings {
        min_sites,
        max_sites,
        ..Default::default()
    };
    s.tls.insecure = true;
    // These sites claim weight 1 (in-process: a few rows). The mean's
    // error bound is c·N·W/(L·T) = 4·10/65536 ≈ 6e-4 at W = 10, inside the
    // tests' 1e-3; at the default W = 10^4 it would be 0.61.
    s.quantisation.max_weight = 10;
    s
}

#[test]
fn initial_model_is_deterministic() -> Result<(), CoordinatorError> {
    let s = Settings::default();
    let a = initial_model(&s)?.to_safetensors(None)?;
    let b = initial_model(&s)?.to_safetensors(None)?;
    assert_eq!(a, b);
    Ok(())
}

#[test]
fn unknown_model_kind_is_a_config_error() {
    // `model.kind` is typed, so an unknown kind is refused while the file is
    // read rather than when the model is built.
    let s = Settings::from_toml_str("[model]\nkind = \"transformer\"\n");
    assert!(matches!(s, Err(CoordinatorError::Config(_))));
}

#[test]
fn joins_are_limited_named_and_bound_to_the_tls_identity() -> Result<(), Box<dyn std::error::Error>>
{
    // Three sites: the smallest cohort secure aggregation accepts.
    let fed = Federation::new(insecure(3, 3))?;
    let a = fed.join("a", &[1; 32], None)?;
    assert_eq!(
        fed.join("b", &[1; 32], Some("a")),
        Err(RequestError::IdentityMismatch {
            peer: "a".into(),
            site: "b".into()
        })
    );
    assert!(fed.join("b", &[1; 32], Some("b")).is_ok());
    assert!(fed.join("c", &[1; 32], None).is_ok());
    assert!(matches!(
        fed.join("d", &[1; 32], None),
        Err(RequestError::TooManySites { max_sites: 3 })
    ));
    assert_eq!(
        fed.join("../x", &[1; 32], None),
        Err(RequestError::SiteName)
    );
    assert_eq!(fed.join("a", &[], None), Err(RequestError::VerifyingKey));
    // Rejoining replaces the session and keeps the member id.
    let m = fed.session(&a, None)?.member;
    let a2 = fed.join("a", &[2; 32], None)?;
    assert_eq!(
        fed.session(&a, None).err(),
        Some(RequestError::UnknownSession)
    );
    assert_eq!(fed.session(&a2, None).map(|i| i.member).ok(), Some(m));
    assert!(matches!(
        fed.session(&a2, Some("b")),
        Err(RequestError::IdentityMismatch { .. })
    ));
    // No round is running: stage messages are refused without effect.
    assert_eq!(
        fed.download(&a2, None, 1).err(),
        Some(RequestError::NoModel { round: 1 })
    );
    assert!(matches!(
        fed.advertise(
            &a2,
            None,
            pb::KeyAdvert {
                round: 1,
                member: m,
                ..Default::default()
            },
            Vec::new()
        ),
        Err(RequestError::WrongRound { .. })
    ));
    Ok(())
}

/// Settings of a one-round federation of `n` sites: no statistics round, no
/// final evaluation, 4 s stages, give up after the first failure.
pub(super) fn one_round(secure: bool, n: usize) -> Settings {
    let mut s = insecure(n, n);
    s.rounds = 1;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.secure_aggregation = secure;
    s.secagg.stage_timeout_secs = 4;
    s.max_consecutive_failures = 1;
    s
}

/// `f` of each task the round keeps for `session`'s replay.
fn kept_map<T>(
    fed: &Federation,
    session: &str,
    f: impl Fn(&registry::OutTask) -> T,
) -> Result<Vec<T>, Box<dyn std::error::Error>> {
    let member = fed.session(session, None)?.member;
    let g = fed.lock();
    let tasks = g.round.as_ref().and_then(|r| r.sent.get(&member));
    Ok(tasks.into_iter().flatten().map(|t| f(t)).collect())
}

/// The kinds of the tasks the round keeps for `session`'s replay.
fn kept(fed: &Federation, session: &str) -> Result<Vec<&'static str>, Box<dyn std::error::Error>> {
    use pb::task::Kind;
    kept_map(fed, session, |t| {
        match t.task.to_task().ok().and_then(|t| t.kind) {
            Some(Kind::RoundStart(_)) => "round_start",
            Some(Kind::NeighbourKeys(_)) => "neighbour_keys",
            Some(Kind::IncomingShares(_)) => "incoming_shares",
            Some(Kind::ConsistencyRequest(_)) => "consistency_request",
            Some(Kind::UnmaskRequest(_)) => "unmask_request",
            _ => "other",
        }
    })
}

/// Whether the shares kept for `session`'s replay are held on disk (`None`:
/// none kept).
fn shares_held(
    fed: &Federation,
    session: &str,
) -> Result<Option<bool>, Box<dyn std::error::Error>> {
    use confide_proto::task_parts::OutgoingTask;
    let held = kept_map(fed, session, |t| {
        (t.asks == Some(confide_crypto::Stage::MaskedInput))
            .then_some(matches!(t.task, OutgoingTask::Stored { .. }))
    })?;
    Ok(held.into_iter().flatten().next())
}

/// Sites joined with open task streams.
type Joined = Vec<(
    String,
    confide_crypto::MemberId,
    crate::federation::TaskStream,
)>;

fn join(fed: &Arc<Federation>, names: &[&str]) -> Result<Joined, RequestError> {
    let mut out = Vec::new();
    for name in names {
        let session = fed.join(name, &[7; 32], None)?;
        let member = fed.session(&session, None)?.member;
        let rx = fed.open_tasks(&session, None)?;
        out.push((session, member, rx));
    }
    Ok(out)
}

async fn round_start(rx: &mut crate::federation::TaskStream) -> Option<pb::RoundStart> {
    match rx.recv().await?.kind? {
        pb::task::Kind::RoundStart(s) => Some(s),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_cohort_fails_the_round_at_the_stage_deadline()
-> Result<(), Box<dyn std::error::Error>> {
    // A secure cohort needs three members.
    let fed = Federation::new(one_round(true, 3))?;
    let mut sites = join(&fed, &["a", "b", "c"])?;
    let begun = tokio::time::Instant::now();
    let driver = tokio::spawn({
        let fed = fed.clone();
        async move { fed.run().await }
    });
    let start = round_start(&mut sites[0].2).await.ok_or("no RoundStart")?;
    assert_eq!((start.round, start.cohort.len()), (1, 3));
    // Nobody advertises: the first stage closes at its deadline, in virtual time.
    let res = driver.await?;
    assert!(matches!(res, Err(CoordinatorError::Rounds { failures: 1 })));
    let waited = tokio::time::Instant::now() - begun;
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let h = fed.history();
    assert_eq!(h.len(), 1);
    assert!(!h[0].success && h[0].kind == "train" && h[0].cohort == 3);
    assert_eq!((h[0].survivors, h[0].dropped), (0, 3));
    assert_eq!(fed.report().completed_rounds, 0);
    // Both sites were told the round ended.
    for (_, _, rx) in &mut sites {
        let mut ended = false;
        while let Ok(t) = rx.try_recv() {
            ended |= matches!(t.kind, Some(pb::task::Kind::RoundEnd(ref e)) if !e.success);
        }
        assert!(ended);
    }
    assert_eq!(fed.status().0, 0, "no round is active any more");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_plaintext_round_updates_the_model_from_the_uploads()
-> Result<(), Box<dyn std::error::Error>> {
    let s = one_round(false, 2);
    let fed = Federation::new(s.clone())?;
    let before = initial_model(&s)?.flatten();
    let mut sites = join(&fed, &["a", "b"])?;
    let driver = tokio::spawn({
        let fed = fed.clone();
        async move { fed.run().await }
    });
    let quant = Quantiser::new(&QuantConfig {
        ring: s.ring,
        clip: s.quantisation.clip,
        max_weight: s.quantisation.max_weight,
        max_cohort: s.max_sites,
        scale: s.quantisation.scale,
        levels: Some(s.quantisation.levels),
        bits: None,
        min_levels: confide_crypto::quant::DEFAULT_MIN_LEVELS,
    })?;
    let d = before.len();
    for (i, (session, _, rx)) in sites.iter_mut().enumerate() {
        let start = round_start(rx).await.ok_or("no RoundStart")?;
        assert!(start.plaintext);
        assert_eq!(start.vector_len as usize, d + 4);
        // Site i moves every parameter by i + 1 and saw [correct, examples, loss].
        let delta = vec![(i + 1) as f32 * 0.25; d];
        let v: Vec<u32> = quant.encode(&delta, 1, &[3, 4, 1_000], &mut rand::rng())?;
        let bytes = round::tests::wire(&start, &v, 0..v.len());
        let mut up = fed
            .begin_upload(session, None, start.round, start.vector_len)
            .await?;
        up.push(0, &bytes)?;
        fed.finish_upload(session, None, up, None).await?;
    }
    let report = driver.await??;
    assert_eq!(report.completed_rounds, 1);
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.survivors, rec.dropped), (2, 0));
    assert_eq!(rec.accuracy, Some(0.75));
    assert_eq!(rec.eval_examples, 8);
    let after = Model::from_safetensors(&fed.model_bytes())?.flatten();
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.375).abs() < 1e-3, "{a} vs {b}");
    }
    // A second upload from the same site is refused: the round has ended.
    assert!(
        fed.begin_upload(&sites[0].0, None, 1, d as u64 + 4)
            .await
            .is_err()
    );
    Ok(())
}

/// One in-process site: its signing key, session, task stream and machine.
struct Member {
    session: String,
    /// `None` once the site has hung up.
    rx: Option<crate::federation::TaskStream>,
    site: Option<confide_crypto::protocol::AnySite>,
    ended: Option<bool>,
}

/// Seconds the round record gives `stage`.
fn stage_secs(rec: &crate::checkpoint::RoundRecord, stage: &str) -> Result<f64, String> {
    rec.stage_secs
        .iter()
        .find(|(st, _)| st == stage)
        .map(|(_, t)| *t)
        .ok_or(format!("no {stage} stage"))
}

/// How a site leaves a round instead of sending its masked input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Leave {
    /// Its process dies: the task stream closes.
    HangUp,
    /// Its policy refuses the round: it sends Decline, stays connected.
    Decline,
    /// It sends its masked input, then a survivor-set signature that does
    /// not verify.
    ForgeSignature,
}

/// One secure round of `names.len()` in-process sites (every one moving
/// every parameter by 0.5); `leave` names a site that leaves instead of
/// sending its masked input, or forges its signature, and how. Returns the
/// report and the model before and after.
pub(super) async fn secure_round(
    s: Settings,
    names: &[&str],
    leave: Option<(&str, Leave)>,
) -> Result<(ServeReport, Vec<f32>, Vec<f32>), Box<dyn std::error::Error>> {
    let hang_up = leave.map(|(name, _)| name);
    let how = leave.map(|(_, how)| how);
    use confide_crypto::protocol::{
        AnySite, AnySiteOutput, IdentityVerifier, KeyDirectory, SitePolicy,
    };
    use confide_crypto::suite::SigningKey;

    let fed = Federation::new(s.clone())?;
    // The sealed shares wait on disk unless there is nowhere to put them.
    let shares_on_disk = s.limits.spill_dir().is_dir();
    let before = initial_model(&s)?.flatten();
    let d = before.len();
    let mut rng = rand::rng();
    let mut directory = KeyDirectory::new();
    let mut keys = Vec::new();
    let mut members = Vec::new();
    let mut hung_up = None;
    for &name in names {
        let key = SigningKey::generate(s.suite, &mut rng);
        let vk = key.verifying_key()?;
        let session = fed.join(name, vk.as_bytes(), None)?;
        let member = fed.session(&session, None)?.member;
        directory.insert(member, vk);
        let rx = fed.open_tasks(&session, None)?;
        keys.push(key);
        if hang_up == Some(name) {
            hung_up = Some(members.len());
        }
        members.push(Member {
            session,
            rx: Some(rx),
            site: None,
            ended: None,
        });
    }
    let verifier: Arc<dyn IdentityVerifier> = Arc::new(directory);
    let driver = tokio::spawn({
        let fed = fed.clone();
        async move { fed.run().await }
    });
    let mut quant = None;
    // 30 s of virtual time at most.
    for _ in 0..3000 {
        for (i, (m, key)) in members.iter_mut().zip(&keys).enumerate() {
            while let Some(t) = m.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
                let site = m.site.as_mut();
                match (t.kind.ok_or("empty task")?, site) {
                    (pb::task::Kind::RoundStart(rs), None) => {
                        // An insecure federation: no CA, so the zero fingerprint.
                        let cfg = convert::round_config(&rs, &s.federation, &context::NO_CA)?;
                        assert_eq!(rs.model_sha256, context::sha256(&fed.model_bytes()));
                        quant.get_or_insert(convert::quant_config(
                            rs.quantisation.as_ref(),
                            cfg.ring,
                        )?);
                        m.site = Some(AnySite::new(
                            cfg,
                            rs.member,
                            key.clone(),
                            verifier.clone(),
                            &SitePolicy::default(),
                            &mut rng,
                        )?);
                    }
                    (pb::task::Kind::NeighbourKeys(nk), Some(site)) => {
                        // Kept for a replay until answered.
                        assert!(kept(&fed, &m.session)?.contains(&"neighbour_keys"));
                        site.handle_neighbour_keys(
                            convert::neighbour_keys_from_proto(&nk)?,
                            &mut rng,
                        )?;
                    }
                    (pb::task::Kind::IncomingShares(sh), Some(_))
                        if hung_up == Some(i) && how == Some(Leave::Decline) =>
                    {
                        // The site's policy refuses the round: it says so and
                        // stays connected; any further task but RoundEnd
                        // would be an error below (no site machine).
                        let d = convert::Decline {
                            round: sh.round,
                            reason: convert::DeclineReason::SecureAggregationPolicy,
                            message: "survivors below this site's minimum".into(),
                            cohort: Vec::new(),
                        };
                        fed.decline(&m.session, None, &d)?;
                        m.site = None;
                    }
                    (pb::task::Kind::IncomingShares(_), Some(_))
                        if hung_up == Some(i) && how == Some(Leave::HangUp) =>
                    {
                        // The site's process dies: its stream ends, nothing more is sent.
                        m.rx = None;
                        m.site = None;
                        m.ended = Some(false);
                    }
                    (pb::task::Kind::IncomingShares(sh), Some(site)) => {
                        site.handle_incoming_shares(convert::incoming_shares_from_proto(&sh))?;
                        // Every site moves every parameter by 0.5, weight 1.
                        let q = Quantiser::new(quant.as_ref().ok_or("no quantiser")?)?;
                        let v: Vec<u32> = q.encode(&vec![0.5; d], 1, &[1, 2, 500], &mut rng)?;
                        site.handle_input(RingVec::U32(v))?;
                    }
                    (pb::task::Kind::ConsistencyRequest(c), Some(site)) => {
                        site.handle_consistency_request(convert::consistency_request_from_proto(
                            &c,
                        ))?;
                    }
                    (pb::task::Kind::UnmaskRequest(u), Some(site)) => {
                        site.handle_unmask_request(convert::unmask_request_from_proto(&u)?)?;
                    }
                    (pb::task::Kind::RoundEnd(e), _) => m.ended = Some(e.success),
                    (other, _) => return Err(format!("unexpected task {other:?}").into()),
                }
            }
            let Some(site) = m.site.as_mut() else {
                continue;
            };
            while let Some(out) = site.poll_output() {
                match out {
                    AnySiteOutput::Advertise(a) => fed.advertise(
                        &m.session,
                        None,
                        convert::key_advert_to_proto(&a),
                        Vec::new(),
                    )?,
                    AnySiteOutput::Shares(b) => {
                        fed.share_keys(
                            &m.session,
                            None,
                            convert::share_bundle_to_proto(&b, &m.session),
                        )?;
                        // Answered: no longer kept (a replay would be ignored).
                        assert!(!kept(&fed, &m.session)?.contains(&"neighbour_keys"));
                    }
                    AnySiteOutput::MaskedInput { vector, masking } => {
                        assert_eq!(shares_held(&fed, &m.session)?, Some(shares_on_disk));
                        let round = site.config().round;
                        let mut up = fed
                            .begin_upload(&m.session, None, round, vector.len() as u64)
                            .await?;
                        let packing = fed.lock().round.as_ref().map(|r| r.packing);
                        let packing = packing.ok_or("no round")?;
                        let bytes = match &vector {
                            RingVec::U32(v) => packing.encode(v, 0..v.len()),
                            RingVec::U64(v) => packing.encode(v, 0..v.len()),
                        };
                        up.push(0, &bytes)?;
                        let masking = convert::masking_set_to_proto(&masking);
                        fed.finish_upload(&m.session, None, up, Some(masking))
                            .await?;
                    }
                    AnySiteOutput::Consistency(mut sig) => {
                        assert!(kept(&fed, &m.session)?.contains(&"consistency_request"));
                        let forge = hung_up == Some(i) && how == Some(Leave::ForgeSignature);
                        if forge {
                            sig.signature[4] ^= 1;
                        }
                        let sent = fed.consistency(
                            &m.session,
                            None,
                            convert::consistency_response_to_proto(&sig, &m.session),
                        );
                        if forge {
                            let e = sent.err().ok_or("a forged signature was accepted")?;
                            assert!(e.to_string().contains("signature refused"), "{e}");
                        } else {
                            sent?;
                            assert!(!kept(&fed, &m.session)?.contains(&"consistency_request"));
                        }
                    }
                    AnySiteOutput::Unmask(u) => fed.unmask(
                        &m.session,
                        None,
                        convert::unmask_response_to_proto(&u, &m.session),
                    )?,
                }
            }
        }
        if members.iter().all(|m| m.ended.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, m) in members.iter().enumerate() {
        // A site that hung up hears nothing; every other, the round's end.
        let gone = hung_up == Some(i) && how == Some(Leave::HangUp);
        assert_eq!(m.ended, Some(!gone), "member {i}");
    }
    let report = driver.await??;
    let after = Model::from_safetensors(&fed.model_bytes())?.flatten();
    Ok((report, before, after))
}

#[tokio::test(start_paused = true)]
async fn a_secure_round_of_in_process_sites_updates_the_model()
-> Result<(), Box<dyn std::error::Error>> {
    let (report, before, after) = secure_round(one_round(true, 3), &["a", "b", "c"], None).await?;
    assert_eq!(report.completed_rounds, 1);
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (3, 3, 0));
    assert_eq!(rec.accuracy, Some(0.5));
    assert_eq!(rec.eval_examples, 6);
    // advertise, share, input, consistency, unmask
    assert_eq!(rec.stage_secs.len(), 5, "{:?}", rec.stage_secs);
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_secure_round_with_every_upload_spilled_to_disk_gives_the_same_model()
-> Result<(), Box<dyn std::error::Error>> {
    let spill = tempfile::tempdir()?;
    let mut s = one_round(true, 3);
    s.limits.upload_buffer_mib = 0;
    s.limits.spill_dir = Some(spill.path().to_path_buf());
    let (report, before, after) = secure_round(s, &["a", "b", "c"], None).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (3, 3, 0));
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    // Spill files are unlinked: nothing is left behind.
    assert_eq!(std::fs::read_dir(spill.path())?.count(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_a_spill_directory_the_shares_wait_in_memory_and_the_round_completes()
-> Result<(), Box<dyn std::error::Error>> {
    let spill = tempfile::tempdir()?;
    let mut s = one_round(true, 3);
    s.limits.spill_dir = Some(spill.path().join("not there"));
    let (report, before, after) = secure_round(s, &["a", "b", "c"], None).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_site_that_hangs_up_mid_round_is_dropped_after_the_grace_not_the_deadline()
-> Result<(), Box<dyn std::error::Error>> {
    let mut s = one_round(true, 5);
    // Deadlines far away: only the closed stream can end the wait. At δ 0.1
    // a cohort of five allows no dropout, so the grace is waited out.
    s.secagg.stage_timeout_secs = 600;
    s.secagg.reconnect_grace_secs = 2.0;
    assert_eq!(s.secagg.dropout_allowance(5), 0);
    let names = ["a", "b", "c", "d", "e"];
    let (report, before, after) = secure_round(s, &names, Some(("c", Leave::HangUp))).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (5, 4, 1));
    // Virtual time: the masked-input stage closed at the grace, not at 600 s.
    let input = stage_secs(rec, "masked-input")?;
    assert!(
        (2.0..10.0).contains(&input),
        "masked input took {input} s (virtual)"
    );
    assert!(
        rec.duration_secs < 60.0,
        "round took {} s (virtual)",
        rec.duration_secs
    );
    // The four survivors' updates, averaged: still +0.5 everywhere.
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_stage_left_waiting_only_for_a_lost_site_within_the_dropout_allowance_closes_at_once()
-> Result<(), Box<dyn std::error::Error>> {
    let mut s = one_round(true, 5);
    // Deadline and grace far away; δ = 0.2 allows one dropout of five.
    s.secagg.stage_timeout_secs = 600;
    s.secagg.reconnect_grace_secs = 600.0;
    s.secagg.dropout_fraction = 0.2;
    assert_eq!(s.secagg.dropout_allowance(5), 1);
    let names = ["a", "b", "c", "d", "e"];
    // The first site hangs up, so the others' inputs come after: the last of
    // them must be what ends the wait.
    let (report, before, after) = secure_round(s, &names, Some(("a", Leave::HangUp))).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (5, 4, 1));
    // Virtual time: once the four others had sent their inputs the stage
    // waited for a alone, and stopped waiting then, not at the grace.
    let input = stage_secs(rec, "masked-input")?;
    assert!(input < 1.0, "masked input took {input} s (virtual)");
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_file_model_is_served_updated_and_kept_in_its_file_dtypes()
-> Result<(), Box<dyn std::error::Error>> {
    use confide_proto::model::{Dtype, Tensor};
    let tmp = tempfile::tempdir()?;
    let mut init = Model::new();
    init.insert(
        "conv.weight",
        Tensor::new(vec![2, 2], vec![1.0, -1.0, 0.5, 2.0])?.with_dtype(Dtype::BF16),
    );
    init.insert(
        "fc.bias",
        Tensor::new(vec![2], vec![0.25, 0.0])?.with_dtype(Dtype::F16),
    );
    let path = tmp.path().join("init.safetensors");
    std::fs::write(&path, init.to_safetensors(None)?)?;
    let mut s = one_round(false, 2);
    s.model.kind = ModelKind::File;
    s.model.path = Some(path);
    let fed = Federation::new(s.clone())?;
    // Served as the file holds it, byte for byte.
    assert_eq!(
        fed.model_bytes().as_slice(),
        std::fs::read(tmp.path().join("init.safetensors"))?.as_slice()
    );
    let mut sites = join(&fed, &["a", "b"])?;
    let driver = tokio::spawn({
        let fed = fed.clone();
        async move { fed.run().await }
    });
    let quant = s.quantiser(s.ring)?;
    for (session, _, rx) in sites.iter_mut() {
        let start = round_start(rx).await.ok_or("no RoundStart")?;
        assert_eq!(
            start.training.as_ref().map(|t| t.model.as_str()),
            Some("file")
        );
        assert_eq!(start.vector_len, 6 + 4);
        let v: Vec<u32> = quant.encode(&[0.5; 6], 1, &[0, 0, 0], &mut rand::rng())?;
        let bytes = round::tests::wire(&start, &v, 0..v.len());
        let mut up = fed
            .begin_upload(session, None, start.round, start.vector_len)
            .await?;
        up.push(0, &bytes)?;
        fed.finish_upload(session, None, up, None).await?;
    }
    let report = driver.await??;
    assert!(report.history[0].success, "{}", report.history[0].message);
    let after = Model::from_safetensors(&fed.model_bytes())?;
    assert_eq!(after.get("conv.weight").map(|t| t.dtype), Some(Dtype::BF16));
    assert_eq!(after.get("fc.bias").map(|t| t.dtype), Some(Dtype::F16));
    // FedAvg moved every value by the mean delta, 0.5 (exact in both dtypes).
    let moved: Vec<f32> = init.flatten().iter().map(|v| v + 0.5).collect();
    for (a, b) in after.flatten().iter().zip(&moved) {
        assert!((a - b).abs() < 1e-2, "{a} vs {b}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_site_that_declines_mid_round_is_dropped_at_once_and_recorded_not_blamed()
-> Result<(), Box<dyn std::error::Error>> {
    let report = five_sites_c_leaving(Leave::Decline).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (5, 4, 1));
    // Virtual time: the masked-input stage closed when c declined.
    let input = stage_secs(rec, "masked-input")?;
    assert!(input < 1.0, "masked input took {input} s (virtual)");
    assert!(
        rec.duration_secs < 5.0,
        "round took {} s",
        rec.duration_secs
    );
    assert_eq!(
        rec.declined,
        [(
            "c".to_string(),
            "secure_aggregation_policy: survivors below this site's minimum".to_string()
        )]
    );
    assert!(
        rec.blamed.is_empty(),
        "declining is no fault: {:?}",
        rec.blamed
    );
    Ok(())
}

/// One secure round of five sites in which "c" leaves as `how` says, with
/// the stage deadline and grace far away (so only what "c" does can end a
/// wait); checks the model moved by every survivor's 0.5 and returns the
/// report.
async fn five_sites_c_leaving(how: Leave) -> Result<ServeReport, Box<dyn std::error::Error>> {
    let mut s = one_round(true, 5);
    s.secagg.stage_timeout_secs = 600;
    s.secagg.reconnect_grace_secs = 600.0;
    let names = ["a", "b", "c", "d", "e"];
    let (report, before, after) = secure_round(s, &names, Some(("c", how))).await?;
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(report)
}

/// A survivor-set signature that does not verify under the key its site
/// joined with is refused at once: the site is blamed, the stage does not
/// wait for it, and its input, already in the sum, stays there.
#[tokio::test(start_paused = true)]
async fn a_forged_survivor_set_signature_is_refused_blamed_and_not_waited_for()
-> Result<(), Box<dyn std::error::Error>> {
    let report = five_sites_c_leaving(Leave::ForgeSignature).await?;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors), (5, 5));
    let consistency = stage_secs(rec, "consistency")?;
    assert!(
        consistency < 1.0,
        "consistency took {consistency} s (virtual)"
    );
    assert_eq!(rec.blamed.len(), 1, "{:?}", rec.blamed);
    assert_eq!(rec.blamed[0].0, "c");
    assert!(
        rec.blamed[0].1.contains("survivor-set signature"),
        "{:?}",
        rec.blamed
    );
    Ok(())
}

/// A re-run on a model sites signed a survivor set on waits, without a
/// round or a failure, until every site of the set is connected, then
/// takes exactly those sites.
#[tokio::test(start_paused = true)]
async fn a_replay_cohort_is_awaited_until_all_its_sites_are_connected()
-> Result<(), Box<dyn std::error::Error>> {
    let fed = Federation::new(insecure(3, 5))?;
    let _streams = join(&fed, &["a", "b", "x"])?;
    let model = context::sha256(&fed.model_bytes()).to_vec();
    let s: BTreeSet<String> = ["a", "b", "c"].iter().map(|n| n.to_string()).collect();
    for site in ["a", "b"] {
        fed.lock().replay.claim(&model, site, s.clone(), 5)?;
    }
    assert_eq!(fed.replay_cohort(RoundKind::Statistics), None);
    let required = fed
        .replay_cohort(RoundKind::Train)
        .ok_or("no replay cohort")?;
    assert_eq!(required, s);
    let mut logged = None;
    assert_eq!(fed.await_replay_cohort(&required, &mut logged).await, None);
    assert_eq!(logged, Some(vec!["c".to_string()]), "who is awaited");
    assert!(
        fed.history().is_empty(),
        "nothing announced, nothing failed"
    );
    let _c = join(&fed, &["c"])?;
    let members = fed
        .await_replay_cohort(&required, &mut logged)
        .await
        .ok_or("still waiting")?;
    let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(logged, None);
    Ok(())
}

#[tokio::test]
async fn a_large_task_leaves_in_parts_each_sent_alone_and_comes_back_whole()
-> Result<(), Box<dyn std::error::Error>> {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use tokio_stream::Stream;

    let fed = Federation::new(insecure(3, 3))?;
    let a = fed.join("a", &[7; 32], None)?;
    let mut stream = fed.open_tasks(&a, None)?;
    let big = task(pb::task::Kind::UnmaskRequest(pb::UnmaskRequest {
        round: 1,
        survivors: (0..20_000).collect(),
        signatures: Vec::new(),
    }));
    let small = task(pb::task::Kind::Done(pb::FederationDone { rounds: 4 }));
    let send = |t: &pb::Task| {
        fed.lock()
            .registry
            .send("a", Arc::new(registry::OutTask::new(t.clone())));
    };
    send(&big);
    send(&small);

    // Polled as gRPC polls it: after each part the stream is pending once
    // (so gRPC sends that part before encoding more), never after a whole.
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    let mut pending_after_part = 0;
    while items.last() != Some(&small) {
        match Pin::new(&mut stream).poll_next(&mut cx) {
            Poll::Ready(Some(t)) => items.push(t),
            Poll::Ready(None) => return Err("stream ended".into()),
            Poll::Pending => {
                let after = items.last().ok_or("pending before any task")?;
                assert!(
                    matches!(after.kind, Some(pb::task::Kind::Part(_))),
                    "{after:?}"
                );
                pending_after_part += 1;
            }
        }
    }
    let parts = items.len() - 1;
    assert!(parts > 1, "{parts} parts");
    assert_eq!(pending_after_part, parts);
    let mut r = confide_proto::task_parts::Reassembly::default();
    let mut whole = Vec::new();
    for t in items {
        whole.extend(r.push(t)?);
    }
    assert_eq!(whole, vec![big.clone(), small.clone()]);

    // In-process callers get whole tasks too.
    send(&big);
    assert_eq!(stream.recv().await, Some(big));
    send(&small);
    assert_eq!(stream.try_recv()?, small);
    Ok(())
}
