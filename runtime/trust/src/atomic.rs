//! Atomic file writes: a file is either its old contents or its complete new contents, also
//! after a crash or `kill -9`.
//!
//! The bytes go to a temporary file in the target's directory (`.<name>.tmp-<pid>-<n>`), which
//! is fsynced and then renamed over the target (or hard-linked to it, when the target must not
//! exist yet); the directory is fsynced last. On any error the temporary file is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files of one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// How to put the new file in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Replace whatever is there.
    Always,
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the target exists, even if it appears while
    /// writing.
    Never,
}

/// The temporary name next to `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id())))
}

/// Writes `bytes` to `path` atomically with mode 0644.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, 0o644, Replace::Always, |f| f.write_all(bytes))
}

/// Copies `from` to `to` atomically, streaming (large files are not held in memory).
pub fn copy(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    write_with(to, 0o644, Replace::Always, |f| io::copy(&mut source, f).map(drop))
}

/// Writes the file through `fill` with `mode`, then puts it in place as `replace` says.
pub fn write_with(
    path: &Path,
    mode: u32,
    replace: Replace,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        match replace {
            Replace::Always => fs::rename(&tmp, path),
            Replace::Never => fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp)),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Makes the rename itself durable; a failure here does not undo a complete write.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn writes_replace_or_refuse_and_never_leave_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let e = write_with(&p, 0o600, Replace::Never, |f| f.write_all(b"three")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let q = dir.path().join("secret");
        write_with(&q, 0o600, Replace::Never, |f| f.write_all(b"s")).unwrap();
        assert_eq!(fs::metadata(&q).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_with(&p, 0o644, Replace::Always, |_| Err(io::Error::other("disk on fire"))).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        assert_eq!(fs::read(&p).unwrap(), b"two", "a failed write keeps the old contents");
        copy(&p, &dir.path().join("g")).unwrap();
        assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"two");
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
        assert!(write(Path::new("/"), b"x").is_err());
    }
}
