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
use capsem_builder::{build, doctor, inspect, plan, render, scaffold, settings};
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
    /// Build boot assets (use --dry-run to print the rendered Dockerfiles).
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
        Command::Doctor { dir, output, json } => {
            let report = doctor::run(&doctor::Options::from_env(dir, output));
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("doctor report serializes"));
            } else {
                print!("{}", report.render_text());
            }
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Build { dir, dry_run, arch, template, json, output, network } => {
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
                return real_build(&dir, &model, &archs, template, &output, network);
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
                    let p = plan::kernel(&model, *a, sde).expect("declared arch has a plan");
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

/// A real build: the rootfs of each architecture through the engine. Kernel, initrd, manifest
/// and signing arrive with issue 4; asking for them says so.
fn real_build(
    dir: &Path,
    model: &capsem_builder::model::Model,
    archs: &[Arch],
    template: Option<Template>,
    output: &Path,
    network: Option<String>,
) -> Result<ExitCode, ExitCode> {
    if template != Some(Template::Rootfs) {
        eprintln!(
            "error: building the kernel, initrd, manifest and signature is not implemented yet (issue 4); \
             `--template rootfs` builds the root filesystem, `--dry-run` prints every Dockerfile"
        );
        return Ok(ExitCode::from(1));
    }
    let opts = build::BuildOptions { network_mode: network, ..build::BuildOptions::from_env() };
    let mut outcomes = Vec::new();
    for arch in archs {
        if Some(*arch) != Arch::host() {
            eprintln!(
                "error: cannot build {arch} on this {} host (no emulation is set up); use --arch",
                std::env::consts::ARCH
            );
            return Err(ExitCode::from(1));
        }
        let outcome = build::build_rootfs(dir, model, *arch, output, &opts).map_err(fail)?;
        eprintln!("built {} ({} bytes, blake3 {})", outcome.squashfs.display(), outcome.size, outcome.blake3);
        outcomes.push(outcome);
    }
    println!("{}", serde_json::to_string_pretty(&outcomes).expect("outcome serializes"));
    Ok(ExitCode::SUCCESS)
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// Writes via a temporary file in the same directory, then renames (no half-written output).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
