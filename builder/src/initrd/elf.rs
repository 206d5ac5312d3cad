//! Is this a statically linked ELF executable? The initrd has no C library and no dynamic
//! loader, so busybox, a binary `/init` and every guest binary must be static.
//!
//! Owns a minimal, bounds-checked reading of the ELF header and program headers (32/64-bit,
//! either byte order): an executable (`ET_EXEC`, or `ET_DYN` as static-pie binaries are) with
//! program headers and without `PT_INTERP`. Nothing else is judged (not the machine: the caller
//! picks the architecture).

const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn get<const N: usize>(&self, off: u64) -> Result<[u8; N], String> {
        let start = usize::try_from(off).map_err(|_| "offset out of range".to_owned())?;
        start
            .checked_add(N)
            .and_then(|end| self.bytes.get(start..end))
            .map(|s| s.try_into().expect("slice of length N"))
            .ok_or_else(|| {
                format!("truncated: {N} bytes at offset {off} are past the end ({} bytes)", self.bytes.len())
            })
    }
    fn u16(&self, off: u64) -> Result<u16, String> {
        let b = self.get::<2>(off)?;
        Ok(if self.little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }
    fn u32(&self, off: u64) -> Result<u32, String> {
        let b = self.get::<4>(off)?;
        Ok(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }
    fn u64(&self, off: u64) -> Result<u64, String> {
        let b = self.get::<8>(off)?;
        Ok(if self.little { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) })
    }
}

/// `Ok` when `bytes` is a static ELF executable; otherwise why not, in words.
pub(crate) fn check_static(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 16 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file (no \\x7fELF magic)".into());
    }
    let little = match bytes[5] {
        1 => true,
        2 => false,
        other => return Err(format!("unknown ELF byte order {other}")),
    };
    let r = Reader { bytes, little };
    let e_type = r.u16(16)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(format!("ELF type {e_type} is not an executable"));
    }
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (u64::from(r.u32(28)?), r.u16(42)?, r.u16(44)?),
        2 => (r.u64(32)?, r.u16(54)?, r.u16(56)?),
        other => return Err(format!("unknown ELF class {other}")),
    };
    if phnum == 0 {
        return Err("it has no program headers".into());
    }
    if phnum == u16::MAX {
        return Err("it has too many program headers (PN_XNUM) to check".into());
    }
    if phentsize < 4 {
        return Err(format!("program header size {phentsize} is too small"));
    }
    for i in 0..u64::from(phnum) {
        let off = phoff.checked_add(i * u64::from(phentsize)).ok_or("program header offset overflows")?;
        if r.u32(off)? == PT_INTERP {
            return Err("it is dynamically linked (it has a PT_INTERP program header)".into());
        }
    }
    Ok(())
}

/// A minimal static x86-64 ELF executable (header, one `PT_LOAD`, then `payload`): accepted by
/// [`check_static`], for tests that need no real binary.
#[cfg(test)]
pub(crate) fn fake_static(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    b[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_static_passes_and_an_interpreter_fails() {
        let ok = fake_static(b"x");
        assert_eq!(check_static(&ok), Ok(()));
        let mut dynamic = ok.clone();
        dynamic[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert!(check_static(&dynamic).unwrap_err().contains("dynamically linked"));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(check_static(b"").unwrap_err().contains("not an ELF"));
        assert!(check_static(b"#!/bin/sh\necho hi\n").unwrap_err().contains("not an ELF"));
        let ok = fake_static(b"");
        // Everything up to the first program header's type is read.
        for len in 16..68 {
            assert!(check_static(&ok[..len]).is_err(), "{len}");
        }
        let mut huge = ok.clone();
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_static(&huge).is_err());
        let mut no_ph = ok.clone();
        no_ph[56..58].copy_from_slice(&0u16.to_le_bytes());
        assert!(check_static(&no_ph).unwrap_err().contains("no program headers"));
        let mut core = ok;
        core[16..18].copy_from_slice(&4u16.to_le_bytes());
        assert!(check_static(&core).unwrap_err().contains("not an executable"));
    }

    #[test]
    fn host_binaries_are_judged_like_file_1_does() {
        let mut judged = 0;
        for path in ["/bin/busybox", "/bin/sh", "/bin/ls", "/usr/bin/cpio"] {
            let Ok(bytes) = std::fs::read(path) else { continue };
            let Ok(out) = std::process::Command::new("file").arg("-L").arg(path).output() else { continue };
            let verdict = String::from_utf8_lossy(&out.stdout).into_owned();
            if verdict.contains("statically linked") || verdict.contains("static-pie linked") {
                assert_eq!(check_static(&bytes), Ok(()), "{verdict}");
            } else if verdict.contains("dynamically linked") {
                assert!(check_static(&bytes).unwrap_err().contains("dynamically linked"), "{verdict}");
            } else {
                continue;
            }
            judged += 1;
        }
        eprintln!("{judged} host binaries judged");
    }
}
