//! Rollback protection: the newest release of each image this machine has accepted, so that an
//! older — validly signed, but perhaps vulnerable — release cannot be booted in its place.
//!
//! The store is one JSON file (the runtime chooses where: `~/.capsem/trusted-releases.json`):
//!
//! ```json
//! {
//!   "format": 1,
//!   "images": {
//!     "default": { "version": "1.2.0", "build_timestamp": "2024-05-01T00:00:00Z", "source_date_epoch": 1714521600 }
//!   }
//! }
//! ```
//!
//! **Order.** Releases of one image (`manifest.name`) are ordered by `source_date_epoch` (the
//! signed build time; `build_timestamp` is the same instant as text). When two releases have the
//! same build time — an image whose config pins `SOURCE_DATE_EPOCH` — their versions decide,
//! compared naturally (runs of digits as numbers, everything else byte-wise, so `1.10` > `1.9`).
//! A release equal to the recorded one (same time, same version) is accepted: that is a reboot of
//! it, or a bit-identical rebuild. Anything ordered before the recorded release is refused.
//!
//! **Fail closed.** A missing store is empty (first boot); a store that cannot be read, is not
//! JSON of this shape, or has another format is an error naming its path — never silently
//! treated as empty, which would turn the protection off.
//!
//! **Only forward.** [`RollbackStore::record`] re-reads the file, keeps the newer of what is on
//! disk and what it records for each image, and writes atomically ([`crate::atomic`]). Two
//! processes recording at the same instant can still race between the read and the rename; the
//! loser's entry is re-recorded on its next boot.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::error::ReleaseStamp;
use crate::manifest::Manifest;

/// The store format this crate writes and reads.
pub const STORE_FORMAT: u32 = 1;

/// The largest store file read.
pub const MAX_STORE_BYTES: u64 = 1 << 20;

/// Why the rollback store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The file exists but could not be read.
    #[error("cannot read the rollback store `{}`: {source}", path.display())]
    Read {
        /// The store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a rollback store (refused rather than treated as empty).
    #[error(
        "the rollback store `{}` is corrupt: {reason}; refusing to boot without rollback \
         protection (move the file away to reset it)",
        path.display()
    )]
    Corrupt {
        /// The store.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be written.
    #[error("cannot write the rollback store `{}`: {source}", path.display())]
    Write {
        /// The store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl RollbackError {
    /// The store path.
    pub fn path(&self) -> &Path {
        match self {
            RollbackError::Read { path, .. }
            | RollbackError::Corrupt { path, .. }
            | RollbackError::Write { path, .. } => path,
        }
    }
}

/// The newest release of one image accepted on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    /// `manifest.version`.
    pub version: String,
    /// `manifest.build_timestamp`.
    pub build_timestamp: String,
    /// `manifest.source_date_epoch`: what releases are ordered by.
    pub source_date_epoch: u64,
}

impl Seen {
    /// The entry for a manifest.
    pub fn of(manifest: &Manifest) -> Seen {
        Seen {
            version: manifest.version.clone(),
            build_timestamp: manifest.build_timestamp.clone(),
            source_date_epoch: manifest.source_date_epoch,
        }
    }

    /// Release order: build time, then version (naturally) on equal build times.
    pub fn order(&self, other: &Seen) -> Ordering {
        self.source_date_epoch.cmp(&other.source_date_epoch).then_with(|| natural_cmp(&self.version, &other.version))
    }

    pub(crate) fn stamp(&self) -> ReleaseStamp {
        ReleaseStamp {
            version: self.version.clone(),
            build_timestamp: self.build_timestamp.clone(),
            source_date_epoch: self.source_date_epoch,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: u32,
    images: BTreeMap<String, Seen>,
}

/// The rollback store: the newest accepted release per image name.
#[derive(Debug, Clone)]
pub struct RollbackStore {
    path: PathBuf,
    images: BTreeMap<String, Seen>,
}

/// Reads the store at `path`; `None` when it does not exist.
fn load(path: &Path) -> Result<Option<BTreeMap<String, Seen>>, RollbackError> {
    let read_err = |source| RollbackError::Read { path: path.to_path_buf(), source };
    let corrupt = |reason: String| RollbackError::Corrupt { path: path.to_path_buf(), reason };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STORE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_STORE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STORE_BYTES} bytes")));
    }
    let parsed: StoreFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if parsed.format != STORE_FORMAT {
        return Err(corrupt(format!("format {}; this version reads format {STORE_FORMAT} only", parsed.format)));
    }
    Ok(Some(parsed.images))
}

impl RollbackStore {
    /// Opens the store at `path`: a missing file is an empty store; an unreadable or malformed
    /// one is an error naming `path` (fail closed).
    pub fn open(path: &Path) -> Result<RollbackStore, RollbackError> {
        let images = load(path)?.unwrap_or_default();
        Ok(RollbackStore { path: path.to_path_buf(), images })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest accepted release of `image`, if any.
    pub fn get(&self, image: &str) -> Option<&Seen> {
        self.images.get(image)
    }

    /// Every image and its newest accepted release, by name.
    pub fn images(&self) -> &BTreeMap<String, Seen> {
        &self.images
    }

    /// The recorded release that `manifest` would roll back from: `Some` when a release of the
    /// same image ordered after it (see the module docs) has been recorded.
    pub fn newer_than(&self, manifest: &Manifest) -> Option<&Seen> {
        let presented = Seen::of(manifest);
        self.images.get(&manifest.name).filter(|seen| seen.order(&presented) == Ordering::Greater)
    }

    /// Records `manifest` as accepted, if it is newer than what the store (re-read from disk)
    /// holds for its image; never moves an entry backwards. Writes atomically, creating the
    /// parent directory if needed. Returns whether the file changed.
    pub fn record(&mut self, manifest: &Manifest) -> Result<bool, RollbackError> {
        let on_disk = load(&self.path)?;
        let mut images = on_disk.clone().unwrap_or_default();
        merge(&mut images, &manifest.name, &Seen::of(manifest));
        self.images = images;
        if on_disk.as_ref() == Some(&self.images) {
            return Ok(false);
        }
        let file = StoreFile { format: STORE_FORMAT, images: self.images.clone() };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("the store always serializes");
        bytes.push(b'\n');
        let write_err = |source| RollbackError::Write { path: self.path.clone(), source };
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        crate::atomic::write(&self.path, &bytes).map_err(write_err)?;
        Ok(true)
    }
}

fn merge(images: &mut BTreeMap<String, Seen>, name: &str, seen: &Seen) {
    match images.get(name) {
        Some(old) if old.order(seen) != Ordering::Less => {}
        _ => {
            images.insert(name.to_owned(), seen.clone());
        }
    }
}

/// Natural order of version strings: runs of ASCII digits compare as numbers (leading zeros
/// ignored, then by length of the run), everything else byte-wise.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (run(a), run(b));
                let (da, db) = (&a[..na], &b[..nb]);
                let trim = |d: &[u8]| {
                    let zeros = d.iter().take_while(|&&c| c == b'0').count();
                    d[zeros..].to_vec()
                };
                let (ta, tb) = (trim(da), trim(db));
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb)).then_with(|| na.cmp(&nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        assert_eq!(natural_cmp("1.10", "1.9"), Ordering::Greater);
        assert_eq!(natural_cmp("1.2.0", "1.2.0"), Ordering::Equal);
        assert_eq!(natural_cmp("1.2", "1.2.1"), Ordering::Less);
        assert_eq!(natural_cmp("2024.05", "2024.5"), Ordering::Greater, "same value, longer run");
        assert_eq!(natural_cmp("1.0-rc1", "1.0-rc2"), Ordering::Less);
        assert_eq!(natural_cmp("a", "b"), Ordering::Less);
        assert_eq!(natural_cmp("", "0"), Ordering::Less);
    }

    #[test]
    fn seen_orders_by_time_then_version() {
        let s = |v: &str, t: u64| Seen { version: v.into(), build_timestamp: String::new(), source_date_epoch: t };
        assert_eq!(s("9.0", 1).order(&s("1.0", 2)), Ordering::Less, "time first");
        assert_eq!(s("1.1", 5).order(&s("1.0", 5)), Ordering::Greater, "version on a tie");
        assert_eq!(s("1.0", 5).order(&s("1.0", 5)), Ordering::Equal);
    }
}
