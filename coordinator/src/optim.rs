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

use std::sync::Arc;

use crate::settings::{OptimiserKind, OptimiserSettings};

/// A server optimiser with its state.
///
/// The moments are shared (`Arc`) so that a checkpoint being written holds
/// them without a copy; a step changes them in place unless a writer still
/// holds them, and copies them only then.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerOptimiser {
    kind: OptimiserKind,
    lr: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    /// First moment (empty for FedAvg).
    pub m: Arc<Vec<f32>>,
    /// Second moment (empty for FedAvg / FedAvgM).
    pub v: Arc<Vec<f32>>,
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
            m: Arc::new(m),
            v: Arc::new(v),
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
        self.m = Arc::new(m);
        self.v = Arc::new(v);
        Ok(())
    }

    /// Errors unless the state fits a model of `dim` parameters.
    pub fn check_dim(&self, dim: usize) -> Result<(), String> {
        if (!self.m.is_empty() && self.m.len() != dim)
            || (!self.v.is_empty() && self.v.len() != dim)
        {
            return Err(format!(
                "optimiser state has {} elements, model {dim}",
                self.m.len(),
            ));
        }
        Ok(())
    }

    /// Apply mean delta `delta` to parameters `x` in place.
    pub fn step(&mut self, x: &mut [f32], delta: &[f64]) -> Result<(), String> {
        self.check_dim(x.len())?;
        self.step_at(0, x, delta)
    }

    /// One element's step from parameter `x`, delta `d` and moments `m`,
    /// `v` (0 where the kind keeps none): the new (x, m, v).
    fn element(&self, x: f32, d: f64, m: f32, v: f32) -> (f32, f32, f32) {
        let (lr, b1, b2, tau) = (self.lr, self.beta1, self.beta2, self.tau);
        match self.kind {
            OptimiserKind::FedAvg => ((f64::from(x) + lr * d) as f32, m, v),
            OptimiserKind::FedAvgM => {
                let mm = b1 * f64::from(m) + d;
                ((f64::from(x) + lr * mm) as f32, mm as f32, v)
            }
            kind => {
                let mm = b1 * f64::from(m) + (1.0 - b1) * d;
                let vv = f64::from(v);
                let d2 = d * d;
                let nv = match kind {
                    OptimiserKind::FedAdagrad => vv + d2,
                    OptimiserKind::FedAdam => b2 * vv + (1.0 - b2) * d2,
                    _ => {
                        vv - (1.0 - b2) * d2 * (vv - d2).signum() * if vv == d2 { 0.0 } else { 1.0 }
                    }
                };
                let nx = (f64::from(x) + lr * mm / (nv.sqrt() + tau)) as f32;
                (nx, mm as f32, nv as f32)
            }
        }
    }

    /// The moments at flat index `i` (0 where the kind keeps none).
    fn moments(&self, i: usize) -> (f32, f32) {
        (
            self.m.get(i).copied().unwrap_or(0.0),
            self.v.get(i).copied().unwrap_or(0.0),
        )
    }

    /// The parameters `x` (flat indices `offset..`) would take after a step
    /// along `delta`, handed to `each` with their flat index, without
    /// changing anything: a round checks its whole outcome this way before
    /// [`step_at`](Self::step_at) changes the model in place.
    pub fn preview<E>(
        &self,
        offset: usize,
        x: &[f32],
        delta: &[f64],
        mut each: impl FnMut(usize, f32) -> Result<(), E>,
    ) -> Result<(), E> {
        for (j, (&xi, &d)) in x.iter().zip(delta).enumerate() {
            let (m, v) = self.moments(offset + j);
            each(offset + j, self.element(xi, d, m, v).0)?;
        }
        Ok(())
    }

    /// Apply `delta` to the parameters at flat indices `offset..offset +
    /// x.len()` in place (state checked with [`check_dim`](Self::check_dim)).
    pub fn step_at(&mut self, offset: usize, x: &mut [f32], delta: &[f64]) -> Result<(), String> {
        if x.len() != delta.len() {
            return Err(format!(
                "delta has {} elements, model {}",
                delta.len(),
                x.len()
            ));
        }
        let end = offset + x.len();
        let this = self.clone_params();
        let (m, v) = (Arc::make_mut(&mut self.m), Arc::make_mut(&mut self.v));
        fn range(s: &mut [f32], offset: usize, end: usize) -> Result<Option<&mut [f32]>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            let len = s.len();
            s.get_mut(offset..end)
                .map(Some)
                .ok_or_else(|| format!("optimiser state has {len} elements, step reaches {end}"))
        }
        let mut m = range(m, offset, end)?;
        let mut v = range(v, offset, end)?;
        for (j, (xi, &d)) in x.iter_mut().zip(delta).enumerate() {
            let mj = m.as_deref().map_or(0.0, |s| s[j]);
            let vj = v.as_deref().map_or(0.0, |s| s[j]);
            let (nx, nm, nv) = this.element(*xi, d, mj, vj);
            *xi = nx;
            if let Some(s) = m.as_deref_mut() {
                s[j] = nm;
            }
            if let Some(s) = v.as_deref_mut() {
                s[j] = nv;
            }
        }
        Ok(())
    }

    /// The hyper-parameters without the state, for the element step while
    /// the state is borrowed mutably.
    fn clone_params(&self) -> ServerOptimiser {
        ServerOptimiser {
            kind: self.kind,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            tau: self.tau,
            m: Arc::default(),
            v: Arc::default(),
        }
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
