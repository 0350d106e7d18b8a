use super::*;
use confide_crypto::Ring;
use confide_crypto::quant::QuantConfig;
use confide_crypto::ring;

fn quantiser(ring: Ring) -> Result<Quantiser, LayoutError> {
    Ok(Quantiser::new(&QuantConfig {
        ring,
        clip: 1.0,
        max_weight: 1000,
        max_cohort: 10,
        scale: Some(1000.0),
        levels: None,
        bits: None,
        min_levels: 1,
    })?)
}

fn add<R: RingElement>(vs: &[Vec<R>]) -> Vec<R> {
    let mut sum = vec![R::default(); vs[0].len()];
    for v in vs {
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}

#[test]
fn train_vector_slots_are_in_the_documented_order() -> Result<(), LayoutError> {
    let q = quantiser(Ring::U32)?;
    let mut rng = rand::rng();
    let m = Metrics::new(17, 20, 3.25);
    let v: Vec<u32> = train_vector(&q, &[0.5, -0.25, 0.0], 7, Some(m), &mut rng, Vec::new())?;
    assert_eq!(v.len(), train_len(3));
    assert_eq!(&v[3..], &[7, 17, 20, 3250]);
    // 0.5 · weight 7 · scale 1000 = 3500 exactly.
    assert_eq!(v[0], 3500);
    let v: Vec<u64> = train_vector(
        &quantiser(Ring::U64)?,
        &[0.5],
        2,
        None,
        &mut rng,
        Vec::new(),
    )?;
    assert_eq!(v, vec![1000, 2, 0, 0, 0]);
    let e: Vec<u32> = eval_vector(&q, Metrics::new(3, 4, 0.0015), &mut rng)?;
    assert_eq!(e, vec![1, 3, 4, 2]);
    assert_eq!(e.len(), EVAL_LEN);
    Ok(())
}

#[test]
fn non_finite_updates_are_refused_with_their_index() -> Result<(), LayoutError> {
    let q = quantiser(Ring::U32)?;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let r = train_vector::<u32>(&q, &[0.1, bad], 5, None, &mut rand::rng(), Vec::new());
        assert!(
            matches!(r, Err(LayoutError::NonFinite { index: 1, .. })),
            "{r:?}"
        );
    }
    assert_eq!(Metrics::new(1, 2, f64::NAN).loss_milli, i64::MAX);
    assert_eq!(Metrics::new(u64::MAX, 2, 0.0).correct, i64::MAX);
    Ok(())
}

/// A loss too large for its slot saturates at the slot's bound (the site
/// still contributes its update); counts beyond the bound stay an error.
#[test]
fn a_loss_beyond_its_slot_saturates_and_the_update_still_goes()
-> Result<(), Box<dyn std::error::Error>> {
    let q = quantiser(Ring::U32)?;
    let bound = q.extra_bound();
    let mut rng = rand::rng();
    let huge = Metrics::new(3, 4, bound as f64);
    let v: Vec<u32> = train_vector(&q, &[0.5], 2, Some(huge), &mut rng, Vec::new())?;
    let d = decode_sum(&q, &RingVec::from(v), 1, 1)?;
    assert!((d.mean[0] - 0.5).abs() < 1e-3, "{:?}", d.mean);
    let m = d.metrics.ok_or("metrics")?;
    assert_eq!(m.slots(), [3, 4, bound]);
    let e: Vec<u32> = eval_vector(&q, Metrics::new(1, 2, f64::INFINITY), &mut rng)?;
    assert_eq!(e[3] as i64, bound);
    let too_many = Metrics::new(1, bound as u64 + 1, 0.5);
    assert!(train_vector::<u32>(&q, &[0.5], 2, Some(too_many), &mut rng, Vec::new()).is_err());
    Ok(())
}

/// What one site encodes, the coordinator decodes from the cohort's sum.
#[test]
fn a_summed_cohort_decodes_to_its_weighted_mean_and_metrics()
-> Result<(), Box<dyn std::error::Error>> {
    for ring in [Ring::U32, Ring::U64] {
        let q = quantiser(ring)?;
        let mut rng = rand::rng();
        let sites = [
            (vec![0.5f32, -0.5], 1u64, Metrics::new(8, 10, 2.0)),
            (vec![0.25, 0.25], 3, Metrics::new(9, 10, 1.0)),
        ];
        let sum = match ring {
            Ring::U32 => {
                let mut vs = Vec::new();
                for (d, w, m) in &sites {
                    vs.push(train_vector::<u32>(
                        &q,
                        d,
                        *w,
                        Some(*m),
                        &mut rng,
                        Vec::new(),
                    )?);
                }
                RingVec::from(add(&vs))
            }
            Ring::U64 => {
                let mut vs = Vec::new();
                for (d, w, m) in &sites {
                    vs.push(train_vector::<u64>(
                        &q,
                        d,
                        *w,
                        Some(*m),
                        &mut rng,
                        Vec::new(),
                    )?);
                }
                RingVec::from(add(&vs))
            }
        };
        let d = decode_sum(&q, &sum, 2, sites.len())?;
        assert_eq!(d.total_weight, 4);
        assert!((d.mean[0] - 0.3125).abs() < 1e-3, "{ring}: {:?}", d.mean);
        assert!((d.mean[1] - 0.0625).abs() < 1e-3, "{ring}: {:?}", d.mean);
        let m = d.metrics.ok_or(LayoutError::StatisticsRing(ring))?;
        assert_eq!(m.slots(), [17, 20, 3000]);
        assert_eq!(m.accuracy(), Some(0.85));
        assert_eq!(m.mean_loss(), Some(0.15));
    }
    assert_eq!(Metrics::from_slots(&[1, 2]), None);
    assert_eq!(Metrics::default().accuracy(), None);
    Ok(())
}

#[test]
fn statistics_round_trip_and_need_the_u64_ring() -> Result<(), Box<dyn std::error::Error>> {
    let a = FeatureStats {
        n: 3,
        sum: vec![1.5, -2.0],
        sum_sq: vec![4.0, 9.25],
    };
    let b = FeatureStats {
        n: 1,
        sum: vec![0.5, 1.0],
        sum_sq: vec![0.25, 1.0],
    };
    let sum = add(&[
        statistics_vector(&a, 16, 10)?,
        statistics_vector(&b, 16, 10)?,
    ]);
    assert_eq!(sum.len(), statistics_len(2));
    let total = decode_statistics(&RingVec::from(sum), 2, 16, 2, 10)?;
    assert_eq!(
        total,
        FeatureStats {
            n: 4,
            sum: vec![2.0, -1.0],
            sum_sq: vec![4.25, 10.25]
        }
    );
    let wrong = decode_statistics(&RingVec::zeros(Ring::U32, 5), 2, 16, 2, 10);
    assert!(matches!(wrong, Err(DecodeError::StatisticsRing(Ring::U32))));
    assert!(decode_statistics(&RingVec::zeros(Ring::U64, 4), 2, 16, 2, 10).is_err());
    Ok(())
}

#[test]
fn chunks_cover_the_vector_in_order_within_the_size_limit() -> Result<(), LayoutError> {
    let n = MASKED_CHUNK_BYTES / 4 * 2 + 5;
    let v: Vec<u32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let set = confide_crypto::protocol::MaskingSet {
        round: 9,
        member: 2,
        peers: vec![1, 3],
        signature: vec![5; 64],
    };
    let plain = Packing::plain(Ring::U32, n);
    let chunks = ring_vec_chunks("s", 9, &RingVec::from(v.clone()), Some(&set), &plain);
    assert_eq!(chunks.len(), 4);
    // Only the first chunk carries the signed masking set, and no data.
    assert!(chunks[0].data.is_empty());
    assert_eq!(
        chunks[0]
            .masking
            .as_ref()
            .map(crate::convert::masking_set_from_proto),
        Some(set)
    );
    assert!(chunks[1..].iter().all(|c| c.masking.is_none()));
    let mut back = Vec::new();
    for c in &chunks {
        assert!(c.data.len() <= MASKED_CHUNK_BYTES);
        assert_eq!(c.offset as usize, back.len());
        assert_eq!(
            (c.total_len, c.round, c.session.as_str()),
            (n as u64, 9, "s")
        );
        back.extend(
            ring::from_le_bytes::<u32>(&c.data)
                .map_err(|_| LayoutError::StatisticsRing(Ring::U32))?,
        );
    }
    assert_eq!(back, v);
    let n = MASKED_CHUNK_BYTES / 8 + 1;
    let plain = Packing::plain(Ring::U64, n);
    let chunks = masked_input_chunks("s", 1, &vec![u64::MAX; n], None, &plain);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2].offset as usize, MASKED_CHUNK_BYTES / 8);
    Ok(())
}

/// A TRAIN vector announced at 24 bits travels at three bytes per model
/// slot, in chunks of whole bytes and whole elements; other kinds unpacked.
#[test]
fn train_vectors_travel_packed_at_the_announced_bits() -> Result<(), PackError> {
    let d = MASKED_CHUNK_BYTES / 3 + 100;
    let mut rs = v1::RoundStart {
        kind: v1::RoundKind::Train as i32,
        vector_len: train_len(d) as u64,
        quantisation: Some(v1::Quantisation {
            bits: 24,
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = round_packing(&rs, Ring::U32);
    assert_eq!((p.bits(), p.packed(), p.len()), (24, d, train_len(d)));
    assert_eq!(p.total_bytes(), 3 * d + 4 * (1 + EXTRA_SLOTS));
    let v: Vec<u32> = (0..train_len(d) as u32)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let chunks = masked_input_chunks("s", 1, &v, None, &p);
    let data: Vec<_> = chunks[1..]
        .iter()
        .map(|c| (c.offset, c.data.len()))
        .collect();
    let tail = (1 + EXTRA_SLOTS) * 4;
    assert_eq!(data.len(), 3, "{data:?}");
    // Packed chunks start on multiples of 8 elements; the tail after them.
    assert!(
        data[..2]
            .iter()
            .all(|&(o, len)| o % 8 == 0 && len <= MASKED_CHUNK_BYTES)
    );
    assert_eq!(data.iter().map(|d| d.1).sum::<usize>(), p.total_bytes());
    assert_eq!(data[2], (d as u64, tail));
    let mut sum = RingVec::zeros(Ring::U32, v.len());
    for c in &chunks[1..] {
        p.add_into(&mut sum, c.offset as usize, &c.data)?;
    }
    let want: Vec<u32> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| if i < d { x & 0xFF_FFFF } else { x })
        .collect();
    assert_eq!(sum, RingVec::from(want));
    for kind in [v1::RoundKind::Evaluate, v1::RoundKind::Statistics] {
        rs.kind = kind as i32;
        assert_eq!(
            round_packing(&rs, Ring::U32),
            Packing::plain(Ring::U32, train_len(d))
        );
    }
    // No width announced (an older coordinator): unpacked.
    rs.kind = v1::RoundKind::Train as i32;
    rs.quantisation = None;
    assert_eq!(
        round_packing(&rs, Ring::U32),
        Packing::plain(Ring::U32, train_len(d))
    );
    Ok(())
}

/// A sum with the given slots, as a TRAIN sum of a one-parameter model
/// (`[element, weight, correct, examples, loss]`) in the u64 ring.
fn train_sum(weight: i64, correct: i64, examples: i64, loss: i64) -> RingVec {
    RingVec::from(
        [0, weight, correct, examples, loss]
            .map(u64::from_i64)
            .to_vec(),
    )
}

fn out_of_range(r: Result<DecodedSum, DecodeError>) -> Option<(SumSlot, i128)> {
    match r {
        Err(DecodeError::OutOfRange { slot, value, .. }) => Some((slot, value)),
        _ => None,
    }
}

#[test]
fn metric_slots_must_be_consistent_counts() -> Result<(), Box<dyn std::error::Error>> {
    let q = quantiser(Ring::U64)?;
    // Two sites: correct ≤ examples, examples ≥ 0, loss ≥ 0.
    let ok = decode_sum(&q, &train_sum(5, 20, 20, 0), 1, 2)?;
    assert_eq!(ok.metrics.map(|m| m.slots()), Some([20, 20, 0]));
    assert!(decode_sum(&q, &train_sum(5, 0, 0, 0), 1, 2).is_ok());
    let cases = [
        (train_sum(5, 21, 20, 0), SumSlot::Correct, 21),
        (train_sum(5, -1, 20, 0), SumSlot::Correct, -1),
        (train_sum(5, 0, -1, 0), SumSlot::Examples, -1),
        (train_sum(5, 0, 0, -1), SumSlot::LossMilli, -1),
    ];
    for (sum, slot, value) in cases {
        assert_eq!(
            out_of_range(decode_sum(&q, &sum, 1, 2)),
            Some((slot, value))
        );
    }
    let e = decode_sum(&q, &train_sum(5, 21, 20, 0), 1, 2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("Σcorrect = 21") && e.contains("[0, 20]") && e.contains("2 honest"),
        "{e}"
    );
    Ok(())
}

#[test]
fn an_evaluation_sum_carries_one_weight_per_site() -> Result<(), Box<dyn std::error::Error>> {
    let q = quantiser(Ring::U32)?;
    let eval = |w: i64| RingVec::from([w, 3, 4, 10].map(u32::from_i64).to_vec());
    assert_eq!(decode_sum(&q, &eval(3), 0, 3)?.total_weight, 3);
    for w in [4, 5] {
        assert_eq!(
            out_of_range(decode_sum(&q, &eval(w), 0, 3)),
            Some((SumSlot::EvaluationWeight, i128::from(w)))
        );
    }
    // Below the contributor count the quantiser already refuses it.
    assert!(matches!(
        decode_sum(&q, &eval(2), 0, 3),
        Err(DecodeError::Quant(QuantError::WeightOutOfRange { .. }))
    ));
    Ok(())
}

/// A STATISTICS sum over one feature: `[Σx, Σx², rows]` in fixed point.
fn stats_sum(sum: i64, sum_sq: i64, rows: i64) -> RingVec {
    RingVec::from([sum, sum_sq, rows].map(u64::from_i64).to_vec())
}

fn stats_slot(r: Result<FeatureStats, DecodeError>) -> Option<(SumSlot, i128)> {
    match r {
        Err(DecodeError::OutOfRange { slot, value, .. }) => Some((slot, value)),
        _ => None,
    }
}

#[test]
fn statistics_slots_must_be_what_the_sites_can_encode() {
    let (contributors, max_cohort) = (2usize, 4usize);
    let max = (i64::MAX / max_cohort as i64) as f64 as i128 * contributors as i128;
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let dec = |s: &RingVec| decode_statistics(s, 1, 0, contributors, max_cohort);
    // Inside: rows 1 and the extremes of Σx (Σx² large enough to keep the
    // variance non-negative).
    assert!(dec(&stats_sum(0, 0, 1)).is_ok());
    assert!(dec(&stats_sum(0, max, max)).is_ok());
    assert!(dec(&stats_sum(-4, 16, 1)).is_ok());
    // Just outside, slot by slot.
    assert!(matches!(
        dec(&stats_sum(0, 0, 0)),
        Err(DecodeError::Standardise(
            crate::standardise::ValidationError::Unusable(crate::standardise::StatsError::NoRows)
        ))
    ));
    assert_eq!(
        stats_slot(dec(&stats_sum(0, 0, -1))),
        Some((SumSlot::Rows, -1))
    );
    assert_eq!(
        stats_slot(dec(&stats_sum(0, -1, 1))),
        Some((SumSlot::FeatureSumSq(0), -1))
    );
    if max < i64::MAX {
        assert_eq!(
            stats_slot(dec(&stats_sum(0, max + 1, 1))),
            Some((SumSlot::FeatureSumSq(0), i128::from(max) + 1))
        );
        assert_eq!(
            stats_slot(dec(&stats_sum(-max - 1, max, max))),
            Some((SumSlot::FeatureSum(0), -i128::from(max) - 1))
        );
        assert_eq!(
            stats_slot(dec(&stats_sum(0, 0, max + 1))),
            Some((SumSlot::Rows, i128::from(max) + 1))
        );
    }
    // Contributor counts the round cannot have.
    for c in [0, 5] {
        assert!(matches!(
            decode_statistics(&stats_sum(0, 0, 1), 1, 0, c, max_cohort),
            Err(DecodeError::Contributors { .. })
        ));
    }
}

#[test]
fn statistics_with_a_negative_variance_are_refused() -> Result<(), DecodeError> {
    // 16 fractional bits, 2 contributors: each sum is off by ≤ 2·2^-17.
    let bits = 16;
    let fx = |x: f64| (x * f64::from(1u32 << bits)).round() as i64;
    // 4 rows with Σx = 8 (mean 2): honest Σx² ≥ 16.
    let honest = decode_statistics(&stats_sum(fx(8.0), fx(16.0), 4), 1, bits, 2, 10)?;
    assert_eq!(honest.n, 4);
    let poisoned = decode_statistics(&stats_sum(fx(8.0), fx(15.0), 4), 1, bits, 2, 10);
    assert!(
        matches!(
            poisoned,
            Err(DecodeError::Standardise(
                crate::standardise::ValidationError::NegativeVariance { feature: 0, .. }
            ))
        ),
        "{poisoned:?}"
    );
    // One quantum below: within what the rounding explains.
    assert!(decode_statistics(&stats_sum(fx(8.0), fx(16.0) - 1, 4), 1, bits, 2, 10).is_ok());
    Ok(())
}
