//! The one runtime that drives `object_store` for the whole process (the
//! checkpoint backend and the lease share its HTTP clients), and the bridge
//! that runs a future on it from synchronous code.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::CoordinatorError;

/// The runtime that drives `object_store` for every object-storage store of
/// the process; built on first use and never dropped (a runtime must not be
/// dropped inside an async context).
pub(crate) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, CoordinatorError> {
    // Built inside `get_or_init`, so that no thread ever builds a second one
    // only to drop it (possibly inside an async context, which panics).
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("confide-object-store")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| CoordinatorError::Checkpoint(format!("object-store runtime: {e}")))
}

/// Run `f` to completion on [`io_runtime`], from a scoped thread so that the
/// caller may itself be inside a runtime.
pub(crate) fn block_on<T: Send>(
    f: impl Future<Output = Result<T, CoordinatorError>> + Send,
) -> Result<T, CoordinatorError> {
    let rt = io_runtime()?;
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f)).join().unwrap_or_else(|_| {
            Err(CoordinatorError::Checkpoint(
                "object-store I/O panicked".into(),
            ))
        })
    })
}

/// Run `f` on [`io_runtime`] from async code of another runtime: the
/// object store's connections live on that runtime, so its futures are
/// polled there and only the result crosses over.
pub(crate) async fn on_io<T: Send + 'static>(
    f: impl Future<Output = Result<T, CoordinatorError>> + Send + 'static,
) -> Result<T, CoordinatorError> {
    io_runtime()?
        .spawn(f)
        .await
        .map_err(|e| CoordinatorError::Checkpoint(format!("object-store task: {e}")))?
}
