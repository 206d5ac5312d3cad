//! `verify_for_boot` against real signed releases built in a temporary directory: the happy
//! path, the tamper matrix (every boot file × flip a byte, truncate, delete, swap with the same
//! file of another valid release), key trust, architecture, symlinks and rollback.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use capsem_trust::manifest::{ArchEntry, Asset, BuilderInfo, FORMAT, Inputs, Manifest, rfc3339};
use capsem_trust::{BootError, PublicKey, RollbackError, RollbackStore, TrustedKey, verify_for_boot};
use tempfile::TempDir;

const ARCH: &str = "x86_64";

/// A minisign signing key, signing as `capsem-builder sign` does (prehashed `ED`).
struct Signer {
    id: [u8; 8],
    kp: ed25519_compact::KeyPair,
}

impl Signer {
    fn new(n: u8) -> Signer {
        Signer { id: [n, 0xA5, 1, 2, 3, 4, 5, n], kp: ed25519_compact::KeyPair::from_seed([n; 32].into()) }
    }

    fn public_key(&self) -> PublicKey {
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(&self.id);
        raw.extend_from_slice(self.kp.pk.as_ref());
        PublicKey::parse(&STANDARD.encode(raw)).unwrap()
    }

    fn trusted(&self, origin: &str) -> TrustedKey {
        TrustedKey::new(self.public_key(), origin)
    }

    fn sign(&self, data: &[u8]) -> String {
        let prehash = blake2b_simd::Params::new().hash_length(64).hash(data);
        let sig = self.kp.sk.sign(prehash.as_bytes(), None);
        let trusted = format!("capsem manifest manifest.json b3:{}", blake3::hash(data).to_hex());
        let mut global_input = sig.to_vec();
        global_input.extend_from_slice(trusted.as_bytes());
        let global = self.kp.sk.sign(&global_input, None);
        let mut line = b"ED".to_vec();
        line.extend_from_slice(&self.id);
        line.extend_from_slice(sig.as_ref());
        format!(
            "untrusted comment: test signature\n{}\ntrusted comment: {trusted}\n{}\n",
            STANDARD.encode(line),
            STANDARD.encode(global.as_ref())
        )
    }
}

/// What to build.
#[derive(Clone)]
struct Spec {
    /// Changes every file's content, never its size.
    variant: u8,
    name: &'static str,
    version: &'static str,
    epoch: u64,
    /// Boot assets to list in the manifest.
    listed: Vec<&'static str>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            variant: 1,
            name: "default",
            version: "1.0.0",
            epoch: 1_700_000_000,
            listed: vec!["initrd.img", "rootfs.squashfs", "vmlinuz"],
        }
    }
}

/// Sizes chosen so that both hashing paths run: small files are read, large ones mmapped.
fn contents(name: &str, variant: u8) -> Vec<u8> {
    let len = match name {
        "vmlinuz" => 5_000,
        "initrd.img" => 300_000,
        "rootfs.squashfs" => 1_200_000,
        _ => unreachable!(),
    };
    (0..len).map(|i: usize| (i.wrapping_mul(31) ^ usize::from(variant).wrapping_mul(97) ^ name.len()) as u8).collect()
}

fn asset(filename: &str, bytes: &[u8]) -> Asset {
    Asset { filename: filename.into(), size: bytes.len() as u64, b3: blake3::hash(bytes).to_hex().to_string() }
}

struct Release {
    _tmp: TempDir,
    dir: PathBuf,
    manifest: Manifest,
}

/// Writes a complete signed release.
fn build(signer: &Signer, spec: &Spec) -> Release {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("assets");
    fs::create_dir_all(dir.join(ARCH)).unwrap();
    let mut assets = Vec::new();
    for name in ["initrd.img", "rootfs.squashfs", "vmlinuz"] {
        let bytes = contents(name, spec.variant);
        fs::write(dir.join(ARCH).join(name), &bytes).unwrap();
        if spec.listed.contains(&name) {
            assets.push(asset(name, &bytes));
        }
    }
    let sbom = format!("{{\"bomFormat\":\"CycloneDX\",\"v\":{}}}\n", spec.variant).into_bytes();
    fs::write(dir.join(ARCH).join("sbom.cdx.json"), &sbom).unwrap();
    let settings = format!("{{\"web\":{{\"allow\":[\"example{}.com\"]}}}}\n", spec.variant).into_bytes();
    fs::write(dir.join("defaults.json"), &settings).unwrap();
    let manifest = Manifest {
        format: FORMAT,
        name: spec.name.into(),
        version: spec.version.into(),
        build_timestamp: rfc3339(spec.epoch),
        source_date_epoch: spec.epoch,
        builder: BuilderInfo { version: "0.1.0".into(), backhand: "0.25.5".into(), zstd: "1.5".into() },
        settings: asset("defaults.json", &settings),
        architectures: vec![ArchEntry {
            arch: ARCH.into(),
            assets,
            sbom: asset("sbom.cdx.json", &sbom),
            packages: vec![],
            vulnerabilities: vec![],
            audited: None,
            inputs: Inputs {
                image_definition_b3: "0".repeat(64),
                base: BTreeMap::new(),
                kernel_source: BTreeMap::new(),
                defconfig_b3: "0".repeat(64),
                kernel_config_b3: "0".repeat(64),
                dockerfiles_b3: BTreeMap::new(),
                toolchain: BTreeMap::new(),
            },
        }],
    };
    sign_manifest(&dir, signer, &manifest.to_json());
    Release { _tmp: tmp, dir, manifest }
}

fn sign_manifest(dir: &Path, signer: &Signer, bytes: &[u8]) {
    fs::write(dir.join("manifest.json"), bytes).unwrap();
    fs::write(dir.join("manifest.json.minisig"), signer.sign(bytes)).unwrap();
}

fn keys(signer: &Signer) -> Vec<TrustedKey> {
    vec![signer.trusted("/etc/capsem/corp.toml:4")]
}

fn verify(r: &Release, signer: &Signer) -> Result<capsem_trust::VerifiedRelease, BootError> {
    verify_for_boot(&r.dir, ARCH, &keys(signer), None)
}

fn read_all(mut f: &fs::File) -> Vec<u8> {
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_valid_release_verifies_and_its_files_hash_to_the_manifest() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    let v = verify(&r, &s).unwrap();
    assert_eq!(v.manifest, r.manifest);
    assert_eq!(v.arch, ARCH);
    assert_eq!(v.dir, r.dir);
    assert_eq!(v.key.key_id, s.public_key().key_id());
    assert_eq!(v.key.origin, "/etc/capsem/corp.toml:4");
    assert!(v.key.prehashed);
    assert_eq!(v.key.to_string(), format!("key {} (from /etc/capsem/corp.toml:4)", s.public_key().key_id()));
    let entry = r.manifest.arch(ARCH).unwrap();
    let mut total = 0;
    for (f, name) in [(&v.kernel, "vmlinuz"), (&v.initrd, "initrd.img"), (&v.rootfs, "rootfs.squashfs")] {
        let listed = entry.asset(name).unwrap();
        assert_eq!(f.path, r.dir.join(ARCH).join(name));
        assert_eq!((f.size, f.b3.as_str()), (listed.size, listed.b3.as_str()));
        // The descriptor is at offset 0 and holds exactly the verified bytes.
        let mut bytes = Vec::new();
        (&f.file).read_to_end(&mut bytes).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), listed.b3, "{name}");
        assert_eq!(fs::read(f.fd_path()).unwrap(), bytes, "{name} through its fd path");
        total += f.size;
    }
    assert_eq!(v.settings, fs::read(r.dir.join("defaults.json")).unwrap());
    assert_eq!(blake3::hash(&v.settings).to_hex().as_str(), r.manifest.settings.b3);
    assert_eq!(v.timings.bytes_hashed, total + v.settings.len() as u64);
}

#[test]
fn returned_files_keep_the_verified_bytes_after_the_paths_are_replaced() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    let v = verify(&r, &s).unwrap();
    let other = build(&s, &Spec { variant: 2, ..Spec::default() });
    for name in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        let path = r.dir.join(ARCH).join(name);
        let staged = r.dir.join(ARCH).join(format!(".{name}.new"));
        fs::copy(other.dir.join(ARCH).join(name), &staged).unwrap();
        fs::rename(&staged, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), contents(name, 2), "the path now names the other file");
    }
    fs::remove_file(r.dir.join(ARCH).join("vmlinuz")).unwrap();
    for (f, name) in [(&v.kernel, "vmlinuz"), (&v.initrd, "initrd.img"), (&v.rootfs, "rootfs.squashfs")] {
        assert_eq!(read_all(&f.file), contents(name, 1), "{name}");
        assert_eq!(fs::read(f.fd_path()).unwrap(), contents(name, 1), "{name} through its fd path");
    }
}

#[derive(Debug, Clone, Copy)]
enum Tamper {
    FlipByte,
    Truncate,
    Delete,
    SwapWithOtherRelease,
}

/// Which error each tampering must give, by variant name.
fn expected(file: &str, t: Tamper) -> &'static str {
    match (file, t) {
        ("manifest.json", Tamper::Delete) => "ManifestMissing",
        ("manifest.json.minisig", Tamper::Delete) => "SignatureMissing",
        ("manifest.json" | "manifest.json.minisig", _) => "BadSignature",
        (_, Tamper::FlipByte | Tamper::SwapWithOtherRelease) => "HashMismatch",
        (_, Tamper::Truncate) => "Truncated",
        (_, Tamper::Delete) => "AssetMissing",
    }
}

fn variant(e: &BootError) -> &'static str {
    match e {
        BootError::NoTrustedKeys { .. } => "NoTrustedKeys",
        BootError::ManifestMissing { .. } => "ManifestMissing",
        BootError::SignatureMissing { .. } => "SignatureMissing",
        BootError::UntrustedKey { .. } => "UntrustedKey",
        BootError::BadSignature { .. } => "BadSignature",
        BootError::ManifestInvalid { .. } => "ManifestInvalid",
        BootError::WrongArch { .. } => "WrongArch",
        BootError::AssetUnlisted { .. } => "AssetUnlisted",
        BootError::AssetMissing { .. } => "AssetMissing",
        BootError::Symlink { .. } => "Symlink",
        BootError::NotRegular { .. } => "NotRegular",
        BootError::Truncated { .. } => "Truncated",
        BootError::SizeMismatch { .. } => "SizeMismatch",
        BootError::HashMismatch { .. } => "HashMismatch",
        BootError::ModifiedDuringVerification { .. } => "ModifiedDuringVerification",
        BootError::Rollback { .. } => "Rollback",
        BootError::RollbackStore(_) => "RollbackStore",
        BootError::Io { .. } => "Io",
    }
}

#[test]
fn every_tampered_file_is_refused_with_the_right_error_naming_it() {
    let s = Signer::new(1);
    let files = [
        "x86_64/vmlinuz",
        "x86_64/initrd.img",
        "x86_64/rootfs.squashfs",
        "defaults.json",
        "manifest.json",
        "manifest.json.minisig",
    ];
    let tampers = [Tamper::FlipByte, Tamper::Truncate, Tamper::Delete, Tamper::SwapWithOtherRelease];
    // The other release: same image, same key, same sizes, different content.
    let other = build(&s, &Spec { variant: 2, ..Spec::default() });
    for rel in files {
        for t in tampers {
            let r = build(&s, &Spec::default());
            let path = r.dir.join(rel);
            match t {
                Tamper::FlipByte => {
                    let mut bytes = fs::read(&path).unwrap();
                    // In the signature, a byte of the trusted comment (a flipped base64
                    // character may only change the key id, or not decode at all).
                    let at = if rel.ends_with(".minisig") {
                        String::from_utf8_lossy(&bytes).find("capsem manifest").unwrap() + 3
                    } else {
                        bytes.len() / 2
                    };
                    bytes[at] ^= 0x01;
                    fs::write(&path, bytes).unwrap();
                }
                Tamper::Truncate => {
                    let len = fs::metadata(&path).unwrap().len();
                    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
                }
                Tamper::Delete => fs::remove_file(&path).unwrap(),
                Tamper::SwapWithOtherRelease => {
                    let theirs = fs::read(other.dir.join(rel)).unwrap();
                    assert_ne!(theirs, fs::read(&path).unwrap(), "{rel} must differ between the releases");
                    fs::write(&path, theirs).unwrap();
                }
            }
            let e = verify(&r, &s).expect_err(&format!("{rel} {t:?} must be refused"));
            let msg = e.to_string();
            assert_eq!(
                variant(&e),
                expected(Path::new(rel).file_name().unwrap().to_str().unwrap(), t),
                "{rel} {t:?}: {msg}"
            );
            assert!(msg.contains(rel), "{rel} {t:?}: the message must name the file: {msg}");
            // A bad signature cannot tell a changed manifest from a changed signature: it names
            // both, and its path is the signature's.
            let primary = if variant(&e) == "BadSignature" { r.dir.join("manifest.json.minisig") } else { path };
            assert_eq!(e.path(), Some(primary.as_path()), "{rel} {t:?}");
            if matches!(e, BootError::HashMismatch { .. }) {
                assert!(msg.contains("modified or replaced"), "{msg}");
            }
        }
    }
}

#[test]
fn a_larger_file_is_a_size_mismatch_and_a_directory_is_not_regular() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    let kernel = r.dir.join(ARCH).join("vmlinuz");
    fs::OpenOptions::new().append(true).open(&kernel).unwrap().write_all(b"x").unwrap();
    let e = verify(&r, &s).unwrap_err();
    assert!(matches!(e, BootError::SizeMismatch { expected: 5_000, found: 5_001, .. }), "{e}");
    let r = build(&s, &Spec::default());
    let rootfs = r.dir.join(ARCH).join("rootfs.squashfs");
    fs::remove_file(&rootfs).unwrap();
    fs::create_dir(&rootfs).unwrap();
    let e = verify(&r, &s).unwrap_err();
    assert!(matches!(e, BootError::NotRegular { kind: "directory", .. }), "{e}");
    assert!(e.to_string().contains("x86_64/rootfs.squashfs"), "{e}");
}

#[test]
fn symlinked_assets_and_architecture_directories_are_refused() {
    let s = Signer::new(1);
    // A symlink to a file with exactly the right bytes is still refused.
    let r = build(&s, &Spec::default());
    let kernel = r.dir.join(ARCH).join("vmlinuz");
    fs::rename(&kernel, r.dir.join("vmlinuz.real")).unwrap();
    std::os::unix::fs::symlink("../vmlinuz.real", &kernel).unwrap();
    let e = verify(&r, &s).unwrap_err();
    assert!(matches!(e, BootError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains("x86_64/vmlinuz") && e.to_string().contains("symbolic link"), "{e}");

    let r = build(&s, &Spec::default());
    fs::rename(r.dir.join(ARCH), r.dir.join("x86_64.real")).unwrap();
    std::os::unix::fs::symlink("x86_64.real", r.dir.join(ARCH)).unwrap();
    let e = verify(&r, &s).unwrap_err();
    assert!(matches!(e, BootError::Symlink { .. }), "{e}");
    assert_eq!(e.path(), Some(r.dir.join(ARCH).as_path()));

    let r = build(&s, &Spec::default());
    fs::rename(r.dir.join("defaults.json"), r.dir.join("defaults.real")).unwrap();
    std::os::unix::fs::symlink("defaults.real", r.dir.join("defaults.json")).unwrap();
    assert!(matches!(verify(&r, &s), Err(BootError::Symlink { .. })));

    // The release directory itself may be reached through a link: the caller chose that path.
    let r = build(&s, &Spec::default());
    let link = r.dir.with_file_name("current");
    std::os::unix::fs::symlink(&r.dir, &link).unwrap();
    verify_for_boot(&link, ARCH, &keys(&s), None).unwrap();
}

#[test]
fn only_trusted_keys_vouch_for_a_release() {
    let s = Signer::new(1);
    let stranger = Signer::new(2);
    let r = build(&s, &Spec::default());
    let theirs = vec![stranger.trusted("/home/u/.capsem/user.toml:7")];
    let e = verify_for_boot(&r.dir, ARCH, &theirs, None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BootError::UntrustedKey { .. }), "{msg}");
    assert!(msg.contains(&s.public_key().key_id().to_string()), "names the signing key: {msg}");
    assert!(msg.contains(&stranger.public_key().key_id().to_string()), "names the trusted key: {msg}");
    assert!(msg.contains("/home/u/.capsem/user.toml:7"), "names where it came from: {msg}");
    assert!(msg.contains("[trust] public_keys") && msg.contains("manifest.json.minisig"), "{msg}");

    // Among several trusted keys, the one that signed is found and reported with its origin.
    let both = vec![stranger.trusted("user.toml:1"), s.trusted("corp.toml:2")];
    let v = verify_for_boot(&r.dir, ARCH, &both, None).unwrap();
    assert_eq!((v.key.key_id, v.key.origin.as_str()), (s.public_key().key_id(), "corp.toml:2"));

    // Another key that claims the signer's key id does not verify: a bad signature.
    let mut impostor = Signer::new(3);
    impostor.id = s.id;
    let e = verify_for_boot(&r.dir, ARCH, &[impostor.trusted("x")], None).unwrap_err();
    assert!(matches!(e, BootError::BadSignature { .. }), "{e}");
}

#[test]
fn no_trusted_keys_is_refused_with_how_to_add_one() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    let e = verify_for_boot(&r.dir, ARCH, &[], None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BootError::NoTrustedKeys { .. }), "{msg}");
    assert!(msg.contains("`[trust] public_keys`") && msg.contains("~/.capsem/user.toml"), "{msg}");
}

#[test]
fn a_missing_architecture_names_the_manifest_and_what_it_has() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    let e = verify_for_boot(&r.dir, "arm64", &keys(&s), None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BootError::WrongArch { .. }), "{msg}");
    assert!(msg.contains("manifest.json") && msg.contains("arm64") && msg.contains("x86_64"), "{msg}");
}

#[test]
fn a_boot_asset_missing_from_the_manifest_is_unlisted() {
    let s = Signer::new(1);
    let r = build(&s, &Spec { listed: vec!["rootfs.squashfs", "vmlinuz"], ..Spec::default() });
    let e = verify(&r, &s).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BootError::AssetUnlisted { name: "initrd.img", .. }), "{msg}");
    assert!(msg.contains("unlisted") && msg.contains("x86_64/initrd.img") && msg.contains("manifest.json"), "{msg}");
}

#[test]
fn signed_but_invalid_manifests_are_refused() {
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    sign_manifest(&r.dir, &s, b"{\"format\": 1}");
    let e = verify(&r, &s).unwrap_err();
    assert!(matches!(e, BootError::ManifestInvalid { .. }) && e.to_string().contains("manifest.json"), "{e}");

    let mut m = r.manifest.clone();
    m.format = 2;
    sign_manifest(&r.dir, &s, &m.to_json());
    let e = verify(&r, &s).unwrap_err();
    assert!(e.to_string().contains("format 2"), "{e}");

    // Names are single path components, even when signed.
    let mut m = r.manifest.clone();
    m.settings.filename = "../defaults.json".into();
    sign_manifest(&r.dir, &s, &m.to_json());
    assert!(matches!(verify(&r, &s), Err(BootError::ManifestInvalid { .. })));
    let mut m = r.manifest.clone();
    m.architectures[0].arch = "x86_64/../x86_64".into();
    sign_manifest(&r.dir, &s, &m.to_json());
    let e = verify_for_boot(&r.dir, "x86_64/../x86_64", &keys(&s), None).unwrap_err();
    assert!(matches!(e, BootError::ManifestInvalid { .. }), "{e}");
}

fn store_path(t: &TempDir) -> PathBuf {
    t.path().join("state/rollback.json")
}

#[test]
fn rollback_to_an_older_release_is_refused() {
    let s = Signer::new(1);
    let t = tempfile::tempdir().unwrap();
    let mut store = RollbackStore::open(&store_path(&t)).unwrap();
    let new = build(&s, &Spec { version: "1.1.0", epoch: 1_700_000_000, ..Spec::default() });
    let old = build(&s, &Spec { version: "1.0.0", epoch: 1_600_000_000, variant: 2, ..Spec::default() });

    // Nothing recorded: both boot.
    verify_for_boot(&old.dir, ARCH, &keys(&s), Some(&store)).unwrap();
    let v = verify_for_boot(&new.dir, ARCH, &keys(&s), Some(&store)).unwrap();
    assert!(store.record(&v.manifest).unwrap());
    assert!(store_path(&t).is_file());

    // After the newer one was accepted, the older one is refused — also by a fresh handle.
    for store in [&store, &RollbackStore::open(&store_path(&t)).unwrap()] {
        let e = verify_for_boot(&old.dir, ARCH, &keys(&s), Some(store)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BootError::Rollback { .. }), "{msg}");
        for needle in ["1.0.0", "1.1.0", &rfc3339(1_600_000_000), &rfc3339(1_700_000_000), "default"] {
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
        assert!(msg.contains(&store_path(&t).display().to_string()), "{msg}");
        assert_eq!(e.path(), Some(store_path(&t).as_path()));
    }

    // Recording the older one never moves the entry back.
    assert!(!store.record(&old.manifest).unwrap());
    assert_eq!(store.get("default").unwrap().version, "1.1.0");
    assert_eq!(RollbackStore::open(&store_path(&t)).unwrap().get("default").unwrap().version, "1.1.0");
}

#[test]
fn equal_and_newer_releases_pass_the_rollback_check() {
    let s = Signer::new(1);
    let t = tempfile::tempdir().unwrap();
    let mut store = RollbackStore::open(&store_path(&t)).unwrap();
    let base = build(&s, &Spec { version: "1.1.0", epoch: 1_700_000_000, ..Spec::default() });
    store.record(&base.manifest).unwrap();

    // The same release again (a reboot): accepted, and the store does not change.
    let v = verify_for_boot(&base.dir, ARCH, &keys(&s), Some(&store)).unwrap();
    assert!(!store.record(&v.manifest).unwrap());

    // Same build time: the version decides (1.10 is newer than 1.9; 1.0.9 is older than 1.1.0).
    let same_time_newer = build(&s, &Spec { version: "1.10.0", epoch: 1_700_000_000, ..Spec::default() });
    let same_time_older = build(&s, &Spec { version: "1.0.9", epoch: 1_700_000_000, ..Spec::default() });
    verify_for_boot(&same_time_newer.dir, ARCH, &keys(&s), Some(&store)).unwrap();
    let e = verify_for_boot(&same_time_older.dir, ARCH, &keys(&s), Some(&store)).unwrap_err();
    assert!(matches!(e, BootError::Rollback { .. }), "{e}");

    // A later build is newer whatever its version says.
    let later = build(&s, &Spec { version: "0.1.0", epoch: 1_800_000_000, ..Spec::default() });
    let v = verify_for_boot(&later.dir, ARCH, &keys(&s), Some(&store)).unwrap();
    assert!(store.record(&v.manifest).unwrap());
    assert!(matches!(verify_for_boot(&base.dir, ARCH, &keys(&s), Some(&store)), Err(BootError::Rollback { .. })));

    // Other images are tracked separately.
    let other = build(&s, &Spec { name: "other", version: "0.0.1", epoch: 1, ..Spec::default() });
    verify_for_boot(&other.dir, ARCH, &keys(&s), Some(&store)).unwrap();
}

#[test]
fn a_corrupt_rollback_store_is_refused_not_reset() {
    let t = tempfile::tempdir().unwrap();
    let path = store_path(&t);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    for bad in ["{not json", "{\"format\": 2, \"images\": {}}", "{\"format\": 1, \"images\": {}, \"x\": 1}", ""] {
        fs::write(&path, bad).unwrap();
        let e = RollbackStore::open(&path).unwrap_err();
        assert!(matches!(e, RollbackError::Corrupt { .. }), "{bad:?}: {e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let boot: BootError = e.into();
        assert_eq!(boot.path(), Some(path.as_path()));
    }
    // A store that goes bad between open and record is not overwritten.
    fs::remove_file(&path).unwrap();
    let mut store = RollbackStore::open(&path).unwrap();
    fs::write(&path, "garbage").unwrap();
    let s = Signer::new(1);
    let r = build(&s, &Spec::default());
    assert!(matches!(store.record(&r.manifest), Err(RollbackError::Corrupt { .. })));
    assert_eq!(fs::read(&path).unwrap(), b"garbage");
}
