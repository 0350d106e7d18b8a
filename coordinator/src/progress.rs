//! Progress of the coordinator's long waits (sites joining, each round's
//! stages) and of `confide bench` and `confide demo`: bars on a terminal,
//! plain log lines at most every [`LOG_EVERY`] otherwise (containers, CI),
//! nothing when turned off.
//!
//! The choice is made once, by [`init`] (the `confide` binary calls it for
//! `serve`, `bench` and `demo`); a program using the library that never
//! calls it, such as the tests, shows no progress. `CONFIDE_PROGRESS`
//! ([`ENV`]) overrides it: `bar`, `log`, `off` or `auto` (bars when standard
//! error is a terminal, log lines when not).
//!
//! Bars draw on standard error; log lines go to standard output through
//! [`Stdout`], which lifts the bars while a line is written. The site crate
//! has a twin of the mode choice (`client/src/progress.rs`): thirty lines do
//! not earn a shared crate, and `proto` is the wire contract. What is shown
//! of a federation is read from its state by `federation/watch.rs`; this
//! module only displays it, and uses nothing of the crate's.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The environment variable that overrides the choice (not a setting:
/// `Settings::load` leaves it alone).
pub const ENV: &str = "CONFIDE_PROGRESS";
/// Log mode writes at most one progress line this often.
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

/// A new bar of `len` steps drawn with `template`, in bar mode only.
pub fn bar(len: u64, template: &str) -> Option<Bar> {
    let bars = BARS.get().filter(|_| mode() == Mode::Bar)?;
    let bar = bars.add(ProgressBar::new(len));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(Bar(bar))
}

/// A bar that leaves the terminal when dropped, on an early error too (a
/// bar left ticking would draw over the error message).
#[derive(Debug)]
pub struct Bar(ProgressBar);

impl std::ops::Deref for Bar {
    type Target = ProgressBar;

    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        if let Some(bars) = BARS.get() {
            bars.remove(&self.0);
        }
    }
}

/// What the coordinator is doing, as the progress display shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeState {
    /// Sites with an open task stream.
    pub connected: usize,
    /// Sites a round needs.
    pub min_sites: usize,
    /// Training rounds completed.
    pub completed: u64,
    /// Training rounds configured.
    pub rounds: u64,
    /// The round in progress.
    pub round: Option<RoundState>,
}

/// The round in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundState {
    /// Round id.
    pub id: u64,
    /// `train`, `statistics` or `evaluate`.
    pub kind: &'static str,
    /// The stage open now.
    pub stage: String,
    /// Members that answered it.
    pub answered: usize,
    /// Members it waits for in all.
    pub expected: usize,
}

impl ServeState {
    /// One line: the round's stage and answers, or the wait for sites.
    pub fn describe(&self) -> String {
        let rounds = format!("{} of {} training rounds done", self.completed, self.rounds);
        match &self.round {
            Some(r) => format!(
                "round {} ({}), stage {}: {} of {} sites answered; {rounds}",
                r.id, r.kind, r.stage, r.answered, r.expected
            ),
            None if self.connected < self.min_sites => format!(
                "waiting for sites: {} connected, {} needed; {rounds}",
                self.connected, self.min_sites
            ),
            None => format!(
                "between rounds, {} sites connected; {rounds}",
                self.connected
            ),
        }
    }
}

/// The log lines of a coordinator's progress: a line when the state
/// changed since the last one and that one is at least `every` old (an idle
/// federation stays quiet). Pure in `now`.
#[derive(Debug)]
pub struct ServeLog {
    every: Duration,
    last: Instant,
    shown: Option<ServeState>,
}

impl ServeLog {
    /// Counting from `now` (the first line comes `every` later at the earliest).
    pub fn new(now: Instant, every: Duration) -> Self {
        ServeLog {
            every,
            last: now,
            shown: None,
        }
    }

    /// The line to log for `state` at `now`, if one is due.
    pub fn observe(&mut self, state: &ServeState, now: Instant) -> Option<String> {
        if self.shown.as_ref() == Some(state)
            || now.saturating_duration_since(self.last) < self.every
        {
            return None;
        }
        self.last = now;
        self.shown = Some(state.clone());
        Some(state.describe())
    }
}

/// The coordinator's progress in the chosen mode: on a terminal a bar of
/// training rounds and one of the current stage (or of sites joining).
#[derive(Debug)]
pub struct ServeDisplay {
    rounds: Option<Bar>,
    stage: Option<Bar>,
    log: Option<ServeLog>,
}

impl ServeDisplay {
    /// In the mode [`init`] chose; `None` when progress is off.
    pub fn start(rounds: u64) -> Option<Self> {
        match mode() {
            Mode::Off => None,
            Mode::Log => Some(ServeDisplay {
                rounds: None,
                stage: None,
                log: Some(ServeLog::new(Instant::now(), LOG_EVERY)),
            }),
            Mode::Bar => Some(ServeDisplay {
                rounds: bar(rounds, "rounds  [{bar:30}] {pos}/{len} {elapsed:>6}"),
                stage: bar(1, "{prefix:7} [{bar:30}] {pos}/{len} {msg}"),
                log: None,
            }),
        }
    }

    /// Shows `state`.
    pub fn show(&mut self, state: &ServeState, now: Instant) {
        if let Some(b) = &self.rounds {
            b.set_length(state.rounds);
            b.set_position(state.completed);
            // The elapsed time moves even when nothing else does.
            b.tick();
        }
        if let Some(b) = &self.stage {
            match &state.round {
                Some(r) => {
                    b.set_prefix("stage");
                    b.set_length(r.expected as u64);
                    b.set_position(r.answered as u64);
                    b.set_message(format!("answered · round {} {}, {}", r.id, r.kind, r.stage));
                }
                None => {
                    b.set_prefix("sites");
                    b.set_length(state.min_sites as u64);
                    b.set_position(state.connected.min(state.min_sites) as u64);
                    b.set_message(if state.connected < state.min_sites {
                        "connected, waiting for more".to_string()
                    } else {
                        format!("needed; {} connected, between rounds", state.connected)
                    });
                }
            }
        }
        if let Some(line) = self.log.as_mut().and_then(|l| l.observe(state, now)) {
            tracing::info!("{line}");
        }
    }

    /// Takes the bars off the terminal; later updates show nothing.
    pub fn clear(&mut self) {
        self.stage = None;
        self.rounds = None;
        self.log = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_terminal_unless_overridden() {
        assert_eq!(Mode::choose(None, true), Ok(Mode::Bar));
        assert_eq!(Mode::choose(None, false), Ok(Mode::Log));
        assert_eq!(Mode::choose(Some("Auto"), true), Ok(Mode::Bar));
        assert_eq!(Mode::choose(Some("log"), true), Ok(Mode::Log));
        assert_eq!(Mode::choose(Some("off"), false), Ok(Mode::Off));
        assert_eq!(Mode::choose(Some("bar"), false), Ok(Mode::Bar));
        let e = Mode::choose(Some("yes"), false);
        assert_eq!(e, Err(ModeError("yes".into())));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("CONFIDE_PROGRESS") && msg.contains("yes"),
            "{msg}"
        );
    }

    fn stage(answered: usize) -> ServeState {
        ServeState {
            connected: 100,
            min_sites: 90,
            completed: 2,
            rounds: 10,
            round: Some(RoundState {
                id: 3,
                kind: "train",
                stage: "masked-input".into(),
                answered,
                expected: 100,
            }),
        }
    }

    #[test]
    fn log_lines_come_at_most_every_interval_and_only_on_change() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = ServeLog::new(t0, Duration::from_secs(5));
        let mut lines = Vec::new();
        // One more site answers every 100 ms for 12 s.
        for i in 1..=120u64 {
            if let Some(l) = log.observe(&stage(i as usize / 2), at(i * 100)) {
                lines.push((i, l));
            }
        }
        let due: Vec<u64> = lines.iter().map(|(i, _)| *i).collect();
        assert_eq!(due, [50, 100]);
        assert_eq!(
            lines[0].1,
            "round 3 (train), stage masked-input: 25 of 100 sites answered; 2 of 10 training rounds done"
        );
        // Nothing changes for a minute: no line.
        let still = stage(60);
        assert!(log.observe(&still, at(20_000)).is_some());
        for s in 21..80 {
            assert_eq!(log.observe(&still, at(s * 1000)), None);
        }
    }

    #[test]
    fn the_wait_for_sites_says_how_many_are_missing() {
        let mut s = ServeState {
            connected: 2,
            min_sites: 3,
            rounds: 30,
            ..Default::default()
        };
        assert_eq!(
            s.describe(),
            "waiting for sites: 2 connected, 3 needed; 0 of 30 training rounds done"
        );
        s.connected = 3;
        assert!(
            s.describe()
                .starts_with("between rounds, 3 sites connected")
        );
    }

    #[test]
    fn without_init_nothing_is_shown() {
        // No test calls init: the library's default is silence.
        assert_eq!(mode(), Mode::Off);
        assert!(ServeDisplay::start(3).is_none());
        assert!(bar(3, "{pos}").is_none());
    }
}
