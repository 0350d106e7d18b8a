//! The sealed shares of the share-keys stage, in the coordinator's custody
//! from the moment a site's bundle is accepted until the stage closes and
//! routes them. Each bundle's ciphertexts (k of them, some 120 bytes each)
//! are taken out before the machine sees the bundle and written to the
//! round's task file (`task_file.rs`) once it is accepted; the machine
//! routes the shares by `(from, to)` alone, and at the close each
//! recipient's ciphertexts are read back into its `IncomingShares`.
//!
//! Held in memory until the close, all bundles at once were the largest
//! step in the coordinator's memory at n = 1000 (about 35 MB of heap at
//! k = 217, `docs/performance.md`); on disk they are O(n·k) bytes of page
//! cache and an index of 12 bytes a share. Without a task file (no spill
//! directory, or it cannot be written) they stay in memory here, and
//! nothing is lost.

use std::collections::HashMap;
use std::io;

use confide_crypto::MemberId;
use confide_crypto::protocol::{EncryptedShare, MAX_SEALED_SHARE_BYTES, ShareBundle};

use super::task_file::TaskFile;

/// One accepted bundle's ciphertexts, sorted by recipient.
enum Held {
    /// In the task file from `base`: (recipient, start after `base`, length).
    OnDisk {
        base: u64,
        parts: Vec<(MemberId, u32, u32)>,
    },
    /// Where no task file could take them.
    InMemory(Vec<(MemberId, Vec<u8>)>),
}

/// Ciphertexts taken out of a bundle before the machine sees it, sorted by
/// recipient.
pub(super) struct Taken(Vec<(MemberId, Vec<u8>)>);

/// The ciphertexts of the bundles accepted this round, by dealer.
#[derive(Default)]
pub(super) struct SealedShares {
    held: HashMap<MemberId, Held>,
}

impl SealedShares {
    /// Takes the ciphertexts out of `bundle`, leaving the machine the
    /// shares' dealer and recipient. Nothing is taken when one is over the
    /// limit: the machine then refuses the bundle and names the share.
    pub(super) fn take(bundle: &mut ShareBundle) -> Option<Taken> {
        if bundle
            .shares
            .iter()
            .any(|s| s.ciphertext.len() > MAX_SEALED_SHARE_BYTES)
        {
            return None;
        }
        let mut parts: Vec<(MemberId, Vec<u8>)> = bundle
            .shares
            .iter_mut()
            .map(|s| (s.to, std::mem::take(&mut s.ciphertext)))
            .collect();
        parts.sort_by_key(|(to, _)| *to);
        Some(Taken(parts))
    }

    /// Keeps what was taken from `from`'s accepted bundle: in `file`, or
    /// here without one. When writing fails they are kept here all the same
    /// and the error is returned, for the caller to stop using the file.
    pub(super) fn keep(
        &mut self,
        from: MemberId,
        taken: Taken,
        file: Option<&mut TaskFile>,
    ) -> io::Result<()> {
        let Taken(parts) = taken;
        let Some(file) = file else {
            self.held.insert(from, Held::InMemory(parts));
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(parts.iter().map(|(_, c)| c.len()).sum());
        let mut index = Vec::with_capacity(parts.len());
        for (to, c) in &parts {
            // At most k × 256 bytes: far within u32.
            index.push((*to, bytes.len() as u32, c.len() as u32));
            bytes.extend_from_slice(c);
        }
        match file.append(&bytes) {
            Ok(base) => {
                self.held.insert(from, Held::OnDisk { base, parts: index });
                Ok(())
            }
            Err(e) => {
                self.held.insert(from, Held::InMemory(parts));
                Err(e)
            }
        }
    }

    /// Puts each share's ciphertext back, read from `file` or moved out of
    /// memory (each share goes to one recipient, so each is read once).
    /// Shares this custody never took are left as they are.
    pub(super) fn fill(
        &mut self,
        shares: &mut [EncryptedShare],
        file: Option<&TaskFile>,
    ) -> io::Result<()> {
        for s in shares.iter_mut() {
            match self.held.get_mut(&s.from) {
                Some(Held::InMemory(parts)) => {
                    if let Ok(i) = parts.binary_search_by_key(&s.to, |p| p.0) {
                        s.ciphertext = std::mem::take(&mut parts[i].1);
                    }
                }
                Some(Held::OnDisk { base, parts }) => {
                    let Ok(i) = parts.binary_search_by_key(&s.to, |p| p.0) else {
                        continue;
                    };
                    let (_, start, len) = parts[i];
                    let file = file.ok_or_else(|| io::Error::other("the task file is gone"))?;
                    let mut buf = vec![0; len as usize];
                    file.read_at(&mut buf, *base + u64::from(start))?;
                    s.ciphertext = buf;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Forgets everything: the stage has routed its shares.
    pub(super) fn clear(&mut self) {
        self.held = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(from: MemberId, to: &[MemberId]) -> ShareBundle {
        ShareBundle {
            round: 1,
            from,
            seed_commitment: [0; 32],
            shares: to
                .iter()
                .map(|&t| EncryptedShare {
                    from,
                    to: t,
                    ciphertext: vec![from as u8, t as u8, 0xAB],
                })
                .collect(),
        }
    }

    /// The shares addressed to `to` among `bundles`, as the machine routes them.
    fn routed(bundles: &[ShareBundle], to: MemberId) -> Vec<EncryptedShare> {
        bundles
            .iter()
            .flat_map(|b| b.shares.iter().filter(|s| s.to == to).cloned())
            .collect()
    }

    fn custody(file: Option<&mut TaskFile>) -> io::Result<(SealedShares, Vec<ShareBundle>)> {
        let mut c = SealedShares::default();
        let mut file = file;
        let mut bundles = vec![bundle(1, &[3, 2]), bundle(2, &[1, 3]), bundle(3, &[2, 1])];
        for b in &mut bundles {
            let taken = SealedShares::take(b)
                .ok_or("nothing taken")
                .map_err(io::Error::other)?;
            assert!(b.shares.iter().all(|s| s.ciphertext.is_empty()));
            c.keep(b.from, taken, file.as_deref_mut())?;
        }
        Ok((c, bundles))
    }

    fn check_all(
        c: &mut SealedShares,
        bundles: &[ShareBundle],
        file: Option<&TaskFile>,
    ) -> io::Result<()> {
        for to in 1..=3 {
            let mut shares = routed(bundles, to);
            c.fill(&mut shares, file)?;
            assert_eq!(shares.len(), 2);
            for s in &shares {
                assert_eq!(s.ciphertext, vec![s.from as u8, to as u8, 0xAB], "{s:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn ciphertexts_come_back_to_their_recipients_from_the_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut file = TaskFile::create(dir.path())?;
        // Something before them in the file, as when a task was stored.
        file.append(b"earlier")?;
        let (mut c, bundles) = custody(Some(&mut file))?;
        assert!(c.held.values().all(|h| matches!(h, Held::OnDisk { .. })));
        check_all(&mut c, &bundles, Some(&file))?;
        // The file gone: an error, not an empty share.
        let mut shares = routed(&bundles, 1);
        assert!(c.fill(&mut shares, None).is_err());
        Ok(())
    }

    #[test]
    fn without_a_file_they_stay_in_memory() -> io::Result<()> {
        let (mut c, bundles) = custody(None)?;
        assert!(c.held.values().all(|h| matches!(h, Held::InMemory(_))));
        check_all(&mut c, &bundles, None)
    }

    #[test]
    fn an_oversized_ciphertext_is_left_for_the_machine_to_refuse() {
        let mut b = bundle(1, &[2, 3]);
        b.shares[1].ciphertext = vec![0; MAX_SEALED_SHARE_BYTES + 1];
        assert!(SealedShares::take(&mut b).is_none());
        assert_eq!(b.shares[0].ciphertext, vec![1, 2, 0xAB], "untouched");
    }

    #[test]
    fn shares_it_never_took_are_left_alone() -> io::Result<()> {
        let mut c = SealedShares::default();
        let mut shares = routed(&[bundle(7, &[8])], 8);
        c.fill(&mut shares, None)?;
        assert_eq!(shares[0].ciphertext, vec![7, 8, 0xAB]);
        c.clear();
        Ok(())
    }
}
