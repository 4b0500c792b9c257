//! The gateway through node-postgres (`pg`, with `pg-copy-streams`, from
//! the npm registry, installed by `scripts/node-deps`): the token as
//! password, an allowed read with masked values (simple protocol),
//! parameterised queries and a named prepared statement (extended
//! protocol, text formats), refusals as error code 42501 with the client
//! still usable, a refusal inside a transaction, and COPY FROM STDIN / TO
//! STDOUT through pg-copy-streams. The checks run in
//! `tests/node/pg_client.js`, which prints what it saw as JSON (each
//! section under a 20 s deadline); the assertions are here.
//!
//! `PORTCULLIS_SKIP_NODE=1` skips these tests (and says so) where node or
//! the npm registry is not available; otherwise a failed install fails the
//! test.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_testkit::process::{json_output, output_within};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::{repo, text};
use serde_json::{json, Value};

/// How long `scripts/node-deps` may take (a first install downloads packages).
const INSTALL_DEADLINE: Duration = Duration::from_secs(600);

/// How long one run of the client may take before the test fails.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// The node_modules directory, installed once per test binary; `None` when skipped.
fn node_modules() -> Option<&'static str> {
    static MODULES: OnceLock<Option<String>> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            if std::env::var("PORTCULLIS_SKIP_NODE").is_ok_and(|v| v == "1") {
                return None;
            }
            let out = output_within(&mut Command::new(repo("scripts/node-deps")), INSTALL_DEADLINE)
                .unwrap_or_else(|e| panic!("scripts/node-deps: {e}"));
            assert!(
                out.status.success(),
                "scripts/node-deps failed (set PORTCULLIS_SKIP_NODE=1 to skip the node-postgres tests):\n{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            let stdout = text(&out.stdout);
            let modules = stdout.lines().last().expect("node-deps prints node_modules last").trim().to_string();
            assert!(std::path::Path::new(&modules).join("pg").exists(), "node-deps printed {modules:?}");
            Some(modules)
        })
        .as_deref()
}

/// Runs the client against `stack` (only `sections` when not empty) and
/// returns its JSON; fails with its stderr when it failed or overran.
fn run_client(stack: &Stack, modules: &str, sections: &str) -> Value {
    let args = json!({
        "host": "127.0.0.1",
        "port": stack.addr.port(),
        "database": "app",
        "agent": stack.token("alice", &["ai-agents"], None),
        "reader": stack.token("rita", &["developers", "pii-readers"], None),
        "developer": stack.token("dave", &["developers"], None),
    });
    let out = output_within(
        Command::new("node")
            .arg(repo("crates/pg-proxy/tests/node/pg_client.js"))
            .arg(args.to_string())
            .env("NODE_PATH", modules)
            .env("PG_SECTIONS", sections),
        CLIENT_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("pg_client.js: {e}"));
    json_output("pg_client.js", &out)
}

/// A section of the client's output; fails when it timed out, naming it.
#[track_caller]
fn section<'a>(r: &'a Value, name: &str) -> &'a Value {
    let s = &r[name];
    assert!(!s.is_null(), "the client printed no section {name}: {r}");
    assert!(
        s.get("timeout").is_none(),
        "node-postgres section {name}: {} — the gateway stopped answering\n{s}",
        s["timeout"]
    );
    s
}

/// Asserts that `error` is a policy refusal: code 42501, a message that says so.
#[track_caller]
fn assert_refused(error: &Value, what: &str) {
    assert_eq!(error["code"], "42501", "{what}: {error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("refused by policy") || message.contains("needs approval"), "{what}: {error}");
}

#[test]
fn node_postgres_sessions() {
    let Some(modules) = node_modules() else {
        eprintln!("node_postgres_sessions: SKIPPED because PORTCULLIS_SKIP_NODE=1 (pg not installed, nothing checked)");
        return;
    };
    let stack = Stack::start();
    let r = run_client(&stack, modules, "");
    let v = &r["versions"];
    eprintln!("pg {}, pg-copy-streams {}, node {}", v["pg"], v["pg_copy_streams"], v["node"]);
    assert!(v["pg"].as_str().unwrap().starts_with("8."), "{v}");

    // An allowed read, simple protocol: masks applied, other values unchanged.
    let read = section(&r, "read");
    assert_eq!(
        read["rows"],
        json!([
            [1, "Alice Martin", "****@example.com", "****6789"],
            [2, "Bob Chen", "****@example.org", "****7890"],
            [3, "Carol Diaz", "****@example.net", "****8901"],
        ])
    );
    assert_eq!(read["fields"], json!([["id", 23], ["name", 25], ["email", 25], ["ssn", 25]]));
    assert_eq!(read["notes"][0], json!([1, "****1111", "prefers e-mail"]), "card detector");
    assert_eq!(read["notes"][1], json!([2, "****0004", "card on file: ****1881"]), "only the span is replaced");
    assert_eq!(read["order_1"], json!({"total": "1.99", "created_at": "2024-01-15T10:30:00.000Z"}));
    assert_eq!(read["count"], "5000", "bigint comes back as a string in pg");

    // Parameterised queries (unnamed statement) and a named prepared statement.
    let params = section(&r, "params");
    assert_eq!(params["by_id"], json!(["****6789", "****7890", "****8901"]));
    assert_eq!(
        params["two_params"],
        json!([[1, "****@example.com", "Alice Martin"], [3, "****@example.net", "Carol Diaz"]])
    );
    assert_eq!(params["named"], json!(["****7890", "****7890", "****7890", "****7890"]));
    assert_eq!(params["server_prepared"], json!([["ssn-by-id", "SELECT ssn FROM customers WHERE id = $1"]]));
    assert_eq!(params["inserted"], 2, "{params}");
    assert_eq!(params["inserted_total"], "9.00", "{params}");

    // Refusals: code 42501, through both protocols; the client goes on.
    let refusals = section(&r, "refusals");
    assert_refused(&refusals["drop"], "DROP TABLE");
    assert!(refusals["drop"]["message"].as_str().unwrap().contains("no-ddl-for-agents"), "{refusals}");
    assert_eq!(refusals["usable_after_drop"], true);
    assert_refused(&refusals["secrets"], "SELECT * FROM secrets");
    assert_refused(&refusals["delete_param"], "DELETE FROM customers with a parameter");
    assert_eq!(refusals["usable_after_param"], true);
    assert_refused(&refusals["named_refused"], "a named prepared DROP TABLE");
    assert_eq!(refusals["usable_after_named"], true);
    assert_eq!(refusals["orders_exist"], 1, "nothing was dropped");
    assert_eq!(refusals["customers_left"], 3, "nothing was deleted");

    // A refusal inside BEGIN ...: the transaction is failed, COMMIT rolls it back.
    let tx = section(&r, "transaction");
    assert_eq!(tx["seen_in_tx"], 1, "{tx}");
    assert_refused(&tx["error"], "DROP TABLE in a transaction");
    assert_eq!(tx["next_in_tx"]["code"], "25P02", "{tx}");
    assert_eq!(tx["commit"], "ROLLBACK", "{tx}");
    assert_eq!(tx["rows_after"], 0, "{tx}");
    assert_eq!(tx["usable_after"], true, "{tx}");
    assert_eq!(tx["committed"], 1, "{tx}");

    // COPY FROM STDIN (pg-copy-streams): a developer into orders; an agent
    // into customers is refused and nothing lands; an agent into orders passes.
    let copy_in = section(&r, "copy_in");
    assert_eq!(copy_in["developer_rowcount"], 3, "{copy_in}");
    assert_eq!(copy_in["developer_copied"], 3, "{copy_in}");
    assert_eq!(copy_in["developer_usable"], true, "{copy_in}");
    assert_refused(&copy_in["agent_refused"], "an agent's COPY customers FROM STDIN");
    assert_eq!(copy_in["agent_customers_delta"], 0, "{copy_in}");
    assert_eq!(copy_in["agent_usable"], true, "{copy_in}");
    assert_eq!(copy_in["agent_orders_copied"], 1, "{copy_in}");

    // COPY TO STDOUT: text masked line by line, binary row by row.
    let copy_out = section(&r, "copy_out");
    assert_eq!(
        copy_out["text"],
        "1\t****6789\tprefers e-mail\n2\t****7890\tcard on file: ****1881\n3\t****8901\tVIP since 2019\n"
    );
    assert_eq!(copy_out["table"], "1\t****@example.com\n2\t****@example.org\n3\t****@example.net\n");
    assert_eq!(copy_out["binary"], json!([[1, "****6789"], [2, "****7890"], [3, "****8901"]]), "{copy_out}");
    assert_eq!(copy_out["usable_after"], true);

    // pii-readers see the SSN; the e-mail mask has no exemption.
    let reader = section(&r, "reader");
    assert_eq!(reader["rows"][0], json!([1, "Alice Martin", "****@example.com", "123-45-6789"]));
    assert_eq!(reader["ssn_param"], "123-45-6789");
}
