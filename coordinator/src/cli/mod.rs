//! The `confide` CLI's logic, so that the binary is argument parsing and
//! dispatch only: the operator's Admin-API client ([`admin`]), the text it
//! prints ([`render`]), the learning-curve pictures it draws ([`plot`]), the
//! round transcript's reading ([`transcript`]) and the offline look-ups in a
//! checkpoint directory.
//!
//! ```text
//! main.rs (clap) ─▶ cli::admin  ─gRPC─▶ coordinator's Admin / health services
//!                ─▶ cli::render (tables and reports, returned as text)
//!                ─▶ cli::plot   (accuracy/loss per round as SVG or PNG)
//!                ─▶ cli::{latest_history, find_checkpoint} ─▶ checkpoint store
//!                ─▶ cli::transcript ─▶ DIR/transcript.jsonl
//! ```
//!
//! The `demo` subcommand is not here: it starts sites in-process, and the
//! library must not depend on the site crate.

pub mod admin;
pub mod plot;
pub mod render;
pub mod transcript;

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, RoundRecord};
use crate::error::CoordinatorError;

/// The round history stored with the latest checkpoint in `dir`; `None` if
/// `dir` holds no checkpoint.
pub fn latest_history(dir: &Path) -> Result<Option<Vec<RoundRecord>>, CoordinatorError> {
    match checkpoint::list(dir)?.last() {
        Some((_, p)) => Ok(Some(checkpoint::load_manifest(p)?.history)),
        None => Ok(None),
    }
}

/// The checkpoint of `round` in `dir`, or the latest one; `None` if there is
/// no such checkpoint.
pub fn find_checkpoint(
    dir: &Path,
    round: Option<u64>,
) -> Result<Option<PathBuf>, CoordinatorError> {
    let all = checkpoint::list(dir)?;
    Ok(match round {
        Some(r) => all.iter().find(|(x, _)| *x == r).map(|(_, p)| p.clone()),
        None => all.last().map(|(_, p)| p.clone()),
    })
}
