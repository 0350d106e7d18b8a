//! The site's side of the federation's rounds, without I/O or awaits.
//!
//! [`RoundDriver`] holds what a site knows between calls — its session, the
//! round in progress with its secure-aggregation machine ([`AnySite`], in
//! whichever ring the round announced), the round it left, the report —
//! and turns each coordinator task into an [`Action`] for the run loop:
//! download the model, compute the local vector, send the queued message,
//! vanish, or stop. The run loop performs the action and reports back
//! ([`RoundDriver::model_downloaded`], [`RoundDriver::input_ready`],
//! [`RoundDriver::sent`]), which may yield the next action.
//!
//! ```text
//!  RoundStart ─▶ SettingUp ─Download─▶ model_downloaded ─┬─ plaintext ─Compute─▶ input_ready ─▶ Plain ─Send
//!                                                        └─ secure ─▶ Secure(AnySite) ─Send(advert)
//!  NeighbourKeys ─▶ Send(shares)   IncomingShares ─Compute─▶ input_ready ─Send(masked + masking set)
//!  ConsistencyRequest ─▶ Send(signature)   UnmaskRequest ─▶ Send(unmask)
//!  RoundEnd ─▶ report      Done ─▶ Done
//! ```
//!
//! Because nothing here awaits, every branch is unit-tested directly
//! (`round/tests.rs`). The parts: this file (a round's tasks), `round/setup.rs`
//! (download, model hash, machine, local job), `round/secure.rs` (secure
//! stages), `round/session.rs` (Join, reconnect), `round/outgoing.rs` (outbox),
//! `round/announce.rs` (replays, stale tasks), `round/contribution.rs` (one
//! training input per model, re-sent exactly; on disk: `round/ledger.rs`),
//! `round/replay.rs` (a replay against the signed set), `round/decline.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_crypto::protocol::{AnySite, IdentityVerifier, RingVec, SitePolicy};
use confide_crypto::stats::stats_len;
use confide_crypto::suite::SigningKey;
use confide_crypto::{Ring, RoundConfig, Stage, Suite};
use confide_proto::v1;
use rand::rngs::StdRng;
use tracing::{debug, info, warn};

use crate::config::{SiteReport, Vanish};
use crate::convert;
use crate::error::ClientError;
use crate::metrics::{RoundOutcome, RoundSummary};
use crate::train::Model;
use crate::trainer::LocalJob;
use crate::wire::EVAL_LEN;

use self::announce::{Announcement, announcement, kind_name, routed};
use self::contribution::{Contributions, Plan};
pub(crate) use self::outgoing::Outgoing;
use self::outgoing::masked_chunks;

/// Makes the neighbour-identity verifier for a round of the given suite
/// (reading the federation CA is the caller's business, hence a hook).
pub(crate) type VerifierFactory =
    Box<dyn Fn(Suite) -> Result<Arc<dyn IdentityVerifier>, ClientError> + Send + Sync>;

/// What the run loop does next.
#[derive(Debug)]
pub(crate) enum Action {
    /// Nothing: wait for the next task.
    Wait,
    /// Download the global model, then call [`RoundDriver::model_downloaded`].
    Download(v1::DownloadModelRequest),
    /// Run the job on a blocking thread, then call [`RoundDriver::input_ready`].
    Compute(LocalJob),
    /// Send [`RoundDriver::outbox`], then call [`RoundDriver::sent`].
    Send,
    /// Fault injection: stop without sending.
    Vanish,
    /// The federation is done.
    Done,
}

/// Where the round in progress is. Replaces a set of flags that could
/// contradict each other (a machine but not kicked off, …).
#[derive(Debug)]
enum Phase {
    /// Announced; the model download or set-up has not finished, so a
    /// replayed announcement restarts it.
    SettingUp,
    /// Secure aggregation: the machine holds this round's keys and shares.
    Secure(Box<AnySite>),
    /// Plaintext comparison mode: the input is queued or sent.
    Plain,
}

/// One round in progress.
#[derive(Debug)]
struct Round {
    start: v1::RoundStart,
    kind: v1::RoundKind,
    cfg: RoundConfig,
    phase: Phase,
    global: Option<Arc<Model>>,
    started: Instant,
    stage_started: Instant,
    /// This site's time per acknowledged stage; also tells whether its
    /// input reached the coordinator.
    stage_secs: Vec<(Stage, f64)>,
    bytes_in: u64,
    bytes_out: u64,
    outbox: Option<Outgoing>,
    /// From the consistency request: (survivors, cohort members not in the sum).
    survivors: Option<(usize, usize)>,
    /// Entries of the machine's `rejected()` already logged.
    rejected_logged: usize,
    /// Train afresh, or replay this site's earlier input on the model.
    plan: Plan,
    /// Site names of the neighbours whose adverts the machine accepted
    /// (verified against their certificates under mTLS), by member id.
    names: BTreeMap<u32, String>,
}

impl Round {
    fn deadline(&self) -> Instant {
        self.stage_started + Duration::from_secs(u64::from(self.start.stage_timeout_secs.max(1)))
    }

    fn submitted(&self) -> bool {
        self.stage_secs
            .iter()
            .any(|(s, _)| *s == Stage::MaskedInput)
    }

    fn summary(&self, outcome: RoundOutcome) -> RoundSummary {
        RoundSummary {
            kind: self.kind,
            outcome,
            stage_secs: self.stage_secs.clone(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }
}

/// Whether the signing key may be replaced when the federation's suite
/// turns out to differ (only a key nobody else has seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// Loaded from the site's signing-key file (bound to its certificate).
    File,
    /// Generated for this run (insecure mode).
    Ephemeral,
}

/// The answer to a Join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    /// Registered; the session is set.
    Session,
    /// The ephemeral key was for another suite: Join again with the new one.
    Retry,
}

/// What to do after a reconnect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Nothing pending.
    Nothing,
    /// Resend [`RoundDriver::outbox`].
    Resend,
}

/// What the driver is built from.
pub(crate) struct DriverConfig {
    /// The site's name (sent with Join).
    pub site: String,
    /// The site's signing key.
    pub signing: SigningKey,
    /// Where the key came from (whether it may be replaced).
    pub key_source: KeySource,
    /// Fault injection.
    pub vanish: Option<Vanish>,
    /// Whether neighbours are checked against certificates (mTLS).
    pub authenticated: bool,
    /// The site's feature count (checks a statistics round's vector length).
    pub num_features: usize,
    /// Makes each secure round's neighbour-identity verifier.
    pub verifier: VerifierFactory,
    /// Whether the site takes part in plaintext rounds (its own policy; the
    /// announcement cannot switch secure aggregation off).
    pub allow_plaintext: bool,
    /// What the site requires of a secure round.
    pub policy: SitePolicy,
    /// Most epochs a round may ask of this site.
    pub max_epochs: u32,
    /// SHA-256 of the federation CA certificate's DER (zeros without TLS),
    /// bound into every round's context.
    pub ca_fingerprint: [u8; 32],
}

/// The site's protocol state across rounds and reconnects.
pub(crate) struct RoundDriver {
    cfg: DriverConfig,
    rng: StdRng,
    session: Option<String>,
    /// The federation named by the last Join, bound into every round's context.
    federation: String,
    round: Option<Round>,
    /// The announcement of a round this site left in this session; its
    /// replay must not start it again (the coordinator holds the first
    /// keys). The whole announcement, not the id: see `announce.rs`.
    left: Option<v1::RoundStart>,
    contributions: Contributions,
    /// The round whose announcement the last task refused before it became
    /// the round in progress (for its Decline, `round/decline.rs`).
    refused_at_start: Option<u64>,
    report: SiteReport,
    /// Rounds ended or left since the run loop last took them (metrics).
    finished: Vec<RoundSummary>,
}

impl RoundDriver {
    pub(crate) fn new(cfg: DriverConfig, rng: StdRng) -> Self {
        RoundDriver {
            cfg,
            rng,
            session: None,
            federation: String::new(),
            round: None,
            left: None,
            contributions: Contributions::default(),
            refused_at_start: None,
            report: SiteReport::default(),
            finished: Vec::new(),
        }
    }

    pub(crate) fn report(&self) -> SiteReport {
        self.report
    }

    pub(crate) fn report_mut(&mut self) -> &mut SiteReport {
        &mut self.report
    }

    /// The round in progress, for logs.
    pub(crate) fn current_round(&self) -> Option<u64> {
        self.round.as_ref().map(|r| r.start.round)
    }

    /// Ends this site's part in the round in progress.
    pub(crate) fn leave_round(&mut self) {
        if let Some(r) = self.round.take() {
            self.left = Some(r.start.clone());
            self.finished.push(r.summary(RoundOutcome::left));
        }
    }

    /// The rounds that ended or were left since the last call.
    pub(crate) fn take_finished(&mut self) -> Vec<RoundSummary> {
        std::mem::take(&mut self.finished)
    }

    fn session_str(&self) -> String {
        self.session.clone().unwrap_or_default()
    }

    /// After the coordinator answered `RESOURCE_EXHAUSTED` (its per-site
    /// rate limit or its upload slots) to attempt `attempt` (0-based) of a
    /// call in this round: how long to wait before trying again —
    /// exponential from 100 ms, capped at 2 s, scaled by `jitter` in
    /// [0.5, 1] so that sites refused together do not return together — or
    /// `None` when the stage deadline would pass first (the round then goes
    /// on without this message, as for any refused one).
    pub(crate) fn busy_backoff(&self, attempt: u32, jitter: f64, now: Instant) -> Option<Duration> {
        let r = self.round.as_ref()?;
        let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(5));
        let wait = base
            .min(Duration::from_secs(2))
            .mul_f64(jitter.clamp(0.5, 1.0));
        (now + wait < r.deadline()).then_some(wait)
    }

    /// The message to send, stamped with the current session.
    pub(crate) fn outbox(&self) -> Option<Outgoing> {
        let mut out = self.round.as_ref()?.outbox.clone()?;
        out.set_session(&self.session_str());
        Some(out)
    }

    /// The coordinator acknowledged the outbox (or had it already).
    pub(crate) fn sent(&mut self, now: Instant) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        let Some(out) = r.outbox.take() else {
            return;
        };
        let (stage, bytes) = (out.stage(), out.bytes());
        r.bytes_out += bytes;
        // This site's time in the stage: from its input arriving to its
        // message being acknowledged (local work plus upload).
        r.stage_secs
            .push((stage, (now - r.stage_started).as_secs_f64()));
        r.stage_started = now;
        debug!(round = r.start.round, %stage, bytes, "sent");
    }

    /// Queues `out`, unless this is where the site must vanish.
    fn queue(&mut self, out: Outgoing) -> Action {
        let Some(r) = self.round.as_mut() else {
            return Action::Wait;
        };
        if Vanish::hits(self.cfg.vanish, r.start.round, out.stage()) {
            warn!(round = r.start.round, stage = %out.stage(), "fault injection: vanishing now");
            return Action::Vanish;
        }
        r.outbox = Some(out);
        Action::Send
    }

    fn vanish_now(&self, stage: Stage) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| Vanish::hits(self.cfg.vanish, r.start.round, stage))
    }

    /// The round in progress if it is `round`; other rounds' tasks are stale
    /// (a replay after reconnect, or a round this site left).
    fn current(&mut self, round: u64, what: &str) -> Option<&mut Round> {
        let current = self.current_round();
        if current != Some(round) {
            debug!(
                round,
                ?current,
                what,
                "ignoring a task for a round this site is not in"
            );
            return None;
        }
        self.round.as_mut()
    }

    /// One task from the coordinator.
    pub(crate) fn on_task(&mut self, task: v1::Task, now: Instant) -> Result<Action, ClientError> {
        use v1::task::Kind;
        let Some(kind) = task.kind else {
            warn!("empty task ignored");
            return Ok(Action::Wait);
        };
        self.refused_at_start = None;
        match kind {
            Kind::RoundStart(rs) => {
                let round = rs.round;
                let started = self.on_round_start(rs, now);
                if started.is_err() && self.round.is_none() {
                    self.refused_at_start = Some(round);
                }
                started
            }
            Kind::NeighbourKeys(nk) => self.on_neighbour_keys(nk, now),
            Kind::IncomingShares(is) => self.on_incoming_shares(is, now),
            Kind::ConsistencyRequest(c) => self.on_consistency_request(c, now),
            Kind::UnmaskRequest(ur) => self.on_unmask_request(ur, now),
            Kind::RoundEnd(end) => {
                self.on_round_end(end, now);
                Ok(Action::Wait)
            }
            Kind::Done(d) => {
                info!(
                    rounds = d.rounds,
                    site_rounds = self.report.rounds,
                    "federation done"
                );
                Ok(Action::Done)
            }
            // The transport puts parts back together; none reaches here.
            Kind::Part(_) => Ok(Action::Wait),
        }
    }

    fn on_round_end(&mut self, end: v1::RoundEnd, now: Instant) {
        let Some(r) = self.round.take_if(|r| r.start.round == end.round) else {
            info!(round = end.round, success = end.success, message = %end.message, "round ended (this site was not taking part)");
            return;
        };
        if end.success && r.submitted() {
            self.report.rounds += 1;
        }
        let outcome = match (end.success, r.submitted()) {
            (false, _) => RoundOutcome::failed,
            (true, true) => RoundOutcome::succeeded,
            (true, false) => RoundOutcome::not_included,
        };
        self.finished.push(r.summary(outcome));
        let stages: Vec<String> = r
            .stage_secs
            .iter()
            .map(|(s, d)| format!("{s}={d:.3}s"))
            .collect();
        info!(
            round = end.round,
            kind = kind_name(r.kind),
            success = end.success,
            message = %end.message,
            duration_secs = (now - r.started).as_secs_f64(),
            stages = %stages.join(" "),
            survivors = r.survivors.map(|s| s.0),
            dropped = r.survivors.map(|s| s.1),
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            "round ended"
        );
    }

    fn on_round_start(&mut self, rs: v1::RoundStart, now: Instant) -> Result<Action, ClientError> {
        let current = self
            .round
            .as_ref()
            .map(|r| (&r.start, !matches!(r.phase, Phase::SettingUp)));
        match announcement(current, self.left.as_ref(), &rs) {
            Announcement::Ignore => {
                debug!(round = rs.round, "repeated announcement ignored");
                return Ok(Action::Wait);
            }
            Announcement::Restart => {
                info!(
                    round = rs.round,
                    "round set-up was interrupted; starting it again"
                );
            }
            Announcement::Start => {
                if let Some(old) = &self.round {
                    warn!(
                        round = old.start.round,
                        "a new round started before this one ended here"
                    );
                }
            }
        }
        self.round = None;
        self.report.last_round = self.report.last_round.max(rs.round);
        let invalid = |e: convert::ConvertError| ClientError::InvalidRound(e.to_string());
        let cfg = convert::round_config(&rs, &self.federation, &self.cfg.ca_fingerprint)
            .map_err(invalid)?;
        let kind = v1::RoundKind::try_from(rs.kind)
            .map_err(|_| ClientError::InvalidRound(format!("unknown round kind {}", rs.kind)))?;
        info!(
            round = rs.round,
            kind = kind_name(kind),
            member = rs.member,
            cohort = rs.cohort.len(),
            plaintext = rs.plaintext,
            "round started"
        );
        let plaintext = rs.plaintext;
        if plaintext && !self.cfg.allow_plaintext {
            // Refused before anything is computed; replays of this round's
            // tasks are then ignored like those of any round left.
            self.left = Some(rs.clone());
            return Err(ClientError::PlaintextRefused { round: rs.round });
        }
        // Only a training round trains; statistics and evaluation rounds
        // carry no settings to bound.
        let training = rs.training.clone().unwrap_or_default();
        if kind == v1::RoundKind::Train
            && let Some(why) = bounds::refuse_training(&training, self.cfg.max_epochs)
        {
            self.left = Some(rs.clone());
            return Err(ClientError::TrainingRefused {
                round: rs.round,
                why,
            });
        }
        let plan = match self.contributions.plan(&self.federation, &rs) {
            Ok(plan) => plan,
            Err(e) => {
                self.left = Some(rs.clone());
                return Err(e);
            }
        };
        let download = v1::DownloadModelRequest {
            session: self.session_str(),
            round: rs.round,
        };
        self.round = Some(Round {
            start: rs,
            kind,
            cfg: cfg.clone(),
            phase: Phase::SettingUp,
            global: None,
            started: now,
            stage_started: now,
            stage_secs: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            outbox: None,
            survivors: None,
            rejected_logged: 0,
            plan,
            names: BTreeMap::new(),
        });
        match kind {
            v1::RoundKind::Statistics => {
                if cfg.ring != Ring::U64 {
                    return Err(ClientError::InvalidRound(format!(
                        "statistics rounds use ring u64, got {}",
                        cfg.ring
                    )));
                }
                let want = stats_len(self.cfg.num_features);
                if cfg.vector_len != want {
                    return Err(ClientError::InvalidRound(format!(
                        "statistics vector of {} elements announced, this site's {} features need {want}",
                        cfg.vector_len, self.cfg.num_features
                    )));
                }
                self.kick_off()
            }
            v1::RoundKind::Evaluate | v1::RoundKind::Train => {
                if kind == v1::RoundKind::Evaluate && cfg.vector_len != EVAL_LEN {
                    return Err(ClientError::InvalidRound(format!(
                        "evaluation vector of {} elements announced, expected {EVAL_LEN}",
                        cfg.vector_len
                    )));
                }
                if self.vanish_now(Stage::AdvertiseKeys) && !plaintext {
                    return Ok(Action::Vanish);
                }
                Ok(Action::Download(download))
            }
            v1::RoundKind::Unspecified => {
                Err(ClientError::InvalidRound("round kind unspecified".into()))
            }
        }
    }

    /// The local vector is ready (for [`Action::Compute`]): mask it or, in
    /// plaintext mode, send it as is.
    pub(crate) fn input_ready(&mut self, v: RingVec) -> Result<Action, ClientError> {
        let session = self.session_str();
        let Some(r) = self.round.as_mut() else {
            return Ok(Action::Wait);
        };
        // The exact input of a secure training round, kept for a replay.
        let mut kept = None;
        let out = match &mut r.phase {
            Phase::SettingUp | Phase::Plain => {
                r.phase = Phase::Plain;
                let chunks = masked_chunks(&session, &r.start, &v, None);
                Some(Outgoing::Masked(chunks))
            }
            Phase::Secure(m) => {
                if v.ring() != m.ring() {
                    return Err(ClientError::InvalidRound(
                        "vector ring differs from the round's ring".into(),
                    ));
                }
                if r.kind == v1::RoundKind::Train {
                    kept = Some(self.contributions.copy_for_replay(&v));
                }
                if routed(m.handle_input(v))? {
                    match m.poll_output() {
                        Some(o) => {
                            replay::check_masking(r, &self.cfg.site, &o)?;
                            Some(self.contributions.outgoing(o, &session, &r.start))
                        }
                        None => None,
                    }
                } else {
                    None
                }
            }
        };
        let Some(out) = out else {
            return Ok(Action::Wait);
        };
        let action = self.queue(out);
        if matches!(action, Action::Send)
            && let Some(r) = self.round.as_ref()
            && matches!(r.phase, Phase::Plain)
        {
            // A plain update is readable the moment it leaves the site.
            let c = &mut self.contributions;
            c.record_plain(&self.federation, &r.start)?;
        }
        if matches!(action, Action::Send)
            && let (Some(r), Some(x)) = (self.round.as_ref(), kept)
        {
            self.contributions
                .remember_input(&self.federation, &r.start, x)?;
        }
        Ok(action)
    }
}

mod announce;
mod bounds;
mod contribution;
mod decline;
mod ledger;
mod outgoing;
mod replay;
mod secure;
mod session;
mod setup;
#[cfg(test)]
mod tests;
