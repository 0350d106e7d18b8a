//! Upload hygiene at the federation (one stream per member, a wait for a
//! slot bounded by the stage deadline) and a poisoned upload failing its
//! round cleanly. In-process sites, plaintext rounds, tokio's paused clock.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use confide_crypto::MemberId;
use confide_proto::model::Model;
use confide_proto::v1 as pb;
use tokio::task::JoinHandle;

use crate::error::{CoordinatorError, RequestError};
use crate::federation::{Federation, ServeReport, initial_model};
use crate::settings::Settings;

pub(crate) type Res<T> = Result<T, Box<dyn Error>>;

/// One plaintext training round of `n` insecure sites, 4 s stages (so the
/// round closes 12 s after it starts), stop at the first failure.
pub(crate) fn plaintext(n: usize) -> Settings {
    let mut s = Settings {
        min_sites: n,
        max_sites: n,
        ..Default::default()
    };
    s.tls.insecure = true;
    // These sites claim weight 1 (in-process: a few rows). The mean's
    // error bound is c·N·W/(L·T) = 4·10/65536 ≈ 6e-4 at W = 10, inside the
    // tests' 1e-3; at the default W = 10^4 it would be 0.61.
    s.quantisation.max_weight = 10;
    s.rounds = 1;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.secure_aggregation = false;
    s.secagg.stage_timeout_secs = 4;
    s.max_consecutive_failures = 1;
    s
}

/// A joined in-process site.
pub(crate) struct Site {
    pub session: String,
    pub member: MemberId,
    rx: crate::federation::TaskStream,
}

/// A running round: the federation, its driver, the sites and the RoundStart.
pub(crate) struct Running {
    pub fed: Arc<Federation>,
    pub sites: Vec<Site>,
    pub driver: JoinHandle<Result<ServeReport, CoordinatorError>>,
    pub start: pb::RoundStart,
}

/// Joins `names`, starts the driver and waits for every site's RoundStart.
pub(crate) async fn start(s: Settings, names: &[&str]) -> Res<Running> {
    let fed = Federation::new(s)?;
    let mut sites = Vec::new();
    for name in names {
        let session = fed.join(name, &[7; 32], None)?;
        let member = fed.session(&session, None)?.member;
        let rx = fed.open_tasks(&session, None)?;
        sites.push(Site {
            session,
            member,
            rx,
        });
    }
    let driver = tokio::spawn({
        let fed = fed.clone();
        async move { fed.run().await }
    });
    let mut start = None;
    for site in &mut sites {
        match site.rx.recv().await.and_then(|t| t.kind) {
            Some(pb::task::Kind::RoundStart(rs)) => start = Some(rs),
            other => return Err(format!("expected RoundStart, got {other:?}").into()),
        }
    }
    let start = start.ok_or("no sites")?;
    Ok(Running {
        fed,
        sites,
        driver,
        start,
    })
}

/// The little-endian bytes of an honest TRAIN vector: every parameter moved
/// by `delta`, weight 1, metrics [1 correct of 2, loss 0.5].
pub(crate) fn honest(s: &Settings, delta: f32) -> Res<Vec<u32>> {
    let q = s.quantiser(s.ring)?;
    let d = initial_model(s)?.num_params();
    Ok(q.encode::<u32>(&vec![delta; d], 1, &[1, 2, 500], &mut rand::rng())?)
}

/// Elements `range` of `v` as a site sends them in the round `start`
/// announced (model slots bit-packed).
pub(crate) fn wire(start: &pb::RoundStart, v: &[u32], range: std::ops::Range<usize>) -> Vec<u8> {
    let ring = confide_crypto::Ring::U32;
    confide_proto::layout::round_packing(start, ring).encode(v, range)
}

/// Uploads `v` in one chunk for `site`.
async fn upload(r: &Running, site: usize, v: Vec<u32>) -> Result<(), RequestError> {
    let site = &r.sites[site];
    let mut up = r
        .fed
        .begin_upload(&site.session, None, r.start.round, r.start.vector_len)
        .await?;
    up.push(0, &wire(&r.start, &v, 0..v.len()))?;
    r.fed.finish_upload(&site.session, None, up, None).await
}

#[tokio::test(start_paused = true)]
async fn a_member_uploads_through_one_stream_at_a_time() -> Res<()> {
    let s = plaintext(2);
    let r = start(s.clone(), &["a", "b"]).await?;
    let (a, round, len) = (&r.sites[0], r.start.round, r.start.vector_len);
    let first = r.fed.begin_upload(&a.session, None, round, len).await?;
    // A second stream while the first is open is refused; the first goes on.
    assert_eq!(
        r.fed.begin_upload(&a.session, None, round, len).await.err(),
        Some(RequestError::UploadInProgress(a.member))
    );
    // A stream that failed (dropped unfinished) does not lock the member out.
    drop(first);
    let mut retry = r.fed.begin_upload(&a.session, None, round, len).await?;
    let v = honest(&s, 0.25)?;
    retry.push(0, &wire(&r.start, &v, 0..v.len()))?;
    r.fed.finish_upload(&a.session, None, retry, None).await?;
    // Once the vector is in the sum, any later stream is a duplicate.
    assert_eq!(
        r.fed.begin_upload(&a.session, None, round, len).await.err(),
        Some(RequestError::AlreadySubmitted(a.member))
    );
    upload(&r, 1, honest(&s, 0.25)?).await?;
    let report = r.driver.await??;
    assert!(report.history[0].success, "{}", report.history[0].message);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn waiting_for_an_upload_slot_ends_at_the_stage_deadline() -> Res<()> {
    let mut s = plaintext(3);
    s.limits.max_concurrent_uploads = 1;
    let r = start(s, &["a", "b", "c"]).await?;
    let (round, len) = (r.start.round, r.start.vector_len);
    let begun = tokio::time::Instant::now();
    let held = r
        .fed
        .begin_upload(&r.sites[0].session, None, round, len)
        .await?;
    // b waits for the one slot and gets it as soon as a's stream is dropped.
    let waiting = tokio::spawn({
        let (fed, session) = (r.fed.clone(), r.sites[1].session.clone());
        async move { fed.begin_upload(&session, None, round, len).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the only slot is held");
    drop(held);
    let b = waiting.await??;
    // c waits behind b's stalled upload, but only until the stage deadline
    // (12 s after the start), not indefinitely.
    let c = r
        .fed
        .begin_upload(&r.sites[2].session, None, round, len)
        .await;
    let waited = tokio::time::Instant::now() - begun;
    assert_eq!(c.err(), Some(RequestError::UploadSlotTimeout { round }));
    assert!(
        waited >= Duration::from_secs(12) && waited < Duration::from_secs(13),
        "{waited:?}"
    );
    drop(b);
    let res = r.driver.await?;
    assert!(matches!(res, Err(CoordinatorError::Rounds { failures: 1 })));
    Ok(())
}

/// One site's upload holds an element no honest site of its weight can
/// produce: the round fails, the record says why, the model is unchanged.
#[tokio::test(start_paused = true)]
async fn a_poisoned_upload_fails_the_round_and_leaves_the_model() -> Res<()> {
    let s = plaintext(2);
    let before = initial_model(&s)?;
    let r = start(s.clone(), &["a", "b"]).await?;
    upload(&r, 0, honest(&s, 0.25)?).await?;
    let mut poisoned = honest(&s, 0.25)?;
    // Weight 1, but the element of a full-weight site at the clip: the mean
    // would be ≈ max_weight / 2 × clip.
    let q = s.quantiser(s.ring)?;
    let big = q.element_limit(1, s.quantisation.max_weight);
    poisoned[0] = u32::try_from(big)?;
    upload(&r, 1, poisoned).await?;
    let res = r.driver.await?;
    assert!(matches!(res, Err(CoordinatorError::Rounds { failures: 1 })));
    let h = r.fed.history();
    assert_eq!(h.len(), 1);
    assert!(!h[0].success);
    assert!(
        h[0].message
            .starts_with("aggregate rejected: sum element 0 = "),
        "{}",
        h[0].message
    );
    assert_eq!((h[0].survivors, h[0].dropped), (2, 0));
    assert_eq!(Model::from_safetensors(&r.fed.model_bytes())?, before);
    assert_eq!(r.fed.report().completed_rounds, 0);
    Ok(())
}

/// An upload must be the packed wire form, byte for byte: the container
/// width, a chunk ending inside an element, or a short stream are refused
/// with the bytes expected and received; the whole packed vector is taken.
#[tokio::test(start_paused = true)]
async fn a_wrongly_sized_packed_upload_is_refused_naming_the_bytes() -> Res<()> {
    let s = plaintext(2);
    let r = start(s.clone(), &["a", "b"]).await?;
    let (round, len) = (r.start.round, r.start.vector_len);
    let bits = r.start.quantisation.as_ref().map_or(0, |q| q.bits);
    // 2 sites at the default levels: 2·(2^16 + 1) needs 19 bits.
    assert_eq!(bits, 19);
    let v = honest(&s, 0.25)?;
    let packed = wire(&r.start, &v, 0..v.len());
    let d = v.len() - 4;
    assert_eq!(packed.len(), (d * 19).div_ceil(8) + 16);
    let a = &r.sites[0].session;
    let mut up = r.fed.begin_upload(a, None, round, len).await?;
    let e = up.push(0, &confide_crypto::ring::to_le_bytes(&v)).err();
    assert!(
        matches!(e, Some(RequestError::ChunkSize { bits: 19, .. })),
        "{e:?}"
    );
    // Three elements of 19 bits end inside a byte.
    let e = up.push(0, &packed[..7]).err();
    assert!(matches!(e, Some(RequestError::ChunkSize { .. })), "{e:?}");
    // All but the last (metric) slot: whole elements, but not the vector.
    up.push(0, &packed[..packed.len() - 4])?;
    let e = r.fed.finish_upload(a, None, up, None).await.err();
    let msg = e.as_ref().map(ToString::to_string).unwrap_or_default();
    let want = format!(
        "upload of {} bytes, expected {} bytes",
        packed.len() - 4,
        packed.len()
    );
    assert!(msg.contains(&want), "{msg}");
    // The packed vector itself is accepted.
    let mut up = r.fed.begin_upload(a, None, round, len).await?;
    up.push(0, &packed)?;
    r.fed.finish_upload(a, None, up, None).await?;
    Ok(())
}

/// A request the machine hands every recipient as one allocation is
/// converted once; another allocation is converted afresh, even if equal.
#[test]
fn a_shared_request_is_converted_once() {
    let mut built = 0;
    let mut cache = None;
    let mut build = |m: &u64| {
        built += 1;
        super::task(pb::task::Kind::RoundEnd(pb::RoundEnd {
            round: *m,
            ..Default::default()
        }))
    };
    let a = Arc::new(7u64);
    let (t1, len) = super::shared(&mut cache, a.clone(), &mut build);
    let (t2, _) = super::shared(&mut cache, a, &mut build);
    assert!(Arc::ptr_eq(&t1, &t2));
    assert!(len > 0);
    let (t3, _) = super::shared(&mut cache, Arc::new(7u64), &mut build);
    assert!(!Arc::ptr_eq(&t1, &t3));
    assert_eq!(built, 2);
}

#[test]
fn a_stage_stops_waiting_early_only_for_lost_members_within_the_allowance() {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::only_lost_within;

    let m = |i: u32| -> MemberId { i };
    let now = Instant::now();
    let lost: BTreeMap<MemberId, Instant> = [(m(1), now), (m(2), now)].into();
    // Both awaited members lost, within an allowance of 2.
    assert!(only_lost_within(&[m(1), m(2)], &lost, 2, 0));
    // One more than the allowance: an outage gets the grace.
    assert!(!only_lost_within(&[m(1), m(2)], &lost, 1, 0));
    // Members dropped at earlier stages use up the allowance.
    assert!(!only_lost_within(&[m(1), m(2)], &lost, 2, 1));
    assert!(only_lost_within(&[m(1)], &lost, 2, 1));
    // Someone awaited is still connected (working): wait.
    assert!(!only_lost_within(&[m(1), m(3)], &lost, 5, 0));
    // Nobody awaited: nothing to cut short.
    assert!(!only_lost_within(&[], &lost, 5, 0));
}
