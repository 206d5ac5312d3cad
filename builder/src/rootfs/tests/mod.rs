//! Tests of the rootfs writer: an in-memory tar with every entry kind an export can hold, written
//! to squashfs and checked with squashfs-tools' `unsquashfs` (listing, extraction, superblock)
//! and with backhand's reader; plus determinism, deduplication and crash-safety checks.
//!
//! `unsquashfs` (Debian package `squashfs-tools`) must be on the PATH.

mod dedup;
mod image;
mod safety;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};

use super::normalize::HOSTS;
use super::{Report, SquashOptions, tar_to_squashfs};

/// SOURCE_DATE_EPOCH of the tests: 2023-11-14 22:13:20 UTC.
pub(super) const SDE: u32 = 1_700_000_000;
/// The default block size.
pub(super) const BS: usize = 128 * 1024;

/// One tar entry of the fixture.
#[derive(Debug, Clone)]
pub(super) enum Spec {
    Dir { path: &'static str, mode: u32, uid: u64, gid: u64 },
    File { path: String, data: Vec<u8>, mode: u32, uid: u64, gid: u64, pax: Vec<(&'static str, Vec<u8>)> },
    Symlink { path: &'static str, target: &'static str },
    Hardlink { path: &'static str, target: &'static str },
    Device { path: &'static str, block: bool, major: u32, minor: u32, mode: u32, gid: u64 },
    Fifo { path: &'static str, mode: u32 },
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible.
pub(super) fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Deterministic compressible text.
pub(super) fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &["squashfs", "block", "fragment", "inode", "capsem", "the", "of", "rootfs", "\n", "zstd"];
    let picks = random(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[picks[i % picks.len()] as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

fn file(path: &str, data: Vec<u8>, mode: u32) -> Spec {
    Spec::File { path: path.to_owned(), data, mode, uid: 0, gid: 0, pax: Vec::new() }
}

/// Name longer than the 100 bytes of a ustar header: needs a GNU long-name entry.
pub(super) fn long_name() -> String {
    format!("usr/share/{}.txt", "x".repeat(150))
}

/// Every kind of entry an engine export can hold, plus paths the normalization rules act on.
pub(super) fn fixture() -> Vec<Spec> {
    let big = random(1, 300 * 1024);
    // Compressible, so that serving one's compressed block for the other would show in the content.
    let prefix_a = text(2, 200_000);
    let mut prefix_b = prefix_a.clone();
    prefix_b[150_000..].copy_from_slice(&text(3, 50_000));
    let mut prefix_c = prefix_a[..BS].to_vec();
    prefix_c.extend(text(4, 10_000));
    let mut sparse = vec![0u8; 3 * BS];
    sparse.extend_from_slice(b"tail");
    let capability = vec![0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    vec![
        Spec::Dir { path: "./", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "etc", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "etc/ssh", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "usr", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "usr/bin", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "usr/share", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "usr/share/odd dir", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "usr/lib/python3/__pycache__", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "data", mode: 0o750, uid: 1000, gid: 1000 },
        Spec::Dir { path: "dev", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "tmp", mode: 0o1777, uid: 0, gid: 0 },
        Spec::Dir { path: "run", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "var/log/apt", mode: 0o755, uid: 0, gid: 0 },
        Spec::Dir { path: "srv/setgid-dir", mode: 0o2775, uid: 0, gid: 0 },
        file("empty", Vec::new(), 0o644),
        file("etc/small.conf", b"hello world\n".to_vec(), 0o644),
        file("etc/a.txt", b"same small content\n".to_vec(), 0o644),
        file("etc/b.txt", b"same small content\n".to_vec(), 0o644),
        file("etc/hostname", b"3f2a1b9c0d1e\n".to_vec(), 0o755),
        file("etc/hosts", b"127.0.0.1 localhost\n172.17.0.2 3f2a1b9c0d1e\n".to_vec(), 0o755),
        file("etc/resolv.conf", b"nameserver 8.8.8.8\n".to_vec(), 0o755),
        file("etc/machine-id", b"0123456789abcdef0123456789abcdef\n".to_vec(), 0o444),
        file("etc/shadow-", b"root:*:19000:0:99999:7:::\n".to_vec(), 0o600),
        file("etc/ssh/ssh_host_ed25519_key", random(9, 400), 0o600),
        file("etc/ssh/sshd_config", b"PermitRootLogin no\n".to_vec(), 0o644),
        file(".dockerenv", Vec::new(), 0o755),
        Spec::File { path: "data/big.bin".into(), data: big.clone(), mode: 0o644, uid: 1000, gid: 1000, pax: vec![] },
        Spec::File { path: "data/big-copy.bin".into(), data: big, mode: 0o600, uid: 1001, gid: 1001, pax: vec![] },
        file("data/prefix-a.bin", prefix_a, 0o644),
        file("data/prefix-b.bin", prefix_b, 0o644),
        file("data/prefix-c.bin", prefix_c, 0o644),
        file("data/exact-block.bin", random(5, BS), 0o644),
        file("data/sparse.bin", sparse, 0o644),
        Spec::File {
            path: "usr/bin/ping".into(),
            data: random(6, 150_000),
            mode: 0o4755,
            uid: 0,
            gid: 0,
            pax: vec![("SCHILY.xattr.security.capability", capability), ("SCHILY.xattr.user.comment", b"x".to_vec())],
        },
        Spec::Hardlink { path: "usr/bin/ping-hard", target: "usr/bin/ping" },
        file("usr/bin/sgid-tool", b"#!/bin/sh\n".to_vec(), 0o2755),
        Spec::Symlink { path: "usr/bin/sh-link", target: "/bin/sh" },
        Spec::Symlink { path: "etc/rel-link", target: "small.conf" },
        file("usr/share/odd dir/naïve file ü.txt", b"unicode\n".to_vec(), 0o644),
        file(&long_name(), b"long\n".to_vec(), 0o644),
        file("usr/share/big.txt", text(7, 400_000), 0o644),
        file("usr/lib/python3/__pycache__/mod.cpython-311.pyc", random(8, 300), 0o644),
        file("usr/lib/python3/mod.py", b"x = 1\n".to_vec(), 0o644),
        file("var/log/apt/term.log", b"Log started: 2024-01-01\n".to_vec(), 0o640),
        file("var/lib/apt/lists/deb.debian.org_InRelease", text(10, 5000), 0o644),
        file("tmp/junk", b"junk".to_vec(), 0o644),
        file("root/.cache/pip/x", b"cache".to_vec(), 0o644),
        Spec::Device { path: "dev/null", block: false, major: 1, minor: 3, mode: 0o666, gid: 0 },
        Spec::Device { path: "dev/sda", block: true, major: 8, minor: 0, mode: 0o660, gid: 6 },
        Spec::Device { path: "dev/big-minor", block: false, major: 300, minor: 70_000, mode: 0o600, gid: 0 },
        Spec::Fifo { path: "run/fifo", mode: 0o644 },
    ]
}

/// Serializes `specs` in `order`. `salt` changes every mtime and the user/group names, which
/// must not change the image.
pub(super) fn tar_of(specs: &[Spec], order: &[usize], salt: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, &i) in order.iter().enumerate() {
        let mut h = Header::new_gnu();
        h.set_mtime(1_600_000_000 + salt * 7919 + n as u64);
        h.set_username(&format!("user{salt}")).unwrap();
        h.set_groupname(&format!("group{salt}")).unwrap();
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        match &specs[i] {
            Spec::Dir { path, mode, uid, gid } => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Spec::File { path, data, mode, uid, gid, pax } => {
                if !pax.is_empty() {
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
                }
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Spec::Symlink { path, target } => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            Spec::Hardlink { path, target } => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o644); // the target's metadata wins
                b.append_link(&mut h, path, target).unwrap();
            }
            Spec::Device { path, block, major, minor, mode, gid } => {
                h.set_entry_type(if *block { EntryType::Block } else { EntryType::Char });
                h.set_mode(*mode);
                h.set_gid(*gid);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Spec::Fifo { path, mode } => {
                h.set_entry_type(EntryType::Fifo);
                h.set_mode(*mode);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Identity order.
pub(super) fn in_order(specs: &[Spec]) -> Vec<usize> {
    (0..specs.len()).collect()
}

/// A deterministic shuffle (Fisher–Yates driven by [`random`]).
pub(super) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let r = random(seed, n * 4);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let v = u32::from_le_bytes([r[i * 4], r[i * 4 + 1], r[i * 4 + 2], r[i * 4 + 3]]) as usize;
        order.swap(i, v % (i + 1));
    }
    order
}

pub(super) fn opts(threads: usize) -> SquashOptions {
    SquashOptions { source_date_epoch: SDE, threads, ..SquashOptions::default() }
}

/// Writes the fixture image (in order, all cores) into `dir`.
pub(super) fn build_fixture(dir: &Path) -> (PathBuf, Report) {
    let specs = fixture();
    let out = dir.join("rootfs.squashfs");
    let report = tar_to_squashfs(tar_of(&specs, &in_order(&specs), 0).as_slice(), &out, &opts(0)).unwrap();
    (out, report)
}

/// Regular files the image must contain, with their exact content (hand-written from the
/// fixture and the rules, not computed by the code under test).
pub(super) fn expected_files() -> BTreeMap<String, Vec<u8>> {
    let removed = [
        "etc/shadow-",
        "etc/ssh/ssh_host_ed25519_key",
        ".dockerenv",
        "usr/lib/python3/__pycache__/mod.cpython-311.pyc",
        "var/log/apt/term.log",
        "var/lib/apt/lists/deb.debian.org_InRelease",
        "tmp/junk",
        "root/.cache/pip/x",
    ];
    let mut out = BTreeMap::new();
    let mut ping = Vec::new();
    for spec in fixture() {
        if let Spec::File { path, data, .. } = spec {
            if path == "usr/bin/ping" {
                ping = data.clone();
            }
            if !removed.contains(&path.as_str()) {
                out.insert(path, data);
            }
        }
    }
    out.insert("usr/bin/ping-hard".into(), ping);
    out.insert("etc/hostname".into(), Vec::new());
    out.insert("etc/resolv.conf".into(), Vec::new());
    out.insert("etc/machine-id".into(), Vec::new());
    out.insert("etc/hosts".into(), HOSTS.to_vec());
    out
}

/// `unsquashfs` with `args`; panics with its stderr unless it succeeds.
pub(super) fn unsquashfs(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new("unsquashfs").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run unsquashfs ({e}); install squashfs-tools (apt-get install squashfs-tools)")
    });
    assert!(
        output.status.success(),
        "unsquashfs {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// BLAKE3 of a file.
pub(super) fn b3(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap()).to_hex().to_string()
}
