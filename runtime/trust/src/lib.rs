//! capsem-trust: the format shared by the builder (which writes and signs it) and the runtime
//! (which refuses to boot anything it does not vouch for).
//!
//! - [`manifest`]: the `manifest.json` schema and its canonical bytes.
//! - [`b3sums`]: fast BLAKE3 of files, the `B3SUMS` list (`b3sum -c` format), and the checks of
//!   files against it and against the manifest.
//! - [`signature`]: verification of minisign (Ed25519) signatures; signing lives in the builder.
//! - [`release`]: verification of a whole release directory, every check reported.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod b3sums;
pub mod manifest;
pub mod release;
pub mod signature;

pub use b3sums::{B3Error, Entry, FileCheck, Outcome, hash_file, verify_assets, verify_b3sums};
pub use manifest::{ArchEntry, Asset, Manifest, ManifestError, Package, Vulnerability};
pub use release::{Check, CheckKind, Report, verify_release};
pub use signature::{KeyId, PublicKey, SignatureError, Verified};
