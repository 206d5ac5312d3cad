//! A deterministic writer of "newc" (`070701`) cpio archives, the format the Linux kernel unpacks
//! into its initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Owns the byte format and nothing else: what goes into the initrd is decided by the parent
//! module. Format decisions, each checked against GNU cpio's own `-o -H newc --reproducible`
//! output byte for byte in the tests:
//!
//! - Header: the magic `070701` and thirteen 8-digit *uppercase* hex fields (as GNU cpio and the
//!   kernel's `gen_init_cpio` write them): ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//!   devminor, rdevmajor, rdevminor, namesize (with its NUL), check (always 0). 110 bytes.
//! - The name and its NUL are padded with zeros so the data starts at a multiple of 4; the data is
//!   padded so the next header does too (offsets counted from the archive's first byte).
//! - Entries are sorted by path *component by component*, so a directory's children follow it
//!   directly and every parent precedes its children. The root, if present, is `.` and comes first.
//!   Every parent directory must itself be an entry (neither the kernel nor `cpio -i` creates
//!   missing parents).
//! - Owners 0:0, every mtime the caller's, devmajor/devminor 0, inode numbers 0, 1, 2, … in sorted
//!   order; nlink 1 for everything but directories, which get 2 + their number of subdirectories
//!   (as on disk). Only regular files with nlink ≥ 2 take part in the kernel's hard-link
//!   detection, so nlink 1 keeps every file independent.
//! - Symlinks store their target as data, mode `0o120777`; character devices carry rdev.
//! - `TRAILER!!!` (ino 0, mode 0, nlink 1, mtime 0), then zeros up to a multiple of 512 bytes.
//!
//! Rejected, naming the path: empty, absolute or non-normalized paths (`a//b`, `a/`, `.`/`..`
//! components), NUL bytes, names of `PATH_MAX` (4096) bytes or more, duplicates, missing or
//! non-directory parents, mode bits outside `0o7777`, files over the 32-bit size field.

use std::collections::{BTreeMap, BTreeSet};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header before the name.
pub const HEADER_LEN: usize = 110;
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";
/// The archive is zero-padded to a multiple of this (what GNU cpio and `gen_init_cpio` do).
pub const BLOCK: usize = 512;
/// The kernel refuses names (with their NUL) longer than `PATH_MAX`.
const PATH_MAX: usize = 4096;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    /// Target of the link, stored as the entry's data.
    Symlink(String),
    /// A character device node.
    CharDevice {
        major: u32,
        minor: u32,
    },
}

/// One archive member: a relative path (`bin/busybox`; `.` for the root), its permission bits
/// (`0o7777` at most; symlinks always get `0o777`) and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub path: String,
    pub mode: u32,
    pub kind: Kind<'a>,
}

impl<'a> Entry<'a> {
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self { path: path.into(), mode, kind: Kind::Dir }
    }

    pub fn file(path: impl Into<String>, mode: u32, data: &'a [u8]) -> Self {
        Self { path: path.into(), mode, kind: Kind::File(data) }
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self { path: path.into(), mode: 0o777, kind: Kind::Symlink(target.into()) }
    }

    pub fn char_device(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Self {
        Self { path: path.into(), mode, kind: Kind::CharDevice { major, minor } }
    }
}

/// Why an archive could not be written; every variant names the entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("cpio entry {path:?}: invalid path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("cpio entry {path:?} appears more than once")]
    Duplicate { path: String },
    #[error("cpio entry {path:?}: its parent directory {parent:?} is not in the archive")]
    MissingParent { path: String, parent: String },
    #[error("cpio entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("cpio entry {path:?}: mode {mode:#o} has bits outside 0o7777")]
    Mode { path: String, mode: u32 },
    #[error("cpio entry {path:?}: {size} bytes do not fit newc's 32-bit size field")]
    TooLarge { path: String, size: usize },
    #[error("cpio entry {path:?}: invalid symlink target {target:?}: {reason}")]
    SymlinkTarget { path: String, target: String, reason: &'static str },
    #[error("cpio entry \".\" (the root) must be a directory")]
    RootNotDir,
}

/// The path's components (empty for the root `.`), or why it is not acceptable.
fn components(path: &str) -> Result<Vec<&str>, &'static str> {
    if path == "." {
        return Ok(Vec::new());
    }
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.contains('\0') {
        return Err("it contains a NUL byte");
    }
    if path.len() + 1 > PATH_MAX {
        return Err("it is longer than PATH_MAX (4096 bytes with its NUL)");
    }
    if path.starts_with('/') {
        return Err("it is absolute (archive paths are relative to the root, without a leading /)");
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err("it has an empty component (// or a trailing /)"),
            "." => return Err("it has a . component"),
            ".." => return Err("it has a .. component"),
            _ => {}
        }
    }
    Ok(parts)
}

fn hex8(out: &mut Vec<u8>, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..8).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

fn pad(out: &mut Vec<u8>, align: usize) {
    out.resize(out.len().next_multiple_of(align), 0);
}

/// The header fields that vary between entries (uid, gid, devmajor, devminor, check are 0).
struct Header<'n> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &'n str,
}

impl Header<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        debug_assert_eq!(out.len() % 4, 0);
        out.extend_from_slice(MAGIC);
        let namesize = u32::try_from(self.name.len() + 1).expect("name length checked against PATH_MAX");
        for field in [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            self.mtime,
            self.filesize,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            namesize,
            0, // check
        ] {
            hex8(out, field);
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        pad(out, 4);
    }
}

/// Writes `entries` (in any order) as a newc archive with every mtime `mtime`. The bytes are a
/// function of the set of entries and `mtime` only.
pub fn archive(entries: &[Entry<'_>], mtime: u32) -> Result<Vec<u8>, CpioError> {
    // Validate and sort.
    let mut sorted: Vec<(Vec<&str>, &Entry<'_>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts =
            components(&entry.path).map_err(|reason| CpioError::InvalidPath { path: entry.path.clone(), reason })?;
        if entry.mode & !0o7777 != 0 {
            return Err(CpioError::Mode { path: entry.path.clone(), mode: entry.mode });
        }
        match &entry.kind {
            Kind::File(data) if u32::try_from(data.len()).is_err() => {
                return Err(CpioError::TooLarge { path: entry.path.clone(), size: data.len() });
            }
            Kind::Symlink(target) => {
                let reason = if target.is_empty() {
                    Some("it is empty")
                } else if target.contains('\0') {
                    Some("it contains a NUL byte")
                } else if target.len() + 1 > PATH_MAX {
                    Some("it is longer than PATH_MAX")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(CpioError::SymlinkTarget { path: entry.path.clone(), target: target.clone(), reason });
                }
            }
            Kind::Dir | Kind::File(_) | Kind::CharDevice { .. } => {}
        }
        if parts.is_empty() && entry.kind != Kind::Dir {
            return Err(CpioError::RootNotDir);
        }
        sorted.push((parts, entry));
    }
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(CpioError::Duplicate { path: pair[1].1.path.clone() });
        }
    }

    // Parents exist and are directories; count subdirectories for nlink.
    let dirs: BTreeSet<&[&str]> =
        sorted.iter().filter(|(_, e)| e.kind == Kind::Dir).map(|(parts, _)| parts.as_slice()).collect();
    let all: BTreeMap<&[&str], &Entry<'_>> = sorted.iter().map(|(parts, e)| (parts.as_slice(), *e)).collect();
    let mut subdirs: BTreeMap<&[&str], u32> = BTreeMap::new();
    for (parts, entry) in &sorted {
        let Some((_, parent)) = parts.split_last() else { continue };
        if !parent.is_empty() && !dirs.contains(parent) {
            let parent_path = parent.join("/");
            return Err(if all.contains_key(parent) {
                CpioError::ParentNotDir { path: entry.path.clone(), parent: parent_path }
            } else {
                CpioError::MissingParent { path: entry.path.clone(), parent: parent_path }
            });
        }
        if entry.kind == Kind::Dir {
            *subdirs.entry(parent).or_default() += 1;
        }
    }

    // Write.
    let size: usize = sorted
        .iter()
        .map(|(_, e)| {
            let data = match &e.kind {
                Kind::File(d) => d.len(),
                Kind::Symlink(t) => t.len(),
                _ => 0,
            };
            HEADER_LEN + e.path.len() + 4 + data + 3
        })
        .sum::<usize>()
        + HEADER_LEN
        + TRAILER.len()
        + BLOCK;
    let mut out = Vec::with_capacity(size);
    for (ino, (parts, entry)) in sorted.iter().enumerate() {
        let (type_bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
            Kind::Dir => (S_IFDIR, 2 + subdirs.get(parts.as_slice()).copied().unwrap_or(0), &[], (0, 0)),
            Kind::File(data) => (S_IFREG, 1, data, (0, 0)),
            Kind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
            Kind::CharDevice { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
        };
        let mode = if matches!(entry.kind, Kind::Symlink(_)) { 0o777 } else { entry.mode };
        Header {
            ino: u32::try_from(ino).expect("fewer than 2^32 entries"),
            mode: type_bits | mode,
            nlink,
            mtime,
            filesize: u32::try_from(data.len()).expect("size checked above"),
            rdev,
            name: &entry.path,
        }
        .write(&mut out);
        out.extend_from_slice(data);
        pad(&mut out, 4);
    }
    Header { ino: 0, mode: 0, nlink: 1, mtime: 0, filesize: 0, rdev: (0, 0), name: TRAILER }.write(&mut out);
    pad(&mut out, BLOCK);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        bytes.iter().map(|&b| if b == 0 { '~' } else { b as char }).collect()
    }

    #[test]
    fn exact_bytes_of_a_small_archive() {
        let entries = [Entry::file("a/b", 0o644, b"hi"), Entry::dir("a", 0o755), Entry::symlink("a/l", "b")];
        let bytes = archive(&entries, 0x6553_F100).unwrap();
        assert_eq!(bytes.len(), 512);
        let expected = concat!(
            // ino      mode     uid      gid      nlink    mtime    size     dmaj     dmin     rmaj     rmin     nsize    check
            "070701",
            "00000000",
            "000041ED",
            "00000000",
            "00000000",
            "00000002",
            "6553F100",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "a~", // 112: aligned
            "070701",
            "00000001",
            "000081A4",
            "00000000",
            "00000000",
            "00000001",
            "6553F100",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "a/b~",
            "~~",
            "hi~~", // 110+4 → +2; data 2 → +2
            "070701",
            "00000002",
            "0000A1FF",
            "00000000",
            "00000000",
            "00000001",
            "6553F100",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "a/l~",
            "~~",
            "b~~~",
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000B",
            "00000000",
            "TRAILER!!!~",
            "~",
        );
        let got = text(&bytes);
        assert_eq!(got.trim_end_matches('~'), expected.trim_end_matches('~'));
        assert!(got[expected.len()..].bytes().all(|b| b == b'~'));
    }

    #[test]
    fn every_header_is_aligned_for_all_name_and_data_lengths() {
        let names: Vec<String> = (1..=9).map(|n| "n".repeat(n)).collect();
        let datas: Vec<Vec<u8>> = (0..=9).map(|n| vec![b'x'; n]).collect();
        let mut entries = Vec::new();
        for (i, name) in names.iter().enumerate() {
            entries.push(Entry::file(name.clone(), 0o644, &datas[i]));
        }
        let bytes = archive(&entries, 1).unwrap();
        // Walk the archive as the kernel does.
        let mut off = 0;
        let mut seen = Vec::new();
        loop {
            assert_eq!(off % 4, 0);
            assert_eq!(&bytes[off..off + 6], MAGIC);
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&bytes[off + 6 + 8 * i..off + 14 + 8 * i]).unwrap(), 16)
                    .unwrap() as usize
            };
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&bytes[off + HEADER_LEN..off + HEADER_LEN + namesize - 1]).unwrap();
            assert_eq!(bytes[off + HEADER_LEN + namesize - 1], 0);
            let data = (off + HEADER_LEN + namesize).next_multiple_of(4);
            if name == TRAILER {
                break;
            }
            seen.push((name.to_owned(), bytes[data..data + size].to_vec()));
            off = (data + size).next_multiple_of(4);
        }
        let expected: Vec<(String, Vec<u8>)> = names.iter().cloned().zip(datas.iter().cloned()).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn order_is_by_component_with_parents_first() {
        let entries = [
            Entry::dir("b", 0o755),
            Entry::file("b-x", 0o644, b""),
            Entry::file("b/z", 0o644, b""),
            Entry::dir(".", 0o755),
            Entry::dir("b/a", 0o755),
            Entry::file("b/a/y", 0o644, b""),
            Entry::file("a", 0o644, b""),
        ];
        let bytes = archive(&entries, 0).unwrap();
        let mut at = 0;
        for name in [".", "a", "b", "b/a", "b/a/y", "b/z", "b-x"] {
            let needle = format!("{name}~");
            let pos = text(&bytes[at..]).find(&needle).unwrap_or_else(|| panic!("{name} out of order"));
            at += pos + needle.len();
        }
        // The root comes first with ino 0 and nlink 3 (one subdirectory, b).
        let s = text(&bytes);
        let root = format!("070701{:08X}{:08X}{:08X}{:08X}{:08X}", 0, 0o40_755, 0, 0, 3);
        assert!(s.starts_with(&root), "{s}");
    }

    #[test]
    fn bad_entries_are_rejected_with_their_path() {
        let bad_paths = [
            ("", "empty"),
            ("/etc", "absolute"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a/./b", ". component"),
            ("..", ".. component"),
            ("a/../b", ".. component"),
            ("a\0b", "NUL"),
        ];
        for (path, why) in bad_paths {
            let err = archive(&[Entry::dir("a", 0o755), Entry::file(path, 0o644, b"")], 0).unwrap_err();
            assert!(matches!(&err, CpioError::InvalidPath { path: p, .. } if p == path), "{path:?}: {err}");
            assert!(err.to_string().contains(why), "{path:?}: {err}");
        }
        let long = "x".repeat(4096);
        assert!(matches!(archive(&[Entry::file(long, 0o644, b"")], 0), Err(CpioError::InvalidPath { .. })));
        assert!(archive(&[Entry::file("x".repeat(4095), 0o644, b"")], 0).is_ok());

        assert_eq!(
            archive(&[Entry::file("a", 0o644, b""), Entry::dir("a", 0o755)], 0),
            Err(CpioError::Duplicate { path: "a".into() })
        );
        assert_eq!(
            archive(&[Entry::file("a/b", 0o644, b"")], 0),
            Err(CpioError::MissingParent { path: "a/b".into(), parent: "a".into() })
        );
        assert_eq!(
            archive(&[Entry::symlink("a", "x"), Entry::file("a/b", 0o644, b"")], 0),
            Err(CpioError::ParentNotDir { path: "a/b".into(), parent: "a".into() })
        );
        assert_eq!(
            archive(&[Entry::file("a", 0o100_644, b"")], 0),
            Err(CpioError::Mode { path: "a".into(), mode: 0o100_644 })
        );
        assert!(matches!(archive(&[Entry::symlink("a", "")], 0), Err(CpioError::SymlinkTarget { .. })));
        assert!(matches!(archive(&[Entry::symlink("a", "x\0")], 0), Err(CpioError::SymlinkTarget { .. })));
        assert_eq!(archive(&[Entry::file(".", 0o644, b"")], 0), Err(CpioError::RootNotDir));
    }

    #[test]
    fn input_order_does_not_matter() {
        let a = [Entry::dir("d", 0o755), Entry::file("d/f", 0o600, b"1"), Entry::char_device("c", 0o600, 5, 1)];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(archive(&a, 7).unwrap(), archive(&b, 7).unwrap());
    }
}
