//! PTY mode through the real agent and client.

mod common;

use std::time::Duration;

use capsem_proto::{ExecRequest, ExitStatus, ProcEvent, Process, WinSize};
use common::{run, sh, start};

fn pty(req: ExecRequest, rows: u16, cols: u16) -> ExecRequest {
    ExecRequest { pty: Some(WinSize { rows, cols }), ..req }
}

fn drain(p: &mut Process) -> (ExitStatus, String) {
    let mut out = Vec::new();
    loop {
        match p.recv().unwrap() {
            ProcEvent::Stdout(d) => out.extend(d),
            ProcEvent::Stderr(d) => panic!("stderr in PTY mode: {d:?}"),
            ProcEvent::Exit(s) => return (s, String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

#[test]
fn tty_is_a_pts_and_stderr_goes_to_it() {
    let h = start();
    let (status, out, err) = run(&h.client, pty(sh("tty; echo to-stderr >&2"), 24, 80));
    assert_eq!(status, ExitStatus::Code(0));
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("to-stderr\r\n"), "{out:?}");
    assert!(err.is_empty());
}

#[test]
fn initial_size_and_resize_are_seen_by_stty() {
    let h = start();
    let (_, out, _) = run(&h.client, pty(ExecRequest::new(["stty", "size"]), 24, 80));
    assert_eq!(out, b"24 80\r\n");

    let mut p = h.client.exec(pty(sh("read x; stty size"), 24, 80)).unwrap();
    p.resize(WinSize { rows: 33, cols: 111 }).unwrap();
    // The resize is applied before this input reaches the shell (same ordered stream).
    p.write_stdin(b"go\n").unwrap();
    let (status, out) = drain(&mut p);
    assert_eq!(status, ExitStatus::Code(0));
    assert!(out.ends_with("33 111\r\n"), "{out:?}");
}

#[test]
fn term_defaults_and_job_control_signals() {
    let h = start();
    let (_, out, _) = run(&h.client, pty(sh("echo $TERM"), 24, 80));
    assert_eq!(out, b"xterm-256color\r\n");
    let req = ExecRequest { env: [("TERM".to_string(), "vt100".to_string())].into(), ..sh("echo $TERM") };
    assert_eq!(run(&h.client, pty(req, 24, 80)).1, b"vt100\r\n");

    // The process is the session leader: a signal to its group ends it.
    let mut p = h.client.exec(pty(ExecRequest::new(["sleep", "30"]), 24, 80)).unwrap();
    p.signal(9).unwrap();
    assert_eq!(drain(&mut p).0, ExitStatus::Signal(9));
}

#[test]
fn close_stdin_sends_eof_to_a_pty_reader() {
    let h = start();
    let mut p = h.client.exec(pty(ExecRequest::new(["cat"]), 24, 80)).unwrap();
    p.write_stdin(b"abc\n").unwrap();
    p.close_stdin().unwrap();
    let (status, out) = drain(&mut p);
    assert_eq!(status, ExitStatus::Code(0));
    // Echo of the input plus cat's copy of it.
    assert_eq!(out.matches("abc").count(), 2, "{out:?}");
}

#[test]
fn pty_timeout() {
    let h = start();
    let req =
        ExecRequest { timeout: Some(Duration::from_millis(200)), ..pty(ExecRequest::new(["sleep", "30"]), 24, 80) };
    assert_eq!(run(&h.client, req).0, ExitStatus::TimedOut);
}
