//! `capsem-builder doctor`: checks that this host can build an image, and says how to fix what it cannot.
//!
//! Owns the list of host prerequisites (container engine, mmdebstrap, disk, memory, verification tools,
//! the image definition's entry file) and their thresholds. Every check is a small function that returns a
//! [`Check`] value; nothing here panics, exits, or prints — the CLI renders the [`Report`] as text or JSON.
//!
//! The environment (`DOCKER_HOST`, `PATH`, `/proc/meminfo`, …) is read once by [`Options::from_env`]; [`run`]
//! only looks at its [`Options`], so tests inject a fake environment and never depend on the machine having
//! Docker. The engine probe runs on its own thread with its own current-thread Tokio runtime and a hard
//! deadline, so a hung engine (or a hung DNS lookup for `tcp://`) cannot hang `doctor`.

use crate::engine::error_chain;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

const GIB: u64 = 1 << 30;

/// Below this much free disk at the output directory the build cannot finish.
const DISK_FAIL_BELOW: u64 = 10 * GIB;
/// Below this much free disk the build may run out of space (several architectures, cached layers).
const DISK_WARN_BELOW: u64 = 20 * GIB;
/// Below this much total memory the build fails (package installs, squashfs compression).
const MEM_FAIL_BELOW: u64 = 4 * GIB;
/// Below this much total memory the build is slow or may be killed under load.
const MEM_WARN_BELOW: u64 = 8 * GIB;
/// Below this much *available* memory right now, warn even when the total is enough.
const MEM_AVAILABLE_WARN_BELOW: u64 = 4 * GIB;

/// The Docker socket tried when `DOCKER_HOST` is unset.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The root Podman socket tried after the Docker socket and the rootless one.
const PODMAN_ROOT_SOCKET: &str = "/run/podman/podman.sock";
/// Default deadline for the engine probe and for `--version` runs.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const INSTALL_ENGINE: &str = "install and start an engine: `apt-get install docker.io && systemctl start docker` \
     (without systemd: `dockerd &`), or Podman: `apt-get install podman && podman system service --time=0 &`";

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The prerequisite is met.
    Pass,
    /// The build can run, but something is missing or low (the `fix` says what to do).
    Warn,
    /// The build will not work until this is fixed.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// The result of one check: what was looked at, what was found, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier of the check (`engine`, `mmdebstrap`, `disk`, …).
    pub name: &'static str,
    /// Pass, warn or fail.
    pub status: Status,
    /// One line saying what was found (versions, paths, sizes).
    pub detail: String,
    /// A command or step that fixes a warning or failure; `None` when passing.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check { name, status: Status::Pass, detail: detail.into(), fix: None }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { name, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { name, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// All checks of one `doctor` run, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed (warnings allowed): the exit status of `doctor`.
    pub fn passed(&self) -> bool {
        self.count(Status::Pass) + self.count(Status::Warn) == self.checks.len()
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// Human-readable report: one `[PASS] name: detail` line per check, an indented `fix:` line under
    /// each warning or failure, and a final `N passed, M warnings, K failed` line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!("[{}] {}: {}\n", check.status.label(), check.name, check.detail));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("       fix: {fix}\n"));
            }
        }
        let warnings = self.count(Status::Warn);
        out.push_str(&format!(
            "{} passed, {} {}, {} failed\n",
            self.count(Status::Pass),
            warnings,
            if warnings == 1 { "warning" } else { "warnings" },
            self.count(Status::Fail),
        ));
        out
    }
}

/// What `doctor` checks and the environment it checks it in.
///
/// Build it with [`Options::from_env`]; tests fill the fields directly so that nothing depends on the host.
#[derive(Debug, Clone)]
pub struct Options {
    /// Image definition directory; when set, `config/build.toml` must exist in it.
    pub image_dir: Option<PathBuf>,
    /// Where the assets will be written; free disk is measured there or at its nearest existing ancestor.
    pub output_dir: PathBuf,
    /// The `DOCKER_HOST` value (`unix://…` or `tcp://…`); `None` when unset, which means: the Docker socket,
    /// then the rootless and root Podman sockets, whichever exists first.
    pub docker_host: Option<String>,
    /// `$XDG_RUNTIME_DIR`, used to find the rootless Podman socket.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// The `PATH` searched for executables; `None` when unset (nothing is found).
    pub path_var: Option<OsString>,
    /// The meminfo file to read (`/proc/meminfo`).
    pub meminfo_path: PathBuf,
    /// Deadline for the engine probe and for each `--version` run.
    pub timeout: Duration,
}

impl Options {
    /// Options for this process: `DOCKER_HOST`, `XDG_RUNTIME_DIR` and `PATH` from the environment (an empty
    /// value counts as unset), `/proc/meminfo`, and a 5 s deadline.
    pub fn from_env(image_dir: Option<PathBuf>, output_dir: PathBuf) -> Self {
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Options {
            image_dir,
            output_dir,
            docker_host: non_empty("DOCKER_HOST").map(|v| v.to_string_lossy().into_owned()),
            xdg_runtime_dir: non_empty("XDG_RUNTIME_DIR").map(PathBuf::from),
            path_var: non_empty("PATH"),
            meminfo_path: PathBuf::from("/proc/meminfo"),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Runs every check and returns the report. Never panics and never blocks past the deadlines in `opts`.
pub fn run(opts: &Options) -> Report {
    let path_var = opts.path_var.as_deref();
    let mut checks = Vec::new();

    let probe = resolve_engine(opts.docker_host.as_deref(), opts.xdg_runtime_dir.as_deref(), |p| p.exists())
        .and_then(|target| probe_engine(&target, opts.timeout).map(|facts| (target, facts)));
    checks.push(engine_check(&probe));
    if let Ok((target, facts)) = &probe {
        checks.push(storage_check(target, facts));
    }

    checks.push(mmdebstrap_check(path_var, opts.timeout));
    checks.push(disk_check(&opts.output_dir));
    checks.push(memory_check(&opts.meminfo_path));
    for tool in &HOST_TOOLS {
        checks.push(host_tool_check(tool, path_var));
    }
    if let Some(dir) = &opts.image_dir {
        checks.push(image_config_check(dir));
    }
    Report { checks }
}

// ---------------------------------------------------------------------------------------------------------
// Engine

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, spoken to in plain HTTP.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// The endpoint to probe and whether the user chose it through `DOCKER_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    endpoint: Endpoint,
    from_docker_host: bool,
}

/// What the engine said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EngineFacts {
    name: &'static str,
    version: String,
    api_version: String,
    /// `/info`, or why it could not be read.
    storage: Result<StorageFacts, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StorageFacts {
    driver: Option<String>,
    root_dir: Option<String>,
}

/// Why the engine could not be used.
#[derive(Debug, thiserror::Error)]
enum EngineError {
    #[error("no engine socket found (tried {})", display_paths(tried))]
    NoSocket { tried: Vec<PathBuf> },
    #[error("DOCKER_HOST={host} is not supported (only unix:// and tcp:// are)")]
    UnsupportedHost { host: String },
    #[error("socket {} does not exist{}", path.display(), if *from_docker_host { " (from DOCKER_HOST)" } else { "" })]
    SocketMissing { path: PathBuf, from_docker_host: bool },
    #[error("permission denied on socket {}", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("connection refused at {endpoint}: no engine is listening")]
    Refused { endpoint: Endpoint },
    #[error("engine at {endpoint} is not responding (no answer within {:.1} s)", timeout.as_secs_f64())]
    NotResponding { endpoint: Endpoint, timeout: Duration },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: Endpoint, source: io::Error },
    #[error("engine at {endpoint} is not responding to the Docker API: {message}")]
    Api { endpoint: Endpoint, message: String },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Parses a `DOCKER_HOST` value into an endpoint; `tcp://` and `http://` without a port get Docker's 2375.
fn parse_docker_host(host: &str) -> Result<Endpoint, EngineError> {
    let unsupported = || EngineError::UnsupportedHost { host: host.to_owned() };
    if let Some(path) = host.strip_prefix("unix://") {
        return if path.is_empty() { Err(unsupported()) } else { Ok(Endpoint::Unix(PathBuf::from(path))) };
    }
    let rest = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")).ok_or_else(unsupported)?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(unsupported());
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    Ok(Endpoint::Tcp(if has_port { authority.to_owned() } else { format!("{authority}:2375") }))
}

/// Picks the endpoint: `DOCKER_HOST` when set; otherwise the first existing socket among Docker's, rootless
/// Podman's and root Podman's.
fn resolve_engine(
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Target, EngineError> {
    if let Some(host) = docker_host {
        return parse_docker_host(host).map(|endpoint| Target { endpoint, from_docker_host: true });
    }
    let mut tried = vec![PathBuf::from(DOCKER_SOCKET)];
    if let Some(xdg) = xdg_runtime_dir {
        tried.push(xdg.join("podman/podman.sock"));
    }
    tried.push(PathBuf::from(PODMAN_ROOT_SOCKET));
    match tried.iter().find(|p| exists(p)) {
        Some(path) => Ok(Target { endpoint: Endpoint::Unix(path.clone()), from_docker_host: false }),
        None => Err(EngineError::NoSocket { tried }),
    }
}

/// Connects, pings, and asks for `/version` and `/info`, all within `timeout` (plus a short grace for the
/// thread itself). Runs on a separate thread so that it works from inside an async caller too.
fn probe_engine(target: &Target, timeout: Duration) -> Result<EngineFacts, EngineError> {
    let (tx, rx) = mpsc::channel();
    let thread_target = target.clone();
    let spawned = std::thread::Builder::new().name("doctor-engine-probe".into()).spawn(move || {
        // The receiver may have given up already; nothing to do then.
        let _ = tx.send(probe_engine_blocking(&thread_target, timeout));
    });
    if let Err(source) = spawned {
        return Err(EngineError::Connect { endpoint: target.endpoint.clone(), source });
    }
    rx.recv_timeout(timeout.saturating_add(Duration::from_millis(500)))
        .unwrap_or_else(|_| Err(EngineError::NotResponding { endpoint: target.endpoint.clone(), timeout }))
}

fn probe_engine_blocking(target: &Target, timeout: Duration) -> Result<EngineFacts, EngineError> {
    let started = Instant::now();
    preconnect(target, timeout)?;
    let endpoint = &target.endpoint;
    let api_error =
        |e: &dyn std::error::Error| EngineError::Api { endpoint: endpoint.clone(), message: error_chain(e) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| EngineError::Connect { endpoint: endpoint.clone(), source })?;
    let seconds = timeout.as_secs().max(1);
    let docker = match endpoint {
        Endpoint::Unix(path) => {
            bollard::Docker::connect_with_unix(&path.to_string_lossy(), seconds, bollard::API_DEFAULT_VERSION)
        }
        Endpoint::Tcp(addr) => {
            bollard::Docker::connect_with_http(&format!("tcp://{addr}"), seconds, bollard::API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| api_error(&e))?;

    let remaining = timeout.saturating_sub(started.elapsed());
    runtime.block_on(async {
        let asked = tokio::time::timeout(remaining, async {
            docker.ping().await?;
            let version = docker.version().await?;
            let info = docker.info().await;
            Ok::<_, bollard::errors::Error>((version, info))
        })
        .await;
        match asked {
            Err(_elapsed) => Err(EngineError::NotResponding { endpoint: endpoint.clone(), timeout }),
            Ok(Err(e)) => Err(api_error(&e)),
            Ok(Ok((version, info))) => Ok(engine_facts(&version, info.map_err(|e| error_chain(&e)))),
        }
    })
}

/// A plain connect before speaking HTTP, to tell a missing socket from a permission problem from a dead one.
fn preconnect(target: &Target, timeout: Duration) -> Result<(), EngineError> {
    let endpoint = target.endpoint.clone();
    match &target.endpoint {
        Endpoint::Unix(path) => UnixStream::connect(path).map(drop).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => {
                EngineError::SocketMissing { path: path.clone(), from_docker_host: target.from_docker_host }
            }
            io::ErrorKind::PermissionDenied => EngineError::PermissionDenied { path: path.clone() },
            io::ErrorKind::ConnectionRefused => EngineError::Refused { endpoint },
            _ => EngineError::Connect { endpoint, source },
        }),
        Endpoint::Tcp(addr) => {
            use std::net::{TcpStream, ToSocketAddrs};
            let resolved = addr
                .to_socket_addrs()
                .map_err(|source| EngineError::Connect { endpoint: endpoint.clone(), source })?
                .next()
                .ok_or_else(|| EngineError::Connect {
                    endpoint: endpoint.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address"),
                })?;
            TcpStream::connect_timeout(&resolved, timeout).map(drop).map_err(|source| match source.kind() {
                io::ErrorKind::ConnectionRefused => EngineError::Refused { endpoint },
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => EngineError::NotResponding { endpoint, timeout },
                _ => EngineError::Connect { endpoint, source },
            })
        }
    }
}

fn engine_facts(
    version: &bollard::models::SystemVersion,
    info: Result<bollard::models::SystemInfo, String>,
) -> EngineFacts {
    let is_podman = version.components.iter().flatten().any(|c| c.name.contains("Podman"))
        || version.platform.as_ref().is_some_and(|p| p.name.contains("Podman"));
    let unknown = || "unknown".to_owned();
    EngineFacts {
        name: if is_podman { "Podman" } else { "Docker" },
        version: version.version.clone().unwrap_or_else(unknown),
        api_version: version.api_version.clone().unwrap_or_else(unknown),
        storage: info.map(|i| StorageFacts { driver: i.driver, root_dir: i.docker_root_dir }),
    }
}

fn engine_check(probe: &Result<(Target, EngineFacts), EngineError>) -> Check {
    const NAME: &str = "engine";
    let error = match probe {
        Ok((target, facts)) => {
            return Check::pass(
                NAME,
                format!("{} {} API {} at {}", facts.name, facts.version, facts.api_version, target.endpoint),
            );
        }
        Err(error) => error,
    };
    let fix = match error {
        EngineError::NoSocket { .. } => INSTALL_ENGINE.to_owned(),
        EngineError::SocketMissing { from_docker_host: true, .. } => {
            format!("start the engine that should listen there, or unset DOCKER_HOST; to {INSTALL_ENGINE}")
        }
        EngineError::SocketMissing { from_docker_host: false, .. } => INSTALL_ENGINE.to_owned(),
        EngineError::UnsupportedHost { .. } => "set DOCKER_HOST to unix:///path/to/engine.sock or tcp://host:port \
             (for a remote engine over ssh, forward its socket: `ssh -nNL /tmp/docker.sock:/var/run/docker.sock HOST` \
             and use unix:///tmp/docker.sock)"
            .to_owned(),
        EngineError::PermissionDenied { .. } => "run as root, or add your user to the `docker` group \
             (`usermod -aG docker $USER`, then log in again); for rootless Podman run \
             `podman system service --time=0 &` as your user"
            .to_owned(),
        EngineError::Refused { .. } => "start the engine: `systemctl start docker` (without systemd: `dockerd &`), \
             or Podman: `podman system service --time=0 &`; if it is not installed, `apt-get install docker.io`"
            .to_owned(),
        EngineError::NotResponding { .. } | EngineError::Api { .. } => "the engine is hung or this is not a \
             Docker API endpoint: restart it (`systemctl restart docker`, or stop and rerun `dockerd`) and read its \
             log (`journalctl -u docker`); check DOCKER_HOST"
            .to_owned(),
        EngineError::Connect { .. } => "check that DOCKER_HOST names a reachable engine, then start it \
             (`systemctl start docker` or `dockerd &`)"
            .to_owned(),
    };
    Check::fail(NAME, error.to_string(), fix)
}

const STORAGE_CHECK: &str = "engine-storage";

/// The engine's storage driver and the free space where it keeps layers. Warn only.
fn storage_check(target: &Target, facts: &EngineFacts) -> Check {
    let storage = match &facts.storage {
        Ok(storage) => storage,
        Err(message) => {
            return Check::warn(
                STORAGE_CHECK,
                format!("the engine did not report its storage: {message}"),
                "check the engine's log (`journalctl -u docker`)",
            );
        }
    };
    // The root directory is only on this filesystem when the engine is local.
    let free = match (&target.endpoint, &storage.root_dir) {
        (Endpoint::Unix(_), Some(root)) => match rustix::fs::statvfs(Path::new(root)) {
            Ok(st) => FreeSpace::Known(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(errno) => FreeSpace::Unknown(errno.to_string()),
        },
        _ => FreeSpace::Remote,
    };
    judge_storage(storage.driver.as_deref(), storage.root_dir.as_deref(), &free)
}

/// Free space under the engine's root directory, as far as this host can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FreeSpace {
    Known(u64),
    /// `statvfs` failed, with its reason.
    Unknown(String),
    /// The engine is not local, so its filesystem is not ours to measure.
    Remote,
}

/// The verdict on the engine's storage, apart from measuring it (so tests need not depend on the
/// free space of the machine they run on).
fn judge_storage(driver: Option<&str>, root: Option<&str>, free: &FreeSpace) -> Check {
    const NAME: &str = STORAGE_CHECK;
    let driver = driver.unwrap_or("unknown driver");
    let root = root.unwrap_or("an unknown directory");
    let mut detail = format!("{driver} at {root}");
    match free {
        FreeSpace::Known(bytes) => detail.push_str(&format!(", {} free", gib(*bytes))),
        FreeSpace::Unknown(reason) => detail.push_str(&format!(" (free space unknown: {reason})")),
        FreeSpace::Remote => {}
    }
    if driver == "vfs" {
        return Check::warn(
            NAME,
            format!("{detail}; the vfs driver copies every layer in full, so builds are slow and use far more disk"),
            "use overlay2: put {\"storage-driver\": \"overlay2\"} in /etc/docker/daemon.json and restart the engine",
        );
    }
    match free {
        FreeSpace::Known(bytes) if *bytes < DISK_WARN_BELOW => Check::warn(
            NAME,
            format!("{detail}; layers of a full image need about {}", gib(DISK_WARN_BELOW)),
            format!("free space under {root} (`docker system prune` removes unused images and build cache)"),
        ),
        _ => Check::pass(NAME, detail),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Executables

/// An executable used later in the pipeline; missing ones only warn.
#[derive(Debug)]
struct HostTool {
    name: &'static str,
    package: &'static str,
    purpose: &'static str,
}

const HOST_TOOLS: [HostTool; 4] = [
    HostTool { name: "unsquashfs", package: "squashfs-tools", purpose: "inspect and test rootfs.squashfs" },
    HostTool { name: "b3sum", package: "b3sum", purpose: "verify assets with `b3sum -c B3SUMS`" },
    HostTool {
        name: "minisign",
        package: "minisign",
        purpose: "verify signatures with `minisign -Vm manifest.json -p key.pub`",
    },
    HostTool {
        name: "qemu-system-x86_64",
        package: "qemu-system-x86",
        purpose: "boot built images with the qemu backend",
    },
];

/// The first `name` in `path_var` that is a file with an execute bit (symlinks followed).
fn find_executable(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?).filter(|dir| !dir.as_os_str().is_empty()).map(|dir| dir.join(name)).find(
        |candidate| std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0),
    )
}

/// Runs `program args…` with no stdin and returns its stdout, or why it failed, within `timeout`.
fn command_stdout(program: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let argv = format!("`{} {}`", program.display(), args.join(" "));
    let mut child = spawn_retrying(program, args).map_err(|e| format!("{argv} could not start: {e}"))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{argv} did not finish within {:.1} s", timeout.as_secs_f64()));
            }
            Err(e) => return Err(format!("{argv} could not be waited for: {e}")),
        }
    };
    let stdout = stdout.recv().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = stderr.recv().unwrap_or_default();
        let reason = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        Err(format!("{argv} failed ({status}): {}", reason.trim()))
    }
}

/// Spawns, retrying briefly on ETXTBSY (a just-written script can be briefly "busy" while another thread forks).
fn spawn_retrying(program: &Path, args: &[&str]) -> io::Result<std::process::Child> {
    let mut attempts = 0;
    loop {
        let spawned =
            Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    }
    rx
}

fn mmdebstrap_check(path_var: Option<&OsStr>, timeout: Duration) -> Check {
    const NAME: &str = "mmdebstrap";
    let Some(path) = find_executable("mmdebstrap", path_var) else {
        return Check::fail(
            NAME,
            format!(
                "not found on {} (needed to bootstrap the base image without a registry)",
                if path_var.is_some() { "PATH" } else { "PATH (PATH is not set)" }
            ),
            "apt-get install mmdebstrap",
        );
    };
    match command_stdout(&path, &["--version"], timeout) {
        Ok(stdout) => {
            let first = stdout.lines().next().unwrap_or("").trim();
            let version = first.strip_prefix("mmdebstrap").map(str::trim).unwrap_or(first);
            let version = if version.is_empty() { "(version unknown)" } else { version };
            Check::pass(NAME, format!("mmdebstrap {version} at {}", path.display()))
        }
        Err(reason) => Check::warn(
            NAME,
            format!("found at {} but {reason}", path.display()),
            "reinstall it: apt-get install --reinstall mmdebstrap",
        ),
    }
}

fn host_tool_check(tool: &HostTool, path_var: Option<&OsStr>) -> Check {
    match find_executable(tool.name, path_var) {
        Some(path) => Check::pass(tool.name, format!("found at {}", path.display())),
        None => Check::warn(
            tool.name,
            format!("not found on PATH (used to {})", tool.purpose),
            format!("apt-get install {}", tool.package),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Disk and memory

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

fn disk_status(free: u64) -> Status {
    if free < DISK_FAIL_BELOW {
        Status::Fail
    } else if free < DISK_WARN_BELOW {
        Status::Warn
    } else {
        Status::Pass
    }
}

/// `dir` itself, or the nearest ancestor that exists (the output directory is often not created yet).
fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .map(|a| if a.as_os_str().is_empty() { Path::new(".") } else { a })
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn disk_check(output_dir: &Path) -> Check {
    const NAME: &str = "disk";
    let at = nearest_existing(output_dir);
    let place = if at == output_dir {
        at.display().to_string()
    } else {
        format!("{} (nearest existing parent of {})", at.display(), output_dir.display())
    };
    let free = match rustix::fs::statvfs(&at) {
        Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
        Err(errno) => {
            return Check::warn(
                NAME,
                format!("cannot measure free space at {place}: {errno}"),
                format!("make sure {} is readable, or choose another output directory", at.display()),
            );
        }
    };
    let detail = format!("{} free at {place}", gib(free));
    let fix = format!(
        "free space on that filesystem or build into another directory (needs {}, {} recommended)",
        gib(DISK_FAIL_BELOW),
        gib(DISK_WARN_BELOW)
    );
    match disk_status(free) {
        Status::Pass => Check::pass(NAME, detail),
        Status::Warn => Check::warn(NAME, detail, fix),
        Status::Fail => Check::fail(NAME, detail, fix),
    }
}

/// `MemTotal` and `MemAvailable` in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemInfo {
    total: u64,
    available: Option<u64>,
}

fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some(MemInfo { total: field("MemTotal")?, available: field("MemAvailable") })
}

fn memory_check(meminfo_path: &Path) -> Check {
    const NAME: &str = "memory";
    let parsed = std::fs::read_to_string(meminfo_path)
        .map_err(|e| format!("cannot read {}: {e}", meminfo_path.display()))
        .and_then(|text| parse_meminfo(&text).ok_or_else(|| format!("no MemTotal line in {}", meminfo_path.display())));
    let mem = match parsed {
        Ok(mem) => mem,
        Err(reason) => {
            return Check::warn(
                NAME,
                reason,
                format!(
                    "make sure the machine has at least {} of RAM ({} recommended)",
                    gib(MEM_FAIL_BELOW),
                    gib(MEM_WARN_BELOW)
                ),
            );
        }
    };
    let detail = match mem.available {
        Some(available) => format!("{} total, {} available", gib(mem.total), gib(available)),
        None => format!("{} total", gib(mem.total)),
    };
    if mem.total < MEM_FAIL_BELOW {
        Check::fail(
            NAME,
            format!("{detail}; package installs and squashfs compression need {}", gib(MEM_FAIL_BELOW)),
            format!(
                "build on a machine (or VM) with at least {} of RAM, {} recommended",
                gib(MEM_FAIL_BELOW),
                gib(MEM_WARN_BELOW)
            ),
        )
    } else if mem.total < MEM_WARN_BELOW {
        Check::warn(
            NAME,
            format!("{detail}; {} recommended", gib(MEM_WARN_BELOW)),
            format!(
                "give the machine {} of RAM, or close other memory-hungry programs during the build",
                gib(MEM_WARN_BELOW)
            ),
        )
    } else if mem.available.is_some_and(|a| a < MEM_AVAILABLE_WARN_BELOW) {
        Check::warn(
            NAME,
            format!("{detail}; less than {} is free right now", gib(MEM_AVAILABLE_WARN_BELOW)),
            "close other memory-hungry programs (or stop idle containers) before building",
        )
    } else {
        Check::pass(NAME, detail)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Image definition

fn image_config_check(image_dir: &Path) -> Check {
    const NAME: &str = "image-config";
    let build_toml = image_dir.join("config").join("build.toml");
    let fix = format!("capsem-builder init {}", image_dir.display());
    if !image_dir.is_dir() {
        return Check::fail(NAME, format!("image directory {} does not exist", image_dir.display()), fix);
    }
    match std::fs::metadata(&build_toml) {
        Ok(m) if m.is_file() => match std::fs::File::open(&build_toml) {
            Ok(_) => Check::pass(NAME, format!("{} exists", build_toml.display())),
            Err(e) => Check::fail(
                NAME,
                format!("cannot read {}: {e}", build_toml.display()),
                format!("make {} readable by this user", build_toml.display()),
            ),
        },
        Ok(_) => Check::fail(NAME, format!("{} is not a file", build_toml.display()), fix),
        Err(_) => Check::fail(NAME, format!("{} not found", build_toml.display()), fix),
    }
}

#[cfg(test)]
mod tests;
