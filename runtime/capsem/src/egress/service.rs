//! One VM's egress, running: a tokio runtime on its own threads serving the relay sockets with
//! the proxy and the DNS responder. Started before the VM (the sockets must exist when the
//! guest connects), stopped after it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::EventSink;
use super::ca::CertAuthority;
use super::policy::Policy;
use super::proxy::{ProxyConfig, UpstreamConfig, serve_connection};
use super::relay::{DnsResponder, Relays, TcpHandler};

/// Environment variable: `host=ip:port[,host=ip:port…]` — resolve overrides for the proxy's
/// upstream connections, the only way to reach a loopback or private address (tests, a local
/// mock server).
pub const RESOLVE_ENV: &str = "CAPSEM_EGRESS_RESOLVE";
/// Environment variable: a PEM file of CAs the proxy trusts upstream, besides the host's roots;
/// a config file's `[web] upstream_ca_file` takes its place.
pub const UPSTREAM_CA_ENV: &str = "CAPSEM_EGRESS_UPSTREAM_CA";

/// Parses [`RESOLVE_ENV`]'s value.
pub fn parse_resolve(value: &str) -> Result<BTreeMap<String, SocketAddr>, String> {
    let mut map = BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (host, addr) =
            item.split_once('=').ok_or_else(|| format!("{RESOLVE_ENV}: expected host=ip:port, got `{item}`"))?;
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{RESOLVE_ENV}: `{addr}` is not an ip:port ({e})"))?;
        map.insert(host.to_ascii_lowercase(), addr);
    }
    Ok(map)
}

/// The upstream settings from the environment.
pub fn upstream_from_env() -> Result<UpstreamConfig, String> {
    let resolve_overrides = match std::env::var(RESOLVE_ENV) {
        Ok(v) => parse_resolve(&v)?,
        Err(_) => BTreeMap::new(),
    };
    let extra_ca = std::env::var_os(UPSTREAM_CA_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(UpstreamConfig { extra_ca, resolve_overrides, ..UpstreamConfig::default() })
}

/// A running egress service; dropping it stops it and removes its sockets.
#[derive(Debug)]
pub struct Egress {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Egress {
    /// Binds `<uds_base>_5001`/`_5002` and serves them.
    pub fn start(
        uds_base: &Path,
        policy: Arc<Policy>,
        ca: Arc<CertAuthority>,
        upstream: UpstreamConfig,
        sink: Arc<dyn EventSink>,
    ) -> Result<Egress, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("capsem-egress")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the egress runtime: {e}"))?;
        let relays = {
            let _enter = runtime.enter();
            Relays::bind(uds_base).map_err(|e| format!("egress relay sockets: {e}"))?
        };
        let resolvable = Arc::clone(&policy);
        let dns =
            Arc::new(DnsResponder::new(Arc::new(move |name: &str| resolvable.resolvable(name)), Arc::clone(&sink)));
        let cfg = Arc::new(ProxyConfig { policy, ca, upstream, sink });
        let tcp: TcpHandler = Arc::new(move |conn, kind, dst: SocketAddr| {
            Box::pin(serve_connection(conn, kind, dst.port(), Arc::clone(&cfg)))
        });
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        runtime.spawn(relays.run(tcp, dns, rx));
        Ok(Egress { runtime: Some(runtime), shutdown })
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_parse_and_errors_name_the_variable() {
        let m = parse_resolve("Allowed.Test=127.0.0.1:8443, other.test=[::1]:9").unwrap();
        assert_eq!(m["allowed.test"], "127.0.0.1:8443".parse().unwrap());
        assert_eq!(m["other.test"], "[::1]:9".parse().unwrap());
        assert!(parse_resolve("").unwrap().is_empty());
        assert!(parse_resolve("x.test").unwrap_err().contains(RESOLVE_ENV));
        assert!(parse_resolve("x.test=localhost:1").unwrap_err().contains("not an ip:port"));
    }
}
