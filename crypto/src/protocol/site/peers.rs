//! A site's checks on what its peers sent through the coordinator: adverts
//! and sealed shares. A peer that fails is left out, not fatal.

use std::collections::{BTreeMap, BTreeSet};

use super::{Accepted, AwaitShares, HeldShares, SiteMachine};
use crate::ids::MemberId;
use crate::kdf::{Purpose, derive_key};
use crate::protocol::{EncryptedShare, KeyAdvert, SHARE_PLAINTEXT_LEN, share_aad, share_x};
use crate::ring::RingElement;
use crate::shamir::{self, Share};
use crate::suite::VerifyingKey;

impl<R: RingElement> SiteMachine<R> {
    /// The advertiser's verifying key, or why `a` is not acceptable.
    pub(super) fn check_advert(
        &self,
        a: &KeyAdvert,
        identity: &[u8],
        accepted: &BTreeMap<MemberId, Accepted>,
        seen_keys: &BTreeSet<Vec<u8>>,
    ) -> Result<VerifyingKey, String> {
        let suite = self.cfg.suite;
        if a.round != self.cfg.round {
            return Err(format!("advert is for round {}", a.round));
        }
        if !self.topo.are_neighbours(self.me, a.member) {
            return Err("not a neighbour of this site".into());
        }
        if accepted.contains_key(&a.member) {
            return Err("advertised twice".into());
        }
        let vk = self.verifier.verifying_key(a.member, identity)?;
        if vk.suite() != suite {
            return Err(format!("identity key is for suite {}", vk.suite()));
        }
        let signed =
            KeyAdvert::signed_bytes(&self.session, a.member, &a.enc_public, &a.mask_public);
        vk.verify(&signed, &a.signature).map_err(|_| {
            "signature does not verify for this site's view of the round".to_string()
        })?;
        // Reused public keys would let one member's secrets stand in for another's.
        if seen_keys.contains(&a.enc_public)
            || seen_keys.contains(&a.mask_public)
            || a.enc_public == a.mask_public
        {
            return Err("public key reused".into());
        }
        Ok(vk)
    }

    /// Decrypt and check one sealed share pair.
    pub(super) fn open_share(
        &self,
        st: &AwaitShares,
        e: &EncryptedShare,
    ) -> Result<HeldShares, String> {
        let suite = self.cfg.suite;
        let p = suite.provider();
        if e.to != self.me {
            return Err("share addressed to another member".into());
        }
        let Some(peer) = st.accepted.get(&e.from) else {
            return Err("share from a member whose advert this site did not accept".into());
        };
        let key = derive_key(
            suite,
            Purpose::ShareEncryption,
            &peer.enc_shared[..],
            self.cfg.round,
            e.from,
            self.me,
        )
        .map_err(|e| e.to_string())?;
        let pt = p
            .open(
                &key,
                &[0u8; 12],
                &share_aad(suite, self.cfg.round, e.from, self.me),
                &e.ciphertext,
            )
            .map_err(|_| "sealed share does not decrypt".to_string())?;
        if pt.len() != SHARE_PLAINTEXT_LEN
            || pt[0..4] != e.from.to_be_bytes()
            || pt[4..8] != self.me.to_be_bytes()
        {
            return Err("sealed share names the wrong members".into());
        }
        let half = 8 + shamir::SHARE_LEN;
        let seed = Share::from_bytes(&pt[8..half]).map_err(|e| e.to_string())?;
        let key = Share::from_bytes(&pt[half..]).map_err(|e| e.to_string())?;
        if seed.x() != share_x(self.me) || key.x() != share_x(self.me) {
            return Err("share has the wrong x-coordinate".into());
        }
        Ok(HeldShares { seed, key })
    }
}
