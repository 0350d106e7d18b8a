//! `confide checkpoints list|export|rewrap` with encryption at rest: the
//! key-encryption keys named on the command line, the store opened with
//! them, and KEK rotation over every checkpoint of a store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::checkpoint::{
    CheckpointStore, KeySource, KeyWrapper, LocalKek, Location, RewrapOutcome, Sealing,
};
use crate::error::CoordinatorError;

/// A KEK as the command line names it: an id and a file or a variable.
#[derive(Clone, Debug, Default)]
pub struct KeyFlags {
    /// `--key-id`.
    pub key_id: Option<String>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--key-env`.
    pub key_env: Option<String>,
}

impl KeyFlags {
    /// The KEK, if any flag names one (read now); `what` names the flags
    /// in messages (`--key`, `--old-key`, `--new-key`).
    pub fn load(&self, what: &str) -> Result<Option<Arc<dyn KeyWrapper>>, CoordinatorError> {
        let source = match (&self.key_file, &self.key_env) {
            (None, None) if self.key_id.is_none() => return Ok(None),
            (Some(f), None) => KeySource::File(f.clone()),
            (None, Some(v)) => KeySource::Env(v.clone()),
            _ => {
                return Err(CoordinatorError::Config(format!(
                    "give exactly one of {what}-file FILE or {what}-env VAR (the KEK as 64 hex digits)"
                )));
            }
        };
        let Some(id) = &self.key_id else {
            return Err(CoordinatorError::Config(format!(
                "{what}-id is needed with {what}-file / {what}-env: the id manifests record \
                 (checkpoints.encryption.key_id)"
            )));
        };
        Ok(Some(Arc::new(LocalKek::load(id, &source)?)))
    }
}

/// The store at `location`, opening encrypted checkpoints with `key` if given.
pub fn open_store(
    location: &str,
    key: Option<Arc<dyn KeyWrapper>>,
) -> Result<Arc<dyn CheckpointStore>, CoordinatorError> {
    let sealing = key.map_or_else(Sealing::none, Sealing::with_key);
    Location::parse(location)?.open_sealed(sealing)
}

/// What [`rewrap_all`] did, per round.
pub type RewrapReport = Vec<(u64, RewrapOutcome)>;

/// Re-wrap every complete checkpoint of `store` from `old` to `new`; stops
/// at the first that `old` cannot open (nothing else of it is touched).
/// Running it again after an interruption skips what is already done.
pub fn rewrap_all(
    store: &dyn CheckpointStore,
    old: Arc<dyn KeyWrapper>,
    new: &dyn KeyWrapper,
) -> Result<RewrapReport, CoordinatorError> {
    if old.key_id() == new.key_id() {
        return Err(CoordinatorError::Config(format!(
            "the new key id must differ from the old one ({:?}): manifests tell keys apart by id",
            new.key_id()
        )));
    }
    store
        .rounds()?
        .into_iter()
        .map(|r| Ok((r, store.rewrap(r, old.clone(), new)?)))
        .collect()
}

/// The lines `confide checkpoints rewrap` prints.
pub fn render_rewrap(report: &RewrapReport, location: &str, new_id: &str) -> String {
    let mut out = String::new();
    for (r, o) in report {
        let what = match o {
            RewrapOutcome::Rewrapped => format!("re-wrapped under {new_id:?}"),
            RewrapOutcome::AlreadyUnderNewKey => format!("already under {new_id:?}"),
            RewrapOutcome::NotEncrypted => "not encrypted, left alone".to_string(),
        };
        out.push_str(&format!("round {r}: {what}\n"));
    }
    let done = report
        .iter()
        .filter(|(_, o)| *o == RewrapOutcome::Rewrapped)
        .count();
    out.push_str(&format!(
        "{done} of {} checkpoints in {location} re-wrapped; data objects untouched\n",
        report.len()
    ));
    out
}
