//! Tabular data sets, federated standardisation and a stratified split.
//!
//! Standardisation in a federation is two-step: each site computes
//! [`Dataset::stats`] (count, per-feature sum and sum of squares), the sites'
//! statistics are summed (securely, by the caller), and every site builds the
//! same [`Standardiser`] from the global sums. The result equals centralised
//! standardisation over the union of the sites' rows, without any site
//! revealing its own statistics.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};

/// Features (rows = examples) and integer class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Array2<f32>,
    labels: Vec<u32>,
    feature_names: Vec<String>,
}

impl Dataset {
    /// Builds a data set, checking that the parts agree in size and every
    /// feature is finite.
    pub fn new(
        features: Array2<f32>,
        labels: Vec<u32>,
        feature_names: Vec<String>,
    ) -> Result<Self> {
        if features.nrows() != labels.len() {
            return Err(TrainError::InconsistentDataset(format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.len()
            )));
        }
        if features.ncols() != feature_names.len() {
            return Err(TrainError::InconsistentDataset(format!(
                "{} feature columns but {} names",
                features.ncols(),
                feature_names.len()
            )));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::InconsistentDataset(
                "non-finite feature value".into(),
            ));
        }
        Ok(Self {
            features,
            labels,
            feature_names,
        })
    }

    /// Loads a CSV file with a header row; `label` names the class column,
    /// every other column is a numeric feature (in file order).
    pub fn from_csv(path: impl AsRef<Path>, label: &str) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(std::io::BufReader::new(file), label).map_err(|e| match e {
            // Keep I/O errors flat; wrap parse errors so the message names the file.
            TrainError::Io { .. } => e,
            other => TrainError::InFile {
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        })
    }

    /// Like [`from_csv`](Self::from_csv) but from any reader.
    pub fn from_reader(reader: impl Read, label: &str) -> Result<Self> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            // Ragged rows are checked below to give a precise error.
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let header = rdr.headers()?.clone();
        if header.is_empty() {
            return Err(TrainError::MissingHeader);
        }
        let mut seen = HashSet::new();
        for name in &header {
            if !seen.insert(name) {
                return Err(TrainError::DuplicateColumn {
                    column: name.to_string(),
                });
            }
        }
        let label_col = header.iter().position(|h| h == label).ok_or_else(|| {
            TrainError::MissingLabelColumn {
                label: label.to_string(),
                available: header.iter().collect::<Vec<_>>().join(", "),
            }
        })?;
        let feature_names: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != label_col)
            .map(|(_, h)| h.to_string())
            .collect();

        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut record = csv::StringRecord::new();
        // Line numbers are 1-based and count the header, matching an editor.
        let mut fallback_line = 1u64;
        while rdr.read_record(&mut record)? {
            fallback_line += 1;
            let line = record.position().map_or(fallback_line, |p| p.line());
            if record.len() != header.len() {
                return Err(TrainError::RaggedRow {
                    line,
                    expected: header.len(),
                    found: record.len(),
                });
            }
            for (i, field) in record.iter().enumerate() {
                let column = || header[i].to_string();
                if field.is_empty() {
                    return Err(TrainError::MissingValue {
                        line,
                        column: column(),
                    });
                }
                if i == label_col {
                    let class = field.parse::<u32>().map_err(|_| TrainError::InvalidLabel {
                        line,
                        column: column(),
                        value: field.to_string(),
                    })?;
                    labels.push(class);
                } else {
                    let v = field.parse::<f32>().map_err(|_| TrainError::NonNumeric {
                        line,
                        column: column(),
                        value: field.to_string(),
                    })?;
                    if !v.is_finite() {
                        return Err(TrainError::NonFinite {
                            line,
                            column: column(),
                            value: field.to_string(),
                        });
                    }
                    values.push(v);
                }
            }
        }
        if labels.is_empty() {
            return Err(TrainError::EmptyDataset);
        }
        let features = Array2::from_shape_vec((labels.len(), feature_names.len()), values)
            .map_err(|e| TrainError::InconsistentDataset(e.to_string()))?;
        Ok(Self {
            features,
            labels,
            feature_names,
        })
    }

    /// Feature matrix, one row per example.
    pub fn features(&self) -> &Array2<f32> {
        &self.features
    }

    /// Class id of each row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Feature column names, in matrix column order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature columns.
    pub fn num_features(&self) -> usize {
        self.features.ncols()
    }

    /// Rows per class id, indexed by class (length = largest label + 1).
    pub fn class_counts(&self) -> Vec<usize> {
        let classes = self.labels.iter().max().map_or(0, |&m| m as usize + 1);
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The rows at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is out of bounds (indices come from the caller's own code,
    /// not from file input).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            feature_names: self.feature_names.clone(),
        }
    }

    /// This site's contribution to the global standardisation statistics.
    pub fn stats(&self) -> FeatureStats {
        let mut sum = vec![0.0f64; self.num_features()];
        let mut sum_sq = vec![0.0f64; self.num_features()];
        // f64 accumulation: sums of squares of features ~1e3 over many rows
        // would lose precision in f32.
        for row in self.features.rows() {
            for ((s, q), &v) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(row) {
                let v = f64::from(v);
                *s += v;
                *q += v * v;
            }
        }
        FeatureStats {
            n: self.len() as u64,
            sum,
            sum_sq,
        }
    }

    /// Deterministic stratified split into `(train, test)`: in each class,
    /// `round(test_frac * class_rows)` rows chosen by a ChaCha8 shuffle
    /// seeded with `seed` go to the test set. Both parts keep file order.
    pub fn split_holdout(&self, test_frac: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(test_frac > 0.0 && test_frac < 1.0) {
            return Err(TrainError::InvalidConfig(format!(
                "holdout fraction must be in (0, 1), got {test_frac}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut is_test = vec![false; self.len()];
        for class in 0..self.class_counts().len() {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            rows.shuffle(&mut rng);
            let n_test = (test_frac * rows.len() as f64).round() as usize;
            for &i in &rows[..n_test.min(rows.len())] {
                is_test[i] = true;
            }
        }
        let (test, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| is_test[i]);
        Ok((self.subset(&train), self.subset(&test)))
    }
}

pub use confide_proto::standardise::{FeatureStats, STD_FLOOR};

/// Maps each feature to `(x - mean) / std`: the shared
/// [`confide_proto::standardise::Standardiser`] (one formula for the
/// coordinator that derives it and every site that applies it), applied to
/// a [`Dataset`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardiser(confide_proto::standardise::Standardiser);

impl Standardiser {
    /// Builds the standardiser from statistics summed over all sites, using
    /// the population standard deviation (as scikit-learn's `StandardScaler`).
    pub fn from_global(stats: &FeatureStats) -> Result<Self> {
        Ok(Self(confide_proto::standardise::Standardiser::from_global(
            stats,
        )?))
    }

    /// Rebuilds an announced standardiser.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        Ok(Self(confide_proto::standardise::Standardiser::new(
            mean, std,
        )?))
    }

    /// Per-feature means.
    pub fn mean(&self) -> &[f64] {
        self.0.mean()
    }

    /// Per-feature standard deviations (floored at [`STD_FLOOR`]).
    pub fn std(&self) -> &[f64] {
        self.0.std()
    }

    /// Standardises `data` in place.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        if data.num_features() != self.0.features() {
            return Err(TrainError::FeatureMismatch {
                expected: self.0.features(),
                found: data.num_features(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        match data.features.as_slice_mut() {
            Some(rows) => self.0.apply_rows(rows)?,
            None => {
                for mut row in data.features.rows_mut() {
                    let mut r = row.to_vec();
                    self.0.apply_rows(&mut r)?;
                    row.iter_mut().zip(r).for_each(|(x, v)| *x = v);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dataset> {
        Dataset::from_reader(text.as_bytes(), "y")
    }

    #[test]
    fn parses_valid_csv() {
        let d = parse("a,y,b\n1.5,0,2\n-3,1,4e1\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.feature_names(), &["a".to_string(), "b".to_string()]);
        assert_eq!(d.labels(), &[0, 1]);
        assert_eq!(d.features().row(1).to_vec(), vec![-3.0, 40.0]);
        assert_eq!(d.class_counts(), vec![1, 1]);
        // Spreadsheet exports often start with a UTF-8 byte-order mark.
        let bom = Dataset::from_reader("\u{feff}y,a\n1,2\n".as_bytes(), "y").unwrap();
        assert_eq!(bom.feature_names(), &["a".to_string()]);
    }

    #[test]
    fn csv_errors_are_specific() {
        let err = parse("a,b\n1,2\n").unwrap_err();
        assert!(
            matches!(err, TrainError::MissingLabelColumn { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("'y' not found"), "{err}");

        let err = parse("a,y\n1,0\n2,1,3\n").unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::RaggedRow {
                    line: 3,
                    expected: 2,
                    found: 3
                }
            ),
            "{err}"
        );

        let err = parse("a,y\n1,0\nabc,1\n").unwrap_err();
        assert!(
            matches!(err, TrainError::NonNumeric { line: 3, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "line 3, column 'a': 'abc' is not a number");

        let err = parse("a,y\nNaN,0\n").unwrap_err();
        assert!(
            matches!(err, TrainError::NonFinite { line: 2, .. }),
            "{err}"
        );
        let err = parse("a,y\ninf,0\n").unwrap_err();
        assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");

        let err = parse("a,y\n1,0.5\n").unwrap_err();
        assert!(
            matches!(err, TrainError::InvalidLabel { line: 2, .. }),
            "{err}"
        );
        let err = parse("a,y\n1,-1\n").unwrap_err();
        assert!(matches!(err, TrainError::InvalidLabel { .. }), "{err}");

        let err = parse("a,y\n,1\n").unwrap_err();
        assert!(
            matches!(err, TrainError::MissingValue { line: 2, .. }),
            "{err}"
        );

        assert!(matches!(parse("a,y\n"), Err(TrainError::EmptyDataset)));
        assert!(matches!(parse(""), Err(TrainError::MissingHeader)));
        assert!(matches!(
            parse("a,a,y\n1,2,0\n"),
            Err(TrainError::DuplicateColumn { .. })
        ));
    }

    #[test]
    fn file_errors_name_the_file() {
        let err = Dataset::from_csv("/nonexistent/x.csv", "y").unwrap_err();
        assert!(matches!(err, TrainError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/x.csv"), "{err}");

        let path =
            std::env::temp_dir().join(format!("confide_train_bad_{}.csv", std::process::id()));
        std::fs::write(&path, "a,y\n1,0\n1,x\n").unwrap();
        let err = Dataset::from_csv(&path, "y").unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("confide_train_bad_") && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn standardiser_from_summed_stats_matches_centralised() {
        let text = "f1,f2,f3,y\n1000,0.01,5,0\n1500,0.02,5,1\n900,0.015,5,0\n1200,0.03,5,1\n1100,0.025,5,0\n";
        let full = parse(text).unwrap();
        let sites = [
            full.subset(&[0, 1]),
            full.subset(&[2]),
            full.subset(&[3, 4]),
        ];
        let mut total = sites[0].stats();
        for s in &sites[1..] {
            total.add(&s.stats()).unwrap();
        }
        assert_eq!(total.n, 5);
        let fed = Standardiser::from_global(&total).unwrap();

        // Centralised two-pass reference.
        let x = full.features().mapv(f64::from);
        let mean = x.mean_axis(Axis(0)).unwrap();
        let std = x.std_axis(Axis(0), 0.0);
        for j in 0..3 {
            assert!((fed.mean()[j] - mean[j]).abs() < 1e-9 * mean[j].abs().max(1.0));
            assert!((fed.std()[j] - std[j].max(STD_FLOOR)).abs() < 1e-6 * std[j].max(1.0));
        }
        // Constant feature: floored std, standardised to exactly zero.
        assert_eq!(fed.std()[2], STD_FLOOR);

        let mut fed_data = full.clone();
        fed.apply(&mut fed_data).unwrap();
        let reference = (&x - &mean) / &std.mapv(|s| s.max(STD_FLOOR));
        for (a, b) in fed_data.features().iter().zip(reference.iter()) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
        }
        let col = fed_data.features().column(0).mapv(f64::from);
        assert!(col.mean().unwrap().abs() < 1e-6);
        assert!((col.std(0.0) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn standardiser_rejects_bad_stats() {
        let empty = FeatureStats {
            n: 0,
            sum: vec![0.0],
            sum_sq: vec![0.0],
        };
        assert!(matches!(
            Standardiser::from_global(&empty),
            Err(TrainError::InvalidStats(_))
        ));
        let ragged = FeatureStats {
            n: 2,
            sum: vec![0.0],
            sum_sq: vec![],
        };
        assert!(Standardiser::from_global(&ragged).is_err());
        let s = Standardiser::new(vec![0.0], vec![1.0]).unwrap();
        let mut d = parse("a,b,y\n1,2,0\n").unwrap();
        assert!(matches!(
            s.apply(&mut d),
            Err(TrainError::FeatureMismatch { .. })
        ));
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let mut text = String::from("x,y\n");
        for i in 0..100 {
            text.push_str(&format!("{i},{}\n", u32::from(i % 4 == 0)));
        }
        let d = parse(&text).unwrap();
        let (train, test) = d.split_holdout(0.2, 7).unwrap();
        assert_eq!(test.class_counts(), vec![15, 5]);
        assert_eq!(train.class_counts(), vec![60, 20]);
        let (train2, test2) = d.split_holdout(0.2, 7).unwrap();
        assert_eq!((train, test), (train2, test2));
        assert!(d.split_holdout(1.0, 7).is_err());
    }
}
