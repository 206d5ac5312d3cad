//! The environment of an exec and the lookup of its program.
//!
//! Layers, later wins: the base env ([`base_env`]: `HOME`, `PATH`), the env of the last
//! Configure, the request's env; in PTY mode `TERM` defaults to `xterm-256color`. Nothing is
//! inherited from the agent's own environment. `argv[0]` is looked up in the merged `PATH`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::os_msg;

/// `PATH` of the base environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `TERM` in PTY mode unless the request or Configure sets one.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// The base environment of every exec.
pub fn base_env() -> BTreeMap<String, String> {
    [("HOME".to_string(), "/root".to_string()), ("PATH".to_string(), DEFAULT_PATH.to_string())].into()
}

/// Merges the layers (see the module docs).
pub fn merge(
    configured: &BTreeMap<String, String>,
    request: &BTreeMap<String, String>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env = base_env();
    env.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    if pty {
        env.entry("TERM".into()).or_insert_with(|| DEFAULT_TERM.into());
    }
    env
}

/// Why `p` cannot be executed, if it cannot.
fn not_executable(p: &Path) -> Option<String> {
    match std::fs::metadata(p) {
        Err(e) => Some(os_msg(&e)),
        Ok(m) if m.is_dir() => Some("Is a directory".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("Permission denied".into()),
        Ok(_) => None,
    }
}

/// Finds the program for `argv0`: a name containing `/` is used as is; otherwise the first
/// executable file named `argv0` in the directories of `path`. The error is the reason
/// (`No such file or directory`, …) without the program name.
pub fn resolve(argv0: &str, path: Option<&str>) -> Result<PathBuf, String> {
    if argv0.is_empty() {
        return Err("empty program name".into());
    }
    if argv0.contains('/') {
        let p = PathBuf::from(argv0);
        return match not_executable(&p) {
            None => Ok(p),
            Some(why) => Err(why),
        };
    }
    let path = path.unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(argv0);
        if not_executable(&candidate).is_none() {
            return Ok(candidate);
        }
    }
    Err(format!("No such file or directory (not found in PATH={path})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let configured = [("A".to_string(), "c".to_string()), ("HOME".to_string(), "/home/x".to_string())].into();
        let request = [("A".to_string(), "r".to_string())].into();
        let env = merge(&configured, &request, false);
        assert_eq!(env["A"], "r");
        assert_eq!(env["HOME"], "/home/x");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert!(!env.contains_key("TERM"));
        assert_eq!(merge(&configured, &request, true)["TERM"], DEFAULT_TERM);
        let term = [("TERM".to_string(), "vt100".to_string())].into();
        assert_eq!(merge(&BTreeMap::new(), &term, true)["TERM"], "vt100");
    }

    #[test]
    fn resolve_searches_path_and_explains_failures() {
        assert_eq!(resolve("sh", Some("/nonexistent:/bin")).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(resolve("/nope", None).unwrap_err(), "No such file or directory");
        assert_eq!(resolve("/", None).unwrap_err(), "Is a directory");
        assert!(resolve("definitely-not-a-command", Some("/bin")).unwrap_err().contains("PATH=/bin"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert_eq!(resolve(f.to_str().unwrap(), None).unwrap_err(), "Permission denied");
        // A non-executable file in PATH is skipped.
        assert!(resolve("script", dir.path().to_str()).is_err());
    }
}
