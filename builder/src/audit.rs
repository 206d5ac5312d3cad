//! `audit`: a vulnerability scanner's JSON report matched to a build's bill of materials and
//! judged against the image's `[audit]` policy (docs/image-schema.md).
//!
//! Owns reading a report — **trivy** (`trivy … --format json`: `Results[].Vulnerabilities[]`) or
//! **grype** (`grype … -o json`: `matches[]`), told apart by their top-level keys — as hostile
//! input: size and count caps, every field type-checked, control characters refused, and every
//! problem reported with the report's path and the JSON path of the offending value. Findings
//! are matched to the manifest's `packages` by (manager, name, version), pip names compared
//! after PEP 503 normalization; what matches becomes a [`Vulnerability`] (deduplicated, sorted
//! by package then id), what does not is returned as unmatched (reported, never recorded). The
//! policy: a finding is allowed when its id is in `allow`; the audit fails when a matched,
//! non-allowed finding is at or above `fail_on`.
//!
//! Also owns the rendering of the result (text table and `--json`) and the atomic rewrite of
//! `manifest.json` with the findings, which removes the signature those bytes no longer match.
//! Printing and exit codes stay in `main.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use capsem_trust::manifest::{
    ArchEntry, AuditInfo, MANIFEST_FILE, Manifest, ManifestError, Package, SIGNATURE_FILE, Vulnerability,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{AuditPolicy, FailOn};

/// PEP 503 name normalization, as the bill of materials' purls use it.
pub use crate::bom::purl::pep503;

/// Largest scanner report read (a full trivy report of a large image is a few MiB).
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Most findings one report may hold.
pub const MAX_FINDINGS: usize = 200_000;
/// Longest package name, version, advisory id or scanner type accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 512;

/// Severity of a finding, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// The scanner has no rating.
    Unknown,
    /// Grype's "Negligible" (Debian's "unimportant").
    Negligible,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Parses a scanner's severity, in any case (`HIGH`, `High`).
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_uppercase().as_str() {
            "UNKNOWN" => Self::Unknown,
            "NEGLIGIBLE" => Self::Negligible,
            "LOW" => Self::Low,
            "MEDIUM" => Self::Medium,
            "HIGH" => Self::High,
            "CRITICAL" => Self::Critical,
            _ => return None,
        })
    }

    /// Upper-case name, as recorded in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Negligible => "NEGLIGIBLE",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }

    /// True when a finding of this severity fails under `fail_on` (unless allowed). UNKNOWN and
    /// NEGLIGIBLE never fail; `none` fails nothing.
    pub fn fails(self, fail_on: FailOn) -> bool {
        let threshold = match fail_on {
            FailOn::Critical => Self::Critical,
            FailOn::High => Self::High,
            FailOn::Medium => Self::Medium,
            FailOn::Low => Self::Low,
            FailOn::None => return false,
        };
        self >= threshold
    }
}

/// Which scanner wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scanner {
    /// Aqua Security's trivy.
    Trivy,
    /// Anchore's grype.
    Grype,
}

impl Scanner {
    /// `trivy` or `grype`, as recorded in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trivy => "trivy",
            Self::Grype => "grype",
        }
    }
}

/// One finding as the scanner reported it. Field order is the sort order: package, then id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// Package name as the scanner spells it.
    pub name: String,
    /// Advisory id.
    pub id: String,
    /// Installed version the scanner saw.
    pub version: String,
    /// Bill-of-materials manager the scanner's package type maps to (`apt`, `pip`, `npm`), if any.
    pub manager: Option<String>,
    /// The scanner's package type (trivy `Results[].Type`, grype `artifact.type`).
    pub kind: String,
    /// Severity.
    pub severity: Severity,
    /// Fixed version(s) the scanner knows, comma-separated when several.
    pub fixed_in: Option<String>,
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Which scanner wrote it.
    pub scanner: Scanner,
    /// BLAKE3 of the report's bytes, hex.
    pub report_b3: String,
    /// Every finding, in report order.
    pub findings: Vec<Finding>,
}

/// The result of one audit of one bill of materials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditOutcome {
    /// Scanner and report hash, as recorded in the manifest's `audited`.
    #[serde(rename = "audited")]
    pub info: AuditInfo,
    /// Findings matched to a package, deduplicated, sorted by (package, id).
    pub vulnerabilities: Vec<Vulnerability>,
    /// Findings that match no package (reported, not recorded), deduplicated and sorted.
    pub unmatched: Vec<Finding>,
    /// The vulnerabilities that fail the policy: not allowed, at or above `fail_on`.
    pub failing: Vec<Vulnerability>,
}

impl AuditOutcome {
    /// True when nothing fails the policy.
    pub fn passed(&self) -> bool {
        self.failing.is_empty()
    }

    /// Records the vulnerabilities and the report in an architecture's manifest entry.
    pub fn record_in(&self, entry: &mut ArchEntry) {
        entry.vulnerabilities = self.vulnerabilities.clone();
        entry.audited = Some(self.info.clone());
    }
}

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("cannot {op} `{}`: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A file is larger than its cap.
    #[error("`{}` is larger than {limit} bytes; refusing to read it", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// The report is not JSON.
    #[error("scanner report `{}` is not valid JSON: {source}", path.display())]
    Json {
        /// The report.
        path: PathBuf,
        /// Parser error (with line and column).
        source: serde_json::Error,
    },
    /// The report is JSON but neither format.
    #[error(
        "scanner report `{}` is neither trivy nor grype JSON: {why}; \
         write one with `trivy rootfs --format json` or `grype dir:<rootfs> -o json`",
        path.display()
    )]
    UnknownFormat {
        /// The report.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// A value of the report has the wrong shape.
    #[error("scanner report `{}` ({scanner}): {json_path}: {what}", path.display())]
    Malformed {
        /// The report.
        path: PathBuf,
        /// `trivy` or `grype`.
        scanner: &'static str,
        /// JSON path of the offending value, e.g. `$.Results[2].Vulnerabilities[0].Severity`.
        json_path: String,
        /// What is wrong with it.
        what: String,
    },
    /// More findings than [`MAX_FINDINGS`].
    #[error("scanner report `{}` has more than {MAX_FINDINGS} findings; refusing to process it", path.display())]
    TooManyFindings {
        /// The report.
        path: PathBuf,
    },
    /// manifest.json is not a manifest this version reads.
    #[error("`{}`: {source}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: ManifestError,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { op, path, source }
}

/// Reads a regular file of at most `limit` bytes.
fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, AuditError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.is_file() {
        return Err(AuditError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if meta.len() > limit {
        return Err(AuditError::TooLarge { path: path.to_path_buf(), limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(AuditError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

/// Reads and parses a scanner report.
pub fn read_report(path: &Path) -> Result<ScanReport, AuditError> {
    let bytes = read_capped(path, MAX_REPORT_BYTES)?;
    parse_report(&bytes, path)
}

/// Reads the report at `report_path` and matches it to `packages` under `policy` — the entry a
/// build calls directly.
pub fn apply(report_path: &Path, packages: &[Package], policy: &AuditPolicy) -> Result<AuditOutcome, AuditError> {
    Ok(evaluate(&read_report(report_path)?, packages, policy))
}

// ---- parsing -------------------------------------------------------------------------------

/// Walks a report's JSON, naming the report and the JSON path in every error.
struct Walk<'a> {
    path: &'a Path,
    scanner: Scanner,
}

impl Walk<'_> {
    fn bad(&self, at: &str, what: impl Into<String>) -> AuditError {
        AuditError::Malformed {
            path: self.path.to_path_buf(),
            scanner: self.scanner.as_str(),
            json_path: at.to_string(),
            what: what.into(),
        }
    }

    fn object<'v>(&self, v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, AuditError> {
        v.as_object().ok_or_else(|| self.bad(at, format!("expected an object, found {}", kind_of(v))))
    }

    fn req_object<'v>(
        &self,
        o: &'v Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<&'v Map<String, Value>, AuditError> {
        let at = format!("{at}.{key}");
        match o.get(key) {
            Some(v) => self.object(v, &at),
            None => Err(self.bad(&at, "missing")),
        }
    }

    /// An array; absent or `null` is empty (scanners omit empty lists).
    fn array<'v>(&self, o: &'v Map<String, Value>, key: &str, at: &str) -> Result<&'v [Value], AuditError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.bad(&format!("{at}.{key}"), format!("expected an array, found {}", kind_of(v)))),
        }
    }

    fn text(&self, v: &Value, at: &str) -> Result<String, AuditError> {
        let Value::String(s) = v else {
            return Err(self.bad(at, format!("expected a string, found {}", kind_of(v))));
        };
        if s.len() > MAX_FIELD_BYTES {
            return Err(self.bad(at, format!("longer than {MAX_FIELD_BYTES} bytes")));
        }
        if s.chars().any(char::is_control) {
            return Err(self.bad(at, "contains control characters"));
        }
        Ok(s.clone())
    }

    /// A required, non-empty string.
    fn req_str(&self, o: &Map<String, Value>, key: &str, at: &str) -> Result<String, AuditError> {
        let at = format!("{at}.{key}");
        let s = self.text(o.get(key).ok_or_else(|| self.bad(&at, "missing"))?, &at)?;
        if s.trim().is_empty() {
            return Err(self.bad(&at, "empty"));
        }
        Ok(s)
    }

    /// An optional string; absent, `null` and `""` are `None`.
    fn opt_str(&self, o: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, AuditError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(self.text(v, &format!("{at}.{key}"))?).filter(|s| !s.trim().is_empty())),
        }
    }

    fn severity(&self, o: &Map<String, Value>, key: &str, at: &str) -> Result<Severity, AuditError> {
        let s = self.req_str(o, key, at)?;
        Severity::parse(&s).ok_or_else(|| {
            self.bad(
                &format!("{at}.{key}"),
                format!("unknown severity `{s}` (expected CRITICAL, HIGH, MEDIUM, LOW, NEGLIGIBLE or UNKNOWN)"),
            )
        })
    }

    fn push(&self, out: &mut Vec<Finding>, f: Finding) -> Result<(), AuditError> {
        if out.len() >= MAX_FINDINGS {
            return Err(AuditError::TooManyFindings { path: self.path.to_path_buf() });
        }
        out.push(f);
        Ok(())
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Bill-of-materials manager of a trivy result `Type` (OS family or language type).
fn trivy_manager(kind: &str) -> Option<&'static str> {
    match kind {
        "debian" | "ubuntu" => Some("apt"),
        "python-pkg" | "pip" | "pipenv" | "poetry" | "uv" => Some("pip"),
        "node-pkg" | "npm" | "yarn" | "pnpm" => Some("npm"),
        _ => None,
    }
}

/// Bill-of-materials manager of a grype `artifact.type` (syft package type).
fn grype_manager(kind: &str) -> Option<&'static str> {
    match kind {
        "deb" => Some("apt"),
        "python" => Some("pip"),
        "npm" => Some("npm"),
        _ => None,
    }
}

/// Parses report bytes (`path` names the report in errors), detecting the scanner.
pub fn parse_report(bytes: &[u8], path: &Path) -> Result<ScanReport, AuditError> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|source| AuditError::Json { path: path.to_path_buf(), source })?;
    let unknown = |why: String| AuditError::UnknownFormat { path: path.to_path_buf(), why };
    let Value::Object(obj) = &root else {
        return Err(unknown(format!("the document is {}, not an object", kind_of(&root))));
    };
    let is_trivy = obj.contains_key("Results") || obj.contains_key("SchemaVersion");
    let is_grype = obj.contains_key("matches");
    let scanner = match (is_trivy, is_grype) {
        (true, false) => Scanner::Trivy,
        (false, true) => Scanner::Grype,
        (true, true) => return Err(unknown("it has both trivy's `Results` and grype's `matches`".into())),
        (false, false) => {
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
            keys.sort_unstable();
            let keys: Vec<String> = keys.iter().map(|k| format!("`{}`", k.escape_debug())).collect();
            return Err(unknown(format!(
                "no `Results`/`SchemaVersion` (trivy) or `matches` (grype) at the top level (found: {})",
                if keys.is_empty() { "nothing".to_string() } else { keys.join(", ") }
            )));
        }
    };
    let w = Walk { path, scanner };
    let findings = match scanner {
        Scanner::Trivy => trivy(&w, obj)?,
        Scanner::Grype => grype(&w, obj)?,
    };
    Ok(ScanReport { scanner, report_b3: blake3::hash(bytes).to_hex().to_string(), findings })
}

fn trivy(w: &Walk<'_>, root: &Map<String, Value>) -> Result<Vec<Finding>, AuditError> {
    let mut out = Vec::new();
    for (i, result) in w.array(root, "Results", "$")?.iter().enumerate() {
        let at = format!("$.Results[{i}]");
        let result = w.object(result, &at)?;
        let vulns = w.array(result, "Vulnerabilities", &at)?;
        if vulns.is_empty() {
            continue;
        }
        let kind = w.req_str(result, "Type", &at)?;
        let manager = trivy_manager(&kind);
        for (j, v) in vulns.iter().enumerate() {
            let at = format!("{at}.Vulnerabilities[{j}]");
            let v = w.object(v, &at)?;
            let finding = Finding {
                name: w.req_str(v, "PkgName", &at)?,
                id: w.req_str(v, "VulnerabilityID", &at)?,
                version: w.req_str(v, "InstalledVersion", &at)?,
                manager: manager.map(str::to_string),
                kind: kind.clone(),
                severity: w.severity(v, "Severity", &at)?,
                fixed_in: w.opt_str(v, "FixedVersion", &at)?,
            };
            w.push(&mut out, finding)?;
        }
    }
    Ok(out)
}

fn grype(w: &Walk<'_>, root: &Map<String, Value>) -> Result<Vec<Finding>, AuditError> {
    let mut out = Vec::new();
    for (i, m) in w.array(root, "matches", "$")?.iter().enumerate() {
        let at = format!("$.matches[{i}]");
        let m = w.object(m, &at)?;
        let vuln = w.req_object(m, "vulnerability", &at)?;
        let vat = format!("{at}.vulnerability");
        let art = w.req_object(m, "artifact", &at)?;
        let aat = format!("{at}.artifact");
        let fixed_in = match vuln.get("fix") {
            None | Some(Value::Null) => None,
            Some(fix) => {
                let fat = format!("{vat}.fix");
                let fix = w.object(fix, &fat)?;
                let mut versions = Vec::new();
                for (k, v) in w.array(fix, "versions", &fat)?.iter().enumerate() {
                    let v = w.text(v, &format!("{fat}.versions[{k}]"))?;
                    if !v.trim().is_empty() && !versions.contains(&v) {
                        versions.push(v);
                    }
                }
                (!versions.is_empty()).then(|| versions.join(", "))
            }
        };
        let kind = w.req_str(art, "type", &aat)?;
        let finding = Finding {
            name: w.req_str(art, "name", &aat)?,
            id: w.req_str(vuln, "id", &vat)?,
            version: w.req_str(art, "version", &aat)?,
            manager: grype_manager(&kind).map(str::to_string),
            kind,
            severity: w.severity(vuln, "severity", &vat)?,
            fixed_in,
        };
        w.push(&mut out, finding)?;
    }
    Ok(out)
}

// ---- matching and policy -------------------------------------------------------------------

/// The name as compared for a manager: PEP 503 for pip, exact otherwise.
fn match_name(manager: &str, name: &str) -> String {
    if manager == "pip" { pep503(name) } else { name.to_string() }
}

/// Matches a parsed report to a bill of materials and applies the policy.
pub fn evaluate(report: &ScanReport, packages: &[Package], policy: &AuditPolicy) -> AuditOutcome {
    let mut bom: BTreeMap<(&str, String, &str), &Package> = BTreeMap::new();
    for p in packages {
        bom.entry((p.manager.as_str(), match_name(&p.manager, &p.name), p.version.as_str())).or_insert(p);
    }
    // (package, id, manager, version) → (severity, vulnerability): the manifest's order.
    let mut matched: BTreeMap<(String, String, String, String), (Severity, Vulnerability)> = BTreeMap::new();
    let mut unmatched = BTreeSet::new();
    for f in &report.findings {
        let hit = f.manager.as_deref().and_then(|m| bom.get(&(m, match_name(m, &f.name), f.version.as_str())));
        let Some(p) = hit else {
            unmatched.insert(f.clone());
            continue;
        };
        let key = (p.name.clone(), f.id.clone(), p.manager.clone(), p.version.clone());
        let entry = matched.entry(key).or_insert_with(|| {
            (
                f.severity,
                Vulnerability {
                    package: p.name.clone(),
                    version: p.version.clone(),
                    manager: p.manager.clone(),
                    id: f.id.clone(),
                    severity: f.severity.as_str().to_string(),
                    fixed_in: f.fixed_in.clone(),
                    allowed: policy.allow.contains(&f.id),
                },
            )
        });
        // The same finding reported twice (two locations, two result sets): keep the worst
        // rating and the first fix known.
        if f.severity > entry.0 {
            entry.0 = f.severity;
            entry.1.severity = f.severity.as_str().to_string();
        }
        if entry.1.fixed_in.is_none() {
            entry.1.fixed_in.clone_from(&f.fixed_in);
        }
    }
    let failing =
        matched.values().filter(|(s, v)| !v.allowed && s.fails(policy.fail_on)).map(|(_, v)| v.clone()).collect();
    AuditOutcome {
        info: AuditInfo { scanner: report.scanner.as_str().to_string(), report_b3: report.report_b3.clone() },
        vulnerabilities: matched.into_values().map(|(_, v)| v).collect(),
        unmatched: unmatched.into_iter().collect(),
        failing,
    }
}

/// Allowed ids that no architecture's report mentions (candidates for removal from `allow`).
pub fn unused_allows<'p>(policy: &'p AuditPolicy, results: &[(String, AuditOutcome)]) -> Vec<&'p str> {
    let seen: BTreeSet<&str> = results
        .iter()
        .flat_map(|(_, o)| {
            o.vulnerabilities.iter().map(|v| v.id.as_str()).chain(o.unmatched.iter().map(|f| f.id.as_str()))
        })
        .collect();
    policy.allow.iter().map(String::as_str).filter(|id| !seen.contains(id)).collect()
}

/// Failing advisory ids over every architecture, sorted and unique.
pub fn failing_ids(results: &[(String, AuditOutcome)]) -> Vec<&str> {
    let ids: BTreeSet<&str> = results.iter().flat_map(|(_, o)| o.failing.iter().map(|v| v.id.as_str())).collect();
    ids.into_iter().collect()
}

// ---- output --------------------------------------------------------------------------------

/// Left-aligned columns, two spaces apart, each line indented by two spaces.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, " {cell:<w$} ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The human rendering: a findings table per architecture, then one summary line.
pub fn render_text(scanner: Scanner, policy: &AuditPolicy, results: &[(String, AuditOutcome)]) -> String {
    let mut out = String::new();
    let fail_on = policy.fail_on.as_str();
    let (mut total, mut allowed, mut unmatched) = (0, 0, 0);
    for (arch, o) in results {
        total += o.vulnerabilities.len();
        allowed += o.vulnerabilities.iter().filter(|v| v.allowed).count();
        unmatched += o.unmatched.len();
        let _ = writeln!(
            out,
            "{arch}: {} finding{} in the bill of materials ({} failing, {} allowed), {} unmatched [{}, fail_on = {fail_on}]",
            o.vulnerabilities.len(),
            if o.vulnerabilities.len() == 1 { "" } else { "s" },
            o.failing.len(),
            o.vulnerabilities.iter().filter(|v| v.allowed).count(),
            o.unmatched.len(),
            scanner.as_str(),
        );
        if !o.vulnerabilities.is_empty() {
            let mut rows = vec![
                ["SEVERITY", "ID", "PACKAGE", "VERSION", "MANAGER", "FIXED IN", "POLICY"].map(String::from).to_vec(),
            ];
            for v in &o.vulnerabilities {
                let policy_cell = if v.allowed {
                    "allowed"
                } else if o.failing.contains(v) {
                    "FAIL"
                } else {
                    "-"
                };
                rows.push(vec![
                    v.severity.clone(),
                    v.id.clone(),
                    v.package.clone(),
                    v.version.clone(),
                    v.manager.clone(),
                    v.fixed_in.clone().unwrap_or_else(|| "-".into()),
                    policy_cell.into(),
                ]);
            }
            table(&mut out, &rows);
        }
        if !o.unmatched.is_empty() {
            let _ = writeln!(out, "  unmatched (no such package in {arch}'s bill of materials; not recorded):");
            let mut rows =
                vec![["SEVERITY", "ID", "PACKAGE", "VERSION", "TYPE", "FIXED IN"].map(String::from).to_vec()];
            for f in &o.unmatched {
                rows.push(vec![
                    f.severity.as_str().into(),
                    f.id.clone(),
                    f.name.clone(),
                    f.version.clone(),
                    f.kind.clone(),
                    f.fixed_in.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            table(&mut out, &rows);
        }
    }
    let failing = failing_ids(results);
    let counts = format!("{total} matched finding{} ({allowed} allowed), {unmatched} unmatched", plural(total));
    if failing.is_empty() {
        let _ = writeln!(out, "audit passed: {counts}; nothing unallowed at or above {fail_on}");
    } else {
        let _ = writeln!(out, "audit failed: {counts}; not allowed at or above {fail_on}: {}", failing.join(", "));
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `--json` output of `capsem-builder audit` (documented in docs/image-schema.md).
#[derive(Debug, Serialize)]
pub struct JsonAudit<'a> {
    /// Shape version.
    pub schema_version: u32,
    /// The report file as given.
    pub report: String,
    /// `trivy` or `grype`.
    pub scanner: &'static str,
    /// BLAKE3 of the report.
    pub report_b3: &'a str,
    /// The policy applied.
    pub policy: &'a AuditPolicy,
    /// True when no architecture fails.
    pub passed: bool,
    /// Failing advisory ids over every architecture.
    pub failing_ids: Vec<&'a str>,
    /// Per architecture: vulnerabilities, unmatched findings, failing ones.
    pub architectures: BTreeMap<&'a str, &'a AuditOutcome>,
}

/// The `--json` document, pretty-printed.
pub fn to_json(
    report_path: &Path,
    scan: &ScanReport,
    policy: &AuditPolicy,
    results: &[(String, AuditOutcome)],
) -> String {
    let doc = JsonAudit {
        schema_version: 1,
        report: report_path.display().to_string(),
        scanner: scan.scanner.as_str(),
        report_b3: &scan.report_b3,
        policy,
        passed: results.iter().all(|(_, o)| o.passed()),
        failing_ids: failing_ids(results),
        architectures: results.iter().map(|(a, o)| (a.as_str(), o)).collect(),
    };
    serde_json::to_string_pretty(&doc).expect("audit output serializes")
}

// ---- manifest ------------------------------------------------------------------------------

/// Reads and parses `<assets>/manifest.json`.
pub fn read_manifest(assets: &Path) -> Result<Manifest, AuditError> {
    let path = assets.join(MANIFEST_FILE);
    let bytes = read_capped(&path, MAX_MANIFEST_BYTES)?;
    Manifest::parse(&bytes).map_err(|source| AuditError::Manifest { path, source })
}

/// What [`write_manifest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file already had these exact bytes; it and its signature were left alone.
    Unchanged,
    /// The file was replaced; `signature_removed` tells whether a signature was deleted.
    Rewritten {
        /// A `manifest.json.minisig` existed and was removed.
        signature_removed: bool,
    },
}

/// Replaces `<assets>/manifest.json` with `manifest`'s canonical bytes (temporary file, fsync,
/// rename) and removes `manifest.json.minisig`, which no longer matches. Nothing changes when
/// the bytes are already those.
pub fn write_manifest(assets: &Path, manifest: &Manifest) -> Result<Written, AuditError> {
    let path = assets.join(MANIFEST_FILE);
    let bytes = manifest.to_json();
    if fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(Written::Unchanged);
    }
    capsem_trust::atomic::write(&path, &bytes).map_err(io_err("write", &path))?;
    let sig = assets.join(SIGNATURE_FILE);
    let signature_removed = match fs::remove_file(&sig) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err("remove the stale signature", &sig)(e)),
    };
    if let Ok(dir) = File::open(assets) {
        let _ = dir.sync_all(); // the signature's removal
    }
    Ok(Written::Rewritten { signature_removed })
}

#[cfg(test)]
mod tests;
