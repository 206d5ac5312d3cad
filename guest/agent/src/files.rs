//! Files on behalf of the host: atomic writes (WriteFile, Configure's boot files) and streamed
//! reads (ReadFile). A write goes to a temporary file in the target's directory, gets its mode
//! with `fchmod` (so the umask does not matter) and is renamed over the target. Every error
//! names the path and the OS error: `write /usr/x: Read-only file system`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capsem_proto::{BootFile, GuestMsg, MAX_CHUNK};

use crate::serve::Outbox;
use crate::{os_msg, spawn_thread};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written; removed unless [`Upload::finish`] succeeds.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    mode: u32,
}

impl Upload {
    /// Opens a temporary file next to `path` (whose directory must exist).
    pub fn begin(path: &str, mode: u32) -> Result<Upload, String> {
        let target = Path::new(path);
        let name = match target.file_name() {
            Some(n) if target.is_absolute() => n,
            _ => return Err(format!("write {path}: not an absolute file path")),
        };
        let dir = target.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(
            ".{}.capsem-tmp.{}.{}",
            name.to_string_lossy(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("write {path}: {}", os_msg(&e)))?;
        Ok(Upload { path: target.to_path_buf(), tmp, file: Some(file), mode })
    }

    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let file = self.file.as_mut().ok_or_else(|| format!("write {}: already finished", self.path.display()))?;
        file.write_all(data).map_err(|e| format!("write {}: {}", self.path.display(), os_msg(&e)))
    }

    /// Applies the mode and renames the file into place.
    pub fn finish(mut self) -> Result<(), String> {
        let file = self.file.take().ok_or_else(|| format!("write {}: already finished", self.path.display()))?;
        let err = |e: std::io::Error| format!("write {}: {}", self.path.display(), os_msg(&e));
        file.set_permissions(std::fs::Permissions::from_mode(self.mode & 0o7777)).map_err(err)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(err)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `path` atomically with `mode`.
pub fn write_atomic(path: &str, mode: u32, data: &[u8]) -> Result<(), String> {
    let mut up = Upload::begin(path, mode)?;
    up.write(data)?;
    up.finish()
}

/// Writes Configure's files, creating their parent directories; stops at the first error.
pub fn write_boot_files(files: &[BootFile]) -> Result<(), String> {
    for f in files {
        if let Some(dir) = Path::new(&f.path).parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("write {}: {}: {}", f.path, dir.display(), os_msg(&e)))?;
        }
        if f.append {
            append(&f.path, f.mode, &f.content)?;
        } else {
            write_atomic(&f.path, f.mode, &f.content)?;
        }
    }
    Ok(())
}

/// Appends `data` to `path` (created with `mode` when missing).
fn append(path: &str, mode: u32, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode & 0o7777)
        .open(path)
        .map_err(|e| format!("append {path}: {}", os_msg(&e)))?;
    f.write_all(data).map_err(|e| format!("append {path}: {}", os_msg(&e)))
}

/// Streams the file at `path` to the host on a thread: FileChunk… FileEnd, or Error.
pub(crate) fn spawn_read(out: Arc<Outbox>, id: u32, path: String) {
    let out2 = Arc::clone(&out);
    let started = spawn_thread(format!("capsem-read-{id}"), move || {
        if let Err(message) = stream_file(&out2, id, &path) {
            out2.send_error(id, message);
        }
    });
    if let Err(e) = started {
        out.send_error(id, format!("read: cannot start a thread: {}", os_msg(&e)));
    }
}

fn stream_file(out: &Outbox, id: u32, path: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("read {path}: {}", os_msg(&e));
    let mut file = File::open(path).map_err(err)?;
    if file.metadata().map_err(err)?.is_dir() {
        return Err(format!("read {path}: Is a directory"));
    }
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        size += n as u64;
        if out.send(&GuestMsg::FileChunk { id, data: buf[..n].to_vec() }).is_err() {
            return Ok(()); // the host is gone
        }
    }
    let _ = out.send(&GuestMsg::FileEnd { id, size });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_applies_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let ps = p.to_str().unwrap();
        write_atomic(ps, 0o640, b"one").unwrap();
        write_atomic(ps, 0o600, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn boot_files_can_append() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bundle.pem");
        std::fs::write(&p, b"system\n").unwrap();
        let ps = p.to_str().unwrap().to_owned();
        let add = |content: &[u8]| BootFile { path: ps.clone(), mode: 0o644, content: content.to_vec(), append: true };
        write_boot_files(&[add(b"capsem-ca\n")]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"system\ncapsem-ca\n");
        let fresh = dir.path().join("new.pem");
        let f = BootFile { path: fresh.to_str().unwrap().into(), mode: 0o600, content: b"x".to_vec(), append: true };
        write_boot_files(&[f]).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/f");
        let e = write_atomic(p.to_str().unwrap(), 0o644, b"").unwrap_err();
        assert_eq!(e, format!("write {}: No such file or directory", p.display()));
        assert!(write_atomic("relative", 0o644, b"").unwrap_err().contains("absolute"));
        // An abandoned upload removes its temp file.
        let up = Upload::begin(dir.path().join("g").to_str().unwrap(), 0o644).unwrap();
        drop(up);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn boot_files_create_parents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/c.conf");
        write_boot_files(&[BootFile {
            path: p.to_str().unwrap().into(),
            mode: 0o600,
            content: b"x".to_vec(),
            append: false,
        }])
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
}
