//! # confide-proto
//!
//! Confide's public gRPC API, package `confide.v1`: the `Site` service that
//! participants call (outbound only), the `Admin` service for operators, and
//! the messages of a secure-aggregation round. The `.proto` source is
//! `proto/confide/v1/confide.proto`; code is generated at build time with
//! `protox`, so no system `protoc` is needed.
//!
//! ```text
//!   site ──Join──────────────▶ coordinator
//!        ──Tasks (stream) ◀──── RoundStart, NeighbourKeys, IncomingShares, UnmaskRequest, RoundEnd
//!        ──DownloadModel ◀───── model chunks (safetensors)
//!        ──AdvertiseKeys / ShareKeys / SubmitMaskedInput (chunks) / Unmask ──▶
//! ```
//!
//! ```
//! use confide_proto::v1::{Task, task, RoundEnd};
//! let t = Task { kind: Some(task::Kind::RoundEnd(RoundEnd { round: 3, success: true, message: String::new() })) };
//! assert!(matches!(t.kind, Some(task::Kind::RoundEnd(ref e)) if e.round == 3));
//! ```

/// Generated code of package `confide.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("confide.v1");
}

pub mod convert;
pub mod keys;
pub mod layout;
pub mod model;
pub mod standardise;

/// Largest data payload of one model or masked-input chunk (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;
