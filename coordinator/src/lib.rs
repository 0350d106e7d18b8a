//! # confide-coordinator
//!
//! The Confide coordinator as a library (`serve(settings, listener, shutdown)`)
//! plus the `confide` CLI. It schedules rounds, drives the secure-aggregation
//! [`CoordinatorMachine`](confide_crypto::CoordinatorMachine) of each round,
//! applies the server optimiser to the unmasked sum, checkpoints, and serves
//! the `Site`, `Admin` and gRPC health services.
//!
//! ```text
//!  sites ──gRPC(mTLS)──▶ grpc (thin handlers, RequestError → Status)
//!                          │
//!                          ▼
//!                     federation (registry, scheduler, machine per round)
//!                       │            │              │
//!                    optim       checkpoint      settings (TOML + CONFIDE_* env)
//! ```
//!
//! ```
//! use confide_coordinator::Settings;
//! let mut s = Settings::from_toml_str("rounds = 2\nmin_sites = 2\n[tls]\ninsecure = true\n").unwrap();
//! s.validate().unwrap();
//! assert_eq!(s.rounds, 2);
//! // In a tokio runtime:
//! // let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // let report = confide_coordinator::serve(s, listener, std::future::pending()).await?;
//! ```

pub mod access;
pub mod certs;
pub mod checkpoint;
pub mod error;
pub mod federation;
pub mod grpc;
pub mod optim;
pub mod settings;

use std::path::Path;

pub use checkpoint::{RoundRecord, RoundRecordSummary};
pub use error::{CoordinatorError, RequestError};
pub use federation::{Federation, ServeReport};
pub use grpc::serve;
pub use settings::Settings;

use confide_proto::v1 as pb;

/// A history record as the Admin API's message.
pub fn record_to_pb(r: RoundRecord) -> pb::RoundRecord {
    pb::RoundRecord {
        round: r.round,
        kind: r.kind,
        success: r.success,
        message: r.message,
        cohort: r.cohort,
        survivors: r.survivors,
        dropped: r.dropped,
        accuracy: r.accuracy.unwrap_or(f64::NAN),
        loss: r.loss.unwrap_or(f64::NAN),
        eval_examples: r.eval_examples,
        duration_secs: r.duration_secs,
        stage_secs: r.stage_secs.into_iter().collect(),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
    }
}

/// Checkpoints in `dir`, with accuracy and the best one marked.
pub fn checkpoint_infos(dir: &Path) -> Result<Vec<pb::CheckpointInfo>, CoordinatorError> {
    let all = checkpoint::list(dir)?;
    let history = match all.last() {
        Some((_, p)) => checkpoint::load_manifest(p)?.history,
        None => Vec::new(),
    };
    let best = checkpoint::best_round(&history);
    let mut out = Vec::new();
    for (round, path) in all {
        let model_round = checkpoint::load_manifest(&path)?.model_round;
        let accuracy = history
            .iter()
            .rev()
            .find(|h| h.model_round == model_round && h.accuracy.is_some())
            .and_then(|h| h.accuracy)
            .unwrap_or(f64::NAN);
        out.push(pb::CheckpointInfo {
            round,
            path: path.display().to_string(),
            accuracy,
            best: Some(round) == best,
        });
    }
    Ok(out)
}

/// Render a history as a text table.
pub fn rounds_table(history: &[RoundRecord]) -> String {
    let mut s = String::from(
        "round  kind        ok   cohort  surv  drop  accuracy   loss     secs    bytes_in   bytes_out\n",
    );
    for r in history {
        let f = |v: Option<f64>, w: usize| {
            v.map(|x| format!("{x:<w$.4}"))
                .unwrap_or_else(|| format!("{:<w$}", "-"))
        };
        s.push_str(&format!(
            "{:<6} {:<11} {:<4} {:<7} {:<5} {:<5} {} {} {:<7.2} {:<10} {:<10}{}\n",
            r.round,
            r.kind,
            if r.success { "yes" } else { "NO" },
            r.cohort,
            r.survivors,
            r.dropped,
            f(r.accuracy, 10),
            f(r.loss, 8),
            r.duration_secs,
            r.bytes_in,
            r.bytes_out,
            if r.success {
                String::new()
            } else {
                format!(" {}", r.message)
            }
        ));
    }
    s
}
