//! `ReapMode::All` (what the agent uses as PID 1), tested with this test process as a child
//! subreaper so that orphans are re-parented to it. Its own test binary: in this mode the
//! reaper reaps every child of the process, so nothing else here may spawn children.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use capsem_agent::{ReapMode, ServeOptions};
use capsem_proto::{ClientError, ExecRequest, ExitStatus, ProcEvent};
use common::{run, sh, start_with};

fn gone_or_zombie(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

#[test]
fn reap_all_keeps_own_statuses_and_reaps_orphans() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("PR_SET_CHILD_SUBREAPER");
    let h = start_with(ServeOptions { reap: ReapMode::All, ..ServeOptions::default() });

    assert_eq!(run(&h.client, sh("echo out; exit 7")), (ExitStatus::Code(7), b"out\n".to_vec(), vec![]));
    let mut p = h.client.exec(ExecRequest::new(["sleep", "30"])).unwrap();
    p.signal(9).unwrap();
    assert_eq!(p.recv().unwrap(), ProcEvent::Exit(ExitStatus::Signal(9)));

    // exec fails in the child: std's spawn waits for that child itself; the reaper must not
    // steal it (std would panic) and the error must reach the host.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad-interpreter");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..5 {
        match h.client.exec(ExecRequest::new([script.to_str().unwrap()])) {
            Err(ClientError::Guest { message }) => {
                assert_eq!(message, format!("exec {}: No such file or directory", script.display()))
            }
            other => panic!("{other:?}"),
        }
    }

    // Concurrent execs all get their own status.
    let client = &h.client;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..20).map(|i| s.spawn(move || (i, run(client, sh(&format!("exit {i}"))).0))).collect();
        for hd in hs {
            let (i, status) = hd.join().unwrap();
            assert_eq!(status, ExitStatus::Code(i));
        }
    });

    // An orphan (its parent exits first) is re-parented to us and must be reaped.
    let (status, out, _) = run(&h.client, sh("sleep 0.3 >/dev/null 2>&1 & echo $!"));
    assert_eq!(status, ExitStatus::Code(0));
    let orphan: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(state) = gone_or_zombie(orphan) {
        assert!(Instant::now() < deadline, "orphan {orphan} never reaped (state {state})");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(h);
}
