//! The round scheduler, as pure functions: which kind of round comes next,
//! the [`RoundPlan`] of a round (cohort, [`RoundConfig`], vector layout,
//! attempt nonce) from the federation's progress, the settings, a CSPRNG and
//! `now`, and its announcement ([`announce`]: the `RoundStart` every member
//! gets, whose hash becomes the round's context). No awaits, no clock reads,
//! no locks: the driver in `mod.rs` supplies all of them. A re-run on a
//! model whose survivor set sites signed gets exactly that cohort
//! ([`plan_replay_round`], from the sites' declines in [`ReplayClaims`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use confide_crypto::graph::{self, SecAggParams};
use confide_crypto::quant::Quantiser;
use confide_crypto::ring::Ring;
use confide_crypto::{MemberId, RoundConfig};
use confide_proto::v1 as pb;
use confide_proto::{context, convert, layout};
use rand::{CryptoRng, Rng, RngExt};

use crate::checkpoint::Preprocess;
use crate::error::CoordinatorError;
use crate::settings::Settings;
pub use replay::{ClaimError, MIN_REPLAY_COHORT, ReplayClaims, members as replay_members};

/// Round kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKind {
    /// Train and submit a delta.
    Train,
    /// Federated standardisation statistics.
    Statistics,
    /// Evaluate the global model.
    Evaluate,
}

impl RoundKind {
    /// The name in round records.
    pub fn name(self) -> &'static str {
        match self {
            RoundKind::Train => "train",
            RoundKind::Statistics => "statistics",
            RoundKind::Evaluate => "evaluate",
        }
    }

    /// The wire enum.
    pub fn proto(self) -> pb::RoundKind {
        match self {
            RoundKind::Train => pb::RoundKind::Train,
            RoundKind::Statistics => pb::RoundKind::Statistics,
            RoundKind::Evaluate => pb::RoundKind::Evaluate,
        }
    }
}

/// What the scheduler needs to know of the federation's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Id the next round gets.
    pub next_round: u64,
    /// Training rounds completed.
    pub completed: u64,
    /// Whether the feature statistics are known.
    pub preprocessed: bool,
    /// Whether the final evaluation is done (or given up).
    pub final_done: bool,
    /// Parameters of the global model.
    pub num_params: usize,
}

/// The next kind of round, or `None` when the federation is done:
/// statistics first (if configured and not yet known), then training until
/// `rounds` succeeded, then one final evaluation (if configured).
pub fn next_kind(s: &Settings, p: &Progress) -> Option<RoundKind> {
    if s.statistics_round && !p.preprocessed {
        Some(RoundKind::Statistics)
    } else if p.completed < s.rounds {
        Some(RoundKind::Train)
    } else if s.final_evaluation && !p.final_done {
        Some(RoundKind::Evaluate)
    } else {
        None
    }
}

/// Why no round can be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Fewer connected sites than `min_sites`.
    #[error("{connected} sites connected, min_sites is {min_sites}")]
    TooFewSites {
        /// Sites connected.
        connected: usize,
        /// The setting.
        min_sites: usize,
    },
    /// No safe SecAgg+ parameters for the cohort.
    #[error("{source}")]
    Params {
        /// The round that could not start.
        round: u64,
        /// The cohort size.
        cohort: usize,
        /// Why.
        #[source]
        source: CoordinatorError,
    },
}

/// One planned round: everything the driver needs to start it.
#[derive(Clone, Debug)]
pub struct RoundPlan {
    /// The kind.
    pub kind: RoundKind,
    /// Cohort members and their site names, by member id.
    pub names: BTreeMap<MemberId, String>,
    /// The crypto machine's configuration (round id, ring, cohort, k/t, …);
    /// its `context` is set by [`announce`].
    pub config: RoundConfig,
    /// Fresh random bytes of this attempt, announced and bound into the
    /// context: a retried round is a new attempt with a new nonce.
    pub attempt: [u8; 32],
    /// Model parameters in the vector (0 when it carries none): the
    /// quantiser's decode length.
    pub model_len: usize,
    /// Secure aggregation (else plaintext comparison mode).
    pub secure: bool,
    /// Deadline of each secure stage.
    pub stage_timeout: Duration,
    /// When the round was planned (its start).
    pub now: Instant,
}

impl RoundPlan {
    /// When a plaintext round closes: the three secure stages' budget.
    pub fn plain_deadline(&self) -> Instant {
        self.now + 3 * self.stage_timeout
    }
}

/// Plan a round of `kind` over the `connected` sites (member id, name).
///
/// The cohort is a uniform sample of `Settings::cohort_for` sites (partial
/// Fisher–Yates on `rng`), listed by member id; `rng` also draws the graph
/// seed and the attempt nonce, so it must be a CSPRNG. Statistics rounds
/// always use the u64 ring, the others the quantiser's. Secure rounds use
/// the complete graph up to `secagg.complete_graph_up_to` members, assume
/// `⌈γ·n⌉` colluders and default to `max(t, 3)` minimum survivors.
#[allow(clippy::too_many_arguments)]
pub fn plan_round<G: Rng + CryptoRng + ?Sized>(
    s: &Settings,
    quant: &Quantiser,
    kind: RoundKind,
    progress: &Progress,
    mut connected: Vec<(MemberId, String)>,
    rng: &mut G,
    now: Instant,
) -> Result<RoundPlan, PlanError> {
    if connected.len() < s.min_sites {
        return Err(PlanError::TooFewSites {
            connected: connected.len(),
            min_sites: s.min_sites,
        });
    }
    let n = s.cohort_for(connected.len());
    for i in 0..n.min(connected.len()) {
        let j = rng.random_range(i..connected.len());
        connected.swap(i, j);
    }
    connected.truncate(n);
    connected.sort();
    build(s, quant, kind, progress, connected, false, rng, now)
}

/// Plan the training round that re-runs a model whose survivor set `S`
/// sites signed: the cohort is exactly `members` (the connected sites of
/// `S`, [`replay_members`]), over the complete graph (`k = |S| − 1`, which
/// the sites require of a replay), whatever the cohort sampling and the
/// sparse-graph bound say; `min_sites` does not apply (no other cohort can
/// advance this model). The threshold is the configured one when it is
/// for the complete graph, else chosen for it, and checked against the
/// collusion bound like any other.
pub fn plan_replay_round<G: Rng + CryptoRng + ?Sized>(
    s: &Settings,
    quant: &Quantiser,
    progress: &Progress,
    mut members: Vec<(MemberId, String)>,
    rng: &mut G,
    now: Instant,
) -> Result<RoundPlan, PlanError> {
    members.sort();
    build(
        s,
        quant,
        RoundKind::Train,
        progress,
        members,
        true,
        rng,
        now,
    )
}

/// SecAgg parameters of the complete graph over `n` members.
fn complete_params(s: &Settings, n: usize) -> Result<SecAggParams, CoordinatorError> {
    let bad = |why: String| {
        CoordinatorError::Config(format!(
            "SecAgg parameters for a replay cohort of {n} (complete graph): {why}"
        ))
    };
    let p = match s.secagg_params(n) {
        Ok(p) if p.k + 1 == n => p,
        _ => graph::choose_complete(n, s.secagg.dropout_fraction, s.secagg.collusion_fraction)
            .map_err(|e| bad(e.to_string()))?,
    };
    graph::validate(n, p).map_err(|e| bad(e.to_string()))?;
    let need = graph::secure_threshold(p.k, s.max_colluders(n)?);
    if p.t < need {
        return Err(bad(format!(
            "threshold t = {} is below the secure threshold {need}",
            p.t
        )));
    }
    Ok(p)
}

/// The plan over exactly `cohort` (sorted by member id); `complete`: the
/// complete graph whatever the settings say (a replay).
#[allow(clippy::too_many_arguments)]
fn build<G: Rng + CryptoRng + ?Sized>(
    s: &Settings,
    quant: &Quantiser,
    kind: RoundKind,
    progress: &Progress,
    cohort: Vec<(MemberId, String)>,
    complete: bool,
    rng: &mut G,
    now: Instant,
) -> Result<RoundPlan, PlanError> {
    let n = cohort.len();
    let mut graph_seed = [0u8; 32];
    rng.fill_bytes(&mut graph_seed);
    let mut attempt = [0u8; 32];
    rng.fill_bytes(&mut attempt);
    let names: BTreeMap<MemberId, String> = cohort.into_iter().collect();
    let cohort: Vec<MemberId> = names.keys().copied().collect();
    let ring = match kind {
        RoundKind::Statistics => Ring::U64,
        RoundKind::Train | RoundKind::Evaluate => quant.ring(),
    };
    let (model_len, vector_len) = vector_layout(s, kind, progress.num_params);
    let (params, min_survivors, max_colluders) = if s.secure_aggregation {
        let failed = |source| PlanError::Params {
            round: progress.next_round,
            cohort: n,
            source,
        };
        let p = if complete {
            complete_params(s, n)
        } else {
            s.secagg_params(n)
        }
        .map_err(failed)?;
        let c = s.max_colluders(n).map_err(failed)?;
        (p, s.min_survivors(n, p.t), c)
    } else {
        (
            SecAggParams { k: 0, t: 0 },
            s.secagg.min_survivors.unwrap_or(2).min(n),
            0,
        )
    };
    Ok(RoundPlan {
        kind,
        names,
        config: RoundConfig {
            round: progress.next_round,
            suite: s.suite,
            ring,
            cohort,
            params,
            graph_seed,
            vector_len,
            min_survivors,
            max_colluders,
            context: [0; 32],
        },
        attempt,
        model_len,
        secure: s.secure_aggregation,
        stage_timeout: Duration::from_secs(u64::from(s.secagg.stage_timeout_secs)),
        now,
    })
}

/// What an announcement binds beside the plan: the model sites download, the
/// feature statistics, and the federation's CA.
#[derive(Clone, Copy, Debug)]
pub struct Announced<'a> {
    /// Bytes of the model file `DownloadModel` serves this round.
    pub model_len: u64,
    /// Its SHA-256.
    pub model_sha256: [u8; 32],
    /// The federated standardisation, once known.
    pub preprocess: Option<&'a Preprocess>,
    /// SHA-256 of the federation CA's certificate DER
    /// ([`context::NO_CA`] without TLS).
    pub ca_fingerprint: &'a [u8; 32],
}

/// The `RoundStart` of `plan` (with `member` 0, filled in per recipient),
/// and `plan.config.context` set to its context ([`context::round_context`]):
/// exactly what each site derives from the announcement it receives.
pub fn announce(
    s: &Settings,
    quant: &Quantiser,
    plan: &mut RoundPlan,
    a: &Announced<'_>,
) -> pb::RoundStart {
    let start = pb::RoundStart {
        kind: plan.kind.proto() as i32,
        quantisation: Some(pb::Quantisation {
            clip: quant.clip(),
            scale: quant.scale(),
            max_weight: quant.max_weight(),
            max_cohort: u32::try_from(quant.max_cohort()).unwrap_or(u32::MAX),
            bits: quant.bits(),
        }),
        training: Some(training_config(s)),
        model_bytes: match plan.kind {
            RoundKind::Statistics => 0,
            RoundKind::Train | RoundKind::Evaluate => a.model_len,
        },
        evaluate: match plan.kind {
            RoundKind::Train => s.evaluate_every_round,
            RoundKind::Evaluate => true,
            RoundKind::Statistics => false,
        },
        feature_mean: a.preprocess.map(|p| p.mean.clone()).unwrap_or_default(),
        feature_std: a.preprocess.map(|p| p.std.clone()).unwrap_or_default(),
        stage_timeout_secs: s.secagg.stage_timeout_secs,
        plaintext: !plan.secure,
        attempt: plan.attempt.to_vec(),
        model_sha256: a.model_sha256.to_vec(),
        ..convert::round_start(&plan.config, 0)
    };
    plan.config.context = context::round_context(s.suite, &s.federation, a.ca_fingerprint, &start);
    start
}

/// The training settings sites receive.
fn training_config(s: &Settings) -> pb::TrainingConfig {
    pb::TrainingConfig {
        model: s.model.kind.to_string(),
        hidden: s.model.hidden.clone(),
        features: s.model.features,
        classes: s.model.classes,
        epochs: s.training.epochs,
        batch_size: s.training.batch_size,
        learning_rate: s.training.learning_rate,
        l2: s.training.l2,
        proximal_mu: s.training.proximal_mu,
        stats_scale_bits: s.training.stats_scale_bits,
    }
}

/// (model parameters, vector length) of a round, in the layout the sites
/// encode (`confide_proto::layout`).
fn vector_layout(s: &Settings, kind: RoundKind, num_params: usize) -> (usize, usize) {
    match kind {
        RoundKind::Train => (num_params, layout::train_len(num_params)),
        RoundKind::Evaluate => (0, layout::EVAL_LEN),
        RoundKind::Statistics => (0, layout::statistics_len(s.model.features as usize)),
    }
}

mod replay;
#[cfg(test)]
mod tests;
