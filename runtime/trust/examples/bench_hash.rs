//! Benchmark: our file hashing (`capsem_trust::b3sums::hash_file`, memory-mapped, all cores)
//! against the `b3sum` CLI (Debian package `b3sum`) on the same files, in one run.
//!
//! ```text
//! cargo run --release -p capsem-trust --example bench_hash -- [FILE…] [--runs R] [--synthetic]
//! ```
//!
//! Files: those given, else `assets/*/{vmlinuz,initrd.img,rootfs.squashfs}` when any exist (and
//! `--synthetic` is not given), else a synthetic set generated once (deterministically) under `target/bench/hash/`: one 512 MiB
//! random file and a few small ones. The page cache is warmed first (every file read, each tool
//! run once untimed); then each repetition times ours (all files, in process) and `b3sum` (one
//! process over all files, start-up included), alternating which goes first. Both must print the
//! same hashes. The median of `--runs` (default 7) is used. Results go to stdout and, as JSON, to
//! `target/bench/hash.json`. Target: our throughput ≥ 0.9 × b3sum's.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use capsem_trust::b3sums::hash_file;

/// Bump when the generator changes, so a cached set is regenerated.
const SET_VERSION: &str = "1";
const TARGET_RATIO: f64 = 0.9;

struct Args {
    files: Vec<PathBuf>,
    runs: usize,
    synthetic: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { files: Vec::new(), runs: 7, synthetic: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--synthetic" => args.synthetic = true,
            "--runs" => args.runs = it.next().context("--runs needs a value")?.parse()?,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            file => args.files.push(PathBuf::from(file)),
        }
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(args)
}

/// xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn write_random(path: &Path, len: u64, rng: &mut Rng) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// The synthetic set: one 512 MiB file and a few small ones, like a kernel, initrd and SBOM.
fn synthetic(dir: &Path) -> Result<Vec<PathBuf>> {
    let set: [(&str, u64); 4] =
        [("rootfs.bin", 512 << 20), ("initrd.bin", 24 << 20), ("vmlinuz.bin", 9 << 20), ("sbom.json", 300 << 10)];
    let marker = dir.join("version");
    if fs::read_to_string(&marker).ok().as_deref() != Some(SET_VERSION) {
        eprintln!("generating the benchmark files in {} …", dir.display());
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let mut rng = Rng(0x5eed_b1a3_0000_0001);
        for (name, len) in set {
            write_random(&dir.join(name), len, &mut rng)?;
        }
        fs::write(&marker, SET_VERSION)?;
    }
    Ok(set.iter().map(|(n, _)| dir.join(n)).collect())
}

fn asset_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = fs::read_dir(root.join("assets")) else { return files };
    let mut dirs: Vec<PathBuf> = dirs.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        for name in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
            let p = d.join(name);
            if p.is_file() {
                files.push(p);
            }
        }
    }
    files
}

fn ours(files: &[PathBuf]) -> Result<Vec<String>> {
    files.iter().map(|f| Ok(hash_file(f)?.1)).collect()
}

fn b3sum(files: &[PathBuf]) -> Result<Vec<String>> {
    let out = Command::new("b3sum")
        .args(files)
        .output()
        .context("running b3sum (apt-get install b3sum, or run cargo xtask deps)")?;
    if !out.status.success() {
        bail!("b3sum failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let hashes: Vec<String> = text.lines().map(|l| l.get(..64).unwrap_or_default().to_owned()).collect();
    if hashes.len() != files.len() {
        bail!("b3sum printed {} lines for {} files", hashes.len(), files.len());
    }
    Ok(hashes)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).context("workspace root")?;
    let bench_dir = root.join("target/bench");
    fs::create_dir_all(&bench_dir)?;
    let (files, source) = if !args.files.is_empty() {
        (args.files.clone(), "arguments")
    } else {
        let assets = if args.synthetic { Vec::new() } else { asset_files(root) };
        if assets.is_empty() { (synthetic(&bench_dir.join("hash"))?, "synthetic") } else { (assets, "assets") }
    };
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).with_context(|| f.display().to_string()))
        .collect::<Result<_>>()?;
    let bytes: u64 = sizes.iter().sum();
    eprintln!("{} files ({source}), {:.1} MiB", files.len(), bytes as f64 / (1 << 20) as f64);

    // Warm the page cache: read everything, then run each tool once and compare their answers.
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let mut r = fs::File::open(f)?;
        while r.read(&mut buf)? > 0 {}
    }
    let (a, b) = (ours(&files)?, b3sum(&files)?);
    if a != b {
        bail!("hashes differ: ours {a:?}, b3sum {b:?}");
    }

    let (mut ours_s, mut b3sum_s) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        for tool in if run % 2 == 0 { ["ours", "b3sum"] } else { ["b3sum", "ours"] } {
            let t = Instant::now();
            let hashes = if tool == "ours" { ours(&files)? } else { b3sum(&files)? };
            let s = t.elapsed().as_secs_f64();
            if hashes != a {
                bail!("{tool} gave other hashes on run {}", run + 1);
            }
            if tool == "ours" { ours_s.push(s) } else { b3sum_s.push(s) }
        }
    }
    let (ours_med, b3sum_med) = (median(&mut ours_s.clone()), median(&mut b3sum_s.clone()));
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let (ours_tp, b3sum_tp) = (gib / ours_med, gib / b3sum_med);
    let ratio = ours_tp / b3sum_tp;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let version = Command::new("b3sum")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    println!("files           {} ({source}, {bytes} bytes), {cpus} cpus, {} runs", files.len(), args.runs);
    println!("ours            {ours_med:>8.4} s  {ours_tp:>7.2} GiB/s  (median; hash_file, in process)");
    println!("b3sum           {b3sum_med:>8.4} s  {b3sum_tp:>7.2} GiB/s  (median; {version}, process start included)");
    println!("throughput ratio {ratio:>7.3}   ours / b3sum (target >= {TARGET_RATIO})");

    let json = serde_json::json!({
        "files": files.iter().zip(&sizes).map(|(f, s)| serde_json::json!({"path": f, "bytes": s})).collect::<Vec<_>>(),
        "source": source,
        "bytes": bytes,
        "cpus": cpus,
        "runs": args.runs,
        "ours": { "median_seconds": ours_med, "gib_per_second": ours_tp, "seconds": ours_s },
        "b3sum": { "median_seconds": b3sum_med, "gib_per_second": b3sum_tp, "seconds": b3sum_s, "version": version },
        "ratio": ratio,
        "target": { "ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO },
        "timing_scope": "ours: hash_file over every file in process; b3sum: one process over every file, start-up included; page cache warm",
    });
    let out = bench_dir.join("hash.json");
    fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
