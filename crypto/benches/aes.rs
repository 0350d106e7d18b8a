//! AES-128-CTR keystream throughput for 1 MiB of output: each backend the CPU
//! supports (portable = the `aes` crate over laid-out counter blocks), the
//! dispatching entry point, and the `aes` crate's bare `encrypt_blocks`.

use std::hint::black_box;

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use confide_crypto::aesfast::{AesBackend, AesKeystream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LEN: usize = 1 << 20;
const KEY: [u8; 16] = *b"confide-aes-key!";

fn keystream(c: &mut Criterion) {
    let ks = AesKeystream::new(&KEY);
    let mut out = vec![0u8; LEN];
    let mut group = c.benchmark_group("aes128_ctr_keystream_1MiB");
    group.throughput(Throughput::Bytes(LEN as u64));

    for backend in AesBackend::ALL {
        if !backend.is_supported() {
            println!("skipping {backend:?}: not supported by this CPU");
            continue;
        }
        group.bench_function(format!("{backend:?}"), |b| {
            b.iter(|| ks.keystream_with(backend, black_box(1), black_box(&mut out)))
        });
    }
    group.bench_function(format!("dispatch ({:?})", AesBackend::detect()), |b| {
        b.iter(|| ks.keystream(black_box(1), black_box(&mut out)))
    });

    // The `aes` crate alone: encrypt 1 MiB of blocks in place (no counters).
    let cipher = aes::Aes128::new(&KEY.into());
    group.bench_function("aes crate encrypt_blocks", |b| {
        b.iter(|| {
            let (blocks, _) = aes::Block::slice_as_chunks_mut(&mut out);
            cipher.encrypt_blocks(black_box(blocks));
        })
    });
    group.finish();
}

/// The same per backend for an 8 KiB buffer (the PRG's L1-resident scratch).
fn keystream_8k(c: &mut Criterion) {
    const SMALL: usize = 8 << 10;
    let ks = AesKeystream::new(&KEY);
    let mut out = vec![0u8; SMALL];
    let mut group = c.benchmark_group("aes128_ctr_keystream_8KiB");
    group.throughput(Throughput::Bytes(SMALL as u64));
    for backend in AesBackend::ALL {
        if backend.is_supported() {
            group.bench_function(format!("{backend:?}"), |b| {
                b.iter(|| ks.keystream_with(backend, black_box(1), black_box(&mut out)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, keystream, keystream_8k);
criterion_main!(benches);
