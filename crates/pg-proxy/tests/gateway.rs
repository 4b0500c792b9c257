//! The gateway through tokio-postgres, against a real PostgreSQL: login,
//! decisions, masking, row caps, the extended protocol, cancel, session
//! state.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod support;

use support::Stack;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_follows_the_server() {
    let stack = Stack::start();
    stack
        .cluster
        .psql(
            "app",
            "CREATE SCHEMA evil AUTHORIZATION app; CREATE TABLE evil.orders (id int); \
             GRANT USAGE ON SCHEMA evil TO app",
        )
        .unwrap();
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
