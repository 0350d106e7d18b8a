//! The run loop against an in-memory coordinator (no gRPC): a whole
//! federation from Join to Done, and a reconnect that resends the
//! unacknowledged upload.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use confide_crypto::graph::SecAggParams;
use confide_crypto::protocol::RingVec;
use confide_crypto::stats::stats_len;
use confide_crypto::{Ring, RoundConfig, Suite};
use confide_proto::v1;
use ndarray::Array2;

use super::*;
use crate::convert;
use crate::trainer::builtin_trainer;
use crate::wire;

fn assert_send<T: Send>(_: &T) {}

#[test]
fn run_site_future_is_send() {
    let fut = crate::run_site(
        SiteConfig::new("http://127.0.0.1:1", "a", "a.csv", "y"),
        async {},
    );
    assert_send(&fut);
}

/// What the in-memory coordinator has seen and will answer.
#[derive(Default)]
struct State {
    /// Task scripts, one per opened task stream; an exhausted script
    /// waits forever (as an idle coordinator does).
    scripts: VecDeque<Vec<v1::Task>>,
    /// Connection attempts to refuse first.
    refuse_connects: usize,
    /// Uploads to fail with UNAVAILABLE (the link dropping mid-call).
    drop_uploads: usize,
    /// Uploads to refuse with RESOURCE_EXHAUSTED (rate limit, upload slots).
    busy_uploads: usize,
    /// Declines to refuse with UNAVAILABLE (the coordinator unreachable).
    fail_declines: usize,
    /// Joins to refuse with RESOURCE_EXHAUSTED (the join rate limit).
    busy_joins: usize,
    /// The global model served by DownloadModel, in two chunks.
    model: Vec<u8>,
    connects: usize,
    joins: Vec<v1::JoinRequest>,
    streams: Vec<String>,
    uploads: Vec<Vec<v1::MaskedInputChunk>>,
    declines: Vec<v1::DeclineRequest>,
}

#[derive(Clone, Default)]
struct Memory(Arc<Mutex<State>>);

impl Memory {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct MemoryConn {
    state: Memory,
    tasks: VecDeque<v1::Task>,
}

impl Transport for Memory {
    type Conn = MemoryConn;

    async fn connect(&mut self) -> Result<MemoryConn, ClientError> {
        let refuse = self.with(|s| {
            s.connects += 1;
            let refuse = s.refuse_connects > 0;
            s.refuse_connects = s.refuse_connects.saturating_sub(1);
            refuse
        });
        if refuse {
            return Err(ClientError::Connect {
                url: "memory".into(),
                reason: "refused".into(),
            });
        }
        Ok(MemoryConn {
            state: self.clone(),
            tasks: VecDeque::new(),
        })
    }
}

fn unexpected(call: &'static str) -> ClientError {
    ClientError::Refused {
        call,
        code: tonic::Code::Unimplemented,
        message: "not in this test".into(),
    }
}

impl Connection for MemoryConn {
    async fn join(&mut self, req: v1::JoinRequest) -> Result<v1::JoinResponse, ClientError> {
        let n = self.state.with(|s| {
            s.joins.push(req);
            if s.busy_joins > 0 {
                s.busy_joins -= 1;
                return Err(ClientError::Refused {
                    call: "Join",
                    code: tonic::Code::ResourceExhausted,
                    message: "too many joins; retry later (limits.join_rate_per_sec)".into(),
                });
            }
            Ok(s.joins.len())
        })?;
        Ok(v1::JoinResponse {
            session: format!("session-{n}"),
            federation: "memory".into(),
            suite: "intl".into(),
            crl: Vec::new(),
        })
    }

    async fn open_tasks(&mut self, session: String) -> Result<(), ClientError> {
        self.tasks = self.state.with(|s| {
            s.streams.push(session);
            s.scripts.pop_front().unwrap_or_default().into()
        });
        Ok(())
    }

    async fn next_task(&mut self) -> Result<Option<v1::Task>, ClientError> {
        match self.tasks.pop_front() {
            Some(t) => Ok(Some(t)),
            None => std::future::pending().await,
        }
    }

    async fn download_model(
        &mut self,
        _: v1::DownloadModelRequest,
    ) -> Result<Vec<v1::ModelChunk>, ClientError> {
        let model = self.state.with(|s| s.model.clone());
        if model.is_empty() {
            return Err(unexpected("DownloadModel"));
        }
        let half = model.len() / 2;
        let total_len = model.len() as u64;
        Ok(vec![
            v1::ModelChunk {
                offset: 0,
                data: model[..half].to_vec().into(),
                total_len,
            },
            v1::ModelChunk {
                offset: half as u64,
                data: model[half..].to_vec().into(),
                total_len,
            },
        ])
    }

    async fn advertise_keys(&mut self, _: v1::AdvertiseKeysRequest) -> Result<(), ClientError> {
        Err(unexpected("AdvertiseKeys"))
    }

    async fn share_keys(&mut self, _: v1::ShareKeysRequest) -> Result<(), ClientError> {
        Err(unexpected("ShareKeys"))
    }

    async fn submit_masked_input(
        &mut self,
        chunks: Vec<v1::MaskedInputChunk>,
    ) -> Result<(), ClientError> {
        self.state.with(|s| {
            s.uploads.push(chunks);
            if s.busy_uploads > 0 {
                s.busy_uploads -= 1;
                return Err(ClientError::Refused {
                    call: "SubmitMaskedInput",
                    code: tonic::Code::ResourceExhausted,
                    message: "too many requests".into(),
                });
            }
            if s.drop_uploads > 0 {
                s.drop_uploads -= 1;
                return Err(ClientError::Refused {
                    call: "SubmitMaskedInput",
                    code: tonic::Code::Unavailable,
                    message: "link dropped".into(),
                });
            }
            Ok(())
        })
    }

    async fn consistency(&mut self, _: v1::ConsistencyResponse) -> Result<(), ClientError> {
        Err(unexpected("Consistency"))
    }

    async fn unmask(&mut self, _: v1::UnmaskResponse) -> Result<(), ClientError> {
        Err(unexpected("Unmask"))
    }

    async fn decline(&mut self, req: v1::DeclineRequest) -> Result<(), ClientError> {
        self.state.with(|s| {
            s.declines.push(req);
            if s.fail_declines > 0 {
                s.fail_declines -= 1;
                return Err(ClientError::Refused {
                    call: "Decline",
                    code: tonic::Code::Unavailable,
                    message: "link dropped".into(),
                });
            }
            Ok(())
        })
    }
}

fn dataset() -> Result<Dataset, ClientError> {
    let rows = 20;
    let x = Array2::from_shape_fn((rows, 2), |(i, j)| (i * (j + 1)) as f32 / 4.0);
    let y = (0..rows).map(|i| (i % 2) as u32).collect();
    Ok(Dataset::new(x, y, vec!["a".into(), "b".into()])?)
}

fn config() -> SiteConfig {
    let mut cfg = SiteConfig::new("memory://coordinator", "site-a", "unused.csv", "y");
    cfg.insecure = true;
    // The in-memory coordinator runs plaintext rounds.
    cfg.allow_plaintext = true;
    cfg.max_reconnect = Duration::from_secs(30);
    cfg
}

/// A plaintext statistics round of member 1 in a cohort of 3.
fn stats_round(round: u64) -> v1::Task {
    let cfg = RoundConfig {
        round,
        suite: Suite::Intl,
        ring: Ring::U64,
        cohort: vec![1, 2, 3],
        params: SecAggParams { k: 2, t: 2 },
        graph_seed: [3; 32],
        vector_len: stats_len(2),
        min_survivors: 2,
        max_colluders: 0,
        context: [0; 32],
    };
    v1::Task {
        kind: Some(v1::task::Kind::RoundStart(v1::RoundStart {
            kind: v1::RoundKind::Statistics as i32,
            plaintext: true,
            stage_timeout_secs: 60,
            training: Some(v1::TrainingConfig {
                stats_scale_bits: 16,
                ..Default::default()
            }),
            attempt: vec![round as u8; 32],
            // Statistics rounds download nothing; the hash is still bound.
            model_sha256: vec![0; 32],
            ..convert::round_start(&cfg, 1)
        })),
    }
}

fn round_end(round: u64) -> v1::Task {
    v1::Task {
        kind: Some(v1::task::Kind::RoundEnd(v1::RoundEnd {
            round,
            success: true,
            message: "ok".into(),
        })),
    }
}

fn done() -> v1::Task {
    v1::Task {
        kind: Some(v1::task::Kind::Done(v1::FederationDone { rounds: 1 })),
    }
}

/// The statistics vector this site must upload: its training split's sums.
fn expected_upload() -> Result<Vec<u8>, ClientError> {
    let (train, _) = dataset()?.split_holdout(config().holdout, 0)?;
    Ok(RingVec::U64(wire::stats_vector(&train.stats(), 16, 3)?).to_le_bytes())
}

fn uploaded(chunks: &[v1::MaskedInputChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.clone()).collect()
}

fn runner(memory: &Memory) -> Result<Runner<Memory>, ClientError> {
    Runner::new(&config(), dataset()?, Arc::new(builtin_trainer), |_| {
        Ok(memory.clone())
    })
}

/// Tasks are handled on the protocol state off the runtime's thread, which
/// stays free to poll the connections (on a single-threaded runtime, the
/// only thread there is).
#[tokio::test(flavor = "current_thread")]
async fn the_protocol_state_is_worked_on_off_the_runtime_thread() -> Result<(), ClientError> {
    let memory = Memory::default();
    let runner = runner(&memory)?;
    let runtime = std::thread::current().id();
    let (worker, round) = runner
        .off_runtime(|d| (std::thread::current().id(), d.current_round()))
        .await?;
    assert_ne!(worker, runtime);
    assert_eq!(round, None);
    // The state is free again for the calls made on the runtime.
    assert_eq!(runner.driver().current_round(), None);
    Ok(())
}

#[tokio::test]
async fn join_round_upload_done() -> Result<(), ClientError> {
    let memory = Memory::default();
    memory.with(|s| {
        s.scripts
            .push_back(vec![stats_round(1), round_end(1), done()])
    });
    let report = runner(&memory)?.run(std::future::pending()).await?;
    assert_eq!(
        report,
        SiteReport {
            rounds: 1,
            last_round: 1,
            vanished: false
        }
    );
    let expected = expected_upload()?;
    memory.with(|s| {
        assert_eq!(s.connects, 1);
        assert_eq!(s.joins.len(), 1);
        assert_eq!(s.joins[0].site, "site-a");
        assert_eq!(s.streams, ["session-1"]);
        assert_eq!(s.uploads.len(), 1);
        assert!(
            s.uploads[0]
                .iter()
                .all(|c| c.session == "session-1" && c.round == 1)
        );
        assert_eq!(uploaded(&s.uploads[0]), expected);
    });
    Ok(())
}

#[tokio::test]
async fn reconnects_and_resends_the_unacknowledged_upload() -> Result<(), ClientError> {
    let memory = Memory::default();
    memory.with(|s| {
        // Down at first; then the upload's acknowledgement is lost.
        s.refuse_connects = 1;
        s.drop_uploads = 1;
        s.scripts.push_back(vec![stats_round(2)]);
        // The coordinator replays the round's announcement on the new stream.
        s.scripts
            .push_back(vec![stats_round(2), round_end(2), done()]);
    });
    let report = runner(&memory)?.run(std::future::pending()).await?;
    assert_eq!(report.rounds, 1);
    let expected = expected_upload()?;
    memory.with(|s| {
        assert_eq!(s.connects, 3, "refused, dropped, resumed");
        assert_eq!(s.joins.len(), 1, "the session survives a reconnect");
        assert_eq!(s.streams, ["session-1", "session-1"]);
        assert_eq!(s.uploads.len(), 2, "the upload is resent once");
        assert!(s.uploads.iter().all(|u| uploaded(u) == expected));
    });
    Ok(())
}

#[tokio::test]
async fn a_busy_coordinator_gets_the_same_upload_again_after_a_pause() -> Result<(), ClientError> {
    let memory = Memory::default();
    memory.with(|s| {
        s.busy_uploads = 2;
        s.scripts
            .push_back(vec![stats_round(3), round_end(3), done()]);
    });
    let started = Instant::now();
    let report = runner(&memory)?.run(std::future::pending()).await?;
    assert_eq!(report.rounds, 1, "the round is not abandoned");
    let expected = expected_upload()?;
    memory.with(|s| {
        assert_eq!(s.connects, 1, "no reconnect for a busy answer");
        assert_eq!(s.uploads.len(), 3, "two refused, the third accepted");
        assert!(s.uploads.iter().all(|u| uploaded(u) == expected));
    });
    // Two pauses of at least 50 ms and 100 ms (100·2^attempt, jitter ≥ 0.5).
    assert!(started.elapsed() >= Duration::from_millis(150));
    Ok(())
}

#[tokio::test]
async fn a_join_refused_as_busy_is_asked_again_on_the_same_connection() -> Result<(), ClientError> {
    let memory = Memory::default();
    memory.with(|s| {
        s.busy_joins = 3;
        s.scripts
            .push_back(vec![stats_round(1), round_end(1), done()]);
    });
    let started = Instant::now();
    let report = runner(&memory)?.run(std::future::pending()).await?;
    assert_eq!(report.rounds, 1);
    memory.with(|s| {
        assert_eq!(s.connects, 1, "no reconnect for a busy answer");
        assert_eq!(s.joins.len(), 4, "three refused, the fourth accepted");
        assert_eq!(s.streams, ["session-4"]);
    });
    // Pauses of at least 100, 200 and 400 ms (200·2^attempt, jitter ≥ 0.5).
    assert!(started.elapsed() >= Duration::from_millis(700));
    Ok(())
}

#[tokio::test]
async fn gives_up_when_the_coordinator_stays_away() -> Result<(), ClientError> {
    let memory = Memory::default();
    memory.with(|s| s.refuse_connects = usize::MAX);
    let mut cfg = config();
    cfg.max_reconnect = Duration::from_millis(300);
    let runner = Runner::new(&cfg, dataset()?, Arc::new(builtin_trainer), |_| {
        Ok(memory.clone())
    })?;
    match runner.run(std::future::pending()).await {
        Err(ClientError::GaveUp { last, .. }) => {
            assert!(matches!(*last, ClientError::Connect { .. }))
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(memory.with(|s| s.connects) >= 2);
    Ok(())
}

#[tokio::test]
async fn plaintext_train_round_downloads_trains_and_uploads_its_weight()
-> Result<(), Box<dyn std::error::Error>> {
    use crate::train::{LogisticRegression, Trainer};
    use confide_crypto::quant::Quantiser;
    use rand::SeedableRng;

    let lr = LogisticRegression::new(2, 2)?;
    let global = lr.init(&mut StdRng::seed_from_u64(0));
    let d = global.num_params();
    let model = global.to_safetensors(None)?;
    let cfg = RoundConfig {
        round: 4,
        suite: Suite::Intl,
        ring: Ring::U32,
        cohort: vec![1, 2],
        params: SecAggParams { k: 1, t: 1 },
        graph_seed: [5; 32],
        vector_len: wire::train_len(d),
        min_survivors: 1,
        max_colluders: 0,
        context: [0; 32],
    };
    let quantisation = v1::Quantisation {
        clip: 1.0,
        scale: 1000.0,
        max_weight: 1000,
        max_cohort: 2,
        // n·(W·c·s + 1) = 2·(10^6 + 1) needs 22 bits.
        bits: 22,
    };
    let start = v1::RoundStart {
        kind: v1::RoundKind::Train as i32,
        plaintext: true,
        stage_timeout_secs: 60,
        model_bytes: model.len() as u64,
        quantisation: Some(quantisation),
        training: Some(v1::TrainingConfig {
            model: "logistic".into(),
            features: 2,
            classes: 2,
            epochs: 1,
            batch_size: 4,
            learning_rate: 0.1,
            ..Default::default()
        }),
        attempt: vec![4; 32],
        model_sha256: confide_proto::context::sha256(&model).to_vec(),
        ..convert::round_start(&cfg, 1)
    };
    let packing = confide_proto::layout::round_packing(&start, Ring::U32);
    let memory = Memory::default();
    memory.with(|s| {
        s.model = model;
        s.scripts.push_back(vec![
            v1::Task {
                kind: Some(v1::task::Kind::RoundStart(start)),
            },
            round_end(4),
            done(),
        ]);
    });
    let report = runner(&memory)?.run(std::future::pending()).await?;
    assert_eq!(report.rounds, 1);
    let upload = memory.with(|s| s.uploads.first().map(|u| uploaded(u)));
    // The model slots arrive packed at the announced 22 bits.
    let upload = upload.ok_or("nothing uploaded")?;
    assert_eq!(
        upload.len(),
        (d * 22).div_ceil(8) + 4 * (wire::train_len(d) - d)
    );
    let v = packing.unpack(&upload)?;
    assert_eq!(v.len(), wire::train_len(d));
    let q = Quantiser::new(&convert::quant_config(Some(&quantisation), Ring::U32)?)?;
    let decoded = q.decode(v.as_u32().ok_or("ring")?, d, 1)?;
    let (train, _) = dataset()?.split_holdout(config().holdout, 0)?;
    assert_eq!(
        decoded.total_weight,
        train.len() as u64,
        "weighted by its rows"
    );
    assert!(
        decoded.mean.iter().any(|x| *x != 0.0),
        "a non-trivial update"
    );
    Ok(())
}

/// A training round asking 5000 epochs of a site that runs at most
/// `config().max_epochs`.
fn greedy_train_round(round: u64) -> v1::Task {
    let cfg = RoundConfig {
        round,
        suite: Suite::Intl,
        ring: Ring::U32,
        cohort: vec![1, 2, 3],
        params: SecAggParams { k: 2, t: 2 },
        graph_seed: [5; 32],
        vector_len: 10,
        min_survivors: 2,
        max_colluders: 0,
        context: [0; 32],
    };
    v1::Task {
        kind: Some(v1::task::Kind::RoundStart(v1::RoundStart {
            kind: v1::RoundKind::Train as i32,
            plaintext: true,
            stage_timeout_secs: 60,
            training: Some(v1::TrainingConfig {
                model: "logistic".into(),
                features: 2,
                classes: 2,
                epochs: 5000,
                batch_size: 4,
                learning_rate: 0.1,
                ..Default::default()
            }),
            attempt: vec![round as u8; 32],
            model_sha256: vec![1; 32],
            ..convert::round_start(&cfg, 1)
        })),
    }
}

#[tokio::test]
async fn a_refused_round_is_declined_with_its_reason_and_the_site_goes_on()
-> Result<(), ClientError> {
    for fail in [0, 1] {
        let memory = Memory::default();
        memory.with(|s| {
            // Even a Decline that fails (the link dropped) is not fatal.
            s.fail_declines = fail;
            s.scripts.push_back(vec![
                greedy_train_round(5),
                round_end(5),
                stats_round(6),
                round_end(6),
                done(),
            ]);
        });
        let report = runner(&memory)?.run(std::future::pending()).await?;
        assert_eq!(report.rounds, 1, "the next round is served");
        memory.with(|s| {
            assert_eq!(s.declines.len(), 1, "one Decline, never retried on failure");
            let d = &s.declines[0];
            assert_eq!(
                (d.session.as_str(), d.round, d.reason_code),
                ("session-1", 5, v1::DeclineReason::TrainingBounds as i32)
            );
            assert!(d.message.contains("5000 epochs"), "{}", d.message);
            assert_eq!(s.uploads.len(), 1, "only round 6 uploads");
        });
    }
    Ok(())
}
