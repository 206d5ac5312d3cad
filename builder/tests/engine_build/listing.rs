//! Listings to compare: the container export (a tar, with the writer's normalization report
//! applied) against `unsquashfs -lln -UTC` of the image; and file contents against an
//! `unsquashfs -d` extraction.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capsem_builder::rootfs::{Action, Report};

/// One entry as `ls -l` shows it. `perms`/`owner` are `None` where the image is allowed to
/// differ on purpose (files the normalization replaces get mode 0644 owner 0:0).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub path: String,
    pub perms: Option<String>,
    pub owner: Option<String>,
    /// Size (files, symlinks, fifos) or `major,minor` (devices); `None` for directories.
    pub size: Option<String>,
    pub target: Option<String>,
}

/// `ls -l` permission string of a tar entry type and mode.
fn perms(kind: char, mode: u32) -> String {
    let mut s = String::from(kind);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match i {
            2 => Some((mode & 0o4000 != 0, 's', 'S')),
            5 => Some((mode & 0o2000 != 0, 's', 'S')),
            8 => Some((mode & 0o1000 != 0, 't', 'T')),
            _ => None,
        };
        s.push(match special {
            Some((true, lower, upper)) => {
                if set {
                    lower
                } else {
                    upper
                }
            }
            _ => {
                if set {
                    *c
                } else {
                    '-'
                }
            }
        });
    }
    s
}

/// A regular file's content, for the extraction check.
pub type Contents = BTreeMap<String, Vec<u8>>;

/// The export as the image should list it: every tar entry, with the report's actions applied
/// (removals, replacements, setid stripping, hard links copied, implicit directories). The root
/// is left out (squashfs fixes its owner and time). Also returns regular-file contents.
pub fn expected_from_export(tar_bytes: &[u8], report: &Report) -> (Vec<Row>, Contents) {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut contents = Contents::new();
    let mut hardlinks: Vec<(String, String)> = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().expect("export is a tar") {
        let mut entry = entry.expect("tar entry");
        let h = entry.header().clone();
        let et = h.entry_type();
        if et == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = raw.trim_start_matches("./").trim_end_matches('/').to_owned();
        if path.is_empty() || path == "." {
            continue;
        }
        let mode = h.mode().unwrap() & 0o7777;
        let owner = format!("{}/{}", h.uid().unwrap(), h.gid().unwrap());
        let link = || String::from_utf8_lossy(&entry.link_name_bytes().expect("link target")).into_owned();
        let (kind, size, target) = match et {
            tar::EntryType::Directory => ('d', None, None),
            tar::EntryType::Symlink => {
                let t = link();
                ('l', Some(t.len().to_string()), Some(t))
            }
            tar::EntryType::Link => {
                hardlinks.push((path.clone(), link().trim_start_matches("./").to_owned()));
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let dev = format!("{},{}", h.device_major().unwrap().unwrap(), h.device_minor().unwrap().unwrap());
                (if et == tar::EntryType::Char { 'c' } else { 'b' }, Some(dev), None)
            }
            tar::EntryType::Fifo => ('p', Some("0".to_owned()), None),
            _ => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                let size = data.len().to_string();
                contents.insert(path.clone(), data);
                ('-', Some(size), None)
            }
        };
        rows.insert(path.clone(), Row { path, perms: Some(perms(kind, mode)), owner: Some(owner), size, target });
    }
    for (path, target) in hardlinks {
        let mut row = rows.get(&target).unwrap_or_else(|| panic!("hard link {path} → missing {target}")).clone();
        row.path = path.clone();
        if let Some(data) = contents.get(&target).cloned() {
            contents.insert(path.clone(), data);
        }
        rows.insert(path, row);
    }
    for action in &report.actions {
        match action {
            Action::Removed { path, .. } => {
                let p = path.trim_start_matches('/');
                let below = format!("{p}/");
                rows.retain(|k, _| k != p && !k.starts_with(&below));
                contents.retain(|k, _| k != p && !k.starts_with(&below));
            }
            Action::Replaced { path, bytes, .. } => {
                let p = path.trim_start_matches('/');
                let row = rows.get_mut(p).unwrap_or_else(|| panic!("replaced {p} is not in the export"));
                row.perms = None;
                row.owner = None;
                row.size = Some(bytes.to_string());
                contents.remove(p);
            }
            Action::SetidStripped { path, mode_after, .. } => {
                let p = path.trim_start_matches('/');
                let row = rows.get_mut(p).unwrap_or_else(|| panic!("stripped {p} is not in the export"));
                let kind = row.perms.as_ref().unwrap().chars().next().unwrap();
                row.perms = Some(perms(kind, u32::from_str_radix(mode_after, 8).unwrap()));
            }
            Action::ImplicitDir { path } => {
                let p = path.trim_start_matches('/').to_owned();
                rows.insert(
                    p.clone(),
                    Row {
                        path: p,
                        perms: Some(perms('d', 0o755)),
                        owner: Some("0/0".into()),
                        size: None,
                        target: None,
                    },
                );
            }
            Action::HardlinkCopied { .. } | Action::XattrDropped { .. } | Action::RootOwnerForced { .. } => {}
        }
    }
    (rows.into_values().collect(), contents)
}

/// Runs `unsquashfs` with `args`, asserting success; returns stdout.
pub fn unsquashfs(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("unsquashfs").args(args).output().expect("unsquashfs (squashfs-tools) on the PATH");
    assert!(out.status.success(), "unsquashfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 listing")
}

/// Parses `unsquashfs -lln -UTC` output into rows (root excluded) and each row's time.
pub fn parse_unsquashfs(listing: &str) -> Vec<(Row, String)> {
    let mut out = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let mut rest = line;
        let mut token = || {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            let (t, r) = rest.split_at(end);
            rest = r;
            t.to_owned()
        };
        let perms = token();
        let owner = token();
        let mut size = token();
        if size.ends_with(',') {
            size.push_str(&token());
        }
        let time = format!("{} {}", token(), token());
        let name = rest.strip_prefix(' ').unwrap_or(rest);
        let (path, target) = match name.split_once(" -> ") {
            Some((p, t)) => (p, Some(t.to_owned())),
            None => (name, None),
        };
        let path = path.strip_prefix("squashfs-root").expect("unsquashfs prefix").trim_start_matches('/').to_owned();
        if path.is_empty() {
            continue;
        }
        let size = (!perms.starts_with('d')).then_some(size);
        out.push((Row { path, perms: Some(perms), owner: Some(owner), size, target }, time));
    }
    out
}

/// Compares, ignoring the fields `expected` leaves open; panics with the first differences.
pub fn assert_same(expected: &[Row], image: &[Row]) {
    let want: BTreeMap<&str, &Row> = expected.iter().map(|r| (r.path.as_str(), r)).collect();
    let got: BTreeMap<&str, &Row> = image.iter().map(|r| (r.path.as_str(), r)).collect();
    let mut problems = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => problems.push(format!("missing in the image: {w:?}")),
            Some(g) => {
                let same = w.perms.as_ref().is_none_or(|p| Some(p) == g.perms.as_ref())
                    && w.owner.as_ref().is_none_or(|o| Some(o) == g.owner.as_ref())
                    && w.size == g.size
                    && w.target == g.target;
                if !same {
                    problems.push(format!("differs:\n  export: {w:?}\n  image:  {g:?}"));
                }
            }
        }
    }
    for (path, g) in &got {
        if !want.contains_key(path) {
            problems.push(format!("only in the image: {g:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences, first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

/// Every expected regular file has exactly its exported bytes in the extraction at `root`.
pub fn assert_contents(contents: &Contents, root: &Path) {
    let mut bad = Vec::new();
    for (path, data) in contents {
        match std::fs::read(root.join(path)) {
            Ok(got) if &got == data => {}
            Ok(got) => bad.push(format!("{path}: {} bytes extracted, {} exported", got.len(), data.len())),
            Err(e) => bad.push(format!("{path}: {e}")),
        }
    }
    assert!(bad.is_empty(), "{} files differ, first ones:\n{}", bad.len(), bad[..bad.len().min(20)].join("\n"));
}
