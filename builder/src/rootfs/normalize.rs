//! Tar stream → normalized, path-sorted tree: the determinism rules of the rootfs.
//!
//! Owns reading the export (every entry type an engine produces), resolving hard links, and the
//! [`RULES`] table: which build-to-build-varying files are removed or given a fixed content. It
//! also clears setuid/setgid, keeps owners as numeric ids, and records every change as an
//! [`Action`]. Times are not stored at all: the writer stamps every inode with
//! `SOURCE_DATE_EPOCH`. Output order is the `BTreeMap` order of paths (component-wise, the order
//! backhand keeps its nodes in), so the tar's entry order cannot influence the image.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use super::xattr::{self, Xattr};
use super::{Action, RootfsError, display_path};

/// Owner and permission bits of a node (`mode` holds only the 12 permission bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(PathBuf),
    /// squashfs-encoded device number (see [`encode_device`]).
    CharDevice(u32),
    BlockDevice(u32),
    Fifo,
}

/// One node of the image, below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

/// The normalized tree. Keys are relative paths (`etc/passwd`), in component order.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The root directory's mode (owner is always 0:0).
    pub root_mode: u16,
    pub nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    /// Regular files in write order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &Arc<Vec<u8>>)> {
        self.nodes.iter().filter_map(|(p, n)| match &n.kind {
            Kind::File(data) => Some((p.as_path(), data)),
            _ => None,
        })
    }
}

/// [`read_tar`]'s result.
#[derive(Debug)]
pub(crate) struct Normalized {
    pub tree: Tree,
    pub actions: Vec<Action>,
    /// Entries read (extension headers not counted).
    pub entries: u64,
    /// Regular-file bytes read.
    pub bytes_in: u64,
}

/// Which paths a rule applies to. Paths are relative (`var/log`), compared component-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// Exactly one of these paths.
    Paths(&'static [&'static str]),
    /// Everything strictly below this directory; the directory itself stays.
    Below(&'static str),
    /// Every non-directory strictly below this directory; directories stay.
    FilesBelow(&'static str),
    /// Direct children of `dir` whose name starts with `prefix` and ends with `suffix`.
    Child { dir: &'static str, prefix: &'static str, suffix: &'static str },
    /// Any directory with this name, anywhere.
    DirNamed(&'static str),
    /// Any non-directory whose name ends with this suffix, anywhere.
    FileSuffix(&'static str),
}

/// What a rule does to a matching entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleAction {
    /// Remove the entry and everything below it.
    Remove,
    /// Keep a regular file but empty it (mode and owner kept).
    Empty,
    /// Replace whatever is there by a regular file with this content, this mode, owner 0:0.
    Replace { content: &'static [u8], mode: u16 },
}

/// One normalization rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Stable id, used in the report.
    pub id: &'static str,
    pub matcher: Matcher,
    pub action: RuleAction,
}

/// `/etc/hosts` in every image: loopback only, so `localhost` resolves in a read-only root.
pub(crate) const HOSTS: &[u8] = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The rules, first match wins. Each says why the file varies from build to build or must not
/// ship. A `Remove` rule also removes everything below a matching directory.
pub(crate) const RULES: &[Rule] = &[
    // Docker drops this marker into every container; the VM is not a Docker container.
    Rule { id: "dockerenv", matcher: Matcher::Paths(&[".dockerenv"]), action: RuleAction::Remove },
    // The next three are the engine's bind-mount points: the export holds engine-specific
    // placeholders. The hostname is set at boot; the guest has no DNS of its own (egress goes
    // through the host proxy), so resolv.conf is empty; hosts gets a fixed loopback-only content
    // because a read-only root cannot be fixed up later and `localhost` must resolve.
    Rule {
        id: "etc-hostname",
        matcher: Matcher::Paths(&["etc/hostname"]),
        action: RuleAction::Replace { content: b"", mode: 0o644 },
    },
    Rule {
        id: "etc-resolv-conf",
        matcher: Matcher::Paths(&["etc/resolv.conf"]),
        action: RuleAction::Replace { content: b"", mode: 0o644 },
    },
    Rule {
        id: "etc-hosts",
        matcher: Matcher::Paths(&["etc/hosts"]),
        action: RuleAction::Replace { content: HOSTS, mode: 0o644 },
    },
    // Unique per install; systemd fills an empty one at boot, so no VM inherits the builder's id.
    Rule { id: "machine-id", matcher: Matcher::Paths(&["etc/machine-id"]), action: RuleAction::Empty },
    // D-Bus's copy (or symlink) of the machine id; recreated from /etc/machine-id when needed.
    Rule { id: "dbus-machine-id", matcher: Matcher::Paths(&["var/lib/dbus/machine-id"]), action: RuleAction::Remove },
    // Package indexes: whatever the mirror served at build time; useless without network.
    Rule { id: "apt-lists", matcher: Matcher::Below("var/lib/apt/lists"), action: RuleAction::Remove },
    // Downloaded .debs and the binary package caches built from the indexes above.
    Rule { id: "apt-cache", matcher: Matcher::Below("var/cache/apt"), action: RuleAction::Remove },
    // debconf's previous-state backups, written on every package configuration.
    Rule {
        id: "debconf-old",
        matcher: Matcher::Child { dir: "var/cache/debconf", prefix: "", suffix: "-old" },
        action: RuleAction::Remove,
    },
    // dpkg's previous-state backups (status-old, diversions-old, …), same reason.
    Rule {
        id: "dpkg-old",
        matcher: Matcher::Child { dir: "var/lib/dpkg", prefix: "", suffix: "-old" },
        action: RuleAction::Remove,
    },
    // Build logs carry timestamps and durations; the directories stay so services can log.
    Rule { id: "logs", matcher: Matcher::FilesBelow("var/log"), action: RuleAction::Remove },
    // ldconfig's cache of library mtimes; rebuilt on demand.
    Rule {
        id: "ldconfig-aux-cache",
        matcher: Matcher::Paths(&["var/cache/ldconfig/aux-cache"]),
        action: RuleAction::Remove,
    },
    // Byte code keyed by source mtime (which we rewrite) in timestamp mode: stale and varying.
    Rule { id: "pycache", matcher: Matcher::DirNamed("__pycache__"), action: RuleAction::Remove },
    Rule { id: "pyc", matcher: Matcher::FileSuffix(".pyc"), action: RuleAction::Remove },
    // npm's and other tools' caches under /root, which is a tmpfs at run time anyway.
    Rule { id: "root-caches", matcher: Matcher::Paths(&["root/.npm", "root/.cache"]), action: RuleAction::Remove },
    // Scratch space of the build steps.
    Rule { id: "tmp", matcher: Matcher::Below("tmp"), action: RuleAction::Remove },
    Rule { id: "var-tmp", matcher: Matcher::Below("var/tmp"), action: RuleAction::Remove },
    // Host keys generated by the openssh-server postinst: random, and must never be shared by VMs.
    Rule {
        id: "ssh-host-keys",
        matcher: Matcher::Child { dir: "etc/ssh", prefix: "ssh_host_", suffix: "" },
        action: RuleAction::Remove,
    },
    // systemd's saved entropy: random by definition, and must not be shared by VMs.
    Rule { id: "random-seed", matcher: Matcher::Paths(&["var/lib/systemd/random-seed"]), action: RuleAction::Remove },
    // Lock file left by shadow-utils (useradd, passwd): its mtime is all it carries.
    Rule { id: "pwd-lock", matcher: Matcher::Paths(&["etc/.pwd.lock"]), action: RuleAction::Remove },
    // Backups written by shadow-utils on every account change.
    Rule {
        id: "account-backups",
        matcher: Matcher::Paths(&["etc/shadow-", "etc/passwd-", "etc/group-", "etc/gshadow-"]),
        action: RuleAction::Remove,
    },
    // fontconfig and man-db caches embed directory mtimes of the build; rebuilt on demand.
    Rule { id: "fontconfig-cache", matcher: Matcher::Below("var/cache/fontconfig"), action: RuleAction::Remove },
    Rule { id: "man-cache", matcher: Matcher::Below("var/cache/man"), action: RuleAction::Remove },
];

impl Matcher {
    /// Whether `path` (relative) matches, `is_dir` telling whether it is a directory.
    pub(crate) fn matches(&self, path: &Path, is_dir: bool) -> bool {
        let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        match *self {
            Matcher::Paths(paths) => paths.iter().any(|p| path == Path::new(p)),
            Matcher::Below(dir) => path != Path::new(dir) && path.starts_with(dir),
            Matcher::FilesBelow(dir) => !is_dir && path.starts_with(dir) && path != Path::new(dir),
            Matcher::Child { dir, prefix, suffix } => {
                path.parent() == Some(Path::new(dir))
                    && name.starts_with(prefix.as_bytes())
                    && name.ends_with(suffix.as_bytes())
            }
            Matcher::DirNamed(dir_name) => is_dir && name == dir_name.as_bytes(),
            Matcher::FileSuffix(suffix) => !is_dir && name.ends_with(suffix.as_bytes()),
        }
    }
}

/// The rule that applies to `path`, and whether it applies through a removed ancestor.
pub(crate) fn rule_for(path: &Path, is_dir: bool) -> Option<(&'static Rule, bool)> {
    if let Some(rule) = RULES.iter().find(|r| r.matcher.matches(path, is_dir)) {
        return Some((rule, false));
    }
    // A removed directory takes its subtree with it, even when the tar does not list it.
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| RULES.iter().find(|r| r.action == RuleAction::Remove && r.matcher.matches(a, true)))
        .map(|rule| (rule, true))
}

/// squashfs' 32-bit device number (the kernel's `new_encode_dev`), or `None` if it does not fit.
pub(crate) fn encode_device(major: u32, minor: u32) -> Option<u32> {
    (major < 1 << 12 && minor < 1 << 20).then_some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// A parsed tar entry before hard links are resolved.
#[derive(Debug)]
struct Raw {
    index: u64,
    meta: Meta,
    kind: RawKind,
    xattrs: Vec<Xattr>,
}

#[derive(Debug)]
enum RawKind {
    Node(Kind),
    Hardlink(PathBuf),
}

/// Relative, cleaned path of a tar name; `Ok(None)` for the root itself.
fn clean_path(bytes: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(bytes)).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::Prefix(_) => return Err("path has a prefix"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Reads the whole tar, resolves hard links, applies [`RULES`] and the mode rules. `on_file` sees
/// each regular file's path and content as soon as it is read.
pub(crate) fn read_tar<R: Read>(
    tar: R,
    on_file: &mut dyn FnMut(&Path, &Arc<Vec<u8>>),
) -> Result<Normalized, RootfsError> {
    let mut archive = tar::Archive::new(tar);
    let read_err = |index: u64, path: &str| {
        let path = path.to_owned();
        move |source| RootfsError::TarRead { index, path, source }
    };
    let entries = archive.entries().map_err(read_err(0, "?"))?;
    let mut raw: BTreeMap<PathBuf, Raw> = BTreeMap::new();
    let mut root: Option<Raw> = None;
    let mut count = 0u64;
    let mut bytes_in = 0u64;
    for entry in entries {
        let index = count;
        let mut entry = entry.map_err(read_err(index, "?"))?;
        let path_bytes = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path_bytes).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue; // archive-wide PAX defaults (comments, times): nothing we keep
        }
        count += 1;
        let xattrs = match entry.pax_extensions().map_err(read_err(index, &shown))? {
            Some(records) => xattr::from_pax(records).map_err(read_err(index, &shown))?,
            None => Vec::new(),
        };
        let header = entry.header();
        let mode = header.mode().map_err(read_err(index, &shown))? & 0o7777;
        let (uid, gid) =
            (header.uid().map_err(read_err(index, &shown))?, header.gid().map_err(read_err(index, &shown))?);
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| RootfsError::Unsupported {
                index,
                path: shown.clone(),
                what: format!("{what} {v} (squashfs ids are 32-bit)"),
            })
        };
        let meta = Meta { mode: mode as u16, uid: id(uid, "uid")?, gid: id(gid, "gid")? };
        let link = || -> Result<PathBuf, RootfsError> {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| RootfsError::BadPath { path: shown.clone(), reason: "link without a target".into() })?;
            Ok(PathBuf::from(OsStr::from_bytes(&target)))
        };
        let kind = match entry_type {
            EntryType::Directory => RawKind::Node(Kind::Dir),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse if path_bytes.ends_with(b"/") => {
                RawKind::Node(Kind::Dir)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // A corrupt header must not make us reserve its claimed size up front.
                let mut data = Vec::with_capacity(entry.size().min(64 << 20) as usize);
                entry.read_to_end(&mut data).map_err(read_err(index, &shown))?;
                bytes_in += data.len() as u64;
                RawKind::Node(Kind::File(Arc::new(data)))
            }
            EntryType::Symlink => RawKind::Node(Kind::Symlink(link()?)),
            EntryType::Link => {
                let target = link()?;
                let target = clean_path(target.as_os_str().as_bytes())
                    .map_err(|reason| RootfsError::BadPath { path: shown.clone(), reason: reason.into() })?
                    .ok_or_else(|| RootfsError::BadPath {
                        path: shown.clone(),
                        reason: "hard link to the root directory".into(),
                    })?;
                RawKind::Hardlink(target)
            }
            EntryType::Char | EntryType::Block => {
                let major = header.device_major().map_err(read_err(index, &shown))?.unwrap_or(0);
                let minor = header.device_minor().map_err(read_err(index, &shown))?.unwrap_or(0);
                let dev = encode_device(major, minor).ok_or(RootfsError::DeviceNumber {
                    path: shown.clone(),
                    major,
                    minor,
                })?;
                RawKind::Node(if entry_type == EntryType::Char {
                    Kind::CharDevice(dev)
                } else {
                    Kind::BlockDevice(dev)
                })
            }
            EntryType::Fifo => RawKind::Node(Kind::Fifo),
            other => {
                return Err(RootfsError::Unsupported { index, path: shown, what: format!("entry type {other:?}") });
            }
        };
        let rel = clean_path(&path_bytes)
            .map_err(|reason| RootfsError::BadPath { path: shown.clone(), reason: reason.into() })?;
        if let (Some(rel), RawKind::Node(Kind::File(data))) = (&rel, &kind) {
            on_file(rel, data);
        }
        let parsed = Raw { index, meta, kind, xattrs };
        let previous = match rel {
            None if !matches!(parsed.kind, RawKind::Node(Kind::Dir)) => {
                return Err(RootfsError::BadPath { path: shown, reason: "the root must be a directory".into() });
            }
            None => root.replace(parsed),
            Some(rel) => raw.insert(rel, parsed),
        };
        if let Some(previous) = previous {
            return Err(RootfsError::Duplicate { path: shown, first: previous.index, second: index });
        }
    }
    let mut normalized = apply_rules(resolve_hardlinks(raw)?, root)?;
    normalized.entries = count;
    normalized.bytes_in = bytes_in;
    Ok(normalized)
}

/// A resolved entry: the node, its xattrs, and the hard-link target it was copied from.
type Resolved = (Node, Vec<Xattr>, Option<PathBuf>);

/// Turns every hard link into a copy of its target (content shared in memory, not duplicated).
fn resolve_hardlinks(raw: BTreeMap<PathBuf, Raw>) -> Result<BTreeMap<PathBuf, Resolved>, RootfsError> {
    let mut out = BTreeMap::new();
    for (path, entry) in &raw {
        let resolved = match &entry.kind {
            RawKind::Node(kind) => (Node { meta: entry.meta, kind: kind.clone() }, entry.xattrs.clone(), None),
            RawKind::Hardlink(target) => {
                // Tar links point at the first occurrence, never at another link; follow a
                // short chain anyway, and refuse cycles.
                let mut current = target;
                let mut hops = 0;
                let found = loop {
                    match raw.get(current) {
                        Some(Raw { kind: RawKind::Node(kind), meta, xattrs, .. }) => break Some((kind, meta, xattrs)),
                        Some(Raw { kind: RawKind::Hardlink(next), .. }) if hops < 8 => {
                            current = next;
                            hops += 1;
                        }
                        _ => break None,
                    }
                };
                let (kind, meta, xattrs) = found.ok_or_else(|| RootfsError::HardlinkTarget {
                    path: display_path(path),
                    target: display_path(target),
                })?;
                (Node { meta: *meta, kind: kind.clone() }, xattrs.clone(), Some(target.clone()))
            }
        };
        out.insert(path.clone(), resolved);
    }
    Ok(out)
}

/// Applies [`RULES`], strips setuid/setgid, adds missing parent directories.
fn apply_rules(entries: BTreeMap<PathBuf, Resolved>, root: Option<Raw>) -> Result<Normalized, RootfsError> {
    let mut actions = Vec::new();
    let mut root_mode = 0o755;
    if let Some(root) = root {
        root_mode = strip_setid("", root.meta.mode, &mut actions);
        if (root.meta.uid, root.meta.gid) != (0, 0) {
            actions.push(Action::RootOwnerForced { uid: root.meta.uid, gid: root.meta.gid });
        }
        report_xattrs(Path::new(""), &root.xattrs, &mut actions);
    }
    let mut nodes = BTreeMap::new();
    // The last removed subtree: its descendants follow it in path order and are only counted.
    let mut removed: Option<(PathBuf, usize)> = None;
    for (path, (mut node, xattrs, link_target)) in entries {
        if let Some((dir, at)) = &removed {
            if path.starts_with(dir) {
                if let Action::Removed { entries, .. } = &mut actions[*at] {
                    *entries += 1;
                }
                continue;
            }
            removed = None;
        }
        let shown = display_path(&path);
        match rule_for(&path, node.kind == Kind::Dir) {
            Some((rule, _)) if rule.action == RuleAction::Remove => {
                actions.push(Action::Removed { path: shown, rule: rule.id, entries: 1 });
                removed = Some((path, actions.len() - 1));
                continue;
            }
            Some((rule, false)) => {
                let (content, meta) = match (rule.action, &node.kind) {
                    (RuleAction::Empty, Kind::File(_)) => (&b""[..], node.meta),
                    (RuleAction::Empty, _) => (&b""[..], Meta { mode: 0o444, uid: 0, gid: 0 }),
                    (RuleAction::Replace { content, mode }, _) => (content, Meta { mode, uid: 0, gid: 0 }),
                    (RuleAction::Remove, _) => unreachable!("handled above"),
                };
                node = Node { meta, kind: Kind::File(Arc::new(content.to_vec())) };
                actions.push(Action::Replaced { path: shown.clone(), rule: rule.id, bytes: content.len() as u64 });
            }
            _ => {}
        }
        if let Some(target) = link_target {
            actions.push(Action::HardlinkCopied { path: shown.clone(), target: display_path(&target) });
        }
        if !matches!(node.kind, Kind::Symlink(_)) {
            node.meta.mode = strip_setid(&shown, node.meta.mode, &mut actions);
        }
        report_xattrs(&path, &xattrs, &mut actions);
        nodes.insert(path, node);
    }
    add_parents(&mut nodes, &mut actions)?;
    // Stable sort: per path, actions keep the order they were recorded in.
    actions.sort_by(|a, b| action_path(a).cmp(action_path(b)));
    Ok(Normalized { tree: Tree { root_mode, nodes }, actions, entries: 0, bytes_in: 0 })
}

fn action_path(action: &Action) -> &str {
    match action {
        Action::Removed { path, .. }
        | Action::Replaced { path, .. }
        | Action::SetidStripped { path, .. }
        | Action::XattrDropped { path, .. }
        | Action::HardlinkCopied { path, .. }
        | Action::ImplicitDir { path } => path,
        Action::RootOwnerForced { .. } => "",
    }
}

/// Clears setuid/setgid (sticky stays), recording the change.
fn strip_setid(shown: &str, mode: u16, actions: &mut Vec<Action>) -> u16 {
    let stripped = mode & !0o6000;
    if stripped != mode {
        actions.push(Action::SetidStripped {
            path: if shown.is_empty() { "/".into() } else { shown.into() },
            mode_before: format!("{mode:04o}"),
            mode_after: format!("{stripped:04o}"),
        });
    }
    stripped
}

fn report_xattrs(path: &Path, xattrs: &[Xattr], actions: &mut Vec<Action>) {
    for x in xattrs {
        actions.push(Action::XattrDropped { path: display_path(path), name: x.name.clone(), value: x.value.clone() });
    }
}

/// Creates directories the tar omitted; refuses a non-directory parent.
fn add_parents(nodes: &mut BTreeMap<PathBuf, Node>, actions: &mut Vec<Action>) -> Result<(), RootfsError> {
    let mut missing = BTreeMap::new();
    for path in nodes.keys() {
        for parent in path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            match nodes.get(parent) {
                Some(Node { kind: Kind::Dir, .. }) => break, // its own parents are checked on its turn
                Some(_) => {
                    return Err(RootfsError::BadPath {
                        path: display_path(path),
                        reason: format!("parent {} is not a directory", display_path(parent)),
                    });
                }
                None => {
                    missing.insert(parent.to_path_buf(), ());
                }
            }
        }
    }
    for (path, ()) in missing {
        actions.push(Action::ImplicitDir { path: display_path(&path) });
        nodes.insert(path, Node { meta: Meta { mode: 0o755, uid: 0, gid: 0 }, kind: Kind::Dir });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, is_dir, rule id that must apply or None). Every rule has positive and near-miss cases.
    const CASES: &[(&str, bool, Option<&str>)] = &[
        (".dockerenv", false, Some("dockerenv")),
        ("etc/.dockerenv", false, None),
        ("etc/hostname", false, Some("etc-hostname")),
        ("etc/resolv.conf", false, Some("etc-resolv-conf")),
        ("etc/resolv.conf.d", false, None),
        ("etc/hosts", false, Some("etc-hosts")),
        ("etc/hosts.allow", false, None),
        ("etc/machine-id", false, Some("machine-id")),
        ("var/lib/dbus/machine-id", false, Some("dbus-machine-id")),
        ("var/lib/apt/lists", true, None),
        ("var/lib/apt/lists/lock", false, Some("apt-lists")),
        ("var/lib/apt/lists/partial", true, Some("apt-lists")),
        ("var/lib/apt/extended_states", false, None),
        ("var/cache/apt", true, None),
        ("var/cache/apt/pkgcache.bin", false, Some("apt-cache")),
        ("var/cache/apt/archives/partial/x.deb", false, Some("apt-cache")),
        ("var/cache/debconf/config.dat-old", false, Some("debconf-old")),
        ("var/cache/debconf/config.dat", false, None),
        ("var/lib/dpkg/status-old", false, Some("dpkg-old")),
        ("var/lib/dpkg/status", false, None),
        ("var/log", true, None),
        ("var/log/apt", true, None),
        ("var/log/apt/term.log", false, Some("logs")),
        ("var/log/wtmp", false, Some("logs")),
        ("var/logs/x", false, None),
        ("var/cache/ldconfig/aux-cache", false, Some("ldconfig-aux-cache")),
        ("var/cache/ldconfig", true, None),
        ("usr/lib/python3/dist-packages/__pycache__", true, Some("pycache")),
        ("usr/lib/python3/dist-packages/__pycache__/a.cpython-311.pyc", false, Some("pyc")),
        ("usr/lib/python3/dist-packages/__pycache__/data.txt", false, Some("pycache")),
        ("usr/lib/python2.7/os.pyc", false, Some("pyc")),
        ("usr/lib/python2.7/os.py", false, None),
        ("usr/share/doc/pyc", false, None),
        ("root/.npm", true, Some("root-caches")),
        ("root/.npm/_cacache/index", false, Some("root-caches")),
        ("root/.cache/pip/http/x", false, Some("root-caches")),
        ("root/.bashrc", false, None),
        ("tmp", true, None),
        ("tmp/x", false, Some("tmp")),
        ("tmp/.X11-unix", true, Some("tmp")),
        ("var/tmp", true, None),
        ("var/tmp/y", false, Some("var-tmp")),
        ("etc/ssh/ssh_host_ed25519_key", false, Some("ssh-host-keys")),
        ("etc/ssh/ssh_host_rsa_key.pub", false, Some("ssh-host-keys")),
        ("etc/ssh/sshd_config", false, None),
        ("var/lib/systemd/random-seed", false, Some("random-seed")),
        ("etc/.pwd.lock", false, Some("pwd-lock")),
        ("etc/shadow-", false, Some("account-backups")),
        ("etc/passwd-", false, Some("account-backups")),
        ("etc/group-", false, Some("account-backups")),
        ("etc/gshadow-", false, Some("account-backups")),
        ("etc/shadow", false, None),
        ("var/cache/fontconfig/abc-le64.cache-8", false, Some("fontconfig-cache")),
        ("var/cache/man/index.db", false, Some("man-cache")),
        ("usr/bin/ls", false, None),
    ];

    #[test]
    fn every_rule_matches_its_cases() {
        for (path, is_dir, want) in CASES {
            let got = rule_for(Path::new(path), *is_dir).map(|(r, _)| r.id);
            assert_eq!(got, *want, "{path} (dir: {is_dir})");
        }
    }

    #[test]
    fn every_rule_has_a_positive_case() {
        for rule in RULES {
            assert!(CASES.iter().any(|(_, _, id)| *id == Some(rule.id)), "rule {} has no test case", rule.id);
        }
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len(), "rule ids must be unique");
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_device(1, 3), Some(0x103));
        assert_eq!(encode_device(8, 0x12345), Some((0x45) | (8 << 8) | (0x12300 << 12)));
        assert_eq!(encode_device(4096, 0), None);
        assert_eq!(encode_device(0, 1 << 20), None);
    }

    #[test]
    fn clean_path_rejects_parent_components() {
        assert_eq!(clean_path(b"./etc/passwd").unwrap(), Some(PathBuf::from("etc/passwd")));
        assert_eq!(clean_path(b"/usr//bin/").unwrap(), Some(PathBuf::from("usr/bin")));
        assert_eq!(clean_path(b"./").unwrap(), None);
        assert!(clean_path(b"etc/../../x").is_err());
    }
}
