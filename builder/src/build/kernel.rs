//! Building the kernel: definition → engine build of the kernel template → `<out>/<arch>/vmlinuz`,
//! cached by content hash.
//!
//! The kernel Dockerfile (builder/templates/Dockerfile.kernel.j2) fetches the pinned source
//! ([`crate::kernel_source`]), checks its sha256, applies the image's defconfig fragment, fails
//! listing any fragment line that did not survive `olddefconfig`, and builds with the
//! `KBUILD_BUILD_*` variables fixed, so the same source + config + toolchain give the same
//! `vmlinuz`. Its output stage holds `vmlinuz`, the resolved `kernel.config`, Debian's static
//! `busybox` (for the initrd) and `toolchain.txt` (package versions that made the bytes).
//!
//! # Cache
//!
//! The build context — the rendered Dockerfile (which names the base image by its content-hash
//! tag, the source's sha256, the busybox version and `SOURCE_DATE_EPOCH`) and the defconfig —
//! together with the platform is the whole input, so its BLAKE3 is the cache key. An entry is a
//! directory `<cache>/kernel/<key>/` holding the four output files and `entry.json` with their
//! BLAKE3s; it is written under a temporary name and renamed into place, and checked against
//! `entry.json` when read (a damaged entry is removed and rebuilt). A hit costs a hash of the
//! context and a copy of `vmlinuz`: seconds.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::session::{self, Session};
use super::stale;
use super::{BaseOutcome, BuildError, BuildOptions, SdeSource, base, context, sde};
use crate::kernel_source::KernelSource;
use crate::model::{Arch, Model};

/// Name of the kernel inside `<out>/<arch>/`.
pub const VMLINUZ_FILE: &str = "vmlinuz";
/// Name of the build log saved next to it when the engine build fails.
pub const KERNEL_LOG_FILE: &str = "kernel-build.log";
/// Files of a cache entry, as the output stage names them.
const OUTPUTS: [&str; 4] = ["vmlinuz", "kernel.config", "busybox", "toolchain.txt"];
/// Largest output stage export we accept (the kernel and busybox are a few MiB).
const MAX_EXPORT: u64 = 512 << 20;

/// What [`build_kernel`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct KernelOutcome {
    /// Architecture.
    pub arch: Arch,
    /// `<out>/<arch>/vmlinuz`.
    pub vmlinuz: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3.
    pub blake3: String,
    /// The cache entry's static busybox (input of the initrd).
    pub busybox: PathBuf,
    /// BLAKE3 of the resolved `.config`.
    pub kernel_config_b3: String,
    /// BLAKE3 of the image's defconfig fragment.
    pub defconfig_b3: String,
    /// BLAKE3 of the rendered Dockerfile.
    pub dockerfile_b3: String,
    /// The pinned source built.
    pub source: KernelSource,
    /// Versions of the packages that made the bytes (`toolchain.txt`).
    pub toolchain: BTreeMap<String, String>,
    /// The cache key (BLAKE3 of platform + build context).
    pub cache_key: String,
    /// Whether the cache had it.
    pub cached: bool,
    /// The base image, when the engine built it.
    pub base: Option<BaseOutcome>,
    /// `SOURCE_DATE_EPOCH` used.
    pub source_date_epoch: u64,
    /// Where it came from.
    pub source_date_epoch_from: SdeSource,
    /// Wall time in seconds.
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    files: BTreeMap<String, String>,
}

/// Builds (or takes from the cache) `out_dir/<arch>/vmlinuz`.
pub fn build_kernel(
    image_dir: &Path,
    model: &Model,
    arch: Arch,
    source: &KernelSource,
    out_dir: &Path,
    opts: &BuildOptions,
) -> Result<KernelOutcome, BuildError> {
    let started = Instant::now();
    let (sde, sde_from) =
        sde::resolve(model.build.source_date_epoch, opts.source_date_epoch_env.as_deref(), image_dir)?;
    let plan = crate::plan::kernel(model, arch, Some(sde), source).ok_or_else(|| BuildError::UnknownArch {
        arch,
        declared: model.build.architectures.keys().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let dockerfile = crate::render::render_kernel(&plan)?;
    let defconfig_path = image_dir.join("config").join(&plan.defconfig);
    let defconfig = fs::read(&defconfig_path).map_err(|source| BuildError::Io {
        op: "reading the kernel config fragment",
        path: defconfig_path.clone(),
        source,
    })?;
    let context = context::assemble(&context::Inputs {
        dockerfile: &dockerfile,
        extra_ca: None,
        guest_binaries: &[],
        artifacts: None,
        files: &[(plan.defconfig.as_str(), &defconfig)],
        mtime: sde,
    })?;
    let mut keyed = blake3::Hasher::new();
    keyed.update(b"capsem kernel cache v1\0");
    keyed.update(plan.platform.as_bytes());
    keyed.update(b"\0");
    keyed.update(&context);
    let key = keyed.finalize().to_hex().to_string();

    let out_arch_dir = out_dir.join(arch.as_str());
    fs::create_dir_all(&out_arch_dir).map_err(|source| BuildError::Io {
        op: "creating",
        path: out_arch_dir.clone(),
        source,
    })?;
    let cache_root = opts.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("capsem-builder-cache"));
    let kernel_cache = cache_root.join("kernel");
    let entry_dir = kernel_cache.join(&key);
    let mut progress = crate::engine::Progress::new(opts.progress);

    let (cached, base) = match read_entry(&entry_dir, &key) {
        Ok(true) => {
            progress.message(&format!("kernel {arch}: cached ({})", entry_dir.display()));
            (true, None)
        }
        found => {
            if let Err(problem) = found {
                progress.message(&format!(
                    "kernel {arch}: cache entry {} is damaged ({problem}); rebuilding",
                    entry_dir.display()
                ));
                let _ = fs::remove_dir_all(&entry_dir);
            }
            let state_dir = opts.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("capsem-builder-runs"));
            let job =
                Job { plan: &plan, arch, sde, context, opts, state_dir, log_path: out_arch_dir.join(KERNEL_LOG_FILE) };
            let vmlinuz = out_arch_dir.join(VMLINUZ_FILE);
            let (files, base) = session::block_on(&vmlinuz, run(&job))?;
            write_entry(&kernel_cache, &key, &files)?;
            (false, Some(base))
        }
    };

    let vmlinuz = out_arch_dir.join(VMLINUZ_FILE);
    copy_atomic(&entry_dir.join("vmlinuz"), &vmlinuz)?;
    let (size, blake3) = super::hash_file(&vmlinuz)?;
    let config = read(&entry_dir.join("kernel.config"))?;
    let toolchain = read(&entry_dir.join("toolchain.txt"))?;
    progress.message(&format!("kernel {arch}: {} ({} KiB, blake3 {blake3})", vmlinuz.display(), size >> 10));
    Ok(KernelOutcome {
        arch,
        vmlinuz,
        size,
        blake3,
        busybox: entry_dir.join("busybox"),
        kernel_config_b3: blake3::hash(&config).to_hex().to_string(),
        defconfig_b3: blake3::hash(&defconfig).to_hex().to_string(),
        dockerfile_b3: blake3::hash(dockerfile.as_bytes()).to_hex().to_string(),
        source: source.clone(),
        toolchain: parse_toolchain(&String::from_utf8_lossy(&toolchain)),
        cache_key: key,
        cached,
        base,
        source_date_epoch: sde,
        source_date_epoch_from: sde_from,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct Job<'a> {
    plan: &'a crate::plan::KernelPlan,
    arch: Arch,
    sde: u64,
    context: Vec<u8>,
    opts: &'a BuildOptions,
    state_dir: PathBuf,
    log_path: PathBuf,
}

async fn run(job: &Job<'_>) -> Result<(BTreeMap<String, Vec<u8>>, BaseOutcome), BuildError> {
    let mut session = Session::open(job.opts, &job.state_dir, &format!("kernel {}", job.arch)).await?;
    let result = std::panic::AssertUnwindSafe(phases(job, &mut session)).catch_unwind().await;
    session.close().await;
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn phases(
    job: &Job<'_>,
    session: &mut Session<'_>,
) -> Result<(BTreeMap<String, Vec<u8>>, BaseOutcome), BuildError> {
    let work = stale::work_dir(&session.me);
    let request = base::BaseRequest {
        base: &job.plan.base,
        arch: job.arch,
        platform: &job.plan.platform,
        sde: job.sde,
        security_override: job.opts.security_mirror.as_deref(),
        work: &work,
    };
    let base = base::ensure(&session.engine, &request, &mut session.progress).await?;
    let tag = session.new_tag(&format!("capsem-kernel-{}", job.arch.as_str()));
    session.progress.message(&format!(
        "kernel {}: building Linux {} ({} source) as {tag}; this takes minutes",
        job.arch, job.plan.source.linux_version, job.plan.source.provider
    ));
    session.build(job.context.clone(), &tag, &job.plan.platform, job.sde, false, &job.log_path).await?;
    let name = tag.replace(['/', ':'], "-").replacen("capsem-kernel-", "capsem-kexport-", 1);
    let container = session.create_container(&tag, &name).await?;
    let mut stream = session.engine.export_container(&container);
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        tar.extend_from_slice(&chunk);
        if tar.len() as u64 > MAX_EXPORT {
            return Err(export_error(format!("the kernel output stage is over {} MiB", MAX_EXPORT >> 20)));
        }
    }
    drop(stream);
    Ok((outputs_from_tar(&tar)?, base))
}

fn export_error(reason: String) -> BuildError {
    BuildError::Io {
        op: "reading the kernel build's output",
        path: PathBuf::from("/"),
        source: std::io::Error::other(reason),
    }
}

/// The output files from the exported output stage.
fn outputs_from_tar(tar: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BuildError> {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| export_error(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| export_error(e.to_string()))?;
        let path = entry.path().map_err(|e| export_error(e.to_string()))?.to_string_lossy().into_owned();
        let name = path.trim_start_matches("./").trim_start_matches('/').to_owned();
        if OUTPUTS.contains(&name.as_str()) && entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(|e| export_error(e.to_string()))?;
            files.insert(name, data);
        }
    }
    if let Some(missing) = OUTPUTS.iter().find(|n| !files.contains_key(**n)) {
        return Err(export_error(format!("/{missing} is missing from the kernel output stage")));
    }
    Ok(files)
}

/// `Ok(true)`: a complete, intact entry. `Ok(false)`: none. `Err`: present but damaged.
fn read_entry(dir: &Path, key: &str) -> Result<bool, String> {
    let text = match fs::read(dir.join("entry.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Ok(false),
        Err(e) => return Err(format!("entry.json: {e}")),
    };
    let entry: Entry = serde_json::from_slice(&text).map_err(|e| format!("entry.json: {e}"))?;
    if entry.key != key {
        return Err(format!("entry.json is for key {}", entry.key));
    }
    for name in OUTPUTS {
        let want = entry.files.get(name).ok_or_else(|| format!("entry.json does not list {name}"))?;
        let data = fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let got = blake3::hash(&data).to_hex().to_string();
        if &got != want {
            return Err(format!("{name} has blake3 {got}, entry.json says {want}"));
        }
    }
    Ok(true)
}

/// Writes an entry under a temporary name, then renames it into place.
fn write_entry(cache: &Path, key: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<(), BuildError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { op, path, source }
    };
    fs::create_dir_all(cache).map_err(io("creating", cache))?;
    let tmp = cache.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
    let mut entry = Entry { key: key.to_owned(), files: BTreeMap::new() };
    for (name, data) in files {
        fs::write(tmp.join(name), data).map_err(io("writing", &tmp.join(name)))?;
        entry.files.insert(name.clone(), blake3::hash(data).to_hex().to_string());
    }
    let json = serde_json::to_vec_pretty(&entry).expect("entry serializes");
    fs::write(tmp.join("entry.json"), json).map_err(io("writing", &tmp.join("entry.json")))?;
    let target = cache.join(key);
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target).map_err(io("renaming into place", &target))
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|source| BuildError::Io { op: "reading", path: path.to_path_buf(), source })
}

/// Copies via a temporary file in the target's directory, then renames.
pub(crate) fn copy_atomic(from: &Path, to: &Path) -> Result<(), BuildError> {
    capsem_trust::atomic::copy(from, to).map_err(|source| BuildError::Io {
        op: "writing",
        path: to.to_path_buf(),
        source,
    })
}

/// `name\tversion` lines → map.
fn parse_toolchain(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<String, Vec<u8>> {
        OUTPUTS.iter().map(|n| ((*n).to_owned(), format!("{n} bytes").into_bytes())).collect()
    }

    #[test]
    fn cache_entries_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = "k".repeat(64);
        assert_eq!(read_entry(&dir.path().join(&key), &key), Ok(false));
        write_entry(dir.path(), &key, &files()).unwrap();
        let entry = dir.path().join(&key);
        assert_eq!(read_entry(&entry, &key), Ok(true));
        assert!(read_entry(&entry, "other").unwrap_err().contains("is for key"));
        fs::write(entry.join("busybox"), b"tampered").unwrap();
        assert!(read_entry(&entry, &key).unwrap_err().starts_with("busybox has blake3"));
        fs::remove_file(entry.join("vmlinuz")).unwrap();
        assert!(read_entry(&entry, &key).unwrap_err().starts_with("vmlinuz:"));
        // Rewriting replaces the damaged entry; no temporary directory is left behind.
        write_entry(dir.path(), &key, &files()).unwrap();
        assert_eq!(read_entry(&entry, &key), Ok(true));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn outputs_come_from_the_exported_tar() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files().iter().chain([(&"etc/other".to_owned(), &b"x".to_vec())]) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        assert_eq!(outputs_from_tar(&tar).unwrap(), files());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        b.append_data(&mut h, "vmlinuz", &b"x"[..]).unwrap();
        let e = outputs_from_tar(&b.into_inner().unwrap()).unwrap_err().to_string();
        assert!(e.contains("/kernel.config is missing"), "{e}");
    }

    #[test]
    fn toolchain_lines_parse() {
        let t = parse_toolchain("gcc-12\t12.2.0-14\nbinutils\t2.40-2\nunknown-pkg\t\n");
        assert_eq!(t.len(), 2);
        assert_eq!(t["gcc-12"], "12.2.0-14");
    }
}
