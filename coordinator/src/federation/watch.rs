//! What the progress display ([`crate::progress`]) shows of a federation:
//! read from its state at a steady pace and never changing it, so the
//! driver's logic knows nothing of it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Federation;
use crate::progress::{self, Mode, RoundState, ServeDisplay, ServeState};

/// Bars are redrawn this often.
const BAR_EVERY: Duration = Duration::from_millis(200);
/// The state is looked at this often for log lines (which the display
/// rate-limits further).
const LOG_POLL: Duration = Duration::from_secs(1);

impl Federation {
    /// What the federation is doing now, for the progress display.
    pub fn serve_state(&self) -> ServeState {
        let g = self.lock();
        ServeState {
            connected: g.registry.connected_count(),
            min_sites: self.settings.min_sites,
            completed: g.completed,
            rounds: self.settings.rounds,
            round: g.round.as_ref().map(|r| RoundState {
                id: r.id,
                kind: r.kind.name(),
                stage: r.machine.stage().to_string(),
                answered: r.stage_members().saturating_sub(r.machine.pending().len()),
                expected: r.stage_members(),
            }),
        }
    }
}

/// Shows a federation's progress until dropped, which clears the bars.
#[derive(Debug)]
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
    display: Arc<Mutex<ServeDisplay>>,
}

impl Watch {
    /// Starts showing `fed`'s progress; `None` when progress is off (the
    /// library's default: only the `confide` binary turns it on).
    pub fn start(fed: &Arc<Federation>) -> Option<Watch> {
        let display = Arc::new(Mutex::new(ServeDisplay::start(fed.settings.rounds)?));
        let every = match progress::mode() {
            Mode::Bar => BAR_EVERY,
            Mode::Log | Mode::Off => LOG_POLL,
        };
        let (fed, shown) = (fed.clone(), display.clone());
        let task = tokio::spawn(async move {
            loop {
                let state = fed.serve_state();
                lock(&shown).show(&state, Instant::now());
                tokio::time::sleep(every).await;
            }
        });
        Some(Watch { task, display })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
        // Cleared now, not whenever the runtime drops the aborted task: the
        // caller prints its report next.
        lock(&self.display).clear();
    }
}

/// A poisoned lock only means a display update panicked; it can still be cleared.
fn lock(d: &Mutex<ServeDisplay>) -> MutexGuard<'_, ServeDisplay> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}
