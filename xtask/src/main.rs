//! `cargo xtask`: capsem's single automation entry point.
//!
//! - `cargo xtask ci` — what CI runs: format check, clippy with warnings denied, every test,
//!   and a parse check of flake.nix.
//! - `cargo xtask image build [DIR]` — the main job: installs the build prerequisites from the
//!   package registries when missing (announcing each), makes sure a container engine is
//!   running, then builds the image (default `images/default`): kernel, initrd and rootfs for
//!   every architecture this host can build, manifest.json, B3SUMS, the signature (with
//!   `CAPSEM_SIGNING_KEY`, else a local development key under target/dev-signing/), and verifies it.
//! - `cargo xtask repro [DIR]` — builds twice into fresh directories (fresh kernel caches too)
//!   and names every differing file, and what differs inside it.
//! - `cargo xtask deps` — only the prerequisite step.
//! - `cargo xtask bench [NAME…]` — benchmarks against their named baselines, measured in the
//!   same run; each prints ratios and writes JSON under `target/bench/`. Names: `squashfs`
//!   (our squashfs writer vs mksquashfs), `hash` (our file hashing vs the b3sum CLI), `runtime`
//!   (boot verification vs b3sum, and the breakdown of `capsem run -- true`), `proxy` (requests
//!   and bodies through the egress proxy vs direct, on loopback).

mod deps;
mod guest;

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
        ["repro", rest @ ..] => repro(&sh, rest),
        ["bench", names @ ..] => bench(&sh, names),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  ci                  fmt check, clippy -D warnings, all tests, flake parse\n  \
                 image build [DIR]   install prerequisites, then build and sign DIR (default images/default)\n  \
                 repro [DIR] [--shared-kernel-cache]  build DIR twice in fresh directories and compare\n  \
                 deps                install build prerequisites only\n  \
                 bench [NAME...]     benchmarks vs their baselines (squashfs, hash, runtime, proxy)"
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
    // The end-to-end tests boot the runtime test image with this agent in it.
    let guest = guest::build_agent(sh)?;
    let _guest = sh.push_env("CAPSEM_GUEST_BIN_DIR", &guest);
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
    step("ci/release.yml against GitHub's workflow schema (check-jsonschema)");
    cmd!(sh, "target/tools/sbom-venv/bin/check-jsonschema --builtin-schema vendor.github-workflows ci/release.yml")
        .run()
        .context(
            "ci/release.yml is not a valid GitHub Actions workflow (or the validator is missing: cargo xtask deps)",
        )?;
    step("capsem-builder validate images/default");
    cmd!(sh, "cargo run --quiet --locked -p capsem-builder -- validate images/default").run()?;
    eprintln!("\nci: all checks passed");
    Ok(())
}

/// Where `image build` and `repro` keep the local development signing key.
const DEV_KEY_DIR: &str = "target/dev-signing";

fn image_build(sh: &Shell, rest: &[&str]) -> Result<()> {
    let dir = rest.first().copied().unwrap_or("images/default");
    deps::ensure_build_deps(sh)?;
    step(&format!("capsem-builder validate {dir}"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- validate {dir}").run()?;
    step("capsem-builder doctor");
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- doctor {dir}").run()?;
    let _ca = trust_host_ca(sh);
    let (key, public) = signing_key(sh)?;
    let guest = guest::build_agent(sh)?;
    let _guest = sh.push_env("CAPSEM_GUEST_BIN_DIR", &guest);
    step(&format!("capsem-builder build {dir} --output assets (kernel, initrd, rootfs; manifest, B3SUMS, signature)"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- build {dir} --output assets --sign-key {key}")
        .ignore_stdout()
        .run()?;
    step(&format!("capsem-builder verify assets --public-key {public}"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- verify assets --public-key {public}").run()?;
    eprintln!(
        "\nassets/ holds the release: manifest.json (+ .minisig), B3SUMS, <arch>/{{vmlinuz,initrd.img,rootfs.squashfs,sbom.cdx.json}}"
    );
    Ok(())
}

/// Our machines reach PyPI and npm only through a TLS-intercepting proxy whose CA is in the
/// host's bundle; trust it during builds (never kept in the image) unless told otherwise.
fn trust_host_ca(sh: &Shell) -> Option<xshell::PushEnv<'_>> {
    let host_bundle = "/etc/ssl/certs/ca-certificates.crt";
    (std::env::var_os("CAPSEM_BUILD_CA_FILE").is_none() && std::path::Path::new(host_bundle).is_file()).then(|| {
        eprintln!("trusting the host CA bundle during the build (CAPSEM_BUILD_CA_FILE={host_bundle})");
        sh.push_env("CAPSEM_BUILD_CA_FILE", host_bundle)
    })
}

/// The signing key: `CAPSEM_SIGNING_KEY` (public key next to it as `<stem>.pub`, or
/// `CAPSEM_SIGNING_PUBLIC_KEY`) or a local development key, generated once under target/.
fn signing_key(sh: &Shell) -> Result<(String, String)> {
    if let Some(key) = std::env::var_os("CAPSEM_SIGNING_KEY").filter(|k| !k.is_empty()) {
        let key = std::path::PathBuf::from(key);
        let public = std::env::var_os("CAPSEM_SIGNING_PUBLIC_KEY")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| key.with_extension("pub"));
        eprintln!("signing with CAPSEM_SIGNING_KEY={} (public key {})", key.display(), public.display());
        return Ok((key.display().to_string(), public.display().to_string()));
    }
    let key = format!("{DEV_KEY_DIR}/capsem-dev.key");
    let public = format!("{DEV_KEY_DIR}/capsem-dev.pub");
    if !sh.path_exists(&key) {
        step("capsem-builder keygen (local development key; set CAPSEM_SIGNING_KEY to sign releases)");
        sh.create_dir(DEV_KEY_DIR)?;
        cmd!(
            sh,
            "cargo run --quiet --locked --release -p capsem-builder -- keygen --public-key {public} --secret-key {key}"
        )
        .run()?;
    }
    eprintln!("signing with the local development key {key} (not for release: set CAPSEM_SIGNING_KEY)");
    Ok((key, public))
}

/// Builds DIR twice into fresh directories and compares every file. Each build gets its own
/// empty kernel cache unless `--shared-kernel-cache`, so the kernel is rebuilt too.
fn repro(sh: &Shell, rest: &[&str]) -> Result<()> {
    let shared = rest.contains(&"--shared-kernel-cache");
    let dir = rest.iter().copied().find(|a| !a.starts_with("--")).unwrap_or("images/default");
    deps::ensure_build_deps(sh)?;
    let _ca = trust_host_ca(sh);
    let (key, _) = signing_key(sh)?;
    let guest = guest::build_agent(sh)?;
    let _guest = sh.push_env("CAPSEM_GUEST_BIN_DIR", &guest);
    let root = "target/repro";
    sh.remove_path(root)?;
    for run in ["a", "b"] {
        let out = format!("{root}/{run}");
        let cache = format!("{root}/cache-{run}");
        let _cache = (!shared).then(|| sh.push_env("CAPSEM_CACHE_DIR", &cache));
        step(&format!("build {run}: capsem-builder build {dir} --output {out}"));
        cmd!(
            sh,
            "cargo run --quiet --locked --release -p capsem-builder -- build {dir} --output {out} --sign-key {key}"
        )
        .ignore_stdout()
        .run()?;
    }
    step(&format!("compare {root}/a {root}/b"));
    cmd!(sh, "cargo run --quiet --locked --release -p capsem-builder -- compare {root}/a {root}/b")
        .run()
        .context("the two builds differ (listed above): not reproducible")?;
    eprintln!("\nrepro: both builds of {dir} are byte-identical (every asset, manifest.json, its signature, B3SUMS)");
    Ok(())
}

/// Benchmarks: each is a release-mode example of the crate that owns the code under test.
const BENCHES: &[(&str, &str, &str)] = &[
    ("squashfs", "capsem-builder", "bench_squashfs"),
    ("hash", "capsem-trust", "bench_hash"),
    ("runtime", "capsem", "bench_runtime"),
    ("proxy", "capsem", "bench_proxy"),
];

/// `bench runtime`: a signed release to boot (`$CAPSEM_BENCH_ASSETS`, else the runtime test
/// image built here into target/bench/vm-release with the development key), a capsem home
/// trusting its key, and the release-mode `capsem` binary; then the bench_runtime example.
fn bench_runtime(sh: &Shell) -> Result<()> {
    let (key, public) = signing_key(sh)?;
    let assets = match std::env::var_os("CAPSEM_BENCH_ASSETS").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let out = sh.current_dir().join("target/bench/vm-release");
            if !out.join("manifest.json.minisig").is_file() {
                deps::ensure_build_deps(sh)?;
                let _ca = trust_host_ca(sh);
                let guest = guest::build_agent(sh)?;
                let _guest = sh.push_env("CAPSEM_GUEST_BIN_DIR", &guest);
                step("build the runtime test image (tests/fixtures/vm-image) into target/bench/vm-release");
                cmd!(
                    sh,
                    "cargo run --quiet --locked --release -p capsem-builder -- build tests/fixtures/vm-image --output {out} --sign-key {key}"
                )
                .ignore_stdout()
                .run()?;
            }
            out
        }
    };
    let home = sh.current_dir().join("target/bench/capsem-home");
    sh.create_dir(&home)?;
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {public}"))?
        .lines()
        .find(|l| l.starts_with("RW"))
        .with_context(|| format!("{public} is not a minisign public key"))?
        .to_owned();
    sh.write_file(home.join("user.toml"), format!("[trust]\npublic_keys = [\"{line}\"]\n"))?;
    step("capsem (release)");
    cmd!(sh, "cargo build --quiet --locked --release -p capsem").run()?;
    let capsem = sh.current_dir().join("target/release/capsem");
    step(&format!("bench runtime ({})", assets.display()));
    cmd!(
        sh,
        "cargo run --quiet --locked --release -p capsem --example bench_runtime -- --assets {assets} --home {home} --capsem {capsem} --runs 10 --out target/bench/runtime.json"
    )
    .run()?;
    Ok(())
}

fn bench(sh: &Shell, names: &[&str]) -> Result<()> {
    let selected: Vec<&(&str, &str, &str)> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                BENCHES
                    .iter()
                    .find(|(b, ..)| b == n)
                    .with_context(|| format!("unknown bench `{n}`; known: squashfs, hash, runtime, proxy"))
            })
            .collect::<Result<_>>()?
    };
    for (name, package, example) in selected {
        if *name == "runtime" {
            bench_runtime(sh)?;
            continue;
        }
        step(&format!("bench {name}"));
        cmd!(sh, "cargo run --quiet --locked --release -p {package} --example {example}").run()?;
    }
    Ok(())
}
