//! Validation: read an image directory into [`RawConfig`], then check it into a [`Model`].
//!
//! [`load`] never stops at the first problem: every file is read, every table checked, and
//! every diagnostic returned in one [`Report`]. A model is produced only when there are no
//! errors. Cross-file rules (duplicate keys, W001, W008) run after all files are read.

pub mod checks;
mod semantic;

use std::path::Path;

use crate::diag::{Code, Diagnostic, Report};
use crate::model::Model;
use crate::raw::{Reader, Sink, Sp, parse_file};
use crate::rawconfig::{self, RawConfig};
use crate::source::{Loc, ReadError, SourceFile, SourceMap, read_text, rel_string};

/// The result of loading an image definition.
#[derive(Debug)]
pub struct Loaded {
    /// Files read and every diagnostic.
    pub report: Report,
    /// The model, when there are no errors.
    pub model: Option<Model>,
}

/// Single-table files: path under `config/`, expected top-level table, whether required.
const SINGLE_FILES: &[(&str, &str, bool)] = &[
    ("build.toml", "build", true),
    ("manifest.toml", "image", false),
    ("security/web.toml", "web", false),
    ("vm/resources.toml", "resources", false),
    ("vm/environment.toml", "environment", false),
];

/// Further top-level tables a single-table file may hold: (path under `config/`, table).
const COMPANION_TABLES: &[(&str, &str)] = &[("build.toml", "audit")];

/// Collection directories under `config/`.
const COLLECTIONS: &[&str] = &["ai", "packages", "mcp"];

/// Loads and validates the image definition in `dir`.
pub fn load(dir: &Path) -> Loaded {
    let mut sources = SourceMap::default();
    let sink = Sink::default();
    let mut raw = RawConfig::default();
    let config = dir.join("config");

    if !config.is_dir() {
        let d = if config.exists() {
            Diagnostic::at_path(Code::UnreadableFile, "config", "`config` is not a directory")
        } else {
            Diagnostic::at_path(Code::MissingField, "config", "missing `config/` directory")
        };
        sink.push(d.help("create one with `capsem-builder init DIR`"));
        return Loaded { report: Report { sources, diagnostics: sink.take() }, model: None };
    }

    for (rel, table, required) in SINGLE_FILES {
        let rel_path = format!("config/{rel}");
        let Some(id) = read_into(&mut sources, dir, &rel_path, *required, &sink) else { continue };
        let file = sources.get(id);
        let Some(doc) = parse_file(id, &file.text, &sink) else { continue };
        let root = Reader::root(id, &doc, &sink);
        let companions: Vec<&'static str> =
            COMPANION_TABLES.iter().filter(|(file, _)| file == rel).map(|(_, t)| *t).collect();
        for companion in &companions {
            if let Some(r) = root.table(companion) {
                match *companion {
                    "audit" => raw.audit = Some(rawconfig::read_audit(&r)),
                    _ => unreachable!("COMPANION_TABLES lists only known tables"),
                }
            }
        }
        let Some(r) = top_table(&root, table, &companions, &rel_path, &sink) else { continue };
        match *table {
            "build" => raw.build = Some(rawconfig::read_build(&r)),
            "image" => raw.image = Some(rawconfig::read_image(&r)),
            "web" => raw.web = Some(rawconfig::read_web(&r)),
            "resources" => raw.resources = Some(rawconfig::read_resources(&r)),
            "environment" => raw.environment = Some(rawconfig::read_environment(&r)),
            _ => unreachable!("SINGLE_FILES lists only known tables"),
        }
    }

    for coll in COLLECTIONS {
        let coll_dir = config.join(coll);
        if !coll_dir.exists() {
            continue;
        }
        if !coll_dir.is_dir() {
            sink.push(
                Diagnostic::at_path(Code::UnreadableFile, format!("config/{coll}"), format!("`config/{coll}` is not a directory"))
                    .help(format!("`config/{coll}/` must be a directory of `*.toml` files; move this file to `config/{coll}/<name>.toml`")),
            );
            continue;
        }
        let mut entries: Vec<_> = match std::fs::read_dir(&coll_dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) => {
                sink.push(
                    Diagnostic::at_path(
                        Code::UnreadableFile,
                        format!("config/{coll}"),
                        format!("cannot list `config/{coll}/`: {e}"),
                    )
                    .help("make the directory readable by the user running capsem-builder"),
                );
                continue;
            }
        };
        entries.sort();
        for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let rel_path = rel_string(dir, &path);
            let Some(id) = read_into(&mut sources, dir, &rel_path, true, &sink) else { continue };
            let file = sources.get(id);
            let Some(doc) = parse_file(id, &file.text, &sink) else { continue };
            let root = Reader::root(id, &doc, &sink);
            let tables = root.all_tables();
            if tables.is_empty() {
                let what = match *coll {
                    "ai" => "an AI provider table such as `[my_provider]`",
                    "packages" => "a package set table such as `[tools]`",
                    _ => "an MCP server table such as `[my_server]`",
                };
                sink.push(
                    Diagnostic::at_path(
                        Code::UnexpectedTopLevel,
                        rel_path.clone(),
                        format!("`{rel_path}` defines no table"),
                    )
                    .help(format!("add {what}, or delete the file")),
                );
            }
            for (key, r) in tables {
                let key: Sp<String> = key;
                match *coll {
                    "ai" => raw.ai.push(rawconfig::read_provider(key, &r)),
                    "packages" => raw.packages.push(rawconfig::read_package_set(key, &r)),
                    _ => raw.mcp.push(rawconfig::read_mcp(key, &r)),
                }
            }
        }
    }

    let model = semantic::check(dir, &raw, &sources, &sink);
    let diagnostics = sink.take();
    let has_errors = diagnostics.iter().any(|d| d.severity() == crate::diag::Severity::Error);
    Loaded { report: Report { sources, diagnostics }, model: if has_errors { None } else { model } }
}

/// Reads a file into the source map; problems become E001/E013 diagnostics.
fn read_into(
    sources: &mut SourceMap,
    dir: &Path,
    rel_path: &str,
    required: bool,
    sink: &Sink,
) -> Option<crate::source::FileId> {
    match read_text(&dir.join(rel_path)) {
        Ok(text) => Some(sources.add(SourceFile::new(rel_path, text))),
        Err(ReadError::Missing) => {
            if required {
                sink.push(
                    Diagnostic::at_path(Code::MissingField, rel_path, format!("missing required file `{rel_path}`"))
                        .help("every image needs config/build.toml with a [build] table; `capsem-builder init` writes one"),
                );
            }
            None
        }
        Err(ReadError::NotUtf8 { valid_prefix, offset }) => {
            let id = sources.add(SourceFile::new(rel_path, valid_prefix));
            sink.push(
                Diagnostic::at(
                    Code::UnreadableFile,
                    Loc { file: id, span: offset..offset },
                    format!("`{rel_path}` is not valid UTF-8 (first bad byte at offset {offset})"),
                )
                .help("TOML files must be UTF-8 text; re-save the file as UTF-8"),
            );
            None
        }
        Err(e) => {
            let help = match e {
                ReadError::NotAFile => format!("remove the directory `{rel_path}` and create a TOML file there"),
                ReadError::TooLarge { .. } => {
                    "config files are at most 1 MiB; split it or remove generated content".into()
                }
                _ => "make the file readable by the user running capsem-builder".into(),
            };
            sink.push(
                Diagnostic::at_path(Code::UnreadableFile, rel_path, format!("cannot read `{rel_path}`: {e}"))
                    .help(help),
            );
            None
        }
    }
}

/// Finds the one expected top-level table in a single-table file (E012 otherwise);
/// `companions` are the other tables the file may hold (read by the caller).
///
/// One mistake gives one diagnostic: a misspelt header gets a "did you mean"; keys written
/// without any header get a single "add a `[name]` header"; an empty file is reported as such.
fn top_table<'a, 'i>(
    root: &Reader<'a, 'i>,
    name: &'static str,
    companions: &[&str],
    rel_path: &str,
    sink: &Sink,
) -> Option<Reader<'a, 'i>> {
    let strays: Vec<Sp<String>> =
        root.keys().into_iter().filter(|k| k.value != name && !companions.contains(&k.value.as_str())).collect();
    let holds = std::iter::once(name).chain(companions.iter().copied()).map(|t| format!("[{t}]")).collect::<Vec<_>>();
    let holds = holds.join(" and ");
    if !root.has(name) {
        let d = match strays.first() {
            None => {
                Diagnostic::at_path(Code::UnexpectedTopLevel, rel_path, format!("`{rel_path}` has no [{name}] table"))
                    .help(format!("start the file with a `[{name}]` header, or delete the file to use the defaults"))
            }
            Some(k) => match strays.iter().find(|k| crate::diag::suggest(&k.value, [name]).is_some()) {
                Some(typo) => Diagnostic::at(
                    Code::UnexpectedTopLevel,
                    typo.loc.clone(),
                    format!("unexpected top-level table `{}` in `{rel_path}`", typo.value),
                )
                .help(format!("did you mean `[{name}]`? this file holds only {holds}")),
                None => Diagnostic::at(
                    Code::UnexpectedTopLevel,
                    k.loc.clone(),
                    format!("`{}` is outside any table; `{rel_path}` holds its settings under [{name}]", k.value),
                )
                .help(format!("add a `[{name}]` header above the first key")),
            },
        };
        sink.push(d);
        return None;
    }
    for key in strays {
        let help = match crate::diag::suggest(&key.value, companions.iter().copied()) {
            Some(c) => format!("did you mean `[{c}]`?"),
            None => format!("move it under [{name}] or to the file that owns it"),
        };
        sink.push(
            Diagnostic::at(
                Code::UnexpectedTopLevel,
                key.loc.clone(),
                format!("unexpected top-level key `{}` in `{rel_path}`; this file holds only {holds}", key.value),
            )
            .help(help),
        );
    }
    root.table(name)
}

#[cfg(test)]
mod tests;
