//! Layering: the image's `defaults.json` < user config < per-run overrides < corp config.
//!
//! [`Effective::resolve`] produces the settings a VM boots with. Corp wins over everything and
//! *locks* what it sets: a user value it overrides is dropped with a note, and a per-run override
//! (`--cpus`, `--memory`) of a locked value is an error naming corp.toml. Every resource value,
//! from any layer, must lie in the image's range (defaults.json `vm.resources.<key>.{min,max}`);
//! an error names the file:line:col (or flag) that set it. Lists: `custom_block` is the union of
//! all layers (a block is never lifted); `custom_allow` is image ∪ user, or exactly corp's list
//! when corp sets one. Trusted keys are corp's when corp.toml has `[trust]`, else the user's.
//! All problems are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use super::defaults::{Defaults, Network, Ranged, Service};
use super::diag::{Code, ConfigError, Diagnostic, Location, suggest};
use super::file::{Config, Layer, Setting, TrustedKeySource};
use super::values::DomainPattern;

/// Per-run overrides from the command line. They beat the user config, never the corp config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOverrides {
    /// `--cpus`.
    pub cpus: Option<u8>,
    /// `--memory`, in MiB (see [`super::parse_memory`]).
    pub memory_mib: Option<u32>,
}

/// A file written into the guest at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Absolute guest path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub content: Vec<u8>,
}

/// The layered egress policy (consumed by the egress proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPolicy {
    /// GET/HEAD/OPTIONS to domains no rule names.
    pub allow_read: bool,
    /// POST/PUT/PATCH/DELETE to domains no rule names.
    pub allow_write: bool,
    /// Extra allowed patterns, sorted.
    pub custom_allow: Vec<DomainPattern>,
    /// Blocked patterns (override every allow), sorted.
    pub custom_block: Vec<DomainPattern>,
    /// Plain-HTTP ports intercepted (443 always is, as TLS).
    pub http_upstream_ports: Vec<u16>,
    /// The image's named services, by group and key.
    pub services: BTreeMap<String, BTreeMap<String, Service>>,
    /// Network needs of the enabled AI providers, by provider key.
    pub providers: BTreeMap<String, Network>,
    /// Network needs of the image's package sets, by set key.
    pub package_networks: BTreeMap<String, Network>,
}

/// The settings a VM boots with.
#[derive(Clone)]
pub struct Effective {
    /// Image name.
    pub image_name: String,
    /// Image version.
    pub image_version: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Every other integer resource (`scratch_disk_size_gb`, `retention_days`, …), layered.
    pub resources: BTreeMap<String, i64>,
    /// Record request/response bodies in the session log.
    pub log_bodies: bool,
    /// Guest hostname.
    pub hostname: String,
    /// Guest environment: image vars, then user, then corp vars, then API keys.
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values are secrets (API keys): never log their values.
    pub secret_env: BTreeSet<String>,
    /// Files written at boot: the image's, then those of enabled AI providers.
    pub files: Vec<BootFile>,
    /// CA bundle the proxy CA is appended to.
    pub tls_ca_bundle: String,
    /// Egress policy.
    pub web: WebPolicy,
    /// `[web] upstream_ca_file` (corp's over the user's): extra CAs the proxy trusts upstream.
    pub upstream_ca_file: Option<PathBuf>,
    /// Keys trusted to sign releases (empty when neither file has `[trust]`).
    pub trusted_keys: Vec<TrustedKeySource>,
    /// Which file the trusted keys came from.
    pub trust_layer: Option<Layer>,
    /// Things the user should know that are not errors (values overridden by corp, ignored
    /// keys), one line each.
    pub notes: Vec<String>,
}

impl fmt::Debug for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), if self.secret_env.contains(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("Effective")
            .field("image_name", &self.image_name)
            .field("image_version", &self.image_version)
            .field("cpus", &self.cpus)
            .field("memory_mib", &self.memory_mib)
            .field("resources", &self.resources)
            .field("log_bodies", &self.log_bodies)
            .field("hostname", &self.hostname)
            .field("env", &env)
            .field("files", &self.files.iter().map(|b| &b.path).collect::<Vec<_>>())
            .field("tls_ca_bundle", &self.tls_ca_bundle)
            .field("web", &self.web)
            .field("upstream_ca_file", &self.upstream_ca_file)
            .field("trusted_keys", &self.trusted_keys)
            .field("trust_layer", &self.trust_layer)
            .field("notes", &self.notes)
            .finish()
    }
}

/// The winner among user and corp for one setting, with a note when corp overrides the user.
fn pick<'a, T: PartialEq + fmt::Debug>(
    key: &str,
    user: Option<&'a Setting<T>>,
    corp: Option<&'a Setting<T>>,
    notes: &mut Vec<String>,
) -> Option<&'a Setting<T>> {
    if let (Some(u), Some(c)) = (user, corp)
        && u.value != c.value
    {
        notes.push(format!("{}: {key} is ignored: {} sets it (corp config locks it)", u.origin, c.origin));
    }
    corp.or(user)
}

fn range_text(r: Ranged) -> String {
    format!("{}..={}", r.min, r.max)
}

struct Resolver<'a> {
    defaults: &'a Defaults,
    user: Option<&'a Config>,
    corp: Option<&'a Config>,
    diags: Vec<Diagnostic>,
    notes: Vec<String>,
}

impl Effective {
    /// Layers the image's `defaults.json`, the user and corp configs and per-run overrides.
    /// Returns every problem found (`ConfigError::Invalid`), or `ConfigError::Defaults` when
    /// `defaults.json` itself is unusable.
    pub fn resolve(
        defaults_json: &[u8],
        user: Option<&Config>,
        corp: Option<&Config>,
        run: &RunOverrides,
    ) -> Result<Effective, ConfigError> {
        let defaults = Defaults::parse(defaults_json)?;
        let mut r = Resolver { defaults: &defaults, user, corp, diags: Vec::new(), notes: Vec::new() };
        let (resources, log_bodies) = r.resources();
        let cpus = r.cpus(&resources, run);
        let memory_mib = r.memory(&resources, run);
        let hostname = r.hostname();
        let (env, secret_env, files, providers) = r.env_and_files();
        let web = r.web(providers)?;
        let upstream_ca_file = pick(
            "web.upstream_ca_file",
            user.and_then(|u| u.web.upstream_ca_file.as_ref()),
            corp.and_then(|c| c.web.upstream_ca_file.as_ref()),
            &mut r.notes,
        )
        .map(|s| s.value.clone());
        let (trusted_keys, trust_layer) = r.trust();
        ConfigError::check(r.diags)?;
        let (Some(cpus), Some(memory_mib)) = (cpus, memory_mib) else {
            unreachable!("a missing cpus/memory value always comes with a diagnostic")
        };
        Ok(Effective {
            image_name: defaults.image.name.clone(),
            image_version: defaults.image.version.clone(),
            cpus,
            memory_mib,
            resources: resources.into_iter().filter(|(k, _)| k != "cpu_count" && k != "ram_gb").collect(),
            log_bodies,
            hostname,
            env,
            secret_env,
            files,
            tls_ca_bundle: defaults.vm.environment.tls_ca_bundle.clone(),
            web,
            upstream_ca_file,
            trusted_keys,
            trust_layer,
            notes: r.notes,
        })
    }
}

impl<'a> Resolver<'a> {
    /// The config files given, user first.
    fn configs(&self) -> Vec<&'a Config> {
        self.user.into_iter().chain(self.corp).collect()
    }

    /// Integer resources and `log_bodies`, each file value checked against the image's range.
    fn resources(&mut self) -> (BTreeMap<String, i64>, bool) {
        let mut out = BTreeMap::new();
        for (name, range) in &self.defaults.vm.resources {
            let mut value = range.value;
            for c in self.configs() {
                if let Some(s) = c.resources.get(name) {
                    if s.value < range.min || s.value > range.max {
                        self.diags.push(
                            Diagnostic::new(
                                Code::OutOfRange,
                                s.origin.location(),
                                format!(
                                    "resources.{name} = {} is outside {} (the image's range)",
                                    s.value,
                                    range_text(*range)
                                ),
                            )
                            .help(format!(
                                "set by the {}; image {} {} allows {}, default {}",
                                c.layer,
                                self.defaults.image.name,
                                self.defaults.image.version,
                                range_text(*range),
                                range.value
                            )),
                        );
                    }
                    value = s.value;
                }
            }
            let user = self.user.and_then(|u| u.resources.get(name));
            let corp = self.corp.and_then(|c| c.resources.get(name));
            pick(&format!("resources.{name}"), user, corp, &mut self.notes);
            out.insert(name.clone(), value);
        }
        for c in self.configs() {
            for (name, s) in &c.resources {
                if !self.defaults.vm.resources.contains_key(name) {
                    self.notes
                        .push(format!("{}: resources.{name} is ignored: the image has no such resource", s.origin));
                }
            }
        }
        let user = self.user.and_then(|u| u.log_bodies.as_ref());
        let corp = self.corp.and_then(|c| c.log_bodies.as_ref());
        let log_bodies =
            pick("resources.log_bodies", user, corp, &mut self.notes).map_or(self.defaults.vm.log_bodies, |s| s.value);
        (out, log_bodies)
    }

    /// A per-run override: refused when corp sets the resource, checked against the range.
    fn run_override(&mut self, flag: &'static str, name: &str, shown: String, value: i64, per_unit: i64) -> bool {
        if let Some(locked) = self.corp.and_then(|c| c.resources.get(name))
            && locked.value * per_unit != value
        {
            self.diags.push(
                Diagnostic::new(
                    Code::LockedByCorp,
                    Location::Flag(flag),
                    format!(
                        "{flag} {shown} is not allowed: resources.{name} is locked to {} by the corp config at {}",
                        locked.value, locked.origin
                    ),
                )
                .help(format!("drop {flag}; {} sets this value for every run", locked.origin.file.display())),
            );
            return false;
        }
        let range = self.defaults.vm.resources[name];
        let (min, max) = (range.min * per_unit, range.max * per_unit);
        if value < min || value > max {
            let unit = if per_unit == 1 { "" } else { " MiB" };
            self.diags.push(Diagnostic::new(
                Code::OutOfRange,
                Location::Flag(flag),
                format!("{flag} {shown} is outside {min}..={max}{unit} (the image's range)"),
            ));
            return false;
        }
        true
    }

    fn cpus(&mut self, resources: &BTreeMap<String, i64>, run: &RunOverrides) -> Option<u8> {
        let value = match run.cpus {
            Some(n) => {
                if !self.run_override("--cpus", "cpu_count", n.to_string(), i64::from(n), 1) {
                    return None;
                }
                i64::from(n)
            }
            None => resources["cpu_count"],
        };
        match u8::try_from(value) {
            Ok(v) => Some(v),
            Err(_) => {
                let loc = self.corp.or(self.user).map_or(Location::Flag("--cpus"), |c| Location::File(c.path.clone()));
                self.diags.push(Diagnostic::new(
                    Code::OutOfRange,
                    loc,
                    format!("cpu_count {value} does not fit 0..=255"),
                ));
                None
            }
        }
    }

    fn memory(&mut self, resources: &BTreeMap<String, i64>, run: &RunOverrides) -> Option<u32> {
        let value = match run.memory_mib {
            Some(m) => {
                if !self.run_override("--memory", "ram_gb", format!("{m} MiB"), i64::from(m), 1024) {
                    return None;
                }
                i64::from(m)
            }
            None => resources["ram_gb"] * 1024,
        };
        match u32::try_from(value) {
            Ok(v) => Some(v),
            Err(_) => {
                let loc =
                    self.corp.or(self.user).map_or(Location::Flag("--memory"), |c| Location::File(c.path.clone()));
                self.diags.push(Diagnostic::new(Code::OutOfRange, loc, format!("memory {value} MiB is too large")));
                None
            }
        }
    }

    fn hostname(&mut self) -> String {
        let user = self.user.and_then(|u| u.hostname.as_ref());
        let corp = self.corp.and_then(|c| c.hostname.as_ref());
        pick("environment.hostname", user, corp, &mut self.notes)
            .map_or_else(|| self.defaults.vm.environment.hostname.clone(), |s| s.value.as_str().to_owned())
    }

    /// Environment, secret variable names, boot files, and the enabled providers' networks.
    #[allow(clippy::type_complexity)]
    fn env_and_files(
        &mut self,
    ) -> (BTreeMap<String, String>, BTreeSet<String>, Vec<BootFile>, BTreeMap<String, Network>) {
        let d = self.defaults;
        let mut env = d.vm.environment.vars.clone();
        // User vars, then corp vars: corp wins per name.
        let mut names = BTreeSet::new();
        for c in self.configs() {
            names.extend(c.vars.keys().cloned());
        }
        for name in names {
            let user = self.user.and_then(|u| u.vars.get(&name));
            let corp = self.corp.and_then(|c| c.vars.get(&name));
            if let Some(s) = pick(&format!("environment.vars.{}", name.as_str()), user, corp, &mut self.notes) {
                env.insert(name.as_str().to_owned(), s.value.clone());
            }
        }

        let mut files: Vec<BootFile> = d.vm.environment.files.iter().map(boot_file).collect();
        let mut secret_env = BTreeSet::new();
        let mut networks = BTreeMap::new();

        // Provider keys named in either file must exist in the image.
        for c in self.configs() {
            for (key, p) in &c.ai {
                if !d.ai.contains_key(key) {
                    let mut diag = Diagnostic::new(
                        Code::UnknownName,
                        p.origin.location(),
                        format!("[ai.{key}]: the image has no AI provider `{key}`"),
                    );
                    let known: Vec<&str> = d.ai.keys().map(String::as_str).collect();
                    diag = diag.help(match suggest(key, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? providers: {}", known.join(", ")),
                        None => format!("providers: {}", known.join(", ")),
                    });
                    self.diags.push(diag);
                }
            }
        }

        for (key, provider) in &d.ai {
            let user = self.user.and_then(|u| u.ai.get(key));
            let corp = self.corp.and_then(|c| c.ai.get(key));
            let enabled = pick(
                &format!("ai.{key}.enabled"),
                user.and_then(|p| p.enabled.as_ref()),
                corp.and_then(|p| p.enabled.as_ref()),
                &mut self.notes,
            )
            .map_or(provider.enabled, |s| s.value);
            // The note `pick` writes names the files, never the values.
            let api_key = pick(
                &format!("ai.{key}.api_key"),
                user.and_then(|p| p.api_key.as_ref()),
                corp.and_then(|p| p.api_key.as_ref()),
                &mut self.notes,
            );
            if !enabled {
                if let Some(k) = api_key {
                    self.notes.push(format!("{}: ai.{key}.api_key is not used: the provider is disabled", k.origin));
                }
                continue;
            }
            if let Some(n) = &provider.network {
                networks.insert(key.clone(), n.clone());
            }
            files.extend(provider.files.values().map(boot_file));
            let Some(k) = api_key else { continue };
            let Some(meta) = &provider.api_key else {
                self.diags.push(Diagnostic::new(
                    Code::UnknownName,
                    k.origin.location(),
                    format!("ai.{key}.api_key: the image's provider `{key}` takes no API key"),
                ));
                continue;
            };
            if !meta.prefix.is_empty() && !k.value.expose().starts_with(&meta.prefix) {
                self.notes.push(format!(
                    "{}: ai.{key}.api_key does not start with `{}`, as {} keys usually do",
                    k.origin, meta.prefix, meta.name
                ));
            }
            for var in &meta.env_vars {
                if let Some(old) = env.get(var)
                    && old != k.value.expose()
                {
                    self.notes.push(format!("{}: ai.{key}.api_key replaces environment variable {var}", k.origin));
                }
                env.insert(var.clone(), k.value.expose().to_owned());
                secret_env.insert(var.clone());
            }
        }
        (env, secret_env, files, networks)
    }

    fn web(&mut self, providers: BTreeMap<String, Network>) -> Result<WebPolicy, ConfigError> {
        let w = &self.defaults.web;
        let parse_defaults = |list: &[String], key: &str| -> Result<Vec<DomainPattern>, ConfigError> {
            list.iter()
                .map(|s| {
                    DomainPattern::parse(s).map_err(|m| ConfigError::Defaults { message: format!("web.{key}: {m}") })
                })
                .collect()
        };
        let user = self.user.map(|u| &u.web);
        let corp = self.corp.map(|c| &c.web);
        let allow_read = pick(
            "web.allow_read",
            user.and_then(|u| u.allow_read.as_ref()),
            corp.and_then(|c| c.allow_read.as_ref()),
            &mut self.notes,
        )
        .map_or(w.allow_read, |s| s.value);
        let allow_write = pick(
            "web.allow_write",
            user.and_then(|u| u.allow_write.as_ref()),
            corp.and_then(|c| c.allow_write.as_ref()),
            &mut self.notes,
        )
        .map_or(w.allow_write, |s| s.value);

        let mut custom_allow = match corp.and_then(|c| c.custom_allow.as_ref()) {
            Some(c) => {
                if let Some(u) = user.and_then(|u| u.custom_allow.as_ref()) {
                    self.notes.push(format!(
                        "{}: web.custom_allow is ignored: {} sets the list (corp config locks it)",
                        u.origin, c.origin
                    ));
                }
                c.value.clone()
            }
            None => {
                let mut l = parse_defaults(&w.custom_allow, "custom_allow")?;
                l.extend(user.and_then(|u| u.custom_allow.as_ref()).into_iter().flat_map(|u| u.value.iter().cloned()));
                l
            }
        };
        let mut custom_block = parse_defaults(&w.custom_block, "custom_block")?;
        for layer in [user, corp].into_iter().flatten() {
            custom_block.extend(layer.custom_block.iter().flat_map(|s| s.value.iter().cloned()));
        }
        for l in [&mut custom_allow, &mut custom_block] {
            l.sort();
            l.dedup();
        }
        Ok(WebPolicy {
            allow_read,
            allow_write,
            custom_allow,
            custom_block,
            http_upstream_ports: w.http_upstream_ports.clone(),
            services: w.services.clone(),
            providers,
            package_networks: self.defaults.package_networks.clone(),
        })
    }

    fn trust(&mut self) -> (Vec<TrustedKeySource>, Option<Layer>) {
        match (self.user.and_then(|u| u.trust.as_ref()), self.corp.and_then(|c| c.trust.as_ref())) {
            (user, Some(corp)) => {
                if let Some(u) = user {
                    self.notes.push(format!(
                        "{}: the user's [trust] keys are ignored: {} sets [trust], and only its keys are trusted",
                        u.origin, corp.origin
                    ));
                }
                (corp.value.clone(), Some(Layer::Corp))
            }
            (Some(user), None) => (user.value.clone(), Some(Layer::User)),
            (None, None) => (Vec::new(), None),
        }
    }
}

fn boot_file(f: &super::defaults::GuestFile) -> BootFile {
    BootFile { path: f.path.clone(), mode: f.mode, content: f.content.clone().into_bytes() }
}

/// Loads both config files (missing ones are `None`), reporting the problems of both at once.
pub fn load_configs(paths: &super::Paths) -> Result<(Option<Config>, Option<Config>), ConfigError> {
    let user = Config::load(&paths.user_file, Layer::User);
    let corp = Config::load(&paths.corp_file, Layer::Corp);
    match (user, corp) {
        (Ok(u), Ok(c)) => Ok((u, c)),
        (Err(ConfigError::Invalid { diagnostics: mut a }), Err(ConfigError::Invalid { diagnostics: b })) => {
            a.extend(b);
            ConfigError::check(a).map(|()| (None, None))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}
