//! Source files of an image definition, held in memory with line indexes.
//!
//! Every diagnostic points into a [`SourceFile`] by byte span; this module turns spans into
//! 1-based `line:col` (columns count characters, not bytes) and gives the text of a line for
//! snippets. Reading is defensive: size limit, UTF-8 check, directories and unreadable files
//! become [`ReadError`]s that the loader reports as diagnostics, never panics.

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Largest config file we read. Real ones are a few KiB; anything bigger is a mistake.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub(crate) u32);

/// A span inside one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The file.
    pub file: FileId,
    /// Byte range inside the file's text.
    pub span: Range<usize>,
}

/// One file's text and where its lines start.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the image directory, with `/` separators (e.g. `config/build.toml`).
    pub rel_path: String,
    /// The file's text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Wraps already-read text.
    pub fn new(rel_path: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile { rel_path: rel_path.into(), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset, clamped to the text.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let col = self.text[self.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// The text of a 1-based line, without its line terminator.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else { return "" };
        let end = self.line_starts.get(line).map_or(self.text.len(), |&e| e);
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// All files read while loading one image definition.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        FileId(u32::try_from(self.files.len() - 1).expect("fewer than 2^32 files"))
    }

    /// The file with this id.
    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// Finds a file by its relative path.
    pub fn find(&self, rel_path: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.rel_path == rel_path).map(|i| FileId(i as u32))
    }
}

/// Why a file could not be read as config text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The path does not exist.
    Missing,
    /// A directory (or other non-file) where a file was expected.
    NotAFile,
    /// Larger than [`MAX_CONFIG_BYTES`].
    TooLarge { size: u64 },
    /// Not valid UTF-8; `valid_prefix` is the text before the first bad byte.
    NotUtf8 { valid_prefix: String, offset: usize },
    /// Any other I/O error (permissions, …).
    Io(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => write!(f, "file not found"),
            ReadError::NotAFile => write!(f, "expected a file, found a directory or special file"),
            ReadError::TooLarge { size } => {
                write!(f, "file is {size} bytes; config files are limited to {MAX_CONFIG_BYTES} bytes")
            }
            ReadError::NotUtf8 { offset, .. } => {
                write!(f, "file is not valid UTF-8 (first bad byte at offset {offset})")
            }
            ReadError::Io(e) => write!(f, "cannot read file: {e}"),
        }
    }
}

/// Reads a config file as UTF-8 text with the size limit.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(e.to_string())),
    };
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge { size: meta.len() });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| ReadError::Io(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge { size: bytes.len() as u64 });
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        ReadError::NotUtf8 { valid_prefix: String::from_utf8_lossy(&bytes[..offset]).into_owned(), offset }
    })
}

/// Relative path with `/` separators, for display and for [`SourceFile::rel_path`].
pub fn rel_string(root: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf());
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars_and_lines() {
        let f = SourceFile::new("a.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        // 'é' is two bytes; the '=' after "bé " is the 4th character (b, é, space, =).
        assert_eq!(f.line_col(10), (2, 4));
        assert_eq!(f.line_text(2), "bé = \"x\"");
        assert_eq!(f.line_col(10_000), (3, 1));
    }

    #[test]
    fn read_text_rejects_dirs_big_and_binary() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_text(dir.path()), Err(ReadError::NotAFile));
        assert_eq!(read_text(&dir.path().join("nope")), Err(ReadError::Missing));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        assert!(matches!(read_text(&big), Err(ReadError::TooLarge { .. })));
        let bin = dir.path().join("bin.toml");
        std::fs::write(&bin, b"a = 1\n\xff\xfe").unwrap();
        match read_text(&bin) {
            Err(ReadError::NotUtf8 { offset, valid_prefix }) => {
                assert_eq!(offset, 6);
                assert_eq!(valid_prefix, "a = 1\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
