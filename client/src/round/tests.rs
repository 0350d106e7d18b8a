//! The round logic without a network: announcements, stale tasks, the
//! messages a task sequence produces, and the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{AnySiteOutput, MaskingSet, RingVec, SitePolicy, SurvivorSignature};
use confide_crypto::protocol::{IdentityVerifier, SiteOutput};
use confide_crypto::stats::stats_len;
use confide_crypto::suite::SigningKey;
use confide_crypto::{ProtocolError, Ring, RoundConfig, Stage, Suite};
use confide_proto::v1;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::config::Vanish;
use crate::error::ClientError;
use crate::identity::RelayedKeyVerifier;
use crate::trainer::LocalJob;

const FEATURES: usize = 2;

fn driver(vanish: Option<Vanish>) -> Result<RoundDriver, ClientError> {
    seeded_driver(vanish, 7)
}

/// A driver whose keys come from `seed` (sites of one round need distinct keys).
fn seeded_driver(vanish: Option<Vanish>, seed: u64) -> Result<RoundDriver, ClientError> {
    driver_with_policy(vanish, seed, true)
}

fn driver_with_policy(
    vanish: Option<Vanish>,
    seed: u64,
    allow_plaintext: bool,
) -> Result<RoundDriver, ClientError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let signing = SigningKey::generate(Suite::Intl, &mut rng);
    let mut d = RoundDriver::new(
        DriverConfig {
            site: "site-a".into(),
            signing,
            key_source: KeySource::File,
            vanish,
            authenticated: false,
            num_features: FEATURES,
            verifier: Box::new(|suite| {
                Ok(Arc::new(RelayedKeyVerifier { suite }) as Arc<dyn IdentityVerifier>)
            }),
            allow_plaintext,
            policy: SitePolicy::default(),
            max_epochs: 1000,
            ca_fingerprint: [0; 32],
        },
        rng,
    );
    let joined = d.joined(v1::JoinResponse {
        session: "s1".into(),
        federation: "f".into(),
        suite: "intl".into(),
        crl: Vec::new(),
    })?;
    assert_eq!(joined, Joined::Session);
    Ok(d)
}

fn round_cfg(round: u64, ring: Ring, vector_len: usize) -> RoundConfig {
    RoundConfig {
        round,
        suite: Suite::Intl,
        ring,
        cohort: vec![1, 2, 3],
        params: SecAggParams { k: 2, t: 2 },
        graph_seed: [1; 32],
        vector_len,
        min_survivors: 3,
        max_colluders: 1,
        context: [0; 32],
    }
}

/// What every announcement of these tests binds beside the configuration.
fn bound(round: u64, rs: v1::RoundStart) -> v1::RoundStart {
    v1::RoundStart {
        attempt: vec![round as u8; 32],
        model_sha256: vec![0xee; 32],
        ..rs
    }
}

/// A statistics round for this site (member 1).
fn stats_start(round: u64, plaintext: bool) -> v1::RoundStart {
    bound(
        round,
        v1::RoundStart {
            kind: v1::RoundKind::Statistics as i32,
            plaintext,
            stage_timeout_secs: 30,
            ..convert::round_start(&round_cfg(round, Ring::U64, stats_len(FEATURES)), 1)
        },
    )
}

fn task(kind: v1::task::Kind) -> v1::Task {
    v1::Task { kind: Some(kind) }
}

fn start(rs: &v1::RoundStart) -> v1::Task {
    task(v1::task::Kind::RoundStart(rs.clone()))
}

fn end(round: u64, success: bool) -> v1::Task {
    task(v1::task::Kind::RoundEnd(v1::RoundEnd {
        round,
        success,
        message: String::new(),
    }))
}

#[test]
fn stale_tasks_are_ignored_and_content_errors_end_the_round() {
    assert!(matches!(
        routed(Err(ProtocolError::WrongRound {
            expected: 2,
            got: 1
        })),
        Ok(false)
    ));
    assert!(matches!(
        routed(Err(ProtocolError::WrongStage {
            expected: Stage::ShareKeys,
            got: Stage::AdvertiseKeys
        })),
        Ok(false)
    ));
    assert!(matches!(routed(Ok(())), Ok(true)));
    assert!(routed(Err(ProtocolError::Ended)).is_err());
}

#[test]
fn outgoing_messages_map_to_their_stage_for_vanish() -> Result<(), ClientError> {
    let mut rng = StdRng::seed_from_u64(1);
    let key = SigningKey::generate(Suite::Intl, &mut rng);
    let verifier: Arc<dyn IdentityVerifier> = Arc::new(RelayedKeyVerifier { suite: Suite::Intl });
    let mut m = AnySite::new(
        round_cfg(5, Ring::U32, 4),
        2,
        key,
        verifier,
        &SitePolicy::default(),
        &mut rng,
    )?;
    let rs = v1::RoundStart {
        round: 5,
        ..Default::default()
    };
    let advert = m.poll_output().map(|o| Outgoing::from_site(o, "s", &rs));
    let Some(Outgoing::Advertise(a)) = &advert else {
        panic!("first output must be the advert")
    };
    assert_eq!(a.session, "s");
    assert_eq!(advert.map(|o| o.stage()), Some(Stage::AdvertiseKeys));
    let masking = MaskingSet {
        round: 5,
        member: 2,
        peers: vec![1, 3],
        signature: vec![9; 64],
    };
    let masked = Outgoing::from_site(
        AnySiteOutput::from(SiteOutput::<u32>::MaskedInput {
            vector: vec![1, 2, 3, 4],
            masking: masking.clone(),
        }),
        "s",
        &rs,
    );
    assert_eq!(masked.stage(), Stage::MaskedInput);
    let Outgoing::Masked(chunks) = &masked else {
        panic!("a masked input is an upload")
    };
    assert_eq!(
        chunks[0]
            .masking
            .as_ref()
            .map(convert::masking_set_from_proto),
        Some(masking),
        "the first chunk carries the signed masking set"
    );
    let signed = Outgoing::from_site(
        AnySiteOutput::Consistency(SurvivorSignature {
            round: 5,
            member: 2,
            signature: vec![1; 64],
        }),
        "s",
        &rs,
    );
    assert_eq!(signed.stage(), Stage::Consistency);
    assert!(matches!(signed, Outgoing::Consistency(ref r) if r.session == "s" && r.member == 2));
    let v = Some(Vanish {
        round: 5,
        stage: masked.stage(),
    });
    assert!(Vanish::hits(v, 5, Stage::MaskedInput));
    assert!(!Vanish::hits(v, 5, Stage::AdvertiseKeys));
    Ok(())
}

#[test]
fn replayed_announcements() {
    let rs = v1::RoundStart {
        round: 4,
        graph_seed: vec![1; 32],
        attempt: vec![4; 32],
        ..Default::default()
    };
    let other = v1::RoundStart {
        round: 5,
        ..rs.clone()
    };
    // Same round restarted by a restarted coordinator: a new seed.
    let reseeded = v1::RoundStart {
        graph_seed: vec![2; 32],
        ..rs.clone()
    };
    // The same round id re-run by a coordinator that took over: a new attempt.
    let rerun = v1::RoundStart {
        attempt: vec![9; 32],
        ..rs.clone()
    };
    // The same announcement delivered with a newer CRL: still a replay.
    let new_crl = v1::RoundStart {
        crl: vec![1, 2, 3],
        ..rs.clone()
    };
    assert_eq!(announcement(None, None, &rs), Announcement::Start);
    assert_eq!(
        announcement(Some((&rs, true)), None, &rs),
        Announcement::Ignore
    );
    assert_eq!(
        announcement(Some((&rs, true)), None, &new_crl),
        Announcement::Ignore
    );
    assert_eq!(
        announcement(Some((&rs, false)), None, &rs),
        Announcement::Restart
    );
    assert_eq!(
        announcement(Some((&rs, true)), None, &other),
        Announcement::Start
    );
    assert_eq!(
        announcement(Some((&rs, true)), None, &reseeded),
        Announcement::Start
    );
    assert_eq!(
        announcement(Some((&rs, true)), None, &rerun),
        Announcement::Start
    );
    // A round this site left: its identical announcement is ignored, a
    // re-run under the same id (other content) is a new round.
    assert_eq!(announcement(None, Some(&rs), &rs), Announcement::Ignore);
    assert_eq!(
        announcement(None, Some(&rs), &new_crl),
        Announcement::Ignore
    );
    assert_eq!(announcement(None, Some(&rs), &rerun), Announcement::Start);
    assert_eq!(
        announcement(None, Some(&rs), &reseeded),
        Announcement::Start
    );
    assert_eq!(announcement(None, Some(&other), &rs), Announcement::Start);
}

/// A site that left a round serves the same round id when a coordinator
/// that took over re-runs it (a new attempt), and still ignores the replay
/// of the announcement it left.
#[test]
fn a_left_round_id_rerun_by_another_coordinator_is_served() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let now = Instant::now();
    let rs = stats_start(6, false);
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Send));
    d.leave_round();
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Wait));
    assert_eq!(d.current_round(), None);
    let rerun = v1::RoundStart {
        attempt: vec![0xaa; 32],
        ..rs.clone()
    };
    assert!(matches!(d.on_task(start(&rerun), now)?, Action::Send));
    assert_eq!(d.current_round(), Some(6));
    Ok(())
}

#[test]
fn announcements_this_site_cannot_serve_are_refused() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let now = Instant::now();
    // Statistics must use ring u64.
    let mut rs = stats_start(1, false);
    rs.ring = "u32".into();
    assert!(matches!(
        d.on_task(start(&rs), now),
        Err(ClientError::InvalidRound(m)) if m.contains("ring u64")
    ));
    // A vector length that does not fit this site's features.
    let mut rs = stats_start(2, false);
    rs.vector_len += 1;
    assert!(matches!(
        d.on_task(start(&rs), now),
        Err(ClientError::InvalidRound(m)) if m.contains("features")
    ));
    // An evaluation vector of the wrong length, an unspecified kind, a bad seed.
    let mut rs = stats_start(3, false);
    rs.kind = v1::RoundKind::Evaluate as i32;
    assert!(d.on_task(start(&rs), now).is_err());
    rs.kind = v1::RoundKind::Unspecified as i32;
    assert!(d.on_task(start(&rs), now).is_err());
    let mut rs = stats_start(4, false);
    rs.graph_seed = vec![1; 3];
    assert!(matches!(
        d.on_task(start(&rs), now),
        Err(ClientError::InvalidRound(m)) if m.contains("graph_seed")
    ));
    // The last round seen is still reported.
    assert_eq!(d.report().last_round, 4);
    Ok(())
}

#[test]
fn a_key_of_another_suite_is_refused_unless_ephemeral() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let gm = v1::JoinResponse {
        session: "s2".into(),
        federation: "f".into(),
        suite: "gm".into(),
        crl: Vec::new(),
    };
    assert!(matches!(d.joined(gm.clone()), Err(ClientError::Config(_))));
    d.cfg.key_source = KeySource::Ephemeral;
    assert_eq!(d.joined(gm.clone())?, Joined::Retry);
    assert_eq!(d.joined(gm)?, Joined::Session);
    assert_eq!(d.session(), Some("s2"));
    assert!(
        d.join_request()
            .is_ok_and(|r| r.site == "site-a" && !r.verifying_key.is_empty())
    );
    Ok(())
}

/// The coordinator's `plaintext` flag alone never makes a site upload its
/// update in the clear: without the site's own opt-in the round is refused
/// before anything is computed, replays are ignored, and secure rounds go on.
#[test]
fn a_plaintext_round_is_refused_unless_the_site_opted_in() -> Result<(), ClientError> {
    let mut d = driver_with_policy(None, 7, false)?;
    let now = Instant::now();
    let rs = stats_start(3, true);
    let r = d.on_task(start(&rs), now);
    assert!(
        matches!(r, Err(ClientError::PlaintextRefused { round: 3 })),
        "{r:?}"
    );
    assert!(d.outbox().is_none(), "nothing queued");
    assert_eq!(d.current_round(), None);
    assert!(
        matches!(d.on_task(start(&rs), now)?, Action::Wait),
        "replay ignored"
    );
    // The next, secure, round is served as usual: its first message is the advert.
    let secure = stats_start(4, false);
    assert!(!matches!(d.on_task(start(&secure), now)?, Action::Wait));
    assert_eq!(d.current_round(), Some(4));
    Ok(())
}

#[test]
fn plaintext_statistics_round_sends_the_vector_and_counts_the_round() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let now = Instant::now();
    let rs = stats_start(3, true);
    let Action::Compute(LocalJob::Statistics { max_cohort, .. }) = d.on_task(start(&rs), now)?
    else {
        panic!("a plaintext statistics round computes right away")
    };
    assert_eq!(max_cohort, 3, "no quantisation announced: the cohort size");
    let v: Vec<u64> = (0..stats_len(FEATURES) as u64).collect();
    assert!(matches!(
        d.input_ready(RingVec::U64(v.clone()))?,
        Action::Send
    ));
    let Some(Outgoing::Masked(chunks)) = d.outbox() else {
        panic!("the input is queued")
    };
    assert!(chunks.iter().all(|c| c.session == "s1" && c.round == 3));
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(bytes, RingVec::U64(v).to_le_bytes());
    // A replay of the announcement after the input is out changes nothing.
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Wait));
    d.sent(now + Duration::from_millis(5));
    assert!(d.outbox().is_none());
    assert!(matches!(d.on_task(end(3, true), now)?, Action::Wait));
    assert_eq!(d.report().rounds, 1);
    assert_eq!(d.report().last_round, 3);
    assert_eq!(d.current_round(), None);
    // The metrics get the round once, with its stage time and bytes.
    let finished = d.take_finished();
    assert_eq!(finished.len(), 1);
    let r = &finished[0];
    assert_eq!(r.outcome, crate::metrics::RoundOutcome::succeeded);
    assert_eq!(r.kind, v1::RoundKind::Statistics);
    assert_eq!(r.stage_secs.len(), 1);
    assert_eq!(r.stage_secs[0].0, Stage::MaskedInput);
    assert!(r.bytes_out >= bytes.len() as u64, "{r:?}");
    assert!(d.take_finished().is_empty());
    Ok(())
}

#[test]
fn an_unsent_input_does_not_count() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let now = Instant::now();
    assert!(matches!(
        d.on_task(start(&stats_start(3, true)), now)?,
        Action::Compute(_)
    ));
    assert!(matches!(d.on_task(end(3, true), now)?, Action::Wait));
    assert_eq!(d.report().rounds, 0);
    let outcomes: Vec<_> = d.take_finished().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [crate::metrics::RoundOutcome::not_included]);
    // A round this site leaves is reported as left.
    assert!(matches!(
        d.on_task(start(&stats_start(4, true)), now)?,
        Action::Compute(_)
    ));
    d.leave_round();
    let outcomes: Vec<_> = d.take_finished().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [crate::metrics::RoundOutcome::left]);
    Ok(())
}

#[test]
fn secure_round_starts_with_an_advert_and_ignores_other_rounds() -> Result<(), ClientError> {
    let mut d = driver(None)?;
    let now = Instant::now();
    let rs = stats_start(8, false);
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Send));
    let Some(Outgoing::Advertise(a)) = d.outbox() else {
        panic!("the advert is queued")
    };
    assert_eq!(a.session, "s1");
    assert!(a.advert.is_some_and(|k| k.round == 8 && k.member == 1));
    // Replayed announcement: ignored, the first keys stay.
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Wait));
    // Tasks of other rounds: ignored.
    let stale = task(v1::task::Kind::NeighbourKeys(v1::NeighbourKeys {
        round: 7,
        ..Default::default()
    }));
    assert!(matches!(d.on_task(stale, now)?, Action::Wait));
    let stale = task(v1::task::Kind::UnmaskRequest(v1::UnmaskRequest {
        round: 9,
        ..Default::default()
    }));
    assert!(matches!(d.on_task(stale, now)?, Action::Wait));
    assert_eq!(d.current_round(), Some(8));
    // Leaving the round: its replayed announcement must not restart it.
    d.leave_round();
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Wait));
    assert_eq!(d.current_round(), None);
    // …until a new session (coordinator restart) makes it a new round.
    d.joined(v1::JoinResponse {
        session: "s2".into(),
        federation: "f".into(),
        suite: "intl".into(),
        crl: Vec::new(),
    })?;
    assert!(matches!(d.on_task(start(&rs), now)?, Action::Send));
    Ok(())
}

#[test]
fn vanish_points_stop_before_sending() -> Result<(), ClientError> {
    let now = Instant::now();
    let mut d = driver(Some(Vanish {
        round: 8,
        stage: Stage::AdvertiseKeys,
    }))?;
    assert!(matches!(
        d.on_task(start(&stats_start(8, false)), now)?,
        Action::Vanish
    ));
    let mut d = driver(Some(Vanish {
        round: 8,
        stage: Stage::MaskedInput,
    }))?;
    assert!(matches!(
        d.on_task(start(&stats_start(8, true)), now)?,
        Action::Vanish
    ));
    Ok(())
}

#[test]
fn resend_policy_after_a_reconnect() -> Result<(), ClientError> {
    let now = Instant::now();
    let refused = |code| ClientError::Refused {
        call: "AdvertiseKeys",
        code,
        message: String::new(),
    };
    let mut d = driver(None)?;
    assert_eq!(d.resume(now), Resume::Nothing);
    d.on_task(start(&stats_start(8, false)), now)?;
    assert_eq!(d.resume(now), Resume::Resend);
    // A lost link: reconnect again, keep the round.
    assert!(d.resend_failed(refused(tonic::Code::Unavailable)).is_err());
    // The stage closed meanwhile: keep the round, drop the message.
    assert!(
        d.resend_failed(refused(tonic::Code::FailedPrecondition))
            .is_ok()
    );
    assert_eq!(d.current_round(), Some(8));
    assert_eq!(d.resume(now), Resume::Nothing);
    // Refused outright: leave the round.
    d.on_task(start(&stats_start(9, false)), now)?;
    assert!(
        d.resend_failed(refused(tonic::Code::InvalidArgument))
            .is_ok()
    );
    assert_eq!(d.current_round(), None);
    // The stage deadline passed while disconnected: leave the round.
    d.on_task(start(&stats_start(10, false)), now)?;
    assert_eq!(d.resume(now + Duration::from_secs(31)), Resume::Nothing);
    assert_eq!(d.current_round(), None);
    Ok(())
}

#[test]
fn busy_backoff_grows_is_capped_and_stops_at_the_stage_deadline() -> Result<(), ClientError> {
    let now = Instant::now();
    let mut d = driver(None)?;
    assert_eq!(
        d.busy_backoff(0, 1.0, now),
        None,
        "no round, nothing to retry"
    );
    d.on_task(start(&stats_start(4, false)), now)?;
    let ms = |a, j| d.busy_backoff(a, j, now).map(|w| w.as_millis());
    assert_eq!(ms(0, 1.0), Some(100));
    assert_eq!(ms(1, 1.0), Some(200));
    assert_eq!(ms(1, 0.5), Some(100));
    assert_eq!(ms(9, 1.0), Some(2000), "capped");
    assert_eq!(ms(0, 7.0), Some(100), "jitter clamped to [0.5, 1]");
    // 30 s stage: a wait that would end past the deadline is not offered.
    let late = now + Duration::from_millis(29_950);
    assert_eq!(d.busy_backoff(0, 1.0, late), None);
    assert!(
        d.busy_backoff(0, 1.0, now + Duration::from_secs(29))
            .is_some()
    );
    Ok(())
}

/// Three drivers and crypto's coordinator machine exchange a whole secure
/// round through the wire messages: each task yields the next message, and
/// the unmasked sum is the sum of the sites' inputs.
#[test]
fn secure_round_between_three_drivers_sums_their_inputs() -> Result<(), Box<dyn std::error::Error>>
{
    use confide_crypto::protocol::{AnyCoordinator, StageTimeouts};
    use std::collections::BTreeMap;

    let now = Instant::now();
    let round = 11;
    let mut cfg = round_cfg(round, Ring::U64, stats_len(FEATURES));
    // The context every driver derives (federation "f", no CA).
    cfg.context = convert::round_config(
        &bound(
            round,
            v1::RoundStart {
                kind: v1::RoundKind::Statistics as i32,
                stage_timeout_secs: 60,
                ..convert::round_start(&cfg, 0)
            },
        ),
        "f",
        &[0; 32],
    )?
    .context;
    let coord = AnyCoordinator::secure(
        cfg.clone(),
        StageTimeouts::uniform(Duration::from_secs(60)),
        now,
    )?;
    let values = |m: u32| -> Vec<u64> {
        (0..cfg.vector_len as u64)
            .map(|i| u64::from(m) * 1000 + i)
            .collect()
    };
    let mut drivers = BTreeMap::new();
    let mut keys = BTreeMap::new();
    let mut actions = Vec::new();
    for m in [1u32, 2, 3] {
        let mut d = seeded_driver(None, u64::from(m))?;
        keys.insert(m, d.join_request()?.verifying_key);
        let rs = bound(
            round,
            v1::RoundStart {
                kind: v1::RoundKind::Statistics as i32,
                stage_timeout_secs: 60,
                ..convert::round_start(&cfg, m)
            },
        );
        // The coordinator's view: the same announcement, the same context.
        assert_eq!(
            convert::round_config(&rs, "f", &[0; 32])?.context,
            cfg.context
        );
        actions.push((m, d.on_task(start(&rs), now)?));
        drivers.insert(m, d);
    }
    let input = |m: u32, _len: usize| RingVec::U64(values(m));
    let h = Harness {
        keys: &keys,
        model: &[],
        input: &input,
        until_consistency: false,
        drop_survivor: None,
    };
    let announced = Announced {
        coord,
        cfg: cfg.clone(),
        actions,
    };
    let sum = drive(announced, &mut drivers, &h, now)?;
    let want: Vec<u64> = (0..cfg.vector_len)
        .map(|i| {
            values(1)[i]
                .wrapping_add(values(2)[i])
                .wrapping_add(values(3)[i])
        })
        .collect();
    assert_eq!(sum, Some(RingVec::U64(want)));
    for d in drivers.values_mut() {
        d.on_task(end(round, true), now)?;
        assert_eq!(d.report().rounds, 1);
    }
    // The masked vector's memory goes to the next round's vector.
    let (model, len) = logistic_model()?;
    let hash = confide_proto::context::sha256(&model).to_vec();
    let d1 = drivers.get_mut(&1).ok_or("driver 1")?;
    let rs = train_start(round + 1, &model, hash, len);
    assert!(matches!(d1.on_task(start(&rs), now)?, Action::Download(_)));
    let Action::Compute(LocalJob::Learn(job)) = d1.model_downloaded(&model_chunks(&model))? else {
        return Err("no training job".into());
    };
    assert!(
        matches!(&job.spare, Some(RingVec::U64(v)) if v.len() == cfg.vector_len),
        "{:?}",
        job.spare
    );
    Ok(())
}

/// A plaintext TRAIN round of member 1 on `model` (a logistic regression
/// over [`FEATURES`]), announced with `model_sha256`.
fn train_start(round: u64, model: &[u8], model_sha256: Vec<u8>, d: usize) -> v1::RoundStart {
    v1::RoundStart {
        kind: v1::RoundKind::Train as i32,
        plaintext: true,
        stage_timeout_secs: 30,
        model_bytes: model.len() as u64,
        quantisation: Some(v1::Quantisation {
            clip: 1.0,
            scale: 1000.0,
            max_weight: 1000,
            max_cohort: 3,
            bits: 0,
        }),
        training: Some(v1::TrainingConfig {
            model: "logistic".into(),
            features: FEATURES as u32,
            classes: 2,
            epochs: 1,
            batch_size: 4,
            learning_rate: 0.1,
            ..Default::default()
        }),
        attempt: vec![round as u8; 32],
        model_sha256,
        ..convert::round_start(&round_cfg(round, Ring::U32, crate::wire::train_len(d)), 1)
    }
}

fn model_chunks(model: &[u8]) -> Vec<v1::ModelChunk> {
    vec![v1::ModelChunk {
        offset: 0,
        data: model.to_vec().into(),
        total_len: model.len() as u64,
    }]
}

fn logistic_model() -> Result<(Vec<u8>, usize), Box<dyn std::error::Error>> {
    use crate::train::{LogisticRegression, Trainer};
    let global = LogisticRegression::new(FEATURES, 2)?.init(&mut StdRng::seed_from_u64(0));
    Ok((global.to_safetensors(None)?, global.num_params()))
}

#[test]
fn a_model_other_than_the_announced_one_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let (model, d) = logistic_model()?;
    let mut d1 = driver(None)?;
    let now = Instant::now();
    let rs = train_start(
        3,
        &model,
        confide_proto::context::sha256(b"another model").to_vec(),
        d,
    );
    assert!(matches!(d1.on_task(start(&rs), now)?, Action::Download(_)));
    let r = d1.model_downloaded(&model_chunks(&model));
    assert!(
        matches!(r, Err(ClientError::ModelHashMismatch { round: 3, .. })),
        "{r:?}"
    );
    // The announced model itself is taken.
    let rs = train_start(
        4,
        &model,
        confide_proto::context::sha256(&model).to_vec(),
        d,
    );
    assert!(matches!(d1.on_task(start(&rs), now)?, Action::Download(_)));
    assert!(matches!(
        d1.model_downloaded(&model_chunks(&model))?,
        Action::Compute(_)
    ));
    Ok(())
}

/// A file model has no built-in layout to check, but the site still
/// refuses one it cannot train from (no parameters, or a NaN), and takes
/// any other names, shapes and dtypes.
#[test]
fn a_file_model_must_be_trainable() -> Result<(), Box<dyn std::error::Error>> {
    use confide_proto::model::{Dtype, ModelKind, Tensor};
    let mut good = Model::new();
    good.insert(
        "conv.weight",
        Tensor::new(vec![2, 2], vec![0.5; 4])?.with_dtype(Dtype::BF16),
    );
    let mut nan = good.clone();
    nan.insert("fc.bias", Tensor::new(vec![1], vec![f32::NAN])?);
    let now = Instant::now();
    for (round, m, ok) in [
        (3, &good, true),
        (4, &nan, false),
        (5, &Model::new(), false),
    ] {
        let bytes = m.to_safetensors(None)?;
        let mut rs = train_start(
            round,
            &bytes,
            confide_proto::context::sha256(&bytes).to_vec(),
            m.num_params(),
        );
        if let Some(t) = rs.training.as_mut() {
            t.model = ModelKind::File.name().into();
        }
        let mut d = driver(None)?;
        assert!(matches!(d.on_task(start(&rs), now)?, Action::Download(_)));
        let r = d.model_downloaded(&model_chunks(&bytes));
        if ok {
            assert!(matches!(r, Ok(Action::Compute(_))), "{r:?}");
        } else {
            assert!(
                matches!(&r, Err(ClientError::InvalidRound(m)) if m.contains("global model")),
                "round {round}: {r:?}"
            );
        }
    }
    Ok(())
}

/// One training update per model: a second training round on a model this
/// site already sent an update for is refused, a round on a new model is not.
#[test]
fn a_second_training_contribution_on_one_model_is_refused() -> Result<(), Box<dyn std::error::Error>>
{
    let (model, d) = logistic_model()?;
    let hash = confide_proto::context::sha256(&model).to_vec();
    let mut site = driver(None)?;
    let now = Instant::now();
    let rs = train_start(5, &model, hash.clone(), d);
    assert!(matches!(
        site.on_task(start(&rs), now)?,
        Action::Download(_)
    ));
    assert!(matches!(
        site.model_downloaded(&model_chunks(&model))?,
        Action::Compute(_)
    ));
    let v = RingVec::U32(vec![0; crate::wire::train_len(d)]);
    assert!(matches!(site.input_ready(v)?, Action::Send));
    site.sent(now);
    // The round "fails" and the coordinator tries the same model again.
    site.on_task(end(5, false), now)?;
    let again = train_start(6, &model, hash.clone(), d);
    let r = site.on_task(start(&again), now);
    assert!(
        matches!(r, Err(ClientError::AlreadyContributed { round: 6, .. })),
        "{r:?}"
    );
    assert_eq!(site.current_round(), None);
    assert!(
        matches!(site.on_task(start(&again), now)?, Action::Wait),
        "replay ignored"
    );
    // Statistics and evaluation rounds on it are fine; so is a new model.
    assert!(!matches!(
        site.on_task(start(&stats_start(7, true)), now)?,
        Action::Wait
    ));
    let mut newer = train_start(8, &model, hash, d);
    newer.model_sha256[0] ^= 1;
    assert!(matches!(
        site.on_task(start(&newer), now)?,
        Action::Download(_)
    ));
    Ok(())
}

type Drivers = std::collections::BTreeMap<u32, RoundDriver>;

/// An announced secure round: the coordinator's machine, the configuration
/// the drivers derived, and each driver's first action.
struct Announced {
    coord: confide_crypto::protocol::AnyCoordinator,
    cfg: RoundConfig,
    actions: Vec<(u32, Action)>,
}

/// What [`drive`] feeds the drivers.
#[derive(Clone, Copy)]
struct Harness<'a> {
    /// Each member's verifying key, as the coordinator recorded it at Join.
    keys: &'a std::collections::BTreeMap<u32, Vec<u8>>,
    /// The model a training round downloads.
    model: &'a [u8],
    /// Member `m`'s local result of length `len`.
    input: &'a dyn Fn(u32, usize) -> RingVec,
    /// Stop (undelivered) when the coordinator asks the survivors to sign.
    until_consistency: bool,
    /// A lying coordinator: leave this member out of the survivor set it
    /// asks the others to sign (with its masking set).
    drop_survivor: Option<u32>,
}

/// Delivers messages between the drivers and the coordinator's machine until
/// the round finishes (its sum) or, with `until_consistency`, until the
/// survivors are asked to sign (`None`). Every masked upload must differ from
/// its input and carry the signed masking set.
fn drive(
    round: Announced,
    drivers: &mut Drivers,
    h: &Harness<'_>,
    now: Instant,
) -> Result<Option<RingVec>, Box<dyn std::error::Error>> {
    use confide_crypto::protocol::AnyOutput;
    let Announced {
        mut coord,
        cfg,
        mut actions,
    } = round;
    // What each member's computation returned (a replay computes nothing).
    let mut given = std::collections::BTreeMap::new();
    for _ in 0..30 {
        while let Some((m, action)) = actions.pop() {
            let d = drivers.get_mut(&m).ok_or("unknown member")?;
            match action {
                Action::Download(_) => {
                    actions.push((m, d.model_downloaded(&model_chunks(h.model))?))
                }
                Action::Compute(_) => {
                    let v = (h.input)(m, cfg.vector_len);
                    given.insert(m, v.to_le_bytes());
                    actions.push((m, d.input_ready(v)?))
                }
                Action::Send => {
                    match d.outbox().ok_or("nothing queued")? {
                        Outgoing::Advertise(req) => {
                            assert_eq!(req.session, "s1");
                            let a = req.advert.as_ref().ok_or("no advert")?;
                            coord.handle_advert(
                                convert::key_advert_from_proto(a),
                                h.keys[&m].clone(),
                                now,
                            )?;
                        }
                        Outgoing::Shares(req) => {
                            coord.handle_shares(convert::share_bundle_from_proto(&req)?, now)?
                        }
                        Outgoing::Masked(chunks) => {
                            let bytes: Vec<u8> =
                                chunks.iter().flat_map(|c| c.data.clone()).collect();
                            assert!(given.get(&m).is_none_or(|v| *v != bytes), "unmasked");
                            let masking = chunks
                                .first()
                                .and_then(|c| c.masking.as_ref())
                                .map(convert::masking_set_from_proto);
                            assert!(masking.is_some(), "no masking set in the first chunk");
                            coord.handle_masked_input_bytes(cfg.round, m, &bytes, masking, now)?;
                        }
                        Outgoing::Consistency(r) => coord.handle_consistency(
                            convert::consistency_response_from_proto(&r),
                            now,
                        )?,
                        Outgoing::Unmask(r) => coord.handle_unmask_response(
                            convert::unmask_response_from_proto(&r)?,
                            now,
                        )?,
                    }
                    d.sent(now);
                }
                Action::Wait => {}
                other => return Err(format!("unexpected action {other:?}").into()),
            }
        }
        while let Some(o) = coord.poll_output() {
            let (to, kind) = match o {
                AnyOutput::NeighbourKeys { to, msg } => (
                    to,
                    v1::task::Kind::NeighbourKeys(convert::neighbour_keys_to_proto(&msg)),
                ),
                AnyOutput::IncomingShares { to, msg } => (
                    to,
                    v1::task::Kind::IncomingShares(convert::incoming_shares_to_proto(&msg)),
                ),
                AnyOutput::ConsistencyRequest { .. } if h.until_consistency => return Ok(None),
                AnyOutput::ConsistencyRequest { to, mut msg } => {
                    if let Some(gone) = h.drop_survivor {
                        let msg = std::sync::Arc::make_mut(&mut msg);
                        msg.survivors.retain(|&m| m != gone);
                        msg.masking.retain(|r| r.member != gone);
                        if to == gone {
                            continue;
                        }
                    }
                    (
                        to,
                        v1::task::Kind::ConsistencyRequest(convert::consistency_request_to_proto(
                            &msg,
                        )),
                    )
                }
                AnyOutput::UnmaskRequest { to, msg } => (
                    to,
                    v1::task::Kind::UnmaskRequest(convert::unmask_request_to_proto(&msg)),
                ),
                AnyOutput::StageClosed { .. } | AnyOutput::Blamed { .. } => continue,
                AnyOutput::Finished(r) => return Ok(Some(r?.sum)),
            };
            let d = drivers.get_mut(&to).ok_or("unknown member")?;
            actions.push((to, d.on_task(task(kind), now)?));
        }
    }
    Err("the round neither finished nor reached the consistency stage".into())
}

mod contribution;
mod replay;
mod restart;

/// A round asking more epochs than the site's budget is refused at the
/// announcement, before the model is downloaded; the next round is served.
#[test]
fn a_round_beyond_the_sites_training_bounds_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let mut d = driver_with_policy(None, 7, true)?;
    let now = Instant::now();
    let mut rs = train_start(3, b"model", vec![0xee; 32], 3);
    if let Some(t) = rs.training.as_mut() {
        t.epochs = 5000;
    }
    let r = d.on_task(start(&rs), now);
    assert!(
        matches!(&r, Err(ClientError::TrainingRefused { round: 3, why }) if why.contains("5000 epochs")),
        "{r:?}"
    );
    assert!(d.outbox().is_none(), "nothing queued");
    assert_eq!(d.current_round(), None);
    // The refusal is reported to the coordinator: round 3, its reason, why.
    let e = r.err().ok_or("refused")?;
    let decline = d.decline(&e).ok_or("a Decline is due")?;
    assert_eq!(
        (decline.session.as_str(), decline.round, decline.reason_code),
        ("s1", 3, v1::DeclineReason::TrainingBounds as i32)
    );
    assert!(
        decline.message.contains("5000 epochs"),
        "{}",
        decline.message
    );
    // Once: a later error that concerns no round declines nothing.
    assert!(d.decline(&e).is_none());
    let next = stats_start(4, false);
    assert!(!matches!(d.on_task(start(&next), now)?, Action::Wait));
    assert_eq!(d.current_round(), Some(4));
    Ok(())
}
