use super::*;
use confide_crypto::quant::QuantConfig;
use confide_crypto::ring::{Ring, add_assign};
use confide_crypto::stats;
use confide_proto::model::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::settings::{OptimiserKind, OptimiserSettings};

fn quant() -> Result<Quantiser, QuantError> {
    Quantiser::new(&QuantConfig {
        ring: Ring::U32,
        clip: 4.0,
        max_weight: 10_000,
        max_cohort: 10,
        scale: None,
        min_levels: confide_crypto::quant::DEFAULT_MIN_LEVELS,
    })
}

fn model() -> Result<Model, ModelError> {
    let mut m = Model::new();
    m.insert("weight", Tensor::new(vec![1, 2], vec![1.0, -1.0])?);
    m.insert("bias", Tensor::new(vec![1], vec![0.5])?);
    Ok(m)
}

fn result(sum: RingVec, survivors: usize) -> AnyRoundResult {
    AnyRoundResult {
        sum,
        survivors: (1..=survivors as confide_crypto::MemberId).collect(),
        dropped: Vec::new(),
        reconstructions: 0,
    }
}

/// Σ of the sites' encodings (update, weight, [correct, examples, loss_milli]).
fn summed(q: &Quantiser, sites: &[(&[f32], u64, [i64; 3])]) -> Result<RingVec, QuantError> {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut acc: Option<Vec<u32>> = None;
    for (update, weight, extras) in sites {
        let v = q.encode::<u32>(update, *weight, extras, &mut rng)?;
        match acc.as_mut() {
            Some(a) => add_assign(a, &v),
            None => acc = Some(v),
        }
    }
    Ok(RingVec::U32(acc.unwrap_or_default()))
}

#[test]
fn evaluation_slots_give_accuracy_and_mean_loss() {
    let e = decode_evaluation(&[90, 120, 60_000]);
    assert_eq!(
        e,
        Some(Evaluation {
            accuracy: 0.75,
            loss: 0.5,
            examples: 120
        })
    );
    assert_eq!(decode_evaluation(&[0, 0, 0]), None, "nobody evaluated");
    assert_eq!(decode_evaluation(&[1, 2]), None, "slots missing");
}

#[test]
fn training_sum_steps_the_model_and_reports_the_evaluation()
-> Result<(), Box<dyn std::error::Error>> {
    let q = quant()?;
    let m = model()?;
    let opt = ServerOptimiser::new(OptimiserKind::FedAvg, &OptimiserSettings::default(), 3);
    let sum = summed(
        &q,
        &[
            (&[1.0, 0.0, -1.0], 1, [3, 4, 2_000]),
            (&[3.0, 0.0, 1.0], 3, [1, 4, 6_000]),
        ],
    )?;
    let cx = Context {
        features: 2,
        stats_scale_bits: 16,
        quant: &q,
        model_len: 3,
        model: &m,
        optimiser: &opt,
        max_model_bytes: 1 << 20,
    };
    let Outcome::Trained(update, eval) = outcome(RoundKind::Train, &result(sum, 2), &cx)? else {
        return Err("expected a training outcome".into());
    };
    // Weighted mean delta: (1·[1,0,-1] + 3·[3,0,1]) / 4 = [2.5, 0, 0.5],
    // added in flatten order (tensors by name: bias, then weight).
    let x = update.model.flatten();
    let want = [0.5 + 2.5, 1.0, -1.0 + 0.5];
    for (got, want) in x.iter().zip(want) {
        assert!((got - want).abs() < 1e-3, "{x:?}");
    }
    assert_eq!(update.total_weight, 4);
    assert_eq!(Model::from_safetensors(&update.bytes)?, update.model);
    assert_eq!(
        eval,
        Some(Evaluation {
            accuracy: 0.5,
            loss: 1.0,
            examples: 8
        })
    );
    // The model given is untouched.
    assert_eq!(m, model()?);
    // Too large a model is refused.
    let small = Context {
        max_model_bytes: 10,
        ..cx
    };
    let sum = summed(&q, &[(&[0.0; 3], 1, [0, 0, 0]), (&[0.0; 3], 1, [0, 0, 0])])?;
    assert!(matches!(
        outcome(RoundKind::Train, &result(sum, 2), &small),
        Err(OutcomeError::TooLarge)
    ));
    Ok(())
}

#[test]
fn evaluation_round_decodes_only_the_extras() -> Result<(), Box<dyn std::error::Error>> {
    let q = quant()?;
    let m = model()?;
    let opt = ServerOptimiser::new(OptimiserKind::FedAvg, &OptimiserSettings::default(), 3);
    let sum = summed(&q, &[(&[], 1, [5, 10, 1_000]), (&[], 1, [5, 10, 3_000])])?;
    let cx = Context {
        features: 2,
        stats_scale_bits: 16,
        quant: &q,
        model_len: 0,
        model: &m,
        optimiser: &opt,
        max_model_bytes: 1 << 20,
    };
    let Outcome::Evaluated(Some(e)) = outcome(RoundKind::Evaluate, &result(sum, 2), &cx)? else {
        return Err("expected an evaluation".into());
    };
    assert_eq!(e.examples, 20);
    assert!((e.accuracy - 0.5).abs() < 1e-12);
    assert!((e.loss - 0.2).abs() < 1e-12);
    Ok(())
}

#[test]
fn malformed_lengths_are_errors_not_panics() -> Result<(), Box<dyn std::error::Error>> {
    let q = quant()?;
    let m = model()?;
    let opt = ServerOptimiser::new(OptimiserKind::FedAvg, &OptimiserSettings::default(), 3);
    let cx = Context {
        features: 2,
        stats_scale_bits: 16,
        quant: &q,
        model_len: 3,
        model: &m,
        optimiser: &opt,
        max_model_bytes: 1 << 20,
    };
    let short = result(RingVec::U32(vec![0; 2]), 2);
    assert!(matches!(
        outcome(RoundKind::Train, &short, &cx),
        Err(OutcomeError::Quant(_))
    ));
    let wrong_ring = result(RingVec::U64(vec![0; 7]), 2);
    assert!(outcome(RoundKind::Train, &wrong_ring, &cx).is_err());
    assert!(matches!(
        decode_statistics(&RingVec::U64(vec![0; 4]), 2, 16),
        Err(OutcomeError::Statistics(_))
    ));
    assert!(matches!(
        decode_statistics(&RingVec::U32(vec![0; 5]), 2, 16),
        Err(OutcomeError::StatisticsRing)
    ));
    assert!(matches!(
        decode_statistics(&RingVec::U64(vec![0; 5]), 2, 16),
        Err(OutcomeError::NoRows)
    ));
    Ok(())
}

#[test]
fn statistics_give_mean_and_floored_std() -> Result<(), Box<dyn std::error::Error>> {
    // Rows: feature 0 ∈ {1, 3} (mean 2, std 1); feature 1 constant 5 (std 0 → floor).
    let a = stats::encode_stats(&[1.0, 5.0], &[1.0, 25.0], 1, 16, 10)?;
    let b = stats::encode_stats(&[3.0, 5.0], &[9.0, 25.0], 1, 16, 10)?;
    let mut sum = a;
    add_assign(&mut sum, &b);
    let s = decode_statistics(&RingVec::U64(sum), 2, 16)?;
    assert_eq!(s.rows, 2);
    assert!((s.preprocess.mean[0] - 2.0).abs() < 1e-4);
    assert!((s.preprocess.mean[1] - 5.0).abs() < 1e-4);
    assert!((s.preprocess.std[0] - 1.0).abs() < 1e-3);
    assert!(s.preprocess.std[1] <= 1e-2 && s.preprocess.std[1] >= STD_FLOOR);
    Ok(())
}
