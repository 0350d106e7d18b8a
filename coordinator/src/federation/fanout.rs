//! A bound on what the coordinator holds of large tasks in transit.
//!
//! Some tasks are large at scale: each site's NeighbourKeys (its neighbours'
//! adverts with certificates, about 150 KiB at a thousand sites) and the
//! unmask request (every survivor-set signature with its certificate, about
//! 600 KiB). gRPC encodes a task whole as soon as its stream is polled, and
//! HTTP/2 keeps the encoded copy until the site's window lets it out, so
//! without a bound the coordinator holds one copy per site at once — a
//! thousand sites that read slowly cost hundreds of MB. Here a task over
//! [`FREE_BYTES`] first takes its size from a budget shared by all streams
//! (`limits.fanout_buffer_mib`), and gives it back when its stream is polled
//! again: HTTP/2 polls a stream for more only once it has sent what it holds.
//! Smaller tasks pass straight through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc};

use super::registry::SharedTask;

/// Tasks up to this many encoded bytes do not wait for the budget.
pub const FREE_BYTES: usize = 64 << 10;

/// The budget, in KiB, shared by every task stream.
#[derive(Debug)]
pub struct FanOutBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
}

impl FanOutBudget {
    /// A budget of `mib` MiB (at least one task always fits: a larger task
    /// takes the whole budget).
    pub fn new(mib: u32) -> Self {
        let total_kib = (mib as usize).max(1) << 10;
        FanOutBudget {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        }
    }

    /// KiB of budget a task of `len` encoded bytes takes (0: it passes).
    fn cost(&self, len: usize) -> usize {
        if len <= FREE_BYTES {
            0
        } else {
            len.div_ceil(1 << 10).min(self.total_kib)
        }
    }

    /// KiB not taken now.
    #[cfg(test)]
    fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }

    /// One stream's gate.
    pub fn gate(self: &Arc<Self>) -> Gate {
        Gate {
            budget: self.clone(),
            waiting: None,
            held: None,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// One task stream's side of the budget: the task waiting for room, and the
/// room held by the task it last handed to the transport.
pub struct Gate {
    budget: Arc<FanOutBudget>,
    waiting: Option<(SharedTask, Acquire)>,
    held: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("waiting", &self.waiting.is_some())
            .field("held_kib", &self.held.as_ref().map(|p| p.num_permits()))
            .finish()
    }
}

impl Gate {
    /// The next task from `rx`, once the budget has room for it.
    pub fn poll_next(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<SharedTask>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<SharedTask>> {
        // Polled again: the transport has sent the last task on, so its
        // room goes back.
        self.held = None;
        if self.waiting.is_none() {
            let Some(task) = ready!(rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let cost = self.budget.cost(prost::Message::encoded_len(&*task));
            if cost == 0 {
                return Poll::Ready(Some(task));
            }
            let acquire = self.budget.kib.clone().acquire_many_owned(cost as u32);
            self.waiting = Some((task, Box::pin(acquire)));
        }
        let Some((_, acquire)) = self.waiting.as_mut() else {
            return Poll::Pending;
        };
        let permit = ready!(acquire.as_mut().poll(cx));
        // The semaphore is never closed, so the permit is always there.
        self.held = permit.ok();
        Poll::Ready(self.waiting.take().map(|(task, _)| task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_proto::v1 as pb;

    fn task(bytes: usize) -> SharedTask {
        Arc::new(pb::Task {
            kind: Some(pb::task::Kind::RoundEnd(pb::RoundEnd {
                message: "x".repeat(bytes),
                ..Default::default()
            })),
        })
    }

    /// Large tasks take their size until their stream is polled again; a
    /// stream that would overrun the budget waits its turn (first come,
    /// first served), and small tasks pass.
    #[tokio::test]
    async fn large_tasks_wait_for_room_and_give_it_back_when_polled_again() {
        let budget = Arc::new(FanOutBudget::new(1));
        let (tx, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        let mut a = budget.gate();
        let mut b = budget.gate();
        let next = |g: &mut Gate, rx: &mut mpsc::UnboundedReceiver<SharedTask>| {
            let waker = std::task::Waker::noop();
            g.poll_next(rx, &mut Context::from_waker(waker))
        };
        for _ in 0..2 {
            let _ = tx.send(task(600 << 10));
        }
        let _ = tx_b.send(task(600 << 10));
        let _ = tx_b.send(task(100));
        // a's first task takes 600 KiB of the 1024.
        assert!(matches!(next(&mut a, &mut rx_a), Poll::Ready(Some(_))));
        assert!(budget.available_kib() <= 1024 - 600);
        // b's does not fit while a holds that.
        assert!(next(&mut b, &mut rx_b).is_pending());
        // a polled again: its room goes to b, who asked first; a's second waits.
        assert!(next(&mut a, &mut rx_a).is_pending());
        assert!(matches!(next(&mut b, &mut rx_b), Poll::Ready(Some(_))));
        // b polled again: its room goes to a; its small task passes at once.
        assert!(matches!(next(&mut b, &mut rx_b), Poll::Ready(Some(_))));
        assert!(matches!(next(&mut a, &mut rx_a), Poll::Ready(Some(_))));
        // a has nothing more: polled, it gives its room back.
        assert!(next(&mut a, &mut rx_a).is_pending());
        assert_eq!(budget.available_kib(), 1024);
        // A task larger than the whole budget still goes, alone.
        let _ = tx.send(task(3 << 20));
        assert!(matches!(next(&mut a, &mut rx_a), Poll::Ready(Some(_))));
        assert_eq!(budget.available_kib(), 0);
        drop(a);
        assert_eq!(budget.available_kib(), 1024);
    }
}
