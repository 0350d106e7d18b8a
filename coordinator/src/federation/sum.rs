//! The sum of a secure round's masked inputs, kept outside the federation's
//! lock (`offlock.rs`): adds are owed under the lock, made outside it, and
//! the unmask takes the sum only once none is owed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use confide_crypto::ProtocolError;
use confide_crypto::protocol::RingVec;
use confide_proto::layout::Packing;

/// The sum of a secure round's masked inputs, outside the federation's lock.
pub struct OutsideSum {
    sum: Mutex<RingVec>,
    /// How each input travels.
    packing: Packing,
    /// Accepted inputs not yet added, and whether one was lost (its add
    /// never ran: the sum is then wrong and the round fails).
    pending: Mutex<(usize, bool)>,
    idle: Condvar,
}

impl OutsideSum {
    /// Zeros: the vector `packing` describes, in its ring.
    pub fn new(packing: Packing) -> Arc<Self> {
        Arc::new(OutsideSum {
            sum: Mutex::new(RingVec::zeros(packing.ring(), packing.len())),
            packing,
            pending: Mutex::new((0, false)),
            idle: Condvar::new(),
        })
    }

    fn pending(&self) -> MutexGuard<'_, (usize, bool)> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An input the machine has just accepted: its add is owed. Taken under
    /// the federation's lock together with the acceptance.
    pub fn owe(self: &Arc<Self>) -> OwedAdd {
        self.pending().0 += 1;
        OwedAdd {
            sum: self.clone(),
            done: false,
        }
    }

    /// The sum, once every owed add has been made (waits for them).
    pub(super) fn take(&self) -> Result<RingVec, ProtocolError> {
        let mut p = self.pending();
        while p.0 > 0 {
            p = self.idle.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        if p.1 {
            return Err(ProtocolError::Aborted {
                reason: "an accepted masked input never reached the sum".into(),
            });
        }
        drop(p);
        let mut sum = self.sum.lock().unwrap_or_else(|p| p.into_inner());
        let ring = sum.ring();
        Ok(std::mem::replace(&mut *sum, RingVec::zeros(ring, 0)))
    }
}

/// One accepted input's add, owed to an [`OutsideSum`]; dropping it
/// without [`OwedAdd::add`] marks the sum as wrong.
pub struct OwedAdd {
    sum: Arc<OutsideSum>,
    done: bool,
}

impl OwedAdd {
    /// Add the little-endian vector `bytes` into the sum.
    pub fn add(mut self, bytes: &[u8]) {
        let mut sum = self.sum.sum.lock().unwrap_or_else(|p| p.into_inner());
        self.done = add_le(&mut sum, &self.sum.packing, bytes);
    }
}

impl Drop for OwedAdd {
    fn drop(&mut self) {
        let mut p = self.sum.pending();
        p.0 -= 1;
        p.1 |= !self.done;
        self.sum.idle.notify_all();
    }
}

/// `sum += bytes` element-wise (wrapping), `bytes` in the wire form
/// `packing` (packed slots unpacked, high bits zero); false if the lengths
/// differ.
fn add_le(sum: &mut RingVec, packing: &Packing, bytes: &[u8]) -> bool {
    bytes.len() == packing.total_bytes() && packing.add_into(sum, 0, bytes).is_ok()
}
