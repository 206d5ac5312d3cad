//! `cargo xtask bench proxy`: what the egress proxy costs, against the same HTTPS upstream
//! reached directly, in the same run, on loopback.
//!
//! 1. Small requests: `--clients` concurrent keep-alive HTTP/1.1-over-TLS clients send
//!    `GET /hello` for `--seconds` each way (direct to the upstream, then through the proxy with
//!    the SNI a guest would send); req/s and p50/p99 latency.
//!    Then the same against an upstream that answers after 1 ms (informational: what the
//!    proxy's overhead looks like next to a server that does some work).
//! 2. Throughput: a 10 MiB response body, `--runs` times each way; median MB/s.
//!
//! Prints both, the ratios and whether the targets (≥ 0.8× req/s, ≤ 0.5 ms added p50) are met
//! (not asserted: clients, proxy and upstream share this machine's cores, so on a 2-core machine
//! the proxy's extra TLS termination competes with the load generator), and writes JSON to
//! `--out` (default `target/bench/proxy.json`).
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
use capsem::egress::proxy::{ProxyConfig, UpstreamConfig, serve_connection};
use capsem::egress::{ConnKind, NullSink};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "bench.test";
const BIG: usize = 10 * 1024 * 1024;
/// Service time of the second upstream (a nearby real server rather than a loopback echo).
const SLOW_UPSTREAM: Duration = Duration::from_millis(1);

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

/// The proxy on a loopback port (redirected 443), reaching `HOST` at `upstream`.
async fn spawn_proxy(
    policy: &Arc<Policy>,
    ca: &Arc<CertAuthority>,
    extra_ca: &Path,
    upstream: SocketAddr,
) -> Result<SocketAddr> {
    let cfg = Arc::new(ProxyConfig {
        policy: policy.clone(),
        ca: ca.clone(),
        upstream: UpstreamConfig {
            extra_ca: Some(extra_ca.to_owned()),
            resolve_overrides: BTreeMap::from([(HOST.to_owned(), upstream)]),
            connect_timeout: Duration::from_secs(5),
            resolver: None,
        },
        sink: Arc::new(NullSink),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(tcp, ConnKind::Tls, 443, cfg.clone()));
        }
    });
    Ok(addr)
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

async fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(ServerName::try_from(HOST)?, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
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

/// `clients` keep-alive connections sending small GETs for `seconds`.
async fn load(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, clients: usize, seconds: f64) -> Result<Load> {
    let mut senders = Vec::new();
    for _ in 0..clients {
        let mut s = connect(addr, config).await?;
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
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Ok(Load {
        requests: all.len(),
        req_per_s: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

/// Median MB/s of `runs` 10 MiB downloads on one keep-alive connection.
async fn throughput(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, runs: usize) -> Result<f64> {
    let mut sender = connect(addr, config).await?;
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
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(clients, seconds, runs, out))
}

async fn run(clients: usize, seconds: f64, runs: usize, out: PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (upstream_ca, upstream_config) = upstream_tls()?;
    let extra_ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&extra_ca, &upstream_ca)?;
    let upstream_addr = spawn_upstream(upstream_config.clone(), Duration::ZERO).await?;
    let slow_upstream_addr = spawn_upstream(upstream_config, SLOW_UPSTREAM).await?;

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
    let proxy_addr = spawn_proxy(&policy, &ca, &extra_ca, upstream_addr).await?;
    let slow_proxy_addr = spawn_proxy(&policy, &ca, &extra_ca, slow_upstream_addr).await?;
    let upstream_ca_der = CertificateDer::from_pem_slice(upstream_ca.as_bytes())?;
    let direct_client = client_config(upstream_ca_der)?;
    let proxy_client = client_config(ca.ca_der().clone())?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("bench proxy: {clients} keep-alive clients, {seconds} s each way, {cores} cores");
    let direct = load(upstream_addr, &direct_client, clients, seconds).await?;
    let proxied = load(proxy_addr, &proxy_client, clients, seconds).await?;
    let slow_ms = SLOW_UPSTREAM.as_secs_f64() * 1e3;
    eprintln!("bench proxy: again with an upstream that answers after {slow_ms} ms");
    let slow_direct = load(slow_upstream_addr, &direct_client, clients, seconds).await?;
    let slow_proxied = load(slow_proxy_addr, &proxy_client, clients, seconds).await?;
    eprintln!("bench proxy: 10 MiB x {runs} each way");
    let direct_mb = throughput(upstream_addr, &direct_client, runs).await?;
    let proxied_mb = throughput(proxy_addr, &proxy_client, runs).await?;

    let ratio = proxied.req_per_s / direct.req_per_s;
    let added_p50 = proxied.p50_ms - direct.p50_ms;
    let (rate_met, latency_met) = (ratio >= 0.8, added_p50 <= 0.5);
    let yes_no = |b: bool| if b { "met" } else { "NOT met" };
    println!("small GETs ({clients} clients, {seconds} s)   req/s      p50 ms   p99 ms   requests");
    for (name, l) in [("direct", &direct), ("proxy", &proxied)] {
        println!("  {name:<36} {:>9.0} {:>9.3} {:>8.3} {:>10}", l.req_per_s, l.p50_ms, l.p99_ms, l.requests);
    }
    println!("  ratio proxy/direct req/s: {ratio:.2}  (target >= 0.80: {})", yes_no(rate_met));
    println!("  added p50: {added_p50:.3} ms  (target <= 0.5 ms: {})", yes_no(latency_met));
    println!("small GETs, upstream answering after {slow_ms} ms (informational; targets judged above)");
    for (name, l) in [("direct", &slow_direct), ("proxy", &slow_proxied)] {
        println!("  {name:<36} {:>9.0} {:>9.3} {:>8.3} {:>10}", l.req_per_s, l.p50_ms, l.p99_ms, l.requests);
    }
    println!(
        "  ratio proxy/direct req/s: {:.2}, added p50: {:.3} ms",
        slow_proxied.req_per_s / slow_direct.req_per_s,
        slow_proxied.p50_ms - slow_direct.p50_ms
    );
    println!(
        "10 MiB body: direct {direct_mb:.0} MB/s, proxy {proxied_mb:.0} MB/s, ratio {:.2}",
        proxied_mb / direct_mb
    );

    let load_json = |l: &Load| serde_json::json!({"requests": l.requests, "req_per_s": l.req_per_s, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms});
    let json = serde_json::json!({
        "bench": "proxy",
        "cores": cores,
        "clients": clients,
        "seconds": seconds,
        "small_get": {
            "direct": load_json(&direct),
            "proxy": load_json(&proxied),
            "ratio_req_per_s": ratio,
            "added_p50_ms": added_p50,
        },
        "small_get_slow_upstream": {
            "upstream_delay_ms": slow_ms,
            "direct": load_json(&slow_direct),
            "proxy": load_json(&slow_proxied),
            "ratio_req_per_s": slow_proxied.req_per_s / slow_direct.req_per_s,
            "added_p50_ms": slow_proxied.p50_ms - slow_direct.p50_ms,
        },
        "body_10mib": {"runs": runs, "direct_mb_s": direct_mb, "proxy_mb_s": proxied_mb, "ratio": proxied_mb / direct_mb},
        "targets": {"req_per_s_ratio_ge_0_8": rate_met, "added_p50_le_0_5_ms": latency_met},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench proxy: wrote {}", out.display());
    Ok(())
}
