//! Error type shared by the data loading, preprocessing and training code.

use std::path::PathBuf;

/// Result alias used throughout [`crate::train`](super).
pub type Result<T> = std::result::Result<T, TrainError>;

/// Everything that can go wrong while loading data or training a model.
///
/// CSV errors name the 1-based line of the file (the header is line 1) and
/// the column, so a data owner can find the offending cell.
// Variant fields are described by each variant's message.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A problem inside a named data file; `source` says what and where.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<TrainError>,
    },
    /// Low-level CSV syntax error (for example invalid UTF-8).
    #[error("malformed CSV: {0}")]
    Csv(#[from] csv::Error),
    /// The file is empty, so there is no header row naming the columns.
    #[error("CSV has no header row")]
    MissingHeader,
    /// The requested label column is not in the header.
    #[error("label column '{label}' not found in header (columns: {available})")]
    MissingLabelColumn { label: String, available: String },
    /// Two header fields have the same name, so columns would be ambiguous.
    #[error("column '{column}' appears more than once in the header")]
    DuplicateColumn { column: String },
    /// A data row has a different number of fields than the header.
    #[error("line {line}: expected {expected} fields as in the header, found {found}")]
    RaggedRow {
        line: u64,
        expected: usize,
        found: usize,
    },
    /// An empty cell.
    #[error("line {line}, column '{column}': missing value")]
    MissingValue { line: u64, column: String },
    /// A feature cell that does not parse as a number.
    #[error("line {line}, column '{column}': '{value}' is not a number")]
    NonNumeric {
        line: u64,
        column: String,
        value: String,
    },
    /// A feature cell holding NaN or an infinity.
    #[error("line {line}, column '{column}': '{value}' is not a finite number")]
    NonFinite {
        line: u64,
        column: String,
        value: String,
    },
    /// A label cell that is not a non-negative integer class id.
    #[error(
        "line {line}, label column '{column}': '{value}' is not a non-negative integer class id"
    )]
    InvalidLabel {
        line: u64,
        column: String,
        value: String,
    },
    /// The data set has no rows.
    #[error("dataset has no rows")]
    EmptyDataset,
    /// Feature matrix, labels and names disagree in size.
    #[error("inconsistent dataset: {0}")]
    InconsistentDataset(String),
    /// The data set's feature count differs from the model's input size.
    #[error("dataset has {found} features, model expects {expected}")]
    FeatureMismatch { expected: usize, found: usize },
    /// A label is not a valid class id for the model.
    #[error("label {label} out of range for a {classes}-class model")]
    LabelOutOfRange { label: u32, classes: usize },
    /// Feature statistics that cannot define a standardiser.
    #[error("invalid feature statistics: {0}")]
    InvalidStats(String),
    /// A tensor the trainer needs is absent from the model.
    #[error("tensor '{name}' missing from model")]
    MissingTensor { name: String },
    /// The model holds a tensor the trainer does not know.
    #[error("unexpected tensor '{name}' in model")]
    UnexpectedTensor { name: String },
    /// A tensor has the wrong shape for the trainer or for the other model.
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor's data length disagrees with its shape.
    #[error("tensor of shape {shape:?} needs {expected} values, got {found}")]
    TensorSize {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    /// A flat parameter vector of the wrong length.
    #[error("flat parameter vector has {found} values, model has {expected}")]
    FlatLength { expected: usize, found: usize },
    /// Two models whose tensor names differ.
    #[error("models have different tensors: '{name}' is only in one of them")]
    LayoutMismatch { name: String },
    /// A model file that cannot be written or parsed.
    #[error("model file: {0}")]
    ModelFile(String),
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The external training command broke its contract.
    #[error("external trainer: {0}")]
    External(#[from] super::external_error::ExternalError),
    /// The loss became NaN or infinite, usually because the learning rate is too high.
    #[error("training diverged: non-finite loss in epoch {epoch} (try a lower learning rate)")]
    Diverged { epoch: usize },
}

impl From<confide_proto::model::ModelError> for TrainError {
    fn from(e: confide_proto::model::ModelError) -> Self {
        use confide_proto::model::ModelError as M;
        match e {
            M::TensorSize {
                shape,
                expected,
                found,
            } => TrainError::TensorSize {
                shape,
                expected,
                found,
            },
            M::FlatLength { expected, found } => TrainError::FlatLength { expected, found },
            M::LayoutMismatch { name } => TrainError::LayoutMismatch { name },
            M::ShapeMismatch {
                name,
                expected,
                found,
            } => TrainError::ShapeMismatch {
                name,
                expected,
                found,
            },
            M::File(reason) => TrainError::ModelFile(reason),
            M::Spec(reason) => TrainError::InvalidConfig(reason),
            other @ (M::Read { .. }
            | M::UnsupportedDtype { .. }
            | M::DtypeMismatch { .. }
            | M::Empty
            | M::TooLarge { .. }
            | M::Overflow { .. }
            | M::NonFinite { .. }) => TrainError::ModelFile(other.to_string()),
        }
    }
}

impl From<confide_proto::standardise::StatsError> for TrainError {
    fn from(e: confide_proto::standardise::StatsError) -> Self {
        use confide_proto::standardise::StatsError as S;
        match e {
            S::FeatureMismatch { expected, found } => {
                TrainError::FeatureMismatch { expected, found }
            }
            S::NoRows
            | S::Mismatch { .. }
            | S::AddMismatch { .. }
            | S::NonFiniteSum { .. }
            | S::BadParameters => TrainError::InvalidStats(e.to_string()),
        }
    }
}
