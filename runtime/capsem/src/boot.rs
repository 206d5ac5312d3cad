//! `capsem run`'s path from an assets directory to a connected guest agent:
//! verify (nothing boots that was not verified) → resolve settings (corp > user > image)
//! → start the VM on the verified descriptors → accept the agent's connection → `Configure`.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use capsem_proto::{BootFile, Client, Ready};
use capsem_trust::boot::{BootError, TrustedKey, VerifiedRelease, verify_for_boot};
use capsem_trust::rollback::RollbackStore;

use crate::config::{self, Paths};
use crate::egress::service::{Egress, upstream_from_env};
use crate::egress::{EventSink, ca::CertAuthority, policy::Policy};
use crate::session::{self, Session};
use crate::sessionlog::{SessionLog, SessionMeta};
use crate::vm::{self, Channel, Choice, RunningVm, Transport, VmExit, VmSpec};

/// The guest architecture this `capsem` boots.
pub const HOST_ARCH: &str = if cfg!(target_arch = "aarch64") { "arm64" } else { "x86_64" };

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub assets: PathBuf,
    pub overrides: config::RunOverrides,
    pub hypervisor: Choice,
    /// `None`: vsock when `vhost-device-vsock` is installed (qemu) or always (kvm), else serial.
    pub transport: Option<Transport>,
    /// How long the guest may take from VMM start to the agent's `Ready`.
    pub boot_timeout: Duration,
    /// What will run (for the session log; empty for a shell).
    pub command: Vec<String>,
}

/// Wall-clock breakdown of a boot, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BootTimings {
    /// Signature + manifest + every asset's size and BLAKE3.
    pub verify_ms: f64,
    /// Reading user/corp config and layering settings.
    pub settings_ms: f64,
    /// From starting the VMM until the guest kernel's clock started (host time minus guest uptime).
    pub vmm_start_ms: f64,
    /// Guest kernel: from its first instruction to init (guest uptime when init started).
    pub kernel_ms: f64,
    /// Init (mounts, overlay, switch_root) until the agent started.
    pub init_ms: f64,
    /// Agent start until the host received `Ready` and the boot settings were applied.
    pub agent_ready_ms: f64,
    /// Everything above.
    pub total_ms: f64,
}

/// Why a boot failed. Verification failures are kept apart: they happen before any VM process
/// exists, and name the file.
#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    // Not a `#[source]`: the message already carries it, and error chains would repeat it.
    #[error("refusing to boot {}: {error}", dir.display())]
    Verify { error: BootError, dir: PathBuf },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{0}")]
    Other(String),
}

/// The trusted keys from the config files, or the error saying how to add one.
pub fn trusted_keys(cfg: &config::Loaded) -> Vec<TrustedKey> {
    cfg.trusted_keys().into_iter().map(|k| TrustedKey { key: k.key, origin: k.origin }).collect()
}

/// Verification as every boot runs it (also `capsem verify`): signature by a trusted key,
/// manifest for this architecture, every asset's size and BLAKE3, no rollback.
pub fn verify(
    paths: &Paths,
    cfg: &config::Loaded,
    assets: &Path,
) -> Result<(VerifiedRelease, RollbackStore), BootFailure> {
    let fail = |error: BootError| BootFailure::Verify { error, dir: assets.to_path_buf() };
    let keys = trusted_keys(cfg);
    let store = RollbackStore::open(&paths.rollback_store)
        .map_err(|e| BootFailure::Other(format!("refusing to boot {}: {e}", assets.display())))?;
    let release = verify_for_boot(assets, HOST_ARCH, &keys, Some(&store)).map_err(fail)?;
    Ok((release, store))
}

/// A booted VM with its agent connected.
#[derive(Debug)]
pub struct Booted {
    pub client: Client,
    pub ready: Ready,
    pub timings: BootTimings,
    pub hypervisor: String,
    pub console_log: PathBuf,
    /// The session log (requests, DNS, execs): `capsem logs`.
    pub log: Arc<SessionLog>,
    vm: Box<dyn RunningVm>,
    // Stopped after the VM, before the log is finished.
    egress: Option<Egress>,
    // Dropped last: removes the sockets and logs.
    session: Session,
}

impl Booted {
    /// Asks the agent to shut the guest down and waits (≤ 10 s) for the VMM to exit; kills it
    /// otherwise; stops egress and closes the session log with `exit_status`. The session
    /// directory goes with `self`.
    pub fn shutdown(mut self, exit_status: &str) -> Result<(), String> {
        let asked = self.client.shutdown();
        let ended = self.vm.wait_timeout(Duration::from_secs(10));
        let pids = self.vm.pids();
        self.vm.kill();
        session::untrack(&pids);
        drop(self.egress.take());
        if let Err(e) = self.log.finish(exit_status) {
            eprintln!("capsem: warning: session log: {e}");
        }
        match (asked, ended) {
            (_, Ok(Some(VmExit::Stopped))) => Ok(()),
            (_, Ok(Some(VmExit::Failed(why)))) => Err(why),
            (Err(e), _) => Err(format!("the guest did not accept shutdown ({e}); the VM was killed")),
            (Ok(()), _) => Err("the guest did not stop within 10 s; the VM was killed".into()),
        }
    }

    /// The session's run directory (sockets, console.log).
    pub fn run_dir(&self) -> &Path {
        &self.session.dir
    }
}

/// Verifies, resolves settings, boots, and connects the agent.
pub fn boot(req: &BootRequest) -> Result<Booted, BootFailure> {
    let started = Instant::now();
    let paths = Paths::from_env()?;
    let cfg = config::Loaded::load(&paths)?;
    let (release, store) = verify(&paths, &cfg, &req.assets)?;
    let verify_ms = ms(started.elapsed());

    let t = Instant::now();
    let settings = cfg.resolve(&release.settings, &req.overrides)?;
    let settings_ms = ms(t.elapsed());
    for note in &settings.notes {
        eprintln!("capsem: note: {note}");
    }
    let mut store = store;
    // Only a release that verified moves the rollback floor forward.
    if let Err(e) = store.record(&release.manifest) {
        eprintln!("capsem: warning: {e}");
    }

    let hv = vm::select(req.hypervisor)?;
    let transport = req.transport.unwrap_or(match hv.name() {
        "qemu" if vm::qemu::find_vhost_vsock().is_none() => Transport::Serial,
        _ => Transport::Vsock,
    });
    let session = Session::create(&paths.run_dir)
        .map_err(|e| BootFailure::Other(format!("creating a run directory under {}: {e}", paths.run_dir.display())))?;
    let channel = Channel::new(transport, &session.dir);

    // Session log and egress (vsock only: each guest connection is its own vsock stream).
    let log = Arc::new(
        SessionLog::create(
            &paths.home.join("sessions"),
            SessionMeta {
                image: release.manifest.name.clone(),
                version: release.manifest.version.clone(),
                assets_dir: req.assets.clone(),
                command: req.command.clone(),
                hypervisor: hv.name().to_owned(),
            },
        )
        .map_err(|e| BootFailure::Other(format!("session log: {e}")))?,
    );
    // Retention (the image's vm/resources.toml, overridable in user/corp config).
    let limit = |key: &str, default: i64| settings.resources.get(key).copied().unwrap_or(default).max(0) as u64;
    let retention = crate::sessionlog::Retention {
        max_age: Duration::from_secs(limit("retention_days", 30) * 86_400),
        max_sessions: limit("max_sessions", 100) as usize,
        max_bytes: limit("max_disk_gb", 100).saturating_mul(1 << 30),
    };
    if let Err(e) =
        crate::sessionlog::prune(&paths.home.join("sessions"), log.id(), retention, std::time::SystemTime::now())
    {
        eprintln!("capsem: warning: pruning old session logs: {e}");
    }
    let mut files: Vec<BootFile> = settings
        .files
        .iter()
        .map(|f| BootFile { path: f.path.clone(), mode: f.mode, content: f.content.clone(), append: false })
        .collect();
    let egress = if transport == Transport::Vsock {
        let policy = Policy::from_web(&settings.web).map_err(|e| BootFailure::Other(format!("web policy: {e}")))?;
        let ca = CertAuthority::load_or_create(&paths.home.join("ca"))
            .map_err(|e| BootFailure::Other(format!("egress CA: {e}")))?;
        // The guest trusts the proxy: its CA joins the bundle SSL_CERT_FILE & co. point at.
        files.push(BootFile {
            path: settings.tls_ca_bundle.clone(),
            mode: 0o644,
            content: format!("\n{}", ca.ca_pem()).into_bytes(),
            append: true,
        });
        let mut upstream = upstream_from_env().map_err(BootFailure::Other)?;
        // A config file's upstream CA wins over the environment variable (a test knob).
        if let Some(file) = &settings.upstream_ca_file {
            upstream.extra_ca = Some(file.clone());
        }
        let sink: Arc<dyn EventSink> = log.clone();
        Some(
            Egress::start(&channel.vsock_uds, Arc::new(policy), Arc::new(ca), upstream, sink)
                .map_err(BootFailure::Other)?,
        )
    } else {
        eprintln!("capsem: note: no egress with the virtio-serial transport: the guest has no way out");
        None
    };
    let listener = UnixListener::bind(&channel.agent_socket)
        .map_err(|e| BootFailure::Other(format!("listening on {}: {e}", channel.agent_socket.display())))?;
    listener.set_nonblocking(true).map_err(|e| BootFailure::Other(format!("agent socket: {e}")))?;

    let console_log = session.dir.join("console.log");
    let cmdline = [
        "capsem.scratch=none".to_owned(),
        "capsem.fatal=reboot".to_owned(),
        format!("capsem.hostname={}", settings.hostname),
        transport.cmdline_arg(),
    ]
    .join(" ");
    let spec = VmSpec {
        kernel: &release.kernel.file,
        initrd: &release.initrd.file,
        rootfs: &release.rootfs.file,
        cmdline,
        cpus: settings.cpus,
        memory_mib: settings.memory_mib,
        channel,
        console_log: console_log.clone(),
        run_dir: session.dir.clone(),
    };
    let spawned = Instant::now();
    let mut vm = hv.start(&spec)?;
    session::track(&vm.pids());

    let stream = match accept_agent(&listener, vm.as_mut(), req.boot_timeout, &console_log) {
        Ok(s) => s,
        Err(e) => {
            vm.kill();
            return Err(e);
        }
    };
    let reader = stream.try_clone().map_err(|e| BootFailure::Other(format!("agent socket: {e}")))?;
    let remaining = req.boot_timeout.saturating_sub(spawned.elapsed()).max(Duration::from_secs(5));
    let (client, ready) = match Client::connect(Box::new(reader), Box::new(stream), remaining) {
        Ok(c) => c,
        Err(e) => {
            vm.kill();
            return Err(BootFailure::Other(format!(
                "the guest agent did not say Ready: {e}\n{}",
                console_hint(&console_log)
            )));
        }
    };
    let ready_at = spawned.elapsed();
    client
        .configure(settings.env.clone(), files)
        .map_err(|e| BootFailure::Other(format!("applying the boot settings in the guest: {e}")))?;
    let configured = spawned.elapsed();

    let uptime = ready.uptime_ms as f64;
    let init_started = ready.init_started_ms.map(|v| v as f64).unwrap_or(uptime);
    let timings = BootTimings {
        verify_ms,
        settings_ms,
        vmm_start_ms: (ms(ready_at) - uptime).max(0.0),
        kernel_ms: init_started,
        init_ms: (uptime - init_started).max(0.0),
        agent_ready_ms: ms(configured) - ms(ready_at),
        total_ms: ms(started.elapsed()),
    };
    Ok(Booted { client, ready, timings, hypervisor: hv.describe(), console_log, log, vm, egress, session })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The last console lines, for error messages.
fn console_hint(console_log: &Path) -> String {
    let tail = vm::qemu::tail(console_log, 8);
    if tail.is_empty() {
        "(the guest console printed nothing)".into()
    } else {
        format!("guest console (last lines):\n{tail}")
    }
}

/// Waits for the agent's connection while watching the VM: a VM that dies first is reported
/// with its console, and so is a boot that takes longer than `timeout`.
fn accept_agent(
    listener: &UnixListener,
    vm: &mut dyn RunningVm,
    timeout: Duration,
    console_log: &Path,
) -> Result<UnixStream, BootFailure> {
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| BootFailure::Other(format!("agent socket: {e}")))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(BootFailure::Other(format!("accepting the agent connection: {e}"))),
        }
        match vm.wait_timeout(Duration::from_millis(5))? {
            None => {}
            Some(exit) => {
                let why = match exit {
                    VmExit::Stopped => "the VM stopped".to_owned(),
                    VmExit::Failed(why) => why,
                };
                return Err(BootFailure::Other(format!(
                    "{why} before the guest agent connected\n{}",
                    console_hint(console_log)
                )));
            }
        }
        if start.elapsed() > timeout {
            return Err(BootFailure::Other(format!(
                "the guest agent did not connect within {} s\n{}",
                timeout.as_secs(),
                console_hint(console_log)
            )));
        }
    }
}
