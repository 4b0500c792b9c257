//! The gateway through asyncpg (from PyPI, in the virtualenv that
//! `scripts/python-deps` makes): the token as password, allowed reads with
//! masked values decoded from binary results, refusals as 42501 with the
//! connection still usable, `conn.prepare` and cached named statements,
//! `executemany`, a refusal inside a transaction, COPY TO
//! (`copy_from_query`, `copy_from_table`: text, CSV and binary), binary COPY FROM
//! (`copy_records_to_table`, whose data asyncpg sends without waiting for
//! CopyInResponse), and a startup `search_path` (`server_settings`) that
//! statements such as `RESET search_path` or `DISCARD ALL` bring back.
//! The checks run in `tests/python/asyncpg_client.py`, which prints what it
//! saw as JSON (each section under a 20 s `asyncio.wait_for`); the
//! assertions are here.
//!
//! `PORTCULLIS_SKIP_PYTHON=1` skips these tests (and says so) where PyPI
//! cannot be reached; otherwise a failed install fails the test.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_testkit::process::{json_output, output_within};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::{repo, text};
use serde_json::{json, Value};

/// How long one run of the client may take before the test fails (each of
/// its sections has its own 20 s limit inside).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// How long `scripts/python-deps` may take (a first install downloads wheels).
const INSTALL_DEADLINE: Duration = Duration::from_secs(600);

/// The virtualenv's python, made once per test binary; `None` when skipped.
fn venv_python() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if std::env::var("PORTCULLIS_SKIP_PYTHON").is_ok_and(|v| v == "1") {
                return None;
            }
            let out = output_within(&mut Command::new(repo("scripts/python-deps")), INSTALL_DEADLINE)
                .unwrap_or_else(|e| panic!("scripts/python-deps: {e}"));
            assert!(
                out.status.success(),
                "scripts/python-deps failed (set PORTCULLIS_SKIP_PYTHON=1 to skip the asyncpg tests):\n{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            let stdout = text(&out.stdout);
            let python = stdout.lines().last().expect("python-deps prints the venv's python last").trim().to_string();
            assert!(std::path::Path::new(&python).exists(), "python-deps printed {python:?}");
            Some(python)
        })
        .as_deref()
}

/// The stack with examples/policy.toml, plus a schema `private` (owned by
/// `app`, the gateway's upstream role, so the server itself would let the
/// session read it) holding a `customers` of two rows that no rule allows.
fn start_stack() -> Stack {
    Stack::builder()
        .setup_sql(
            "CREATE SCHEMA private; \
             CREATE TABLE private.customers (id int PRIMARY KEY, secret text NOT NULL); \
             INSERT INTO private.customers VALUES (101, 'PRIVATE-ONE'), (102, 'PRIVATE-TWO');",
        )
        .start()
}

/// Runs the client against `stack` with `env` (ASYNCPG_SECTIONS, ASYNCPG_CASES)
/// and returns its JSON; fails with its stderr when it failed or overran
/// [`CLIENT_DEADLINE`].
fn run_client(stack: &Stack, python: &str, env: &[(&str, &str)]) -> Value {
    let args = json!({
        "host": "127.0.0.1",
        "port": stack.addr.port(),
        "database": "app",
        "agent": stack.token("alice", &["ai-agents"], None),
        "reader": stack.token("rita", &["developers", "pii-readers"], None),
        "developer": stack.token("dave", &["developers"], None),
    });
    let out = output_within(
        Command::new(python)
            .arg(repo("crates/pg-proxy/tests/python/asyncpg_client.py"))
            .arg(args.to_string())
            .envs(env.iter().copied()),
        CLIENT_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("asyncpg_client.py: {e}"));
    json_output("asyncpg_client.py", &out)
}

/// Fails when a section of the client timed out, naming it.
#[track_caller]
fn section<'a>(r: &'a Value, name: &str) -> &'a Value {
    let s = &r[name];
    assert!(!s.is_null(), "the client printed no section {name}: {r}");
    assert!(
        s.get("timeout").is_none(),
        "asyncpg section {name}: {} — the gateway stopped answering\n{s}",
        s["timeout"]
    );
    s
}

/// Asserts that `error` is a policy refusal (42501, InsufficientPrivilegeError).
#[track_caller]
fn assert_refused(error: &Value, what: &str) {
    assert_eq!(error["sqlstate"], "42501", "{what}: {error}");
    assert_eq!(error["class"], "InsufficientPrivilegeError", "{what}: {error}");
}

/// Asserts that `error` is a refusal by a rule or the default (not, say, a
/// COPY format the gateway cannot mask).
#[track_caller]
fn assert_refused_by_policy(error: &Value, what: &str) {
    assert_refused(error, what);
    assert!(error["message"].as_str().unwrap_or_default().starts_with("refused by policy"), "{what}: {error}");
}

#[test]
fn asyncpg_sessions() {
    let Some(python) = venv_python() else {
        eprintln!(
            "asyncpg_sessions: SKIPPED because PORTCULLIS_SKIP_PYTHON=1 (asyncpg not installed, nothing checked)"
        );
        return;
    };
    let stack = start_stack();
    let r = run_client(&stack, python, &[]);
    eprintln!("asyncpg {}, server {}", r["versions"]["asyncpg"], r["versions"]["server_major"]);
    assert!(r["versions"]["asyncpg"].as_str().unwrap().starts_with("0."), "{}", r["versions"]);

    // An allowed read (extended protocol, binary results): masks applied,
    // masked text decodes, other types intact.
    let read = section(&r, "read");
    assert_eq!(
        read["fetch"],
        json!([
            [1, "Alice Martin", "****@example.com", "****6789"],
            [2, "Bob Chen", "****@example.org", "****7890"],
            [3, "Carol Diaz", "****@example.net", "****8901"],
        ])
    );
    assert_eq!(read["notes"][0], json!([1, "****1111", "prefers e-mail"]), "card detector");
    assert_eq!(read["notes"][1], json!([2, "****0004", "card on file: ****1881"]), "only the span is replaced");
    assert_eq!(
        read["order_1"],
        json!({"total": "1.99", "total_type": "Decimal", "created_at": "2024-01-15T10:30:00+00:00", "customer_id": 2})
    );
    assert_eq!(read["count"], 5000);
    assert_eq!(read["simple_status"], "SELECT 3");

    // Refusals: 42501 through both protocols, and the connection goes on.
    let refusals = section(&r, "refusals");
    assert_refused_by_policy(&refusals["drop_simple"], "DROP TABLE (simple protocol)");
    assert!(refusals["drop_simple"]["message"].as_str().unwrap().contains("no-ddl-for-agents"), "{refusals}");
    assert_eq!(refusals["usable_after_simple"], true);
    assert_refused_by_policy(&refusals["secrets_extended"], "SELECT * FROM secrets (extended protocol)");
    assert_eq!(refusals["usable_after_extended"], true);
    assert_refused_by_policy(&refusals["delete_with_arg"], "DELETE FROM customers with an argument");
    assert_eq!(refusals["in_transaction_after"], false);
    assert_eq!(refusals["orders_exist"], 1, "nothing was dropped");
    assert_eq!(refusals["customers_left"], 3, "nothing was deleted");

    // Prepared statements: parameters typed by the server, binary results
    // masked, named statements kept on the server and run again.
    let prepared = section(&r, "prepared");
    assert_eq!(prepared["parameters"], json!(["int4"]));
    assert_eq!(prepared["attributes"], json!([["id", "int4"], ["ssn", "text"], ["email", "text"], ["name", "text"]]));
    assert_eq!(
        prepared["rows"],
        json!([
            [1, "****6789", "****@example.com", "Alice Martin"],
            [2, "****7890", "****@example.org", "Bob Chen"],
            [3, "****8901", "****@example.net", "Carol Diaz"],
        ])
    );
    assert_eq!(prepared["again"], "****7890");
    assert_eq!(
        prepared["cached_values"],
        json!(["****6789", "****7890", "****8901", "****6789", "****7890", "****8901"])
    );
    assert_eq!(prepared["names_on_server"], 1, "conn.prepare made a named statement on the server: {prepared}");
    let on_server = prepared["server_prepared"].as_array().unwrap();
    assert!(
        on_server.iter().any(|s| s == "SELECT ssn FROM customers WHERE id = $1"),
        "fetch() with arguments kept a named statement: {prepared}"
    );
    assert_eq!(prepared["executemany_inserted"], 3, "{prepared}");
    assert_refused_by_policy(&prepared["refused_prepare"], "conn.prepare('DROP TABLE orders')");
    assert_refused_by_policy(&prepared["refused_fetch_arg"], "SELECT FROM secrets with an argument");
    assert_eq!(prepared["after_refusal"], json!([2, "****7890", "****@example.org", "Bob Chen"]));

    // pii-readers: the SSN in clear, binary and COPY; the e-mail mask has no exemption.
    let reader = section(&r, "reader");
    assert_eq!(reader["rows"][0], json!([1, "Alice Martin", "****@example.com", "123-45-6789"]));
    assert_eq!(reader["ssn_arg"], "123-45-6789");
    assert_eq!(reader["copy"], "1\t123-45-6789\n2\t234-56-7890\n3\t345-67-8901\n");

    // A refusal inside `async with conn.transaction()`: the transaction is
    // failed as after any error, the refusal leaves the block, it rolls back.
    let tx = section(&r, "transaction");
    assert_eq!(tx["in_transaction"], true, "{tx}");
    assert_eq!(tx["seen_in_tx"], 1, "{tx}");
    assert_refused_by_policy(&tx["error"], "DROP TABLE in a transaction");
    assert_eq!(tx["next_in_tx"]["sqlstate"], "25P02", "{tx}");
    assert_eq!(tx["raised_out_of_block"], "42501", "{tx}");
    assert_eq!(tx["in_transaction_after"], false, "{tx}");
    assert_eq!(tx["rows_after_rollback"], 0, "the block was rolled back: {tx}");
    assert_eq!(tx["usable_after"], true, "{tx}");
    assert_eq!(tx["savepoint_error"], "42501", "{tx}");
    assert_eq!(tx["savepoint_committed"], 2, "the outer block committed: {tx}");
    assert_eq!(tx["in_transaction_end"], false, "{tx}");

    // COPY TO STDOUT (text): masked line by line.
    let copy_out = section(&r, "copy_out");
    assert_eq!(
        copy_out["query"],
        "1\t****6789\tprefers e-mail\n2\t****7890\tcard on file: ****1881\n3\t****8901\tVIP since 2019\n"
    );
    assert_eq!(copy_out["query_status"], "COPY 3");
    assert_eq!(copy_out["query_arg"], "2\t****7890\n");
    assert_eq!(
        copy_out["table"],
        "1\tAlice Martin\t****@example.com\t****6789\n2\tBob Chen\t****@example.org\t****7890\n\
         3\tCarol Diaz\t****@example.net\t****8901\n"
    );
    assert_eq!(copy_out["table_status"], "COPY 3");
    // Binary: masked row by row; a plain text column keeps its masked
    // text, a computed one (of a type the gateway does not know) is NULL.
    assert_eq!(copy_out["binary_query_error"], Value::Null, "{copy_out}");
    assert_eq!(
        copy_out["binary_query"],
        json!([[1, "****6789", null], [2, "****7890", null], [3, "****8901", null]]),
        "{copy_out}"
    );
    assert_eq!(copy_out["binary_table_status"], "COPY 3");
    assert_eq!(
        copy_out["binary_table"],
        json!([
            [1, "****@example.com", "****6789"],
            [2, "****@example.org", "****7890"],
            [3, "****@example.net", "****8901"]
        ]),
        "{copy_out}"
    );
    assert_eq!(copy_out["csv_status"], "COPY 3");
    assert_eq!(
        copy_out["csv_rows"],
        json!([
            ["id", "ssn", "note"],
            ["1", "****6789", "prefers e-mail"],
            ["2", "****7890", "card on file: ****1881"],
            ["3", "****8901", "VIP since 2019"]
        ])
    );
    assert_eq!(copy_out["usable_after"], true);

    // A startup search_path (server_settings) is the session's: unqualified
    // names resolve in `private`, which no rule allows.
    let sp = section(&r, "search_path");
    assert_eq!(sp["show"], "\"private\"", "{sp}");
    assert_refused_by_policy(&sp["plain_extended"], "SELECT * FROM customers with search_path=private (extended)");
    assert_refused_by_policy(&sp["plain_simple"], "SELECT * FROM customers with search_path=private (simple)");
    assert_refused_by_policy(&sp["qualified_private"], "SELECT * FROM private.customers");
    assert_eq!(sp["qualified_public"], json!([[1, "****6789"], [2, "****7890"], [3, "****8901"]]));
    assert_eq!(sp["usable_after"], true);
    assert_eq!(sp["default_show"], "\"public\"", "the policy's search_path: {sp}");
    assert_eq!(sp["default_count"], 3, "{sp}");
}

/// A parameter of a type asyncpg has no built-in codec for (`int[]`):
/// asyncpg looks the type up in `pg_type` with a recursive query first.
/// The engine traces that query's columns to the catalog, so a caller any
/// mask applies to still reads them unmasked, and the statement runs (it
/// once failed in the client, reading `[redacted]` where OIDs belong).
#[test]
fn asyncpg_array_parameter_needs_type_introspection() {
    let Some(python) = venv_python() else {
        eprintln!("asyncpg_array_parameter_needs_type_introspection: SKIPPED because PORTCULLIS_SKIP_PYTHON=1");
        return;
    };
    let stack = start_stack();
    let r = run_client(&stack, python, &[("ASYNCPG_SECTIONS", "introspection")]);
    let s = section(&r, "introspection");
    assert_eq!(s["array_arg"], json!([[1, "****6789"], [3, "****8901"]]), "an int[] parameter: {s}");
    assert_eq!(s["array_result"], json!([2, 3]), "an int[] result: {s}");
    assert_eq!(s["usable_after"], true, "{s}");
}

/// asyncpg's `copy_records_to_table` sends `COPY ... FROM STDIN (FORMAT
/// binary)`, its data and CopyDone in one go, without waiting for
/// CopyInResponse. The rows must land, and a COPY into a table the agent
/// may not write must be refused with the session going on.
#[test]
fn asyncpg_binary_copy_records_to_table() {
    let Some(python) = venv_python() else {
        eprintln!("asyncpg_binary_copy_records_to_table: SKIPPED because PORTCULLIS_SKIP_PYTHON=1");
        return;
    };
    let stack = start_stack();
    let r = run_client(&stack, python, &[("ASYNCPG_SECTIONS", "copy_in")]);
    let copy_in = section(&r, "copy_in");
    assert!(
        copy_in["status"].get("timeout").is_none(),
        "copy_records_to_table hung: {} (the gateway did not answer the early COPY data)\n{copy_in}",
        copy_in["status"]["timeout"]
    );
    assert_eq!(copy_in["status"], "COPY 3", "{copy_in}");
    assert_eq!(copy_in["copied"], 3, "{copy_in}");
    assert_eq!(copy_in["totals"], json!(["10.50", "20.00", "30.25"]), "{copy_in}");
    assert_refused(&copy_in["customers_refused"], "an agent's binary COPY into customers");
    assert_eq!(copy_in["mallory"], 0, "{copy_in}");
    assert_eq!(copy_in["usable_after"], true, "{copy_in}");
}

/// One way back to the startup `search_path=private`, then an unqualified
/// read: the gateway must resolve `customers` as the server will
/// (`private.customers`) and refuse it.
fn search_path_case(case: &str) {
    let Some(python) = venv_python() else {
        eprintln!("asyncpg search_path case {case}: SKIPPED because PORTCULLIS_SKIP_PYTHON=1");
        return;
    };
    let stack = start_stack();
    let r = run_client(&stack, python, &[("ASYNCPG_SECTIONS", "search_path_cases"), ("ASYNCPG_CASES", case)]);
    let c = &section(&r, "search_path_cases")[case];
    eprintln!("search_path case {case}: {c}");
    let steps = c["steps"].as_array().unwrap_or_else(|| panic!("case {case}: {r}"));
    for step in steps {
        let leaked = step["status"] == "SELECT 2"
            || step["rows"].as_array().is_some_and(|rows| rows.iter().any(|row| row.to_string().contains("PRIVATE")));
        assert!(!leaked, "case {case}: the server read private.customers through the gateway at {}\n{c}", step["sql"]);
    }
    let select = steps
        .iter()
        .find(|s| s["sql"].as_str().unwrap().contains("SELECT * FROM customers"))
        .unwrap_or_else(|| panic!("case {case}: no SELECT step: {c}"));
    assert!(
        !select["error"].is_null(),
        "case {case}: {} was not refused, and the server resolves customers to private.customers\n{c}",
        select["sql"]
    );
    assert_refused_by_policy(&select["error"], &format!("case {case}: {}", select["sql"]));
    assert_eq!(c["usable_after"], true, "case {case}: {c}");
}

#[test]
fn asyncpg_search_path_reset_then_read_is_refused() {
    search_path_case("reset");
}

#[test]
fn asyncpg_search_path_set_default_then_read_is_refused() {
    search_path_case("set_default");
}

/// `RESET ALL` is refused to agents (class admin, rule no-ddl-for-agents),
/// so the string is refused whole.
#[test]
fn asyncpg_search_path_reset_all_then_read_is_refused() {
    search_path_case("reset_all");
}

#[test]
fn asyncpg_search_path_discard_all_then_read_is_refused() {
    search_path_case("discard_all");
}

/// Statement by statement: the gateway reads the setting back after the `SET LOCAL`.
#[test]
fn asyncpg_search_path_set_local_default_then_read_is_refused() {
    search_path_case("set_local_default");
}

#[test]
fn asyncpg_search_path_set_local_default_in_one_string_then_read_is_refused() {
    search_path_case("set_local_default_one_string");
}

#[test]
fn asyncpg_search_path_set_then_reset_then_read_is_refused() {
    search_path_case("set_then_reset");
}
