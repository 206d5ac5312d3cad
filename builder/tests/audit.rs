//! End-to-end tests of `capsem-builder audit`: a manifest written into a temporary assets
//! directory, the real binary run over the trivy and grype fixtures, then its exit code, its
//! stdout/stderr, the rewritten manifest and the removed signature checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capsem_trust::manifest::{
    self, ArchEntry, Asset, BuilderInfo, Inputs, MANIFEST_FILE, Manifest, Package, SIGNATURE_FILE,
};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsem-builder"));
    c.env("NO_COLOR", "1");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit").join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn pkg(manager: &str, name: &str, version: &str) -> Package {
    Package {
        manager: manager.into(),
        name: name.into(),
        version: version.into(),
        arch: (manager == "apt").then(|| "amd64".into()),
        location: (manager != "apt").then(|| format!("usr/lib/{name}")),
        purl: format!("pkg:{manager}/{name}@{version}"),
    }
}

fn asset(name: &str) -> Asset {
    Asset { filename: name.into(), size: 4096, b3: "ab".repeat(32) }
}

/// A manifest whose architectures all have the bill of materials the fixtures were scanned from.
fn manifest(archs: &[&str]) -> Manifest {
    let packages = vec![
        pkg("apt", "bash", "5.2.15-2+b7"),
        pkg("apt", "curl", "7.88.1-10+deb12u5"),
        pkg("apt", "git", "1:2.39.5-0+deb12u1"),
        pkg("apt", "zlib1g", "1:1.2.13.dfsg-1"),
        pkg("npm", "cross-spawn", "7.0.3"),
        pkg("pip", "cryptography", "43.0.0"),
        pkg("pip", "jinja2", "3.1.4"),
    ];
    Manifest {
        format: manifest::FORMAT,
        name: "capsem-default".into(),
        version: "0.1.0".into(),
        build_timestamp: manifest::rfc3339(1_767_225_600),
        source_date_epoch: 1_767_225_600,
        builder: BuilderInfo { version: "0.1.0".into(), backhand: "0.25.5".into(), zstd: "1.5.7".into() },
        settings: asset("defaults.json"),
        architectures: archs
            .iter()
            .map(|a| ArchEntry {
                arch: a.to_string(),
                assets: vec![asset("initrd.img"), asset("rootfs.squashfs"), asset("vmlinuz")],
                sbom: asset("sbom.cdx.json"),
                packages: packages.clone(),
                vulnerabilities: Vec::new(),
                audited: None,
                inputs: Inputs {
                    image_definition_b3: "cd".repeat(32),
                    base: [("suite".to_string(), "bookworm".to_string())].into(),
                    kernel_source: [("provider".to_string(), "debian".to_string())].into(),
                    defconfig_b3: "ef".repeat(32),
                    kernel_config_b3: "01".repeat(32),
                    dockerfiles_b3: [("rootfs".to_string(), "23".repeat(32))].into(),
                    toolchain: Default::default(),
                },
            })
            .collect(),
    }
}

/// A temp dir holding `img/` (a valid image whose build.toml ends with `audit`) and `assets/`
/// (manifest.json of `archs`, plus a stand-in signature).
struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new(audit: &str, archs: &[&str]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/_base"), &img);
        let build = img.join("config/build.toml");
        let mut toml = std::fs::read_to_string(&build).unwrap();
        toml.push_str(audit);
        std::fs::write(&build, toml).unwrap();
        let assets = tmp.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        std::fs::write(assets.join(MANIFEST_FILE), manifest(archs).to_json()).unwrap();
        std::fs::write(assets.join(SIGNATURE_FILE), "untrusted comment: stand-in\n").unwrap();
        Setup { tmp }
    }

    fn assets(&self) -> PathBuf {
        self.tmp.path().join("assets")
    }

    /// Runs `capsem-builder audit img <args>` in the temp dir (so `assets` is the default).
    fn audit(&self, args: &[&str]) -> Output {
        bin().current_dir(self.tmp.path()).arg("audit").arg("img").args(args).output().unwrap()
    }

    fn manifest_bytes(&self) -> Vec<u8> {
        std::fs::read(self.assets().join(MANIFEST_FILE)).unwrap()
    }

    fn signed(&self) -> bool {
        self.assets().join(SIGNATURE_FILE).exists()
    }
}

fn report(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

#[test]
fn failing_findings_exit_1_and_write_records_them_and_drops_the_signature() {
    let s = Setup::new("", &["arm64", "x86_64"]);
    let before = Manifest::parse(&s.manifest_bytes()).unwrap();
    let o = s.audit(&["--report", &report("trivy.json"), "--write"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = text(&o.stdout);
    assert!(out.starts_with("arm64: 8 findings in the bill of materials (4 failing, 0 allowed), 1 unmatched"), "{out}");
    assert!(out.contains("\nx86_64: 8 findings"), "{out}");
    assert!(out.contains("  CRITICAL  CVE-2023-45853       zlib1g"), "{out}");
    assert!(out.contains("CRITICAL  CVE-2024-24790  stdlib   v1.22.1  gobinary"), "{out}");
    assert!(out.ends_with(
        "audit failed: 16 matched findings (0 allowed), 2 unmatched; not allowed at or above high: \
         CVE-2023-45853, CVE-2024-21538, CVE-2024-2398, CVE-2025-48384\n"
    ));
    let err = text(&o.stderr);
    assert!(
        err.contains(
            "error: audit failed (fail_on = high): CVE-2023-45853, CVE-2024-21538, CVE-2024-2398, CVE-2025-48384"
        ),
        "{err}"
    );
    assert!(err.contains("capsem-builder sign"), "{err}");
    assert!(err.contains("signature was removed"), "{err}");
    assert!(!s.signed(), "the stale signature must be gone");

    let bytes = s.manifest_bytes();
    let after = Manifest::parse(&bytes).unwrap();
    assert_eq!(bytes, after.to_json(), "written in canonical form");
    let report_b3 = blake3::hash(&std::fs::read(fixture("trivy.json")).unwrap()).to_hex().to_string();
    for (a, b) in after.architectures.iter().zip(&before.architectures) {
        assert_eq!(a.packages, b.packages);
        assert_eq!(a.assets, b.assets);
        let audited = a.audited.as_ref().unwrap();
        assert_eq!((audited.scanner.as_str(), audited.report_b3.as_str()), ("trivy", report_b3.as_str()));
        let ids: Vec<(&str, &str)> = a.vulnerabilities.iter().map(|v| (v.package.as_str(), v.id.as_str())).collect();
        assert_eq!(ids.len(), 8);
        assert_eq!(ids[0], ("bash", "TEMP-0841856-B18BAF"));
        assert_eq!(ids[7], ("zlib1g", "CVE-2023-45853"));
        assert!(a.vulnerabilities.iter().all(|v| !v.allowed));
    }
    assert_eq!((after.name.as_str(), after.source_date_epoch), (before.name.as_str(), before.source_date_epoch));
    // nothing but the manifest is left in the assets directory
    let left: Vec<String> =
        std::fs::read_dir(s.assets()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, [MANIFEST_FILE]);
}

#[test]
fn allowed_findings_pass_and_an_unchanged_manifest_keeps_its_signature() {
    let audit = "\n[audit]\nfail_on = \"high\"\nallow = [\"CVE-2023-45853\", \"CVE-2024-21538\", \"CVE-2024-2398\", \
                 \"CVE-2025-48384\", \"CVE-2020-0001\"]\n";
    let s = Setup::new(audit, &["x86_64"]);
    let o = s.audit(&["--report", &report("trivy.json"), "--write"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("audit passed: 8 matched findings (4 allowed), 1 unmatched"), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(err.contains("`CVE-2020-0001` is allowed"), "{err}");
    assert!(!s.signed());
    let m = Manifest::parse(&s.manifest_bytes()).unwrap();
    let allowed: Vec<&str> =
        m.architectures[0].vulnerabilities.iter().filter(|v| v.allowed).map(|v| v.id.as_str()).collect();
    assert_eq!(allowed, ["CVE-2024-21538", "CVE-2024-2398", "CVE-2025-48384", "CVE-2023-45853"]);
    // re-signed, then the same audit again: the bytes would not change, so nothing is touched
    std::fs::write(s.assets().join(SIGNATURE_FILE), "untrusted comment: re-signed\n").unwrap();
    let before = s.manifest_bytes();
    let o = s.audit(&["--report", &report("trivy.json"), "--write"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stderr).contains("already records this audit"), "{}", show(&o));
    assert!(s.signed());
    assert_eq!(s.manifest_bytes(), before);
}

#[test]
fn json_output_for_one_architecture_without_write_changes_nothing() {
    let s = Setup::new("\n[audit]\nfail_on = \"critical\"\n", &["arm64", "x86_64"]);
    let before = s.manifest_bytes();
    let assets = s.assets();
    let o = s.audit(&[
        "--report",
        &report("grype.json"),
        "--arch",
        "arm64",
        "--json",
        "--assets",
        assets.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["scanner"], "grype");
    assert_eq!(v["passed"], false);
    assert_eq!(v["policy"]["fail_on"], "critical");
    assert_eq!(v["failing_ids"], serde_json::json!(["CVE-2023-45853"]));
    let archs = v["architectures"].as_object().unwrap();
    assert_eq!(archs.keys().collect::<Vec<_>>(), ["arm64"]);
    assert_eq!(archs["arm64"]["vulnerabilities"].as_array().unwrap().len(), 5);
    assert_eq!(archs["arm64"]["unmatched"][0]["name"], "requests");
    assert_eq!(s.manifest_bytes(), before, "no --write, no change");
    assert!(s.signed());
    // fail_on = "none": recorded, never failing
    let s = Setup::new("\n[audit]\nfail_on = \"none\"\n", &["x86_64"]);
    let o = s.audit(&["--report", &report("grype.json")]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

#[test]
fn a_clean_report_passes() {
    let s = Setup::new("", &["x86_64"]);
    let o = s.audit(&["--report", &report("trivy-clean.json"), "--write"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let m = Manifest::parse(&s.manifest_bytes()).unwrap();
    assert!(m.architectures[0].vulnerabilities.is_empty());
    assert_eq!(m.architectures[0].audited.as_ref().unwrap().scanner, "trivy");
}

#[test]
fn input_errors_exit_2() {
    let s = Setup::new("", &["x86_64"]);
    let bad = s.tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"Results": [{"Type": "debian", "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-1", "PkgName": "curl",
            "InstalledVersion": "1", "Severity": "SEVERE"}]}]}"#,
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "--report"),
        (vec!["--report", "missing.json"], "missing.json"),
        (vec!["--report", bad], "$.Results[0].Vulnerabilities[0].Severity: unknown severity `SEVERE`"),
        (vec!["--report", "img"], "not a regular file"),
        (vec!["--report", bad, "--arch", "riscv64"], "architecture `riscv64` is not in"),
        (vec!["--report", bad, "--assets", "nowhere"], "manifest.json"),
        (vec!["--report", bad, "--bogus"], "--bogus"),
    ];
    let before = s.manifest_bytes();
    for (args, want) in cases {
        let o = s.audit(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(text(&o.stderr).contains(want), "{args:?}: want {want:?}\n{}", show(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", show(&o));
    }
    std::fs::write(s.assets().join(MANIFEST_FILE), "{\"format\": 9}").unwrap();
    let o = s.audit(&["--report", &report("trivy.json")]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(text(&o.stderr).contains("not a valid manifest"), "{}", show(&o));
    std::fs::write(s.assets().join(MANIFEST_FILE), &before).unwrap();
    // an image whose [audit] has errors cannot be audited against
    let s = Setup::new("\n[audit]\nallow = [\"cve-2024-2398\"]\n", &["x86_64"]);
    let o = s.audit(&["--report", &report("trivy.json"), "--write"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(text(&o.stderr).contains("error[E022]"), "{}", show(&o));
    assert!(s.signed());
}
