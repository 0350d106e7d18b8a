//! Plaintext federated-averaging simulations on the shared demo data
//! (test-only: the real client aggregates through secure aggregation).
//!
//! Data files are looked up in `$CONFIDE_DATA_DIR`, then in `shared/data/`,
//! `examples/data/` or `data/` next to the crate or any ancestor folder.
//! Run with `cargo test --release -- --nocapture` to see per-round accuracy.

use std::path::PathBuf;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

/// Seed of the headline 80/20 holdout splits.
const SPLIT_SEED: u64 = 0;
/// Seed of model initialisation and every local shuffle.
const TRAIN_SEED: u64 = 20240607;
/// Split seeds for the robustness summaries: with 113 test rows one
/// example is 0.9 points, so a single split says little on its own.
const SPLIT_SEEDS: std::ops::Range<u64> = 0..20;

fn data_path(file: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CONFIDE_DATA_DIR") {
        return PathBuf::from(dir).join(file);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        for sub in ["shared/data", "examples/data", "data"] {
            let candidate = dir.join(sub).join(file);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("{file} not found: set CONFIDE_DATA_DIR to the folder holding it");
}

fn load(file: &str, label: &str) -> Dataset {
    let path = data_path(file);
    Dataset::from_csv(&path, label).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Standardises every site and the test set with statistics summed over the
/// sites only, as the federation would.
fn federated_standardise(sites: &mut [Dataset], test: &mut Dataset) {
    let mut total = sites[0].stats();
    for s in &sites[1..] {
        total.add(&s.stats()).unwrap();
    }
    let st = Standardiser::from_global(&total).unwrap();
    for s in sites.iter_mut() {
        st.apply(s).unwrap();
    }
    st.apply(test).unwrap();
}

/// How the server turns the mean client delta into a global step.
#[derive(Debug, Clone, Copy)]
enum ServerOpt {
    /// `global += mean_delta`.
    FedAvg,
    /// Server momentum: `v = beta·v + mean_delta; global += lr·v`.
    FedAvgM { lr: f32, beta: f32 },
}

/// Runs `rounds` FedAvg rounds; returns held-out accuracy after each round.
fn simulate(
    trainer: &mut dyn Trainer,
    sites: &[Dataset],
    test: &Dataset,
    cfg: &FitConfig,
    opt: ServerOpt,
    rounds: usize,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(TRAIN_SEED);
    let mut global = trainer.init(&mut rng);
    let mut velocity = global.zeros_like();
    let mut history = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut sum = global.zeros_like();
        let mut total = 0u64;
        for site in sites {
            let r = trainer.fit(&global, site, cfg, &mut rng).unwrap();
            sum.add_scaled(&r.delta, r.num_examples as f32).unwrap();
            total += r.num_examples;
        }
        sum.scale(1.0 / total as f32);
        match opt {
            ServerOpt::FedAvg => global.add_scaled(&sum, 1.0).unwrap(),
            ServerOpt::FedAvgM { lr, beta } => {
                velocity.scale(beta);
                velocity.add_scaled(&sum, 1.0).unwrap();
                global.add_scaled(&velocity, lr).unwrap();
            }
        }
        history.push(trainer.evaluate(&global, test).unwrap().accuracy());
    }
    history
}

fn report(name: &str, history: &[f64], checkpoints: &[usize], goal: f64) -> Option<usize> {
    let reached = history.iter().position(|&a| a >= goal).map(|r| r + 1);
    let marks: Vec<String> = checkpoints
        .iter()
        .map(|&r| format!("r{r}={:.2}%", 100.0 * history[r - 1]))
        .collect();
    println!(
        "{name}: {} | best {:.2}% | goal {:.1}% reached at round {reached:?}",
        marks.join(" "),
        100.0 * history.iter().cloned().fold(0.0, f64::max),
        100.0 * goal
    );
    reached
}

/// Centralised logistic regression on one 80/20 split, standardised with
/// the training rows' statistics. Returns held-out accuracy.
fn centralised_breast_cancer(data: &Dataset, split_seed: u64) -> f64 {
    let (mut train, mut test) = data.split_holdout(0.2, split_seed).unwrap();
    federated_standardise(std::slice::from_mut(&mut train), &mut test);
    let mut lr = LogisticRegression::new(30, 2).unwrap();
    let cfg = FitConfig {
        epochs: 50,
        batch_size: 32,
        learning_rate: 0.05,
        l2: 1e-2,
        proximal_mu: 0.0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(TRAIN_SEED);
    let mut model = lr.init(&mut rng);
    let r = lr.fit(&model, &train, &cfg, &mut rng).unwrap();
    model.add_scaled(&r.delta, 1.0).unwrap();
    lr.evaluate(&model, &test).unwrap().accuracy()
}

#[test]
fn centralised_logistic_regression_breast_cancer() {
    let start = Instant::now();
    let data = load("breast_cancer_wisconsin.csv", "malignant");
    assert_eq!((data.len(), data.num_features()), (569, 30));
    let headline = centralised_breast_cancer(&data, SPLIT_SEED);
    let all: Vec<f64> = SPLIT_SEEDS
        .map(|s| centralised_breast_cancer(&data, s))
        .collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let min = all.iter().cloned().fold(1.0, f64::min);
    println!(
        "centralised logreg breast cancer (50 epochs, batch 32, lr 0.05, l2 0.01): \
         split seed {SPLIT_SEED}: {:.2}% | {} split seeds: mean {:.2}%, min {:.2}% | {:.2?}",
        100.0 * headline,
        all.len(),
        100.0 * mean,
        100.0 * min,
        start.elapsed()
    );
    // Measured: 98.23 % (111/113) on split 0, mean 97.83 % over 20 splits.
    assert!(headline >= 0.98, "{headline}");
    assert!(mean >= 0.975, "{mean}");
}

/// Hospital A: first 20 % by descending `radius_mean`, B: next 30 %, C: rest.
fn hospital_split(train: &Dataset) -> Vec<Dataset> {
    assert_eq!(train.feature_names()[0], "radius_mean");
    let radius = train.features().column(0).to_vec();
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.sort_by(|&a, &b| radius[b].total_cmp(&radius[a]).then(a.cmp(&b)));
    let cut_a = train.len() * 20 / 100;
    let cut_b = train.len() * 50 / 100;
    vec![
        train.subset(&order[..cut_a]),
        train.subset(&order[cut_a..cut_b]),
        train.subset(&order[cut_b..]),
    ]
}

/// FedAvg over the three hospitals of one split; accuracy after each round.
fn fedavg_breast_cancer(
    data: &Dataset,
    split_seed: u64,
    cfg: &FitConfig,
    rounds: usize,
) -> Vec<f64> {
    let (train, mut test) = data.split_holdout(0.2, split_seed).unwrap();
    let mut sites = hospital_split(&train);
    federated_standardise(&mut sites, &mut test);
    let mut lr = LogisticRegression::new(30, 2).unwrap();
    simulate(&mut lr, &sites, &test, cfg, ServerOpt::FedAvg, rounds)
}

/// Breast cancer, three hospitals with skewed label mixes and sizes.
///
/// Split rule: hold out 20 % stratified (seed [`SPLIT_SEED`]); sort the
/// remaining 456 rows by `radius_mean`, largest first (ties by file order);
/// hospital A gets the first 20 % (large tumours: 90 of 91 malignant), B the next
/// 30 % (mixed), C the last 50 % (small tumours: almost all benign).
#[test]
fn fedavg_logistic_regression_breast_cancer_non_iid() {
    let start = Instant::now();
    let data = load("breast_cancer_wisconsin.csv", "malignant");
    let (train, _) = data.split_holdout(0.2, SPLIT_SEED).unwrap();
    for (name, s) in ["A", "B", "C"].iter().zip(hospital_split(&train)) {
        let c = s.class_counts();
        println!(
            "hospital {name}: {} rows, benign {} malignant {}",
            s.len(),
            c[0],
            c.get(1).copied().unwrap_or(0)
        );
    }
    let cfg = FitConfig {
        epochs: 5,
        batch_size: 16,
        learning_rate: 0.05,
        l2: 0.0,
        proximal_mu: 0.0,
    };
    let history = fedavg_breast_cancer(&data, SPLIT_SEED, &cfg, 30);
    let reached = report(
        "FedAvg logreg breast cancer non-IID",
        &history,
        &[1, 5, 10, 20, 30],
        0.965,
    );
    println!("  local config {cfg:?}, server FedAvg (lr 1.0)");

    // The same protocol on other holdout splits.
    let mut reached_count = 0;
    let mut final_sum = 0.0;
    for seed in SPLIT_SEEDS {
        let h = fedavg_breast_cancer(&data, seed, &cfg, 30);
        reached_count += usize::from(h.iter().any(|&a| a >= 0.965));
        final_sum += h[29];
    }
    let final_mean = final_sum / SPLIT_SEEDS.count() as f64;
    println!(
        "  {} split seeds: goal reached on {reached_count}, mean round-30 accuracy {:.2}% | {:.2?}",
        SPLIT_SEEDS.count(),
        100.0 * final_mean,
        start.elapsed()
    );
    // Measured: goal at round 4, 99.12 % at round 30 on split 0; goal on
    // 17/20 splits, mean 97.79 % (the misses are splits where centralised
    // training also stays at or below 96.5 %).
    assert!(reached.is_some_and(|r| r <= 5), "{reached:?}");
    assert!(history[29] >= 0.99, "{}", history[29]);
    assert!(reached_count >= 17, "{reached_count}");
    assert!(final_mean >= 0.975, "{final_mean}");
}

/// Site `i` gets digits `i` and `(i + 1) mod 10`; each digit's rows split in half.
fn digit_sites(train: &Dataset) -> Vec<Dataset> {
    let mut site_rows: Vec<Vec<usize>> = vec![Vec::new(); 10];
    for d in 0..10u32 {
        let rows: Vec<usize> = (0..train.len())
            .filter(|&i| train.labels()[i] == d)
            .collect();
        let half = rows.len().div_ceil(2);
        site_rows[d as usize].extend_from_slice(&rows[..half]);
        site_rows[(d as usize + 9) % 10].extend_from_slice(&rows[half..]);
    }
    site_rows
        .iter_mut()
        .map(|rows| {
            rows.sort_unstable();
            train.subset(rows)
        })
        .collect()
}

/// Digits, ten sites each holding exactly two classes.
///
/// Split rule: hold out 20 % stratified (seed [`SPLIT_SEED`]); site `i`
/// holds digits `i` and `(i + 1) mod 10`. Digit `d`'s training rows, in file
/// order, go first half (rounded up) to site `d`, the rest to site
/// `(d + 9) mod 10`.
#[test]
fn fedavg_mlp_digits_two_classes_per_site() {
    let start = Instant::now();
    let data = load("digits.csv", "digit");
    assert_eq!((data.len(), data.num_features()), (1797, 64));
    let (train, mut test) = data.split_holdout(0.2, SPLIT_SEED).unwrap();
    let mut sites = digit_sites(&train);
    for (i, s) in sites.iter().enumerate() {
        let present: Vec<usize> = s
            .class_counts()
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(
            present,
            vec![i.min((i + 1) % 10), i.max((i + 1) % 10)],
            "site {i}"
        );
    }
    println!(
        "digits: {} train rows over 10 sites ({:?} rows), {} test rows",
        train.len(),
        sites.iter().map(Dataset::len).collect::<Vec<_>>(),
        test.len()
    );
    federated_standardise(&mut sites, &mut test);

    let mut mlp = Mlp::new(64, vec![64], 10).unwrap();
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 16,
        learning_rate: 0.1,
        l2: 0.0,
        proximal_mu: 0.0,
    };
    let checkpoints = [10, 25, 50, 75, 100];
    let history = simulate(&mut mlp, &sites, &test, &cfg, ServerOpt::FedAvg, 100);
    let reached = report("MLP 64-64-10 digits, FedAvg", &history, &checkpoints, 0.93);
    println!("  local config {cfg:?} | {:.2?}", start.elapsed());

    // For comparison: server momentum on the same clients.
    let momentum = ServerOpt::FedAvgM { lr: 1.0, beta: 0.9 };
    let cfg_m = FitConfig {
        learning_rate: 0.05,
        ..cfg.clone()
    };
    let history_m = simulate(&mut mlp, &sites, &test, &cfg_m, momentum, 100);
    let reached_m = report(
        "MLP 64-64-10 digits, FedAvgM",
        &history_m,
        &checkpoints,
        0.93,
    );
    println!(
        "  local config {cfg_m:?}, server {momentum:?} | total {:.2?}",
        start.elapsed()
    );

    // Measured: FedAvg 93 % at round 11, 98.9 % at round 100; FedAvgM at round 8.
    assert!(reached.is_some_and(|r| r <= 15), "{reached:?}");
    assert!(history[99] >= 0.98, "{}", history[99]);
    assert!(reached_m.is_some_and(|r| r <= 10), "{reached_m:?}");
}
