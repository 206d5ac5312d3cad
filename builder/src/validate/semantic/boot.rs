//! Boot-time files: security/web.toml, vm/resources.toml, vm/environment.toml, and artifacts/.

use std::collections::BTreeMap;

use super::Cx;
use crate::diag::{Code, Diagnostic};
use crate::model::*;
use crate::raw::Sp;
use crate::rawconfig::*;
use crate::validate::checks;

pub(super) fn web(cx: &Cx<'_>, w: &RawWeb) -> WebPolicy {
    let list = |l: &Option<Sp<Vec<Sp<String>>>>| l.as_ref().map(|l| l.value.clone()).unwrap_or_default();
    let allow_raw = list(&w.custom_allow);
    let block_raw = list(&w.custom_block);
    let custom_allow = cx.domains(&allow_raw, true, "`custom_allow`");
    let custom_block = cx.domains(&block_raw, false, "`custom_block`");
    for b in &block_raw {
        for a in &allow_raw {
            if checks::pattern_covers(&b.value, &a.value) {
                cx.sink.push(
                    Diagnostic::at(
                        Code::AllowBlockOverlap,
                        a.loc.clone(),
                        format!("`{}` is allowed but also blocked by `{}` ({})", a.value, b.value, cx.where_(&b.loc)),
                    )
                    .help("custom_block wins, so this allow has no effect; remove one of them"),
                );
            }
        }
    }
    let allow_read = w.allow_read.as_ref().is_some_and(|b| b.value);
    let allow_write = w.allow_write.as_ref().is_some_and(|b| b.value);
    if allow_read && allow_write && block_raw.is_empty() {
        let loc = w.allow_write.as_ref().map_or(w.header.clone(), |b| b.loc.clone());
        cx.sink.push(
            Diagnostic::at(
                Code::AllowAllNoBlock,
                loc,
                "allow_read and allow_write are both true and custom_block is empty",
            )
            .help("the guest can send data to any site; block known exfiltration targets or turn allow_write off"),
        );
    }
    let mut ports = Vec::new();
    if let Some(p) = &w.http_upstream_ports {
        for port in &p.value {
            if let Some(v) = cx.range(port, "http_upstream_ports entry", 1, 65535) {
                if v == 443 {
                    cx.err(
                        Code::BadValue,
                        &port.loc,
                        "443 is always intercepted as TLS; it cannot be a plain-HTTP port",
                        "remove 443 from http_upstream_ports",
                    );
                } else if !ports.contains(&(v as u16)) {
                    ports.push(v as u16);
                }
            }
        }
    } else {
        ports.push(80);
    }
    let mut policy = WebPolicy {
        allow_read,
        allow_write,
        custom_allow,
        custom_block,
        http_upstream_ports: ports,
        ..WebPolicy::default()
    };
    for (group, key, s) in &w.services {
        let enabled = s.enabled.as_ref().is_none_or(|b| b.value);
        let domains = match &s.domains {
            Some(d) if d.value.is_empty() && enabled => {
                cx.err(
                    Code::EmptyValue,
                    &d.loc,
                    format!("enabled service `web.{group}.{}` has no domains", key.value),
                    "list its domains, or set `enabled = false`",
                );
                Vec::new()
            }
            Some(d) => cx.domains(&d.value, true, &format!("`domains` of [web.{group}.{}]", key.value)),
            None if enabled => {
                cx.err(
                    Code::MissingField,
                    &s.header,
                    format!("missing required field `domains` in [web.{group}.{}]", key.value),
                    "list its domains, or set `enabled = false`",
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        let svc = WebService {
            name: cx.nonempty_str(&s.name, "`name`"),
            enabled,
            domains,
            allow_get: s.allow_get.as_ref().is_some_and(|b| b.value),
            allow_post: s.allow_post.as_ref().is_some_and(|b| b.value),
        };
        let Some(id) = cx.ident(key, "web service") else { continue };
        let map = match *group {
            "search" => &mut policy.search,
            "registry" => &mut policy.registry,
            _ => &mut policy.repository,
        };
        map.insert(id, svc);
    }
    policy
}

pub(super) fn resources(cx: &Cx<'_>, r: Option<&RawResources>) -> Resources {
    let mut values = BTreeMap::new();
    for (name, default, lo, hi) in RESOURCE_FIELDS {
        let v = r.and_then(|r| r.ints.get(name)).and_then(|v| cx.range(v, name, *lo, *hi)).unwrap_or(*default);
        values.insert((*name).to_string(), v);
    }
    Resources { values, log_bodies: r.and_then(|r| r.log_bodies.as_ref()).is_some_and(|b| b.value) }
}

const DEFAULT_PATH: &str =
    "/opt/ai-clis/bin:/root/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn environment(cx: &Cx<'_>, e: Option<&RawEnvironment>) -> Environment {
    let sh = e.and_then(|e| e.shell.as_ref());
    let s =
        |v: Option<&Option<Sp<String>>>, d: &str| v.and_then(|v| v.as_ref()).map_or(d.to_string(), |v| v.value.clone());
    let path = s(sh.map(|s| &s.path), DEFAULT_PATH);
    if let Some(p) = sh.and_then(|s| s.path.as_ref()) {
        for entry in p.value.split(':') {
            if !entry.starts_with('/') {
                cx.err(
                    Code::BadValue,
                    &p.loc,
                    format!("PATH entry `{entry}` is not absolute"),
                    "PATH entries are absolute directories separated by ':'",
                );
                break;
            }
        }
        if !p.value.split(':').any(|e| e == "/usr/bin" || e == "/bin") {
            cx.sink.push(
                Diagnostic::at(Code::PathWithoutUsrBin, p.loc.clone(), "PATH contains neither /usr/bin nor /bin")
                    .help("add `/usr/bin:/bin` or basic commands will not be found"),
            );
        }
    }
    let home =
        sh.and_then(|s| s.home.as_ref()).and_then(|h| cx.guest_path(h, "home")).unwrap_or(GuestPath("/root".into()));
    let hostname = e.and_then(|e| e.hostname.as_ref()).map_or("capsem".to_string(), |h| {
        if !checks::hostname(&h.value) {
            cx.err(
                Code::BadValue,
                &h.loc,
                format!("hostname `{}` is not a valid host name label", h.value),
                "use lowercase letters, digits and '-', at most 63 characters",
            );
        }
        h.value.clone()
    });
    let tls = e
        .and_then(|e| e.tls_ca_bundle.as_ref())
        .and_then(|t| cx.guest_path(t, "tls.ca_bundle"))
        .unwrap_or(GuestPath("/etc/ssl/certs/ca-certificates.crt".into()));
    let mut vars = BTreeMap::new();
    if let Some(v) = e.and_then(|e| e.vars.as_ref()) {
        for (k, (kloc, val)) in &v.value {
            if cx.env_var(k, kloc) && matches!(k.as_str(), "PATH" | "HOME" | "TERM" | "LANG") {
                cx.err(
                    Code::ConflictingFields,
                    kloc,
                    format!("`{k}` is set by [environment.shell]"),
                    format!("set it as `{}` in [environment.shell]", k.to_ascii_lowercase()),
                );
            }
            cx.secrets(val, &format!("environment variable `{k}`"));
            vars.insert(k.clone(), val.value.clone());
        }
    }
    Environment {
        hostname,
        shell: Shell {
            term: s(sh.map(|s| &s.term), "xterm-256color"),
            home,
            path,
            lang: s(sh.map(|s| &s.lang), "C"),
            bashrc: sh.and_then(|s| s.bashrc.as_ref()).and_then(|f| cx.guest_file(f, "bashrc")),
            tmux_conf: sh.and_then(|s| s.tmux_conf.as_ref()).and_then(|f| cx.guest_file(f, "tmux_conf")),
        },
        tls_ca_bundle: tls,
        vars,
    }
}

pub(super) fn artifacts(cx: &Cx<'_>) -> Artifacts {
    for required in ["capsem-init", "capsem-bashrc"] {
        let p = cx.dir.join("artifacts").join(required);
        if !p.is_file() {
            cx.sink.push(
                Diagnostic::at_path(
                    Code::ArtifactMissing,
                    format!("artifacts/{required}"),
                    format!("required artifact `artifacts/{required}` is missing"),
                )
                .help("`capsem-builder init` writes working defaults; copy them from there"),
            );
        }
    }
    let a = cx.dir.join("artifacts");
    Artifacts {
        banner: a.join("banner.txt").is_file(),
        tips: a.join("tips.txt").is_file(),
        diagnostics: a.join("diagnostics").is_dir(),
    }
}
