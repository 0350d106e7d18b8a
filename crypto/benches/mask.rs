//! Fused mask expand-and-add over a 1M-element Z_2^32 vector (4 MB), against
//! a plain wrapping add of two vectors of the same length measured in the
//! same run (the memory-bound floor).

use std::hint::black_box;

use confide_crypto::prg::{Prg, Sign, apply_masks};
use confide_crypto::sm4fast::Sm4Keystream;
use confide_crypto::suite::Suite;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LEN: usize = 1_000_000;
const KEY: [u8; 16] = *b"confide-mask-key";

fn fused(c: &mut Criterion) {
    let mut acc = vec![0u32; LEN];
    let other: Vec<u32> = (0..LEN as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let mut group = c.benchmark_group("mask_1M_u32");
    group.throughput(Throughput::Bytes((LEN * 4) as u64));
    group.bench_function("baseline_wrapping_add", |b| {
        b.iter(|| {
            for (a, x) in acc.iter_mut().zip(black_box(&other)) {
                *a = a.wrapping_add(*x);
            }
        })
    });
    for suite in Suite::ALL {
        let prg = Prg::new(suite, &KEY);
        let name = match suite {
            Suite::Intl => "aes128_ctr_fused_add",
            Suite::Gm => "sm4_ctr_fused_add_dispatch",
        };
        group.bench_function(name, |b| b.iter(|| prg.add_into(black_box(&mut acc[..]))));
    }
    let mut bytes = vec![0u8; LEN * 4];
    let aes = Prg::new(Suite::Intl, &KEY);
    group.bench_function("aes128_ctr_keystream_only", |b| {
        b.iter(|| aes.keystream(black_box(&mut bytes[..])))
    });
    // The portable SM4 path, fused the same way (8 KiB blocks).
    let ks = Sm4Keystream::new(&KEY);
    group.bench_function("sm4_ctr_fused_add_portable", |b| {
        b.iter(|| {
            let mut buf = [0u8; 8192];
            let mut counter = 0u128;
            for chunk in acc.chunks_mut(2048) {
                let n = chunk.len() * 4;
                let n16 = n.div_ceil(16) * 16;
                ks.keystream_portable(counter, &mut buf[..n16]);
                counter += (n16 / 16) as u128;
                for (a, k) in chunk.iter_mut().zip(buf.chunks_exact(4)) {
                    *a = a.wrapping_add(u32::from_le_bytes([k[0], k[1], k[2], k[3]]));
                }
            }
        })
    });
    group.finish();
    black_box(&acc);
}

/// A site's masking at k = 15 (its self mask and 15 pairwise masks) on a
/// 1M-element vector: one mask at a time against all in one pass.
fn many(c: &mut Criterion) {
    let mut acc = vec![0u32; LEN];
    let mut group = c.benchmark_group("masks_16_1M_u32");
    group.throughput(Throughput::Bytes((16 * LEN * 4) as u64));
    for suite in Suite::ALL {
        let masks: Vec<(Prg, Sign)> = (0..16u8)
            .map(|i| {
                let sign = if i % 2 == 0 { Sign::Add } else { Sign::Sub };
                (Prg::new(suite, &[i; 16]), sign)
            })
            .collect();
        group.bench_function(format!("{suite}_one_by_one"), |b| {
            b.iter(|| {
                for (prg, sign) in &masks {
                    let r = match sign {
                        Sign::Add => prg.add_into(black_box(&mut acc[..])),
                        Sign::Sub => prg.sub_from(black_box(&mut acc[..])),
                    };
                    black_box(r.is_ok());
                }
            })
        });
        group.bench_function(format!("{suite}_one_pass"), |b| {
            b.iter(|| black_box(apply_masks(&masks, black_box(&mut acc[..])).is_ok()))
        });
    }
    group.finish();
    black_box(&acc);
}

criterion_group!(benches, fused, many);
criterion_main!(benches);
