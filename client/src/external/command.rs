//! One call of the external command: `sh -c CMD` in its own process group
//! with the contract's environment, bounded by a timeout, and the metrics
//! JSON it writes back.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::train::{ExternalError, Mode};

/// The bytes of stderr quoted in an error.
const STDERR_TAIL: u64 = 2000;

/// Runs `sh -c command` with `envs`, stdin closed, stdout inherited and
/// stderr to `stderr_path`; kills the whole process group (the shell and
/// whatever it started) once `timeout` has passed.
pub(super) fn run(
    command: &str,
    mode: Mode,
    envs: &[(&str, OsString)],
    stderr_path: &Path,
    timeout: Duration,
) -> Result<(), ExternalError> {
    let files = |source| ExternalError::Files {
        path: stderr_path.to_path_buf(),
        source,
    };
    let stderr = std::fs::File::create(stderr_path).map_err(files)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(stderr);
    #[cfg(unix)]
    {
        // A group of its own, so a timeout kills the interpreter the shell
        // started too, not only the shell.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let spawn = |source| ExternalError::Spawn {
        command: command.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    let status = wait(&mut child, timeout).map_err(spawn)?;
    let Some(status) = status else {
        return Err(ExternalError::Timeout {
            command: command.to_string(),
            mode,
            after: timeout,
        });
    };
    if status.success() {
        return Ok(());
    }
    Err(ExternalError::Failed {
        command: command.to_string(),
        mode,
        status: status.to_string(),
        stderr: tail(stderr_path),
    })
}

/// The exit status, or `None` after killing the group at the timeout.
fn wait(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    // Short polls first: most test and evaluation calls end in milliseconds.
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Kills the child's process group, then the child, and reaps it.
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    {
        // `kill` rather than libc: no unsafe code in this crate.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last [`STDERR_TAIL`] bytes of a file, as text.
fn tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    };
    match read() {
        Ok(s) if s.is_empty() => "(empty)".into(),
        Ok(s) => s,
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// The metrics JSON as written; unknown keys are allowed (a script may
/// record more for itself).
#[derive(Debug, Default, Deserialize)]
struct RawMetrics {
    num_examples: Option<u64>,
    loss: Option<f64>,
    correct: Option<u64>,
    total: Option<u64>,
}

/// Checked metrics of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Examples trained on (the update's weight) or evaluated.
    pub num_examples: u64,
    /// Mean loss over those examples, if reported.
    pub loss: Option<f64>,
    /// Correct predictions (evaluate).
    pub correct: u64,
}

/// Parses and checks the metrics JSON of a `mode` call:
/// `num_examples` (> 0 to train), `loss` finite if present, and for
/// evaluate `correct` (at most the examples) and optionally `total`
/// (equal to `num_examples` when both are given).
pub(super) fn parse_metrics(text: &str, mode: Mode) -> Result<Metrics, ExternalError> {
    let bad = |reason: String| ExternalError::BadMetrics { mode, reason };
    let raw: RawMetrics = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not a JSON object of non-negative integers and numbers: {e}"
        ))
    })?;
    let num_examples = match (raw.num_examples, raw.total, mode) {
        (Some(n), Some(t), _) if n != t => {
            return Err(bad(format!("num_examples = {n} and total = {t} disagree")));
        }
        (Some(n), _, _) => n,
        (None, Some(t), Mode::Evaluate) => t,
        _ => return Err(bad("\"num_examples\" is missing".into())),
    };
    if mode == Mode::Train && num_examples == 0 {
        return Err(bad(
            "num_examples must be above 0 for train (it weights the update)".into(),
        ));
    }
    if let Some(l) = raw.loss
        && !l.is_finite()
    {
        return Err(bad(format!("loss is {l}, not a finite number")));
    }
    let correct = match (mode, raw.correct) {
        (Mode::Evaluate, None) => return Err(bad("\"correct\" is missing".into())),
        (Mode::Evaluate, Some(c)) if c > num_examples => {
            return Err(bad(format!(
                "correct = {c} is more than the {num_examples} examples"
            )));
        }
        (_, c) => c.unwrap_or(0),
    };
    Ok(Metrics {
        num_examples,
        loss: raw.loss,
        correct,
    })
}
