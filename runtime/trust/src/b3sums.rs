//! BLAKE3 of files, the `B3SUMS` list, and the per-file checks against it and the manifest.
//!
//! - [`hash_file`]: size and BLAKE3 of one file, memory-mapped and hashed on every core for large
//!   regular files (as `b3sum` does), streamed otherwise.
//! - [`render`] / [`parse`]: the `B3SUMS` text in exactly `b3sum`'s format (`<64 hex>  <path>`,
//!   one line per file, sorted by path, paths relative to the assets directory with `/`), so
//!   `b3sum -c B3SUMS` run in that directory checks a release without capsem.
//! - [`write_b3sums`], [`verify_b3sums`]: write the list atomically; check every listed file.
//! - [`check_assets`] / [`verify_assets`]: every asset and SBOM of a [`Manifest`] is present with
//!   its listed size and BLAKE3.
//!
//! `B3SUMS` is hostile input: paths are relative and stay inside the directory (no absolute
//! paths, no `..`), no control characters, no duplicates, bounded size; every malformed line is
//! an error naming its line number.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{B3SUMS_FILE, Manifest};

/// Files at least this large are memory-mapped and hashed on all cores; smaller ones are read.
pub const PARALLEL_THRESHOLD: u64 = 128 * 1024;

/// The largest `B3SUMS` file read (a release lists a handful of files).
pub const MAX_B3SUMS_BYTES: u64 = 1 << 20;

/// Why hashing, reading or writing a checksum list failed.
#[derive(Debug, thiserror::Error)]
pub enum B3Error {
    /// A file could not be opened or read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `B3SUMS` is larger than [`MAX_B3SUMS_BYTES`].
    #[error("`{path}` is larger than {MAX_B3SUMS_BYTES} bytes; not a checksum list")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line of a checksum list is not `<64 lowercase hex>  <relative path>`.
    #[error("B3SUMS line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A path that cannot be written into a checksum list.
    #[error("cannot list `{path}` in B3SUMS: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> B3Error + '_ {
    move |source| B3Error::Read { path: path.to_path_buf(), source }
}

/// Size in bytes and BLAKE3 (64 lowercase hex digits) of a file.
///
/// Regular files of at least [`PARALLEL_THRESHOLD`] bytes are memory-mapped and hashed with
/// rayon on every core (`b3sum`'s default); smaller files and anything else (pipes, devices) are
/// streamed. The size is the number of bytes hashed, so it always matches the hash. As with any
/// memory-mapped read, truncating the file while it is hashed may kill the process (SIGBUS).
pub fn hash_file(path: &Path) -> Result<(u64, String), B3Error> {
    let meta = fs::metadata(path).map_err(read_err(path))?;
    let mut hasher = blake3::Hasher::new();
    if meta.is_file() && meta.len() >= PARALLEL_THRESHOLD {
        hasher.update_mmap_rayon(path).map_err(read_err(path))?;
    } else {
        let file = File::open(path).map_err(read_err(path))?;
        hasher.update_reader(file).map_err(read_err(path))?;
    }
    Ok((hasher.count(), hasher.finalize().to_hex().to_string()))
}

/// One line of `B3SUMS`: a path relative to the assets directory and its BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Entry {
    /// Relative path with `/` separators, e.g. `x86_64/vmlinuz`.
    pub path: String,
    /// BLAKE3, 64 lowercase hex digits.
    pub b3: String,
}

/// Checks that `path` is a safe relative path: not empty, not absolute, no `..` and no empty
/// components, no control characters.
pub fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.chars().any(char::is_control) {
        return Err("control character in path");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("empty path component (`//` or a trailing `/`)"),
            ".." => return Err("`..` component"),
            _ => {}
        }
    }
    Ok(())
}

fn is_b3_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `B3SUMS` text for `entries`, byte-identical to what `b3sum` prints for the same files:
/// sorted by path; a path containing `\` is escaped as `b3sum` does (line prefixed with `\`).
pub fn render(entries: &[Entry]) -> Result<String, B3Error> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort();
    let mut out = String::new();
    for (i, e) in sorted.iter().enumerate() {
        check_relative_path(&e.path).map_err(|reason| B3Error::BadPath { path: e.path.clone(), reason })?;
        if !is_b3_hex(&e.b3) {
            return Err(B3Error::BadPath { path: e.path.clone(), reason: "its hash is not 64 lowercase hex digits" });
        }
        if i > 0 && sorted[i - 1].path == e.path {
            return Err(B3Error::BadPath { path: e.path.clone(), reason: "listed twice" });
        }
        if e.path.contains('\\') {
            out.push('\\');
            out.push_str(&e.b3);
            out.push_str("  ");
            out.push_str(&e.path.replace('\\', "\\\\"));
        } else {
            out.push_str(&e.b3);
            out.push_str("  ");
            out.push_str(&e.path);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Parses `B3SUMS` text (ours or `b3sum`'s). Every line must be `<64 lowercase hex>  <path>`
/// with a safe relative path (see [`check_relative_path`]); the error names the first bad line.
pub fn parse(text: &str) -> Result<Vec<Entry>, B3Error> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Err(B3Error::Malformed { line: 1, reason: "empty checksum list".into() });
    }
    for (i, raw) in body.split('\n').enumerate() {
        let line = i + 1;
        let bad = |reason: String| B3Error::Malformed { line, reason };
        let (escaped, rest) = match raw.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let (hex, path) = match (rest.get(..64), rest.get(64..)) {
            (Some(hex), Some(tail)) => match tail.strip_prefix("  ") {
                Some(path) => (hex, path),
                None => return Err(bad("expected two spaces between the hash and the path".into())),
            },
            _ => return Err(bad("expected `<64 hex digits>  <path>`".into())),
        };
        if !is_b3_hex(hex) {
            return Err(bad("the hash is not 64 lowercase hex digits".into()));
        }
        let path = if escaped { unescape(path).map_err(|r| bad(r.into()))? } else { path.to_owned() };
        check_relative_path(&path).map_err(|r| bad(format!("{r}: `{}`", path.escape_debug())))?;
        if let Some(first) = seen.insert(path.clone(), line) {
            return Err(bad(format!("`{}` is already listed on line {first}", path.escape_debug())));
        }
        entries.push(Entry { path, b3: hex.to_owned() });
    }
    Ok(entries)
}

/// Undoes `b3sum`'s escaping (`\\` → `\`, `\n` → newline).
fn unescape(s: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                _ => return Err("invalid escape sequence in path"),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The files a release's `B3SUMS` lists: for every architecture, each asset and the SBOM, as
/// paths relative to the assets directory (`x86_64/vmlinuz`), sorted. `manifest.json` is not
/// listed: its signature covers it, and `B3SUMS` can be written before the manifest is.
pub fn release_files(manifest: &Manifest) -> Vec<String> {
    let mut files = vec![manifest.settings.filename.clone()];
    for arch in &manifest.architectures {
        for asset in arch.assets.iter().chain(std::iter::once(&arch.sbom)) {
            files.push(format!("{}/{}", arch.arch, asset.filename));
        }
    }
    files.sort();
    files.dedup();
    files
}

/// Hashes `files` (relative to `dir`) and writes `dir/B3SUMS` atomically (temporary file in the
/// same directory, fsync, rename). Returns the path written and the entries.
pub fn write_b3sums(dir: &Path, files: &[String]) -> Result<(PathBuf, Vec<Entry>), B3Error> {
    let mut entries = Vec::with_capacity(files.len());
    for rel in files {
        check_relative_path(rel).map_err(|reason| B3Error::BadPath { path: rel.clone(), reason })?;
        let (_, b3) = hash_file(&dir.join(rel))?;
        entries.push(Entry { path: rel.clone(), b3 });
    }
    let text = render(&entries)?;
    entries.sort();
    let path = dir.join(B3SUMS_FILE);
    write_atomic(&path, text.as_bytes())?;
    Ok((path, entries))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), B3Error> {
    crate::atomic::write(path, bytes).map_err(|source| B3Error::Write { path: path.to_path_buf(), source })
}

/// Reads and parses `dir/B3SUMS`.
pub fn read_b3sums(dir: &Path) -> Result<Vec<Entry>, B3Error> {
    let path = dir.join(B3SUMS_FILE);
    if !fs::metadata(&path).map_err(read_err(&path))?.is_file() {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(B3Error::Read { path, source });
    }
    let file = File::open(&path).map_err(read_err(&path))?;
    let mut bytes = Vec::new();
    file.take(MAX_B3SUMS_BYTES + 1).read_to_end(&mut bytes).map_err(read_err(&path))?;
    if bytes.len() as u64 > MAX_B3SUMS_BYTES {
        return Err(B3Error::TooLarge { path });
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| B3Error::Read { path, source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text") })?;
    parse(&text)
}

/// What was found for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Present with the expected size (when one is expected) and BLAKE3.
    Ok {
        /// Its size.
        size: u64,
    },
    /// No such file.
    Missing,
    /// Present, but of another size (not hashed).
    SizeMismatch {
        /// Its size.
        found: u64,
    },
    /// Present, but with another BLAKE3.
    HashMismatch {
        /// Its BLAKE3.
        found: String,
    },
    /// Present but not a regular file, or reading failed.
    Unreadable {
        /// Why.
        error: String,
    },
    /// The listed name is not a safe relative path; the file was not looked at.
    UnsafePath {
        /// Why.
        reason: String,
    },
}

/// The check of one file against its expected size and BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    /// Path relative to the assets directory, e.g. `x86_64/vmlinuz`.
    pub path: String,
    /// The size the manifest lists (`None` for `B3SUMS`, which lists none).
    pub expected_size: Option<u64>,
    /// The BLAKE3 listed.
    pub expected_b3: String,
    /// What was found.
    pub outcome: Outcome,
}

impl FileCheck {
    /// Whether the file is as listed.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }
}

impl FileCheck {
    /// What was found, without the path: `ok (N bytes, b3 …)`, `missing`, `size mismatch: …`.
    pub fn detail(&self) -> String {
        match &self.outcome {
            Outcome::Ok { size } => format!("ok ({size} bytes, b3 {})", self.expected_b3),
            Outcome::Missing => "missing".to_owned(),
            Outcome::SizeMismatch { found } => {
                format!("size mismatch: expected {} bytes, found {found}", self.expected_size.unwrap_or_default())
            }
            Outcome::HashMismatch { found } => {
                format!("BLAKE3 mismatch: expected {}, found {found}", self.expected_b3)
            }
            Outcome::Unreadable { error } => format!("unreadable: {error}"),
            Outcome::UnsafePath { reason } => format!("refused: {reason}"),
        }
    }
}

impl fmt::Display for FileCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.escape_debug(), self.detail())
    }
}

/// Hashes each file at most once across the checks of one verification (a release lists its
/// assets both in the manifest and in `B3SUMS`).
#[derive(Debug, Default)]
pub struct HashCache {
    hashes: HashMap<PathBuf, Result<(u64, String), String>>,
}

impl HashCache {
    fn get(&mut self, path: &Path) -> Result<(u64, String), String> {
        self.hashes.entry(path.to_path_buf()).or_insert_with(|| hash_file(path).map_err(|e| e.to_string())).clone()
    }

    /// Checks `dir/rel` against an expected size (if any) and BLAKE3.
    pub fn check(&mut self, dir: &Path, rel: &str, expected_size: Option<u64>, expected_b3: &str) -> FileCheck {
        let outcome = self.outcome(dir, rel, expected_size, expected_b3);
        FileCheck { path: rel.to_owned(), expected_size, expected_b3: expected_b3.to_owned(), outcome }
    }

    fn outcome(&mut self, dir: &Path, rel: &str, expected_size: Option<u64>, expected_b3: &str) -> Outcome {
        if let Err(reason) = check_relative_path(rel) {
            return Outcome::UnsafePath { reason: reason.into() };
        }
        let path = dir.join(rel);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Outcome::Missing,
            Err(e) => return Outcome::Unreadable { error: e.to_string() },
        };
        if !meta.is_file() {
            return Outcome::Unreadable { error: "not a regular file".into() };
        }
        if let Some(expected) = expected_size
            && meta.len() != expected
        {
            return Outcome::SizeMismatch { found: meta.len() };
        }
        match self.get(&path) {
            Err(error) => Outcome::Unreadable { error },
            Ok((size, _)) if expected_size.is_some_and(|e| e != size) => Outcome::SizeMismatch { found: size },
            Ok((size, b3)) if b3 == expected_b3 => Outcome::Ok { size },
            Ok((_, b3)) => Outcome::HashMismatch { found: b3 },
        }
    }
}

/// Reads `dir/B3SUMS` and checks every file it lists, in its order. An unreadable or malformed
/// list is an error; per-file problems are in the returned checks.
pub fn verify_b3sums(dir: &Path) -> Result<Vec<FileCheck>, B3Error> {
    let entries = read_b3sums(dir)?;
    let mut cache = HashCache::default();
    Ok(entries.iter().map(|e| cache.check(dir, &e.path, None, &e.b3)).collect())
}

/// Checks every asset and SBOM the manifest lists, for every architecture (`<arch>/<filename>`
/// under `dir`), against its listed size and BLAKE3. A name that is not a single plain path
/// component (`/`, `..`, empty) is refused without touching the file system.
pub fn check_assets(dir: &Path, manifest: &Manifest) -> Vec<FileCheck> {
    check_assets_with(dir, manifest, &mut HashCache::default())
}

/// [`check_assets`] sharing a [`HashCache`] with other checks.
pub fn check_assets_with(dir: &Path, manifest: &Manifest, cache: &mut HashCache) -> Vec<FileCheck> {
    let single = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    let mut checks = Vec::new();
    let settings = &manifest.settings;
    if single(&settings.filename) {
        checks.push(cache.check(dir, &settings.filename, Some(settings.size), &settings.b3));
    } else {
        checks.push(FileCheck {
            path: settings.filename.clone(),
            expected_size: Some(settings.size),
            expected_b3: settings.b3.clone(),
            outcome: Outcome::UnsafePath { reason: "the settings file name must be a single path component".into() },
        });
    }
    for arch in &manifest.architectures {
        for asset in arch.assets.iter().chain(std::iter::once(&arch.sbom)) {
            let rel = format!("{}/{}", arch.arch, asset.filename);
            if !single(&arch.arch) || !single(&asset.filename) {
                checks.push(FileCheck {
                    path: rel,
                    expected_size: Some(asset.size),
                    expected_b3: asset.b3.clone(),
                    outcome: Outcome::UnsafePath {
                        reason: "architecture and file names must be single path components".into(),
                    },
                });
                continue;
            }
            checks.push(cache.check(dir, &rel, Some(asset.size), &asset.b3));
        }
    }
    checks
}

/// The problems of [`check_assets`]: every listed file that is missing, of another size or
/// BLAKE3, unreadable or unsafely named. Empty when all assets are as the manifest says.
pub fn verify_assets(dir: &Path, manifest: &Manifest) -> Vec<FileCheck> {
    check_assets(dir, manifest).into_iter().filter(|c| !c.is_ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn hash_file_matches_blake3_small_and_large() {
        let t = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 1023, 16 * 1024, PARALLEL_THRESHOLD as usize, 3 * 1024 * 1024 + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = t.path().join(format!("f{len}"));
            fs::write(&p, &data).unwrap();
            let (size, hex) = hash_file(&p).unwrap();
            assert_eq!(size, len as u64);
            assert_eq!(hex, blake3::hash(&data).to_hex().to_string(), "length {len}");
        }
        assert_eq!(hash_file(&t.path().join("f0")).unwrap().1, H);
    }

    #[test]
    fn hash_file_errors_name_the_path() {
        let err = hash_file(Path::new("/nonexistent/capsem-x")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/capsem-x"), "{err}");
    }

    #[test]
    fn render_sorts_and_parse_round_trips() {
        let entries = vec![
            Entry { path: "x86_64/vmlinuz".into(), b3: H.into() },
            Entry { path: "manifest.json".into(), b3: "0".repeat(64) },
            Entry { path: "x86_64/initrd.img".into(), b3: "f".repeat(64) },
        ];
        let text = render(&entries).unwrap();
        assert_eq!(
            text,
            format!("{}  manifest.json\n{}  x86_64/initrd.img\n{H}  x86_64/vmlinuz\n", "0".repeat(64), "f".repeat(64))
        );
        let mut sorted = entries.clone();
        sorted.sort();
        assert_eq!(parse(&text).unwrap(), sorted);
    }

    #[test]
    fn backslashes_are_escaped_like_b3sum() {
        let entries = vec![Entry { path: "a\\b".into(), b3: H.into() }];
        let text = render(&entries).unwrap();
        assert_eq!(text, format!("\\{H}  a\\\\b\n"));
        assert_eq!(parse(&text).unwrap(), entries);
    }

    #[test]
    fn render_refuses_bad_paths_and_duplicates() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/", "a\nb"] {
            let e = render(&[Entry { path: bad.into(), b3: H.into() }]);
            assert!(matches!(e, Err(B3Error::BadPath { .. })), "{bad:?}");
        }
        let dup = [Entry { path: "a".into(), b3: H.into() }, Entry { path: "a".into(), b3: H.into() }];
        assert!(render(&dup).unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn parse_names_the_malformed_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "empty"),
            ("\n", 1, "empty"),
            (&format!("{H}  a\nnot a line\n"), 2, "expected `<64 hex digits>  <path>`"),
            (&format!("{H}  a\n{H} b\n"), 2, "two spaces"),
            (&format!("{H}  a\n{}  b\n", H.to_uppercase()), 2, "lowercase hex"),
            (&format!("{H}  /etc/shadow\n"), 1, "absolute path"),
            (&format!("{H}  a/../../etc/shadow\n"), 1, "`..` component"),
            (&format!("{H}  ..\n"), 1, "`..` component"),
            (&format!("{H}  a\n\n{H}  b\n"), 2, "expected"),
            (&format!("{H}  a\n{H}  a\n"), 2, "already listed on line 1"),
            (&format!("\\{H}  a\\q\n"), 1, "escape"),
            (&format!("\\{H}  a\\nb\n"), 1, "control character"),
            (&format!("{H}  a\rb\n"), 1, "control character"),
            (&format!("{H}  \n"), 1, "empty path"),
        ];
        for (text, line, needle) in cases {
            match parse(text) {
                Err(B3Error::Malformed { line: l, reason }) => {
                    assert_eq!(l, *line, "{text:?}: {reason}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let e = parse(&format!("{H}  ok\nxx\n")).unwrap_err().to_string();
        assert!(e.starts_with("B3SUMS line 2: "), "{e}");
    }

    #[test]
    fn parse_accepts_a_final_line_without_newline() {
        assert_eq!(parse(&format!("{H}  a")).unwrap(), vec![Entry { path: "a".into(), b3: H.into() }]);
    }

    #[test]
    fn write_then_verify_detects_each_problem() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir(d.join("x86_64")).unwrap();
        fs::write(d.join("x86_64/vmlinuz"), b"kernel").unwrap();
        fs::write(d.join("x86_64/rootfs.squashfs"), vec![7u8; 300_000]).unwrap();
        fs::write(d.join("manifest.json"), b"{}").unwrap();
        let files = vec!["x86_64/vmlinuz".into(), "manifest.json".into(), "x86_64/rootfs.squashfs".into()];
        let (path, entries) = write_b3sums(d, &files).unwrap();
        assert_eq!(path, d.join("B3SUMS"));
        assert_eq!(entries.len(), 3);
        let checks = verify_b3sums(d).unwrap();
        assert!(checks.iter().all(FileCheck::is_ok), "{checks:?}");
        assert_eq!(checks[0].path, "manifest.json");

        // One flipped byte in a large (mmap) file.
        let mut big = fs::read(d.join("x86_64/rootfs.squashfs")).unwrap();
        big[150_000] ^= 1;
        fs::write(d.join("x86_64/rootfs.squashfs"), &big).unwrap();
        fs::remove_file(d.join("x86_64/vmlinuz")).unwrap();
        let checks = verify_b3sums(d).unwrap();
        assert!(checks[0].is_ok());
        assert!(matches!(checks[1].outcome, Outcome::HashMismatch { .. }), "{:?}", checks[1]);
        assert_eq!(checks[2].outcome, Outcome::Missing);
        let text = checks[1].to_string();
        assert!(text.contains("x86_64/rootfs.squashfs: BLAKE3 mismatch: expected "), "{text}");

        fs::remove_dir_all(d.join("x86_64")).unwrap();
        fs::create_dir_all(d.join("x86_64/rootfs.squashfs")).unwrap();
        assert!(matches!(verify_b3sums(d).unwrap()[1].outcome, Outcome::Unreadable { .. }));
    }

    #[test]
    fn hostile_b3sums_is_refused_before_any_file_is_read() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("B3SUMS"), format!("{H}  ../../etc/passwd\n")).unwrap();
        let e = verify_b3sums(t.path()).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains(".."), "{e}");
        fs::write(t.path().join("B3SUMS"), vec![b'a'; MAX_B3SUMS_BYTES as usize + 1]).unwrap();
        assert!(matches!(verify_b3sums(t.path()), Err(B3Error::TooLarge { .. })));
        fs::remove_file(t.path().join("B3SUMS")).unwrap();
        let e = verify_b3sums(t.path()).unwrap_err().to_string();
        assert!(e.contains("B3SUMS"), "{e}");
    }
}
