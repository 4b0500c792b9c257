//! The gateway through pgjdbc, the PostgreSQL JDBC driver (Debian's
//! `libpostgresql-jdbc-java`, `/usr/share/java/postgresql.jar`, installed
//! by `scripts/install-deps`): `tests/java/JdbcClient.java` is compiled
//! with javac into the target directory and run with java. It connects
//! with the token as the password in the URL, reads (masked values), runs a
//! PreparedStatement 7 times (pgjdbc makes it a named server-side statement
//! after 5, with binary results), gets refusals as SQLException with
//! SQLState 42501 with the connection still usable, refuses inside a
//! transaction, runs batches (one holding a refusal), and copies with
//! `CopyManager.copyIn` / `copyOut`. The program prints what it saw as
//! JSON; the assertions are here.
//!
//! `PORTCULLIS_SKIP_JAVA=1` skips these tests (and says so) where java,
//! javac or the driver cannot be installed; otherwise their absence fails
//! the test. `PORTCULLIS_JDBC_JAR` names another driver jar.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_testkit::process::{json_output, output_within};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::{repo, text};
use serde_json::{json, Value};

/// How long compiling the client may take.
const COMPILE_DEADLINE: Duration = Duration::from_secs(180);

/// How long one run of the client may take before the test fails (each
/// connection also has a 20 s socket timeout inside).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// The driver jar and the directory of the compiled client, made once per
/// test binary; `None` when skipped.
fn compiled_client() -> Option<&'static (PathBuf, PathBuf)> {
    static CLIENT: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            if std::env::var("PORTCULLIS_SKIP_JAVA").is_ok_and(|v| v == "1") {
                return None;
            }
            let jar = PathBuf::from(
                std::env::var("PORTCULLIS_JDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".to_string()),
            );
            assert!(
                jar.exists(),
                "{} is missing: install libpostgresql-jdbc-java (scripts/install-deps), \
                 or set PORTCULLIS_SKIP_JAVA=1 to skip the pgjdbc tests",
                jar.display()
            );
            let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jdbc-client");
            std::fs::create_dir_all(&out_dir).unwrap();
            let out = output_within(
                Command::new("javac")
                    .args(["-encoding", "UTF-8", "-cp"])
                    .arg(&jar)
                    .arg("-d")
                    .arg(&out_dir)
                    .arg(repo("crates/pg-proxy/tests/java/JdbcClient.java")),
                COMPILE_DEADLINE,
            )
            .unwrap_or_else(|e| {
                panic!("javac: {e} (install a JDK: scripts/install-deps; or set PORTCULLIS_SKIP_JAVA=1 to skip)")
            });
            assert!(out.status.success(), "javac failed:\n{}{}", text(&out.stdout), text(&out.stderr));
            Some((jar, out_dir))
        })
        .as_ref()
}

/// Runs the client against `stack` (only `sections` when not empty) and
/// returns its JSON; fails with its stderr when it failed or overran.
fn run_client(stack: &Stack, jar: &std::path::Path, classes: &std::path::Path, sections: &str) -> Value {
    let classpath = std::env::join_paths([classes, jar]).unwrap();
    let out = output_within(
        Command::new("java")
            .arg("-cp")
            .arg(classpath)
            .arg("JdbcClient")
            .arg("127.0.0.1")
            .arg(stack.addr.port().to_string())
            .arg(stack.token("alice", &["ai-agents"], None))
            .arg(stack.token("rita", &["developers", "pii-readers"], None))
            .arg(stack.token("dave", &["developers"], None))
            .env("JDBC_SECTIONS", sections),
        CLIENT_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("JdbcClient: {e}"));
    json_output("JdbcClient", &out)
}

/// Asserts that `error` is a policy refusal: SQLState 42501, a message that says so.
#[track_caller]
fn assert_refused(error: &Value, what: &str) {
    assert_eq!(error["sqlstate"], "42501", "{what}: {error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("refused by policy") || message.contains("needs approval"), "{what}: {error}");
}

#[test]
fn pgjdbc_sessions() {
    let Some((jar, classes)) = compiled_client() else {
        eprintln!("pgjdbc_sessions: SKIPPED because PORTCULLIS_SKIP_JAVA=1 (nothing checked)");
        return;
    };
    let stack = Stack::start();
    let r = run_client(&stack, jar, classes, "");
    let v = &r["versions"];
    eprintln!("pgjdbc {}, java {}, server {}", v["driver"], v["java"], v["server_major"]);
    assert!(v["driver"].as_str().unwrap().starts_with("42."), "{v}");

    // An allowed read: masks applied, other values and types unchanged.
    let read = &r["read"];
    assert_eq!(read["columns"], json!([["id", "int4"], ["name", "text"], ["email", "text"], ["ssn", "text"]]));
    assert_eq!(
        read["rows"],
        json!([
            [1, "Alice Martin", "****@example.com", "****6789"],
            [2, "Bob Chen", "****@example.org", "****7890"],
            [3, "Carol Diaz", "****@example.net", "****8901"],
        ])
    );
    assert_eq!(read["notes"][0], json!([1, "****1111", "prefers e-mail"]), "card detector");
    assert_eq!(read["notes"][1], json!([2, "****0004", "card on file: ****1881"]), "only the span is replaced");
    assert_eq!(read["order_1"], json!({"total": "1.99", "created_at": "2024-01-15T10:30:00Z"}));
    assert_eq!(read["count"], 5000);

    // A PreparedStatement run 7 times: server-side (named) after the
    // threshold, masked values all the way, binary results of other types intact.
    let prepared = &r["prepared"];
    assert_eq!(prepared["prepare_threshold"], 5);
    let expected: Vec<Value> = (0..7)
        .map(|i| match i % 3 {
            0 => json!([1, "****6789", "****@example.com", "Alice Martin"]),
            1 => json!([2, "****7890", "****@example.org", "Bob Chen"]),
            _ => json!([3, "****8901", "****@example.net", "Carol Diaz"]),
        })
        .collect();
    assert_eq!(prepared["values"], Value::Array(expected));
    assert_eq!(prepared["server_side"][6], true, "pgjdbc switched to a server-side statement: {prepared}");
    assert!(
        prepared["server_prepared"]
            .as_array()
            .unwrap()
            .contains(&json!(["SELECT id, ssn, email, name FROM customers WHERE id = $1"])),
        "the named statement exists on the server: {prepared}"
    );
    assert_eq!(
        prepared["orders"],
        Value::Array(vec![json!([1, 2, "1.99", "2024-01-15T10:30:00Z"]); 7]),
        "numeric and timestamptz through text and binary results"
    );

    // Refusals: SQLException with SQLState 42501; the connection goes on.
    let refusals = &r["refusals"];
    assert_refused(&refusals["drop"], "DROP TABLE");
    assert!(refusals["drop"]["message"].as_str().unwrap().contains("no-ddl-for-agents"), "{refusals}");
    assert_eq!(refusals["usable_after_drop"], true);
    assert_refused(&refusals["secrets"], "SELECT * FROM secrets");
    assert_refused(&refusals["delete_param"], "DELETE FROM customers WHERE id = ?");
    assert_eq!(refusals["usable_after_param"], true);
    assert_eq!(refusals["orders_exist"], 1, "nothing was dropped");
    assert_eq!(refusals["customers_left"], 3, "nothing was deleted");

    // Autocommit off: the refusal fails the transaction; rollback, then a commit.
    let tx = &r["transaction"];
    assert_eq!(tx["seen_in_tx"], 1, "{tx}");
    assert_refused(&tx["error"], "DROP TABLE in a transaction");
    assert_eq!(tx["next_in_tx"]["sqlstate"], "25P02", "{tx}");
    assert_eq!(tx["rows_after_rollback"], 0, "{tx}");
    assert_eq!(tx["committed"], 1, "{tx}");
    assert_eq!(tx["usable_after"], true, "{tx}");

    // Batches: a PreparedStatement batch lands; a batch holding a refusal
    // fails with it (pgjdbc sends the batch with one Sync: nothing lands).
    let batch = &r["batch"];
    assert_eq!(batch["counts"], json!([1, 1, 1]), "{batch}");
    assert_eq!(batch["inserted"], 3, "{batch}");
    assert_eq!(batch["refused_batch"]["class"], "BatchUpdateException", "{batch}");
    assert_refused(&batch["refused_batch"], "a batch holding DROP TABLE");
    assert_refused(&batch["refused_batch"]["next"], "the batch's next exception");
    assert_eq!(batch["refused_batch_rows"], 0, "{batch}");
    assert_eq!(batch["orders_exist"], 1, "{batch}");
    assert_eq!(batch["usable_after"], true, "{batch}");

    // CopyManager: a developer copies orders in; the agent copies out
    // (masked: text, CSV and binary), is refused copying into customers,
    // may copy into orders.
    let copy = &r["copy"];
    assert_eq!(copy["copy_in_rows"], 3, "{copy}");
    assert_eq!(copy["copy_in_landed"], 3, "{copy}");
    assert_eq!(copy["usable_after_copy_in"], true, "{copy}");
    assert_eq!(copy["copy_out_rows"], 3, "{copy}");
    assert_eq!(
        copy["copy_out"],
        "1\t****6789\tprefers e-mail\n2\t****7890\tcard on file: ****1881\n3\t****8901\tVIP since 2019\n"
    );
    assert_eq!(copy["copy_out_table"], "1\t****@example.com\n2\t****@example.org\n3\t****@example.net\n");
    assert_eq!(copy["copy_out_csv"], "id,ssn\n1,****6789\n2,****7890\n3,****8901\n");
    assert_eq!(copy["copy_out_binary_rows"], 3, "{copy}");
    assert_eq!(copy["copy_out_binary"], json!([[1, "****6789"], [2, "****7890"], [3, "****8901"]]), "{copy}");
    assert_refused(&copy["agent_copy_in_refused"], "an agent's COPY customers FROM STDIN");
    assert_eq!(copy["agent_customers_delta"], 0, "{copy}");
    assert_eq!(copy["agent_orders_copied"], 1, "{copy}");
    assert_eq!(copy["usable_after"], true, "{copy}");

    // pii-readers see the SSN, also through a server-side statement.
    let reader = &r["reader"];
    assert_eq!(reader["rows"][0], json!([1, "Alice Martin", "****@example.com", "123-45-6789"]));
    assert_eq!(reader["prepared"], Value::Array(vec![json!("123-45-6789"); 7]));
}
