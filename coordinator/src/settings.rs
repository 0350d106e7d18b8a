//! The coordinator's typed configuration: one TOML file, overridable by
//! `CONFIDE_*` environment variables (nested keys joined by `__`, e.g.
//! `CONFIDE_TRAINING__EPOCHS=3`) and by CLI flags, validated before any port
//! is bound.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use confide_crypto::Suite;
use confide_crypto::quant::{QuantConfig, Quantiser};
use confide_crypto::ring::Ring;
use confide_proto::model::ModelSpec;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoordinatorError;

mod checkpoints;
mod defaults;
mod ha;
mod limits;
mod metrics;
mod model;
mod names;
mod secagg;

pub use checkpoints::{CheckpointSettings, EncryptionSettings};
pub use ha::HaSettings;
pub use limits::LimitSettings;
pub use metrics::MetricsSettings;
pub use model::ModelSettings;

/// Everything the coordinator needs to run one federation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Federation / task name (also part of the config hash).
    pub federation: String,
    /// Address `confide serve` binds (the library's `serve` binds nothing).
    pub listen: String,
    /// Cipher suite: "intl" or "gm" in the file.
    #[serde(with = "names::suite")]
    pub suite: Suite,
    /// Training rounds to complete successfully.
    pub rounds: u64,
    /// Sites that must be connected before a round starts.
    pub min_sites: usize,
    /// Most sites that may join (also the quantiser's cohort bound).
    pub max_sites: usize,
    /// Fraction of connected sites sampled per round (ignored if `cohort_size` is set).
    pub cohort_fraction: f64,
    /// Fixed cohort size per round.
    pub cohort_size: Option<usize>,
    /// Secure aggregation on (default). `false` is a plaintext comparison mode.
    pub secure_aggregation: bool,
    /// Ring of training rounds: "u32" or "u64" in the file (statistics rounds
    /// always use u64).
    #[serde(with = "names::ring")]
    pub ring: Ring,
    /// Run a statistics round first for federated standardisation.
    pub statistics_round: bool,
    /// Sites evaluate the incoming global model in every training round.
    pub evaluate_every_round: bool,
    /// Run an evaluation round after the last training round.
    pub final_evaluation: bool,
    /// Give up after this many consecutive failed rounds.
    pub max_consecutive_failures: u32,
    /// Before the first round, once `min_sites` are connected, wait up to this
    /// many seconds for more sites to connect (so a federation starting
    /// together trains together from round one).
    pub join_grace_secs: f64,
    /// SecAgg+ parameters.
    pub secagg: SecAggSettings,
    /// The model.
    pub model: ModelSettings,
    /// Local training hyper-parameters sent to sites.
    pub training: TrainingSettings,
    /// Quantisation of updates.
    pub quantisation: QuantSettings,
    /// Server optimiser.
    pub optimiser: OptimiserSettings,
    /// Checkpoints.
    pub checkpoints: CheckpointSettings,
    /// Transport security.
    pub tls: TlsSettings,
    /// Limits.
    pub limits: LimitSettings,
    /// The Prometheus endpoint (off by default).
    pub metrics: MetricsSettings,
    /// Active / standby failover (off by default).
    pub ha: HaSettings,
}

/// SecAgg+ graph and threshold settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecAggSettings {
    /// Fraction of a cohort that may drop out (δ).
    pub dropout_fraction: f64,
    /// Fraction of a cohort that may collude with the coordinator (γ).
    pub collusion_fraction: f64,
    /// Security bits σ.
    pub sigma: u32,
    /// Correctness bits η.
    pub eta: u32,
    /// Explicit degree (with `t`); otherwise chosen from δ, γ. Validated like
    /// the sites validate it: `t` must reach `graph::secure_threshold`, and
    /// cohorts up to `complete_graph_up_to` must get the complete graph.
    pub k: Option<usize>,
    /// Explicit threshold (with `k`).
    pub t: Option<usize>,
    /// Fewest survivors a round accepts (default: max(t, 3), at most the cohort).
    pub min_survivors: Option<usize>,
    /// Cohorts up to this size use the complete graph (`k = n − 1`, the
    /// threshold from δ and γ); larger ones the sparse SecAgg+ graph. Sites
    /// refuse a sparse graph for cohorts up to their own
    /// `--complete-graph-up-to` (default 32), so keep this at least as large.
    pub complete_graph_up_to: usize,
    /// Leave a site out of every later cohort once it has been blamed in
    /// this many rounds (see the round records); 0 never excludes. The
    /// operator can exclude a site at once by revoking it (`confide certs revoke`).
    pub exclude_after_blamed_rounds: u32,
    /// Seconds each stage waits (training happens inside the masked-input stage).
    pub stage_timeout_secs: u32,
    /// Seconds a cohort member whose task stream closed mid-round has to
    /// come back before the round stops waiting for it (it counts as dropped
    /// from the stage on); the stage deadline stays the outer bound. A stage
    /// that waits for nobody else stops waiting for such members at once
    /// while the round's dropouts stay within [`Self::dropout_allowance`].
    pub reconnect_grace_secs: f64,
}

impl SecAggSettings {
    /// How many members of a cohort of `cohort` may drop out (⌊δ·n⌋): lost
    /// members a stage stops waiting for without the reconnect grace when
    /// everyone else has answered.
    pub fn dropout_allowance(&self, cohort: usize) -> usize {
        // The epsilon keeps 0.1 × 100 at 10 whatever the rounding.
        (self.dropout_fraction * cohort as f64 + 1e-9).floor() as usize
    }
}

/// Local training hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// Local epochs per round.
    pub epochs: u32,
    /// Minibatch size.
    pub batch_size: u32,
    /// Local SGD learning rate.
    pub learning_rate: f64,
    /// Weight decay.
    pub l2: f64,
    /// FedProx μ (0 = off).
    pub proximal_mu: f64,
    /// Fixed-point fractional bits of statistics rounds.
    pub stats_scale_bits: u32,
}

/// Quantisation of updates into the ring.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuantSettings {
    /// Per-element clip bound of a model delta.
    pub clip: f64,
    /// Largest example count a site's update is weighted with.
    pub max_weight: u64,
    /// Quanta across the clip range for a site at the weight cap
    /// (`max_weight · clip · scale`); sets the scale, and so the bits each
    /// model slot travels in. 0: the scale fills the ring, unpacked.
    /// Left out of the config hash at its default, so a config file that
    /// does not set it keeps the hash (and its checkpoints) it had before.
    #[serde(skip_serializing_if = "is_default_levels")]
    pub levels: u64,
    /// Quanta per unit; overrides `levels` when set.
    pub scale: Option<f64>,
}

fn is_default_levels(levels: &u64) -> bool {
    *levels == confide_crypto::quant::DEFAULT_LEVELS
}

/// Server optimiser (Reddi et al. 2021, "Adaptive Federated Optimization").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimiserSettings {
    /// "fedavg", "fedavgm", "fedadam", "fedyogi" or "fedadagrad" in the file
    /// (any case).
    #[serde(with = "names::optimiser_kind")]
    pub kind: OptimiserKind,
    /// Server learning rate η.
    pub server_lr: f64,
    /// Momentum (FedAvgM) or β₁ (adaptive methods).
    pub beta1: f64,
    /// β₂ (FedAdam, FedYogi).
    pub beta2: f64,
    /// Adaptivity τ.
    pub tau: f64,
}

/// Transport security.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Plaintext gRPC (local experiments only; logs a warning every start).
    pub insecure: bool,
    /// Directory laid out by `confide certs` (ca.pem, coordinator.pem/.key).
    pub certs_dir: Option<PathBuf>,
    /// Explicit CA file (overrides certs_dir).
    pub ca: Option<PathBuf>,
    /// Explicit server certificate.
    pub cert: Option<PathBuf>,
    /// Explicit server key.
    pub key: Option<PathBuf>,
    /// Site names admitted under mTLS. Empty = any site holding a certificate
    /// from the federation CA (a warning is logged at every start); list the
    /// sites explicitly in production.
    pub allowed_sites: Vec<String>,
    /// The federation CA's X.509 CRL (PEM, from `confide certs revoke` /
    /// `certs crl`), re-read whenever it changes and served to sites.
    /// Default: `<certs_dir>/crl.pem`; a missing file means no revocations yet.
    pub crl_file: Option<PathBuf>,
    /// Deprecated name of `crl_file` (it used to name a text list; the file
    /// it names is now read as a CRL). Logs a warning when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_file: Option<PathBuf>,
}

/// The server optimiser families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimiserKind {
    /// Plain step.
    FedAvg,
    /// Server momentum.
    FedAvgM,
    /// Adam.
    FedAdam,
    /// Yogi.
    FedYogi,
    /// Adagrad.
    FedAdagrad,
}

impl OptimiserKind {
    /// The canonical (lowercase) name, as settings and checkpoints write it.
    pub fn name(self) -> &'static str {
        match self {
            OptimiserKind::FedAvg => "fedavg",
            OptimiserKind::FedAvgM => "fedavgm",
            OptimiserKind::FedAdam => "fedadam",
            OptimiserKind::FedYogi => "fedyogi",
            OptimiserKind::FedAdagrad => "fedadagrad",
        }
    }
}

impl fmt::Display for OptimiserKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimiserKind {
    type Err = CoordinatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "fedavg" => OptimiserKind::FedAvg,
            "fedavgm" => OptimiserKind::FedAvgM,
            "fedadam" => OptimiserKind::FedAdam,
            "fedyogi" => OptimiserKind::FedYogi,
            "fedadagrad" => OptimiserKind::FedAdagrad,
            other => {
                return Err(CoordinatorError::Config(format!(
                    "unknown optimiser {other:?} (fedavg, fedavgm, fedadam, fedyogi, fedadagrad)"
                )));
            }
        })
    }
}

/// The training-relevant part of the settings: what the config hash covers.
/// Its JSON must stay byte-identical across releases (checkpoints are found
/// by it), so the suite and ring appear as their lowercase names, in this
/// field order, as when they were strings.
#[derive(Serialize)]
struct HashedConfig<'a> {
    federation: &'a str,
    #[serde(with = "names::suite")]
    suite: Suite,
    #[serde(with = "names::ring")]
    ring: Ring,
    secure_aggregation: bool,
    statistics_round: bool,
    model: model::HashedModel<'a>,
    training: &'a TrainingSettings,
    quantisation: &'a QuantSettings,
    optimiser: &'a OptimiserSettings,
}

impl Settings {
    /// The built-in model these settings describe (an error for
    /// `kind = "file"`, whose tensors come from [`ModelSettings::file`]).
    pub fn model_spec(&self) -> Result<ModelSpec, CoordinatorError> {
        self.model.spec()
    }

    /// Parse TOML text (no environment overrides).
    pub fn from_toml_str(s: &str) -> Result<Self, CoordinatorError> {
        Figment::from(Toml::string(s))
            .extract()
            .map_err(|e| CoordinatorError::Config(e.to_string()))
    }

    /// Load a TOML file, then apply `CONFIDE_*` environment overrides; a
    /// relative `model.path` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, CoordinatorError> {
        if !path.exists() {
            return Err(CoordinatorError::Config(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        Figment::from(Toml::file(path))
            // The `confide` CLI's own variables, not settings: the display's
            // (progress.rs), --log-json's, and the Admin commands' address;
            // and the tools .ci/run exports for the tests (the examples'
            // Python, SeaweedFS's `weed`), which coordinators they start inherit;
            // and the mask PRG's thread count (confide-crypto's `prg`).
            .merge(
                Env::prefixed("CONFIDE_")
                    .ignore(&[
                        "progress",
                        "log_json",
                        "coordinator",
                        "python",
                        "weed",
                        "prg_threads",
                    ])
                    .split("__"),
            )
            .extract()
            .map(|mut s: Settings| {
                let dir = path.parent().unwrap_or(Path::new("."));
                s.model.resolve_relative_to(dir);
                s
            })
            .map_err(|e| CoordinatorError::Config(e.to_string()))
    }

    /// SHA-256 (hex) of the canonical JSON of the training-relevant
    /// settings; for a file model it covers the file's SHA-256.
    pub fn config_hash(&self) -> String {
        self.config_hash_with(None)
    }

    /// [`config_hash`](Self::config_hash) of a file model whose `file` was
    /// just read, without reading it again.
    pub fn config_hash_for_file(&self, file: &confide_proto::model::ModelFile) -> String {
        self.config_hash_with(Some(file))
    }

    fn config_hash_with(&self, file: Option<&confide_proto::model::ModelFile>) -> String {
        let h = HashedConfig {
            federation: &self.federation,
            suite: self.suite,
            ring: self.ring,
            secure_aggregation: self.secure_aggregation,
            statistics_round: self.statistics_round,
            model: self.model.hashed(file),
            training: &self.training,
            quantisation: &self.quantisation,
            optimiser: &self.optimiser,
        };
        let json = serde_json::to_vec(&h).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }

    /// Cohort size for `connected` sites.
    pub fn cohort_for(&self, connected: usize) -> usize {
        let n = match self.cohort_size {
            Some(n) => n,
            None => (self.cohort_fraction * connected as f64).ceil() as usize,
        };
        n.clamp(self.min_sites.min(connected), connected)
    }

    /// The training quantiser: scale from `levels` (or `scale`), and the
    /// fewest bits per model slot that hold a cohort's sum.
    pub fn quantiser(&self, ring: Ring) -> Result<Quantiser, CoordinatorError> {
        let cfg = QuantConfig {
            ring,
            clip: self.quantisation.clip,
            max_weight: self.quantisation.max_weight,
            max_cohort: self.max_sites,
            scale: self.quantisation.scale,
            levels: (self.quantisation.levels > 0).then_some(self.quantisation.levels),
            bits: None,
            min_levels: confide_crypto::quant::DEFAULT_MIN_LEVELS,
        };
        Quantiser::new(&cfg).map_err(|e| CoordinatorError::Config(format!("quantisation: {e}")))
    }

    /// TLS files: (ca, cert, key).
    pub fn tls_files(&self) -> Result<(PathBuf, PathBuf, PathBuf), CoordinatorError> {
        let dir = self.tls.certs_dir.clone();
        let pick = |explicit: &Option<PathBuf>, name: &str| -> Result<PathBuf, CoordinatorError> {
            explicit.clone().or_else(|| dir.as_ref().map(|d| d.join(name))).ok_or_else(|| {
                CoordinatorError::Config(format!(
                    "TLS needs tls.certs_dir (from `confide certs init`) or tls.{}; or run with --insecure",
                    name.trim_start_matches("coordinator.")
                ))
            })
        };
        Ok((
            pick(&self.tls.ca, "ca.pem")?,
            pick(&self.tls.cert, "coordinator.pem")?,
            pick(&self.tls.key, "coordinator.key")?,
        ))
    }

    /// Check everything that can be checked before binding a port.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let bad = |m: String| Err(CoordinatorError::Config(m));
        if self.federation.trim().is_empty() {
            return bad("federation must not be empty".into());
        }
        if self.rounds == 0 {
            return bad("rounds must be at least 1".into());
        }
        if self.min_sites < 2 {
            return bad(format!(
                "min_sites must be at least 2 (secure aggregation needs two sites), got {}",
                self.min_sites
            ));
        }
        if self.secure_aggregation && self.min_sites < 3 {
            return bad(format!(
                "min_sites must be at least 3 with secure aggregation (with two sites each \
                 would learn the other's update from the sum), got {}",
                self.min_sites
            ));
        }
        if self.max_sites < self.min_sites {
            return bad(format!(
                "max_sites ({}) must be at least min_sites ({})",
                self.max_sites, self.min_sites
            ));
        }
        if self.max_sites >= u32::MAX as usize {
            return bad("max_sites is too large".into());
        }
        if !(self.cohort_fraction > 0.0 && self.cohort_fraction <= 1.0) {
            return bad(format!(
                "cohort_fraction must be in (0, 1], got {}",
                self.cohort_fraction
            ));
        }
        if let Some(n) = self.cohort_size
            && (n < 2 || n < self.min_sites || n > self.max_sites)
        {
            return bad(format!(
                "cohort_size {n} must be between min_sites ({}) and max_sites ({})",
                self.min_sites, self.max_sites
            ));
        }
        // The smallest and largest cohorts the scheduler can pick must both work.
        let smallest = self.cohort_for(self.min_sites).max(2);
        let largest = self.cohort_for(self.max_sites).max(2);
        if self.secure_aggregation {
            if let Some(m) = self.secagg.min_survivors
                && (m < 2 || m > smallest)
            {
                return bad(format!(
                    "secagg.min_survivors {m} must be between 2 and the smallest cohort size {smallest}"
                ));
            }
            // Every cohort size the scheduler can pick must have safe parameters
            // (all of them for ordinary federations, a sample for huge ones).
            let step = ((largest - smallest) / 256).max(1);
            let mut sizes: Vec<usize> = (smallest..=largest).step_by(step).collect();
            sizes.push(largest);
            for n in sizes {
                self.secagg_params(n)?;
            }
        }
        if !(self.join_grace_secs.is_finite() && (0.0..=3600.0).contains(&self.join_grace_secs)) {
            return bad("join_grace_secs must be between 0 and 3600".into());
        }
        if self.secagg.stage_timeout_secs == 0 {
            return bad("secagg.stage_timeout_secs must be at least 1".into());
        }
        let grace = self.secagg.reconnect_grace_secs;
        if !(grace.is_finite() && (0.0..=3600.0).contains(&grace)) {
            return bad(format!(
                "secagg.reconnect_grace_secs must be between 0 and 3600, got {grace}"
            ));
        }
        if self.training.epochs == 0 || self.training.batch_size == 0 {
            return bad("training.epochs and training.batch_size must be at least 1".into());
        }
        if !(self.training.learning_rate.is_finite() && self.training.learning_rate > 0.0) {
            return bad("training.learning_rate must be a positive number".into());
        }
        if self.training.stats_scale_bits > 40 {
            return bad("training.stats_scale_bits must be at most 40".into());
        }
        self.quantiser(self.ring)?;
        self.model
            .validate(self.statistics_round, self.limits.max_model_bytes)?;
        let o = &self.optimiser;
        let ok = o.server_lr.is_finite()
            && o.server_lr > 0.0
            && (0.0..1.0).contains(&o.beta1)
            && (0.0..1.0).contains(&o.beta2)
            && o.tau.is_finite()
            && o.tau > 0.0;
        if !ok {
            return bad(
                "optimiser: server_lr > 0, beta1 and beta2 in [0, 1), tau > 0 required".into(),
            );
        }
        self.limits.validate().map_err(CoordinatorError::Config)?;
        if let Some(bad_name) = self.tls.allowed_sites.iter().find(|n| {
            n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        }) {
            return bad(format!(
                "tls.allowed_sites: {bad_name:?} is not a site name"
            ));
        }
        if !self.tls.insecure {
            self.tls_files()?;
        }
        self.metrics.address(&self.listen)?;
        self.checkpoints.validate()?;
        self.ha.validate(self.checkpoints.url.is_some())?;
        Ok(())
    }

    /// The CRL file: `tls.crl_file`, else the deprecated
    /// `tls.revocation_file`, else `<certs_dir>/crl.pem`.
    pub fn crl_file(&self) -> Option<PathBuf> {
        self.tls
            .crl_file
            .clone()
            .or_else(|| self.tls.revocation_file.clone())
            .or_else(|| {
                self.tls
                    .certs_dir
                    .as_ref()
                    .map(|d| d.join(crate::certs::CRL_FILE))
            })
    }
}

#[cfg(test)]
mod tests;
