//! Coded diagnostics: what `validate` reports, and how it is shown to people and machines.
//!
//! A [`Diagnostic`] has a stable [`Code`], a severity, a message, a primary location
//! (file + span, or just a file), an optional help line and optional notes. Codes and their
//! meanings are listed in `docs/diagnostics.md`; each has a golden test under
//! `builder/tests/golden/`. Rendering is deterministic: no colour unless asked for, sorted
//! order, paths shown as `<display root>/<path relative to the image>`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::source::{Loc, SourceMap};

/// How bad a diagnostic is. Errors fail `validate` (exit 1) and block builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the build.
    Error,
    /// Worth fixing; does not block.
    Warning,
}

macro_rules! codes {
    ($( $variant:ident = $code:literal, $sev:ident, $title:literal; )*) => {
        /// Every diagnostic code. Codes are stable: never renumber, only add.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $( #[doc = $title] $variant, )* }

        impl Code {
            /// All codes, in declaration order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
            /// The code as shown, e.g. `E001`.
            pub fn as_str(self) -> &'static str { match self { $(Code::$variant => $code,)* } }
            /// Severity every diagnostic with this code has.
            pub fn severity(self) -> Severity { match self { $(Code::$variant => Severity::$sev,)* } }
            /// One-line meaning of the code.
            pub fn title(self) -> &'static str { match self { $(Code::$variant => $title,)* } }
        }
    };
}

codes! {
    MissingField = "E001", Error, "missing required field, table or file";
    TomlSyntax = "E002", Error, "TOML syntax error";
    WrongType = "E003", Error, "value has the wrong type";
    EmptyValue = "E004", Error, "empty value where at least one entry is required";
    InvalidChoice = "E005", Error, "value is not one of the allowed choices";
    BadDomain = "E006", Error, "invalid domain pattern";
    OutOfRange = "E007", Error, "number out of range";
    DuplicateKey = "E008", Error, "the same table key is defined in two files";
    RelativeGuestPath = "E009", Error, "guest file path is not absolute and normalized";
    InvalidJsonContent = "E010", Error, "content of a .json file is not valid JSON";
    UnknownKey = "E011", Error, "unknown key";
    UnexpectedTopLevel = "E012", Error, "file has the wrong top-level table";
    UnreadableFile = "E013", Error, "file cannot be read as UTF-8 text";
    Unpinned = "E014", Error, "input is not pinned (not reproducible)";
    BadIdentifier = "E015", Error, "invalid identifier";
    BadPackageSpec = "E016", Error, "invalid package specification";
    InvalidTomlContent = "E017", Error, "content of a .toml file is not valid TOML";
    BadUrl = "E018", Error, "invalid URL";
    BadEnvVar = "E019", Error, "invalid environment variable name";
    BadValue = "E020", Error, "invalid value";
    ConflictingFields = "E021", Error, "fields that cannot be used together";
    DefconfigMissing = "E304", Error, "kernel defconfig missing for a declared architecture";
    ArtifactMissing = "E305", Error, "required artifact missing";
    NoNpmRegistry = "W001", Warning, "npm packages but no npm registry in web.toml";
    DevPackage = "W002", Warning, "development package in the image";
    SecretLooking = "W003", Warning, "string looks like a secret";
    NoPackageNetwork = "W004", Warning, "package set without a network table";
    ApiKeyInConfig = "W005", Warning, "API key in config";
    PlaceholderContent = "W006", Warning, "placeholder content";
    BroadWildcard = "W007", Warning, "over-broad wildcard domain";
    DuplicateEnvVar = "W008", Warning, "the same API key variable in two providers";
    ShellMetachar = "W009", Warning, "install command contains shell metacharacters";
    PathWithoutUsrBin = "W010", Warning, "PATH lacks /usr/bin";
    AllowAllNoBlock = "W011", Warning, "all unknown traffic allowed with no block list";
    NonStaticTarget = "W012", Warning, "rust_target is not a known Linux target";
    CliWithoutVersion = "W013", Warning, "CLI without version_command";
    AllowBlockOverlap = "W014", Warning, "a pattern is both allowed and blocked";
    UnpinnedPackage = "W015", Warning, "package version not pinned";
    DisabledWithInstall = "W016", Warning, "disabled provider still lists an install";
    BadAdvisoryId = "E022", Error, "invalid advisory id";
    DuplicateAdvisoryId = "W017", Warning, "the same advisory id is allowed twice";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A span inside a loaded file.
    Span(Loc),
    /// A whole path (relative to the image directory) that has no loaded text: a missing file,
    /// a directory, an unreadable file.
    Path(String),
    /// The image directory itself.
    Root,
}

/// One problem found in an image definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code.
    pub code: Code,
    /// What is wrong, naming the key or value.
    pub message: String,
    /// Where.
    pub location: Location,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at a span.
    pub fn at(code: Code, loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic { code, message: message.into(), location: Location::Span(loc), help: None }
    }

    /// A diagnostic about a whole path relative to the image directory.
    pub fn at_path(code: Code, rel_path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { code, message: message.into(), location: Location::Path(rel_path.into()), help: None }
    }

    /// Adds a help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Severity (from the code).
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }
}

/// Resolved position of a diagnostic, for sorting and output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Pos {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    end_line: Option<usize>,
    end_column: Option<usize>,
}

fn resolve(d: &Diagnostic, sources: &SourceMap, root: &str) -> Pos {
    let join =
        |rel: &str| if root.is_empty() { rel.to_string() } else { format!("{}/{rel}", root.trim_end_matches('/')) };
    match &d.location {
        Location::Span(loc) => {
            let f = sources.get(loc.file);
            let (l, c) = f.line_col(loc.span.start);
            let (el, ec) = f.line_col(loc.span.end);
            Pos { file: join(&f.rel_path), line: Some(l), column: Some(c), end_line: Some(el), end_column: Some(ec) }
        }
        Location::Path(p) => Pos { file: join(p), line: None, column: None, end_line: None, end_column: None },
        Location::Root => Pos {
            file: if root.is_empty() { ".".into() } else { root.to_string() },
            line: None,
            column: None,
            end_line: None,
            end_column: None,
        },
    }
}

/// The outcome of validating an image definition: the files read and every diagnostic.
#[derive(Debug, Clone)]
pub struct Report {
    /// Files read (for snippets).
    pub sources: SourceMap,
    /// Every diagnostic, unsorted.
    pub diagnostics: Vec<Diagnostic>,
}

/// Stable `--json` shape of a validation report (documented in docs/diagnostics.md).
#[derive(Debug, Serialize)]
pub struct JsonReport {
    /// Shape version; bumped only on incompatible change.
    pub schema_version: u32,
    /// The image directory as given.
    pub image: String,
    /// Diagnostics in report order.
    pub diagnostics: Vec<JsonDiagnostic>,
    /// Counts.
    pub summary: Summary,
}

/// One diagnostic in `--json` output.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    /// e.g. `E011`.
    pub code: &'static str,
    /// `error` or `warning`.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// File path as displayed (image directory joined with the path inside it).
    pub file: String,
    /// 1-based line of the span start, when there is a span.
    pub line: Option<usize>,
    /// 1-based column (characters).
    pub column: Option<usize>,
    /// 1-based line of the span end.
    pub end_line: Option<usize>,
    /// 1-based column of the span end (exclusive).
    pub end_column: Option<usize>,
    /// How to fix it.
    pub help: Option<String>,
}

/// Error and warning counts.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Number of errors.
    pub errors: usize,
    /// Number of warnings.
    pub warnings: usize,
}

impl Report {
    /// Counts by severity.
    pub fn summary(&self) -> Summary {
        let errors = self.diagnostics.iter().filter(|d| d.severity() == Severity::Error).count();
        Summary { errors, warnings: self.diagnostics.len() - errors }
    }

    /// True when there is at least one error.
    pub fn has_errors(&self) -> bool {
        self.summary().errors > 0
    }

    /// Diagnostics in output order: by file, then position, then code.
    fn sorted(&self, root: &str) -> Vec<(Pos, &Diagnostic)> {
        let mut v: Vec<_> = self.diagnostics.iter().map(|d| (resolve(d, &self.sources, root), d)).collect();
        v.sort_by(|a, b| (&a.0, a.1.code, &a.1.message).cmp(&(&b.0, b.1.code, &b.1.message)));
        v.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        v
    }

    /// The `--json` form; `root` is the image directory as the user gave it.
    pub fn to_json(&self, root: &str) -> JsonReport {
        JsonReport {
            schema_version: 1,
            image: root.to_string(),
            diagnostics: self
                .sorted(root)
                .into_iter()
                .map(|(p, d)| JsonDiagnostic {
                    code: d.code.as_str(),
                    severity: d.severity(),
                    message: d.message.clone(),
                    file: p.file,
                    line: p.line,
                    column: p.column,
                    end_line: p.end_line,
                    end_column: p.end_column,
                    help: d.help.clone(),
                })
                .collect(),
            summary: self.summary(),
        }
    }

    /// Human rendering, rustc style, with a source snippet for spanned diagnostics.
    pub fn render(&self, root: &str, color: bool) -> String {
        let mut out = String::new();
        let paint = |s: &str, code: &str| if color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
        for (pos, d) in self.sorted(root) {
            let (sev, sev_color) = match d.severity() {
                Severity::Error => ("error", "1;31"),
                Severity::Warning => ("warning", "1;33"),
            };
            let _ = writeln!(out, "{}: {}", paint(&format!("{sev}[{}]", d.code), sev_color), d.message);
            let mut gutter = 1;
            match (&d.location, pos.line, pos.column) {
                (Location::Span(loc), Some(line), Some(col)) => {
                    let file = self.sources.get(loc.file);
                    gutter = line.to_string().len();
                    let _ = writeln!(out, "{:gutter$}{} {}:{line}:{col}", "", paint("-->", "1;34"), pos.file);
                    let _ = writeln!(out, "{:gutter$} {}", "", paint("|", "1;34"));
                    let text = file.line_text(line);
                    let _ = writeln!(out, "{line} {} {text}", paint("|", "1;34"));
                    let width = match (pos.end_line, pos.end_column) {
                        (Some(el), Some(ec)) if el == line && ec > col => ec - col,
                        _ => text.chars().count().saturating_sub(col - 1).max(1),
                    };
                    let _ = writeln!(
                        out,
                        "{:gutter$} {} {:pad$}{}",
                        "",
                        paint("|", "1;34"),
                        "",
                        paint(&"^".repeat(width), sev_color),
                        pad = col - 1
                    );
                }
                _ => {
                    let _ = writeln!(out, "{:gutter$}{} {}", "", paint("-->", "1;34"), pos.file);
                }
            }
            if let Some(help) = &d.help {
                let _ = writeln!(out, "{:gutter$} = help: {help}", "");
            }
            out.push('\n');
        }
        let s = self.summary();
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        if s.errors > 0 {
            let _ = writeln!(
                out,
                "{}: {}, {}",
                paint("failed", "1;31"),
                plural(s.errors, "error"),
                plural(s.warnings, "warning")
            );
        } else if s.warnings > 0 {
            let _ = writeln!(out, "passed with {}", plural(s.warnings, "warning"));
        } else {
            let _ = writeln!(out, "passed: no problems found");
        }
        out
    }
}

/// Closest candidate to `word` (for "did you mean"), when one is close enough.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Display form of the image directory argument (`images/default`, `.`).
pub fn display_root(dir: &Path) -> String {
    dir.to_string_lossy().trim_end_matches('/').to_string()
}

/// Dummy id for tests that need a location without a map.
#[cfg(test)]
pub(crate) fn test_file() -> crate::source::FileId {
    crate::source::FileId(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceFile;

    #[test]
    fn codes_are_unique_and_prefixed_by_severity() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            let want = match c.severity() {
                Severity::Error => 'E',
                Severity::Warning => 'W',
            };
            assert!(c.as_str().starts_with(want), "{c} has the wrong prefix for its severity");
        }
    }

    #[test]
    fn renders_snippet_with_caret_under_span() {
        let mut sources = SourceMap::default();
        let f = sources.add(SourceFile::new("config/build.toml", "[build]\ncompresion_level = 3\n"));
        let d =
            Diagnostic::at(Code::UnknownKey, Loc { file: f, span: 8..24 }, "unknown key `compresion_level` in [build]")
                .help("did you mean `compression_level`?");
        let r = Report { sources, diagnostics: vec![d] };
        expect_test::expect![[r#"
            error[E011]: unknown key `compresion_level` in [build]
             --> img/config/build.toml:2:1
              |
            2 | compresion_level = 3
              | ^^^^^^^^^^^^^^^^
              = help: did you mean `compression_level`?

            failed: 1 error, 0 warnings
        "#]]
        .assert_eq(&r.render("img", false));
        assert_eq!(test_file(), f);
    }

    #[test]
    fn suggest_finds_close_keys_only() {
        assert_eq!(suggest("compresion", ["compression", "architectures"]), Some("compression"));
        assert_eq!(suggest("zzz", ["compression", "architectures"]), None);
    }
}
