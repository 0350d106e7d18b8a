//! What the coordinator is told when this site refuses a round. A refusal
//! (training bounds, one contribution per model, the replay rule, the
//! secure-aggregation policy, or anything else that ends the site's part)
//! is logged by the run loop and, here, turned into a `Decline` carrying its
//! reason code and message, so the coordinator stops waiting for the site at
//! once instead of at the stage deadline and records why. A re-run refused
//! for its cohort (`REPLAY_COHORT`) also names the survivor set this site
//! signed on the model, the only cohort it replays to. Sending it is best
//! effort (`run.rs`): the stage deadline stays the coordinator's fallback.

use confide_crypto::ProtocolError;
use confide_proto::convert::{self, Decline, DeclineReason};
use confide_proto::v1;

use super::RoundDriver;
use crate::error::ClientError;

/// The reason code of `e`, which ends this site's part in a round, or
/// `None` when no Decline is due: the coordinator refused the site's call
/// itself (it knows), or the link failed (its reconnect grace covers that).
/// No catch-all arm: a new error must be given its class here.
pub(crate) fn reason(e: &ClientError) -> Option<DeclineReason> {
    use DeclineReason::*;
    Some(match e {
        ClientError::TrainingRefused { .. } => TrainingBounds,
        ClientError::AlreadyContributed { .. } => AlreadyContributed,
        ClientError::ReplayRefused { .. } => ReplayRefused,
        ClientError::ReplayCohort { .. } => ReplayCohort,
        ClientError::PlaintextRefused { .. } => SecureAggregationPolicy,
        ClientError::Protocol(p) => match p {
            // The site's own checks of the round and of what the
            // coordinator claims: its policy, not a fault of the data.
            ProtocolError::Policy(_)
            | ProtocolError::Inconsistent(_)
            | ProtocolError::BothSharesRequested(_)
            | ProtocolError::BelowThreshold { .. }
            | ProtocolError::TooFewSurvivors { .. } => SecureAggregationPolicy,
            ProtocolError::Crypto(_)
            | ProtocolError::Shamir(_)
            | ProtocolError::Config(_)
            | ProtocolError::WrongStage { .. }
            | ProtocolError::WrongRound { .. }
            | ProtocolError::NotParticipant(_)
            | ProtocolError::Duplicate(_)
            | ProtocolError::Malformed { .. }
            | ProtocolError::BadAdvert { .. }
            | ProtocolError::WrongLength { .. }
            | ProtocolError::Reconstruction { .. }
            | ProtocolError::MissingPairKey { .. }
            | ProtocolError::CommitmentMismatch { .. }
            | ProtocolError::Ended
            | ProtocolError::Aborted { .. } => Other,
        },
        ClientError::InvalidRound(_)
        | ClientError::ModelHashMismatch { .. }
        | ClientError::Data(_)
        | ClientError::Quant(_)
        | ClientError::Stats(_)
        | ClientError::NonFiniteUpdate { .. }
        | ClientError::Download(_)
        | ClientError::ExternalTrainer(_)
        | ClientError::Task(_)
        | ClientError::Config(_)
        | ClientError::CertFile { .. }
        | ClientError::SigningKey { .. }
        | ClientError::Ledger { .. } => Other,
        ClientError::Refused { .. }
        | ClientError::InvalidUrl { .. }
        | ClientError::Connect { .. }
        | ClientError::NotServing { .. }
        | ClientError::GaveUp { .. }
        | ClientError::StreamClosed
        | ClientError::TaskParts(_) => return None,
    })
}

impl RoundDriver {
    /// The Decline due for `e`, which ended this site's part in the round in
    /// progress or refused the round just announced; `None` when no round
    /// was concerned or none is due ([`reason`]). Call before
    /// [`RoundDriver::leave_round`], which forgets the round in progress.
    pub(crate) fn decline(&mut self, e: &ClientError) -> Option<v1::DeclineRequest> {
        let reason = reason(e)?;
        let round = self.current_round().or(self.refused_at_start.take())?;
        let session = self.session.as_deref()?;
        let cohort = match e {
            ClientError::ReplayCohort { survivors, .. } => survivors.clone(),
            _ => Vec::new(),
        };
        let d = Decline {
            round,
            reason,
            message: e.to_string(),
            cohort,
        };
        Some(convert::decline_to_proto(&d, session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_get_their_reason_and_coordinator_refusals_none() {
        let cases = [
            (
                ClientError::TrainingRefused {
                    round: 1,
                    why: "9 epochs".into(),
                },
                Some(DeclineReason::TrainingBounds),
            ),
            (
                ClientError::AlreadyContributed {
                    round: 1,
                    federation: "f".into(),
                    model: "ab".into(),
                },
                Some(DeclineReason::AlreadyContributed),
            ),
            (
                ClientError::ReplayRefused {
                    round: 1,
                    model: "ab".into(),
                    why: "cohort".into(),
                },
                Some(DeclineReason::ReplayRefused),
            ),
            (
                ClientError::ReplayCohort {
                    round: 1,
                    model: "ab".into(),
                    why: "a cohort of 5".into(),
                    survivors: vec!["a".into(), "b".into(), "c".into()],
                },
                Some(DeclineReason::ReplayCohort),
            ),
            (
                ClientError::Ledger {
                    path: "/state/contributions/ledger".into(),
                    reason: "cannot write".into(),
                },
                Some(DeclineReason::Other),
            ),
            (
                ClientError::PlaintextRefused { round: 1 },
                Some(DeclineReason::SecureAggregationPolicy),
            ),
            (
                ProtocolError::Policy("cohort of 2".into()).into(),
                Some(DeclineReason::SecureAggregationPolicy),
            ),
            (
                ProtocolError::Inconsistent("not my view".into()).into(),
                Some(DeclineReason::SecureAggregationPolicy),
            ),
            (
                ClientError::InvalidRound("kind".into()),
                Some(DeclineReason::Other),
            ),
            (
                ClientError::Refused {
                    call: "Unmask",
                    code: tonic::Code::FailedPrecondition,
                    message: "stage closed".into(),
                },
                None,
            ),
            (ClientError::StreamClosed, None),
        ];
        for (e, want) in cases {
            assert_eq!(reason(&e), want, "{e}");
        }
    }
}
