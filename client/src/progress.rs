//! Progress of a site's long transfers, the model download and the masked
//! upload: a byte bar on a terminal, a plain log line at most every
//! [`LOG_EVERY`] and one at the end otherwise (containers, CI), nothing when
//! turned off.
//!
//! The choice is made once, by [`init`] (the `confide-site` daemon calls it
//! at start); a program embedding the library that never calls it shows no
//! progress. `CONFIDE_PROGRESS` ([`ENV`]) overrides it: `bar`, `log`, `off`
//! or `auto` (a bar when standard error is a terminal, log lines when not).
//!
//! Bars draw on standard error; log lines go to standard output through
//! [`Stdout`], which lifts the bars while a line is written so neither
//! garbles the other. The coordinator has a twin of the mode choice
//! (`coordinator/src/progress.rs`): thirty lines do not earn a shared crate,
//! and `proto` is the wire contract. A leaf module: it uses nothing of the
//! crate's.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

/// The environment variable that overrides the choice.
pub const ENV: &str = "CONFIDE_PROGRESS";
/// Log mode writes at most one line per transfer this often (and a last one).
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bars on standard error (drawn only where it is a terminal).
    Bar,
    /// Plain periodic log lines.
    Log,
    /// Nothing.
    Off,
}

/// A `CONFIDE_PROGRESS` value that is none of the accepted ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{ENV}={0:?} is not one of bar, log, off, auto")]
pub struct ModeError(pub String);

impl Mode {
    /// The mode for the variable's value `var` when standard error is (or
    /// is not) a `terminal`.
    pub fn choose(var: Option<&str>, terminal: bool) -> Result<Mode, ModeError> {
        let auto = if terminal { Mode::Bar } else { Mode::Log };
        let Some(v) = var else {
            return Ok(auto);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(auto),
            "bar" => Ok(Mode::Bar),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            _ => Err(ModeError(v.to_string())),
        }
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();
/// Where bars are drawn, made by [`init`] in bar mode only.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Decides the mode from [`ENV`] and standard error, once per process (later
/// calls return the first decision). An unusable value is returned as the
/// error, for the caller to report, and the automatic choice is kept.
pub fn init() -> Result<Mode, ModeError> {
    let terminal = io::stderr().is_terminal();
    let var = std::env::var(ENV).ok();
    let chosen = Mode::choose(var.as_deref(), terminal);
    let mode = *MODE.get_or_init(|| {
        let m = chosen
            .clone()
            .unwrap_or(if terminal { Mode::Bar } else { Mode::Log });
        if m == Mode::Bar {
            let _ = BARS.set(MultiProgress::new());
        }
        m
    });
    chosen.map(|_| mode)
}

/// The mode [`init`] chose; [`Mode::Off`] if it was never called.
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::Off)
}

/// Runs `f` (which writes to the terminal) with the bars lifted.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(bars) => bars.suspend(f),
        None => f(),
    }
}

/// Standard output for the log: each write lifts the bars first. Give
/// `progress::Stdout::default` to `tracing_subscriber`'s `with_writer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        suspend(|| io::stdout().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // The log writes each line whole: keep it whole under one suspend.
        suspend(|| io::stdout().lock().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// The log lines of one transfer, rate-limited; pure in `now`.
#[derive(Debug)]
pub struct TransferLog {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl TransferLog {
    /// A transfer of `total` bytes (0: not known yet) called `label`, starting at `now`.
    pub fn new(label: impl Into<String>, total: u64, now: Instant, every: Duration) -> Self {
        TransferLog {
            label: label.into(),
            total,
            done: 0,
            started: now,
            last: now,
            every,
        }
    }

    /// The total, once known.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// `bytes` more done by `now`: a line if the last one (or the start) is
    /// at least `every` ago.
    pub fn advance(&mut self, bytes: u64, now: Instant) -> Option<String> {
        self.done = self.done.saturating_add(bytes);
        if now.saturating_duration_since(self.last) < self.every {
            return None;
        }
        self.last = now;
        Some(self.line(now, false))
    }

    /// The closing line.
    pub fn finish(&mut self, now: Instant) -> String {
        self.line(now, true)
    }

    fn line(&self, now: Instant, last: bool) -> String {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let share = if self.total > 0 {
            format!(" ({:.0} %)", self.done as f64 * 100.0 / self.total as f64)
        } else {
            String::new()
        };
        format!(
            "{}: {}{} of {}{share}, {}/s, {secs:.1} s",
            self.label,
            if last { "done, " } else { "" },
            HumanBytes(self.done),
            HumanBytes(self.total),
            HumanBytes(rate as u64),
        )
    }
}

/// One transfer's progress in the chosen mode; the bar is cleared when
/// it is dropped, finished or not (an error mid-transfer).
#[derive(Debug)]
pub struct Transfer {
    bar: Option<ProgressBar>,
    log: Option<TransferLog>,
}

impl Transfer {
    /// A transfer of `total` bytes (0: not known yet), e.g. `"round 3 model download"`.
    pub fn start(label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        match (mode(), BARS.get()) {
            (Mode::Bar, Some(bars)) => {
                // No length yet draws an empty bar, not a full one of 0 bytes.
                let bar = bars.add(if total > 0 {
                    ProgressBar::new(total)
                } else {
                    ProgressBar::no_length()
                });
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(label);
                Transfer {
                    bar: Some(bar),
                    log: None,
                }
            }
            (Mode::Log, _) => Transfer {
                bar: None,
                log: Some(TransferLog::new(label, total, Instant::now(), LOG_EVERY)),
            },
            _ => Transfer {
                bar: None,
                log: None,
            },
        }
    }

    /// The total, once known (a download learns it from the first chunk).
    pub fn set_total(&mut self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
        if let Some(l) = &mut self.log {
            l.set_total(total);
        }
    }

    /// `bytes` more done.
    pub fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
        if let Some(line) = self
            .log
            .as_mut()
            .and_then(|l| l.advance(bytes, Instant::now()))
        {
            tracing::info!("{line}");
        }
    }

    /// The transfer completed: the closing log line (once), and the bar goes.
    pub fn finish(&mut self) {
        if let Some(mut l) = self.log.take() {
            tracing::info!("{}", l.finish(Instant::now()));
        }
        self.clear();
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            if let Some(bars) = BARS.get() {
                bars.remove(&b);
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_terminal_unless_overridden() {
        assert_eq!(Mode::choose(None, true), Ok(Mode::Bar));
        assert_eq!(Mode::choose(None, false), Ok(Mode::Log));
        assert_eq!(Mode::choose(Some("auto"), false), Ok(Mode::Log));
        assert_eq!(Mode::choose(Some(""), true), Ok(Mode::Bar));
        assert_eq!(Mode::choose(Some("log"), true), Ok(Mode::Log));
        assert_eq!(Mode::choose(Some(" OFF "), true), Ok(Mode::Off));
        assert_eq!(Mode::choose(Some("bar"), false), Ok(Mode::Bar));
        let e = Mode::choose(Some("fancy"), true);
        assert_eq!(e, Err(ModeError("fancy".into())));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("CONFIDE_PROGRESS") && msg.contains("fancy"),
            "{msg}"
        );
    }

    #[test]
    fn log_lines_come_at_most_every_interval_and_at_the_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = TransferLog::new("round 3 model download", 0, t0, Duration::from_secs(5));
        log.set_total(10 << 20);
        let mut lines = Vec::new();
        // One MiB per second for ten seconds, in ten chunks per second.
        for i in 1..=100u64 {
            if let Some(l) = log.advance((1 << 20) / 10, at(i * 100)) {
                lines.push((i, l));
            }
        }
        let due: Vec<u64> = lines.iter().map(|(i, _)| *i).collect();
        assert_eq!(due, [50, 100], "one line per 5 s of the 10 s");
        let (_, first) = &lines[0];
        assert!(first.starts_with("round 3 model download: "), "{first}");
        assert!(first.contains("of 10.00 MiB"), "{first}");
        assert!(first.contains("(50 %)"), "{first}");
        let end = log.finish(at(10_050));
        assert!(end.contains("done") && end.contains("(100 %)"), "{end}");
        assert!(end.contains("/s"), "{end}");
    }

    #[test]
    fn a_short_transfer_logs_only_its_closing_line() {
        let t0 = Instant::now();
        let mut log = TransferLog::new("round 1 masked upload", 300, t0, LOG_EVERY);
        assert_eq!(log.advance(100, t0 + Duration::from_millis(10)), None);
        assert_eq!(log.advance(200, t0 + Duration::from_millis(20)), None);
        let end = log.finish(t0 + Duration::from_millis(20));
        assert!(end.contains("300 B") && end.contains("(100 %)"), "{end}");
    }

    #[test]
    fn without_init_nothing_is_shown() {
        // No test calls init: the library's default is silence.
        assert_eq!(mode(), Mode::Off);
        let mut t = Transfer::start("x", 10);
        t.advance(10);
        assert!(t.bar.is_none() && t.log.is_none());
        t.finish();
    }
}
