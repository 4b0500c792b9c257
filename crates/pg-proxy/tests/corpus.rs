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

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use pg_proxy::codec;
use postgres_protocol::message::frontend;
use serde::Deserialize;
use support::{repo, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Deserialize)]
struct CorpusFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize, Clone)]
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
    expect: String,
    rule: Option<String>,
}

/// What the gateway answered: `Some((code, message))` of the first error.
async fn run_case(addr: std::net::SocketAddr, token: &str, case: &Case) -> Option<(String, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    let path = case.search_path.as_ref().map(|p| p.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "));
    let mut params = vec![("user", "corpus"), ("database", "app")];
    if let Some(p) = &path {
        params.push(("search_path", p.as_str()));
    }
    frontend::startup_message(params.iter().copied(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut first_error = None;
    let mut sent_query = false;
    loop {
        let frame = loop {
            if let Some(f) = codec::decode_backend(&mut buf, 1 << 26).unwrap() {
                break f;
            }
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read_buf(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{}: no answer in 20 s", case.name))
                .unwrap();
            assert!(n > 0, "{}: the gateway closed the connection", case.name);
        };
        out.clear();
        match frame.kind {
            b'R' => {
                if let codec::Authentication::CleartextPassword = codec::parse_authentication(&frame).unwrap() {
                    frontend::password_message(token.as_bytes(), &mut out).unwrap();
                }
            }
            b'E' => {
                let fields = codec::parse_fields(&frame).unwrap();
                let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str().to_string());
                assert!(sent_query, "{}: login failed: {:?}", case.name, get(b'M'));
                first_error.get_or_insert((get(b'C').unwrap_or_default(), get(b'M').unwrap_or_default()));
            }
            b'G' => frontend::copy_fail("corpus replay sends no COPY data", &mut out).unwrap(),
            b'Z' if !sent_query => {
                frontend::query(&case.sql, &mut out).unwrap();
                sent_query = true;
            }
            b'Z' => return first_error,
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gives_the_corpus_verdicts() {
    let dir = repo("testdata/decisions");
    let policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let stack = Stack::with_policy(&policy);
    // Nothing an allowed case runs may hang the replay.
    stack.cluster.psql("postgres", "ALTER ROLE app SET statement_timeout = '3s'").unwrap();

    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("policy.toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in &files {
        let corpus: CorpusFile = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        cases.extend(corpus.case);
    }
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
        let subject = case.subject.clone().unwrap_or_else(|| "corpus-user".into());
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
        let refused = answer.as_ref().filter(|(code, message)| {
            code == "42501"
                && (message.starts_with("refused by policy") || message.starts_with("this statement needs approval"))
        });
        let expect_refused = case.expect != "allow";
        let rule_ok = match (&refused, &case.rule) {
            (Some((_, message)), Some(rule)) if !rule.is_empty() => message.contains(&format!("(rule {rule})")),
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
