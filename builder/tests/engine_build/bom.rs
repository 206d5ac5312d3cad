//! Acceptance check of a bill of materials against the image's own package tools: the apt
//! packages against `dpkg-query` over the image's dpkg database, the pip packages against
//! `pip list` run by the image's own `python3` (in a chroot of an `unsquashfs -d` extraction).
//!
//! How the pip comparison stays faithful to `pip list`, which reports one distribution per
//! (PEP 503) name — the first one found along `sys.path` — with its version normalized by
//! `packaging`, while the BOM lists every `*-info` record on disk:
//! - every directory the BOM found a pip package in must be on the image interpreter's `sys.path`;
//! - for each name, the versions the BOM lists in the first `sys.path` directory holding that name
//!   are the candidates (normally one), and `pip list` must report that name with one of them,
//!   both sides normalized by the image's own `packaging` (pip's vendored copy);
//! - `pip list` must list nothing the BOM lacks;
//! - `python`, `wsgiref` and `argparse` are left out of the BOM side, as pip leaves them out.
//!
//! `pip list` runs as root with `HOME=/root` and no other environment, as a user of the guest
//! would run it (so a `~/.local` install would show up as a mismatch, which is the point). If the
//! image has `python3` but no pip, `importlib.metadata.distributions()` — the standard-library API
//! pip's own listing is built on — is compared instead, record by record (path, name, version). If
//! the image has no `python3`, the BOM must list no pip package.
//!
//! Needs root (unsquashfs recreates device nodes; chroot), `unsquashfs` and `dpkg-query`.
//!
//! [`assert_sbom_validates`] runs CycloneDX's validator from PyPI over an SBOM file, offline (the
//! schemas ship in the wheel; the proxy variables point at a closed port so a fetch would fail).
//! It needs the venv `cargo xtask deps` creates at `target/tools/sbom-venv`, or a python with
//! `cyclonedx-python-lib[json-validation]` in `CAPSEM_SBOM_VALIDATOR_PYTHON`, and FAILS without.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use capsem_builder::bom::purl::pep503;
use capsem_trust::Package;
use serde_json::Value;

/// What pip leaves out of `pip list` (pip's `stdlib_pkgs`).
const PIP_HIDES: [&str; 3] = ["python", "wsgiref", "argparse"];

/// Runs in the image: `sys.path`, pip's presence, every distribution importlib finds, and the
/// versions on stdin normalized by the image's own `packaging`.
const PROBE: &str = r#"
import json, sys
import importlib.metadata as md
versions = json.load(sys.stdin)
try:
    from pip._vendor.packaging.version import Version
except ImportError:
    try:
        from packaging.version import Version
    except ImportError:
        Version = None
def norm(v):
    try:
        return str(Version(v)) if Version else v
    except Exception:
        return v
try:
    import pip
    has_pip = True
except ImportError:
    has_pip = False
dists = []
for d in md.distributions():
    path = getattr(d, "_path", None)
    dists.append({"name": d.metadata["Name"], "version": d.version, "path": str(path) if path else None})
json.dump({"sys_path": sys.path, "has_pip": has_pip, "distributions": dists,
           "normalized": {v: norm(v) for v in versions}}, sys.stdout)
"#;

/// Extracts `squashfs` and panics with a readable diff unless its apt and pip packages are
/// exactly what the image's own tools report.
pub fn assert_bom_matches_rootfs(squashfs: &Path, packages: &[Package]) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().join("root");
    let out = Command::new("unsquashfs")
        .arg("-no-progress")
        .arg("-d")
        .arg(&root)
        .arg(squashfs)
        .output()
        .expect("unsquashfs (squashfs-tools) on the PATH");
    assert!(out.status.success(), "unsquashfs -d {} {}: {}", root.display(), squashfs.display(), stderr(&out));

    let mut report = Vec::new();
    report.extend(check_apt(&root, packages));
    report.extend(check_pip(&root, packages));
    assert!(
        report.is_empty(),
        "the BOM of {} does not match what the image's own tools report:\n\n{}",
        squashfs.display(),
        report.join("\n\n")
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `- …` lines for what only the BOM has, `+ …` for what only the tool reports; `None` if equal.
fn diff(title: &str, tool: &str, bom: &BTreeSet<String>, reported: &BTreeSet<String>) -> Option<String> {
    if bom == reported {
        return None;
    }
    let mut text = format!("{title} (- only in the BOM, + only in {tool}):");
    for line in bom.difference(reported) {
        text.push_str(&format!("\n  - {line}"));
    }
    for line in reported.difference(bom) {
        text.push_str(&format!("\n  + {line}"));
    }
    Some(text)
}

/// apt: (name, version, arch) of every package `dpkg-query` shows as installed (`?i`).
fn check_apt(root: &Path, packages: &[Package]) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n"])
        .output()
        .expect("dpkg-query on the PATH");
    assert!(out.status.success(), "dpkg-query over the image's database: {}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("dpkg-query prints UTF-8");
    let mut reported = BTreeSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, version, arch, abbrev] = fields.as_slice() else { panic!("unexpected dpkg-query line {line:?}") };
        if abbrev.as_bytes().get(1) == Some(&b'i') {
            reported.insert(format!("{name} {version} {arch}"));
        }
    }
    let bom: BTreeSet<String> = packages
        .iter()
        .filter(|p| p.manager == "apt")
        .map(|p| format!("{} {} {}", p.name, p.version, p.arch.as_deref().unwrap_or("?")))
        .collect();
    assert!(!reported.is_empty() || bom.is_empty(), "dpkg-query reports no installed package");
    diff("apt packages", "dpkg-query", &bom, &reported)
}

/// `chroot <root> <args>` as root with a minimal environment.
fn in_image(root: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("chroot (coreutils) on the PATH, and root");
    if let Some(data) = stdin {
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(data).expect("writing to the chroot's stdin");
    }
    child.wait_with_output().expect("waiting for chroot")
}

fn check_pip(root: &Path, packages: &[Package]) -> Option<String> {
    let ours: Vec<&Package> = packages.iter().filter(|p| p.manager == "pip").collect();
    let has_python = in_image(root, &["python3", "-c", "pass"], None).status.success();
    if !has_python {
        let listed: BTreeSet<String> = ours.iter().map(|p| pip_line(p)).collect();
        return diff("pip packages (the image has no python3)", "the image", &listed, &BTreeSet::new());
    }
    let versions: BTreeSet<&str> = ours.iter().map(|p| p.version.as_str()).collect();
    let input = serde_json::to_vec(&versions).expect("JSON of strings");
    let out = in_image(root, &["python3", "-c", PROBE], Some(&input));
    assert!(out.status.success(), "python3 in the image (probe): {}", stderr(&out));
    let probe: Value = serde_json::from_slice(&out.stdout).expect("the probe prints JSON");
    let norm = |v: &str| probe["normalized"][v].as_str().unwrap_or(v).to_owned();

    if probe["has_pip"] != true {
        // No pip: compare record by record with importlib.metadata, which pip's listing is built on.
        let reported: BTreeSet<String> = probe["distributions"]
            .as_array()
            .expect("distributions")
            .iter()
            .filter(|d| d["name"].is_string())
            .map(|d| format!("{} {} at {}", str_of(&d["name"]), str_of(&d["version"]), str_of(&d["path"])))
            .collect();
        let listed: BTreeSet<String> = ours.iter().map(|p| pip_line(p)).collect();
        return diff(
            "pip packages (no pip in the image: importlib.metadata)",
            "importlib.metadata",
            &listed,
            &reported,
        );
    }

    let out = in_image(root, &["python3", "-m", "pip", "list", "--format=json"], None);
    assert!(out.status.success(), "pip list in the image: {}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("pip list prints JSON");
    let mut pip: BTreeMap<String, String> = BTreeMap::new();
    for d in listed.as_array().expect("pip list: an array") {
        pip.insert(pep503(str_of(&d["name"])), str_of(&d["version"]).to_owned());
    }

    let sys_path: Vec<String> = probe["sys_path"]
        .as_array()
        .expect("sys.path")
        .iter()
        .map(|p| str_of(p).trim_end_matches('/').to_owned())
        .collect();
    let rank = |dir: &str| sys_path.iter().position(|p| !p.is_empty() && p == dir);
    let mut problems = Vec::new();
    // canonical name → (rank of the first directory holding it, its versions there).
    let mut first: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for p in &ours {
        let location = p.location.as_deref().unwrap_or("?");
        let dir = Path::new(location).parent().and_then(Path::to_str).unwrap_or("?");
        let Some(r) = rank(dir) else {
            problems.push(format!("  {}: {dir} is not on the image's sys.path {sys_path:?}", pip_line(p)));
            continue;
        };
        let name = pep503(&p.name);
        if PIP_HIDES.contains(&name.as_str()) {
            continue;
        }
        let entry = first.entry(name).or_insert((r, BTreeSet::new()));
        if r < entry.0 {
            *entry = (r, BTreeSet::new());
        }
        if r == entry.0 {
            entry.1.insert(norm(&p.version));
        }
    }
    for (name, (_, versions)) in &first {
        match pip.get(name) {
            Some(v) if versions.contains(v) => {}
            Some(v) => problems.push(format!("  {name}: pip list reports {v}, the BOM {versions:?}")),
            None => problems.push(format!("  - {name} {versions:?}: in the BOM, not in pip list")),
        }
    }
    for (name, v) in &pip {
        if !first.contains_key(name) {
            problems.push(format!("  + {name} {v}: in pip list, not in the BOM"));
        }
    }
    (!problems.is_empty()).then(|| format!("pip packages (vs `pip list` in the image):\n{}", problems.join("\n")))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn pip_line(p: &Package) -> String {
    format!("{} {} at {}", p.name, p.version, p.location.as_deref().unwrap_or("?"))
}

/// Panics unless the SBOM file at `sbom` passes the CycloneDX 1.5 validator (see
/// [`validate_sboms`]) with canonical purls and unique `bom-ref`s.
pub fn assert_sbom_validates(sbom: &Path) {
    let verdict = validate_sboms(&[sbom.to_path_buf()]).remove(0);
    assert!(
        verdict["valid"] == true && verdict["problems"] == serde_json::json!([]),
        "{} is not a valid CycloneDX 1.5 SBOM: {verdict}",
        sbom.display()
    );
}

/// The validator: CycloneDX's own `JsonStrictValidator` (cyclonedx-python-lib, pinned in
/// xtask/src/deps.rs) against the bundled 1.5 schema, formats included; then, for a valid
/// document, every purl parsed and re-printed by packageurl-python (the purl reference
/// implementation) must come back unchanged, and `bom-ref`s must be unique.
const VALIDATE: &str = r#"
import json, sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

validator = JsonStrictValidator(SchemaVersion.V1_5)
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    error = validator.validate_str(text)
    if error is not None:
        message = getattr(error.data, "message", str(error))
        print(json.dumps({"file": path, "valid": False, "error": message}))
        continue
    doc = json.loads(text)
    problems = []
    components = doc.get("components", [])
    refs = [c.get("bom-ref") for c in components] + [doc["metadata"]["component"].get("bom-ref")]
    if None in refs or len(set(refs)) != len(refs):
        problems.append("bom-refs missing or not unique")
    for c in components:
        if "purl" not in c:
            problems.append(f"component {c.get('bom-ref')} has no purl")
            continue
        canonical = PackageURL.from_string(c["purl"]).to_string()
        if canonical != c["purl"]:
            problems.append(f"purl {c['purl']} is not canonical: packageurl prints {canonical}")
    print(json.dumps({"file": path, "valid": True, "problems": problems}))
"#;

/// The validator's python: `CAPSEM_SBOM_VALIDATOR_PYTHON`, else the venv `cargo xtask deps` makes.
fn validator_python() -> PathBuf {
    let python = std::env::var_os("CAPSEM_SBOM_VALIDATOR_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("builder/ has a parent")
            .join("target/tools/sbom-venv/bin/python")
    });
    assert!(
        python.is_file(),
        "the SBOM validator is missing: {} does not exist.\nrun `cargo xtask deps` (it creates target/tools/sbom-venv with the \
         pinned cyclonedx-python-lib), or set CAPSEM_SBOM_VALIDATOR_PYTHON to a python that has cyclonedx-python-lib[json-validation]",
        python.display()
    );
    python
}

/// Runs the validator over `files`: one verdict per file, in order —
/// `{"valid": true, "problems": [...]}` or `{"valid": false, "error": "..."}`.
pub fn validate_sboms(files: &[PathBuf]) -> Vec<Value> {
    let python = validator_python();
    let mut cmd = Command::new(&python);
    cmd.arg("-c").arg(VALIDATE).args(files).env("PYTHONDONTWRITEBYTECODE", "1").env("PIP_NO_INDEX", "1");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env(var, "http://127.0.0.1:9");
    }
    for var in ["NO_PROXY", "no_proxy"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running {}: {e} (run `cargo xtask deps`)", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the validator failed ({}):\n{stdout}\n{}\nrun `cargo xtask deps` if the venv is incomplete",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.len(), files.len(), "{stdout}");
    verdicts
}
