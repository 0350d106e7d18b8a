//! What can go wrong with an external training command
//! ([`crate::external`]): each case its own variant, so a data scientist
//! reads which part of the contract broke. Any of them leaves the round:
//! nothing is sent. It lives with the training errors, which wrap it, so
//! that `train` never depends on `external`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use confide_proto::model::ModelError;

/// Why the command is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Train from `$CONFIDE_GLOBAL_MODEL`, write `$CONFIDE_OUTPUT_MODEL`.
    Train,
    /// Score `$CONFIDE_GLOBAL_MODEL` on held-out data.
    Evaluate,
}

impl Mode {
    /// The value of `CONFIDE_MODE`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Evaluate => "evaluate",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken external-trainer contract (see `docs/site.md`).
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The private working directory or a file in it could not be written.
    #[error("cannot prepare {path}: {source}")]
    Files {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `sh -c CMD` could not be started or waited for.
    #[error("cannot run `sh -c '{command}'`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran past the site's timeout and was killed.
    #[error(
        "'{command}' ({mode}) did not finish within {}s and was killed \
         (raise --train-timeout-secs if it needs longer)", after.as_secs()
    )]
    Timeout {
        /// The command.
        command: String,
        /// Train or evaluate.
        mode: Mode,
        /// The timeout.
        after: Duration,
    },
    /// The command exited non-zero (or by a signal).
    #[error("'{command}' ({mode}) failed with {status}; the end of its stderr:\n{stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Train or evaluate.
        mode: Mode,
        /// Exit status.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// A train call that left `$CONFIDE_OUTPUT_MODEL` unwritten.
    #[error("'{command}' (train) exited 0 but wrote no model to $CONFIDE_OUTPUT_MODEL")]
    NoOutputModel {
        /// The command.
        command: String,
    },
    /// `$CONFIDE_OUTPUT_MODEL` is not a model Confide can read.
    #[error("the model written to $CONFIDE_OUTPUT_MODEL: {0}")]
    BadOutputModel(#[source] ModelError),
    /// The output model's tensor names, shapes or dtypes differ from the
    /// global model's.
    #[error(
        "the model written to $CONFIDE_OUTPUT_MODEL must have the global model's tensor names, \
         shapes and dtypes: {0}"
    )]
    OutputLayout(#[source] ModelError),
    /// NaN or an infinity in the output model.
    #[error(
        "the model written to $CONFIDE_OUTPUT_MODEL has tensor '{name}' element {index} = {value}: \
         refusing a non-finite update (lower the learning rate?)"
    )]
    NonFiniteOutput {
        /// Tensor name.
        name: String,
        /// Row-major index inside the tensor.
        index: usize,
        /// The value.
        value: f32,
    },
    /// `$CONFIDE_METRICS` was not written.
    #[error(
        "'{command}' ({mode}) exited 0 but wrote no metrics to $CONFIDE_METRICS \
         (JSON with at least \"num_examples\")"
    )]
    NoMetrics {
        /// The command.
        command: String,
        /// Train or evaluate.
        mode: Mode,
    },
    /// `$CONFIDE_METRICS` is not the JSON the contract asks for.
    #[error("metrics in $CONFIDE_METRICS ({mode}): {reason}")]
    BadMetrics {
        /// Train or evaluate.
        mode: Mode,
        /// What is wrong.
        reason: String,
    },
    /// A built-in model kind at a site that has no CSV for the built-in
    /// trainer.
    #[error(
        "the round trains a built-in model (logistic, mlp), which needs this site's CSV \
         (--data FILE --label COLUMN); this site runs without one"
    )]
    NoDataset,
}
