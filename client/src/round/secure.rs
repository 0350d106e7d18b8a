//! The tasks of a secure round after set-up: neighbour keys, incoming
//! shares, the consistency request and the unmask request, each fed to the
//! round's machine ([`AnySite`]) with the site's identity check, and the
//! machine's answer queued. Peers the machine leaves out are logged once.

use std::time::Instant;

use confide_crypto::ProtocolError;
use confide_crypto::protocol::AnySite;
use confide_proto::v1;
use rand::rngs::StdRng;
use tracing::{debug, info, warn};

use super::announce::routed;
use super::outgoing::Outgoing;
use super::replay;
use super::{Action, Phase, Round, RoundDriver};
use crate::convert;
use crate::error::ClientError;
use crate::identity;

impl RoundDriver {
    /// Feeds the round's machine with `f`, then queues what it produced.
    pub(super) fn step(
        &mut self,
        round: u64,
        what: &str,
        now: Instant,
        f: impl FnOnce(&mut AnySite, &mut StdRng) -> Result<(), ProtocolError>,
    ) -> Result<Action, ClientError> {
        let session = self.session_str();
        let rng = &mut self.rng;
        let Some(r) = self.round.as_mut().filter(|r| r.start.round == round) else {
            debug!(
                round,
                what, "ignoring a task for a round this site is not in"
            );
            return Ok(Action::Wait);
        };
        let Phase::Secure(m) = &mut r.phase else {
            return Ok(Action::Wait);
        };
        let taken = routed(f(m, rng));
        log_rejected(r);
        if !taken? {
            return Ok(Action::Wait);
        }
        let Phase::Secure(m) = &mut r.phase else {
            return Ok(Action::Wait);
        };
        match m.poll_output() {
            Some(o) => {
                r.stage_started = now;
                let out = Outgoing::from_site(o, &session, &r.start);
                Ok(self.queue(out))
            }
            None => Ok(Action::Wait),
        }
    }

    pub(super) fn on_neighbour_keys(
        &mut self,
        nk: v1::NeighbourKeys,
        now: Instant,
    ) -> Result<Action, ClientError> {
        if self.current(nk.round, "neighbour keys").is_none() {
            return Ok(Action::Wait);
        }
        let msg = identity::neighbour_keys(&nk, self.cfg.authenticated)
            .map_err(|e| ClientError::InvalidRound(e.to_string()))?;
        let action = self.step(nk.round, "neighbour keys", now, |m, rng| {
            m.handle_neighbour_keys(msg, rng)
        })?;
        if let Some(r) = self.round.as_mut().filter(|r| r.start.round == nk.round) {
            replay::record_names(r, &nk);
        }
        Ok(action)
    }

    pub(super) fn on_incoming_shares(
        &mut self,
        is: v1::IncomingShares,
        now: Instant,
    ) -> Result<Action, ClientError> {
        let Some(r) = self.current(is.round, "incoming shares") else {
            return Ok(Action::Wait);
        };
        let Phase::Secure(m) = &mut r.phase else {
            return Ok(Action::Wait);
        };
        let taken = routed(m.handle_incoming_shares(convert::incoming_shares_from_proto(&is)));
        log_rejected(r);
        if !taken? {
            return Ok(Action::Wait);
        }
        r.stage_started = now;
        self.compute()
    }

    pub(super) fn on_consistency_request(
        &mut self,
        c: v1::ConsistencyRequest,
        now: Instant,
    ) -> Result<Action, ClientError> {
        let Some(r) = self.current(c.round, "consistency request") else {
            return Ok(Action::Wait);
        };
        let cohort = r.start.cohort.len();
        info!(
            round = c.round,
            survivors = c.survivors.len(),
            cohort,
            "survivor set announced; checking it before signing"
        );
        r.survivors = Some((c.survivors.len(), cohort.saturating_sub(c.survivors.len())));
        // Masking sets carry no identity: the machine checks those it must
        // with the keys verified at the advert stage.
        let msg = convert::consistency_request_from_proto(&c);
        // A replay signs only the set it signed before (contribution.rs).
        let names = self.survivor_names(&c)?;
        let action = self.step(c.round, "consistency request", now, |m, _| {
            m.handle_consistency_request(msg)
        })?;
        if matches!(action, Action::Send)
            && let Some(r) = self.round.as_ref()
        {
            // Signed a survivor set that includes this site: from here on a
            // quorum may unmask a sum containing its update.
            self.contributions
                .record_signed(&self.federation, &r.start, names)?;
        }
        Ok(action)
    }

    pub(super) fn on_unmask_request(
        &mut self,
        ur: v1::UnmaskRequest,
        now: Instant,
    ) -> Result<Action, ClientError> {
        if self.current(ur.round, "unmask request").is_none() {
            return Ok(Action::Wait);
        }
        info!(
            round = ur.round,
            survivors = ur.survivors.len(),
            signatures = ur.signatures.len(),
            "unmask requested"
        );
        let msg = identity::unmask_request(&ur, self.cfg.authenticated)
            .map_err(|e| ClientError::InvalidRound(e.to_string()))?;
        self.step(ur.round, "unmask request", now, |m, _| {
            m.handle_unmask_request(msg)
        })
    }
}

/// Logs the peers the machine left out since the last call, once each.
fn log_rejected(r: &mut Round) {
    let Phase::Secure(m) = &r.phase else {
        return;
    };
    let rejected = m.rejected();
    for (peer, why) in rejected.iter().skip(r.rejected_logged) {
        warn!(round = r.start.round, peer, reason = %why, "peer left out of this round");
    }
    r.rejected_logged = rejected.len();
}
