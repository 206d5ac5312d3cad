//! `cargo xtask bench runtime`: what a boot costs.
//!
//! 1. Verification throughput: `capsem_trust::verify_for_boot` (signature, manifest, BLAKE3 of
//!    every boot asset from its open descriptor) against the `b3sum` CLI hashing the same files,
//!    same run, warm page cache, median of N runs; printed as GiB/s, s/GiB, and the ratio.
//! 2. `capsem run -- true`, N times: the boot breakdown capsem reports with `--timings`
//!    (verify, settings, VMM start, guest kernel, init, agent ready), the exec round trip, the
//!    shutdown and the wall time of the whole command; medians.
//!
//! Usage: bench_runtime --assets DIR --home CAPSEM_HOME --capsem BIN [--runs N] [--out FILE]
//! (`CAPSEM_HOME/user.toml` must trust the release's key). Results also go to `--out` as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut assets, mut home, mut capsem, mut runs, mut out) = (None, None, None, 10usize, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--assets" => assets = Some(PathBuf::from(val()?)),
            "--home" => home = Some(PathBuf::from(val()?)),
            "--capsem" => capsem = Some(PathBuf::from(val()?)),
            "--runs" => runs = val()?.parse().context("--runs")?,
            "--out" => out = Some(PathBuf::from(val()?)),
            _ => bail!("unknown argument {a}"),
        }
    }
    let (assets, home, capsem) = (
        assets.context("--assets is required")?,
        home.context("--home is required")?,
        capsem.context("--capsem is required")?,
    );
    if runs < 10 {
        bail!("--runs must be at least 10 (medians of fewer runs are noise on these machines)");
    }

    // --- 1. verification vs b3sum -----------------------------------------------------------
    let paths = capsem::config::Paths::new(home.clone(), home.join("corp.toml"));
    let loaded = capsem::config::Loaded::load(&paths)?;
    let keys = capsem::boot::trusted_keys(&loaded);
    let arch = capsem::boot::HOST_ARCH;
    let first = capsem_trust::verify_for_boot(&assets, arch, &keys, None)?; // warms the page cache
    let files: Vec<PathBuf> = [&first.kernel, &first.initrd, &first.rootfs]
        .iter()
        .map(|f| f.path.clone())
        .chain([assets.join("defaults.json")])
        .collect();
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        capsem_trust::verify_for_boot(&assets, arch, &keys, None)?;
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let st =
            Command::new("b3sum").args(&files).stdout(std::process::Stdio::null()).status().context("running b3sum")?;
        theirs.push(t.elapsed().as_secs_f64());
        if !st.success() {
            bail!("b3sum failed");
        }
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "verification: {} files, {:.1} MiB, {runs} runs, medians, warm page cache",
        files.len(),
        bytes as f64 / 1048576.0
    );
    println!("  capsem verify_for_boot  {:8.1} ms  {:6.2} GiB/s  {:6.3} s/GiB", ours * 1e3, gib / ours, ours / gib);
    println!(
        "  b3sum (baseline)        {:8.1} ms  {:6.2} GiB/s  {:6.3} s/GiB",
        theirs * 1e3,
        gib / theirs,
        theirs / gib
    );
    println!("  ratio (b3sum time / ours; ≥ 1 means we are as fast): {:.2}", theirs / ours);

    // --- 2. capsem run -- true ---------------------------------------------------------------
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        let t = Instant::now();
        let o = Command::new(&capsem)
            .args(["run", "--timings", "--assets"])
            .arg(&assets)
            .args(["--", "true"])
            .env("CAPSEM_HOME", &home)
            .output()
            .context("running capsem")?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            bail!("capsem run -- true failed (run {i}): {stderr}");
        }
        for line in stderr.lines() {
            if let Some(json) = line.strip_prefix("capsem: boot timings ") {
                let v: BTreeMap<String, f64> = serde_json::from_str(json)?;
                for (k, x) in v {
                    phases.entry(k).or_default().push(x);
                }
            } else if let Some(x) = line.strip_prefix("capsem: exec ").and_then(|r| r.strip_suffix(" ms")) {
                phases.entry("exec_round_trip_ms".into()).or_default().push(x.parse()?);
            } else if let Some(x) = line.strip_prefix("capsem: shutdown ").and_then(|r| r.strip_suffix(" ms")) {
                phases.entry("shutdown_ms".into()).or_default().push(x.parse()?);
            }
        }
        phases.entry("wall_ms".into()).or_default().push(wall);
    }
    println!("\ncapsem run -- true: {runs} runs, medians (ms). These are QEMU TCG figures on this machine");
    println!("(no usable KVM: kvm_pvm), not what a host with hardware virtualization gets.");
    let order = [
        "verify_ms",
        "settings_ms",
        "vmm_start_ms",
        "kernel_ms",
        "init_ms",
        "agent_ready_ms",
        "total_ms",
        "exec_round_trip_ms",
        "shutdown_ms",
        "wall_ms",
    ];
    let mut medians = BTreeMap::new();
    for k in order {
        let m = median(phases.get(k).cloned().unwrap_or_default());
        println!("  {k:<20} {m:9.1}");
        medians.insert(k.to_owned(), m);
    }
    let json = serde_json::json!({
        "bench": "runtime",
        "assets": assets, "bytes": bytes, "runs": runs,
        "verify_s": ours, "b3sum_s": theirs, "verify_gib_per_s": gib / ours, "b3sum_gib_per_s": gib / theirs,
        "ratio_b3sum_over_ours": theirs / ours,
        "run_true_medians_ms": medians,
        "note": "QEMU TCG on this machine",
    });
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_vec_pretty(&json)?)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
