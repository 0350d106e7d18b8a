//! Learning quality over the real system (gRPC, secure aggregation on), so a
//! regression in training, quantisation or aggregation fails CI. Run with
//! `--nocapture` for the accuracy curve.

use std::time::{Duration, Instant};

use confide_crypto::Suite;
use confide_proto::model::ModelKind;
use confide_tests::{BoxError, Coordinator, settings, site, spawn_sites};

const DIGITS: &str = include_str!("../../examples/data/digits.csv");

/// Ten sites, site i holding digits {i, i+1 mod 10}: each digit's rows, in
/// file order, go half to site d and half to site d−1 (mod 10).
fn split_digits(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut lines = DIGITS.lines();
    let header = lines.next().unwrap_or_default();
    let mut by_digit: Vec<Vec<&str>> = vec![Vec::new(); 10];
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let d: usize = l
            .rsplit(',')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        by_digit[d % 10].push(l);
    }
    let mut parts: Vec<String> = vec![format!("{header}\n"); 10];
    for (d, rows) in by_digit.iter().enumerate() {
        let half = rows.len().div_ceil(2);
        for (i, r) in rows.iter().enumerate() {
            let s = if i < half { d } else { (d + 9) % 10 };
            parts[s].push_str(r);
            parts[s].push('\n');
        }
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let p = dir.join(format!("digits-{i}.csv"));
            std::fs::write(&p, text)?;
            Ok(p)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_ten_sites_two_digits_each_mlp_reaches_93_percent() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let data = split_digits(tmp.path())?;
    let rounds = 100;
    let mut s = settings(rounds, Suite::Intl);
    s.min_sites = 10;
    s.join_grace_secs = 1.0;
    s.model.kind = ModelKind::Mlp;
    s.model.features = 64;
    s.model.classes = 10;
    s.model.hidden = vec![64];
    s.training.epochs = 1;
    s.training.batch_size = 16;
    s.training.learning_rate = 0.1;
    s.evaluate_every_round = true;
    let t = Instant::now();
    let coord = Coordinator::start(s).await?;
    let url = coord.url();
    let cfgs = data
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = site(&url, &format!("site-{i}"), p);
            c.label = "digit".into();
            c
        })
        .collect();
    let sites = spawn_sites(cfgs);
    let r = coord.finish(Duration::from_secs(900)).await?;
    for h in sites {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    let mut first_at = None;
    for h in &r.history {
        if let Some(a) = h.accuracy {
            if first_at.is_none() && a >= 0.93 {
                first_at = Some(h.round);
            }
            if h.round % 10 == 0 || h.round <= 3 {
                eprintln!(
                    "  round {:>3} {:<10} held-out accuracy {a:.4}",
                    h.round, h.kind
                );
            }
        }
    }
    let acc = r.final_accuracy.ok_or("no final accuracy")?;
    eprintln!(
        "digits, 10 sites × 2 digits, MLP 64-64-10, SecAgg: final {acc:.4}, ≥ 93 % first at round {first_at:?}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.93, "final held-out accuracy {acc}");
    Ok(())
}
