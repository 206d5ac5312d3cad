//! Coded diagnostics and the error type of the configuration module.
//!
//! A [`Diagnostic`] has a stable [`Code`] (`C001`…, distinct from the builder's `E`/`W` codes),
//! a location (a file with line and column, a whole file, or a command-line flag), a message
//! that names the key and what was expected, and an optional help line. [`ConfigError`] is what
//! every fallible operation of the module returns; its `Invalid` variant carries *every*
//! diagnostic found, not the first.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

macro_rules! codes {
    ($( $variant:ident = $code:literal, $title:literal; )*) => {
        /// Every configuration diagnostic code. Codes are stable: never renumber, only add.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $( #[doc = $title] $variant, )* }

        impl Code {
            /// All codes, in declaration order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
            /// The code as shown, e.g. `C004`.
            pub fn as_str(self) -> &'static str { match self { $(Code::$variant => $code,)* } }
            /// One-line meaning of the code.
            pub fn title(self) -> &'static str { match self { $(Code::$variant => $title,)* } }
        }
    };
}

codes! {
    TomlSyntax = "C001", "TOML syntax error";
    UnknownKey = "C002", "unknown key";
    WrongType = "C003", "value has the wrong type or shape";
    OutOfRange = "C004", "value outside the image's allowed range";
    BadPublicKey = "C005", "not a minisign public key";
    UnreadableKeyFile = "C006", "public key file cannot be read";
    BadHostname = "C007", "invalid hostname";
    BadEnvVar = "C008", "invalid environment variable name or value";
    BadDomain = "C009", "invalid domain pattern";
    UnknownName = "C010", "names a provider or resource the image does not have";
    BadApiKey = "C011", "invalid API key value";
    LockedByCorp = "C012", "per-run override of a value the corp config locks";
    EmptyTrust = "C013", "[trust] lists no key";
    BadUpstreamCa = "C014", "upstream CA file unreadable or holds no usable certificate";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// A position in a config file (1-based line, 1-based column in characters).
    At {
        /// The file.
        file: PathBuf,
        /// Line.
        line: usize,
        /// Column.
        col: usize,
    },
    /// A whole file.
    File(PathBuf),
    /// A command-line flag (per-run override), e.g. `--cpus`.
    Flag(&'static str),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::At { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Location::File(file) => write!(f, "{}", file.display()),
            Location::Flag(flag) => f.write_str(flag),
        }
    }
}

/// A position in a config file, kept on validated values so that later checks (ranges, locks)
/// can point at the line that set them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub col: usize,
}

impl Origin {
    /// The origin of a byte span of `text`, read from `file`.
    pub(crate) fn of(file: &Path, text: &str, span: &Range<usize>) -> Origin {
        let (line, col) = line_col(text, span.start);
        Origin { file: file.to_path_buf(), line, col }
    }

    /// As a diagnostic location.
    pub fn location(&self) -> Location {
        Location::At { file: self.file.clone(), line: self.line, col: self.col }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One problem in a configuration file or in a per-run override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code.
    pub code: Code,
    /// Where.
    pub location: Location,
    /// What is wrong: the key, the value, and what was expected.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic.
    pub fn new(code: Code, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic { code, location, message: message.into(), help: None }
    }

    /// Adds a help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: error[C004]: MESSAGE`, then `  = help: …` on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error[{}]: {}", self.location, self.code, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// Why configuration could not be loaded or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file exists but cannot be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// One or more problems in the config files or per-run overrides; all of them, sorted by
    /// location.
    #[error("{}", render(diagnostics))]
    Invalid {
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
    /// The image's `defaults.json` is unusable (a runtime/builder mismatch, not a user error).
    #[error("the image's defaults.json is invalid: {message}")]
    Defaults {
        /// What is wrong.
        message: String,
    },
    /// Neither `CAPSEM_HOME` nor `HOME` is set.
    #[error("cannot locate the capsem home directory: set CAPSEM_HOME or HOME")]
    NoHome,
}

impl ConfigError {
    /// The diagnostics, for `Invalid`; empty otherwise.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics } => diagnostics,
            _ => &[],
        }
    }

    /// `Ok(())` when there is nothing to report, else `Invalid` with the diagnostics sorted.
    pub(crate) fn check(mut diagnostics: Vec<Diagnostic>) -> Result<(), ConfigError> {
        if diagnostics.is_empty() {
            return Ok(());
        }
        diagnostics.sort_by(|a, b| (&a.location, a.code, &a.message).cmp(&(&b.location, b.code, &b.message)));
        diagnostics.dedup();
        Err(ConfigError::Invalid { diagnostics })
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

/// Closest candidate to `word` (for "did you mean"), when one is close enough.
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
