//! Normalized tree → squashfs bytes through backhand: options, deduplication plan, fragments.
//!
//! Owns: mapping [`SquashOptions`] to a backhand compressor (explicit compressor and level, never
//! backhand's xz default), the deduplication plan (BLAKE3 + byte comparison, then the proof that
//! backhand's own xxh64-keyed dedup agrees with it), predicting backhand's fragment blocks, and
//! driving backhand's writer with the [`Engine`](super::compress::Engine) serving compressed
//! blocks. See the parent module for the why.
//!
//! The fragment prediction mirrors backhand 0.25.5's `DataWriter::add_bytes` and `finalize`:
//! files are written in path order; a file shorter than one block goes whole into the current
//! fragment block, which is flushed first if the file would overflow it; longer files never use
//! fragments (backhand has no tail-end fragments); the last fragment block is always compressed,
//! even when empty. A wrong prediction costs speed (the block is compressed inline), never
//! correctness.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use backhand::compression::{self, CompressionOptions, Compressor};
use backhand::kind::Kind as FsKind;
use backhand::{BackhandError, CompressionExtra, ExtraXz, FilesystemCompressor, FilesystemWriter, NodeHeader};

use super::compress::{Active, Engine, PRECOMPRESSED};
use super::normalize::{Kind, Tree};
use super::{CompressionReport, DedupReport, RootfsError, SquashOptions, WriteHook, display_path};
use crate::model::Compression;

/// [`SquashOptions`] checked and turned into backhand's terms.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    compressor: Compression,
    level: Option<u32>,
    pub block_size: u32,
    source_date_epoch: u32,
    pub threads: usize,
    pub fc: FilesystemCompressor,
}

fn invalid(reason: impl Into<String>) -> RootfsError {
    RootfsError::Options { reason: reason.into() }
}

fn compressor_name(c: Compression) -> &'static str {
    match c {
        Compression::Zstd => "zstd",
        Compression::Xz => "xz",
        Compression::Gzip => "gzip",
        Compression::Lzo => "lzo",
        Compression::Lz4 => "lz4",
    }
}

impl Resolved {
    pub fn new(opts: &SquashOptions) -> Result<Self, RootfsError> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(backhand::MIN_BLOCK_SIZE..=backhand::MAX_BLOCK_SIZE).contains(&bs) {
            return Err(invalid(format!("block size {bs} is not a power of two from 4096 to 1048576")));
        }
        let name = compressor_name(opts.compressor);
        let level = match (opts.compressor.level_range(), opts.level) {
            (None, Some(level)) => return Err(invalid(format!("{name} takes no compression level (got {level})"))),
            (None, None) => None,
            (Some((lo, hi)), Some(level)) if !(lo..=hi).contains(&i64::from(level)) => {
                return Err(invalid(format!("{name} level {level} is outside {lo}..={hi}")));
            }
            (Some(_), level) => level.or(opts.compressor.default_level()),
        };
        let bh = |e: BackhandError| invalid(format!("{name}: {e}"));
        let fc = match (opts.compressor, level) {
            (Compression::Zstd, Some(compression_level)) => FilesystemCompressor::new(
                Compressor::Zstd,
                Some(CompressionOptions::Zstd(compression::Zstd { compression_level })),
            )
            .map_err(bh)?,
            (Compression::Gzip, Some(compression_level)) => FilesystemCompressor::new(
                Compressor::Gzip,
                Some(CompressionOptions::Gzip(compression::Gzip { compression_level, window_size: 15, strategies: 0 })),
            )
            .map_err(bh)?,
            (Compression::Xz, Some(level)) => {
                // No options block: the dictionary is one block, as mksquashfs does by default.
                let mut fc = FilesystemCompressor::new(Compressor::Xz, None).map_err(bh)?;
                let mut extra = ExtraXz::default();
                extra.level(level).map_err(bh)?;
                fc.extra(CompressionExtra::Xz(extra)).map_err(bh)?;
                fc
            }
            // Version 1 is LZ4_LEGACY, the only format the kernel reads; flags 0: not high-compression.
            (Compression::Lz4, None) => FilesystemCompressor::new(
                Compressor::Lz4,
                Some(CompressionOptions::Lz4(compression::Lz4 { version: 1, flags: 0 })),
            )
            .map_err(bh)?,
            (Compression::Lzo, _) => {
                return Err(invalid(
                    "lzo is not supported: backhand writes it only under its GPL-only `lzo` feature; use zstd",
                ));
            }
            (other, level) => return Err(invalid(format!("{} with level {level:?}", compressor_name(other)))),
        };
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(Self {
            compressor: opts.compressor,
            level,
            block_size: bs,
            source_date_epoch: opts.source_date_epoch,
            threads,
            fc,
        })
    }
}

/// What [`write`] produced.
#[derive(Debug)]
pub(crate) struct Written {
    pub bytes_out: u64,
    pub dedup: DedupReport,
    pub compression: CompressionReport,
}

/// Writes `tree` as squashfs into `file` (at `path`, named in errors) and truncates it to the
/// image's length; `engine` already holds the tree's data blocks. Returns the file for the caller
/// to sync and rename.
pub(crate) fn write(
    tree: &Tree,
    opts: &Resolved,
    engine: Arc<Engine>,
    path: &Path,
    file: File,
    hook: Option<WriteHook<'_>>,
) -> Result<(Written, File), RootfsError> {
    let bs = opts.block_size as usize;
    let paths: Vec<&Path> = tree.files().map(|(p, _)| p).collect();
    let files: Vec<&[u8]> = tree.files().map(|(_, d)| d.as_slice()).collect();
    let plan = plan_dedup(&files, bs, |d| xxhash_rust::xxh64::xxh64(d, 0));
    let dedup = dedup_report(&plan, &files, &paths, bs);
    for block in fragment_blocks(&files, bs) {
        engine.submit_fragment(block);
    }

    let mut fs = FilesystemWriter::default();
    fs.set_kind(FsKind::new_v4(&PRECOMPRESSED));
    fs.set_block_size(opts.block_size);
    fs.set_time(opts.source_date_epoch);
    fs.set_compressor(opts.fc);
    fs.set_no_duplicate_files(plan.backhand_dedup);
    fs.set_root_mode(tree.root_mode);
    for (rel, node) in &tree.nodes {
        let header = NodeHeader::new(node.meta.mode, node.meta.uid, node.meta.gid, opts.source_date_epoch);
        let pushed = match &node.kind {
            Kind::Dir => fs.push_dir(rel, header),
            Kind::File(data) => fs.push_file(Cursor::new(data.as_slice()), rel, header),
            Kind::Symlink(target) => fs.push_symlink(target.clone(), rel, header),
            Kind::CharDevice(dev) => fs.push_char_device(*dev, rel, header),
            Kind::BlockDevice(dev) => fs.push_block_device(*dev, rel, header),
            Kind::Fifo => fs.push_fifo(rel, header),
        };
        pushed.map_err(|source| RootfsError::Node { path: display_path(rel), source })?;
    }

    let squash_err = |source| RootfsError::Squashfs { path: path.to_path_buf(), source };
    let mut sink = Sink { inner: BufWriter::with_capacity(1 << 20, file), pos: 0, hook };
    let bytes_out = {
        let _active = Active::install(Arc::clone(&engine));
        fs.write(&mut sink).map_err(squash_err)?.1
    };
    let file = sink.inner.into_inner().map_err(|e| RootfsError::Io {
        op: "flush",
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    // backhand writes a duplicate's blocks before seeking back over them, so the file can be
    // longer than the image when the last file written was a duplicate.
    file.set_len(bytes_out).map_err(|source| RootfsError::Io { op: "truncate", path: path.to_path_buf(), source })?;

    let c = &engine.counters;
    let compression = CompressionReport {
        compressor: compressor_name(opts.compressor).to_owned(),
        level: opts.level,
        block_size: opts.block_size,
        threads: opts.threads,
        blocks_predicted: c.predicted.load(Ordering::Relaxed),
        blocks_by_workers: c.by_workers.load(Ordering::Relaxed),
        blocks_by_writer: c.by_writer.load(Ordering::Relaxed),
        blocks_served: c.served.load(Ordering::Relaxed),
        blocks_inline: c.inline.load(Ordering::Relaxed),
    };
    Ok((Written { bytes_out, dedup, compression }, file))
}

/// Which files repeat an earlier identical one, and whether backhand may deduplicate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DedupPlan {
    /// `repeat[i]`: file `i` has the same bytes as an earlier file.
    pub repeat: Vec<bool>,
    /// Whether backhand's dedup is on (its key separates every pair of different files).
    pub backhand_dedup: bool,
    /// A pair of different files (indexes) that backhand's key would merge.
    pub collision: Option<(usize, usize)>,
}

/// Groups `files` (in write order) by BLAKE3 and bytes, then checks that `backhand_key` (with the
/// length) maps each of backhand's candidates — files of at least one block — to a single group.
pub(crate) fn plan_dedup(files: &[&[u8]], block_size: usize, backhand_key: impl Fn(&[u8]) -> u64) -> DedupPlan {
    // Serial on purpose: the pool is busy compressing, and hashing runs at GB/s.
    let hashes: Vec<[u8; 32]> = files.iter().map(|d| *blake3::hash(d).as_bytes()).collect();
    let keys: Vec<Option<u64>> = files.iter().map(|d| (d.len() >= block_size).then(|| backhand_key(d))).collect();
    let mut group = vec![0usize; files.len()];
    let mut repeat = vec![false; files.len()];
    let mut leaders: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, data) in files.iter().enumerate() {
        if data.is_empty() {
            group[i] = i; // empty files have no data to share
            continue;
        }
        let same = leaders.entry(hashes[i]).or_default();
        // Equal BLAKE3 is not enough on its own: the bytes are compared too.
        match same.iter().find(|&&l| files[l] == *data) {
            Some(&l) => {
                group[i] = l;
                repeat[i] = true;
            }
            None => {
                same.push(i);
                group[i] = i;
            }
        }
    }
    let mut by_key: HashMap<(usize, u64), usize> = HashMap::new();
    let mut collision = None;
    for (i, key) in keys.iter().enumerate() {
        let Some(key) = key else { continue };
        match by_key.entry((files[i].len(), *key)) {
            Entry::Occupied(e) if group[*e.get()] != group[i] => {
                collision = Some((*e.get(), i));
                break;
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    DedupPlan { repeat, backhand_dedup: collision.is_none(), collision }
}

fn dedup_report(plan: &DedupPlan, files: &[&[u8]], paths: &[&Path], bs: usize) -> DedupReport {
    let repeats = || plan.repeat.iter().zip(files).filter(|(r, _)| **r).map(|(_, d)| d.len() as u64);
    let (large, small): (Vec<u64>, Vec<u64>) = repeats().partition(|len| *len >= bs as u64);
    let (files_shared, bytes_saved) =
        if plan.backhand_dedup { (large.len() as u64, large.iter().sum()) } else { (0, 0) };
    DedupReport {
        enabled: plan.backhand_dedup,
        disabled_reason: plan.collision.map(|(a, b)| {
            format!(
                "{} and {} differ but have the same length and xxh64, the key backhand deduplicates by",
                display_path(paths[a]),
                display_path(paths[b])
            )
        }),
        files: files_shared,
        bytes_saved,
        small_duplicates: small.len() as u64,
        small_duplicate_bytes: small.iter().sum(),
    }
}

/// The fragment blocks backhand will compress, in its order: files shorter than one block packed
/// in write order, a block flushed when the next file would overflow it, the last one always.
pub(crate) fn fragment_blocks(files: &[&[u8]], bs: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut fragment = Vec::with_capacity(bs);
    for data in files.iter().filter(|d| !d.is_empty() && d.len() < bs) {
        if fragment.len() + data.len() > bs {
            out.push(std::mem::replace(&mut fragment, Vec::with_capacity(bs)));
        }
        fragment.extend_from_slice(data);
    }
    out.push(fragment);
    out
}

/// The image file: buffered, tracking its position so backhand's frequent `stream_position`
/// calls cost nothing, and calling the test hook before each write.
struct Sink<'h> {
    inner: BufWriter<File>,
    pos: u64,
    hook: Option<WriteHook<'h>>,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(hook) = self.hook {
            hook(self.pos)?;
        }
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for Sink<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        if let SeekFrom::Current(0) = to {
            return Ok(self.pos);
        }
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}
