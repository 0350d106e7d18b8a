//! A site declining the round it was announced (`Decline`): its own policy
//! refused the round, at the announcement or at a later stage. Without this
//! the round would wait for it until the stage deadline; with it the member
//! is gone at once, exactly as a site whose task stream closed and did not
//! come back (`liveness.rs`), and the round goes on with the others or, if
//! too few remain, fails now. A declining site is absent, not faulty: it is
//! recorded in `declined`, never in `blamed`, so it is never excluded.
//!
//! A `REPLAY_COHORT` decline of a training round also names the survivor
//! set `S` the site signed on the round's model: kept in
//! [`ReplayClaims`](super::scheduler::ReplayClaims), it makes the next
//! training round on that model a re-run with exactly `S`
//! ([`Federation::replay_cohort`], used by the driver), which the driver
//! waits for — without counting a failure — while a site of `S` is missing.
//!
//! ```text
//! Decline(session, round, reason) ─▶ session, current round, cohort ─▶ declined += (site, reason)
//!                                                                  ├─▶ machine.handle_member_gone(m)
//!                                    REPLAY_COHORT(S), train round ─┴─▶ replay claims[model] += (site, S)
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use confide_crypto::MemberId;
use confide_proto::convert::{Decline, DeclineReason};
use confide_proto::v1 as pb;
use tracing::{info, warn};

use super::round::ActiveRound;
use super::scheduler::{self, RoundKind};
use super::{Federation, clock};
use crate::error::RequestError;

/// A site's claim of the cohort a re-run on a model must have.
struct Claim {
    site: String,
    model: Vec<u8>,
    cohort: BTreeSet<String>,
}

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

    /// The replay cohort `member`'s decline names, for the model this
    /// round announced to it (a training round only).
    fn claim(&self, member: MemberId, d: &Decline) -> Option<Claim> {
        if d.reason != DeclineReason::ReplayCohort || self.kind != RoundKind::Train {
            return None;
        }
        let model = self
            .sent
            .get(&member)?
            .iter()
            .find_map(|t| match t.task.whole_kind() {
                Some(pb::task::Kind::RoundStart(rs)) => Some(rs.model_sha256.clone()),
                _ => None,
            })?;
        Some(Claim {
            site: self.names.get(&member)?.clone(),
            model,
            cohort: d.cohort.iter().cloned().collect(),
        })
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
        let (new, claim) = self.with_round(session, peer, d.round, now, |r, info, _| {
            Ok((r.decline(info.member, d, now), r.claim(info.member, d)))
        })?;
        if new {
            self.metrics.declined(d.reason);
        }
        if let Some(c) = claim {
            self.record_claim(d.round, c);
        }
        // A stage that closed moved the deadline the driver sleeps towards.
        self.wake.notify_one();
        Ok(())
    }

    fn record_claim(&self, round: u64, c: Claim) {
        let max_sites = self.settings.max_sites;
        let names = c.cohort.iter().cloned().collect::<Vec<_>>().join(",");
        match self
            .lock()
            .replay
            .claim(&c.model, &c.site, c.cohort, max_sites)
        {
            Ok(true) => {
                info!(round, site = %c.site, model = %hex::encode(&c.model), survivors = %names, "site signed a survivor set on this model: a re-run of it will use exactly these sites")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(round, site = %c.site, survivors = %names, error = %e, "replay cohort named in a decline ignored")
            }
        }
    }

    /// The cohort (site names) a `kind` round on the current model must
    /// have, if sites reported one; hashes the model only while claims
    /// are held. Logs when sites reported different sets.
    pub(super) fn replay_cohort(&self, kind: RoundKind) -> Option<BTreeSet<String>> {
        if kind != RoundKind::Train {
            return None;
        }
        let mut g = self.lock();
        if g.replay.is_empty() {
            return None;
        }
        let (round, sha) = (g.model_round, g.model.sha256());
        let (cohort, sets) = g.replay.required(round, || sha.to_vec())?;
        if sets > 1 {
            warn!(
                sets,
                chosen = cohort.len(),
                "sites reported different survivor sets on this model; re-running with the one most of them named (each site checks the cohort against its own)"
            );
        }
        Some(cohort)
    }

    /// Waits (for a site to connect, or a second) while a site of
    /// `required` is missing; logs who is awaited when that changes. The
    /// connected sites of `required` once all are there. A wait is no
    /// failed round: nothing was announced.
    pub(super) async fn await_replay_cohort(
        &self,
        required: &BTreeSet<String>,
        logged: &mut Option<Vec<String>>,
    ) -> Option<Vec<(MemberId, String)>> {
        let after = self.settings.secagg.exclude_after_blamed_rounds;
        let connected = self.lock().eligible(after);
        match scheduler::replay_members(required, &connected) {
            Ok(members) => {
                *logged = None;
                Some(members)
            }
            Err(missing) => {
                if logged.as_ref() != Some(&missing) {
                    info!(
                        awaiting = %missing.join(","),
                        cohort = required.len(),
                        "re-run on this model waits for every site of the survivor set they signed (they replay their input only to exactly that set)"
                    );
                    *logged = Some(missing);
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                None
            }
        }
    }
}
