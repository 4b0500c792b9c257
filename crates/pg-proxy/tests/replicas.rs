#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

//! Two gateway replicas sharing their approvals in PostgreSQL
//! (`[approvals] store = "postgres"`): a request held on one is approved
//! through the other, a grant made on one is honoured by the other, and a
//! quorum gathers across both.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pg_proxy::approvals::ledger::{Approver, LedgerError, Request};
use pg_proxy::approvals::store::ApprovalStore;
use pg_proxy::config::Config;
use pg_proxy::server::Gateway;
use portcullis_testkit::stack::Stack;

const SHARED: &str = "[admin]\nlisten = \"127.0.0.1:9\"\n[approvals]\nstore = \"postgres\"\nreplica = \"a\"\n\
                      user = \"portcullis_log\"\npassword_env = \"PORTCULLIS_TEST_LOG_PASSWORD\"\n";

/// The log's own role, made on `stack`'s cluster (the gateways retry
/// until it exists).
fn log_role(stack: &Stack) {
    stack.cluster.create_role("portcullis_log", LOG_PASSWORD, false).unwrap();
    stack.cluster.psql("app", "GRANT CREATE ON DATABASE app TO portcullis_log").unwrap();
}

const LOG_PASSWORD: &str = "log-secret";

/// Replica A (the stack's gateway) and replica B (a second gateway on the
/// same database, served here): B's address and gateway.
async fn replicas(policy: Option<&str>) -> (Stack, std::net::SocketAddr, Arc<Gateway>) {
    replicas_with(policy, "", |b| b).await
}

/// The same, with `extra` in A's configuration, and B's made from A's by
/// `for_b` (after naming it `b`).
async fn replicas_with(
    policy: Option<&str>,
    extra: &str,
    for_b: impl Fn(String) -> String,
) -> (Stack, std::net::SocketAddr, Arc<Gateway>) {
    let mut builder = Stack::builder().config(&format!("{SHARED}{extra}"));
    if let Some(p) = policy {
        builder = builder.policy(p);
    }
    std::env::set_var("PORTCULLIS_TEST_LOG_PASSWORD", LOG_PASSWORD);
    let stack = tokio::task::spawn_blocking(move || builder.start()).await.unwrap();
    log_role(&stack);
    let text = std::fs::read_to_string(stack.dir.join("gateway.toml")).unwrap();
    let b_text = for_b(text.replace("replica = \"a\"", "replica = \"b\""));
    assert_ne!(text, b_text);
    std::fs::write(stack.dir.join("gateway-b.toml"), b_text).unwrap();
    let b = Arc::new(Gateway::new(Config::load(&stack.dir.join("gateway-b.toml")).unwrap()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::clone(&b).serve(listener));
    (stack, addr, b)
}

async fn agent_on(stack: &Stack, addr: std::net::SocketAddr) -> Arc<tokio_postgres::Client> {
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let conninfo =
        stack.conninfo(&token).replace(&format!("port={}", stack.addr.port()), &format!("port={}", addr.port()));
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    Arc::new(client)
}

fn store(gateway: &Gateway) -> Arc<ApprovalStore> {
    gateway.approvals.clone().expect("approvals are on")
}

/// The one pending request `store` sees, once it does.
async fn pending(store: &ApprovalStore) -> Request {
    for _ in 0..400 {
        if let Some(r) = store.requests(true, SystemTime::now()).pop() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no request reached this replica");
}

fn dba(name: &str) -> Approver {
    Approver::new(name, ["dba"])
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20 s")
}

/// A DELETE held on replica A is approved through replica B's admin API
/// and runs on A; a vote on the decided request is refused on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_on_one_replica_is_approved_through_the_other() {
    let (stack, _, b) = replicas(None).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));
    let admin_b = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(pg_proxy::admin::serve(listener, Arc::clone(&b), Arc::clone(&b_store)));
        base
    };
    let agent = agent_on(&stack, stack.addr).await;
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = 41", &[]).await });
    let on_a = pending(&a_store).await;
    let on_b = pending(&b_store).await;
    assert_eq!(on_a.id, on_b.id);
    assert_eq!(on_b.replica.as_deref(), Some("a"), "the request names the replica holding it");
    assert_eq!(on_b.statements[0].sql, "DELETE FROM orders WHERE id = 41");

    let bob = stack.token("bob", &["dba"], None);
    let url = format!("{admin_b}/api/v1/approvals/{}/approve", on_b.id);
    let answer = tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .header("Authorization", format!("Bearer {bob}"))
            .content_type("application/json")
            .send(serde_json::json!({"reason": "checked"}).to_string())
            .map(|mut r| r.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(answer.contains("approved"), "{answer}");
    assert_eq!(within(run).await.unwrap().unwrap(), 1, "the held DELETE ran on replica A");

    // Decided everywhere: a late vote is refused on both replicas, and
    // nothing is written for it.
    let logged = log_entries(&stack).await;
    for store in [&a_store, &b_store] {
        let late = store.approve(&on_a.id, &dba("carol"), "late", None, SystemTime::now()).await;
        assert!(matches!(late, Err(LedgerError::Decided { .. })), "{late:?}");
    }
    assert_eq!(log_entries(&stack).await, logged);
}

/// How many entries the shared log holds, read directly.
async fn log_entries(stack: &Stack) -> i64 {
    let log = stack.direct_as("portcullis_log", LOG_PASSWORD).await;
    log.query_one("SELECT count(*) FROM portcullis.approval_log", &[]).await.unwrap().get(0)
}

/// A grant made on replica A lets the agent's same statement through on
/// replica B at once; revoked on B, it no longer does on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_made_on_one_replica_is_honoured_by_the_other() {
    let (stack, b_addr, b) = replicas(None).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));
    let on_a = agent_on(&stack, stack.addr).await;
    let on_b = agent_on(&stack, b_addr).await;

    let a = Arc::clone(&on_a);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&42i32]).await });
    let request = pending(&a_store).await;
    let grant_for = Some(Duration::from_secs(1800));
    a_store.approve(&request.id, &dba("bob"), "for the cleanup", grant_for, SystemTime::now()).await.unwrap();
    assert_eq!(within(run).await.unwrap().unwrap(), 1);

    // The same shape on B: the grant covers it, no request is opened.
    let mut granted = None;
    for _ in 0..100 {
        granted = b_store.grants(SystemTime::now()).pop();
        if granted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grant = granted.expect("the grant reached replica B");
    assert_eq!(within(on_b.execute("DELETE FROM orders WHERE id = $1", &[&43i32])).await.unwrap(), 1);
    assert!(b_store.requests(true, SystemTime::now()).is_empty());

    // Revoked on B: once A has read it (at once when told, within a
    // second in any case), A holds the next one.
    b_store.revoke(&grant.id, &dba("bob"), SystemTime::now()).await.unwrap();
    for _ in 0..100 {
        if a_store.grants(SystemTime::now()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a_store.grants(SystemTime::now()).is_empty(), "replica A never read the revoke");
    let a = Arc::clone(&on_a);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&44i32]).await });
    let held = pending(&a_store).await;
    b_store.deny(&held.id, &dba("bob"), "enough", SystemTime::now()).await.unwrap();
    let e = within(run).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("enough") || format!("{e:?}").contains("enough"), "{e:?}");
}

/// A rule wanting two people: one approves on each replica, and the
/// statement held on B runs after the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_on_two_replicas_make_a_quorum() {
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml"))
        .unwrap()
        .replace("approvers = [\"dba\"]\n", "approvers = [\"dba\"]\napprovals = 2\n");
    assert!(policy.contains("approvals = 2"));
    let (stack, b_addr, b) = replicas(Some(&policy)).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));
    let on_b = agent_on(&stack, b_addr).await;
    let agent = Arc::clone(&on_b);
    let run = tokio::spawn(async move { agent.execute("DELETE FROM orders WHERE id = 45", &[]).await });
    let request = pending(&a_store).await;
    a_store.approve(&request.id, &dba("bob"), "one", None, SystemTime::now()).await.unwrap();
    // The same person again, on the other replica: still one.
    let again = b_store.approve(&request.id, &dba("bob"), "twice", None, SystemTime::now()).await;
    assert!(matches!(again, Err(LedgerError::AlreadyApproved { .. })), "{again:?}");
    assert!(!run.is_finished());
    b_store.approve(&request.id, &dba("carol"), "two", None, SystemTime::now()).await.unwrap();
    assert_eq!(within(run).await.unwrap().unwrap(), 1);
    // Both replicas hold the same request, once A has read the last vote.
    let on_b = b_store.request(&request.id, SystemTime::now()).unwrap();
    assert_eq!(on_b.votes.len(), 2);
    for _ in 0..100 {
        if a_store.request(&request.id, SystemTime::now()).unwrap() == on_b {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_a = a_store.request(&request.id, SystemTime::now()).unwrap();
    panic!("replica A never read the second vote:\n{on_a:#?}\n{on_b:#?}");
}

/// Each replica's audit log records the events of the requests its own
/// sessions held, whoever decided them; the webhook hears of each change
/// once, from the replica that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_records_its_own_sessions_requests_and_announces_its_own_changes() {
    let keys = portcullis_testkit::audit_keys!("replica-keys");
    let (url_a, to_a) = portcullis_testkit::webhook::receiver(false);
    let (url_b, to_b) = portcullis_testkit::webhook::receiver(false);
    let extra = format!(
        "webhook_url = \"{url_a}\"\n[audit]\ndir = \"audit-a\"\nsigning_key_file = \"{}\"\ndurability = \"every\"\n",
        keys.join("audit-key.pem").display()
    );
    let b_config = |a: String| a.replace(&url_a, &url_b).replace("\"audit-a\"", "\"audit-b\"");
    let (stack, _, b) = replicas_with(None, &extra, b_config).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));

    let agent = agent_on(&stack, stack.addr).await;
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = 46", &[]).await });
    let request = pending(&a_store).await;
    let on_b = pending(&b_store).await;
    b_store.deny(&on_b.id, &dba("bob"), "not this one", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());
    drop(agent);

    let next = |rx: &std::sync::mpsc::Receiver<serde_json::Value>| rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(next(&to_a)["event"], "requested");
    assert_eq!(next(&to_b)["event"], "denied");
    // Nothing more: A does not announce B's denial, nor B A's request.
    for rx in [&to_a, &to_b] {
        assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err());
    }

    let events = |dir: &str| -> Vec<String> {
        let mut out = Vec::new();
        let log = stack.dir.join(dir);
        for (_, path) in portcullis_audit::writer::list_segments(&log).unwrap_or_default() {
            let bytes = std::fs::read(path).unwrap();
            for line in std::str::from_utf8(portcullis_audit::segment::content(&bytes)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["type"] == "approval" && v["request"] == request.id.as_str() {
                    out.push(v["event"].as_str().unwrap().to_string());
                }
            }
        }
        out
    };
    let mut on_a = Vec::new();
    for _ in 0..100 {
        on_a = events("audit-a");
        if on_a.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(on_a, ["requested", "denied"]);
    assert!(events("audit-b").is_empty(), "{:?}", events("audit-b"));
    // Both logs verify, closed.
    stack.gateway.audit.as_ref().unwrap().close();
    b.audit.as_ref().unwrap().close();
    for dir in ["audit-a", "audit-b"] {
        let out = portcullis_testkit::bin!()
            .args(["audit", "verify", "--key"])
            .arg(keys.join("audit-key.pub"))
            .arg(stack.dir.join(dir))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// A request nobody decides expires with its session's hold: both
/// replicas read it expired, and the agent is told of the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_request_reads_as_expired_on_every_replica() {
    let (stack, _, b) = replicas_with(None, "timeout = \"2s\"\n", |b| b).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));
    let agent = agent_on(&stack, stack.addr).await;
    let e = within(agent.execute("DELETE FROM orders WHERE id = 47", &[])).await.unwrap_err();
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e:?}");
    let request = b_store.requests(false, SystemTime::now()).pop().expect("the request, decided");
    for store in [&a_store, &b_store] {
        let state = store.request(&request.id, SystemTime::now()).unwrap().state;
        assert_eq!(state, pg_proxy::approvals::ledger::State::Expired);
    }
    // Too late to approve, on either.
    let late = b_store.approve(&request.id, &dba("bob"), "late", None, SystemTime::now()).await;
    assert!(matches!(late, Err(LedgerError::Decided { .. })), "{late:?}");
}

/// A client cannot reach the log through the gateway, whatever the policy
/// lets it do: the log is its own role's, closed to the upstream role
/// (here an agent whose token says `dba`, allowed everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_read_or_forge_the_log_through_the_gateway() {
    let (stack, _, _b) = replicas(None).await;
    let a_store = store(&stack.gateway);
    let token = stack.token("alice", &["ai-agents", "dba"], Some("copilot-7"));
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&stack.conninfo(&token), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        Arc::new(c)
    };
    let (held, other) = (connect().await, connect().await);
    let h = Arc::clone(&held);
    let run = tokio::spawn(async move { h.execute("DELETE FROM orders WHERE id = 48", &[]).await });
    let request = pending(&a_store).await;
    let forged = serde_json::json!({
        "v": 1,
        "now": {"secs_since_epoch": 1_900_000_000u64, "nanos_since_epoch": 0},
        "command": {"command": "approve", "id": request.id, "reason": "lgtm",
                    "approver": {"subject": "bob", "groups": ["dba"], "actor": null}, "grant_for": null}
    })
    .to_string();
    for sql in [
        "SELECT count(*) FROM portcullis.approval_log".to_string(),
        format!(
            "INSERT INTO portcullis.approval_log (n, replica, command) VALUES (1000, 'a', '{}')",
            forged.replace('\'', "''")
        ),
        "LOCK TABLE portcullis.approval_log".to_string(),
    ] {
        let e = other.batch_execute(&sql).await.unwrap_err();
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e:?}");
    }
    assert!(!run.is_finished(), "still held");
    a_store.deny(&request.id, &dba("carol"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());
}

/// A replica refuses a log the upstream role can reach: held statements
/// are refused rather than approved through a log clients could write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_the_clients_role_can_reach_is_refused() {
    let (stack, _, _b) = replicas(None).await;
    let a_store = store(&stack.gateway);
    // Wait for the schema, then open it to the clients' role.
    let agent = agent_on(&stack, stack.addr).await;
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = 49", &[]).await });
    let request = pending(&a_store).await;
    a_store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());
    stack.cluster.psql("app", "GRANT USAGE ON SCHEMA portcullis TO app").unwrap();
    // Every connection of the log checks it: the next one is refused.
    stack
        .cluster
        .psql("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'portcullis_log'")
        .unwrap();
    // The first try may meet the connection just cut; the next connects
    // again, and is refused too.
    for _ in 0..2 {
        let e = within(agent.execute("DELETE FROM orders WHERE id = 49", &[])).await.unwrap_err();
        assert!(format!("{e:?}").contains("could not be opened"), "{e:?}");
    }
    assert_eq!(orders_left_direct(&stack, 49).await, 1);
}

async fn orders_left_direct(stack: &Stack, id: i32) -> i64 {
    let owner = stack.direct().await;
    owner.query_one("SELECT count(*) FROM orders WHERE id = $1", &[&id]).await.unwrap().get(0)
}

/// A held statement whose entry is larger than the gateway's message
/// limit (control characters take six bytes each in JSON) still reaches
/// the other replica, which decides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_held_statement_is_shared_whatever_the_message_limit() {
    let (stack, _, b) = replicas_with(None, "[limits]\nmax_message_bytes = 65536\n", |b| b).await;
    let (a_store, b_store) = (store(&stack.gateway), store(&b));
    let agent = agent_on(&stack, stack.addr).await;
    let sql = format!("DELETE FROM orders WHERE id = 50 AND '{}' <> ''", "\u{1}".repeat(12_000));
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute(sql.as_str(), &[]).await });
    let request = pending(&a_store).await;
    let on_b = pending(&b_store).await;
    assert_eq!(on_b.id, request.id);
    b_store.deny(&on_b.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());
}

/// Each replica publishes its synced audit checkpoints beside the
/// approvals; a published checkpoint catches its log cut back on the
/// gateway's disk, which the log alone would take for a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_publishes_its_audit_checkpoints_and_they_catch_a_cut_log() {
    let keys = portcullis_testkit::audit_keys!("replica-checkpoints");
    let extra = format!(
        "[audit]\ndir = \"audit-a\"\nsigning_key_file = \"{}\"\ncheckpoint_interval = \"200ms\"\n",
        keys.join("audit-key.pem").display()
    );
    let (stack, b_addr, _b) = replicas_with(None, &extra, |a| a.replace("\"audit-a\"", "\"audit-b\"")).await;
    let (on_a, on_b) = (agent_on(&stack, stack.addr).await, agent_on(&stack, b_addr).await);
    for i in 0..20 {
        on_a.simple_query(&format!("SELECT count(*) FROM orders WHERE id > {i}")).await.unwrap();
        on_b.simple_query("SELECT count(*) FROM customers").await.unwrap();
    }
    // Read as an administrator (the log's schema is closed to the
    // upstream role).
    let (admin, connection) =
        tokio_postgres::connect(&stack.cluster.connection_string("app"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let latest = |replica: &'static str| {
        let admin = &admin;
        async move {
            for _ in 0..400 {
                let rows = admin
                    .query(
                        "SELECT size, note FROM portcullis.audit_checkpoints WHERE replica = $1 \
                         ORDER BY size DESC LIMIT 1",
                        &[&replica],
                    )
                    .await
                    .unwrap();
                if let Some(row) = rows.first().filter(|r| r.get::<_, i64>(0) > 10) {
                    return (row.get::<_, i64>(0), row.get::<_, String>(1));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("replica {replica} published no checkpoint past 10 records");
        }
    };
    let (size_a, note_a) = latest("a").await;
    let (size_b, _) = latest("b").await;
    assert!(size_a > 10 && size_b > 10);
    assert!(note_a.starts_with("portcullis\n"), "{note_a}");

    // The log as it is now, copied, verifies against the published note.
    let copy = keys.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for (_, path) in portcullis_audit::writer::list_segments(&stack.dir.join("audit-a")).unwrap() {
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    let published = keys.join("published.checkpoint");
    // Saved as `psql -At` prints it: one newline more.
    std::fs::write(&published, format!("{note_a}\n")).unwrap();
    let verify = |with: bool| {
        let mut cmd = portcullis_testkit::bin!();
        cmd.args(["audit", "verify", "--key"]).arg(keys.join("audit-key.pub"));
        if with {
            cmd.arg("--checkpoint").arg(&published);
        }
        let out = cmd.arg(&copy).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, said) = verify(true);
    assert_eq!(code, Some(0), "{said}");

    // Cut back to its first records: alone, it reads as a crash; against
    // the published checkpoint, as what it is.
    let (_, first) = portcullis_audit::writer::list_segments(&copy).unwrap().remove(0);
    let text = std::fs::read(&first).unwrap();
    let kept: Vec<&[u8]> = text.split(|&b| b == b'\n').take(6).collect();
    std::fs::write(&first, [kept.join(&b'\n'), b"\n".to_vec()].concat()).unwrap();
    let (code, said) = verify(false);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = verify(true);
    assert_eq!(code, Some(1), "{said}");
}
