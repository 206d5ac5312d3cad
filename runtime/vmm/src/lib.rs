//! capsem-vmm: the in-process KVM virtual machine monitor behind capsem's `kvm` backend.
//!
//! This crate owns everything that touches `/dev/kvm` and guest memory; it is the only crate of
//! the workspace where `unsafe` is allowed (DESIGN.md §2), and every `unsafe` block states its
//! invariants in a `// SAFETY:` comment. Guest memory is only accessed through `vm-memory`.
//!
//! The public surface is deliberately small:
//!
//! * [`kvm_status`] tells whether this host can run standard Linux guests under KVM
//!   ([`KvmStatus::Pvm`] means `/dev/kvm` is the paravirtual `kvm_pvm`, where ring-0 guest code is
//!   emulated and a stock kernel cannot boot; see `vm-boot-feasibility.md` §1).
//! * [`VmConfig`] describes a micro-VM from already-open, already-verified file descriptors
//!   (the VMM never reopens anything by path).
//! * [`run`] boots it and blocks until the guest resets or shuts down.
//!
//! Module map: [`layout`] (guest physical address map), [`boot`] (kernel loading, boot params,
//! e820, cmdline, vCPU register setup), [`devices`] (16550 serial, virtio-mmio transport,
//! virtio block/console/vsock), [`vm`] (KVM VM, buses, vCPU loop), [`status`] (host probing).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

pub mod boot;
pub mod devices;
pub mod layout;
pub mod status;
pub mod vm;

#[cfg(test)]
mod testutil;

pub use status::{KvmStatus, kvm_status};
pub use vm::run;

/// A disk exposed to the guest as a virtio-blk device (`/dev/vda`, `/dev/vdb`, … in order).
#[derive(Debug)]
pub struct DiskConfig {
    /// The already-open backing file; reads and writes use `pread`/`pwrite` on it.
    pub file: File,
    /// When true the device advertises `VIRTIO_BLK_F_RO` and every write fails with
    /// `VIRTIO_BLK_S_IOERR`.
    pub read_only: bool,
}

/// A virtio-vsock device multiplexed onto host Unix sockets (Firecracker's hybrid vsock).
///
/// Guest connects to CID 2 port P → the VMM connects to `<uds_path>_P`. A host process connects
/// to `<uds_path>` and writes `CONNECT <port>\n`; once the guest accepts, it reads `OK <port>\n`.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (≥ 3).
    pub guest_cid: u64,
    /// Path of the host-side listening socket the VMM creates (removed first if stale).
    pub uds_path: PathBuf,
}

/// Everything needed to boot one micro-VM.
pub struct VmConfig {
    /// ELF `vmlinux` (PVH entry preferred) or bzImage (64-bit boot protocol).
    pub kernel: File,
    /// Optional initramfs.
    pub initrd: Option<File>,
    /// Kernel command line; `virtio_mmio.device=` entries are appended for every device.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Number of vCPUs (≥ 1).
    pub vcpus: u8,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskConfig>,
    /// Receives the 16550 serial output (ttyS0) and the virtio console output (hvc0).
    pub serial: Box<dyn Write + Send>,
    /// Optional virtio-vsock device.
    pub vsock: Option<VsockConfig>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("mem_mib", &self.mem_mib)
            .field("vcpus", &self.vcpus)
            .field("disks", &self.disks)
            .field("vsock", &self.vsock)
            .finish_non_exhaustive()
    }
}

/// Why [`run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (triple fault, `reboot=t`; i8042 reset line; system-event
    /// reset). capsem guests end with `reboot -f`, so this is the normal end of a session.
    Reset,
    /// The guest powered off (KVM system event shutdown).
    Shutdown,
    /// Every vCPU executed `hlt` with interrupts unable to wake it (no in-kernel irqchip).
    Halted,
}

/// Errors from building or running a VM. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` cannot be used at all.
    #[error("kvm unavailable: {0}")]
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm {
        /// The operation (ioctl name).
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The requested configuration is not valid (memory size, vCPU count, …).
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel image could not be loaded.
    #[error("loading kernel: {0}")]
    Kernel(String),
    /// The initrd could not be placed or read.
    #[error("loading initrd: {0}")]
    Initrd(String),
    /// The kernel command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot parameters failed.
    #[error("boot parameters: {0}")]
    BootParams(String),
    /// A device could not be set up.
    #[error("device {device}: {message}")]
    Device {
        /// Which device.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// A vCPU hit an exit the VMM cannot handle.
    #[error("vcpu {vcpu}: {message}")]
    Vcpu {
        /// vCPU index.
        vcpu: u8,
        /// What happened (exit reason, registers).
        message: String,
    },
    /// Host I/O error (threads, sockets) with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl VmmError {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Kvm { op, source }
    }
}
