//! The guest's egress relays ([`capsem_agent::egress`]) run on the build host: listeners on
//! ephemeral loopback ports, a connector that reaches a fake host over Unix sockets named like
//! hybrid vsock's (`<base>_<port>`), and a stubbed original-destination lookup (there is no
//! iptables redirect here). Covers the header and the splice both ways with half-close, the
//! refusals (no original destination, loopback destination, host unreachable), the connection
//! limit, the idle timeout, and DNS over UDP and TCP.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use capsem_agent::egress::{
    self, Connector, DNS_VSOCK_PORT, Egress, EgressConfig, HostStream, OrigDst, TCP_VSOCK_PORT,
};

const WAIT: Duration = Duration::from_secs(10);

fn local0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn test_config() -> EgressConfig {
    EgressConfig {
        tls: local0(),
        http: local0(),
        dns: local0(),
        dns_loopback: None,
        poll_interval: Duration::from_millis(50),
        io_timeout: Duration::from_secs(5),
        ..EgressConfig::default()
    }
}

fn port_path(base: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", base.display()))
}

/// A connector to `<base>_<port>`, as the host side of hybrid vsock lays them out.
fn unix_connector(base: &Path) -> Connector {
    let base = base.to_owned();
    Arc::new(move |port| Ok(Box::new(UnixStream::connect(port_path(&base, port))?) as Box<dyn HostStream>))
}

fn stub_dst(addr: &str) -> OrigDst {
    let addr: SocketAddr = addr.parse().unwrap();
    Arc::new(move |_| Ok(addr))
}

/// The fake host: its two listening sockets in a temporary directory.
struct FakeHost {
    _dir: tempfile::TempDir,
    base: PathBuf,
    tcp: UnixListener,
    dns: UnixListener,
}

fn fake_host() -> FakeHost {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("vsock.sock");
    let tcp = UnixListener::bind(port_path(&base, TCP_VSOCK_PORT)).unwrap();
    let dns = UnixListener::bind(port_path(&base, DNS_VSOCK_PORT)).unwrap();
    FakeHost { _dir: dir, base, tcp, dns }
}

fn start(host: &FakeHost, cfg: EgressConfig, orig: OrigDst) -> Egress {
    egress::start(cfg, unix_connector(&host.base), orig).unwrap()
}

/// Accepts one relayed connection on the fake host within `WAIT`; returns its header line and
/// a reader positioned after it.
fn accept_relayed(l: &UnixListener) -> (String, BufReader<UnixStream>) {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no relayed connection: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    (line, r)
}

/// Whether nothing connects to `l` for a little while.
fn nothing_connects(l: &UnixListener) -> bool {
    l.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    matches!(l.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// What a client gets back before EOF (a reset counts as EOF).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection left open: {e}"),
    }
    back
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn tcp_is_spliced_both_ways_after_a_header_with_the_original_destination() {
    let host = fake_host();
    let eg = start(&host, test_config(), stub_dst("93.184.216.34:443"));

    // TLS listener: a large upload, half-close, then a large download.
    let mut client = TcpStream::connect(eg.tls).unwrap();
    let up = pattern(1 << 20, 7);
    let writer = {
        let (mut c, up) = (client.try_clone().unwrap(), up.clone());
        std::thread::spawn(move || {
            c.write_all(&up).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let (line, mut from_guest) = accept_relayed(&host.tcp);
    assert_eq!(line, "CAPSEM-EGRESS/1 tls 93.184.216.34:443\n");
    let mut got = Vec::new();
    from_guest.read_to_end(&mut got).unwrap(); // EOF arrives: the half-close was passed on
    assert!(got == up, "upload corrupted ({} of {} bytes)", got.len(), up.len());
    writer.join().unwrap();
    let down = pattern(700_000, 3);
    let mut to_guest = from_guest.into_inner();
    to_guest.write_all(&down).unwrap();
    to_guest.shutdown(Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut client) == down, "download corrupted");

    // HTTP listener: the kind follows the listener.
    let mut client = TcpStream::connect(eg.http).unwrap();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (line, mut from_guest) = accept_relayed(&host.tcp);
    assert_eq!(line, "CAPSEM-EGRESS/1 http 93.184.216.34:443\n");
    let mut req = [0u8; 18];
    from_guest.read_exact(&mut req).unwrap();
    assert_eq!(&req, b"GET / HTTP/1.1\r\n\r\n");
    // The host closes first: the client sees the reply, then EOF.
    let mut to_guest = from_guest.into_inner();
    to_guest.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    drop(to_guest);
    assert_eq!(read_until_closed(&mut client), b"HTTP/1.1 204 No Content\r\n\r\n");
    // Once the client closes too, both connections' slots come back.
    drop(client);
    let deadline = Instant::now() + WAIT;
    while eg.open_connections() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(eg.open_connections(), 0, "connection slots not given back");
}

#[test]
fn an_ipv6_original_destination_goes_in_brackets() {
    let host = fake_host();
    let eg = start(&host, test_config(), stub_dst("[2001:db8::5]:443"));
    let _client = TcpStream::connect(eg.tls).unwrap();
    assert_eq!(accept_relayed(&host.tcp).0, "CAPSEM-EGRESS/1 tls [2001:db8::5]:443\n");
}

#[test]
fn connections_that_were_not_redirected_are_closed_without_reaching_the_host() {
    // The real lookup on a connection that no iptables rule redirected: an error (no conntrack
    // entry) or, where conntrack tracks loopback, the listener's own loopback address.
    let l = std::net::TcpListener::bind(local0()).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (accepted, _) = l.accept().unwrap();
    match egress::original_dst(&accepted) {
        Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        Ok(dst) => assert!(dst.ip().is_loopback(), "{dst}"),
    }
    drop(c);

    let failing: OrigDst = Arc::new(|_| Err(io::Error::from_raw_os_error(2)));
    let stubs: [(&str, OrigDst); 3] = [
        ("the real lookup", Arc::new(egress::original_dst)),
        ("a failing lookup", failing),
        ("a loopback destination", stub_dst("127.0.0.1:10443")),
    ];
    for (what, orig) in stubs {
        let host = fake_host();
        let eg = start(&host, test_config(), orig);
        let mut client = TcpStream::connect(eg.tls).unwrap();
        let _ = client.write_all(b"\x16\x03\x01");
        assert_eq!(read_until_closed(&mut client), b"", "{what}");
        assert!(nothing_connects(&host.tcp), "{what}: the host was reached");
    }
}

#[test]
fn an_unreachable_host_closes_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let eg = egress::start(test_config(), unix_connector(&dir.path().join("absent")), stub_dst("1.2.3.4:443")).unwrap();
    let mut client = TcpStream::connect(eg.tls).unwrap();
    assert_eq!(read_until_closed(&mut client), b"");
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let host = fake_host();
    let eg = start(&host, EgressConfig { max_conns: 2, ..test_config() }, stub_dst("1.2.3.4:443"));
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = TcpStream::connect(eg.tls).unwrap();
            (c, accept_relayed(&host.tcp).1)
        })
        .collect();
    assert_eq!(eg.open_connections(), 2);
    let mut third = TcpStream::connect(eg.http).unwrap();
    assert_eq!(read_until_closed(&mut third), b"");
    assert!(nothing_connects(&host.tcp));
    drop(held);
    let deadline = Instant::now() + WAIT;
    while eg.open_connections() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(eg.open_connections(), 0);
    let _fourth = TcpStream::connect(eg.tls).unwrap();
    assert_eq!(accept_relayed(&host.tcp).0, "CAPSEM-EGRESS/1 tls 1.2.3.4:443\n");
}

#[test]
fn an_idle_connection_is_closed_on_both_sides() {
    let host = fake_host();
    let cfg = EgressConfig { idle_timeout: Duration::from_millis(300), ..test_config() };
    let eg = start(&host, cfg, stub_dst("1.2.3.4:443"));
    let mut client = TcpStream::connect(eg.tls).unwrap();
    let (_, mut from_guest) = accept_relayed(&host.tcp);
    // Traffic keeps it alive past the timeout…
    for _ in 0..6 {
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        from_guest.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // …silence ends it.
    let t = Instant::now();
    assert_eq!(read_until_closed(&mut client), b"");
    let mut rest = Vec::new();
    let _ = from_guest.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(t.elapsed() < Duration::from_secs(5), "closed after {:?}", t.elapsed());
}

/// A fake host DNS relay: answers each framed query with the query itself, QR bit set; a query
/// whose ID is 0xffff gets the empty "no answer" frame. Serves connections until the test ends.
fn serve_fake_dns(l: UnixListener) -> mpsc::Receiver<usize> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut queries = 0;
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        break;
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    s.read_exact(&mut msg).unwrap();
                    queries += 1;
                    let reply = if msg[..2] == [0xff, 0xff] {
                        Vec::new()
                    } else {
                        msg[2] |= 0x80;
                        msg
                    };
                    s.write_all(&(reply.len() as u16).to_be_bytes()).unwrap();
                    s.write_all(&reply).unwrap();
                }
                let _ = tx.send(queries);
            });
        }
    });
    rx
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn answered(mut q: Vec<u8>) -> Vec<u8> {
    q[2] |= 0x80;
    q
}

#[test]
fn dns_over_udp_round_trips_one_connection_per_query() {
    let host = fake_host();
    let conns = serve_fake_dns(host.dns.try_clone().unwrap());
    let eg = start(&host, EgressConfig { dns_loopback: Some(local0()), ..test_config() }, stub_dst("1.2.3.4:443"));
    let loopback = eg.dns_loopback.expect("the second DNS listener");
    assert_ne!(loopback, eg.dns);
    let client = UdpSocket::bind(local0()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1024];
    for (id, name, to) in [(1, "example.com", eg.dns), (2, "api.github.com", loopback)] {
        let q = dns_query(id, name);
        client.send_to(&q, to).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, to);
        assert_eq!(buf[..n], answered(q)[..]);
    }
    // One vsock connection per query, each carrying exactly one.
    assert_eq!(conns.recv_timeout(WAIT).unwrap(), 1);
    assert_eq!(conns.recv_timeout(WAIT).unwrap(), 1);

    // No answer from the host, or a datagram too short to be DNS: no datagram back.
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    client.send_to(&dns_query(0xffff, "x.example"), eg.dns).unwrap();
    client.send_to(b"short", eg.dns).unwrap();
    assert!(client.recv_from(&mut buf).is_err(), "got an answer to nothing");
    // And the relay still answers.
    client.set_read_timeout(Some(WAIT)).unwrap();
    let q = dns_query(3, "example.org");
    client.send_to(&q, eg.dns).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(buf[..n], answered(q)[..]);
    let deadline = Instant::now() + WAIT;
    while eg.dns_in_flight() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(eg.dns_in_flight(), 0);
}

#[test]
fn dns_over_tcp_round_trips_on_one_connection() {
    let host = fake_host();
    let conns = serve_fake_dns(host.dns.try_clone().unwrap());
    let eg = start(&host, test_config(), stub_dst("1.2.3.4:443"));
    let mut client = TcpStream::connect(eg.dns).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let queries = [dns_query(10, "a.example"), dns_query(11, "b.example")];
    for q in &queries {
        client.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        client.write_all(q).unwrap();
    }
    for q in &queries {
        let mut len = [0u8; 2];
        client.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(reply, answered(q.clone()));
    }
    // A query the host does not answer ends the client's connection (and the vsock one).
    let q = dns_query(0xffff, "c.example");
    client.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    client.write_all(&q).unwrap();
    assert_eq!(read_until_closed(&mut client), b"");
    assert_eq!(conns.recv_timeout(WAIT).unwrap(), 3, "the three queries shared one host connection");
}
