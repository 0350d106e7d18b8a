//! A site declining the round it was announced (`Decline`): its own policy
//! refused the round, at the announcement or at a later stage. Without this
//! the round would wait for it until the stage deadline; with it the member
//! is gone at once, exactly as a site whose task stream closed and did not
//! come back (`liveness.rs`), and the round goes on with the others or, if
//! too few remain, fails now. A declining site is absent, not faulty: it is
//! recorded in `declined`, never in `blamed`, so it is never excluded.
//!
//! ```text
//! Decline(session, round, reason) ─▶ session, current round, cohort ─▶ declined += (site, reason)
//!                                                                  └─▶ machine.handle_member_gone(m)
//! ```

use std::time::Instant;

use confide_crypto::MemberId;
use confide_proto::convert::Decline;
use tracing::info;

use super::round::ActiveRound;
use super::{Federation, clock};
use crate::error::RequestError;

impl ActiveRound {
    /// `member` declined at `now`: recorded once (a repeated decline, e.g.
    /// a retry whose first answer was lost, changes nothing), then gone for
    /// the rest of the round, so a stage waiting only for gone members
    /// closes at once. Returns whether the decline was new.
    pub fn decline(&mut self, member: MemberId, d: &Decline, now: Instant) -> bool {
        let site = self
            .names
            .get(&member)
            .cloned()
            .unwrap_or_else(|| format!("member {member}"));
        if self.declined.iter().any(|(s, _)| *s == site) {
            return false;
        }
        info!(round = self.id, %site, reason = %d.reason, message = %d.message, stage = %self.machine.stage(), "site declined the round; the round goes on without it");
        self.declined
            .push((site, format!("{}: {}", d.reason, d.message)));
        // No reconnect grace either: the site said it is not coming back.
        self.lost.remove(&member);
        self.machine.handle_member_gone(member, now);
        true
    }
}

impl Federation {
    /// `Decline`: the session's site leaves round `d.round`. Refused for an
    /// unknown session, a round that is not the current one, or a site
    /// outside its cohort (the statuses of any stage message).
    pub fn decline(
        &self,
        session: &str,
        peer: Option<&str>,
        d: &Decline,
    ) -> Result<(), RequestError> {
        let now = clock();
        let new = self.with_round(session, peer, d.round, now, |r, info, _| {
            Ok(r.decline(info.member, d, now))
        })?;
        if new {
            self.metrics.declined(d.reason);
        }
        // A stage that closed moved the deadline the driver sleeps towards.
        self.wake.notify_one();
        Ok(())
    }
}
