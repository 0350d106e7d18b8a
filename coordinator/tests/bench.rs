//! `confide bench` end to end on a small federation: the real binary, a
//! coordinator child process and in-process sites over mTLS; its JSON lines
//! must describe the rounds that ran.

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn bench(args: &[&str]) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
fn bench_reports_each_round_with_measured_coordinator_figures() -> TestResult {
    let lines = bench(&[
        "--sites",
        "6",
        "--params",
        "3000",
        "--rounds",
        "2",
        "--dropout",
        "0.2",
        "--drop-stage",
        "masked-input",
        "--stage-timeout-secs",
        "3",
    ])?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["round"], i as u64 + 1);
        assert_eq!(l["success"], true, "{l}");
        assert_eq!(l["cohort"], 6);
        assert!(
            l["coordinator_peak_rss_bytes"].as_u64().unwrap_or(0) > 1 << 20,
            "{l}"
        );
        assert!(l["coordinator_cpu_secs"].as_f64().is_some_and(|c| c >= 0.0));
        assert!(l["round_secs"].as_f64().is_some_and(|s| s > 0.0));
        for stage in [
            "advertise-keys",
            "share-keys",
            "masked-input",
            "consistency",
            "unmask",
        ] {
            assert!(l["stage_secs"][stage].is_number(), "{stage} missing in {l}");
        }
        // 6 sites at the default levels (2^16): 20 bits, 2.5 bytes per
        // parameter packed, plus keys, shares and signatures, which weigh
        // in at this small a model.
        let up = l["upload_bytes_per_param"].as_f64().unwrap_or(0.0);
        assert!((2.5..3.5).contains(&up), "upload {up} B/param");
    }
    // 20 % of 6 sites (one) vanish at masked input in the last round only.
    assert_eq!(
        (lines[0]["survivors"].as_u64(), lines[0]["dropped"].as_u64()),
        (Some(6), Some(0))
    );
    assert_eq!(
        (lines[1]["survivors"].as_u64(), lines[1]["dropped"].as_u64()),
        (Some(5), Some(1))
    );
    Ok(())
}

#[test]
fn bench_refuses_bad_arguments_with_the_reason() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["bench", "--sites", "2"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 3"));
    Ok(())
}

#[test]
fn bench_across_a_delayed_link_takes_its_round_trips_and_sets_the_window() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("bench");
    let lines = bench(&[
        "--sites",
        "3",
        "--params",
        "3000",
        "--rounds",
        "1",
        "--rtt-ms",
        "200",
        "--receive-window-kib",
        "128",
        "--max-concurrent-uploads",
        "2",
        "--max-concurrent-downloads",
        "3",
        "--dir",
        root.to_str().ok_or("temp path is not UTF-8")?,
    ])?;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["success"], true, "{l}");
    // Each stage sends the sites a task and waits for their answers, both
    // through the relay: no stage closes in less than one round trip (on
    // loopback this round takes about 10 ms).
    for (stage, secs) in l["stage_secs"].as_object().ok_or("no stage_secs")? {
        let secs = secs.as_f64().unwrap_or(0.0);
        assert!(
            secs >= 0.2,
            "{stage} closed in {secs} s across a 200 ms link"
        );
    }
    let cfg = std::fs::read_to_string(root.join("bench.toml"))?;
    for line in [
        "receive_window_kib = 128",
        "max_concurrent_uploads = 2",
        "max_concurrent_downloads = 3",
    ] {
        assert!(cfg.contains(line), "{line} missing from {cfg}");
    }
    Ok(())
}
