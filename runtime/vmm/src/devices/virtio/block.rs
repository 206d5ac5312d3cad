//! virtio-blk over an already-open file (virtio 1.x §5.2).
//!
//! Owns request parsing and execution: IN (pread), OUT (pwrite, refused with IOERR on a
//! read-only disk), FLUSH (fsync), GET_ID; anything else is UNSUPP. Requests reaching past the
//! end of the disk, malformed chains and oversized requests complete with IOERR. The file is
//! never reopened; its length at creation is the capacity.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::{
    Desc, GuestMem, VIRTIO_F_VERSION_1, VirtioDevice, add_used, device_type, gather, pop_chains, read_config_bytes,
    scatter,
};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// `VIRTIO_BLK_F_RO`.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get device id.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Largest data transfer accepted in one request (Linux sends at most max_sectors_kb = 1 MiB
/// by default; this bounds what a hostile guest can make us allocate).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
const QUEUE_SIZE: u16 = 256;

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    file: File,
    read_only: bool,
    capacity_bytes: u64,
    id: String,
}

impl Block {
    /// A disk over `file`; `id` is returned by GET_ID (truncated to 20 bytes).
    pub fn new(file: File, read_only: bool, id: String) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Block { file, read_only, capacity_bytes: len - len % SECTOR_SIZE, id })
    }

    /// Capacity in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_bytes / SECTOR_SIZE
    }

    /// Executes one request; returns (status, bytes written into guest data buffers).
    fn execute(&mut self, mem: &GuestMem, descs: &[Desc]) -> (u8, usize) {
        if descs.len() < 2 || descs[0].write || descs[0].len < 16 {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let Ok(req_type) = mem.read_obj::<u32>(GuestAddress(descs[0].addr)) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let Ok(sector) = mem.read_obj::<u64>(GuestAddress(descs[0].addr + 8)) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let data = &descs[1..descs.len() - 1];
        let data_len: usize = data.iter().map(|d| d.len as usize).sum();
        let in_range = |len: usize| {
            sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|off| off.checked_add(len as u64))
                .is_some_and(|end| end <= self.capacity_bytes)
        };
        match req_type {
            VIRTIO_BLK_T_IN => {
                if data.iter().any(|d| !d.write) || data_len > MAX_REQUEST_BYTES || !in_range(data_len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buf = vec![0u8; data_len];
                if self.file.read_exact_at(&mut buf, sector * SECTOR_SIZE).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match scatter(mem, data, &buf) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only || data.iter().any(|d| d.write) || data_len > MAX_REQUEST_BYTES || !in_range(data_len)
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let Ok(buf) = gather(mem, data, data_len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match self.file.write_all_at(&buf, sector * SECTOR_SIZE) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    return (VIRTIO_BLK_S_OK, 0);
                }
                match self.file.sync_all() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
                let b = self.id.as_bytes();
                let n = b.len().min(VIRTIO_BLK_ID_BYTES);
                id[..n].copy_from_slice(&b[..n]);
                match scatter(mem, data, &id) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with `le64 capacity` (in sectors).
        read_config_bytes(&self.capacity_sectors().to_le_bytes(), offset, data);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        let Some(queue) = queues.get_mut(index) else { return false };
        let chains = pop_chains(queue, mem);
        let any = !chains.is_empty();
        for (head, descs) in chains {
            let (status, written) = self.execute(mem, &descs);
            let mut used = written as u32;
            // The status byte is the last descriptor; without a writable one there is no way
            // to answer, but the chain still has to be returned to the guest.
            if let Some(last) = descs.last().filter(|d| d.write && d.len >= 1)
                && mem.write_obj(status, GuestAddress(last.addr)).is_ok()
            {
                used += 1;
            }
            add_used(queue, mem, head, used);
        }
        any
    }
}

#[cfg(test)]
mod tests;
