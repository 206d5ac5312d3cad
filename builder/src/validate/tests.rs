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
