//! Training with an external command, so data scientists can bring code in
//! any language. Per round the site writes, in a fresh private temporary
//! directory:
//!
//! ```text
//! $CONFIDE_GLOBAL_MODEL   global.safetensors   the model to start from
//! $CONFIDE_TRAIN_CSV      train.csv            the (standardised) training split, label column last
//! $CONFIDE_OUTPUT_MODEL   local.safetensors    to be written by the command: same tensors and shapes
//! $CONFIDE_LABEL, $CONFIDE_EPOCHS, $CONFIDE_BATCH_SIZE, $CONFIDE_LEARNING_RATE, $CONFIDE_L2
//! ```
//!
//! runs `sh -c CMD`, and reads the output model back; the update is
//! `local − global`, weighted by the training rows. Evaluation of the global
//! model uses the built-in trainer of the announced model kind. The
//! directory is removed afterwards; nothing in it leaves the site.

use std::io::Write;
use std::process::Command;

use confide_proto::v1;
use rand::Rng;

use crate::error::ClientError;
use crate::train::{Dataset, EvalResult, FitConfig, FitResult, Model, Result, TrainError, Trainer};
use crate::trainer::{BoxTrainer, TrainerFactory, builtin_trainer};

/// A [`Trainer`] that runs a command for `fit`.
pub struct ExternalTrainer {
    command: String,
    builtin: BoxTrainer,
}

impl ExternalTrainer {
    /// Runs `command` through `sh -c`; `builtin` evaluates and initialises.
    pub fn new(command: impl Into<String>, builtin: BoxTrainer) -> Self {
        ExternalTrainer {
            command: command.into(),
            builtin,
        }
    }
}

/// A [`TrainerFactory`] running `command` for every round.
pub fn factory(command: String) -> TrainerFactory {
    std::sync::Arc::new(
        move |t: &v1::TrainingConfig| -> std::result::Result<BoxTrainer, ClientError> {
            Ok(Box::new(ExternalTrainer::new(
                command.clone(),
                builtin_trainer(t)?,
            )))
        },
    )
}

fn ext(msg: String) -> TrainError {
    TrainError::InvalidConfig(format!("external trainer: {msg}"))
}

/// Writes the data set as CSV: features by name, then the label column.
fn write_csv(data: &Dataset, label: &str, path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = std::io::BufWriter::new(file);
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
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

impl Trainer for ExternalTrainer {
    fn init(&self, rng: &mut dyn Rng) -> Model {
        self.builtin.init(rng)
    }

    fn fit(
        &mut self,
        global: &Model,
        data: &Dataset,
        cfg: &FitConfig,
        _rng: &mut dyn Rng,
    ) -> Result<FitResult> {
        let dir = tempfile::tempdir()
            .map_err(|e| ext(format!("cannot create a temporary directory: {e}")))?;
        let global_path = dir.path().join("global.safetensors");
        let out_path = dir.path().join("local.safetensors");
        let csv_path = dir.path().join("train.csv");
        let label = "label";
        std::fs::write(&global_path, global.to_safetensors(None)?).map_err(|source| {
            TrainError::Io {
                path: global_path.clone(),
                source,
            }
        })?;
        write_csv(data, label, &csv_path)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("CONFIDE_GLOBAL_MODEL", &global_path)
            .env("CONFIDE_OUTPUT_MODEL", &out_path)
            .env("CONFIDE_TRAIN_CSV", &csv_path)
            .env("CONFIDE_LABEL", label)
            .env("CONFIDE_EPOCHS", cfg.epochs.to_string())
            .env("CONFIDE_BATCH_SIZE", cfg.batch_size.to_string())
            .env("CONFIDE_LEARNING_RATE", cfg.learning_rate.to_string())
            .env("CONFIDE_L2", cfg.l2.to_string())
            .status()
            .map_err(|e| ext(format!("cannot run '{}': {e}", self.command)))?;
        if !status.success() {
            return Err(ext(format!("'{}' failed with {status}", self.command)));
        }
        let bytes = std::fs::read(&out_path).map_err(|e| {
            ext(format!(
                "'{}' wrote no model to {}: {e}",
                self.command,
                out_path.display()
            ))
        })?;
        let local = Model::from_safetensors(&bytes)?;
        global.check_same_layout(&local)?;
        let delta = local.sub(global)?;
        Ok(FitResult {
            delta,
            num_examples: data.len() as u64,
            train_loss: f64::NAN,
        })
    }

    fn evaluate(&self, model: &Model, data: &Dataset) -> Result<EvalResult> {
        self.builtin.evaluate(model, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> std::result::Result<(Model, Dataset, BoxTrainer), Box<dyn std::error::Error>> {
        let t = v1::TrainingConfig {
            model: "logistic".into(),
            features: 2,
            classes: 2,
            ..Default::default()
        };
        let builtin = builtin_trainer(&t)?;
        let mut rng = rand::rng();
        let global = builtin.init(&mut rng);
        let data = Dataset::from_reader("a,b,y\n1,2,0\n3,4,1\n".as_bytes(), "y")?;
        Ok((global, data, builtin))
    }

    #[test]
    fn external_command_update_becomes_a_delta()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (global, data, builtin) = setup()?;
        // "Training" = copying the global model: the delta must be all zeros,
        // and the command must have seen the training CSV.
        let mut t = ExternalTrainer::new(
            "test -s \"$CONFIDE_TRAIN_CSV\" && grep -q '^a,b,label$' \"$CONFIDE_TRAIN_CSV\" && cp \"$CONFIDE_GLOBAL_MODEL\" \"$CONFIDE_OUTPUT_MODEL\"",
            builtin,
        );
        let r = t.fit(&global, &data, &FitConfig::default(), &mut rand::rng())?;
        assert_eq!(r.num_examples, 2);
        assert_eq!(r.delta.num_params(), global.num_params());
        assert!(r.delta.flatten().iter().all(|&x| x == 0.0));
        Ok(())
    }

    #[test]
    fn failing_or_silent_commands_are_errors() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let (global, data, _) = setup()?;
        for cmd in ["exit 3", "true"] {
            let (_, _, builtin) = setup()?;
            let mut t = ExternalTrainer::new(cmd, builtin);
            let r = t.fit(&global, &data, &FitConfig::default(), &mut rand::rng());
            assert!(
                r.is_err_and(|e| e.to_string().contains("external trainer")),
                "{cmd}"
            );
        }
        Ok(())
    }
}
