//! `RawConfig`: one struct per file and table of an image definition, mirroring the TOML.
//!
//! Built by [`crate::raw::Reader`] — every field an `Option<Sp<_>>` so a missing or mistyped
//! value is already reported and simply absent here. Field names are the TOML keys. See
//! docs/image-schema.md for the meaning of each.

use std::collections::BTreeMap;

use crate::raw::{Reader, Sp};
use crate::source::Loc;

use crate::raw::Keyed;
pub use crate::raw::StrMap;

/// The whole definition as read.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// config/build.toml `[build]`.
    pub build: Option<RawBuild>,
    /// config/build.toml `[audit]`.
    pub audit: Option<RawAudit>,
    /// config/manifest.toml `[image]`.
    pub image: Option<RawImage>,
    /// config/ai/*.toml, in file then key order.
    pub ai: Vec<RawProvider>,
    /// config/packages/*.toml.
    pub packages: Vec<RawPackageSet>,
    /// config/mcp/*.toml.
    pub mcp: Vec<RawMcp>,
    /// config/security/web.toml `[web]`.
    pub web: Option<RawWeb>,
    /// config/vm/resources.toml `[resources]`.
    pub resources: Option<RawResources>,
    /// config/vm/environment.toml `[environment]`.
    pub environment: Option<RawEnvironment>,
}

/// `[build]`.
#[derive(Debug)]
pub struct RawBuild {
    pub header: Loc,
    pub compression: Option<Sp<String>>,
    pub compression_level: Option<Sp<i64>>,
    pub source_date_epoch: Option<Sp<i64>>,
    pub extra_ca: Option<Sp<String>>,
    pub keep_extra_ca: Option<Sp<bool>>,
    pub architectures: Option<Sp<Vec<Keyed<RawArch>>>>,
}

/// `[build.architectures.<name>]`.
#[derive(Debug)]
pub struct RawArch {
    pub header: Loc,
    pub base_image: Option<Sp<String>>,
    pub bootstrap: Option<RawBootstrap>,
    pub docker_platform: Option<Sp<String>>,
    pub rust_target: Option<Sp<String>>,
    pub kernel_branch: Option<Sp<String>>,
    pub kernel_image: Option<Sp<String>>,
    pub defconfig: Option<Sp<String>>,
    pub node_major: Option<Sp<i64>>,
}

/// `[build.architectures.<name>.bootstrap]`.
#[derive(Debug)]
pub struct RawBootstrap {
    pub header: Loc,
    pub suite: Option<Sp<String>>,
    pub mirror: Option<Sp<String>>,
    pub variant: Option<Sp<String>>,
    pub components: Option<Sp<Vec<Sp<String>>>>,
}

/// `[audit]` in config/build.toml: the policy `capsem-builder audit` applies.
#[derive(Debug)]
pub struct RawAudit {
    pub header: Loc,
    pub fail_on: Option<Sp<String>>,
    pub allow: Option<Sp<Vec<Sp<String>>>>,
}

/// `[image]`.
#[derive(Debug)]
pub struct RawImage {
    pub header: Loc,
    pub name: Option<Sp<String>>,
    pub version: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub changelog: Vec<RawChangelog>,
}

/// `[[image.changelog]]`.
#[derive(Debug)]
pub struct RawChangelog {
    pub header: Loc,
    pub version: Option<Sp<String>>,
    pub date: Option<Sp<String>>,
    pub changes: Option<Sp<Vec<Sp<String>>>>,
}

/// `[<provider>]` in config/ai/.
#[derive(Debug)]
pub struct RawProvider {
    pub key: Sp<String>,
    pub name: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub enabled: Option<Sp<bool>>,
    pub api_key: Option<RawApiKey>,
    pub network: Option<RawNetwork>,
    pub install: Option<RawInstall>,
    pub cli: Option<RawCli>,
    pub files: Vec<Keyed<RawFile>>,
}

/// `[<provider>.api_key]`.
#[derive(Debug)]
pub struct RawApiKey {
    pub header: Loc,
    pub name: Option<Sp<String>>,
    pub env_vars: Option<Sp<Vec<Sp<String>>>>,
    pub prefix: Option<Sp<String>>,
    pub docs_url: Option<Sp<String>>,
    pub value: Option<Sp<String>>,
}

/// `[<x>.network]` (providers and package sets).
#[derive(Debug)]
pub struct RawNetwork {
    pub header: Loc,
    pub name: Option<Sp<String>>,
    pub domains: Option<Sp<Vec<Sp<String>>>>,
    pub allow_get: Option<Sp<bool>>,
    pub allow_post: Option<Sp<bool>>,
}

/// `[<provider>.install]`.
#[derive(Debug)]
pub struct RawInstall {
    pub header: Loc,
    pub manager: Option<Sp<String>>,
    pub prefix: Option<Sp<String>>,
    pub packages: Option<Sp<Vec<Sp<String>>>>,
    pub checksums: Option<Sp<StrMap>>,
}

/// `[<provider>.cli]`.
#[derive(Debug)]
pub struct RawCli {
    pub header: Loc,
    pub key: Option<Sp<String>>,
    pub name: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub version_command: Option<Sp<String>>,
}

/// A guest file: `[<provider>.files.<k>]`, `[environment.shell.bashrc]`.
#[derive(Debug)]
pub struct RawFile {
    pub header: Loc,
    pub path: Option<Sp<String>>,
    pub content: Option<Sp<String>>,
}

/// `[<set>]` in config/packages/.
#[derive(Debug)]
pub struct RawPackageSet {
    pub key: Sp<String>,
    pub name: Option<Sp<String>>,
    pub manager: Option<Sp<String>>,
    pub install_cmd: Option<Sp<String>>,
    pub prefix: Option<Sp<String>>,
    pub packages: Option<Sp<Vec<Sp<String>>>>,
    pub checksums: Option<Sp<StrMap>>,
    pub version_commands: Option<Sp<StrMap>>,
    pub network: Option<RawNetwork>,
}

/// `[<server>]` in config/mcp/.
#[derive(Debug)]
pub struct RawMcp {
    pub key: Sp<String>,
    pub name: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub transport: Option<Sp<String>>,
    pub command: Option<Sp<String>>,
    pub url: Option<Sp<String>>,
    pub args: Option<Sp<Vec<Sp<String>>>>,
    pub env: Option<Sp<StrMap>>,
    pub headers: Option<Sp<StrMap>>,
    pub builtin: Option<Sp<bool>>,
    pub enabled: Option<Sp<bool>>,
}

/// `[web]`.
#[derive(Debug)]
pub struct RawWeb {
    pub header: Loc,
    pub allow_read: Option<Sp<bool>>,
    pub allow_write: Option<Sp<bool>>,
    pub custom_allow: Option<Sp<Vec<Sp<String>>>>,
    pub custom_block: Option<Sp<Vec<Sp<String>>>>,
    pub http_upstream_ports: Option<Sp<Vec<Sp<i64>>>>,
    /// `(group, key, service)` for groups search, registry, repository.
    pub services: Vec<(&'static str, Sp<String>, RawService)>,
}

/// `[web.<group>.<key>]`.
#[derive(Debug)]
pub struct RawService {
    pub header: Loc,
    pub name: Option<Sp<String>>,
    pub enabled: Option<Sp<bool>>,
    pub domains: Option<Sp<Vec<Sp<String>>>>,
    pub allow_get: Option<Sp<bool>>,
    pub allow_post: Option<Sp<bool>>,
}

/// `[resources]`: integer fields by name, booleans by name.
#[derive(Debug)]
pub struct RawResources {
    pub header: Loc,
    pub ints: BTreeMap<&'static str, Sp<i64>>,
    pub log_bodies: Option<Sp<bool>>,
}

/// `[environment]`.
#[derive(Debug)]
pub struct RawEnvironment {
    pub header: Loc,
    pub hostname: Option<Sp<String>>,
    pub shell: Option<RawShell>,
    pub tls_ca_bundle: Option<Sp<String>>,
    pub vars: Option<Sp<StrMap>>,
}

/// `[environment.shell]`.
#[derive(Debug)]
pub struct RawShell {
    pub header: Loc,
    pub term: Option<Sp<String>>,
    pub home: Option<Sp<String>>,
    pub path: Option<Sp<String>>,
    pub lang: Option<Sp<String>>,
    pub bashrc: Option<RawFile>,
    pub tmux_conf: Option<RawFile>,
}

/// Resource fields: name, default, inclusive range. Shared with validation and settings.
pub const RESOURCE_FIELDS: &[(&str, i64, i64, i64)] = &[
    ("cpu_count", 4, 1, 8),
    ("ram_gb", 4, 1, 16),
    ("scratch_disk_size_gb", 16, 1, 128),
    ("max_body_capture", 4096, 0, 1_048_576),
    ("retention_days", 30, 1, 365),
    ("max_sessions", 100, 1, 10_000),
    ("min_content_sessions", 25, 0, 1000),
    ("max_disk_gb", 100, 1, 1000),
    ("terminated_retention_days", 365, 30, 3650),
];

/// Web service groups, in output order.
pub const WEB_GROUPS: &[&str] = &["search", "registry", "repository"];

// ---- readers -------------------------------------------------------------------------------

pub(crate) fn read_build(r: &Reader<'_, '_>) -> RawBuild {
    let architectures = r
        .table_map("architectures")
        .map(|m| m.map(|entries| entries.into_iter().map(|(k, a)| (k, read_arch(&a))).collect()));
    let b = RawBuild {
        header: r.header_loc(),
        compression: r.str("compression"),
        compression_level: r.int("compression_level"),
        source_date_epoch: r.int("source_date_epoch"),
        extra_ca: r.str("extra_ca"),
        keep_extra_ca: r.bool("keep_extra_ca"),
        architectures,
    };
    if b.architectures.is_none() && !r.has("architectures") {
        r.missing("architectures", "add at least one `[build.architectures.x86_64]` table");
    }
    r.finish(&[]);
    b
}

fn read_arch(r: &Reader<'_, '_>) -> RawArch {
    let bootstrap = r.table("bootstrap").map(|b| {
        let raw = RawBootstrap {
            header: b.header_loc(),
            suite: b.req_str("suite"),
            mirror: b.req_str("mirror"),
            variant: b.str("variant"),
            components: b.str_list("components"),
        };
        b.finish(&[]);
        raw
    });
    let a = RawArch {
        header: r.header_loc(),
        base_image: r.str("base_image"),
        bootstrap,
        docker_platform: r.req_str("docker_platform"),
        rust_target: r.req_str("rust_target"),
        kernel_branch: r.req_str("kernel_branch"),
        kernel_image: r.req_str("kernel_image"),
        defconfig: r.req_str("defconfig"),
        node_major: r.int("node_major"),
    };
    r.finish(&[]);
    a
}

pub(crate) fn read_audit(r: &Reader<'_, '_>) -> RawAudit {
    let a = RawAudit { header: r.header_loc(), fail_on: r.str("fail_on"), allow: r.str_list("allow") };
    r.finish(&[]);
    a
}

pub(crate) fn read_image(r: &Reader<'_, '_>) -> RawImage {
    let changelog = r
        .table_list("changelog")
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let e = RawChangelog {
                header: c.header_loc(),
                version: c.req_str("version"),
                date: c.req_str("date"),
                changes: c.str_list("changes"),
            };
            c.finish(&[]);
            e
        })
        .collect();
    let i = RawImage {
        header: r.header_loc(),
        name: r.req_str("name"),
        version: r.req_str("version"),
        description: r.str("description"),
        changelog,
    };
    r.finish(&[]);
    i
}

fn read_network(r: &Reader<'_, '_>) -> RawNetwork {
    let n = RawNetwork {
        header: r.header_loc(),
        name: r.str("name"),
        domains: r.str_list("domains"),
        allow_get: r.bool("allow_get"),
        allow_post: r.bool("allow_post"),
    };
    if n.domains.is_none() && !r.has("domains") {
        r.missing("domains", "list the domains, e.g. `domains = [\"api.example.com\"]`");
    }
    r.finish(&[]);
    n
}

fn read_file(r: &Reader<'_, '_>) -> RawFile {
    let f = RawFile { header: r.header_loc(), path: r.req_str("path"), content: r.req_str("content") };
    r.finish(&[]);
    f
}

pub(crate) fn read_provider(key: Sp<String>, r: &Reader<'_, '_>) -> RawProvider {
    let api_key = r.table("api_key").map(|t| {
        let a = RawApiKey {
            header: t.header_loc(),
            name: t.req_str("name"),
            env_vars: t.str_list("env_vars"),
            prefix: t.str("prefix"),
            docs_url: t.str("docs_url"),
            value: t.str("value"),
        };
        if a.env_vars.is_none() && !t.has("env_vars") {
            t.missing("env_vars", "list the variables the key is injected as, e.g. `env_vars = [\"MY_API_KEY\"]`");
        }
        t.finish(&[]);
        a
    });
    let install = r.table("install").map(|t| {
        let i = RawInstall {
            header: t.header_loc(),
            manager: t.req_str("manager"),
            prefix: t.str("prefix"),
            packages: t.str_list("packages"),
            checksums: t.str_map("checksums"),
        };
        if i.packages.is_none() && !t.has("packages") {
            t.missing("packages", "list what to install, e.g. `packages = [\"tool@1.2.3\"]`");
        }
        t.finish(&[]);
        i
    });
    let cli = r.table("cli").map(|t| {
        let c = RawCli {
            header: t.header_loc(),
            key: t.req_str("key"),
            name: t.str("name"),
            description: t.str("description"),
            version_command: t.str("version_command"),
        };
        t.finish(&[]);
        c
    });
    let files = r
        .table_map("files")
        .map(|m| m.value.into_iter().map(|(k, f)| (k, read_file(&f))).collect())
        .unwrap_or_default();
    let p = RawProvider {
        name: r.req_str("name"),
        description: r.str("description"),
        enabled: r.bool("enabled"),
        api_key,
        network: r.table("network").map(|t| read_network(&t)),
        install,
        cli,
        files,
        key,
    };
    r.finish(&[]);
    p
}

pub(crate) fn read_package_set(key: Sp<String>, r: &Reader<'_, '_>) -> RawPackageSet {
    let s = RawPackageSet {
        name: r.req_str("name"),
        manager: r.req_str("manager"),
        install_cmd: r.str("install_cmd"),
        prefix: r.str("prefix"),
        packages: r.str_list("packages"),
        checksums: r.str_map("checksums"),
        version_commands: r.str_map("version_commands"),
        network: r.table("network").map(|t| read_network(&t)),
        key,
    };
    if s.packages.is_none() && !r.has("packages") {
        r.missing("packages", "list the packages, e.g. `packages = [\"git\"]`");
    }
    r.finish(&[]);
    s
}

pub(crate) fn read_mcp(key: Sp<String>, r: &Reader<'_, '_>) -> RawMcp {
    let m = RawMcp {
        name: r.req_str("name"),
        description: r.str("description"),
        transport: r.req_str("transport"),
        command: r.str("command"),
        url: r.str("url"),
        args: r.str_list("args"),
        env: r.str_map("env"),
        headers: r.str_map("headers"),
        builtin: r.bool("builtin"),
        enabled: r.bool("enabled"),
        key,
    };
    r.finish(&[]);
    m
}

fn read_service(r: &Reader<'_, '_>) -> RawService {
    let s = RawService {
        header: r.header_loc(),
        name: r.req_str("name"),
        enabled: r.bool("enabled"),
        domains: r.str_list("domains"),
        allow_get: r.bool("allow_get"),
        allow_post: r.bool("allow_post"),
    };
    r.finish(&[]);
    s
}

pub(crate) fn read_web(r: &Reader<'_, '_>) -> RawWeb {
    let mut services = Vec::new();
    for group in WEB_GROUPS {
        if let Some(m) = r.table_map(group) {
            for (k, s) in m.value {
                services.push((*group, k, read_service(&s)));
            }
        }
    }
    let w = RawWeb {
        header: r.header_loc(),
        allow_read: r.bool("allow_read"),
        allow_write: r.bool("allow_write"),
        custom_allow: r.str_list("custom_allow"),
        custom_block: r.str_list("custom_block"),
        http_upstream_ports: r.int_list("http_upstream_ports"),
        services,
    };
    r.finish(&[]);
    w
}

pub(crate) fn read_resources(r: &Reader<'_, '_>) -> RawResources {
    let mut ints = BTreeMap::new();
    for (name, ..) in RESOURCE_FIELDS {
        if let Some(v) = r.int(name) {
            ints.insert(*name, v);
        }
    }
    let res = RawResources { header: r.header_loc(), ints, log_bodies: r.bool("log_bodies") };
    r.finish(&[]);
    res
}

pub(crate) fn read_environment(r: &Reader<'_, '_>) -> RawEnvironment {
    let shell = r.table("shell").map(|s| {
        let sh = RawShell {
            header: s.header_loc(),
            term: s.str("term"),
            home: s.str("home"),
            path: s.str("path"),
            lang: s.str("lang"),
            bashrc: s.table("bashrc").map(|f| read_file(&f)),
            tmux_conf: s.table("tmux_conf").map(|f| read_file(&f)),
        };
        s.finish(&[]);
        sh
    });
    let tls_ca_bundle = r.table("tls").and_then(|t| {
        let v = t.str("ca_bundle");
        t.finish(&[]);
        v
    });
    let e = RawEnvironment {
        header: r.header_loc(),
        hostname: r.str("hostname"),
        shell,
        tls_ca_bundle,
        vars: r.str_map("vars"),
    };
    r.finish(&[]);
    e
}
