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

/// Why summed statistics cannot come from real rows
/// ([`FeatureStats::validate`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// No rows, ragged or non-finite sums.
    #[error(transparent)]
    Unusable(#[from] StatsError),
    /// A sum of squares below zero: no rows produce one.
    #[error("feature {feature} has a negative sum of squares ({value})")]
    NegativeSumOfSquares {
        /// Index of the feature.
        feature: usize,
        /// The sum of squares.
        value: f64,
    },
    /// Σx² / n − (Σx / n)² below what rounding can explain: no rows produce it.
    #[error(
        "feature {feature} has variance {variance:.6e}, below -{tolerance:.3e} \
         (the most rounding can explain); no set of rows has these sums"
    )]
    NegativeVariance {
        /// Index of the feature.
        feature: usize,
        /// Σx² / n − mean².
        variance: f64,
        /// Largest negative variance honest sums can show.
        tolerance: f64,
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

    /// Checks that these sums could come from real rows, before a
    /// [`Standardiser`] is derived from them: at least one row, finite sums,
    /// Σx² ≥ 0 and a variance Σx²/n − (Σx/n)² no more negative than rounding
    /// explains ([`variance_tolerance`]). `sum_error` bounds the absolute
    /// error of each sum beyond the sites' own f64 arithmetic (the fixed-point
    /// rounding of a secure sum; 0 for exact sums).
    pub fn validate(&self, sum_error: f64) -> Result<(), ValidationError> {
        if self.n == 0 {
            return Err(StatsError::NoRows.into());
        }
        if self.sum.len() != self.sum_sq.len() {
            return Err(ValidationError::Unusable(StatsError::Mismatch {
                left: self.sum.len(),
                left_name: "sums",
                right: self.sum_sq.len(),
                right_name: "sums of squares",
            }));
        }
        let n = self.n as f64;
        for (feature, (&s, &q)) in self.sum.iter().zip(&self.sum_sq).enumerate() {
            if !s.is_finite() || !q.is_finite() {
                return Err(StatsError::NonFiniteSum { feature }.into());
            }
            if q < 0.0 {
                return Err(ValidationError::NegativeSumOfSquares { feature, value: q });
            }
            let (mean, mean_sq) = (s / n, q / n);
            let variance = mean_sq - mean * mean;
            let tolerance = variance_tolerance(self.n, mean, mean_sq, sum_error);
            if variance < -tolerance {
                return Err(ValidationError::NegativeVariance {
                    feature,
                    variance,
                    tolerance,
                });
            }
        }
        Ok(())
    }
}

/// How far below zero Σx²/n − (Σx/n)² can fall for honest sums over `rows`
/// rows with the given `mean` and `mean_sq` (= Σx²/n), each sum off by at
/// most `sum_error` besides floating point.
///
/// Exactly, n·Σx² ≥ (Σx)². Recursive f64 summation over n rows errs by at
/// most γₙ = n·u/(1 − n·u) relative (u = 2^-53), which by Cauchy–Schwarz
/// moves n·Σx² − (Σx)² by at most n·Σx²·(3γₙ + γₙ²); an absolute error e in
/// both sums moves the variance by at most e/n·(1 + 2|mean|) + (e/n)²; and
/// computing the variance here rounds a few more times. Twice the sum of
/// these, so that the bound survives its own rounding.
pub fn variance_tolerance(rows: u64, mean: f64, mean_sq: f64, sum_error: f64) -> f64 {
    let u = f64::EPSILON / 2.0;
    let n = rows.max(1) as f64;
    // Past n·u = 1/2 the summation bound means nothing; γ = 1 is generous.
    let nu = (n * u).min(0.5);
    let gamma = nu / (1.0 - nu);
    let per_row = sum_error.abs() / n;
    let summation = mean_sq.abs() * (3.0 * gamma + gamma * gamma);
    let fixed_point = per_row * (1.0 + 2.0 * mean.abs()) + per_row * per_row;
    let here = 4.0 * u * (mean_sq.abs() + mean * mean);
    2.0 * (summation + fixed_point + here)
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

    fn one_feature(n: u64, sum: f64, sum_sq: f64) -> FeatureStats {
        FeatureStats {
            n,
            sum: vec![sum],
            sum_sq: vec![sum_sq],
        }
    }

    #[test]
    fn validation_refuses_sums_no_rows_produce() {
        // Rows {1, 3}: an honest total passes.
        assert_eq!(one_feature(2, 4.0, 10.0).validate(0.0), Ok(()));
        assert_eq!(
            one_feature(0, 0.0, 0.0).validate(0.0),
            Err(StatsError::NoRows.into())
        );
        assert_eq!(
            one_feature(2, f64::INFINITY, 1.0).validate(0.0),
            Err(StatsError::NonFiniteSum { feature: 0 }.into())
        );
        assert_eq!(one_feature(2, 0.0, 0.0).validate(0.0), Ok(()));
        assert!(matches!(
            one_feature(2, 0.0, -1e-300).validate(0.0),
            Err(ValidationError::NegativeSumOfSquares { feature: 0, .. })
        ));
        let ragged = FeatureStats {
            n: 2,
            sum: vec![1.0],
            sum_sq: vec![],
        };
        assert!(matches!(
            ragged.validate(0.0),
            Err(ValidationError::Unusable(StatsError::Mismatch { .. }))
        ));
    }

    #[test]
    fn a_variance_below_rounding_is_refused_and_one_within_it_passes() {
        // 1000 rows of mean 4 (Σx = 4000): the variance is Σx²/1000 − 16.
        let (n, sum, sum_error) = (1000u64, 4000.0, 0.05);
        let tol = variance_tolerance(n, 4.0, 16.0, sum_error);
        // The fixed-point part dominates: e/n·(1 + 2·4) = 4.5e-4, doubled.
        assert!(tol > 9e-4 && tol < 1e-3, "{tol}");
        let inside = one_feature(n, sum, (16.0 - tol / 2.0) * n as f64);
        assert_eq!(inside.validate(sum_error), Ok(()));
        let outside = one_feature(n, sum, (16.0 - tol * 2.0) * n as f64);
        let e = outside.validate(sum_error).unwrap_err();
        assert!(
            matches!(e, ValidationError::NegativeVariance { feature: 0, variance, tolerance }
                if variance < -tolerance && (tolerance - tol).abs() < 1e-12),
            "{e}"
        );
        assert!(e.to_string().contains("feature 0"), "{e}");
        // Exact sums: only floating point is forgiven.
        let exact = variance_tolerance(2, 2.0, 4.0, 0.0);
        assert!(exact > 0.0 && exact < 1e-13, "{exact}");
        assert_eq!(one_feature(2, 4.0, 8.0 - 1e-15).validate(0.0), Ok(()));
        assert!(one_feature(2, 4.0, 8.0 - 1e-9).validate(0.0).is_err());
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
