//! The site's bounds on the training settings a round announces. Every
//! honest site sees the same settings (they are bound into the round
//! context), but the coordinator chooses them: these keep a round within the
//! site's compute budget and refuse values no sane federation sends, before
//! the model is even downloaded.

use confide_proto::v1;

/// Bounds beyond the site's own `max_epochs`: a learning rate above 10, an
/// L2 or proximal weight above 100, or a batch above 2^20 rows is no
/// training setting but a mistake (or an attempt to make the update
/// meaningless or the site's machine busy).
const MAX_LEARNING_RATE: f64 = 10.0;
const MAX_PENALTY: f64 = 100.0;
const MAX_BATCH: u32 = 1 << 20;

/// Why `t` is refused, if it is.
pub(super) fn refuse_training(t: &v1::TrainingConfig, max_epochs: u32) -> Option<String> {
    if t.epochs == 0 || t.epochs > max_epochs {
        return Some(format!(
            "{} epochs; this site runs 1 to {max_epochs} (--max-epochs)",
            t.epochs
        ));
    }
    if t.batch_size == 0 || t.batch_size > MAX_BATCH {
        return Some(format!("batch size {}; at most {MAX_BATCH}", t.batch_size));
    }
    if !(t.learning_rate.is_finite()
        && t.learning_rate > 0.0
        && t.learning_rate <= MAX_LEARNING_RATE)
    {
        return Some(format!(
            "learning rate {}; it must be in (0, {MAX_LEARNING_RATE}]",
            t.learning_rate
        ));
    }
    for (name, v) in [("l2", t.l2), ("proximal_mu", t.proximal_mu)] {
        if !(v.is_finite() && (0.0..=MAX_PENALTY).contains(&v)) {
            return Some(format!("{name} {v}; it must be in [0, {MAX_PENALTY}]"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sane() -> v1::TrainingConfig {
        v1::TrainingConfig {
            epochs: 5,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.01,
            proximal_mu: 0.0,
            ..Default::default()
        }
    }

    type Edit = fn(&mut v1::TrainingConfig);

    #[test]
    fn sane_settings_pass_and_each_bound_refuses() {
        assert_eq!(refuse_training(&sane(), 100), None);
        let cases: [(&str, Edit); 8] = [
            ("epochs; this site runs 1 to 100", |t| t.epochs = 101),
            ("0 epochs", |t| t.epochs = 0),
            ("batch size 0", |t| t.batch_size = 0),
            ("batch size 2097152", |t| t.batch_size = 1 << 21),
            ("learning rate NaN", |t| t.learning_rate = f64::NAN),
            ("learning rate 0;", |t| t.learning_rate = 0.0),
            ("l2 -1", |t| t.l2 = -1.0),
            ("proximal_mu inf", |t| t.proximal_mu = f64::INFINITY),
        ];
        for (want, edit) in cases {
            let mut t = sane();
            edit(&mut t);
            let why = refuse_training(&t, 100).unwrap_or_default();
            assert!(why.contains(want), "{want}: {why}");
        }
        // The site's own budget is the limit, not a constant.
        let mut t = sane();
        t.epochs = 500;
        assert_eq!(refuse_training(&t, 1000), None);
    }
}
