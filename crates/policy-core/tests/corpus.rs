//! Replays the shared decision corpus (`testdata/decisions/*.toml`) through
//! the engine: every case's verdict, and its rule when the case names one.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use pg_query::protobuf::Token;
use policy_core::{Engine, EngineOptions, Identity, Session};
use portcullis_testkit::corpus::{self, engine, Case};

/// One corpus case, ready to decide.
struct Loaded {
    file: String,
    policy: PathBuf,
    case: Case,
    identity: Identity,
    session: Session,
}

fn load_corpus() -> Vec<Loaded> {
    let mut engines: BTreeMap<PathBuf, Engine> = BTreeMap::new();
    corpus::cases()
        .into_iter()
        .map(|entry| {
            let engine =
                engines.entry(entry.policy.clone()).or_insert_with(|| engine(&entry.policy, Default::default()));
            let (identity, session) = (entry.case.identity(), entry.case.session(engine));
            Loaded { file: entry.file, policy: entry.policy, case: entry.case, identity, session }
        })
        .collect()
}

#[test]
fn corpus_decides_as_expected() {
    let mut engines: BTreeMap<PathBuf, Engine> = BTreeMap::new();
    let (mut total, mut bypasses, mut failures) = (0usize, 0usize, Vec::new());
    for Loaded { file, policy, case, identity, session } in load_corpus() {
        let engine = engines.entry(policy.clone()).or_insert_with(|| engine(&policy, Default::default()));
        total += 1;
        bypasses += usize::from(case.bypass);
        let d = engine.decide(&identity, &session, &case.sql);
        let rule_ok = match case.rule.as_deref() {
            None => true,
            Some("") => d.rule.is_none(),
            Some(r) => d.rule.as_deref() == Some(r),
        };
        if d.verdict != case.expect || !rule_ok {
            failures.push(format!(
                "{file} / {}: expected {} {:?}, got {} {:?}\n    sql: {}\n    decision: {}",
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
    println!("corpus: {total} cases, {bypasses} bypass attempts, {} failures", failures.len());
    assert!(failures.is_empty(), "{} of {total} corpus cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= 300, "the corpus should hold at least 300 cases, it has {total}");
    assert!(bypasses * 2 >= total, "at least half the corpus should be bypass attempts ({bypasses} of {total})");
}

/// `sql` with every constant the scanner finds replaced by `pick(kind, n)`
/// (`n` counts the constants), or `None` when the scanner fails.
fn with_constants(sql: &str, pick: impl Fn(Token, usize) -> Option<String>) -> Option<String> {
    if sql.trim().is_empty() {
        return None; // scan_tokens would build a slice from a null pointer
    }
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let (mut out, mut copied, mut n) = (String::new(), 0usize, 0usize);
    for t in tokens {
        let Ok(kind) = Token::try_from(t.token) else { continue };
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        if let Some(value) = pick(kind, n) {
            out.push_str(sql.get(copied..start)?);
            out.push_str(&value);
            copied = end;
            n += 1;
        }
    }
    out.push_str(sql.get(copied..)?);
    Some(out)
}

/// The decision cache shares a decision among texts that differ only in
/// their constants. Over the whole corpus, with constants made equal,
/// distinct, true-ish and wildcard-ish: a cached engine that first saw the
/// original text twice decides every variant exactly as an engine without
/// a cache does (verdict, rule, reason, facts, spans).
#[test]
fn constants_never_change_a_shared_decision() {
    let variants: [&dyn Fn(Token, usize) -> Option<String>; 4] = [
        &|k, _| match k {
            Token::Iconst => Some("1".into()),
            Token::Fconst => Some("1.0".into()),
            Token::Sconst => Some("'1'".into()),
            _ => None,
        },
        &|k, n| match k {
            Token::Iconst => Some(format!("{}", 100 + n)),
            Token::Fconst => Some(format!("{n}.25")),
            Token::Sconst => Some(format!("'v{n}'")),
            Token::Bconst => Some("B'1'".into()),
            Token::Xconst => Some("X'1f'".into()),
            _ => None,
        },
        &|k, _| match k {
            Token::Iconst => Some("0".into()),
            Token::Fconst => Some("0.0".into()),
            Token::Sconst => Some("'true'".into()),
            _ => None,
        },
        &|k, n| match k {
            Token::Iconst => Some(format!("{}", n % 2)),
            Token::Sconst => Some(if n % 2 == 0 { "'%'".into() } else { "$$public.secrets$$".into() }),
            _ => None,
        },
    ];
    let mut cached: BTreeMap<PathBuf, Engine> = BTreeMap::new();
    let mut uncached: BTreeMap<PathBuf, Engine> = BTreeMap::new();
    let (mut compared, mut failures) = (0usize, Vec::new());
    for Loaded { file, policy, case, identity, session } in load_corpus() {
        let cached = cached.entry(policy.clone()).or_insert_with(|| engine(&policy, Default::default()));
        let uncached =
            uncached.entry(policy.clone()).or_insert_with(|| engine(&policy, EngineOptions { cache_bytes: 0 }));
        for (i, pick) in variants.iter().enumerate() {
            let Some(variant) = with_constants(&case.sql, pick) else { continue };
            if variant == case.sql {
                continue;
            }
            // Seen twice: cached (by shape when its decision reads no constant).
            cached.decide(&identity, &session, &case.sql);
            cached.decide(&identity, &session, &case.sql);
            let got = cached.decide(&identity, &session, &variant);
            let want = uncached.decide(&identity, &session, &variant);
            compared += 1;
            if got != want {
                failures.push(format!(
                    "{file} / {} (variant {i}):\n    sql: {}\n    variant: {variant}\n    cached: {}\n    uncached: {}",
                    case.name,
                    case.sql,
                    got.to_json(),
                    want.to_json()
                ));
            }
        }
    }
    let shape_hits: u64 = cached.values().map(|e| e.cache_stats().shape_hits).sum();
    println!("{compared} variants compared, {} differ, {shape_hits} answered by shape", failures.len());
    assert!(compared >= 500, "only {compared} variants were compared");
    assert!(shape_hits * 4 >= compared as u64, "only {shape_hits} of {compared} variants were answered by shape");
    assert!(failures.is_empty(), "{} variants decided differently:\n{}", failures.len(), failures.join("\n"));
}
