//! # confide-coordinator
//!
//! The Confide coordinator as a library (`serve(settings, listener, shutdown)`)
//! plus the `confide` CLI. It schedules rounds, drives the secure-aggregation
//! [`CoordinatorMachine`](confide_crypto::CoordinatorMachine) of each round,
//! applies the server optimiser to the unmasked sum, checkpoints, and serves
//! the `Site`, `Admin` and gRPC health services.
//!
//! ```text
//!  sites ──gRPC(mTLS)──▶ grpc (site, admin: thin handlers; status: RequestError → Status)
//!                          │   └─▶ access (certificates, revocation, join rate, key binding)
//!                          ▼
//!                     federation (registry, scheduler, machine per round)
//!                       │            │              │              │
//!                    optim       checkpoint      settings       metrics ─▶ /metrics (HTTP, own port)
//!                                transcript (one JSON line per ended round, next to the checkpoints)
//!
//!  operator ─▶ `confide` (main.rs: clap + dispatch) ─▶ cli (admin client, rendering)
//!  convert: RoundRecord ↔ Admin API message, for grpc and cli alike
//! ```
//!
//! ```
//! use confide_coordinator::Settings;
//! let mut s = Settings::from_toml_str("rounds = 2\nmin_sites = 3\n[tls]\ninsecure = true\n").unwrap();
//! s.validate().unwrap();
//! assert_eq!(s.rounds, 2);
//! // In a tokio runtime:
//! // let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // let report = confide_coordinator::serve(s, listener, std::future::pending()).await?;
//! ```

pub mod access;
pub mod ca_key;
pub mod certs;
pub mod checkpoint;
pub mod cli;
pub mod convert;
pub mod error;
pub mod federation;
pub mod grpc;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod revocation;
mod serve;
pub mod settings;
pub mod transcript;

use std::path::Path;

pub use checkpoint::{RoundRecord, RoundRecordSummary};
pub use cli::render::rounds_table;
pub use convert::record_to_pb;
pub use error::{CoordinatorError, RequestError};
pub use federation::{Federation, ServeReport};
pub use grpc::serve_with;
pub use metrics::Metrics;
pub use metrics::endpoint::MetricsServer;
pub use serve::serve;
pub use settings::Settings;

use confide_proto::v1 as pb;

/// Checkpoints in `dir`, with accuracy and the best one marked.
pub fn checkpoint_infos(dir: &Path) -> Result<Vec<pb::CheckpointInfo>, CoordinatorError> {
    checkpoint_infos_in(&checkpoint::LocalStore::new(dir))
}

/// The complete checkpoints of `store` (a directory or object storage), with
/// accuracy and the best one marked.
pub fn checkpoint_infos_in(
    store: &dyn checkpoint::CheckpointStore,
) -> Result<Vec<pb::CheckpointInfo>, CoordinatorError> {
    let all = store.rounds()?;
    let history = match all.last() {
        Some(r) => store.load_manifest(*r)?.history,
        None => Vec::new(),
    };
    let best = checkpoint::best_round(&history);
    let base = store.location();
    let mut out = Vec::new();
    for round in all {
        let model_round = store.load_manifest(round)?.model_round;
        let accuracy = history
            .iter()
            .rev()
            .find(|h| h.model_round == model_round && h.accuracy.is_some())
            .and_then(|h| h.accuracy)
            .unwrap_or(f64::NAN);
        out.push(pb::CheckpointInfo {
            round,
            path: std::path::Path::new(&base)
                .join(checkpoint::round_dir_name(round))
                .display()
                .to_string(),
            accuracy,
            best: Some(round) == best,
        });
    }
    Ok(out)
}
