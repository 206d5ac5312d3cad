//! Snapshot tests of the rendered Dockerfiles for the shipped image and for a corporate
//! variant built the way seed 000's walkthrough describes (only Anthropic, search disabled,
//! internal registries). Snapshots live in tests/snapshots/; `UPDATE_EXPECT=1` rewrites them.

use std::path::{Path, PathBuf};

use capsem_builder::model::Arch;
use capsem_builder::{kernel_source, plan, render, validate};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn render_all(dir: &Path) -> String {
    let loaded = validate::load(dir);
    let model = loaded.model.unwrap_or_else(|| panic!("{}", loaded.report.render("img", false)));
    let source = kernel_source::resolve("6.1", kernel_source::Provider::Debian).unwrap();
    let mut out = String::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        let rootfs = plan::rootfs(&model, arch, &["capsem-agent".to_string()], Some(1_767_225_600)).unwrap();
        out.push_str(&format!("# ===== {arch} rootfs =====\n{}\n", render::render_rootfs(&rootfs).unwrap()));
        let kernel = plan::kernel(&model, arch, Some(1_767_225_600), &source).unwrap();
        out.push_str(&format!("# ===== {arch} kernel =====\n{}\n", render::render_kernel(&kernel).unwrap()));
    }
    out
}

#[test]
fn default_image_dockerfiles() {
    expect_test::expect_file!["snapshots/default.Dockerfiles"].assert_eq(&render_all(&repo().join("images/default")));
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

#[test]
fn corporate_variant_dockerfiles() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("corp-image");
    copy_tree(&repo().join("images/default/config"), &img.join("config"));
    copy_tree(&repo().join("images/default/artifacts"), &img.join("artifacts"));
    std::fs::remove_file(img.join("config/ai/google.toml")).unwrap();
    std::fs::remove_file(img.join("config/ai/openai.toml")).unwrap();
    std::fs::write(
        img.join("config/security/web.toml"),
        r#"[web]
allow_read = false
allow_write = false
custom_allow = ["*.internal.corp.com"]
custom_block = []

[web.search.google]
name = "Google"
enabled = false

[web.registry.npm]
name = "Internal npm"
enabled = true
domains = ["npm.internal.corp.com"]
allow_get = true

[web.registry.pypi]
name = "Internal PyPI"
enabled = true
domains = ["pypi.internal.corp.com"]
allow_get = true
"#,
    )
    .unwrap();
    let loaded = validate::load(&img);
    let model = loaded.model.as_ref().expect("corporate variant is valid");
    assert_eq!(model.ai.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["anthropic"]);
    assert!(!model.web.search["google"].enabled);
    let text = render_all(&img);
    assert!(!text.contains("gemini-cli") && !text.contains("@openai/codex"), "removed providers must not be installed");
    expect_test::expect_file!["snapshots/corp.Dockerfiles"].assert_eq(&text);
}
