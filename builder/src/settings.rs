//! The boot-time settings file, `defaults.json`: what the runtime applies at boot, no rebuild.
//!
//! It carries the image's web policy, VM resources (with their allowed ranges, so the runtime
//! can check user and corp overrides), guest environment, AI provider keys/domains/files, the
//! network needs of package sets, and MCP servers. The runtime layers corp > user > these
//! defaults. Bytes are deterministic: every map is a `BTreeMap`, output is pretty JSON with a
//! trailing newline. The shape is documented in docs/settings.md; `schema_version` changes only
//! on incompatible change.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{ApiKey, Cli, GuestFile, McpServer, Model, Network, WebService};
use crate::rawconfig::RESOURCE_FIELDS;

/// Current shape version.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Serialize)]
pub struct Settings<'a> {
    /// Shape version.
    pub schema_version: u32,
    /// Which image these defaults belong to.
    pub image: ImageRef<'a>,
    /// Egress policy.
    pub web: Web<'a>,
    /// AI providers by key.
    pub ai: BTreeMap<&'a str, Provider<'a>>,
    /// Network needs of package sets, by set key (only sets with a network table).
    pub package_networks: BTreeMap<&'a str, &'a Network>,
    /// MCP servers by key.
    pub mcp: BTreeMap<&'a str, &'a McpServer>,
    /// VM settings.
    pub vm: Vm<'a>,
}

/// Image name and version.
#[derive(Debug, Serialize)]
pub struct ImageRef<'a> {
    /// Name.
    pub name: &'a str,
    /// Version.
    pub version: &'a str,
}

/// Egress policy from security/web.toml.
#[derive(Debug, Serialize)]
pub struct Web<'a> {
    /// GET/HEAD/OPTIONS to unknown domains.
    pub allow_read: bool,
    /// POST/PUT/PATCH/DELETE to unknown domains.
    pub allow_write: bool,
    /// Extra allowed patterns.
    pub custom_allow: Vec<&'a str>,
    /// Blocked patterns; override every allow.
    pub custom_block: Vec<&'a str>,
    /// Plain-HTTP ports intercepted (443 is always intercepted as TLS).
    pub http_upstream_ports: &'a [u16],
    /// Services by group (`search`, `registry`, `repository`) and key.
    pub services: BTreeMap<&'static str, BTreeMap<&'a str, &'a WebService>>,
}

/// An AI provider's boot-time part.
#[derive(Debug, Serialize)]
pub struct Provider<'a> {
    /// Display name.
    pub name: &'a str,
    /// Description.
    pub description: &'a str,
    /// Allowed by default.
    pub enabled: bool,
    /// Key metadata (never the key).
    pub api_key: Option<&'a ApiKey>,
    /// Domains and methods.
    pub network: Option<&'a Network>,
    /// CLI.
    pub cli: Option<&'a Cli>,
    /// Files injected at boot, by key.
    pub files: BTreeMap<&'a str, &'a GuestFile>,
}

/// One resource value and its allowed range.
#[derive(Debug, Serialize)]
pub struct Ranged {
    /// Default value.
    pub value: i64,
    /// Smallest allowed override.
    pub min: i64,
    /// Largest allowed override.
    pub max: i64,
}

/// VM settings.
#[derive(Debug, Serialize)]
pub struct Vm<'a> {
    /// Resources by name.
    pub resources: BTreeMap<&'static str, Ranged>,
    /// Log request/response bodies.
    pub log_bodies: bool,
    /// Guest environment.
    pub environment: Env<'a>,
}

/// Guest environment.
#[derive(Debug, Serialize)]
pub struct Env<'a> {
    /// Hostname.
    pub hostname: &'a str,
    /// Variables set for every process (TERM, HOME, PATH, LANG, CA variables, extra vars).
    pub vars: BTreeMap<&'a str, &'a str>,
    /// Files written at boot (bashrc, tmux config).
    pub files: Vec<&'a GuestFile>,
    /// CA bundle path; the runtime appends its proxy CA to it.
    pub tls_ca_bundle: &'a str,
}

/// Variables that point TLS clients at the CA bundle (seed: environment.tls).
pub const CA_ENV_VARS: &[&str] = &["NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"];

/// Builds the settings view of a model.
pub fn from_model(model: &Model) -> Settings<'_> {
    let w = &model.web;
    let mut services = BTreeMap::new();
    for (group, map) in [("search", &w.search), ("registry", &w.registry), ("repository", &w.repository)] {
        services.insert(group, map.iter().map(|(k, v)| (k.as_str(), v)).collect());
    }
    let env = &model.environment;
    let mut vars: BTreeMap<&str, &str> = env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.insert("TERM", &env.shell.term);
    vars.insert("HOME", env.shell.home.as_str());
    vars.insert("PATH", &env.shell.path);
    vars.insert("LANG", &env.shell.lang);
    for v in CA_ENV_VARS {
        vars.insert(v, env.tls_ca_bundle.as_str());
    }
    Settings {
        schema_version: SCHEMA_VERSION,
        image: ImageRef { name: &model.image.name, version: &model.image.version },
        web: Web {
            allow_read: w.allow_read,
            allow_write: w.allow_write,
            custom_allow: w.custom_allow.iter().map(|d| d.as_str()).collect(),
            custom_block: w.custom_block.iter().map(|d| d.as_str()).collect(),
            http_upstream_ports: &w.http_upstream_ports,
            services,
        },
        ai: model
            .ai
            .iter()
            .map(|(k, p)| {
                (
                    k.as_str(),
                    Provider {
                        name: &p.name,
                        description: &p.description,
                        enabled: p.enabled,
                        api_key: p.api_key.as_ref(),
                        network: p.network.as_ref(),
                        cli: p.cli.as_ref(),
                        files: p.files.iter().map(|(fk, f)| (fk.as_str(), f)).collect(),
                    },
                )
            })
            .collect(),
        package_networks: model
            .packages
            .iter()
            .filter_map(|(k, s)| s.network.as_ref().map(|n| (k.as_str(), n)))
            .collect(),
        mcp: model.mcp.iter().map(|(k, m)| (k.as_str(), m)).collect(),
        vm: Vm {
            resources: RESOURCE_FIELDS
                .iter()
                .map(|(name, _, min, max)| {
                    (*name, Ranged { value: model.resources.values[*name], min: *min, max: *max })
                })
                .collect(),
            log_bodies: model.resources.log_bodies,
            environment: Env {
                hostname: &env.hostname,
                vars,
                files: env.shell.bashrc.iter().chain(env.shell.tmux_conf.iter()).collect(),
                tls_ca_bundle: env.tls_ca_bundle.as_str(),
            },
        },
    }
}

/// The exact bytes of `defaults.json` for a model.
pub fn to_json(model: &Model) -> String {
    let mut s = serde_json::to_string_pretty(&from_model(model)).expect("settings serialize (no non-string keys)");
    s.push('\n');
    s
}
