//! Survivor-set signatures checked where they arrive
//! ([`CoordinatorMachine::check_signatures`]).

use std::sync::Arc;
use std::time::Instant;

use super::{CoordinatorMachine, Phase};
use crate::error::ProtocolError;
use crate::ids::MemberId;
use crate::protocol::{CoordinatorOutput, IdentityVerifier};
use crate::ring::RingElement;

impl<R: RingElement> CoordinatorMachine<R> {
    /// Check each survivor-set signature as it arrives, under the key
    /// `keys` gives for the identity the member advertised with, instead of
    /// relaying it unchecked. An invalid one is refused and its sender
    /// treated as gone ([`Self::handle_member_gone`]), so the stage does not
    /// wait for it and the unmask request relays only valid signatures: more
    /// than `max_colluders` faulty signers can then no longer leave the
    /// relayed ones short of a quorum. Sites check the relayed signatures
    /// themselves all the same; this protects liveness, not privacy.
    pub fn check_signatures(&mut self, keys: Arc<dyn IdentityVerifier>) {
        self.signature_keys = Some(keys);
    }

    /// Refuses `signature` by `from` if signatures are checked here and it
    /// is not valid on the survivor set; its sender is then blamed and no
    /// longer awaited (an honest site signs once, correctly).
    pub(super) fn check_signature(
        &mut self,
        from: MemberId,
        signature: &[u8],
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let (Some(keys), Phase::Consistency { signed, .. }) = (&self.signature_keys, &self.phase)
        else {
            return Ok(());
        };
        let identity = self.identities.get(&from).map_or(&[][..], Vec::as_slice);
        let valid = keys.verifying_key(from, identity).and_then(|vk| {
            if vk.suite() != self.cfg.suite {
                return Err(format!("its key is not a {} key", self.cfg.suite));
            }
            vk.verify(signed, signature)
                .map_err(|_| "it does not verify under the key it advertised with".into())
        });
        let Err(why) = valid else {
            return Ok(());
        };
        // The key is the one the site joined with: the fault is the site's.
        self.out.push_back(CoordinatorOutput::Blamed {
            member: from,
            reason: format!("its survivor-set signature was refused: {why}"),
        });
        self.gone.insert(from);
        self.close_while_only_gone_wait(now);
        Err(ProtocolError::Malformed {
            member: from,
            reason: format!("survivor-set signature refused: {why}"),
        })
    }
}
