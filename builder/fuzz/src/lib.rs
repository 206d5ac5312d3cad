//! Harness shared by the fuzz targets in `fuzz_targets/`.
//!
//! # Input format (`load_validate`)
//!
//! One fuzz input is a whole image directory, written as files separated by the three bytes
//! `\n%%` ([`SEP`]):
//!
//! ```text
//! <contents of config/build.toml>
//! %%m
//! <contents of config/manifest.toml>
//! %%a openai
//! <contents of config/ai/openai.toml>
//! ```
//!
//! - Everything before the first separator is `config/build.toml` (so a bare TOML file is a valid
//!   input). An input that *starts* with `%%` has no implicit build.toml.
//! - After each `%%` comes a header line: its first byte is the selector ([`FIXED`],
//!   [`COLLECTIONS`], [`NO_DEFAULTS`]); for a collection selector the rest of the header line,
//!   filtered to `[A-Za-z0-9_-]` and cut to 24 bytes, is the file stem (`x` when empty). The
//!   body runs from after the header's newline to the next separator (the `\n` before `%%`
//!   belongs to the separator).
//! - Selector [`ANY_PATH`] (`/`): the rest of the header line is a relative path of its own
//!   (components filtered to `[A-Za-z0-9_.+-]`, `.`/`..`/empty components dropped, at most 6
//!   components); a trailing `/` makes it an empty directory instead of a file. This reaches
//!   layouts the fixed selectors cannot: `config/mcp` as a file, `config/vm/resources.toml` as a
//!   directory, `config/ai/x.TOML`, certificates named in `extra_ca`, and so on. A path that
//!   collides with an earlier file or directory is skipped (deterministically).
//! - Any other selector byte picks entry `byte % N` of [`FIXED`] followed by [`COLLECTIONS`].
//! - At most [`MAX_FILES`] files are taken; later ones are ignored. A later file with the same
//!   path replaces an earlier one.
//! - `artifacts/capsem-init` and `artifacts/capsem-bashrc` (required by the validator, content
//!   never read) are written with default bytes first, unless a `%%-` header appears anywhere;
//!   a file in the input with the same path replaces the default.
//!
//! The image is written to `<scratch>/capsem-builder-fuzz-<pid>/img` (recreated for every
//! input, removed afterwards; left behind only when an input crashes), so the displayed image
//! name is always `img` and runs are deterministic. `<scratch>` is `$CAPSEM_FUZZ_TMPDIR`, else
//! `/dev/shm`, else the system temp dir (see `scratch_root`).

use std::path::{Path, PathBuf};

use capsem_builder::{inspect, kernel_source, plan, render, settings, validate};

/// Separator between files in one input.
pub const SEP: &[u8] = b"\n%%";

/// Most files one input can create.
pub const MAX_FILES: usize = 24;

/// Longest collection file stem.
const MAX_STEM: usize = 24;

/// Selector bytes for files at fixed paths (relative to the image directory).
pub const FIXED: &[(u8, &str)] = &[
    (b'b', "config/build.toml"),
    (b'm', "config/manifest.toml"),
    (b'w', "config/security/web.toml"),
    (b'r', "config/vm/resources.toml"),
    (b'e', "config/vm/environment.toml"),
    (b'k', "config/kernel/defconfig.x86_64"),
    (b'K', "config/kernel/defconfig.arm64"),
    (b'i', "artifacts/capsem-init"),
    (b'h', "artifacts/capsem-bashrc"),
    (b'n', "artifacts/banner.txt"),
    (b't', "artifacts/tips.txt"),
    (b'd', "artifacts/diagnostics/check"),
    (b'x', "certs/ca.crt"),
];

/// Selector bytes for collection files: `<dir>/<stem>.toml`.
pub const COLLECTIONS: &[(u8, &str)] = &[(b'a', "config/ai"), (b'p', "config/packages"), (b'c', "config/mcp")];

/// Selector that suppresses the default artifacts (the header's body is ignored).
pub const NO_DEFAULTS: u8 = b'-';

/// Selector whose header line is the path itself (see the module docs).
pub const ANY_PATH: u8 = b'/';

/// Most components in an [`ANY_PATH`] path.
const MAX_DEPTH: usize = 6;

/// Default artifacts, written unless [`NO_DEFAULTS`] appears.
const DEFAULT_ARTIFACTS: &[(&str, &[u8])] =
    &[("artifacts/capsem-init", b"#!/bin/sh\n"), ("artifacts/capsem-bashrc", b"")];

/// One file (or empty directory) of an image, path relative to the image directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File<'a> {
    /// Relative path, `/`-separated; never absolute, never `..`. Ends in `/` for a directory.
    pub path: String,
    /// Contents (empty for a directory).
    pub bytes: &'a [u8],
}

/// A fuzz input decoded into files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<'a> {
    /// Files in input order.
    pub files: Vec<File<'a>>,
    /// Whether the default artifacts are written first.
    pub default_artifacts: bool,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Decodes a fuzz input (see the module docs).
pub fn split(data: &[u8]) -> Image<'_> {
    let mut image = Image { files: Vec::new(), default_artifacts: true };
    // (start, end) of every header piece: from the selector byte to the next separator.
    let mut pieces = Vec::new();
    let mut next = if data.starts_with(b"%%") {
        Some(0usize)
    } else {
        let end = find(data, SEP, 0);
        image.files.push(File { path: "config/build.toml".into(), bytes: &data[..end.unwrap_or(data.len())] });
        end.map(|e| e + 1)
    };
    // `next` points at a "%%".
    while let Some(at) = next {
        let start = at + 2;
        let end = find(data, SEP, start);
        pieces.push((start, end.unwrap_or(data.len())));
        next = end.map(|e| e + 1);
    }
    for (start, end) in pieces {
        let piece = &data[start..end];
        let Some((&sel, rest)) = piece.split_first() else { continue };
        let (header, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (&rest[..nl], &rest[nl + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        if sel == NO_DEFAULTS {
            image.default_artifacts = false;
            continue;
        }
        if image.files.len() >= MAX_FILES {
            continue;
        }
        let path = if sel == ANY_PATH {
            let Some(p) = any_path(header) else { continue };
            p
        } else if let Some((_, p)) = FIXED.iter().find(|(s, _)| *s == sel) {
            (*p).to_string()
        } else if let Some((_, d)) = COLLECTIONS.iter().find(|(s, _)| *s == sel) {
            collection_path(d, header)
        } else {
            let i = sel as usize % (FIXED.len() + COLLECTIONS.len());
            match FIXED.get(i) {
                Some((_, p)) => (*p).to_string(),
                None => collection_path(COLLECTIONS[i - FIXED.len()].1, header),
            }
        };
        image.files.push(File { path, bytes: body });
    }
    image
}

fn collection_path(dir: &str, header: &[u8]) -> String {
    let stem: String = header
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
        .take(MAX_STEM)
        .map(|&b| b as char)
        .collect();
    let stem = if stem.is_empty() { "x".to_string() } else { stem };
    format!("{dir}/{stem}.toml")
}

fn any_path(header: &[u8]) -> Option<String> {
    let comps: Vec<String> = header
        .split(|&b| b == b'/')
        .map(|c| {
            c.iter()
                .filter(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(b))
                .map(|&b| b as char)
                .collect::<String>()
        })
        .filter(|c| !c.is_empty() && c != "." && c != "..")
        .take(MAX_DEPTH)
        .collect();
    if comps.is_empty() {
        return None;
    }
    let dir = header.ends_with(b"/");
    Some(format!("{}{}", comps.join("/"), if dir { "/" } else { "" }))
}

/// A scratch directory for this process: `<base>/capsem-builder-fuzz-<pid>`, where `<base>` is
/// `$CAPSEM_FUZZ_TMPDIR` when set, else `/dev/shm` when it exists, else the system temp dir.
/// (On a disk-backed /tmp creating and deleting the files costs ~20 ms an input; on tmpfs
/// ~0.1 ms.)
fn scratch_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let base = match std::env::var_os("CAPSEM_FUZZ_TMPDIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        base.join(format!("capsem-builder-fuzz-{}", std::process::id()))
    })
}

/// Writes `files` (after the default artifacts, when asked) under `img`, which must not exist.
/// A file whose path collides with what is already there (a file where a directory is needed,
/// or the reverse) is skipped.
pub fn materialize(img: &Path, files: &[File<'_>], default_artifacts: bool) {
    std::fs::create_dir_all(img).expect("create scratch image dir");
    let defaults = DEFAULT_ARTIFACTS.iter().filter(|_| default_artifacts).map(|(p, b)| (*p, *b));
    for (rel, bytes) in defaults.chain(files.iter().map(|f| (f.path.as_str(), f.bytes))) {
        let path = img.join(rel);
        let _ = if rel.ends_with('/') {
            std::fs::create_dir_all(&path)
        } else {
            std::fs::create_dir_all(path.parent().expect("relative path has a parent"))
                .and_then(|()| std::fs::write(&path, bytes))
        };
    }
}

/// Writes `files` into a fresh scratch image directory, runs [`exercise`] on it, and removes it.
pub fn run_files(files: &[File<'_>], default_artifacts: bool) {
    let root = scratch_root();
    let _ = std::fs::remove_dir_all(root);
    let img = root.join("img");
    materialize(&img, files, default_artifacts);
    exercise(&img);
    let _ = std::fs::remove_dir_all(root);
}

/// The `load_validate` target: decode, write, load, validate, render.
pub fn run_image(data: &[u8]) {
    let image = split(data);
    run_files(&image.files, image.default_artifacts);
}

/// Loads and validates `dir`, then runs every consumer of the result the CLI has: both report
/// renderings, and for a model the settings JSON, `inspect` (JSON and text), and the rootfs and
/// kernel plans and Dockerfiles of every declared architecture. Render errors are fine;
/// panics are the bugs this looks for.
pub fn exercise(dir: &Path) {
    let loaded = validate::load(dir);
    let report = &loaded.report;
    let _ = report.render("img", false);
    let _ = serde_json::to_string(&report.to_json("img")).expect("report JSON serializes");
    if let Some(model) = &loaded.model {
        let _ = settings::to_json(model);
        let _ = inspect::to_json(model);
        let _ = inspect::render_text(model);
        // As `capsem-builder build` does: the model's own SOURCE_DATE_EPOCH, no guest binaries.
        let sde = model.build.source_date_epoch;
        for &arch in model.build.architectures.keys() {
            // main.rs `expect`s these too, so a `None` would be a CLI panic.
            let rootfs = plan::rootfs(model, arch, &[], sde).expect("declared arch has a rootfs plan");
            let _ = render::render_rootfs(&rootfs);
            // An unpinned kernel branch is an error the CLI reports, not a panic.
            let branch = &model.build.architectures[&arch].kernel_branch;
            if let Ok(source) = kernel_source::resolve(branch, kernel_source::Provider::Debian) {
                let kernel = plan::kernel(model, arch, sde, &source).expect("declared arch has a kernel plan");
                let _ = render::render_kernel(&kernel);
            }
        }
    }
}

/// The release files a runtime downloads, which an attacker may have replaced: the first byte
/// picks the parser, the rest is the file. `B3SUMS` (and checking it against files that are not
/// there), a public key, a signature over fixed data, and `manifest.json`. None may panic.
pub fn trust_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            if let Ok(entries) = capsem_trust::b3sums::parse(&text) {
                let _ = capsem_trust::b3sums::render(&entries);
            }
        }
        1 => {
            if let Ok(key) = capsem_trust::signature::PublicKey::parse(&text) {
                let _ = key.key_id().to_string();
            }
        }
        2 => {
            // A fixed, valid key: the signature text is the hostile part.
            let key = capsem_trust::signature::PublicKey::parse(FUZZ_PUBLIC_KEY).expect("the fixed key parses");
            let _ = capsem_trust::signature::verify(b"capsem", &text, &key);
        }
        _ => {
            if let Ok(m) = capsem_trust::Manifest::parse(rest) {
                let _ = capsem_trust::b3sums::release_files(&m);
                let _ = m.to_json();
            }
        }
    }
}

/// A minisign public key made for this harness (`minisign -G -W`; the secret half was deleted).
const FUZZ_PUBLIC_KEY: &str = "RWTOWFHvi4yJBeyCR1iBEGCNtwani2EZMdWXygz/nI5xcte4mibRalHF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_files_handles_each_parser_and_garbage() {
        let sums = format!("0{}  x86_64/vmlinuz\n", "a".repeat(64));
        for input in [&b""[..], b"\x00", sums.as_bytes(), b"1untrusted comment: x\nRWQ", b"2\xff\xfe", b"3{\"format\":1}"] {
            trust_files(input);
        }
        trust_files(format!("1{FUZZ_PUBLIC_KEY}").as_bytes());
    }

    fn paths(img: &Image<'_>) -> Vec<(String, String)> {
        img.files.iter().map(|f| (f.path.clone(), String::from_utf8_lossy(f.bytes).into_owned())).collect()
    }

    #[test]
    fn split_format() {
        let img = split(b"[build]\n%%m\n[image]\nname = \"x\"\n%%a open ai!\n[o]\n%%a\n%%-\nignored\n%%\x05\nfoo");
        assert!(!img.default_artifacts);
        assert_eq!(
            paths(&img),
            vec![
                ("config/build.toml".into(), "[build]".into()),
                ("config/manifest.toml".into(), "[image]\nname = \"x\"".into()),
                ("config/ai/openai.toml".into(), "[o]".into()),
                ("config/ai/x.toml".into(), "".into()),
                (FIXED[5].1.into(), "foo".into()),
            ]
        );
        let img = split(b"%%i\n#!/bin/sh");
        assert!(img.default_artifacts);
        assert_eq!(paths(&img), vec![("artifacts/capsem-init".into(), "#!/bin/sh".into())]);
        assert_eq!(paths(&split(b"")), vec![("config/build.toml".into(), "".into())]);
        assert_eq!(split(b"%%").files, vec![]);
        assert_eq!(split(b"\n%%").files.len(), 1);
        let img = split(b"%%/config/mcp\n[x]\n%%/./config//vm/../resources.toml/\n%%/ /..\n%%/a/b/c/d/e/f/g/h");
        assert_eq!(
            paths(&img),
            vec![
                ("config/mcp".into(), "[x]".into()),
                ("config/vm/resources.toml/".into(), "".into()),
                ("a/b/c/d/e/f".into(), "".into()),
            ]
        );
    }

    #[test]
    fn materialize_skips_collisions() {
        let root = std::env::temp_dir().join(format!("capsem-builder-fuzz-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let img = split(b"[build]\n%%/config/build.toml/x\n%%/config/mcp/\n%%c s\n[s]");
        materialize(&root, &img.files, img.default_artifacts);
        assert!(root.join("config/build.toml").is_file());
        assert!(root.join("config/mcp/s.toml").is_file());
        assert!(root.join("artifacts/capsem-init").is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The format carries a valid image through: `tests/golden/_base` (which validates clean),
    /// encoded the way `seed.sh` does it, yields a model, so the plan/render half is reachable.
    #[test]
    fn golden_base_round_trips() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/_base");
        let read = |rel: &str| std::fs::read_to_string(base.join(rel)).unwrap();
        let input = format!(
            "{}\n%%p apt\n{}\n%%w\n{}\n%%k\n{}",
            read("config/build.toml"),
            read("config/packages/apt.toml"),
            read("config/security/web.toml"),
            read("config/kernel/defconfig.x86_64"),
        );
        let image = split(input.as_bytes());
        let root = std::env::temp_dir().join(format!("capsem-builder-fuzz-base-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let img = root.join("img");
        materialize(&img, &image.files, image.default_artifacts);
        let loaded = validate::load(&img);
        assert!(loaded.model.is_some(), "{}", loaded.report.render("img", false));
        exercise(&img);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Every reproducer under `regressions/` must load without panicking (stable toolchain).
    #[test]
    fn regressions_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
        entries.sort();
        for path in entries {
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            eprintln!("replaying {}", path.display());
            run_image(&std::fs::read(&path).unwrap());
        }
    }
}
