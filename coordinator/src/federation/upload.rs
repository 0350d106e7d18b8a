//! Masked-input uploads between their stream and the sum: slots, the
//! memory budget, each member's one open stream, and the upload itself
//! (in memory or spilled, `spill.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use confide_crypto::MemberId;
use confide_proto::layout::Packing;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::spill::{UploadBuf, UploadData};
use crate::error::RequestError;

/// The coordinator's upload capacity: at most `max_concurrent_uploads`
/// slots, the memory budget `upload_buffer_mib` (an upload that does not
/// fit in what is left spills), and which member of which round has a
/// stream open, so that a member uploads through one stream at a time.
pub struct UploadSlots {
    permits: Arc<Semaphore>,
    pool: Arc<BufferPool>,
    /// The buffer budget in MiB units.
    mib: Arc<Semaphore>,
    budget_mib: u32,
    open: Arc<Mutex<BTreeSet<(u64, MemberId)>>>,
    in_use: Gauge,
}

impl UploadSlots {
    /// `slots` uploads may be buffered at once within `budget_mib` MiB;
    /// `in_use` counts the taken slots.
    pub fn new(slots: usize, budget_mib: u32, in_use: Gauge) -> Self {
        UploadSlots {
            permits: Arc::new(Semaphore::new(slots)),
            pool: Arc::new(BufferPool {
                free: Mutex::default(),
                cap_bytes: (budget_mib as usize) << 20,
            }),
            mib: Arc::new(Semaphore::new(budget_mib as usize)),
            budget_mib,
            open: Arc::default(),
            in_use,
        }
    }

    /// Claims `member`'s stream of `round` until the returned claim drops;
    /// refused while another stream of the member is open (the first one is
    /// left alone). The caller checks under the federation's lock that the
    /// member has not already submitted, and keeps the claim until its
    /// vector is in the sum, so no second vector slips in between.
    pub(super) fn claim(&self, round: u64, member: MemberId) -> Result<UploadClaim, RequestError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !open.insert((round, member)) {
            return Err(RequestError::UploadInProgress(member));
        }
        Ok(UploadClaim {
            open: self.open.clone(),
            key: (round, member),
        })
    }

    /// Waits until `deadline` (the masked-input stage's: a slot that frees
    /// later is of no use to this upload) for a free slot, then takes
    /// `bytes` of the memory budget if that much is left; otherwise the
    /// upload is to spill (`spill.rs`) instead of waiting for memory.
    pub(super) async fn slot(
        &self,
        round: u64,
        bytes: u64,
        deadline: tokio::time::Instant,
    ) -> Result<SlotPermit, RequestError> {
        let units = bytes.div_ceil(1 << 20).max(1);
        let permit =
            match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(RequestError::ShuttingDown),
                Err(_) => return Err(RequestError::UploadSlotTimeout { round }),
            };
        let budget = u32::try_from(units)
            .ok()
            .filter(|&u| u <= self.budget_mib)
            .and_then(|u| self.mib.clone().try_acquire_many_owned(u).ok());
        self.in_use.inc();
        Ok(SlotPermit {
            _permit: permit,
            pool: self.pool.clone(),
            budget,
            in_use: self.in_use.clone(),
        })
    }

    /// Lets the kept upload buffers go (the round takes no more uploads).
    pub(super) fn release_buffers(&self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        *free = Vec::new();
    }
}

/// A taken upload slot, counted in the `upload_slots_in_use` gauge until
/// it is dropped.
pub(super) struct SlotPermit {
    _permit: OwnedSemaphorePermit,
    pool: Arc<BufferPool>,
    /// Memory budget held; none: the upload spills.
    budget: Option<OwnedSemaphorePermit>,
    in_use: Gauge,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.in_use.dec();
    }
}

/// In-memory upload buffers kept for the next uploads, within the buffer
/// budget: a fresh multi-megabyte vector per upload cost its page faults
/// and its unmap every time (`perf`; docs/performance.md).
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    cap_bytes: usize,
}

impl BufferPool {
    /// An empty buffer of capacity `bytes`, reused if one is free.
    fn take(&self, bytes: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = free.iter().position(|v| v.capacity() == bytes) {
            return free.swap_remove(i);
        }
        // Buffers of another length (an earlier round's) are of no more use.
        free.clear();
        Vec::with_capacity(bytes)
    }

    /// Keeps `v` for a later upload while the pool stays within the budget.
    fn give(&self, mut v: Vec<u8>) {
        v.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = free.iter().map(Vec::capacity).sum();
        if held.saturating_add(v.capacity()) <= self.cap_bytes {
            free.push(v);
        }
    }
}

/// A member's open upload stream; released on drop, whether the vector
/// went into the sum or the stream failed (so an honest retry may follow).
pub(super) struct UploadClaim {
    open: Arc<Mutex<BTreeSet<(u64, MemberId)>>>,
    key: (u64, MemberId),
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&self.key);
    }
}

/// What an upload holds until its vector is in the sum: the slot and the
/// member's claim.
pub(super) struct UploadHold {
    permit: SlotPermit,
    _claim: UploadClaim,
}

impl UploadHold {
    /// Gives an in-memory upload's buffer back for the next upload.
    pub(super) fn recycle(&self, data: UploadData) {
        if let Some(v) = data.into_buffer() {
            self.permit.pool.give(v);
        }
    }
}

/// A masked-input upload whose header passed the checks, with its
/// member's stream claimed, waiting for an upload slot.
pub struct PendingUpload {
    pub(super) round: u64,
    pub(super) member: MemberId,
    /// Elements of the whole vector.
    pub(super) total: usize,
    pub(super) packing: Packing,
    pub(super) deadline: tokio::time::Instant,
    pub(super) claim: UploadClaim,
}

/// A masked-input upload in progress: bounded by an upload slot, by the
/// round's vector length and by the stage deadline; its bytes wait in
/// memory within the buffer budget, or in a spill file (`spill.rs`).
pub struct Upload {
    pub(super) round: u64,
    pub(super) member: MemberId,
    total: usize,
    packing: Packing,
    deadline: tokio::time::Instant,
    buf: UploadBuf,
    spill_dir: PathBuf,
    hold: UploadHold,
}

impl Upload {
    /// `pending` with its slot: in memory if `permit` holds budget, else
    /// spilled to a file in `spill_dir`.
    pub(super) fn new(
        pending: PendingUpload,
        permit: SlotPermit,
        spill_dir: &Path,
    ) -> Result<Self, RequestError> {
        let buf = if permit.budget.is_some() {
            UploadBuf::memory(permit.pool.take(pending.packing.total_bytes()))
        } else {
            UploadBuf::spill(spill_dir).map_err(|e| spill_error(spill_dir, e))?
        };
        Ok(Upload {
            round: pending.round,
            member: pending.member,
            total: pending.total,
            packing: pending.packing,
            deadline: pending.deadline,
            buf,
            spill_dir: spill_dir.to_path_buf(),
            hold: UploadHold {
                permit,
                _claim: pending.claim,
            },
        })
    }

    /// When the masked-input stage closes: the stream must be complete by then.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Elements received so far, of [`Self::elements`].
    pub fn received(&self) -> usize {
        self.packing
            .elements_at(usize::try_from(self.buf.len()).unwrap_or(usize::MAX))
            .unwrap_or(0)
    }

    /// Elements of the whole vector.
    pub fn elements(&self) -> usize {
        self.total
    }

    /// Whether the upload waits on disk rather than in memory.
    pub fn spilled(&self) -> bool {
        self.buf.spilled()
    }

    /// Append one chunk; `offset` counts elements and must continue the stream.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<(), RequestError> {
        let have = self.received();
        if offset != have as u64 {
            return Err(RequestError::ChunkOffset {
                offset,
                expected: have as u64,
            });
        }
        // A chunk ends on a whole element and byte ([`Packing::chunks`]).
        let end = usize::try_from(self.buf.len())
            .unwrap_or(usize::MAX)
            .saturating_add(data.len());
        if self.packing.elements_at(end).is_none() {
            return Err(RequestError::ChunkSize {
                bytes: data.len(),
                offset,
                elements: self.total,
                expected: self.packing.total_bytes(),
                bits: self.packing.bits(),
            });
        }
        self.buf
            .push(data)
            .map_err(|e| spill_error(&self.spill_dir, e))
    }

    /// The whole vector and what the upload holds, or why the stream is incomplete.
    pub(super) fn into_data(self) -> Result<(UploadData, UploadHold), RequestError> {
        if self.buf.len() != self.packing.total_bytes() as u64 {
            return Err(RequestError::Truncated {
                received: usize::try_from(self.buf.len()).unwrap_or(usize::MAX),
                expected: self.packing.total_bytes(),
                elements: self.total,
                bits: self.packing.bits(),
            });
        }
        let data = self
            .buf
            .finish()
            .map_err(|e| spill_error(&self.spill_dir, e))?;
        Ok((data, self.hold))
    }
}

/// A spill file's I/O error as the site sees it.
pub(super) fn spill_error(dir: &Path, e: std::io::Error) -> RequestError {
    RequestError::Spill {
        dir: dir.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers come back for uploads of the same length, within the
    /// budget; an upload of another length gets a fresh one and the pool
    /// lets the old length go.
    #[test]
    fn upload_buffers_are_reused_within_the_budget() {
        let pool = BufferPool {
            free: Mutex::default(),
            cap_bytes: 5 << 20,
        };
        let mut a = pool.take(2 << 20);
        a.extend_from_slice(&[1, 2, 3]);
        let at = a.as_ptr();
        let b = pool.take(2 << 20);
        let c = pool.take(2 << 20);
        pool.give(a);
        pool.give(b);
        // A third one would hold 6 MiB against a budget of 5.
        pool.give(c);
        let held = || pool.free.lock().map(|f| f.len()).unwrap_or(0);
        assert_eq!(held(), 2);
        let again = pool.take(2 << 20);
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert_eq!(again.capacity(), 2 << 20);
        assert_eq!(again.as_ptr(), at, "the same memory again");
        let other = pool.take(1 << 20);
        assert_eq!(other.capacity(), 1 << 20);
        assert_eq!(held(), 0, "buffers of another length are let go");
    }

    #[test]
    fn the_kept_buffers_go_once_the_round_takes_no_more_uploads() {
        let slots = UploadSlots::new(2, 16, Gauge::default());
        slots.pool.give(slots.pool.take(1 << 20));
        let held = || slots.pool.free.lock().map(|f| f.len()).unwrap_or(9);
        assert_eq!(held(), 1);
        slots.release_buffers();
        assert_eq!(held(), 0);
    }
}
