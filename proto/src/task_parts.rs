//! Large tasks in parts. gRPC encodes each message of a stream whole into
//! the stream's one buffer, and that buffer keeps its largest size for the
//! stream's life: a 600 KB unmask request sent to 950 survivors would leave
//! 570 MB of buffers on the coordinator. So a task above [`TASK_PART_BYTES`]
//! is encoded once ([`OutgoingTask::new`], shared by every stream that sends
//! it) and goes out as [`v1::TaskPart`]s of at most that size; the site puts
//! them back together with a [`Reassembly`] before it looks at the task.
//!
//! ```
//! use confide_proto::task_parts::{OutgoingTask, Reassembly};
//! use confide_proto::v1::{task, Task, UnmaskRequest};
//! let big = Task { kind: Some(task::Kind::UnmaskRequest(UnmaskRequest {
//!     round: 7, survivors: (0..20_000).collect(), ..Default::default() })) };
//! let out = OutgoingTask::new(big.clone());
//! assert!(out.part_count() > 1);
//! let mut r = Reassembly::default();
//! let mut whole = None;
//! for i in 0..out.part_count() {
//!     whole = r.push(out.part(i).expect("in range")?)?;
//! }
//! assert_eq!(whole, Some(big));
//! # Ok::<(), confide_proto::task_parts::PartError>(())
//! ```

use std::fmt;
use std::sync::Arc;

use prost::Message;
use prost::bytes::{Bytes, BytesMut};

use crate::v1;

/// Largest part of a task on the stream, and the size above which a task
/// is sent in parts. A stream's encode buffer keeps its largest size, which
/// with the codec's yield size ([`crate::codec::YIELD_BYTES`], equal to
/// this) is about two parts at most: some 16 MB over a thousand task
/// streams. A part is still cheap to send.
pub const TASK_PART_BYTES: usize = 8 * 1024;

/// Largest whole task a site puts back together (the unmask request, the
/// largest, is about 630 bytes per survivor).
pub const MAX_TASK_BYTES: u64 = 256 << 20;

/// Why parts of a task could not be put back together.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The announced length is zero or over [`MAX_TASK_BYTES`].
    #[error("a task in parts announces {total_len} bytes; allowed are 1 to {max}")]
    BadLength {
        /// Announced.
        total_len: u64,
        /// Limit.
        max: u64,
    },
    /// A part does not continue where the last one ended, changes the
    /// announced length, is empty, or runs past the end.
    #[error(
        "task part out of order: expected offset {expected} of {total_len} bytes, got {len} bytes at offset {offset} of {got_total}"
    )]
    OutOfOrder {
        /// Where the next part should start.
        expected: u64,
        /// The announced length so far.
        total_len: u64,
        /// Where it started.
        offset: u64,
        /// Its length.
        len: u64,
        /// The length it announced.
        got_total: u64,
    },
    /// A whole task arrived before the parts in progress were complete.
    #[error("a whole task arrived after {have} of {total_len} bytes of a task in parts")]
    Interrupted {
        /// Bytes put together.
        have: u64,
        /// Announced length.
        total_len: u64,
    },
    /// The parts put together are not a task, or are parts again.
    #[error("the task put together from parts does not decode: {0}")]
    Decode(String),
    /// A task held outside memory ([`StoredEncoding`]) could not be read.
    #[error("a task held on disk could not be read back: {0}")]
    Stored(String),
}

/// Where a task's encoding is held outside memory (the coordinator's spill
/// file for the sealed shares it routes, O(n·k) bytes a round), read back a
/// part at a time as a stream sends it.
pub trait StoredEncoding: fmt::Debug + Send + Sync {
    /// Bytes `start..end` of the encoding.
    fn read(&self, start: usize, end: usize) -> std::io::Result<Bytes>;
}

/// A task ready for any number of streams.
#[derive(Clone, Debug)]
pub enum OutgoingTask {
    /// Sent as it is (boxed: a task is larger than the other variant).
    Whole(Box<v1::Task>),
    /// Its encoding, sent in parts: pieces laid end to end, which other
    /// tasks may share (see [`OutgoingTask::neighbour_keys`]). Made by
    /// [`OutgoingTask::from_pieces`], which sums `len` once rather than
    /// for every part.
    Encoded {
        /// The pieces, in order.
        pieces: Vec<Bytes>,
        /// Their total length.
        len: usize,
    },
    /// Its encoding, held outside memory and always sent in parts (even
    /// one): [`OutgoingTask::stored`].
    Stored {
        /// Where it is.
        source: Arc<dyn StoredEncoding>,
        /// Its length.
        len: usize,
    },
}

impl PartialEq for OutgoingTask {
    /// Held tasks are equal when held in the same place.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (OutgoingTask::Whole(a), OutgoingTask::Whole(b)) => a == b,
            (
                OutgoingTask::Encoded { pieces: a, len: m },
                OutgoingTask::Encoded { pieces: b, len: n },
            ) => a == b && m == n,
            (
                OutgoingTask::Stored { source: a, len: m },
                OutgoingTask::Stored { source: b, len: n },
            ) => Arc::ptr_eq(a, b) && m == n,
            _ => false,
        }
    }
}

/// One neighbour's advert as it sits inside an encoded `NeighbourKeys`
/// (field, length and message), made once per member and shared by the
/// tasks of all its neighbours.
#[derive(Clone, Debug, PartialEq)]
pub struct AdvertPiece(Bytes);

impl AdvertPiece {
    /// The piece for `advert`.
    pub fn new(advert: &v1::RelayedAdvert) -> Self {
        // Field 2 of `NeighbourKeys` is `adverts`; the test
        // `neighbour_keys_from_pieces_decode_as_built` holds it to the schema.
        let mut buf = Vec::with_capacity(advert.encoded_len() + 8);
        prost::encoding::message::encode(2, advert, &mut buf);
        AdvertPiece(Bytes::from(buf))
    }
}

impl OutgoingTask {
    /// Whole when its encoding fits one part, else encoded once for parts.
    pub fn new(task: v1::Task) -> Self {
        if task.encoded_len() > TASK_PART_BYTES {
            OutgoingTask::from_pieces(vec![Bytes::from(task.encode_to_vec())])
        } else {
            OutgoingTask::Whole(Box::new(task))
        }
    }

    /// Always whole, whatever its size: for tasks the transport still edits
    /// as they leave (the round announcement gets the CRL then).
    pub fn whole(task: v1::Task) -> Self {
        OutgoingTask::Whole(Box::new(task))
    }

    /// The `NeighbourKeys` task of `round` with these adverts, in order,
    /// built from shared pieces: at n = 1000 each advert goes to about 200
    /// neighbours, and a copy per neighbour would be 150 MB.
    pub fn neighbour_keys(round: u64, adverts: &[AdvertPiece]) -> Self {
        let head = v1::NeighbourKeys {
            round,
            adverts: Vec::new(),
        };
        let body = head.encoded_len() + adverts.iter().map(|a| a.0.len()).sum::<usize>();
        // `Task.neighbour_keys` is field 2, length-delimited.
        let mut first = Vec::with_capacity(head.encoded_len() + 12);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut first);
        prost::encoding::encode_varint(body as u64, &mut first);
        first.extend_from_slice(&head.encode_to_vec());
        let mut pieces = Vec::with_capacity(adverts.len() + 1);
        pieces.push(Bytes::from(first));
        pieces.extend(adverts.iter().map(|a| a.0.clone()));
        OutgoingTask::from_pieces(pieces)
    }

    /// A task whose `len` bytes of encoding `source` holds.
    pub fn stored(source: Arc<dyn StoredEncoding>, len: usize) -> Self {
        OutgoingTask::Stored { source, len }
    }

    /// A task already encoded, as `pieces` laid end to end.
    pub fn from_pieces(pieces: Vec<Bytes>) -> Self {
        let len = pieces.iter().map(Bytes::len).sum();
        OutgoingTask::Encoded { pieces, len }
    }

    /// Encoded length of the task (without part framing).
    pub fn encoded_len(&self) -> usize {
        match self {
            OutgoingTask::Whole(t) => t.encoded_len(),
            OutgoingTask::Encoded { len, .. } | OutgoingTask::Stored { len, .. } => *len,
        }
    }

    /// The task's kind when it is whole (`None` for one in parts).
    pub fn whole_kind(&self) -> Option<&v1::task::Kind> {
        match self {
            OutgoingTask::Whole(t) => t.kind.as_ref(),
            OutgoingTask::Encoded { .. } | OutgoingTask::Stored { .. } => None,
        }
    }

    /// How many stream messages the task takes.
    pub fn part_count(&self) -> usize {
        match self {
            OutgoingTask::Whole(_) => 1,
            OutgoingTask::Encoded { len, .. } | OutgoingTask::Stored { len, .. } => {
                len.div_ceil(TASK_PART_BYTES)
            }
        }
    }

    /// Stream message `i` of [`Self::part_count`] (`None` past the last);
    /// a part inside one piece shares it, one across pieces is copied. Only
    /// a stored task can fail, when it cannot be read back.
    pub fn part(&self, i: usize) -> Option<Result<v1::Task, PartError>> {
        let len = match self {
            OutgoingTask::Whole(t) => return (i == 0).then(|| Ok(v1::Task::clone(t))),
            OutgoingTask::Encoded { len, .. } | OutgoingTask::Stored { len, .. } => *len,
        };
        let start = i.checked_mul(TASK_PART_BYTES)?;
        if start >= len {
            return None;
        }
        let end = (start + TASK_PART_BYTES).min(len);
        let data = match self.bytes(start, end) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(v1::Task {
            kind: Some(v1::task::Kind::Part(v1::TaskPart {
                total_len: len as u64,
                offset: start as u64,
                data,
            })),
        }))
    }

    /// Bytes `start..end` of the encoding of a task held encoded.
    fn bytes(&self, start: usize, end: usize) -> Result<Bytes, PartError> {
        match self {
            OutgoingTask::Whole(_) => Err(PartError::Decode("a whole task has no parts".into())),
            OutgoingTask::Encoded { pieces, .. } => Ok(span(pieces, start, end)),
            OutgoingTask::Stored { source, .. } => {
                let b = source
                    .read(start, end)
                    .map_err(|e| PartError::Stored(e.to_string()))?;
                if b.len() != end - start {
                    return Err(PartError::Stored(format!(
                        "{} bytes read back where {} were asked for",
                        b.len(),
                        end - start
                    )));
                }
                Ok(b)
            }
        }
    }

    /// The task itself (decoded again when it is held encoded).
    pub fn to_task(&self) -> Result<v1::Task, PartError> {
        match self {
            OutgoingTask::Whole(t) => Ok(v1::Task::clone(t)),
            OutgoingTask::Encoded { len, .. } | OutgoingTask::Stored { len, .. } => {
                decode(&self.bytes(0, *len)?)
            }
        }
    }
}

/// Bytes `start..end` of the pieces laid end to end.
fn span(pieces: &[Bytes], start: usize, end: usize) -> Bytes {
    let mut at = 0;
    let mut out: Option<BytesMut> = None;
    for p in pieces {
        let (from, to) = (at, at + p.len());
        at = to;
        if to <= start || p.is_empty() {
            continue;
        }
        if from >= end {
            break;
        }
        let slice = p.slice(start.saturating_sub(from)..end.min(to) - from);
        if out.is_none() && from <= start && end <= to {
            return slice;
        }
        out.get_or_insert_with(|| BytesMut::with_capacity(end - start))
            .extend_from_slice(&slice);
    }
    out.map(BytesMut::freeze).unwrap_or_default()
}

fn decode(b: &[u8]) -> Result<v1::Task, PartError> {
    let t = v1::Task::decode(b).map_err(|e| PartError::Decode(e.to_string()))?;
    if matches!(t.kind, Some(v1::task::Kind::Part(_))) {
        return Err(PartError::Decode("it is a part again".into()));
    }
    Ok(t)
}

/// Puts a stream's task parts back together; one per stream, since a
/// reconnected stream starts every task again.
#[derive(Debug, Default)]
pub struct Reassembly {
    buf: Vec<u8>,
    total_len: u64,
}

impl Reassembly {
    /// Takes the stream's next message: a whole task comes back at once,
    /// a part only when it completes its task. Any error leaves the
    /// reassembly empty, ready for the next task.
    pub fn push(&mut self, t: v1::Task) -> Result<Option<v1::Task>, PartError> {
        let r = self.take(t);
        if r.is_err() {
            *self = Reassembly::default();
        }
        r
    }

    fn take(&mut self, t: v1::Task) -> Result<Option<v1::Task>, PartError> {
        let p = match t.kind {
            Some(v1::task::Kind::Part(p)) => p,
            kind => {
                if self.total_len != 0 {
                    return Err(PartError::Interrupted {
                        have: self.buf.len() as u64,
                        total_len: self.total_len,
                    });
                }
                return Ok(Some(v1::Task { kind }));
            }
        };
        if self.total_len == 0 {
            if p.total_len == 0 || p.total_len > MAX_TASK_BYTES {
                return Err(PartError::BadLength {
                    total_len: p.total_len,
                    max: MAX_TASK_BYTES,
                });
            }
            self.total_len = p.total_len;
        }
        let have = self.buf.len() as u64;
        let len = p.data.len() as u64;
        if p.total_len != self.total_len
            || p.offset != have
            || len == 0
            || have + len > self.total_len
        {
            return Err(PartError::OutOfOrder {
                expected: have,
                total_len: self.total_len,
                offset: p.offset,
                len,
                got_total: p.total_len,
            });
        }
        self.buf.extend_from_slice(&p.data);
        if (self.buf.len() as u64) < self.total_len {
            return Ok(None);
        }
        let buf = std::mem::take(&mut self.buf);
        self.total_len = 0;
        decode(&buf).map(Some)
    }
}

#[cfg(test)]
mod tests;
