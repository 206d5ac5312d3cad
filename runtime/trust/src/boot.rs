//! The check the runtime runs before every boot (and `capsem verify`): [`verify_for_boot`].
//! There is no way to skip it — no flag, no environment variable, no "unsigned" mode; a release
//! that fails any step does not boot, and the [`BootError`] names the file to look at.
//!
//! # Steps, in order
//!
//! 1. At least one trusted key ([`BootError::NoTrustedKeys`] otherwise).
//! 2. `manifest.json` and `manifest.json.minisig` exist; each is opened once and read into memory
//!    (bounded sizes).
//! 3. The signature verifies over those exact bytes with a trusted key: a signature by a key
//!    that is not trusted names its key id and the trusted ones with where each was configured.
//! 4. The manifest is parsed from the same bytes that were verified — never re-read.
//! 5. It has an entry for the host's architecture, listing `vmlinuz`, `initrd.img` and
//!    `rootfs.squashfs`; architecture and file names are single plain path components.
//! 6. Rollback: if a [`RollbackStore`] is given and records a newer release of the same image
//!    (`manifest.name`; order in [`crate::rollback`]), refuse. This runs before any asset is
//!    opened: it needs only the verified manifest, and a refused release costs no hashing.
//! 7. Each asset and `defaults.json` is opened exactly once — `openat` relative to the release
//!    directory, `O_RDONLY | O_NOFOLLOW` (a symlink is refused, as is a symlinked architecture
//!    directory), and `fstat` must show a regular file of exactly the listed size (smaller:
//!    [`BootError::Truncated`]; larger: [`BootError::SizeMismatch`]).
//! 8. BLAKE3 of every opened file, from the open descriptors, the files in parallel and each
//!    large one memory-mapped and hashed on every core (`b3sum`'s method, shared with
//!    [`crate::b3sums::hash_file`]); `defaults.json` is read into memory once and hashed from
//!    those bytes, which are the settings returned.
//! 9. `fstat` again: size and mtime unchanged ([`BootError::ModifiedDuringVerification`]
//!    otherwise), then each hash against the manifest ([`BootError::HashMismatch`]).
//!
//! # What the returned files guarantee
//!
//! [`VerifiedFile::file`] is the descriptor that was hashed, and it is what the hypervisor gets
//! (the runtime hands `/proc/self/fd/N` — [`VerifiedFile::fd_path`] — to QEMU, or the
//! descriptor itself to the in-process VMM): the VM boots the inode that was verified, whatever
//! the path names by then. Replacing, renaming or deleting the path after verification changes
//! nothing for this boot.
//!
//! The remaining caveat: a descriptor pins the inode, not its contents. Someone with write
//! permission to the file itself (its owner, or root) can still write into it **in place** after
//! step 9, and the VM would read those bytes. Install releases read-only and owned by another
//! user than the one running capsem (e.g. root-owned, mode 0444) to close that; a write during
//! steps 8–9 is caught by the second `fstat`. Truncating a file while it is memory-mapped for
//! hashing kills the process with `SIGBUS` — nothing boots, so that fails closed too.
//!
//! The descriptors are opened `O_CLOEXEC`: a child process (QEMU) inherits one only when the
//! runtime passes it deliberately.
//!
//! Only what boot needs is checked here; the SBOM and `B3SUMS` are checked by
//! [`crate::release::verify_release`] (`capsem-builder verify`).

pub mod error;
mod open;

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::{BootError, KEY_CONFIG_HELP, KeyOrigin, ReleaseStamp};

use crate::manifest::{Asset, FORMAT, MANIFEST_FILE, Manifest, ManifestError, SIGNATURE_FILE};
use crate::release::MAX_MANIFEST_BYTES;
use crate::rollback::{RollbackStore, Seen};
use crate::signature::{self, KeyId, MAX_SIGNATURE_BYTES, PublicKey, SignatureError};

/// File name of the kernel inside `<arch>/` (what the builder writes).
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of the initramfs inside `<arch>/`.
pub const INITRD_FILE: &str = "initrd.img";
/// File name of the root filesystem inside `<arch>/`.
pub const ROOTFS_FILE: &str = "rootfs.squashfs";
/// The assets every architecture must list to boot.
pub const BOOT_ASSETS: [&str; 3] = [KERNEL_FILE, INITRD_FILE, ROOTFS_FILE];

/// A public key the user or the organisation trusts, and where it was configured.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Where it came from, for messages: e.g. `/etc/capsem/corp.toml:4`.
    pub origin: String,
}

impl TrustedKey {
    /// A key and its origin.
    pub fn new(key: PublicKey, origin: impl Into<String>) -> TrustedKey {
        TrustedKey { key, origin: origin.into() }
    }
}

/// Which trusted key vouched for the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    /// The key id.
    pub key_id: KeyId,
    /// Where that key was configured ([`TrustedKey::origin`]).
    pub origin: String,
    /// `true` for a prehashed (`ED`) signature, `false` for legacy `Ed`.
    pub prehashed: bool,
    /// The signature's trusted comment (covered by the signature).
    pub trusted_comment: String,
}

impl std::fmt::Display for SignedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {} (from {})", self.key_id, self.origin.escape_debug())
    }
}

/// One verified file, open.
#[derive(Debug)]
pub struct VerifiedFile {
    /// Its path when it was opened (the path may name another file by now; `file` does not).
    pub path: PathBuf,
    /// The open, read-only descriptor that was hashed, positioned at offset 0.
    pub file: File,
    /// Its size in bytes, as the manifest lists it.
    pub size: u64,
    /// Its BLAKE3, as the manifest lists it.
    pub b3: String,
}

impl VerifiedFile {
    /// A path naming this open file in this process (`/proc/self/fd/N` on Linux, `/dev/fd/N`
    /// elsewhere): opening it opens the verified inode. Valid while `file` is open, and only in
    /// this process unless the descriptor is passed on.
    pub fn fd_path(&self) -> PathBuf {
        open::fd_path(&self.file)
    }
}

/// How long verification took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyTimings {
    /// Reading the manifest and signature and checking the signature.
    pub signature: Duration,
    /// Opening and hashing the assets and the settings file.
    pub hashing: Duration,
    /// Bytes hashed (every asset plus the settings file).
    pub bytes_hashed: u64,
}

/// A release that passed every check, with its boot files open.
#[derive(Debug)]
pub struct VerifiedRelease {
    /// The release directory.
    pub dir: PathBuf,
    /// The manifest, parsed from the bytes the signature covers.
    pub manifest: Manifest,
    /// The trusted key that signed it.
    pub key: SignedBy,
    /// The architecture verified.
    pub arch: String,
    /// `<arch>/vmlinuz`.
    pub kernel: VerifiedFile,
    /// `<arch>/initrd.img`.
    pub initrd: VerifiedFile,
    /// `<arch>/rootfs.squashfs`.
    pub rootfs: VerifiedFile,
    /// The bytes of `defaults.json`, read once and hashed from these bytes.
    pub settings: Vec<u8>,
    /// How long each phase took.
    pub timings: VerifyTimings,
}

/// Verifies the release in `dir` for booting `arch` (`x86_64`, `arm64`) with the trusted `keys`
/// and, when given, the rollback `store`. See the [module docs](self) for every step. On success
/// the caller may [`RollbackStore::record`] the manifest.
pub fn verify_for_boot(
    dir: &Path,
    arch: &str,
    keys: &[TrustedKey],
    rollback: Option<&RollbackStore>,
) -> Result<VerifiedRelease, BootError> {
    let started = Instant::now();
    let manifest_path = dir.join(MANIFEST_FILE);
    let sig_path = dir.join(SIGNATURE_FILE);
    if keys.is_empty() {
        return Err(BootError::NoTrustedKeys { path: sig_path });
    }

    // 2–4. The signature over the exact manifest bytes; the manifest from those bytes.
    let dirfd = open::open_dir(dir)?;
    let manifest_bytes = read_small(&dirfd, MANIFEST_FILE, &manifest_path, MAX_MANIFEST_BYTES, |path| {
        BootError::ManifestMissing { path }
    })?
    .map_err(|limit| BootError::ManifestInvalid {
        path: manifest_path.clone(),
        reason: format!("larger than {limit} bytes"),
    })?;
    let bad_sig = |source| BootError::BadSignature { path: sig_path.clone(), manifest: manifest_path.clone(), source };
    let sig_bytes = read_small(&dirfd, SIGNATURE_FILE, &sig_path, MAX_SIGNATURE_BYTES, |path| {
        BootError::SignatureMissing { path }
    })?
    .map_err(|limit| bad_sig(SignatureError::Malformed(format!("larger than {limit} bytes"))))?;
    let sig_text =
        String::from_utf8(sig_bytes).map_err(|_| bad_sig(SignatureError::Malformed("not UTF-8 text".into())))?;
    let key = check_signature(&manifest_bytes, &sig_text, keys).map_err(|e| match e {
        SigOutcome::Untrusted(key_id) => BootError::UntrustedKey {
            path: sig_path.clone(),
            key_id,
            trusted: keys.iter().map(|k| KeyOrigin { key_id: k.key.key_id(), origin: k.origin.clone() }).collect(),
        },
        SigOutcome::Bad(source) => bad_sig(source),
    })?;
    let signature_time = started.elapsed();
    let manifest = Manifest::parse(&manifest_bytes).map_err(|e| BootError::ManifestInvalid {
        path: manifest_path.clone(),
        reason: match e {
            ManifestError::Json(e) => e.to_string(),
            ManifestError::Format { found } => format!("format {found}; this version reads format {FORMAT} only"),
        },
    })?;
    drop(manifest_bytes);

    // 5. The architecture and its boot assets.
    let invalid = |reason: String| BootError::ManifestInvalid { path: manifest_path.clone(), reason };
    let Some(entry) = manifest.arch(arch) else {
        return Err(BootError::WrongArch {
            path: manifest_path,
            wanted: arch.to_owned(),
            available: manifest.architectures.iter().map(|a| a.arch.clone()).collect(),
        });
    };
    if !open::is_component(&entry.arch) {
        return Err(invalid(format!("architecture {:?} is not a plain directory name", entry.arch)));
    }
    if !open::is_component(&manifest.settings.filename) {
        return Err(invalid(format!("settings file {:?} is not a plain file name", manifest.settings.filename)));
    }
    let arch_dir = dir.join(&entry.arch);
    let mut listed: Vec<&Asset> = Vec::with_capacity(BOOT_ASSETS.len());
    for name in BOOT_ASSETS {
        let asset = entry.asset(name).ok_or_else(|| BootError::AssetUnlisted {
            path: arch_dir.join(name),
            manifest: manifest_path.clone(),
            arch: entry.arch.clone(),
            name,
        })?;
        listed.push(asset);
    }

    // 6. Rollback.
    if let Some(store) = rollback
        && let Some(recorded) = store.newer_than(&manifest)
    {
        return Err(BootError::Rollback {
            store: store.path().to_path_buf(),
            manifest: manifest_path,
            name: manifest.name.clone(),
            presented: Box::new(Seen::of(&manifest).stamp()),
            recorded: Box::new(recorded.stamp()),
        });
    }

    // 7. Open each file once; type and size from fstat.
    let hashing_started = Instant::now();
    let archfd = open::open_subdir(&dirfd, &entry.arch, &arch_dir, |path| BootError::AssetMissing { path })?;
    let mut opened = Vec::with_capacity(BOOT_ASSETS.len() + 1);
    for asset in &listed {
        opened.push(open_listed(&archfd, &arch_dir, asset)?);
    }
    let settings_file = open_listed(&dirfd, dir, &manifest.settings)?;

    // 8. Hash everything in parallel, from the open descriptors.
    let (asset_hashes, settings_read) = std::thread::scope(|s| {
        let assets: Vec<_> = opened.iter().map(|o| s.spawn(move || open::hash_open_file(&o.file, &o.path))).collect();
        let settings = open::read_open_file(&settings_file.file, &settings_file.path, settings_file.asset.size);
        let assets: Vec<_> =
            assets.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect();
        (assets, settings)
    });

    // 9. Unchanged since opened, and as the manifest says.
    let mut bytes_hashed = 0;
    for (o, hashed) in opened.iter().zip(asset_hashes) {
        let (count, found) = hashed?;
        o.unchanged(count)?;
        o.matches(&found)?;
        bytes_hashed += count;
    }
    let settings = settings_read?;
    settings_file.unchanged(settings.len() as u64)?;
    settings_file.matches(blake3::hash(&settings).to_hex().as_str())?;
    bytes_hashed += settings.len() as u64;
    let hashing_time = hashing_started.elapsed();

    let mut files = opened.into_iter().map(Opened::into_verified);
    let (kernel, initrd, rootfs) = match (files.next(), files.next(), files.next()) {
        (Some(k), Some(i), Some(r)) => (k, i, r),
        _ => unreachable!("three boot assets were opened"),
    };
    Ok(VerifiedRelease {
        dir: dir.to_path_buf(),
        arch: entry.arch.clone(),
        manifest,
        key,
        kernel,
        initrd,
        rootfs,
        settings,
        timings: VerifyTimings { signature: signature_time, hashing: hashing_time, bytes_hashed },
    })
}

/// Why no trusted key vouched for the signature.
enum SigOutcome {
    /// Made by a key that is not in the list: its id.
    Untrusted(KeyId),
    /// Malformed, or a trusted key id whose signature does not verify.
    Bad(SignatureError),
}

/// Tries every trusted key whose id matches the signature's (ids may repeat across configs).
fn check_signature(data: &[u8], sig: &str, keys: &[TrustedKey]) -> Result<SignedBy, SigOutcome> {
    let mut untrusted = None;
    let mut bad = None;
    for k in keys {
        match signature::verify(data, sig, &k.key) {
            Ok(v) => {
                return Ok(SignedBy {
                    key_id: v.key_id,
                    origin: k.origin.clone(),
                    prehashed: v.prehashed,
                    trusted_comment: v.trusted_comment,
                });
            }
            Err(SignatureError::KeyMismatch { signature, .. }) => untrusted = Some(signature),
            // Malformed or unsupported: the same for every key.
            Err(e @ (SignatureError::Malformed(_) | SignatureError::UnsupportedAlgorithm(_))) => {
                return Err(SigOutcome::Bad(e));
            }
            Err(e) => bad = bad.or(Some(e)),
        }
    }
    match (bad, untrusted) {
        (Some(e), _) => Err(SigOutcome::Bad(e)),
        (None, Some(id)) => Err(SigOutcome::Untrusted(id)),
        (None, None) => unreachable!("keys is not empty"),
    }
}

/// Opens a small release file once and reads it whole: `Ok(Err(limit))` when it is larger than
/// `limit` bytes.
fn read_small(
    dirfd: &OwnedFd,
    name: &str,
    path: &Path,
    limit: u64,
    missing: impl FnOnce(PathBuf) -> BootError,
) -> Result<Result<Vec<u8>, u64>, BootError> {
    let (file, snapshot) = open::open_regular(dirfd, name, path, missing)?;
    if snapshot.size > limit {
        return Ok(Err(limit));
    }
    let mut bytes = Vec::with_capacity(snapshot.size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| BootError::Io { path: path.to_path_buf(), source })?;
    Ok(if bytes.len() as u64 > limit { Err(limit) } else { Ok(bytes) })
}

/// A listed file, open, with its `fstat` at open time.
struct Opened<'m> {
    path: PathBuf,
    file: File,
    asset: &'m Asset,
    snapshot: open::Snapshot,
}

fn open_listed<'m>(dirfd: &OwnedFd, dir: &Path, asset: &'m Asset) -> Result<Opened<'m>, BootError> {
    let path = dir.join(&asset.filename);
    let (file, snapshot) = open::open_regular(dirfd, &asset.filename, &path, |path| BootError::AssetMissing { path })?;
    let (expected, found) = (asset.size, snapshot.size);
    if found < expected {
        return Err(BootError::Truncated { path, expected, found });
    }
    if found > expected {
        return Err(BootError::SizeMismatch { path, expected, found });
    }
    Ok(Opened { path, file, asset, snapshot })
}

impl Opened<'_> {
    /// `fstat` again: same file, size and mtime; and `count` bytes were hashed.
    fn unchanged(&self, count: u64) -> Result<(), BootError> {
        let after = open::Snapshot::of(&self.file, &self.path)?;
        let what = self.snapshot.changes(&after).or_else(|| {
            (count != self.snapshot.size)
                .then(|| format!("{count} bytes read of the {} it had when opened", self.snapshot.size))
        });
        match what {
            None => Ok(()),
            Some(what) => Err(BootError::ModifiedDuringVerification { path: self.path.clone(), what }),
        }
    }

    fn matches(&self, found: &str) -> Result<(), BootError> {
        if found == self.asset.b3 {
            return Ok(());
        }
        Err(BootError::HashMismatch {
            path: self.path.clone(),
            expected: self.asset.b3.clone(),
            found: found.to_owned(),
        })
    }

    fn into_verified(self) -> VerifiedFile {
        VerifiedFile { path: self.path, file: self.file, size: self.asset.size, b3: self.asset.b3.clone() }
    }
}
