//! The active round: the crypto machine ([`AnyCoordinator`]) with the
//! round's bookkeeping. Site messages are routed into the machine by one
//! helper ([`ActiveRound::deliver`]); the machine's outputs become tasks on
//! the cohort's streams ([`ActiveRound::pump`]); masked inputs arrive as
//! bounded [`Upload`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_crypto::protocol::{AnyCoordinator, AnyOutput, AnyRoundResult, AnyUnmaskJob};
use confide_crypto::protocol::{
    ConsistencyRequest, KeyAdvert, MaskingSet, ShareBundle, SurvivorSignature, UnmaskRequest,
    UnmaskResponse,
};
use confide_crypto::{MemberId, ProtocolError, Stage};
use confide_proto::convert;
use confide_proto::layout::Packing;
use confide_proto::model::ModelImage;
use confide_proto::task_parts::AdvertPiece;
use confide_proto::v1 as pb;
use tracing::{error, info, warn};

use super::registry::{OutTask, Registry, SessionInfo, SharedTask};
use super::scheduler::RoundKind;
use super::sealed::SealedShares;
use super::task_file::TaskFile;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::settings::SecAggSettings;
use crate::transcript::StageRecord;

/// Wraps a task kind.
pub fn task(kind: pb::task::Kind) -> pb::Task {
    pb::Task { kind: Some(kind) }
}

/// The task for `msg` with its encoded length: the cached one when `msg` is
/// the message last converted (the machine hands every recipient the same
/// allocation), else `build(msg)`, now cached.
fn shared<M>(
    cache: &mut Option<(Arc<M>, SharedTask, u64)>,
    msg: Arc<M>,
    build: impl FnOnce(&M) -> pb::Task,
) -> (SharedTask, u64) {
    if let Some((m, t, len)) = cache.as_ref()
        && Arc::ptr_eq(m, &msg)
    {
        return (t.clone(), *len);
    }
    let t = OutTask::new(build(&msg));
    let len = t.task.encoded_len() as u64;
    let t = Arc::new(t);
    *cache = Some((msg, t.clone(), len));
    (t, len)
}

/// A site's stage message, converted from the wire.
#[derive(Debug)]
pub enum SiteMessage {
    /// Stage 1: the site's advert, its verifying key and its TLS certificate.
    Advert {
        /// The advert.
        advert: KeyAdvert,
        /// The verifying key the site joined with.
        identity: Vec<u8>,
        /// DER of the TLS certificate presented (empty in insecure mode).
        certificate: Vec<u8>,
    },
    /// Stage 2: sealed shares.
    Shares(ShareBundle),
    /// Stage 3: the (masked) vector, little-endian, and the signed set of
    /// peers it was masked with (none in plaintext mode).
    Input {
        /// The vector.
        vector: Vec<u8>,
        /// The masking set from the upload's first chunk.
        masking: Option<MaskingSet>,
    },
    /// Stage 4: a signature on the survivor set.
    Consistency(SurvivorSignature),
    /// Stage 5: unmask shares.
    Unmask(UnmaskResponse),
}

impl SiteMessage {
    /// The stage this message answers.
    fn stage(&self) -> Stage {
        match self {
            SiteMessage::Advert { .. } => Stage::AdvertiseKeys,
            SiteMessage::Shares(_) => Stage::ShareKeys,
            SiteMessage::Input { .. } => Stage::MaskedInput,
            SiteMessage::Consistency(_) => Stage::Consistency,
            SiteMessage::Unmask(_) => Stage::Unmask,
        }
    }

    /// Payload bytes, for the round's traffic counters.
    fn payload_bytes(&self) -> u64 {
        let n = match self {
            SiteMessage::Advert { advert, .. } => {
                advert.enc_public.len() + advert.mask_public.len() + advert.signature.len()
            }
            SiteMessage::Shares(b) => b.shares.iter().map(|s| s.ciphertext.len() + 8).sum(),
            SiteMessage::Input { vector, masking } => {
                vector.len()
                    + masking
                        .as_ref()
                        .map_or(0, |m| 4 * m.peers.len() + m.signature.len())
            }
            SiteMessage::Consistency(s) => s.signature.len(),
            SiteMessage::Unmask(r) => (r.seed_shares.len() + r.key_shares.len()) * 48,
        };
        n as u64
    }
}

/// The round in progress.
pub struct ActiveRound {
    /// Round id.
    pub id: u64,
    /// Kind.
    pub kind: RoundKind,
    /// Cohort members' site names.
    pub names: BTreeMap<MemberId, String>,
    /// Each member's site name and TLS certificate as presented with its
    /// advert this round: what neighbours get relayed to check the binding.
    relayed: BTreeMap<MemberId, convert::RelayedIdentity>,
    /// The crypto machine.
    pub machine: AnyCoordinator,
    /// Elements of each site's vector.
    pub vector_len: usize,
    /// The model the round started from (served as safetensors).
    pub model: Arc<ModelImage>,
    /// The machine's result, once it finished.
    pub result: Option<Result<AnyRoundResult, ProtocolError>>,
    /// The unmask, once its stage closed: the driver runs it off the
    /// federation's lock and hands the outcome back to the machine.
    pub unmask_job: Option<AnyUnmaskJob>,
    /// The sum of the masked inputs, kept off the lock (secure rounds).
    pub(super) sum: Option<Arc<super::sum::OutsideSum>>,
    /// How each upload travels (`confide_proto::layout::round_packing`).
    pub(super) packing: Packing,
    /// Start.
    pub started: Instant,
    stage_started: Instant,
    /// Who completed and who dropped at each closed stage (the transcript's).
    pub stages: Vec<StageRecord>,
    /// Members whose message of the open stage the machine accepted: of
    /// those it drops, these were pruned rather than silent.
    pub(super) answered: BTreeSet<MemberId>,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Each advertiser's advert as relayed, encoded once for all the
    /// NeighbourKeys it goes into.
    advert_pieces: BTreeMap<MemberId, AdvertPiece>,
    /// Every task sent to each member this round, replayed when its stream
    /// reconnects (sites ignore what they already handled).
    pub sent: BTreeMap<MemberId, Vec<SharedTask>>,
    /// Sites the machine found faulty, and why.
    pub blamed: Vec<(String, String)>,
    /// Sites that declined the round (`federation/decline.rs`), and why.
    pub declined: Vec<(String, String)>,
    /// Members whose task stream closed this round, and when; cleared when
    /// the stream reopens ([`ActiveRound::expire_lost`]).
    pub lost: BTreeMap<MemberId, Instant>,
    metrics: Arc<Metrics>,
    /// Where the sealed shares wait for their recipients (`task_file.rs`);
    /// `None`: in memory.
    pub spill_dir: Option<PathBuf>,
    /// The file, once the first shares arrive.
    task_file: Option<TaskFile>,
    /// The accepted bundles' ciphertexts until the share-keys stage routes
    /// them (`sealed.rs`).
    sealed: SealedShares,
}

impl ActiveRound {
    /// A round started at `now`, nothing sent yet; its stage durations go
    /// to `metrics`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        kind: RoundKind,
        names: BTreeMap<MemberId, String>,
        machine: AnyCoordinator,
        vector_len: usize,
        model: Arc<ModelImage>,
        now: Instant,
        metrics: Arc<Metrics>,
    ) -> Self {
        ActiveRound {
            id,
            kind,
            names,
            relayed: BTreeMap::new(),
            packing: Packing::plain(machine.ring(), vector_len),
            machine,
            vector_len,
            model,
            result: None,
            unmask_job: None,
            sum: None,
            started: now,
            stage_started: now,
            stages: Vec::new(),
            answered: BTreeSet::new(),
            bytes_in: 0,
            bytes_out: 0,
            advert_pieces: BTreeMap::new(),
            sent: BTreeMap::new(),
            blamed: Vec::new(),
            declined: Vec::new(),
            lost: BTreeMap::new(),
            metrics,
            spill_dir: None,
            task_file: None,
            sealed: SealedShares::default(),
        }
    }

    /// Members the open stage waits for in all: the cohort, then those that
    /// completed the stage before (for the progress display).
    pub fn stage_members(&self) -> usize {
        self.stages
            .last()
            .map_or(self.names.len(), |s| s.completed.len())
    }

    /// Seconds per closed stage (the round table's), from the stage records.
    pub fn stage_secs(&self) -> Vec<(String, f64)> {
        self.stages
            .iter()
            .map(|s| (s.stage.clone(), s.secs))
            .collect()
    }

    /// Members whose stream has been closed for the reconnect grace by `now` are gone
    /// for the rest of the round: the machine stops waiting for them
    /// (returned, for the log). Pure in `now`, like the stage deadlines.
    ///
    /// The grace is cut short when the open stage waits for nobody but lost
    /// members and they, with those the round has already dropped, are no
    /// more than the dropout it was sized for
    /// ([`SecAggSettings::dropout_allowance`]): holding every survivor back
    /// for a site that may never return costs the whole cohort, while the
    /// grace still covers a site whose connection breaks while others are
    /// working, and a wider outage, which looks like the network rather
    /// than a few dead sites.
    pub fn expire_lost(&mut self, now: Instant, secagg: &SecAggSettings) -> Vec<MemberId> {
        let grace = Duration::from_secs_f64(secagg.reconnect_grace_secs);
        let mut expired: Vec<MemberId> = self
            .lost
            .iter()
            .filter(|&(_, &since)| now >= since + grace)
            .map(|(&m, _)| m)
            .collect();
        if expired.len() < self.lost.len() {
            let awaited = self.machine.awaited();
            let allowance = secagg.dropout_allowance(self.names.len());
            let dropped = self.names.len().saturating_sub(self.stage_members());
            if only_lost_within(&awaited, &self.lost, allowance, dropped) {
                expired.extend(awaited);
                expired.sort_unstable();
                expired.dedup();
            }
        }
        for &m in &expired {
            self.lost.remove(&m);
            self.machine.handle_member_gone(m, now);
        }
        expired
    }

    /// When the earliest lost member's grace ends.
    pub fn next_expiry(&self, secagg: &SecAggSettings) -> Option<Instant> {
        let grace = Duration::from_secs_f64(secagg.reconnect_grace_secs);
        self.lost.values().min().map(|&since| since + grace)
    }

    /// Send `t` to `to` (and remember it for a replay).
    pub fn send(&mut self, registry: &Registry, to: MemberId, t: pb::Task) {
        let t = OutTask::new(t);
        let len = t.task.encoded_len() as u64;
        self.send_shared(registry, to, Arc::new(t), len);
    }

    /// Sealed shares `t`, held in the round's task file (`task_file.rs`);
    /// in memory without a spill directory, or when the file cannot be
    /// made or written (then for the rest of the round, with a warning).
    fn held_shares(&mut self, t: pb::Task) -> OutTask {
        if !self.spilling() {
            return OutTask::new(t);
        }
        let Some(file) = self.task_file.as_mut() else {
            return OutTask::new(t);
        };
        let encoding = prost::Message::encode_to_vec(&t);
        match file.store(&encoding) {
            Ok(at) => OutTask::stored(Stage::MaskedInput, at, encoding.len()),
            Err(e) => {
                self.stop_spilling(&e);
                OutTask::new(t)
            }
        }
    }

    /// Whether sealed shares go to the round's task file, made here at its
    /// first use: not without a spill directory, nor once the file could
    /// not be made or written.
    fn spilling(&mut self) -> bool {
        let Some(dir) = &self.spill_dir else {
            return false;
        };
        if self.task_file.is_none() {
            match TaskFile::create(dir) {
                Ok(f) => self.task_file = Some(f),
                Err(e) => {
                    self.stop_spilling(&e);
                    return false;
                }
            }
        }
        true
    }

    /// The task file failed: sealed shares stay in memory for the rest of
    /// the round (what is already in the file is still read from it).
    fn stop_spilling(&mut self, e: &std::io::Error) {
        let dir = self.spill_dir.take().unwrap_or_default();
        warn!(round = self.id, dir = %dir.display(), error = %e, "cannot hold sealed shares on disk; keeping them in memory this round");
    }

    /// [`Self::send`] of a task shared with other members; `len` is its
    /// encoded length.
    fn send_shared(&mut self, registry: &Registry, to: MemberId, t: SharedTask, len: u64) {
        self.bytes_out += len;
        self.sent.entry(to).or_default().push(t.clone());
        if let Some(name) = self.names.get(&to) {
            registry.send(name, t);
        }
    }

    /// The site may send messages of this round: it is in the cohort and the
    /// message names this round.
    pub fn admit(&self, info: &SessionInfo, round: u64) -> Result<(), RequestError> {
        if self.id != round {
            return Err(RequestError::WrongRound {
                expected: self.id,
                got: round,
            });
        }
        if !self.names.contains_key(&info.member) {
            return Err(RequestError::NotInCohort {
                site: info.site.clone(),
                round,
            });
        }
        Ok(())
    }

    /// Route one site message into the machine.
    pub fn deliver(
        &mut self,
        from: MemberId,
        msg: SiteMessage,
        now: Instant,
    ) -> Result<(), RequestError> {
        self.bytes_in += msg.payload_bytes();
        let stage = msg.stage();
        match msg {
            SiteMessage::Advert {
                advert,
                identity,
                certificate,
            } => {
                // Recorded before the machine sees the advert: a duplicate is
                // refused by the machine and the certificate stays the first one.
                let site = self.names.get(&from).cloned().unwrap_or_default();
                self.relayed
                    .entry(from)
                    .or_insert(convert::RelayedIdentity { site, certificate });
                self.machine.handle_advert(advert, identity, now)?
            }
            SiteMessage::Shares(mut bundle) => {
                let taken = self
                    .spill_dir
                    .as_ref()
                    .and_then(|_| SealedShares::take(&mut bundle));
                self.machine.handle_shares(bundle, now)?;
                if let Some(taken) = taken {
                    let file = if self.spilling() {
                        self.task_file.as_mut()
                    } else {
                        None
                    };
                    if let Err(e) = self.sealed.keep(from, taken, file) {
                        self.stop_spilling(&e);
                    }
                }
            }
            SiteMessage::Input { vector, masking } => {
                let v = self.packing.unpack(&vector).map_err(|e| {
                    let reason = e.to_string();
                    ProtocolError::Malformed {
                        member: from,
                        reason,
                    }
                })?;
                self.machine
                    .handle_masked_input(self.id, from, &v, masking, now)?
            }
            SiteMessage::Consistency(sig) => self.machine.handle_consistency(sig, now)?,
            SiteMessage::Unmask(resp) => self.machine.handle_unmask_response(resp, now)?,
        }
        self.accepted(from, stage);
        Ok(())
    }

    /// `from`'s message of `stage` was accepted. The task that asked for it
    /// leaves the replay log: a site ignores what it has handled, and the
    /// log would otherwise hold every request all round — at n = 1000 the
    /// NeighbourKeys alone (adverts with certificates) are about 150 MB.
    pub(super) fn accepted(&mut self, from: MemberId, stage: Stage) {
        self.answered.insert(from);
        if let Some(tasks) = self.sent.get_mut(&from) {
            tasks.retain(|t| t.asks != Some(stage));
        }
    }

    /// Checks before an upload of `total_len` elements is buffered; returns
    /// how the vector travels.
    pub fn precheck_upload(
        &self,
        info: &SessionInfo,
        round: u64,
        total_len: u64,
    ) -> Result<Packing, RequestError> {
        if self.id != round {
            return Err(RequestError::WrongRound {
                expected: self.id,
                got: round,
            });
        }
        let stage = self.machine.stage();
        if stage != Stage::MaskedInput {
            return Err(RequestError::NotUploading { round, stage });
        }
        self.admit(info, round)?;
        if !self.machine.pending().contains(&info.member) {
            return Err(RequestError::AlreadySubmitted(info.member));
        }
        if total_len != self.vector_len as u64 {
            return Err(RequestError::VectorLength {
                expected: self.vector_len,
                got: total_len,
            });
        }
        Ok(self.packing)
    }

    /// Drain the machine's outputs at `now`: send tasks, record stage
    /// closures and the result.
    pub fn pump(&mut self, registry: &Registry, now: Instant) {
        // The machine sends every survivor the same consistency and unmask
        // requests: each converted once and shared by all (a consistency
        // request holds every survivor's masking set, O(n·k) bytes).
        let mut consistency: Option<(Arc<ConsistencyRequest>, SharedTask, u64)> = None;
        let mut unmask: Option<(Arc<UnmaskRequest>, SharedTask, u64)> = None;
        let mut routed = false;
        while let Some(o) = self.machine.poll_output() {
            match o {
                AnyOutput::NeighbourKeys { to, msg } => {
                    // With each advert, the signer's site name and the DER it
                    // presented when it advertised (empty in insecure mode),
                    // encoded once per member and shared by its neighbours.
                    let pieces: Vec<AdvertPiece> = msg
                        .adverts
                        .iter()
                        .map(|r| {
                            let m = r.advert.member;
                            self.advert_pieces
                                .entry(m)
                                .or_insert_with(|| {
                                    AdvertPiece::new(&convert::relayed_advert_to_proto(
                                        r,
                                        self.relayed.get(&m),
                                    ))
                                })
                                .clone()
                        })
                        .collect();
                    let t = OutTask::neighbour_keys(msg.round, &pieces);
                    let len = t.task.encoded_len() as u64;
                    self.send_shared(registry, to, Arc::new(t), len);
                }
                AnyOutput::IncomingShares { to, mut msg } => {
                    routed = true;
                    if let Err(e) = self.sealed.fill(&mut msg.shares, self.task_file.as_ref()) {
                        error!(round = self.id, member = to, error = %e, "cannot read sealed shares back from the task file");
                    }
                    let shares = convert::incoming_shares_to_proto(&msg);
                    let t = self.held_shares(task(pb::task::Kind::IncomingShares(shares)));
                    let len = t.task.encoded_len() as u64;
                    self.send_shared(registry, to, Arc::new(t), len);
                }
                AnyOutput::ConsistencyRequest { to, msg } => {
                    // Masking sets travel without identity (the sites that
                    // check them hold the keys from the adverts).
                    let (t, len) = shared(&mut consistency, msg, |msg| {
                        let req = convert::consistency_request_to_proto(msg);
                        task(pb::task::Kind::ConsistencyRequest(req))
                    });
                    self.send_shared(registry, to, t, len);
                }
                AnyOutput::UnmaskRequest { to, msg } => {
                    // Survivor-set signatures travel with their signer's site
                    // and certificate, like adverts: a quorum is mostly
                    // non-neighbours, whose keys a site has not seen.
                    let (t, len) = shared(&mut unmask, msg, |msg| {
                        let req = convert::unmask_request_with_certificates(msg, |m| {
                            self.relayed.get(&m)
                        });
                        task(pb::task::Kind::UnmaskRequest(req))
                    });
                    self.send_shared(registry, to, t, len);
                }
                AnyOutput::StageClosed {
                    stage,
                    completed,
                    dropped,
                } => {
                    let secs = now
                        .saturating_duration_since(self.stage_started)
                        .as_secs_f64();
                    self.stage_started = now;
                    self.metrics.stage_closed(stage, secs);
                    let answered = std::mem::take(&mut self.answered);
                    self.stages.push(StageRecord::new(
                        stage,
                        secs,
                        &completed,
                        &dropped,
                        &answered,
                        &self.names,
                    ));
                    info!(round = self.id, %stage, secs = format!("{secs:.3}"), completed = completed.len(), dropped = ?dropped, "stage closed");
                }
                AnyOutput::Blamed { member, reason } => {
                    let site = self
                        .names
                        .get(&member)
                        .cloned()
                        .unwrap_or_else(|| format!("member {member}"));
                    warn!(round = self.id, %site, %reason, "site blamed");
                    self.blamed.push((site, reason));
                }
                AnyOutput::Finished(res) => self.result = Some(res),
            }
        }
        if routed {
            // The close hands out every recipient's shares at once.
            self.sealed.clear();
        }
        if let Some(job) = self.machine.take_unmask_job() {
            self.unmask_job = Some(job);
        }
    }

    /// Whether the driver has work: a result to apply or an unmask to run.
    pub fn needs_driver(&self) -> bool {
        self.result.is_some() || self.unmask_job.is_some()
    }
}

/// Whether a stage awaiting `awaited` can stop waiting now: it awaits
/// someone, every one of them is `lost`, and they with the `dropped` members
/// (those that did not complete an earlier stage) are within `allowance`.
fn only_lost_within(
    awaited: &[MemberId],
    lost: &BTreeMap<MemberId, Instant>,
    allowance: usize,
    dropped: usize,
) -> bool {
    !awaited.is_empty()
        && awaited.len().saturating_add(dropped) <= allowance
        && awaited.iter().all(|m| lost.contains_key(m))
}

#[cfg(test)]
pub(crate) mod tests;
