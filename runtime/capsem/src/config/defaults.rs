//! The image's `defaults.json` (written by `capsem-builder settings`, shape in docs/settings.md),
//! read by the runtime: the bottom layer of the configuration and the ranges that bound every
//! override.
//!
//! Only the parts the runtime uses are typed; other fields are ignored so that a newer builder
//! can add fields without breaking an older runtime. `schema_version` must be
//! [`SCHEMA_VERSION`]: an incompatible change bumps it and is refused here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::diag::ConfigError;

/// The `schema_version` this runtime reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The file.
#[derive(Debug, Clone, Deserialize)]
pub struct Defaults {
    /// Shape version.
    pub schema_version: u32,
    /// Which image.
    pub image: ImageRef,
    /// Egress policy.
    pub web: Web,
    /// AI providers by key.
    #[serde(default)]
    pub ai: BTreeMap<String, Provider>,
    /// Network needs of package sets, by set key.
    #[serde(default)]
    pub package_networks: BTreeMap<String, Network>,
    /// VM settings.
    pub vm: Vm,
}

/// Image name and version.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// `web`.
#[derive(Debug, Clone, Deserialize)]
pub struct Web {
    /// GET/HEAD/OPTIONS to unknown domains.
    pub allow_read: bool,
    /// POST/PUT/PATCH/DELETE to unknown domains.
    pub allow_write: bool,
    /// Extra allowed patterns.
    #[serde(default)]
    pub custom_allow: Vec<String>,
    /// Blocked patterns.
    #[serde(default)]
    pub custom_block: Vec<String>,
    /// Plain-HTTP ports intercepted.
    #[serde(default)]
    pub http_upstream_ports: Vec<u16>,
    /// Services by group and key.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<String, Service>>,
}

/// A named web service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Service {
    /// Display name.
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// Domain patterns.
    pub domains: Vec<String>,
    /// GET allowed.
    pub allow_get: bool,
    /// POST allowed.
    pub allow_post: bool,
}

/// Domains a provider or package set needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Network {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Domain patterns.
    pub domains: Vec<String>,
    /// GET allowed.
    pub allow_get: bool,
    /// POST allowed.
    pub allow_post: bool,
}

/// An AI provider's boot-time part.
#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    /// Display name.
    pub name: String,
    /// Enabled by default.
    pub enabled: bool,
    /// API key metadata.
    #[serde(default)]
    pub api_key: Option<ApiKey>,
    /// Network needs.
    #[serde(default)]
    pub network: Option<Network>,
    /// Files written at boot, by key.
    #[serde(default)]
    pub files: BTreeMap<String, GuestFile>,
}

/// API key metadata.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKey {
    /// Display name.
    pub name: String,
    /// Variables the key is injected as.
    pub env_vars: Vec<String>,
    /// Expected prefix (a hint).
    #[serde(default)]
    pub prefix: String,
}

/// A file written into the guest at boot.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: String,
    /// Content.
    pub content: String,
    /// Permission bits; defaults.json v1 carries none, so 0o644.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

/// A resource's default and allowed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Ranged {
    /// Default.
    pub value: i64,
    /// Smallest allowed.
    pub min: i64,
    /// Largest allowed.
    pub max: i64,
}

/// `vm`.
#[derive(Debug, Clone, Deserialize)]
pub struct Vm {
    /// Resources by name.
    pub resources: BTreeMap<String, Ranged>,
    /// Log request/response bodies.
    #[serde(default)]
    pub log_bodies: bool,
    /// Guest environment.
    pub environment: Env,
}

/// `vm.environment`.
#[derive(Debug, Clone, Deserialize)]
pub struct Env {
    /// Hostname.
    pub hostname: String,
    /// Variables.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Files written at boot.
    #[serde(default)]
    pub files: Vec<GuestFile>,
    /// CA bundle the runtime appends its proxy CA to.
    pub tls_ca_bundle: String,
}

impl Defaults {
    /// Parses and sanity-checks `defaults.json`.
    pub fn parse(bytes: &[u8]) -> Result<Defaults, ConfigError> {
        let bad = |message: String| ConfigError::Defaults { message };
        let d: Defaults = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if d.schema_version != SCHEMA_VERSION {
            return Err(bad(format!(
                "schema_version {} is not supported (this capsem reads {SCHEMA_VERSION}); use a capsem matching \
                 the image",
                d.schema_version
            )));
        }
        for needed in ["cpu_count", "ram_gb"] {
            if !d.vm.resources.contains_key(needed) {
                return Err(bad(format!("vm.resources.{needed} is missing")));
            }
        }
        for (name, r) in &d.vm.resources {
            if !(r.min <= r.value && r.value <= r.max) {
                return Err(bad(format!(
                    "vm.resources.{name}: value {} is outside its own range {}..={}",
                    r.value, r.min, r.max
                )));
            }
        }
        Ok(d)
    }

    /// The range of a resource.
    pub fn range(&self, name: &str) -> Option<Ranged> {
        self.vm.resources.get(name).copied()
    }
}
