//! The web policy as the proxy and the DNS relay query it: (method, host, path) → allow or deny,
//! with the rule that decided, and which names DNS answers at all.
//!
//! [`Policy::from_web`] compiles a [`WebPolicy`] once (every domain pattern checked; any invalid
//! one is an error naming where it is — the caller must not start egress with a policy it could
//! not read). [`Policy::decide`] is then a handful of hash lookups per request: no I/O, no locks.
//!
//! # Semantics
//!
//! **Hosts.** A host is compared ASCII-case-insensitively, with one trailing dot ignored
//! (`Docs.X.com.` is `docs.x.com`). It must be a DNS name (labels of 1 to 63 characters of
//! `a-z 0-9 - _`, at most 253 in all), an IPv4 address in dotted-quad form, or an IPv6 address
//! (`::1` or `[::1]`). Anything else is *malformed*: an empty host, a port (`x.com:443`), spaces,
//! non-ASCII (send punycode), an empty label (`x..com`, `x.com..`), or a name whose last label is
//! numeric but that is not a dotted quad (`127.1`, `2130706433`, `0x7f.0.0.1` — resolvers read
//! these as addresses).
//!
//! **Patterns.** `x.com` matches exactly `x.com`. `*.x.com` matches every subdomain at any depth
//! (`a.x.com`, `a.b.x.com`) but not `x.com` itself, and never a look-alike (`evilx.com`). An IP
//! literal is matched only by an exact pattern that spells it (`10.0.0.5`), never by a wildcard
//! (`*.0.0.5` does not match `10.0.0.5`); IPv6 literals cannot be spelled by a pattern.
//!
//! **Methods.** Method names are case-sensitive (RFC 9110): `GET HEAD OPTIONS` are *read*,
//! `POST PUT PATCH DELETE` are *write*, everything else (`CONNECT`, `TRACE`, `get`, WebDAV…) is
//! *other* and always denied. A read is what `allow_get` / `allow_read` grant, a write what
//! `allow_post` / `allow_write` grant.
//!
//! **Sources.** A host is *named* by: a `custom_allow` pattern (grants read and write); an
//! **enabled** service, an enabled AI provider's network, or a package set's network (each grants
//! read if `allow_get`, write if `allow_post`). A disabled service names nothing: its hosts are
//! unknown (to keep a host out whatever `allow_read` says, use `custom_block`).
//!
//! **Order** (first step that applies decides; the path is recorded by the caller but never
//! matched — the policy is per host and method class, and it is decided per request):
//!
//! | # | condition                                              | result | `rule`                                              |
//! |---|--------------------------------------------------------|--------|-----------------------------------------------------|
//! | 1 | host is malformed                                      | deny   | `malformed host`                                    |
//! | 2 | a `custom_block` pattern matches (any method)          | deny   | `custom_block *.x.com`                              |
//! | 3 | method is *other*                                      | deny   | `method CONNECT is never allowed`                   |
//! | 4 | some source names the host and grants the class        | allow  | `custom_allow docs.x.com`, `service registry.npm (GET)`, `provider anthropic (POST)`, `package_network apt (GET)` |
//! | 5 | sources name the host, none grants the class           | deny   | `service registry.pypi allows GET only` (first naming source) |
//! | 6 | host is an IP literal no rule names                    | deny   | `default deny (IP literal no rule names)`           |
//! | 7 | unknown host, read, `allow_read = true`                | allow  | `allow_read (unknown domain)`                       |
//! | 8 | unknown host, write, `allow_write = true`              | allow  | `allow_write (unknown domain)`                      |
//! | 9 | unknown host otherwise                                 | deny   | `default deny (unknown domain, allow_read = false)` (+ `; service search.bing is disabled` when one names it) |
//!
//! Consequences worth stating: a block beats every allow, including a more specific
//! `custom_allow` (`*.x.com` blocked ⇒ `docs.x.com` blocked); a host some rule names is never
//! "unknown", so `allow_write = true` does not open POST to a read-only registry; when several
//! sources name a host, any grant allows it, and the rule reported is the first in the order
//! `custom_allow`, services (by group, key), providers, package networks. Step 6 is stricter than
//! "unknown domain": `allow_read`/`allow_write` speak of *domains*, and opening every address to
//! a proxy that runs on the host would reach the host's own loopback and the cloud metadata
//! address.
//!
//! **DNS.** [`Policy::resolvable`] is true exactly when some method could be allowed for the host:
//! `decide("GET", h, _)` or `decide("POST", h, _)` allows. Otherwise the relay answers NXDOMAIN.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::WebPolicy;
use crate::config::values::DomainPattern;

/// The class of an HTTP method, which decides which permission a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// `GET`, `HEAD`, `OPTIONS`: needs `allow_get` / `allow_read`.
    Read,
    /// `POST`, `PUT`, `PATCH`, `DELETE`: needs `allow_post` / `allow_write`.
    Write,
    /// Every other method (`CONNECT`, `TRACE`, lowercase names, extensions): always denied.
    Other,
}

impl MethodClass {
    /// Classifies a method name (case-sensitive, as HTTP method names are).
    pub fn of(method: &str) -> MethodClass {
        match method {
            "GET" | "HEAD" | "OPTIONS" => MethodClass::Read,
            "POST" | "PUT" | "PATCH" | "DELETE" => MethodClass::Write,
            _ => MethodClass::Other,
        }
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `true` when the request may go upstream.
    pub allowed: bool,
    /// The rule that decided, for the session log (see the module docs for every form).
    pub rule: String,
    /// The method's class.
    pub class: MethodClass,
}

/// The web policy could not be compiled. Egress must stay closed until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Invalid domain patterns or ports; each problem names its key in `defaults.json` terms.
    #[error("the web policy is invalid ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// One line per problem, e.g. ``web.services.search.google.domains: `Google.com` is not a
        /// domain pattern: …``.
        problems: Vec<String>,
    },
}

/// Where a rule comes from. The declaration order is the precedence order of reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    CustomBlock,
    CustomAllow,
    Service,
    Provider,
    PackageNetwork,
    /// A disabled service: grants nothing, only explains a default deny.
    DisabledService,
}

#[derive(Debug)]
struct Rule {
    source: Source,
    /// The pattern (custom lists) or `group.key` / key (the others).
    name: String,
    read: bool,
    write: bool,
}

impl Rule {
    fn grants(&self, class: MethodClass) -> bool {
        match class {
            MethodClass::Read => self.read,
            MethodClass::Write => self.write,
            MethodClass::Other => false,
        }
    }

    fn label(&self) -> String {
        let kind = match self.source {
            Source::CustomBlock => "custom_block",
            Source::CustomAllow => "custom_allow",
            Source::Service | Source::DisabledService => "service",
            Source::Provider => "provider",
            Source::PackageNetwork => "package_network",
        };
        format!("{kind} {}", self.name)
    }

    /// The `rule` of a request this rule allowed.
    fn allowed_text(&self, class: MethodClass) -> String {
        match self.source {
            Source::CustomAllow => self.label(),
            _ => format!("{} ({})", self.label(), if class == MethodClass::Read { "GET" } else { "POST" }),
        }
    }

    /// The `rule` of a request to a host this rule names but whose class it does not grant.
    fn refusal_text(&self) -> String {
        let allows = match (self.read, self.write) {
            (true, false) => "allows GET only",
            (false, true) => "allows POST only",
            (false, false) => "allows neither GET nor POST",
            (true, true) => unreachable!("a rule granting both classes never refuses"),
        };
        format!("{} {allows}", self.label())
    }
}

/// A request's host after normalization.
#[derive(Debug, PartialEq, Eq)]
enum Host<'a> {
    /// A DNS name, lowercase, without the trailing dot.
    Name(Cow<'a, str>),
    /// A dotted-quad IPv4 address (matched by exact patterns only).
    V4(Cow<'a, str>),
    /// An IPv6 address (no pattern can spell one).
    V6,
}

impl<'a> Host<'a> {
    /// Normalizes a host; `None` when it is malformed (see the module docs).
    fn parse(raw: &'a str) -> Option<Host<'a>> {
        if let Some(inner) = raw.strip_prefix('[') {
            return inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(|_| Host::V6);
        }
        if raw.contains(':') {
            return raw.parse::<Ipv6Addr>().ok().map(|_| Host::V6);
        }
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return None;
        }
        for label in trimmed.split('.') {
            let ok_chars = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if label.is_empty() || label.len() > 63 || !ok_chars {
                return None;
            }
        }
        let host: Cow<'a, str> = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        };
        let last = host.rsplit('.').next().unwrap_or_default();
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric {
            // Only the canonical dotted quad is an address we accept; other numeric forms are
            // what inet_aton reads as addresses (`127.1`), so they are neither names nor IPs.
            return host.parse::<Ipv4Addr>().is_ok().then_some(Host::V4(host));
        }
        Some(Host::Name(host))
    }
}

/// The compiled web policy. Cheap to query from many threads (`Send + Sync`, immutable).
#[derive(Debug)]
pub struct Policy {
    allow_read: bool,
    allow_write: bool,
    /// Every rule, sorted by [`Source`] (stable within a source).
    rules: Vec<Rule>,
    /// Exact pattern → rule indices.
    exact: HashMap<String, Vec<usize>>,
    /// Suffix of a `*.suffix` pattern → rule indices.
    wildcard: HashMap<String, Vec<usize>>,
    /// Plain-HTTP ports, sorted, deduplicated.
    http_ports: Vec<u16>,
}

/// Collects rules and their patterns while compiling, and every problem found.
#[derive(Default)]
struct Builder {
    rules: Vec<Rule>,
    /// (pattern, rule index).
    patterns: Vec<(DomainPattern, usize)>,
    problems: Vec<String>,
}

impl Builder {
    fn add(&mut self, source: Source, name: String, read: bool, write: bool) -> usize {
        self.rules.push(Rule { source, name, read, write });
        self.rules.len() - 1
    }

    /// Adds a rule for a named entry whose domains are unchecked strings.
    fn add_entry(&mut self, source: Source, name: String, key: String, domains: &[String], read: bool, write: bool) {
        let index = self.add(source, name, read, write);
        for d in domains {
            match DomainPattern::parse(d) {
                Ok(p) => self.patterns.push((p, index)),
                Err(message) => self.problems.push(format!("{key}: {message}")),
            }
        }
    }
}

impl Policy {
    /// Compiles a web policy. Every pattern of every service (enabled or not), provider and
    /// package network is checked; `http_upstream_ports` may not hold 0 or 443 (443 is always
    /// TLS). All problems are returned at once.
    pub fn from_web(web: &WebPolicy) -> Result<Policy, PolicyError> {
        let mut b = Builder::default();
        for p in &web.custom_block {
            let i = b.add(Source::CustomBlock, p.as_str().to_owned(), false, false);
            b.patterns.push((p.clone(), i));
        }
        for p in &web.custom_allow {
            let i = b.add(Source::CustomAllow, p.as_str().to_owned(), true, true);
            b.patterns.push((p.clone(), i));
        }
        for (group, services) in &web.services {
            for (key, s) in services {
                let source = if s.enabled { Source::Service } else { Source::DisabledService };
                let field = format!("web.services.{group}.{key}.domains");
                b.add_entry(source, format!("{group}.{key}"), field, &s.domains, s.allow_get, s.allow_post);
            }
        }
        for (key, n) in &web.providers {
            let field = format!("ai.{key}.network.domains");
            b.add_entry(Source::Provider, key.clone(), field, &n.domains, n.allow_get, n.allow_post);
        }
        for (key, n) in &web.package_networks {
            let field = format!("package_networks.{key}.domains");
            b.add_entry(Source::PackageNetwork, key.clone(), field, &n.domains, n.allow_get, n.allow_post);
        }
        for &port in &web.http_upstream_ports {
            if port == 0 || port == 443 {
                b.problems.push(format!(
                    "web.http_upstream_ports: {port} cannot be a plain-HTTP port (443 is always intercepted as TLS)"
                ));
            }
        }
        if !b.problems.is_empty() {
            return Err(PolicyError::Invalid { problems: b.problems });
        }

        // Order rules by source so that the lowest matching index is the one to report.
        let mut order: Vec<usize> = (0..b.rules.len()).collect();
        order.sort_by_key(|&i| b.rules[i].source);
        let mut new_index = vec![0; b.rules.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut slots: Vec<Option<Rule>> = b.rules.into_iter().map(Some).collect();
        let rules: Vec<Rule> = order.iter().map(|&old| slots[old].take().expect("each rule moved once")).collect();

        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (pattern, old) in b.patterns {
            let (map, key) = match pattern.as_str().strip_prefix("*.") {
                Some(suffix) => (&mut wildcard, suffix),
                None => (&mut exact, pattern.as_str()),
            };
            map.entry(key.to_owned()).or_default().push(new_index[old]);
        }
        for list in exact.values_mut().chain(wildcard.values_mut()) {
            list.sort_unstable();
            list.dedup();
        }

        let mut http_ports = web.http_upstream_ports.clone();
        http_ports.sort_unstable();
        http_ports.dedup();
        Ok(Policy { allow_read: web.allow_read, allow_write: web.allow_write, rules, exact, wildcard, http_ports })
    }

    /// Indices of the rules whose patterns match `host`, ascending (= precedence order).
    fn matching(&self, host: &Host<'_>) -> Vec<usize> {
        let mut hits = Vec::new();
        match host {
            Host::Name(name) => {
                hits.extend(self.exact.get(name.as_ref()).into_iter().flatten());
                // Every proper suffix after a dot: `a.b.x.com` → `b.x.com`, `x.com`, `com`.
                for (i, _) in name.match_indices('.') {
                    hits.extend(self.wildcard.get(&name[i + 1..]).into_iter().flatten());
                }
            }
            Host::V4(addr) => hits.extend(self.exact.get(addr.as_ref()).into_iter().flatten()),
            Host::V6 => {}
        }
        hits.sort_unstable();
        hits.dedup();
        hits
    }

    /// Decides one request. `path` is accepted so that callers pass what they log, but it is
    /// never matched: the policy is per host and method class.
    pub fn decide(&self, method: &str, host: &str, _path: &str) -> Decision {
        let class = MethodClass::of(method);
        let deny = |rule: String| Decision { allowed: false, rule, class };
        let allow = |rule: String| Decision { allowed: true, rule, class };

        let Some(host) = Host::parse(host) else { return deny("malformed host".to_owned()) };
        let hits = self.matching(&host);
        let mut rules = hits.iter().map(|&i| &self.rules[i]);
        if let Some(block) = rules.clone().find(|r| r.source == Source::CustomBlock) {
            return deny(block.label());
        }
        if class == MethodClass::Other {
            return deny(format!("method {} is never allowed", shown_method(method)));
        }
        let mut naming = rules.clone().filter(|r| r.source != Source::DisabledService);
        if let Some(r) = naming.clone().find(|r| r.grants(class)) {
            return allow(r.allowed_text(class));
        }
        if let Some(r) = naming.next() {
            return deny(r.refusal_text());
        }
        if !matches!(host, Host::Name(_)) {
            return deny("default deny (IP literal no rule names)".to_owned());
        }
        let (open, key) = match class {
            MethodClass::Read => (self.allow_read, "allow_read"),
            _ => (self.allow_write, "allow_write"),
        };
        if open {
            return allow(format!("{key} (unknown domain)"));
        }
        let mut rule = format!("default deny (unknown domain, {key} = false");
        if let Some(disabled) = rules.find(|r| r.source == Source::DisabledService) {
            rule.push_str(&format!("; {} is disabled", disabled.label()));
        }
        rule.push(')');
        deny(rule)
    }

    /// Whether DNS should answer for `host`: `false` (NXDOMAIN) when no method could ever be
    /// allowed for it — malformed, blocked, named only by rules granting neither class, an IP
    /// literal no rule names, or unknown with `allow_read = allow_write = false`.
    pub fn resolvable(&self, host: &str) -> bool {
        let Some(host) = Host::parse(host) else { return false };
        let hits = self.matching(&host);
        let rules = || hits.iter().map(|&i| &self.rules[i]);
        if rules().any(|r| r.source == Source::CustomBlock) {
            return false;
        }
        let mut naming = rules().filter(|r| r.source != Source::DisabledService).peekable();
        if naming.peek().is_some() {
            return naming.any(|r| r.read || r.write);
        }
        matches!(host, Host::Name(_)) && (self.allow_read || self.allow_write)
    }

    /// Plain-HTTP guest ports the relay intercepts (443 is always intercepted, as TLS), sorted.
    pub fn http_ports(&self) -> &[u16] {
        &self.http_ports
    }
}

/// A method name as written into a rule: itself when it is a short HTTP token, else quoted and
/// escaped (the guest chooses it; the log must stay one readable line).
fn shown_method(method: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !method.is_empty() && method.len() <= 32 && method.chars().all(token) {
        method.to_owned()
    } else {
        let short: String = method.chars().take(32).collect();
        format!("{short:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::defaults::{Network, Service};

    fn patterns(list: &[&str]) -> Vec<DomainPattern> {
        list.iter().map(|s| DomainPattern::parse(s).unwrap()).collect()
    }

    fn service(name: &str, enabled: bool, domains: &[&str], allow_get: bool, allow_post: bool) -> Service {
        Service {
            name: name.to_owned(),
            enabled,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            allow_get,
            allow_post,
        }
    }

    fn network(domains: &[&str], allow_get: bool, allow_post: bool) -> Network {
        Network { name: None, domains: domains.iter().map(|d| d.to_string()).collect(), allow_get, allow_post }
    }

    /// Modeled on the default image (`security/web.toml`, `ai/*.toml`, `packages/*.toml`) plus
    /// the seeds' corp example, with a few entries added to reach every branch.
    fn web(allow_read: bool, allow_write: bool) -> WebPolicy {
        let mut services: BTreeMap<String, BTreeMap<String, Service>> = BTreeMap::new();
        let mut add = |group: &str, key: &str, s: Service| {
            services.entry(group.to_owned()).or_default().insert(key.to_owned(), s);
        };
        add("search", "google", service("Google", true, &["www.google.com", "google.com"], true, false));
        add("search", "bing", service("Bing", false, &["www.bing.com", "bing.com"], true, false));
        add("registry", "npm", service("npm", true, &["registry.npmjs.org"], true, false));
        add("registry", "pypi", service("PyPI", true, &["pypi.org", "files.pythonhosted.org"], true, false));
        add(
            "repository",
            "github",
            service("GitHub", true, &["github.com", "*.github.com", "*.githubusercontent.com"], true, true),
        );
        add("repository", "gitlab", service("GitLab", false, &["gitlab.com", "*.gitlab.com"], true, true));
        add("telemetry", "sink", service("Sink", true, &["collect.metrics.dev"], false, true));
        add("misc", "inert", service("Inert", true, &["inert.dev"], false, false));
        WebPolicy {
            allow_read,
            allow_write,
            custom_allow: patterns(&["*.0.0.7", "*.elie.net", "*.wikipedia.org", "10.0.0.5", "docs.x.com", "elie.net"]),
            custom_block: patterns(&[
                "*.x.com",
                "api.openai.com",
                "evil.githubusercontent.com",
                "files.pythonhosted.org",
                "tracker.elie.net",
            ]),
            http_upstream_ports: vec![8080, 80, 80],
            services,
            providers: BTreeMap::from([
                ("anthropic".to_owned(), network(&["*.anthropic.com", "*.claude.com"], true, true)),
                ("openai".to_owned(), network(&["*.openai.com"], true, true)),
            ]),
            package_networks: BTreeMap::from([
                ("apt".to_owned(), network(&["deb.debian.org", "security.debian.org"], true, false)),
                ("python".to_owned(), network(&["pypi.org", "files.pythonhosted.org"], true, false)),
            ]),
        }
    }

    /// Which `allow_read` / `allow_write` combination a row runs under.
    #[derive(Debug, Clone, Copy)]
    enum P {
        /// Both false (the default image).
        Closed,
        /// `allow_read = true`.
        Read,
        /// `allow_write = true`.
        Write,
        /// Both true.
        Open,
    }

    fn policy(p: P) -> Policy {
        let (r, w) = match p {
            P::Closed => (false, false),
            P::Read => (true, false),
            P::Write => (false, true),
            P::Open => (true, true),
        };
        Policy::from_web(&web(r, w)).unwrap()
    }

    const ALLOW: bool = true;
    const DENY: bool = false;

    #[rustfmt::skip]
    const CASES: &[(P, &str, &str, &str, bool, &str)] = &[
        // --- custom_allow, wildcards and host normalization ---
        // `*.x` matches a subdomain; custom_allow grants both classes.
        (P::Closed, "GET", "en.wikipedia.org", "/wiki/Rust", ALLOW, "custom_allow *.wikipedia.org"),
        (P::Closed, "POST", "en.wikipedia.org", "/w/api.php", ALLOW, "custom_allow *.wikipedia.org"),
        // `*.x` matches at any depth.
        (P::Closed, "DELETE", "a.b.c.wikipedia.org", "/", ALLOW, "custom_allow *.wikipedia.org"),
        // `*.x` does not match the apex ("subdomains only", web.toml).
        (P::Closed, "GET", "wikipedia.org", "/", DENY, "default deny (unknown domain, allow_read = false)"),
        // Suffix look-alikes are not subdomains.
        (P::Closed, "GET", "evilwikipedia.org", "/", DENY, "default deny"),
        (P::Closed, "GET", "wikipedia.org.evil.com", "/", DENY, "default deny"),
        // Case-insensitive; one trailing dot ignored.
        (P::Closed, "GET", "EN.Wikipedia.ORG", "/", ALLOW, "custom_allow *.wikipedia.org"),
        (P::Closed, "GET", "en.wikipedia.org.", "/", ALLOW, "custom_allow *.wikipedia.org"),
        // Two trailing dots are an empty label.
        (P::Closed, "GET", "en.wikipedia.org..", "/", DENY, "malformed host"),
        // Apex and wildcard listed separately (default image: elie.net, *.elie.net).
        (P::Closed, "GET", "elie.net", "/", ALLOW, "custom_allow elie.net"),
        (P::Closed, "PUT", "www.elie.net", "/", ALLOW, "custom_allow *.elie.net"),
        // custom_block (exact) overrides a custom_allow wildcard.
        (P::Closed, "GET", "tracker.elie.net", "/", DENY, "custom_block tracker.elie.net"),
        // custom_block (wildcard) overrides a more specific custom_allow, for every method.
        (P::Open, "GET", "docs.x.com", "/", DENY, "custom_block *.x.com"),
        (P::Open, "POST", "DOCS.X.COM.", "/", DENY, "custom_block *.x.com"),
        (P::Open, "GET", "a.b.x.com", "/", DENY, "custom_block *.x.com"),
        // A blocked wildcard leaves the apex and look-alikes unknown.
        (P::Closed, "GET", "x.com", "/", DENY, "default deny"),
        (P::Read, "GET", "x.com", "/", ALLOW, "allow_read (unknown domain)"),
        (P::Read, "GET", "evilx.com", "/", ALLOW, "allow_read (unknown domain)"),
        // --- services ---
        // Enabled read-only registry: every read method, no write.
        (P::Closed, "GET", "registry.npmjs.org", "/left-pad", ALLOW, "service registry.npm (GET)"),
        (P::Closed, "HEAD", "registry.npmjs.org", "/", ALLOW, "service registry.npm (GET)"),
        (P::Closed, "OPTIONS", "registry.npmjs.org", "/", ALLOW, "service registry.npm (GET)"),
        (P::Closed, "POST", "registry.npmjs.org", "/", DENY, "service registry.npm allows GET only"),
        // A named host never falls back to allow_write.
        (P::Open, "PUT", "registry.npmjs.org", "/", DENY, "service registry.npm allows GET only"),
        // An exact pattern matches only itself.
        (P::Closed, "GET", "evil.registry.npmjs.org", "/", DENY, "default deny"),
        // Path is recorded, never matched (npm's login path is still a GET to the registry).
        (P::Closed, "GET", "registry.npmjs.org", "/-/user/org.couchdb.user:me", ALLOW, "service registry.npm (GET)"),
        // Search service, GET only.
        (P::Closed, "GET", "www.google.com", "/search?q=x", ALLOW, "service search.google (GET)"),
        (P::Closed, "POST", "google.com", "/", DENY, "service search.google allows GET only"),
        // Disabled service names nothing: default deny says so…
        (P::Closed, "GET", "www.bing.com", "/", DENY, "service search.bing is disabled"),
        // …and allow_read / allow_write apply to its hosts as to any unknown host.
        (P::Read, "GET", "bing.com", "/", ALLOW, "allow_read (unknown domain)"),
        (P::Write, "POST", "a.gitlab.com", "/", ALLOW, "allow_write (unknown domain)"),
        (P::Write, "GET", "gitlab.com", "/", DENY, "service repository.gitlab is disabled"),
        // Service with allow_post (code hosting push).
        (P::Closed, "POST", "github.com", "/x/y.git/git-receive-pack", ALLOW, "service repository.github (POST)"),
        (P::Closed, "PATCH", "api.github.com", "/repos/x/y", ALLOW, "service repository.github (POST)"),
        (P::Closed, "GET", "raw.githubusercontent.com", "/x/y/main/README", ALLOW, "service repository.github (GET)"),
        // custom_block overrides a service wildcard.
        (P::Closed, "GET", "evil.githubusercontent.com", "/", DENY, "custom_block evil.githubusercontent.com"),
        // Wildcard-only service: apex unknown.
        (P::Closed, "GET", "githubusercontent.com", "/", DENY, "default deny"),
        // POST-only and neither-flag services.
        (P::Closed, "POST", "collect.metrics.dev", "/v1", ALLOW, "service telemetry.sink (POST)"),
        (P::Open, "GET", "collect.metrics.dev", "/", DENY, "service telemetry.sink allows POST only"),
        (P::Open, "GET", "inert.dev", "/", DENY, "service misc.inert allows neither GET nor POST"),
        // --- AI providers ---
        (P::Closed, "POST", "api.anthropic.com", "/v1/messages", ALLOW, "provider anthropic (POST)"),
        (P::Closed, "GET", "console.anthropic.com", "/", ALLOW, "provider anthropic (GET)"),
        (P::Closed, "GET", "a.b.claude.com", "/", ALLOW, "provider anthropic (GET)"),
        // Provider wildcards leave the apex unknown.
        (P::Closed, "GET", "anthropic.com", "/", DENY, "default deny"),
        (P::Closed, "POST", "chat.openai.com", "/", ALLOW, "provider openai (POST)"),
        // custom_block overrides a provider.
        (P::Open, "POST", "api.openai.com", "/v1/chat/completions", DENY, "custom_block api.openai.com"),
        // --- package networks ---
        (P::Closed, "GET", "deb.debian.org", "/debian/dists", ALLOW, "package_network apt (GET)"),
        (P::Closed, "POST", "security.debian.org", "/", DENY, "package_network apt allows GET only"),
        // Named by a service and a package network: services are reported first.
        (P::Closed, "GET", "pypi.org", "/simple/numpy/", ALLOW, "service registry.pypi (GET)"),
        (P::Open, "POST", "pypi.org", "/", DENY, "service registry.pypi allows GET only"),
        // custom_block overrides a service and a package network at once.
        (P::Open, "GET", "files.pythonhosted.org", "/", DENY, "custom_block files.pythonhosted.org"),
        // --- unknown domains: allow_read × allow_write ---
        (P::Closed, "GET", "example.com", "/", DENY, "default deny (unknown domain, allow_read = false)"),
        (P::Closed, "POST", "example.com", "/", DENY, "default deny (unknown domain, allow_write = false)"),
        (P::Read, "HEAD", "example.com", "/", ALLOW, "allow_read (unknown domain)"),
        (P::Read, "POST", "example.com", "/", DENY, "allow_write = false"),
        (P::Write, "DELETE", "example.com", "/", ALLOW, "allow_write (unknown domain)"),
        (P::Write, "GET", "example.com", "/", DENY, "allow_read = false"),
        (P::Open, "OPTIONS", "example.com", "/", ALLOW, "allow_read (unknown domain)"),
        (P::Open, "PATCH", "example.com", "/", ALLOW, "allow_write (unknown domain)"),
        // Underscores appear in real names; they are hosts, not malformed.
        (P::Read, "GET", "my_bucket.s3.example.com", "/", ALLOW, "allow_read (unknown domain)"),
        // --- other methods: always denied ---
        (P::Open, "CONNECT", "registry.npmjs.org", "/", DENY, "method CONNECT is never allowed"),
        (P::Open, "TRACE", "en.wikipedia.org", "/", DENY, "method TRACE is never allowed"),
        (P::Open, "PROPFIND", "example.com", "/", DENY, "method PROPFIND is never allowed"),
        // Methods are case-sensitive.
        (P::Open, "get", "registry.npmjs.org", "/", DENY, "method get is never allowed"),
        // A guest-chosen method is escaped in the log.
        (P::Open, "G\nET", "example.com", "/", DENY, "method \"G\\nET\" is never allowed"),
        // custom_block is reported before the method.
        (P::Open, "CONNECT", "docs.x.com", "/", DENY, "custom_block *.x.com"),
        // --- IP literals ---
        // An exact pattern may name an IPv4 address.
        (P::Closed, "GET", "10.0.0.5", "/", ALLOW, "custom_allow 10.0.0.5"),
        // A wildcard never matches an IP literal (`*.0.0.7` vs 10.0.0.7).
        (P::Closed, "GET", "10.0.0.7", "/", DENY, "default deny (IP literal no rule names)"),
        // Unnamed IP literals stay closed even when unknown domains are open.
        (P::Open, "GET", "127.0.0.1", "/", DENY, "IP literal"),
        (P::Open, "GET", "169.254.169.254", "/latest/meta-data", DENY, "IP literal"),
        (P::Open, "GET", "[::1]", "/", DENY, "IP literal"),
        (P::Open, "POST", "::ffff:127.0.0.1", "/", DENY, "IP literal"),
        // Non-canonical numeric forms (read as addresses by resolvers) are malformed.
        (P::Open, "GET", "127.1", "/", DENY, "malformed host"),
        (P::Open, "GET", "2130706433", "/", DENY, "malformed host"),
        (P::Open, "GET", "0x7f.0.0.1", "/", DENY, "malformed host"),
        (P::Open, "GET", "1.2.3.0x4", "/", DENY, "malformed host"),
        // --- malformed hosts ---
        (P::Open, "GET", "", "/", DENY, "malformed host"),
        (P::Open, "GET", ".", "/", DENY, "malformed host"),
        (P::Open, "GET", "example.com:443", "/", DENY, "malformed host"),
        (P::Open, "GET", "exa mple.com", "/", DENY, "malformed host"),
        (P::Open, "GET", "bücher.de", "/", DENY, "malformed host"),
        (P::Open, "GET", "[::1", "/", DENY, "malformed host"),
    ];

    #[test]
    fn decision_table() {
        let policies = [P::Closed, P::Read, P::Write, P::Open].map(|p| (format!("{p:?}"), policy(p)));
        let mut failures = Vec::new();
        for &(p, method, host, path, allowed, rule) in CASES {
            let policy = &policies.iter().find(|(name, _)| *name == format!("{p:?}")).unwrap().1;
            let d = policy.decide(method, host, path);
            if d.allowed != allowed || !d.rule.contains(rule) || d.class != MethodClass::of(method) {
                failures.push(format!(
                    "{p:?} {method} {host}{path}: got allowed={} rule={:?}, want allowed={allowed} rule ⊇ {rule:?}",
                    d.allowed, d.rule
                ));
            }
        }
        assert!(CASES.len() >= 40);
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    }

    #[test]
    fn method_classes() {
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(MethodClass::of(m), MethodClass::Read);
        }
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            assert_eq!(MethodClass::of(m), MethodClass::Write);
        }
        for m in ["CONNECT", "TRACE", "get", "", "PROPFIND"] {
            assert_eq!(MethodClass::of(m), MethodClass::Other);
        }
    }

    #[test]
    fn resolvable_names() {
        let closed = policy(P::Closed);
        let open = policy(P::Open);
        #[rustfmt::skip]
        let cases: &[(&Policy, &str, bool)] = &[
            (&closed, "registry.npmjs.org", true),        // read-only service: GET can pass
            (&closed, "collect.metrics.dev", true),       // POST-only service
            (&closed, "api.anthropic.com", true),         // provider
            (&closed, "Deb.Debian.Org.", true),           // package network, normalized
            (&closed, "en.wikipedia.org", true),          // custom_allow wildcard
            (&closed, "10.0.0.5", true),                  // IP named exactly
            (&closed, "example.com", false),              // unknown, both flags false
            (&open, "example.com", true),                 // unknown, allow_read/allow_write
            (&closed, "www.bing.com", false),             // disabled service names nothing
            (&open, "www.bing.com", true),
            (&open, "docs.x.com", false),                 // blocked despite custom_allow
            (&open, "api.openai.com", false),             // blocked despite provider
            (&open, "files.pythonhosted.org", false),     // blocked despite service + package net
            (&open, "inert.dev", false),                  // named, grants neither class
            (&open, "127.0.0.1", false),                  // unnamed IP literal
            (&open, "127.1", false),                      // malformed
            (&open, "", false),
        ];
        for &(p, host, want) in cases {
            assert_eq!(p.resolvable(host), want, "resolvable({host:?})");
        }
    }

    /// `resolvable` is exactly "some method could be allowed", for every host the table uses.
    #[test]
    fn resolvable_agrees_with_decide() {
        for p in [P::Closed, P::Read, P::Write, P::Open] {
            let policy = policy(p);
            for &(_, _, host, _, _, _) in CASES {
                let any = policy.decide("GET", host, "/").allowed || policy.decide("POST", host, "/").allowed;
                assert_eq!(policy.resolvable(host), any, "{p:?} {host:?}");
            }
        }
    }

    #[test]
    fn invalid_patterns_and_ports_are_all_reported() {
        let mut w = web(false, false);
        w.services.get_mut("search").unwrap().get_mut("bing").unwrap().domains.push("Bing.com".into());
        w.providers.get_mut("openai").unwrap().domains.push("https://api.openai.com".into());
        w.package_networks.get_mut("python").unwrap().domains.push("a.*.org".into());
        w.http_upstream_ports.push(443);
        let Err(PolicyError::Invalid { problems }) = Policy::from_web(&w) else { panic!("accepted bad patterns") };
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("web.services.search.bing.domains: `Bing.com`"), "{}", problems[0]);
        assert!(problems[1].starts_with("ai.openai.network.domains: `https://api.openai.com`"), "{}", problems[1]);
        assert!(problems[2].starts_with("package_networks.python.domains: `a.*.org`"), "{}", problems[2]);
        assert!(problems[3].contains("443"), "{}", problems[3]);
        let shown = PolicyError::Invalid { problems }.to_string();
        assert!(shown.starts_with("the web policy is invalid (4 problem(s)):\n  web.services"), "{shown}");
    }

    #[test]
    fn http_ports_are_sorted_and_deduplicated() {
        assert_eq!(policy(P::Closed).http_ports(), &[80, 8080]);
    }

    #[test]
    fn empty_policy_denies_everything() {
        let w = WebPolicy {
            allow_read: false,
            allow_write: false,
            custom_allow: Vec::new(),
            custom_block: Vec::new(),
            http_upstream_ports: Vec::new(),
            services: BTreeMap::new(),
            providers: BTreeMap::new(),
            package_networks: BTreeMap::new(),
        };
        let p = Policy::from_web(&w).unwrap();
        assert_eq!(p.decide("GET", "example.com", "/").rule, "default deny (unknown domain, allow_read = false)");
        assert!(!p.resolvable("example.com"));
        assert!(p.http_ports().is_empty());
    }

    #[test]
    fn policy_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
        assert_send_sync::<Decision>();
    }
}
