//! Host-side client of the guest agent: one reader thread demultiplexes [`GuestMsg`]s by
//! request id into per-request queues; the blocking API on top ([`Client::exec`],
//! [`Client::run`], [`Client::write_file`], …) is safe to call from many threads at once.
//!
//! Everything the guest sends is hostile: a frame that does not decode, a frame larger than
//! [`MAX_FRAME`](crate::MAX_FRAME), a message for an id the host never issued, or a second
//! `Ready` is a protocol violation. It ends the connection: every pending and later call
//! returns [`ClientError::Protocol`], nothing panics, and memory stays bounded (each request's
//! queue holds at most [`ROUTE_QUEUE`] messages; when one is full the reader waits for its
//! consumer). A message for an id the host issued but no longer waits on (a dropped
//! [`Process`]) is dropped silently.
//!
//! As with OS pipes, consume a [`Process`]'s events while writing large stdin from another
//! thread (or use [`Client::run`], which does): stdin is flow-controlled by acknowledgements
//! ([`STDIN_WINDOW`]) that the reader thread can only deliver while queues have room.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crate::frame::{self, FrameError, FrameReader};
use crate::msg::{
    BootFile, ExitStatus, GuestMsg, HostMsg, MAX_CHUNK, PROTOCOL_VERSION, Ready, STDIN_WINDOW, Stream, WinSize,
};

/// Messages at most queued for one request before the reader thread waits for its consumer.
pub const ROUTE_QUEUE: usize = 256;

/// Largest file [`Client::read_file`] accepts (a guest sending more is a protocol violation).
pub const MAX_READ_FILE: u64 = 1 << 30;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection is gone (the agent or the VM ended, or the stream failed).
    #[error("agent connection closed: {detail}")]
    Closed {
        /// What was observed (end of stream, the I/O error).
        detail: String,
    },
    /// The guest did not send `Ready` in time.
    #[error("the guest agent did not send Ready within {0:?}")]
    ReadyTimeout(Duration),
    /// The guest reported that the request failed.
    #[error("{message}")]
    Guest {
        /// The guest's message, naming the path or argv, e.g. `exec /nope: No such file or directory`.
        message: String,
    },
    /// The guest broke the protocol; the connection is no longer usable.
    #[error("protocol violation by the guest agent: {0}")]
    Protocol(String),
    /// The request cannot be sent as asked (empty argv, a frame over the size limit, stdin
    /// on a process started without it, …).
    #[error("invalid agent request: {0}")]
    InvalidRequest(String),
    /// The process already exited (its events are all delivered).
    #[error("process {id} has already exited")]
    Finished {
        /// The process's request id.
        id: u32,
    },
    /// A local reader or writer handed to [`Client::run`] failed.
    #[error("{what}: {source}")]
    LocalIo {
        /// Which one (`writing stdout`, …).
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Why the connection ended.
#[derive(Debug, Clone)]
enum Dead {
    Closed(String),
    Protocol(String),
}

impl Dead {
    fn error(&self) -> ClientError {
        match self {
            Dead::Closed(d) => ClientError::Closed { detail: d.clone() },
            Dead::Protocol(d) => ClientError::Protocol(d.clone()),
        }
    }

    fn from_frame(e: FrameError) -> Dead {
        match e {
            FrameError::Io(e) => Dead::Closed(format!("reading from the agent: {e}")),
            e @ FrameError::Truncated { .. } => Dead::Closed(e.to_string()),
            e => Dead::Protocol(e.to_string()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stdin credit of one process (see [`STDIN_WINDOW`]).
#[derive(Debug, Default)]
struct Credit {
    state: Mutex<CreditState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct CreditState {
    in_flight: usize,
    closed: bool,
}

impl Credit {
    /// Waits until `n` more bytes fit in the window; `false` once the process is gone.
    fn acquire(&self, n: usize) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return false;
            }
            if st.in_flight == 0 || st.in_flight + n <= STDIN_WINDOW {
                st.in_flight += n;
                return true;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn ack(&self, n: u32) {
        let mut st = lock(&self.state);
        st.in_flight = st.in_flight.saturating_sub(n as usize);
        self.cv.notify_all();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }
}

#[derive(Debug)]
struct Route {
    tx: SyncSender<GuestMsg>,
    stdin: Option<Arc<Credit>>,
}

#[derive(Debug)]
struct State {
    next_id: u32,
    wrapped: bool,
    routes: HashMap<u32, Route>,
    dead: Option<Dead>,
}

impl State {
    fn issued(&self, id: u32) -> bool {
        self.wrapped || (id != 0 && id < self.next_id)
    }
}

struct Shared {
    writer: Mutex<Box<dyn Write + Send>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("Shared").field("pending", &st.routes.len()).field("dead", &st.dead).finish()
    }
}

impl Shared {
    /// Marks the connection dead (first reason wins) and wakes every waiter.
    fn die(&self, why: Dead) {
        let routes = {
            let mut st = lock(&self.state);
            st.dead.get_or_insert(why);
            std::mem::take(&mut st.routes)
        };
        for r in routes.into_values() {
            if let Some(c) = r.stdin {
                c.close();
            }
        }
    }

    fn dead_error(&self) -> ClientError {
        match &lock(&self.state).dead {
            Some(d) => d.error(),
            None => ClientError::Closed { detail: "request abandoned".into() },
        }
    }

    /// Registers a new request id and its queue.
    fn open(self: &Arc<Self>, stdin: Option<Arc<Credit>>) -> Result<(RouteGuard, Receiver<GuestMsg>), ClientError> {
        let mut st = lock(&self.state);
        if let Some(d) = &st.dead {
            return Err(d.error());
        }
        let id = loop {
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(1);
            if st.next_id == 0 {
                st.next_id = 1;
                st.wrapped = true;
            }
            if !st.routes.contains_key(&id) {
                break id;
            }
        };
        let (tx, rx) = mpsc::sync_channel(ROUTE_QUEUE);
        st.routes.insert(id, Route { tx, stdin });
        Ok((RouteGuard { shared: Arc::clone(self), id }, rx))
    }

    fn send(&self, msg: &HostMsg) -> Result<(), ClientError> {
        let frame = frame::encode(msg).map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        if let Some(d) = &lock(&self.state).dead {
            return Err(d.error());
        }
        let res = {
            let mut w = lock(&self.writer);
            w.write_all(&frame).and_then(|()| w.flush())
        };
        res.map_err(|e| {
            self.die(Dead::Closed(format!("writing to the agent: {e}")));
            self.dead_error()
        })
    }

    /// Routes one message from the guest; `Err` is a protocol violation.
    fn dispatch(&self, msg: GuestMsg) -> Result<(), String> {
        let Some(id) = msg.id() else {
            return Err("a second Ready".into());
        };
        let (tx, credit) = {
            let st = lock(&self.state);
            match st.routes.get(&id) {
                Some(r) => (r.tx.clone(), r.stdin.clone()),
                None if st.issued(id) => return Ok(()),
                None => return Err(format!("{} for request id {id}, which the host never issued", msg.kind())),
            }
        };
        match &msg {
            GuestMsg::StdinAck { len, .. } => {
                if let Some(c) = credit {
                    c.ack(*len);
                }
                return Ok(());
            }
            GuestMsg::Exited { .. } => {
                if let Some(c) = &credit {
                    c.close();
                }
            }
            _ => {}
        }
        if tx.send(msg).is_err() {
            // The consumer is gone; later messages for this id are dropped as "issued".
            lock(&self.state).routes.remove(&id);
        }
        Ok(())
    }
}

/// Unregisters a request id when dropped.
#[derive(Debug)]
struct RouteGuard {
    shared: Arc<Shared>,
    id: u32,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.shared.state).routes.remove(&self.id)
            && let Some(c) = r.stdin
        {
            c.close();
        }
    }
}

fn reader_loop(reader: Box<dyn Read + Send>, shared: Arc<Shared>, ready_tx: mpsc::Sender<Result<Ready, ClientError>>) {
    let mut fr = FrameReader::new(reader);
    let first = match fr.read::<GuestMsg>() {
        Ok(Some(GuestMsg::Ready(r))) => Ok(r),
        Ok(Some(other)) => Err(Dead::Protocol(format!("first message was {} instead of Ready", other.kind()))),
        Ok(None) => Err(Dead::Closed("the agent closed the stream before Ready".into())),
        Err(e) => Err(Dead::from_frame(e)),
    };
    match first {
        Ok(r) => {
            if ready_tx.send(Ok(r)).is_err() {
                // connect() gave up (Ready timeout); nobody will use this connection.
                shared.die(Dead::Closed("Ready arrived after the timeout".into()));
                return;
            }
        }
        Err(d) => {
            shared.die(d.clone());
            let _ = ready_tx.send(Err(d.error()));
            return;
        }
    }
    drop(ready_tx);
    let why = loop {
        match fr.read::<GuestMsg>() {
            Ok(Some(msg)) => {
                if let Err(v) = shared.dispatch(msg) {
                    break Dead::Protocol(v);
                }
            }
            Ok(None) => break Dead::Closed("the agent closed the stream".into()),
            Err(e) => break Dead::from_frame(e),
        }
    };
    shared.die(why);
}

fn unexpected(op: &str, msg: &GuestMsg) -> ClientError {
    ClientError::Protocol(format!("unexpected {} in reply to {op}", msg.kind()))
}

/// A command to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the guest's `PATH`.
    pub argv: Vec<String>,
    /// Extra environment (wins over the guest's base env and [`Client::configure`]'s).
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// Pipe stdin (write it with [`Process::write_stdin`]); otherwise it is `/dev/null`.
    pub stdin: bool,
    /// Run on a PTY of this size (stdin/stdout/stderr all on it; output arrives as stdout).
    pub pty: Option<WinSize>,
    /// Kill the process group after this long; the exit status is then [`ExitStatus::TimedOut`].
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    /// A request for `argv` with every other field at its default.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest { argv: argv.into_iter().map(Into::into).collect(), ..Default::default() }
    }
}

/// One event of a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    /// Bytes on stdout (or the PTY).
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// The process ended; this is the last event.
    Exit(ExitStatus),
}

/// Writes stdin of one process, with flow control; cloneable across threads.
#[derive(Debug, Clone)]
struct StdinHandle {
    shared: Arc<Shared>,
    id: u32,
    credit: Arc<Credit>,
}

impl StdinHandle {
    fn write(&self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_CHUNK) {
            if !self.credit.acquire(chunk.len()) {
                return Err(match lock(&self.shared.state).dead.as_ref() {
                    Some(d) => d.error(),
                    None => ClientError::Finished { id: self.id },
                });
            }
            self.shared.send(&HostMsg::Stdin { id: self.id, data: chunk.to_vec() })?;
        }
        Ok(())
    }

    fn close(&self) -> Result<(), ClientError> {
        self.shared.send(&HostMsg::CloseStdin { id: self.id })
    }
}

/// A process running in the guest. Dropping it stops delivery of its events (it keeps
/// running in the guest; send [`Process::signal`] first to stop it).
#[derive(Debug)]
pub struct Process {
    route: RouteGuard,
    rx: Receiver<GuestMsg>,
    stdin: StdinHandle,
    pid: u32,
    stdin_ok: bool,
    pty: bool,
    exited: Option<ExitStatus>,
}

impl Process {
    /// The request id (what guest messages about this process carry).
    pub fn id(&self) -> u32 {
        self.route.id
    }

    /// The process's pid in the guest (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Writes bytes to its stdin (blocks while [`STDIN_WINDOW`] bytes are unacknowledged).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        if !self.stdin_ok {
            return Err(ClientError::InvalidRequest(format!(
                "process {} was started without stdin (set ExecRequest::stdin)",
                self.id()
            )));
        }
        self.stdin.write(data)
    }

    /// Closes its stdin (on a PTY: sends the EOF character).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin.close()
    }

    /// Resizes its PTY.
    pub fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        if !self.pty {
            return Err(ClientError::InvalidRequest(format!("process {} has no PTY", self.id())));
        }
        self.route.shared.send(&HostMsg::Resize { id: self.id(), size })
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.route.shared.send(&HostMsg::Signal { id: self.id(), signal })
    }

    fn event(&mut self, msg: GuestMsg) -> Result<ProcEvent, ClientError> {
        match msg {
            GuestMsg::Output { stream: Stream::Stdout, data, .. } => Ok(ProcEvent::Stdout(data)),
            GuestMsg::Output { stream: Stream::Stderr, data, .. } => Ok(ProcEvent::Stderr(data)),
            GuestMsg::Exited { status, .. } => {
                self.exited = Some(status);
                self.stdin.credit.close();
                Ok(ProcEvent::Exit(status))
            }
            GuestMsg::Error { message, .. } => Err(ClientError::Guest { message }),
            other => {
                Err(ClientError::Protocol(format!("unexpected {} for running process {}", other.kind(), self.id())))
            }
        }
    }

    /// The next event; after [`ProcEvent::Exit`] it returns [`ClientError::Finished`].
    pub fn recv(&mut self) -> Result<ProcEvent, ClientError> {
        if self.exited.is_some() {
            return Err(ClientError::Finished { id: self.id() });
        }
        match self.rx.recv() {
            Ok(msg) => self.event(msg),
            Err(_) => Err(self.route.shared.dead_error()),
        }
    }

    /// Like [`Process::recv`], but `Ok(None)` when nothing arrived within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ProcEvent>, ClientError> {
        if self.exited.is_some() {
            return Err(ClientError::Finished { id: self.id() });
        }
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => self.event(msg).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.route.shared.dead_error()),
        }
    }

    /// The exit status, once [`ProcEvent::Exit`] was received.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited
    }
}

/// The host side of one agent connection. Cheap to share (`&Client` from many threads).
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("shared", &self.shared).finish()
    }
}

impl Client {
    /// Starts the reader thread on `reader` and waits up to `ready_timeout` for the guest's
    /// `Ready`. On a timeout the reader thread stays blocked until the stream ends: close the
    /// stream (stop the VM) to release it.
    pub fn connect(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        ready_timeout: Duration,
    ) -> Result<(Client, Ready), ClientError> {
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            state: Mutex::new(State { next_id: 1, wrapped: false, routes: HashMap::new(), dead: None }),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let for_reader = Arc::clone(&shared);
        thread::Builder::new()
            .name("capsem-agent-reader".into())
            .spawn(move || reader_loop(reader, for_reader, ready_tx))
            .map_err(|e| ClientError::LocalIo { what: "starting the agent reader thread", source: e })?;
        let ready = match ready_rx.recv_timeout(ready_timeout) {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {
                shared.die(Dead::Closed(format!("no Ready within {ready_timeout:?}")));
                return Err(ClientError::ReadyTimeout(ready_timeout));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(shared.dead_error()),
        };
        if ready.protocol != PROTOCOL_VERSION {
            let why = format!("guest speaks protocol {}, this host {PROTOCOL_VERSION}", ready.protocol);
            shared.die(Dead::Protocol(why.clone()));
            return Err(ClientError::Protocol(why));
        }
        Ok((Client { shared }, ready))
    }

    fn recv(&self, rx: &Receiver<GuestMsg>) -> Result<GuestMsg, ClientError> {
        rx.recv().map_err(|_| self.shared.dead_error())
    }

    /// Sets the environment for every later exec and writes boot files (parents created,
    /// each written atomically). The whole request must fit in one frame
    /// ([`MAX_FRAME`](crate::MAX_FRAME)); use [`Client::write_file`] for large files.
    pub fn configure(&self, env: BTreeMap<String, String>, files: Vec<BootFile>) -> Result<(), ClientError> {
        let (route, rx) = self.shared.open(None)?;
        self.shared.send(&HostMsg::Configure { id: route.id, env, files })?;
        match self.recv(&rx)? {
            GuestMsg::Ok { .. } => Ok(()),
            GuestMsg::Error { message, .. } => Err(ClientError::Guest { message }),
            other => Err(unexpected("Configure", &other)),
        }
    }

    /// Starts a process; returns once the guest confirmed it started.
    pub fn exec(&self, req: ExecRequest) -> Result<Process, ClientError> {
        if req.argv.is_empty() {
            return Err(ClientError::InvalidRequest("exec: empty argv".into()));
        }
        let credit = Arc::new(Credit::default());
        let (route, rx) = self.shared.open(Some(Arc::clone(&credit)))?;
        let id = route.id;
        let stdin_ok = req.stdin || req.pty.is_some();
        let pty = req.pty.is_some();
        self.shared.send(&HostMsg::Exec {
            id,
            argv: req.argv,
            env: req.env,
            cwd: req.cwd,
            stdin: req.stdin,
            pty: req.pty,
            timeout_ms: req.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        })?;
        match self.recv(&rx)? {
            GuestMsg::Started { pid, .. } => Ok(Process {
                stdin: StdinHandle { shared: Arc::clone(&self.shared), id, credit },
                route,
                rx,
                pid,
                stdin_ok,
                pty,
                exited: None,
            }),
            GuestMsg::Error { message, .. } => Err(ClientError::Guest { message }),
            other => Err(unexpected("Exec", &other)),
        }
    }

    /// Runs a process to completion, streaming its output into `stdout`/`stderr` as it arrives.
    /// With `stdin`, it is pumped on a separate thread (then closed at EOF) and the request's
    /// `stdin` flag is set; the thread stops at the next write after the process exited.
    pub fn run(
        &self,
        mut req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitStatus, ClientError> {
        if stdin.is_some() && req.pty.is_none() {
            req.stdin = true;
        }
        let mut process = self.exec(req)?;
        if let Some(input) = stdin {
            let handle = process.stdin.clone();
            thread::Builder::new()
                .name(format!("capsem-stdin-{}", process.id()))
                .spawn(move || pump_stdin(input, &handle))
                .map_err(|e| ClientError::LocalIo { what: "starting the stdin thread", source: e })?;
        }
        loop {
            match process.recv()? {
                ProcEvent::Stdout(d) => stdout
                    .write_all(&d)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| ClientError::LocalIo { what: "writing stdout", source: e })?,
                ProcEvent::Stderr(d) => stderr
                    .write_all(&d)
                    .and_then(|()| stderr.flush())
                    .map_err(|e| ClientError::LocalIo { what: "writing stderr", source: e })?,
                ProcEvent::Exit(status) => return Ok(status),
            }
        }
    }

    /// Writes `data` to `path` in the guest (created or truncated, then `mode` applied;
    /// written to a temporary file and renamed). The directory must exist.
    pub fn write_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<(), ClientError> {
        let (route, rx) = self.shared.open(None)?;
        let id = route.id;
        self.shared.send(&HostMsg::WriteFile { id, path: path.into(), mode })?;
        for chunk in data.chunks(MAX_CHUNK) {
            // The guest answers early when it cannot write: stop sending then.
            if let Ok(reply) = rx.try_recv() {
                self.shared.send(&HostMsg::FileEnd { id })?;
                return match reply {
                    GuestMsg::Error { message, .. } => Err(ClientError::Guest { message }),
                    other => Err(unexpected("WriteFile", &other)),
                };
            }
            self.shared.send(&HostMsg::FileChunk { id, data: chunk.to_vec() })?;
        }
        self.shared.send(&HostMsg::FileEnd { id })?;
        match self.recv(&rx)? {
            GuestMsg::Ok { .. } => Ok(()),
            GuestMsg::Error { message, .. } => Err(ClientError::Guest { message }),
            other => Err(unexpected("WriteFile", &other)),
        }
    }

    /// Reads the file at `path` in the guest (at most [`MAX_READ_FILE`] bytes).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let (route, rx) = self.shared.open(None)?;
        self.shared.send(&HostMsg::ReadFile { id: route.id, path: path.into() })?;
        let mut data = Vec::new();
        loop {
            match self.recv(&rx)? {
                GuestMsg::FileChunk { data: chunk, .. } => {
                    if (data.len() + chunk.len()) as u64 > MAX_READ_FILE {
                        return Err(ClientError::Protocol(format!(
                            "read {path}: the guest sent more than {MAX_READ_FILE} bytes"
                        )));
                    }
                    data.extend_from_slice(&chunk);
                }
                GuestMsg::FileEnd { size, .. } if size == data.len() as u64 => return Ok(data),
                GuestMsg::FileEnd { size, .. } => {
                    return Err(ClientError::Protocol(format!(
                        "read {path}: the guest announced {size} bytes but sent {}",
                        data.len()
                    )));
                }
                GuestMsg::Error { message, .. } => return Err(ClientError::Guest { message }),
                other => return Err(unexpected("ReadFile", &other)),
            }
        }
    }

    /// Asks the guest to power off. The guest answers before it goes down; a connection that
    /// closes instead of answering also counts as done.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        let (route, rx) = self.shared.open(None)?;
        self.shared.send(&HostMsg::Shutdown { id: route.id })?;
        match self.recv(&rx) {
            Ok(GuestMsg::Ok { .. }) | Err(ClientError::Closed { .. }) => Ok(()),
            Ok(GuestMsg::Error { message, .. }) => Err(ClientError::Guest { message }),
            Ok(other) => Err(unexpected("Shutdown", &other)),
            Err(e) => Err(e),
        }
    }
}

fn pump_stdin(mut input: Box<dyn Read + Send>, handle: &StdinHandle) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if handle.write(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A failing local stdin ends the input, like EOF.
            Err(_) => break,
        }
    }
    let _ = handle.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn client_is_send_sync_and_process_is_send() {
        assert_send_sync::<Client>();
        fn assert_send<T: Send>() {}
        assert_send::<Process>();
    }

    #[test]
    fn credit_window_blocks_and_closes() {
        let c = Credit::default();
        assert!(c.acquire(STDIN_WINDOW));
        c.ack(10);
        assert!(c.acquire(10));
        c.close();
        assert!(!c.acquire(1));
    }
}
