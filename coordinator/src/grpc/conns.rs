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
//! A connection is closed by shutting down a duplicate of its socket: the
//! TLS layer then reads end of stream and hyper drops the connection with
//! all its streams, as if the peer had hung up.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;
use tonic::transport::server::Connected;
use tracing::warn;

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
    next: AtomicU64,
    open: Mutex<HashMap<Identity, VecDeque<(u64, std::net::TcpStream)>>>,
}

impl PerIdentity {
    /// At most `cap` (at least 1) connections per certificate name, and
    /// [`ANONYMOUS`] without a certificate; closings are counted in
    /// `metrics`.
    pub(super) fn new(cap: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(PerIdentity {
            cap: cap.max(1),
            metrics,
            next: AtomicU64::new(0),
            open: Mutex::default(),
        })
    }

    /// Count a new connection of `who`; `closer` is a duplicate of its
    /// socket, shut down if the connection is evicted. Evicts `who`'s
    /// oldest connections beyond the cap. The connection counts until the
    /// returned slot is dropped.
    pub(super) fn admit(self: &Arc<Self>, who: Identity, closer: std::net::TcpStream) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let cap = if who.is_some() { self.cap } else { ANONYMOUS };
        let queue = open.entry(who.clone()).or_default();
        while queue.len() >= cap {
            let Some((_, old)) = queue.pop_front() else {
                break;
            };
            warn!(
                identity = who.as_deref().unwrap_or("(no client certificate)"),
                cap,
                "connection over the limit per identity (limits.max_connections_per_site; \
                 64 without a certificate); closing this identity's oldest"
            );
            // Already closed by the peer: nothing left to do.
            let _ = old.shutdown(std::net::Shutdown::Both);
            if let Some(m) = &self.metrics {
                m.connection_over_limit();
            }
        }
        queue.push_back((id, closer));
        Slot {
            registry: self.clone(),
            who,
            id,
        }
    }

    /// Connections `who` holds now.
    #[cfg(test)]
    fn count(&self, who: &Identity) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(who).map_or(0, VecDeque::len)
    }
}

/// One counted connection; dropping it frees its place (and the duplicate
/// socket).
#[derive(Debug)]
pub(super) struct Slot {
    registry: Arc<PerIdentity>,
    who: Identity,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = open.get_mut(&self.who) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                open.remove(&self.who);
            }
        }
    }
}

/// A connection that counts against its identity while it is open.
#[derive(Debug)]
pub(super) struct Counted<S> {
    inner: S,
    _slot: Slot,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, slot: Slot) -> Self {
        Counted { inner, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
    use std::io::Read;

    /// A connected pair of std sockets on loopback: (ours, the peer's).
    fn pair() -> io::Result<(std::net::TcpStream, std::net::TcpStream)> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let c = std::net::TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        Ok((s, c))
    }

    fn closed(peer: &mut std::net::TcpStream) -> io::Result<bool> {
        peer.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        match peer.read(&mut [0u8; 16]) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Ok(false)
            }
            Err(_) => Ok(true),
        }
    }

    #[test]
    fn the_oldest_connection_over_the_cap_is_closed_and_others_are_untouched() -> io::Result<()> {
        let metrics = Arc::new(Metrics::new(&crate::settings::Settings::default()));
        let reg = PerIdentity::new(2, Some(metrics.clone()));
        let a = Some("a".to_string());
        let b = Some("b".to_string());
        let mut peers = Vec::new();
        let mut slots = Vec::new();
        for who in [&a, &a, &b, &None] {
            let (ours, peer) = pair()?;
            slots.push(reg.admit(who.clone(), ours));
            peers.push(peer);
        }
        assert_eq!((reg.count(&a), reg.count(&b), reg.count(&None)), (2, 1, 1));
        // A third connection of "a" closes a's first, not its second, not b's.
        let (ours, mut third) = pair()?;
        slots.push(reg.admit(a.clone(), ours));
        assert_eq!(reg.count(&a), 2);
        assert!(closed(&mut peers[0])?, "a's oldest connection stays open");
        let text = metrics.encode().map_err(io::Error::other)?;
        assert!(
            text.lines()
                .any(|l| l == "confide_connections_closed_over_limit_total 1"),
            "{text}"
        );
        for (i, p) in peers.iter_mut().enumerate().skip(1) {
            assert!(!closed(p)?, "connection {i} was closed");
        }
        assert!(!closed(&mut third)?);
        // Connections without a certificate have a count of their own.
        let mut anon = Vec::new();
        for _ in 1..ANONYMOUS {
            let (ours, peer) = pair()?;
            anon.push((reg.admit(None, ours), peer));
        }
        assert_eq!(reg.count(&None), ANONYMOUS);
        assert!(
            !closed(&mut peers[3])?,
            "the first anonymous connection was closed"
        );
        let (ours, peer) = pair()?;
        anon.push((reg.admit(None, ours), peer));
        assert!(
            closed(&mut peers[3])?,
            "anonymous connections went over their count"
        );
        drop(anon);
        // The evicted connection's slot goes away without touching the others.
        drop(slots.remove(0));
        assert_eq!(reg.count(&a), 2);
        // Dropping a slot frees its place and closes our duplicate socket.
        drop(slots.remove(0));
        assert_eq!(reg.count(&a), 1);
        assert!(
            closed(&mut peers[1])?,
            "a dropped slot kept its socket open"
        );
        drop(slots);
        assert_eq!((reg.count(&a), reg.count(&b), reg.count(&None)), (0, 0, 0));
        assert!(reg.open.lock().map(|m| m.is_empty()).unwrap_or(false));
        Ok(())
    }
}
