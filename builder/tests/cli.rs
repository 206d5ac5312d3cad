//! End-to-end tests of the `capsem-builder` binary: exit codes, stdout/stderr split, `--json`
//! shapes, and the authoring flow `init → validate → build --dry-run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsem-builder"));
    c.env("NO_COLOR", "1");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(args: &[&str]) -> Output {
    bin().current_dir(repo()).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn default_image_validates_with_exit_0() {
    let o = run(&["validate", "images/default"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
}

#[test]
fn validate_json_has_the_documented_shape() {
    let o = run(&["validate", "images/default", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["image"], "images/default");
    assert!(v["diagnostics"].is_array());
    assert_eq!(v["summary"]["errors"], 0);
}

#[test]
fn errors_exit_1_and_json_locates_them() {
    let t = tempfile::tempdir().unwrap();
    assert!(bin().args(["init", t.path().join("img").to_str().unwrap()]).status().unwrap().success());
    let res = t.path().join("img/config/vm/resources.toml");
    std::fs::write(&res, "[resources]\ncpu_count = 64\n").unwrap();
    let o = bin().current_dir(t.path()).args(["validate", "img", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "E007");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], "img/config/vm/resources.toml");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(2), Some(13)));
    assert!(d["help"].as_str().unwrap().contains("1 to 8"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["validate", "does/not/exist"]).status.code(), Some(2));
    assert_eq!(run(&["validate", "--bogus-flag"]).status.code(), Some(2));
    assert_eq!(run(&["build", "images/default", "--dry-run", "--arch", "riscv64"]).status.code(), Some(2));
    let o = run(&["validate", "Cargo.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory"));
}

#[test]
fn init_validate_dry_run_flow() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("corp-image");
    let img = img.to_str().unwrap();
    let o = bin().args(["init", img]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bin().args(["validate", img]).output().unwrap();
    assert_eq!(stdout(&o), "passed: no problems found\n");
    let o = bin().args(["build", img, "--dry-run"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    for header in [
        "# --- x86_64 (rootfs) ---",
        "# --- x86_64 (kernel) ---",
        "# --- arm64 (rootfs) ---",
        "# --- arm64 (kernel) ---",
    ] {
        assert!(text.contains(header), "missing {header}");
    }
    // init refuses to clobber without --force
    let o = bin().args(["init", img]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
}

#[test]
fn new_and_add_outputs_validate() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("mine");
    let o =
        bin().current_dir(repo()).args(["new", img.to_str().unwrap(), "--from", "images/default"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = img.to_str().unwrap();
    for args in [
        vec!["add", "ai-provider", "internal-llm", "--dir", dir],
        vec!["add", "packages", "devtools", "--dir", dir, "--manager", "apt"],
        vec!["add", "packages", "pytools", "--dir", dir, "--manager", "pip"],
        vec!["add", "packages", "jstools", "--dir", dir, "--manager", "npm"],
        vec!["add", "mcp", "search", "--dir", dir, "--transport", "sse"],
    ] {
        let o = bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = bin().args(["validate", dir, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["summary"]["errors"], 0, "{v:#}");
    assert_eq!(v["summary"]["warnings"], 0, "{v:#}");
    // every added package set reaches the build, whatever its key
    let o =
        bin().args(["build", dir, "--dry-run", "--arch", "x86_64", "--template", "rootfs", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let plan = &v["architectures"]["x86_64"]["rootfs"]["plan"];
    let sources = serde_json::to_string(plan).unwrap();
    for key in ["[devtools]", "[pytools]", "[jstools]"] {
        assert!(sources.contains(key), "{key} not in the plan: {sources}");
    }
}

#[test]
fn inspect_json_describes_the_default_image() {
    let o = run(&["inspect", "images/default", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m = &v["model"];
    for key in ["image", "build", "ai", "packages", "mcp", "web", "resources", "environment", "artifacts"] {
        assert!(!m[key].is_null(), "model.{key} missing");
    }
    for p in ["anthropic", "google", "openai"] {
        assert!(m["ai"][p]["install"]["packages"].is_array(), "{p}");
    }
    assert!(m["build"]["architectures"]["x86_64"].is_object());
    assert!(m["build"]["architectures"]["arm64"].is_object());
    assert!(v["settings"]["web"]["services"]["registry"]["npm"].is_object());
}

#[test]
fn settings_are_deterministic_and_written_atomically() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("defaults.json");
    let o = run(&["settings", "images/default", "-o", out.to_str().unwrap()]);
    assert!(o.status.success());
    let a = std::fs::read(&out).unwrap();
    let b = run(&["settings", "images/default"]).stdout;
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["vm"]["resources"]["cpu_count"]["max"], 8);
    assert_eq!(v["vm"]["environment"]["vars"]["SSL_CERT_FILE"], "/etc/ssl/certs/ca-certificates.crt");
    // no temp file left behind
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
}
