//! The `capsem-builder` command line: validate, inspect, scaffold, doctor and build an image.
//!
//! Exit codes: 0 success (warnings allowed), 1 the image or the build has errors, 2 usage
//! errors (bad flags, missing directory). Stdout carries the command's data (diagnostics,
//! Dockerfiles, JSON); progress and logs go to stderr. `NO_COLOR` disables colour.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capsem_builder::diag::display_root;
use capsem_builder::model::{Arch, Manager};
use capsem_builder::validate::{self, Loaded};
use capsem_builder::{build, doctor, inspect, plan, render, scaffold, settings, sign};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "capsem-builder",
    version,
    about = "Build reproducible, signed capsem VM images from a TOML definition"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check an image definition and report every problem at once.
    Validate {
        /// Image directory (holds config/ and artifacts/).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Machine-readable output (shape documented in docs/diagnostics.md).
        #[arg(long)]
        json: bool,
    },
    /// Show the resolved image: providers, packages, policy, resources.
    Inspect {
        /// Image directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The whole validated model as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the boot-time settings file (defaults.json) for an image.
    Settings {
        /// Image directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Create a new, buildable image definition.
    Init {
        /// Directory to create.
        dir: PathBuf,
        /// Overwrite an existing config/.
        #[arg(long)]
        force: bool,
    },
    /// Create an image definition by copying another one.
    New {
        /// Directory to create.
        dir: PathBuf,
        /// Image to copy.
        #[arg(long)]
        from: PathBuf,
        /// Image name (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// Overwrite an existing config/.
        #[arg(long)]
        force: bool,
    },
    /// Add an AI provider, package set or MCP server from a template.
    Add {
        #[command(subcommand)]
        what: AddWhat,
    },
    /// Check the build prerequisites and say how to fix each failure.
    Doctor {
        /// Image directory (optional).
        dir: Option<PathBuf>,
        /// Where assets would be written (checked for free space).
        #[arg(long, default_value = "assets")]
        output: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Build the signed release: kernel, initrd, rootfs, manifest, B3SUMS, SBOM, signature.
    ///
    /// Every architecture in build.toml that this host can build (others are reported), or
    /// `--arch`. `--template` builds only some assets (no manifest); `--dry-run` prints the
    /// rendered Dockerfiles.
    Build {
        /// Image directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Render and print the build plan instead of building.
        #[arg(long)]
        dry_run: bool,
        /// Only this architecture.
        #[arg(long)]
        arch: Option<String>,
        /// Only this template.
        #[arg(long, value_enum)]
        template: Option<Template>,
        /// With --dry-run: JSON output.
        #[arg(long)]
        json: bool,
        /// Output directory for assets.
        #[arg(long, default_value = "assets")]
        output: PathBuf,
        /// Network mode of the build's RUN steps (`host` lets them reach the host's loopback).
        #[arg(long)]
        network: Option<String>,
        /// Where the kernel source comes from: `debian` (linux-source package) or `upstream`
        /// (kernel.org tarball); both pinned by sha256 in kernel/.
        #[arg(long, env = "CAPSEM_KERNEL_SOURCE", default_value = "debian")]
        kernel_source: capsem_builder::kernel_source::Provider,
        /// minisign secret key that signs manifest.json; without one the manifest stays unsigned.
        #[arg(long, env = "CAPSEM_SIGNING_KEY")]
        sign_key: Option<PathBuf>,
        /// trivy or grype JSON report to audit the bill of materials against (see `audit`).
        #[arg(long)]
        audit_report: Option<PathBuf>,
    },
    /// Merge per-architecture releases into one signed release.
    ///
    /// Each input is a `build --arch A` output from a native machine; the result has one
    /// manifest for all architectures, B3SUMS, and the signature when given a key.
    Merge {
        /// The per-architecture assets directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The merged assets directory.
        #[arg(long, default_value = "assets")]
        output: PathBuf,
        /// minisign secret key.
        #[arg(long, env = "CAPSEM_SIGNING_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Compare two asset directories byte for byte (exit 1 if any file differs).
    ///
    /// Names what differs inside squashfs and initrd images and JSON files. `cargo xtask repro`
    /// uses it.
    Compare {
        /// First assets directory.
        a: PathBuf,
        /// Second assets directory.
        b: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Generate a minisign key pair for signing releases.
    ///
    /// The secret key is password-protected when CAPSEM_SIGNING_KEY_PASSWORD is set, else
    /// unencrypted (as `minisign -G -W` makes it, for CI). Stdout: the public key line.
    Keygen {
        /// Public key file to write.
        #[arg(long, default_value = "capsem.pub")]
        public_key: PathBuf,
        /// Secret key file to write (mode 0600).
        #[arg(long, default_value = "capsem.key")]
        secret_key: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a release's manifest.json (writes manifest.json.minisig next to it).
    ///
    /// Deterministic: the same key and manifest give the same bytes. Stdout: the signature path.
    Sign {
        /// Assets directory holding manifest.json, or the manifest file itself.
        #[arg(default_value = "assets")]
        target: PathBuf,
        /// minisign secret key; its password, if any, from CAPSEM_SIGNING_KEY_PASSWORD.
        #[arg(long, env = "CAPSEM_SIGNING_KEY")]
        key: PathBuf,
    },
    /// Verify a release: signature, manifest, assets and B3SUMS.
    ///
    /// Checks the minisign signature over manifest.json, every asset and SBOM it lists (size and
    /// BLAKE3), and every file in B3SUMS; one line per check on stdout. Exit 0 only when every
    /// check passes; anything missing is a failure.
    Verify {
        /// Assets directory.
        #[arg(default_value = "assets")]
        dir: PathBuf,
        /// Trusted minisign public key file (or its base64 line).
        #[arg(long)]
        public_key: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Audit the bill of materials with a trivy or grype JSON report.
    ///
    /// Matches the report to the manifest's packages and applies the image's [audit] policy.
    /// Exit 0 pass, 1 policy fails, 2 cannot run.
    Audit {
        /// Image directory (its config/build.toml `[audit]` is the policy).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The scanner's JSON report (`trivy rootfs --format json`, `grype dir:… -o json`).
        #[arg(long)]
        report: PathBuf,
        /// Only this architecture of the manifest (default: every one).
        #[arg(long)]
        arch: Option<String>,
        /// Assets directory holding manifest.json (as `build --output`).
        #[arg(long, default_value = "assets")]
        assets: PathBuf,
        /// Record the findings in manifest.json (removes its signature: re-sign afterwards).
        #[arg(long)]
        write: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AddWhat {
    /// config/ai/NAME.toml
    AiProvider {
        /// Provider key.
        name: String,
        /// Image directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite.
        #[arg(long)]
        force: bool,
    },
    /// config/packages/NAME.toml
    Packages {
        /// Package set key.
        name: String,
        /// Image directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Package manager.
        #[arg(long, value_enum, default_value = "apt")]
        manager: ManagerArg,
        /// Overwrite.
        #[arg(long)]
        force: bool,
    },
    /// config/mcp/NAME.toml
    Mcp {
        /// Server key.
        name: String,
        /// Image directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Transport.
        #[arg(long, value_enum, default_value = "stdio")]
        transport: TransportArg,
        /// Overwrite.
        #[arg(long)]
        force: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Template {
    Rootfs,
    Kernel,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ManagerArg {
    Apt,
    Uv,
    Pip,
    Npm,
    Curl,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TransportArg {
    Stdio,
    Sse,
}

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Usage error: print and exit 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn require_dir(dir: &Path) -> Result<(), ExitCode> {
    if dir.is_dir() {
        Ok(())
    } else if dir.exists() {
        Err(usage(format_args!("`{}` is not a directory", dir.display())))
    } else {
        Err(usage(format_args!("image directory `{}` not found", dir.display())))
    }
}

/// Loads an image; on errors prints them (to stderr) and returns exit 1.
fn load_ok(dir: &Path) -> Result<capsem_builder::model::Model, ExitCode> {
    require_dir(dir)?;
    let Loaded { report, model } = validate::load(dir);
    let root = display_root(dir);
    if report.has_errors() || model.is_none() {
        eprint!("{}", report.render(&root, std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()));
        eprintln!("error: `{root}` has errors; fix them first (`capsem-builder validate {root}`)");
        return Err(ExitCode::from(1));
    }
    if !report.diagnostics.is_empty() {
        eprint!("{}", report.render(&root, false));
    }
    Ok(model.expect("checked above"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) | Err(code) => code,
    }
}

fn run(cmd: Command) -> Result<ExitCode, ExitCode> {
    match cmd {
        Command::Validate { dir, json } => {
            require_dir(&dir)?;
            let loaded = validate::load(&dir);
            let root = display_root(&dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&loaded.report.to_json(&root)).expect("report serializes"));
            } else {
                print!("{}", loaded.report.render(&root, color()));
            }
            Ok(if loaded.report.has_errors() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Inspect { dir, json } => {
            let model = load_ok(&dir)?;
            if json {
                println!("{}", inspect::to_json(&model));
            } else {
                print!("{}", inspect::render_text(&model));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings { dir, output } => {
            let model = load_ok(&dir)?;
            let json = settings::to_json(&model);
            match output {
                None => print!("{json}"),
                Some(path) => write_atomic(&path, json.as_bytes()).map_err(|e| {
                    eprintln!("error: cannot write `{}`: {e}", path.display());
                    ExitCode::from(1)
                })?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { dir, force } => {
            let files = scaffold::init(&dir, force).map_err(fail)?;
            eprintln!(
                "created {} ({} files); next: capsem-builder validate {}",
                dir.display(),
                files.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::New { dir, from, name, force } => {
            require_dir(&from)?;
            let files = scaffold::new_from(&dir, &from, &scaffold::NewOptions { name, force }).map_err(fail)?;
            eprintln!("created {} ({} files) from {}", dir.display(), files.len(), from.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Add { what } => {
            let (dir, kind, name, opts) = match what {
                AddWhat::AiProvider { name, dir, force } => (
                    dir,
                    scaffold::AddKind::AiProvider,
                    name,
                    scaffold::AddOptions { manager: Manager::Apt, transport: scaffold::Transport::Stdio, force },
                ),
                AddWhat::Packages { name, dir, manager, force } => {
                    let manager = match manager {
                        ManagerArg::Apt => Manager::Apt,
                        ManagerArg::Uv => Manager::Uv,
                        ManagerArg::Pip => Manager::Pip,
                        ManagerArg::Npm => Manager::Npm,
                        ManagerArg::Curl => Manager::Curl,
                    };
                    (
                        dir,
                        scaffold::AddKind::Packages,
                        name,
                        scaffold::AddOptions { manager, transport: scaffold::Transport::Stdio, force },
                    )
                }
                AddWhat::Mcp { name, dir, transport, force } => {
                    let transport = match transport {
                        TransportArg::Stdio => scaffold::Transport::Stdio,
                        TransportArg::Sse => scaffold::Transport::Sse,
                    };
                    (
                        dir,
                        scaffold::AddKind::Mcp,
                        name,
                        scaffold::AddOptions { manager: Manager::Apt, transport, force },
                    )
                }
            };
            require_dir(&dir)?;
            let path = scaffold::add(&dir, kind, &name, &opts).map_err(fail)?;
            eprintln!("created {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { dir, report, arch, assets, write, json } => {
            audit_cmd(&dir, &report, arch.as_deref(), &assets, write, json)
        }
        Command::Doctor { dir, output, json } => {
            let report = doctor::run(&doctor::Options::from_env(dir, output));
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("doctor report serializes"));
            } else {
                print!("{}", report.render_text());
            }
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Merge { inputs, output, sign_key } => {
            let manifest =
                capsem_builder::build::release::merge_releases(&inputs, &output, sign_key.as_deref()).map_err(fail)?;
            match sign_key {
                Some(_) => eprintln!("wrote {} (signed)", manifest.display()),
                None => eprintln!("wrote {} — NOT signed (no --sign-key)", manifest.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { a, b, json } => {
            let diffs = capsem_builder::compare::compare_dirs(&a, &b).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(2)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&diffs).expect("differences serialize"));
            } else {
                for d in &diffs {
                    println!("{} differs:", d.file);
                    for line in &d.details {
                        println!("  {line}");
                    }
                }
            }
            if diffs.is_empty() {
                eprintln!("identical: every file under {} and {} has the same bytes", a.display(), b.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} file(s) differ", diffs.len());
                Ok(ExitCode::from(1))
            }
        }
        Command::Keygen { public_key, secret_key, force } => keygen_cmd(&public_key, &secret_key, force),
        Command::Sign { target, key } => sign_cmd(&target, &key),
        Command::Verify { dir, public_key, json } => verify_cmd(&dir, &public_key, json),
        Command::Build {
            dir,
            dry_run,
            arch,
            template,
            json,
            output,
            network,
            kernel_source,
            sign_key,
            audit_report,
        } => {
            let model = load_ok(&dir)?;
            let archs: Vec<Arch> = match &arch {
                Some(a) => match Arch::parse(a) {
                    Some(a) if model.build.architectures.contains_key(&a) => vec![a],
                    _ => {
                        let declared: Vec<&str> = model.build.architectures.keys().map(|a| a.as_str()).collect();
                        return Err(usage(format_args!(
                            "architecture `{a}` is not declared in build.toml (declared: {})",
                            declared.join(", ")
                        )));
                    }
                },
                None => model.build.architectures.keys().copied().collect(),
            };
            if !dry_run {
                let request = BuildRequestArgs { template, network, kernel_source, sign_key, audit_report };
                return real_build(&dir, &model, &archs, &output, request);
            }
            let sde = model.build.source_date_epoch;
            let guest_bins: Vec<String> = Vec::new();
            let mut out = serde_json::Map::new();
            let mut text = String::new();
            for a in &archs {
                let mut entry = serde_json::Map::new();
                if template != Some(Template::Kernel) {
                    let p = plan::rootfs(&model, *a, &guest_bins, sde).expect("declared arch has a plan");
                    let df = render::render_rootfs(&p).map_err(fail)?;
                    text.push_str(&format!("# --- {a} (rootfs) ---\n{df}\n"));
                    entry.insert("rootfs".into(), serde_json::json!({ "plan": p, "dockerfile": df }));
                }
                if template != Some(Template::Rootfs) {
                    let branch = &model.build.architectures[a].kernel_branch;
                    let source = capsem_builder::kernel_source::resolve(branch, kernel_source).map_err(fail)?;
                    let p = plan::kernel(&model, *a, sde, &source).expect("declared arch has a plan");
                    let df = render::render_kernel(&p).map_err(fail)?;
                    text.push_str(&format!("# --- {a} (kernel) ---\n{df}\n"));
                    entry.insert("kernel".into(), serde_json::json!({ "plan": p, "dockerfile": df }));
                }
                out.insert(a.as_str().into(), serde_json::Value::Object(entry));
            }
            if json {
                let doc = serde_json::json!({
                    "image": model.image.name,
                    "compression": model.build.compression,
                    "compression_level": model.build.compression_level,
                    "architectures": out,
                    "settings": serde_json::from_str::<serde_json::Value>(&settings::to_json(&model)).expect("settings are JSON"),
                });
                println!("{}", serde_json::to_string_pretty(&doc).expect("dry run serializes"));
            } else {
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `build` flags a real build uses.
#[derive(Debug)]
struct BuildRequestArgs {
    template: Option<Template>,
    network: Option<String>,
    kernel_source: capsem_builder::kernel_source::Provider,
    sign_key: Option<PathBuf>,
    audit_report: Option<PathBuf>,
}

/// A real build. No `--template`: the release (kernel, initrd, rootfs for every architecture,
/// then manifest, B3SUMS, signature). `--template rootfs`: root filesystems only.
/// `--template kernel`: vmlinuz and initrd.img only. Partial builds write no manifest.
fn real_build(
    dir: &Path,
    model: &capsem_builder::model::Model,
    archs: &[Arch],
    output: &Path,
    args: BuildRequestArgs,
) -> Result<ExitCode, ExitCode> {
    use capsem_builder::build::release::{self, Parts, ReleaseRequest};
    let opts = build::BuildOptions { network_mode: args.network, ..build::BuildOptions::from_env() };
    if args.template == Some(Template::Rootfs) {
        let mut outcomes = Vec::new();
        for arch in archs {
            if let Some(reason) = release::unbuildable_reason(*arch) {
                eprintln!("error: cannot build {arch}: {reason}");
                return Err(ExitCode::from(1));
            }
            let outcome = build::build_rootfs(dir, model, *arch, output, &opts).map_err(fail)?;
            eprintln!("built {} ({} bytes, blake3 {})", outcome.squashfs.display(), outcome.size, outcome.blake3);
            outcomes.push(outcome);
        }
        eprintln!(
            "note: partial build (--template rootfs): no manifest.json written; an existing one no longer matches"
        );
        println!("{}", serde_json::to_string_pretty(&outcomes).expect("outcome serializes"));
        return Ok(ExitCode::SUCCESS);
    }
    let parts = if args.template == Some(Template::Kernel) { Parts::Kernel } else { Parts::Release };
    if parts == Parts::Release && args.sign_key.is_none() {
        eprintln!(
            "warning: no signing key (--sign-key or CAPSEM_SIGNING_KEY): manifest.json will NOT be signed, \
             and capsem refuses to boot an unsigned release; sign it later with `capsem-builder sign`"
        );
    }
    let request = ReleaseRequest {
        image_dir: dir,
        model,
        archs: archs.to_vec(),
        out_dir: output,
        opts: &opts,
        kernel_source: args.kernel_source,
        sign_key: args.sign_key,
        audit_report: args.audit_report,
        parts,
    };
    let outcome = release::build_release(&request).map_err(fail)?;
    for (arch, reason) in &outcome.skipped {
        eprintln!("warning: {arch} not built: {reason}");
    }
    for a in &outcome.built {
        let k = &a.kernel;
        eprintln!(
            "{}: vmlinuz {} bytes ({}), initrd.img {} bytes{}",
            a.arch,
            k.size,
            if k.cached { "cached kernel" } else { "built" },
            a.initrd.size,
            a.rootfs.as_ref().map(|r| format!(", rootfs.squashfs {} bytes", r.size)).unwrap_or_default()
        );
    }
    match (&outcome.manifest, &outcome.signature) {
        (Some(m), Some(s)) => eprintln!("wrote {} and {} (signed)", m.display(), s.display()),
        (Some(m), None) => eprintln!("wrote {} — NOT signed", m.display()),
        _ => eprintln!("note: partial build (--template kernel): no manifest.json written"),
    }
    println!("{}", serde_json::to_string_pretty(&outcome).expect("outcome serializes"));
    if !outcome.audit_failures.is_empty() {
        eprintln!(
            "error: the audit found {} finding(s) the image's [audit] policy does not allow: {}",
            outcome.audit_failures.len(),
            outcome.audit_failures.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `keygen`: stderr names both files, stdout carries the public key line.
fn keygen_cmd(public_key: &Path, secret_key: &Path, force: bool) -> Result<ExitCode, ExitCode> {
    let generated = sign::keygen(public_key, secret_key, force).map_err(fail)?;
    eprintln!(
        "wrote secret key {} ({}, mode 0600) and public key {} (key id {})",
        secret_key.display(),
        if generated.encrypted { "password-protected" } else { "unencrypted" },
        public_key.display(),
        generated.key_id
    );
    println!("{}", generated.public_key);
    Ok(ExitCode::SUCCESS)
}

/// `sign`: signs `<dir>/manifest.json` (or the manifest given) after checking it is one.
fn sign_cmd(target: &Path, key: &Path) -> Result<ExitCode, ExitCode> {
    let manifest =
        if target.is_dir() { target.join(capsem_trust::manifest::MANIFEST_FILE) } else { target.to_path_buf() };
    let bytes = std::fs::read(&manifest).map_err(|e| {
        eprintln!("error: cannot read `{}`: {e}", manifest.display());
        ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 2 } else { 1 })
    })?;
    capsem_trust::Manifest::parse(&bytes).map_err(|e| fail(format_args!("`{}`: {e}", manifest.display())))?;
    let signing_key = sign::SigningKey::load(key, sign::password_from_env().as_deref()).map_err(fail)?;
    let signature = sign::sign_file_with(&manifest, &signing_key).map_err(fail)?;
    eprintln!("signed {} with key {}", manifest.display(), signing_key.key_id());
    println!("{}", signature.display());
    Ok(ExitCode::SUCCESS)
}

/// `verify`: one line per check on stdout (or the JSON report); exit 1 naming the first failure.
fn verify_cmd(dir: &Path, public_key: &str, json: bool) -> Result<ExitCode, ExitCode> {
    require_dir(dir)?;
    let key_path = Path::new(public_key);
    let key = if key_path.exists() {
        capsem_trust::PublicKey::from_file(key_path).map_err(usage)?
    } else {
        capsem_trust::PublicKey::parse(public_key)
            .map_err(|e| usage(format_args!("public key `{public_key}` is neither a file nor a base64 key: {e}")))?
    };
    let report = capsem_trust::verify_release(dir, &key);
    if json {
        let doc = serde_json::json!({
            "dir": dir,
            "public_key": key.to_base64(),
            "key_id": key.key_id(),
            "passed": report.passed(),
            "first_failure": report.first_failure(),
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("verify report serializes"));
    } else {
        for check in &report.checks {
            println!("{check}");
        }
    }
    match report.first_failure() {
        None => {
            eprintln!("verified {}: {} checks passed (key {})", dir.display(), report.checks.len(), key.key_id());
            Ok(ExitCode::SUCCESS)
        }
        Some(first) => {
            let failed = report.checks.iter().filter(|c| !c.ok).count();
            eprintln!(
                "error: {} does not verify: {failed} of {} checks failed; first: {} {}: {}",
                dir.display(),
                report.checks.len(),
                first.kind,
                first.path.escape_debug(),
                first.detail
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// `audit`: exit 0 when the policy passes, 1 when it fails, 2 when the audit cannot run (usage,
/// an image with errors, an unreadable or malformed manifest or report, a failed write).
fn audit_cmd(
    dir: &Path,
    report: &Path,
    arch: Option<&str>,
    assets: &Path,
    write: bool,
    json: bool,
) -> Result<ExitCode, ExitCode> {
    use capsem_builder::audit;
    let input = |e: audit::AuditError| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let model = load_ok(dir).map_err(|_| ExitCode::from(2))?;
    let mut manifest = audit::read_manifest(assets).map_err(input)?;
    let manifest_path = assets.join(capsem_trust::manifest::MANIFEST_FILE);
    if let Some(a) = arch
        && manifest.arch(a).is_none()
    {
        let have: Vec<&str> = manifest.architectures.iter().map(|e| e.arch.as_str()).collect();
        let path = manifest_path.display();
        return Err(usage(format_args!("architecture `{a}` is not in {path} (it has: {})", have.join(", "))));
    }
    let scan = audit::read_report(report).map_err(input)?;
    let mut results = Vec::new();
    for entry in manifest.architectures.iter_mut().filter(|e| arch.is_none_or(|a| a == e.arch)) {
        let outcome = audit::evaluate(&scan, &entry.packages, &model.audit);
        outcome.record_in(entry);
        results.push((entry.arch.clone(), outcome));
    }
    if json {
        println!("{}", audit::to_json(report, &scan, &model.audit, &results));
    } else {
        print!("{}", audit::render_text(scan.scanner, &model.audit, &results));
    }
    for id in audit::unused_allows(&model.audit, &results) {
        eprintln!("note: `{id}` is allowed in [audit] but this report does not mention it");
    }
    if write {
        match audit::write_manifest(assets, &manifest).map_err(input)? {
            audit::Written::Unchanged => {
                eprintln!("{} already records this audit; left unchanged", manifest_path.display());
            }
            audit::Written::Rewritten { signature_removed } => {
                let sig = if signature_removed { "its signature was removed" } else { "it had no signature" };
                eprintln!(
                    "warning: recorded the findings in {}, which is now unsigned ({sig}); \
                     re-sign it with `capsem-builder sign` — capsem refuses to boot an unsigned release",
                    manifest_path.display()
                );
            }
        }
    }
    let failing = audit::failing_ids(&results);
    if failing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: audit failed (fail_on = {}): {}; fix them, or accept them in [audit] allow",
        model.audit.fail_on.as_str(),
        failing.join(", ")
    );
    Ok(ExitCode::from(1))
}

/// Writes via a temporary file in the same directory, then renames (no half-written output).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    capsem_trust::atomic::write(path, bytes)
}
