//! Collusion modelling for simulations: what a site could hand the
//! coordinator. Compiled only for tests and the `test-util` feature.

use zeroize::Zeroizing;

use super::{Phase, SiteMachine};
use crate::ids::MemberId;
use crate::ring::RingElement;
use crate::shamir::Share;

/// What a site colluding with the coordinator could hand over once it holds
/// its neighbours' shares: its mask secret, its self-mask seed and every share
/// it holds. For modelling collusion in simulations only.
pub struct LeakedSecrets {
    /// The site's mask-agreement secret.
    pub mask_secret: Zeroizing<[u8; 32]>,
    /// The site's self-mask seed.
    pub seed: Zeroizing<[u8; 32]>,
    /// (owner, self-mask-seed share, mask-key share) for each peer held.
    pub held: Vec<(MemberId, Share, Share)>,
}

impl<R: RingElement> SiteMachine<R> {
    /// This site's secrets, while it waits for its input (see
    /// [`LeakedSecrets`]); `None` in any other stage.
    pub fn leak(&self) -> Option<LeakedSecrets> {
        let Phase::AwaitInput(st) = &self.phase else {
            return None;
        };
        Some(LeakedSecrets {
            mask_secret: st.mask_secret.clone(),
            seed: st.seed.clone(),
            held: st
                .held
                .iter()
                .map(|(&m, h)| (m, h.seed.clone(), h.key.clone()))
                .collect(),
        })
    }

    /// Sign survivor sets without the connectivity rule, to show in tests
    /// what that rule prevents. Never in production builds.
    pub fn without_connectivity_check(&mut self) {
        self.check_connectivity = false;
    }
}
