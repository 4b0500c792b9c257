//! The web inbox at `/` of the admin address, in headless Chromium: an
//! approver signs in with their token, sees an agent's held DELETE arrive
//! (with the agent's reason and the plan), approves it with a click, and
//! the agent's psql prints `DELETE 1`. Denials, tokens the gateway refuses,
//! and text from the agent shown as text, never as markup.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::process::Output;
use std::sync::Arc;

use portcullis_testkit::browser::Browser;
use portcullis_testkit::stack::Stack;
use serde_json::json;

/// A gateway with approvals on, its admin server (API and inbox) on a
/// port of its own, and its URL.
async fn gateway_with_inbox() -> (Stack, String) {
    let stack = Stack::builder().config("[admin]\nlisten = \"127.0.0.1:9\"\n[approvals]\ntimeout = \"60s\"\n").start();
    let store = stack.gateway.approvals.clone().expect("approvals are on with [admin]");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(pg_proxy::admin::serve(listener, Arc::clone(&stack.gateway), store));
    (stack, url)
}

/// psql as the agent, running `sql` (each a `-c`) on a thread of its own.
fn agent_psql(stack: &Stack, sql: &[&str]) -> std::thread::JoinHandle<Output> {
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let mut cmd = stack.program("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &stack.conninfo(&token)]);
    for s in sql {
        cmd.args(["-c", s]);
    }
    std::thread::spawn(move || cmd.output().unwrap())
}

fn sign_in(browser: &Browser, url: &str, token: &str) {
    browser.goto(url);
    browser.type_into_field("#token", token);
    browser.click_on("#sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_a_held_delete_in_the_inbox_and_psql_prints_delete_1() {
    let (stack, url) = gateway_with_inbox().await;
    let bob = stack.token("bob", &["dba"], None);
    tokio::task::block_in_place(|| {
        let browser = Browser::start();
        sign_in(&browser, &url, &bob);
        browser.wait_until("the signed-in inbox", || browser.page_text().contains("signed in as bob").then_some(()));
        browser.wait_until("the live stream", || browser.find(".live[data-state=\"live\"]").map(|_| ()));
        // The token stays in the tab's sessionStorage, out of the URL.
        let stored = browser.execute("return sessionStorage.getItem('portcullis.token')", serde_json::json!([]));
        assert_eq!(stored.as_str(), Some(bob.as_str()));
        let location = browser.execute("return location.href", serde_json::json!([]));
        assert!(!location.as_str().unwrap().contains(&bob[..20]), "{location}");

        let psql = agent_psql(
            &stack,
            &["SET portcullis.reason = 'INC-7: duplicate order from the import'", "DELETE FROM orders WHERE id = 31"],
        );
        // Arrives live, with what an approver must see.
        const CARD: &str = "article[data-request]";
        browser.wait_for(CARD);
        browser.wait_until("the plan", || browser.text_of(CARD).contains("about 1 row").then_some(()));
        let shown = browser.text_of(CARD);
        for part in [
            "copilot-7 for alice",
            "DELETE FROM orders WHERE id = 31",
            "INC-7: duplicate order from the import",
            "agent-deletes-need-approval",
            "touches public.orders",
            "expires in",
        ] {
            assert!(shown.contains(part), "{part}: {shown}");
        }
        // The picture in the README: `target/tmp/inbox.png`.
        browser.resize(1100, 560);
        browser.screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inbox.png"));

        browser.type_into_field("article[data-request] .reason", "checked the import log");
        browser.click_on("article[data-request] .approve");
        let out = psql.join().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout.trim(), "SET\nDELETE 1", "{stderr}");
        browser.wait_gone("article[data-request]");
        assert!(browser.page_text().contains("Nothing waits for you"));

        // The decided tab tells who approved it.
        browser.click_on("button[data-tab=\"decided\"]");
        browser.wait_until("the approval", || browser.text_of(CARD).contains("approved by bob").then_some(()));
        assert!(browser.text_of(CARD).contains("checked the import log"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_needs_a_reason_and_the_agent_is_told_it() {
    let (stack, url) = gateway_with_inbox().await;
    let carol = stack.token("carol", &["dba"], None);
    tokio::task::block_in_place(|| {
        let browser = Browser::start();
        sign_in(&browser, &url, &carol);
        // Markup in what the agent sends is shown as text.
        let psql = agent_psql(&stack, &["DELETE FROM orders WHERE id = 32 /* <img src=x onerror=alert(1)> */"]);
        const CARD: &str = "article[data-request]";
        browser.wait_for(CARD);
        assert!(browser.find("article[data-request] img").is_none(), "the agent's text became markup");
        assert!(browser.text_of(CARD).contains("<img src=x onerror=alert(1)>"));

        let id = browser.execute("return document.querySelector(arguments[0]).dataset.request", json!([CARD]));
        let card = format!("article[data-request=\"{}\"]", id.as_str().unwrap_or_default());
        browser.click_on(&format!("{card} .deny"));
        browser.wait_until("the missing reason", || {
            browser.text_of(&card).contains("A denial needs a reason").then_some(())
        });
        // Another request refreshes the list live: the card, rendered
        // again, still says what is missing.
        let _other = agent_psql(&stack, &["DELETE FROM orders WHERE id = 33"]);
        browser.wait_until("the second request", || browser.page_text().contains("id = 33").then_some(()));
        assert!(browser.text_of(&card).contains("A denial needs a reason"), "{}", browser.page_text());
        browser.type_into_field(&format!("{card} .reason"), "not during the freeze");
        browser.click_on(&format!("{card} .deny"));
        let out = psql.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("denied by carol: not during the freeze"), "{stderr}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_gateway_refuses_does_not_sign_in() {
    let (stack, url) = gateway_with_inbox().await;
    let bob = stack.token("bob", &["dba"], None);
    // The same token with its signature changed.
    let forged = format!("{}x", &bob[..bob.len() - 1]);
    tokio::task::block_in_place(|| {
        let browser = Browser::start();
        sign_in(&browser, &url, &forged);
        browser.wait_until("the refusal", || browser.text_of("#login-error").contains("Token refused").then_some(()));
        assert!(browser.find("#inbox:not([hidden])").is_none());
        let stored = browser.execute("return sessionStorage.getItem('portcullis.token')", serde_json::json!([]));
        assert!(stored.is_null(), "{stored}");
    });
}

/// The page's own headers: its script and style only, no framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_is_served_with_a_policy_that_keeps_it_to_itself() {
    let (_stack, url) = gateway_with_inbox().await;
    tokio::task::block_in_place(|| {
        for (path, kind) in [("", "text/html"), ("inbox.js", "text/javascript"), ("inbox.css", "text/css")] {
            let response = ureq::get(&format!("{url}{path}")).call().unwrap();
            let header = |h: &str| response.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            assert!(header("content-type").starts_with(kind), "{path}");
            let csp = header("content-security-policy");
            assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
            assert_eq!(header("x-content-type-options"), "nosniff");
        }
    });
}

/// The person whose agent asked signs in, sees their agent's request, and
/// gives its reason there; approvers see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_gives_a_reason_in_the_inbox() {
    let (stack, url) = gateway_with_inbox().await;
    let alice = stack.token("alice", &["developers"], None);
    let store = stack.gateway.approvals.clone().unwrap();
    tokio::task::block_in_place(|| {
        let browser = Browser::start();
        sign_in(&browser, &url, &alice);
        let psql = agent_psql(&stack, &["DELETE FROM orders WHERE id = 36"]);
        const CARD: &str = "article[data-request]";
        browser.wait_for(CARD);
        browser.wait_until("the reason button", || browser.find("article[data-request] .justify:not([hidden])"));
        assert!(browser.text_of(CARD).contains("No reason given"));
        browser.type_into_field("article[data-request] .reason", "INC-13: a test order");
        browser.click_on("article[data-request] .justify");
        browser.wait_until("the reason on the page", || {
            browser.text_of(CARD).contains("Their reason: INC-13: a test order").then_some(())
        });
        let request = store.requests(true, std::time::SystemTime::now()).pop().unwrap();
        assert_eq!(request.justification.as_deref(), Some("INC-13: a test order"));
        let bob = pg_proxy::approvals::ledger::Approver::new("bob", ["dba"]);
        let denied = store.deny(&request.id, &bob, "no", std::time::SystemTime::now());
        tokio::runtime::Handle::current().block_on(denied).unwrap();
        assert!(!psql.join().unwrap().status.success());
    });
}
