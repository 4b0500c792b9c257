//! The gateway through psycopg 3 (from PyPI, in the virtualenv that
//! `scripts/python-deps` makes): allowed queries unchanged, refusals as
//! 42501 with the connection still usable, masked values decodable in text
//! and binary, server-side prepared statements, pipelines, COPY both ways.
//! The checks run in `tests/python/psycopg_client.py`, which prints what it
//! saw as JSON; the assertions are here.
//!
//! `PORTCULLIS_SKIP_PYTHON=1` skips these tests (and says so) where PyPI
//! cannot be reached; otherwise a failed install fails the test.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Command;
use std::sync::OnceLock;

use portcullis_testkit::process::json_output;
use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::stack::Stack;
use portcullis_testkit::{repo, text};
use serde_json::{json, Value};

/// The virtualenv's python, made once per test binary; `None` when skipped.
fn venv_python() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if std::env::var("PORTCULLIS_SKIP_PYTHON").is_ok_and(|v| v == "1") {
                return None;
            }
            let out = Command::new(repo("scripts/python-deps")).output().unwrap();
            assert!(
                out.status.success(),
                "scripts/python-deps failed (set PORTCULLIS_SKIP_PYTHON=1 to skip the psycopg tests):\n{}{}",
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

/// Runs the client against `stack` (only `sections` when not empty) and
/// returns its JSON; fails with its stderr when it failed.
fn run_client(stack: &Stack, python: &str, sections: &str) -> Value {
    run_client_with(stack, python, sections, "disable")
}

/// [`run_client`] with libpq's `sslmode`.
fn run_client_with(stack: &Stack, python: &str, sections: &str, sslmode: &str) -> Value {
    let conninfo = |token: String| stack.conninfo(&token).replace("sslmode=disable", &format!("sslmode={sslmode}"));
    let agent = conninfo(stack.token("alice", &["ai-agents"], None));
    let reader = conninfo(stack.token("rita", &["developers", "pii-readers"], None));
    let developer = conninfo(stack.token("dave", &["developers"], None));
    let out = Command::new(python)
        .arg(repo("crates/pg-proxy/tests/python/psycopg_client.py"))
        .args([&agent, &reader, &developer])
        .env("PSYCOPG_SECTIONS", sections)
        .output()
        .unwrap();
    json_output("psycopg_client.py", &out)
}

/// Asserts that `error` is a policy refusal (42501, InsufficientPrivilege).
#[track_caller]
fn assert_refused(error: &Value, what: &str) {
    assert_eq!(error["sqlstate"], "42501", "{what}: {error}");
    assert_eq!(error["class"], "InsufficientPrivilege", "{what}: {error}");
}

#[test]
fn psycopg_sessions() {
    let Some(python) = venv_python() else {
        eprintln!(
            "psycopg_sessions: SKIPPED because PORTCULLIS_SKIP_PYTHON=1 (psycopg not installed, nothing checked)"
        );
        return;
    };
    let stack = Stack::start();
    let r = run_client(&stack, python, "");
    eprintln!("psycopg {} ({}), libpq {}", r["versions"]["psycopg"], r["versions"]["impl"], r["versions"]["libpq"]);
    assert!(r["versions"]["psycopg"].as_str().unwrap().starts_with("3."), "{}", r["versions"]);

    // (a) An allowed read: masks applied, other values unchanged, both protocols.
    let read = &r["read"];
    let masked = json!([
        [1, "Alice Martin", "****@example.com", "****6789"],
        [2, "Bob Chen", "****@example.org", "****7890"],
        [3, "Carol Diaz", "****@example.net", "****8901"],
    ]);
    assert_eq!(read["simple"], masked, "simple query protocol");
    assert_eq!(read["extended"], masked, "extended query protocol");
    assert_eq!(read["columns"], json!([["id", 23], ["name", 25], ["email", 25], ["ssn", 25]]));
    assert_eq!(read["notes"][0], json!([1, "****1111", "prefers e-mail"]), "card detector");
    assert_eq!(read["notes"][1], json!([2, "****0004", "card on file: ****1881"]), "only the span is replaced");
    assert_eq!(
        read["order_1"],
        json!({"total": "1.99", "total_type": "Decimal", "created_at": "2024-01-15T10:30:00+00:00"})
    );

    // (b) Server-side binding: named prepared statements really exist on the server.
    let bind = &r["bind"];
    assert_eq!(bind["prepare_true"], json!(["****7890", "****7890", "****7890", "****7890"]));
    assert_eq!(bind["prepared_by_psycopg"], json!(["_pg3_0"]));
    assert_eq!(bind["server_prepared"], json!([["_pg3_0", "SELECT ssn FROM customers WHERE id = $1"]]));
    assert_eq!(bind["prepare_threshold"], 5);
    assert_eq!(
        bind["threshold_values"],
        json!(["****6789", "****7890", "****8901", "****6789", "****7890", "****8901", "****6789", "****7890"])
    );
    assert_eq!(bind["threshold_server_prepared"], 1, "prepared after prepare_threshold executions");
    // Binary results: masked text decodes, other types intact.
    assert_eq!(bind["binary_rows"], Value::Array(vec![json!([2, "****7890", "****@example.org", "Bob Chen"]); 3]));
    assert_eq!(bind["binary_formats"], json!([1, 1, 1, 1]));
    assert_eq!(
        bind["binary_order_1"],
        json!({"total": "1.99", "created_at": "2024-01-15T10:30:00+00:00", "customer_id": 2})
    );
    assert_eq!(bind["binary_param"], "****8901");
    assert_refused(&bind["refused_prepared"], "DROP TABLE with prepare=True");
    assert!(bind["refused_prepared"]["message"].as_str().unwrap().contains("rule no-ddl-for-agents"));
    assert_refused(&bind["refused_prepared_param"], "DELETE FROM customers with prepare=True");
    assert_eq!(bind["after_refusal"], json!([2, "****7890", "****@example.org", "Bob Chen"]));
    assert_eq!(bind["status_after"], "IDLE");

    // Pipeline mode: executemany, and a refusal in the middle of a pipeline
    // behaves as a PostgreSQL error does there (the next statement is skipped).
    let pipeline = &r["pipeline"];
    assert_eq!(pipeline["inserted"], 3, "{pipeline}");
    let explicit = &pipeline["explicit"];
    assert_refused(&explicit["sync"], "the refused statement of a pipeline");
    assert_eq!(explicit["first"], "****6789", "{explicit}");
    assert_eq!(explicit["second"]["class"], "ProgrammingError", "{explicit}");
    assert_eq!(explicit["third"]["class"], "ProgrammingError", "skipped after the error: {explicit}");
    assert_eq!(explicit["after_sync"], "****7890", "{explicit}");
    assert!(explicit.get("pipeline_error").is_none(), "{explicit}");
    // A server error fetched (after a Flush) before the rest of the pipeline
    // was sent: the rest is skipped by the server, and the session goes on.
    let early = &pipeline["failed_early"];
    assert_eq!(early["first"]["sqlstate"], "42P01", "{early}");
    assert_eq!(early["sync"]["class"], "PipelineAborted", "{early}");
    assert_eq!(early["after_sync"], "****7890", "{early}");
    assert!(early.get("pipeline_error").is_none(), "{early}");
    assert_eq!(pipeline["usable_after"], true);

    // (c) Refusals: 42501, and the connection goes on.
    let refusals = &r["refusals"];
    assert_refused(&refusals["autocommit"], "DROP TABLE in autocommit");
    assert_eq!(refusals["autocommit_status"], "IDLE");
    assert_eq!(refusals["autocommit_usable"], true);
    assert_eq!(refusals["orders_exist"], 1, "nothing was dropped");
    assert_refused(&refusals["secrets"], "SELECT * FROM secrets");
    // In `with conn.transaction()`: the refusal fails the transaction as a
    // PostgreSQL error would (INERROR); nothing more runs in it, and the
    // exception leaving the block rolls it back.
    let tx = &refusals["transaction"];
    assert_eq!(tx["status_before_refusal"], "INTRANS", "{tx}");
    assert_refused(&tx["error"], "DROP TABLE in a transaction block");
    assert_eq!(tx["status_after_refusal"], "INERROR", "{tx}");
    assert_eq!(tx["rows_seen_in_tx"]["sqlstate"], "25P02", "{tx}");
    assert_eq!(tx["status_after_next_statement"], "INERROR", "{tx}");
    assert_eq!(tx["raised_out_of_block"], "42501", "{tx}");
    assert_eq!(tx["status_after_block"], "IDLE", "{tx}");
    assert_eq!(tx["rows_after_rollback"], 0, "the block was rolled back: {tx}");
    assert_eq!(tx["usable_after"], true, "{tx}");
    let savepoint = &refusals["savepoint"];
    assert_eq!(savepoint["error"], "42501", "{savepoint}");
    assert_eq!(savepoint["status_after_savepoint"], "INTRANS", "{savepoint}");
    assert_eq!(savepoint["committed_rows"], 2, "the outer block committed: {savepoint}");
    assert_eq!(savepoint["status_after"], "IDLE", "{savepoint}");
    let ext = &refusals["extended_in_transaction"];
    assert_refused(&ext["error"], "DELETE with a parameter in a transaction");
    assert_eq!(ext["status_after_refusal"], "INERROR", "{ext}");
    assert_eq!(ext["next"]["sqlstate"], "25P02", "{ext}");
    assert_eq!(ext["status_after"], "IDLE", "{ext}");
    let implicit = &refusals["implicit_transaction"];
    assert_refused(&implicit["error"], "DROP TABLE without autocommit");
    assert_eq!(implicit["status_after_refusal"], "INERROR", "{implicit}");
    assert_eq!(implicit["status_after_rollback"], "IDLE", "{implicit}");
    assert_eq!(implicit["usable"], true, "{implicit}");

    // (d) COPY TO STDOUT, text format: masked line by line, detector included.
    let copy_out = &r["copy_out"];
    let copied = json!([
        ["1", "****6789", "prefers e-mail"],
        ["2", "****7890", "card on file: ****1881"],
        ["3", "****8901", "VIP since 2019"],
    ]);
    assert_eq!(copy_out["text_rows"], copied);
    assert_eq!(copy_out["text_rowcount"], 3);
    assert_eq!(
        copy_out["typed_rows"],
        json!([
            [1, "****6789", "prefers e-mail"],
            [2, "****7890", "card on file: ****1881"],
            [3, "****8901", "VIP since 2019"],
        ])
    );
    assert_eq!(
        copy_out["whole_table"][1],
        json!(["2", "Bob Chen", "****@example.org", "****7890", "****0004", "card on file: ****1881"])
    );
    assert_eq!(copy_out["whole_table"].as_array().unwrap().len(), 3);
    // Binary COPY is masked row by row, decoded by psycopg, and the session goes on.
    assert_eq!(copy_out["binary_error"], Value::Null, "{copy_out}");
    assert_eq!(copy_out["binary_rows"], json!([[1, "****6789"], [2, "****7890"], [3, "****8901"]]));
    assert_eq!(
        copy_out["binary_table"][1],
        json!([2, "Bob Chen", "****@example.org", "****7890", "****0004", "card on file: ****1881"])
    );
    assert_eq!(copy_out["binary_status_after"], "IDLE");
    assert_eq!(copy_out["binary_usable_after"], true);
    assert_eq!(copy_out["usable_after"], true);

    // COPY FROM STDIN: a developer writes orders (text and binary); an agent
    // into customers is refused and nothing lands; an agent into orders passes.
    let copy_in = &r["copy_in"];
    assert_eq!(copy_in["developer_rowcount"], 3, "{copy_in}");
    assert_eq!(copy_in["developer_copied"], 3, "{copy_in}");
    assert_eq!(copy_in["developer_total_delta"], 3, "{copy_in}");
    assert_eq!(copy_in["developer_binary_copied"], 1, "{copy_in}");
    assert_refused(&copy_in["agent_error"], "an agent's COPY customers FROM STDIN");
    assert_eq!(copy_in["agent_status_after"], "IDLE", "{copy_in}");
    assert_eq!(copy_in["agent_customers_delta"], 0, "{copy_in}");
    assert_eq!(copy_in["agent_mallory"], 0, "{copy_in}");
    assert_eq!(copy_in["agent_orders_copied"], 1, "{copy_in}");

    // (e) pii-readers see the SSN (text, binary, COPY); the e-mail mask has no exemption.
    let reader = &r["reader"];
    assert_eq!(reader["rows"][0], json!([1, "Alice Martin", "****@example.com", "123-45-6789"]));
    assert_eq!(reader["binary_ssn"], "123-45-6789");
    assert_eq!(reader["copy_rows"][0], json!(["1", "123-45-6789"]));

    // cancel_safe() over plain TCP: relayed to the server's backend.
    assert_cancelled(&r["cancel"], false);
}

/// Asserts what the `cancel` section saw: `pg_sleep(30)` ended by the
/// cancel with 57014, `cancel_safe()` raised nothing, the connection goes on.
#[track_caller]
fn assert_cancelled(cancel: &Value, tls: bool) {
    assert_eq!(cancel["ssl_in_use"], tls, "{cancel}");
    assert_eq!(cancel["cancel_safe"], Value::Null, "cancel_safe() raised: {cancel}");
    assert_eq!(cancel["query"]["sqlstate"], "57014", "{cancel}");
    assert_eq!(cancel["query"]["class"], "QueryCanceled", "{cancel}");
    assert!(cancel["seconds"].as_f64().unwrap() < 20.0, "the query was not cut short: {cancel}");
    assert_eq!(cancel["usable_after"], true, "{cancel}");
}

/// psycopg's `cancel_safe()` on a TLS connection: libpq 17 and later send
/// the cancel request over TLS as well, and wait for the server to close
/// that connection. The gateway closes it as PostgreSQL does, with TLS's
/// close_notify; a bare TCP close made libpq report an SSL error ("unexpected
/// eof while reading") although the cancel had worked.
#[test]
fn psycopg_cancel_safe_over_tls() {
    let Some(python) = venv_python() else {
        eprintln!("psycopg_cancel_safe_over_tls: SKIPPED because PORTCULLIS_SKIP_PYTHON=1");
        return;
    };
    let dir = ScratchDir::new("psycopg-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let extra =
        format!("[tls]\ncert = {:?}\nkey = {:?}", cert_path.display().to_string(), key_path.display().to_string());
    let stack = Stack::with(&std::fs::read_to_string(repo("examples/policy.toml")).unwrap(), &extra);
    let r = run_client_with(&stack, python, "versions,cancel", "require");
    let libpq = r["versions"]["libpq"].as_i64().unwrap();
    assert!(libpq >= 170_000, "cancel_safe() sends its cancel request over TLS from libpq 17 on; this is {libpq}");
    assert_cancelled(&r["cancel"], true);
}

/// COPY TO STDOUT in CSV, in the text format with options (another
/// delimiter, a header line) and in binary format: with something to mask
/// (the ssn mask, the card detector) the gateway masks CSV field by field
/// (Python's csv module reads it back) and binary row by row, and refuses
/// text-format options, with a message that says which option to drop;
/// nothing leaks, and the session goes on.
#[test]
fn psycopg_copy_out_in_other_layouts_is_masked_or_refused() {
    let Some(python) = venv_python() else {
        eprintln!("psycopg_copy_out_in_other_layouts: SKIPPED because PORTCULLIS_SKIP_PYTHON=1");
        return;
    };
    let stack = Stack::start();
    let r = run_client(&stack, python, "copy_out");
    let copy_out = &r["copy_out"];
    // CSV is masked: the ssn mask and the card detector, field by field.
    let data = copy_out["csv"].as_str().unwrap_or_else(|| panic!("CSV refused: {copy_out}"));
    assert_eq!(data, "1,****6789,prefers e-mail\n2,****7890,card on file: ****1881\n3,****8901,VIP since 2019\n");
    let rows = &copy_out["csv_rows"];
    assert_eq!(
        rows,
        &json!([
            ["id", "ssn", "note"],
            ["1", "****6789", "prefers e-mail"],
            ["2", "****7890", "card on file: ****1881"],
            ["3", "****8901", "VIP since 2019"]
        ]),
        "{copy_out}"
    );
    // Text-format options the lines cannot be read under: refused by name.
    for (key, option) in [("delimiter", "DELIMITER"), ("text_header", "HEADER")] {
        assert_refused(&copy_out[key], key);
        let message = copy_out[key]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("drop the {option} option")), "{key}: {message}");
    }
    // Binary COPY under a detector: numbers hold no text to scan, and pass.
    assert_eq!(copy_out["binary_plain_error"], Value::Null, "{copy_out}");
    assert_eq!(copy_out["binary_plain_rows"], json!([[1, "1.99"], [2, "2.99"], [3, "3.99"]]));
    assert_eq!(copy_out["usable_after"], true);
}
