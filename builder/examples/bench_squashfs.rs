//! Benchmark: our squashfs writer (`capsem_builder::rootfs::tar_to_squashfs`) against
//! squashfs-tools' `mksquashfs` on the same tree, same compressor, level and block size, in one run.
//!
//! ```text
//! cargo run --release -p capsem-builder --example bench_squashfs -- [DIR] [--threads N] [--level L] [--runs R]
//! ```
//!
//! Without DIR it generates (once, cached under `target/bench/squashfs-tree`) a ~300 MB tree: many
//! small text files, medium and large text, incompressible binaries, partly-zero files and some
//! duplicates. The tree is packed into an in-memory tar first (page cache warm for both tools).
//!
//! Fairness: *ours* times `tar_to_squashfs` on the in-memory tar — parsing, normalization,
//! hashing, deduplication, compression and writing — but not building the tar, because in a real
//! build the tar streams from the engine. `mksquashfs` times its whole run, including reading the
//! (page-cached) directory. Both figures are printed, and the ratio is also given with our tar
//! creation included. Each tool's best of `--runs` is used. Results go to stdout and, as JSON,
//! to `target/bench/squashfs.json`. Target: time ratio ≤ 1.0, size ratio ≤ 1.02.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use capsem_builder::model::Compression;
use capsem_builder::rootfs::{SquashOptions, tar_to_squashfs};

const SDE: u32 = 1_700_000_000;
const BLOCK: u32 = 128 * 1024;
/// Bump when the generator changes, so a cached tree is regenerated.
const TREE_VERSION: &str = "3";

struct Args {
    dir: Option<PathBuf>,
    threads: usize,
    level: u32,
    runs: usize,
}

fn parse_args() -> Result<Args> {
    let mut args =
        Args { dir: None, threads: std::thread::available_parallelism().map_or(1, usize::from), level: 15, runs: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--threads" => args.threads = value("--threads")?.parse()?,
            "--level" => args.level = value("--level")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            dir => args.dir = Some(PathBuf::from(dir)),
        }
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
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Source-code-like text: a skewed pick from a vocabulary of identifiers, with indentation.
fn text(rng: &mut Rng, vocab: &[String], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let indent = rng.below(4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        for _ in 0..(3 + rng.below(8)) {
            // Squaring a uniform pick skews toward the first words, as real code does.
            let r = rng.below(vocab.len() as u64);
            let w = &vocab[(r * r / vocab.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            out.push(if rng.below(5) == 0 { b'(' } else { b' ' });
        }
        out.extend_from_slice(b";\n");
    }
    out.truncate(len);
    out
}

/// Generates the default tree (~300 MB) into `dir`.
fn generate(dir: &Path) -> Result<()> {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let vocab: Vec<String> = (0..3000)
        .map(|_| {
            let len = 2 + rng.below(10) as usize;
            (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
        })
        .collect();
    let write = |rel: String, data: &[u8]| -> Result<()> {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().context("parent")?)?;
        fs::write(&path, data).with_context(|| path.display().to_string())
    };
    // 12,000 small text files (~6 KB average) in 3-level directories.
    let mut small = Vec::new();
    for i in 0..12_000u64 {
        let len = 200 + rng.below(12_000) as usize;
        let data = text(&mut rng, &vocab, len);
        write(format!("usr/lib/pkg{:02}/mod{:03}/file{i:05}.py", i % 40, i % 300), &data)?;
        if i % 60 == 0 {
            small.push(data);
        }
    }
    // 200 duplicated small files (licence texts, empty __init__.py and the like).
    for (i, data) in small.iter().cycle().take(200).enumerate() {
        write(format!("usr/share/doc/pkg{i:03}/copyright"), data)?;
    }
    // 400 medium text files, 50–500 KB.
    let mut medium = Vec::new();
    for i in 0..400u64 {
        let len = 50_000 + rng.below(450_000) as usize;
        let data = text(&mut rng, &vocab, len);
        write(format!("usr/share/data/set{:02}/doc{i:03}.txt", i % 20), &data)?;
        if i % 40 == 0 {
            medium.push(data);
        }
    }
    // 20 duplicated medium files (vendored copies).
    for (i, data) in medium.iter().cycle().take(20).enumerate() {
        write(format!("opt/vendor/copy{i:02}/bundle.txt"), data)?;
    }
    // 60 incompressible binaries, 0.1–3 MB.
    for i in 0..60u64 {
        let len = 100_000 + rng.below(2_900_000) as usize;
        let data = rng.bytes(len);
        write(format!("usr/bin/tool{i:02}"), &data)?;
    }
    // 30 executables-like files: runs of zeros, random and text.
    for i in 0..30u64 {
        let mut data = Vec::new();
        let target = 500_000 + rng.below(1_000_000) as usize;
        while data.len() < target {
            let (kind, pages) = (rng.below(3), 1 + rng.below(16) as usize);
            match kind {
                0 => data.extend(std::iter::repeat_n(0u8, 4096 * 4 * pages)),
                1 => data.extend(rng.bytes(4096 * pages / 2 + 4096)),
                _ => data.extend(text(&mut rng, &vocab, 4096 * pages)),
            }
        }
        write(format!("usr/lib/x86_64-linux-gnu/lib{i:02}.so"), &data)?;
    }
    Ok(())
}

fn du(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            let (f, b) = du(&entry.path())?;
            files += f;
            bytes += b;
        } else if ty.is_file() {
            files += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((files, bytes))
}

fn tar_of(dir: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).with_context(|| format!("tar of {}", dir.display()))?;
    Ok(b.into_inner()?)
}

fn run_mksquashfs(tree: &Path, out: &Path, level: u32, threads: usize) -> Result<()> {
    let status = Command::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-comp", "zstd", "-Xcompression-level", &level.to_string(), "-b", "128K"])
        .args(["-noappend", "-no-xattrs", "-quiet", "-no-progress"])
        .args(["-all-time", &SDE.to_string(), "-mkfs-time", &SDE.to_string()])
        .args(["-processors", &threads.to_string()])
        .status()
        .context("running mksquashfs (apt-get install squashfs-tools)")?;
    if !status.success() {
        bail!("mksquashfs failed: {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&bench_dir)?;
    let tree = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let t = bench_dir.join("squashfs-tree");
            let marker = bench_dir.join("squashfs-tree.version");
            if fs::read_to_string(&marker).ok().as_deref() != Some(TREE_VERSION) {
                eprintln!("generating the benchmark tree in {} …", t.display());
                let _ = fs::remove_dir_all(&t);
                generate(&t)?;
                fs::write(&marker, TREE_VERSION)?;
            }
            t
        }
    };
    let (files, bytes) = du(&tree)?;
    eprintln!("tree {}: {files} files, {:.1} MB", tree.display(), bytes as f64 / 1e6);

    let work = tempfile::tempdir_in(&bench_dir)?;
    let ours_img = work.path().join("ours.squashfs");
    let theirs_img = work.path().join("mksquashfs.squashfs");
    let opts = SquashOptions {
        compressor: Compression::Zstd,
        level: Some(args.level),
        block_size: BLOCK,
        source_date_epoch: SDE,
        threads: args.threads,
    };

    let (mut tar_s, mut ours_s, mut theirs_s) = (f64::MAX, f64::MAX, f64::MAX);
    let mut report = None;
    for run in 0..args.runs {
        let t = Instant::now();
        let tar = tar_of(&tree)?;
        tar_s = tar_s.min(t.elapsed().as_secs_f64());
        // Alternate which tool goes first, so neither always meets the other's leftovers
        // (dirty page cache, CPU frequency, a neighbour's load).
        for tool in if run % 2 == 0 { ["ours", "mksquashfs"] } else { ["mksquashfs", "ours"] } {
            let t = Instant::now();
            if tool == "ours" {
                report = Some(tar_to_squashfs(tar.as_slice(), &ours_img, &opts)?);
                ours_s = ours_s.min(t.elapsed().as_secs_f64());
            } else {
                run_mksquashfs(&tree, &theirs_img, args.level, args.threads)?;
                theirs_s = theirs_s.min(t.elapsed().as_secs_f64());
            }
        }
        eprintln!("run {}: tar {tar_s:.2} s, ours {ours_s:.2} s, mksquashfs {theirs_s:.2} s (best so far)", run + 1);
    }
    let report = report.context("--runs must be at least 1")?;
    let ours_bytes = fs::metadata(&ours_img)?.len();
    let theirs_bytes = fs::metadata(&theirs_img)?.len();
    let time_ratio = ours_s / theirs_s;
    let time_ratio_with_tar = (ours_s + tar_s) / theirs_s;
    let size_ratio = ours_bytes as f64 / theirs_bytes as f64;
    let mksquashfs_version = Command::new("mksquashfs")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_default();

    println!("tree            {} ({files} files, {bytes} bytes)", tree.display());
    println!("settings        zstd level {}, 128 KiB blocks, {} threads", args.level, args.threads);
    println!("ours            {ours_s:>8.2} s  {ours_bytes:>12} bytes  (tar creation {tar_s:.2} s, not included)");
    println!("mksquashfs      {theirs_s:>8.2} s  {theirs_bytes:>12} bytes  ({mksquashfs_version})");
    println!("time ratio      {time_ratio:>8.3}   (target <= 1.0; {time_ratio_with_tar:.3} with our tar creation)");
    println!("size ratio      {size_ratio:>8.3}   (target <= 1.02)");
    println!(
        "dedup           {} files, {} bytes shared; {} small duplicates in fragments",
        report.dedup.files, report.dedup.bytes_saved, report.dedup.small_duplicates
    );
    let c = &report.compression;
    println!(
        "blocks          {} predicted ({} by workers, {} by the writer), {} served, {} inline",
        c.blocks_predicted, c.blocks_by_workers, c.blocks_by_writer, c.blocks_served, c.blocks_inline
    );

    let json = serde_json::json!({
        "tree": { "path": tree, "generated": args.dir.is_none(), "files": files, "bytes": bytes },
        "settings": { "compressor": "zstd", "level": args.level, "block_size": BLOCK, "threads": args.threads,
                      "runs": args.runs, "cpus": std::thread::available_parallelism().map_or(1, usize::from) },
        "ours": { "seconds": ours_s, "bytes": ours_bytes, "tar_creation_seconds": tar_s,
                  "dedup": report.dedup, "compression": report.compression },
        "mksquashfs": { "seconds": theirs_s, "bytes": theirs_bytes, "version": mksquashfs_version },
        "ratios": { "time": time_ratio, "time_with_tar_creation": time_ratio_with_tar, "size": size_ratio },
        "targets": { "time": 1.0, "size": 1.02, "met": time_ratio <= 1.0 && size_ratio <= 1.02 },
        "timing_scope": "ours: tar_to_squashfs on an in-memory tar; mksquashfs: whole run reading a page-cached directory",
    });
    let out = bench_dir.join("squashfs.json");
    fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
