//! The site's side of a round.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{
    EncryptedShare, IdentityVerifier, IncomingShares, KeyAdvert, MemberId, NeighbourKeys,
    RoundConfig, SHARE_PLAINTEXT_LEN, ShareBundle, Stage, Topology, UnmaskRequest, UnmaskResponse,
    pairwise_prg, seed_commitment, self_mask_prg, share_aad, share_x,
};
use crate::error::ProtocolError;
use crate::kdf::{Purpose, derive_key};
use crate::ring::RingElement;
use crate::shamir::{self, Share};
use crate::suite::{SigningKey, random_secret};

/// What a site sends to the coordinator.
#[derive(Debug)]
pub enum SiteOutput<R> {
    /// Stage 1: the signed per-round keys.
    Advertise(KeyAdvert),
    /// Stage 2: sealed shares for the neighbours.
    Shares(ShareBundle),
    /// Stage 3: the masked input vector.
    MaskedInput(Vec<R>),
    /// Stage 4: the shares needed to unmask the sum.
    Unmask(UnmaskResponse),
}

/// One site's state machine for one round.
///
/// Routing mistakes (a message for another round or stage) are rejected and
/// leave the machine as it was; a message whose content is wrong (a bad
/// signature, a share that does not decrypt, a request for both shares of one
/// neighbour) aborts the site's part in the round: every later input gets
/// [`ProtocolError::Ended`].
pub struct SiteMachine<R: RingElement> {
    cfg: RoundConfig,
    topo: Topology,
    me: MemberId,
    signing: SigningKey,
    verifier: Arc<dyn IdentityVerifier>,
    phase: Phase,
    out: VecDeque<SiteOutput<R>>,
}

enum Phase {
    AwaitKeys(AwaitKeys),
    AwaitShares(AwaitShares),
    AwaitInput(AwaitInput),
    AwaitUnmask(AwaitUnmask),
    Done,
}

/// Keys advertised; waiting for the neighbours' adverts.
struct AwaitKeys {
    enc_secret: Zeroizing<[u8; 32]>,
    mask_secret: Zeroizing<[u8; 32]>,
}

/// Shares dealt; waiting for the neighbours' shares.
struct AwaitShares {
    enc_secret: Zeroizing<[u8; 32]>,
    mask_secret: Zeroizing<[u8; 32]>,
    seed: Zeroizing<[u8; 32]>,
    /// Neighbours that advertised: (enc public, mask public).
    keys: BTreeMap<MemberId, (Vec<u8>, Vec<u8>)>,
}

/// Shares held; waiting for the local input.
struct AwaitInput {
    mask_secret: Zeroizing<[u8; 32]>,
    seed: Zeroizing<[u8; 32]>,
    /// Mask public keys of neighbours whose shares arrived (the set masked with).
    peers: BTreeMap<MemberId, Vec<u8>>,
    held: BTreeMap<MemberId, HeldShares>,
}

/// Input sent; waiting for the unmask request.
struct AwaitUnmask {
    held: BTreeMap<MemberId, HeldShares>,
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
            Phase::AwaitUnmask(_) => Stage::Unmask,
            Phase::Done => Stage::Done,
        }
    }
}

impl<R: RingElement> SiteMachine<R> {
    /// Join round `cfg` as member `me`: validates the configuration, makes the
    /// two fresh key pairs and queues the signed advert.
    pub fn new(
        cfg: RoundConfig,
        me: MemberId,
        signing: SigningKey,
        verifier: Arc<dyn IdentityVerifier>,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ProtocolError> {
        let topo = cfg.topology()?;
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
        let signature = signing.sign(&KeyAdvert::signed_bytes(
            cfg.suite,
            cfg.round,
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
            cfg,
            topo,
            me,
            signing,
            verifier,
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

    fn check(&self, round: u64, stage: Stage) -> Result<(), ProtocolError> {
        if round != self.cfg.round {
            return Err(ProtocolError::WrongRound {
                expected: self.cfg.round,
                got: round,
            });
        }
        match self.phase.stage() {
            Stage::Done => Err(ProtocolError::Ended),
            s if s != stage => Err(ProtocolError::WrongStage {
                expected: s,
                got: stage,
            }),
            _ => Ok(()),
        }
    }

    /// Stage 2 input: the neighbours' signed adverts. Verifies every one,
    /// then deals and seals the shares.
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
        &self,
        st: AwaitKeys,
        msg: NeighbourKeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(AwaitShares, ShareBundle), ProtocolError> {
        let suite = self.cfg.suite;
        let p = suite.provider();
        let mut keys = BTreeMap::new();
        let mut seen_keys = BTreeSet::new();
        for r in msg.adverts {
            let a = r.advert;
            let bad = |reason: String| ProtocolError::BadAdvert {
                member: a.member,
                reason,
            };
            if a.round != self.cfg.round {
                return Err(bad(format!("advert is for round {}", a.round)));
            }
            if !self.topo.are_neighbours(self.me, a.member) {
                return Err(bad("not a neighbour of this site".into()));
            }
            if keys.contains_key(&a.member) {
                return Err(ProtocolError::Duplicate(a.member));
            }
            let vk = self
                .verifier
                .verifying_key(a.member, &r.identity)
                .map_err(bad)?;
            if vk.suite() != suite {
                return Err(bad(format!("identity key is for suite {}", vk.suite())));
            }
            let signed =
                KeyAdvert::signed_bytes(suite, a.round, a.member, &a.enc_public, &a.mask_public);
            vk.verify(&signed, &a.signature)
                .map_err(|e| bad(e.to_string()))?;
            // Reused public keys would let one member's secrets stand in for another's.
            if !seen_keys.insert(a.enc_public.clone()) || !seen_keys.insert(a.mask_public.clone()) {
                return Err(bad("public key reused".into()));
            }
            keys.insert(a.member, (a.enc_public, a.mask_public));
        }
        let t = self.cfg.params.t;
        if keys.len() < t {
            return Err(ProtocolError::BelowThreshold {
                member: self.me,
                have: keys.len(),
                need: t,
            });
        }
        let seed = random_secret(rng, |_| Ok(()));
        let holders: Vec<MemberId> = keys.keys().copied().collect();
        let xs: Vec<u32> = holders.iter().map(|&h| share_x(h)).collect();
        let seed_shares = shamir::split(&seed, t, &xs, rng)?;
        let key_shares = shamir::split(&st.mask_secret, t, &xs, rng)?;
        let mut shares = Vec::with_capacity(holders.len());
        for ((&to, s), k) in holders.iter().zip(&seed_shares).zip(&key_shares) {
            let (enc_public, _) = &keys[&to];
            let shared =
                p.agree(&st.enc_secret, enc_public)
                    .map_err(|e| ProtocolError::BadAdvert {
                        member: to,
                        reason: e.to_string(),
                    })?;
            let key = derive_key(
                suite,
                Purpose::ShareEncryption,
                &shared[..],
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
                enc_secret: st.enc_secret,
                mask_secret: st.mask_secret,
                seed,
                keys,
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

    fn receive(&self, st: AwaitShares, msg: IncomingShares) -> Result<AwaitInput, ProtocolError> {
        let suite = self.cfg.suite;
        let p = suite.provider();
        let mut held = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for e in msg.shares {
            let malformed = |reason: &str| ProtocolError::Malformed {
                member: e.from,
                reason: reason.into(),
            };
            if e.to != self.me {
                return Err(malformed("share addressed to another member"));
            }
            let Some((enc_public, mask_public)) = st.keys.get(&e.from) else {
                return Err(malformed(
                    "share from a member that did not advertise keys to this site",
                ));
            };
            if held.contains_key(&e.from) {
                return Err(ProtocolError::Duplicate(e.from));
            }
            let shared = p.agree(&st.enc_secret, enc_public)?;
            let key = derive_key(
                suite,
                Purpose::ShareEncryption,
                &shared[..],
                self.cfg.round,
                e.from,
                self.me,
            )?;
            let pt = p.open(
                &key,
                &[0u8; 12],
                &share_aad(suite, self.cfg.round, e.from, self.me),
                &e.ciphertext,
            )?;
            if pt.len() != SHARE_PLAINTEXT_LEN
                || pt[0..4] != e.from.to_be_bytes()
                || pt[4..8] != self.me.to_be_bytes()
            {
                return Err(malformed("sealed share names the wrong members"));
            }
            let half = 8 + shamir::SHARE_LEN;
            let seed = Share::from_bytes(&pt[8..half])?;
            let key = Share::from_bytes(&pt[half..])?;
            if seed.x() != share_x(self.me) || key.x() != share_x(self.me) {
                return Err(malformed("share has the wrong x-coordinate"));
            }
            held.insert(e.from, HeldShares { seed, key });
            peers.insert(e.from, mask_public.clone());
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
            mask_secret: st.mask_secret,
            seed: st.seed,
            peers,
            held,
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
        self_mask_prg(suite, round, self.me, &st.seed)?.add_into(&mut input)?;
        for (&v, mask_public) in &st.peers {
            let prg = pairwise_prg(suite, round, &st.mask_secret, mask_public, self.me, v)?;
            // + towards larger ids, − towards smaller: the pair cancels in the sum.
            if v > self.me {
                prg.add_into(&mut input)?;
            } else {
                prg.sub_from(&mut input)?;
            }
        }
        self.phase = Phase::AwaitUnmask(AwaitUnmask { held: st.held });
        self.out.push_back(SiteOutput::MaskedInput(input));
        Ok(())
    }

    /// Stage 4 input: reveal the seed share of every surviving neighbour and the
    /// key share of every dropped one — refusing if any member is named as both,
    /// if this site is not a survivor, or if too few neighbours survived.
    pub fn handle_unmask_request(&mut self, msg: UnmaskRequest) -> Result<(), ProtocolError> {
        self.check(msg.round, Stage::Unmask)?;
        let Phase::AwaitUnmask(st) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(ProtocolError::Ended);
        };
        let survivors: BTreeSet<MemberId> = msg.survivors.iter().copied().collect();
        let dropped: BTreeSet<MemberId> = msg.dropped.iter().copied().collect();
        if let Some(&both) = survivors.intersection(&dropped).next() {
            return Err(ProtocolError::BothSharesRequested(both));
        }
        if !survivors.contains(&self.me) {
            return Err(ProtocolError::Malformed {
                member: self.me,
                reason: "unmask request does not list this site as a survivor".into(),
            });
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
        self.out.push_back(SiteOutput::Unmask(UnmaskResponse {
            round: self.cfg.round,
            from: self.me,
            seed_shares,
            key_shares,
        }));
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
