//! A per-minute budget for log lines whose number the guest controls (egress relay warnings on
//! both sides of the vsock): the first [`PER_MINUTE`] lines of a minute are printed, then one line
//! saying the rest are suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines let through per minute.
pub const PER_MINUTE: u64 = 20;

/// What to do with one more line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Print it.
    Print,
    /// Print that the rest of this minute is suppressed.
    SayPausing,
    /// Drop it.
    Drop,
}

/// One budget (a `static`, shared by every thread that logs that kind of line).
#[derive(Debug)]
pub struct Throttle {
    minute: AtomicU64,
    count: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { minute: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    /// The verdict for one more line now.
    pub fn next(&self) -> Verdict {
        let minute = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60);
        self.next_at(minute)
    }

    fn next_at(&self, minute: u64) -> Verdict {
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.count.store(0, Ordering::Relaxed);
        }
        match self.count.fetch_add(1, Ordering::Relaxed) {
            n if n < PER_MINUTE => Verdict::Print,
            PER_MINUTE => Verdict::SayPausing,
            _ => Verdict::Drop,
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_lines_then_one_notice_then_silence_until_the_next_minute() {
        let t = Throttle::new();
        let verdicts: Vec<Verdict> = (0..23).map(|_| t.next_at(7)).collect();
        assert!(verdicts[..20].iter().all(|v| *v == Verdict::Print));
        assert_eq!(verdicts[20..], [Verdict::SayPausing, Verdict::Drop, Verdict::Drop]);
        assert_eq!(t.next_at(8), Verdict::Print);
    }
}
