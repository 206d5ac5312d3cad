//! The SBOM against a real validator: CycloneDX's own Python library (`cyclonedx-python-lib`,
//! pinned in `xtask/src/deps.rs`), whose `JsonStrictValidator` checks the document against the
//! bundled CycloneDX 1.5 JSON schema (formats included: `date-time`, `iri-reference`, …). The
//! purls are also parsed and re-printed by `packageurl-python`, the purl reference implementation,
//! which must give them back unchanged (canonical form), and every `bom-ref` must be unique.
//!
//! The runner lives in `engine_build/bom.rs` (the engine build test validates a built image's
//! SBOM with it). Needs the validator venv that `cargo xtask deps` creates at
//! `target/tools/sbom-venv` (or a python that has the library, in `CAPSEM_SBOM_VALIDATOR_PYTHON`).
//! Without it the test FAILS.
//! Validation runs offline: the schemas ship inside the wheel, and the proxy variables are pointed
//! at a closed port so that any attempt to fetch one would fail the test.

// The validator runner is shared with the engine build test, which validates a built image's SBOM.
#[path = "engine_build/bom.rs"]
#[allow(dead_code)] // `assert_bom_matches_rootfs` is the engine build test's.
mod engine_bom;

use capsem_builder::bom::{cyclonedx, purl};
use capsem_trust::Package;
use engine_bom::validate_sboms;
use serde_json::{Value, json};

fn apt(name: &str, version: &str, arch: &str) -> Package {
    Package {
        manager: "apt".into(),
        name: name.into(),
        version: version.into(),
        arch: Some(arch.into()),
        location: None,
        purl: purl::deb(name, version, arch),
    }
}

fn pip(name: &str, version: &str, location: &str) -> Package {
    Package {
        manager: "pip".into(),
        name: name.into(),
        version: version.into(),
        arch: None,
        location: Some(location.into()),
        purl: purl::pypi(name, version),
    }
}

fn npm(name: &str, version: &str, location: &str) -> Package {
    Package {
        manager: "npm".into(),
        name: name.into(),
        version: version.into(),
        arch: None,
        location: Some(location.into()),
        purl: purl::npm(name, version),
    }
}

/// What a default image holds, in miniature: epochs, `+` and `~` in Debian versions, multi-arch,
/// Python names that normalize, a local version, scoped and nested npm packages, one npm package
/// installed twice, a prerelease with build metadata.
fn packages() -> Vec<Package> {
    let dp = "/usr/lib/python3/dist-packages";
    let ai = "/opt/ai-clis/lib/node_modules";
    vec![
        apt("libc6", "2.36-9+deb12u4", "amd64"),
        apt("libc6", "2.36-9+deb12u4", "i386"),
        apt("libstdc++6", "12.2.0-14", "amd64"),
        apt("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
        apt("vim-tiny", "2:9.0.1378-2", "amd64"),
        apt("ca-certificates", "20230311", "all"),
        apt("python3.11", "3.11.2-6+deb12u1", "amd64"),
        apt("nodejs", "18.19.0+dfsg-6~deb12u1", "amd64"),
        pip("PyYAML", "6.0", &format!("{dp}/PyYAML-6.0.dist-info")),
        pip("zope.interface", "5.5.2", &format!("{dp}/zope.interface-5.5.2.egg-info")),
        pip("Local_Pkg", "1.0+local.1", "/usr/local/lib/python3.11/dist-packages/Local_Pkg-1.0+local.1.dist-info"),
        pip("iniconfig", "2.0.0", "/usr/local/lib/python3.11/dist-packages/iniconfig-2.0.0.dist-info"),
        npm("@anthropic-ai/claude-code", "1.0.0-beta.1+build.5", &format!("{ai}/@anthropic-ai/claude-code")),
        npm(
            "@img/sharp-linux-x64",
            "0.33.5",
            &format!("{ai}/@anthropic-ai/claude-code/node_modules/@img/sharp-linux-x64"),
        ),
        npm("semver", "7.6.3", &format!("{ai}/semver")),
        npm("semver", "7.6.3", "/usr/share/nodejs/npm/node_modules/semver"),
        npm("npm", "9.2.0", "/usr/lib/node_modules/npm"),
    ]
}

/// A change that makes an SBOM invalid.
type Mutation = fn(&mut Value);

#[test]
fn sbom_validates_with_cyclonedx_python_lib() {
    let packages = packages();
    let bytes = cyclonedx("default", "0.3.0", "x86_64", 1_700_000_000, &packages);
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["specVersion"], "1.5");
    assert_eq!(doc["metadata"]["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(doc["components"].as_array().unwrap().len(), packages.len());
    let zlib = doc["components"].as_array().unwrap().iter().find(|c| c["name"] == "zlib1g").unwrap();
    assert_eq!(zlib["purl"], "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64");
    let claude = doc["components"].as_array().unwrap().iter().find(|c| c["name"] == "claude-code").unwrap();
    assert_eq!((&claude["group"], &claude["type"]), (&json!("@anthropic-ai"), &json!("application")));

    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.cdx.json");
    std::fs::write(&good, &bytes).unwrap();

    // Broken variants: each must be rejected, or the validator validates nothing.
    let broken: &[(&str, Mutation)] = &[
        ("specVersion as a number", |d| d["specVersion"] = json!(1.5)),
        ("unknown component type", |d| d["components"][0]["type"] = json!("libary")),
        ("component without a name", |d| drop(d["components"][1].as_object_mut().unwrap().remove("name"))),
        ("serial number not a UUID URN", |d| d["serialNumber"] = json!("urn:uuid:not-a-uuid")),
        ("timestamp not RFC 3339", |d| d["metadata"]["timestamp"] = json!("14 Nov 2023 22:13")),
        ("unknown property (strict)", |d| d["components"][2]["purll"] = json!("pkg:npm/x@1")),
        ("purl not a string", |d| d["components"][3]["purl"] = json!(["pkg:deb/debian/x@1"])),
    ];
    let mut files = vec![good.clone()];
    for (i, (_, mutate)) in broken.iter().enumerate() {
        let mut d = doc.clone();
        mutate(&mut d);
        let path = tmp.path().join(format!("broken-{i}.cdx.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&d).unwrap()).unwrap();
        files.push(path);
    }
    let verdicts = validate_sboms(&files);
    assert_eq!(
        verdicts[0]["valid"],
        true,
        "the SBOM does not validate: {}\n{}",
        verdicts[0],
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(verdicts[0]["problems"], json!([]), "{}", verdicts[0]);
    for ((what, _), verdict) in broken.iter().zip(&verdicts[1..]) {
        assert_eq!(verdict["valid"], false, "the validator accepted a broken SBOM ({what}): {verdict}");
        eprintln!("rejected, as it must be ({what}): {}", verdict["error"]);
    }
}
