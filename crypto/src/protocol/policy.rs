//! What a site requires of a round, whatever the coordinator announces.

use super::RoundConfig;
use crate::error::ProtocolError;
use crate::graph;

/// A site's own floors on a round's parameters. The coordinator proposes a
/// [`RoundConfig`]; a site whose policy it breaks refuses the round with
/// [`ProtocolError::Policy`] before creating any key, and enforces
/// `min_survivors` again when the survivor set is announced.
#[derive(Clone, Debug, PartialEq)]
pub struct SitePolicy {
    /// Fewest cohort members.
    pub min_cohort: usize,
    /// Fewest survivors whose inputs may be summed (at least 3: with two, each
    /// learns the other's input from the sum).
    pub min_survivors: usize,
    /// Fraction of the cohort this site assumes may collude with the
    /// coordinator; the round's collusion bound and threshold must cover
    /// `⌈γ·n⌉` colluders.
    pub collusion_fraction: f64,
    /// Cohorts up to this size must use the complete graph (`k = n − 1`),
    /// where every pair of sites cross-checks and no graph seed matters.
    pub complete_graph_up_to: usize,
}

impl Default for SitePolicy {
    fn default() -> Self {
        SitePolicy {
            min_cohort: 3,
            min_survivors: 3,
            collusion_fraction: 0.1,
            complete_graph_up_to: 32,
        }
    }
}

impl SitePolicy {
    /// Refuse `cfg` if it breaks this policy.
    pub fn check(&self, cfg: &RoundConfig) -> Result<(), ProtocolError> {
        let n = cfg.cohort.len();
        let refuse = |why: String| Err(ProtocolError::Policy(why));
        if self.min_survivors < 3 {
            return refuse(format!(
                "the site's own minimum survivors is {}; it must be at least 3",
                self.min_survivors
            ));
        }
        if n < self.min_cohort.max(self.min_survivors) {
            return refuse(format!(
                "cohort of {n}, this site requires at least {}",
                self.min_cohort.max(self.min_survivors)
            ));
        }
        let c = graph::colluders(n, self.collusion_fraction)
            .map_err(|e| ProtocolError::Policy(e.to_string()))?;
        if cfg.max_colluders < c {
            return refuse(format!(
                "round assumes at most {} colluders; this site assumes {c} of {n}",
                cfg.max_colluders
            ));
        }
        let k = cfg.params.k;
        if n <= self.complete_graph_up_to && k + 1 != n {
            return refuse(format!(
                "cohort of {n} must use the complete graph (k = {}), round has k = {k}",
                n - 1
            ));
        }
        let t_min = graph::secure_threshold(k, cfg.max_colluders);
        if cfg.params.t < t_min {
            return refuse(format!(
                "threshold t = {} with k = {k} and {} colluders; at least {t_min} required",
                cfg.params.t, cfg.max_colluders
            ));
        }
        Ok(())
    }
}
