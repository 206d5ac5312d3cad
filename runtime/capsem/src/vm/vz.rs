//! The `vz` backend: Apple's Virtualization.framework on macOS (`cfg(target_os = "macos")`).
//!
//! Not built on our Linux machines, and not implemented yet: the design is a
//! `VZVirtualMachineConfiguration` with `VZLinuxBootLoader` (kernel, initrd and command line
//! from the verified descriptors), a read-only `VZDiskImageStorageDeviceAttachment` for the
//! rootfs, `VZVirtioConsoleDeviceSerialPortConfiguration` for the console and
//! `VZVirtioSocketDeviceConfiguration` for the agent channel (the guest agent already speaks
//! vsock). Until then `start` says so instead of pretending.

use super::{Hypervisor, RunningVm, VmError, VmSpec};

/// Virtualization.framework.
#[derive(Debug, Clone, Copy)]
pub struct Vz;

impl Hypervisor for Vz {
    fn name(&self) -> &'static str {
        "vz"
    }

    fn describe(&self) -> String {
        "vz (Virtualization.framework)".into()
    }

    fn start(&self, _spec: &VmSpec<'_>) -> Result<Box<dyn RunningVm>, VmError> {
        Err(VmError::Unsupported("the vz backend is not implemented yet; see runtime/capsem/src/vm/vz.rs".into()))
    }
}
