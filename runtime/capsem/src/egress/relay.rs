//! The host end of the guest agent's egress relays. The guest has no NIC: its agent accepts the
//! connections that iptables redirects inside the guest and carries each one to the host over
//! hybrid vsock, where a guest connect to CID 2 port P arrives on the Unix socket `<uds>_P`.
//! This module listens on those two sockets and owns the wire protocol's host side:
//!
//! - **`<uds>_5001`** ([`TCP_PORT`]): one Unix connection per redirected guest TCP connection.
//!   It starts with one header line, `CAPSEM-EGRESS/1 <tls|http> <ip>:<port>\n` (at most
//!   [`MAX_HEADER`] bytes including the newline; `<ip>:<port>` is the connection's original
//!   destination in Rust's canonical `SocketAddr` form, IPv6 in brackets), followed by the
//!   connection's bytes, both ways, with half-close. The header is hostile input:
//!   [`parse_header`] accepts exactly that grammar and nothing else; a connection with a bad,
//!   overlong or late header is closed and logged, and the relay goes on. A good one is handed,
//!   as a [`GuestConn`] that replays any bytes read past the newline, to the `tcp` callback
//!   (the proxy), which decides per request.
//! - **`<uds>_5002`** ([`DNS_PORT`]): DNS. Each message, both ways, is a 2-byte big-endian length
//!   and a DNS message; a connection may carry any number of queries, answered in order. A reply
//!   of length 0 means "no answer" (the query was not worth one, e.g. too short to carry an ID or
//!   itself a response). [`DnsResponder`] answers from the web policy alone:
//!   **no DNS query ever leaves the host on the guest's behalf.** A name the policy can reach
//!   gets one synthetic A record, [`SYNTHETIC_ADDR`] (TTL [`DNS_TTL`]): every connection to 443
//!   or an HTTP port is redirected to the proxy whatever its address, and the proxy decides from
//!   SNI/Host, so the address only has to exist. AAAA and other types for such a name get
//!   NOERROR with no answers (the guest has no IPv6 route); any other name gets NXDOMAIN. Each
//!   question is recorded through the [`EventSink`].
//!
//! Everything is bounded: header size and time, connections per port ([`MAX_TCP_CONNS`],
//! [`MAX_DNS_CONNS`]; over the limit a connection is closed at once), DNS idle and I/O time,
//! questions per query. Connection tasks end with [`Relays::run`] (on shutdown).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use capsem_proto::throttle::{Throttle, Verdict};
use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Packet, PacketFlag, QCLASS, QTYPE, RCODE, ResourceRecord, SimpleDnsError, TYPE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::{ConnKind, DNS_PORT, DnsRecord, EventSink, TCP_PORT};

/// Longest header line, newline included.
pub const MAX_HEADER: usize = 128;
/// The header's fixed prefix (protocol name and version, then one space).
pub const HEADER_PREFIX: &str = "CAPSEM-EGRESS/1 ";
/// How long the guest has to send the whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most relayed TCP connections at once (the guest agent has the same limit).
pub const MAX_TCP_CONNS: usize = 256;
/// Most DNS connections at once.
pub const MAX_DNS_CONNS: usize = 64;
/// A DNS connection with no query for this long is closed.
pub const DNS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to read the rest of a DNS message once its length has arrived, and to write
/// the reply.
pub const DNS_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most questions in one DNS query (real resolvers send one).
pub const MAX_QUESTIONS: u16 = 4;
/// The address every resolvable name resolves to (in 198.18.0.0/15, reserved for benchmarking,
/// so it never collides with a real destination).
pub const SYNTHETIC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// TTL of the synthetic A record, in seconds (short: the policy may change between sessions).
pub const DNS_TTL: u32 = 5;

/// A boxed, sendable future (what the `tcp` callback returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives each accepted relayed connection: the stream (positioned just after the header),
/// what it carries, and the guest's original destination.
pub type TcpHandler = Arc<dyn Fn(GuestConn, ConnKind, SocketAddr) -> BoxFuture<'static, ()> + Send + Sync>;

/// Why the relays could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listening socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// Why a relayed connection's header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// No newline within [`MAX_HEADER`] bytes.
    #[error("header longer than {MAX_HEADER} bytes")]
    TooLong,
    /// The connection ended before the newline.
    #[error("connection closed inside the header ({0} bytes)")]
    Truncated(usize),
    /// The header did not arrive in time ([`HEADER_TIMEOUT`]).
    #[error("no complete header in time")]
    Timeout,
    /// Reading failed.
    #[error("reading the header: {0}")]
    Io(io::ErrorKind),
    /// The line does not start with [`HEADER_PREFIX`].
    #[error("bad header prefix in \"{0}\"")]
    BadPrefix(String),
    /// The kind is neither `tls` nor `http`.
    #[error("bad connection kind in \"{0}\"")]
    BadKind(String),
    /// The destination is not a canonical `ip:port` with a non-zero port.
    #[error("bad destination in \"{0}\"")]
    BadAddr(String),
}

/// `line` (without its newline) for an error message: at most 40 bytes, escaped (quotes included).
fn shown(line: &[u8]) -> String {
    let cut = &line[..line.len().min(40)];
    let mut s = cut.escape_ascii().to_string();
    if cut.len() < line.len() {
        s.push('…');
    }
    s
}

/// Parses a header line without its trailing `\n`: `CAPSEM-EGRESS/1 <tls|http> <ip>:<port>`.
/// Strict: exact prefix, single spaces, lowercase kind, the address in the canonical form
/// `SocketAddr` prints (no leading zeros, no IPv6 scope or flow info), port not 0.
pub fn parse_header(line: &[u8]) -> Result<(ConnKind, SocketAddr), HeaderError> {
    let rest = line.strip_prefix(HEADER_PREFIX.as_bytes()).ok_or_else(|| HeaderError::BadPrefix(shown(line)))?;
    let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| HeaderError::BadKind(shown(line)))?;
    let kind = match &rest[..sp] {
        b"tls" => ConnKind::Tls,
        b"http" => ConnKind::Http,
        _ => return Err(HeaderError::BadKind(shown(line))),
    };
    let bad_addr = || HeaderError::BadAddr(shown(line));
    let text = std::str::from_utf8(&rest[sp + 1..]).map_err(|_| bad_addr())?;
    let addr: SocketAddr = text.parse().map_err(|_| bad_addr())?;
    let scoped = matches!(addr, SocketAddr::V6(a) if a.scope_id() != 0 || a.flowinfo() != 0);
    if addr.port() == 0 || scoped || addr.to_string() != text {
        return Err(bad_addr());
    }
    Ok((kind, addr))
}

/// Reads the header line; returns what it says and the bytes read after the newline.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(ConnKind, SocketAddr, Vec<u8>), HeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        let n = r.read(&mut buf[len..]).await.map_err(|e| HeaderError::Io(e.kind()))?;
        if n == 0 {
            return Err(HeaderError::Truncated(len));
        }
        if let Some(i) = buf[len..len + n].iter().position(|&b| b == b'\n') {
            let nl = len + i;
            let (kind, addr) = parse_header(&buf[..nl])?;
            return Ok((kind, addr, buf[nl + 1..len + n].to_vec()));
        }
        len += n;
        if len == MAX_HEADER {
            return Err(HeaderError::TooLong);
        }
    }
}

/// A relayed guest connection after its header: reads first replay the bytes that arrived with
/// the header, then come from the socket; writes go straight to the socket.
#[derive(Debug)]
pub struct GuestConn {
    inner: UnixStream,
    prefix: Vec<u8>,
    pos: usize,
}

impl GuestConn {
    /// `inner`, whose next bytes are preceded by `prefix`.
    pub fn new(inner: UnixStream, prefix: Vec<u8>) -> GuestConn {
        GuestConn { inner, prefix, pos: 0 }
    }

    /// The bytes not yet replayed and the socket.
    pub fn into_parts(self) -> (Vec<u8>, UnixStream) {
        (self.prefix[self.pos..].to_vec(), self.inner)
    }
}

impl AsyncRead for GuestConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuestConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Answers the guest's DNS queries from the web policy; never asks a real resolver.
pub struct DnsResponder {
    /// Whether the policy lets the guest reach `name` (lowercase, no trailing dot).
    pub policy: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where each question is recorded.
    pub sink: Arc<dyn EventSink>,
}

impl fmt::Debug for DnsResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResponder").field("sink", &self.sink).finish_non_exhaustive()
    }
}

/// A reply with no sections: the query's ID, opcode and RD bit, RA, and `rcode`.
fn bare_reply(query: &[u8], rcode: RCODE) -> Vec<u8> {
    let flags = u16::from_be_bytes([query[2], query[3]]);
    let opcode_rd = flags & 0x7900; // opcode (bits 11-14) and RD (bit 8)
    let out_flags = 0x8000 | opcode_rd | 0x0080 | (rcode as u16 & 0xf);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&out_flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A query name as the policy sees it (lowercase, dot-separated), or `None` when a label holds
/// anything but letters, digits, `-` and `_` (or the name is the root).
fn policy_name<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut name = String::new();
    for label in labels {
        if label.is_empty() || !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|&b| b.to_ascii_lowercase() as char));
    }
    (!name.is_empty()).then_some(name)
}

/// A question's type as the session log shows it: `A`, `AAAA`, `HTTPS`, `ANY`…
fn qtype_name(q: QTYPE) -> String {
    match q {
        QTYPE::TYPE(t) => format!("{t:?}"),
        other => format!("{other:?}"),
    }
}

impl DnsResponder {
    /// The responder for `policy`, recording into `sink`.
    pub fn new(policy: Arc<dyn Fn(&str) -> bool + Send + Sync>, sink: Arc<dyn EventSink>) -> DnsResponder {
        DnsResponder { policy, sink }
    }

    /// The reply to one DNS message, or `None` when it gets none (shorter than a header, or
    /// itself a response). Never panics on any input. Non-query opcodes and unknown types or
    /// classes get NOTIMP; malformed queries, more than [`MAX_QUESTIONS`] questions or any
    /// answer/authority records get FORMERR.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None;
        }
        let count = |i: usize| u16::from_be_bytes([query[i], query[i + 1]]);
        if (query[2] >> 3) & 0xf != 0 {
            return Some(bare_reply(query, RCODE::NotImplemented));
        }
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd == 0 || qd > MAX_QUESTIONS || an != 0 || ns != 0 || ar > 2 {
            return Some(bare_reply(query, RCODE::FormatError));
        }
        let packet = match Packet::parse(query) {
            Ok(p) => p,
            Err(
                SimpleDnsError::InvalidQType(_) | SimpleDnsError::InvalidQClass(_) | SimpleDnsError::InvalidClass(_),
            ) => return Some(bare_reply(query, RCODE::NotImplemented)),
            Err(_) => return Some(bare_reply(query, RCODE::FormatError)),
        };
        let mut reply = Packet::new_reply(packet.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        let mut nxdomain = false;
        for q in &packet.questions {
            let name = policy_name(q.qname.as_bytes());
            let internet = matches!(q.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY);
            let resolvable = internet && name.as_deref().is_some_and(|n| (self.policy)(n));
            self.sink.dns(DnsRecord {
                time: SystemTime::now(),
                name: name.unwrap_or_else(|| shown(&q.qname.as_bytes().collect::<Vec<_>>().join(&b'.'))),
                qtype: qtype_name(q.qtype),
                answered: resolvable,
            });
            if !resolvable {
                nxdomain = true;
            } else if matches!(q.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY) {
                let rdata = RData::A(A { address: u32::from(SYNTHETIC_ADDR) });
                reply.answers.push(ResourceRecord::new(q.qname.clone(), CLASS::IN, DNS_TTL, rdata));
            }
            reply.questions.push(q.clone());
        }
        if nxdomain {
            reply.answers.clear();
            *reply.rcode_mut() = RCODE::NameError;
        }
        match reply.build_bytes_vec() {
            Ok(bytes) if bytes.len() <= usize::from(u16::MAX) => Some(bytes),
            _ => Some(bare_reply(query, RCODE::ServerFailure)),
        }
    }
}

/// A relay warning on stderr, at most 20 a minute (the guest controls how many there are).
fn warn(msg: impl fmt::Display) {
    static THROTTLE: Throttle = Throttle::new();
    match THROTTLE.next() {
        Verdict::Print => eprintln!("capsem: egress: {msg}"),
        Verdict::SayPausing => eprintln!("capsem: egress: more relay warnings this minute suppressed"),
        Verdict::Drop => {}
    }
}

/// `<uds_base>_<port>`.
pub fn port_path(uds_base: &Path, port: u32) -> PathBuf {
    let mut s = uds_base.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Binds `path`, first removing a stale socket there (never any other kind of file).
fn bind(path: &Path) -> Result<UnixListener, RelayError> {
    let err = |source| RelayError::Bind { path: path.to_owned(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path).map_err(err)?;
    }
    UnixListener::bind(path).map_err(err)
}

/// The two bound relay sockets; [`Relays::run`] serves them. Splitting bind from run lets a
/// caller know the sockets exist before the guest can connect.
#[derive(Debug)]
pub struct Relays {
    tcp: UnixListener,
    dns: UnixListener,
    paths: [PathBuf; 2],
    header_timeout: Duration,
}

impl Relays {
    /// Listens on `<uds_base>_5001` and `<uds_base>_5002`. Must run inside a tokio runtime.
    pub fn bind(uds_base: &Path) -> Result<Relays, RelayError> {
        let paths = [port_path(uds_base, TCP_PORT), port_path(uds_base, DNS_PORT)];
        let tcp = bind(&paths[0])?;
        let dns = bind(&paths[1])?;
        Ok(Relays { tcp, dns, paths, header_timeout: HEADER_TIMEOUT })
    }

    /// Replaces [`HEADER_TIMEOUT`] (tests).
    pub fn with_header_timeout(mut self, limit: Duration) -> Relays {
        self.header_timeout = limit;
        self
    }

    /// The socket paths (TCP relay, DNS relay).
    pub fn paths(&self) -> &[PathBuf; 2] {
        &self.paths
    }

    /// Serves until `shutdown` becomes `true` (or its sender is dropped), then stops every
    /// connection task and removes the sockets.
    pub async fn run(self, tcp: TcpHandler, dns: Arc<DnsResponder>, mut shutdown: watch::Receiver<bool>) {
        let tcp_slots = Arc::new(Semaphore::new(MAX_TCP_CONNS));
        let dns_slots = Arc::new(Semaphore::new(MAX_DNS_CONNS));
        let mut tasks = JoinSet::new();
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                accepted = self.tcp.accept() => match accepted {
                    Ok((s, _)) => match tcp_slots.clone().try_acquire_owned() {
                        Ok(slot) => { tasks.spawn(relay_tcp(s, tcp.clone(), self.header_timeout, slot)); }
                        Err(_) => warn(format_args!("{MAX_TCP_CONNS} relayed connections open; refused one")),
                    },
                    Err(e) => accept_failed(&self.paths[0], e).await,
                },
                accepted = self.dns.accept() => match accepted {
                    Ok((s, _)) => match dns_slots.clone().try_acquire_owned() {
                        Ok(slot) => { tasks.spawn(relay_dns(s, dns.clone(), slot)); }
                        Err(_) => warn(format_args!("{MAX_DNS_CONNS} DNS connections open; refused one")),
                    },
                    Err(e) => accept_failed(&self.paths[1], e).await,
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        warn("a relayed connection's handler panicked");
                    }
                }
            }
        }
        tasks.shutdown().await;
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Logs an accept failure and backs off a little (e.g. out of file descriptors).
async fn accept_failed(path: &Path, e: io::Error) {
    warn(format_args!("accepting on {}: {e}", path.display()));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One relayed TCP connection: header, then the callback.
async fn relay_tcp(mut s: UnixStream, tcp: TcpHandler, limit: Duration, _slot: OwnedSemaphorePermit) {
    let header = tokio::time::timeout(limit, read_header(&mut s)).await.unwrap_or(Err(HeaderError::Timeout));
    match header {
        Ok((kind, addr, rest)) => tcp(GuestConn::new(s, rest), kind, addr).await,
        Err(e) => warn(format_args!("refused a relayed guest connection: {e}")),
    }
}

/// One DNS connection: length-prefixed queries in, length-prefixed replies out, in order.
async fn relay_dns(mut s: UnixStream, dns: Arc<DnsResponder>, _slot: OwnedSemaphorePermit) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(DNS_IDLE_TIMEOUT, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 {
            return;
        }
        let mut msg = vec![0u8; n];
        match tokio::time::timeout(DNS_IO_TIMEOUT, s.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = dns.answer(&msg).unwrap_or_default();
        let mut out = Vec::with_capacity(2 + reply.len());
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(DNS_IO_TIMEOUT, s.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Binds `<uds_base>_5001` and `<uds_base>_5002` and serves them until `shutdown` (see
/// [`Relays::run`]).
pub async fn run_relays(
    uds_base: PathBuf,
    tcp: TcpHandler,
    dns: Arc<DnsResponder>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    Relays::bind(&uds_base)?.run(tcp, dns, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_grammar() {
        let ok = |s: &str| parse_header(s.as_bytes()).unwrap();
        assert_eq!(ok("CAPSEM-EGRESS/1 tls 93.184.216.34:443"), (ConnKind::Tls, "93.184.216.34:443".parse().unwrap()));
        assert_eq!(ok("CAPSEM-EGRESS/1 http 10.1.2.3:8080"), (ConnKind::Http, "10.1.2.3:8080".parse().unwrap()));
        assert_eq!(ok("CAPSEM-EGRESS/1 tls [2001:db8::1]:443").1, "[2001:db8::1]:443".parse().unwrap());
        for bad in [
            "",
            "CAPSEM-EGRESS/1",
            "CAPSEM-EGRESS/2 tls 1.2.3.4:443",
            "capsem-egress/1 tls 1.2.3.4:443",
            " CAPSEM-EGRESS/1 tls 1.2.3.4:443",
            "CAPSEM-EGRESS/1 TLS 1.2.3.4:443",
            "CAPSEM-EGRESS/1 ssh 1.2.3.4:22",
            "CAPSEM-EGRESS/1  tls 1.2.3.4:443",
            "CAPSEM-EGRESS/1 tls  1.2.3.4:443",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:443 ",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:443\r",
            "CAPSEM-EGRESS/1 tls 1.2.3.4",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:0",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:0443",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:65536",
            "CAPSEM-EGRESS/1 tls 01.2.3.4:443",
            "CAPSEM-EGRESS/1 tls 1.2.3:443",
            "CAPSEM-EGRESS/1 tls example.com:443",
            "CAPSEM-EGRESS/1 tls 2001:db8::1:443",
            "CAPSEM-EGRESS/1 tls [2001:DB8::1]:443",
            "CAPSEM-EGRESS/1 tls [2001:db8:0::1]:443",
            "CAPSEM-EGRESS/1 tls [fe80::1%2]:443",
            "CAPSEM-EGRESS/1 tls 1.2.3.4:+443",
        ] {
            assert!(parse_header(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(parse_header(b"CAPSEM-EGRESS/1 tls \xff:1"), Err(HeaderError::BadAddr(_))));
        assert!(matches!(parse_header(b"CAPSEM-EGRESS/1 udp 1.2.3.4:1"), Err(HeaderError::BadKind(_))));
    }

    #[test]
    fn error_text_is_escaped_and_short() {
        let e = parse_header(&[0x1b; 200]).unwrap_err().to_string();
        assert!(e.contains("\\x1b") && e.contains('…') && !e.contains('\x1b') && e.len() < 250, "{e}");
    }

    #[test]
    fn policy_names() {
        let name = |labels: &[&[u8]]| policy_name(labels.iter().copied());
        assert_eq!(name(&[b"Api", b"GitHub", b"com"]).as_deref(), Some("api.github.com"));
        assert_eq!(name(&[b"_dmarc", b"x-y", b"io"]).as_deref(), Some("_dmarc.x-y.io"));
        assert_eq!(name(&[]), None);
        assert_eq!(name(&[b"a.b", b"com"]), None);
        assert_eq!(name(&[b"caf\xc3\xa9", b"fr"]), None);
        assert_eq!(name(&[b"a b"]), None);
    }

    #[test]
    fn bare_replies_echo_id_opcode_and_rd() {
        let q = [0xab, 0xcd, 0x29, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]; // opcode 5 (UPDATE), RD
        let r = bare_reply(&q, RCODE::NotImplemented);
        assert_eq!(r, [0xab, 0xcd, 0xa9, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
