//! The `Ready` message: protocol and agent version, kernel release, and boot timestamps
//! (guest uptime when the agent started, and when the init script started if it recorded it).

use std::path::Path;

use capsem_proto::{PROTOCOL_VERSION, Ready};

/// Where the init script writes `/proc/uptime` as it starts.
pub const INIT_UPTIME_PATH: &str = "/run/capsem/init-uptime";

/// Parses the first field of `/proc/uptime` (seconds with a fraction) into milliseconds.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let mut ms = 0u64;
    for (i, d) in frac.bytes().take(3).enumerate() {
        ms += u64::from(d - b'0') * 10u64.pow(2 - i as u32);
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

/// Current guest uptime in milliseconds (`None` without /proc).
pub fn uptime_ms() -> Option<u64> {
    parse_uptime_ms(&std::fs::read_to_string("/proc/uptime").ok()?)
}

/// Builds `Ready`; `started_ms` is the uptime when the agent started (read now when `None`).
pub fn ready(started_ms: Option<u64>, init_uptime_path: &Path) -> Ready {
    let uname = rustix::system::uname();
    Ready {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        uptime_ms: started_ms.or_else(uptime_ms).unwrap_or(0),
        init_started_ms: std::fs::read_to_string(init_uptime_path).ok().as_deref().and_then(parse_uptime_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_parsing() {
        assert_eq!(parse_uptime_ms("12.34 56.78\n"), Some(12_340));
        assert_eq!(parse_uptime_ms("0.9"), Some(900));
        assert_eq!(parse_uptime_ms("3.14159 1"), Some(3_141));
        assert_eq!(parse_uptime_ms("7\n"), Some(7_000));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("-1.0"), None);
        assert_eq!(parse_uptime_ms("1.x"), None);
        assert_eq!(parse_uptime_ms("99999999999999999999.0"), None);
    }

    #[test]
    fn ready_reads_the_init_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init-uptime");
        std::fs::write(&p, "1.25 0.50\n").unwrap();
        let r = ready(Some(2_000), &p);
        assert_eq!((r.uptime_ms, r.init_started_ms, r.protocol), (2_000, Some(1_250), PROTOCOL_VERSION));
        assert!(!r.kernel_release.is_empty());
        assert_eq!(ready(None, &dir.path().join("absent")).init_started_ms, None);
    }
}
