//! Fixed-point encoding for statistics rounds (federated standardisation).
//!
//! A site encodes its per-feature Σx and Σx² and its row count n as
//! `[round(Σx₀·2^b), …, round(Σx_{f−1}·2^b), round(Σx²₀·2^b), …, n]` in
//! Z_2^64 (two's complement), where b is the announced number of fractional
//! bits. Sums of up to `max_cohort` such vectors cannot wrap because each
//! element is checked to satisfy |v| ≤ (2^63 − 1) / max_cohort. The error of
//! each decoded sum is at most `cohort · 2^−(b+1)` (round-to-nearest).

use crate::ring::RingElement;

/// Why statistics cannot be encoded or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StatsError {
    /// The two per-feature arrays differ in length.
    #[error("Σx has {sum} features but Σx² has {sum_sq}")]
    Mismatch {
        /// Length of Σx.
        sum: usize,
        /// Length of Σx².
        sum_sq: usize,
    },
    /// A value is NaN or infinite.
    #[error("statistic {index} is not finite")]
    NonFinite {
        /// Slot index.
        index: usize,
    },
    /// A value too large for the ring at this precision and cohort size.
    #[error(
        "statistic {index} = {value} is too large for {bits} fractional bits and a cohort of {max_cohort}; lower stats_scale_bits"
    )]
    Overflow {
        /// Slot index.
        index: usize,
        /// The value.
        value: f64,
        /// Fractional bits.
        bits: u32,
        /// Cohort bound.
        max_cohort: usize,
    },
    /// A decoded vector of the wrong length.
    #[error("statistics vector has {got} elements, expected {expected}")]
    Length {
        /// Expected.
        expected: usize,
        /// Got.
        got: usize,
    },
    /// Bad parameters.
    #[error("invalid statistics parameters: {0}")]
    Params(&'static str),
}

/// Length of the statistics vector for `features` features.
pub fn stats_len(features: usize) -> usize {
    2 * features + 1
}

/// Encode one site's statistics.
pub fn encode_stats(
    sum: &[f64],
    sum_sq: &[f64],
    n: u64,
    bits: u32,
    max_cohort: usize,
) -> Result<Vec<u64>, StatsError> {
    if sum.len() != sum_sq.len() {
        return Err(StatsError::Mismatch {
            sum: sum.len(),
            sum_sq: sum_sq.len(),
        });
    }
    if bits > 40 || max_cohort == 0 {
        return Err(StatsError::Params(
            "stats_scale_bits must be at most 40 and the cohort non-empty",
        ));
    }
    let bound = (i64::MAX / max_cohort as i64) as f64;
    let scale = (bits as f64).exp2();
    let mut out = Vec::with_capacity(stats_len(sum.len()));
    for (index, &v) in sum.iter().chain(sum_sq).enumerate() {
        if !v.is_finite() {
            return Err(StatsError::NonFinite { index });
        }
        let q = (v * scale).round();
        if q.abs() >= bound {
            return Err(StatsError::Overflow {
                index,
                value: v,
                bits,
                max_cohort,
            });
        }
        out.push(u64::from_i64(q as i64));
    }
    if n as f64 >= bound {
        return Err(StatsError::Overflow {
            index: out.len(),
            value: n as f64,
            bits,
            max_cohort,
        });
    }
    out.push(n);
    Ok(out)
}

/// Decode a sum of encodings: (Σx, Σx², n) over all contributors.
pub fn decode_stats(
    sum: &[u64],
    features: usize,
    bits: u32,
) -> Result<(Vec<f64>, Vec<f64>, u64), StatsError> {
    if sum.len() != stats_len(features) {
        return Err(StatsError::Length {
            expected: stats_len(features),
            got: sum.len(),
        });
    }
    let scale = (bits as f64).exp2();
    let v: Vec<f64> = sum[..2 * features]
        .iter()
        .map(|&q| q.to_signed() as f64 / scale)
        .collect();
    Ok((
        v[..features].to_vec(),
        v[features..].to_vec(),
        sum[2 * features],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_encodings_decode_to_sums_of_statistics() -> Result<(), StatsError> {
        let sites = [
            (vec![1.5, -2000.25], vec![10.0, 4e6], 7u64),
            (vec![-0.75, 300.0], vec![2.5, 9e4], 5),
        ];
        let mut acc = vec![0u64; stats_len(2)];
        for (s, q, n) in &sites {
            for (a, e) in acc.iter_mut().zip(encode_stats(s, q, *n, 20, 10)?) {
                *a = a.wrapping_add(e);
            }
        }
        let (s, q, n) = decode_stats(&acc, 2, 20)?;
        assert_eq!(n, 12);
        for (got, want) in s
            .iter()
            .zip([0.75, -1700.25])
            .chain(q.iter().zip([12.5, 4.09e6]))
        {
            assert!(
                (got - want).abs() <= 2.0 * 2f64.powi(-21),
                "{got} vs {want}"
            );
        }
        Ok(())
    }

    #[test]
    fn refuses_what_could_overflow_or_is_not_finite() {
        assert!(matches!(
            encode_stats(&[1e15], &[0.0], 1, 20, 100),
            Err(StatsError::Overflow { index: 0, .. })
        ));
        assert!(matches!(
            encode_stats(&[f64::NAN], &[0.0], 1, 20, 100),
            Err(StatsError::NonFinite { index: 0 })
        ));
        assert!(matches!(
            encode_stats(&[1.0, 2.0], &[0.0], 1, 20, 100),
            Err(StatsError::Mismatch { .. })
        ));
        assert!(decode_stats(&[0; 4], 2, 20).is_err());
    }
}
