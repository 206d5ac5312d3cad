//! The `egress_input` fuzz target's body (builder/fuzz): everything the guest can send to the
//! host's egress side before the proxy's HTTP stack sees it. The first byte picks the parser:
//!
//! - 0: a relay header line without its `\n` (`CAPSEM-EGRESS/1 <kind> <addr>`): a header that
//!   parses must print back to the same bytes, and never name port 0.
//! - 1: a DNS query to the responder: a reply, when there is one, parses as DNS and carries the
//!   query's id.
//! - 2: `method\nhost` to the policy: `decide` never panics, and a host the policy calls
//!   unresolvable is never allowed.

use std::sync::Arc;

use super::relay::{DnsResponder, parse_header};
use super::{ConnKind, NullSink};

/// Runs one input; panics on a violated property.
pub fn egress_input(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => header(rest),
        1 => dns(rest),
        _ => policy(rest),
    }
}

fn header(line: &[u8]) {
    if let Ok((kind, addr)) = parse_header(line) {
        assert_ne!(addr.port(), 0, "a header naming port 0 parsed");
        let kind = match kind {
            ConnKind::Tls => "tls",
            ConnKind::Http => "http",
        };
        let printed = format!("CAPSEM-EGRESS/1 {kind} {addr}");
        assert_eq!(printed.as_bytes(), line, "a header that parses must be in its one canonical form");
    }
}

fn dns(query: &[u8]) {
    let responder = DnsResponder::new(Arc::new(|name: &str| name.ends_with(".allowed")), Arc::new(NullSink));
    if let Some(reply) = responder.answer(query) {
        assert!(reply.len() >= 12, "a reply shorter than a DNS header");
        assert_eq!(reply[..2], query[..2], "the reply does not carry the query's id");
        assert!(reply[2] & 0x80 != 0, "the reply is not marked as a response");
    }
}

fn policy(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let (method, host) = text.split_once('\n').unwrap_or(("GET", &text));
    let policy = test_policy();
    let d = policy.decide(method, host, "/");
    if d.allowed {
        assert!(policy.resolvable(host), "{method} {host:?} allowed but not resolvable");
    }
}

fn test_policy() -> super::policy::Policy {
    use crate::config::{DomainPattern, WebPolicy};
    let pat = |p: &str| DomainPattern::parse(p).expect("valid pattern");
    let web = WebPolicy {
        allow_read: true,
        allow_write: false,
        custom_allow: vec![pat("allowed.test"), pat("*.wild.test")],
        custom_block: vec![pat("blocked.wild.test")],
        http_upstream_ports: vec![80],
        services: Default::default(),
        providers: Default::default(),
        package_networks: Default::default(),
    };
    super::policy::Policy::from_web(&web).expect("valid policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold_the_properties() {
        egress_input(b"\x00CAPSEM-EGRESS/1 tls 93.184.216.34:443");
        egress_input(b"\x00CAPSEM-EGRESS/1 tls 93.184.216.34:0443");
        egress_input(b"\x00CAPSEM-EGRESS/1 tls 93.184.216.34:443\n");
        egress_input(b"\x00garbage");
        let mut q = vec![1u8, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x07allowed\x00\x00\x01\x00\x01");
        egress_input(&q);
        egress_input(b"\x01\xff\xff");
        egress_input(b"\x02GET\nallowed.test");
        egress_input(b"\x02POST\nx.wild.test");
        egress_input(b"\x02GET\nblocked.wild.test");
        egress_input(b"\x02\xff\xfe\n\x00");
    }
}
