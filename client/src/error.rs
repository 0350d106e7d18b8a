//! The crate's error type: one enum whose messages tell a site operator what
//! to fix (a file, a URL, a certificate) or what the coordinator said.

use std::path::PathBuf;
use std::time::Duration;

use confide_crypto::ProtocolError;
use confide_crypto::quant::QuantError;
use confide_crypto::stats::StatsError;

use crate::train::TrainError;

/// Everything that can stop a site.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator URL does not parse or uses the wrong scheme.
    #[error("invalid coordinator URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP/TLS connection could not be established.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The coordinator URL.
        url: String,
        /// The transport's error, with its causes.
        reason: String,
    },
    /// A certificate or key file could not be read.
    #[error("certificate file {path} unreadable: {source}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The signing-key file is unreadable or malformed.
    #[error("signing key file {path}: {reason}")]
    SigningKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The site configuration is inconsistent.
    #[error("invalid site configuration: {0}")]
    Config(String),
    /// The coordinator answered a call with an error status.
    #[error("coordinator refused {call}: {code:?}: {message}")]
    Refused {
        /// The RPC.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The coordinator's health service says it does not serve the site
    /// API (a standby waiting for the lease): try the next URL.
    #[error("coordinator {url} is not serving (standby?)")]
    NotServing {
        /// The coordinator URL.
        url: String,
    },
    /// Reconnecting failed for longer than `max_reconnect`.
    #[error("gave up reconnecting to {url} after {after:?}: {last}")]
    GaveUp {
        /// The coordinator URL.
        url: String,
        /// How long the site tried.
        after: Duration,
        /// The last error seen.
        last: Box<ClientError>,
    },
    /// The local data file or training failed.
    #[error(transparent)]
    Data(#[from] TrainError),
    /// A round announcement that this site cannot take part in.
    #[error("invalid round announcement: {0}")]
    InvalidRound(String),
    /// The coordinator announced a plaintext round and this site's policy
    /// requires secure aggregation.
    #[error(
        "round {round} is announced as plaintext (the coordinator would see this site's update): \
         refused, this site takes part only with secure aggregation (--allow-plaintext to opt in)"
    )]
    PlaintextRefused {
        /// The refused round.
        round: u64,
    },
    /// The round's training settings break this site's bounds.
    #[error("round {round} asks for {why}: refused")]
    TrainingRefused {
        /// The refused round.
        round: u64,
        /// Which setting, and the bound.
        why: String,
    },
    /// The downloaded model is not the one the announcement bound the round
    /// to (its SHA-256 differs from `RoundStart.model_sha256`).
    #[error(
        "round {round}: the downloaded model's SHA-256 is {got}, the round was announced for {announced}: refused"
    )]
    ModelHashMismatch {
        /// The refused round.
        round: u64,
        /// SHA-256 announced (hex).
        announced: String,
        /// SHA-256 of the bytes received (hex).
        got: String,
    },
    /// A second training round on a model this site already sent an update
    /// for: two sums over different cohorts that both contain this site's
    /// update on one model could be subtracted to isolate it.
    #[error(
        "round {round}: this site already contributed a training update on model {model} in federation {federation:?}; \
         refusing a second contribution on the same model"
    )]
    AlreadyContributed {
        /// The refused round.
        round: u64,
        /// The federation.
        federation: String,
        /// The model's SHA-256 (hex).
        model: String,
    },
    /// A training round on a model this site already signed a survivor set
    /// for (or uploaded an update on) that is not an exact replay of that
    /// contribution: see `round/contribution.rs`.
    #[error(
        "round {round}: not a replay of this site's earlier update on model {model}: {why}; refused"
    )]
    ReplayRefused {
        /// The refused round.
        round: u64,
        /// The model's SHA-256 (hex).
        model: String,
        /// What differs.
        why: String,
    },
    /// A retry on a model whose survivor set this site signed, with another
    /// cohort (or masking set, or survivor set): the input is replayed only
    /// to exactly `survivors` (`round/contribution.rs`), which the Decline
    /// tells the coordinator.
    #[error(
        "round {round}: this site replays its update on model {model} only to the {} sites of the survivor set it signed: {why}; refused",
        survivors.len()
    )]
    ReplayCohort {
        /// The refused round.
        round: u64,
        /// The model's SHA-256 (hex).
        model: String,
        /// What differs.
        why: String,
        /// The site names of the survivor set signed, this site included.
        survivors: Vec<String>,
    },
    /// The site's record of its contributions (its state directory) cannot
    /// be read, is corrupt, or cannot be written: without it the site could
    /// put a second input into a sum on a model it already contributed to.
    #[error("contribution ledger {path}: {reason}")]
    Ledger {
        /// The file (or directory).
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The secure-aggregation state machine refused a message.
    #[error("secure aggregation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The local update could not be quantised.
    #[error("quantisation: {0}")]
    Quant(#[from] QuantError),
    /// The local statistics could not be encoded.
    #[error("statistics: {0}")]
    Stats(#[from] StatsError),
    /// Local training produced NaN or an infinity; nothing was submitted.
    #[error(
        "local update element {index} is {value}: refusing to submit a non-finite update (lower the learning rate?)"
    )]
    NonFiniteUpdate {
        /// Element index in the flattened update.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The global model download was malformed or too large.
    #[error("model download: {0}")]
    Download(String),
    /// The external training command failed.
    #[error("external trainer: {0}")]
    ExternalTrainer(String),
    /// The coordinator closed the task stream for good.
    #[error("the coordinator closed the task stream")]
    StreamClosed,
    /// A large task's parts did not go back together; the stream is
    /// reopened and the round's tasks come again.
    #[error("task stream: {0}")]
    TaskParts(#[from] confide_proto::task_parts::PartError),
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ClientError {
    /// Whether reconnecting may help (transport trouble, an unavailable or
    /// restarting coordinator) as opposed to a fault that will repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::NotServing { .. }
            | ClientError::StreamClosed
            | ClientError::TaskParts(_) => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Aborted
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unauthenticated
            ),
            _ => false,
        }
    }

    /// The coordinator no longer knows the session (it restarted): Join
    /// again, promptly, since it is up and answering.
    pub(crate) fn is_session_lost(&self) -> bool {
        self.is_refused_with(tonic::Code::Unauthenticated)
    }

    /// An earlier attempt of this message arrived: the call succeeded.
    pub(crate) fn is_already_received(&self) -> bool {
        self.is_refused_with(tonic::Code::AlreadyExists)
    }

    /// The coordinator is busy (rate limit, upload slots): worth the same
    /// call again after a pause, not a reconnect.
    pub(crate) fn is_busy(&self) -> bool {
        self.is_refused_with(tonic::Code::ResourceExhausted)
    }

    /// The stage the message was for has closed.
    pub(crate) fn is_stage_closed(&self) -> bool {
        self.is_refused_with(tonic::Code::FailedPrecondition)
    }

    /// The link (or the session on it) is gone, as opposed to a coordinator
    /// that answered and refused: only then is resending after a reconnect
    /// worth it.
    pub(crate) fn is_link_lost(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => {
                matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::Unauthenticated
                )
            }
            other => other.is_transient(),
        }
    }

    fn is_refused_with(&self, want: tonic::Code) -> bool {
        matches!(self, ClientError::Refused { code, .. } if *code == want)
    }

    pub(crate) fn refused(call: &'static str, status: tonic::Status) -> Self {
        ClientError::Refused {
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}
