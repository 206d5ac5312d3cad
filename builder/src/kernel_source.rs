//! Pinned kernel sources: the descriptors in the repository's `kernel/` directory.
//!
//! Each `kernel/linux-<branch>.toml` pins, per provider, a version and the sha256 of the source
//! tarball; the builder embeds them at compile time, so a binary always builds the sources it was
//! released with. [`resolve`] picks the descriptor for build.toml's `kernel_branch` and one
//! provider, and the kernel template checks the tarball against the pinned hash before it
//! unpacks anything.
//!
//! The descriptors are our own files, not user input, so they are read with serde; a broken one
//! fails the unit tests, never a user's build.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The embedded descriptors: (file name, contents).
const DESCRIPTORS: &[(&str, &str)] = &[("linux-6.1.toml", include_str!("../../kernel/linux-6.1.toml"))];

/// Where the kernel source tarball comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Debian's `linux-source-X.Y` package from the base image's archive.
    #[default]
    Debian,
    /// The kernel.org release tarball.
    Upstream,
}

impl Provider {
    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Debian => "debian",
            Provider::Upstream => "upstream",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "debian" => Ok(Provider::Debian),
            "upstream" => Ok(Provider::Upstream),
            other => Err(format!("unknown kernel source `{other}` (expected `debian` or `upstream`)")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Descriptor {
    kernel: KernelSection,
    provider: Providers,
    initrd: InitrdSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelSection {
    branch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Providers {
    debian: DebianProvider,
    upstream: UpstreamProvider,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebianProvider {
    package: String,
    package_version: String,
    linux_version: String,
    tarball: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamProvider {
    url: String,
    linux_version: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitrdSection {
    busybox_static: String,
}

/// One provider of one branch, resolved: everything the kernel template needs to fetch and
/// check the source. It is part of the kernel plan and of the manifest's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSource {
    /// Which provider.
    pub provider: Provider,
    /// The descriptor file it came from, e.g. `kernel/linux-6.1.toml`.
    pub descriptor: String,
    /// Kernel version of the tree, e.g. `6.1.192`.
    pub linux_version: String,
    /// Debian package to install (Debian provider), e.g. `linux-source-6.1`.
    pub package: Option<String>,
    /// Its pinned version.
    pub package_version: Option<String>,
    /// Download URL (upstream provider).
    pub url: Option<String>,
    /// Where the tarball is inside the build container.
    pub tarball: String,
    /// Its pinned sha256, lowercase hex.
    pub sha256: String,
    /// Pinned Debian version of `busybox-static`, whose binary goes into the initrd.
    pub busybox_static: String,
}

impl KernelSource {
    /// The provenance recorded in the manifest (`inputs.kernel_source`).
    pub fn manifest_fields(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("provider".into(), self.provider.as_str().into());
        m.insert("descriptor".into(), self.descriptor.clone());
        m.insert("linux_version".into(), self.linux_version.clone());
        m.insert("tarball_sha256".into(), self.sha256.clone());
        if let Some(p) = &self.package {
            m.insert("package".into(), p.clone());
        }
        if let Some(v) = &self.package_version {
            m.insert("package_version".into(), v.clone());
        }
        if let Some(u) = &self.url {
            m.insert("url".into(), u.clone());
        }
        m.insert("busybox_static".into(), self.busybox_static.clone());
        m
    }
}

/// Why no source could be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KernelSourceError {
    /// No descriptor pins this branch.
    #[error("no kernel source descriptor for kernel_branch {branch:?} (pinned branches: {known})")]
    UnknownBranch {
        /// Requested branch.
        branch: String,
        /// Branches with a descriptor.
        known: String,
    },
}

fn parse(name: &str, text: &str) -> Descriptor {
    // Our own embedded file: a parse failure is a bug caught by `descriptors_parse_and_pin`.
    toml::from_str(text).unwrap_or_else(|e| panic!("kernel/{name} is invalid: {e}"))
}

/// Branches with a descriptor, sorted.
pub fn branches() -> Vec<String> {
    let mut b: Vec<String> = DESCRIPTORS.iter().map(|(n, t)| parse(n, t).kernel.branch).collect();
    b.sort();
    b
}

/// The source of `branch` from `provider`.
pub fn resolve(branch: &str, provider: Provider) -> Result<KernelSource, KernelSourceError> {
    let (name, d) =
        DESCRIPTORS.iter().map(|(n, t)| (*n, parse(n, t))).find(|(_, d)| d.kernel.branch == branch).ok_or_else(
            || KernelSourceError::UnknownBranch { branch: branch.to_owned(), known: branches().join(", ") },
        )?;
    let descriptor = format!("kernel/{name}");
    let busybox_static = d.initrd.busybox_static;
    Ok(match provider {
        Provider::Debian => {
            let p = d.provider.debian;
            KernelSource {
                provider,
                descriptor,
                linux_version: p.linux_version,
                package: Some(p.package),
                package_version: Some(p.package_version),
                url: None,
                tarball: p.tarball,
                sha256: p.sha256,
                busybox_static,
            }
        }
        Provider::Upstream => {
            let p = d.provider.upstream;
            KernelSource {
                provider,
                descriptor,
                tarball: format!("/usr/src/linux-{}.tar.xz", p.linux_version),
                linux_version: p.linux_version,
                package: None,
                package_version: None,
                url: Some(p.url),
                sha256: p.sha256,
                busybox_static,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn descriptors_parse_and_pin() {
        for branch in branches() {
            for provider in [Provider::Debian, Provider::Upstream] {
                let s = resolve(&branch, provider).unwrap();
                assert!(is_sha256(&s.sha256), "{}: sha256 {:?}", s.descriptor, s.sha256);
                assert!(s.linux_version.starts_with(&format!("{branch}.")), "{}: {}", s.descriptor, s.linux_version);
                assert!(s.tarball.starts_with('/') && s.tarball.ends_with(".tar.xz"));
                assert!(!s.busybox_static.is_empty());
            }
            let up = resolve(&branch, Provider::Upstream).unwrap();
            let url = up.url.unwrap();
            assert!(url.starts_with("https://") && url.ends_with(&format!("linux-{}.tar.xz", up.linux_version)));
            let deb = resolve(&branch, Provider::Debian).unwrap();
            assert_eq!(deb.package.as_deref(), Some(format!("linux-source-{branch}").as_str()));
        }
        assert_eq!(branches(), ["6.1"]);
    }

    #[test]
    fn unknown_branch_names_the_known_ones() {
        let e = resolve("5.4", Provider::Debian).unwrap_err().to_string();
        assert!(e.contains("\"5.4\"") && e.contains("6.1"), "{e}");
        assert_eq!("upstream".parse::<Provider>(), Ok(Provider::Upstream));
        assert!("kernel.org".parse::<Provider>().unwrap_err().contains("debian"));
    }
}
