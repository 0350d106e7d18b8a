//! The Prometheus endpoints end to end: a secure federation of five real
//! sites (one vanishes mid-round) with the coordinator's `/metrics` on
//! 127.0.0.1:0, scraped while rounds run and after `serve` returned; both
//! scrapes pass `promtool check metrics`, and the final counters equal the
//! round table of the `ServeReport`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use confide_coordinator::{Metrics, MetricsServer, RoundRecord};
use confide_crypto::{Stage, Suite};
use confide_tests::{BoxError, settings, site, spawn_sites, split_round_robin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One `GET path` over HTTP/1.0 (the server closes after it): (status
/// line, content type, body).
async fn scrape(addr: SocketAddr, path: &str) -> Result<(String, String, String), BoxError> {
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nAccept: text/plain\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    c.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// Every sample of `name` as (label text, value).
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = match series.split_once('{') {
                Some((n, rest)) if n == name => rest.trim_end_matches('}').to_string(),
                None if series == name => String::new(),
                _ => return None,
            };
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` whose labels contain every one of `labels` (summed
/// over the others).
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| labels.iter().all(|want| l.contains(want)))
        .map(|(_, v)| v)
        .sum()
}

/// `promtool check metrics` on `text` (stdin): its output, or `None` when
/// promtool is not installed (an error under CI, which installs it).
async fn promtool(text: &str) -> Result<Option<String>, BoxError> {
    let child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                return Err(
                    "promtool not installed (.ci/run installs the Debian prometheus package)"
                        .into(),
                );
            }
            println!("SKIPPED promtool check: promtool not installed");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut stdin = child.stdin.take().ok_or("promtool stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "promtool check metrics failed ({}):\n{said}\n{text}",
            out.status
        )
        .into());
    }
    let said = if said.trim().is_empty() {
        "no problems found".to_string()
    } else {
        said.trim().to_string()
    };
    Ok(Some(said))
}

/// Rounds of `history` per kind satisfying `f`.
fn count_by_kind(
    history: &[RoundRecord],
    f: impl Fn(&RoundRecord) -> bool,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for r in history.iter().filter(|r| f(r)) {
        *m.entry(r.kind.clone()).or_insert(0.0) += 1.0;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_during_and_after_a_federation_and_match_the_round_table()
-> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    // Five sites: the smallest cohort that survives a dropout (see e2e.rs).
    let data = split_round_robin(tmp.path(), 5)?;
    let mut s = settings(4, Suite::Intl);
    s.min_sites = 4;
    s.max_sites = 5;
    s.join_grace_secs = 10.0;
    s.secagg.k = Some(4);
    s.secagg.t = Some(3);
    s.secagg.min_survivors = Some(3);
    s.secagg.stage_timeout_secs = 5;
    s.checkpoints.dir = Some(tmp.path().join("ck"));
    s.metrics.listen = Some("127.0.0.1:0".into());

    // The test binds the metrics port itself to learn it, and keeps the
    // endpoint up past `serve_with` for the final scrape.
    let metrics = Arc::new(Metrics::new(&s));
    let endpoint = MetricsServer::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        metrics.clone(),
    )?;
    let maddr = endpoint.addr();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let serve = tokio::spawn(confide_coordinator::serve_with(
        s,
        listener,
        metrics,
        std::future::pending(),
    ));

    // Site 4 vanishes in the masked-input stage of round 3 (the second
    // training round): after sharing its keys, so its mask key is rebuilt.
    let site_metrics: Vec<Arc<confide_client::SiteMetrics>> = (0..5)
        .map(|_| Arc::new(confide_client::SiteMetrics::new()))
        .collect();
    let cfgs = data
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = site(&url, &format!("site-{i}"), p);
            c.metrics = Some(site_metrics[i].clone());
            if i == 4 {
                c.vanish = Some(confide_client::Vanish {
                    round: 3,
                    stage: Stage::MaskedInput,
                });
            }
            c
        })
        .collect();
    let sites = spawn_sites(cfgs);

    // During: as soon as a training round has succeeded, while more rounds
    // are still to come.
    let during = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let (status, _, body) = scrape(maddr, "/metrics").await?;
            if !status.contains(" 200 ") {
                return Err::<String, BoxError>(format!("scrape: {status}").into());
            }
            if value(&body, "confide_rounds_succeeded_total", &["kind=\"train\""]) >= 1.0 {
                return Ok(body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| "no training round succeeded within 120 s")??;
    assert!(
        !serve.is_finished(),
        "the federation had more rounds to run"
    );
    assert!(
        value(&during, "confide_connected_sites", &[]) >= 4.0,
        "{during}"
    );
    assert!(
        value(
            &during,
            "confide_stage_duration_seconds_count",
            &["stage=\"masked_input\""]
        ) >= 1.0,
        "{during}"
    );
    if let Some(said) = promtool(&during).await? {
        println!("promtool check metrics (during): {said}");
    }

    let report = tokio::time::timeout(Duration::from_secs(150), serve)
        .await
        .map_err(|_| "coordinator did not finish in time")???;
    for (i, h) in sites.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "site did not stop")??
            .map_err(|e| format!("site {i}: {e}"))?;
    }

    // After: the endpoint is still up; its content type and the counters.
    let (status, content_type, after) = scrape(maddr, "/metrics").await?;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let (status, _, _) = scrape(maddr, "/").await?;
    assert!(status.contains(" 404 "), "{status}");
    match promtool(&after).await? {
        Some(said) => println!("promtool check metrics (after): {said}"),
        None => println!("counters checked without promtool"),
    }
    endpoint.stop().await;

    let h = &report.history;
    // statistics + 4 train + evaluate, all succeeded; round 3 lost site 4.
    assert_eq!(report.completed_rounds, 4, "{h:#?}");
    assert!(h.iter().any(|r| r.dropped >= 1), "{h:#?}");
    for (kind, n) in count_by_kind(h, |r| r.success) {
        let label = format!("kind=\"{kind}\"");
        assert_eq!(
            value(&after, "confide_rounds_succeeded_total", &[&label]),
            n,
            "{kind}\n{after}"
        );
    }
    for (kind, n) in count_by_kind(h, |_| true) {
        let label = format!("kind=\"{kind}\"");
        assert_eq!(
            value(&after, "confide_rounds_started_total", &[&label]),
            n,
            "{kind}\n{after}"
        );
        assert_eq!(
            value(&after, "confide_round_duration_seconds_count", &[&label]),
            n,
            "{kind}\n{after}"
        );
    }
    let failed = h.iter().filter(|r| !r.success).count() as f64;
    assert_eq!(value(&after, "confide_rounds_failed_total", &[]), failed);
    let sum = |f: fn(&RoundRecord) -> u64| h.iter().map(f).sum::<u64>() as f64;
    let table = [
        ("confide_dropped_sites_total", sum(|r| u64::from(r.dropped))),
        (
            "confide_survivor_sites_total",
            sum(|r| u64::from(r.survivors)),
        ),
        ("confide_cohort_sites_total", sum(|r| u64::from(r.cohort))),
        ("confide_received_bytes_total", sum(|r| r.bytes_in)),
        ("confide_sent_bytes_total", sum(|r| r.bytes_out)),
        (
            "confide_completed_train_rounds",
            report.completed_rounds as f64,
        ),
        ("confide_connected_sites", 0.0),
    ];
    for (name, want) in table {
        assert_eq!(value(&after, name, &[]), want, "{name}\n{after}");
    }
    // Every survivor's seed is rebuilt in a secure round; the mask key of
    // the site that vanished after sharing it too.
    let seeds = sum(|r| if r.success { u64::from(r.survivors) } else { 0 });
    assert_eq!(
        value(&after, "confide_reconstructed_seeds_total", &[]),
        seeds
    );
    let keys = value(&after, "confide_reconstructed_mask_keys_total", &[]);
    assert!(
        keys >= 1.0 && keys <= sum(|r| u64::from(r.dropped)),
        "{keys}\n{after}"
    );
    let last = h.iter().rev().find(|r| r.success).ok_or("no success")?;
    assert_eq!(
        value(&after, "confide_last_success_round", &[]),
        last.round as f64
    );
    let acc = report.final_accuracy.ok_or("no final accuracy")?;
    assert!((value(&after, "confide_accuracy_ratio", &[]) - acc).abs() < 1e-9);
    assert_eq!(
        value(
            &after,
            "confide_checkpoint_write_duration_seconds_count",
            &[]
        ),
        h.iter().filter(|r| r.success).count() as f64
    );
    assert!(value(&after, "confide_checkpoint_size_bytes", &[]) > 0.0);
    assert_eq!(value(&after, "confide_upload_slots_in_use", &[]), 0.0);
    assert!(!after.contains("site=\""), "no per-site labels");

    // Site 0 took part in every round; its own metrics say so.
    let site0 = site_metrics[0].encode()?;
    assert_eq!(
        value(
            &site0,
            "confide_site_rounds_total",
            &["outcome=\"succeeded\""]
        ),
        h.iter().filter(|r| r.success).count() as f64,
        "{site0}"
    );
    assert!(value(&site0, "confide_site_sent_bytes_total", &[]) > 0.0);
    assert!(value(&site0, "confide_site_received_bytes_total", &[]) > 0.0);
    if let Some(said) = promtool(&site0).await? {
        println!("promtool check metrics (site): {said}");
    }
    Ok(())
}
