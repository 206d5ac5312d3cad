//! A whole release: kernel, initrd and rootfs for every architecture, then the bill of materials,
//! SBOMs, audit findings, `manifest.json`, `B3SUMS` and the signature.
//!
//! Everything is built into a staging directory `<out>/.build-<pid>/` and moved into place only
//! when every architecture succeeded: assets first, then `B3SUMS`, then `manifest.json`, then its
//! signature. A run that fails or is killed therefore never mixes new assets with a manifest that
//! vouches for them; at worst an old manifest sits next to new assets and verification rejects
//! them. Staging directories of dead runs are removed by the next run.
//!
//! An architecture this host cannot build (no emulation for a foreign architecture) is reported
//! with the reason in [`ReleaseOutcome::skipped`] and left out of the manifest; if no architecture
//! can be built the release fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use capsem_trust::manifest::{self, ArchEntry, Asset, BuilderInfo, Inputs, Manifest};
use serde::Serialize;

use super::kernel::{self, KernelOutcome};
use super::{BuildError, BuildOptions, RootfsOutcome};
use crate::kernel_source::{self, Provider};
use crate::model::{Arch, BaseImage, Model};

/// Name of the initrd inside `<out>/<arch>/`.
pub const INITRD_FILE: &str = "initrd.img";
/// Name of the SBOM inside `<out>/<arch>/`.
pub const SBOM_FILE: &str = "sbom.cdx.json";
/// The init script the initrd runs, from the image's `artifacts/`.
pub const INIT_ARTIFACT: &str = "capsem-init";

/// Which parts to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Kernel, initrd, rootfs, then manifest, B3SUMS and signature.
    Release,
    /// `vmlinuz` and `initrd.img` only (no manifest).
    Kernel,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ReleaseRequest<'a> {
    /// The image definition directory.
    pub image_dir: &'a Path,
    /// Its validated model.
    pub model: &'a Model,
    /// Architectures to build (all declared ones for a release).
    pub archs: Vec<Arch>,
    /// The assets directory.
    pub out_dir: &'a Path,
    /// Build options (engine, cache, environment).
    pub opts: &'a BuildOptions,
    /// Kernel source provider.
    pub kernel_source: Provider,
    /// minisign secret key; `None`: the manifest stays unsigned (and says so).
    pub sign_key: Option<PathBuf>,
    /// Scanner report to audit against.
    pub audit_report: Option<PathBuf>,
    /// What to build.
    pub parts: Parts,
}

/// One architecture's build results.
#[derive(Debug, Clone, Serialize)]
pub struct ArchOutcome {
    /// Architecture.
    pub arch: Arch,
    /// The kernel build.
    pub kernel: KernelOutcome,
    /// The initrd.
    pub initrd: Asset,
    /// The rootfs build (release only).
    pub rootfs: Option<RootfsOutcome>,
}

/// What [`build_release`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseOutcome {
    /// Built architectures.
    pub built: Vec<ArchOutcome>,
    /// Architectures not built, with the reason.
    pub skipped: Vec<(Arch, String)>,
    /// `manifest.json`, when a release was built.
    pub manifest: Option<PathBuf>,
    /// Its signature, when a key was given.
    pub signature: Option<PathBuf>,
    /// BLAKE3 of manifest.json.
    pub manifest_b3: Option<String>,
    /// Audit findings that fail the image's policy (ids), when an audit ran.
    pub audit_failures: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Why a release failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// An architecture failed to build.
    #[error("{arch}: {source}")]
    Build {
        /// Which one.
        arch: Arch,
        /// Why.
        source: BuildError,
    },
    /// No declared architecture can be built here.
    #[error("no architecture can be built on this host: {0}")]
    NothingBuildable(String),
    /// The kernel source could not be resolved.
    #[error(transparent)]
    KernelSource(#[from] kernel_source::KernelSourceError),
    /// The initrd could not be written.
    #[error("{arch}: initrd: {message}")]
    Initrd {
        /// Which architecture.
        arch: Arch,
        /// Why.
        message: String,
    },
    /// The bill of materials could not be read from the rootfs.
    #[error("{arch}: reading the bill of materials: {message}")]
    Bom {
        /// Which architecture.
        arch: Arch,
        /// Why.
        message: String,
    },
    /// The audit report could not be used.
    #[error("audit: {0}")]
    Audit(String),
    /// Per-architecture releases could not be merged.
    #[error("merge: {0}")]
    Merge(String),
    /// Signing failed.
    #[error("signing manifest.json: {0}")]
    Sign(String),
    /// Checksums could not be written.
    #[error("writing B3SUMS: {0}")]
    B3sums(String),
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

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let path = path.to_path_buf();
    move |source| ReleaseError::Io { op, path, source }
}

/// Why this host cannot build `arch`, if it cannot.
pub fn unbuildable_reason(arch: Arch) -> Option<String> {
    if Some(arch) == Arch::host() {
        return None;
    }
    let handler = match arch {
        Arch::X86_64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    };
    if Path::new("/proc/sys/fs/binfmt_misc").join(handler).exists() {
        return None;
    }
    Some(format!(
        "this is a {} host and binfmt_misc has no {handler} handler, so the engine cannot run {arch} build \
         steps; build {arch} on a native {arch} machine (ci/release.yml does) or register qemu-user-static",
        std::env::consts::ARCH
    ))
}

/// Builds the release described by `req`.
pub fn build_release(req: &ReleaseRequest<'_>) -> Result<ReleaseOutcome, ReleaseError> {
    let started = Instant::now();
    let mut skipped = Vec::new();
    let mut archs = Vec::new();
    for &arch in &req.archs {
        match unbuildable_reason(arch) {
            Some(reason) => skipped.push((arch, reason)),
            None => archs.push(arch),
        }
    }
    if archs.is_empty() {
        let why: Vec<String> = skipped.iter().map(|(a, r)| format!("{a}: {r}")).collect();
        return Err(ReleaseError::NothingBuildable(why.join("; ")));
    }
    // A bad key or report fails now, not after the kernel and rootfs builds.
    let key = load_key(req.sign_key.as_deref())?;
    let report = match &req.audit_report {
        Some(path) => Some(crate::audit::read_report(path).map_err(|e| ReleaseError::Audit(e.to_string()))?),
        None => None,
    };
    let prepared = Prepared { key, report };
    fs::create_dir_all(req.out_dir).map_err(io("creating", req.out_dir))?;
    remove_dead_staging(req.out_dir);
    let staging = req.out_dir.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    let result = build_staged(req, &prepared, &archs, &staging);
    if result.is_err() {
        keep_logs(&staging, req.out_dir);
    }
    let _ = fs::remove_dir_all(&staging);
    let (built, manifest, signature, manifest_b3, audit_failures) = result?;
    Ok(ReleaseOutcome {
        built,
        skipped,
        manifest,
        signature,
        manifest_b3,
        audit_failures,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Staged = (Vec<ArchOutcome>, Option<PathBuf>, Option<PathBuf>, Option<String>, Vec<String>);

/// The signing key and the scanner report, read before anything is built.
struct Prepared {
    key: Option<crate::sign::SigningKey>,
    report: Option<crate::audit::ScanReport>,
}

/// The signing key at `path` (password from the environment), or a clear error naming it.
fn load_key(path: Option<&Path>) -> Result<Option<crate::sign::SigningKey>, ReleaseError> {
    path.map(|p| crate::sign::SigningKey::load(p, crate::sign::password_from_env().as_deref()))
        .transpose()
        .map_err(|e| ReleaseError::Sign(e.to_string()))
}

fn build_staged(
    req: &ReleaseRequest<'_>,
    prepared: &Prepared,
    archs: &[Arch],
    staging: &Path,
) -> Result<Staged, ReleaseError> {
    let model = req.model;
    let mut built = Vec::new();
    let mut entries = Vec::new();
    let mut audit_failures = Vec::new();
    let definition_b3 = definition_hash(req.image_dir)?;
    for &arch in archs {
        let fail = |source| ReleaseError::Build { arch, source };
        let cfg = &model.build.architectures[&arch];
        let source = kernel_source::resolve(&cfg.kernel_branch, req.kernel_source)?;
        let k = kernel::build_kernel(req.image_dir, model, arch, &source, staging, req.opts).map_err(fail)?;
        let initrd = write_initrd(req, arch, &k, staging)?;
        let rootfs = match req.parts {
            Parts::Kernel => None,
            Parts::Release => Some(super::build_rootfs(req.image_dir, model, arch, staging, req.opts).map_err(fail)?),
        };
        if let Some(r) = &rootfs {
            let (entry, failures) =
                arch_entry(req, prepared.report.as_ref(), arch, &k, &initrd, r, &definition_b3, staging)?;
            entries.push(entry);
            audit_failures.extend(failures);
        }
        built.push(ArchOutcome { arch, kernel: k, initrd, rootfs });
    }

    // Move the assets into place.
    for a in &built {
        let dir = req.out_dir.join(a.arch.as_str());
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let mut names = vec![kernel::VMLINUZ_FILE, INITRD_FILE];
        if a.rootfs.is_some() {
            names.extend([super::ROOTFS_FILE, SBOM_FILE]);
        }
        for name in names {
            let from = staging.join(a.arch.as_str()).join(name);
            let to = dir.join(name);
            fs::rename(&from, &to).map_err(io("moving into place", &to))?;
        }
    }
    if req.parts == Parts::Kernel {
        return Ok((relocate(built, staging, req.out_dir), None, None, None, audit_failures));
    }

    let sde = built[0].kernel.source_date_epoch;
    entries.sort_by(|a, b| a.arch.cmp(&b.arch));
    // The boot-time settings (web policy, resources, environment, AI, MCP) the runtime applies.
    let settings_bytes = crate::settings::to_json(model).into_bytes();
    let settings_path = req.out_dir.join(manifest::SETTINGS_FILE);
    capsem_trust::atomic::write(&settings_path, &settings_bytes).map_err(io("writing", &settings_path))?;
    let settings = Asset {
        filename: manifest::SETTINGS_FILE.to_owned(),
        size: settings_bytes.len() as u64,
        b3: blake3::hash(&settings_bytes).to_hex().to_string(),
    };
    let manifest = Manifest {
        format: manifest::FORMAT,
        name: model.image.name.clone(),
        version: model.image.version.clone(),
        build_timestamp: manifest::rfc3339(sde),
        source_date_epoch: sde,
        builder: BuilderInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backhand: crate::rootfs::BACKHAND_VERSION.to_owned(),
            zstd: crate::rootfs::zstd_version(),
        },
        settings,
        architectures: entries,
    };
    let bytes = manifest.to_json();
    let manifest_b3 = blake3::hash(&bytes).to_hex().to_string();
    let staged_manifest = staging.join(manifest::MANIFEST_FILE);
    fs::write(&staged_manifest, &bytes).map_err(io("writing", &staged_manifest))?;
    let files = capsem_trust::b3sums::release_files(&manifest);
    capsem_trust::b3sums::write_b3sums(req.out_dir, &files).map_err(|e| ReleaseError::B3sums(e.to_string()))?;
    let signature_target = req.out_dir.join(manifest::SIGNATURE_FILE);
    // A release that fails its audit policy is never signed.
    let staged_signature = match &prepared.key {
        Some(_) if !audit_failures.is_empty() => None,
        Some(key) => {
            Some(crate::sign::sign_file_with(&staged_manifest, key).map_err(|e| ReleaseError::Sign(e.to_string()))?)
        }
        None => None,
    };
    // An old signature never stays next to a new manifest.
    match fs::remove_file(&signature_target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the previous signature", &signature_target)(e)),
    }
    let manifest_path = req.out_dir.join(manifest::MANIFEST_FILE);
    fs::rename(&staged_manifest, &manifest_path).map_err(io("moving into place", &manifest_path))?;
    let signature = match staged_signature {
        Some(staged) => {
            fs::rename(&staged, &signature_target).map_err(io("moving into place", &signature_target))?;
            Some(signature_target)
        }
        None => None,
    };
    Ok((relocate(built, staging, req.out_dir), Some(manifest_path), signature, Some(manifest_b3), audit_failures))
}

/// Merges per-architecture releases (each built with `--arch` on its own native machine) into
/// one: the architectures' files are copied into `out`, and one manifest listing all of them is
/// written with `B3SUMS` and, given a key, its signature. Each input is checked against its own
/// manifest first, and the inputs must agree on everything but their architectures; the merged
/// manifest is the one a single multi-architecture build would have written.
pub fn merge_releases(inputs: &[PathBuf], out: &Path, sign_key: Option<&Path>) -> Result<PathBuf, ReleaseError> {
    let key = load_key(sign_key)?;
    let merge_err = |m: String| ReleaseError::Merge(m);
    let mut merged: Option<Manifest> = None;
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in inputs {
        let path = dir.join(manifest::MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(io("reading", &path))?;
        let m = Manifest::parse(&bytes).map_err(|e| merge_err(format!("{}: {e}", path.display())))?;
        let bad: Vec<String> = capsem_trust::b3sums::check_assets(dir, &m)
            .iter()
            .filter(|c| !c.is_ok())
            .map(|c| format!("{}: {}", c.path, c.detail()))
            .collect();
        if !bad.is_empty() {
            return Err(merge_err(format!("{} does not match its manifest: {}", dir.display(), bad.join("; "))));
        }
        for a in &m.architectures {
            if let Some(other) = sources.insert(a.arch.clone(), dir.clone()) {
                return Err(merge_err(format!("{} is in both {} and {}", a.arch, other.display(), dir.display())));
            }
        }
        merged = Some(match merged.take() {
            None => m,
            Some(mut acc) => {
                let same = acc.format == m.format
                    && acc.name == m.name
                    && acc.version == m.version
                    && acc.source_date_epoch == m.source_date_epoch
                    && acc.builder == m.builder
                    && acc.settings == m.settings;
                if !same {
                    return Err(merge_err(format!(
                        "{} was built from another image, version, SOURCE_DATE_EPOCH, builder or settings than {}",
                        dir.display(),
                        inputs[0].display()
                    )));
                }
                acc.architectures.extend(m.architectures);
                acc
            }
        });
    }
    let mut m = merged.ok_or_else(|| merge_err("no input directories".into()))?;
    m.architectures.sort_by(|a, b| a.arch.cmp(&b.arch));
    for a in &m.architectures {
        let from_dir = sources[&a.arch].join(&a.arch);
        let to_dir = out.join(&a.arch);
        fs::create_dir_all(&to_dir).map_err(io("creating", &to_dir))?;
        for asset in a.assets.iter().chain(std::iter::once(&a.sbom)) {
            kernel::copy_atomic(&from_dir.join(&asset.filename), &to_dir.join(&asset.filename))
                .map_err(|e| merge_err(e.to_string()))?;
        }
    }
    kernel::copy_atomic(&inputs[0].join(&m.settings.filename), &out.join(&m.settings.filename))
        .map_err(|e| merge_err(e.to_string()))?;
    let files = capsem_trust::b3sums::release_files(&m);
    capsem_trust::b3sums::write_b3sums(out, &files).map_err(|e| ReleaseError::B3sums(e.to_string()))?;
    let manifest_path = out.join(manifest::MANIFEST_FILE);
    let signature = out.join(manifest::SIGNATURE_FILE);
    let _ = fs::remove_file(&signature);
    capsem_trust::atomic::write(&manifest_path, &m.to_json()).map_err(io("writing", &manifest_path))?;
    if let Some(key) = &key {
        crate::sign::sign_file_with(&manifest_path, key).map_err(|e| ReleaseError::Sign(e.to_string()))?;
    }
    Ok(manifest_path)
}

/// Rewrites the outcome's paths from the staging directory to their final place.
fn relocate(mut built: Vec<ArchOutcome>, staging: &Path, out: &Path) -> Vec<ArchOutcome> {
    let fix = |p: &mut PathBuf| {
        if let Ok(rest) = p.strip_prefix(staging) {
            *p = out.join(rest);
        }
    };
    for a in &mut built {
        fix(&mut a.kernel.vmlinuz);
        if let Some(r) = a.rootfs.as_mut() {
            fix(&mut r.squashfs);
        }
    }
    built
}

fn write_initrd(
    req: &ReleaseRequest<'_>,
    arch: Arch,
    k: &KernelOutcome,
    staging: &Path,
) -> Result<Asset, ReleaseError> {
    let fail = |message: String| ReleaseError::Initrd { arch, message };
    let init_path = req.image_dir.join("artifacts").join(INIT_ARTIFACT);
    let init = fs::read(&init_path).map_err(|e| fail(format!("reading {}: {e}", init_path.display())))?;
    let busybox = fs::read(&k.busybox).map_err(|e| fail(format!("reading {}: {e}", k.busybox.display())))?;
    let mut guest_binaries = Vec::new();
    if let Some(dir) = &req.opts.guest_bin_dir {
        for name in crate::plan::GUEST_BINARIES {
            let path = dir.join(name);
            if path.is_file() {
                let data = fs::read(&path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
                guest_binaries.push(((*name).to_owned(), data));
            }
        }
    }
    let spec = crate::initrd::InitrdSpec {
        busybox,
        init,
        guest_binaries,
        source_date_epoch: u32::try_from(k.source_date_epoch)
            .map_err(|_| fail("SOURCE_DATE_EPOCH past 2106".into()))?,
    };
    let out = staging.join(arch.as_str()).join(INITRD_FILE);
    crate::initrd::write_initrd(&spec, &out).map_err(|e| fail(e.to_string()))?;
    let (size, b3) = super::hash_file(&out).map_err(|e| fail(e.to_string()))?;
    Ok(Asset { filename: INITRD_FILE.to_owned(), size, b3 })
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn arch_entry(
    req: &ReleaseRequest<'_>,
    report: Option<&crate::audit::ScanReport>,
    arch: Arch,
    k: &KernelOutcome,
    initrd: &Asset,
    r: &RootfsOutcome,
    definition_b3: &str,
    staging: &Path,
) -> Result<(ArchEntry, Vec<String>), ReleaseError> {
    let model = req.model;
    let packages =
        crate::bom::read_packages(&r.squashfs).map_err(|e| ReleaseError::Bom { arch, message: e.to_string() })?;
    let sbom =
        crate::bom::cyclonedx(&model.image.name, &model.image.version, arch.as_str(), r.source_date_epoch, &packages);
    let sbom_path = staging.join(arch.as_str()).join(SBOM_FILE);
    fs::write(&sbom_path, &sbom).map_err(io("writing", &sbom_path))?;
    let (vulnerabilities, audited, failures) = match report {
        None => (Vec::new(), None, Vec::new()),
        Some(report) => {
            let outcome = crate::audit::evaluate(report, &packages, &model.audit);
            let failing = outcome.failing.iter().map(|v| format!("{} ({} {})", v.id, v.package, v.severity)).collect();
            (outcome.vulnerabilities, Some(outcome.info), failing)
        }
    };
    let mut assets = vec![
        initrd.clone(),
        Asset { filename: super::ROOTFS_FILE.to_owned(), size: r.size, b3: r.blake3.clone() },
        Asset { filename: kernel::VMLINUZ_FILE.to_owned(), size: k.size, b3: k.blake3.clone() },
    ];
    assets.sort_by(|a, b| a.filename.cmp(&b.filename));
    let mut base = BTreeMap::new();
    match &model.build.architectures[&arch].base {
        BaseImage::Registry { reference } => {
            base.insert("reference".to_owned(), reference.clone());
        }
        BaseImage::Bootstrap { suite, mirror, variant, components } => {
            base.insert("bootstrap_tag".to_owned(), r.base.reference.clone());
            base.insert("suite".to_owned(), suite.clone());
            base.insert("mirror".to_owned(), mirror.clone());
            base.insert("variant".to_owned(), variant.clone());
            base.insert("components".to_owned(), components.join(" "));
        }
    }
    // Not the engine's image id: an imported image's id covers its import time, so it differs
    // between machines for the same bytes; the bootstrap tag is the content hash of its inputs.
    let entry = ArchEntry {
        arch: arch.as_str().to_owned(),
        assets,
        sbom: Asset {
            filename: SBOM_FILE.to_owned(),
            size: sbom.len() as u64,
            b3: blake3::hash(&sbom).to_hex().to_string(),
        },
        packages,
        vulnerabilities,
        audited,
        inputs: Inputs {
            image_definition_b3: definition_b3.to_owned(),
            base,
            kernel_source: k.source.manifest_fields(),
            defconfig_b3: k.defconfig_b3.clone(),
            kernel_config_b3: k.kernel_config_b3.clone(),
            dockerfiles_b3: [
                ("kernel".to_owned(), k.dockerfile_b3.clone()),
                ("rootfs".to_owned(), r.dockerfile_blake3.clone()),
            ]
            .into(),
            toolchain: k.toolchain.clone(),
        },
    };
    Ok((entry, failures))
}

/// BLAKE3 over the image definition: every file under `config/` and `artifacts/`, in path order,
/// each as `path \0 length \0 bytes`.
pub fn definition_hash(image_dir: &Path) -> Result<String, ReleaseError> {
    let mut files = Vec::new();
    for top in ["config", "artifacts"] {
        collect(&image_dir.join(top), top, &mut files)?;
    }
    files.sort();
    let mut h = blake3::Hasher::new();
    for (rel, path) in files {
        let data = fs::read(&path).map_err(io("reading", &path))?;
        h.update(rel.as_bytes());
        h.update(b"\0");
        h.update((data.len() as u64).to_string().as_bytes());
        h.update(b"\0");
        h.update(&data);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn collect(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), ReleaseError> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
        let entry = entry.map_err(io("listing", dir))?;
        let path = entry.path();
        let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
        let ft = entry.file_type().map_err(io("inspecting", &path))?;
        if ft.is_dir() {
            collect(&path, &name, out)?;
        } else {
            out.push((name, path));
        }
    }
    Ok(())
}

/// Removes `.build-<pid>` directories of processes that no longer run.
fn remove_dead_staging(out: &Path) {
    let Ok(entries) = fs::read_dir(out) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".build-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Keeps the build logs of a failed run next to where the assets would have gone.
fn keep_logs(staging: &Path, out: &Path) {
    let Ok(archs) = fs::read_dir(staging) else { return };
    for arch in archs.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
        let Ok(files) = fs::read_dir(arch.path()) else { continue };
        for f in files.filter_map(Result::ok) {
            if f.path().extension().is_some_and(|e| e == "log") {
                let dir = out.join(arch.file_name());
                let _ = fs::create_dir_all(&dir);
                let _ = fs::rename(f.path(), dir.join(f.file_name()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsem_trust::signature::PublicKey;

    /// A single-architecture release of made-up files, as `build --arch` writes it (unsigned).
    fn part(root: &Path, arch: &str, version: &str) -> PathBuf {
        let dir = root.join(format!("out-{arch}"));
        fs::create_dir_all(dir.join(arch)).unwrap();
        let mut assets = Vec::new();
        for name in [INITRD_FILE, super::super::ROOTFS_FILE, kernel::VMLINUZ_FILE, SBOM_FILE] {
            let path = dir.join(arch).join(name);
            fs::write(&path, format!("{arch} {name}")).unwrap();
            let (size, b3) = capsem_trust::b3sums::hash_file(&path).unwrap();
            assets.push(Asset { filename: name.to_owned(), size, b3 });
        }
        let sbom = assets.pop().unwrap();
        fs::write(dir.join(manifest::SETTINGS_FILE), "{}\n").unwrap();
        let settings =
            Asset { filename: manifest::SETTINGS_FILE.into(), size: 3, b3: blake3::hash(b"{}\n").to_hex().to_string() };
        let inputs = Inputs {
            image_definition_b3: "d".repeat(64),
            base: BTreeMap::new(),
            kernel_source: BTreeMap::new(),
            defconfig_b3: String::new(),
            kernel_config_b3: String::new(),
            dockerfiles_b3: BTreeMap::new(),
            toolchain: BTreeMap::new(),
        };
        let entry = ArchEntry {
            arch: arch.to_owned(),
            assets,
            sbom,
            packages: Vec::new(),
            vulnerabilities: Vec::new(),
            audited: None,
            inputs,
        };
        let m = Manifest {
            format: manifest::FORMAT,
            name: "img".into(),
            version: version.into(),
            build_timestamp: manifest::rfc3339(1_700_000_000),
            source_date_epoch: 1_700_000_000,
            builder: BuilderInfo { version: "0".into(), backhand: "0.25.5".into(), zstd: "1.5.7".into() },
            settings,
            architectures: vec![entry],
        };
        fs::write(dir.join(manifest::MANIFEST_FILE), m.to_json()).unwrap();
        dir
    }

    #[test]
    fn merge_writes_one_signed_manifest_for_every_architecture() {
        let tmp = tempfile::tempdir().unwrap();
        let (public, secret) = (tmp.path().join("k.pub"), tmp.path().join("k.key"));
        crate::sign::keygen_with(&public, &secret, false, None).unwrap();
        let parts = vec![part(tmp.path(), "x86_64", "1.0.0"), part(tmp.path(), "arm64", "1.0.0")];
        let out = tmp.path().join("assets");
        let manifest_path = merge_releases(&parts, &out, Some(&secret)).unwrap();
        let m = Manifest::parse(&fs::read(&manifest_path).unwrap()).unwrap();
        let archs: Vec<&str> = m.architectures.iter().map(|a| a.arch.as_str()).collect();
        assert_eq!(archs, ["arm64", "x86_64"], "sorted, whatever the input order");
        let key = PublicKey::from_file(&public).unwrap();
        let report = capsem_trust::release::verify_release(&out, &key);
        assert!(report.passed(), "{:?}", report.first_failure());

        // Merging again gives the same bytes (the signature included).
        let again = tmp.path().join("again");
        merge_releases(&[parts[1].clone(), parts[0].clone()], &again, Some(&secret)).unwrap();
        for f in [manifest::MANIFEST_FILE, manifest::SIGNATURE_FILE, manifest::B3SUMS_FILE] {
            assert_eq!(fs::read(out.join(f)).unwrap(), fs::read(again.join(f)).unwrap(), "{f}");
        }
    }

    #[test]
    fn merge_refuses_mismatched_duplicate_or_damaged_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let x86 = part(tmp.path(), "x86_64", "1.0.0");
        let other = tmp.path().join("other");
        fs::create_dir_all(&other).unwrap();
        let arm_other_version = part(&other, "arm64", "2.0.0");
        let err = merge_releases(&[x86.clone(), arm_other_version], &tmp.path().join("a"), None).unwrap_err();
        assert!(err.to_string().contains("another image, version"), "{err}");

        let err = merge_releases(&[x86.clone(), x86.clone()], &tmp.path().join("b"), None).unwrap_err();
        assert!(err.to_string().contains("x86_64 is in both"), "{err}");

        fs::write(x86.join("x86_64/vmlinuz"), b"tampered").unwrap();
        let err = merge_releases(&[x86], &tmp.path().join("c"), None).unwrap_err();
        assert!(
            err.to_string().contains("does not match its manifest") && err.to_string().contains("vmlinuz"),
            "{err}"
        );
        assert!(!tmp.path().join("c/manifest.json").exists());
    }

    #[test]
    fn the_definition_hash_covers_config_and_artifacts_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("config/kernel")).unwrap();
        fs::create_dir_all(d.join("artifacts")).unwrap();
        fs::write(d.join("config/build.toml"), "[build]\n").unwrap();
        fs::write(d.join("config/kernel/defconfig.x86_64"), "CONFIG_X=y\n").unwrap();
        fs::write(d.join("artifacts/capsem-init"), "#!/bin/sh\n").unwrap();
        let first = definition_hash(d).unwrap();
        fs::create_dir_all(d.join("assets")).unwrap();
        fs::write(d.join("assets/manifest.json"), "{}").unwrap();
        assert_eq!(definition_hash(d).unwrap(), first, "outputs are not inputs");
        fs::write(d.join("config/kernel/defconfig.x86_64"), "CONFIG_X=n\n").unwrap();
        assert_ne!(definition_hash(d).unwrap(), first);
    }

    #[test]
    fn staging_of_dead_runs_is_removed_and_ours_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // Linux pids stay below 2^22, so this one is never alive.
        let dead = tmp.path().join(".build-4294967");
        let mine = tmp.path().join(format!(".build-{}", std::process::id()));
        let unrelated = tmp.path().join(".build-notapid");
        for d in [&dead, &mine, &unrelated] {
            fs::create_dir_all(d.join("x86_64")).unwrap();
        }
        remove_dead_staging(tmp.path());
        assert!(!dead.exists() && mine.exists() && unrelated.exists());
    }

    #[test]
    fn a_bad_key_or_report_fails_before_anything_is_built() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small-image");
        let loaded = crate::validate::load(&fixture);
        let model = loaded.model.expect("the fixture validates");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("assets");
        let opts = BuildOptions::default();
        let request = |sign_key: Option<PathBuf>, audit_report: Option<PathBuf>| ReleaseRequest {
            image_dir: &fixture,
            model: &model,
            archs: vec![Arch::host().unwrap()],
            out_dir: &out,
            opts: &opts,
            kernel_source: Provider::Debian,
            sign_key,
            audit_report,
            parts: Parts::Release,
        };
        let missing = tmp.path().join("no-such.key");
        let err = build_release(&request(Some(missing.clone()), None)).unwrap_err();
        assert!(matches!(err, ReleaseError::Sign(_)) && err.to_string().contains("no-such.key"), "{err}");
        let report = tmp.path().join("report.json");
        fs::write(&report, b"{\"neither\": \"trivy nor grype\"}").unwrap();
        let err = build_release(&request(None, Some(report))).unwrap_err();
        assert!(matches!(err, ReleaseError::Audit(_)) && err.to_string().contains("report.json"), "{err}");
        assert!(!out.exists(), "nothing may be written before the inputs are known to be good");
    }

    #[test]
    fn only_foreign_architectures_without_emulation_are_unbuildable() {
        let host = Arch::host().expect("tests run on x86_64 or arm64");
        assert_eq!(unbuildable_reason(host), None);
        let foreign = if host == Arch::X86_64 { Arch::Arm64 } else { Arch::X86_64 };
        let handler = if foreign == Arch::Arm64 { "qemu-aarch64" } else { "qemu-x86_64" };
        let registered = Path::new("/proc/sys/fs/binfmt_misc").join(handler).exists();
        match unbuildable_reason(foreign) {
            Some(reason) => assert!(!registered && reason.contains(handler) && reason.contains("native"), "{reason}"),
            None => assert!(registered),
        }
    }
}
