//! Child reaping: who calls `waitpid`, so that exit statuses reach the exec that owns them.
//!
//! - [`ReapMode::Own`] (the agent is not PID 1, e.g. tests on the host): each spawned child
//!   gets a thread that waits for exactly that pid; other children of the process are untouched.
//! - [`ReapMode::All`] (the agent is PID 1, or a child subreaper): one process-wide thread reaps
//!   every child, including orphans re-parented to us, and hands the statuses of our own
//!   children to their execs. It peeks with `waitid(P_ALL, WEXITED|WNOWAIT)` and reaps only
//!   while holding the spawn lock, and every spawn happens under that lock, so it cannot steal
//!   the status std's `Command::spawn` waits for itself when `exec` fails in the child.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use capsem_proto::ExitStatus;
use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions, WaitOptions, WaitStatus, wait, waitid, waitpid};

use crate::{lock, spawn_thread};

/// How children are reaped; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReapMode {
    /// Wait for each spawned child by pid.
    #[default]
    Own,
    /// Reap every child of the process (PID 1 / subreaper).
    All,
}

/// Called once with the exit status of a spawned child.
pub(crate) type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// Converts a raw wait status.
pub(crate) fn exit_status(st: WaitStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::Signal(sig)
    } else {
        ExitStatus::Code(-1)
    }
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<i32, OnExit>,
    /// Bumped on every spawn (wakes the reaper when it had no children).
    spawned: u64,
}

struct AllShared {
    inner: Mutex<Registry>,
    cv: Condvar,
}

static ALL: OnceLock<Arc<AllShared>> = OnceLock::new();
static OWN_SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Spawns children and routes their exit statuses.
#[derive(Clone)]
pub struct Reaper {
    all: Option<Arc<AllShared>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").field("mode", &if self.all.is_some() { "all" } else { "own" }).finish()
    }
}

impl Reaper {
    /// A reaper in `mode`; for [`ReapMode::All`] this starts the process-wide reaper thread
    /// the first time.
    pub fn new(mode: ReapMode) -> io::Result<Reaper> {
        match mode {
            ReapMode::Own => Ok(Reaper { all: None }),
            ReapMode::All => {
                if let Some(shared) = ALL.get() {
                    return Ok(Reaper { all: Some(Arc::clone(shared)) });
                }
                let shared = Arc::new(AllShared { inner: Mutex::new(Registry::default()), cv: Condvar::new() });
                if ALL.set(Arc::clone(&shared)).is_ok() {
                    let for_thread = Arc::clone(&shared);
                    spawn_thread("capsem-reaper".into(), move || reap_all(&for_thread))?;
                }
                Ok(Reaper { all: ALL.get().cloned() })
            }
        }
    }

    /// Runs `spawn` (which returns the child handle and its pid) under the spawn lock and
    /// arranges for `on_exit` to get its status.
    pub(crate) fn spawn<T>(&self, spawn: impl FnOnce() -> io::Result<(T, u32)>, on_exit: OnExit) -> io::Result<T> {
        match &self.all {
            Some(shared) => {
                let mut reg = lock(&shared.inner);
                let (child, pid) = spawn()?;
                reg.waiters.insert(pid as i32, on_exit);
                reg.spawned += 1;
                shared.cv.notify_all();
                Ok(child)
            }
            None => {
                let (child, pid) = {
                    let _g = lock(&OWN_SPAWN_LOCK);
                    spawn()?
                };
                let waiter = move || {
                    let status = Pid::from_raw(pid as i32).map_or(ExitStatus::Code(-1), wait_one);
                    on_exit(status);
                };
                if let Err(e) = spawn_thread(format!("capsem-wait-{pid}"), waiter) {
                    eprintln!("capsem-agent: cannot start the waiter of pid {pid}: {e}");
                }
                Ok(child)
            }
        }
    }
}

fn wait_one(pid: Pid) -> ExitStatus {
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, st))) => return exit_status(st),
            Ok(None) | Err(Errno::INTR) => continue,
            Err(e) => {
                eprintln!("capsem-agent: waitpid({}): {e}", pid.as_raw_nonzero());
                return ExitStatus::Code(-1);
            }
        }
    }
}

fn reap_all(shared: &AllShared) {
    loop {
        let generation = lock(&shared.inner).spawned;
        match waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) => {
                let mut done = Vec::new();
                {
                    let mut reg = lock(&shared.inner);
                    loop {
                        // `wait` is waitpid(-1): any child (rustix's `waitpid(None)` means our process group).
                        match wait(WaitOptions::NOHANG) {
                            Ok(Some((pid, st))) => {
                                if let Some(cb) = reg.waiters.remove(&pid.as_raw_nonzero().get()) {
                                    done.push((cb, exit_status(st)));
                                }
                                // Otherwise an orphan: reaped, nothing to report.
                            }
                            Err(Errno::INTR) => continue,
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                if done.is_empty() {
                    // Only an orphan, or the child of a failed spawn that std reaped itself:
                    // nothing to hand out. Never spin if waitid keeps reporting something.
                    std::thread::sleep(Duration::from_millis(1));
                }
                for (cb, status) in done {
                    cb(status);
                }
            }
            Err(Errno::INTR) => {}
            Err(Errno::CHILD) => {
                // No children at all: wait for the next spawn (re-checking now and then).
                let reg = lock(&shared.inner);
                if reg.spawned == generation {
                    let _ = shared.cv.wait_timeout(reg, Duration::from_secs(1));
                }
            }
            Err(e) => {
                eprintln!("capsem-agent: waitid: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
