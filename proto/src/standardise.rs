//! Federated feature standardisation: what a statistics round sums and how
//! every party turns the sum into the same per-feature mean and standard
//! deviation.
//!
//! Each site encodes its [`FeatureStats`] (row count, per-feature Σx and Σx²)
//! into the statistics vector ([`crate::layout::statistics_vector`]); the
//! coordinator decodes the secure sum and derives one [`Standardiser`] with
//! [`Standardiser::from_global`], which it then announces in every
//! `RoundStart`. Sites rebuild it with [`Standardiser::new`] and apply it to
//! their rows, so training and evaluation see identically scaled features.
//!
//! ```
//! use confide_proto::standardise::{FeatureStats, Standardiser};
//! let total = FeatureStats { n: 4, sum: vec![4.0, 0.0], sum_sq: vec![8.0, 0.0] };
//! let st = Standardiser::from_global(&total)?;
//! assert_eq!(st.mean(), &[1.0, 0.0]);
//! assert_eq!(st.std()[0], 1.0);
//! let mut row = [3.0f32, 5.0];
//! st.apply_rows(&mut row)?;
//! assert_eq!(row[0], 2.0);
//! # Ok::<(), confide_proto::standardise::StatsError>(())
//! ```

use serde::{Deserialize, Serialize};

/// Smallest standard deviation used, so constant features map to 0 instead of NaN.
pub const STD_FLOOR: f64 = 1e-6;

/// Why statistics or a standardiser are unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// Nothing was counted.
    #[error("row count is zero")]
    NoRows,
    /// Two per-feature vectors disagree in length.
    #[error("{left} {left_name} but {right} {right_name}")]
    Mismatch {
        /// Length of the first vector.
        left: usize,
        /// What the first vector holds.
        left_name: &'static str,
        /// Length of the second vector.
        right: usize,
        /// What the second vector holds.
        right_name: &'static str,
    },
    /// Statistics over different feature counts cannot be added.
    #[error("cannot add statistics over {ours} and {theirs} features")]
    AddMismatch {
        /// Features of the running total.
        ours: usize,
        /// Features of the added statistics.
        theirs: usize,
    },
    /// A sum is NaN or infinite.
    #[error("feature {feature} has a non-finite sum")]
    NonFiniteSum {
        /// Index of the feature.
        feature: usize,
    },
    /// A stored mean or deviation is unusable.
    #[error("means must be finite and standard deviations positive")]
    BadParameters,
    /// Rows of another width.
    #[error("standardiser covers {expected} features, data has {found}")]
    FeatureMismatch {
        /// Features of the standardiser.
        expected: usize,
        /// Features of the data.
        found: usize,
    },
}

/// Per-feature count, sum and sum of squares: additive across sites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// Number of rows.
    pub n: u64,
    /// Per-feature sum of values.
    pub sum: Vec<f64>,
    /// Per-feature sum of squared values.
    pub sum_sq: Vec<f64>,
}

impl FeatureStats {
    /// Adds another site's statistics (the plaintext version of the secure sum).
    pub fn add(&mut self, other: &FeatureStats) -> Result<(), StatsError> {
        if self.sum.len() != other.sum.len() || other.sum.len() != other.sum_sq.len() {
            return Err(StatsError::AddMismatch {
                ours: self.sum.len(),
                theirs: other.sum.len(),
            });
        }
        self.n += other.n;
        self.sum
            .iter_mut()
            .zip(&other.sum)
            .for_each(|(a, b)| *a += b);
        self.sum_sq
            .iter_mut()
            .zip(&other.sum_sq)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
}

/// Maps each feature to `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardiser {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardiser {
    /// Builds the standardiser from statistics summed over all sites, using
    /// the population standard deviation (as scikit-learn's `StandardScaler`).
    pub fn from_global(stats: &FeatureStats) -> Result<Self, StatsError> {
        if stats.n == 0 {
            return Err(StatsError::NoRows);
        }
        if stats.sum.len() != stats.sum_sq.len() {
            return Err(StatsError::Mismatch {
                left: stats.sum.len(),
                left_name: "sums",
                right: stats.sum_sq.len(),
                right_name: "sums of squares",
            });
        }
        let n = stats.n as f64;
        let mut mean = Vec::with_capacity(stats.sum.len());
        let mut std = Vec::with_capacity(stats.sum.len());
        for (feature, (&s, &q)) in stats.sum.iter().zip(&stats.sum_sq).enumerate() {
            if !s.is_finite() || !q.is_finite() {
                return Err(StatsError::NonFiniteSum { feature });
            }
            let m = s / n;
            // Cancellation can push the variance slightly below zero.
            let var = (q / n - m * m).max(0.0);
            mean.push(m);
            std.push(var.sqrt().max(STD_FLOOR));
        }
        Ok(Self { mean, std })
    }

    /// Rebuilds an announced or stored standardiser.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self, StatsError> {
        if mean.len() != std.len() {
            return Err(StatsError::Mismatch {
                left: mean.len(),
                left_name: "means",
                right: std.len(),
                right_name: "standard deviations",
            });
        }
        if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.iter().any(|&s| s <= 0.0) {
            return Err(StatsError::BadParameters);
        }
        Ok(Self { mean, std })
    }

    /// Per-feature means.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Per-feature standard deviations (floored at [`STD_FLOOR`]).
    pub fn std(&self) -> &[f64] {
        &self.std
    }

    /// Number of features covered.
    pub fn features(&self) -> usize {
        self.mean.len()
    }

    /// The parts, for storing or announcing.
    pub fn into_parts(self) -> (Vec<f64>, Vec<f64>) {
        (self.mean, self.std)
    }

    /// Standardises row-major rows of [`features`](Self::features) values in
    /// place, in `f32` as the trainers use them.
    pub fn apply_rows(&self, rows: &mut [f32]) -> Result<(), StatsError> {
        let f = self.mean.len();
        if f == 0 || !rows.len().is_multiple_of(f) {
            return Err(StatsError::FeatureMismatch {
                expected: f,
                found: rows.len(),
            });
        }
        let mean: Vec<f32> = self.mean.iter().map(|&m| m as f32).collect();
        let inv_std: Vec<f32> = self.std.iter().map(|&s| (1.0 / s) as f32).collect();
        for row in rows.chunks_exact_mut(f) {
            for ((x, m), s) in row.iter_mut().zip(&mean).zip(&inv_std) {
                *x = (*x - m) * s;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_statistics_give_population_mean_and_floored_std() -> Result<(), StatsError> {
        // Feature 0: values 1, 3 → mean 2, std 1. Feature 1: constant 5.
        let s = FeatureStats {
            n: 2,
            sum: vec![4.0, 10.0],
            sum_sq: vec![10.0, 50.0],
        };
        let st = Standardiser::from_global(&s)?;
        assert_eq!(st.mean(), &[2.0, 5.0]);
        assert_eq!(st.std(), &[1.0, STD_FLOOR]);
        let mut rows = vec![1.0f32, 5.0, 3.0, 5.0];
        st.apply_rows(&mut rows)?;
        assert_eq!(rows, vec![-1.0, 0.0, 1.0, 0.0]);
        Ok(())
    }

    #[test]
    fn unusable_statistics_are_refused_by_reason() {
        let zero = FeatureStats {
            n: 0,
            sum: vec![1.0],
            sum_sq: vec![1.0],
        };
        assert_eq!(Standardiser::from_global(&zero), Err(StatsError::NoRows));
        let nan = FeatureStats {
            n: 3,
            sum: vec![1.0, f64::NAN],
            sum_sq: vec![1.0, 1.0],
        };
        assert_eq!(
            Standardiser::from_global(&nan),
            Err(StatsError::NonFiniteSum { feature: 1 })
        );
        let ragged = FeatureStats {
            n: 3,
            sum: vec![1.0, 2.0],
            sum_sq: vec![1.0],
        };
        assert!(matches!(
            Standardiser::from_global(&ragged),
            Err(StatsError::Mismatch { .. })
        ));
        assert_eq!(
            Standardiser::new(vec![0.0], vec![0.0]),
            Err(StatsError::BadParameters)
        );
        assert!(Standardiser::new(vec![0.0], vec![1.0, 2.0]).is_err());
        let st = Standardiser::new(vec![0.0, 0.0], vec![1.0, 1.0]);
        let mut odd = [1.0f32; 3];
        assert!(st.is_ok_and(|s| s.apply_rows(&mut odd).is_err()));
    }

    #[test]
    fn statistics_add_up() -> Result<(), StatsError> {
        let mut a = FeatureStats {
            n: 1,
            sum: vec![1.0],
            sum_sq: vec![1.0],
        };
        a.add(&FeatureStats {
            n: 2,
            sum: vec![2.0],
            sum_sq: vec![3.0],
        })?;
        assert_eq!((a.n, a.sum[0], a.sum_sq[0]), (3, 3.0, 4.0));
        let wide = FeatureStats {
            n: 1,
            sum: vec![1.0, 2.0],
            sum_sq: vec![1.0, 2.0],
        };
        assert!(a.add(&wide).is_err());
        Ok(())
    }
}
