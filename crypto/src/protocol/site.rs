//! The site's side of a round.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::consistency::CheckedSurvivors;
use super::{
    EncryptedShare, IdentityVerifier, IncomingShares, KeyAdvert, MaskingSet, MemberId,
    NeighbourKeys, PairwiseKey, RoundConfig, SHARE_PLAINTEXT_LEN, ShareBundle, SitePolicy, Stage,
    SurvivorSignature, Topology, UnmaskResponse, pairwise_key_of, seed_commitment, self_mask_prg,
    share_aad, share_x,
};
use crate::error::ProtocolError;
use crate::kdf::{Purpose, derive_key};
use crate::prg::{Sign, apply_masks};
use crate::ring::RingElement;
use crate::shamir::{self, Share};
use crate::suite::{SigningKey, VerifyingKey, random_secret};

#[cfg(any(test, feature = "test-util"))]
mod leak;
mod peers;
mod reveal;
#[cfg(any(test, feature = "test-util"))]
pub use leak::LeakedSecrets;

/// What a site sends to the coordinator.
#[derive(Debug)]
pub enum SiteOutput<R> {
    /// Stage 1: the signed per-round keys.
    Advertise(KeyAdvert),
    /// Stage 2: sealed shares for the neighbours.
    Shares(ShareBundle),
    /// Stage 3: the masked input vector and the signed set of peers it was
    /// masked with.
    MaskedInput {
        /// The masked vector.
        vector: Vec<R>,
        /// The peers masked with, signed.
        masking: MaskingSet,
    },
    /// Stage 4: this site's signature on the announced survivor set.
    Consistency(SurvivorSignature),
    /// Stage 5: the shares needed to unmask the sum.
    Unmask(UnmaskResponse),
}

/// One site's state machine for one round.
///
/// Routing mistakes (a message for another round or stage) are rejected and
/// leave the machine as it was. A faulty *peer* (an advert that does not
/// verify for this site's view of the round, a share that does not decrypt)
/// is left out and named in [`SiteMachine::rejected`]; the site goes on while
/// at least `t` good peers remain. A wrong *coordinator* message (a survivor
/// set that breaks the rules, too few signatures) aborts the site's part in
/// the round: every later input gets [`ProtocolError::Ended`].
pub struct SiteMachine<R: RingElement> {
    cfg: RoundConfig,
    topo: Topology,
    /// [`RoundConfig::session_id`], computed once.
    session: [u8; 32],
    /// The larger of the round's and this site's minimum survivors.
    min_survivors: usize,
    /// Peers left out, and why.
    rejected: Vec<(MemberId, String)>,
    me: MemberId,
    signing: SigningKey,
    verifier: Arc<dyn IdentityVerifier>,
    /// The survivor-graph connectivity rule; off only via a test-only knob.
    check_connectivity: bool,
    /// The unmask response went out: the site's part ended as it should, so
    /// a task replayed after a reconnect is stale, not an error.
    answered: bool,
    phase: Phase,
    out: VecDeque<SiteOutput<R>>,
}

enum Phase {
    AwaitKeys(AwaitKeys),
    AwaitShares(AwaitShares),
    AwaitInput(AwaitInput),
    AwaitConsistency(AwaitConsistency),
    AwaitUnmask(AwaitUnmask),
    Done,
}

/// Keys advertised; waiting for the neighbours' adverts.
struct AwaitKeys {
    enc_secret: Zeroizing<[u8; 32]>,
    mask_secret: Zeroizing<[u8; 32]>,
}

/// A neighbour whose advert this site accepted. Checking the advert's two
/// public keys already is an agreement with each, so both are made once,
/// there, and kept: a round then costs two agreements per neighbour, not
/// five (check, seal, open, mask).
struct Accepted {
    /// The raw share-encryption agreement; each direction's key is derived
    /// from it.
    enc_shared: Zeroizing<[u8; 32]>,
    /// This round's pairwise-mask key with the neighbour.
    pair_key: PairwiseKey,
}

/// Shares dealt; waiting for the neighbours' shares.
struct AwaitShares {
    /// Kept only for [`SiteMachine::leak`]; the agreements are in `accepted`.
    #[cfg(any(test, feature = "test-util"))]
    mask_secret: Zeroizing<[u8; 32]>,
    seed: Zeroizing<[u8; 32]>,
    /// Neighbours whose adverts passed.
    accepted: BTreeMap<MemberId, Accepted>,
    /// Their verifying keys, checked with the adverts.
    verified: BTreeMap<MemberId, VerifyingKey>,
}

/// Shares held; waiting for the local input.
struct AwaitInput {
    /// As in [`AwaitShares`].
    #[cfg(any(test, feature = "test-util"))]
    mask_secret: Zeroizing<[u8; 32]>,
    seed: Zeroizing<[u8; 32]>,
    /// The pairwise keys of the neighbours whose shares arrived (the set
    /// masked with).
    pair_keys: BTreeMap<MemberId, PairwiseKey>,
    held: BTreeMap<MemberId, HeldShares>,
    /// As in [`AwaitShares`].
    verified: BTreeMap<MemberId, VerifyingKey>,
}

/// Input sent; waiting for the unmask request.
struct AwaitConsistency {
    /// The peers masked with, as signed.
    masked_with: Vec<MemberId>,
    held: BTreeMap<MemberId, HeldShares>,
    /// This round's key with each peer masked with.
    pair_keys: BTreeMap<MemberId, PairwiseKey>,
    /// As in [`AwaitShares`]: the keys the masking sets are checked with.
    verified: BTreeMap<MemberId, VerifyingKey>,
}

/// Survivor set signed; waiting for the quorum and the unmask request.
struct AwaitUnmask {
    held: BTreeMap<MemberId, HeldShares>,
    /// The one set this site signed, ascending.
    signed: Vec<MemberId>,
    checked: CheckedSurvivors,
    /// As in [`AwaitConsistency`].
    pair_keys: BTreeMap<MemberId, PairwiseKey>,
}

/// The shares of one neighbour's secrets that this site holds.
struct HeldShares {
    seed: Share,
    key: Share,
}

impl Phase {
    fn stage(&self) -> Stage {
        match self {
            Phase::AwaitKeys(_) => Stage::AdvertiseKeys,
            Phase::AwaitShares(_) => Stage::ShareKeys,
            Phase::AwaitInput(_) => Stage::MaskedInput,
            Phase::AwaitConsistency(_) => Stage::Consistency,
            Phase::AwaitUnmask(_) => Stage::Unmask,
            Phase::Done => Stage::Done,
        }
    }
}

impl<R: RingElement> SiteMachine<R> {
    /// Join round `cfg` as member `me`: validates the configuration against
    /// `policy`, makes the two fresh key pairs and queues the signed advert.
    pub fn new(
        cfg: RoundConfig,
        me: MemberId,
        signing: SigningKey,
        verifier: Arc<dyn IdentityVerifier>,
        policy: &SitePolicy,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ProtocolError> {
        let topo = cfg.topology()?;
        policy.check(&cfg)?;
        if !topo.contains(me) {
            return Err(ProtocolError::Config(format!(
                "member {me} is not in the cohort"
            )));
        }
        if signing.suite() != cfg.suite {
            return Err(ProtocolError::Config(format!(
                "signing key is for suite {}, round uses {}",
                signing.suite(),
                cfg.suite
            )));
        }
        if R::RING != cfg.ring {
            return Err(ProtocolError::Config(format!(
                "round uses ring {:?}, site built for {:?}",
                cfg.ring,
                R::RING
            )));
        }
        let p = cfg.suite.provider();
        let enc_secret = random_secret(rng, |s| p.check_agreement_secret(s));
        let mask_secret = random_secret(rng, |s| p.check_agreement_secret(s));
        let enc_public = p.agreement_public(&enc_secret)?;
        let mask_public = p.agreement_public(&mask_secret)?;
        let session = cfg.session_id();
        let signature = signing.sign(&KeyAdvert::signed_bytes(
            &session,
            me,
            &enc_public,
            &mask_public,
        ))?;
        let advert = KeyAdvert {
            round: cfg.round,
            member: me,
            enc_public,
            mask_public,
            signature,
        };
        let mut out = VecDeque::new();
        out.push_back(SiteOutput::Advertise(advert));
        Ok(SiteMachine {
            min_survivors: cfg.min_survivors.max(policy.min_survivors),
            cfg,
            topo,
            session,
            rejected: Vec::new(),
            me,
            signing,
            verifier,
            check_connectivity: true,
            answered: false,
            phase: Phase::AwaitKeys(AwaitKeys {
                enc_secret,
                mask_secret,
            }),
            out,
        })
    }

    /// The next message to send, if any.
    pub fn poll_output(&mut self) -> Option<SiteOutput<R>> {
        self.out.pop_front()
    }

    /// The stage this site is waiting in.
    pub fn stage(&self) -> Stage {
        self.phase.stage()
    }

    /// This site's id.
    pub fn member(&self) -> MemberId {
        self.me
    }

    /// The round configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.cfg
    }

    /// Peers this site left out of the round, and why (for the log and the
    /// coordinator's blame record).
    pub fn rejected(&self) -> &[(MemberId, String)] {
        &self.rejected
    }

    fn check(&self, round: u64, stage: Stage) -> Result<(), ProtocolError> {
        if round != self.cfg.round {
            return Err(ProtocolError::WrongRound {
                expected: self.cfg.round,
                got: round,
            });
        }
        match self.phase.stage() {
            Stage::Done if self.answered => Err(ProtocolError::WrongStage {
                expected: Stage::Done,
                got: stage,
            }),
            Stage::Done => Err(ProtocolError::Ended),
            s if s != stage => Err(ProtocolError::WrongStage {
                expected: s,
                got: stage,
            }),
            _ => Ok(()),
        }
    }

    /// Stage 2 input: the neighbours' signed adverts. Verifies every one (an
    /// advert that fails is left out), then deals and seals the shares.
    pub fn handle_neighbour_keys(
        &mut self,
        msg: NeighbourKeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(), ProtocolError> {
        self.check(msg.round, Stage::AdvertiseKeys)?;
        let Phase::AwaitKeys(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        let (next, bundle) = self.deal(st, msg, rng)?;
        self.phase = Phase::AwaitShares(next);
        self.out.push_back(SiteOutput::Shares(bundle));
        Ok(())
    }

    fn deal(
        &mut self,
        st: AwaitKeys,
        msg: NeighbourKeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(AwaitShares, ShareBundle), ProtocolError> {
        let suite = self.cfg.suite;
        let p = suite.provider();
        let mut accepted = BTreeMap::new();
        let mut verified = BTreeMap::new();
        let mut seen_keys = BTreeSet::new();
        for r in msg.adverts {
            let a = &r.advert;
            let checked = self
                .check_advert(a, &r.identity, &accepted, &seen_keys)
                .and_then(|vk| {
                    // Both public keys must be usable, or this peer cannot be masked with.
                    let unusable =
                        |e: crate::error::CryptoError| format!("unusable public key: {e}");
                    let enc_shared = p.agree(&st.enc_secret, &a.enc_public).map_err(unusable)?;
                    let mask_shared = p.agree(&st.mask_secret, &a.mask_public).map_err(unusable)?;
                    let pair_key =
                        pairwise_key_of(suite, self.cfg.round, &mask_shared, self.me, a.member)
                            .map_err(|e| e.to_string())?;
                    Ok((
                        vk,
                        Accepted {
                            enc_shared,
                            pair_key,
                        },
                    ))
                });
            match checked {
                Ok((vk, peer)) => {
                    verified.insert(a.member, vk);
                    seen_keys.insert(a.enc_public.clone());
                    seen_keys.insert(a.mask_public.clone());
                    accepted.insert(a.member, peer);
                }
                Err(why) => self.rejected.push((a.member, why)),
            }
        }
        let t = self.cfg.params.t;
        if accepted.len() < t {
            return Err(ProtocolError::BelowThreshold {
                member: self.me,
                have: accepted.len(),
                need: t,
            });
        }
        let seed = random_secret(rng, |_| Ok(()));
        let holders: Vec<MemberId> = accepted.keys().copied().collect();
        let xs: Vec<u32> = holders.iter().map(|&h| share_x(h)).collect();
        let seed_shares = shamir::split(&seed, t, &xs, rng)?;
        let key_shares = shamir::split(&st.mask_secret, t, &xs, rng)?;
        let mut shares = Vec::with_capacity(holders.len());
        for ((&to, s), k) in holders.iter().zip(&seed_shares).zip(&key_shares) {
            let key = derive_key(
                suite,
                Purpose::ShareEncryption,
                &accepted[&to].enc_shared[..],
                self.cfg.round,
                self.me,
                to,
            )?;
            let mut pt = Zeroizing::new(Vec::with_capacity(SHARE_PLAINTEXT_LEN));
            pt.extend_from_slice(&self.me.to_be_bytes());
            pt.extend_from_slice(&to.to_be_bytes());
            pt.extend_from_slice(&s.to_bytes());
            pt.extend_from_slice(&k.to_bytes());
            // Each (round, from, to) key seals exactly one message, so a fixed nonce is safe.
            let ciphertext = p.seal(
                &key,
                &[0u8; 12],
                &share_aad(suite, self.cfg.round, self.me, to),
                &pt,
            )?;
            shares.push(EncryptedShare {
                from: self.me,
                to,
                ciphertext,
            });
        }
        let bundle = ShareBundle {
            round: self.cfg.round,
            from: self.me,
            seed_commitment: seed_commitment(suite, self.cfg.round, self.me, &seed),
            shares,
        };
        Ok((
            AwaitShares {
                #[cfg(any(test, feature = "test-util"))]
                mask_secret: st.mask_secret,
                seed,
                accepted,
                verified,
            },
            bundle,
        ))
    }

    /// Stage 3 input: the sealed shares from neighbours that completed stage 2.
    pub fn handle_incoming_shares(&mut self, msg: IncomingShares) -> Result<(), ProtocolError> {
        self.check(msg.round, Stage::ShareKeys)?;
        let Phase::AwaitShares(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        let next = self.receive(st, msg)?;
        self.phase = Phase::AwaitInput(next);
        Ok(())
    }

    fn receive(
        &mut self,
        st: AwaitShares,
        msg: IncomingShares,
    ) -> Result<AwaitInput, ProtocolError> {
        let mut held = BTreeMap::new();
        let mut pair_keys = BTreeMap::new();
        for e in msg.shares {
            if held.contains_key(&e.from) {
                self.rejected
                    .push((e.from, "a second share from the same peer".into()));
                continue;
            }
            match self.open_share(&st, &e) {
                Ok(h) => {
                    if let Some(peer) = st.accepted.get(&e.from) {
                        pair_keys.insert(e.from, peer.pair_key.clone());
                        held.insert(e.from, h);
                    }
                }
                Err(why) => self.rejected.push((e.from, why)),
            }
        }
        let t = self.cfg.params.t;
        if held.len() < t {
            return Err(ProtocolError::BelowThreshold {
                member: self.me,
                have: held.len(),
                need: t,
            });
        }
        Ok(AwaitInput {
            #[cfg(any(test, feature = "test-util"))]
            mask_secret: st.mask_secret,
            seed: st.seed,
            pair_keys,
            held,
            verified: st.verified,
        })
    }

    /// Stage 3: mask the local (quantised) input in place and queue it.
    pub fn handle_input(&mut self, mut input: Vec<R>) -> Result<(), ProtocolError> {
        self.check(self.cfg.round, Stage::MaskedInput)?;
        if input.len() != self.cfg.vector_len {
            return Err(ProtocolError::WrongLength {
                expected: self.cfg.vector_len,
                got: input.len(),
            });
        }
        let Phase::AwaitInput(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        let suite = self.cfg.suite;
        let round = self.cfg.round;
        let mut masks = Vec::with_capacity(st.pair_keys.len() + 1);
        masks.push((self_mask_prg(suite, round, self.me, &st.seed)?, Sign::Add));
        // The pair keys are kept (16 bytes each) in case a peer turns out not
        // to have masked with this site: then that key alone is revealed
        // (`reveal.rs`).
        let pair_keys = st.pair_keys;
        for (&v, key) in &pair_keys {
            // + towards larger ids, − towards smaller: the pair cancels in the sum.
            let sign = if v > self.me { Sign::Add } else { Sign::Sub };
            masks.push((key.prg(suite), sign));
        }
        // All in one pass over the input (`prg::apply_masks`).
        apply_masks(&masks, &mut input)?;
        let masked_with: Vec<MemberId> = pair_keys.keys().copied().collect();
        let signature = self.signing.sign(&MaskingSet::signed_bytes(
            &self.session,
            self.me,
            &masked_with,
        ))?;
        self.out.push_back(SiteOutput::MaskedInput {
            vector: input,
            masking: MaskingSet {
                round,
                member: self.me,
                peers: masked_with.clone(),
                signature,
            },
        });
        self.phase = Phase::AwaitConsistency(AwaitConsistency {
            masked_with,
            held: st.held,
            pair_keys,
            verified: st.verified,
        });
        Ok(())
    }
}

impl<R: RingElement> fmt::Debug for SiteMachine<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteMachine")
            .field("round", &self.cfg.round)
            .field("member", &self.me)
            .field("stage", &self.phase.stage())
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}
