//! Fuzz target: the input is a whole image directory (see `capsem_builder_fuzz::split` for the
//! format); it is written to a scratch directory, loaded, validated, and every consumer of the
//! report and the model is run on the result.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsem_builder_fuzz::run_image(data);
});
