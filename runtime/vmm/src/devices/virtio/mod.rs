//! virtio: the device-side contract ([`VirtioDevice`]), the virtio-mmio transport and the
//! device models (block, console, vsock).
//!
//! Owns the constants shared by the devices and small helpers that copy between descriptor
//! chains and host buffers. Every guest-memory access goes through vm-memory and is bounds
//! checked; a malformed chain from the guest yields an error status or a dropped request, never
//! a panic.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

pub mod block;
pub mod console;
pub mod mmio;
pub mod vsock;

/// Guest memory as the devices see it.
pub type GuestMem = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: the device is a modern (1.x) device. Required by our transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids (virtio 1.x §5).
pub mod device_type {
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-console.
    pub const CONSOLE: u32 = 3;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
}

/// A virtio device model, transport independent.
pub trait VirtioDevice: Send {
    /// Device type id.
    fn device_type(&self) -> u32;
    /// Feature bits offered (must include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space at `offset`; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once the driver set DRIVER_OK with the negotiated features.
    fn activate(&mut self, _acked_features: u64) {}
    /// The driver notified queue `index`; returns true when used buffers were added.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool;
    /// Host-side work (sockets); returns true when used buffers were added.
    fn poll(&mut self, _queues: &mut [Queue], _mem: &GuestMem) -> bool {
        false
    }
    /// Host file descriptors whose readability should wake [`VirtioDevice::poll`].
    fn poll_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// The driver reset the device: drop all per-session state.
    fn reset(&mut self) {}
}

/// Copies `data` into the little-endian config image at `offset` (helper for `read_config`).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else { return };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

/// One descriptor of a chain, copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// Pops every available chain of `queue` as (head index, descriptors).
pub fn pop_chains(queue: &mut Queue, mem: &GuestMem) -> Vec<(u16, Vec<Desc>)> {
    let mut out = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let descs = chain.map(|d| Desc { addr: d.addr().0, len: d.len(), write: d.is_write_only() }).collect();
        out.push((head, descs));
    }
    out
}

/// Gathers the device-readable part of a chain into one buffer (capped at `max` bytes).
pub fn gather(mem: &GuestMem, descs: &[Desc], max: usize) -> Result<Vec<u8>, vm_memory::GuestMemoryError> {
    let mut buf = Vec::new();
    for d in descs.iter().filter(|d| !d.write) {
        let take = (d.len as usize).min(max.saturating_sub(buf.len()));
        let start = buf.len();
        buf.resize(start + take, 0);
        mem.read_slice(&mut buf[start..], vm_memory::GuestAddress(d.addr))?;
        if buf.len() >= max {
            break;
        }
    }
    Ok(buf)
}

/// Scatters `data` over the device-writable descriptors; returns the bytes written.
pub fn scatter(mem: &GuestMem, descs: &[Desc], data: &[u8]) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut done = 0;
    for d in descs.iter().filter(|d| d.write) {
        if done == data.len() {
            break;
        }
        let n = (d.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], vm_memory::GuestAddress(d.addr))?;
        done += n;
    }
    Ok(done)
}

/// Total capacity of the device-writable descriptors.
pub fn writable_len(descs: &[Desc]) -> usize {
    descs.iter().filter(|d| d.write).map(|d| d.len as usize).sum()
}

/// Marks a chain used (errors mean a broken used ring the guest made; nothing to do about it).
pub fn add_used(queue: &mut Queue, mem: &GuestMem, head: u16, len: u32) {
    let _ = queue.add_used(mem, head, len);
}
