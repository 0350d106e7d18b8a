//! `confide demo`: a coordinator and three hospitals on loopback (mTLS,
//! secure aggregation) over the breast-cancer data. Part of the binary, not
//! the library, and behind the `demo` feature, because it starts sites
//! in-process with `confide-client`, which the coordinator otherwise must not
//! depend on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use confide_coordinator::cli::plot;
use confide_coordinator::{Settings, certs, rounds_table};
use confide_crypto::Suite;

/// The breast-cancer CSV, embedded so the demo runs from any directory.
const BREAST_CANCER: &str = include_str!("../../../examples/data/breast_cancer_wisconsin.csv");

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

pub async fn run(
    rounds: u64,
    suite: &str,
    dir: Option<PathBuf>,
    curve: Option<PathBuf>,
) -> Result<()> {
    let started = Instant::now();
    // A bad file name should stop the demo before it runs, not after.
    if let Some(p) = &curve {
        plot::Format::of_path(p)?;
    }
    let tmp = tempfile::tempdir()?;
    let root = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let suite_v: Suite = suite.parse()?;
    let certs_dir = root.join("certs");
    certs::init(
        &certs_dir,
        "demo",
        &[],
        &confide_coordinator::ca_key::CaKeySource::File,
    )?;
    let hospitals = split_hospitals(BREAST_CANCER, &root)?;
    // Each hospital makes its own keys in its own directory and sends only
    // a request; the CA signs it (the ceremony of docs/security.md).
    let site_dir = |name: &str| root.join("sites").join(name);
    for (name, _, rows) in &hospitals {
        let e = confide_client::enrol::init(&site_dir(name), name, suite_v, false)?;
        let signed = certs::sign_request(
            &certs_dir,
            &std::fs::read_to_string(&e.request)?,
            &certs::SignOptions {
                suite: suite_v,
                site: Some(name.clone()),
                days: certs::DEFAULT_SITE_DAYS,
                rotate: false,
            },
        )?;
        confide_client::enrol::install_certificate(
            &site_dir(name),
            name,
            &std::fs::read(&signed.certificate)?,
            Some(&certs_dir.join("ca.pem")),
        )?;
        println!("{name}: {rows} patients");
    }
    let mut s = Settings::from_toml_str(include_str!("../../federation.example.toml"))?;
    s.federation = "demo".into();
    s.suite = suite_v;
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
    // Metrics on a free port, bound here (not through `[metrics] listen`)
    // so the demo can print the URL.
    let metrics = std::sync::Arc::new(confide_coordinator::Metrics::new(&s));
    let metrics_server = confide_coordinator::MetricsServer::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        metrics.clone(),
    )?;
    println!("Prometheus metrics on {}", metrics_server.url());
    let server = tokio::spawn(confide_coordinator::serve_with(
        s,
        listener,
        metrics,
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
        let (tls, signing) =
            confide_client::enrol::identity_in_dir(&site_dir(&name), &name, "localhost");
        cfg.tls = Some(tls);
        cfg.signing_key = Some(signing);
        sites.push(tokio::spawn(confide_client::run_site(
            cfg,
            std::future::pending(),
        )));
    }
    let report = server.await.context("coordinator task");
    metrics_server.stop().await;
    let report = report??;
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
    if let Some(p) = &curve {
        plot::plot_file(&report.history, p)?;
        println!("learning curve: {}", p.display());
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
