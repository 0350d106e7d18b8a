//! `confide`: the coordinator CLI (serve, status, rounds, checkpoints, certs, demo).
//!
//! Argument parsing and dispatch only: what the subcommands do and print
//! lives in the library's `cli` module, the in-process demo in `main/demo.rs`
//! (feature `demo`, the only code that needs the site crate).

#[cfg(feature = "demo")]
#[path = "main/bench.rs"]
mod bench;
#[cfg(feature = "demo")]
#[path = "main/demo.rs"]
mod demo;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use confide_coordinator::ca_key::CaKeyArgs;
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
    /// Round history as a table (Admin API, or `--checkpoints DIR` offline).
    Rounds {
        #[command(flatten)]
        admin: AdminArgs,
        /// Read the history from the latest checkpoint in DIR instead.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
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
        /// One JSON object per round.
        #[arg(long)]
        json: bool,
        /// Keep the bench directory (config, certificates, checkpoints, coordinator log) here.
        #[arg(long)]
        dir: Option<PathBuf>,
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

#[derive(Subcommand)]
enum CkptCmd {
    /// List checkpoints.
    List {
        #[arg(long, default_value = "checkpoints")]
        dir: PathBuf,
    },
    /// Export one checkpoint (default: latest) as a single safetensors file with preprocessing tensors.
    Export {
        #[arg(long, default_value = "checkpoints")]
        dir: PathBuf,
        #[arg(long)]
        round: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
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

#[derive(Subcommand)]
enum CertCmd {
    /// Create the federation CA and the coordinator certificate.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "confide")]
        federation: String,
        /// Extra DNS names / IPs for the coordinator certificate.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Where to keep the CA key (default: DIR/ca.key, unencrypted, 0600).
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Issue an operator certificate, or (demos only, with
    /// --generate-keys-here) a site's keys and certificate made on this machine.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Make the site's private keys here, on the CA's machine. Whoever
        /// holds this directory can then act as the site: demos and tests
        /// only. Real sites run `confide-site init` and send a request for
        /// `confide certs sign`.
        #[arg(long, requires = "site")]
        generate_keys_here: bool,
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        site: Option<String>,
        #[arg(long)]
        operator: Option<String>,
        /// Suite of the site's signing key.
        #[arg(long, default_value = "intl")]
        suite: String,
        /// The CA key's source, if not the one `certs init` recorded (checked
        /// against ca.pem, then recorded for later commands).
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Check a site's certificate request (from `confide-site init`) and
    /// issue its certificate; the site's private keys never come here.
    Sign {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The request file (PEM) the site sent.
        #[arg(long)]
        csr: PathBuf,
        /// The site name agreed out of band; the request must name it.
        #[arg(long)]
        site: Option<String>,
        /// The federation's suite; the request's signing key must be of it.
        #[arg(long)]
        suite: Suite,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = certs::DEFAULT_SITE_DAYS)]
        days: u32,
        /// Replace the site's current certificate (key rotation); the old
        /// one is kept as sites/NAME.<serial>.pem for revocation.
        #[arg(long)]
        rotate: bool,
        /// Also write the certificate here (the file to send back to the site).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// List issued certificates (marking revoked ones).
    List {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Revoke a site, an operator or a certificate serial: recorded in
    /// DIR/revoked.toml and published in a freshly signed DIR/crl.pem, which
    /// a running coordinator re-reads on its next request and serves to sites.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[command(flatten)]
        target: RevokeArgs,
        /// Days the new CRL stays valid.
        #[arg(long, default_value_t = certs::DEFAULT_CRL_DAYS)]
        days: u32,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Re-issue DIR/crl.pem with the next CRL number and a fresh expiry.
    /// CRLs expire: run this from cron well within --days (e.g. daily).
    Crl {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days the new CRL stays valid.
        #[arg(long, default_value_t = certs::DEFAULT_CRL_DAYS)]
        days: u32,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
}

/// Exactly one certificate to revoke.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct RevokeArgs {
    /// Site name (its certificate is DIR/sites/NAME.pem).
    #[arg(long)]
    site: Option<String>,
    /// Operator name (its certificate is DIR/operators/NAME.pem).
    #[arg(long)]
    operator: Option<String>,
    /// Certificate serial in hex (colons allowed).
    #[arg(long)]
    serial: Option<String>,
}

impl RevokeArgs {
    fn target(&self) -> Result<certs::RevokeTarget<'_>> {
        Ok(match (&self.site, &self.operator, &self.serial) {
            (Some(n), _, _) => certs::RevokeTarget::Site(n),
            (_, Some(n), _) => certs::RevokeTarget::Operator(n),
            (_, _, Some(s)) => certs::RevokeTarget::Serial(s),
            _ => bail!("--site, --operator or --serial required"),
        })
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
            let (out, note) = cli::transcript::show(&dir, json)?;
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
                Some(dir) => cli::latest_history(&dir)?
                    .with_context(|| format!("no checkpoints in {}", dir.display()))?,
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
        Cmd::Checkpoints { cmd } => match cmd {
            CkptCmd::List { dir } => {
                let list = confide_coordinator::checkpoint_infos(&dir)?;
                print!("{}", render::checkpoints_table(&list));
            }
            CkptCmd::Export { dir, round, out } => {
                let path = cli::find_checkpoint(&dir, round)?
                    .with_context(|| format!("no such checkpoint in {}", dir.display()))?;
                checkpoint::export(&checkpoint::load(&path)?, &out)?;
                println!("exported {} to {}", path.display(), out.display());
            }
        },
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
            json,
            dir,
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
                json,
                dir,
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
