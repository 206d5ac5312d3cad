//! Smoke test on the real /dev/kvm: a hand-assembled real-mode payload drives the same buses
//! and vCPU loop that `run()` uses.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::BusDevice;
use crate::testutil::{CountingIrq, VecWriter};

/// Real-mode payload loaded at 0x1000 (CS = DS = 0), instruction by instruction:
///
/// ```text
/// 1000: BA F8 03   mov dx, 0x3f8        ; COM1 data port
/// 1003: BE 20 10   mov si, 0x1020       ; message
/// 1006: AC         lodsb                ; al = [ds:si], si += 1
/// 1007: 84 C0      test al, al
/// 1009: 74 03      jz 0x100e            ; NUL ends the string
/// 100b: EE         out dx, al           ; PIO exit → 16550 THR → serial writer
/// 100c: EB F8      jmp 0x1006
/// 100e: A0 00 80   mov al, [0x8000]     ; MMIO read exit (0x8000 is not RAM): device says 'B'
/// 1011: EE         out dx, al           ; prints it
/// 1012: A2 01 80   mov [0x8001], al     ; MMIO write exit of the same byte
/// 1015: F4         hlt                  ; no irqchip → KVM_EXIT_HLT → VmExit::Halted
/// 1020: "Hello from capsem-vmm\n\0"
/// ```
const CODE: &[u8] = &[
    0xba, 0xf8, 0x03, 0xbe, 0x20, 0x10, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xa0, 0x00, 0x80, 0xee, 0xa2,
    0x01, 0x80, 0xf4,
];
const MSG: &[u8] = b"Hello from capsem-vmm\n\0";

#[derive(Default)]
struct MmioProbe {
    reads: Vec<u64>,
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for MmioProbe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push(offset);
        data.fill(b'B');
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn real_kvm_smoke_serial_pio_and_mmio_exits() {
    match kvm_status() {
        KvmStatus::Unavailable { reason } => {
            eprintln!("kvm unavailable: {reason} — smoke payload NOT run");
            assert!(reason.contains("/dev/kvm"), "undocumented reason: {reason}");
            return;
        }
        st => eprintln!("kvm status: {st:?}; running the smoke payload on /dev/kvm"),
    }
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    // 16 KiB of RAM: 0x8000 is outside every memslot, so accesses there exit as MMIO.
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    register_memory(&vm, &mem).unwrap();
    mem.write_slice(CODE, GuestAddress(0x1000)).unwrap();
    mem.write_slice(MSG, GuestAddress(0x1020)).unwrap();

    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs { rip: 0x1000, rflags: 0x2, ..Default::default() };
    vcpu.set_regs(&regs).unwrap();

    let sink = VecWriter::default();
    let serial = SerialDevice::new(Arc::new(CountingIrq::default()), SharedWriter::new(Box::new(sink.clone())));
    let probe = Arc::new(Mutex::new(MmioProbe::default()));
    let mut pio = Bus::new();
    pio.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial))).unwrap();
    let mut mmio = Bus::new();
    mmio.insert(0x8000, 0x10, probe.clone()).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = run_vcpus(vec![vcpu], pio, mmio, Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let _ = tx.send(r);
        drop(vm);
    });
    // Emulated real mode on kvm_pvm runs ~1 M instr/s; the payload is ~150 instructions.
    let exit = rx.recv_timeout(Duration::from_secs(60)).expect("payload did not finish in 60 s");
    let exit = exit.unwrap();
    let out = String::from_utf8_lossy(&sink.contents()).to_string();
    eprintln!("serial: {out:?}; exit: {exit:?}");
    assert_eq!(out, "Hello from capsem-vmm\nB");
    assert_eq!(exit, VmExit::Halted);
    let p = lock(&probe);
    assert_eq!(p.reads, vec![0], "one MMIO read at 0x8000");
    assert_eq!(p.writes, vec![(1, vec![b'B'])], "one MMIO write of 'B' at 0x8001");
}

/// 32-bit PVH payload for `run()`: checks `hvm_start_info` and echoes the kernel command line
/// the VMM wrote, then resets through the i8042.
///
/// ```text
/// 00: 66 BA F8 03          mov dx, 0x3f8
/// 04: 81 3B 78 C5 6E 33    cmp dword [ebx], 0x336ec578   ; hvm_start_info.magic
/// 0a: 75 0D                jne 0x19                       ; wrong magic: print nothing
/// 0c: BE 00 00 02 00       mov esi, 0x20000               ; CMDLINE_START
/// 11: AC                   lodsb
/// 12: 84 C0                test al, al
/// 14: 74 03                jz 0x19
/// 16: EE                   out dx, al                     ; serial
/// 17: EB F8                jmp 0x11
/// 19: B0 FE                mov al, 0xfe
/// 1b: E6 64                out 0x64, al                   ; i8042 reset → VmExit::Reset
/// 1d: F4                   hlt
/// ```
const PVH_CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, 0x75, 0x0d, 0xbe, 0x00, 0x00, 0x02, 0x00, 0xac, 0x84,
    0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
];

#[test]
fn run_boots_a_tiny_pvh_kernel_end_to_end() {
    if let KvmStatus::Unavailable { reason } = kvm_status() {
        eprintln!("kvm unavailable: {reason} — run() end-to-end NOT run");
        assert!(reason.contains("/dev/kvm"), "undocumented reason: {reason}");
        return;
    }
    use std::io::Write;
    let mut kernel = tempfile::tempfile().unwrap();
    kernel.write_all(&crate::testutil::pvh_elf(PVH_CODE, 0)).unwrap();
    let mut disk = tempfile::tempfile().unwrap();
    disk.write_all(&[0u8; 4096]).unwrap();
    let mut initrd = tempfile::tempfile().unwrap();
    initrd.write_all(b"not really a cpio").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = VecWriter::default();
    let cfg = crate::VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 reboot=k".into(),
        mem_mib: 64,
        vcpus: 1,
        disks: vec![crate::DiskConfig { file: disk, read_only: true }],
        serial: Box::new(sink.clone()),
        vsock: Some(crate::VsockConfig { guest_cid: 3, uds_path: dir.path().join("v.sock") }),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(cfg));
    });
    let exit = rx.recv_timeout(Duration::from_secs(120)).expect("run() did not return in 120 s");
    let out = String::from_utf8_lossy(&sink.contents()).to_string();
    eprintln!("serial: {out:?}; exit: {exit:?}");
    assert_eq!(exit.unwrap(), VmExit::Reset);
    assert_eq!(
        out,
        "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 \
         virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7"
    );
    assert!(!dir.path().join("v.sock").exists(), "vsock socket removed on exit");
}
