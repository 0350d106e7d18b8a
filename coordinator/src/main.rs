//! `confide`: the coordinator CLI (serve, status, rounds, checkpoints, certs, demo).
//!
//! Argument parsing and dispatch only: what the subcommands do and print
//! lives in the library's `cli` module, the in-process demo in `main/demo.rs`
//! (feature `demo`, the only code that needs the site crate).

#[cfg(feature = "demo")]
#[path = "main/demo.rs"]
mod demo;

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
    },
    /// Issue a site or operator certificate.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
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
    },
    /// Re-issue DIR/crl.pem with the next CRL number and a fresh expiry.
    /// CRLs expire: run this from cron well within --days (e.g. daily).
    Crl {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days the new CRL stays valid.
        #[arg(long, default_value_t = certs::DEFAULT_CRL_DAYS)]
        days: u32,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour only on a terminal, so piped logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        b.json().init();
    } else {
        b.init();
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
            admin: a,
            checkpoints,
            json,
        } => {
            let history = match checkpoints {
                Some(dir) => cli::latest_history(&dir)?
                    .with_context(|| format!("no checkpoints in {}", dir.display()))?,
                None => admin::rounds(&a.coordinator, a.tls().as_ref()).await?,
            };
            if json {
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
            } => {
                print!(
                    "{}",
                    render::wrote(&certs::init(&dir, &federation, &names)?)
                );
            }
            CertCmd::Issue {
                dir,
                site,
                operator,
                suite,
            } => {
                let files = match (&site, operator) {
                    (Some(s), _) => certs::issue_site(&dir, s, suite.parse::<Suite>()?)?,
                    (None, Some(o)) => certs::issue_operator(&dir, &o)?,
                    (None, None) => bail!("--site or --operator required"),
                };
                print!("{}", render::issued(&files, site.as_deref()));
            }
            CertCmd::List { dir } => print!("{}", render::certs_dir_listing(&dir)?),
            CertCmd::Revoke { dir, target, days } => {
                let r = certs::revoke(&dir, target.target()?, days)?;
                print!("{}", render::revoked(&r));
            }
            CertCmd::Crl { dir, days } => {
                print!("{}", render::crl_issued(&certs::issue_crl(&dir, days)?));
            }
        },
        #[cfg(feature = "demo")]
        Cmd::Demo { rounds, suite, dir } => {
            init_logs(
                cli.json_logs,
                "confide_coordinator=info,confide_client=warn,warn",
            );
            demo::run(rounds, &suite, dir).await?;
        }
    }
    Ok(())
}
