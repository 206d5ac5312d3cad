//! Unit tests of the audit: format detection, matching (PEP 503 included), unmatched findings,
//! severities, the allow list, `fail_on` thresholds, malformed and oversized reports, output.
//! Fixtures: builder/tests/fixtures/audit/.

use super::*;

const TRIVY: &str = include_str!("../../tests/fixtures/audit/trivy.json");
const GRYPE: &str = include_str!("../../tests/fixtures/audit/grype.json");
const TRIVY_CLEAN: &str = include_str!("../../tests/fixtures/audit/trivy-clean.json");

fn pkg(manager: &str, name: &str, version: &str) -> Package {
    let ty = match manager {
        "apt" => "deb/debian",
        "pip" => "pypi",
        _ => "npm",
    };
    Package {
        manager: manager.into(),
        name: name.into(),
        version: version.into(),
        arch: (manager == "apt").then(|| "amd64".into()),
        location: None,
        purl: format!("pkg:{ty}/{name}@{version}"),
    }
}

/// The bill of materials the fixtures were "scanned" from (requests and Go's stdlib absent).
fn bom() -> Vec<Package> {
    vec![
        pkg("apt", "bash", "5.2.15-2+b7"),
        pkg("apt", "curl", "7.88.1-10+deb12u5"),
        pkg("apt", "git", "1:2.39.5-0+deb12u1"),
        pkg("apt", "zlib1g", "1:1.2.13.dfsg-1"),
        pkg("npm", "cross-spawn", "7.0.3"),
        pkg("pip", "cryptography", "43.0.0"),
        pkg("pip", "jinja2", "3.1.4"),
    ]
}

fn parse(json: &str) -> Result<ScanReport, AuditError> {
    parse_report(json.as_bytes(), Path::new("scan.json"))
}

fn policy(fail_on: FailOn, allow: &[&str]) -> AuditPolicy {
    AuditPolicy { fail_on, allow: allow.iter().map(|s| s.to_string()).collect() }
}

/// (package, id, severity, allowed) of each vulnerability.
fn rows(v: &[Vulnerability]) -> Vec<(String, String, String, bool)> {
    v.iter().map(|v| (v.package.clone(), v.id.clone(), v.severity.clone(), v.allowed)).collect()
}

fn ids(v: &[Vulnerability]) -> Vec<&str> {
    v.iter().map(|v| v.id.as_str()).collect()
}

#[test]
fn detects_the_format_and_hashes_the_bytes() {
    let t = parse(TRIVY).unwrap();
    assert_eq!(t.scanner, Scanner::Trivy);
    assert_eq!(t.findings.len(), 9);
    assert_eq!(t.report_b3, blake3::hash(TRIVY.as_bytes()).to_hex().to_string());
    let g = parse(GRYPE).unwrap();
    assert_eq!(g.scanner, Scanner::Grype);
    assert_eq!(g.findings.len(), 6);
    let clean = parse(TRIVY_CLEAN).unwrap();
    assert_eq!((clean.scanner, clean.findings.len()), (Scanner::Trivy, 0));
    // a clean trivy scan may have no Results at all; a clean grype scan has an empty list
    assert_eq!(parse(r#"{"SchemaVersion": 2, "ArtifactName": "rootfs"}"#).unwrap().findings, []);
    assert_eq!(parse(r#"{"matches": [], "descriptor": {"name": "grype"}}"#).unwrap().scanner, Scanner::Grype);
}

#[test]
fn scanner_types_map_to_managers() {
    let t = parse(TRIVY).unwrap();
    let kinds: BTreeSet<(&str, Option<&str>)> =
        t.findings.iter().map(|f| (f.kind.as_str(), f.manager.as_deref())).collect();
    let want = [("debian", Some("apt")), ("gobinary", None), ("node-pkg", Some("npm")), ("python-pkg", Some("pip"))];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), want);
    let g = parse(GRYPE).unwrap();
    let kinds: BTreeSet<(&str, Option<&str>)> =
        g.findings.iter().map(|f| (f.kind.as_str(), f.manager.as_deref())).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [("deb", Some("apt")), ("npm", Some("npm")), ("python", Some("pip"))]
    );
}

#[test]
fn trivy_findings_match_the_bom_sorted_by_package_then_id() {
    let o = evaluate(&parse(TRIVY).unwrap(), &bom(), &AuditPolicy::default());
    let r = |p: &str, id: &str, s: &str| (p.to_string(), id.to_string(), s.to_string(), false);
    assert_eq!(
        rows(&o.vulnerabilities),
        [
            r("bash", "TEMP-0841856-B18BAF", "LOW"),
            r("cross-spawn", "CVE-2024-21538", "HIGH"),
            r("cryptography", "GHSA-h4gh-qq45-vh27", "MEDIUM"),
            r("curl", "CVE-2024-2398", "HIGH"),
            r("curl", "CVE-2025-0725", "LOW"),
            r("git", "CVE-2025-48384", "HIGH"),
            // "Jinja2" in the report, "jinja2" in the BOM: PEP 503 names match
            r("jinja2", "CVE-2024-56201", "MEDIUM"),
            r("zlib1g", "CVE-2023-45853", "CRITICAL"),
        ]
    );
    assert_eq!(ids(&o.failing), ["CVE-2024-21538", "CVE-2024-2398", "CVE-2025-48384", "CVE-2023-45853"]);
    assert!(!o.passed());
    let curl = &o.vulnerabilities[3];
    assert_eq!((curl.manager.as_str(), curl.version.as_str()), ("apt", "7.88.1-10+deb12u5"));
    assert_eq!(curl.fixed_in.as_deref(), Some("7.88.1-10+deb12u6"));
    assert_eq!(o.vulnerabilities[1].fixed_in.as_deref(), Some("7.0.5, 6.0.6"));
    assert_eq!(o.vulnerabilities[7].fixed_in, None);
    // Go's stdlib is not in the BOM: reported, not recorded
    let un: Vec<(&str, &str, &str)> =
        o.unmatched.iter().map(|f| (f.name.as_str(), f.id.as_str(), f.kind.as_str())).collect();
    assert_eq!(un, [("stdlib", "CVE-2024-24790", "gobinary")]);
    assert_eq!(o.unmatched[0].severity, Severity::Critical);
    assert_eq!(o.info.scanner, "trivy");
}

#[test]
fn grype_findings_match_with_upper_case_severities() {
    let o = evaluate(&parse(GRYPE).unwrap(), &bom(), &AuditPolicy::default());
    let r = |p: &str, id: &str, s: &str| (p.to_string(), id.to_string(), s.to_string(), false);
    assert_eq!(
        rows(&o.vulnerabilities),
        [
            r("bash", "TEMP-0841856-B18BAF", "NEGLIGIBLE"),
            r("cross-spawn", "GHSA-3xgq-45jj-v275", "HIGH"),
            r("cryptography", "GHSA-h4gh-qq45-vh27", "MEDIUM"),
            r("curl", "CVE-2024-2398", "HIGH"),
            r("zlib1g", "CVE-2023-45853", "CRITICAL"),
        ]
    );
    assert_eq!(o.vulnerabilities[3].fixed_in.as_deref(), Some("7.88.1-10+deb12u6"));
    assert_eq!(o.vulnerabilities[4].fixed_in, None, "an empty fix.versions is no fix");
    assert_eq!(o.unmatched.len(), 1);
    assert_eq!((o.unmatched[0].name.as_str(), o.unmatched[0].manager.as_deref()), ("requests", Some("pip")));
    assert_eq!(o.info.scanner, "grype");
}

#[test]
fn pip_names_are_compared_after_pep503_and_other_names_exactly() {
    assert_eq!(pep503("Typing__Extensions"), "typing-extensions");
    assert_eq!(pep503("zope.interface"), "zope-interface");
    assert_eq!(pep503("A-_.b"), "a-b");
    let report = |kind: &str, name: &str| {
        format!(
            r#"{{"Results": [{{"Type": "{kind}", "Vulnerabilities": [{{"VulnerabilityID": "CVE-2024-0001",
            "PkgName": "{name}", "InstalledVersion": "4.12.2", "Severity": "HIGH"}}]}}]}}"#
        )
    };
    let bom = [pkg("pip", "typing_extensions", "4.12.2"), pkg("npm", "Left-Pad", "4.12.2")];
    let p = AuditPolicy::default();
    let o = evaluate(&parse(&report("python-pkg", "Typing.Extensions")).unwrap(), &bom, &p);
    assert_eq!(o.vulnerabilities[0].package, "typing_extensions", "recorded with the BOM's spelling");
    let o = evaluate(&parse(&report("node-pkg", "left-pad")).unwrap(), &bom, &p);
    assert_eq!((o.vulnerabilities.len(), o.unmatched.len()), (0, 1), "npm names are case-sensitive");
    // same name, other manager: no match
    let o = evaluate(&parse(&report("debian", "typing_extensions")).unwrap(), &bom, &p);
    assert_eq!((o.vulnerabilities.len(), o.unmatched.len()), (0, 1));
}

#[test]
fn another_version_does_not_match() {
    let bom = [pkg("apt", "curl", "7.88.1-10+deb12u6")];
    let o = evaluate(&parse(TRIVY).unwrap(), &bom, &AuditPolicy::default());
    assert!(o.vulnerabilities.is_empty());
    assert!(o.passed());
    assert_eq!(o.unmatched.len(), 9);
    // unmatched findings are deduplicated and sorted by name, then id
    let names: Vec<&str> = o.unmatched.iter().map(|f| f.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}

#[test]
fn fail_on_thresholds() {
    let scan = parse(TRIVY).unwrap();
    for (fail_on, want) in [
        (FailOn::Critical, vec!["CVE-2023-45853"]),
        (FailOn::High, vec!["CVE-2024-21538", "CVE-2024-2398", "CVE-2025-48384", "CVE-2023-45853"]),
        (
            FailOn::Medium,
            vec![
                "CVE-2024-21538",
                "GHSA-h4gh-qq45-vh27",
                "CVE-2024-2398",
                "CVE-2025-48384",
                "CVE-2024-56201",
                "CVE-2023-45853",
            ],
        ),
        (FailOn::None, vec![]),
    ] {
        let o = evaluate(&scan, &bom(), &policy(fail_on, &[]));
        assert_eq!(ids(&o.failing), want, "{fail_on:?}");
        assert_eq!(o.passed(), want.is_empty());
    }
    let low = evaluate(&scan, &bom(), &policy(FailOn::Low, &[]));
    assert_eq!(low.failing.len(), 8);
    // NEGLIGIBLE and UNKNOWN never fail
    let g = evaluate(&parse(GRYPE).unwrap(), &bom(), &policy(FailOn::Low, &[]));
    assert!(!ids(&g.failing).contains(&"TEMP-0841856-B18BAF"));
    for s in [Severity::Unknown, Severity::Negligible] {
        assert!(!s.fails(FailOn::Low));
    }
    assert!(Severity::Low.fails(FailOn::Low) && !Severity::Low.fails(FailOn::Medium));
    assert!(Severity::Critical.fails(FailOn::Critical) && !Severity::Critical.fails(FailOn::None));
}

#[test]
fn allowed_ids_are_recorded_and_do_not_fail() {
    let scan = parse(TRIVY).unwrap();
    let allow = ["CVE-2024-21538", "CVE-2024-2398", "CVE-2025-48384", "CVE-2023-45853", "CVE-2020-0001"];
    let o = evaluate(&scan, &bom(), &policy(FailOn::High, &allow));
    assert!(o.passed(), "{:?}", o.failing);
    let allowed: Vec<&str> = o.vulnerabilities.iter().filter(|v| v.allowed).map(|v| v.id.as_str()).collect();
    assert_eq!(allowed, ["CVE-2024-21538", "CVE-2024-2398", "CVE-2025-48384", "CVE-2023-45853"]);
    let o = evaluate(&scan, &bom(), &policy(FailOn::High, &allow[1..]));
    assert_eq!(ids(&o.failing), ["CVE-2024-21538"]);
    let p = policy(FailOn::High, &allow);
    assert_eq!(unused_allows(&p, &[("x86_64".into(), o)]), ["CVE-2020-0001"]);
}

#[test]
fn duplicate_findings_collapse_to_the_worst_rating() {
    let v = |sev: &str, fixed: &str| {
        format!(
            r#"{{"VulnerabilityID": "CVE-2024-2398", "PkgName": "curl", "InstalledVersion": "7.88.1-10+deb12u5",
            "Severity": "{sev}", "FixedVersion": "{fixed}"}}"#
        )
    };
    let json = format!(
        r#"{{"Results": [{{"Type": "debian", "Vulnerabilities": [{}, {}]}},
            {{"Type": "ubuntu", "Vulnerabilities": [{}]}}]}}"#,
        v("MEDIUM", ""),
        v("HIGH", "7.88.1-10+deb12u6"),
        v("LOW", "x")
    );
    let o = evaluate(&parse(&json).unwrap(), &bom(), &AuditPolicy::default());
    assert_eq!(rows(&o.vulnerabilities), [("curl".into(), "CVE-2024-2398".into(), "HIGH".into(), false)]);
    assert_eq!(o.vulnerabilities[0].fixed_in.as_deref(), Some("7.88.1-10+deb12u6"));
    assert_eq!(o.failing.len(), 1);
}

#[test]
fn malformed_reports_name_the_file_and_the_json_path() {
    let vuln = |fields: &str| format!(r#"{{"Results": [{{"Type": "debian", "Vulnerabilities": [{{{fields}}}]}}]}}"#);
    let ok = r#""VulnerabilityID": "CVE-2024-1", "PkgName": "curl", "InstalledVersion": "1""#;
    let long = "x".repeat(MAX_FIELD_BYTES + 1);
    let deep = format!("{{\"Results\": {}", "[".repeat(100_000));
    for (json, want) in [
        ("{\"Results\": [", "scan.json` is not valid JSON: EOF while parsing a list at line 1 column 13"),
        ("[]", "neither trivy nor grype JSON: the document is an array, not an object"),
        (&deep, "is not valid JSON: recursion limit exceeded"),
        (r#"{"vulnerabilities": []}"#, "(found: `vulnerabilities`)"),
        (r#"{"Results": [], "matches": []}"#, "both trivy's `Results` and grype's `matches`"),
        (r#"{"Results": {}}"#, "(trivy): $.Results: expected an array, found an object"),
        (r#"{"Results": [3]}"#, "$.Results[0]: expected an object, found a number"),
        (r#"{"Results": [{"Vulnerabilities": [{}]}]}"#, "$.Results[0].Type: missing"),
        (&vuln(ok), "$.Results[0].Vulnerabilities[0].Severity: missing"),
        (&vuln(&format!(r#"{ok}, "Severity": "SEVERE""#)), "Vulnerabilities[0].Severity: unknown severity `SEVERE`"),
        (&vuln(&format!(r#"{ok}, "Severity": """#)), "$.Results[0].Vulnerabilities[0].Severity: empty"),
        (&vuln(r#""VulnerabilityID": "CVE-2024-1", "PkgName": 7"#), "Vulnerabilities[0].PkgName: expected a string"),
        (
            &vuln(r#""VulnerabilityID": "CVE-2024-1", "PkgName": "x\u001b[2J", "InstalledVersion": "1""#),
            "$.Results[0].Vulnerabilities[0].PkgName: contains control characters",
        ),
        (&vuln(&format!(r#""VulnerabilityID": "CVE-2024-1", "PkgName": "{long}""#)), "PkgName: longer than 512 bytes"),
        (&vuln(&format!(r#"{ok}, "Severity": "LOW", "FixedVersion": 2"#)), "FixedVersion: expected a string"),
        (r#"{"matches": {}}"#, "(grype): $.matches: expected an array, found an object"),
        (
            r#"{"matches": [{"vulnerability": {"id": "CVE-2024-1", "severity": "High"}}]}"#,
            "$.matches[0].artifact: missing",
        ),
        (
            r#"{"matches": [{"vulnerability": {"id": "CVE-2024-1", "severity": "High", "fix": {"versions": [1]}},
              "artifact": {"name": "curl", "version": "1", "type": "deb"}}]}"#,
            "$.matches[0].vulnerability.fix.versions[0]: expected a string, found a number",
        ),
        (
            r#"{"matches": [{"vulnerability": {"id": "CVE-2024-1", "severity": "Severe"},
              "artifact": {"name": "curl", "version": "1", "type": "deb"}}]}"#,
            "$.matches[0].vulnerability.severity: unknown severity `Severe`",
        ),
        (
            r#"{"matches": [{"vulnerability": {"id": "CVE-2024-1", "severity": "High"},
              "artifact": {"name": "curl", "version": "1"}}]}"#,
            "$.matches[0].artifact.type: missing",
        ),
    ] {
        let e = parse(json).unwrap_err().to_string();
        assert!(e.contains("scan.json"), "{e}");
        assert!(e.contains(want), "{json}\n  got: {e}\n want: {want}");
    }
}

#[test]
fn caps_on_size_and_count() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("big.json");
    fs::write(&f, "{\"matches\": []}").unwrap();
    assert!(matches!(read_capped(&f, 8), Err(AuditError::TooLarge { limit: 8, .. })));
    assert!(read_capped(&f, 64).is_ok());
    let e = read_report(t.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = read_report(&t.path().join("missing.json")).unwrap_err().to_string();
    assert!(e.starts_with("cannot open `") && e.contains("missing.json"), "{e}");
    let w = Walk { path: Path::new("scan.json"), scanner: Scanner::Trivy };
    let f = parse(TRIVY).unwrap().findings.remove(0);
    let mut many = vec![f.clone(); MAX_FINDINGS - 1];
    w.push(&mut many, f.clone()).unwrap();
    assert!(matches!(w.push(&mut many, f), Err(AuditError::TooManyFindings { .. })));
}

#[test]
fn text_rendering() {
    let scan = parse(TRIVY).unwrap();
    let p = policy(FailOn::High, &["CVE-2024-2398"]);
    let results = vec![("x86_64".to_string(), evaluate(&scan, &bom(), &p))];
    expect_test::expect![[r#"
        x86_64: 8 findings in the bill of materials (3 failing, 1 allowed), 1 unmatched [trivy, fail_on = high]
          SEVERITY  ID                   PACKAGE       VERSION             MANAGER  FIXED IN            POLICY
          LOW       TEMP-0841856-B18BAF  bash          5.2.15-2+b7         apt      -                   -
          HIGH      CVE-2024-21538       cross-spawn   7.0.3               npm      7.0.5, 6.0.6        FAIL
          MEDIUM    GHSA-h4gh-qq45-vh27  cryptography  43.0.0              pip      43.0.1              -
          HIGH      CVE-2024-2398        curl          7.88.1-10+deb12u5   apt      7.88.1-10+deb12u6   allowed
          LOW       CVE-2025-0725        curl          7.88.1-10+deb12u5   apt      -                   -
          HIGH      CVE-2025-48384       git           1:2.39.5-0+deb12u1  apt      1:2.39.5-0+deb12u2  FAIL
          MEDIUM    CVE-2024-56201       jinja2        3.1.4               pip      3.1.5               -
          CRITICAL  CVE-2023-45853       zlib1g        1:1.2.13.dfsg-1     apt      -                   FAIL
          unmatched (no such package in x86_64's bill of materials; not recorded):
          SEVERITY  ID              PACKAGE  VERSION  TYPE      FIXED IN
          CRITICAL  CVE-2024-24790  stdlib   v1.22.1  gobinary  1.21.11, 1.22.4
        audit failed: 8 matched findings (1 allowed), 1 unmatched; not allowed at or above high: CVE-2023-45853, CVE-2024-21538, CVE-2025-48384
    "#]]
    .assert_eq(&render_text(scan.scanner, &p, &results));
    let clean = vec![("arm64".to_string(), evaluate(&parse(TRIVY_CLEAN).unwrap(), &bom(), &p))];
    expect_test::expect![[r#"
        arm64: 0 findings in the bill of materials (0 failing, 0 allowed), 0 unmatched [trivy, fail_on = high]
        audit passed: 0 matched findings (0 allowed), 0 unmatched; nothing unallowed at or above high
    "#]]
    .assert_eq(&render_text(Scanner::Trivy, &p, &clean));
}

#[test]
fn json_rendering() {
    let scan = parse(GRYPE).unwrap();
    let p = AuditPolicy::default();
    let results = vec![("x86_64".to_string(), evaluate(&scan, &bom(), &p))];
    let v: serde_json::Value = serde_json::from_str(&to_json(Path::new("g.json"), &scan, &p, &results)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["scanner"], "grype");
    assert_eq!(v["report"], "g.json");
    assert_eq!(v["passed"], false);
    assert_eq!(v["policy"]["fail_on"], "high");
    assert_eq!(v["failing_ids"], serde_json::json!(["CVE-2023-45853", "CVE-2024-2398", "GHSA-3xgq-45jj-v275"]));
    let a = &v["architectures"]["x86_64"];
    assert_eq!(a["audited"]["report_b3"], scan.report_b3);
    assert_eq!(a["vulnerabilities"][0]["severity"], "NEGLIGIBLE");
    assert_eq!(a["unmatched"][0]["severity"], "LOW");
    assert_eq!(a["unmatched"][0]["kind"], "python");
    assert_eq!(a["failing"].as_array().unwrap().len(), 3);
}
