//! Shamir split / reconstruct timings for SecAgg+ neighbourhood sizes.

use std::hint::black_box;

use confide_crypto::shamir::{Reconstructor, reconstruct, split};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// (number of shares k, threshold t)
const CASES: [(usize, usize); 2] = [(15, 8), (100, 51)];

fn benches(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x5eca99);
    let secret = [0x5a; 32];
    for (k, t) in CASES {
        let xs: Vec<u32> = (1..=k as u32).collect();
        let shares = split(&secret, t, &xs, &mut rng).expect("split");
        let reconstructor = Reconstructor::new(&xs, t).expect("reconstructor");
        let id = format!("k{k}_t{t}");

        let mut group = c.benchmark_group("shamir");
        group.bench_function(BenchmarkId::new("split", &id), |b| {
            b.iter(|| split(black_box(&secret), t, black_box(&xs), &mut rng).expect("split"))
        });
        group.bench_function(BenchmarkId::new("reconstruct_prebuilt", &id), |b| {
            b.iter(|| {
                reconstructor
                    .reconstruct(black_box(&shares))
                    .expect("reconstruct")
            })
        });
        group.bench_function(
            BenchmarkId::new("reconstruct_prebuilt_exactly_t", &id),
            |b| {
                let exact = Reconstructor::new(&xs[..t], t).expect("reconstructor");
                b.iter(|| {
                    exact
                        .reconstruct(black_box(&shares[..t]))
                        .expect("reconstruct")
                })
            },
        );
        group.bench_function(BenchmarkId::new("reconstructor_new", &id), |b| {
            b.iter(|| Reconstructor::new(black_box(&xs), t).expect("reconstructor"))
        });
        group.bench_function(BenchmarkId::new("reconstruct_with_new", &id), |b| {
            b.iter(|| reconstruct(black_box(&shares), t).expect("reconstruct"))
        });
        group.finish();
    }
}

criterion_group!(shamir_benches, benches);
criterion_main!(shamir_benches);
