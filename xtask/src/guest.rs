//! Builds the static guest binaries (`capsem-agent`) that images carry in their initrd.
//!
//! Static because the guest must not depend on the rootfs's libc (`-C target-feature=+crt-static`
//! on the gnu target: musl is not installed on our machines). `--target` is explicit so the flag
//! reaches only the guest binary, not build scripts or proc-macros. Paths are remapped so the
//! bytes do not depend on where the checkout or the cargo home lives: the rootfs and initrd
//! hashes include this binary.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// Target triple of the guest binaries.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Where the built guest binaries are gathered (what `CAPSEM_GUEST_BIN_DIR` points at).
pub const GUEST_BIN_DIR: &str = "target/guest-bin/x86_64";

/// Builds `capsem-agent` (release, static) and copies it into [`GUEST_BIN_DIR`]; returns that
/// directory as an absolute path.
pub fn build_agent(sh: &Shell) -> Result<std::path::PathBuf> {
    let root = sh.current_dir();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustflags = format!(
        "-C target-feature=+crt-static -C strip=symbols --remap-path-prefix={}=/capsem --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    crate::step("capsem-agent (static, release)");
    cmd!(sh, "cargo build --quiet --locked --release -p capsem-agent --target {GUEST_TARGET}")
        .env("RUSTFLAGS", rustflags)
        .run()
        .context("building the guest agent")?;
    let built = root.join(format!("target/{GUEST_TARGET}/release/capsem-agent"));
    let dir = root.join(GUEST_BIN_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(&built, dir.join("capsem-agent"))
        .with_context(|| format!("copying {} into {}", built.display(), dir.display()))?;
    Ok(dir)
}
