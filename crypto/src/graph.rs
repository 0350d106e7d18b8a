//! SecAgg+ neighbour graph and the choice of its degree `k` and Shamir
//! threshold `t`.
//!
//! # Graph
//!
//! [`NeighbourGraph::harary`] builds a random k-regular Harary graph over
//! cohort positions `0..n`: positions are shuffled with ChaCha20 seeded by the
//! round's public 32-byte seed (Fisher–Yates from the last index down, index
//! `j ∈ [0, i]` drawn by rejection sampling of `next_u64`, see `uniform`), laid
//! on a cycle in shuffled order, and each is joined to its `⌊k/2⌋` nearest on
//! either side; for odd `k` (then `n` must be even) also to the node opposite.
//! Every party derives the same graph from the same seed. `k = n − 1` is the
//! complete graph, i.e. classic SecAgg. Because the shuffle is uniform, the
//! neighbour set of any site is a uniformly random `k`-subset of the others,
//! and the set of cycle positions held by any fixed group of sites is a
//! uniformly random subset — the facts the analysis below relies on.
//!
//! **The seed is the coordinator's choice**, so nothing that matters for
//! privacy may depend on it being random: a coordinator that grinds the seed
//! after seeing the cohort can place its colluders around a victim. The
//! threshold therefore covers the worst case (every colluder a neighbour of
//! the victim, [`secure_threshold`]) for sparse graphs too. What still
//! assumes a random placement is liveness only: the dropout bound and the
//! connectivity bound below size `k` so that honest rounds succeed; a ground
//! seed can make a round fail, which the coordinator can cause anyway.
//!
//! # Choosing `k` and `t` ([`choose`])
//!
//! In SecAgg+ every site Shamir-shares two secrets among its `k` neighbours
//! with threshold `t`: its self-mask seed (revealed if it survives) and its
//! pairwise-mask key (revealed if it drops). A coordinator that may lie about
//! who dropped asks honest neighbours for one kind of share each, so against
//! `c` colluding neighbours it must be impossible to get `t` of both kinds:
//! `2t > k + c`. Reconstruction after `d` neighbours drop needs `t ≤ k − d`.
//! A solution exists iff `k − d > (k + c)/2`, i.e. `k > c + 2d`; with
//! `c ≈ γk` and `d ≈ δk` this is possible only when `γ + 2δ < 1`, which
//! [`choose`] checks first.
//!
//! With `C = ⌈γn⌉` colluding and `D = ⌊δn⌋` dropped sites (colluders are
//! counted up, so small cohorts never assume zero; `δn` within 1e-9 below an
//! integer rounds up, against float error):
//!
//! * `k = n − 1` (complete graph): `c = C`, `d = D` exactly, worst case, and
//!   no connectivity condition is needed.
//! * `2 ≤ k < n − 1`: `c = min(C, k)`, the worst case, whatever the seed
//!   (see above). A site's neighbours are a random `k`-subset of the `n − 1`
//!   others, so with dropouts independent of the seed its dropped-neighbour
//!   count is hypergeometric with success fraction `p_d = D/(n−1)`. We bound
//!   it by the binomial `Bin(k, p_d)` tail (sampling without replacement is
//!   more concentrated; the tests check the exact hypergeometric tail against
//!   it): `d` is the smallest value with `P[Bin(k, p_d) > d] ≤ 2^-η / n`
//!   (union bound over `n` sites), capped at `D`.
//! * The graph of honest surviving sites must stay connected: otherwise the
//!   coordinator, which learns every edge key of colluding and dropped sites,
//!   could unmask the partial sum of one component (Bell et al.; easy to
//!   miss). Sites check this on the actual survivor graph
//!   ([`connectivity`]), whatever the placement, so here it is a liveness
//!   condition: honest rounds should pass that check. Removing nodes from
//!   the cycle-based graph disconnects it only if two disjoint runs of
//!   `h = ⌊k/2⌋` consecutive cycle positions are all removed (a single run
//!   leaves a path whose gaps are all `≤ h`; odd `k`'s extra diagonal is
//!   ignored, which is conservative). With `R = C + D` removed sites in
//!   uniformly random positions, a union bound over at most `n(n−1)/2` pairs
//!   of runs gives `P ≤ n(n−1)/2 · Π_{i<2h} (R−i)/(n−i)`, required
//!   `≤ 2^-(σ+1)`.
//!
//! `k` is scanned upward from 2 (skipping odd `k` when `n` is odd); the first
//! `k < n − 1` meeting all conditions wins, with `t = ⌊(k + c)/2⌋ + 1`, the
//! smallest secure threshold (cheapest reconstruction, most dropout slack).
//! For `k > 2048` the scan steps by `k/64`, so there the returned `k` is
//! within ≈ 1.6 % of the smallest (bounds the cost on huge cohorts). If no
//! `k < n − 1` works, the complete graph with worst-case counts is tried; if
//! that fails too, [`GraphError::NoParameters`] explains why. Binomial tails
//! are summed in log space from the top (`ln C(k, j)` via Stirling's series),
//! so tiny probabilities such as 2^-50 are exact to many digits.

pub mod connectivity;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use thiserror::Error;

/// Errors from building a graph or choosing its parameters.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum GraphError {
    /// Cohort too small for secure aggregation.
    #[error("a cohort needs at least 2 sites, got n = {n}")]
    TooFewSites {
        /// Cohort size.
        n: usize,
    },
    /// Degree zero.
    #[error("degree k must be at least 1")]
    ZeroDegree,
    /// Degree not below the cohort size.
    #[error("degree k = {k} must be at most n − 1 = {} for n = {n} sites", n.saturating_sub(1))]
    DegreeTooLarge {
        /// Cohort size.
        n: usize,
        /// Requested degree.
        k: usize,
    },
    /// Odd degree on an odd cohort (impossible: degrees would sum to an odd number).
    #[error("odd degree k = {k} needs an even cohort size, got n = {n}")]
    OddDegreeOddCohort {
        /// Cohort size.
        n: usize,
        /// Requested degree.
        k: usize,
    },
    /// Threshold lets honest neighbours alone reveal both shares.
    #[error(
        "threshold t = {t} must exceed k/2 = {half} so that honest neighbours alone can never \
         give the coordinator both kinds of share of one site", half = *k as f64 / 2.0
    )]
    ThresholdTooLow {
        /// Degree.
        k: usize,
        /// Threshold.
        t: usize,
    },
    /// Threshold larger than the number of share holders.
    #[error("threshold t = {t} cannot exceed the number of neighbours k = {k}")]
    ThresholdTooHigh {
        /// Degree.
        k: usize,
        /// Threshold.
        t: usize,
    },
    /// A rate outside `[0, 1)`.
    #[error("{name} must be a number in [0, 1), got {value}")]
    InvalidRate {
        /// `"dropout fraction δ"` or `"collusion fraction γ"`.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// `γ + 2δ ≥ 1`: no graph can be both secure and correct.
    #[error(
        "no secure parameters exist for dropout fraction δ = {delta} and collusion fraction \
         γ = {gamma}: γ + 2δ = {sum} ≥ 1. A threshold must exceed (k + colluding)/2 for \
         security yet be at most k − dropped for recovery, which needs k > colluding + \
         2·dropped, i.e. γ + 2δ < 1; plan for fewer dropouts or fewer colluding sites"
    )]
    Infeasible {
        /// Dropout fraction.
        delta: f64,
        /// Collusion fraction.
        gamma: f64,
        /// `γ + 2δ`.
        sum: f64,
    },
    /// Even the complete graph fails for this small cohort.
    #[error(
        "no (k, t) works for n = {n} sites at dropout fraction δ = {delta} and collusion \
         fraction γ = {gamma}: no sparse graph meets the 2^-{sigma} security / 2^-{eta} \
         correctness targets, and the complete graph (k = {k}) with up to {c} colluding and \
         {d} dropped neighbours needs (k + {c})/2 < t ≤ k − {d}, which has no integer \
         solution; use a larger cohort or plan for fewer dropouts or colluding sites"
    )]
    NoParameters {
        /// Cohort size.
        n: usize,
        /// Dropout fraction.
        delta: f64,
        /// Collusion fraction.
        gamma: f64,
        /// Security bits.
        sigma: u32,
        /// Correctness bits.
        eta: u32,
        /// `n − 1`.
        k: usize,
        /// Worst-case colluding count.
        c: usize,
        /// Worst-case dropped count.
        d: usize,
    },
}

/// Random k-regular Harary graph over cohort positions `0..n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourGraph {
    n: usize,
    k: usize,
    /// Sorted neighbour lists.
    adj: Vec<Vec<usize>>,
    /// `pos[i]`: cycle position of site `i`, for O(1) adjacency tests.
    pos: Vec<usize>,
}

/// Uniform integer in `[0, m)`, `m ≥ 1`, by rejection (no modulo bias).
fn uniform(rng: &mut ChaCha20Rng, m: u64) -> u64 {
    // Accept x ≥ 2^64 mod m: the remaining range is a multiple of m.
    let reject_below = m.wrapping_neg() % m;
    loop {
        let x = rng.next_u64();
        if x >= reject_below {
            return x % m;
        }
    }
}

fn check_shape(n: usize, k: usize) -> Result<(), GraphError> {
    if n < 2 {
        return Err(GraphError::TooFewSites { n });
    }
    if k == 0 {
        return Err(GraphError::ZeroDegree);
    }
    if k >= n {
        return Err(GraphError::DegreeTooLarge { n, k });
    }
    if k % 2 == 1 && n % 2 == 1 {
        return Err(GraphError::OddDegreeOddCohort { n, k });
    }
    Ok(())
}

impl NeighbourGraph {
    /// Random k-regular Harary-style graph derived from `seed` (see module
    /// docs). Memory is `O(n·k)`. Errors: `n < 2`, `k == 0`, `k ≥ n`, odd `k`
    /// with odd `n`.
    pub fn harary(n: usize, k: usize, seed: &[u8; 32]) -> Result<Self, GraphError> {
        check_shape(n, k)?;
        let mut rng = ChaCha20Rng::from_seed(*seed);
        // order[p] = site at cycle position p.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = uniform(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut pos = vec![0; n];
        for (p, &site) in order.iter().enumerate() {
            pos[site] = p;
        }
        let mut adj = vec![Vec::with_capacity(k); n];
        // k ≤ n − 1 keeps the offsets 1..=k/2 (and n/2 for odd k) distinct
        // modulo n, so no edge is added twice.
        for p in 0..n {
            for off in 1..=k / 2 {
                let (a, b) = (order[p], order[(p + off) % n]);
                adj[a].push(b);
                adj[b].push(a);
            }
        }
        if k % 2 == 1 {
            for p in 0..n / 2 {
                let (a, b) = (order[p], order[p + n / 2]);
                adj[a].push(b);
                adj[b].push(a);
            }
        }
        for list in &mut adj {
            list.sort_unstable();
        }
        Ok(NeighbourGraph { n, k, adj, pos })
    }

    /// Number of sites.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Degree of every site.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Sorted neighbours of site `i` (never `i` itself); empty if `i ≥ n`.
    pub fn neighbours(&self, i: usize) -> &[usize] {
        self.adj.get(i).map_or(&[], Vec::as_slice)
    }

    /// Cycle position of site `i` (`None` if `i ≥ n`): whoever knows the seed
    /// knows where each site sits on the ring.
    pub fn position(&self, i: usize) -> Option<usize> {
        self.pos.get(i).copied()
    }

    /// Whether `i` and `j` share an edge; false for out-of-range sites.
    pub fn are_neighbours(&self, i: usize, j: usize) -> bool {
        if i >= self.n || j >= self.n || i == j {
            return false;
        }
        let diff = self.pos[i].abs_diff(self.pos[j]);
        let dist = diff.min(self.n - diff);
        dist <= self.k / 2 || (self.k % 2 == 1 && dist == self.n / 2)
    }
}

/// Degree and Shamir threshold of a SecAgg+ round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecAggParams {
    /// Neighbours per site.
    pub k: usize,
    /// Shares needed to reconstruct.
    pub t: usize,
}

/// Validates explicit parameters: `2 ≤ n`, `1 ≤ k ≤ n − 1`, `k/2 < t ≤ k`
/// (so the coordinator can never obtain both kinds of share of one honest site
/// from honest neighbours), and odd `k` only with even `n`.
pub fn validate(n: usize, p: SecAggParams) -> Result<(), GraphError> {
    check_shape(n, p.k)?;
    if 2 * p.t <= p.k {
        return Err(GraphError::ThresholdTooLow { k: p.k, t: p.t });
    }
    if p.t > p.k {
        return Err(GraphError::ThresholdTooHigh { k: p.k, t: p.t });
    }
    Ok(())
}

/// Parameters plus the neighbour-count bounds they were derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Choice {
    params: SecAggParams,
    /// Colluding neighbours tolerated.
    c: usize,
    /// Dropped neighbours tolerated.
    d: usize,
}

/// Chooses `k` and `t` for cohort size `n`, dropout fraction `delta`,
/// collusion fraction `gamma` (sites that may collude with the coordinator),
/// `sigma` security bits and `eta` correctness bits. See the module docs for
/// the logic and the assumptions.
pub fn choose(
    n: usize,
    delta: f64,
    gamma: f64,
    sigma: u32,
    eta: u32,
) -> Result<SecAggParams, GraphError> {
    choose_detailed(n, delta, gamma, sigma, eta).map(|c| c.params)
}

/// `⌊rate · n⌋`, rounding up when within 1e-9 of the next integer so float
/// error (e.g. 0.29·100 = 28.999…) never under-counts dropped sites.
fn count(rate: f64, n: usize) -> usize {
    ((rate * n as f64 + 1e-9).floor() as usize).min(n)
}

/// `⌈rate · n⌉`, rounding down only when within 1e-9 of the integer below:
/// colluders are counted up, so a cohort of 5 with γ = 0.1 assumes one
/// colluder, not none.
fn count_up(rate: f64, n: usize) -> usize {
    ((rate * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n)
}

/// Colluders assumed among `n` sites at collusion fraction `gamma`: `⌈γ·n⌉`.
pub fn colluders(n: usize, gamma: f64) -> Result<usize, GraphError> {
    if !(gamma.is_finite() && (0.0..1.0).contains(&gamma)) {
        return Err(GraphError::InvalidRate {
            name: "collusion fraction γ",
            value: gamma,
        });
    }
    Ok(count_up(gamma, n))
}

/// The smallest threshold a site accepts for degree `k` with `c` colluders
/// in the cohort: `⌊(k + min(c, k))/2⌋ + 1`, for every graph. The worst case
/// — all colluders among one member's neighbours — is assumed even for sparse
/// graphs, because the coordinator chooses the graph seed and could grind it
/// to surround a victim: a bound that holds only for random placements would
/// not hold here. `usize::MAX` (nothing is enough) for `k = 0`.
pub fn secure_threshold(k: usize, c: usize) -> usize {
    if k == 0 {
        return usize::MAX;
    }
    (k + c.min(k)) / 2 + 1
}

/// Parameters for the complete graph (`k = n − 1`): the threshold covers
/// `⌈γ·n⌉` colluders and must leave room for `⌊δ·n⌋` dropouts.
pub fn choose_complete(n: usize, delta: f64, gamma: f64) -> Result<SecAggParams, GraphError> {
    if n < 2 {
        return Err(GraphError::TooFewSites { n });
    }
    if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(GraphError::InvalidRate {
            name: "dropout fraction δ",
            value: delta,
        });
    }
    let k = n - 1;
    let c = colluders(n, gamma)?.min(k);
    let d = count(delta, n).min(k);
    match threshold(k, c, d) {
        Some(t) => Ok(SecAggParams { k, t }),
        None => Err(GraphError::NoParameters {
            n,
            delta,
            gamma,
            sigma: 0,
            eta: 0,
            k,
            c,
            d,
        }),
    }
}

fn choose_detailed(
    n: usize,
    delta: f64,
    gamma: f64,
    sigma: u32,
    eta: u32,
) -> Result<Choice, GraphError> {
    if n < 2 {
        return Err(GraphError::TooFewSites { n });
    }
    for (name, value) in [
        ("dropout fraction δ", delta),
        ("collusion fraction γ", gamma),
    ] {
        if !(value.is_finite() && (0.0..1.0).contains(&value)) {
            return Err(GraphError::InvalidRate { name, value });
        }
    }
    let sum = gamma + 2.0 * delta;
    if sum >= 1.0 {
        return Err(GraphError::Infeasible { delta, gamma, sum });
    }

    let big_c = count_up(gamma, n);
    let big_d = count(delta, n);
    let ln2 = std::f64::consts::LN_2;
    let ln_n = (n as f64).ln();
    // Tiny slack makes float error in the tails err on the safe side.
    let slack = 1e-9;
    let ln_eps_connect = -(f64::from(sigma) + 1.0) * ln2 - slack;
    let ln_eps_drop = -f64::from(eta) * ln2 - ln_n - slack;
    let others = (n - 1) as f64;
    let p_d = (big_d as f64 / others).min(1.0);
    let removed = (big_c + big_d).min(n);

    let mut k = 2;
    while k < n - 1 {
        if k % 2 == 1 && n % 2 == 1 {
            k += 1;
            continue;
        }
        if ln_disconnect(n, k, removed) <= ln_eps_connect {
            // Worst case for colluders (see `secure_threshold`); only the
            // dropout count, which costs liveness and not privacy, is a
            // probabilistic bound.
            let c = big_c.min(k);
            let d = binom_upper_quantile(k, p_d, ln_eps_drop).min(big_d);
            if let Some(t) = threshold(k, c, d) {
                return Ok(Choice {
                    params: SecAggParams { k, t },
                    c,
                    d,
                });
            }
        }
        k += if k > 2048 { k / 64 } else { 1 };
    }

    let k = n - 1;
    let (c, d) = (big_c.min(k), big_d.min(k));
    match threshold(k, c, d) {
        Some(t) => Ok(Choice {
            params: SecAggParams { k, t },
            c,
            d,
        }),
        None => Err(GraphError::NoParameters {
            n,
            delta,
            gamma,
            sigma,
            eta,
            k,
            c,
            d,
        }),
    }
}

/// Smallest secure threshold `⌊(k + c)/2⌋ + 1`, if it also allows recovery
/// after `d` dropouts.
fn threshold(k: usize, c: usize, d: usize) -> Option<usize> {
    let t = (k + c) / 2 + 1;
    (d <= k && t <= k - d).then_some(t)
}

/// `ln` of the union bound on the honest-survivor graph being disconnected
/// when `removed` of `n` sites sit at uniformly random cycle positions.
fn ln_disconnect(n: usize, k: usize, removed: usize) -> f64 {
    let run = 2 * (k / 2);
    if run > removed {
        return f64::NEG_INFINITY;
    }
    if run == 0 {
        return 0.0;
    }
    let pairs = (n as f64).ln() + ((n - 1) as f64).ln() - std::f64::consts::LN_2;
    let all_removed: f64 = (0..run)
        .map(|i| ((removed - i) as f64 / (n - i) as f64).ln())
        .sum();
    pairs + all_removed
}

/// `ln(m!)`: direct sum for small `m`, Stirling's series otherwise (error
/// below 1e-16 relative for `m ≥ 32`).
fn ln_factorial(m: usize) -> f64 {
    if m < 32 {
        return (2..=m).map(|i| (i as f64).ln()).sum();
    }
    let x = m as f64;
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series =
        inv / 12.0 * (1.0 - inv2 / 30.0 * (1.0 - inv2 * 2.0 / 7.0 * (1.0 - inv2 * 3.0 / 4.0)));
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + series
}

fn ln_choose(k: usize, j: usize) -> f64 {
    ln_factorial(k) - ln_factorial(j) - ln_factorial(k - j)
}

/// `ln(e^a + e^b)` without overflow.
fn ln_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// Smallest `c` with `P[Bin(k, p) > c] ≤ e^ln_eps`, summing the tail from
/// the top in log space.
fn binom_upper_quantile(k: usize, p: f64, ln_eps: f64) -> usize {
    if p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return k;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mut tail = f64::NEG_INFINITY; // ln P[X > j]
    for j in (0..=k).rev() {
        let ln_pmf = ln_choose(k, j) + j as f64 * ln_p + (k - j) as f64 * ln_q;
        let with_j = ln_add(tail, ln_pmf); // ln P[X ≥ j] = ln P[X > j − 1]
        if with_j > ln_eps {
            return j;
        }
        tail = with_j;
    }
    0
}

#[cfg(test)]
mod tests;
