//! [`BootError`]: why a release was refused before boot — one variant per failure class, each
//! naming the file it is about, so the message alone tells the user what to look at.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::rollback::RollbackError;
use crate::signature::{KeyId, SignatureError};

/// Where trusted keys are configured, for messages about missing or untrusted keys.
pub const KEY_CONFIG_HELP: &str = "trusted keys come from `[trust] public_keys` (or `public_key_files`) in \
                                   /etc/capsem/corp.toml when it has a `[trust]` section, else in ~/.capsem/user.toml";

/// A trusted key's id and where it was configured, as shown in [`BootError::UntrustedKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// The key id.
    pub key_id: KeyId,
    /// Where it was configured (e.g. `/etc/capsem/corp.toml:4`).
    pub origin: String,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.key_id, self.origin.escape_debug())
    }
}

/// A release version and build time, as shown in [`BootError::Rollback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStamp {
    /// `manifest.version`.
    pub version: String,
    /// `manifest.build_timestamp` (RFC 3339).
    pub build_timestamp: String,
    /// `manifest.source_date_epoch`.
    pub source_date_epoch: u64,
}

impl fmt::Display for ReleaseStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {} built {}", self.version.escape_debug(), self.build_timestamp.escape_debug())
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Why [`verify_for_boot`](super::verify_for_boot) refused a release. Every variant names a path.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The trusted key list is empty: nothing can be verified, so nothing boots.
    #[error(
        "cannot verify `{}`: no trusted public key is configured; add the release signer's public \
         key (its minisign base64 line, `RW…`) to `[trust] public_keys` in ~/.capsem/user.toml \
         (or `public_key_files`; an organisation sets them in /etc/capsem/corp.toml)",
        path.display()
    )]
    NoTrustedKeys {
        /// The signature that could not be checked.
        path: PathBuf,
    },
    /// `manifest.json` does not exist.
    #[error("`{}` is missing: not a capsem release directory, or an incomplete one", path.display())]
    ManifestMissing {
        /// The manifest path.
        path: PathBuf,
    },
    /// `manifest.json.minisig` does not exist: an unsigned release.
    #[error("`{}` is missing: the release is not signed, and capsem boots only signed releases", path.display())]
    SignatureMissing {
        /// The signature path.
        path: PathBuf,
    },
    /// The signature was made by a key that is not trusted.
    #[error(
        "`{}` is signed by key {key_id}, which is not trusted (trusted: {}); {KEY_CONFIG_HELP}",
        path.display(),
        list(trusted)
    )]
    UntrustedKey {
        /// The signature path.
        path: PathBuf,
        /// The key id inside the signature.
        key_id: KeyId,
        /// The trusted keys it was checked against.
        trusted: Vec<KeyOrigin>,
    },
    /// The signature is malformed or does not verify over the manifest's bytes.
    #[error("`{}` does not verify `{}`: {source}", path.display(), manifest.display())]
    BadSignature {
        /// The signature path.
        path: PathBuf,
        /// The manifest it should cover.
        manifest: PathBuf,
        /// What the signature check found.
        #[source]
        source: SignatureError,
    },
    /// The signed manifest does not parse, or names files unsafely.
    #[error("`{}` is not a valid manifest: {reason}", path.display())]
    ManifestInvalid {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest has no entry for the host's architecture.
    #[error(
        "`{}` has no `{}` architecture (it has: {}); build the image for `{}`",
        path.display(),
        wanted.escape_debug(),
        list(available),
        wanted.escape_debug()
    )]
    WrongArch {
        /// The manifest path.
        path: PathBuf,
        /// The architecture asked for.
        wanted: String,
        /// The architectures the manifest lists.
        available: Vec<String>,
    },
    /// A required boot asset has no entry in the manifest.
    #[error("`{}` is unlisted: `{}` has no `{name}` asset for `{}`", path.display(), manifest.display(), arch.escape_debug())]
    AssetUnlisted {
        /// Where the asset would be.
        path: PathBuf,
        /// The manifest path.
        manifest: PathBuf,
        /// The architecture.
        arch: String,
        /// The asset's file name.
        name: &'static str,
    },
    /// A listed file does not exist.
    #[error("`{}` is missing (the signed manifest lists it)", path.display())]
    AssetMissing {
        /// The file.
        path: PathBuf,
    },
    /// A release file is a symbolic link; release files are opened without following links.
    #[error("`{}` is a symbolic link; release files must be regular files, not links", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A release file is a directory, FIFO, device or socket (or the architecture directory is
    /// not a directory).
    #[error("`{}` is a {kind}, not a {expected}", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
        /// What it should be: `regular file` (or `directory`, for the architecture directory).
        expected: &'static str,
    },
    /// A file is smaller than the manifest says.
    #[error("`{}` is truncated: the manifest lists {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The listed size.
        expected: u64,
        /// Its size.
        found: u64,
    },
    /// A file is larger than the manifest says.
    #[error(
        "`{}` has the wrong size: the manifest lists {expected} bytes, found {found}; the file was \
         modified or replaced",
        path.display()
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The listed size.
        expected: u64,
        /// Its size.
        found: u64,
    },
    /// A file's BLAKE3 differs from the manifest's.
    #[error(
        "`{}` does not match the signed manifest: BLAKE3 expected {expected}, found {found}; the \
         file was modified or replaced",
        path.display()
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The listed BLAKE3.
        expected: String,
        /// Its BLAKE3.
        found: String,
    },
    /// A file changed (size or mtime) while it was being verified.
    #[error("`{}` was modified during verification ({what}); try again", path.display())]
    ModifiedDuringVerification {
        /// The file.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// The release is older than one this machine already accepted for the same image.
    #[error(
        "refusing to roll back image `{}`: `{}` is {presented}, older than {recorded}, which \
         `{}` records as already booted; boot a release at least as new, or remove the entry \
         from that file if the downgrade is deliberate",
        name.escape_debug(),
        manifest.display(),
        store.display()
    )]
    Rollback {
        /// The rollback store.
        store: PathBuf,
        /// The manifest refused.
        manifest: PathBuf,
        /// The image name.
        name: String,
        /// The release presented.
        presented: Box<ReleaseStamp>,
        /// The newest release recorded.
        recorded: Box<ReleaseStamp>,
    },
    /// The rollback store could not be read or written.
    #[error(transparent)]
    RollbackStore(#[from] RollbackError),
    /// Any other I/O error.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl BootError {
    /// The file the error is about: the asset, manifest or signature; for [`BootError::Rollback`]
    /// and [`BootError::RollbackStore`], the rollback store.
    pub fn path(&self) -> Option<&Path> {
        Some(match self {
            BootError::NoTrustedKeys { path }
            | BootError::ManifestMissing { path }
            | BootError::SignatureMissing { path }
            | BootError::UntrustedKey { path, .. }
            | BootError::BadSignature { path, .. }
            | BootError::ManifestInvalid { path, .. }
            | BootError::WrongArch { path, .. }
            | BootError::AssetUnlisted { path, .. }
            | BootError::AssetMissing { path }
            | BootError::Symlink { path }
            | BootError::NotRegular { path, .. }
            | BootError::Truncated { path, .. }
            | BootError::SizeMismatch { path, .. }
            | BootError::HashMismatch { path, .. }
            | BootError::ModifiedDuringVerification { path, .. }
            | BootError::Io { path, .. } => path,
            BootError::Rollback { store, .. } => store,
            BootError::RollbackStore(e) => e.path(),
        })
    }
}
