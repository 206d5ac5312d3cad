//! Golden tests for `validate`: every diagnostic code has a case that triggers it, and the
//! rendered text (file:line:col, snippet, help) is compared byte for byte.
//!
//! Layout: `tests/golden/_base/` is a small image that validates with no diagnostics. Each
//! other directory `tests/golden/<case>/` is an overlay: its files replace or add to the base
//! (a file `<path>.delete` removes `<path>`), and `expected.txt` is the rendered report with
//! `<case>` as the displayed image directory. `UPDATE_GOLDEN=1 cargo test --test golden`
//! rewrites the expected files; review the diff before committing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsem_builder::diag::Code;
use capsem_builder::validate;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&src, &dst);
        } else if entry.file_name() == "expected.txt" && from.parent() == Some(&golden_dir()) {
            // the case's expectation is not part of the image
        } else if let Some(target) = src.to_str().unwrap().strip_suffix(".delete") {
            let rel = Path::new(target).file_name().unwrap();
            let victim = to.join(rel);
            if victim.is_dir() {
                std::fs::remove_dir_all(&victim).unwrap();
            } else {
                std::fs::remove_file(&victim).unwrap();
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Builds the case's image in a temp dir and renders its report.
fn run_case(case: &str) -> (String, validate::Loaded) {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join(case);
    std::fs::create_dir_all(&img).unwrap();
    copy_tree(&golden_dir().join("_base"), &img);
    if case != "_base" {
        copy_tree(&golden_dir().join(case), &img);
    }
    let loaded = validate::load(&img);
    (loaded.report.render(case, false), loaded)
}

fn cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('_'))
        .collect();
    v.sort();
    v
}

#[test]
fn base_is_clean() {
    let (text, loaded) = run_case("_base");
    assert_eq!(text, "passed: no problems found\n");
    assert!(loaded.model.is_some());
}

#[test]
fn golden_cases_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let (text, _) = run_case(&case);
        let expected_path = golden_dir().join(&case).join("expected.txt");
        if update {
            std::fs::write(&expected_path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != text {
            failures.push(format!("--- {case}: expected\n{expected}\n+++ {case}: actual\n{text}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_code_has_a_golden_case() {
    let mut seen = BTreeSet::new();
    for case in cases() {
        let expected = std::fs::read_to_string(golden_dir().join(&case).join("expected.txt")).unwrap_or_default();
        for code in Code::ALL {
            if expected.contains(&format!("[{}]", code.as_str())) {
                seen.insert(code.as_str());
            }
        }
    }
    let missing: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).filter(|c| !seen.contains(c)).collect();
    assert!(missing.is_empty(), "codes without a golden case: {missing:?}");
}

#[test]
fn every_code_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/diagnostics.md")).unwrap();
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| !doc.contains(&format!("| {} | {} |", c.as_str(), sev(**c))))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "codes missing from docs/diagnostics.md's table: {missing:?}");
}

fn sev(c: Code) -> &'static str {
    match c.severity() {
        capsem_builder::diag::Severity::Error => "error",
        capsem_builder::diag::Severity::Warning => "warning",
    }
}
