//! The build plan: a pure function of the validated model and one architecture.
//!
//! A plan says *what* a build will fetch, render and install, with every input pinned; it
//! performs no I/O. The Dockerfile templates in `builder/templates/` render plans, so the plan
//! is also the template context: every field here is a template variable.

use serde::Serialize;

/// Where a build's base filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BasePlan {
    /// A registry image pinned by digest, e.g. `debian@sha256:…`.
    Registry {
        /// The full reference, `name@sha256:<64 hex>`.
        reference: String,
    },
    /// A local mmdebstrap bootstrap imported into the engine under `tag`.
    Bootstrap {
        /// Debian suite, e.g. `bookworm`.
        suite: String,
        /// Mirror URL, e.g. `http://deb.debian.org/debian`.
        mirror: String,
        /// mmdebstrap variant, e.g. `minbase`.
        variant: String,
        /// Archive components, e.g. `["main"]`.
        components: Vec<String>,
        /// Engine tag the imported image gets: `capsem-base:<content hash of the inputs>`.
        tag: String,
    },
}

impl BasePlan {
    /// The reference to use in a Dockerfile `FROM` line.
    pub fn from_ref(&self) -> &str {
        match self {
            BasePlan::Registry { reference } => reference,
            BasePlan::Bootstrap { tag, .. } => tag,
        }
    }
}

/// One `apt-get install` step (one per apt package set, in key order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptStep {
    /// Where the packages came from, e.g. `packages/apt.toml [apt]` or `ai/x.toml [x.install]`.
    pub source: String,
    /// Package specs, `name` or `name=version`, in config order.
    pub packages: Vec<String>,
}

/// One Python install step (uv or pip), one per set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PythonStep {
    /// Where the packages came from.
    pub source: String,
    /// `uv` or `pip`.
    pub manager: String,
    /// The install command, without packages, e.g. `uv pip install --system --break-system-packages`.
    pub install_cmd: String,
    /// Requirement specs, e.g. `numpy==1.26.4`.
    pub packages: Vec<String>,
}

/// All npm packages that share one `--prefix`, installed in a single `npm install -g` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NpmBatch {
    /// Install prefix, e.g. `/opt/ai-clis`.
    pub prefix: String,
    /// Package specs, e.g. `@google/gemini-cli@0.1.0`, deduplicated, in first-seen order.
    pub packages: Vec<String>,
    /// The config entries that contributed packages to this batch.
    pub sources: Vec<String>,
}

/// One curl-style installer: downloaded, optionally checksum-verified, run with bash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurlStep {
    /// Where the installer came from.
    pub source: String,
    /// Installer URL.
    pub url: String,
    /// Expected sha256 of the installer script (lowercase hex), when pinned.
    pub sha256: Option<String>,
}

/// Everything the rootfs template needs for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootfsPlan {
    /// Image name from manifest.toml (or the directory name).
    pub image_name: String,
    /// Architecture name as in build.toml (`x86_64`, `arm64`).
    pub arch: String,
    /// Engine platform, e.g. `linux/amd64`.
    pub platform: String,
    /// Base filesystem.
    pub base: BasePlan,
    /// `SOURCE_DATE_EPOCH` for the build, when known at plan time.
    pub source_date_epoch: Option<u64>,
    /// Whether an extra CA certificate (`extra-ca.crt` in the context) is trusted during the build.
    pub extra_ca: bool,
    /// Whether that CA stays in the final image's trust store.
    pub keep_extra_ca: bool,
    /// Node.js major version the apt sets must provide (checked after install), if any.
    pub node_major: Option<u32>,
    /// apt steps, one per set.
    pub apt_steps: Vec<AptStep>,
    /// Whether any Python step uses uv (the template then installs pinned uv first).
    pub needs_uv: bool,
    /// Pinned uv requirement used to bootstrap uv from PyPI, e.g. `uv==0.5.11`.
    pub uv_requirement: String,
    /// Python steps, one per set.
    pub python_steps: Vec<PythonStep>,
    /// npm batches, one per prefix.
    pub npm_batches: Vec<NpmBatch>,
    /// curl installers, one step each.
    pub curl_steps: Vec<CurlStep>,
    /// Guest binaries copied from the context's `guest-bin/` into /usr/local/bin (mode 0555).
    pub guest_binaries: Vec<String>,
    /// Shell config baked into the image (`artifacts/capsem-bashrc` → /etc/capsem-bashrc).
    pub has_bashrc: bool,
    /// `artifacts/banner.txt` → /etc/capsem-banner.txt.
    pub has_banner: bool,
    /// `artifacts/tips.txt` → /etc/capsem-tips.txt.
    pub has_tips: bool,
    /// `artifacts/diagnostics/` → /usr/local/lib/capsem-tests/ plus the capsem-doctor entry point.
    pub has_diagnostics: bool,
}

/// Everything the kernel template needs for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelPlan {
    /// Architecture name as in build.toml.
    pub arch: String,
    /// Engine platform.
    pub platform: String,
    /// Base filesystem of the build container.
    pub base: BasePlan,
    /// Kernel branch `X.Y`, e.g. `6.1`.
    pub kernel_branch: String,
    /// Kernel image path inside the tree, e.g. `arch/x86_64/boot/bzImage`.
    pub kernel_image: String,
    /// The `make` target: the basename of `kernel_image`.
    pub make_target: String,
    /// Kernel `ARCH=` value: `x86` or `arm64`.
    pub kernel_arch: String,
    /// The defconfig's path inside the build context, e.g. `kernel/defconfig.x86_64`.
    pub defconfig: String,
    /// `SOURCE_DATE_EPOCH` (KBUILD_BUILD_TIMESTAMP is derived from it), when known at plan time.
    pub source_date_epoch: Option<u64>,
    /// The pinned kernel source (provider, version, tarball sha256) and busybox-static version.
    pub source: KernelSource,
}

// ---- model → plan --------------------------------------------------------------------------

use crate::kernel_source::KernelSource;
use crate::model::{Arch, BaseImage, Install, Manager, Model};

/// uv is bootstrapped from PyPI at this pinned version when a Python set uses it.
pub const UV_REQUIREMENT: &str = "uv==0.9.30";

/// Guest binaries the rootfs gets when they have been built (`guest/` crates); the plan lists
/// only those that exist, so the build works with whatever guest binaries exist today.
pub const GUEST_BINARIES: &[&str] = &["capsem-agent"];

/// The engine tag of a bootstrapped base: a BLAKE3 content hash of everything that determines it.
pub fn bootstrap_tag(base: &BaseImage, arch: Arch, source_date_epoch: Option<u64>) -> Option<String> {
    let BaseImage::Bootstrap { suite, mirror, variant, components } = base else { return None };
    let mut h = blake3::Hasher::new();
    for part in [
        suite.as_str(),
        mirror,
        variant,
        &components.join(","),
        arch.as_str(),
        &source_date_epoch.map_or(String::new(), |s| s.to_string()),
    ] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    Some(format!("capsem-base:{}", &h.finalize().to_hex()[..16]))
}

fn base_plan(base: &BaseImage, arch: Arch, sde: Option<u64>) -> BasePlan {
    match base {
        BaseImage::Registry { reference } => BasePlan::Registry { reference: reference.clone() },
        BaseImage::Bootstrap { suite, mirror, variant, components } => BasePlan::Bootstrap {
            suite: suite.clone(),
            mirror: mirror.clone(),
            variant: variant.clone(),
            components: components.clone(),
            tag: bootstrap_tag(base, arch, sde).expect("bootstrap base has a tag"),
        },
    }
}

/// Every install in the model, in a fixed order: package sets by key, then enabled providers by key.
fn installs(model: &Model) -> Vec<(String, &Install)> {
    let sets = model.packages.iter().map(|(k, s)| (format!("{} [{k}]", s.file), &s.install));
    let providers = model
        .ai
        .iter()
        .filter(|(_, p)| p.enabled)
        .filter_map(|(k, p)| p.install.as_ref().map(|i| (format!("{} [{k}.install]", p.file), i)));
    sets.chain(providers).collect()
}

/// Builds the rootfs plan for one architecture. `guest_binaries` lists the guest binaries that
/// exist in the build context; `source_date_epoch` is the resolved build time.
pub fn rootfs(
    model: &Model,
    arch: Arch,
    guest_binaries: &[String],
    source_date_epoch: Option<u64>,
) -> Option<RootfsPlan> {
    let cfg = model.build.architectures.get(&arch)?;
    let mut apt_steps = Vec::new();
    let mut python_steps = Vec::new();
    let mut npm_batches: Vec<NpmBatch> = Vec::new();
    let mut curl_steps = Vec::new();
    for (source, inst) in installs(model) {
        match inst.manager {
            Manager::Apt => apt_steps.push(AptStep { source, packages: inst.packages.clone() }),
            Manager::Uv | Manager::Pip => python_steps.push(PythonStep {
                source,
                manager: inst.manager.as_str().to_string(),
                install_cmd: inst.install_cmd.clone(),
                packages: inst.packages.clone(),
            }),
            Manager::Npm => {
                let prefix = inst.prefix.clone().unwrap_or_else(|| crate::model::DEFAULT_NPM_PREFIX.to_string());
                let idx = match npm_batches.iter().position(|b| b.prefix == prefix) {
                    Some(i) => i,
                    None => {
                        npm_batches.push(NpmBatch { prefix, packages: Vec::new(), sources: Vec::new() });
                        npm_batches.len() - 1
                    }
                };
                let batch = &mut npm_batches[idx];
                for p in &inst.packages {
                    if !batch.packages.contains(p) {
                        batch.packages.push(p.clone());
                    }
                }
                batch.sources.push(source);
            }
            Manager::Curl => {
                for url in &inst.packages {
                    curl_steps.push(CurlStep {
                        source: source.clone(),
                        url: url.clone(),
                        sha256: inst.checksums.get(url).cloned(),
                    });
                }
            }
        }
    }
    Some(RootfsPlan {
        image_name: model.image.name.clone(),
        arch: arch.as_str().to_string(),
        platform: cfg.docker_platform.clone(),
        base: base_plan(&cfg.base, arch, source_date_epoch),
        source_date_epoch,
        extra_ca: model.build.extra_ca.is_some(),
        keep_extra_ca: model.build.keep_extra_ca,
        node_major: cfg.node_major,
        apt_steps,
        needs_uv: python_steps.iter().any(|s| s.manager == "uv"),
        uv_requirement: UV_REQUIREMENT.to_string(),
        python_steps,
        npm_batches,
        curl_steps,
        guest_binaries: guest_binaries.to_vec(),
        has_bashrc: true,
        has_banner: model.artifacts.banner,
        has_tips: model.artifacts.tips,
        has_diagnostics: model.artifacts.diagnostics,
    })
}

/// Builds the kernel plan for one architecture, from `source` (see [`crate::kernel_source::resolve`]).
pub fn kernel(model: &Model, arch: Arch, source_date_epoch: Option<u64>, source: &KernelSource) -> Option<KernelPlan> {
    let cfg = model.build.architectures.get(&arch)?;
    Some(KernelPlan {
        arch: arch.as_str().to_string(),
        platform: cfg.docker_platform.clone(),
        base: base_plan(&cfg.base, arch, source_date_epoch),
        kernel_branch: cfg.kernel_branch.clone(),
        kernel_image: cfg.kernel_image.clone(),
        make_target: cfg.kernel_image.rsplit('/').next().unwrap_or(&cfg.kernel_image).to_string(),
        kernel_arch: arch.kernel_arch().to_string(),
        defconfig: cfg.defconfig.clone(),
        source_date_epoch,
        source: source.clone(),
    })
}
