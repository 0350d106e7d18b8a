//! The SecAgg+ parameters of a cohort, as the scheduler announces them and
//! as every site's policy (`confide_crypto::protocol::SitePolicy`) checks
//! them: the collusion bound, the graph (complete for small cohorts), a
//! threshold that covers the colluders, and the minimum survivors.

use confide_crypto::graph::{self, SecAggParams};

use super::Settings;
use crate::error::CoordinatorError;

impl Settings {
    /// Colluders assumed among `n` cohort members: `⌈γ·n⌉`
    /// (`secagg.collusion_fraction`), rounded up so small cohorts never
    /// assume none. It sets the round's quorum of survivor-set signatures.
    pub fn max_colluders(&self, n: usize) -> Result<usize, CoordinatorError> {
        graph::colluders(n, self.secagg.collusion_fraction).map_err(|e| {
            CoordinatorError::Config(format!("SecAgg parameters for a cohort of {n}: {e}"))
        })
    }

    /// Degree and threshold for a cohort of `n`: the complete graph up to
    /// `secagg.complete_graph_up_to`, the sparse SecAgg+ graph above, or the
    /// explicit `secagg.k` / `secagg.t` — which must then pass the same
    /// checks the sites apply (complete graph for small cohorts, `t` at least
    /// `graph::secure_threshold` for the collusion bound).
    pub fn secagg_params(&self, n: usize) -> Result<SecAggParams, CoordinatorError> {
        let bad = |why: String| {
            CoordinatorError::Config(format!("SecAgg parameters for a cohort of {n}: {why}"))
        };
        let sa = &self.secagg;
        let complete = n <= sa.complete_graph_up_to;
        let p = match (sa.k, sa.t) {
            (Some(k), Some(t)) => {
                let k = k.min(n.saturating_sub(1));
                if complete && k + 1 != n {
                    return Err(bad(format!(
                        "secagg.k = {k} is not the complete graph (k = {}), which cohorts up to \
                         secagg.complete_graph_up_to = {} use and sites require",
                        n.saturating_sub(1),
                        sa.complete_graph_up_to
                    )));
                }
                SecAggParams { k, t: t.min(k) }
            }
            (None, None) if complete => {
                graph::choose_complete(n, sa.dropout_fraction, sa.collusion_fraction)
                    .map_err(|e| bad(e.to_string()))?
            }
            (None, None) => graph::choose(
                n,
                sa.dropout_fraction,
                sa.collusion_fraction,
                sa.sigma,
                sa.eta,
            )
            .map_err(|e| bad(e.to_string()))?,
            _ => {
                return Err(CoordinatorError::Config(
                    "secagg.k and secagg.t must be set together".into(),
                ));
            }
        };
        graph::validate(n, p).map_err(|e| bad(e.to_string()))?;
        let c = self.max_colluders(n)?;
        let need = graph::secure_threshold(p.k, c);
        if p.t < need {
            return Err(bad(format!(
                "threshold t = {} is below the secure threshold {need} for k = {} with {c} \
                 colluders (γ = {}); sites would refuse the round",
                p.t, p.k, sa.collusion_fraction
            )));
        }
        Ok(p)
    }

    /// Minimum survivors for a cohort of `n` with threshold `t`: the
    /// configured value, else `max(t, 3)` — never above the cohort.
    pub fn min_survivors(&self, n: usize, t: usize) -> usize {
        self.secagg
            .min_survivors
            .unwrap_or(t.max(3))
            .clamp(2, n.max(2))
    }
}
