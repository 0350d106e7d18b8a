//! Parsed verifying keys kept across rounds.
//!
//! A site checks signatures from the same long-term keys round after
//! round, and parsing a key is a real part of a check: decompressing an
//! Ed25519 point, or building an SM2 key's table of multiples
//! (`sm2_verify`). A [`Kept`] holds what was computed from a key's bytes
//! for up to `room` keys. It holds only values computed from public keys
//! that parsed, and once full it keeps nothing more, so a flood of new
//! keys costs memory up to the bound and never makes a check fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Values computed from encoded keys, for up to `room` keys.
pub(super) struct Kept<V> {
    keys: Mutex<HashMap<Box<[u8]>, Arc<V>>>,
    room: usize,
}

impl<V> Kept<V> {
    pub(super) fn new(room: usize) -> Self {
        Kept {
            keys: Mutex::new(HashMap::new()),
            room,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<[u8]>, Arc<V>>> {
        // Every change to the map is one call, so a lock poisoned by a
        // panic elsewhere still guards a whole map.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value kept for `key`, or else `make(key, room)`, kept when
    /// there is room. `room` tells `make` whether the store had room when
    /// asked, for values worth computing only if kept (another thread may
    /// fill the last place meanwhile, and then the value is used once).
    /// The lock is not held while `make` runs; a key `make` refuses is not
    /// kept.
    pub(super) fn get_or_make<E>(
        &self,
        key: &[u8],
        make: impl FnOnce(&[u8], bool) -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let room = {
            let keys = self.lock();
            if let Some(v) = keys.get(key) {
                return Ok(Arc::clone(v));
            }
            keys.len() < self.room
        };
        let v = Arc::new(make(key, room)?);
        if room {
            let mut keys = self.lock();
            if keys.len() < self.room {
                keys.entry(key.into()).or_insert_with(|| Arc::clone(&v));
            }
        }
        Ok(v)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_its_room_and_nothing_it_refused() {
        let kept: Kept<(usize, bool)> = Kept::new(2);
        let make = |k: &[u8], room: bool| -> Result<(usize, bool), ()> {
            if k.is_empty() {
                Err(())
            } else {
                Ok((k.len(), room))
            }
        };
        let a = kept.get_or_make(b"a", make).expect("made");
        assert_eq!(*a, (1, true));
        assert!(Arc::ptr_eq(
            &a,
            &kept.get_or_make(b"a", make).expect("kept")
        ));
        assert!(kept.get_or_make(b"", make).is_err());
        assert_eq!(kept.len(), 1);
        assert_eq!(*kept.get_or_make(b"bb", make).expect("made"), (2, true));
        // Full: made with `room` false, not kept, made again next time.
        let c = kept.get_or_make(b"ccc", make).expect("made");
        assert_eq!(*c, (3, false));
        assert!(!Arc::ptr_eq(
            &c,
            &kept.get_or_make(b"ccc", make).expect("made")
        ));
        assert_eq!(kept.len(), 2);
    }
}
