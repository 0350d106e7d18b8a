//! Keystream throughput for 1 MiB of output: the constant-time portable
//! (bitsliced) path, the old T-table path it replaced (not constant-time,
//! kept for comparison only), each SIMD backend the CPU supports, and the
//! RustCrypto `sm4` crate block by block.
//!
//! `ratios` then prints, from one run, the median over interleaved
//! repetitions of each keystream path as GB/s and as a ratio to a plain
//! wrapping add of two `u32` vectors over the same 1 MiB measured alongside
//! (the ratio says how much slower than streaming through memory once).

use std::hint::black_box;
use std::time::{Duration, Instant};

use confide_crypto::simd::Backend;
use confide_crypto::sm4fast::Sm4Keystream;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sm4::cipher::{BlockCipherEncrypt, KeyInit};

const LEN: usize = 1 << 20;
const KEY: [u8; 16] = *b"confide-sm4-key!";

fn keystream(c: &mut Criterion) {
    let ks = Sm4Keystream::new(&KEY);
    let mut out = vec![0u8; LEN];
    let mut group = c.benchmark_group("sm4_ctr_keystream_1MiB");
    group.throughput(Throughput::Bytes(LEN as u64));

    group.bench_function("portable (constant-time, bitsliced)", |b| {
        b.iter(|| ks.keystream_portable(black_box(1), black_box(&mut out)))
    });
    group.bench_function("old T-table (not constant-time)", |b| {
        b.iter(|| ks.keystream_table(black_box(1), black_box(&mut out)))
    });
    for backend in Backend::ALL {
        if backend == Backend::Portable {
            continue;
        }
        if !backend.is_supported() {
            println!("skipping {backend:?}: not supported by this CPU");
            continue;
        }
        group.bench_function(format!("{backend:?}"), |b| {
            b.iter(|| ks.keystream_with(backend, black_box(1), black_box(&mut out)))
        });
    }
    group.bench_function(format!("dispatch ({:?})", Backend::detect()), |b| {
        b.iter(|| ks.keystream(black_box(1), black_box(&mut out)))
    });

    let cipher = sm4::Sm4::new(&KEY.into());
    group.bench_function("sm4 crate block-by-block", |b| {
        b.iter(|| {
            let (blocks, _) = out.as_chunks_mut::<16>();
            for (i, blk) in blocks.iter_mut().enumerate() {
                *blk = (1u128 + i as u128).to_be_bytes();
                cipher.encrypt_block(blk.into());
            }
            black_box(&mut out);
        })
    });
    group.finish();
}

/// Repetitions per path; the paths take turns so that noise from other
/// processes on the machine hits them alike.
const REPS: usize = 31;

/// A named path: fills the keystream buffer (or, for the baseline, adds into
/// the `u32` vector).
type Path<'a> = (String, Box<dyn FnMut(&mut [u8], &mut [u32]) + 'a>);

/// One timed repetition: runs `f` until at least 2 ms have passed and returns
/// the time per call.
fn time_per_call(f: &mut dyn FnMut()) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    loop {
        f();
        calls += 1;
        let spent = start.elapsed();
        if spent >= Duration::from_millis(2) {
            return spent / calls;
        }
    }
}

fn ratios(_: &mut Criterion) {
    let ks = &Sm4Keystream::new(&KEY);
    let mut out = vec![0u8; LEN];
    let mut acc = vec![0u32; LEN / 4];
    let other: &[u32] = &(0..(LEN / 4) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect::<Vec<_>>();

    let mut paths: Vec<Path> = vec![
        (
            "u32 vector add (baseline)".into(),
            Box::new(move |_, acc| {
                for (a, x) in acc.iter_mut().zip(black_box(other)) {
                    *a = a.wrapping_add(*x);
                }
            }),
        ),
        (
            "portable, constant-time".into(),
            Box::new(move |out, _| ks.keystream_portable(black_box(1), out)),
        ),
        (
            "old T-table (comparison only)".into(),
            Box::new(move |out, _| ks.keystream_table(black_box(1), out)),
        ),
    ];
    for backend in Backend::ALL {
        if backend != Backend::Portable && backend.is_supported() {
            paths.push((
                format!("{backend:?}"),
                Box::new(move |out, _| {
                    ks.keystream_with(backend, black_box(1), out);
                }),
            ));
        }
    }

    let mut samples = vec![Vec::with_capacity(REPS); paths.len()];
    for _ in 0..REPS {
        for ((_, f), s) in paths.iter_mut().zip(&mut samples) {
            s.push(time_per_call(&mut || {
                f(&mut out, &mut acc);
                black_box((&out, &acc));
            }));
        }
    }
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect();
    println!("\nSM4-CTR keystream, 1 MiB, median of {REPS} interleaved repetitions:");
    println!(
        "{:<30} {:>9} {:>8} {:>13} {:>11}",
        "path", "µs", "GB/s", "GB/s ÷ add", "time ÷ add"
    );
    for ((name, _), m) in paths.iter().zip(&medians) {
        let gbs = LEN as f64 / m.as_secs_f64() / 1e9;
        let ratio = medians[0].as_secs_f64() / m.as_secs_f64();
        let us = m.as_secs_f64() * 1e6;
        println!(
            "{name:<30} {us:>9.1} {gbs:>8.3} {ratio:>13.5} {:>11.1}",
            1.0 / ratio
        );
    }
    black_box(&acc);
}

criterion_group!(benches, keystream, ratios);
criterion_main!(benches);
