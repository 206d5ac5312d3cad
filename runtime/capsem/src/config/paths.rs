//! Where the runtime's configuration and state live.
//!
//! `CAPSEM_HOME` (default `$HOME/.capsem`) holds `user.toml`, the rollback store
//! `trusted-releases.json` and the socket directory `run/`; `CAPSEM_CORP_CONFIG` (default
//! `/etc/capsem/corp.toml`) names the organisation's config. Nothing here touches the disk.

use std::ffi::OsString;
use std::path::PathBuf;

use super::diag::ConfigError;

/// Default corp config path.
pub const DEFAULT_CORP_FILE: &str = "/etc/capsem/corp.toml";

/// The runtime's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `$CAPSEM_HOME`, default `$HOME/.capsem`.
    pub home: PathBuf,
    /// `home/user.toml`.
    pub user_file: PathBuf,
    /// `$CAPSEM_CORP_CONFIG`, default `/etc/capsem/corp.toml`.
    pub corp_file: PathBuf,
    /// Rollback store: the newest release version seen per key (`home/trusted-releases.json`).
    pub rollback_store: PathBuf,
    /// Runtime directory for sockets (`home/run`).
    pub run_dir: PathBuf,
}

impl Paths {
    /// From the process environment.
    pub fn from_env() -> Result<Paths, ConfigError> {
        Paths::from_vars(|name| std::env::var_os(name))
    }

    /// From an environment lookup (empty values count as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Paths, ConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = match var("CAPSEM_HOME") {
            Some(h) => h,
            None => var("HOME").ok_or(ConfigError::NoHome)?.join(".capsem"),
        };
        let corp_file = var("CAPSEM_CORP_CONFIG").unwrap_or_else(|| PathBuf::from(DEFAULT_CORP_FILE));
        Ok(Paths::new(home, corp_file))
    }

    /// For an explicit home directory and corp file.
    pub fn new(home: PathBuf, corp_file: PathBuf) -> Paths {
        Paths {
            user_file: home.join("user.toml"),
            rollback_store: home.join("trusted-releases.json"),
            run_dir: home.join("run"),
            corp_file,
            home,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn home_and_corp_come_from_the_environment() {
        let p = Paths::from_vars(env(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(p.home, PathBuf::from("/home/u/.capsem"));
        assert_eq!(p.user_file, PathBuf::from("/home/u/.capsem/user.toml"));
        assert_eq!(p.rollback_store, PathBuf::from("/home/u/.capsem/trusted-releases.json"));
        assert_eq!(p.run_dir, PathBuf::from("/home/u/.capsem/run"));
        assert_eq!(p.corp_file, PathBuf::from("/etc/capsem/corp.toml"));

        let p = Paths::from_vars(env(&[("HOME", "/home/u"), ("CAPSEM_HOME", "/x"), ("CAPSEM_CORP_CONFIG", "/c.toml")]))
            .unwrap();
        assert_eq!(p.user_file, PathBuf::from("/x/user.toml"));
        assert_eq!(p.corp_file, PathBuf::from("/c.toml"));

        let p = Paths::from_vars(env(&[("HOME", "/h"), ("CAPSEM_HOME", "")])).unwrap();
        assert_eq!(p.home, PathBuf::from("/h/.capsem"));
        assert!(matches!(Paths::from_vars(env(&[])), Err(ConfigError::NoHome)));
    }
}
