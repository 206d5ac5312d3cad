//! The image as squashfs-tools and backhand's reader see it, and its determinism.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::Path;

use backhand::{FilesystemReader, InnerNode};

use super::*;
use crate::model::Compression;
use crate::rootfs::{Action, SquashOptions};

/// One parsed `unsquashfs -lln` line: permissions, uid/gid, size or `major,minor` (None for
/// directories, whose size is squashfs' own business), time, path, symlink target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    perms: String,
    owner: String,
    size: Option<String>,
    path: String,
    target: Option<String>,
}

/// Parses `unsquashfs -lln -UTC` output; also returns each line's time.
fn parse_listing(out: &str) -> Vec<(Listed, String)> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
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
                size.push_str(&token()); // "  1,  3"
            }
            let time = format!("{} {}", token(), token());
            let name = rest.strip_prefix(' ').unwrap_or(rest);
            let (path, target) = match name.split_once(" -> ") {
                Some((p, t)) => (p, Some(t.to_owned())),
                None => (name, None),
            };
            let path = path.strip_prefix("squashfs-root").unwrap().trim_start_matches('/').to_owned();
            let size = (!perms.starts_with('d')).then_some(size);
            (Listed { perms, owner, size, path, target }, time)
        })
        .collect()
}

fn row(perms: &str, owner: &str, size: Option<&str>, path: &str, target: Option<&str>) -> Listed {
    Listed {
        perms: perms.into(),
        owner: owner.into(),
        size: size.map(Into::into),
        path: path.into(),
        target: target.map(Into::into),
    }
}

/// The tree the fixture must produce, written by hand.
fn expected_listing() -> Vec<Listed> {
    let d = |perms: &str, owner: &str, path: &str| row(perms, owner, None, path, None);
    let f = |perms: &str, owner: &str, size: usize, path: &str| row(perms, owner, Some(&size.to_string()), path, None);
    let hosts_len = crate::rootfs::normalize::HOSTS.len();
    let long = long_name();
    let mut rows = vec![
        d("drwxr-xr-x", "0/0", ""),
        d("drwxr-x---", "1000/1000", "data"),
        f("-rw-------", "1001/1001", 300 * 1024, "data/big-copy.bin"),
        f("-rw-r--r--", "1000/1000", 300 * 1024, "data/big.bin"),
        f("-rw-r--r--", "0/0", BS, "data/exact-block.bin"),
        f("-rw-r--r--", "0/0", 200_000, "data/prefix-a.bin"),
        f("-rw-r--r--", "0/0", 200_000, "data/prefix-b.bin"),
        f("-rw-r--r--", "0/0", BS + 10_000, "data/prefix-c.bin"),
        f("-rw-r--r--", "0/0", 3 * BS + 4, "data/sparse.bin"),
        d("drwxr-xr-x", "0/0", "dev"),
        // unsquashfs 4.5 lists a device as `rdev >> 8, rdev & 0xff` (also for mksquashfs' own
        // images); with the kernel's encoding 300:70000 is 0x11112c70, listed as 1118508,112.
        // The extraction test checks that it comes back as 300:70000.
        row("crw-------", "0/0", Some("1118508,112"), "dev/big-minor", None),
        row("crw-rw-rw-", "0/0", Some("1,3"), "dev/null", None),
        row("brw-rw----", "0/6", Some("8,0"), "dev/sda", None),
        f("-rw-r--r--", "0/0", 0, "empty"),
        d("drwxr-xr-x", "0/0", "etc"),
        f("-rw-r--r--", "0/0", 19, "etc/a.txt"),
        f("-rw-r--r--", "0/0", 19, "etc/b.txt"),
        f("-rw-r--r--", "0/0", 0, "etc/hostname"),
        f("-rw-r--r--", "0/0", hosts_len, "etc/hosts"),
        f("-r--r--r--", "0/0", 0, "etc/machine-id"),
        row("lrwxrwxrwx", "0/0", Some("10"), "etc/rel-link", Some("small.conf")),
        f("-rw-r--r--", "0/0", 0, "etc/resolv.conf"),
        f("-rw-r--r--", "0/0", 12, "etc/small.conf"),
        d("drwxr-xr-x", "0/0", "etc/ssh"),
        f("-rw-r--r--", "0/0", 19, "etc/ssh/sshd_config"),
        d("drwxr-xr-x", "0/0", "run"),
        row("prw-r--r--", "0/0", Some("0"), "run/fifo", None),
        d("drwxr-xr-x", "0/0", "srv"),
        d("drwxrwxr-x", "0/0", "srv/setgid-dir"),
        d("drwxrwxrwt", "0/0", "tmp"),
        d("drwxr-xr-x", "0/0", "usr"),
        d("drwxr-xr-x", "0/0", "usr/bin"),
        f("-rwxr-xr-x", "0/0", 150_000, "usr/bin/ping"),
        f("-rwxr-xr-x", "0/0", 150_000, "usr/bin/ping-hard"),
        f("-rwxr-xr-x", "0/0", 10, "usr/bin/sgid-tool"),
        row("lrwxrwxrwx", "0/0", Some("7"), "usr/bin/sh-link", Some("/bin/sh")),
        d("drwxr-xr-x", "0/0", "usr/lib"),
        d("drwxr-xr-x", "0/0", "usr/lib/python3"),
        f("-rw-r--r--", "0/0", 6, "usr/lib/python3/mod.py"),
        d("drwxr-xr-x", "0/0", "usr/share"),
        f("-rw-r--r--", "0/0", 400_000, "usr/share/big.txt"),
        d("drwxr-xr-x", "0/0", "usr/share/odd dir"),
        f("-rw-r--r--", "0/0", 8, "usr/share/odd dir/naïve file ü.txt"),
        f("-rw-r--r--", "0/0", 5, &long),
        d("drwxr-xr-x", "0/0", "var"),
        d("drwxr-xr-x", "0/0", "var/log"),
        d("drwxr-xr-x", "0/0", "var/log/apt"),
    ];
    rows.sort();
    rows
}

#[test]
fn unsquashfs_listing_matches_the_expected_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = build_fixture(dir.path());
    let listing = unsquashfs(&["-lln".as_ref(), "-UTC".as_ref(), img.as_os_str()]);
    let parsed = parse_listing(&listing);
    let mut got: Vec<Listed> = parsed.iter().map(|(l, _)| l.clone()).collect();
    got.sort();
    let want = expected_listing();
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g, "first difference");
    }
    assert_eq!(got.len(), want.len(), "listing:\n{listing}");
    for (entry, time) in &parsed {
        // backhand has no setter for the root's mtime: it is 0 (documented in the module).
        let want = if entry.path.is_empty() { "1970-01-01 00:00" } else { "2023-11-14 22:13" };
        assert_eq!(time, want, "mtime of /{}", entry.path);
    }
}

#[test]
fn unsquashfs_reads_the_superblock_compressor_and_fixed_time() {
    let dir = tempfile::tempdir().unwrap();
    let (img, report) = build_fixture(dir.path());
    let stat = unsquashfs(&["-s".as_ref(), img.as_os_str()]);
    assert!(stat.contains("Compression zstd"), "{stat}");
    assert!(stat.contains("compression-level 15"), "{stat}");
    assert!(stat.contains("Block size 131072"), "{stat}");
    let time = unsquashfs(&["-mkfs-time".as_ref(), img.as_os_str()]);
    assert_eq!(time.trim(), SDE.to_string());
    assert_eq!(report.bytes_out, fs::metadata(&img).unwrap().len());
    assert_eq!(report.bytes_out % 4096, 0, "padded to 4 KiB like mksquashfs");
}

/// Walks an extracted tree: regular files with content, symlinks with target, other names.
fn walk(root: &Path, rel: &Path, files: &mut BTreeMap<String, Vec<u8>>, links: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let key = rel.to_string_lossy().into_owned();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            walk(root, &rel, files, links);
        } else if ty.is_symlink() {
            links.insert(key, fs::read_link(entry.path()).unwrap().to_string_lossy().into_owned());
        } else if ty.is_file() {
            files.insert(key, fs::read(entry.path()).unwrap());
        }
    }
}

#[test]
fn unsquashfs_extracts_every_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = build_fixture(dir.path());
    let dest = dir.path().join("x");
    // Device nodes need root to extract; the listing test checks them.
    unsquashfs(&[
        "-no-progress".as_ref(),
        "-d".as_ref(),
        dest.as_os_str(),
        "-excludes".as_ref(),
        img.as_os_str(),
        "dev".as_ref(),
        "run/fifo".as_ref(),
    ]);
    let (mut files, mut links) = (BTreeMap::new(), BTreeMap::new());
    walk(&dest, Path::new(""), &mut files, &mut links);
    let want = expected_files();
    assert_eq!(files.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (path, content) in &want {
        // Content first by length then bytes, so a false dedup shows as a readable message.
        let got = &files[path];
        assert_eq!(got.len(), content.len(), "{path}: length");
        assert!(got == content, "{path}: content differs");
    }
    // As root, unsquashfs can also create the device nodes: check what the kernel API sees.
    if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        let devs = dir.path().join("devs");
        unsquashfs(&["-no-progress".as_ref(), "-d".as_ref(), devs.as_os_str(), img.as_os_str(), "dev".as_ref()]);
        for (name, major, minor) in [("big-minor", 300, 70_000), ("null", 1, 3), ("sda", 8, 0)] {
            let rdev =
                std::os::unix::fs::MetadataExt::rdev(&fs::symlink_metadata(devs.join("dev").join(name)).unwrap());
            let got = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff), (rdev & 0xff) | ((rdev >> 12) & !0xff));
            assert_eq!(got, (major, minor), "/dev/{name}");
        }
    }
    let want_links: BTreeMap<String, String> =
        [("etc/rel-link", "small.conf"), ("usr/bin/sh-link", "/bin/sh")].map(|(a, b)| (a.into(), b.into())).into();
    assert_eq!(links, want_links);
}

/// Every regular file through backhand's reader, with its inode's first data block.
fn read_back(img: &Path) -> BTreeMap<String, (Vec<u8>, u64)> {
    let reader = FilesystemReader::from_reader(BufReader::new(fs::File::open(img).unwrap())).unwrap();
    let mut out = BTreeMap::new();
    for node in reader.files() {
        if let InnerNode::File(file) = &node.inner {
            let mut data = Vec::new();
            reader.file(file).reader().read_to_end(&mut data).unwrap();
            let path = node.fullpath.strip_prefix("/").unwrap().to_string_lossy().into_owned();
            out.insert(path, (data, file.blocks_start()));
        }
    }
    out
}

#[test]
fn backhand_reads_back_every_file_and_identical_files_share_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (img, report) = build_fixture(dir.path());
    let got = read_back(&img);
    let want = expected_files();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (path, content) in &want {
        assert!(&got[path].0 == content, "{path}: content differs");
    }
    // Device numbers decoded the way the kernel does (`new_decode_dev`).
    let reader = FilesystemReader::from_reader(BufReader::new(fs::File::open(&img).unwrap())).unwrap();
    let mut devices = BTreeMap::new();
    for node in reader.files() {
        let rdev = match &node.inner {
            InnerNode::CharacterDevice(d) => d.device_number,
            InnerNode::BlockDevice(d) => d.device_number,
            _ => continue,
        };
        let decoded = ((rdev & 0xfff00) >> 8, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
        devices.insert(node.fullpath.to_string_lossy().into_owned(), decoded);
    }
    let want_devices: BTreeMap<String, (u32, u32)> =
        [("/dev/big-minor", (300, 70_000)), ("/dev/null", (1, 3)), ("/dev/sda", (8, 0))]
            .map(|(p, d)| (p.into(), d))
            .into();
    assert_eq!(devices, want_devices);
    assert_eq!(got["data/big.bin"].1, got["data/big-copy.bin"].1, "identical files share their blocks");
    assert_eq!(got["usr/bin/ping"].1, got["usr/bin/ping-hard"].1, "a hard link's copy shares its blocks");
    assert_ne!(got["data/prefix-a.bin"].1, got["data/prefix-b.bin"].1, "same first block, different files");
    assert_ne!(got["data/prefix-a.bin"].1, got["data/prefix-c.bin"].1);
    assert!(report.dedup.enabled);
    assert_eq!(report.dedup.files, 2, "big-copy.bin and ping-hard");
    assert_eq!(report.dedup.bytes_saved, 300 * 1024 + 150_000);
    assert_eq!((report.dedup.small_duplicates, report.dedup.small_duplicate_bytes), (1, 19), "etc/b.txt");
}

#[test]
fn same_image_for_any_entry_order_mtimes_owner_names_and_thread_count() {
    let specs = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for (i, (order, salt, threads)) in [
        (in_order(&specs), 0, 1),
        (shuffled(specs.len(), 11), 1, 4),
        (shuffled(specs.len(), 12), 2, 2),
        (in_order(&specs).into_iter().rev().collect(), 3, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("img{i}"));
        let tar = tar_of(&specs, &order, salt);
        tar_to_squashfs(tar.as_slice(), &out, &opts(threads)).unwrap();
        hashes.push(b3(&out));
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[test]
fn the_parallel_phase_predicts_every_data_and_fragment_block() {
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = build_fixture(dir.path());
    let c = &report.compression;
    // Distinct data blocks: big-copy 3, exact 1, prefix-a 2 + prefix-b 1 + prefix-c 1 (their
    // first blocks are equal), sparse 1 (+3 holes), ping 2, big.txt 4; one fragment block: 16.
    assert_eq!(c.blocks_predicted, 16, "{c:?}");
    // Each compressed once, by a worker or by the writer.
    assert!(c.blocks_by_workers + c.blocks_by_writer <= 16, "{c:?}");
    // Served: every block backhand compresses, repeats included (big.bin 3, ping-hard 2, the
    // shared first blocks of prefix-b and -c): 3+3+1+2+2+2+1+2+2+4+1 = 23.
    assert_eq!(c.blocks_served, 23, "{c:?}");
    // Inline: metadata only (inode and directory tables; this fixture fits one block each).
    assert!(c.blocks_inline <= 4, "{c:?}");
    assert_eq!((c.compressor.as_str(), c.level, c.block_size), ("zstd", Some(15), 131072));
}

#[test]
fn report_lists_every_normalization_action_and_the_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = build_fixture(dir.path());
    let removed = |path: &str, rule: &'static str, entries: u64| Action::Removed { path: path.into(), rule, entries };
    let replaced = |path: &str, rule: &'static str, bytes: u64| Action::Replaced { path: path.into(), rule, bytes };
    let implicit = |path: &str| Action::ImplicitDir { path: path.into() };
    let xattr = |path: &str, name: &str, value: Option<&str>| Action::XattrDropped {
        path: path.into(),
        name: name.into(),
        value: value.map(Into::into),
    };
    let setid = |path: &str, before: &str, after: &str| Action::SetidStripped {
        path: path.into(),
        mode_before: before.into(),
        mode_after: after.into(),
    };
    let want = vec![
        removed("/.dockerenv", "dockerenv", 1),
        replaced("/etc/hostname", "etc-hostname", 0),
        replaced("/etc/hosts", "etc-hosts", crate::rootfs::normalize::HOSTS.len() as u64),
        replaced("/etc/machine-id", "machine-id", 0),
        replaced("/etc/resolv.conf", "etc-resolv-conf", 0),
        removed("/etc/shadow-", "account-backups", 1),
        removed("/etc/ssh/ssh_host_ed25519_key", "ssh-host-keys", 1),
        removed("/root/.cache/pip/x", "root-caches", 1),
        implicit("/srv"),
        setid("/srv/setgid-dir", "2775", "0775"),
        removed("/tmp/junk", "tmp", 1),
        setid("/usr/bin/ping", "4755", "0755"),
        xattr("/usr/bin/ping", "security.capability", Some("cap_net_raw=ep")),
        xattr("/usr/bin/ping", "user.comment", None),
        Action::HardlinkCopied { path: "/usr/bin/ping-hard".into(), target: "/usr/bin/ping".into() },
        setid("/usr/bin/ping-hard", "4755", "0755"),
        xattr("/usr/bin/ping-hard", "security.capability", Some("cap_net_raw=ep")),
        xattr("/usr/bin/ping-hard", "user.comment", None),
        setid("/usr/bin/sgid-tool", "2755", "0755"),
        implicit("/usr/lib"),
        implicit("/usr/lib/python3"),
        removed("/usr/lib/python3/__pycache__", "pycache", 2),
        implicit("/var"),
        removed("/var/lib/apt/lists/deb.debian.org_InRelease", "apt-lists", 1),
        implicit("/var/log"),
        removed("/var/log/apt/term.log", "logs", 1),
    ];
    assert_eq!(report.actions, want);
    assert_eq!(report.entries, fixture().len() as u64);
    assert_eq!(report.files, expected_files().len() as u64);
    assert_eq!(report.losses.len(), 3, "{:?}", report.losses);
    assert!(report.losses[0].starts_with("2 file capabilities dropped"), "{}", report.losses[0]);
    assert!(report.losses[0].contains("/usr/bin/ping cap_net_raw=ep"), "{}", report.losses[0]);
    assert!(report.losses[2].starts_with("1 hard links became independent inodes"), "{}", report.losses[2]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["actions"][0]["action"], "removed");
}

#[test]
fn every_supported_compressor_writes_a_deterministic_image_unsquashfs_reads() {
    let specs: Vec<Spec> = fixture().into_iter().filter(|s| !matches!(s, Spec::Device { .. })).collect();
    let tar = tar_of(&specs, &in_order(&specs), 0);
    let shuffled_tar = tar_of(&specs, &shuffled(specs.len(), 5), 1);
    let dir = tempfile::tempdir().unwrap();
    for (compressor, level, name) in [
        (Compression::Zstd, Some(3), "zstd"),
        (Compression::Xz, None, "xz"),
        (Compression::Gzip, Some(6), "gzip"),
        (Compression::Lz4, None, "lz4"),
    ] {
        let out = dir.path().join(name);
        let opts =
            |threads| SquashOptions { compressor, level, source_date_epoch: SDE, threads, ..SquashOptions::default() };
        tar_to_squashfs(tar.as_slice(), &out, &opts(1)).unwrap();
        let again = dir.path().join(format!("{name}-again"));
        tar_to_squashfs(shuffled_tar.as_slice(), &again, &opts(3)).unwrap();
        assert_eq!(b3(&out), b3(&again), "{name}: same bytes for another order and thread count");
        let stat = unsquashfs(&["-s".as_ref(), out.as_os_str()]);
        assert!(stat.contains(&format!("Compression {name}")), "{stat}");
        let dest = dir.path().join(format!("{name}-x"));
        unsquashfs(&["-no-progress".as_ref(), "-d".as_ref(), dest.as_os_str(), out.as_os_str()]);
        let big = fs::read(dest.join("usr/share/big.txt")).unwrap();
        assert!(big == text(7, 400_000), "{name}: big.txt differs");
        let prefix = fs::read(dest.join("data/prefix-b.bin")).unwrap();
        assert_eq!(blake3::hash(&prefix), blake3::hash(&expected_files()["data/prefix-b.bin"]), "{name}");
    }
}

#[test]
fn an_empty_tar_gives_an_image_with_only_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("empty.squashfs");
    let report = tar_to_squashfs(tar_of(&[], &[], 0).as_slice(), &out, &opts(1)).unwrap();
    assert_eq!((report.entries, report.inodes, report.files), (0, 1, 0));
    let listing = unsquashfs(&["-lln".as_ref(), "-UTC".as_ref(), out.as_os_str()]);
    let parsed = parse_listing(&listing);
    assert_eq!(parsed.len(), 1, "{listing}");
    assert_eq!(parsed[0].0, row("drwxr-xr-x", "0/0", None, "", None));
}

#[test]
fn a_hard_link_outlives_its_removed_target() {
    let specs = vec![
        Spec::File { path: "var/log/app.log".into(), data: text(1, 200_000), mode: 0o640, uid: 0, gid: 4, pax: vec![] },
        Spec::Hardlink { path: "srv/keep.log", target: "var/log/app.log" },
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img");
    let report = tar_to_squashfs(tar_of(&specs, &[0, 1], 0).as_slice(), &out, &opts(2)).unwrap();
    let got = read_back(&out);
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["srv/keep.log"]);
    assert!(got["srv/keep.log"].0 == text(1, 200_000));
    assert!(report.actions.contains(&Action::Removed { path: "/var/log/app.log".into(), rule: "logs", entries: 1 }));
}
