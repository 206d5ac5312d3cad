//! The session log's timestamps: RFC 3339 UTC with milliseconds, written and parsed without a
//! date library (proleptic Gregorian calendar, H. Hinnant's day algorithms).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capsem_trust::manifest::civil_from_days;

/// RFC 3339 UTC with milliseconds; times before 1970 are clamped to the epoch.
pub fn format_time(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Parses exactly the form [`format_time`] writes.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 24 || [4, 7].iter().any(|&i| b[i] != b'-') || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, min, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let total = ((days * 24 + h) * 60 + min) * 60 + sec;
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(total * 1000 + ms).ok()?);
    // Rejects days past the month's end (2025-02-30) by round-tripping.
    (format_time(t) == s).then_some(t)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_time(s).unwrap()
    }

    #[test]
    fn times_round_trip_through_rfc3339_with_milliseconds() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // a leap day
        assert_eq!(format_time(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(parse_time("2024-02-29T12:34:56.789Z"), Some(t));
        // Sub-millisecond parts are truncated, pre-epoch times clamped.
        assert_eq!(format_time(t + Duration::from_micros(999)), "2024-02-29T12:34:56.789Z");
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000Z");
        for s in ["2000-12-31T23:59:59.999Z", "2100-03-01T00:00:00.000Z", "1999-01-01T00:00:00.001Z"] {
            assert_eq!(format_time(at(s)), s);
        }
        for bad in [
            "",
            "2025-02-29T00:00:00.000Z",
            "2025-13-01T00:00:00.000Z",
            "2025-01-01T24:00:00.000Z",
            "2025-01-01 00:00:00.000Z",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00.000+",
            "+025-01-01T00:00:00.000Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }
}
