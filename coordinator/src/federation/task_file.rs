//! The sealed shares a round routes, held on disk until each recipient has
//! answered. Each site's shares (k of them, some 120 bytes each) wait in
//! the coordinator's replay log until its masked input is accepted, so that
//! a site that reconnects gets them again: O(n·k) bytes, the one part of
//! the coordinator's memory that grew faster than the number of sites
//! (26 MB at n = 1000, k = 217). They are written once to an unlinked
//! temporary file in `limits.spill_dir` and read back a part at a time as
//! each stream sends them (from the page cache, as a rule). The same file
//! holds them from the moment each bundle arrives until the share-keys
//! stage routes them (`sealed.rs`).
//!
//! Like a spilled upload, the file is unlinked from the start, so a crash
//! leaves nothing behind, and it holds only ciphertexts sealed for the
//! recipients (`docs/security.md`). A file that cannot be created or
//! written leaves the shares in memory, as before, with a warning.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use confide_proto::task_parts::StoredEncoding;
use prost::bytes::Bytes;

/// A round's file of encoded tasks, written one after another.
#[derive(Debug)]
pub(super) struct TaskFile {
    file: Arc<File>,
    /// Where the next task goes.
    end: u64,
}

impl TaskFile {
    /// A new unlinked file in `dir`.
    pub(super) fn create(dir: &Path) -> io::Result<Self> {
        Ok(TaskFile {
            file: Arc::new(tempfile::tempfile_in(dir)?),
            end: 0,
        })
    }

    /// Writes `encoding` after the tasks before it; returns where to read
    /// it back from.
    pub(super) fn store(&mut self, encoding: &[u8]) -> io::Result<Arc<dyn StoredEncoding>> {
        let offset = self.append(encoding)?;
        Ok(Arc::new(Region {
            file: self.file.clone(),
            offset,
        }))
    }

    /// Writes `bytes` after everything before them; returns their offset.
    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let at = self.end;
        self.file.write_all_at(bytes, at)?;
        self.end += bytes.len() as u64;
        Ok(at)
    }

    /// Reads `buf.len()` bytes written at `offset` back.
    pub(super) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// One task's bytes in a [`TaskFile`].
#[derive(Debug)]
struct Region {
    file: Arc<File>,
    offset: u64,
}

impl StoredEncoding for Region {
    fn read(&self, start: usize, end: usize) -> io::Result<Bytes> {
        let mut buf = vec![0; end.saturating_sub(start)];
        self.file
            .read_exact_at(&mut buf, self.offset + start as u64)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_read_back_from_where_they_were_written() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut f = TaskFile::create(dir.path())?;
        let a = f.store(b"first task")?;
        let b = f.store(b"second")?;
        assert_eq!(&a.read(0, 10)?[..], b"first task");
        assert_eq!(&a.read(6, 10)?[..], b"task");
        assert_eq!(&b.read(0, 6)?[..], b"second");
        assert_eq!(&b.read(3, 3)?[..], b"");
        // Past the end of the file: an error, not short bytes.
        assert!(b.read(0, 7).is_err());
        // Unlinked: nothing in the directory.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }
}
