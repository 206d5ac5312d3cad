//! The bill of materials of a built root filesystem, read from the package databases *inside* the
//! squashfs image (never from the image definition, which says what was asked for, not what got
//! installed), and its CycloneDX SBOM ([`cyclonedx()`]).
//!
//! Three managers, one file each:
//! - `apt` (`dpkg.rs`): `/var/lib/dpkg/status`, the packages whose status is `installed`;
//! - `pip` (`pip.rs`): `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` and `*.egg-info` files
//!   directly in the system interpreter's site directories;
//! - `npm` (`npm.rs`): every `node_modules/[@scope/]<name>/package.json`, nested ones included.
//!
//! Package URLs are built in `purl.rs`. The image is read with backhand's reader, so nothing is
//! extracted and no tool of the host is needed.
//!
//! # Hostile input
//!
//! A rootfs is assembled from third-party packages, so every file read here is untrusted: each is
//! bounded ([`DPKG_STATUS_MAX`], [`METADATA_MAX`], [`PACKAGE_JSON_MAX`]; a larger one is an error
//! naming it, never a partial read), parsing never panics and allocates in proportion to the
//! bounded input, JSON nesting is limited by serde_json's recursion limit. A malformed dpkg
//! database is an error (dpkg itself would refuse it), and so is a journal entry in
//! `/var/lib/dpkg/updates/` (the status file would not be the whole truth). A pip or npm record without a usable name
//! and version is not a package for pip or npm either: it is *skipped* and listed in
//! [`Bom::skipped`] with the reason, as are package positions that are symlinks (not followed:
//! pnpm-style links point at a real directory that is read where it lies).
//!
//! The result is sorted by (manager, name, version, arch, location) without duplicates; for one
//! manager that is the (manager, name, version, location) order of the manifest.

mod cyclonedx;
mod dpkg;
mod npm;
mod pip;
pub mod purl;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};
use capsem_trust::Package;
use serde::Serialize;

pub use cyclonedx::cyclonedx;

/// Largest `/var/lib/dpkg/status` read (a full Debian desktop's is under 10 MiB).
pub const DPKG_STATUS_MAX: u64 = 64 << 20;
/// Largest Python metadata file read (the header block is followed by the long description).
pub const METADATA_MAX: u64 = 16 << 20;
/// Largest `package.json` read.
pub const PACKAGE_JSON_MAX: u64 = 16 << 20;

/// Where the dpkg database lives in the image.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// dpkg's journal directory (`updates/0000`, … are changes not yet written into `status`).
const DPKG_UPDATES: &str = "/var/lib/dpkg/updates/";

/// `/var/lib/dpkg/status` and its ancestors: any of them a symlink and the database would be
/// missed, so that is an error rather than an image without Debian packages.
const DPKG_PATH: [&str; 4] = ["/var", "/var/lib", "/var/lib/dpkg", DPKG_STATUS];

/// The packages found, and what looked like a package record but was not one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bom {
    /// Installed packages, sorted, no duplicates.
    pub packages: Vec<Package>,
    /// Records not turned into packages, sorted by (manager, path).
    pub skipped: Vec<Skipped>,
}

/// A record that was not turned into a package, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Skipped {
    /// `apt`, `pip` or `npm`.
    pub manager: &'static str,
    /// Path inside the image.
    pub path: String,
    /// Why, e.g. `no "version" string` or `symlink, not followed`.
    pub reason: String,
}

impl Bom {
    /// Skipped records of one manager.
    pub fn skipped_count(&self, manager: &str) -> usize {
        self.skipped.iter().filter(|s| s.manager == manager).count()
    }
}

/// Why the packages could not be read. Every variant names the image and, where there is one, the
/// file inside it.
#[derive(Debug, thiserror::Error)]
pub enum BomError {
    /// The image file could not be opened.
    #[error("opening {}: {source}", image.display())]
    Open {
        /// The squashfs image.
        image: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// backhand could not read the image's superblock or directory tables.
    #[error("reading squashfs {}: {source}", image.display())]
    Squashfs {
        /// The squashfs image.
        image: PathBuf,
        /// backhand's error.
        source: backhand::BackhandError,
    },
    /// A file inside the image could not be read.
    #[error("{}: reading {file}: {source}", image.display())]
    Read {
        /// The squashfs image.
        image: PathBuf,
        /// Path inside the image.
        file: String,
        /// Underlying error.
        source: io::Error,
    },
    /// A package database file is larger than we read.
    #[error("{}: {file} is {size} bytes, more than the {limit} bytes read of a package database file", image.display())]
    TooLarge {
        /// The squashfs image.
        image: PathBuf,
        /// Path inside the image.
        file: String,
        /// Its size.
        size: u64,
        /// The limit for this kind of file.
        limit: u64,
    },
    /// The dpkg database is malformed or not where dpkg keeps it.
    #[error("{}: {file}{}: {reason}", image.display(), at_line(*line))]
    Dpkg {
        /// The squashfs image.
        image: PathBuf,
        /// Path inside the image (`/var/lib/dpkg/status`).
        file: String,
        /// 1-based line (0 when the problem is the file itself).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// `:<line>`, or nothing for line 0 (the file as a whole).
fn at_line(line: usize) -> String {
    if line == 0 { String::new() } else { format!(":{line}") }
}

/// The installed packages of the squashfs root filesystem at `squashfs`.
pub fn read_packages(squashfs: &Path) -> Result<Vec<Package>, BomError> {
    read_bom(squashfs).map(|b| b.packages)
}

/// [`read_packages`], plus the records that were skipped.
pub fn read_bom(squashfs: &Path) -> Result<Bom, BomError> {
    let image = squashfs.to_path_buf();
    let file = std::fs::File::open(squashfs).map_err(|source| BomError::Open { image: image.clone(), source })?;
    let fs = FilesystemReader::from_reader(BufReader::new(file))
        .map_err(|source| BomError::Squashfs { image: image.clone(), source })?;
    let reader = ImageReader { fs: &fs, image };

    let mut packages = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    let mut status = None;
    // `*.dist-info` / `*.egg-info` directories, and those whose metadata file was found.
    let mut info_dirs = BTreeSet::new();
    let mut info_read = BTreeSet::new();
    let skip = |skipped: &mut BTreeSet<Skipped>, manager, path: &str, reason: String| {
        skipped.insert(Skipped { manager, path: path.to_owned(), reason });
    };

    for node in fs.files() {
        let Some(path) = node.fullpath.to_str() else { continue };
        let Some(rel) = path.strip_prefix('/') else { continue };
        let comps: Vec<&str> = rel.split('/').collect();
        if DPKG_PATH.contains(&path) {
            match &node.inner {
                InnerNode::File(f) if path == DPKG_STATUS => status = Some(f),
                InnerNode::Dir(_) if path == DPKG_STATUS => {
                    return Err(reader.dpkg_error(path, 0, "a directory, not dpkg's status file"));
                }
                InnerNode::Dir(_) => {}
                _ => {
                    return Err(reader.dpkg_error(
                        path,
                        0,
                        "not a regular file or directory (symlinks are not followed)",
                    ));
                }
            }
            continue;
        }
        if let Some(entry) = path.strip_prefix(DPKG_UPDATES) {
            // dpkg's journal: entries not yet folded into `status`, which would then be stale.
            if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
                let reason = "dpkg journal entry not integrated into the status file (the build must end with a \
                              consistent dpkg database: `dpkg --configure -a`)";
                return Err(reader.dpkg_error(path, 0, reason));
            }
            continue;
        }
        if let Some(hit) = pip::classify(path, &comps) {
            match (hit, &node.inner) {
                (pip::Hit::InfoEntry { .. }, InnerNode::Dir(_)) => {
                    info_dirs.insert(path);
                }
                (pip::Hit::InfoEntry { dist_info: false }, InnerNode::File(f)) => {
                    pip_record(&reader, path, path, f, &mut packages, &mut skipped)?;
                }
                (pip::Hit::Metadata { location }, InnerNode::File(f)) => {
                    info_read.insert(location);
                    pip_record(&reader, path, location, f, &mut packages, &mut skipped)?;
                }
                (pip::Hit::Metadata { location }, InnerNode::Symlink(_)) => {
                    info_read.insert(location);
                    skip(&mut skipped, "pip", path, "symlink, not followed".to_owned());
                }
                (pip::Hit::InfoEntry { dist_info: true }, InnerNode::File(_)) => {
                    skip(&mut skipped, "pip", path, "a file; a .dist-info must be a directory".to_owned());
                }
                (pip::Hit::InfoEntry { .. }, InnerNode::Symlink(_)) => {
                    skip(&mut skipped, "pip", path, "symlink, not followed".to_owned());
                }
                (_, _) => skip(&mut skipped, "pip", path, "not a regular file or directory".to_owned()),
            }
            continue;
        }
        match (npm::classify(path, &comps), &node.inner) {
            (Some(npm::Hit::Manifest { location }), InnerNode::File(f)) => {
                let data = reader.read(path, f, PACKAGE_JSON_MAX)?;
                match npm::parse_manifest(&data) {
                    Ok((name, version)) => {
                        let purl = purl::npm(&name, &version);
                        packages.insert(Package {
                            manager: "npm".into(),
                            name,
                            version,
                            arch: None,
                            location: Some(location.to_owned()),
                            purl,
                        });
                    }
                    Err(reason) => skip(&mut skipped, "npm", path, reason),
                }
            }
            (Some(npm::Hit::Manifest { .. }), InnerNode::Dir(_)) => {
                skip(&mut skipped, "npm", path, "package.json is a directory".to_owned());
            }
            (Some(_), InnerNode::Symlink(_)) => skip(&mut skipped, "npm", path, "symlink, not followed".to_owned()),
            _ => {}
        }
    }

    for dir in info_dirs.difference(&info_read) {
        let file = if dir.to_ascii_lowercase().ends_with(".dist-info") { "METADATA" } else { "PKG-INFO" };
        skip(&mut skipped, "pip", dir, format!("no {file} file"));
    }

    match status {
        None => skip(&mut skipped, "apt", DPKG_STATUS, "absent: the image has no dpkg database".to_owned()),
        Some(f) => {
            let data = reader.read(DPKG_STATUS, f, DPKG_STATUS_MAX)?;
            let parsed = dpkg::parse(&data).map_err(|e| reader.dpkg_error(DPKG_STATUS, e.line, &e.reason))?;
            for p in parsed.installed {
                let purl = purl::deb(&p.name, &p.version, &p.arch);
                packages.insert(Package {
                    manager: "apt".into(),
                    name: p.name,
                    version: p.version,
                    arch: Some(p.arch),
                    location: None,
                    purl,
                });
            }
            for p in parsed.partial {
                let reason = format!("package {}: status `{}`, not installed", p.name, p.status);
                skip(&mut skipped, "apt", DPKG_STATUS, reason);
            }
        }
    }
    Ok(Bom { packages: packages.into_iter().collect(), skipped: skipped.into_iter().collect() })
}

/// One pip metadata file → a package or a skipped record.
fn pip_record(
    reader: &ImageReader<'_, '_>,
    path: &str,
    location: &str,
    file: &SquashfsFileReader,
    packages: &mut BTreeSet<Package>,
    skipped: &mut BTreeSet<Skipped>,
) -> Result<(), BomError> {
    let data = reader.read(path, file, METADATA_MAX)?;
    match pip::parse_metadata(&data) {
        Ok((name, version)) => {
            let purl = purl::pypi(&name, &version);
            packages.insert(Package {
                manager: "pip".into(),
                name,
                version,
                arch: None,
                location: Some(location.to_owned()),
                purl,
            });
        }
        Err(reason) => {
            skipped.insert(Skipped { manager: "pip", path: path.to_owned(), reason });
        }
    }
    Ok(())
}

/// Bounded reads of files inside the image.
struct ImageReader<'f, 'b> {
    fs: &'f FilesystemReader<'b>,
    image: PathBuf,
}

impl ImageReader<'_, '_> {
    /// The whole file at `path`, refusing one larger than `limit` before reading it.
    fn read(&self, path: &str, file: &SquashfsFileReader, limit: u64) -> Result<Vec<u8>, BomError> {
        let size = file.file_len() as u64;
        if size > limit {
            return Err(BomError::TooLarge { image: self.image.clone(), file: path.to_owned(), size, limit });
        }
        let read_err = |source| BomError::Read { image: self.image.clone(), file: path.to_owned(), source };
        let reader = self.fs.file(file).reader_checked().map_err(|e| read_err(io::Error::other(e)))?;
        let mut data = Vec::with_capacity(size as usize);
        reader.take(limit + 1).read_to_end(&mut data).map_err(read_err)?;
        if data.len() as u64 != size {
            let found = data.len();
            return Err(read_err(io::Error::other(format!("read {found} bytes of a {size}-byte file"))));
        }
        Ok(data)
    }

    fn dpkg_error(&self, file: &str, line: usize, reason: &str) -> BomError {
        BomError::Dpkg { image: self.image.clone(), file: file.to_owned(), line, reason: reason.to_owned() }
    }
}

/// A name or version a package manager could have written: 1–256 characters, none of them
/// whitespace or control characters.
/// `(name, version)` when both are present and plausible, else why not. `fields` name the two
/// as the format spells them, e.g. `["Name header", "Version header"]`.
fn name_version(name: Option<&str>, version: Option<&str>, fields: [&str; 2]) -> Result<(String, String), String> {
    match (name, version) {
        (Some(n), Some(v)) if plausible(n) && plausible(v) => Ok((n.to_owned(), v.to_owned())),
        (Some(n), Some(v)) => {
            Err(format!("implausible {} `{}` or {} `{}`", fields[0], n.escape_debug(), fields[1], v.escape_debug()))
        }
        (None, _) => Err(format!("no {}", fields[0])),
        (_, None) => Err(format!("no {}", fields[1])),
    }
}

fn plausible(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}
