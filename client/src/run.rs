//! The run loop: connect (outbound only), Join, follow the Tasks stream and
//! answer each stage, reconnecting with backoff when the transport fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confide_crypto::protocol::{IdentityVerifier, SiteOutput};
use confide_crypto::quant::Quantiser;
use confide_crypto::ring::RingElement;
use confide_crypto::stats::stats_len;
use confide_crypto::suite::{SigningKey, VerifyingKey};
use confide_crypto::{MemberId, ProtocolError, Ring, RoundConfig, SiteMachine, Stage, Suite};
use confide_proto::v1;
use confide_proto::v1::site_client::SiteClient;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, error, info, warn};

use crate::config::{SiteConfig, SiteReport, Vanish, load_signing_key};
use crate::convert;
use crate::error::ClientError;
use crate::site::{DataSource, Site, TrainerFactory, fit_config};
use crate::train::{Dataset, EvalResult, FitResult, Model, Standardiser};
use crate::wire::{self, Backoff, EVAL_LEN, ModelAssembler};

type Client = SiteClient<Channel>;
type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>;

/// Trusts the verifying key the coordinator relays with each advert (binding
/// keys to certificates is a later step); refuses an empty one.
#[derive(Clone, Copy, Debug)]
pub struct RelayedKeyVerifier {
    /// The federation's suite.
    pub suite: Suite,
}

impl IdentityVerifier for RelayedKeyVerifier {
    fn verifying_key(&self, member: MemberId, identity: &[u8]) -> Result<VerifyingKey, String> {
        if identity.is_empty() {
            return Err(format!("no verifying key relayed for member {member}"));
        }
        Ok(VerifyingKey::from_bytes(self.suite, identity))
    }
}

/// The site's secure-aggregation machine in the announced ring.
enum Machine {
    U32(SiteMachine<u32>),
    U64(SiteMachine<u64>),
}

/// A quantised vector in the announced ring.
#[derive(Debug)]
enum Vector {
    U32(Vec<u32>),
    U64(Vec<u64>),
}

/// A stage message waiting to be (re)sent; kept until acknowledged so it can
/// be resent after a reconnect within the stage deadline.
enum Outgoing {
    Advertise(v1::AdvertiseKeysRequest),
    Shares(v1::ShareKeysRequest),
    Masked(Vec<v1::MaskedInputChunk>),
    Unmask(v1::UnmaskResponse),
}

impl Outgoing {
    fn stage(&self) -> Stage {
        match self {
            Outgoing::Advertise(_) => Stage::AdvertiseKeys,
            Outgoing::Shares(_) => Stage::ShareKeys,
            Outgoing::Masked(_) => Stage::MaskedInput,
            Outgoing::Unmask(_) => Stage::Unmask,
        }
    }

    fn from_site<R: RingElement>(o: SiteOutput<R>, session: &str, round: u64) -> Outgoing {
        match o {
            SiteOutput::Advertise(a) => Outgoing::Advertise(v1::AdvertiseKeysRequest {
                session: session.to_string(),
                advert: Some(convert::key_advert_to_proto(&a)),
            }),
            SiteOutput::Shares(b) => Outgoing::Shares(convert::share_bundle_to_proto(&b, session)),
            SiteOutput::MaskedInput(v) => {
                Outgoing::Masked(wire::masked_input_chunks(session, round, &v))
            }
            SiteOutput::Unmask(u) => {
                Outgoing::Unmask(convert::unmask_response_to_proto(&u, session))
            }
        }
    }
}

/// One round in progress.
struct RoundState {
    start: v1::RoundStart,
    kind: v1::RoundKind,
    cfg: RoundConfig,
    machine: Option<Machine>,
    global: Option<Model>,
    started: Instant,
    stage_started: Instant,
    stage_secs: Vec<(Stage, f64)>,
    bytes_in: u64,
    bytes_out: u64,
    outbox: Option<Outgoing>,
    submitted: bool,
    /// From the unmask request: (survivors, dropped).
    survivors: Option<(usize, usize)>,
    /// The round's first message (advert, or plaintext input) is queued.
    kicked_off: bool,
}

impl RoundState {
    /// Records this site's time in `stage`: from the stage's input arriving
    /// to its message being acknowledged (local work plus upload).
    fn stage_done(&mut self, stage: Stage) {
        let now = Instant::now();
        self.stage_secs
            .push((stage, (now - self.stage_started).as_secs_f64()));
        self.stage_started = now;
    }

    fn deadline(&self) -> Instant {
        self.stage_started + Duration::from_secs(u64::from(self.start.stage_timeout_secs.max(1)))
    }
}

enum Flow {
    /// Keep following the task stream.
    Continue,
    /// The federation said Done.
    Done,
    /// Fault injection: stop without sending.
    Vanished,
    /// The caller's shutdown future fired.
    Shutdown,
}

struct Runner {
    cfg: SiteConfig,
    trainer: TrainerFactory,
    train: Dataset,
    test: Dataset,
    signing: SigningKey,
    ephemeral: bool,
    rng: StdRng,
    report: SiteReport,
    session: Option<String>,
    round: Option<RoundState>,
    /// Set when a task arrived since the last (re)connect: the link works.
    progressed: bool,
    /// A round this site left in this session; its replayed announcement
    /// must not start it again (the coordinator holds the first keys).
    left_round: Option<u64>,
}

pub(crate) async fn run(
    site: Site,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<SiteReport, ClientError> {
    let Site { cfg, data, trainer } = site;
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
    };
    let (train, test) = data.split_holdout(cfg.holdout, 0)?;
    info!(site = %cfg.site, train_rows = train.len(), holdout_rows = test.len(), features = train.num_features(), "data loaded; rows stay on this machine");
    let mut rng: StdRng = rand::make_rng();
    let (signing, ephemeral) = match &cfg.signing_key {
        Some(p) => (load_signing_key(p)?, false),
        None => (SigningKey::generate(Suite::Intl, &mut rng), true),
    };
    let mut runner = Runner {
        cfg,
        trainer,
        train,
        test,
        signing,
        ephemeral,
        rng,
        report: SiteReport::default(),
        session: None,
        round: None,
        progressed: false,
        left_round: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let shutdown: Shutdown<'_> = shutdown.as_mut();
    runner.run(shutdown).await
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Layers often repeat their cause's text; keep each piece once.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::CertFile {
        path: path.to_path_buf(),
        source,
    })
}

impl Runner {
    async fn run(&mut self, mut shutdown: Shutdown<'_>) -> Result<SiteReport, ClientError> {
        let endpoint = self.endpoint()?;
        let mut backoff = Backoff::default();
        let mut failing_since: Option<Instant> = None;
        loop {
            self.progressed = false;
            let outcome = self.serve(&endpoint, shutdown.as_mut()).await;
            match outcome {
                Ok(Flow::Done) => return Ok(self.report),
                Ok(Flow::Vanished) => {
                    self.report.vanished = true;
                    return Ok(self.report);
                }
                Ok(Flow::Continue | Flow::Shutdown) => return Ok(self.report),
                Err(e) if e.is_transient() => {
                    if matches!(
                        e,
                        ClientError::Refused {
                            code: tonic::Code::Unauthenticated,
                            ..
                        }
                    ) {
                        // The coordinator no longer knows the session (restart): Join again.
                        self.session = None;
                        // The coordinator is up and answering: rejoin promptly.
                        backoff.reset();
                    }
                    if self.progressed {
                        failing_since = None;
                        backoff.reset();
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.cfg.max_reconnect {
                        return Err(ClientError::GaveUp {
                            url: self.cfg.coordinator.clone(),
                            after: since.elapsed(),
                            last: Box::new(e),
                        });
                    }
                    let delay = backoff.next_delay(&mut self.rng);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "connection to the coordinator lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.as_mut() => return Ok(self.report),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let url = &self.cfg.coordinator;
        let bad = |reason: String| ClientError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(error_chain(&e)))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(tls) = self
            .cfg
            .tls
            .as_ref()
            .filter(|_| !self.cfg.insecure || url.starts_with("https"))
        {
            let ca = Certificate::from_pem(read_file(&tls.ca)?);
            let identity = Identity::from_pem(read_file(&tls.cert)?, read_file(&tls.key)?);
            let tls_cfg = ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name(tls.domain.clone());
            ep = ep
                .tls_config(tls_cfg)
                .map_err(|e| bad(format!("TLS configuration: {}", error_chain(&e))))?;
        }
        Ok(ep)
    }

    /// One connection's life: connect, Join if needed, resend what was
    /// pending, follow the task stream.
    async fn serve(
        &mut self,
        endpoint: &Endpoint,
        mut shutdown: Shutdown<'_>,
    ) -> Result<Flow, ClientError> {
        let url = self.cfg.coordinator.clone();
        let channel = tokio::select! {
            c = endpoint.connect() => c.map_err(|e| ClientError::Connect { url: url.clone(), reason: error_chain(&e) })?,
            _ = shutdown.as_mut() => return Ok(Flow::Shutdown),
        };
        let mut client = SiteClient::new(channel)
            .max_decoding_message_size(4 * confide_proto::CHUNK_BYTES)
            .max_encoding_message_size(4 * confide_proto::CHUNK_BYTES);
        let session = match &self.session {
            Some(s) => s.clone(),
            None => self.join(&mut client).await?,
        };
        let mut stream = match client
            .tasks(v1::TasksRequest {
                session: session.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(ClientError::refused("Tasks", status)),
        };
        info!(coordinator = %url, "task stream open");
        if let Some(flow) = self.resume(&mut client).await? {
            return Ok(flow);
        }
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = shutdown.as_mut() => {
                    info!("shutdown requested");
                    return Ok(Flow::Shutdown);
                }
            };
            let task = match msg {
                Ok(Some(t)) => t,
                Ok(None) => return Err(ClientError::StreamClosed),
                Err(status) => return Err(ClientError::refused("Tasks", status)),
            };
            self.progressed = true;
            let round = self.round.as_ref().map(|r| r.start.round);
            match self.on_task(&mut client, task).await {
                Ok(Flow::Continue) => {}
                Ok(flow) => return Ok(flow),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    error!(round = round.unwrap_or_default(), error = %e, "leaving this round; the federation continues without this site's contribution");
                    self.leave_round();
                }
            }
        }
    }

    async fn join(&mut self, client: &mut Client) -> Result<String, ClientError> {
        loop {
            let vk = self
                .signing
                .verifying_key()
                .map_err(|e| ClientError::Config(format!("signing key: {e}")))?;
            let req = v1::JoinRequest {
                site: self.cfg.site.clone(),
                verifying_key: vk.as_bytes().to_vec(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let resp = client
                .join(req)
                .await
                .map_err(|s| ClientError::refused("Join", s))?
                .into_inner();
            let suite: Suite = resp.suite.parse().map_err(|_| {
                ClientError::Config(format!(
                    "coordinator announced unknown suite '{}'",
                    resp.suite
                ))
            })?;
            if suite != self.signing.suite() {
                if self.ephemeral {
                    // The suite is only known after the first Join: re-register with a key of the right suite.
                    self.signing = SigningKey::generate(suite, &mut self.rng);
                    continue;
                }
                return Err(ClientError::Config(format!(
                    "the federation uses suite {suite} but the signing key is for {}",
                    self.signing.suite()
                )));
            }
            info!(site = %self.cfg.site, federation = %resp.federation, %suite, "joined the federation");
            self.left_round = None;
            if let Some(r) = self.round.take() {
                // A new session means the coordinator lost the old one (restart): its round state is gone too.
                warn!(
                    round = r.start.round,
                    "rejoined; the round in progress is abandoned"
                );
            }
            self.session = Some(resp.session.clone());
            return Ok(resp.session);
        }
    }

    fn leave_round(&mut self) {
        if let Some(r) = self.round.take() {
            self.left_round = Some(r.start.round);
        }
    }

    fn session(&self) -> String {
        self.session.clone().unwrap_or_default()
    }

    /// After a reconnect: resend the stage message that was not acknowledged,
    /// if its stage is still open.
    async fn resume(&mut self, client: &mut Client) -> Result<Option<Flow>, ClientError> {
        let Some(r) = self.round.as_mut() else {
            return Ok(None);
        };
        if r.outbox.is_none() {
            return Ok(None);
        }
        if Instant::now() > r.deadline() {
            warn!(
                round = r.start.round,
                "stage deadline passed while disconnected; leaving this round"
            );
            self.leave_round();
            return Ok(None);
        }
        info!(
            round = r.start.round,
            "resending the unacknowledged stage message"
        );
        if let Err(e) = self.flush(client).await {
            // Only a lost link is worth another reconnect; a coordinator that
            // answers but refuses the resent message has moved on.
            let link_lost = match &e {
                ClientError::Refused { code, .. } => {
                    matches!(
                        code,
                        tonic::Code::Unavailable | tonic::Code::Unauthenticated
                    )
                }
                other => other.is_transient(),
            };
            if link_lost {
                return Err(e);
            }
            if let ClientError::Refused {
                code: tonic::Code::FailedPrecondition,
                ..
            } = &e
                && let Some(r) = self.round.as_mut()
            {
                // The stage closed while the link was down; the first attempt
                // may well have arrived before the ack was lost. Keep the round:
                // the replayed tasks show whether it went on with this site.
                info!(round = r.start.round, error = %e, "stage closed meanwhile; waiting for the replayed tasks");
                r.outbox = None;
                return Ok(None);
            }
            error!(error = %e, "resent message refused; leaving this round");
            self.leave_round();
        }
        Ok(None)
    }

    /// Sends the round's pending message. `ALREADY_EXISTS` means an earlier
    /// attempt arrived: success.
    async fn flush(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let session = self.session();
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        let Some(out) = r.outbox.as_mut() else {
            return Ok(());
        };
        let stage = out.stage();
        let (call, result, bytes) = match out {
            Outgoing::Advertise(m) => {
                m.session.clone_from(&session);
                let n = prost::Message::encoded_len(m) as u64;
                (
                    "AdvertiseKeys",
                    client.advertise_keys(m.clone()).await.map(|_| ()),
                    n,
                )
            }
            Outgoing::Shares(m) => {
                m.session.clone_from(&session);
                let n = prost::Message::encoded_len(m) as u64;
                (
                    "ShareKeys",
                    client.share_keys(m.clone()).await.map(|_| ()),
                    n,
                )
            }
            Outgoing::Masked(chunks) => {
                let mut n = 0;
                for c in chunks.iter_mut() {
                    c.session.clone_from(&session);
                    n += c.data.len() as u64;
                }
                let stream = tokio_stream::iter(chunks.clone());
                (
                    "SubmitMaskedInput",
                    client.submit_masked_input(stream).await.map(|_| ()),
                    n,
                )
            }
            Outgoing::Unmask(m) => {
                m.session.clone_from(&session);
                let n = prost::Message::encoded_len(m) as u64;
                ("Unmask", client.unmask(m.clone()).await.map(|_| ()), n)
            }
        };
        match result {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                debug!(call, "already received by the coordinator");
            }
            Err(s) => return Err(ClientError::refused(call, s)),
        }
        r.outbox = None;
        r.bytes_out += bytes;
        r.stage_done(stage);
        if stage == Stage::MaskedInput {
            r.submitted = true;
        }
        debug!(round = r.start.round, %stage, bytes, "sent");
        Ok(())
    }

    /// Queues `out` and sends it, unless this is where the site must vanish.
    async fn send(&mut self, client: &mut Client, out: Outgoing) -> Result<Flow, ClientError> {
        let Some(r) = self.round.as_mut() else {
            return Ok(Flow::Continue);
        };
        if Vanish::hits(self.cfg.vanish, r.start.round, out.stage()) {
            warn!(round = r.start.round, stage = %out.stage(), "fault injection: vanishing now");
            return Ok(Flow::Vanished);
        }
        r.outbox = Some(out);
        self.flush(client).await?;
        Ok(Flow::Continue)
    }

    fn vanish_now(&self, stage: Stage) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| Vanish::hits(self.cfg.vanish, r.start.round, stage))
    }

    /// Whether `round` is the round in progress; other rounds' tasks are
    /// stale (a replay after reconnect, or a round this site left).
    fn is_current(&self, round: u64, what: &str) -> bool {
        let current = self.round.as_ref().map(|r| r.start.round);
        if current == Some(round) {
            true
        } else {
            debug!(
                round,
                ?current,
                what,
                "ignoring a task for a round this site is not in"
            );
            false
        }
    }

    async fn on_task(&mut self, client: &mut Client, task: v1::Task) -> Result<Flow, ClientError> {
        use v1::task::Kind;
        let Some(kind) = task.kind else {
            warn!("empty task ignored");
            return Ok(Flow::Continue);
        };
        match kind {
            Kind::RoundStart(rs) => self.on_round_start(client, rs).await,
            Kind::NeighbourKeys(nk) => {
                if !self.is_current(nk.round, "neighbour keys") {
                    return Ok(Flow::Continue);
                }
                let msg =
                    crate::identity::neighbour_keys(&nk, crate::identity::authenticated(&self.cfg))
                        .map_err(|e| ClientError::InvalidRound(e.to_string()))?;
                let session = self.session();
                let rng = &mut self.rng;
                let Some(r) = self.round.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let out = match r.machine.as_mut() {
                    Some(Machine::U32(m)) => {
                        step(m.handle_neighbour_keys(msg, rng), m, &session, nk.round)?
                    }
                    Some(Machine::U64(m)) => {
                        step(m.handle_neighbour_keys(msg, rng), m, &session, nk.round)?
                    }
                    None => None,
                };
                if out.is_some() {
                    r.stage_started = Instant::now();
                }
                match out {
                    Some(out) => self.send(client, out).await,
                    None => Ok(Flow::Continue),
                }
            }
            Kind::IncomingShares(is) => {
                if !self.is_current(is.round, "incoming shares") {
                    return Ok(Flow::Continue);
                }
                let msg = convert::incoming_shares_from_proto(&is);
                let Some(r) = self.round.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let ok = match r.machine.as_mut() {
                    Some(Machine::U32(m)) => routed(m.handle_incoming_shares(msg))?,
                    Some(Machine::U64(m)) => routed(m.handle_incoming_shares(msg))?,
                    None => false,
                };
                if !ok {
                    return Ok(Flow::Continue);
                }
                r.stage_started = Instant::now();
                self.submit_input(client).await
            }
            Kind::UnmaskRequest(ur) => {
                if !self.is_current(ur.round, "unmask request") {
                    return Ok(Flow::Continue);
                }
                info!(
                    round = ur.round,
                    survivors = ur.survivors.len(),
                    dropped = ur.dropped.len(),
                    "unmask requested"
                );
                let msg = convert::unmask_request_from_proto(&ur);
                let session = self.session();
                let Some(r) = self.round.as_mut() else {
                    return Ok(Flow::Continue);
                };
                r.survivors = Some((ur.survivors.len(), ur.dropped.len()));
                let out = match r.machine.as_mut() {
                    Some(Machine::U32(m)) => {
                        step(m.handle_unmask_request(msg), m, &session, ur.round)?
                    }
                    Some(Machine::U64(m)) => {
                        step(m.handle_unmask_request(msg), m, &session, ur.round)?
                    }
                    None => None,
                };
                if out.is_some() {
                    r.stage_started = Instant::now();
                }
                match out {
                    Some(out) => self.send(client, out).await,
                    None => Ok(Flow::Continue),
                }
            }
            Kind::RoundEnd(end) => {
                self.on_round_end(end);
                Ok(Flow::Continue)
            }
            Kind::Done(d) => {
                info!(
                    rounds = d.rounds,
                    site_rounds = self.report.rounds,
                    "federation done"
                );
                Ok(Flow::Done)
            }
        }
    }

    fn on_round_end(&mut self, end: v1::RoundEnd) {
        let Some(r) = self.round.take_if(|r| r.start.round == end.round) else {
            info!(round = end.round, success = end.success, message = %end.message, "round ended (this site was not taking part)");
            return;
        };
        if end.success && r.submitted {
            self.report.rounds += 1;
        }
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
            duration_secs = r.started.elapsed().as_secs_f64(),
            stages = %stages.join(" "),
            survivors = r.survivors.map(|s| s.0),
            dropped = r.survivors.map(|s| s.1),
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            "round ended"
        );
    }

    async fn on_round_start(
        &mut self,
        client: &mut Client,
        rs: v1::RoundStart,
    ) -> Result<Flow, ClientError> {
        let current = self.round.as_ref().map(|r| (&r.start, r.kicked_off));
        match announcement(current, self.left_round, &rs) {
            Announcement::Ignore => {
                debug!(round = rs.round, "repeated announcement ignored");
                return Ok(Flow::Continue);
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
        let cfg = convert::round_config(&rs).map_err(invalid)?;
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
        let now = Instant::now();
        self.round = Some(RoundState {
            start: rs.clone(),
            kind,
            cfg: cfg.clone(),
            machine: None,
            global: None,
            started: now,
            stage_started: now,
            stage_secs: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            outbox: None,
            submitted: false,
            survivors: None,
            kicked_off: false,
        });
        match kind {
            v1::RoundKind::Statistics => {
                if cfg.ring != Ring::U64 {
                    return Err(ClientError::InvalidRound(format!(
                        "statistics rounds use ring u64, got {}",
                        cfg.ring
                    )));
                }
                let want = stats_len(self.train.num_features());
                if cfg.vector_len != want {
                    return Err(ClientError::InvalidRound(format!(
                        "statistics vector of {} elements announced, this site's {} features need {want}",
                        cfg.vector_len,
                        self.train.num_features()
                    )));
                }
            }
            v1::RoundKind::Evaluate | v1::RoundKind::Train => {
                if kind == v1::RoundKind::Evaluate && cfg.vector_len != EVAL_LEN {
                    return Err(ClientError::InvalidRound(format!(
                        "evaluation vector of {} elements announced, expected {EVAL_LEN}",
                        cfg.vector_len
                    )));
                }
                if self.vanish_now(Stage::AdvertiseKeys) && !rs.plaintext {
                    return Ok(Flow::Vanished);
                }
                let model = self.download(client, &rs).await?;
                if kind == v1::RoundKind::Train
                    && cfg.vector_len != wire::train_len(model.num_params())
                {
                    return Err(ClientError::InvalidRound(format!(
                        "vector of {} elements announced for a model of {} parameters (expected {})",
                        cfg.vector_len,
                        model.num_params(),
                        wire::train_len(model.num_params())
                    )));
                }
                if let Some(r) = self.round.as_mut() {
                    r.global = Some(model);
                }
            }
            v1::RoundKind::Unspecified => {
                return Err(ClientError::InvalidRound("round kind unspecified".into()));
            }
        }
        if rs.plaintext {
            // Comparison mode: no keys, no shares; submit right away.
            return self.submit_input(client).await;
        }
        if cfg.suite != self.signing.suite() {
            return Err(ClientError::InvalidRound(format!(
                "round uses suite {} but this site's key is for {}",
                cfg.suite,
                self.signing.suite()
            )));
        }
        let verifier: Arc<dyn IdentityVerifier> = crate::identity::verifier(&self.cfg, cfg.suite)?;
        let session = self.session();
        let signing = self.signing.clone();
        let (machine, out) = match cfg.ring {
            Ring::U32 => {
                let mut m =
                    SiteMachine::<u32>::new(cfg, rs.member, signing, verifier, &mut self.rng)?;
                let out = m
                    .poll_output()
                    .map(|o| Outgoing::from_site(o, &session, rs.round));
                (Machine::U32(m), out)
            }
            Ring::U64 => {
                let mut m =
                    SiteMachine::<u64>::new(cfg, rs.member, signing, verifier, &mut self.rng)?;
                let out = m
                    .poll_output()
                    .map(|o| Outgoing::from_site(o, &session, rs.round));
                (Machine::U64(m), out)
            }
        };
        if let Some(r) = self.round.as_mut() {
            r.machine = Some(machine);
            r.kicked_off = true;
        }
        match out {
            Some(out) => self.send(client, out).await,
            None => Ok(Flow::Continue),
        }
    }

    async fn download(
        &mut self,
        client: &mut Client,
        rs: &v1::RoundStart,
    ) -> Result<Model, ClientError> {
        let req = v1::DownloadModelRequest {
            session: self.session(),
            round: rs.round,
        };
        let mut stream = client
            .download_model(req)
            .await
            .map_err(|s| ClientError::refused("DownloadModel", s))?
            .into_inner();
        let mut asm = ModelAssembler::new(rs.model_bytes);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| ClientError::refused("DownloadModel", s))?
        {
            asm.push(&chunk)?;
        }
        let bytes = asm.finish()?;
        if let Some(r) = self.round.as_mut() {
            r.bytes_in += bytes.len() as u64;
        }
        debug!(
            round = rs.round,
            bytes = bytes.len(),
            "global model downloaded"
        );
        Ok(Model::from_safetensors(&bytes)?)
    }

    /// The round's local contribution, quantised in the announced ring.
    async fn compute_vector(&mut self) -> Result<Vector, ClientError> {
        let Some(r) = self.round.as_ref() else {
            return Err(ClientError::InvalidRound("no round in progress".into()));
        };
        let rs = r.start.clone();
        let kind = r.kind;
        let ring = r.cfg.ring;
        if kind == v1::RoundKind::Statistics {
            let max_cohort = rs
                .quantisation
                .as_ref()
                .map_or(0, |q| q.max_cohort as usize);
            let max_cohort = if max_cohort == 0 {
                rs.cohort.len()
            } else {
                max_cohort
            };
            let bits = rs.training.as_ref().map_or(0, |t| t.stats_scale_bits);
            return Ok(Vector::U64(wire::stats_vector(
                &self.train.stats(),
                bits,
                max_cohort,
            )?));
        }
        let quantiser = Quantiser::new(
            &convert::quant_config(rs.quantisation.as_ref(), ring)
                .map_err(|e| ClientError::InvalidRound(e.to_string()))?,
        )?;
        let training = rs.training.clone().unwrap_or_default();
        let global = r
            .global
            .clone()
            .ok_or_else(|| ClientError::InvalidRound("no global model".into()))?;
        let (mut train, mut test) = (self.train.clone(), self.test.clone());
        if !rs.feature_mean.is_empty() || !rs.feature_std.is_empty() {
            let st = Standardiser::new(rs.feature_mean.clone(), rs.feature_std.clone())
                .map_err(|e| ClientError::InvalidRound(format!("feature statistics: {e}")))?;
            st.apply(&mut train)?;
            st.apply(&mut test)?;
        }
        let mut trainer = (self.trainer)(&training)?;
        let fit = fit_config(&training);
        let evaluate = rs.evaluate || kind == v1::RoundKind::Evaluate;
        let do_fit = kind == v1::RoundKind::Train;
        let mut rng = StdRng::from_rng(&mut self.rng);
        let started = Instant::now();
        let (fit_res, eval): (Option<FitResult>, Option<EvalResult>) =
            tokio::task::spawn_blocking(move || {
                let eval = if !evaluate {
                    None
                } else if test.is_empty() {
                    Some(EvalResult::default())
                } else {
                    Some(trainer.evaluate(&global, &test)?)
                };
                let fit_res = if do_fit {
                    Some(trainer.fit(&global, &train, &fit, &mut rng)?)
                } else {
                    None
                };
                Ok::<_, ClientError>((fit_res, eval))
            })
            .await
            .map_err(|e| ClientError::Task(e.to_string()))??;
        if let Some(f) = &fit_res {
            info!(
                round = rs.round,
                examples = f.num_examples,
                train_loss = f.train_loss,
                secs = started.elapsed().as_secs_f64(),
                "local training done"
            );
        }
        let rng = &mut self.rng;
        let v = match (fit_res, ring) {
            (Some(f), ring) => {
                let delta = f.delta.flatten();
                match ring {
                    Ring::U32 => Vector::U32(wire::train_vector(
                        &quantiser,
                        &delta,
                        f.num_examples,
                        eval.as_ref(),
                        rng,
                    )?),
                    Ring::U64 => Vector::U64(wire::train_vector(
                        &quantiser,
                        &delta,
                        f.num_examples,
                        eval.as_ref(),
                        rng,
                    )?),
                }
            }
            (None, ring) => {
                let e = eval.unwrap_or_default();
                match ring {
                    Ring::U32 => Vector::U32(wire::eval_vector(&quantiser, &e, rng)?),
                    Ring::U64 => Vector::U64(wire::eval_vector(&quantiser, &e, rng)?),
                }
            }
        };
        Ok(v)
    }

    async fn submit_input(&mut self, client: &mut Client) -> Result<Flow, ClientError> {
        if self.vanish_now(Stage::MaskedInput) {
            return Ok(Flow::Vanished);
        }
        let v = self.compute_vector().await?;
        let session = self.session();
        let Some(r) = self.round.as_mut() else {
            return Ok(Flow::Continue);
        };
        r.kicked_off = true;
        let round = r.start.round;
        let out = match (r.machine.as_mut(), v) {
            (None, Vector::U32(v)) => Some(Outgoing::Masked(wire::masked_input_chunks(
                &session, round, &v,
            ))),
            (None, Vector::U64(v)) => Some(Outgoing::Masked(wire::masked_input_chunks(
                &session, round, &v,
            ))),
            (Some(Machine::U32(m)), Vector::U32(v)) => step(m.handle_input(v), m, &session, round)?,
            (Some(Machine::U64(m)), Vector::U64(v)) => step(m.handle_input(v), m, &session, round)?,
            (Some(_), _) => {
                return Err(ClientError::InvalidRound(
                    "vector ring differs from the round's ring".into(),
                ));
            }
        };
        match out {
            Some(out) => self.send(client, out).await,
            None => Ok(Flow::Continue),
        }
    }
}

/// What to do with a `RoundStart`.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    /// A replay of the round in progress (its first message is out), or of a
    /// round this site left in this session (the coordinator holds its first
    /// keys; new ones would not match).
    Ignore,
    /// A replay of a round whose set-up was interrupted (e.g. the download).
    Restart,
    /// A new round.
    Start,
}

fn announcement(
    current: Option<(&v1::RoundStart, bool)>,
    left_round: Option<u64>,
    rs: &v1::RoundStart,
) -> Announcement {
    match current {
        Some((start, kicked_off)) if start == rs => {
            if kicked_off {
                Announcement::Ignore
            } else {
                Announcement::Restart
            }
        }
        _ if left_round == Some(rs.round) => Announcement::Ignore,
        _ => Announcement::Start,
    }
}

fn kind_name(k: v1::RoundKind) -> &'static str {
    match k {
        v1::RoundKind::Train => "train",
        v1::RoundKind::Statistics => "statistics",
        v1::RoundKind::Evaluate => "evaluate",
        v1::RoundKind::Unspecified => "unspecified",
    }
}

/// Whether a machine input was taken: routing mistakes (another round or
/// stage, e.g. a task replayed after a reconnect) leave the machine as it was
/// and are ignored; content errors end the site's part in the round.
fn routed(r: Result<(), ProtocolError>) -> Result<bool, ClientError> {
    match r {
        Ok(()) => Ok(true),
        Err(e @ (ProtocolError::WrongRound { .. } | ProtocolError::WrongStage { .. })) => {
            debug!(error = %e, "stale task ignored");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Feeds the machine, then takes the message it produced.
fn step<R: RingElement>(
    r: Result<(), ProtocolError>,
    m: &mut SiteMachine<R>,
    session: &str,
    round: u64,
) -> Result<Option<Outgoing>, ClientError> {
    if !routed(r)? {
        return Ok(None);
    }
    Ok(m.poll_output()
        .map(|o| Outgoing::from_site(o, session, round)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn stale_tasks_are_ignored_and_content_errors_end_the_round() {
        assert!(matches!(
            routed(Err(ProtocolError::WrongRound {
                expected: 2,
                got: 1
            })),
            Ok(false)
        ));
        assert!(matches!(
            routed(Err(ProtocolError::WrongStage {
                expected: Stage::ShareKeys,
                got: Stage::AdvertiseKeys
            })),
            Ok(false)
        ));
        assert!(matches!(routed(Ok(())), Ok(true)));
        assert!(routed(Err(ProtocolError::Ended)).is_err());
    }

    #[test]
    fn outgoing_messages_map_to_their_stage_for_vanish() -> Result<(), ClientError> {
        use confide_crypto::graph::SecAggParams;
        let mut rng: StdRng = rand::make_rng();
        let cfg = RoundConfig {
            round: 5,
            suite: Suite::Intl,
            ring: Ring::U32,
            cohort: vec![1, 2, 3],
            params: SecAggParams { k: 2, t: 2 },
            graph_seed: [1; 32],
            vector_len: 4,
            min_survivors: 2,
        };
        let key = SigningKey::generate(Suite::Intl, &mut rng);
        let verifier: Arc<dyn IdentityVerifier> =
            Arc::new(RelayedKeyVerifier { suite: Suite::Intl });
        let mut m = SiteMachine::<u32>::new(cfg, 2, key, verifier, &mut rng)?;
        let advert = m.poll_output().map(|o| Outgoing::from_site(o, "s", 5));
        let Some(Outgoing::Advertise(a)) = &advert else {
            panic!("first output must be the advert")
        };
        assert_eq!(a.session, "s");
        assert_eq!(advert.map(|o| o.stage()), Some(Stage::AdvertiseKeys));
        let masked = Outgoing::from_site(SiteOutput::<u32>::MaskedInput(vec![1, 2, 3, 4]), "s", 5);
        assert_eq!(masked.stage(), Stage::MaskedInput);
        let v = Some(Vanish {
            round: 5,
            stage: masked.stage(),
        });
        assert!(Vanish::hits(v, 5, Stage::MaskedInput));
        assert!(!Vanish::hits(v, 5, Stage::AdvertiseKeys));
        Ok(())
    }

    #[test]
    fn relayed_key_verifier_refuses_an_empty_key() {
        let v = RelayedKeyVerifier { suite: Suite::Gm };
        assert!(v.verifying_key(3, &[]).is_err());
        assert!(
            v.verifying_key(3, &[4; 65])
                .is_ok_and(|k| k.suite() == Suite::Gm)
        );
    }

    #[test]
    fn replayed_announcements() {
        let rs = v1::RoundStart {
            round: 4,
            graph_seed: vec![1; 32],
            ..Default::default()
        };
        let other = v1::RoundStart {
            round: 5,
            ..rs.clone()
        };
        // Same round restarted by a restarted coordinator: a new seed.
        let reseeded = v1::RoundStart {
            graph_seed: vec![2; 32],
            ..rs.clone()
        };
        assert_eq!(announcement(None, None, &rs), Announcement::Start);
        assert_eq!(
            announcement(Some((&rs, true)), None, &rs),
            Announcement::Ignore
        );
        assert_eq!(
            announcement(Some((&rs, false)), None, &rs),
            Announcement::Restart
        );
        assert_eq!(
            announcement(Some((&rs, true)), None, &other),
            Announcement::Start
        );
        assert_eq!(
            announcement(Some((&rs, true)), None, &reseeded),
            Announcement::Start
        );
        assert_eq!(announcement(None, Some(4), &rs), Announcement::Ignore);
        assert_eq!(announcement(None, Some(3), &rs), Announcement::Start);
    }

    #[test]
    fn run_site_future_is_send() {
        let fut = crate::run_site(
            SiteConfig::new("http://127.0.0.1:1", "a", "a.csv", "y"),
            async {},
        );
        assert_send(&fut);
    }
}
