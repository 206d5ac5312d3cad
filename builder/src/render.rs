//! Rendering build plans into Dockerfiles.
//!
//! This module owns the step from a [`RootfsPlan`] or [`KernelPlan`] to Dockerfile text. The
//! templates live in `builder/templates/` and are compiled into the binary with `include_str!`;
//! their output is never edited by hand. Rendering is pure and deterministic: the same plan gives
//! the same bytes (no timestamps, no host state), and a variable the template uses but the context
//! lacks is an error ([`UndefinedBehavior::Strict`]), never an empty string.
//!
//! # Template context
//!
//! Every field of the plan is a top-level template variable (the plan *is* the context), plus:
//!
//! - `from_ref`: the reference for the `FROM` line, [`BasePlan::from_ref`](crate::plan::BasePlan::from_ref)
//!   (the pinned registry reference, or the engine tag of the imported bootstrap).
//!
//! # Filters
//!
//! - `sh`: one shell word, quoted with [`shell_quote`]. It refuses control characters (a newline
//!   would end the Dockerfile instruction and start a new one) and a leading `-` (every quoted
//!   value in these templates is an operand, never an option). Every config-derived value that
//!   lands in a `RUN` line goes through it: package specs, URLs, prefixes, checksums.
//! - `line`: text inserted verbatim on one line; refuses control characters. Used for comments
//!   and for a Python set's `install_cmd`, which is a command line chosen by the image author and
//!   is therefore inserted as written (it is not quoted: it is meant to be parsed by the shell).
//! - `docker_arg`: a `FROM` or `COPY` argument. Those are not shell: the engine splits them on
//!   whitespace and substitutes `$VARS` in them, so only `[A-Za-z0-9._:/@+-]` is admitted.
//!
//! # Build context layout
//!
//! The builder assembles the context next to the rendered Dockerfile. The rootfs Dockerfile reads:
//!
//! | path in the context | when | goes to |
//! |---|---|---|
//! | `extra-ca.crt` | `extra_ca` | `/usr/local/share/ca-certificates/capsem-build-extra-ca.crt` (removed at the end unless `keep_extra_ca`) |
//! | `guest-bin/<name>` | each of `guest_binaries` | `/usr/local/bin/<name>`, mode 0555 |
//! | `artifacts/capsem-bashrc` | `has_bashrc` | `/etc/capsem-bashrc` |
//! | `artifacts/banner.txt` | `has_banner` | `/etc/capsem-banner.txt` |
//! | `artifacts/tips.txt` | `has_tips` | `/etc/capsem-tips.txt` |
//! | `artifacts/diagnostics/` | `has_diagnostics` | `/usr/local/lib/capsem-tests/`; it must contain an executable `capsem-doctor`, linked from `/usr/local/bin/capsem-doctor` |
//!
//! The kernel Dockerfile reads only the config fragment at `defconfig` (a context-relative path),
//! and its final stage `output` (`FROM scratch`) holds `/vmlinuz` and `/kernel.config`.
//!
//! Both Dockerfiles are written for the classic builder driven through the engine API (no
//! BuildKit-only syntax) and take a `SOURCE_DATE_EPOCH` build arg, defaulted from the plan when
//! the plan knows it; a build without one fails in its first `RUN`.

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value, context};

use crate::plan::{KernelPlan, RootfsPlan};

/// Template name of the rootfs Dockerfile (as it appears in errors).
pub const ROOTFS_TEMPLATE: &str = "Dockerfile.rootfs.j2";
/// Template name of the kernel Dockerfile (as it appears in errors).
pub const KERNEL_TEMPLATE: &str = "Dockerfile.kernel.j2";

const TEMPLATES: [(&str, &str); 2] = [
    (ROOTFS_TEMPLATE, include_str!("../templates/Dockerfile.rootfs.j2")),
    (KERNEL_TEMPLATE, include_str!("../templates/Dockerfile.kernel.j2")),
];

/// Rendering a Dockerfile template failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template did not parse, used a variable the context lacks, or a filter refused a value.
    #[error("cannot render {template}{}: {message}", line_suffix(*line))]
    Template {
        /// Template name, e.g. `Dockerfile.rootfs.j2`.
        template: &'static str,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// What went wrong, with the offending template line when known.
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// Renders the rootfs Dockerfile for one architecture.
pub fn render_rootfs(plan: &RootfsPlan) -> Result<String, RenderError> {
    render(ROOTFS_TEMPLATE, context! { from_ref => plan.base.from_ref(), ..Value::from_serialize(plan) })
}

/// Renders the kernel Dockerfile for one architecture.
pub fn render_kernel(plan: &KernelPlan) -> Result<String, RenderError> {
    render(KERNEL_TEMPLATE, context! { from_ref => plan.base.from_ref(), ..Value::from_serialize(plan) })
}

/// Quotes `s` as a single POSIX shell word.
///
/// Strings made only of `[A-Za-z0-9_@%+=:,./-]` (and not empty) are returned as they are, which
/// keeps package specs like `numpy==2.1.3` readable; anything else is wrapped in single quotes,
/// with each `'` written as `'\''`. Inside single quotes the shell expands nothing, so the word
/// reaches the command unchanged. (This is the quoting of Python's `shlex.quote`.)
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        return s.to_owned();
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('\'');
    for c in s.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Renders the compiled-in template `name` (one of [`TEMPLATES`]) with `ctx`.
fn render(name: &'static str, ctx: Value) -> Result<String, RenderError> {
    let source = TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).unwrap_or_default();
    let mut env = environment();
    env.add_template(name, source)
        .and_then(|()| env.get_template(name)?.render(ctx))
        .map_err(|err| template_error(name, source, &err))
}

fn template_error(template: &'static str, source: &str, err: &minijinja::Error) -> RenderError {
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    let line = err.line();
    if let Some(text) = line.and_then(|l| source.lines().nth(l.checked_sub(1)?)) {
        message.push_str(&format!(" (in `{}`)", text.trim()));
    }
    RenderError::Template { template, line, message }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("sh", sh_filter);
    env.add_filter("line", line_filter);
    env.add_filter("docker_arg", docker_arg_filter);
    env
}

/// The text of a string or integer value; anything else (none, lists, maps) is a template bug.
fn scalar_text(value: &Value, filter: &str) -> Result<String, minijinja::Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.to_owned());
    }
    if value.is_integer() {
        return Ok(value.to_string());
    }
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("the `{filter}` filter takes a string or an integer, not {} ({value})", value.kind()),
    ))
}

fn refuse_control_chars(text: &str, filter: &str) -> Result<(), minijinja::Error> {
    if text.chars().any(char::is_control) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "`{filter}` refuses {text:?}: a control character (such as a newline) would \
                 break the Dockerfile line"
            ),
        ));
    }
    Ok(())
}

fn sh_filter(value: &Value) -> Result<String, minijinja::Error> {
    let text = scalar_text(value, "sh")?;
    refuse_control_chars(&text, "sh")?;
    if text.starts_with('-') {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("`sh` refuses {text:?}: a value starting with '-' would be read as an option"),
        ));
    }
    Ok(shell_quote(&text))
}

fn line_filter(value: &Value) -> Result<String, minijinja::Error> {
    let text = scalar_text(value, "line")?;
    refuse_control_chars(&text, "line")?;
    Ok(text)
}

fn docker_arg_filter(value: &Value) -> Result<String, minijinja::Error> {
    let text = scalar_text(value, "docker_arg")?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@+-".contains(c);
    if text.is_empty() || text.starts_with('-') || !text.chars().all(allowed) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "`docker_arg` refuses {text:?}: FROM and COPY arguments may only use \
                 [A-Za-z0-9._:/@+-] and may not start with '-'"
            ),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use expect_test::expect_file;

    use super::*;
    use crate::plan::{AptStep, BasePlan, CurlStep, NpmBatch, PythonStep};

    const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn bootstrap_base() -> BasePlan {
        BasePlan::Bootstrap {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            variant: "minbase".into(),
            components: strings(&["main"]),
            tag: "capsem-base:8c1f0a62d9e7b3a5".into(),
        }
    }

    fn registry_base() -> BasePlan {
        BasePlan::Registry { reference: format!("debian@sha256:{}", "4d3c2b1a".repeat(8)) }
    }

    /// A plan shaped like the shipped default image.
    fn default_plan() -> RootfsPlan {
        RootfsPlan {
            image_name: "capsem-default".into(),
            arch: "x86_64".into(),
            platform: "linux/amd64".into(),
            base: bootstrap_base(),
            source_date_epoch: Some(SOURCE_DATE_EPOCH),
            extra_ca: true,
            keep_extra_ca: false,
            node_major: Some(18),
            apt_steps: vec![
                AptStep {
                    source: "packages/apt.toml [apt]".into(),
                    packages: strings(&[
                        "ca-certificates=20230311",
                        "curl=7.88.1-10+deb12u12",
                        "git=1:2.39.5-0+deb12u2",
                        "nodejs=18.19.0+dfsg-6~deb12u2",
                        "npm=9.2.0~ds1-1",
                        "python3=3.11.2-1+b1",
                        "python3-pip=23.0.1+dfsg-1",
                    ]),
                },
                AptStep {
                    source: "packages/devtools.toml [devtools]".into(),
                    packages: strings(&["jq=1.6-2.1", "ripgrep=13.0.0-4+b2"]),
                },
            ],
            needs_uv: true,
            uv_requirement: "uv==0.5.11".into(),
            python_steps: vec![
                PythonStep {
                    source: "packages/python.toml [python]".into(),
                    manager: "uv".into(),
                    install_cmd: "uv pip install --system --break-system-packages".into(),
                    packages: strings(&["numpy==2.1.3", "requests==2.32.3"]),
                },
                PythonStep {
                    source: "packages/testing.toml [testing]".into(),
                    manager: "pip".into(),
                    install_cmd: "pip3 install --break-system-packages".into(),
                    packages: strings(&["pytest==8.3.4"]),
                },
            ],
            npm_batches: vec![NpmBatch {
                prefix: "/opt/ai-clis".into(),
                packages: strings(&[
                    "@anthropic-ai/claude-code@2.0.0",
                    "@google/gemini-cli@0.1.0",
                    "@openai/codex@0.1.0",
                ]),
                sources: strings(&[
                    "ai/anthropic.toml [anthropic.install]",
                    "ai/google.toml [google.install]",
                    "ai/openai.toml [openai.install]",
                ]),
            }],
            curl_steps: vec![CurlStep {
                source: "packages/extras.toml [extras]".into(),
                url: "https://astral.sh/ruff/0.8.4/install.sh".into(),
                sha256: Some("0f3a".repeat(16)),
            }],
            guest_binaries: strings(&["capsem-agent", "capsem-mcp-server"]),
            has_bashrc: true,
            has_banner: true,
            has_tips: true,
            has_diagnostics: true,
        }
    }

    /// Seed 000's corporate walkthrough: only Anthropic, a registry base pinned by digest, and
    /// the corporate CA kept in the image.
    fn corporate_plan() -> RootfsPlan {
        RootfsPlan {
            image_name: "corp-image".into(),
            arch: "arm64".into(),
            platform: "linux/arm64".into(),
            base: registry_base(),
            source_date_epoch: None,
            extra_ca: true,
            keep_extra_ca: true,
            node_major: Some(18),
            apt_steps: vec![AptStep {
                source: "packages/apt.toml [apt]".into(),
                packages: strings(&[
                    "ca-certificates=20230311",
                    "git=1:2.39.5-0+deb12u2",
                    "nodejs=18.19.0+dfsg-6~deb12u2",
                    "npm=9.2.0~ds1-1",
                    "python3-pip=23.0.1+dfsg-1",
                ]),
            }],
            needs_uv: true,
            uv_requirement: "uv==0.5.11".into(),
            python_steps: vec![PythonStep {
                source: "packages/python.toml [python]".into(),
                manager: "uv".into(),
                install_cmd:
                    "uv pip install --system --break-system-packages --index-url https://pypi.internal.corp.com/simple"
                        .into(),
                packages: strings(&["corp-sdk==3.2.0", "requests==2.32.3"]),
            }],
            npm_batches: vec![NpmBatch {
                prefix: "/opt/ai-clis".into(),
                packages: strings(&["@anthropic-ai/claude-code@2.0.0"]),
                sources: strings(&["ai/anthropic.toml [anthropic.install]"]),
            }],
            curl_steps: vec![],
            guest_binaries: strings(&["capsem-agent"]),
            has_bashrc: true,
            has_banner: false,
            has_tips: false,
            has_diagnostics: false,
        }
    }

    fn kernel_plan_x86_64() -> KernelPlan {
        KernelPlan {
            arch: "x86_64".into(),
            platform: "linux/amd64".into(),
            base: bootstrap_base(),
            kernel_branch: "6.1".into(),
            kernel_image: "arch/x86/boot/bzImage".into(),
            make_target: "bzImage".into(),
            kernel_arch: "x86".into(),
            defconfig: "kernel/defconfig.x86_64".into(),
            source_date_epoch: Some(SOURCE_DATE_EPOCH),
            source: crate::kernel_source::resolve("6.1", crate::kernel_source::Provider::Debian).unwrap(),
        }
    }

    fn kernel_plan_arm64() -> KernelPlan {
        KernelPlan {
            arch: "arm64".into(),
            platform: "linux/arm64".into(),
            base: registry_base(),
            kernel_branch: "6.1".into(),
            kernel_image: "arch/arm64/boot/Image".into(),
            make_target: "Image".into(),
            kernel_arch: "arm64".into(),
            defconfig: "kernel/defconfig.arm64".into(),
            source_date_epoch: None,
            source: crate::kernel_source::resolve("6.1", crate::kernel_source::Provider::Upstream).unwrap(),
        }
    }

    /// The Dockerfile's instructions, continuation lines joined the way the engine joins them
    /// (backslash-newline removed), comments and blank lines dropped.
    fn instructions(dockerfile: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = String::new();
        for line in dockerfile.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(head) => current.push_str(head),
                None => {
                    current.push_str(line);
                    out.push(std::mem::take(&mut current));
                }
            }
        }
        assert!(current.is_empty(), "dangling continuation: {current}");
        out
    }

    /// Whether some `|` in `text` feeds a shell (`| sh`, `|bash`, `| /bin/sh -s`, ...).
    fn pipes_into_shell(text: &str) -> bool {
        text.match_indices('|').any(|(at, _)| {
            let rest = text[at + 1..].trim_start();
            let word =
                rest.split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == ')').next().unwrap_or_default();
            let program = word.rsplit('/').next().unwrap_or_default();
            matches!(program, "sh" | "bash" | "dash" | "zsh")
        })
    }

    #[test]
    fn snapshot_rootfs_default() {
        let out = render_rootfs(&default_plan()).unwrap();
        expect_file!["snapshots/rootfs-default.Dockerfile"].assert_eq(&out);
    }

    #[test]
    fn snapshot_rootfs_corporate() {
        let out = render_rootfs(&corporate_plan()).unwrap();
        expect_file!["snapshots/rootfs-corporate.Dockerfile"].assert_eq(&out);
    }

    #[test]
    fn snapshot_kernel_x86_64() {
        let out = render_kernel(&kernel_plan_x86_64()).unwrap();
        expect_file!["snapshots/kernel-x86_64.Dockerfile"].assert_eq(&out);
    }

    #[test]
    fn snapshot_kernel_arm64() {
        let out = render_kernel(&kernel_plan_arm64()).unwrap();
        expect_file!["snapshots/kernel-arm64.Dockerfile"].assert_eq(&out);
    }

    fn all_rootfs_outputs() -> Vec<String> {
        [default_plan(), corporate_plan()].iter().map(|plan| render_rootfs(plan).unwrap()).collect()
    }

    #[test]
    fn rootfs_never_upgrades_or_floats_versions() {
        for out in all_rootfs_outputs() {
            for banned in ["apt-get upgrade", "dist-upgrade", "full-upgrade", "@latest"] {
                assert!(!out.contains(banned), "{banned}:\n{out}");
            }
        }
    }

    #[test]
    fn rootfs_never_pipes_into_a_shell() {
        assert!(pipes_into_shell("curl -fsSL https://x/install.sh | bash"));
        assert!(pipes_into_shell("wget -qO- u |sh -s --"));
        assert!(pipes_into_shell("curl u | /bin/sh"));
        assert!(!pipes_into_shell("echo x | sha256sum -c -"));
        for out in all_rootfs_outputs() {
            for instruction in instructions(&out) {
                assert!(!pipes_into_shell(&instruction), "{instruction}");
            }
        }
    }

    #[test]
    fn each_curl_step_is_its_own_run() {
        let mut plan = default_plan();
        plan.curl_steps.push(CurlStep {
            source: "ai/anthropic.toml [anthropic.install]".into(),
            url: "https://claude.ai/install.sh".into(),
            sha256: None,
        });
        let out = render_rootfs(&plan).unwrap();
        let curl_runs: Vec<_> = instructions(&out).into_iter().filter(|i| i.contains("curl -fsSL")).collect();
        assert_eq!(curl_runs.len(), 2, "{curl_runs:#?}");
        for (run, step) in curl_runs.iter().zip(&plan.curl_steps) {
            assert!(run.starts_with("RUN "), "{run}");
            assert_eq!(run.matches("curl -fsSL").count(), 1, "{run}");
            assert!(run.contains(&step.url), "{run}");
            assert_eq!(run.contains("sha256sum -c -"), step.sha256.is_some(), "{run}");
        }
        assert!(out.contains("NOT pinned: no sha256 was given"), "{out}");
    }

    #[test]
    fn one_npm_run_per_prefix() {
        let mut plan = default_plan();
        plan.npm_batches.push(NpmBatch {
            prefix: "/opt/tools".into(),
            packages: strings(&["prettier@3.4.2", "typescript@5.7.2"]),
            sources: strings(&["packages/node.toml [node]"]),
        });
        let out = render_rootfs(&plan).unwrap();
        let npm_runs: Vec<_> = instructions(&out).into_iter().filter(|i| i.contains("npm install")).collect();
        assert_eq!(npm_runs.len(), 2, "{npm_runs:#?}");
        for (run, batch) in npm_runs.iter().zip(&plan.npm_batches) {
            assert_eq!(run.matches("npm install").count(), 1, "{run}");
            assert!(run.starts_with(&format!("RUN npm install -g --prefix {} ", batch.prefix)), "{run}");
            for package in &batch.packages {
                assert!(run.contains(package.as_str()), "{run} lacks {package}");
            }
        }
    }

    #[test]
    fn hostile_package_specs_are_quoted_harmlessly() {
        let hostile = ["evil';touch /tmp/pwned;'", "numpy; rm -rf /", "$(reboot)", "`id`", "a b\\c\"d"];
        let mut plan = default_plan();
        plan.apt_steps[0].packages = strings(&hostile);
        plan.python_steps[0].packages = strings(&hostile);
        plan.npm_batches[0].packages = strings(&hostile);
        let out = render_rootfs(&plan).unwrap();
        for spec in hostile {
            // Each spec appears only in its quoted form: once per step that installs it.
            let quoted = shell_quote(spec);
            assert!(quoted.starts_with('\''), "{quoted}");
            assert_eq!(out.matches(quoted.as_str()).count(), 3, "{quoted}\n{out}");
            // And the shell reads the quoted form back as exactly one word: the spec.
            let echoed =
                std::process::Command::new("sh").arg("-c").arg(format!("printf '%s\\n' {quoted}")).output().unwrap();
            assert!(echoed.status.success());
            assert_eq!(String::from_utf8(echoed.stdout).unwrap(), format!("{spec}\n"));
        }
    }

    #[test]
    fn shell_quote_leaves_plain_words_alone_and_quotes_the_rest() {
        assert_eq!(shell_quote("numpy==2.1.3"), "numpy==2.1.3");
        assert_eq!(shell_quote("@openai/codex@0.1.0"), "@openai/codex@0.1.0");
        assert_eq!(shell_quote("git=1:2.39.5-0+deb12u2"), "git=1:2.39.5-0+deb12u2");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("npm=9.2.0~ds1-1"), "'npm=9.2.0~ds1-1'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a;b"), "'a;b'");
    }

    #[test]
    fn option_like_values_are_refused() {
        let mut plan = default_plan();
        plan.python_steps[0].packages = strings(&["--index-url=https://evil.example/simple"]);
        let err = render_rootfs(&plan).unwrap_err().to_string();
        assert!(err.contains(ROOTFS_TEMPLATE), "{err}");
        assert!(err.contains("would be read as an option"), "{err}");
    }

    #[test]
    fn newlines_cannot_inject_instructions() {
        let mut plan = default_plan();
        plan.apt_steps[0].source = "packages/apt.toml\nCOPY / /stolen".into();
        let err = render_rootfs(&plan).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");

        let mut plan = default_plan();
        plan.python_steps[0].install_cmd = "uv pip install\nRUN id".into();
        let err = render_rootfs(&plan).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");

        let mut plan = default_plan();
        plan.npm_batches[0].packages = strings(&["ok@1.0.0\nRUN id"]);
        let err = render_rootfs(&plan).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
    }

    #[test]
    fn dockerfile_arguments_are_restricted() {
        let mut plan = default_plan();
        plan.base = BasePlan::Registry { reference: "debian@sha256:${EVIL}".into() };
        let err = render_rootfs(&plan).unwrap_err().to_string();
        assert!(err.contains("docker_arg"), "{err}");
        assert!(err.contains("FROM {{ from_ref | docker_arg }}"), "{err}");

        let mut plan = default_plan();
        plan.guest_binaries = strings(&["capsem agent"]);
        assert!(render_rootfs(&plan).is_err());

        let mut plan = kernel_plan_x86_64();
        plan.defconfig = "kernel/defconfig x86_64".into();
        let err = render_kernel(&plan).unwrap_err().to_string();
        assert!(err.contains(KERNEL_TEMPLATE), "{err}");
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_template() {
        for name in [ROOTFS_TEMPLATE, KERNEL_TEMPLATE] {
            let err = render(name, context! {}).unwrap_err();
            let RenderError::Template { template, line, .. } = &err;
            assert_eq!(*template, name);
            assert!(line.is_some(), "{err}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("cannot render {name}:")), "{message}");
            assert!(message.contains("undefined"), "{message}");
        }
    }

    #[test]
    fn extra_ca_is_removed_unless_kept() {
        let mut plan = default_plan();
        let removed = render_rootfs(&plan).unwrap();
        assert!(removed.contains("COPY extra-ca.crt "), "{removed}");
        assert!(removed.contains("update-ca-certificates --fresh"), "{removed}");

        plan.keep_extra_ca = true;
        let kept = render_rootfs(&plan).unwrap();
        assert!(kept.contains("COPY extra-ca.crt "), "{kept}");
        assert!(!kept.contains("update-ca-certificates --fresh"), "{kept}");

        plan.extra_ca = false;
        let none = render_rootfs(&plan).unwrap();
        assert!(!none.contains("COPY extra-ca.crt"), "{none}");
        assert!(!none.contains("NODE_EXTRA_CA_CERTS"), "{none}");
        assert!(!none.contains("update-ca-certificates"), "{none}");
    }

    #[test]
    fn source_date_epoch_defaults_from_the_plan() {
        let out = render_kernel(&kernel_plan_x86_64()).unwrap();
        assert!(out.contains(&format!("\nARG SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}\n")));
        let out = render_kernel(&kernel_plan_arm64()).unwrap();
        assert!(out.contains("\nARG SOURCE_DATE_EPOCH\n"), "{out}");
    }

    #[test]
    fn every_rendered_line_is_inside_a_well_formed_instruction() {
        // A continuation that swallowed a comment, or a stray template line, shows up here.
        let outputs = all_rootfs_outputs()
            .into_iter()
            .chain([render_kernel(&kernel_plan_x86_64()).unwrap(), render_kernel(&kernel_plan_arm64()).unwrap()]);
        let keywords = ["FROM", "ARG", "SHELL", "RUN", "COPY", "ENV", "WORKDIR"];
        for out in outputs {
            assert!(!out.contains("{{") && !out.contains("{%"), "{out}");
            for instruction in instructions(&out) {
                let keyword = instruction.split(' ').next().unwrap_or_default();
                assert!(keywords.contains(&keyword), "{instruction}");
            }
        }
    }
}
