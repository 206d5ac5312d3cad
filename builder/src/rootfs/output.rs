//! Atomic output: write next to the target, rename over it only when complete.
//!
//! Owns the temporary file's name (`<name>.tmp-<pid>-<n>` in the output's directory, so the rename
//! never crosses filesystems), its removal on error or panic ([`Drop`]), the fsync-then-rename
//! commit, and the clean-up of files that killed runs left behind.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::RootfsError;

/// Distinguishes temporary files of concurrent builds in one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { op, path, source }
}

/// The output's directory and file name.
fn split(out: &Path) -> Result<(PathBuf, String), RootfsError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RootfsError::Options { reason: format!("output {} has no file name", out.display()) })?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// A temporary file that becomes `out` on [`TempOutput::persist`] and is deleted otherwise.
#[derive(Debug)]
pub(crate) struct TempOutput {
    path: PathBuf,
    out: PathBuf,
    persisted: bool,
}

impl TempOutput {
    /// Creates `<out>.tmp-<pid>-<n>`, failing if it exists.
    pub fn create(out: &Path) -> Result<(Self, File), RootfsError> {
        let (dir, name) = split(out)?;
        if out.is_dir() {
            return Err(RootfsError::Options { reason: format!("output {} is a directory", out.display()) });
        }
        let path = dir.join(format!("{name}.tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io_err("create", &path))?;
        Ok((Self { path, out: out.to_path_buf(), persisted: false }, file))
    }

    /// The temporary path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs `file`, renames the temporary file over the output, and syncs the directory.
    pub fn persist(mut self, file: File) -> Result<(), RootfsError> {
        file.sync_all().map_err(io_err("sync", &self.path))?;
        drop(file);
        fs::rename(&self.path, &self.out).map_err(io_err("rename to its final name", &self.path))?;
        self.persisted = true;
        // Make the rename itself durable. Some filesystems refuse to fsync a directory; the image
        // is complete either way, so that is not an error.
        if let Ok(dir) = File::open(split(&self.out)?.0) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Deletes `<out name>.tmp-<pid>-*` siblings whose process is gone (all of them where `/proc` is
/// not available to tell), and returns what it deleted.
pub(crate) fn remove_stale(out: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let (dir, name) = split(out)?;
    let prefix = format!("{name}.tmp-");
    let have_proc = Path::new("/proc/self").exists();
    let mut removed = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
        let entry = entry.map_err(io_err("read directory", &dir))?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = match pid {
            Some(pid) if have_proc => Path::new("/proc").join(pid.to_string()).exists(),
            _ => false,
        };
        if alive {
            continue; // a concurrent build of the same output, or this process
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temporary file", &path)(e)),
        }
    }
    removed.sort();
    Ok(removed)
}
