//! Protocol-level end-to-end tests with scripted sites: the secure sum equals
//! plaintext FedAvg within the quantisation bound, and bad submissions get
//! specific statuses without disturbing the round.

use std::time::Duration;

use confide_client::train::Model;
use confide_coordinator::Settings;
use confide_coordinator::checkpoint;
use confide_crypto::Suite;
use confide_proto::v1 as pb;
use confide_tests::{
    AsyncPoke, BoxError, Coordinator, FakeSite, NoPoke, StagedUpload, chunks, settings,
};
use rand::RngExt;
use tokio::sync::watch;
use tonic::Code;

fn fake_settings(suite: Suite, secure: bool, dir: &std::path::Path) -> Settings {
    let mut s = settings(1, suite);
    // The fake sites' weights are at most 101: a cap near them keeps the
    // quanta of one unit of weight, L / max_weight, high (the mean's error
    // bound is c·N·W/(L·T)); at the default cap of 10^4 it would be ~100×
    // looser than these deltas deserve.
    s.quantisation.max_weight = 128;
    s.statistics_round = false;
    s.evaluate_every_round = false;
    s.final_evaluation = false;
    s.secure_aggregation = secure;
    s.checkpoints.dir = Some(dir.to_path_buf());
    s.join_grace_secs = 1.0;
    s
}

/// Runs one round with `n` fake sites (at most 5) and checks the new global
/// model against the plaintext weighted mean of the deltas. With
/// `one_sided`, the last site leaves out one dealer's share, so that
/// dealer's mask with it is one-sided and must be revealed at unmask.
async fn fedavg_case(
    suite: Suite,
    secure: bool,
    n: usize,
    one_sided: bool,
) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let mut s = fake_settings(suite, secure, tmp.path());
    s.min_sites = n;
    let initial = confide_coordinator::federation::initial_model(&s)?.flatten();
    let d = initial.len();
    let coord = Coordinator::start(s).await?;
    let mut rng = rand::rng();
    let weights = &[13u64, 52, 101, 7, 29][..n];
    let deltas: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut site = FakeSite::join(&coord.url(), &format!("fake-{i}"), suite).await?;
        site.ignore_lowest_share = one_sided && i + 1 == n;
        let delta = deltas[i].clone();
        let w = weights[i];
        tasks.push(tokio::spawn(async move {
            let rs = site.round_start().await?;
            let q = FakeSite::quantiser(&rs)?;
            let end = site.train_round(&rs, &delta, w, NoPoke).await?;
            Ok::<_, BoxError>((end, q))
        }));
    }
    let mut q = None;
    for t in tasks {
        let (end, qq) = t.await??;
        assert!(end.success, "round failed: {}", end.message);
        q = Some(qq);
    }
    let report = coord.finish(Duration::from_secs(30)).await?;
    assert_eq!(report.completed_rounds, 1);
    let first = &report.history[0];
    assert_eq!((first.cohort as usize, first.survivors as usize), (n, n));
    assert!(first.blamed.is_empty(), "{:?}", first.blamed);
    let q = q.ok_or("no quantiser")?;
    let ck = checkpoint::latest(tmp.path())?.ok_or("no checkpoint")?;
    let got = ck.model.flatten();
    let total: u64 = weights.iter().sum();
    let bound = q.error_bound(n, total) + 1e-6;
    let mut worst = 0.0f64;
    for j in 0..d {
        let mean: f64 = (0..n)
            .map(|i| weights[i] as f64 * f64::from(deltas[i][j]))
            .sum::<f64>()
            / total as f64;
        let want = f64::from(initial[j]) + mean;
        let err = (f64::from(got[j]) - want).abs();
        worst = worst.max(err);
        assert!(
            err <= bound,
            "param {j}: got {} want {want} (error {err} > bound {bound})",
            got[j]
        );
    }
    // The bound is tight enough to mean something: far below the delta scale.
    assert!(bound < 1e-3, "bound {bound}");
    eprintln!("{suite} secure={secure}: worst error {worst:e}, bound {bound:e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_sum_equals_plaintext_fedavg_within_quantisation_bound() -> Result<(), BoxError> {
    let (a, b, c) = tokio::join!(
        fedavg_case(Suite::Intl, true, 3, false),
        fedavg_case(Suite::Gm, true, 3, false),
        fedavg_case(Suite::Intl, false, 3, false)
    );
    a?;
    b?;
    c?;
    Ok(())
}

/// A site that refused one peer's share over real gRPC leaves a one-sided
/// pair: the peer reveals that pair's key (`UnmaskResponse.pair_keys`) and
/// the round completes exact, blaming nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_sided_pair_is_unmasked_over_grpc_in_both_suites() -> Result<(), BoxError> {
    let (a, b) = tokio::join!(
        fedavg_case(Suite::Intl, true, 5, true),
        fedavg_case(Suite::Gm, true, 5, true)
    );
    a?;
    b?;
    Ok(())
}

/// Site 0 first sends bad submissions, then its real vector, then a
/// duplicate, while the other sites wait; then they submit and the round
/// must still equal FedAvg.
struct Poker {
    release: watch::Sender<bool>,
    url: String,
}

impl AsyncPoke for Poker {
    async fn poke(&mut self, site: &mut FakeSite, round: u64, v: &[u32]) -> Result<bool, BoxError> {
        let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
        assert_eq!(
            code(site.submit(round + 7, v).await),
            Some(Code::FailedPrecondition),
            "wrong round"
        );
        assert_eq!(
            code(site.submit(round, &v[..v.len() - 1]).await),
            Some(Code::InvalidArgument),
            "wrong length"
        );
        // Offsets that skip elements are a bad chunk sequence.
        let mut bad = chunks(&site.session, round, v);
        bad[0].offset = 1;
        let r = confide_tests::upload(&mut site.client, bad).await;
        assert_eq!(code(r), Some(Code::InvalidArgument), "bad offset");
        // A stage-1 message during stage 3.
        let r = site
            .client
            .advertise_keys(pb::AdvertiseKeysRequest {
                session: site.session.clone(),
                advert: Some(pb::KeyAdvert {
                    round,
                    member: 1,
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ());
        assert!(
            matches!(
                code(r),
                Some(Code::FailedPrecondition | Code::PermissionDenied)
            ),
            "wrong stage"
        );
        // A secure upload without its signed masking set.
        let r = confide_tests::upload(&mut site.client, chunks(&site.session, round, v)).await;
        assert_eq!(code(r), Some(Code::InvalidArgument), "no masking set");
        // Unknown session.
        let mut other = pb::site_client::SiteClient::connect(self.url.clone()).await?;
        let r = confide_tests::upload(&mut other, chunks("not-a-session", round, v)).await;
        assert_eq!(code(r), Some(Code::Unauthenticated), "unknown session");
        // The real submission, then a duplicate.
        site.submit(round, v).await?;
        assert_eq!(
            code(site.submit(round, v).await),
            Some(Code::AlreadyExists),
            "duplicate"
        );
        let _ = self.release.send(true);
        Ok(true)
    }
}

struct WaitFor(watch::Receiver<bool>);

impl AsyncPoke for WaitFor {
    async fn poke(
        &mut self,
        _site: &mut FakeSite,
        _round: u64,
        _v: &[u32],
    ) -> Result<bool, BoxError> {
        self.0.wait_for(|v| *v).await?;
        Ok(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_get_specific_statuses_and_do_not_disturb_the_round() -> Result<(), BoxError>
{
    let tmp = tempfile::tempdir()?;
    let s = fake_settings(Suite::Intl, true, tmp.path());
    let initial = confide_coordinator::federation::initial_model(&s)?.flatten();
    let d = initial.len();
    // Three sites of weight 10: the documented worst case of the mean.
    let bound = s.quantiser(s.ring)?.error_bound(3, 30);
    assert!(bound < 1e-3, "bound {bound}");
    let coord = Coordinator::start(s).await?;
    let (tx, rx) = watch::channel(false);
    let deltas: Vec<Vec<f32>> = (0..3).map(|i| vec![0.25 * (i as f32 + 1.0); d]).collect();
    let mut handles = Vec::new();
    let mut tx = Some(tx);
    for (i, delta) in deltas.iter().cloned().enumerate() {
        let mut site = FakeSite::join(&coord.url(), &format!("fake-{i}"), Suite::Intl).await?;
        let url = coord.url();
        let poke_tx = if i == 0 { tx.take() } else { None };
        let rx = rx.clone();
        handles.push(tokio::spawn(async move {
            let rs = site.round_start().await?;
            let end = match poke_tx {
                Some(release) => {
                    site.train_round(&rs, &delta, 10, Poker { release, url })
                        .await?
                }
                None => site.train_round(&rs, &delta, 10, WaitFor(rx)).await?,
            };
            // After the round, a replay of this round's input is refused.
            let late = site
                .submit(rs.round, &vec![0u32; rs.vector_len as usize])
                .await;
            assert_eq!(
                late.err().map(|s| s.code()),
                Some(Code::FailedPrecondition),
                "replay after the round"
            );
            Ok::<_, BoxError>(end)
        }));
    }
    for h in handles {
        let end = h.await??;
        assert!(end.success, "round disturbed: {}", end.message);
    }
    let report = coord.finish(Duration::from_secs(30)).await?;
    assert_eq!(report.completed_rounds, 1);
    let got = checkpoint::latest(tmp.path())?
        .ok_or("no checkpoint")?
        .model
        .flatten();
    for j in 0..d {
        let want = f64::from(initial[j]) + 0.5; // mean of 0.25, 0.5, 0.75
        assert!(
            (f64::from(got[j]) - want).abs() <= bound,
            "param {j}: {} vs {want}",
            got[j]
        );
    }
    let _ = Model::new();
    Ok(())
}

/// One site deals garbage share ciphertexts over real gRPC: its four honest
/// peers leave it out, so it claims to have masked with peers that did not
/// mask with it; the coordinator fails that round once, names the site in
/// the round record, leaves it out of the next cohort, and the next round
/// completes with the other four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_dealing_garbage_shares_is_named_and_excluded() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let mut s = fake_settings(Suite::Intl, true, tmp.path());
    s.min_sites = 4;
    s.secagg.exclude_after_blamed_rounds = 1;
    s.max_consecutive_failures = 3;
    let d = confide_coordinator::federation::initial_model(&s)?
        .flatten()
        .len();
    let coord = Coordinator::start(s).await?;
    let mut sites = Vec::new();
    for i in 0..5 {
        let mut site = FakeSite::join(&coord.url(), &format!("fake-{i}"), Suite::Intl).await?;
        site.garble_shares = i == 4;
        sites.push(site);
    }
    let mut tasks = Vec::new();
    for (i, mut site) in sites.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut ends = Vec::new();
            // The faulty site takes part once; the others until a round succeeds.
            loop {
                let rs = site.round_start().await?;
                let delta = vec![0.01f32; d];
                let end = site.train_round(&rs, &delta, 10, NoPoke).await?;
                let ok = end.success;
                ends.push(end);
                if ok || i == 4 {
                    return Ok::<_, BoxError>(ends);
                }
            }
        }));
    }
    let bad = tasks.pop().ok_or("no task")?.await??;
    assert_eq!(bad.len(), 1);
    assert!(!bad[0].success, "the round with the faulty site completed");
    for t in tasks {
        let ends = t.await??;
        assert_eq!(ends.len(), 2, "{ends:?}");
        assert!(!ends[0].success && ends[1].success, "{ends:?}");
    }
    let report = coord.finish(Duration::from_secs(30)).await?;
    assert_eq!(report.completed_rounds, 1);
    let first = &report.history[0];
    assert!(!first.success);
    assert_eq!(first.cohort, 5);
    assert!(
        first.blamed.iter().any(|(site, _)| site == "fake-4"),
        "{:?}",
        first.blamed
    );
    assert!(
        first.blamed.iter().all(|(site, _)| site == "fake-4"),
        "an honest site was blamed: {:?}",
        first.blamed
    );
    let second = report
        .history
        .iter()
        .find(|r| r.success)
        .ok_or("no success")?;
    assert_eq!((second.cohort, second.survivors), (4, 4));
    Ok(())
}

/// Site 0's upload takes the only slot and holds it (header sent, `ready`
/// received, data not yet sent) until site 1's upload has waited.
struct HoldSlot {
    held: watch::Sender<bool>,
    release: watch::Receiver<bool>,
}

impl AsyncPoke for HoldSlot {
    async fn poke(&mut self, site: &mut FakeSite, round: u64, v: &[u32]) -> Result<bool, BoxError> {
        let chunks = site.upload_chunks(round, v);
        let mut up = StagedUpload::open(&mut site.client, chunks).await?;
        assert!(up.reply().await?, "the first upload gets the free slot");
        let _ = self.held.send(true);
        self.release.wait_for(|r| *r).await?;
        up.finish().await?;
        Ok(true)
    }
}

/// Site 1 opens its upload while site 0 holds the slot: no `ready` may come
/// until site 0's vector is in.
struct WaitBehind {
    held: watch::Receiver<bool>,
    release: watch::Sender<bool>,
}

impl AsyncPoke for WaitBehind {
    async fn poke(&mut self, site: &mut FakeSite, round: u64, v: &[u32]) -> Result<bool, BoxError> {
        self.held.wait_for(|h| *h).await?;
        let chunks = site.upload_chunks(round, v);
        let mut up = StagedUpload::open(&mut site.client, chunks).await?;
        let early = tokio::time::timeout(Duration::from_millis(500), up.reply()).await;
        assert!(
            early.is_err(),
            "a go-ahead while the only slot was taken: {early:?}"
        );
        let _ = self.release.send(true);
        let ready = tokio::time::timeout(Duration::from_secs(30), up.reply()).await??;
        assert!(ready, "ready once the slot is free");
        up.finish().await?;
        Ok(true)
    }
}

/// An upload waiting for a slot is told `ready` only when it has one, so
/// until then it sends its header and nothing else; the round completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_gets_its_go_ahead_only_with_a_slot() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let mut s = fake_settings(Suite::Intl, false, tmp.path());
    s.min_sites = 2;
    s.limits.max_concurrent_uploads = 1;
    let d = confide_coordinator::federation::initial_model(&s)?
        .flatten()
        .len();
    let coord = Coordinator::start(s).await?;
    let (held_tx, held_rx) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let mut a = FakeSite::join(&coord.url(), "fake-0", Suite::Intl).await?;
    let mut b = FakeSite::join(&coord.url(), "fake-1", Suite::Intl).await?;
    let delta = vec![0.5f32; d];
    let first = tokio::spawn({
        let delta = delta.clone();
        async move {
            let rs = a.round_start().await?;
            let hold = HoldSlot {
                held: held_tx,
                release: release_rx,
            };
            a.train_round(&rs, &delta, 10, hold).await
        }
    });
    let second = tokio::spawn(async move {
        let rs = b.round_start().await?;
        let wait = WaitBehind {
            held: held_rx,
            release: release_tx,
        };
        b.train_round(&rs, &delta, 10, wait).await
    });
    for end in [first.await??, second.await??] {
        assert!(end.success, "round failed: {}", end.message);
    }
    let report = coord.finish(Duration::from_secs(30)).await?;
    assert_eq!(report.completed_rounds, 1);
    Ok(())
}
