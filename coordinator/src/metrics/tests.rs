use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::{MetricsServer, OPENMETRICS_FORMAT, TEXT_FORMAT};
use super::*;
use crate::error::CoordinatorError;
use crate::federation::outcome::OutcomeError;
use confide_crypto::ProtocolError;
use confide_crypto::protocol::AnyRoundResult;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn settings() -> Settings {
    let mut s = Settings::default();
    s.tls.insecure = true;
    s
}

fn record(round: u64, success: bool) -> RoundRecord {
    RoundRecord {
        round,
        kind: "train".into(),
        success,
        cohort: 5,
        survivors: 4,
        dropped: 1,
        accuracy: success.then_some(0.93),
        loss: success.then_some(0.21),
        duration_secs: 1.5,
        bytes_in: 1000,
        bytes_out: 3000,
        ..Default::default()
    }
}

/// The sample line `name{labels} value` of the text, if any.
fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

#[test]
fn encoding_names_every_family_with_units_and_bounded_labels() -> Res<()> {
    let m = Metrics::new(&settings());
    m.round_started(RoundKind::Train);
    m.round_started(RoundKind::Train);
    let rebuilt = Reconstructions {
        seeds: 4,
        mask_keys: 1,
    };
    m.round_recorded(RoundKind::Train, &record(2, true), None, rebuilt);
    m.round_recorded(
        RoundKind::Train,
        &record(3, false),
        Some(FailureReason::too_few_survivors),
        Reconstructions::default(),
    );
    m.stage_closed(Stage::MaskedInput, 0.3);
    m.join_refused(JoinRefusal::join_rate_limit);
    m.declined(DeclineReason::TrainingBounds);
    m.declined(DeclineReason::TrainingBounds);
    m.checkpoint_written(0.02, 4096);
    m.set_connected_sites(3);
    let slots = m.upload_slots_in_use();
    slots.inc();
    let text = m.encode()?;
    let expect = [
        ("confide_rounds_started_total{kind=\"train\"}", "2"),
        ("confide_rounds_succeeded_total{kind=\"train\"}", "1"),
        (
            "confide_rounds_failed_total{kind=\"train\",reason=\"too_few_survivors\"}",
            "1",
        ),
        ("confide_round_duration_seconds_count{kind=\"train\"}", "2"),
        (
            "confide_stage_duration_seconds_bucket{stage=\"masked_input\",le=\"0.5\"}",
            "1",
        ),
        (
            "confide_stage_duration_seconds_bucket{stage=\"masked_input\",le=\"0.25\"}",
            "0",
        ),
        ("confide_cohort_sites_total", "10"),
        ("confide_survivor_sites_total", "8"),
        ("confide_dropped_sites_total", "2"),
        ("confide_last_round_dropped_sites", "1"),
        ("confide_received_bytes_total", "2000"),
        ("confide_sent_bytes_total", "6000"),
        ("confide_reconstructed_seeds_total", "4"),
        ("confide_reconstructed_mask_keys_total", "1"),
        ("confide_connected_sites", "3"),
        (
            "confide_join_refusals_total{reason=\"join_rate_limit\"}",
            "1",
        ),
        ("confide_declines_total{reason=\"training_bounds\"}", "2"),
        // Every reason's series exists from the start.
        ("confide_declines_total{reason=\"replay_refused\"}", "0"),
        ("confide_upload_slots_in_use", "1"),
        ("confide_upload_slots", "8"),
        ("confide_checkpoint_write_duration_seconds_count", "1"),
        ("confide_checkpoint_size_bytes", "4096"),
        ("confide_last_success_round", "2"),
        ("confide_accuracy_ratio", "0.93"),
        ("confide_loss", "0.21"),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE confide_rounds_started_total counter")
            && text.contains("# TYPE confide_stage_duration_seconds histogram")
            && text.contains("# TYPE confide_connected_sites gauge"),
        "{text}"
    );
    let build = format!(
        "confide_build_info{{version=\"{}\",suite=\"intl\",ring=\"u32\",secure_aggregation=\"true\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == build), "{text}");
    // A recorded timestamp, not the initial 0.
    let t: f64 = sample(&text, "confide_last_success_timestamp_seconds")
        .ok_or("timestamp")?
        .parse()?;
    assert!(t > 1.6e9, "{t}");
    // No label ever names a site.
    assert!(!text.contains("site=\""), "{text}");
    let om = m.encode_openmetrics()?;
    assert!(om.ends_with("# EOF\n"), "{om}");
    Ok(())
}

#[test]
fn failures_are_classed_from_their_typed_errors() {
    let few = ProtocolError::TooFewSurvivors {
        stage: Stage::MaskedInput,
        have: 2,
        need: 3,
    };
    assert_eq!(
        FailureReason::of_protocol(&few),
        FailureReason::too_few_survivors
    );
    let aborted = ProtocolError::Aborted {
        reason: "shutdown".into(),
    };
    assert_eq!(FailureReason::of_protocol(&aborted), FailureReason::aborted);
    let rebuild = ProtocolError::Reconstruction {
        member: 1,
        what: "mask key",
        have: 1,
        need: 2,
    };
    assert_eq!(
        FailureReason::of_protocol(&rebuild),
        FailureReason::reconstruction
    );
    assert_eq!(
        FailureReason::of_protocol(&ProtocolError::Inconsistent("x".into())),
        FailureReason::inconsistent
    );
    assert_eq!(
        FailureReason::of_outcome(&OutcomeError::NoRows),
        FailureReason::outcome
    );
}

#[test]
fn reconstructions_split_into_seeds_and_mask_keys() {
    let sum = |survivors: usize, dropped: usize, reconstructions: usize| AnyRoundResult {
        sum: confide_crypto::protocol::RingVec::U32(Vec::new()),
        survivors: (1..=survivors as u32).collect(),
        dropped: (100..100 + dropped as u32).collect(),
        reconstructions,
    };
    // Secure: every survivor's seed and every dropped member's key.
    assert_eq!(
        Reconstructions::of(&sum(4, 1, 5)),
        Reconstructions {
            seeds: 4,
            mask_keys: 1
        }
    );
    // Plaintext: nothing rebuilt, whoever dropped.
    assert_eq!(
        Reconstructions::of(&sum(3, 1, 0)),
        Reconstructions::default()
    );
}

#[test]
fn resumed_history_seeds_the_last_success_gauges() -> Res<()> {
    let m = Metrics::new(&settings());
    let mut evaluated = record(4, true);
    evaluated.kind = "evaluate".into();
    m.resumed(&[record(3, true), evaluated, record(5, false)], 3);
    let text = m.encode()?;
    assert_eq!(sample(&text, "confide_last_success_round"), Some("4"));
    assert_eq!(sample(&text, "confide_completed_train_rounds"), Some("3"));
    assert_eq!(sample(&text, "confide_accuracy_ratio"), Some("0.93"));
    // Counters count this process only.
    assert_eq!(sample(&text, "confide_cohort_sites_total"), Some("0"));
    Ok(())
}

#[test]
fn listen_address_is_validated() {
    let mut s = settings();
    s.metrics.listen = Some("127.0.0.1:9464".into());
    assert!(s.validate().is_ok());
    s.metrics.listen = Some("localhost".into());
    assert!(
        matches!(s.validate(), Err(CoordinatorError::Config(m)) if m.contains("metrics.listen"))
    );
    s.listen = "127.0.0.1:9464".into();
    s.metrics.listen = Some("127.0.0.1:9464".into());
    assert!(s.validate().is_err(), "same port as gRPC");
    s.metrics.listen = Some("127.0.0.1:0".into());
    assert!(s.validate().is_ok());
}

#[test]
fn metrics_listen_reads_from_toml() -> Result<(), CoordinatorError> {
    let s = Settings::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9464\"\n")?;
    assert_eq!(s.metrics.listen.as_deref(), Some("0.0.0.0:9464"));
    assert_eq!(Settings::from_toml_str("")?.metrics.listen, None);
    assert!(Settings::from_toml_str("[metrics]\nport = 1\n").is_err());
    // Off in the annotated example, on in the compose deployment.
    let example = Settings::from_toml_str(include_str!("../../federation.example.toml"))?;
    assert_eq!(example.metrics.listen, None);
    let compose = Settings::from_toml_str(include_str!("../../../deploy/federation.toml"))?;
    assert_eq!(compose.metrics.listen.as_deref(), Some("0.0.0.0:9464"));
    Ok(())
}

/// One HTTP/1.0 exchange (the server closes after it): (status line,
/// headers, body).
async fn get(addr: std::net::SocketAddr, request: &str) -> Res<(String, String, String)> {
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    c.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    ))
}

#[tokio::test]
async fn endpoint_serves_get_metrics_and_nothing_else() -> Res<()> {
    let m = Arc::new(Metrics::new(&settings()));
    m.round_started(RoundKind::Statistics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = MetricsServer::start(listener, m.clone())?;
    let addr = server.addr();
    assert_eq!(server.url(), format!("http://{addr}/metrics"));

    let (status, headers, body) = get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await?;
    assert!(status.contains(" 200 "), "{status}");
    let ct = format!("content-type: {}", TEXT_FORMAT.to_ascii_lowercase());
    assert!(headers.contains(&ct), "{headers}");
    assert!(
        body.contains("confide_rounds_started_total{kind=\"statistics\"} 1"),
        "{body}"
    );

    let om = "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n";
    let (status, headers, body) = get(addr, om).await?;
    assert!(status.contains(" 200 "), "{status}");
    let ct = format!("content-type: {}", OPENMETRICS_FORMAT.to_ascii_lowercase());
    assert!(headers.contains(&ct), "{headers}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    for req in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET /metrics/x HTTP/1.0\r\n\r\n",
        "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (status, _, _) = get(addr, req).await?;
        assert!(status.contains(" 404 "), "{req:?}: {status}");
    }
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped endpoint still accepts"
    );
    Ok(())
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() -> Res<()> {
    let m = Metrics::new(&settings());
    // Labelled families appear once they have a series.
    m.round_recorded(
        RoundKind::Train,
        &record(1, false),
        Some(FailureReason::other),
        Reconstructions::default(),
    );
    m.stage_closed(Stage::Unmask, 0.1);
    m.join_refused(JoinRefusal::other);
    let text = m.encode()?;
    let dashboard = include_str!("../../../deploy/grafana/confide.json");
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("confide_") && *w != "confide_federation")
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{name} is not exported:\n{text}"
        );
    }
    Ok(())
}
