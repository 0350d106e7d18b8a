//! Pure pieces of the site's wire handling: the site's side of the shared
//! vector layouts ([`confide_proto::layout`], fed from its own training
//! results), reassembling a model download with bounds, and the reconnect
//! backoff schedule. No I/O, so all of it is unit tested.

use std::time::Duration;

use confide_crypto::quant::Quantiser;
use confide_crypto::ring::RingElement;
use confide_proto::layout::{self, LayoutError, Metrics};
use confide_proto::v1;
use rand::{CryptoRng, Rng};

use crate::error::ClientError;
use crate::train::{EvalResult, FeatureStats};

pub use confide_proto::layout::{EVAL_LEN, EXTRA_SLOTS, masked_input_chunks, train_len};

/// Hard ceiling on a downloaded model, whatever the coordinator announces
/// (64 GiB: 16·10⁹ f32 parameters, beyond what a site trains, and no 32-bit
/// boundary; the announced size is the limit that matters). The assembler
/// reserves at most 64 MiB before data arrives, so a claimed size costs
/// nothing.
pub const MAX_MODEL_BYTES: u64 = 64 << 30;

/// The metric slots of an evaluation ([`Metrics`] in the shared layout).
pub fn metrics(e: &EvalResult) -> Metrics {
    Metrics::new(e.correct, e.num_examples, e.loss_sum)
}

/// The metric slots of an evaluation: `[correct, examples, round(loss_sum·1000)]`.
pub fn eval_extras(e: &EvalResult) -> [i64; EXTRA_SLOTS] {
    metrics(e).slots()
}

/// Refuses NaN and infinities in a local update before anything is quantised.
pub fn check_finite(update: &[f32]) -> Result<(), ClientError> {
    Ok(layout::check_finite(update)?)
}

/// TRAIN: `[q(delta)…, weight, correct, examples, loss_milli]`, in `buf`'s
/// memory (an earlier round's vector, or empty).
pub fn train_vector<R: RingElement>(
    q: &Quantiser,
    delta: &[f32],
    weight: u64,
    eval: Option<&EvalResult>,
    rng: &mut impl CryptoRng,
    buf: Vec<R>,
) -> Result<Vec<R>, ClientError> {
    Ok(layout::train_vector(
        q,
        delta,
        weight,
        eval.map(metrics),
        rng,
        buf,
    )?)
}

/// EVALUATE: `[1, correct, examples, loss_milli]`.
pub fn eval_vector<R: RingElement>(
    q: &Quantiser,
    eval: &EvalResult,
    rng: &mut impl CryptoRng,
) -> Result<Vec<R>, ClientError> {
    Ok(layout::eval_vector(q, metrics(eval), rng)?)
}

/// STATISTICS: `[Σx·2^b…, Σx²·2^b…, n]` in the u64 ring.
pub fn stats_vector(
    stats: &FeatureStats,
    bits: u32,
    max_cohort: usize,
) -> Result<Vec<u64>, ClientError> {
    Ok(layout::statistics_vector(stats, bits, max_cohort)?)
}

impl From<LayoutError> for ClientError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::NonFinite { index, value } => {
                ClientError::NonFiniteUpdate { index, value }
            }
            LayoutError::Quant(q) => ClientError::Quant(q),
            LayoutError::Stats(s) => ClientError::Stats(s),
            LayoutError::StatisticsRing(ring) => {
                ClientError::InvalidRound(format!("statistics rounds use the u64 ring, not {ring}"))
            }
        }
    }
}

/// Reassembles a streamed model: chunks must arrive in order, agree on the
/// total, and stay within both the announced size and a hard limit.
#[derive(Debug)]
pub struct ModelAssembler {
    limit: u64,
    total: Option<u64>,
    buf: Vec<u8>,
}

impl ModelAssembler {
    /// `announced` is `RoundStart.model_bytes` (0 = not announced); the
    /// effective limit is the smaller of it and [`MAX_MODEL_BYTES`].
    pub fn new(announced: u64) -> Self {
        let limit = if announced == 0 {
            MAX_MODEL_BYTES
        } else {
            announced.min(MAX_MODEL_BYTES)
        };
        ModelAssembler {
            limit,
            total: None,
            buf: Vec::new(),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// Appends one chunk.
    pub fn push(&mut self, c: &v1::ModelChunk) -> Result<(), ClientError> {
        let err = |m: String| Err(ClientError::Download(m));
        if c.total_len > self.limit {
            return err(format!(
                "model of {} bytes exceeds the limit of {} bytes",
                c.total_len, self.limit
            ));
        }
        match self.total {
            None => {
                self.total = Some(c.total_len);
                // Reserve at most 64 MiB up front: a claimed total is not yet data.
                self.buf.reserve_exact(c.total_len.min(64 << 20) as usize);
            }
            Some(t) if t != c.total_len => {
                return err(format!(
                    "chunk says total {} bytes, earlier chunks said {t}",
                    c.total_len
                ));
            }
            Some(_) => {}
        }
        if c.offset != self.buf.len() as u64 {
            return err(format!(
                "chunk at offset {} but {} bytes received so far (out of order)",
                c.offset,
                self.buf.len()
            ));
        }
        if c.offset + c.data.len() as u64 > c.total_len {
            return err(format!(
                "chunk at offset {} of {} bytes runs past the total of {}",
                c.offset,
                c.data.len(),
                c.total_len
            ));
        }
        self.buf.extend_from_slice(&c.data);
        Ok(())
    }

    /// The complete model bytes.
    pub fn finish(self) -> Result<Vec<u8>, ClientError> {
        match self.total {
            Some(t) if t == self.buf.len() as u64 && t > 0 => Ok(self.buf),
            Some(t) => Err(ClientError::Download(format!(
                "stream ended after {} of {t} bytes",
                self.buf.len()
            ))),
            None => Err(ClientError::Download("empty model stream".into())),
        }
    }
}

/// Exponential backoff with jitter: attempt i waits a uniform time in
/// `[d/2, d]` with `d = min(max, base·2^i)`, so many sites that lost the
/// coordinator together do not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of attempt `attempt` (before jitter).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let span = (d - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rng.next_u64() % (span + 1)
        };
        half + Duration::from_micros(jitter)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_crypto::Ring;
    use confide_crypto::quant::QuantConfig;
    use confide_crypto::stats::{decode_stats, stats_len};

    fn quantiser(ring: Ring) -> Result<Quantiser, ClientError> {
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

    #[test]
    fn train_vector_layout() -> Result<(), ClientError> {
        let q = quantiser(Ring::U32)?;
        let mut rng = rand::rng();
        let eval = EvalResult {
            num_examples: 20,
            correct: 17,
            loss_sum: 3.25,
        };
        let v: Vec<u32> =
            train_vector(&q, &[0.5, -0.25, 0.0], 7, Some(&eval), &mut rng, Vec::new())?;
        assert_eq!(v.len(), train_len(3));
        assert_eq!(&v[3..], &[7, 17, 20, 3250]);
        // 0.5 · weight 7 · scale 1000 = 3500 exactly (no rounding needed).
        assert_eq!(v[0], 3500);
        assert_eq!(v[1].to_signed(), -1750);
        // An earlier vector's memory is reused, its values replaced.
        let mut buf = Vec::with_capacity(16);
        buf.extend([9u64; 7]);
        let at = buf.as_ptr();
        let v: Vec<u64> = train_vector(&q64()?, &[0.5], 2, None, &mut rng, buf)?;
        assert_eq!(v, vec![1000, 2, 0, 0, 0]);
        assert_eq!(v.as_ptr(), at);
        Ok(())
    }

    fn q64() -> Result<Quantiser, ClientError> {
        quantiser(Ring::U64)
    }

    #[test]
    fn non_finite_updates_are_refused_before_quantising() -> Result<(), ClientError> {
        let q = quantiser(Ring::U32)?;
        let mut rng = rand::rng();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let r = train_vector::<u32>(&q, &[0.1, bad], 5, None, &mut rng, Vec::new());
            assert!(
                matches!(r, Err(ClientError::NonFiniteUpdate { index: 1, .. })),
                "{r:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn eval_and_stats_layouts() -> Result<(), ClientError> {
        let q = quantiser(Ring::U32)?;
        let mut rng = rand::rng();
        let eval = EvalResult {
            num_examples: 4,
            correct: 3,
            loss_sum: 0.0015,
        };
        let v: Vec<u32> = eval_vector(&q, &eval, &mut rng)?;
        assert_eq!(v, vec![1, 3, 4, 2]);
        let stats = FeatureStats {
            n: 3,
            sum: vec![1.5, -2.0],
            sum_sq: vec![4.0, 9.25],
        };
        let v = stats_vector(&stats, 16, 10)?;
        assert_eq!(v.len(), stats_len(2));
        let (s, q2, n) = decode_stats(&v, 2, 16)?;
        assert_eq!((s, q2, n), (stats.sum.clone(), stats.sum_sq.clone(), 3));
        Ok(())
    }

    fn chunk(offset: u64, data: &[u8], total_len: u64) -> v1::ModelChunk {
        v1::ModelChunk {
            offset,
            data: data.to_vec().into(),
            total_len,
        }
    }

    #[test]
    fn model_reassembly_in_order() -> Result<(), ClientError> {
        let mut a = ModelAssembler::new(6);
        a.push(&chunk(0, b"abc", 6))?;
        a.push(&chunk(3, b"def", 6))?;
        assert_eq!(a.finish()?, b"abcdef");
        Ok(())
    }

    #[test]
    fn model_reassembly_keeps_sizes_and_offsets_above_four_gib() -> Result<(), ClientError> {
        let total = 5u64 << 30;
        let mut a = ModelAssembler::new(total);
        // A 5 GiB total is taken as announced (only 64 MiB reserved).
        a.push(&chunk(0, b"abc", total))?;
        assert!(a.buf.capacity() <= 64 << 20);
        // 2^32 + 3 is not offset 3: a 32-bit comparison would take it.
        assert!(a.push(&chunk((1 << 32) + 3, b"d", total)).is_err());
        a.push(&chunk(3, b"d", total))?;
        // A total that differs only above bit 32 is another total.
        assert!(a.push(&chunk(4, b"e", total - (1 << 32))).is_err());
        assert!(a.finish().is_err(), "4 of 5 GiB is not the model");
        Ok(())
    }

    #[test]
    fn model_reassembly_refuses_bad_streams() {
        // Out of order.
        let mut a = ModelAssembler::new(0);
        assert!(a.push(&chunk(3, b"def", 6)).is_err());
        // Larger than announced.
        let mut a = ModelAssembler::new(5);
        assert!(a.push(&chunk(0, b"abc", 6)).is_err());
        // Larger than the hard limit even when nothing was announced.
        let mut a = ModelAssembler::new(0);
        assert!(a.push(&chunk(0, b"a", MAX_MODEL_BYTES + 1)).is_err());
        // Data past the declared total.
        let mut a = ModelAssembler::new(0);
        assert!(a.push(&chunk(0, b"abcdefg", 6)).is_err());
        // Totals that change midway.
        let mut a = ModelAssembler::new(0);
        assert!(a.push(&chunk(0, b"abc", 6)).is_ok());
        assert!(a.push(&chunk(3, b"def", 7)).is_err());
        // Truncated and empty streams.
        let mut a = ModelAssembler::new(0);
        assert!(a.push(&chunk(0, b"abc", 6)).is_ok());
        assert!(a.finish().is_err());
        assert!(ModelAssembler::new(0).finish().is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = rand::rng();
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000];
        for &c in &ceilings {
            let d = b.next_delay(&mut rng);
            let c = Duration::from_millis(c);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
        // Jitter actually varies.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let ds: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| b.next_delay(&mut rng)).collect();
        assert!(ds.len() > 1);
    }
}
