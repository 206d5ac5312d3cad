//! Scaffolding (`init`, `new`, `add`): every scaffold validates with no diagnostics, existing
//! files are refused without `force`, values are escaped, and `init`'s copies of the shipped
//! image's files cannot drift from it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use capsem_builder::diag::Code;
use capsem_builder::model::{Arch, Manager};
use capsem_builder::scaffold::{self, AddKind, AddOptions, NewOptions, ScaffoldError, Transport};
use capsem_builder::validate;

fn default_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/default")
}

/// (code, file, line, message) of every diagnostic, sorted.
fn diags(dir: &Path) -> Vec<(String, String, Option<usize>, String)> {
    let loaded = validate::load(dir);
    loaded.report.to_json("").diagnostics.into_iter().map(|d| (d.code.to_string(), d.file, d.line, d.message)).collect()
}

fn assert_clean(dir: &Path) {
    let loaded = validate::load(dir);
    assert!(
        loaded.report.diagnostics.is_empty(),
        "expected no diagnostics:\n{}",
        loaded.report.render(&dir.display().to_string(), false)
    );
}

fn init_in(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    let dir = tmp.path().join(name);
    scaffold::init(&dir, false).unwrap();
    dir
}

fn opts(manager: Manager, transport: Transport) -> AddOptions {
    AddOptions { manager, transport, force: false }
}

/// Every `add` variant: (kind, options, label).
fn all_adds() -> Vec<(AddKind, AddOptions, String)> {
    let mut v = vec![(AddKind::AiProvider, opts(Manager::Apt, Transport::Stdio), "ai-provider".to_string())];
    for m in Manager::NAMES {
        let manager = Manager::parse(m).unwrap();
        v.push((AddKind::Packages, opts(manager, Transport::Stdio), format!("packages --manager {m}")));
    }
    v.push((AddKind::Mcp, opts(Manager::Apt, Transport::Stdio), "mcp --transport stdio".into()));
    v.push((AddKind::Mcp, opts(Manager::Apt, Transport::Sse), "mcp --transport sse".into()));
    v
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Relative paths of the files under `dir`, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        go(dir, dir, &mut out);
    }
    out.sort();
    out
}

// --- init --------------------------------------------------------------------------------------

#[test]
fn init_writes_a_clean_image_for_both_architectures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("My Image");
    let files = scaffold::init(&dir, false).unwrap();

    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted, "files are returned sorted");
    let rel: Vec<String> = files.iter().map(|f| f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(rel, tree(&dir), "the returned list is exactly what is on disk");
    for needed in [
        "config/build.toml",
        "config/manifest.toml",
        "config/packages/apt.toml",
        "config/security/web.toml",
        "config/vm/resources.toml",
        "config/vm/environment.toml",
        "config/kernel/defconfig.x86_64",
        "config/kernel/defconfig.arm64",
        "artifacts/capsem-init",
        "artifacts/capsem-bashrc",
        "artifacts/banner.txt",
        "artifacts/tips.txt",
        "artifacts/diagnostics/capsem-doctor",
    ] {
        assert!(rel.iter().any(|r| r == needed), "init did not write {needed}: {rel:#?}");
    }

    assert_clean(&dir);
    let model = validate::load(&dir).model.expect("a model");
    assert_eq!(model.build.architectures.keys().copied().collect::<Vec<_>>(), vec![Arch::X86_64, Arch::Arm64]);
    assert_eq!(model.image.name, "my-image");
    assert_eq!(model.image.version, "0.1.0");
    assert_eq!(model.image.changelog.len(), 1);
    assert!(model.artifacts.banner && model.artifacts.tips && model.artifacts.diagnostics);
    for arch in model.build.architectures.values() {
        assert!(matches!(&arch.base, capsem_builder::model::BaseImage::Bootstrap { suite, mirror, variant, .. }
            if suite == "bookworm" && mirror == "http://deb.debian.org/debian" && variant == "minbase"));
    }
    let apt = &model.packages[&capsem_builder::model::Ident::parse("apt").unwrap()];
    for needed in ["bash", "coreutils", "ca-certificates", "iptables", "iproute2", "e2fsprogs"] {
        assert!(
            apt.install.packages.iter().any(|p| p.starts_with(&format!("{needed}="))),
            "apt set lacks pinned {needed}"
        );
    }
    assert!(model.web.registry.contains_key(&capsem_builder::model::Ident::parse("debian").unwrap()));
    assert!(!model.web.allow_read && !model.web.allow_write);
}

#[cfg(unix)]
#[test]
fn init_preserves_executable_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    let default = default_image();
    for rel in tree(&default.join("artifacts")) {
        let want = mode(&default.join("artifacts").join(&rel));
        assert_eq!(mode(&dir.join("artifacts").join(&rel)), want, "mode of artifacts/{rel}");
    }
    assert_eq!(mode(&dir.join("artifacts/capsem-init")), 0o755);
    assert_eq!(mode(&dir.join("artifacts/diagnostics/capsem-doctor")), 0o755);
    assert_eq!(mode(&dir.join("config/build.toml")), 0o644);
}

#[test]
fn init_copies_of_the_shipped_image_cannot_drift() {
    let default = default_image();
    let embedded: BTreeSet<&str> = scaffold::INIT_FILES.iter().map(|e| e.rel).collect();
    // Every kernel config and artifact of the shipped image is in the scaffold ...
    let mut shipped: Vec<String> =
        tree(&default.join("artifacts")).into_iter().map(|r| format!("artifacts/{r}")).collect();
    shipped.extend(tree(&default.join("config/kernel")).into_iter().map(|r| format!("config/kernel/{r}")));
    assert!(!shipped.is_empty());
    for rel in &shipped {
        assert!(embedded.contains(rel.as_str()), "images/default/{rel} is not in scaffold::INIT_FILES");
    }
    // ... byte for byte, with the same mode (tips.txt is init's own: the shipped tips name the
    // default image's AI CLIs and tools).
    for e in scaffold::INIT_FILES {
        if e.rel == "artifacts/tips.txt" {
            continue;
        }
        if e.rel.starts_with("artifacts/") || e.rel.starts_with("config/kernel/") || e.rel == "config/vm/resources.toml"
        {
            let on_disk = fs::read(default.join(e.rel)).unwrap_or_else(|err| panic!("images/default/{}: {err}", e.rel));
            assert!(on_disk == e.bytes, "{} differs from images/default", e.rel);
            #[cfg(unix)]
            assert_eq!(e.mode, mode(&default.join(e.rel)), "mode of {}", e.rel);
        }
    }
}

#[test]
fn init_apt_pins_are_the_shipped_images_pins() {
    let read = |p: PathBuf| -> BTreeSet<String> {
        let t: toml::Table = fs::read_to_string(p).unwrap().parse().unwrap();
        t["apt"]["packages"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    let ours = read(dir.join("config/packages/apt.toml"));
    let shipped = read(default_image().join("config/packages/apt.toml"));
    let stray: Vec<_> = ours.difference(&shipped).collect();
    assert!(stray.is_empty(), "init's apt pins not in images/default (bump them together): {stray:?}");
}

#[test]
fn init_refuses_an_existing_config_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    let extra = dir.join("config/ai/mine.toml");
    fs::create_dir_all(extra.parent().unwrap()).unwrap();
    fs::write(&extra, "[mine]\nname = \"Mine\"\n").unwrap();
    fs::write(dir.join("config/build.toml"), "garbage").unwrap();

    let err = scaffold::init(&dir, false).unwrap_err();
    assert!(matches!(&err, ScaffoldError::Exists { path } if *path == dir.join("config")), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.join("config").display().to_string()) && msg.contains("--force"), "{msg}");

    scaffold::init(&dir, true).unwrap();
    assert!(
        fs::read_to_string(dir.join("config/build.toml")).unwrap().contains("[build]"),
        "force rewrites scaffold files"
    );
    assert!(extra.exists(), "force leaves other files alone");
}

#[test]
fn init_refuses_existing_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    fs::create_dir_all(dir.join("artifacts")).unwrap();
    fs::write(dir.join("artifacts/capsem-init"), "mine").unwrap();
    let err = scaffold::init(&dir, false).unwrap_err();
    assert!(matches!(&err, ScaffoldError::Exists { path } if *path == dir.join("artifacts")), "{err:?}");
    assert_eq!(fs::read_to_string(dir.join("artifacts/capsem-init")).unwrap(), "mine");
    assert!(!dir.join("config").exists());
}

#[test]
fn init_failure_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    // config/vm is a file, so config/vm/*.toml cannot be written.
    fs::create_dir_all(dir.join("config")).unwrap();
    fs::write(dir.join("config/vm"), "in the way").unwrap();
    let err = scaffold::init(&dir, true).unwrap_err();
    assert!(matches!(&err, ScaffoldError::Io { path, .. } if path.starts_with(dir.join("config/vm"))), "{err:?}");
    assert_eq!(tree(&dir), vec!["config/vm".to_string()], "everything this call created is removed");
}

#[test]
fn init_names_come_from_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir_name, want) in
        [("corp image", "corp-image"), ("Ünïcode", "n-code"), ("!!!", "image"), ("a\"b\\c", "a-b-c")]
    {
        let dir = tmp.path().join(dir_name);
        scaffold::init(&dir, false).unwrap();
        assert_clean(&dir);
        assert_eq!(validate::load(&dir).model.unwrap().image.name, want, "{dir_name}");
    }
}

// --- new ---------------------------------------------------------------------------------------

#[test]
fn new_from_the_default_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("corp");
    let files = scaffold::new_from(&dir, &default_image(), &NewOptions::default()).unwrap();
    let loaded = validate::load(&dir);
    assert!(!loaded.report.has_errors(), "{}", loaded.report.render("corp", false));
    let model = loaded.model.unwrap();
    assert_eq!(model.image.name, "corp");
    assert_eq!(model.image.version, "0.1.0");
    assert_eq!(model.image.changelog.len(), 1);
    assert_eq!(model.image.changelog[0].changes, vec!["Initial image created from default".to_string()]);
    assert!(capsem_builder::validate::checks::iso_date(&model.image.changelog[0].date));

    // Everything but manifest.toml is a byte-for-byte copy, modes included.
    let src = default_image();
    let mut want: Vec<String> = ["config", "artifacts"]
        .iter()
        .flat_map(|s| tree(&src.join(s)).into_iter().map(move |r| format!("{s}/{r}")))
        .collect();
    if !want.iter().any(|r| r == "config/manifest.toml") {
        want.push("config/manifest.toml".into());
    }
    want.sort();
    assert_eq!(tree(&dir), want);
    assert_eq!(files.len(), want.len());
    for rel in want.iter().filter(|r| *r != "config/manifest.toml") {
        assert!(fs::read(src.join(rel)).unwrap() == fs::read(dir.join(rel)).unwrap(), "{rel} differs");
        #[cfg(unix)]
        assert_eq!(mode(&src.join(rel)), mode(&dir.join(rel)), "mode of {rel}");
    }
    // Same diagnostics as the source (the copy neither adds nor hides any).
    let strip = |v: Vec<(String, String, Option<usize>, String)>| -> Vec<_> {
        v.into_iter().filter(|d| d.1 != "config/manifest.toml").collect()
    };
    assert_eq!(strip(diags(&dir)), strip(diags(&src)));
}

#[test]
fn new_escapes_the_name_and_skips_other_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let base = init_in(&tmp, "base");
    fs::create_dir_all(base.join("assets/x86_64")).unwrap();
    fs::write(base.join("assets/x86_64/rootfs.squashfs"), "big").unwrap();
    fs::write(base.join("notes.txt"), "mine").unwrap();

    let tricky = "Corp \"quoted\" \\ image 'with' ''' quotes";
    let dir = tmp.path().join("corp");
    scaffold::new_from(&dir, &base, &NewOptions { name: Some(tricky.into()), force: false }).unwrap();
    assert_clean(&dir);
    let model = validate::load(&dir).model.unwrap();
    assert_eq!(model.image.name, tricky);
    assert_eq!(model.image.changelog[0].changes, vec!["Initial image created from base".to_string()]);
    assert!(!dir.join("assets").exists() && !dir.join("notes.txt").exists());
}

#[test]
fn new_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let base = init_in(&tmp, "base");

    let not_image = tmp.path().join("empty");
    fs::create_dir_all(&not_image).unwrap();
    let err = scaffold::new_from(&tmp.path().join("x"), &not_image, &NewOptions::default()).unwrap_err();
    assert!(matches!(&err, ScaffoldError::NotAnImage { dir } if *dir == not_image), "{err:?}");
    assert!(err.to_string().contains(&not_image.display().to_string()));

    let dir = tmp.path().join("copy");
    scaffold::new_from(&dir, &base, &NewOptions::default()).unwrap();
    let err = scaffold::new_from(&dir, &base, &NewOptions::default()).unwrap_err();
    assert!(matches!(&err, ScaffoldError::Exists { path } if *path == dir.join("config")), "{err:?}");
    scaffold::new_from(&dir, &base, &NewOptions { name: Some("again".into()), force: true }).unwrap();
    assert_eq!(validate::load(&dir).model.unwrap().image.name, "again");

    for bad in ["", "  ", "two\nlines"] {
        let err =
            scaffold::new_from(&tmp.path().join("y"), &base, &NewOptions { name: Some(bad.into()), force: false })
                .unwrap_err();
        assert!(matches!(err, ScaffoldError::BadName { .. }), "{bad:?}: {err:?}");
    }
    assert!(!tmp.path().join("y").exists());
}

// --- add ---------------------------------------------------------------------------------------

#[test]
fn every_add_validates_cleanly_in_an_init_scaffold() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (kind, o, label)) in all_adds().into_iter().enumerate() {
        let dir = init_in(&tmp, &format!("img{i}"));
        let path = scaffold::add(&dir, kind, "my-tool", &o).unwrap();
        assert!(path.is_file(), "{label}");
        let d = diags(&dir);
        if o.manager == Manager::Npm && kind == AddKind::Packages {
            // init's web.toml has no npm registry: exactly W001, nothing else.
            let codes: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
            assert_eq!(codes, vec![Code::NoNpmRegistry.as_str()], "{label}: {d:#?}");
        } else {
            assert!(d.is_empty(), "{label}: {d:#?}");
        }
    }
}

#[test]
fn every_add_validates_cleanly_in_the_default_image() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("default");
    scaffold::new_from(&base, &default_image(), &NewOptions::default()).unwrap();
    let baseline = diags(&base);
    for (i, (kind, o, label)) in all_adds().into_iter().enumerate() {
        let dir = tmp.path().join(format!("img{i}"));
        scaffold::new_from(&dir, &base, &NewOptions { name: Some("default".into()), force: false }).unwrap();
        scaffold::add(&dir, kind, "my_tool", &o).unwrap();
        assert_eq!(diags(&dir), baseline, "{label} added diagnostics to the default image");
    }
}

#[test]
fn add_handles_edge_case_names() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "x".repeat(64);
    for (i, name) in ["a", "0day", "a-", "b_", "my--tool", long.as_str()].into_iter().enumerate() {
        let dir = init_in(&tmp, &format!("img{i}"));
        for (kind, o, label) in all_adds() {
            if o.manager == Manager::Npm && kind == AddKind::Packages {
                continue;
            }
            scaffold::add(&dir, kind, name, &o).unwrap();
            // One file per kind: check, then remove, so keys do not collide across kinds.
            let d = diags(&dir);
            assert!(d.is_empty(), "{label} {name}: {d:#?}");
            let sub = match kind {
                AddKind::AiProvider => "ai",
                AddKind::Packages => "packages",
                AddKind::Mcp => "mcp",
            };
            fs::remove_file(dir.join("config").join(sub).join(format!("{name}.toml"))).unwrap();
        }
    }
}

#[test]
fn add_refuses_existing_files_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    let o = opts(Manager::Apt, Transport::Stdio);
    let path = scaffold::add(&dir, AddKind::Mcp, "tool", &o).unwrap();
    assert_eq!(path, dir.join("config/mcp/tool.toml"));
    let err = scaffold::add(&dir, AddKind::Mcp, "tool", &opts(Manager::Apt, Transport::Sse)).unwrap_err();
    assert!(matches!(&err, ScaffoldError::Exists { path: p } if *p == path), "{err:?}");
    assert!(err.to_string().contains("--force"));
    scaffold::add(&dir, AddKind::Mcp, "tool", &AddOptions { force: true, ..opts(Manager::Apt, Transport::Sse) })
        .unwrap();
    assert!(fs::read_to_string(&path).unwrap().contains("transport = \"sse\""));
    assert_clean(&dir);

    // The apt set of init lives in packages/apt.toml: adding `apt` again is refused.
    let err = scaffold::add(&dir, AddKind::Packages, "apt", &o).unwrap_err();
    assert!(matches!(err, ScaffoldError::Exists { .. }), "{err:?}");
}

#[test]
fn add_refuses_a_key_defined_in_another_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    fs::write(
        dir.join("config/packages/tools.toml"),
        "[extra]\nname = \"Extra\"\nmanager = \"apt\"\npackages = [\"hello=2.10-3\"]\n",
    )
    .unwrap();
    let err = scaffold::add(&dir, AddKind::Packages, "extra", &opts(Manager::Apt, Transport::Stdio)).unwrap_err();
    assert!(
        matches!(&err, ScaffoldError::Defined { name, path } if name == "extra" && *path == dir.join("config/packages/tools.toml")),
        "{err:?}"
    );
    assert!(!dir.join("config/packages/extra.toml").exists());
}

#[test]
fn add_rejects_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    for bad in ["My Tool", "", "-x", "a.b", "tool\"x", "é"] {
        let err = scaffold::add(&dir, AddKind::AiProvider, bad, &opts(Manager::Apt, Transport::Stdio)).unwrap_err();
        assert!(matches!(&err, ScaffoldError::BadName { name, .. } if name == bad), "{bad:?}: {err:?}");
    }
    let err = scaffold::add(&dir, AddKind::AiProvider, "My Tool", &opts(Manager::Apt, Transport::Stdio)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("`my-tool`") && msg.contains("lowercase"), "{msg}");
    assert!(!dir.join("config/ai").exists(), "nothing written");
}

#[test]
fn add_needs_a_config_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let err = scaffold::add(tmp.path(), AddKind::Packages, "tools", &opts(Manager::Uv, Transport::Stdio)).unwrap_err();
    assert!(matches!(&err, ScaffoldError::NoConfig { dir } if dir == tmp.path()), "{err:?}");
    assert!(err.to_string().contains("capsem-builder init"), "{err}");
    assert!(tree(tmp.path()).is_empty());
}

#[test]
fn add_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_in(&tmp, "img");
    let read = |p: PathBuf| fs::read_to_string(p).unwrap();
    let ai = read(scaffold::add(&dir, AddKind::AiProvider, "my_llm", &opts(Manager::Apt, Transport::Stdio)).unwrap());
    assert!(ai.contains("env_vars = [\"MY_LLM_API_KEY\"]"), "{ai}");
    assert!(ai.contains("domains = [\"api.my-llm.invalid\"]"), "{ai}");
    assert!(!ai.contains("\n[my_llm.install]"), "no install table: {ai}");
    let stdio = read(scaffold::add(&dir, AddKind::Mcp, "srv", &opts(Manager::Apt, Transport::Stdio)).unwrap());
    assert!(stdio.contains("command = \"/usr/local/bin/srv\""), "{stdio}");
    let sse = read(scaffold::add(&dir, AddKind::Mcp, "remote_srv", &opts(Manager::Apt, Transport::Sse)).unwrap());
    assert!(sse.contains("url = \"https://remote-srv.mcp.invalid/sse\""), "{sse}");
    let curl = read(scaffold::add(&dir, AddKind::Packages, "inst", &opts(Manager::Curl, Transport::Stdio)).unwrap());
    assert!(curl.contains("packages = [\"https://inst.invalid/install.sh\"]"), "{curl}");
    assert!(curl.contains(&"0".repeat(64)), "{curl}");
    assert_clean(&dir);
}
