//! Tests of loading, validating and layering configuration, against a real `defaults.json`.
//!
//! `testdata/defaults.json` is the builder's output for the shipped image:
//! `capsem-builder settings images/default -o runtime/capsem/src/config/testdata/defaults.json`.

use std::path::{Path, PathBuf};

use super::*;

const DEFAULTS: &[u8] = include_bytes!("testdata/defaults.json");
const KEY_A: &str = "RWR06ASb9cXnN12ISF/SfRsjBgKGN9XFQs8JiczkJtv6F9HUU4IOrsxj";
const KEY_B: &str = "RWTCm85e3odXtVMPNdTEZ757NPfYVIYCIcRaiZvYP9sYOTaLAkfuzqtw";

fn user_path() -> PathBuf {
    PathBuf::from("/home/u/.capsem/user.toml")
}

fn corp_path() -> PathBuf {
    PathBuf::from("/etc/capsem/corp.toml")
}

fn user(text: &str) -> Config {
    Config::parse(text, &user_path(), Layer::User).unwrap_or_else(|e| panic!("user.toml:\n{e}"))
}

fn corp(text: &str) -> Config {
    Config::parse(text, &corp_path(), Layer::Corp).unwrap_or_else(|e| panic!("corp.toml:\n{e}"))
}

/// The rendered error of a config that must not parse.
fn user_err(text: &str) -> (String, Vec<Code>) {
    let e = Config::parse(text, &user_path(), Layer::User).expect_err("must be rejected");
    (e.to_string(), e.diagnostics().iter().map(|d| d.code).collect())
}

fn resolve(u: Option<&Config>, c: Option<&Config>, run: RunOverrides) -> Result<Effective, ConfigError> {
    Effective::resolve(DEFAULTS, u, c, &run)
}

#[test]
fn defaults_alone_give_the_image_values() {
    let e = resolve(None, None, RunOverrides::default()).unwrap();
    assert_eq!((e.cpus, e.memory_mib), (4, 4096));
    assert_eq!(e.hostname, "capsem");
    assert_eq!(e.env["HOME"], "/root");
    assert_eq!(e.resources["retention_days"], 30);
    assert!(!e.resources.contains_key("cpu_count"), "cpus is a field, not a map entry");
    assert!(e.files.iter().any(|f| f.path == "/root/.bashrc" && f.mode == 0o644));
    assert!(e.trusted_keys.is_empty() && e.trust_layer.is_none());
    assert!(e.web.custom_allow.iter().any(|d| d.as_str() == "*.elie.net"));
    assert_eq!(e.web.http_upstream_ports, [80]);
    assert!(e.web.services["registry"]["npm"].enabled);
    assert!(e.notes.is_empty(), "{:?}", e.notes);
}

#[test]
fn corp_beats_user_beats_defaults() {
    let u = user(
        "[resources]\ncpu_count = 2\nram_gb = 2\n[environment]\nhostname = \"mine\"\n[environment.vars]\nEDITOR = \"nvim\"\nX = \"user\"\n[web]\nallow_read = true\n",
    );
    let e = resolve(Some(&u), None, RunOverrides::default()).unwrap();
    assert_eq!((e.cpus, e.memory_mib, e.hostname.as_str()), (2, 2048, "mine"));
    assert_eq!((e.env["EDITOR"].as_str(), e.env["X"].as_str()), ("nvim", "user"));
    assert!(e.web.allow_read);

    let c = corp("[resources]\ncpu_count = 6\n[environment.vars]\nX = \"corp\"\n[web]\nallow_read = false\n");
    let e = resolve(Some(&u), Some(&c), RunOverrides::default()).unwrap();
    assert_eq!(e.cpus, 6, "corp wins");
    assert_eq!(e.memory_mib, 2048, "corp does not set ram_gb: the user's value stays");
    assert_eq!((e.env["EDITOR"].as_str(), e.env["X"].as_str()), ("nvim", "corp"));
    assert!(!e.web.allow_read);
    let notes = e.notes.join("\n");
    assert!(
        notes.contains("/home/u/.capsem/user.toml:2:13: resources.cpu_count is ignored: /etc/capsem/corp.toml:2:13"),
        "{notes}"
    );
    assert!(notes.contains("web.allow_read is ignored"), "{notes}");
}

#[test]
fn cli_override_beats_user() {
    let u = user("[resources]\ncpu_count = 2\nram_gb = 2\n");
    let run = RunOverrides { cpus: Some(3), memory_mib: Some(1536) };
    let e = resolve(Some(&u), None, run).unwrap();
    assert_eq!((e.cpus, e.memory_mib), (3, 1536));
}

#[test]
fn cli_override_of_a_corp_locked_value_is_an_error_naming_corp_toml() {
    let c = corp("[resources]\ncpu_count = 2\nram_gb = 4\n");
    let err = resolve(None, Some(&c), RunOverrides { cpus: Some(4), memory_mib: Some(8192) }).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("--cpus: error[C012]: --cpus 4 is not allowed: resources.cpu_count is locked to 2 by the corp config at /etc/capsem/corp.toml:2:13"),
        "{text}"
    );
    assert!(text.contains("--memory 8192 MiB is not allowed: resources.ram_gb is locked to 4"), "{text}");
    assert_eq!(err.diagnostics().len(), 2, "both flags reported: {text}");
    // Asking for exactly the locked value is not a conflict.
    let e = resolve(None, Some(&c), RunOverrides { cpus: Some(2), memory_mib: Some(4096) }).unwrap();
    assert_eq!((e.cpus, e.memory_mib), (2, 4096));
}

#[test]
fn out_of_range_names_file_line_col_and_the_range() {
    let u = user("# mine\n[resources]\ncpu_count = 99\nretention_days = 0\n");
    let err = resolve(Some(&u), None, RunOverrides::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "/home/u/.capsem/user.toml:3:13: error[C004]: resources.cpu_count = 99 is outside 1..=8 (the image's range)"
        ),
        "{text}"
    );
    assert!(text.contains("set by the user config"), "{text}");
    assert!(text.contains("user.toml:4:18: error[C004]: resources.retention_days = 0 is outside 1..=365"), "{text}");

    let c = corp("[resources]\nram_gb = 64\n");
    let text = resolve(None, Some(&c), RunOverrides::default()).unwrap_err().to_string();
    assert!(
        text.contains("/etc/capsem/corp.toml:2:10: error[C004]: resources.ram_gb = 64 is outside 1..=16"),
        "{text}"
    );
    assert!(text.contains("set by the corp config"), "{text}");

    let text = resolve(None, None, RunOverrides { cpus: Some(9), memory_mib: Some(512) }).unwrap_err().to_string();
    assert!(text.contains("--cpus: error[C004]: --cpus 9 is outside 1..=8 (the image's range)"), "{text}");
    assert!(text.contains("--memory 512 MiB is outside 1024..=16384 MiB"), "{text}");
}

#[test]
fn unknown_keys_get_did_you_mean_and_all_are_reported() {
    let (text, codes) =
        user_err("[resources]\ncpu_cont = 2\n\n[envirnment]\nhostname = \"x\"\n\n[ai.google]\napi_kye = \"AIza1\"\n");
    assert_eq!(codes, [Code::UnknownKey; 3], "{text}");
    assert!(text.contains("user.toml:2:1: error[C002]: unknown key `cpu_cont` in [resources]"), "{text}");
    assert!(text.contains("did you mean `cpu_count`?"), "{text}");
    assert!(text.contains("user.toml:4:2: error[C002]: unknown section `[envirnment]`"), "{text}");
    assert!(text.contains("did you mean `environment`?"), "{text}");
    assert!(
        text.contains("unknown key `api_kye` in [ai.google]") && text.contains("did you mean `api_key`?"),
        "{text}"
    );
}

#[test]
fn errors_in_several_sections_are_all_reported() {
    let (text, codes) = user_err(
        "[resources]\ncpu_count = \"two\"\n[environment]\nhostname = \"Bad_Host\"\n[environment.vars]\n\"1X\" = \"v\"\n[web]\ncustom_allow = [\"https://x.org\"]\n[ai.anthropic]\nenabled = \"yes\"\n",
    );
    assert_eq!(
        codes,
        [Code::WrongType, Code::BadHostname, Code::BadEnvVar, Code::BadDomain, Code::WrongType],
        "{text}"
    );
    assert!(text.contains("user.toml:2:13: error[C003]: in [resources]"), "{text}");
    assert!(text.contains("user.toml:4:12: error[C007]"), "{text}");
}

#[test]
fn bad_public_key_names_file_and_line() {
    let (text, codes) = user_err(&format!("[trust]\npublic_keys = [\n  \"{KEY_A}\",\n  \"RWnotakey\",\n]\n"));
    assert_eq!(codes, [Code::BadPublicKey], "{text}");
    assert!(
        text.contains(
            "/home/u/.capsem/user.toml:4:3: error[C005]: trust.public_keys[1] is not a usable minisign public key"
        ),
        "{text}"
    );
}

#[test]
fn public_key_files_are_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/b.pub"), format!("untrusted comment: minisign public key\n{KEY_B}\n"))
        .unwrap();
    let cfg = dir.path().join("user.toml");
    std::fs::write(&cfg, format!("[trust]\npublic_keys = [\"{KEY_A}\"]\npublic_key_files = [\"keys/b.pub\"]\n"))
        .unwrap();
    let c = Config::load(&cfg, Layer::User).unwrap().expect("file exists");
    let keys = &c.trust.as_ref().unwrap().value;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].key.to_base64(), KEY_A);
    assert_eq!(keys[0].origin, format!("{}:2", cfg.display()));
    assert_eq!(keys[1].key.to_base64(), KEY_B);
    assert_eq!(keys[1].origin, format!("{} (listed at {}:3)", dir.path().join("keys/b.pub").display(), cfg.display()));

    // Relative to the config file, not to the working directory: a missing one names both.
    std::fs::write(&cfg, "[trust]\npublic_key_files = [\"nope.pub\"]\n").unwrap();
    let err = Config::load(&cfg, Layer::User).unwrap_err();
    assert_eq!(err.diagnostics()[0].code, Code::UnreadableKeyFile);
    assert!(err.to_string().contains(&format!("{}:2:21", cfg.display())), "{err}");
    assert!(err.to_string().contains(&dir.path().join("nope.pub").display().to_string()), "{err}");

    assert!(Config::load(&dir.path().join("absent.toml"), Layer::User).unwrap().is_none());
}

#[test]
fn upstream_ca_file_is_checked_relative_to_the_config_file_and_corp_wins() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::egress::ca::CertAuthority::load_or_create(&dir.path().join("ca")).unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/corp-ca.pem"), ca.ca_pem()).unwrap();
    let cfg = dir.path().join("user.toml");
    std::fs::write(&cfg, "[web]\nupstream_ca_file = \"certs/corp-ca.pem\"\n").unwrap();
    let u = Config::load(&cfg, Layer::User).unwrap().expect("file exists");
    let e = resolve(Some(&u), None, RunOverrides::default()).unwrap();
    assert_eq!(e.upstream_ca_file, Some(dir.path().join("certs/corp-ca.pem")));
    assert!(resolve(None, None, RunOverrides::default()).unwrap().upstream_ca_file.is_none());

    // Corp's wins, with a note naming the user's line.
    let corp_file = dir.path().join("corp.toml");
    std::fs::write(dir.path().join("other.pem"), ca.ca_pem()).unwrap();
    std::fs::write(&corp_file, "[web]\nupstream_ca_file = \"other.pem\"\n").unwrap();
    let c = Config::load(&corp_file, Layer::Corp).unwrap().expect("file exists");
    let e = resolve(Some(&u), Some(&c), RunOverrides::default()).unwrap();
    assert_eq!(e.upstream_ca_file, Some(dir.path().join("other.pem")));
    assert!(
        e.notes.iter().any(|n| n.starts_with(&format!("{}:2", cfg.display())) && n.contains("corp")),
        "{:?}",
        e.notes
    );

    // Missing, empty of certificates, or not a CA: C014 at the value, naming the resolved path.
    for (content, why) in [
        (None, "No such file"),
        (Some("not a certificate\n"), "no PEM certificate"),
        (Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "not usable as a CA"),
    ] {
        let pem = dir.path().join("bad.pem");
        let _ = std::fs::remove_file(&pem);
        if let Some(content) = content {
            std::fs::write(&pem, content).unwrap();
        }
        std::fs::write(&cfg, "[web]\nupstream_ca_file = \"bad.pem\"\n").unwrap();
        let err = Config::load(&cfg, Layer::User).unwrap_err();
        assert_eq!(err.diagnostics()[0].code, Code::BadUpstreamCa, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("{}:2:20", cfg.display())), "{text}");
        assert!(text.contains(&pem.display().to_string()) && text.contains(why), "{why}: {text}");
    }
}

#[test]
fn corp_trust_hides_user_keys() {
    let u = user(&format!("[trust]\npublic_keys = [\"{KEY_A}\"]\n"));
    let e = resolve(Some(&u), None, RunOverrides::default()).unwrap();
    assert_eq!((e.trusted_keys.len(), e.trust_layer), (1, Some(Layer::User)));

    let c = corp(&format!("[trust]\npublic_keys = [\"{KEY_B}\"]\n"));
    let e = resolve(Some(&u), Some(&c), RunOverrides::default()).unwrap();
    assert_eq!(e.trust_layer, Some(Layer::Corp));
    let b64: Vec<&str> = e.trusted_keys.iter().map(|k| k.key.to_base64()).collect();
    assert_eq!(b64, [KEY_B], "only corp keys");
    assert!(e.notes.iter().any(|n| n.contains("the user's [trust] keys are ignored")), "{:?}", e.notes);

    // Corp without [trust] leaves the user's keys alone.
    let c = corp("[resources]\ncpu_count = 2\n");
    let e = resolve(Some(&u), Some(&c), RunOverrides::default()).unwrap();
    assert_eq!(e.trust_layer, Some(Layer::User));
}

#[test]
fn api_keys_become_the_providers_env_vars_and_never_print() {
    let u = user(
        "[ai.google]\napi_key = \"AIzaSECRET123\"\n[ai.anthropic]\napi_key = \"sk-ant-SECRET456\"\nenabled = false\n",
    );
    let e = resolve(Some(&u), None, RunOverrides::default()).unwrap();
    assert_eq!(e.env["GEMINI_API_KEY"], "AIzaSECRET123");
    assert_eq!(e.env["GOOGLE_API_KEY"], "AIzaSECRET123");
    assert!(e.secret_env.contains("GEMINI_API_KEY"));
    assert!(!e.env.contains_key("ANTHROPIC_API_KEY"), "disabled provider: key not injected");
    assert!(e.notes.iter().any(|n| n.contains("ai.anthropic.api_key is not used")), "{:?}", e.notes);
    assert!(e.files.iter().any(|f| f.path == "/root/.gemini/settings.json"), "enabled provider's files");
    assert!(!e.files.iter().any(|f| f.path == "/root/.claude/settings.json"), "disabled provider's files");
    assert!(e.web.providers.contains_key("google") && !e.web.providers.contains_key("anthropic"));
    for shown in [format!("{e:?}"), format!("{u:?}"), format!("{:?}", resolve(Some(&u), None, RunOverrides::default()))]
    {
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    let (text, codes) = user_err("[ai.google]\napi_key = \"AIza SECRET\"\n");
    assert_eq!(codes, [Code::BadApiKey]);
    assert!(!text.contains("SECRET"), "{text}");

    let u = user("[ai.gogle]\napi_key = \"AIza1\"\n");
    let text = resolve(Some(&u), None, RunOverrides::default()).unwrap_err().to_string();
    assert!(text.contains("user.toml:1:5: error[C010]: [ai.gogle]: the image has no AI provider `gogle`"), "{text}");
    assert!(text.contains("did you mean `google`?"), "{text}");
}

#[test]
fn web_lists_layer_block_union_and_corp_allow_replaces() {
    let u = user("[web]\ncustom_allow = [\"a.example.org\"]\ncustom_block = [\"ads.example.org\"]\n");
    let e = resolve(Some(&u), None, RunOverrides::default()).unwrap();
    let allow: Vec<&str> = e.web.custom_allow.iter().map(DomainPattern::as_str).collect();
    assert!(allow.contains(&"a.example.org") && allow.contains(&"*.elie.net"), "{allow:?}");

    let c = corp("[web]\ncustom_allow = [\"corp.example\"]\ncustom_block = [\"x.example\"]\n");
    let e = resolve(Some(&u), Some(&c), RunOverrides::default()).unwrap();
    let allow: Vec<&str> = e.web.custom_allow.iter().map(DomainPattern::as_str).collect();
    let block: Vec<&str> = e.web.custom_block.iter().map(DomainPattern::as_str).collect();
    assert_eq!(allow, ["corp.example"]);
    assert_eq!(block, ["ads.example.org", "x.example"]);
    assert!(e.notes.iter().any(|n| n.contains("web.custom_allow is ignored")), "{:?}", e.notes);
}

#[test]
fn every_code_has_a_test_that_triggers_it() {
    let mut seen = std::collections::BTreeSet::new();
    let files: &[&str] = &[
        "[resources\n",
        "[resourcez]\n",
        "[resources]\ncpu_count = true\n",
        "[trust]\npublic_keys = [\"RWx\"]\n",
        "[trust]\npublic_key_files = [\"/nonexistent/capsem.pub\"]\n",
        "[environment]\nhostname = \"-\"\n",
        "[environment.vars]\n\"A-B\" = \"1\"\n",
        "[web]\ncustom_block = [\"*\"]\n",
        "[ai.google]\napi_key = \"\"\n",
        "[trust]\n",
        "[web]\nupstream_ca_file = \"/nonexistent/ca.pem\"\n",
    ];
    for text in files {
        let (_, codes) = user_err(text);
        seen.extend(codes);
    }
    for (u, run) in [
        ("[resources]\ncpu_count = 0\n", RunOverrides::default()),
        ("[ai.nope]\nenabled = true\n", RunOverrides::default()),
    ] {
        let err = resolve(Some(&user(u)), None, run).unwrap_err();
        seen.extend(err.diagnostics().iter().map(|d| d.code));
    }
    let c = corp("[resources]\ncpu_count = 1\n");
    let err = resolve(None, Some(&c), RunOverrides { cpus: Some(2), memory_mib: None }).unwrap_err();
    seen.extend(err.diagnostics().iter().map(|d| d.code));
    let all: std::collections::BTreeSet<Code> = Code::ALL.iter().copied().collect();
    assert_eq!(seen, all);
}

#[test]
fn syntax_errors_point_at_the_line() {
    let (text, codes) = user_err("[resources]\ncpu_count = = 2\n");
    assert_eq!(codes, [Code::TomlSyntax]);
    assert!(text.starts_with("/home/u/.capsem/user.toml:2:"), "{text}");
}

#[test]
fn defaults_json_problems_are_reported_as_such() {
    let err = Effective::resolve(b"{}", None, None, &RunOverrides::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Defaults { .. }), "{err}");
    let newer = String::from_utf8(DEFAULTS.to_vec()).unwrap().replace("\"schema_version\": 1", "\"schema_version\": 2");
    let err = Effective::resolve(newer.as_bytes(), None, None, &RunOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("schema_version 2 is not supported"), "{err}");
}

#[test]
fn load_configs_reports_both_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path().to_path_buf(), dir.path().join("corp.toml"));
    assert!(matches!(load_configs(&paths), Ok((None, None))));
    std::fs::write(&paths.user_file, "[x]\n").unwrap();
    std::fs::write(&paths.corp_file, "[y]\n").unwrap();
    let err = load_configs(&paths).unwrap_err();
    let files: Vec<&Path> = err
        .diagnostics()
        .iter()
        .map(|d| match &d.location {
            Location::At { file, .. } => file.as_path(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(files, [paths.corp_file.as_path(), paths.user_file.as_path()]);
}
