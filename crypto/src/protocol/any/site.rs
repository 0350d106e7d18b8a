//! [`AnySite`]: a site's machine in either ring.

use std::sync::Arc;

use rand_core::CryptoRng;

use super::RingVec;
use crate::error::ProtocolError;
use crate::ids::{MemberId, Stage};
use crate::protocol::{
    ConsistencyRequest, IdentityVerifier, IncomingShares, KeyAdvert, MaskingSet, NeighbourKeys,
    RoundConfig, ShareBundle, SiteMachine, SiteOutput, SitePolicy, SurvivorSignature,
    UnmaskRequest, UnmaskResponse,
};
use crate::ring::Ring;
use crate::suite::SigningKey;

/// [`SiteOutput`] with the masked vector ring-erased.
#[derive(Debug)]
pub enum AnySiteOutput {
    /// Stage 1: the signed per-round keys.
    Advertise(KeyAdvert),
    /// Stage 2: sealed shares for the neighbours.
    Shares(ShareBundle),
    /// Stage 3: the masked input vector and the signed set of peers it was
    /// masked with.
    MaskedInput {
        /// The masked vector.
        vector: RingVec,
        /// The peers masked with, signed.
        masking: MaskingSet,
    },
    /// Stage 4: the site's signature on the survivor set.
    Consistency(SurvivorSignature),
    /// Stage 5: the shares needed to unmask the sum.
    Unmask(UnmaskResponse),
}

impl AnySiteOutput {
    /// The stage this message belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            AnySiteOutput::Advertise(_) => Stage::AdvertiseKeys,
            AnySiteOutput::Shares(_) => Stage::ShareKeys,
            AnySiteOutput::MaskedInput { .. } => Stage::MaskedInput,
            AnySiteOutput::Consistency(_) => Stage::Consistency,
            AnySiteOutput::Unmask(_) => Stage::Unmask,
        }
    }
}

impl<R> From<SiteOutput<R>> for AnySiteOutput
where
    RingVec: From<Vec<R>>,
{
    fn from(o: SiteOutput<R>) -> Self {
        match o {
            SiteOutput::Advertise(a) => AnySiteOutput::Advertise(a),
            SiteOutput::Shares(b) => AnySiteOutput::Shares(b),
            SiteOutput::MaskedInput { vector, masking } => AnySiteOutput::MaskedInput {
                vector: vector.into(),
                masking,
            },
            SiteOutput::Consistency(s) => AnySiteOutput::Consistency(s),
            SiteOutput::Unmask(u) => AnySiteOutput::Unmask(u),
        }
    }
}

/// One site's side of one round in either ring.
#[derive(Debug)]
pub enum AnySite {
    /// Masks in Z/2^32.
    U32(SiteMachine<u32>),
    /// Masks in Z/2^64.
    U64(SiteMachine<u64>),
}

/// Calls the same expression on whichever machine `$self` holds.
macro_rules! each_site {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnySite::U32($m) => $e,
            AnySite::U64($m) => $e,
        }
    };
}

impl AnySite {
    /// Join round `cfg` in `cfg.ring` as `member` ([`SiteMachine::new`]).
    pub fn new(
        cfg: RoundConfig,
        member: MemberId,
        signing: SigningKey,
        verifier: Arc<dyn IdentityVerifier>,
        policy: &SitePolicy,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ProtocolError> {
        Ok(match cfg.ring {
            Ring::U32 => AnySite::U32(SiteMachine::new(
                cfg, member, signing, verifier, policy, rng,
            )?),
            Ring::U64 => AnySite::U64(SiteMachine::new(
                cfg, member, signing, verifier, policy, rng,
            )?),
        })
    }

    /// Peers this site left out, and why ([`SiteMachine::rejected`]).
    pub fn rejected(&self) -> &[(MemberId, String)] {
        each_site!(self, m => m.rejected())
    }

    /// The round's ring.
    pub fn ring(&self) -> Ring {
        match self {
            AnySite::U32(_) => Ring::U32,
            AnySite::U64(_) => Ring::U64,
        }
    }

    /// The stage this site is waiting in.
    pub fn stage(&self) -> Stage {
        each_site!(self, m => m.stage())
    }

    /// This site's id.
    pub fn member(&self) -> MemberId {
        each_site!(self, m => m.member())
    }

    /// The round configuration.
    pub fn config(&self) -> &RoundConfig {
        each_site!(self, m => m.config())
    }

    /// The next message to send, if any.
    pub fn poll_output(&mut self) -> Option<AnySiteOutput> {
        each_site!(self, m => m.poll_output().map(AnySiteOutput::from))
    }

    /// Stage 2 input ([`SiteMachine::handle_neighbour_keys`]).
    pub fn handle_neighbour_keys(
        &mut self,
        msg: NeighbourKeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(), ProtocolError> {
        each_site!(self, m => m.handle_neighbour_keys(msg, rng))
    }

    /// Stage 3 input ([`SiteMachine::handle_incoming_shares`]).
    pub fn handle_incoming_shares(&mut self, msg: IncomingShares) -> Result<(), ProtocolError> {
        each_site!(self, m => m.handle_incoming_shares(msg))
    }

    /// Stage 3: mask the local input and queue it ([`SiteMachine::handle_input`]).
    /// An input in another ring than the round's is [`ProtocolError::Config`]
    /// and leaves the site as it was.
    pub fn handle_input(&mut self, input: RingVec) -> Result<(), ProtocolError> {
        match (self, input) {
            (AnySite::U32(m), RingVec::U32(v)) => m.handle_input(v),
            (AnySite::U64(m), RingVec::U64(v)) => m.handle_input(v),
            (s, v) => Err(ProtocolError::Config(format!(
                "input vector is in ring {}, the round uses {}",
                v.ring(),
                s.ring()
            ))),
        }
    }

    /// Stage 4 input ([`SiteMachine::handle_consistency_request`]).
    pub fn handle_consistency_request(
        &mut self,
        msg: ConsistencyRequest,
    ) -> Result<(), ProtocolError> {
        each_site!(self, m => m.handle_consistency_request(msg))
    }

    /// Stage 5 input ([`SiteMachine::handle_unmask_request`]).
    pub fn handle_unmask_request(&mut self, msg: UnmaskRequest) -> Result<(), ProtocolError> {
        each_site!(self, m => m.handle_unmask_request(msg))
    }
}
