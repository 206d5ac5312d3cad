//! `SOURCE_DATE_EPOCH`: the one timestamp a build may use.
//!
//! Resolution order (docs/image-schema.md): `build.source_date_epoch` in build.toml, else the
//! `SOURCE_DATE_EPOCH` environment variable, else the time of the last git commit that touched
//! the image directory (`git log -1 --format=%ct -- .` run inside it). Without any of them the
//! build stops: a build without a fixed time cannot be reproduced. The value must fit squashfs'
//! 32-bit time field.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// Where the value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SdeSource {
    /// `build.source_date_epoch` in build.toml.
    Config,
    /// The `SOURCE_DATE_EPOCH` environment variable.
    Env,
    /// The last commit touching the image directory.
    GitCommit,
}

/// Why no `SOURCE_DATE_EPOCH` could be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdeError {
    /// The environment variable is not a non-negative integer.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")]
    BadEnv {
        /// The value found.
        value: String,
    },
    /// The value does not fit squashfs' 32-bit timestamps.
    #[error("SOURCE_DATE_EPOCH {value} (from {from}) is after 2106-02-07, which squashfs cannot store")]
    TooLarge {
        /// The value.
        value: u64,
        /// Where it came from.
        from: &'static str,
    },
    /// Nothing set and no git history for the directory.
    #[error(
        "no SOURCE_DATE_EPOCH for {dir}: build.toml has no `source_date_epoch`, the environment variable \
         is unset, and git gave no commit time ({why})\n  fix: set `source_date_epoch` under [build] in \
         build.toml, export SOURCE_DATE_EPOCH, or commit the image directory"
    )]
    Missing {
        /// The image directory.
        dir: String,
        /// What git said.
        why: String,
    },
}

/// Resolves the build time. `env` is the value of `SOURCE_DATE_EPOCH` (passed in so callers and
/// tests control it); `git` is consulted only when both `config` and `env` are absent.
pub fn resolve(config: Option<u64>, env: Option<&OsStr>, image_dir: &Path) -> Result<(u64, SdeSource), SdeError> {
    let (value, source) = if let Some(v) = config {
        (v, SdeSource::Config)
    } else if let Some(raw) = env.filter(|v| !v.is_empty()) {
        let text = raw.to_string_lossy();
        let v = text.trim().parse::<u64>().map_err(|_| SdeError::BadEnv { value: text.into_owned() })?;
        (v, SdeSource::Env)
    } else {
        (git_commit_time(image_dir)?, SdeSource::GitCommit)
    };
    if value > u64::from(u32::MAX) {
        let from = match source {
            SdeSource::Config => "build.toml",
            SdeSource::Env => "the environment",
            SdeSource::GitCommit => "git",
        };
        return Err(SdeError::TooLarge { value, from });
    }
    Ok((value, source))
}

/// `git log -1 --format=%ct -- .` inside `dir`.
fn git_commit_time(dir: &Path) -> Result<u64, SdeError> {
    let missing = |why: String| SdeError::Missing { dir: dir.display().to_string(), why };
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct", "--", "."])
        .output()
        .map_err(|e| missing(format!("running `git -C {} log`: {e}", dir.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(missing(stderr.lines().next().unwrap_or("git failed").trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    if text.is_empty() {
        return Err(missing("no commit touches this directory".into()));
    }
    text.parse().map_err(|_| missing(format!("unexpected output {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str], date: &str) {
        let st = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(st.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&st.stderr));
    }

    #[test]
    fn config_wins_then_env_then_git() {
        let repo = tempfile::tempdir().unwrap();
        let image = repo.path().join("images/small");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(repo.path().join("README"), "x").unwrap();
        std::fs::write(image.join("a.toml"), "x").unwrap();
        git(repo.path(), &["init", "-q"], "@1600000000 +0000");
        git(repo.path(), &["add", "images"], "@1600000000 +0000");
        git(repo.path(), &["commit", "-q", "-m", "image"], "@1600000000 +0000");
        // A later commit elsewhere in the repository does not move the image's time.
        git(repo.path(), &["add", "README"], "@1700000000 +0000");
        git(repo.path(), &["commit", "-q", "-m", "readme"], "@1700000000 +0000");

        assert_eq!(resolve(Some(5), Some(OsStr::new("7")), &image), Ok((5, SdeSource::Config)));
        assert_eq!(resolve(None, Some(OsStr::new(" 7\n")), &image), Ok((7, SdeSource::Env)));
        assert_eq!(resolve(None, None, &image), Ok((1_600_000_000, SdeSource::GitCommit)));
        assert_eq!(resolve(None, Some(OsStr::new("")), &image), Ok((1_600_000_000, SdeSource::GitCommit)));
    }

    #[test]
    fn bad_values_and_missing_history_are_errors_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(None, Some(OsStr::new("yesterday")), dir.path()),
            Err(SdeError::BadEnv { value: "yesterday".into() })
        );
        let big = u64::from(u32::MAX) + 1;
        assert!(matches!(resolve(Some(big), None, dir.path()), Err(SdeError::TooLarge { from: "build.toml", .. })));
        let e = resolve(None, None, dir.path()).unwrap_err();
        assert!(matches!(e, SdeError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("fix: set `source_date_epoch`"), "{e}");
    }
}
