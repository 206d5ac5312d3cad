//! `inspect`: the resolved image at a glance (text), or the whole validated model (JSON).

use std::fmt::Write as _;

use crate::model::{BaseImage, Model};

/// The whole model plus the settings it produces, as pretty JSON.
pub fn to_json(model: &Model) -> String {
    let doc = serde_json::json!({
        "schema_version": 1,
        "model": model,
        "settings": crate::settings::from_model(model),
    });
    serde_json::to_string_pretty(&doc).expect("model serializes")
}

/// A human summary of the resolved image.
pub fn render_text(m: &Model) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Image: {} v{}", m.image.name, m.image.version);
    if !m.image.description.is_empty() {
        let _ = writeln!(o, "  {}", m.image.description);
    }
    let level = m.build.compression_level.map_or(String::new(), |l| format!(" level {l}"));
    let _ = writeln!(o, "\nBuild: squashfs {:?}{level}", m.build.compression);
    for (arch, a) in &m.build.architectures {
        let base = match &a.base {
            BaseImage::Registry { reference } => reference.clone(),
            BaseImage::Bootstrap { suite, mirror, variant, .. } => {
                format!("bootstrap {suite} ({variant}) from {mirror}")
            }
        };
        let _ =
            writeln!(o, "  {arch}: {} kernel {} ({}), base {base}", a.docker_platform, a.kernel_branch, a.defconfig);
    }
    let _ = writeln!(o, "\nAI providers:");
    for (k, p) in &m.ai {
        let state = if p.enabled { "enabled" } else { "disabled" };
        let install = p
            .install
            .as_ref()
            .map_or("no install".to_string(), |i| format!("{} {}", i.manager.as_str(), i.packages.join(" ")));
        let domains = p
            .network
            .as_ref()
            .map_or(String::new(), |n| n.domains.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "));
        let _ = writeln!(o, "  {k} ({}) {state}: {install}; domains: {domains}", p.name);
    }
    let _ = writeln!(o, "\nPackage sets:");
    for (k, s) in &m.packages {
        let _ = writeln!(o, "  {k} ({}): {} × {}", s.name, s.install.manager.as_str(), s.install.packages.len());
    }
    let _ = writeln!(o, "\nMCP servers:");
    for (k, s) in &m.mcp {
        let state = if s.enabled { "enabled" } else { "disabled" };
        let t = match &s.transport {
            crate::model::McpTransport::Stdio { command, .. } => format!("stdio {command}"),
            crate::model::McpTransport::Sse { url, .. } => format!("sse {url}"),
        };
        let _ = writeln!(o, "  {k} ({}) {state}: {t}", s.name);
    }
    let w = &m.web;
    let _ = writeln!(o, "\nWeb policy: unknown domains read={} write={}", w.allow_read, w.allow_write);
    let list = |l: &[crate::model::DomainPattern]| l.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ");
    let _ = writeln!(o, "  custom_allow: {}", list(&w.custom_allow));
    let _ = writeln!(o, "  custom_block: {}", list(&w.custom_block));
    for (group, map) in [("search", &w.search), ("registry", &w.registry), ("repository", &w.repository)] {
        for (k, s) in map {
            let state = if s.enabled { "on " } else { "off" };
            let _ =
                writeln!(o, "  {group}.{k} [{state}] get={} post={}: {}", s.allow_get, s.allow_post, list(&s.domains));
        }
    }
    let r = &m.resources.values;
    let _ = writeln!(
        o,
        "\nVM: {} vCPU, {} GiB RAM, {} GiB scratch disk; hostname {}",
        r["cpu_count"], r["ram_gb"], r["scratch_disk_size_gb"], m.environment.hostname
    );
    o
}
