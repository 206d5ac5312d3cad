//! The raw layer: TOML files read into structs that mirror them, every value with its span.
//!
//! Nothing here judges *values*; it checks shape only: syntax (E002), types (E003), required
//! keys (E001), unknown keys with a "did you mean" (E011), and the expected top-level table
//! (E012). It keeps going after a problem so `validate` can report everything in one run.
//! Semantic checks (ranges, patterns, cross-file rules) live in [`crate::validate`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Code, Diagnostic, suggest};
use crate::source::{FileId, Loc};

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    /// The value.
    pub value: T,
    /// Its span.
    pub loc: Loc,
}

impl<T> Sp<T> {
    /// Maps the value, keeping the location.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sp<U> {
        Sp { value: f(self.value), loc: self.loc }
    }
}

/// `(key location, value)` pairs of a string table such as `env = { A = "b" }`.
pub type StrMap = BTreeMap<String, (Loc, Sp<String>)>;

/// A table entry: its key (with span) and its value.
pub type Keyed<T> = (Sp<String>, T);

/// Where diagnostics accumulate while reading.
#[derive(Debug, Default)]
pub struct Sink(RefCell<Vec<Diagnostic>>);

impl Sink {
    /// Records a diagnostic.
    pub fn push(&self, d: Diagnostic) {
        self.0.borrow_mut().push(d);
    }
    /// Takes everything recorded.
    pub fn take(self) -> Vec<Diagnostic> {
        self.0.into_inner()
    }
}

/// Parses a file; syntax errors become E002 diagnostics and yield `None`.
pub fn parse_file<'i>(file: FileId, text: &'i str, sink: &Sink) -> Option<DeTable<'i>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(table.into_inner());
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', "; ");
        sink.push(
            Diagnostic::at(Code::TomlSyntax, Loc { file, span }, format!("TOML syntax error: {msg}"))
                .help("see https://toml.io for the syntax; strings need quotes, tables need [brackets]"),
        );
    }
    None
}

/// Reads one TOML table, recording which keys were looked at.
#[derive(Debug)]
pub struct Reader<'a, 'i> {
    file: FileId,
    table: &'a DeTable<'i>,
    /// Span of the table's key (or 0..0 for a document root), for "missing field" diagnostics.
    key_span: Range<usize>,
    /// Dotted name for messages, e.g. `build.architectures.x86_64`.
    name: String,
    known: RefCell<Vec<&'static str>>,
    sink: &'a Sink,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Reader<'a, 'i> {
    /// A reader over a document root.
    pub fn root(file: FileId, table: &'a DeTable<'i>, sink: &'a Sink) -> Self {
        Reader { file, table, key_span: 0..0, name: String::new(), known: RefCell::new(Vec::new()), sink }
    }

    fn loc(&self, span: Range<usize>) -> Loc {
        Loc { file: self.file, span }
    }

    /// The file being read.
    pub fn file(&self) -> FileId {
        self.file
    }

    /// Location of this table's key (its header).
    pub fn header_loc(&self) -> Loc {
        self.loc(self.key_span.clone())
    }

    /// Display name, e.g. `[build.architectures.x86_64]`.
    pub fn display(&self) -> String {
        if self.name.is_empty() { "the file's top level".into() } else { format!("[{}]", self.name) }
    }

    fn child_name(&self, key: &str) -> String {
        if self.name.is_empty() { key.to_string() } else { format!("{}.{key}", self.name) }
    }

    /// Keys present in the table, with their spans, in sorted order.
    pub fn keys(&self) -> Vec<Sp<String>> {
        self.table.iter().map(|(k, _)| Sp { value: k.get_ref().to_string(), loc: self.loc(k.span()) }).collect()
    }

    /// True when the key is present.
    pub fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    fn get(&self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.borrow_mut().push(key);
        self.table.get(key)
    }

    fn wrong_type(&self, key: &str, v: &Spanned<DeValue<'i>>, want: &str) {
        self.sink.push(
            Diagnostic::at(
                Code::WrongType,
                self.loc(v.span()),
                format!("`{key}` in {} must be {want}, found {}", self.display(), type_name(v.get_ref())),
            )
            .help(format!("write `{key}` as {want}")),
        );
    }

    /// Records E001 for a missing key.
    pub fn missing(&self, key: &str, help: &str) {
        self.sink.push(
            Diagnostic::at(
                Code::MissingField,
                self.header_loc(),
                format!("missing required field `{key}` in {}", self.display()),
            )
            .help(help.to_string()),
        );
    }

    /// Optional string.
    pub fn str(&self, key: &'static str) -> Option<Sp<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Sp { value: s.to_string(), loc: self.loc(v.span()) }),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// Required string (E001 when absent).
    pub fn req_str(&self, key: &'static str) -> Option<Sp<String>> {
        if !self.has(key) {
            self.known.borrow_mut().push(key);
            self.missing(key, &format!("add `{key} = \"...\"` to {}", self.display()));
            return None;
        }
        self.str(key)
    }

    /// Optional boolean.
    pub fn bool(&self, key: &'static str) -> Option<Sp<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp { value: *b, loc: self.loc(v.span()) }),
            _ => {
                self.wrong_type(key, v, "a boolean (true or false)");
                None
            }
        }
    }

    /// Optional integer.
    pub fn int(&self, key: &'static str) -> Option<Sp<i64>> {
        let v = self.get(key)?;
        self.as_int(key, v)
    }

    fn as_int(&self, key: &str, v: &Spanned<DeValue<'i>>) -> Option<Sp<i64>> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Sp { value: n, loc: self.loc(v.span()) }),
                Err(_) => {
                    self.sink.push(
                        Diagnostic::at(
                            Code::OutOfRange,
                            self.loc(v.span()),
                            format!("`{key}` in {} is out of range", self.display()),
                        )
                        .help("the number does not fit in a 64-bit integer; use a much smaller value"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(key, v, "an integer");
                None
            }
        }
    }

    fn array(&self, key: &'static str) -> Option<(&'a [Spanned<DeValue<'i>>], Loc)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some((&a[..], self.loc(v.span()))),
            _ => {
                self.wrong_type(key, v, "an array");
                None
            }
        }
    }

    /// Optional array of strings; non-string items are reported and dropped.
    pub fn str_list(&self, key: &'static str) -> Option<Sp<Vec<Sp<String>>>> {
        let (items, loc) = self.array(key)?;
        let mut out = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(s) => out.push(Sp { value: s.to_string(), loc: self.loc(item.span()) }),
                _ => self.wrong_type(key, item, "an array of strings"),
            }
        }
        Some(Sp { value: out, loc })
    }

    /// Optional array of integers.
    pub fn int_list(&self, key: &'static str) -> Option<Sp<Vec<Sp<i64>>>> {
        let (items, loc) = self.array(key)?;
        Some(Sp { value: items.iter().filter_map(|i| self.as_int(key, i)).collect(), loc })
    }

    /// Optional table of string values (`env = { A = "b" }`), keys with their spans.
    pub fn str_map(&self, key: &'static str) -> Option<Sp<StrMap>> {
        let sub = self.table(key)?;
        let mut out = BTreeMap::new();
        for (k, v) in sub.table.iter() {
            match v.get_ref() {
                DeValue::String(s) => {
                    out.insert(
                        k.get_ref().to_string(),
                        (sub.loc(k.span()), Sp { value: s.to_string(), loc: sub.loc(v.span()) }),
                    );
                }
                _ => sub.wrong_type(k.get_ref(), v, "a string"),
            }
        }
        Some(Sp { value: out, loc: sub.header_loc() })
    }

    /// Optional sub-table.
    pub fn table(&self, key: &'static str) -> Option<Reader<'a, 'i>> {
        self.known.borrow_mut().push(key);
        let (k, v) = self.table.get_key_value(key)?;
        self.as_table(k.get_ref(), k.span(), v)
    }

    fn as_table(&self, key: &str, key_span: Range<usize>, v: &'a Spanned<DeValue<'i>>) -> Option<Reader<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Reader {
                file: self.file,
                table: t,
                key_span,
                name: self.child_name(key),
                known: RefCell::new(Vec::new()),
                sink: self.sink,
            }),
            _ => {
                self.wrong_type(key, v, "a table");
                None
            }
        }
    }

    /// Every entry of a table whose values are all tables (`[build.architectures.*]`),
    /// as (key, reader) pairs in key order.
    pub fn table_map(&self, key: &'static str) -> Option<Sp<Vec<Keyed<Reader<'a, 'i>>>>> {
        let sub = self.table(key)?;
        let entries = sub.all_tables();
        sub.known.borrow_mut().clear();
        Some(Sp { value: entries, loc: sub.header_loc() })
    }

    /// Every entry of this table, each expected to be a table, in key order.
    pub fn all_tables(&self) -> Vec<(Sp<String>, Reader<'a, 'i>)> {
        let mut out = Vec::new();
        for (k, v) in self.table.iter() {
            if let Some(r) = self.as_table(k.get_ref(), k.span(), v) {
                out.push((Sp { value: k.get_ref().to_string(), loc: self.loc(k.span()) }, r));
            }
        }
        out
    }

    /// Optional array of tables (`[[image.changelog]]`).
    pub fn table_list(&self, key: &'static str) -> Option<Vec<Reader<'a, 'i>>> {
        let (items, _) = self.array(key)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Reader {
                    file: self.file,
                    table: t,
                    key_span: item.span(),
                    name: format!("{}[{i}]", self.child_name(key)),
                    known: RefCell::new(Vec::new()),
                    sink: self.sink,
                }),
                _ => self.wrong_type(key, item, "an array of tables"),
            }
        }
        Some(out)
    }

    /// Reports every key that no accessor asked for (E011), with a suggestion.
    pub fn finish(&self, extra_known: &[&'static str]) {
        let known = self.known.borrow();
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if known.contains(&key) || extra_known.contains(&key) {
                continue;
            }
            let candidates: Vec<&str> = known.iter().chain(extra_known).copied().collect();
            let mut d = Diagnostic::at(
                Code::UnknownKey,
                self.loc(k.span()),
                format!("unknown key `{key}` in {}", self.display()),
            );
            d = match suggest(key, candidates.iter().copied()) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None if candidates.is_empty() => d.help("this table takes no keys"),
                None => {
                    let mut c = candidates.clone();
                    c.sort_unstable();
                    c.dedup();
                    d.help(format!("expected one of: {}", c.join(", ")))
                }
            };
            self.sink.push(d);
        }
    }

    /// Marks a key as known without reading it (keys read through [`Reader::keys`]).
    pub fn mark(&self, key: &'static str) {
        self.known.borrow_mut().push(key);
    }
}
