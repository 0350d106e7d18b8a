//! `confide`: the coordinator CLI (serve, status, rounds, checkpoints, certs, demo).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use confide_coordinator::{Settings, certs, checkpoint, grpc, rounds_table};
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
    /// Revoke a site (NAME), an operator (operator-NAME) or a certificate
    /// serial (hex): appended to DIR/revoked.txt, which a running coordinator
    /// re-reads on its next request.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Site name, `operator-NAME`, or certificate serial.
        name: String,
    },
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
            print!("{}", rounds_table(&report.history));
            if let Some(a) = report.final_accuracy {
                println!("final held-out accuracy: {:.2} %", a * 100.0);
            }
        }
        Cmd::Health {
            coordinator,
            ca,
            domain,
        } => {
            if !grpc::health_check(&coordinator, ca.as_deref(), &domain).await? {
                anyhow::bail!("{coordinator} is up but its Site service is not serving");
            }
            println!("serving");
        }
        Cmd::Status(a) => {
            let st = grpc::admin_status(&a.coordinator, admin_tls(&a)?).await?;
            println!("federation      {}", st.federation);
            println!("suite           {}", st.suite);
            println!("secure agg.     {}", st.secure_aggregation);
            println!("round           {} ({})", st.current_round, st.stage);
            println!(
                "completed       {}/{}",
                st.completed_rounds, st.target_rounds
            );
            println!("connected sites {}", st.connected_sites.join(", "));
        }
        Cmd::Rounds {
            admin,
            checkpoints,
            json,
        } => {
            let history = match checkpoints {
                Some(dir) => match checkpoint::list(&dir)?.last() {
                    Some((_, p)) => checkpoint::load_manifest(p)?.history,
                    None => bail!("no checkpoints in {}", dir.display()),
                },
                None => grpc::admin_rounds(&admin.coordinator, admin_tls(&admin)?).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print!("{}", rounds_table(&history));
            }
        }
        Cmd::Checkpoints { cmd } => match cmd {
            CkptCmd::List { dir } => {
                println!("round    accuracy  best  path");
                for c in confide_coordinator::checkpoint_infos(&dir)? {
                    println!(
                        "{:<8} {:<9.4} {:<5} {}",
                        c.round,
                        c.accuracy,
                        if c.best { "*" } else { "" },
                        c.path
                    );
                }
            }
            CkptCmd::Export { dir, round, out } => {
                let all = checkpoint::list(&dir)?;
                let path = match round {
                    Some(r) => all.iter().find(|(x, _)| *x == r).map(|(_, p)| p.clone()),
                    None => all.last().map(|(_, p)| p.clone()),
                }
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
                for p in certs::init(&dir, &federation, &names)? {
                    println!("wrote {}", p.display());
                }
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
                for p in files {
                    println!("wrote {} (private key beside it, mode 0600)", p.display());
                }
                if let Some(s) = site {
                    println!(
                        "remember: add {s:?} to [tls] allowed_sites in the coordinator's config"
                    );
                }
            }
            CertCmd::List { dir } => {
                let revoked = certs::read_revoked(&dir.join(certs::REVOKED_FILE))?;
                for (kind, name, p) in certs::list(&dir)? {
                    let id = if kind == "operator" {
                        format!("operator-{name}")
                    } else {
                        name.clone()
                    };
                    let mark = if revoked.contains(&id) { "REVOKED" } else { "" };
                    println!("{kind:<12} {name:<24} {mark:<8} {}", p.display());
                }
                for r in &revoked {
                    println!("revoked      {r}");
                }
            }
            CertCmd::Revoke { dir, name } => {
                let path = certs::revoke(&dir, &name)?;
                println!(
                    "revoked {name} in {} (a running coordinator applies it on the next request)",
                    path.display()
                );
            }
        },
        Cmd::Demo { rounds, suite, dir } => {
            init_logs(
                cli.json_logs,
                "confide_coordinator=info,confide_client=warn,warn",
            );
            demo(rounds, &suite, dir).await?;
        }
    }
    Ok(())
}

fn admin_tls(a: &AdminArgs) -> Result<Option<(PathBuf, PathBuf, PathBuf)>> {
    if a.insecure {
        return Ok(None);
    }
    let d = &a.certs_dir;
    Ok(Some((
        d.join("ca.pem"),
        d.join("operators").join(format!("{}.pem", a.operator)),
        d.join("operators").join(format!("{}.key", a.operator)),
    )))
}

/// The breast-cancer CSV, embedded so the demo runs from any directory.
const BREAST_CANCER: &str = include_str!("../../examples/data/breast_cancer_wisconsin.csv");

/// Non-IID split: rows sorted by `radius_mean` descending; A gets the first
/// 20 %, B the next 30 %, C the rest.
fn split_hospitals(csv: &str, out: &Path) -> Result<Vec<(String, PathBuf, usize)>> {
    let mut lines = csv.lines();
    let header = lines.next().context("empty CSV")?;
    let col = header
        .split(',')
        .position(|h| h == "radius_mean")
        .context("no radius_mean column")?;
    let mut rows: Vec<(f64, &str)> = Vec::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let v: f64 = l
            .split(',')
            .nth(col)
            .context("short row")?
            .trim()
            .parse()
            .context("radius_mean is not a number")?;
        rows.push((v, l));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = rows.len();
    let cuts = [0, n * 20 / 100, n * 50 / 100, n];
    let mut out_files = Vec::new();
    for (i, name) in ["hospital-a", "hospital-b", "hospital-c"]
        .iter()
        .enumerate()
    {
        let part = &rows[cuts[i]..cuts[i + 1]];
        let mut text = String::from(header);
        text.push('\n');
        for (_, l) in part {
            text.push_str(l);
            text.push('\n');
        }
        let p = out.join(format!("{name}.csv"));
        std::fs::write(&p, text)?;
        out_files.push((name.to_string(), p, part.len()));
    }
    Ok(out_files)
}

async fn demo(rounds: u64, suite: &str, dir: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let root = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let suite_v: Suite = suite.parse()?;
    let certs_dir = root.join("certs");
    certs::init(&certs_dir, "demo", &[])?;
    let hospitals = split_hospitals(BREAST_CANCER, &root)?;
    for (name, _, rows) in &hospitals {
        certs::issue_site(&certs_dir, name, suite_v)?;
        println!("{name}: {rows} patients");
    }
    let mut s = Settings::from_toml_str(include_str!("../federation.example.toml"))?;
    s.federation = "demo".into();
    s.suite = suite.into();
    s.rounds = rounds;
    s.listen = "127.0.0.1:0".into();
    s.tls.certs_dir = Some(certs_dir.clone());
    s.checkpoints.dir = Some(root.join("checkpoints"));
    s.validate()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    println!(
        "coordinator on 127.0.0.1:{port} (mTLS, secure aggregation, suite {suite}); demo files in {}",
        root.display()
    );
    let server = tokio::spawn(confide_coordinator::serve(
        s,
        listener,
        std::future::pending(),
    ));
    let mut sites = Vec::new();
    for (name, data, _) in hospitals {
        let mut cfg = confide_client::SiteConfig::new(
            format!("https://127.0.0.1:{port}"),
            name.clone(),
            data,
            "malignant",
        );
        cfg.tls = Some(confide_client::TlsFiles {
            ca: certs_dir.join("ca.pem"),
            cert: certs_dir.join("sites").join(format!("{name}.pem")),
            key: certs_dir.join("sites").join(format!("{name}.key")),
            domain: "localhost".into(),
        });
        cfg.signing_key = Some(certs_dir.join("sites").join(format!("{name}.signing.toml")));
        sites.push(tokio::spawn(confide_client::run_site(
            cfg,
            std::future::pending(),
        )));
    }
    let report = server.await.context("coordinator task")??;
    for s in sites {
        match s.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("a site ended with an error: {e}"),
            Err(e) => eprintln!("a site task failed: {e}"),
        }
    }
    println!();
    print!("{}", rounds_table(&report.history));
    match report.final_accuracy {
        Some(a) => println!(
            "\nfinal held-out accuracy: {:.2} % after {} training rounds",
            a * 100.0,
            report.completed_rounds
        ),
        None => println!("\nno final accuracy (evaluation round did not complete)"),
    }
    println!("demo wall time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_split_is_20_30_50_by_descending_radius() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let parts = split_hospitals(BREAST_CANCER, tmp.path())?;
        let sizes: Vec<usize> = parts.iter().map(|p| p.2).collect();
        assert_eq!(sizes, [113, 171, 285]);
        let radius = |p: &Path| -> Result<Vec<f64>> {
            let text = std::fs::read_to_string(p)?;
            Ok(text
                .lines()
                .skip(1)
                .filter_map(|l| l.split(',').next()?.parse().ok())
                .collect())
        };
        let (a, b) = (radius(&parts[0].1)?, radius(&parts[1].1)?);
        let min_a = a.iter().copied().fold(f64::INFINITY, f64::min);
        let max_b = b.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(min_a >= max_b, "hospital A holds the largest tumours");
        Ok(())
    }
}
