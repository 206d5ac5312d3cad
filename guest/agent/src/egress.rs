//! The guest end of egress. The guest has no NIC: the init script's iptables `nat OUTPUT` rules
//! redirect every outbound TCP connection to 443 to `127.0.0.1:10443`, to the plain-HTTP ports
//! to `127.0.0.1:10080`, and DNS (UDP and TCP 53) to `127.0.0.1:1053`; `/etc/resolv.conf` names
//! `127.0.0.1`, which those rules skip, so DNS is also served on `127.0.0.1:53`. This module
//! listens there and carries the traffic to the host over vsock (CID 2), where the host's relays
//! (`capsem::egress::relay`) and its proxy decide per request. It never talks to the network
//! itself.
//!
//! **TCP** (vsock port [`TCP_VSOCK_PORT`]): each accepted connection gets its original
//! destination from `SO_ORIGINAL_DST` (IPv4; `IP6T_SO_ORIGINAL_DST` for an IPv6 socket), opens a
//! new vsock connection, sends one header line
//! `CAPSEM-EGRESS/1 <tls|http> <ip>:<port>\n` ([`header`]; the address in `SocketAddr`'s
//! canonical form, IPv6 in brackets) and then splices bytes both ways on two threads, passing a
//! half-close on (`shutdown(Write)` when one side reaches EOF). A connection whose original
//! destination is unknown, loopback or unspecified is closed: it was not redirected.
//!
//! **DNS** (vsock port [`DNS_VSOCK_PORT`]): each message, both ways, is a 2-byte big-endian
//! length and a DNS message; a reply of length 0 means "no answer". UDP queries use **one vsock
//! connection per query** (on its own short-lived thread, at most
//! [`EgressConfig::max_dns_inflight`] at once, extra queries dropped as a lossy network would):
//! no shared state, no head-of-line blocking, no desynchronised stream after a timeout. A TCP DNS
//! client gets one vsock connection for its whole connection, queries answered in order.
//!
//! Bounded everywhere: relayed TCP connections ([`EgressConfig::max_conns`], counting DNS over
//! TCP; over the limit a connection is closed at once), in-flight UDP queries, DNS messages
//! (16-bit lengths, at least a 12-byte header), I/O timeouts, and an idle timeout for a spliced
//! connection on which nothing has moved either way. Log lines go to stderr (the console), at
//! most 20 a minute.
//!
//! The vsock connector and the original-destination lookup are injectable ([`Connector`],
//! [`OrigDst`]) so tests run the relays on a host with Unix sockets.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capsem_proto::throttle::{Throttle, Verdict};

use crate::spawn_thread;
use crate::transport::VSOCK_HOST_CID;

/// Guest port the TLS redirect (TCP 443) lands on.
pub const TLS_LISTEN_PORT: u16 = 10443;
/// Guest port the plain-HTTP redirect lands on.
pub const HTTP_LISTEN_PORT: u16 = 10080;
/// Guest port the DNS redirect (UDP and TCP 53) lands on.
pub const DNS_LISTEN_PORT: u16 = 1053;
/// Host vsock port for relayed TCP connections (`capsem::egress::TCP_PORT`).
pub const TCP_VSOCK_PORT: u32 = 5001;
/// Host vsock port for DNS (`capsem::egress::DNS_PORT`).
pub const DNS_VSOCK_PORT: u32 = 5002;
/// The header line's prefix: protocol name, version, one space.
pub const HEADER_PREFIX: &str = "CAPSEM-EGRESS/1 ";
/// Smallest DNS message worth relaying (its header).
pub const MIN_DNS_MESSAGE: usize = 12;
/// Bytes moved per read when splicing.
const SPLICE_BUF: usize = 16 * 1024;

/// A connected stream to the host (vsock in the guest, a Unix socket in tests).
pub trait HostStream: Read + Write + Send + 'static {
    /// Another handle to the same connection.
    fn try_clone_host(&self) -> io::Result<Box<dyn HostStream>>;
    /// `shutdown(2)`.
    fn shutdown_host(&self, how: Shutdown) -> io::Result<()>;
    /// Read and write timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`; shared by every handle).
    fn set_host_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
}

macro_rules! host_stream {
    ($t:ty) => {
        impl HostStream for $t {
            fn try_clone_host(&self) -> io::Result<Box<dyn HostStream>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn shutdown_host(&self, how: Shutdown) -> io::Result<()> {
                self.shutdown(how)
            }
            fn set_host_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(read)?;
                self.set_write_timeout(write)
            }
        }
    };
}
host_stream!(vsock::VsockStream);
host_stream!(UnixStream);
host_stream!(TcpStream);

/// Opens a new connection to the host on a vsock port.
pub type Connector = Arc<dyn Fn(u32) -> io::Result<Box<dyn HostStream>> + Send + Sync>;

/// Where a redirected connection was originally going.
pub type OrigDst = Arc<dyn Fn(&TcpStream) -> io::Result<SocketAddr> + Send + Sync>;

/// The real connector: AF_VSOCK to CID 2 on the given port.
pub fn vsock_connector() -> Connector {
    Arc::new(|port| {
        let s = vsock::VsockStream::connect_with_cid_port(VSOCK_HOST_CID, port)?;
        Ok(Box::new(s) as Box<dyn HostStream>)
    })
}

/// The real lookup: `SO_ORIGINAL_DST` (or its IPv6 twin) from netfilter's conntrack entry.
/// Fails (`ENOENT`) for a connection with no NAT entry.
pub fn original_dst(s: &TcpStream) -> io::Result<SocketAddr> {
    if s.local_addr()?.is_ipv6() {
        Ok(SocketAddr::V6(rustix::net::sockopt::ipv6_original_dst(s)?))
    } else {
        Ok(SocketAddr::V4(rustix::net::sockopt::ip_original_dst(s)?))
    }
}

/// What a relayed connection carries (by the listener it arrived on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TLS, redirected from port 443.
    Tls,
    /// Plain HTTP, redirected from one of the HTTP ports.
    Http,
}

impl Kind {
    /// The header's spelling: `tls` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::Http => "http",
        }
    }
}

/// The header line sent before a relayed connection's bytes.
pub fn header(kind: Kind, dst: SocketAddr) -> String {
    format!("{HEADER_PREFIX}{} {dst}\n", kind.as_str())
}

/// Where the relays listen and their limits.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// TLS listener (default `127.0.0.1:10443`).
    pub tls: SocketAddr,
    /// Plain-HTTP listener (default `127.0.0.1:10080`).
    pub http: SocketAddr,
    /// DNS listener, UDP and TCP on the same port (default `127.0.0.1:1053`).
    pub dns: SocketAddr,
    /// A second DNS listener for resolvers pointed straight at loopback (default
    /// `127.0.0.1:53`, which `/etc/resolv.conf` names: the redirect rules skip 127.0.0.0/8).
    /// Failing to bind it is logged, not fatal.
    pub dns_loopback: Option<SocketAddr>,
    /// Most relayed TCP connections at once, DNS over TCP included (default 256).
    pub max_conns: usize,
    /// Most UDP DNS queries in flight (default 64).
    pub max_dns_inflight: usize,
    /// A spliced connection on which nothing moved for this long is closed (default 10 min).
    pub idle_timeout: Duration,
    /// Limit on connecting, sending the header, and each DNS exchange (default 10 s).
    pub io_timeout: Duration,
    /// How often a blocked splice checks the idle timeout (default 1 s).
    pub poll_interval: Duration,
}

impl Default for EgressConfig {
    fn default() -> EgressConfig {
        let local = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        EgressConfig {
            tls: local(TLS_LISTEN_PORT),
            http: local(HTTP_LISTEN_PORT),
            dns: local(DNS_LISTEN_PORT),
            dns_loopback: Some(local(53)),
            max_conns: 256,
            max_dns_inflight: 64,
            idle_timeout: Duration::from_secs(600),
            io_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Why the relays could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A listener could not be bound.
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: io::Error,
    },
    /// A listener thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which one.
        what: &'static str,
        /// The failure.
        source: io::Error,
    },
}

/// A counter with a ceiling; [`Slot`] gives its unit back on drop.
#[derive(Debug)]
struct Slots {
    used: AtomicUsize,
    max: usize,
}

#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { used: AtomicUsize::new(0), max })
    }

    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every relay thread shares.
struct Ctx {
    cfg: EgressConfig,
    connect: Connector,
    orig_dst: OrigDst,
    conns: Arc<Slots>,
    dns_inflight: Arc<Slots>,
}

/// The running relays (their threads live as long as the process; the agent is PID 1).
#[derive(Debug)]
pub struct Egress {
    /// Where the TLS listener is bound.
    pub tls: SocketAddr,
    /// Where the HTTP listener is bound.
    pub http: SocketAddr,
    /// Where the DNS listeners (UDP and TCP) are bound.
    pub dns: SocketAddr,
    /// Where the loopback DNS listeners are bound, if they could be.
    pub dns_loopback: Option<SocketAddr>,
    conns: Arc<Slots>,
    dns_inflight: Arc<Slots>,
}

impl Egress {
    /// Relayed TCP connections open now (DNS over TCP included).
    pub fn open_connections(&self) -> usize {
        self.conns.used.load(Ordering::Acquire)
    }

    /// UDP DNS queries in flight now.
    pub fn dns_in_flight(&self) -> usize {
        self.dns_inflight.used.load(Ordering::Acquire)
    }
}

/// A log line on stderr, at most 20 a minute (guest programs decide how many there are).
fn log(msg: impl std::fmt::Display) {
    static THROTTLE: Throttle = Throttle::new();
    match THROTTLE.next() {
        Verdict::Print => eprintln!("capsem-agent: egress: {msg}"),
        Verdict::SayPausing => eprintln!("capsem-agent: egress: more messages this minute suppressed"),
        Verdict::Drop => {}
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, EgressError> {
    TcpListener::bind(addr).map_err(|source| EgressError::Bind { proto: "tcp", addr, source })
}

/// Binds DNS over TCP and UDP on one port (when `addr`'s port is 0, one both can have).
fn bind_dns(addr: SocketAddr) -> Result<(TcpListener, UdpSocket), EgressError> {
    let mut tries = 0;
    loop {
        let tcp = bind_tcp(addr)?;
        let bound = tcp.local_addr().map_err(|source| EgressError::Bind { proto: "tcp", addr, source })?;
        match UdpSocket::bind(bound) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 && tries < 8 && e.kind() == io::ErrorKind::AddrInUse => tries += 1,
            Err(source) => return Err(EgressError::Bind { proto: "udp", addr: bound, source }),
        }
    }
}

/// Binds every listener and starts the relay threads.
pub fn start(cfg: EgressConfig, connect: Connector, orig_dst: OrigDst) -> Result<Egress, EgressError> {
    let tls = bind_tcp(cfg.tls)?;
    let http = bind_tcp(cfg.http)?;
    let (dns_tcp, dns_udp) = bind_dns(cfg.dns)?;
    let loopback = match cfg.dns_loopback.map(bind_dns).transpose() {
        Ok(l) => l,
        Err(e) => {
            log(format_args!("{e}; only port {} answers DNS", cfg.dns.port()));
            None
        }
    };
    let addr = |l: &TcpListener, want| l.local_addr().unwrap_or(want);
    let egress = Egress {
        tls: addr(&tls, cfg.tls),
        http: addr(&http, cfg.http),
        dns: addr(&dns_tcp, cfg.dns),
        dns_loopback: loopback.as_ref().zip(cfg.dns_loopback).map(|((l, _), want)| addr(l, want)),
        conns: Slots::new(cfg.max_conns),
        dns_inflight: Slots::new(cfg.max_dns_inflight),
    };
    let ctx = Arc::new(Ctx {
        cfg,
        connect,
        orig_dst,
        conns: egress.conns.clone(),
        dns_inflight: egress.dns_inflight.clone(),
    });
    let thread = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
        spawn_thread(format!("egress-{what}"), f).map_err(|source| EgressError::Thread { what, source })
    };
    let c = ctx.clone();
    thread("tls", Box::new(move || accept_loop(&tls, &c, Some(Kind::Tls))))?;
    let c = ctx.clone();
    thread("http", Box::new(move || accept_loop(&http, &c, Some(Kind::Http))))?;
    for (dns_tcp, dns_udp) in std::iter::once((dns_tcp, dns_udp)).chain(loopback) {
        let c = ctx.clone();
        thread("dns-tcp", Box::new(move || accept_loop(&dns_tcp, &c, None)))?;
        let c = ctx.clone();
        thread("dns-udp", Box::new(move || dns_udp_loop(dns_udp, &c)))?;
    }
    Ok(egress)
}

/// Accepts on `listener`: relayed TCP of `kind`, or DNS over TCP when `kind` is `None`.
fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>, kind: Option<Kind>) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) => {
                log(format_args!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = ctx.conns.take() else {
            log(format_args!("{} connections open; refused one", ctx.cfg.max_conns));
            continue;
        };
        let c = ctx.clone();
        let spawned = spawn_thread("egress-conn".into(), move || {
            let result = match kind {
                Some(kind) => relay_tcp(client, kind, &c, slot),
                None => relay_dns_tcp(client, &c, slot),
            };
            if let Err(e) = result {
                log(e);
            }
        });
        if let Err(e) = spawned {
            log(format_args!("cannot start a connection thread: {e}"));
        }
    }
}

/// When something last moved on a spliced connection (either way).
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `write_all` on a socket with a short send timeout: a stalled write is retried until nothing
/// has moved for `limit`.
fn write_all_until(to: &mut dyn HostStream, mut buf: &[u8], activity: &Activity, limit: Duration) -> io::Result<()> {
    while !buf.is_empty() {
        match to.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && activity.idle() < limit => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `from` → `to` until EOF (then half-closes `to`) or failure or idleness (then shuts
/// both sockets down both ways, which also ends the other direction).
fn pump(from: &mut dyn HostStream, to: &mut dyn HostStream, activity: &Activity, idle: Duration) {
    let mut buf = vec![0u8; SPLICE_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown_host(Shutdown::Write);
                return;
            }
            Ok(n) => {
                activity.touch();
                if write_all_until(to, &buf[..n], activity, idle).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && activity.idle() < idle => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown_host(Shutdown::Both);
    let _ = to.shutdown_host(Shutdown::Both);
}

/// Whether `dst` can be a redirected destination (a connection made straight to the listener,
/// or one with no NAT entry, reports a loopback or no address).
fn redirected(dst: SocketAddr) -> bool {
    !(dst.ip().is_loopback() || dst.ip().is_unspecified() || dst.port() == 0)
}

/// One relayed TCP connection: original destination, vsock connect, header, splice.
fn relay_tcp(client: TcpStream, kind: Kind, ctx: &Ctx, slot: Slot) -> Result<(), String> {
    let dst =
        (ctx.orig_dst)(&client).map_err(|e| format!("{} connection: no original destination: {e}", kind.as_str()))?;
    if !redirected(dst) {
        return Err(format!("{} connection to {dst} was not redirected; closed", kind.as_str()));
    }
    let fail = |what: &str, e: io::Error| format!("{} connection to {dst}: {what}: {e}", kind.as_str());
    let mut host = (ctx.connect)(TCP_VSOCK_PORT).map_err(|e| fail("connecting to the host", e))?;
    let poll = Some(ctx.cfg.poll_interval);
    host.set_host_timeouts(poll, poll).map_err(|e| fail("host socket", e))?;
    client
        .set_read_timeout(poll)
        .and_then(|()| client.set_write_timeout(poll))
        .map_err(|e| fail("client socket", e))?;
    let _ = client.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    write_all_until(&mut *host, header(kind, dst).as_bytes(), &activity, ctx.cfg.io_timeout)
        .map_err(|e| fail("sending the header", e))?;

    let mut host_r = host.try_clone_host().map_err(|e| fail("host socket", e))?;
    let mut client_w: Box<dyn HostStream> = Box::new(client.try_clone().map_err(|e| fail("client socket", e))?);
    let (a, idle, slot) = (activity.clone(), ctx.cfg.idle_timeout, Arc::new(slot));
    let down_slot = slot.clone();
    spawn_thread("egress-down".into(), move || {
        let _slot = down_slot;
        pump(&mut *host_r, &mut *client_w, &a, idle);
    })
    .map_err(|e| fail("starting the splice thread", e))?;
    let mut client_r: Box<dyn HostStream> = Box::new(client);
    pump(&mut *client_r, &mut *host, &activity, idle);
    drop(slot);
    Ok(())
}

/// Writes one length-prefixed DNS message.
fn write_frame(to: &mut dyn Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    to.write_all(&out)
}

/// Reads one length-prefixed DNS message; `None` at a clean EOF before it.
fn read_frame(from: &mut dyn Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    if from.read(&mut len[..1])? == 0 {
        return Ok(None);
    }
    from.read_exact(&mut len[1..])?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    from.read_exact(&mut msg)?;
    Ok(Some(msg))
}

/// Connects to the host's DNS relay with the exchange timeouts set.
fn dns_host(ctx: &Ctx) -> io::Result<Box<dyn HostStream>> {
    let host = (ctx.connect)(DNS_VSOCK_PORT)?;
    host.set_host_timeouts(Some(ctx.cfg.io_timeout), Some(ctx.cfg.io_timeout))?;
    Ok(host)
}

/// Sends `query` on `host` and returns the reply (`None` when the host gives no answer).
fn dns_exchange(host: &mut dyn HostStream, query: &[u8]) -> io::Result<Option<Vec<u8>>> {
    write_frame(host, query)?;
    match read_frame(host)? {
        None => Err(io::ErrorKind::UnexpectedEof.into()),
        Some(reply) if reply.is_empty() => Ok(None),
        Some(reply) => Ok(Some(reply)),
    }
}

/// Receives UDP DNS queries; each is answered on its own thread and vsock connection.
fn dns_udp_loop(sock: UdpSocket, ctx: &Arc<Ctx>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                log(format_args!("DNS receive: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if n < MIN_DNS_MESSAGE {
            continue;
        }
        let Some(slot) = ctx.dns_inflight.take() else {
            log(format_args!("{} DNS queries in flight; dropped one", ctx.cfg.max_dns_inflight));
            continue;
        };
        let (query, sock, c) = (buf[..n].to_vec(), sock.clone(), ctx.clone());
        let spawned = spawn_thread("egress-dns".into(), move || {
            let _slot = slot;
            let reply = dns_host(&c).and_then(|mut host| dns_exchange(&mut *host, &query));
            match reply {
                Ok(Some(reply)) => {
                    if let Err(e) = sock.send_to(&reply, peer) {
                        log(format_args!("DNS reply to {peer}: {e}"));
                    }
                }
                Ok(None) => {}
                Err(e) => log(format_args!("DNS query from {peer}: {e}")),
            }
        });
        if let Err(e) = spawned {
            log(format_args!("cannot start a DNS thread: {e}"));
        }
    }
}

/// One DNS-over-TCP client: its queries go, in order, over one vsock connection opened at the
/// first query. A query the host does not answer closes the client connection.
fn relay_dns_tcp(client: TcpStream, ctx: &Ctx, _slot: Slot) -> Result<(), String> {
    let t = Some(ctx.cfg.io_timeout);
    client.set_read_timeout(t).and_then(|()| client.set_write_timeout(t)).map_err(|e| format!("DNS client: {e}"))?;
    let mut client: Box<dyn HostStream> = Box::new(client);
    let mut host: Option<Box<dyn HostStream>> = None;
    loop {
        let query = match read_frame(&mut *client) {
            Ok(Some(q)) if q.len() >= MIN_DNS_MESSAGE => q,
            Ok(_) => return Ok(()),
            Err(e) if is_timeout(&e) => return Ok(()),
            Err(e) => return Err(format!("DNS over TCP: reading a query: {e}")),
        };
        let h = match &mut host {
            Some(h) => h,
            None => host.insert(dns_host(ctx).map_err(|e| format!("DNS over TCP: connecting to the host: {e}"))?),
        };
        match dns_exchange(&mut **h, &query).map_err(|e| format!("DNS over TCP: {e}"))? {
            Some(reply) => write_frame(&mut *client, &reply).map_err(|e| format!("DNS over TCP: replying: {e}"))?,
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_format() {
        assert_eq!(header(Kind::Tls, "93.184.216.34:443".parse().unwrap()), "CAPSEM-EGRESS/1 tls 93.184.216.34:443\n");
        assert_eq!(header(Kind::Http, "[2001:db8::1]:80".parse().unwrap()), "CAPSEM-EGRESS/1 http [2001:db8::1]:80\n");
        // The longest possible header fits the host's 128-byte limit.
        let longest = header(Kind::Http, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap());
        assert!(longest.len() <= 128, "{}", longest.len());
    }

    #[test]
    fn only_redirected_destinations_are_relayed() {
        assert!(redirected("1.2.3.4:443".parse().unwrap()));
        assert!(redirected("[2001:db8::1]:80".parse().unwrap()));
        for bad in ["127.0.0.1:10443", "127.9.9.9:443", "0.0.0.0:443", "[::1]:443", "[::]:80", "1.2.3.4:0"] {
            assert!(!redirected(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn slots_have_a_ceiling_and_come_back() {
        let s = Slots::new(2);
        let a = s.take().unwrap();
        let _b = s.take().unwrap();
        assert!(s.take().is_none());
        drop(a);
        assert!(s.take().is_some());
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").unwrap();
        write_frame(&mut buf, b"").unwrap();
        assert_eq!(buf, b"\0\x03abc\0\0");
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(read_frame(&mut r).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        assert!(read_frame(&mut &b"\0\x05ab"[..]).is_err());
        assert!(read_frame(&mut &b"\0"[..]).is_err());
        assert!(write_frame(&mut Vec::new(), &vec![0; 65536]).is_err());
    }
}
