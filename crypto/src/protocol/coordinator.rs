//! The coordinator's side of a round.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::{
    EncryptedShare, IncomingShares, KeyAdvert, MemberId, NeighbourKeys, RelayedAdvert, RoundConfig,
    ShareBundle, Stage, Topology, UnmaskRequest, UnmaskResponse, pairwise_prg, seed_commitment,
    self_mask_prg, share_x,
};
use crate::error::ProtocolError;
use crate::ring::RingElement;
use crate::shamir::{Reconstructor, Share};

/// How long each stage waits before closing with whoever has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageTimeouts {
    /// Advertise keys.
    pub advertise: Duration,
    /// Share keys.
    pub share: Duration,
    /// Masked input (includes local training).
    pub input: Duration,
    /// Unmask.
    pub unmask: Duration,
}

impl StageTimeouts {
    /// The same timeout for every stage.
    pub fn uniform(d: Duration) -> Self {
        StageTimeouts {
            advertise: d,
            share: d,
            input: d,
            unmask: d,
        }
    }

    fn get(&self, stage: Stage) -> Duration {
        match stage {
            Stage::AdvertiseKeys => self.advertise,
            Stage::ShareKeys => self.share,
            Stage::MaskedInput => self.input,
            Stage::Unmask | Stage::Done => self.unmask,
        }
    }
}

/// What the coordinator must send, and what it reports.
#[derive(Debug)]
pub enum CoordinatorOutput<R> {
    /// Send a site its neighbours' adverts.
    NeighbourKeys {
        /// Recipient.
        to: MemberId,
        /// Message.
        msg: NeighbourKeys,
    },
    /// Send a site the shares addressed to it.
    IncomingShares {
        /// Recipient.
        to: MemberId,
        /// Message.
        msg: IncomingShares,
    },
    /// Ask a survivor for its unmask shares.
    UnmaskRequest {
        /// Recipient.
        to: MemberId,
        /// Message.
        msg: UnmaskRequest,
    },
    /// A stage closed (for logs and metrics).
    StageClosed {
        /// Which stage.
        stage: Stage,
        /// Members that completed it.
        completed: Vec<MemberId>,
        /// Members that were expected but did not (or were pruned below threshold).
        dropped: Vec<MemberId>,
    },
    /// The round ended: the unmasked sum, or why it failed.
    Finished(Result<RoundResult<R>, ProtocolError>),
}

/// A successful round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundResult<R> {
    /// Σ of the survivors' input vectors in the ring.
    pub sum: Vec<R>,
    /// Members whose inputs are in the sum.
    pub survivors: Vec<MemberId>,
    /// Members that shared keys but whose inputs are not in the sum.
    pub dropped: Vec<MemberId>,
    /// Secrets reconstructed (self-mask seeds + mask keys).
    pub reconstructions: usize,
}

/// The coordinator's state machine for one round. Inputs from sites go in
/// through `handle_*`; a message that is for another round, another stage, from
/// a non-participant, a duplicate, or malformed is rejected with a typed error
/// and changes nothing. Stages close when every expected member has answered
/// or at the deadline ([`CoordinatorMachine::handle_timeout`]).
pub struct CoordinatorMachine<R: RingElement> {
    cfg: RoundConfig,
    topo: Topology,
    timeouts: StageTimeouts,
    deadline: Option<Instant>,
    phase: Phase<R>,
    out: VecDeque<CoordinatorOutput<R>>,
    /// Adverts of U1, kept for reconstruction checks.
    adverts: BTreeMap<MemberId, KeyAdvert>,
    /// Seed commitments of U2.
    commitments: BTreeMap<MemberId, [u8; 32]>,
}

enum Phase<R> {
    Advertise {
        adverts: BTreeMap<MemberId, RelayedAdvert>,
    },
    Share {
        u1: BTreeSet<MemberId>,
        bundles: BTreeMap<MemberId, Vec<EncryptedShare>>,
    },
    Input {
        u2: BTreeSet<MemberId>,
        received: BTreeSet<MemberId>,
        acc: Vec<R>,
    },
    Unmask {
        u2: BTreeSet<MemberId>,
        u3: BTreeSet<MemberId>,
        acc: Vec<R>,
        responses: BTreeMap<MemberId, UnmaskResponse>,
    },
    Done,
}

impl<R> Phase<R> {
    fn stage(&self) -> Stage {
        match self {
            Phase::Advertise { .. } => Stage::AdvertiseKeys,
            Phase::Share { .. } => Stage::ShareKeys,
            Phase::Input { .. } => Stage::MaskedInput,
            Phase::Unmask { .. } => Stage::Unmask,
            Phase::Done => Stage::Done,
        }
    }
}

impl<R: RingElement> CoordinatorMachine<R> {
    /// Start round `cfg` at time `now`.
    pub fn new(
        cfg: RoundConfig,
        timeouts: StageTimeouts,
        now: Instant,
    ) -> Result<Self, ProtocolError> {
        let topo = cfg.topology()?;
        if R::RING != cfg.ring {
            return Err(ProtocolError::Config(format!(
                "round uses ring {:?}, coordinator built for {:?}",
                cfg.ring,
                R::RING
            )));
        }
        Ok(CoordinatorMachine {
            cfg,
            topo,
            deadline: Some(now + timeouts.advertise),
            timeouts,
            phase: Phase::Advertise {
                adverts: BTreeMap::new(),
            },
            out: VecDeque::new(),
            adverts: BTreeMap::new(),
            commitments: BTreeMap::new(),
        })
    }

    /// The round configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.cfg
    }

    /// The derived topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.phase.stage()
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<CoordinatorOutput<R>> {
        self.out.pop_front()
    }

    /// When the current stage closes unless everyone answers first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Members the current stage still waits for.
    pub fn pending(&self) -> Vec<MemberId> {
        match &self.phase {
            Phase::Advertise { adverts } => self
                .topo
                .cohort()
                .iter()
                .copied()
                .filter(|m| !adverts.contains_key(m))
                .collect(),
            Phase::Share { u1, bundles } => u1
                .iter()
                .copied()
                .filter(|m| !bundles.contains_key(m))
                .collect(),
            Phase::Input { u2, received, .. } => u2.difference(received).copied().collect(),
            Phase::Unmask { u3, responses, .. } => u3
                .iter()
                .copied()
                .filter(|m| !responses.contains_key(m))
                .collect(),
            Phase::Done => Vec::new(),
        }
    }

    /// Close the current stage if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.close_stage(now);
        }
    }

    /// Abort the round (for example on shutdown).
    pub fn abort(&mut self, reason: &str) {
        if !matches!(self.phase, Phase::Done) {
            self.finish(Err(ProtocolError::Config(format!(
                "round aborted: {reason}"
            ))));
        }
    }

    fn check(&self, round: u64, stage: Stage, from: MemberId) -> Result<(), ProtocolError> {
        if round != self.cfg.round {
            return Err(ProtocolError::WrongRound {
                expected: self.cfg.round,
                got: round,
            });
        }
        let cur = self.phase.stage();
        if cur == Stage::Done {
            return Err(ProtocolError::Ended);
        }
        if cur != stage {
            return Err(ProtocolError::WrongStage {
                expected: cur,
                got: stage,
            });
        }
        if !self.topo.contains(from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        Ok(())
    }

    /// Stage 1: a member's advert, with the identity material to relay.
    pub fn handle_advert(
        &mut self,
        advert: KeyAdvert,
        identity: Vec<u8>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(advert.round, Stage::AdvertiseKeys, advert.member)?;
        let Phase::Advertise { adverts } = &mut self.phase else {
            return Err(ProtocolError::Ended);
        };
        if adverts.contains_key(&advert.member) {
            return Err(ProtocolError::Duplicate(advert.member));
        }
        // Lengths only; sites verify signatures and keys themselves.
        if advert.enc_public.len() > 133
            || advert.mask_public.len() > 133
            || advert.signature.len() > 128
        {
            return Err(ProtocolError::Malformed {
                member: advert.member,
                reason: "oversized key or signature".into(),
            });
        }
        adverts.insert(advert.member, RelayedAdvert { advert, identity });
        if adverts.len() == self.topo.cohort().len() {
            self.close_stage(now);
        }
        Ok(())
    }

    /// Stage 2: a member's sealed shares.
    pub fn handle_shares(
        &mut self,
        bundle: ShareBundle,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(bundle.round, Stage::ShareKeys, bundle.from)?;
        let Phase::Share { u1, bundles } = &mut self.phase else {
            return Err(ProtocolError::Ended);
        };
        let from = bundle.from;
        if !u1.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if bundles.contains_key(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        let expected: BTreeSet<MemberId> = self
            .topo
            .neighbours(from)
            .into_iter()
            .filter(|v| u1.contains(v))
            .collect();
        let mut got = BTreeSet::new();
        for s in &bundle.shares {
            if s.from != from
                || !expected.contains(&s.to)
                || !got.insert(s.to)
                || s.ciphertext.len() > 256
            {
                return Err(ProtocolError::Malformed {
                    member: from,
                    reason: format!(
                        "share for member {} is not expected, repeated or oversized",
                        s.to
                    ),
                });
            }
        }
        if got != expected {
            return Err(ProtocolError::Malformed {
                member: from,
                reason: format!("shares for {} of {} neighbours", got.len(), expected.len()),
            });
        }
        self.commitments.insert(from, bundle.seed_commitment);
        bundles.insert(from, bundle.shares);
        if bundles.len() == u1.len() {
            self.close_stage(now);
        }
        Ok(())
    }

    /// Stage 3: a member's complete masked vector, added into the sum at once.
    pub fn handle_masked_input(
        &mut self,
        round: u64,
        from: MemberId,
        vector: &[R],
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(round, Stage::MaskedInput, from)?;
        let Phase::Input { u2, received, acc } = &mut self.phase else {
            return Err(ProtocolError::Ended);
        };
        if !u2.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if received.contains(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        if vector.len() != acc.len() {
            return Err(ProtocolError::WrongLength {
                expected: acc.len(),
                got: vector.len(),
            });
        }
        crate::ring::add_assign(acc, vector);
        received.insert(from);
        if received.len() == u2.len() {
            self.close_stage(now);
        }
        Ok(())
    }

    /// Stage 4: a survivor's unmask shares.
    pub fn handle_unmask_response(
        &mut self,
        resp: UnmaskResponse,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(resp.round, Stage::Unmask, resp.from)?;
        let topo = &self.topo;
        let Phase::Unmask {
            u2, u3, responses, ..
        } = &mut self.phase
        else {
            return Err(ProtocolError::Ended);
        };
        let from = resp.from;
        if !u3.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if responses.contains_key(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        let neighbours: BTreeSet<MemberId> = topo.neighbours(from).into_iter().collect();
        let want_seed: BTreeSet<MemberId> = neighbours
            .iter()
            .copied()
            .filter(|v| u3.contains(v))
            .collect();
        let want_key: BTreeSet<MemberId> = neighbours
            .iter()
            .copied()
            .filter(|v| u2.contains(v) && !u3.contains(v))
            .collect();
        let check_set = |list: &[(MemberId, Share)], want: &BTreeSet<MemberId>, what: &str| {
            let mut seen = BTreeSet::new();
            for (owner, share) in list {
                if !want.contains(owner) || !seen.insert(*owner) || share.x() != share_x(from) {
                    return Err(ProtocolError::Malformed {
                        member: from,
                        reason: format!(
                            "unexpected, repeated or mislabelled {what} share for member {owner}"
                        ),
                    });
                }
            }
            if &seen != want {
                return Err(ProtocolError::Malformed {
                    member: from,
                    reason: format!("{} {what} shares, expected {}", seen.len(), want.len()),
                });
            }
            Ok(())
        };
        check_set(&resp.seed_shares, &want_seed, "self-mask seed")?;
        check_set(&resp.key_shares, &want_key, "mask key")?;
        responses.insert(from, resp);
        if responses.len() == u3.len() {
            self.close_stage(now);
        }
        Ok(())
    }

    fn finish(&mut self, result: Result<RoundResult<R>, ProtocolError>) {
        self.phase = Phase::Done;
        self.deadline = None;
        self.out.push_back(CoordinatorOutput::Finished(result));
    }

    fn closed(&mut self, stage: Stage, completed: &BTreeSet<MemberId>, dropped: Vec<MemberId>) {
        self.out.push_back(CoordinatorOutput::StageClosed {
            stage,
            completed: completed.iter().copied().collect(),
            dropped,
        });
    }

    fn enough(&mut self, stage: Stage, set: &BTreeSet<MemberId>) -> bool {
        if set.len() < self.cfg.min_survivors {
            let need = self.cfg.min_survivors;
            self.finish(Err(ProtocolError::TooFewSurvivors {
                stage,
                have: set.len(),
                need,
            }));
            return false;
        }
        true
    }

    fn close_stage(&mut self, now: Instant) {
        let t = self.cfg.params.t;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Advertise { adverts } => {
                let mut u1: BTreeSet<MemberId> = adverts.keys().copied().collect();
                let mut dropped: Vec<MemberId> = self
                    .topo
                    .cohort()
                    .iter()
                    .copied()
                    .filter(|m| !u1.contains(m))
                    .collect();
                dropped.extend(self.topo.prune(&mut u1, t));
                self.closed(Stage::AdvertiseKeys, &u1, dropped);
                if !self.enough(Stage::AdvertiseKeys, &u1) {
                    return;
                }
                for &u in &u1 {
                    let relayed: Vec<RelayedAdvert> = self
                        .topo
                        .neighbours(u)
                        .iter()
                        .filter(|v| u1.contains(v))
                        .filter_map(|v| adverts.get(v).cloned())
                        .collect();
                    self.out.push_back(CoordinatorOutput::NeighbourKeys {
                        to: u,
                        msg: NeighbourKeys {
                            round: self.cfg.round,
                            adverts: relayed,
                        },
                    });
                }
                self.adverts = adverts
                    .into_iter()
                    .filter(|(m, _)| u1.contains(m))
                    .map(|(m, r)| (m, r.advert))
                    .collect();
                self.deadline = Some(now + self.timeouts.get(Stage::ShareKeys));
                self.phase = Phase::Share {
                    u1,
                    bundles: BTreeMap::new(),
                };
            }
            Phase::Share { u1, bundles } => {
                let mut u2: BTreeSet<MemberId> = bundles.keys().copied().collect();
                let mut dropped: Vec<MemberId> = u1.difference(&u2).copied().collect();
                dropped.extend(self.topo.prune(&mut u2, t));
                self.closed(Stage::ShareKeys, &u2, dropped);
                self.commitments.retain(|m, _| u2.contains(m));
                if !self.enough(Stage::ShareKeys, &u2) {
                    return;
                }
                let mut inbox: HashMap<MemberId, Vec<EncryptedShare>> = HashMap::new();
                for (from, shares) in bundles {
                    if !u2.contains(&from) {
                        continue;
                    }
                    for s in shares {
                        if u2.contains(&s.to) {
                            inbox.entry(s.to).or_default().push(s);
                        }
                    }
                }
                for &u in &u2 {
                    let shares = inbox.remove(&u).unwrap_or_default();
                    self.out.push_back(CoordinatorOutput::IncomingShares {
                        to: u,
                        msg: IncomingShares {
                            round: self.cfg.round,
                            shares,
                        },
                    });
                }
                self.deadline = Some(now + self.timeouts.get(Stage::MaskedInput));
                self.phase = Phase::Input {
                    u2,
                    received: BTreeSet::new(),
                    acc: vec![R::default(); self.cfg.vector_len],
                };
            }
            Phase::Input {
                u2,
                received: u3,
                acc,
            } => {
                let dropped: Vec<MemberId> = u2.difference(&u3).copied().collect();
                self.closed(Stage::MaskedInput, &u3, dropped.clone());
                if !self.enough(Stage::MaskedInput, &u3) {
                    return;
                }
                // Every survivor's self mask needs t answering neighbours among the survivors.
                for &u in &u3 {
                    let have = self
                        .topo
                        .neighbours(u)
                        .iter()
                        .filter(|v| u3.contains(v))
                        .count();
                    if have < t {
                        self.finish(Err(ProtocolError::BelowThreshold {
                            member: u,
                            have,
                            need: t,
                        }));
                        return;
                    }
                }
                let survivors: Vec<MemberId> = u3.iter().copied().collect();
                for &u in &u3 {
                    self.out.push_back(CoordinatorOutput::UnmaskRequest {
                        to: u,
                        msg: UnmaskRequest {
                            round: self.cfg.round,
                            survivors: survivors.clone(),
                            dropped: dropped.clone(),
                        },
                    });
                }
                self.deadline = Some(now + self.timeouts.get(Stage::Unmask));
                self.phase = Phase::Unmask {
                    u2,
                    u3,
                    acc,
                    responses: BTreeMap::new(),
                };
            }
            Phase::Unmask {
                u2,
                u3,
                acc,
                responses,
            } => {
                let u4: BTreeSet<MemberId> = responses.keys().copied().collect();
                let silent: Vec<MemberId> = u3.difference(&u4).copied().collect();
                self.closed(Stage::Unmask, &u4, silent);
                let result = self.unmask(&u2, &u3, acc, &responses);
                self.finish(result);
            }
            Phase::Done => {}
        }
    }

    /// Remove every mask from the sum of the survivors' masked inputs.
    fn unmask(
        &self,
        u2: &BTreeSet<MemberId>,
        u3: &BTreeSet<MemberId>,
        mut acc: Vec<R>,
        responses: &BTreeMap<MemberId, UnmaskResponse>,
    ) -> Result<RoundResult<R>, ProtocolError> {
        let suite = self.cfg.suite;
        let round = self.cfg.round;
        let t = self.cfg.params.t;
        // Group the received shares by owner.
        let mut seed_shares: BTreeMap<MemberId, Vec<&Share>> = BTreeMap::new();
        let mut key_shares: BTreeMap<MemberId, Vec<&Share>> = BTreeMap::new();
        for r in responses.values() {
            for (owner, s) in &r.seed_shares {
                seed_shares.entry(*owner).or_default().push(s);
            }
            for (owner, s) in &r.key_shares {
                key_shares.entry(*owner).or_default().push(s);
            }
        }
        // Lagrange coefficients depend only on the set of x-coordinates; owners
        // answered by the same neighbours reuse them.
        let mut cache: HashMap<Vec<u32>, Reconstructor> = HashMap::new();
        let mut rebuild = |owner: MemberId, shares: Option<&Vec<&Share>>, what: &'static str| {
            let mut shares: Vec<Share> = shares
                .map(|v| v.iter().map(|s| (*s).clone()).collect())
                .unwrap_or_default();
            if shares.len() < t {
                return Err(ProtocolError::Reconstruction {
                    member: owner,
                    what,
                    have: shares.len(),
                    need: t,
                });
            }
            shares.sort_by_key(|s| s.x());
            let xs: Vec<u32> = shares.iter().map(Share::x).collect();
            let rec = match cache.get(&xs) {
                Some(r) => r,
                None => {
                    let r = Reconstructor::new(&xs, t)?;
                    cache.entry(xs).or_insert(r)
                }
            };
            Ok(rec.reconstruct(&shares)?)
        };
        let mut reconstructions = 0;
        for &u in u3 {
            let seed = rebuild(u, seed_shares.get(&u), "self-mask seed")?;
            let committed = self.commitments.get(&u).copied().unwrap_or_default();
            if seed_commitment(suite, round, u, &seed) != committed {
                return Err(ProtocolError::CommitmentMismatch {
                    member: u,
                    what: "self-mask seed",
                });
            }
            self_mask_prg(suite, round, u, &seed)?.sub_from(&mut acc)?;
            reconstructions += 1;
        }
        let dropped: Vec<MemberId> = u2.difference(u3).copied().collect();
        for &v in &dropped {
            let secret = rebuild(v, key_shares.get(&v), "mask key")?;
            let advert = self
                .adverts
                .get(&v)
                .ok_or(ProtocolError::NotParticipant(v))?;
            let public = suite.provider().agreement_public(&secret).map_err(|_| {
                ProtocolError::CommitmentMismatch {
                    member: v,
                    what: "mask key",
                }
            })?;
            if public != advert.mask_public {
                return Err(ProtocolError::CommitmentMismatch {
                    member: v,
                    what: "mask key",
                });
            }
            reconstructions += 1;
            for u in self.topo.neighbours(v) {
                if !u3.contains(&u) {
                    continue;
                }
                let peer = self
                    .adverts
                    .get(&u)
                    .ok_or(ProtocolError::NotParticipant(u))?;
                let prg = pairwise_prg(suite, round, &secret, &peer.mask_public, v, u)?;
                // u added +mask if v > u, −mask otherwise; undo exactly that.
                if v > u {
                    prg.sub_from(&mut acc)?;
                } else {
                    prg.add_into(&mut acc)?;
                }
            }
        }
        Ok(RoundResult {
            sum: acc,
            survivors: u3.iter().copied().collect(),
            dropped,
            reconstructions,
        })
    }
}

impl<R: RingElement> fmt::Debug for CoordinatorMachine<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorMachine")
            .field("round", &self.cfg.round)
            .field("stage", &self.phase.stage())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
