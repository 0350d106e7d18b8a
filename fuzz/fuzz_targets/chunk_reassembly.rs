//! Chunk reassembly of a peer-announced stream: the model download
//! (`ModelAssembler`, announced size from RoundStart, chunks from the
//! coordinator). Memory must stay bounded by the announced (limited) size,
//! never by a chunk's `total_len`.
#![no_main]
use confide_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, rest) = data.split_at(8);
    let mut announced = [0u8; 8];
    announced.copy_from_slice(head);
    let mut asm = confide_client::wire::ModelAssembler::new(u64::from_le_bytes(announced));
    // Length-prefixed ModelChunk messages.
    let mut rest = rest;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (msg, tail) = rest[2..].split_at(n);
        rest = tail;
        let Ok(chunk) = v1::ModelChunk::decode(msg) else {
            continue;
        };
        if asm.push(&chunk).is_err() {
            return;
        }
        assert!(
            asm.received() <= 1 << 31,
            "reassembly grew past any sane bound"
        );
    }
    let _ = asm.finish();
});
