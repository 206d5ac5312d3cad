//! Test helpers: an in-memory virtio driver, a recording writer and a counting interrupt.
//!
//! The [`Driver`] plays the guest: it negotiates through the mmio registers exactly as Linux's
//! virtio_mmio driver does, lays out split virtqueues in guest memory, writes descriptor chains
//! and reads the used ring back, so device tests exercise the same paths a real guest would.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::mmio::{reg, status};
use crate::devices::virtio::{GuestMem, VIRTIO_F_VERSION_1};
use crate::devices::{BusDevice, Interrupt};

/// A `Write` that records everything (clones share the buffer).
#[derive(Clone, Default)]
pub struct VecWriter(pub Arc<Mutex<Vec<u8>>>);

impl VecWriter {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for VecWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts triggers.
#[derive(Default, Debug)]
pub struct CountingIrq(AtomicUsize);

impl CountingIrq {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingIrq {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// 16 MiB of guest RAM at 0.
pub fn guest_mem() -> GuestMem {
    GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// Where test queues live (queue i at QUEUE_BASE + i * 0x4000).
pub const QUEUE_BASE: u64 = 0x10_0000;
/// First free byte for test buffers.
pub const BUF_BASE: u64 = 0x20_0000;
/// Queue size the driver configures.
pub const QSIZE: u16 = 16;

#[derive(Debug, Clone, Copy)]
struct QState {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

/// A minimal split-virtqueue driver.
#[derive(Debug)]
pub struct Driver {
    pub mem: GuestMem,
    queues: Vec<QState>,
}

pub fn rd(dev: &mut dyn BusDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn wr(dev: &mut dyn BusDevice, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

impl Driver {
    /// Runs the init sequence (reset, ACK, DRIVER, features = offered ∩ `want` | VERSION_1,
    /// FEATURES_OK, `nq` queues, DRIVER_OK) and asserts every step the device must accept.
    pub fn init(dev: &mut dyn BusDevice, mem: GuestMem, nq: usize, want: u64) -> Driver {
        assert_eq!(rd(dev, reg::MAGIC), 0x7472_6976);
        assert_eq!(rd(dev, reg::VERSION), 2);
        wr(dev, reg::STATUS, 0);
        wr(dev, reg::STATUS, status::ACKNOWLEDGE);
        wr(dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(dev, reg::DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(rd(dev, reg::DEVICE_FEATURES));
        wr(dev, reg::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(rd(dev, reg::DEVICE_FEATURES));
        let offered = lo | hi << 32;
        assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
        let acked = offered & (want | VIRTIO_F_VERSION_1);
        wr(dev, reg::DRIVER_FEATURES_SEL, 0);
        wr(dev, reg::DRIVER_FEATURES, acked as u32);
        wr(dev, reg::DRIVER_FEATURES_SEL, 1);
        wr(dev, reg::DRIVER_FEATURES, (acked >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(dev, reg::STATUS, s);
        assert_eq!(rd(dev, reg::STATUS), s, "FEATURES_OK accepted");
        let mut queues = Vec::new();
        for i in 0..nq {
            let base = QUEUE_BASE + i as u64 * 0x4000;
            let q = QState {
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
            };
            wr(dev, reg::QUEUE_SEL, i as u32);
            assert!(rd(dev, reg::QUEUE_NUM_MAX) >= u32::from(QSIZE));
            wr(dev, reg::QUEUE_NUM, u32::from(QSIZE));
            wr(dev, reg::QUEUE_DESC_LOW, q.desc as u32);
            wr(dev, reg::QUEUE_DESC_HIGH, 0);
            wr(dev, reg::QUEUE_AVAIL_LOW, q.avail as u32);
            wr(dev, reg::QUEUE_AVAIL_HIGH, 0);
            wr(dev, reg::QUEUE_USED_LOW, q.used as u32);
            wr(dev, reg::QUEUE_USED_HIGH, 0);
            wr(dev, reg::QUEUE_READY, 1);
            assert_eq!(rd(dev, reg::QUEUE_READY), 1);
            queues.push(q);
        }
        wr(dev, reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(rd(dev, reg::STATUS), s | status::DRIVER_OK, "DRIVER_OK accepted");
        Driver { mem, queues }
    }

    /// Writes a chain of (addr, len, device-writable) descriptors, publishes it in the avail
    /// ring and returns its head index. Does not notify.
    pub fn push(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let qs = &mut self.queues[q];
        let head = qs.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let next = (idx + 1) % QSIZE;
            let mut flags = 0u16;
            if i + 1 < descs.len() {
                flags |= 1; // VRING_DESC_F_NEXT
            }
            if write {
                flags |= 2; // VRING_DESC_F_WRITE
            }
            let at = GuestAddress(qs.desc + u64::from(idx) * 16);
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
        }
        qs.next_desc = (head + descs.len() as u16) % QSIZE;
        let slot = qs.avail + 4 + u64::from(qs.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        qs.avail_idx = qs.avail_idx.wrapping_add(1);
        self.mem.write_obj(qs.avail_idx, GuestAddress(qs.avail + 2)).unwrap();
        head
    }

    /// New used-ring entries since the last call, as (head id, written length).
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let qs = &mut self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(qs.used + 2)).unwrap();
        let mut out = Vec::new();
        while qs.last_used != idx {
            let e = qs.used + 4 + u64::from(qs.last_used % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            qs.last_used = qs.last_used.wrapping_add(1);
        }
        out
    }

    /// Writes QueueNotify.
    pub fn notify(&self, dev: &mut dyn BusDevice, q: usize) {
        wr(dev, reg::QUEUE_NOTIFY, q as u32);
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A minimal ELF64 `vmlinux` stand-in: one PT_LOAD of `code` at physical 1 MiB and a PVH note
/// (XEN_ELFNOTE_PHYS32_ENTRY = 18) pointing at `0x100000 + entry_off`.
pub fn pvh_elf(code: &[u8], entry_off: u32) -> Vec<u8> {
    let mut f = vec![0u8; 0x180];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[24..32].copy_from_slice(&0x100000u64.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let ph = 64; // PT_LOAD: file 0x180 → paddr 0x100000
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    f[ph + 8..ph + 16].copy_from_slice(&0x180u64.to_le_bytes());
    f[ph + 16..ph + 24].copy_from_slice(&0x100000u64.to_le_bytes());
    f[ph + 24..ph + 32].copy_from_slice(&0x100000u64.to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    let ph = 64 + 56; // PT_NOTE at file 0x140
    f[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
    f[ph + 8..ph + 16].copy_from_slice(&0x140u64.to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&20u64.to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&20u64.to_le_bytes());
    let n = 0x140; // namesz 4, descsz 4, type 18, "Xen\0", entry
    f[n..n + 4].copy_from_slice(&4u32.to_le_bytes());
    f[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes());
    f[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes());
    f[n + 12..n + 16].copy_from_slice(b"Xen\0");
    f[n + 16..n + 20].copy_from_slice(&(0x100000 + entry_off).to_le_bytes());
    f.extend_from_slice(code);
    f
}
