//! The capsem guest-agent protocol: what the host and the agent inside the VM say to each other
//! over one byte stream (vsock, virtio-serial, a socketpair in tests).
//!
//! - [`frame`]: the wire framing (4-byte big-endian length + postcard payload) and its limits.
//!   The decoder is the trust boundary on the host: every byte from the guest passes through it.
//! - [`msg`]: the message types, [`HostMsg`] (host → guest) and [`GuestMsg`] (guest → host).
//! - [`client`]: the host-side client, a thread that demultiplexes guest messages by request id
//!   and a blocking API on top (`exec`, `run`, `write_file`, `read_file`, …).
//! - [`throttle`]: a per-minute budget for log lines the guest can cause, on either side.
//!
//! The conversation: on connect the guest sends [`GuestMsg::Ready`]; afterwards every request the
//! host sends carries a `u32` id chosen by the host, and every guest message about that request
//! carries the same id.

pub mod client;
pub mod frame;
pub mod fuzzing;
pub mod msg;
pub mod throttle;

pub use client::{Client, ClientError, ExecRequest, ProcEvent, Process};
pub use frame::{FrameError, FrameReader, MAX_FRAME};
pub use msg::{
    BootFile, ExitStatus, GuestMsg, HostMsg, MAX_CHUNK, PROTOCOL_VERSION, Ready, STDIN_WINDOW, Stream, WinSize,
};
