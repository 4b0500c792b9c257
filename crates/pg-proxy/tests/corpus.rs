//! The shared decision corpus (`testdata/decisions`) replayed through a
//! live gateway: every case the engine refuses is refused by the gateway
//! (`42501`, naming the case's rule), and every case it allows reaches the
//! server (which may then fail it: the corpus names tables the sample
//! schema does not have, and the upstream role is not a superuser).
//!
//! Each case runs on a fresh connection opened with the case's identity and
//! `search_path` (a startup parameter). Cases that need session state the
//! gateway cannot be given at login (SQL-level prepared statements,
//! `standard_conforming_strings = off`) or a NUL in the text (which no
//! protocol message can carry) are counted and skipped: the engine's own
//! corpus test covers them.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::time::Duration;

use policy_core::Verdict;
use portcullis_testkit::corpus::{self, Case};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::wire::{Raw, ServerError};

/// What the gateway answered: the first error after the query, if any.
async fn run_case(addr: std::net::SocketAddr, token: &str, case: &Case) -> Option<ServerError> {
    let mut raw = Raw::connect(addr, &case.name).await.with_wait(Duration::from_secs(20));
    let path = case.search_path_setting();
    let mut params = vec![("user", "corpus"), ("database", "app")];
    if let Some(p) = &path {
        params.push(("search_path", p.as_str()));
    }
    raw.login(&params, token).await.unwrap_or_else(|e| panic!("{}: login failed: {e}", case.name));
    raw.query(&case.sql).await.errors.into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gives_the_corpus_verdicts() {
    let policy = std::fs::read_to_string(corpus::dir().join("policy.toml")).unwrap();
    let stack = Stack::with_policy(&policy);
    // Nothing an allowed case runs may hang the replay.
    stack.cluster.psql("postgres", "ALTER ROLE app SET statement_timeout = '3s'").unwrap();

    let cases = corpus::cases().into_iter().map(|entry| entry.case);
    let (mut replayed, mut skipped, mut failures) = (0, 0, Vec::new());
    let mut tokens: BTreeMap<(String, Vec<String>, Option<String>), String> = BTreeMap::new();
    let mut runs = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for case in cases {
        // A NUL cannot travel in a protocol string: the engine's own test covers those.
        if !case.prepared.is_empty()
            || case.standard_conforming_strings == Some(false)
            || case.sql.contains('\0')
            || case.search_path.iter().flatten().any(|p| p.contains('\0'))
        {
            skipped += 1;
            continue;
        }
        let subject = case.subject().to_string();
        let key = (subject.clone(), case.groups.clone(), case.actor.clone());
        let token = tokens
            .entry(key)
            .or_insert_with(|| {
                let groups: Vec<&str> = case.groups.iter().map(String::as_str).collect();
                stack.token(&subject, &groups, case.actor.as_deref())
            })
            .clone();
        let permit = std::sync::Arc::clone(&slots).acquire_owned().await.unwrap();
        let addr = stack.addr;
        runs.spawn(async move {
            let answer = run_case(addr, &token, &case).await;
            drop(permit);
            (case, answer)
        });
    }
    while let Some(done) = runs.join_next().await {
        let (case, answer) = done.unwrap();
        replayed += 1;
        let refused = answer.as_ref().filter(|e| {
            e.code == "42501"
                && (e.message.starts_with("refused by policy")
                    || e.message.starts_with("this statement needs approval"))
        });
        let expect_refused = case.expect != Verdict::Allow;
        let rule_ok = match (&refused, &case.rule) {
            (Some(e), Some(rule)) if !rule.is_empty() => e.message.contains(&format!("(rule {rule})")),
            _ => true,
        };
        if refused.is_some() != expect_refused || !rule_ok {
            failures.push(format!(
                "{}: expected {} (rule {:?}), gateway answered {:?}",
                case.name, case.expect, case.rule, answer
            ));
        }
    }
    eprintln!("corpus through the gateway: {replayed} cases replayed, {skipped} skipped, {} failed", failures.len());
    assert!(replayed > 700, "only {replayed} cases replayed");
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
}
