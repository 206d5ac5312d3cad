//! Real engine builds of `tests/fixtures/small-image` (no mocks): a bootstrap base, apt sets
//! (one keyed `devtools`), a pip package, an npm package and a curl-style installer served from a
//! loopback HTTP server started here (the build uses network mode `host` to reach it).
//!
//! [`small_image_builds_reproducibly`] checks, in order (one test, because every step needs the
//! engine and the cached base of the one before):
//!
//! 1. `kill -9` in the middle of an engine build leaves no `rootfs.squashfs`;
//! 2. the next build removes what the killed run (and a planted dead run) left in the engine, and
//!    the writer's stale temporary file;
//! 3. two builds into two fresh output directories give the same BLAKE3;
//! 4. `unsquashfs -lln` of the image matches the container export (paths, modes, owners, sizes,
//!    symlink targets, device numbers), with every mtime at `SOURCE_DATE_EPOCH`, and an
//!    `unsquashfs -d` extraction has every exported file's bytes;
//! 5. every installer reached the image, with the modes the Dockerfile promises;
//! 6. a failing step is reported with its number, instruction and output, and leaves nothing.
//!
//! [`small_image_release_is_reproducible_signed_and_checked`] builds the whole release twice
//! (kernel from the content-hash cache when possible, initrd, rootfs, manifest, SBOM, B3SUMS,
//! signature) and checks identical bytes, the manifest's contents, the bill of materials against
//! `dpkg-query`/`pip list` inside the image, the SBOM with the CycloneDX validator, a real boot
//! under QEMU, and that `minisign`, `b3sum -c` and `capsem-builder verify` accept the release and
//! reject it after one flipped byte in any asset or in the manifest.
//!
//! Needs: a running Docker (or Podman) engine at `DOCKER_HOST` or /var/run/docker.sock — the
//! test FAILS without one —, mmdebstrap, squashfs-tools, root (unsquashfs extracts device nodes),
//! and the Debian/PyPI/npm mirrors; for the release test also minisign, b3sum, zstd, cpio,
//! qemu-system-x86 and the SBOM validator venv (all from `cargo xtask deps`). pip and npm need the host CA bundle inside the build on
//! machines behind a TLS-intercepting proxy: it is passed as `CAPSEM_BUILD_CA_FILE` would be
//! (that variable if set, else /etc/ssl/certs/ca-certificates.crt).

#[path = "engine_build/bom.rs"]
mod bom;
#[path = "engine_build/listing.rs"]
mod listing;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capsem_builder::build::{BuildError, BuildOptions, Journal, RootfsOutcome, RunId, build_rootfs};
use capsem_builder::engine::{Engine, EngineError, ProgressMode};
use capsem_builder::model::{Arch, Model};
use futures_util::StreamExt;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/small-image");
const INSTALLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/small-image-install.sh");
/// The fixture's installer URL authority, rewritten to the server's.
const FIXTURE_AUTHORITY: &str = "127.0.0.1:8089";
/// Set in the child process that step 1 kills: `<image dir>\n<out dir>\n<state dir>`.
const CHILD_ENV: &str = "CAPSEM_TEST_CHILD_BUILD";
const SDE_LISTED: &str = "2023-11-14 22:13"; // the fixture's source_date_epoch

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Connects, or fails the test with what to do.
fn engine() -> Engine {
    block_on(Engine::connect_default()).unwrap_or_else(|e| {
        panic!(
            "{e}\n\nThe engine build tests need a running container engine (they fail rather than skip). \
             CI: `.ci/run` installs docker.io and starts dockerd before `cargo test`."
        )
    })
}

/// Serves the installer script on a loopback port; counts requests.
struct Server {
    authority: String,
    hits: Arc<AtomicUsize>,
}

fn serve_installer() -> Server {
    let script = std::fs::read(INSTALLER).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) && !head.ends_with("\r\n\r\n") {}
            let ok = head.starts_with("GET /install.sh ");
            if ok {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let (status, body): (&str, &[u8]) = if ok { ("200 OK", &script) } else { ("404 Not Found", b"") };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(body);
        }
    });
    Server { authority, hits }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// The fixture, copied, with the installer URL pointing at `authority`.
fn image_copy(root: &Path, authority: &str) -> PathBuf {
    let dir = root.join("small-image");
    copy_tree(Path::new(FIXTURE), &dir);
    let installer = dir.join("config/packages/installer.toml");
    let text = std::fs::read_to_string(&installer).unwrap();
    std::fs::write(&installer, text.replace(FIXTURE_AUTHORITY, authority)).unwrap();
    dir
}

fn load(dir: &Path) -> Model {
    let loaded = capsem_builder::validate::load(dir);
    loaded.model.unwrap_or_else(|| panic!("{}", loaded.report.render("small-image", false)))
}

fn options(state_dir: &Path) -> BuildOptions {
    let ca = std::env::var_os("CAPSEM_BUILD_CA_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    BuildOptions {
        progress: ProgressMode::Lines,
        network_mode: Some("host".into()),
        extra_ca_file: Some(ca),
        state_dir: Some(state_dir.to_path_buf()),
        // No guest agent, whatever CAPSEM_GUEST_BIN_DIR says (`cargo xtask ci` sets it for the
        // runtime's tests): the boot check below talks to the shell capsem-init falls back to.
        guest_bin_dir: None,
        ..BuildOptions::from_env()
    }
}

fn build(dir: &Path, out: &Path, opts: &BuildOptions) -> RootfsOutcome {
    let model = load(dir);
    build_rootfs(dir, &model, Arch::X86_64, out, opts).unwrap_or_else(|e| panic!("build into {}: {e}", out.display()))
}

/// Step 1's child: builds until killed.
fn child_build(spec: &str) -> ! {
    let parts: Vec<&str> = spec.lines().collect();
    let [dir, out, state] = parts.as_slice() else { panic!("bad {CHILD_ENV}: {spec:?}") };
    let opts = options(Path::new(state));
    let model = load(Path::new(dir));
    let r = build_rootfs(Path::new(dir), &model, Arch::X86_64, Path::new(out), &opts);
    eprintln!("child build finished unexpectedly: {:?}", r.map(|o| o.blake3));
    std::process::exit(3)
}

/// Starts a build in a child process and SIGKILLs it once its log shows `marker` plus `delay`.
/// Returns the child's pid.
fn kill_build_at(dir: &Path, out: &Path, state: &Path, marker: &str, delay: Duration) -> u32 {
    let spec = format!("{}\n{}\n{}", dir.display(), out.display(), state.display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["small_image_builds_reproducibly", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the child build ended before `{marker}`:\n{seen}");
        }
        eprint!("  child: {line}");
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
    }
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    pid
}

/// A run that no longer exists: an exited child's pid, on this host and boot.
fn dead_run() -> RunId {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    RunId { pid, start: 1, ..RunId::current() }
}

/// A tiny image, imported with `labels`.
fn tiny_image(engine: &Engine, repo: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "leftover", &b"hi\n"[..]).unwrap();
    let bytes = bytes::Bytes::from(tar.into_inner().unwrap());
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
    block_on(engine.import_image(body, repo, "dead", "linux/amd64", labels)).unwrap()
}

fn gone(engine: &Engine, reference: &str) -> bool {
    block_on(engine.inspect_image(reference)).unwrap().is_none()
}

/// The kept image's filesystem, exported through a fresh container.
fn export(engine: &Engine, image: &str) -> Vec<u8> {
    block_on(async {
        let id = engine
            .create_container(image, &format!("capsem-test-export-{}", std::process::id()), &Default::default())
            .await
            .unwrap();
        let mut tar = Vec::new();
        let mut stream = engine.export_container(&id);
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.unwrap());
        }
        drop(stream);
        engine.remove_container(&id).await.unwrap();
        engine.remove_image(image, true).await.unwrap();
        tar
    })
}

#[test]
fn small_image_builds_reproducibly() {
    if let Some(spec) = std::env::var_os(CHILD_ENV) {
        child_build(&spec.to_string_lossy());
    }
    let engine = engine();
    let server = serve_installer();
    let tmp = tempfile::tempdir().unwrap();
    let dir = image_copy(tmp.path(), &server.authority);
    let state = tmp.path().join("runs");
    let opts = options(&state);

    // 1. kill -9 while mmdebstrap bootstraps a base (another SOURCE_DATE_EPOCH, so another
    //    base tag than the cached one) ...
    let other = image_copy(&tmp.path().join("other-time"), &server.authority);
    let build_toml = other.join("config/build.toml");
    let text = std::fs::read_to_string(&build_toml).unwrap();
    std::fs::write(&build_toml, text.replace("source_date_epoch = 1700000000", "source_date_epoch = 1700000001"))
        .unwrap();
    let other_model = load(&other);
    let other_base = &other_model.build.architectures[&Arch::X86_64].base;
    let other_tag = capsem_builder::plan::bootstrap_tag(other_base, Arch::X86_64, Some(1_700_000_001)).unwrap();
    // It must be bootstrapped, not reused (and must not stay: no build needs it afterwards).
    block_on(engine.remove_image(&other_tag, false)).unwrap();
    let base_out = tmp.path().join("out-killed-in-base");
    let base_pid = kill_build_at(&other, &base_out, &state, "base: bootstrapping", Duration::from_secs(5));
    assert!(gone(&engine, &other_tag), "a killed bootstrap was imported");
    assert!(!base_out.join("x86_64/rootfs.squashfs").exists());
    let work_dirs = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("capsem-mmdebstrap-{pid}-")))
            .collect()
    };
    assert_eq!(work_dirs(base_pid).len(), 1, "the killed run's mmdebstrap directory");

    // ... and during the engine build (the first package installation).
    let crash_out = tmp.path().join("out-killed");
    let killed_pid = kill_build_at(&dir, &crash_out, &state, "] RUN apt-get install", Duration::from_secs(3));
    assert!(!crash_out.join("x86_64/rootfs.squashfs").exists(), "a killed build left an image");
    let journals: Vec<_> = std::fs::read_dir(&state).unwrap().filter_map(Result::ok).collect();
    assert!(
        journals.iter().any(|j| j.file_name().to_string_lossy().starts_with(&format!("{killed_pid}-"))),
        "the killed run's journal is missing"
    );

    // Plant what a run killed after its build would leave: a labelled image and container, a
    // journal naming an image, and a temporary squashfs file.
    let dead = dead_run();
    let labelled = format!("capsem-rootfs-test-leftover-{}", std::process::id());
    tiny_image(&engine, &labelled, &dead.labels());
    let labelled_ref = format!("{labelled}:dead");
    let container = block_on(engine.create_container(&labelled_ref, &format!("{labelled}-c"), &dead.labels())).unwrap();
    let journaled = format!("capsem-rootfs-test-journaled-{}", std::process::id());
    tiny_image(&engine, &journaled, &Default::default());
    let mut journal = Journal::create(&state, &dead).unwrap();
    journal.record("image", &format!("{journaled}:dead"));
    drop(journal);
    let out1 = tmp.path().join("out1");
    std::fs::create_dir_all(out1.join("x86_64")).unwrap();
    let stale_tmp = out1.join(format!("x86_64/rootfs.squashfs.tmp-{}-0", dead.pid));
    std::fs::write(&stale_tmp, b"half an image").unwrap();

    // 2 + 3. Two builds into fresh output directories.
    let a = build(&dir, &out1, &opts);
    assert!(gone(&engine, &labelled_ref) && gone(&engine, &format!("{journaled}:dead")), "{:?}", a.stale_removed);
    assert!(a.stale_removed.containers.iter().any(|c| container.starts_with(c.as_str())), "{:?}", a.stale_removed);
    assert!(a.stale_removed.journals >= 2, "the killed and the planted run: {:?}", a.stale_removed);
    assert_eq!(a.report.stale_temp_files_removed, vec![stale_tmp.clone()]);
    assert!(!stale_tmp.exists());
    assert!(a.cleanup_warnings.is_empty(), "{:?}", a.cleanup_warnings);
    let leftovers = block_on(engine.containers_with_label("capsem.build")).unwrap();
    assert!(
        leftovers.iter().all(|c| c.labels.get("capsem.build.pid") != Some(&std::process::id().to_string())),
        "{leftovers:?}"
    );
    let remaining: Vec<String> =
        std::fs::read_dir(&state).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(remaining.is_empty(), "journals remain after a clean run: {remaining:?}\n{:?}", a.stale_removed);

    let out2 = tmp.path().join("out2");
    let b = build(&dir, &out2, &BuildOptions { keep_image: true, ..opts.clone() });
    for o in [&a, &b] {
        eprintln!("build: blake3 {} size {} timings {:?} base cached {}", o.blake3, o.size, o.timings, o.base.cached);
    }
    assert_eq!(a.blake3, b.blake3, "two clean builds differ");
    let hash = |p: &Path| blake3::hash(&std::fs::read(p).unwrap()).to_hex().to_string();
    assert_eq!(hash(&a.squashfs), hash(&b.squashfs));
    assert_eq!(hash(&a.squashfs), a.blake3);
    assert!(server.hits.load(Ordering::SeqCst) >= 2, "the installer was not fetched by both builds");
    assert!(b.base.cached, "the second build must reuse the cached base");

    // The killed bootstrap's mmdebstrap finished on its own (it must not die with its chroot's
    // mounts up), and a later build deleted its directory.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("capsem-mmdebstrap-"), "mmdebstrap left mounts:\n{mounts}");
    assert!(work_dirs(base_pid).is_empty(), "{:?} {:?}", a.stale_removed, b.stale_removed);

    // 4. The image lists exactly the export; every file has its exported bytes.
    let kept = b.kept_image.clone().expect("keep_image keeps the image");
    let tar = export(&engine, &kept);
    let (expected, contents) = listing::expected_from_export(&tar, &b.report);
    let text = listing::unsquashfs(&["-lln".as_ref(), "-UTC".as_ref(), b.squashfs.as_os_str()]);
    let parsed = listing::parse_unsquashfs(&text);
    for (row, time) in &parsed {
        assert_eq!(time, SDE_LISTED, "mtime of /{}", row.path);
    }
    let rows: Vec<listing::Row> = parsed.into_iter().map(|(r, _)| r).collect();
    listing::assert_same(&expected, &rows);
    let root = tmp.path().join("extracted");
    listing::unsquashfs(&["-no-progress".as_ref(), "-d".as_ref(), root.as_os_str(), b.squashfs.as_os_str()]);
    listing::assert_contents(&contents, &root);

    // 5. Every installer reached the image.
    let row = |p: &str| rows.iter().find(|r| r.path == p).unwrap_or_else(|| panic!("/{p} is not in the image"));
    assert_eq!(row("usr/bin/tree").perms.as_deref(), Some("-rwxr-xr-x"), "the [devtools] set");
    row("usr/bin/hello");
    row("usr/bin/jq");
    // Not a dependency of anything Debian installed here, so pip really fetched it from PyPI.
    row("usr/local/lib/python3.11/dist-packages/iniconfig/__init__.py");
    let semver = std::fs::read_to_string(root.join("opt/ai-clis/lib/node_modules/semver/package.json")).unwrap();
    assert!(semver.contains("\"version\": \"7.6.3\""), "{semver}");
    let hello = row("usr/local/bin/capsem-hello");
    assert_eq!(
        (hello.perms.as_deref(), hello.owner.as_deref()),
        (Some("-r-xr-xr-x"), Some("0/0")),
        "curl installer output"
    );
    assert!(!rows.iter().any(|r| r.path.contains("capsem-build-extra-ca")), "the build CA must not stay in the image");
    let setid: Vec<&listing::Row> = rows
        .iter()
        .filter(|r| r.perms.as_deref().is_some_and(|p| p.starts_with('-') && p.contains(['s', 'S'])))
        .collect();
    assert!(setid.is_empty(), "{setid:?}");

    // 6. A failing step: its number, instruction and output; nothing written, nothing left.
    let bad = image_copy(&tmp.path().join("bad"), &server.authority);
    let apt = bad.join("config/packages/apt.toml");
    let text = std::fs::read_to_string(&apt).unwrap();
    std::fs::write(&apt, text.replace("\"hello=2.10-3\"", "\"hello=0.0-capsem-missing\"")).unwrap();
    let bad_out = tmp.path().join("out-bad");
    let based = || -> std::collections::BTreeSet<String> {
        block_on(engine.images_with_label("capsem.base")).unwrap().into_iter().map(|i| i.id).collect()
    };
    let before = based();
    let err = build_rootfs(&bad, &load(&bad), Arch::X86_64, &bad_out, &opts).unwrap_err();
    let new_images: Vec<String> = based().difference(&before).cloned().collect();
    assert!(new_images.is_empty(), "the failed build left its intermediate images: {new_images:?}");
    let text = err.to_string();
    let BuildError::Build { source: EngineError::BuildStepFailed { step, instruction, tail, .. }, log: Some(log) } =
        &err
    else {
        panic!("expected a failed build step, got: {text}")
    };
    assert!(*step > 10 && instruction.contains("hello=0.0-capsem-missing"), "{text}");
    assert!(tail.iter().any(|l| l.contains("hello")), "{text}");
    assert!(text.contains(&format!("build step {step}/")) && text.contains("full log: "), "{text}");
    assert!(std::fs::read_to_string(log).unwrap().contains("hello=0.0-capsem-missing"));
    assert!(!bad_out.join("x86_64/rootfs.squashfs").exists());
    let ours = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get("capsem.build.pid") == Some(&std::process::id().to_string())
    };
    assert!(!block_on(engine.containers_with_label("capsem.build")).unwrap().iter().any(|c| ours(&c.labels)));
    assert!(!block_on(engine.images_with_label("capsem.build")).unwrap().iter().any(|i| ours(&i.labels)));
}

#[test]
fn no_engine_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = image_copy(tmp.path(), "127.0.0.1:9");
    let opts = BuildOptions {
        endpoint: Some(capsem_builder::engine::Endpoint::Unix(tmp.path().join("no-docker.sock"))),
        progress: ProgressMode::Quiet,
        state_dir: Some(tmp.path().join("runs")),
        ..BuildOptions::default()
    };
    let err = build_rootfs(&dir, &load(&dir), Arch::X86_64, &tmp.path().join("out"), &opts).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::Engine(EngineError::NoEngine { .. })), "{text}");
    assert!(text.contains("no-docker.sock does not exist") && text.contains("fix: start Docker"), "{text}");
    assert!(!tmp.path().join("out/x86_64/rootfs.squashfs").exists());
}

/// The small image's whole release (kernel, initrd, rootfs, manifest, SBOM, B3SUMS, signature),
/// built twice into fresh directories. The kernel comes from the content-hash cache when an
/// earlier run built it with the same inputs (the default cache directory, as users get it); the
/// second build must take it from there.
#[test]
fn small_image_release_is_reproducible_signed_and_checked() {
    use capsem_builder::build::release::{self, Parts, ReleaseRequest};
    use capsem_builder::kernel_source::Provider;

    let _engine = engine();
    let server = serve_installer();
    let tmp = tempfile::tempdir().unwrap();
    let dir = image_copy(tmp.path(), &server.authority);
    let model = load(&dir);
    let (public, secret) = (tmp.path().join("test.pub"), tmp.path().join("test.key"));
    capsem_builder::sign::keygen_with(&public, &secret, false, None).unwrap();
    let opts = options(&tmp.path().join("runs"));
    let build = |out: &Path| {
        let request = ReleaseRequest {
            image_dir: &dir,
            model: &model,
            archs: vec![Arch::X86_64],
            out_dir: out,
            opts: &opts,
            kernel_source: Provider::Debian,
            sign_key: Some(secret.clone()),
            audit_report: None,
            parts: Parts::Release,
        };
        release::build_release(&request).unwrap_or_else(|e| panic!("release into {}: {e}", out.display()))
    };
    let (out_a, out_b) = (tmp.path().join("release-a"), tmp.path().join("release-b"));
    let a = build(&out_a);
    let b = build(&out_b);
    assert!(b.built[0].kernel.cached, "the second build must take the kernel from the cache");
    assert!(a.skipped.is_empty() && a.signature.is_some(), "{:?}", a.skipped);

    // Identical bytes, file by file.
    let hash = |p: &Path| blake3::hash(&std::fs::read(p).unwrap()).to_hex().to_string();
    let files = [
        "x86_64/vmlinuz",
        "x86_64/initrd.img",
        "x86_64/rootfs.squashfs",
        "x86_64/sbom.cdx.json",
        "defaults.json",
        "manifest.json",
        "manifest.json.minisig",
        "B3SUMS",
    ];
    for f in files {
        assert_eq!(hash(&out_a.join(f)), hash(&out_b.join(f)), "{f} differs between the two builds");
    }
    let diffs = capsem_builder::compare::compare_dirs(&out_a, &out_b).unwrap();
    assert!(diffs.is_empty(), "{diffs:?}");
    let entries: Vec<String> =
        std::fs::read_dir(&out_a).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!entries.iter().any(|e| e.starts_with(".build-")), "staging left behind: {entries:?}");

    // The manifest says what was built, from what.
    let manifest = capsem_trust::Manifest::parse(&std::fs::read(out_a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.build_timestamp, "2023-11-14T22:13:20Z");
    assert_eq!(manifest.source_date_epoch, 1_700_000_000);
    let arch = manifest.arch("x86_64").unwrap();
    let names: Vec<&str> = arch.assets.iter().map(|a| a.filename.as_str()).collect();
    assert_eq!(names, ["initrd.img", "rootfs.squashfs", "vmlinuz"]);
    for asset in &arch.assets {
        let path = out_a.join("x86_64").join(&asset.filename);
        assert_eq!((asset.size, asset.b3.as_str()), (std::fs::metadata(&path).unwrap().len(), hash(&path).as_str()));
    }
    let has = |manager: &str, name: &str| arch.packages.iter().any(|p| p.manager == manager && p.name == name);
    assert!(has("apt", "hello") && has("apt", "tree") && has("pip", "iniconfig") && has("npm", "semver"));
    assert_eq!(arch.inputs.kernel_source["provider"], "debian");
    assert_eq!(arch.inputs.kernel_source["tarball_sha256"].len(), 64);
    assert!(arch.inputs.toolchain.keys().any(|k| k.starts_with("gcc-")), "{:?}", arch.inputs.toolchain);
    assert!(arch.inputs.toolchain.contains_key("busybox-static"));
    assert_eq!(arch.sbom.b3, hash(&out_a.join("x86_64/sbom.cdx.json")));
    let settings = std::fs::read_to_string(out_a.join("defaults.json")).unwrap();
    assert_eq!(settings, capsem_builder::settings::to_json(&model), "the release carries the image's settings");
    assert_eq!(manifest.settings.b3, hash(&out_a.join("defaults.json")));

    // The bill of materials is what the rootfs's own package databases say.
    bom::assert_bom_matches_rootfs(&out_a.join("x86_64/rootfs.squashfs"), &arch.packages);
    // The SBOM passes the CycloneDX validator from PyPI.
    bom::assert_sbom_validates(&out_a.join("x86_64/sbom.cdx.json"));

    // The initrd holds busybox and capsem-init as /init.
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | cpio -it --quiet", out_a.join("x86_64/initrd.img").display()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "init") && listing.lines().any(|l| l == "bin/busybox"), "{listing}");

    // A real Linux boot of the three assets under QEMU (TCG): the kernel unpacks the initrd,
    // capsem-init mounts the squashfs and the overlay and switches root; with no agent in this
    // image it starts /bin/sh on the console, which answers from inside the new root.
    let console = boot_with_shell(&out_a.join("x86_64"), "echo CAPSEM-GUEST-$((6*7)); dpkg-query -W hello; exit");
    eprintln!("guest console:\n{console}");
    assert!(console.contains("CAPSEM-GUEST-42"), "the guest shell did not answer:\n{console}");
    assert!(console.contains("hello\t2.10-3"), "dpkg in the guest does not see the rootfs:\n{console}");

    // Debian's minisign and b3sum accept the release; flipping one byte anywhere breaks them.
    let minisign = |dir: &Path| {
        Command::new("minisign")
            .arg("-Vm")
            .arg(dir.join("manifest.json"))
            .arg("-p")
            .arg(&public)
            .arg("-q")
            .status()
            .expect("minisign is installed (cargo xtask deps)")
            .success()
    };
    let b3sum = |dir: &Path| {
        Command::new("b3sum")
            .args(["-c", "--quiet", "B3SUMS"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("b3sum is installed (cargo xtask deps)")
            .success()
    };
    let verify = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_capsem-builder"))
            .arg("verify")
            .arg(dir)
            .arg("--public-key")
            .arg(&public)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(minisign(&out_a), "minisign rejects our signature");
    assert!(b3sum(&out_a), "b3sum -c rejects our B3SUMS");
    assert!(verify(&out_a), "capsem-builder verify rejects a good release");
    for f in files.iter().filter(|f| !f.ends_with(".minisig") && **f != "B3SUMS") {
        let copy = tmp.path().join(format!("tampered-{}", f.replace('/', "-")));
        copy_tree(&out_a, &copy);
        let target = copy.join(f);
        let mut bytes = std::fs::read(&target).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&target, bytes).unwrap();
        if *f == "manifest.json" {
            assert!(!minisign(&copy), "minisign accepts a tampered manifest");
        } else {
            assert!(!b3sum(&copy), "b3sum -c accepts a tampered {f}");
        }
        assert!(!verify(&copy), "capsem-builder verify accepts a tampered {f}");
    }
}

/// Boots `dir`'s vmlinuz + initrd.img with rootfs.squashfs as /dev/vda under QEMU TCG (microvm,
/// the command line of ../shared/research/vm-boot-feasibility.md), types `commands` into the
/// shell capsem-init falls back to once it is up, and returns the console output. The guest's
/// PID 1 exiting panics the kernel, which reboots, which ends QEMU (`-no-reboot`); the 300 s
/// limit only stops a hung guest from hanging the test.
fn boot_with_shell(dir: &Path, commands: &str) -> String {
    let khz = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)).map(|v| v.trim().to_owned()))
        .and_then(|mhz| mhz.parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .expect("cpu MHz in /proc/cpuinfo");
    let append = format!(
        "console=ttyS0 quiet panic=-1 reboot=t noapictimer tsc_early_khz={khz} lpj={} capsem.scratch=none capsem.fatal=reboot",
        khz * 1000 / 250
    );
    let mut child = Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-M", "microvm,acpi=off", "-cpu", "max", "-m", "512", "-no-reboot"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        .arg("-drive")
        .arg(format!("id=root,file={},format=raw,if=none,readonly=on", dir.join("rootfs.squashfs").display()))
        .args(["-device", "virtio-blk-device,drive=root", "-append", &append])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 is installed (cargo xtask deps)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut console = String::new();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut typed = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        console.push_str(&text);
        if !typed && text.contains("starting /bin/sh") {
            stdin.write_all(format!("{commands}\n").as_bytes()).unwrap();
            stdin.flush().unwrap();
            typed = true;
        }
    }
    drop(stdin);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(124), "the guest hung (300 s):\n{console}\n{err}");
    console
}
