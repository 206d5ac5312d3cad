//! The VM: KVM objects, guest memory registration, device wiring and [`run`].
//!
//! Owns the lifecycle of one guest: create the VM (irqchip, PIT, TSS), map RAM, load kernel and
//! initrd, build the cmdline and boot parameters, attach devices to the buses with irqfds,
//! start one thread per vCPU and one for socket-backed devices, and tear everything down when
//! the first vCPU reports a terminal exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootProtocol, cpu, params};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN, SerialDevice, SharedWriter};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{GuestMem, VirtioDevice};
use crate::devices::{Bus, Interrupt, IrqFdInterrupt, lock};
use crate::layout::{MemoryLayout, VIRTIO_MMIO_SIZE};
use crate::{KvmStatus, VmConfig, VmExit, VmmError, kvm_status};

pub mod vcpu;

#[cfg(test)]
mod tests;

/// Where the KVM TSS goes (three pages just below the IOAPIC-free top of the hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Allocates guest RAM for `layout`.
pub fn create_memory(layout: &MemoryLayout) -> Result<GuestMem, VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = layout.ram_regions().iter().map(|(a, l)| (*a, *l as usize)).collect();
    GuestMem::from_ranges(&ranges).map_err(|e| VmmError::Memory(format!("allocating RAM: {e}")))
}

/// Registers every region of `mem` as a KVM memory slot.
pub fn register_memory(vm: &VmFd, mem: &GuestMem) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(format!("host address of region {slot}: {e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host+len` is a live mmap owned by `mem`, which outlives the VM: run()
        // keeps `mem` alive until every vCPU thread has been joined and the VmFd dropped, and
        // slots never overlap because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(r) }.map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<Arc<dyn Interrupt>, VmmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|source| VmmError::Io { context: format!("eventfd for GSI {gsi}"), source })?;
    vm.register_irqfd(&evt, gsi).map_err(VmmError::kvm("KVM_IRQFD"))?;
    Ok(Arc::new(IrqFdInterrupt(evt)))
}

/// Boots `cfg` and blocks until the guest resets, shuts down or halts.
///
/// Refuses to start when `/dev/kvm` is unusable. On a `kvm_pvm` host it still starts (tiny
/// guests work there), but a standard Linux kernel will not get far: callers should consult
/// [`kvm_status`] first.
pub fn run(mut cfg: VmConfig) -> Result<VmExit, VmmError> {
    if let KvmStatus::Unavailable { reason } = kvm_status() {
        return Err(VmmError::KvmUnavailable(reason));
    }
    if cfg.vcpus == 0 {
        return Err(VmmError::Config("vcpus must be at least 1".into()));
    }
    let layout = MemoryLayout::new(cfg.mem_mib).map_err(|e| VmmError::Config(e.to_string()))?;
    let kvm = Kvm::new().map_err(|e| VmmError::KvmUnavailable(format!("/dev/kvm: {e}")))?;
    let vm = kvm.create_vm().map_err(VmmError::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS).map_err(VmmError::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(VmmError::kvm("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
        .map_err(VmmError::kvm("KVM_CREATE_PIT2"))?;
    let mem = create_memory(&layout)?;
    register_memory(&vm, &mem)?;

    // Kernel and initrd.
    let kernel = boot::load_kernel(&mem, &mut cfg.kernel)?;
    let initrd = match cfg.initrd.as_mut() {
        None => None,
        Some(f) => {
            let size = f.metadata().map_err(|e| VmmError::Initrd(format!("stat: {e}")))?.len();
            let max = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max));
            let max = match kernel.protocol {
                BootProtocol::Pvh => Some(u64::from(u32::MAX)),
                BootProtocol::Linux64 => max,
            };
            let addr =
                layout.place_initrd(size, kernel.kernel_end, max).map_err(|e| VmmError::Initrd(e.to_string()))?;
            boot::load_initrd(&mem, f, addr, size)?;
            Some((addr, size))
        }
    };

    // Devices.
    let out = SharedWriter::new(std::mem::replace(&mut cfg.serial, Box::new(std::io::sink())));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let bus_err = |d: &str| {
        let d = d.to_string();
        move |e: crate::devices::BusOverlap| VmmError::Device { device: d, message: e.to_string() }
    };
    let serial = SerialDevice::new(irqfd(&vm, COM1_IRQ)?, out.clone());
    pio.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial))).map_err(bus_err("serial"))?;
    let reset = Arc::new(AtomicBool::new(false));
    pio.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new(reset.clone())))).map_err(bus_err("i8042"))?;

    let mut virtio: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in cfg.disks.into_iter().enumerate() {
        let name = format!("virtio-blk{i}");
        let dev = Block::new(d.file, d.read_only, format!("capsem{i}"))
            .map_err(|e| VmmError::Device { device: name.clone(), message: e.to_string() })?;
        virtio.push((name, Box::new(dev)));
    }
    virtio.push(("virtio-console".into(), Box::new(Console::new(out.clone()))));
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.guest_cid, &v.uds_path).map_err(|e| VmmError::Device {
            device: "virtio-vsock".into(),
            message: format!("{}: {e}", v.uds_path.display()),
        })?;
        virtio.push(("virtio-vsock".into(), Box::new(dev)));
    }
    let mut windows = Vec::new();
    let mut transports = Vec::new();
    for (i, (name, dev)) in virtio.into_iter().enumerate() {
        let (addr, gsi) = MemoryLayout::virtio_mmio_window(i).map_err(|e| VmmError::Config(e.to_string()))?;
        let t = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irqfd(&vm, gsi)?)));
        mmio.insert(addr.0, VIRTIO_MMIO_SIZE, t.clone()).map_err(bus_err(&name))?;
        windows.push((addr, gsi));
        transports.push(t);
    }

    // Command line and boot parameters.
    let cmdline_cap = kernel.setup_header.map_or(params::DEFAULT_CMDLINE_SIZE, |h| h.cmdline_size as usize + 1);
    let cmdline = params::build_cmdline(&cfg.cmdline, &windows, cmdline_cap)?;
    let cmdline_len = params::write_cmdline(&mem, &cmdline)?;
    match kernel.protocol {
        BootProtocol::Pvh => {
            let (info, memmap, module) = params::pvh_start_info(&layout, initrd);
            params::write_pvh(&mem, &info, &memmap, module)?;
        }
        BootProtocol::Linux64 => {
            let p = params::linux_boot_params(&layout, kernel.setup_header, cmdline_len, initrd);
            params::write_linux_boot_params(&mem, &p)?;
        }
    }

    // vCPUs.
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let v = vm.create_vcpu(u64::from(id)).map_err(VmmError::kvm("KVM_CREATE_VCPU"))?;
        let boot = (id == 0).then_some((kernel.protocol, kernel.entry));
        cpu::setup_vcpu(&kvm, &v, &mem, id, cfg.vcpus, boot)?;
        vcpus.push(v);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_poller(transports, stop.clone())?;
    let result = run_vcpus(vcpus, pio, mmio, reset, stop.clone());
    stop.store(true, Ordering::SeqCst);
    let _ = poller.join();
    let _ = lock(&out.0).flush();
    drop(vm);
    drop(mem);
    result
}

use std::io::Write as _;

/// Runs every vCPU on its own thread; returns the first terminal exit.
pub fn run_vcpus(
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: Bus,
    mmio: Bus,
    reset: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<VmExit, VmmError> {
    vcpu::install_kick_handler();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (i, mut v) in vcpus.into_iter().enumerate() {
        let (pio, mmio, reset, stop, tx) = (pio.clone(), mmio.clone(), reset.clone(), stop.clone(), tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let mut stats = vcpu::ExitStats::default();
                let r = vcpu::run_loop(&mut v, i as u8, &pio, &mmio, &reset, &stop, &mut stats);
                stop.store(true, Ordering::SeqCst);
                let _ = tx.send((i as u8, r));
            })
            .map_err(|source| VmmError::Io { context: format!("spawning vcpu{i}"), source })?;
        handles.push(h);
    }
    drop(tx);
    // The first report decides; then kick the others until they are all gone.
    let first = rx.recv().map_err(|_| VmmError::Vcpu { vcpu: 0, message: "vcpu threads vanished".into() })?;
    stop.store(true, Ordering::SeqCst);
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(vcpu::kick_signal());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for h in handles {
        let _ = h.join();
    }
    let (index, r) = first;
    match r {
        Ok(Some(exit)) => Ok(exit),
        Ok(None) => Err(VmmError::Vcpu { vcpu: index, message: "stopped without an exit".into() }),
        Err(message) => Err(VmmError::Vcpu { vcpu: index, message }),
    }
}

/// One thread that services socket-backed devices (vsock) until `stop`.
fn spawn_poller(
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, VmmError> {
    std::thread::Builder::new()
        .name("vmm-poll".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let fds: Vec<_> = transports.iter().flat_map(|t| lock(t).poll_fds()).collect();
                let woke = wait_readable(&fds, 10);
                for t in &transports {
                    lock(t).poll();
                }
                if woke {
                    // Data may stay readable while the guest has no rx buffers: do not spin.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .map_err(|source| VmmError::Io { context: "spawning the device poller".into(), source })
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (with no fds, just sleeps);
/// returns true when woken by readiness.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout_ms: i32) -> bool {
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(timeout_ms as u64));
        return false;
    }
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd structs for
    // the duration of the call; poll(2) only writes their `revents` fields.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    n > 0
}
