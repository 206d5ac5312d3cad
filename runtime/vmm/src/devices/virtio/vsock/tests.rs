//! vsock tests: the test plays the guest driver (rx/tx queues in guest memory) and the host
//! peers (Unix sockets in a temp dir).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::testutil::{BUF_BASE, CountingIrq, Driver, guest_mem};

const GUEST_CID: u64 = 3;
const TXBUF: u64 = BUF_BASE;
const RXBUF: u64 = BUF_BASE + 0x10000;

struct Rig {
    t: MmioTransport,
    d: Driver,
    dir: tempfile::TempDir,
    rx_slot: u64,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_mem();
        let dev = Vsock::new(GUEST_CID, &dir.path().join("v.sock")).unwrap();
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), Arc::new(CountingIrq::default()));
        let d = Driver::init(&mut t, mem, 3, 0);
        let mut r = Rig { t, d, dir, rx_slot: 0 };
        for _ in 0..8 {
            r.give_rx();
        }
        r
    }

    fn give_rx(&mut self) {
        let addr = RXBUF + (self.rx_slot % 8) * 0x2000;
        self.rx_slot += 1;
        self.d.push(RX, &[(addr, 0x2000, true)]);
    }

    /// Guest sends a packet on the tx queue.
    fn send(&mut self, h: Hdr, payload: &[u8]) {
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(payload);
        self.d.write(TXBUF, &b);
        self.d.push(TX, &[(TXBUF, b.len() as u32, false)]);
        self.d.notify(&mut self.t, TX);
    }

    /// Packets the device delivered to the guest since the last call.
    fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let used = self.d.used(RX);
        let mut out = Vec::new();
        for (id, len) in used {
            // Each rx chain is one descriptor; its index tells which slot.
            let desc_addr: u64 = {
                let raw = self.d.read(crate::testutil::QUEUE_BASE + u64::from(id) * 16, 8);
                u64::from_le_bytes(raw.try_into().unwrap())
            };
            let bytes = self.d.read(desc_addr, len as usize);
            let h = Hdr::from_bytes(&bytes).unwrap();
            out.push((h, bytes[HDR_LEN..].to_vec()));
            self.give_rx();
        }
        out
    }

    fn poll_until(&mut self, mut f: impl FnMut(&[(Hdr, Vec<u8>)]) -> bool) -> Vec<(Hdr, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..200 {
            self.t.poll();
            all.extend(self.recv());
            if f(&all) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached; got {all:?}");
    }

    fn path(&self, suffix: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("v.sock{suffix}"))
    }
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Hdr {
    Hdr {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

#[test]
fn header_round_trips() {
    let h = guest_hdr(op::RW, 1, 2, 3);
    assert_eq!(Hdr::from_bytes(&h.to_bytes()), Some(h));
    assert_eq!(Hdr::from_bytes(&[0u8; 10]), None);
}

#[test]
fn config_reports_guest_cid() {
    let mut r = Rig::new();
    let mut b = [0u8; 8];
    r.t.read(0x100, &mut b);
    assert_eq!(u64::from_le_bytes(b), GUEST_CID);
}

#[test]
fn guest_connect_response_data_and_credit() {
    let mut r = Rig::new();
    let listener = UnixListener::bind(r.path("_1234")).unwrap();
    r.send(guest_hdr(op::REQUEST, 5000, 1234, 0), &[]);
    let (mut host, _) = listener.accept().unwrap();
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!((resp.op, resp.src_port, resp.dst_port), (op::RESPONSE, 1234, 5000));
    assert_eq!((resp.src_cid, resp.dst_cid, resp.buf_alloc), (HOST_CID, GUEST_CID, BUF_ALLOC));

    // Guest → host data.
    r.send(guest_hdr(op::RW, 5000, 1234, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // Credit request → update carrying fwd_cnt = 5.
    r.send(guest_hdr(op::CREDIT_REQUEST, 5000, 1234, 0), &[]);
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.fwd_cnt), (op::CREDIT_UPDATE, 5));

    // Host → guest data, bounded by the guest's credit.
    host.write_all(b"world").unwrap();
    let pkts = r.poll_until(|p| p.iter().any(|(h, _)| h.op == op::RW));
    let (h, data) = pkts.iter().find(|(h, _)| h.op == op::RW).unwrap();
    assert_eq!((h.len, data.as_slice()), (5, b"world".as_slice()));

    // Host closes → SHUTDOWN to the guest; guest RSTs; the connection is gone.
    drop(host);
    r.poll_until(|p| p.iter().any(|(h, _)| h.op == op::SHUTDOWN));
    r.send(guest_hdr(op::RST, 5000, 1234, 0), &[]);
    r.send(guest_hdr(op::RW, 5000, 1234, 1), b"x");
    let pkts = r.recv();
    assert_eq!(pkts.last().unwrap().0.op, op::RST, "data on a closed connection is refused");
}

#[test]
fn host_data_respects_zero_guest_credit() {
    let mut r = Rig::new();
    let listener = UnixListener::bind(r.path("_7")).unwrap();
    let mut h = guest_hdr(op::REQUEST, 9, 7, 0);
    h.buf_alloc = 0;
    r.send(h, &[]);
    let (mut host, _) = listener.accept().unwrap();
    r.recv();
    host.write_all(b"blocked").unwrap();
    for _ in 0..5 {
        r.t.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(r.recv().iter().all(|(h, _)| h.op != op::RW), "no RW without credit");
    // Guest grants credit → data flows.
    let mut up = guest_hdr(op::CREDIT_UPDATE, 9, 7, 0);
    up.buf_alloc = 4096;
    r.send(up, &[]);
    let pkts = r.poll_until(|p| p.iter().any(|(h, _)| h.op == op::RW));
    assert!(pkts.iter().any(|(_, d)| d == b"blocked"));
}

#[test]
fn connect_to_missing_port_gets_rst() {
    let mut r = Rig::new();
    r.send(guest_hdr(op::REQUEST, 5000, 4321, 0), &[]);
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 5000));
}

#[test]
fn packets_with_wrong_cids_are_dropped() {
    let mut r = Rig::new();
    let mut h = guest_hdr(op::REQUEST, 5000, 1, 0);
    h.src_cid = 99;
    r.send(h, &[]);
    assert!(r.recv().is_empty());
}

#[test]
fn host_connect_handshake() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(r.path("")).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let pkts = r.poll_until(|p| p.iter().any(|(h, _)| h.op == op::REQUEST));
    let req = pkts.iter().find(|(h, _)| h.op == op::REQUEST).unwrap().0;
    assert_eq!((req.dst_port, req.dst_cid, req.src_cid), (52, GUEST_CID, HOST_CID));
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    // Guest accepts.
    let mut resp = guest_hdr(op::RESPONSE, 52, req.src_port, 0);
    resp.buf_alloc = 4096;
    r.send(resp, &[]);
    let mut line = String::new();
    BufReader::new(host.try_clone().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
    // Then data flows host → guest.
    host.write_all(b"ping").unwrap();
    let pkts = r.poll_until(|p| p.iter().any(|(h, _)| h.op == op::RW));
    assert!(pkts.iter().any(|(h, d)| h.op == op::RW && d == b"ping"));
}

#[test]
fn malformed_host_handshake_is_dropped() {
    let mut r = Rig::new();
    let mut host = UnixStream::connect(r.path("")).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    for _ in 0..5 {
        r.t.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(r.recv().is_empty());
    let mut b = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(host.read(&mut b).unwrap(), 0, "stream closed by the device");
}
