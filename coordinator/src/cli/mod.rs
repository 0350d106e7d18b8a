//! The `confide` CLI's logic, so that the binary is argument parsing and
//! dispatch only: the operator's Admin-API client ([`admin`]), the text it
//! prints ([`render`]), the learning-curve pictures it draws ([`plot`]), the
//! round transcript's reading ([`transcript`]) and the offline look-ups in a
//! checkpoint store (a directory or object storage).
//!
//! ```text
//! main.rs (clap) ─▶ cli::admin  ─gRPC─▶ coordinator's Admin / health services
//!                ─▶ cli::render (tables and reports, returned as text)
//!                ─▶ cli::plot   (accuracy/loss per round as SVG or PNG)
//!                ─▶ cli::{latest_history, find_checkpoint} ─▶ checkpoint store
//!                ─▶ cli::checkpoints (KEKs from flags, rewrap) ─▶ checkpoint store
//!                ─▶ cli::transcript ─▶ DIR/transcript.jsonl
//! ```
//!
//! The `demo` subcommand is not here: it starts sites in-process, and the
//! library must not depend on the site crate.

pub mod admin;
pub mod checkpoints;
pub mod plot;
pub mod render;
pub mod transcript;

use crate::checkpoint::{CheckpointStore, RoundRecord};
use crate::error::CoordinatorError;

/// The round history stored with the latest checkpoint in `store`; `None`
/// if it holds no checkpoint.
pub fn latest_history(
    store: &dyn CheckpointStore,
) -> Result<Option<Vec<RoundRecord>>, CoordinatorError> {
    match store.rounds()?.last() {
        Some(r) => Ok(Some(store.load_manifest(*r)?.history)),
        None => Ok(None),
    }
}

/// The round of the checkpoint `round` in `store`, or of the latest one;
/// `None` if there is no such complete checkpoint.
pub fn find_checkpoint(
    store: &dyn CheckpointStore,
    round: Option<u64>,
) -> Result<Option<u64>, CoordinatorError> {
    let all = store.rounds()?;
    Ok(match round {
        Some(r) => all.contains(&r).then_some(r),
        None => all.last().copied(),
    })
}
