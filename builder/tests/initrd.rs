//! The initrd writer against the real tools: GNU `cpio` and the `zstd` CLI list, extract and
//! re-create what `capsem_builder::initrd` writes, with Debian's static busybox and the shipped
//! capsem-init.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use capsem_builder::initrd::cpio::{self, Entry};
use capsem_builder::initrd::{APPLETS, InitrdError, InitrdSpec, cpio_bytes, initrd_bytes, write_initrd};

const SDE: u32 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const SDE2: u32 = 1_600_000_000; // 2020-09-13 12:26:40 UTC

/// A minimal static x86-64 ELF (header + one PT_LOAD) followed by `payload`.
fn fake_static(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    (b[4], b[5], b[6]) = (2, 1, 1);
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    b[64..68].copy_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Debian busybox-static's binary when the host has it (it must then be static), else a fake.
fn busybox() -> (Vec<u8>, bool) {
    let verdict = Command::new("file").args(["-L", "/bin/busybox"]).output();
    match (std::fs::read("/bin/busybox"), verdict) {
        (Ok(bytes), Ok(out)) if String::from_utf8_lossy(&out.stdout).contains("statically linked") => (bytes, true),
        _ => {
            eprintln!("no static /bin/busybox (apt-get install busybox-static); using a fake ELF");
            (fake_static(b"not busybox"), false)
        }
    }
}

fn capsem_init() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/default/artifacts/capsem-init");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec(source_date_epoch: u32) -> InitrdSpec {
    InitrdSpec {
        busybox: busybox().0,
        init: capsem_init(),
        guest_binaries: vec![
            ("capsem-agent".into(), fake_static(b"agent")),
            ("aa".into(), fake_static(b"")), // name shorter than the agent's: another padding case
        ],
        source_date_epoch,
    }
}

/// Runs `program args` with `stdin`, in `dir`, in the C locale and UTC; panics unless it succeeds.
fn run(program: &str, args: &[&str], stdin: &[u8], dir: Option<&Path>) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C").env("TZ", "UTC");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (install it: apt-get install {program})"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    run("zstd", &["-dc", "--no-progress"], bytes, None)
}

/// `date`'s rendering of `t` the way `cpio -itv` shows old dates (`Nov 14  2023`), with single
/// spaces as [`list`] joins them.
fn listing_date(t: u32) -> String {
    let text = String::from_utf8(run("date", &["-u", "-d", &format!("@{t}"), "+%b %e %Y"], b"", None)).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One line of `cpio -itv`: (mode, nlink, owner, group, size or "maj,min", date, name, link target).
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    mode: String,
    nlink: u32,
    owner: String,
    group: String,
    size: String,
    date: String,
    name: String,
    target: Option<String>,
}

fn list(archive: &[u8], numeric: bool) -> Vec<Listed> {
    let mut args = vec!["-itv", "--quiet"];
    if numeric {
        args.push("--numeric-uid-gid");
    }
    let text = String::from_utf8(run("cpio", &args, archive, None)).unwrap();
    text.lines()
        .map(|line| {
            let mut w: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if w[0].starts_with('c') {
                // "5,   1": join major and minor
                let minor = w.remove(5);
                w[4].push_str(&minor);
            }
            let target = (w.len() == 11 && w[9] == "->").then(|| w[10].clone());
            assert!(w.len() == 9 || target.is_some(), "unexpected listing line {line:?}");
            Listed {
                mode: w[0].clone(),
                nlink: w[1].parse().unwrap(),
                owner: w[2].clone(),
                group: w[3].clone(),
                size: w[4].clone(),
                date: w[5..8].join(" "),
                name: w[8].clone(),
                target,
            }
        })
        .collect()
}

/// (name, mode, nlink, size, target) of the initrd of `spec`, in archive order.
fn expected(spec: &InitrdSpec) -> Vec<(String, &'static str, u32, String, Option<&'static str>)> {
    let dir = |name: &str, mode, nlink| (name.to_owned(), mode, nlink, "0".to_owned(), None);
    let file = |name: &str, mode, len: usize| (name.to_owned(), mode, 1, len.to_string(), None);
    let mut v = vec![
        dir(".", "drwxr-xr-x", 10),
        dir("bin", "drwxr-xr-x", 2),
        file("bin/busybox", "-rwxr-xr-x", spec.busybox.len()),
    ];
    for applet in APPLETS {
        v.push((format!("bin/{applet}"), "lrwxrwxrwx", 1, "7".to_owned(), Some("busybox")));
    }
    v.extend([
        dir("capsem", "drwxr-xr-x", 3),
        dir("capsem/bin", "drwxr-xr-x", 2),
        file("capsem/bin/aa", "-r-xr-xr-x", spec.guest_binaries[1].1.len()),
        file("capsem/bin/capsem-agent", "-r-xr-xr-x", spec.guest_binaries[0].1.len()),
        dir("dev", "drwxr-xr-x", 2),
        ("dev/console".to_owned(), "crw-------", 1, "5,1".to_owned(), None),
        ("dev/null".to_owned(), "crw-rw-rw-", 1, "1,3".to_owned(), None),
        file("init", "-rwxr-xr-x", spec.init.len()),
        dir("newroot", "drwxr-xr-x", 2),
        dir("proc", "dr-xr-xr-x", 2),
        dir("run", "drwxr-xr-x", 3),
        dir("run/capsem", "drwxr-xr-x", 4),
        dir("run/capsem/rootfs", "drwxr-xr-x", 2),
        dir("run/capsem/rw", "drwxr-xr-x", 2),
        dir("sys", "dr-xr-xr-x", 2),
        dir("tmp", "drwxrwxrwt", 2),
    ]);
    v
}

#[test]
fn cpio_lists_every_entry_in_order_owned_by_root_at_source_date_epoch() {
    let spec = spec(SDE);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd.img");
    let report = write_initrd(&spec, &out).unwrap();
    let image = std::fs::read(&out).unwrap();
    assert_eq!(&image[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let archive = unzstd(&image);
    assert_eq!(report.uncompressed_size, archive.len() as u64);
    assert_eq!(report.compressed_size, image.len() as u64);

    let date = listing_date(SDE);
    let expected = expected(&spec);
    let listed = list(&archive, false);
    let got: Vec<_> = listed
        .iter()
        .map(|l| (l.name.as_str(), l.mode.as_str(), l.nlink, l.size.as_str(), l.target.as_deref()))
        .collect();
    let want: Vec<_> = expected.iter().map(|(n, m, l, s, t)| (n.as_str(), *m, *l, s.as_str(), *t)).collect();
    assert_eq!(got, want);
    assert_eq!(report.entries, listed.len());
    for l in &listed {
        assert_eq!((l.owner.as_str(), l.group.as_str(), l.date.as_str()), ("root", "root", date.as_str()), "{l:?}");
    }
    for l in list(&archive, true) {
        assert_eq!((l.owner.as_str(), l.group.as_str()), ("0", "0"), "{l:?}");
    }
}

/// Extracts `archive` with `cpio -idm` into a new directory.
fn extract(archive: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run("cpio", &["-idm", "--quiet", "--no-absolute-filenames"], archive, Some(dir.path()));
    dir
}

fn major_minor(rdev: u64) -> (u64, u64) {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff), (rdev & 0xff) | ((rdev >> 12) & !0xff))
}

#[test]
fn extraction_reproduces_every_file_and_busybox_runs() {
    let spec = spec(SDE);
    let (_, busybox_is_real) = busybox();
    let image = initrd_bytes(&spec).unwrap().bytes;
    let root = extract(&unzstd(&image));
    let root = root.path();

    let files: [(&str, &[u8], u32); 4] = [
        ("init", &spec.init, 0o755),
        ("bin/busybox", &spec.busybox, 0o755),
        ("capsem/bin/capsem-agent", &spec.guest_binaries[0].1, 0o555),
        ("capsem/bin/aa", &spec.guest_binaries[1].1, 0o555),
    ];
    for (path, bytes, mode) in files {
        let p = root.join(path);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{path}");
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file(), "{path}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
        assert_eq!(meta.mtime(), i64::from(SDE), "{path}");
        assert_eq!((meta.uid(), meta.gid(), meta.nlink()), (0, 0, 1), "{path}");
    }
    for applet in APPLETS {
        let p = root.join("bin").join(applet);
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink(), "{applet}");
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from("busybox"), "{applet}");
    }
    for (dev, mode, numbers) in [("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3))] {
        let meta = std::fs::symlink_metadata(root.join(dev)).unwrap();
        assert!(meta.file_type().is_char_device(), "{dev}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dev}");
        assert_eq!(major_minor(meta.rdev()), numbers, "{dev}");
    }
    for (dir, mode) in [("proc", 0o555), ("tmp", 0o1777), ("run/capsem/rootfs", 0o755), ("newroot", 0o755)] {
        let meta = std::fs::symlink_metadata(root.join(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
    }

    if busybox_is_real {
        // The binary survived, and applet links dispatch by name.
        let ok = run(root.join("bin/busybox").to_str().unwrap(), &["sh", "-c", "echo ok"], b"", None);
        assert_eq!(ok, b"ok\n");
        let ok = run(root.join("bin/sh").to_str().unwrap(), &["-c", "echo ok"], b"", None);
        assert_eq!(ok, b"ok\n");
        // The init script at least parses with the initrd's own shell.
        run(root.join("bin/sh").to_str().unwrap(), &["-n", root.join("init").to_str().unwrap()], b"", None);
    }
}

#[test]
fn applets_are_in_debian_busybox() {
    let (_, real) = busybox();
    if !real {
        eprintln!("no static /bin/busybox; applet list not checked");
        return;
    }
    let list = String::from_utf8(run("/bin/busybox", &["--list"], b"", None)).unwrap();
    let have: Vec<&str> = list.lines().collect();
    for applet in APPLETS {
        assert!(have.contains(applet), "busybox has no applet {applet}");
    }
}

#[test]
fn two_builds_give_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    let ra = write_initrd(&spec(SDE), &a).unwrap();
    let rb = write_initrd(&spec(SDE), &b).unwrap();
    assert_eq!(ra, rb);
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a, b);
    // zstd's own check of the frame (content checksum included).
    run("zstd", &["-t", "-q"], &a, None);
}

/// Byte ranges of the mtime fields of every header in a newc archive.
fn mtime_fields(archive: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut off = 0;
    loop {
        assert_eq!(&archive[off..off + 6], b"070701", "header at {off}");
        let field = |i: usize| {
            let hex = std::str::from_utf8(&archive[off + 6 + 8 * i..off + 14 + 8 * i]).unwrap();
            usize::from_str_radix(hex, 16).unwrap()
        };
        let (size, namesize) = (field(6), field(11));
        let name = &archive[off + 110..off + 110 + namesize - 1];
        if name == b"TRAILER!!!" {
            return ranges;
        }
        ranges.push(off + 6 + 8 * 5..off + 6 + 8 * 6);
        off = ((off + 110 + namesize).next_multiple_of(4) + size).next_multiple_of(4);
    }
}

#[test]
fn source_date_epoch_changes_only_the_mtimes() {
    let (a, entries) = cpio_bytes(&spec(SDE)).unwrap();
    let (b, _) = cpio_bytes(&spec(SDE2)).unwrap();
    assert_eq!(a.len(), b.len());
    let fields = mtime_fields(&a);
    assert_eq!(fields, mtime_fields(&b));
    assert_eq!(fields.len(), entries);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x != y {
            assert!(fields.iter().any(|f| f.contains(&i)), "byte {i} differs outside an mtime field");
        }
    }
    for f in &fields {
        assert_eq!(&a[f.clone()], format!("{SDE:08X}").as_bytes());
        assert_eq!(&b[f.clone()], format!("{SDE2:08X}").as_bytes());
    }
    let date = listing_date(SDE2);
    assert!(list(&b, false).iter().all(|l| l.date == date));
    // The compressed images differ and hold exactly these archives.
    let (ia, ib) = (initrd_bytes(&spec(SDE)).unwrap().bytes, initrd_bytes(&spec(SDE2)).unwrap().bytes);
    assert_ne!(ia, ib);
    assert_eq!((unzstd(&ia), unzstd(&ib)), (a, b));
}

/// Entries whose names and contents hit every 4-byte alignment case: names of 1–8 bytes at the
/// root and of 4–11 bytes in `sN/`, file sizes 0–4 (and 5–8), plus every entry kind and high
/// mode bits.
fn padding_entries(data: &[Vec<u8>]) -> Vec<Entry<'_>> {
    let mut entries = vec![Entry::dir(".", 0o755), Entry::dir("tmp", 0o1777), Entry::dir("d", 0o750)];
    for n in 1..=8usize {
        entries.push(Entry::file(format!("{}", char::from(b'a' + n as u8)).repeat(n), 0o644, &data[n % 5]));
    }
    for (size, bytes) in data.iter().enumerate() {
        entries.push(Entry::dir(format!("s{size}"), 0o755));
        for n in 1..=8 {
            entries.push(Entry::file(format!("s{size}/{}", "x".repeat(n)), 0o600, bytes));
        }
    }
    entries.extend([
        Entry::file("d/setuid", 0o4755, &data[3]),
        Entry::symlink("d/link", "../s1/x"),
        Entry::symlink("d/l2", "ab"),
        Entry::char_device("d/console", 0o600, 5, 1),
        Entry::char_device("d/big", 0o620, 136, 1025),
        Entry::dir("d/e", 0o700),
        Entry::dir("d/e/f", 0o755),
    ]);
    entries
}

fn padding_data() -> Vec<Vec<u8>> {
    (0..9u8).map(|n| (0..n).map(|i| b'0' + i).collect()).collect()
}

#[test]
fn gnu_cpio_writes_the_same_bytes() {
    let data = padding_data();
    let entries = padding_entries(&data);
    let ours = cpio::archive(&entries, SDE).unwrap();

    // The same tree on disk, in the order our archive lists it.
    let tree = tempfile::tempdir().unwrap();
    let names: Vec<String> = list(&ours, false).into_iter().map(|l| l.name).collect();
    let by_path: BTreeMap<&str, &Entry<'_>> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    for name in &names {
        let e = by_path[name.as_str()];
        let p = tree.path().join(name);
        match &e.kind {
            cpio::Kind::Dir if name == "." => {}
            cpio::Kind::Dir => std::fs::create_dir(&p).unwrap(),
            cpio::Kind::File(d) => std::fs::write(&p, d).unwrap(),
            cpio::Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            cpio::Kind::CharDevice { major, minor } => {
                run("mknod", &[p.to_str().unwrap(), "c", &major.to_string(), &minor.to_string()], b"", None);
            }
        }
        if !matches!(e.kind, cpio::Kind::Symlink(_)) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }
    let mut touch = vec!["-h".to_owned(), "-d".to_owned(), format!("@{SDE}")];
    touch.extend(names.iter().cloned());
    run("touch", &touch.iter().map(String::as_str).collect::<Vec<_>>(), b"", Some(tree.path()));
    let nlink = std::fs::metadata(tree.path().join("d")).unwrap().nlink();
    if nlink != 3 {
        eprintln!("this filesystem counts directory links differently (d has {nlink}); not comparing");
        return;
    }

    let list_in = names.join("\n") + "\n";
    let gnu = run(
        "cpio",
        &["-o", "--quiet", "-H", "newc", "--reproducible", "-R", "0:0"],
        list_in.as_bytes(),
        Some(tree.path()),
    );
    if let Some(at) = ours.iter().zip(&gnu).position(|(a, b)| a != b) {
        let show =
            |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(60)..(at + 60).min(b.len())]).replace('\0', "~");
        panic!("first difference at byte {at}\nours: {}\ngnu:  {}", show(&ours), show(&gnu));
    }
    assert_eq!(ours.len(), gnu.len());
}

#[test]
fn padding_edge_cases_extract_byte_for_byte() {
    let data = padding_data();
    let entries = padding_entries(&data);
    let ours = cpio::archive(&entries, SDE).unwrap();
    assert_eq!(list(&ours, false).len(), entries.len());
    let root = extract(&ours);
    for e in &entries {
        let p = root.path().join(&e.path);
        let meta = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        match &e.kind {
            cpio::Kind::File(d) => {
                assert_eq!(&std::fs::read(&p).unwrap(), d, "{}", e.path);
                assert_eq!(meta.permissions().mode() & 0o7777, e.mode, "{}", e.path);
            }
            cpio::Kind::Symlink(t) => assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from(t)),
            cpio::Kind::CharDevice { major, minor } => {
                assert_eq!(major_minor(meta.rdev()), (u64::from(*major), u64::from(*minor)), "{}", e.path);
            }
            cpio::Kind::Dir => assert!(meta.is_dir()),
        }
    }
}

#[test]
fn bad_names_are_rejected_and_nothing_is_written() {
    for bad in ["a\0b", "../etc", "a/../b", "/abs", "a//b", ""] {
        let err = cpio::archive(&[Entry::dir("a", 0o755), Entry::file(bad, 0o644, b"")], SDE).unwrap_err();
        assert!(err.to_string().contains("invalid path"), "{bad:?}: {err}");
    }
    let err = cpio::archive(&[Entry::file("x", 0o644, b"1"), Entry::file("x", 0o644, b"2")], SDE).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd.img");
    for name in ["../agent", "a/b", "a\0b", ".."] {
        let mut spec = spec(SDE);
        spec.guest_binaries.push((name.to_owned(), fake_static(b"")));
        let err = write_initrd(&spec, &out).unwrap_err();
        assert!(matches!(err, InitrdError::GuestName { .. }), "{name:?}: {err}");
    }
    let mut spec = spec(SDE);
    spec.guest_binaries.push(("aa".to_owned(), fake_static(b"again")));
    assert!(matches!(write_initrd(&spec, &out), Err(InitrdError::DuplicateGuest { .. })));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing written");
}
