//! Unit tests of the initrd layout, the checks on its inputs, compression and output. The
//! archive format itself is tested in `cpio.rs`; GNU cpio/zstd round trips are in
//! `builder/tests/initrd.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::script_scan::{self, Wrapper};
use super::*;

/// busybox `ash` builtins the scanner accepts without a link in `/bin` (Debian's busybox-static
/// has them all built in; checked against the host's busybox below when it has one).
const ASH_BUILTINS: &[&str] = &[
    ".", ":", "[", "break", "cd", "command", "continue", "echo", "eval", "exec", "exit", "export", "false", "getopts",
    "local", "printf", "read", "readonly", "return", "set", "shift", "test", "trap", "true", "type", "umask", "unset",
    "wait",
];

/// Commands of capsem-init whose arguments hold another command: `exec CMD`, its helper
/// `must WHAT CMD…`, and the ones that run rootfs tools (`chroot`, its helper `in_root`), which the
/// initrd need not have.
const WRAPPERS: &[(&str, Wrapper)] = &[
    ("exec", Wrapper::Runs(0)),
    ("must", Wrapper::Runs(1)),
    ("chroot", Wrapper::Opaque),
    ("in_root", Wrapper::Opaque),
];

fn capsem_init_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/default/artifacts/capsem-init")
}

#[test]
fn applets_are_exactly_what_capsem_init_runs() {
    let path = capsem_init_path();
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scan = script_scan::scan(&script, WRAPPERS).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shipped: BTreeSet<String> =
        APPLETS.iter().map(|a| format!("/bin/{a}")).chain(["/bin/busybox".to_owned()]).collect();

    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for c in &scan.commands {
        let at = format!("{}:{}", path.display(), c.line);
        if !c.literal {
            // `must` runs its arguments as "$@"; any other computed command cannot be checked.
            if c.word != "$@" {
                problems.push(format!("{at}: computed command {:?} cannot be checked", c.word));
            }
        } else if scan.functions.contains(&c.word) || ASH_BUILTINS.contains(&c.word.as_str()) {
        } else if c.word.contains('/') {
            if !shipped.contains(&c.word) {
                problems.push(format!("{at}: {} is not in the initrd", c.word));
            }
        } else if APPLETS.contains(&c.word.as_str()) {
            used.insert(c.word.clone());
        } else {
            problems.push(format!(
                "{at}: `{}` is neither in initrd::APPLETS nor an ash builtin: add it to APPLETS (if busybox has \
                 it) or stop using it",
                c.word
            ));
        }
    }
    // The interpreter of the `#!` line.
    let interpreter = script.lines().next().and_then(|l| l.strip_prefix("#!")).unwrap_or_default().trim();
    assert!(INTERPRETERS.contains(&interpreter), "{interpreter}");
    used.insert(interpreter.rsplit('/').next().unwrap_or_default().to_owned());

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let listed: BTreeSet<String> = APPLETS.iter().map(|a| (*a).to_owned()).collect();
    let unused: Vec<_> = listed.difference(&used).collect();
    assert!(unused.is_empty(), "APPLETS lists {unused:?}, which capsem-init no longer runs");
    // A sanity check of the scan itself: the script's central commands were found.
    for expected in ["mount", "switch_root", "must", "fatal", "["] {
        assert!(scan.commands.iter().any(|c| c.word == expected), "{expected} not found");
    }
    let mut sorted = APPLETS.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, APPLETS, "keep APPLETS sorted");
}

#[test]
fn ash_builtins_are_builtins_of_the_host_busybox() {
    let Ok(out) = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("type {}", ASH_BUILTINS.join(" "))])
        .output()
    else {
        eprintln!("no /bin/busybox on this host; builtins not checked");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ASH_BUILTINS.len(), "{text}");
    for (name, line) in ASH_BUILTINS.iter().zip(&lines) {
        assert!(line.starts_with(&format!("{name} is a ")) && line.ends_with("builtin"), "{name}: {line}");
    }
}

fn spec() -> InitrdSpec {
    InitrdSpec {
        busybox: elf::fake_static(b"busybox"),
        init: b"#!/bin/sh\necho hi\n".to_vec(),
        guest_binaries: vec![
            ("capsem-agent".into(), elf::fake_static(b"agent")),
            ("a-tool".into(), elf::fake_static(b"tool")),
        ],
        source_date_epoch: 1_700_000_000,
    }
}

#[test]
fn layout_is_as_documented() {
    let spec = spec();
    let mut got: Vec<(String, String)> = layout(&spec)
        .unwrap()
        .into_iter()
        .map(|e| {
            let what = match e.kind {
                cpio::Kind::Dir => format!("dir {:o}", e.mode),
                cpio::Kind::File(d) => format!("file {:o} {}", e.mode, d.len()),
                cpio::Kind::Symlink(t) => format!("-> {t}"),
                cpio::Kind::CharDevice { major, minor } => format!("chr {:o} {major}:{minor}", e.mode),
            };
            (e.path, what)
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = [
        (".", "dir 755"),
        ("bin", "dir 755"),
        ("capsem", "dir 755"),
        ("capsem/bin", "dir 755"),
        ("dev", "dir 755"),
        ("newroot", "dir 755"),
        ("proc", "dir 555"),
        ("run", "dir 755"),
        ("run/capsem", "dir 755"),
        ("run/capsem/rootfs", "dir 755"),
        ("run/capsem/rw", "dir 755"),
        ("sys", "dir 555"),
        ("tmp", "dir 1777"),
        ("dev/console", "chr 600 5:1"),
        ("dev/null", "chr 666 1:3"),
        ("init", "file 755 18"),
        ("bin/busybox", "file 755 127"),
        ("capsem/bin/a-tool", "file 555 124"),
        ("capsem/bin/capsem-agent", "file 555 125"),
    ]
    .iter()
    .map(|(p, w)| ((*p).to_owned(), (*w).to_owned()))
    .chain(APPLETS.iter().map(|a| (format!("bin/{a}"), "-> busybox".to_owned())))
    .collect();
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn report_describes_the_image() {
    let initrd = initrd_bytes(&spec()).unwrap();
    let r = &initrd.report;
    assert_eq!(r.entries, 19 + APPLETS.len());
    assert_eq!(r.compressed_size, initrd.bytes.len() as u64);
    let (archive, entries) = cpio_bytes(&spec()).unwrap();
    assert_eq!((r.uncompressed_size, r.entries), (archive.len() as u64, entries));
    assert_eq!(r.guest_binaries, ["/capsem/bin/a-tool", "/capsem/bin/capsem-agent"]);
    assert_eq!(r.applets, APPLETS);
    assert_eq!((r.zstd.level, r.zstd.window_log, r.zstd.checksum), (19, 23, true));
    assert!(r.zstd.library_version.starts_with("1."), "{}", r.zstd.library_version);
    assert_eq!(zstd::decode_all(&initrd.bytes[..]).unwrap(), archive);
    // Same spec, same bytes; guest binary order does not matter.
    let mut reordered = spec();
    reordered.guest_binaries.reverse();
    assert_eq!(initrd_bytes(&reordered).unwrap(), initrd);
}

/// (window size, single segment, checksum flag, dictionary id flag, content size) of a frame.
fn frame_header(frame: &[u8]) -> (u64, bool, bool, u8, Option<u64>) {
    assert_eq!(frame[..4], [0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let fhd = frame[4];
    let single = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_flag = fhd & 0x03;
    let fcs_flag = fhd >> 6;
    let mut at = 5;
    let window = if single {
        None
    } else {
        let wd = frame[at];
        at += 1;
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        Some(base + (base / 8) * u64::from(wd & 7))
    };
    at += [0, 1, 2, 4][usize::from(dict_flag)];
    let fcs_len = match (fcs_flag, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let content = (fcs_len > 0).then(|| {
        let mut v = 0u64;
        for (i, b) in frame[at..at + fcs_len].iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        if fcs_len == 2 { v + 256 } else { v }
    });
    let window = window.unwrap_or_else(|| content.expect("single segment frames carry their size"));
    (window, single, checksum, dict_flag, content)
}

#[test]
fn zstd_frames_fit_the_kernels_window_limit() {
    let kernel_limit = 1u64 << 27;
    // Small input: a single-segment frame, window = content size.
    let small = vec![7u8; 100_000];
    let frame = compress(&small).unwrap();
    assert_eq!(frame_header(&frame), (100_000, true, true, 0, Some(100_000)));
    // Larger than the window: the window is the pinned 8 MiB.
    let big: Vec<u8> = (0..9u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x0f).collect();
    let frame = compress(&big).unwrap();
    let (window, single, checksum, dict, content) = frame_header(&frame);
    assert_eq!((window, single, checksum, dict, content), (1 << ZSTD_WINDOW_LOG, false, true, 0, Some(9 << 20)));
    assert!(window <= kernel_limit);
    assert_eq!(zstd::decode_all(&frame[..]).unwrap(), big);
    // A streaming decoder (as the kernel's) limited to 8 MiB accepts it, one limited to 4 MiB not.
    let stream = |log: u32| -> std::io::Result<Vec<u8>> {
        let mut d = zstd::stream::read::Decoder::new(&frame[..])?;
        d.window_log_max(log)?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut out)?;
        Ok(out)
    };
    assert_eq!(stream(ZSTD_WINDOW_LOG).unwrap(), big);
    assert!(stream(ZSTD_WINDOW_LOG - 1).is_err());
}

#[test]
fn init_must_run_in_the_initrd() {
    let with_init = |init: &[u8]| InitrdSpec { init: init.to_vec(), ..spec() };
    for ok in [&b"#!/bin/sh\n"[..], b"#! /bin/sh -e\n", b"#!/bin/busybox sh\n", &elf::fake_static(b"init")] {
        layout(&with_init(ok)).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(ok)));
    }
    for (bad, why) in [
        (&b""[..], "empty"),
        (b"#!/bin/bash\n", "\"/bin/bash\" is not in the initrd"),
        (b"#!/bin/sh\r\necho\r\n", "\"/bin/sh\\r\" is not in the initrd"),
        (b"#!\n", "\"\" is not in the initrd"),
        (b"echo hi\n", "not an ELF"),
    ] {
        let err = layout(&with_init(bad)).unwrap_err().to_string();
        assert!(err.starts_with("initrd: /init") && err.contains(why), "{err}");
    }
}

#[test]
fn busybox_and_guest_binaries_must_be_static() {
    let mut dynamic = elf::fake_static(b"");
    dynamic[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
    let err = layout(&InitrdSpec { busybox: dynamic.clone(), ..spec() }).unwrap_err().to_string();
    assert!(err.contains("busybox cannot run in the initrd: it is dynamically linked"), "{err}");
    let err = layout(&InitrdSpec { guest_binaries: vec![("agent".into(), dynamic)], ..spec() }).unwrap_err();
    assert!(err.to_string().contains("guest binary \"agent\" cannot run"), "{err}");
    let script = InitrdSpec { guest_binaries: vec![("agent".into(), b"#!/bin/sh\n".to_vec())], ..spec() };
    assert!(layout(&script).unwrap_err().to_string().contains("not an ELF"));
}

#[test]
fn guest_binary_names_are_plain_and_unique() {
    for bad in ["", "..", ".", ".hidden", "a/b", "../x", "/abs", "a\0b", "sp ace", &"x".repeat(256)] {
        let spec = InitrdSpec { guest_binaries: vec![(bad.to_owned(), elf::fake_static(b""))], ..spec() };
        match layout(&spec) {
            Err(InitrdError::GuestName { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let twice = vec![("x".to_owned(), elf::fake_static(b"1")), ("x".to_owned(), elf::fake_static(b"2"))];
    let err = layout(&InitrdSpec { guest_binaries: twice, ..spec() }).unwrap_err();
    assert!(matches!(err, InitrdError::DuplicateGuest { ref name } if name == "x"), "{err}");
    let ok = vec![("capsem-agent_1.2+x".to_owned(), elf::fake_static(b""))];
    layout(&InitrdSpec { guest_binaries: ok, ..spec() }).unwrap();
    layout(&InitrdSpec { guest_binaries: Vec::new(), ..spec() }).unwrap();
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn write_is_atomic_and_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd.img");
    std::fs::write(&out, b"old").unwrap();
    // A temporary file of a dead process is removed; one of a live process (ours) is kept.
    let stale = tmp.path().join("initrd.img.tmp-4000000000-0");
    let live = tmp.path().join(format!("initrd.img.tmp-{}-999", std::process::id()));
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(&live, b"in progress").unwrap();
    let report = write_initrd(&spec(), &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes, initrd_bytes(&spec()).unwrap().bytes);
    assert_eq!(report.compressed_size, bytes.len() as u64);
    assert_eq!(dir_names(tmp.path()), ["initrd.img", &format!("initrd.img.tmp-{}-999", std::process::id())]);
    std::fs::remove_file(&live).unwrap();

    // An invalid spec fails before anything is touched.
    let bad = InitrdSpec { init: Vec::new(), ..spec() };
    assert!(write_initrd(&bad, &out).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(write_initrd(&bad, &tmp.path().join("other.img")).is_err());
    assert_eq!(dir_names(tmp.path()), ["initrd.img"]);

    // Output paths that cannot be files.
    let err = write_initrd(&spec(), tmp.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    let err = write_initrd(&spec(), &tmp.path().join("missing/initrd.img")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(dir_names(tmp.path()), ["initrd.img"]);
}
