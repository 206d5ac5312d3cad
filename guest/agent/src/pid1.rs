//! Life as PID 1: the single `capsem-agent: FATAL: <what>` console line, then `sync` and
//! `reboot(RB_AUTOBOOT)` (the VMM runs the guest with `-no-reboot`/`reboot=t`, so this ends
//! the VM), and a panic hook that takes the same path. Nothing here may hang or loop: a second
//! fatal error while handling the first aborts (the kernel then panics, which also ends the VM).

use std::sync::atomic::{AtomicBool, Ordering};

use rustix::system::RebootCommand;

static DYING: AtomicBool = AtomicBool::new(false);

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// `what` on one line (newlines and tabs become spaces).
pub fn one_line(what: &str) -> String {
    what.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Syncs filesystems and reboots (ends the VM). Falls back to exiting if reboot fails
/// (which, as PID 1, makes the kernel panic and the VM end).
pub fn reboot() -> ! {
    rustix::fs::sync();
    let err = rustix::system::reboot(RebootCommand::Restart);
    eprintln!("capsem-agent: reboot failed: {err:?}");
    std::process::exit(1)
}

/// Prints the fatal line; as PID 1 then syncs and reboots, otherwise exits with status 1.
pub fn fatal(pid1: bool, what: &str) -> ! {
    if DYING.swap(true, Ordering::SeqCst) {
        std::process::abort();
    }
    eprintln!("capsem-agent: FATAL: {}", one_line(what));
    if pid1 {
        reboot();
    }
    std::process::exit(1)
}

/// Makes any panic, on any thread, fatal (for PID 1: a half-working init is worse than none).
pub fn install_panic_hook(pid1: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        fatal(pid1, &format!("panic: {msg}{at}"));
    }));
}

#[cfg(test)]
mod tests {
    #[test]
    fn fatal_text_is_one_line() {
        assert_eq!(super::one_line("a\nb\tc"), "a b c");
        assert!(!super::is_pid1());
    }
}
