//! Exec through the real agent serve loop and the real client over a socketpair.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capsem_proto::{BootFile, ClientError, ExecRequest, ExitStatus, ProcEvent};
use common::{random_bytes, run, sh, start};

#[test]
fn echo_to_stdout() {
    let h = start();
    let (status, out, err) = run(&h.client, ExecRequest::new(["echo", "hello", "world"]));
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out, b"hello world\n");
    assert!(err.is_empty());
}

#[test]
fn stdout_and_stderr_stay_separate_and_exit_code_is_reported() {
    let h = start();
    let (status, out, err) = run(&h.client, sh("echo out; echo err >&2; exit 7"));
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
}

#[test]
fn stdin_is_piped_byte_for_byte() {
    let h = start();
    let input = random_bytes(1024 * 1024, 7);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = h
        .client
        .run(ExecRequest::new(["cat"]), Some(Box::new(std::io::Cursor::new(input.clone()))), &mut out, &mut err)
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.len(), input.len());
    assert!(out == input, "cat output differs from its input");
    assert!(err.is_empty());
}

#[test]
fn stdin_through_the_process_api_and_close() {
    let h = start();
    let mut p = h.client.exec(ExecRequest { stdin: true, ..sh("tr a-z A-Z") }).unwrap();
    p.write_stdin(b"shout\n").unwrap();
    p.close_stdin().unwrap();
    let mut out = Vec::new();
    loop {
        match p.recv().unwrap() {
            ProcEvent::Stdout(d) => out.extend(d),
            ProcEvent::Stderr(d) => panic!("stderr: {}", String::from_utf8_lossy(&d)),
            ProcEvent::Exit(s) => {
                assert_eq!(s, ExitStatus::Code(0));
                break;
            }
        }
    }
    assert_eq!(out, b"SHOUT\n");
    assert!(matches!(p.recv(), Err(ClientError::Finished { .. })));
}

#[test]
fn without_stdin_the_process_reads_dev_null() {
    let h = start();
    let (status, out, _) = run(&h.client, ExecRequest::new(["cat"]));
    assert_eq!((status, out), (ExitStatus::Code(0), Vec::new()));
    let p = h.client.exec(ExecRequest::new(["cat"])).unwrap();
    assert!(matches!(p.write_stdin(b"x"), Err(ClientError::InvalidRequest(_))));
}

#[test]
fn timeout_kills_the_group_and_reports_timed_out() {
    let h = start();
    let t0 = Instant::now();
    // The shell's child `sleep` is in the same group and must die too (else stdout stays open).
    let req = ExecRequest { timeout: Some(Duration::from_millis(200)), ..sh("sleep 30; echo never") };
    let (status, out, _) = run(&h.client, req);
    assert_eq!(status, ExitStatus::TimedOut);
    assert!(out.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
}

#[test]
fn signal_reaches_the_process() {
    let h = start();
    let mut p = h.client.exec(ExecRequest::new(["sleep", "30"])).unwrap();
    assert!(p.pid() > 0);
    p.signal(9).unwrap();
    assert_eq!(p.recv().unwrap(), ProcEvent::Exit(ExitStatus::Signal(9)));
    // A process killing itself by a signal is reported the same way.
    let (status, _, _) = run(&h.client, sh("kill -TERM $$"));
    assert_eq!(status, ExitStatus::Signal(15));
}

#[test]
fn twenty_concurrent_execs() {
    let h = start();
    let client = &h.client;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                s.spawn(move || {
                    let (status, out, err) =
                        run(client, sh(&format!("echo start {i}; sleep 0.2; echo end {i} >&2; exit {i}")));
                    (i, status, out, err)
                })
            })
            .collect();
        for hd in handles {
            let (i, status, out, err) = hd.join().unwrap();
            assert_eq!(status, ExitStatus::Code(i));
            assert_eq!(out, format!("start {i}\n").into_bytes());
            assert_eq!(err, format!("end {i}\n").into_bytes());
        }
    });
}

#[test]
fn exec_errors_name_the_program() {
    let h = start();
    match h.client.exec(ExecRequest::new(["/nope"])) {
        Err(ClientError::Guest { message }) => assert_eq!(message, "exec /nope: No such file or directory"),
        other => panic!("{other:?}"),
    }
    match h.client.exec(ExecRequest::new(["no-such-command-xyz"])) {
        Err(ClientError::Guest { message }) => {
            assert!(message.starts_with("exec no-such-command-xyz: No such file or directory"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match h.client.exec(ExecRequest { cwd: Some("/nonexistent-dir".into()), ..ExecRequest::new(["true"]) }) {
        Err(ClientError::Guest { message }) => {
            assert_eq!(message, "exec true: cwd /nonexistent-dir: No such file or directory")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(h.client.exec(ExecRequest::default()), Err(ClientError::InvalidRequest(_))));
    // The connection is still fine.
    assert_eq!(run(&h.client, ExecRequest::new(["true"])).0, ExitStatus::Code(0));
}

#[test]
fn environment_layers_and_cwd() {
    let h = start();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("etc/capsem/boot.conf");
    h.client
        .configure(
            [("FROM_CONFIGURE".into(), "c".into()), ("BOTH".into(), "configure".into())].into(),
            vec![BootFile {
                path: boot.to_str().unwrap().into(),
                mode: 0o600,
                content: b"k=v\n".to_vec(),
                append: false,
            }],
        )
        .unwrap();
    assert_eq!(std::fs::read(&boot).unwrap(), b"k=v\n");
    let req = ExecRequest {
        env: [("BOTH".to_string(), "request".to_string())].into(),
        cwd: Some(dir.path().to_str().unwrap().into()),
        ..sh("echo $HOME $PATH $FROM_CONFIGURE $BOTH ${TERM:-noterm}; pwd")
    };
    let (status, out, _) = run(&h.client, req);
    assert_eq!(status, ExitStatus::Code(0));
    let expected = format!(
        "/root /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin c request noterm\n{}\n",
        dir.path().display()
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // A later Configure replaces the env.
    h.client.configure(BTreeMap::new(), vec![]).unwrap();
    let (_, out, _) = run(&h.client, sh("echo ${FROM_CONFIGURE:-gone}"));
    assert_eq!(out, b"gone\n");
}

#[test]
fn configure_error_names_the_path() {
    let h = start();
    let err = h
        .client
        .configure(
            BTreeMap::new(),
            vec![BootFile { path: "/proc/capsem-nope/x".into(), mode: 0o644, content: vec![], append: false }],
        )
        .unwrap_err();
    match err {
        ClientError::Guest { message } => assert!(message.starts_with("write /proc/capsem-nope/x: "), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn output_is_streamed_before_exit() {
    let h = start();
    let mut p = h.client.exec(ExecRequest { stdin: true, ..sh("echo first; read x; echo second") }).unwrap();
    // "first" must arrive while the process still waits for its input.
    assert_eq!(p.recv().unwrap(), ProcEvent::Stdout(b"first\n".to_vec()));
    p.write_stdin(b"go\n").unwrap();
    assert_eq!(p.recv().unwrap(), ProcEvent::Stdout(b"second\n".to_vec()));
    assert_eq!(p.recv().unwrap(), ProcEvent::Exit(ExitStatus::Code(0)));
}

#[test]
fn large_output_arrives_complete() {
    let h = start();
    let (status, out, _) = run(&h.client, sh("head -c 3000000 /dev/zero"));
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.len(), 3_000_000);
}

#[test]
fn background_process_holding_stdout_does_not_delay_exit_forever() {
    let h = start();
    let t0 = Instant::now();
    let (status, out, _) = run(&h.client, sh("sleep 30 & echo parent"));
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out, b"parent\n");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn ready_describes_the_guest() {
    let h = start();
    assert_eq!(h.ready.protocol, capsem_proto::PROTOCOL_VERSION);
    assert_eq!(h.ready.version, env!("CARGO_PKG_VERSION"));
    assert!(!h.ready.kernel_release.is_empty());
    assert!(h.ready.uptime_ms > 0);
}
