//! # confide-proto
//!
//! Confide's wire contract: everything the coordinator and the sites must
//! agree on byte for byte, in one crate both depend on.
//!
//! | module | what both sides share |
//! |---|---|
//! | [`v1`] | the gRPC API, package `confide.v1` (generated at build time with `protox`, no system `protoc`) |
//! | [`convert`] | wire messages ↔ `confide_crypto` protocol types, both directions |
//! | [`context`] | the round context bound into every signature (federation, CA, the whole `RoundStart`) |
//! | [`model`] | [`Model`](model::Model)/[`Tensor`](model::Tensor), flatten order, the safetensors codec, [`ModelSpec`](model::ModelSpec) with seeded initial weights |
//! | [`layout`] | the TRAIN / EVALUATE / STATISTICS vectors, encode and decode, upload chunks |
//! | [`standardise`] | feature statistics and the standardiser derived from their sum |
//! | [`keys`] | the verifying-key SAN URI and the signing-key file format |
//! | [`crl`] | the federation CRL: number, expiry, signature check, revoked serials |
//! | [`tls`] | TLS 1.3-only rustls configurations and the client connector |
//! | [`codec`] | the gRPC codec: prost's, with small stream buffers |
//!
//! ```text
//!   crypto  ◀──  proto  ◀──┬── coordinator
//!                          └── client
//!   site ──Join──────────────▶ coordinator
//!        ──Tasks (stream) ◀──── RoundStart, NeighbourKeys, IncomingShares, ConsistencyRequest,
//!                               UnmaskRequest, RoundEnd
//!        ──DownloadModel ◀───── model chunks (safetensors)
//!        ──AdvertiseKeys / ShareKeys / SubmitMaskedInput (chunks) / Consistency / Unmask ──▶
//! ```
//!
//! `proto` depends on `confide-crypto` and nothing else of Confide's.
//!
//! ```
//! use confide_proto::v1::{Task, task, RoundEnd};
//! use confide_proto::model::{ModelKind, ModelSpec};
//! let t = Task { kind: Some(task::Kind::RoundEnd(RoundEnd { round: 3, success: true, message: String::new() })) };
//! assert!(matches!(t.kind, Some(task::Kind::RoundEnd(ref e)) if e.round == 3));
//! // Both sides derive the same initial model from the same settings.
//! let spec = ModelSpec::new(ModelKind::Logistic, 30, vec![], 2)?;
//! assert_eq!(spec.num_params(), 31);
//! assert_eq!(spec.init_seeded(0), spec.init_seeded(0));
//! # Ok::<(), confide_proto::model::ModelError>(())
//! ```

/// Generated code of package `confide.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("confide.v1");
}

pub mod codec;
pub mod context;
pub mod convert;
pub mod crl;
pub mod keys;
pub mod layout;
pub mod model;
pub mod standardise;
pub mod task_parts;
pub mod tls;

/// Largest data payload of one model or masked-input chunk (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Data payload of the masked-input chunks a site sends (64 KiB, one
/// HTTP/2 stream window). gRPC encodes and decodes each message whole in a
/// buffer of its own size: at 1 MiB every upload took fresh megabytes at
/// both ends, whose page faults and copies cost more than the extra chunk
/// headers (about 60 bytes in 64 KiB).
pub const MASKED_CHUNK_BYTES: usize = 64 << 10;
