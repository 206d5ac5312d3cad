//! How a serve loop ends, and the real binary in `--stdio` mode.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsem_agent::{AgentError, ServeEnd, ServeOptions, serve};
use capsem_proto::{Client, ClientError, ExecRequest, ExitStatus};
use common::{run, start, start_with};

#[test]
fn shutdown_ends_the_serve_loop() {
    let h = start();
    assert_eq!(h.shutdown().unwrap(), ServeEnd::Shutdown);
}

#[test]
fn host_close_ends_the_loop_and_kills_running_processes() {
    let h = start();
    let p = h.client.exec(ExecRequest::new(["sleep", "30"])).unwrap();
    let pid = p.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(h.close().unwrap(), ServeEnd::HostClosed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "sleep {pid} survived the end of the serve loop");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(p);
}

#[test]
fn garbage_from_the_host_is_an_error_not_a_panic() {
    let (mut host, guest) = UnixStream::pair().unwrap();
    let guest_r = guest.try_clone().unwrap();
    let agent = std::thread::spawn(move || serve(guest_r, guest, ServeOptions::default()));
    host.write_all(&[0, 0, 0, 2, 0xff, 0xff]).unwrap();
    assert!(matches!(agent.join().unwrap(), Err(AgentError::Receive(_))));
    let (mut host, guest) = UnixStream::pair().unwrap();
    let guest_r = guest.try_clone().unwrap();
    let agent = std::thread::spawn(move || serve(guest_r, guest, ServeOptions::default()));
    host.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(agent.join().unwrap(), Err(AgentError::Receive(_))));
}

#[test]
fn ready_reports_the_init_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("init-uptime");
    std::fs::write(&stamp, "0.42 0.10\n").unwrap();
    let h = start_with(ServeOptions { started_uptime_ms: Some(900), init_uptime_path: stamp, ..Default::default() });
    assert_eq!((h.ready.uptime_ms, h.ready.init_started_ms), (900, Some(420)));
}

#[test]
fn binary_serves_on_stdio() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capsem-agent"))
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let (client, ready) = Client::connect(Box::new(stdout), Box::new(stdin), Duration::from_secs(10)).unwrap();
    assert_eq!(ready.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        run(&client, ExecRequest::new(["echo", "via stdio"])),
        (ExitStatus::Code(0), b"via stdio\n".to_vec(), vec![])
    );
    client.shutdown().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(matches!(client.exec(ExecRequest::new(["true"])), Err(ClientError::Closed { .. })));
}

#[test]
fn binary_reports_bad_arguments_on_one_fatal_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_capsem-agent")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("capsem-agent: FATAL: bad arguments"), "{err:?}");
}
