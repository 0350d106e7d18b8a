//! Work the round needs that must not run under the federation's lock:
//! adding each masked upload into the sum and the unmask (mask regeneration
//! over the whole vector, up to 10^8 elements) run on blocking threads while
//! health, joins, other uploads and admin calls are answered.
//!
//! The machine still decides who is in the sum: an upload is accepted under
//! the lock (`handle_masked_input_outside`), which also registers its add as
//! pending in the round's [`OutsideSum`]; the add follows outside the lock,
//! and the unmask takes the sum only once no add is pending. Every accepted
//! vector is therefore in the sum exactly once, and no other.

use std::sync::Arc;
use std::time::Instant;

use confide_crypto::protocol::{AnyUnmaskJob, MaskingSet};
use confide_crypto::{MemberId, ProtocolError, Stage};
use tracing::info;

use super::round::ActiveRound;
use super::sum::{OutsideSum, OwedAdd};
use super::{Federation, Inner, clock};
use crate::error::RequestError;

impl ActiveRound {
    /// A whole masked vector of `bytes` bytes from `from`, when the round
    /// keeps its sum outside the machine: the machine checks and records it,
    /// and the returned add is owed to the sum (made outside the lock).
    /// `None`: the round keeps no such sum, so `ActiveRound::deliver` it instead.
    pub(super) fn accept_outside(
        &mut self,
        from: MemberId,
        bytes: usize,
        masking: Option<MaskingSet>,
        now: Instant,
    ) -> Result<Option<OwedAdd>, RequestError> {
        let Some(sum) = self.sum.clone() else {
            return Ok(None);
        };
        let expected = self.packing.total_bytes();
        if bytes != expected {
            let bits = self.packing.bits();
            return Err(ProtocolError::Malformed {
                member: from,
                reason: format!(
                    "{bytes} bytes received, {expected} expected for {} elements \
                     (model slots packed at {bits} bits)",
                    self.packing.len()
                ),
            }
            .into());
        }
        let msg_bytes = bytes
            + masking
                .as_ref()
                .map_or(0, |m| 4 * m.peers.len() + m.signature.len());
        self.machine.handle_masked_input_outside(
            self.id,
            from,
            self.packing.len(),
            masking,
            now,
        )?;
        self.bytes_in += msg_bytes as u64;
        self.accepted(from, Stage::MaskedInput);
        Ok(Some(sum.owe()))
    }
}

impl Federation {
    /// Run the round's unmask on a blocking thread (the mask expansion
    /// itself spreads over the cores), then hand the outcome to the machine.
    /// With `sum`, the sum the round kept outside the machine, once every
    /// accepted input is in it.
    pub(super) async fn run_unmask(
        &self,
        mut job: AnyUnmaskJob,
        sum: Option<Arc<OutsideSum>>,
    ) -> Result<(), ProtocolError> {
        let round = job.round();
        // Every input of the round is in: the kept upload buffers go back
        // to the system before the mask regeneration needs its own memory.
        self.uploads.release_buffers();
        let started = std::time::Instant::now();
        let task = tokio::task::spawn_blocking(move || {
            if let Some(sum) = sum {
                job.set_sum(sum.take()?)?;
            }
            Ok::<_, ProtocolError>(job.run())
        });
        #[cfg(test)]
        tests::while_unmasking(self);
        let outcome = task.await.map_err(|e| ProtocolError::Aborted {
            reason: format!("unmask task failed: {e}"),
        })??;
        let secs = started.elapsed().as_secs_f64();
        info!(round, secs = format!("{secs:.3}"), "unmask done");
        let mut g = self.lock();
        let Inner {
            round: active,
            registry,
            ..
        } = &mut *g;
        if let Some(r) = active.as_mut().filter(|r| r.id == round) {
            r.machine.complete_unmask(outcome);
            r.pump(registry, clock());
        }
        Ok(())
    }
}

/// What the driver does next.
pub(super) enum Next {
    /// Run the unmask, off the lock, with the sum kept outside the machine.
    Unmask(Box<AnyUnmaskJob>, Option<Arc<OutsideSum>>),
    /// Wait for a site message or the deadline.
    Wait(Option<Instant>),
}

#[cfg(test)]
mod tests;
