//! End-to-end federations with real sites (`confide_client::run_site`) over
//! gRPC on loopback.

use std::time::{Duration, Instant};

use confide_coordinator::settings::OptimiserKind;
use confide_coordinator::{Federation, ServeReport, Settings, checkpoint};
use confide_crypto::{Stage, Suite};
use confide_tests::{
    BoxError, Coordinator, settings, site, spawn_sites, split_non_iid, split_round_robin,
};

async fn run_federation(
    s: Settings,
    data: &[std::path::PathBuf],
    vanish: Option<(usize, u64, Stage)>,
) -> Result<ServeReport, BoxError> {
    // Sites take part in plaintext comparison rounds only when they opt in.
    let plaintext = !s.secure_aggregation;
    let coord = Coordinator::start(s).await?;
    let cfgs = data
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = site(&coord.url(), &format!("site-{i}"), p);
            c.allow_plaintext = plaintext;
            if let Some((who, round, stage)) = vanish
                && who == i
            {
                c.vanish = Some(confide_client::Vanish { round, stage });
            }
            c
        })
        .collect();
    let sites = spawn_sites(cfgs);
    let report = coord.finish(Duration::from_secs(150)).await?;
    for (i, h) in sites.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "site did not stop")??;
        let r = r.map_err(|e| format!("site {i}: {e}"))?;
        if vanish.is_some_and(|(w, _, _)| w == i) {
            assert!(r.vanished, "site {i} should have vanished");
        }
    }
    Ok(report)
}

fn assert_all_succeeded(r: &ServeReport, rounds: u64) {
    assert_eq!(r.completed_rounds, rounds, "history: {:#?}", r.history);
    for h in &r.history {
        assert!(
            h.success,
            "round {} ({}) failed: {}",
            h.round, h.kind, h.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_train_several_rounds_in_both_suites() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_non_iid(tmp.path(), &[0.2, 0.5])?;
    for suite in Suite::ALL {
        let t = Instant::now();
        let mut s = settings(3, suite);
        s.join_grace_secs = 1.0;
        let r = run_federation(s, &data, None).await?;
        assert_all_succeeded(&r, 3);
        // statistics + 3 train + final evaluation
        assert_eq!(r.history.len(), 5, "{:#?}", r.history);
        let acc = r.final_accuracy.ok_or("no final accuracy")?;
        assert!(acc > 0.8, "{suite}: accuracy {acc}");
        eprintln!(
            "{suite}: 3 sites, 3 rounds, accuracy {acc:.4}, {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Uploads are bit-packed: with a cohort bound of 100 and the default
/// levels (2^16) each model slot takes b = 24 bits, three bytes per
/// parameter instead of four (plus the weight and metric slots and the
/// signed masking set, a few dozen bytes per upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_uploads_three_bytes_per_parameter_at_24_bits() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_non_iid(tmp.path(), &[0.2, 0.5])?;
    let mut s = settings(1, Suite::Intl);
    s.max_sites = 100;
    s.join_grace_secs = 1.0;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.model.kind = confide_proto::model::ModelKind::Mlp;
    // Large enough that the other stages' messages (keys, shares,
    // signatures: about 600 bytes a site) weigh under 0.1 B/param. At this
    // width a site's summed held-out loss once overflowed its metric slot
    // under the cohort bound of 100 and every site withheld its update;
    // the loss now saturates at the slot's bound.
    s.model.hidden = vec![512];
    assert_eq!(s.quantiser(s.ring)?.bits(), 24);
    let params = confide_coordinator::federation::initial_model(&s)?.num_params();
    let r = run_federation(s, &data, None).await?;
    assert_all_succeeded(&r, 1);
    let h = &r.history[0];
    let per_param = h.bytes_in as f64 / (f64::from(h.survivors) * params as f64);
    eprintln!("{params} parameters: {per_param:.4} upload bytes per parameter");
    assert!((3.0..3.1).contains(&per_param), "{per_param} B/param");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sites_small_data() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_round_robin(tmp.path(), 10)?;
    for suite in Suite::ALL {
        let mut s = settings(2, suite);
        s.min_sites = 10;
        let t = Instant::now();
        let r = run_federation(s, &data, None).await?;
        assert_all_succeeded(&r, 2);
        assert!(
            r.history
                .iter()
                .all(|h| h.cohort == 10 && h.survivors == 10),
            "{:#?}",
            r.history
        );
        eprintln!(
            "10 sites ({}), 2 rounds: accuracy {:?}, {:.1} s",
            suite,
            r.final_accuracy,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_vanishing_at_any_stage_does_not_stop_the_round() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    // Five sites: the smallest cohort that survives a dropout (complete
    // graph k = 4, t = 3, signature quorum 4). With 3 or 4 sites the
    // threshold covering one colluder leaves no room for a dropout.
    let data = split_round_robin(tmp.path(), 5)?;
    let stages = [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::Consistency,
        Stage::Unmask,
    ];
    let mut runs = Vec::new();
    for (i, stage) in stages.into_iter().enumerate() {
        let mut s = settings(2, if i % 2 == 0 { Suite::Intl } else { Suite::Gm });
        s.min_sites = 4;
        // Round one should include all five; the grace ends as soon as they are connected.
        s.max_sites = 5;
        s.join_grace_secs = 10.0;
        s.statistics_round = false;
        s.final_evaluation = false;
        s.secagg.k = Some(4);
        s.secagg.t = Some(3);
        s.secagg.min_survivors = Some(3);
        s.secagg.stage_timeout_secs = 5;
        let data = data.clone();
        runs.push(tokio::spawn(async move {
            (stage, run_federation(s, &data, Some((4, 1, stage))).await)
        }));
    }
    for h in runs {
        let (stage, r) = h.await?;
        let r = r.map_err(|e| format!("vanish at {stage}: {e}"))?;
        assert_all_succeeded(&r, 2);
        let first = &r.history[0];
        assert_eq!(first.cohort, 5, "vanish at {stage}: {first:?}");
        // After its masked input the vanished site's input is in the sum.
        let want_survivors = if matches!(stage, Stage::Consistency | Stage::Unmask) {
            5
        } else {
            4
        };
        assert_eq!(
            first.survivors, want_survivors,
            "vanish at {stage}: {first:?}"
        );
        assert_eq!(
            r.history[1].cohort, 4,
            "vanish at {stage}: the vanished site is gone"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_cannot_complete_fails_cleanly_and_the_next_succeeds() -> Result<(), BoxError>
{
    let tmp = tempfile::tempdir()?;
    let data = split_round_robin(tmp.path(), 3)?;
    let ck = tmp.path().join("ck");
    let mut s = settings(1, Suite::Intl);
    s.join_grace_secs = 1.0;
    s.statistics_round = false;
    s.final_evaluation = false;
    s.secagg.min_survivors = Some(3);
    s.secagg.stage_timeout_secs = 4;
    s.checkpoints.dir = Some(ck.clone());
    let initial = confide_coordinator::federation::initial_model(&s)?;
    let coord = Coordinator::start(s).await?;
    let url = coord.url();
    let mut cfgs: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, p)| site(&url, &format!("site-{i}"), p))
        .collect();
    // Three sites survive no dropout (k = 2, t = 2, quorum 3). The site
    // vanishes before any update has left a site: after a failure past the
    // masked-input stage the other two would accept only an exact replay on
    // the same model, in a cohort of exactly the sites they signed with
    // (client/src/round/contribution.rs); this test is about the restart.
    cfgs[2].vanish = Some(confide_client::Vanish {
        round: 1,
        stage: Stage::ShareKeys,
    });
    let restart = site(&url, "site-2", &data[2]);
    let mut sites = spawn_sites(cfgs);
    // The vanished hospital comes back (a restart) and joins the next round.
    let vanished = sites.pop().ok_or("no site")?;
    let rep = tokio::time::timeout(Duration::from_secs(60), vanished)
        .await
        .map_err(|_| "vanishing site hung")???;
    assert!(rep.vanished);
    sites.extend(spawn_sites(vec![restart]));
    let r = coord.finish(Duration::from_secs(60)).await?;
    for h in sites {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "site did not stop")???;
    }
    assert_eq!(r.completed_rounds, 1);
    assert!(
        !r.history[0].success,
        "round 1 must fail: {:?}",
        r.history[0]
    );
    assert!(
        r.history[1].success,
        "round 2 must succeed: {:?}",
        r.history[1]
    );
    // Round 2 started from the initial model: the failed round changed nothing.
    assert_eq!(r.history[1].model_round, 0);
    let rounds: Vec<u64> = checkpoint::list(&ck)?.into_iter().map(|(r, _)| r).collect();
    assert_eq!(rounds, [2], "no checkpoint for the failed round");
    // Accuracy reported in round 2 is that of the untouched initial model.
    let acc = r.history[1].accuracy.ok_or("no accuracy")?;
    assert!(
        acc < 0.9,
        "initial (all-zero) model should not be accurate: {acc}"
    );
    let _ = initial;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_checkpoints_continues_with_identical_model_bytes() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_non_iid(tmp.path(), &[0.2, 0.5])?;
    let ck = tmp.path().join("ck");
    let mut s = settings(2, Suite::Intl);
    s.join_grace_secs = 1.0;
    s.final_evaluation = false;
    s.optimiser.kind = OptimiserKind::FedAdam; // has state that must survive too
    s.optimiser.server_lr = 0.1;
    s.checkpoints.dir = Some(ck.clone());
    let first = run_federation(s.clone(), &data, None).await?;
    assert_all_succeeded(&first, 2);
    let saved = checkpoint::latest(&ck)?.ok_or("no checkpoint")?;
    assert_eq!(saved.manifest.next_round, 4); // statistics 1, train 2 and 3

    // A different training config is refused unless allowed.
    let mut changed = s.clone();
    changed.training.epochs += 1;
    assert!(Federation::new(changed.clone()).is_err());
    changed.checkpoints.allow_config_change = true;
    assert!(Federation::new(changed).is_ok());

    s.rounds = 3;
    let fed = Federation::new(s.clone())?;
    assert_eq!(
        *fed.model_bytes(),
        saved.model_bytes,
        "resumed model must be byte-identical"
    );
    drop(fed);
    let second = run_federation(s, &data, None).await?;
    assert_eq!(second.completed_rounds, 3);
    assert_eq!(
        second.history.len(),
        first.history.len() + 1,
        "{:#?}",
        second.history
    );
    let last = second.history.last().ok_or("no history")?;
    assert_eq!(
        (
            last.round,
            last.kind.as_str(),
            last.success,
            last.model_round
        ),
        (4, "train", true, 3)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breast_cancer_three_hospitals_non_iid_mtls_reaches_95_percent() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let certs = tmp.path().join("certs");
    confide_coordinator::certs::init(
        &certs,
        "test",
        &[],
        &confide_coordinator::ca_key::CaKeySource::File,
    )?;
    let data = split_non_iid(tmp.path(), &[0.2, 0.5])?;
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    // Enrolment as a consortium runs it: each hospital makes its keys and a
    // request in its own directory; the CA sees only the requests.
    let site_dir = |n: &str| tmp.path().join("sites").join(n);
    for n in names {
        let e = confide_client::enrol::init(&site_dir(n), n, Suite::Intl, false)?;
        let csr = std::fs::read_to_string(&e.request)?;
        let signed = confide_coordinator::certs::sign_request(
            &certs,
            &csr,
            &confide_coordinator::certs::SignOptions {
                suite: Suite::Intl,
                site: Some(n.to_string()),
                days: 30,
                rotate: false,
            },
        )?;
        assert_eq!(signed.request_sha256, e.request_sha256, "out-of-band check");
        confide_client::enrol::install_certificate(
            &site_dir(n),
            n,
            &std::fs::read(&signed.certificate)?,
            Some(&certs.join("ca.pem")),
        )?;
    }
    // No site private key was ever in the CA directory.
    let mut ca_files = vec![];
    let mut stack = vec![certs.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                ca_files.push(p.strip_prefix(&certs)?.to_string_lossy().into_owned());
            }
        }
    }
    ca_files.sort();
    assert!(
        ca_files.iter().all(|f| !f.contains("signing")
            && (!f.ends_with(".key") || ["ca.key", "coordinator.key"].contains(&f.as_str()))),
        "a site private key in the CA directory: {ca_files:?}"
    );
    for n in names {
        let key_pem = std::fs::read_to_string(site_dir(n).join(format!("{n}.key")))?;
        for f in &ca_files {
            let text = std::fs::read_to_string(certs.join(f)).unwrap_or_default();
            assert!(!text.contains(key_pem.trim()), "{n}'s key found in {f}");
        }
    }
    let mut s = settings(30, Suite::Intl);
    s.tls.insecure = false;
    s.tls.certs_dir = Some(certs.clone());
    s.join_grace_secs = 1.0;
    s.checkpoints.dir = Some(tmp.path().join("ck"));
    let t = Instant::now();
    let coord = Coordinator::start(s).await?;
    let url = format!("https://{}", coord.addr);
    // The container healthcheck's probe: serving over TLS with only the CA;
    // a CA that did not sign the coordinator's certificate is refused.
    assert!(
        confide_coordinator::grpc::health_check(&url, Some(&certs.join("ca.pem")), "localhost")
            .await?
    );
    let other = tmp.path().join("other-ca");
    confide_coordinator::certs::init(
        &other,
        "other",
        &[],
        &confide_coordinator::ca_key::CaKeySource::File,
    )?;
    assert!(
        confide_coordinator::grpc::health_check(&url, Some(&other.join("ca.pem")), "localhost")
            .await
            .is_err()
    );
    // Hospital A's certificate cannot join as hospital B.
    {
        let ident = |p: &str| std::fs::read(site_dir("hospital-a").join(p));
        let tlscfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ident("ca.pem")?))
            .identity(tonic::transport::Identity::from_pem(
                ident("hospital-a.pem")?,
                ident("hospital-a.key")?,
            ))
            .domain_name("localhost");
        let ch = tonic::transport::Endpoint::from_shared(url.clone())?
            .tls_config(tlscfg)?
            .connect()
            .await?;
        let mut c = confide_proto::v1::site_client::SiteClient::new(ch);
        let r = c
            .join(confide_proto::v1::JoinRequest {
                site: "hospital-b".into(),
                verifying_key: vec![1; 32],
                version: String::new(),
            })
            .await;
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(tonic::Code::PermissionDenied)
        );
    }
    let cfgs = names
        .iter()
        .zip(&data)
        .map(|(n, p)| {
            let mut c = confide_client::SiteConfig::new(url.clone(), *n, p, "malignant");
            let (tls, signing) =
                confide_client::enrol::identity_in_dir(&site_dir(n), n, "localhost");
            c.tls = Some(tls);
            c.signing_key = Some(signing);
            c
        })
        .collect();
    let sites = spawn_sites(cfgs);
    // The Admin API answers operators and refuses site certificates.
    confide_coordinator::certs::issue_operator(&certs, "ops")?;
    let op = |n: &str| {
        let dir = if n.starts_with("operators/") {
            certs.clone()
        } else {
            site_dir(n)
        };
        Some((
            certs.join("ca.pem"),
            dir.join(format!("{n}.pem")),
            dir.join(format!("{n}.key")),
        ))
    };
    let status = confide_coordinator::grpc::admin_status(&url, op("operators/ops")).await?;
    assert_eq!(
        (status.federation.as_str(), status.target_rounds),
        ("test", 30)
    );
    assert!(
        confide_coordinator::grpc::admin_status(&url, op("hospital-a"))
            .await
            .is_err()
    );
    // Operators are a role the CA grants, not a name: a site that asked for
    // the name operator-x gets a site certificate and no Admin access.
    {
        let n = "operator-x";
        let e = confide_client::enrol::init(&site_dir(n), n, Suite::Intl, false)?;
        let signed = confide_coordinator::certs::sign_request(
            &certs,
            &std::fs::read_to_string(&e.request)?,
            &confide_coordinator::certs::SignOptions {
                suite: Suite::Intl,
                site: None,
                days: 1,
                rotate: false,
            },
        )?;
        confide_client::enrol::install_certificate(
            &site_dir(n),
            n,
            &std::fs::read(&signed.certificate)?,
            Some(&certs.join("ca.pem")),
        )?;
        let refused = confide_coordinator::grpc::admin_status(&url, op(n)).await;
        let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("not an operator certificate"), "{msg}");
    }
    let r = coord.finish(Duration::from_secs(150)).await?;
    for h in sites {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "site did not stop")???;
    }
    assert_all_succeeded(&r, 30);
    let acc = r.final_accuracy.ok_or("no final accuracy")?;
    eprintln!(
        "breast cancer, 3 hospitals non-IID, mTLS + SecAgg: final held-out accuracy {acc:.4} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for h in &r.history {
        eprintln!("  round {:>2} {:<10} acc {:?}", h.round, h.kind, h.accuracy);
    }
    assert!(acc >= 0.95, "held-out accuracy {acc} below 0.95");

    // The docs' NumPy recipe on the exported checkpoint: standardise, x @ W.T + b, sigmoid.
    let out = tmp.path().join("model.safetensors");
    checkpoint::export(
        &checkpoint::latest(&tmp.path().join("ck"))?.ok_or("no checkpoint")?,
        &out,
    )?;
    let m = confide_client::train::Model::from_safetensors(&std::fs::read(&out)?)?;
    let get = |n: &str| {
        m.get(n)
            .map(|t| t.data.clone())
            .ok_or(format!("no tensor {n}"))
    };
    let (w, b, mean, std) = (
        get("weight")?,
        get("bias")?,
        get("preprocess.mean")?,
        get("preprocess.std")?,
    );
    let mut correct = 0usize;
    let mut total = 0usize;
    for line in confide_tests::BREAST_CANCER
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
    {
        let v: Vec<f32> = line
            .split(',')
            .map(|x| x.trim().parse().unwrap_or(f32::NAN))
            .collect();
        let logit: f32 = (0..30)
            .map(|j| (v[j] - mean[j]) / std[j] * w[j])
            .sum::<f32>()
            + b[0];
        let pred = if 1.0 / (1.0 + (-logit).exp()) > 0.5 {
            1.0
        } else {
            0.0
        };
        correct += usize::from(pred == v[30]);
        total += 1;
    }
    let all = correct as f64 / total as f64;
    eprintln!(
        "exported checkpoint, recipe from docs/checkpoints.md: accuracy on all {total} rows {all:.4}"
    );
    assert!(all >= 0.95, "exported model accuracy {all}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_comparison_mode_trains_with_the_same_flow() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_non_iid(tmp.path(), &[0.2, 0.5])?;
    let mut s = settings(3, Suite::Intl);
    s.join_grace_secs = 1.0;
    s.secure_aggregation = false;
    let r = run_federation(s, &data, None).await?;
    assert_all_succeeded(&r, 3);
    let acc = r.final_accuracy.ok_or("no final accuracy")?;
    assert!(acc > 0.8, "plaintext accuracy {acc}");
    Ok(())
}
