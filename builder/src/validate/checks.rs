//! Pure value checks used by validation: domain patterns, package specs, URLs, secrets,
//! environment variable names. Each returns `Err(reason)` with a message fit for a diagnostic.

/// Checks a domain pattern (`host` or `*.host`); returns the reason when invalid.
pub fn domain_pattern(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("domain is empty".into());
    }
    if s.contains("://") {
        return Err(format!("`{s}` has a URL scheme; write only the host name"));
    }
    if s.contains('/') {
        return Err(format!("`{s}` has a path; write only the host name"));
    }
    if s.contains(':') {
        return Err(format!("`{s}` has a port; ports are not part of domain patterns"));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!("`{s}` contains whitespace"));
    }
    if s == "*" {
        return Err("`*` is not a domain pattern; use allow_read/allow_write for unknown domains".into());
    }
    let host = s.strip_prefix("*.").unwrap_or(s);
    if host.contains('*') {
        return Err(format!(
            "`{s}` has a wildcard that is not the whole first label (only `*.example.com` is supported)"
        ));
    }
    if host.len() > 253 {
        return Err(format!("`{s}` is longer than 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!("`{s}` has an empty label (two dots in a row, or a leading/trailing dot)"));
        }
        if label.len() > 63 {
            return Err(format!("`{s}` has a label longer than 63 characters"));
        }
        if label.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("`{s}` has uppercase letters; write domains in lowercase"));
        }
        if !label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(format!("`{s}` has characters other than a-z, 0-9, '-' and '.' (use punycode for IDNs)"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{s}` has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Public suffixes a wildcard must not cover whole (a short list of the common ones).
const MULTI_LABEL_SUFFIXES: &[&str] = &[
    "co.uk",
    "org.uk",
    "ac.uk",
    "gov.uk",
    "com.au",
    "net.au",
    "org.au",
    "co.jp",
    "ne.jp",
    "or.jp",
    "co.nz",
    "com.br",
    "com.cn",
    "co.in",
    "co.kr",
    "com.mx",
    "co.za",
    "github.io",
    "herokuapp.com",
    "appspot.com",
    "cloudfront.net",
    "amazonaws.com",
    "azurewebsites.net",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "blogspot.com",
];

/// True when a wildcard pattern covers a whole public suffix (`*.com`, `*.co.uk`, `*.github.io`).
pub fn is_broad_wildcard(s: &str) -> bool {
    match s.strip_prefix("*.") {
        Some(suffix) => !suffix.contains('.') || MULTI_LABEL_SUFFIXES.contains(&suffix),
        None => false,
    }
}

/// True when `host_or_pattern` is matched by `pattern` (same semantics as the proxy: `*.x`
/// matches strict subdomains of `x`, not `x` itself).
pub fn pattern_covers(pattern: &str, other: &str) -> bool {
    if pattern == other {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let other_host = other.strip_prefix("*.").unwrap_or(other);
            other_host.ends_with(&format!(".{suffix}"))
        }
        None => false,
    }
}

/// Checks an http(s) URL; returns the reason when invalid.
pub fn url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'`\\<>".contains(c)) {
        return Err(format!("`{s}` contains whitespace, quotes or control characters"));
    }
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = if host.starts_with('[') { host } else { host.split(':').next().unwrap_or("") };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(())
}

/// Valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Hostname: one RFC 1123 label.
pub fn hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// 64 lowercase hex digits.
pub fn sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Outcome of checking a package spec.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    /// The package name (without version), for version_commands and W002.
    pub name: String,
    /// Whether the version is pinned exactly.
    pub pinned: bool,
}

fn all_in(s: &str, extra: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// Debian package: `name`, `name=version`, `name:arch=version`.
pub fn apt_spec(s: &str) -> Result<Spec, String> {
    let (name_arch, version) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let name = name_arch.split_once(':').map_or(name_arch, |(n, _)| n);
    let name_ok = all_in(name, "+.-")
        && name.len() >= 2
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.chars().any(|c| c.is_ascii_uppercase());
    if !name_ok {
        return Err(format!("`{s}` is not a Debian package name (lowercase letters, digits, '+', '-', '.')"));
    }
    if let Some(arch) = name_arch.split_once(':').map(|(_, a)| a)
        && !all_in(arch, "-")
    {
        return Err(format!("`{s}` has an invalid architecture qualifier"));
    }
    if let Some(v) = version {
        if let Some(rest) = v.strip_prefix('=') {
            return Err(format!("`{s}` uses `==`; apt pins use a single `=`: `{name_arch}={rest}`"));
        }
        if !all_in(v, ".+~:-") {
            return Err(format!("`{s}` has an invalid version (allowed: letters, digits, '.', '+', '~', ':', '-')"));
        }
    }
    Ok(Spec { name: name.to_string(), pinned: version.is_some() })
}

/// PyPI requirement without markers: `name`, `name[extra]==1.2.3`, `name>=1,<2`.
pub fn python_spec(s: &str) -> Result<Spec, String> {
    let name_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).unwrap_or(s.len());
    let name = &s[..name_end];
    if name.is_empty() || !name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("`{s}` does not start with a Python package name"));
    }
    let mut rest = &s[name_end..];
    if let Some(r) = rest.strip_prefix('[') {
        let Some((extras, after)) = r.split_once(']') else {
            return Err(format!("`{s}` has an unclosed `[extras]`"));
        };
        if !extras.split(',').all(|e| all_in(e.trim(), "._-")) {
            return Err(format!("`{s}` has invalid extras"));
        }
        rest = after;
    }
    if !rest.is_empty() && !all_in(rest, ".*+!<>=~,-") {
        return Err(format!(
            "`{s}` has an invalid version specifier (environment markers, URLs and spaces are not supported)"
        ));
    }
    let pinned = rest.starts_with("==") && !rest.contains(',') && !rest.contains('*');
    Ok(Spec { name: name.to_ascii_lowercase().replace('_', "-"), pinned })
}

/// npm spec: `name`, `@scope/name`, with optional `@version`.
pub fn npm_spec(s: &str) -> Result<Spec, String> {
    let (scope, rest) = match s.strip_prefix('@') {
        Some(r) => match r.split_once('/') {
            Some((scope, rest)) => (Some(scope), rest),
            None => return Err(format!("`{s}` starts with '@' but has no `/name` after the scope")),
        },
        None => (None, s),
    };
    let (name, version) = match rest.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (rest, None),
    };
    let ok_part =
        |p: &str| all_in(p, "._~-") && !p.chars().any(|c| c.is_ascii_uppercase()) && !p.starts_with(['.', '-', '_']);
    if !ok_part(name) || scope.is_some_and(|sc| !ok_part(sc)) {
        return Err(format!("`{s}` is not an npm package name (lowercase letters, digits, '.', '_', '~', '-')"));
    }
    if let Some(v) = version
        && !all_in(v, ".+^~<>=|-")
    {
        return Err(format!("`{s}` has an invalid version or tag"));
    }
    let exact = version.is_some_and(|v| {
        let core = v.split(['-', '+']).next().unwrap_or("");
        let parts: Vec<&str> = core.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    });
    let full = match scope {
        Some(sc) => format!("@{sc}/{name}"),
        None => name.to_string(),
    };
    Ok(Spec { name: full, pinned: exact })
}

/// Characters that make an install command do more than install.
pub fn shell_metachar(cmd: &str) -> Option<char> {
    cmd.chars().find(|c| ";|&`$()<>\n".contains(*c))
}

/// Known secret shapes: (prefix, minimum length of the token body after it, description).
const SECRET_SHAPES: &[(&str, usize, &str)] = &[
    ("sk-ant-", 10, "an Anthropic API key"),
    ("AIza", 30, "a Google API key"),
    ("ghp_", 20, "a GitHub token"),
    ("github_pat_", 20, "a GitHub token"),
    ("glpat-", 10, "a GitLab token"),
    ("xoxb-", 10, "a Slack token"),
    ("xoxp-", 10, "a Slack token"),
    ("AKIA", 16, "an AWS access key id"),
    ("sk-", 20, "an API key"),
    ("Bearer ", 20, "a bearer token"),
];

/// Finds a secret-looking token; returns what it looks like.
pub fn find_secret(s: &str) -> Option<&'static str> {
    for (prefix, min, what) in SECRET_SHAPES {
        let mut from = 0;
        while let Some(i) = s[from..].find(prefix) {
            let start = from + i;
            let body: String = s[start + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c))
                .collect();
            let boundary_ok = start == 0 || !s[..start].ends_with(|c: char| c.is_ascii_alphanumeric());
            if boundary_ok && body.len() >= *min && body.chars().any(|c| c.is_ascii_digit()) {
                return Some(what);
            }
            from = start + prefix.len();
        }
    }
    None
}

/// Content that is only a placeholder (W006).
pub fn is_placeholder(s: &str) -> bool {
    matches!(s.trim().to_ascii_uppercase().as_str(), "TODO" | "FIXME" | "CHANGEME" | "REPLACE_ME" | "XXX" | "TBD")
}

/// `X.Y` kernel branch.
pub fn kernel_branch(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// `YYYY-MM-DD` with plausible month/day.
pub fn iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    matches!((num(0..4), num(5..7), num(8..10)), (Some(_), Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d))
}

/// Semantic version `MAJOR.MINOR.PATCH[-pre][+build]`.
pub fn semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Advisory id prefixes `[audit] allow` accepts, with the shape of each.
pub const ADVISORY_FORMS: &[(&str, &str)] = &[
    ("CVE", "CVE-2024-2398"),
    ("GHSA", "GHSA-xxxx-xxxx-xxxx"),
    ("DSA", "DSA-5678-1"),
    ("DLA", "DLA-3456-1"),
    ("TEMP", "TEMP-0000000-1A2B3C"),
    ("PYSEC", "PYSEC-2021-123"),
    ("GO", "GO-2022-0123"),
];

/// An advisory id as scanners write it: `CVE-YYYY-NNNN+`, `GHSA-xxxx-xxxx-xxxx` (lowercase
/// letters and digits), `DSA-N[-N]`, `DLA-N[-N]`, `TEMP-NNNNNNN-HEX`, `PYSEC-YYYY-N+`,
/// `GO-YYYY-NNNN+`. Returns the reason when it is not one.
pub fn advisory_id(s: &str) -> Result<(), String> {
    let digits = |p: &str, min: usize| p.len() >= min && p.len() <= 16 && p.bytes().all(|b| b.is_ascii_digit());
    let year = |p: &str| p.len() == 4 && digits(p, 4) && p.starts_with(['1', '2']);
    let parts: Vec<&str> = s.split('-').collect();
    let ok = match parts.as_slice() {
        ["CVE", y, n] => year(y) && digits(n, 4),
        ["GHSA", a, b, c] => {
            [a, b, c].iter().all(|g| g.len() == 4 && g.bytes().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit()))
        }
        ["DSA" | "DLA", n] => digits(n, 1),
        ["DSA" | "DLA", n, r] => digits(n, 1) && digits(r, 1),
        ["TEMP", n, h] => digits(n, 1) && !h.is_empty() && h.len() <= 16 && h.bytes().all(|b| b.is_ascii_hexdigit()),
        ["PYSEC", y, n] => year(y) && digits(n, 1),
        ["GO", y, n] => year(y) && digits(n, 4),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let shown = s.escape_debug();
    match advisory_form(s) {
        Some((p, _)) if !s.starts_with(p) => {
            Err(format!("`{shown}` is not an advisory id: write the prefix in capitals"))
        }
        Some((p, _)) => Err(format!("`{shown}` is not a well-formed {p} id")),
        None => Err(format!("`{shown}` is not an advisory id of a known kind")),
    }
}

/// The (prefix, example) of [`ADVISORY_FORMS`] whose prefix `s` starts with, in any case.
pub fn advisory_form(s: &str) -> Option<(&'static str, &'static str)> {
    let upper = s.to_ascii_uppercase();
    let prefix = upper.split('-').next().unwrap_or("");
    ADVISORY_FORMS.iter().find(|(p, _)| *p == prefix).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in ["pypi.org", "*.npmjs.org", "localhost", "a-b.c0m", "10.0.0.1"] {
            assert_eq!(domain_pattern(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("https://x.com", "scheme"),
            ("x.com/path", "path"),
            ("x.com:443", "port"),
            ("*", "allow_read"),
            ("a.*.com", "wildcard"),
            ("*x.com", "wildcard"),
            ("a..com", "empty label"),
            ("X.com", "lowercase"),
            ("-a.com", "'-'"),
            ("a_b.com", "characters"),
        ] {
            let e = domain_pattern(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn wildcards() {
        assert!(is_broad_wildcard("*.com"));
        assert!(is_broad_wildcard("*.co.uk"));
        assert!(is_broad_wildcard("*.github.io"));
        assert!(!is_broad_wildcard("*.github.com"));
        assert!(!is_broad_wildcard("github.com"));
        assert!(pattern_covers("*.x.com", "a.x.com"));
        assert!(pattern_covers("*.x.com", "*.a.x.com"));
        assert!(!pattern_covers("*.x.com", "x.com"));
        assert!(!pattern_covers("*.x.com", "ax.com"));
    }

    #[test]
    fn package_specs() {
        assert_eq!(apt_spec("git=1:2.39.5-0+deb12u2").unwrap(), Spec { name: "git".into(), pinned: true });
        assert!(!apt_spec("git").unwrap().pinned);
        assert!(apt_spec("git; rm -rf /").is_err());
        assert!(apt_spec("Git").is_err());
        assert_eq!(python_spec("NumPy==1.26.4").unwrap(), Spec { name: "numpy".into(), pinned: true });
        assert!(!python_spec("numpy>=1").unwrap().pinned);
        assert!(python_spec("requests[socks]==2.32.3").unwrap().pinned);
        assert!(python_spec("x; python_version<'3'").is_err());
        assert!(python_spec("'x'").is_err());
        assert_eq!(
            npm_spec("@google/gemini-cli@0.1.5").unwrap(),
            Spec { name: "@google/gemini-cli".into(), pinned: true }
        );
        assert!(!npm_spec("@google/gemini-cli@latest").unwrap().pinned);
        assert!(!npm_spec("left-pad").unwrap().pinned);
        assert!(npm_spec("@scope").is_err());
        assert!(npm_spec("a b").is_err());
        assert!(npm_spec("-g").is_err());
        assert!(npm_spec("@-x/y").is_err());
    }

    #[test]
    fn secrets_and_misc() {
        assert_eq!(find_secret("key: sk-ant-api03-abcdef123456"), Some("an Anthropic API key"));
        assert_eq!(find_secret("ghp_0123456789abcdefghijKLMN"), Some("a GitHub token"));
        assert_eq!(find_secret("prefix = sk-ant-"), None);
        assert_eq!(find_secret("task-abcdefghijklmnopqrstuvwxyz123"), None);
        assert_eq!(find_secret("plain words"), None);
        assert!(env_var_name("ANTHROPIC_API_KEY"));
        assert!(!env_var_name("1X"));
        assert!(!env_var_name("A-B"));
        assert!(url("https://claude.ai/install.sh").is_ok());
        assert!(url("ftp://x").is_err());
        assert!(url("https:///x").is_err());
        assert!(kernel_branch("6.1") && !kernel_branch("auto") && !kernel_branch("6.1.2"));
        assert!(iso_date("2026-11-22") && !iso_date("2026-13-01") && !iso_date("22/11/2026"));
        assert!(semver("0.1.0") && semver("1.2.3-rc.1") && !semver("1.2"));
        assert_eq!(shell_metachar("uv pip install; curl x"), Some(';'));
        assert!(is_placeholder(" todo "));
    }

    #[test]
    fn advisory_ids() {
        for ok in [
            "CVE-2024-2398",
            "CVE-2021-44228",
            "CVE-2024-123456",
            "GHSA-jfh8-c2jp-5v3q",
            "DSA-5678-1",
            "DLA-3456-1",
            "DSA-5678",
            "TEMP-0000000-1A2B3C",
            "PYSEC-2021-123",
            "GO-2022-0123",
        ] {
            assert_eq!(advisory_id(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("CVE-2024-12", "well-formed CVE"),
            ("CVE-24-2398", "well-formed CVE"),
            ("cve-2024-2398", "capitals"),
            ("CVE-2024-2398 ", "well-formed"),
            ("GHSA-JFH8-C2JP-5V3Q", "well-formed GHSA"),
            ("GHSA-jfh8-c2jp", "GHSA"),
            ("DSA-x-1", "DSA"),
            ("TEMP-0000000-XYZ", "TEMP"),
            ("GO-2022-12", "GO"),
            ("", "known kind"),
            ("RHSA-2024:1234", "known kind"),
            ("CVE-2024-2398\n", "CVE"),
        ] {
            let e = advisory_id(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(advisory_form("ghsa-x"), Some(("GHSA", "GHSA-xxxx-xxxx-xxxx")));
        assert_eq!(advisory_form("RHSA-2024:1"), None);
    }
}
