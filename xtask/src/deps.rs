//! Build prerequisites: install missing Debian packages, create the pinned validators venv
//! (`target/tools/sbom-venv`: the CycloneDX SBOM validator used by the SBOM and engine tests,
//! and check-jsonschema for ci/release.yml) and start a container engine.
//!
//! Every action is announced on stderr before it runs. Installing needs root (our machines
//! and CI run as root); without it we print the exact `apt-get` line to run instead.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// (command that must exist, Debian package that provides it, why we need it).
const TOOLS: &[(&str, &str, &str)] = &[
    ("dockerd", "docker.io", "the container engine that runs image builds"),
    ("mmdebstrap", "mmdebstrap", "bootstraps the Debian base image without a registry"),
    ("unsquashfs", "squashfs-tools", "reads squashfs images back in tests and benchmarks"),
    ("b3sum", "b3sum", "checks BLAKE3 sums of the assets"),
    ("minisign", "minisign", "checks the manifest signature"),
    ("qemu-system-x86_64", "qemu-system-x86", "boots the image in end-to-end tests"),
    ("zstd", "zstd", "decompresses the initrd in tests"),
    ("cpio", "cpio", "lists and extracts the initrd in tests"),
];

fn have(cmd_name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd_name).is_file()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The SBOM validator venv (relative to the workspace root) that `builder/tests/sbom.rs` runs.
const SBOM_VENV: &str = "target/tools/sbom-venv";

/// CycloneDX's own Python library with its JSON-schema extra (the schemas ship inside the wheel,
/// so validating needs no network), and every distribution it pulls in, pinned: the same
/// validator on every machine. Wheels only; pip reaches PyPI once, when the venv is created.
const SBOM_VALIDATOR: &[&str] = &[
    "cyclonedx-python-lib[json-validation]==11.12.0",
    "arrow==1.4.0",
    "attrs==26.1.0",
    "boolean.py==5.0",
    "defusedxml==0.7.1",
    "fqdn==1.6.0",
    "idna==3.20",
    "isoduration==20.11.0",
    "jsonpointer==3.12",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "lark==1.3.1",
    "license-expression==30.4.4",
    "packageurl-python==0.17.6",
    "py-serializable==2.2.0",
    "python-dateutil==4.0.0",
    "referencing==0.37.0",
    "rfc3339-validator==0.1.4",
    "rfc3986-validator==0.1.1",
    "rfc3987-syntax==1.1.0",
    "rpds-py==2026.9.1",
    "six==1.17.0",
    "sortedcontainers==2.4.0",
    "typing_extensions==4.16.0",
    "tzdata==2026.6",
    "uri-template==1.3.0",
    "webcolors==25.10.0",
    // check-jsonschema validates ci/release.yml against GitHub's workflow schema (vendored in
    // the wheel, so offline too); `cargo xtask ci` runs it.
    "check-jsonschema==0.39.0",
    "certifi==2026.10.18",
    "charset-normalizer==3.5.2",
    "click==8.5.1",
    "regress==2026.9.1",
    "requests==2.34.2",
    "ruamel.yaml==0.19.1",
    "urllib3==2.8.0",
];

/// Whether Debian's python3 can create a venv with pip in it (`ensurepip` is in `python3-venv`).
fn python_venv_works() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import ensurepip, venv"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates `target/tools/sbom-venv` with the pinned validator, unless it already holds exactly
/// those pins (recorded in `capsem-pins.txt` inside it once the install succeeded).
fn ensure_sbom_validator(sh: &Shell) -> Result<()> {
    let venv = sh.current_dir().join(SBOM_VENV);
    let python = venv.join("bin/python");
    let stamp = venv.join("capsem-pins.txt");
    let pins = SBOM_VALIDATOR.join("\n") + "\n";
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(());
    }
    eprintln!("creating the SBOM validator venv {SBOM_VENV} ({}; needs PyPI once)", SBOM_VALIDATOR[0]);
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing the outdated {}", venv.display()))?;
    }
    cmd!(sh, "/usr/bin/python3 -m venv {venv}").run().with_context(|| {
        format!(
            "creating {} failed: Debian's python3 needs `python3-venv` (apt-get install python3-venv)",
            venv.display()
        )
    })?;
    cmd!(
        sh,
        "{python} -m pip install --quiet --no-input --disable-pip-version-check --only-binary=:all: {SBOM_VALIDATOR...}"
    )
    .run()
    .with_context(|| {
        format!(
            "installing the SBOM validator into {} failed: pip needs PyPI (behind a TLS-intercepting proxy, \
                 set PIP_CERT to its CA bundle); rerun `cargo xtask deps` once it is reachable",
            venv.display()
        )
    })?;
    cmd!(
        sh,
        "{python} -c 'from cyclonedx.schema import SchemaVersion; from cyclonedx.validation.json import JsonStrictValidator; JsonStrictValidator(SchemaVersion.V1_5)'"
    )
    .run()
    .context("the SBOM validator was installed but does not load")?;
    std::fs::write(&stamp, pins).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Installs what is missing and makes sure an engine answers.
pub fn ensure_build_deps(sh: &Shell) -> Result<()> {
    let mut missing: Vec<&(&str, &str, &str)> = TOOLS.iter().filter(|(c, ..)| !have(c)).collect();
    if !python_venv_works() {
        missing.push(&("python3 -m venv", "python3-venv", "creates the SBOM validator's virtual environment"));
    }
    if !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|(_, p, _)| *p).collect();
        for (c, p, why) in &missing {
            eprintln!("missing `{c}` ({why}): installing Debian package `{p}`");
        }
        if !is_root() {
            bail!("not root: run `sudo apt-get update && sudo apt-get install -y {}` and try again", pkgs.join(" "));
        }
        cmd!(sh, "apt-get update -qq")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .context("apt-get update failed")?;
        cmd!(sh, "apt-get install -y -qq --no-install-recommends {pkgs...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .context("apt-get install failed")?;
    }
    ensure_sbom_validator(sh)?;
    ensure_vhost_vsock(sh)?;
    ensure_engine(sh)
}

/// The vhost-user vsock backend QEMU uses for the guest agent's channel (rust-vmm's
/// `vhost-device-vsock`; not in Debian), pinned.
const VHOST_VSOCK: &str = "vhost-device-vsock@0.3.0";

/// Installs `vhost-device-vsock` with `cargo install` (into `$CARGO_HOME/bin`) when neither
/// PATH nor `$CARGO_HOME/bin` has it; `capsem` looks in both places.
fn ensure_vhost_vsock(sh: &Shell) -> Result<()> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin/vhost-device-vsock"));
    if have("vhost-device-vsock") || cargo_bin.as_ref().is_some_and(|p| p.is_file()) {
        return Ok(());
    }
    eprintln!(
        "missing `vhost-device-vsock` (carries the guest agent's vsock channel under QEMU): cargo install {VHOST_VSOCK}"
    );
    cmd!(sh, "cargo install --quiet --locked {VHOST_VSOCK}")
        .run()
        .context("cargo install vhost-device-vsock failed (it needs crates.io)")?;
    Ok(())
}

fn engine_answers(sh: &Shell) -> bool {
    cmd!(sh, "docker version --format '{{.Server.Version}}'")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|v| !v.trim().is_empty())
}

/// Starts `dockerd` in the background when no engine answers on the default socket.
fn ensure_engine(sh: &Shell) -> Result<()> {
    if std::env::var_os("DOCKER_HOST").is_some() || engine_answers(sh) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "no container engine answers; start one (`sudo systemctl start docker`, or `podman system service`) and retry"
        );
    }
    let log = Path::new("target/dockerd.log");
    std::fs::create_dir_all("target").context("creating target/")?;
    eprintln!("no container engine answers: starting `dockerd` in the background (log: {})", log.display());
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    std::process::Command::new("dockerd")
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting dockerd")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if engine_answers(sh) {
            eprintln!("dockerd is up after {:.1}s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("dockerd did not answer within 60 s; see {}", log.display())
}
