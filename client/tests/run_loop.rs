//! The run loop's behaviour without a coordinator: it gives up after
//! `max_reconnect`, stops on shutdown, and reports local file problems
//! before touching the network.

use std::io::Write;
use std::time::{Duration, Instant};

use confide_client::{ClientError, SiteConfig, TlsFiles, run_site};

fn csv() -> Result<tempfile::NamedTempFile, std::io::Error> {
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(f, "a,b,y")?;
    for i in 0..20 {
        writeln!(f, "{},{},{}", i, 20 - i, i % 2)?;
    }
    Ok(f)
}

/// A loopback port nobody listens on.
fn dead_port() -> Result<u16, std::io::Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn insecure(url: String, data: &std::path::Path) -> SiteConfig {
    let mut cfg = SiteConfig::new(url, "site-a", data, "y");
    cfg.insecure = true;
    cfg
}

#[tokio::test]
async fn gives_up_after_max_reconnect() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let mut cfg = insecure(format!("http://127.0.0.1:{}", dead_port()?), data.path());
    cfg.max_reconnect = Duration::from_millis(600);
    let started = Instant::now();
    let r = run_site(cfg, std::future::pending()).await;
    match r {
        Err(ClientError::GaveUp { last, .. }) => {
            assert!(matches!(*last, ClientError::Connect { .. }), "{last}")
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    // Several attempts with backoff, but not much longer than the budget.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(15),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_a_reconnecting_site() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let mut cfg = insecure(format!("http://127.0.0.1:{}", dead_port()?), data.path());
    cfg.max_reconnect = Duration::from_secs(600);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        run_site(cfg, tokio::time::sleep(Duration::from_millis(300))),
    )
    .await?;
    let report = r?;
    assert!(!report.vanished);
    assert_eq!(report.rounds, 0);
    Ok(())
}

#[tokio::test]
async fn local_problems_are_reported_before_connecting() -> Result<(), Box<dyn std::error::Error>> {
    let data = csv()?;
    let url = format!("https://127.0.0.1:{}", dead_port()?);

    let cfg = insecure(url.clone(), std::path::Path::new("/nonexistent/data.csv"));
    let e = run_site(cfg, std::future::pending())
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("/nonexistent/data.csv")),
        "{e:?}"
    );

    let mut cfg = insecure(url.clone(), data.path());
    cfg.label = "nope".into();
    let e = run_site(cfg, std::future::pending())
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("label column 'nope'")),
        "{e:?}"
    );

    let dir = tempfile::tempdir()?;
    let mut cfg = SiteConfig::new(url.clone(), "site-a", data.path(), "y");
    cfg.tls = Some(TlsFiles::from_certs_dir(dir.path(), "site-a", "localhost"));
    let key = dir.path().join("site-a.signing.toml");
    std::fs::write(&key, "suite = \"intl\"\nsecret = \"not hex\"\n")?;
    cfg.signing_key = Some(key.clone());
    #[cfg(unix)]
    {
        // A key file other users can read is refused, with the fix.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
        let e = run_site(cfg.clone(), std::future::pending())
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("chmod 600")),
            "{e:?}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let e = run_site(cfg.clone(), std::future::pending())
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("signing key file") && e.contains("not hex")),
        "{e:?}"
    );

    std::fs::write(
        &key,
        format!("suite = \"intl\"\nsecret = \"{}\"\n", "42".repeat(32)),
    )?;
    let e = run_site(cfg, std::future::pending())
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("certificate file") && e.contains("ca.pem")),
        "{e:?}"
    );
    Ok(())
}
