//! Test harness: the real agent serve loop on one end of a socketpair, the real host `Client`
//! on the other.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use capsem_agent::{AgentError, ServeEnd, ServeOptions, serve};
use capsem_proto::{Client, ExecRequest, ExitStatus, Ready};

pub struct Harness {
    pub client: Client,
    pub ready: Ready,
    host: UnixStream,
    agent: Option<JoinHandle<Result<ServeEnd, AgentError>>>,
}

pub fn start() -> Harness {
    start_with(ServeOptions::default())
}

pub fn start_with(opts: ServeOptions) -> Harness {
    let (host, guest) = UnixStream::pair().expect("socketpair");
    let guest_r = guest.try_clone().expect("clone guest end");
    let agent = std::thread::spawn(move || serve(guest_r, guest, opts));
    let (client, ready) = Client::connect(
        Box::new(host.try_clone().expect("clone host end")),
        Box::new(host.try_clone().expect("clone host end")),
        Duration::from_secs(10),
    )
    .expect("connect to the agent");
    Harness { client, ready, host, agent: Some(agent) }
}

impl Harness {
    /// Closes the host end and returns how the serve loop ended.
    pub fn close(mut self) -> Result<ServeEnd, AgentError> {
        let _ = self.host.shutdown(std::net::Shutdown::Both);
        self.agent.take().expect("agent thread").join().expect("serve loop panicked")
    }

    /// Sends Shutdown and returns how the serve loop ended.
    pub fn shutdown(mut self) -> Result<ServeEnd, AgentError> {
        self.client.shutdown().expect("shutdown");
        self.agent.take().expect("agent thread").join().expect("serve loop panicked")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.host.shutdown(std::net::Shutdown::Both);
        if let Some(a) = self.agent.take() {
            let _ = a.join();
        }
    }
}

/// Runs `argv` to completion, collecting its output.
pub fn run(client: &Client, req: ExecRequest) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client.run(req, None, &mut out, &mut err).expect("run");
    (status, out, err)
}

pub fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}
