//! How incoming tasks are classified before they touch the round: replayed
//! announcements, and routing mistakes (stale tasks) versus content errors.

use confide_crypto::ProtocolError;
use confide_proto::v1;
use tracing::debug;

use crate::error::ClientError;

/// What to do with a `RoundStart`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Announcement {
    /// A replay of the round in progress (its first message is out), or of a
    /// round this site left in this session (the coordinator holds its first
    /// keys; new ones would not match).
    Ignore,
    /// A replay of a round whose set-up was interrupted (e.g. the download).
    Restart,
    /// A new round.
    Start,
}

pub(super) fn announcement(
    current: Option<(&v1::RoundStart, bool)>,
    left_round: Option<u64>,
    rs: &v1::RoundStart,
) -> Announcement {
    match current {
        Some((start, kicked_off)) if start == rs => {
            if kicked_off {
                Announcement::Ignore
            } else {
                Announcement::Restart
            }
        }
        _ if left_round == Some(rs.round) => Announcement::Ignore,
        _ => Announcement::Start,
    }
}

pub(super) fn kind_name(k: v1::RoundKind) -> &'static str {
    match k {
        v1::RoundKind::Train => "train",
        v1::RoundKind::Statistics => "statistics",
        v1::RoundKind::Evaluate => "evaluate",
        v1::RoundKind::Unspecified => "unspecified",
    }
}

/// Whether a machine input was taken: routing mistakes (another round or
/// stage, e.g. a task replayed after a reconnect) leave the machine as it was
/// and are ignored; content errors end the site's part in the round.
pub(super) fn routed(r: Result<(), ProtocolError>) -> Result<bool, ClientError> {
    match r {
        Ok(()) => Ok(true),
        Err(e @ (ProtocolError::WrongRound { .. } | ProtocolError::WrongStage { .. })) => {
            debug!(error = %e, "stale task ignored");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
