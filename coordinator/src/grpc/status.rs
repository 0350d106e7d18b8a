//! The one map from a refused request ([`RequestError`]) to a gRPC [`Status`].
//! Exhaustive on purpose, with no catch-all arm: a new refusal (or a new
//! protocol error) must be given its status here, or the crate does not
//! compile.

use confide_crypto::ProtocolError;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::error::RequestError;

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        let code = status_code(&e);
        // One log line per refusal: identity and limit violations are what
        // an operator must see; the rest (late, duplicate, malformed) are
        // normal under retries and reconnects.
        match (&e, code) {
            // A flood would log one line per request; the limiter warns once
            // when an identity starts being limited.
            (RequestError::RateLimited { .. }, _) => debug!(reason = %msg, "request refused"),
            (_, Code::PermissionDenied | Code::ResourceExhausted) => {
                warn!(reason = %msg, "request refused")
            }
            _ => info!(reason = %msg, "request refused"),
        }
        Status::new(code, msg)
    }
}

/// The status of each refusal; exhaustive, so a new error variant must be
/// given its code here.
fn status_code(e: &RequestError) -> Code {
    match e {
        RequestError::UnknownSession => Code::Unauthenticated,
        RequestError::IdentityMismatch { .. } | RequestError::MemberMismatch { .. } => {
            Code::PermissionDenied
        }
        RequestError::WrongRound { .. }
        | RequestError::NotInCohort { .. }
        | RequestError::NotUploading { .. } => Code::FailedPrecondition,
        RequestError::AlreadySubmitted(_) => Code::AlreadyExists,
        // A conflict with the member's own open stream: retrying later may
        // succeed (the client treats ABORTED as transient), unlike ALREADY_EXISTS,
        // which a site takes as "received".
        RequestError::UploadInProgress(_) => Code::Aborted,
        RequestError::UploadSlotTimeout { .. }
        | RequestError::UploadStalled { .. }
        | RequestError::UploadPastDeadline { .. } => Code::DeadlineExceeded,
        RequestError::Protocol(p) => protocol_code(p),
        RequestError::Convert(_)
        | RequestError::SiteName
        | RequestError::VerifyingKey
        | RequestError::VectorLength { .. }
        | RequestError::ChunkOffset { .. }
        | RequestError::ChunkSize { .. }
        | RequestError::Truncated { .. } => Code::InvalidArgument,
        RequestError::TooManySites { .. } | RequestError::RateLimited { .. } => {
            Code::ResourceExhausted
        }
        RequestError::NoModel { .. } => Code::NotFound,
        RequestError::ShuttingDown => Code::Internal,
        // The coordinator's disk, not the site's request: worth a retry.
        RequestError::Spill { .. } => Code::Unavailable,
    }
}

/// The status of a message the round's machine refused.
fn protocol_code(e: &ProtocolError) -> Code {
    match e {
        ProtocolError::WrongRound { .. }
        | ProtocolError::WrongStage { .. }
        | ProtocolError::Ended
        | ProtocolError::NotParticipant(_)
        | ProtocolError::Policy(_)
        | ProtocolError::Aborted { .. } => Code::FailedPrecondition,
        ProtocolError::Duplicate(_) => Code::AlreadyExists,
        ProtocolError::WrongLength { .. }
        | ProtocolError::Malformed { .. }
        | ProtocolError::BadAdvert { .. }
        | ProtocolError::BothSharesRequested(_)
        | ProtocolError::CommitmentMismatch { .. }
        | ProtocolError::Crypto(_)
        | ProtocolError::Shamir(_)
        | ProtocolError::Config(_)
        | ProtocolError::BelowThreshold { .. }
        | ProtocolError::TooFewSurvivors { .. }
        | ProtocolError::Inconsistent(_)
        | ProtocolError::Reconstruction { .. }
        | ProtocolError::MissingPairKey { .. } => Code::InvalidArgument,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_map_to_the_documented_statuses() {
        let cases = [
            (RequestError::UnknownSession, Code::Unauthenticated),
            (
                RequestError::IdentityMismatch {
                    peer: "a".into(),
                    site: "b".into(),
                },
                Code::PermissionDenied,
            ),
            (
                RequestError::MemberMismatch {
                    site: "a".into(),
                    claimed: 2,
                },
                Code::PermissionDenied,
            ),
            (
                RequestError::WrongRound {
                    expected: 2,
                    got: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                RequestError::NotInCohort {
                    site: "a".into(),
                    round: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                RequestError::NotUploading {
                    round: 1,
                    stage: confide_crypto::Stage::ShareKeys,
                },
                Code::FailedPrecondition,
            ),
            (RequestError::AlreadySubmitted(3), Code::AlreadyExists),
            (RequestError::SiteName, Code::InvalidArgument),
            (RequestError::VerifyingKey, Code::InvalidArgument),
            (
                RequestError::ChunkOffset {
                    offset: 1,
                    expected: 0,
                },
                Code::InvalidArgument,
            ),
            (
                RequestError::TooManySites { max_sites: 2 },
                Code::ResourceExhausted,
            ),
            (RequestError::NoModel { round: 1 }, Code::NotFound),
            (RequestError::UploadInProgress(3), Code::Aborted),
            (
                RequestError::UploadSlotTimeout { round: 1 },
                Code::DeadlineExceeded,
            ),
            (
                RequestError::UploadStalled {
                    idle_secs: 5,
                    received: 1,
                    elements: 9,
                },
                Code::DeadlineExceeded,
            ),
            (
                RequestError::UploadPastDeadline {
                    received: 1,
                    elements: 9,
                },
                Code::DeadlineExceeded,
            ),
            (
                RequestError::RateLimited {
                    site: "a".into(),
                    rate: 1.0,
                    burst: 2,
                },
                Code::ResourceExhausted,
            ),
            (RequestError::ShuttingDown, Code::Internal),
            (
                RequestError::Spill {
                    dir: "/tmp".into(),
                    reason: "No space left on device".into(),
                },
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e.clone()).code(), code, "{e}");
        }
        let dup: RequestError = confide_crypto::ProtocolError::Duplicate(3).into();
        assert_eq!(Status::from(dup).code(), Code::AlreadyExists);
        let len: RequestError = confide_crypto::ProtocolError::WrongLength {
            expected: 2,
            got: 1,
        }
        .into();
        assert_eq!(Status::from(len).code(), Code::InvalidArgument);
        let stage: RequestError = confide_crypto::ProtocolError::WrongStage {
            expected: confide_crypto::Stage::MaskedInput,
            got: confide_crypto::Stage::AdvertiseKeys,
        }
        .into();
        assert_eq!(Status::from(stage).code(), Code::FailedPrecondition);
        let policy: RequestError = confide_crypto::ProtocolError::Policy("no".into()).into();
        assert_eq!(Status::from(policy).code(), Code::FailedPrecondition);
        let inconsistent: RequestError =
            confide_crypto::ProtocolError::Inconsistent("bad signature".into()).into();
        assert_eq!(Status::from(inconsistent).code(), Code::InvalidArgument);
    }
}
