//! Training with an external command, so data scientists bring their own
//! code in any language or framework (PyTorch, NumPy, …). Per call the site
//! makes a fresh private temporary directory and runs `sh -c CMD` with:
//!
//! ```text
//! CONFIDE_MODE            train | evaluate
//! CONFIDE_GLOBAL_MODEL    global.safetensors    the model to start from (its tensors' own dtypes)
//! CONFIDE_OUTPUT_MODEL    local.safetensors     train: the command writes the trained model here,
//!                                               same tensor names, shapes and dtypes
//! CONFIDE_METRICS         metrics.json          the command writes {"num_examples": N, "loss": L,
//!                                               "correct": C, "total": N} (correct/total: evaluate)
//! CONFIDE_DATA            the site's --data path, when given (the data is the command's business)
//! CONFIDE_EPOCHS, CONFIDE_BATCH_SIZE, CONFIDE_LEARNING_RATE, CONFIDE_L2, CONFIDE_PROXIMAL_MU,
//! CONFIDE_SEED            the announced training settings and a fresh seed
//! CONFIDE_TRAIN_CSV, CONFIDE_TEST_CSV, CONFIDE_LABEL
//!                         only when the site loaded a CSV: the (standardised) split, label last
//! ```
//!
//! With a model of kind `file` the command does both modes and its metrics
//! are required; with a built-in kind (logistic, mlp) it trains only, the
//! built-in trainer evaluates, and the metrics file is optional (the weight
//! is then the CSV's training rows), as before the contract grew.
//!
//! The update is `local − global`, weighted by `num_examples`; evaluation
//! sums travel in the masked metric slots. A timeout, a non-zero exit, a
//! missing or malformed output model or metrics file, other tensor names,
//! shapes or dtypes, or a NaN is an [`ExternalError`] and nothing is sent.
//! The directory is removed afterwards; nothing in it leaves the site.

mod command;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use confide_proto::model::{ModelError, ModelKind};
use confide_proto::v1;
use rand::Rng;
use tracing::debug;

pub use crate::train::{ExternalError, Mode};
pub use command::Metrics;

use crate::error::ClientError;
use crate::train::{Dataset, EvalResult, FitConfig, FitResult, Model, Result, TrainError, Trainer};
use crate::trainer::{BoxTrainer, TrainerFactory, builtin_trainer};

/// How the site runs its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalOptions {
    /// Longest a call may run before it is killed (default 1 h).
    pub timeout: Duration,
    /// Passed as `CONFIDE_DATA` (the site's `--data`), if any.
    pub data: Option<PathBuf>,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            timeout: Duration::from_secs(3600),
            data: None,
        }
    }
}

/// A [`Trainer`] that runs a command.
pub struct ExternalTrainer {
    command: String,
    /// The built-in trainer of a built-in model kind (it evaluates);
    /// `None` for a file model, which the command evaluates too.
    builtin: Option<BoxTrainer>,
    options: ExternalOptions,
}

impl ExternalTrainer {
    /// Runs `command` through `sh -c` to train; `builtin` evaluates and initialises.
    pub fn new(command: impl Into<String>, builtin: BoxTrainer) -> Self {
        ExternalTrainer {
            command: command.into(),
            builtin: Some(builtin),
            options: ExternalOptions::default(),
        }
    }

    /// Runs `command` for both training and evaluation of a file model.
    pub fn for_file_model(command: impl Into<String>, options: ExternalOptions) -> Self {
        ExternalTrainer {
            command: command.into(),
            builtin: None,
            options,
        }
    }

    /// The same trainer with `options`.
    pub fn with_options(mut self, options: ExternalOptions) -> Self {
        self.options = options;
        self
    }

    /// Writes the call's inputs, runs the command in `mode`, and returns
    /// the metrics (required for a file model) and the directory (whose
    /// output model the caller may read before it is removed).
    fn call(
        &self,
        mode: Mode,
        global: &Model,
        data: &Dataset,
        cfg: Option<&FitConfig>,
        seed: u64,
    ) -> Result<(Option<Metrics>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().map_err(|source| ExternalError::Files {
            path: std::env::temp_dir(),
            source,
        })?;
        let p = |name: &str| dir.path().join(name);
        let (global_path, out_path, metrics_path) = (
            p("global.safetensors"),
            p("local.safetensors"),
            p("metrics.json"),
        );
        std::fs::write(&global_path, global.to_safetensors(None)?).map_err(|source| {
            ExternalError::Files {
                path: global_path.clone(),
                source,
            }
        })?;
        let mut envs: Vec<(&str, OsString)> = vec![
            ("CONFIDE_MODE", mode.name().into()),
            ("CONFIDE_GLOBAL_MODEL", global_path.into()),
            ("CONFIDE_METRICS", metrics_path.clone().into()),
            ("CONFIDE_SEED", seed.to_string().into()),
        ];
        if mode == Mode::Train {
            envs.push(("CONFIDE_OUTPUT_MODEL", out_path.into()));
        }
        if let Some(d) = &self.options.data {
            envs.push(("CONFIDE_DATA", d.clone().into()));
        }
        if let Some(cfg) = cfg {
            envs.extend([
                ("CONFIDE_EPOCHS", cfg.epochs.to_string().into()),
                ("CONFIDE_BATCH_SIZE", cfg.batch_size.to_string().into()),
                (
                    "CONFIDE_LEARNING_RATE",
                    cfg.learning_rate.to_string().into(),
                ),
                ("CONFIDE_L2", cfg.l2.to_string().into()),
                ("CONFIDE_PROXIMAL_MU", cfg.proximal_mu.to_string().into()),
            ]);
        }
        // The CSV hand-off only where the site loaded one (built-in kinds,
        // or a file model at a site that also gave --label).
        if !data.is_empty() {
            let (var, name) = match mode {
                Mode::Train => ("CONFIDE_TRAIN_CSV", "train.csv"),
                Mode::Evaluate => ("CONFIDE_TEST_CSV", "test.csv"),
            };
            let csv = p(name);
            write_csv(data, "label", &csv)?;
            envs.push((var, csv.into()));
            envs.push(("CONFIDE_LABEL", "label".into()));
        }
        command::run(
            &self.command,
            mode,
            &envs,
            &p("stderr.log"),
            self.options.timeout,
        )?;
        let metrics = match std::fs::read_to_string(&metrics_path) {
            Ok(text) => Some(command::parse_metrics(&text, mode)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.builtin.is_some() => None,
            Err(_) => {
                return Err(ExternalError::NoMetrics {
                    command: self.command.clone(),
                    mode,
                }
                .into());
            }
        };
        Ok((metrics, dir))
    }
}

/// A [`TrainerFactory`] running `command` with default options.
pub fn factory(command: String) -> TrainerFactory {
    factory_with(command, ExternalOptions::default())
}

/// A [`TrainerFactory`] running `command`: for a file model the command
/// trains and evaluates; for a built-in kind it trains and the built-in
/// trainer evaluates.
pub fn factory_with(command: String, options: ExternalOptions) -> TrainerFactory {
    std::sync::Arc::new(
        move |t: &v1::TrainingConfig| -> std::result::Result<BoxTrainer, ClientError> {
            let builtin = if t.model == ModelKind::File.name() {
                None
            } else {
                Some(builtin_trainer(t)?)
            };
            Ok(Box::new(ExternalTrainer {
                command: command.clone(),
                builtin,
                options: options.clone(),
            }))
        },
    )
}

/// Writes the data set as CSV: features by name, then the label column.
fn write_csv(data: &Dataset, label: &str, path: &Path) -> Result<()> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    let mut header: Vec<&str> = data.feature_names().iter().map(String::as_str).collect();
    header.push(label);
    writeln!(w, "{}", header.join(",")).map_err(io)?;
    for (row, y) in data.features().rows().into_iter().zip(data.labels()) {
        let mut line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        line.push(y.to_string());
        writeln!(w, "{}", line.join(",")).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Reads the trained model and checks it against the global one.
fn read_output(command: &str, path: &Path, global: &Model) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|_| ExternalError::NoOutputModel {
        command: command.to_string(),
    })?;
    let local = Model::from_safetensors(&bytes).map_err(ExternalError::BadOutputModel)?;
    global
        .check_same_layout_and_dtypes(&local)
        .map_err(ExternalError::OutputLayout)?;
    local.check_finite().map_err(|e| match e {
        ModelError::NonFinite { name, index, value } => {
            ExternalError::NonFiniteOutput { name, index, value }
        }
        other => ExternalError::BadOutputModel(other),
    })?;
    Ok(local)
}

impl Trainer for ExternalTrainer {
    fn init(&self, rng: &mut dyn Rng) -> Model {
        self.builtin
            .as_ref()
            .map_or_else(Model::new, |b| b.init(rng))
    }

    fn fit(
        &mut self,
        global: &Model,
        data: &Dataset,
        cfg: &FitConfig,
        rng: &mut dyn Rng,
    ) -> Result<FitResult> {
        if self.builtin.is_some() && data.is_empty() {
            return Err(ExternalError::NoDataset.into());
        }
        let (metrics, dir) = self.call(Mode::Train, global, data, Some(cfg), rng.next_u64())?;
        let local = read_output(&self.command, &dir.path().join("local.safetensors"), global)?;
        let delta = local.sub(global)?;
        debug!(command = %self.command, ?metrics, "external training done");
        Ok(FitResult {
            delta,
            num_examples: metrics.map_or(data.len() as u64, |m| m.num_examples),
            train_loss: metrics.and_then(|m| m.loss).unwrap_or(f64::NAN),
        })
    }

    fn evaluate(&self, model: &Model, data: &Dataset) -> Result<EvalResult> {
        if let Some(b) = &self.builtin {
            return b.evaluate(model, data);
        }
        // Evaluation needs no fresh randomness; a fixed seed keeps it repeatable.
        let (metrics, _dir) = self.call(Mode::Evaluate, model, data, None, 0)?;
        let m = metrics.unwrap_or_default();
        Ok(EvalResult {
            num_examples: m.num_examples,
            correct: m.correct,
            loss_sum: m.loss.unwrap_or(0.0) * m.num_examples as f64,
        })
    }

    fn needs_data(&self) -> bool {
        self.builtin.is_some()
    }
}

#[cfg(test)]
mod tests;
