//! Errors of the coordinator. [`CoreError`] is what a site's request can
//! provoke (mapped to one gRPC status in `grpc`); [`CoordinatorError`] is what
//! stops the coordinator.

use confide_crypto::ProtocolError;

/// Why a site's request was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CoreError {
    /// Unknown or replaced session.
    #[error("unknown or expired session")]
    UnknownSession,
    /// The TLS identity does not own the session / name.
    #[error("TLS identity {peer:?} may not act as site {site:?}")]
    IdentityMismatch {
        /// Name in the peer certificate.
        peer: String,
        /// Site claimed.
        site: String,
    },
    /// Message for another round.
    #[error("message for round {got}, but the current round is {expected}")]
    WrongRound {
        /// Current round (0: none).
        expected: u64,
        /// Message's round.
        got: u64,
    },
    /// Message for another stage or a member not in this stage.
    #[error("{0}")]
    WrongStage(String),
    /// Duplicate submission.
    #[error("duplicate submission: {0}")]
    Duplicate(String),
    /// Malformed content.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A configured limit.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// Not found.
    #[error("not found: {0}")]
    NotFound(String),
    /// Internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ProtocolError> for CoreError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::WrongRound { expected, got } => CoreError::WrongRound { expected, got },
            ProtocolError::WrongStage { .. }
            | ProtocolError::Ended
            | ProtocolError::NotParticipant(_) => CoreError::WrongStage(e.to_string()),
            ProtocolError::Duplicate(_) => CoreError::Duplicate(e.to_string()),
            ProtocolError::WrongLength { .. } | ProtocolError::Malformed { .. } => {
                CoreError::Invalid(e.to_string())
            }
            other => CoreError::Invalid(other.to_string()),
        }
    }
}

/// Why the coordinator cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Invalid settings.
    #[error("configuration: {0}")]
    Config(String),
    /// Checkpoint trouble.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// TLS material.
    #[error("TLS: {0}")]
    Tls(String),
    /// I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Transport.
    #[error("transport: {0}")]
    Transport(String),
    /// Too many failed rounds in a row.
    #[error("{0}")]
    Rounds(String),
}
