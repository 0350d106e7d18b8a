//! The wire ↔ protocol conversions, shared with the coordinator: they live in
//! the wire-contract crate ([`confide_proto::convert`]) so both sides use one
//! mapping; re-exported here under the site's historical path.

pub use confide_proto::convert::*;
