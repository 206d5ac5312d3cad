//! Fuzz target: the release files the runtime reads before it trusts anything (B3SUMS, public
//! key, signature, manifest.json); see `capsem_builder_fuzz::trust_files`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsem_builder_fuzz::trust_files(data);
});
