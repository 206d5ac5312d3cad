//! The container engine, reached only through its HTTP API (bollard): Docker, or Podman's
//! Docker-compatible service. Never the docker CLI.
//!
//! Owns: finding the endpoint (`DOCKER_HOST`, else `/var/run/docker.sock`), negotiating the API
//! version down to what the engine speaks (our Debian machines run Docker 20.10, API 1.41), and
//! the handful of operations a rootfs build needs — build from an in-memory context with the log
//! streamed to [`Progress`], import a tar stream as a tagged image, inspect/pull/remove images,
//! create a container without starting it, export its filesystem as a byte stream, and list what
//! carries a label. Every failure is an [`EngineError`] that says what we were doing and, for an
//! unreachable engine or a full disk, how to fix it.
//!
//! It knows nothing about image definitions, plans or squashfs (that is `crate::build`), and it
//! never prints except through [`Progress`].
//!
//! # Timeouts
//!
//! bollard applies its client timeout until the response *headers* arrive. A build or an import
//! may hold its request open for many minutes before that, so the client is created with a
//! generous timeout ([`LONG_TIMEOUT`]) and every short call (ping, inspect, list, remove) is
//! wrapped in its own [`SHORT_TIMEOUT`].

mod error;
pub mod progress;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    RemoveContainerOptions, RemoveImageOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

pub use error::EngineError;
pub(crate) use error::{error_chain, says_out_of_disk};
pub use progress::{BuildEvent, BuildLog, Progress, ProgressMode, TAIL_LINES};

/// The socket used when `DOCKER_HOST` is unset.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Client timeout, which bounds the wait for response headers of builds, imports and exports.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bound on every short API call.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often to look again (every 250 ms) at a container the engine is already removing.
const REMOVAL_POLLS: u32 = 120;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port` over plain TCP (`tcp://` or `http://` in `DOCKER_HOST`).
    Tcp(String),
}

impl Endpoint {
    /// `DOCKER_HOST` if set and not empty, else the default socket.
    pub fn from_env() -> Result<Endpoint, EngineError> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.trim().is_empty() => Endpoint::parse(host.trim()),
            _ => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }

    /// Parses a `DOCKER_HOST` value: `unix:///path`, `tcp://host:port`, `http://host:port`.
    pub fn parse(host: &str) -> Result<Endpoint, EngineError> {
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
            return Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_owned()));
        }
        Err(EngineError::NoEngine {
            endpoint: host.to_owned(),
            reason: format!("DOCKER_HOST `{host}` is not supported (TLS, ssh:// and npipe:// endpoints are not)"),
            fix: "use unix:///path/to/docker.sock or tcp://host:port (e.g. through an ssh tunnel to a Unix socket)"
                .to_owned(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// What [`Engine::inspect_image`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// Content id, `sha256:…`.
    pub id: String,
    /// Labels of the image config.
    pub labels: BTreeMap<String, String>,
    /// Architecture (`amd64`, `arm64`), when recorded.
    pub architecture: Option<String>,
    /// Its tags (`repo:tag`).
    pub tags: Vec<String>,
}

/// A container or image found by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labeled {
    /// Id.
    pub id: String,
    /// Its tags (images) or names (containers).
    pub names: Vec<String>,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
}

/// One image of [`Engine::all_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNode {
    /// Id, `sha256:…`.
    pub id: String,
    /// Parent id (locally built images), empty otherwise.
    pub parent: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// Parameters of [`Engine::build_image`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildRequest {
    /// Tag of the result, `repo:tag`.
    pub tag: String,
    /// Target platform, e.g. `linux/amd64`.
    pub platform: Option<String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Labels of the resulting image (the classic builder adds them as a last `LABEL` step).
    pub labels: BTreeMap<String, String>,
    /// Network mode of the `RUN` containers (`host`, `bridge`, `none`), engine default if unset.
    pub network_mode: Option<String>,
    /// Ignore the build cache.
    pub no_cache: bool,
}

/// A connected engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: Endpoint,
    api_version: String,
}

impl Engine {
    /// Connects to `DOCKER_HOST` or the default socket.
    pub async fn connect_default() -> Result<Engine, EngineError> {
        Engine::connect(Endpoint::from_env()?).await
    }

    /// Connects to `endpoint` and negotiates the API version.
    pub async fn connect(endpoint: Endpoint) -> Result<Engine, EngineError> {
        let shown = endpoint.to_string();
        preconnect(&endpoint)?;
        let secs = LONG_TIMEOUT.as_secs();
        let docker = match &endpoint {
            Endpoint::Unix(path) => {
                Docker::connect_with_socket(&path.to_string_lossy(), secs, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(&format!("tcp://{addr}"), secs, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| error::classify(&e, "connecting", &shown))?;
        let docker = match tokio::time::timeout(SHORT_TIMEOUT, docker.negotiate_version()).await {
            Ok(result) => result.map_err(|e| error::classify(&e, "negotiating the API version", &shown))?,
            Err(_) => {
                return Err(EngineError::NoEngine {
                    endpoint: shown,
                    reason: format!("no answer to /version within {}s", SHORT_TIMEOUT.as_secs()),
                    fix: error::NO_ENGINE_FIX.to_owned(),
                });
            }
        };
        let api_version = docker.client_version().to_string();
        Ok(Engine { docker, endpoint, api_version })
    }

    /// The endpoint connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    fn err(&self, operation: &str) -> impl Fn(bollard::errors::Error) -> EngineError + '_ {
        let operation = operation.to_owned();
        move |e| error::classify(&e, &operation, &self.endpoint.to_string())
    }

    async fn short<T>(
        &self,
        operation: &str,
        fut: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(SHORT_TIMEOUT, fut).await {
            Ok(r) => r.map_err(self.err(operation)),
            Err(_) => Err(EngineError::Api {
                operation: operation.to_owned(),
                message: format!("no answer within {}s", SHORT_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The engine's data directory (`DockerRootDir`), for out-of-disk advice.
    pub async fn data_root(&self) -> Option<String> {
        self.short("asking for engine info", self.docker.info()).await.ok()?.docker_root_dir
    }

    /// Adds the engine's data directory to an out-of-disk error.
    pub async fn with_data_root(&self, error: EngineError) -> EngineError {
        match error {
            EngineError::OutOfDisk { operation, message, data_root: None } => {
                EngineError::OutOfDisk { operation, message, data_root: self.data_root().await }
            }
            other => other,
        }
    }

    /// The image `reference` (tag or id), or `None` when the engine does not have it.
    pub async fn inspect_image(&self, reference: &str) -> Result<Option<ImageFacts>, EngineError> {
        match tokio::time::timeout(SHORT_TIMEOUT, self.docker.inspect_image(reference)).await {
            Ok(Ok(img)) => Ok(Some(ImageFacts {
                id: img.id.unwrap_or_default(),
                labels: img.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect(),
                architecture: img.architecture,
                tags: img.repo_tags.unwrap_or_default(),
            })),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => Ok(None),
            Ok(Err(e)) => Err(self.err(&format!("inspecting image {reference}"))(e)),
            Err(_) => Err(EngineError::Api {
                operation: format!("inspecting image {reference}"),
                message: "no answer in time".into(),
            }),
        }
    }

    /// Whether the engine has `reference`.
    pub async fn image_exists(&self, reference: &str) -> Result<bool, EngineError> {
        Ok(self.inspect_image(reference).await?.is_some())
    }

    /// Imports a filesystem tar stream as image `repo:tag` (what `docker import` does), with
    /// `labels` in its config. The tag appears only once the whole stream was accepted: a stream
    /// that ends with an error aborts the request and creates nothing. Returns the image id.
    /// (No progress: the engine reports none worth showing; the producer of `tar` can.)
    pub async fn import_image<S>(
        &self,
        tar: S,
        repo: &str,
        tag: &str,
        platform: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EngineError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let reference = format!("{repo}:{tag}");
        let operation = format!("importing {reference}");
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            changes: labels.iter().map(|(k, v)| format!("LABEL {}={}", quote_label(k), quote_label(v))).collect(),
            platform: platform.into(),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), Some(bollard::body_try_stream(tar)), None);
        while let Some(item) = stream.next().await {
            item.map_err(self.err(&operation))?;
        }
        match self.inspect_image(&reference).await? {
            Some(facts) => Ok(facts.id),
            None => Err(EngineError::Api { operation, message: "the import ended but the tag does not exist".into() }),
        }
    }

    /// Pulls `reference` for `platform`.
    pub async fn pull_image(
        &self,
        reference: &str,
        platform: &str,
        progress: &mut Progress,
    ) -> Result<(), EngineError> {
        let options =
            CreateImageOptions { from_image: Some(reference.into()), platform: platform.into(), ..Default::default() };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(self.err(&format!("pulling {reference}")))?;
            if let Some(status) = info.status {
                progress.status(&format!("pulling {reference}: {status}"));
            }
        }
        Ok(())
    }

    /// Builds the Dockerfile `Dockerfile` of the tar `context` with the classic builder,
    /// feeding the log to `log` (which the caller keeps, e.g. to save it on failure) and
    /// reporting intermediate containers and images to `on_event` as they appear. Intermediate
    /// containers are always removed (`rm` and `forcerm`). Returns the image id.
    pub async fn build_image(
        &self,
        context: Vec<u8>,
        request: &BuildRequest,
        log: &mut BuildLog,
        progress: &mut Progress,
        on_event: &mut (dyn FnMut(&BuildEvent) + Send),
    ) -> Result<String, EngineError> {
        let to_map =
            |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>();
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(request.tag.clone()),
            rm: true,
            forcerm: true,
            nocache: request.no_cache,
            buildargs: Some(to_map(&request.build_args)),
            labels: Some(to_map(&request.labels)),
            networkmode: request.network_mode.clone(),
            platform: request.platform.clone().unwrap_or_default(),
            ..Default::default()
        };
        let operation = format!("building {}", request.tag);
        let mut image_id = None;
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref() {
                        for event in log.feed(text, progress) {
                            on_event(&event);
                        }
                    }
                    if let Some(id) = info.aux.and_then(|a| a.id) {
                        image_id = Some(id);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(self.with_data_root(log.failure(&error, progress)).await);
                }
                Err(e) => {
                    log.finish(progress);
                    return Err(self.with_data_root(self.err(&operation)(e)).await);
                }
            }
        }
        log.finish(progress);
        match image_id {
            Some(id) => Ok(id),
            None => match self.inspect_image(&request.tag).await? {
                Some(facts) => Ok(facts.id),
                None => {
                    Err(EngineError::Api { operation, message: "the build ended without producing an image".into() })
                }
            },
        }
    }

    /// Creates (does not start) a container from `image`, named `name`, with `labels`.
    pub async fn create_container(
        &self,
        image: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EngineError> {
        let options = CreateContainerOptions { name: Some(name.into()), ..Default::default() };
        let body = ContainerCreateBody {
            image: Some(image.into()),
            // Never started; an image without CMD still needs one to be created.
            cmd: Some(vec!["/bin/true".into()]),
            network_disabled: Some(true),
            labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        let created = self
            .short(&format!("creating a container from {image}"), self.docker.create_container(Some(options), body))
            .await?;
        Ok(created.id)
    }

    /// The container's filesystem as an uncompressed tar stream.
    pub fn export_container(&self, id: &str) -> impl Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + '_ {
        let operation = format!("exporting container {}", short_id(id));
        self.docker.export_container(id).map(move |r| r.map_err(self.err(&operation)))
    }

    /// Removes a container (forcibly, with its anonymous volumes). `Ok(false)` if it was gone.
    /// When the engine is already removing it (a cancelled build's step container), waits until
    /// it is gone, so that its image can be removed next.
    pub async fn remove_container(&self, id: &str) -> Result<bool, EngineError> {
        let op = format!("removing container {}", short_id(id));
        let mut removed = true;
        for _ in 0..REMOVAL_POLLS {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match tokio::time::timeout(SHORT_TIMEOUT, self.docker.remove_container(id, Some(options))).await {
                Ok(Ok(())) => return Ok(removed),
                Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {
                    return Ok(false);
                }
                Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, message }))
                    if message.contains("already in progress") =>
                {
                    removed = false;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Err(e)) => return Err(self.err(&op)(e)),
                Err(_) => return Err(EngineError::Api { operation: op, message: "no answer in time".into() }),
            }
        }
        Err(EngineError::Api { operation: op, message: "the engine's own removal of it did not finish in 30s".into() })
    }

    /// Removes an image (a tag or an id) and its untagged parents. `force` also removes it when
    /// stopped containers use it or other tags name it. `Ok(false)` if it was gone.
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<bool, EngineError> {
        let options = RemoveImageOptions { force, noprune: false, ..Default::default() };
        let op = format!("removing image {reference}");
        match tokio::time::timeout(SHORT_TIMEOUT, self.docker.remove_image(reference, Some(options), None)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => Ok(false),
            Ok(Err(e)) => Err(self.err(&op)(e)),
            Err(_) => Err(EngineError::Api { operation: op, message: "no answer in time".into() }),
        }
    }

    /// Every container (running or not) that has `label` (a key, or `key=value`).
    pub async fn containers_with_label(&self, label: &str) -> Result<Vec<Labeled>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let list = self.short("listing containers", self.docker.list_containers(Some(options))).await?;
        Ok(list
            .into_iter()
            .map(|c| Labeled {
                id: c.id.unwrap_or_default(),
                names: c.names.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    /// Every image, intermediate ones included, with its parent.
    pub async fn all_images(&self) -> Result<Vec<ImageNode>, EngineError> {
        let options = ListImagesOptions { all: true, ..Default::default() };
        let list = self.short("listing images", self.docker.list_images(Some(options))).await?;
        Ok(list
            .into_iter()
            .map(|i| ImageNode {
                id: i.id,
                parent: i.parent_id,
                tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
            })
            .collect())
    }

    /// Every image that has `label` (a key, or `key=value`).
    pub async fn images_with_label(&self, label: &str) -> Result<Vec<Labeled>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let options = ListImagesOptions { all: false, filters: Some(filters), ..Default::default() };
        let list = self.short("listing images", self.docker.list_images(Some(options))).await?;
        Ok(list
            .into_iter()
            .map(|i| Labeled { id: i.id, names: i.repo_tags, labels: i.labels.into_iter().collect() })
            .collect())
    }
}

/// The first 12 hex digits of an id, as the engine shows them; anything else (a tag) unchanged.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) { &hex[..12] } else { id }
}

/// A `LABEL` key or value for an import `changes` line: JSON-quoted (Dockerfile syntax accepts
/// double-quoted strings), so spaces and `=` survive.
fn quote_label(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A plain connect first, to tell a missing socket from a refused or forbidden one.
fn preconnect(endpoint: &Endpoint) -> Result<(), EngineError> {
    let Endpoint::Unix(path) = endpoint else { return Ok(()) };
    let no_engine = |reason: String| EngineError::NoEngine {
        endpoint: endpoint.to_string(),
        reason,
        fix: error::NO_ENGINE_FIX.to_owned(),
    };
    std::os::unix::net::UnixStream::connect(path).map(drop).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => no_engine(format!("{} does not exist", path.display())),
        std::io::ErrorKind::PermissionDenied => EngineError::NoEngine {
            endpoint: endpoint.to_string(),
            reason: format!("permission denied on {}", path.display()),
            fix: "run as root, or add your user to the `docker` group (`sudo usermod -aG docker $USER`, then log in again)"
                .to_owned(),
        },
        std::io::ErrorKind::ConnectionRefused => {
            no_engine(format!("{} exists but nothing listens on it (engine stopped?)", path.display()))
        }
        _ => no_engine(format!("connecting to {}: {e}", path.display())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_docker_host() {
        assert_eq!(
            Endpoint::parse("unix:///run/podman/podman.sock").unwrap(),
            Endpoint::Unix("/run/podman/podman.sock".into())
        );
        assert_eq!(Endpoint::parse("tcp://10.0.0.2:2375").unwrap(), Endpoint::Tcp("10.0.0.2:2375".into()));
        assert_eq!(Endpoint::parse("http://h:1/").unwrap(), Endpoint::Tcp("h:1".into()));
        let e = Endpoint::parse("ssh://me@host").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert_eq!(Endpoint::Unix(DEFAULT_SOCKET.into()).to_string(), "unix:///var/run/docker.sock");
    }

    #[test]
    fn a_missing_socket_is_no_engine_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = preconnect(&Endpoint::Unix(dir.path().join("docker.sock"))).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("no container engine at unix://"), "{text}");
        assert!(text.contains("does not exist") && text.contains("fix: start Docker"), "{text}");
    }

    #[test]
    fn labels_are_quoted_for_import_changes() {
        assert_eq!(quote_label("capsem.base"), "\"capsem.base\"");
        assert_eq!(quote_label("a b=\"c\""), "\"a b=\\\"c\\\"\"");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("capsem-rootfs-x86_64:1-2-0"), "capsem-rootfs-x86_64:1-2-0");
    }
}
