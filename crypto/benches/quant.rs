//! A site's quantisation of a 10⁶-element update (stochastic rounding to the
//! ring), against a plain f32 → u32 cast of the same vector measured in the
//! same run (the floor of any per-element encode).

use std::hint::black_box;

use confide_crypto::quant::{QuantConfig, Quantiser};
use confide_crypto::ring::Ring;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha12Rng;
use rand_core::SeedableRng;

const LEN: usize = 1_000_000;

fn encode(c: &mut Criterion) {
    // Updates of both signs, as a trained delta has.
    let update: Vec<f32> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect();
    let q = Quantiser::new(&QuantConfig::new(Ring::U32, 1.0, 10_000, 100)).expect("config");
    let mut rng = ChaCha12Rng::seed_from_u64(1);
    let mut group = c.benchmark_group("quantise_1M");
    group.throughput(Throughput::Elements(LEN as u64));
    group.bench_function("baseline_cast", |b| {
        b.iter(|| {
            black_box(&update)
                .iter()
                .map(|&x| (x * 1000.0) as i32 as u32)
                .collect::<Vec<u32>>()
        })
    });
    group.bench_function("encode_u32", |b| {
        b.iter(|| q.encode::<u32>(black_box(&update), 16, &[], &mut rng))
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
