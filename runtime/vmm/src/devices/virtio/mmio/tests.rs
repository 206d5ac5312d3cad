//! Register-level tests of the virtio-mmio state machine against a dummy device.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::devices::virtio::{add_used, pop_chains};
use crate::testutil::{CountingIrq, Driver, guest_mem, rd, wr};

#[derive(Default)]
struct Counters {
    notified: AtomicUsize,
    resets: AtomicUsize,
    activated: AtomicUsize,
}

struct Dummy(Arc<Counters>);

const DUMMY_FEATURE: u64 = 1 << 3;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | DUMMY_FEATURE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[32, 32]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data)
    }
    fn activate(&mut self, _f: u64) {
        self.0.activated.fetch_add(1, Ordering::SeqCst);
    }
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMem) -> bool {
        self.0.notified.fetch_add(1, Ordering::SeqCst);
        for (head, _) in pop_chains(&mut queues[index], mem) {
            add_used(&mut queues[index], mem, head, 0);
        }
        true
    }
    fn reset(&mut self) {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
    }
}

fn transport() -> (MmioTransport, Arc<Counters>, Arc<CountingIrq>) {
    let c = Arc::new(Counters::default());
    let irq = Arc::new(CountingIrq::default());
    let t = MmioTransport::new(Box::new(Dummy(c.clone())), guest_mem(), irq.clone());
    (t, c, irq)
}

/// The guest memory the transport uses (the driver must share it).
fn mem_of(t: &MmioTransport) -> GuestMem {
    t.mem.clone()
}

#[test]
fn identity_registers() {
    let (mut t, ..) = transport();
    assert_eq!(rd(&mut t, reg::MAGIC), MMIO_MAGIC);
    assert_eq!(rd(&mut t, reg::VERSION), 2);
    assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), DUMMY_FEATURE as u32);
    let mut cfg = [0u8; 4];
    t.read(reg::CONFIG + 1, &mut cfg);
    assert_eq!(cfg, [2, 3, 4, 0]);
    // Unaligned or narrow register reads return zero rather than garbage.
    let mut b = [0xaa; 2];
    t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn full_handshake_activates_and_notify_processes() {
    let (mut t, c, irq) = transport();
    let m = mem_of(&t);
    let mut d = Driver::init(&mut t, m, 2, DUMMY_FEATURE);
    assert_eq!(c.activated.load(Ordering::SeqCst), 1);
    assert!(t.is_activated());
    let head = d.push(1, &[(0x30_0000, 8, false)]);
    d.notify(&mut t, 1);
    assert_eq!(c.notified.load(Ordering::SeqCst), 1);
    assert_eq!(d.used(1), vec![(u32::from(head), 0)]);
    assert_eq!(irq.count(), 1);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    wr(&mut t, reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
    // Notifying a queue that does not exist is ignored.
    d.notify(&mut t, 7);
    assert_eq!(c.notified.load(Ordering::SeqCst), 1);
}

#[test]
fn features_without_version_1_are_refused() {
    let (mut t, ..) = transport();
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, reg::DRIVER_FEATURES, DUMMY_FEATURE as u32);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn features_not_offered_are_refused() {
    let (mut t, ..) = transport();
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, reg::DRIVER_FEATURES, 1 << 5);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, 1);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn queue_setup_is_ignored_before_features_ok_and_after_driver_ok() {
    let (mut t, ..) = transport();
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0, "before FEATURES_OK");
    let m = mem_of(&t);
    let _d = Driver::init(&mut t, m, 1, 0);
    wr(&mut t, reg::QUEUE_SEL, 1);
    wr(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0, "after DRIVER_OK");
    wr(&mut t, reg::QUEUE_SEL, 9);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
}

#[test]
fn driver_ok_without_features_ok_fails_the_device() {
    let (mut t, c, _) = transport();
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert_ne!(rd(&mut t, reg::STATUS) & status::FAILED, 0);
    assert_eq!(c.activated.load(Ordering::SeqCst), 0);
}

#[test]
fn ready_queue_outside_memory_needs_reset() {
    let (mut t, c, _) = transport();
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, 1);
    wr(&mut t, reg::STATUS, s);
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_NUM, 16);
    wr(&mut t, reg::QUEUE_DESC_LOW, 0xf000_0000); // beyond the 16 MiB of RAM
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
    assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(c.activated.load(Ordering::SeqCst), 0);
    assert!(!t.is_activated());
}

#[test]
fn status_zero_resets_queues_features_and_device() {
    let (mut t, c, _) = transport();
    let m = mem_of(&t);
    let _d = Driver::init(&mut t, m, 2, DUMMY_FEATURE);
    let resets = c.resets.load(Ordering::SeqCst);
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert_eq!(c.resets.load(Ordering::SeqCst), resets + 1);
    wr(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    assert!(!t.is_activated());
    // The device can be brought up again after a reset.
    let m = mem_of(&t);
    let _d = Driver::init(&mut t, m, 2, 0);
    assert_eq!(c.activated.load(Ordering::SeqCst), 2);
}
