//! The `Decline` message: a site refusing the round it was announced, for a
//! site-local reason, so that the coordinator stops waiting for it at once
//! instead of at the stage deadline. Both directions here, like the stage
//! messages; the message text is tidied on both (it reaches logs and the
//! round record, so a peer must not be able to forge lines or fill disks).
//! A `REPLAY_COHORT` decline also names the survivor set the site signed
//! on the model, the one cohort it replays to: the coordinator's scheduler
//! uses it to re-run the round with exactly that cohort.

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
    /// A retry on a model whose survivor set this site signed, with another
    /// cohort: [`Decline::cohort`] names that set, the only cohort the site
    /// replays to.
    ReplayCohort,
}

impl DeclineReason {
    /// Every reason, for label sets and tests.
    pub const ALL: [DeclineReason; 6] = [
        DeclineReason::TrainingBounds,
        DeclineReason::AlreadyContributed,
        DeclineReason::ReplayRefused,
        DeclineReason::SecureAggregationPolicy,
        DeclineReason::Other,
        DeclineReason::ReplayCohort,
    ];

    /// The reason's name in records and logs (`training_bounds`, …).
    pub fn name(self) -> &'static str {
        match self {
            DeclineReason::TrainingBounds => "training_bounds",
            DeclineReason::AlreadyContributed => "already_contributed",
            DeclineReason::ReplayRefused => "replay_refused",
            DeclineReason::SecureAggregationPolicy => "secure_aggregation_policy",
            DeclineReason::Other => "other",
            DeclineReason::ReplayCohort => "replay_cohort",
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
    /// With [`DeclineReason::ReplayCohort`] only: the site names of the
    /// survivor set the site signed on the round's model (itself included),
    /// sorted and distinct; empty otherwise. A scheduling hint: the sites'
    /// own checks decide what they accept.
    pub cohort: Vec<String>,
}

/// Characters of a decline's message that travel and are kept: enough for
/// any of the site's refusal messages, little enough for every round record.
pub const MAX_DECLINE_MESSAGE: usize = 512;

/// Names a replay cohort may carry: far above any cross-silo federation,
/// little enough that one decline cannot fill the coordinator's memory.
pub const MAX_REPLAY_COHORT: usize = 1024;

/// Characters of one site name in a replay cohort (a certificate's name).
pub const MAX_SITE_NAME: usize = 256;

/// At most [`MAX_DECLINE_MESSAGE`] characters, control characters (line
/// breaks included) as spaces: one record line stays one line.
fn tidy(message: &str) -> String {
    message
        .chars()
        .take(MAX_DECLINE_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A replay cohort as it travels and is kept: only with its reason, sorted
/// and distinct; a list too long, or a name empty, too long or with control
/// characters, makes the whole list empty (a site's names are certificate
/// names, so an honest site never sends one; an empty list only costs the
/// hint, the decline itself still counts).
fn tidy_cohort(reason: DeclineReason, names: &[String]) -> Vec<String> {
    let sane = |n: &String| {
        !n.is_empty() && n.chars().count() <= MAX_SITE_NAME && !n.chars().any(char::is_control)
    };
    if reason != DeclineReason::ReplayCohort
        || names.len() > MAX_REPLAY_COHORT
        || !names.iter().all(sane)
    {
        return Vec::new();
    }
    let set: std::collections::BTreeSet<&String> = names.iter().collect();
    set.into_iter().cloned().collect()
}

fn reason_to_proto(r: DeclineReason) -> v1::DeclineReason {
    match r {
        DeclineReason::TrainingBounds => v1::DeclineReason::TrainingBounds,
        DeclineReason::AlreadyContributed => v1::DeclineReason::AlreadyContributed,
        DeclineReason::ReplayRefused => v1::DeclineReason::ReplayRefused,
        DeclineReason::SecureAggregationPolicy => v1::DeclineReason::SecureAggregationPolicy,
        DeclineReason::Other => v1::DeclineReason::Other,
        DeclineReason::ReplayCohort => v1::DeclineReason::ReplayCohort,
    }
}

fn reason_from_proto(code: i32) -> DeclineReason {
    match v1::DeclineReason::try_from(code) {
        Ok(v1::DeclineReason::TrainingBounds) => DeclineReason::TrainingBounds,
        Ok(v1::DeclineReason::AlreadyContributed) => DeclineReason::AlreadyContributed,
        Ok(v1::DeclineReason::ReplayRefused) => DeclineReason::ReplayRefused,
        Ok(v1::DeclineReason::SecureAggregationPolicy) => DeclineReason::SecureAggregationPolicy,
        Ok(v1::DeclineReason::ReplayCohort) => DeclineReason::ReplayCohort,
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
        cohort,
    } = d;
    v1::DeclineRequest {
        session: session.to_string(),
        round: *round,
        reason_code: reason_to_proto(*reason) as i32,
        message: tidy(message),
        replay_cohort: tidy_cohort(*reason, cohort),
    }
}

/// Wire → domain (the session is the handler's to check). Never fails: an
/// unknown reason is [`DeclineReason::Other`], the message is tidied, a
/// replay cohort kept only with its reason and only if sane.
pub fn decline_from_proto(r: &v1::DeclineRequest) -> Decline {
    let v1::DeclineRequest {
        session: _,
        round,
        reason_code,
        message,
        replay_cohort,
    } = r;
    let reason = reason_from_proto(*reason_code);
    Decline {
        round: *round,
        reason,
        message: tidy(message),
        cohort: tidy_cohort(reason, replay_cohort),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_the_round_trip() {
        for reason in DeclineReason::ALL {
            let cohort = if reason == DeclineReason::ReplayCohort {
                vec!["site-a".to_string(), "site-b".into(), "site-c".into()]
            } else {
                Vec::new()
            };
            let d = Decline {
                round: 7,
                reason,
                message: format!("refused for {reason}"),
                cohort,
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
        assert_eq!(
            code(v1::DeclineReason::ReplayCohort),
            DeclineReason::ReplayCohort
        );
    }

    #[test]
    fn replay_cohorts_are_sorted_distinct_and_refused_when_insane() {
        let wire = |names: Vec<String>| v1::DeclineRequest {
            session: "s".into(),
            round: 4,
            reason_code: v1::DeclineReason::ReplayCohort as i32,
            message: "cohort".into(),
            replay_cohort: names,
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = decline_from_proto(&wire(names(&["c", "a", "b", "a"])));
        assert_eq!(d.reason, DeclineReason::ReplayCohort);
        assert_eq!(d.cohort, names(&["a", "b", "c"]));
        // A forged log line, an empty name, an oversized name or list: no hint.
        for bad in [
            names(&["a", "b\nforged"]),
            names(&["a", ""]),
            vec!["x".repeat(MAX_SITE_NAME + 1)],
            (0..=MAX_REPLAY_COHORT).map(|i| format!("s{i}")).collect(),
        ] {
            let d = decline_from_proto(&wire(bad));
            assert_eq!(d.reason, DeclineReason::ReplayCohort);
            assert!(d.cohort.is_empty(), "{:?}", d.cohort);
        }
        // The site's side sorts too, and sends a cohort only with its reason.
        let mut d = Decline {
            round: 4,
            reason: DeclineReason::ReplayCohort,
            message: String::new(),
            cohort: names(&["b", "a"]),
        };
        assert_eq!(decline_to_proto(&d, "s").replay_cohort, names(&["a", "b"]));
        d.reason = DeclineReason::ReplayRefused;
        assert!(decline_to_proto(&d, "s").replay_cohort.is_empty());
    }

    #[test]
    fn unknown_codes_count_as_other_and_messages_are_tidied() {
        let wire = v1::DeclineRequest {
            session: "s".into(),
            round: 3,
            reason_code: 99,
            message: format!("line one\nforged line{}", "x".repeat(2000)),
            replay_cohort: vec!["a".into(), "b".into()],
        };
        let d = decline_from_proto(&wire);
        assert_eq!(d.reason, DeclineReason::Other);
        assert_eq!(d.round, 3);
        // A cohort without its reason is dropped.
        assert!(d.cohort.is_empty(), "{:?}", d.cohort);
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
            cohort: Vec::new(),
        };
        assert_eq!(
            decline_to_proto(&long, "s").message.chars().count(),
            MAX_DECLINE_MESSAGE
        );
    }
}
