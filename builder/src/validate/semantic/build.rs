//! build.toml and manifest.toml: compression, architectures, base images, pins, image metadata.

use std::collections::BTreeMap;

use super::Cx;
use crate::diag::{Code, Diagnostic};
use crate::model::*;
use crate::rawconfig::*;
use crate::validate::checks;

pub(super) fn build(cx: &Cx<'_>, b: &RawBuild) -> Option<Build> {
    let compression = b
        .compression
        .as_ref()
        .map_or(Some(Compression::Zstd), |c| cx.choice(c, "compression", Compression::NAMES, Compression::parse));
    let mut level = compression.and_then(Compression::default_level);
    if let (Some(comp), Some(l)) = (compression, &b.compression_level) {
        match comp.level_range() {
            Some((lo, hi)) => level = cx.range(l, "compression_level", lo, hi).map(|v| v as u32),
            None => cx.err(
                Code::ConflictingFields,
                &l.loc,
                "lz4 takes no compression_level",
                "remove `compression_level`, or pick zstd/xz/gzip/lzo",
            ),
        }
    }
    let sde = b
        .source_date_epoch
        .as_ref()
        .and_then(|s| cx.range(s, "source_date_epoch", 0, 253_402_300_799))
        .map(|v| v as u64);
    let extra_ca = b.extra_ca.as_ref().and_then(|ca| {
        if ca.value.starts_with('/') || ca.value.split('/').any(|c| c == "..") {
            cx.err(
                Code::BadValue,
                &ca.loc,
                format!("extra_ca `{}` must be a path inside the image directory", ca.value),
                "put the certificate next to config/, e.g. `certs/corp-ca.crt`",
            );
            return None;
        }
        let path = cx.dir.join(&ca.value);
        match std::fs::read_to_string(&path) {
            Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => Some(ca.value.clone()),
            Ok(_) => {
                cx.err(
                    Code::BadValue,
                    &ca.loc,
                    format!("extra_ca `{}` is not a PEM certificate", ca.value),
                    "it must contain a `-----BEGIN CERTIFICATE-----` block",
                );
                None
            }
            Err(e) => {
                cx.err(
                    Code::ArtifactMissing,
                    &ca.loc,
                    format!("extra_ca `{}` cannot be read: {e}", ca.value),
                    "check the path (relative to the image directory)",
                );
                None
            }
        }
    });
    let mut architectures = BTreeMap::new();
    if let Some(archs) = &b.architectures {
        if archs.value.is_empty() {
            cx.err(
                Code::EmptyValue,
                &archs.loc,
                "no architectures declared",
                "add a `[build.architectures.x86_64]` table",
            );
        }
        for (name, a) in &archs.value {
            let Some(arch) = cx.choice(name, "architecture", Arch::NAMES, Arch::parse) else { continue };
            if let Some(cfg) = arch_config(cx, arch, a) {
                architectures.insert(arch, cfg);
            }
        }
    }
    Some(Build {
        compression: compression?,
        compression_level: level,
        source_date_epoch: sde,
        extra_ca,
        keep_extra_ca: b.keep_extra_ca.as_ref().is_some_and(|k| k.value),
        architectures,
    })
}

const VARIANTS: &[&str] =
    &["extract", "custom", "essential", "apt", "minbase", "buildd", "required", "important", "standard"];
const KNOWN_TARGETS: &[(&str, Arch)] = &[
    ("x86_64-unknown-linux-gnu", Arch::X86_64),
    ("x86_64-unknown-linux-musl", Arch::X86_64),
    ("aarch64-unknown-linux-gnu", Arch::Arm64),
    ("aarch64-unknown-linux-musl", Arch::Arm64),
];

fn arch_config(cx: &Cx<'_>, arch: Arch, a: &RawArch) -> Option<ArchConfig> {
    let base = match (&a.base_image, &a.bootstrap) {
        (Some(img), Some(bs)) => {
            cx.err(
                Code::ConflictingFields,
                &bs.header,
                "both `base_image` and `[bootstrap]` are set",
                format!("keep one: `base_image` at {}, or the bootstrap", cx.where_(&img.loc)),
            );
            None
        }
        (None, None) => {
            cx.err(
                Code::MissingField,
                &a.header,
                format!("[build.architectures.{arch}] needs `base_image` or a `[build.architectures.{arch}.bootstrap]` table"),
                "use `base_image = \"debian@sha256:<digest>\"`, or a bootstrap with suite and mirror (works without a registry)",
            );
            None
        }
        (Some(img), None) => {
            let pinned =
                img.value.split_once("@sha256:").is_some_and(|(name, d)| !name.is_empty() && checks::sha256_hex(d));
            if pinned {
                Some(BaseImage::Registry { reference: img.value.clone() })
            } else {
                cx.err(
                    Code::Unpinned,
                    &img.loc,
                    format!("base_image `{}` is not pinned by digest", img.value),
                    "write `name@sha256:<64 hex>` (see `docker inspect --format '{{.RepoDigests}}'`), or use a [bootstrap] table",
                );
                None
            }
        }
        (None, Some(bs)) => {
            let variant = bs.variant.as_ref().map_or(Some("minbase".to_string()), |v| {
                cx.choice(v, "mmdebstrap variant", VARIANTS, |s| VARIANTS.contains(&s).then(|| s.to_string()))
            });
            if let Some(m) = &bs.mirror
                && let Err(e) = checks::url(&m.value)
            {
                cx.err(Code::BadUrl, &m.loc, format!("mirror {e}"), "e.g. `http://deb.debian.org/debian`");
            }
            let suite = cx.nonempty_str(&bs.suite, "`suite`");
            if !suite.is_empty() && !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                cx.err(
                    Code::BadValue,
                    &bs.suite.as_ref()?.loc,
                    format!("suite `{suite}` is not a Debian suite name"),
                    "e.g. `bookworm`",
                );
            }
            let components = match &bs.components {
                Some(c) => {
                    let l = cx.nonempty_list(&bs.components, "`components`", "`components = [\"main\"]`");
                    for comp in l {
                        if !comp.value.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-') || comp.value.is_empty() {
                            cx.err(
                                Code::BadValue,
                                &comp.loc,
                                format!("`{}` is not an archive component", comp.value),
                                "e.g. `main`, `contrib`",
                            );
                        }
                    }
                    let _ = c;
                    l.iter().map(|s| s.value.clone()).collect()
                }
                None => vec!["main".to_string()],
            };
            Some(BaseImage::Bootstrap {
                suite,
                mirror: bs.mirror.as_ref()?.value.clone(),
                variant: variant?,
                components,
            })
        }
    };
    if let Some(p) = &a.docker_platform
        && p.value != arch.platform()
    {
        cx.err(
            Code::BadValue,
            &p.loc,
            format!("docker_platform `{}` does not match architecture {arch}", p.value),
            format!("use `{}`", arch.platform()),
        );
    }
    if let Some(t) = &a.rust_target {
        match KNOWN_TARGETS.iter().find(|(name, _)| *name == t.value) {
            Some((_, target_arch)) if *target_arch != arch => cx.err(
                Code::BadValue,
                &t.loc,
                format!("rust_target `{}` is for another architecture than {arch}", t.value),
                "use the target triple of this architecture",
            ),
            Some(_) => {}
            None => cx.sink.push(
                Diagnostic::at(
                    Code::NonStaticTarget,
                    t.loc.clone(),
                    format!("rust_target `{}` is not a known Linux target for guest binaries", t.value),
                )
                .help(format!("known: {}", KNOWN_TARGETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))),
            ),
        }
    }
    if let Some(k) = &a.kernel_branch {
        if matches!(k.value.as_str(), "auto" | "latest" | "stable" | "longterm") {
            cx.err(
                Code::Unpinned,
                &k.loc,
                format!("kernel_branch `{}` floats with kernel.org releases", k.value),
                "pin a branch like `6.1`; the exact source is pinned in kernel/",
            );
        } else if !checks::kernel_branch(&k.value) {
            cx.err(Code::BadValue, &k.loc, format!("kernel_branch `{}` is not `X.Y`", k.value), "e.g. `6.1`");
        }
    }
    if let Some(k) = &a.kernel_image
        && (k.value.is_empty() || k.value.starts_with('/') || k.value.split('/').any(|c| c == ".."))
    {
        cx.err(
            Code::BadValue,
            &k.loc,
            format!("kernel_image `{}` must be a path inside the kernel tree", k.value),
            "e.g. `arch/x86/boot/bzImage`",
        );
    }
    if let Some(d) = &a.defconfig {
        if d.value.starts_with('/') || d.value.split('/').any(|c| c == ".." || c.is_empty()) {
            cx.err(
                Code::BadValue,
                &d.loc,
                format!("defconfig `{}` must be a relative path inside config/", d.value),
                format!("e.g. `kernel/defconfig.{arch}`"),
            );
        } else if !cx.dir.join("config").join(&d.value).is_file() {
            cx.err(
                Code::DefconfigMissing,
                &d.loc,
                format!("defconfig for {arch} not found: config/{}", d.value),
                format!("add config/{} (a kernel config fragment), or remove the {arch} architecture", d.value),
            );
        }
    }
    let node_major = a.node_major.as_ref().and_then(|n| cx.range(n, "node_major", 1, 99)).map(|v| v as u32);
    Some(ArchConfig {
        base: base?,
        docker_platform: a.docker_platform.as_ref()?.value.clone(),
        rust_target: a.rust_target.as_ref()?.value.clone(),
        kernel_branch: a.kernel_branch.as_ref()?.value.clone(),
        kernel_image: a.kernel_image.as_ref()?.value.clone(),
        defconfig: a.defconfig.as_ref()?.value.clone(),
        node_major,
    })
}

pub(super) fn image(cx: &Cx<'_>, i: Option<&RawImage>) -> ImageMeta {
    let Some(i) = i else {
        let name = cx
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".into());
        return ImageMeta { name, version: "0.0.0".into(), description: String::new(), changelog: Vec::new() };
    };
    let name = cx.nonempty_str(&i.name, "`name`");
    if let Some(v) = &i.version
        && !checks::semver(&v.value)
    {
        cx.err(
            Code::BadValue,
            &v.loc,
            format!("version `{}` is not a semantic version", v.value),
            "write MAJOR.MINOR.PATCH, e.g. `0.1.0`",
        );
    }
    let changelog = i
        .changelog
        .iter()
        .map(|c| {
            if let Some(d) = &c.date
                && !checks::iso_date(&d.value)
            {
                cx.err(Code::BadValue, &d.loc, format!("date `{}` is not YYYY-MM-DD", d.value), "e.g. `2026-11-22`");
            }
            if let Some(v) = &c.version
                && !checks::semver(&v.value)
            {
                cx.err(
                    Code::BadValue,
                    &v.loc,
                    format!("version `{}` is not a semantic version", v.value),
                    "write MAJOR.MINOR.PATCH",
                );
            }
            ChangelogEntry {
                version: c.version.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                date: c.date.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                changes: c
                    .changes
                    .as_ref()
                    .map(|l| l.value.iter().map(|s| s.value.clone()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    ImageMeta {
        name,
        version: i.version.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        description: i.description.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        changelog,
    }
}
