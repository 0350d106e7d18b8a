//! `confide bench --rtt-ms`: a TCP relay on loopback that holds every byte
//! for half the round-trip time in each direction, so the bench shows what
//! a site across clouds sees — flow-control windows and round trips, not
//! loopback's microseconds. Bandwidth is not limited: the delay is
//! propagation only, as on a long, fat link.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read at once; one in-flight entry of the delay line.
const READ_BYTES: usize = 64 << 10;
/// Entries in flight per direction (4 MiB): the link's "buffer", which
/// pushes back on the sender like a full path would.
const IN_FLIGHT: usize = 64;

/// Starts the relay towards `target`; sites connect to the returned address.
/// It runs until the runtime ends.
pub async fn relay(target: SocketAddr, rtt: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let one_way = rtt / 2;
    tokio::spawn(async move {
        loop {
            // Out of descriptors with a thousand sites, say: the sites
            // retry, so the relay waits and accepts again.
            let inbound = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("bench relay: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(delay_line(ri, wo, one_way));
                tokio::spawn(delay_line(ro, wi, one_way));
            });
        }
    });
    Ok(addr)
}

/// Copies `from` to `to`, each read delivered `delay` after it was read.
/// Closes `to`'s write half when `from` ends.
async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; READ_BYTES];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_whole_and_late() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let rtt = Duration::from_millis(40);
        let at = relay(target, rtt).await.unwrap();
        let mut c = TcpStream::connect(at).await.unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        c.write_all(&sent).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        echo.await.unwrap();
        assert_eq!(back, sent);
        // There and back through the relay: at least one round trip.
        assert!(started.elapsed() >= rtt, "{:?}", started.elapsed());
    }
}
