//! The coordinator's side of a round.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::consistency::CheckedSurvivors;
use super::unmask::check_response;

mod close;
mod offload;
mod signatures;
use super::{
    CoordinatorOutput, EncryptedShare, IdentityVerifier, KeyAdvert, MaskingSet, MemberId,
    RelayedAdvert, RoundConfig, ShareBundle, Stage, SurvivorSignature, Topology, UnmaskResponse,
};
use crate::error::ProtocolError;
use crate::ring::RingElement;
pub use offload::{UnmaskJob, UnmaskOutcome};

/// How long each stage waits before closing with whoever has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageTimeouts {
    /// Advertise keys.
    pub advertise: Duration,
    /// Share keys.
    pub share: Duration,
    /// Masked input (includes local training).
    pub input: Duration,
    /// Survivor-set signatures.
    pub consistency: Duration,
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
            consistency: d,
            unmask: d,
        }
    }

    fn get(&self, stage: Stage) -> Duration {
        match stage {
            Stage::AdvertiseKeys => self.advertise,
            Stage::ShareKeys => self.share,
            Stage::MaskedInput => self.input,
            Stage::Consistency => self.consistency,
            Stage::Unmask | Stage::Done => self.unmask,
        }
    }
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
    /// NeighbourKeys not yet handed out: made one at a time as polled.
    relay: Option<close::KeyRelay>,
    /// Adverts of U1, kept for reconstruction checks.
    adverts: BTreeMap<MemberId, KeyAdvert>,
    /// Identity material of U1, relayed with survivor-set signatures.
    identities: BTreeMap<MemberId, Vec<u8>>,
    /// Who each member dealt or was delivered a share from: (to → from).
    delivered: BTreeMap<MemberId, BTreeSet<MemberId>>,
    /// Member → the sites that refused its advert or its share.
    refusals: BTreeMap<MemberId, BTreeSet<MemberId>>,
    /// Seed commitments of U2.
    commitments: BTreeMap<MemberId, [u8; 32]>,
    /// Members known to have left the round ([`Self::handle_member_gone`]):
    /// no stage waits for them any more.
    gone: BTreeSet<MemberId>,
    /// Whether closing the unmask stage leaves the job to the caller
    /// ([`Self::defer_unmask`]), and the job once it has.
    defer: bool,
    job: Option<UnmaskJob<R>>,
    /// Whether the caller keeps the sum of the inputs ([`Self::sum_outside`]).
    outside: bool,
    /// Checks survivor-set signatures as they arrive
    /// ([`Self::check_signatures`]); `None` relays them unchecked.
    signature_keys: Option<Arc<dyn IdentityVerifier>>,
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
        /// Who sent an input, and the signed set of peers it masked with.
        received: BTreeMap<MemberId, MaskingSet>,
        acc: Vec<R>,
    },
    Consistency {
        checked: CheckedSurvivors,
        masking: BTreeMap<MemberId, BTreeSet<MemberId>>,
        acc: Vec<R>,
        signatures: BTreeMap<MemberId, SurvivorSignature>,
        /// What survivors sign, for [`CoordinatorMachine::check_signatures`].
        signed: Vec<u8>,
    },
    Unmask {
        checked: CheckedSurvivors,
        masking: BTreeMap<MemberId, BTreeSet<MemberId>>,
        signers: BTreeSet<MemberId>,
        acc: Vec<R>,
        responses: BTreeMap<MemberId, UnmaskResponse>,
    },
    /// The unmask stage has closed and its job runs outside the machine.
    Unmasking,
    Done,
}

impl<R> Phase<R> {
    fn stage(&self) -> Stage {
        match self {
            Phase::Advertise { .. } => Stage::AdvertiseKeys,
            Phase::Share { .. } => Stage::ShareKeys,
            Phase::Input { .. } => Stage::MaskedInput,
            Phase::Consistency { .. } => Stage::Consistency,
            Phase::Unmask { .. } | Phase::Unmasking => Stage::Unmask,
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
            relay: None,
            adverts: BTreeMap::new(),
            identities: BTreeMap::new(),
            delivered: BTreeMap::new(),
            refusals: BTreeMap::new(),
            commitments: BTreeMap::new(),
            gone: BTreeSet::new(),
            defer: false,
            job: None,
            outside: false,
            signature_keys: None,
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
        if let Some(relay) = self.relay.as_mut() {
            if relay.after > 0 {
                relay.after -= 1;
            } else if let Some(o) = relay.next(&self.topo) {
                return Some(o);
            } else {
                self.relay = None;
            }
        }
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
            Phase::Input { u2, received, .. } => u2
                .iter()
                .copied()
                .filter(|m| !received.contains_key(m))
                .collect(),
            Phase::Consistency {
                checked,
                signatures,
                ..
            } => checked
                .survivors
                .iter()
                .copied()
                .filter(|m| !signatures.contains_key(m))
                .collect(),
            Phase::Unmask {
                signers, responses, ..
            } => signers
                .iter()
                .copied()
                .filter(|m| !responses.contains_key(m))
                .collect(),
            Phase::Unmasking | Phase::Done => Vec::new(),
        }
    }

    /// Members the current stage still waits for that are not known to
    /// have gone ([`Self::pending`] less [`Self::handle_member_gone`]'s).
    pub fn awaited(&self) -> Vec<MemberId> {
        let mut p = self.pending();
        p.retain(|m| !self.gone.contains(m));
        p
    }

    /// Close the current stage if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.close_stage(now);
            self.close_while_only_gone_wait(now);
        }
    }

    /// `member` is known to have left the round (its connection closed and
    /// it did not come back in time): no stage waits for it any more, so a
    /// stage whose remaining members have all gone closes now rather than at
    /// its deadline. This changes only *when* a stage closes — exactly as if
    /// its deadline had passed — never what a late message would have been
    /// checked against; a message `member` still sends for the open stage is
    /// accepted as usual.
    pub fn handle_member_gone(&mut self, member: MemberId, now: Instant) {
        if !self.topo.contains(member) {
            return;
        }
        self.gone.insert(member);
        self.close_while_only_gone_wait(now);
    }

    /// Close stages for as long as every member the open stage waits for has
    /// gone (each close moves to the next stage or ends the round).
    fn close_while_only_gone_wait(&mut self, now: Instant) {
        // Called after every accepted message: nothing to do (and no
        // allocation) unless some member has gone.
        if self.gone.is_empty() {
            return;
        }
        for _ in 0..6 {
            if matches!(self.phase, Phase::Done) {
                return;
            }
            let pending = self.pending();
            if pending.is_empty() || !pending.iter().all(|m| self.gone.contains(m)) {
                return;
            }
            self.close_stage(now);
        }
    }

    /// Abort the round (for example on shutdown).
    pub fn abort(&mut self, reason: &str) {
        if !matches!(self.phase, Phase::Done) {
            self.finish(Err(ProtocolError::Aborted {
                reason: reason.to_owned(),
            }));
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
        self.close_while_only_gone_wait(now);
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
                || s.ciphertext.len() > super::MAX_SEALED_SHARE_BYTES
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
        // A site leaves out peers whose adverts it refused, but it needs t.
        if got.len() < self.cfg.params.t {
            return Err(ProtocolError::Malformed {
                member: from,
                reason: format!(
                    "shares for {} neighbours, threshold is {}",
                    got.len(),
                    self.cfg.params.t
                ),
            });
        }
        self.commitments.insert(from, bundle.seed_commitment);
        bundles.insert(from, bundle.shares);
        if bundles.len() == u1.len() {
            self.close_stage(now);
        }
        self.close_while_only_gone_wait(now);
        Ok(())
    }

    /// Stage 3: a member's complete masked vector and its signed masking set;
    /// the vector is added into the sum at once.
    pub fn handle_masked_input(
        &mut self,
        round: u64,
        from: MemberId,
        vector: &[R],
        masking: MaskingSet,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.accept_input(round, from, vector.len(), Some(vector), masking, now)
    }

    /// Check and record `from`'s input of `len` elements, adding `vector`
    /// into the sum unless the caller keeps it ([`Self::sum_outside`]).
    fn accept_input(
        &mut self,
        round: u64,
        from: MemberId,
        len: usize,
        vector: Option<&[R]>,
        masking: MaskingSet,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(round, Stage::MaskedInput, from)?;
        if vector.is_some() == self.outside {
            return Err(ProtocolError::Config(
                "the sum of the inputs is kept by exactly one of machine and caller".into(),
            ));
        }
        let topo = &self.topo;
        let Phase::Input { u2, received, acc } = &mut self.phase else {
            return Err(ProtocolError::Ended);
        };
        if !u2.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if received.contains_key(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        if len != self.cfg.vector_len {
            return Err(ProtocolError::WrongLength {
                expected: self.cfg.vector_len,
                got: len,
            });
        }
        let malformed = |reason: &str| ProtocolError::Malformed {
            member: from,
            reason: reason.into(),
        };
        if masking.member != from || masking.round != round {
            return Err(malformed("masking set names another member or round"));
        }
        if masking.peers.windows(2).any(|w| w[0] >= w[1])
            || masking
                .peers
                .iter()
                .any(|&p| !u2.contains(&p) || !topo.are_neighbours(from, p))
            || masking.signature.len() > 128
        {
            return Err(malformed(
                "masking set names a peer that is not a neighbour that shared keys",
            ));
        }
        if let Some(vector) = vector {
            crate::ring::add_assign(acc, vector);
        }
        received.insert(from, masking);
        if received.len() == u2.len() {
            self.close_stage(now);
        }
        self.close_while_only_gone_wait(now);
        Ok(())
    }

    /// Stage 4: a survivor's signature on the survivor set. Checked by the
    /// sites in any case; here too with [`Self::check_signatures`], where an
    /// invalid one is refused with [`ProtocolError::Malformed`] and its
    /// sender no longer awaited.
    pub fn handle_consistency(
        &mut self,
        sig: SurvivorSignature,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(sig.round, Stage::Consistency, sig.member)?;
        let Phase::Consistency {
            checked,
            signatures,
            ..
        } = &self.phase
        else {
            return Err(ProtocolError::Ended);
        };
        let from = sig.member;
        if !checked.survivors.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if signatures.contains_key(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        if sig.signature.len() > 128 {
            return Err(ProtocolError::Malformed {
                member: from,
                reason: "oversized signature".into(),
            });
        }
        self.check_signature(from, &sig.signature, now)?;
        let Phase::Consistency {
            checked,
            signatures,
            ..
        } = &mut self.phase
        else {
            return Err(ProtocolError::Ended);
        };
        signatures.insert(from, sig);
        if signatures.len() == checked.survivors.len() {
            self.close_stage(now);
        }
        self.close_while_only_gone_wait(now);
        Ok(())
    }

    /// Stage 5: a signer's unmask shares.
    pub fn handle_unmask_response(
        &mut self,
        resp: UnmaskResponse,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.check(resp.round, Stage::Unmask, resp.from)?;
        let Phase::Unmask {
            checked,
            masking,
            signers,
            responses,
            ..
        } = &mut self.phase
        else {
            return Err(ProtocolError::Ended);
        };
        let from = resp.from;
        if !signers.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if responses.contains_key(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        let held = masking.get(&from).cloned().unwrap_or_default();
        check_response(&held, checked, &resp)?;
        responses.insert(from, resp);
        if responses.len() == signers.len() {
            self.close_stage(now);
        }
        self.close_while_only_gone_wait(now);
        Ok(())
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
