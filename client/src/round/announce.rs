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

/// Classifies `rs` against the round in progress (`current`, and whether
/// its first message is out) and the announcement of the round this site
/// left. A replay is the *same announcement*, not the same round id: a
/// coordinator that took over re-runs a lost round under the same id with a
/// fresh attempt nonce (and graph seed), which is a new round.
pub(super) fn announcement(
    current: Option<(&v1::RoundStart, bool)>,
    left: Option<&v1::RoundStart>,
    rs: &v1::RoundStart,
) -> Announcement {
    match current {
        Some((start, kicked_off)) if same(start, rs) => {
            if kicked_off {
                Announcement::Ignore
            } else {
                Announcement::Restart
            }
        }
        _ if left.is_some_and(|l| same(l, rs)) => Announcement::Ignore,
        _ => Announcement::Start,
    }
}

/// Equal announcements, ignoring the CRL riding along (transport metadata
/// that may be renewed between two deliveries of one announcement).
fn same(a: &v1::RoundStart, b: &v1::RoundStart) -> bool {
    a.round == b.round
        && v1::RoundStart {
            crl: Vec::new(),
            ..a.clone()
        } == v1::RoundStart {
            crl: Vec::new(),
            ..b.clone()
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
