//! The federation core: the [`Federation`] handle shared by the gRPC handlers
//! and the round driver. No tonic here; the `grpc` module translates requests
//! into calls on [`Federation`].
//!
//! One round, as the driver ([`Federation::run`]) sees it:
//!
//! ```text
//! wait for min_sites ─▶ scheduler: RoundPlan ─▶ RoundStart ─▶ round: machine stages (site RPCs + deadlines)
//!        ▲                                                          │ Finished(sum)
//!        └── checkpoint ◀── outcome: optimiser step / statistics ◀──┘   (failure: model untouched)
//! ```
//!
//! Time is read only at the edges (each entry point and each driver wake-up,
//! from tokio's clock so tests can pause it) and passed down as `now`.

mod decline;
mod liveness;
mod offlock;
pub mod outcome;
pub mod registry;
mod resume;
pub mod round;
pub mod scheduler;
mod sealed;
mod spill;
mod sum;
mod task_file;
mod upload;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use confide_crypto::ProtocolError;
use confide_crypto::protocol::StageTimeouts;
use confide_crypto::protocol::{AnyCoordinator, AnyRoundResult};
use confide_crypto::quant::Quantiser;
use confide_proto::model::{Model, ModelImage};
use confide_proto::v1 as pb;
use confide_proto::{context, convert};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::checkpoint::{CheckpointStore, Manifest, Preprocess, RoundRecord};
use crate::error::{CoordinatorError, RequestError};
use crate::metrics::Metrics;
use crate::optim::ServerOptimiser;
use crate::settings::Settings;
pub use liveness::TaskStream;
use outcome::{Context, Outcome, OutcomeError};
use registry::Registry;
pub use registry::SessionInfo;
use round::{ActiveRound, SiteMessage, task};
pub use scheduler::RoundKind;
use scheduler::{PlanError, Progress};
use upload::UploadSlots;
pub use upload::{PendingUpload, Upload};

/// The current time on tokio's clock (virtual under a paused test runtime).
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

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

/// The CA fingerprint bound into every round's context: SHA-256 of the DER
/// of the CA certificate the sites were issued under. Without TLS (local
/// experiments and tests) there is no CA, so both sides use
/// [`context::NO_CA`], 32 zero bytes; a site without a CA does the same.
fn ca_fingerprint(s: &Settings) -> Result<[u8; 32], CoordinatorError> {
    if s.tls.insecure {
        return Ok(context::NO_CA);
    }
    let (ca, _, _) = s.tls_files()?;
    let pem =
        std::fs::read(&ca).map_err(|e| CoordinatorError::Tls(format!("{}: {e}", ca.display())))?;
    context::ca_fingerprint_pem(&pem)
        .map_err(|e| CoordinatorError::Tls(format!("{}: {e}", ca.display())))
}

/// The initial global model from the settings: a built-in model seeded (so
/// it is the same on every fresh start), or the tensors of `model.path`.
pub fn initial_model(s: &Settings) -> Result<Model, CoordinatorError> {
    Ok(s.initial_model_and_hash()?.0)
}

struct Inner {
    registry: Registry,
    round: Option<ActiveRound>,
    /// The global model, held once as f32: downloads, announcements and
    /// checkpoints encode its safetensors file from it as they need it.
    model: Arc<ModelImage>,
    model_round: u64,
    optimiser: ServerOptimiser,
    preprocess: Option<Preprocess>,
    next_round: u64,
    completed: u64,
    history: Vec<RoundRecord>,
    final_accuracy: Option<f64>,
    final_done: bool,
    /// Survivor sets sites reported signing on the current model (`decline.rs`).
    replay: scheduler::ReplayClaims,
}

impl Inner {
    /// Sites blamed in at least `after` rounds of the history (none if 0).
    fn excluded(&self, after: u32) -> BTreeSet<String> {
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for r in &self.history {
            let sites: BTreeSet<&str> = r.blamed.iter().map(|(s, _)| s.as_str()).collect();
            for s in sites {
                *counts.entry(s).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|&(_, n)| after > 0 && n >= after)
            .map(|(s, _)| s.to_string())
            .collect()
    }

    /// Connected sites that may be put in a cohort.
    fn eligible(&self, exclude_after: u32) -> Vec<(confide_crypto::MemberId, String)> {
        let excluded = self.excluded(exclude_after);
        self.registry
            .connected()
            .into_iter()
            .filter(|(_, name)| !excluded.contains(name))
            .collect()
    }

    fn progress(&self) -> Progress {
        Progress {
            next_round: self.next_round,
            completed: self.completed,
            preprocessed: self.preprocess.is_some(),
            final_done: self.final_done,
            num_params: self.model.model().num_params(),
        }
    }
}

/// The federation: shared by the gRPC handlers and the round driver.
pub struct Federation {
    settings: Settings,
    quant: Quantiser,
    config_hash: String,
    /// SHA-256 of the federation CA certificate's DER, bound into every
    /// round's context ([`confide_proto::context`]); read from the CA file
    /// when the first round starts, so a federation opened only to inspect
    /// its checkpoints needs no TLS files.
    ca_fingerprint: std::sync::OnceLock<[u8; 32]>,
    /// Where checkpoints go (`[checkpoints] dir` or `url`), if anywhere.
    pub(crate) store: Option<Arc<dyn CheckpointStore>>,
    inner: Mutex<Inner>,
    wake: Notify,
    uploads: UploadSlots,
    grace_done: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("federation", &self.settings.federation)
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Validate the settings and resume from the latest checkpoint of the same config.
    pub fn new(settings: Settings) -> Result<Arc<Self>, CoordinatorError> {
        let metrics = Arc::new(Metrics::new(&settings));
        Self::with_metrics(settings, metrics)
    }

    /// [`Federation::new`], recording into `metrics` (which the caller may
    /// serve, see [`crate::metrics::endpoint`]).
    pub fn with_metrics(
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, CoordinatorError> {
        let store = settings.checkpoints.open()?;
        Self::with_store(settings, metrics, store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a handler panicked mid-update; the state is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The metrics this federation records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Re-counts the sites with an open task stream for the metrics (a
    /// stream that ended is only noticed when looked at).
    pub fn refresh_connected(&self) {
        let n = self.lock().registry.connected_count();
        self.metrics.set_connected_sites(n);
    }

    /// The CA fingerprint of every round's context (read once).
    fn ca_fingerprint(&self) -> Result<[u8; 32], CoordinatorError> {
        if let Some(fp) = self.ca_fingerprint.get() {
            return Ok(*fp);
        }
        let fp = ca_fingerprint(&self.settings)?;
        Ok(*self.ca_fingerprint.get_or_init(|| fp))
    }

    /// The current global model bytes (safetensors), encoded for the
    /// caller (tools and tests; the federation never holds them).
    pub fn model_bytes(&self) -> Arc<Vec<u8>> {
        let image = self.model_image();
        Arc::new(image.to_vec().unwrap_or_default())
    }

    /// The current global model and its file's layout and SHA-256.
    pub fn model_image(&self) -> Arc<ModelImage> {
        self.lock().model.clone()
    }

    /// Round history.
    pub fn history(&self) -> Vec<RoundRecord> {
        self.lock().history.clone()
    }

    /// (current round, stage, connected sites, completed training rounds).
    pub fn status(&self) -> (u64, String, Vec<String>, u64) {
        let g = self.lock();
        let (round, stage) = match &g.round {
            Some(r) => (r.id, format!("{} {}", r.kind.name(), r.machine.stage())),
            None => (0, "waiting".to_string()),
        };
        let mut names: Vec<String> = g.registry.connected().into_iter().map(|(_, n)| n).collect();
        names.sort();
        (round, stage, names, g.completed)
    }

    /// `Join`: register (or re-register) a site; returns a fresh session token.
    pub fn join(
        &self,
        site: &str,
        verifying_key: &[u8],
        peer: Option<&str>,
    ) -> Result<String, RequestError> {
        let session =
            self.lock()
                .registry
                .join(site, verifying_key, peer, self.settings.max_sites)?;
        info!(site, "site joined");
        self.wake.notify_one();
        Ok(session)
    }

    /// Look a session up.
    pub fn session(&self, session: &str, peer: Option<&str>) -> Result<SessionInfo, RequestError> {
        self.lock().registry.session(session, peer)
    }

    /// `Tasks`: open (or replace) the site's task stream.
    pub fn open_tasks(
        self: &Arc<Self>,
        session: &str,
        peer: Option<&str>,
    ) -> Result<TaskStream, RequestError> {
        let mut g = self.lock();
        let info = g.registry.session(session, peer)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(r) = g.round.as_mut()
            && r.lost.remove(&info.member).is_some()
        {
            info!(site = %info.site, round = r.id, "site came back within the reconnect grace");
        }
        if let Some(r) = g.round.as_ref()
            && let Some(tasks) = r.sent.get(&info.member)
        {
            info!(site = %info.site, round = r.id, tasks = tasks.len(), "task stream reopened; replaying this round's tasks");
            for t in tasks {
                let _ = tx.send(t.clone());
            }
        }
        let stream = g.registry.set_stream(&info.site, tx);
        self.metrics
            .set_connected_sites(g.registry.connected_count());
        drop(g);
        self.wake.notify_one();
        Ok(TaskStream::new(rx, self, info.site, stream))
    }

    /// Run `f` on the active round if the session's site may act in `round`,
    /// then send what the machine produced (at `now`).
    fn with_round<T>(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        now: Instant,
        f: impl FnOnce(&mut ActiveRound, &SessionInfo, Vec<u8>) -> Result<T, RequestError>,
    ) -> Result<T, RequestError> {
        let mut g = self.lock();
        let info = g.registry.session(session, peer)?;
        let vk = g.registry.verifying_key(&info.site);
        let Inner {
            round: active,
            registry,
            ..
        } = &mut *g;
        let r = active.as_mut().ok_or(RequestError::WrongRound {
            expected: 0,
            got: round,
        })?;
        r.admit(&info, round)?;
        let out = f(r, &info, vk)?;
        r.pump(registry, now);
        // With a member lost, this message may leave the stage waiting for
        // lost members only: the driver decides whether to stop waiting.
        let finished = r.needs_driver() || !r.lost.is_empty();
        drop(g);
        if finished {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// The one route of the stage messages: session, round and cohort
    /// checks, the message's member must be the session's, then `build`
    /// (given the site's verifying key) converts it for the machine.
    fn route(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        claimed: confide_crypto::MemberId,
        build: impl FnOnce(Vec<u8>) -> Result<SiteMessage, RequestError>,
    ) -> Result<(), RequestError> {
        let now = clock();
        self.with_round(session, peer, round, now, |r, info, vk| {
            if claimed != info.member {
                return Err(RequestError::MemberMismatch {
                    site: info.site.clone(),
                    claimed,
                });
            }
            r.deliver(info.member, build(vk)?, now)
        })
    }

    /// `DownloadModel`: the model the current round started from.
    pub fn download(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
    ) -> Result<Arc<ModelImage>, RequestError> {
        let mut g = self.lock();
        let info = g.registry.session(session, peer)?;
        match g.round.as_mut() {
            Some(r) if r.id == round && r.names.contains_key(&info.member) => {
                r.bytes_out += r.model.len();
                Ok(r.model.clone())
            }
            Some(r) => Err(RequestError::WrongRound {
                expected: r.id,
                got: round,
            }),
            None => Err(RequestError::NoModel { round }),
        }
    }

    /// `AdvertiseKeys`.
    pub fn advertise(
        &self,
        session: &str,
        peer: Option<&str>,
        a: pb::KeyAdvert,
        certificate: Vec<u8>,
    ) -> Result<(), RequestError> {
        self.route(session, peer, a.round, a.member, |identity| {
            Ok(SiteMessage::Advert {
                advert: convert::key_advert_from_proto(&a),
                identity,
                certificate,
            })
        })
    }

    /// `ShareKeys`.
    pub fn share_keys(
        &self,
        session: &str,
        peer: Option<&str>,
        req: pb::ShareKeysRequest,
    ) -> Result<(), RequestError> {
        self.route(session, peer, req.round, req.from, |_| {
            Ok(SiteMessage::Shares(convert::share_bundle_from_proto(&req)?))
        })
    }

    /// `Consistency`: a survivor's signature on the survivor set.
    pub fn consistency(
        &self,
        session: &str,
        peer: Option<&str>,
        req: pb::ConsistencyResponse,
    ) -> Result<(), RequestError> {
        self.route(session, peer, req.round, req.member, |_| {
            Ok(SiteMessage::Consistency(
                convert::consistency_response_from_proto(&req),
            ))
        })
    }

    /// `Unmask`.
    pub fn unmask(
        &self,
        session: &str,
        peer: Option<&str>,
        req: pb::UnmaskResponse,
    ) -> Result<(), RequestError> {
        self.route(session, peer, req.round, req.from, |_| {
            Ok(SiteMessage::Unmask(convert::unmask_response_from_proto(
                &req,
            )?))
        })
    }

    /// Start a masked-input upload from its header: checks session, round,
    /// stage, duplicate and length before anything is buffered, and claims
    /// the member's one stream. The upload then waits for its slot
    /// ([`Self::upload_slot`]); the site sends no data until it has one.
    pub fn claim_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        total_len: u64,
    ) -> Result<PendingUpload, RequestError> {
        let g = self.lock();
        let info = g.registry.session(session, peer)?;
        let r = g.round.as_ref().ok_or(RequestError::WrongRound {
            expected: 0,
            got: round,
        })?;
        let packing = r.precheck_upload(&info, round, total_len)?;
        // Claimed under the lock that delivery takes too: a second stream
        // sees either this claim or the submitted vector.
        let claim = self.uploads.claim(round, info.member)?;
        let stage_secs = u64::from(self.settings.secagg.stage_timeout_secs);
        let deadline = match r.machine.poll_timeout() {
            Some(d) => tokio::time::Instant::from_std(d),
            None => tokio::time::Instant::now() + Duration::from_secs(stage_secs),
        };
        Ok(PendingUpload {
            round,
            member: info.member,
            total: total_len as usize,
            packing,
            deadline,
            claim,
        })
    }

    /// Waits for an upload slot for `pending`, until the stage deadline at
    /// most; the upload then buffers in memory within the budget, or spills.
    pub async fn upload_slot(&self, pending: PendingUpload) -> Result<Upload, RequestError> {
        // The wire bytes as they arrive (the add reads them directly).
        let bytes = pending.packing.total_bytes() as u64;
        let permit = self
            .uploads
            .slot(pending.round, bytes, pending.deadline)
            .await?;
        Upload::new(pending, permit, &self.settings.limits.spill_dir())
    }

    /// [`Self::claim_upload`], then [`Self::upload_slot`].
    pub async fn begin_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        round: u64,
        total_len: u64,
    ) -> Result<Upload, RequestError> {
        let pending = self.claim_upload(session, peer, round, total_len)?;
        self.upload_slot(pending).await
    }

    /// Finish an upload: the whole vector goes into the sum at once, with the
    /// signed masking set its first chunk carried (required in a secure
    /// round, ignored in a plaintext one). In a secure round only the
    /// acceptance takes the lock; the add runs on a blocking thread
    /// (`offlock.rs`).
    pub async fn finish_upload(
        &self,
        session: &str,
        peer: Option<&str>,
        up: Upload,
        masking: Option<pb::MaskingSet>,
    ) -> Result<(), RequestError> {
        let (round, member) = (up.round, up.member);
        // Slot and claim are held until the vector is in the sum.
        let (data, hold) = up.into_data()?;
        let now = clock();
        let masking = masking.as_ref().map(convert::masking_set_from_proto);
        let owed = self.with_round(session, peer, round, now, |r, info, _| {
            if info.member != member {
                return Err(RequestError::UnknownSession);
            }
            if r.sum.is_none() {
                // Plaintext rounds take the vector whole (local experiments).
                let vector = data
                    .into_vec()
                    .map_err(|e| upload::spill_error(&self.settings.limits.spill_dir(), e))?;
                r.deliver(member, SiteMessage::Input { vector, masking }, now)?;
                return Ok(None);
            }
            // Already checked against the round's length in `push`.
            let bytes = usize::try_from(data.len()).unwrap_or(usize::MAX);
            let owed = r.accept_outside(member, bytes, masking, now)?;
            Ok(owed.map(|owed| (owed, data)))
        })?;
        if let Some((owed, mut data)) = owed {
            let dir = self.settings.limits.spill_dir();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = owed.add(&mut data) {
                    // The owed add is dropped unmade: the round fails
                    // rather than unmask a sum missing an accepted input.
                    tracing::error!(dir = %dir.display(), "reading back a spilled upload: {e}");
                }
                hold.recycle(data);
                drop(hold);
            })
            .await
            .map_err(|_| RequestError::ShuttingDown)?;
        }
        Ok(())
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
        g.registry
            .broadcast(task(pb::task::Kind::Done(pb::FederationDone {
                rounds: g.completed,
            })));
    }

    /// Drop every task stream (shutdown).
    pub fn close_streams(&self) {
        self.lock().registry.close_streams();
        self.metrics.set_connected_sites(0);
    }

    /// Whether every site's task stream has gone.
    pub fn all_disconnected(&self) -> bool {
        self.lock().registry.all_disconnected()
    }
}

mod driver;

#[cfg(test)]
mod tests;
