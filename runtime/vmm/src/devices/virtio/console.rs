//! virtio-console (single port, no MULTIPORT): the guest's `hvc0`, output only.
//!
//! Owns the transmit path: every buffer the guest queues on the transmitq (queue 1) is copied to
//! the shared host writer. The receiveq (queue 0) exists because the driver requires it, but no
//! host input is ever delivered: the agent talks over vsock, not the console.

use std::io::Write;

use virtio_queue::Queue;

use super::{GuestMem, VIRTIO_F_VERSION_1, VirtioDevice, add_used, device_type, gather, pop_chains};
use crate::devices::serial::SharedWriter;

const RX: usize = 0;
const TX: usize = 1;
/// Largest chunk copied per chain (bounds host allocation per request).
const MAX_CHUNK: usize = 1 << 20;

/// The console device.
#[derive(Debug)]
pub struct Console {
    out: SharedWriter,
}

impl Console {
    /// A console writing to `out`.
    pub fn new(out: SharedWriter) -> Self {
        Console { out }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 64]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: all zero (no size, no multiport).
        data.fill(0);
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        if index == RX {
            // Buffers stay queued: there is no input.
            return false;
        }
        let Some(q) = queues.get_mut(TX) else { return false };
        let chains = pop_chains(q, mem);
        let any = !chains.is_empty();
        for (head, descs) in chains {
            if let Ok(buf) = gather(mem, &descs, MAX_CHUNK) {
                // Host sink errors cannot be reported to the guest; the data is dropped.
                let _ = self.out.write_all(&buf);
                let _ = self.out.flush();
            }
            add_used(q, mem, head, 0);
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::testutil::{BUF_BASE, CountingIrq, Driver, VecWriter, guest_mem};

    #[test]
    fn tx_chains_reach_the_writer_in_order() {
        let sink = VecWriter::default();
        let mem = guest_mem();
        let irq = Arc::new(CountingIrq::default());
        let dev = Console::new(SharedWriter::new(Box::new(sink.clone())));
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq.clone());
        let mut d = Driver::init(&mut t, mem, 2, 0);
        d.write(BUF_BASE, b"hello ");
        d.write(BUF_BASE + 0x100, b"from ");
        d.write(BUF_BASE + 0x200, b"hvc0\n");
        let h1 = d.push(TX, &[(BUF_BASE, 6, false)]);
        let h2 = d.push(TX, &[(BUF_BASE + 0x100, 5, false), (BUF_BASE + 0x200, 5, false)]);
        d.notify(&mut t, TX);
        assert_eq!(sink.contents(), b"hello from hvc0\n");
        assert_eq!(d.used(TX), vec![(u32::from(h1), 0), (u32::from(h2), 0)]);
        assert_eq!(irq.count(), 1);
        // rx buffers are accepted but never completed.
        d.push(RX, &[(BUF_BASE + 0x1000, 64, true)]);
        d.notify(&mut t, RX);
        assert!(d.used(RX).is_empty());
    }
}
