//! Comparing two asset directories, for reproducibility checks (`cargo xtask repro`,
//! `capsem-builder compare A B`).
//!
//! Every file of both trees is compared byte for byte. When two files differ, the report goes
//! inside them as far as their format allows, so a reader learns *what* is not reproducible:
//! a squashfs (read with backhand) or an initrd (zstd-compressed newc cpio) names the paths inside
//! it whose content, mode, owner, time or link target differ; a JSON file names the JSON paths
//! that differ; any other file gives the sizes and the first differing offset.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use backhand::{FilesystemReader, InnerNode};
use serde::Serialize;

/// At most this many inner differences are listed per file.
const MAX_DETAILS: usize = 50;

/// One file that is not identical in both trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Path relative to the compared directories.
    pub file: String,
    /// What differs inside it (paths inside an image, JSON paths, or byte offsets).
    pub details: Vec<String>,
}

/// Why the comparison could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {reason}", path.display())]
pub struct CompareError {
    op: &'static str,
    path: PathBuf,
    reason: String,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(String) -> CompareError {
    let path = path.to_path_buf();
    move |reason| CompareError { op, path, reason }
}

/// Compares the two trees; an empty result means every file is byte-identical.
pub fn compare_dirs(a: &Path, b: &Path) -> Result<Vec<Difference>, CompareError> {
    let (fa, fb) = (list(a)?, list(b)?);
    let mut all: Vec<&String> = fa.iter().chain(fb.iter()).collect();
    all.sort();
    all.dedup();
    let mut out = Vec::new();
    for rel in all {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let details = match (fa.contains(rel), fb.contains(rel)) {
            (true, false) => vec![format!("only in {}", a.display())],
            (false, true) => vec![format!("only in {}", b.display())],
            _ => {
                let (da, db) = (read(&pa)?, read(&pb)?);
                if da == db {
                    continue;
                }
                explain(rel, &pa, &pb, &da, &db)?
            }
        };
        out.push(Difference { file: rel.clone(), details });
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, CompareError> {
    fs::read(path).map_err(|e| err("reading", path)(e.to_string()))
}

/// Regular files below `root`, relative, skipping staging directories and build logs.
fn list(root: &Path) -> Result<Vec<String>, CompareError> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), CompareError> {
        let entries = fs::read_dir(dir).map_err(|e| err("listing", dir)(e.to_string()))?;
        for e in entries {
            let e = e.map_err(|e| err("listing", dir)(e.to_string()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".build-") || name.ends_with(".log") {
                continue;
            }
            let path = e.path();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = e.file_type().map_err(|e| err("inspecting", &path)(e.to_string()))?;
            if ft.is_dir() {
                walk(&path, &r, out)?;
            } else {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn explain(rel: &str, pa: &Path, pb: &Path, da: &[u8], db: &[u8]) -> Result<Vec<String>, CompareError> {
    let mut details = bytes_detail(da, db);
    let inner = if rel.ends_with(".squashfs") {
        Some(diff_maps(&squashfs_entries(pa)?, &squashfs_entries(pb)?))
    } else if rel.ends_with("initrd.img") {
        Some(diff_maps(&initrd_entries(pa, da)?, &initrd_entries(pb, db)?))
    } else if rel.ends_with(".json") {
        let parse = |p: &Path, d: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(d).map_err(|e| err("parsing", p)(e.to_string()))
        };
        let mut out = Vec::new();
        json_diff("", &parse(pa, da)?, &parse(pb, db)?, &mut out);
        Some(out)
    } else {
        None
    };
    if let Some(mut inner) = inner {
        if inner.is_empty() {
            inner.push("the contents are the same; only the container format's bytes differ".into());
        }
        let n = inner.len();
        inner.truncate(MAX_DETAILS);
        if n > MAX_DETAILS {
            inner.push(format!("… and {} more", n - MAX_DETAILS));
        }
        details.extend(inner);
    }
    Ok(details)
}

fn bytes_detail(a: &[u8], b: &[u8]) -> Vec<String> {
    let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    vec![format!("{} vs {} bytes, first difference at offset {first}", a.len(), b.len())]
}

/// Per path: a description of the entry (kind, mode, owner, mtime, content hash or target).
type Entries = BTreeMap<String, String>;

fn diff_maps(a: &Entries, b: &Entries) -> Vec<String> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x != y => out.push(format!("{k}: {x} ≠ {y}")),
            (Some(_), None) => out.push(format!("{k}: only in the first")),
            (None, Some(_)) => out.push(format!("{k}: only in the second")),
            _ => {}
        }
    }
    out
}

fn squashfs_entries(path: &Path) -> Result<Entries, CompareError> {
    let file = fs::File::open(path).map_err(|e| err("opening", path)(e.to_string()))?;
    let reader = FilesystemReader::from_reader(BufReader::new(file))
        .map_err(|e| err("reading squashfs", path)(e.to_string()))?;
    let mut out = Entries::new();
    for node in reader.files() {
        let h = &node.header;
        let what = match &node.inner {
            InnerNode::File(f) => {
                let mut hasher = blake3::Hasher::new();
                let mut r = reader.file(f).reader();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = r.read(&mut buf).map_err(|e| err("reading squashfs", path)(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                format!("file b3:{}", &hasher.finalize().to_hex()[..16])
            }
            InnerNode::Dir(_) => "dir".into(),
            InnerNode::Symlink(s) => format!("symlink → {}", s.link.to_string_lossy()),
            InnerNode::CharacterDevice(d) => format!("char {}", d.device_number),
            InnerNode::BlockDevice(d) => format!("block {}", d.device_number),
            InnerNode::NamedPipe => "fifo".into(),
            InnerNode::Socket => "socket".into(),
        };
        out.insert(
            node.fullpath.to_string_lossy().into_owned(),
            format!("{what} mode {:o} uid {} gid {} mtime {}", h.permissions, h.uid, h.gid, h.mtime),
        );
    }
    Ok(out)
}

fn initrd_entries(path: &Path, data: &[u8]) -> Result<Entries, CompareError> {
    let raw = zstd::decode_all(data).map_err(|e| err("decompressing (zstd)", path)(e.to_string()))?;
    parse_newc(&raw).map_err(err("reading cpio", path))
}

/// The entries of a newc cpio archive.
fn parse_newc(data: &[u8]) -> Result<Entries, String> {
    let mut out = Entries::new();
    let mut at = 0usize;
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let header = data.get(at..at + 110).ok_or_else(|| format!("truncated header at offset {at}"))?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at offset {at}"));
        }
        let field = |i: usize| {
            let text =
                std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|_| format!("bad header at {at}"))?;
            u32::from_str_radix(text, 16).map_err(|_| format!("bad header field at {at}"))
        };
        let (mode, uid, gid, mtime, size, rmaj, rmin, namesize) = (
            field(1)?,
            field(2)?,
            field(3)?,
            field(5)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_start = at + 110;
        let name = data.get(name_start..name_start + namesize.saturating_sub(1)).ok_or("truncated name")?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_start = align(name_start + namesize);
        let body = data.get(data_start..data_start + size).ok_or_else(|| format!("{name}: truncated data"))?;
        at = align(data_start + size);
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        let kind = match mode & 0o170000 {
            0o040000 => "dir".to_owned(),
            0o120000 => format!("symlink → {}", String::from_utf8_lossy(body)),
            0o020000 => format!("char {rmaj}:{rmin}"),
            _ => format!("file b3:{}", &blake3::hash(body).to_hex()[..16]),
        };
        out.insert(name, format!("{kind} mode {:o} uid {uid} gid {gid} mtime {mtime}", mode & 0o7777));
    }
}

fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(&p, u, v, out),
                    _ => out.push(format!("{p}: present in only one")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}/{i}"), u, v, out);
            }
        }
        _ if a != b => out.push(format!("{}: {} ≠ {}", if path.is_empty() { "/" } else { path }, short(a), short(b))),
        _ => {}
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newc(entries: &[(&str, u32, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |name: &str, mode: u32, mtime: u32, data: &[u8]| {
            let h = format!(
                "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1,
                0,
                0,
                1,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        for (name, mode, mtime, data) in entries {
            push(name, *mode, *mtime, data);
        }
        push("TRAILER!!!", 0, 0, b"");
        out
    }

    #[test]
    fn trees_are_compared_down_to_the_files_inside_images_and_json() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("x86_64")).unwrap();
            fs::write(d.join("x86_64/vmlinuz"), b"same kernel").unwrap();
            fs::create_dir_all(d.join(".build-1")).unwrap();
        }
        fs::write(a.path().join("x86_64/only-a"), b"").unwrap();
        fs::write(a.path().join("manifest.json"), br#"{"v":1,"list":[{"b3":"aa"}]}"#).unwrap();
        fs::write(b.path().join("manifest.json"), br#"{"v":1,"list":[{"b3":"bb"}]}"#).unwrap();
        let ia = newc(&[("init", 0o100755, 5, b"#!/bin/sh\n"), ("bin", 0o040755, 5, b"")]);
        let ib = newc(&[("init", 0o100755, 6, b"#!/bin/sh\n"), ("bin", 0o040755, 5, b"")]);
        fs::write(a.path().join("x86_64/initrd.img"), zstd::encode_all(ia.as_slice(), 3).unwrap()).unwrap();
        fs::write(b.path().join("x86_64/initrd.img"), zstd::encode_all(ib.as_slice(), 3).unwrap()).unwrap();
        let diffs = compare_dirs(a.path(), b.path()).unwrap();
        let files: Vec<&str> = diffs.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(files, ["manifest.json", "x86_64/initrd.img", "x86_64/only-a"]);
        assert!(diffs[0].details.iter().any(|d| d.starts_with("/list/0/b3: \"aa\" ≠ \"bb\"")), "{diffs:?}");
        assert!(
            diffs[1].details.iter().any(|d| d.starts_with("init: ") && d.contains("mtime 5") && d.contains("mtime 6"))
        );
        assert!(!diffs[1].details.iter().any(|d| d.starts_with("bin:")));
        assert!(diffs[2].details[0].starts_with("only in"));
        assert!(compare_dirs(a.path(), a.path()).unwrap().is_empty());
    }
}
