//! The PII detectors: the planted-PII corpus (`testdata/pii/cases.toml`)
//! and the `Detectors` API (active flags, the no-match path, exact spans,
//! custom patterns, strategies, overlaps).
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use policy_core::{DetectorMatch, Detectors, Policy, REDACTED};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    kinds: Vec<String>,
    input: String,
    expect: Option<String>,
}

fn pii_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pii")
}

fn load(toml: &str) -> (Policy, Detectors) {
    let policy = Policy::from_toml_str(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let detectors = Detectors::new(&policy.detectors, None);
    (policy, detectors)
}

/// Checks the invariants every `find` result holds.
fn check_matches(text: &str, matches: &[DetectorMatch]) {
    let mut last_end = 0;
    for m in matches {
        assert!(m.start < m.end, "empty match {m:?} in {text:?}");
        assert!(m.start >= last_end, "overlap or disorder at {m:?} in {text:?}: {matches:?}");
        assert!(text.get(m.start..m.end).is_some(), "span {m:?} not on char boundaries in {text:?}");
        last_end = m.end;
    }
}

#[test]
fn corpus_redacts_as_expected() {
    let dir = pii_dir();
    let policy_text = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let (policy, detectors) = load(&policy_text);
    let names: Vec<&str> = policy.detectors.iter().map(|d| d.name.as_str()).collect();
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(dir.join("cases.toml")).unwrap()).unwrap();

    let all = vec![true; names.len()];
    let mut failures = Vec::new();
    let mut near_misses = 0;
    let mut kinds_seen = std::collections::BTreeSet::new();
    for case in &corpus.case {
        for kind in &case.kinds {
            assert!(names.contains(&kind.as_str()), "case `{}`: unknown kind `{kind}`", case.name);
            kinds_seen.insert(kind.clone());
        }
        if case.expect.is_none() {
            near_misses += 1;
        }
        let only: Vec<bool> = names.iter().map(|n| case.kinds.iter().any(|k| k == n)).collect();
        for (label, active) in [("all detectors", &all), ("its kinds only", &only)] {
            let got = detectors.redact(&case.input, active);
            if got != case.expect {
                failures.push(format!(
                    "case `{}` ({label}):\n  input:  {:?}\n  expect: {:?}\n  got:    {:?}",
                    case.name, case.input, case.expect, got
                ));
            }
            let mut matches = Vec::new();
            detectors.find(&case.input, active, &mut matches);
            check_matches(&case.input, &matches);
            assert_eq!(matches.is_empty(), got.is_none(), "case `{}`", case.name);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), corpus.case.len(), failures.join("\n"));
    assert!(corpus.case.len() >= 80, "only {} cases", corpus.case.len());
    assert!(near_misses * 3 >= corpus.case.len(), "only {near_misses} near misses of {}", corpus.case.len());
    assert_eq!(kinds_seen.len(), names.len(), "every kind has cases: {kinds_seen:?}");
}

const TWO: &str = r#"
version = 1
[[detector]]
name = "cards"
kinds = ["credit_card"]
strategy = "partial"
show_last = 4
[[detector]]
name = "contact"
kinds = ["email", "phone"]
strategy = "redact"
"#;

#[test]
fn spans_are_exact() {
    let (_, d) = load(TWO);
    let text = "a 4111 1111 1111 1111 b alice@example.com c +14155552671";
    let mut out = Vec::new();
    d.find(text, &[true, true], &mut out);
    assert_eq!(
        out,
        vec![
            DetectorMatch { detector: 0, start: 2, end: 21 },
            DetectorMatch { detector: 1, start: 24, end: 41 },
            DetectorMatch { detector: 1, start: 44, end: 56 },
        ]
    );
    assert_eq!(&text[2..21], "4111 1111 1111 1111");
    assert_eq!(&text[24..41], "alice@example.com");
    assert_eq!(&text[44..56], "+14155552671");
    assert_eq!(d.redact(text, &[true, true]).as_deref(), Some("a ****1111 b [redacted] c [redacted]"));
}

#[test]
fn find_appends_after_what_is_there() {
    let (_, d) = load(TWO);
    let earlier = DetectorMatch { detector: 7, start: 100, end: 200 };
    let mut out = vec![earlier];
    d.find("x alice@example.com 4111111111111111", &[true, true], &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], earlier);
    assert_eq!((out[1].start, out[2].start), (2, 20));
}

#[test]
fn active_flags_select_detectors() {
    let (_, d) = load(TWO);
    let text = "4111111111111111 alice@example.com";
    assert_eq!(d.redact(text, &[true, true]).as_deref(), Some("****1111 [redacted]"));
    assert_eq!(d.redact(text, &[false, true]).as_deref(), Some("4111111111111111 [redacted]"));
    assert_eq!(d.redact(text, &[true, false]).as_deref(), Some("****1111 alice@example.com"));
    assert_eq!(d.redact(text, &[false, false]), None);
    // A missing flag never unmasks.
    assert_eq!(d.redact(text, &[false]).as_deref(), Some("4111111111111111 [redacted]"));
    assert_eq!(d.redact(text, &[]).as_deref(), Some("****1111 [redacted]"));
}

#[test]
fn a_kind_goes_to_the_first_active_detector_listing_it() {
    let (_, d) = load(
        r#"
        version = 1
        [[detector]]
        name = "emails-for-most"
        kinds = ["email"]
        strategy = "email"
        exempt_groups = ["support"]
        [[detector]]
        name = "emails-for-support"
        kinds = ["email"]
        strategy = "fixed"
        value = "<email>"
        "#,
    );
    let text = "from alice@example.com";
    assert_eq!(d.redact(text, &[true, true]).as_deref(), Some("from ****@example.com"));
    assert_eq!(d.redact(text, &[false, true]).as_deref(), Some("from <email>"));
    let mut out = Vec::new();
    d.find(text, &[false, true], &mut out);
    assert_eq!(out, vec![DetectorMatch { detector: 1, start: 5, end: 22 }]);
}

#[test]
fn nothing_matched_means_none_and_no_allocation() {
    let (_, d) = load(TWO);
    for text in ["", "plain words", "order 1234 shipped at 10:30", "4111111111111112", "user@localhost"] {
        assert_eq!(d.redact(text, &[true, true]), None, "{text:?}");
        let mut out = Vec::new();
        d.find(text, &[true, true], &mut out);
        assert!(out.is_empty());
        assert_eq!(out.capacity(), 0, "find allocated for {text:?}");
    }
}

#[test]
fn empty_policy_scans_nothing() {
    let (_, d) = load("version = 1\n");
    assert!(d.is_empty());
    assert_eq!(d.redact("4111111111111111 alice@example.com", &[]), None);
    let (_, d) = load(TWO);
    assert!(!d.is_empty());
}

#[test]
fn custom_pattern_detector() {
    let (_, d) = load(
        r#"
        version = 1
        [[detector]]
        name = "employee-ids"
        pattern = '\bEMP-[0-9]{6}\b'
        strategy = "fixed"
        value = "[employee]"
        [[detector]]
        name = "cards-and-badges"
        kinds = ["credit_card"]
        pattern = 'badge#\d+'
        strategy = "partial"
        show_last = 2
        "#,
    );
    let text = "EMP-004211 badge#12345678 EMP-1234567 4111111111111111";
    let mut out = Vec::new();
    d.find(text, &[true, true], &mut out);
    assert_eq!(
        out,
        vec![
            DetectorMatch { detector: 0, start: 0, end: 10 },
            DetectorMatch { detector: 1, start: 11, end: 25 },
            DetectorMatch { detector: 1, start: 38, end: 54 },
        ]
    );
    assert_eq!(d.redact(text, &[true, true]).as_deref(), Some("[employee] ****78 EMP-1234567 ****11"));
    assert_eq!(d.redact(text, &[false, true]).as_deref(), Some("EMP-004211 ****78 EMP-1234567 ****11"));
    // A pattern that can match nothing reports nothing.
    let (_, d) = load("version = 1\n[[detector]]\nname = \"e\"\npattern = 'x*'\nstrategy = \"redact\"\n");
    assert_eq!(d.redact("abc", &[true]), None);
    assert_eq!(d.redact("axxb", &[true]).as_deref(), Some("a[redacted]b"));
}

#[test]
fn overlaps_go_to_the_leftmost_then_the_earlier_detector() {
    let (_, d) = load(
        r##"
        version = 1
        [[detector]]
        name = "digits"
        pattern = '[0-9]{4}'
        strategy = "fixed"
        value = "#"
        [[detector]]
        name = "cards"
        kinds = ["credit_card"]
        strategy = "redact"
        [[detector]]
        name = "mail"
        kinds = ["email"]
        strategy = "redact"
        [[detector]]
        name = "words"
        pattern = 'mail [a-z]+'
        strategy = "fixed"
        value = "W"
        "##,
    );
    // Same start: the pattern listed first wins, then it matches on.
    assert_eq!(d.redact("4111111111111111", &[true, true, true, true]).as_deref(), Some("####"));
    assert_eq!(d.redact("4111111111111111", &[false, true, true, true]).as_deref(), Some(REDACTED));
    // The leftmost match wins over a later-starting overlapping one.
    assert_eq!(d.redact("mail bob@example.com", &[true, true, true, true]).as_deref(), Some("W@example.com"));
    assert_eq!(d.redact("mail bob@example.com", &[true, true, true, false]).as_deref(), Some("mail [redacted]"));
}

#[test]
fn strategies_apply_to_the_span() {
    let toml = r#"
        version = 1
        [[detector]]
        name = "ssn"
        kinds = ["us_ssn"]
        strategy = "hash"
        [[detector]]
        name = "mail"
        kinds = ["email"]
        strategy = "email"
        [[detector]]
        name = "ip"
        kinds = ["ipv4"]
        strategy = "null"
        [[detector]]
        name = "keys"
        kinds = ["aws_access_key", "jwt", "private_key"]
        strategy = "fixed"
        value = "[secret]"
        "#;
    let policy = Policy::from_toml_str(toml, "t.toml").unwrap();
    let keyed = Detectors::new(&policy.detectors, Some(Arc::from(&b"pseudonym key"[..])));
    let all = [true; 4];
    let a = keyed.redact("ssn 123-45-6789.", &all).unwrap();
    let b = keyed.redact("ssn 123-45-6789.", &all).unwrap();
    let c = keyed.redact("ssn 123-45-6788.", &all).unwrap();
    assert_eq!(a, b, "hash is deterministic");
    assert_ne!(a, c);
    assert_eq!(a.len(), "ssn .".len() + 16, "{a}");
    assert!(a[4..20].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    // Without a key, hash falls back to redact.
    let unkeyed = Detectors::new(&policy.detectors, None);
    assert_eq!(unkeyed.redact("ssn 123-45-6789.", &all).as_deref(), Some("ssn [redacted]."));
    assert_eq!(keyed.redact("to: Bob.Smith@example.com", &all).as_deref(), Some("to: ****@example.com"));
    // `null` cannot null part of a value: the span is redacted.
    assert_eq!(keyed.redact("host 10.0.0.1 up", &all).as_deref(), Some("host [redacted] up"));
    assert_eq!(keyed.redact("AKIAIOSFODNN7EXAMPLE:ASIAY34FZKBOKMUTVV7A", &all).as_deref(), Some("[secret]:[secret]"));
}

#[test]
fn detectors_are_shareable() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<Detectors>();
    let (_, d) = load(TWO);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || d.redact(&format!("{i}: alice@example.com"), &[true, true]))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), Some(format!("{i}: [redacted]")));
    }
}

const ALL_KINDS: &str = r#"
version = 1
[[detector]]
name = "all"
kinds = ["credit_card", "us_ssn", "email", "phone", "iban", "ipv4", "aws_access_key", "jwt", "private_key"]
strategy = "redact"
"#;

#[test]
fn hostile_inputs_scan_in_linear_time() {
    let (_, d) = load(ALL_KINDS);
    let texts = [
        "-----BEGIN PRIVATE KEY-----".repeat(20_000),
        "-----BEGIN RSA PRIVATE KEY-----x-----END PRIVATE KEY-----".repeat(10_000),
        "a".repeat(100) + &"@".repeat(200_000),
        "a.".repeat(100_000) + "@",
        "1".repeat(500_000),
        "1 ".repeat(200_000),
        "+1 ".repeat(100_000),
        "eyJ".repeat(100_000),
        "eyJhbGciOiJIUzI1NiJ9.".repeat(20_000),
        "DE89 ".repeat(100_000),
        "\\".repeat(200_000) + "n4111111111111111",
        "AKIA".repeat(100_000),
        "1.".repeat(200_000),
    ];
    for text in &texts {
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        d.find(text, &[true], &mut out);
        check_matches(text, &out);
        // Generous: a quadratic scan of these takes minutes.
        assert!(start.elapsed().as_secs() < 20, "{:?}... took {:?}", &text[..20], start.elapsed());
    }
}

#[test]
fn random_text_gives_well_formed_matches() {
    let (_, d) = load(ALL_KINDS);
    let pieces = [
        "4111",
        "1111",
        " ",
        "-",
        ".",
        "@",
        "example.com",
        "a",
        "Z",
        "DE89",
        "(555)",
        "+1",
        "\\n",
        "\\",
        "n",
        "é",
        "€",
        "0",
        "9",
        "123",
        "45",
        "6789",
        "eyJhbGciOiJIUzI1NiJ9",
        "AKIA",
        "-----BEGIN PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
        "\n",
        "_",
        "255",
        "0000",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = next() % 24;
        let text: String = (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
        let mut out = Vec::new();
        d.find(&text, &[true], &mut out);
        check_matches(&text, &out);
        let redacted = d.redact(&text, &[true]);
        assert_eq!(redacted.is_some(), !out.is_empty());
    }
}
