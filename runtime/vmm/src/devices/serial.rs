//! The 16550A UART at PIO 0x3f8 (COM1, IRQ 4): the guest's `ttyS0`.
//!
//! Owns the glue between vm-superio's register model and our bus/interrupt abstractions, and the
//! [`SharedWriter`] that lets the UART and the virtio console write to the same host sink.
//! There is no input path: the guest's stdin is the agent's vsock channel, not the console.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use super::{BusDevice, Interrupt, lock};

/// COM1 base port.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1 register window.
pub const COM1_LEN: u64 = 8;
/// COM1 GSI.
pub const COM1_IRQ: u32 = 4;

/// A `Write` sink shared by several devices (serial + virtio console).
#[derive(Clone)]
pub struct SharedWriter(pub Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWriter")
    }
}

impl SharedWriter {
    /// Wraps a writer.
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        SharedWriter(Arc::new(Mutex::new(w)))
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0).flush()
    }
}

/// Adapts an [`Interrupt`] to vm-superio's `Trigger`.
#[allow(missing_debug_implementations)]
pub struct IrqTrigger(pub Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger();
        Ok(())
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    inner: Serial<IrqTrigger, vm_superio::serial::NoEvents, SharedWriter>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART writing to `out` and raising `irq`.
    pub fn new(irq: Arc<dyn Interrupt>, out: SharedWriter) -> Self {
        SerialDevice { inner: Serial::new(IrqTrigger(irq), out) }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            // An error here is a failed host write; the guest cannot act on it, so drop the byte.
            let _ = self.inner.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{CountingIrq, VecWriter};

    #[test]
    fn bytes_written_to_thr_reach_the_sink() {
        let sink = VecWriter::default();
        let irq = Arc::new(CountingIrq::default());
        let mut dev = SerialDevice::new(irq.clone(), SharedWriter::new(Box::new(sink.clone())));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(sink.contents(), b"hi\n");
        // LSR (offset 5) reports THR empty so a polling driver keeps sending.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Enabling the THR-empty interrupt (IER bit 1) raises the IRQ.
        dev.write(1, &[0x02]);
        assert!(irq.count() >= 1);
    }
}
