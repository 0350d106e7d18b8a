//! Checkpoints behind one trait, [`CheckpointStore`], with two backends:
//!
//! ```text
//! federation (driver: save, prune; start: latest) ─┐
//! confide checkpoints list|export, rounds ─────────┼─▶ dyn CheckpointStore
//! grpc admin (Checkpoints) ────────────────────────┘      │
//!                  ┌──────────────────────────────────────┴──────────┐
//!        local.rs: <dir>/round-NNNNNN/                object.rs: s3://bucket/prefix/round-NNNNNN/
//!        temp dir, fsync, rename, fsync parent        data objects first, manifest.json last
//! ```
//!
//! Both keep one guarantee: a checkpoint is visible only once it is
//! complete, so a crash at any point leaves the previous checkpoints usable
//! and resume picks the newest complete one.
//!
//! The trait is synchronous on purpose: the local backend is blocking file
//! I/O with fsyncs, and resume ([`crate::Federation::new`], once, before the
//! server accepts anyone) and the CLI are synchronous too. The
//! object-storage backend drives `object_store` on its own small runtime
//! (see `object.rs`), so it works from any thread; the round driver and the
//! Admin API call either backend through `spawn_blocking`, so a slow upload
//! never blocks a tokio worker of the running gRPC server.

mod envelope;
pub(crate) mod io;
mod keys;
pub mod lease;
mod local;
mod object;
mod seal;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use confide_proto::model::{Dtype, Layout, Model, ModelImage, Tensor, TensorRef};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::CoordinatorError;

pub use envelope::{Envelope, RewrapOutcome, Sealing};
pub use keys::{KeySource, KeyWrapper, LocalKek};
pub use lease::Lease;
pub use local::{LocalStore, latest, list, load, load_manifest, prune, save, size};
pub use object::ObjectStoreCheckpoints;
pub use seal::DataKey;

/// The model file of a checkpoint.
pub const MODEL: &str = "model.safetensors";
/// The optimiser-state file of a checkpoint (stateful optimisers only).
pub const OPTIMISER: &str = "optimiser.safetensors";
/// The manifest, written last.
pub const MANIFEST: &str = "manifest.json";

/// What one round did (history entry; also the `confide rounds` table).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// Round id.
    pub round: u64,
    /// "train", "statistics" or "evaluate".
    pub kind: String,
    /// Completed?
    pub success: bool,
    /// Why it failed, or a note.
    pub message: String,
    /// Cohort size.
    pub cohort: u32,
    /// Inputs in the sum.
    pub survivors: u32,
    /// Members that dropped.
    pub dropped: u32,
    /// Held-out accuracy of the global model this round started from.
    pub accuracy: Option<f64>,
    /// Mean held-out loss of that model.
    pub loss: Option<f64>,
    /// Held-out examples.
    pub eval_examples: u64,
    /// Round of the checkpoint the evaluated model came from (0: initial).
    pub model_round: u64,
    /// Wall time.
    pub duration_secs: f64,
    /// Per-stage durations.
    pub stage_secs: Vec<(String, f64)>,
    /// Bytes received from sites.
    pub bytes_in: u64,
    /// Bytes sent to sites.
    pub bytes_out: u64,
    /// Sites found faulty this round, with the reason (absent in checkpoints
    /// written before blame existed).
    #[serde(default)]
    pub blamed: Vec<(String, String)>,
    /// Sites that declined the round (absent, not faulty): site, and the
    /// reason code's name, a colon and the site's message.
    #[serde(default)]
    pub declined: Vec<(String, String)>,
}

/// Short summary returned by `serve`.
pub type RoundRecordSummary = RoundRecord;

/// Preprocessing statistics from the statistics round.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Preprocess {
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation (floored).
    pub std: Vec<f64>,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Round this checkpoint was taken after.
    pub round: u64,
    /// Round whose training produced this model (0: the initial model); an
    /// evaluation or statistics round's checkpoint repeats its predecessor's model.
    #[serde(default)]
    pub model_round: u64,
    /// Next round id to run.
    pub next_round: u64,
    /// Training rounds completed successfully.
    pub completed_train_rounds: u64,
    /// Cipher suite.
    pub suite: String,
    /// Config hash (SHA-256 of the training-relevant settings).
    pub config_hash: String,
    /// Optimiser kind.
    pub optimiser: String,
    /// Optimiser state file, if the optimiser has state.
    pub optimiser_state: Option<String>,
    /// Preprocessing statistics.
    pub preprocess: Option<Preprocess>,
    /// Tensor names and shapes of `model.safetensors`.
    pub tensors: Vec<(String, Vec<usize>)>,
    /// Metrics history of every round so far.
    pub history: Vec<RoundRecord>,
    /// Size and SHA-256 of each data object, written by the object-storage
    /// backend so that a torn or edited object is detected (a local
    /// checkpoint's atomic rename makes them unnecessary there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectDigest>,
    /// The fencing token of the lease its writer held (active / standby
    /// coordinators only, see `lease.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<u64>,
}

/// One data object of a checkpoint, as its manifest records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectDigest {
    /// File name inside the checkpoint (`model.safetensors`, …).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// A loaded checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Its manifest.
    pub manifest: Manifest,
    /// Global model.
    pub model: Model,
    /// Raw model file bytes.
    pub model_bytes: Vec<u8>,
    /// Optimiser (m, v).
    pub optimiser: Option<(Vec<f32>, Vec<f32>)>,
    /// Its directory, or its URL (`s3://bucket/prefix/round-NNNNNN`) in
    /// object storage.
    pub path: PathBuf,
}

fn ck(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Checkpoint(e.to_string())
}

/// Directory name of round `r`.
pub fn round_dir_name(r: u64) -> String {
    format!("round-{r:06}")
}

/// The optimiser state's safetensors layout (`m`, `v`, F32), borrowing
/// the state: written or streamed without copying it.
fn optimiser_layout<'a>(
    m: &'a [f32],
    v: &'a [f32],
    shapes: &'a [[usize; 1]; 2],
) -> Result<Layout<'a>, CoordinatorError> {
    let tensor = |name, shape: &'a [usize], data| TensorRef {
        name,
        dtype: Dtype::F32,
        shape,
        data,
    };
    Layout::new(
        vec![tensor("m", &shapes[0], m), tensor("v", &shapes[1], v)],
        None,
    )
    .map_err(CoordinatorError::CheckpointModel)
}

/// Serialise the optimiser state as safetensors (`m`, `v`): one buffer of
/// the file's size, no intermediate copies.
fn optimiser_file(m: &[f32], v: &[f32]) -> Result<Vec<u8>, CoordinatorError> {
    let shapes = [[m.len()], [v.len()]];
    let layout = optimiser_layout(m, v, &shapes)?;
    let mut out = Vec::with_capacity(usize::try_from(layout.len()).unwrap_or(0));
    layout
        .write_to(&mut out)
        .map_err(CoordinatorError::CheckpointModel)?;
    Ok(out)
}

/// Write the optimiser state file to `w` as it is encoded.
fn write_optimiser(
    m: &[f32],
    v: &[f32],
    w: &mut dyn std::io::Write,
) -> Result<u64, CoordinatorError> {
    let shapes = [[m.len()], [v.len()]];
    optimiser_layout(m, v, &shapes)?
        .write_to(w)
        .map_err(CoordinatorError::CheckpointModel)
}

/// The optimiser state (`m`, `v`) from its safetensors file.
fn decode_optimiser(bytes: &[u8]) -> Result<(Vec<f32>, Vec<f32>), CoordinatorError> {
    let m = Model::from_safetensors(bytes).map_err(CoordinatorError::CheckpointModel)?;
    let get = |n: &str| {
        m.get(n)
            .map(|t| t.data.clone())
            .ok_or_else(|| ck(format!("optimiser state lacks {n}")))
    };
    Ok((get("m")?, get("v")?))
}

/// Where checkpoints live: a local directory or an S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// `s3://bucket/prefix`; endpoint, region and credentials from `AWS_*`.
    Object {
        /// The bucket.
        bucket: String,
        /// Key prefix inside it, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl Location {
    /// `s3://bucket/prefix` is object storage, any other `scheme://` is
    /// refused, anything else is a directory.
    pub fn parse(s: &str) -> Result<Self, CoordinatorError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c);
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
                return Err(CoordinatorError::Config(format!(
                    "{s:?}: the bucket name must be 3–63 characters of [a-z0-9.-] \
                     (s3://bucket/prefix)"
                )));
            }
            return Ok(Location::Object {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(CoordinatorError::Config(format!(
                "{s:?}: checkpoint URLs must be s3://bucket/prefix (any S3-compatible service \
                 through AWS_ENDPOINT_URL), not {scheme}://"
            )));
        }
        Ok(Location::Dir(PathBuf::from(s)))
    }

    /// The store at this location.
    pub fn open(&self) -> Result<Arc<dyn CheckpointStore>, CoordinatorError> {
        self.open_sealed(Sealing::none())
    }

    /// The store at this location, encrypting and opening checkpoints as
    /// `sealing` says.
    pub fn open_sealed(
        &self,
        sealing: Sealing,
    ) -> Result<Arc<dyn CheckpointStore>, CoordinatorError> {
        Ok(match self {
            Location::Dir(d) => Arc::new(LocalStore::new(d).with_sealing(sealing)),
            Location::Object { bucket, prefix } => {
                Arc::new(ObjectStoreCheckpoints::s3_from_env(bucket, prefix)?.with_sealing(sealing))
            }
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(d) => write!(f, "{}", d.display()),
            Location::Object { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::Object { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What a save wrote.
#[derive(Clone, Debug)]
pub struct Saved {
    /// The checkpoint's directory or URL.
    pub location: String,
    /// Bytes written (all files of the checkpoint).
    pub bytes: u64,
}

/// A checkpoint backend. Every method blocks (see the module docs); a
/// checkpoint is listed only once it is complete.
pub trait CheckpointStore: Send + Sync + fmt::Debug {
    /// The store's directory or URL, for messages.
    fn location(&self) -> String;

    /// Write the checkpoint of `manifest.round` so that it becomes visible
    /// only once whole.
    fn save(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError>;

    /// [`save`](Self::save) of the model `image` holds. The local
    /// backend writes an unencrypted checkpoint's model file as it encodes
    /// it; the others encode the file into memory first.
    fn save_image(
        &self,
        manifest: &Manifest,
        image: &ModelImage,
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError> {
        let bytes = image.to_vec().map_err(CoordinatorError::CheckpointModel)?;
        self.save(manifest, &bytes, optimiser)
    }

    /// Rounds of the complete checkpoints, ascending.
    fn rounds(&self) -> Result<Vec<u64>, CoordinatorError>;

    /// The manifest of `round`'s complete checkpoint.
    fn load_manifest(&self, round: u64) -> Result<Manifest, CoordinatorError>;

    /// `round`'s complete checkpoint, its data checked against the manifest.
    fn load(&self, round: u64) -> Result<Checkpoint, CoordinatorError>;

    /// Remove `round`'s checkpoint so that it stops being listed first
    /// (object storage: the manifest before the data).
    fn delete(&self, round: u64) -> Result<(), CoordinatorError>;

    /// Re-wrap `round`'s data key from `old` to `new` (KEK rotation): only
    /// the manifest is rewritten, atomically (local: temporary file and
    /// rename; object storage: a PUT conditional on the manifest read, so a
    /// checkpoint pruned or re-saved meanwhile is not resurrected).
    fn rewrap(
        &self,
        round: u64,
        old: Arc<dyn KeyWrapper>,
        new: &dyn KeyWrapper,
    ) -> Result<RewrapOutcome, CoordinatorError>;

    /// The newest checkpoint that loads whole; a damaged newer one is
    /// skipped with a warning rather than resumed from. An encrypted one
    /// that fails authentication or cannot be unwrapped is not skipped: the
    /// error stops resume (see docs/checkpoints.md).
    fn latest(&self) -> Result<Option<Checkpoint>, CoordinatorError> {
        for r in self.rounds()?.into_iter().rev() {
            match self.load(r) {
                Ok(c) => return Ok(Some(c)),
                Err(e @ CoordinatorError::TornCheckpoint { .. }) => {
                    warn!(error = %e, "skipping a damaged checkpoint");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Delete all but the last `keep` checkpoints and the best one.
    fn prune(&self, keep: usize, best: Option<u64>) -> Result<(), CoordinatorError> {
        let all = self.rounds()?;
        let cut = all.len().saturating_sub(keep.max(1));
        for r in &all[..cut] {
            if Some(*r) != best {
                self.delete(*r)?;
            }
        }
        Ok(())
    }
}

/// The store a `--checkpoints` / `--dir` argument names: a directory or an
/// `s3://` URL.
pub fn open(location: &str) -> Result<Arc<dyn CheckpointStore>, CoordinatorError> {
    Location::parse(location)?.open()
}

/// Round of the best checkpoint by held-out accuracy, from a history.
pub fn best_round(history: &[RoundRecord]) -> Option<u64> {
    history
        .iter()
        .filter(|r| r.success && r.model_round > 0)
        .filter_map(|r| r.accuracy.map(|a| (a, r.model_round)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, r)| r)
}

/// Export a checkpoint as one safetensors file with the preprocessing
/// statistics as extra tensors (`preprocess.mean`, `preprocess.std`) and the
/// manifest's round and config hash as metadata.
pub fn export(ckpt: &Checkpoint, out: &Path) -> Result<(), CoordinatorError> {
    let mut model = ckpt.model.clone();
    if let Some(p) = &ckpt.manifest.preprocess {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        model.insert(
            "preprocess.mean",
            Tensor::new(vec![p.mean.len()], f(&p.mean))
                .map_err(CoordinatorError::CheckpointModel)?,
        );
        model.insert(
            "preprocess.std",
            Tensor::new(vec![p.std.len()], f(&p.std)).map_err(CoordinatorError::CheckpointModel)?,
        );
    }
    let mut meta = HashMap::new();
    meta.insert("round".to_string(), ckpt.manifest.round.to_string());
    meta.insert("config_hash".to_string(), ckpt.manifest.config_hash.clone());
    let bytes = model
        .to_safetensors(Some(meta))
        .map_err(CoordinatorError::CheckpointModel)?;
    local::write_synced(out, &bytes)
}
