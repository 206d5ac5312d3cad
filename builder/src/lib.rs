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
//! - [`build`]: orchestration of a rootfs build: time, base, context, engine build, export.
//! - [`scaffold`], [`inspect`], [`doctor`]: authoring and prerequisite commands.
#![forbid(unsafe_code)]

pub mod build;
pub mod diag;
pub mod doctor;
pub mod engine;
pub mod inspect;
pub mod model;
pub mod plan;
pub mod raw;
pub mod rawconfig;
pub mod render;
pub mod rootfs;
pub mod scaffold;
pub mod settings;
pub mod source;
pub mod validate;
