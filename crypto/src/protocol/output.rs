//! What a coordinator-side aggregator reports. Shared by `CoordinatorMachine`
//! and `PlainAggregator` so callers drain both the same way; defined apart
//! from either so that neither imports the other.

use std::sync::Arc;

use super::{ConsistencyRequest, IncomingShares, MemberId, NeighbourKeys, Stage, UnmaskRequest};
use crate::error::ProtocolError;

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
    /// Ask a survivor to sign the survivor set.
    ConsistencyRequest {
        /// Recipient.
        to: MemberId,
        /// Message: one allocation shared by every survivor's output (it
        /// holds every survivor's masking set, O(n·k)).
        msg: Arc<ConsistencyRequest>,
    },
    /// Ask a signer for its unmask shares.
    UnmaskRequest {
        /// Recipient.
        to: MemberId,
        /// Message, shared by every signer's output.
        msg: Arc<UnmaskRequest>,
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
    /// A member's contribution was found faulty (and left out where it could
    /// be). Reported before the round ends, whatever its outcome.
    Blamed {
        /// Who.
        member: MemberId,
        /// What was wrong.
        reason: String,
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
