//! The local-directory backend: `<dir>/round-NNNNNN/{model.safetensors,
//! optimiser.safetensors, manifest.json}`. Each file is written to a
//! temporary name, fsynced and renamed inside a temporary directory, which is
//! then renamed into place and the parent fsynced, so a crash leaves either
//! the whole checkpoint or none of it.
//!
//! The path-based functions are the original API (tests and tools use them;
//! they read and write plaintext checkpoints only); [`LocalStore`] is the
//! same behind [`CheckpointStore`], encrypting when its [`Sealing`] has a key.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use confide_proto::model::{Model, ModelImage};

use super::envelope::{RawManifest, Rewrap, RewrapOutcome, Sealing};
use super::keys::KeyWrapper;
use super::{
    Checkpoint, CheckpointStore, MANIFEST, MODEL, Manifest, OPTIMISER, Saved, decode_optimiser,
    optimiser_file, round_dir_name, write_optimiser,
};
use crate::error::CoordinatorError;

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    write_synced_with(path, |f| Ok(f.write_all(bytes)?))
}

/// [`write_synced`] of what `write` streams into the file (buffered), so a
/// large file is never built in memory first.
fn write_synced_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), CoordinatorError>,
) -> Result<(), CoordinatorError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    write(&mut f)?;
    let f = f
        .into_inner()
        .map_err(|e| CoordinatorError::Io(e.into_error()))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CoordinatorError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Write a (plaintext) checkpoint for `manifest.round`; returns its directory.
pub fn save(
    dir: &Path,
    manifest: &Manifest,
    model_bytes: &[u8],
    optimiser: Option<(&[f32], &[f32])>,
) -> Result<PathBuf, CoordinatorError> {
    let model = ModelData::Bytes(model_bytes);
    save_sealed(dir, manifest, model, optimiser, &Sealing::none())
}

/// The model file of a checkpoint being written.
#[derive(Clone, Copy)]
enum ModelData<'a> {
    /// Its bytes.
    Bytes(&'a [u8]),
    /// The model, encoded as it is written.
    Image(&'a ModelImage),
}

fn save_sealed(
    dir: &Path,
    manifest: &Manifest,
    model: ModelData<'_>,
    optimiser: Option<(&[f32], &[f32])>,
    sealing: &Sealing,
) -> Result<PathBuf, CoordinatorError> {
    fs::create_dir_all(dir)?;
    let name = round_dir_name(manifest.round);
    let tmp = dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let json = if sealing.encrypts() {
        let opt_bytes = optimiser.map(|(m, v)| optimiser_file(m, v)).transpose()?;
        let encoded;
        let model_bytes = match model {
            ModelData::Bytes(b) => b,
            ModelData::Image(image) => {
                encoded = image.to_vec().map_err(CoordinatorError::CheckpointModel)?;
                &encoded
            }
        };
        let sealed = sealing.seal(manifest, model_bytes, opt_bytes.as_deref())?;
        let Some(sealed) = sealed else {
            return Err(CoordinatorError::Checkpoint(
                "sealing produced no objects".into(),
            ));
        };
        for (name, bytes) in &sealed.objects {
            write_synced(&tmp.join(name), bytes)?;
        }
        sealed.manifest_json
    } else {
        match model {
            ModelData::Bytes(b) => write_synced(&tmp.join(MODEL), b)?,
            // Streamed from the f32 model: no file-sized buffer.
            ModelData::Image(image) => write_synced_with(&tmp.join(MODEL), |w| {
                image
                    .write_to(w)
                    .map(drop)
                    .map_err(CoordinatorError::CheckpointModel)
            })?,
        }
        if let Some((m, v)) = optimiser {
            // Streamed from the state: no file-sized buffer.
            write_synced_with(&tmp.join(OPTIMISER), |w| write_optimiser(m, v, w).map(drop))?;
        }
        serde_json::to_vec_pretty(manifest).map_err(CoordinatorError::ManifestJson)?
    };
    write_synced(&tmp.join(MANIFEST), &json)?;
    sync_dir(&tmp)?;
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir)?;
    sync_dir(dir)?;
    Ok(final_dir)
}

/// What saving wrote to checkpoint directory `p`.
fn saved(p: &Path) -> Saved {
    Saved {
        bytes: size(p),
        location: p.display().to_string(),
    }
}

/// Bytes of the files directly in checkpoint directory `path` (what
/// [`save`] wrote); unreadable entries count as 0, since this only feeds
/// the size metric.
pub fn size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checkpoint directories under `dir`, ascending by round.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CoordinatorError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(r) = name
            .strip_prefix("round-")
            .and_then(|s| s.parse::<u64>().ok())
            && e.path().join(MANIFEST).is_file()
        {
            out.push((r, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Load the manifest of a checkpoint directory (as stored: an encrypted
/// one's is not authenticated here, see [`LocalStore`]).
pub fn load_manifest(path: &Path) -> Result<Manifest, CoordinatorError> {
    Ok(read_raw(path)?.manifest)
}

fn read_raw(path: &Path) -> Result<RawManifest, CoordinatorError> {
    let text = fs::read(path.join(MANIFEST))?;
    RawManifest::parse(text).map_err(|source| CoordinatorError::Manifest {
        path: path.to_path_buf(),
        source,
    })
}

/// The round a checkpoint directory's name says, or else its manifest's.
fn round_of(path: &Path, raw: &RawManifest) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str()?.strip_prefix("round-")?.parse().ok())
        .unwrap_or(raw.manifest.round)
}

/// Load one (plaintext) checkpoint directory; an encrypted one is refused
/// with [`CoordinatorError::CheckpointKey`] (open it through a
/// [`LocalStore`] with its key).
pub fn load(path: &Path) -> Result<Checkpoint, CoordinatorError> {
    load_sealed(path, &Sealing::none())
}

fn load_sealed(path: &Path, sealing: &Sealing) -> Result<Checkpoint, CoordinatorError> {
    let raw = read_raw(path)?;
    let location = path.display().to_string();
    let round = round_of(path, &raw);
    let opened = sealing.open(raw, round, &location)?;
    let read = |name: &str| -> Result<Vec<u8>, CoordinatorError> {
        let bytes = fs::read(path.join(name))?;
        Sealing::open_object(&opened, name, bytes, &location)
    };
    let model_bytes = read(MODEL)?;
    let model = Model::from_safetensors(&model_bytes).map_err(CoordinatorError::CheckpointModel)?;
    let optimiser = match &opened.manifest.optimiser_state {
        Some(f) => Some(decode_optimiser(&read(f)?)?),
        None => None,
    };
    let manifest = opened.manifest;
    Ok(Checkpoint {
        manifest,
        model,
        model_bytes,
        optimiser,
        path: path.to_path_buf(),
    })
}

/// The latest checkpoint under `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<Checkpoint>, CoordinatorError> {
    match list(dir)?.last() {
        Some((_, p)) => load(p).map(Some),
        None => Ok(None),
    }
}

/// Delete all but the last `keep` checkpoints and the best one.
pub fn prune(dir: &Path, keep: usize, best: Option<u64>) -> Result<(), CoordinatorError> {
    LocalStore::new(dir).prune(keep, best)
}

/// Checkpoints in a local directory (the default backend).
#[derive(Clone, Debug)]
pub struct LocalStore {
    dir: PathBuf,
    sealing: Sealing,
}

impl LocalStore {
    /// The store in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalStore {
            dir: dir.into(),
            sealing: Sealing::none(),
        }
    }

    /// The same store, encrypting and opening checkpoints as `sealing` says.
    pub fn with_sealing(mut self, sealing: Sealing) -> Self {
        self.sealing = sealing;
        self
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `round`'s checkpoint, if it is complete.
    fn complete(&self, round: u64) -> Result<PathBuf, CoordinatorError> {
        let p = self.dir.join(round_dir_name(round));
        if p.join(MANIFEST).is_file() {
            Ok(p)
        } else {
            Err(CoordinatorError::NoSuchCheckpoint {
                location: self.dir.display().to_string(),
                round,
            })
        }
    }
}

impl CheckpointStore for LocalStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn save(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError> {
        let model = ModelData::Bytes(model_bytes);
        let p = save_sealed(&self.dir, manifest, model, optimiser, &self.sealing)?;
        Ok(saved(&p))
    }

    fn save_image(
        &self,
        manifest: &Manifest,
        image: &ModelImage,
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError> {
        let model = ModelData::Image(image);
        let p = save_sealed(&self.dir, manifest, model, optimiser, &self.sealing)?;
        Ok(saved(&p))
    }

    fn rounds(&self) -> Result<Vec<u64>, CoordinatorError> {
        Ok(list(&self.dir)?.into_iter().map(|(r, _)| r).collect())
    }

    fn load_manifest(&self, round: u64) -> Result<Manifest, CoordinatorError> {
        let p = self.complete(round)?;
        self.sealing
            .listing(read_raw(&p)?, round, &p.display().to_string())
    }

    fn load(&self, round: u64) -> Result<Checkpoint, CoordinatorError> {
        load_sealed(&self.complete(round)?, &self.sealing)
    }

    fn rewrap(
        &self,
        round: u64,
        old: Arc<dyn KeyWrapper>,
        new: &dyn KeyWrapper,
    ) -> Result<RewrapOutcome, CoordinatorError> {
        let p = self.complete(round)?;
        let location = p.display().to_string();
        let json = match Sealing::rewrap(read_raw(&p)?, round, &location, old, new)? {
            Rewrap::Write(json) => json,
            Rewrap::Skip(outcome) => return Ok(outcome),
        };
        // Temporary file, fsync, rename, fsync the directory: the old
        // manifest or the new one, never a torn one.
        write_synced(&p.join(MANIFEST), &json)?;
        sync_dir(&p)?;
        Ok(RewrapOutcome::Rewrapped)
    }

    fn delete(&self, round: u64) -> Result<(), CoordinatorError> {
        let p = self.dir.join(round_dir_name(round));
        match fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
