//! The site daemon's own Prometheus metrics (`confide-site run
//! --metrics-listen ADDR`): rounds taken part in, this site's time per
//! stage, bytes sent and received, reconnects. Recorded by the run loop from
//! what the round driver reports when a round ends; served as text on its
//! own plain-HTTP listener ([`MetricsServer`]), `GET /metrics` only.
//!
//! Labels are small enums (round kind, outcome, stage): nothing here names
//! the site or its data.

use std::fmt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confide_crypto::Stage;
use confide_proto::v1;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::ClientError;

/// A round's kind as a label value (the variant names are the values).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum KindLabel {
    /// Federated feature statistics.
    statistics,
    /// Training.
    train,
    /// Final evaluation.
    evaluate,
    /// A kind this build does not know.
    unspecified,
}

impl From<v1::RoundKind> for KindLabel {
    fn from(k: v1::RoundKind) -> Self {
        match k {
            v1::RoundKind::Statistics => KindLabel::statistics,
            v1::RoundKind::Train => KindLabel::train,
            v1::RoundKind::Evaluate => KindLabel::evaluate,
            v1::RoundKind::Unspecified => KindLabel::unspecified,
        }
    }
}

/// How a round this site took part in ended for it.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RoundOutcome {
    /// The round succeeded with this site's input in the sum.
    succeeded,
    /// The round succeeded without this site's input (it was late).
    not_included,
    /// The round failed.
    failed,
    /// This site left the round on an error.
    left,
}

/// A protocol stage as a label value.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum StageLabel {
    /// Key adverts.
    advertise_keys,
    /// Sealed shares.
    share_keys,
    /// Local training and the masked upload.
    masked_input,
    /// Signature on the survivor set.
    consistency,
    /// Unmask shares.
    unmask,
    /// The machine's end state.
    done,
}

impl From<Stage> for StageLabel {
    fn from(s: Stage) -> Self {
        match s {
            Stage::AdvertiseKeys => StageLabel::advertise_keys,
            Stage::ShareKeys => StageLabel::share_keys,
            Stage::MaskedInput => StageLabel::masked_input,
            Stage::Consistency => StageLabel::consistency,
            Stage::Unmask => StageLabel::unmask,
            Stage::Done => StageLabel::done,
        }
    }
}

/// `{kind, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabels {
    /// Round kind.
    pub kind: KindLabel,
    /// How it ended for this site.
    pub outcome: RoundOutcome,
}

/// `{stage}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Stage.
    pub stage: StageLabel,
}

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// What one round came to at this site, as the driver reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundSummary {
    /// Round kind.
    pub kind: v1::RoundKind,
    /// How it ended for this site.
    pub outcome: RoundOutcome,
    /// This site's time per acknowledged stage.
    pub stage_secs: Vec<(Stage, f64)>,
    /// Bytes received (model download).
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
}

/// From a local step to a stage timeout (training happens in masked-input).
fn stage_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// The site's metric families (atomics; cheap to record) and their registry.
pub struct SiteMetrics {
    registry: Registry,
    rounds: Family<RoundLabels, Counter>,
    stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    sent: Counter,
    received: Counter,
    reconnects: Counter,
}

impl fmt::Debug for SiteMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteMetrics").finish_non_exhaustive()
    }
}

impl Default for SiteMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SiteMetrics {
    /// Every family registered under `confide_site_`.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("confide_site");
        let m = SiteMetrics {
            registry: Registry::default(),
            rounds: Family::default(),
            stage_duration: Family::new_with_constructor(stage_histogram),
            sent: Counter::default(),
            received: Counter::default(),
            reconnects: Counter::default(),
        };
        r.register(
            "rounds",
            "Rounds this site took part in, by kind and how they ended for it",
            m.rounds.clone(),
        );
        r.register_with_unit(
            "stage_duration",
            "This site's time per stage: from the stage's input to its message being acknowledged",
            Unit::Seconds,
            m.stage_duration.clone(),
        );
        r.register_with_unit(
            "sent",
            "Payload bytes sent to the coordinator",
            Unit::Bytes,
            m.sent.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes received from the coordinator (model downloads)",
            Unit::Bytes,
            m.received.clone(),
        );
        r.register(
            "reconnects",
            "Reconnects after the connection to the coordinator was lost",
            m.reconnects.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register("build_info", "Version of confide-site", build);
        SiteMetrics { registry: r, ..m }
    }

    /// A round ended (or was left) at this site.
    pub fn round(&self, s: &RoundSummary) {
        self.rounds
            .get_or_create(&RoundLabels {
                kind: s.kind.into(),
                outcome: s.outcome,
            })
            .inc();
        for &(stage, secs) in &s.stage_secs {
            self.stage_duration
                .get_or_create(&StageLabels {
                    stage: stage.into(),
                })
                .observe(secs);
        }
        self.sent.inc_by(s.bytes_out);
        self.received.inc_by(s.bytes_in);
    }

    /// The connection was lost and is being re-established.
    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// The Prometheus text format (0.0.4).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// OpenMetrics text.
    pub fn encode_openmetrics(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `Content-Type` of the Prometheus text format.
pub const TEXT_FORMAT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running `/metrics` endpoint (axum, HTTP/1); every other path is 404.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `metrics` there until stopped.
    pub async fn bind(addr: SocketAddr, metrics: Arc<SiteMetrics>) -> Result<Self, ClientError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ClientError::Config(format!("--metrics-listen {addr}: {e}")))?;
        Self::start(listener, metrics)
    }

    /// Serves `metrics` on `listener` until stopped.
    pub fn start(listener: TcpListener, metrics: Arc<SiteMetrics>) -> Result<Self, ClientError> {
        let addr = listener
            .local_addr()
            .map_err(|e| ClientError::Config(format!("metrics listener: {e}")))?;
        let app = Router::new()
            .route("/metrics", get(scrape).fallback(not_found))
            .fallback(not_found)
            .with_state(metrics);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Ok(MetricsServer { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Stops serving: open scrapes get a second to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "metrics endpoint ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "metrics endpoint task failed"),
            Err(_) => task.abort(),
        }
    }
}

async fn scrape(State(metrics): State<Arc<SiteMetrics>>, headers: HeaderMap) -> Response {
    // Prometheus asks for OpenMetrics first; anything else gets 0.0.4 text.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (metrics.encode_openmetrics(), OPENMETRICS_FORMAT)
    } else {
        (metrics.encode(), TEXT_FORMAT)
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// One HTTP/1.0 GET (the server closes after it): the raw response.
    async fn get(addr: SocketAddr, path: &str) -> Res<String> {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut raw = String::new();
        c.read_to_string(&mut raw).await?;
        Ok(raw)
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[tokio::test]
    async fn site_metrics_encode_and_are_served() -> Res<()> {
        let m = Arc::new(SiteMetrics::new());
        m.round(&RoundSummary {
            kind: v1::RoundKind::Train,
            outcome: RoundOutcome::succeeded,
            stage_secs: vec![(Stage::AdvertiseKeys, 0.02), (Stage::MaskedInput, 1.2)],
            bytes_in: 500,
            bytes_out: 700,
        });
        m.round(&RoundSummary {
            kind: v1::RoundKind::Train,
            outcome: RoundOutcome::left,
            stage_secs: Vec::new(),
            bytes_in: 500,
            bytes_out: 0,
        });
        m.reconnect();
        let text = m.encode()?;
        for (series, value) in [
            (
                "confide_site_rounds_total{kind=\"train\",outcome=\"succeeded\"}",
                "1",
            ),
            (
                "confide_site_rounds_total{kind=\"train\",outcome=\"left\"}",
                "1",
            ),
            (
                "confide_site_stage_duration_seconds_count{stage=\"masked_input\"}",
                "1",
            ),
            (
                "confide_site_stage_duration_seconds_bucket{stage=\"advertise_keys\",le=\"0.025\"}",
                "1",
            ),
            ("confide_site_sent_bytes_total", "700"),
            ("confide_site_received_bytes_total", "1000"),
            ("confide_site_reconnects_total", "1"),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(
            text.contains("confide_site_build_info{version=\""),
            "{text}"
        );

        let server = MetricsServer::bind("127.0.0.1:0".parse()?, m.clone()).await?;
        let raw = get(server.addr(), "/metrics").await?;
        assert!(
            raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"),
            "{raw}"
        );
        let ct = format!("content-type: {}", TEXT_FORMAT.to_ascii_lowercase());
        assert!(raw.to_ascii_lowercase().contains(&ct), "{raw}");
        assert!(raw.contains("confide_site_reconnects_total 1"), "{raw}");
        let raw = get(server.addr(), "/other").await?;
        assert!(raw.contains(" 404 "), "{raw}");
        server.stop().await;
        Ok(())
    }
}
