//! Building the root filesystem: definition → engine build → `<out>/<arch>/rootfs.squashfs`.
//!
//! [`build_rootfs`] runs the phases of DESIGN.md §3 for one architecture:
//!
//! 1. **Time.** `SOURCE_DATE_EPOCH` from build.toml, the environment, or the last commit of the
//!    image directory ([`sde`]).
//! 2. **Base.** A bootstrap base is reused from the engine when its content-hash tag exists, else
//!    made by mmdebstrap and streamed into the engine's import; a registry base must be present
//!    or pullable ([`base`]).
//! 3. **Context.** The rendered Dockerfile, the extra CA, guest binaries and `artifacts/`, as a
//!    deterministic in-memory tar ([`context`]).
//! 4. **Build** through the engine API (classic builder, no cache, intermediate containers always
//!    removed), tagged `capsem-rootfs-<arch>:<pid>-<start>-<n>` so concurrent builds never share
//!    a tag; the log streams to the progress display and is saved next to the output on failure.
//! 5. **Export.** A container is created (never started) and its filesystem streamed straight
//!    into [`crate::rootfs::tar_to_squashfs`], which writes the image atomically ([`export`]).
//! 6. **Clean-up**, always, also on error or panic: the container and the built image go; the
//!    cached base stays. Leftovers of runs killed with `-9` are removed by the next run
//!    ([`stale`]).
//!
//! # Environment
//!
//! Read only by [`BuildOptions::from_env`], never inside the phases:
//! `SOURCE_DATE_EPOCH`; `CAPSEM_BUILD_CA_FILE` (a PEM file trusted during the build, in addition
//! to build.toml `extra_ca`; for machines behind a TLS-intercepting proxy — like ours, for pip
//! and npm); `CAPSEM_BUILD_SECURITY_MIRROR` (see [`base`]); `DOCKER_HOST`;
//! `XDG_STATE_HOME`/`HOME` (where run journals live).

mod base;
mod context;
mod export;
pub mod kernel;
pub mod release;
pub mod sde;
mod session;
mod stale;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::FutureExt;
use serde::Serialize;

pub use base::{BaseOutcome, apt_sources, debian_arch, mmdebstrap_args, security_mirror};
pub use context::ContextError;
pub use sde::{SdeError, SdeSource};
pub use stale::{Journal, Reaped, RunId};

use crate::engine::{Endpoint, EngineError, ProgressMode};
use crate::model::{Arch, Model};
use crate::render::RenderError;
use crate::rootfs::{self, RootfsError, SquashOptions};
use session::Session;

/// Environment variable naming an extra CA file for the build.
pub const CA_FILE_ENV: &str = "CAPSEM_BUILD_CA_FILE";
/// Environment variable overriding the Debian security mirror of bootstrap bases.
pub const SECURITY_MIRROR_ENV: &str = "CAPSEM_BUILD_SECURITY_MIRROR";
/// Environment variable naming the build cache directory (built kernels).
pub const CACHE_DIR_ENV: &str = "CAPSEM_CACHE_DIR";
/// Environment variable naming the directory of prebuilt static guest binaries
/// (`capsem-agent`); `cargo xtask image build` sets it.
pub const GUEST_BIN_DIR_ENV: &str = "CAPSEM_GUEST_BIN_DIR";
/// Name of the image file inside `<out>/<arch>/`.
pub const ROOTFS_FILE: &str = "rootfs.squashfs";
/// Name of the build log saved next to it when the engine build fails.
pub const BUILD_LOG_FILE: &str = "rootfs-build.log";

/// How to build. [`BuildOptions::from_env`] is what the CLI uses.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Progress display on stderr.
    pub progress: ProgressMode,
    /// The `SOURCE_DATE_EPOCH` environment value (used when build.toml sets none).
    pub source_date_epoch_env: Option<OsString>,
    /// Extra CA file trusted during the build, in addition to build.toml `extra_ca`.
    pub extra_ca_file: Option<PathBuf>,
    /// Security mirror for bootstrap bases (`none` to disable); derived when unset.
    pub security_mirror: Option<String>,
    /// Network mode of the build's `RUN` steps (`host` reaches the host's loopback).
    pub network_mode: Option<String>,
    /// Directory of prebuilt static guest binaries (`capsem-agent`, …); those present are used.
    pub guest_bin_dir: Option<PathBuf>,
    /// squashfs compression threads (0: all cores).
    pub threads: usize,
    /// Where run journals live; default `$XDG_STATE_HOME/capsem-builder/runs`.
    pub state_dir: Option<PathBuf>,
    /// Where built kernels are cached by content hash; default `$CAPSEM_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/capsem-builder`, else `~/.cache/capsem-builder`.
    pub cache_dir: Option<PathBuf>,
    /// Engine endpoint; default `DOCKER_HOST`, else the default socket.
    pub endpoint: Option<Endpoint>,
    /// Keep the built image (for inspection) instead of removing it. It keeps this run's labels,
    /// so the first build after this process exits removes it; `docker tag` it to keep it longer.
    pub keep_image: bool,
}

impl BuildOptions {
    /// Options from the process environment (see the module docs).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// Options from an environment lookup.
    pub fn from_vars(get: impl Fn(&str) -> Option<OsString>) -> Self {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let state_dir = nonempty("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .map(|d| d.join("capsem-builder/runs"));
        let cache_dir = nonempty(CACHE_DIR_ENV).map(PathBuf::from).or_else(|| {
            nonempty("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("capsem-builder"))
        });
        Self {
            source_date_epoch_env: nonempty("SOURCE_DATE_EPOCH"),
            extra_ca_file: nonempty(CA_FILE_ENV).map(PathBuf::from),
            security_mirror: nonempty(SECURITY_MIRROR_ENV).map(|v| v.to_string_lossy().into_owned()),
            guest_bin_dir: nonempty(GUEST_BIN_DIR_ENV).map(PathBuf::from),
            state_dir,
            cache_dir,
            ..Self::default()
        }
    }
}

/// Wall time of each phase, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Connecting and removing dead runs' leftovers.
    pub prepare: f64,
    /// Making sure the base image is there (an inspect when it is cached).
    pub base: f64,
    /// Engine build.
    pub build: f64,
    /// Export + normalization + squashfs write.
    pub export_squashfs: f64,
    /// Removing the container and the built image.
    pub cleanup: f64,
    /// Everything, including rendering and hashing.
    pub total: f64,
}

/// What [`build_rootfs`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct RootfsOutcome {
    /// Image name.
    pub image: String,
    /// Architecture.
    pub arch: Arch,
    /// The squashfs file.
    pub squashfs: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3, hex.
    pub blake3: String,
    /// The build time used.
    pub source_date_epoch: u64,
    /// Where it came from.
    pub source_date_epoch_from: SdeSource,
    /// The base image.
    pub base: BaseOutcome,
    /// BLAKE3 of the rendered Dockerfile.
    pub dockerfile_blake3: String,
    /// BLAKE3 of the build context tar.
    pub context_blake3: String,
    /// Size of the build context tar.
    pub context_bytes: u64,
    /// Extra CA files trusted during the build.
    pub extra_ca: Vec<PathBuf>,
    /// Guest binaries copied in.
    pub guest_binaries: Vec<String>,
    /// `endpoint (API x.y)`.
    pub engine: String,
    /// Phase durations.
    pub timings: Timings,
    /// The squashfs writer's report (normalization actions, dedup, compression, losses).
    pub report: rootfs::Report,
    /// Leftovers of killed runs removed before this build.
    pub stale_removed: Reaped,
    /// Clean-up steps that failed (the build itself succeeded).
    pub cleanup_warnings: Vec<String>,
    /// The built image's tag, when [`BuildOptions::keep_image`] kept it.
    pub kept_image: Option<String>,
}

/// Why a rootfs build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The architecture is not in build.toml.
    #[error("architecture {arch} is not declared in build.toml (declared: {declared})")]
    UnknownArch {
        /// Requested.
        arch: Arch,
        /// Declared ones.
        declared: String,
    },
    /// No usable `SOURCE_DATE_EPOCH`.
    #[error(transparent)]
    Sde(#[from] SdeError),
    /// The Dockerfile did not render.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The extra CA is unreadable or not PEM.
    #[error("extra CA {}: {reason}", path.display())]
    ExtraCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The build context could not be assembled.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// mmdebstrap failed.
    #[error("bootstrapping the base failed: {reason}\n  command: {command}{}{}", tail_text(tail), fix.as_deref().map(|f| format!("\n  fix: {f}")).unwrap_or_default())]
    Bootstrap {
        /// The command line.
        command: String,
        /// What happened.
        reason: String,
        /// Last lines of its stderr.
        tail: Vec<String>,
        /// How to fix it, when known.
        fix: Option<String>,
    },
    /// The engine failed outside the Dockerfile build.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The Dockerfile build failed; its full log was saved.
    #[error("{source}{}", log.as_ref().map(|l| format!("\n  full log: {}", l.display())).unwrap_or_default())]
    Build {
        /// The engine's error (a failed step names its number, instruction and output tail).
        source: EngineError,
        /// Where the full log was written.
        log: Option<PathBuf>,
    },
    /// The output disk is full.
    #[error("out of disk space writing {}: {source}\n  fix: free space there or choose another --output", path.display())]
    OutputDiskFull {
        /// The image being written.
        path: PathBuf,
        /// The writer's error.
        source: RootfsError,
    },
    /// Writing the squashfs failed.
    #[error("writing {}: {source}", path.display())]
    Squashfs {
        /// The image being written.
        path: PathBuf,
        /// The writer's error.
        source: RootfsError,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut s = format!("\n  last {} lines of its output:", tail.len());
    for l in tail {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

impl BuildError {
    pub(crate) fn from_rootfs(path: PathBuf, source: RootfsError) -> BuildError {
        if crate::engine::says_out_of_disk(&crate::engine::error_chain(&source)) {
            BuildError::OutputDiskFull { path, source }
        } else {
            BuildError::Squashfs { path, source }
        }
    }
}

/// Everything the async phases need, prepared synchronously.
struct Job<'a> {
    model: &'a Model,
    arch: Arch,
    plan: crate::plan::RootfsPlan,
    sde: u64,
    sde_from: SdeSource,
    dockerfile: String,
    context: Vec<u8>,
    extra_ca: Vec<PathBuf>,
    out: PathBuf,
    out_arch_dir: PathBuf,
    squash: SquashOptions,
    opts: &'a BuildOptions,
    state_dir: PathBuf,
}

/// Builds `out_dir/<arch>/rootfs.squashfs` from the image definition in `image_dir`.
///
/// Blocking; runs its own async runtime on a separate thread, so it may be called from inside
/// another runtime. Never leaves a partial `rootfs.squashfs`: the file is replaced only when the
/// new one is complete.
pub fn build_rootfs(
    image_dir: &Path,
    model: &Model,
    arch: Arch,
    out_dir: &Path,
    opts: &BuildOptions,
) -> Result<RootfsOutcome, BuildError> {
    let started = Instant::now();
    if !model.build.architectures.contains_key(&arch) {
        let declared: Vec<&str> = model.build.architectures.keys().map(|a| a.as_str()).collect();
        return Err(BuildError::UnknownArch { arch, declared: declared.join(", ") });
    }
    let (sde, sde_from) =
        sde::resolve(model.build.source_date_epoch, opts.source_date_epoch_env.as_deref(), image_dir)?;
    let guest = guest_binaries(opts.guest_bin_dir.as_deref());
    let names: Vec<String> = guest.iter().map(|(n, _)| n.clone()).collect();
    let mut plan = crate::plan::rootfs(model, arch, &names, Some(sde)).expect("declared architecture has a plan");
    let (ca_pem, extra_ca) = extra_ca(image_dir, model, opts)?;
    // The plan layer cannot see the environment: a CA from CAPSEM_BUILD_CA_FILE is added here.
    plan.extra_ca = ca_pem.is_some();
    let dockerfile = crate::render::render_rootfs(&plan)?;
    let artifacts = image_dir.join("artifacts");
    let context = context::assemble(&context::Inputs {
        dockerfile: &dockerfile,
        extra_ca: ca_pem.as_deref(),
        guest_binaries: &guest,
        artifacts: artifacts.is_dir().then_some(artifacts.as_path()),
        files: &[],
        mtime: sde,
    })?;
    let out_arch_dir = out_dir.join(arch.as_str());
    fs::create_dir_all(&out_arch_dir).map_err(|source| BuildError::Io {
        op: "creating",
        path: out_arch_dir.clone(),
        source,
    })?;
    let squash = SquashOptions {
        compressor: model.build.compression,
        level: model.build.compression_level,
        source_date_epoch: u32::try_from(sde).expect("resolve() bounds it"),
        threads: opts.threads,
        ..SquashOptions::default()
    };
    let state_dir = opts.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("capsem-builder-runs"));
    let job = Job {
        model,
        arch,
        plan,
        sde,
        sde_from,
        dockerfile,
        context,
        extra_ca,
        out: out_arch_dir.join(ROOTFS_FILE),
        out_arch_dir,
        squash,
        opts,
        state_dir,
    };
    let result = session::block_on(&job.out, run(&job));
    result.map(|mut outcome| {
        outcome.timings.total = started.elapsed().as_secs_f64();
        outcome
    })
}

/// Guest binaries present in `dir`, among those the image takes.
fn guest_binaries(dir: Option<&Path>) -> Vec<(String, PathBuf)> {
    let Some(dir) = dir else { return Vec::new() };
    crate::plan::GUEST_BINARIES
        .iter()
        .map(|name| ((*name).to_owned(), dir.join(name)))
        .filter(|(_, path)| path.is_file())
        .collect()
}

/// The extra CA: build.toml's, then the environment's, concatenated. `None` when neither is set.
fn extra_ca(
    image_dir: &Path,
    model: &Model,
    opts: &BuildOptions,
) -> Result<(Option<Vec<u8>>, Vec<PathBuf>), BuildError> {
    let mut paths: Vec<PathBuf> = model.build.extra_ca.iter().map(|rel| image_dir.join(rel)).collect();
    if let Some(p) = opts.extra_ca_file.as_ref().filter(|p| !paths.contains(p)) {
        paths.push(p.clone());
    }
    if paths.is_empty() {
        return Ok((None, paths));
    }
    let mut pem = Vec::new();
    for path in &paths {
        let data = fs::read(path).map_err(|e| BuildError::ExtraCa { path: path.clone(), reason: e.to_string() })?;
        if !data.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(BuildError::ExtraCa {
                path: path.clone(),
                reason: "no PEM certificate in it (`-----BEGIN CERTIFICATE-----`)".into(),
            });
        }
        pem.extend_from_slice(&data);
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
    }
    Ok((Some(pem), paths))
}

async fn run(job: &Job<'_>) -> Result<RootfsOutcome, BuildError> {
    let mut session = Session::open(job.opts, &job.state_dir, &format!("rootfs {}", job.arch)).await?;
    let result = std::panic::AssertUnwindSafe(phases(job, &mut session)).catch_unwind().await;
    let (engine, stale_removed, prepare) =
        (session.engine_text.clone(), std::mem::take(&mut session.stale_removed), session.prepare);
    let closed = session.close().await;
    let mut outcome = match result {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    outcome.engine = engine;
    outcome.stale_removed = stale_removed;
    outcome.cleanup_warnings = closed.warnings;
    outcome.timings.prepare = prepare;
    outcome.timings.cleanup = closed.seconds;
    Ok(outcome)
}

async fn phases(job: &Job<'_>, session: &mut Session<'_>) -> Result<RootfsOutcome, BuildError> {
    let arch = job.arch;
    let t = Instant::now();
    let work = stale::work_dir(&session.me);
    let request = base::BaseRequest {
        base: &job.plan.base,
        arch,
        platform: &job.plan.platform,
        sde: job.sde,
        security_override: job.opts.security_mirror.as_deref(),
        work: &work,
    };
    let base = base::ensure(&session.engine, &request, &mut session.progress).await?;
    let base_time = t.elapsed().as_secs_f64();

    // Build.
    let t = Instant::now();
    let tag = session.new_tag(&format!("capsem-rootfs-{}", arch.as_str()));
    session.progress.message(&format!(
        "build: {tag} from {} ({} KiB context)",
        base.reference,
        job.context.len() >> 10
    ));
    let log_path = job.out_arch_dir.join(BUILD_LOG_FILE);
    session.build(job.context.clone(), &tag, &job.plan.platform, job.sde, job.opts.keep_image, &log_path).await?;
    let build_time = t.elapsed().as_secs_f64();

    // Export into squashfs.
    let t = Instant::now();
    let name = tag.replace(['/', ':'], "-").replacen("capsem-rootfs-", "capsem-export-", 1);
    let container = session.create_container(&tag, &name).await?;
    session.progress.message(&format!(
        "export: container {} → {}",
        crate::engine::short_id(&container),
        job.out.display()
    ));
    let report = export::container_to_squashfs(
        &session.engine,
        &container,
        job.out.clone(),
        job.squash.clone(),
        &mut session.progress,
    )
    .await?;
    let export_time = t.elapsed().as_secs_f64();

    let (size, blake3) = hash_file(&job.out)?;
    session.progress.message(&format!("done: {} ({} MiB, blake3 {blake3})", job.out.display(), size >> 20));
    Ok(RootfsOutcome {
        image: job.model.image.name.clone(),
        arch,
        squashfs: job.out.clone(),
        size,
        blake3,
        source_date_epoch: job.sde,
        source_date_epoch_from: job.sde_from.clone(),
        base,
        dockerfile_blake3: blake3::hash(job.dockerfile.as_bytes()).to_hex().to_string(),
        context_blake3: blake3::hash(&job.context).to_hex().to_string(),
        context_bytes: job.context.len() as u64,
        extra_ca: job.extra_ca.clone(),
        guest_binaries: job.plan.guest_binaries.clone(),
        engine: String::new(),
        timings: Timings { base: base_time, build: build_time, export_squashfs: export_time, ..Timings::default() },
        report,
        stale_removed: Reaped::default(),
        cleanup_warnings: Vec::new(),
        kept_image: job.opts.keep_image.then_some(tag),
    })
}

/// Size and BLAKE3 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), BuildError> {
    let io = |source| BuildError::Io { op: "hashing", path: path.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Writes the full build log (via a temporary name). Returns whether it was written.
pub(crate) fn save_log(path: &Path, lines: &[String]) -> bool {
    let tmp = path.with_extension(format!("log.tmp-{}", std::process::id()));
    let mut text = lines.join("\n");
    text.push('\n');
    let ok = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path)).is_ok();
    if !ok {
        let _ = fs::remove_file(&tmp);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_environment() {
        let vars = |k: &str| -> Option<OsString> {
            match k {
                "SOURCE_DATE_EPOCH" => Some("1700000000".into()),
                CA_FILE_ENV => Some("/etc/ssl/certs/ca-certificates.crt".into()),
                SECURITY_MIRROR_ENV => Some("none".into()),
                GUEST_BIN_DIR_ENV => Some("/tmp/guest".into()),
                "HOME" => Some("/home/u".into()),
                "XDG_STATE_HOME" => Some("".into()),
                _ => None,
            }
        };
        let o = BuildOptions::from_vars(vars);
        assert_eq!(o.source_date_epoch_env.as_deref(), Some("1700000000".as_ref()));
        assert_eq!(o.extra_ca_file.as_deref(), Some(Path::new("/etc/ssl/certs/ca-certificates.crt")));
        assert_eq!(o.security_mirror.as_deref(), Some("none"));
        assert_eq!(o.guest_bin_dir.as_deref(), Some(Path::new("/tmp/guest")));
        assert_eq!(o.state_dir.as_deref(), Some(Path::new("/home/u/.local/state/capsem-builder/runs")));
        assert_eq!(o.cache_dir.as_deref(), Some(Path::new("/home/u/.cache/capsem-builder")));
        let none = BuildOptions::from_vars(|_| None);
        assert!(none.extra_ca_file.is_none() && none.source_date_epoch_env.is_none() && none.state_dir.is_none());
        assert!(none.guest_bin_dir.is_none());
    }
}
