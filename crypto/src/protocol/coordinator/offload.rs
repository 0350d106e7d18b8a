//! The round's two passes over whole vectors, offered to a caller that holds
//! the machine behind a lock and wants them outside it: the sum of the
//! masked inputs ([`CoordinatorMachine::sum_outside`]) and the unmask as a
//! value — everything it reads, owned — to run elsewhere and hand back
//! ([`CoordinatorMachine::defer_unmask`]). The machine still decides who is
//! in the sum and what the unmask removes; the caller only does arithmetic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{CoordinatorMachine, Phase};
use crate::error::ProtocolError;
use crate::ids::MemberId;
use crate::protocol::consistency::CheckedSurvivors;
use crate::protocol::unmask::Unmasker;
use crate::protocol::{
    CoordinatorOutput, KeyAdvert, MaskingSet, RoundConfig, RoundResult, UnmaskResponse,
};
use crate::ring::RingElement;

/// The unmask of one round, ready to run: the masked sum and the shares,
/// commitments and keys that remove its masks. Holds secrets once run
/// (reconstructed seeds live only inside [`UnmaskJob::run`]).
pub struct UnmaskJob<R: RingElement> {
    pub(super) cfg: RoundConfig,
    pub(super) masking: BTreeMap<MemberId, BTreeSet<MemberId>>,
    pub(super) adverts: BTreeMap<MemberId, KeyAdvert>,
    pub(super) commitments: BTreeMap<MemberId, [u8; 32]>,
    /// Survivors, dropped members and one-sided pairs, as checked.
    pub(super) checked: CheckedSurvivors,
    pub(super) acc: Vec<R>,
    pub(super) responses: BTreeMap<MemberId, UnmaskResponse>,
}

/// What an [`UnmaskJob`] produced, for [`CoordinatorMachine::complete_unmask`].
#[derive(Debug)]
pub struct UnmaskOutcome<R: RingElement> {
    round: u64,
    result: Result<RoundResult<R>, ProtocolError>,
    blamed: BTreeMap<MemberId, String>,
}

impl<R: RingElement> UnmaskJob<R> {
    /// The round it belongs to.
    pub fn round(&self) -> u64 {
        self.cfg.round
    }

    /// The masked sum, when the caller kept it ([`CoordinatorMachine::sum_outside`]).
    pub fn set_sum(&mut self, sum: Vec<R>) -> Result<(), ProtocolError> {
        if sum.len() != self.cfg.vector_len {
            return Err(ProtocolError::WrongLength {
                expected: self.cfg.vector_len,
                got: sum.len(),
            });
        }
        self.acc = sum;
        Ok(())
    }

    /// Reconstruct the secrets and remove every mask from the sum.
    pub fn run(self) -> UnmaskOutcome<R> {
        let unmasker = Unmasker {
            cfg: &self.cfg,
            masking: &self.masking,
            adverts: &self.adverts,
            commitments: &self.commitments,
        };
        let mut blamed = BTreeMap::new();
        let result = unmasker.unmask(&self.checked, self.acc, &self.responses, &mut blamed);
        UnmaskOutcome {
            round: self.cfg.round,
            result,
            blamed,
        }
    }
}

impl<R: RingElement> std::fmt::Debug for UnmaskJob<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnmaskJob")
            .field("round", &self.cfg.round)
            .field("len", &self.acc.len())
            .finish_non_exhaustive()
    }
}

impl<R: RingElement> CoordinatorMachine<R> {
    /// From now on, closing the unmask stage does not unmask: the machine
    /// stays in [`crate::Stage::Unmask`] with no deadline and holds an
    /// [`UnmaskJob`] for [`Self::take_unmask_job`]; the round finishes when
    /// its outcome comes back through [`Self::complete_unmask`]. Without
    /// this the machine runs the job itself when the stage closes.
    pub fn defer_unmask(&mut self) {
        self.defer = true;
    }

    /// The caller keeps the sum of the masked inputs: stage 3 inputs come
    /// in through [`Self::handle_masked_input_outside`], which only checks
    /// and records them, and the caller adds each accepted vector into its
    /// own sum and gives that sum to the [`UnmaskJob`] ([`UnmaskJob::set_sum`]).
    /// Implies [`Self::defer_unmask`]. Only before the input stage opens.
    pub fn sum_outside(&mut self) -> Result<(), ProtocolError> {
        if !matches!(self.phase, Phase::Advertise { .. } | Phase::Share { .. }) {
            return Err(ProtocolError::Config(
                "the sum moves outside only before the input stage".into(),
            ));
        }
        self.outside = true;
        self.defer = true;
        Ok(())
    }

    /// Stage 3 when the caller keeps the sum: the checks and bookkeeping of
    /// [`Self::handle_masked_input`] for `from`'s vector of `len` elements.
    /// On `Ok` the caller must add exactly that vector into its sum before
    /// the unmask job runs; on `Err` it must not add it.
    pub fn handle_masked_input_outside(
        &mut self,
        round: u64,
        from: MemberId,
        len: usize,
        masking: MaskingSet,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        self.accept_input(round, from, len, None, masking, now)
    }

    /// The unmask job, once the unmask stage has closed (deferred mode only).
    pub fn take_unmask_job(&mut self) -> Option<UnmaskJob<R>> {
        self.job.take()
    }

    /// The outcome of this round's [`UnmaskJob`]: report who it blamed and
    /// finish. Ignored unless the machine is waiting for it (a round aborted
    /// meanwhile has already finished).
    pub fn complete_unmask(&mut self, outcome: UnmaskOutcome<R>) {
        if outcome.round != self.cfg.round || !matches!(self.phase, Phase::Unmasking) {
            return;
        }
        for (member, reason) in outcome.blamed {
            self.out
                .push_back(CoordinatorOutput::Blamed { member, reason });
        }
        self.finish(outcome.result);
    }

    /// The unmask stage has closed: run `job` now, or keep it for the caller.
    pub(super) fn unmask_or_defer(&mut self, job: UnmaskJob<R>) {
        self.phase = Phase::Unmasking;
        self.deadline = None;
        if self.defer {
            self.job = Some(job);
        } else {
            self.complete_unmask(job.run());
        }
    }
}
