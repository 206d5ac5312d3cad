//! capsem-builder: image definition (TOML tree) → validated model → build plan → boot assets.
//!
//! Layers, in data-flow order (see ARCHITECTURE.md):
//! - [`source`]: reading files into memory with line indexes, so every span becomes file:line:col.
//! - [`diag`]: coded diagnostics and their human and JSON renderings.
//! - [`raw`]: the TOML mirror — every value with its span, unknown keys rejected.
//! - [`model`]: the validated model — newtypes, no `Deserialize`.
//! - [`validate`]: raw → model, returning every diagnostic at once.
//! - [`plan`] and [`render`]: model → build plan → Dockerfiles.
//! - [`settings`]: model → `defaults.json` (boot-time settings).
//! - [`engine`]: the container engine API (bollard): build, import, export, clean up.
//! - [`rootfs`]: container export (tar stream) → normalized, deterministic squashfs.
//! - [`initrd`]: busybox + init + guest binaries → sorted newc cpio → deterministic zstd.
//! - [`bom`]: the packages installed in a built rootfs (read from its package databases) and the
//!   CycloneDX SBOM.
//! - [`build`]: orchestration of a rootfs build: time, base, context, engine build, export.
//! - [`sign`]: minisign key generation and deterministic signing of release manifests.
//! - [`audit`]: a scanner's report (trivy, grype) matched to the bill of materials, judged by
//!   the image's `[audit]` policy, recorded in the manifest.
//! - [`scaffold`], [`inspect`], [`doctor`]: authoring and prerequisite commands.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bom;
pub mod build;
pub mod compare;
pub mod diag;
pub mod doctor;
pub mod engine;
pub mod initrd;
pub mod inspect;
pub mod kernel_source;
pub mod model;
pub mod plan;
pub mod raw;
pub mod rawconfig;
pub mod render;
pub mod rootfs;
pub mod scaffold;
pub mod settings;
pub mod sign;
pub mod source;
pub mod validate;
