//! Full Linux boot through `capsem_vmm::run()` with a real kernel.
//!
//! Inputs: `CAPSEM_VMM_TEST_KERNEL` (vmlinux with PVH note, or bzImage) and optionally
//! `CAPSEM_VMM_TEST_INITRD`, whose init should print `HELLO-FROM-GUEST` and `reboot -f`.
//! On a kvm_pvm host (this project's machines) a standard kernel cannot boot, so the test says
//! so and returns; real-Linux boots are covered by the qemu backend under TCG there.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsem_vmm::{KvmStatus, VmConfig, VmExit, kvm_status, run};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn full_linux_boot() {
    match kvm_status() {
        KvmStatus::Pvm { .. } => {
            eprintln!(
                "kvm_pvm detected: standard Linux guests cannot boot on this host \
                 (see vm-boot-feasibility.md §1); full boot not run"
            );
            return;
        }
        KvmStatus::Unavailable { reason } => {
            eprintln!("kvm unavailable: {reason}; full boot not run");
            assert!(reason.contains("/dev/kvm"), "undocumented reason: {reason}");
            return;
        }
        KvmStatus::Available => {}
    }
    let Ok(kernel_path) = std::env::var("CAPSEM_VMM_TEST_KERNEL") else {
        eprintln!("CAPSEM_VMM_TEST_KERNEL is not set: no kernel given, full boot not run");
        return;
    };
    let kernel = std::fs::File::open(&kernel_path).unwrap_or_else(|e| panic!("{kernel_path}: {e}"));
    let initrd = std::env::var("CAPSEM_VMM_TEST_INITRD")
        .ok()
        .map(|p| std::fs::File::open(&p).unwrap_or_else(|e| panic!("{p}: {e}")));
    let khz = std::env::var("CAPSEM_VMM_TEST_TSC_KHZ").unwrap_or_else(|_| "2445000".into());
    let sink = Sink::default();
    let cfg = VmConfig {
        kernel,
        initrd,
        cmdline: format!("console=ttyS0 panic=-1 reboot=t noapictimer tsc_early_khz={khz}"),
        mem_mib: 512,
        vcpus: 1,
        disks: vec![],
        serial: Box::new(sink.clone()),
        vsock: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(cfg));
    });
    // Bounded: a hung guest fails the test instead of hanging CI (the VM thread is abandoned
    // and dies with the test process).
    let exit = rx.recv_timeout(Duration::from_secs(120));
    let out = String::from_utf8_lossy(&sink.0.lock().unwrap()).to_string();
    eprintln!("--- guest serial ---\n{out}\n---");
    let exit = exit.expect("guest did not reset within 120 s").expect("run() failed");
    assert_eq!(exit, VmExit::Reset);
    assert!(out.contains("Linux version"), "kernel printed its banner");
    if std::env::var("CAPSEM_VMM_TEST_INITRD").is_ok() {
        assert!(out.contains("HELLO-FROM-GUEST"), "init ran");
    }
}
