//! The host end of the egress relays ([`capsem::egress::relay`]) on temporary Unix sockets, as
//! the guest agent reaches them through hybrid vsock: relayed TCP connections (header parsing,
//! hand-off to the callback with the following bytes intact, hostile headers refused without
//! stopping the relay, the connection limit) and DNS (policy answers, hostile packets, the
//! session-log records).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsem::egress::relay::{
    DNS_TTL, DnsResponder, MAX_TCP_CONNS, Relays, SYNTHETIC_ADDR, TcpHandler, port_path, run_relays,
};
use capsem::egress::{ConnKind, DNS_PORT, DnsRecord, EventSink, RequestRecord, TCP_PORT};
use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct MemSink(Mutex<Vec<DnsRecord>>);

impl EventSink for MemSink {
    fn request(&self, _: RequestRecord) {}
    fn dns(&self, record: DnsRecord) {
        self.0.lock().unwrap().push(record);
    }
}

/// What the callback saw: kind, destination, and every byte the guest sent after the header.
type Seen = (ConnKind, SocketAddr, Vec<u8>);

/// A callback that reads the connection to EOF, answers `pong`, and reports what it saw.
fn recording_handler() -> (TcpHandler, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: TcpHandler = Arc::new(move |mut conn, kind, addr| {
        let tx = tx.clone();
        Box::pin(async move {
            let mut bytes = Vec::new();
            if conn.read_to_end(&mut bytes).await.is_ok() {
                let _ = conn.write_all(b"pong").await;
                let _ = conn.shutdown().await;
            }
            let _ = tx.send((kind, addr, bytes));
        })
    });
    (handler, rx)
}

fn responder(sink: Arc<MemSink>) -> Arc<DnsResponder> {
    let policy = Arc::new(|name: &str| name == "allowed.example" || name.ends_with(".allowed.example"));
    Arc::new(DnsResponder::new(policy, sink))
}

struct Running {
    _dir: tempfile::TempDir,
    base: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(handler: TcpHandler, dns: Arc<DnsResponder>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("vsock.sock");
    let relays = Relays::bind(&base).unwrap().with_header_timeout(Duration::from_millis(300));
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(relays.run(handler, dns, rx));
    Running { _dir: dir, base, stop, task }
}

async fn connect(base: &Path, port: u32) -> UnixStream {
    UnixStream::connect(port_path(base, port)).await.unwrap()
}

/// Sends `bytes`, half-closes, and returns what comes back before EOF (a reset counts as EOF).
async fn exchange(base: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(base, TCP_PORT).await;
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut back)).await.expect("the relay left a connection open");
    back
}

#[tokio::test]
async fn a_good_header_reaches_the_callback_with_the_following_bytes() {
    let (handler, mut seen) = recording_handler();
    let r = start(handler, responder(Arc::default()));

    // Header and payload in one write: the relay reads past the newline and must replay it.
    let back = exchange(&r.base, b"CAPSEM-EGRESS/1 tls 93.184.216.34:443\n\x16\x03\x01 hello\nworld").await;
    assert_eq!(back, b"pong");
    let (kind, addr, bytes) = seen.recv().await.unwrap();
    assert_eq!((kind, addr), (ConnKind::Tls, "93.184.216.34:443".parse().unwrap()));
    assert_eq!(bytes, b"\x16\x03\x01 hello\nworld");

    // Header and payload in separate writes, IPv6, plain HTTP.
    let mut s = connect(&r.base, TCP_PORT).await;
    s.write_all(b"CAPSEM-EGRESS/1 http [2001:db8::7]:8080\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    s.shutdown().await.unwrap();
    let (kind, addr, bytes) = seen.recv().await.unwrap();
    assert_eq!((kind, addr), (ConnKind::Http, "[2001:db8::7]:8080".parse().unwrap()));
    assert_eq!(bytes, b"GET / HTTP/1.1\r\n\r\n");

    // A header with nothing after it.
    assert_eq!(exchange(&r.base, b"CAPSEM-EGRESS/1 tls 1.1.1.1:443\n").await, b"pong");
    assert_eq!(seen.recv().await.unwrap().2, b"");

    r.stop.send(true).unwrap();
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
    assert!(!port_path(&r.base, TCP_PORT).exists() && !port_path(&r.base, DNS_PORT).exists());
}

#[tokio::test]
async fn bad_headers_are_closed_without_the_callback_and_the_relay_goes_on() {
    let (handler, mut seen) = recording_handler();
    let r = start(handler, responder(Arc::default()));
    let mut garbage = Vec::new();
    let mut x = 0x2545_f491_u32;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        garbage.push(x as u8);
    }
    let long = format!("CAPSEM-EGRESS/1 tls 1.2.3.4:443{}\n", " ".repeat(120));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("too long", long.into_bytes()),
        ("too long, no newline", vec![b'A'; 4096]),
        ("bad kind", b"CAPSEM-EGRESS/1 ssh 1.2.3.4:22\npayload".to_vec()),
        ("bad ip", b"CAPSEM-EGRESS/1 tls 1.2.3.400:443\npayload".to_vec()),
        ("host name", b"CAPSEM-EGRESS/1 tls example.com:443\npayload".to_vec()),
        ("port 0", b"CAPSEM-EGRESS/1 http 1.2.3.4:0\n".to_vec()),
        ("bad version", b"CAPSEM-EGRESS/2 tls 1.2.3.4:443\n".to_vec()),
        ("CRLF", b"CAPSEM-EGRESS/1 tls 1.2.3.4:443\r\n".to_vec()),
        ("no newline", b"CAPSEM-EGRESS/1 tls 1.2.3.4:443".to_vec()),
        ("empty", Vec::new()),
        ("just a newline", b"\n".to_vec()),
        ("binary garbage", garbage),
        ("NUL inside", b"CAPSEM-EGRESS/1 tls 1.2.3.4:443\0\n".to_vec()),
    ];
    for (what, bytes) in &cases {
        assert_eq!(exchange(&r.base, bytes).await, b"", "{what}: the relay answered");
    }
    // A header that never ends (the guest keeps the connection open) is cut off in time.
    let mut slow = connect(&r.base, TCP_PORT).await;
    slow.write_all(b"CAPSEM-EGRESS/1 tls 1.2.").await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow.read_to_end(&mut back)).await.expect("a slow header was not cut off");
    assert!(back.is_empty());
    // Nothing reached the callback…
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.try_recv().is_err(), "a bad header reached the callback");
    // …and the relay still works.
    assert_eq!(exchange(&r.base, b"CAPSEM-EGRESS/1 tls 8.8.8.8:443\nok").await, b"pong");
    assert_eq!(seen.recv().await.unwrap().2, b"ok");
    assert!(!r.task.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let (handler, mut seen) = recording_handler();
    let r = start(handler, responder(Arc::default()));
    let mut open = Vec::new();
    for i in 0..MAX_TCP_CONNS {
        let mut s = connect(&r.base, TCP_PORT).await;
        s.write_all(format!("CAPSEM-EGRESS/1 tls 10.0.{}.{}:443\n", i / 250, i % 250 + 1).as_bytes()).await.unwrap();
        open.push(s);
    }
    // Wait until the relay has taken every slot (an echo through the last one proves it accepted).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(exchange(&r.base, b"CAPSEM-EGRESS/1 tls 1.2.3.4:443\nover").await, b"", "over the limit");
    // Closing one frees a slot.
    let mut first = open.remove(0);
    first.shutdown().await.unwrap();
    let mut back = Vec::new();
    first.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"pong");
    assert_eq!(seen.recv().await.unwrap().1, "10.0.0.1:443".parse().unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(exchange(&r.base, b"CAPSEM-EGRESS/1 tls 1.2.3.4:443\nin").await, b"pong");
}

fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(qtype), QCLASS::CLASS(CLASS::IN), false));
    p.build_bytes_vec().unwrap()
}

/// One length-prefixed exchange on a DNS relay connection.
async fn ask(s: &mut UnixStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(&(msg.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut len)).await.unwrap().unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn dns_answers_from_the_policy_and_records_every_question() {
    let sink = Arc::new(MemSink::default());
    let (handler, _seen) = recording_handler();
    let r = start(handler, responder(sink.clone()));
    let mut s = connect(&r.base, DNS_PORT).await;

    let reply = ask(&mut s, &query(0x1234, "API.Allowed.Example", TYPE::A)).await;
    let p = Packet::parse(&reply).unwrap();
    assert_eq!((p.id(), p.rcode()), (0x1234, RCODE::NoError));
    assert!(p.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE));
    assert_eq!(p.questions.len(), 1);
    assert_eq!(p.answers.len(), 1);
    assert_eq!(p.answers[0].ttl, DNS_TTL);
    assert_eq!(p.answers[0].name.to_string(), "API.Allowed.Example");
    match &p.answers[0].rdata {
        RData::A(a) => assert_eq!(Ipv4Addr::from(a.address), SYNTHETIC_ADDR),
        other => panic!("not an A record: {other:?}"),
    }
    assert_eq!(SYNTHETIC_ADDR, Ipv4Addr::new(198, 18, 0, 1));

    let p_blocked = ask(&mut s, &query(2, "blocked.example", TYPE::A)).await;
    let p = Packet::parse(&p_blocked).unwrap();
    assert_eq!((p.id(), p.rcode(), p.answers.len()), (2, RCODE::NameError, 0));

    let aaaa = ask(&mut s, &query(3, "allowed.example", TYPE::AAAA)).await;
    let p = Packet::parse(&aaaa).unwrap();
    assert_eq!((p.id(), p.rcode(), p.answers.len(), p.questions.len()), (3, RCODE::NoError, 0, 1));

    let mx = ask(&mut s, &query(4, "allowed.example", TYPE::MX)).await;
    let p = Packet::parse(&mx).unwrap();
    assert_eq!((p.rcode(), p.answers.len()), (RCODE::NoError, 0));

    let aaaa_blocked = ask(&mut s, &query(5, "evil.example", TYPE::AAAA)).await;
    assert_eq!(Packet::parse(&aaaa_blocked).unwrap().rcode(), RCODE::NameError);

    let got: Vec<_> = sink.0.lock().unwrap().iter().map(|r| (r.name.clone(), r.qtype.clone(), r.answered)).collect();
    let want = [
        ("api.allowed.example", "A", true),
        ("blocked.example", "A", false),
        ("allowed.example", "AAAA", true),
        ("allowed.example", "MX", true),
        ("evil.example", "AAAA", false),
    ];
    assert_eq!(got, want.map(|(n, t, a)| (n.to_string(), t.to_string(), a)));
}

#[tokio::test]
async fn hostile_dns_packets_never_stop_the_relay() {
    let sink = Arc::new(MemSink::default());
    let dns = responder(sink.clone());
    let (handler, _seen) = recording_handler();
    let r = start(handler, dns.clone());
    let mut s = connect(&r.base, DNS_PORT).await;

    // Too short to carry an ID: an empty reply frame ("no answer").
    assert_eq!(ask(&mut s, b"\x01").await, b"");
    // A response sent as a query: no answer.
    let mut resp = query(9, "allowed.example", TYPE::A);
    resp[2] |= 0x80;
    assert_eq!(ask(&mut s, &resp).await, b"");
    // A header promising a question that is not there: FORMERR with the query's ID.
    let formerr = ask(&mut s, &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(&formerr[..2], [0xbe, 0xef]);
    assert_eq!(Packet::parse(&formerr).unwrap().rcode(), RCODE::FormatError);
    // A name that points at itself (a compression loop).
    let looped = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
    assert_eq!(Packet::parse(&ask(&mut s, &looped).await).unwrap().rcode(), RCODE::FormatError);
    // Too many questions; answers in a query; an unknown opcode; an unknown qtype.
    let mut many = query(10, "allowed.example", TYPE::A);
    many[5] = 40;
    assert_eq!(Packet::parse(&ask(&mut s, &many).await).unwrap().rcode(), RCODE::FormatError);
    let mut with_answer = query(11, "allowed.example", TYPE::A);
    with_answer[7] = 1;
    assert_eq!(Packet::parse(&ask(&mut s, &with_answer).await).unwrap().rcode(), RCODE::FormatError);
    let mut update = query(12, "allowed.example", TYPE::A);
    update[2] = 5 << 3;
    assert_eq!(Packet::parse(&ask(&mut s, &update).await).unwrap().rcode(), RCODE::NotImplemented);
    let mut odd_type = query(13, "allowed.example", TYPE::A);
    let n = odd_type.len();
    odd_type[n - 4..n - 2].copy_from_slice(&0xfff0u16.to_be_bytes());
    assert_eq!(Packet::parse(&ask(&mut s, &odd_type).await).unwrap().rcode(), RCODE::NotImplemented);
    // A name with a dot inside a label and one with non-ASCII bytes: NXDOMAIN, policy not asked.
    let dotted = [&[0, 14, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..], b"\x03a.b\x07example\x00\x00\x01\x00\x01"].concat();
    assert_eq!(Packet::parse(&ask(&mut s, &dotted).await).unwrap().rcode(), RCODE::NameError);

    // Random bytes and single-byte mutations of a good query, straight into the responder.
    let good = query(0x4242, "www.allowed.example", TYPE::A);
    let mut x = 0x9e37_79b9_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..5000 {
        let len = (next() % 80) as usize;
        let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = dns.answer(&random);
        let mut mutated = good.clone();
        let i = next() as usize % mutated.len();
        mutated[i] = next() as u8;
        let _ = dns.answer(&mutated);
        mutated.truncate(next() as usize % good.len());
        let _ = dns.answer(&mutated);
    }

    // The connection and the relay still answer.
    let ok = ask(&mut s, &query(77, "allowed.example", TYPE::A)).await;
    assert_eq!(Packet::parse(&ok).unwrap().answers.len(), 1);
    // A zero length closes the connection; a new one works.
    s.write_all(&[0, 0]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
    let mut s2 = connect(&r.base, DNS_PORT).await;
    assert_eq!(Packet::parse(&ask(&mut s2, &query(78, "x.allowed.example", TYPE::A)).await).unwrap().id(), 78);
    let names: Vec<_> = sink.0.lock().unwrap().iter().map(|r| r.name.clone()).collect();
    assert!(names.iter().any(|n| n.contains("a.b")), "{names:?}");
}

#[tokio::test]
async fn run_relays_binds_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("vsock.sock");
    // A stale socket from an earlier run is replaced; a regular file is not touched.
    drop(std::os::unix::net::UnixListener::bind(port_path(&base, TCP_PORT)).unwrap());
    let (handler, _seen) = recording_handler();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_relays(base.clone(), handler.clone(), responder(Arc::default()), rx));
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(port_path(&base, DNS_PORT)).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(Packet::parse(&ask(&mut s, &query(1, "allowed.example", TYPE::A)).await).unwrap().id(), 1);
    drop(stop);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();

    let blocker = dir.path().join("other.sock");
    std::fs::write(port_path(&blocker, TCP_PORT), "not a socket").unwrap();
    let (_stop, rx) = watch::channel(false);
    let e = run_relays(blocker.clone(), handler, responder(Arc::default()), rx).await.unwrap_err();
    assert!(e.to_string().contains("other.sock_5001"), "{e}");
    assert_eq!(std::fs::read_to_string(port_path(&blocker, TCP_PORT)).unwrap(), "not a socket");
}

/// The guest agent's relays (run here with a Unix-socket connector and a stubbed original
/// destination) against the host's: the two ends speak the same protocol.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_agent_relays_talk_to_these() {
    use capsem_agent::egress::{self, EgressConfig, HostStream};
    use std::io::{Read, Write};

    let sink = Arc::new(MemSink::default());
    let (handler, mut seen) = recording_handler();
    let r = start(handler, responder(sink.clone()));
    let base = r.base.clone();
    let connect: egress::Connector = Arc::new(move |port| {
        Ok(Box::new(std::os::unix::net::UnixStream::connect(port_path(&base, port))?) as Box<dyn HostStream>)
    });
    let dst: SocketAddr = "140.82.112.3:443".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = EgressConfig { tls: local, http: local, dns: local, dns_loopback: None, ..EgressConfig::default() };
    let eg = egress::start(cfg, connect, Arc::new(move |_| Ok(dst))).unwrap();

    let client = tokio::task::spawn_blocking(move || {
        // TCP: bytes after the header reach the callback, its answer comes back.
        let mut c = std::net::TcpStream::connect(eg.tls).unwrap();
        c.write_all(b"\x16\x03\x01client hello").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"pong");
        // DNS over UDP and over TCP.
        let u = std::net::UdpSocket::bind(local).unwrap();
        u.set_read_timeout(Some(WAIT)).unwrap();
        u.send_to(&query(21, "api.allowed.example", TYPE::A), eg.dns).unwrap();
        let mut buf = [0u8; 512];
        let n = u.recv(&mut buf).unwrap();
        let udp_reply = buf[..n].to_vec();
        let mut t = std::net::TcpStream::connect(eg.dns).unwrap();
        let q = query(22, "blocked.example", TYPE::A);
        t.write_all(&[&(q.len() as u16).to_be_bytes()[..], &q].concat()).unwrap();
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut tcp_reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut tcp_reply).unwrap();
        (udp_reply, tcp_reply)
    });
    let (udp_reply, tcp_reply) = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();

    assert_eq!(seen.recv().await.unwrap(), (ConnKind::Tls, dst, b"\x16\x03\x01client hello".to_vec()));
    let p = Packet::parse(&udp_reply).unwrap();
    assert_eq!((p.id(), p.answers.len()), (21, 1));
    match &p.answers[0].rdata {
        RData::A(a) => assert_eq!(Ipv4Addr::from(a.address), SYNTHETIC_ADDR),
        other => panic!("not an A record: {other:?}"),
    }
    let p = Packet::parse(&tcp_reply).unwrap();
    assert_eq!((p.id(), p.rcode()), (22, RCODE::NameError));
    let names: Vec<_> = sink.0.lock().unwrap().iter().map(|r| (r.name.clone(), r.answered)).collect();
    assert_eq!(names, [("api.allowed.example".to_string(), true), ("blocked.example".to_string(), false)]);
}
