//! The `Decline` message: a site refusing the round it was announced, for a
//! site-local reason, so that the coordinator stops waiting for it at once
//! instead of at the stage deadline. Both directions here, like the stage
//! messages; the message text is tidied on both (it reaches logs and the
//! round record, so a peer must not be able to forge lines or fill disks).

use crate::v1;

/// Why a site refuses a round (the wire's `DeclineReason`, whose
/// unspecified and unknown values read as [`DeclineReason::Other`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeclineReason {
    /// The round's training settings break the site's bounds.
    TrainingBounds,
    /// The site already sent a training update on this model.
    AlreadyContributed,
    /// A retry on a model the site contributed to that is not an exact replay.
    ReplayRefused,
    /// The site's secure-aggregation policy (plaintext, cohort, survivors,
    /// k/t floors, a survivor set it cannot sign).
    SecureAggregationPolicy,
    /// Anything else the site cannot go on with.
    Other,
}

impl DeclineReason {
    /// Every reason, for label sets and tests.
    pub const ALL: [DeclineReason; 5] = [
        DeclineReason::TrainingBounds,
        DeclineReason::AlreadyContributed,
        DeclineReason::ReplayRefused,
        DeclineReason::SecureAggregationPolicy,
        DeclineReason::Other,
    ];

    /// The reason's name in records and logs (`training_bounds`, …).
    pub fn name(self) -> &'static str {
        match self {
            DeclineReason::TrainingBounds => "training_bounds",
            DeclineReason::AlreadyContributed => "already_contributed",
            DeclineReason::ReplayRefused => "replay_refused",
            DeclineReason::SecureAggregationPolicy => "secure_aggregation_policy",
            DeclineReason::Other => "other",
        }
    }
}

impl std::fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A site's refusal of round `round`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    /// The refused round.
    pub round: u64,
    /// Why, as a class.
    pub reason: DeclineReason,
    /// Why, in the site's words (at most [`MAX_DECLINE_MESSAGE`] characters).
    pub message: String,
}

/// Characters of a decline's message that travel and are kept: enough for
/// any of the site's refusal messages, little enough for every round record.
pub const MAX_DECLINE_MESSAGE: usize = 512;

/// At most [`MAX_DECLINE_MESSAGE`] characters, control characters (line
/// breaks included) as spaces: one record line stays one line.
fn tidy(message: &str) -> String {
    message
        .chars()
        .take(MAX_DECLINE_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn reason_to_proto(r: DeclineReason) -> v1::DeclineReason {
    match r {
        DeclineReason::TrainingBounds => v1::DeclineReason::TrainingBounds,
        DeclineReason::AlreadyContributed => v1::DeclineReason::AlreadyContributed,
        DeclineReason::ReplayRefused => v1::DeclineReason::ReplayRefused,
        DeclineReason::SecureAggregationPolicy => v1::DeclineReason::SecureAggregationPolicy,
        DeclineReason::Other => v1::DeclineReason::Other,
    }
}

fn reason_from_proto(code: i32) -> DeclineReason {
    match v1::DeclineReason::try_from(code) {
        Ok(v1::DeclineReason::TrainingBounds) => DeclineReason::TrainingBounds,
        Ok(v1::DeclineReason::AlreadyContributed) => DeclineReason::AlreadyContributed,
        Ok(v1::DeclineReason::ReplayRefused) => DeclineReason::ReplayRefused,
        Ok(v1::DeclineReason::SecureAggregationPolicy) => DeclineReason::SecureAggregationPolicy,
        // A site newer than this coordinator may name a reason it does not
        // know: the decline still counts, as "other".
        Ok(v1::DeclineReason::Other | v1::DeclineReason::Unspecified) | Err(_) => {
            DeclineReason::Other
        }
    }
}

/// Domain → wire, stamped with `session`.
pub fn decline_to_proto(d: &Decline, session: &str) -> v1::DeclineRequest {
    let Decline {
        round,
        reason,
        message,
    } = d;
    v1::DeclineRequest {
        session: session.to_string(),
        round: *round,
        reason_code: reason_to_proto(*reason) as i32,
        message: tidy(message),
    }
}

/// Wire → domain (the session is the handler's to check). Never fails: an
/// unknown reason is [`DeclineReason::Other`], the message is tidied.
pub fn decline_from_proto(r: &v1::DeclineRequest) -> Decline {
    let v1::DeclineRequest {
        session: _,
        round,
        reason_code,
        message,
    } = r;
    Decline {
        round: *round,
        reason: reason_from_proto(*reason_code),
        message: tidy(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_the_round_trip() {
        for reason in DeclineReason::ALL {
            let d = Decline {
                round: 7,
                reason,
                message: format!("refused for {reason}"),
            };
            let wire = decline_to_proto(&d, "s-1");
            assert_eq!(wire.session, "s-1");
            assert_eq!(wire.round, 7);
            assert_ne!(wire.reason_code, v1::DeclineReason::Unspecified as i32);
            assert_eq!(decline_from_proto(&wire), d);
        }
    }

    #[test]
    fn wire_codes_map_to_their_reasons() {
        let code = |c: v1::DeclineReason| reason_from_proto(c as i32);
        assert_eq!(
            code(v1::DeclineReason::TrainingBounds),
            DeclineReason::TrainingBounds
        );
        assert_eq!(
            code(v1::DeclineReason::SecureAggregationPolicy),
            DeclineReason::SecureAggregationPolicy
        );
        assert_eq!(
            code(v1::DeclineReason::ReplayRefused),
            DeclineReason::ReplayRefused
        );
        assert_eq!(
            code(v1::DeclineReason::AlreadyContributed),
            DeclineReason::AlreadyContributed
        );
    }

    #[test]
    fn unknown_codes_count_as_other_and_messages_are_tidied() {
        let wire = v1::DeclineRequest {
            session: "s".into(),
            round: 3,
            reason_code: 99,
            message: format!("line one\nforged line{}", "x".repeat(2000)),
        };
        let d = decline_from_proto(&wire);
        assert_eq!(d.reason, DeclineReason::Other);
        assert_eq!(d.round, 3);
        assert!(!d.message.contains('\n'), "{}", d.message);
        assert!(d.message.starts_with("line one forged line"));
        assert_eq!(d.message.chars().count(), MAX_DECLINE_MESSAGE);
        let unspecified = v1::DeclineRequest {
            reason_code: v1::DeclineReason::Unspecified as i32,
            ..wire
        };
        assert_eq!(
            decline_from_proto(&unspecified).reason,
            DeclineReason::Other
        );
        // A site's own long message is cut before it travels, too.
        let long = Decline {
            round: 1,
            reason: DeclineReason::Other,
            message: "é".repeat(600),
        };
        assert_eq!(
            decline_to_proto(&long, "s").message.chars().count(),
            MAX_DECLINE_MESSAGE
        );
    }
}
