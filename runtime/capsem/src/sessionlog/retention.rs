//! Retention: keeps the sessions directory within the image's `retention_days`,
//! `max_sessions` and `max_disk_gb` (vm/resources.toml, overridable in user/corp config). Run
//! after a new session is created; never removes that session. Older logs go first (ids sort by
//! start time). `min_content_sessions` and `terminated_retention_days` are not applied yet.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{LogError, db_path, parse_time, session_ids};

/// The limits [`prune`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Logs started longer ago than this go.
    pub max_age: Duration,
    /// At most this many logs stay (at least 1: the current one).
    pub max_sessions: usize,
    /// The logs' files (database, WAL, shared memory) together stay within this many bytes.
    pub max_bytes: u64,
}

/// The start time encoded in a session id (`YYYYMMDDTHHMMSSZ-xxxxxx`).
fn id_time(id: &str) -> Option<SystemTime> {
    let d = id.get(..15)?;
    let stamp = format!("{}-{}-{}T{}:{}:{}.000Z", &d[0..4], &d[4..6], &d[6..8], &d[9..11], &d[11..13], &d[13..15]);
    parse_time(&stamp)
}

/// The files of one session log.
fn files(dir: &Path, id: &str) -> [String; 3] {
    let db = db_path(dir, id);
    ["", "-wal", "-shm"].map(|suffix| format!("{}{suffix}", db.display()))
}

/// Bytes on disk of one session log (missing files count 0).
fn size(dir: &Path, id: &str) -> u64 {
    files(dir, id).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

/// Removes session logs older than `limits.max_age`, then the oldest ones until at most
/// `limits.max_sessions` remain and they take at most `limits.max_bytes` — never `keep`.
/// Returns the ids removed, oldest first.
pub fn prune(dir: &Path, keep: &str, limits: Retention, now: SystemTime) -> Result<Vec<String>, LogError> {
    let mut ids = session_ids(dir)?;
    ids.sort();
    let cutoff = now.checked_sub(limits.max_age);
    let sizes: Vec<u64> = ids.iter().map(|id| size(dir, id)).collect();
    let mut total: u64 = sizes.iter().sum();
    let mut removed = Vec::new();
    let mut remaining = ids.len();
    for (id, bytes) in ids.iter().zip(sizes) {
        if id == keep {
            continue;
        }
        let expired = matches!((id_time(id), cutoff), (Some(t), Some(c)) if t < c);
        if expired || remaining > limits.max_sessions.max(1) || total > limits.max_bytes {
            for file in files(dir, id) {
                let _ = std::fs::remove_file(file);
            }
            removed.push(id.clone());
            remaining -= 1;
            total -= bytes;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessionlog::{SessionLog, SessionMeta};

    fn meta() -> SessionMeta {
        SessionMeta {
            image: "i".into(),
            version: "1".into(),
            assets_dir: "/a".into(),
            command: vec!["true".into()],
            hypervisor: "qemu".into(),
        }
    }

    #[test]
    fn old_and_surplus_sessions_go_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ids = Vec::new();
        // Five sessions, 40, 20, 3, 2 and 1 days old.
        for age in [40u64, 20, 3, 2, 1] {
            let log = SessionLog::create_at(dir.path(), meta(), now - day * age as u32).unwrap();
            log.finish("0").unwrap();
            ids.push(log.id().to_owned());
        }
        assert_eq!(id_time(&ids[0]), Some(now - day * 40));
        // 30-day retention removes the 40-day-old one; max 3 then removes the 20-day-old one.
        let limits = |max_sessions, max_age| Retention { max_age, max_sessions, max_bytes: u64::MAX };
        let removed = prune(dir.path(), &ids[4], limits(3, day * 30), now).unwrap();
        assert_eq!(removed, vec![ids[0].clone(), ids[1].clone()]);
        let left = session_ids(dir.path()).unwrap();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&ids[4]));
        // The session being kept survives even when it alone exceeds every limit.
        let removed = prune(dir.path(), &ids[2], limits(1, Duration::ZERO), now).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(session_ids(dir.path()).unwrap(), vec![ids[2].clone()]);
    }

    #[test]
    fn the_oldest_logs_go_until_the_rest_fit_in_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ids = Vec::new();
        for age in [4u32, 3, 2, 1] {
            let log = SessionLog::create_at(dir.path(), meta(), now - Duration::from_secs(60) * age).unwrap();
            log.finish("0").unwrap();
            ids.push(log.id().to_owned());
        }
        let each = size(dir.path(), &ids[0]);
        assert!(each > 0 && ids.iter().all(|id| size(dir.path(), id) == each), "logs of equal size");
        let limits = |max_bytes| Retention { max_age: Duration::from_secs(86_400), max_sessions: 100, max_bytes };
        // Room for two and a half: the two oldest go.
        let removed = prune(dir.path(), &ids[3], limits(each * 5 / 2), now).unwrap();
        assert_eq!(removed, ids[..2].to_vec());
        assert_eq!(session_ids(dir.path()).unwrap().len(), 2);
        // Within the limit: nothing goes.
        assert!(prune(dir.path(), &ids[3], limits(each * 2), now).unwrap().is_empty());
        // The current session stays even when it alone is over the limit.
        assert_eq!(prune(dir.path(), &ids[3], limits(1), now).unwrap(), vec![ids[2].clone()]);
        assert_eq!(session_ids(dir.path()).unwrap(), vec![ids[3].clone()]);
    }
}
