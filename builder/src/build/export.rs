//! The container's filesystem, streamed from the engine into the squashfs writer.
//!
//! The export is an async byte stream; [`crate::rootfs::tar_to_squashfs`] is a blocking reader
//! that uses every core. The writer runs on the blocking pool and reads through
//! [`ChannelReader`], fed chunk by chunk from the stream over a bounded channel, so at most a few
//! MiB of tar are in flight and no tar ever touches the disk. If the engine's stream breaks, the
//! reader sees an I/O error and the writer removes its temporary file; the engine's error is the
//! one reported.

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::BuildError;
use crate::engine::{Engine, Progress};
use crate::rootfs::{self, Report, SquashOptions};

/// Chunks in flight between the engine and the writer.
const CHANNEL_CHUNKS: usize = 32;

/// A blocking [`Read`] over chunks sent from async code.
#[derive(Debug)]
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self { rx, current: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Exports `container` into a squashfs image at `out`.
pub(super) async fn container_to_squashfs(
    engine: &Engine,
    container: &str,
    out: PathBuf,
    options: SquashOptions,
    progress: &mut Progress,
) -> Result<Report, BuildError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let target = out.clone();
    let writer =
        tokio::task::spawn_blocking(move || rootfs::tar_to_squashfs(ChannelReader::new(rx), &target, &options));
    let mut stream = engine.export_container(container);
    let mut received: u64 = 0;
    let mut engine_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                received += chunk.len() as u64;
                progress.status(&format!("export: {} MiB of the container filesystem received", received >> 20));
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the writer stopped reading: it finished the tar, or failed
                }
            }
            Err(e) => {
                let _ = tx.send(Err(io::Error::other("the engine's export stream broke"))).await;
                engine_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    drop(stream);
    let written = match writer.await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => {
            return Err(BuildError::Io {
                op: "waiting for the squashfs writer",
                path: out,
                source: io::Error::other(join),
            });
        }
    };
    progress.message(&format!("export: {} MiB of tar read", received >> 20));
    if let Some(e) = engine_error {
        return Err(engine.with_data_root(e).await.into());
    }
    written.map_err(|source| BuildError::from_rootfs(out, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_concatenates_chunks_and_passes_errors_on() {
        let (tx, rx) = mpsc::channel(4);
        let feeder = std::thread::spawn(move || {
            for part in [&b"hello "[..], b"", b"wor", b"ld"] {
                tx.blocking_send(Ok(Bytes::copy_from_slice(part))).unwrap();
            }
        });
        let mut text = String::new();
        ChannelReader::new(rx).read_to_string(&mut text).unwrap();
        feeder.join().unwrap();
        assert_eq!(text, "hello world");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"ab"))).unwrap();
        tx.try_send(Err(io::Error::other("broken"))).unwrap();
        let mut r = ChannelReader::new(rx);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert_eq!(r.read(&mut buf).unwrap_err().to_string(), "broken");
    }
}
