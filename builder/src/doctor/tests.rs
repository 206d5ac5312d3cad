//! Tests for the doctor checks: fake executables, fake meminfo files and fake engines on Unix sockets.

use super::*;
use std::io::Write;
use std::os::unix::net::UnixListener;

const FAST: Duration = Duration::from_millis(500);

fn write_executable(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(script.as_bytes()).unwrap();
    file.sync_all().unwrap();
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn meminfo(dir: &Path, total_kib: u64, available_kib: u64) -> PathBuf {
    let path = dir.join("meminfo");
    std::fs::write(
        &path,
        format!("MemTotal:       {total_kib} kB\nMemFree:         1024 kB\nMemAvailable:   {available_kib} kB\n"),
    )
    .unwrap();
    path
}

fn gib_kib(n: u64) -> u64 {
    n * 1024 * 1024
}

fn unix_target(path: &Path) -> Target {
    Target { endpoint: Endpoint::Unix(path.to_path_buf()), from_docker_host: true }
}

fn engine(target: &Target, timeout: Duration) -> Check {
    engine_check(&probe_engine(target, timeout).map(|facts| (target.clone(), facts)))
}

// --- mmdebstrap and host tools -------------------------------------------------------------------------

#[test]
fn mmdebstrap_on_path_passes_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_executable(dir.path(), "mmdebstrap", "#!/bin/sh\necho mmdebstrap 1.3.5\n");
    let check = mmdebstrap_check(Some(dir.path().as_os_str()), DEFAULT_TIMEOUT);
    assert_eq!(check.status, Status::Pass, "{check:?}");
    assert_eq!(check.detail, format!("mmdebstrap 1.3.5 at {}", path.display()));
    assert_eq!(check.fix, None);
}

#[test]
fn mmdebstrap_missing_fails_with_apt_fix() {
    for path_var in [Some(OsStr::new("")), None] {
        let check = mmdebstrap_check(path_var, DEFAULT_TIMEOUT);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("not found"), "{}", check.detail);
        assert!(check.fix.as_deref().unwrap().contains("apt-get install mmdebstrap"));
    }
}

#[test]
fn non_executable_file_on_path_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mmdebstrap"), "#!/bin/sh\necho mmdebstrap 1.3.5\n").unwrap();
    let check = mmdebstrap_check(Some(dir.path().as_os_str()), DEFAULT_TIMEOUT);
    assert_eq!(check.status, Status::Fail, "{check:?}");
}

#[test]
fn mmdebstrap_whose_version_fails_warns_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_executable(dir.path(), "mmdebstrap", "#!/bin/sh\necho 'perl: broken' >&2\nexit 3\n");
    let check = mmdebstrap_check(Some(dir.path().as_os_str()), DEFAULT_TIMEOUT);
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(check.detail.contains("perl: broken"), "{}", check.detail);
}

#[test]
fn hanging_version_command_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    write_executable(dir.path(), "mmdebstrap", "#!/bin/sh\nexec sleep 30\n");
    let started = Instant::now();
    let check = mmdebstrap_check(Some(dir.path().as_os_str()), Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(check.detail.contains("did not finish"), "{}", check.detail);
}

#[test]
fn host_tools_warn_with_their_debian_package() {
    let dir = tempfile::tempdir().unwrap();
    let b3sum = write_executable(dir.path(), "b3sum", "#!/bin/sh\n");
    let path_var = std::env::join_paths([Path::new("/nonexistent-dir"), dir.path()]).unwrap();
    let checks: Vec<Check> = HOST_TOOLS.iter().map(|t| host_tool_check(t, Some(&path_var))).collect();
    let summary: Vec<_> = checks.iter().map(|c| (c.name, c.status, c.fix.clone())).collect();
    assert_eq!(
        summary,
        [
            ("unsquashfs", Status::Warn, Some("apt-get install squashfs-tools".to_owned())),
            ("b3sum", Status::Pass, None),
            ("minisign", Status::Warn, Some("apt-get install minisign".to_owned())),
            ("qemu-system-x86_64", Status::Warn, Some("apt-get install qemu-system-x86".to_owned())),
        ]
    );
    assert_eq!(checks[1].detail, format!("found at {}", b3sum.display()));
}

// --- memory and disk -----------------------------------------------------------------------------------

#[test]
fn memory_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [(2, 1, Status::Fail), (6, 5, Status::Warn), (24, 20, Status::Pass), (24, 2, Status::Warn)];
    for (total, available, expected) in cases {
        let check = memory_check(&meminfo(dir.path(), gib_kib(total), gib_kib(available)));
        assert_eq!(check.status, expected, "{total} GiB total, {available} available: {check:?}");
        assert_eq!(check.fix.is_some(), expected != Status::Pass);
        assert!(check.detail.starts_with(&format!("{total}.0 GiB total, {available}.0 GiB available")));
    }
}

#[test]
fn unreadable_or_garbled_meminfo_warns() {
    let dir = tempfile::tempdir().unwrap();
    let missing = memory_check(&dir.path().join("absent"));
    assert_eq!(missing.status, Status::Warn);
    assert!(missing.detail.starts_with("cannot read"), "{}", missing.detail);
    let garbled = dir.path().join("garbled");
    std::fs::write(&garbled, "MemTotal: lots\n").unwrap();
    assert_eq!(memory_check(&garbled).status, Status::Warn);
}

#[test]
fn parse_meminfo_reads_kib_and_tolerates_missing_available() {
    assert_eq!(
        parse_meminfo("MemTotal:        4 kB\nMemAvailable:    2 kB\n"),
        Some(MemInfo { total: 4096, available: Some(2048) })
    );
    assert_eq!(parse_meminfo("MemTotal: 8 kB\n"), Some(MemInfo { total: 8192, available: None }));
    assert_eq!(parse_meminfo("MemTotalX: 8 kB\n"), None);
}

#[test]
fn disk_thresholds() {
    assert_eq!(disk_status(9 * GIB), Status::Fail);
    assert_eq!(disk_status(10 * GIB - 1), Status::Fail);
    assert_eq!(disk_status(10 * GIB), Status::Warn);
    assert_eq!(disk_status(20 * GIB - 1), Status::Warn);
    assert_eq!(disk_status(20 * GIB), Status::Pass);
}

#[test]
fn disk_is_measured_at_nearest_existing_ancestor() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("not/yet/created");
    let check = disk_check(&output);
    assert!(
        check.detail.contains(&format!("free at {} (nearest existing parent of", dir.path().display())),
        "{}",
        check.detail
    );
    assert_eq!(nearest_existing(Path::new("relative-dir-that-does-not-exist/x")), Path::new("."));
}

// --- engine --------------------------------------------------------------------------------------------

#[test]
fn docker_host_parsing() {
    let tcp = |s: &str| Endpoint::Tcp(s.to_owned());
    assert_eq!(parse_docker_host("unix:///run/x.sock").unwrap(), Endpoint::Unix("/run/x.sock".into()));
    assert_eq!(parse_docker_host("tcp://10.0.0.1:2376").unwrap(), tcp("10.0.0.1:2376"));
    assert_eq!(parse_docker_host("tcp://dockerhost").unwrap(), tcp("dockerhost:2375"));
    assert_eq!(parse_docker_host("http://[::1]:80/").unwrap(), tcp("[::1]:80"));
    for bad in ["ssh://me@host", "npipe:////./pipe/docker_engine", "unix://", "/var/run/docker.sock", "tcp://h/p"] {
        assert!(matches!(parse_docker_host(bad), Err(EngineError::UnsupportedHost { .. })), "{bad}");
    }
}

#[test]
fn without_docker_host_the_first_existing_socket_wins() {
    let xdg = Path::new("/run/user/1000");
    let rootless = xdg.join("podman/podman.sock");
    let pick = |existing: &[&Path]| resolve_engine(None, Some(xdg), |p| existing.contains(&p)).map(|t| t.endpoint);
    assert_eq!(pick(&[Path::new(DOCKER_SOCKET), &rootless]).unwrap(), Endpoint::Unix(DOCKER_SOCKET.into()));
    assert_eq!(pick(&[&rootless, Path::new(PODMAN_ROOT_SOCKET)]).unwrap(), Endpoint::Unix(rootless.clone()));
    assert_eq!(pick(&[Path::new(PODMAN_ROOT_SOCKET)]).unwrap(), Endpoint::Unix(PODMAN_ROOT_SOCKET.into()));
    let Err(EngineError::NoSocket { tried }) = pick(&[]) else { panic!("expected NoSocket") };
    assert_eq!(tried, [PathBuf::from(DOCKER_SOCKET), rootless, PathBuf::from(PODMAN_ROOT_SOCKET)]);
    // DOCKER_HOST wins even when its socket is missing, and no fallback is tried.
    let target = resolve_engine(Some("unix:///nonexistent.sock"), Some(xdg), |_| true).unwrap();
    assert_eq!(target, unix_target(Path::new("/nonexistent.sock")));
}

#[test]
fn missing_socket_from_docker_host_fails_with_fix() {
    let target = resolve_engine(Some("unix:///nonexistent.sock"), None, |p| p.exists()).unwrap();
    let check = engine(&target, FAST);
    assert_eq!(check.status, Status::Fail);
    assert_eq!(check.detail, "socket /nonexistent.sock does not exist (from DOCKER_HOST)");
    let fix = check.fix.unwrap();
    assert!(fix.contains("unset DOCKER_HOST") && fix.contains("apt-get install docker.io"), "{fix}");
}

#[test]
fn no_socket_at_all_fails_with_install_fix() {
    let check = engine_check(&Err(EngineError::NoSocket { tried: vec!["/a.sock".into(), "/b.sock".into()] }));
    assert_eq!(check.status, Status::Fail);
    assert_eq!(check.detail, "no engine socket found (tried /a.sock, /b.sock)");
    assert!(check.fix.unwrap().contains("podman system service"));
}

#[test]
fn permission_denied_is_told_apart() {
    // Root ignores socket permissions, so the classification is tested on the error value.
    let check = engine_check(&Err(EngineError::PermissionDenied { path: DOCKER_SOCKET.into() }));
    assert_eq!(check.detail, "permission denied on socket /var/run/docker.sock");
    assert!(check.fix.unwrap().contains("usermod -aG docker"));
}

#[test]
fn stale_socket_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
    let check = engine(&unix_target(&path), FAST);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.starts_with("connection refused at unix://"), "{}", check.detail);
    assert!(check.fix.unwrap().contains("systemctl start docker"));
}

#[test]
fn engine_that_closes_connections_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closing.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let started = Instant::now();
    let check = engine(&unix_target(&path), DEFAULT_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("is not responding to the Docker API"), "{}", check.detail);
    assert!(check.fix.unwrap().contains("restart"));
}

#[test]
fn engine_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let check = engine(&unix_target(&path), Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("is not responding (no answer within 0.3 s)"), "{}", check.detail);
}

#[test]
fn tcp_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = resolve_engine(Some(&format!("tcp://127.0.0.1:{port}")), None, |_| false).unwrap();
    let check = engine(&target, FAST);
    assert_eq!(check.status, Status::Fail);
    assert_eq!(check.detail, format!("connection refused at tcp://127.0.0.1:{port}: no engine is listening"));
}

#[test]
fn unsupported_docker_host_fails() {
    let Err(error) = resolve_engine(Some("ssh://me@builder"), None, |_| true) else { panic!() };
    let check = engine_check(&Err(error));
    assert_eq!(check.detail, "DOCKER_HOST=ssh://me@builder is not supported (only unix:// and tcp:// are)");
    assert!(check.fix.unwrap().contains("ssh -nNL"));
}

/// A minimal Docker API over a Unix socket: answers `/_ping`, `/version` and `/info`. Like Debian's
/// docker.io 20.10 (API 1.41), it refuses versioned paths such as `/v1.53/version`, so these tests also
/// show that the probe works against engines older than bollard's default API version.
fn fake_engine(dir: &Path, version_json: &'static str, info_json: String) -> PathBuf {
    let path = dir.join("fake-engine.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split_whitespace().nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("");
            let (status, kind, body) = match path {
                "/_ping" => ("200 OK", "text/plain", "OK".to_owned()),
                "/version" => ("200 OK", "application/json", version_json.to_owned()),
                "/info" => ("200 OK", "application/json", info_json.clone()),
                _ => (
                    "400 Bad Request",
                    "application/json",
                    format!(r#"{{"message":"unsupported: {path} (maximum API version is 1.41)"}}"#),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    path
}

#[test]
fn reachable_docker_reports_version_api_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let info = format!(r#"{{"Driver":"overlay2","DockerRootDir":"{root}"}}"#);
    let version = r#"{"Version":"28.2.2","ApiVersion":"1.50","Components":[{"Name":"Engine","Version":"28.2.2"}]}"#;
    let path = fake_engine(dir.path(), version, info);
    let target = unix_target(&path);
    let facts = probe_engine(&target, DEFAULT_TIMEOUT).unwrap();
    let check = engine_check(&Ok((target.clone(), facts.clone())));
    assert_eq!(check, Check::pass("engine", format!("Docker 28.2.2 API 1.50 at unix://{}", path.display())));
    let storage = storage_check(&target, &facts);
    // The figure is this machine's free space, so only its shape and its agreement with the verdict
    // are asserted here; the thresholds are `judge_storage`'s test.
    let prefix = format!("overlay2 at {root}, ");
    assert!(storage.detail.starts_with(&prefix), "{}", storage.detail);
    let figure = storage.detail[prefix.len()..].split(" GiB free").next().unwrap();
    let free_gib: f64 = figure.parse().unwrap_or_else(|_| panic!("no free-space figure in {:?}", storage.detail));
    match storage.status {
        Status::Pass => assert!(free_gib >= 19.9 && storage.detail.ends_with(" GiB free"), "{}", storage.detail),
        Status::Warn => {
            assert!(free_gib <= 20.0 && storage.detail.ends_with("need about 20.0 GiB"), "{}", storage.detail)
        }
        Status::Fail => panic!("storage never fails: {storage:?}"),
    }
}

#[test]
fn storage_verdict_by_driver_and_free_space() {
    let root = Some("/var/lib/docker");
    let plenty = judge_storage(Some("overlay2"), root, &FreeSpace::Known(100 * GIB));
    assert_eq!(plenty, Check::pass("engine-storage", "overlay2 at /var/lib/docker, 100.0 GiB free"));

    let low = judge_storage(Some("overlay2"), root, &FreeSpace::Known(19 * GIB));
    assert_eq!(low.status, Status::Warn);
    assert_eq!(low.detail, "overlay2 at /var/lib/docker, 19.0 GiB free; layers of a full image need about 20.0 GiB");
    assert!(low.fix.unwrap().contains("docker system prune"));

    let unknown = judge_storage(Some("overlay2"), root, &FreeSpace::Unknown("Permission denied".into()));
    assert_eq!(
        unknown,
        Check::pass("engine-storage", "overlay2 at /var/lib/docker (free space unknown: Permission denied)")
    );

    let remote = judge_storage(None, None, &FreeSpace::Remote);
    assert_eq!(remote, Check::pass("engine-storage", "unknown driver at an unknown directory"));

    // vfs warns however much space there is.
    let vfs = judge_storage(Some("vfs"), root, &FreeSpace::Known(100 * GIB));
    assert_eq!(vfs.status, Status::Warn);
    assert!(vfs.detail.contains("copies every layer in full"), "{}", vfs.detail);
}

#[test]
fn reachable_podman_is_named_and_vfs_warns() {
    let dir = tempfile::tempdir().unwrap();
    let version =
        r#"{"Version":"4.3.1","ApiVersion":"1.41","Components":[{"Name":"Podman Engine","Version":"4.3.1"}]}"#;
    let path = fake_engine(dir.path(), version, r#"{"Driver":"vfs","DockerRootDir":"/nonexistent"}"#.into());
    let target = unix_target(&path);
    let facts = probe_engine(&target, DEFAULT_TIMEOUT).unwrap();
    assert_eq!(
        engine_check(&Ok((target.clone(), facts.clone()))).detail,
        format!("Podman 4.3.1 API 1.41 at unix://{}", path.display())
    );
    let storage = storage_check(&target, &facts);
    assert_eq!(storage.status, Status::Warn);
    assert!(storage.detail.starts_with("vfs at /nonexistent (free space unknown: "), "{}", storage.detail);
    assert!(storage.fix.unwrap().contains("overlay2"));
}

#[test]
fn engine_storage_warns_when_info_is_unavailable() {
    let target = unix_target(Path::new("/x.sock"));
    let facts = EngineFacts {
        name: "Docker",
        version: "28.2.2".into(),
        api_version: "1.50".into(),
        storage: Err("boom".into()),
    };
    let check = storage_check(&target, &facts);
    assert_eq!(check.status, Status::Warn);
    assert_eq!(check.detail, "the engine did not report its storage: boom");
}

// --- image definition ----------------------------------------------------------------------------------

#[test]
fn image_config_requires_build_toml() {
    let dir = tempfile::tempdir().unwrap();
    let missing = image_config_check(dir.path());
    assert_eq!(missing.status, Status::Fail);
    assert!(missing.detail.ends_with("config/build.toml not found"), "{}", missing.detail);
    assert_eq!(missing.fix.unwrap(), format!("capsem-builder init {}", dir.path().display()));

    let absent = image_config_check(&dir.path().join("nope"));
    assert_eq!(absent.status, Status::Fail);
    assert!(absent.detail.starts_with("image directory"), "{}", absent.detail);

    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/build.toml"), "").unwrap();
    assert_eq!(image_config_check(dir.path()).status, Status::Pass);
}

// --- whole run and rendering ---------------------------------------------------------------------------

fn hermetic(dir: &Path) -> Options {
    Options {
        image_dir: Some(dir.join("image")),
        output_dir: dir.join("out"),
        docker_host: Some("unix:///nonexistent.sock".into()),
        xdg_runtime_dir: None,
        path_var: Some(OsString::new()),
        meminfo_path: meminfo(dir, gib_kib(24), gib_kib(20)),
        timeout: FAST,
    }
}

#[test]
fn run_reports_every_check_in_order_without_touching_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(&hermetic(dir.path()));
    let names: Vec<_> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "engine",
            "mmdebstrap",
            "disk",
            "memory",
            "unsquashfs",
            "b3sum",
            "minisign",
            "qemu-system-x86_64",
            "image-config"
        ]
    );
    assert!(!report.passed());
    let mut no_image = hermetic(dir.path());
    no_image.image_dir = None;
    assert_eq!(run(&no_image).checks.last().unwrap().name, "qemu-system-x86_64");
}

fn sample_report() -> Report {
    Report {
        checks: vec![
            Check::pass("engine", "Docker 28.2.2 API 1.50 at unix:///var/run/docker.sock"),
            Check::fail("mmdebstrap", "not found on PATH", "apt-get install mmdebstrap"),
            Check::warn("b3sum", "not found on PATH", "apt-get install b3sum"),
        ],
    }
}

#[test]
fn passed_means_no_failure() {
    let mut report = sample_report();
    assert!(!report.passed());
    report.checks.remove(1);
    assert!(report.passed());
    assert!(Report { checks: vec![] }.passed());
}

#[test]
fn render_text_shape() {
    expect_test::expect![[r#"
        [PASS] engine: Docker 28.2.2 API 1.50 at unix:///var/run/docker.sock
        [FAIL] mmdebstrap: not found on PATH
               fix: apt-get install mmdebstrap
        [WARN] b3sum: not found on PATH
               fix: apt-get install b3sum
        1 passed, 1 warning, 1 failed
    "#]]
    .assert_eq(&sample_report().render_text());
}

#[test]
fn json_shape_is_stable() {
    let json = serde_json::to_value(sample_report()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"checks": [
            {"name": "engine", "status": "pass",
             "detail": "Docker 28.2.2 API 1.50 at unix:///var/run/docker.sock", "fix": null},
            {"name": "mmdebstrap", "status": "fail", "detail": "not found on PATH",
             "fix": "apt-get install mmdebstrap"},
            {"name": "b3sum", "status": "warn", "detail": "not found on PATH", "fix": "apt-get install b3sum"},
        ]})
    );
}
