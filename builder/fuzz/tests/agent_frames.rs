//! Replays the `agent_frames` fuzz target on stable, without cargo-fuzz: a few hand-made seeds
//! (valid frames of every shape, truncations, oversize headers, garbage) and every reproducer
//! under `regressions/agent_frames/` (as `src/lib.rs` does for `load_validate`).
//!
//! To fuzz: `cargo fuzz run --sanitizer none -a agent_frames -- -max_total_time=120 -max_len=4096`
//! from `builder/fuzz/`; put a minimized crash in `regressions/agent_frames/<name>`.

use std::collections::BTreeMap;
use std::path::Path;

use capsem_proto::frame::encode;
use capsem_proto::fuzzing::agent_frames;
use capsem_proto::{BootFile, ExitStatus, GuestMsg, HostMsg, Ready, Stream, WinSize};

fn seeds() -> Vec<Vec<u8>> {
    let mut valid = Vec::new();
    let host = [
        HostMsg::Configure {
            id: 1,
            env: BTreeMap::from([("K".into(), "V".into())]),
            files: vec![BootFile { path: "/etc/x".into(), mode: 0o644, content: b"x".to_vec(), append: false }],
        },
        HostMsg::Exec {
            id: 2,
            argv: vec!["sh".into()],
            env: BTreeMap::new(),
            cwd: None,
            stdin: true,
            pty: Some(WinSize { rows: 24, cols: 80 }),
            timeout_ms: Some(1),
        },
        HostMsg::Stdin { id: 2, data: b"in".to_vec() },
        HostMsg::Signal { id: 2, signal: 9 },
        HostMsg::WriteFile { id: 3, path: "/f".into(), mode: 0o600 },
        HostMsg::FileEnd { id: 3 },
    ];
    for m in &host {
        valid.extend(encode(m).unwrap());
    }
    let guest = [
        GuestMsg::Ready(Ready {
            protocol: 1,
            version: "v".into(),
            kernel_release: "k".into(),
            uptime_ms: 1,
            init_started_ms: Some(0),
        }),
        GuestMsg::Output { id: 2, stream: Stream::Stderr, data: b"out".to_vec() },
        GuestMsg::Exited { id: 2, status: ExitStatus::Signal(9) },
        GuestMsg::FileEnd { id: 4, size: 3 },
        GuestMsg::Error { id: 5, message: "exec /nope: No such file or directory".into() },
    ];
    for m in &guest {
        valid.extend(encode(m).unwrap());
    }
    let mut seeds = vec![valid.clone(), valid[..valid.len() / 2].to_vec(), vec![], vec![0xff; 4], vec![0, 0, 0, 0]];
    seeds.push([&u32::MAX.to_be_bytes()[..], b"xyz"].concat());
    seeds.push([&1_048_577u32.to_be_bytes()[..], &[0u8; 16][..]].concat());
    for i in 0..valid.len().min(64) {
        let mut flipped = valid.clone();
        flipped[i] ^= 0x80;
        seeds.push(flipped);
    }
    seeds
}

#[test]
fn agent_frames_seeds_and_regressions_replay() {
    for s in seeds() {
        agent_frames(&s);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/agent_frames");
    let Ok(rd) = std::fs::read_dir(&dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    entries.sort();
    for path in entries {
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        eprintln!("replaying {}", path.display());
        agent_frames(&std::fs::read(&path).unwrap());
    }
}
