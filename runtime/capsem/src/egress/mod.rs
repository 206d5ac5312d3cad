//! Egress: the guest has no NIC; its HTTP(S) and DNS traffic is redirected inside the guest to
//! the agent's relays, carried over vsock to the host, and decided here — per request — by the
//! image's web policy. Everything is logged to the session log.
//!
//! - [`policy`]: pure decisions: (method, host, path) → allow/deny and the rule that decided;
//!   which names DNS answers.
//! - [`ca`]: the per-installation CA (created on first use, key 0600) and leaf certificates
//!   minted per SNI.
//! - [`proxy`]: the TLS-terminating HTTP/1.1 + HTTP/2 proxy: SNI = Host, hardening, upstream.
//! - [`relay`]: the host side of the guest's relays (vsock ports [`TCP_PORT`], [`DNS_PORT`]).
//! - [`fuzzing`]: the `egress_input` fuzz target's properties (builder/fuzz).
//! - [`service`]: one VM's egress running on its own tokio runtime; test-only knobs
//!   (`CAPSEM_EGRESS_RESOLVE`, `CAPSEM_EGRESS_UPSTREAM_CA`).

pub mod ca;
pub mod fuzzing;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod service;

use std::time::SystemTime;

/// vsock port (guest → host CID 2) that carries each redirected TCP connection.
pub const TCP_PORT: u32 = 5001;
/// vsock port that carries the guest's DNS queries.
pub const DNS_PORT: u32 = 5002;

/// What a redirected connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// TLS (guest port 443).
    Tls,
    /// Plain HTTP (one of the policy's `http_upstream_ports`).
    Http,
}

/// One proxied request, as the session log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub time: SystemTime,
    pub method: String,
    pub host: String,
    pub path: String,
    /// `true` when the policy allowed it.
    pub allowed: bool,
    /// The rule that decided (e.g. `custom_block *.example.com`, `service registry.npm`,
    /// `default deny`), or why it was refused before the policy (e.g. `SNI/Host mismatch`).
    pub rule: String,
    /// HTTP status returned to the guest (403 for a denial, 502 for an upstream failure…).
    pub status: u16,
    /// Request body bytes from the guest.
    pub bytes_in: u64,
    /// Response body bytes to the guest.
    pub bytes_out: u64,
}

/// One DNS question, as the session log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub time: SystemTime,
    pub name: String,
    pub qtype: String,
    pub answered: bool,
}

/// Where egress events go (the session log; tests use an in-memory sink).
pub trait EventSink: Send + Sync + std::fmt::Debug {
    fn request(&self, record: RequestRecord);
    fn dns(&self, record: DnsRecord);
}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn request(&self, _: RequestRecord) {}
    fn dns(&self, _: DnsRecord) {}
}
