//! Keystream throughput for 1 MiB of output: portable, each SIMD backend the
//! CPU supports, and the RustCrypto `sm4` crate block by block.

use std::hint::black_box;

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

    group.bench_function("portable", |b| {
        b.iter(|| ks.keystream_portable(black_box(1), black_box(&mut out)))
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

criterion_group!(benches, keystream);
criterion_main!(benches);
