//! A model together with its safetensors file, without the file's bytes:
//! the header, the tensors' byte ranges and the file's SHA-256 are computed
//! once, and any byte range of the file is encoded from the tensors when it
//! is asked for. A coordinator serves downloads and writes checkpoints of a
//! model of gigabytes while holding it once, as f32.

use std::io::Write;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Model, ModelError, Result};

/// Where a tensor's bytes lie in the file.
#[derive(Clone, Debug, PartialEq)]
struct Span {
    /// Tensor name.
    name: String,
    /// First byte, from the start of the file.
    start: u64,
    /// One past its last byte.
    end: u64,
}

/// A model and the layout, length and SHA-256 of its safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelImage {
    model: Model,
    head: Arc<Vec<u8>>,
    spans: Vec<Span>,
    len: u64,
    sha256: [u8; 32],
}

/// Feeds written bytes to a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ModelImage {
    /// The image of `model` (no metadata in the header, as the global model
    /// and checkpoints are written); one encoding pass computes the SHA-256
    /// and checks every value fits its dtype.
    pub fn new(model: Model) -> Result<Self> {
        let mut image = ModelImage {
            model,
            head: Arc::default(),
            spans: Vec::new(),
            len: 0,
            sha256: [0; 32],
        };
        image.refresh()?;
        Ok(image)
    }

    /// Recomputes the layout and SHA-256 after the model changed through
    /// [`model_mut`](Self::model_mut).
    pub fn refresh(&mut self) -> Result<()> {
        let layout = self.model.safetensors_layout(None)?;
        let mut hasher = Sha256::new();
        layout.write_to(&mut HashWriter(&mut hasher))?;
        let head = layout.head().to_vec();
        let mut at = head.len() as u64;
        let mut spans = Vec::with_capacity(layout.tensors().len());
        for t in layout.tensors() {
            let bytes = super::data_bytes(t.data.len() as u64, t.dtype)?;
            let end = at.checked_add(bytes).ok_or_else(|| ModelError::Overflow {
                what: "model file length".into(),
            })?;
            spans.push(Span {
                name: t.name.to_string(),
                start: at,
                end,
            });
            at = end;
        }
        self.len = layout.len();
        drop(layout);
        self.head = Arc::new(head);
        self.spans = spans;
        self.sha256 = hasher.finalize().into();
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, to change in place; call [`refresh`](Self::refresh) after.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The model, giving up the image.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Bytes of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the image of a model without tensors (its file is a header).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// SHA-256 of the file.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Writes the whole file to `w` as it is encoded.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> Result<u64> {
        self.model.safetensors_layout(None)?.write_to(w)
    }

    /// The whole file in memory (for small models, tools and tests).
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        self.model.to_safetensors(None)
    }

    /// Bytes `start..end` of the file (clamped to its length), encoded from
    /// the tensors. Offsets are u64 and checked: a range past the file is
    /// an error, not a wrapped index.
    pub fn range(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        if start > end || end > self.len {
            return Err(ModelError::File(format!(
                "byte range {start}..{end} is outside the {}-byte model file",
                self.len
            )));
        }
        let cap = usize::try_from(end - start).map_err(|_| ModelError::Overflow {
            what: format!("a {}-byte range in memory", end - start),
        })?;
        let mut out = Vec::with_capacity(cap);
        let head_len = self.head.len() as u64;
        if start < head_len {
            let a = start as usize;
            let b = end.min(head_len) as usize;
            out.extend_from_slice(&self.head[a..b]);
        }
        // The first tensor whose bytes end after `start`.
        let first = self.spans.partition_point(|s| s.end <= start);
        let mut buf = Vec::new();
        for span in self.spans.get(first..).unwrap_or_default() {
            if span.start >= end {
                break;
            }
            let Some(t) = self.model.get(&span.name) else {
                return Err(ModelError::LayoutMismatch {
                    name: span.name.clone(),
                });
            };
            let size = t.dtype.size() as u64;
            // The part of this tensor inside the range, in its own bytes,
            // widened to whole elements and cut back after encoding.
            let a = start.max(span.start) - span.start;
            let b = end.min(span.end) - span.start;
            let (ea, eb) = (a / size, b.div_ceil(size));
            let elements = t.data.get(index(ea)?..index(eb)?).ok_or_else(|| {
                ModelError::File(format!("tensor '{}' is shorter than its span", span.name))
            })?;
            buf.clear();
            t.dtype
                .encode_into(&span.name, index(ea)?, elements, &mut buf)?;
            let skip = index(a - ea * size)?;
            let take = index(b - a)?;
            out.extend_from_slice(&buf[skip..skip + take]);
        }
        Ok(out)
    }
}

/// A u64 element index as usize, or the overflow error.
fn index(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| ModelError::Overflow {
        what: format!("index {v} on this platform"),
    })
}

impl Default for ModelImage {
    fn default() -> Self {
        // A model without tensors always lays out (a two-byte header).
        let mut image = ModelImage {
            model: Model::new(),
            head: Arc::default(),
            spans: Vec::new(),
            len: 0,
            sha256: [0; 32],
        };
        if image.refresh().is_err() {
            image.len = 0;
        }
        image
    }
}
