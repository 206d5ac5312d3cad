//! The serve loop: reads [`HostMsg`]s from the host, answers with [`GuestMsg`]s, and owns the
//! per-connection state (Configure env, running processes, files being written).
//!
//! The loop itself never blocks on a process: exec output, stdin and file reads run on their
//! own threads and share the writer through [`Outbox`], which writes each frame whole.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsem_proto::frame::{self, FrameError, FrameReader};
use capsem_proto::{GuestMsg, HostMsg};

use crate::exec::{self, ExecCtx, ExecTable};
use crate::files::{self, Upload};
use crate::reaper::{ReapMode, Reaper};
use crate::{lock, ready};

/// Longest error message sent to the host (longer ones are cut).
const MAX_ERROR_MESSAGE: usize = 4096;

/// The writer half of the connection, shared by every thread that answers the host.
pub struct Outbox {
    writer: Mutex<Box<dyn Write + Send>>,
    broken: AtomicBool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("broken", &self.broken.load(Ordering::Relaxed)).finish()
    }
}

impl Outbox {
    fn new(writer: Box<dyn Write + Send>) -> Outbox {
        Outbox { writer: Mutex::new(writer), broken: AtomicBool::new(false) }
    }

    /// Sends one message as one frame; after the first failure every send fails at once.
    pub fn send(&self, msg: &GuestMsg) -> Result<(), FrameError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(FrameError::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        let bytes = frame::encode(msg)?;
        let mut w = lock(&self.writer);
        let res = w.write_all(&bytes).and_then(|()| w.flush());
        if res.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        Ok(res?)
    }

    /// Sends `Error { id, message }` (message cut to a sane length).
    pub fn send_error(&self, id: u32, mut message: String) {
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let _ = self.send(&GuestMsg::Error { id, message });
    }
}

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Who reaps children ([`ReapMode::All`] when the agent is PID 1).
    pub reap: ReapMode,
    /// Guest uptime when the agent started, for `Ready` (read at serve time when `None`).
    pub started_uptime_ms: Option<u64>,
    /// The init script's uptime stamp (default [`ready::INIT_UPTIME_PATH`]).
    pub init_uptime_path: PathBuf,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            reap: ReapMode::Own,
            started_uptime_ms: None,
            init_uptime_path: PathBuf::from(ready::INIT_UPTIME_PATH),
        }
    }
}

/// How a serve loop ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The host asked for `Shutdown` (and got `Ok`).
    Shutdown,
    /// The host closed the stream.
    HostClosed,
}

/// Why a serve loop failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The stream from the host failed or carried an invalid frame.
    #[error("reading from the host: {0}")]
    Receive(#[source] FrameError),
    /// `Ready` could not be sent.
    #[error("sending Ready to the host: {0}")]
    Send(#[source] FrameError),
    /// The child reaper could not start.
    #[error("starting the child reaper: {0}")]
    Reaper(#[source] std::io::Error),
}

enum Transfer {
    Writing(Upload),
    /// Already answered with an error; swallow the rest.
    Failed,
}

struct Session {
    ctx: ExecCtx,
    env: BTreeMap<String, String>,
    transfers: HashMap<u32, Transfer>,
}

impl Session {
    fn out(&self) -> &exec::ExecCtx {
        &self.ctx
    }

    fn running(&self, id: u32) -> Option<Arc<exec::Running>> {
        lock(&self.ctx.table).get(&id).cloned()
    }

    /// Handles one message; `true` when it was Shutdown.
    fn handle(&mut self, msg: HostMsg) -> bool {
        let out = Arc::clone(&self.out().out);
        match msg {
            HostMsg::Configure { id, env, files } => {
                self.env = env;
                match files::write_boot_files(&files) {
                    Ok(()) => drop(out.send(&GuestMsg::Ok { id })),
                    Err(m) => out.send_error(id, m),
                }
            }
            HostMsg::Exec { id, argv, env, cwd, stdin, pty, timeout_ms } => {
                let spec = capsem_proto::ExecRequest {
                    argv,
                    env,
                    cwd,
                    stdin,
                    pty,
                    timeout: timeout_ms.map(Duration::from_millis),
                };
                if let Err(m) = exec::start(&self.ctx, id, spec, &self.env) {
                    out.send_error(id, m);
                }
            }
            // Messages for a process that already exited are dropped: they race with its exit.
            HostMsg::Stdin { id, data } => {
                if let Some(r) = self.running(id)
                    && let Err(m) = r.stdin(data)
                {
                    out.send_error(id, m);
                }
            }
            HostMsg::CloseStdin { id } => {
                if let Some(r) = self.running(id) {
                    r.close_stdin();
                }
            }
            HostMsg::Resize { id, size } => {
                if let Some(r) = self.running(id)
                    && let Err(m) = r.resize(size)
                {
                    out.send_error(id, m);
                }
            }
            HostMsg::Signal { id, signal } => {
                if let Some(r) = self.running(id)
                    && let Err(m) = r.signal(signal)
                {
                    out.send_error(id, m);
                }
            }
            HostMsg::WriteFile { id, path, mode } => {
                if self.transfers.contains_key(&id) {
                    out.send_error(id, format!("write {path}: request id {id} is already a file transfer"));
                    return false;
                }
                let t = match Upload::begin(&path, mode) {
                    Ok(up) => Transfer::Writing(up),
                    Err(m) => {
                        out.send_error(id, m);
                        Transfer::Failed
                    }
                };
                self.transfers.insert(id, t);
            }
            HostMsg::FileChunk { id, data } => match self.transfers.get_mut(&id) {
                Some(Transfer::Writing(up)) => {
                    if let Err(m) = up.write(&data) {
                        out.send_error(id, m);
                        self.transfers.insert(id, Transfer::Failed);
                    }
                }
                Some(Transfer::Failed) => {}
                None => out.send_error(id, format!("file chunk for request id {id}, which is not a WriteFile")),
            },
            HostMsg::FileEnd { id } => match self.transfers.remove(&id) {
                Some(Transfer::Writing(up)) => match up.finish() {
                    Ok(()) => drop(out.send(&GuestMsg::Ok { id })),
                    Err(m) => out.send_error(id, m),
                },
                Some(Transfer::Failed) => {}
                None => out.send_error(id, format!("file end for request id {id}, which is not a WriteFile")),
            },
            HostMsg::ReadFile { id, path } => files::spawn_read(out, id, path),
            HostMsg::Shutdown { id } => {
                let _ = out.send(&GuestMsg::Ok { id });
                return true;
            }
        }
        false
    }
}

/// Serves one host connection: sends `Ready`, then answers requests until the host sends
/// `Shutdown` or closes the stream. Processes still running at the end are killed
/// (`SIGKILL` to their groups).
pub fn serve<R, W>(reader: R, writer: W, opts: ServeOptions) -> Result<ServeEnd, AgentError>
where
    R: Read,
    W: Write + Send + 'static,
{
    let reaper = Reaper::new(opts.reap).map_err(AgentError::Reaper)?;
    let out = Arc::new(Outbox::new(Box::new(writer)));
    out.send(&GuestMsg::Ready(ready::ready(opts.started_uptime_ms, &opts.init_uptime_path)))
        .map_err(AgentError::Send)?;
    let table: ExecTable = Arc::default();
    let mut session = Session { ctx: ExecCtx { out, reaper, table }, env: BTreeMap::new(), transfers: HashMap::new() };
    let mut frames = FrameReader::new(reader);
    let end = loop {
        match frames.read::<HostMsg>() {
            Ok(Some(msg)) => {
                if session.handle(msg) {
                    break Ok(ServeEnd::Shutdown);
                }
            }
            Ok(None) => break Ok(ServeEnd::HostClosed),
            Err(e) => break Err(AgentError::Receive(e)),
        }
    };
    let running: Vec<_> = lock(&session.ctx.table).values().cloned().collect();
    for r in running {
        r.kill();
    }
    end
}
