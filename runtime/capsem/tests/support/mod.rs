//! Shared by the end-to-end tests: the runtime test image's signed release (built once with the
//! real guest agent, cached by content hash), and a `capsem` invocation with its own home.
//!
//! The release is built from `tests/fixtures/vm-image` by the builder library, with the static
//! guest agent from `CAPSEM_GUEST_BIN_DIR` (what `cargo xtask` builds) or built here. It is cached
//! under `$CAPSEM_CACHE_DIR|$XDG_CACHE_HOME/capsem-builder|~/.cache/capsem-builder`
//! `/e2e-release/<key>/`, where the key is the BLAKE3 of every input that can change its bytes
//! (the fixture, the agent, the builder's and trust crate's sources, kernel/); a file lock makes
//! concurrent test processes build it once.

#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A built, signed release and its key pair.
#[derive(Debug)]
pub struct Release {
    pub dir: PathBuf,
    pub public_key: PathBuf,
    pub secret_key: PathBuf,
}

fn cache_root() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("CAPSEM_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("capsem-builder")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/capsem-builder")))
        .expect("HOME is set")
}

fn hash_tree(h: &mut blake3::Hasher, root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for f in files {
        h.update(f.strip_prefix(root).unwrap().to_string_lossy().as_bytes());
        h.update(&[0]);
        h.update(&fs::read(&f).unwrap());
    }
}

/// The static guest agent: `$CAPSEM_GUEST_BIN_DIR/capsem-agent`, else built here the way
/// `cargo xtask` builds it (own target dir, so it never waits on the test run's build lock).
pub fn guest_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSEM_GUEST_BIN_DIR").filter(|v| !v.is_empty()).map(PathBuf::from) {
        assert!(dir.join("capsem-agent").is_file(), "CAPSEM_GUEST_BIN_DIR={} has no capsem-agent", dir.display());
        return dir;
    }
    let root = fs::canonicalize(ROOT).unwrap();
    let target = root.join("target/e2e-guest");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let flags = format!(
        "-C target-feature=+crt-static -C strip=symbols --remap-path-prefix={}=/capsem --remap-path-prefix={}=/cargo",
        root.display(),
        home.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--release",
            "-p",
            "capsem-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", flags)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("running cargo build for the guest agent");
    assert!(status.success(), "building the static guest agent failed");
    let dir = target.join("guest-bin");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(target.join("x86_64-unknown-linux-gnu/release/capsem-agent"), dir.join("capsem-agent")).unwrap();
    dir
}

/// The runtime test image's release (built on first use, then cached).
pub fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(build_or_reuse)
}

fn build_or_reuse() -> Release {
    let fixture = Path::new(ROOT).join("tests/fixtures/vm-image");
    let guest = guest_bin_dir();
    let mut h = blake3::Hasher::new();
    h.update(b"capsem e2e release v1\0");
    for tree in ["tests/fixtures/vm-image", "builder/src", "runtime/trust/src", "kernel"] {
        hash_tree(&mut h, &Path::new(ROOT).join(tree));
    }
    h.update(&fs::read(guest.join("capsem-agent")).unwrap());
    let key = h.finalize().to_hex()[..32].to_owned();
    let base = cache_root().join("e2e-release");
    fs::create_dir_all(&base).unwrap();
    let dir = base.join(&key);
    let keys = base.join("keys");
    let release =
        Release { dir: dir.join("assets"), public_key: keys.join("test.pub"), secret_key: keys.join("test.key") };

    // One builder at a time across test processes.
    let lock = fs::File::create(base.join("lock")).unwrap();
    lock.lock().unwrap();
    if !release.public_key.is_file() {
        fs::create_dir_all(&keys).unwrap();
        capsem_builder::sign::keygen_with(&release.public_key, &release.secret_key, false, None).unwrap();
    }
    if release.dir.join("manifest.json.minisig").is_file() {
        eprintln!("e2e: reusing the cached release {}", release.dir.display());
        return release;
    }
    eprintln!("e2e: building the runtime test image into {}", dir.display());
    let staging = base.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    build_into(&fixture, &guest, &staging.join("assets"), &release.secret_key, &staging.join("runs"));
    let _ = fs::remove_dir_all(staging.join("runs"));
    fs::rename(&staging, &dir).unwrap();
    release
}

fn build_into(image: &Path, guest: &Path, out: &Path, secret: &Path, runs: &Path) {
    use capsem_builder::build::BuildOptions;
    use capsem_builder::build::release::{Parts, ReleaseRequest, build_release};
    use capsem_builder::engine::ProgressMode;
    let loaded = capsem_builder::validate::load(image);
    let model = loaded.model.unwrap_or_else(|| panic!("{}", loaded.report.render("vm-image", false)));
    let ca = std::env::var_os("CAPSEM_BUILD_CA_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let opts = BuildOptions {
        progress: ProgressMode::Lines,
        network_mode: Some("host".into()),
        extra_ca_file: Some(ca),
        state_dir: Some(runs.to_path_buf()),
        guest_bin_dir: Some(guest.to_path_buf()),
        ..BuildOptions::from_env()
    };
    let request = ReleaseRequest {
        image_dir: image,
        model: &model,
        archs: vec![capsem_builder::model::Arch::X86_64],
        out_dir: out,
        opts: &opts,
        kernel_source: capsem_builder::kernel_source::Provider::Debian,
        sign_key: Some(secret.to_path_buf()),
        audit_report: None,
        parts: Parts::Release,
    };
    build_release(&request).unwrap_or_else(|e| panic!("building the runtime test image into {}: {e}", out.display()));
}

/// The base64 line of a minisign public key file.
pub fn public_key_line(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    text.lines().find(|l| l.starts_with("RW")).expect("minisign public key line").to_owned()
}

/// A capsem home (user.toml trusting `public_key`) in a fresh temporary directory.
pub fn home_trusting(public_key: &Path) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    fs::write(home.path().join("user.toml"), format!("[trust]\npublic_keys = [\"{}\"]\n", public_key_line(public_key)))
        .unwrap();
    home
}

/// `capsem ARGS…` with its own home and no corp config.
pub fn capsem(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsem"));
    c.env("CAPSEM_HOME", home)
        .env("CAPSEM_CORP_CONFIG", home.join("corp.toml"))
        .env_remove("CAPSEM_ASSETS")
        .env_remove("CAPSEM_HYPERVISOR")
        .env_remove("CAPSEM_TRANSPORT");
    c
}

/// Output as text, for messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies a release directory (so a test can damage its copy).
pub fn copy_release(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_release(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// An HTTPS server on 127.0.0.1 with its own CA (PEM written to `ca_pem`), answering every
/// request with `200` and `hello from upstream <path>`. Runs on its own thread for the test.
pub struct Upstream {
    pub addr: std::net::SocketAddr,
    pub ca_pem: PathBuf,
}

pub fn https_upstream(dir: &Path, names: &[&str]) -> Upstream {
    use std::sync::Arc;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(rcgen::DnType::CommonName, "e2e upstream CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
    let ca_pem = dir.join("upstream-ca.pem");
    fs::write(&ca_pem, ca.pem()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let body = format!("hello from upstream {path}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    Upstream { addr, ca_pem }
}
