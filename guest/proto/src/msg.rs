//! The protocol's message types: [`HostMsg`] (host → guest) and [`GuestMsg`] (guest → host).
//!
//! The payload of a frame is the postcard encoding of one of these enums. Postcard encodes an
//! enum variant by its index, so **variants and fields are append-only**: never reorder or
//! remove one without bumping [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this message set; the guest reports it in [`Ready::protocol`] and the client
/// refuses a guest that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest data chunk either side puts in one message (stdin, output, file chunks).
pub const MAX_CHUNK: usize = 64 * 1024;

/// Stdin flow control: most bytes of [`HostMsg::Stdin`] the host may have sent for one process
/// that the guest has not yet acknowledged with [`GuestMsg::StdinAck`].
pub const STDIN_WINDOW: usize = 1024 * 1024;

/// Terminal size of a PTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A file the guest writes at boot ([`HostMsg::Configure`]): parents created, written atomically.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits (`0o644`); bits outside `0o7777` are ignored.
    pub mode: u32,
    /// Contents.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// Append to the file (created if missing; `mode` then applies only to a new file) instead
    /// of replacing it: how the egress CA joins the guest's CA bundle.
    pub append: bool,
}

impl std::fmt::Debug for BootFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("append", &self.append)
            .finish()
    }
}

/// Which output stream a chunk came from. In PTY mode everything is [`Stream::Stdout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output (or the PTY).
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Its timeout expired; its process group was killed with `SIGKILL`.
    TimedOut,
}

impl ExitStatus {
    /// Whether this is `Code(0)`.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::TimedOut => f.write_str("timed out"),
        }
    }
}

/// What the guest says first on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The guest's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The agent's version (its crate version).
    pub version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Guest uptime (`/proc/uptime`) when the agent started, in milliseconds.
    pub uptime_ms: u64,
    /// Guest uptime when the init script started (`/run/capsem/init-uptime`), if it wrote one.
    pub init_started_ms: Option<u64>,
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Boot-time settings: `env` is added to every later exec (replacing an earlier Configure's),
    /// `files` are written with their parents created. Answered by `Ok` or `Error`.
    Configure {
        /// Request id.
        id: u32,
        /// Environment for every exec (after the base env, before the request's env).
        env: BTreeMap<String, String>,
        /// Files to write.
        files: Vec<BootFile>,
    },
    /// Start a process. Answered by `Started` (then `Output`… and `Exited`) or `Error`.
    Exec {
        /// Request id; later messages about this process carry it.
        id: u32,
        /// Program and arguments; `argv[0]` is looked up in the merged env's `PATH`.
        argv: Vec<String>,
        /// Environment added last (wins over the base and Configure env).
        env: BTreeMap<String, String>,
        /// Working directory (default `/`).
        cwd: Option<String>,
        /// Pipe stdin (fed by `Stdin`, closed by `CloseStdin`); otherwise `/dev/null`.
        stdin: bool,
        /// Run on a new PTY of this size (stdin, stdout and stderr all on it).
        pty: Option<WinSize>,
        /// Kill the process group after this long and report `TimedOut`.
        timeout_ms: Option<u64>,
    },
    /// Bytes for the stdin of process `id` (at most [`MAX_CHUNK`]).
    Stdin {
        /// Process id (the Exec's request id).
        id: u32,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Close the stdin of process `id` (in PTY mode: send the EOF character).
    CloseStdin {
        /// Process id.
        id: u32,
    },
    /// Resize the PTY of process `id`.
    Resize {
        /// Process id.
        id: u32,
        /// New size.
        size: WinSize,
    },
    /// Send `signal` to the process group of process `id`.
    Signal {
        /// Process id.
        id: u32,
        /// Signal number (`9` = SIGKILL).
        signal: i32,
    },
    /// Start writing the file `path` (created or truncated with `mode`; its directory must
    /// exist). Followed by `FileChunk`… and `FileEnd`; answered by `Ok` or `Error`.
    WriteFile {
        /// Request id.
        id: u32,
        /// Absolute path in the guest.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Contents of the file being written by request `id` (at most [`MAX_CHUNK`]).
    FileChunk {
        /// Request id of the WriteFile.
        id: u32,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// End of the file being written: the guest renames it into place and answers.
    FileEnd {
        /// Request id of the WriteFile.
        id: u32,
    },
    /// Read a file: answered by `FileChunk`… and `FileEnd`, or `Error`.
    ReadFile {
        /// Request id.
        id: u32,
        /// Absolute path in the guest.
        path: String,
    },
    /// Power the guest off (after `Ok`).
    Shutdown {
        /// Request id.
        id: u32,
    },
}

impl HostMsg {
    /// The request id the message carries.
    pub fn id(&self) -> u32 {
        match self {
            HostMsg::Configure { id, .. }
            | HostMsg::Exec { id, .. }
            | HostMsg::Stdin { id, .. }
            | HostMsg::CloseStdin { id }
            | HostMsg::Resize { id, .. }
            | HostMsg::Signal { id, .. }
            | HostMsg::WriteFile { id, .. }
            | HostMsg::FileChunk { id, .. }
            | HostMsg::FileEnd { id }
            | HostMsg::ReadFile { id, .. }
            | HostMsg::Shutdown { id } => *id,
        }
    }
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// First message on every connection.
    Ready(Ready),
    /// The process of Exec `id` started.
    Started {
        /// Request id.
        id: u32,
        /// Its pid in the guest (also its process group).
        pid: u32,
    },
    /// Output of process `id` (at most [`MAX_CHUNK`]), in the order produced per stream.
    Output {
        /// Process id.
        id: u32,
        /// Which stream.
        stream: Stream,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Process `id` ended; nothing more comes for this id. Sent after all its output.
    Exited {
        /// Process id.
        id: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The guest consumed `len` bytes of stdin of process `id` (see [`STDIN_WINDOW`]).
    StdinAck {
        /// Process id.
        id: u32,
        /// Bytes consumed (written to the process, or dropped because its stdin is closed).
        len: u32,
    },
    /// Contents of the file read by ReadFile `id`.
    FileChunk {
        /// Request id.
        id: u32,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// End of the file read by ReadFile `id`.
    FileEnd {
        /// Request id.
        id: u32,
        /// Total bytes sent.
        size: u64,
    },
    /// Request `id` succeeded (Configure, WriteFile, Shutdown).
    Ok {
        /// Request id.
        id: u32,
    },
    /// Request `id` failed; `message` names the path or argv and the OS error.
    Error {
        /// Request id.
        id: u32,
        /// Human-readable cause, e.g. `exec /nope: No such file or directory`.
        message: String,
    },
}

impl GuestMsg {
    /// The request id the message carries (`None` for `Ready`).
    pub fn id(&self) -> Option<u32> {
        match self {
            GuestMsg::Ready(_) => None,
            GuestMsg::Started { id, .. }
            | GuestMsg::Output { id, .. }
            | GuestMsg::Exited { id, .. }
            | GuestMsg::StdinAck { id, .. }
            | GuestMsg::FileChunk { id, .. }
            | GuestMsg::FileEnd { id, .. }
            | GuestMsg::Ok { id }
            | GuestMsg::Error { id, .. } => Some(*id),
        }
    }

    /// The variant's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestMsg::Ready(_) => "Ready",
            GuestMsg::Started { .. } => "Started",
            GuestMsg::Output { .. } => "Output",
            GuestMsg::Exited { .. } => "Exited",
            GuestMsg::StdinAck { .. } => "StdinAck",
            GuestMsg::FileChunk { .. } => "FileChunk",
            GuestMsg::FileEnd { .. } => "FileEnd",
            GuestMsg::Ok { .. } => "Ok",
            GuestMsg::Error { .. } => "Error",
        }
    }
}
