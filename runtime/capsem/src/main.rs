//! `capsem`: boots a verified image in a micro-VM and runs commands in it.
//!
//! Exit status: the command's own (128 + N when a signal N ended it, 124 when `--timeout`
//! expired), or 125 when capsem itself failed (verification, config, VM start) — `docker run`'s
//! convention. Stdout carries only the command's output; capsem's own messages go to stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capsem::boot::{self, BootRequest, Booted};
use capsem::config;
use capsem::vm::{Choice, Transport};
use capsem_proto::{ExecRequest, ExitStatus, WinSize};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "capsem", version, about = "Run commands in air-gapped, verified Linux micro-VMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot an ephemeral VM, run CMD in it, stream its output, exit with its status.
    Run(RunArgs),
    /// Boot an ephemeral VM with an interactive shell on a PTY.
    Shell(VmArgs),
    /// Show a session's log: every request, DNS question and command (default: the latest).
    Logs {
        /// Session id or a unique prefix of it (`capsem logs --list` shows them).
        session: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List the sessions instead.
        #[arg(long, conflicts_with = "session")]
        list: bool,
    },
    /// Verify a release (signature, manifest, every asset) exactly as a boot does.
    Verify {
        /// Release directory.
        #[arg(default_value = "assets", env = "CAPSEM_ASSETS")]
        assets: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HypervisorArg {
    Auto,
    Qemu,
    Kvm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Vsock,
    Serial,
}

#[derive(Debug, Args)]
struct VmArgs {
    /// Release directory (manifest.json, its signature, <arch>/ assets).
    #[arg(long, default_value = "assets", env = "CAPSEM_ASSETS")]
    assets: PathBuf,
    /// vCPUs (default: the image's vm/resources.toml, user and corp config).
    #[arg(long)]
    cpus: Option<u8>,
    /// Memory: 512M, 2G, or MiB (default: the image's ram_gb, user and corp config).
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u32>,
    /// Hypervisor backend.
    #[arg(long, value_enum, default_value = "auto", env = "CAPSEM_HYPERVISOR")]
    hypervisor: HypervisorArg,
    /// Agent channel (default: vsock when available, else virtio-serial).
    #[arg(long, value_enum, env = "CAPSEM_TRANSPORT")]
    transport: Option<TransportArg>,
    /// Seconds the guest may take to boot.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Print the boot time breakdown (JSON) on stderr.
    #[arg(long)]
    timings: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Forward this process's stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Environment variable for the command (KEY=VALUE), repeatable.
    #[arg(short, long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory inside the guest.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Kill the command after this many seconds (exit status 124).
    #[arg(long)]
    timeout: Option<u64>,
    /// Copy a host file into the guest before the command: HOST_PATH:GUEST_PATH (repeatable).
    #[arg(long, value_parser = parse_copy)]
    copy_in: Vec<(PathBuf, String)>,
    /// Copy a guest file to the host after the command: GUEST_PATH:HOST_PATH (repeatable).
    #[arg(long, value_parser = parse_copy_out)]
    copy_out: Vec<(String, PathBuf)>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_memory(s: &str) -> Result<u32, String> {
    config::parse_memory(s)
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

fn parse_copy(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok((host.into(), guest.to_owned())),
        _ => Err(format!("expected HOST_PATH:/GUEST/PATH (absolute guest path), got `{s}`")),
    }
}

fn parse_copy_out(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once(':') {
        Some((guest, host)) if guest.starts_with('/') && !host.is_empty() => Ok((guest.to_owned(), host.into())),
        _ => Err(format!("expected /GUEST/PATH:HOST_PATH (absolute guest path), got `{s}`")),
    }
}

/// capsem's own failures exit with this status.
const CAPSEM_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = capsem::session::install_signal_handler() {
        eprintln!("capsem: warning: no signal handler ({e}); Ctrl-C may leave the run directory behind");
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Shell(args) => shell(args),
        Command::Verify { assets, json } => verify(&assets, json),
        Command::Logs { session, json, list } => logs(session.as_deref(), json, list),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("capsem: error: {e:#}");
            ExitCode::from(CAPSEM_FAILED)
        }
    }
}

fn boot_request(vm: &VmArgs, command: &[String]) -> BootRequest {
    BootRequest {
        assets: vm.assets.clone(),
        overrides: config::RunOverrides { cpus: vm.cpus, memory_mib: vm.memory },
        hypervisor: match vm.hypervisor {
            HypervisorArg::Auto => Choice::Auto,
            HypervisorArg::Qemu => Choice::Qemu,
            HypervisorArg::Kvm => Choice::Kvm,
        },
        transport: vm.transport.map(|t| match t {
            TransportArg::Vsock => Transport::Vsock,
            TransportArg::Serial => Transport::Serial,
        }),
        boot_timeout: Duration::from_secs(vm.boot_timeout),
        command: command.to_vec(),
    }
}

fn start(vm: &VmArgs, command: &[String]) -> Result<Booted> {
    let booted = boot::boot(&boot_request(vm, command))?;
    if vm.timings {
        eprintln!("capsem: boot timings {}", serde_json::to_string(&booted.timings)?);
    }
    Ok(booted)
}

/// Exit status of the command, shell-style.
fn exit_code(status: &ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (*c & 0xff) as u8,
        ExitStatus::Signal(s) => (128 + (*s & 0x7f)) as u8,
        ExitStatus::TimedOut => 124,
    }
}

fn run(args: RunArgs) -> Result<u8> {
    let booted = start(&args.vm, &args.command)?;
    let outcome = run_in(&booted, &args);
    let t = std::time::Instant::now();
    let status = match &outcome {
        Ok(code) => code.to_string(),
        Err(e) => format!("error: {e}"),
    };
    let stopped = booted.shutdown(&status);
    if args.vm.timings {
        eprintln!("capsem: shutdown {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    if let Err(why) = stopped {
        eprintln!("capsem: warning: {why}");
    }
    outcome
}

fn run_in(booted: &Booted, args: &RunArgs) -> Result<u8> {
    for (host, guest) in &args.copy_in {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode =
            std::fs::metadata(host).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)?;
        booted
            .client
            .write_file(guest, mode, &data)
            .with_context(|| format!("copying {} to the guest's {guest}", host.display()))?;
    }
    let req = ExecRequest {
        argv: args.command.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        cwd: args.workdir.clone(),
        stdin: args.interactive,
        pty: None,
        timeout: args.timeout.map(Duration::from_secs),
    };
    let stdin: Option<Box<dyn std::io::Read + Send>> =
        args.interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let t = std::time::Instant::now();
    let status = booted.client.run(req, stdin, &mut std::io::stdout(), &mut std::io::stderr());
    booted.log.record_exec(
        &args.command,
        &match &status {
            Ok(s) => format!("{s:?}"),
            Err(e) => format!("error: {e}"),
        },
        t.elapsed(),
    );
    let status = status.with_context(|| format!("running `{}` in the guest", args.command.join(" ")))?;
    if args.vm.timings {
        eprintln!("capsem: exec {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    std::io::stdout().flush()?;
    for (guest, host) in &args.copy_out {
        let data = booted.client.read_file(guest).with_context(|| format!("copying the guest's {guest}"))?;
        capsem_trust::atomic::write(host, &data).with_context(|| format!("writing {}", host.display()))?;
    }
    if let ExitStatus::TimedOut = status {
        eprintln!(
            "capsem: `{}` timed out after {} s and was killed",
            args.command.join(" "),
            args.timeout.unwrap_or(0)
        );
    }
    Ok(exit_code(&status))
}

fn shell(vm: VmArgs) -> Result<u8> {
    let booted = start(&vm, &[])?;
    // bash when the image has it (busybox-only images get sh).
    let argv: Vec<String> =
        vec!["/bin/sh".into(), "-c".into(), "command -v bash >/dev/null && exec bash -l; exec sh -l".into()];
    let t = std::time::Instant::now();
    let outcome = capsem::shell::interactive(&booted.client, &argv, WinSize { rows: 24, cols: 80 });
    let status = match &outcome {
        Ok(s) => format!("{s:?}"),
        Err(e) => format!("error: {e}"),
    };
    booted.log.record_exec(&["(shell)".to_owned()], &status, t.elapsed());
    if let Err(why) = booted.shutdown(&status) {
        eprintln!("capsem: warning: {why}");
    }
    Ok(exit_code(&outcome.context("the guest shell")?))
}

fn logs(session: Option<&str>, json: bool, list: bool) -> Result<u8> {
    let paths = config::Paths::from_env()?;
    let out = capsem::sessionlog::logs_command(&paths.home.join("sessions"), session, json, list)?;
    print!("{out}");
    Ok(0)
}

fn verify(assets: &std::path::Path, json: bool) -> Result<u8> {
    let paths = config::Paths::from_env()?;
    let cfg = config::Loaded::load(&paths)?;
    let started = std::time::Instant::now();
    let (release, _) = match boot::verify(&paths, &cfg, assets) {
        Ok(r) => r,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "error": e.to_string() }));
            }
            bail!("{e}");
        }
    };
    let elapsed = started.elapsed();
    let files: Vec<_> = [&release.kernel, &release.initrd, &release.rootfs]
        .iter()
        .map(|f| serde_json::json!({ "path": f.path, "size": f.size, "b3": f.b3 }))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true, "image": release.manifest.name, "version": release.manifest.version,
                "arch": release.arch, "key": release.key.to_string(), "assets": files,
                "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        println!(
            "verified {} {} ({}), signed by {}",
            release.manifest.name, release.manifest.version, release.arch, release.key
        );
        for f in [&release.kernel, &release.initrd, &release.rootfs] {
            println!("  ok  {}  {} bytes  b3 {}", f.path.display(), f.size, f.b3);
        }
        println!("  ok  defaults.json (settings)\n{:.2} s", elapsed.as_secs_f64());
    }
    Ok(0)
}
