//! Running processes for the host: spawning (pipes or a PTY, each in its own process group),
//! streaming stdout and stderr as they are produced, stdin with acknowledgements, timeouts,
//! signals and PTY resizes.
//!
//! Per process there is one *supervisor* thread, the only one that sends its `Output` and
//! `Exited` messages (so `Exited` always follows the last output), fed by an event channel
//! from reader threads (one per output stream, bounded by [`READ_AHEAD`] chunks), and from the
//! [`Reaper`] with the exit status. After the exit, output is forwarded until every stream hit
//! EOF, or until nothing arrived for [`EXIT_GRACE`] (a background process still holding the
//! stream must not delay `Exited` forever).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use capsem_proto::{ExitStatus, GuestMsg, MAX_CHUNK, STDIN_WINDOW, Stream, WinSize};
use pty_process::blocking::Pty;
use rustix::process::{Pid, Signal, kill_process_group};

use crate::reaper::Reaper;
use crate::serve::Outbox;
use crate::{env, lock, os_msg, spawn_thread};

/// Output chunks a reader may have queued ahead of the supervisor.
pub const READ_AHEAD: usize = 4;

/// How long output may keep arriving after the process exited before `Exited` is sent anyway.
pub const EXIT_GRACE: Duration = Duration::from_millis(250);

/// Stdin bytes queued for one process beyond which the host is ignoring flow control.
const STDIN_QUEUE_LIMIT: usize = 4 * STDIN_WINDOW;

/// The running processes, by request id.
pub(crate) type ExecTable = Arc<Mutex<HashMap<u32, Arc<Running>>>>;

enum Ev {
    Data(Stream, Vec<u8>),
    Eof,
    Exit(ExitStatus),
}

enum StdinCmd {
    Data(Vec<u8>),
    Close,
}

/// Counting semaphore bounding a reader's queued chunks; closed when the supervisor is done.
#[derive(Default)]
struct Slots {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.1 {
                return false;
            }
            if st.0 < READ_AHEAD {
                st.0 += 1;
                return true;
            }
            st = self.cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self) {
        let mut st = lock(&self.state);
        st.0 = st.0.saturating_sub(1);
        self.cv.notify_all();
    }

    fn close(&self) {
        lock(&self.state).1 = true;
        self.cv.notify_all();
    }
}

/// A running process, as seen by the serve loop.
pub(crate) struct Running {
    id: u32,
    pgid: Pid,
    stdin: Mutex<Option<Sender<StdinCmd>>>,
    stdin_queued: Arc<AtomicUsize>,
    pty: Option<Arc<Pty>>,
}

impl Running {
    /// Queues stdin bytes (acknowledged once written or dropped).
    pub(crate) fn stdin(&self, data: Vec<u8>) -> Result<(), String> {
        let guard = lock(&self.stdin);
        let Some(tx) = guard.as_ref() else {
            return Err(format!("stdin of process {}: not piped (exec without stdin)", self.id));
        };
        let queued = self.stdin_queued.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        if queued > STDIN_QUEUE_LIMIT {
            self.stdin_queued.fetch_sub(data.len(), Ordering::SeqCst);
            return Err(format!("stdin of process {}: more than {STDIN_QUEUE_LIMIT} bytes unacknowledged", self.id));
        }
        let _ = tx.send(StdinCmd::Data(data));
        Ok(())
    }

    /// Closes stdin (PTY: sends the EOF character).
    pub(crate) fn close_stdin(&self) {
        if let Some(tx) = lock(&self.stdin).as_ref() {
            let _ = tx.send(StdinCmd::Close);
        }
    }

    /// Sets the PTY size (the kernel sends SIGWINCH to the foreground group).
    pub(crate) fn resize(&self, size: WinSize) -> Result<(), String> {
        let pty = self.pty.as_ref().ok_or_else(|| format!("resize process {}: it has no PTY", self.id))?;
        pty.resize(pty_process::Size::new(size.rows, size.cols)).map_err(|e| format!("resize process {}: {e}", self.id))
    }

    /// Sends `signal` to the process group.
    pub(crate) fn signal(&self, signal: i32) -> Result<(), String> {
        let sig = Signal::from_named_raw(signal)
            .ok_or_else(|| format!("signal process {}: unsupported signal {signal}", self.id))?;
        match kill_process_group(self.pgid, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(format!("signal process {}: {e}", self.id)),
        }
    }

    /// SIGKILLs the process group (serve loop ending).
    pub(crate) fn kill(&self) {
        let _ = kill_process_group(self.pgid, Signal::KILL);
    }
}

/// What the exec machinery needs from the serve loop.
#[derive(Clone)]
pub(crate) struct ExecCtx {
    pub out: Arc<Outbox>,
    pub reaper: Reaper,
    pub table: ExecTable,
}

enum Io {
    Pipes { stdin: Option<ChildStdin>, stdout: std::process::ChildStdout, stderr: std::process::ChildStderr },
    Pty(Arc<Pty>),
}

/// Starts Exec `id`: on success `Started` has been sent and the supervisor runs; the error is
/// the message for the host (`exec /nope: No such file or directory`).
pub(crate) fn start(
    ctx: &ExecCtx,
    id: u32,
    spec: capsem_proto::ExecRequest,
    configured_env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let argv0 = spec.argv.first().ok_or("exec: empty argv")?.clone();
    if lock(&ctx.table).contains_key(&id) {
        return Err(format!("exec {argv0}: request id {id} is already a running process"));
    }
    let envs = env::merge(configured_env, &spec.env, spec.pty.is_some());
    let program =
        env::resolve(&argv0, envs.get("PATH").map(String::as_str)).map_err(|why| format!("exec {argv0}: {why}"))?;
    let cwd = PathBuf::from(spec.cwd.as_deref().unwrap_or("/"));
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("exec {argv0}: cwd {}: Not a directory", cwd.display())),
        Err(e) => return Err(format!("exec {argv0}: cwd {}: {}", cwd.display(), os_msg(&e))),
    }
    let mut cmd = Command::new(&program);
    cmd.arg0(&argv0).args(&spec.argv[1..]).env_clear().envs(&envs).current_dir(&cwd);

    let (ev_tx, ev_rx) = mpsc::channel::<Ev>();
    let exit_tx = ev_tx.clone();
    let on_exit = Box::new(move |status| {
        let _ = exit_tx.send(Ev::Exit(status));
    });
    let spawn_err = |e: &dyn std::fmt::Display| format!("exec {argv0}: {e}");
    let (child, io): (Child, Io) = match spec.pty {
        None => {
            cmd.process_group(0)
                .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = ctx
                .reaper
                .spawn(
                    || {
                        let c = cmd.spawn()?;
                        let pid = c.id();
                        Ok((c, pid))
                    },
                    on_exit,
                )
                .map_err(|e| spawn_err(&os_msg(&e)))?;
            let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
                return Err(spawn_err(&"stdout/stderr pipes missing"));
            };
            (child, Io::Pipes { stdin, stdout, stderr })
        }
        Some(size) => {
            let mut pty_slot = None;
            let child = ctx
                .reaper
                .spawn(
                    || {
                        let (pty, pts) = pty_process::blocking::open().map_err(pty_err)?;
                        pty.resize(pty_process::Size::new(size.rows, size.cols)).map_err(pty_err)?;
                        let c = pty_process::blocking::Command::from(cmd).spawn(pts).map_err(pty_err)?;
                        pty_slot = Some(pty);
                        let pid = c.id();
                        Ok((c, pid))
                    },
                    on_exit,
                )
                .map_err(|e| spawn_err(&os_msg(&e)))?;
            let Some(pty) = pty_slot else { return Err(spawn_err(&"PTY missing")) };
            (child, Io::Pty(Arc::new(pty)))
        }
    };
    let pid = child.id();
    // The Child handle is dropped without waiting: the Reaper owns the exit status.
    drop(child);
    let Some(pgid) = Pid::from_raw(pid as i32) else { return Err(spawn_err(&"child has pid 0")) };

    let (stdin_tx, stdin_rx) = mpsc::channel::<StdinCmd>();
    let stdin_queued = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Slots::default());
    let (stdin_sink, streams, pty) = match io {
        Io::Pipes { stdin, stdout, stderr } => {
            let sink = stdin.map(|s| StdinSink::Pipe(Some(s)));
            let streams: Vec<(Stream, Box<dyn Read + Send>)> =
                vec![(Stream::Stdout, Box::new(stdout)), (Stream::Stderr, Box::new(stderr))];
            (sink, streams, None)
        }
        Io::Pty(pty) => {
            let streams: Vec<(Stream, Box<dyn Read + Send>)> = vec![(Stream::Stdout, Box::new(PtyReader(pty.clone())))];
            (Some(StdinSink::Pty(pty.clone())), streams, Some(pty))
        }
    };
    let running = Arc::new(Running {
        id,
        pgid,
        stdin: Mutex::new(stdin_sink.as_ref().map(|_| stdin_tx)),
        stdin_queued: Arc::clone(&stdin_queued),
        pty,
    });
    lock(&ctx.table).insert(id, Arc::clone(&running));
    let _ = ctx.out.send(&GuestMsg::Started { id, pid });

    let n_streams = streams.len();
    for (stream, src) in streams {
        let (tx, slots) = (ev_tx.clone(), Arc::clone(&slots));
        if let Err(e) = spawn_thread(format!("capsem-out-{id}"), move || read_stream(src, stream, &tx, &slots)) {
            eprintln!("capsem-agent: process {id}: cannot start an output thread: {e}");
            let _ = ev_tx.send(Ev::Eof);
        }
    }
    drop(ev_tx);
    if let Some(sink) = stdin_sink {
        let out = Arc::clone(&ctx.out);
        let queued = Arc::clone(&stdin_queued);
        if let Err(e) = spawn_thread(format!("capsem-in-{id}"), move || write_stdin(id, sink, &stdin_rx, &out, &queued))
        {
            eprintln!("capsem-agent: process {id}: cannot start the stdin thread: {e}");
        }
    }
    let sup = Supervisor { id, out: Arc::clone(&ctx.out), table: Arc::clone(&ctx.table), running, slots, n_streams };
    let timeout = spec.timeout;
    if let Err(e) = spawn_thread(format!("capsem-exec-{id}"), move || sup.run(&ev_rx, timeout)) {
        // Without a supervisor nobody would report the exit: kill it and say so.
        let _ = kill_process_group(pgid, Signal::KILL);
        lock(&ctx.table).remove(&id);
        let _ = ctx.out.send(&GuestMsg::Exited { id, status: ExitStatus::Code(-1) });
        eprintln!("capsem-agent: process {id}: cannot start its supervisor: {e}");
    }
    Ok(())
}

fn pty_err(e: pty_process::Error) -> std::io::Error {
    match e {
        pty_process::Error::Io(e) => e,
        pty_process::Error::Rustix(e) => e.into(),
    }
}

/// Reads the PTY master through a shared handle.
struct PtyReader(Arc<Pty>);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

fn read_stream(mut src: Box<dyn Read + Send>, stream: Stream, tx: &Sender<Ev>, slots: &Slots) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !slots.acquire() || tx.send(Ev::Data(stream, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO is how a PTY master reports that every slave fd is closed.
            Err(_) => break,
        }
    }
    let _ = tx.send(Ev::Eof);
}

enum StdinSink {
    Pipe(Option<ChildStdin>),
    Pty(Arc<Pty>),
}

fn write_stdin(id: u32, mut sink: StdinSink, rx: &Receiver<StdinCmd>, out: &Outbox, queued: &AtomicUsize) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            StdinCmd::Data(data) => {
                match &mut sink {
                    StdinSink::Pipe(Some(w)) => {
                        if w.write_all(&data).is_err() {
                            // The process closed its stdin: drop (but acknowledge) the rest.
                            sink = StdinSink::Pipe(None);
                        }
                    }
                    StdinSink::Pipe(None) => {}
                    StdinSink::Pty(pty) => {
                        let _ = (&**pty).write_all(&data);
                    }
                }
                queued.fetch_sub(data.len(), Ordering::SeqCst);
                let _ = out.send(&GuestMsg::StdinAck { id, len: data.len() as u32 });
            }
            StdinCmd::Close => match &mut sink {
                StdinSink::Pipe(w) => *w = None,
                // VEOF (^D) at the start of a line ends the input of a canonical-mode reader.
                StdinSink::Pty(pty) => {
                    let _ = (&**pty).write_all(b"\x04");
                }
            },
        }
    }
}

struct Supervisor {
    id: u32,
    out: Arc<Outbox>,
    table: ExecTable,
    running: Arc<Running>,
    slots: Arc<Slots>,
    n_streams: usize,
}

impl Supervisor {
    fn run(self, rx: &Receiver<Ev>, timeout: Option<Duration>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut open = self.n_streams;
        let mut exit: Option<ExitStatus> = None;
        let mut timed_out = false;
        let mut grace_until: Option<Instant> = None;
        loop {
            if exit.is_some() && open == 0 {
                break;
            }
            let until = if exit.is_some() {
                grace_until
            } else if timed_out {
                None
            } else {
                deadline
            };
            let ev = match until {
                Some(t) => match rx.recv_timeout(t.saturating_duration_since(Instant::now())) {
                    Ok(ev) => ev,
                    Err(RecvTimeoutError::Timeout) if exit.is_some() => break,
                    Err(RecvTimeoutError::Timeout) => {
                        timed_out = true;
                        self.running.kill();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(ev) => ev,
                    Err(_) => break,
                },
            };
            match ev {
                Ev::Data(stream, data) => {
                    let _ = self.out.send(&GuestMsg::Output { id: self.id, stream, data });
                    self.slots.release();
                    if exit.is_some() {
                        grace_until = Some(Instant::now() + EXIT_GRACE);
                    }
                }
                Ev::Eof => open = open.saturating_sub(1),
                Ev::Exit(status) => {
                    exit = Some(status);
                    grace_until = Some(Instant::now() + EXIT_GRACE);
                }
            }
        }
        self.slots.close();
        *lock(&self.running.stdin) = None;
        lock(&self.table).remove(&self.id);
        let status = if timed_out { ExitStatus::TimedOut } else { exit.unwrap_or(ExitStatus::Code(-1)) };
        let _ = self.out.send(&GuestMsg::Exited { id: self.id, status });
    }
}
