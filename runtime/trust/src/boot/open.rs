//! The file-system side of boot verification: opening release files exactly once without
//! following symbolic links, the `fstat` snapshots taken before and after hashing, and hashing
//! an already open file.
//!
//! Every file inside the release directory is opened relative to a descriptor of that directory
//! (`openat`), one plain path component at a time, with `O_NOFOLLOW`: a symlink anywhere inside
//! the release (the architecture directory included) is refused, and a directory renamed during
//! verification cannot redirect a later open. Files are opened `O_NONBLOCK` so that a FIFO put
//! in an asset's place is reported instead of blocking the open; the flag is cleared once `fstat`
//! has shown a regular file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::error::BootError;
use crate::b3sums;

/// Whether `name` is one plain path component: not empty, no `/`, not `.` or `..`, no NUL.
pub(crate) fn is_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BootError + '_ {
    move |source| BootError::Io { path: path.to_path_buf(), source }
}

/// Opens the release directory itself (a symlink to it is fine: the caller chose the path).
pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd, BootError> {
    rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err(dir)(e.into()))
}

fn kind_of(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// What opening `name` under `dirfd` (expecting a `expected`, "regular file" or "directory")
/// failed with, as a [`BootError`] about `path`. `missing` builds the error for a file that does
/// not exist.
fn open_error(
    dirfd: impl AsFd,
    name: &str,
    path: &Path,
    expected: FileType,
    errno: Errno,
    missing: impl FnOnce(PathBuf) -> BootError,
) -> BootError {
    if errno == Errno::NOENT {
        return missing(path.to_path_buf());
    }
    // `O_NOFOLLOW` on a symlink fails with ELOOP on Linux and macOS, EMLINK on FreeBSD, and
    // `O_DIRECTORY` on a non-directory with ENOTDIR: ask what is there rather than trusting the
    // errno.
    if let Ok(st) = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => return BootError::Symlink { path: path.to_path_buf() },
            found if found != expected => {
                return BootError::NotRegular {
                    path: path.to_path_buf(),
                    kind: kind_of(found),
                    expected: kind_of(expected),
                };
            }
            _ => {}
        }
    }
    io_err(path)(errno.into())
}

/// Opens the subdirectory `name` of `dirfd` (the architecture directory), refusing a symlink.
pub(crate) fn open_subdir(
    dirfd: impl AsFd,
    name: &str,
    path: &Path,
    missing: impl FnOnce(PathBuf) -> BootError,
) -> Result<OwnedFd, BootError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(&dirfd, name, flags, Mode::empty())
        .map_err(|errno| open_error(&dirfd, name, path, FileType::Directory, errno, missing))
}

/// Opens the regular file `name` of `dirfd` read-only, once: no symlink, no FIFO/device/socket/
/// directory. `missing` builds the error for a file that does not exist.
pub(crate) fn open_regular(
    dirfd: impl AsFd,
    name: &str,
    path: &Path,
    missing: impl FnOnce(PathBuf) -> BootError,
) -> Result<(File, Snapshot), BootError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(&dirfd, name, flags, Mode::empty())
        .map_err(|errno| open_error(&dirfd, name, path, FileType::RegularFile, errno, missing))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path)(e.into()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        let expected = kind_of(FileType::RegularFile);
        return Err(BootError::NotRegular { path: path.to_path_buf(), kind: kind_of(ft), expected });
    }
    let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| io_err(path)(e.into()))?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK).map_err(|e| io_err(path)(e.into()))?;
    let file = File::from(fd);
    let snapshot = Snapshot::of(&file, path)?;
    Ok((file, snapshot))
}

/// What `fstat` says about an open file: identity, size and modification time. Taken when the
/// file is opened and again after it is hashed; any difference means it changed meanwhile.
/// Not ctime: a hard link made or removed elsewhere (backup tools, `cp -al`) or a chmod changes
/// it without touching the bytes, and refusing those releases at random helps nobody. A writer
/// who resets mtime by hand could slip past this check — but such a writer can also write after
/// verification, the caveat the module docs state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    dev: u64,
    ino: u64,
    pub(crate) size: u64,
    mtime: (i64, i64),
}

impl Snapshot {
    pub(crate) fn of(file: &File, path: &Path) -> Result<Snapshot, BootError> {
        let m = file.metadata().map_err(io_err(path))?;
        Ok(Snapshot { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: (m.mtime(), m.mtime_nsec()) })
    }

    /// What differs between `self` (before) and `after`, in words; `None` if nothing.
    pub(crate) fn changes(&self, after: &Snapshot) -> Option<String> {
        let mut what = Vec::new();
        if (self.dev, self.ino) != (after.dev, after.ino) {
            what.push("a different file".to_owned());
        }
        if self.size != after.size {
            what.push(format!("size {} -> {}", self.size, after.size));
        }
        if self.mtime != after.mtime {
            what.push("mtime changed".to_owned());
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// A path that names the open file itself, not whatever its original path names now: Linux's
/// `/proc/self/fd/N` magic link (and `/dev/fd/N` elsewhere). Opening it opens the same inode.
pub(crate) fn fd_path(file: &File) -> PathBuf {
    let fd = file.as_raw_fd();
    if cfg!(target_os = "linux") {
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    } else {
        PathBuf::from(format!("/dev/fd/{fd}"))
    }
}

/// BLAKE3 and byte count of the open `file`, through [`b3sums::hash_file`] on its
/// [`fd_path`] — memory-mapped and hashed on every core when large, as `b3sum` does — so what
/// is hashed is the inode behind the descriptor, whatever the path `path` (named in errors)
/// points to by now. The file offset is left at 0.
pub(crate) fn hash_open_file(file: &File, path: &Path) -> Result<(u64, String), BootError> {
    let hashed = b3sums::hash_file(&fd_path(file)).map_err(|e| match e {
        b3sums::B3Error::Read { source, .. } => io_err(path)(source),
        other => io_err(path)(io::Error::other(other.to_string())),
    })?;
    // Where `/dev/fd/N` duplicates the descriptor (macOS), hashing moved the shared offset.
    (&*file).seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    Ok(hashed)
}

/// Reads the open `file` (expected to hold `size` bytes) into memory, from offset 0.
pub(crate) fn read_open_file(file: &File, path: &Path, size: u64) -> Result<Vec<u8>, BootError> {
    let mut r = file;
    r.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
    r.take(size.saturating_add(1)).read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn open(dir: &Path, name: &str) -> Result<(File, Snapshot), BootError> {
        let d = open_dir(dir).unwrap();
        open_regular(&d, name, &dir.join(name), |path| BootError::AssetMissing { path })
    }

    #[test]
    fn hashing_an_open_file_sees_its_inode_not_its_path() {
        let t = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(b3sums::PARALLEL_THRESHOLD as usize * 3)).map(|i| (i % 253) as u8).collect();
        for data in [b"small file".to_vec(), big] {
            let p = t.path().join("f");
            fs::write(&p, &data).unwrap();
            let (file, _) = open(t.path(), "f").unwrap();
            fs::write(t.path().join("g"), b"replacement").unwrap();
            fs::rename(t.path().join("g"), &p).unwrap();
            let (n, hex) = hash_open_file(&file, &p).unwrap();
            assert_eq!((n, hex), (data.len() as u64, blake3::hash(&data).to_hex().to_string()));
            assert_eq!(read_open_file(&file, &p, data.len() as u64).unwrap(), data);
        }
    }

    #[test]
    fn snapshots_see_in_place_writes() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"abc").unwrap();
        let (file, before) = open(t.path(), "f").unwrap();
        assert_eq!(before.changes(&Snapshot::of(&file, Path::new("f")).unwrap()), None);
        fs::OpenOptions::new().append(true).open(t.path().join("f")).unwrap().write_all(b"d").unwrap();
        let what = before.changes(&Snapshot::of(&file, Path::new("f")).unwrap()).unwrap();
        assert!(what.contains("size 3 -> 4"), "{what}");
    }

    #[test]
    fn symlinks_fifos_and_directories_are_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        fs::create_dir(t.path().join("dir")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, t.path().join("fifo").as_path(), FileType::Fifo, Mode::RUSR, 0).unwrap();
        assert!(matches!(open(t.path(), "link"), Err(BootError::Symlink { .. })));
        assert!(matches!(open(t.path(), "dir"), Err(BootError::NotRegular { kind: "directory", .. })));
        assert!(matches!(open(t.path(), "fifo"), Err(BootError::NotRegular { kind: "FIFO", .. })));
        assert!(matches!(open(t.path(), "none"), Err(BootError::AssetMissing { .. })));
        let d = open_dir(t.path()).unwrap();
        let sub = |name: &str| open_subdir(&d, name, &t.path().join(name), |path| BootError::AssetMissing { path });
        std::os::unix::fs::symlink("dir", t.path().join("dirlink")).unwrap();
        assert!(sub("dir").is_ok());
        assert!(matches!(sub("dirlink"), Err(BootError::Symlink { .. })));
        assert!(matches!(sub("real"), Err(BootError::NotRegular { kind: "regular file", .. })));
        assert!(matches!(sub("none"), Err(BootError::AssetMissing { .. })));
    }

    #[test]
    fn components_are_single_and_plain() {
        for ok in ["x86_64", "vmlinuz", "a.b"] {
            assert!(is_component(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/x", "a\0b"] {
            assert!(!is_component(bad), "{bad:?}");
        }
    }
}
