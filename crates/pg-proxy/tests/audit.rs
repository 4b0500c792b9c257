//! The audit log through the running gateway: psql and tokio-postgres
//! sessions recorded (start, statements with their decisions, results,
//! end), verified, listed and replayed by `pg-proxy audit`; group commit
//! by durability; a full disk refusing statements and recording resuming
//! when space returns. Never in the log: tokens, the upstream password,
//! unmasked values.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use pg_proxy::cluster::ClusterOptions;
use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::stack::{Stack, APP_PASSWORD};
use serde_json::Value;
use tokio_postgres::error::SqlState;

/// A signing key and its verifier key in a fresh directory, removed with
/// the returned guard.
fn keys(name: &str) -> ScratchDir {
    portcullis_testkit::audit_keys!(&format!("audit-keys-{name}"))
}

fn pg_proxy_cmd() -> Command {
    portcullis_testkit::bin!()
}

fn audit_stack(keys: &Path, log: &Path, extra: &str) -> Stack {
    audit_stack_in(keys, log, "", extra)
}

/// `top` goes before `[audit]` (top-level keys such as `mode`).
fn audit_stack_in(keys: &Path, log: &Path, top: &str, extra: &str) -> Stack {
    let config = format!(
        "{top}\n[audit]\ndir = \"{}\"\nsigning_key_file = \"{}\"\ncheckpoint_interval = \"200ms\"\n{extra}\n",
        log.display(),
        keys.join("audit-key.pem").display()
    );
    Stack::builder().config(&config).start()
}

/// Waits until every session of the gateway has ended (its last records
/// handed to the log), rather than for a while.
async fn sessions_ended(stack: &Stack) {
    for _ in 0..400 {
        if stack.gateway.active_sessions() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("sessions still open after 20 s: {}", stack.gateway.active_sessions());
}

/// Every record of the log, as the tools read them (results carried in
/// statement records as records of their own).
fn records(log: &Path) -> Vec<Value> {
    pg_proxy::audit::read_records(log).unwrap()
}

/// Every record line of the log, as JSON, as it is written.
fn lines(log: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for (_, path) in portcullis_audit::writer::list_segments(log).unwrap() {
        let bytes = std::fs::read(path).unwrap();
        for line in std::str::from_utf8(portcullis_audit::segment::content(&bytes)).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v.get("seq").is_some() {
                out.push(v);
            }
        }
    }
    out
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status of order 2, read straight from the database (not through
/// the gateway).
fn order_status(stack: &Stack) -> String {
    let out = stack
        .program("psql")
        .args(["-X", "-At", "-d"])
        .arg(format!("host=127.0.0.1 port={} user=app dbname=app", stack.cluster.port()))
        .env("PGPASSWORD", APP_PASSWORD)
        .args(["-c", "SELECT status FROM orders WHERE id = 2"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The result record of `statement` (a statement record), if any.
fn result_of<'a>(all: &'a [Value], statement: &Value) -> Option<&'a Value> {
    all.iter().find(|r| r["type"] == "result" && r["session"] == statement["session"] && r["n"] == statement["n"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_recorded_verified_listed_and_replayed() {
    let keys = keys("e2e");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "record_parameters = true\nrecord_rows = 2");

    // psql, as an agent: a masked read, a refused DROP, a refused secret.
    let token = stack.token("alice@example.com", &["ai-agents"], Some("copilot-7"));
    let out = stack.psql(
        &token,
        &[
            "-c",
            "SELECT id, name, email, ssn FROM customers ORDER BY id",
            "-c",
            "DROP TABLE orders",
            "-c",
            "SELECT * FROM secrets",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("123-45-6789"), "{stdout}");

    // tokio-postgres, extended protocol with parameters, as a developer.
    let client = stack.connect_as("bob@example.com", &["developers"], None).await;
    let rows = client.query("SELECT id, total FROM orders WHERE id = $1", &[&7i32]).await.unwrap();
    assert_eq!(rows.len(), 1);
    client.execute("UPDATE orders SET status = 'checked' WHERE id = $1", &[&8i32]).await.unwrap();
    let e = client.query("SELECT * FROM secrets WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code()), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // A server error reaches the record as the client saw it.
    client.simple_query("SELECT 1/0").await.unwrap_err();
    // A prepared statement executed twice: one decision, recorded once.
    let prepared = client.prepare("SELECT status FROM orders WHERE id = $1").await.unwrap();
    for id in [3i32, 4] {
        client.query(&prepared, &[&id]).await.unwrap();
    }
    drop(client);

    // Closed as at shutdown (after the sessions' ends arrive).
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();

    // The developer's statements came one after the other: each carried
    // the result before it in its own record.
    let written = lines(&log);
    let carriers = written.iter().filter(|l| l["type"] == "statement" && l["results"].is_array()).count();
    assert!(carriers >= 4, "{written:#?}");
    let all = records(&log);
    assert_eq!(
        all.iter().filter(|r| r["type"] == "result").count(),
        written.iter().filter(|l| l["type"] == "result").count()
            + written.iter().filter_map(|l| l["results"].as_array()).map(Vec::len).sum::<usize>()
    );
    let kinds: Vec<&str> = all.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "session_start").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "session_end").count(), 2, "{kinds:?}");

    // The agent's session: identity, agent, client, then each statement
    // with its verdict, rule and policy digest, and its result.
    let start = all.iter().find(|r| r["type"] == "session_start" && r["subject"] == "alice@example.com").unwrap();
    assert_eq!(start["actor"], "copilot-7");
    assert_eq!(start["groups"], serde_json::json!(["ai-agents"]));
    assert_eq!(start["application"], "psql");
    assert_eq!(start["tls"], false);
    assert!(start["token"].as_str().unwrap().starts_with("sha256:"));
    assert!(start["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let session = start["session"].as_str().unwrap();
    let mine: Vec<&Value> = all.iter().filter(|r| r["session"] == session).collect();
    let statements: Vec<&&Value> = mine.iter().filter(|r| r["type"] == "statement").collect();
    assert_eq!(statements.len(), 3, "{mine:#?}");
    assert_eq!(statements[0]["verdict"], "allow");
    assert_eq!(statements[1]["verdict"], "deny");
    assert_eq!(statements[1]["rule"], "no-ddl-for-agents");
    assert_eq!(statements[2]["rule"], "no-secrets");
    let digest = start["policy"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // The policy did not change during the session: its start names it,
    // and the statements do not repeat it.
    assert!(statements.iter().all(|s| s.get("policy").is_none()), "{statements:#?}");
    assert_eq!(statements[0]["fingerprint"].as_str().unwrap().len(), 16);
    let results: Vec<&&Value> = mine.iter().filter(|r| r["type"] == "result").collect();
    assert_eq!(results.len(), 3, "{mine:#?}");
    assert_eq!(results[0]["tags"], serde_json::json!(["SELECT 3"]));
    assert_eq!(results[0]["rows"], 3);
    assert!(results[0]["masked"].as_u64().unwrap() >= 3, "{}", results[0]);
    // Two rows kept, as psql got them: masked.
    let kept = results[0]["rows_kept"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{}", results[0]);
    assert_eq!(kept[0][0], "1");
    assert_eq!(kept[0][1], "Alice Martin");
    assert_eq!(kept[0][3], "****6789");
    assert_eq!(results[1]["ran"], false);
    assert_eq!(results[1]["error"]["code"], "42501");
    // Records are numbered in session order, and results follow their
    // statement.
    for (s, r) in statements.iter().zip(&results) {
        assert_eq!(s["n"], r["n"]);
        assert!(s["seq"].as_u64() < r["seq"].as_u64());
    }

    // The developer's session: parameters as text, the refusal of a
    // prepared statement, the server's error.
    let dev = all.iter().find(|r| r["type"] == "session_start" && r["subject"] == "bob@example.com").unwrap();
    let dev_session = dev["session"].as_str().unwrap();
    let dev_records: Vec<&Value> = all.iter().filter(|r| r["session"] == dev_session).collect();
    let update =
        dev_records.iter().find(|r| r["type"] == "statement" && r["sql"].as_str().unwrap().starts_with("UPDATE"));
    // Binary parameters (tokio-postgres sends int4 as such) as `\x` and hex.
    assert_eq!(update.unwrap()["params"], serde_json::json!(["\\x00000008"]));
    let refused = dev_records.iter().find(|r| r["type"] == "statement" && r["rule"] == "no-secrets").unwrap();
    let refused_result = dev_records.iter().find(|r| r["type"] == "result" && r["n"] == refused["n"]).unwrap();
    assert_eq!(refused_result["error"]["code"], "42501");
    let update_result = dev_records.iter().find(|r| r["type"] == "result" && r["n"] == update.unwrap()["n"]).unwrap();
    assert_eq!(update_result["tags"], serde_json::json!(["UPDATE 1"]));
    let division = dev_records.iter().find(|r| r["type"] == "result" && r["error"]["code"] == "22012");
    assert!(division.is_some(), "{dev_records:#?}");
    // The second execution names the first's record for its decision.
    let executions: Vec<&&Value> = dev_records
        .iter()
        .filter(|r| r["type"] == "statement" && r["sql"] == "SELECT status FROM orders WHERE id = $1")
        .collect();
    assert_eq!(executions.len(), 2, "{dev_records:#?}");
    assert_eq!(executions[0]["decision"]["verdict"], "allow");
    assert!(executions[0].get("decision_as_in").is_none());
    assert!(executions[1].get("decision").is_none(), "{}", executions[1]);
    assert_eq!(executions[1]["decision_as_in"], executions[0]["n"]);
    assert_eq!(executions[1]["verdict"], "allow");
    assert_eq!(executions[1]["rule"], executions[0]["decision"]["rule"]);

    // Never in the log: the tokens, the upstream password, unmasked values.
    let text: String = portcullis_audit::writer::list_segments(&log)
        .unwrap()
        .into_iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .collect();
    for secret in [token.as_str(), APP_PASSWORD, "123-45-6789", "alice@example.com\",\"ssn", "AKIAIOSFODNN7EXAMPLE"] {
        assert!(!text.contains(secret), "{secret} is in the log");
    }

    // verify: intact and closed.
    let key = keys.join("audit-key.pub");
    let (code, stdout, stderr) = run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(&key).arg(&log));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("intact") && stdout.contains("closed"), "{stdout}");

    // sessions: both, and filtered by agent.
    let (code, stdout, _) = run(pg_proxy_cmd().args(["audit", "sessions"]).arg(&log));
    assert_eq!(code, 0);
    assert!(stdout.contains("alice@example.com") && stdout.contains("bob@example.com"), "{stdout}");
    let (_, stdout, _) = run(pg_proxy_cmd().args(["audit", "sessions", "--actor", "copilot-7", "--json"]).arg(&log));
    let listed: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!((listed[0]["statements"].as_u64(), listed[0]["refused"].as_u64()), (Some(3), Some(2)));

    // replay: the timeline, plain when piped.
    let (code, stdout, _) = run(pg_proxy_cmd().args(["audit", "replay", "--session", session]).arg(&log));
    assert_eq!(code, 0);
    assert!(!stdout.contains('\x1b'), "colour when piped: {stdout}");
    assert!(stdout.contains("DENY [no-ddl-for-agents]  DROP TABLE orders"), "{stdout}");
    assert!(stdout.contains("SELECT 3 · 3 rows · 3 masked") || stdout.contains("SELECT 3 · 3 rows"), "{stdout}");
    // A reader that goes away (`| head -1`) ends the tools quietly, exit 0.
    for json in [false, true] {
        let mut cmd = pg_proxy_cmd();
        cmd.args(["audit", "replay", "--session", session]).arg(&log);
        if json {
            cmd.arg("--json");
        }
        let (code, stderr) = portcullis_testkit::process::reader_gone(&mut cmd);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // A receipt for the DROP's record, checked offline.
    let seq = statements[1]["seq"].as_u64().unwrap().to_string();
    let (code, receipt, stderr) = run(pg_proxy_cmd().args(["audit", "prove", "--record", &seq]).arg(&log));
    assert_eq!(code, 0, "{stderr}");
    let receipt_file = keys.join("receipt.json");
    std::fs::write(&receipt_file, &receipt).unwrap();
    let (code, stdout, _) =
        run(pg_proxy_cmd().args(["audit", "check-proof"]).arg(&receipt_file).arg("--key").arg(&key));
    assert_eq!(code, 0, "{stdout}");
    std::fs::write(&receipt_file, receipt.replace("DROP TABLE orders", "DROP TABLE orderz")).unwrap();
    let (code, stdout, _) =
        run(pg_proxy_cmd().args(["audit", "check-proof"]).arg(&receipt_file).arg("--key").arg(&key));
    assert_eq!(code, 1, "{stdout}");

    // One edited byte: exit 1, naming the place.
    let first = portcullis_audit::writer::list_segments(&log).unwrap()[0].1.clone();
    let edited = std::fs::read_to_string(&first).unwrap().replacen("DROP TABLE orders", "DROP TABLE orderz", 1);
    std::fs::write(&first, edited).unwrap();
    let (code, stdout, _) = run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(&key).arg(&log));
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("TAMPERED: ") && stdout.contains("audit-000000000000.jsonl:"), "{stdout}");
    // Its reader gone, it still exits 1 (`set -o pipefail` scripts).
    let (code, stderr) =
        portcullis_testkit::process::reader_gone(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(&key).arg(&log));
    assert_eq!(code, Some(1), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_share_no_sync_and_commits_are_synced() {
    let keys = keys("durability");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "durability = \"commit\"");
    let stats = &stack.gateway.audit.as_ref().unwrap().stats;
    let client = stack.connect_as("bob", &["developers"], None).await;
    client.simple_query("SELECT 1").await.unwrap();
    let before = stats.syncs.load(Ordering::Relaxed);
    for _ in 0..5 {
        client.query("SELECT id FROM orders WHERE id = $1", &[&1i32]).await.unwrap();
    }
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("UPDATE orders SET status = 'x' WHERE id = 1").await.unwrap();
    assert_eq!(stats.syncs.load(Ordering::Relaxed), before, "reads, BEGIN and writes inside a block need no sync");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(stats.syncs.load(Ordering::Relaxed), before + 1, "COMMIT is synced");
    client.execute("UPDATE orders SET status = 'y' WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(stats.syncs.load(Ordering::Relaxed), before + 2, "a write outside a block is synced");
    drop(client);
}

/// A session whose COMMIT waits for its sync holds up no other session:
/// while the sync is held (as by a slow disk), the COMMIT is not
/// forwarded (the write-ahead rule), and another session's reads, which
/// need no sync under "commit", run and are recorded after the COMMIT's
/// record; once the sync is let go, the COMMIT runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waiting_for_its_sync_holds_up_no_other_session() {
    let keys = keys("held-sync");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "durability = \"commit\"");
    let audit = std::sync::Arc::clone(stack.gateway.audit.as_ref().unwrap());
    let writer = stack.connect_as("bob", &["developers"], None).await;
    let reader = stack.connect_as("bob", &["developers"], None).await;
    let before = order_status(&stack);
    assert_ne!(before, "held");
    writer.simple_query("BEGIN").await.unwrap();
    writer.simple_query("UPDATE orders SET status = 'held' WHERE id = 2").await.unwrap();
    let syncs = audit.stats.syncs.load(Ordering::Relaxed);
    /// Lets the syncs go when dropped, should an assertion fail first.
    struct Release(std::sync::Arc<pg_proxy::audit::AuditLog>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold_syncs(false);
        }
    }
    let release = Release(std::sync::Arc::clone(&audit));
    audit.hold_syncs(true);
    let commit = tokio::spawn(async move { writer.simple_query("COMMIT").await.map(|_| writer) });
    // The COMMIT's record is written, and its session waits for the sync.
    let mut waited = false;
    for _ in 0..400 {
        if records(&log).iter().any(|r| r["type"] == "statement" && r["sql"] == "COMMIT") {
            waited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(waited, "the COMMIT's record was not written");
    let reads = async {
        for id in 1..=20 {
            reader.query("SELECT id FROM orders WHERE id = $1", &[&id]).await.unwrap();
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(20), reads).await.is_err() {
        panic!("the other session's reads waited for the COMMIT's sync");
    }
    assert_eq!(order_status(&stack), before, "the COMMIT reached the database before its record was synced");
    assert!(!commit.is_finished(), "the COMMIT did not wait for its sync");
    drop(release);
    let writer = commit.await.unwrap().expect("the COMMIT runs once its record is synced");
    assert_eq!(order_status(&stack), "held");
    assert!(audit.stats.syncs.load(Ordering::Relaxed) > syncs);
    // The reads were recorded while the COMMIT waited: after its record.
    let all = records(&log);
    let seq_of = |r: &Value| r["seq"].as_u64().unwrap();
    let commit_seq = all.iter().find(|r| r["type"] == "statement" && r["sql"] == "COMMIT").map(seq_of).unwrap();
    let reads: Vec<u64> = all
        .iter()
        .filter(|r| r["type"] == "statement" && r["sql"] == "SELECT id FROM orders WHERE id = $1")
        .map(seq_of)
        .collect();
    assert_eq!(reads.len(), 20, "{all:#?}");
    assert!(reads.iter().all(|&s| s > commit_seq), "reads at {reads:?}, the COMMIT at {commit_seq}");
    writer.simple_query(&format!("UPDATE orders SET status = '{before}' WHERE id = 2")).await.unwrap();
    drop((writer, reader));
    sessions_ended(&stack).await;
    audit.close();
    let (code, stdout, stderr) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// A small tmpfs, mounted for the test and unmounted after.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tail reads what is new, whole lines only, across segments.
#[test]
fn a_record_tail_reads_only_new_whole_records() {
    use portcullis_audit::writer::{Writer, WriterOptions};
    let dir = ScratchDir::new("audit-tail");
    let signer = portcullis_audit::note::NoteSigner::generate("example.org/audit").unwrap();
    let mut options = WriterOptions::new(&dir, signer);
    options.segment_bytes = 700;
    let mut w = Writer::open(options).unwrap();
    let now = std::time::SystemTime::now();
    let sqls = |records: Vec<Value>| records.iter().map(|r| r["sql"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let mut tail = pg_proxy::audit::RecordTail::new(&dir);
    w.append(r#"{"type":"statement","sql":"one"}"#, now).unwrap();
    w.write().unwrap();
    assert_eq!(sqls(tail.read_new().unwrap()), ["one"]);
    assert!(tail.read_new().unwrap().is_empty());
    for i in 0..8 {
        w.append(format!(r#"{{"type":"statement","sql":"n{i}"}}"#), now).unwrap();
        w.write().unwrap();
    }
    assert!(portcullis_audit::writer::list_segments(&dir).unwrap().len() > 2);
    assert_eq!(sqls(tail.read_new().unwrap()), (0..8).map(|i| format!("n{i}")).collect::<Vec<_>>());
    w.close().unwrap();
    assert!(tail.read_new().unwrap().is_empty());
    // A line being written is read once it is whole.
    let (_, last) = portcullis_audit::writer::list_segments(&dir).unwrap().pop().unwrap();
    let line = format!(
        r#"{{"v":1,"seq":99,"prev":"{}","time":"2026-12-04T00:00:00.000000Z","type":"statement","sql":"late"}}"#,
        "0".repeat(64)
    );
    let (head, rest) = line.split_at(40);
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, head.as_bytes()).unwrap();
    assert!(tail.read_new().unwrap().is_empty());
    std::io::Write::write_all(&mut f, format!("{rest}\n").as_bytes()).unwrap();
    assert_eq!(sqls(tail.read_new().unwrap()), ["late"]);
}

/// `audit replay --follow` prints a live session's records as they are
/// written, reading the segment the gateway still appends to (which ends
/// in the zeros reserved for the next records), and stops by itself when
/// the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follows_a_live_session_until_it_ends() {
    use std::io::BufRead;
    let keys = keys("follow");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "");
    let client = stack.connect_as("bob", &["developers"], None).await;
    client.simple_query("SELECT 1").await.unwrap();
    let live = std::fs::read(&portcullis_audit::writer::list_segments(&log).unwrap()[0].1).unwrap();
    assert_eq!(live.last(), Some(&0), "a segment being written ends in reserved zeros");
    let all = records(&log);
    let session = all.iter().find(|r| r["type"] == "session_start").unwrap()["session"].as_str().unwrap().to_string();

    let mut follow = pg_proxy_cmd()
        .args(["audit", "replay", "--json", "--follow", "--session", &session])
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let until = |want: &dyn Fn(&Value) -> bool| loop {
        let line = printed.recv_timeout(std::time::Duration::from_secs(30)).expect("replay --follow printed it");
        let record: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["session"], session.as_str());
        if want(&record) {
            return record;
        }
    };
    until(&|r| r["sql"] == "SELECT 1");
    // Run after the replay started: it shows up.
    client.simple_query("SELECT 2").await.unwrap();
    until(&|r| r["sql"] == "SELECT 2");
    until(&|r| r["type"] == "result" && r["tags"] == serde_json::json!(["SELECT 1"]) && r["n"] == 2);
    drop(client);
    until(&|r| r["type"] == "session_end");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = follow.kill();
            panic!("replay --follow went on after the session ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    stack.gateway.audit.as_ref().unwrap().close();
}

/// A session's last result waits for its next statement a short while
/// only: with the session open and idle, it is recorded all the same,
/// also after statements that kept moving that wait later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_result_of_an_idle_session_is_recorded_while_it_stays_open() {
    let keys = keys("idle-result");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "");
    let client = stack.connect_as("bob", &["developers"], None).await;
    for i in 1..=30 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut last = None;
    for _ in 0..200 {
        let all = records(&log);
        last = all.iter().find(|r| r["type"] == "statement" && r["sql"] == "SELECT 30").cloned();
        if let Some(result) = last.as_ref().and_then(|s| result_of(&all, s)) {
            assert_eq!(result["tags"], serde_json::json!(["SELECT 1"]));
            assert!(all.iter().all(|r| r["type"] != "session_end"), "the session is still open");
            // Every statement's result, each once.
            assert_eq!(all.iter().filter(|r| r["type"] == "result").count(), 30);
            drop(client);
            stack.gateway.audit.as_ref().unwrap().close();
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the last result was not recorded while its session stayed open: {last:?}");
}

/// A client that stops reading a large result holds back no record:
/// - the session's clock goes on: a statement held for approval behind
///   that result times out when its hold is over, and its records (the
///   statement, and a result saying it did not run) are written while the
///   gateway still waits for the client to read;
/// - a session ended by an order (a kill, a stopping gateway) records its
///   end before its last attempt to write to such a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_back_no_record() {
    let keys = keys("stalled-client");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "[admin]\nlisten = \"127.0.0.1:9\"\n[approvals]\ntimeout = \"1s\"\n");
    let delete = "DELETE FROM orders WHERE id = 40";
    let raw = stack.agent_stalled_after_a_large_result(delete).await;
    // The client reads nothing more.
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = records(&log);
        if let Some(statement) = seen.iter().find(|r| r["type"] == "statement" && r["sql"] == delete) {
            if let Some(result) = result_of(&seen, statement) {
                assert_eq!(result["ran"], false, "{result}");
                assert_eq!(stack.gateway.active_sessions(), 1, "the session is still open");
                for session in stack.gateway.sessions.list() {
                    stack.gateway.sessions.terminate(session.id);
                }
                let mut ended = false;
                while stack.gateway.active_sessions() == 1 {
                    if records(&log).iter().any(|r| r["type"] == "session_end") {
                        ended = true;
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                assert!(ended, "the session's end was recorded only after its last writes to the client");
                drop(raw);
                sessions_ended(&stack).await;
                stack.gateway.audit.as_ref().unwrap().close();
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the held statement's end was not recorded while the client did not read: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_statements_until_space_returns() {
    let keys = keys("full");
    let log = keys.join("log");
    let Some(_tmpfs) = Tmpfs::mount(&log, "256k") else {
        // Mounting needs root (CI runs as root).
        assert!(std::env::var_os("CI").is_none(), "the full-disk test needs to mount a tmpfs");
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let stack = audit_stack(&keys, &log, "");
    let client = stack.connect_as("bob", &["developers"], None).await;
    client.simple_query("SELECT 1").await.unwrap();
    // Fill the disk.
    let fill = log.join("filler");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    // The page the segment's last write left may still take a record or
    // two; then the disk is full.
    let mut refused = None;
    for i in 0..200 {
        let sql = format!("UPDATE orders SET status = 'during-full-disk-{i}' WHERE id = 2");
        if let Err(e) = client.simple_query(&sql).await {
            refused = Some((sql, e));
            break;
        }
    }
    let (marker, e) = refused.expect("a statement refused once the disk is full");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::IO_ERROR, "{e}");
    assert!(db.message().contains("audit record"), "{}", db.message());
    // Nothing reached the database unrecorded.
    let status = order_status(&stack);
    assert!(!marker.contains(&format!("'{status}'")), "the refused UPDATE ran: {status}");
    // The session goes on; space returns; recording resumes.
    std::fs::remove_file(&fill).unwrap();
    client.simple_query("UPDATE orders SET status = 'after' WHERE id = 2").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();
    let all = records(&log);
    assert!(all.iter().any(|r| r["sql"] == "UPDATE orders SET status = 'after' WHERE id = 2"));
    assert!(!all.iter().any(|r| r["sql"] == marker), "a refused statement's unwritten record is not in the log");
    let (code, stdout, stderr) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    if code != 0 {
        for (_, p) in portcullis_audit::writer::list_segments(&log).unwrap() {
            eprintln!("== {}", p.display());
            for l in std::fs::read_to_string(p).unwrap().lines() {
                eprintln!("{}", l.get(..150).unwrap_or(l));
            }
        }
    }
    assert_eq!(code, 0, "{stdout}{stderr}");
    drop(_tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_refuses_the_change_and_the_log_goes_on_in_a_new_segment() {
    let keys = keys("syncfail");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "durability = \"commit\"");
    let client = stack.connect_as("bob", &["developers"], None).await;
    client.simple_query("UPDATE orders SET status = 'before' WHERE id = 2").await.unwrap();
    let audit = stack.gateway.audit.as_ref().unwrap();
    let segments_before = portcullis_audit::writer::list_segments(&log).unwrap().len();

    // The disk answers the next sync with EIO: the change waiting on it is
    // refused with the clear error and never reaches the database.
    audit.fail_next_syncs(1);
    let e = client.simple_query("UPDATE orders SET status = 'unsynced' WHERE id = 2").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::IO_ERROR, "{e}");
    assert!(db.message().contains("audit record"), "{}", db.message());
    assert_eq!(order_status(&stack), "before");

    // The session goes on, recorded in a new segment.
    client.simple_query("UPDATE orders SET status = 'after' WHERE id = 2").await.unwrap();
    drop(client);
    sessions_ended(&stack).await;
    audit.close();
    assert!(portcullis_audit::writer::list_segments(&log).unwrap().len() > segments_before);
    let all = records(&log);
    assert!(all.iter().any(|r| r["sql"] == "UPDATE orders SET status = 'after' WHERE id = 2"));
    // The refused statement's record reached the page cache before the
    // sync failed: its result says that it did not run, and why.
    let statement = all
        .iter()
        .find(|r| r["sql"] == "UPDATE orders SET status = 'unsynced' WHERE id = 2")
        .expect("the unsynced statement's record");
    let result = result_of(&all, statement).expect("its result");
    assert_eq!(result["ran"], false, "{result}");
    assert_eq!(result["error"]["code"], "58030", "{result}");
    assert!(result["error"]["message"].as_str().unwrap().contains("audit record"), "{result}");
    let (code, stdout, stderr) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_end_refuses_the_change_it_carried_and_records_why() {
    let keys = keys("rotation");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "segment_bytes = 4096");
    let client = stack.connect_as("bob", &["developers"], None).await;
    client.simple_query("SELECT 1").await.unwrap();
    // The next segments' names are taken (directories: even root cannot
    // create the files), so the segment cannot end when it is full.
    let blockers: Vec<PathBuf> = (1..4).map(|i| log.join(portcullis_audit::segment::segment_file_name(i))).collect();
    for b in &blockers {
        std::fs::create_dir(b).unwrap();
    }
    let mut refused = None;
    for i in 0..100 {
        let sql = format!("UPDATE orders SET status = 'rotation-{i}' WHERE id = 2");
        if let Err(e) = client.simple_query(&sql).await {
            refused = Some((sql, e));
            break;
        }
    }
    let (sql, e) = refused.expect("a statement refused when its segment could not end");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::IO_ERROR, "{e}");
    // Most often the statement's own write fills the segment and cannot
    // end it: its record is written, and it is refused. Under load the log's
    // own thread may write a result left waiting (more than 50 ms without
    // a next statement) and be the one that fills it: then the statement's
    // write cannot begin the next segment, and its record is not written.
    let ended_by_it = db.message().contains("records were written");
    assert!(ended_by_it || db.message().contains("creating"), "{}", db.message());
    for b in &blockers {
        std::fs::remove_dir(b).unwrap();
    }
    client.simple_query("UPDATE orders SET status = 'after-rotation' WHERE id = 2").await.unwrap();
    assert_eq!(order_status(&stack), "after-rotation");
    drop(client);
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();
    // The refused statement's record is in the log, and its result says it
    // did not run; or, when its record could not be written, it is not.
    let all = records(&log);
    let statement = all.iter().find(|r| r["sql"] == sql.as_str());
    if ended_by_it {
        let statement = statement.expect("the refused statement's record");
        let result = result_of(&all, statement).expect("its result");
        assert_eq!(result["ran"], false, "{result}");
        assert_eq!(result["error"]["code"], "58030", "{result}");
    } else {
        assert!(statement.is_none(), "{statement:?}");
    }
    let (code, stdout, stderr) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_forwards_and_records_what_would_be_refused() {
    let keys = keys("observe");
    let log = keys.join("log");
    let stack = audit_stack_in(&keys, &log, "mode = \"observe\"", "");
    let client = stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await;
    // Denied (DDL for agents), held (an agent's DELETE), denied (secrets):
    // all run.
    client.simple_query("CREATE TABLE observed_t (id int)").await.unwrap();
    let deleted = client.execute("DELETE FROM orders WHERE id = $1", &[&3i32]).await.unwrap();
    assert_eq!(deleted, 1);
    let rows = client.query("SELECT * FROM secrets", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    // Masking stays in force.
    let rows = client.query("SELECT ssn FROM customers WHERE id = 1", &[]).await.unwrap();
    let ssn: String = rows[0].get(0);
    assert_ne!(ssn, "123-45-6789");
    drop(client);
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();
    let all = records(&log);
    let statement = |prefix: &str| {
        all.iter().find(|r| r["type"] == "statement" && r["sql"].as_str().unwrap().starts_with(prefix)).unwrap().clone()
    };
    let create = statement("CREATE TABLE");
    assert_eq!((create["verdict"].as_str(), create["observed"].as_bool()), (Some("deny"), Some(true)));
    let delete = statement("DELETE");
    assert_eq!((delete["verdict"].as_str(), delete["observed"].as_bool()), (Some("require_approval"), Some(true)));
    assert_eq!(statement("SELECT * FROM secrets")["rule"], "no-secrets");
    let read = statement("SELECT ssn");
    assert_eq!(read["verdict"], "allow");
    assert!(read.get("observed").is_none(), "{read}");
    let result =
        all.iter().find(|r| r["type"] == "result" && r["n"] == delete["n"] && r["session"] == delete["session"]);
    assert_eq!(result.unwrap()["tags"], serde_json::json!(["DELETE 1"]));
}

#[test]
fn observe_mode_needs_an_audit_log() {
    let dir = ScratchDir::new("observe-config");
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\npolicy = \"p.toml\"\nmode = \"observe\"\n[auth]\njwks_file = \"j.json\"\n[upstream]\nuser = \"app\"\n",
    )
    .unwrap();
    let e = pg_proxy::config::Config::load(&config).unwrap_err().to_string();
    assert!(e.contains("needs an [audit] section"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_lists_what_a_new_policy_would_change() {
    let keys = keys("backtest");
    let log = keys.join("log");
    let stack = audit_stack(&keys, &log, "");
    let client = stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await;
    client.simple_query("SELECT name FROM customers WHERE id = 1").await.unwrap();
    client.simple_query("DROP TABLE orders").await.unwrap_err();
    // Session state: after this SET, `orders` is read in the path the
    // session set; the backtest replays it.
    client.simple_query("SET search_path TO private").await.unwrap();
    let on_path = client.simple_query("SELECT count(*) FROM orders").await;
    drop(client);
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();

    let original = std::fs::read_to_string(stack.path("policy.toml")).unwrap();
    let same = keys.join("same.toml");
    std::fs::write(&same, &original).unwrap();
    let stricter = keys.join("stricter.toml");
    std::fs::write(
        &stricter,
        format!(
            "{original}\n[[rule]]\nname = \"no-customers-for-agents\"\neffect = \"deny\"\ngroups = [\"ai-agents\"]\n\
             tables = [\"public.customers\"]\nreason = \"agents do not read customers\"\n"
        ),
    )
    .unwrap();
    let backtest = |policy: &Path, extra: &[&str]| {
        run(pg_proxy_cmd().args(["policy", "backtest", "--policy"]).arg(policy).args(extra).arg(&log))
    };

    // The same policy changes nothing, against the recorded verdicts: the
    // replayed session state (the SET) decides the last read as it was.
    let (code, stdout, stderr) = backtest(&same, &["--fail-on", "allowed"]);
    assert_eq!(code, 0, "{stdout}{stderr} (the read on the session's path: {on_path:?})");
    assert!(stdout.contains("; 0 change"), "{stdout}");

    // A stricter one: the customers read is newly refused, by its rule.
    let (code, stdout, _) = backtest(&stricter, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("newly refused: 1"), "{stdout}");
    assert!(stdout.contains("no-customers-for-agents: 1"), "{stdout}");
    assert!(stdout.contains("alice (copilot-7): SELECT name FROM customers WHERE id = 1"), "{stdout}");
    let (code, _, _) = backtest(&stricter, &["--fail-on", "refused"]);
    assert_eq!(code, 1);
    let (code, _, _) = backtest(&stricter, &["--fail-on", "allowed"]);
    assert_eq!(code, 0);

    // Against an explicit baseline, the other way round: newly allowed.
    let (code, stdout, _) = backtest(&same, &["--baseline", stricter.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let changes: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(changes.len(), 1, "{stdout}");
    assert_eq!(changes[0]["direction"], "newly allowed");
    assert_eq!(changes[0]["before_rule"], "no-customers-for-agents");
}

#[test]
fn a_killed_gateway_loses_no_statement_the_database_ran() {
    let keys = keys("crash");
    let log = keys.join("log");
    let options = ClusterOptions {
        extra_config: vec!["log_statement = 'all'".into(), "log_line_prefix = '%a|'".into()],
        ..ClusterOptions::default()
    };
    let stack = Stack::builder().cluster(options).start();
    stack.pgbench_init(1);
    // What the server logs from here on is what the clients ran.
    let log_start = std::fs::metadata(stack.cluster.log_path()).unwrap().len() as usize;

    // The gateway as its own process, recording with durability "commit".
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = stack.path("crash.toml");
    let text = std::fs::read_to_string(stack.path("gateway.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    let audit = format!(
        "\n[audit]\ndir = \"{}\"\nsigning_key_file = \"{}\"\ndurability = \"commit\"\ncheckpoint_interval = \"200ms\"\n",
        log.display(),
        keys.join("audit-key.pem").display()
    );
    std::fs::write(&config, text + &audit).unwrap();
    let mut gateway = pg_proxy_cmd()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "pg-proxy serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let token = stack.token("bench", &["developers"], None);
    let conninfo =
        |app: &str| format!("host=127.0.0.1 port={port} user=bench dbname=app sslmode=disable application_name={app}");

    // A psql session, then pgbench under load, killed mid-run.
    let psql = stack
        .program("psql")
        .args(["-X", "-d", &conninfo("crash-psql")])
        .args(["-c", "UPDATE orders SET status = 'crash-test' WHERE id = 11", "-c", "SELECT count(*) FROM orders"])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", String::from_utf8_lossy(&psql.stderr));
    let mut bench = stack
        .program("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", "30", "-M", "simple", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", "bench", "app"])
        .env("PGPASSWORD", &token)
        .env("PGSSLMODE", "disable")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let _ = bench.wait();

    // The log verifies, cut where the kill left it.
    let (code, stdout, stderr) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("closed"), "{stdout}");

    // Every statement the server ran for these clients has its record.
    let mut recorded: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in records(&log) {
        if r["type"] == "statement" {
            *recorded.entry(r["sql"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let server_log = std::fs::read(stack.cluster.log_path()).unwrap();
    let server_log = String::from_utf8_lossy(&server_log[log_start..]);
    let mut ran: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in server_log.lines() {
        let Some((app, rest)) = line.split_once('|') else { continue };
        if app != "pgbench" && app != "crash-psql" {
            continue;
        }
        if let Some(sql) = rest.split_once("LOG:  statement: ").map(|(_, s)| s) {
            *ran.entry(sql.to_string()).or_default() += 1;
        }
    }
    let total: usize = ran.values().sum();
    assert!(total > 100, "the load ran: {total} statements in the server log");
    assert!(ran.contains_key("UPDATE orders SET status = 'crash-test' WHERE id = 11"), "{ran:?}");
    for (sql, n) in &ran {
        let have = recorded.get(sql).copied().unwrap_or(0);
        assert!(have >= *n, "the server ran {sql:?} {n} times, the log records it {have} times");
    }
    eprintln!("{total} statements the server ran, all recorded; {stdout}");
}

#[test]
fn check_loads_the_signing_key_and_writes_no_log() {
    let keys = keys("check");
    let stack = Stack::start();
    let log = keys.join("log-of-check");
    let base = std::fs::read_to_string(stack.path("gateway.toml")).unwrap();
    let config = stack.path("check-audit.toml");
    let write = |key: &Path| {
        let audit = format!("\n[audit]\ndir = \"{}\"\nsigning_key_file = \"{}\"\n", log.display(), key.display());
        std::fs::write(&config, format!("{base}{audit}")).unwrap();
    };
    write(&keys.join("missing.pem"));
    let (code, _, stderr) = run(pg_proxy_cmd().arg("check").arg(&config));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("signing_key_file") && stderr.contains("missing.pem"), "{stderr}");
    write(&keys.join("audit-key.pub"));
    let (code, _, stderr) = run(pg_proxy_cmd().arg("check").arg(&config));
    assert_eq!(code, 1, "a public key is no signing key: {stderr}");
    write(&keys.join("audit-key.pem"));
    let (code, stdout, stderr) = run(pg_proxy_cmd().arg("check").arg(&config));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!log.exists(), "check wrote an audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_refused_when_judged_again_is_recorded() {
    let keys = keys("rejudged");
    let log = keys.join("log");
    let config = format!(
        "[audit]\ndir = \"{}\"\nsigning_key_file = \"{}\"\n",
        log.display(),
        keys.join("audit-key.pem").display()
    );
    let stack = Stack::builder()
        .config(&config)
        .setup_sql("CREATE SCHEMA evil; CREATE TABLE evil.orders (id int); INSERT INTO evil.orders VALUES (1);")
        .start();
    let client = stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await;
    let statement = client.prepare("SELECT id FROM orders LIMIT 1").await.unwrap();
    client.query(&statement, &[]).await.unwrap();
    client.simple_query("SET search_path = evil").await.unwrap();
    let e = client.query(&statement, &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code()), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    drop(client);
    sessions_ended(&stack).await;
    stack.gateway.audit.as_ref().unwrap().close();
    let all = records(&log);
    let executes: Vec<&Value> =
        all.iter().filter(|r| r["type"] == "statement" && r["sql"] == "SELECT id FROM orders LIMIT 1").collect();
    assert_eq!(executes.len(), 2, "{all:#?}");
    assert_eq!(executes[0]["verdict"], "allow");
    assert_eq!(executes[1]["verdict"], "deny");
    let result = all.iter().find(|r| r["type"] == "result" && r["n"] == executes[1]["n"]).unwrap();
    assert_eq!((result["ran"].as_bool(), result["error"]["code"].as_str()), (Some(false), Some("42501")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_events_are_recorded_with_the_session_that_held_the_statement() {
    use pg_proxy::approvals::ledger::Approver;
    let keys = keys("approvals");
    let log = ScratchDir::new("audit-approvals");
    let stack = audit_stack(&keys, &log, "[admin]\nlisten = \"127.0.0.1:9\"\n[approvals]\ntimeout = \"60s\"\n");
    let store = stack.gateway.approvals.clone().expect("approvals are on with [admin]");
    let agent = std::sync::Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let pending = |store: &pg_proxy::approvals::store::ApprovalStore| {
        store.requests(true, std::time::SystemTime::now()).into_iter().next()
    };

    // Denied (the requester gave a reason), then approved with a grant
    // that is revoked.
    agent.simple_query("SET portcullis.reason = 'INC-9: stale rows'").await.unwrap();
    for (sql, approve) in [("DELETE FROM orders WHERE id = 40", false), ("DELETE FROM orders WHERE id = 41", true)] {
        let a = std::sync::Arc::clone(&agent);
        let run = tokio::spawn(async move { a.simple_query(sql).await });
        let request = loop {
            if let Some(r) = pending(&store) {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let bob = Approver::new("bob", ["dba"]);
        let now = std::time::SystemTime::now();
        if approve {
            store.approve(&request.id, &bob, "ticket 7", Some(std::time::Duration::from_secs(600)), now).await.unwrap();
            run.await.unwrap().unwrap();
            store.revoke(&format!("{}-grant", request.id), &bob, now).await.unwrap();
        } else {
            store.deny(&request.id, &bob, "not 40", now).await.unwrap();
            assert!(run.await.unwrap().is_err());
        }
    }
    drop(agent);
    // A session's last results are recorded when it ends.
    sessions_ended(&stack).await;
    drop(stack);

    let all = records(&log);
    let approvals: Vec<&Value> = all.iter().filter(|r| r["type"] == "approval").collect();
    let events: Vec<&str> = approvals.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(events, ["requested", "denied", "requested", "approved", "granted", "revoked"], "{approvals:?}");
    // The requester's reason, with the request it went with only.
    assert_eq!(approvals[0]["reason"], "INC-9: stale rows");
    assert!(approvals[2].get("reason").is_none_or(Value::is_null), "{:?}", approvals[2]);
    assert_eq!(approvals[1]["by"], serde_json::json!(["bob"]));
    assert_eq!(approvals[1]["reason"], "not 40");
    assert_eq!(approvals[3]["reason"], "ticket 7");
    // The approved statement's record follows its approval, in the same
    // session; the denied one ran nothing.
    let statement =
        all.iter().find(|r| r["type"] == "statement" && r["sql"] == "DELETE FROM orders WHERE id = 41").unwrap();
    assert_eq!(statement["session"], approvals[3]["session"]);
    assert!(statement["seq"].as_u64() > approvals[3]["seq"].as_u64());
    assert_eq!(result_of(&all, statement).unwrap()["tags"], serde_json::json!(["DELETE 1"]));
    let (code, out, err) =
        run(pg_proxy_cmd().args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub")).arg(&log));
    assert_eq!(code, 0, "{out}{err}");
    let session = approvals[3]["session"].as_str().unwrap();
    let (code, out, err) = run(pg_proxy_cmd().args(["audit", "replay", "--session", session]).arg(&log));
    assert_eq!(code, 0, "{err}");
    let request = approvals[3]["request"].as_str().unwrap();
    assert!(out.contains(&format!("approval {request} approved by bob: ticket 7")), "{out}");
    assert!(out.contains(&format!("approval {request} revoked by bob (grant {request}-grant)")), "{out}");
}
