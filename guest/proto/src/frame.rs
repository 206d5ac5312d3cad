//! Wire framing: each frame is a 4-byte big-endian payload length followed by the payload, the
//! postcard encoding of one [`HostMsg`](crate::HostMsg) or [`GuestMsg`](crate::GuestMsg).
//!
//! This is the host's trust boundary for guest bytes, so the reader never panics and never
//! allocates more than [`MAX_FRAME`] for a frame: a larger declared length is rejected before any
//! buffer is grown. Decoding rejects trailing bytes, so one payload has exactly one meaning.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest payload a frame may carry (1 MiB).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// What can go wrong reading, writing, encoding or decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header declared a payload larger than [`MAX_FRAME`] (nothing was allocated for it).
    #[error("frame declares {len} payload bytes, more than the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// The declared (or, when encoding, the actual) payload length.
        len: u64,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame (header, then payload) needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The payload is not a valid message.
    #[error("undecodable {what} payload: {source}")]
    Decode {
        /// The message type expected (`HostMsg`, `GuestMsg`).
        what: &'static str,
        /// Postcard's reason.
        source: postcard::Error,
    },
    /// The payload decoded but left unread bytes.
    #[error("undecodable {what} payload: {extra} trailing bytes")]
    TrailingBytes {
        /// The message type expected.
        what: &'static str,
        /// Unread bytes.
        extra: usize,
    },
    /// A message could not be encoded.
    #[error("encoding a message: {0}")]
    Encode(postcard::Error),
    /// The underlying stream failed.
    #[error("agent stream I/O: {0}")]
    Io(#[from] io::Error),
}

fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Encodes `msg` as one complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(FrameError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    // `len <= MAX_FRAME` fits in a u32.
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes one payload (without its header) as a `T`, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let what = type_name::<T>();
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(|source| FrameError::Decode { what, source })?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { what, extra: rest.len() });
    }
    Ok(msg)
}

/// Encodes `msg` and writes it as one frame with a single `write_all`, then flushes.
pub fn write_msg<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame's payload into `buf` (replacing its contents). Returns `Ok(false)` on a clean
/// end of stream (before the first header byte).
pub fn read_payload<R: Read + ?Sized>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = fill(r, &mut header)?;
    if got == 0 {
        return Ok(false);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated { expected: HEADER_LEN, got });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    buf.clear();
    buf.resize(len, 0);
    let got = fill(r, buf)?;
    if got < len {
        buf.truncate(got);
        return Err(FrameError::Truncated { expected: HEADER_LEN + len, got: HEADER_LEN + got });
    }
    Ok(true)
}

/// Reads typed messages from a stream, reusing one buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: Vec::new() }
    }

    /// Reads and decodes the next frame; `Ok(None)` on a clean end of stream.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if !read_payload(&mut self.inner, &mut self.buf)? {
            return Ok(None);
        }
        let msg = decode(&self.buf);
        if self.buf.capacity() > 64 * 1024 {
            // Do not keep a 1 MiB buffer around after one large frame.
            self.buf = Vec::new();
        }
        msg.map(Some)
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Cursor;

    use super::*;
    use crate::msg::{BootFile, ExitStatus, GuestMsg, HostMsg, Ready, Stream, WinSize};

    fn samples_host() -> Vec<HostMsg> {
        let env: BTreeMap<String, String> = [("A".into(), "1".into()), ("PATH".into(), "/bin".into())].into();
        vec![
            HostMsg::Configure {
                id: 1,
                env: env.clone(),
                files: vec![BootFile { path: "/etc/x".into(), mode: 0o644, content: b"hi".to_vec(), append: false }],
            },
            HostMsg::Exec {
                id: u32::MAX,
                argv: vec!["sh".into(), "-c".into(), "echo ü".into()],
                env,
                cwd: Some("/tmp".into()),
                stdin: true,
                pty: Some(WinSize { rows: 24, cols: 80 }),
                timeout_ms: Some(200),
            },
            HostMsg::Stdin { id: 3, data: vec![0, 255, 7] },
            HostMsg::CloseStdin { id: 3 },
            HostMsg::Resize { id: 3, size: WinSize { rows: 33, cols: 111 } },
            HostMsg::Signal { id: 3, signal: -9 },
            HostMsg::WriteFile { id: 4, path: "/x".into(), mode: 0o755 },
            HostMsg::FileChunk { id: 4, data: vec![1; 70_000] },
            HostMsg::FileEnd { id: 4 },
            HostMsg::ReadFile { id: 5, path: "/x".into() },
            HostMsg::Shutdown { id: 6 },
        ]
    }

    fn samples_guest() -> Vec<GuestMsg> {
        vec![
            GuestMsg::Ready(Ready {
                protocol: 1,
                version: "0.1.0".into(),
                kernel_release: "6.1.0".into(),
                uptime_ms: 912,
                init_started_ms: None,
            }),
            GuestMsg::Started { id: 1, pid: 42 },
            GuestMsg::Output { id: 1, stream: Stream::Stderr, data: b"err\n".to_vec() },
            GuestMsg::Exited { id: 1, status: ExitStatus::Signal(9) },
            GuestMsg::Exited { id: 1, status: ExitStatus::TimedOut },
            GuestMsg::StdinAck { id: 1, len: 65536 },
            GuestMsg::FileChunk { id: 2, data: vec![] },
            GuestMsg::FileEnd { id: 2, size: u64::MAX },
            GuestMsg::Ok { id: 3 },
            GuestMsg::Error { id: 4, message: "exec /nope: No such file or directory".into() },
        ]
    }

    #[test]
    fn round_trip_every_variant_through_a_stream() {
        let mut wire = Vec::new();
        for m in samples_host() {
            write_msg(&mut wire, &m).unwrap();
        }
        let mut r = FrameReader::new(Cursor::new(wire));
        for m in samples_host() {
            assert_eq!(r.read::<HostMsg>().unwrap(), Some(m));
        }
        assert!(r.read::<HostMsg>().unwrap().is_none(), "clean EOF after the last frame");

        let mut wire = Vec::new();
        for m in samples_guest() {
            write_msg(&mut wire, &m).unwrap();
        }
        let mut r = FrameReader::new(Cursor::new(wire));
        for m in samples_guest() {
            assert_eq!(r.read::<GuestMsg>().unwrap(), Some(m));
        }
        assert!(r.read::<GuestMsg>().unwrap().is_none());
    }

    #[test]
    fn header_is_big_endian_payload_length() {
        let frame = encode(&HostMsg::Shutdown { id: 6 }).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<HostMsg>(&frame[4..]).unwrap(), HostMsg::Shutdown { id: 6 });
    }

    /// A reader that fails the test if anyone reads past the header: proves the oversize
    /// length is rejected before the payload is read (or a buffer grown for it).
    struct HeaderOnly {
        header: [u8; 4],
        pos: usize,
    }

    impl Read for HeaderOnly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.pos < 4, "payload of an oversize frame was read");
            let n = buf.len().min(4 - self.pos);
            buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversize_length_rejected_before_allocation() {
        for len in [MAX_FRAME as u32 + 1, u32::MAX] {
            let mut r = HeaderOnly { header: len.to_be_bytes(), pos: 0 };
            let mut buf = Vec::new();
            match read_payload(&mut r, &mut buf) {
                Err(FrameError::TooLarge { len: l }) => assert_eq!(l, u64::from(len)),
                other => panic!("expected TooLarge, got {other:?}"),
            }
            assert_eq!(buf.capacity(), 0, "nothing allocated");
        }
        // Exactly MAX_FRAME is allowed.
        let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
        wire.resize(4 + MAX_FRAME, 0);
        let mut buf = Vec::new();
        assert!(read_payload(&mut Cursor::new(wire), &mut buf).unwrap());
        assert_eq!(buf.len(), MAX_FRAME);
    }

    #[test]
    fn encoding_an_oversize_message_fails() {
        let msg = HostMsg::Stdin { id: 1, data: vec![0; MAX_FRAME] };
        assert!(matches!(encode(&msg), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_input_is_an_error_not_eof() {
        let frame = encode(&GuestMsg::Output { id: 9, stream: Stream::Stdout, data: b"hello".to_vec() }).unwrap();
        for cut in 1..frame.len() {
            let mut r = FrameReader::new(Cursor::new(&frame[..cut]));
            match r.read::<GuestMsg>() {
                Err(FrameError::Truncated { expected, got }) => {
                    assert_eq!(got, cut);
                    assert!(expected > got);
                }
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
        assert!(FrameReader::new(Cursor::new(&frame[..0])).read::<GuestMsg>().unwrap().is_none());
    }

    #[test]
    fn garbage_payloads_are_decode_errors() {
        // Variant index out of range.
        assert!(matches!(decode::<GuestMsg>(&[200]), Err(FrameError::Decode { what: "GuestMsg", .. })));
        assert!(matches!(decode::<HostMsg>(&[]), Err(FrameError::Decode { what: "HostMsg", .. })));
        // A Vec length far beyond the payload.
        assert!(decode::<GuestMsg>(&[2, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Invalid UTF-8 in a String.
        assert!(decode::<GuestMsg>(&[8, 1, 2, 0xff, 0xfe]).is_err());
        // Valid message followed by junk.
        let mut payload = encode(&GuestMsg::Ok { id: 1 }).unwrap()[4..].to_vec();
        payload.push(0);
        assert!(matches!(decode::<GuestMsg>(&payload), Err(FrameError::TrailingBytes { extra: 1, .. })));
        // Deterministic pseudo-random garbage never panics.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            let n = (x % 9) as usize;
            let _ = decode::<GuestMsg>(&bytes[..n]);
            let _ = decode::<HostMsg>(&bytes[..n]);
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        struct Flaky<'a>(&'a [u8], bool);
        impl Read for Flaky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(self.0.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let frame = encode(&GuestMsg::Ok { id: 77 }).unwrap();
        let mut r = FrameReader::new(Flaky(&frame, false));
        assert_eq!(r.read::<GuestMsg>().unwrap(), Some(GuestMsg::Ok { id: 77 }));
    }
}
