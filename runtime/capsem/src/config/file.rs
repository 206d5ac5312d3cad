//! One validated config file (`user.toml` or `corp.toml`): [`Config`], built from the raw form.
//!
//! Everything that can be checked without the image is checked here (types, names, hostnames,
//! domain patterns, API key shape, trusted public keys — inline and from files, which are read
//! relative to the config file's directory); checks that need the image's `defaults.json`
//! (ranges, provider names) happen in `effective`. Validated values keep their [`Origin`] so
//! that those later checks can still name `file:line:col`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use capsem_trust::PublicKey;
use toml::Spanned;

use super::diag::{Code, ConfigError, Diagnostic, Origin};
use super::raw::{self, RawConfig};
use super::values::{DomainPattern, EnvName, Hostname, Secret, check_env_value};

/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Which file a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// `~/.capsem/user.toml`: the user's overrides.
    User,
    /// `/etc/capsem/corp.toml`: the organisation's; wins over everything and locks what it sets.
    Corp,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::User => "user config",
            Layer::Corp => "corp config",
        })
    }
}

/// A value and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Where it was set.
    pub origin: Origin,
}

/// A trusted release-signing key and where it was configured.
#[derive(Debug, Clone)]
pub struct TrustedKeySource {
    /// The key.
    pub key: PublicKey,
    /// `path:line` of the config entry (for a key file: the key file, then the entry).
    pub origin: String,
}

/// `[web]` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// GET/HEAD/OPTIONS to unknown domains.
    pub allow_read: Option<Setting<bool>>,
    /// POST/PUT/PATCH/DELETE to unknown domains.
    pub allow_write: Option<Setting<bool>>,
    /// Extra allowed domain patterns.
    pub custom_allow: Option<Setting<Vec<DomainPattern>>>,
    /// Blocked domain patterns.
    pub custom_block: Option<Setting<Vec<DomainPattern>>>,
    /// A PEM file of CAs the egress proxy trusts upstream besides the host's roots (a
    /// TLS-intercepting corporate proxy); relative paths are from the config file's directory.
    /// Checked when the file is read.
    pub upstream_ca_file: Option<Setting<PathBuf>>,
}

/// `[ai.<provider>]` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Where the provider table is.
    pub origin: Origin,
    /// Enable or disable the provider.
    pub enabled: Option<Setting<bool>>,
    /// The personal API key (redacted in `Debug`).
    pub api_key: Option<Setting<Secret>>,
}

/// A validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which layer.
    pub layer: Layer,
    /// The file.
    pub path: PathBuf,
    /// `[trust]`: `Some` when the file has the section (never empty then).
    pub trust: Option<Setting<Vec<TrustedKeySource>>>,
    /// `[resources]` integers, by the names of defaults.json `vm.resources`.
    pub resources: BTreeMap<String, Setting<i64>>,
    /// `[resources] log_bodies`.
    pub log_bodies: Option<Setting<bool>>,
    /// `[environment] hostname`.
    pub hostname: Option<Setting<Hostname>>,
    /// `[environment.vars]`.
    pub vars: BTreeMap<EnvName, Setting<String>>,
    /// `[web]`.
    pub web: WebConfig,
    /// `[ai.<provider>]`, by provider key.
    pub ai: BTreeMap<String, ProviderConfig>,
}

impl Config {
    /// Reads and validates a config file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path, layer: Layer) -> Result<Option<Config>, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        if !meta.is_file() {
            return Err(read_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            )));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))?;
        Config::parse(&text, path, layer).map(Some)
    }

    /// Validates the text of a config file; `path` names it in diagnostics and anchors relative
    /// `public_key_files`. Returns every problem of the file at once.
    pub fn parse(text: &str, path: &Path, layer: Layer) -> Result<Config, ConfigError> {
        let mut diags = Vec::new();
        let raw = raw::parse(path, text, &mut diags);
        let config = Validator { path, text, diags: &mut diags }.config(raw, layer);
        ConfigError::check(diags)?;
        Ok(config)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    diags: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    fn origin<T>(&self, s: &Spanned<T>) -> Origin {
        Origin::of(self.path, self.text, &s.span())
    }

    fn setting<T: Clone>(&self, s: &Spanned<T>) -> Setting<T> {
        Setting { value: s.get_ref().clone(), origin: self.origin(s) }
    }

    fn error<T>(&mut self, code: Code, at: &Spanned<T>, message: String) -> Diagnostic {
        let d = Diagnostic::new(code, self.origin(at).location(), message);
        self.diags.push(d.clone());
        d
    }

    fn config(mut self, raw: RawConfig, layer: Layer) -> Config {
        let mut c = Config {
            layer,
            path: self.path.to_path_buf(),
            trust: None,
            resources: BTreeMap::new(),
            log_bodies: None,
            hostname: None,
            vars: BTreeMap::new(),
            web: WebConfig::default(),
            ai: BTreeMap::new(),
        };
        if let Some(trust) = &raw.trust {
            c.trust = self.trust(trust);
        }
        if let Some(r) = &raw.resources {
            for (name, v) in r.ints() {
                if let Some(v) = v {
                    c.resources.insert(name.to_owned(), self.setting(v));
                }
            }
            c.log_bodies = r.log_bodies.as_ref().map(|b| self.setting(b));
        }
        if let Some(env) = &raw.environment {
            if let Some(h) = &env.hostname {
                match Hostname::parse(h.get_ref()) {
                    Ok(v) => c.hostname = Some(Setting { value: v, origin: self.origin(h) }),
                    Err(m) => _ = self.error(Code::BadHostname, h, format!("environment.hostname: {m}")),
                }
            }
            for (k, v) in env.vars.iter().flatten() {
                let checked = EnvName::parse(k.get_ref())
                    .map_err(|m| (k, m))
                    .and_then(|n| check_env_value(k.get_ref(), v.get_ref()).map(|()| n).map_err(|m| (v, m)));
                match checked {
                    Ok(name) => _ = c.vars.insert(name, self.setting(v)),
                    Err((at, m)) => _ = self.error(Code::BadEnvVar, at, format!("environment.vars: {m}")),
                }
            }
        }
        if let Some(w) = &raw.web {
            c.web.allow_read = w.allow_read.as_ref().map(|b| self.setting(b));
            c.web.allow_write = w.allow_write.as_ref().map(|b| self.setting(b));
            c.web.custom_allow = w.custom_allow.as_ref().map(|l| self.domains("custom_allow", l));
            c.web.custom_block = w.custom_block.as_ref().map(|l| self.domains("custom_block", l));
            c.web.upstream_ca_file = w.upstream_ca_file.as_ref().and_then(|f| self.upstream_ca(f));
        }
        for (key, p) in raw.ai.iter().flatten() {
            let api_key = p.api_key.as_ref().and_then(|k| match Secret::parse(k.get_ref()) {
                Ok(s) => Some(Setting { value: s, origin: self.origin(k) }),
                Err(m) => {
                    // The message never quotes the value: it is a secret.
                    self.error(Code::BadApiKey, k, format!("ai.{}.api_key: {m}", key.get_ref()));
                    None
                }
            });
            c.ai.insert(
                key.get_ref().clone(),
                ProviderConfig {
                    origin: self.origin(key),
                    enabled: p.enabled.as_ref().map(|b| self.setting(b)),
                    api_key,
                },
            );
        }
        c
    }

    fn domains(&mut self, key: &str, list: &Spanned<Vec<Spanned<String>>>) -> Setting<Vec<DomainPattern>> {
        let mut out = Vec::new();
        for (i, d) in list.get_ref().iter().enumerate() {
            match DomainPattern::parse(d.get_ref()) {
                Ok(p) => out.push(p),
                Err(m) => _ = self.error(Code::BadDomain, d, format!("web.{key}[{i}]: {m}")),
            }
        }
        Setting { value: out, origin: self.origin(list) }
    }

    fn upstream_ca(&mut self, file: &Spanned<String>) -> Option<Setting<PathBuf>> {
        let path = self.path.parent().unwrap_or(Path::new(".")).join(file.get_ref());
        match crate::egress::proxy::read_extra_ca(&path) {
            Ok(_) => Some(Setting { value: path, origin: self.origin(file) }),
            Err(why) => {
                let d = Diagnostic::new(
                    Code::BadUpstreamCa,
                    self.origin(file).location(),
                    format!("web.upstream_ca_file {}: {why}", path.display()),
                )
                .help("give a PEM file of CA certificates; relative paths are read from the config file's directory");
                self.diags.push(d);
                None
            }
        }
    }

    fn trust(&mut self, trust: &Spanned<raw::RawTrust>) -> Option<Setting<Vec<TrustedKeySource>>> {
        let t = trust.get_ref();
        let mut keys = Vec::new();
        for (i, k) in t.public_keys.iter().flatten().enumerate() {
            let o = self.origin(k);
            match PublicKey::parse(k.get_ref()) {
                Ok(key) => keys.push(TrustedKeySource { key, origin: format!("{}:{}", o.file.display(), o.line) }),
                Err(e) => {
                    let d = Diagnostic::new(
                        Code::BadPublicKey,
                        o.location(),
                        format!("trust.public_keys[{i}] is not a usable minisign public key: {e}"),
                    )
                    .help("put the base64 line of a minisign.pub file (it starts with `RW`)");
                    self.diags.push(d);
                }
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        for (i, f) in t.public_key_files.iter().flatten().enumerate() {
            let o = self.origin(f);
            let file = dir.join(f.get_ref());
            match PublicKey::from_file(&file) {
                Ok(key) => keys.push(TrustedKeySource {
                    key,
                    origin: format!("{} (listed at {}:{})", file.display(), o.file.display(), o.line),
                }),
                Err(e) => {
                    let code = match e {
                        capsem_trust::SignatureError::Read { .. } => Code::UnreadableKeyFile,
                        _ => Code::BadPublicKey,
                    };
                    let d = Diagnostic::new(code, o.location(), format!("trust.public_key_files[{i}]: {e}"))
                        .help("relative paths are read from the config file's directory");
                    self.diags.push(d);
                }
            }
        }
        let listed = t.public_keys.iter().flatten().count() + t.public_key_files.iter().flatten().count();
        if listed == 0 {
            let d = Diagnostic::new(Code::EmptyTrust, self.origin(trust).location(), "[trust] lists no key")
                .help("add `public_keys = [\"RW…\"]` or `public_key_files = [\"key.pub\"]`, or remove the section");
            self.diags.push(d);
        }
        Some(Setting { value: keys, origin: self.origin(trust) })
    }
}
