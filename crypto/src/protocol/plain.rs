//! A plaintext comparison aggregator: the coordinator side of a round with
//! secure aggregation switched off.
//!
//! Sites send their input vectors unmasked and [`PlainAggregator`] sums them
//! on arrival. It exists to measure what masking costs (and to debug a
//! federation without cryptography in the way), so it applies the same round,
//! membership, duplicate and length checks as
//! [`CoordinatorMachine::handle_masked_input`](super::CoordinatorMachine::handle_masked_input)
//! and reports through the same [`CoordinatorOutput`], but has only one stage:
//! [`Stage::MaskedInput`] until it closes, then [`Stage::Done`]. It offers no
//! privacy whatsoever.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use super::{CoordinatorOutput, MemberId, RoundConfig, RoundResult, Stage};
use crate::error::ProtocolError;
use crate::ring::{self, RingElement};

/// Sums the plaintext input vectors of one round: the coordinator side of a
/// round with secure aggregation switched off, for measuring what masking
/// costs. Same round, membership, duplicate and length checks as
/// [`CoordinatorMachine::handle_masked_input`](super::CoordinatorMachine::handle_masked_input),
/// no privacy whatsoever.
///
/// The stage closes when every cohort member has sent its vector, at the
/// deadline ([`PlainAggregator::handle_timeout`]) or on
/// [`PlainAggregator::abort`]; closing queues exactly one
/// [`CoordinatorOutput::Finished`] (there are no `StageClosed` reports or
/// messages to send).
pub struct PlainAggregator<R: RingElement> {
    round: u64,
    expected: BTreeSet<MemberId>,
    received: BTreeSet<MemberId>,
    acc: Vec<R>,
    /// `Some` while inputs are accepted; taken when the stage closes.
    deadline: Option<Instant>,
    min_survivors: usize,
    out: Option<Result<RoundResult<R>, ProtocolError>>,
    /// Members known to have left ([`Self::handle_member_gone`]).
    gone: BTreeSet<MemberId>,
}

impl<R: RingElement> PlainAggregator<R> {
    /// Start round `round` expecting one vector of `vector_len` elements from
    /// each member of `cohort`, closing at `deadline` at the latest. A result
    /// of fewer than `min_survivors` inputs is reported as
    /// [`ProtocolError::TooFewSurvivors`].
    ///
    /// Nothing is validated: unlike the secure machine there is no graph or
    /// threshold that could be inconsistent.
    pub fn new(
        round: u64,
        cohort: &[MemberId],
        vector_len: usize,
        min_survivors: usize,
        deadline: Instant,
    ) -> Self {
        PlainAggregator {
            round,
            expected: cohort.iter().copied().collect(),
            received: BTreeSet::new(),
            acc: vec![R::default(); vector_len],
            deadline: Some(deadline),
            min_survivors,
            out: None,
            gone: BTreeSet::new(),
        }
    }

    /// [`PlainAggregator::new`] with the round, cohort, vector length and
    /// minimum survivors of `cfg`. The suite, graph and `cfg.ring` play no
    /// part: the element type `R` is the ring.
    pub fn from_config(cfg: &RoundConfig, deadline: Instant) -> Self {
        Self::new(
            cfg.round,
            &cfg.cohort,
            cfg.vector_len,
            cfg.min_survivors,
            deadline,
        )
    }

    /// The round number.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// [`Stage::MaskedInput`] while inputs are accepted, [`Stage::Done`] after.
    pub fn stage(&self) -> Stage {
        if self.deadline.is_some() {
            Stage::MaskedInput
        } else {
            Stage::Done
        }
    }

    /// When the stage closes unless everyone answers first; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Cohort members that have not sent a vector. Unlike
    /// [`CoordinatorMachine::pending`](super::CoordinatorMachine::pending)
    /// this still lists the missing members after the stage has closed.
    pub fn pending(&self) -> Vec<MemberId> {
        self.expected.difference(&self.received).copied().collect()
    }

    /// Members the open stage still waits for that are not known to have
    /// gone; none once it has closed.
    pub fn awaited(&self) -> Vec<MemberId> {
        if self.deadline.is_none() {
            return Vec::new();
        }
        self.expected
            .difference(&self.received)
            .filter(|m| !self.gone.contains(m))
            .copied()
            .collect()
    }

    /// The round's result once the stage has closed (at most once).
    pub fn poll_output(&mut self) -> Option<CoordinatorOutput<R>> {
        self.out.take().map(CoordinatorOutput::Finished)
    }

    /// A member's plaintext vector, added into the sum at once. Checks, in
    /// this order: round, stage still open, membership, duplicate, length.
    /// `now` is taken for symmetry with the secure machine; as there, a vector
    /// that arrives after the deadline but before
    /// [`PlainAggregator::handle_timeout`] still counts.
    pub fn handle_masked_input(
        &mut self,
        round: u64,
        from: MemberId,
        vector: &[R],
        _now: Instant,
    ) -> Result<(), ProtocolError> {
        if round != self.round {
            return Err(ProtocolError::WrongRound {
                expected: self.round,
                got: round,
            });
        }
        if self.deadline.is_none() {
            return Err(ProtocolError::Ended);
        }
        if !self.expected.contains(&from) {
            return Err(ProtocolError::NotParticipant(from));
        }
        if self.received.contains(&from) {
            return Err(ProtocolError::Duplicate(from));
        }
        if vector.len() != self.acc.len() {
            return Err(ProtocolError::WrongLength {
                expected: self.acc.len(),
                got: vector.len(),
            });
        }
        ring::add_assign(&mut self.acc, vector);
        self.received.insert(from);
        self.close_if_only_gone_wait();
        Ok(())
    }

    /// `member` is known to have left the round: stop waiting for it, and
    /// close now when every member still missing has gone (as
    /// [`CoordinatorMachine::handle_member_gone`](super::CoordinatorMachine::handle_member_gone)).
    pub fn handle_member_gone(&mut self, member: MemberId, _now: Instant) {
        if self.expected.contains(&member) {
            self.gone.insert(member);
            self.close_if_only_gone_wait();
        }
    }

    fn close_if_only_gone_wait(&mut self) {
        if self
            .expected
            .difference(&self.received)
            .all(|m| self.gone.contains(m))
        {
            self.close();
        }
    }

    /// Close the stage if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.close();
        }
    }

    /// Stop accepting inputs now. Unlike
    /// [`CoordinatorMachine::abort`](super::CoordinatorMachine::abort) this
    /// closes the stage exactly as a timeout would: with enough survivors the
    /// partial sum is reported as a success, since nothing secret is lost by
    /// releasing it. `_reason` is accepted for symmetry only.
    pub fn abort(&mut self, _reason: &str) {
        self.close();
    }

    /// Close the stage (once) and queue the result.
    fn close(&mut self) {
        if self.deadline.take().is_none() {
            return;
        }
        let survivors: Vec<MemberId> = self.received.iter().copied().collect();
        let dropped: Vec<MemberId> = self.expected.difference(&self.received).copied().collect();
        self.out = Some(if survivors.len() < self.min_survivors {
            Err(ProtocolError::TooFewSurvivors {
                stage: Stage::MaskedInput,
                have: survivors.len(),
                need: self.min_survivors,
            })
        } else {
            Ok(RoundResult {
                sum: std::mem::take(&mut self.acc),
                survivors,
                dropped,
                reconstructions: 0,
            })
        });
    }
}

impl<R: RingElement> fmt::Debug for PlainAggregator<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainAggregator")
            .field("round", &self.round)
            .field("stage", &self.stage())
            .field("deadline", &self.deadline)
            .field("received", &self.received.len())
            .field("expected", &self.expected.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn finished<R: RingElement>(
        p: &mut PlainAggregator<R>,
    ) -> Option<Result<RoundResult<R>, ProtocolError>> {
        match p.poll_output() {
            Some(CoordinatorOutput::Finished(r)) => Some(r),
            Some(other) => panic!("unexpected output {other:?}"),
            None => None,
        }
    }

    #[test]
    fn checks_round_duplicate_and_length() {
        let now = Instant::now();
        let mut p = PlainAggregator::<u32>::new(3, &[1, 2], 2, 2, now + Duration::from_secs(9));
        assert_eq!(p.stage(), Stage::MaskedInput);
        assert!(matches!(
            p.handle_masked_input(2, 1, &[1, 2], now),
            Err(ProtocolError::WrongRound { .. })
        ));
        assert!(matches!(
            p.handle_masked_input(3, 1, &[1], now),
            Err(ProtocolError::WrongLength { .. })
        ));
        assert!(p.handle_masked_input(3, 1, &[1, 2], now).is_ok());
        assert!(matches!(
            p.handle_masked_input(3, 1, &[1, 2], now),
            Err(ProtocolError::Duplicate(1))
        ));
        assert!(matches!(
            p.handle_masked_input(3, 7, &[1, 2], now),
            Err(ProtocolError::NotParticipant(7))
        ));
        assert_eq!(p.pending(), vec![2]);
        assert!(p.handle_masked_input(3, 2, &[5, 5], now).is_ok());
        match finished(&mut p) {
            Some(Ok(r)) => {
                assert_eq!(r.sum, vec![6, 7]);
                assert_eq!(r.survivors, vec![1, 2]);
                assert!(r.dropped.is_empty());
                assert_eq!(r.reconstructions, 0);
            }
            other => panic!("expected a sum, got {other:?}"),
        }
        assert_eq!(p.stage(), Stage::Done);
        assert_eq!(p.poll_timeout(), None);
        assert!(finished(&mut p).is_none(), "the result is reported once");
        assert!(matches!(
            p.handle_masked_input(3, 2, &[5, 5], now),
            Err(ProtocolError::Ended)
        ));
    }

    #[test]
    fn timeout_with_too_few_survivors_fails() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(5);
        let mut p = PlainAggregator::<u64>::new(1, &[1, 2, 3], 1, 2, deadline);
        p.handle_masked_input(1, 2, &[u64::MAX], now).unwrap();
        // Before the deadline nothing happens.
        p.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(p.stage(), Stage::MaskedInput);
        assert!(finished(&mut p).is_none());
        assert_eq!(p.poll_timeout(), Some(deadline));
        p.handle_timeout(deadline);
        assert_eq!(p.stage(), Stage::Done);
        assert_eq!(
            finished(&mut p),
            Some(Err(ProtocolError::TooFewSurvivors {
                stage: Stage::MaskedInput,
                have: 1,
                need: 2,
            }))
        );
        assert_eq!(p.pending(), vec![1, 3]);
        // A second timeout does not report again.
        p.handle_timeout(deadline + Duration::from_secs(1));
        assert!(finished(&mut p).is_none());
    }

    #[test]
    fn timeout_with_enough_survivors_reports_partial_sum() {
        let now = Instant::now();
        let mut p = PlainAggregator::<u32>::new(1, &[1, 2, 3], 2, 2, now);
        p.handle_masked_input(1, 1, &[u32::MAX, 1], now).unwrap();
        p.handle_masked_input(1, 3, &[2, 2], now).unwrap();
        p.handle_timeout(now);
        match finished(&mut p) {
            Some(Ok(r)) => {
                assert_eq!(r.sum, vec![1, 3], "sums wrap in the ring");
                assert_eq!(r.survivors, vec![1, 3]);
                assert_eq!(r.dropped, vec![2]);
            }
            other => panic!("expected a sum, got {other:?}"),
        }
    }

    #[test]
    fn abort_closes_like_a_timeout() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        // Too few inputs: the abort reports the shortfall.
        let mut p = PlainAggregator::<u32>::new(4, &[1, 2, 3], 1, 2, later);
        p.handle_masked_input(4, 1, &[1], now).unwrap();
        p.abort("shutting down");
        assert_eq!(p.stage(), Stage::Done);
        assert_eq!(p.poll_timeout(), None);
        assert!(matches!(
            finished(&mut p),
            Some(Err(ProtocolError::TooFewSurvivors {
                have: 1,
                need: 2,
                ..
            }))
        ));
        assert!(matches!(
            p.handle_masked_input(4, 2, &[1], now),
            Err(ProtocolError::Ended)
        ));
        // Aborting again is a no-op.
        p.abort("again");
        assert!(finished(&mut p).is_none());

        // Enough inputs: the partial sum is released.
        let mut p = PlainAggregator::<u32>::new(4, &[1, 2, 3], 1, 2, later);
        p.handle_masked_input(4, 1, &[1], now).unwrap();
        p.handle_masked_input(4, 2, &[2], now).unwrap();
        p.abort("shutting down");
        assert!(matches!(finished(&mut p), Some(Ok(r)) if r.sum == vec![3]));
    }

    #[test]
    fn from_config_uses_round_cohort_length_and_minimum() {
        let cfg = RoundConfig {
            round: 9,
            suite: crate::suite::Suite::Intl,
            ring: crate::ring::Ring::U64,
            cohort: vec![2, 4, 6],
            params: crate::graph::SecAggParams { k: 2, t: 2 },
            graph_seed: [0; 32],
            vector_len: 3,
            min_survivors: 3,
            max_colluders: 0,
            context: [0; 32],
        };
        let now = Instant::now();
        let mut p = PlainAggregator::<u64>::from_config(&cfg, now);
        assert_eq!(p.round(), 9);
        assert_eq!(p.pending(), vec![2, 4, 6]);
        assert!(matches!(
            p.handle_masked_input(9, 2, &[1, 2], now),
            Err(ProtocolError::WrongLength {
                expected: 3,
                got: 2
            })
        ));
        p.handle_masked_input(9, 2, &[1, 2, 3], now).unwrap();
        p.handle_masked_input(9, 4, &[1, 2, 3], now).unwrap();
        p.handle_timeout(now);
        assert!(matches!(
            finished(&mut p),
            Some(Err(ProtocolError::TooFewSurvivors {
                have: 2,
                need: 3,
                ..
            }))
        ));
    }
}
