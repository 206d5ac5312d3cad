//! Emulated devices and the buses that route vCPU exits to them.
//!
//! Owns the [`BusDevice`] trait (a device's view of a PIO or MMIO access), the [`Bus`] that maps
//! address ranges to devices, and the [`Interrupt`] abstraction devices use to raise their GSI
//! (an irqfd on a real VM, a counter in tests). Device models live in submodules:
//! [`serial`] (16550 UART via vm-superio), [`i8042`] (just the reset line) and [`virtio`]
//! (the virtio-mmio transport and the block, console and vsock devices).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub mod i8042;
pub mod serial;
pub mod virtio;

/// A device reachable from a vCPU exit. `offset` is relative to the start of its bus range.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Something that injects one interrupt into the guest.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt (edge).
    fn trigger(&self);
}

/// An [`Interrupt`] backed by an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqFdInterrupt(pub vmm_sys_util::eventfd::EventFd);

impl Interrupt for IrqFdInterrupt {
    fn trigger(&self) {
        // A failed eventfd write means the counter overflowed (the interrupt is pending anyway).
        let _ = self.0.write(1);
    }
}

/// Shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// An address space (PIO or MMIO) mapping non-overlapping ranges to devices.
#[derive(Default, Clone)]
pub struct Bus {
    // start → (len, device)
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ranges.iter().map(|(s, (l, _))| (*s, *l))).finish()
    }
}

/// The range overlaps one already on the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bus range {start:#x}+{len:#x} overlaps an existing device")]
pub struct BusOverlap {
    /// Start.
    pub start: u64,
    /// Length.
    pub len: u64,
}

impl Bus {
    /// Empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[start, start+len)` to `dev`.
    pub fn insert(&mut self, start: u64, len: u64, dev: SharedDevice) -> Result<(), BusOverlap> {
        let err = BusOverlap { start, len };
        if len == 0 {
            return Err(err);
        }
        let end = start.checked_add(len).ok_or(err.clone())?;
        let overlaps = self.ranges.range(..end).next_back().is_some_and(|(s, (l, _))| s + l > start);
        if overlaps {
            return Err(err);
        }
        self.ranges.insert(start, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (start, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr < start + len).then_some((addr - start, dev))
    }

    /// Dispatches a read; returns false when no device is mapped there (data is then all-ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex, recovering from poisoning (a panicking device thread must not wedge
/// every vCPU; the device state is still consistent at the register level).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn bus_routes_by_range_and_rejects_overlaps() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        assert!(bus.insert(0x3f0, 9, a.clone()).is_err());
        assert!(bus.insert(0x3ff, 1, a.clone()).is_err());
        assert!(bus.insert(0x400, 0, a.clone()).is_err());
        bus.insert(0x400, 1, a.clone()).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(!bus.read(0x3f7, &mut d));
        assert_eq!(d, [0xff]);
        assert!(bus.write(0x3f8, b"x"));
        assert!(!bus.write(0x401, b"x"));
        assert_eq!(lock(&a).0, vec![(0, b"x".to_vec())]);
    }
}
