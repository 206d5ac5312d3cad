//! Hypervisors behind one trait.
//!
//! A backend starts a VM from the **already verified, already open** boot assets ([`VmSpec`]
//! holds their file descriptors, never their paths) and exposes the guest agent's byte stream
//! on a host Unix socket ([`Channel`]). Backends:
//!
//! - [`qemu`]: drives Debian's `qemu-system-x86_64` (`-M microvm`), KVM acceleration when the
//!   host's KVM can boot standard guests, TCG otherwise. What CI boots.
//! - [`kvm`]: the in-process VMM of `capsem-vmm` (the only crate allowed `unsafe`).
//! - `vz`: macOS Virtualization.framework (`cfg(target_os = "macos")`, not built here).
//!
//! The agent channel is the same for every backend: the host listens on a Unix socket before
//! the VM starts and the guest's agent connects to it — over virtio-vsock (Firecracker's
//! hybrid-vsock convention: a guest connect to CID 2 port P reaches `<uds>_P`) or over a
//! virtio-serial port whose QEMU chardev connects to the socket.

pub mod kvm;
pub mod qemu;
#[cfg(target_os = "macos")]
pub mod vz;

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

/// The vsock port the agent connects to on the host (CID 2).
pub const AGENT_VSOCK_PORT: u32 = 5000;
/// The guest CID every VM gets (each VM has its own vsock device, so CIDs never collide).
pub const GUEST_CID: u64 = 3;
/// Name of the virtio-serial port that carries the agent stream in serial mode.
pub const AGENT_SERIAL_NAME: &str = "org.capsem.agent";

/// How the agent's byte stream leaves the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-vsock (under QEMU: vhost-user-vsock served by `vhost-device-vsock`).
    Vsock,
    /// A virtio-serial port (no helper process; one stream).
    Serial,
}

impl Transport {
    /// The kernel command-line argument that tells the agent where to connect.
    pub fn cmdline_arg(self) -> String {
        match self {
            Transport::Vsock => format!("capsem.agent=vsock:{AGENT_VSOCK_PORT}"),
            Transport::Serial => format!("capsem.agent=serial:{AGENT_SERIAL_NAME}"),
        }
    }

    /// Name as accepted by `--transport`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Vsock => "vsock",
            Transport::Serial => "serial",
        }
    }
}

/// Host-side endpoints of a VM, all inside the session's private run directory.
#[derive(Debug, Clone)]
pub struct Channel {
    pub transport: Transport,
    /// Where the host listens for the agent's connection.
    pub agent_socket: PathBuf,
    /// vsock only: the hybrid-vsock base path (`<uds>`; the agent's port is `<uds>_5000`).
    pub vsock_uds: PathBuf,
    /// vsock under QEMU only: the vhost-user socket between QEMU and `vhost-device-vsock`.
    pub vhost_socket: PathBuf,
}

impl Channel {
    /// The endpoints of a VM whose run directory is `run_dir`.
    pub fn new(transport: Transport, run_dir: &std::path::Path) -> Channel {
        let vsock_uds = run_dir.join("vsock.sock");
        let agent_socket = match transport {
            Transport::Vsock => run_dir.join(format!("vsock.sock_{AGENT_VSOCK_PORT}")),
            Transport::Serial => run_dir.join("agent.sock"),
        };
        Channel { transport, agent_socket, vsock_uds, vhost_socket: run_dir.join("vhost-vsock.sock") }
    }
}

/// Everything a backend needs to start a VM.
#[derive(Debug)]
pub struct VmSpec<'a> {
    pub kernel: &'a File,
    pub initrd: &'a File,
    /// The squashfs, attached read-only as the first virtio-blk disk (`/dev/vda`).
    pub rootfs: &'a File,
    /// Kernel command line without the console/timer arguments the backend adds itself.
    pub cmdline: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub channel: Channel,
    /// The guest's serial console is written here.
    pub console_log: PathBuf,
    /// The session's private directory (sockets, logs).
    pub run_dir: PathBuf,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted or powered off (what a clean shutdown looks like: `reboot=t` with
    /// QEMU's `-no-reboot`).
    Stopped,
    /// The VMM process ended abnormally.
    Failed(String),
}

/// A VM that is running.
pub trait RunningVm: std::fmt::Debug + Send {
    /// Waits up to `timeout`; `None` while still running.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError>;
    /// Stops the VM now (SIGKILL to its processes) and waits for it.
    fn kill(&mut self);
    /// Host processes that belong to this VM (for signal handlers that must kill them).
    fn pids(&self) -> Vec<u32>;
}

/// A hypervisor backend.
pub trait Hypervisor: std::fmt::Debug {
    /// `qemu`, `kvm` or `vz`.
    fn name(&self) -> &'static str;
    /// One line describing how it will run guests (accelerator, version).
    fn describe(&self) -> String;
    /// Starts the VM; returns once the VMM runs (the guest boots asynchronously).
    fn start(&self, spec: &VmSpec<'_>) -> Result<Box<dyn RunningVm>, VmError>;
}

/// Errors starting or running a VM. Each names the program or file involved.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{program} not found: {hint}")]
    MissingProgram { program: String, hint: String },
    #[error("starting {argv}: {source}")]
    Spawn { argv: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
}

/// Which backend `--hypervisor` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// `kvm` when the host's KVM can boot standard guests, else `qemu`.
    Auto,
    Qemu,
    Kvm,
}

/// The backend for `choice` on this host, or why there is none.
pub fn select(choice: Choice) -> Result<Box<dyn Hypervisor>, VmError> {
    match choice {
        Choice::Qemu => Ok(Box::new(qemu::Qemu::detect()?)),
        Choice::Kvm => Ok(Box::new(kvm::Kvm::detect()?)),
        Choice::Auto => match kvm::Kvm::detect() {
            Ok(k) => Ok(Box::new(k)),
            Err(_) => Ok(Box::new(qemu::Qemu::detect()?)),
        },
    }
}

/// Host TSC frequency in kHz, from /proc/cpuinfo's "cpu MHz". Linux under TCG on QEMU's microvm
/// has no HPET/ACPI PM timer to calibrate the TSC against and hangs at random without it
/// (vm-boot-feasibility.md §2.1).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// The console and timer arguments every x86 guest gets, before `spec.cmdline`.
pub fn base_cmdline(tsc_khz: Option<u64>) -> String {
    let mut line = String::from("console=ttyS0 quiet panic=-1 reboot=t noapictimer");
    if let Some(khz) = tsc_khz {
        // lpj = loops per jiffy at HZ=250 (our kernels' setting): skips delay-loop calibration.
        line.push_str(&format!(" tsc_early_khz={khz} lpj={}", khz * 1000 / 250));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_the_timer_arguments_and_the_agent_transport() {
        assert_eq!(
            base_cmdline(Some(2_445_000)),
            "console=ttyS0 quiet panic=-1 reboot=t noapictimer tsc_early_khz=2445000 lpj=9780000"
        );
        assert_eq!(base_cmdline(None), "console=ttyS0 quiet panic=-1 reboot=t noapictimer");
        assert_eq!(Transport::Vsock.cmdline_arg(), "capsem.agent=vsock:5000");
        assert_eq!(Transport::Serial.cmdline_arg(), "capsem.agent=serial:org.capsem.agent");
    }

    #[test]
    fn channel_paths_follow_the_hybrid_vsock_convention() {
        let c = Channel::new(Transport::Vsock, std::path::Path::new("/r"));
        assert_eq!(c.agent_socket, std::path::Path::new("/r/vsock.sock_5000"));
        assert_eq!(c.vsock_uds, std::path::Path::new("/r/vsock.sock"));
        let s = Channel::new(Transport::Serial, std::path::Path::new("/r"));
        assert_eq!(s.agent_socket, std::path::Path::new("/r/agent.sock"));
    }

    #[test]
    fn host_tsc_frequency_is_read_from_cpuinfo() {
        // Every x86 Linux host we run on reports "cpu MHz".
        let khz = host_tsc_khz().expect("/proc/cpuinfo has a cpu MHz line");
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
