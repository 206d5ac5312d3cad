//! Fuzz target: arbitrary bytes from a (hostile) peer of the guest-agent protocol, fed to the
//! frame reader and to both message decoders (`HostMsg`, `GuestMsg`); a message that decodes
//! must re-encode to the same value. See `capsem_proto::fuzzing::agent_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsem_proto::fuzzing::agent_frames(data);
});
