//! Package URLs (purl) for the three package managers a rootfs BOM knows: `deb`, `pypi`, `npm`.
//!
//! Built per the purl specification (package-url/purl-spec, "Character encoding"): every
//! component is UTF-8 and percent-encoded except the alphanumerics, `.-_~`, and the colon `:`,
//! which the specification says MUST NOT be encoded "whether used as a Separator Character or
//! otherwise" — so a Debian epoch stays `1:2.3-4` while `+` becomes `%2B`. This is the canonical
//! form the reference implementation (packageurl-python) prints; `builder/tests/sbom.rs` checks
//! our purls round-trip through it unchanged.

/// Percent-encodes one purl component (name, namespace segment, version, qualifier value).
pub fn encode(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for &b in component.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/<name>@<version>?arch=<arch>`.
pub fn deb(name: &str, version: &str, arch: &str) -> String {
    format!("pkg:deb/debian/{}@{}?arch={}", encode(name), encode(version), encode(arch))
}

/// `pkg:pypi/<name>@<version>`, the name normalized per PEP 503 (lowercase, every run of `-`,
/// `_` and `.` one `-`), which is how PyPI itself names a project.
pub fn pypi(name: &str, version: &str) -> String {
    format!("pkg:pypi/{}@{}", encode(&pep503(name)), encode(version))
}

/// `pkg:npm/<name>@<version>` or, for a scoped name `@scope/name`, `pkg:npm/%40scope/name@…`.
/// The purl npm type lowercases the name (the scope is kept as spelled).
pub fn npm(name: &str, version: &str) -> String {
    let (scope, bare) = split_npm(name);
    let bare = encode(&bare.to_lowercase());
    match scope {
        Some(scope) => format!("pkg:npm/{}/{bare}@{}", encode(scope), encode(version)),
        None => format!("pkg:npm/{bare}@{}", encode(version)),
    }
}

/// `@scope/name` → (`Some("@scope")`, `"name"`); `name` → (`None`, `"name"`).
pub fn split_npm(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((scope, bare)) if scope.starts_with('@') => (Some(scope), bare),
        _ => (None, name),
    }
}

/// PEP 503 normalized project name.
pub fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_keeps_the_epoch_colon_and_encodes_plus() {
        assert_eq!(
            deb("libstdc++6", "1:12.2.0-14+deb12u1", "amd64"),
            "pkg:deb/debian/libstdc%2B%2B6@1:12.2.0-14%2Bdeb12u1?arch=amd64"
        );
        assert_eq!(deb("vim", "2:9.0.1378-2~bpo", "all"), "pkg:deb/debian/vim@2:9.0.1378-2~bpo?arch=all");
    }

    #[test]
    fn pypi_normalizes_the_name_only() {
        assert_eq!(pypi("Zope.Interface__x", "6.0+local.1"), "pkg:pypi/zope-interface-x@6.0%2Blocal.1");
        assert_eq!(pep503("PyYAML"), "pyyaml");
        assert_eq!(pep503("a-_.b"), "a-b");
    }

    #[test]
    fn npm_scopes_are_an_encoded_namespace() {
        assert_eq!(npm("@Anthropic-AI/Claude-Code", "1.0.0"), "pkg:npm/%40Anthropic-AI/claude-code@1.0.0");
        assert_eq!(npm("semver", "7.6.3"), "pkg:npm/semver@7.6.3");
        assert_eq!(npm("x", "1.0.0-rc.1+build 5"), "pkg:npm/x@1.0.0-rc.1%2Bbuild%205");
        assert_eq!(encode("é/?#@&="), "%C3%A9%2F%3F%23%40%26%3D");
    }
}
