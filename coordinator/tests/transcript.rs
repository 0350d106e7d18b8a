//! The round transcript end to end: the real `confide serve` binary as a
//! child process, five in-process sites over gRPC on loopback; one site drops
//! out of a round that completes, another makes the next round fail. The
//! transcript must hold one record per ended round with the right stages,
//! dropouts and survivors, and stay whole JSON lines after a `kill -9` of
//! the coordinator mid-round; `confide rounds --transcript` prints it.

mod support;
use support::data::split;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confide_client::{SiteConfig, Vanish};
use confide_coordinator::transcript::{self, Record};
use confide_crypto::Stage;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn site(url: &str, i: usize, data: &Path, vanish: Option<(u64, Stage)>) -> SiteConfig {
    let mut c = SiteConfig::new(url, format!("site-{i}"), data, "malignant");
    c.insecure = true;
    c.max_reconnect = Duration::from_secs(5);
    c.vanish = vanish.map(|(round, stage)| Vanish { round, stage });
    c
}

fn spawn_site(c: SiteConfig) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        confide_client::run_site(c, std::future::pending())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// Training rounds of five sites, more than the test waits for (it kills the
/// coordinator mid-way): complete graph k = 4, t = 3, and at least four
/// inputs in every sum, so one dropout is survivable and a second (in a
/// cohort of four) is not.
fn config(ck: &Path) -> String {
    format!(
        r#"federation = "transcript-test"
suite = "intl"
rounds = 1000
min_sites = 4
max_sites = 5
join_grace_secs = 10.0
statistics_round = false
final_evaluation = false
[secagg]
k = 4
t = 3
min_survivors = 4
stage_timeout_secs = 6
reconnect_grace_secs = 0.5
[checkpoints]
dir = "{}"
"#,
        ck.display()
    )
}

/// Kills the coordinator if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn confide(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confide"));
    c.args(args);
    // The settings refuse unknown CONFIDE_* variables: the file alone counts.
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFIDE_") {
            c.env_remove(k);
        }
    }
    c
}

/// Waits until the transcript holds `n` records (torn tails are transient
/// while the coordinator writes).
async fn wait_for_records(path: &Path, n: usize, within: Duration) -> Result<(), BoxError> {
    let until = Instant::now() + within;
    loop {
        if path.exists() && transcript::read(path)?.entries.len() >= n {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("fewer than {n} transcript records within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stage<'a>(r: &'a Record, name: &str) -> Result<&'a transcript::StageRecord, BoxError> {
    r.stages
        .iter()
        .find(|s| s.stage == name)
        .ok_or_else(|| format!("round {}: no {name} stage in {:?}", r.round, r.stages).into())
}

/// Site names in name order (records list them by member id, which
/// follows the order the sites happened to join in).
fn sites(names: &[usize]) -> Vec<String> {
    names.iter().map(|i| format!("site-{i}")).collect()
}

fn sorted<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().cloned().collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transcript_records_dropouts_and_failures_and_survives_kill_9() -> Result<(), BoxError>
{
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let data = split(tmp.path(), 5)?;
    let ck = tmp.path().join("ck");
    let cfg = tmp.path().join("federation.toml");
    std::fs::write(&cfg, config(&ck))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(tmp.path().join("coordinator.log"))?;
    let child = confide(&["serve", "--insecure", "--listen", &listen, "--config"])
        .arg(&cfg)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut coordinator = KillOnDrop(child);
    let url = format!("http://{listen}");
    while !confide_coordinator::grpc::health_check(&url, None, "localhost")
        .await
        .unwrap_or(false)
    {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("the coordinator did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Round 1: site-4 never uploads (the round goes on with four inputs);
    // round 2: site-3 vanishes before sharing its keys (three are too few).
    let mut sites_running = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let vanish = match i {
            4 => Some((1, Stage::MaskedInput)),
            3 => Some((2, Stage::ShareKeys)),
            _ => None,
        };
        sites_running.push(spawn_site(site(&url, i, d, vanish)));
    }
    let path = transcript::path(&ck);
    wait_for_records(&path, 2, Duration::from_secs(60)).await?;
    // The hospital that vanished comes back, so the next round has four.
    sites_running.push(spawn_site(site(&url, 3, &data[3], None)));
    wait_for_records(&path, 4, Duration::from_secs(60)).await?;
    // Rounds follow each other at once: kill -9 mid-round (or mid-write).
    assert!(
        coordinator.0.try_wait()?.is_none(),
        "the coordinator stopped"
    );
    coordinator.0.kill()?;
    let status = coordinator.0.wait()?;
    assert_eq!(status.signal(), Some(9), "{status}");
    eprintln!(
        "killed the coordinator after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Whole lines only, each a record: nothing torn, one per ended round.
    let bytes = std::fs::read(&path)?;
    assert!(bytes.ends_with(b"\n"), "torn last line");
    let t = transcript::read(&path)?;
    assert_eq!(t.torn_line, None);
    let recs: Vec<&Record> = t.entries.iter().map(|e| &e.record).collect();
    let rounds: Vec<(u64, bool)> = recs.iter().map(|r| (r.round, r.success)).collect();
    assert_eq!(rounds[..3], [(1, true), (2, false), (3, true)], "{recs:#?}");
    // Then one record per round, in order, each a success.
    for (i, r) in recs.iter().enumerate().skip(3) {
        assert_eq!((r.round, r.success), (i as u64 + 1, true), "{r:#?}");
    }
    eprintln!("{} rounds recorded before the kill", recs.len());

    let (first, failed, third) = (recs[0], recs[1], recs[2]);
    assert_eq!(
        sorted(first.cohort.iter().map(|m| &m.site)),
        sites(&[0, 1, 2, 3, 4])
    );
    assert!(first.cohort.windows(2).all(|w| w[0].member < w[1].member));
    let plan = first.plan.as_ref().ok_or("round 1 has no plan")?;
    assert_eq!((plan.k, plan.t, plan.min_survivors), (4, 3, 4));
    assert!(plan.secure && plan.ring == "u32" && first.suite == "intl");
    assert_eq!((plan.context.len(), plan.session_id.len()), (64, 64));
    let names: Vec<&str> = first.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        names,
        [
            "advertise-keys",
            "share-keys",
            "masked-input",
            "consistency",
            "unmask"
        ]
    );
    assert!(stage(first, "share-keys")?.dropped.is_empty());
    let masked = stage(first, "masked-input")?;
    assert_eq!(masked.dropped, sites(&[4]));
    assert!(masked.pruned.is_empty());
    assert_eq!(sorted(&masked.completed), sites(&[0, 1, 2, 3]));
    assert_eq!(sorted(&first.survivors), sites(&[0, 1, 2, 3]));
    // Four self-mask seeds and the dropped member's mask key.
    assert_eq!(
        (
            first.reconstructed.self_mask_seeds,
            first.reconstructed.mask_keys
        ),
        (4, 1)
    );
    assert!(first.model_after.is_some() && first.reason.is_none());

    // Round 2: asked four, site-3 dropped at share-keys; the other three
    // answered, but with t = 3 none keeps enough neighbours: all pruned,
    // nothing summed.
    let asked = sorted(failed.cohort.iter().map(|m| &m.site));
    assert_eq!(asked, sites(&[0, 1, 2, 3]));
    let names: Vec<&str> = failed.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["advertise-keys", "share-keys"]);
    let shares = stage(failed, "share-keys")?;
    assert_eq!(shares.dropped, sites(&[3]));
    assert_eq!(sorted(&shares.pruned), sites(&[0, 1, 2]));
    assert!(shares.completed.is_empty());
    assert!(failed.survivors.is_empty() && failed.model_after.is_none());
    assert_eq!(failed.reason.as_deref(), Some("too_few_survivors"));
    assert!(!failed.message.is_empty());

    // Round 3 starts from round 1's model: the failed round changed nothing.
    let model = |r: &Record| r.plan.as_ref().map(|p| p.model_sha256.clone());
    assert_eq!(model(failed), first.model_after);
    assert_eq!(model(third), first.model_after);
    assert_eq!(sorted(&third.survivors), sites(&[0, 1, 2, 3]));
    assert!(third.stages.iter().all(|s| s.dropped.is_empty()));
    let attempts: std::collections::BTreeSet<_> = recs
        .iter()
        .filter_map(|r| r.plan.as_ref().map(|p| &p.attempt))
        .collect();
    assert_eq!(
        attempts.len(),
        recs.len(),
        "every attempt has its own nonce"
    );

    // `confide rounds --transcript`: the stored lines with --json, else a
    // readable account.
    let out = confide(&["rounds", "--transcript", "--json", "--checkpoints"])
        .arg(&ck)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, bytes);
    let out = confide(&["rounds", "--transcript", "--checkpoints"])
        .arg(&ck)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("round 2 train: FAILED"), "{text}");
    assert!(
        text.contains("0 completed; dropped: site-3; pruned: site-"),
        "{text}"
    );

    // A line torn by a crash in mid-write is reported, not fatal, and
    // the whole lines before it read as before.
    let mut torn = bytes.clone();
    torn.extend_from_slice(br#"{"format":1,"round":99,"kind":"tr"#);
    std::fs::write(&path, &torn)?;
    let out = confide(&["rounds", "--transcript", "--json", "--checkpoints"])
        .arg(&ck)
        .stderr(Stdio::piped())
        .output()?;
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains(&format!("line {} ", recs.len() + 1)),
        "{note}"
    );

    for s in sites_running {
        s.abort();
    }
    eprintln!("transcript test: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
