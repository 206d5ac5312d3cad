//! One `capsem run`'s host-side footprint, and its removal.
//!
//! Every VM gets a private directory `<capsem home>/run/<pid>-<nanos>` (mode 0700) for its
//! sockets and logs. It is removed when the session ends normally, on SIGINT/SIGTERM/SIGHUP
//! (after killing the VM's processes), and — for a `capsem` that was SIGKILLed and could not
//! clean up — by the next `capsem` that starts, which sweeps directories whose owning process
//! is gone. The VM processes themselves die with a SIGKILLed `capsem` through
//! `PR_SET_PDEATHSIG` (see [`crate::vm::qemu`]).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Processes and directories the signal handler must clean up.
#[derive(Debug, Default)]
struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { pids: Vec::new(), dirs: Vec::new() });

/// A VM's private run directory; removed on drop.
#[derive(Debug)]
pub struct Session {
    pub dir: PathBuf,
}

impl Session {
    /// Sweeps dead sessions under `root`, then creates this one's directory.
    pub fn create(root: &Path) -> io::Result<Session> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        sweep(root);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = root.join(format!("{}-{nanos}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        lock().dirs.push(dir.clone());
        Ok(Session { dir })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        lock().dirs.retain(|d| d != &self.dir);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a process with this pid exists.
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes session directories whose `capsem` process is gone.
pub fn sweep(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(root) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !alive(pid) && fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Registers VM processes for the signal handler.
pub fn track(pids: &[u32]) {
    lock().pids.extend_from_slice(pids);
}

/// Forgets processes that ended.
pub fn untrack(pids: &[u32]) {
    lock().pids.retain(|p| !pids.contains(p));
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler: kill the VM processes, remove the run
/// directories, exit with 128 + the signal number (what a shell reports).
pub fn install_signal_handler() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("capsem-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let reg = lock();
            for pid in &reg.pids {
                let _ = kill_pid(*pid);
            }
            for dir in &reg.dirs {
                let _ = fs::remove_dir_all(dir);
            }
            eprintln!("capsem: interrupted; the VM was stopped");
            std::process::exit(128 + sig);
        }
    })?;
    Ok(())
}

fn kill_pid(pid: u32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_private_removed_on_drop_and_dead_ones_swept() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let s = Session::create(root.path()).unwrap();
        assert_eq!(fs::metadata(&s.dir).unwrap().permissions().mode() & 0o777, 0o700);
        let dir = s.dir.clone();
        drop(s);
        assert!(!dir.exists());

        // A dead process's directory is swept; a live one's (ours) is kept.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = root.path().join(format!("{dead}-1"));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("vsock.sock_5000"), b"").unwrap();
        let live = Session::create(root.path()).unwrap();
        assert!(!stale.exists(), "stale session of dead pid {dead} survived");
        assert!(live.dir.exists());
        assert!(sweep(root.path()).is_empty());
    }
}
