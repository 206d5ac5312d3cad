//! What a killed build leaves in the engine, and how the next build removes it.
//!
//! A run normally removes its container and image itself (see `super::Resources`). After
//! `kill -9` it cannot, so everything it creates is findable by a later run:
//!
//! - The rootfs image and the export container carry labels: `capsem.build=1` and the creating
//!   run's identity (`capsem.build.pid`, `.host`, `.boot`, `.start`).
//! - The classic builder's intermediate images cannot be labelled (it adds build labels only in a
//!   last step), so each run also keeps a **journal** — `<state dir>/<pid>-<start>.run`, one line
//!   per container or image as the build log reveals it — and deletes it when it has cleaned up.
//!
//! A run is **dead** when it was started on this host and either in an earlier boot (another
//! `/proc/sys/kernel/random/boot_id`), or its pid is gone, or that pid now belongs to a process
//! started at another time (pid reuse: `/proc/<pid>/stat` field 22). Anything from another host
//! (an engine shared over TCP) is left alone: we cannot tell whether it is still running. Only
//! dead runs' leftovers are removed, so concurrent builds never disturb each other. Cached
//! `capsem-base:*` images are never touched.
//!
//! A bootstrap's mmdebstrap working directory (`$TMPDIR/capsem-mmdebstrap-<pid>-<start>`, see
//! `super::base`) is deleted the same way, unless something is still mounted below it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::engine::{Engine, EngineError, ImageNode};

/// Marks a container or image made by a build.
pub const BUILD_LABEL: &str = "capsem.build";
const PID_LABEL: &str = "capsem.build.pid";
const HOST_LABEL: &str = "capsem.build.host";
const BOOT_LABEL: &str = "capsem.build.boot";
const START_LABEL: &str = "capsem.build.start";
/// Repository of cached bootstrap bases (`crate::plan::bootstrap_tag`), never removed here.
const BASE_REPO: &str = "capsem-base:";

/// Who made something: enough to tell later whether that process still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId {
    /// Host name.
    pub host: String,
    /// Kernel boot id (empty where unknown).
    pub boot: String,
    /// Process id.
    pub pid: u32,
    /// Process start time in clock ticks since boot (0 where unknown).
    pub start: u64,
}

/// Whether a run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Still running.
    Alive,
    /// Gone: its leftovers may be removed.
    Dead,
    /// Another host, or facts we cannot read.
    Unknown,
}

impl RunId {
    /// This process.
    pub fn current() -> RunId {
        let pid = std::process::id();
        RunId { host: hostname(), boot: boot_id().unwrap_or_default(), pid, start: start_ticks(pid).unwrap_or(0) }
    }

    /// `<pid>-<start>`: unique on this host for this boot.
    pub fn token(&self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    /// The labels that carry this identity.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (BUILD_LABEL.to_owned(), "1".to_owned()),
            (PID_LABEL.to_owned(), self.pid.to_string()),
            (HOST_LABEL.to_owned(), self.host.clone()),
            (BOOT_LABEL.to_owned(), self.boot.clone()),
            (START_LABEL.to_owned(), self.start.to_string()),
        ])
    }

    /// Reads the identity back from labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<RunId> {
        Some(RunId {
            host: labels.get(HOST_LABEL)?.clone(),
            boot: labels.get(BOOT_LABEL)?.clone(),
            pid: labels.get(PID_LABEL)?.parse().ok()?,
            start: labels.get(START_LABEL)?.parse().ok()?,
        })
    }

    /// Whether this run still runs, judged from `me` (the current process).
    pub fn liveness(&self, me: &RunId) -> Liveness {
        if self.host != me.host || me.boot.is_empty() || self.boot.is_empty() {
            return Liveness::Unknown;
        }
        if self.boot != me.boot {
            return Liveness::Dead;
        }
        match start_ticks(self.pid) {
            None => Liveness::Dead,
            Some(t) if t != self.start => Liveness::Dead,
            Some(_) => Liveness::Alive,
        }
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Field 22 of `/proc/<pid>/stat` (fields counted after the parenthesized command name).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Prefix of a run's mmdebstrap working directory in the temporary directory.
const WORK_PREFIX: &str = "capsem-mmdebstrap-";

/// File in a working directory naming the mmdebstrap process that uses it (`<pid> <start>`).
pub(crate) const PID_FILE: &str = "mmdebstrap.pid";

/// `<pid> <start ticks>` of a process, for [`process_alive`].
pub(crate) fn process_token(pid: u32) -> String {
    format!("{pid} {}", start_ticks(pid).unwrap_or(0))
}

/// Whether the process named by a [`process_token`] still runs.
fn process_alive(token: &str) -> bool {
    let mut parts = token.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) = (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u64>))
    else {
        return false;
    };
    start_ticks(pid) == Some(start)
}

/// This run's mmdebstrap working directory: `$TMPDIR/capsem-mmdebstrap-<pid>-<start>`.
pub fn work_dir(me: &RunId) -> PathBuf {
    std::env::temp_dir().join(format!("{WORK_PREFIX}{}", me.token()))
}

/// Deletes the mmdebstrap working directories of dead runs whose mmdebstrap has exited too
/// ([`remove_work_dir`]).
fn reap_work_dirs(me: &RunId, out: &mut Reaped) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, start)) = name.strip_prefix(WORK_PREFIX).and_then(|t| t.split_once('-')) else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { continue };
        let run = RunId { pid, start, ..me.clone() };
        if run.liveness(me) != Liveness::Dead {
            continue;
        }
        let path = entry.path();
        // mmdebstrap outlives a killed run until it has unmounted and failed to write its tar.
        if fs::read_to_string(path.join(PID_FILE)).is_ok_and(|t| process_alive(&t)) {
            continue;
        }
        match remove_work_dir(&path) {
            Ok(()) => out.work_dirs.push(path),
            Err(e) => out.warnings.push(e),
        }
    }
}

/// Deletes an mmdebstrap working directory whose mmdebstrap has exited, unless something is still
/// mounted below it: deleting through a mount (its chroot's /dev/shm, say) would reach the host.
pub(crate) fn remove_work_dir(path: &Path) -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let below = format!("{}/", path.display());
    // Field 5 of mountinfo is the mount point (spaces escaped as \040; our names have none).
    if let Some(mount) = mounts.lines().filter_map(|l| l.split(' ').nth(4)).find(|m| m.starts_with(&below)) {
        return Err(format!(
            "{} left alone: {mount} is still mounted (umount it, then delete the directory)",
            path.display()
        ));
    }
    fs::remove_dir_all(path).map_err(|e| format!("removing {}: {e}", path.display()))
}

/// A run's journal of engine objects. Lines: `run <host> <boot> <pid> <start>`, then
/// `container <id>` / `image <id>`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Creates the journal of `run` in `dir`.
    pub fn create(dir: &Path, run: &RunId) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.run", run.token()));
        let mut file = File::create(&path)?;
        writeln!(file, "run {} {} {} {}", run.host, nonempty(&run.boot), run.pid, run.start)?;
        Ok(Journal { path, file })
    }

    /// Records an engine object (`container` or `image`). A failed write only weakens the
    /// clean-up after a crash, so it is ignored.
    pub fn record(&mut self, kind: &str, id: &str) {
        let _ = writeln!(self.file, "{kind} {id}");
    }

    /// Deletes the journal: everything in it has been removed.
    pub fn finish(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn nonempty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn parse_journal(text: &str) -> Option<(RunId, Vec<(String, String)>)> {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next()?.split(' ').collect();
    let ["run", host, boot, pid, start] = head.as_slice() else { return None };
    let boot = if *boot == "-" { String::new() } else { (*boot).to_owned() };
    let run = RunId { host: (*host).to_owned(), boot, pid: pid.parse().ok()?, start: start.parse().ok()? };
    let objects = lines.filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    Some((run, objects))
}

/// What [`reap`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reaped {
    /// Containers removed.
    pub containers: Vec<String>,
    /// Images removed (ids or tags).
    pub images: Vec<String>,
    /// Journals of dead runs processed.
    pub journals: u64,
    /// mmdebstrap working directories of dead runs deleted.
    pub work_dirs: Vec<PathBuf>,
    /// What could not be removed, and why.
    pub warnings: Vec<String>,
}

/// Removes the leftovers of dead runs (see the module docs).
pub async fn reap(engine: &Engine, state_dir: &Path, me: &RunId) -> Result<Reaped, EngineError> {
    let mut out = Reaped::default();
    reap_work_dirs(me, &mut out);
    // Labelled containers first: they pin their images.
    for c in engine.containers_with_label(BUILD_LABEL).await? {
        if RunId::from_labels(&c.labels).is_some_and(|r| r.liveness(me) == Liveness::Dead) {
            remove_container(engine, &c.id, &mut out).await;
        }
    }
    if let Ok(dir) = fs::read_dir(state_dir) {
        let mut paths: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "run")) {
            let Ok(text) = fs::read_to_string(&path) else { continue };
            let Some((run, objects)) = parse_journal(&text) else {
                out.warnings.push(format!("{}: not a journal; left alone", path.display()));
                continue;
            };
            if run.liveness(me) != Liveness::Dead {
                continue;
            }
            let before = out.warnings.len();
            for (_, id) in objects.iter().filter(|(k, _)| k == "container") {
                remove_container(engine, id, &mut out).await;
            }
            let journaled: Vec<&str> = objects.iter().filter(|(k, _)| k == "image").map(|(_, v)| v.as_str()).collect();
            // The engine may have gone on building for a moment after the run died: images
            // built on the journaled ones are that run's too. Leaves first; removing one also
            // prunes its untagged parents.
            match engine.all_images().await {
                Ok(all) => {
                    for leaf in leaves_below(&all, &journaled) {
                        remove_image(engine, &leaf, &mut out).await;
                    }
                }
                Err(e) => out.warnings.push(e.to_string()),
            }
            // Then whatever is left, newest first.
            for id in journaled.iter().rev() {
                remove_image(engine, id, &mut out).await;
            }
            out.journals += 1;
            if out.warnings.len() == before {
                let _ = fs::remove_file(&path);
            }
        }
    }
    for i in engine.images_with_label(BUILD_LABEL).await? {
        if RunId::from_labels(&i.labels).is_some_and(|r| r.liveness(me) == Liveness::Dead) {
            remove_image(engine, &i.id, &mut out).await;
        }
    }
    Ok(out)
}

/// Ids of the images that descend from (or are) one of `roots` (full ids, `sha256:…`, or 12-hex
/// prefixes; tags are ignored) and have no children themselves.
fn leaves_below(all: &[ImageNode], roots: &[&str]) -> Vec<String> {
    let matches = |id: &str, root: &str| {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let root = root.strip_prefix("sha256:").unwrap_or(root);
        root.len() >= 12 && root.bytes().all(|b| b.is_ascii_hexdigit()) && hex.starts_with(root)
    };
    // A tagged image is never one of a build's intermediates (a cached base, say): everything
    // built on it is not ours to remove.
    let mut family: BTreeSet<&str> = all
        .iter()
        .filter(|i| i.tags.is_empty() && roots.iter().any(|r| matches(&i.id, r)))
        .map(|i| i.id.as_str())
        .collect();
    loop {
        let children: Vec<&str> = all
            .iter()
            .filter(|i| family.contains(i.parent.as_str()) && !family.contains(i.id.as_str()))
            .map(|i| i.id.as_str())
            .collect();
        if children.is_empty() {
            break;
        }
        family.extend(children);
    }
    let has_child: BTreeSet<&str> = all.iter().map(|i| i.parent.as_str()).collect();
    family.into_iter().filter(|id| !has_child.contains(id)).map(str::to_owned).collect()
}

async fn remove_container(engine: &Engine, id: &str, out: &mut Reaped) {
    match engine.remove_container(id).await {
        Ok(true) => out.containers.push(crate::engine::short_id(id).to_owned()),
        Ok(false) => {}
        Err(e) => out.warnings.push(e.to_string()),
    }
}

async fn remove_image(engine: &Engine, id: &str, out: &mut Reaped) {
    // Never a cached base, whatever a journal says (belt and braces: the build log parser does
    // not report the FROM image).
    match engine.inspect_image(id).await {
        Ok(Some(facts)) if facts.tags.iter().any(|t| t.starts_with(BASE_REPO)) => return,
        Ok(None) => return,
        Ok(Some(_)) => {}
        Err(e) => {
            out.warnings.push(e.to_string());
            return;
        }
    }
    // force: these images are ours alone, and a tag of ours may still name them.
    match engine.remove_image(id, true).await {
        Ok(true) => out.images.push(crate::engine::short_id(id).to_owned()),
        Ok(false) => {}
        Err(e) => out.warnings.push(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_gone_pid_is_dead() {
        let me = RunId::current();
        assert!(me.start > 0 && !me.boot.is_empty(), "{me:?}");
        assert_eq!(me.liveness(&me), Liveness::Alive);
        assert_eq!(RunId::from_labels(&me.labels()), Some(me.clone()));

        // A child that has exited (and been reaped): its pid is gone or reused.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_ticks(pid).unwrap_or(1);
        child.wait().unwrap();
        let gone = RunId { pid, start, ..me.clone() };
        assert_eq!(gone.liveness(&me), Liveness::Dead);

        let reused = RunId { start: me.start + 1, ..me.clone() };
        assert_eq!(reused.liveness(&me), Liveness::Dead, "same pid, other start time");
        let earlier_boot = RunId { boot: "00000000-0000-0000-0000-000000000000".into(), ..me.clone() };
        assert_eq!(earlier_boot.liveness(&me), Liveness::Dead);
        let elsewhere = RunId { host: format!("{}-other", me.host), pid: 1, ..me.clone() };
        assert_eq!(elsewhere.liveness(&me), Liveness::Unknown);
    }

    #[test]
    fn process_tokens_tell_live_from_dead() {
        assert!(process_alive(&process_token(std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let token = process_token(child.id());
        child.wait().unwrap();
        assert!(!process_alive(&token));
        assert!(!process_alive("garbage"));
    }

    #[test]
    fn leaves_below_follow_children_the_journal_never_saw() {
        let node = |id: &str, parent: &str| ImageNode {
            id: format!("sha256:{id}"),
            parent: if parent.is_empty() { String::new() } else { format!("sha256:{parent}") },
            tags: vec![],
        };
        let base = "b".repeat(64);
        let a = format!("{}{}", "a1".repeat(6), "0".repeat(52));
        let a2 = format!("{}{}", "a2".repeat(6), "0".repeat(52));
        let a3 = format!("{}{}", "a3".repeat(6), "0".repeat(52));
        let other = format!("{}{}", "c1".repeat(6), "0".repeat(52));
        let all = vec![node(&base, ""), node(&a, &base), node(&a2, &a), node(&a3, &a2), node(&other, &base)];
        // The journal knew only the first intermediate (12-hex prefix, as the build log shows it).
        assert_eq!(leaves_below(&all, &[&a[..12], "capsem-rootfs-x86_64:1-2-0"]), vec![format!("sha256:{a3}")]);
        assert!(leaves_below(&all, &["not-hex-at-all"]).is_empty());
        let mut tagged = all.clone();
        tagged[0].tags = vec!["capsem-base:0123".into()];
        assert!(leaves_below(&tagged, &[&base[..12]]).is_empty(), "never below a tagged image");
    }

    #[test]
    fn journals_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let me = RunId::current();
        let mut j = Journal::create(dir.path(), &me).unwrap();
        j.record("container", "abc");
        j.record("image", "sha256:def");
        let path = dir.path().join(format!("{}.run", me.token()));
        let (run, objects) = parse_journal(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(run, me);
        assert_eq!(
            objects,
            [("container".to_owned(), "abc".to_owned()), ("image".to_owned(), "sha256:def".to_owned())]
        );
        j.finish();
        assert!(!path.exists());
    }
}
