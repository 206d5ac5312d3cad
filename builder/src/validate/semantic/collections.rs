//! The collection directories — ai/, packages/, mcp/ — and the cross-file rules over them
//! (duplicate keys, W001 npm registry, npm version conflicts).

use std::collections::{BTreeMap, BTreeSet};

use super::Cx;
use crate::diag::{Code, Diagnostic};
use crate::model::*;
use crate::raw::Sp;
use crate::rawconfig::*;
use crate::source::Loc;
use crate::validate::checks;

/// E008: the same key in two files of one collection. Returns false for the later duplicate.
fn first_definition(cx: &Cx<'_>, seen: &mut BTreeMap<String, Loc>, key: &Sp<String>, what: &str) -> bool {
    if let Some(first) = seen.get(&key.value) {
        cx.err(
            Code::DuplicateKey,
            &key.loc,
            format!("{what} `{}` is already defined in {}", key.value, cx.where_(first)),
            "each key may be defined once per directory; rename one or merge them",
        );
        return false;
    }
    seen.insert(key.value.clone(), key.loc.clone());
    true
}

pub(super) fn providers(cx: &Cx<'_>, raw: &[RawProvider]) -> BTreeMap<Ident, Provider> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let mut env_seen: BTreeMap<String, (String, Loc)> = BTreeMap::new();
    for p in raw {
        let id = cx.ident(&p.key, "AI provider");
        if !first_definition(cx, &mut seen, &p.key, "AI provider") {
            continue;
        }
        let enabled = p.enabled.as_ref().is_none_or(|e| e.value);
        let name = cx.nonempty_str(&p.name, "`name`");
        let api_key = p.api_key.as_ref().map(|a| {
            let vars = cx.nonempty_list(&a.env_vars, "`env_vars`", "`env_vars = [\"MY_API_KEY\"]`");
            for v in vars {
                if !cx.env_var(&v.value, &v.loc) {
                    continue;
                }
                if let Some((other, first)) = env_seen.get(&v.value) {
                    cx.sink.push(
                        Diagnostic::at(
                            Code::DuplicateEnvVar,
                            v.loc.clone(),
                            format!("`{}` is also the API key variable of provider `{other}` ({})", v.value, cx.where_(first)),
                        )
                            .help("two providers would receive the same key; give each its own variable"),
                    );
                } else {
                    env_seen.insert(v.value.clone(), (p.key.value.clone(), v.loc.clone()));
                }
            }
            if let Some(u) = &a.docs_url
                && let Err(e) = checks::url(&u.value) {
                    cx.err(Code::BadUrl, &u.loc, format!("docs_url {e}"), "e.g. `https://console.example.com/keys`");
                }
            if let Some(v) = &a.value
                && !v.value.is_empty() {
                    cx.sink.push(
                        Diagnostic::at(Code::ApiKeyInConfig, v.loc.clone(), format!("API key for `{}` is written in the image definition", p.key.value))
                            .help("anyone with the image can read it; put personal keys in ~/.capsem/user.toml (or the corp file) instead"),
                    );
                }
            ApiKey {
                name: cx.nonempty_str(&a.name, "`api_key.name`"),
                env_vars: vars.iter().map(|v| v.value.clone()).collect(),
                prefix: a.prefix.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                docs_url: a.docs_url.as_ref().map(|v| v.value.clone()),
                has_literal_value: a.value.as_ref().is_some_and(|v| !v.value.is_empty()),
            }
        });
        let install = p.install.as_ref().and_then(|i| {
            if !enabled {
                cx.sink.push(
                    Diagnostic::at(
                        Code::DisabledWithInstall,
                        i.header.clone(),
                        format!("provider `{}` is disabled, so its install is skipped", p.key.value),
                    )
                    .help(format!("set `enabled = true` to install it, or remove the [{}.install] table", p.key.value)),
                );
            }
            cx.install(
                &i.header,
                &i.manager,
                None,
                &i.prefix,
                &i.packages,
                &i.checksums,
                false,
                &format!("[{}.install]", p.key.value),
            )
            .map(|(i, _)| i)
        });
        let cli = p.cli.as_ref().map(|c| {
            if enabled && c.version_command.is_none() {
                cx.sink.push(
                    Diagnostic::at(Code::CliWithoutVersion, c.header.clone(), format!("CLI of provider `{}` has no `version_command`", p.key.value))
                        .help("add e.g. `version_command = \"tool --version\"` so builds record and check the installed version"),
                );
            }
            Cli {
                key: cx.nonempty_str(&c.key, "`cli.key`"),
                name: c.name.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                description: c.description.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                version_command: c.version_command.as_ref().map(|v| v.value.clone()),
            }
        });
        let mut files = BTreeMap::new();
        for (k, f) in &p.files {
            let fid = cx.ident(k, "file");
            if let (Some(fid), Some(gf)) = (fid, cx.guest_file(f, &format!("file `{}.files.{}`", p.key.value, k.value)))
            {
                files.insert(fid, gf);
            }
        }
        let provider = Provider {
            file: cx.file_of(&p.key.loc),
            name,
            description: p.description.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
            enabled,
            api_key,
            network: p.network.as_ref().map(|n| cx.network(n)),
            install,
            cli,
            files,
        };
        if let Some(id) = id {
            out.insert(id, provider);
        }
    }
    out
}

pub(super) fn package_sets(cx: &Cx<'_>, raw: &[RawPackageSet]) -> BTreeMap<Ident, PackageSet> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for s in raw {
        let id = cx.ident(&s.key, "package set");
        if !first_definition(cx, &mut seen, &s.key, "package set") {
            continue;
        }
        let name = cx.nonempty_str(&s.name, "`name`");
        if s.network.is_none() {
            cx.sink.push(
                Diagnostic::at(Code::NoPackageNetwork, s.key.loc.clone(), format!("package set `{}` has no [{}.network] table", s.key.value, s.key.value))
                    .help("list the registry domains it needs at run time (e.g. for `pip install` inside the VM), or they stay blocked"),
            );
        }
        let Some((install, names)) = cx.install(
            &s.key.loc,
            &s.manager,
            s.install_cmd.as_ref(),
            &s.prefix,
            &s.packages,
            &s.checksums,
            true,
            &format!("[{}]", s.key.value),
        ) else {
            continue;
        };
        let mut version_commands = BTreeMap::new();
        if let Some(vc) = &s.version_commands {
            for (k, (kloc, cmd)) in &vc.value {
                let norm = k.to_ascii_lowercase().replace('_', "-");
                if !names.iter().any(|n| n == k || *n == norm) {
                    cx.err(
                        Code::BadValue,
                        kloc,
                        format!("version command for `{k}`, which is not in `packages`"),
                        "keys of version_commands must be package names of this set",
                    );
                }
                version_commands.insert(k.clone(), cmd.value.clone());
            }
        }
        let set = PackageSet {
            file: cx.file_of(&s.key.loc),
            name,
            install,
            version_commands,
            network: s.network.as_ref().map(|n| cx.network(n)),
        };
        if let Some(id) = id {
            out.insert(id, set);
        }
    }
    out
}

fn str_map(m: &Option<Sp<StrMap>>) -> BTreeMap<String, String> {
    m.as_ref().map(|m| m.value.iter().map(|(k, (_, v))| (k.clone(), v.value.clone())).collect()).unwrap_or_default()
}

pub(super) fn mcp_servers(cx: &Cx<'_>, raw: &[RawMcp]) -> BTreeMap<Ident, McpServer> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for m in raw {
        let id = cx.ident(&m.key, "MCP server");
        if !first_definition(cx, &mut seen, &m.key, "MCP server") {
            continue;
        }
        for (k, (kloc, v)) in m.env.iter().flat_map(|e| e.value.iter()) {
            cx.env_var(k, kloc);
            cx.secrets(v, &format!("env of MCP server `{}`", m.key.value));
        }
        for (_, (_, v)) in m.headers.iter().flat_map(|e| e.value.iter()) {
            cx.secrets(v, &format!("header of MCP server `{}`", m.key.value));
        }
        for a in m.args.iter().flat_map(|a| a.value.iter()) {
            cx.secrets(a, &format!("argument of MCP server `{}`", m.key.value));
        }
        let transport = m.transport.as_ref().and_then(|t| {
            cx.choice(t, "MCP transport", &["stdio", "sse"], |s| ["stdio", "sse"].contains(&s).then(|| s.to_string()))
        });
        let wrong = |field: &str, loc: &Loc, t: &str| {
            cx.err(
                Code::ConflictingFields,
                loc,
                format!("`{field}` does not apply to transport = \"{t}\""),
                format!("remove `{field}`"),
            )
        };
        let transport = match transport.as_deref() {
            Some("stdio") => {
                if let Some(u) = &m.url {
                    wrong("url", &u.loc, "stdio");
                }
                if let Some(h) = &m.headers {
                    wrong("headers", &h.loc, "stdio");
                }
                match &m.command {
                    None => {
                        cx.err(
                            Code::MissingField,
                            &m.key.loc,
                            format!("MCP server `{}` uses stdio but has no `command`", m.key.value),
                            "add `command = \"/usr/local/bin/server\"`",
                        );
                        None
                    }
                    Some(c) if c.value.trim().is_empty() => {
                        cx.err(Code::EmptyValue, &c.loc, "`command` is empty", "name the server executable");
                        None
                    }
                    Some(c) => Some(McpTransport::Stdio {
                        command: c.value.clone(),
                        args: m
                            .args
                            .as_ref()
                            .map(|a| a.value.iter().map(|s| s.value.clone()).collect())
                            .unwrap_or_default(),
                        env: str_map(&m.env),
                    }),
                }
            }
            Some(_) => {
                if let Some(c) = &m.command {
                    wrong("command", &c.loc, "sse");
                }
                if let Some(a) = &m.args {
                    wrong("args", &a.loc, "sse");
                }
                if let Some(e) = &m.env {
                    wrong("env", &e.loc, "sse");
                }
                match &m.url {
                    None => {
                        cx.err(
                            Code::MissingField,
                            &m.key.loc,
                            format!("MCP server `{}` uses sse but has no `url`", m.key.value),
                            "add `url = \"https://host/sse\"`",
                        );
                        None
                    }
                    Some(u) => {
                        if let Err(e) = checks::url(&u.value) {
                            cx.err(Code::BadUrl, &u.loc, format!("url {e}"), "e.g. `https://mcp.example.com/sse`");
                        }
                        Some(McpTransport::Sse { url: u.value.clone(), headers: str_map(&m.headers) })
                    }
                }
            }
            None => None,
        };
        let server = McpServer {
            file: cx.file_of(&m.key.loc),
            name: cx.nonempty_str(&m.name, "`name`"),
            description: m.description.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
            transport: match transport {
                Some(t) => t,
                None => continue,
            },
            builtin: m.builtin.as_ref().is_some_and(|b| b.value),
            enabled: m.enabled.as_ref().is_none_or(|b| b.value),
        };
        if let Some(id) = id {
            out.insert(id, server);
        }
    }
    out
}

/// W001: npm packages are installed but web.toml names no npm registry.
pub(super) fn npm_registry_rule(cx: &Cx<'_>, raw: &RawConfig, web: &WebPolicy) {
    let npm_loc = raw
        .packages
        .iter()
        .filter(|s| s.manager.as_ref().is_some_and(|m| m.value == "npm"))
        .map(|s| s.key.loc.clone())
        .chain(
            raw.ai
                .iter()
                .filter(|p| p.enabled.as_ref().is_none_or(|e| e.value))
                .filter_map(|p| p.install.as_ref())
                .filter(|i| i.manager.as_ref().is_some_and(|m| m.value == "npm"))
                .map(|i| i.header.clone()),
        )
        .next();
    let Some(loc) = npm_loc else { return };
    let has_registry = web
        .registry
        .values()
        .filter(|s| s.enabled)
        .flat_map(|s| s.domains.iter())
        .any(|d| d.as_str().contains("npm") || checks::pattern_covers(d.as_str(), "registry.npmjs.org"));
    if !has_registry {
        let _: BTreeSet<()> = BTreeSet::new();
        cx.sink.push(
            Diagnostic::at(Code::NoNpmRegistry, loc, "npm packages are installed but security/web.toml has no enabled npm registry")
                .help("add `[web.registry.npm]` with `domains = [\"registry.npmjs.org\"]` and `allow_get = true` so `npm install` works in the VM"),
        );
    }
}

/// E020: one npm prefix asked to install the same package at two different specs (one
/// `npm install -g --prefix` call cannot satisfy both; the last would silently win).
pub(super) fn npm_conflicts(cx: &Cx<'_>, raw: &RawConfig) {
    let sets = raw.packages.iter().map(|s| (&s.manager, &s.prefix, &s.packages));
    let providers = raw
        .ai
        .iter()
        .filter(|p| p.enabled.as_ref().is_none_or(|e| e.value))
        .filter_map(|p| p.install.as_ref())
        .map(|i| (&i.manager, &i.prefix, &i.packages));
    let mut seen: BTreeMap<(String, String), Sp<String>> = BTreeMap::new();
    for (manager, prefix, packages) in sets.chain(providers) {
        if manager.as_ref().is_none_or(|m| m.value != "npm") {
            continue;
        }
        let prefix = prefix.as_ref().map_or(DEFAULT_NPM_PREFIX.to_string(), |p| p.value.clone());
        for p in packages.iter().flat_map(|l| l.value.iter()) {
            let Ok(spec) = checks::npm_spec(&p.value) else { continue };
            match seen.get(&(prefix.clone(), spec.name.clone())) {
                Some(first) if first.value != p.value => cx.err(
                    Code::BadValue,
                    &p.loc,
                    format!(
                        "`{}` conflicts with `{}` ({}) in npm prefix {prefix}",
                        p.value,
                        first.value,
                        cx.where_(&first.loc)
                    ),
                    "one prefix is installed by one `npm install -g` call; ask for one version of each package",
                ),
                Some(_) => {}
                None => {
                    seen.insert((prefix.clone(), spec.name), p.clone());
                }
            }
        }
    }
}
