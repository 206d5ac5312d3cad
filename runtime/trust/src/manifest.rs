//! The release manifest, `assets/manifest.json`: what a build vouches for.
//!
//! One file describes every architecture of one image build: for each, its boot assets (file name,
//! size, BLAKE3), the bill of materials read from the built root filesystem, the vulnerabilities
//! an audit matched to it, the SBOM file and the inputs the bytes were made from. The builder
//! writes it ([`Manifest::to_json`]: deterministic bytes, fields in declaration order, every list
//! sorted by the writer), signs those exact bytes, and the runtime reads it ([`Manifest::parse`])
//! only after the signature over them verified.
//!
//! Paths inside the manifest are relative to the directory that holds it: an asset of
//! architecture `x86_64` named `vmlinuz` is the file `x86_64/vmlinuz`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest format this crate writes and the only one it reads.
pub const FORMAT: u32 = 1;

/// File name of the manifest inside the assets directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the manifest's minisign signature.
pub const SIGNATURE_FILE: &str = "manifest.json.minisig";
/// File name of the boot-time settings file.
pub const SETTINGS_FILE: &str = "defaults.json";
/// File name of the `b3sum -c` checksum list.
pub const B3SUMS_FILE: &str = "B3SUMS";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, [`FORMAT`].
    pub format: u32,
    /// Image name (config/manifest.toml `[image] name`, else the definition directory's name).
    pub name: String,
    /// Image version (config/manifest.toml `[image] version`).
    pub version: String,
    /// Build time as RFC 3339 UTC, `SOURCE_DATE_EPOCH` — never the wall clock.
    pub build_timestamp: String,
    /// The same instant in seconds since the epoch.
    pub source_date_epoch: u64,
    /// What produced the bytes.
    pub builder: BuilderInfo,
    /// The boot-time settings file the runtime applies (`defaults.json`: web policy, resources,
    /// environment, AI providers, MCP servers), in the directory's root; the same for every
    /// architecture.
    pub settings: Asset,
    /// One entry per built architecture, sorted by `arch`.
    pub architectures: Vec<ArchEntry>,
}

/// Versions of the code that produced the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderInfo {
    /// `capsem-builder` version.
    pub version: String,
    /// backhand (squashfs writer) version.
    pub backhand: String,
    /// zstd library version used for squashfs and initrd compression.
    pub zstd: String,
}

/// Everything about one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchEntry {
    /// `x86_64` or `arm64`; also the directory holding the files.
    pub arch: String,
    /// Boot assets, sorted by `filename`: `initrd.img`, `rootfs.squashfs`, `vmlinuz`.
    pub assets: Vec<Asset>,
    /// The SBOM file (CycloneDX JSON) generated from `packages`.
    pub sbom: Asset,
    /// Installed packages read from the built root filesystem, sorted by (manager, name, version).
    pub packages: Vec<Package>,
    /// Findings of the last audit matched to `packages`, sorted by (package, id). Empty when no
    /// audit ran — `audited` tells the two apart.
    pub vulnerabilities: Vec<Vulnerability>,
    /// Which scanner report the vulnerabilities came from, if an audit ran.
    pub audited: Option<AuditInfo>,
    /// The inputs the assets were made from.
    pub inputs: Inputs,
}

/// One file: name relative to the architecture directory, size and BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// File name inside `<arch>/`, e.g. `vmlinuz`.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents, 64 lowercase hex digits.
    pub b3: String,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// `apt` (dpkg database), `pip` (Python `*.dist-info`) or `npm` (`node_modules/**/package.json`).
    pub manager: String,
    /// Package name as its manager spells it.
    pub name: String,
    /// Installed version as its manager spells it.
    pub version: String,
    /// dpkg architecture (`amd64`, `all`, …); `None` for pip and npm.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub arch: Option<String>,
    /// Where the package database entry lives in the rootfs (e.g. the dist-info directory), for
    /// pip and npm; `None` for apt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<String>,
    /// Package URL (`pkg:deb/debian/curl@7.88.1-10?arch=amd64`, `pkg:pypi/…`, `pkg:npm/…`).
    pub purl: String,
}

/// One vulnerability finding, matched to a package of the bill of materials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vulnerability {
    /// Package name (as in `packages`).
    pub package: String,
    /// Installed version the finding applies to.
    pub version: String,
    /// Package manager (as in `packages`).
    pub manager: String,
    /// Advisory id, e.g. `CVE-2024-2398`.
    pub id: String,
    /// `CRITICAL`, `HIGH`, `MEDIUM`, `LOW`, `NEGLIGIBLE` or `UNKNOWN`.
    pub severity: String,
    /// First fixed version, when the scanner knows one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fixed_in: Option<String>,
    /// Whether the image's audit policy accepts this finding.
    pub allowed: bool,
}

/// Which scanner report an audit read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditInfo {
    /// `trivy` or `grype`.
    pub scanner: String,
    /// BLAKE3 of the report file.
    pub report_b3: String,
}

/// The inputs of one architecture's assets. Hashes are BLAKE3 unless the name says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// BLAKE3 over the image definition (every file under `config/` and `artifacts/`, by path).
    pub image_definition_b3: String,
    /// The rootfs base: a registry reference with digest, or the bootstrap tag and its inputs.
    pub base: BTreeMap<String, String>,
    /// Kernel source: provider, version, the pinned sha256 the build checked, and more.
    pub kernel_source: BTreeMap<String, String>,
    /// BLAKE3 of the image's kernel config fragment (the defconfig file).
    pub defconfig_b3: String,
    /// BLAKE3 of the resolved `.config` the kernel was built with.
    pub kernel_config_b3: String,
    /// BLAKE3 of each rendered Dockerfile, by template (`kernel`, `rootfs`).
    pub dockerfiles_b3: BTreeMap<String, String>,
    /// Tool versions inside the build that affect the bytes (compiler, binutils, busybox, …).
    pub toolchain: BTreeMap<String, String>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest.json is not a valid manifest: {0}")]
    Json(#[from] serde_json::Error),
    /// A format this crate does not know.
    #[error("manifest.json has format {found}; this version reads format {FORMAT} only")]
    Format {
        /// The manifest's `format`.
        found: u32,
    },
}

impl Manifest {
    /// Parses manifest bytes (which the caller has already verified the signature of).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.format != FORMAT {
            return Err(ManifestError::Format { found: m.format });
        }
        Ok(m)
    }

    /// The canonical bytes: pretty JSON (two-space indent) and a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// The entry for one architecture.
    pub fn arch(&self, arch: &str) -> Option<&ArchEntry> {
        self.architectures.iter().find(|a| a.arch == arch)
    }
}

impl ArchEntry {
    /// The boot asset with this file name.
    pub fn asset(&self, filename: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.filename == filename)
    }
}

/// RFC 3339 UTC text (`2023-11-14T22:13:20Z`) for seconds since the epoch.
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
/// Also the runtime's session-log timestamps.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
