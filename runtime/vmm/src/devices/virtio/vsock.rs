//! virtio-vsock in userspace, multiplexed onto host Unix sockets (Firecracker's hybrid vsock,
//! the same host protocol as `vhost-device-vsock`, so the runtime's host side is shared with
//! the qemu backend).
//!
//! Owns the stream-socket state machine of virtio 1.x §5.10 for every connection:
//! * guest `connect(2, P)` → REQUEST → we connect to `<uds_path>_P` → RESPONSE (or RST);
//! * a host process connects to `<uds_path>` and writes `CONNECT <P>\n` → REQUEST to the guest →
//!   guest RESPONSE → we answer `OK <local port>\n` on the host stream;
//! * RW data both ways with credit-based flow control (we never send more than the guest's
//!   advertised `buf_alloc - (tx_cnt - fwd_cnt)`, and advertise our own consumption);
//! * SHUTDOWN/RST/EOF tear a connection down.
//!
//! Host sockets are non-blocking; data the host cannot take yet waits in a bounded per
//! connection buffer (beyond our advertised credit the guest is misbehaving and gets RST).

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};

use super::{
    Desc, GuestMem, VIRTIO_F_VERSION_1, VirtioDevice, add_used, device_type, gather, pop_chains, scatter, writable_len,
};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;
/// Operations.
#[allow(missing_docs)]
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
/// Our receive buffer per connection, advertised as `buf_alloc`.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload read from a host socket into one packet.
pub const MAX_PKT_PAYLOAD: usize = 4096;
const RX: usize = 0;
const TX: usize = 1;
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const MAX_PENDING_RX: usize = 256;

/// A vsock packet header (host byte order; serialized little endian).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    #[allow(missing_docs)]
    pub src_cid: u64,
    #[allow(missing_docs)]
    pub dst_cid: u64,
    #[allow(missing_docs)]
    pub src_port: u32,
    #[allow(missing_docs)]
    pub dst_port: u32,
    #[allow(missing_docs)]
    pub len: u32,
    #[allow(missing_docs)]
    pub type_: u16,
    #[allow(missing_docs)]
    pub op: u16,
    #[allow(missing_docs)]
    pub flags: u32,
    #[allow(missing_docs)]
    pub buf_alloc: u32,
    #[allow(missing_docs)]
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Serializes to the wire layout.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire layout (None if short).
    pub fn from_bytes(b: &[u8]) -> Option<Hdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Some(Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated; REQUEST sent, waiting for the guest's RESPONSE.
    AwaitingResponse,
    Established,
    /// We sent SHUTDOWN after host EOF; waiting for the guest's RST.
    Closing,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we sent to the guest.
    tx_cnt: u32,
    /// Bytes of guest data we delivered to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest data the host socket has not accepted yet.
    to_host: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: Vec::new(),
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// (host-side port, guest port).
type Key = (u32, u32);

/// The vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshaking: Vec<(UnixStream, Vec<u8>)>,
    conns: BTreeMap<Key, Conn>,
    to_guest: VecDeque<(Hdr, Vec<u8>)>,
    next_port: u32,
    config: [u8; 8],
}

impl Vsock {
    /// A device for guest `cid`; binds `uds_path` (replacing a stale socket file).
    pub fn new(cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        if cid < 3 || cid > u64::from(u32::MAX) {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("guest CID {cid} is reserved or too large"),
            ));
        }
        if std::fs::symlink_metadata(uds_path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(uds_path)?;
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Vsock {
            cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            handshaking: Vec::new(),
            conns: BTreeMap::new(),
            to_guest: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            config: cid.to_le_bytes(),
        })
    }

    fn reply(&self, key: Key, op: u16, conn: Option<&Conn>) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: conn.map_or(0, |c| c.fwd_cnt),
        }
    }

    fn queue(&mut self, key: Key, op: u16) {
        let h = self.reply(key, op, self.conns.get(&key));
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        self.to_guest.push_back((h, Vec::new()));
    }

    fn rst(&mut self, key: Key) {
        self.conns.remove(&key);
        self.queue(key, op::RST);
    }

    /// Handles one packet from the guest.
    fn handle_guest_packet(&mut self, h: Hdr, payload: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            return; // Not addressed to us: drop (no RST to spoofed sources).
        }
        let key = (h.dst_port, h.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match h.op {
            op::REQUEST => {
                if self.conns.contains_key(&key) {
                    return self.rst(key);
                }
                let path = format!("{}_{}", self.uds_path.display(), h.dst_port);
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                    Ok(s) => {
                        let mut c = Conn::new(s, State::Established);
                        c.peer_buf_alloc = h.buf_alloc;
                        c.peer_fwd_cnt = h.fwd_cnt;
                        self.conns.insert(key, c);
                        self.queue(key, op::RESPONSE);
                    }
                    Err(_) => self.rst(key),
                }
            }
            op::RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == State::AwaitingResponse => {
                    c.state = State::Established;
                    let line = format!("OK {}\n", key.0);
                    if c.stream.write_all(line.as_bytes()).is_err() {
                        self.rst(key);
                    }
                }
                _ => self.rst(key),
            },
            op::RW => {
                let Some(c) = self.conns.get_mut(&key) else { return self.rst(key) };
                if c.state == State::AwaitingResponse || c.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    return self.rst(key);
                }
                c.to_host.extend_from_slice(payload);
                self.flush_to_host(key);
            }
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.queue(key, op::CREDIT_UPDATE);
                } else {
                    self.rst(key);
                }
            }
            op::CREDIT_UPDATE => {
                if !self.conns.contains_key(&key) {
                    self.rst(key);
                }
            }
            op::SHUTDOWN => {
                if self.conns.contains_key(&key) {
                    self.rst(key);
                }
            }
            op::RST => {
                self.conns.remove(&key);
            }
            _ => self.rst(key),
        }
    }

    /// Writes buffered guest data to the host socket; sends a credit update when the guest
    /// may be waiting for room.
    fn flush_to_host(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        while !c.to_host.is_empty() {
            match c.stream.write(&c.to_host) {
                Ok(0) => return self.rst(key),
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.rst(key),
            }
        }
        if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= BUF_ALLOC / 4 {
            self.queue(key, op::CREDIT_UPDATE);
        }
    }

    /// Accepts host connections, completes `CONNECT` handshakes and reads host data.
    fn poll_host(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            if s.set_nonblocking(true).is_ok() {
                self.handshaking.push((s, Vec::new()));
            }
        }
        let mut still = Vec::new();
        for (mut s, mut buf) in std::mem::take(&mut self.handshaking) {
            let mut chunk = [0u8; 64];
            let eof = match s.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    false
                }
                Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted,
            };
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                if !eof && buf.len() < 64 {
                    still.push((s, buf));
                }
                continue;
            };
            let port = std::str::from_utf8(&buf[..nl])
                .ok()
                .and_then(|l| l.strip_prefix("CONNECT "))
                .and_then(|p| p.trim().parse::<u32>().ok());
            let Some(port) = port else { continue }; // malformed: drop the stream
            let local = self.alloc_port();
            let key = (local, port);
            let mut c = Conn::new(s, State::AwaitingResponse);
            c.to_host.clear();
            self.conns.insert(key, c);
            // Bytes after the newline are early data for the guest; keep them for after OK.
            let early = buf[nl + 1..].to_vec();
            let mut h = self.reply(key, op::REQUEST, None);
            h.fwd_cnt = 0;
            self.to_guest.push_back((h, Vec::new()));
            if !early.is_empty() {
                self.handshaking_early(key, early);
            }
        }
        self.handshaking = still;

        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.flush_to_host(key);
            self.read_host(key);
        }
    }

    fn handshaking_early(&mut self, key: Key, early: Vec<u8>) {
        // Delivered as the first RW once established and credit allows (rare in practice).
        let h = Hdr { len: early.len() as u32, op: op::RW, ..self.reply(key, op::RW, None) };
        if let Some(c) = self.conns.get_mut(&key) {
            c.tx_cnt = c.tx_cnt.wrapping_add(early.len() as u32);
        }
        self.to_guest.push_back((h, early));
    }

    fn read_host(&mut self, key: Key) {
        if self.to_guest.len() >= MAX_PENDING_RX {
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.state != State::Established {
            return;
        }
        let credit = c.peer_credit() as usize;
        if credit == 0 {
            return;
        }
        let mut buf = vec![0u8; credit.min(MAX_PKT_PAYLOAD)];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.state = State::Closing;
                let mut h = self.reply(key, op::SHUTDOWN, self.conns.get(&key));
                h.flags = 3; // no more data in either direction
                self.to_guest.push_back((h, Vec::new()));
            }
            Ok(n) => {
                buf.truncate(n);
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.last_fwd_cnt_sent = c.fwd_cnt;
                let h = Hdr { len: n as u32, ..self.reply(key, op::RW, self.conns.get(&key)) };
                self.to_guest.push_back((h, buf));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.rst(key),
        }
    }

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// Moves queued packets into the guest's rx buffers; returns true if any was delivered.
    fn deliver(&mut self, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let Some(q) = queues.get_mut(RX) else { return false };
        let mut any = false;
        while let Some((h, payload)) = self.to_guest.pop_front() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                self.to_guest.push_front((h, payload));
                break;
            };
            let head = chain.head_index();
            let descs: Vec<Desc> =
                chain.map(|d| Desc { addr: d.addr().0, len: d.len(), write: d.is_write_only() }).collect();
            let cap = writable_len(&descs);
            if cap < HDR_LEN {
                add_used(q, mem, head, 0);
                self.to_guest.push_front((h, payload));
                any = true;
                continue;
            }
            let n = payload.len().min(cap - HDR_LEN);
            let mut pkt = Vec::with_capacity(HDR_LEN + n);
            pkt.extend_from_slice(&Hdr { len: n as u32, ..h }.to_bytes());
            pkt.extend_from_slice(&payload[..n]);
            let written = scatter(mem, &descs, &pkt).unwrap_or(0);
            add_used(q, mem, head, written as u32);
            any = true;
            if n < payload.len() {
                self.to_guest.push_front((h, payload[n..].to_vec()));
            }
        }
        any
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256, 256]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let mut any = false;
        if index == TX {
            let Some(q) = queues.get_mut(TX) else { return false };
            for (head, descs) in pop_chains(q, mem) {
                if let Ok(bytes) = gather(mem, &descs, HDR_LEN + BUF_ALLOC as usize)
                    && let Some(h) = Hdr::from_bytes(&bytes)
                {
                    let end = (HDR_LEN + h.len as usize).min(bytes.len());
                    self.handle_guest_packet(h, &bytes[HDR_LEN..end]);
                }
                add_used(q, mem, head, 0);
                any = true;
            }
        }
        // New rx buffers (index RX) or replies to tx: deliver what is pending.
        self.deliver(queues, mem) || any
    }

    fn poll(&mut self, queues: &mut [Queue], mem: &GuestMem) -> bool {
        self.poll_host();
        self.deliver(queues, mem)
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        let mut v = vec![self.listener.as_raw_fd()];
        v.extend(self.handshaking.iter().map(|(s, _)| s.as_raw_fd()));
        v.extend(
            self.conns
                .values()
                .filter(|c| c.state == State::Established && c.peer_credit() > 0)
                .map(|c| c.stream.as_raw_fd()),
        );
        v
    }

    fn reset(&mut self) {
        self.conns.clear();
        self.handshaking.clear();
        self.to_guest.clear();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests;
