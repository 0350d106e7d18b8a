//! The demo data, split for test sites.

use std::path::{Path, PathBuf};

const BREAST_CANCER: &str = include_str!("../../../examples/data/breast_cancer_wisconsin.csv");

/// `n` sites' CSVs with every `n`-th row each (as
/// confide_tests::split_round_robin), written into `dir`.
pub fn split(dir: &Path, n: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut lines = BREAST_CANCER.lines();
    let header = lines.next().unwrap_or_default();
    let rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    (0..n)
        .map(|i| {
            let mut text = format!("{header}\n");
            for l in rows.iter().skip(i).step_by(n) {
                text.push_str(l);
                text.push('\n');
            }
            let p = dir.join(format!("site-{i}.csv"));
            std::fs::write(&p, text)?;
            Ok(p)
        })
        .collect()
}
