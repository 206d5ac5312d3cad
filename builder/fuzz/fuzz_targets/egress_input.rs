//! Fuzz target: what the guest can send to the host's egress side before the proxy's HTTP
//! stack — relay header lines, DNS queries, and (method, host) pairs for the web policy. See
//! `capsem::egress::fuzzing::egress_input` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsem::egress::fuzzing::egress_input(data);
});
