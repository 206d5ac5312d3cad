//! Both config files, loaded once per `capsem` invocation.
//!
//! Trusted keys are needed before anything else (to verify the release, which carries the
//! image's `defaults.json`); the rest of the layering needs that verified `defaults.json`.

use super::{Config, ConfigError, Effective, Paths, RunOverrides, TrustedKeySource, load_configs};

/// `user.toml` and `corp.toml` (each `None` when absent).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub user: Option<Config>,
    pub corp: Option<Config>,
}

impl Loaded {
    /// Reads both files, reporting the problems of both at once.
    pub fn load(paths: &Paths) -> Result<Loaded, ConfigError> {
        let (user, corp) = load_configs(paths)?;
        Ok(Loaded { user, corp })
    }

    /// Keys trusted to sign releases: corp's when corp.toml has `[trust]`, else the user's.
    pub fn trusted_keys(&self) -> Vec<TrustedKeySource> {
        let pick = |c: &Option<Config>| c.as_ref().and_then(|c| c.trust.as_ref()).map(|t| t.value.clone());
        pick(&self.corp).or_else(|| pick(&self.user)).unwrap_or_default()
    }

    /// The settings of one run: the image's verified `defaults.json` < user < `overrides` < corp.
    pub fn resolve(&self, defaults_json: &[u8], overrides: &RunOverrides) -> Result<Effective, ConfigError> {
        Effective::resolve(defaults_json, self.user.as_ref(), self.corp.as_ref(), overrides)
    }
}
