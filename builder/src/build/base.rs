//! The base image a rootfs is built `FROM`, obtained without a registry when need be.
//!
//! **Bootstrap bases** (DESIGN.md §4.3) are made by `mmdebstrap` and imported through the
//! engine API: mmdebstrap's tar goes from its stdout straight into the import request (no tar on
//! disk), with `SOURCE_DATE_EPOCH` set so its timestamps are fixed. The result is tagged
//! [`crate::plan::bootstrap_tag`] (`capsem-base:<hash of suite, mirror, variant, components, arch,
//! SOURCE_DATE_EPOCH>`) and reused by later builds while that tag exists. Because the tag does not
//! cover how *we* run mmdebstrap, the exact recipe (argv and time) is hashed into the label
//! `capsem.base.recipe`; a cached image with another recipe is rebuilt. The tag only appears once
//! the whole stream was accepted, and a non-zero mmdebstrap exit aborts the upload, so a killed or
//! failed bootstrap leaves nothing to reuse by mistake.
//!
//! Decisions, each visible in the recipe:
//! - `--include=ca-certificates`: pip, npm and curl installers need a trust store whether or not
//!   an extra CA is configured, and `--no-install-recommends` steps would not pull it in.
//! - `--dpkgopt=force-unsafe-io` (written to `/etc/dpkg/dpkg.cfg.d/99mmdebstrap`, so every
//!   later `apt-get install` of the build uses it): dpkg then skips an fsync per unpacked file,
//!   which halves the install time of a package-heavy image (the test image's apt step: 114 s →
//!   53 s). Docker's own Debian images ship the same setting (`docker-apt-speedup`). It stays in
//!   the image, where it is harmless: the guest's root is a throwaway overlay.
//! - apt sources `SUITE`, `SUITE-updates` and `SUITE-security`: stable images pin versions that
//!   exist only in the security suite (images/default pins five). Debian serves security updates
//!   from a separate archive, so its mirror is derived from the main one by replacing the last
//!   `debian` path segment with `debian-security` (`http://deb.debian.org/debian` →
//!   `http://deb.debian.org/debian-security`; `http://snapshot.debian.org/archive/debian/<time>` →
//!   `…/archive/debian-security/<time>`; apt-cacher-ng style `http://proxy:3142/debian` keeps its
//!   proxy). A mirror without such a segment (a corporate proxy repository) cannot be guessed:
//!   set `CAPSEM_BUILD_SECURITY_MIRROR` (a URL, or `none` to use no security suite). Suites with
//!   no security archive (`sid`, `unstable`, `experimental`) get neither extra suite; releases up
//!   to buster use the old `SUITE/updates` name.
//!
//! **Registry bases** (`name@sha256:…`) must already be in the engine or be pullable; our own
//! machines cannot pull, and the error says how to bring the image in.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::BuildError;
use crate::engine::{Engine, EngineError, Progress};
use crate::model::Arch;
use crate::plan::BasePlan;

/// Label holding the hash of the bootstrap recipe.
pub const RECIPE_LABEL: &str = "capsem.base.recipe";
/// Label marking every image we imported as a base.
pub const BASE_LABEL: &str = "capsem.base";

/// How the base was obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseOutcome {
    /// The `FROM` reference.
    pub reference: String,
    /// The engine's image id.
    pub id: String,
    /// Whether an existing image was reused.
    pub cached: bool,
    /// For a bootstrap: the mmdebstrap command line (argv, without the program name).
    pub recipe: Option<Vec<String>>,
}

/// Security-archive mirror derived from the main mirror (see the module docs).
pub fn security_mirror(mirror: &str) -> Option<String> {
    let trimmed = mirror.trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://")?;
    let mut segments: Vec<&str> = rest.split('/').collect();
    // Never the host (segment 0).
    let idx = (1..segments.len()).rev().find(|&i| segments[i] == "debian")?;
    segments[idx] = "debian-security";
    Some(format!("{scheme}://{}", segments.join("/")))
}

/// The apt source lines of a bootstrap: the suite, plus its updates and security suites where
/// Debian has them.
pub fn apt_sources(suite: &str, mirror: &str, security: Option<&str>, components: &[String]) -> Vec<String> {
    let comps = components.join(" ");
    let mut lines = vec![format!("deb {mirror} {suite} {comps}")];
    if matches!(suite, "sid" | "unstable" | "experimental" | "rc-buggy") {
        return lines;
    }
    lines.push(format!("deb {mirror} {suite}-updates {comps}"));
    if let Some(sec) = security {
        let old_style = matches!(suite, "buster" | "stretch" | "jessie" | "oldoldstable");
        let sec_suite = if old_style { format!("{suite}/updates") } else { format!("{suite}-security") };
        lines.push(format!("deb {sec} {sec_suite} {comps}"));
    }
    lines
}

/// Debian's name for an architecture.
pub fn debian_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Arm64 => "arm64",
    }
}

/// Where the security suite comes from: the override (`none` disables it), else derived.
fn resolve_security(mirror: &str, override_: Option<&str>) -> Result<Option<String>, BuildError> {
    match override_.map(str::trim) {
        Some("none") => Ok(None),
        Some(url) if !url.is_empty() => Ok(Some(url.trim_end_matches('/').to_owned())),
        _ => security_mirror(mirror).map(Some).ok_or_else(|| BuildError::Bootstrap {
            command: "mmdebstrap".into(),
            reason: format!("cannot derive the Debian security mirror from `{mirror}` (no `debian` path segment)"),
            tail: Vec::new(),
            fix: Some("set CAPSEM_BUILD_SECURITY_MIRROR to your security mirror's URL, or to `none`".into()),
        }),
    }
}

/// mmdebstrap's arguments for a bootstrap base.
pub fn mmdebstrap_args(
    base: &BasePlan,
    arch: Arch,
    security_override: Option<&str>,
) -> Result<Vec<String>, BuildError> {
    let BasePlan::Bootstrap { suite, mirror, variant, components, .. } = base else {
        return Ok(Vec::new());
    };
    let security = resolve_security(mirror, security_override)?;
    let mut args = vec![
        format!("--variant={variant}"),
        format!("--components={}", components.join(",")),
        format!("--architectures={}", debian_arch(arch)),
        "--include=ca-certificates".to_owned(),
        "--dpkgopt=force-unsafe-io".to_owned(),
        "--format=tar".to_owned(),
        suite.clone(),
        "-".to_owned(),
    ];
    args.extend(apt_sources(suite, mirror, security.as_deref(), components));
    Ok(args)
}

/// Hash of what determines a bootstrap's content beyond its tag.
fn recipe_hash(args: &[String], sde: u64) -> String {
    let mut h = blake3::Hasher::new();
    for a in args {
        h.update(a.as_bytes());
        h.update(b"\0");
    }
    h.update(format!("SOURCE_DATE_EPOCH={sde}").as_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

/// What [`ensure`] needs besides the engine.
#[derive(Debug, Clone, Copy)]
pub(super) struct BaseRequest<'a> {
    /// The plan's base.
    pub base: &'a BasePlan,
    /// Architecture.
    pub arch: Arch,
    /// Engine platform, e.g. `linux/amd64`.
    pub platform: &'a str,
    /// `SOURCE_DATE_EPOCH`.
    pub sde: u64,
    /// `CAPSEM_BUILD_SECURITY_MIRROR`.
    pub security_override: Option<&'a str>,
    /// mmdebstrap's working directory (its `TMPDIR`).
    pub work: &'a Path,
}

/// Makes sure the plan's base is in the engine.
pub(super) async fn ensure(
    engine: &Engine,
    req: &BaseRequest<'_>,
    progress: &mut Progress,
) -> Result<BaseOutcome, BuildError> {
    match req.base {
        BasePlan::Registry { reference } => ensure_registry(engine, reference, req.platform, progress).await,
        BasePlan::Bootstrap { tag, .. } => {
            let args = mmdebstrap_args(req.base, req.arch, req.security_override)?;
            let recipe = recipe_hash(&args, req.sde);
            let existing = engine.inspect_image(tag).await?;
            if let Some(facts) = &existing {
                if facts.labels.get(RECIPE_LABEL) == Some(&recipe) {
                    progress.message(&format!("base: reusing {tag}"));
                    return Ok(BaseOutcome {
                        reference: tag.clone(),
                        id: facts.id.clone(),
                        cached: true,
                        recipe: Some(args),
                    });
                }
                progress.message(&format!("base: {tag} exists but was made by another recipe; rebuilding it"));
            }
            let id = bootstrap(engine, &Bootstrap { tag, args: &args, recipe: &recipe, req }, progress).await?;
            if let Some(old) = existing.map(|f| f.id).filter(|old| *old != id) {
                // Now untagged. Not forced: builds of other processes may still use it.
                let _ = engine.remove_image(&old, false).await;
            }
            Ok(BaseOutcome { reference: tag.clone(), id, cached: false, recipe: Some(args) })
        }
    }
}

/// One bootstrap to run.
struct Bootstrap<'a> {
    tag: &'a str,
    args: &'a [String],
    recipe: &'a str,
    req: &'a BaseRequest<'a>,
}

async fn ensure_registry(
    engine: &Engine,
    reference: &str,
    platform: &str,
    progress: &mut Progress,
) -> Result<BaseOutcome, BuildError> {
    if let Some(facts) = engine.inspect_image(reference).await? {
        progress.message(&format!("base: {reference} is in the engine"));
        return Ok(BaseOutcome { reference: reference.to_owned(), id: facts.id, cached: true, recipe: None });
    }
    progress.message(&format!("base: pulling {reference}"));
    if let Err(e) = engine.pull_image(reference, platform, progress).await {
        return Err(EngineError::ImageUnavailable {
            reference: reference.to_owned(),
            message: e.to_string(),
            fix: "on a machine without registry access, `docker save` it elsewhere and `docker load` it here, \
                  or use a `bootstrap` base in build.toml (mmdebstrap, no registry needed)"
                .to_owned(),
        }
        .into());
    }
    let facts = engine.inspect_image(reference).await?.ok_or_else(|| EngineError::ImageUnavailable {
        reference: reference.to_owned(),
        message: "the pull ended but the image is not there".into(),
        fix: "check the reference".into(),
    })?;
    Ok(BaseOutcome { reference: reference.to_owned(), id: facts.id, cached: false, recipe: None })
}

/// Runs mmdebstrap and streams its tar into the engine's import.
///
/// mmdebstrap works in `work` (its `TMPDIR`) and writes its log to `work/mmdebstrap.log`, not to
/// a pipe: if this process dies (`kill -9`), mmdebstrap must not die of SIGPIPE on stderr while
/// its chroot has /proc, /sys and /dev mounted (it would leave them mounted). It then finishes
/// its install, unmounts, and stops cleanly when it can no longer write the tar; the next run
/// deletes `work` ([`super::stale`]). On our own errors it gets SIGTERM, which it handles the
/// same way, and we wait for it.
async fn bootstrap(engine: &Engine, job: &Bootstrap<'_>, progress: &mut Progress) -> Result<String, BuildError> {
    let Bootstrap { tag, args, recipe, req } = *job;
    let (sde, work) = (req.sde, req.work);
    let command = format!("SOURCE_DATE_EPOCH={sde} mmdebstrap {}", args.join(" "));
    progress.message(&format!("base: bootstrapping {tag}: {command}"));
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { op, path, source }
    };
    std::fs::create_dir_all(work).map_err(io_err("creating", work))?;
    let log_path = work.join("mmdebstrap.log");
    let log = std::fs::File::create(&log_path).map_err(io_err("creating", &log_path))?;
    let mut child = tokio::process::Command::new("mmdebstrap")
        .args(args)
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("TMPDIR", work)
        // Its own process group: when writing the tar fails, mmdebstrap sends SIGHUP to its
        // whole group (`kill HUP => -getpgrp()`), which must not include us.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| BuildError::Bootstrap {
            command: command.clone(),
            reason: format!("cannot start mmdebstrap: {e}"),
            tail: Vec::new(),
            fix: (e.kind() == io::ErrorKind::NotFound).then(|| "install it: `sudo apt-get install mmdebstrap`".into()),
        })?;
    let pid = child.id();
    if let Some(pid) = pid {
        // Lets a later run tell whether mmdebstrap still works in `work` (see super::stale).
        let _ = std::fs::write(work.join(super::stale::PID_FILE), super::stale::process_token(pid));
    }
    let stdout = child.stdout.take().expect("stdout was piped");
    let (status_tx, status_rx) = watch::channel::<Option<Result<ExitStatus, String>>>(None);
    tokio::spawn(async move {
        let status = child.wait().await.map_err(|e| e.to_string());
        let _ = status_tx.send(Some(status));
    });
    let body = tar_stream(stdout, status_rx.clone());

    let (repo, tag_part) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let labels =
        BTreeMap::from([(BASE_LABEL.to_owned(), "1".to_owned()), (RECIPE_LABEL.to_owned(), recipe.to_owned())]);
    let mut log_tail = LogTail::new(log_path);
    let mut import = std::pin::pin!(engine.import_image(body, repo, tag_part, req.platform, &labels));
    let imported = loop {
        tokio::select! {
            result = &mut import => break result,
            () = tokio::time::sleep(Duration::from_millis(200)) => log_tail.poll(progress),
        }
    };
    // The engine refused the stream while mmdebstrap still runs: stop it (it unmounts first).
    let running = status_rx.borrow().is_none();
    let stopped = match (&imported, running, pid.and_then(|p| rustix::process::Pid::from_raw(p as i32))) {
        (Err(_), true, Some(pid)) => rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok(),
        _ => false,
    };
    let mut rx = status_rx.clone();
    let status = match tokio::time::timeout(Duration::from_secs(120), rx.wait_for(Option::is_some)).await {
        Ok(Ok(s)) => s.clone().unwrap_or_else(|| Err("no exit status".into())),
        _ => Err("mmdebstrap did not exit within 120 s of the end of its output".into()),
    };
    log_tail.poll(progress);
    let tail = log_tail.tail;
    if status.is_ok() {
        // Only once mmdebstrap is gone; a later run retries whatever this leaves.
        let _ = super::stale::remove_work_dir(work);
    }
    match (status, imported) {
        (_, Err(e)) if stopped => Err(engine.with_data_root(e).await.into()),
        (Ok(st), _) if !st.success() => {
            Err(BuildError::Bootstrap { command, reason: format!("mmdebstrap failed ({st})"), tail, fix: None })
        }
        (Err(e), _) => {
            Err(BuildError::Bootstrap { command, reason: format!("waiting for mmdebstrap: {e}"), tail, fix: None })
        }
        (_, Err(e)) => Err(engine.with_data_root(e).await.into()),
        (_, Ok(id)) => {
            progress.message(&format!("base: imported {tag} ({})", crate::engine::short_id(&id)));
            Ok(id)
        }
    }
}

/// Follows mmdebstrap's log file: shows new lines, keeps the last ones for errors.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    tail: Vec<String>,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: String::new(), tail: Vec::new() }
    }

    fn poll(&mut self, progress: &mut Progress) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut new).is_err() {
            return;
        }
        self.offset += new.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&new));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end().to_owned();
            progress.output("base: mmdebstrap", &line);
            if self.tail.len() == crate::engine::TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(line);
        }
    }
}

/// mmdebstrap's stdout as a byte stream that ends with an error (aborting the upload) unless
/// mmdebstrap exits successfully.
fn tar_stream(
    stdout: tokio::process::ChildStdout,
    status: watch::Receiver<Option<Result<ExitStatus, String>>>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold(Some((stdout, status)), |state| async move {
        let (mut out, mut status) = state?;
        let mut buf = BytesMut::with_capacity(1 << 20);
        match out.read_buf(&mut buf).await {
            Ok(0) => {
                let exit = status.wait_for(Option::is_some).await.ok().and_then(|s| s.clone());
                match exit {
                    Some(Ok(st)) if st.success() => None,
                    Some(Ok(st)) => Some((Err(io::Error::other(format!("mmdebstrap failed ({st})"))), None)),
                    Some(Err(e)) => Some((Err(io::Error::other(e)), None)),
                    None => Some((Err(io::Error::other("mmdebstrap's exit status is unknown")), None)),
                }
            }
            Ok(_) => Some((Ok(buf.freeze()), Some((out, status)))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_mirror_is_derived_from_the_debian_segment() {
        let cases = [
            ("http://deb.debian.org/debian", Some("http://deb.debian.org/debian-security")),
            ("http://deb.debian.org/debian/", Some("http://deb.debian.org/debian-security")),
            (
                "http://snapshot.debian.org/archive/debian/20250520T000000Z",
                Some("http://snapshot.debian.org/archive/debian-security/20250520T000000Z"),
            ),
            ("http://apt-proxy:3142/debian", Some("http://apt-proxy:3142/debian-security")),
            ("https://artifacts.corp.example/deb-remote", None),
            ("http://debian/", None),
        ];
        for (mirror, want) in cases {
            assert_eq!(security_mirror(mirror).as_deref(), want, "{mirror}");
        }
    }

    #[test]
    fn sources_cover_updates_and_security_where_debian_has_them() {
        let c = vec!["main".to_owned(), "contrib".to_owned()];
        let m = "http://deb.debian.org/debian";
        let s = Some("http://deb.debian.org/debian-security");
        assert_eq!(
            apt_sources("bookworm", m, s, &c),
            [
                "deb http://deb.debian.org/debian bookworm main contrib",
                "deb http://deb.debian.org/debian bookworm-updates main contrib",
                "deb http://deb.debian.org/debian-security bookworm-security main contrib",
            ]
        );
        assert_eq!(
            apt_sources("buster", m, s, &c)[2],
            "deb http://deb.debian.org/debian-security buster/updates main contrib"
        );
        assert_eq!(apt_sources("sid", m, s, &c).len(), 1);
        assert_eq!(apt_sources("bookworm", m, None, &c).len(), 2);
    }

    #[test]
    fn the_recipe_is_pinned_and_its_hash_covers_time_and_mirrors() {
        let base = BasePlan::Bootstrap {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            variant: "minbase".into(),
            components: vec!["main".into()],
            tag: "capsem-base:x".into(),
        };
        let args = mmdebstrap_args(&base, Arch::X86_64, None).unwrap();
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--components=main",
                "--architectures=amd64",
                "--include=ca-certificates",
                "--dpkgopt=force-unsafe-io",
                "--format=tar",
                "bookworm",
                "-",
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        let other = mmdebstrap_args(&base, Arch::X86_64, Some("http://mirror.example/sec")).unwrap();
        assert_ne!(recipe_hash(&args, 1), recipe_hash(&other, 1));
        assert_ne!(recipe_hash(&args, 1), recipe_hash(&args, 2));
        let none = mmdebstrap_args(&base, Arch::Arm64, Some("none")).unwrap();
        assert!(none.contains(&"--architectures=arm64".to_owned()) && none.len() == args.len() - 1, "{none:?}");

        let corp = BasePlan::Bootstrap {
            suite: "bookworm".into(),
            mirror: "https://artifacts.corp.example/deb".into(),
            variant: "minbase".into(),
            components: vec!["main".into()],
            tag: "capsem-base:y".into(),
        };
        let e = mmdebstrap_args(&corp, Arch::X86_64, None).unwrap_err().to_string();
        assert!(e.contains("CAPSEM_BUILD_SECURITY_MIRROR"), "{e}");
    }
}
