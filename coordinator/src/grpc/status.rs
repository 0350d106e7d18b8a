//! The one map from a refused request ([`CoreError`]) to a gRPC [`Status`].
//! Exhaustive on purpose, with no catch-all arm: a new refusal must be given
//! its status here, or the crate does not compile.

use tonic::Status;
use tracing::{info, warn};

use crate::error::CoreError;

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        let msg = e.to_string();
        // One log line per refusal: identity and limit violations are what
        // an operator must see; the rest (late, duplicate, malformed) are
        // normal under retries and reconnects.
        match &e {
            CoreError::IdentityMismatch { .. } | CoreError::Limit(_) => {
                warn!(reason = %msg, "request refused")
            }
            _ => info!(reason = %msg, "request refused"),
        }
        match e {
            CoreError::UnknownSession => Status::unauthenticated(msg),
            CoreError::IdentityMismatch { .. } => Status::permission_denied(msg),
            CoreError::WrongRound { .. } | CoreError::WrongStage(_) => {
                Status::failed_precondition(msg)
            }
            CoreError::Duplicate(_) => Status::already_exists(msg),
            CoreError::Invalid(_) => Status::invalid_argument(msg),
            CoreError::Limit(_) => Status::resource_exhausted(msg),
            CoreError::NotFound(_) => Status::not_found(msg),
            CoreError::Internal(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn core_errors_map_to_the_documented_statuses() {
        let cases = [
            (CoreError::UnknownSession, Code::Unauthenticated),
            (
                CoreError::IdentityMismatch {
                    peer: "a".into(),
                    site: "b".into(),
                },
                Code::PermissionDenied,
            ),
            (
                CoreError::WrongRound {
                    expected: 2,
                    got: 1,
                },
                Code::FailedPrecondition,
            ),
            (CoreError::WrongStage("x".into()), Code::FailedPrecondition),
            (CoreError::Duplicate("x".into()), Code::AlreadyExists),
            (CoreError::Invalid("x".into()), Code::InvalidArgument),
            (CoreError::Limit("x".into()), Code::ResourceExhausted),
            (CoreError::NotFound("x".into()), Code::NotFound),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e.clone()).code(), code, "{e}");
        }
        let dup: CoreError = confide_crypto::ProtocolError::Duplicate(3).into();
        assert_eq!(Status::from(dup).code(), Code::AlreadyExists);
        let len: CoreError = confide_crypto::ProtocolError::WrongLength {
            expected: 2,
            got: 1,
        }
        .into();
        assert_eq!(Status::from(len).code(), Code::InvalidArgument);
    }
}
