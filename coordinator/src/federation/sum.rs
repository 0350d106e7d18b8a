//! The sum of a secure round's masked inputs, kept outside the federation's
//! lock (`offlock.rs`): adds are owed under the lock, made outside it, and
//! the unmask takes the sum only once none is owed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use confide_crypto::ProtocolError;
use confide_crypto::protocol::RingVec;
use confide_proto::layout::Packing;

use super::spill::{SPILL_BLOCK, UploadData};

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
    /// Add `data`, a vector in the round's wire form, into the sum; a
    /// spilled one a block of whole elements at a time. On a read error
    /// the add stays unmade (the round then fails).
    pub fn add(mut self, data: &mut UploadData) -> std::io::Result<()> {
        let packing = &self.sum.packing;
        let mut sum = self.sum.sum.lock().unwrap_or_else(|p| p.into_inner());
        if data.len() != packing.total_bytes() as u64 {
            return Ok(());
        }
        // Chunk ranges end on whole elements and bytes, so each block adds
        // on its own.
        let blocks = packing.chunks(SPILL_BLOCK).into_iter().filter_map(|r| {
            let a = packing.bytes_at(r.start)?;
            let b = packing.bytes_at(r.end)?;
            Some((r.start, b - a))
        });
        let mut ok = true;
        data.for_each_block(blocks, |at, block| {
            ok &= packing.add_into(&mut sum, at, block).is_ok();
        })?;
        self.done = ok;
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use confide_crypto::ring::Ring;

    use super::*;

    /// A vector of more than one spill block, spilled and added back block
    /// by block, sums exactly like the same bytes in memory, packed or not.
    #[test]
    fn a_spilled_vector_adds_like_one_in_memory() -> Result<(), Box<dyn std::error::Error>> {
        let n = (3 << 20) / 4 + 5;
        let v: Vec<u32> = (0..n as u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for packing in [
            Packing::plain(Ring::U32, n),
            Packing::new(Ring::U32, 13, n - 3, n)?,
        ] {
            let bytes = packing.encode(&v, 0..n);
            let mut file = tempfile::tempfile()?;
            file.write_all(&bytes)?;
            std::io::Seek::rewind(&mut file)?;

            let sum = OutsideSum::new(packing);
            sum.owe()
                .add(&mut UploadData::File(file, bytes.len() as u64))?;
            sum.owe().add(&mut UploadData::Memory(bytes.clone()))?;
            let RingVec::U32(got) = sum.take()? else {
                return Err("ring".into());
            };
            let mask = |i: usize| {
                if i < packing.packed() {
                    (1u32 << 13) - 1
                } else {
                    u32::MAX
                }
            };
            for (i, (s, x)) in got.iter().zip(&v).enumerate() {
                assert_eq!(*s, (x & mask(i)).wrapping_mul(2), "element {i}");
            }

            // A vector of the wrong length never counts as added.
            let short = OutsideSum::new(packing);
            short
                .owe()
                .add(&mut UploadData::Memory(bytes[..8].to_vec()))?;
            assert!(short.take().is_err());
        }
        Ok(())
    }
}
