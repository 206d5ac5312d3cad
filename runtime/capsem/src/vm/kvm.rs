//! The `kvm` backend: the in-process VMM of `capsem-vmm`, run on a thread of `capsem` itself.
//!
//! It boots the guest only where `/dev/kvm` runs standard Linux guests natively. Our build and
//! CI machines expose kvm_pvm (a paravirtual KVM on which a stock kernel cannot boot, see
//! vm-boot-feasibility.md §1): there [`Kvm::detect`] refuses with the reason, and `auto` picks
//! the `qemu` backend. The agent channel is virtio-vsock in Firecracker's hybrid style, so the
//! host side is the very socket the `qemu` backend uses with `vhost-device-vsock`.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Hypervisor, RunningVm, Transport, VmError, VmExit, VmSpec, base_cmdline, host_tsc_khz};

/// The in-process VMM, when this host can run it.
#[derive(Debug, Clone, Copy)]
pub struct Kvm;

impl Kvm {
    /// `Ok` only when `/dev/kvm` can boot standard Linux guests on this host.
    pub fn detect() -> Result<Kvm, VmError> {
        match capsem_vmm::kvm_status() {
            capsem_vmm::KvmStatus::Available => Ok(Kvm),
            capsem_vmm::KvmStatus::Pvm { reason } | capsem_vmm::KvmStatus::Unavailable { reason } => {
                Err(VmError::Unsupported(format!("the kvm backend cannot run here: {reason}; use --hypervisor qemu")))
            }
        }
    }
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn describe(&self) -> String {
        "kvm (in-process VMM on /dev/kvm)".into()
    }

    fn start(&self, spec: &VmSpec<'_>) -> Result<Box<dyn RunningVm>, VmError> {
        if spec.channel.transport != Transport::Vsock {
            return Err(VmError::Unsupported(
                "the kvm backend carries the agent over vsock only; use --transport vsock".into(),
            ));
        }
        let dup = |f: &std::fs::File, what: &str| {
            f.try_clone().map_err(|source| VmError::Io { what: format!("duplicating the verified {what}"), source })
        };
        let console = std::fs::File::create(&spec.console_log)
            .map_err(|source| VmError::Io { what: format!("creating {}", spec.console_log.display()), source })?;
        let cfg = capsem_vmm::VmConfig {
            kernel: dup(spec.kernel, "kernel")?,
            initrd: Some(dup(spec.initrd, "initrd")?),
            cmdline: format!("{} {}", base_cmdline(host_tsc_khz()), spec.cmdline),
            mem_mib: spec.memory_mib,
            vcpus: spec.cpus,
            disks: vec![capsem_vmm::DiskConfig { file: dup(spec.rootfs, "rootfs")?, read_only: true }],
            serial: Box::new(console),
            vsock: Some(capsem_vmm::VsockConfig {
                guest_cid: super::GUEST_CID,
                uds_path: spec.channel.vsock_uds.clone(),
            }),
        };
        let thread = std::thread::Builder::new()
            .name("capsem-vmm".into())
            .spawn(move || capsem_vmm::run(cfg).map(|exit| format!("{exit:?}")).map_err(|e| e.to_string()))
            .map_err(|source| VmError::Io { what: "starting the VMM thread".into(), source })?;
        Ok(Box::new(KvmVm { thread: Some(thread) }))
    }
}

/// The VMM thread. It cannot be killed from outside: `kill` detaches it and the process exit
/// ends it (`capsem` exits right after a VM ends).
#[derive(Debug)]
struct KvmVm {
    thread: Option<JoinHandle<Result<String, String>>>,
}

impl RunningVm for KvmVm {
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError> {
        let start = Instant::now();
        loop {
            match &self.thread {
                None => return Ok(Some(VmExit::Stopped)),
                Some(t) if t.is_finished() => {
                    let t = self.thread.take().expect("checked");
                    return Ok(Some(match t.join() {
                        Ok(Ok(_)) => VmExit::Stopped,
                        Ok(Err(e)) => VmExit::Failed(format!("kvm VMM: {e}")),
                        Err(_) => VmExit::Failed("kvm VMM thread panicked".into()),
                    }));
                }
                Some(_) if start.elapsed() >= timeout => return Ok(None),
                Some(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn kill(&mut self) {
        self.thread = None;
    }

    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
}
