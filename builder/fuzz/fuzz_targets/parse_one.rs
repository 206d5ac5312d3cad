//! Fuzz target: the raw input is `config/build.toml`; the rest of the image is the minimal
//! defaults (`artifacts/capsem-init`, `artifacts/capsem-bashrc`). Cheap, and good for the TOML
//! reader and the `[build]` checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsem_builder_fuzz::run_files(
        &[capsem_builder_fuzz::File { path: "config/build.toml".into(), bytes: data }],
        true,
    );
});
