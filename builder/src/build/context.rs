//! The build context: the tar the engine builds from, assembled in memory.
//!
//! Layout (documented for the template in `crate::render`): `Dockerfile`, `extra-ca.crt` (when
//! an extra CA is used), `guest-bin/<name>` for each guest binary, and `artifacts/…` (the image's
//! artifacts directory). The bytes are a function of the inputs only: entries sorted by path,
//! every mtime `SOURCE_DATE_EPOCH`, owner 0:0 with no user or group names, modes normalized
//! (directories 0755; files 0755 if the host file has any execute bit, else 0644; guest
//! binaries 0555). The classic builder copies modes and mtimes from the context, so this also
//! keeps host state (umask, checkout time) out of the image.
//!
//! Guest binaries must be static executables (no ELF `PT_INTERP`): the guest must not depend on
//! the host's C library. Symlinks under `artifacts/` are refused rather than followed: what the
//! image gets must be visible in the image definition.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Why the context could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Reading an input failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Something other than a regular file or directory under `artifacts/`.
    #[error("{}: only regular files and directories may be under artifacts/ (found a {kind})", path.display())]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// `symlink`, `socket`, ….
        kind: &'static str,
    },
    /// A guest binary that is not a static ELF executable.
    #[error(
        "guest binary {}: {reason}\n  fix: build it with RUSTFLAGS=\"-C target-feature=+crt-static\" \
         (cargo build --release --target <rust_target>)",
        path.display()
    )]
    GuestBinary {
        /// The binary.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A path too long or otherwise unrepresentable in tar.
    #[error("adding {path} to the build context: {source}")]
    Tar {
        /// Path in the context.
        path: String,
        /// The tar writer's error.
        source: std::io::Error,
    },
}

/// What goes into the context.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The rendered Dockerfile.
    pub dockerfile: &'a str,
    /// PEM bytes of the extra CA, when one is used.
    pub extra_ca: Option<&'a [u8]>,
    /// Guest binaries: name in the image, file on the host.
    pub guest_binaries: &'a [(String, PathBuf)],
    /// The image's `artifacts/` directory, when it exists.
    pub artifacts: Option<&'a Path>,
    /// Other files, by path in the context (e.g. the kernel's `kernel/defconfig.x86_64`).
    pub files: &'a [(&'a str, &'a [u8])],
    /// mtime of every entry.
    pub mtime: u64,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
}

/// Builds the context tar.
pub fn assemble(inputs: &Inputs<'_>) -> Result<Vec<u8>, ContextError> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("Dockerfile".into(), Entry::File { data: inputs.dockerfile.as_bytes().to_vec(), mode: 0o644 });
    if let Some(ca) = inputs.extra_ca {
        entries.insert("extra-ca.crt".into(), Entry::File { data: ca.to_vec(), mode: 0o644 });
    }
    if !inputs.guest_binaries.is_empty() {
        entries.insert("guest-bin".into(), Entry::Dir);
    }
    for (name, path) in inputs.guest_binaries {
        let data = read(path)?;
        check_static_elf(path, &data)?;
        entries.insert(format!("guest-bin/{name}"), Entry::File { data, mode: 0o555 });
    }
    if let Some(dir) = inputs.artifacts {
        entries.insert("artifacts".into(), Entry::Dir);
        walk(dir, "artifacts", &mut entries)?;
    }
    for (path, data) in inputs.files {
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().map(|(_, dirs)| dirs).unwrap_or_default() {
            parent = if parent.is_empty() { (*part).to_owned() } else { format!("{parent}/{part}") };
            entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        entries.insert((*path).to_owned(), Entry::File { data: data.to_vec(), mode: 0o644 });
    }

    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(inputs.mtime);
        let tar_err = |source| ContextError::Tar { path: path.clone(), source };
        match entry {
            Entry::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, format!("{path}/"), std::io::empty()).map_err(tar_err)?;
            }
            Entry::File { data, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                tar.append_data(&mut header, path, data.as_slice()).map_err(tar_err)?;
            }
        }
    }
    tar.into_inner().map_err(|source| ContextError::Tar { path: "(end of archive)".into(), source })
}

fn read(path: &Path) -> Result<Vec<u8>, ContextError> {
    fs::read(path).map_err(|source| ContextError::Io { op: "reading", path: path.to_path_buf(), source })
}

/// Adds everything under `dir` as `prefix/…`, in name order.
fn walk(dir: &Path, prefix: &str, entries: &mut BTreeMap<String, Entry>) -> Result<(), ContextError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Io { op, path, source }
    };
    let mut children: Vec<_> =
        fs::read_dir(dir).map_err(io("listing", dir))?.collect::<Result<Vec<_>, _>>().map_err(io("listing", dir))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let name = child.file_name();
        let Some(name) = name.to_str() else {
            return Err(ContextError::Io {
                op: "adding",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file name is not UTF-8"),
            });
        };
        let rel = format!("{prefix}/{name}");
        let meta = fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            entries.insert(rel.clone(), Entry::Dir);
            walk(&path, &rel, entries)?;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            entries.insert(rel, Entry::File { data: read(&path)?, mode });
        } else {
            let kind = if ft.is_symlink() { "symlink" } else { "special file" };
            return Err(ContextError::Unsupported { path, kind });
        }
    }
    Ok(())
}

/// Refuses anything but an ELF executable without a program interpreter (i.e. static).
pub(crate) fn check_static_elf(path: &Path, data: &[u8]) -> Result<(), ContextError> {
    let bad = |reason: &str| ContextError::GuestBinary { path: path.to_path_buf(), reason: reason.to_owned() };
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if data[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    let little = match data[5] {
        1 => true,
        2 => false,
        _ => return Err(bad("unknown ELF byte order")),
    };
    let u16_at = |o: usize| {
        let b = [data[o], data[o + 1]];
        if little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) }
    };
    let u32_at = |o: usize| {
        let b = [data[o], data[o + 1], data[o + 2], data[o + 3]];
        if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        if little { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) }
    };
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    if !matches!(u16_at(16), ET_EXEC | ET_DYN) {
        return Err(bad("not an executable"));
    }
    let phoff = usize::try_from(u64_at(0x20)).map_err(|_| bad("corrupt program header offset"))?;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .filter(|&a| a + 4 <= data.len())
            .ok_or_else(|| bad("truncated program headers"))?;
        if u32_at(at) == PT_INTERP {
            return Err(bad("dynamically linked (it has a program interpreter); the guest needs static binaries"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    fn tree(root: &Path, stamp: SystemTime, umask_like: u32) {
        let art = root.join("artifacts");
        fs::create_dir_all(art.join("diagnostics")).unwrap();
        for (rel, body, exec) in [
            ("capsem-bashrc", "PS1=x\n", false),
            ("banner.txt", "hi\n", false),
            ("diagnostics/capsem-doctor", "#!/bin/sh\n", true),
            ("diagnostics/test_a.py", "def test(): pass\n", false),
        ] {
            let p = art.join(rel);
            fs::write(&p, body).unwrap();
            let mode = if exec { 0o777 } else { 0o666 } & !umask_like;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            fs::File::options().write(true).open(&p).unwrap().set_modified(stamp).unwrap();
        }
    }

    fn listing(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn context_bytes_depend_only_on_contents() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        tree(a.path(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000), 0o022);
        tree(b.path(), SystemTime::now(), 0o077);
        let make = |root: &Path| {
            let art = root.join("artifacts");
            assemble(&Inputs {
                dockerfile: "FROM x\n",
                extra_ca: Some(b"PEM"),
                guest_binaries: &[],
                artifacts: Some(&art),
                files: &[("kernel/defconfig.x86_64", b"CONFIG_X=y\n")],
                mtime: 1_700_000_000,
            })
            .unwrap()
        };
        let (ta, tb) = (make(a.path()), make(b.path()));
        assert_eq!(blake3::hash(&ta), blake3::hash(&tb), "host mtimes and umask must not matter");

        let list = listing(&ta);
        let paths: Vec<&str> = list.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Dockerfile",
                "artifacts/",
                "artifacts/banner.txt",
                "artifacts/capsem-bashrc",
                "artifacts/diagnostics/",
                "artifacts/diagnostics/capsem-doctor",
                "artifacts/diagnostics/test_a.py",
                "extra-ca.crt",
                "kernel/",
                "kernel/defconfig.x86_64"
            ]
        );
        for (path, mode, mtime, uid, gid) in &list {
            assert_eq!((*mtime, *uid, *gid), (1_700_000_000, 0, 0), "{path}");
            let want = if path.ends_with('/') || path.ends_with("capsem-doctor") { 0o755 } else { 0o644 };
            assert_eq!(*mode, want, "{path}");
        }
        // A content change does change the bytes.
        fs::write(b.path().join("artifacts/banner.txt"), "changed\n").unwrap();
        assert_ne!(blake3::hash(&make(b.path())), blake3::hash(&ta));
    }

    #[test]
    fn symlinks_in_artifacts_and_dynamic_guest_binaries_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let art = d.path().join("artifacts");
        fs::create_dir(&art).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", art.join("passwd")).unwrap();
        let inputs =
            Inputs { dockerfile: "", extra_ca: None, guest_binaries: &[], artifacts: Some(&art), files: &[], mtime: 0 };
        let e = assemble(&inputs).unwrap_err();
        assert!(matches!(e, ContextError::Unsupported { kind: "symlink", .. }), "{e}");

        // The test binary itself is dynamically linked: refused with the fix.
        let me = std::env::current_exe().unwrap();
        let e = check_static_elf(&me, &fs::read(&me).unwrap()).unwrap_err();
        assert!(e.to_string().contains("dynamically linked") && e.to_string().contains("crt-static"), "{e}");
        let e = check_static_elf(Path::new("x"), b"#!/bin/sh\necho not elf\n").unwrap_err();
        assert!(e.to_string().contains("not an ELF file"), "{e}");
        // Debian's ldconfig is a static-pie executable: accepted.
        let ldconfig = Path::new("/sbin/ldconfig");
        check_static_elf(ldconfig, &fs::read(ldconfig).unwrap()).unwrap();
    }
}
