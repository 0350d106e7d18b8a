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

/// Bytes written to a spill file at once, and read back per add step.
const SPILL_BLOCK: usize = 1 << 20;

/// An upload's bytes so far.
pub(super) enum UploadBuf {
    /// Within the memory budget.
    Memory(Vec<u8>),
    /// Spilled: a buffered writer on an unlinked file, and the bytes written.
    File(Box<BufWriter<File>>, u64),
}

impl UploadBuf {
    /// A buffer in memory for `bytes` bytes.
    pub(super) fn memory(bytes: usize) -> Self {
        UploadBuf::Memory(Vec::with_capacity(bytes))
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

    /// Calls `f(offset, block)` over the bytes in order, in blocks of whole
    /// `unit`-byte elements (a spilled upload is read `SPILL_BLOCK` at a
    /// time, so only one block is in memory).
    pub(super) fn for_each_block(
        self,
        unit: usize,
        mut f: impl FnMut(u64, &[u8]),
    ) -> io::Result<()> {
        match self {
            UploadData::Memory(v) => {
                f(0, &v);
                Ok(())
            }
            UploadData::File(mut file, len) => {
                let unit = unit.max(1);
                let step = (SPILL_BLOCK / unit).max(1) * unit;
                let mut block = vec![0u8; step];
                let mut at = 0u64;
                while at < len {
                    let n = usize::try_from(len - at).map_or(step, |rest| rest.min(step));
                    file.read_exact(&mut block[..n])?;
                    f(at, &block[..n]);
                    at += n as u64;
                }
                Ok(())
            }
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
        buf.finish()?.for_each_block(12, |at, b| {
            assert_eq!(b.len() % 12, 0);
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
        let mut m = UploadBuf::memory(data.len());
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
