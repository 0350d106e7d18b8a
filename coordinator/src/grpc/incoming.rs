//! The TLS 1.3 listener: accepts TCP connections, runs each handshake in its
//! own task (bounded in time and in number), and hands the finished
//! `TlsStream`s to tonic, which reads the peer certificates from them
//! (`Request::peer_certs`). A failed handshake is logged and forgotten; it
//! never stops the accept loop. Each finished connection counts against its
//! certificate's name ([`conns`](super::conns)).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::conns::{Counted, Identity, PerIdentity};
use crate::access::PeerCert;

/// A client that has not finished its handshake by then is dropped.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once; further connections wait in the kernel's
/// backlog, so a flood of idle TCP connections cannot exhaust memory.
const MAX_HANDSHAKES: usize = 256;

/// The stream of handshaken connections tonic serves.
pub(super) type Incoming = ReceiverStream<Result<Counted<TlsStream<TcpStream>>, std::io::Error>>;

/// The stream of plain TCP connections tonic serves (insecure mode).
pub(super) type PlainIncoming = ReceiverStream<Result<TcpStream, std::io::Error>>;

/// Start accepting plain TCP on `listener` (shared, so that a standby's
/// server and the active one after it serve the same socket); abort the
/// returned task to stop.
pub(super) fn plain_incoming(listener: Arc<TcpListener>) -> (PlainIncoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, remote)) => {
                    // Small stage messages must not wait out delayed ACKs (~40 ms each).
                    if let Err(e) = tcp.set_nodelay(true) {
                        debug!(remote = %remote, error = %e, "TCP_NODELAY not set");
                    }
                    if tx.send(Ok(tcp)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (ReceiverStream::new(rx), task)
}

/// Start accepting on `listener`, each connection counted in `counts`;
/// abort the returned task to stop (dropping the stream stops it too, at the
/// next connection).
pub(super) fn tls_incoming(
    listener: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    timeout: Duration,
    counts: Arc<PerIdentity>,
) -> (Incoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            if let Err(e) = tcp.set_nodelay(true) {
                debug!(remote = %remote, error = %e, "TCP_NODELAY not set");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let slot = counts.admit(identity(&tls));
                        // The server has stopped when nobody receives.
                        let _ = tx.send(Ok(Counted::new(tls, slot))).await;
                    }
                    // tokio-rustls reports TLS alerts (wrong protocol
                    // version, untrusted certificate) as InvalidData: worth
                    // an operator's attention, unlike probes that hang up.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        warn!(remote = %remote, error = %e, "TLS handshake refused");
                    }
                    Ok(Err(e)) => debug!(remote = %remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(remote = %remote, ?timeout, "TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

/// The name of the connection's client certificate (already verified by
/// the handshake); `None` without one.
fn identity(tls: &TlsStream<TcpStream>) -> Identity {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    PeerCert::from_der(der).map(|p| p.name)
}
