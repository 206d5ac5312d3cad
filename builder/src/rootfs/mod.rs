//! Container export (a tar stream) → deterministic squashfs root filesystem.
//!
//! Owns the last two steps of the rootfs pipeline (DESIGN.md §3): *normalize* the tar the engine
//! exports (`normalize.rs`: the rule table, modes, owners, hard links) and *write* it as squashfs
//! with backhand (`squashfs.rs`, with `compress.rs` compressing on all cores), atomically
//! (`output.rs`). It knows nothing about engines, Dockerfiles or manifests: the caller hands it a
//! [`Read`] and gets a [`Report`] to record. It never prints.
//!
//! The normalization rules (what is removed or given a fixed content, and why) are one table,
//! `RULES` in `normalize.rs`; each applied rule appears in [`Report::actions`] with its id.
//! Notable choices: `/.dockerenv` is removed; the engine's bind-mount placeholders become stable
//! files — `/etc/hostname` and `/etc/resolv.conf` empty (the hostname is set at boot, the guest has
//! no DNS of its own), `/etc/hosts` a fixed loopback-only file so `localhost` resolves on a
//! read-only root; `/etc/machine-id` is kept but emptied (systemd fills it at boot).
//!
//! # Determinism
//!
//! The image bytes are a function of (the set of tar entries, [`SquashOptions`] except `threads`,
//! the backhand and compressor library versions). The order of the tar entries, the thread count,
//! the wall clock, user and group *names* and the entries' mtimes do not matter: entries are sorted
//! by path, every inode time and the superblock time are `source_date_epoch`, owners are numeric.
//! One exception, documented rather than hidden: backhand has no setter for the root directory's
//! mtime, so `/` always carries time 0.
//!
//! # What the image loses, and how we handle it
//!
//! - **Extended attributes.** backhand cannot write xattrs (wcampbell0x2a/backhand#32). Every xattr
//!   found in the tar (PAX `SCHILY.xattr.*` as Docker writes them, `LIBARCHIVE.xattr.*`) is dropped
//!   and reported as [`Action::XattrDropped`] with its name, and for `security.capability` its
//!   decoded value (e.g. `cap_net_raw=ep` on `/usr/bin/ping`). Consequence: file capabilities are
//!   gone, so such binaries run with the caller's own privileges. In a capsem guest that is
//!   acceptable: the VM has no network interface (ping's raw socket has nothing to reach), the agent
//!   runs commands as root, and setuid is stripped anyway, so no exec may gain privileges. The
//!   report lists every capability so a future image that needs one can re-apply it at boot from
//!   the manifest. SELinux labels and `user.*` attributes are dropped the same way.
//! - **Hard links.** backhand cannot write them either: each link becomes its own inode with the
//!   target's content and metadata ([`Action::HardlinkCopied`]); large files still share their data
//!   blocks through deduplication. Inode identity and link counts are lost.
//! - **setuid/setgid bits** are stripped on purpose, on every entry (the Dockerfile does the same
//!   for files); the sticky bit stays.
//! - **Times.** Every mtime becomes `source_date_epoch` (atime/ctime do not exist in squashfs).
//!
//! # Deduplication
//!
//! Identical files share their data blocks. The decision, and why it is not "backhand's dedup off,
//! ours on": backhand's writer can only make two inodes share blocks through its own duplicate
//! detection (keyed by file length + xxh64 of the content, no byte comparison; ≤ 0.25.4 keyed on
//! the first block only and corrupted files), and it has no API to point an inode at blocks already
//! written. Writing duplicates as hard links is no alternative: backhand cannot write hard links,
//! and they would also merge the files' modes, owners and inode identity. Turning its dedup off
//! therefore means no sharing at all. So ours decides and backhand executes: we group files by
//! BLAKE3 *and* compare the bytes inside each group, compute backhand's own key for every file it
//! would consider (one block or larger), and check that each key maps to exactly one of our groups,
//! which makes backhand's grouping provably equal to ours. If two different files share a key (an
//! xxh64 collision, which a hostile package could craft), backhand's dedup is turned off for the
//! whole image — a bigger image, never a wrong one — and the report says which files. Files smaller
//! than one block go to fragments, which backhand never deduplicates; the report counts those
//! duplicates separately. Identical *blocks* (duplicates, shared prefixes) are compressed once.
//!
//! # Parallel compression
//!
//! backhand compresses single-threaded (wcampbell0x2a/backhand#279), but its writer is
//! deterministic given its input, so we can predict every data and fragment block it will ask to
//! compress. Data blocks are queued on a rayon pool as each file comes out of the tar (compression
//! overlaps the export stream); fragment blocks once the tree is sorted. backhand gets a
//! [`CompressionAction`] that serves each block from that table (keyed by the BLAKE3 of the
//! uncompressed block, confirmed by comparing bytes), waits for a block a worker is compressing,
//! and compresses a block nobody started yet itself, so the writer runs concurrently with the
//! workers instead of after them. Anything not predicted (metadata) is compressed inline. Every
//! block is compressed by backhand's own compressor exactly once, so the image is byte-identical
//! for any thread count. Details in `compress.rs`.
//!
//! [`CompressionAction`]: backhand::compression::CompressionAction
//!
//! # Memory
//!
//! File contents are held in memory between reading the tar and writing the image (a multi-GB
//! temporary tar on disk is worse), plus a copy of the small files packed into fragment blocks and
//! the compressed blocks. Peak is about the rootfs size plus its compressed size plus its small
//! files: ~2.5 GiB for a 1.5 GiB rootfs, well within our 24 GiB build hosts. Spilling file
//! contents to a temporary file is the next step if images grow past that.
//!
//! # Crash safety
//!
//! The image is written to `<name>.tmp-<pid>-<n>` next to the output and renamed over it only after
//! it is complete and synced. On error or panic the temporary file is removed; after `kill -9` at
//! most one such file remains, and the next run deletes every `<name>.tmp-*` sibling whose process
//! is gone before it starts.

mod compress;
mod normalize;
mod output;
mod squashfs;
#[cfg(test)]
mod tests;
mod xattr;

/// The backhand version that writes our images (pinned with `=` in builder/Cargo.toml).
pub const BACKHAND_VERSION: &str = "0.25.5";

/// Version of the zstd library compressing squashfs blocks and the initrd, e.g. `1.5.7`.
pub fn zstd_version() -> String {
    zstd::zstd_safe::version_string().to_owned()
}

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::model::Compression;

/// How to write the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashOptions {
    /// Compressor. `lzo` is refused: backhand supports it only under a GPL-only feature.
    pub compressor: Compression,
    /// Compression level; `None` takes [`Compression::default_level`]. Must be `None` for lz4.
    pub level: Option<u32>,
    /// Data block size in bytes: a power of two from 4 KiB to 1 MiB. Default 128 KiB.
    pub block_size: u32,
    /// Every inode's mtime and the superblock's time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u32,
    /// Compression threads; 0 means one per available core. Does not change the output bytes.
    pub threads: usize,
}

impl Default for SquashOptions {
    /// zstd at its default level (15), 128 KiB blocks, epoch 0, all cores.
    fn default() -> Self {
        Self { compressor: Compression::Zstd, level: None, block_size: 128 * 1024, source_date_epoch: 0, threads: 0 }
    }
}

/// What [`tar_to_squashfs`] did: counts, deduplication, compression, every normalization action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Entries read from the tar (PAX and GNU extension headers not counted).
    pub entries: u64,
    /// Inodes in the image, root included.
    pub inodes: u64,
    /// Regular files in the image.
    pub files: u64,
    /// Bytes of regular-file content read from the tar.
    pub bytes_in: u64,
    /// Bytes of regular-file content in the image (after removals; hard links counted per link).
    pub file_bytes: u64,
    /// Size of the image file.
    pub bytes_out: u64,
    /// Deduplication outcome.
    pub dedup: DedupReport,
    /// Compression settings and how the blocks were compressed.
    pub compression: CompressionReport,
    /// Every normalization action, in path order.
    pub actions: Vec<Action>,
    /// What the image lost compared with the tar, one sentence each (empty when nothing).
    pub losses: Vec<String>,
    /// Temporary files of killed earlier runs that were deleted before this one started.
    pub stale_temp_files_removed: Vec<PathBuf>,
}

/// Deduplication outcome; see the module documentation for the method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DedupReport {
    /// Whether identical files (one block or larger) share their data blocks.
    pub enabled: bool,
    /// Why sharing was turned off, when it was.
    pub disabled_reason: Option<String>,
    /// Files whose data is shared with an earlier identical file.
    pub files: u64,
    /// Uncompressed bytes not stored thanks to sharing.
    pub bytes_saved: u64,
    /// Identical files smaller than one block: stored again in fragments (backhand never shares those).
    pub small_duplicates: u64,
    /// Their bytes.
    pub small_duplicate_bytes: u64,
}

/// Compression settings and work split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompressionReport {
    /// Compressor name as in build.toml.
    pub compressor: String,
    /// Level used (`None` for lz4).
    pub level: Option<u32>,
    /// Data block size.
    pub block_size: u32,
    /// Compression threads in the pool (the writer thread helps too).
    pub threads: usize,
    /// Distinct data and fragment blocks predicted and queued for the pool.
    pub blocks_predicted: u64,
    /// Of those, compressed by the pool's workers.
    pub blocks_by_workers: u64,
    /// Of those, compressed by the writer thread because it needed them before a worker got
    /// to them (varies from run to run; the bytes do not).
    pub blocks_by_writer: u64,
    /// Writer requests answered from predicted blocks (duplicates and shared blocks included).
    pub blocks_served: u64,
    /// Writer requests for blocks not predicted (metadata), compressed inline.
    pub blocks_inline: u64,
}

/// One normalization action. Paths are absolute, as in the image (lossy UTF-8 for display).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `path` was removed by `rule`; `entries` counts it and everything below it.
    Removed {
        /// Removed path.
        path: String,
        /// Id of the normalization rule that removed it.
        rule: &'static str,
        /// Entries removed: the path and its descendants.
        entries: u64,
    },
    /// `path` was replaced by a fixed content (`bytes` long, often empty) by `rule`.
    Replaced {
        /// Replaced path.
        path: String,
        /// Id of the normalization rule.
        rule: &'static str,
        /// New length.
        bytes: u64,
    },
    /// setuid/setgid bits cleared.
    SetidStripped {
        /// The entry.
        path: String,
        /// Mode before, octal (e.g. `4755`).
        mode_before: String,
        /// Mode after, octal.
        mode_after: String,
    },
    /// An extended attribute that the image cannot carry.
    XattrDropped {
        /// The entry that had it.
        path: String,
        /// Attribute name, e.g. `security.capability`.
        name: String,
        /// Decoded value where we know how (file capabilities, e.g. `cap_net_raw=ep`).
        value: Option<String>,
    },
    /// A hard link became an independent inode with its target's content and metadata.
    HardlinkCopied {
        /// The link.
        path: String,
        /// What it linked to.
        target: String,
    },
    /// A directory the tar did not list but one of its entries needs (mode 0755, owner 0:0).
    ImplicitDir {
        /// The directory.
        path: String,
    },
    /// The tar's root entry had an owner other than 0:0; the image root is owned by 0:0.
    RootOwnerForced {
        /// uid in the tar.
        uid: u32,
        /// gid in the tar.
        gid: u32,
    },
}

/// Why [`tar_to_squashfs`] failed. Every variant names the tar entry or file involved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The options cannot produce an image.
    #[error("invalid squashfs options: {reason}")]
    Options {
        /// What is wrong.
        reason: String,
    },
    /// Reading the tar stream failed (truncated, corrupt, or the engine connection broke).
    #[error("reading tar entry #{index} ({path}): {source}")]
    TarRead {
        /// 0-based index of the entry being read.
        index: u64,
        /// Its path, or `?` when the header itself could not be read.
        path: String,
        /// Underlying error.
        source: io::Error,
    },
    /// A path that cannot be placed in the image (`..`, a non-directory parent, …).
    #[error("tar entry {path}: {reason}")]
    BadPath {
        /// The path as found in the tar.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same path appears twice in the tar, which an engine export never does.
    #[error("tar lists {path} twice (entries #{first} and #{second})")]
    Duplicate {
        /// The path.
        path: String,
        /// First entry index.
        first: u64,
        /// Second entry index.
        second: u64,
    },
    /// A hard link points at a path the tar does not contain.
    #[error("hard link {path} points at {target}, which is not in the tar")]
    HardlinkTarget {
        /// The link.
        path: String,
        /// Its missing target.
        target: String,
    },
    /// Something in an entry that the image cannot represent (an entry type, a 64-bit uid).
    #[error("tar entry #{index} {path}: unsupported {what}")]
    Unsupported {
        /// 0-based entry index.
        index: u64,
        /// The path.
        path: String,
        /// What, e.g. `entry type GNUVolumeHeader`.
        what: String,
    },
    /// A device number squashfs cannot encode (major ≥ 4096 or minor ≥ 2^20).
    #[error("device {path}: {major}:{minor} does not fit squashfs' 32-bit device number")]
    DeviceNumber {
        /// The device node.
        path: String,
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// backhand refused a node.
    #[error("adding {path} to the squashfs image: {source}")]
    Node {
        /// The node's path in the image.
        path: String,
        /// backhand's error.
        source: backhand::BackhandError,
    },
    /// backhand failed writing the image.
    #[error("writing squashfs {}: {source}", path.display())]
    Squashfs {
        /// The image (temporary) path.
        path: PathBuf,
        /// backhand's error.
        source: backhand::BackhandError,
    },
    /// A filesystem operation on the output failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing: `create`, `rename`, `sync`, ….
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The compression thread pool could not start.
    #[error("starting {threads} compression threads: {source}")]
    ThreadPool {
        /// Requested threads.
        threads: usize,
        /// rayon's error.
        source: rayon::ThreadPoolBuildError,
    },
}

/// Reads a tar stream (a container export), normalizes it and writes a deterministic squashfs
/// image at `out`, replacing any previous file there only on success.
///
/// Stale `<out name>.tmp-*` files left by a killed run are removed first. On error nothing is left
/// at `out` that was not there before, and no temporary file remains.
pub fn tar_to_squashfs<R: Read>(tar: R, out: &Path, opts: &SquashOptions) -> Result<Report, RootfsError> {
    build(tar, out, opts, None)
}

/// Called with the write position before every write of the image: tests inject failures here.
pub(crate) type WriteHook<'h> = &'h dyn Fn(u64) -> io::Result<()>;

/// [`tar_to_squashfs`] with an optional write hook (tests only pass one).
pub(crate) fn build<R: Read>(
    tar: R,
    out: &Path,
    opts: &SquashOptions,
    hook: Option<WriteHook<'_>>,
) -> Result<Report, RootfsError> {
    let resolved = squashfs::Resolved::new(opts)?;
    let stale = output::remove_stale(out)?;
    let engine = Arc::new(compress::Engine::new(resolved.fc, resolved.block_size, resolved.threads)?);
    // Data blocks are compressed on the pool while the rest of the tar is still being read.
    let normalized = normalize::read_tar(tar, &mut |rel, data| engine.submit_file(rel, data))?;
    let (tmp, file) = output::TempOutput::create(out)?;
    let (written, file) = squashfs::write(&normalized.tree, &resolved, engine, tmp.path(), file, hook)?;
    tmp.persist(file)?;

    let tree = &normalized.tree;
    let files = tree.files().count() as u64;
    let file_bytes = tree.files().map(|(_, data)| data.len() as u64).sum();
    let mut report = Report {
        entries: normalized.entries,
        inodes: tree.nodes.len() as u64 + 1,
        files,
        bytes_in: normalized.bytes_in,
        file_bytes,
        bytes_out: written.bytes_out,
        dedup: written.dedup,
        compression: written.compression,
        actions: normalized.actions,
        losses: Vec::new(),
        stale_temp_files_removed: stale,
    };
    report.losses = losses(&report);
    Ok(report)
}

/// Sentences for [`Report::losses`].
fn losses(report: &Report) -> Vec<String> {
    let mut caps = Vec::new();
    let mut others = Vec::new();
    let mut hardlinks = 0;
    for action in &report.actions {
        match action {
            Action::XattrDropped { path, name, value } if name == "security.capability" => {
                caps.push(format!("{path} {}", value.as_deref().unwrap_or("(undecoded)")));
            }
            Action::XattrDropped { path, name, .. } => others.push(format!("{path} {name}")),
            Action::HardlinkCopied { .. } => hardlinks += 1,
            _ => {}
        }
    }
    let mut out = Vec::new();
    if !caps.is_empty() {
        out.push(format!(
            "{} file capabilities dropped (squashfs written by backhand carries no xattrs): {}. \
             These binaries run with the caller's privileges only; acceptable in a capsem guest, \
             which has no network interface and runs commands as root.",
            caps.len(),
            caps.join(", ")
        ));
    }
    if !others.is_empty() {
        out.push(format!("{} other extended attributes dropped: {}.", others.len(), others.join(", ")));
    }
    if hardlinks > 0 {
        out.push(format!(
            "{hardlinks} hard links became independent inodes (same content and metadata; \
             inode identity and link counts are lost)."
        ));
    }
    if !report.dedup.enabled {
        out.push(format!(
            "identical files are stored separately: {}",
            report.dedup.disabled_reason.as_deref().unwrap_or("deduplication disabled")
        ));
    }
    out
}

/// `/`-prefixed display form of an image path.
pub(crate) fn display_path(rel: &Path) -> String {
    let s = rel.to_string_lossy();
    if s.is_empty() { "/".to_owned() } else { format!("/{s}") }
}
