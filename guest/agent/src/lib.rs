//! The capsem guest agent as a library: the serve loop ([`serve()`]) that answers a host over
//! any byte stream, and what it needs to run as PID 1 of the guest (transport selection,
//! child reaping, the fatal path). `main.rs` only wires these together.
//!
//! - [`serve`]: the request loop, generic over `Read + Write`; per-request state.
//! - [`exec`]: starting processes (pipes or a PTY), streaming their output, timeouts, signals.
//! - [`reaper`]: who calls `waitpid` — each exec its own child, or (as PID 1) one thread for all.
//! - [`files`]: WriteFile/ReadFile/Configure files: atomic writes, streamed reads.
//! - [`env`]: the environment of an exec and the `PATH` lookup of `argv[0]`.
//! - [`ready`]: the `Ready` message (uptime, kernel release, init timestamp).
//! - [`transport`]: `capsem.agent=` on the kernel command line → vsock or virtio-serial stream.
//! - [`pid1`]: the fatal-error line, panic hook and reboot used when the agent is PID 1.
//! - [`egress`]: the guest's redirected HTTP(S) and DNS traffic, relayed to the host over vsock.

pub mod egress;
pub mod env;
pub mod exec;
pub mod files;
pub mod pid1;
pub mod ready;
pub mod reaper;
pub mod serve;
pub mod transport;

pub use reaper::ReapMode;
pub use serve::{AgentError, ServeEnd, ServeOptions, serve};

/// Stack size of the agent's helper threads (they only shuffle bytes).
const THREAD_STACK: usize = 256 * 1024;

/// Starts a named helper thread with a small stack.
pub(crate) fn spawn_thread<F>(name: String, f: F) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new().name(name).stack_size(THREAD_STACK).spawn(f).map(drop)
}

/// An OS error as text without std's ` (os error N)` suffix: `No such file or directory`.
pub(crate) fn os_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Locks a mutex, ignoring poisoning (a panicked helper thread must not take the agent down).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_msg_strips_the_errno_suffix() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(super::os_msg(&e), "No such file or directory");
        let e = std::io::Error::other("plain");
        assert_eq!(super::os_msg(&e), "plain");
    }
}
