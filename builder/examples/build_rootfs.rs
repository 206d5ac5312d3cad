//! Builds one architecture's rootfs with [`capsem_builder::build::build_rootfs`] and prints the
//! outcome as JSON on stdout (progress on stderr). A thin driver for manual runs and for the
//! crash-safety test in `tests/engine_build.rs`, which kills it with SIGKILL mid-build.
//!
//! ```text
//! cargo run -p capsem-builder --example build_rootfs -- DIR OUT [--arch x86_64] [--network host] [--keep-image]
//! ```
//!
//! Options not on the command line come from the environment (`BuildOptions::from_env`:
//! `SOURCE_DATE_EPOCH`, `CAPSEM_BUILD_CA_FILE`, `CAPSEM_BUILD_SECURITY_MIRROR`, `DOCKER_HOST`).

use std::path::PathBuf;
use std::process::ExitCode;

use capsem_builder::build::{BuildOptions, build_rootfs};
use capsem_builder::engine::ProgressMode;
use capsem_builder::model::Arch;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(out)) = (args.next().map(PathBuf::from), args.next().map(PathBuf::from)) else {
        eprintln!("usage: build_rootfs DIR OUT [--arch A] [--network MODE] [--keep-image]");
        return ExitCode::from(2);
    };
    let mut opts = BuildOptions { progress: ProgressMode::Lines, ..BuildOptions::from_env() };
    let mut arch = Arch::host().unwrap_or(Arch::X86_64);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--arch", Some(a)) => match Arch::parse(&a) {
                Some(a) => arch = a,
                None => return usage(&format!("unknown architecture {a}")),
            },
            ("--network", Some(mode)) => opts.network_mode = Some(mode),
            ("--keep-image", next) => {
                opts.keep_image = true;
                if let Some(n) = next {
                    return usage(&format!("unexpected argument {n}"));
                }
            }
            (other, _) => return usage(&format!("unknown option {other}")),
        }
    }
    let loaded = capsem_builder::validate::load(&dir);
    let Some(model) = loaded.model else {
        eprint!("{}", loaded.report.render(&dir.display().to_string(), false));
        return ExitCode::from(1);
    };
    match build_rootfs(&dir, &model, arch, &out, &opts) {
        Ok(outcome) => {
            println!("{}", serde_json::to_string_pretty(&outcome).expect("outcome serializes"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\nusage: build_rootfs DIR OUT [--arch A] [--network MODE] [--keep-image]");
    ExitCode::from(2)
}
