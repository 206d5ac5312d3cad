//! Semantic checks: `RawConfig` → `Model`, one function per file kind, then cross-file rules.
//!
//! Each function reports every problem it finds and still returns its best value, so later
//! checks can run; the caller discards the model when any error was reported.

use std::collections::BTreeMap;
use std::path::Path;

use super::checks;

mod audit;
mod boot;
mod build;
mod collections;

use crate::diag::{Code, Diagnostic, suggest};
use crate::model::*;
use crate::raw::{Sink, Sp};
use crate::rawconfig::*;
use crate::source::{Loc, SourceMap};
use boot::{artifacts, environment, resources, web};
use build::{build, image};
use collections::{mcp_servers, npm_conflicts, npm_registry_rule, package_sets, providers};

struct Cx<'a> {
    dir: &'a Path,
    sources: &'a SourceMap,
    sink: &'a Sink,
}

impl Cx<'_> {
    fn err(&self, code: Code, loc: &Loc, msg: impl Into<String>, help: impl Into<String>) {
        self.sink.push(Diagnostic::at(code, loc.clone(), msg).help(help));
    }

    fn file_of(&self, loc: &Loc) -> String {
        self.sources.get(loc.file).rel_path.clone()
    }

    fn where_(&self, loc: &Loc) -> String {
        let f = self.sources.get(loc.file);
        let (l, c) = f.line_col(loc.span.start);
        format!("{}:{l}:{c}", f.rel_path)
    }

    fn choice<T>(&self, v: &Sp<String>, what: &str, names: &[&str], parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        let r = parse(&v.value);
        if r.is_none() {
            let help = match suggest(&v.value, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? allowed: {}", names.join(", ")),
                None => format!("allowed: {}", names.join(", ")),
            };
            self.err(Code::InvalidChoice, &v.loc, format!("`{}` is not a valid {what}", v.value), help);
        }
        r
    }

    fn range(&self, v: &Sp<i64>, what: &str, lo: i64, hi: i64) -> Option<i64> {
        if v.value < lo || v.value > hi {
            self.err(
                Code::OutOfRange,
                &v.loc,
                format!("{what} = {} is out of range", v.value),
                format!("use a value from {lo} to {hi}"),
            );
            None
        } else {
            Some(v.value)
        }
    }

    fn nonempty_str(&self, v: &Option<Sp<String>>, what: &str) -> String {
        match v {
            Some(s) if s.value.trim().is_empty() => {
                self.err(Code::EmptyValue, &s.loc, format!("{what} is empty"), format!("give {what} a value"));
                String::new()
            }
            Some(s) => s.value.clone(),
            None => String::new(),
        }
    }

    fn nonempty_list<'v>(&self, v: &'v Option<Sp<Vec<Sp<String>>>>, what: &str, example: &str) -> &'v [Sp<String>] {
        match v {
            Some(l) if l.value.is_empty() => {
                self.err(
                    Code::EmptyValue,
                    &l.loc,
                    format!("{what} is empty"),
                    format!("list at least one, e.g. {example}"),
                );
                &[]
            }
            Some(l) => &l.value,
            None => &[],
        }
    }

    fn ident(&self, key: &Sp<String>, what: &str) -> Option<Ident> {
        let id = Ident::parse(&key.value);
        if id.is_none() {
            let fixed: String = key
                .value
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .collect();
            self.err(
                Code::BadIdentifier,
                &key.loc,
                format!("`{}` is not a valid {what} key", key.value),
                format!(
                    "keys use lowercase letters, digits, '_' and '-', starting with a letter or digit (e.g. `{fixed}`)"
                ),
            );
        }
        id
    }

    fn domains(&self, list: &[Sp<String>], broad_check: bool, field: &str) -> Vec<DomainPattern> {
        let mut out = Vec::new();
        for d in list {
            match checks::domain_pattern(&d.value) {
                Ok(()) => {
                    if broad_check && checks::is_broad_wildcard(&d.value) {
                        self.sink.push(
                            Diagnostic::at(
                                Code::BroadWildcard,
                                d.loc.clone(),
                                format!("`{}` matches every site under a public suffix", d.value),
                            )
                            .help("name the organisation's domain, e.g. `*.example.com`"),
                        );
                    }
                    out.push(DomainPattern(d.value.clone()));
                }
                Err(why) => self.err(
                    Code::BadDomain,
                    &d.loc,
                    format!("{why} (in {field})"),
                    "write a host name like `api.example.com` or `*.example.com`",
                ),
            }
        }
        out
    }

    fn guest_path(&self, v: &Sp<String>, what: &str) -> Option<GuestPath> {
        let p = GuestPath::parse(&v.value);
        if p.is_none() {
            let help = if v.value.starts_with('~') {
                "`~` is not expanded; write the full path, e.g. `/root/...`".to_string()
            } else {
                "write an absolute path without `.`, `..`, `//` or a trailing `/`, e.g. `/root/.config/tool.json`"
                    .to_string()
            };
            self.err(
                Code::RelativeGuestPath,
                &v.loc,
                format!("{what} `{}` is not an absolute, normalized path", v.value),
                help,
            );
        }
        p
    }

    /// E019 unless `name` is a valid environment variable name; returns whether it is.
    fn env_var(&self, name: &str, loc: &Loc) -> bool {
        let ok = checks::env_var_name(name);
        if !ok {
            self.err(
                Code::BadEnvVar,
                loc,
                format!("`{name}` is not a valid environment variable name"),
                "use letters, digits and '_', not starting with a digit",
            );
        }
        ok
    }

    fn secrets(&self, v: &Sp<String>, what: &str) {
        if let Some(kind) = checks::find_secret(&v.value) {
            self.sink.push(
                Diagnostic::at(Code::SecretLooking, v.loc.clone(), format!("{what} contains what looks like {kind}"))
                    .help("never put secrets in an image definition; supply them at run time (~/.capsem/user.toml)"),
            );
        }
    }

    fn guest_file(&self, f: &RawFile, what: &str) -> Option<GuestFile> {
        let path = f.path.as_ref().and_then(|p| self.guest_path(p, &format!("{what} path")));
        let content = f.content.as_ref()?;
        self.secrets(content, &format!("{what} content"));
        if checks::is_placeholder(&content.value) {
            self.sink.push(
                Diagnostic::at(
                    Code::PlaceholderContent,
                    content.loc.clone(),
                    format!("{what} content is a placeholder (`{}`)", content.value.trim()),
                )
                .help("write the real content, or leave it empty"),
            );
        }
        if let Some(p) = &path {
            let trimmed = content.value.trim();
            if p.as_str().ends_with(".json")
                && !trimmed.is_empty()
                && let Err(e) = serde_json::from_str::<serde_json::Value>(&content.value)
            {
                self.err(
                    Code::InvalidJsonContent,
                    &content.loc,
                    format!("{what} content is not valid JSON: {e}"),
                    "fix the JSON, or change the file's extension",
                );
            }
            if p.as_str().ends_with(".toml")
                && !trimmed.is_empty()
                && let Err(e) = content.value.parse::<toml::Table>()
            {
                let msg = e.message().trim().replace('\n', "; ");
                self.err(
                    Code::InvalidTomlContent,
                    &content.loc,
                    format!("{what} content is not valid TOML: {msg}"),
                    "fix the TOML, or change the file's extension",
                );
            }
        }
        Some(GuestFile { path: path?, content: content.value.clone() })
    }

    fn network(&self, n: &RawNetwork) -> Network {
        let list = self.nonempty_list(&n.domains, "`domains`", "`domains = [\"api.example.com\"]`");
        Network {
            name: n.name.as_ref().map(|s| s.value.clone()),
            domains: self.domains(list, true, "`domains`"),
            allow_get: n.allow_get.as_ref().is_some_and(|b| b.value),
            allow_post: n.allow_post.as_ref().is_some_and(|b| b.value),
        }
    }

    /// Checks an install description shared by providers and package sets.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &self,
        header: &Loc,
        manager: &Option<Sp<String>>,
        install_cmd: Option<&Sp<String>>,
        prefix: &Option<Sp<String>>,
        packages: &Option<Sp<Vec<Sp<String>>>>,
        checksums: &Option<Sp<StrMap>>,
        dev_check: bool,
        table: &str,
    ) -> Option<(Install, Vec<String>)> {
        let manager =
            manager.as_ref().and_then(|m| self.choice(m, "package manager", Manager::NAMES, Manager::parse))?;
        let list = self.nonempty_list(packages, &format!("`packages` in {table}"), "`packages = [\"name\"]`");
        let mut names = Vec::new();
        let sums: BTreeMap<String, String> = checksums
            .as_ref()
            .map(|c| c.value.iter().map(|(k, (_, v))| (k.clone(), v.value.clone())).collect())
            .unwrap_or_default();
        for p in list {
            let spec = match manager {
                Manager::Apt => checks::apt_spec(&p.value),
                Manager::Uv | Manager::Pip => checks::python_spec(&p.value),
                Manager::Npm => checks::npm_spec(&p.value),
                Manager::Curl => checks::url(&p.value)
                    .map(|()| checks::Spec { name: p.value.clone(), pinned: sums.contains_key(&p.value) })
                    .map_err(|e| {
                        self.err(
                            Code::BadUrl,
                            &p.loc,
                            format!("installer {e}"),
                            "curl installers are http(s) URLs of a shell script",
                        );
                        String::new()
                    }),
            };
            match spec {
                Ok(spec) => {
                    if !spec.pinned {
                        let how = match manager {
                            Manager::Apt => "`name=version` (see `apt-cache policy name`)",
                            Manager::Uv | Manager::Pip => "`name==version`",
                            Manager::Npm => "`name@x.y.z`",
                            Manager::Curl => "a sha256 in `checksums = { \"<url>\" = \"<sha256>\" }`",
                        };
                        self.sink.push(
                            Diagnostic::at(
                                Code::UnpinnedPackage,
                                p.loc.clone(),
                                format!("`{}` is not pinned to an exact version", p.value),
                            )
                            .help(format!("pin it as {how} so two builds install the same bytes")),
                        );
                    }
                    if dev_check && (spec.name.ends_with("-dev") || spec.name.ends_with("-devel")) {
                        self.sink.push(
                            Diagnostic::at(Code::DevPackage, p.loc.clone(), format!("`{}` is a development package", spec.name))
                                .help("headers and static libraries grow the image; install them only if agents compile against them"),
                        );
                    }
                    names.push(spec.name);
                }
                Err(why) if !why.is_empty() => {
                    let example = match manager {
                        Manager::Apt => "`git` or `git=1:2.39.5-0+deb12u2`",
                        Manager::Uv | Manager::Pip => "`numpy` or `numpy==2.1.3`",
                        Manager::Npm => "`left-pad` or `@scope/tool@1.2.3`",
                        Manager::Curl => "`https://example.com/install.sh`",
                    };
                    self.err(
                        Code::BadPackageSpec,
                        &p.loc,
                        why,
                        format!("write a plain {} package spec, e.g. {example}", manager.as_str()),
                    );
                }
                Err(_) => {}
            }
        }
        if let Some(c) = checksums {
            if manager != Manager::Curl && !c.value.is_empty() {
                self.err(
                    Code::ConflictingFields,
                    &c.loc,
                    "`checksums` applies only to manager = \"curl\"",
                    "remove `checksums`, or use the curl manager",
                );
            }
            for (url, (kloc, sum)) in &c.value {
                if manager == Manager::Curl && !list.iter().any(|p| &p.value == url) {
                    self.err(
                        Code::BadValue,
                        kloc,
                        format!("checksum for `{url}`, which is not in `packages`"),
                        "the key must be one of the installer URLs",
                    );
                }
                if !checks::sha256_hex(&sum.value) {
                    self.err(
                        Code::BadValue,
                        &sum.loc,
                        format!("`{}` is not a sha256 (64 lowercase hex digits)", sum.value),
                        "compute it with `sha256sum installer.sh`",
                    );
                }
            }
        }
        let prefix_v = match prefix {
            Some(p) if manager != Manager::Npm => {
                self.err(
                    Code::ConflictingFields,
                    &p.loc,
                    "`prefix` applies only to manager = \"npm\"",
                    "remove `prefix`",
                );
                None
            }
            Some(p) => self.guest_path(p, "npm prefix").map(|g| g.0),
            None if manager == Manager::Npm => Some(DEFAULT_NPM_PREFIX.to_string()),
            None => None,
        };
        let install_cmd = match install_cmd {
            Some(c) => {
                if c.value.trim().is_empty() {
                    self.err(
                        Code::EmptyValue,
                        &c.loc,
                        "`install_cmd` is empty",
                        format!("remove it to use the default `{}`", manager.default_install_cmd()),
                    );
                }
                if let Some(ch) = checks::shell_metachar(&c.value) {
                    self.sink.push(
                        Diagnostic::at(
                            Code::ShellMetachar,
                            c.loc.clone(),
                            format!("`install_cmd` contains the shell metacharacter `{}`", ch.escape_default()),
                        )
                        .help("an install command should only install; run other steps from a package or artifact"),
                    );
                }
                c.value.clone()
            }
            None => manager.default_install_cmd().to_string(),
        };
        let _ = header;
        Some((
            Install {
                manager,
                install_cmd,
                prefix: prefix_v,
                packages: list.iter().map(|p| p.value.clone()).collect(),
                checksums: sums,
            },
            names,
        ))
    }
}

/// Runs every semantic check; returns the model (meaningful only when no error was pushed).
pub(super) fn check(dir: &Path, raw: &RawConfig, sources: &SourceMap, sink: &Sink) -> Option<Model> {
    let cx = Cx { dir, sources, sink };
    let build = raw.build.as_ref().map(|b| build(&cx, b));
    let audit = audit::audit(&cx, raw.audit.as_ref());
    let image = image(&cx, raw.image.as_ref());
    let ai = providers(&cx, &raw.ai);
    let packages = package_sets(&cx, &raw.packages);
    let mcp = mcp_servers(&cx, &raw.mcp);
    let web = raw.web.as_ref().map(|w| web(&cx, w)).unwrap_or_default();
    let resources = resources(&cx, raw.resources.as_ref());
    let environment = environment(&cx, raw.environment.as_ref());
    let artifacts = artifacts(&cx);
    npm_registry_rule(&cx, raw, &web);
    npm_conflicts(&cx, raw);
    Some(Model { image, build: build??, audit: audit?, ai, packages, mcp, web, resources, environment, artifacts })
}
