//! The coordinator's message handling under arbitrary message sequences: a
//! 5-member round (k = 4, t = 3, 4 elements) fed decoded garbage adverts,
//! share bundles, masked inputs, unmask responses and timeouts, in any order.
//! No input may panic or make the machine finish with a wrong-length sum.
#![no_main]
use std::time::{Duration, Instant};

use confide_client::convert;
use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{CoordinatorMachine, StageTimeouts};
use confide_crypto::ring::from_le_bytes;
use confide_crypto::{Ring, RoundConfig, Suite};
use confide_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let cfg = RoundConfig {
        round: 1,
        suite: Suite::Intl,
        ring: Ring::U32,
        cohort: vec![1, 2, 3, 4, 5],
        params: SecAggParams { k: 4, t: 3 },
        graph_seed: [7; 32],
        vector_len: 4,
        min_survivors: 3,
    };
    let t0 = Instant::now();
    let Ok(mut m) =
        CoordinatorMachine::<u32>::new(cfg, StageTimeouts::uniform(Duration::from_secs(1)), t0)
    else {
        return;
    };
    let mut now = t0;
    // Records: [op, len, payload...].
    let mut rest = data;
    while rest.len() >= 2 {
        let (op, n) = (rest[0], usize::from(rest[1]).min(rest.len() - 2));
        let payload = &rest[2..2 + n];
        rest = &rest[2 + n..];
        match op % 5 {
            0 => {
                if let Ok(a) = v1::KeyAdvert::decode(payload) {
                    let _ = m.handle_advert(
                        convert::key_advert_from_proto(&a),
                        a.signature.clone(),
                        now,
                    );
                }
            }
            1 => {
                if let Ok(r) = v1::ShareKeysRequest::decode(payload)
                    && let Ok(b) = convert::share_bundle_from_proto(&r)
                {
                    let _ = m.handle_shares(b, now);
                }
            }
            2 => {
                if let Ok(c) = v1::MaskedInputChunk::decode(payload)
                    && let Ok(v) = from_le_bytes::<u32>(&c.data)
                {
                    let _ = m.handle_masked_input(c.round, c.offset as u32, &v, now);
                }
            }
            3 => {
                if let Ok(r) = v1::UnmaskResponse::decode(payload)
                    && let Ok(u) = convert::unmask_response_from_proto(&r)
                {
                    let _ = m.handle_unmask_response(u, now);
                }
            }
            _ => {
                now +=
                    Duration::from_millis(250 * u64::from(payload.first().copied().unwrap_or(1)));
                m.handle_timeout(now);
            }
        }
        while let Some(o) = m.poll_output() {
            if let confide_crypto::protocol::CoordinatorOutput::Finished(Ok(r)) = o {
                assert_eq!(r.sum.len(), 4);
            }
        }
    }
});
