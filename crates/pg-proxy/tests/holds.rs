//! Holds, the record sink and the session registry through the running
//! gateway, with tokio-postgres as the client and a scripted hold handler
//! and record sink plugged in (`Gateway::set_hooks`): a held statement is
//! released, refused, cancelled by the client's `CancelRequest`, timed out,
//! or abandoned by a client that leaves; a failing sink refuses with
//! `58030`, a slow one delays, and records carry the bound parameters.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pg_proxy::session::hold::{HoldHandler, HoldOutcome, HoldRequest, Holding};
use pg_proxy::session::record::{Record, TestSink, TestSinkMode};
use pg_proxy::session::registry::Activity;
use pg_proxy::session::SessionHooks;
use portcullis_testkit::stack::Stack;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

/// A hold handler the test answers by hand.
#[derive(Debug)]
struct Scripted {
    requests: Mutex<mpsc::UnboundedSender<(HoldRequest, oneshot::Sender<HoldOutcome>)>>,
}

impl HoldHandler for Scripted {
    fn hold(&self, request: HoldRequest) -> Holding {
        let (tx, rx) = oneshot::channel();
        if let Ok(s) = self.requests.lock() {
            let _ = s.send((request, tx));
        }
        Holding {
            notice: None,
            outcome: Box::pin(async move {
                rx.await.unwrap_or(HoldOutcome::Refuse { reason: "the handler went away".into() })
            }),
        }
    }
}

type Requests = mpsc::UnboundedReceiver<(HoldRequest, oneshot::Sender<HoldOutcome>)>;

fn with_holds(stack: &Stack, timeout: Duration) -> Requests {
    let (tx, rx) = mpsc::unbounded_channel();
    stack.gateway.set_hooks(SessionHooks {
        hold_handler: Some(Arc::new(Scripted { requests: Mutex::new(tx) })),
        hold_timeout: timeout,
        ..SessionHooks::default()
    });
    rx
}

async fn agent(stack: &Stack) -> tokio_postgres::Client {
    stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await
}

const DELETE: &str = "DELETE FROM orders WHERE id = -1";

async fn next(requests: &mut Requests) -> (HoldRequest, oneshot::Sender<HoldOutcome>) {
    tokio::time::timeout(Duration::from_secs(20), requests.recv()).await.expect("a hold request").unwrap()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_statement_runs_and_the_registry_shows_it_held() {
    let stack = Stack::start();
    let mut requests = with_holds(&stack, Duration::from_secs(60));
    let client = Arc::new(agent(&stack).await);
    let c = Arc::clone(&client);
    let run = tokio::spawn(async move { c.simple_query(DELETE).await.map(|m| m.len()) });
    let (request, answer) = next(&mut requests).await;
    assert_eq!(&*request.statements[0].sql, DELETE);
    assert_eq!(request.statements[0].decision.rule.as_deref(), Some("agent-deletes-need-approval"));
    let sessions = stack.gateway.sessions.list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].activity, Activity::Held);
    assert_eq!(sessions[0].info.subject, "alice");
    assert_eq!(sessions[0].info.actor.as_deref(), Some("copilot-7"));
    assert_eq!(sessions[0].id, request.session);
    assert!(!run.is_finished(), "the client waits while the statement is held");
    answer.send(HoldOutcome::Release).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(stack.gateway.sessions.list()[0].activity, Activity::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_cancelled_and_timed_out_holds_leave_the_session_usable() {
    let stack = Stack::start();
    let mut requests = with_holds(&stack, Duration::from_secs(2));
    let client = Arc::new(agent(&stack).await);

    // Refused by the handler: 42501 with the reason.
    let c = Arc::clone(&client);
    let run = tokio::spawn(async move { c.simple_query(DELETE).await });
    let (_, answer) = next(&mut requests).await;
    answer.send(HoldOutcome::Refuse { reason: "not during the freeze (bob)".into() }).unwrap();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    assert!(message(&e).contains("not during the freeze (bob)"), "{e}");
    client.simple_query("SELECT 1").await.unwrap();

    // Cancelled by the client's CancelRequest, through the registry.
    let c = Arc::clone(&client);
    let run = tokio::spawn(async move { c.simple_query(DELETE).await });
    let (_, answer) = next(&mut requests).await;
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(answer.is_closed(), "the handler's decision is dropped when the hold ends another way");
    client.simple_query("SELECT 1").await.unwrap();

    // Nobody answers: the hold times out, naming the timeout.
    let c = Arc::clone(&client);
    let run = tokio::spawn(async move { c.simple_query(DELETE).await });
    let (_, _answer) = next(&mut requests).await;
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(message(&e).contains("hold timeout (2s)"), "{e}");
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_a_hold_ends_its_session_at_once() {
    let stack = Stack::start();
    let mut requests = with_holds(&stack, Duration::from_secs(60));
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let (client, connection) = tokio_postgres::connect(&stack.conninfo(&token), tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(connection);
    let run = tokio::spawn(async move { client.simple_query(DELETE).await });
    let (_, mut answer) = next(&mut requests).await;
    run.abort();
    conn.abort();
    tokio::time::timeout(Duration::from_secs(10), answer.closed()).await.expect("the hold ends with the client");
    for _ in 0..100 {
        if stack.gateway.sessions.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stack.gateway.sessions.is_empty(), "{:?}", stack.gateway.sessions.list());
}

/// `Parse`, `Bind`, `Execute` of a statement that needs approval and of a
/// `COMMIT`, then `Terminate` with no `Sync`: the client leaves without waiting, and the
/// statement does not run (it did, unheld, when a batch ended this way
/// skipped the hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_needing_approval_sent_with_terminate_does_not_run() {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;
    let stack = Stack::start();
    let mut requests = with_holds(&stack, Duration::from_secs(60));
    let direct = stack.direct().await;
    let count =
        || async { direct.query_one("SELECT count(*) FROM orders WHERE id = 7", &[]).await.unwrap().get::<_, i64>(0) };
    assert_eq!(count().await, 1);
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let mut raw = portcullis_testkit::wire::Raw::connect(stack.addr, "terminate after execute").await;
    let application = "terminate-after-execute";
    raw.login(&[("user", "agent"), ("database", "app"), ("application_name", application)], &token).await.unwrap();
    let backends = || {
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'");
        tokio::task::block_in_place(|| stack.cluster.psql("postgres", &sql)).unwrap().parse::<i64>().unwrap()
    };
    assert_eq!(backends(), 1);
    let mut batch = BytesMut::new();
    frontend::parse("", "DELETE FROM orders WHERE id = 7", [], &mut batch).unwrap();
    frontend::bind("", "", [], [], |_: (), _| Ok(postgres_protocol::IsNull::No), [], &mut batch)
        .map_err(|_| "bind")
        .unwrap();
    frontend::execute("", 0, &mut batch).unwrap();
    // A COMMIT in the batch, or the server's exit would undo the DELETE.
    frontend::parse("", "COMMIT", [], &mut batch).unwrap();
    frontend::bind("", "", [], [], |_: (), _| Ok(postgres_protocol::IsNull::No), [], &mut batch)
        .map_err(|_| "bind")
        .unwrap();
    frontend::execute("", 0, &mut batch).unwrap();
    frontend::terminate(&mut batch);
    raw.send(&batch).await;
    raw.expect_closed().await;
    for _ in 0..100 {
        if stack.gateway.sessions.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stack.gateway.sessions.is_empty(), "{:?}", stack.gateway.sessions.list());
    // The server's side is over too: whatever reached it has run.
    for _ in 0..100 {
        if backends() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backends(), 0, "the server's session ended");
    assert!(requests.try_recv().is_err(), "no hold for a client that left");
    assert_eq!(count().await, 1, "the DELETE never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_sink_refuses_with_58030_and_records_carry_parameters() {
    let stack = Stack::start();
    let sink = TestSink::new(TestSinkMode::Accept);
    stack.gateway.set_hooks(SessionHooks { record_sink: Arc::new(sink.clone()), ..SessionHooks::default() });
    let client = agent(&stack).await;
    let rows = client.query("SELECT id FROM orders WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let records = sink.records();
    let statement = records
        .iter()
        .find_map(|r| match r {
            Record::Statement(s) if &*s.sql == "SELECT id FROM orders WHERE id = $1" => Some(s),
            _ => None,
        })
        .expect("the Execute is recorded");
    // tokio-postgres binds an int4 in binary: shown as hex.
    assert_eq!(statement.parameters, vec![Some("\\x00000001".to_string())]);

    sink.set_mode(TestSinkMode::Fail("the audit disk is full".into()));
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::IO_ERROR), "{e}");
    assert!(message(&e).contains("the audit disk is full"), "{e}");
    let e = client.query("SELECT id FROM orders WHERE id = $1", &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::IO_ERROR), "{e}");

    sink.set_mode(TestSinkMode::Delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    client.simple_query("SELECT 1").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "forwarded only once the record was written");
}

/// A session whose client reads nothing takes its sink's answer all the
/// same: the answer may hold what other sessions wait for (the audit
/// log's writer lock goes to the next waiter when released), so it is not
/// left waiting until the client reads. The client sends a statement with
/// a large result and one more, then stops reading: the gateway's write
/// to it stalls on the first result while the second one's record waits
/// for the (slow) sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_s_answer_is_taken_while_the_client_reads_nothing() {
    let stack = Stack::start();
    let sink = TestSink::new(TestSinkMode::Delay(Duration::from_millis(200)));
    stack.gateway.set_hooks(SessionHooks { record_sink: Arc::new(sink.clone()), ..SessionHooks::default() });
    let second = "SELECT 'after the large result'";
    let mut raw = stack.agent_stalled_after_a_large_result(second).await.with_wait(Duration::from_secs(60));
    let recorded = || sink.records().iter().any(|r| matches!(r, Record::Statement(s) if &*s.sql == second));
    let mut waited = Duration::ZERO;
    while !recorded() && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert!(recorded(), "the second statement's record was not taken while the client read nothing");
    // The client reads again: both results, the session usable.
    let large = raw.until_ready().await;
    assert_eq!(large.rows.len(), 900, "{:?}", large.errors);
    let after = raw.until_ready().await;
    assert_eq!(after.first_values(), vec![Some("after the large result".to_string())], "{:?}", after.errors);
}
