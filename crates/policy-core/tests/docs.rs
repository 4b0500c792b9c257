//! `docs/policy.md` against the engine: the keys its tables document are
//! the keys the policy loader accepts, table by table, both ways; its lists
//! of classes, strategies and detectors are the engine's.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;

use policy_core::Policy;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/policy.md")).unwrap()
}

/// The backticked names serde lists after "expected" in `error`.
fn expected_names(error: &str) -> Vec<String> {
    let expected = error.split_once("expected").map(|(_, rest)| rest).unwrap_or_default();
    expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The keys one policy table accepts: what the loader lists when it meets
/// an unknown one.
fn accepted_keys(table: &str) -> Vec<String> {
    let text = match table {
        "" => "version = 1\nzz_unknown = 1\n".to_string(),
        "settings" | "identity" => format!("version = 1\n[{table}]\nzz_unknown = 1\n"),
        array => format!("version = 1\n[[{array}]]\nzz_unknown = 1\n"),
    };
    let e = Policy::from_toml_str(&text, "docs.toml").unwrap_err().to_string();
    assert!(e.contains("unknown field `zz_unknown`"), "[{table}]: {e}");
    expected_names(&e)
}

/// The names a value may take, from the loader's error for `zz`.
fn accepted_values(policy: &str) -> Vec<String> {
    let e = Policy::from_toml_str(policy, "docs.toml").unwrap_err().to_string();
    assert!(e.contains("unknown variant `zz`"), "{e}");
    expected_names(&e)
}

/// The first-column names of the doc's tables whose header is `header`,
/// by the policy table they belong to (the last line that starts with
/// `` `[table]`: `` or `` `[[table]]`: ``, or the section: §1 the file, §2
/// identity, §7 tests).
fn documented(header: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    let (mut table, mut rows) = (String::new(), false);
    for line in doc().lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            table = match heading.split_whitespace().next() {
                Some("§2") => "identity".to_string(),
                Some("§7") => "test".to_string(),
                _ => String::new(),
            };
        } else if let Some((name, after)) = line.strip_prefix('`').and_then(|rest| rest.split_once('`')) {
            if name.starts_with('[') && name.ends_with(']') && after.starts_with(':') {
                table = name.trim_matches(['[', ']']).to_string();
            }
        }
        if line.starts_with(header) {
            rows = true;
        } else if !line.starts_with('|') {
            rows = false;
        } else if rows && line.starts_with("| `") {
            let name = line.trim_start_matches("| `").split('`').next().unwrap_or_default().to_string();
            out.entry(table.clone()).or_default().push(name);
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn every_policy_key_is_documented_and_every_documented_key_exists() {
    let doc = documented("| key | default | meaning |");
    let tables = ["", "settings", "identity", "rule", "mask", "detector", "test"];
    for table in tables {
        let listed = sorted(doc.get(table).cloned().unwrap_or_default());
        let accepted = sorted(accepted_keys(table));
        assert_eq!(listed, accepted, "docs/policy.md, [{table}]: documented vs accepted keys");
    }
    assert_eq!(doc.len(), tables.len(), "tables documented: {:?}", doc.keys());
}

#[test]
fn classes_strategies_and_detectors_are_the_engines() {
    let only = |header: &str| -> Vec<String> { sorted(documented(header).into_values().flatten().collect()) };
    let classes = accepted_values("version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"zz\"]\n");
    assert_eq!(only("| class | what |"), sorted(classes));
    let strategies = accepted_values("version = 1\n[[mask]]\nname = \"m\"\ncolumns = [\"*.*.c\"]\nstrategy = \"zz\"\n");
    assert_eq!(only("| strategy | a value becomes |"), sorted(strategies));
    let kinds = accepted_values("version = 1\n[[detector]]\nname = \"d\"\nkinds = [\"zz\"]\nstrategy = \"redact\"\n");
    assert_eq!(only("| kind | finds |"), sorted(kinds));
}
