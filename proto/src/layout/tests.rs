use super::*;
use confide_crypto::Ring;
use confide_crypto::quant::QuantConfig;

fn quantiser(ring: Ring) -> Result<Quantiser, LayoutError> {
    Ok(Quantiser::new(&QuantConfig {
        ring,
        clip: 1.0,
        max_weight: 1000,
        max_cohort: 10,
        scale: Some(1000.0),
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
    let v: Vec<u32> = train_vector(&q, &[0.5, -0.25, 0.0], 7, Some(m), &mut rng)?;
    assert_eq!(v.len(), train_len(3));
    assert_eq!(&v[3..], &[7, 17, 20, 3250]);
    // 0.5 · weight 7 · scale 1000 = 3500 exactly.
    assert_eq!(v[0], 3500);
    let v: Vec<u64> = train_vector(&quantiser(Ring::U64)?, &[0.5], 2, None, &mut rng)?;
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
        let r = train_vector::<u32>(&q, &[0.1, bad], 5, None, &mut rand::rng());
        assert!(
            matches!(r, Err(LayoutError::NonFinite { index: 1, .. })),
            "{r:?}"
        );
    }
    assert_eq!(Metrics::new(1, 2, f64::NAN).loss_milli, i64::MAX);
    assert_eq!(Metrics::new(u64::MAX, 2, 0.0).correct, i64::MAX);
    Ok(())
}

/// What one site encodes, the coordinator decodes from the cohort's sum.
#[test]
fn a_summed_cohort_decodes_to_its_weighted_mean_and_metrics() -> Result<(), LayoutError> {
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
                    vs.push(train_vector::<u32>(&q, d, *w, Some(*m), &mut rng)?);
                }
                RingVec::from(add(&vs))
            }
            Ring::U64 => {
                let mut vs = Vec::new();
                for (d, w, m) in &sites {
                    vs.push(train_vector::<u64>(&q, d, *w, Some(*m), &mut rng)?);
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
fn statistics_round_trip_and_need_the_u64_ring() -> Result<(), LayoutError> {
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
    let total = decode_statistics(&RingVec::from(sum), 2, 16)?;
    assert_eq!(
        total,
        FeatureStats {
            n: 4,
            sum: vec![2.0, -1.0],
            sum_sq: vec![4.25, 10.25]
        }
    );
    let wrong = decode_statistics(&RingVec::zeros(Ring::U32, 5), 2, 16);
    assert!(matches!(wrong, Err(LayoutError::StatisticsRing(Ring::U32))));
    assert!(decode_statistics(&RingVec::zeros(Ring::U64, 4), 2, 16).is_err());
    Ok(())
}

#[test]
fn chunks_cover_the_vector_in_order_within_the_size_limit() -> Result<(), LayoutError> {
    let n = CHUNK_BYTES / 4 * 2 + 5;
    let v: Vec<u32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let set = confide_crypto::protocol::MaskingSet {
        round: 9,
        member: 2,
        peers: vec![1, 3],
        signature: vec![5; 64],
    };
    let chunks = ring_vec_chunks("s", 9, &RingVec::from(v.clone()), Some(&set));
    assert_eq!(chunks.len(), 3);
    // Only the first chunk carries the signed masking set.
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
        assert!(c.data.len() <= CHUNK_BYTES);
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
    let chunks = masked_input_chunks("s", 1, &vec![u64::MAX; CHUNK_BYTES / 8 + 1], None);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1].offset as usize, CHUNK_BYTES / 8);
    Ok(())
}
