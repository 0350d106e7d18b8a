//! Where a masked upload waits between its stream and the sum: in memory
//! while the upload buffer budget (`limits.upload_buffer_mib`) has room,
//! otherwise in an unlinked temporary file (`limits.spill_dir`), so the
//! coordinator's memory does not grow with the model or the sites.
//!
//! Why not add each chunk into the sum as it arrives: a stream that breaks
//! halfway (a site that dies mid-upload) would leave half a masked vector in
//! the sum, and nothing could take it out again. A spilled vector costs a
//! write to the page cache and one sequential read when it is added.
//!
//! The file is created unlinked (`tempfile::tempfile_in`), so a crash leaves
//! nothing behind; its contents are masked, which reveal nothing alone
//! (`docs/security.md`).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

/// Bytes written to a spill file at once, and about what is read back per
/// add step.
pub(super) const SPILL_BLOCK: usize = 1 << 20;

/// An upload's bytes so far.
pub(super) enum UploadBuf {
    /// Within the memory budget.
    Memory(Vec<u8>),
    /// Spilled: a buffered writer on an unlinked file, and the bytes written.
    File(Box<BufWriter<File>>, u64),
}

impl UploadBuf {
    /// In memory, in `buf` (empty, with room for the whole upload).
    pub(super) fn memory(buf: Vec<u8>) -> Self {
        UploadBuf::Memory(buf)
    }

    /// A spill file in `dir`.
    pub(super) fn spill(dir: &Path) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(UploadBuf::File(
            Box::new(BufWriter::with_capacity(SPILL_BLOCK, file)),
            0,
        ))
    }

    /// Bytes received so far.
    pub(super) fn len(&self) -> u64 {
        match self {
            UploadBuf::Memory(v) => v.len() as u64,
            UploadBuf::File(_, n) => *n,
        }
    }

    /// Whether the upload went to disk.
    pub(super) fn spilled(&self) -> bool {
        matches!(self, UploadBuf::File(..))
    }

    /// Append `data`.
    pub(super) fn push(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            UploadBuf::Memory(v) => v.extend_from_slice(data),
            UploadBuf::File(w, n) => {
                w.write_all(data)?;
                *n += data.len() as u64;
            }
        }
        Ok(())
    }

    /// The whole upload, ready to be read from the start.
    pub(super) fn finish(self) -> io::Result<UploadData> {
        match self {
            UploadBuf::Memory(v) => Ok(UploadData::Memory(v)),
            UploadBuf::File(w, n) => {
                let mut file = w.into_inner().map_err(|e| e.into_error())?;
                file.rewind()?;
                Ok(UploadData::File(file, n))
            }
        }
    }
}

/// A complete upload: in memory or in its spill file.
pub(super) enum UploadData {
    /// The bytes.
    Memory(Vec<u8>),
    /// An unlinked file positioned at its start, and its length.
    File(File, u64),
}

impl UploadData {
    /// Bytes in all.
    pub(super) fn len(&self) -> u64 {
        match self {
            UploadData::Memory(v) => v.len() as u64,
            UploadData::File(_, n) => *n,
        }
    }

    /// Calls `f(element, bytes)` for each block of `blocks`, given in
    /// order as (first element, byte length) and covering the upload; a
    /// spilled upload is read one block at a time, so only one is in
    /// memory. Blocks past the end are not called.
    pub(super) fn for_each_block(
        &mut self,
        blocks: impl IntoIterator<Item = (usize, usize)>,
        mut f: impl FnMut(usize, &[u8]),
    ) -> io::Result<()> {
        match self {
            UploadData::Memory(v) => {
                let mut rest = &v[..];
                for (at, n) in blocks {
                    let (block, tail) = rest.split_at(n.min(rest.len()));
                    f(at, block);
                    rest = tail;
                }
                Ok(())
            }
            UploadData::File(file, len) => {
                let mut buf = Vec::new();
                let mut read = 0u64;
                for (at, n) in blocks {
                    let n = usize::try_from(len.saturating_sub(read)).map_or(n, |rest| rest.min(n));
                    buf.resize(n, 0);
                    file.read_exact(&mut buf)?;
                    f(at, &buf);
                    read += n as u64;
                }
                Ok(())
            }
        }
    }

    /// The memory an in-memory upload was held in, for the next upload.
    pub(super) fn into_buffer(self) -> Option<Vec<u8>> {
        match self {
            UploadData::Memory(v) => Some(v),
            UploadData::File(..) => None,
        }
    }

    /// The bytes in memory (a spilled upload is read back whole: only the
    /// plaintext rounds need this).
    pub(super) fn into_vec(self) -> io::Result<Vec<u8>> {
        match self {
            UploadData::Memory(v) => Ok(v),
            UploadData::File(mut file, len) => {
                let mut v = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                file.read_to_end(&mut v)?;
                Ok(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_spilled_upload_reads_back_in_whole_element_blocks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = bytes(3 * SPILL_BLOCK + 12);
        let mut buf = UploadBuf::spill(dir.path())?;
        for c in data.chunks(100_000) {
            buf.push(c)?;
        }
        assert!(buf.spilled());
        assert_eq!(buf.len(), data.len() as u64);
        // Unlinked: nothing in the directory even while it is open.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        let mut back = Vec::new();
        let mut offsets = Vec::new();
        // Blocks of 12-byte elements, as a packing's chunks would give.
        let step = (SPILL_BLOCK / 12) * 12;
        let blocks = (0..data.len().div_ceil(step)).map(|i| (i * step / 12, step));
        buf.finish()?.for_each_block(blocks, |at, b| {
            assert!(b.len() == step || back.len() + b.len() == data.len());
            offsets.push(at);
            back.extend_from_slice(b);
        })?;
        assert_eq!(back, data);
        assert!(offsets.len() > 3, "{offsets:?}");
        Ok(())
    }

    #[test]
    fn memory_and_spill_give_the_same_bytes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = bytes(5000);
        let mut m = UploadBuf::memory(Vec::with_capacity(data.len()));
        let mut s = UploadBuf::spill(dir.path())?;
        for c in data.chunks(333) {
            m.push(c)?;
            s.push(c)?;
        }
        assert!(!m.spilled());
        assert_eq!(m.finish()?.into_vec()?, data);
        assert_eq!(s.finish()?.into_vec()?, data);
        Ok(())
    }
}
