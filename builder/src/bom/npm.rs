//! npm packages: every `…/node_modules/<name>/package.json` and
//! `…/node_modules/@scope/<name>/package.json`, at any depth (nested dependencies included).
//!
//! The name and version come from the JSON, not from the directory (an alias installed as
//! `node_modules/foo` may be package `bar`). Names starting with `.` are npm's own bookkeeping
//! (`.bin`, `.package-lock.json`, pnpm's `.pnpm`, whose real packages sit in `node_modules`
//! directories further down and are found there). Symlinks are not followed.

/// Where a path sits relative to `node_modules`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hit<'p> {
    /// The `package.json` of the package at `location`.
    Manifest { location: &'p str },
    /// The package directory itself (`…/node_modules/<name>` or `…/node_modules/@scope/<name>`).
    PackageDir,
}

fn is_name(c: &str) -> bool {
    !c.is_empty() && !c.starts_with('.') && !c.starts_with('@')
}

fn is_scope(c: &str) -> bool {
    c.len() > 1 && c.starts_with('@')
}

/// Whether `comps` ends at a package directory: `node_modules/<name>` or `node_modules/@scope/<name>`.
fn ends_at_package(comps: &[&str]) -> bool {
    match comps {
        [.., nm, name] if *nm == "node_modules" && is_name(name) => true,
        [.., nm, scope, name]
            if *nm == "node_modules" && is_scope(scope) && !name.is_empty() && !name.starts_with('.') =>
        {
            true
        }
        _ => false,
    }
}

/// Classifies an absolute image path; `comps` is the path without its leading `/`, split.
pub(super) fn classify<'p>(path: &'p str, comps: &[&str]) -> Option<Hit<'p>> {
    match comps {
        [dir @ .., "package.json"] if ends_at_package(dir) => {
            Some(Hit::Manifest { location: &path[..path.len() - "/package.json".len()] })
        }
        [.., last] if *last != "package.json" && ends_at_package(comps) => Some(Hit::PackageDir),
        _ => None,
    }
}

/// `name` and `version` of a package.json, or why there are none.
pub(super) fn parse_manifest(data: &[u8]) -> Result<(String, String), String> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let field = |key: &str| value.get(key).and_then(serde_json::Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    super::name_version(field("name"), field("version"), ["\"name\" string", "\"version\" string"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(path: &str) -> Option<Hit<'_>> {
        let comps: Vec<&str> = path[1..].split('/').collect();
        classify(path, &comps)
    }

    #[test]
    fn package_positions() {
        let m = |l| Some(Hit::Manifest { location: l });
        assert_eq!(cl("/usr/lib/node_modules/npm/package.json"), m("/usr/lib/node_modules/npm"));
        assert_eq!(cl("/a/node_modules/@scope/x/package.json"), m("/a/node_modules/@scope/x"));
        assert_eq!(cl("/a/node_modules/b/node_modules/@s/c/package.json"), m("/a/node_modules/b/node_modules/@s/c"));
        assert_eq!(cl("/node_modules/y/package.json"), m("/node_modules/y"));
        assert_eq!(cl("/a/node_modules/@scope/x"), Some(Hit::PackageDir));
        assert_eq!(cl("/a/node_modules/x"), Some(Hit::PackageDir));
        for no in [
            "/app/package.json",
            "/a/node_modules/package.json",
            "/a/node_modules/@scope/package.json",
            "/a/node_modules/x/lib/package.json",
            "/a/node_modules/.bin/package.json",
            "/a/node_modules/.pnpm/package.json",
            "/a/node_modules/@scope/.x/package.json",
            "/a/node_modules/@/x/package.json",
            "/a/node_modules/x/package.json/extra",
            "/a/node_modules/@scope",
            "/a/node_modules/.package-lock.json",
        ] {
            assert_eq!(cl(no), None, "{no}");
        }
    }

    #[test]
    fn manifests() {
        let p = |t: &str| parse_manifest(t.as_bytes());
        assert_eq!(p(r#"{"version":"1.2.3","name":"@s/x","deps":{}}"#), Ok(("@s/x".into(), "1.2.3".into())));
        assert_eq!(p("\u{feff}{\"name\":\"a\",\"version\":\"1\"}"), Ok(("a".into(), "1".into())));
        assert_eq!(p(r#"{"name":"a"}"#), Err("no \"version\" string".into()));
        assert_eq!(p(r#"{"name":"a","version":2}"#), Err("no \"version\" string".into()));
        assert_eq!(p(r#"{"version":"1"}"#), Err("no \"name\" string".into()));
        assert_eq!(p(r#"["name"]"#), Err("no \"name\" string".into()));
        assert!(p("{").unwrap_err().starts_with("not JSON"));
        assert!(
            p(&"[".repeat(100_000)).unwrap_err().starts_with("not JSON"),
            "deep nesting is an error, not a stack overflow"
        );
    }
}
