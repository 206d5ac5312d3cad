//! `cargo xtask bench proxy`: what the egress proxy costs, against the same HTTPS upstream
//! reached directly, in the same run, on loopback.
//!
//! Two placements, because a loopback benchmark on a small machine can answer two different
//! questions:
//!
//! - **isolated** (judged against the targets; needs two CPUs): the load generator and the
//!   upstream share one pinned CPU, the proxy has another. This is how the proxy is deployed —
//!   the client runs on the guest's vCPUs, the upstream is another machine, the proxy runs on the
//!   host — so it answers "does putting the proxy in the path cut the request rate and add
//!   latency?". Direct uses the same one CPU for client and upstream; the proxy's CPU is idle.
//! - **shared** (informational): client, proxy and upstream share every CPU. When they saturate
//!   them, the ratio measures the proxy's CPU cost per request against client + upstream's; a
//!   TLS-terminating proxy does the work of both ends (two TLS sessions, two HTTP parsers, twice
//!   the loopback TCP), so this ratio sits near 0.5 by construction on a 2-CPU machine.
//!
//! In each placement:
//! 1. Small requests: `--clients` concurrent keep-alive HTTP/1.1-over-TLS clients send
//!    `GET /hello` for `--seconds` each way (direct to the upstream, then through the proxy with
//!    the SNI a guest would send), in 5 alternating windows per side; req/s and p50/p99 latency. Then one client alone, whose p50
//!    is the latency the proxy adds (with many clients p50 is mostly queueing).
//! 2. Throughput: a 10 MiB response body, `--runs` times each way; median MB/s.
//!
//! Shared placement only: small requests against an upstream that answers after 1 ms (what the
//! overhead looks like next to a server that does some work).
//!
//! Prints the figures, the ratios and whether the targets (≥ 0.8× req/s with `--clients`,
//! ≤ 0.5 ms added p50 with one client, isolated placement) are met (not asserted), and writes JSON to `--out` (default
//! `target/bench/proxy.json`).
//!
//! Usage: bench_proxy [--clients N] [--seconds S] [--runs N] [--out FILE]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use capsem::config::WebPolicy;
use capsem::config::defaults::Service;
use capsem::egress::ca::CertAuthority;
use capsem::egress::policy::Policy;
use capsem::egress::proxy::UpstreamConfig;
use capsem::egress::service::Egress;
use capsem::egress::{EventSink, TCP_PORT, relay};
use capsem::sessionlog::{SessionLog, SessionMeta};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};

const HOST: &str = "bench.test";
const BIG: usize = 10 * 1024 * 1024;
/// Service time of the second upstream (a nearby real server rather than a loopback echo).
const SLOW_UPSTREAM: Duration = Duration::from_millis(1);
/// Alternating direct/proxied windows per load figure.
const ROUNDS: usize = 5;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A body of `len` zero bytes in 64 KiB chunks.
struct Zeros(usize);

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(CHUNK.len());
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0 as u64)
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream(req: Request<Incoming>, delay: Duration) -> Result<Response<UpBody>, Infallible> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(match req.uri().path() {
        "/big" => Response::new(Zeros(BIG).boxed()),
        _ => Response::new(Full::new(Bytes::from_static(b"hello")).boxed()),
    })
}

/// The upstream's CA (PEM) and server configuration.
fn upstream_tls() -> Result<(String, Arc<rustls::ServerConfig>)> {
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_owned()])?.signed_by(&key, &ca)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca.pem(), Arc::new(config)))
}

/// The upstream on a loopback port; it answers after `delay` (zero: at once).
async fn spawn_upstream(config: Arc<rustls::ServerConfig>, delay: Duration) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req| upstream(req, delay));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Ok(addr)
}

/// The egress service exactly as `capsem run` starts it for a VM: the relay socket the guest's
/// connections arrive on (through vhost-device-vsock, here straight from the bench), the proxy
/// on its own 2-thread runtime, and a real session log recording every request.
struct EgressService {
    egress: Option<Egress>,
    log: Arc<SessionLog>,
    relay: PathBuf,
}

impl EgressService {
    /// Threads start with the calling thread's CPU affinity: start it on the CPU it should use.
    fn start(setup: &Setup, dir: &Path, upstream: SocketAddr) -> Result<EgressService> {
        std::fs::create_dir_all(dir)?;
        let meta = SessionMeta {
            image: "bench".into(),
            version: "0".into(),
            assets_dir: dir.to_owned(),
            command: vec!["bench_proxy".into()],
            hypervisor: "none".into(),
        };
        let log = Arc::new(SessionLog::create(&dir.join("sessions"), meta)?);
        let base = dir.join("vsock");
        let upstream = UpstreamConfig {
            extra_ca: Some(setup.extra_ca.clone()),
            resolve_overrides: BTreeMap::from([(HOST.to_owned(), upstream)]),
            ..UpstreamConfig::default()
        };
        let sink: Arc<dyn EventSink> = log.clone();
        let egress =
            Egress::start(&base, setup.policy.clone(), setup.ca.clone(), upstream, sink).map_err(anyhow::Error::msg)?;
        Ok(EgressService { egress: Some(egress), log, relay: relay::port_path(&base, TCP_PORT) })
    }

    /// Stops the service and closes its session log; returns how many requests it recorded.
    fn stop(mut self) -> Result<u64> {
        drop(self.egress.take());
        self.log.finish("0")?;
        if self.log.dropped_events() != 0 {
            bail!("the session log dropped {} events", self.log.dropped_events());
        }
        let db = rusqlite::Connection::open(self.log.path())?;
        Ok(db.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))?)
    }
}

fn client_config(ca_der: CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Where a client connects: the upstream itself, or the egress relay socket.
#[derive(Debug, Clone)]
enum Target {
    Direct(SocketAddr),
    Relay(PathBuf),
}

/// The original destination a guest connection to the upstream would carry (the proxy goes by
/// SNI and Host; the address only has to be well formed).
const RELAY_HEADER: &[u8] = b"CAPSEM-EGRESS/1 tls 192.0.2.1:443\n";

async fn connect(target: &Target, config: &Arc<rustls::ClientConfig>) -> Result<Sender> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(HOST)?;
    let (sender, conn) = match target {
        Target::Direct(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            (sender, tokio::spawn(conn))
        }
        Target::Relay(path) => {
            let mut unix = UnixStream::connect(path).await.with_context(|| format!("connecting {}", path.display()))?;
            unix.write_all(RELAY_HEADER).await?;
            let tls = connector.connect(name, unix).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            (sender, tokio::spawn(conn))
        }
    };
    drop(conn);
    Ok(sender)
}

/// One GET; returns the body length.
async fn get(sender: &mut Sender, path: &str) -> Result<usize> {
    sender.ready().await?;
    let req = Request::get(path).header("host", HOST).body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("{path}: status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            len += data.len();
        }
    }
    Ok(len)
}

#[derive(Debug)]
struct Load {
    requests: usize,
    req_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// One timed window: every request's latency, and how long the window lasted.
struct Sample {
    latencies: Vec<Duration>,
    elapsed: f64,
}

impl Load {
    /// Windows taken in turns with the other side's, as one figure.
    fn merge(samples: Vec<Sample>) -> Load {
        let elapsed: f64 = samples.iter().map(|s| s.elapsed).sum();
        let mut all: Vec<Duration> = samples.into_iter().flat_map(|s| s.latencies).collect();
        all.sort();
        Load {
            requests: all.len(),
            req_per_s: all.len() as f64 / elapsed,
            p50_ms: percentile(&all, 0.50),
            p99_ms: percentile(&all, 0.99),
        }
    }
}

/// `clients` keep-alive connections sending small GETs for `seconds`.
async fn load(target: &Target, config: &Arc<rustls::ClientConfig>, clients: usize, seconds: f64) -> Result<Sample> {
    let mut senders = Vec::new();
    for _ in 0..clients {
        let mut s = connect(target, config).await?;
        get(&mut s, "/hello").await?; // warm: handshakes and upstream connections
        senders.push(s);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    get(&mut s, "/hello").await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample { latencies, elapsed: start.elapsed().as_secs_f64() })
}

/// Direct and proxied load in `ROUNDS` alternating windows (`seconds` in all, each way), so a
/// slow spell of the machine weighs on both sides alike.
async fn compare(
    setup: &Setup,
    upstream: SocketAddr,
    proxy: &Path,
    clients: usize,
    seconds: f64,
) -> Result<(Load, Load)> {
    let (upstream, proxy) = (Target::Direct(upstream), Target::Relay(proxy.to_owned()));
    let window = seconds / ROUNDS as f64;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct.push(load(&upstream, &setup.direct_client, clients, window).await?);
        proxied.push(load(&proxy, &setup.proxy_client, clients, window).await?);
    }
    Ok((Load::merge(direct), Load::merge(proxied)))
}

/// Median MB/s of `runs` 10 MiB downloads on one keep-alive connection.
async fn throughput(target: &Target, config: &Arc<rustls::ClientConfig>, runs: usize) -> Result<f64> {
    let mut sender = connect(target, config).await?;
    get(&mut sender, "/big").await?; // warm
    let mut rates = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let len = get(&mut sender, "/big").await?;
        if len != BIG {
            bail!("/big returned {len} bytes");
        }
        rates.push(BIG as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    Ok(rates[rates.len() / 2])
}

/// What one placement measured: small GETs and the 10 MiB body, each way.
struct Placement {
    direct: Load,
    proxied: Load,
    /// One client at a time: what a single request's latency is when nothing queues.
    lone_direct: Load,
    lone_proxied: Load,
    direct_mb: f64,
    proxied_mb: f64,
}

impl Placement {
    fn ratio(&self) -> f64 {
        self.proxied.req_per_s / self.direct.req_per_s
    }
    /// Added p50 latency with one client: under load, p50 is mostly queueing behind the other
    /// clients on a saturated CPU, so only the lone client's figure isolates the proxy's own delay.
    fn added_p50(&self) -> f64 {
        self.lone_proxied.p50_ms - self.lone_direct.p50_ms
    }
    fn print(&self, title: &str, clients: usize, seconds: f64) {
        println!("{title}");
        println!("  small GETs ({clients} clients, {seconds} s)      req/s    p50 ms   p99 ms   requests");
        for (name, l) in [("direct", &self.direct), ("proxy", &self.proxied)] {
            println!("    {name:<31} {:>9.0} {:>9.3} {:>8.3} {:>10}", l.req_per_s, l.p50_ms, l.p99_ms, l.requests);
        }
        println!(
            "    ratio proxy/direct req/s: {:.2}, added p50: {:.3} ms",
            self.ratio(),
            self.proxied.p50_ms - self.direct.p50_ms
        );
        println!("  one client at a time (latency without queueing)");
        for (name, l) in [("direct", &self.lone_direct), ("proxy", &self.lone_proxied)] {
            println!("    {name:<31} {:>9.0} {:>9.3} {:>8.3} {:>10}", l.req_per_s, l.p50_ms, l.p99_ms, l.requests);
        }
        println!("    added p50: {:.3} ms", self.added_p50());
        println!(
            "  10 MiB body: direct {:.0} MB/s, proxy {:.0} MB/s, ratio {:.2}",
            self.direct_mb,
            self.proxied_mb,
            self.proxied_mb / self.direct_mb
        );
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "small_get": {
                "direct": self.direct.json(),
                "proxy": self.proxied.json(),
                "ratio_req_per_s": self.ratio(),
                "added_p50_ms": self.proxied.p50_ms - self.direct.p50_ms,
            },
            "one_client": {
                "direct": self.lone_direct.json(),
                "proxy": self.lone_proxied.json(),
                "added_p50_ms": self.added_p50(),
            },
            "body_10mib": {
                "direct_mb_s": self.direct_mb,
                "proxy_mb_s": self.proxied_mb,
                "ratio": self.proxied_mb / self.direct_mb,
            },
        })
    }
}

impl Load {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"requests": self.requests, "req_per_s": self.req_per_s, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms})
    }
}

/// What both placements share: the upstream's and the proxy's TLS material and policy.
struct Setup {
    dir: tempfile::TempDir,
    upstream_config: Arc<rustls::ServerConfig>,
    extra_ca: PathBuf,
    ca: Arc<CertAuthority>,
    policy: Arc<Policy>,
    direct_client: Arc<rustls::ClientConfig>,
    proxy_client: Arc<rustls::ClientConfig>,
}

impl Setup {
    fn new() -> Result<Setup> {
        let dir = tempfile::tempdir()?;
        let (upstream_ca, upstream_config) = upstream_tls()?;
        let extra_ca = dir.path().join("upstream-ca.pem");
        std::fs::write(&extra_ca, &upstream_ca)?;
        let web = WebPolicy {
            allow_read: false,
            allow_write: false,
            custom_allow: vec![],
            custom_block: vec![],
            http_upstream_ports: vec![80],
            services: BTreeMap::from([(
                "bench".to_owned(),
                BTreeMap::from([(
                    "upstream".to_owned(),
                    Service {
                        name: "bench".to_owned(),
                        enabled: true,
                        domains: vec![HOST.to_owned()],
                        allow_get: true,
                        allow_post: true,
                    },
                )]),
            )]),
            providers: BTreeMap::new(),
            package_networks: BTreeMap::new(),
        };
        let ca = Arc::new(CertAuthority::load_or_create(&dir.path().join("ca"))?);
        let policy = Arc::new(Policy::from_web(&web)?);
        let upstream_ca_der = CertificateDer::from_pem_slice(upstream_ca.as_bytes())?;
        Ok(Setup {
            upstream_config,
            extra_ca,
            direct_client: client_config(upstream_ca_der)?,
            proxy_client: client_config(ca.ca_der().clone())?,
            ca,
            policy,
            dir,
        })
    }
}

/// Small GETs (`clients` at once, then one), and the 10 MiB body, direct to `upstream` and
/// through `proxy`.
async fn measure(
    setup: &Setup,
    upstream: SocketAddr,
    proxy: &Path,
    clients: usize,
    seconds: f64,
    runs: usize,
) -> Result<Placement> {
    let (direct, proxied) = compare(setup, upstream, proxy, clients, seconds).await?;
    let (lone_direct, lone_proxied) = compare(setup, upstream, proxy, 1, seconds).await?;
    Ok(Placement {
        direct,
        proxied,
        lone_direct,
        lone_proxied,
        direct_mb: throughput(&Target::Direct(upstream), &setup.direct_client, runs).await?,
        proxied_mb: throughput(&Target::Relay(proxy.to_owned()), &setup.proxy_client, runs).await?,
    })
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(Into::into)
}

/// A runtime with one worker thread, pinned to `cpu`.
fn pinned_runtime(cpu: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            if let Err(e) = pin_current_thread(cpu) {
                eprintln!("bench proxy: cannot pin a runtime thread to CPU {cpu}: {e}");
            }
        })
        .enable_all()
        .build()?)
}

/// Client and upstream on `world_cpu`, the egress service (its runtime threads and its session
/// log's writer) on `proxy_cpu`.
fn isolated(
    setup: &Setup,
    world_cpu: usize,
    proxy_cpu: usize,
    clients: usize,
    seconds: f64,
    runs: usize,
) -> Result<(Placement, u64)> {
    let world = pinned_runtime(world_cpu)?;
    let upstream = world.block_on(spawn_upstream(setup.upstream_config.clone(), Duration::ZERO))?;
    let dir = setup.dir.path().join("isolated");
    let service = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread(proxy_cpu).with_context(|| format!("pinning to CPU {proxy_cpu}"))?;
                EgressService::start(setup, &dir, upstream)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("starting the egress service panicked"))?
    })?;
    // This thread drives the clients' futures too; it belongs with them. Restored afterwards.
    let before = rustix::thread::sched_getaffinity(None)?;
    pin_current_thread(world_cpu).with_context(|| format!("pinning to CPU {world_cpu}"))?;
    let result = world.block_on(measure(setup, upstream, &service.relay, clients, seconds, runs));
    rustix::thread::sched_setaffinity(None, &before)?;
    world.shutdown_background();
    let logged = service.stop()?;
    Ok((result?, logged))
}

/// Everything over every CPU: direct and proxied load, then the slow upstream.
fn shared(setup: &Setup, clients: usize, seconds: f64, runs: usize) -> Result<(Placement, Load, Load, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let upstream = rt.block_on(spawn_upstream(setup.upstream_config.clone(), Duration::ZERO))?;
    let slow_upstream = rt.block_on(spawn_upstream(setup.upstream_config.clone(), SLOW_UPSTREAM))?;
    let service = EgressService::start(setup, &setup.dir.path().join("shared"), upstream)?;
    let slow_service = EgressService::start(setup, &setup.dir.path().join("shared-slow"), slow_upstream)?;
    let result = rt.block_on(async {
        let placement = measure(setup, upstream, &service.relay, clients, seconds, runs).await?;
        let slow_ms = SLOW_UPSTREAM.as_secs_f64() * 1e3;
        eprintln!("bench proxy: shared, again with an upstream that answers after {slow_ms} ms");
        let (slow_direct, slow_proxied) = compare(setup, slow_upstream, &slow_service.relay, clients, seconds).await?;
        anyhow::Ok((placement, slow_direct, slow_proxied))
    });
    rt.shutdown_background();
    let logged = service.stop()? + slow_service.stop()?;
    let (placement, slow_direct, slow_proxied) = result?;
    Ok((placement, slow_direct, slow_proxied, logged))
}

/// Every proxied request (timed ones at least; warm-ups and the 10 MiB runs add to them) must be
/// in the session log: the figures include logging, as in `capsem run`.
fn check_logged(placement: &str, p: &Placement, logged: u64) -> Result<()> {
    let timed = (p.proxied.requests + p.lone_proxied.requests) as u64;
    if logged < timed {
        bail!("{placement}: the session log holds {logged} requests, fewer than the {timed} timed ones");
    }
    eprintln!("bench proxy: {placement}: session log recorded {logged} requests ({timed} timed)");
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut clients, mut seconds, mut runs) = (16usize, 5.0f64, 5usize);
    let mut out = PathBuf::from("target/bench/proxy.json");
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--clients" => clients = val()?.parse().context("--clients")?,
            "--seconds" => seconds = val()?.parse().context("--seconds")?,
            "--runs" => runs = val()?.parse().context("--runs")?,
            "--out" => out = PathBuf::from(val()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    if clients == 0 || runs == 0 || seconds <= 0.0 {
        bail!("--clients, --runs and --seconds must be positive");
    }
    let setup = Setup::new()?;
    let cpus = allowed_cpus();
    eprintln!("bench proxy: {clients} keep-alive clients, {seconds} s each way, {runs} x 10 MiB, CPUs {cpus:?}");

    let isolated = match cpus.as_slice() {
        [world, proxy, ..] => {
            eprintln!("bench proxy: isolated (client + upstream on CPU {world}, proxy on CPU {proxy})");
            let (placement, logged) = isolated(&setup, *world, *proxy, clients, seconds, runs)?;
            check_logged("isolated", &placement, logged)?;
            Some((*world, *proxy, placement))
        }
        _ => {
            eprintln!("bench proxy: only one CPU: no isolated placement; the targets are judged on the shared one");
            None
        }
    };
    eprintln!("bench proxy: shared (everything on CPUs {cpus:?})");
    let (shared, slow_direct, slow_proxied, logged) = shared(&setup, clients, seconds, runs)?;
    check_logged("shared", &shared, logged.saturating_sub(slow_proxied.requests as u64))?;

    let yes_no = |b: bool| if b { "met" } else { "NOT met" };
    if let Some((world, proxy, p)) = &isolated {
        p.print(
            &format!("isolated: client + upstream on CPU {world}, proxy alone on CPU {proxy} (as deployed; judged)"),
            clients,
            seconds,
        );
    }
    shared.print(&format!("shared: client, proxy and upstream on CPUs {cpus:?} (informational)"), clients, seconds);
    let slow_ms = SLOW_UPSTREAM.as_secs_f64() * 1e3;
    println!("  small GETs, upstream answering after {slow_ms} ms");
    for (name, l) in [("direct", &slow_direct), ("proxy", &slow_proxied)] {
        println!("    {name:<31} {:>9.0} {:>9.3} {:>8.3} {:>10}", l.req_per_s, l.p50_ms, l.p99_ms, l.requests);
    }
    println!(
        "    ratio proxy/direct req/s: {:.2}, added p50: {:.3} ms",
        slow_proxied.req_per_s / slow_direct.req_per_s,
        slow_proxied.p50_ms - slow_direct.p50_ms
    );
    let judged = isolated.as_ref().map_or(&shared, |(_, _, p)| p);
    let (rate_met, latency_met) = (judged.ratio() >= 0.8, judged.added_p50() <= 0.5);
    let placement = if isolated.is_some() { "isolated" } else { "shared" };
    println!(
        "targets ({placement}): proxy/direct req/s {:.2} (>= 0.80: {}), added p50 with one client {:.3} ms (<= 0.5 ms: {})",
        judged.ratio(),
        yes_no(rate_met),
        judged.added_p50(),
        yes_no(latency_met)
    );

    let json = serde_json::json!({
        "bench": "proxy",
        "cpus": cpus,
        "clients": clients,
        "seconds": seconds,
        "runs": runs,
        "isolated": isolated.as_ref().map(|(world, proxy, p)| {
            let mut v = p.json();
            v["world_cpu"] = (*world).into();
            v["proxy_cpu"] = (*proxy).into();
            v
        }),
        "shared": shared.json(),
        "shared_slow_upstream": {
            "upstream_delay_ms": slow_ms,
            "direct": slow_direct.json(),
            "proxy": slow_proxied.json(),
            "ratio_req_per_s": slow_proxied.req_per_s / slow_direct.req_per_s,
            "added_p50_ms": slow_proxied.p50_ms - slow_direct.p50_ms,
        },
        "targets": {
            "judged_on": placement,
            "req_per_s_ratio_ge_0_8": rate_met,
            "added_p50_le_0_5_ms": latency_met,
        },
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench proxy: wrote {}", out.display());
    Ok(())
}
