//! The raw form of `user.toml` / `corp.toml`: serde types that mirror the TOML, with spans.
//!
//! Parsing keeps going after a mistake so that one run reports every problem of a file:
//! the document is first parsed into a spanned tree; unknown keys are reported (with a
//! "did you mean") and removed by walking that tree against the field lists of the raw types
//! themselves (read from their `Deserialize` impls, so the two cannot drift); then each
//! top-level section — and each `[ai.<provider>]` table — is deserialized on its own, so a
//! type error in one does not hide the others. `deny_unknown_fields` stays on every raw type as
//! a backstop. Nothing here checks values; that is `file`'s job.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Code, Diagnostic, Origin, suggest};

/// A whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub trust: Option<Spanned<RawTrust>>,
    pub resources: Option<RawResources>,
    pub environment: Option<RawEnvironment>,
    pub web: Option<RawWeb>,
    pub ai: Option<BTreeMap<Spanned<String>, RawProvider>>,
}

/// `[trust]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrust {
    pub public_keys: Option<Vec<Spanned<String>>>,
    pub public_key_files: Option<Vec<Spanned<String>>>,
}

/// `[resources]`: the keys of the image's `vm/resources.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub cpu_count: Option<Spanned<i64>>,
    pub ram_gb: Option<Spanned<i64>>,
    pub scratch_disk_size_gb: Option<Spanned<i64>>,
    pub log_bodies: Option<Spanned<bool>>,
    pub max_body_capture: Option<Spanned<i64>>,
    pub retention_days: Option<Spanned<i64>>,
    pub max_sessions: Option<Spanned<i64>>,
    pub min_content_sessions: Option<Spanned<i64>>,
    pub max_disk_gb: Option<Spanned<i64>>,
    pub terminated_retention_days: Option<Spanned<i64>>,
}

impl RawResources {
    /// The integer resources, by name (the names of defaults.json `vm.resources`).
    pub fn ints(&self) -> [(&'static str, Option<&Spanned<i64>>); 9] {
        [
            ("cpu_count", self.cpu_count.as_ref()),
            ("ram_gb", self.ram_gb.as_ref()),
            ("scratch_disk_size_gb", self.scratch_disk_size_gb.as_ref()),
            ("max_body_capture", self.max_body_capture.as_ref()),
            ("retention_days", self.retention_days.as_ref()),
            ("max_sessions", self.max_sessions.as_ref()),
            ("min_content_sessions", self.min_content_sessions.as_ref()),
            ("max_disk_gb", self.max_disk_gb.as_ref()),
            ("terminated_retention_days", self.terminated_retention_days.as_ref()),
        ]
    }
}

/// `[environment]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    pub hostname: Option<Spanned<String>>,
    pub vars: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

/// `[web]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeb {
    pub allow_read: Option<Spanned<bool>>,
    pub allow_write: Option<Spanned<bool>>,
    pub custom_allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub custom_block: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream_ca_file: Option<Spanned<String>>,
}

/// `[ai.<provider>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub enabled: Option<Spanned<bool>>,
    pub api_key: Option<Spanned<String>>,
}

/// Parses `text` (read from `file`) into its raw form, pushing every problem onto `diags`.
/// Returns what could be read: sections with errors are left out.
pub(crate) fn parse(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> RawConfig {
    let at = |span: &Range<usize>| Origin::of(file, text, span).location();
    let mut doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            diags.push(Diagnostic::new(Code::TomlSyntax, at(&span), format!("invalid TOML: {}", e.message().trim())));
            return RawConfig::default();
        }
    };
    let doc_span = doc.span();
    remove_unknown_keys(doc.get_mut(), &at, diags);

    let mut raw = RawConfig::default();
    for (key, value) in std::mem::take(doc.get_mut()) {
        let name = key.get_ref().to_string();
        if name == "ai" {
            // One provider at a time, so that a mistake in one does not hide the others.
            let Some(table) = value.get_ref().as_table() else {
                push_section(&mut raw, key, value, &doc_span, &at, diags);
                continue;
            };
            let providers = raw.ai.get_or_insert_with(BTreeMap::new);
            for (pkey, pvalue) in table.clone() {
                let pname = Spanned::new(pkey.span(), pkey.get_ref().to_string());
                match from_value::<RawProvider>(pvalue) {
                    Ok(p) => {
                        providers.insert(pname, p);
                    }
                    Err(e) => diags.push(serde_diag(&e, &format!("ai.{}", pname.get_ref()), &pkey.span(), &at)),
                }
            }
        } else {
            push_section(&mut raw, key, value, &doc_span, &at, diags);
        }
    }
    raw
}

/// Deserializes one top-level section on its own and moves it into `raw`.
fn push_section(
    raw: &mut RawConfig,
    key: Spanned<toml::de::DeString<'_>>,
    value: Spanned<DeValue<'_>>,
    doc_span: &Range<usize>,
    at: &impl Fn(&Range<usize>) -> super::diag::Location,
    diags: &mut Vec<Diagnostic>,
) {
    let name = key.get_ref().to_string();
    let key_span = key.span();
    let mut one = DeTable::new();
    one.insert(key, value);
    match RawConfig::deserialize(Spanned::new(doc_span.clone(), one).into_deserializer()) {
        Ok(piece) => {
            raw.trust = raw.trust.take().or(piece.trust);
            raw.resources = raw.resources.take().or(piece.resources);
            raw.environment = raw.environment.take().or(piece.environment);
            raw.web = raw.web.take().or(piece.web);
            raw.ai = raw.ai.take().or(piece.ai);
        }
        Err(e) => diags.push(serde_diag(&e, &name, &key_span, at)),
    }
}

fn from_value<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    // A value deserializes through a one-key table: `Deserializer` is built from tables only.
    #[derive(Deserialize)]
    struct Wrap<T> {
        v: T,
    }
    let span = value.span();
    let mut one = DeTable::new();
    one.insert(Spanned::new(span.clone(), "v".into()), value);
    Wrap::<T>::deserialize(Spanned::new(span, one).into_deserializer()).map(|w| w.v)
}

/// A serde error as a diagnostic, at the error's span (or the section's key).
fn serde_diag(
    e: &toml::de::Error,
    section: &str,
    fallback: &Range<usize>,
    at: &impl Fn(&Range<usize>) -> super::diag::Location,
) -> Diagnostic {
    let span = e.span().unwrap_or_else(|| fallback.clone());
    let msg = e
        .message()
        .trim()
        .replace("invalid type: ", "wrong type: found ")
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    Diagnostic::new(Code::WrongType, at(&span), format!("in [{section}]: {msg}"))
}

/// Reports and removes every key that the raw types do not know, at any depth we check.
fn remove_unknown_keys(
    doc: &mut DeTable<'_>,
    at: &impl Fn(&Range<usize>) -> super::diag::Location,
    diags: &mut Vec<Diagnostic>,
) {
    check_keys(doc, "", fields_of::<RawConfig>(), at, diags);
    for (key, value) in doc.iter_mut() {
        let Some(table) = table_mut(value.get_mut()) else { continue };
        match key.get_ref().as_ref() {
            "trust" => check_keys(table, "trust", fields_of::<RawTrust>(), at, diags),
            "resources" => check_keys(table, "resources", fields_of::<RawResources>(), at, diags),
            "environment" => check_keys(table, "environment", fields_of::<RawEnvironment>(), at, diags),
            "web" => check_keys(table, "web", fields_of::<RawWeb>(), at, diags),
            "ai" => {
                for (pkey, pvalue) in table.iter_mut() {
                    if let Some(p) = table_mut(pvalue.get_mut()) {
                        let section = format!("ai.{}", pkey.get_ref());
                        check_keys(p, &section, fields_of::<RawProvider>(), at, diags);
                    }
                }
            }
            _ => {}
        }
    }
}

fn table_mut<'a, 'i>(value: &'a mut DeValue<'i>) -> Option<&'a mut DeTable<'i>> {
    match value {
        DeValue::Table(t) => Some(t),
        _ => None,
    }
}

fn check_keys(
    table: &mut DeTable<'_>,
    section: &str,
    known: &'static [&'static str],
    at: &impl Fn(&Range<usize>) -> super::diag::Location,
    diags: &mut Vec<Diagnostic>,
) {
    let unknown: Vec<_> = table.keys().filter(|k| !known.contains(&k.get_ref().as_ref())).cloned().collect();
    for key in unknown {
        table.remove(&key);
        let name = key.get_ref();
        let what = if section.is_empty() {
            format!("unknown section `[{name}]`")
        } else {
            format!("unknown key `{name}` in [{section}]")
        };
        let allowed = known.join(", ");
        let help = match suggest(name, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`? allowed: {allowed}"),
            None => format!("allowed: {allowed}"),
        };
        diags.push(Diagnostic::new(Code::UnknownKey, at(&key.span()), what).help(help));
    }
}

/// The field names of a struct type, as its derived `Deserialize` declares them.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let cell = Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&cell));
    cell.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_come_from_the_raw_types() {
        assert_eq!(fields_of::<RawConfig>(), ["trust", "resources", "environment", "web", "ai"]);
        assert_eq!(fields_of::<RawProvider>(), ["enabled", "api_key"]);
        assert_eq!(fields_of::<RawResources>().len(), RawResources::default().ints().len() + 1);
    }
}
