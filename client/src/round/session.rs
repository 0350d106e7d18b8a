//! The site's session with the coordinator: Join (and the suite check
//! that may renew an ephemeral key), and what survives a reconnect.

use std::time::Instant;

use confide_crypto::Suite;
use confide_crypto::suite::SigningKey;
use confide_proto::v1;
use tracing::{error, info, warn};

use super::contribution::Contributions;
use super::{Joined, KeySource, Resume, RoundDriver};
use crate::error::ClientError;

impl RoundDriver {
    /// Keeps this site's contributions in state directory `state` (loading
    /// what an earlier run recorded there), or in memory without one.
    pub(crate) fn with_state_dir(
        mut self,
        state: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        self.contributions = Contributions::open(state)?;
        Ok(self)
    }

    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The coordinator no longer knows the session (restart): Join again.
    pub(crate) fn session_lost(&mut self) {
        self.session = None;
    }

    pub(crate) fn join_request(&self) -> Result<v1::JoinRequest, ClientError> {
        let vk = self
            .cfg
            .signing
            .verifying_key()
            .map_err(|e| ClientError::Config(format!("signing key: {e}")))?;
        Ok(v1::JoinRequest {
            site: self.cfg.site.clone(),
            verifying_key: vk.as_bytes().to_vec(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    pub(crate) fn joined(&mut self, resp: v1::JoinResponse) -> Result<Joined, ClientError> {
        let suite: Suite = resp.suite.parse().map_err(|_| {
            ClientError::Config(format!(
                "coordinator announced unknown suite '{}'",
                resp.suite
            ))
        })?;
        if suite != self.cfg.signing.suite() {
            if self.cfg.key_source == KeySource::Ephemeral {
                // The suite is only known after the first Join: re-register with a key of the right suite.
                self.cfg.signing = SigningKey::generate(suite, &mut self.rng);
                return Ok(Joined::Retry);
            }
            return Err(ClientError::Config(format!(
                "the federation uses suite {suite} but the signing key is for {}",
                self.cfg.signing.suite()
            )));
        }
        info!(site = %self.cfg.site, federation = %resp.federation, %suite, "joined the federation");
        self.left = None;
        if let Some(r) = self.round.take() {
            // A new session means the coordinator lost the old one (restart): its round state is gone too.
            warn!(
                round = r.start.round,
                "rejoined; the round in progress is abandoned"
            );
        }
        self.session = Some(resp.session);
        self.federation = resp.federation;
        Ok(Joined::Session)
    }

    /// After a reconnect: whether the unacknowledged stage message is worth
    /// resending (its stage deadline has not passed).
    pub(crate) fn resume(&mut self, now: Instant) -> Resume {
        let Some(r) = self.round.as_ref() else {
            return Resume::Nothing;
        };
        if r.outbox.is_none() {
            return Resume::Nothing;
        }
        if now > r.deadline() {
            warn!(
                round = r.start.round,
                "stage deadline passed while disconnected; leaving this round"
            );
            self.leave_round();
            return Resume::Nothing;
        }
        info!(
            round = r.start.round,
            "resending the unacknowledged stage message"
        );
        Resume::Resend
    }

    /// A resent message failed with `e`. Only a lost link is worth another
    /// reconnect (`Err`); a coordinator that answers but refuses the resent
    /// message has moved on.
    pub(crate) fn resend_failed(&mut self, e: ClientError) -> Result<(), ClientError> {
        if e.is_link_lost() {
            return Err(e);
        }
        if e.is_stage_closed()
            && let Some(r) = self.round.as_mut()
        {
            // The stage closed while the link was down; the first attempt
            // may well have arrived before the ack was lost. Keep the round:
            // the replayed tasks show whether it went on with this site.
            info!(round = r.start.round, error = %e, "stage closed meanwhile; waiting for the replayed tasks");
            r.outbox = None;
            return Ok(());
        }
        error!(error = %e, "resent message refused; leaving this round");
        self.leave_round();
        Ok(())
    }
}
