//! A startup `search_path` and every way back to it, on raw connections.
//!
//! The cluster has a schema `private` with its own `customers` (rows the
//! policy never lets an agent read: `agents-read` allows `public.*`, not
//! `private.*`). An agent logs in with `search_path` set to a path that
//! puts `private` first; the server then resolves an unqualified
//! `customers` to `private.customers`, and so must the gateway, also after
//! `RESET search_path`, `SET search_path TO DEFAULT`, `SET LOCAL ... TO
//! DEFAULT` and `DISCARD ALL`, which return to the startup value, not to the
//! policy's `public`. Each reset path runs in one string and as separate
//! messages, for every spelling of the startup parameter, each on its own
//! connection; the unqualified read must be refused (`42501`) every time,
//! while `public.customers` stays readable.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use portcullis_testkit::stack::Stack;
use portcullis_testkit::wire::{Raw, Reply};

/// What the cluster has besides `examples/demo.sql`, made by `app` (the
/// gateway's upstream role), so the server itself lets the session read it.
const PRIVATE_SCHEMA: &str = "CREATE SCHEMA private; \
     CREATE TABLE private.customers (id int PRIMARY KEY, secret text NOT NULL); \
     INSERT INTO private.customers VALUES (101, 'PRIVATE-ONE'), (102, 'PRIVATE-TWO');";

/// The startup parameters tried: name and value. Setting names are
/// matched without regard to case, by the server and by the gateway.
const STARTUP: [(&str, &str); 4] = [
    ("search_path", "private"),
    ("search_path", "private, public"),
    ("search_path", "\"private\", \"public\""),
    ("SEARCH_PATH", "private"),
];

/// What a step must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Runs without an error.
    Runs,
    /// Refused by the gateway: exactly one error, `42501`, and no rows.
    Refused,
}

use Expect::{Refused, Runs};

/// Every way back to the startup `search_path`: named, each a list of
/// simple-protocol queries (one string, or the statements one by one).
const RESET_PATHS: [(&str, &[(&str, Expect)]); 8] = [
    ("RESET in one string", &[("RESET search_path; SELECT * FROM customers", Refused)]),
    ("SET TO DEFAULT in one string", &[("SET search_path TO DEFAULT; SELECT * FROM customers", Refused)]),
    (
        "SET public, RESET in one string",
        &[("SET search_path = public; RESET search_path; SELECT * FROM customers", Refused)],
    ),
    (
        "SET LOCAL TO DEFAULT in a transaction, one string",
        &[("BEGIN; SET LOCAL search_path TO DEFAULT; SELECT * FROM customers; COMMIT", Refused)],
    ),
    ("RESET, then the read", &[("RESET search_path", Runs), ("SELECT * FROM customers", Refused)]),
    ("SET TO DEFAULT, then the read", &[("SET search_path TO DEFAULT", Runs), ("SELECT * FROM customers", Refused)]),
    (
        "SET public, read, RESET, read",
        &[
            ("SET search_path = public", Runs),
            ("SELECT * FROM customers", Runs),
            ("RESET search_path", Runs),
            ("SELECT * FROM customers", Refused),
        ],
    ),
    // DISCARD ALL is class `session`, which `agents-session` allows; it
    // cannot run inside a transaction block, so it has its own message.
    ("DISCARD ALL, then the read", &[("DISCARD ALL", Runs), ("SELECT * FROM customers", Refused)]),
];

/// Checks one answer: `None` when it is as expected, else what is wrong,
/// naming the step `at`.
fn check(reply: &Reply, expect: Expect, at: &str) -> Option<String> {
    if reply.rows.iter().flatten().flatten().any(|v| v.contains("PRIVATE")) {
        return Some(format!("{at}: rows of private.customers came back: {:?}", reply.rows));
    }
    match expect {
        Runs if !reply.errors.is_empty() => Some(format!("{at}: expected no error, got {:?}", reply.errors)),
        Refused if reply.codes() != ["42501"] || !reply.rows.is_empty() => {
            Some(format!("{at}: expected a refusal (42501), got {reply:?}"))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_back_to_a_startup_search_path_is_refused_where_it_reads_private() {
    let stack = Stack::builder().setup_sql(PRIVATE_SCHEMA).start();
    let token = stack.token("alice", &["ai-agents"], None);

    // The table really is there for the server, and a path without
    // `private` reads public.customers unqualified.
    let mut raw = Raw::connect(stack.addr, "startup search_path=public").await;
    raw.login(&[("user", "agent"), ("database", "app"), ("search_path", "public")], &token).await.unwrap();
    let reply = raw.query("SELECT id FROM customers ORDER BY id").await;
    assert_eq!(reply.brief(), (vec![Some("1".into()), Some("2".into()), Some("3".into())], vec![], b'I'));
    let private = stack.cluster.psql("app", "SELECT count(*) FROM private.customers").unwrap();
    assert_eq!(private, "2", "private.customers as the superuser sees it");

    // Every combination runs, and the failures are listed together.
    let (mut sessions, mut failures) = (0, Vec::new());
    for (name, value) in STARTUP {
        for (path, steps) in RESET_PATHS {
            let what = format!("{name}={value} / {path}");
            let mut raw = Raw::connect(stack.addr, &what).await;
            raw.login(&[("user", "agent"), ("database", "app"), (name, value)], &token)
                .await
                .unwrap_or_else(|e| panic!("{what}: login failed: {e}"));
            // Before any reset: qualified public is allowed, unqualified and
            // qualified private are not.
            let public = raw.query("SELECT * FROM public.customers").await;
            failures.extend(check(&public, Runs, &format!("{what}: SELECT * FROM public.customers")));
            assert_eq!(public.rows.len(), 3, "{what}: public.customers");
            let plain = raw.query("SELECT * FROM customers").await;
            failures.extend(check(&plain, Refused, &format!("{what}: before any reset")));
            let qualified = raw.query("SELECT * FROM private.customers").await;
            failures.extend(check(&qualified, Refused, &format!("{what}: private.customers")));
            for (sql, expect) in steps.iter().copied() {
                let reply = raw.query(sql).await;
                failures.extend(check(&reply, expect, &format!("{what}: {sql}")));
                if reply.status == b'E' {
                    // A refusal inside a transaction aborted it, as an error does.
                    assert_eq!(raw.query("ROLLBACK").await.status, b'I', "{what}: ROLLBACK");
                }
            }
            // The path is the startup one again, and public stays readable.
            let end = raw.query("SELECT * FROM customers").await;
            failures.extend(check(&end, Refused, &format!("{what}: at the end")));
            let public = raw.query("SELECT * FROM public.customers").await;
            failures.extend(check(&public, Runs, &format!("{what}: public.customers at the end")));
            assert_eq!(public.status, b'I', "{what}: no transaction left open");
            sessions += 1;
        }
    }
    assert_eq!(sessions, STARTUP.len() * RESET_PATHS.len());
    assert!(failures.is_empty(), "{} steps failed over {sessions} sessions:\n{}", failures.len(), failures.join("\n"));
}
