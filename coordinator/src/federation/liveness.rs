//! Noticing a site that left mid-round in seconds rather than at the stage
//! deadline. The gRPC layer hands each site a [`TaskStream`]; when it is
//! dropped (the site hung up, its process died, the connection broke) the
//! federation records the member as lost at `now`. If the site opens a new
//! stream within `secagg.reconnect_grace_secs` nothing changes; otherwise the
//! driver tells the machine the member has gone
//! ([`ActiveRound::expire_lost`](super::round::ActiveRound::expire_lost)), and
//! a stage whose remaining members have all gone closes at once. A stage that
//! waits for nobody but lost members, no more of them (with the round's
//! earlier dropouts) than ⌊δ·n⌋, stops waiting for them without the grace.
//!
//! ```text
//! stream dropped ─▶ lost[m] = now ──(reopened)──▶ removed
//!                        ├──(now ≥ lost + grace, driver wake-up)──▶ machine.handle_member_gone(m)
//!                        └──(only ≤ ⌊δ·n⌋ lost members awaited)──▶ machine.handle_member_gone(m)
//! ```

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use confide_proto::task_parts::Reassembly;
use confide_proto::v1 as pb;
use tokio::sync::mpsc;
use tracing::{error, info};

use super::registry::SharedTask;
use super::{Federation, clock};

/// A site's task stream as served to it; tells the federation when it ends.
#[derive(Debug)]
pub struct TaskStream {
    rx: mpsc::UnboundedReceiver<SharedTask>,
    fed: Weak<Federation>,
    site: String,
    stream: u64,
    /// The task being sent and the number of its next stream message.
    current: Option<(SharedTask, usize)>,
    /// A part was just handed out: gRPC sends it before the next one is
    /// encoded, so the stream's buffer stays at one part.
    flush: bool,
    /// In-process callers' parts, put back together.
    parts: Reassembly,
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
            current: None,
            flush: false,
            parts: Reassembly::default(),
        }
    }

    /// The current task's next stream message, if it has one left; `Err`
    /// (logged) if a task held on disk cannot be read back: the stream then
    /// ends, and the site gets the task again when it reconnects.
    fn next_part(&mut self) -> Option<Result<pb::Task, ()>> {
        let (t, i) = self.current.as_mut()?;
        let item = t.task.part(*i);
        *i += 1;
        match item {
            Some(Ok(p)) => Some(Ok(p)),
            Some(Err(e)) => {
                error!(site = %self.site, error = %e, "a task could not be sent; ending the site's task stream");
                self.current = None;
                Some(Err(()))
            }
            None => {
                self.current = None;
                None
            }
        }
    }

    /// The next stream message: a whole task or one part of a large one.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<pb::Task>> {
        loop {
            if let Some(item) = self.next_part() {
                return Poll::Ready(item.ok());
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(t) => self.current = Some((t, 0)),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Parts put back together for in-process callers, which see whole
    /// tasks as a site does; a broken reassembly (a bug) ends the stream.
    fn reassemble(&mut self, item: pb::Task) -> Option<Option<pb::Task>> {
        match self.parts.push(item) {
            Ok(t) => Some(t),
            Err(e) => {
                error!(site = %self.site, error = %e, "task parts did not reassemble");
                None
            }
        }
    }

    /// The next task (for in-process callers such as tests).
    pub async fn recv(&mut self) -> Option<pb::Task> {
        loop {
            let item = std::future::poll_fn(|cx| self.poll_item(cx)).await?;
            if let Some(t) = self.reassemble(item)? {
                return Some(t);
            }
        }
    }

    /// The next task if one is queued.
    pub fn try_recv(&mut self) -> Result<pb::Task, mpsc::error::TryRecvError> {
        loop {
            let item = match self.next_part() {
                Some(Ok(item)) => item,
                Some(Err(())) => return Err(mpsc::error::TryRecvError::Disconnected),
                None => {
                    self.current = Some((self.rx.try_recv()?, 0));
                    continue;
                }
            };
            match self.reassemble(item) {
                Some(Some(t)) => return Ok(t),
                Some(None) => {}
                None => return Err(mpsc::error::TryRecvError::Disconnected),
            }
        }
    }
}

impl tokio_stream::Stream for TaskStream {
    type Item = pb::Task;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::Task>> {
        if std::mem::take(&mut self.flush) {
            // gRPC encodes every message that is ready into one buffer
            // before it sends; pending once makes it send this part alone.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let item = ready!(self.poll_item(cx));
        self.flush = matches!(&item, Some(t) if matches!(t.kind, Some(pb::task::Kind::Part(_))));
        Poll::Ready(item)
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
