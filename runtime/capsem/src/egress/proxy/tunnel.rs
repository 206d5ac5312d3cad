//! Joins two upgraded streams (a WebSocket after its `101`) and counts the bytes each way, also
//! when the tunnel ends with an error, so the session log has them either way.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes carried by [`join`], each way.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    /// Guest → upstream.
    pub(crate) to_upstream: u64,
    /// Upstream → guest.
    pub(crate) to_guest: u64,
}

/// Copies `guest` ⇄ `upstream` until both directions have ended. An end of stream is passed on
/// as a write shutdown (half-close) and the other direction goes on; an error in either
/// direction ends both. Returns the bytes carried and the first error.
pub(crate) async fn join<G, U>(guest: G, upstream: U) -> (Carried, Option<io::Error>)
where
    G: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut guest_read, mut guest_write) = tokio::io::split(guest);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let to_upstream = pump(&mut guest_read, &mut upstream_write, &up);
    let to_guest = pump(&mut upstream_read, &mut guest_write, &down);
    tokio::pin!(to_upstream, to_guest);
    let error = tokio::select! {
        r = &mut to_upstream => match r { Ok(()) => to_guest.await.err(), Err(e) => Some(e) },
        r = &mut to_guest => match r { Ok(()) => to_upstream.await.err(), Err(e) => Some(e) },
    };
    (Carried { to_upstream: up.load(Ordering::Relaxed), to_guest: down.load(Ordering::Relaxed) }, error)
}

/// One direction: copies until end of stream, then shuts the writer down.
async fn pump<R, W>(from: &mut R, to: &mut W, count: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ways_with_half_close_and_counts() {
        // Buffers larger than what is written at once: each peer writes before it reads.
        let (guest, mut guest_peer) = tokio::io::duplex(4096);
        let (upstream, mut upstream_peer) = tokio::io::duplex(4096);
        let tunnel = tokio::spawn(join(guest, upstream));
        guest_peer.write_all(b"hello upstream").await.unwrap();
        let mut got = [0u8; 14];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello upstream");
        // The guest closes its sending side; upstream still answers, then closes.
        guest_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut got).await.unwrap(), 0, "EOF passed on");
        upstream_peer.write_all(&[7u8; 1000]).await.unwrap();
        drop(upstream_peer);
        let mut back = Vec::new();
        guest_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, vec![7u8; 1000]);
        let (carried, error) = tunnel.await.unwrap();
        assert!(error.is_none(), "{error:?}");
        assert_eq!((carried.to_upstream, carried.to_guest), (14, 1000));
    }

    #[tokio::test]
    async fn an_error_one_way_ends_both_and_keeps_the_counts() {
        let (guest, mut guest_peer) = tokio::io::duplex(64);
        let (upstream, upstream_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(join(guest, upstream));
        guest_peer.write_all(b"abc").await.unwrap();
        // Upstream vanishes without reading: writing to it fails (broken pipe), and the tunnel
        // ends although the guest never closed.
        drop(upstream_peer);
        guest_peer.write_all(b"more").await.unwrap();
        let (carried, error) = tokio::time::timeout(std::time::Duration::from_secs(5), tunnel).await.unwrap().unwrap();
        assert!(error.is_some());
        assert!(carried.to_upstream <= 7 && carried.to_guest == 0, "{carried:?}");
    }
}
