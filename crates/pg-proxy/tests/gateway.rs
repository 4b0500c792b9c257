//! The gateway through tokio-postgres, against a real PostgreSQL: login,
//! decisions, masking, row caps, the extended protocol, cancel, session
//! state.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use portcullis_testkit::stack::Stack;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_read_masked_rows_and_are_refused_what_the_policy_denies() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;

    let rows = simple_rows(&agent, "SELECT id, name, email, ssn, card, note FROM customers ORDER BY id").await;
    assert_eq!(rows.len(), 3);
    let alice = &rows[0];
    assert_eq!(alice[1].as_deref(), Some("Alice Martin"));
    assert_eq!(alice[2].as_deref(), Some("****@example.com"), "email mask");
    assert_eq!(alice[3].as_deref(), Some("****6789"), "ssn mask");
    assert_eq!(alice[4].as_deref(), Some("****1111"), "card detector");
    assert_eq!(rows[1][5].as_deref(), Some("card on file: ****1881"), "only the span is replaced");

    // Extended protocol, binary results: the same masks, decodable values.
    let row = agent.query_one("SELECT id, ssn, email FROM customers WHERE id = $1", &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(row.get::<_, String>(1), "****7890");
    assert_eq!(row.get::<_, String>(2), "****@example.org");

    // Refused: DDL, an unbounded DELETE, a secret table.
    for sql in ["DROP TABLE orders", "DELETE FROM orders", "SELECT * FROM secrets"] {
        let e = agent.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e}");
        let message = e.as_db_error().unwrap().message().to_string();
        assert!(message.contains("refused by policy (rule "), "{message}");
    }
    let e = agent.prepare("DROP TABLE orders").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");

    // The session is still usable, and nothing was dropped.
    let count = agent.query_one("SELECT count(*) FROM orders", &[]).await.unwrap();
    assert_eq!(count.get::<_, i64>(0), 5000);

    // People with the exempt group see the real values; developers too for the detector.
    let reader = stack.connect(&["developers", "pii-readers"]).await;
    let rows = simple_rows(&reader, "SELECT ssn FROM customers WHERE id = 1").await;
    assert_eq!(rows[0][0].as_deref(), Some("123-45-6789"));
}

/// The extended protocol: a `Parse` runs nothing, so its errors keep their
/// text for a masked caller; an `Execute` over a masked column that fails
/// has its message withheld, the SQLSTATE kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_errors_are_withheld_only_where_a_masked_value_may_be() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    let e = agent.prepare("SELECT sn FROM customers WHERE id = $1").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
    assert_eq!(e.as_db_error().unwrap().message(), "column \"sn\" does not exist");
    let e = agent.query("SELECT ssn::int FROM customers WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{e}");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("withheld") && !message.contains("6789"), "{message}");
    let e = agent.query("SELECT (id || 'x')::regclass FROM customers WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "relation \"1x\" does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_cap_stops_a_bulk_read_and_the_session_goes_on() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    let e = agent.simple_query("SELECT * FROM orders").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e}");
    assert!(e.as_db_error().unwrap().message().contains("more than 1000 rows"), "{e}");

    // Extended protocol too.
    let e = agent.query("SELECT id FROM orders", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e}");

    // Bounded reads pass; exactly the cap passes.
    let rows = agent.query("SELECT id FROM orders ORDER BY id LIMIT 1000", &[]).await.unwrap();
    assert_eq!(rows.len(), 1000);
    let rows = agent.query("SELECT id FROM orders WHERE id <= 10", &[]).await.unwrap();
    assert_eq!(rows.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_statements_keep_their_order_around_a_refusal() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    let a = agent.prepare("SELECT ssn FROM customers WHERE id = $1").await.unwrap();
    let (r1, r2, r3) = tokio::join!(
        agent.query_one(&a, &[&1i32]),
        agent.query("DROP TABLE customers", &[]),
        agent.query_one(&a, &[&3i32]),
    );
    assert_eq!(r1.unwrap().get::<_, String>(0), "****6789");
    assert_eq!(code(&r2.unwrap_err()), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert_eq!(r3.unwrap().get::<_, String>(0), "****8901");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend() {
    let stack = Stack::start();
    let agent = stack.connect(&["developers"]).await;
    let token = agent.cancel_token();
    let sleeper = tokio::spawn(async move { agent.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_28p01_and_nothing_else() {
    let stack = Stack::start();
    let good = stack.token("alice", &["developers"], None);
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    for token in ["not-a-token".to_string(), String::from_utf8(tampered).unwrap(), String::new()] {
        let e = tokio_postgres::connect(&stack.conninfo(&token), tokio_postgres::NoTls).await.err().unwrap();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(db.code(), &SqlState::INVALID_PASSWORD, "{e}");
        assert_eq!(db.message(), "invalid token");
    }
}

/// A database that accepts the gateway's connection and then says nothing
/// (overloaded, or a stuck pooler): the client, whose token was good, gets
/// a FATAL 08006 naming the login timeout, not a connection closed
/// without a word once the time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_the_login_is_reported_to_the_client() {
    let stack = Stack::start();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let addr = stack.another_gateway("gateway-silent-upstream.toml", |config| {
        let config = config.replace(&format!("port = {}", stack.cluster.port()), &format!("port = {silent_port}"));
        assert!(config.contains(&format!("port = {silent_port}")));
        format!("{config}\n[limits]\nlogin_timeout = \"1s\"\n")
    });
    let port = addr.port();

    let token = stack.token("alice", &["developers"], None);
    let conninfo = format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable password={token}");
    let login = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
    );
    let refused = login.await.expect("the login hangs").err().expect("a login with no database answering");
    let db = refused.as_db_error().unwrap_or_else(|| panic!("an ErrorResponse, not {refused:?}"));
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{refused:?}");
    assert_eq!(db.message(), "the database did not answer within the login timeout (1s)");
    holding.abort();
}

/// A stack whose database also has `evil.orders` (one row, -1), readable
/// by the gateway's upstream role: what a path starting with `evil` reads.
fn stack_with_evil_orders() -> Stack {
    let stack = Stack::start();
    stack
        .cluster
        .psql(
            "app",
            "CREATE SCHEMA evil AUTHORIZATION app; CREATE TABLE evil.orders (id int); \
             INSERT INTO evil.orders VALUES (-1); GRANT USAGE ON SCHEMA evil TO app; \
             GRANT SELECT ON evil.orders TO app",
        )
        .unwrap();
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_follows_the_server() {
    let stack = stack_with_evil_orders();
    let agent = stack.connect(&["ai-agents"]).await;
    agent.simple_query("SET search_path = evil, public").await.unwrap();
    let e = agent.simple_query("SELECT * FROM orders LIMIT 1").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "evil.orders is not public.*: {e}");
    agent.simple_query("RESET search_path").await.unwrap();
    assert_eq!(simple_rows(&agent, "SELECT id FROM orders ORDER BY id LIMIT 1").await.len(), 1);

    // A SET LOCAL ends with its transaction; a rolled-back SET is undone.
    agent.simple_query("BEGIN; SET LOCAL search_path = evil; COMMIT").await.unwrap();
    assert_eq!(simple_rows(&agent, "SELECT id FROM orders ORDER BY id LIMIT 1").await.len(), 1);
    agent.simple_query("BEGIN").await.unwrap();
    agent.simple_query("SET search_path = evil").await.unwrap();
    agent.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(simple_rows(&agent, "SELECT id FROM orders ORDER BY id LIMIT 1").await.len(), 1);
    // set_config, in one string with the read: judged with the new path.
    let e = agent
        .simple_query("SELECT set_config('search_path', 'evil', false); SELECT * FROM orders LIMIT 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
}

/// `$user` in the path is the current role's schema: after `SET ROLE`,
/// an unqualified name may be that role's table, and is judged so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_in_the_search_path_follows_set_role() {
    let stack = Stack::with_policy(
        "version = 1\n[settings]\ndefault = \"allow\"\n\n[[rule]]\nname = \"not-evil\"\neffect = \"deny\"\n\
         tables = [\"evil.*\"]\n",
    );
    stack
        .cluster
        .psql(
            "app",
            "CREATE ROLE evil; GRANT evil TO app; CREATE SCHEMA evil AUTHORIZATION evil; \
             CREATE TABLE evil.orders (id int); ALTER TABLE evil.orders OWNER TO evil; \
             INSERT INTO evil.orders VALUES (-1)",
        )
        .unwrap();
    let client = stack.connect(&["developers"]).await;
    client.simple_query("SET search_path = \"$user\", public").await.unwrap();
    assert_eq!(simple_rows(&client, "SELECT id FROM orders ORDER BY id LIMIT 1").await.len(), 1);
    client.simple_query("SET ROLE evil").await.unwrap();
    let e = client.simple_query("SELECT * FROM orders").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "evil.orders through $user: {e}");
    client.simple_query("RESET ROLE").await.unwrap();
    assert_eq!(simple_rows(&client, "SELECT id FROM orders ORDER BY id LIMIT 1").await.len(), 1);
}

/// The server parses a prepared statement again when `search_path`
/// changed since (and re-plans it after DDL): an `Execute` is judged
/// again with the path and the views of the moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_judged_again_when_the_path_or_the_views_change() {
    let stack = stack_with_evil_orders();
    let agent = stack.connect(&["ai-agents"]).await;
    let statement = agent.prepare("SELECT id FROM orders ORDER BY id LIMIT 1").await.unwrap();
    assert_eq!(agent.query(&statement, &[]).await.unwrap().len(), 1);
    agent.simple_query("SET search_path = evil, public").await.unwrap();
    // The server would now read evil.orders.
    let e = agent.query(&statement, &[]).await.unwrap_err();
    assert!(format!("{e:?}").contains("refused by policy"), "{e:?}");
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "evil.orders is not public.*: {e}");
    agent.simple_query("RESET search_path").await.unwrap();
    let rows = agent.query(&statement, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_and_execute_are_judged_by_what_they_run() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    // PREPARE of a refused statement is refused; EXECUTE of a name the
    // session never prepared is refused too (the engine cannot see it).
    let e = agent.simple_query("PREPARE q AS SELECT * FROM secrets").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    let e = agent.simple_query("EXECUTE q").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // An allowed one runs, and EXECUTE keeps the masks of what it reads.
    agent.simple_query("PREPARE c(int) AS SELECT ssn FROM customers WHERE id = $1").await.unwrap();
    let rows = simple_rows(&agent, "EXECUTE c(1)").await;
    assert_eq!(rows[0][0].as_deref(), Some("****6789"));
    agent.simple_query("DEALLOCATE c").await.unwrap();
    let e = agent.simple_query("EXECUTE c(1)").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_cache_follows_ddl() {
    let stack = Stack::start();
    let dba = stack.connect(&["dba"]).await;
    let rows = simple_rows(&dba, "SELECT email FROM customers WHERE id = 1").await;
    assert_eq!(rows[0][0].as_deref(), Some("****@example.com"));
    // The column named email is now the name column: still masked by name.
    dba.simple_query("ALTER TABLE customers RENAME COLUMN email TO contact").await.unwrap();
    dba.simple_query("ALTER TABLE customers RENAME COLUMN name TO email").await.unwrap();
    let rows = simple_rows(&dba, "SELECT email, contact FROM customers WHERE id = 1").await;
    assert_eq!(rows[0][0].as_deref(), Some(policy_core::REDACTED), "an e-mail mask on a value with no @");
    assert_eq!(rows[0][1].as_deref(), Some("alice@example.com"), "contact is not masked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_conforming_strings_follows_the_server() {
    let policy = r#"
version = 1
[settings]
default = "deny"
[[rule]]
name = "admins"
effect = "allow"
groups = ["admins"]
[[rule]]
name = "no-secrets"
effect = "deny"
tables = ["public.secrets"]
"#;
    let stack = Stack::with_policy(policy);
    let admin = stack.connect(&["admins"]).await;
    let trick = r"SELECT 'x\' ; SELECT * FROM secrets; --'";
    // On (the default): the backslash is a character, the quote ends the
    // literal, and a second statement reads secrets.
    let e = admin.simple_query(trick).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // Off: the server reads one literal, and so does the engine.
    admin.simple_query("SET standard_conforming_strings = off").await.unwrap();
    let rows = simple_rows(&admin, trick).await;
    assert_eq!(rows.len(), 1, "one statement, one row");
    admin.simple_query("SET standard_conforming_strings = on").await.unwrap();
    let e = admin.simple_query(trick).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_applies_to_running_sessions_and_a_bad_one_is_rejected() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    assert_eq!(simple_rows(&agent, "SELECT count(*) FROM customers").await[0][0].as_deref(), Some("3"));
    let policy_path = stack.path("policy.toml");
    let original = std::fs::read_to_string(&policy_path).unwrap();
    std::fs::write(
        &policy_path,
        original.replace("\"!public.secrets\",", "\"!public.secrets\", \"!public.customers\","),
    )
    .unwrap();
    stack.gateway.reload_policy().unwrap();
    let e = agent.simple_query("SELECT count(*) FROM customers").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    std::fs::write(&policy_path, "version = 1\n[[rule]]\nname = 1\n").unwrap();
    let err = stack.gateway.reload_policy().unwrap_err();
    assert!(err.contains("policy.toml:3"), "{err}");
    let e = agent.simple_query("SELECT count(*) FROM customers").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "the policy in force is kept: {e}");
}

/// A prepared statement run again after a reload is masked under the new
/// policy (the session drops the masking plans of the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_changes_the_masking_of_a_prepared_statement() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    let by_id = agent.prepare("SELECT ssn FROM customers WHERE id = $1").await.unwrap();
    for _ in 0..3 {
        assert_eq!(agent.query_one(&by_id, &[&1i32]).await.unwrap().get::<_, String>(0), "****6789");
    }
    let policy_path = stack.path("policy.toml");
    let original = std::fs::read_to_string(&policy_path).unwrap();
    let changed = original.replace("strategy  = \"partial\"\nshow_last = 4", "strategy  = \"partial\"\nshow_last = 2");
    assert_ne!(changed, original, "the test's policy edit no longer applies");
    std::fs::write(&policy_path, changed).unwrap();
    stack.gateway.reload_policy().unwrap();
    assert_eq!(agent.query_one(&by_id, &[&1i32]).await.unwrap().get::<_, String>(0), "****89");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_pipelines_never_leak_a_masked_value() {
    let stack = Stack::start();
    let agent = stack.connect(&["ai-agents"]).await;
    let by_id = agent.prepare("SELECT ssn, note FROM customers WHERE id = $1").await.unwrap();
    let expected = ["****6789", "****7890", "****8901"];
    for round in 0..5 {
        let mut futures = Vec::new();
        for i in 0..60 {
            let agent = &agent;
            let by_id = &by_id;
            futures.push(async move {
                match i % 4 {
                    // Refusals, unnamed statements and named ones interleaved.
                    0 => agent.query("DROP TABLE customers", &[]).await.map(|_| None),
                    1 => agent
                        .query("SELECT ssn FROM customers WHERE id = $1", &[&(1 + i % 3)])
                        .await
                        .map(|r| Some((1 + i % 3, r[0].get::<_, String>(0)))),
                    _ => {
                        agent.query_one(by_id, &[&(1 + i % 3)]).await.map(|r| Some((1 + i % 3, r.get::<_, String>(0))))
                    }
                }
            });
        }
        for (i, outcome) in futures_join(futures).await.into_iter().enumerate() {
            match outcome {
                Ok(Some((id, ssn))) => assert_eq!(ssn, expected[(id - 1) as usize], "round {round}, query {i}"),
                Ok(None) => panic!("round {round}, query {i}: DROP TABLE was allowed"),
                Err(e) => {
                    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "round {round}, query {i}: {e}")
                }
            }
        }
    }
}

/// Polls all futures concurrently (tokio-postgres pipelines what is polled together).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_payloads_pass_through_the_detectors() {
    let stack = Stack::start();
    let token = stack.token("alice", &["developers"], None);
    let (listener, mut connection) =
        tokio_postgres::connect(&stack.conninfo(&token), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Drive the connection and pass on the payloads of its notifications.
    tokio::spawn(std::future::poll_fn(move |cx| loop {
        match connection.poll_message(cx) {
            std::task::Poll::Ready(Some(Ok(tokio_postgres::AsyncMessage::Notification(n)))) => {
                let _ = tx.send(n.payload().to_string());
            }
            std::task::Poll::Ready(Some(Ok(_))) => {}
            std::task::Poll::Ready(_) => return std::task::Poll::Ready(()),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    }));
    listener.batch_execute("LISTEN payments").await.unwrap();
    // Another session (on the server directly) notifies with a card number in the payload.
    stack.cluster.psql("app", "NOTIFY payments, 'paid with 4111 1111 1111 1111'").unwrap();
    let payload = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(payload, "paid with ****1111");
}

/// A client that writes a long pipeline before reading (tokio-postgres
/// writes while it reads): the gateway keeps reading the server's answers
/// while the client's requests wait to be written, so neither side stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pipeline_with_large_answers_does_not_stall() {
    let stack = Stack::start();
    let dev = stack.connect(&["developers"]).await;
    let stmt = dev.prepare("SELECT $1::int AS i, repeat('x', 2000) AS pad").await.unwrap();
    let n = 20_000;
    let futures: Vec<_> = (0..n)
        .map(|i: i32| {
            let dev = &dev;
            let stmt = &stmt;
            async move { dev.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
        })
        .collect();
    let all = tokio::time::timeout(std::time::Duration::from_secs(120), futures_join(futures))
        .await
        .expect("the pipeline stalled");
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32);
    }
}

/// The catalog's own connection, ended by the server since its last use
/// (a restart, an idle timeout, `pg_terminate_backend`), is replaced at
/// the next lookup: the views read after it are the database's, not a
/// refusal naming a connection that was already gone (the first session
/// after a database restart was refused so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_connection_the_server_ended_is_replaced_at_the_next_lookup() {
    let stack = Stack::start();
    let catalog = &stack.gateway.catalog;
    let views = catalog.definitions("app").await;
    assert_eq!(views.borrow().unavailable_reason(), None);
    let direct = stack.direct().await;
    let end_the_catalog_s_backend = || async {
        direct
            .simple_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'portcullis-catalog'",
            )
            .await
            .unwrap();
        for _ in 0..100 {
            let left: i64 = direct
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'portcullis-catalog'", &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the catalog's backend did not end");
    };

    // The views, read again on the ended connection's successor.
    end_the_catalog_s_backend().await;
    catalog.invalidate("app").await;
    assert_eq!(views.borrow().unavailable_reason(), None, "the views after the catalog's connection ended");

    // A table looked up on the ended connection's successor.
    end_the_catalog_s_backend().await;
    let oid: u32 = direct.query_one("SELECT 'public.orders'::regclass::oid", &[]).await.unwrap().get(0);
    let tables = catalog.tables("app", &[oid]).await;
    assert_eq!(tables.get(&oid).map(|t| t.name.as_str()), Some("orders"), "{tables:?}");
}
