//! `[model]`: a built-in family (`logistic`, `mlp`) described by its sizes,
//! or any named tensors from a safetensors file (`kind = "file"`).

use std::path::{Path, PathBuf};

use confide_proto::model::{Model, ModelFile, ModelKind, ModelSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Settings, names};
use crate::error::CoordinatorError;

/// The global model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// "logistic", "mlp" or "file" in the file.
    #[serde(with = "names::model_kind")]
    pub kind: ModelKind,
    /// Input features (built-in kinds).
    pub features: u32,
    /// Classes (built-in kinds).
    pub classes: u32,
    /// Hidden layer widths (mlp only).
    pub hidden: Vec<u32>,
    /// Seed of the initial weights (so every start from scratch is identical).
    pub init_seed: u64,
    /// The initial model's safetensors file (`kind = "file"` only): any
    /// named F32, F16 or BF16 tensors. A relative path is resolved against
    /// the settings file's directory.
    // Skipped when unset so that the settings of the built-in kinds
    // serialise (and hash) exactly as before this field existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// What the config hash covers of `[model]`: the built-in fields in their
/// historical order, then, for a file model, the file's SHA-256 instead of
/// its path (moving the file keeps the hash, editing it changes it).
#[derive(Serialize)]
pub(super) struct HashedModel<'a> {
    #[serde(with = "names::model_kind")]
    kind: ModelKind,
    features: u32,
    classes: u32,
    hidden: &'a [u32],
    init_seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_sha256: Option<String>,
}

impl ModelSettings {
    /// Resolves a relative `path` against `dir` (the settings file's directory).
    pub(super) fn resolve_relative_to(&mut self, dir: &Path) {
        if let Some(p) = &self.path
            && p.is_relative()
        {
            self.path = Some(dir.join(p));
        }
    }

    /// The built-in model these settings describe (an error for a file model).
    pub fn spec(&self) -> Result<ModelSpec, CoordinatorError> {
        Ok(ModelSpec::new(
            self.kind,
            self.features as usize,
            self.hidden.iter().map(|&h| h as usize).collect(),
            self.classes as usize,
        )?)
    }

    /// Reads and checks the model file of `kind = "file"`.
    pub fn file(&self, max_model_bytes: u64) -> Result<ModelFile, CoordinatorError> {
        let path = self.path.as_ref().ok_or_else(|| {
            CoordinatorError::Config(
                "model.kind = \"file\" needs model.path = \"init.safetensors\" (the initial model)"
                    .into(),
            )
        })?;
        ModelFile::read(path, max_model_bytes)
            .map_err(|e| CoordinatorError::Config(format!("model.path: {e}")))
    }

    /// The hashed form; a file model's SHA-256 is `known` (the file was
    /// just read) or the file is read for it (an unreadable one hashes as
    /// such: `validate` refuses it before any federation starts).
    pub(super) fn hashed(&self, known: Option<&ModelFile>) -> HashedModel<'_> {
        let file_sha256 = match (self.kind, &self.path, known) {
            (ModelKind::File, _, Some(f)) => Some(hex::encode(f.sha256)),
            (ModelKind::File, Some(p), None) => Some(match std::fs::read(p) {
                Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
                Err(e) => format!("unreadable: {e}"),
            }),
            (ModelKind::File, None, None) => Some("no model.path".into()),
            _ => None,
        };
        HashedModel {
            kind: self.kind,
            features: self.features,
            classes: self.classes,
            hidden: &self.hidden,
            init_seed: self.init_seed,
            file_sha256,
        }
    }

    /// Checks the model settings: the sizes of a built-in model, or the
    /// file of a file model (read in full: dtype, emptiness, NaN, size).
    pub(super) fn validate(
        &self,
        statistics_round: bool,
        max_model_bytes: u64,
    ) -> Result<(), CoordinatorError> {
        let bad = |m: String| Err(CoordinatorError::Config(m));
        if self.kind == ModelKind::File {
            if statistics_round {
                return bad(
                    "statistics_round = true needs a built-in model (logistic, mlp) trained on \
                     CSV features; with model.kind = \"file\" the sites' own code prepares its \
                     data: set statistics_round = false"
                        .into(),
                );
            }
            self.file(max_model_bytes)?;
            return Ok(());
        }
        if self.path.is_some() {
            return bad(format!(
                "model.path is only read with model.kind = \"file\" (kind is \"{}\")",
                self.kind
            ));
        }
        if self.kind == ModelKind::Mlp && (self.hidden.is_empty() || self.hidden.contains(&0)) {
            return bad("model.hidden must list positive layer widths for an mlp".into());
        }
        if self.features == 0 || self.classes < 2 {
            return bad("model needs at least 1 feature and 2 classes".into());
        }
        let model_bytes = self.spec()?.num_params() as u64 * 4;
        if model_bytes > max_model_bytes {
            return bad(format!(
                "the model has {model_bytes} bytes, above limits.max_model_bytes"
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// The initial global model (a built-in one seeded, so every fresh
    /// start is identical, or the tensors of `model.path`) and the config
    /// hash; a file model is read once for both.
    pub fn initial_model_and_hash(&self) -> Result<(Model, String), CoordinatorError> {
        if self.model.kind != ModelKind::File {
            let model = self.model.spec()?.init_seeded(self.model.init_seed);
            return Ok((model, self.config_hash()));
        }
        let file = self.model.file(self.limits.max_model_bytes)?;
        let hash = self.config_hash_for_file(&file);
        Ok((file.model, hash))
    }
}
