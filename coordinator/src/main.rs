//! `confide`: the coordinator CLI (serve, status, rounds, checkpoints, certs, demo).
//!
//! Argument parsing and dispatch only: what the subcommands do and print
//! lives in the library's `cli` module, the in-process demo in `main/demo.rs`
//! (feature `demo`, the only code that needs the site crate).

#[cfg(feature = "demo")]
#[path = "main/bench.rs"]
mod bench;
#[path = "main/certs_args.rs"]
mod certs_args;
#[path = "main/ckpt_args.rs"]
mod ckpt_args;
#[cfg(feature = "demo")]
#[path = "main/demo.rs"]
mod demo;
#[path = "main/latency.rs"]
mod latency;

use certs_args::CertCmd;
use ckpt_args::CkptCmd;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use confide_coordinator::cli::{self, admin, render};
use confide_coordinator::{Settings, certs, checkpoint};
use confide_crypto::Suite;

#[derive(Parser)]
#[command(
    name = "confide",
    version,
    about = "Confide federated-learning coordinator with secure aggregation"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "CONFIDE_LOG_JSON")]
    json_logs: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator.
    Serve {
        /// Federation TOML.
        #[arg(long, short)]
        config: PathBuf,
        /// Plaintext gRPC (local experiments only).
        #[arg(long)]
        insecure: bool,
        /// Listen address (overrides `listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Federation state right now (Admin API).
    Status(AdminArgs),
    /// Round history as a table (Admin API, or `--checkpoints DIR|URL` offline).
    Rounds {
        #[command(flatten)]
        admin: AdminArgs,
        /// Read the history from the latest checkpoint in DIR, or in object
        /// storage at s3://bucket/prefix (endpoint and credentials from
        /// AWS_*), instead.
        #[arg(long, value_name = "DIR|URL")]
        checkpoints: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Draw the learning curve to FILE (.svg or .png, 800×500) instead of
        /// the table: x is the round id; a successful round's point is the
        /// held-out accuracy / loss of the model it started from (so the
        /// evaluate round's is the final model); failed rounds are a red ×.
        #[arg(long, value_name = "FILE", conflicts_with = "json")]
        plot: Option<PathBuf>,
        /// The round transcript DIR/transcript.jsonl instead (needs
        /// --checkpoints DIR): each round's parameters, context, stages,
        /// dropouts, survivors and outcome; --json prints its lines as stored.
        #[arg(long, requires = "checkpoints", conflicts_with = "plot")]
        transcript: bool,
    },
    /// Stored checkpoints.
    Checkpoints {
        #[command(subcommand)]
        cmd: CkptCmd,
    },
    /// Certificates and signing keys.
    Certs {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// Exit 0 when the coordinator's gRPC health service reports the Site service serving (for container healthchecks).
    Health {
        /// Coordinator URL.
        #[arg(
            long,
            default_value = "https://localhost:7443",
            env = "CONFIDE_COORDINATOR"
        )]
        coordinator: String,
        /// Federation CA (PEM); no client certificate is needed. Omit for a plaintext coordinator.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Name to expect in the coordinator's certificate.
        #[arg(long, default_value = "localhost")]
        domain: String,
    },
    /// The whole round as a user runs it: the coordinator and N sites over
    /// gRPC with mTLS on loopback, secure aggregation, a synthetic
    /// d-parameter update; per-round stage times, coordinator CPU and peak
    /// memory, bytes per parameter (docs/performance.md).
    #[cfg(feature = "demo")]
    Bench {
        /// Sites.
        #[arg(long, default_value_t = 100)]
        sites: usize,
        /// Model parameters (an MLP of about this size).
        #[arg(long, default_value_t = 1_000_000)]
        params: usize,
        /// Training rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u64,
        /// Fraction of sites that vanish in the last round.
        #[arg(long, default_value_t = 0.0)]
        dropout: f64,
        /// The stage at which they vanish.
        #[arg(long, value_enum, default_value_t = DropStage::MaskedInput)]
        drop_stage: DropStage,
        /// Cipher suite.
        #[arg(long, default_value_t = Suite::Intl)]
        suite: Suite,
        /// SecAgg+ degree (with --t; default: chosen from the cohort).
        #[arg(long, requires = "t")]
        k: Option<u32>,
        /// SecAgg+ threshold (with --k).
        #[arg(long, requires = "k")]
        t: Option<u32>,
        /// The coordinator's stage deadline: how long a round waits for a
        /// site that dropped.
        #[arg(long, default_value_t = 60)]
        stage_timeout_secs: u32,
        /// How long the coordinator waits for a site whose connection
        /// closed to come back (`secagg.reconnect_grace_secs`).
        #[arg(long, default_value_t = 5.0)]
        reconnect_grace_secs: f64,
        /// Server optimiser (`fedavg`, `fedavgm`, `fedadagrad`, `fedadam`,
        /// `fedyogi`): the stateful ones hold two more model-sized vectors.
        #[arg(long, default_value = "fedavg")]
        optimiser: String,
        /// One JSON object per round.
        #[arg(long)]
        json: bool,
        /// Keep the bench directory (config, certificates, checkpoints, coordinator log) here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Round-trip time between the sites and the coordinator, in ms: a
        /// relay on loopback delays every byte by half of it each way, as a
        /// link between clouds would (bandwidth is not limited).
        #[arg(long, default_value_t = 0)]
        rtt_ms: u64,
        /// The coordinator's HTTP/2 receive window, KiB
        /// (`limits.receive_window_kib`; default: the coordinator's).
        #[arg(long)]
        receive_window_kib: Option<u32>,
        /// Uploads streamed at once (`limits.max_concurrent_uploads`;
        /// default: the coordinator's).
        #[arg(long)]
        max_concurrent_uploads: Option<usize>,
        /// Model downloads streamed at once
        /// (`limits.max_concurrent_downloads`; default: the coordinator's).
        #[arg(long)]
        max_concurrent_downloads: Option<usize>,
    },
    /// Coordinator + three hospitals on loopback (mTLS, secure aggregation) over the breast-cancer data.
    #[cfg(feature = "demo")]
    Demo {
        /// Training rounds.
        #[arg(long, default_value_t = 30)]
        rounds: u64,
        /// Cipher suite.
        #[arg(long, default_value = "intl")]
        suite: String,
        /// Keep the demo directory (certs, data splits, checkpoints) here instead of a temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also draw the learning curve to FILE (.svg or .png), as `confide rounds --plot`.
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Coordinator URL.
    #[arg(
        long,
        default_value = "https://localhost:7443",
        env = "CONFIDE_COORDINATOR"
    )]
    coordinator: String,
    /// Certificate directory (operators/<name>.pem, ca.pem).
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// Operator name.
    #[arg(long, default_value = "admin")]
    operator: String,
    /// Plaintext connection.
    #[arg(long)]
    insecure: bool,
    /// Name to expect in the coordinator's certificate.
    #[arg(long, default_value = admin::DEFAULT_DOMAIN)]
    domain: String,
}

impl AdminArgs {
    /// The operator's TLS files, or `None` for a plaintext connection.
    fn tls(&self) -> Option<admin::OperatorTls> {
        (!self.insecure).then(|| {
            admin::OperatorTls::from_certs_dir(&self.certs_dir, &self.operator, &self.domain)
        })
    }
}

/// Where `confide bench`'s dropped sites stop.
#[cfg(feature = "demo")]
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DropStage {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    Consistency,
    Unmask,
}

#[cfg(feature = "demo")]
impl From<DropStage> for confide_crypto::Stage {
    fn from(s: DropStage) -> Self {
        match s {
            DropStage::AdvertiseKeys => Self::AdvertiseKeys,
            DropStage::ShareKeys => Self::ShareKeys,
            DropStage::MaskedInput => Self::MaskedInput,
            DropStage::Consistency => Self::Consistency,
            DropStage::Unmask => Self::Unmask,
        }
    }
}

fn init_logs(json: bool, default: &str) {
    // Decided before the first log line: the log writes around the bars.
    let progress = confide_coordinator::progress::init();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(confide_coordinator::progress::Stdout::default)
        .with_target(false)
        // Colour only on a terminal, so piped logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
    if let Err(e) = progress {
        // Not through the log, whose filter may hide warnings (bench, demo).
        eprintln!("warning: {e}; showing progress as for auto");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            config,
            insecure,
            listen,
        } => {
            init_logs(cli.json_logs, "info");
            let mut s = Settings::load(&config)?;
            if insecure {
                s.tls.insecure = true;
            }
            if let Some(l) = listen {
                s.listen = l;
            }
            s.validate()?;
            let listener = tokio::net::TcpListener::bind(&s.listen)
                .await
                .with_context(|| format!("binding {}", s.listen))?;
            let report = confide_coordinator::serve(s, listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            print!("{}", render::rounds_table(&report.history));
            print!("{}", render::final_accuracy(report.final_accuracy));
        }
        Cmd::Health {
            coordinator,
            ca,
            domain,
        } => {
            if !admin::health_check(&coordinator, ca.as_deref(), &domain).await? {
                anyhow::bail!("{coordinator} is up but its Site service is not serving");
            }
            println!("serving");
        }
        Cmd::Status(a) => {
            let st = admin::status(&a.coordinator, a.tls().as_ref()).await?;
            print!("{}", render::status(&st));
        }
        Cmd::Rounds {
            checkpoints: Some(dir),
            json,
            transcript: true,
            ..
        } => {
            if dir.contains("://") {
                bail!(
                    "the round transcript is a local file: pass the directory of \
                     checkpoints.transcript_dir, not {dir}"
                );
            }
            let (out, note) = cli::transcript::show(std::path::Path::new(&dir), json)?;
            print!("{out}");
            eprint!("{note}");
        }
        Cmd::Rounds {
            admin: a,
            checkpoints,
            json,
            plot,
            ..
        } => {
            let history = match checkpoints {
                Some(dir) => cli::latest_history(checkpoint::open(&dir)?.as_ref())?
                    .with_context(|| format!("no checkpoints in {dir}"))?,
                None => admin::rounds(&a.coordinator, a.tls().as_ref()).await?,
            };
            if let Some(file) = plot {
                cli::plot::plot_file(&history, &file)?;
                print!("{}", render::wrote(&[file]));
            } else if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print!("{}", render::rounds_table(&history));
            }
        }
        Cmd::Checkpoints { cmd } => ckpt_args::run(cmd)?,
        Cmd::Certs { cmd } => match cmd {
            CertCmd::Init {
                dir,
                federation,
                names,
                ca_key,
            } => {
                let source = ca_key.source()?.unwrap_or_default();
                print!(
                    "{}",
                    render::wrote(&certs::init(&dir, &federation, &names, &source)?)
                );
            }
            CertCmd::Issue {
                dir,
                generate_keys_here,
                site,
                operator,
                suite,
                ca_key,
            } => {
                // issue_* find the key through DIR/ca.key.source: record flags given here.
                if let Some(source) = ca_key.source()? {
                    certs::adopt_ca_key(&dir, &source)?;
                }
                let files = match (&site, operator) {
                    (Some(_), _) if !generate_keys_here => bail!(
                        "a site makes its own keys: run `confide-site init --site NAME` at the site and `confide certs sign --csr NAME.csr` here; pass --generate-keys-here only for a demo"
                    ),
                    (Some(s), _) => {
                        eprintln!(
                            "warning: {s}'s private keys are being made on this machine; anyone with {} can act as {s}. Use this for demos and tests only.",
                            dir.display()
                        );
                        certs::issue_site(&dir, s, suite.parse::<Suite>()?)?
                    }
                    (None, Some(o)) => certs::issue_operator(&dir, &o)?,
                    (None, None) => bail!("--site or --operator required"),
                };
                print!("{}", render::issued(&files, site.as_deref()));
            }
            CertCmd::Sign {
                dir,
                csr,
                site,
                suite,
                days,
                rotate,
                out,
                ca_key,
            } => {
                if let Some(source) = ca_key.source()? {
                    certs::adopt_ca_key(&dir, &source)?;
                }
                let pem = std::fs::read_to_string(&csr)
                    .with_context(|| format!("reading {}", csr.display()))?;
                let opts = certs::SignOptions {
                    suite,
                    site,
                    days,
                    rotate,
                };
                let signed = certs::sign_request(&dir, &pem, &opts)
                    .with_context(|| format!("{}", csr.display()))?;
                if let Some(out) = &out {
                    std::fs::copy(&signed.certificate, out)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
                print!("{}", render::signed(&signed, out.as_deref(), &dir));
            }
            CertCmd::List { dir } => print!("{}", render::certs_dir_listing(&dir)?),
            CertCmd::Revoke {
                dir,
                target,
                days,
                ca_key,
            } => {
                if let Some(source) = ca_key.source()? {
                    certs::adopt_ca_key(&dir, &source)?;
                }
                let r = certs::revoke(&dir, target.target()?, days)?;
                print!("{}", render::revoked(&r));
            }
            CertCmd::Crl { dir, days, ca_key } => {
                if let Some(source) = ca_key.source()? {
                    certs::adopt_ca_key(&dir, &source)?;
                }
                print!("{}", render::crl_issued(&certs::issue_crl(&dir, days)?));
            }
        },
        #[cfg(feature = "demo")]
        Cmd::Bench {
            sites,
            params,
            rounds,
            dropout,
            drop_stage,
            suite,
            k,
            t,
            stage_timeout_secs,
            reconnect_grace_secs,
            optimiser,
            json,
            dir,
            rtt_ms,
            receive_window_kib,
            max_concurrent_uploads,
            max_concurrent_downloads,
        } => {
            init_logs(cli.json_logs, "error");
            bench::run(bench::BenchArgs {
                sites,
                params,
                rounds,
                dropout,
                drop_stage: drop_stage.into(),
                suite,
                k,
                t,
                stage_timeout_secs,
                reconnect_grace_secs,
                optimiser,
                json,
                dir,
                rtt: std::time::Duration::from_millis(rtt_ms),
                receive_window_kib,
                max_concurrent_uploads,
                max_concurrent_downloads,
            })
            .await?;
        }
        #[cfg(feature = "demo")]
        Cmd::Demo {
            rounds,
            suite,
            dir,
            plot,
        } => {
            init_logs(
                cli.json_logs,
                "confide_coordinator=info,confide_client=warn,warn",
            );
            demo::run(rounds, &suite, dir, plot).await?;
        }
    }
    Ok(())
}
