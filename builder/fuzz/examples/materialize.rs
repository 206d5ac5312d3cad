//! Writes one fuzz input out as an image directory, to inspect it or run the CLI on it:
//!
//! ```text
//! cargo run --manifest-path builder/fuzz/Cargo.toml --example materialize -- INPUT OUTDIR
//! cargo run -p capsem-builder -- validate OUTDIR
//! ```
//! OUTDIR must not exist yet.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, out] = args.as_slice() else {
        eprintln!("usage: materialize INPUT OUTDIR");
        std::process::exit(2);
    };
    let out = std::path::Path::new(out);
    if out.exists() {
        eprintln!("{} already exists", out.display());
        std::process::exit(2);
    }
    let data = std::fs::read(input).expect("read input");
    let image = capsem_builder_fuzz::split(&data);
    capsem_builder_fuzz::materialize(out, &image.files, image.default_artifacts);
    for f in &image.files {
        println!("{} ({} bytes)", f.path, f.bytes.len());
    }
    if image.default_artifacts {
        println!("(+ default artifacts/capsem-init, artifacts/capsem-bashrc)");
    }
}
