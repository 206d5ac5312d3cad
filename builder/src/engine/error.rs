//! What can go wrong talking to the engine, classified for the user.
//!
//! bollard reports everything as one error type whose useful part often hides in its source
//! chain; [`classify`] turns it into an [`EngineError`] that says what happened and, where we
//! know one, how to fix it: an unreachable engine, a full disk, or an API error with the
//! operation it interrupted. A failed Dockerfile step is built by the build-log parser
//! ([`super::progress::BuildLog`]), which knows the step and its output.

use std::fmt;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Nothing answers at the endpoint (no socket, refused, permission denied, unsupported URL).
    #[error("no container engine at {endpoint}: {reason}\n  fix: {fix}")]
    NoEngine {
        /// The endpoint tried, e.g. `unix:///var/run/docker.sock`.
        endpoint: String,
        /// What happened.
        reason: String,
        /// How to get an engine there.
        fix: String,
    },
    /// A Dockerfile step failed.
    #[error("{}", BuildStepDisplay(self))]
    BuildStepFailed {
        /// 1-based step number (`Step N/M`), 0 when the failure came before the first step.
        step: u32,
        /// Number of steps in the Dockerfile.
        total: u32,
        /// The step's Dockerfile instruction as the engine echoed it (`RUN apt-get update`).
        instruction: String,
        /// The engine's error message (e.g. `… returned a non-zero code: 100`).
        message: String,
        /// The last lines (up to [`super::progress::TAIL_LINES`]) of the step's output.
        tail: Vec<String>,
    },
    /// The engine (or the disk it writes to) ran out of space.
    #[error(
        "out of disk space while {operation}: {message}\n  fix: free space where the engine keeps its data{}\
         (`docker system df`, `docker image prune`), or point the engine's data-root at a bigger disk",
        data_root.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    OutOfDisk {
        /// What we were doing, e.g. `building the rootfs image`.
        operation: String,
        /// The engine's message.
        message: String,
        /// The engine's data directory, when it told us (`DockerRootDir`).
        data_root: Option<String>,
    },
    /// An image the build needs is not in the engine and could not be pulled.
    #[error("image {reference} is not in the engine and pulling it failed: {message}\n  fix: {fix}")]
    ImageUnavailable {
        /// The reference.
        reference: String,
        /// Why the pull failed.
        message: String,
        /// What to do.
        fix: String,
    },
    /// Any other API error, with the operation it interrupted.
    #[error("engine error while {operation}: {message}")]
    Api {
        /// What we were doing, e.g. `creating a container from capsem-rootfs-x86_64:…`.
        operation: String,
        /// The error and its causes, `: `-joined.
        message: String,
    },
}

impl EngineError {
    /// Whether the failure was a full disk.
    pub fn is_out_of_disk(&self) -> bool {
        matches!(self, EngineError::OutOfDisk { .. })
    }
}

struct BuildStepDisplay<'a>(&'a EngineError);

impl fmt::Display for BuildStepDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EngineError::BuildStepFailed { step, total, instruction, message, tail } = self.0 else {
            return Ok(());
        };
        if *step == 0 {
            write!(f, "the build failed before its first step: {message}")?;
        } else {
            write!(f, "build step {step}/{total} failed: {instruction}\n  {message}")?;
        }
        if !tail.is_empty() {
            write!(f, "\n  last {} lines of its output:", tail.len())?;
            for line in tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

/// The fix we suggest when no engine answers.
pub(crate) const NO_ENGINE_FIX: &str = "start Docker (`sudo systemctl start docker`, or `sudo dockerd &`; \
     Debian: `sudo apt-get install docker.io`), or point DOCKER_HOST at a running engine \
     (Podman: `systemctl --user start podman.socket` and \
     DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock)";

/// `error: source: source…`: bollard's transparent errors hide the useful part in the chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

/// Whether an engine message says the disk is full.
pub(crate) fn says_out_of_disk(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("no space left on device") || lower.contains("disk quota exceeded")
}

/// Classifies a bollard error raised while doing `operation` against `endpoint`.
pub(crate) fn classify(error: &bollard::errors::Error, operation: &str, endpoint: &str) -> EngineError {
    use bollard::errors::Error as B;
    let message = error_chain(error);
    if says_out_of_disk(&message) {
        return EngineError::OutOfDisk { operation: operation.to_owned(), message, data_root: None };
    }
    let no_engine =
        |reason: String| EngineError::NoEngine { endpoint: endpoint.to_owned(), reason, fix: NO_ENGINE_FIX.to_owned() };
    match error {
        B::SocketNotFoundError(path) => no_engine(format!("the socket {path} does not exist")),
        B::UnsupportedURISchemeError { uri } => EngineError::NoEngine {
            endpoint: endpoint.to_owned(),
            reason: format!("unsupported DOCKER_HOST `{uri}`"),
            fix: "use unix:///path/to/docker.sock or tcp://host:port".to_owned(),
        },
        B::IOError { .. } | B::HyperResponseError { .. } | B::HyperLegacyError { .. }
            if is_connect_failure(&message) =>
        {
            no_engine(message)
        }
        B::RequestTimeoutError => EngineError::Api {
            operation: operation.to_owned(),
            message: "the engine did not answer in time".to_owned(),
        },
        _ => EngineError::Api { operation: operation.to_owned(), message },
    }
}

/// Connection-level failures, as hyper and the OS phrase them (only asked of transport errors:
/// an API message such as `COPY failed: … no such file or directory` is not one).
fn is_connect_failure(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["connection refused", "no such file or directory", "permission denied", "error trying to connect"]
        .iter()
        .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_failure_names_step_instruction_and_tail() {
        let e = EngineError::BuildStepFailed {
            step: 7,
            total: 23,
            instruction: "RUN apt-get install -y hello=0".into(),
            message: "returned a non-zero code: 100".into(),
            tail: vec!["E: Version '0' for 'hello' was not found".into()],
        };
        let text = e.to_string();
        assert!(text.starts_with("build step 7/23 failed: RUN apt-get install -y hello=0\n"), "{text}");
        assert!(text.contains("non-zero code: 100"), "{text}");
        assert!(text.contains("last 1 lines of its output:\n  | E: Version '0'"), "{text}");
    }

    #[test]
    fn disk_full_and_unreachable_engines_are_recognized() {
        let full = bollard::errors::Error::DockerStreamError {
            error: "write /var/lib/docker/x: no space left on device".into(),
        };
        let e = classify(&full, "building", "unix:///var/run/docker.sock");
        assert!(e.is_out_of_disk(), "{e}");
        assert!(e.to_string().contains("fix: free space"), "{e}");

        let missing = bollard::errors::Error::SocketNotFoundError("/nope.sock".into());
        let e = classify(&missing, "connecting", "unix:///nope.sock");
        assert!(matches!(e, EngineError::NoEngine { .. }), "{e}");
        assert!(e.to_string().contains("fix: start Docker"), "{e}");

        let refused = bollard::errors::Error::IOError {
            err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"),
        };
        assert!(matches!(classify(&refused, "x", "y"), EngineError::NoEngine { .. }));

        let other = bollard::errors::Error::DockerResponseServerError { status_code: 500, message: "boom".into() };
        let e = classify(&other, "removing image x", "y");
        assert_eq!(e.to_string(), "engine error while removing image x: Docker responded with status code 500: boom");
    }
}
