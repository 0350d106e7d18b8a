//! The round driver: waits for sites, asks the scheduler for a plan, runs the
//! round's machine until it finishes (woken by site messages or by the
//! machine's next deadline, never by polling), applies the outcome and writes
//! the round's transcript record, then the checkpoint.

use std::collections::BTreeMap;
use std::time::SystemTime;

use confide_crypto::MemberId;
use confide_crypto::protocol::RelayedKeyVerifier;

use super::registry::OutTask;
use super::*;
use crate::checkpoint;
use crate::metrics::{FailureReason, Reconstructions};
use crate::transcript::{self, Ending, Reconstructed};

impl Federation {
    /// Drive rounds until the configured training rounds (and the final
    /// evaluation) are done. Cancel-safe: dropping the future aborts the round.
    pub async fn run(self: &Arc<Self>) -> Result<ServeReport, CoordinatorError> {
        let mut failures = 0u32;
        let mut eval_failures = 0u32;
        let mut awaited = None;
        loop {
            let progress = self.lock().progress();
            let Some(kind) = scheduler::next_kind(&self.settings, &progress) else {
                break;
            };
            // A re-run of a model sites signed a survivor set on: exactly
            // those sites, waited for without counting a failure.
            let replay = self.replay_cohort(kind);
            let (cohort, replay) = match replay {
                Some(s) => match self.await_replay_cohort(&s, &mut awaited).await {
                    Some(members) => (members, true),
                    None => continue,
                },
                None => (self.wait_for_sites().await, false),
            };
            let ok = self.run_round(kind, cohort, replay).await?;
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
                    return Err(CoordinatorError::Rounds { failures });
                }
            }
        }
        Ok(self.report())
    }

    async fn wait_for_sites(&self) -> Vec<(confide_crypto::MemberId, String)> {
        let mut logged = false;
        let after = self.settings.secagg.exclude_after_blamed_rounds;
        loop {
            let c = {
                let g = self.lock();
                self.metrics
                    .set_connected_sites(g.registry.connected_count());
                g.eligible(after)
            };
            if c.len() >= self.settings.min_sites {
                if self
                    .grace_done
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                    || self.settings.join_grace_secs <= 0.0
                {
                    return c;
                }
                // First round: give sites that are still connecting a moment
                // to be included (every new stream wakes us).
                let until = tokio::time::Instant::now()
                    + Duration::from_secs_f64(self.settings.join_grace_secs);
                while self.lock().registry.connected().len() < self.settings.max_sites
                    && tokio::time::timeout_at(until, self.wake.notified())
                        .await
                        .is_ok()
                {}
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

    async fn run_round(
        self: &Arc<Self>,
        kind: RoundKind,
        connected: Vec<(confide_crypto::MemberId, String)>,
        replay: bool,
    ) -> Result<bool, CoordinatorError> {
        let now = clock();
        let (plan, model, model_round, preprocess) = {
            let g = self.lock();
            let (s, q, p) = (&self.settings, &self.quant, g.progress());
            // ThreadRng is not Send: it lives only in this block, outside any await.
            let plan = if replay {
                scheduler::plan_replay_round(s, q, &p, connected, &mut rand::rng(), now)
            } else {
                scheduler::plan_round(s, q, kind, &p, connected, &mut rand::rng(), now)
            };
            (plan, g.model.clone(), g.model_round, g.preprocess.clone())
        };
        let mut plan = match plan {
            Ok(p) => p,
            Err(PlanError::TooFewSites { .. }) => return Ok(false),
            Err(PlanError::Params {
                round,
                cohort,
                source,
            }) => {
                warn!(round, cohort, error = %source, "cannot start round");
                let msg = source.to_string();
                self.record_failure(round, kind, cohort, model_round, &msg, None)
                    .await?;
                // Wait for the set of connected sites to change before retrying.
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Ok(false);
            }
        };
        let round_id = plan.config.round;
        let n = plan.names.len();
        let ca_fingerprint = self.ca_fingerprint()?;
        // The announcement first: its hash is the context the machine binds.
        let start = scheduler::announce(
            &self.settings,
            &self.quant,
            &mut plan,
            &scheduler::Announced {
                model_len: model.len(),
                model_sha256: model.sha256(),
                preprocess: preprocess.as_ref(),
                ca_fingerprint: &ca_fingerprint,
            },
        );
        let announced = transcript::Plan::new(
            &plan.config,
            &plan.attempt,
            plan.secure,
            &start.model_sha256,
        );
        let timeouts = StageTimeouts::uniform(plan.stage_timeout);
        let machine = if plan.secure {
            AnyCoordinator::secure(plan.config.clone(), timeouts, now)
        } else {
            Ok(AnyCoordinator::plain(&plan.config, plan.plain_deadline()))
        };
        let mut machine = match machine {
            Ok(m) => m,
            Err(e) => {
                warn!(round = round_id, error = %e, "cannot start round");
                let msg = e.to_string();
                let asked = Some((&plan.names, announced));
                self.record_failure(round_id, kind, n, model_round, &msg, asked)
                    .await?;
                return Ok(false);
            }
        };
        // Survivor-set signatures are checked under the keys the sites joined
        // with (bound to their certificates at join), so faulty signers are
        // refused at once and only valid signatures are relayed.
        machine.check_signatures(Arc::new(RelayedKeyVerifier {
            suite: plan.config.suite,
        }));
        info!(
            round = round_id,
            kind = kind.name(),
            cohort = n,
            k = plan.config.params.k,
            t = plan.config.params.t,
            max_colluders = plan.config.max_colluders,
            min_survivors = plan.config.min_survivors,
            replay,
            "round started"
        );
        self.metrics.round_started(kind);
        // Sum and unmask off the lock (`offlock.rs`); a plaintext round keeps its own sum.
        let packing = confide_proto::layout::round_packing(&start, machine.ring());
        let sum = machine
            .sum_outside()
            .unwrap_or(false)
            .then(|| sum::OutsideSum::new(packing));
        {
            let mut g = self.lock();
            let mut active = ActiveRound::new(
                round_id,
                kind,
                plan.names.clone(),
                machine,
                plan.config.vector_len,
                model,
                now,
                self.metrics.clone(),
            );
            (active.sum, active.packing) = (sum, packing);
            // The sealed shares the round routes wait on disk (`task_file.rs`).
            active.spill_dir = Some(self.settings.limits.spill_dir());
            for &m in plan.names.keys() {
                let st = pb::RoundStart {
                    member: m,
                    ..start.clone()
                };
                active.send(&g.registry, m, task(pb::task::Kind::RoundStart(st)));
            }
            g.round = Some(active);
        }
        let mut guard = AbortOnDrop {
            fed: self.clone(),
            armed: true,
        };
        let result = self.drive().await;
        guard.armed = false;
        let active = self.lock().round.take();
        let Some(active) = active else {
            return Ok(false);
        };
        self.finish_round(active, result, plan.model_len, model_round, announced)
            .await
    }

    /// Close stages at their deadlines until the machine finishes. Site
    /// messages (which may finish it) wake the driver through `wake`. The
    /// unmask runs here, on a blocking thread and outside the lock, so the
    /// other RPCs are answered meanwhile.
    async fn drive(&self) -> Result<AnyRoundResult, ProtocolError> {
        let secagg = &self.settings.secagg;
        loop {
            let next = {
                let now = clock();
                let mut g = self.lock();
                let Inner {
                    round: active,
                    registry,
                    ..
                } = &mut *g;
                let Some(r) = active.as_mut() else {
                    return Err(ProtocolError::Ended);
                };
                for m in r.expire_lost(now, secagg) {
                    let site = r.names.get(&m).cloned().unwrap_or_default();
                    info!(round = r.id, %site, "lost site not back within the grace, or the last one waited for; dropped from the round");
                }
                r.machine.handle_timeout(now);
                r.pump(registry, now);
                if let Some(res) = r.result.take() {
                    return res;
                }
                match r.unmask_job.take() {
                    Some(job) => offlock::Next::Unmask(Box::new(job), r.sum.clone()),
                    None => offlock::Next::Wait(
                        [r.machine.poll_timeout(), r.next_expiry(secagg)]
                            .into_iter()
                            .flatten()
                            .min(),
                    ),
                }
            };
            match next {
                offlock::Next::Unmask(job, sum) => self.run_unmask(*job, sum).await?,
                offlock::Next::Wait(Some(d)) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d)) => {}
                    }
                }
                // No deadline left: only a site message can move the machine.
                offlock::Next::Wait(None) => self.wake.notified().await,
            }
        }
    }

    /// A round that could not start: no safe parameters for its cohort of
    /// `n`, or a machine that refused the announced plan (`asked`).
    async fn record_failure(
        &self,
        round_id: u64,
        kind: RoundKind,
        n: usize,
        model_round: u64,
        msg: &str,
        asked: Option<(&BTreeMap<MemberId, String>, transcript::Plan)>,
    ) -> Result<(), CoordinatorError> {
        let rec = RoundRecord {
            round: round_id,
            kind: kind.name().into(),
            success: false,
            message: msg.to_string(),
            cohort: n as u32,
            model_round,
            ..Default::default()
        };
        let (names, plan) = asked.map_or((BTreeMap::new(), None), |(m, p)| (m.clone(), Some(p)));
        let ending = Ending {
            reason: Some(format!("{:?}", FailureReason::parameters)),
            ..Default::default()
        };
        let suite = self.settings.suite.name();
        let entry =
            transcript::Record::new(&rec, suite, &names, plan, vec![], ending, SystemTime::now());
        // Only plans and machines that cannot start end up here.
        self.metrics.round_recorded(
            kind,
            &rec,
            Some(FailureReason::parameters),
            Reconstructions::default(),
        );
        {
            let mut g = self.lock();
            g.history.push(rec);
            g.next_round = round_id + 1;
        }
        self.append_transcript(entry, None).await
    }

    /// Append a round's record to the transcript, which lives with the
    /// checkpoints (in `checkpoints.transcript_dir` with object storage;
    /// none without either), with the new model's SHA-256 (its image
    /// computed it); written off the runtime's threads, like the checkpoint.
    async fn append_transcript(
        &self,
        mut entry: transcript::Record,
        model_after: Option<[u8; 32]>,
    ) -> Result<(), CoordinatorError> {
        let Some(dir) = self.settings.checkpoints.transcript_dir() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            entry.model_after = model_after.map(hex::encode);
            transcript::append(&dir, &entry)
        })
        .await?
    }

    async fn finish_round(
        self: &Arc<Self>,
        mut active: ActiveRound,
        result: Result<AnyRoundResult, ProtocolError>,
        model_len: usize,
        model_round: u64,
        announced: transcript::Plan,
    ) -> Result<bool, CoordinatorError> {
        let kind = active.kind;
        let now = clock();
        let mut rec = RoundRecord {
            round: active.id,
            kind: kind.name().into(),
            cohort: active.names.len() as u32,
            model_round,
            duration_secs: now.saturating_duration_since(active.started).as_secs_f64(),
            stage_secs: active.stage_secs(),
            bytes_in: active.bytes_in,
            bytes_out: active.bytes_out,
            blamed: active.blamed.clone(),
            declined: active.declined.clone(),
            ..Default::default()
        };
        // The round's reference to the model goes, so that a training step
        // changes the global model in place instead of copying it.
        active.model = Arc::default();
        let mut rebuilt = Reconstructions::default();
        let mut survivors = Vec::new();
        let applied: Result<(), (String, FailureReason)> = match result {
            Err(e) => Err((e.to_string(), FailureReason::of_protocol(&e))),
            Ok(sum) => {
                rec.survivors = sum.survivors.len() as u32;
                // Everyone in the cohort whose input is not in the sum, whatever
                // the stage they vanished at (the protocol's own list only
                // names those whose masks had to be reconstructed).
                rec.dropped = rec.cohort.saturating_sub(rec.survivors);
                rebuilt = Reconstructions::of(&sum);
                survivors.clone_from(&sum.survivors);
                self.apply(kind, sum, model_len, &mut rec)
                    .map_err(|e| (e.to_string(), FailureReason::of_outcome(&e)))
            }
        };
        let ok = applied.is_ok();
        rec.success = ok;
        if let Err((m, _)) = &applied {
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
        let ending = Ending {
            survivors,
            reconstructed: Reconstructed {
                self_mask_seeds: rebuilt.seeds,
                mask_keys: rebuilt.mask_keys,
            },
            reason: applied.as_ref().err().map(|(_, r)| format!("{r:?}")),
        };
        let suite = self.settings.suite.name();
        let plan = Some(announced);
        let ended = SystemTime::now();
        let entry = transcript::Record::new(
            &rec,
            suite,
            &active.names,
            plan,
            active.stages,
            ending,
            ended,
        );
        self.metrics
            .round_recorded(kind, &rec, applied.err().map(|(_, r)| r), rebuilt);
        let end = OutTask::shared(task(pb::task::Kind::RoundEnd(pb::RoundEnd {
            round: rec.round,
            success: ok,
            message: rec.message.clone(),
        })));
        let (save, model_after) = {
            let mut g = self.lock();
            for name in active.names.values() {
                g.registry.send(name, end.clone());
            }
            g.next_round = rec.round + 1;
            let blamed: Vec<String> = rec.blamed.iter().map(|(s, _)| s.clone()).collect();
            g.history.push(rec);
            let after = self.settings.secagg.exclude_after_blamed_rounds;
            let excluded = g.excluded(after);
            for site in blamed.iter().filter(|s| excluded.contains(*s)) {
                warn!(%site, rounds = after, "site excluded from later cohorts: blamed in too many rounds");
            }
            let after = (ok && kind == RoundKind::Train).then(|| g.model.sha256());
            (if ok { self.snapshot(&g) } else { None }, after)
        };
        // The record before the checkpoint: a checkpoint never lacks one.
        self.append_transcript(entry, model_after).await?;
        if let (Some((manifest, model, opt)), Some(store)) = (save, self.store.clone()) {
            let keep = self.settings.checkpoints.keep_last;
            // Both backends block (fsync; object-store I/O on its own
            // runtime): off the runtime's worker threads.
            let res = tokio::task::spawn_blocking(
                move || -> Result<(checkpoint::Saved, f64), CoordinatorError> {
                    let started = std::time::Instant::now();
                    let saved = store.save_image(
                        &manifest,
                        &model,
                        opt.as_ref().map(|(m, v)| (m.as_slice(), v.as_slice())),
                    )?;
                    store.prune(keep, checkpoint::best_round(&manifest.history))?;
                    Ok((saved, started.elapsed().as_secs_f64()))
                },
            )
            .await?;
            let (saved, secs) = res?;
            self.metrics.checkpoint_written(secs, saved.bytes);
            info!(location = %saved.location, bytes = saved.bytes, secs = format!("{secs:.3}"), "checkpoint written");
        }
        Ok(ok)
    }

    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        g: &Inner,
    ) -> Option<(
        Manifest,
        Arc<ModelImage>,
        Option<(Arc<Vec<f32>>, Arc<Vec<f32>>)>,
    )> {
        self.store.as_ref()?;
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
            suite: self.settings.suite.name().into(),
            config_hash: self.config_hash.clone(),
            optimiser: self.settings.optimiser.kind.to_string(),
            optimiser_state: opt.as_ref().map(|_| "optimiser.safetensors".to_string()),
            preprocess: g.preprocess.clone(),
            tensors: g
                .model
                .model()
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone()))
                .collect(),
            history: g.history.clone(),
            objects: vec![],
            lease_token: None,
        };
        Some((manifest, g.model.clone(), opt))
    }

    /// Apply a successful round's sum to the federation's state.
    fn apply(
        &self,
        kind: RoundKind,
        sum: AnyRoundResult,
        model_len: usize,
        rec: &mut RoundRecord,
    ) -> Result<(), OutcomeError> {
        let mut g = self.lock();
        if kind == RoundKind::Train {
            let max = self.settings.limits.max_model_bytes;
            let Inner {
                model, optimiser, ..
            } = &mut *g;
            // In place: the global model and the optimiser state are the
            // only copies (`outcome::train` checks everything first); a
            // download still streaming the old model keeps its own copy.
            let image = Arc::make_mut(model);
            let trained = outcome::train(
                &self.quant,
                &sum,
                model_len,
                max,
                image.model_mut(),
                optimiser,
            )?;
            drop(sum);
            image.refresh()?;
            outcome::record_evaluation(rec, trained.evaluation.as_ref());
            g.model_round = rec.round;
            g.completed += 1;
            self.metrics.set_completed_train_rounds(g.completed);
            rec.message = format!("Σweight = {}", trained.total_weight);
            return Ok(());
        }
        let cx = Context {
            features: self.settings.model.features as usize,
            stats_scale_bits: self.settings.training.stats_scale_bits,
            quant: &self.quant,
            model_len,
            model: g.model.model(),
            optimiser: &g.optimiser,
            max_model_bytes: self.settings.limits.max_model_bytes,
        };
        match outcome::outcome(kind, &sum, &cx)? {
            Outcome::Statistics(st) => {
                info!(rows = st.rows, "federated feature statistics computed");
                rec.eval_examples = st.rows;
                g.preprocess = Some(st.preprocess);
            }
            Outcome::Evaluated(e) => {
                outcome::record_evaluation(rec, e.as_ref());
                g.final_accuracy = rec.accuracy;
                g.final_done = true;
            }
            // Training rounds are applied in place above.
            Outcome::Trained(..) => {}
        }
        Ok(())
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
            r.machine.abort("coordinator shutting down");
        }
        g.round = None;
    }
}
