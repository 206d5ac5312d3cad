//! Booting Linux: kernel loading, boot parameters and the initial vCPU state.
//!
//! Owns the choice of boot protocol. An ELF `vmlinux` with a PVH note is entered through PVH
//! (32-bit protected mode, `%ebx` → `hvm_start_info`); an ELF without the note, or a bzImage,
//! is entered through the 64-bit Linux boot protocol (long mode, `%rsi` → zero page).
//! Submodules: [`params`] (cmdline, e820, zero page, hvm_start_info), [`cpu`] (CPUID, MSRs,
//! registers, GDT and identity page tables). There is no MP table yet: with `acpi=off`
//! a guest sees one CPU whatever `vcpus` says.

use std::fs::File;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::VmmError;
use crate::devices::virtio::GuestMem;
use crate::layout::HIMEM_START;

pub mod cpu;
pub mod params;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped, `%rsi` = zero page.
    Linux64,
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// First instruction.
    pub entry: GuestAddress,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// First byte after everything the kernel occupies while booting (for bzImage this
    /// includes `init_size`, the room the decompressor needs).
    pub kernel_end: u64,
    /// The bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF (preferring its PVH entry) or a bzImage into `mem`.
pub fn load_kernel(mem: &GuestMem, kernel: &mut File) -> Result<LoadedKernel, VmmError> {
    let mut magic = [0u8; 4];
    {
        use std::io::{Read, Seek, SeekFrom};
        kernel
            .seek(SeekFrom::Start(0))
            .and_then(|_| kernel.read_exact(&mut magic))
            .map_err(|e| VmmError::Kernel(format!("reading the kernel header: {e}")))?;
    }
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| VmmError::Kernel(format!("ELF: {e}")))?;
        let (entry, protocol) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr, BootProtocol::Pvh),
            _ => (r.kernel_load, BootProtocol::Linux64),
        };
        return Ok(LoadedKernel { entry, protocol, kernel_end: r.kernel_end, setup_header: None });
    }
    let r = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| VmmError::Kernel(format!("neither ELF nor a loadable bzImage: {e}")))?;
    let hdr = r.setup_header.ok_or_else(|| VmmError::Kernel("bzImage without setup header".into()))?;
    if hdr.version < 0x020c || hdr.xloadflags & 1 == 0 {
        let version = hdr.version;
        return Err(VmmError::Kernel(format!(
            "bzImage boot protocol {version:#x} has no 64-bit entry (need ≥ 2.12 with XLF_KERNEL_64)"
        )));
    }
    // 64-bit entry point is 0x200 past the start of the protected-mode kernel.
    let entry = GuestAddress(r.kernel_load.0 + 0x200);
    let kernel_end = r.kernel_end.max(r.kernel_load.0 + u64::from(hdr.init_size));
    // Sanity: the entry must be inside what we loaded.
    mem.read_obj::<u8>(entry).map_err(|e| VmmError::Kernel(format!("bzImage entry {:#x} not in RAM: {e}", entry.0)))?;
    Ok(LoadedKernel { entry, protocol: BootProtocol::Linux64, kernel_end, setup_header: Some(hdr) })
}

/// Reads the whole initrd into guest memory at `addr`.
pub fn load_initrd(mem: &GuestMem, initrd: &mut File, addr: GuestAddress, size: u64) -> Result<(), VmmError> {
    use std::io::{Seek, SeekFrom};
    initrd.seek(SeekFrom::Start(0)).map_err(|e| VmmError::Initrd(format!("seek: {e}")))?;
    let size = usize::try_from(size).map_err(|_| VmmError::Initrd("too large".into()))?;
    mem.read_exact_volatile_from(addr, initrd, size)
        .map_err(|e| VmmError::Initrd(format!("reading {size} bytes into {:#x}: {e}", addr.0)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    /// A minimal ELF64 with one PT_LOAD at 1 MiB and a PVH note (XEN_ELFNOTE_PHYS32_ENTRY).
    fn tiny_elf(with_pvh: bool) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        f[24..32].copy_from_slice(&0x100000u64.to_le_bytes()); // e_entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&(if with_pvh { 2u16 } else { 1 }).to_le_bytes());
        // PT_LOAD: offset 0x180, paddr 0x100000, 16 bytes.
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x180u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&0x100000u64.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&0x100000u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&16u64.to_le_bytes());
        if with_pvh {
            // PT_NOTE at 0x140: namesz 4 "Xen\0", descsz 4, type 18, desc = 0x100004.
            let ph = 64 + 56;
            f[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&0x140u64.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&20u64.to_le_bytes());
            f[ph + 40..ph + 48].copy_from_slice(&20u64.to_le_bytes());
            let n = 0x140;
            f[n..n + 4].copy_from_slice(&4u32.to_le_bytes());
            f[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes());
            f[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes());
            f[n + 12..n + 16].copy_from_slice(b"Xen\0");
            f[n + 16..n + 20].copy_from_slice(&0x100004u32.to_le_bytes());
        }
        f[0x180..0x190].copy_from_slice(&[0xf4; 16]);
        f
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn elf_with_pvh_note_boots_through_pvh() {
        let m = mem();
        let k = load_kernel(&m, &mut file_with(&tiny_elf(true))).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
        assert_eq!(k.entry, GuestAddress(0x100004));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x100000)).unwrap(), 0xf4);
        assert!(k.kernel_end >= 0x100010);
    }

    #[test]
    fn elf_without_pvh_note_uses_the_64_bit_entry() {
        let k = load_kernel(&mem(), &mut file_with(&tiny_elf(false))).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x100000));
    }

    #[test]
    fn garbage_kernel_is_rejected_with_a_message() {
        let err = load_kernel(&mem(), &mut file_with(&[0u8; 4096])).unwrap_err();
        assert!(err.to_string().contains("bzImage"), "{err}");
    }

    #[test]
    fn initrd_is_copied_verbatim() {
        let m = mem();
        let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
        load_initrd(&m, &mut file_with(&data), GuestAddress(0x200000), data.len() as u64).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, GuestAddress(0x200000)).unwrap();
        assert_eq!(back, data);
        assert!(load_initrd(&m, &mut file_with(&data), GuestAddress(64 << 20), 10).is_err());
    }
}
