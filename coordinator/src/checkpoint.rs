//! Crash-safe checkpoints: `<dir>/round-NNNNNN/{model.safetensors,
//! optimiser.safetensors, manifest.json}`. Each file is written to a temporary
//! name, fsynced and renamed inside a temporary directory, which is then
//! renamed into place and the parent fsynced, so a crash leaves either the
//! whole checkpoint or none of it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use confide_proto::model::{Model, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

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
    /// Directory.
    pub path: PathBuf,
}

fn ck(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Checkpoint(e.to_string())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CoordinatorError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Directory name of round `r`.
pub fn round_dir_name(r: u64) -> String {
    format!("round-{r:06}")
}

/// Serialise the optimiser state as safetensors (`m`, `v`).
fn optimiser_file(m: &[f32], v: &[f32]) -> Result<Vec<u8>, CoordinatorError> {
    let mut model = Model::new();
    model.insert(
        "m",
        Tensor::new(vec![m.len()], m.to_vec()).map_err(CoordinatorError::CheckpointModel)?,
    );
    model.insert(
        "v",
        Tensor::new(vec![v.len()], v.to_vec()).map_err(CoordinatorError::CheckpointModel)?,
    );
    model
        .to_safetensors(None)
        .map_err(CoordinatorError::CheckpointModel)
}

/// Write a checkpoint for `manifest.round`; returns its directory.
pub fn save(
    dir: &Path,
    manifest: &Manifest,
    model_bytes: &[u8],
    optimiser: Option<(&[f32], &[f32])>,
) -> Result<PathBuf, CoordinatorError> {
    fs::create_dir_all(dir)?;
    let name = round_dir_name(manifest.round);
    let tmp = dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    write_synced(&tmp.join("model.safetensors"), model_bytes)?;
    if let Some((m, v)) = optimiser {
        write_synced(&tmp.join("optimiser.safetensors"), &optimiser_file(m, v)?)?;
    }
    let json = serde_json::to_vec_pretty(manifest).map_err(CoordinatorError::ManifestJson)?;
    write_synced(&tmp.join("manifest.json"), &json)?;
    sync_dir(&tmp)?;
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir)?;
    sync_dir(dir)?;
    Ok(final_dir)
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
            && e.path().join("manifest.json").is_file()
        {
            out.push((r, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Load the manifest of a checkpoint directory.
pub fn load_manifest(path: &Path) -> Result<Manifest, CoordinatorError> {
    let text = fs::read(path.join("manifest.json"))?;
    serde_json::from_slice(&text).map_err(|source| CoordinatorError::Manifest {
        path: path.to_path_buf(),
        source,
    })
}

/// Load one checkpoint directory.
pub fn load(path: &Path) -> Result<Checkpoint, CoordinatorError> {
    let manifest = load_manifest(path)?;
    let model_bytes = fs::read(path.join("model.safetensors"))?;
    let model = Model::from_safetensors(&model_bytes).map_err(CoordinatorError::CheckpointModel)?;
    let optimiser = match &manifest.optimiser_state {
        Some(f) => {
            let m = Model::from_safetensors(&fs::read(path.join(f))?)
                .map_err(CoordinatorError::CheckpointModel)?;
            let get = |n: &str| {
                m.get(n)
                    .map(|t| t.data.clone())
                    .ok_or_else(|| ck(format!("optimiser state lacks {n}")))
            };
            Some((get("m")?, get("v")?))
        }
        None => None,
    };
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

/// Round of the best checkpoint by held-out accuracy, from a history.
pub fn best_round(history: &[RoundRecord]) -> Option<u64> {
    history
        .iter()
        .filter(|r| r.success && r.model_round > 0)
        .filter_map(|r| r.accuracy.map(|a| (a, r.model_round)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, r)| r)
}

/// Delete all but the last `keep` checkpoints and the best one.
pub fn prune(dir: &Path, keep: usize, best: Option<u64>) -> Result<(), CoordinatorError> {
    let all = list(dir)?;
    let cut = all.len().saturating_sub(keep.max(1));
    for (r, p) in &all[..cut] {
        if Some(*r) != best {
            fs::remove_dir_all(p)?;
        }
    }
    Ok(())
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
    write_synced(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(round: u64, acc: f64) -> Manifest {
        Manifest {
            format: 1,
            round,
            model_round: round,
            next_round: round + 1,
            completed_train_rounds: round,
            suite: "intl".into(),
            config_hash: "abc".into(),
            optimiser: "fedadam".into(),
            optimiser_state: Some("optimiser.safetensors".into()),
            preprocess: Some(Preprocess {
                mean: vec![1.0],
                std: vec![2.0],
            }),
            tensors: vec![],
            history: vec![RoundRecord {
                round: round + 1,
                success: true,
                accuracy: Some(acc),
                model_round: round,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn save_load_roundtrip_is_bit_exact_and_pruning_keeps_the_best()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let mut model = Model::new();
        model.insert("weight", Tensor::new(vec![1, 3], vec![0.1, -2.5, 3.75])?);
        let bytes = model.to_safetensors(None)?;
        let mut all_history = Vec::new();
        for (r, acc) in [(1u64, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)] {
            let mut m = manifest(r, acc);
            all_history.extend(m.history.clone());
            m.history = all_history.clone();
            save(tmp.path(), &m, &bytes, Some((&[1.5], &[0.25])))?;
            prune(tmp.path(), 2, best_round(&m.history))?;
        }
        let rounds: Vec<u64> = list(tmp.path())?.into_iter().map(|(r, _)| r).collect();
        assert_eq!(rounds, [2, 4, 5]);
        let c = latest(tmp.path())?.ok_or("no checkpoint")?;
        assert_eq!(c.manifest.round, 5);
        assert_eq!(c.model_bytes, bytes);
        assert_eq!(c.model, model);
        assert_eq!(c.optimiser, Some((vec![1.5], vec![0.25])));
        let out = tmp.path().join("export.safetensors");
        export(&c, &out)?;
        let exported = Model::from_safetensors(&fs::read(&out)?)?;
        assert_eq!(
            exported.get("preprocess.std").map(|t| t.data.clone()),
            Some(vec![2.0])
        );
        Ok(())
    }

    #[test]
    fn torn_temporary_directories_are_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        fs::create_dir_all(tmp.path().join(".tmp-round-000009"))?;
        fs::create_dir_all(tmp.path().join("round-000010"))?; // no manifest: incomplete
        assert!(latest(tmp.path())?.is_none());
        Ok(())
    }
}
