//! A site's stages 4 and 5: signing the one survivor set, then revealing
//! shares (and the keys of one-sided pairs) once a quorum signed it.

use std::collections::BTreeSet;

use super::{AwaitUnmask, Phase, SiteMachine, SiteOutput};
use crate::error::ProtocolError;
use crate::ids::{MemberId, Stage};
use crate::protocol::consistency::{CheckedSurvivors, SurvivorRules, check_quorum};
use crate::protocol::{ConsistencyRequest, SurvivorSignature, UnmaskRequest, UnmaskResponse};
use crate::ring::RingElement;

impl<R: RingElement> SiteMachine<R> {
    /// Stage 4 input: the survivor set and every survivor's masking set.
    /// Checks them against this site's view and rules (see
    /// `docs/security.md`) and signs the set — the only set this site will
    /// sign this round.
    pub fn handle_consistency_request(
        &mut self,
        msg: ConsistencyRequest,
    ) -> Result<(), ProtocolError> {
        self.check(msg.round, Stage::Consistency)?;
        let Phase::AwaitConsistency(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        let rules = SurvivorRules {
            cfg: &self.cfg,
            topo: &self.topo,
            session: &self.session,
            min_survivors: self.min_survivors,
            connectivity: self.check_connectivity,
        };
        rules.check_set(&msg.survivors)?;
        let survivors: BTreeSet<MemberId> = msg.survivors.iter().copied().collect();
        if !survivors.contains(&self.me) {
            return Err(ProtocolError::Inconsistent(
                "the survivor set does not list this site".into(),
            ));
        }
        let sets = rules.masking_sets(&survivors, &msg.masking, Some(&st.verified))?;
        let mine: BTreeSet<MemberId> = st.masked_with.iter().copied().collect();
        if sets.get(&self.me) != Some(&mine) {
            return Err(ProtocolError::Inconsistent(
                "the masking set relayed for this site is not the one it signed".into(),
            ));
        }
        let checked = rules.check_masking(&survivors, &sets)?;
        let signature = self.signing.sign(&SurvivorSignature::signed_bytes(
            &self.session,
            &msg.survivors,
        ))?;
        self.out
            .push_back(SiteOutput::Consistency(SurvivorSignature {
                round: self.cfg.round,
                member: self.me,
                signature,
            }));
        self.phase = Phase::AwaitUnmask(AwaitUnmask {
            held: st.held,
            signed: msg.survivors,
            checked,
            pair_keys: st.pair_keys,
        });
        Ok(())
    }

    /// Stage 5 input: once a quorum has signed the same survivor set this site
    /// signed, reveal the seed share of every surviving neighbour and the key
    /// share of every dropped one (never both for one member).
    pub fn handle_unmask_request(&mut self, msg: UnmaskRequest) -> Result<(), ProtocolError> {
        self.check(msg.round, Stage::Unmask)?;
        let Phase::AwaitUnmask(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        if msg.survivors != st.signed {
            return Err(ProtocolError::Inconsistent(
                "the unmask request names a survivor set this site did not sign".into(),
            ));
        }
        check_quorum(
            &self.cfg,
            &self.session,
            &st.signed,
            &msg.signatures,
            self.verifier.as_ref(),
        )?;
        let CheckedSurvivors {
            survivors,
            dropped,
            one_sided,
        } = &st.checked;
        if let Some(&both) = survivors.intersection(dropped).next() {
            return Err(ProtocolError::BothSharesRequested(both));
        }
        let alive = st.held.keys().filter(|v| survivors.contains(v)).count();
        let t = self.cfg.params.t;
        if alive < t {
            // Answering would help unmask a sum of too few inputs.
            return Err(ProtocolError::BelowThreshold {
                member: self.me,
                have: alive,
                need: t,
            });
        }
        let mut seed_shares = Vec::new();
        let mut key_shares = Vec::new();
        for (&v, h) in &st.held {
            if survivors.contains(&v) {
                seed_shares.push((v, h.seed.clone()));
            } else if dropped.contains(&v) {
                key_shares.push((v, h.key.clone()));
            }
        }
        // Only for pairs the signed masking sets show one-sided: the peer's
        // input lacks this mask, so the key uncovers nothing of the peer, and
        // the pair is then as if neither had masked with the other, which the
        // masking check already had to accept (docs/security.md).
        let mut pair_keys = Vec::new();
        for &(_, v) in one_sided.iter().filter(|(u, _)| *u == self.me) {
            let key = st
                .pair_keys
                .get(&v)
                .ok_or_else(|| {
                    ProtocolError::Inconsistent(format!(
                        "asked for the pair key of {v}, which this site did not mask with"
                    ))
                })?
                .clone();
            pair_keys.push((v, key));
        }
        self.answered = true;
        self.out.push_back(SiteOutput::Unmask(UnmaskResponse {
            round: self.cfg.round,
            from: self.me,
            seed_shares,
            key_shares,
            pair_keys,
        }));
        Ok(())
    }
}
