//! Signatures and checksums against the real tools: Debian's `minisign` must accept our
//! signatures and keys and we theirs; `b3sum -c` must accept our `B3SUMS` and we its output.
//! Then the `keygen`, `sign` and `verify` commands of the real binary.
//!
//! The tools are required (`cargo xtask deps` installs them); a missing tool fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use capsem_builder::sign::{self, SigningKey};
use capsem_trust::b3sums::{self, Outcome};
use capsem_trust::manifest::{ArchEntry, Asset, BuilderInfo, Inputs, Manifest};
use capsem_trust::signature::{self, PublicKey, SignatureError};

/// Runs a host tool; a missing tool is a failure that says how to install it.
fn tool(name: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(name)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{name}` ({e}): run cargo xtask deps"))
}

fn bin(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsem-builder"));
    c.current_dir(cwd).env("NO_COLOR", "1").env_remove(sign::SECRET_KEY_ENV).env_remove(sign::PASSWORD_ENV);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

/// Replaces one base64 character of line `line` (0-based) of a signature file with another.
fn flip_signature_char(path: &Path, line: usize, at: usize) {
    let t = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
    let mut b = lines[line].clone().into_bytes();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    lines[line] = String::from_utf8(b).unwrap();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn our_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (p, s) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
    sign::keygen_with(&p, &s, false, None).unwrap();
    (p, s)
}

fn asset(dir: &Path, arch: &str, name: &str, data: &[u8]) -> Asset {
    fs::create_dir_all(dir.join(arch)).unwrap();
    fs::write(dir.join(arch).join(name), data).unwrap();
    Asset { filename: name.into(), size: data.len() as u64, b3: blake3::hash(data).to_hex().to_string() }
}

/// A complete release (unsigned): assets, SBOM, manifest.json and B3SUMS.
fn release(dir: &Path) -> Manifest {
    let big: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let assets = vec![
        asset(dir, "x86_64", "initrd.img", b"initrd bytes"),
        asset(dir, "x86_64", "rootfs.squashfs", &big),
        asset(dir, "x86_64", "vmlinuz", b"kernel bytes"),
    ];
    let sbom = asset(dir, "x86_64", "sbom.cdx.json", b"{\"bomFormat\":\"CycloneDX\"}\n");
    fs::write(dir.join("defaults.json"), b"{}\n").unwrap();
    let settings = Asset { filename: "defaults.json".into(), size: 3, b3: blake3::hash(b"{}\n").to_hex().to_string() };
    let manifest = Manifest {
        format: capsem_trust::manifest::FORMAT,
        name: "test".into(),
        version: "1.0.0".into(),
        build_timestamp: capsem_trust::manifest::rfc3339(1_700_000_000),
        source_date_epoch: 1_700_000_000,
        builder: BuilderInfo { version: "0.1.0".into(), backhand: "0.25.5".into(), zstd: "1.5.7".into() },
        settings,
        architectures: vec![ArchEntry {
            arch: "x86_64".into(),
            assets,
            sbom,
            packages: Vec::new(),
            vulnerabilities: Vec::new(),
            audited: None,
            inputs: Inputs {
                image_definition_b3: "0".repeat(64),
                base: Default::default(),
                kernel_source: Default::default(),
                defconfig_b3: "0".repeat(64),
                kernel_config_b3: "0".repeat(64),
                dockerfiles_b3: Default::default(),
                toolchain: Default::default(),
            },
        }],
    };
    fs::write(dir.join("manifest.json"), manifest.to_json()).unwrap();
    b3sums::write_b3sums(dir, &b3sums::release_files(&manifest)).unwrap();
    manifest
}

// ---------------------------------------------------------------- minisign interoperability

#[test]
fn minisign_cli_verifies_our_signatures_and_rejects_tampering() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (public, secret) = our_key(d, "ours");
    let file = d.join("manifest.json");
    fs::write(&file, b"{\"format\": 1, \"name\": \"x\"}\n").unwrap();
    let sig = sign::sign_file(&file, &secret).unwrap();
    assert_eq!(sig, d.join("manifest.json.minisig"));

    let ok = tool("minisign", &["-Vm", "manifest.json", "-p", "ours.pub"], d);
    assert!(ok.status.success(), "{}{}", text(&ok.stdout), text(&ok.stderr));
    assert!(text(&ok.stdout).contains("Trusted comment: capsem manifest manifest.json b3:"), "{}", text(&ok.stdout));
    // Prehashed mode is the one minisign requires with -H.
    assert!(tool("minisign", &["-VHm", "manifest.json", "-p", "ours.pub"], d).status.success());

    flip_byte(&file, 5);
    let bad = tool("minisign", &["-Vm", "manifest.json", "-p", "ours.pub"], d);
    assert!(!bad.status.success(), "a modified file verified");
    flip_byte(&file, 5);
    assert!(tool("minisign", &["-Vm", "manifest.json", "-p", "ours.pub"], d).status.success());

    let original = fs::read(&sig).unwrap();
    flip_signature_char(&sig, 1, 30); // inside the Ed25519 signature, past algorithm and key id
    assert!(!tool("minisign", &["-Vm", "manifest.json", "-p", "ours.pub"], d).status.success());
    fs::write(&sig, &original).unwrap();
    let comment = text(&original).replace("capsem manifest", "capsem manifesto");
    fs::write(&sig, comment).unwrap();
    assert!(!tool("minisign", &["-Vm", "manifest.json", "-p", "ours.pub"], d).status.success());
    fs::write(&sig, &original).unwrap();
    // Our verifier agrees on the restored signature.
    signature::verify(&fs::read(&file).unwrap(), &text(&original), &PublicKey::from_file(&public).unwrap()).unwrap();
}

#[test]
fn our_verifier_accepts_minisign_cli_signatures_prehashed_and_legacy() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let g = tool("minisign", &["-G", "-W", "-p", "their.pub", "-s", "their.key"], d);
    assert!(g.status.success(), "{}", text(&g.stderr));
    fs::write(d.join("f"), b"payload\n").unwrap();
    assert!(tool("minisign", &["-S", "-s", "their.key", "-m", "f"], d).status.success());
    assert!(tool("minisign", &["-S", "-l", "-s", "their.key", "-m", "f", "-x", "f.legacy"], d).status.success());

    let key = PublicKey::from_file(&d.join("their.pub")).unwrap();
    let data = fs::read(d.join("f")).unwrap();
    let ed = signature::verify(&data, &fs::read_to_string(d.join("f.minisig")).unwrap(), &key).unwrap();
    assert!(ed.prehashed);
    assert!(ed.trusted_comment.contains("file:f"), "{}", ed.trusted_comment);
    let legacy = signature::verify(&data, &fs::read_to_string(d.join("f.legacy")).unwrap(), &key).unwrap();
    assert!(!legacy.prehashed);
    for sig in ["f.minisig", "f.legacy"] {
        let e = signature::verify(b"payload!\n", &fs::read_to_string(d.join(sig)).unwrap(), &key).unwrap_err();
        assert!(matches!(e, SignatureError::Invalid { .. }), "{sig}: {e}");
    }
    // Also with the key given as its base64 line only.
    let line = fs::read_to_string(d.join("their.pub")).unwrap().lines().nth(1).unwrap().to_owned();
    assert_eq!(PublicKey::parse(&line).unwrap().key_id(), key.key_id());
}

#[test]
fn keys_cross_over_between_minisign_cli_and_us() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fs::write(d.join("f"), b"cross\n").unwrap();

    // minisign's unencrypted secret key (zeroed checksum) signs with us; minisign verifies.
    assert!(tool("minisign", &["-G", "-W", "-p", "their.pub", "-s", "their.key"], d).status.success());
    let theirs = SigningKey::load(&d.join("their.key"), None).unwrap();
    assert_eq!(theirs.key_id(), PublicKey::from_file(&d.join("their.pub")).unwrap().key_id());
    sign::sign_file_with(&d.join("f"), &theirs).unwrap();
    let v = tool("minisign", &["-Vm", "f", "-p", "their.pub"], d);
    assert!(v.status.success(), "{}", text(&v.stderr));

    // Our unencrypted secret key signs with minisign (no -W needed to sign); we verify.
    our_key(d, "ours");
    let s = tool("minisign", &["-S", "-s", "ours.key", "-m", "f", "-x", "f.theirs"], d);
    assert!(s.status.success(), "{}{}", text(&s.stdout), text(&s.stderr));
    let key = PublicKey::from_file(&d.join("ours.pub")).unwrap();
    signature::verify(b"cross\n", &fs::read_to_string(d.join("f.theirs")).unwrap(), &key).unwrap();
    assert!(tool("minisign", &["-Vm", "f", "-x", "f.theirs", "-p", "ours.pub"], d).status.success());

    // Our password-protected key: minisign decrypts it with the password on stdin.
    sign::keygen_with(&d.join("enc.pub"), &d.join("enc.key"), false, Some("hunter2")).unwrap();
    let mut child = Command::new("minisign")
        .args(["-S", "-s", "enc.key", "-m", "f", "-x", "f.enc"])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run minisign: run cargo xtask deps");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let key = PublicKey::from_file(&d.join("enc.pub")).unwrap();
    signature::verify(b"cross\n", &fs::read_to_string(d.join("f.enc")).unwrap(), &key).unwrap();
}

#[test]
fn signing_is_byte_identical_and_a_wrong_key_is_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (_, secret) = our_key(d, "a");
    let (other_pub, _) = our_key(d, "b");
    let file = d.join("m.json");
    fs::write(&file, b"{}\n").unwrap();
    let first = fs::read(sign::sign_file(&file, &secret).unwrap()).unwrap();
    let second = fs::read(sign::sign_file(&file, &secret).unwrap()).unwrap();
    assert_eq!(first, second);

    let signer = SigningKey::load(&secret, None).unwrap().key_id().to_string();
    let other = PublicKey::from_file(&other_pub).unwrap();
    let e = signature::verify(b"{}\n", &text(&first), &other).unwrap_err();
    assert!(matches!(e, SignatureError::KeyMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&signer) && msg.contains(&other.key_id().to_string()), "{msg}");
    assert!(!tool("minisign", &["-Vm", "m.json", "-p", "b.pub"], d).status.success());
}

// ------------------------------------------------------------------------ b3sum interoperability

#[test]
fn b3sum_checks_our_b3sums_and_we_parse_its_output() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let manifest = release(d);
    let files = b3sums::release_files(&manifest);
    assert_eq!(
        files,
        ["defaults.json", "x86_64/initrd.img", "x86_64/rootfs.squashfs", "x86_64/sbom.cdx.json", "x86_64/vmlinuz"]
    );

    let ok = tool("b3sum", &["-c", "B3SUMS"], d);
    assert!(ok.status.success(), "{}{}", text(&ok.stdout), text(&ok.stderr));
    assert_eq!(text(&ok.stdout).matches(": OK").count(), 5, "{}", text(&ok.stdout));

    // b3sum's own listing of the same files is byte-identical to ours and parses back.
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let theirs = tool("b3sum", &args, d);
    assert!(theirs.status.success());
    assert_eq!(text(&theirs.stdout), fs::read_to_string(d.join("B3SUMS")).unwrap());
    let parsed = b3sums::parse(&text(&theirs.stdout)).unwrap();
    assert_eq!(parsed, b3sums::read_b3sums(d).unwrap());

    // One flipped byte: both b3sum and we fail, naming the file.
    flip_byte(&d.join("x86_64/rootfs.squashfs"), 200_000);
    let bad = tool("b3sum", &["-c", "B3SUMS"], d);
    assert!(!bad.status.success());
    assert!(text(&bad.stdout).contains("x86_64/rootfs.squashfs: FAILED"), "{}", text(&bad.stdout));
    let checks = b3sums::verify_b3sums(d).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.is_ok()).collect();
    assert_eq!(failed.len(), 1, "{checks:?}");
    assert_eq!(failed[0].path, "x86_64/rootfs.squashfs");
    assert!(matches!(failed[0].outcome, Outcome::HashMismatch { .. }));
    let problems = b3sums::verify_assets(d, &manifest);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().starts_with("x86_64/rootfs.squashfs: BLAKE3 mismatch: expected "));
}

#[test]
fn verify_assets_names_missing_and_resized_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let manifest = release(d);
    assert!(b3sums::verify_assets(d, &manifest).is_empty());
    fs::remove_file(d.join("x86_64/vmlinuz")).unwrap();
    fs::write(d.join("x86_64/initrd.img"), b"initrd bytes, longer").unwrap();
    let problems: Vec<String> = b3sums::verify_assets(d, &manifest).iter().map(ToString::to_string).collect();
    assert_eq!(problems, ["x86_64/initrd.img: size mismatch: expected 12 bytes, found 20", "x86_64/vmlinuz: missing"]);
}

// ------------------------------------------------------------------------------------ the CLI

#[test]
fn cli_keygen_writes_defaults_and_refuses_to_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let o = bin(d).arg("keygen").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let public = fs::read_to_string(d.join("capsem.pub")).unwrap();
    assert_eq!(text(&o.stdout), format!("{}\n", public.lines().nth(1).unwrap()));
    let err = text(&o.stderr);
    assert!(err.contains("capsem.key") && err.contains("capsem.pub") && err.contains("unencrypted"), "{err}");
    let secret = fs::read(d.join("capsem.key")).unwrap();

    let o = bin(d).arg("keygen").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(fs::read(d.join("capsem.key")).unwrap(), secret);

    let o = bin(d).args(["keygen", "--force"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_ne!(fs::read(d.join("capsem.key")).unwrap(), secret);

    let o = bin(d).args(["keygen", "--public-key", "k/x.pub", "--secret-key", "k/x.key"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "a missing directory is an error");
    assert!(text(&o.stderr).contains("k/x.key"), "{}", text(&o.stderr));
}

#[test]
fn cli_sign_then_verify_a_release() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let rel = d.join("assets");
    release(&rel);
    assert!(
        bin(d).args(["keygen", "--public-key", "k.pub", "--secret-key", "k.key"]).output().unwrap().status.success()
    );

    // The key from the environment, the directory as target.
    let o = bin(d).args(["sign", "assets"]).env(sign::SECRET_KEY_ENV, "k.key").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "assets/manifest.json.minisig");
    let first = fs::read(rel.join("manifest.json.minisig")).unwrap();
    // The manifest file as target: byte-identical signature.
    let o = bin(d).args(["sign", "assets/manifest.json", "--key", "k.key"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(fs::read(rel.join("manifest.json.minisig")).unwrap(), first);
    assert!(tool("minisign", &["-Vm", "assets/manifest.json", "-p", "k.pub"], d).status.success());

    let o = bin(d).args(["verify", "assets", "--public-key", "k.pub"]).output().unwrap();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 5 + 5, "{out}");
    assert!(lines[0].starts_with("ok   signature manifest.json.minisig: valid ED (prehashed)"), "{out}");
    assert!(lines[1].starts_with("ok   manifest  manifest.json: format 1, image test 1.0.0"), "{out}");
    assert!(out.contains("ok   asset     x86_64/vmlinuz: ok (12 bytes, b3 "), "{out}");
    assert!(out.contains("ok   b3sums    x86_64/sbom.cdx.json: ok"), "{out}");
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{out}");

    let o = bin(d).args(["verify", "assets", "--public-key", "k.pub", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["first_failure"], serde_json::Value::Null);
    assert_eq!(v["checks"].as_array().unwrap().len(), 12);
    assert_eq!(v["checks"][0]["kind"], "signature");
    assert_eq!(v["key_id"], SigningKey::load(&d.join("k.key"), None).unwrap().key_id().to_string());
}

#[test]
fn cli_verify_fails_on_each_kind_of_problem() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let rel = d.join("assets");
    release(&rel);
    let (_, secret) = our_key(d, "k");
    let (_, _) = our_key(d, "other");
    let verify = |key: &str| bin(d).args(["verify", "assets", "--public-key", key]).output().unwrap();

    // No signature: a failure, never "skipped".
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).starts_with("FAIL signature manifest.json.minisig: missing"), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("first: signature manifest.json.minisig: missing"), "{}", text(&o.stderr));

    sign::sign_file(&rel.join("manifest.json"), &secret).unwrap();
    assert_eq!(verify("k.pub").status.code(), Some(0));

    // The wrong public key: both key ids named.
    let o = verify("other.pub");
    assert_eq!(o.status.code(), Some(1));
    let signer = SigningKey::load(&secret, None).unwrap().key_id().to_string();
    let err = text(&o.stderr);
    assert!(err.contains(&signer) && err.contains("trusted public key is"), "{err}");

    // A modified asset: named, with expected and found.
    flip_byte(&rel.join("x86_64/vmlinuz"), 0);
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("first: asset x86_64/vmlinuz: BLAKE3 mismatch: expected"), "{err}");
    assert!(text(&o.stdout).contains("FAIL b3sums    x86_64/vmlinuz: BLAKE3 mismatch"), "{}", text(&o.stdout));
    flip_byte(&rel.join("x86_64/vmlinuz"), 0);

    // A missing asset; then a missing B3SUMS.
    fs::rename(rel.join("x86_64/initrd.img"), d.join("initrd.img")).unwrap();
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("first: asset x86_64/initrd.img: missing"), "{}", text(&o.stderr));
    fs::rename(d.join("initrd.img"), rel.join("x86_64/initrd.img")).unwrap();
    fs::remove_file(rel.join("B3SUMS")).unwrap();
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("FAIL b3sums    B3SUMS: missing"), "{}", text(&o.stdout));

    // A B3SUMS that leaves out a manifest file.
    let listed = vec!["defaults.json".to_owned(), "x86_64/vmlinuz".to_owned()];
    b3sums::write_b3sums(&rel, &listed).unwrap();
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("x86_64/initrd.img: not listed in B3SUMS"), "{}", text(&o.stderr));

    // A modified manifest: the signature fails first.
    let m = fs::read_to_string(rel.join("manifest.json")).unwrap().replace("\"1.0.0\"", "\"1.0.1\"");
    fs::write(rel.join("manifest.json"), m).unwrap();
    let o = verify("k.pub");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("first: signature manifest.json.minisig: signature by key"),
        "{}",
        text(&o.stderr)
    );

    // Usage errors: no such directory, unusable public key.
    assert_eq!(bin(d).args(["verify", "nope", "--public-key", "k.pub"]).output().unwrap().status.code(), Some(2));
    let o = bin(d).args(["verify", "assets", "--public-key", "missing.pub"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("missing.pub"), "{}", text(&o.stderr));
}

#[test]
fn cli_verify_accepts_a_manifest_signed_by_minisign() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    release(&d.join("assets"));
    assert!(tool("minisign", &["-G", "-W", "-p", "their.pub", "-s", "their.key"], d).status.success());
    assert!(tool("minisign", &["-S", "-s", "their.key", "-m", "assets/manifest.json"], d).status.success());
    let o = bin(d).args(["verify", "assets", "--public-key", "their.pub"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    // The key as a base64 argument works as well.
    let line = fs::read_to_string(d.join("their.pub")).unwrap().lines().nth(1).unwrap().to_owned();
    let o = bin(d).args(["verify", "assets", "--public-key", &line]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn cli_sign_errors() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    release(&d.join("assets"));
    let o = bin(d).args(["sign", "assets"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "no key is a usage error");
    assert!(text(&o.stderr).contains("--key"), "{}", text(&o.stderr));

    let o = bin(d).args(["sign", "assets", "--key", "absent.key"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("absent.key"), "{}", text(&o.stderr));

    our_key(d, "k");
    fs::write(d.join("not-a-manifest.json"), b"{\"hello\": 1}\n").unwrap();
    let o = bin(d).args(["sign", "not-a-manifest.json", "--key", "k.key"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not a valid manifest"), "{}", text(&o.stderr));
    assert!(!d.join("not-a-manifest.json.minisig").exists());

    // A password-protected key: without the password a clear error; with it, a signature.
    let o = bin(d)
        .args(["keygen", "--public-key", "p.pub", "--secret-key", "p.key"])
        .env(sign::PASSWORD_ENV, "s3cret")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("password-protected"), "{}", text(&o.stderr));
    let o = bin(d).args(["sign", "assets", "--key", "p.key"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains(sign::PASSWORD_ENV), "{}", text(&o.stderr));
    let o = bin(d).args(["sign", "assets", "--key", "p.key"]).env(sign::PASSWORD_ENV, "wrong").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("wrong password"), "{}", text(&o.stderr));
    let o = bin(d).args(["sign", "assets", "--key", "p.key"]).env(sign::PASSWORD_ENV, "s3cret").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(tool("minisign", &["-Vm", "assets/manifest.json", "-p", "p.pub"], d).status.success());
}
