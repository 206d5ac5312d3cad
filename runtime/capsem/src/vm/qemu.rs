//! The `qemu` backend: drives Debian's `qemu-system-x86_64` as an existing engine.
//!
//! - Machine: `-M microvm,acpi=off` (no firmware, no PCI; virtio-mmio devices announced on the
//!   kernel command line by QEMU itself), `-no-reboot` so a guest reboot (`reboot=t`, what the
//!   agent does on shutdown and init does on a fatal error) ends the process.
//! - Accelerator: KVM when `/dev/kvm` can boot standard guests; TCG otherwise (our machines'
//!   KVM is kvm_pvm, see vm-boot-feasibility.md §1).
//! - Boot assets: the verified file descriptors are inherited by QEMU as fds 3–5 and named
//!   `/proc/self/fd/N`, so QEMU opens exactly the inodes that were verified, whatever happens to
//!   the paths afterwards. The rootfs is a read-only virtio-blk disk.
//! - Agent channel: vhost-user-vsock served by `vhost-device-vsock` (crates.io), or a
//!   virtio-serial port whose chardev connects to the host's socket.
//! - Lifetime: QEMU and `vhost-device-vsock` run under `setpriv --pdeathsig KILL`, so they die
//!   with the `capsem` thread that started them, even when `capsem` is SIGKILLed.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};

use super::{Hypervisor, RunningVm, Transport, VmError, VmExit, VmSpec, base_cmdline, host_tsc_khz};

/// Environment variable naming the QEMU binary (default: `qemu-system-x86_64` on PATH).
pub const QEMU_ENV: &str = "CAPSEM_QEMU";
/// Environment variable naming the `vhost-device-vsock` binary (default: PATH, then
/// `~/.cargo/bin`).
pub const VHOST_VSOCK_ENV: &str = "CAPSEM_VHOST_DEVICE_VSOCK";

/// Child fd numbers of the boot assets inside QEMU.
const KERNEL_FD: i32 = 3;
const INITRD_FD: i32 = 4;
const ROOTFS_FD: i32 = 5;

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The detected QEMU installation.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
    /// Why KVM is not used, when it is not.
    pub accel_reason: String,
    /// `vhost-device-vsock`, when installed (needed for the vsock transport).
    pub vhost_vsock: Option<PathBuf>,
}

/// `name` on PATH, as an absolute path.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Where `vhost-device-vsock` is: `$CAPSEM_VHOST_DEVICE_VSOCK`, PATH, then `~/.cargo/bin`
/// (where `cargo install` and `cargo xtask deps` put it).
pub fn find_vhost_vsock() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(VHOST_VSOCK_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    find_in_path("vhost-device-vsock").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(cargo_home.join("bin/vhost-device-vsock")).filter(|p| p.is_file())
    })
}

/// Whether `/dev/kvm` can boot a standard Linux guest here, and if not why.
pub fn kvm_usable() -> Result<(), String> {
    match capsem_vmm::kvm_status() {
        capsem_vmm::KvmStatus::Available => Ok(()),
        capsem_vmm::KvmStatus::Pvm { reason } | capsem_vmm::KvmStatus::Unavailable { reason } => Err(reason),
    }
}

impl Qemu {
    /// Finds QEMU and picks the accelerator.
    pub fn detect() -> Result<Qemu, VmError> {
        let binary = match std::env::var_os(QEMU_ENV).filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| VmError::MissingProgram {
                program: "qemu-system-x86_64".into(),
                hint: "install Debian's qemu-system-x86 (`cargo xtask deps` does), or set CAPSEM_QEMU".into(),
            })?,
        };
        let (accel, accel_reason) = match kvm_usable() {
            Ok(()) => (Accel::Kvm, String::new()),
            Err(why) => (Accel::Tcg, why),
        };
        Ok(Qemu { binary, accel, accel_reason, vhost_vsock: find_vhost_vsock() })
    }

    /// QEMU's arguments for `spec` (after the binary). Pure: unit-tested.
    pub fn args(&self, spec: &VmSpec<'_>, tsc_khz: Option<u64>) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        let mem = format!("{}M", spec.memory_mib);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg if spec.cpus > 1 => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        let vsock = spec.channel.transport == Transport::Vsock;
        // vhost-user needs guest RAM the backend process can map: a shared memfd.
        let machine = if vsock { "microvm,acpi=off,memory-backend=mem" } else { "microvm,acpi=off" };
        push(&["-M", machine, "-m", &mem, "-smp", &spec.cpus.to_string()]);
        if vsock {
            push(&["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")]);
        }
        push(&["-no-reboot", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"]);
        push(&[
            "-chardev",
            &format!("file,id=console,path={}", spec.console_log.display()),
            "-serial",
            "chardev:console",
        ]);
        let fd = |n: i32| format!("/proc/self/fd/{n}");
        push(&["-kernel", &fd(KERNEL_FD), "-initrd", &fd(INITRD_FD)]);
        push(&[
            "-drive",
            &format!("id=rootfs,file={},format=raw,if=none,readonly=on", fd(ROOTFS_FD)),
            "-device",
            "virtio-blk-device,drive=rootfs",
        ]);
        push(&["-device", "virtio-rng-device"]);
        match spec.channel.transport {
            Transport::Vsock => push(&[
                "-chardev",
                &format!("socket,id=vhost-vsock,path={}", spec.channel.vhost_socket.display()),
                "-device",
                "vhost-user-vsock-device,chardev=vhost-vsock",
            ]),
            Transport::Serial => push(&[
                "-device",
                "virtio-serial-device",
                "-chardev",
                &format!("socket,id=agent,path={}", spec.channel.agent_socket.display()),
                "-device",
                &format!("virtserialport,chardev=agent,name={}", super::AGENT_SERIAL_NAME),
            ]),
        }
        let cmdline = format!("{} {}", base_cmdline(tsc_khz), spec.cmdline);
        push(&["-append", &cmdline]);
        a
    }
}

/// `setpriv --pdeathsig KILL -- program args…`: the child dies with the thread that spawned it.
fn orphan_proof(program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg("--pdeathsig").arg("KILL").arg("--").arg(program).args(args);
    c
}

fn argv_line(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

fn log_file(path: &Path) -> Result<File, VmError> {
    File::create(path).map_err(|source| VmError::Io { what: format!("creating {}", path.display()), source })
}

fn dup(file: &File, what: &str) -> Result<OwnedFd, VmError> {
    file.try_clone()
        .map(OwnedFd::from)
        .map_err(|source| VmError::Io { what: format!("duplicating the verified {what} descriptor"), source })
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn describe(&self) -> String {
        match self.accel {
            Accel::Kvm => format!("qemu ({}, KVM)", self.binary.display()),
            Accel::Tcg => format!("qemu ({}, TCG: {})", self.binary.display(), self.accel_reason),
        }
    }

    fn start(&self, spec: &VmSpec<'_>) -> Result<Box<dyn RunningVm>, VmError> {
        let mut vm = QemuVm { qemu: None, vhost: None, log: spec.run_dir.join("qemu.log") };
        if spec.channel.transport == Transport::Vsock {
            let program = self.vhost_vsock.clone().ok_or_else(|| VmError::MissingProgram {
                program: "vhost-device-vsock".into(),
                hint: "install it with `cargo install --locked vhost-device-vsock@0.3.0` (`cargo xtask deps` does), \
                       set CAPSEM_VHOST_DEVICE_VSOCK, or use --transport serial"
                    .into(),
            })?;
            let args: Vec<String> = vec![
                "--guest-cid".into(),
                super::GUEST_CID.to_string(),
                "--socket".into(),
                spec.channel.vhost_socket.display().to_string(),
                "--uds-path".into(),
                spec.channel.vsock_uds.display().to_string(),
            ];
            let log_path = spec.run_dir.join("vhost-device-vsock.log");
            let log = log_file(&log_path)?;
            let child = orphan_proof(&program, &args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|source| VmError::Io { what: "log".into(), source })?)
                .stderr(log)
                .spawn()
                .map_err(|source| VmError::Spawn { argv: argv_line(&program, &args), source })?;
            vm.vhost = Some(child);
            wait_for_socket(&spec.channel.vhost_socket, vm.vhost.as_mut().expect("just set"), &log_path)?;
        }
        let args = self.args(spec, host_tsc_khz());
        let log = log_file(&vm.log)?;
        let mut cmd = orphan_proof(&self.binary, &args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|source| VmError::Io { what: "log".into(), source })?)
            .stderr(log);
        cmd.fd_mappings(vec![
            FdMapping { parent_fd: dup(spec.kernel, "kernel")?, child_fd: KERNEL_FD },
            FdMapping { parent_fd: dup(spec.initrd, "initrd")?, child_fd: INITRD_FD },
            FdMapping { parent_fd: dup(spec.rootfs, "rootfs")?, child_fd: ROOTFS_FD },
        ])
        .map_err(|e| VmError::Failed(format!("mapping the boot asset descriptors: {e}")))?;
        let child = cmd.spawn().map_err(|source| VmError::Spawn { argv: argv_line(&self.binary, &args), source })?;
        vm.qemu = Some(child);
        Ok(Box::new(vm))
    }
}

/// Waits (≤ 10 s) until `vhost-device-vsock` listens on its socket.
fn wait_for_socket(path: &Path, child: &mut Child, log: &Path) -> Result<(), VmError> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmError::Failed(format!(
                "vhost-device-vsock exited ({status}) before listening on {}: {}",
                path.display(),
                tail(log, 5)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(VmError::Failed(format!("vhost-device-vsock did not create {} within 10 s: {}", path.display(), tail(log, 5))))
}

/// A running QEMU (and its vsock backend).
#[derive(Debug)]
struct QemuVm {
    qemu: Option<Child>,
    vhost: Option<Child>,
    log: PathBuf,
}

impl RunningVm for QemuVm {
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError> {
        let Some(qemu) = self.qemu.as_mut() else { return Ok(Some(VmExit::Stopped)) };
        let start = Instant::now();
        loop {
            match qemu.try_wait() {
                Ok(Some(status)) => {
                    self.qemu = None;
                    self.kill();
                    return Ok(Some(if status.success() {
                        VmExit::Stopped
                    } else {
                        VmExit::Failed(format!("qemu exited with {status}: {}", tail(&self.log, 5)))
                    }));
                }
                Ok(None) => {}
                Err(source) => return Err(VmError::Io { what: "waiting for qemu".into(), source }),
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5).min(timeout));
        }
    }

    fn kill(&mut self) {
        for child in [self.qemu.take(), self.vhost.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.qemu.iter().chain(self.vhost.iter()).map(Child::id).collect()
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Channel;

    fn spec<'a>(f: &'a File, transport: Transport, cpus: u8) -> VmSpec<'a> {
        VmSpec {
            kernel: f,
            initrd: f,
            rootfs: f,
            cmdline: "capsem.agent=vsock:5000".into(),
            cpus,
            memory_mib: 512,
            channel: Channel::new(transport, Path::new("/run/x")),
            console_log: "/run/x/console.log".into(),
            run_dir: "/run/x".into(),
        }
    }

    #[test]
    fn qemu_arguments_name_the_inherited_descriptors_and_the_channel() {
        let f = File::open("/dev/null").unwrap();
        let q =
            Qemu { binary: "/usr/bin/qemu".into(), accel: Accel::Tcg, accel_reason: String::new(), vhost_vsock: None };
        let vsock = q.args(&spec(&f, Transport::Vsock, 1), Some(2_000_000)).join(" ");
        expect_test::expect![[r#"-accel tcg -cpu max -M microvm,acpi=off,memory-backend=mem -m 512M -smp 1 -object memory-backend-memfd,id=mem,size=512M,share=on -no-reboot -nodefaults -no-user-config -display none -monitor none -chardev file,id=console,path=/run/x/console.log -serial chardev:console -kernel /proc/self/fd/3 -initrd /proc/self/fd/4 -drive id=rootfs,file=/proc/self/fd/5,format=raw,if=none,readonly=on -device virtio-blk-device,drive=rootfs -device virtio-rng-device -chardev socket,id=vhost-vsock,path=/run/x/vhost-vsock.sock -device vhost-user-vsock-device,chardev=vhost-vsock -append console=ttyS0 quiet panic=-1 reboot=t noapictimer tsc_early_khz=2000000 lpj=8000000 capsem.agent=vsock:5000"#]].assert_eq(&vsock);
        let serial = q.args(&spec(&f, Transport::Serial, 2), None).join(" ");
        assert!(serial.contains("-accel tcg,thread=multi"), "{serial}");
        assert!(!serial.contains("memory-backend"), "{serial}");
        assert!(
            serial.contains("-device virtio-serial-device -chardev socket,id=agent,path=/run/x/agent.sock -device virtserialport,chardev=agent,name=org.capsem.agent"),
            "{serial}"
        );
        let kvm = Qemu { accel: Accel::Kvm, ..q };
        assert!(kvm.args(&spec(&f, Transport::Serial, 1), None).join(" ").starts_with("-accel kvm -cpu host"));
    }
}
