//! The SBOM: a CycloneDX 1.5 JSON document of a rootfs's packages, as deterministic bytes.
//!
//! Same input, same bytes: the packages are sorted and deduplicated here whatever order they come
//! in, every object is a struct serialized in declaration order (no map whose order could depend
//! on serde_json features), the time is `SOURCE_DATE_EPOCH`, and the serial number is derived
//! from the rest of the document.
//!
//! Shape: `metadata.component` is the image (`operating-system`, the image's name and version,
//! its architecture as a property), `metadata.tools.components` names capsem-builder and its
//! version, `metadata.lifecycles` is `post-build` (read from the built filesystem). Each package
//! is one component with its purl, a unique `bom-ref`, and `capsem:package:*` properties for the
//! manager, the dpkg architecture and the location in the rootfs. npm scopes become the
//! component `group`, as CycloneDX's own npm tooling does. The component `type` is `application`
//! for a globally installed npm package (`<prefix>/lib/node_modules/<name>`: what an image
//! installs to get a command) and `library` for everything else — the databases do not say which
//! Debian or Python packages are programs.
//!
//! The serial number is `urn:uuid:` + the first 16 bytes of a BLAKE3 (derive-key mode) of the
//! document with an all-zero serial, with the RFC 4122 version 4 and variant bits set: the
//! schema's pattern admits versions 1–5 only, and a hash is as unpredictable as the random bits
//! version 4 promises, while staying the same for the same content.

use std::collections::BTreeMap;

use capsem_trust::Package;
use serde::Serialize;

use super::purl;

/// `$schema` of the document.
const SCHEMA: &str = "http://cyclonedx.org/schema/bom-1.5.schema.json";
/// BLAKE3 derive-key context of the serial number.
const SERIAL_CONTEXT: &str = "capsem-builder 2025 cyclonedx serialNumber";
const ZERO_SERIAL: &str = "urn:uuid:00000000-0000-0000-0000-000000000000";

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    #[serde(rename = "bomFormat")]
    bom_format: &'static str,
    #[serde(rename = "specVersion")]
    spec_version: &'static str,
    #[serde(rename = "serialNumber")]
    serial_number: String,
    version: u32,
    metadata: Metadata<'a>,
    components: Vec<Component<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    timestamp: String,
    lifecycles: [Lifecycle; 1],
    tools: Tools,
    component: Component<'a>,
}

#[derive(Serialize)]
struct Lifecycle {
    phase: &'static str,
}

#[derive(Serialize)]
struct Tools {
    components: [Component<'static>; 1],
}

#[derive(Serialize)]
struct Component<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref", skip_serializing_if = "Option::is_none")]
    bom_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    name: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property<'a>>,
}

#[derive(Serialize)]
struct Property<'a> {
    name: &'static str,
    value: &'a str,
}

/// The CycloneDX 1.5 JSON SBOM of an image's packages: pretty-printed (two-space indent) with a
/// final newline; the same arguments give the same bytes, whatever the order of `packages`.
pub fn cyclonedx(
    image_name: &str,
    image_version: &str,
    arch: &str,
    source_date_epoch: u64,
    packages: &[Package],
) -> Vec<u8> {
    let mut sorted: Vec<&Package> = packages.iter().collect();
    sorted.sort();
    sorted.dedup();
    let refs = bom_refs(&sorted);
    let components = sorted.iter().zip(refs).map(|(p, r)| component(p, r)).collect();
    let tool = Component {
        kind: "application",
        bom_ref: None,
        group: None,
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        purl: None,
        properties: Vec::new(),
    };
    let image = Component {
        kind: "operating-system",
        bom_ref: Some(format!("capsem-image:{image_name}@{image_version}?arch={arch}")),
        group: None,
        name: image_name,
        version: image_version,
        purl: None,
        properties: vec![Property { name: "capsem:image:arch", value: arch }],
    };
    let mut doc = Document {
        schema: SCHEMA,
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: ZERO_SERIAL.to_owned(),
        version: 1,
        metadata: Metadata {
            timestamp: capsem_trust::manifest::rfc3339(source_date_epoch),
            lifecycles: [Lifecycle { phase: "post-build" }],
            tools: Tools { components: [tool] },
            component: image,
        },
        components,
    };
    doc.serial_number = serial_number(&to_json(&doc));
    to_json(&doc)
}

fn to_json(doc: &Document<'_>) -> Vec<u8> {
    // Only strings, integers and structs: serialization cannot fail.
    let mut out = serde_json::to_vec_pretty(doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `urn:uuid:` of a version-4-shaped UUID taken from the BLAKE3 of `content`.
fn serial_number(content: &[u8]) -> String {
    let hash = blake3::Hasher::new_derive_key(SERIAL_CONTEXT).update(content).finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("urn:uuid:{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// One unique `bom-ref` per package: its purl, with `|<location>` (then `|<n>`) appended only
/// where packages share it (the same npm package installed in two places).
fn bom_refs(packages: &[&Package]) -> Vec<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for p in packages {
        *count.entry(&p.purl).or_default() += 1;
    }
    let mut refs: Vec<String> = packages
        .iter()
        .map(|p| match (count[p.purl.as_str()], &p.location) {
            (1, _) | (_, None) => p.purl.clone(),
            (_, Some(location)) => format!("{}|{location}", p.purl),
        })
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &mut refs {
        let n = seen.entry(r.clone()).or_default();
        *n += 1;
        if *n > 1 {
            r.push_str(&format!("|{n}"));
        }
    }
    refs
}

fn component<'a>(p: &'a Package, bom_ref: String) -> Component<'a> {
    let (group, name) = if p.manager == "npm" { purl::split_npm(&p.name) } else { (None, p.name.as_str()) };
    let mut properties = Vec::new();
    if let Some(arch) = &p.arch {
        properties.push(Property { name: "capsem:package:arch", value: arch });
    }
    if let Some(location) = &p.location {
        properties.push(Property { name: "capsem:package:location", value: location });
    }
    properties.push(Property { name: "capsem:package:manager", value: &p.manager });
    Component {
        kind: if is_global_npm(p) { "application" } else { "library" },
        bom_ref: Some(bom_ref),
        group,
        name,
        version: &p.version,
        purl: Some(&p.purl),
        properties,
    }
}

/// An npm package installed globally: `<prefix>/lib/node_modules/<name>` or `…/@scope/<name>`,
/// not nested in another package.
fn is_global_npm(p: &Package) -> bool {
    let Some(location) = p.location.as_deref().filter(|_| p.manager == "npm") else { return false };
    let comps: Vec<&str> = location.split('/').collect();
    let nm = if p.name.starts_with('@') { comps.len().checked_sub(3) } else { comps.len().checked_sub(2) };
    nm.is_some_and(|i| i >= 1 && comps[i] == "node_modules" && comps[i - 1] == "lib")
        && comps.iter().filter(|c| **c == "node_modules").count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(manager: &str, name: &str, version: &str, arch: Option<&str>, location: Option<&str>) -> Package {
        let purl = match manager {
            "apt" => purl::deb(name, version, arch.unwrap_or("all")),
            "pip" => purl::pypi(name, version),
            _ => purl::npm(name, version),
        };
        Package {
            manager: manager.into(),
            name: name.into(),
            version: version.into(),
            arch: arch.map(Into::into),
            location: location.map(Into::into),
            purl,
        }
    }

    fn sample() -> Vec<Package> {
        vec![
            pkg("npm", "semver", "7.6.3", None, Some("/opt/ai-clis/lib/node_modules/semver")),
            pkg("apt", "libstdc++6", "12.2.0-14", Some("amd64"), None),
            pkg("npm", "@scope/tool", "1.0.0", None, Some("/usr/lib/node_modules/@scope/tool")),
            pkg("npm", "semver", "7.6.3", None, Some("/usr/lib/node_modules/npm/node_modules/semver")),
            pkg("pip", "PyYAML", "6.0", None, Some("/usr/lib/python3/dist-packages/PyYAML-6.0.dist-info")),
        ]
    }

    #[test]
    fn document_shape() {
        let out = cyclonedx("default", "0.3.0", "x86_64", 1_700_000_000, &sample());
        expect_test::expect_file!["snapshots/cyclonedx_sample.json"].assert_eq(std::str::from_utf8(&out).unwrap());
    }

    #[test]
    fn bytes_depend_on_content_only() {
        let a = cyclonedx("img", "1", "x86_64", 1, &sample());
        let mut shuffled = sample();
        shuffled.reverse();
        shuffled.push(sample()[0].clone());
        assert_eq!(a, cyclonedx("img", "1", "x86_64", 1, &shuffled));
        let serial = |b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["serialNumber"].as_str().unwrap().to_owned()
        };
        let b = cyclonedx("img", "1", "x86_64", 2, &sample());
        assert_ne!(serial(&a), serial(&b), "another time, another serial number");
        let s = serial(&a);
        assert_eq!(s.len(), "urn:uuid:".len() + 36);
        assert_eq!(&s[23..24], "4", "{s}");
        assert!("89ab".contains(&s[28..29]), "{s}");
    }

    #[test]
    fn bom_refs_are_unique() {
        let mut p = sample();
        // Same purl and location (different name spellings, as pip normalization allows).
        p.push(pkg("pip", "pyyaml", "6.0", None, Some("/usr/lib/python3/dist-packages/PyYAML-6.0.dist-info")));
        let mut sorted: Vec<&Package> = p.iter().collect();
        sorted.sort();
        let refs = bom_refs(&sorted);
        let unique: std::collections::BTreeSet<&String> = refs.iter().collect();
        assert_eq!(unique.len(), refs.len(), "{refs:#?}");
        assert!(refs.contains(&"pkg:npm/semver@7.6.3|/usr/lib/node_modules/npm/node_modules/semver".to_owned()));
        assert!(refs.contains(&"pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64".to_owned()));
    }

    #[test]
    fn global_npm_packages_are_applications() {
        let global = |name: &str, location: &str| is_global_npm(&pkg("npm", name, "1", None, Some(location)));
        assert!(global("semver", "/opt/ai-clis/lib/node_modules/semver"));
        assert!(global("@a/b", "/usr/lib/node_modules/@a/b"));
        assert!(!global("semver", "/usr/lib/node_modules/npm/node_modules/semver"));
        assert!(!global("x", "/app/node_modules/x"));
        assert!(!global("x", "/node_modules/x"));
        assert!(!is_global_npm(&pkg("pip", "x", "1", None, Some("/lib/node_modules/x"))));
    }
}
