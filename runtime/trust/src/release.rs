//! Verification of a whole release directory: the signature over `manifest.json`, the manifest,
//! every asset and SBOM it lists, and `B3SUMS` — in that order, every check reported.
//!
//! Nothing is ever skipped: a missing manifest, signature, `B3SUMS` or asset is a failed check.
//! Checks go on after a failure, so one run names every problem; [`Report::first_failure`] is
//! the one to act on first (a bad signature makes everything after it untrustworthy).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use crate::b3sums::{self, FileCheck, HashCache};
use crate::manifest::{B3SUMS_FILE, MANIFEST_FILE, Manifest, SIGNATURE_FILE};
use crate::signature::{self, PublicKey};

/// The largest `manifest.json` read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// What a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The minisign signature over `manifest.json`.
    Signature,
    /// `manifest.json` parses and lists something.
    Manifest,
    /// An asset or SBOM listed in the manifest (size and BLAKE3).
    Asset,
    /// `B3SUMS`: parses, lists every manifest file, and each listed file matches.
    B3sums,
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            CheckKind::Signature => "signature",
            CheckKind::Manifest => "manifest",
            CheckKind::Asset => "asset",
            CheckKind::B3sums => "b3sums",
        })
    }
}

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub kind: CheckKind,
    /// The file, relative to the release directory.
    pub path: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (on failure: expected and found).
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{status} {:<9} {}: {}", self.kind, self.path.escape_debug(), self.detail)
    }
}

/// Every check of one release directory, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }

    fn push(&mut self, kind: CheckKind, path: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { kind, path: path.to_owned(), ok, detail: detail.into() });
    }

    fn push_file(&mut self, kind: CheckKind, c: &FileCheck) {
        self.push(kind, &c.path, c.is_ok(), c.detail());
    }
}

fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

fn describe(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound { "missing".to_owned() } else { format!("cannot read: {e}") }
}

/// Verifies the release in `dir` with the trusted public key `key`.
pub fn verify_release(dir: &Path, key: &PublicKey) -> Report {
    let mut report = Report::default();
    let mut cache = HashCache::default();

    // 1. The signature over the exact manifest bytes.
    let manifest_bytes = read_bounded(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES);
    let sig_text = signature::read_signature(&dir.join(SIGNATURE_FILE));
    match (&manifest_bytes, &sig_text) {
        (Err(e), _) => report.push(CheckKind::Signature, MANIFEST_FILE, false, describe(e)),
        (Ok(_), Err(signature::SignatureError::Read { source, .. })) => {
            report.push(CheckKind::Signature, SIGNATURE_FILE, false, describe(source))
        }
        (Ok(_), Err(e)) => report.push(CheckKind::Signature, SIGNATURE_FILE, false, e.to_string()),
        (Ok(bytes), Ok(text)) => match signature::verify(bytes, text, key) {
            Ok(v) => report.push(
                CheckKind::Signature,
                SIGNATURE_FILE,
                true,
                format!(
                    "valid {} signature of {MANIFEST_FILE} by key {}; trusted comment: {}",
                    if v.prehashed { "ED (prehashed)" } else { "Ed (legacy)" },
                    v.key_id,
                    v.trusted_comment.escape_debug()
                ),
            ),
            Err(e) => report.push(CheckKind::Signature, SIGNATURE_FILE, false, e.to_string()),
        },
    }

    // 2. The manifest itself.
    let manifest = match &manifest_bytes {
        Err(e) => {
            report.push(CheckKind::Manifest, MANIFEST_FILE, false, describe(e));
            None
        }
        Ok(bytes) => match Manifest::parse(bytes) {
            Err(e) => {
                report.push(CheckKind::Manifest, MANIFEST_FILE, false, e.to_string());
                None
            }
            Ok(m) if m.architectures.is_empty() => {
                report.push(CheckKind::Manifest, MANIFEST_FILE, false, "lists no architectures");
                Some(m)
            }
            Ok(m) => {
                let archs: Vec<&str> = m.architectures.iter().map(|a| a.arch.as_str()).collect();
                let detail = format!(
                    "format {}, image {} {}, architectures {}",
                    m.format,
                    m.name.escape_debug(),
                    m.version.escape_debug(),
                    archs.join(", ").escape_debug()
                );
                report.push(CheckKind::Manifest, MANIFEST_FILE, true, detail);
                Some(m)
            }
        },
    };

    // 3. Every asset and SBOM the manifest lists.
    if let Some(m) = &manifest {
        for c in b3sums::check_assets_with(dir, m, &mut cache) {
            report.push_file(CheckKind::Asset, &c);
        }
    }

    // 4. B3SUMS: every file it lists, and every manifest file listed in it.
    match b3sums::read_b3sums(dir) {
        Err(b3sums::B3Error::Read { source, .. }) => {
            report.push(CheckKind::B3sums, B3SUMS_FILE, false, describe(&source))
        }
        Err(e) => report.push(CheckKind::B3sums, B3SUMS_FILE, false, e.to_string()),
        Ok(entries) => {
            let listed: BTreeMap<&str, &str> = entries.iter().map(|e| (e.path.as_str(), e.b3.as_str())).collect();
            for e in &entries {
                let c = cache.check(dir, &e.path, None, &e.b3);
                report.push_file(CheckKind::B3sums, &c);
            }
            if let Some(m) = &manifest {
                for rel in b3sums::release_files(m) {
                    if !listed.contains_key(rel.as_str()) {
                        report.push(CheckKind::B3sums, &rel, false, format!("not listed in {B3SUMS_FILE}"));
                    }
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_fails_every_step_without_skipping() {
        let t = tempfile::tempdir().unwrap();
        let key = PublicKey::parse("RWR06ASb9cXnN12ISF/SfRsjBgKGN9XFQs8JiczkJtv6F9HUU4IOrsxj").unwrap();
        let r = verify_release(t.path(), &key);
        assert!(!r.passed());
        let kinds: Vec<(CheckKind, bool, &str)> = r.checks.iter().map(|c| (c.kind, c.ok, c.detail.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (CheckKind::Signature, false, "missing"),
                (CheckKind::Manifest, false, "missing"),
                (CheckKind::B3sums, false, "missing"),
            ]
        );
        assert_eq!(r.first_failure().unwrap().path, "manifest.json");
        assert_eq!(r.first_failure().unwrap().to_string(), "FAIL signature manifest.json: missing");
    }
}
