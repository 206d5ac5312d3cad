//! The egress proxy over real sockets on 127.0.0.1: a real HTTPS upstream (hyper + rustls, its
//! own test CA), the proxy serving each accepted connection with `serve_connection`, and real
//! rustls/hyper clients (HTTP/1.1 and HTTP/2) that trust the proxy's CA and send the SNI a guest
//! would. No network: test names reach the upstream through `resolve_overrides`, and an injected
//! resolver plays DNS for the address checks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsem::config::DomainPattern;
use capsem::config::WebPolicy;
use capsem::config::defaults::Service;
use capsem::egress::ca::CertAuthority;
use capsem::egress::policy::Policy;
use capsem::egress::proxy::{ProxyConfig, SNI_HOST_MISMATCH, UpstreamConfig, serve_connection};
use capsem::egress::{ConnKind, DnsRecord, EventSink, RequestRecord};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 10 * 1024 * 1024;
/// The plain-HTTP port the policy intercepts in these tests.
const HTTP_PORT: u16 = 8080;

type ClientBody = BoxBody<Bytes, Infallible>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).boxed()
}

/// Byte `i` of the `/big` body.
fn big_byte(i: usize) -> u8 {
    (i % 251) as u8
}

// ---------------------------------------------------------------------------------------------
// Upstream: a real HTTPS (and plain HTTP) server with its own CA.

/// A body of `len` bytes in 64 KiB chunks, generated as it is sent.
struct Generated {
    sent: usize,
    len: usize,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(64 * 1024);
        let chunk: Vec<u8> = (self.sent..self.sent + n).map(big_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.len - self.sent) as u64)
    }
}

/// A body fed from a channel (chunks sent by a task).
struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Chan {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

type UpBody = BoxBody<Bytes, hyper::Error>;

fn up_text(status: u16, text: impl Into<Bytes>) -> Response<UpBody> {
    let mut r = Response::new(Full::new(text.into()).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn upstream_handler(mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    Ok(match req.uri().path() {
        "/ws" => {
            // A WebSocket endpoint: the handshake headers it was sent are answered in its 101
            // (so a test sees what arrived), then every byte is echoed back after a prefix.
            let seen = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let accept = format!(
                "accept-for-{} upgrade={} connection={}",
                seen("sec-websocket-key"),
                seen("upgrade"),
                seen("connection")
            );
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 || w.write_all(b"echo:").await.is_err() || w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            });
            let mut r = up_text(101, "");
            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert("connection", "Upgrade".parse().unwrap());
            r.headers_mut().insert("sec-websocket-accept", accept.parse().unwrap());
            r
        }
        "/hello" => up_text(200, "hello"),
        "/echo" => Response::new(req.into_body().boxed()),
        "/big" => Response::new(Generated { sent: 0, len: BIG }.map_err(|never| match never {}).boxed()),
        "/drip" => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first")).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            Response::new(Chan(rx).map_err(|never| match never {}).boxed())
        }
        "/headers" => {
            let mut names: Vec<String> =
                req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
            names.sort();
            up_text(200, names.join("\n"))
        }
        "/redirect" => {
            let mut r = up_text(302, "");
            r.headers_mut().insert("location", "https://elsewhere.test/".parse().unwrap());
            r
        }
        _ => up_text(404, "not found"),
    })
}

struct TestCa {
    ca_pem: String,
    server_config: Arc<rustls::ServerConfig>,
}

/// A CA of its own and a leaf for every upstream test name.
fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "upstream test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let names = ["allowed.test", "readonly.test", "*.wild.test", "plain.test"].map(String::from).to_vec();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestCa { ca_pem: ca.pem(), server_config: Arc::new(server_config) }
}

/// Serves the upstream on a loopback port, over TLS when `tls` is given; counts connections.
async fn spawn_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let service = hyper::service::service_fn(upstream_handler);
                let server = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else { return };
                        let _ = server.serve_connection(TokioIo::new(stream), service).with_upgrades().await;
                    }
                    None => {
                        let _ = server.serve_connection(TokioIo::new(tcp), service).with_upgrades().await;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

// ---------------------------------------------------------------------------------------------
// The proxy and its records.

#[derive(Debug, Default)]
struct MemorySink(Mutex<Vec<RequestRecord>>);

impl EventSink for MemorySink {
    fn request(&self, record: RequestRecord) {
        self.0.lock().unwrap().push(record);
    }
    fn dns(&self, _: DnsRecord) {}
}

impl MemorySink {
    /// The first record matching `pred`, waiting up to 5 s (records of streamed responses are
    /// written when the body ends).
    async fn wait(&self, what: &str, pred: impl Fn(&RequestRecord) -> bool) -> RequestRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.0.lock().unwrap().iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(Instant::now() < deadline, "no record {what}; records: {:#?}", self.0.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn service(domains: &[&str], get: bool, post: bool) -> Service {
    Service {
        name: domains[0].to_owned(),
        enabled: true,
        domains: domains.iter().map(|d| d.to_string()).collect(),
        allow_get: get,
        allow_post: post,
    }
}

/// GET+POST on `allowed.test` and `*.wild.test` (but `blocked.wild.test` is blocked), GET only
/// on `readonly.test`, and names that resolve to forbidden addresses (allowed by the policy: the
/// address check must stop them).
fn test_policy() -> Policy {
    let mut group = BTreeMap::new();
    group.insert("allowed".to_owned(), service(&["allowed.test", "*.wild.test", "plain.test"], true, true));
    group.insert("readonly".to_owned(), service(&["readonly.test"], true, false));
    group.insert(
        "internal".to_owned(),
        service(&["loopback.test", "private.test", "metadata.test", "mixed.test", "nowhere.test"], true, true),
    );
    let web = WebPolicy {
        allow_read: false,
        allow_write: false,
        custom_allow: vec![],
        custom_block: vec![DomainPattern::parse("blocked.wild.test").unwrap()],
        http_upstream_ports: vec![HTTP_PORT],
        services: BTreeMap::from([("test".to_owned(), group)]),
        providers: BTreeMap::new(),
        package_networks: BTreeMap::new(),
    };
    Policy::from_web(&web).unwrap()
}

fn test_resolver(host: &str) -> Vec<IpAddr> {
    let ips: &[&str] = match host {
        "loopback.test" => &["127.0.0.1"],
        "private.test" => &["10.0.0.1"],
        "metadata.test" => &["169.254.169.254"],
        "mixed.test" => &["93.184.216.34", "127.0.0.1"],
        _ => &[],
    };
    ips.iter().map(|ip| ip.parse().unwrap()).collect()
}

struct Harness {
    /// The proxy for redirected port 443 (TLS).
    tls: SocketAddr,
    /// The proxy for redirected plain-HTTP port 8080.
    http: SocketAddr,
    /// The proxy for a port the policy does not intercept (9999), plain HTTP.
    http_other_port: SocketAddr,
    /// The proxy for TLS redirected from port 8443 (refused).
    tls_other_port: SocketAddr,
    sink: Arc<MemorySink>,
    /// Connections the HTTPS upstream accepted.
    upstream_connections: Arc<AtomicUsize>,
    client_h1: Arc<rustls::ClientConfig>,
    client_h2: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

async fn spawn_proxy(cfg: Arc<ProxyConfig>, kind: ConnKind, orig_port: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(tcp, kind, orig_port, cfg.clone()));
        }
    });
    addr
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let test_ca = test_ca();
        let extra_ca = dir.path().join("upstream-ca.pem");
        std::fs::write(&extra_ca, &test_ca.ca_pem).unwrap();
        let (upstream_tls, upstream_connections) = spawn_upstream(Some(test_ca.server_config.clone())).await;
        let (upstream_plain, _) = spawn_upstream(None).await;
        let mut resolve_overrides = BTreeMap::new();
        for name in ["allowed.test", "readonly.test", "a.wild.test", "blocked.wild.test"] {
            resolve_overrides.insert(name.to_owned(), upstream_tls);
        }
        resolve_overrides.insert("plain.test".to_owned(), upstream_plain);
        let ca = Arc::new(CertAuthority::load_or_create(&dir.path().join("ca")).unwrap());
        let sink = Arc::new(MemorySink::default());
        let cfg = Arc::new(ProxyConfig {
            policy: Arc::new(test_policy()),
            ca: ca.clone(),
            upstream: UpstreamConfig {
                extra_ca: Some(extra_ca),
                resolve_overrides,
                connect_timeout: Duration::from_secs(5),
                resolver: Some(Arc::new(test_resolver)),
            },
            sink: sink.clone(),
        });
        let client = |alpn: &[u8]| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca.ca_der().to_vec())).unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        Harness {
            tls: spawn_proxy(cfg.clone(), ConnKind::Tls, 443).await,
            http: spawn_proxy(cfg.clone(), ConnKind::Http, HTTP_PORT).await,
            http_other_port: spawn_proxy(cfg.clone(), ConnKind::Http, 9999).await,
            tls_other_port: spawn_proxy(cfg.clone(), ConnKind::Tls, 8443).await,
            sink,
            upstream_connections,
            client_h1: client(b"http/1.1"),
            client_h2: client(b"h2"),
            _dir: dir,
        }
    }

    async fn tls_stream(
        &self,
        proxy: SocketAddr,
        sni: &str,
        config: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await
    }

    /// An HTTP/1.1 client connection through the proxy's TLS side, with `sni`.
    async fn h1(&self, sni: &str) -> hyper::client::conn::http1::SendRequest<ClientBody> {
        self.h1_to(self.tls, sni).await
    }

    async fn h1_to(&self, proxy: SocketAddr, sni: &str) -> hyper::client::conn::http1::SendRequest<ClientBody> {
        let stream = self.tls_stream(proxy, sni, &self.client_h1).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn h2(&self, sni: &str) -> hyper::client::conn::http2::SendRequest<ClientBody> {
        let stream = self.tls_stream(self.tls, sni, &self.client_h2).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    /// One HTTPS request through the proxy (HTTP/1.1): SNI `sni`, `Host: host`.
    async fn https(&self, sni: &str, host: &str, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let mut sender = self.h1(sni).await;
        let req = Request::builder().method(method).uri(path).header("host", host).body(full(body.to_owned())).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A raw exchange with a proxy port: writes `request`, reads until the proxy closes or 5 s.
    async fn raw(&self, proxy: SocketAddr, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_get_passes_and_is_recorded() {
    let h = Harness::start().await;
    let (status, body) = h.https("allowed.test", "allowed.test", "GET", "/hello?q=1", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let r = h.sink.wait("for GET /hello", |r| r.path == "/hello").await;
    assert_eq!((r.method.as_str(), r.host.as_str(), r.allowed, r.status), ("GET", "allowed.test", true, 200));
    assert_eq!(r.rule, "service test.allowed (GET)");
    assert_eq!((r.bytes_in, r.bytes_out), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_share_a_connection_and_post_bodies_are_echoed() {
    let h = Harness::start().await;
    let mut sender = h.h1("allowed.test").await;
    for i in 0..5 {
        let body = format!("ping {i}");
        sender.ready().await.unwrap();
        let req = Request::post("/echo").header("host", "Allowed.Test").body(full(body.clone())).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), body.as_bytes());
    }
    assert_eq!(h.upstream_connections.load(Ordering::SeqCst), 1, "one upstream connection, reused");
    let r = h.sink.wait("for POST /echo", |r| r.method == "POST").await;
    assert_eq!((r.allowed, r.status, r.bytes_in, r.bytes_out), (true, 200, 6, 6));
    assert_eq!(r.rule, "service test.allowed (POST)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_to_a_read_only_host_is_denied() {
    let h = Harness::start().await;
    let (status, body) = h.https("readonly.test", "readonly.test", "POST", "/echo", "secret").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("service test.readonly allows GET only"), "{body}");
    let (status, body) = h.https("readonly.test", "readonly.test", "GET", "/hello", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let r = h.sink.wait("for the denied POST", |r| r.method == "POST").await;
    assert_eq!((r.host.as_str(), r.allowed, r.status), ("readonly.test", false, 403));
    assert_eq!(r.rule, "service test.readonly allows GET only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_block_beats_the_wildcard_allow() {
    let h = Harness::start().await;
    let (status, body) = h.https("blocked.wild.test", "blocked.wild.test", "GET", "/hello", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("custom_block blocked.wild.test"), "{body}");
    let (status, body) = h.https("a.wild.test", "a.wild.test", "GET", "/hello", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let r = h.sink.wait("for blocked.wild.test", |r| r.host == "blocked.wild.test").await;
    assert_eq!((r.allowed, r.status, r.rule.as_str()), (false, 403, "custom_block blocked.wild.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_equal_sni() {
    let h = Harness::start().await;
    // Domain fronting: TLS to an allowed name, the request for another.
    let (status, body) = h.https("allowed.test", "readonly.test", "GET", "/hello", "").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(body.contains(SNI_HOST_MISMATCH), "{body}");
    let r = h.sink.wait("for the mismatch", |r| r.rule == SNI_HOST_MISMATCH).await;
    assert_eq!((r.host.as_str(), r.allowed, r.status), ("allowed.test", false, 421));
    // A port in Host is ignored; case too.
    let (status, _) = h.https("allowed.test", "ALLOWED.test:443", "GET", "/hello", "").await;
    assert_eq!(status, StatusCode::OK);
    // HTTP/2 :authority is checked the same way.
    let mut h2 = h.h2("allowed.test").await;
    let req = Request::get("https://readonly.test/hello").body(full("")).unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_destination_addresses_are_refused() {
    let h = Harness::start().await;
    for (name, ip) in [
        ("loopback.test", "127.0.0.1"),
        ("private.test", "10.0.0.1"),
        ("metadata.test", "169.254.169.254"),
        ("mixed.test", "127.0.0.1"),
    ] {
        let (status, body) = h.https(name, name, "GET", "/hello", "").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}");
        assert!(body.contains("destination address not allowed") && body.contains(ip), "{name}: {body}");
        let r = h.sink.wait(name, |r| r.host == name).await;
        assert!(!r.allowed && r.status == 502 && r.rule.starts_with("destination address not allowed"), "{r:?}");
    }
    // No address at all: an upstream failure (allowed by the policy, 502 with the reason).
    let (status, body) = h.https("nowhere.test", "nowhere.test", "GET", "/", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("nowhere.test has no address"), "{body}");
    let r = h.sink.wait("nowhere.test", |r| r.host == "nowhere.test").await;
    assert!(r.allowed && r.status == 502 && r.rule.contains("upstream failed"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_forwarded_with_the_same_checks() {
    let h = Harness::start().await;
    let ok = h.raw(h.http, b"GET /hello HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("hello"), "{ok}");
    let absolute =
        h.raw(h.http, b"GET http://plain.test/hello HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n").await;
    assert!(absolute.starts_with("HTTP/1.1 200") && absolute.ends_with("hello"), "{absolute}");
    let mismatch =
        h.raw(h.http, b"GET http://plain.test/hello HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n").await;
    assert!(mismatch.starts_with("HTTP/1.1 400"), "{mismatch}");
    let ip = h.raw(h.http, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n").await;
    assert!(ip.starts_with("HTTP/1.1 403") && ip.contains("IP-literal"), "{ip}");
    let ip6 = h.raw(h.http, b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n").await;
    assert!(ip6.starts_with("HTTP/1.1 403") && ip6.contains("IP-literal"), "{ip6}");
    let unknown = h.raw(h.http, b"GET / HTTP/1.1\r\nHost: unknown.test\r\nConnection: close\r\n\r\n").await;
    assert!(unknown.starts_with("HTTP/1.1 403") && unknown.contains("default deny"), "{unknown}");
    let port = h.raw(h.http_other_port, b"GET /hello HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n").await;
    assert!(port.starts_with("HTTP/1.1 403") && port.contains("port 9999"), "{port}");
    let r = h.sink.wait("for plain.test", |r| r.host == "plain.test" && r.status == 200).await;
    assert_eq!((r.rule.as_str(), r.bytes_out), ("service test.allowed (GET)", 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_other_ports_are_refused() {
    let h = Harness::start().await;
    let plain = h.raw(h.http, b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 405"), "{plain}");
    let r = h.sink.wait("for CONNECT", |r| r.method == "CONNECT").await;
    assert_eq!((r.allowed, r.status, r.rule.as_str()), (false, 405, "CONNECT is not allowed"));
    // TLS redirected from another port than 443.
    let mut sender = h.h1_to(h.tls_other_port, "allowed.test").await;
    let req = Request::get("/hello").header("host", "allowed.test").body(full("")).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    h.sink.wait("for port 8443", |r| r.rule.contains("port 8443")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_is_refused_and_recorded() {
    let h = Harness::start().await;
    let tcp = TcpStream::connect(h.tls).await.unwrap();
    // An IP-address server name: rustls sends no SNI.
    let name = ServerName::IpAddress("127.0.0.1".parse::<IpAddr>().unwrap().into());
    let result = tokio_rustls::TlsConnector::from(h.client_h1.clone()).connect(name, tcp).await;
    assert!(result.is_err());
    let r = h.sink.wait("for no SNI", |r| r.rule.contains("without SNI")).await;
    assert!(!r.allowed && r.status == 0 && r.method.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_work_with_concurrent_streams() {
    let h = Harness::start().await;
    let h2 = h.h2("allowed.test").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let req = if i % 2 == 0 {
                Request::get("https://allowed.test/hello").body(full("")).unwrap()
            } else {
                Request::post("https://allowed.test/echo").body(full(format!("stream {i}"))).unwrap()
            };
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let want = if i % 2 == 0 { "hello".to_owned() } else { format!("stream {i}") };
            assert_eq!(body, want.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut h2b = h2.clone();
    let denied = Request::post("https://readonly.test/echo").body(full("x")).unwrap();
    // Different :authority than the SNI → 421, on the same h2 connection which stays usable.
    assert_eq!(h2b.send_request(denied).await.unwrap().status(), StatusCode::MISDIRECTED_REQUEST);
    let again = Request::get("https://allowed.test/hello").body(full("")).unwrap();
    assert_eq!(h2b.send_request(again).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_streams_both_ways_intact() {
    let h = Harness::start().await;
    // Download.
    let mut sender = h.h1("allowed.test").await;
    let req = Request::get("/big").header("host", "allowed.test").body(full("")).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], BIG.to_string().as_str());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, &b)| b == big_byte(i)), "body corrupted");
    let r = h.sink.wait("for /big", |r| r.path == "/big").await;
    assert_eq!((r.status, r.bytes_out), (200, BIG as u64));
    // Upload 10 MiB over HTTP/2 (no content-length: streamed), echoed back.
    let mut h2 = h.h2("allowed.test").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for chunk in 0..BIG / (64 * 1024) {
            let data: Vec<u8> = (chunk * 64 * 1024..(chunk + 1) * 64 * 1024).map(big_byte).collect();
            tx.send(Bytes::from(data)).await.unwrap();
        }
    });
    let req = Request::post("https://allowed.test/echo").body(Chan(rx).boxed()).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, &b)| b == big_byte(i)), "echo corrupted");
    let r = h.sink.wait("for the upload", |r| r.method == "POST").await;
    assert_eq!((r.bytes_in, r.bytes_out), (BIG as u64, BIG as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_streamed_not_buffered() {
    let h = Harness::start().await;
    // Response: the first chunk arrives while the upstream still holds back the second (3 s).
    let mut sender = h.h1("allowed.test").await;
    let req = Request::get("/drip").header("host", "allowed.test").body(full("")).unwrap();
    let started = Instant::now();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    assert!(started.elapsed() < Duration::from_millis(1500), "first chunk took {:?}", started.elapsed());
    // Request: the echo of the first chunk comes back before the request body is finished.
    let mut sender = h.h1("allowed.test").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Bytes::from_static(b"one")).await.unwrap();
    let req = Request::post("/echo").header("host", "allowed.test").body(Chan(rx).boxed()).unwrap();
    let mut echo = sender.send_request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(3), echo.frame()).await.expect("echo of the first chunk");
    assert_eq!(&first.unwrap().unwrap().into_data().unwrap()[..], b"one");
    tx.send(Bytes::from_static(b"two")).await.unwrap();
    drop(tx);
    let rest = echo.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_redirects_passed_through() {
    let h = Harness::start().await;
    let mut sender = h.h1("allowed.test").await;
    let req = Request::get("/headers")
        .header("host", "allowed.test")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-end-to-end", "kept")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let seen = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(seen.contains("host: allowed.test") && seen.contains("x-end-to-end: kept"), "{seen}");
    assert!(!seen.contains("x-hop") && !seen.contains("proxy-authorization"), "{seen}");
    sender.ready().await.unwrap();
    let req = Request::get("/redirect").header("host", "allowed.test").body(full("")).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://elsewhere.test/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_stop_a_normal_one() {
    let h = Harness::start().await;
    // Slowloris over TLS: one header byte per second.
    let mut slow = h.tls_stream(h.tls, "allowed.test", &h.client_h1).await.unwrap();
    let slow_started = Instant::now();
    let slowloris = tokio::spawn(async move {
        for b in b"GET /hello HTTP/1.1\r\nHost: allowed.test\r\nX-Slow: ".iter().chain([b'a'; 64].iter()) {
            if slow.write_all(&[*b]).await.is_err() || slow.flush().await.is_err() {
                return slow_started.elapsed();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("the slow client was never cut off");
    });
    // Garbage instead of a ClientHello, and garbage instead of an HTTP request.
    let garbage_tls = h.raw(h.tls, &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let garbage_http = h.raw(h.http, b"\x00\x01\x02 NOT HTTP\r\n\r\n");
    // A 100 KiB header.
    let huge = async {
        let mut sender = h.h1("allowed.test").await;
        let req = Request::get("/hello")
            .header("host", "allowed.test")
            .header("x-huge", "a".repeat(100 * 1024))
            .body(full(""))
            .unwrap();
        sender.send_request(req).await.map(|r| r.status())
    };
    // Meanwhile, a normal client is answered promptly.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (status, body) = h.https("allowed.test", "allowed.test", "GET", "/hello", "").await;
        (status, body, started.elapsed())
    };
    let (garbage_tls, garbage_http, huge, (status, body, took)) = tokio::join!(garbage_tls, garbage_http, huge, normal);
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    assert!(took < Duration::from_secs(2), "normal request took {took:?}");
    // A TLS alert (or nothing), never an HTTP answer.
    assert!(garbage_tls.is_empty() || garbage_tls.starts_with('\u{15}'), "{garbage_tls:?}");
    assert!(garbage_http.starts_with("HTTP/1.1 400"), "{garbage_http}");
    // hyper answers 431 and closes; the client may see the reset first.
    if let Ok(status) = huge {
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    h.sink.wait("for the huge header", |r| r.status == 431).await;
    h.sink.wait("for the garbage ClientHello", |r| r.rule.starts_with("TLS ClientHello unreadable")).await;
    h.sink.wait("for the garbage request", |r| r.status == 400 && r.rule.starts_with("malformed request")).await;
    // The slow client is cut off after the 10 s header timeout, and the proxy still serves.
    let cut_after = slowloris.await.unwrap();
    assert!(cut_after >= Duration::from_secs(9) && cut_after < Duration::from_secs(14), "cut after {cut_after:?}");
    h.sink.wait("for the slow client", |r| r.rule.contains("not received within 10 s")).await;
    let (status, _) = h.https("allowed.test", "allowed.test", "GET", "/hello", "").await;
    assert_eq!(status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// WebSocket.

/// Sends a WebSocket handshake for `path` through the proxy's TLS side; returns the stream and
/// the answer's head.
async fn websocket_handshake(
    h: &Harness,
    sni: &str,
    path: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, String) {
    let mut stream = h.tls_stream(h.tls, sni, &h.client_h1).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.push(byte[0]);
    }
    (stream, String::from_utf8(answer).unwrap().to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_tunnelled_after_the_policy_and_recorded_with_their_bytes() {
    let h = Harness::start().await;
    let (mut ws, head) = websocket_handshake(&h, "allowed.test", "/ws").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    // Upstream got the guest's key and a clean Upgrade/Connection pair, and its answer came back.
    assert!(
        head.contains("sec-websocket-accept: accept-for-dghlihnhbxbszsbub25jzq== upgrade=websocket connection=upgrade"),
        "{head}"
    );
    // Bytes flow both ways through the tunnel, in order.
    for msg in ["ping-1", "ping-2 longer message"] {
        ws.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 5 + msg.len()];
        tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, format!("echo:{msg}").as_bytes());
    }
    // The guest closes; upstream closes its side too; the record carries the bytes each way.
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest)).await.unwrap();
    let r = h.sink.wait("for the websocket", |r| r.path == "/ws").await;
    assert_eq!((r.method.as_str(), r.host.as_str(), r.allowed, r.status), ("GET", "allowed.test", true, 101));
    assert_eq!(r.rule, "service test.allowed (POST) (websocket)");
    assert_eq!((r.bytes_in, r.bytes_out), (6 + 21, 5 + 6 + 5 + 21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_needs_writes_allowed_and_a_refused_upgrade_is_a_normal_answer() {
    let h = Harness::start().await;
    // GET-only host: a WebSocket could send anything, so it is refused before going upstream.
    let before = h.upstream_connections.load(Ordering::SeqCst);
    let (_, head) = websocket_handshake(&h, "readonly.test", "/ws").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let r = h.sink.wait("for the refused websocket", |r| r.host == "readonly.test").await;
    assert!(!r.allowed && r.rule.starts_with("websocket needs writes allowed: "), "{r:?}");
    assert_eq!(h.upstream_connections.load(Ordering::SeqCst), before, "nothing went upstream");

    // Upstream answers the handshake with a plain 200: passed through as it is, no tunnel.
    let (mut stream, head) = websocket_handshake(&h, "allowed.test", "/hello").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut body = [0u8; 5];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello");
    let r = h.sink.wait("for the refused upgrade", |r| r.path == "/hello").await;
    assert_eq!((r.status, r.bytes_out), (200, 5));

    // Another protocol in Upgrade (h2c) is not a WebSocket: the header is dropped, the request
    // is an ordinary one.
    let mut sender = h.h1("allowed.test").await;
    let req = Request::get("/headers")
        .header("host", "allowed.test")
        .header("upgrade", "h2c")
        .header("connection", "upgrade")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(!seen.contains("upgrade"), "{seen}");
}
