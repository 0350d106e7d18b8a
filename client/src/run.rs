//! The run loop: connect (outbound only), Join, follow the task stream,
//! reconnecting with backoff when the transport fails.
//!
//! This module owns only the connection's life and the reconnect policy; it
//! is generic over the [`Transport`], so tests drive it against an in-memory
//! coordinator (`run/tests.rs`). What a task means is decided by the
//! [`RoundDriver`] (no I/O); local training runs through
//! [`trainer::local_vector`] on a blocking thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use confide_crypto::Suite;
use confide_crypto::protocol::RingVec;
use confide_crypto::suite::SigningKey;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tracing::{error, info, warn};

use crate::config::{SiteConfig, SiteReport, load_signing_key};
use crate::error::ClientError;
use crate::identity;
use crate::metrics::SiteMetrics;
use crate::revocation::CrlStore;
use crate::round::{Action, DriverConfig, Joined, KeySource, Outgoing, Resume, RoundDriver};
use crate::train::Dataset;
use crate::trainer::{self, LocalJob, TrainerFactory};
use crate::transport::{Connection, GrpcTransport, Transport, lock};
use crate::wire::Backoff;

type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>;

/// Where a site's rows come from.
#[derive(Clone, Debug)]
pub(crate) enum DataSource {
    /// The CSV named in [`SiteConfig::data`].
    Csv,
    /// Rows the embedding service already holds (never written anywhere).
    Memory(Dataset),
    /// No rows: the site's own training command reads its data itself.
    None,
}

/// How one connection's life ended.
enum Flow {
    /// The federation said Done.
    Done,
    /// Fault injection: stop without sending.
    Vanished,
    /// The caller's shutdown future fired.
    Shutdown,
}

/// Loads the data, then runs the site over gRPC until it is done.
pub(crate) async fn run(
    cfg: SiteConfig,
    data: DataSource,
    trainer: TrainerFactory,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<SiteReport, ClientError> {
    cfg.validate()?;
    let data = match data {
        DataSource::Csv => {
            let path = cfg.data.clone();
            let label = cfg.label.clone();
            tokio::task::spawn_blocking(move || Dataset::from_csv(&path, &label))
                .await
                .map_err(|e| ClientError::Task(e.to_string()))??
        }
        DataSource::Memory(d) => d,
        DataSource::None => Dataset::new(ndarray::Array2::zeros((0, 0)), Vec::new(), Vec::new())?,
    };
    let runner = Runner::new(&cfg, data, trainer, |crls| GrpcTransport::new(&cfg, crls))?;
    runner.run(shutdown).await
}

/// The run loop's state: the transport, the protocol state and the rows.
pub(crate) struct Runner<T> {
    transport: T,
    /// Shared with the blocking thread that handles each task
    /// ([`Runner::off_runtime`]); never locked across an `.await`.
    driver: Arc<Mutex<RoundDriver>>,
    train: Dataset,
    test: Dataset,
    trainer: TrainerFactory,
    rng: StdRng,
    /// Every configured coordinator URL (for the give-up error).
    url: String,
    max_reconnect: Duration,
    /// The newest federation CRL seen (mTLS only).
    crls: Option<Arc<CrlStore>>,
    metrics: Option<Arc<SiteMetrics>>,
}

impl<T: Transport> Runner<T> {
    /// Splits off the held-out rows, loads (or, in insecure mode without a
    /// key file, generates) the signing key, reads the CRL file, then makes
    /// the transport (which checks the coordinator's certificate against the
    /// CRL store): local problems are reported in that order, before any
    /// connection attempt.
    pub(crate) fn new(
        cfg: &SiteConfig,
        data: Dataset,
        trainer: TrainerFactory,
        transport: impl FnOnce(Option<Arc<CrlStore>>) -> Result<T, ClientError>,
    ) -> Result<Self, ClientError> {
        let (train, test) = if data.is_empty() {
            info!(site = %cfg.site, "no local CSV: the training command reads its own data");
            (data.clone(), data)
        } else {
            let (train, test) = data.split_holdout(cfg.holdout, 0)?;
            info!(site = %cfg.site, train_rows = train.len(), holdout_rows = test.len(), features = train.num_features(), "data loaded; rows stay on this machine");
            (train, test)
        };
        let mut rng: StdRng = rand::make_rng();
        let (signing, key_source) = match &cfg.signing_key {
            Some(p) => (load_signing_key(p)?, KeySource::File),
            None => (
                SigningKey::generate(Suite::Intl, &mut rng),
                KeySource::Ephemeral,
            ),
        };
        let ca_fingerprint = identity::ca_fingerprint(cfg)?;
        let crls = identity::crl_store(cfg)?;
        let transport = transport(crls.clone())?;
        let verifier_cfg = cfg.clone();
        let verifier_crls = crls.clone();
        // Shared by the rounds: each neighbour's certificate is checked
        // against the CA once while it and the CRL stay the same.
        let checked = Arc::new(identity::CheckedCertificates::new());
        let driver = RoundDriver::new(
            DriverConfig {
                site: cfg.site.clone(),
                signing,
                key_source,
                vanish: cfg.vanish,
                authenticated: identity::authenticated(cfg),
                num_features: train.num_features(),
                verifier: Box::new(move |suite| {
                    let crl = verifier_crls.as_ref().and_then(|s| s.current());
                    identity::verifier(&verifier_cfg, suite, crl.as_deref(), &checked)
                }),
                allow_plaintext: cfg.allow_plaintext,
                policy: cfg.policy.clone(),
                max_epochs: cfg.max_epochs,
                ca_fingerprint,
            },
            StdRng::from_rng(&mut rng),
        )
        .with_state_dir(cfg.state_dir.as_deref())?;
        Ok(Runner {
            transport,
            driver: Arc::new(Mutex::new(driver)),
            train,
            test,
            trainer,
            rng,
            url: cfg.coordinator.clone(),
            max_reconnect: cfg.max_reconnect,
            crls,
            metrics: cfg.metrics.clone(),
        })
    }

    /// Runs until Done, shutdown, vanish, or an error reconnecting cannot fix.
    pub(crate) async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<SiteReport, ClientError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut shutdown: Shutdown<'_> = shutdown.as_mut();
        let mut backoff = Backoff::default();
        let mut failing_since: Option<Instant> = None;
        loop {
            // Set when a task arrives on this connection: the link works.
            let mut progressed = false;
            let outcome = self.serve(shutdown.as_mut(), &mut progressed).await;
            match outcome {
                Ok(Flow::Done | Flow::Shutdown) => return Ok(self.driver().report()),
                Ok(Flow::Vanished) => {
                    self.driver().report_mut().vanished = true;
                    return Ok(self.driver().report());
                }
                Err(e) if e.is_transient() => {
                    // Unreachable or not serving: on to the next coordinator.
                    self.transport.failed(&e);
                    if e.is_session_lost() {
                        // The coordinator no longer knows the session (restart): Join again.
                        self.driver().session_lost();
                        // The coordinator is up and answering: rejoin promptly.
                        backoff.reset();
                    }
                    if progressed {
                        failing_since = None;
                        backoff.reset();
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.max_reconnect {
                        return Err(ClientError::GaveUp {
                            url: self.url.clone(),
                            after: since.elapsed(),
                            last: Box::new(e),
                        });
                    }
                    if let Some(m) = &self.metrics {
                        m.reconnect();
                    }
                    let delay = backoff.next_delay(&mut self.rng);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "connection to the coordinator lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.as_mut() => return Ok(self.driver().report()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection's life: connect, Join if needed, resend what was
    /// pending, follow the task stream.
    async fn serve(
        &mut self,
        mut shutdown: Shutdown<'_>,
        progressed: &mut bool,
    ) -> Result<Flow, ClientError> {
        let mut conn = tokio::select! {
            c = self.transport.connect() => c?,
            _ = shutdown.as_mut() => return Ok(Flow::Shutdown),
        };
        let known = self.driver().session().map(str::to_string);
        let session = match known {
            Some(s) => s,
            None => {
                let session = self.join(&mut conn).await?;
                info!(coordinator = %self.transport.url(), "joined this coordinator");
                session
            }
        };
        conn.open_tasks(session).await?;
        let url = self.transport.url();
        info!(coordinator = %url, "task stream open");
        let resend = self.driver().resume(Instant::now()) == Resume::Resend;
        if resend && let Err(e) = self.flush(&mut conn).await {
            self.driver().resend_failed(e)?;
        }
        loop {
            let msg = tokio::select! {
                m = conn.next_task() => m,
                _ = shutdown.as_mut() => {
                    info!("shutdown requested");
                    return Ok(Flow::Shutdown);
                }
            };
            let Some(task) = msg? else {
                return Err(ClientError::StreamClosed);
            };
            *progressed = true;
            if let (Some(store), Some(confide_proto::v1::task::Kind::RoundStart(rs))) =
                (&self.crls, &task.kind)
            {
                store.offer_from_coordinator(&rs.crl, "RoundStart");
            }
            let round = self.driver().current_round();
            let outcome = self.on_task(&mut conn, task).await;
            if let Err(e) = &outcome
                && !e.is_transient()
            {
                // The Decline names the round refused, which may be the one
                // just announced rather than the one in progress before.
                let decline = self.driver().decline(e);
                let round = decline.as_ref().map(|d| d.round).or(round);
                let reason = decline.as_ref().map(|d| reason_name(d.reason_code));
                error!(round = round.unwrap_or_default(), reason, error = %e, "leaving this round; the federation continues without this site's contribution");
                self.driver().leave_round();
                if let Some(d) = decline {
                    Self::send_decline(&mut conn, d).await;
                }
            }
            self.record_rounds();
            match outcome {
                Ok(None) => {}
                Ok(Some(flow)) => return Ok(flow),
                Err(e) if e.is_transient() => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Tells the coordinator this site declines `d.round`, so it stops
    /// waiting for the site now rather than at the stage deadline. Best
    /// effort: one retry if the coordinator is busy, and a failure is only
    /// logged (the deadline still ends the wait; a lost link gets the
    /// reconnect grace).
    async fn send_decline(conn: &mut T::Conn, d: confide_proto::v1::DeclineRequest) {
        let (round, reason) = (d.round, reason_name(d.reason_code));
        for attempt in 0..2 {
            match conn.decline(d.clone()).await {
                Ok(()) => {
                    info!(
                        round,
                        reason, "the coordinator was told this site declines the round"
                    );
                    return;
                }
                Err(e) if e.is_busy() && attempt == 0 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    warn!(round, reason, error = %e, "could not tell the coordinator this site declines the round; it stops waiting at the stage deadline");
                    return;
                }
            }
        }
    }

    /// Hands the rounds the driver saw end to the metrics, if any.
    fn record_rounds(&mut self) {
        let finished = self.driver().take_finished();
        if let Some(m) = &self.metrics {
            for r in &finished {
                m.round(r);
            }
        }
    }

    async fn join(&mut self, conn: &mut T::Conn) -> Result<String, ClientError> {
        // A coordinator refusing joins as busy (its join rate, when a whole
        // federation starts at once) is answering: ask it again after a
        // jittered pause, for as long as a reconnect would be tried.
        let mut busy = Backoff::default();
        let since = Instant::now();
        loop {
            let request = self.driver().join_request()?;
            let resp = match conn.join(request).await {
                Err(e) if e.is_busy() && since.elapsed() < self.max_reconnect => {
                    let delay = busy.next_delay(&mut self.rng);
                    info!(error = %e, retry_in_ms = delay.as_millis() as u64, "join refused as busy; asking again");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                r => r?,
            };
            if let Some(store) = &self.crls {
                store.offer_from_coordinator(&resp.crl, "JoinResponse");
            }
            if self.driver().joined(resp)? == Joined::Session {
                return Ok(self.driver().session().unwrap_or_default().to_string());
            }
        }
    }

    /// Performs the actions a task leads to; `Some` ends the connection.
    async fn on_task(
        &mut self,
        conn: &mut T::Conn,
        task: confide_proto::v1::Task,
    ) -> Result<Option<Flow>, ClientError> {
        let now = Instant::now();
        let mut action = self.off_runtime(move |d| d.on_task(task, now)).await??;
        loop {
            action = match action {
                Action::Wait => return Ok(None),
                Action::Done => return Ok(Some(Flow::Done)),
                Action::Vanish => return Ok(Some(Flow::Vanished)),
                Action::Download(req) => {
                    let chunks = conn.download_model(req).await?;
                    self.off_runtime(move |d| d.model_downloaded(&chunks))
                        .await??
                }
                Action::Compute(job) => {
                    let v = self.compute(job).await?;
                    self.off_runtime(move |d| d.input_ready(v)).await??
                }
                Action::Send => {
                    self.flush(conn).await?;
                    Action::Wait
                }
            };
        }
    }

    /// The protocol state, for the cheap calls made on the runtime.
    fn driver(&self) -> MutexGuard<'_, RoundDriver> {
        lock(&self.driver)
    }

    /// Runs `f` on the protocol state on a blocking thread. A stage's task
    /// can mean hundreds of certificates, signatures and key agreements
    /// (k = 217 at n = 1000), and the model's digest: done on a runtime
    /// worker, they would leave this process's connections unpolled and
    /// their keep-alive pings unanswered (for tens of seconds where one
    /// process hosts many sites, as `confide bench` does, until the pings
    /// time out and the connections close).
    async fn off_runtime<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RoundDriver) -> R + Send + 'static,
    ) -> Result<R, ClientError> {
        let driver = self.driver.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&driver)))
            .await
            .map_err(|e| ClientError::Task(e.to_string()))
    }

    /// Runs the round's local computation on a blocking thread.
    async fn compute(&mut self, job: LocalJob) -> Result<RingVec, ClientError> {
        let (train, test) = (self.train.clone(), self.test.clone());
        let factory = self.trainer.clone();
        let mut rng = StdRng::from_rng(&mut self.rng);
        tokio::task::spawn_blocking(move || {
            trainer::local_vector(job, &train, &test, &factory, &mut rng)
        })
        .await
        .map_err(|e| ClientError::Task(e.to_string()))?
    }

    /// Sends the round's pending message. `ALREADY_EXISTS` means an earlier
    /// attempt arrived: success. `RESOURCE_EXHAUSTED` (the coordinator's
    /// rate limit or upload slots) is retried after a backoff while the
    /// stage deadline allows ([`RoundDriver::busy_backoff`]).
    async fn flush(&mut self, conn: &mut T::Conn) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            let Some(out) = self.driver().outbox() else {
                return Ok(());
            };
            let result = match out {
                Outgoing::Advertise(m) => conn.advertise_keys(m).await,
                Outgoing::Shares(m) => conn.share_keys(m).await,
                Outgoing::Masked(chunks) => conn.submit_masked_input(chunks).await,
                Outgoing::Consistency(m) => conn.consistency(m).await,
                Outgoing::Unmask(m) => conn.unmask(m).await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_already_received() => {
                    tracing::debug!(error = %e, "already received by the coordinator");
                }
                Err(e) if e.is_busy() => {
                    // Uniform in [0.5, 1] from 53 random bits.
                    let jitter = 0.5
                        + 0.5 * (rand::Rng::next_u64(&mut self.rng) >> 11) as f64
                            / (1u64 << 53) as f64;
                    let Some(wait) = self.driver().busy_backoff(attempt, jitter, Instant::now())
                    else {
                        return Err(e);
                    };
                    tracing::info!(error = %e, retry_in_ms = wait.as_millis() as u64, "coordinator busy; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.driver().sent(Instant::now());
            return Ok(());
        }
    }
}

/// The wire name of a decline reason code, for logs.
fn reason_name(code: i32) -> &'static str {
    confide_proto::v1::DeclineReason::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("DECLINE_REASON_OTHER")
}

#[cfg(test)]
mod tests;
