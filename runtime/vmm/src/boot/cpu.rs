//! Initial vCPU state: CPUID, MSRs, FPU, LAPIC LINT pins, segments, GDT and page tables.
//!
//! Owns the architectural state a kernel expects at its entry point:
//! * PVH: flat 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
//! * Linux64: long mode with the first 1 GiB identity mapped by 2 MiB pages, a 64-bit code
//!   segment, `%rsi` = zero page, stack at [`BOOT_STACK_POINTER`].

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::BootProtocol;
use crate::VmmError;
use crate::devices::virtio::GuestMem;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;

/// Packs a GDT entry from flags, base and limit (the kernel's GDT_ENTRY macro).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into a KVM segment with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The boot GDT for a protocol: null, code, data, TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    match protocol {
        BootProtocol::Linux64 => {
            [0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)]
        }
        BootProtocol::Pvh => {
            [0, gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x008b, 0, 0x67)]
        }
    }
}

/// Writes the identity map of the first 1 GiB (2 MiB pages) used by the 64-bit entry.
pub fn write_page_tables(mem: &GuestMem) -> Result<(), VmmError> {
    let err = |e: vm_memory::GuestMemoryError| VmmError::Memory(format!("page tables: {e}"));
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)).map_err(err)?;
    }
    Ok(())
}

/// Special registers for `protocol`; writes the GDT/IDT (and page tables for Linux64).
pub fn setup_sregs(mem: &GuestMem, sregs: &mut kvm_sregs, protocol: BootProtocol) -> Result<(), VmmError> {
    let gdt = boot_gdt(protocol);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|e| VmmError::Memory(format!("GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(|e| VmmError::Memory(format!("IDT: {e}")))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    match protocol {
        BootProtocol::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(protocol: BootProtocol, entry: GuestAddress) -> kvm_regs {
    let mut r = kvm_regs { rflags: 0x2, rip: entry.0, ..Default::default() };
    match protocol {
        BootProtocol::Linux64 => {
            r.rsp = BOOT_STACK_POINTER;
            r.rbp = BOOT_STACK_POINTER;
            r.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => r.rbx = PVH_INFO_START,
    }
    r
}

/// Adjusts KVM's supported CPUID for vCPU `id` of `count`: APIC ids and logical counts.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
}

/// Full architectural setup of vCPU `id`. The BSP (id 0) gets the entry state; APs stay in
/// KVM's wait-for-SIPI state and only need CPUID/MSRs/FPU.
pub fn setup_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    mem: &GuestMem,
    id: u8,
    count: u8,
    boot: Option<(BootProtocol, GuestAddress)>,
) -> Result<(), VmmError> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(VmmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    patch_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(VmmError::kvm("KVM_SET_CPUID2"))?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MSR_IA32_MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .map_err(|e| VmmError::Config(format!("MSR list: {e:?}")))?;
    vcpu.set_msrs(&msrs).map_err(VmmError::kvm("KVM_SET_MSRS"))?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(VmmError::kvm("KVM_SET_FPU"))?;
    set_lint(vcpu)?;
    if let Some((protocol, entry)) = boot {
        let mut sregs = vcpu.get_sregs().map_err(VmmError::kvm("KVM_GET_SREGS"))?;
        setup_sregs(mem, &mut sregs, protocol)?;
        vcpu.set_sregs(&sregs).map_err(VmmError::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&boot_regs(protocol, entry)).map_err(VmmError::kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// LINT0 = ExtINT (the 8259 PIC), LINT1 = NMI, as a BIOS would leave them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(VmmError::kvm("KVM_GET_LAPIC"))?;
    for (off, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *x as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(VmmError::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_expected_segments() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code64.l, code64.db, code64.present, code64.s), (1, 0, 1, 1));
        assert_eq!((code64.selector, code64.limit, code64.type_), (8, 0xffff_ffff, 0xb));
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn linux64_state_is_long_mode_with_identity_paging() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut s = kvm_sregs::default();
        setup_sregs(&mem, &mut s, BootProtocol::Linux64).unwrap();
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.l, 1);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83, "2 MiB page 1 maps itself");
        let r = boot_regs(BootProtocol::Linux64, GuestAddress(0x1000200));
        assert_eq!((r.rip, r.rsi, r.rsp), (0x1000200, ZERO_PAGE_START, BOOT_STACK_POINTER));
    }

    #[test]
    fn pvh_state_is_flat_protected_mode_without_paging() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut s = kvm_sregs { cr0: X86_CR0_PG, efer: EFER_LME, ..Default::default() };
        setup_sregs(&mem, &mut s, BootProtocol::Pvh).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.efer, s.cs.db, s.cs.l, s.cs.base), (0, 1, 0, 0));
        assert_eq!(s.ds.limit, 0xffff_ffff);
        let r = boot_regs(BootProtocol::Pvh, GuestAddress(0x1000));
        assert_eq!((r.rip, r.rbx), (0x1000, PVH_INFO_START));
    }

    #[test]
    fn cpuid_gets_apic_id_and_count() {
        let mut c = CpuId::new(2).unwrap();
        c.as_mut_slice()[0].function = 1;
        c.as_mut_slice()[0].ebx = 0xdead_beef;
        c.as_mut_slice()[1].function = 0xb;
        patch_cpuid(&mut c, 3, 4);
        assert_eq!(c.as_slice()[0].ebx, 0x0304_beef);
        assert_eq!(c.as_slice()[1].edx, 3);
    }
}
