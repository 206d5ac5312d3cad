//! Boot parameters: the kernel command line, the e820 map, the Linux zero page and PVH's
//! `hvm_start_info`.
//!
//! Owns the translation of a [`MemoryLayout`] plus kernel/initrd placement into the structures
//! the kernel reads at entry. Builders are pure (unit-tested field by field); the `write_*`
//! functions put them at the fixed addresses of [`crate::layout`] through linux-loader's
//! boot configurators.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use crate::VmmError;
use crate::devices::virtio::GuestMem;
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, MemoryLayout, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, VIRTIO_MMIO_SIZE, ZERO_PAGE_START,
};

/// x86 `COMMAND_LINE_SIZE` for kernels that do not state `cmdline_size` (PVH/ELF).
pub const DEFAULT_CMDLINE_SIZE: usize = 2048;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Builds the command line: `base`, then one `virtio_mmio.device=4K@<addr>:<irq>` per device.
/// `capacity` includes the terminating NUL (the kernel's `cmdline_size` + 1).
pub fn build_cmdline(base: &str, devices: &[(GuestAddress, u32)], capacity: usize) -> Result<Cmdline, VmmError> {
    let cap = capacity.min(CMDLINE_MAX_SIZE as usize);
    let mut c = Cmdline::try_from(base.trim(), cap).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    for &(addr, irq) in devices {
        c.add_virtio_mmio_device(VIRTIO_MMIO_SIZE, addr, irq, None)
            .map_err(|e| VmmError::Cmdline(format!("adding virtio-mmio device at {:#x}: {e}", addr.0)))?;
    }
    c.as_cstring().map_err(|e| VmmError::Cmdline(e.to_string()))?;
    Ok(c)
}

/// Writes the command line at [`CMDLINE_START`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMem, c: &Cmdline) -> Result<usize, VmmError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), c)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    Ok(c.as_cstring().map_err(|e| VmmError::Cmdline(e.to_string()))?.as_bytes().len())
}

/// The Linux zero page for the 64-bit boot protocol.
pub fn linux_boot_params(
    layout: &MemoryLayout,
    hdr: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = hdr {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.0 as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let e820 = layout.e820();
    for (i, e) in e820.iter().take(E820_MAX_ENTRIES_ZEROPAGE).enumerate() {
        p.e820_table[i] = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.ty as u32 };
    }
    p.e820_entries = e820.len().min(E820_MAX_ENTRIES_ZEROPAGE) as u8;
    p
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_linux_boot_params(mem: &GuestMem, p: &boot_params) -> Result<(), VmmError> {
    LinuxBootConfigurator::write_bootparams::<GuestMem>(&BootParams::new(p, GuestAddress(ZERO_PAGE_START)), mem)
        .map_err(|e| VmmError::BootParams(e.to_string()))
}

/// PVH start info, its memory map and the optional initrd module entry.
pub fn pvh_start_info(
    layout: &MemoryLayout,
    initrd: Option<(GuestAddress, u64)>,
) -> (hvm_start_info, Vec<hvm_memmap_table_entry>, Option<hvm_modlist_entry>) {
    let memmap: Vec<_> = layout
        .e820()
        .iter()
        .take(PVH_MEMMAP_MAX_ENTRIES as usize)
        .map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.ty as u32, reserved: 0 })
        .collect();
    let module = initrd.map(|(a, s)| hvm_modlist_entry { paddr: a.0, size: s, cmdline_paddr: 0, reserved: 0 });
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() { PVH_MODLIST_START } else { 0 },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, module)
}

/// Writes start info, memmap and module list at their fixed addresses.
pub fn write_pvh(
    mem: &GuestMem,
    info: &hvm_start_info,
    memmap: &[hvm_memmap_table_entry],
    module: Option<hvm_modlist_entry>,
) -> Result<(), VmmError> {
    let mut bp = BootParams::new(info, GuestAddress(PVH_INFO_START));
    bp.set_sections(memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(m) = module {
        bp.set_modules(&[m], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMem>(&bp, mem).map_err(|e| VmmError::BootParams(e.to_string()))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::layout::{E820Type, EBDA_START, HIMEM_START, MIB};

    #[test]
    fn cmdline_gets_one_virtio_entry_per_device() {
        let c = build_cmdline(
            " console=ttyS0 reboot=t ",
            &[(GuestAddress(0xd000_0000), 5), (GuestAddress(0xd000_1000), 6)],
            DEFAULT_CMDLINE_SIZE,
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn cmdline_too_long_or_with_nul_is_rejected() {
        let long = "a".repeat(100);
        assert!(matches!(build_cmdline(&long, &[], 50), Err(VmmError::Cmdline(_))));
        assert!(build_cmdline("ok", &[(GuestAddress(0xd000_0000), 5)], 20).is_err());
        assert!(build_cmdline("bad\0arg", &[], 64).is_err());
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let c = build_cmdline("console=ttyS0", &[], 64).unwrap();
        assert_eq!(write_cmdline(&mem, &c).unwrap(), 13);
        let mut b = [0u8; 14];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
    }

    #[test]
    fn zero_page_fields_and_e820() {
        let layout = MemoryLayout::new(256).unwrap();
        let hdr = setup_header { version: 0x020f, ..Default::default() };
        let p = linux_boot_params(&layout, Some(hdr), 42, Some((GuestAddress(0x0f00_0000), 1234)));
        let (flag, magic, loader, ptr, size) =
            (p.hdr.boot_flag, p.hdr.header, p.hdr.type_of_loader, p.hdr.cmd_line_ptr, p.hdr.cmdline_size);
        assert_eq!((flag, magic, loader), (0xaa55, 0x5372_6448, 0xff));
        assert_eq!((ptr, size), (CMDLINE_START as u32, 42));
        let (ri, rs, v) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size, p.hdr.version);
        assert_eq!((ri, rs, v), (0x0f00_0000, 1234, 0x020f));
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        let (a0, s0, t0) = (e[0].addr, e[0].size, e[0].r#type);
        let (a2, s2, t2) = (e[2].addr, e[2].size, e[2].r#type);
        assert_eq!((a0, s0, t0), (0, EBDA_START, E820Type::Ram as u32));
        assert_eq!((a2, s2, t2), (HIMEM_START, 256 * MIB - HIMEM_START, 1));
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_linux_boot_params(&mem, &p).unwrap();
        let back: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(back, 0xaa55, "boot_flag at its documented offset 0x1fe");
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_memmap_and_module() {
        let layout = MemoryLayout::new(4096).unwrap();
        let (info, memmap, module) = pvh_start_info(&layout, Some((GuestAddress(0x3000_0000), 77)));
        let magic = info.magic;
        assert_eq!(magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST_START));
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!((info.memmap_paddr, info.memmap_entries), (PVH_MEMMAP_START, 4));
        assert_eq!(memmap[3].addr, 4 << 30, "RAM above the hole is listed");
        assert_eq!(module.unwrap().paddr, 0x3000_0000);
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_pvh(&mem, &info, &memmap, module).unwrap();
        let m: u32 = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(m, XEN_HVM_START_MAGIC_VALUE);
        let size: u64 = mem.read_obj(GuestAddress(PVH_MODLIST_START + 8)).unwrap();
        assert_eq!(size, 77);
        let (_, _, none) = pvh_start_info(&layout, None);
        assert!(none.is_none());
    }
}
