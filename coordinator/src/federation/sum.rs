//! The sum of a secure round's masked inputs, kept outside the federation's
//! lock (`offlock.rs`): adds are owed under the lock, made outside it, and
//! the unmask takes the sum only once none is owed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use confide_crypto::ProtocolError;
use confide_crypto::protocol::RingVec;
use confide_crypto::ring::Ring;

use super::spill::UploadData;

/// The sum of a secure round's masked inputs, outside the federation's lock.
pub struct OutsideSum {
    sum: Mutex<RingVec>,
    /// Accepted inputs not yet added, and whether one was lost (its add
    /// never ran: the sum is then wrong and the round fails).
    pending: Mutex<(usize, bool)>,
    idle: Condvar,
}

impl OutsideSum {
    /// Zeros: `len` elements of `ring`.
    pub fn new(ring: Ring, len: usize) -> Arc<Self> {
        Arc::new(OutsideSum {
            sum: Mutex::new(RingVec::zeros(ring, len)),
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
    /// Add the little-endian vector `data` into the sum, block by block
    /// when it was spilled. On a read error the add stays unmade (the
    /// round then fails).
    pub fn add(mut self, data: UploadData) -> std::io::Result<()> {
        let mut sum = self.sum.sum.lock().unwrap_or_else(|p| p.into_inner());
        let width = sum.ring().bytes();
        if data.len() != (sum.len() as u64).saturating_mul(width as u64) {
            return Ok(());
        }
        let mut ok = true;
        data.for_each_block(width, |at, block| {
            let at = usize::try_from(at / width as u64).unwrap_or(usize::MAX);
            ok &= add_le(&mut sum, at, block);
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

/// `sum[at..] += bytes` element-wise (wrapping); false if `bytes` is not
/// whole elements within the sum.
fn add_le(sum: &mut RingVec, at: usize, bytes: &[u8]) -> bool {
    match sum {
        RingVec::U32(s) => {
            let Some(s) = s.get_mut(at..at.saturating_add(bytes.len() / 4)) else {
                return false;
            };
            if bytes.len() != s.len() * 4 {
                return false;
            }
            for (a, b) in s.iter_mut().zip(bytes.chunks_exact(4)) {
                *a = a.wrapping_add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            true
        }
        RingVec::U64(s) => {
            let Some(s) = s.get_mut(at..at.saturating_add(bytes.len() / 8)) else {
                return false;
            };
            if bytes.len() != s.len() * 8 {
                return false;
            }
            for (a, b) in s.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *a = a.wrapping_add(u64::from_le_bytes(w));
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A vector of more than one spill block, spilled and added back block
    /// by block, sums exactly like the same bytes in memory.
    #[test]
    fn a_spilled_vector_adds_like_one_in_memory() -> Result<(), Box<dyn std::error::Error>> {
        let n = (3 << 20) / 4 + 5;
        let v: Vec<u32> = (0..n as u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let bytes = confide_crypto::ring::to_le_bytes(&v);
        let mut file = tempfile::tempfile()?;
        file.write_all(&bytes)?;
        std::io::Seek::rewind(&mut file)?;

        let spilled = OutsideSum::new(Ring::U32, n);
        spilled
            .owe()
            .add(UploadData::File(file, bytes.len() as u64))?;
        spilled.owe().add(UploadData::Memory(bytes.clone()))?;
        let RingVec::U32(sum) = spilled.take()? else {
            return Err("ring".into());
        };
        assert!(sum.iter().zip(&v).all(|(s, x)| *s == x.wrapping_mul(2)));

        // A vector of the wrong length never counts as added.
        let short = OutsideSum::new(Ring::U32, n);
        short.owe().add(UploadData::Memory(bytes[..8].to_vec()))?;
        assert!(short.take().is_err());
        Ok(())
    }
}
