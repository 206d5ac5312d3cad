//! The vCPU run loop: `KVM_RUN`, then dispatch the exit to the PIO or MMIO bus.
//!
//! Owns exit handling and the stop protocol. Each vCPU runs on its own thread; the first vCPU
//! to see a terminal exit (reset, shutdown, halt) records it and sets the shared stop flag; the
//! coordinator then kicks the other vCPUs out of `KVM_RUN` with a real-time signal whose
//! handler does nothing (the `EINTR` is the point).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::VmExit;
use crate::devices::Bus;

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for [`kick_signal`] (once per process).
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Failure leaves the default action (terminate) in place; report it loudly.
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler) {
            eprintln!("capsem-vmm: cannot install vCPU kick handler: {e}");
        }
    });
}

/// What a vCPU loop observed, for tests and diagnostics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExitStats {
    /// PIO writes dispatched.
    pub pio_out: u64,
    /// MMIO accesses to addresses no device claims: (address, is_write, bytes).
    pub unclaimed_mmio: Vec<(u64, bool, Vec<u8>)>,
}

/// Runs `vcpu` until a terminal exit or until `stop` is set.
///
/// `reset` is the i8042 reset line (checked after every PIO write). `halt_is_exit` treats
/// `KVM_EXIT_HLT` as the end of the guest (only meaningful without an in-kernel irqchip, where
/// HLT exits to userspace).
pub fn run_loop(
    vcpu: &mut VcpuFd,
    index: u8,
    pio: &Bus,
    mmio: &Bus,
    reset: &AtomicBool,
    stop: &AtomicBool,
    stats: &mut ExitStats,
) -> Result<Option<VmExit>, String> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let exit = match vcpu.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                stats.pio_out += 1;
                pio.write(u64::from(port), data);
                if reset.load(Ordering::SeqCst) {
                    return Ok(Some(VmExit::Reset));
                }
            }
            VcpuExit::IoIn(port, data) => {
                pio.read(u64::from(port), data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    stats.unclaimed_mmio.push((addr, false, data.to_vec()));
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !mmio.write(addr, data) {
                    stats.unclaimed_mmio.push((addr, true, data.to_vec()));
                }
            }
            VcpuExit::Hlt => return Ok(Some(VmExit::Halted)),
            VcpuExit::Shutdown => return Ok(Some(VmExit::Reset)),
            VcpuExit::SystemEvent(ty, _) => {
                return Ok(Some(match ty {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                    _ => VmExit::Reset,
                }));
            }
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
            VcpuExit::FailEntry(reason, cpu) => {
                return Err(format!("vcpu {index}: entry failed, reason {reason:#x} on cpu {cpu}"));
            }
            VcpuExit::InternalError => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(format!("vcpu {index}: KVM internal error (emulation failure?) at rip {rip:#x}"));
            }
            other => return Err(format!("vcpu {index}: unhandled exit {other:?}")),
        }
    }
}
