//! Noticing a site that left mid-round in seconds rather than at the stage
//! deadline. The gRPC layer hands each site a [`TaskStream`]; when it is
//! dropped (the site hung up, its process died, the connection broke) the
//! federation records the member as lost at `now`. If the site opens a new
//! stream within `secagg.reconnect_grace_secs` nothing changes; otherwise the
//! driver tells the machine the member has gone
//! ([`ActiveRound::expire_lost`](super::round::ActiveRound::expire_lost)), and
//! a stage whose remaining members have all gone closes at once.
//!
//! ```text
//! stream dropped ─▶ lost[m] = now ──(reopened)──▶ removed
//!                        └──(now ≥ lost + grace, driver wake-up)──▶ machine.handle_member_gone(m)
//! ```

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use confide_proto::v1 as pb;
use tokio::sync::mpsc;
use tracing::info;

use super::registry::SharedTask;
use super::{Federation, clock};

/// A site's task stream as served to it; tells the federation when it ends.
#[derive(Debug)]
pub struct TaskStream {
    rx: mpsc::UnboundedReceiver<SharedTask>,
    fed: Weak<Federation>,
    site: String,
    stream: u64,
}

impl TaskStream {
    pub(super) fn new(
        rx: mpsc::UnboundedReceiver<SharedTask>,
        fed: &Arc<Federation>,
        site: String,
        stream: u64,
    ) -> Self {
        TaskStream {
            rx,
            fed: Arc::downgrade(fed),
            site,
            stream,
        }
    }
}

impl TaskStream {
    /// The next task (for in-process callers such as tests).
    pub async fn recv(&mut self) -> Option<pb::Task> {
        self.rx.recv().await.map(Arc::unwrap_or_clone)
    }

    /// The next task if one is queued.
    pub fn try_recv(&mut self) -> Result<pb::Task, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(Arc::unwrap_or_clone)
    }
}

impl tokio_stream::Stream for TaskStream {
    type Item = pb::Task;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::Task>> {
        // The owned copy lives only until gRPC has encoded it.
        self.rx.poll_recv(cx).map(|t| t.map(Arc::unwrap_or_clone))
    }
}

impl Drop for TaskStream {
    fn drop(&mut self) {
        // Closed first, so the registry already counts the site as gone.
        self.rx.close();
        if let Some(fed) = self.fed.upgrade() {
            fed.stream_closed(&self.site, self.stream);
            fed.refresh_connected();
        }
    }
}

impl Federation {
    /// `site`'s task stream number `stream` ended. Only its current stream
    /// counts, and only while it is in the active round's cohort.
    fn stream_closed(&self, site: &str, stream: u64) {
        let now = clock();
        let mut g = self.lock();
        let Some(member) = g.registry.is_current_stream(site, stream) else {
            return;
        };
        if let Some(r) = g.round.as_mut()
            && r.names.contains_key(&member)
            && r.result.is_none()
        {
            info!(
                site,
                round = r.id,
                grace_secs = self.settings.secagg.reconnect_grace_secs,
                "task stream closed mid-round; the round stops waiting for the site unless it comes back within the grace"
            );
            r.lost.insert(member, now);
            drop(g);
            self.wake.notify_one();
        }
    }
}
