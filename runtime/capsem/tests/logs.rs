//! The session log end to end, without a VM: events written from many threads land, read back
//! exactly, render as `capsem logs` prints them (text, JSON, `--list`), sessions resolve by
//! prefix / latest, files are private, and broken logs are reported by path.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capsem::egress::{DnsRecord, EventSink, RequestRecord};
use capsem::sessionlog::{
    Event, ExecRecord, LogError, SessionLog, SessionMeta, list_sessions, logs_command, parse_time, read_session,
    render_json, render_list, render_text, resolve_session,
};
use expect_test::expect;

fn at(s: &str) -> SystemTime {
    parse_time(s).unwrap_or_else(|| panic!("bad time {s}"))
}

fn meta(image: &str, command: &[&str]) -> SessionMeta {
    SessionMeta {
        image: image.into(),
        version: "1.2.0".into(),
        assets_dir: "/var/lib/capsem/assets/python-1.2.0".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        hypervisor: "qemu".into(),
    }
}

fn request(time: &str, method: &str, host: &str, path: &str, allowed: bool, rule: &str, status: u16) -> RequestRecord {
    RequestRecord {
        time: at(time),
        method: method.into(),
        host: host.into(),
        path: path.into(),
        allowed,
        rule: rule.into(),
        status,
        bytes_in: if method == "POST" { 512 } else { 0 },
        bytes_out: if allowed { 4096 } else { 0 },
    }
}

fn dns(time: &str, name: &str, answered: bool) -> DnsRecord {
    DnsRecord { time: at(time), name: name.into(), qtype: "A".into(), answered }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// A finished session with one of each kind of event, written out of time order.
fn sample(dir: &Path) -> (String, Vec<Event>) {
    let log =
        SessionLog::create_at(dir, meta("python", &["python3", "-c", "print('hi')"]), at("2025-01-02T03:04:05.000Z"))
            .unwrap();
    let exec = ExecRecord {
        time: at("2025-01-02T03:04:05.100Z"),
        argv: vec!["python3".into(), "-c".into(), "print('hi')".into()],
        exit_status: "0".into(),
        duration: Duration::from_millis(2_345),
    };
    let events = vec![
        Event::Exec(exec.clone()),
        Event::Dns(dns("2025-01-02T03:04:05.200Z", "pypi.org", true)),
        Event::Request(request(
            "2025-01-02T03:04:05.250Z",
            "GET",
            "pypi.org",
            "/simple/requests/",
            true,
            "service pypi",
            200,
        )),
        Event::Dns(dns("2025-01-02T03:04:06.000Z", "evil.example.com", false)),
        Event::Request(request(
            "2025-01-02T03:04:06.001Z",
            "POST",
            "evil.example.com",
            "/upload",
            false,
            "custom_block *.example.com",
            403,
        )),
    ];
    // Out of order on purpose: the reader sorts by time.
    log.request(request(
        "2025-01-02T03:04:06.001Z",
        "POST",
        "evil.example.com",
        "/upload",
        false,
        "custom_block *.example.com",
        403,
    ));
    log.dns(dns("2025-01-02T03:04:05.200Z", "pypi.org", true));
    log.exec(exec);
    log.request(request("2025-01-02T03:04:05.250Z", "GET", "pypi.org", "/simple/requests/", true, "service pypi", 200));
    log.dns(dns("2025-01-02T03:04:06.000Z", "evil.example.com", false));
    log.finish_at(at("2025-01-02T03:04:07.500Z"), "0").unwrap();
    (log.id().to_owned(), events)
}

fn redact(text: &str, dir: &Path, id: &str) -> String {
    text.replace(&dir.display().to_string(), "<dir>").replace(id, "<id>")
}

#[test]
fn events_from_eight_threads_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SessionLog::create(dir.path(), meta("python", &[])).unwrap());
    let base = at("2025-01-02T03:00:00.000Z");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let sink: Arc<dyn EventSink> = log.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..300u64 {
                    let time = base + Duration::from_millis(n);
                    sink.request(RequestRecord {
                        time,
                        method: "GET".into(),
                        host: format!("t{t}.example"),
                        path: format!("/{n}"),
                        allowed: n % 3 != 0,
                        rule: "r".into(),
                        status: 200,
                        bytes_in: n,
                        bytes_out: t,
                    });
                    if n % 10 == 0 {
                        sink.dns(DnsRecord { time, name: format!("t{t}.example"), qtype: "A".into(), answered: true });
                    }
                }
                log.record_exec(&[format!("job{t}")], "0", Duration::from_millis(5));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.finish("0").unwrap();
    assert_eq!(log.dropped_events(), 0);

    let dump = read_session(dir.path(), None).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let (mut requests, mut dns, mut execs) = (0, 0, 0);
    for event in &dump.events {
        match event {
            Event::Request(r) => {
                requests += 1;
                assert!(seen.insert((r.host.clone(), r.path.clone())), "duplicate {r:?}");
                assert_eq!(format!("/{}", r.bytes_in), r.path);
            }
            Event::Dns(_) => dns += 1,
            Event::Exec(_) => execs += 1,
        }
    }
    assert_eq!((requests, dns, execs), (8 * 300, 8 * 30, 8));
    let summary = &list_sessions(dir.path()).unwrap()[0];
    assert_eq!((summary.requests, summary.denied), (2400, 8 * 100));
}

#[test]
fn events_racing_finish_are_written_or_counted_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SessionLog::create(dir.path(), meta("python", &[])).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..2_000 {
                    log.dns(DnsRecord {
                        time: SystemTime::now(),
                        name: format!("{t}-{n}"),
                        qtype: "A".into(),
                        answered: true,
                    });
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2));
    log.finish("0").unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let written = read_session(dir.path(), None).unwrap().events.len() as u64;
    assert_eq!(written + log.dropped_events(), 4 * 2_000, "written {written}");
}

#[test]
fn a_session_reads_back_exactly_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (id, events) = sample(dir.path());
    assert!(id.starts_with("20250102T030405Z-"), "{id}");
    let dump = read_session(dir.path(), Some(&id)).unwrap();
    assert_eq!(dump.events, events);
    let info = &dump.info;
    assert_eq!(info.id, id);
    assert_eq!(info.path, dir.path().join(format!("{id}.db")));
    assert_eq!(info.started, at("2025-01-02T03:04:05.000Z"));
    assert_eq!(info.ended, Some(at("2025-01-02T03:04:07.500Z")));
    assert_eq!(info.exit_status.as_deref(), Some("0"));
    assert_eq!((info.image.as_str(), info.version.as_str(), info.hypervisor.as_str()), ("python", "1.2.0", "qemu"));
    assert_eq!(info.assets, "/var/lib/capsem/assets/python-1.2.0");
    assert_eq!(info.command, ["python3", "-c", "print('hi')"]);
}

#[test]
fn text_output_has_a_header_and_one_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = sample(dir.path());
    let text = render_text(&read_session(dir.path(), None).unwrap());
    expect![[r#"
        session     <id>
        image       python 1.2.0
        command     python3 -c 'print('\''hi'\'')'
        hypervisor  qemu
        assets      /var/lib/capsem/assets/python-1.2.0
        started     2025-01-02T03:04:05.000Z
        ended       2025-01-02T03:04:07.500Z (2.500s)  exit=0
        log         <dir>/<id>.db
        events      2 requests (1 denied), 2 DNS, 1 execs

        03:04:05.100  EXEC   python3 -c 'print('\''hi'\'')'  exit=0  2345 ms
        03:04:05.200  DNS    pypi.org A  answered
        03:04:05.250  GET    pypi.org/simple/requests/  allowed  200  service pypi  0/4096 bytes
        03:04:06.000  DNS    evil.example.com A  unanswered
        03:04:06.001  POST   evil.example.com/upload  DENIED  403  custom_block *.example.com  512/0 bytes
    "#]]
    .assert_eq(&redact(&text, dir.path(), &id));
    assert_eq!(logs_command(dir.path(), Some(&id[..20]), false, false).unwrap(), text);
}

#[test]
fn json_output_has_stable_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = sample(dir.path());
    let json = logs_command(dir.path(), None, true, false).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        render_json(&read_session(dir.path(), None).unwrap())
    );
    expect![[r#"
        {
          "events": [
            {
              "argv": [
                "python3",
                "-c",
                "print('hi')"
              ],
              "duration_ms": 2345,
              "exit_status": "0",
              "kind": "exec",
              "time": "2025-01-02T03:04:05.100Z"
            },
            {
              "answered": true,
              "kind": "dns",
              "name": "pypi.org",
              "qtype": "A",
              "time": "2025-01-02T03:04:05.200Z"
            },
            {
              "allowed": true,
              "bytes_in": 0,
              "bytes_out": 4096,
              "host": "pypi.org",
              "kind": "request",
              "method": "GET",
              "path": "/simple/requests/",
              "rule": "service pypi",
              "status": 200,
              "time": "2025-01-02T03:04:05.250Z"
            },
            {
              "answered": false,
              "kind": "dns",
              "name": "evil.example.com",
              "qtype": "A",
              "time": "2025-01-02T03:04:06.000Z"
            },
            {
              "allowed": false,
              "bytes_in": 512,
              "bytes_out": 0,
              "host": "evil.example.com",
              "kind": "request",
              "method": "POST",
              "path": "/upload",
              "rule": "custom_block *.example.com",
              "status": 403,
              "time": "2025-01-02T03:04:06.001Z"
            }
          ],
          "session": {
            "assets": "/var/lib/capsem/assets/python-1.2.0",
            "command": [
              "python3",
              "-c",
              "print('hi')"
            ],
            "ended": "2025-01-02T03:04:07.500Z",
            "exit_status": "0",
            "hypervisor": "qemu",
            "id": "<id>",
            "image": "python",
            "path": "<dir>/<id>.db",
            "started": "2025-01-02T03:04:05.000Z",
            "version": "1.2.0"
          }
        }
    "#]]
    .assert_eq(&redact(&json, dir.path(), &id));
}

#[test]
fn list_shows_newest_first_with_request_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = sample(dir.path());
    let running = SessionLog::create_at(dir.path(), meta("node", &[]), at("2025-01-03T10:00:00.000Z")).unwrap();
    running.request(request("2025-01-03T10:00:01.000Z", "GET", "registry.npmjs.org", "/", true, "service npm", 200));
    running.flush().unwrap();
    let new = running.id().to_owned();

    let sessions = list_sessions(dir.path()).unwrap();
    assert_eq!(sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [new.as_str(), old.as_str()]);
    let text = render_list(&sessions).replace(&old, "20250102T030405Z-<old>").replace(&new, "20250103T100000Z-<new>");
    expect![[r#"
        SESSION                  STARTED               DURATION  EXIT      REQUESTS  DENIED  IMAGE / COMMAND
        20250103T100000Z-<new>  2025-01-03T10:00:00Z  -         -                1       0  node 1.2.0  -
        20250102T030405Z-<old>  2025-01-02T03:04:05Z  2.500s    0                2       1  python 1.2.0  python3 -c 'print('\''hi'\'')'
    "#]]
    .assert_eq(&text);
    assert_eq!(logs_command(dir.path(), None, false, true).unwrap(), render_list(&sessions));

    let json: serde_json::Value = serde_json::from_str(&logs_command(dir.path(), None, true, true).unwrap()).unwrap();
    assert_eq!(json[0]["id"], new.as_str());
    assert_eq!(json[0]["ended"], serde_json::Value::Null);
    assert_eq!((json[1]["requests"].as_u64(), json[1]["denied"].as_u64()), (Some(2), Some(1)));
    assert_eq!(json[1]["exit_status"], "0");
    drop(running);
}

#[test]
fn sessions_resolve_by_unique_prefix_or_latest() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(read_session(dir.path(), None), Err(LogError::NoSessions { .. })));
    assert!(list_sessions(&dir.path().join("missing")).unwrap().is_empty());

    let make = |t: &str| SessionLog::create_at(dir.path(), meta("python", &[]), at(t)).unwrap().id().to_owned();
    let a = make("2025-01-02T03:04:05.000Z");
    let b = make("2025-01-02T03:04:06.000Z");
    // Same second: "latest" goes by the millisecond start time, not by the random suffix.
    let c_late = make("2025-02-01T00:00:00.900Z");
    let c_early = make("2025-02-01T00:00:00.100Z");
    assert_eq!(resolve_session(dir.path(), None).unwrap(), c_late);
    assert_eq!(resolve_session(dir.path(), Some("latest")).unwrap(), c_late);
    assert_eq!(list_sessions(dir.path()).unwrap()[1].id, c_early);

    assert_eq!(resolve_session(dir.path(), Some("20250102T030405")).unwrap(), a);
    assert_eq!(resolve_session(dir.path(), Some(&b)).unwrap(), b);
    assert_eq!(read_session(dir.path(), Some("20250102T030406")).unwrap().info.id, b);

    let err = resolve_session(dir.path(), Some("20250102T0304")).unwrap_err();
    assert!(matches!(&err, LogError::AmbiguousSession { candidates, .. } if candidates == &[a.clone(), b.clone()]));
    let msg = err.to_string();
    assert!(msg.contains(&a) && msg.contains(&b) && msg.contains("\"20250102T0304\""), "{msg}");

    let err = resolve_session(dir.path(), Some("2026")).unwrap_err();
    assert!(matches!(err, LogError::UnknownSession { .. }));
    assert!(err.to_string().contains("\"2026\"") && err.to_string().contains(&dir.path().display().to_string()));

    // Files that are not session logs are not sessions.
    std::fs::write(dir.path().join("notes.db"), "x").unwrap();
    assert!(matches!(resolve_session(dir.path(), Some("notes")), Err(LogError::UnknownSession { .. })));
    assert!(matches!(logs_command(dir.path(), Some(&a), false, true), Err(LogError::ListWithSession { .. })));
}

#[test]
fn logs_are_private_files_in_a_private_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sessions");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = SessionLog::create(&dir, meta("python", &[])).unwrap();
    log.dns(dns("2025-01-02T03:04:05.200Z", "pypi.org", true));
    log.flush().unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(log.path()), 0o600);
    let wal = log.path().with_extension("db-wal");
    assert_eq!(mode(&wal), 0o600, "the WAL holds the events until checkpointed");
    // Readers can read a log that is still being written.
    assert_eq!(read_session(&dir, None).unwrap().events.len(), 1);
    log.finish("0").unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [log.path().file_name().unwrap()], "no temporary or WAL files remain");

    let nested = root.path().join("a/b/sessions");
    let log = SessionLog::create(&nested, meta("python", &[])).unwrap();
    assert_eq!((mode(&nested), mode(log.path())), (0o700, 0o600));
}

#[test]
fn finish_sets_ended_and_exit_status_and_an_unfinished_log_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::create_at(dir.path(), meta("python", &["false"]), at("2025-01-02T03:04:05.000Z")).unwrap();
    log.record_exec(&["false".into()], "1", Duration::from_millis(30));
    let before = read_session(dir.path(), None).unwrap().info;
    assert_eq!((before.ended, before.exit_status), (None, None));
    log.finish_at(at("2025-01-02T03:04:09.000Z"), "1").unwrap();
    let after = read_session(dir.path(), None).unwrap();
    assert_eq!(after.info.ended, Some(at("2025-01-02T03:04:09.000Z")));
    assert_eq!(after.info.exit_status.as_deref(), Some("1"));
    assert!(
        matches!(&after.events[..], [Event::Exec(e)] if e.argv == ["false"] && e.exit_status == "1" && e.duration == Duration::from_millis(30))
    );
    assert!(matches!(log.finish("0"), Err(LogError::Finished { .. })));

    // Dropped without finish (capsem crashed): the queued events are written, `ended` stays empty.
    let log = SessionLog::create_at(dir.path(), meta("python", &[]), at("2025-01-03T00:00:00.000Z")).unwrap();
    for n in 0..100 {
        log.dns(dns("2025-01-03T00:00:01.000Z", &format!("n{n}.example"), true));
    }
    drop(log);
    let dump = read_session(dir.path(), None).unwrap();
    assert_eq!((dump.events.len(), dump.info.ended), (100, None));
    assert!(render_text(&dump).contains("ended       - (still running"));
}

#[test]
fn broken_logs_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("20250102T030405Z-abcdef.db");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    let err = read_session(dir.path(), Some("20250102T030405Z-abcdef")).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&garbage.display().to_string()), "{err}");
    assert!(list_sessions(dir.path()).unwrap_err().to_string().contains(&garbage.display().to_string()));

    // A SQLite database that is not a capsem log.
    std::fs::remove_file(&garbage).unwrap();
    rusqlite::Connection::open(&garbage).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let err = read_session(dir.path(), None).unwrap_err();
    assert!(matches!(err, LogError::UnsupportedSchema { found: 0, expected: 1, .. }), "{err:?}");
    assert!(err.to_string().contains(&garbage.display().to_string()), "{err}");

    // A capsem log with a damaged row.
    std::fs::remove_file(&garbage).unwrap();
    let log = SessionLog::create(dir.path(), meta("python", &[])).unwrap();
    log.finish("0").unwrap();
    rusqlite::Connection::open(log.path()).unwrap().execute("UPDATE session SET started = 'yesterday'", []).unwrap();
    let err = read_session(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("\"yesterday\"") && err.contains(log.id()), "{err}");
}
