//! Unit tests for loading: robustness against bad files and the all-diagnostics-at-once rule.
//! Per-code golden tests live in builder/tests/golden/.

use std::path::Path;

use super::load;
use crate::diag::Code;

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

const BUILD: &str = r#"[build]
[build.architectures.x86_64]
docker_platform = "linux/amd64"
rust_target = "x86_64-unknown-linux-gnu"
kernel_branch = "6.1"
kernel_image = "arch/x86/boot/bzImage"
defconfig = "kernel/defconfig.x86_64"
[build.architectures.x86_64.bootstrap]
suite = "bookworm"
mirror = "http://deb.debian.org/debian"
"#;

fn minimal(dir: &Path) {
    write(dir, "config/build.toml", BUILD.as_bytes());
    write(dir, "config/kernel/defconfig.x86_64", b"CONFIG_64BIT=y\n");
    write(dir, "artifacts/capsem-init", b"#!/bin/sh\n");
    write(dir, "artifacts/capsem-bashrc", b"");
}

fn codes(dir: &Path) -> Vec<(Code, String)> {
    let l = load(dir);
    let mut v: Vec<_> = l
        .report
        .to_json("")
        .diagnostics
        .into_iter()
        .map(|d| (Code::ALL.iter().copied().find(|c| c.as_str() == d.code).unwrap(), d.file))
        .collect();
    v.sort();
    v
}

#[test]
fn minimal_tree_is_clean_and_has_defaults() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    let l = load(t.path());
    assert!(l.report.diagnostics.is_empty(), "{}", l.report.render("", false));
    let m = l.model.unwrap();
    assert_eq!(m.resources.values["cpu_count"], 4);
    assert_eq!(m.web.http_upstream_ports, vec![80]);
    assert_eq!(m.build.compression_level, Some(15));
}

#[test]
fn no_config_dir_is_e001() {
    let t = tempfile::tempdir().unwrap();
    assert_eq!(codes(t.path()), vec![(Code::MissingField, "config".into())]);
}

#[test]
fn bad_files_each_get_a_diagnostic_and_nothing_panics() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    write(t.path(), "config/manifest.toml", b"");
    write(t.path(), "config/vm/resources.toml", b"[resources]\ncpu_count = \xff\n");
    std::fs::create_dir_all(t.path().join("config/vm/environment.toml")).unwrap();
    write(t.path(), "config/security/web.toml", b"[web\nallow_read = tru");
    write(t.path(), "config/ai/x.toml", b"");
    write(t.path(), "config/mcp/m.toml", b"m = 3\n");
    write(t.path(), "config/packages/huge.toml", &vec![b'#'; 2 * 1024 * 1024]);
    let got = codes(t.path());
    let want = [
        (Code::UnexpectedTopLevel, "config/ai/x.toml"),
        (Code::UnexpectedTopLevel, "config/manifest.toml"),
        (Code::WrongType, "config/mcp/m.toml"),
        (Code::UnreadableFile, "config/packages/huge.toml"),
        (Code::UnreadableFile, "config/vm/environment.toml"),
        (Code::UnreadableFile, "config/vm/resources.toml"),
    ];
    for (code, file) in want {
        assert!(got.iter().any(|(c, f)| *c == code && f == file), "missing {code} for {file} in {got:?}");
    }
    assert!(got.iter().any(|(c, f)| *c == Code::TomlSyntax && f == "config/security/web.toml"), "{got:?}");
    assert!(load(t.path()).model.is_none());
}

#[test]
fn errors_in_three_files_are_all_reported_against_their_own_file() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    write(t.path(), "config/vm/resources.toml", b"[resources]\ncpu_count = 64\n");
    write(t.path(), "config/security/web.toml", b"[web]\ncustom_allow = [\"https://x.com\"]\n");
    write(t.path(), "config/ai/a.toml", b"[a]\nnmae = \"A\"\n");
    let got = codes(t.path());
    assert!(got.contains(&(Code::OutOfRange, "config/vm/resources.toml".into())), "{got:?}");
    assert!(got.contains(&(Code::BadDomain, "config/security/web.toml".into())), "{got:?}");
    assert!(got.contains(&(Code::UnknownKey, "config/ai/a.toml".into())), "{got:?}");
    assert!(got.contains(&(Code::MissingField, "config/ai/a.toml".into())), "{got:?}");
}

#[test]
fn any_package_set_key_reaches_the_model() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    write(
        t.path(),
        "config/packages/devtools.toml",
        b"[devtools]\nname = \"Dev tools\"\nmanager = \"apt\"\npackages = [\"ripgrep=13.0.0-4+b2\"]\n[devtools.network]\ndomains = [\"deb.debian.org\"]\n",
    );
    let m = load(t.path()).model.expect("valid");
    assert_eq!(m.packages.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["devtools"]);
    let plan = crate::plan::rootfs(&m, crate::model::Arch::X86_64, &[], None).unwrap();
    assert_eq!(plan.apt_steps.len(), 1);
    assert_eq!(plan.apt_steps[0].packages, ["ripgrep=13.0.0-4+b2"]);
}

fn with_audit(dir: &Path, audit: &str) {
    minimal(dir);
    write(dir, "config/build.toml", format!("{BUILD}\n{audit}").as_bytes());
}

#[test]
fn audit_defaults_when_absent() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    let m = load(t.path()).model.expect("valid");
    assert_eq!(m.audit, crate::model::AuditPolicy::default());
    assert_eq!(m.audit.fail_on, crate::model::FailOn::High);
    assert!(m.audit.allow.is_empty());
}

#[test]
fn audit_table_reaches_the_model() {
    let t = tempfile::tempdir().unwrap();
    with_audit(t.path(), "[audit]\nfail_on = \"medium\"\nallow = [\"GHSA-jfh8-c2jp-5v3q\", \"CVE-2024-2398\"]\n");
    let l = load(t.path());
    assert!(l.report.diagnostics.is_empty(), "{}", l.report.render("", false));
    let m = l.model.expect("valid");
    assert_eq!(m.audit.fail_on, crate::model::FailOn::Medium);
    assert_eq!(m.audit.allow.iter().map(String::as_str).collect::<Vec<_>>(), ["CVE-2024-2398", "GHSA-jfh8-c2jp-5v3q"]);
    // [audit] may come before [build] and may be empty
    write(t.path(), "config/build.toml", format!("[audit]\n{BUILD}").as_bytes());
    assert_eq!(load(t.path()).model.expect("valid").audit, crate::model::AuditPolicy::default());
}

#[test]
fn audit_shape_errors_are_reported() {
    let t = tempfile::tempdir().unwrap();
    with_audit(t.path(), "[audit]\nfail_on = \"severe\"\nallow = \"CVE-2024-2398\"\nallowed = []\n");
    let got: Vec<Code> = codes(t.path()).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, [Code::WrongType, Code::InvalidChoice, Code::UnknownKey]);
    with_audit(t.path(), "[audit]\nallow = [\"CVE-2024-2398\", 7, \"bogus\"]\nfail_on = 3\n");
    let got: Vec<Code> = codes(t.path()).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, [Code::WrongType, Code::WrongType, Code::BadAdvisoryId]);
    write(t.path(), "config/build.toml", format!("audit = 3\n{BUILD}").as_bytes());
    let got: Vec<Code> = codes(t.path()).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, [Code::WrongType]);
}

#[test]
fn audit_in_another_file_or_misspelt_is_e012() {
    let t = tempfile::tempdir().unwrap();
    minimal(t.path());
    write(t.path(), "config/security/web.toml", b"[web]\n[audit]\nfail_on = \"low\"\n");
    write(t.path(), "config/build.toml", format!("{BUILD}\n[audti]\nfail_on = \"low\"\n").as_bytes());
    let l = load(t.path());
    let text = l.report.render("", false);
    assert!(text.contains("this file holds only [build] and [audit]"), "{text}");
    assert!(text.contains("did you mean `[audit]`?"), "{text}");
    assert!(text.contains("unexpected top-level key `audit` in `config/security/web.toml`"), "{text}");
    let got: Vec<Code> = codes(t.path()).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, [Code::UnexpectedTopLevel, Code::UnexpectedTopLevel]);
    // an [audit] table alone does not stand in for [build]
    write(t.path(), "config/security/web.toml", b"[web]\n");
    write(t.path(), "config/build.toml", b"[audit]\nfail_on = \"low\"\n");
    let text = load(t.path()).report.render("", false);
    assert!(text.contains("`config/build.toml` has no [build] table"), "{text}");
}
