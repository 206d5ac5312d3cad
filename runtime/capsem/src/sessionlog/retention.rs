//! Retention: keeps the sessions directory within the image's `retention_days` and
//! `max_sessions` (vm/resources.toml, overridable in user/corp config). Run after a new session
//! is created; never removes that session. Older logs go first (ids sort by start time).
//! `min_content_sessions`, `max_disk_gb` and `terminated_retention_days` are not applied yet.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{LogError, db_path, parse_time, session_ids};

/// The start time encoded in a session id (`YYYYMMDDTHHMMSSZ-xxxxxx`).
fn id_time(id: &str) -> Option<SystemTime> {
    let d = id.get(..15)?;
    let stamp = format!("{}-{}-{}T{}:{}:{}.000Z", &d[0..4], &d[4..6], &d[6..8], &d[9..11], &d[11..13], &d[13..15]);
    parse_time(&stamp)
}

/// Removes session logs older than `retention` and, beyond that, the oldest ones until at most
/// `max_sessions` remain — never `keep`. Returns the ids removed.
pub fn prune(
    dir: &Path,
    keep: &str,
    max_sessions: usize,
    retention: Duration,
    now: SystemTime,
) -> Result<Vec<String>, LogError> {
    let mut ids = session_ids(dir)?;
    ids.sort();
    let cutoff = now.checked_sub(retention);
    let mut removed = Vec::new();
    let mut remaining = ids.len();
    for id in &ids {
        if id == keep {
            continue;
        }
        let expired = matches!((id_time(id), cutoff), (Some(t), Some(c)) if t < c);
        if expired || remaining > max_sessions.max(1) {
            let db = db_path(dir, id);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            removed.push(id.clone());
            remaining -= 1;
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
        let removed = prune(dir.path(), &ids[4], 3, day * 30, now).unwrap();
        assert_eq!(removed, vec![ids[0].clone(), ids[1].clone()]);
        let left = session_ids(dir.path()).unwrap();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&ids[4]));
        // The session being kept survives even when it alone exceeds every limit.
        let removed = prune(dir.path(), &ids[2], 1, Duration::ZERO, now).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(session_ids(dir.path()).unwrap(), vec![ids[2].clone()]);
    }
}
