//! Approvals through the running gateway, with the in-memory store and
//! its hold handler plugged in: an agent's DELETE is held, the client is
//! told the request's id, and it runs when a person in the rule's approver
//! group approves it; denials, the approver rules, grants, the binding to
//! exactly the held execution, and requests withdrawn when the session
//! stops waiting. Clients: tokio-postgres and psql.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pg_proxy::approvals::ledger::{Approver, LedgerError, Progress, Request, State};
use pg_proxy::approvals::plan::{ServerPlanner, StatementPlan};
use pg_proxy::approvals::store::{ApprovalHandler, ApprovalStore, HandlerSettings};
use pg_proxy::session::SessionHooks;
use portcullis_testkit::stack::Stack;
use tokio_postgres::error::SqlState;

fn with_approvals(stack: &Stack, timeout: Duration) -> Arc<ApprovalStore> {
    let store = Arc::new(ApprovalStore::new(Duration::from_secs(8 * 3600)));
    let settings = HandlerSettings { timeout, admin_url: Some("http://127.0.0.1:9/".into()) };
    stack.gateway.set_hooks(SessionHooks {
        hold_handler: Some(Arc::new(
            ApprovalHandler::new(Arc::clone(&store), settings)
                .with_planner(Arc::new(ServerPlanner::new(stack.gateway.target.clone()))),
        )),
        hold_timeout: timeout,
        ..SessionHooks::default()
    });
    store
}

/// The admin server (API and inbox) over `store`, on a port of its own:
/// its base URL, `http://127.0.0.1:PORT`.
async fn serve_admin(stack: &Stack, store: &Arc<ApprovalStore>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(pg_proxy::admin::serve(listener, Arc::clone(&stack.gateway), Arc::clone(store)));
    base
}

/// The state of request `id` once it is no longer pending (or after 20 s).
async fn settled(store: &ApprovalStore, id: &str) -> State {
    for _ in 0..400 {
        let state = store.request(id, SystemTime::now()).unwrap().state;
        if !state.is_pending() {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.request(id, SystemTime::now()).unwrap().state
}

/// The one pending request, once there is one.
async fn pending(store: &ApprovalStore) -> Request {
    for _ in 0..400 {
        let mut found = store.requests(true, SystemTime::now());
        if let Some(r) = found.pop() {
            assert!(found.is_empty(), "one pending request: {found:?}");
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no request was opened");
}

fn dba(name: &str) -> Approver {
    Approver::new(name, ["dba"])
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// How many of these orders are left, asked of the server directly.
async fn orders_left(stack: &Stack, ids: &str) -> i64 {
    let owner = stack.direct().await;
    let row = owner.query_one(&format!("SELECT count(*) FROM orders WHERE id IN ({ids})"), &[]).await.unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_delete_runs_once_a_dba_approves_it_and_nobody_else_can() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&11i32]).await });
    let request = pending(&store).await;
    assert_eq!(request.statements[0].sql, "DELETE FROM orders WHERE id = $1");
    // tokio-postgres binds in binary: shown as `\x` and hex.
    assert_eq!(request.statements[0].parameters, [Some("\\x0000000b".to_string())]);
    assert_eq!((request.requester.subject.as_str(), request.requester.actor.as_deref()), ("alice", Some("copilot-7")));
    assert_eq!(request.rule.as_deref(), Some("agent-deletes-need-approval"));
    assert_eq!(request.approvers, ["dba"]);

    // Alice's own agent (the rule keeps the default: four eyes), an agent
    // acting for a dba, and a person outside the group are refused.
    let now = SystemTime::now();
    let e = store.approve(&request.id, &Approver::new("alice", ["dba"]), "mine", None, now).await.unwrap_err();
    assert!(matches!(e, LedgerError::OwnAgent { .. }), "{e}");
    let mut robot = dba("bob");
    robot.actor = Some("approval-bot".into());
    assert!(matches!(store.approve(&request.id, &robot, "", None, now).await, Err(LedgerError::Agent { .. })));
    let e = store.approve(&request.id, &Approver::new("mallory", ["developers"]), "", None, now).await.unwrap_err();
    assert!(matches!(e, LedgerError::NotAnApprover { .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!run.is_finished(), "still held");

    let progress = store.approve(&request.id, &dba("bob"), "cleanup ticket 42", None, SystemTime::now()).await.unwrap();
    assert_eq!(progress, Progress::Approved { grant: None });
    let deleted = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(orders_left(&stack, "11").await, 0);
    agent.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_is_told_the_request_id_and_prints_delete_1_after_approval() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let psql = {
        let stack_psql = stack.program("psql");
        let port = stack.conninfo(&token);
        std::thread::spawn(move || {
            let mut cmd = stack_psql;
            cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &port, "-c", "DELETE FROM orders WHERE id = 12"]);
            cmd.output().unwrap()
        })
    };
    let request = pending(&store).await;
    store.approve(&request.id, &dba("bob"), "ok", None, SystemTime::now()).await.unwrap();
    let out = psql.join().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "DELETE 1", "{stderr}");
    let notice = format!("NOTICE:  waiting for approval: request {} (agent-deletes-need-approval:", request.id);
    assert!(stderr.contains(&notice), "{stderr}");
    assert!(stderr.contains(&format!("pg-proxy approvals approve {}", request.id)), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_refuses_with_the_approver_and_the_reason() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 13").await });
    let request = pending(&store).await;
    store.deny(&request.id, &dba("carol"), "not during the freeze", SystemTime::now()).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    assert!(message(&e).contains("denied by carol: not during the freeze"), "{e}");
    assert_eq!(orders_left(&stack, "13").await, 1);
    agent.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_releases_exactly_the_held_execution() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    // The same prepared statement, two parameters, two sessions.
    let one = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let two = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let c = Arc::clone(&one);
    let first = tokio::spawn(async move { c.execute("DELETE FROM orders WHERE id = $1", &[&14i32]).await });
    let held_first = pending(&store).await;
    let c = Arc::clone(&two);
    let second = tokio::spawn(async move { c.execute("DELETE FROM orders WHERE id = $1", &[&15i32]).await });
    let held_second = loop {
        let all = store.requests(true, SystemTime::now());
        if let Some(r) = all.into_iter().find(|r| r.id != held_first.id) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(held_second.statements[0].parameters, [Some("\\x0000000f".to_string())]);
    assert_eq!(held_first.fingerprint, held_second.fingerprint, "one shape, two executions");

    store.approve(&held_first.id, &dba("bob"), "14 only", None, SystemTime::now()).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), first).await.unwrap().unwrap().unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the other execution is still held");
    assert!(store.request(&held_second.id, SystemTime::now()).unwrap().state.is_pending());
    assert_eq!(orders_left(&stack, "14, 15").await, 1);
    store.deny(&held_second.id, &dba("bob"), "not 15", SystemTime::now()).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), second).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    assert_eq!(orders_left(&stack, "15").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_the_same_shape_through_for_the_same_agent_only() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 16").await });
    let request = pending(&store).await;
    let progress = store
        .approve(&request.id, &dba("bob"), "cleanup", Some(Duration::from_secs(1800)), SystemTime::now())
        .await
        .unwrap();
    let Progress::Approved { grant: Some(grant) } = progress else { panic!("{progress:?}") };
    tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap();

    // The same shape with another constant: no request, it runs.
    let done = tokio::time::timeout(Duration::from_secs(20), agent.simple_query("DELETE FROM orders WHERE id = 17"))
        .await
        .expect("not held")
        .unwrap();
    assert!(!done.is_empty());
    assert!(store.requests(true, SystemTime::now()).is_empty());
    assert_eq!(orders_left(&stack, "16, 17").await, 0);

    // Another agent of Alice's is held.
    let other = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-8")).await);
    let o = Arc::clone(&other);
    let run = tokio::spawn(async move { o.simple_query("DELETE FROM orders WHERE id = 18").await });
    let held = pending(&store).await;
    assert_eq!(held.requester.actor.as_deref(), Some("copilot-8"));

    // Revoked: the first agent is held again.
    store.revoke(&grant.id, &dba("carol"), SystemTime::now()).await.unwrap();
    store.deny(&held.id, &dba("carol"), "no", SystemTime::now()).await.unwrap();
    assert!(run.await.unwrap().is_err());
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 19").await });
    let again = pending(&store).await;
    assert_eq!(again.requester.actor.as_deref(), Some("copilot-7"));
    store.deny(&again.id, &dba("carol"), "revoked", SystemTime::now()).await.unwrap();
    assert!(run.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_withdrawn_when_the_session_stops_waiting() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(2));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);

    // Cancelled by the client.
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 20").await });
    let request = pending(&store).await;
    agent.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    // The withdrawal is written as the hold ends, beside the client's answer.
    let state = settled(&store, &request.id).await;
    assert!(matches!(state, State::Withdrawn { .. }), "{state:?}");
    let e = store.approve(&request.id, &dba("bob"), "late", None, SystemTime::now()).await.unwrap_err();
    assert!(matches!(e, LedgerError::Decided { state: "withdrawn", .. }), "{e}");

    // Timed out.
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 20").await });
    let request = pending(&store).await;
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::QUERY_CANCELED), "{e}");
    let state = settled(&store, &request.id).await;
    assert!(!state.is_pending(), "{state:?}");
    assert_eq!(orders_left(&stack, "20").await, 1);
    agent.simple_query("SELECT 1").await.unwrap();
}

/// One call to the admin API: its status and its JSON body (`null` when
/// empty).
fn call(method: &str, url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    let request = request.header("Content-Type", "application/json").body(body.to_string()).unwrap();
    let mut response = agent.run(request).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let json = if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap() };
    (status, json)
}

/// Calls the admin API from a blocking thread.
async fn api(method: &str, url: String, token: Option<String>, body: &str) -> (u16, serde_json::Value) {
    let (method, body) = (method.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || call(&method, &url, token.as_deref(), &body)).await.unwrap()
}

/// A GET of a path that answers something other than JSON: its status.
async fn plain_get(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent.get(&url).call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_approves_denies_and_revokes_as_its_callers_may() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let base = format!("{}/api/v1", serve_admin(&stack, &store).await);
    let bob = Some(stack.token("bob", &["dba"], None));
    let carol = Some(stack.token("carol", &["dba"], None));
    let mallory = Some(stack.token("mallory", &["developers"], None));
    let alice = Some(stack.token("alice", &["developers"], None));

    // No token, a bad one.
    let (status, body) = api("GET", format!("{base}/approvals"), None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{body}");
    let (status, _) = api("GET", format!("{base}/approvals"), Some("not-a-token".into()), "").await;
    assert_eq!(status, 401);

    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 21").await });
    let request = pending(&store).await;

    // Bob (dba) and Alice (whose agent asked) see it; Mallory does not.
    let (status, body) = api("GET", format!("{base}/approvals?state=pending"), bob.clone(), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approvals"][0]["id"], request.id.as_str());
    assert_eq!(body["approvals"][0]["statements"][0]["sql"], "DELETE FROM orders WHERE id = 21");
    let (_, body) = api("GET", format!("{base}/approvals"), alice.clone(), "").await;
    assert_eq!(body["approvals"].as_array().map(Vec::len), Some(1), "{body}");
    let (_, body) = api("GET", format!("{base}/approvals"), mallory.clone(), "").await;
    assert_eq!(body["approvals"].as_array().map(Vec::len), Some(0), "{body}");
    let (status, _) = api("GET", format!("{base}/approvals/{}", request.id), mallory.clone(), "").await;
    assert_eq!(status, 404);
    let (status, body) = api("GET", format!("{base}/approvals/{}", request.id), bob.clone(), "").await;
    assert_eq!((status, body["state"]["state"].as_str()), (200, Some("pending")), "{body}");
    // The engine's decision, as approvers may read it.
    let decision = &body["statements"][0]["decision"];
    assert_eq!(decision["verdict"], "require_approval", "{body}");
    assert_eq!(decision["rule"], "agent-deletes-need-approval", "{body}");
    assert_eq!(decision["statements"][0]["written_tables"], serde_json::json!(["public.orders"]), "{body}");

    // Refusals, each with its code.
    let url = format!("{base}/approvals/{}/approve", request.id);
    let (status, body) = api("POST", url.clone(), mallory.clone(), "{}").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_an_approver")), "{body}");
    let (status, body) = api("POST", url.clone(), bob.clone(), "{\"reason\": 1}").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = api("POST", url.clone(), bob.clone(), "{\"grant_for\": \"soon\"}").await;
    assert_eq!(status, 400, "{body}");
    let deny = format!("{base}/approvals/{}/deny", request.id);
    let (status, body) = api("POST", deny.clone(), carol.clone(), "{}").await;
    assert_eq!(status, 400, "a denial needs a reason: {body}");
    let (status, _) = api("POST", format!("{base}/approvals/nope/approve"), bob.clone(), "").await;
    assert_eq!(status, 404);

    // Bob approves with a grant; the statement runs.
    let (status, body) =
        api("POST", url.clone(), bob.clone(), r#"{"reason": "cleanup ticket 42", "grant_for": "30m"}"#).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("approved")), "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap();
    let (status, body) = api("POST", url, carol.clone(), "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("decided")), "{body}");

    let (status, body) = api("GET", format!("{base}/grants"), bob.clone(), "").await;
    assert_eq!((status, body["grants"][0]["id"].as_str()), (200, Some(grant.as_str())), "{body}");
    let (status, _) = api("DELETE", format!("{base}/grants/{grant}"), mallory, "").await;
    assert_eq!(status, 403);
    let (status, _) = api("DELETE", format!("{base}/grants/{grant}"), carol.clone(), "").await;
    assert_eq!(status, 204);
    let (_, body) = api("GET", format!("{base}/grants"), bob.clone(), "").await;
    assert_eq!(body["grants"].as_array().map(Vec::len), Some(0), "{body}");

    // A denial through the API reaches the client.
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 22").await });
    let request = pending(&store).await;
    let deny = format!("{base}/approvals/{}/deny", request.id);
    let (status, body) = api("POST", deny, carol, r#"{"reason": "not during the freeze"}"#).await;
    assert_eq!(status, 200, "{body}");
    let e = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap_err();
    assert!(message(&e).contains("denied by carol: not during the freeze"), "{e}");
    let (_, body) = api("GET", format!("{base}/approvals?state=decided"), bob, "").await;
    assert_eq!(body["approvals"].as_array().map(Vec::len), Some(2), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_no_approver_group_refuses_at_once() {
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml"))
        .unwrap()
        .replace("approvers = [\"dba\"]", "approvers = []");
    let stack = Stack::with_policy(&policy);
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await;
    let e = tokio::time::timeout(Duration::from_secs(20), agent.simple_query("DELETE FROM orders WHERE id = 24"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    assert!(message(&e).contains("names no approver group"), "{e}");
    assert!(store.requests(true, SystemTime::now()).is_empty());
}

/// `f`'s output, which must come within 20 s.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20 s")
}

/// Request `id` once its plans are attached.
async fn planned(store: &ApprovalStore, id: &str) -> Vec<StatementPlan> {
    for _ in 0..400 {
        if let Some(plan) = store.request(id, SystemTime::now()).and_then(|r| r.plan) {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} was never planned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_see_the_plan_in_the_sessions_terms_and_planning_runs_nothing() {
    let stack = Stack::builder()
        .setup_sql(
            "CREATE SCHEMA archive; CREATE TABLE archive.orders (id int PRIMARY KEY, note text); \
             INSERT INTO archive.orders SELECT g, 'old' FROM generate_series(1, 1000) g; ANALYZE archive.orders",
        )
        .start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);

    // Bound parameters (in binary): the generic plan, without the values.
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&26i32]).await });
    let request = pending(&store).await;
    let plans = planned(&store, &request.id).await;
    let [StatementPlan::Planned { sql, estimated_rows, relations, plan, .. }] = plans.as_slice() else {
        panic!("one plan: {plans:?}")
    };
    assert_eq!(sql, "DELETE FROM orders WHERE id = $1");
    assert_eq!(relations, &["public.orders"]);
    assert_eq!(*estimated_rows, 1, "{plan}");
    assert_eq!(plan.pointer("/0/Plan/Operation").and_then(|v| v.as_str()), Some("Delete"), "{plan}");
    // Planned, not run.
    assert_eq!(orders_left(&stack, "26").await, 1);
    store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());

    // The session's search_path names the table: archive.orders here, a
    // thousand rows, of which the range keeps some.
    agent.simple_query("SET search_path = archive, public").await.unwrap();
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id <= 500").await });
    let request = pending(&store).await;
    let plans = planned(&store, &request.id).await;
    let [StatementPlan::Planned { relations, estimated_rows, .. }] = plans.as_slice() else {
        panic!("one plan: {plans:?}")
    };
    assert_eq!(relations, &["archive.orders"]);
    assert!((300..=700).contains(estimated_rows), "about half of 1000: {estimated_rows}");
    store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());
    assert_eq!(orders_left(&stack, "26").await, 1);

    // A change of search_path after the held statement, in the same
    // string, does not move its plan: it names archive.orders still, and
    // what follows the change is not planned.
    let a = Arc::clone(&agent);
    let run =
        tokio::spawn(
            async move { a.simple_query("DELETE FROM orders WHERE id <= 500; SET search_path = public").await },
        );
    let request = pending(&store).await;
    let plans = planned(&store, &request.id).await;
    let [StatementPlan::Planned { relations, .. }, StatementPlan::Unavailable { .. }] = plans.as_slice() else {
        panic!("the delete planned, the SET not: {plans:?}")
    };
    assert_eq!(relations, &["archive.orders"]);
    store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
    assert!(within(run).await.unwrap().is_err());

    // A statement the server cannot plan: its error instead of a plan, and
    // the next plan works (the planner's connection goes on after a
    // statement's error), as do the session's own catalog reads.
    agent.simple_query("SET search_path = public").await.unwrap();
    for (sql, plannable) in
        [("DELETE FROM orders WHERE no_such_column = 1", false), ("DELETE FROM orders WHERE id = 26", true)]
    {
        let a = Arc::clone(&agent);
        let run = tokio::spawn(async move { a.simple_query(sql).await });
        let request = pending(&store).await;
        let plans = planned(&store, &request.id).await;
        match (plans.as_slice(), plannable) {
            ([StatementPlan::Unavailable { why, .. }], false) => assert!(why.contains("no_such_column"), "{why}"),
            ([StatementPlan::Planned { relations, .. }], true) => assert_eq!(relations, &["public.orders"]),
            (other, _) => panic!("{sql}: {other:?}"),
        }
        store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
        assert!(within(run).await.unwrap().is_err());
    }
    agent.simple_query("SELECT * FROM orders WHERE id = 26").await.unwrap();
}

/// Planning reads a held statement as the server will, whatever the
/// client changes after it: a text that is one statement with
/// `standard_conforming_strings` on, and three with it off, is planned as
/// the one, and nothing of the other reading runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_cannot_be_made_to_run_what_the_held_text_hides() {
    // A policy that lets clients change how strings are read.
    let lenient = "version = 1\n[settings]\ndefault = \"allow\"\n\n[[rule]]\nname = \"deletes\"\n\
                   effect = \"require_approval\"\ncommands = [\"DELETE\"]\napprovers = [\"dba\"]\n";
    let stack = Stack::with_policy(lenient);
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let hidden = "DELETE FROM orders WHERE status = 'a\\' OR status = '; COMMIT; DELETE FROM orders WHERE id = 27; --'";
    for then in ["; SET standard_conforming_strings = off", ""] {
        if then.is_empty() {
            // Off before the statement, and read back: the text is then
            // three statements, held whole, and planned as the server
            // reads them, running none.
            agent.simple_query("SET standard_conforming_strings = off").await.unwrap();
        }
        let a = Arc::clone(&agent);
        let sql = format!("{hidden}{then}");
        let run = tokio::spawn(async move { a.simple_query(&sql).await });
        let request = pending(&store).await;
        let plans = planned(&store, &request.id).await;
        let planned: Vec<&str> = plans
            .iter()
            .filter_map(|p| match p {
                StatementPlan::Planned { sql, .. } => Some(sql.as_str()),
                StatementPlan::Unavailable { .. } => None,
            })
            .collect();
        if then.is_empty() {
            // What follows the COMMIT is read with settings the gateway
            // has not seen yet (a COMMIT ends SET LOCAL): not planned.
            assert_eq!(planned, ["DELETE FROM orders WHERE status = 'a\\' OR status = '"], "{plans:?}");
        } else {
            assert_eq!(planned, [hidden], "the delete planned as one statement: {plans:?}");
        }
        store.deny(&request.id, &dba("bob"), "no", SystemTime::now()).await.unwrap();
        assert!(within(run).await.unwrap().is_err());
        assert_eq!(orders_left(&stack, "27").await, 1, "planning ran a statement hidden in the held text");
    }
}

/// A policy whose agent-delete rule wants the requester's reason.
fn policy_wanting_reasons() -> String {
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml"))
        .unwrap()
        .replace("reason   = \"a person approves deletes made by an agent\"", "justification = true");
    assert!(policy.contains("justification = true"));
    policy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_wants_a_reason_takes_it_from_set_portcullis_reason() {
    let stack = Stack::with_policy(&policy_wanting_reasons());
    let store = with_approvals(&stack, Duration::from_secs(60));
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let refused = |e: tokio_postgres::Error| {
        assert_eq!(code(&e), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
        assert!(message(&e).contains("SET portcullis.reason = '...'"), "{e}");
    };

    // No reason: refused at once, saying how to give one.
    refused(within(agent.simple_query("DELETE FROM orders WHERE id = 23")).await.unwrap_err());
    assert!(store.requests(true, SystemTime::now()).is_empty());

    // A reason by simple query: the gateway keeps it, the server never
    // sees it (its placeholder is empty), and the next held statement
    // carries it to the approvers.
    agent.simple_query("SET portcullis.reason = 'INC-42: remove the test order'").await.unwrap();
    let shown = agent.simple_query("SHOW portcullis.reason").await.unwrap();
    let server_has = shown.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(server_has.as_deref(), Some(""), "the reason stays in the gateway");
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&23i32]).await });
    let request = pending(&store).await;
    assert_eq!(request.justification.as_deref(), Some("INC-42: remove the test order"));
    store.approve(&request.id, &dba("bob"), "ok", None, SystemTime::now()).await.unwrap();
    assert_eq!(within(run).await.unwrap().unwrap(), 1);
    assert_eq!(orders_left(&stack, "23").await, 0);

    // It went with that statement: the next one needs its own.
    refused(within(agent.simple_query("DELETE FROM orders WHERE id = 24")).await.unwrap_err());

    // By the extended protocol (prepared, then executed), and forgotten by RESET.
    agent.execute("SET portcullis.reason = 'set then reset'", &[]).await.unwrap();
    agent.simple_query("RESET portcullis.reason").await.unwrap();
    refused(within(agent.simple_query("DELETE FROM orders WHERE id = 24")).await.unwrap_err());
    let set = agent.prepare("SET portcullis.reason = 'by the extended protocol'").await.unwrap();
    agent.execute(&set, &[]).await.unwrap();
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 24").await });
    let request = pending(&store).await;
    assert_eq!(request.justification.as_deref(), Some("by the extended protocol"));
    store.deny(&request.id, &dba("bob"), "not today", SystemTime::now()).await.unwrap();
    let e = within(run).await.unwrap().unwrap_err();
    assert!(message(&e).contains("not today"), "{e}");

    // A SET the server fails (in an aborted transaction, by simple query
    // and by the extended protocol) keeps nothing; a SET to '' or TO
    // DEFAULT clears, answered SET as PostgreSQL would.
    for extended in [false, true] {
        agent.simple_query("BEGIN").await.unwrap();
        agent.simple_query("SELECT 1/0").await.unwrap_err();
        let sql = "SET portcullis.reason = 'said in a failed transaction'";
        let e = if extended { agent.execute(sql, &[]).await } else { agent.simple_query(sql).await.map(|_| 0) };
        assert_eq!(code(&e.unwrap_err()), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        agent.simple_query("ROLLBACK").await.unwrap();
        refused(within(agent.simple_query("DELETE FROM orders WHERE id = 24")).await.unwrap_err());
    }
    for clear in ["SET portcullis.reason = ''", "SET portcullis.reason TO DEFAULT"] {
        agent.simple_query("SET portcullis.reason = 'soon cleared'").await.unwrap();
        let answer = agent.simple_query(clear).await.unwrap();
        assert!(matches!(answer.last(), Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))), "{clear}");
        refused(within(agent.simple_query("DELETE FROM orders WHERE id = 24")).await.unwrap_err());
    }

    // What the gateway cannot take is refused, and nothing of it reaches the server.
    for sql in [
        "SET portcullis.reason = 'with another'; SELECT 1",
        "SET portcullis.reasons = 'a typo'",
        "SET portcullis.reason = 42",
        "SET portcullis.reason = 'misspelt' junk",
    ] {
        let e = agent.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::INVALID_PARAMETER_VALUE), "{sql}: {e}");
        let e = agent.prepare(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(&SqlState::INVALID_PARAMETER_VALUE), "{sql}: {e}");
    }
    assert_eq!(orders_left(&stack, "24").await, 1);
    agent.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gives_a_reason_then_runs_the_held_delete() {
    let stack = Stack::with_policy(&policy_wanting_reasons());
    let store = with_approvals(&stack, Duration::from_secs(60));
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let psql = {
        let mut cmd = stack.program("psql");
        let conninfo = stack.conninfo(&token);
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
            .args(["-c", "SET portcullis.reason TO DEFAULT", "-c", "RESET portcullis.reason"])
            .args(["-c", "SET portcullis.reason = 'ticket 7: duplicate order'"])
            .args(["-c", "DELETE FROM orders WHERE id = 22"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let request = pending(&store).await;
    assert_eq!(request.justification.as_deref(), Some("ticket 7: duplicate order"));
    store.approve(&request.id, &dba("bob"), "ok", None, SystemTime::now()).await.unwrap();
    let out = psql.join().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // Each answered with the tag PostgreSQL gives it.
    assert_eq!(stdout.trim(), "SET\nRESET\nSET\nDELETE 1", "{stderr}");
}

/// `pg-proxy approvals ...` against the admin API: its output and exit
/// code.
async fn cli(admin: &str, token: Option<String>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = portcullis_testkit::bin!();
    command.arg("approvals").args(["--admin", admin]).args(args).env_remove("PORTCULLIS_TOKEN");
    if let Some(t) = token {
        command.env("PORTCULLIS_TOKEN", t);
    }
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_command_lists_shows_approves_and_says_why_not() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let admin = serve_admin(&stack, &store).await;
    let bob = Some(stack.token("bob", &["dba"], None));
    let alice = Some(stack.token("alice", &["dba"], None));

    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&25i32]).await });
    let request = pending(&store).await;

    let (code, out, err) = cli(&admin, bob.clone(), &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ID"), "{out}");
    let row = out.lines().nth(1).unwrap_or_default();
    for part in
        [request.id.as_str(), "pending", "copilot-7 for alice", "agent-deletes-need-approval", "DELETE FROM orders"]
    {
        assert!(row.contains(part), "{part}: {out}");
    }
    planned(&store, &request.id).await;
    let (code, out, _) = cli(&admin, bob.clone(), &["show", &request.id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("DELETE FROM orders WHERE id = $1") && out.contains("$1 = '\\x00000019'"), "{out}");
    assert!(out.contains("about 1 row, touching public.orders"), "{out}");
    assert!(out.contains("why        (no reason given)"), "{out}");

    // Alice may not approve her own agent's statement: exit 1, the reason.
    let (code, _, err) = cli(&admin, alice, &["approve", &request.id]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot approve what their own agent copilot-7 asks"), "{err}");
    // No token, a bad id, a deny without a reason: usage (2).
    assert_eq!(cli(&admin, None, &["list"]).await.0, Some(2));
    assert_eq!(cli(&admin, bob.clone(), &["show", "../grants"]).await.0, Some(2));
    assert_eq!(cli(&admin, bob.clone(), &["deny", &request.id]).await.0, Some(2));
    // Nobody there: 3.
    assert_eq!(cli("http://127.0.0.1:9", bob.clone(), &["list"]).await.0, Some(3));

    let (code, out, err) = cli(&admin, bob.clone(), &["approve", &request.id, "--reason", "ticket 9"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("approved {}", request.id)), "{out}");
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap().unwrap(), 1);

    let (code, out, _) = cli(&admin, bob.clone(), &["--json", "list", "--state", "decided"]).await;
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["approvals"][0]["votes"][0]["reason"], "ticket 9");
    let (code, _, err) = cli(&admin, bob, &["approve", &request.id]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("approved already"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_exactly_the_routes_served() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let base = serve_admin(&stack, &store).await;

    let (status, doc) = api("GET", format!("{base}/api/v1/openapi.json"), None, "").await;
    assert_eq!(status, 200);
    assert_eq!(doc, serde_json::from_str::<serde_json::Value>(pg_proxy::admin::OPENAPI).unwrap());
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> =
        pg_proxy::admin::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Each is served: without a token, 401 from the route (not the
    // fallback's 404), the routes that take none excepted (which the
    // document says take none).
    for (method, path) in &served {
        if pg_proxy::admin::PUBLIC_ROUTES.contains(&path.as_str()) {
            assert_eq!(doc["paths"][path]["get"]["security"], serde_json::json!([]), "{path}");
            let (status, _) = plain_get(format!("{base}{path}")).await;
            assert!(status == 200 || (path == "/readyz" && status == 503), "{path}: {status}");
        } else {
            let (status, body) = api(method, format!("{base}{}", path.replace("{id}", "x")), None, "").await;
            assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{method} {path}");
        }
    }
    let (status, body) = api("GET", format!("{base}/api/v1/nothing"), None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_told_of_requests_and_outcomes_and_retried() {
    use pg_proxy::approvals::webhook::Webhook;
    let stack = Stack::start();
    let (url, deliveries) = portcullis_testkit::webhook::receiver(true);
    let webhook = Webhook::start(url, Some("http://approve.example/".into())).unwrap();
    let store = Arc::new(ApprovalStore::new(Duration::from_secs(3600)).with_webhook(webhook));
    let settings = HandlerSettings { timeout: Duration::from_secs(60), admin_url: None };
    stack.gateway.set_hooks(SessionHooks {
        hold_handler: Some(Arc::new(ApprovalHandler::new(Arc::clone(&store), settings))),
        hold_timeout: Duration::from_secs(60),
        ..SessionHooks::default()
    });
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.execute("DELETE FROM orders WHERE id = $1", &[&26i32]).await });
    let request = pending(&store).await;
    let next = || deliveries.recv_timeout(Duration::from_secs(20)).unwrap();

    // The first try is refused (500), the second, a second later, taken:
    // the receiver sees the same message twice.
    let (first, second) = tokio::task::block_in_place(|| (next(), next()));
    assert_eq!(first, second);
    assert_eq!(first["event"], "requested");
    let text = first["text"].as_str().unwrap();
    assert!(text.contains(&request.id) && text.contains("copilot-7 for alice"), "{text}");
    assert!(text.contains("DELETE FROM orders WHERE id = $1") && text.contains("http://approve.example/"), "{text}");
    // The bound value stays out of the message.
    assert_eq!(first["request"]["statements"][0]["parameters_bound"], 1);
    assert!(first["request"]["statements"][0].get("parameters").is_none(), "{first}");
    assert!(!first.to_string().contains("0000001a"), "{first}");

    store.approve(&request.id, &dba("bob"), "ok", None, SystemTime::now()).await.unwrap();
    run.await.unwrap().unwrap();
    let approved = tokio::task::block_in_place(next);
    assert_eq!(approved["event"], "approved");
    assert!(approved["text"].as_str().unwrap().starts_with("Approved by bob"), "{approved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_tells_approvers_of_each_change_as_it_happens() {
    use std::io::BufRead;
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let url = format!("{}/api/v1/events", serve_admin(&stack, &store).await);
    let bob = stack.token("bob", &["dba"], None);
    // Bob's stream, read line by line on a thread of its own.
    let (lines, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let mut response = ureq::get(&url).header("Authorization", format!("Bearer {bob}")).call().unwrap();
        assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = Arc::new(stack.connect_as("alice", &["ai-agents"], Some("copilot-7")).await);
    let a = Arc::clone(&agent);
    let run = tokio::spawn(async move { a.simple_query("DELETE FROM orders WHERE id = 27").await });
    let request = pending(&store).await;
    // The plan is attached while the request is pending (planning stops
    // once it is decided).
    planned(&store, &request.id).await;
    store.approve(&request.id, &dba("carol"), "fine", None, SystemTime::now()).await.unwrap();
    run.await.unwrap().unwrap();

    // Keep-alive comments come between events: the whole wait is bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    while events.len() < 3 {
        let line = tokio::time::timeout_at(deadline, seen.recv()).await.expect("three events").unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            events.push(serde_json::from_str::<serde_json::Value>(data.trim()).unwrap());
        }
    }
    assert_eq!(
        events,
        [
            serde_json::json!({"event": "requested", "id": request.id}),
            serde_json::json!({"event": "planned", "id": request.id}),
            serde_json::json!({"event": "approved", "id": request.id, "by": ["carol"]}),
        ]
    );
}

/// A rule wanting two people: psql's DELETE waits through the first
/// approval and runs after the second; someone outside the approver group
/// is refused on the way (exit 1, saying why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_waits_for_two_approvers_and_a_stranger_cannot_approve() {
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml"))
        .unwrap()
        .replace("approvers = [\"dba\"]\n", "approvers = [\"dba\"]\napprovals = 2\n");
    assert!(policy.contains("approvals = 2"));
    let stack = Stack::with_policy(&policy);
    let store = with_approvals(&stack, Duration::from_secs(60));
    let admin = serve_admin(&stack, &store).await;
    let psql = {
        let mut cmd = stack.program("psql");
        let conninfo = stack.conninfo(&stack.token("alice", &["ai-agents"], Some("copilot-7")));
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", "DELETE FROM orders WHERE id = 34"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let request = pending(&store).await;
    assert_eq!(request.terms.approvals, 2);

    let mallory = Some(stack.token("mallory", &["developers"], None));
    let (code, _, err) = cli(&admin, mallory, &["approve", &request.id, "--reason", "looks fine"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mallory") && err.contains("dba"), "{err}");

    let bob = Some(stack.token("bob", &["dba"], None));
    let (code, out, err) = cli(&admin, bob.clone(), &["approve", &request.id, "--reason", "one"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 more people must approve"), "{out}");
    // The same person twice is still one.
    let (code, _, err) = cli(&admin, bob, &["approve", &request.id]).await;
    assert_eq!(code, Some(1), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!psql.is_finished(), "one approval of two does not release it");
    assert_eq!(orders_left(&stack, "34").await, 1);

    let carol = Some(stack.token("carol", &["dba"], None));
    let (code, out, err) = cli(&admin, carol, &["approve", &request.id, "--reason", "two"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("the held statement runs"), "{out}");
    let out = tokio::task::spawn_blocking(move || psql.join().unwrap()).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "DELETE 1", "{stderr}");
    assert_eq!(orders_left(&stack, "34").await, 0);
}

/// The notice tells a client that gave no reason how to give one; the
/// person whose agent asked gives it afterwards with their own token, and
/// approvers see it. Neither the agent's token nor an approver's may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_gives_the_reason_after_the_notice_with_the_cli() {
    let stack = Stack::start();
    let store = with_approvals(&stack, Duration::from_secs(60));
    let admin = serve_admin(&stack, &store).await;
    let psql = {
        let mut cmd = stack.program("psql");
        let conninfo = stack.conninfo(&stack.token("alice", &["ai-agents"], Some("copilot-7")));
        cmd.args(["-X", "-d", &conninfo, "-c", "DELETE FROM orders WHERE id = 35"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let request = pending(&store).await;
    let id = request.id.as_str();
    assert_eq!(request.justification, None);

    let agent = Some(stack.token("alice", &["ai-agents"], Some("copilot-7")));
    let (code, _, err) = cli(&admin, agent, &["justify", id, "--reason", "trust me"]).await;
    assert_eq!(code, Some(1), "{err}");
    let bob = Some(stack.token("bob", &["dba"], None));
    let (code, _, err) = cli(&admin, bob.clone(), &["justify", id, "--reason", "for her"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("only alice gives the reason"), "{err}");

    let alice = Some(stack.token("alice", &["developers"], None));
    let (code, out, err) =
        cli(&admin, alice, &["justify", id, "--reason", "INC-12: the order was entered twice"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("reason given for {id}")), "{out}");
    let (code, out, _) = cli(&admin, bob.clone(), &["show", id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("why        INC-12: the order was entered twice"), "{out}");

    store.deny(id, &dba("bob"), "not now", SystemTime::now()).await.unwrap();
    let out = tokio::task::spawn_blocking(move || psql.join().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("`pg-proxy approvals justify {id} --reason '...'`")), "{stderr}");
}
