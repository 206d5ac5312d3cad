//! The initrd: busybox + `/init` + guest binaries → sorted newc cpio → deterministic zstd.
//!
//! Owns what goes into `initrd.img` and how it is packed; knows nothing of kernels, engines or
//! manifests. The caller hands it the bytes (busybox from Debian's `busybox-static`, the init
//! script, static guest binaries) and a `SOURCE_DATE_EPOCH`; it returns the bytes or writes them
//! atomically, with an [`InitrdReport`] to record. It never prints.
//!
//! # Layout
//!
//! | path | what |
//! |---|---|
//! | `/` (`.`) | directory 0755 |
//! | `/init` | the init script (capsem-init), 0755; a `#!` interpreter must be `/bin/sh` or `/bin/busybox`, anything else must be a static executable |
//! | `/bin/busybox` | busybox, 0755, a static executable |
//! | `/bin/<applet>` | symlink → `busybox` for every name in [`APPLETS`] |
//! | `/capsem/bin/<name>` | each guest binary, 0555, a static executable ([`GUEST_BIN_DIR`]) |
//! | `/dev/console`, `/dev/null` | character devices 5:1 (0600) and 1:3 (0666), so that the kernel can open the console for PID 1 before devtmpfs is mounted over `/dev` |
//! | `/dev /proc /sys /run /run/capsem /run/capsem/rootfs /run/capsem/rw /newroot /tmp /bin /capsem /capsem/bin` | directories (0755; `/proc` and `/sys` 0555, `/tmp` 1777): every mount point capsem-init uses |
//!
//! [`APPLETS`] is exactly the set of external commands capsem-init runs inside the initrd, plus
//! `sh` (its interpreter); a unit test scans `images/default/artifacts/capsem-init` and fails when
//! the script calls a command that is neither in the list nor a busybox `ash` builtin, or when the
//! list holds a name the script no longer uses. Shipping links (rather than letting init run
//! `busybox --install`) matters: busybox finds applets through `/proc/self/exe`, which does not
//! exist before `/proc` is mounted.
//!
//! # Archive
//!
//! `cpio.rs`: newc, sorted by path component, owners 0:0, every mtime `source_date_epoch`, inodes
//! numbered in order, nlink 1 (directories 2 + subdirectories), padded exactly as GNU cpio pads
//! (checked byte for byte against `cpio -o -H newc --reproducible` in the tests).
//!
//! # Compression
//!
//! zstd from the `zstd` crate (its bundled libzstd, version in the report), level
//! [`ZSTD_LEVEL`] on one thread, no dictionary, content checksum on, content size in the frame
//! header. Same input + same libzstd version ⇒ same bytes; there is no timestamp or name in a zstd
//! frame (unlike gzip).
//!
//! The window is capped at 2^[`ZSTD_WINDOW_LOG`] = 8 MiB because of how Linux unpacks it
//! (`CONFIG_RD_ZSTD`, since 5.9; `lib/decompress_unzstd.c`): `init/initramfs.c` calls `unzstd()`
//! with a flush callback, which takes the *streaming* path. That path reads the frame header,
//! refuses `windowSize > ZSTD_WINDOWSIZE_MAX` ("128MB is the maximum window size supported by
//! zstd": `1 << ZSTD_WINDOWLOG_MAX`, 27 in the kernel's zstd 1.3 port of 5.9–5.15), and vmallocs
//! a workspace of `ZSTD_DStreamWorkspaceBound(windowSize)`, i.e. about the window. From 5.16 on
//! (zstd ≥ 1.4.10) `zstd_init_dstream()` ignores the size it is given and builds a *static*
//! DStream, whose default `windowLogMax` (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`) is again 27: larger
//! windows fail (`frameParameter_windowTooLarge`). So on every kernel the window must be
//! ≤ 128 MiB, and it costs that much guest memory while unpacking. Level 19's own window for
//! inputs over 256 KiB is 2^23 already, so pinning it costs no ratio, bounds the unpacking memory
//! at ~8 MiB + 128 KiB (guests may be small), and stays 16× below the ceiling; long-distance
//! matching (which raises the window) is explicitly off. A frame whose content is smaller than the
//! window is written "single segment", with the window equal to the content size (busybox alone:
//! ~1.9 MiB). Levels 20–22 ("ultra") only pay off with larger windows and are not used.
//! Level 19 takes ~1 s for busybox (1.9 MiB → 0.9 MiB) and ~0.4 s/MB for larger binaries in an
//! optimized build on our machines (about 5× that in a debug build).
//!
//! # Output
//!
//! The whole image is built in memory first; only then is it written to `<out>.tmp-<pid>-<n>` in
//! the same directory, fsynced and renamed over `out`. An `initrd.img` is therefore complete or
//! absent, also after `kill -9` (which can leave a temporary file; the next write removes
//! temporary files whose process is gone).

pub mod cpio;
mod elf;
#[cfg(test)]
mod script_scan;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use cpio::Entry;

/// The busybox applets linked into `/bin` (→ `busybox`): every external command capsem-init runs
/// inside the initrd, and `sh`, its interpreter. Sorted. Everything else the script uses is an
/// `ash` builtin (`echo`, `printf`, `[`, `read`, `set`, …) or one of its own functions; commands
/// it runs through `chroot` are the rootfs's own. Checked against the script by a unit test.
pub const APPLETS: &[&str] = &[
    "chmod",
    "chroot",
    "cp",
    "hostname",
    "mkdir",
    "mount",
    "poweroff",
    "reboot",
    "sh",
    "sleep",
    "switch_root",
    "sync",
];

/// Where guest binaries go inside the initrd: `/capsem/bin/<name>`.
pub const GUEST_BIN_DIR: &str = "/capsem/bin";

/// zstd compression level (single-threaded, deterministic).
pub const ZSTD_LEVEL: i32 = 19;

/// log2 of the largest zstd window; see the module documentation for the kernel's limit (2^27).
pub const ZSTD_WINDOW_LOG: u32 = 23;

/// Directories, with their permission bits.
const DIRS: &[(&str, u32)] = &[
    (".", 0o755),
    ("bin", 0o755),
    ("capsem", 0o755),
    ("capsem/bin", 0o755),
    ("dev", 0o755),
    ("newroot", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("run/capsem", 0o755),
    ("run/capsem/rootfs", 0o755),
    ("run/capsem/rw", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// Character devices: path, permission bits, major, minor.
const DEVICES: &[(&str, u32, u32, u32)] = &[("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)];

/// Interpreters a `#!` init may name: what the initrd ships.
const INTERPRETERS: &[&str] = &["/bin/sh", "/bin/busybox"];

/// What goes into the initrd.
#[derive(Clone, PartialEq, Eq)]
pub struct InitrdSpec {
    /// Debian `busybox-static`'s `/bin/busybox`: a static executable for the guest architecture.
    pub busybox: Vec<u8>,
    /// `/init`: capsem-init (`#!/bin/sh`), or a static executable.
    pub init: Vec<u8>,
    /// `(name, bytes)` → `/capsem/bin/<name>` (0555). Static executables; names are single path
    /// components of `[A-Za-z0-9._+-]` not starting with `.`; order does not matter.
    pub guest_binaries: Vec<(String, Vec<u8>)>,
    /// Every mtime in the archive.
    pub source_date_epoch: u32,
}

/// Sizes and BLAKE3 prefixes instead of megabytes of bytes.
impl std::fmt::Debug for InitrdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let blob = |b: &[u8]| format!("{} bytes, blake3 {}", b.len(), &blake3::hash(b).to_hex()[..16]);
        let guests: Vec<(&str, String)> = self.guest_binaries.iter().map(|(n, b)| (n.as_str(), blob(b))).collect();
        f.debug_struct("InitrdSpec")
            .field("busybox", &blob(&self.busybox))
            .field("init", &blob(&self.init))
            .field("guest_binaries", &guests)
            .field("source_date_epoch", &self.source_date_epoch)
            .finish()
    }
}

/// The zstd settings that produced the bytes (record them with the asset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZstdSettings {
    pub level: i32,
    pub window_log: u32,
    pub checksum: bool,
    /// libzstd's version, e.g. `1.5.7`.
    pub library_version: String,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitrdReport {
    /// Archive members, without the trailer.
    pub entries: usize,
    /// Size of the cpio archive.
    pub uncompressed_size: u64,
    /// Size of `initrd.img`.
    pub compressed_size: u64,
    /// Applet names linked in `/bin` ([`APPLETS`]).
    pub applets: Vec<String>,
    /// Guest paths of the guest binaries, sorted (`/capsem/bin/capsem-agent`).
    pub guest_binaries: Vec<String>,
    pub zstd: ZstdSettings,
}

/// An initrd image in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Initrd {
    /// The zstd-compressed cpio archive: the bytes of `initrd.img`.
    pub bytes: Vec<u8>,
    pub report: InitrdReport,
}

impl std::fmt::Debug for Initrd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initrd")
            .field("bytes", &format_args!("{} bytes, blake3 {}", self.bytes.len(), blake3::hash(&self.bytes).to_hex()))
            .field("report", &self.report)
            .finish()
    }
}

/// Why the initrd could not be built or written. Every variant names the file or entry.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The archive rejected an entry (bad path, duplicate, …).
    #[error("initrd: {0}")]
    Cpio(#[from] cpio::CpioError),
    /// busybox, a binary `/init` or a guest binary is not a static executable.
    #[error("initrd: {what} cannot run in the initrd: {reason}")]
    NotStatic {
        /// `busybox`, `/init` or `guest binary <name>`.
        what: String,
        /// Why, e.g. `it is dynamically linked (…)`.
        reason: String,
    },
    /// The init script names an interpreter the initrd does not have, or is empty.
    #[error("initrd: /init: {reason}")]
    Init {
        /// What is wrong.
        reason: String,
    },
    /// A guest binary name is not a plain file name.
    #[error("initrd: guest binary name {name:?} is invalid: {reason}")]
    GuestName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two guest binaries with one name.
    #[error("initrd: guest binary {name:?} is given more than once")]
    DuplicateGuest {
        /// The name.
        name: String,
    },
    /// libzstd refused the parameters or failed.
    #[error("initrd: zstd compression failed: {source}")]
    Compress {
        /// Underlying error.
        source: io::Error,
    },
    /// The output path cannot be written to (no file name, a directory).
    #[error("initrd output {}: {reason}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("initrd: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
}

fn check_guest_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 255 {
        return Err("it is longer than 255 bytes");
    }
    if name.starts_with('.') {
        return Err("it starts with . (hidden, or . / ..)");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
        return Err("only ASCII letters, digits and . _ + - are allowed (no /, no NUL)");
    }
    Ok(())
}

/// `/init`: a script whose `#!` interpreter the initrd ships, or a static executable.
fn check_init(init: &[u8]) -> Result<(), InitrdError> {
    if init.is_empty() {
        return Err(InitrdError::Init { reason: "it is empty".into() });
    }
    let Some(rest) = init.strip_prefix(b"#!") else {
        return elf::check_static(init).map_err(|reason| InitrdError::NotStatic { what: "/init".into(), reason });
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .unwrap_or_default();
    if INTERPRETERS.contains(&interpreter.as_str()) {
        Ok(())
    } else {
        Err(InitrdError::Init {
            reason: format!(
                "its interpreter {interpreter:?} is not in the initrd (use one of {}; a CR before the \
                 line end counts as part of the name)",
                INTERPRETERS.join(", ")
            ),
        })
    }
}

/// Checks `spec` and returns every archive member (unsorted: [`cpio::archive`] sorts).
pub fn layout(spec: &InitrdSpec) -> Result<Vec<Entry<'_>>, InitrdError> {
    elf::check_static(&spec.busybox).map_err(|reason| InitrdError::NotStatic { what: "busybox".into(), reason })?;
    check_init(&spec.init)?;
    let mut names = BTreeSet::new();
    for (name, bytes) in &spec.guest_binaries {
        check_guest_name(name).map_err(|reason| InitrdError::GuestName { name: name.clone(), reason })?;
        if !names.insert(name.as_str()) {
            return Err(InitrdError::DuplicateGuest { name: name.clone() });
        }
        elf::check_static(bytes)
            .map_err(|reason| InitrdError::NotStatic { what: format!("guest binary {name:?}"), reason })?;
    }

    let mut entries: Vec<Entry<'_>> = DIRS.iter().map(|&(path, mode)| Entry::dir(path, mode)).collect();
    entries.extend(DEVICES.iter().map(|&(path, mode, major, minor)| Entry::char_device(path, mode, major, minor)));
    entries.push(Entry::file("init", 0o755, &spec.init));
    entries.push(Entry::file("bin/busybox", 0o755, &spec.busybox));
    entries.extend(APPLETS.iter().map(|applet| Entry::symlink(format!("bin/{applet}"), "busybox")));
    let dir = GUEST_BIN_DIR.trim_start_matches('/');
    entries.extend(spec.guest_binaries.iter().map(|(name, bytes)| Entry::file(format!("{dir}/{name}"), 0o555, bytes)));
    Ok(entries)
}

/// The uncompressed cpio archive of `spec`, and its number of members.
pub fn cpio_bytes(spec: &InitrdSpec) -> Result<(Vec<u8>, usize), InitrdError> {
    let entries = layout(spec)?;
    Ok((cpio::archive(&entries, spec.source_date_epoch)?, entries.len()))
}

/// The settings [`compress`] uses, with the linked libzstd's version.
pub fn zstd_settings() -> ZstdSettings {
    ZstdSettings {
        level: ZSTD_LEVEL,
        window_log: ZSTD_WINDOW_LOG,
        checksum: true,
        library_version: zstd::zstd_safe::version_string().to_owned(),
    }
}

/// One zstd frame of `data`, as the kernel's initramfs unpacker accepts it (module docs).
pub fn compress(data: &[u8]) -> Result<Vec<u8>, InitrdError> {
    use zstd::zstd_safe::CParameter;
    let err = |source| InitrdError::Compress { source };
    // A fresh context: single-threaded (NbWorkers is 0 unless set), no dictionary.
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(err)?;
    for parameter in [
        CParameter::WindowLog(ZSTD_WINDOW_LOG),
        CParameter::EnableLongDistanceMatching(false),
        CParameter::ChecksumFlag(true),
        CParameter::ContentSizeFlag(true),
        CParameter::DictIdFlag(false),
    ] {
        compressor.set_parameter(parameter).map_err(err)?;
    }
    compressor.compress(data).map_err(err)
}

/// Builds the image in memory: checks, lays out, archives and compresses `spec`.
pub fn initrd_bytes(spec: &InitrdSpec) -> Result<Initrd, InitrdError> {
    let (archive, entries) = cpio_bytes(spec)?;
    let bytes = compress(&archive)?;
    let mut guest_binaries: Vec<String> =
        spec.guest_binaries.iter().map(|(name, _)| format!("{GUEST_BIN_DIR}/{name}")).collect();
    guest_binaries.sort();
    let report = InitrdReport {
        entries,
        uncompressed_size: archive.len() as u64,
        compressed_size: bytes.len() as u64,
        applets: APPLETS.iter().map(|a| (*a).to_owned()).collect(),
        guest_binaries,
        zstd: zstd_settings(),
    };
    Ok(Initrd { bytes, report })
}

/// Builds the image and writes it to `out` atomically (module docs, "Output").
pub fn write_initrd(spec: &InitrdSpec, out: &Path) -> Result<InitrdReport, InitrdError> {
    let initrd = initrd_bytes(spec)?;
    write_atomic(out, &initrd.bytes)?;
    Ok(initrd.report)
}

/// Distinguishes temporary files of concurrent writes in one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InitrdError {
    let path = path.to_path_buf();
    move |source| InitrdError::Io { op, path, source }
}

/// Writes `bytes` to a temporary sibling of `out`, syncs it and renames it over `out`.
fn write_atomic(out: &Path, bytes: &[u8]) -> Result<(), InitrdError> {
    let output = |reason| InitrdError::Output { path: out.to_path_buf(), reason };
    let name = out.file_name().ok_or_else(|| output("it has no file name"))?.to_string_lossy().into_owned();
    if out.is_dir() {
        return Err(output("it is a directory"));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale(&dir, &name)?;
    let tmp = dir.join(format!("{name}.tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
    let mut guard = TempFile(Some(tmp.clone()));
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, out).map_err(io_err("rename to its final name", &tmp))?;
    guard.0 = None;
    // Make the rename durable; some filesystems cannot fsync a directory, and the image is
    // complete either way.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deletes `<name>.tmp-<pid>-*` in `dir` whose process is gone (all of them without `/proc`).
fn remove_stale(dir: &Path, name: &str) -> Result<(), InitrdError> {
    let prefix = format!("{name}.tmp-");
    let have_proc = Path::new("/proc/self").exists();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && have_proc
            && Path::new("/proc").join(pid.to_string()).exists()
        {
            continue; // a concurrent write of the same output, or this process
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temporary file", &entry.path())(e)),
        }
    }
    Ok(())
}
