use std::sync::{Arc, Mutex};

use confide_crypto::Stage;

use super::super::tests::{one_round, secure_round};
use super::Federation;

type Hook = Box<dyn FnOnce(&Federation) + Send>;

/// Checks a test wants run, by federation name, while that federation's
/// unmask job is in progress (the job spawned, its outcome not yet back).
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());

/// Called by [`Federation::run_unmask`] in test builds.
pub(super) fn while_unmasking(fed: &Federation) {
    let hook = {
        let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
        let at = hooks
            .iter()
            .position(|(n, _)| *n == fed.settings.federation);
        at.map(|i| hooks.remove(i).1)
    };
    if let Some(hook) = hook {
        hook(fed);
    }
}

/// What the other calls saw while the unmask ran.
#[derive(Debug)]
struct Seen {
    lock_free: bool,
    stage: String,
    completed: u64,
    history: usize,
}

#[tokio::test(start_paused = true)]
async fn other_calls_are_answered_while_the_unmask_runs() -> Result<(), Box<dyn std::error::Error>>
{
    let mut s = one_round(true, 3);
    s.federation = "unmask-off-the-lock".into();
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let hook: Hook = Box::new({
        let seen = seen.clone();
        move |fed: &Federation| {
            // Not blocked: the lock is free while the job runs, and status,
            // history and the connected count (what the health and admin
            // calls read) are answered, showing the round still unmasking.
            let lock_free = fed.inner.try_lock().is_ok();
            let mut got = Seen {
                lock_free,
                stage: String::new(),
                completed: 0,
                history: 0,
            };
            // (A held lock would make these wait for ever.)
            if lock_free {
                (_, got.stage, _, got.completed) = fed.status();
                fed.refresh_connected();
                got.history = fed.history().len();
            }
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
        }
    });
    HOOKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((s.federation.clone(), hook));
    let (report, before, after) = secure_round(s, &["a", "b", "c"], None).await?;
    let seen = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or("the unmask never ran off the lock")?;
    assert!(seen.lock_free, "{seen:?}");
    assert!(seen.stage.ends_with(&Stage::Unmask.to_string()), "{seen:?}");
    assert_eq!((seen.completed, seen.history), (0, 0), "{seen:?}");
    // The outcome came back and the round finished as usual.
    assert_eq!(report.completed_rounds, 1);
    assert!(report.history[0].success, "{}", report.history[0].message);
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b - 0.5).abs() < 1e-3, "{a} vs {b}");
    }
    Ok(())
}
