#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]
//! Running the gateway: the admin server's `/metrics`, `/healthz` and
//! `/readyz`, the sessions API and `pg-proxy sessions`, and live reloads
//! (`POST /api/v1/reload`) of the policy, the key set and the TLS
//! certificate, with sessions that stay up across them.
//!
//! Clients are tokio-postgres, psql and the `pg-proxy` binary; the admin
//! server is called over HTTP with ureq.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::stack::Stack;
use portcullis_testkit::{repo, text};
use serde_json::Value;

/// How long the tests wait for something that should happen (far longer
/// than it should take: the machine is shared).
const PATIENCE: Duration = Duration::from_secs(60);

/// A gateway with the admin server on (members of `platform` are
/// operators), and the admin server's address.
async fn gateway(extra: &str) -> (Stack, SocketAddr) {
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:9\"\noperators = [\"platform\"]\n[approvals]\ntimeout = \"60s\"\n{extra}"
    );
    let stack = Stack::builder().config(&config).start();
    let store = stack.gateway.approvals.clone().expect("approvals are on with [admin]");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pg_proxy::admin::serve(listener, Arc::clone(&stack.gateway), store));
    (stack, addr)
}

/// One HTTP call: the status and the body.
async fn http(method: &str, url: String, token: Option<String>) -> (u16, String) {
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut request = ureq::http::Request::builder().method(method.as_str()).uri(&url);
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let mut response = agent.run(request.body(String::new()).unwrap()).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, body) = http("GET", format!("http://{admin}/metrics"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `line` starts with (a metric and its labels).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_sessions_do_and_name_no_one() {
    let (stack, admin) = gateway("").await;
    let agent = stack.connect_as("alice@example.com", &["ai-agents"], Some("copilot-7")).await;
    // Masked: the policy masks ssn and email for agents.
    let rows = agent.simple_query("SELECT ssn, email FROM customers").await.unwrap();
    assert!(!rows.is_empty());
    // Refused by a named rule.
    let refused = agent.simple_query("CREATE TABLE scratch (i int)").await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501");
    // Stopped at agents-read's 1000 rows (orders has 5000).
    let capped = agent.simple_query("SELECT * FROM orders").await.unwrap_err();
    assert_eq!(capped.code().unwrap().code(), "54000");
    // A token the gateway refuses.
    let out = tokio::task::block_in_place(|| stack.psql("not-a-token", &["-c", "SELECT 1"]));
    assert!(!out.status.success());

    // The refused login's connection is let go after its answer: wait for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = metrics(admin).await;
        if sample(&text, "portcullis_client_connections") == 1.0 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {text}");
    assert_eq!(sample(&text, r#"portcullis_statements_total{verdict="deny",rule="no-ddl-for-agents"}"#), 1.0, "{text}");
    assert!(sample(&text, r#"portcullis_statements_total{verdict="allow",rule="agents-read"}"#) >= 2.0, "{text}");
    assert_eq!(sample(&text, "portcullis_row_cap_hits_total"), 1.0, "{text}");
    assert!(sample(&text, "portcullis_masked_cells_total") >= 6.0, "3 customers, 2 masked columns: {text}");
    assert_eq!(sample(&text, r#"portcullis_logins_total{outcome="ok"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, r#"portcullis_logins_total{outcome="refused"}"#), 1.0, "{text}");
    assert!(sample(&text, "portcullis_decision_seconds_count") >= 3.0, "{text}");
    assert_eq!(sample(&text, r#"portcullis_sessions{state="idle"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, "portcullis_client_connections"), 1.0, "{text}");
    // No identity, client or SQL in a label or anywhere else.
    for secret in ["alice", "copilot", "customers", "CREATE", "127.0.0.1", "ai-agents"] {
        assert!(!text.contains(secret), "{secret:?} in the metrics: {text}");
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_health_does_not() {
    let (stack, admin) = gateway("").await;
    let (status, body) = http("GET", format!("http://{admin}/readyz"), None).await;
    assert_eq!(status, 200, "{body}");
    let checks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(checks["checks"]["upstream"], "ok", "{body}");
    assert_eq!(checks["checks"]["keys"], "ok", "{body}");

    stack.cluster.stop_server().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        let (status, body) = http("GET", format!("http://{admin}/readyz"), None).await;
        if status == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready with the database down: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let checks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(checks["ready"], false);
    assert_eq!(checks["checks"]["upstream"], "failing", "{body}");
    assert_eq!(checks["checks"]["policy"], "ok", "{body}");
    // Which check fails, not what it found: no address, role or password.
    for told in ["127.0.0.1", &stack.cluster.port().to_string(), "app", "refused"] {
        assert!(!body.contains(told), "{told:?} in {body}");
    }
    let (status, body) = http("GET", format!("http://{admin}/healthz"), None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"), "the process serves: healthy, not ready");
    assert!(sample(&metrics(admin).await, "portcullis_upstream_connect_errors_total") >= 1.0);

    stack.cluster.start_again().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http("GET", format!("http://{admin}/readyz"), None).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready again with the database back: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And a new session works without restarting the gateway.
    let client = stack.connect(&["developers"]).await;
    assert_eq!(client.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get::<_, i64>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_see_and_end_their_own_sessions_and_operators_all() {
    let (stack, admin) = gateway("").await;
    let agent = stack.connect_as("alice@example.com", &["ai-agents"], Some("copilot-7")).await;
    let bobs = stack.connect_as("bob@example.com", &["developers"], None).await;
    let alice = stack.token("alice@example.com", &["developers"], None);
    let bob = stack.token("bob@example.com", &["developers"], None);
    let carol = stack.token("carol@example.com", &["platform"], None);
    let alices_agent = stack.token("alice@example.com", &["ai-agents"], Some("copilot-7"));
    let list = |token: &String| http("GET", format!("http://{admin}/api/v1/sessions"), Some(token.clone()));

    let (status, body) = list(&alice).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let sessions = seen["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "alice sees her agent's session only: {body}");
    let session = &sessions[0];
    assert_eq!(session["subject"], "alice@example.com");
    assert_eq!(session["actor"], "copilot-7");
    assert_eq!(session["activity"], "idle");
    assert!(session["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{body}");
    assert!(session["started"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(session["age_seconds"].is_u64(), "{body}");
    let id = session["id"].as_u64().unwrap();

    let (_, body) = list(&carol).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sessions"].as_array().unwrap().len(), 2, "{body}");
    let (status, body) = list(&alices_agent).await;
    assert_eq!(status, 403, "an agent's token is refused: {body}");
    // Even an agent acting for an operator.
    let carols_agent = stack.token("carol@example.com", &["platform"], Some("copilot-9"));
    let (status, body) = list(&carols_agent).await;
    assert_eq!(status, 403, "{body}");
    let reload = http("POST", format!("http://{admin}/api/v1/reload"), Some(carols_agent.clone())).await;
    assert_eq!(reload.0, 403, "{}", reload.1);
    let (status, _) = http("GET", format!("http://{admin}/api/v1/sessions"), None).await;
    assert_eq!(status, 401);

    // Bob cannot end alice's session, nor tell it exists.
    let (status, body) = http("DELETE", format!("http://{admin}/api/v1/sessions/{id}"), Some(bob.clone())).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(agent.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1, "still up");

    // A running statement's fingerprint is listed, and cancel stops it.
    let a = Arc::new(agent);
    let sleeper = Arc::clone(&a);
    let running = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = list(&alice).await;
        let seen: Value = serde_json::from_str(&body).unwrap();
        if seen["sessions"][0]["activity"] == "running" {
            let fingerprint = seen["sessions"][0]["fingerprint"].as_str().unwrap_or_default().to_string();
            assert_eq!(fingerprint.len(), 16, "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never seen running: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = http("POST", format!("http://{admin}/api/v1/sessions/{id}/cancel"), Some(alice.clone())).await;
    assert_eq!(status, 204, "{body}");
    let cancelled = tokio::time::timeout(PATIENCE, running).await.unwrap().unwrap().unwrap_err();
    assert_eq!(cancelled.code().unwrap().code(), "57014", "{cancelled}");
    assert_eq!(a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1, "a cancel leaves the session up");

    // The CLI, as alice: the list, then the end of her agent's session.
    let cli = |args: &[&str]| {
        let out = portcullis_testkit::bin!()
            .arg("sessions")
            .args(["--admin", &format!("http://{admin}")])
            .args(args)
            .env("PORTCULLIS_TOKEN", &alice)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = tokio::task::block_in_place(|| cli(&["list"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains("copilot-7") && out.contains("idle"), "{out}");
    assert!(!out.contains("bob@"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| cli(&["kill", "999999"]));
    assert_eq!(code, Some(1), "no such session: {err}");
    assert!(err.contains("no live session 999999"), "{err}");
    let (code, out, err) = tokio::task::block_in_place(|| cli(&["kill", &id.to_string()]));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("session {id} ended\n"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stack.gateway.sessions.len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", stack.gateway.sessions.list());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = a.simple_query("SELECT 1").await.unwrap_err();
    assert!(ended.is_closed() || ended.code().is_some_and(|c| c.code() == "57P01"), "{ended}");
    assert_eq!(bobs.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1, "bob's session is untouched");
    let (code, _, err) = tokio::task::block_in_place(|| {
        let out = portcullis_testkit::bin!()
            .args(["sessions", "list", "--admin", "http://127.0.0.1:1"])
            .env("PORTCULLIS_TOKEN", &alice)
            .output()
            .unwrap();
        (out.status.code(), (), text(&out.stderr))
    });
    assert_eq!(code, Some(3), "unreachable: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_policy_under_live_sessions_and_a_bad_file_changes_nothing() {
    let (stack, admin) = gateway("").await;
    let agent = stack.connect_as("alice@example.com", &["ai-agents"], Some("copilot-7")).await;
    let count = "SELECT count(*) FROM customers";
    assert_eq!(agent.query_one(count, &[]).await.unwrap().get::<_, i64>(0), 3);
    // Prepared before the reload, run after it: judged again.
    let prepared = agent.prepare("SELECT count(*) FROM customers WHERE id > $1").await.unwrap();
    assert_eq!(agent.query_one(&prepared, &[&0i32]).await.unwrap().get::<_, i64>(0), 3);
    let carol = stack.token("carol@example.com", &["platform"], None);
    let bob = stack.token("bob@example.com", &["developers"], None);
    let reload = |token: &String| http("POST", format!("http://{admin}/api/v1/reload"), Some(token.clone()));

    let (status, body) = reload(&bob).await;
    assert_eq!(status, 403, "not an operator: {body}");

    // Customers fenced off for agents: the live session's next statement
    // is decided by the new policy.
    let policy = std::fs::read_to_string(repo("examples/policy.toml")).unwrap();
    let fenced = policy.replacen("\"!public.secrets\",", "\"!public.secrets\", \"!public.customers\",", 1);
    assert_ne!(fenced, policy);
    std::fs::write(stack.path("policy.toml"), &fenced).unwrap();
    let (status, body) = reload(&carol).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["parts"]["policy"]["reloaded"], true, "{body}");
    assert_eq!(answer["parts"]["keys"]["reloaded"], true, "{body}");
    let refused = agent.query_one(count, &[]).await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501", "{refused}");
    let refused = agent.query_one(&prepared, &[&0i32]).await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501", "a statement prepared before the reload: {refused}");

    // A policy that does not load: refused, said where, the one in force
    // kept, and counted.
    std::fs::write(stack.path("policy.toml"), "[[rule]]\nname = \"broken\"\neffect = \"maybe\"\n").unwrap();
    let (status, body) = reload(&carol).await;
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["parts"]["policy"]["reloaded"], false, "{body}");
    let error = answer["parts"]["policy"]["error"].as_str().unwrap();
    assert!(error.contains("policy.toml:3:"), "file:line:col: {error}");
    let still = agent.query_one(count, &[]).await.unwrap_err();
    assert_eq!(still.code().unwrap().code(), "42501", "the fenced policy stays in force: {still}");
    let text = metrics(admin).await;
    assert_eq!(sample(&text, r#"portcullis_reloads_total{what="policy",outcome="ok"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, r#"portcullis_reloads_total{what="policy",outcome="failed"}"#), 1.0, "{text}");

    // A key set that does not load: refused, the keys kept (new logins work).
    std::fs::write(stack.path("policy.toml"), &policy).unwrap();
    let jwks = stack.path("keys/jwks.json");
    let keys = std::fs::read_to_string(&jwks).unwrap();
    std::fs::write(&jwks, "{\"keys\": ").unwrap();
    let (status, body) = reload(&carol).await;
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["parts"]["policy"]["reloaded"], true, "{body}");
    assert_eq!(answer["parts"]["keys"]["reloaded"], false, "{body}");
    std::fs::write(&jwks, keys).unwrap();
    let fresh = stack.connect(&["developers"]).await;
    assert_eq!(fresh.query_one(count, &[]).await.unwrap().get::<_, i64>(0), 3);
    assert_eq!(agent.query_one(count, &[]).await.unwrap().get::<_, i64>(0), 3, "the original policy again");
    assert_eq!(stack.gateway.sessions.len(), 2, "no session dropped");
}

/// A direct-TLS connection to `addr` that trusts only the certificate
/// `der`: it is made only when the gateway presents that one.
async fn tls_to(
    addr: SocketAddr,
    der: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der.to_vec())).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_presented_to_new_connections_only() {
    use portcullis_testkit::wire::Raw;
    let dir = ScratchDir::new("reload-tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let write_pair = || {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
        pair.cert.der().to_vec()
    };
    let first = write_pair();
    let extra = format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string());
    let (stack, _admin) = gateway(&extra).await;
    let token = stack.token("bob@example.com", &["developers"], None);
    let mut old = tls_to(stack.addr, &first).await.unwrap();
    let mut raw = Raw::new(&mut old, "the connection made before the reload");
    raw.login(&[("user", "bob"), ("database", "app")], &token).await.unwrap();
    assert_eq!(raw.query("SELECT 41 + 1").await.first_values(), vec![Some("42".to_string())]);

    let second = write_pair();
    assert_ne!(first, second);
    let report = stack.gateway.reload().await;
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:?}");
    assert!(tls_to(stack.addr, &first).await.is_err(), "new handshakes no longer present the first certificate");
    let mut new = tls_to(stack.addr, &second).await.expect("new handshakes present the second certificate");
    let mut fresh = Raw::new(&mut new, "a connection made after the reload");
    fresh.login(&[("user", "bob"), ("database", "app")], &token).await.unwrap();
    assert_eq!(fresh.query("SELECT 2").await.first_values(), vec![Some("2".to_string())]);
    assert_eq!(raw.query("SELECT 1").await.first_values(), vec![Some("1".to_string())], "the old one is up");

    // A key that is not the certificate's: refused, the second pair kept.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&key, other.key_pair.serialize_pem()).unwrap();
    let report = stack.gateway.reload().await;
    let tls = report.iter().find(|(what, _)| *what == pg_proxy::metrics::Reloaded::Tls).unwrap();
    assert!(tls.1.as_ref().is_err_and(|e| e.contains("do not make a pair")), "{report:?}");
    assert!(tls_to(stack.addr, &second).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_client_stopped_reading_can_still_be_ended() {
    use tokio::io::AsyncWriteExt;
    let (stack, admin) = gateway("").await;
    let alice = stack.token("alice@example.com", &["developers"], None);
    let mut slow = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    {
        let mut raw = portcullis_testkit::wire::Raw::new(&mut slow, "a client that stops reading");
        raw.login(&[("user", "alice"), ("database", "app")], &alice).await.unwrap();
    }
    let mut query = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT repeat('x', 20000) FROM generate_series(1, 10000)", &mut query)
        .unwrap();
    slow.write_all(&query).await.unwrap();
    // It runs, and the gateway soon waits to write to a client that does
    // not read.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let id = loop {
        let listed = stack.gateway.sessions.list();
        if let Some(s) = listed.iter().find(|s| s.activity == pg_proxy::session::registry::Activity::Running) {
            break s.id;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = http("DELETE", format!("http://{admin}/api/v1/sessions/{id}"), Some(alice.clone())).await;
    assert_eq!(status, 204, "{body}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !stack.gateway.sessions.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session was not ended: {:?}",
            stack.gateway.sessions.list()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_audit_log() {
    let dir = portcullis_testkit::audit_keys!("ops-audit");
    let log = dir.join("log");
    let extra = format!(
        "[audit]\ndir = {:?}\nsigning_key_file = {:?}\ndurability = \"commit\"\n",
        log.display().to_string(),
        dir.join("audit-key.pem").display().to_string()
    );
    let (stack, admin) = gateway(&extra).await;
    let ready = || async {
        let (status, body) = http("GET", format!("http://{admin}/readyz"), None).await;
        let checks: Value = serde_json::from_str(&body).unwrap();
        (status, checks["checks"]["audit"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(ready().await, (200, "ok".to_string()));
    // A sync fails: the statement waiting on it is refused, and the log is
    // failing until a write works again.
    let client = stack.connect(&["developers"]).await;
    stack.gateway.audit.as_ref().unwrap().fail_next_syncs(1);
    let refused = client.simple_query("UPDATE orders SET status = 'held' WHERE id = 1").await.unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "58030", "{refused}");
    assert!(stack.gateway.audit.as_ref().unwrap().is_failing());
    // Its directory gone: not ready.
    let moved = dir.join("moved");
    std::fs::rename(&log, &moved).unwrap();
    assert_eq!(ready().await, (503, "failing".to_string()));
    // Back: a file can be written there again, so ready again (the next
    // record will tell the rest).
    std::fs::rename(&moved, &log).unwrap();
    assert_eq!(ready().await, (200, "ok".to_string()));
    drop(client);
}
