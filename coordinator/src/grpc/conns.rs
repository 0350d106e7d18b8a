//! Connections counted per identity (`limits.max_connections_per_site`).
//!
//! Every open connection may hold one HTTP/2 receive window of unread data
//! (`limits.receive_window_kib`), so without a count per certificate one
//! enrolled site could open thousands and hold that many windows. An honest
//! site keeps one connection; when an identity opens one more than its cap
//! allows, its *oldest* is closed (the newest wins), so a site that
//! reconnects after a network fault, before the coordinator has noticed its
//! old connection is dead, is never locked out. Connections without a client
//! certificate (health probes, and anyone who can reach the port) share one
//! count of [`ANONYMOUS`]: enough for any monitoring, and a bound on what
//! unauthenticated peers can hold (each RPC of theirs but the health check
//! is refused at once).
//!
//! A connection is closed through its [`Counted`] stream: once flagged, its
//! next read ends the stream (the pending read is woken for it) and writes
//! fail, so hyper drops the connection with all its streams, as if the peer
//! had hung up. No second descriptor per connection.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tracing::warn;

use crate::metrics::Metrics;

/// Connections without a client certificate open at once, together.
pub(super) const ANONYMOUS: usize = 64;

/// Who a connection counts against: a certificate's site (or operator)
/// name, or `None` for connections without a client certificate.
pub(super) type Identity = Option<String>;

/// The open connections of every identity, oldest first.
#[derive(Debug)]
pub(super) struct PerIdentity {
    cap: usize,
    metrics: Option<Arc<Metrics>>,
    open: Mutex<HashMap<Identity, Open>>,
}

/// One identity's connections, oldest first, each by its closer.
type Open = VecDeque<Arc<Closer>>;

impl PerIdentity {
    /// At most `cap` (at least 1) connections per certificate name, and
    /// [`ANONYMOUS`] without a certificate; closings are counted in
    /// `metrics`.
    pub(super) fn new(cap: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(PerIdentity {
            cap: cap.max(1),
            metrics,
            open: Mutex::default(),
        })
    }

    /// Count a new connection of `who`, closing `who`'s oldest beyond the
    /// cap. The connection counts until the returned slot is dropped.
    pub(super) fn admit(self: &Arc<Self>, who: Identity) -> Slot {
        let closer = Arc::new(Closer::default());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let cap = if who.is_some() { self.cap } else { ANONYMOUS };
        let queue = open.entry(who.clone()).or_default();
        while queue.len() >= cap {
            let Some(old) = queue.pop_front() else {
                break;
            };
            warn!(
                identity = who.as_deref().unwrap_or("(no client certificate)"),
                cap,
                "connection over its identity's limit (limits.max_connections_per_site, or \
                 the count without a certificate); closing this identity's oldest"
            );
            old.close();
            if let Some(m) = &self.metrics {
                m.connection_over_limit();
            }
        }
        queue.push_back(closer.clone());
        Slot {
            registry: self.clone(),
            who,
            closer,
        }
    }

    /// Connections `who` holds now.
    #[cfg(test)]
    fn count(&self, who: &Identity) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(who).map_or(0, Open::len)
    }
}

/// The flag that closes one connection, and the task to wake for it.
#[derive(Debug, Default)]
struct Closer {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection is closed; if not, `cx` is woken when it is.
    fn closed_or_wake(&self, cx: &Context<'_>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        {
            let mut w = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // Closed between the first look and the registration: no wake came.
        self.closed.load(Ordering::Acquire)
    }
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
pub(super) struct Slot {
    registry: Arc<PerIdentity>,
    who: Identity,
    closer: Arc<Closer>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = open.get_mut(&self.who) {
            queue.retain(|c| !Arc::ptr_eq(c, &self.closer));
            if queue.is_empty() {
                open.remove(&self.who);
            }
        }
    }
}

/// A connection that counts against its identity while it is open, and
/// ends when its identity goes over the limit.
#[derive(Debug)]
pub(super) struct Counted<S> {
    inner: S,
    slot: Slot,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, slot: Slot) -> Self {
        Counted { inner, slot }
    }
}

fn over_limit() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed: its identity opened more connections than its limit",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Only reads register for the wake-up: a server connection reads
        // first (the client preface), and the waker kept is its task's, which
        // the close then wakes whatever it waits on; writes only look.
        if this.slot.closer.closed_or_wake(cx) {
            // End of stream, as if the peer had hung up.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.closer.is_closed() {
            return Poll::Ready(Err(over_limit()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.closer.is_closed() {
            return Poll::Ready(Err(over_limit()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// tonic reads the peer certificates through the inner stream's info.
impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn closed(slot: &Slot) -> bool {
        slot.closer.is_closed()
    }

    #[test]
    fn the_oldest_connection_over_the_cap_is_closed_and_others_are_untouched() -> io::Result<()> {
        let metrics = Arc::new(Metrics::new(&crate::settings::Settings::default()));
        let reg = PerIdentity::new(2, Some(metrics.clone()));
        let a = Some("a".to_string());
        let b = Some("b".to_string());
        let mut slots: Vec<Slot> = [&a, &a, &b, &None]
            .into_iter()
            .map(|who| reg.admit(who.clone()))
            .collect();
        assert_eq!((reg.count(&a), reg.count(&b), reg.count(&None)), (2, 1, 1));
        // A third connection of "a" closes a's first, not its second, not b's.
        slots.push(reg.admit(a.clone()));
        assert_eq!(reg.count(&a), 2);
        let flags: Vec<bool> = slots.iter().map(closed).collect();
        assert_eq!(flags, [true, false, false, false, false]);
        let text = metrics.encode().map_err(io::Error::other)?;
        assert!(
            text.lines()
                .any(|l| l == "confide_connections_closed_over_limit_total 1"),
            "{text}"
        );
        // Connections without a certificate have a count of their own.
        let mut anon: Vec<Slot> = (1..ANONYMOUS).map(|_| reg.admit(None)).collect();
        assert_eq!(reg.count(&None), ANONYMOUS);
        assert!(
            !closed(&slots[3]),
            "the first anonymous connection was closed"
        );
        anon.push(reg.admit(None));
        assert!(
            closed(&slots[3]),
            "anonymous connections went over their count"
        );
        assert!(!anon.iter().any(closed));
        drop(anon);
        // The closed connection's slot goes away without touching the others.
        drop(slots.remove(0));
        assert_eq!(reg.count(&a), 2);
        // Dropping a slot frees its place.
        drop(slots.remove(0));
        assert_eq!(reg.count(&a), 1);
        drop(slots);
        assert_eq!((reg.count(&a), reg.count(&b), reg.count(&None)), (0, 0, 0));
        assert!(reg.open.lock().map(|m| m.is_empty()).unwrap_or(false));
        Ok(())
    }

    /// A read already waiting on a connection ends when the connection is
    /// closed over the limit; writes fail; a connection under the limit
    /// carries bytes both ways.
    #[tokio::test]
    async fn closing_wakes_the_pending_read_and_ends_the_stream() -> io::Result<()> {
        let reg = PerIdentity::new(1, None);
        let who = Some("a".to_string());
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut conn = Counted::new(ours, reg.admit(who.clone()));
        peer.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        conn.write_all(b"pong").await?;
        peer.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");

        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = conn.read(&mut buf).await?;
            let write = conn.write_all(b"late").await;
            Ok::<_, io::Error>((n, write.map_err(|e| e.kind())))
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the read ended before the close");
        let _newer = reg.admit(who);
        let (n, write) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)??;
        assert_eq!(n, 0, "the closed connection's read did not end the stream");
        assert_eq!(write, Err(io::ErrorKind::ConnectionAborted));
        Ok(())
    }
}
