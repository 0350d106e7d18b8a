//! The round scheduler, as pure functions: which kind of round comes next and
//! the [`RoundPlan`] of a round (cohort, [`RoundConfig`], vector layout) from
//! the federation's progress, the settings, a CSPRNG and `now`. No awaits, no
//! clock reads, no locks: the driver in `mod.rs` supplies all of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use confide_crypto::graph::SecAggParams;
use confide_crypto::quant::Quantiser;
use confide_crypto::ring::Ring;
use confide_crypto::{MemberId, RoundConfig};
use confide_proto::layout;
use confide_proto::v1 as pb;
use rand::{CryptoRng, Rng, RngExt};

use crate::error::CoordinatorError;
use crate::settings::Settings;

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
    /// The crypto machine's configuration (round id, ring, cohort, k/t, …).
    pub config: RoundConfig,
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
/// seed, so it must be a CSPRNG. Statistics rounds always use the u64 ring,
/// the others the quantiser's.
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
    let mut graph_seed = [0u8; 32];
    rng.fill_bytes(&mut graph_seed);
    connected.truncate(n);
    connected.sort();
    let names: BTreeMap<MemberId, String> = connected.into_iter().collect();
    let cohort: Vec<MemberId> = names.keys().copied().collect();
    let ring = match kind {
        RoundKind::Statistics => Ring::U64,
        RoundKind::Train | RoundKind::Evaluate => quant.ring(),
    };
    let (model_len, vector_len) = vector_layout(s, kind, progress.num_params);
    let (params, min_survivors) = if s.secure_aggregation {
        let p = s.secagg_params(n).map_err(|source| PlanError::Params {
            round: progress.next_round,
            cohort: n,
            source,
        })?;
        (p, s.min_survivors(n, p.t))
    } else {
        (
            SecAggParams { k: 0, t: 0 },
            s.secagg.min_survivors.unwrap_or(2).min(n),
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
        },
        model_len,
        secure: s.secure_aggregation,
        stage_timeout: Duration::from_secs(u64::from(s.secagg.stage_timeout_secs)),
        now,
    })
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

#[cfg(test)]
mod tests;
