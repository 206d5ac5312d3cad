//! The guest physical address map: where RAM, boot structures and device windows live.
//!
//! Owns every fixed guest address the VMM uses and the rules that relate them:
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)          0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info       0x0000_6040  PVH module list   0x0000_6080  PVH memmap
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  boot stack pointer
//! 0x0000_9000  PML4   0x0000_a000  PDPT   0x0000_b000  PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA: MP table           0x000a_0000–0x0010_0000 legacy hole (not RAM)
//! 0x0010_0000  kernel (HIMEM_START) … initrd at the top of low RAM
//! 0xc000_0000–0x1_0000_0000  32-bit MMIO hole: virtio-mmio windows at 0xd000_0000 (4 KiB each),
//!              IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000  RAM above the hole when the guest has more than 3 GiB
//! ```
//!
//! Nothing here touches guest memory: it only computes addresses, so it is fully unit-tested.

use vm_memory::GuestAddress;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Boot GDT (4 × 8-byte entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (a single null descriptor; interrupts stay disabled until the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Maximum number of PVH memmap entries (they must end before the zero page).
pub const PVH_MEMMAP_MAX_ENTRIES: u64 = (ZERO_PAGE_START - PVH_MEMMAP_START) / 24;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 for the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 × 2 MiB = the first 1 GiB identity mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we place (the kernel's own limit, `cmdline_size`, may be smaller).
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte of the legacy VGA/BIOS hole (not RAM).
pub const LEGACY_HOLE_START: u64 = 0xa0000;
/// Where the kernel is loaded, and the start of "high memory" for the loaders.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 4 * GIB;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device (4 is the serial port).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// How many virtio-mmio devices fit (IRQs 5..=23 on the IOAPIC's 24 pins).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// IOAPIC base (inside the hole; used by the MP table).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Smallest guest we build.
pub const MIN_MEM_MIB: u32 = 16;
/// Largest guest we build.
pub const MAX_MEM_MIB: u32 = 512 * 1024;
/// Initrd limit when the kernel does not state one (boot protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// An e820 memory type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub ty: E820Type,
}

/// Errors computing the layout or placing something in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Memory size outside [MIN_MEM_MIB, MAX_MEM_MIB].
    #[error("guest memory of {mib} MiB is out of range ({min}..={max} MiB)")]
    MemSize {
        /// Requested.
        mib: u32,
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
    /// A range is not entirely inside guest RAM.
    #[error("range {addr:#x}+{len:#x} is not inside guest RAM")]
    OutOfRange {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The initrd does not fit between the kernel and the limit.
    #[error("initrd of {size} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// Highest usable address (exclusive).
        limit: u64,
    },
    /// Too many virtio devices.
    #[error("virtio-mmio device index {0} exceeds the {MAX_VIRTIO_DEVICES} available windows")]
    TooManyDevices(usize),
}

/// The RAM regions of one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<(GuestAddress, u64)>,
}

impl MemoryLayout {
    /// Lays out `mem_mib` MiB of RAM around the 32-bit MMIO hole.
    pub fn new(mem_mib: u32) -> Result<Self, LayoutError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
            return Err(LayoutError::MemSize { mib: mem_mib, min: MIN_MEM_MIB, max: MAX_MEM_MIB });
        }
        let size = u64::from(mem_mib) * MIB;
        let mut regions = Vec::new();
        if size <= MMIO_HOLE_START {
            regions.push((GuestAddress(0), size));
        } else {
            regions.push((GuestAddress(0), MMIO_HOLE_START));
            regions.push((GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START));
        }
        Ok(MemoryLayout { regions })
    }

    /// RAM regions as (start, length), ascending, suitable for `GuestMemoryMmap::from_ranges`.
    pub fn ram_regions(&self) -> &[(GuestAddress, u64)] {
        &self.regions
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }

    /// End (exclusive) of RAM below 4 GiB.
    pub fn low_ram_end(&self) -> u64 {
        self.regions[0].0.0 + self.regions[0].1
    }

    /// Fails unless `[addr, addr+len)` lies entirely in one RAM region.
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), LayoutError> {
        let err = LayoutError::OutOfRange { addr, len };
        let end = addr.checked_add(len).ok_or(err.clone())?;
        if self.regions.iter().any(|(s, l)| addr >= s.0 && end <= s.0 + l) { Ok(()) } else { Err(err) }
    }

    /// The e820 map given to the guest (also the PVH memmap).
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut v = vec![
            E820Entry { addr: 0, size: EBDA_START, ty: E820Type::Ram },
            E820Entry { addr: EBDA_START, size: HIMEM_START - EBDA_START, ty: E820Type::Reserved },
            E820Entry { addr: HIMEM_START, size: self.low_ram_end() - HIMEM_START, ty: E820Type::Ram },
        ];
        for (start, len) in self.regions.iter().skip(1) {
            v.push(E820Entry { addr: start.0, size: *len, ty: E820Type::Ram });
        }
        v
    }

    /// Where to put an initrd of `size` bytes: page aligned, as high as possible below both the
    /// end of low RAM and `addr_max` (the kernel's `initrd_addr_max`, inclusive), and above
    /// `kernel_end`.
    pub fn place_initrd(&self, size: u64, kernel_end: u64, addr_max: Option<u64>) -> Result<GuestAddress, LayoutError> {
        let max_incl = addr_max.unwrap_or(DEFAULT_INITRD_ADDR_MAX);
        let limit = self.low_ram_end().min(max_incl.saturating_add(1));
        let too_big = LayoutError::InitrdTooBig { size, kernel_end, limit };
        let start = limit.checked_sub(size).ok_or(too_big.clone())? & !0xfff;
        if start < kernel_end.max(HIMEM_START) {
            return Err(too_big);
        }
        self.check_range(start, size)?;
        Ok(GuestAddress(start))
    }

    /// The virtio-mmio window and GSI of device `index`.
    pub fn virtio_mmio_window(index: usize) -> Result<(GuestAddress, u32), LayoutError> {
        if index >= MAX_VIRTIO_DEVICES {
            return Err(LayoutError::TooManyDevices(index));
        }
        let i = index as u64;
        Ok((GuestAddress(VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE), VIRTIO_IRQ_BASE + index as u32))
    }
}

/// The fixed boot structures as (name, start, length); none may overlap (tested).
pub fn boot_areas() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("gdt", BOOT_GDT_START, 4 * 8),
        ("idt", BOOT_IDT_START, 8),
        ("pvh_start_info", PVH_INFO_START, 0x38),
        ("pvh_modlist", PVH_MODLIST_START, 0x20),
        ("pvh_memmap", PVH_MEMMAP_START, PVH_MEMMAP_MAX_ENTRIES * 24),
        ("zero_page", ZERO_PAGE_START, 0x1000),
        ("stack", 0x8000, BOOT_STACK_POINTER + 0x10 - 0x8000),
        ("pml4", PML4_START, 0x1000),
        ("pdpte", PDPTE_START, 0x1000),
        ("pde", PDE_START, 0x1000),
        ("cmdline", CMDLINE_START, CMDLINE_MAX_SIZE),
        ("mptable", EBDA_START, LEGACY_HOLE_START - EBDA_START),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn boot_areas_do_not_overlap_and_sit_below_the_kernel() {
        let areas = boot_areas();
        for (i, a) in areas.iter().enumerate() {
            assert!(a.1 + a.2 <= HIMEM_START, "{} reaches the kernel", a.0);
            for b in &areas[i + 1..] {
                assert!(!overlaps((a.1, a.2), (b.1, b.2)), "{} overlaps {}", a.0, b.0);
            }
        }
    }

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        let l = MemoryLayout::new(512).unwrap();
        assert_eq!(l.ram_regions(), &[(GuestAddress(0), 512 * MIB)]);
        assert_eq!(l.low_ram_end(), 512 * MIB);
        assert_eq!(l.ram_size(), 512 * MIB);
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let l = MemoryLayout::new(4096).unwrap();
        let r = l.ram_regions();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), 4 * GIB - MMIO_HOLE_START));
        assert_eq!(l.ram_size(), 4 * GIB);
        assert!(!overlaps((r[0].0.0, r[0].1), (MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START)));
        assert!(!overlaps((r[1].0.0, r[1].1), (MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START)));
    }

    #[test]
    fn mem_size_out_of_range_is_rejected() {
        assert!(matches!(MemoryLayout::new(0), Err(LayoutError::MemSize { .. })));
        assert!(matches!(MemoryLayout::new(MIN_MEM_MIB - 1), Err(LayoutError::MemSize { .. })));
        assert!(matches!(MemoryLayout::new(MAX_MEM_MIB + 1), Err(LayoutError::MemSize { .. })));
        assert!(MemoryLayout::new(MIN_MEM_MIB).is_ok());
    }

    #[test]
    fn virtio_windows_are_in_the_hole_and_disjoint_from_apics() {
        for i in 0..MAX_VIRTIO_DEVICES {
            let (a, irq) = MemoryLayout::virtio_mmio_window(i).unwrap();
            assert!(a.0 >= MMIO_HOLE_START && a.0 + VIRTIO_MMIO_SIZE <= IOAPIC_START);
            assert!((5..24).contains(&irq), "irq {irq}");
        }
        assert_eq!(
            MemoryLayout::virtio_mmio_window(MAX_VIRTIO_DEVICES),
            Err(LayoutError::TooManyDevices(MAX_VIRTIO_DEVICES))
        );
    }

    #[test]
    fn e820_covers_ram_and_skips_the_legacy_and_mmio_holes() {
        let l = MemoryLayout::new(4096).unwrap();
        let e = l.e820();
        let ram: Vec<_> = e.iter().filter(|x| x.ty == E820Type::Ram).collect();
        // Below 1 MiB RAM stops at the EBDA; nothing in the legacy or MMIO hole is RAM.
        for x in &ram {
            assert!(!overlaps((x.addr, x.size), (EBDA_START, HIMEM_START - EBDA_START)));
            assert!(!overlaps((x.addr, x.size), (MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START)));
            l.check_range(x.addr, x.size).unwrap();
        }
        let total: u64 = ram.iter().map(|x| x.size).sum();
        assert_eq!(total, l.ram_size() - (HIMEM_START - EBDA_START));
        // Sorted, non-overlapping.
        for w in e.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn check_range_rejects_out_of_range() {
        let l = MemoryLayout::new(64).unwrap();
        assert!(l.check_range(0, 64 * MIB).is_ok());
        assert!(l.check_range(64 * MIB - 1, 2).is_err());
        assert!(l.check_range(u64::MAX, 2).is_err());
        let big = MemoryLayout::new(4096).unwrap();
        assert!(big.check_range(MMIO_HOLE_START - 4, 8).is_err(), "straddles the hole");
        assert!(big.check_range(MMIO_HOLE_END, 16).is_ok());
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_respects_limits() {
        let l = MemoryLayout::new(512).unwrap();
        let size = 3 * MIB + 123;
        let a = l.place_initrd(size, 20 * MIB, None).unwrap();
        assert_eq!(a.0 & 0xfff, 0);
        assert!(a.0 + size <= 512 * MIB);
        assert!(a.0 + size > 512 * MIB - 0x1000 - 1, "as high as possible");
        // The kernel's initrd_addr_max is inclusive and honoured.
        let max = 256 * MIB - 1;
        let b = l.place_initrd(size, 20 * MIB, Some(max)).unwrap();
        assert!(b.0 + size - 1 <= max);
        // On a big guest the initrd stays under the default 0x37ffffff limit and the hole.
        let big = MemoryLayout::new(8192).unwrap();
        let c = big.place_initrd(size, 20 * MIB, None).unwrap();
        assert!(c.0 + size - 1 <= DEFAULT_INITRD_ADDR_MAX);
        let d = big.place_initrd(size, 20 * MIB, Some(u32::MAX as u64)).unwrap();
        assert!(d.0 + size <= MMIO_HOLE_START);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_rejected() {
        let l = MemoryLayout::new(64).unwrap();
        let err = l.place_initrd(60 * MIB, 20 * MIB, None).unwrap_err();
        assert!(matches!(err, LayoutError::InitrdTooBig { .. }), "{err}");
        assert!(l.place_initrd(u64::MAX, 0, None).is_err());
    }
}
