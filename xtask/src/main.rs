//! `cargo xtask`: capsem's single automation entry point.
//!
//! - `cargo xtask ci` — what CI runs: format check, clippy with warnings denied, every test,
//!   and a parse check of flake.nix.
//! - `cargo xtask image build [DIR]` — the main job: installs the build prerequisites from the
//!   package registries when missing (announcing each), makes sure a container engine is
//!   running, then builds the image (default `images/default`).
//! - `cargo xtask deps` — only the prerequisite step.
//! - `cargo xtask bench [NAME…]` — benchmarks against their named baselines, measured in the
//!   same run; each prints ratios and writes JSON under `target/bench/`. Names: `squashfs`.

mod deps;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ci"] => ci(&sh),
        ["deps"] => deps::ensure_build_deps(&sh),
        ["image", "build", rest @ ..] => image_build(&sh, rest),
        ["bench", names @ ..] => bench(&sh, names),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  ci                  fmt check, clippy -D warnings, all tests, flake parse\n  \
                 image build [DIR]   install prerequisites, then build DIR (default images/default)\n  \
                 deps                install build prerequisites only\n  \
                 bench [NAME...]     benchmarks vs their baselines (squashfs)"
            );
            bail!("unknown or missing command: {}", args.join(" "))
        }
    }
}

fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

fn ci(sh: &Shell) -> Result<()> {
    step("cargo fmt --check");
    cmd!(sh, "cargo fmt --all -- --check").run().context("formatting differs; run `cargo fmt`")?;
    step("cargo clippy (warnings denied)");
    cmd!(sh, "cargo clippy --workspace --all-targets --locked -- -D warnings").run()?;
    step("tests");
    if cmd!(sh, "cargo nextest --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        cmd!(sh, "cargo nextest run --workspace --locked --no-fail-fast").run()?;
        // nextest does not run doctests.
        cmd!(sh, "cargo test --workspace --locked --doc").run()?;
    } else {
        cmd!(sh, "cargo test --workspace --locked --no-fail-fast").run()?;
    }
    step("fuzz harness and regression replay (builder/fuzz)");
    cmd!(sh, "cargo test --locked --manifest-path builder/fuzz/Cargo.toml").run()?;
    step("flake.nix parses");
    match cmd!(sh, "nix-instantiate --version").quiet().ignore_stdout().ignore_stderr().run() {
        Ok(()) => cmd!(sh, "nix-instantiate --parse flake.nix")
            .quiet()
            .ignore_stdout()
            .run()
            .context("flake.nix does not parse")?,
        Err(_) if std::env::var_os("CI").is_some() => {
            bail!("nix-instantiate not found: CI must install Debian's nix-bin")
        }
        Err(_) => eprintln!("skipped: nix-instantiate not installed (apt-get install nix-bin); CI runs this check"),
    }
    step("capsem-builder validate images/default");
    cmd!(sh, "cargo run --quiet --locked -p capsem-builder -- validate images/default").run()?;
    eprintln!("\nci: all checks passed");
    Ok(())
}

fn image_build(sh: &Shell, rest: &[&str]) -> Result<()> {
    let dir = rest.first().copied().unwrap_or("images/default");
    deps::ensure_build_deps(sh)?;
    step(&format!("capsem-builder validate {dir}"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- validate {dir}").run()?;
    step("capsem-builder doctor");
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- doctor {dir}").run()?;
    // Our machines reach PyPI and npm only through a TLS-intercepting proxy whose CA is in the
    // host's bundle; trust it during the build (never kept in the image) unless told otherwise.
    let host_bundle = "/etc/ssl/certs/ca-certificates.crt";
    let _ca = (std::env::var_os("CAPSEM_BUILD_CA_FILE").is_none() && std::path::Path::new(host_bundle).is_file()).then(
        || {
            eprintln!("trusting the host CA bundle during the build (CAPSEM_BUILD_CA_FILE={host_bundle})");
            sh.push_env("CAPSEM_BUILD_CA_FILE", host_bundle)
        },
    );
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    step(&format!("capsem-builder build {dir} --template rootfs --arch {arch}"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- build {dir} --template rootfs --arch {arch} --output assets")
        .run()?;
    eprintln!(
        "\nrootfs built under assets/{arch}/. Not implemented yet: the kernel, initrd, manifest, B3SUMS and \
         signature (issue 4); `capsem-builder build {dir} --dry-run` shows the kernel Dockerfile."
    );
    Ok(())
}

/// Benchmarks: each is a release-mode example of the crate that owns the code under test.
const BENCHES: &[(&str, &str, &str)] = &[("squashfs", "capsem-builder", "bench_squashfs")];

fn bench(sh: &Shell, names: &[&str]) -> Result<()> {
    let selected: Vec<&(&str, &str, &str)> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                BENCHES.iter().find(|(b, ..)| b == n).with_context(|| format!("unknown bench `{n}`; known: squashfs"))
            })
            .collect::<Result<_>>()?
    };
    for (name, package, example) in selected {
        step(&format!("bench {name}"));
        cmd!(sh, "cargo run --quiet --locked --release -p {package} --example {example}").run()?;
    }
    Ok(())
}
