//! Server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).
//!
//! The aggregated mean delta Δ (local − global, averaged with example
//! weights) is a pseudo-gradient step; with m, v the server's first and
//! second moments:
//!
//! | kind | update |
//! |---|---|
//! | FedAvg | x ← x + η·Δ |
//! | FedAvgM | m ← β₁·m + Δ; x ← x + η·m |
//! | FedAdagrad | m ← β₁·m + (1−β₁)·Δ; v ← v + Δ²; x ← x + η·m/(√v + τ) |
//! | FedAdam | m as above; v ← β₂·v + (1−β₂)·Δ²; x ← x + η·m/(√v + τ) |
//! | FedYogi | m as above; v ← v − (1−β₂)·Δ²·sign(v − Δ²); x ← x + η·m/(√v + τ) |
//!
//! v starts at τ² (as in the paper), m at 0. State is kept in f32 so that a
//! checkpoint restores it bit for bit.

use crate::settings::{OptimiserKind, OptimiserSettings};

/// A server optimiser with its state.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerOptimiser {
    kind: OptimiserKind,
    lr: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    /// First moment (empty for FedAvg).
    pub m: Vec<f32>,
    /// Second moment (empty for FedAvg / FedAvgM).
    pub v: Vec<f32>,
}

impl ServerOptimiser {
    /// A fresh optimiser for `dim` parameters.
    pub fn new(kind: OptimiserKind, s: &OptimiserSettings, dim: usize) -> Self {
        let (m, v) = match kind {
            OptimiserKind::FedAvg => (Vec::new(), Vec::new()),
            OptimiserKind::FedAvgM => (vec![0.0; dim], Vec::new()),
            _ => (vec![0.0; dim], vec![(s.tau * s.tau) as f32; dim]),
        };
        ServerOptimiser {
            kind,
            lr: s.server_lr,
            beta1: s.beta1,
            beta2: s.beta2,
            tau: s.tau,
            m,
            v,
        }
    }

    /// Whether there is state worth saving.
    pub fn has_state(&self) -> bool {
        !self.m.is_empty()
    }

    /// Restore saved state; lengths must match.
    pub fn restore(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<(), String> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(format!(
                "optimiser state has lengths {}/{}, expected {}/{}",
                m.len(),
                v.len(),
                self.m.len(),
                self.v.len()
            ));
        }
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// Apply mean delta `delta` to parameters `x` in place.
    pub fn step(&mut self, x: &mut [f32], delta: &[f64]) -> Result<(), String> {
        if x.len() != delta.len() {
            return Err(format!(
                "delta has {} elements, model {}",
                delta.len(),
                x.len()
            ));
        }
        if (!self.m.is_empty() && self.m.len() != x.len())
            || (!self.v.is_empty() && self.v.len() != x.len())
        {
            return Err(format!(
                "optimiser state has {} elements, model {}",
                self.m.len(),
                x.len()
            ));
        }
        let (lr, b1, b2, tau) = (self.lr, self.beta1, self.beta2, self.tau);
        match self.kind {
            OptimiserKind::FedAvg => {
                for (xi, d) in x.iter_mut().zip(delta) {
                    *xi = (f64::from(*xi) + lr * d) as f32;
                }
            }
            OptimiserKind::FedAvgM => {
                for ((xi, d), m) in x.iter_mut().zip(delta).zip(self.m.iter_mut()) {
                    let mm = b1 * f64::from(*m) + d;
                    *m = mm as f32;
                    *xi = (f64::from(*xi) + lr * mm) as f32;
                }
            }
            kind => {
                for (((xi, &d), m), v) in x
                    .iter_mut()
                    .zip(delta)
                    .zip(self.m.iter_mut())
                    .zip(self.v.iter_mut())
                {
                    let mm = b1 * f64::from(*m) + (1.0 - b1) * d;
                    let vv = f64::from(*v);
                    let d2 = d * d;
                    let nv = match kind {
                        OptimiserKind::FedAdagrad => vv + d2,
                        OptimiserKind::FedAdam => b2 * vv + (1.0 - b2) * d2,
                        _ => {
                            vv - (1.0 - b2)
                                * d2
                                * (vv - d2).signum()
                                * if vv == d2 { 0.0 } else { 1.0 }
                        }
                    };
                    *m = mm as f32;
                    *v = nv as f32;
                    *xi = (f64::from(*xi) + lr * mm / (nv.sqrt() + tau)) as f32;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OptimiserSettings {
        OptimiserSettings {
            kind: OptimiserKind::FedAvg, // unused: each test passes its kind to `new`
            server_lr: 0.5,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.1,
        }
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn fedavg_is_a_plain_step() -> Result<(), String> {
        let mut o = ServerOptimiser::new(OptimiserKind::FedAvg, &settings(), 2);
        let mut x = [1.0f32, -1.0];
        o.step(&mut x, &[0.2, 0.4])?;
        // x + 0.5·Δ
        assert!(close(x[0], 1.1) && close(x[1], -0.8), "{x:?}");
        assert!(!o.has_state());
        Ok(())
    }

    #[test]
    fn fedavgm_accumulates_momentum() -> Result<(), String> {
        let mut o = ServerOptimiser::new(OptimiserKind::FedAvgM, &settings(), 1);
        let mut x = [0.0f32];
        o.step(&mut x, &[1.0])?; // m = 1, x = 0.5
        o.step(&mut x, &[1.0])?; // m = 0.9 + 1 = 1.9, x = 0.5 + 0.95 = 1.45
        assert!(close(o.m[0], 1.9) && close(x[0], 1.45), "{x:?} {:?}", o.m);
        Ok(())
    }

    #[test]
    fn adaptive_methods_match_hand_computed_steps() -> Result<(), String> {
        // Δ = 2, τ = 0.1, v0 = τ² = 0.01, m1 = 0.1·2 = 0.2, η = 0.5.
        let cases = [
            (OptimiserKind::FedAdagrad, 0.01 + 4.0),
            (OptimiserKind::FedAdam, 0.99 * 0.01 + 0.01 * 4.0),
            // v0 − Δ² < 0 → v = v0 + (1 − β₂)·Δ² = 0.01 + 0.04
            (OptimiserKind::FedYogi, 0.01 + 0.01 * 4.0),
        ];
        for (kind, v1) in cases {
            let mut o = ServerOptimiser::new(kind, &settings(), 1);
            let mut x = [1.0f32];
            o.step(&mut x, &[2.0])?;
            let want = 1.0 + 0.5 * 0.2 / (f64::sqrt(v1) + 0.1);
            assert!(close(o.m[0], 0.2), "{kind:?} m {:?}", o.m);
            assert!(
                (f64::from(o.v[0]) - v1).abs() < 1e-6 * v1.max(1.0),
                "{kind:?} v {:?} want {v1}",
                o.v
            );
            assert!(close(x[0], want), "{kind:?}: {} vs {want}", x[0]);
        }
        Ok(())
    }

    #[test]
    fn yogi_shrinks_v_when_gradients_are_small() -> Result<(), String> {
        let mut o = ServerOptimiser::new(OptimiserKind::FedYogi, &settings(), 1);
        o.restore(vec![0.0], vec![1.0])?;
        let mut x = [0.0f32];
        o.step(&mut x, &[0.5])?;
        // v − Δ² = 0.75 > 0 → v = 1 − 0.01·0.25
        assert!((f64::from(o.v[0]) - 0.9975).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut o = ServerOptimiser::new(OptimiserKind::FedAdam, &settings(), 2);
        assert!(o.step(&mut [0.0], &[1.0]).is_err());
        assert!(o.restore(vec![0.0], vec![0.0]).is_err());
    }
}
