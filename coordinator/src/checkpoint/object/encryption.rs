//! The object-storage backend's side of encryption at rest: what it does
//! differently for an encrypted checkpoint (the format and the checks are
//! `envelope.rs`'s).

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::{PutMode, PutOptions, PutPayload};

use super::ObjectStoreCheckpoints;
use crate::checkpoint::MANIFEST;
use crate::checkpoint::envelope::{RawManifest, Rewrap, RewrapOutcome, Sealing};
use crate::checkpoint::keys::KeyWrapper;
use crate::error::CoordinatorError;

impl ObjectStoreCheckpoints {
    /// The same store, encrypting and opening checkpoints as `sealing` says.
    pub fn with_sealing(mut self, sealing: Sealing) -> Self {
        self.sealing = sealing;
        self
    }

    /// Parse `round`'s manifest. Unparseable is torn, as before encryption;
    /// but when this store encrypts it is tampering: the manifest goes up
    /// by one atomic PUT, which a crash cannot tear.
    pub(super) fn parse_manifest(
        &self,
        round: u64,
        bytes: &[u8],
    ) -> Result<RawManifest, CoordinatorError> {
        RawManifest::parse(bytes.to_vec()).map_err(|e| {
            let (location, reason) = (
                self.round_url(round),
                format!("{MANIFEST} does not parse: {e}"),
            );
            if self.sealing.encrypts() {
                CoordinatorError::TamperedCheckpoint { location, reason }
            } else {
                CoordinatorError::TornCheckpoint { location, reason }
            }
        })
    }

    /// Why the listed objects of `round` do not match its manifest: for a
    /// plaintext checkpoint a reason to ignore it (a torn upload); for an
    /// encrypted one an error, since its manifest went up last, after its
    /// objects, so a mismatch is an edit (or a swap), not a crash.
    pub(super) fn check_listed(
        &self,
        raw: &RawManifest,
        round: u64,
        listed: &BTreeMap<String, u64>,
    ) -> Result<Option<String>, CoordinatorError> {
        match Self::mismatch(&raw.manifest, round, listed) {
            Some(reason) if raw.envelope.is_some() => Err(CoordinatorError::TamperedCheckpoint {
                location: self.round_url(round),
                reason,
            }),
            why => Ok(why),
        }
    }

    /// [`crate::checkpoint::CheckpointStore::rewrap`]: the new manifest is
    /// written only if the manifest is still the one read, so a checkpoint
    /// pruned or re-saved meanwhile is neither resurrected nor undone.
    pub(super) async fn rewrap_async(
        &self,
        round: u64,
        old: Arc<dyn KeyWrapper>,
        new: &dyn KeyWrapper,
    ) -> Result<RewrapOutcome, CoordinatorError> {
        let key = self.key(round, MANIFEST);
        let (raw, seen) = self.get_manifest(round).await?;
        let json = match Sealing::rewrap(raw, round, &self.round_url(round), old, new)? {
            Rewrap::Write(json) => json,
            Rewrap::Skip(outcome) => return Ok(outcome),
        };
        let opts = PutOptions::from(PutMode::Update(seen));
        self.store
            .put_opts(&key, PutPayload::from(json), opts)
            .await
            .map_err(self.err("put (if unchanged)", &key))?;
        Ok(RewrapOutcome::Rewrapped)
    }
}
