//! Replays the shared decision corpus (`testdata/decisions/*.toml`) through
//! the engine: every case's verdict, and its rule when the case names one.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use policy_core::{Actor, Engine, Identity, Policy, Prepared, Verdict};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    policy: String,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    sql: String,
    #[serde(default)]
    groups: Vec<String>,
    subject: Option<String>,
    actor: Option<String>,
    search_path: Option<Vec<String>>,
    standard_conforming_strings: Option<bool>,
    #[serde(default)]
    prepared: BTreeMap<String, String>,
    expect: Verdict,
    rule: Option<String>,
    #[serde(default)]
    bypass: bool,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/decisions")
}

#[test]
fn corpus_decides_as_expected() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n != "policy.toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());

    let mut engines: BTreeMap<PathBuf, Engine> = BTreeMap::new();
    let (mut total, mut bypasses, mut failures) = (0usize, 0usize, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let corpus: CorpusFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let policy_path = file.parent().unwrap_or(&dir).join(&corpus.policy);
        let engine = engines
            .entry(policy_path.clone())
            .or_insert_with(|| {
                let text =
                    std::fs::read_to_string(&policy_path).unwrap_or_else(|e| panic!("{}: {e}", policy_path.display()));
                let policy =
                    Policy::from_toml_str(&text, &policy_path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
                Engine::new(policy, Default::default()).unwrap_or_else(|e| panic!("{e}"))
            })
            .clone();
        for case in &corpus.case {
            total += 1;
            bypasses += usize::from(case.bypass);
            let mut identity = Identity::new(case.subject.clone().unwrap_or_else(|| "corpus-user".into()))
                .with_groups(case.groups.clone());
            if let Some(a) = &case.actor {
                identity = identity.with_actor(Actor::new(a.clone()));
            }
            let mut session = engine.new_session();
            if let Some(p) = &case.search_path {
                session.search_path.clone_from(p);
            }
            if let Some(scs) = case.standard_conforming_strings {
                session.standard_conforming_strings = scs;
            }
            for (name, sql) in &case.prepared {
                session.prepared.insert(
                    name.clone(),
                    Prepared {
                        sql: Arc::from(sql.as_str()),
                        standard_conforming_strings: session.standard_conforming_strings,
                    },
                );
            }
            let d = engine.decide(&identity, &session, &case.sql);
            let rule_ok = match case.rule.as_deref() {
                None => true,
                Some("") => d.rule.is_none(),
                Some(r) => d.rule.as_deref() == Some(r),
            };
            if d.verdict != case.expect || !rule_ok {
                failures.push(format!(
                    "{} / {}: expected {} {:?}, got {} {:?}\n    sql: {}\n    decision: {}",
                    file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                    case.name,
                    case.expect,
                    case.rule,
                    d.verdict,
                    d.rule,
                    case.sql,
                    d.to_json()
                ));
            }
        }
    }
    println!("corpus: {total} cases, {bypasses} bypass attempts, {} failures", failures.len());
    assert!(failures.is_empty(), "{} of {total} corpus cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= 300, "the corpus should hold at least 300 cases, it has {total}");
    assert!(bypasses * 2 >= total, "at least half the corpus should be bypass attempts ({bypasses} of {total})");
}
