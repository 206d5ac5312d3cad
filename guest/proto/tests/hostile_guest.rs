//! The client against scripted (misbehaving) guests over a socketpair: every violation must
//! become a `ClientError`, never a panic or a hang.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use capsem_proto::frame::{FrameReader, write_msg};
use capsem_proto::{Client, ClientError, ExecRequest, GuestMsg, HostMsg, PROTOCOL_VERSION, Ready, Stream};

fn ready() -> GuestMsg {
    GuestMsg::Ready(Ready {
        protocol: PROTOCOL_VERSION,
        version: "test".into(),
        kernel_release: "6.1.0-test".into(),
        uptime_ms: 1,
        init_started_ms: Some(0),
    })
}

/// A scripted guest on one end of a socketpair; `connect` on the other.
struct Fake {
    host: UnixStream,
    guest: Option<JoinHandle<()>>,
}

impl Fake {
    fn new(script: impl FnOnce(&mut FrameReader<UnixStream>, &mut UnixStream) + Send + 'static) -> Fake {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(guest.try_clone().unwrap());
        let mut writer = guest;
        let guest = std::thread::spawn(move || script(&mut reader, &mut writer));
        Fake { host, guest: Some(guest) }
    }

    fn connect(&self, timeout: Duration) -> Result<(Client, Ready), ClientError> {
        Client::connect(Box::new(self.host.try_clone().unwrap()), Box::new(self.host.try_clone().unwrap()), timeout)
    }

    fn client(&self) -> Client {
        self.connect(Duration::from_secs(10)).expect("connect").0
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.host.shutdown(std::net::Shutdown::Both);
        if let Some(g) = self.guest.take() {
            g.join().expect("fake guest panicked");
        }
    }
}

fn next(r: &mut FrameReader<UnixStream>) -> HostMsg {
    r.read::<HostMsg>().unwrap().expect("a host message")
}

/// Waits until the host closes its end (so the guest thread outlives the assertions).
fn hold(r: &mut FrameReader<UnixStream>) {
    while let Ok(Some(_)) = r.read::<HostMsg>() {}
}

#[test]
fn no_ready_times_out() {
    let fake = Fake::new(|r, _| hold(r));
    match fake.connect(Duration::from_millis(100)) {
        Err(ClientError::ReadyTimeout(d)) => assert_eq!(d, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_message_must_be_ready() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &GuestMsg::Ok { id: 1 }).unwrap();
        hold(r);
    });
    assert!(matches!(fake.connect(Duration::from_secs(10)), Err(ClientError::Protocol(m)) if m.contains("Ready")));
}

#[test]
fn other_protocol_version_is_refused() {
    let fake = Fake::new(|r, w| {
        let GuestMsg::Ready(mut rd) = ready() else { unreachable!() };
        rd.protocol = PROTOCOL_VERSION + 1;
        write_msg(w, &GuestMsg::Ready(rd)).unwrap();
        hold(r);
    });
    assert!(matches!(fake.connect(Duration::from_secs(10)), Err(ClientError::Protocol(m)) if m.contains("protocol")));
}

#[test]
fn closing_before_ready_is_closed() {
    let fake = Fake::new(|_, w| {
        w.write_all(&[0, 0]).unwrap(); // half a header, then gone
    });
    assert!(matches!(fake.connect(Duration::from_secs(10)), Err(ClientError::Closed { .. })));
}

#[test]
fn garbage_frame_is_a_protocol_violation_for_pending_and_later_calls() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        assert!(matches!(next(r), HostMsg::Configure { .. }));
        w.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        hold(r);
    });
    let client = fake.client();
    assert!(matches!(client.configure(BTreeMap::new(), vec![]), Err(ClientError::Protocol(_))));
    assert!(matches!(client.read_file("/x"), Err(ClientError::Protocol(_))));
    assert!(matches!(client.exec(ExecRequest::new(["true"])), Err(ClientError::Protocol(_))));
}

#[test]
fn oversize_frame_is_rejected() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        next(r);
        w.write_all(&u32::MAX.to_be_bytes()).unwrap();
        hold(r);
    });
    let client = fake.client();
    match client.read_file("/x") {
        Err(ClientError::Protocol(m)) => assert!(m.contains("limit"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn message_for_an_unissued_id_is_a_violation() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        write_msg(w, &GuestMsg::Output { id: 999, stream: Stream::Stdout, data: b"boo".to_vec() }).unwrap();
        hold(r);
    });
    let client = fake.client();
    match client.configure(BTreeMap::new(), vec![]) {
        Err(ClientError::Protocol(m)) => assert!(m.contains("999"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn second_ready_is_a_violation() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        next(r);
        write_msg(w, &ready()).unwrap();
        hold(r);
    });
    let client = fake.client();
    assert!(matches!(client.shutdown(), Err(ClientError::Protocol(_))));
}

#[test]
fn wrong_reply_kind_and_inconsistent_file_size() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        let id = next(r).id(); // Configure
        write_msg(w, &GuestMsg::FileEnd { id, size: 0 }).unwrap();
        let id = next(r).id(); // ReadFile
        write_msg(w, &GuestMsg::FileChunk { id, data: b"abc".to_vec() }).unwrap();
        write_msg(w, &GuestMsg::FileEnd { id, size: 99 }).unwrap();
        let id = next(r).id(); // Exec
        write_msg(w, &GuestMsg::Error { id, message: "exec /nope: No such file or directory".into() }).unwrap();
        hold(r);
    });
    let client = fake.client();
    assert!(
        matches!(client.configure(BTreeMap::new(), vec![]), Err(ClientError::Protocol(m)) if m.contains("FileEnd"))
    );
    assert!(matches!(client.read_file("/f"), Err(ClientError::Protocol(m)) if m.contains("99")));
    match client.exec(ExecRequest::new(["/nope"])) {
        Err(ClientError::Guest { message }) => assert_eq!(message, "exec /nope: No such file or directory"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn late_messages_for_a_dropped_process_are_ignored() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        let HostMsg::Exec { id, .. } = next(r) else { panic!("expected Exec") };
        write_msg(w, &GuestMsg::Started { id, pid: 4242 }).unwrap();
        // The host drops the Process; then its output still arrives.
        let cfg = next(r).id();
        write_msg(w, &GuestMsg::Output { id, stream: Stream::Stdout, data: b"late".to_vec() }).unwrap();
        write_msg(w, &GuestMsg::Exited { id, status: capsem_proto::ExitStatus::Code(0) }).unwrap();
        write_msg(w, &GuestMsg::Ok { id: cfg }).unwrap();
        hold(r);
    });
    let client = fake.client();
    let p = client.exec(ExecRequest::new(["x"])).unwrap();
    assert_eq!(p.pid(), 4242);
    drop(p);
    client.configure(BTreeMap::new(), vec![]).unwrap();
}

#[test]
fn connection_loss_fails_pending_process_and_later_calls_with_closed() {
    let fake = Fake::new(|r, w| {
        write_msg(w, &ready()).unwrap();
        let HostMsg::Exec { id, .. } = next(r) else { panic!("expected Exec") };
        write_msg(w, &GuestMsg::Started { id, pid: 1 }).unwrap();
        write_msg(w, &GuestMsg::Output { id, stream: Stream::Stderr, data: b"e".to_vec() }).unwrap();
        // Half a frame, then the guest is gone.
        w.write_all(&[0, 0, 0, 10, 1]).unwrap();
        w.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let client = fake.client();
    let mut p = client.exec(ExecRequest::new(["x"])).unwrap();
    assert_eq!(p.recv().unwrap(), capsem_proto::ProcEvent::Stderr(b"e".to_vec()));
    assert!(matches!(p.recv(), Err(ClientError::Closed { .. })));
    assert!(matches!(client.read_file("/x"), Err(ClientError::Closed { .. })));
}

#[test]
fn random_garbage_after_ready_never_panics() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    for round in 0..50 {
        let mut bytes = Vec::new();
        for _ in 0..(round * 7 + 3) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        // A small plausible length prefix so some inputs reach the decoder.
        let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
        frame.extend(&bytes);
        let fake = Fake::new(move |r, w| {
            write_msg(w, &ready()).unwrap();
            next(r);
            let _ = w.write_all(&frame);
            let _ = w.shutdown(std::net::Shutdown::Write);
            hold(r);
        });
        let client = fake.client();
        match client.read_file("/x") {
            Err(ClientError::Protocol(_) | ClientError::Closed { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
}
