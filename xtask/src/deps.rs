//! Build prerequisites: install missing Debian packages and start a container engine.
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

/// Installs what is missing and makes sure an engine answers.
pub fn ensure_build_deps(sh: &Shell) -> Result<()> {
    let missing: Vec<&(&str, &str, &str)> = TOOLS.iter().filter(|(c, ..)| !have(c)).collect();
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
    ensure_engine(sh)
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
