//! Validated value types of the configuration: each can only be built by a check.
//!
//! [`Hostname`], [`DomainPattern`], [`EnvName`] and [`Secret`] (an API key, whose `Debug` never
//! shows it). The checks return a message that says what was expected, for diagnostics.

use std::fmt;

/// A guest hostname: one DNS label, lowercase letters, digits and `-`, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

impl Hostname {
    /// Checks a hostname.
    pub fn parse(s: &str) -> Result<Hostname, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Hostname(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a valid hostname: expected 1 to 63 characters of a-z, 0-9 and '-', not starting or \
                 ending with '-'"
            ))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A domain pattern of the web policy: a hostname, or `*.` + hostname (subdomains only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainPattern(String);

impl DomainPattern {
    /// Checks a domain pattern (the same rules as the builder's `security/web.toml`).
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let bad = |why: &str| Err(format!("`{s}` is not a domain pattern: {why}"));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.contains("://") || s.contains('/') || s.contains(':') {
            return bad("write only the host name (no scheme, path or port)");
        }
        if s == "*" {
            return bad("use web.allow_read / web.allow_write for unknown domains");
        }
        let host = s.strip_prefix("*.").unwrap_or(s);
        if host.contains('*') {
            return bad("only a whole first label may be a wildcard (`*.example.com`)");
        }
        if host.len() > 253 {
            return bad("longer than 253 characters");
        }
        for label in host.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("every label must have 1 to 63 characters");
            }
            if !label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return bad("expected lowercase a-z, 0-9, '-' and '.' (punycode for IDNs)");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label starts or ends with '-'");
            }
        }
        Ok(DomainPattern(s.to_owned()))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `*.suffix` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    /// Checks a variable name.
    pub fn parse(s: &str) -> Result<EnvName, String> {
        let mut chars = s.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(EnvName(s.to_owned()))
        } else {
            Err(format!("`{s}` is not an environment variable name: expected [A-Za-z_][A-Za-z0-9_]*"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks an environment variable value (no NUL byte: the guest's `execve` cannot carry one).
pub fn check_env_value(name: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') { Err(format!("the value of `{name}` contains a NUL character")) } else { Ok(()) }
}

/// A secret (a personal API key). `Debug` and `Display` print `<redacted>`; only
/// [`Secret::expose`] gives the text, for injecting it into the guest environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Checks an API key value: non-empty, printable ASCII without spaces (it becomes an
    /// environment variable value and an HTTP header).
    pub fn parse(s: &str) -> Result<Secret, String> {
        if s.is_empty() {
            return Err("the API key is empty".into());
        }
        if !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err("the API key contains spaces, control or non-ASCII characters: expected the key alone, \
                        printable ASCII"
                .into());
        }
        Ok(Secret(s.to_owned()))
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_accept_good_and_reject_bad_values() {
        assert!(Hostname::parse("capsem-1").is_ok());
        for bad in ["", "Capsem", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["example.com", "*.example.com", "localhost"] {
            assert!(DomainPattern::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "*", "https://x.com", "x.com:443", "a.*.com", "Ex.com", "a..b", "-a.com"] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EnvName::parse("_A1").is_ok());
        for bad in ["", "1A", "A-B", "A B"] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(check_env_value("A", "x\0y").is_err());
        assert!(Secret::parse("sk-ant-123").is_ok());
        for bad in ["", "sk ant", "sk\n"] {
            assert!(Secret::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::parse("sk-ant-supersecret").unwrap();
        assert!(!format!("{s:?} {s} {:?}", Some(&s)).contains("supersecret"));
        assert_eq!(s.expose(), "sk-ant-supersecret");
    }
}
