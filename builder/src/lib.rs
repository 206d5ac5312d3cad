//! capsem-builder: image definition (TOML tree) → validated model → build plan → boot assets.
//!
//! Layers, in data-flow order (see ARCHITECTURE.md):
//! - [`source`]: reading files into memory with line indexes, so every span becomes file:line:col.
//! - [`diag`]: coded diagnostics and their human and JSON renderings.
//! - [`raw`]: the TOML mirror — every value with its span, unknown keys rejected.
//! - [`model`]: the validated model — newtypes, no `Deserialize`.
//! - [`validate`]: raw → model, returning every diagnostic at once.
//! - [`plan`] and [`render`]: model → build plan → Dockerfiles.
#![forbid(unsafe_code)]

pub mod diag;
pub mod model;
pub mod plan;
pub mod raw;
pub mod rawconfig;
pub mod source;
pub mod scaffold;
pub mod settings;
pub mod inspect;
pub mod validate;
pub mod doctor;
pub mod render;
