//! `confide bench`: a whole federation as a user runs it — the coordinator
//! (`confide serve`) and N sites over real gRPC with mutual TLS on loopback,
//! secure aggregation on — with a synthetic trainer that returns a
//! d-parameter update instantly, so the figures are the system's, not
//! training's.
//!
//! The coordinator runs as a child process of the bench so that its CPU time
//! and peak memory are its own, read from `/proc/<pid>` (`utime + stime`,
//! `VmHWM`): measured, not estimated. The sites run in the bench process.
//! Per round it prints one progress line (or one JSON object with `--json`)
//! from the round records the coordinator checkpoints; on a terminal a bar
//! over the rounds runs below them on standard error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use confide_client::train::{Dataset, EvalResult, FitConfig, FitResult, Model, Trainer};
use confide_client::{ClientError, Vanish};
use confide_coordinator::checkpoint::RoundRecord;
use confide_coordinator::{certs, progress};
use confide_crypto::aesfast::AesKeystream;
use confide_crypto::{Stage, Suite};
use rand::{Rng, SeedableRng};

/// Features of the synthetic data (the MLP's input width).
const FEATURES: usize = 8;
/// Classes of the synthetic data.
const CLASSES: usize = 2;

/// What `confide bench` was asked for.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Sites.
    pub sites: usize,
    /// Model parameters (rounded to an MLP of this size).
    pub params: usize,
    /// Training rounds.
    pub rounds: u64,
    /// Fraction of sites that vanish in the last round (earlier rounds are
    /// the no-dropout baseline of the same run, and no later round needs a
    /// smaller cohort, which explicit odd k could not serve).
    pub dropout: f64,
    /// The stage whose message they never send.
    pub drop_stage: Stage,
    /// Cipher suite.
    pub suite: Suite,
    /// Explicit SecAgg+ degree and threshold (both or neither).
    pub k: Option<u32>,
    /// See `k`.
    pub t: Option<u32>,
    /// The coordinator's stage deadline (how long it waits for a dropped site).
    pub stage_timeout_secs: u32,
    /// How long a closed connection is given to come back.
    pub reconnect_grace_secs: f64,
    /// The server optimiser's kind, as in `[optimiser] kind`.
    pub optimiser: String,
    /// One JSON object per round instead of a table.
    pub json: bool,
    /// Keep the bench directory (config, certificates, checkpoints, log) here.
    pub dir: Option<PathBuf>,
    /// Round-trip time the sites see (a delaying relay between them and the
    /// coordinator, `latency.rs`); zero connects them directly.
    pub rtt: Duration,
    /// The coordinator's `limits.receive_window_kib` (none: its default).
    pub receive_window_kib: Option<u32>,
    /// The coordinator's `limits.max_concurrent_uploads` (none: its default).
    pub max_concurrent_uploads: Option<usize>,
    /// The coordinator's `limits.max_concurrent_downloads` (none: its default).
    pub max_concurrent_downloads: Option<usize>,
}

/// The hidden width of a one-hidden-layer MLP with about `params` parameters.
fn hidden_for(params: usize) -> usize {
    // FEATURES·h + h + h·CLASSES + CLASSES
    (params.saturating_sub(CLASSES) / (FEATURES + 1 + CLASSES)).max(1)
}

/// Returns a small random update of the global model's layout at once.
struct Synthetic {
    rows: u64,
}

impl Trainer for Synthetic {
    fn init(&self, _rng: &mut dyn rand::Rng) -> Model {
        Model::new()
    }

    fn fit(
        &mut self,
        global: &Model,
        _data: &Dataset,
        _cfg: &FitConfig,
        rng: &mut dyn rand::Rng,
    ) -> confide_client::train::Result<FitResult> {
        // Filled in place, in flat order: one model-sized vector per site,
        // so the in-process sites of a large bench fit in memory.
        let mut delta = global.zeros_like();
        // Drawn a batch at a time from an AES-CTR keystream under a key
        // from the site's generator: the bench measures the round, not its
        // stand-in for training (a call per element through `dyn Rng` cost
        // more than quantising; ChaCha8 batches were 3 % of the machine).
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        let draws = AesKeystream::new(&key);
        let mut bytes = [0u8; 4096];
        let mut counter = 0u128;
        for t in delta.tensors.values_mut() {
            for vs in t.data.chunks_mut(bytes.len() / 4) {
                draws.keystream(counter, &mut bytes);
                counter += (bytes.len() / 16) as u128;
                for (v, b) in vs.iter_mut().zip(bytes.chunks_exact(4)) {
                    let u = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    *v = ((u >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.02;
                }
            }
        }
        Ok(FitResult {
            delta,
            num_examples: self.rows,
            train_loss: 0.5,
        })
    }

    fn evaluate(
        &self,
        _model: &Model,
        data: &Dataset,
    ) -> confide_client::train::Result<EvalResult> {
        Ok(EvalResult {
            num_examples: data.len() as u64,
            correct: data.len() as u64 / 2,
            loss_sum: 0.69 * data.len() as f64,
        })
    }
}

/// A small synthetic data set (the synthetic trainer ignores it; sites
/// need rows for their holdout split).
fn dataset(seed: u64) -> Result<Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut csv: String = (0..FEATURES).map(|i| format!("x{i},")).collect();
    csv.push_str("y\n");
    for row in 0..20 {
        for _ in 0..FEATURES {
            csv.push_str(&format!(
                "{:.4},",
                rng.next_u32() as f64 / f64::from(u32::MAX)
            ));
        }
        csv.push_str(&format!("{}\n", row % CLASSES));
    }
    Ok(Dataset::from_reader(csv.as_bytes(), "y")?)
}

/// The sites' runtime, shut down without blocking when the bench ends or
/// fails (dropping a runtime inside an async context panics).
struct SiteRuntime(Option<tokio::runtime::Runtime>);

impl Drop for SiteRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The coordinator's configuration for the bench.
///
/// `upload_idle_secs` is the stage deadline: the in-process sites share the
/// bench's cores and runtime, and with a thousand of them a site's upload
/// task can wait many seconds for its next turn behind the others' key
/// agreement — a harness artefact a site on its own machine never sees.
fn config(a: &BenchArgs, root: &Path, port: u16) -> String {
    let secagg = match (a.k, a.t) {
        // Explicit k/t (for instance the peers' k 15, t 8 at 100 sites)
        // meet no collusion floor; the sites are told the same below.
        (Some(k), Some(t)) => format!("k = {k}\nt = {t}\ncollusion_fraction = 0.0\n"),
        _ => String::new(),
    };
    format!(
        r#"federation = "bench"
listen = "127.0.0.1:{port}"
suite = "{suite}"
rounds = {rounds}
min_sites = {min}
max_sites = {n}
cohort_fraction = 1.0
secure_aggregation = true
statistics_round = false
evaluate_every_round = false
final_evaluation = false
join_grace_secs = 120.0
max_consecutive_failures = 3

[secagg]
dropout_fraction = {delta}
stage_timeout_secs = {timeout}
reconnect_grace_secs = {grace}
{secagg}
[model]
kind = "mlp"
features = {FEATURES}
classes = {CLASSES}
hidden = [{hidden}]

[training]
epochs = 1
batch_size = 16
learning_rate = 0.05

[optimiser]
kind = "{optimiser}"

[checkpoints]
dir = "{ck}"
keep_last = 1

[tls]
certs_dir = "{certs}"

[limits]
join_rate_per_sec = 10000.0
join_burst = 10000
max_model_bytes = {max_model_bytes}
upload_idle_secs = {timeout}
{limits}"#,
        suite = a.suite,
        rounds = a.rounds,
        min = a.sites,
        n = a.sites,
        delta = a.dropout.max(0.1),
        hidden = hidden_for(a.params),
        timeout = a.stage_timeout_secs,
        grace = a.reconnect_grace_secs,
        optimiser = a.optimiser,
        // The [limits] the bench's flags set; the coordinator's defaults otherwise.
        limits = [
            (
                "receive_window_kib",
                a.receive_window_kib.map(|w| w as usize)
            ),
            ("max_concurrent_uploads", a.max_concurrent_uploads),
            ("max_concurrent_downloads", a.max_concurrent_downloads),
        ]
        .iter()
        .filter_map(|(key, v)| v.map(|v| format!("{key} = {v}\n")))
        .collect::<String>(),
        // The MLP as f32 with room for its header, and never below the default.
        max_model_bytes = (a.params as u64)
            .saturating_mul(4)
            .saturating_add(1 << 20)
            .max(1 << 30),
        ck = root.join("checkpoints").display(),
        certs = root.join("certs").display(),
    )
}

/// CPU seconds (user + system) and peak resident bytes of process `pid`.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    Ok((cpu, hwm))
}

/// One round's line of the report.
#[derive(serde::Serialize)]
struct RoundLine {
    round: u64,
    success: bool,
    round_secs: f64,
    stage_secs: BTreeMap<String, f64>,
    coordinator_cpu_secs: f64,
    coordinator_peak_rss_bytes: u64,
    upload_bytes_per_param: f64,
    download_bytes_per_param: f64,
    cohort: u32,
    survivors: u32,
    dropped: u32,
    sites: usize,
    params: usize,
    suite: String,
}

fn line(a: &BenchArgs, r: &RoundRecord, cpu: f64, rss: u64, params: usize) -> RoundLine {
    let per = |bytes: u64, n: u32| {
        if n == 0 || params == 0 {
            0.0
        } else {
            bytes as f64 / (f64::from(n) * params as f64)
        }
    };
    RoundLine {
        round: r.round,
        success: r.success,
        round_secs: r.duration_secs,
        stage_secs: r.stage_secs.iter().cloned().collect(),
        coordinator_cpu_secs: cpu,
        coordinator_peak_rss_bytes: rss,
        // Masked inputs arrive from the members that reached masked input.
        upload_bytes_per_param: per(r.bytes_in, r.survivors),
        download_bytes_per_param: per(r.bytes_out, r.cohort),
        cohort: r.cohort,
        survivors: r.survivors,
        dropped: r.dropped,
        sites: a.sites,
        params,
        suite: a.suite.to_string(),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the bench and prints its report.
pub async fn run(a: BenchArgs) -> Result<()> {
    if a.sites < 3 {
        bail!("--sites must be at least 3");
    }
    if !(0.0..0.5).contains(&a.dropout) {
        bail!("--dropout must be in [0, 0.5)");
    }
    if a.k.is_some() != a.t.is_some() {
        bail!("give both --k and --t, or neither (the chooser picks them)");
    }
    let tmp = tempfile::tempdir()?;
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let certs_dir = root.join("certs");
    certs::init(
        &certs_dir,
        "bench",
        &[],
        &confide_coordinator::ca_key::CaKeySource::File,
    )?;
    let names: Vec<String> = (0..a.sites).map(|i| format!("site-{i:04}")).collect();
    for n in &names {
        // In-process sites of one bench: made at the CA for speed (the
        // ceremony of docs/security.md does not change any round figure).
        certs::issue_site(&certs_dir, n, a.suite)?;
    }
    let dropped = (a.dropout * a.sites as f64).round() as usize;
    let port = free_port()?;
    let cfg_path = root.join("bench.toml");
    std::fs::write(&cfg_path, config(&a, &root, port))?;

    let exe = std::env::current_exe().context("locating the confide binary")?;
    let log = std::fs::File::create(root.join("coordinator.log"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["serve", "--config"])
        .arg(&cfg_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // The settings refuse unknown CONFIDE_* variables; the bench's
    // configuration is the file alone.
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFIDE_") {
            cmd.env_remove(k);
        }
    }
    // As the images run it (Dockerfile, docs/performance.md): glibc's
    // malloc otherwise raises its mmap threshold after the first large free
    // and keeps later vectors in fragmenting heaps, and RSS grows per round.
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        cmd.env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072");
    }
    let mut child = cmd.spawn().context("starting the coordinator")?;
    let pid = child.id().context("coordinator pid")?;
    let url = format!("https://127.0.0.1:{port}");
    let ca = certs_dir.join("ca.pem");
    let up = Instant::now();
    while !confide_coordinator::grpc::health_check(&url, Some(&ca), "localhost")
        .await
        .unwrap_or(false)
    {
        if up.elapsed() > Duration::from_secs(30) {
            bail!(
                "the coordinator did not come up; see {}",
                root.join("coordinator.log").display()
            );
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the coordinator exited ({status}); see {}",
                root.join("coordinator.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let params = {
        let h = hidden_for(a.params);
        FEATURES * h + h + h * CLASSES + CLASSES
    };
    if !a.json {
        println!(
            "bench: {} sites, {} parameters (MLP {FEATURES}-{}-{CLASSES}), suite {}, {} rounds, {} dropping at {} in the last round",
            a.sites,
            params,
            hidden_for(a.params),
            a.suite,
            a.rounds,
            dropped,
            a.drop_stage
        );
    }
    // The sites get a runtime of their own whose blocking pool — where each
    // site's local computation (update, quantisation, masks) runs — is as
    // wide as the machine. A thousand real sites compute on a thousand
    // machines; in one process, tokio's default pool of 512 threads would
    // run hundreds at once, each holding its model, update and upload (at
    // n = 1000, d = 10⁶ that filled 21.8 GB), for no gain on these cores.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let site_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .max_blocking_threads(cores)
        .thread_name("bench-site")
        .enable_all()
        .build()
        .context("starting the sites' runtime")?;
    let spawner = site_rt.handle().clone();
    let site_url = if a.rtt.is_zero() {
        url.clone()
    } else {
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let at = crate::latency::relay(to, a.rtt)
            .await
            .context("starting the round-trip delay relay")?;
        format!("https://{at}")
    };
    let _site_rt = SiteRuntime(Some(site_rt));
    let mut sites = Vec::with_capacity(a.sites);
    for (i, name) in names.iter().enumerate() {
        let policy = confide_client::SitePolicy {
            collusion_fraction: if a.k.is_some() { 0.0 } else { 0.1 },
            ..Default::default()
        };
        let mut b = confide_client::Site::builder()
            .coordinator(site_url.clone())
            .certs_dir(&certs_dir, name.clone(), "localhost")
            .dataset(dataset(i as u64)?)
            .policy(policy)
            .max_reconnect(Duration::from_secs(120))
            .trainer(|_: &confide_proto::v1::TrainingConfig| {
                Ok(Box::new(Synthetic { rows: 16 }) as confide_client::BoxTrainer)
            });
        if i < dropped {
            // Rounds are numbered from 1 (the bench has no statistics round).
            b = b.vanish(Vanish {
                round: a.rounds,
                stage: a.drop_stage,
            });
        }
        let site = b.build()?;
        sites.push(spawner.spawn(site.run(std::future::pending())));
    }

    let ck = root.join("checkpoints");
    // On a terminal, a bar over the rounds (on stderr: stdout is the report).
    let bar = progress::bar(
        a.rounds,
        "bench   [{bar:30}] {pos}/{len} rounds {elapsed:>6} {msg}",
    );
    if let Some(b) = &bar {
        // Redrawn while a round runs, so the elapsed time keeps counting.
        b.enable_steady_tick(Duration::from_millis(250));
    }
    let mut seen = 0usize;
    let mut cpu_before = 0.0;
    // The child's figures as last read while it lived: once it has exited
    // /proc has them no more (a zombie has no VmHWM), and the last round's
    // record can land in the same poll as the exit.
    let mut last_usage = (0.0, 0u64);
    let mut lines = Vec::new();
    loop {
        let finished = child.try_wait()?.is_some();
        if let Ok((cpu, rss)) = usage(pid)
            && rss > 0
        {
            last_usage = (cpu, rss);
        }
        let history = confide_coordinator::cli::latest_history(
            &confide_coordinator::checkpoint::LocalStore::new(&ck),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if history.len() > seen {
            let (cpu, rss) = last_usage;
            for r in &history[seen..] {
                let l = line(&a, r, cpu - cpu_before, rss, params);
                cpu_before = cpu;
                let text = if a.json {
                    serde_json::to_string(&l)?
                } else {
                    let stages: Vec<String> = l
                        .stage_secs
                        .iter()
                        .map(|(s, t)| format!("{s} {t:.3}"))
                        .collect();
                    format!(
                        "round {:>3} {:<6} {:.3} s  [{}]  coordinator cpu {:.2} s, peak rss {:.1} MB  up {:.2} B/param  survivors {}/{}",
                        l.round,
                        if l.success { "ok" } else { "FAILED" },
                        l.round_secs,
                        stages.join(", "),
                        l.coordinator_cpu_secs,
                        l.coordinator_peak_rss_bytes as f64 / 1e6,
                        l.upload_bytes_per_param,
                        l.survivors,
                        l.cohort
                    )
                };
                progress::suspend(|| println!("{text}"));
                if let Some(b) = &bar {
                    b.inc(1);
                    b.set_message(format!("last: round {} {:.3} s", l.round, l.round_secs));
                }
                lines.push(l);
            }
            seen = history.len();
        }
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bar);
    let status = child.wait().await?;
    for s in sites {
        match s.await {
            Ok(Ok(_)) | Ok(Err(ClientError::StreamClosed)) => {}
            Ok(Err(e)) => eprintln!("a site ended with an error: {e}"),
            Err(e) => eprintln!("a site task failed: {e}"),
        }
    }
    if !status.success() {
        bail!(
            "the coordinator exited with {status}; see {}",
            root.join("coordinator.log").display()
        );
    }
    if !a.json && !lines.is_empty() {
        let mut secs: Vec<f64> = lines.iter().map(|l| l.round_secs).collect();
        secs.sort_by(f64::total_cmp);
        println!(
            "median round {:.3} s over {} rounds; coordinator peak rss {:.1} MB",
            secs[secs.len() / 2],
            secs.len(),
            lines
                .iter()
                .map(|l| l.coordinator_peak_rss_bytes)
                .max()
                .unwrap_or(0) as f64
                / 1e6
        );
    }
    Ok(())
}
