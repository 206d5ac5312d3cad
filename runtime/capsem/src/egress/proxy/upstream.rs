//! The upstream side of the proxy: where a host may be reached, and the HTTP/1.1 connections
//! (TLS or plain) that carry the guest's requests there.
//!
//! Resolution: `resolve_overrides` first (the only way to reach loopback or private addresses),
//! else the injected resolver (tests) or the system resolver. Every resolved address must be
//! public ([`forbidden`]); the proxy then connects to one of those checked addresses itself, so a
//! second resolution cannot change the answer (DNS rebinding).
//!
//! Upstream TLS trusts the host's roots (rustls-native-certs, loaded once per process) plus an
//! optional extra CA (a corporate TLS-intercepting proxy, a test CA). Connections are pooled per
//! guest connection, keyed by scheme, host and port.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::UpstreamConfig;
use super::body::Counted;

/// The body type of every request sent upstream.
pub(crate) type UpBody = Counted<Incoming>;
/// A ready-to-use HTTP/1.1 upstream connection.
pub(crate) type Sender = http1::SendRequest<UpBody>;

/// Idle upstream connections kept per key and guest connection.
const POOL_PER_KEY: usize = 8;

/// Why a request could not be sent upstream: answered 502 with this reason.
#[derive(Debug)]
pub(crate) struct UpstreamError {
    /// `true` when the proxy refused the destination (an address check), rather than failed
    /// to reach it.
    pub(crate) refused: bool,
    pub(crate) reason: String,
}

impl UpstreamError {
    fn failed(reason: String) -> Self {
        UpstreamError { refused: false, reason }
    }
}

/// Why an address may not be reached, or `None` when it is a public unicast address.
pub(crate) fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata address")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if let Some(v4) = v6.to_ipv4_mapped() {
                forbidden_v4(v4)
            } else if seg[0..6] == [0; 6] {
                // IPv4-compatible (deprecated, ::a.b.c.d): judge the embedded address.
                forbidden_v4(Ipv4Addr::from_bits(v6.to_bits() as u32)).or(Some("IPv4-compatible"))
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (fc00::/7)")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4 == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata address")
    } else if a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() {
        Some("private (RFC 1918)")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if a == 100 && b & 0xc0 == 64 {
        Some("shared address space (100.64.0.0/10)")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else {
        None
    }
}

/// `host` without the brackets of an IPv6 literal, parsed as an address.
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

fn override_for(cfg: &UpstreamConfig, host: &str) -> Option<SocketAddr> {
    cfg.resolve_overrides
        .get(host)
        .or_else(|| cfg.resolve_overrides.iter().find(|(k, _)| k.eq_ignore_ascii_case(host)).map(|(_, a)| a))
        .copied()
}

/// `true` when `host` is listed in `resolve_overrides`.
pub(crate) fn has_override(cfg: &UpstreamConfig, host: &str) -> bool {
    override_for(cfg, host).is_some()
}

/// The checked addresses to connect to for `host:port`.
pub(crate) async fn resolve(cfg: &UpstreamConfig, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Some(addr) = override_for(cfg, host) {
        return Ok(vec![addr]);
    }
    if ip_literal(host).is_some() {
        return Err(UpstreamError { refused: true, reason: format!("IP-literal host {host} has no resolve override") });
    }
    let ips: Vec<IpAddr> = match &cfg.resolver {
        Some(resolve) => resolve(host),
        None => match tokio::time::timeout(cfg.connect_timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            Ok(Err(e)) => return Err(UpstreamError::failed(format!("cannot resolve {host}: {e}"))),
            Err(_) => return Err(UpstreamError::failed(format!("resolving {host} timed out"))),
        },
    };
    if ips.is_empty() {
        return Err(UpstreamError::failed(format!("{host} has no address")));
    }
    if let Some((ip, why)) = ips.iter().find_map(|&ip| forbidden(ip).map(|why| (ip, why))) {
        return Err(UpstreamError {
            refused: true,
            reason: format!("destination address not allowed: {host} resolves to {ip} ({why})"),
        });
    }
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// Opens an HTTP/1.1 connection to `host:port` (over TLS when `tls`), address-checked. It can
/// be upgraded (a WebSocket answered `101`).
pub(crate) async fn connect(cfg: &UpstreamConfig, tls: bool, host: &str, port: u16) -> Result<Sender, UpstreamError> {
    let addrs = resolve(cfg, host, port).await?;
    let client_config = if tls { Some(client_config(cfg)?) } else { None };
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let mut last = String::new();
    let mut tcp = None;
    for addr in &addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("connecting to {host} ({addr}): {e}"),
            Err(_) => {
                last = format!("connecting to {host} ({addr}) timed out");
                break;
            }
        }
    }
    let tcp = tcp.ok_or_else(|| UpstreamError::failed(last))?;
    let _ = tcp.set_nodelay(true);
    let handshake = |e: hyper::Error| UpstreamError::failed(format!("HTTP handshake with {host}: {e}"));
    let sender = match client_config {
        Some(config) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| UpstreamError::failed(format!("{host} is not a TLS server name: {e}")))?;
            let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(UpstreamError::failed(format!("TLS with {host}: {e}"))),
                Err(_) => return Err(UpstreamError::failed(format!("TLS with {host} timed out"))),
            };
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(handshake)?;
            tokio::spawn(conn.with_upgrades());
            sender
        }
        None => {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(handshake)?;
            tokio::spawn(conn.with_upgrades());
            sender
        }
    };
    Ok(sender)
}

/// The host's root certificates, loaded once per process (unreadable ones are skipped).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The certificates of an extra upstream CA file (PEM): at least one, each usable as a trust
/// anchor. The error says why not, without the path.
pub(crate) fn read_extra_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".to_owned());
    }
    let mut check = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The upstream TLS client configuration for `cfg.extra_ca`, built once per path.
fn client_config(cfg: &UpstreamConfig) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    static CONFIGS: OnceLock<Mutex<HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    if let Some(config) = configs.lock().unwrap_or_else(|p| p.into_inner()).get(&cfg.extra_ca) {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(path) = &cfg.extra_ca {
        let certs =
            read_extra_ca(path).map_err(|why| UpstreamError::failed(format!("extra CA {}: {why}", path.display())))?;
        for cert in certs {
            roots.add(cert).map_err(|e| UpstreamError::failed(format!("extra CA {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::failed(format!("upstream TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    configs.lock().unwrap_or_else(|p| p.into_inner()).insert(cfg.extra_ca.clone(), config.clone());
    Ok(config)
}

/// Which upstream a pooled connection goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Idle upstream connections of one guest connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pool(Arc<Mutex<HashMap<PoolKey, Vec<Sender>>>>);

impl Pool {
    /// An idle connection to `key`, if one is still open.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<Sender> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.get_mut(key)?;
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request to `key` (dropped when the pool is full).
    pub(crate) fn put(&self, key: PoolKey, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.entry(key).or_default();
        if idle.len() < POOL_PER_KEY {
            idle.push(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("172.16.5.4", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "cloud metadata address"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (100.64.0.0/10)"),
            ("100.127.255.255", "shared address space (100.64.0.0/10)"),
            ("0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved (240.0.0.0/4)"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "cloud metadata address"),
            ("fc00::1", "private (fc00::/7)"),
            ("fd12:3456::1", "private (fc00::/7)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata address"),
            ("::10.0.0.1", "private (RFC 1918)"),
        ] {
            assert_eq!(forbidden(ip.parse().unwrap()), Some(why), "{ip}");
        }
    }

    #[test]
    fn public_addresses() {
        for ip in
            ["1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"]
        {
            assert_eq!(forbidden(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("example.com"), None);
    }
}
