//! capsem-trust: the format shared by the builder (which writes and signs it) and the runtime
//! (which refuses to boot anything it does not vouch for).
//!
//! - [`manifest`]: the `manifest.json` schema and its canonical bytes.
//! - [`b3sums`]: fast BLAKE3 of files, the `B3SUMS` list (`b3sum -c` format), and the checks of
//!   files against it and against the manifest.
//! - [`signature`]: verification of minisign (Ed25519) signatures; signing lives in the builder.
//! - [`release`]: verification of a whole release directory, every check reported.
//! - [`boot`]: the check the runtime runs before every boot ([`verify_for_boot`]): signature,
//!   manifest, and every boot file opened once and hashed from its descriptor.
//! - [`rollback`]: the newest release of each image accepted on this machine, so an older one is
//!   refused.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod b3sums;
pub mod boot;
pub mod manifest;
pub mod release;
pub mod rollback;
pub mod signature;

pub use b3sums::{B3Error, Entry, FileCheck, Outcome, hash_file, verify_assets, verify_b3sums};
pub use boot::{
    BOOT_ASSETS, BootError, INITRD_FILE, KERNEL_FILE, ROOTFS_FILE, SignedBy, TrustedKey, VerifiedFile, VerifiedRelease,
    VerifyTimings, verify_for_boot,
};
pub use manifest::{ArchEntry, Asset, Manifest, ManifestError, Package, Vulnerability};
pub use release::{Check, CheckKind, Report, verify_release};
pub use rollback::{RollbackError, RollbackStore};
pub use signature::{KeyId, PublicKey, SignatureError, Verified};
