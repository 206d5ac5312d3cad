//! Replays the `egress_input` fuzz target on stable: seeds for each of its three parsers, their
//! one-byte mutations, and every reproducer under `regressions/egress_input/`.
//!
//! To fuzz: `cargo fuzz run --sanitizer none -a egress_input -- -max_total_time=120 -max_len=1024`
//! from `builder/fuzz/`; put a minimized crash in `regressions/egress_input/<name>`.

use std::path::Path;

use capsem::egress::fuzzing::egress_input;

fn seeds() -> Vec<Vec<u8>> {
    let mut dns = vec![1u8, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    dns.extend_from_slice(b"\x03api\x07allowed\x00\x00\x01\x00\x01");
    let base: Vec<Vec<u8>> = vec![
        b"\x00CAPSEM-EGRESS/1 tls 93.184.216.34:443".to_vec(),
        b"\x00CAPSEM-EGRESS/1 http [2001:db8::1]:80".to_vec(),
        dns,
        b"\x02GET\nallowed.test".to_vec(),
        b"\x02DELETE\nA.Wild.Test.".to_vec(),
        b"\x02GET\n169.254.169.254".to_vec(),
    ];
    let mut seeds = base.clone();
    for s in &base {
        for i in 1..s.len() {
            let mut m = s.clone();
            m[i] ^= 0x41;
            seeds.push(m);
            seeds.push(s[..i].to_vec());
        }
    }
    seeds
}

#[test]
fn egress_input_seeds_and_regressions_replay() {
    for s in seeds() {
        egress_input(&s);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/egress_input");
    let Ok(rd) = std::fs::read_dir(&dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    entries.sort();
    for path in entries {
        eprintln!("replaying {}", path.display());
        egress_input(&std::fs::read(&path).unwrap());
    }
}
