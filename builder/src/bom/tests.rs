//! [`read_bom`] over real squashfs images written by [`tar_to_squashfs`] from in-memory tars: a
//! dpkg database, Python site directories and npm trees with decoys next to each, and the errors.

use std::path::{Path, PathBuf};

use capsem_trust::Package;
use tar::{EntryType, Header};

use super::{Bom, BomError, Skipped, purl, read_bom, read_packages};
use crate::rootfs::{SquashOptions, tar_to_squashfs};

enum Entry {
    File(&'static str, Vec<u8>),
    Symlink(&'static str, &'static str),
}
use Entry::{File, Symlink};

fn file(path: &'static str, text: &str) -> Entry {
    File(path, text.as_bytes().to_vec())
}

/// Writes `entries` as a squashfs image in `dir`.
fn image(dir: &Path, entries: &[Entry]) -> PathBuf {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match entry {
            File(path, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Symlink(path, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                tar.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    let out = dir.join("rootfs.squashfs");
    tar_to_squashfs(tar.into_inner().unwrap().as_slice(), &out, &SquashOptions::default()).unwrap();
    out
}

const STATUS: &str = "\
Package: base-files
Status: install ok installed
Priority: required
Essential: yes
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: old-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Conffiles:
 /etc/old-thing.conf 0123456789abcdef0123456789abcdef

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4
Depends: libgcc-s1
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system. Version: 0.0 is not a field here.
 .
 Package: nor is this
Homepage: https://www.gnu.org/software/libc/libc.html

Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: libstdc++6
Status: hold ok installed
Architecture: amd64
Version: 12.2.0-14

Package: broken
Status: install reinstreq half-configured
Architecture: all
Version: 3
";

fn metadata(name: &str, version: &str) -> String {
    format!(
        "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nLong description.\nName: not-this\n"
    )
}

fn pj(name: &str, version: &str) -> String {
    format!("{{\n  \"name\": \"{name}\",\n  \"version\": \"{version}\",\n  \"bin\": {{ \"x\": \"x.js\" }}\n}}\n")
}

fn fixture() -> Vec<Entry> {
    vec![
        file("var/lib/dpkg/status", STATUS),
        file("var/lib/dpkg/updates/tmp.i", ""),
        file(
            "var/lib/dpkg/status-old",
            "Package: decoy\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n",
        ),
        // pip: dist-info, egg-info directory and file, every site directory kind.
        file("usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/METADATA", &metadata("PyYAML", "6.0")),
        file("usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/RECORD", ""),
        file("usr/lib/python3/dist-packages/six-1.16.0.egg-info", &metadata("six", "1.16.0")),
        file(
            "usr/lib/python3/dist-packages/zope.interface-5.5.2.egg-info/PKG-INFO",
            &metadata("zope.interface", "5.5.2"),
        ),
        file(
            "usr/lib/python3.11/site-packages/Local_Pkg-1.0+local.dist-info/METADATA",
            &metadata("Local_Pkg", "1.0+local"),
        ),
        file(
            "usr/local/lib/python3.11/dist-packages/iniconfig-2.0.0.dist-info/METADATA",
            &metadata("iniconfig", "2.0.0"),
        ),
        // pip decoys: vendored deeper, a venv, an unversioned interpreter dir, no METADATA, no Version.
        file("usr/lib/python3/dist-packages/pip/_vendor/vendored-1.0.dist-info/METADATA", &metadata("vendored", "1.0")),
        file("opt/venv/lib/python3.11/site-packages/venvpkg-1.dist-info/METADATA", &metadata("venvpkg", "1")),
        file("usr/lib/python3.x/site-packages/odd-1.dist-info/METADATA", &metadata("odd", "1")),
        file("usr/lib/python3/dist-packages/empty-1.dist-info/RECORD", ""),
        file("usr/lib/python3/dist-packages/flat-1.dist-info", &metadata("flat", "1")),
        file(
            "usr/lib/python3/dist-packages/noversion-1.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: noversion\n",
        ),
        Symlink("usr/lib/python3/dist-packages/linked-1.dist-info", "/srv/linked-1.dist-info"),
        file("srv/linked-1.dist-info/METADATA", &metadata("linked", "1")),
        // npm: global, nested, scoped, scoped nested.
        file("usr/lib/node_modules/npm/package.json", &pj("npm", "9.2.0")),
        file("usr/lib/node_modules/npm/node_modules/semver/package.json", &pj("semver", "7.5.4")),
        file("usr/lib/node_modules/npm/node_modules/@npmcli/arborist/package.json", &pj("@npmcli/arborist", "6.2.9")),
        file(
            "opt/ai-clis/lib/node_modules/@anthropic-ai/claude-code/package.json",
            &pj("@anthropic-ai/claude-code", "1.0.0-beta.1+build.5"),
        ),
        file(
            "opt/ai-clis/lib/node_modules/@anthropic-ai/claude-code/node_modules/semver/package.json",
            &pj("semver", "7.5.4"),
        ),
        // npm decoys: outside node_modules, inside a package, bookkeeping, unusable manifests, links.
        file("opt/app/package.json", &pj("app", "1.0.0")),
        file("usr/lib/node_modules/npm/lib/package.json", &pj("inner", "1.0.0")),
        file("usr/lib/node_modules/npm/node_modules/.package-lock.json", &pj("lock", "1.0.0")),
        file("usr/lib/node_modules/npm/node_modules/@npmcli/package.json", &pj("scope-dir", "1.0.0")),
        file(
            "usr/lib/node_modules/npm/node_modules/private-ws/package.json",
            "{\"name\": \"private-ws\", \"private\": true}",
        ),
        file("usr/lib/node_modules/npm/node_modules/bad-json/package.json", "{\"name\": "),
        Symlink("usr/lib/node_modules/linked", "/srv/linked"),
        file("srv/linked/package.json", &pj("linked", "1.0.0")),
        Symlink("usr/lib/node_modules/npm/node_modules/.bin/semver", "../semver/bin/semver.js"),
    ]
}

fn apt(name: &str, version: &str) -> Package {
    Package {
        manager: "apt".into(),
        name: name.into(),
        version: version.into(),
        arch: Some("amd64".into()),
        location: None,
        purl: purl::deb(name, version, "amd64"),
    }
}

fn located(manager: &str, name: &str, version: &str, location: &str) -> Package {
    let purl = if manager == "pip" { purl::pypi(name, version) } else { purl::npm(name, version) };
    Package {
        manager: manager.into(),
        name: name.into(),
        version: version.into(),
        arch: None,
        location: Some(location.into()),
        purl,
    }
}

fn skipped(manager: &'static str, path: &str, reason: &str) -> Skipped {
    Skipped { manager, path: path.into(), reason: reason.into() }
}

#[test]
fn reads_every_manager_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), &fixture());
    let bom = read_bom(&img).unwrap();
    let nm = "/usr/lib/node_modules/npm/node_modules";
    let dp = "/usr/lib/python3/dist-packages";
    let expected = vec![
        apt("base-files", "12.4+deb12u5"),
        apt("libc6", "2.36-9+deb12u4"),
        apt("libstdc++6", "12.2.0-14"),
        apt("zlib1g", "1:1.2.13.dfsg-1"),
        located(
            "npm",
            "@anthropic-ai/claude-code",
            "1.0.0-beta.1+build.5",
            "/opt/ai-clis/lib/node_modules/@anthropic-ai/claude-code",
        ),
        located("npm", "@npmcli/arborist", "6.2.9", &format!("{nm}/@npmcli/arborist")),
        located("npm", "npm", "9.2.0", "/usr/lib/node_modules/npm"),
        located(
            "npm",
            "semver",
            "7.5.4",
            "/opt/ai-clis/lib/node_modules/@anthropic-ai/claude-code/node_modules/semver",
        ),
        located("npm", "semver", "7.5.4", &format!("{nm}/semver")),
        located("pip", "Local_Pkg", "1.0+local", "/usr/lib/python3.11/site-packages/Local_Pkg-1.0+local.dist-info"),
        located("pip", "PyYAML", "6.0", &format!("{dp}/PyYAML-6.0.dist-info")),
        located("pip", "iniconfig", "2.0.0", "/usr/local/lib/python3.11/dist-packages/iniconfig-2.0.0.dist-info"),
        located("pip", "six", "1.16.0", &format!("{dp}/six-1.16.0.egg-info")),
        located("pip", "zope.interface", "5.5.2", &format!("{dp}/zope.interface-5.5.2.egg-info")),
    ];
    assert_eq!(bom.packages, expected, "{:#?}", bom.packages);
    let expected_skipped = vec![
        skipped(
            "apt",
            "/var/lib/dpkg/status",
            "package broken: status `install reinstreq half-configured`, not installed",
        ),
        skipped("npm", "/usr/lib/node_modules/linked", "symlink, not followed"),
        skipped(
            "npm",
            &format!("{nm}/bad-json/package.json"),
            "not JSON: EOF while parsing a value at line 1 column 9",
        ),
        skipped("npm", &format!("{nm}/private-ws/package.json"), "no \"version\" string"),
        skipped("pip", &format!("{dp}/empty-1.dist-info"), "no METADATA file"),
        skipped("pip", &format!("{dp}/flat-1.dist-info"), "a file; a .dist-info must be a directory"),
        skipped("pip", &format!("{dp}/linked-1.dist-info"), "symlink, not followed"),
        skipped("pip", &format!("{dp}/noversion-1.dist-info/METADATA"), "no Version header"),
    ];
    assert_eq!(bom.skipped, expected_skipped, "{:#?}", bom.skipped);
    assert_eq!((bom.skipped_count("npm"), bom.skipped_count("pip")), (3, 4));
    // The purls, spelled out once.
    let purls: Vec<&str> = bom.packages.iter().map(|p| p.purl.as_str()).collect();
    assert_eq!(
        purls,
        [
            "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64",
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64",
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64",
            "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64",
            "pkg:npm/%40anthropic-ai/claude-code@1.0.0-beta.1%2Bbuild.5",
            "pkg:npm/%40npmcli/arborist@6.2.9",
            "pkg:npm/npm@9.2.0",
            "pkg:npm/semver@7.5.4",
            "pkg:npm/semver@7.5.4",
            "pkg:pypi/local-pkg@1.0%2Blocal",
            "pkg:pypi/pyyaml@6.0",
            "pkg:pypi/iniconfig@2.0.0",
            "pkg:pypi/six@1.16.0",
            "pkg:pypi/zope-interface@5.5.2",
        ]
    );
    assert_eq!(read_packages(&img).unwrap(), bom.packages);
}

#[test]
fn an_image_without_databases_has_no_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), &[file("etc/hostname", "")]);
    let bom = read_bom(&img).unwrap();
    assert_eq!(
        bom,
        Bom {
            packages: vec![],
            skipped: vec![skipped("apt", "/var/lib/dpkg/status", "absent: the image has no dpkg database")]
        }
    );
}

fn error_of(entries: &[Entry]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), entries);
    let err = read_bom(&img).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: ", img.display())), "{text}");
    text[img.display().to_string().len() + 2..].to_owned()
}

#[test]
fn a_malformed_dpkg_database_is_an_error_naming_file_and_line() {
    let text = STATUS.replace("Version: 1:1.2.13.dfsg-1", "Version: 1:1.2.13 dfsg-1");
    assert_eq!(
        error_of(&[file("var/lib/dpkg/status", &text)]),
        "/var/lib/dpkg/status:32: package zlib1g: invalid Version `1:1.2.13 dfsg-1`"
    );
    assert_eq!(
        error_of(&[Symlink("var/lib/dpkg/status", "status-old"), file("var/lib/dpkg/status-old", STATUS)]),
        "/var/lib/dpkg/status: not a regular file or directory (symlinks are not followed)"
    );
    assert_eq!(
        error_of(&[file("var/lib/dpkg/status", STATUS), file("var/lib/dpkg/updates/0003", "Package: a\n")]),
        "/var/lib/dpkg/updates/0003: dpkg journal entry not integrated into the status file (the build must end \
         with a consistent dpkg database: `dpkg --configure -a`)"
    );
    assert_eq!(
        error_of(&[file("var/lib/dpkg/status/x", STATUS)]),
        "/var/lib/dpkg/status: a directory, not dpkg's status file"
    );
    assert_eq!(
        error_of(&[Symlink("var/lib/dpkg", "/srv/dpkg"), file("srv/dpkg/status", STATUS)]),
        "/var/lib/dpkg: not a regular file or directory (symlinks are not followed)"
    );
}

#[test]
fn oversized_database_files_are_refused_before_reading() {
    let big = vec![b' '; super::PACKAGE_JSON_MAX as usize + 1];
    assert_eq!(
        error_of(&[File("a/node_modules/x/package.json", big)]),
        format!(
            "/a/node_modules/x/package.json is {} bytes, more than the 16777216 bytes read of a package database file",
            (16 << 20) + 1
        )
    );
    let big = vec![b'\n'; super::DPKG_STATUS_MAX as usize + 1];
    assert!(error_of(&[File("var/lib/dpkg/status", big)]).starts_with("/var/lib/dpkg/status is 67108865 bytes"));
}

#[test]
fn unreadable_images_are_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.squashfs");
    let err = read_bom(&missing).unwrap_err();
    assert!(matches!(err, BomError::Open { .. }) && err.to_string().contains("missing.squashfs"), "{err}");
    let junk = tmp.path().join("junk.squashfs");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = read_bom(&junk).unwrap_err();
    assert!(matches!(err, BomError::Squashfs { .. }) && err.to_string().contains("junk.squashfs"), "{err}");
}
