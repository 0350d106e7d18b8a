//! `confide-site`: the daemon a participant site runs. It connects outbound
//! to the coordinator, trains on the local CSV, and only ever sends masked
//! updates. `confide-site check` validates a CSV before joining.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use confide_client::metrics::MetricsServer;
use confide_client::train::Dataset;
use confide_client::{Site, SiteConfig, TlsFiles};
use confide_crypto::protocol::SitePolicy;

#[derive(Parser)]
#[command(
    name = "confide-site",
    version,
    about = "Confide participant site: federated training with secure aggregation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the federation and take part in rounds until it is done.
    Run(Box<RunArgs>),
    /// Validate a CSV (header, numeric features, integer labels) and print its shape.
    Check(CheckArgs),
    /// Create this site's private keys and a certificate request, here; the
    /// keys never leave DIR, only the request goes to the federation CA.
    Init(InitArgs),
    /// Check the certificate the CA returned against this site's own keys
    /// and the federation CA, and install it.
    InstallCert(InstallArgs),
}

#[derive(Args)]
struct InitArgs {
    /// The site's key directory (created 0700).
    #[arg(long, env = "CONFIDE_CERTS_DIR")]
    dir: PathBuf,
    /// This site's name, as agreed with the federation.
    #[arg(long, env = "CONFIDE_SITE")]
    site: String,
    /// The federation's cipher suite (intl or gm).
    #[arg(long, env = "CONFIDE_SUITE")]
    suite: confide_crypto::Suite,
    /// Make new keys beside the current ones (NAME.next.*); the current
    /// ones keep working until install-cert promotes the new certificate.
    #[arg(long)]
    rotate: bool,
}

#[derive(Args)]
struct InstallArgs {
    /// The site's key directory.
    #[arg(long, env = "CONFIDE_CERTS_DIR")]
    dir: PathBuf,
    /// This site's name.
    #[arg(long, env = "CONFIDE_SITE")]
    site: String,
    /// The certificate the CA sent back.
    #[arg(long)]
    cert: PathBuf,
    /// The federation CA certificate (copied into DIR as ca.pem when DIR has none).
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Coordinator URL, e.g. https://coordinator.example.org:7443 (outbound
    /// only); several comma-separated (active and standbys): the site joins
    /// the first that serves and fails over to the next.
    #[arg(long, env = "CONFIDE_COORDINATOR")]
    coordinator: String,
    /// This site's name (must match its certificate).
    #[arg(long, env = "CONFIDE_SITE")]
    site: String,
    /// Local data; it never leaves this machine. With --label: a CSV with a
    /// header row for the built-in trainers. With --train-command: passed
    /// to the command as CONFIDE_DATA (a file or a directory, its business).
    #[arg(long, env = "CONFIDE_DATA")]
    data: Option<PathBuf>,
    /// Label column of the CSV (integer class ids); omit it when the
    /// training command reads the data itself.
    #[arg(long, env = "CONFIDE_LABEL")]
    label: Option<String>,
    /// The site's key directory from `confide-site init` (NAME.{pem,key,signing.toml}, ca.pem),
    /// or a demo CA directory (sites/NAME.*).
    #[arg(long, env = "CONFIDE_CERTS_DIR", conflicts_with_all = ["ca", "cert", "key"])]
    certs_dir: Option<PathBuf>,
    /// Federation CA certificate (PEM).
    #[arg(long, env = "CONFIDE_CA", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// This site's certificate (PEM).
    #[arg(long, env = "CONFIDE_CERT")]
    cert: Option<PathBuf>,
    /// This site's private key (PEM).
    #[arg(long, env = "CONFIDE_KEY")]
    key: Option<PathBuf>,
    /// Long-term signing key (TOML: suite, secret).
    #[arg(long, env = "CONFIDE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// The federation CRL (PEM) distributed out of band, optional: the site
    /// also takes the coordinator's and keeps the newest validly signed one.
    #[arg(long, env = "CONFIDE_CRL")]
    crl: Option<PathBuf>,
    /// Name in the coordinators' certificates (default: each URL's host);
    /// given, it applies to every coordinator URL.
    #[arg(long, env = "CONFIDE_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Plaintext transport and an ephemeral signing key: local experiments only.
    #[arg(long, env = "CONFIDE_INSECURE")]
    insecure: bool,
    /// Take part in plaintext comparison rounds, where the coordinator sees
    /// this site's update (off: only secure aggregation).
    #[arg(long, env = "CONFIDE_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Refuse rounds that ask for more local epochs.
    #[arg(long, env = "CONFIDE_MAX_EPOCHS", default_value_t = 1000)]
    max_epochs: u32,
    /// Refuse secure rounds with a smaller cohort.
    #[arg(long, env = "CONFIDE_MIN_COHORT", default_value_t = SitePolicy::default().min_cohort)]
    min_cohort: usize,
    /// Refuse to reveal shares for a sum of fewer inputs (at least 3).
    #[arg(long, env = "CONFIDE_MIN_SURVIVORS", default_value_t = SitePolicy::default().min_survivors)]
    min_survivors: usize,
    /// Fraction of a cohort this site assumes may collude with the
    /// coordinator; rounds whose collusion bound or threshold do not cover
    /// ⌈fraction·n⌉ colluders are refused.
    #[arg(long, env = "CONFIDE_COLLUSION_FRACTION", default_value_t = SitePolicy::default().collusion_fraction)]
    collusion_fraction: f64,
    /// Cohorts up to this size must use the complete graph (every pair of
    /// sites cross-checks); a sparse graph is refused.
    #[arg(long, env = "CONFIDE_COMPLETE_GRAPH_UP_TO", default_value_t = SitePolicy::default().complete_graph_up_to)]
    complete_graph_up_to: usize,
    /// Fraction of rows held out for evaluation.
    #[arg(long, env = "CONFIDE_HOLDOUT", default_value_t = 0.2)]
    holdout: f64,
    /// State directory (0700) for the contribution ledger, kept across
    /// restarts. Default: `state/<site>/` in --certs-dir or beside --key; else in memory.
    #[arg(long, env = "CONFIDE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Give up after the coordinator has been unreachable this many seconds.
    #[arg(long, env = "CONFIDE_MAX_RECONNECT_SECS", default_value_t = 60)]
    max_reconnect_secs: u64,
    /// Train (and, for `[model] kind = "file"`, evaluate) with an external
    /// command run through `sh -c` (see docs/site.md for its contract).
    #[arg(long, visible_alias = "trainer-command", env = "CONFIDE_TRAIN_COMMAND")]
    train_command: Option<String>,
    /// Kill a training or evaluation command still running after this many seconds.
    #[arg(long, env = "CONFIDE_TRAIN_TIMEOUT_SECS", default_value_t = 3600)]
    train_timeout_secs: u64,
    /// Log as JSON lines.
    #[arg(long, env = "CONFIDE_JSON_LOGS")]
    json_logs: bool,
    /// Serve Prometheus metrics (rounds, stage times, bytes, reconnects) as
    /// plain HTTP on IP:PORT, GET /metrics (off unless given).
    #[arg(long, env = "CONFIDE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct CheckArgs {
    /// CSV to validate.
    #[arg(long, env = "CONFIDE_DATA")]
    data: PathBuf,
    /// Label column.
    #[arg(long, env = "CONFIDE_LABEL")]
    label: String,
    /// Holdout fraction to preview the split with.
    #[arg(long, env = "CONFIDE_HOLDOUT", default_value_t = 0.2)]
    holdout: f64,
}

fn init_logs(json: bool) {
    // Decided before the first log line: the log writes around the bars.
    let progress = confide_client::progress::init();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(confide_client::progress::Stdout::default)
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

/// The host part of a URL, as the default TLS name.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn site_config(a: &RunArgs) -> anyhow::Result<SiteConfig> {
    // An empty label means no CSV: the training command reads the data.
    let (data, label) = match (&a.data, &a.label, &a.train_command) {
        (Some(d), Some(l), _) => (d.clone(), l.clone()),
        (data, None, Some(_)) => (data.clone().unwrap_or_default(), String::new()),
        (None, Some(_), _) => bail!("--label names a column of the CSV given with --data"),
        (_, None, None) => bail!(
            "give --data CSV --label COLUMN for the built-in trainers, \
             or --train-command CMD (optionally with --data PATH) for your own training code"
        ),
    };
    let mut cfg = SiteConfig::new(&a.coordinator, &a.site, data, label);
    cfg.holdout = a.holdout;
    cfg.insecure = a.insecure;
    cfg.allow_plaintext = a.allow_plaintext;
    cfg.max_epochs = a.max_epochs;
    cfg.crl = a.crl.clone();
    cfg.policy = SitePolicy {
        min_cohort: a.min_cohort,
        min_survivors: a.min_survivors,
        collusion_fraction: a.collusion_fraction,
        complete_graph_up_to: a.complete_graph_up_to,
    };
    cfg.max_reconnect = Duration::from_secs(a.max_reconnect_secs);
    let domain = match &a.tls_domain {
        Some(d) => d.clone(),
        // Several coordinators: each URL's own host (empty domain).
        None if a.coordinator.contains(',') => String::new(),
        None => url_host(&a.coordinator)
            .with_context(|| format!("no host in coordinator URL {}", a.coordinator))?,
    };
    if let Some(dir) = &a.certs_dir {
        let (tls, signing) = confide_client::enrol::identity_in_dir(dir, &a.site, domain);
        cfg.tls = Some(tls);
        cfg.signing_key = Some(signing);
    } else if let (Some(ca), Some(cert), Some(key)) = (&a.ca, &a.cert, &a.key) {
        cfg.tls = Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            domain,
        });
    } else if !a.insecure {
        bail!(
            "give --certs-dir DIR, or --ca, --cert, --key and --signing-key (or --insecure for a local experiment)"
        );
    }
    if let Some(k) = &a.signing_key {
        cfg.signing_key = Some(k.clone());
    }
    cfg.state_dir = state_dir(a);
    Ok(cfg)
}

/// `--state-dir`, else `state/<site>/` beside the key material; `None` without any.
fn state_dir(a: &RunArgs) -> Option<PathBuf> {
    let beside_key = a.key.as_ref().map(|k| {
        k.parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    });
    a.state_dir.clone().or_else(|| {
        let dir = a.certs_dir.clone().or(beside_key)?;
        Some(dir.join("state").join(&a.site))
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    init_logs(a.json_logs);
    let cfg = site_config(&a)?;
    let mut site = Site::builder().config(cfg);
    if let Some(cmd) = &a.train_command {
        let options = confide_client::external::ExternalOptions {
            timeout: Duration::from_secs(a.train_timeout_secs),
            data: a.data.clone(),
        };
        site = site.trainer_factory(confide_client::external::factory_with(cmd.clone(), options));
    }
    let metrics = match a.metrics_listen {
        Some(addr) => {
            let m = std::sync::Arc::new(confide_client::SiteMetrics::new());
            site = site.metrics(m.clone());
            let server = MetricsServer::bind(addr, m).await?;
            tracing::info!(url = %server.url(), "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };
    let site = site.build()?;
    let report = site.run(shutdown_signal()).await;
    if let Some(server) = metrics {
        server.stop().await;
    }
    let report = report?;
    tracing::info!(
        rounds = report.rounds,
        last_round = report.last_round,
        vanished = report.vanished,
        "site finished"
    );
    Ok(ExitCode::SUCCESS)
}

fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let data = Dataset::from_csv(&a.data, &a.label)?;
    let (train, test) = data.split_holdout(a.holdout, 0)?;
    println!("{}: OK", a.data.display());
    println!(
        "rows:     {} ({} for training, {} held out)",
        data.len(),
        train.len(),
        test.len()
    );
    println!("features: {}", data.num_features());
    let counts = data.class_counts();
    println!("classes:  {}", counts.len());
    for (class, n) in counts.iter().enumerate() {
        println!("  label {class}: {n} rows");
    }
    if counts.iter().filter(|&&n| n > 0).count() < 2 {
        println!(
            "warning: fewer than two classes present; this site alone cannot learn to separate them"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let e = confide_client::enrol::init(&a.dir, &a.site, a.suite, a.rotate)?;
    for p in &e.private {
        println!(
            "wrote {} (private, 0600: it never leaves this machine)",
            p.display()
        );
    }
    println!("wrote {}", e.request.display());
    println!("request SHA-256: {}", e.request_sha256);
    println!("signing key:     {}", e.verifying_key_uri);
    println!(
        "send {} to the federation CA, and read the SHA-256 above to its operator over a second channel (phone, in person); \
         then install the certificate it returns with `confide-site install-cert --dir {} --site {} --cert FILE --ca ca.pem`",
        e.request.display(),
        a.dir.display(),
        a.site
    );
    Ok(ExitCode::SUCCESS)
}

fn install_cert(a: InstallArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read(&a.cert).with_context(|| format!("reading {}", a.cert.display()))?;
    let i = confide_client::enrol::install_certificate(&a.dir, &a.site, &pem, a.ca.as_deref())?;
    println!(
        "installed {} (serial {}, valid until {})",
        i.certificate.display(),
        i.serial,
        i.not_after
    );
    if let Some(old) = i.retired_serial {
        println!(
            "the previous keys are in {}/retired; once this site runs with the new certificate, ask the CA to revoke serial {old}",
            a.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per distinct cause: our error messages already embed their
/// sources, so repeating the chain would print everything twice.
fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check(a),
        Command::Init(a) => init(a),
        Command::InstallCert(a) => install_cert(a),
        Command::Run(a) => {
            let a = *a;
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(a)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("confide-site: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_url() {
        assert_eq!(
            url_host("https://coordinator:7443").as_deref(),
            Some("coordinator")
        );
        assert_eq!(
            url_host("https://127.0.0.1:7443/").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:7443").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(url_host("https://:7443"), None);
    }

    #[test]
    fn cli_parses_both_identity_forms() {
        let cli = Cli::try_parse_from([
            "confide-site",
            "run",
            "--coordinator",
            "https://c:7443",
            "--site",
            "a",
            "--data",
            "a.csv",
            "--label",
            "y",
            "--certs-dir",
            "/certs",
        ]);
        let Ok(Cli {
            command: Command::Run(a),
        }) = cli
        else {
            panic!("did not parse")
        };
        let a = *a;
        let cfg = site_config(&a).map_err(|e| e.to_string());
        assert!(cfg.is_ok_and(|c| c.tls.is_some_and(|t| t.domain == "c")
            && c.policy == SitePolicy::default()
            && c.state_dir == Some(PathBuf::from("/certs/state/a"))));
        // Several coordinators: each URL's own host, unless --tls-domain.
        let mut several = a;
        several.coordinator = "https://c:7443,https://d:7443".into();
        let cfg = site_config(&several).map_err(|e| e.to_string());
        assert!(cfg.is_ok_and(|c| c.tls.is_some_and(|t| t.domain.is_empty())));
        several.tls_domain = Some("coordinator".into());
        let cfg = site_config(&several).map_err(|e| e.to_string());
        assert!(cfg.is_ok_and(|c| c.tls.is_some_and(|t| t.domain == "coordinator")));
        let cli = Cli::try_parse_from([
            "confide-site",
            "run",
            "--coordinator",
            "https://c:7443",
            "--site",
            "a",
            "--data",
            "a.csv",
            "--label",
            "y",
        ]);
        let Ok(Cli {
            command: Command::Run(a),
        }) = cli
        else {
            panic!("did not parse")
        };
        let a = *a;
        assert!(site_config(&a).is_err(), "no identity and not insecure");
    }

    #[test]
    fn a_training_command_needs_no_csv() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "confide-site",
                "run",
                "--coordinator",
                "http://c:7443",
                "--site",
                "a",
                "--insecure",
            ];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args) {
                Ok(Cli {
                    command: Command::Run(a),
                }) => site_config(&a).map_err(|e| e.to_string()),
                _ => Err("did not parse".into()),
            }
        };
        // The command reads its own data: no CSV, an empty label.
        let c = parse(&[
            "--trainer-command",
            "python train.py",
            "--data",
            "/data/shard",
        ]);
        assert!(c.is_ok_and(|c| c.label.is_empty()));
        let c = parse(&[
            "--train-command",
            "python train.py",
            "--train-timeout-secs",
            "5",
        ]);
        assert!(c.is_ok_and(|c| c.label.is_empty()));
        // The built-in trainers still need the CSV and its label.
        assert!(parse(&[]).is_err_and(|e| e.contains("--train-command")));
        assert!(parse(&["--data", "a.csv"]).is_err());
        assert!(parse(&["--label", "y"]).is_err_and(|e| e.contains("--data")));
        let c = parse(&["--data", "a.csv", "--label", "y"]);
        assert!(c.is_ok_and(|c| c.label == "y"));
    }

    #[test]
    fn cli_sets_the_site_policy() {
        let cli = Cli::try_parse_from([
            "confide-site",
            "run",
            "--coordinator",
            "http://c:7443",
            "--site",
            "a",
            "--data",
            "a.csv",
            "--label",
            "y",
            "--insecure",
            "--min-cohort",
            "5",
            "--min-survivors",
            "4",
            "--collusion-fraction",
            "0.2",
            "--complete-graph-up-to",
            "10",
        ]);
        let Ok(Cli {
            command: Command::Run(a),
        }) = cli
        else {
            panic!("did not parse")
        };
        let p = site_config(&a).map(|c| c.policy).map_err(|e| e.to_string());
        assert_eq!(
            p,
            Ok(SitePolicy {
                min_cohort: 5,
                min_survivors: 4,
                collusion_fraction: 0.2,
                complete_graph_up_to: 10,
            })
        );
    }
}
