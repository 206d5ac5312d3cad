//! The validated image model: typed, checked values with no `Deserialize`.
//!
//! Only [`crate::validate`] builds a [`Model`]; everything downstream (plan, templates,
//! settings, inspect) reads it and can trust it: domains are well-formed, paths absolute,
//! ranges respected, every package set present whatever its key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

/// Identifier of a provider, package set, MCP server, web service or file: `[a-z0-9][a-z0-9_-]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Ident(pub(crate) String);

impl Ident {
    /// Checks the identifier syntax.
    pub fn parse(s: &str) -> Option<Ident> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        (first_ok && rest_ok && s.len() <= 64).then(|| Ident(s.to_string()))
    }
    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Ident {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A domain pattern: `example.com` or `*.example.com` (lowercase, no scheme/port/path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DomainPattern(pub(crate) String);

impl DomainPattern {
    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True for `*.suffix` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// An absolute, normalized guest path (no `.`/`..` components, no `//`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GuestPath(pub(crate) String);

impl GuestPath {
    /// Checks that the path is absolute and normalized.
    pub fn parse(s: &str) -> Option<GuestPath> {
        let ok = s.starts_with('/')
            && !s.contains('\0')
            && (s == "/" || !s.ends_with('/'))
            && s[1..].split('/').all(|c| s == "/" || (!c.is_empty() && c != "." && c != ".."));
        ok.then(|| GuestPath(s.to_string()))
    }
    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 64-bit x86.
    X86_64,
    /// 64-bit ARM.
    Arm64,
}

impl Arch {
    /// Names as written in build.toml.
    pub const NAMES: &'static [&'static str] = &["x86_64", "arm64"];
    /// Parses a build.toml architecture name.
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
    /// The build.toml name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    /// Kernel `ARCH=` value.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Arm64 => "arm64",
        }
    }
    /// The matching engine platform.
    pub fn platform(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux/amd64",
            Arch::Arm64 => "linux/arm64",
        }
    }
    /// The architecture of the machine running this code, if supported.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// squashfs compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// zstd, levels 1..=22.
    Zstd,
    /// xz, levels 0..=9.
    Xz,
    /// gzip, levels 1..=9.
    Gzip,
    /// lzo, levels 1..=9.
    Lzo,
    /// lz4, no level.
    Lz4,
}

impl Compression {
    /// Names as written in build.toml.
    pub const NAMES: &'static [&'static str] = &["zstd", "xz", "gzip", "lzo", "lz4"];
    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "zstd" => Self::Zstd,
            "xz" => Self::Xz,
            "gzip" => Self::Gzip,
            "lzo" => Self::Lzo,
            "lz4" => Self::Lz4,
            _ => return None,
        })
    }
    /// Allowed level range, `None` when the compressor takes no level.
    pub fn level_range(self) -> Option<(i64, i64)> {
        match self {
            Self::Zstd => Some((1, 22)),
            Self::Xz => Some((0, 9)),
            Self::Gzip | Self::Lzo => Some((1, 9)),
            Self::Lz4 => None,
        }
    }
    /// Level used when build.toml gives none.
    pub fn default_level(self) -> Option<u32> {
        match self {
            Self::Zstd => Some(15),
            Self::Xz => Some(6),
            Self::Gzip | Self::Lzo => Some(9),
            Self::Lz4 => None,
        }
    }
}

/// Where the base filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BaseImage {
    /// Registry image pinned by digest.
    Registry {
        /// `name@sha256:<hex>`.
        reference: String,
    },
    /// mmdebstrap bootstrap.
    Bootstrap {
        /// Debian suite.
        suite: String,
        /// Mirror URL.
        mirror: String,
        /// mmdebstrap variant.
        variant: String,
        /// Components.
        components: Vec<String>,
    },
}

/// One architecture's build parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchConfig {
    /// Base filesystem.
    pub base: BaseImage,
    /// Engine platform.
    pub docker_platform: String,
    /// Rust target of the guest binaries.
    pub rust_target: String,
    /// Kernel branch `X.Y`.
    pub kernel_branch: String,
    /// Kernel image path inside the source tree.
    pub kernel_image: String,
    /// Defconfig path relative to `config/`.
    pub defconfig: String,
    /// Expected Node.js major version.
    pub node_major: Option<u32>,
}

/// `[build]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// squashfs compressor.
    pub compression: Compression,
    /// Its level (absent for lz4).
    pub compression_level: Option<u32>,
    /// Fixed SOURCE_DATE_EPOCH, when the config sets one.
    pub source_date_epoch: Option<u64>,
    /// Extra CA certificate for the build, relative to the image directory.
    pub extra_ca: Option<String>,
    /// Keep the extra CA in the final image.
    pub keep_extra_ca: bool,
    /// Architectures, in name order.
    pub architectures: BTreeMap<Arch, ArchConfig>,
}

/// `[audit] fail_on`: the lowest severity that fails an audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailOn {
    /// Only CRITICAL findings fail.
    Critical,
    /// HIGH and CRITICAL fail (the default).
    High,
    /// MEDIUM and above fail.
    Medium,
    /// LOW and above fail (NEGLIGIBLE and UNKNOWN never do).
    Low,
    /// Nothing fails; findings are only recorded.
    None,
}

impl FailOn {
    /// Names as written in build.toml.
    pub const NAMES: &'static [&'static str] = &["critical", "high", "medium", "low", "none"];
    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "critical" => Self::Critical,
            "high" => Self::High,
            "medium" => Self::Medium,
            "low" => Self::Low,
            "none" => Self::None,
            _ => return None,
        })
    }
    /// The build.toml name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
            Self::None => "none",
        }
    }
}

/// `[audit]`: what `capsem-builder audit` does with a vulnerability scanner's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPolicy {
    /// Findings at or above this severity fail the audit unless allowed.
    pub fail_on: FailOn,
    /// Advisory ids accepted whatever their severity (`CVE-…`, `GHSA-…`, …), each well-formed.
    pub allow: BTreeSet<String>,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy { fail_on: FailOn::High, allow: BTreeSet::new() }
    }
}

/// One changelog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangelogEntry {
    /// Version.
    pub version: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// What changed.
    pub changes: Vec<String>,
}

/// `[image]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageMeta {
    /// Image name.
    pub name: String,
    /// Image version (semver).
    pub version: String,
    /// Description.
    pub description: String,
    /// Changelog, newest first as written.
    pub changelog: Vec<ChangelogEntry>,
}

/// Package managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    /// Debian packages.
    Apt,
    /// uv pip.
    Uv,
    /// pip.
    Pip,
    /// npm, installed globally under a prefix.
    Npm,
    /// An installer script fetched with curl and run with bash.
    Curl,
}

impl Manager {
    /// Names as written in config.
    pub const NAMES: &'static [&'static str] = &["apt", "uv", "pip", "npm", "curl"];
    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "apt" => Self::Apt,
            "uv" => Self::Uv,
            "pip" => Self::Pip,
            "npm" => Self::Npm,
            "curl" => Self::Curl,
            _ => return None,
        })
    }
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apt => "apt",
            Self::Uv => "uv",
            Self::Pip => "pip",
            Self::Npm => "npm",
            Self::Curl => "curl",
        }
    }
    /// Default install command (without packages).
    pub fn default_install_cmd(self) -> &'static str {
        match self {
            Self::Apt => "apt-get install -y --no-install-recommends",
            Self::Uv => "uv pip install --system --break-system-packages",
            Self::Pip => "pip3 install --break-system-packages",
            Self::Npm => "npm install -g",
            Self::Curl => "curl -fsSL",
        }
    }
}

/// Default npm prefix (seed 000).
pub const DEFAULT_NPM_PREFIX: &str = "/opt/ai-clis";

/// Domains a provider or package set needs, with per-method permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Display name (package sets).
    pub name: Option<String>,
    /// Domain patterns.
    pub domains: Vec<DomainPattern>,
    /// GET/HEAD/OPTIONS allowed.
    pub allow_get: bool,
    /// POST/PUT/PATCH/DELETE allowed.
    pub allow_post: bool,
}

/// What to install, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Install {
    /// Manager.
    pub manager: Manager,
    /// Install command without packages.
    pub install_cmd: String,
    /// npm prefix (npm only).
    pub prefix: Option<String>,
    /// Package specs (URLs for curl).
    pub packages: Vec<String>,
    /// curl: installer URL → sha256.
    pub checksums: BTreeMap<String, String>,
}

/// An API key's metadata (the key itself is supplied at boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// Display name.
    pub name: String,
    /// Variables the key is injected as.
    pub env_vars: Vec<String>,
    /// Expected prefix (UI hint).
    pub prefix: String,
    /// Where to get a key.
    pub docs_url: Option<String>,
    /// Whether the config carries a literal key (warned by W005; never emitted).
    #[serde(skip)]
    pub has_literal_value: bool,
}

/// The CLI a provider installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cli {
    /// Short key (binary name).
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Command that prints the version.
    pub version_command: Option<String>,
}

/// A file injected into the guest at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: GuestPath,
    /// Content.
    pub content: String,
}

/// An AI provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provider {
    /// File it came from, relative to the image directory.
    pub file: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Installed and allowed by default.
    pub enabled: bool,
    /// API key metadata.
    pub api_key: Option<ApiKey>,
    /// Network needs.
    pub network: Option<Network>,
    /// Installation.
    pub install: Option<Install>,
    /// CLI.
    pub cli: Option<Cli>,
    /// Boot-time files by key.
    pub files: BTreeMap<Ident, GuestFile>,
}

/// A package set (any key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageSet {
    /// File it came from.
    pub file: String,
    /// Display name.
    pub name: String,
    /// How to install.
    pub install: Install,
    /// Version probes by package name.
    pub version_commands: BTreeMap<String, String>,
    /// Network needs at run time.
    pub network: Option<Network>,
}

/// MCP transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum McpTransport {
    /// A local process speaking stdio.
    Stdio {
        /// Command.
        command: String,
        /// Arguments.
        args: Vec<String>,
        /// Environment.
        env: BTreeMap<String, String>,
    },
    /// A remote server over SSE.
    Sse {
        /// Endpoint URL.
        url: String,
        /// Extra HTTP headers.
        headers: BTreeMap<String, String>,
    },
}

/// An MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpServer {
    /// File it came from.
    pub file: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Transport and its parameters.
    #[serde(flatten)]
    pub transport: McpTransport,
    /// Built into capsem.
    pub builtin: bool,
    /// Enabled.
    pub enabled: bool,
}

/// A named service in the web policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebService {
    /// Display name.
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// Domains.
    pub domains: Vec<DomainPattern>,
    /// GET allowed.
    pub allow_get: bool,
    /// POST allowed.
    pub allow_post: bool,
}

/// `[web]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebPolicy {
    /// Reads to unknown domains.
    pub allow_read: bool,
    /// Writes to unknown domains.
    pub allow_write: bool,
    /// Extra allowed patterns.
    pub custom_allow: Vec<DomainPattern>,
    /// Blocked patterns (override every allow).
    pub custom_block: Vec<DomainPattern>,
    /// Plain-HTTP ports redirected to the proxy.
    pub http_upstream_ports: Vec<u16>,
    /// `search.*`.
    pub search: BTreeMap<Ident, WebService>,
    /// `registry.*`.
    pub registry: BTreeMap<Ident, WebService>,
    /// `repository.*`.
    pub repository: BTreeMap<Ident, WebService>,
}

impl Default for WebPolicy {
    fn default() -> Self {
        WebPolicy {
            allow_read: false,
            allow_write: false,
            custom_allow: Vec::new(),
            custom_block: Vec::new(),
            http_upstream_ports: vec![80],
            search: BTreeMap::new(),
            registry: BTreeMap::new(),
            repository: BTreeMap::new(),
        }
    }
}

/// `[resources]`: every field has a value (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Integer fields by name (see `RESOURCE_FIELDS` for ranges).
    #[serde(flatten)]
    pub values: BTreeMap<String, i64>,
    /// Log request/response bodies.
    pub log_bodies: bool,
}

/// `[environment.shell]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shell {
    /// TERM.
    pub term: String,
    /// HOME.
    pub home: GuestPath,
    /// PATH.
    pub path: String,
    /// LANG.
    pub lang: String,
    /// bashrc file.
    pub bashrc: Option<GuestFile>,
    /// tmux config file.
    pub tmux_conf: Option<GuestFile>,
}

/// `[environment]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// Guest hostname.
    pub hostname: String,
    /// Shell settings.
    pub shell: Shell,
    /// CA bundle path in the guest.
    pub tls_ca_bundle: GuestPath,
    /// Extra environment variables.
    pub vars: BTreeMap<String, String>,
}

/// Which optional artifacts exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifacts {
    /// artifacts/banner.txt.
    pub banner: bool,
    /// artifacts/tips.txt.
    pub tips: bool,
    /// artifacts/diagnostics/.
    pub diagnostics: bool,
}

/// A validated image definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Model {
    /// Image metadata (from manifest.toml, or defaults from the directory name).
    pub image: ImageMeta,
    /// Build settings.
    pub build: Build,
    /// Audit policy (build.toml `[audit]`, defaults when absent).
    pub audit: AuditPolicy,
    /// AI providers by key.
    pub ai: BTreeMap<Ident, Provider>,
    /// Package sets by key.
    pub packages: BTreeMap<Ident, PackageSet>,
    /// MCP servers by key.
    pub mcp: BTreeMap<Ident, McpServer>,
    /// Web policy.
    pub web: WebPolicy,
    /// VM resources.
    pub resources: Resources,
    /// Guest environment.
    pub environment: Environment,
    /// Optional artifacts present.
    pub artifacts: Artifacts,
}
