//! The virtio-mmio transport (virtio 1.x §4.2, version 2 register layout).
//!
//! Owns the register file and the device-status state machine: feature negotiation
//! (FEATURES_OK only sticks when the driver acked a subset of the offered features that includes
//! VERSION_1), queue configuration (only between FEATURES_OK and DRIVER_OK), activation on
//! DRIVER_OK, notification dispatch, interrupt status/ack and reset (status ← 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};

use super::{GuestMem, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::{BusDevice, Interrupt};

/// "virt" little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported by our devices ("CPSM" little endian).
pub const VENDOR_ID: u32 = 0x4d53_5043;

/// Register offsets.
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
#[allow(missing_docs)]
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit: a used buffer was added.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A virtio device behind the mmio register file.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    irq: Arc<dyn Interrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: Arc<AtomicU32>,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; queues are created from its maximum sizes.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMem, irq: Arc<dyn Interrupt>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).unwrap_or_else(|_| panic!("invalid queue size {max}")))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            config_generation: 0,
        }
    }

    /// Current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device model (tests inspect it).
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// True once the driver set DRIVER_OK (and not FAILED/NEEDS_RESET).
    pub fn is_activated(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
    }

    /// Host-side work for devices with sockets; raises the interrupt when needed.
    pub fn poll(&mut self) {
        if self.is_activated() && self.device.poll(&mut self.queues, &self.mem) {
            self.signal_used();
        }
    }

    /// File descriptors whose readability should trigger [`MmioTransport::poll`].
    pub fn poll_fds(&self) -> Vec<std::os::fd::RawFd> {
        if self.is_activated() { self.device.poll_fds() } else { Vec::new() }
    }

    fn signal_used(&self) {
        self.interrupt_status.fetch_or(INT_VRING, Ordering::SeqCst);
        self.irq.trigger();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new_bits = v & !self.status;
        // The driver may only add bits (except by writing 0).
        if v & self.status != self.status {
            self.status |= status::FAILED;
            return;
        }
        if new_bits & status::FEATURES_OK != 0 {
            let offered = self.device.avail_features();
            let ok = self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear so the driver sees the negotiation failed.
                self.status = v & !status::FEATURES_OK;
                return;
            }
        }
        if new_bits & status::DRIVER_OK != 0 {
            if self.status & status::FEATURES_OK == 0 {
                self.status |= status::FAILED;
                return;
            }
            let all_valid = self.queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem));
            if !all_valid {
                self.status = v | status::DEVICE_NEEDS_RESET;
                return;
            }
            self.status = v;
            self.device.activate(self.driver_features);
            return;
        }
        self.status = v;
    }

    fn read_u32(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queues.get(self.queue_sel as usize).map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.queues.get(self.queue_sel as usize).map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Features are only writable between DRIVER and FEATURES_OK.
            reg::DRIVER_FEATURES if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                if !self.queue_config_allowed() {
                    return;
                }
                let Some(q) = self.selected_queue() else { return };
                match offset {
                    reg::QUEUE_NUM => q.set_size(v as u16),
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            _ => {}
        }
    }

    fn notify(&mut self, index: u32) {
        let i = index as usize;
        if !self.is_activated() || !self.queues.get(i).is_some_and(|q| q.ready()) {
            return;
        }
        if self.device.process_queue(i, &mut self.queues, &self.mem) {
            self.signal_used();
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if let Ok(b) = <[u8; 4]>::try_from(data)
            && offset.is_multiple_of(4)
        {
            self.write_u32(offset, u32::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests;
