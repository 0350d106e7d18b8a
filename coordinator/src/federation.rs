//! The federation core: site registry, round scheduler, the per-round
//! secure-aggregation machine, server optimiser and checkpoints. No tonic
//! here; the `grpc` module translates requests into calls on [`Federation`].
//!
//! One round, as the driver ([`Federation::run`]) sees it:
//!
//! ```text
//! wait for min_sites ─▶ sample cohort ─▶ RoundStart ─▶ machine stages (site RPCs + deadlines)
//!        ▲                                                   │ Finished(sum)
//!        └── checkpoint ◀── optimiser step ◀── decode ◀──────┘   (failure: model untouched)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use confide_client::convert;
use confide_client::train::{LogisticRegression, Mlp, Model, STD_FLOOR, Trainer};
use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::{
    CoordinatorMachine, CoordinatorOutput, EncryptedShare, RoundResult, StageTimeouts,
};
use confide_crypto::quant::Quantiser;
use confide_crypto::ring::{self, Ring, RingElement};
use confide_crypto::{MemberId, ProtocolError, RoundConfig, Stage, Suite, stats};
use confide_proto::v1 as pb;
use rand::{Rng, RngExt, SeedableRng};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{info, warn};

use crate::checkpoint::{self, Manifest, Preprocess, RoundRecord};

/// A wire message that does not convert into the protocol's types.
fn invalid(e: convert::ConvertError) -> CoreError {
    CoreError::Invalid(e.to_string())
}
use crate::error::{CoordinatorError, CoreError};
use crate::optim::ServerOptimiser;
use crate::settings::Settings;

/// What `serve` reports when it returns.
#[derive(Clone, Debug, Default)]
pub struct ServeReport {
    /// Training rounds completed successfully.
    pub completed_rounds: u64,
    /// Every round's record.
    pub history: Vec<RoundRecord>,
    /// Held-out accuracy of the final model (from the evaluation round).
    pub final_accuracy: Option<f64>,
}

/// Round kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKind {
    /// Train and submit a delta.
    Train,
    /// Federated standardisation statistics.
    Statistics,
    /// Evaluate the global model.
    Evaluate,
}

impl RoundKind {
    fn name(self) -> &'static str {
        match self {
            RoundKind::Train => "train",
            RoundKind::Statistics => "statistics",
            RoundKind::Evaluate => "evaluate",
        }
    }
    fn proto(self) -> pb::RoundKind {
        match self {
            RoundKind::Train => pb::RoundKind::Train,
            RoundKind::Statistics => pb::RoundKind::Statistics,
            RoundKind::Evaluate => pb::RoundKind::Evaluate,
        }
    }
}

/// The initial global model from the settings (seeded, so it is the same on every fresh start).
pub fn initial_model(s: &Settings) -> Result<Model, CoordinatorError> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(s.model.init_seed);
    let (f, c) = (s.model.features as usize, s.model.classes as usize);
    let bad =
        |e: confide_client::train::TrainError| CoordinatorError::Config(format!("model: {e}"));
    Ok(match s.model.kind.as_str() {
        "mlp" => Mlp::new(f, s.model.hidden.iter().map(|&h| h as usize).collect(), c)
            .map_err(bad)?
            .init(&mut rng),
        _ => LogisticRegression::new(f, c).map_err(bad)?.init(&mut rng),
    })
}

/// Plaintext comparison mode: sums unmasked vectors, same stage/round checks.
struct Plain<R> {
    round: u64,
    expected: BTreeSet<MemberId>,
    received: BTreeSet<MemberId>,
    acc: Vec<R>,
    deadline: Option<Instant>,
    min_survivors: usize,
    out: Option<Result<RoundResult<R>, ProtocolError>>,
}

impl<R: RingElement> Plain<R> {
    fn input(&mut self, round: u64, from: MemberId, v: &[R]) -> Result<(), ProtocolError> {
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
        if v.len() != self.acc.len() {
            return Err(ProtocolError::WrongLength {
                expected: self.acc.len(),
                got: v.len(),
            });
        }
        ring::add_assign(&mut self.acc, v);
        self.received.insert(from);
        if self.received.len() == self.expected.len() {
            self.close();
        }
        Ok(())
    }
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

enum Engine {
    S32(Box<CoordinatorMachine<u32>>),
    S64(Box<CoordinatorMachine<u64>>),
    P32(Plain<u32>),
    P64(Plain<u64>),
}

enum RoundSum {
    U32(RoundResult<u32>),
    U64(RoundResult<u64>),
}

impl RoundSum {
    fn survivors(&self) -> usize {
        match self {
            RoundSum::U32(r) => r.survivors.len(),
            RoundSum::U64(r) => r.survivors.len(),
        }
    }
}

/// Ring-agnostic machine output.
enum Out {
    Send(MemberId, Box<pb::Task>),
    Closed(Stage, Vec<MemberId>, Vec<MemberId>),
    Finished(Result<RoundSum, ProtocolError>),
}

fn to_pb_share(s: EncryptedShare) -> pb::EncryptedShare {
    pb::EncryptedShare {
        from: s.from,
        to: s.to,
        ciphertext: s.ciphertext,
    }
}

fn task(kind: pb::task::Kind) -> pb::Task {
    pb::Task { kind: Some(kind) }
}

fn drain<R: RingElement>(
    m: &mut CoordinatorMachine<R>,
    names: &BTreeMap<MemberId, String>,
    certs: &BTreeMap<MemberId, Vec<u8>>,
    wrap: fn(RoundResult<R>) -> RoundSum,
    out: &mut Vec<Out>,
) {
    while let Some(o) = m.poll_output() {
        out.push(match o {
            CoordinatorOutput::NeighbourKeys { to, msg } => Out::Send(
                to,
                Box::new(task(pb::task::Kind::NeighbourKeys(pb::NeighbourKeys {
                    round: msg.round,
                    adverts: msg
                        .adverts
                        .into_iter()
                        .map(|r| pb::RelayedAdvert {
                            site: names.get(&r.advert.member).cloned().unwrap_or_default(),
                            advert: Some(pb::KeyAdvert {
                                round: r.advert.round,
                                member: r.advert.member,
                                enc_public: r.advert.enc_public,
                                mask_public: r.advert.mask_public,
                                signature: r.advert.signature,
                            }),
                            verifying_key: r.identity,
                            // The DER the signer presented when it advertised
                            // (empty in insecure mode).
                            certificate: certs.get(&r.advert.member).cloned().unwrap_or_default(),
                        })
                        .collect(),
                }))),
            ),
            CoordinatorOutput::IncomingShares { to, msg } => Out::Send(
                to,
                Box::new(task(pb::task::Kind::IncomingShares(pb::IncomingShares {
                    round: msg.round,
                    shares: msg.shares.into_iter().map(to_pb_share).collect(),
                }))),
            ),
            CoordinatorOutput::UnmaskRequest { to, msg } => Out::Send(
                to,
                Box::new(task(pb::task::Kind::UnmaskRequest(pb::UnmaskRequest {
                    round: msg.round,
                    survivors: msg.survivors,
                    dropped: msg.dropped,
                }))),
            ),
            CoordinatorOutput::StageClosed {
                stage,
                completed,
                dropped,
            } => Out::Closed(stage, completed, dropped),
            CoordinatorOutput::Finished(r) => Out::Finished(r.map(wrap)),
        });
    }
}

impl Engine {
    fn stage(&self) -> Stage {
        match self {
            Engine::S32(m) => m.stage(),
            Engine::S64(m) => m.stage(),
            Engine::P32(p) => {
                if p.deadline.is_some() {
                    Stage::MaskedInput
                } else {
                    Stage::Done
                }
            }
            Engine::P64(p) => {
                if p.deadline.is_some() {
                    Stage::MaskedInput
                } else {
                    Stage::Done
                }
            }
        }
    }
    fn deadline(&self) -> Option<Instant> {
        match self {
            Engine::S32(m) => m.poll_timeout(),
            Engine::S64(m) => m.poll_timeout(),
            Engine::P32(p) => p.deadline,
            Engine::P64(p) => p.deadline,
        }
    }
    fn timeout(&mut self, now: Instant) {
        match self {
            Engine::S32(m) => m.handle_timeout(now),
            Engine::S64(m) => m.handle_timeout(now),
            Engine::P32(p) => {
                if p.deadline.is_some_and(|d| now >= d) {
                    p.close()
                }
            }
            Engine::P64(p) => {
                if p.deadline.is_some_and(|d| now >= d) {
                    p.close()
                }
            }
        }
    }
    fn abort(&mut self, why: &str) {
        match self {
            Engine::S32(m) => m.abort(why),
            Engine::S64(m) => m.abort(why),
            Engine::P32(p) => p.close(),
            Engine::P64(p) => p.close(),
        }
    }
    fn pending(&self) -> Vec<MemberId> {
        match self {
            Engine::S32(m) => m.pending(),
            Engine::S64(m) => m.pending(),
            Engine::P32(p) => p.expected.difference(&p.received).copied().collect(),
            Engine::P64(p) => p.expected.difference(&p.received).copied().collect(),
        }
    }
    fn width(&self) -> usize {
        match self {
            Engine::S32(_) | Engine::P32(_) => 4,
            Engine::S64(_) | Engine::P64(_) => 8,
        }
    }
    fn input(
        &mut self,
        round: u64,
        from: MemberId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), CoreError> {
        let bad = |e: ring::ByteLengthError| CoreError::Invalid(e.to_string());
        match self {
            Engine::S32(m) => m.handle_masked_input(
                round,
                from,
                &ring::from_le_bytes::<u32>(bytes).map_err(bad)?,
                now,
            )?,
            Engine::S64(m) => m.handle_masked_input(
                round,
                from,
                &ring::from_le_bytes::<u64>(bytes).map_err(bad)?,
                now,
            )?,
            Engine::P32(p) => p.input(
                round,
                from,
                &ring::from_le_bytes::<u32>(bytes).map_err(bad)?,
            )?,
            Engine::P64(p) => p.input(
                round,
                from,
                &ring::from_le_bytes::<u64>(bytes).map_err(bad)?,
            )?,
        }
        Ok(())
    }
    fn secure_only<T>(
        &mut self,
        f32_: impl FnOnce(&mut CoordinatorMachine<u32>) -> T,
        f64_: impl FnOnce(&mut CoordinatorMachine<u64>) -> T,
    ) -> Result<T, CoreError> {
        match self {
            Engine::S32(m) => Ok(f32_(m)),
            Engine::S64(m) => Ok(f64_(m)),
            _ => Err(CoreError::WrongStage(
                "secure aggregation is off: this round only takes masked inputs".into(),
            )),
        }
    }
    fn drain(
        &mut self,
        names: &BTreeMap<MemberId, String>,
        certs: &BTreeMap<MemberId, Vec<u8>>,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        match self {
            Engine::S32(m) => drain(m, names, certs, RoundSum::U32, &mut out),
            Engine::S64(m) => drain(m, names, certs, RoundSum::U64, &mut out),
            Engine::P32(p) => {
                if let Some(r) = p.out.take() {
                    out.push(Out::Finished(r.map(RoundSum::U32)))
                }
            }
            Engine::P64(p) => {
                if let Some(r) = p.out.take() {
                    out.push(Out::Finished(r.map(RoundSum::U64)))
                }
            }
        }
        out
    }
}

struct SiteEntry {
    member: MemberId,
    session: String,
    verifying_key: Vec<u8>,
    tx: Option<mpsc::UnboundedSender<pb::Task>>,
}

impl SiteEntry {
    fn connected(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| !t.is_closed())
    }
}

struct ActiveRound {
    id: u64,
    kind: RoundKind,
    names: BTreeMap<MemberId, String>,
    /// Each member's TLS certificate as presented with its advert this round.
    certs: BTreeMap<MemberId, Vec<u8>>,
    engine: Engine,
    vector_len: usize,
    model_bytes: Arc<Vec<u8>>,
    result: Option<Result<RoundSum, ProtocolError>>,
    started: Instant,
    stage_started: Instant,
    stage_secs: Vec<(String, f64)>,
    bytes_in: u64,
    bytes_out: u64,
    /// Every task sent to each member this round, replayed when its stream
    /// reconnects (sites ignore what they already handled).
    sent: BTreeMap<MemberId, Vec<pb::Task>>,
}

struct Inner {
    sites: HashMap<String, SiteEntry>,
    sessions: HashMap<String, String>,
    next_member: MemberId,
    round: Option<ActiveRound>,
    model: Model,
    model_bytes: Arc<Vec<u8>>,
    model_round: u64,
    optimiser: ServerOptimiser,
    preprocess: Option<Preprocess>,
    next_round: u64,
    completed: u64,
    history: Vec<RoundRecord>,
    final_accuracy: Option<f64>,
    final_done: bool,
}

/// A site's verified session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Site name.
    pub site: String,
    /// Member id.
    pub member: MemberId,
}

/// A masked-input upload in progress: bounded by a semaphore permit and by
/// the round's vector length, so memory never exceeds
/// `max_concurrent_uploads × vector bytes`.
pub struct Upload {
    round: u64,
    member: MemberId,
    total: usize,
    width: usize,
    buf: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl Upload {
    /// Append one chunk; `offset` counts elements and must continue the stream.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<(), CoreError> {
        let have = self.buf.len() / self.width;
        if offset != have as u64 {
            return Err(CoreError::Invalid(format!(
                "chunk offset {offset}, expected {have}"
            )));
        }
        if !data.len().is_multiple_of(self.width)
            || self.buf.len() + data.len() > self.total * self.width
        {
            return Err(CoreError::Invalid(format!(
                "chunk of {} bytes does not fit a vector of {} elements of {} bytes",
                data.len(),
                self.total,
                self.width
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
}

/// The federation: shared by the gRPC handlers and the round driver.
pub struct Federation {
    settings: Settings,
    suite: Suite,
    quant: Quantiser,
    config_hash: String,
    inner: Mutex<Inner>,
    wake: Notify,
    uploads: Arc<Semaphore>,
    grace_done: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("federation", &self.settings.federation)
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Federation {
    /// Validate the settings and resume from the latest checkpoint of the same config.
    pub fn new(settings: Settings) -> Result<Arc<Self>, CoordinatorError> {
        settings.validate()?;
        let suite = settings.suite()?;
        let quant = settings.quantiser(settings.ring()?)?;
        let config_hash = settings.config_hash();
        let mut model = initial_model(&settings)?;
        let mut optimiser = ServerOptimiser::new(
            settings.optimiser_kind()?,
            &settings.optimiser,
            model.num_params(),
        );
        let (mut preprocess, mut next_round, mut completed, mut history, mut model_round) =
            (None, 1, 0, Vec::new(), 0);
        if let Some(dir) = &settings.checkpoints.dir
            && let Some(c) = checkpoint::latest(dir)?
        {
            if c.manifest.config_hash != config_hash && !settings.checkpoints.allow_config_change {
                return Err(CoordinatorError::Checkpoint(format!(
                    "{} was written with config hash {}, the current config hashes to {}; \
                     use a new checkpoint dir or set checkpoints.allow_config_change",
                    c.path.display(),
                    c.manifest.config_hash,
                    config_hash
                )));
            }
            model
                .check_same_layout(&c.model)
                .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
            if let Some((m, v)) = c.optimiser.clone() {
                optimiser
                    .restore(m, v)
                    .map_err(CoordinatorError::Checkpoint)?;
            }
            info!(checkpoint = %c.path.display(), next_round = c.manifest.next_round, "resuming from checkpoint");
            model = c.model;
            preprocess = c.manifest.preprocess;
            next_round = c.manifest.next_round;
            completed = c.manifest.completed_train_rounds;
            history = c.manifest.history;
            model_round = c.manifest.model_round;
        }
        let model_bytes = Arc::new(
            model
                .to_safetensors(None)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?,
        );
        let final_done = completed >= settings.rounds
            && history
                .iter()
                .any(|r| r.kind == "evaluate" && r.success && r.model_round == model_round);
        let final_accuracy = history
            .iter()
            .rev()
            .find(|r| r.kind == "evaluate" && r.success)
            .and_then(|r| r.accuracy);
        Ok(Arc::new(Federation {
            uploads: Arc::new(Semaphore::new(settings.limits.max_concurrent_uploads)),
            suite,
            quant,
            config_hash,
            inner: Mutex::new(Inner {
                sites: HashMap::new(),
                sessions: HashMap::new(),
                next_member: 1,
                round: None,
                model,
                model_bytes,
                model_round,
                optimiser,
                preprocess,
                next_round,
                completed,
                history,
                final_accuracy,
                final_done,
            }),
            wake: Notify::new(),
            grace_done: std::sync::atomic::AtomicBool::new(false),
            settings,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a handler panicked mid-update; the state is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current global model bytes (safetensors).
    pub fn model_bytes(&self) -> Arc<Vec<u8>> {
        self.lock().model_bytes.clone()
    }

    /// Round history.
    pub fn history(&self) -> Vec<RoundRecord> {
        self.lock().history.clone()
    }

    /// (current round, stage, connected sites, completed training rounds).
    pub fn status(&self) -> (u64, String, Vec<String>, u64) {
        let g = self.lock();
        let (round, stage) = match &g.round {
            Some(r) => (r.id, format!("{} {}", r.kind.name(), r.engine.stage())),
            None => (0, "waiting".to_string()),
        };
        let mut names: Vec<String> = g
            .sites
            .iter()
            .filter(|(_, s)| s.connected())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        (round, stage, names, g.completed)
    }

    fn check_peer(site: &str, peer: Option<&str>) -> Result<(), CoreError> {
        match peer {
            Some(p) if p != site => Err(CoreError::IdentityMismatch {
                peer: p.to_string(),
                site: site.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// `Join`: register (or re-register) a site; returns a fresh session token.
    pub fn join(
        &self,
        site: &str,
        verifying_key: &[u8],
        peer: Option<&str>,
    ) -> Result<String, CoreError> {
        if site.is_empty()
            || site.len() > 253
            || !site
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(CoreError::Invalid(
                "site name must be 1–253 characters of [A-Za-z0-9._-]".into(),
            ));
        }
        if verifying_key.is_empty() || verifying_key.len() > 133 {
            return Err(CoreError::Invalid(
                "verifying_key must be a public key of the federation's suite".into(),
            ));
        }
        Self::check_peer(site, peer)?;
        let mut g = self.lock();
        let session = random_token();
        if let Some(e) = g.sites.get_mut(site) {
            let old = std::mem::replace(&mut e.session, session.clone());
            e.verifying_key = verifying_key.to_vec();
            g.sessions.remove(&old);
        } else {
            if g.sites.len() >= self.settings.max_sites {
                return Err(CoreError::Limit(format!(
                    "the federation already has max_sites = {} sites",
                    self.settings.max_sites
                )));
            }
            let member = g.next_member;
            g.next_member += 1;
            g.sites.insert(
                site.to_string(),
                SiteEntry {
                    member,
                    session: session.clone(),
                    verifying_key: verifying_key.to_vec(),
                    tx: None,
                },
            );
        }
        g.sessions.insert(session.clone(), site.to_string());
        info!(site, "site joined");
        drop(g);
        self.wake.notify_one();
        Ok(session)
    }

    fn session_in(g: &Inner, session: &str, peer: Option<&str>) -> Result<SessionInfo, CoreError> {
        let site = g.sessions.get(session).ok_or(CoreError::UnknownSession)?;
        Self::check_peer(site, peer)?;
        let e = g.sites.get(site).ok_or(CoreError::UnknownSession)?;
        Ok(SessionInfo {
            site: site.clone(),
            member: e.member,
        })
    }

    /// Look a session up.
    pub fn session(&self, session: &str, peer: Option<&str>) -> Result<SessionInfo, CoreError> {
        Self::session_in(&self.lock(), session, peer)
    }

    /// `Tasks`: open (or replace) the site's task stream.
    pub fn open_tasks(
        &self,
        session: &str,
        peer: Option<&str>,
    ) -> Result<mpsc::UnboundedReceiver<pb::Task>, CoreError> {
        let mut g = self.lock();
        let info = Self::session_in(&g, session, peer)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(r) = g.round.as_ref()
            && let Some(tasks) = r.sent.get(&info.member)
        {
            info!(site = %info.site, round = r.id, tasks = tasks.len(), "task stream reopened; replaying this round's tasks");
            for t in tasks {
                let _ = tx.send(t.clone());
            }
        }
        if let Some(e) = g.sites.get_mut(&info.site) {
            e.tx = Some(tx);
        }
        drop(g);
        self.wake.notify_one();
        Ok(rx)
    }

    fn with_round<T>(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        f: impl FnOnce(&mut ActiveRound, &SessionInfo, &[u8]) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let mut g = self.lock();
        let info = Self::session_in(&g, session, peer)?;
        let vk = g
            .sites
            .get(&info.site)
            .map(|e| e.verifying_key.clone())
            .unwrap_or_default();
        let Inner {
            round: active,
            sites,
            ..
        } = &mut *g;
        let r = active.as_mut().ok_or(CoreError::WrongRound {
            expected: 0,
            got: round,
        })?;
        if r.id != round {
            return Err(CoreError::WrongRound {
                expected: r.id,
                got: round,
            });
        }
        if !r.names.contains_key(&info.member) {
            return Err(CoreError::WrongStage(format!(
                "site {} is not in the cohort of round {round}",
                info.site
            )));
        }
        let out = f(r, &info, &vk)?;
        Self::pump(r, sites);
        let finished = r.result.is_some();
        drop(g);
        if finished {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// Drain the machine's outputs: send tasks, record stage closures and the result.
    fn pump(r: &mut ActiveRound, sites: &HashMap<String, SiteEntry>) {
        for o in r.engine.drain(&r.names, &r.certs) {
            match o {
                Out::Send(to, t) => {
                    let bytes = prost::Message::encoded_len(&*t) as u64;
                    r.bytes_out += bytes;
                    r.sent.entry(to).or_default().push((*t).clone());
                    if let Some(tx) = r
                        .names
                        .get(&to)
                        .and_then(|n| sites.get(n))
                        .and_then(|e| e.tx.as_ref())
                    {
                        let _ = tx.send(*t);
                    }
                }
                Out::Closed(stage, completed, dropped) => {
                    let now = Instant::now();
                    let secs = now.duration_since(r.stage_started).as_secs_f64();
                    r.stage_started = now;
                    r.stage_secs.push((stage.to_string(), secs));
                    info!(round = r.id, %stage, secs = format!("{secs:.3}"), completed = completed.len(), dropped = ?dropped, "stage closed");
                }
                Out::Finished(res) => r.result = Some(res),
            }
        }
    }

    /// `DownloadModel`: the model the current round started from.
    pub fn download(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
    ) -> Result<Arc<Vec<u8>>, CoreError> {
        let mut g = self.lock();
        let info = Self::session_in(&g, session, peer)?;
        match g.round.as_mut() {
            Some(r) if r.id == round && r.names.contains_key(&info.member) => {
                r.bytes_out += r.model_bytes.len() as u64;
                Ok(r.model_bytes.clone())
            }
            Some(r) => Err(CoreError::WrongRound {
                expected: r.id,
                got: round,
            }),
            None => Err(CoreError::NotFound(format!("no model for round {round}"))),
        }
    }

    /// `AdvertiseKeys`.
    pub fn advertise(
        &self,
        session: &str,
        peer: Option<&str>,
        a: pb::KeyAdvert,
        certificate: Vec<u8>,
    ) -> Result<(), CoreError> {
        self.with_round(session, peer, a.round, |r, info, vk| {
            if a.member != info.member {
                return Err(CoreError::IdentityMismatch {
                    peer: info.site.clone(),
                    site: format!("member {}", a.member),
                });
            }
            // Recorded before the machine sees the advert: a duplicate is
            // refused by the machine and the certificate stays the first one.
            r.certs.entry(info.member).or_insert(certificate);
            r.bytes_in += (a.enc_public.len() + a.mask_public.len() + a.signature.len()) as u64;
            let advert = convert::key_advert_from_proto(&a);
            let now = Instant::now();
            let id = vk.to_vec();
            r.engine
                .secure_only(
                    |m| m.handle_advert(advert.clone(), id.clone(), now),
                    |m| m.handle_advert(advert.clone(), id.clone(), now),
                )?
                .map_err(CoreError::from)
        })
    }

    /// `ShareKeys`.
    pub fn share_keys(
        &self,
        session: &str,
        peer: Option<&str>,
        req: pb::ShareKeysRequest,
    ) -> Result<(), CoreError> {
        self.with_round(session, peer, req.round, |r, info, _| {
            if req.from != info.member {
                return Err(CoreError::IdentityMismatch {
                    peer: info.site.clone(),
                    site: format!("member {}", req.from),
                });
            }
            r.bytes_in += req
                .shares
                .iter()
                .map(|s| s.ciphertext.len() as u64 + 8)
                .sum::<u64>();
            let bundle = convert::share_bundle_from_proto(&req).map_err(invalid)?;
            let now = Instant::now();
            r.engine
                .secure_only(
                    |m| m.handle_shares(bundle.clone(), now),
                    |m| m.handle_shares(bundle.clone(), now),
                )?
                .map_err(CoreError::from)
        })
    }

    /// `Unmask`.
    pub fn unmask(
        &self,
        session: &str,
        peer: Option<&str>,
        req: pb::UnmaskResponse,
    ) -> Result<(), CoreError> {
        self.with_round(session, peer, req.round, |r, info, _| {
            if req.from != info.member {
                return Err(CoreError::IdentityMismatch {
                    peer: info.site.clone(),
                    site: format!("member {}", req.from),
                });
            }
            let resp = convert::unmask_response_from_proto(&req).map_err(invalid)?;
            r.bytes_in += ((resp.seed_shares.len() + resp.key_shares.len()) * 48) as u64;
            let now = Instant::now();
            r.engine
                .secure_only(
                    |m| m.handle_unmask_response(resp.clone(), now),
                    |m| m.handle_unmask_response(resp.clone(), now),
                )?
                .map_err(CoreError::from)
        })
    }

    /// Start a masked-input upload: checks session, round, stage, duplicate and
    /// length before anything is buffered, then waits for an upload slot.
    pub async fn begin_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        total_len: u64,
    ) -> Result<Upload, CoreError> {
        let (member, width) = self.precheck_upload(session, peer, round, total_len)?;
        let permit = self
            .uploads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Internal("shutting down".into()))?;
        Ok(Upload {
            round,
            member,
            total: total_len as usize,
            width,
            buf: Vec::with_capacity(total_len as usize * width),
            _permit: permit,
        })
    }

    fn precheck_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        total_len: u64,
    ) -> Result<(MemberId, usize), CoreError> {
        let g = self.lock();
        let info = Self::session_in(&g, session, peer)?;
        let r = g.round.as_ref().ok_or(CoreError::WrongRound {
            expected: 0,
            got: round,
        })?;
        if r.id != round {
            return Err(CoreError::WrongRound {
                expected: r.id,
                got: round,
            });
        }
        if r.engine.stage() != Stage::MaskedInput {
            return Err(CoreError::WrongStage(format!(
                "round {round} is in stage {}, not masked-input",
                r.engine.stage()
            )));
        }
        if !r.names.contains_key(&info.member) {
            return Err(CoreError::WrongStage(format!(
                "site {} is not in the cohort of round {round}",
                info.site
            )));
        }
        if !r.engine.pending().contains(&info.member) {
            return Err(CoreError::Duplicate(format!(
                "member {} already submitted (or is not in this stage)",
                info.member
            )));
        }
        if total_len != r.vector_len as u64 {
            return Err(CoreError::Invalid(format!(
                "vector has {total_len} elements, expected {}",
                r.vector_len
            )));
        }
        Ok((info.member, r.engine.width()))
    }

    /// Finish an upload: the whole vector goes into the sum at once.
    pub fn finish_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        up: Upload,
    ) -> Result<(), CoreError> {
        if up.buf.len() != up.total * up.width {
            return Err(CoreError::Invalid(format!(
                "stream ended after {} of {} elements",
                up.buf.len() / up.width,
                up.total
            )));
        }
        let member = up.member;
        self.with_round(session, peer, up.round, |r, info, _| {
            if info.member != member {
                return Err(CoreError::UnknownSession);
            }
            r.bytes_in += up.buf.len() as u64;
            r.engine.input(up.round, member, &up.buf, Instant::now())
        })
    }

    fn connected(&self) -> Vec<(MemberId, String)> {
        let g = self.lock();
        let mut v: Vec<(MemberId, String)> = g
            .sites
            .iter()
            .filter(|(_, e)| e.connected())
            .map(|(n, e)| (e.member, n.clone()))
            .collect();
        v.sort();
        v
    }

    fn next_kind(&self) -> Option<RoundKind> {
        let g = self.lock();
        if self.settings.statistics_round && g.preprocess.is_none() {
            Some(RoundKind::Statistics)
        } else if g.completed < self.settings.rounds {
            Some(RoundKind::Train)
        } else if self.settings.final_evaluation && !g.final_done {
            Some(RoundKind::Evaluate)
        } else {
            None
        }
    }

    /// Drive rounds until the configured training rounds (and the final
    /// evaluation) are done. Cancel-safe: dropping the future aborts the round.
    pub async fn run(self: &Arc<Self>) -> Result<ServeReport, CoordinatorError> {
        let mut failures = 0u32;
        let mut eval_failures = 0u32;
        while let Some(kind) = self.next_kind() {
            let cohort = self.wait_for_sites().await;
            let ok = self.run_round(kind, cohort).await?;
            if ok {
                failures = 0;
            } else {
                failures += 1;
                if kind == RoundKind::Evaluate {
                    eval_failures += 1;
                    if eval_failures >= 3 {
                        warn!("final evaluation failed three times; skipping it");
                        self.lock().final_done = true;
                    }
                }
                if failures >= self.settings.max_consecutive_failures {
                    return Err(CoordinatorError::Rounds(format!(
                        "{failures} consecutive rounds failed; giving up"
                    )));
                }
            }
        }
        Ok(self.report())
    }

    /// The report so far.
    pub fn report(&self) -> ServeReport {
        let g = self.lock();
        ServeReport {
            completed_rounds: g.completed,
            history: g.history.clone(),
            final_accuracy: g.final_accuracy,
        }
    }

    /// Tell every connected site the federation is done.
    pub fn send_done(&self) {
        let g = self.lock();
        for e in g.sites.values() {
            if let Some(tx) = &e.tx {
                let _ = tx.send(task(pb::task::Kind::Done(pb::FederationDone {
                    rounds: g.completed,
                })));
            }
        }
    }

    /// Drop every task stream (shutdown).
    pub fn close_streams(&self) {
        for e in self.lock().sites.values_mut() {
            e.tx = None;
        }
    }

    /// Whether every site's task stream has gone.
    pub fn all_disconnected(&self) -> bool {
        self.lock().sites.values().all(|e| !e.connected())
    }

    async fn wait_for_sites(&self) -> Vec<(MemberId, String)> {
        let mut logged = false;
        loop {
            let c = self.connected();
            if c.len() >= self.settings.min_sites {
                if self
                    .grace_done
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                    || self.settings.join_grace_secs <= 0.0
                {
                    return c;
                }
                // First round: give sites that are still connecting a moment to be included.
                let until = Instant::now() + Duration::from_secs_f64(self.settings.join_grace_secs);
                while Instant::now() < until && self.connected().len() < self.settings.max_sites {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            if !logged {
                info!(
                    connected = c.len(),
                    min_sites = self.settings.min_sites,
                    "waiting for sites"
                );
                logged = true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), self.wake.notified()).await;
        }
    }

    fn training_config(&self) -> pb::TrainingConfig {
        let s = &self.settings;
        pb::TrainingConfig {
            model: s.model.kind.clone(),
            hidden: s.model.hidden.clone(),
            features: s.model.features,
            classes: s.model.classes,
            epochs: s.training.epochs,
            batch_size: s.training.batch_size,
            learning_rate: s.training.learning_rate,
            l2: s.training.l2,
            proximal_mu: s.training.proximal_mu,
            stats_scale_bits: s.training.stats_scale_bits,
        }
    }

    async fn run_round(
        self: &Arc<Self>,
        kind: RoundKind,
        connected: Vec<(MemberId, String)>,
    ) -> Result<bool, CoordinatorError> {
        let s = &self.settings;
        let n = s.cohort_for(connected.len());
        // CSPRNG cohort sample (partial Fisher–Yates).
        let mut pool = connected;
        let mut graph_seed = [0u8; 32];
        {
            // ThreadRng is not Send: keep it out of any await.
            let mut rng = rand::rng();
            for i in 0..n.min(pool.len()) {
                let j = rng.random_range(i..pool.len());
                pool.swap(i, j);
            }
            rng.fill_bytes(&mut graph_seed);
        }
        pool.truncate(n);
        pool.sort();
        let names: BTreeMap<MemberId, String> = pool.into_iter().collect();
        let cohort: Vec<MemberId> = names.keys().copied().collect();
        let ring = if kind == RoundKind::Statistics {
            Ring::U64
        } else {
            self.quant.ring()
        };
        let d;
        let vector_len = match kind {
            RoundKind::Train => {
                d = self.lock().model.num_params();
                d + 4
            }
            RoundKind::Evaluate => {
                d = 0;
                4
            }
            RoundKind::Statistics => {
                d = 0;
                stats::stats_len(s.model.features as usize)
            }
        };
        let (params, min_survivors) = if s.secure_aggregation {
            match s.secagg_params(n) {
                Ok(p) => (p, s.min_survivors(n, p.t)),
                Err(e) => {
                    warn!(round = self.lock().next_round, cohort = n, error = %e, "cannot start round");
                    let round_id = self.lock().next_round;
                    let model_round = self.lock().model_round;
                    self.record_failure(
                        round_id,
                        kind,
                        n,
                        model_round,
                        &e.to_string(),
                        Instant::now(),
                    );
                    // Wait for the set of connected sites to change before retrying.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Ok(false);
                }
            }
        } else {
            (
                SecAggParams { k: 0, t: 0 },
                s.secagg.min_survivors.unwrap_or(2).min(n),
            )
        };
        let timeout = Duration::from_secs(u64::from(s.secagg.stage_timeout_secs));
        let now = Instant::now();
        let (round_id, model_bytes, model_round, preprocess) = {
            let g = self.lock();
            (
                g.next_round,
                g.model_bytes.clone(),
                g.model_round,
                g.preprocess.clone(),
            )
        };
        let cfg = RoundConfig {
            round: round_id,
            suite: self.suite,
            ring,
            cohort: cohort.clone(),
            params,
            graph_seed,
            vector_len,
            min_survivors,
        };
        let engine =
            if s.secure_aggregation {
                let t = StageTimeouts::uniform(timeout);
                match ring {
                    Ring::U32 => CoordinatorMachine::<u32>::new(cfg, t, now)
                        .map(|m| Engine::S32(Box::new(m))),
                    Ring::U64 => CoordinatorMachine::<u64>::new(cfg, t, now)
                        .map(|m| Engine::S64(Box::new(m))),
                }
            } else {
                let expected: BTreeSet<MemberId> = cohort.iter().copied().collect();
                Ok(match ring {
                    Ring::U32 => Engine::P32(Plain {
                        round: round_id,
                        expected,
                        received: BTreeSet::new(),
                        acc: vec![0; vector_len],
                        deadline: Some(now + 3 * timeout),
                        min_survivors,
                        out: None,
                    }),
                    Ring::U64 => Engine::P64(Plain {
                        round: round_id,
                        expected,
                        received: BTreeSet::new(),
                        acc: vec![0; vector_len],
                        deadline: Some(now + 3 * timeout),
                        min_survivors,
                        out: None,
                    }),
                })
            };
        let engine = match engine {
            Ok(e) => e,
            Err(e) => {
                warn!(round = round_id, error = %e, "cannot start round");
                self.record_failure(round_id, kind, n, model_round, &e.to_string(), now);
                return Ok(false);
            }
        };
        info!(
            round = round_id,
            kind = kind.name(),
            cohort = n,
            k = params.k,
            t = params.t,
            "round started"
        );
        let carries_model = kind != RoundKind::Statistics;
        let start = pb::RoundStart {
            round: round_id,
            kind: kind.proto() as i32,
            member: 0,
            cohort: cohort.clone(),
            suite: self.suite.name().to_string(),
            ring: ring.to_string(),
            k: params.k as u32,
            t: params.t as u32,
            graph_seed: graph_seed.to_vec(),
            vector_len: vector_len as u64,
            min_survivors: min_survivors as u32,
            quantisation: Some(pb::Quantisation {
                clip: self.quant.clip(),
                scale: self.quant.scale(),
                max_weight: self.quant.max_weight(),
                max_cohort: self.quant.max_cohort() as u32,
            }),
            training: Some(self.training_config()),
            model_bytes: if carries_model {
                model_bytes.len() as u64
            } else {
                0
            },
            evaluate: match kind {
                RoundKind::Train => s.evaluate_every_round,
                RoundKind::Evaluate => true,
                RoundKind::Statistics => false,
            },
            feature_mean: preprocess
                .as_ref()
                .map(|p| p.mean.clone())
                .unwrap_or_default(),
            feature_std: preprocess
                .as_ref()
                .map(|p| p.std.clone())
                .unwrap_or_default(),
            stage_timeout_secs: s.secagg.stage_timeout_secs,
            plaintext: !s.secure_aggregation,
        };
        {
            let mut g = self.lock();
            let mut active = ActiveRound {
                id: round_id,
                kind,
                names: names.clone(),
                certs: BTreeMap::new(),
                engine,
                vector_len,
                model_bytes,
                result: None,
                started: now,
                stage_started: now,
                stage_secs: Vec::new(),
                bytes_in: 0,
                bytes_out: 0,
                sent: BTreeMap::new(),
            };
            for (&m, name) in &names {
                let mut st = start.clone();
                st.member = m;
                let t = task(pb::task::Kind::RoundStart(st));
                active.bytes_out += prost::Message::encoded_len(&t) as u64;
                active.sent.entry(m).or_default().push(t.clone());
                if let Some(tx) = g.sites.get(name).and_then(|e| e.tx.as_ref()) {
                    let _ = tx.send(t);
                }
            }
            g.round = Some(active);
        }
        // Drive deadlines until the machine finishes.
        let mut guard = AbortOnDrop {
            fed: self.clone(),
            armed: true,
        };
        let result = loop {
            let deadline = {
                let mut g = self.lock();
                let Inner {
                    round: active,
                    sites,
                    ..
                } = &mut *g;
                let Some(r) = active.as_mut() else {
                    break Err(ProtocolError::Ended);
                };
                r.engine.timeout(Instant::now());
                Self::pump(r, sites);
                if let Some(res) = r.result.take() {
                    break res;
                }
                r.engine.deadline()
            };
            let sleep = match deadline {
                Some(d) => tokio::time::Instant::from_std(d),
                None => tokio::time::Instant::now() + Duration::from_millis(100),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(sleep) => {}
            }
        };
        guard.armed = false;
        let active = self.lock().round.take();
        let Some(active) = active else {
            return Ok(false);
        };
        let ok = self
            .finish_round(kind, active, result, d, model_round)
            .await?;
        Ok(ok)
    }

    fn record_failure(
        &self,
        round_id: u64,
        kind: RoundKind,
        n: usize,
        model_round: u64,
        msg: &str,
        started: Instant,
    ) {
        let mut g = self.lock();
        g.history.push(RoundRecord {
            round: round_id,
            kind: kind.name().into(),
            success: false,
            message: msg.to_string(),
            cohort: n as u32,
            model_round,
            duration_secs: started.elapsed().as_secs_f64(),
            ..Default::default()
        });
        g.next_round = round_id + 1;
    }

    async fn finish_round(
        self: &Arc<Self>,
        kind: RoundKind,
        active: ActiveRound,
        result: Result<RoundSum, ProtocolError>,
        d: usize,
        model_round: u64,
    ) -> Result<bool, CoordinatorError> {
        let mut rec = RoundRecord {
            round: active.id,
            kind: kind.name().into(),
            cohort: active.names.len() as u32,
            model_round,
            duration_secs: active.started.elapsed().as_secs_f64(),
            stage_secs: active.stage_secs.clone(),
            bytes_in: active.bytes_in,
            bytes_out: active.bytes_out,
            ..Default::default()
        };
        let applied: Result<(), String> = match result {
            Err(e) => Err(e.to_string()),
            Ok(sum) => {
                rec.survivors = sum.survivors() as u32;
                // Everyone in the cohort whose input is not in the sum, whatever
                // the stage they vanished at (the protocol's own list only
                // names those whose masks had to be reconstructed).
                rec.dropped = rec.cohort.saturating_sub(rec.survivors);
                self.apply(kind, sum, d, &mut rec)
            }
        };
        let ok = applied.is_ok();
        rec.success = ok;
        if let Err(m) = &applied {
            rec.message = m.clone();
            rec.dropped = rec.cohort.saturating_sub(rec.survivors);
            warn!(round = rec.round, kind = kind.name(), reason = %m, "round failed; global model unchanged");
        }
        info!(
            round = rec.round,
            kind = kind.name(),
            success = ok,
            survivors = rec.survivors,
            dropped = rec.dropped,
            accuracy = rec.accuracy.map(|a| format!("{a:.4}")).unwrap_or_default(),
            secs = format!("{:.2}", rec.duration_secs),
            bytes_in = rec.bytes_in,
            bytes_out = rec.bytes_out,
            stages = ?rec.stage_secs,
            "round finished"
        );
        let end = task(pb::task::Kind::RoundEnd(pb::RoundEnd {
            round: rec.round,
            success: ok,
            message: rec.message.clone(),
        }));
        let save = {
            let mut g = self.lock();
            for name in active.names.values() {
                if let Some(tx) = g.sites.get(name).and_then(|e| e.tx.as_ref()) {
                    let _ = tx.send(end.clone());
                }
            }
            g.next_round = rec.round + 1;
            g.history.push(rec);
            if ok { self.snapshot(&g) } else { None }
        };
        if let (Some((manifest, bytes, opt)), Some(dir)) =
            (save, self.settings.checkpoints.dir.clone())
        {
            let keep = self.settings.checkpoints.keep_last;
            let res = tokio::task::spawn_blocking(
                move || -> Result<std::path::PathBuf, CoordinatorError> {
                    let p = checkpoint::save(
                        &dir,
                        &manifest,
                        &bytes,
                        opt.as_ref().map(|(m, v)| (m.as_slice(), v.as_slice())),
                    )?;
                    checkpoint::prune(&dir, keep, checkpoint::best_round(&manifest.history))?;
                    Ok(p)
                },
            )
            .await
            .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
            let p = res?;
            info!(path = %p.display(), "checkpoint written");
        }
        Ok(ok)
    }

    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        g: &Inner,
    ) -> Option<(Manifest, Arc<Vec<u8>>, Option<(Vec<f32>, Vec<f32>)>)> {
        self.settings.checkpoints.dir.as_ref()?;
        let opt = g
            .optimiser
            .has_state()
            .then(|| (g.optimiser.m.clone(), g.optimiser.v.clone()));
        let manifest = Manifest {
            format: 1,
            round: g.history.last().map(|r| r.round).unwrap_or(0),
            model_round: g.model_round,
            next_round: g.next_round,
            completed_train_rounds: g.completed,
            suite: self.suite.name().into(),
            config_hash: self.config_hash.clone(),
            optimiser: self.settings.optimiser.kind.clone(),
            optimiser_state: opt.as_ref().map(|_| "optimiser.safetensors".to_string()),
            preprocess: g.preprocess.clone(),
            tensors: g
                .model
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone()))
                .collect(),
            history: g.history.clone(),
        };
        Some((manifest, g.model_bytes.clone(), opt))
    }

    fn apply(
        &self,
        kind: RoundKind,
        sum: RoundSum,
        d: usize,
        rec: &mut RoundRecord,
    ) -> Result<(), String> {
        let n = sum.survivors();
        match kind {
            RoundKind::Statistics => {
                let RoundSum::U64(r) = sum else {
                    return Err("statistics round must use the u64 ring".into());
                };
                let f = self.settings.model.features as usize;
                let (sx, sxx, count) =
                    stats::decode_stats(&r.sum, f, self.settings.training.stats_scale_bits)
                        .map_err(|e| e.to_string())?;
                if count == 0 {
                    return Err("statistics round summed zero rows".into());
                }
                let nf = count as f64;
                let mean: Vec<f64> = sx.iter().map(|s| s / nf).collect();
                let std: Vec<f64> = sxx
                    .iter()
                    .zip(&mean)
                    .map(|(q, m)| (q / nf - m * m).max(0.0).sqrt().max(STD_FLOOR))
                    .collect();
                info!(rows = count, "federated feature statistics computed");
                rec.eval_examples = count;
                self.lock().preprocess = Some(Preprocess { mean, std });
                Ok(())
            }
            RoundKind::Train | RoundKind::Evaluate => {
                let decoded = match &sum {
                    RoundSum::U32(r) => self.quant.decode::<u32>(&r.sum, d, n),
                    RoundSum::U64(r) => self.quant.decode::<u64>(&r.sum, d, n),
                }
                .map_err(|e| e.to_string())?;
                let ex = &decoded.extras;
                if ex.len() >= 3 && ex[1] > 0 {
                    rec.accuracy = Some(ex[0] as f64 / ex[1] as f64);
                    rec.loss = Some(ex[2] as f64 / 1000.0 / ex[1] as f64);
                    rec.eval_examples = ex[1] as u64;
                }
                let mut g = self.lock();
                if kind == RoundKind::Evaluate {
                    g.final_accuracy = rec.accuracy;
                    g.final_done = true;
                    return Ok(());
                }
                let mut x = g.model.flatten();
                let mut opt = g.optimiser.clone();
                opt.step(&mut x, &decoded.mean)?;
                let model = g.model.unflatten_like(&x).map_err(|e| e.to_string())?;
                let bytes = model.to_safetensors(None).map_err(|e| e.to_string())?;
                if bytes.len() as u64 > self.settings.limits.max_model_bytes {
                    return Err("updated model exceeds limits.max_model_bytes".into());
                }
                g.optimiser = opt;
                g.model = model;
                g.model_bytes = Arc::new(bytes);
                g.model_round = rec.round;
                g.completed += 1;
                rec.message = format!("Σweight = {}", decoded.total_weight);
                Ok(())
            }
        }
    }
}

/// Aborts the active round if the driver future is dropped (shutdown).
struct AbortOnDrop {
    fed: Arc<Federation>,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut g = self.fed.lock();
        if let Some(r) = g.round.as_mut() {
            r.engine.abort("coordinator shutting down");
        }
        g.round = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_model_is_deterministic() -> Result<(), CoordinatorError> {
        let s = Settings::default();
        let a = initial_model(&s)?
            .to_safetensors(None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let b = initial_model(&s)?
            .to_safetensors(None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn joins_are_limited_named_and_bound_to_the_tls_identity() -> Result<(), CoordinatorError> {
        let mut s = Settings {
            min_sites: 2,
            max_sites: 2,
            ..Default::default()
        };
        s.tls.insecure = true;
        let fed = Federation::new(s)?;
        let a = fed
            .join("a", &[1; 32], None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        assert_eq!(
            fed.join("b", &[1; 32], Some("a")),
            Err(CoreError::IdentityMismatch {
                peer: "a".into(),
                site: "b".into()
            })
        );
        assert!(fed.join("b", &[1; 32], Some("b")).is_ok());
        assert!(matches!(
            fed.join("c", &[1; 32], None),
            Err(CoreError::Limit(_))
        ));
        assert!(matches!(
            fed.join("../x", &[1; 32], None),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            fed.join("a", &[], None),
            Err(CoreError::Invalid(_))
        ));
        // Rejoining replaces the session and keeps the member id.
        let m = fed
            .session(&a, None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?
            .member;
        let a2 = fed
            .join("a", &[2; 32], None)
            .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        assert_eq!(fed.session(&a, None).err(), Some(CoreError::UnknownSession));
        assert_eq!(fed.session(&a2, None).map(|i| i.member).ok(), Some(m));
        assert!(matches!(
            fed.session(&a2, Some("b")),
            Err(CoreError::IdentityMismatch { .. })
        ));
        // No round is running: stage messages are refused without effect.
        assert!(matches!(
            fed.download(&a2, None, 1),
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            fed.advertise(
                &a2,
                None,
                pb::KeyAdvert {
                    round: 1,
                    member: m,
                    ..Default::default()
                },
                Vec::new()
            ),
            Err(CoreError::WrongRound { .. })
        ));
        Ok(())
    }

    #[test]
    fn plain_aggregator_checks_round_duplicate_and_length() {
        let mut p = Plain::<u32> {
            round: 3,
            expected: [1, 2].into_iter().collect(),
            received: BTreeSet::new(),
            acc: vec![0; 2],
            deadline: Some(Instant::now() + Duration::from_secs(9)),
            min_survivors: 2,
            out: None,
        };
        assert!(matches!(
            p.input(2, 1, &[1, 2]),
            Err(ProtocolError::WrongRound { .. })
        ));
        assert!(matches!(
            p.input(3, 1, &[1]),
            Err(ProtocolError::WrongLength { .. })
        ));
        assert!(p.input(3, 1, &[1, 2]).is_ok());
        assert!(matches!(
            p.input(3, 1, &[1, 2]),
            Err(ProtocolError::Duplicate(1))
        ));
        assert!(matches!(
            p.input(3, 7, &[1, 2]),
            Err(ProtocolError::NotParticipant(7))
        ));
        assert!(p.input(3, 2, &[5, 5]).is_ok());
        match p.out.take() {
            Some(Ok(r)) => assert_eq!(r.sum, vec![6, 7]),
            other => panic!("expected a sum, got {other:?}"),
        }
    }
}
