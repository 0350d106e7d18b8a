//! Packing a 10⁶-element masked vector for upload (each site) and adding a
//! received one into the sum (the coordinator, once per site), at 24 bits
//! (100 sites at the default quantisation) and 27 bits (1000 sites), against
//! the unpacked 32-bit little-endian form of the same vector measured in the
//! same run.

use std::hint::black_box;

use confide_crypto::Ring;
use confide_crypto::protocol::RingVec;
use confide_proto::layout::Packing;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LEN: usize = 1_000_000;

fn pack(c: &mut Criterion) {
    let v: Vec<u32> = (0..LEN as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let forms = [
        ("plain_32", Packing::plain(Ring::U32, LEN)),
        (
            "packed_24",
            Packing::new(Ring::U32, 24, LEN, LEN).expect("24 bits"),
        ),
        (
            "packed_27",
            Packing::new(Ring::U32, 27, LEN, LEN).expect("27 bits"),
        ),
    ];
    let mut group = c.benchmark_group("pack_1M");
    group.throughput(Throughput::Elements(LEN as u64));
    for (name, p) in forms {
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| p.encode(black_box(&v), 0..LEN))
        });
        let bytes = p.encode(&v, 0..LEN);
        let mut sum = RingVec::zeros(Ring::U32, LEN);
        group.bench_function(format!("add_into_{name}"), |b| {
            b.iter(|| p.add_into(&mut sum, 0, black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, pack);
criterion_main!(benches);
