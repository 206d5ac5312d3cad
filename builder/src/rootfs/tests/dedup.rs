//! The deduplication plan: when backhand's own dedup may run, and what it shares.

use super::*;
use crate::rootfs::squashfs::{fragment_blocks, plan_dedup};

fn xxh64(d: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(d, 0)
}

#[test]
fn identical_files_repeat_and_backhand_may_deduplicate() {
    let a = random(1, BS + 5);
    let b = random(2, BS + 5);
    let small = b"tiny".to_vec();
    let files: Vec<&[u8]> = vec![&a, &small, &b, &a, &small, &[]];
    let plan = plan_dedup(&files, BS, xxh64);
    assert_eq!(plan.repeat, vec![false, false, false, true, true, false]);
    assert!(plan.backhand_dedup);
    assert_eq!(plan.collision, None);
}

#[test]
fn a_key_collision_between_different_files_turns_backhand_dedup_off() {
    // Same length, different bytes, and a key function that collides on purpose (standing in for
    // a crafted xxh64 collision): backhand would merge them, so its dedup must be off.
    let a = random(1, BS * 2);
    let mut b = a.clone();
    b[BS + 7] ^= 1;
    let files: Vec<&[u8]> = vec![&a, &b];
    let plan = plan_dedup(&files, BS, |_| 42);
    assert_eq!(plan.repeat, vec![false, false]);
    assert!(!plan.backhand_dedup);
    assert_eq!(plan.collision, Some((0, 1)));
    // Different lengths never collide: backhand's key includes the length.
    let c = random(3, BS * 2 + 1);
    let files: Vec<&[u8]> = vec![&a, &c];
    assert!(plan_dedup(&files, BS, |_| 42).backhand_dedup);
    // Files below one block are never backhand's candidates.
    let (s1, s2) = (random(4, 100), random(5, 100));
    let files: Vec<&[u8]> = vec![&s1, &s2];
    assert!(plan_dedup(&files, BS, |_| 42).backhand_dedup);
    // Identical files under a colliding key are what dedup is for.
    let a2 = a.clone();
    let files: Vec<&[u8]> = vec![&a, &a2];
    let plan = plan_dedup(&files, BS, |_| 42);
    assert!(plan.backhand_dedup);
    assert_eq!(plan.repeat, vec![false, true]);
}

#[test]
fn fragment_prediction_mirrors_backhands_packing() {
    let big = random(1, 2 * BS + 3);
    let f1 = random(2, BS - 10);
    let f2 = random(3, 20); // does not fit after f1: f1's fragment block is flushed first
    let f3 = random(4, 5);
    let files: Vec<&[u8]> = vec![&f1, &big, &[], &f2, &big, &f3];
    let blocks = fragment_blocks(&files, BS);
    assert_eq!(blocks.iter().map(Vec::len).collect::<Vec<_>>(), vec![BS - 10, 25]);
    assert_eq!(blocks[0], f1);
    assert_eq!(blocks[1], [f2, f3].concat());
    // The last fragment block is predicted even when empty, as backhand always compresses it.
    let none: Vec<&[u8]> = vec![&big];
    assert_eq!(fragment_blocks(&none, BS), vec![Vec::<u8>::new()]);
}

#[test]
fn sharing_makes_the_image_smaller_than_distinct_content() {
    let dir = tempfile::tempdir().unwrap();
    let a = random(1, 600 * 1024);
    let mk = |second: Vec<u8>, name: &str| {
        let specs = vec![
            Spec::File { path: "a.bin".into(), data: a.clone(), mode: 0o644, uid: 0, gid: 0, pax: vec![] },
            Spec::File { path: "b.bin".into(), data: second, mode: 0o644, uid: 0, gid: 0, pax: vec![] },
        ];
        let out = dir.path().join(name);
        let report = tar_to_squashfs(tar_of(&specs, &[0, 1], 0).as_slice(), &out, &opts(2)).unwrap();
        (report, std::fs::metadata(&out).unwrap().len())
    };
    let (shared, shared_len) = mk(a.clone(), "shared");
    let (distinct, distinct_len) = mk(random(2, 600 * 1024), "distinct");
    assert_eq!((shared.dedup.files, shared.dedup.bytes_saved), (1, 600 * 1024));
    assert_eq!(distinct.dedup.files, 0);
    assert!(shared_len + 500 * 1024 < distinct_len, "{shared_len} vs {distinct_len}");
}
