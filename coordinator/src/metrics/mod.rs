//! The coordinator's Prometheus metrics: one [`Metrics`] per federation,
//! recorded at the edges (where a round's outcome is applied, where a stage
//! closes, where an RPC is handled) and served as text by [`endpoint`].
//!
//! Every metric is named `confide_…` with its unit in the name. Labels take
//! values from small enums only (round kind, stage, failure and refusal
//! reasons), never a site name, so the number of series stays bounded
//! however many sites join. Counters count what this process saw; the
//! last-success gauges are seeded from the checkpoint history on resume.

pub mod endpoint;
mod labels;

use std::fmt;
use std::sync::atomic::AtomicU64;

use confide_crypto::Stage;
use confide_proto::convert::DeclineReason;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::checkpoint::RoundRecord;
use crate::federation::scheduler::RoundKind;
use crate::settings::Settings;

pub use labels::{
    BuildLabels, DeclineLabel, DeclineLabels, FailureLabels, FailureReason, JoinRefusal, KindLabel,
    KindLabels, Reconstructions, RefusalLabels, StageLabel, StageLabels,
};

type F64Gauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Stages take milliseconds (small models) to the stage timeout (60 s).
fn stage_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// Whole rounds: up to five stage timeouts plus training.
fn round_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// The coordinator's metric families and the registry that encodes them.
/// Cloned handles (counters, gauges) are shared atomics: recording takes no
/// lock beyond a labelled family's read lock.
pub struct Metrics {
    registry: Registry,
    rounds_started: Family<KindLabels, Counter>,
    rounds_succeeded: Family<KindLabels, Counter>,
    rounds_failed: Family<FailureLabels, Counter>,
    round_duration: HistogramFamily<KindLabels>,
    stage_duration: HistogramFamily<StageLabels>,
    cohort_sites: Counter,
    survivor_sites: Counter,
    dropped_sites: Counter,
    last_cohort: Gauge,
    last_survivors: Gauge,
    last_dropped: Gauge,
    received: Counter,
    sent: Counter,
    seeds: Counter,
    mask_keys: Counter,
    connected_sites: Gauge,
    active: Gauge,
    join_refusals: Family<RefusalLabels, Counter>,
    connections_over_limit: Counter,
    declines: Family<DeclineLabels, Counter>,
    upload_slots_in_use: Gauge,
    checkpoint_write: Histogram,
    checkpoint_size: Gauge,
    last_success_round: Gauge,
    last_success_time: F64Gauge,
    accuracy: F64Gauge,
    loss: F64Gauge,
    completed_train_rounds: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every family registered, build info and capacity set from `s`.
    pub fn new(s: &Settings) -> Self {
        let mut r = Registry::with_prefix("confide");
        let m = Metrics {
            rounds_started: Family::default(),
            rounds_succeeded: Family::default(),
            rounds_failed: Family::default(),
            round_duration: Family::new_with_constructor(round_histogram),
            stage_duration: Family::new_with_constructor(stage_histogram),
            cohort_sites: Counter::default(),
            survivor_sites: Counter::default(),
            dropped_sites: Counter::default(),
            last_cohort: Gauge::default(),
            last_survivors: Gauge::default(),
            last_dropped: Gauge::default(),
            received: Counter::default(),
            sent: Counter::default(),
            seeds: Counter::default(),
            mask_keys: Counter::default(),
            connected_sites: Gauge::default(),
            // A coordinator without `[ha]` is always the active one.
            active: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            join_refusals: Family::default(),
            connections_over_limit: Counter::default(),
            declines: Family::default(),
            upload_slots_in_use: Gauge::default(),
            checkpoint_write: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            checkpoint_size: Gauge::default(),
            last_success_round: Gauge::default(),
            last_success_time: F64Gauge::default(),
            accuracy: F64Gauge::default(),
            loss: F64Gauge::default(),
            completed_train_rounds: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "rounds_started",
            "Rounds announced to a cohort, by kind",
            m.rounds_started.clone(),
        );
        r.register(
            "rounds_succeeded",
            "Rounds whose sum was applied, by kind",
            m.rounds_succeeded.clone(),
        );
        r.register(
            "rounds_failed",
            "Rounds that failed (model unchanged), by kind and reason",
            m.rounds_failed.clone(),
        );
        r.register_with_unit(
            "round_duration",
            "Wall time of finished rounds, by kind",
            Unit::Seconds,
            m.round_duration.clone(),
        );
        r.register_with_unit(
            "stage_duration",
            "Time from a stage's start to its close, by stage",
            Unit::Seconds,
            m.stage_duration.clone(),
        );
        r.register(
            "cohort_sites",
            "Cohort members summed over finished rounds",
            m.cohort_sites.clone(),
        );
        r.register(
            "survivor_sites",
            "Members whose input was in the sum, summed over finished rounds",
            m.survivor_sites.clone(),
        );
        r.register(
            "dropped_sites",
            "Cohort members whose input was not in the sum, summed over finished rounds",
            m.dropped_sites.clone(),
        );
        r.register(
            "last_round_cohort_sites",
            "Cohort size of the last finished round",
            m.last_cohort.clone(),
        );
        r.register(
            "last_round_survivor_sites",
            "Survivors of the last finished round",
            m.last_survivors.clone(),
        );
        r.register(
            "last_round_dropped_sites",
            "Dropouts of the last finished round",
            m.last_dropped.clone(),
        );
        r.register_with_unit(
            "received",
            "Payload bytes received from sites in finished rounds",
            Unit::Bytes,
            m.received.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes sent to sites in finished rounds (tasks and model downloads)",
            Unit::Bytes,
            m.sent.clone(),
        );
        r.register(
            "reconstructed_seeds",
            "Self-mask seeds rebuilt from shares (one per survivor of a secure round)",
            m.seeds.clone(),
        );
        r.register(
            "reconstructed_mask_keys",
            "Mask keys of dropped members rebuilt from shares",
            m.mask_keys.clone(),
        );
        r.register(
            "connected_sites",
            "Sites with an open task stream",
            m.connected_sites.clone(),
        );
        r.register(
            "active",
            "1 while this coordinator runs the federation, 0 while a standby waits for the lease",
            m.active.clone(),
        );
        r.register(
            "join_refusals",
            "Join requests refused, by reason",
            m.join_refusals.clone(),
        );
        r.register(
            "connections_closed_over_limit",
            "Connections closed because their certificate name opened more than \
             limits.max_connections_per_site (64 without a certificate)",
            m.connections_over_limit.clone(),
        );
        r.register(
            "declines",
            "Rounds a site declined (its own policy refused them), by reason code",
            m.declines.clone(),
        );
        r.register(
            "upload_slots_in_use",
            "Masked-input uploads being buffered now",
            m.upload_slots_in_use.clone(),
        );
        let capacity = Gauge::<i64>::default();
        capacity.set(to_i64(s.limits.max_concurrent_uploads as u64));
        r.register(
            "upload_slots",
            "Upload slots (limits.max_concurrent_uploads)",
            capacity,
        );
        r.register_with_unit(
            "checkpoint_write_duration",
            "Time to write and prune one checkpoint",
            Unit::Seconds,
            m.checkpoint_write.clone(),
        );
        r.register_with_unit(
            "checkpoint_size",
            "Size of the last checkpoint written",
            Unit::Bytes,
            m.checkpoint_size.clone(),
        );
        r.register(
            "last_success_round",
            "Id of the last round that succeeded",
            m.last_success_round.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "Unix time the last successful round finished (0: none in this process)",
            Unit::Seconds,
            m.last_success_time.clone(),
        );
        r.register(
            "accuracy_ratio",
            "Held-out accuracy of the global model, from the last round that evaluated it",
            m.accuracy.clone(),
        );
        r.register(
            "loss",
            "Mean held-out loss of the global model, from the last round that evaluated it",
            m.loss.clone(),
        );
        r.register(
            "completed_train_rounds",
            "Training rounds completed, resumed checkpoints included",
            m.completed_train_rounds.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                suite: s.suite.name().into(),
                ring: s.ring.to_string(),
                secure_aggregation: s.secure_aggregation.to_string(),
            })
            .set(1);
        r.register("build_info", "Version and federation settings", build);
        // Series of every kind exist from the start, so `increase()` sees
        // the first round of each too.
        for kind in [KindLabel::statistics, KindLabel::train, KindLabel::evaluate] {
            m.rounds_started
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
            m.rounds_succeeded
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
        for reason in DeclineReason::ALL {
            m.declines
                .get_or_create(&DeclineLabels {
                    reason: reason.into(),
                })
                .inc_by(0);
        }
        Metrics { registry: r, ..m }
    }

    /// The registry in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode_openmetrics(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// A round was announced to its cohort.
    pub fn round_started(&self, kind: RoundKind) {
        self.rounds_started
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// A round's record is final: count it (as the round table does) and
    /// keep its numbers. `failure` is `None` exactly when `rec.success`.
    pub fn round_recorded(
        &self,
        kind: RoundKind,
        rec: &RoundRecord,
        failure: Option<FailureReason>,
        rebuilt: Reconstructions,
    ) {
        let kind = KindLabel::from(kind);
        match failure {
            None => {
                self.rounds_succeeded
                    .get_or_create(&KindLabels { kind })
                    .inc();
                self.last_success_round.set(to_i64(rec.round));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default();
                self.last_success_time.set(now);
            }
            Some(reason) => {
                self.rounds_failed
                    .get_or_create(&FailureLabels { kind, reason })
                    .inc();
            }
        }
        self.round_duration
            .get_or_create(&KindLabels { kind })
            .observe(rec.duration_secs);
        self.cohort_sites.inc_by(u64::from(rec.cohort));
        self.survivor_sites.inc_by(u64::from(rec.survivors));
        self.dropped_sites.inc_by(u64::from(rec.dropped));
        self.last_cohort.set(i64::from(rec.cohort));
        self.last_survivors.set(i64::from(rec.survivors));
        self.last_dropped.set(i64::from(rec.dropped));
        self.received.inc_by(rec.bytes_in);
        self.sent.inc_by(rec.bytes_out);
        self.seeds.inc_by(rebuilt.seeds);
        self.mask_keys.inc_by(rebuilt.mask_keys);
        if rec.success {
            self.evaluated(rec);
        }
    }

    /// Accuracy and loss of a successful round that evaluated the model
    /// (also used to seed the gauges from a resumed history).
    pub fn evaluated(&self, rec: &RoundRecord) {
        if let Some(a) = rec.accuracy {
            self.accuracy.set(a);
        }
        if let Some(l) = rec.loss {
            self.loss.set(l);
        }
    }

    /// The gauges a resumed federation starts from: its history's last
    /// success and evaluation, and its completed training rounds.
    pub fn resumed(&self, history: &[RoundRecord], completed: u64) {
        if let Some(r) = history.iter().rev().find(|r| r.success) {
            self.last_success_round.set(to_i64(r.round));
        }
        if let Some(r) = history
            .iter()
            .rev()
            .find(|r| r.success && r.accuracy.is_some())
        {
            self.evaluated(r);
        }
        self.set_completed_train_rounds(completed);
    }

    /// Training rounds completed so far.
    pub fn set_completed_train_rounds(&self, n: u64) {
        self.completed_train_rounds.set(to_i64(n));
    }

    /// A stage closed after `secs`.
    pub fn stage_closed(&self, stage: Stage, secs: f64) {
        self.stage_duration
            .get_or_create(&StageLabels {
                stage: stage.into(),
            })
            .observe(secs);
    }

    /// Sites with an open task stream now.
    pub fn set_connected_sites(&self, n: usize) {
        self.connected_sites.set(to_i64(n as u64));
    }

    /// This coordinator became active (or a standby).
    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// A Join was refused.
    pub fn join_refused(&self, reason: JoinRefusal) {
        self.join_refusals
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// A connection was closed: its identity opened one over its limit.
    pub fn connection_over_limit(&self) {
        self.connections_over_limit.inc();
    }

    /// A cohort member declined its round for `reason`.
    pub fn declined(&self, reason: DeclineReason) {
        self.declines
            .get_or_create(&DeclineLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The upload-slot gauge, shared with the slots themselves.
    pub fn upload_slots_in_use(&self) -> Gauge {
        self.upload_slots_in_use.clone()
    }

    /// A checkpoint of `bytes` was written (and pruned) in `secs`.
    pub fn checkpoint_written(&self, secs: f64, bytes: u64) {
        self.checkpoint_write.observe(secs);
        self.checkpoint_size.set(to_i64(bytes));
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
