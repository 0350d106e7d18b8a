//! Every protobuf message a peer can send, decoded from arbitrary bytes and
//! converted into the crypto types exactly as the coordinator and the site do.
//! The first byte picks the message so the fuzzer can focus on each.
#![no_main]
use confide_client::{convert, identity};
use confide_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 9 {
        // Coordinator-bound requests.
        0 => {
            let _ = v1::JoinRequest::decode(bytes);
        }
        1 => {
            if let Ok(r) = v1::AdvertiseKeysRequest::decode(bytes)
                && let Some(a) = r.advert
            {
                let _ = convert::key_advert_from_proto(&a);
            }
        }
        2 => {
            if let Ok(r) = v1::ShareKeysRequest::decode(bytes) {
                let _ = convert::share_bundle_from_proto(&r);
            }
        }
        3 => {
            let _ = v1::MaskedInputChunk::decode(bytes);
        }
        4 => {
            if let Ok(r) = v1::UnmaskResponse::decode(bytes) {
                let _ = convert::unmask_response_from_proto(&r);
            }
        }
        // Site-bound tasks.
        5 => {
            if let Ok(t) = v1::Task::decode(bytes) {
                match t.kind {
                    Some(v1::task::Kind::RoundStart(rs)) => {
                        if let Ok(cfg) = convert::round_config(&rs) {
                            let _ = cfg.topology();
                            let _ = convert::quant_config(rs.quantisation.as_ref(), cfg.ring);
                        }
                    }
                    Some(v1::task::Kind::NeighbourKeys(nk)) => {
                        let _ = identity::neighbour_keys(&nk, true);
                        let _ = identity::neighbour_keys(&nk, false);
                    }
                    Some(v1::task::Kind::IncomingShares(m)) => {
                        let _ = convert::incoming_shares_from_proto(&m);
                    }
                    Some(v1::task::Kind::UnmaskRequest(m)) => {
                        let _ = convert::unmask_request_from_proto(&m);
                    }
                    _ => {}
                }
            }
        }
        6 => {
            let _ = v1::ModelChunk::decode(bytes);
        }
        7 => {
            let _ = v1::TasksRequest::decode(bytes);
            let _ = v1::DownloadModelRequest::decode(bytes);
        }
        _ => {
            let _ = v1::StatusRequest::decode(bytes);
            let _ = v1::RoundsRequest::decode(bytes);
        }
    }
});
