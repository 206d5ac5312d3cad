//! Semantic checks: `RawConfig` → `Model`, one function per file kind, then cross-file rules.
//!
//! Each function reports every problem it finds and still returns its best value, so later
//! checks can run; the caller discards the model when any error was reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::checks;
use crate::diag::{Code, Diagnostic, suggest};
use crate::model::*;
use crate::raw::{Sink, Sp};
use crate::rawconfig::*;
use crate::source::{Loc, SourceMap};

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
    Some(Model { image, build: build??, ai, packages, mcp, web, resources, environment, artifacts })
}

fn build(cx: &Cx<'_>, b: &RawBuild) -> Option<Build> {
    let compression = b
        .compression
        .as_ref()
        .map_or(Some(Compression::Zstd), |c| cx.choice(c, "compression", Compression::NAMES, Compression::parse));
    let mut level = compression.and_then(Compression::default_level);
    if let (Some(comp), Some(l)) = (compression, &b.compression_level) {
        match comp.level_range() {
            Some((lo, hi)) => level = cx.range(l, "compression_level", lo, hi).map(|v| v as u32),
            None => cx.err(
                Code::ConflictingFields,
                &l.loc,
                "lz4 takes no compression_level",
                "remove `compression_level`, or pick zstd/xz/gzip/lzo",
            ),
        }
    }
    let sde = b
        .source_date_epoch
        .as_ref()
        .and_then(|s| cx.range(s, "source_date_epoch", 0, 253_402_300_799))
        .map(|v| v as u64);
    let extra_ca = b.extra_ca.as_ref().and_then(|ca| {
        if ca.value.starts_with('/') || ca.value.split('/').any(|c| c == "..") {
            cx.err(
                Code::BadValue,
                &ca.loc,
                format!("extra_ca `{}` must be a path inside the image directory", ca.value),
                "put the certificate next to config/, e.g. `certs/corp-ca.crt`",
            );
            return None;
        }
        let path = cx.dir.join(&ca.value);
        match std::fs::read_to_string(&path) {
            Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => Some(ca.value.clone()),
            Ok(_) => {
                cx.err(
                    Code::BadValue,
                    &ca.loc,
                    format!("extra_ca `{}` is not a PEM certificate", ca.value),
                    "it must contain a `-----BEGIN CERTIFICATE-----` block",
                );
                None
            }
            Err(e) => {
                cx.err(
                    Code::ArtifactMissing,
                    &ca.loc,
                    format!("extra_ca `{}` cannot be read: {e}", ca.value),
                    "check the path (relative to the image directory)",
                );
                None
            }
        }
    });
    let mut architectures = BTreeMap::new();
    if let Some(archs) = &b.architectures {
        if archs.value.is_empty() {
            cx.err(
                Code::EmptyValue,
                &archs.loc,
                "no architectures declared",
                "add a `[build.architectures.x86_64]` table",
            );
        }
        for (name, a) in &archs.value {
            let Some(arch) = cx.choice(name, "architecture", Arch::NAMES, Arch::parse) else { continue };
            if let Some(cfg) = arch_config(cx, arch, a) {
                architectures.insert(arch, cfg);
            }
        }
    }
    Some(Build {
        compression: compression?,
        compression_level: level,
        source_date_epoch: sde,
        extra_ca,
        keep_extra_ca: b.keep_extra_ca.as_ref().is_some_and(|k| k.value),
        architectures,
    })
}

const VARIANTS: &[&str] =
    &["extract", "custom", "essential", "apt", "minbase", "buildd", "required", "important", "standard"];
const KNOWN_TARGETS: &[(&str, Arch)] = &[
    ("x86_64-unknown-linux-gnu", Arch::X86_64),
    ("x86_64-unknown-linux-musl", Arch::X86_64),
    ("aarch64-unknown-linux-gnu", Arch::Arm64),
    ("aarch64-unknown-linux-musl", Arch::Arm64),
];

fn arch_config(cx: &Cx<'_>, arch: Arch, a: &RawArch) -> Option<ArchConfig> {
    let base = match (&a.base_image, &a.bootstrap) {
        (Some(img), Some(bs)) => {
            cx.err(
                Code::ConflictingFields,
                &bs.header,
                "both `base_image` and `[bootstrap]` are set",
                format!("keep one: `base_image` at {}, or the bootstrap", cx.where_(&img.loc)),
            );
            None
        }
        (None, None) => {
            cx.err(
                Code::MissingField,
                &a.header,
                format!("[build.architectures.{arch}] needs `base_image` or a `[build.architectures.{arch}.bootstrap]` table"),
                "use `base_image = \"debian@sha256:<digest>\"`, or a bootstrap with suite and mirror (works without a registry)",
            );
            None
        }
        (Some(img), None) => {
            let pinned =
                img.value.split_once("@sha256:").is_some_and(|(name, d)| !name.is_empty() && checks::sha256_hex(d));
            if pinned {
                Some(BaseImage::Registry { reference: img.value.clone() })
            } else {
                cx.err(
                    Code::Unpinned,
                    &img.loc,
                    format!("base_image `{}` is not pinned by digest", img.value),
                    "write `name@sha256:<64 hex>` (see `docker inspect --format '{{.RepoDigests}}'`), or use a [bootstrap] table",
                );
                None
            }
        }
        (None, Some(bs)) => {
            let variant = bs.variant.as_ref().map_or(Some("minbase".to_string()), |v| {
                cx.choice(v, "mmdebstrap variant", VARIANTS, |s| VARIANTS.contains(&s).then(|| s.to_string()))
            });
            if let Some(m) = &bs.mirror
                && let Err(e) = checks::url(&m.value)
            {
                cx.err(Code::BadUrl, &m.loc, format!("mirror {e}"), "e.g. `http://deb.debian.org/debian`");
            }
            let suite = cx.nonempty_str(&bs.suite, "`suite`");
            if !suite.is_empty() && !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                cx.err(
                    Code::BadValue,
                    &bs.suite.as_ref()?.loc,
                    format!("suite `{suite}` is not a Debian suite name"),
                    "e.g. `bookworm`",
                );
            }
            let components = match &bs.components {
                Some(c) => {
                    let l = cx.nonempty_list(&bs.components, "`components`", "`components = [\"main\"]`");
                    for comp in l {
                        if !comp.value.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-') || comp.value.is_empty() {
                            cx.err(
                                Code::BadValue,
                                &comp.loc,
                                format!("`{}` is not an archive component", comp.value),
                                "e.g. `main`, `contrib`",
                            );
                        }
                    }
                    let _ = c;
                    l.iter().map(|s| s.value.clone()).collect()
                }
                None => vec!["main".to_string()],
            };
            Some(BaseImage::Bootstrap {
                suite,
                mirror: bs.mirror.as_ref()?.value.clone(),
                variant: variant?,
                components,
            })
        }
    };
    if let Some(p) = &a.docker_platform
        && p.value != arch.platform()
    {
        cx.err(
            Code::BadValue,
            &p.loc,
            format!("docker_platform `{}` does not match architecture {arch}", p.value),
            format!("use `{}`", arch.platform()),
        );
    }
    if let Some(t) = &a.rust_target {
        match KNOWN_TARGETS.iter().find(|(name, _)| *name == t.value) {
            Some((_, target_arch)) if *target_arch != arch => cx.err(
                Code::BadValue,
                &t.loc,
                format!("rust_target `{}` is for another architecture than {arch}", t.value),
                "use the target triple of this architecture",
            ),
            Some(_) => {}
            None => cx.sink.push(
                Diagnostic::at(
                    Code::NonStaticTarget,
                    t.loc.clone(),
                    format!("rust_target `{}` is not a known Linux target for guest binaries", t.value),
                )
                .help(format!("known: {}", KNOWN_TARGETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))),
            ),
        }
    }
    if let Some(k) = &a.kernel_branch {
        if matches!(k.value.as_str(), "auto" | "latest" | "stable" | "longterm") {
            cx.err(
                Code::Unpinned,
                &k.loc,
                format!("kernel_branch `{}` floats with kernel.org releases", k.value),
                "pin a branch like `6.1`; the exact source is pinned in kernel/",
            );
        } else if !checks::kernel_branch(&k.value) {
            cx.err(Code::BadValue, &k.loc, format!("kernel_branch `{}` is not `X.Y`", k.value), "e.g. `6.1`");
        }
    }
    if let Some(k) = &a.kernel_image
        && (k.value.is_empty() || k.value.starts_with('/') || k.value.split('/').any(|c| c == ".."))
    {
        cx.err(
            Code::BadValue,
            &k.loc,
            format!("kernel_image `{}` must be a path inside the kernel tree", k.value),
            "e.g. `arch/x86/boot/bzImage`",
        );
    }
    if let Some(d) = &a.defconfig {
        if d.value.starts_with('/') || d.value.split('/').any(|c| c == ".." || c.is_empty()) {
            cx.err(
                Code::BadValue,
                &d.loc,
                format!("defconfig `{}` must be a relative path inside config/", d.value),
                format!("e.g. `kernel/defconfig.{arch}`"),
            );
        } else if !cx.dir.join("config").join(&d.value).is_file() {
            cx.err(
                Code::DefconfigMissing,
                &d.loc,
                format!("defconfig for {arch} not found: config/{}", d.value),
                format!("add config/{} (a kernel config fragment), or remove the {arch} architecture", d.value),
            );
        }
    }
    let node_major = a.node_major.as_ref().and_then(|n| cx.range(n, "node_major", 1, 99)).map(|v| v as u32);
    Some(ArchConfig {
        base: base?,
        docker_platform: a.docker_platform.as_ref()?.value.clone(),
        rust_target: a.rust_target.as_ref()?.value.clone(),
        kernel_branch: a.kernel_branch.as_ref()?.value.clone(),
        kernel_image: a.kernel_image.as_ref()?.value.clone(),
        defconfig: a.defconfig.as_ref()?.value.clone(),
        node_major,
    })
}

fn image(cx: &Cx<'_>, i: Option<&RawImage>) -> ImageMeta {
    let Some(i) = i else {
        let name = cx
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".into());
        return ImageMeta { name, version: "0.0.0".into(), description: String::new(), changelog: Vec::new() };
    };
    let name = cx.nonempty_str(&i.name, "`name`");
    if let Some(v) = &i.version
        && !checks::semver(&v.value)
    {
        cx.err(
            Code::BadValue,
            &v.loc,
            format!("version `{}` is not a semantic version", v.value),
            "write MAJOR.MINOR.PATCH, e.g. `0.1.0`",
        );
    }
    let changelog = i
        .changelog
        .iter()
        .map(|c| {
            if let Some(d) = &c.date
                && !checks::iso_date(&d.value)
            {
                cx.err(Code::BadValue, &d.loc, format!("date `{}` is not YYYY-MM-DD", d.value), "e.g. `2026-11-22`");
            }
            if let Some(v) = &c.version
                && !checks::semver(&v.value)
            {
                cx.err(
                    Code::BadValue,
                    &v.loc,
                    format!("version `{}` is not a semantic version", v.value),
                    "write MAJOR.MINOR.PATCH",
                );
            }
            ChangelogEntry {
                version: c.version.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                date: c.date.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
                changes: c
                    .changes
                    .as_ref()
                    .map(|l| l.value.iter().map(|s| s.value.clone()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    ImageMeta {
        name,
        version: i.version.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        description: i.description.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        changelog,
    }
}

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

fn providers(cx: &Cx<'_>, raw: &[RawProvider]) -> BTreeMap<Ident, Provider> {
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
                if !checks::env_var_name(&v.value) {
                    cx.err(Code::BadEnvVar, &v.loc, format!("`{}` is not a valid environment variable name", v.value), "use letters, digits and '_', not starting with a digit");
                } else if let Some((other, first)) = env_seen.get(&v.value) {
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

fn package_sets(cx: &Cx<'_>, raw: &[RawPackageSet]) -> BTreeMap<Ident, PackageSet> {
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

fn mcp_servers(cx: &Cx<'_>, raw: &[RawMcp]) -> BTreeMap<Ident, McpServer> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for m in raw {
        let id = cx.ident(&m.key, "MCP server");
        if !first_definition(cx, &mut seen, &m.key, "MCP server") {
            continue;
        }
        for (_, (kloc, v)) in m.env.iter().flat_map(|e| e.value.iter()) {
            cx.secrets(v, &format!("env of MCP server `{}`", m.key.value));
            let _ = kloc;
        }
        for (k, (kloc, _)) in m.env.iter().flat_map(|e| e.value.iter()) {
            if !checks::env_var_name(k) {
                cx.err(
                    Code::BadEnvVar,
                    kloc,
                    format!("`{k}` is not a valid environment variable name"),
                    "use letters, digits and '_', not starting with a digit",
                );
            }
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

fn web(cx: &Cx<'_>, w: &RawWeb) -> WebPolicy {
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

fn resources(cx: &Cx<'_>, r: Option<&RawResources>) -> Resources {
    let mut values = BTreeMap::new();
    for (name, default, lo, hi) in RESOURCE_FIELDS {
        let v = r.and_then(|r| r.ints.get(name)).and_then(|v| cx.range(v, name, *lo, *hi)).unwrap_or(*default);
        values.insert((*name).to_string(), v);
    }
    Resources { values, log_bodies: r.and_then(|r| r.log_bodies.as_ref()).is_some_and(|b| b.value) }
}

const DEFAULT_PATH: &str =
    "/opt/ai-clis/bin:/root/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn environment(cx: &Cx<'_>, e: Option<&RawEnvironment>) -> Environment {
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
            if !checks::env_var_name(k) {
                cx.err(
                    Code::BadEnvVar,
                    kloc,
                    format!("`{k}` is not a valid environment variable name"),
                    "use letters, digits and '_', not starting with a digit",
                );
            } else if matches!(k.as_str(), "PATH" | "HOME" | "TERM" | "LANG") {
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

fn artifacts(cx: &Cx<'_>) -> Artifacts {
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

/// W001: npm packages are installed but web.toml names no npm registry.
fn npm_registry_rule(cx: &Cx<'_>, raw: &RawConfig, web: &WebPolicy) {
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
fn npm_conflicts(cx: &Cx<'_>, raw: &RawConfig) {
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
