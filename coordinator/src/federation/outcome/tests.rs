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
        levels: None,
        bits: None,
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
        decode_statistics(&RingVec::U64(vec![0; 4]), 2, 16, 2, 10),
        Err(OutcomeError::Statistics(_))
    ));
    assert!(matches!(
        decode_statistics(&RingVec::U32(vec![0; 5]), 2, 16, 2, 10),
        Err(OutcomeError::StatisticsRing)
    ));
    assert!(matches!(
        decode_statistics(&RingVec::U64(vec![0; 5]), 2, 16, 2, 10),
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
    let s = decode_statistics(&RingVec::U64(sum), 2, 16, 2, 10)?;
    assert_eq!(s.rows, 2);
    assert!((s.preprocess.mean[0] - 2.0).abs() < 1e-4);
    assert!((s.preprocess.mean[1] - 5.0).abs() < 1e-4);
    assert!((s.preprocess.std[0] - 1.0).abs() < 1e-3);
    assert!(s.preprocess.std[1] <= 1e-2 && s.preprocess.std[1] >= STD_FLOOR);
    Ok(())
}

fn context<'a>(
    q: &'a Quantiser,
    m: &'a Model,
    opt: &'a ServerOptimiser,
    model_len: usize,
) -> Context<'a> {
    Context {
        features: 1,
        stats_scale_bits: 16,
        quant: q,
        model_len,
        model: m,
        optimiser: opt,
        max_model_bytes: 1 << 20,
    }
}

/// A training sum with one element beyond what two honest sites of that
/// total weight can produce is rejected by reason, and no update is made.
#[test]
fn a_poisoned_training_sum_is_rejected_with_its_reason() -> Result<(), Box<dyn std::error::Error>> {
    let q = quant()?;
    let m = model()?;
    let opt = ServerOptimiser::new(OptimiserKind::FedAvg, &OptimiserSettings::default(), 3);
    let cx = context(&q, &m, &opt, 3);
    let honest = summed(
        &q,
        &[(&[0.5; 3], 2, [1, 2, 10]), (&[-0.5; 3], 3, [2, 2, 10])],
    )?;
    assert!(outcome(RoundKind::Train, &result(honest.clone(), 2), &cx).is_ok());
    // Element 1 at the honest limit decodes; one quantum more is rejected.
    let limit = i64::try_from(q.element_limit(2, 5))?;
    let mut at = honest.to_signed();
    at[1] = limit;
    let at = RingVec::U32(at.iter().map(|&v| v as u32).collect());
    assert!(outcome(RoundKind::Train, &result(at, 2), &cx).is_ok());
    let mut poisoned = honest.to_signed();
    poisoned[1] = limit + 1;
    let poisoned = RingVec::U32(poisoned.iter().map(|&v| v as u32).collect());
    let e = outcome(RoundKind::Train, &result(poisoned, 2), &cx)
        .err()
        .ok_or("a poisoned sum must fail")?;
    assert!(
        matches!(
            e,
            OutcomeError::Rejected(DecodeError::Quant(QuantError::ElementOutOfRange {
                index: 1,
                ..
            }))
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("aggregate rejected: sum element 1 = ") && msg.contains("clip 4"),
        "{msg}"
    );
    // A negative weight is rejected the same way.
    let mut light = honest.to_signed();
    light[3] = 1;
    let light = RingVec::U32(light.iter().map(|&v| v as u32).collect());
    assert!(matches!(
        outcome(RoundKind::Train, &result(light, 2), &cx),
        Err(OutcomeError::Rejected(DecodeError::Quant(
            QuantError::WeightOutOfRange { total: 1, .. }
        )))
    ));
    // Metric slots that cannot be counts.
    let mut metrics = honest.to_signed();
    metrics[4] = 5; // Σcorrect 5 > Σexamples 4
    let metrics = RingVec::U32(metrics.iter().map(|&v| v as u32).collect());
    let e = outcome(RoundKind::Train, &result(metrics, 2), &cx)
        .err()
        .ok_or("inconsistent metrics must fail")?;
    assert!(e.to_string().contains("Σcorrect = 5"), "{e}");
    Ok(())
}

#[test]
fn poisoned_statistics_are_rejected_with_their_reason() -> Result<(), Box<dyn std::error::Error>> {
    let a = stats::encode_stats(&[2.0], &[4.0], 1, 16, 10)?;
    let b = stats::encode_stats(&[-2.0], &[4.0], 1, 16, 10)?;
    let mut sum = a.clone();
    add_assign(&mut sum, &b);
    assert!(decode_statistics(&RingVec::U64(sum.clone()), 1, 16, 2, 10).is_ok());
    // A site that adds a negative Σx²: the variance would be clamped to 0 and
    // the feature scaled by 1/STD_FLOOR.
    let poison = stats::encode_stats(&[0.0], &[0.0], 0, 16, 10)?;
    let mut bad = sum.clone();
    add_assign(&mut bad, &poison);
    bad[1] = bad[1].wrapping_sub(9 << 16);
    let e = decode_statistics(&RingVec::U64(bad), 1, 16, 3, 10)
        .err()
        .ok_or("negative Σx² must fail")?;
    assert!(
        matches!(e, OutcomeError::Rejected(DecodeError::OutOfRange { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("Σx² of feature 0"), "{e}");
    // Σx² that is positive but below (Σx)²/n.
    let mut low = sum;
    low[0] = low[0].wrapping_add(8 << 16); // Σx = 8 over 2 rows: Σx² ≥ 32
    let e = decode_statistics(&RingVec::U64(low), 1, 16, 2, 10)
        .err()
        .ok_or("a negative variance must fail")?;
    assert!(e.to_string().contains("variance"), "{e}");
    Ok(())
}

/// Two tensors over three decode blocks: the in-place, block-by-block step
/// gives exactly what a whole decode and a step of the flat model give, and
/// a poisoned element far from the first block is named by its index in the
/// whole sum, with nothing changed.
#[test]
fn training_in_place_block_by_block_matches_a_whole_decode()
-> Result<(), Box<dyn std::error::Error>> {
    let q = quant()?;
    let (na, nb) = (100_000usize, 50_000usize);
    let d = na + nb;
    let mut m = Model::new();
    let vals = |n: usize, k: f32| {
        (0..n)
            .map(|i| ((i % 13) as f32 - 6.0) * k)
            .collect::<Vec<f32>>()
    };
    m.insert("a", Tensor::new(vec![na], vals(na, 0.1))?);
    m.insert("b", Tensor::new(vec![10, nb / 10], vals(nb, -0.2))?);
    let s = OptimiserSettings::default();
    let opt = ServerOptimiser::new(OptimiserKind::FedAdam, &s, d);
    let (u1, u2) = (vals(d, 0.05), vals(d, -0.03));
    let sum = summed(&q, &[(&u1, 2, [1, 2, 10]), (&u2, 3, [2, 2, 10])])?;

    let whole = layout::decode_sum(&q, &sum, d, 2)?;
    let mut want = m.flatten();
    let mut want_opt = opt.clone();
    want_opt.step(&mut want, &whole.mean)?;

    let (mut got, mut got_opt) = (m.clone(), opt.clone());
    let t = train(
        &q,
        &result(sum.clone(), 2),
        d,
        1 << 30,
        &mut got,
        &mut got_opt,
    )?;
    assert_eq!(t.total_weight, 5);
    assert_eq!(got.flatten(), want);
    assert_eq!(got_opt, want_opt);

    let mut poisoned = sum.to_signed();
    poisoned[120_000] = i64::try_from(q.element_limit(2, 5))? + 1;
    let poisoned = RingVec::U32(poisoned.iter().map(|&v| v as u32).collect());
    let (mut same, mut same_opt) = (m.clone(), opt.clone());
    let e = train(
        &q,
        &result(poisoned, 2),
        d,
        1 << 30,
        &mut same,
        &mut same_opt,
    )
    .err()
    .ok_or("a poisoned sum must fail")?;
    assert!(
        matches!(
            e,
            OutcomeError::Rejected(DecodeError::Quant(QuantError::ElementOutOfRange {
                index: 120_000,
                ..
            }))
        ),
        "{e}"
    );
    assert_eq!((same, same_opt), (m, opt));
    Ok(())
}

/// A step that would overflow an F16 tensor fails before anything changes.
#[test]
fn a_step_its_dtype_cannot_hold_changes_nothing() -> Result<(), Box<dyn std::error::Error>> {
    use confide_proto::model::Dtype;
    let q = quant()?;
    let mut m = Model::new();
    m.insert("g", Tensor::new(vec![2], vec![0.0, 0.0])?);
    m.insert(
        "h",
        Tensor::new(vec![1], vec![65_518.0])?.with_dtype(Dtype::F16),
    );
    let opt = ServerOptimiser::new(OptimiserKind::FedAvg, &OptimiserSettings::default(), 3);
    let sum = summed(
        &q,
        &[
            (&[1.0, 1.0, 3.0], 1, [0, 0, 0]),
            (&[1.0, 1.0, 3.0], 1, [0, 0, 0]),
        ],
    )?;
    let (mut got, mut got_opt) = (m.clone(), opt.clone());
    let e = train(&q, &result(sum, 2), 3, 1 << 20, &mut got, &mut got_opt)
        .err()
        .ok_or("65521 does not fit F16")?;
    assert!(e.to_string().contains("tensor 'h' element 0"), "{e}");
    assert_eq!((got, got_opt), (m, opt));
    Ok(())
}
