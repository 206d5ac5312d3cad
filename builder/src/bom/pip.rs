//! Python distributions: `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` and `*.egg-info` files
//! directly inside the directories a system interpreter puts on `sys.path`.
//!
//! Those directories are Debian's (`site.py` of python3.x): `/usr/lib/python3/dist-packages`,
//! `/usr/lib/python3.X/{dist,site}-packages` and `/usr/local/lib/python3.X/{dist,site}-packages`.
//! As in `importlib.metadata` (which pip lists with), only their direct children count, matched
//! by a case-insensitive `.dist-info`/`.egg-info` suffix; a package vendored deeper inside another
//! is not installed. Not covered: user site directories (`~/.local`), and paths added by `.pth`
//! files or `PYTHONPATH`.
//!
//! The metadata is an RFC 822 header block (core metadata); only `Name` and `Version` are read,
//! first occurrence wins as in Python's `email` parser, and the block ends at the first blank line
//! or the first line that is not a header.

/// How a path relates to a site directory.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hit<'p> {
    /// `<site>/<x>.dist-info/METADATA` or `<site>/<x>.egg-info/PKG-INFO`: metadata for the
    /// distribution at `location` (the `*-info` directory).
    Metadata { location: &'p str },
    /// `<site>/<x>.egg-info` itself (a file is metadata; a directory holds PKG-INFO).
    InfoEntry { dist_info: bool },
}

/// Number of components of the site directory `comps` starts with, if it starts with one.
fn site_len(comps: &[&str]) -> Option<usize> {
    let versioned =
        |c: &str| c.strip_prefix("python3.").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let packages = |c: &str| c == "dist-packages" || c == "site-packages";
    match comps {
        ["usr", "lib", "python3", "dist-packages", ..] => Some(4),
        ["usr", "lib", py, pk, ..] if versioned(py) && packages(pk) => Some(4),
        ["usr", "local", "lib", py, pk, ..] if versioned(py) && packages(pk) => Some(5),
        _ => None,
    }
}

fn info_kind(name: &str) -> Option<bool> {
    let lower = name.to_ascii_lowercase();
    if lower.len() > ".dist-info".len() && lower.ends_with(".dist-info") {
        Some(true)
    } else if lower.len() > ".egg-info".len() && lower.ends_with(".egg-info") {
        Some(false)
    } else {
        None
    }
}

/// Classifies an absolute image path (`/usr/lib/…`); `path` without its leading `/` split in `comps`.
pub(super) fn classify<'p>(path: &'p str, comps: &[&str]) -> Option<Hit<'p>> {
    let site = site_len(comps)?;
    let rest = &comps[site..];
    match rest {
        [entry] => info_kind(entry).map(|dist_info| Hit::InfoEntry { dist_info }),
        [entry, file] => {
            let wanted = if info_kind(entry)? { "METADATA" } else { "PKG-INFO" };
            (*file == wanted).then(|| Hit::Metadata { location: &path[..path.len() - file.len() - 1] })
        }
        _ => None,
    }
}

/// `Name` and `Version` from a core-metadata header block, or why there are none.
pub(super) fn parse_metadata(data: &[u8]) -> Result<(String, String), String> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let mut name = None;
    let mut version = None;
    for raw in data.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue; // continuation of a header we do not read (Name/Version are one line)
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break; // not a header: the header block is over, as for Python's email parser
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        let slot = if key.eq_ignore_ascii_case(b"name") {
            &mut name
        } else if key.eq_ignore_ascii_case(b"version") {
            &mut version
        } else {
            continue;
        };
        if slot.is_none() {
            let text =
                std::str::from_utf8(value).map_err(|_| format!("{} is not UTF-8", String::from_utf8_lossy(key)))?;
            *slot = Some(text.trim().to_owned());
        }
    }
    super::name_version(name.as_deref(), version.as_deref(), ["Name header", "Version header"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(path: &str) -> Option<Hit<'_>> {
        let comps: Vec<&str> = path[1..].split('/').collect();
        classify(path, &comps)
    }

    #[test]
    fn finds_metadata_in_site_directories_only() {
        let meta = |l| Some(Hit::Metadata { location: l });
        assert_eq!(
            cl("/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA"),
            meta("/usr/lib/python3/dist-packages/six-1.16.0.dist-info")
        );
        assert_eq!(
            cl("/usr/lib/python3.11/site-packages/a.egg-info/PKG-INFO"),
            meta("/usr/lib/python3.11/site-packages/a.egg-info")
        );
        assert_eq!(
            cl("/usr/local/lib/python3.12/dist-packages/B-1.DIST-INFO/METADATA"),
            meta("/usr/local/lib/python3.12/dist-packages/B-1.DIST-INFO")
        );
        assert_eq!(cl("/usr/lib/python3/dist-packages/x.egg-info"), Some(Hit::InfoEntry { dist_info: false }));
        assert_eq!(cl("/usr/lib/python3/dist-packages/x.dist-info"), Some(Hit::InfoEntry { dist_info: true }));
        for no in [
            "/usr/lib/python3/dist-packages/six-1.16.0.dist-info/RECORD",
            "/usr/lib/python3/dist-packages/six.egg-info/METADATA",
            "/usr/lib/python3/dist-packages/pip/_vendor/x-1.dist-info/METADATA",
            "/usr/lib/python3/site-packages/a.dist-info/METADATA",
            "/usr/lib/python3.x/site-packages/a.dist-info/METADATA",
            "/usr/lib/python3.11/a.dist-info/METADATA",
            "/usr/local/lib/python3/dist-packages/a.dist-info/METADATA",
            "/opt/venv/lib/python3.11/site-packages/a.dist-info/METADATA",
            "/usr/lib/python3/dist-packages/.dist-info/METADATA",
            "/usr/lib/python3/dist-packages/six.py",
        ] {
            assert_eq!(cl(no), None, "{no}");
        }
    }

    #[test]
    fn metadata_headers() {
        let ok = |t: &str| parse_metadata(t.as_bytes());
        assert_eq!(
            ok("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0\n\nName: body\n"),
            Ok(("PyYAML".into(), "6.0".into()))
        );
        assert_eq!(
            ok(
                "\u{feff}Metadata-Version: 2.1\r\nSummary: a\r\n  folded: text\r\nname:  six \r\nversion: 1.16.0\r\nName: second\r\n"
            ),
            Ok(("six".into(), "1.16.0".into()))
        );
        assert_eq!(ok("Name: a\nnot a header\nVersion: 1\n"), Err("no Version header".into()));
        assert_eq!(ok("Version: 1\n"), Err("no Name header".into()));
        assert!(ok("Name: a b\nVersion: 1\n").unwrap_err().contains("implausible"));
        assert_eq!(parse_metadata(b"Name: \xff\nVersion: 1\n"), Err("Name is not UTF-8".into()));
        assert_eq!(parse_metadata(b"Name: a\nDescription: \xff\nVersion: 1\n"), Ok(("a".into(), "1".into())));
    }
}
