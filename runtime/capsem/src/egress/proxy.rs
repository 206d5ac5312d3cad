//! The host-side egress proxy: every TCP connection the guest opens to port 443 or to a plain-HTTP
//! port of the policy arrives here (through the relay) as a byte stream plus its original port,
//! and [`serve_connection`] serves it until it closes.
//!
//! - **TLS** (port 443): TLS is terminated with a leaf minted by the [`CertAuthority`] for the
//!   ClientHello's SNI (no SNI: closed). ALPN `h2` or `http/1.1`. Each request's `Host` /
//!   `:authority` must be the SNI (no domain fronting; else 421, rule `SNI/Host mismatch`).
//! - **Plain HTTP** (`orig_port` in the policy's `http_ports`): HTTP/1.1, absolute-form or
//!   origin-form with `Host`.
//! - Then, per request: CONNECT → 405; IP-literal hosts → 403 unless in `resolve_overrides`;
//!   [`Policy::decide`] (a panic denies: fail closed) → 403 naming the rule; allowed → forwarded
//!   over HTTP/1.1 (TLS upstream for TLS) to the host's public addresses only (see
//!   `proxy/upstream.rs`), both bodies streamed, hop-by-hop headers dropped, redirects passed through.
//! - WebSocket (HTTP/1.1 `GET` with `Upgrade: websocket`, `Connection: upgrade`): it carries data
//!   both ways, so the policy must allow the host for reads *and* writes; then the handshake goes
//!   to a fresh upstream connection and, when upstream answers `101`, the two upgraded streams are
//!   joined until either side closes, and recorded then with the bytes each way. Other upgrades
//!   (e.g. `h2c`) are dropped with the hop-by-hop headers. HTTP/2's extended CONNECT (RFC 8441)
//!   is not offered, so clients use HTTP/1.1 for WebSockets.
//! - Hardening: request heads over 64 KiB → 431; malformed → 400 (hyper); a head not complete
//!   within 10 s (slowloris), or an idle keep-alive connection after 10 s, is closed; TLS
//!   handshakes time out after 10 s. Each connection runs in its own task: nothing one guest
//!   connection does can stop another, and a panic ends only its own connection.
//!
//! Every request is recorded through [`EventSink::request`] (see `proxy/request.rs`); so are refusals
//! that never became a request (no SNI, failed handshake, malformed or oversized head, header
//! timeout), with an empty method and `status` 0 when no HTTP answer was sent. Nothing is
//! printed: the proxy runs beside the interactive shell, and the session log is the record.

mod body;
mod request;
mod tunnel;
mod upstream;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};

use self::request::{ConnCtx, normalize_sni};
pub use self::request::{POLICY_FAILED, SNI_HOST_MISMATCH};
use self::upstream::Pool;
pub(crate) use self::upstream::read_extra_ca;
use super::ca::CertAuthority;
use super::policy::Policy;
use super::{ConnKind, EventSink, RequestRecord};

/// How long a guest may take to complete a TLS handshake, or to send a request head.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) accepted from the guest.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A name → addresses resolver (tests inject one; `None` uses the system resolver).
pub type Resolver = Arc<dyn Fn(&str) -> Vec<IpAddr> + Send + Sync>;

/// Everything the proxy needs; shared by all connections of a session.
#[derive(Debug)]
pub struct ProxyConfig {
    pub policy: Arc<Policy>,
    pub ca: Arc<CertAuthority>,
    pub upstream: UpstreamConfig,
    pub sink: Arc<dyn EventSink>,
}

/// How the proxy reaches upstream servers.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// A PEM file of CA certificates trusted in addition to the host's roots.
    pub extra_ca: Option<PathBuf>,
    /// Host → address, used instead of resolving: the ONLY way to reach loopback or private
    /// addresses (a local mock server, tests). Keys are host names (or IP literals), matched
    /// case-insensitively; the address's port replaces the request's.
    pub resolve_overrides: BTreeMap<String, SocketAddr>,
    /// Limit for resolving, connecting and the upstream TLS handshake together.
    pub connect_timeout: Duration,
    /// Resolver used instead of the system's (tests); its answers are address-checked too.
    pub resolver: Option<Resolver>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            extra_ca: None,
            resolve_overrides: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            resolver: None,
        }
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("extra_ca", &self.extra_ca)
            .field("resolve_overrides", &self.resolve_overrides)
            .field("connect_timeout", &self.connect_timeout)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Serves one redirected guest connection until it closes. Never panics and returns nothing:
/// every failure is answered (HTTP status) or closes this connection, and is recorded.
pub async fn serve_connection<S>(stream: S, kind: ConnKind, orig_port: u16, cfg: Arc<ProxyConfig>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sink = cfg.sink.clone();
    // Own task: a panic anywhere below ends this connection only, and is recorded.
    let task = tokio::spawn(async move {
        match kind {
            ConnKind::Tls => serve_tls(stream, orig_port, cfg).await,
            ConnKind::Http => serve_http(stream, orig_port, cfg).await,
        }
    });
    let abort = AbortOnDrop(task.abort_handle());
    if let Err(e) = task.await
        && e.is_panic()
    {
        sink.request(connection_record(String::new(), "proxy internal error (panic); connection closed".to_owned(), 0));
    }
    drop(abort);
}

/// Aborts the connection task when `serve_connection`'s future is dropped (session teardown).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A record for a refusal that never became an HTTP request.
fn connection_record(host: String, rule: String, status: u16) -> RequestRecord {
    RequestRecord {
        time: SystemTime::now(),
        method: String::new(),
        host,
        path: String::new(),
        allowed: false,
        rule,
        status,
        bytes_in: 0,
        bytes_out: 0,
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Presents the leaf already minted for this connection's SNI.
#[derive(Debug)]
struct FixedLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedLeaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn serve_tls<S>(stream: S, orig_port: u16, cfg: Arc<ProxyConfig>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let record = |host: &str, rule: String| cfg.sink.request(connection_record(host.to_owned(), rule, 0));
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let start = match tokio::time::timeout_at(deadline, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return record("", format!("TLS ClientHello unreadable: {e}")),
        Err(_) => return record("", "TLS ClientHello timed out".to_owned()),
    };
    let Some(sni) = start.client_hello().server_name().map(normalize_sni) else {
        return record("", "TLS ClientHello without SNI".to_owned());
    };
    let leaf = match cfg.ca.leaf_for(&sni) {
        Ok(leaf) => leaf,
        Err(e) => return record(&sni, format!("no certificate for SNI: {e}")),
    };
    let mut server_config =
        match rustls::ServerConfig::builder_with_provider(crypto_provider()).with_safe_default_protocol_versions() {
            Ok(builder) => builder.with_no_client_auth().with_cert_resolver(Arc::new(FixedLeaf(leaf))),
            Err(e) => return record(&sni, format!("TLS configuration: {e}")),
        };
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = match tokio::time::timeout_at(deadline, start.into_stream(Arc::new(server_config))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return record(&sni, format!("TLS handshake failed: {e}")),
        Err(_) => return record(&sni, "TLS handshake timed out".to_owned()),
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let ctx = Arc::new(ConnCtx {
        cfg: cfg.clone(),
        kind: ConnKind::Tls,
        orig_port,
        sni: Some(sni.clone()),
        pool: Pool::default(),
    });
    serve_http_on(TokioIo::new(tls), h2, ctx, &sni).await;
}

async fn serve_http<S>(stream: S, orig_port: u16, cfg: Arc<ProxyConfig>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnCtx { cfg, kind: ConnKind::Http, orig_port, sni: None, pool: Pool::default() });
    serve_http_on(TokioIo::new(stream), false, ctx, "").await;
}

/// Runs hyper's HTTP/1.1 or HTTP/2 server on `io`, recording connection-level failures.
async fn serve_http_on<I>(io: I, h2: bool, ctx: Arc<ConnCtx>, host: &str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let sink = ctx.cfg.sink.clone();
    let service = service_fn(move |req| request::handle(ctx.clone(), req));
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(128)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    let Err(e) = result else { return };
    let refusal = if e.is_parse_too_large() {
        Some(("request head larger than 64 KiB".to_owned(), 431))
    } else if e.is_parse() {
        Some((format!("malformed request: {e}"), 400))
    } else if e.is_timeout() {
        Some(("request head not received within 10 s; connection closed".to_owned(), 0))
    } else {
        None // the guest closed or reset the connection: nothing to record
    };
    if let Some((rule, status)) = refusal {
        sink.request(connection_record(host.to_owned(), rule, status));
    }
}
