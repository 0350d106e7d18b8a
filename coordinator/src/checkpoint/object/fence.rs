//! Writes of [`ObjectStoreCheckpoints`] under a lease (active / standby
//! coordinators, `lease.rs`): the fence every write checks, and the read
//! rule that drops checkpoints written under a lease already lost.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::ObjectStoreCheckpoints;
use crate::checkpoint::io::block_on;
use crate::checkpoint::lease::{LEASE, Lease};
use crate::error::CoordinatorError;

impl ObjectStoreCheckpoints {
    /// The lease of coordinators sharing this store (`prefix/lease.json`).
    pub fn lease(&self, holder: &str, ttl: Duration, renew: Duration) -> Lease {
        let key = self.prefix.clone().join(LEASE);
        Lease::new(
            self.store.clone(),
            key,
            format!("{}/{LEASE}", self.url),
            holder,
            ttl,
            renew,
        )
    }

    /// This store, writing only while `lease` is held: every write checks
    /// it, the manifest is preceded by a renewal, and manifests carry its
    /// fencing token.
    pub fn fenced_by(mut self, lease: Arc<Lease>) -> Self {
        self.fence = Some(lease);
        self
    }

    /// The fencing token, if writes are fenced; an error once the lease is
    /// no longer ours.
    pub(super) fn fence_check(&self) -> Result<Option<u64>, CoordinatorError> {
        self.fence.as_ref().map(|l| l.check()).transpose()
    }

    /// The highest fencing token any complete checkpoint carries (0: none).
    pub fn highest_token(&self) -> Result<u64, CoordinatorError> {
        block_on(async {
            let all = self.complete_with_tokens().await?;
            Ok(all.into_iter().map(|(_, t)| t).max().unwrap_or(0))
        })
    }

    /// The complete checkpoints' rounds, ascending, less those written
    /// under a lease already lost.
    pub(super) async fn rounds_async(&self) -> Result<Vec<u64>, CoordinatorError> {
        Ok(self.fenced_out(self.complete_with_tokens().await?))
    }

    /// The rounds left once checkpoints written under a stale lease are
    /// dropped: a lower fencing token than an older round's means its
    /// writer had already lost the lease (`lease.rs`).
    fn fenced_out(&self, rounds: Vec<(u64, u64)>) -> Vec<u64> {
        let mut top = 0;
        let mut out = Vec::with_capacity(rounds.len());
        for (round, token) in rounds {
            if token < top {
                warn!(checkpoint = %self.round_url(round), token, newer_token = top, "ignoring a checkpoint written under a lost lease");
                continue;
            }
            top = token;
            out.push(round);
        }
        out
    }
}
