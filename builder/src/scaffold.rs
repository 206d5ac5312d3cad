//! Scaffolding: `init` (a complete, buildable image), `new` (a copy of an existing image under
//! a new name) and `add` (one AI provider, package set or MCP server file).
//!
//! Every scaffold validates with zero diagnostics (tests/scaffold.rs checks it), and every value
//! interpolated into TOML goes through the `toml` serializer, so no name can break the syntax.
//!
//! Files are written atomically as a group: each is first written to a temporary name in its
//! directory, and only when all temporaries exist are they renamed into place. On an error the
//! temporaries, the files this call created and the directories it created are removed (a file
//! that `--force` already replaced keeps its new content).
//!
//! Changelog dates are "today" in UTC from `SOURCE_DATE_EPOCH` when that is set (so output is
//! reproducible), else from the system clock.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{Ident, Manager};

/// What `add` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKind {
    /// `config/ai/NAME.toml`.
    AiProvider,
    /// `config/packages/NAME.toml`.
    Packages,
    /// `config/mcp/NAME.toml`.
    Mcp,
}

/// MCP transport of a new server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A local process speaking stdio.
    Stdio,
    /// A remote server over SSE.
    Sse,
}

/// Options of [`add`].
#[derive(Debug, Clone)]
pub struct AddOptions {
    /// Package manager (packages only).
    pub manager: Manager,
    /// Transport (MCP only).
    pub transport: Transport,
    /// Overwrite an existing file.
    pub force: bool,
}

/// Options of [`new_from`].
#[derive(Debug, Clone, Default)]
pub struct NewOptions {
    /// Image name; default: the target directory's name, sanitized.
    pub name: Option<String>,
    /// Overwrite existing files.
    pub force: bool,
}

/// Why a scaffold command failed. Each message names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The destination exists and `force` was not given.
    #[error("{} already exists; pass --force to overwrite", path.display())]
    Exists {
        /// The existing path.
        path: PathBuf,
    },
    /// `add` on a directory without `config/`.
    #[error("{} has no config/ directory; run `capsem-builder init {}` first", dir.display(), dir.display())]
    NoConfig {
        /// The image directory.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The name is not usable.
    #[error("`{name}` is not a valid name: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why, and a suggested fix.
        reason: String,
    },
    /// `new --from` on a directory without `config/build.toml`.
    #[error("{} is not an image definition (no config/build.toml); pass an image directory such as images/default", dir.display())]
    NotAnImage {
        /// The directory.
        dir: PathBuf,
    },
    /// `add` of a key that another file of the same directory already defines (E008).
    #[error("`{name}` is already defined in {}; pick another name, or edit that file", path.display())]
    Defined {
        /// The key.
        name: String,
        /// The file that defines it.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScaffoldError + '_ {
    move |source| ScaffoldError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------------------------
// Embedded files of `init`.

/// One file `init` writes: path relative to the image directory, content, mode.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    /// Path relative to the image directory, `/`-separated.
    pub rel: &'static str,
    /// Content.
    pub bytes: &'static [u8],
    /// Unix permission bits.
    pub mode: u32,
}

macro_rules! embed {
    ($rel:literal, $src:literal, $mode:literal) => {
        Embedded { rel: $rel, bytes: include_bytes!($src), mode: $mode }
    };
}

/// Every file `init` writes except `config/manifest.toml` (generated: it holds the name and date).
///
/// The smaller TOML files and tips.txt are `init`'s own (builder/scaffold/). The kernel configs,
/// the other guest artifacts and vm/resources.toml (the schema defaults) are the shipped image's
/// files, embedded directly so the two can never drift.
pub const INIT_FILES: &[Embedded] = &[
    embed!("config/build.toml", "../scaffold/config/build.toml", 0o644),
    embed!("config/packages/apt.toml", "../scaffold/config/packages/apt.toml", 0o644),
    embed!("config/security/web.toml", "../scaffold/config/security/web.toml", 0o644),
    embed!("config/vm/environment.toml", "../scaffold/config/vm/environment.toml", 0o644),
    embed!("config/vm/resources.toml", "../../images/default/config/vm/resources.toml", 0o644),
    embed!("config/kernel/defconfig.x86_64", "../../images/default/config/kernel/defconfig.x86_64", 0o644),
    embed!("config/kernel/defconfig.arm64", "../../images/default/config/kernel/defconfig.arm64", 0o644),
    embed!("artifacts/capsem-init", "../../images/default/artifacts/capsem-init", 0o755),
    embed!("artifacts/capsem-bashrc", "../../images/default/artifacts/capsem-bashrc", 0o644),
    embed!("artifacts/banner.txt", "../../images/default/artifacts/banner.txt", 0o644),
    // The shipped tips name the AI CLIs and tools of the default image; init has none of them.
    embed!("artifacts/tips.txt", "../scaffold/artifacts/tips.txt", 0o644),
    embed!("artifacts/diagnostics/capsem-doctor", "../../images/default/artifacts/diagnostics/capsem-doctor", 0o755),
];

/// Changelog entry of a fresh `init` scaffold.
const INIT_CHANGE: &str = "Initial image created with `capsem-builder init`.";
const INIT_DESCRIPTION: &str = "A minimal capsem image: Debian bookworm base bootstrapped with mmdebstrap, the packages capsem-init needs, and a deny-by-default web policy.";

// ---------------------------------------------------------------------------------------------
// Public API.

/// Writes a complete, small image definition into `target` (created if needed).
///
/// Refuses when `target/config` or `target/artifacts` exists, unless `force` (which overwrites
/// the scaffold's files and leaves any other file alone). Returns the files written, sorted.
pub fn init(target: &Path, force: bool) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !force {
        refuse_existing(target)?;
    }
    let name = sanitize_name(&dir_name(target)).unwrap_or_else(|| "image".to_string());
    let manifest = manifest_text(&name, INIT_DESCRIPTION, &today_utc(), INIT_CHANGE);
    let mut files: Vec<Pending> = INIT_FILES
        .iter()
        .map(|e| Pending { dest: target.join(e.rel), content: Content::Bytes(e.bytes.to_vec()), mode: e.mode })
        .collect();
    files.push(Pending {
        dest: target.join("config/manifest.toml"),
        content: Content::Bytes(manifest.into_bytes()),
        mode: 0o644,
    });
    write_group(files, force)
}

/// Copies the image definition in `from` (its `config/` and `artifacts/`, recursively, modes
/// preserved; anything else such as built assets is skipped) into `target`, and writes a new
/// `config/manifest.toml`: name `opts.name` (default: the target directory's name, sanitized),
/// version 0.1.0, the source's description, and one changelog entry.
///
/// `from` is not validated (the caller validates the result); it only needs `config/build.toml`.
pub fn new_from(target: &Path, from: &Path, opts: &NewOptions) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !from.join("config").join("build.toml").is_file() {
        return Err(ScaffoldError::NotAnImage { dir: from.to_path_buf() });
    }
    let name = match &opts.name {
        Some(n) => {
            check_image_name(n)?;
            n.clone()
        }
        None => sanitize_name(&dir_name(target)).unwrap_or_else(|| "image".to_string()),
    };
    if !opts.force {
        refuse_existing(target)?;
    }
    let from_name = dir_name(from);
    let mut files = Vec::new();
    for sub in ["config", "artifacts"] {
        let root = from.join(sub);
        if !root.exists() {
            continue;
        }
        let mut rels = Vec::new();
        walk(&root, Path::new(sub), &mut rels)?;
        for rel in rels {
            if rel == Path::new("config/manifest.toml") {
                continue;
            }
            let src = from.join(&rel);
            let mode = file_mode(&src)?;
            files.push(Pending { dest: target.join(&rel), content: Content::Copy(src), mode });
        }
    }
    let description = fs::read_to_string(from.join("config/manifest.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("image")?.get("description")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("Image created from {from_name}"));
    let manifest = manifest_text(&name, &description, &today_utc(), &format!("Initial image created from {from_name}"));
    files.push(Pending {
        dest: target.join("config/manifest.toml"),
        content: Content::Bytes(manifest.into_bytes()),
        mode: 0o644,
    });
    write_group(files, opts.force)
}

/// Writes `config/ai/NAME.toml`, `config/packages/NAME.toml` or `config/mcp/NAME.toml` in the
/// image directory `dir`, from a template that validates with no diagnostics. Returns its path.
pub fn add(dir: &Path, kind: AddKind, name: &str, opts: &AddOptions) -> Result<PathBuf, ScaffoldError> {
    check_ident(name)?;
    let config = dir.join("config");
    if !config.is_dir() {
        return Err(ScaffoldError::NoConfig { dir: dir.to_path_buf() });
    }
    let sub = match kind {
        AddKind::AiProvider => "ai",
        AddKind::Packages => "packages",
        AddKind::Mcp => "mcp",
    };
    let dest = config.join(sub).join(format!("{name}.toml"));
    if !opts.force && fs::symlink_metadata(&dest).is_ok() {
        return Err(ScaffoldError::Exists { path: dest });
    }
    if let Some(other) = defined_elsewhere(&config.join(sub), name, &dest) {
        return Err(ScaffoldError::Defined { name: name.to_string(), path: other });
    }
    let text = match kind {
        AddKind::AiProvider => ai_template(name),
        AddKind::Packages => packages_template(name, opts.manager),
        AddKind::Mcp => mcp_template(name, opts.transport),
    };
    write_group(
        vec![Pending { dest: dest.clone(), content: Content::Bytes(text.into_bytes()), mode: 0o644 }],
        opts.force,
    )?;
    Ok(dest)
}

// ---------------------------------------------------------------------------------------------
// Templates of `add`. Keys are checked identifiers (bare TOML keys); every other interpolated
// value goes through `q`/`arr`.

/// A TOML string literal for `s`.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of strings.
fn arr(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// `my_tool-x` → `My Tool X`.
fn display_name(name: &str) -> String {
    name.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A DNS label for `name`: `_` → `-`, no leading/trailing `-`, at most 63 characters.
fn dns_label(name: &str) -> String {
    let mut label: String = name.replace('_', "-").chars().take(63).collect();
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() { "example".to_string() } else { label }
}

/// `my-tool` → `MY_TOOL_API_KEY` (a valid variable name even when the name starts with a digit).
fn api_key_var(name: &str) -> String {
    let base = name.to_ascii_uppercase().replace('-', "_");
    let prefix = if base.starts_with(|c: char| c.is_ascii_digit()) { "_" } else { "" };
    format!("{prefix}{base}_API_KEY")
}

fn ai_template(name: &str) -> String {
    let display = display_name(name);
    let domain = format!("api.{}.invalid", dns_label(name));
    format!(
        r#"# AI provider `{name}`, written by `capsem-builder add ai-provider {name}`.
# See docs/image-schema.md ("ai/<file>.toml"). Replace the placeholders: the domain below
# (`.invalid` never resolves) with the provider's API host(s), and the key's variable and prefix.

[{name}]
name = {display_q}
description = {desc_q}
enabled = true

# The key itself is supplied at run time (~/.capsem/user.toml), never written here.
[{name}.api_key]
name = {key_name_q}
env_vars = {env_vars}
prefix = ""
# docs_url = "https://console.example.com/keys"

[{name}.network]
domains = {domains}
allow_get = true
allow_post = true

# To install the provider's CLI at build time (pin the version):
# [{name}.install]
# manager = "npm"
# packages = ["@vendor/cli@1.2.3"]
#
# [{name}.cli]
# key = "cli"
# name = "Vendor CLI"
# version_command = "cli --version"
"#,
        display_q = q(&display),
        desc_q = q(&format!("{display} AI provider")),
        key_name_q = q(&format!("{display} API Key")),
        env_vars = arr(&[&api_key_var(name)]),
        domains = arr(&[&domain]),
    )
}

fn packages_template(name: &str, manager: Manager) -> String {
    let display = display_name(name);
    let label = dns_label(name);
    let curl_url = format!("https://{label}.invalid/install.sh");
    let curl_host = format!("{label}.invalid");
    let (advice, body, net_name, net_domains): (&str, String, String, Vec<&str>) = match manager {
        Manager::Apt => (
            "# Replace the example with your packages, pinned as `name=version`\n# (see `apt-cache policy NAME`).",
            format!("packages = {}", arr(&["hello=2.10-3"])),
            "Debian".into(),
            vec!["deb.debian.org", "security.debian.org"],
        ),
        Manager::Uv => (
            "# Replace the example with your packages, pinned as `name==version`. uv is installed with\n# pip3 first, so an apt set must install python3 and python3-pip.",
            format!("packages = {}", arr(&["six==1.17.0"])),
            "PyPI".into(),
            vec!["pypi.org", "files.pythonhosted.org"],
        ),
        Manager::Pip => (
            "# Replace the example with your packages, pinned as `name==version`. An apt set must\n# install python3 and python3-pip.",
            format!("packages = {}", arr(&["six==1.17.0"])),
            "PyPI".into(),
            vec!["pypi.org", "files.pythonhosted.org"],
        ),
        Manager::Npm => (
            "# Replace the example with your packages, pinned as `name@x.y.z`. An apt set must install\n# nodejs and npm, and security/web.toml needs a [web.registry.npm] entry (W001).",
            format!(
                "# `npm install -g` installs under this prefix; its bin/ is on the default PATH.\nprefix = {}\npackages = {}",
                q(crate::model::DEFAULT_NPM_PREFIX),
                arr(&["semver@7.6.3"])
            ),
            "npm".into(),
            vec!["registry.npmjs.org"],
        ),
        Manager::Curl => (
            "# Replace the installer URL AND its checksum (`sha256sum install.sh` of the script you\n# reviewed). The all-zero checksum never matches, so the build fails until you do. The\n# script is downloaded, checked and run with bash; an apt set must install curl.",
            format!("packages = {}\nchecksums = {{ {} = {} }}", arr(&[&curl_url]), q(&curl_url), q(&"0".repeat(64))),
            format!("{display} installer"),
            vec![&curl_host],
        ),
    };
    let m = manager.as_str();
    format!(
        r#"# Package set `{name}`, written by `capsem-builder add packages {name} --manager {m}`.
# See docs/image-schema.md ("packages/<file>.toml"). Installed at build time whatever its key.
{advice}

[{name}]
name = {display_q}
manager = {manager_q}
{body}

# Domains the set needs at run time (e.g. to install more inside the VM).
[{name}.network]
name = {net_name_q}
domains = {domains}
allow_get = true
allow_post = false
"#,
        display_q = q(&display),
        manager_q = q(m),
        net_name_q = q(&net_name),
        domains = arr(&net_domains),
    )
}

fn mcp_template(name: &str, transport: Transport) -> String {
    let display = display_name(name);
    let (t, body) = match transport {
        Transport::Stdio => (
            "stdio",
            format!(
                "# The server executable inside the guest (install it with a package set or artifact).\ncommand = {}\nargs = []\nenv = {{}}",
                q(&format!("/usr/local/bin/{name}"))
            ),
        ),
        Transport::Sse => (
            "sse",
            format!(
                "# Replace with the server's endpoint (`.invalid` never resolves), and allow its host in\n# security/web.toml (custom_allow).\nurl = {}\nheaders = {{}}",
                q(&format!("https://{}.mcp.invalid/sse", dns_label(name)))
            ),
        ),
    };
    format!(
        r#"# MCP server `{name}`, written by `capsem-builder add mcp {name} --transport {t}`.
# See docs/image-schema.md ("mcp/<file>.toml"). Applied at boot.

[{name}]
name = {display_q}
description = {desc_q}
transport = {t_q}
{body}
enabled = true
"#,
        display_q = q(&display),
        desc_q = q(&format!("{display} MCP server")),
        t_q = q(t),
    )
}

/// The manifest.toml of a new image.
fn manifest_text(name: &str, description: &str, date: &str, change: &str) -> String {
    format!(
        r#"# Image metadata, recorded in the build manifest. Bump `version` and add a changelog entry
# (newest first) for every release.

[image]
name = {name}
version = "0.1.0"
description = {description}

[[image.changelog]]
version = "0.1.0"
date = {date}
changes = {changes}
"#,
        name = q(name),
        description = q(description),
        date = q(date),
        changes = arr(&[change]),
    )
}

// ---------------------------------------------------------------------------------------------
// Names.

/// Checks an `add` name (`[a-z0-9][a-z0-9_-]*`, at most 64 characters).
fn check_ident(name: &str) -> Result<(), ScaffoldError> {
    if Ident::parse(name).is_some() {
        return Ok(());
    }
    let problem = if name.is_empty() {
        "it is empty".to_string()
    } else if name.chars().count() > 64 {
        "it is longer than 64 characters".to_string()
    } else if name.chars().any(|c| c.is_ascii_uppercase()) {
        "it has uppercase letters".to_string()
    } else if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        format!("it contains {c:?}")
    } else {
        "it does not start with a letter or digit".to_string()
    };
    let fix = match sanitize_name(name) {
        Some(s) => format!("; try `{s}`"),
        None => String::new(),
    };
    Err(ScaffoldError::BadName {
        name: name.to_string(),
        reason: format!(
            "{problem} (names use lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 64 characters){fix}"
        ),
    })
}

/// Checks an image name given with `--name`: any text, but not empty and no control characters.
fn check_image_name(name: &str) -> Result<(), ScaffoldError> {
    let reason = if name.trim().is_empty() {
        "it is empty"
    } else if name.chars().any(char::is_control) {
        "it contains control characters (newlines, tabs, ...)"
    } else {
        return Ok(());
    };
    let fix = sanitize_name(name).map(|s| format!("; try `{s}`")).unwrap_or_default();
    Err(ScaffoldError::BadName { name: name.to_string(), reason: format!("{reason}{fix}") })
}

/// Turns any text into a valid identifier (`My Image!` → `my-image`), or `None` if nothing is left.
fn sanitize_name(raw: &str) -> Option<String> {
    let mut out = String::new();
    for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        if c == '_' && out.is_empty() {
            continue;
        }
        out.push(c);
    }
    let mut out: String = out.chars().take(64).collect();
    while out.ends_with(['-', '_']) {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// The last component of `dir`, resolving `.` and `..` where possible.
fn dir_name(dir: &Path) -> String {
    let resolved = dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf());
    resolved.file_name().or_else(|| dir.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Another `*.toml` of `coll_dir` (not `dest`) with a top-level `[name]` table.
fn defined_elsewhere(coll_dir: &Path, name: &str, dest: &Path) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(coll_dir).ok()?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    entries.into_iter().filter(|p| p != dest && p.extension().is_some_and(|e| e == "toml")).find(|p| {
        fs::read_to_string(p).ok().and_then(|t| t.parse::<toml::Table>().ok()).is_some_and(|t| t.contains_key(name))
    })
}

// ---------------------------------------------------------------------------------------------
// Dates.

/// Today's UTC date (`YYYY-MM-DD`), from `SOURCE_DATE_EPOCH` when set.
fn today_utc() -> String {
    let secs =
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        });
    civil_date(secs)
}

/// `YYYY-MM-DD` of a Unix time (proleptic Gregorian, UTC); H. Hinnant's `civil_from_days`.
fn civil_date(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

// ---------------------------------------------------------------------------------------------
// Writing.

enum Content {
    Bytes(Vec<u8>),
    Copy(PathBuf),
}

struct Pending {
    dest: PathBuf,
    content: Content,
    mode: u32,
}

/// `Exists` when `target/config` or `target/artifacts` is there.
fn refuse_existing(target: &Path) -> Result<(), ScaffoldError> {
    for sub in ["config", "artifacts"] {
        let p = target.join(sub);
        if fs::symlink_metadata(&p).is_ok() {
            return Err(ScaffoldError::Exists { path: p });
        }
    }
    Ok(())
}

/// Relative paths (under `rel`) of the files below `dir`, sorted. Symlinks to files are
/// followed; other special files are an error.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScaffoldError> {
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(io_err(dir))?.collect::<Result<_, _>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            walk(&path, &rel.join(e.file_name()), out)?;
        } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
            out.push(rel.join(e.file_name()));
        } else {
            return Err(ScaffoldError::Io {
                path,
                source: io::Error::other(
                    "not a regular file or directory (symlinked directories and special files are not copied)",
                ),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Result<u32, ScaffoldError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path).map_err(io_err(path))?.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn file_mode(path: &Path) -> Result<u32, ScaffoldError> {
    fs::metadata(path).map_err(io_err(path))?;
    Ok(0o644)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// What a group write has done so far, for rollback.
#[derive(Default)]
struct Undo {
    dirs: BTreeSet<PathBuf>,
    temps: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl Undo {
    fn rollback(self) {
        for p in self.temps.iter().chain(&self.created) {
            let _ = fs::remove_file(p);
        }
        // Deepest first; remove_dir only removes empty directories.
        let mut dirs: Vec<_> = self.dirs.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Writes every file to a temporary name, then renames them all into place.
fn write_group(files: Vec<Pending>, force: bool) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !force && let Some(f) = files.iter().find(|f| fs::symlink_metadata(&f.dest).is_ok()) {
        return Err(ScaffoldError::Exists { path: f.dest.clone() });
    }
    let mut undo = Undo::default();
    match stage_and_commit(&files, &mut undo) {
        Ok(()) => {
            let mut written: Vec<PathBuf> = files.into_iter().map(|f| f.dest).collect();
            written.sort();
            Ok(written)
        }
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

fn stage_and_commit(files: &[Pending], undo: &mut Undo) -> Result<(), ScaffoldError> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut staged = Vec::with_capacity(files.len());
    for f in files {
        let parent = f.dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        create_dirs(parent, undo)?;
        let file_name = f.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".{file_name}.capsem-tmp-{}-{seq}", std::process::id()));
        let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
        undo.temps.push(tmp.clone());
        match &f.content {
            Content::Bytes(b) => io::Write::write_all(&mut out, b).map_err(io_err(&tmp))?,
            Content::Copy(src) => {
                let mut input = fs::File::open(src).map_err(io_err(src))?;
                io::copy(&mut input, &mut out).map_err(io_err(src))?;
            }
        }
        drop(out);
        set_mode(&tmp, f.mode).map_err(io_err(&tmp))?;
        staged.push(tmp);
    }
    for (f, tmp) in files.iter().zip(staged) {
        if fs::symlink_metadata(&f.dest).is_ok_and(|m| m.is_dir()) {
            return Err(ScaffoldError::Io {
                path: f.dest.clone(),
                source: io::Error::other("is a directory; remove it first"),
            });
        }
        let existed = fs::symlink_metadata(&f.dest).is_ok();
        fs::rename(&tmp, &f.dest).map_err(io_err(&f.dest))?;
        undo.temps.retain(|t| *t != tmp);
        if !existed {
            undo.created.push(f.dest.clone());
        }
    }
    Ok(())
}

/// `create_dir_all`, recording each directory it creates.
fn create_dirs(dir: &Path, undo: &mut Undo) -> Result<(), ScaffoldError> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && fs::symlink_metadata(d).is_err()) {
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(&d) {
            Ok(()) => {
                undo.dirs.insert(d);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(ScaffoldError::Io { path: d, source: e }),
        }
    }
    if !dir.is_dir() {
        return Err(ScaffoldError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other("exists and is not a directory"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(1_735_689_600), "2025-01-01");
        assert_eq!(civil_date(1_735_689_599), "2024-12-31");
        assert_eq!(civil_date(4_107_542_400), "2100-03-01");
        assert!(crate::validate::checks::iso_date(&today_utc()));
    }

    #[test]
    fn names() {
        assert_eq!(sanitize_name("My Image!").as_deref(), Some("my-image"));
        assert_eq!(sanitize_name("  __x__  ").as_deref(), Some("x"));
        assert_eq!(sanitize_name("!!!"), None);
        assert_eq!(sanitize_name(&"a".repeat(100)).map(|s| s.len()), Some(64));
        assert_eq!(display_name("my_tool-x"), "My Tool X");
        assert_eq!(dns_label("a_b_"), "a-b");
        assert_eq!(api_key_var("my-tool"), "MY_TOOL_API_KEY");
        assert_eq!(api_key_var("1x"), "_1X_API_KEY");
        assert!(check_ident("ok_name-1").is_ok());
        for bad in ["", "My Tool", "-x", "a.b", &"a".repeat(65)] {
            assert!(matches!(check_ident(bad), Err(ScaffoldError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn quoting_is_valid_toml() {
        for s in ["plain", "a\"b", "back\\slash", "new\nline", "tab\t", "'single'", "''' triple", "\u{7f}\u{1}"] {
            let doc = format!("k = {}\n", q(s));
            let t: toml::Table = doc.parse().unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(t["k"].as_str(), Some(s));
        }
    }
}
