//! The sum kept by the caller and the deferred unmask, in either ring
//! ([`crate::protocol::CoordinatorMachine::sum_outside`],
//! [`crate::protocol::CoordinatorMachine::defer_unmask`]).

use std::time::Instant;

use super::{AnyCoordinator, RingVec};
use crate::error::ProtocolError;
use crate::ids::MemberId;
use crate::protocol::{MaskingSet, UnmaskJob, UnmaskOutcome};

/// An [`UnmaskJob`] in either ring; `Send`, so it can run on another thread.
#[derive(Debug)]
pub enum AnyUnmaskJob {
    /// Z/2^32.
    U32(UnmaskJob<u32>),
    /// Z/2^64.
    U64(UnmaskJob<u64>),
}

/// What an [`AnyUnmaskJob`] produced, for [`AnyCoordinator::complete_unmask`].
#[derive(Debug)]
pub enum AnyUnmaskOutcome {
    /// Z/2^32.
    U32(UnmaskOutcome<u32>),
    /// Z/2^64.
    U64(UnmaskOutcome<u64>),
}

impl AnyUnmaskJob {
    /// The round it belongs to.
    pub fn round(&self) -> u64 {
        match self {
            AnyUnmaskJob::U32(j) => j.round(),
            AnyUnmaskJob::U64(j) => j.round(),
        }
    }

    /// The masked sum the caller kept ([`UnmaskJob::set_sum`]); a sum in
    /// the other ring is [`ProtocolError::Config`].
    pub fn set_sum(&mut self, sum: RingVec) -> Result<(), ProtocolError> {
        match (self, sum) {
            (AnyUnmaskJob::U32(j), RingVec::U32(s)) => j.set_sum(s),
            (AnyUnmaskJob::U64(j), RingVec::U64(s)) => j.set_sum(s),
            _ => Err(ProtocolError::Config("sum in the wrong ring".into())),
        }
    }

    /// Remove every mask from the sum ([`UnmaskJob::run`]).
    pub fn run(self) -> AnyUnmaskOutcome {
        match self {
            AnyUnmaskJob::U32(j) => AnyUnmaskOutcome::U32(j.run()),
            AnyUnmaskJob::U64(j) => AnyUnmaskOutcome::U64(j.run()),
        }
    }
}

impl AnyCoordinator {
    /// Leave the unmask to the caller ([`crate::protocol::CoordinatorMachine::defer_unmask`]);
    /// a plaintext round has none.
    pub fn defer_unmask(&mut self) {
        match self {
            AnyCoordinator::Secure32(m) => m.defer_unmask(),
            AnyCoordinator::Secure64(m) => m.defer_unmask(),
            AnyCoordinator::Plain32(_) | AnyCoordinator::Plain64(_) => {}
        }
    }

    /// The caller keeps the sum of the masked inputs
    /// ([`crate::protocol::CoordinatorMachine::sum_outside`]); `false` (and
    /// nothing changes) for a plaintext round, which keeps its own.
    pub fn sum_outside(&mut self) -> Result<bool, ProtocolError> {
        match self {
            AnyCoordinator::Secure32(m) => m.sum_outside().map(|()| true),
            AnyCoordinator::Secure64(m) => m.sum_outside().map(|()| true),
            AnyCoordinator::Plain32(_) | AnyCoordinator::Plain64(_) => Ok(false),
        }
    }

    /// Stage 3 when the caller keeps the sum
    /// ([`crate::protocol::CoordinatorMachine::handle_masked_input_outside`]):
    /// on `Ok` the caller adds the vector of `len` elements into its sum.
    pub fn handle_masked_input_outside(
        &mut self,
        round: u64,
        from: MemberId,
        len: usize,
        masking: Option<MaskingSet>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let masking = masking.ok_or_else(|| ProtocolError::Malformed {
            member: from,
            reason: "masked input without its signed masking set".into(),
        })?;
        match self {
            AnyCoordinator::Secure32(m) => {
                m.handle_masked_input_outside(round, from, len, masking, now)
            }
            AnyCoordinator::Secure64(m) => {
                m.handle_masked_input_outside(round, from, len, masking, now)
            }
            AnyCoordinator::Plain32(_) | AnyCoordinator::Plain64(_) => Err(ProtocolError::Config(
                "a plaintext round keeps its own sum".into(),
            )),
        }
    }

    /// The unmask job, once the unmask stage has closed in deferred mode
    /// ([`crate::protocol::CoordinatorMachine::take_unmask_job`]).
    pub fn take_unmask_job(&mut self) -> Option<AnyUnmaskJob> {
        match self {
            AnyCoordinator::Secure32(m) => m.take_unmask_job().map(AnyUnmaskJob::U32),
            AnyCoordinator::Secure64(m) => m.take_unmask_job().map(AnyUnmaskJob::U64),
            AnyCoordinator::Plain32(_) | AnyCoordinator::Plain64(_) => None,
        }
    }

    /// Finish the round with its job's outcome
    /// ([`crate::protocol::CoordinatorMachine::complete_unmask`]); an outcome of the other
    /// ring or another round is ignored.
    pub fn complete_unmask(&mut self, outcome: AnyUnmaskOutcome) {
        match (self, outcome) {
            (AnyCoordinator::Secure32(m), AnyUnmaskOutcome::U32(o)) => m.complete_unmask(o),
            (AnyCoordinator::Secure64(m), AnyUnmaskOutcome::U64(o)) => m.complete_unmask(o),
            _ => {}
        }
    }
}
