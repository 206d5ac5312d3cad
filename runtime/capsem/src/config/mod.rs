//! Runtime configuration: where files live, what users and organisations may set, and how it
//! layers over the image's boot-time defaults.
//!
//! - [`paths`]: `CAPSEM_HOME` (`~/.capsem`: `user.toml`, rollback store, `run/`) and
//!   `CAPSEM_CORP_CONFIG` (`/etc/capsem/corp.toml`).
//! - [`raw`] (private): the TOML as written, with spans; every unknown key and type error of a
//!   file reported at once.
//! - [`file`]: one validated file, [`Config`] (trust keys, resources, environment, web, AI keys).
//! - [`defaults`]: the image's `defaults.json`, as the builder writes it.
//! - [`effective`]: layering defaults < user < per-run overrides < corp into [`Effective`].
//! - [`loaded`]: both files of one invocation; trusted keys before the release is read.
//! - [`diag`]: coded diagnostics (`C001`…) and [`ConfigError`].
//! - [`values`]: validated value types; [`Secret`] never prints its value.
//! - [`memory`]: `--memory` sizes (`512M`, `2GiB`).
//!
//! The same sections are accepted in `user.toml` and `corp.toml`:
//!
//! ```toml
//! [trust]
//! public_keys = ["RW…"]              # minisign public key lines
//! public_key_files = ["capsem.pub"]  # relative to this file's directory
//!
//! [resources]                        # the keys of the image's vm/resources.toml
//! cpu_count = 2
//! ram_gb = 8
//!
//! [environment]
//! hostname = "dev"
//! [environment.vars]
//! EDITOR = "nvim"
//!
//! [web]
//! allow_read = false
//! custom_allow = ["*.example.com"]
//! custom_block = ["ads.example.com"]
//! upstream_ca_file = "corp-ca.pem"  # extra CAs trusted upstream; relative to this file
//!
//! [ai.anthropic]
//! api_key = "sk-ant-…"               # injected as the provider's env vars; never logged
//! enabled = true
//! ```

pub mod defaults;
pub mod diag;
pub mod effective;
pub mod file;
pub mod loaded;
pub mod memory;
pub mod paths;
mod raw;
pub mod values;

#[cfg(test)]
mod tests;

pub use diag::{Code, ConfigError, Diagnostic, Location, Origin};
pub use effective::{BootFile, Effective, RunOverrides, WebPolicy, load_configs};
pub use file::{Config, Layer, ProviderConfig, Setting, TrustedKeySource, WebConfig};
pub use loaded::Loaded;
pub use memory::parse_memory;
pub use paths::Paths;
pub use values::{DomainPattern, EnvName, Hostname, Secret};
