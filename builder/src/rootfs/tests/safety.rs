//! Errors and crash safety: nothing half-written, no temporary file left, stale ones cleaned.

use std::fs;
use std::io;
use std::path::Path;

use super::*;
use crate::model::Compression;
use crate::rootfs::{RootfsError, build};

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

fn fixture_tar() -> Vec<u8> {
    let specs = fixture();
    tar_of(&specs, &in_order(&specs), 0)
}

#[test]
fn a_failing_write_leaves_no_output_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.squashfs");
    let fail = |pos: u64| if pos >= 300_000 { Err(io::Error::other("disk full (injected)")) } else { Ok(()) };
    let err = build(fixture_tar().as_slice(), &out, &opts(2), Some(&fail)).unwrap_err();
    assert!(matches!(err, RootfsError::Squashfs { .. }), "{err}");
    assert!(err.to_string().contains("disk full (injected)"), "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}

#[test]
fn a_failing_rebuild_keeps_the_previous_image_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = build_fixture(dir.path());
    let before = b3(&out);
    let fail = |pos: u64| if pos >= 4096 { Err(io::Error::other("injected")) } else { Ok(()) };
    build(fixture_tar().as_slice(), &out, &opts(2), Some(&fail)).unwrap_err();
    assert_eq!(names(dir.path()), vec!["rootfs.squashfs"]);
    assert_eq!(b3(&out), before);
}

#[test]
fn a_panic_during_the_write_removes_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.squashfs");
    let boom = |pos: u64| -> io::Result<()> {
        assert!(pos < 100_000, "injected panic");
        Ok(())
    };
    let tar = fixture_tar();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(tar.as_slice(), &out, &opts(2), Some(&boom))));
    assert!(result.is_err(), "the hook must have panicked");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}

#[test]
fn stale_temporary_files_of_dead_processes_are_removed_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.squashfs");
    // pid 4294967294 is above any pid_max: that process is gone. Our own pid is alive.
    let dead = dir.path().join("rootfs.squashfs.tmp-4294967294-0");
    let alive = dir.path().join(format!("rootfs.squashfs.tmp-{}-999", std::process::id()));
    let unrelated = dir.path().join("other.squashfs.tmp-4294967294-0");
    for p in [&dead, &alive, &unrelated] {
        fs::write(p, b"half an image").unwrap();
    }
    let report = tar_to_squashfs(fixture_tar().as_slice(), &out, &opts(2)).unwrap();
    assert_eq!(report.stale_temp_files_removed, vec![dead.clone()]);
    assert!(!dead.exists() && alive.exists() && unrelated.exists() && out.exists());
}

#[test]
fn bad_input_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.squashfs");
    let run = |tar: &[u8], opts: &SquashOptions| tar_to_squashfs(tar, &out, opts).unwrap_err().to_string();

    let tar = fixture_tar();
    let truncated = &tar[..tar.len() / 2 + 100];
    assert!(run(truncated, &opts(1)).starts_with("reading tar entry #"), "{}", run(truncated, &opts(1)));

    let dup = tar_of(&[Spec::Fifo { path: "a", mode: 0o644 }, Spec::Fifo { path: "./a", mode: 0o600 }], &[0, 1], 0);
    assert_eq!(run(&dup, &opts(1)), "tar lists a twice (entries #0 and #1)");

    let dangling = tar_of(&[Spec::Hardlink { path: "a", target: "missing" }], &[0], 0);
    assert_eq!(run(&dangling, &opts(1)), "hard link /a points at /missing, which is not in the tar");

    let escape = tar_of(&[Spec::Hardlink { path: "a", target: "../etc/passwd" }], &[0], 0);
    assert_eq!(run(&escape, &opts(1)), "tar entry a: path contains `..`");

    let not_dir = tar_of(&[Spec::Fifo { path: "a", mode: 0o644 }, Spec::Fifo { path: "a/b", mode: 0o644 }], &[0, 1], 0);
    assert_eq!(run(&not_dir, &opts(1)), "tar entry /a/b: parent /a is not a directory");

    let options = |compressor, level, block_size| SquashOptions { compressor, level, block_size, ..opts(1) };
    let ok = fixture_tar();
    assert!(run(&ok, &options(Compression::Lzo, None, 131072)).contains("lzo is not supported"));
    assert!(run(&ok, &options(Compression::Lz4, Some(3), 131072)).contains("lz4 takes no compression level"));
    assert!(run(&ok, &options(Compression::Zstd, Some(23), 131072)).contains("zstd level 23 is outside 1..=22"));
    assert!(run(&ok, &options(Compression::Zstd, None, 100_000)).contains("block size 100000"));
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}
