//! The dpkg database, `/var/lib/dpkg/status`: which Debian packages are installed.
//!
//! The file is deb822: paragraphs separated by blank lines, `Field: value` lines, continuation
//! lines starting with a space or a tab. dpkg writes it, but most of its text comes from the
//! packages' control files, so it is parsed as untrusted bytes: only the four fields we use must be
//! UTF-8, every syntax error is reported with its line number, nothing panics.
//!
//! A package is *installed* when the third word of its `Status:` is `installed`, whatever its
//! selection (`install ok installed`, `hold ok installed` for a held package, `deinstall ok
//! installed` for one selected for removal but still present): that is what dpkg-query's
//! `db:Status-Abbrev` shows as `?i`. Packages whose files are only partly on disk (`unpacked`,
//! `half-configured`, `half-installed`, `triggers-*`) are returned separately so the caller can
//! report them; `config-files` and `not-installed` leave no software behind and are ignored.

use std::collections::BTreeMap;

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Installed {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// A package whose files are only partly installed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Partial {
    pub name: String,
    pub status: String,
}

/// What the status file says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Status {
    pub installed: Vec<Installed>,
    pub partial: Vec<Partial>,
}

/// A syntax or consistency error, with its 1-based line.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn err<T>(line: usize, reason: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError { line, reason: reason.into() })
}

/// The fields we read, one stanza's worth.
#[derive(Default)]
struct Stanza {
    /// Line of the stanza's first field.
    start: usize,
    /// field (lowercase) → (line, value).
    fields: BTreeMap<&'static str, (usize, String)>,
    /// The field the last line belonged to, if it is one we read (continuations of it are errors).
    last_read: Option<&'static str>,
    /// Whether any field line was seen.
    any: bool,
}

const READ: [&str; 4] = ["package", "status", "version", "architecture"];

/// Parses a whole status file.
pub(super) fn parse(data: &[u8]) -> Result<Status, ParseError> {
    let mut out = Status::default();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut stanza = Stanza::default();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let blank = raw.iter().all(|&b| b == b' ' || b == b'\t');
        if blank {
            if stanza.any {
                finish(std::mem::take(&mut stanza), &mut out, &mut seen)?;
            }
            continue;
        }
        if raw[0] == b' ' || raw[0] == b'\t' {
            if !stanza.any {
                return err(n, "continuation line outside a field");
            }
            if let Some(field) = stanza.last_read {
                return err(n, format!("field {} continues on a second line; it must be one line", title(field)));
            }
            continue;
        }
        let Some(colon) = raw.iter().position(|&b| b == b':') else {
            return err(n, "expected `Field: value`, found no colon");
        };
        let name = &raw[..colon];
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return err(n, "invalid field name");
        }
        let lower = name.to_ascii_lowercase();
        if !stanza.any {
            stanza.start = n;
            stanza.any = true;
        }
        stanza.last_read = None;
        if let Some(&field) = READ.iter().find(|f| f.as_bytes() == lower.as_slice()) {
            let Ok(value) = std::str::from_utf8(&raw[colon + 1..]) else {
                return err(n, format!("field {} is not UTF-8", title(field)));
            };
            if let Some((first, _)) = stanza.fields.insert(field, (n, value.trim().to_owned())) {
                return err(n, format!("field {} repeated (first on line {first})", title(field)));
            }
            stanza.last_read = Some(field);
        }
    }
    if stanza.any {
        finish(stanza, &mut out, &mut seen)?;
    }
    out.installed.sort();
    out.partial.sort();
    Ok(out)
}

fn title(field: &str) -> &'static str {
    match field {
        "package" => "Package",
        "status" => "Status",
        "version" => "Version",
        _ => "Architecture",
    }
}

/// States in which some of a package's files are on disk but it is not `installed`.
const PARTIAL: [&str; 5] = ["half-installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending"];

fn finish(mut s: Stanza, out: &mut Status, seen: &mut BTreeMap<(String, String), usize>) -> Result<(), ParseError> {
    let Some((pline, name)) = s.fields.remove("package") else {
        return err(s.start, "paragraph has no Package field");
    };
    if !plausible(&name) || name.contains('/') {
        return err(pline, format!("invalid package name `{}`", name.escape_debug()));
    }
    let Some((sline, status)) = s.fields.remove("status") else {
        return err(s.start, format!("package {name} has no Status field"));
    };
    let words: Vec<&str> = status.split(' ').collect();
    let [want, flag, state] = words.as_slice() else {
        return err(sline, format!("package {name}: Status `{status}` is not `<want> <flag> <status>`"));
    };
    let known = ["unknown", "install", "hold", "deinstall", "purge"].contains(want)
        && ["ok", "reinstreq"].contains(flag)
        && (["installed", "not-installed", "config-files"].contains(state) || PARTIAL.contains(state));
    if !known {
        return err(sline, format!("package {name}: unknown Status `{status}`"));
    }
    if PARTIAL.contains(state) {
        out.partial.push(Partial { name, status });
        return Ok(());
    }
    if *state != "installed" {
        return Ok(());
    }
    let Some((vline, version)) = s.fields.remove("version") else {
        return err(s.start, format!("installed package {name} has no Version field"));
    };
    if !plausible(&version) {
        return err(vline, format!("package {name}: invalid Version `{}`", version.escape_debug()));
    }
    let Some((aline, arch)) = s.fields.remove("architecture") else {
        return err(s.start, format!("installed package {name} has no Architecture field"));
    };
    if arch.is_empty() || !arch.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return err(aline, format!("package {name}: invalid Architecture `{}`", arch.escape_debug()));
    }
    if let Some(first) = seen.insert((name.clone(), arch.clone()), pline) {
        return err(pline, format!("package {name}:{arch} is listed twice (first on line {first})"));
    }
    out.installed.push(Installed { name, version, arch });
    Ok(())
}

/// A name or version dpkg could have written: 1–256 printable ASCII characters, no spaces.
fn plausible(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(name: &str, version: &str, arch: &str) -> Installed {
        Installed { name: name.into(), version: version.into(), arch: arch.into() }
    }

    #[test]
    fn keeps_installed_packages_only() {
        let text = "Package: zlib1g\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\n\
Multi-Arch: same\nVersion: 1:1.2.13.dfsg-1\nDescription: compression library - runtime\n zlib is a library\n .\n \
more text: with colons\n\n\
Package: old-thing\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\nConffiles:\n /etc/x 0123\n\n\
Package: libc6\nstatus: hold ok installed\nARCHITECTURE: i386\nVersion: 2.36-9+deb12u4\n\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\n\
Package-Type: deb\n\t\n\
Package: half\nStatus: install reinstreq half-configured\nArchitecture: all\nVersion: 3\n\n\
Package: gone\nStatus: purge ok not-installed\nArchitecture: all\n";
        let s = parse(text.as_bytes()).unwrap();
        assert_eq!(
            s.installed,
            vec![
                installed("libc6", "2.36-9+deb12u4", "amd64"),
                installed("libc6", "2.36-9+deb12u4", "i386"),
                installed("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
            ]
        );
        assert_eq!(
            s.partial,
            vec![Partial { name: "half".into(), status: "install reinstreq half-configured".into() }]
        );
    }

    #[test]
    fn non_utf8_text_outside_our_fields_is_fine() {
        let mut data =
            b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\nDescription: \xff\xfe\n \xc3\n"
                .to_vec();
        data.extend_from_slice(b"\nPackage: b\nStatus: install ok installed\nVersion: 2\nArchitecture: all");
        let s = parse(&data).unwrap();
        assert_eq!(s.installed, vec![installed("a", "1", "all"), installed("b", "2", "all")]);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b" leading continuation\n", 1, "continuation line outside a field"),
            (b"Package: a\nno colon here\n", 2, "no colon"),
            (
                b"Package: a\nStatus: install ok installed\nStatus: install ok installed\n",
                3,
                "repeated (first on line 2)",
            ),
            (b"Package: a\nVersion: 1\n  2\n", 3, "Version continues"),
            (b"Status: install ok installed\nVersion: 1\n", 1, "no Package field"),
            (b"Package: a\nStatus: install ok\n", 2, "is not `<want> <flag> <status>`"),
            (b"Package: a\nStatus: install ok sideways\n", 2, "unknown Status"),
            (b"Package: a\nStatus: install ok installed\nArchitecture: all\n", 1, "has no Version"),
            (b"Package: a\nStatus: install ok installed\nVersion: 1\n", 1, "has no Architecture"),
            (b"Package: a\nStatus: install ok installed\nVersion: 1 2\nArchitecture: all\n", 3, "invalid Version"),
            (b"Package: a b\nStatus: install ok installed\n", 1, "invalid package name"),
            (b"Package: \xff\n", 1, "not UTF-8"),
            (
                b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
Package: a\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n",
                6,
                "listed twice (first on line 1)",
            ),
        ];
        for (data, line, needle) in cases {
            let e = parse(data).unwrap_err();
            assert_eq!(e.line, *line, "{:?}: {e:?}", String::from_utf8_lossy(data));
            assert!(e.reason.contains(needle), "{:?}: {e:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn empty_and_blank_files_have_no_packages() {
        assert_eq!(parse(b"").unwrap(), Status::default());
        assert_eq!(parse(b"\n \n\t\n").unwrap(), Status::default());
    }
}
