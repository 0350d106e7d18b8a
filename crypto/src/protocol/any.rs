//! Ring-erased wrappers around the round machines.
//!
//! The ring of a round ([`Ring::U32`] or [`Ring::U64`]) is only known at run
//! time, from the announced [`RoundConfig`], while the machines are generic
//! over the element type for speed. Without these wrappers every caller keeps
//! its own two-armed enum and writes each call twice; with them the ring is
//! chosen once, in a constructor, and vectors cross the boundary as
//! [`RingVec`] or little-endian bytes.
//!
//! * [`AnySite`] wraps [`SiteMachine<u32>`] / [`SiteMachine<u64>`].
//! * [`AnyCoordinator`] wraps [`CoordinatorMachine`] (secure aggregation) or
//!   [`PlainAggregator`] (plaintext comparison mode), each in both rings.
//!
//! Error conventions, chosen so existing error mappings stay natural:
//!
//! * a key-exchange, share or unmask message given to a *plain* coordinator is
//!   [`ProtocolError::WrongStage`] with `expected: Stage::MaskedInput` (the
//!   only stage a plaintext round has) and `got` the message's stage;
//! * a vector from a peer in the wrong ring, or bytes that are not a whole
//!   number of elements, is [`ProtocolError::Malformed`] naming the sender;
//! * a *local* input in the wrong ring ([`AnySite::handle_input`]) is
//!   [`ProtocolError::Config`], as for a machine built for the wrong ring.

use std::sync::Arc;
use std::time::Instant;

use super::{
    ConsistencyRequest, CoordinatorMachine, CoordinatorOutput, IdentityVerifier, IncomingShares,
    KeyAdvert, MaskingSet, MemberId, NeighbourKeys, PlainAggregator, RoundConfig, RoundResult,
    ShareBundle, Stage, StageTimeouts, SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
use crate::error::ProtocolError;
use crate::ring::{self, ByteLengthError, Ring, RingElement};

/// A vector of ring elements whose ring is known only at run time.
#[derive(Debug, PartialEq, Eq)]
pub enum RingVec {
    /// Elements of Z/2^32.
    U32(Vec<u32>),
    /// Elements of Z/2^64.
    U64(Vec<u64>),
}

impl Clone for RingVec {
    fn clone(&self) -> Self {
        match self {
            RingVec::U32(v) => RingVec::U32(v.clone()),
            RingVec::U64(v) => RingVec::U64(v.clone()),
        }
    }

    /// Reuses `self`'s buffer when the rings match: copying a model-sized
    /// vector into memory already mapped costs a fraction of faulting in
    /// fresh pages.
    fn clone_from(&mut self, source: &Self) {
        match (self, source) {
            (RingVec::U32(a), RingVec::U32(b)) => a.clone_from(b),
            (RingVec::U64(a), RingVec::U64(b)) => a.clone_from(b),
            (a, b) => *a = b.clone(),
        }
    }
}

impl RingVec {
    /// `len` zeros in `ring`.
    pub fn zeros(ring: Ring, len: usize) -> Self {
        match ring {
            Ring::U32 => RingVec::U32(vec![0; len]),
            Ring::U64 => RingVec::U64(vec![0; len]),
        }
    }

    /// The ring of the elements.
    pub fn ring(&self) -> Ring {
        match self {
            RingVec::U32(_) => Ring::U32,
            RingVec::U64(_) => Ring::U64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            RingVec::U32(v) => v.len(),
            RingVec::U64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, if the ring is [`Ring::U32`].
    pub fn as_u32(&self) -> Option<&[u32]> {
        match self {
            RingVec::U32(v) => Some(v),
            RingVec::U64(_) => None,
        }
    }

    /// The elements, if the ring is [`Ring::U64`].
    pub fn as_u64(&self) -> Option<&[u64]> {
        match self {
            RingVec::U64(v) => Some(v),
            RingVec::U32(_) => None,
        }
    }

    /// The elements zero-extended to `u64` (their canonical representatives,
    /// not the centred lift).
    pub fn to_u64_vec(&self) -> Vec<u64> {
        match self {
            RingVec::U32(v) => v.iter().map(|&x| u64::from(x)).collect(),
            RingVec::U64(v) => v.clone(),
        }
    }

    /// The elements' centred lifts ([`RingElement::to_signed`]).
    pub fn to_signed(&self) -> Vec<i64> {
        match self {
            RingVec::U32(v) => v.iter().map(|x| x.to_signed()).collect(),
            RingVec::U64(v) => v.iter().map(|x| x.to_signed()).collect(),
        }
    }

    /// Parses the little-endian wire form of a vector in `ring`
    /// ([`ring::from_le_bytes`]).
    pub fn from_le_bytes(ring: Ring, bytes: &[u8]) -> Result<Self, ByteLengthError> {
        Ok(match ring {
            Ring::U32 => RingVec::U32(ring::from_le_bytes(bytes)?),
            Ring::U64 => RingVec::U64(ring::from_le_bytes(bytes)?),
        })
    }

    /// The little-endian wire form ([`ring::to_le_bytes`]).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            RingVec::U32(v) => ring::to_le_bytes(v),
            RingVec::U64(v) => ring::to_le_bytes(v),
        }
    }
}

impl From<Vec<u32>> for RingVec {
    fn from(v: Vec<u32>) -> Self {
        RingVec::U32(v)
    }
}

impl From<Vec<u64>> for RingVec {
    fn from(v: Vec<u64>) -> Self {
        RingVec::U64(v)
    }
}

/// A successful round with the sum ring-erased; see [`RoundResult`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnyRoundResult {
    /// Σ of the survivors' input vectors in the round's ring.
    pub sum: RingVec,
    /// Members whose inputs are in the sum.
    pub survivors: Vec<MemberId>,
    /// Members that were expected but whose inputs are not in the sum.
    pub dropped: Vec<MemberId>,
    /// Secrets reconstructed (always 0 in plaintext mode).
    pub reconstructions: usize,
}

impl<R> From<RoundResult<R>> for AnyRoundResult
where
    RingVec: From<Vec<R>>,
{
    fn from(r: RoundResult<R>) -> Self {
        AnyRoundResult {
            sum: r.sum.into(),
            survivors: r.survivors,
            dropped: r.dropped,
            reconstructions: r.reconstructions,
        }
    }
}

/// [`CoordinatorOutput`] with the sum ring-erased.
#[derive(Debug)]
pub enum AnyOutput {
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
    /// Ask a survivor to sign the survivor set.
    ConsistencyRequest {
        /// Recipient.
        to: MemberId,
        /// Message, shared by every survivor's output.
        msg: std::sync::Arc<ConsistencyRequest>,
    },
    /// Ask a signer for its unmask shares.
    UnmaskRequest {
        /// Recipient.
        to: MemberId,
        /// Message, shared by every signer's output.
        msg: std::sync::Arc<UnmaskRequest>,
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
    /// A member's contribution was found faulty
    /// ([`CoordinatorOutput::Blamed`]).
    Blamed {
        /// Who.
        member: MemberId,
        /// What was wrong.
        reason: String,
    },
    /// The round ended: the unmasked sum, or why it failed.
    Finished(Result<AnyRoundResult, ProtocolError>),
}

impl<R> From<CoordinatorOutput<R>> for AnyOutput
where
    RingVec: From<Vec<R>>,
{
    fn from(o: CoordinatorOutput<R>) -> Self {
        match o {
            CoordinatorOutput::NeighbourKeys { to, msg } => AnyOutput::NeighbourKeys { to, msg },
            CoordinatorOutput::IncomingShares { to, msg } => AnyOutput::IncomingShares { to, msg },
            CoordinatorOutput::ConsistencyRequest { to, msg } => {
                AnyOutput::ConsistencyRequest { to, msg }
            }
            CoordinatorOutput::UnmaskRequest { to, msg } => AnyOutput::UnmaskRequest { to, msg },
            CoordinatorOutput::StageClosed {
                stage,
                completed,
                dropped,
            } => AnyOutput::StageClosed {
                stage,
                completed,
                dropped,
            },
            CoordinatorOutput::Blamed { member, reason } => AnyOutput::Blamed { member, reason },
            CoordinatorOutput::Finished(r) => AnyOutput::Finished(r.map(AnyRoundResult::from)),
        }
    }
}

/// The coordinator side of one round in either ring, secure or plaintext.
///
/// The secure machines are boxed: they are far larger than the plaintext
/// aggregator, and a round holds exactly one of them.
#[derive(Debug)]
pub enum AnyCoordinator {
    /// Secure aggregation in Z/2^32.
    Secure32(Box<CoordinatorMachine<u32>>),
    /// Secure aggregation in Z/2^64.
    Secure64(Box<CoordinatorMachine<u64>>),
    /// Plaintext comparison mode in Z/2^32.
    Plain32(PlainAggregator<u32>),
    /// Plaintext comparison mode in Z/2^64.
    Plain64(PlainAggregator<u64>),
}

/// Calls the same expression on whichever machine `$self` holds.
macro_rules! each_coordinator {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnyCoordinator::Secure32($m) => $e,
            AnyCoordinator::Secure64($m) => $e,
            AnyCoordinator::Plain32($m) => $e,
            AnyCoordinator::Plain64($m) => $e,
        }
    };
}

impl AnyCoordinator {
    /// A secure-aggregation round in `cfg.ring`, started at `now`
    /// ([`CoordinatorMachine::new`]).
    pub fn secure(
        cfg: RoundConfig,
        timeouts: StageTimeouts,
        now: Instant,
    ) -> Result<Self, ProtocolError> {
        Ok(match cfg.ring {
            Ring::U32 => {
                AnyCoordinator::Secure32(Box::new(CoordinatorMachine::new(cfg, timeouts, now)?))
            }
            Ring::U64 => {
                AnyCoordinator::Secure64(Box::new(CoordinatorMachine::new(cfg, timeouts, now)?))
            }
        })
    }

    /// A plaintext round in `cfg.ring` that closes at `deadline`
    /// ([`PlainAggregator::from_config`]; only the round, ring, cohort,
    /// vector length and minimum survivors of `cfg` are used).
    pub fn plain(cfg: &RoundConfig, deadline: Instant) -> Self {
        match cfg.ring {
            Ring::U32 => AnyCoordinator::Plain32(PlainAggregator::from_config(cfg, deadline)),
            Ring::U64 => AnyCoordinator::Plain64(PlainAggregator::from_config(cfg, deadline)),
        }
    }

    /// Check survivor-set signatures as they arrive
    /// ([`CoordinatorMachine::check_signatures`]); a plaintext round has none.
    pub fn check_signatures(&mut self, keys: Arc<dyn IdentityVerifier>) {
        match self {
            AnyCoordinator::Secure32(m) => m.check_signatures(keys),
            AnyCoordinator::Secure64(m) => m.check_signatures(keys),
            AnyCoordinator::Plain32(_) | AnyCoordinator::Plain64(_) => {}
        }
    }

    /// The round's ring.
    pub fn ring(&self) -> Ring {
        match self {
            AnyCoordinator::Secure32(_) | AnyCoordinator::Plain32(_) => Ring::U32,
            AnyCoordinator::Secure64(_) | AnyCoordinator::Plain64(_) => Ring::U64,
        }
    }

    /// Bytes per element on the wire: 4 or 8.
    pub fn width(&self) -> usize {
        self.ring().bytes()
    }

    /// Whether this is secure aggregation (not plaintext comparison mode).
    pub fn is_secure(&self) -> bool {
        matches!(
            self,
            AnyCoordinator::Secure32(_) | AnyCoordinator::Secure64(_)
        )
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        each_coordinator!(self, m => m.stage())
    }

    /// When the current stage closes unless everyone answers first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        each_coordinator!(self, m => m.poll_timeout())
    }

    /// Close the current stage if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        each_coordinator!(self, m => m.handle_timeout(now))
    }

    /// `member` is known to have left the round: stages stop waiting for it
    /// ([`CoordinatorMachine::handle_member_gone`]).
    pub fn handle_member_gone(&mut self, member: MemberId, now: Instant) {
        each_coordinator!(self, m => m.handle_member_gone(member, now))
    }

    /// Abort the round. A secure round finishes with
    /// [`ProtocolError::Aborted`]; a plaintext one closes as on a timeout
    /// ([`PlainAggregator::abort`]).
    pub fn abort(&mut self, reason: &str) {
        each_coordinator!(self, m => m.abort(reason))
    }

    /// Members the current stage still waits for.
    pub fn pending(&self) -> Vec<MemberId> {
        each_coordinator!(self, m => m.pending())
    }

    /// Members the current stage still waits for, less those known to have
    /// gone.
    pub fn awaited(&self) -> Vec<MemberId> {
        each_coordinator!(self, m => m.awaited())
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<AnyOutput> {
        each_coordinator!(self, m => m.poll_output().map(AnyOutput::from))
    }

    /// The error for a secure-only message given to a plaintext round.
    fn not_secure(got: Stage) -> ProtocolError {
        ProtocolError::WrongStage {
            expected: Stage::MaskedInput,
            got,
        }
    }

    /// Stage 1: a member's advert ([`CoordinatorMachine::handle_advert`]).
    pub fn handle_advert(
        &mut self,
        advert: KeyAdvert,
        identity: Vec<u8>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match self {
            AnyCoordinator::Secure32(m) => m.handle_advert(advert, identity, now),
            AnyCoordinator::Secure64(m) => m.handle_advert(advert, identity, now),
            _ => Err(Self::not_secure(Stage::AdvertiseKeys)),
        }
    }

    /// Stage 2: a member's sealed shares ([`CoordinatorMachine::handle_shares`]).
    pub fn handle_shares(
        &mut self,
        bundle: ShareBundle,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match self {
            AnyCoordinator::Secure32(m) => m.handle_shares(bundle, now),
            AnyCoordinator::Secure64(m) => m.handle_shares(bundle, now),
            _ => Err(Self::not_secure(Stage::ShareKeys)),
        }
    }

    /// Stage 4: a survivor's signature on the survivor set
    /// ([`CoordinatorMachine::handle_consistency`]).
    pub fn handle_consistency(
        &mut self,
        sig: SurvivorSignature,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match self {
            AnyCoordinator::Secure32(m) => m.handle_consistency(sig, now),
            AnyCoordinator::Secure64(m) => m.handle_consistency(sig, now),
            _ => Err(Self::not_secure(Stage::Consistency)),
        }
    }

    /// Stage 5: a signer's unmask shares
    /// ([`CoordinatorMachine::handle_unmask_response`]).
    pub fn handle_unmask_response(
        &mut self,
        resp: UnmaskResponse,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match self {
            AnyCoordinator::Secure32(m) => m.handle_unmask_response(resp, now),
            AnyCoordinator::Secure64(m) => m.handle_unmask_response(resp, now),
            _ => Err(Self::not_secure(Stage::Unmask)),
        }
    }

    /// Stage 3: a member's (masked, or in plaintext mode plain) vector, with
    /// its signed masking set (required in a secure round, ignored in a
    /// plaintext one). A vector in the wrong ring is [`ProtocolError::Malformed`].
    pub fn handle_masked_input(
        &mut self,
        round: u64,
        from: MemberId,
        vector: &RingVec,
        masking: Option<MaskingSet>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let no_set = || ProtocolError::Malformed {
            member: from,
            reason: "masked input without its signed masking set".into(),
        };
        match (self, vector) {
            (AnyCoordinator::Secure32(m), RingVec::U32(v)) => {
                m.handle_masked_input(round, from, v, masking.ok_or_else(no_set)?, now)
            }
            (AnyCoordinator::Secure64(m), RingVec::U64(v)) => {
                m.handle_masked_input(round, from, v, masking.ok_or_else(no_set)?, now)
            }
            (AnyCoordinator::Plain32(m), RingVec::U32(v)) => {
                m.handle_masked_input(round, from, v, now)
            }
            (AnyCoordinator::Plain64(m), RingVec::U64(v)) => {
                m.handle_masked_input(round, from, v, now)
            }
            (c, v) => Err(ProtocolError::Malformed {
                member: from,
                reason: format!(
                    "input vector is in ring {}, the round uses {}",
                    v.ring(),
                    c.ring()
                ),
            }),
        }
    }

    /// Stage 3 from the wire: `bytes` is the little-endian vector. The bytes
    /// are parsed before any other check, so a length that is not a whole
    /// number of elements is [`ProtocolError::Malformed`] (naming `from`)
    /// whatever else is wrong; a whole number of elements but the wrong count
    /// is [`ProtocolError::WrongLength`] as usual.
    pub fn handle_masked_input_bytes(
        &mut self,
        round: u64,
        from: MemberId,
        bytes: &[u8],
        masking: Option<MaskingSet>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let vector =
            RingVec::from_le_bytes(self.ring(), bytes).map_err(|e| ProtocolError::Malformed {
                member: from,
                reason: e.to_string(),
            })?;
        self.handle_masked_input(round, from, &vector, masking, now)
    }
}

mod offload;
mod site;
pub use offload::{AnyUnmaskJob, AnyUnmaskOutcome};
pub use site::{AnySite, AnySiteOutput};

#[cfg(test)]
mod tests;
