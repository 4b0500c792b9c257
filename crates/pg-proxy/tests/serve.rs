//! `pg-proxy serve` and `pg-proxy check` as an operator runs them: a real
//! process, SIGHUP reloading the policy (a bad one rejected), SIGTERM
//! waiting for the open session, structured logs without secrets.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::process::signal;
use portcullis_testkit::stack::{Stack, APP_PASSWORD};
use portcullis_testkit::{bin, text};

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pg-proxy serve did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    let stack = Stack::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = stack.path("serve.toml");
    let text_config = std::fs::read_to_string(stack.path("gateway.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text_config).unwrap();

    let check = bin!().arg("check").arg(&config).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains(": ok"), "{}", text(&check.stdout));

    let mut child = bin!()
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let token = stack.token("alice", &["ai-agents"], None);
    let psql = |sql: &str| {
        Command::new(stack.cluster.bin_dir().join("psql"))
            .args(["-X", "-At", "-d"])
            .arg(format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"))
            .args(["-c", sql])
            .env("PGPASSWORD", &token)
            .output()
            .unwrap()
    };
    assert_eq!(text(&psql("SELECT count(*) FROM customers").stdout), "3\n");

    // A policy that forbids customers, reloaded by SIGHUP.
    let policy = stack.path("policy.toml");
    let original = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, original.replace("\"!public.secrets\",", "\"!public.secrets\", \"!public.customers\","))
        .unwrap();
    signal(child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(text(&psql("SELECT count(*) FROM customers").stderr).contains("refused by policy"));
    // A broken one is rejected; the one in force stays.
    std::fs::write(&policy, "version = 1\n[[rule]\n").unwrap();
    signal(child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(text(&psql("SELECT count(*) FROM customers").stderr).contains("refused by policy"));
    assert_eq!(text(&psql("SELECT count(*) FROM orders").stdout), "5000\n");

    // SIGTERM with a session open: the gateway waits for it.
    let mut open = Command::new(stack.cluster.bin_dir().join("psql"))
        .args(["-X", "-At", "-d"])
        .arg(format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"))
        .args(["-c", "SELECT pg_sleep(2), 'slept'"])
        .env("PGPASSWORD", stack.token("dba", &["dba"], None))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(child.id(), "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the gateway waits for the open session");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no new connections after SIGTERM");
    let mut slept = String::new();
    open.stdout.take().unwrap().read_to_string(&mut slept).unwrap();
    assert!(open.wait().unwrap().success());
    assert_eq!(slept, "|slept\n", "the statement finished");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // Logs: JSON lines, the decisions with subject and rule; never a secret.
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.lines().all(|l| l.starts_with('{')), "{logs}");
    assert!(logs.contains("\"subject\":\"alice\"") && logs.contains("statement decided"), "{logs}");
    assert!(logs.contains("policy not reloaded"), "{logs}");
    assert!(!logs.contains(APP_PASSWORD), "the upstream password leaked into the logs");
    assert!(!logs.contains(&token), "a token leaked into the logs");
}

/// With `[admin]`, `pg-proxy serve` holds an agent's DELETE and serves the
/// approvals API: approved over HTTP, psql prints `DELETE 1`.
#[test]
fn serve_holds_for_approval_and_serves_the_admin_api() {
    let stack = Stack::start();
    let (mut child, port, admin) = serve_with_admin(&stack, "");
    let held = held_delete(&stack, port, 30);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let bob = format!("Bearer {}", stack.token("bob", &["dba"], None));
    let base = format!("http://127.0.0.1:{admin}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let mut r = agent.get(format!("{base}/approvals")).header("Authorization", &bob).call().unwrap();
        let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        if let Some(id) = body["approvals"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no request opened: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The approver sees the plan: the gateway explained the DELETE on a
    // connection of its own.
    let plan = loop {
        let mut r = agent.get(format!("{base}/approvals/{id}")).header("Authorization", &bob).call().unwrap();
        let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        if !body["plan"].is_null() {
            break body["plan"][0].clone();
        }
        assert!(Instant::now() < deadline, "no plan: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(plan["state"], "planned", "{plan}");
    assert_eq!(plan["relations"], serde_json::json!(["public.orders"]), "{plan}");
    assert_eq!(plan["estimated_rows"], 1, "{plan}");
    let r = agent
        .post(format!("{base}/approvals/{id}/approve"))
        .header("Authorization", &bob)
        .send(r#"{"reason": "ticket 7"}"#)
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let out = held.join().unwrap();
    assert_eq!(text(&out.stdout), "DELETE 1\n", "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("request {id}")), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("http://127.0.0.1:{admin}/")), "{}", text(&out.stderr));
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// `pg-proxy serve` with the stack's configuration, `extra` and an
/// `[admin]` section, on ports of its own: the process, the gateway's
/// port and the admin port, both answering.
fn serve_with_admin(stack: &Stack, extra: &str) -> (std::process::Child, u16, u16) {
    let (child, port, admin, _) = serve_with_approvals(stack, extra, "");
    (child, port, admin)
}

/// The same, with `approvals` in its `[approvals]` section; also its
/// configuration file.
fn serve_with_approvals(
    stack: &Stack,
    extra: &str,
    approvals: &str,
) -> (std::process::Child, u16, u16, std::path::PathBuf) {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, admin) = (free(), free());
    let config = stack.path(&format!("serve-admin-{port}.toml"));
    let text_config = std::fs::read_to_string(stack.path("gateway.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
        + &format!("\n{extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[approvals]\ntimeout = \"60s\"\n{approvals}\n");
    std::fs::write(&config, text_config).unwrap();
    (serve(&config, port, admin), port, admin, config)
}

/// `pg-proxy serve --config config`, once its gateway and admin ports
/// answer.
fn serve(config: &std::path::Path, port: u16, admin: u16) -> std::process::Child {
    let child =
        bin!().args(["serve", "--config"]).arg(config).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    wait_for_port(port);
    wait_for_port(admin);
    child
}

/// Two `pg-proxy serve` processes with `store = "postgres"` on one
/// database: psql's DELETE held on the first is approved with `pg-proxy
/// approvals` through the second, as a grant; the grant outlives a
/// restart of the first, which lets the next such DELETE through at once.
#[test]
fn two_gateway_processes_share_approvals_and_grants_outlive_a_restart() {
    let stack = Stack::start();
    stack.cluster.create_role("portcullis_log", "log-secret", false).unwrap();
    stack.cluster.psql("app", "GRANT CREATE ON DATABASE app TO portcullis_log").unwrap();
    std::fs::write(stack.path("log-password"), "log-secret\n").unwrap();
    let shared = |name: &str| {
        format!(
            "store = \"postgres\"\nreplica = \"{name}\"\nuser = \"portcullis_log\"\npassword_file = \"{}\"\n",
            stack.path("log-password").display()
        )
    };
    let (mut one, port_one, admin_one, config_one) = serve_with_approvals(&stack, "", &shared("one"));
    let (mut two, _, admin_two, _) = serve_with_approvals(&stack, "", &shared("two"));
    let approvals = |args: &[&str]| {
        bin!()
            .args(["approvals", "--admin", &format!("http://127.0.0.1:{admin_two}")])
            .args(args)
            .env("PORTCULLIS_TOKEN", stack.token("bob", &["dba"], None))
            .output()
            .unwrap()
    };
    let held = held_delete(&stack, port_one, 36);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let out = approvals(&["list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(id) = body["approvals"][0]["id"].as_str() {
            assert_eq!(body["approvals"][0]["replica"], "one", "{body}");
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "the request never reached the second gateway: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = approvals(&["approve", &id, "--reason", "cleanup", "--for", "30m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = held.join().unwrap();
    assert_eq!(text(&out.stdout), "DELETE 1\n", "{}", text(&out.stderr));

    // The first gateway restarts: it reads the log again, grant and all.
    signal(one.id(), "TERM");
    assert!(one.wait().unwrap().success());
    let mut one = serve(&config_one, port_one, admin_one);
    let out = held_delete(&stack, port_one, 37).join().unwrap();
    assert_eq!(text(&out.stdout), "DELETE 1\n", "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("grant"), "the grant let it through: {}", text(&out.stderr));
    for child in [&mut one, &mut two] {
        signal(child.id(), "TERM");
        assert!(child.wait().unwrap().success());
    }
}

/// psql as an agent deleting order `id` through the gateway on `port`, on
/// a thread of its own.
fn held_delete(stack: &Stack, port: u16, id: u32) -> std::thread::JoinHandle<std::process::Output> {
    let token = stack.token("alice", &["ai-agents"], Some("copilot-7"));
    let psql = stack.cluster.bin_dir().join("psql");
    std::thread::spawn(move || {
        Command::new(psql)
            .args(["-X", "-d"])
            .arg(format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"))
            .args(["-c", &format!("DELETE FROM orders WHERE id = {id}")])
            .env("PGPASSWORD", &token)
            .output()
            .unwrap()
    })
}

/// With `[tls]`, the admin server speaks TLS with the gateway's own
/// certificate: the held client is told an https:// address, and
/// `pg-proxy approvals --ca-file` approves through it. Plain HTTP and an
/// untrusted certificate get nowhere.
#[test]
fn the_admin_server_speaks_tls_with_the_gateways_certificate() {
    let stack = Stack::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (stack.path("admin.crt"), stack.path("admin.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert_path.display(), key_path.display());
    let (mut child, port, admin) = serve_with_admin(&stack, &tls);
    let held = held_delete(&stack, port, 33);
    let https = format!("https://127.0.0.1:{admin}");
    let approvals = |admin: &str, args: &[&str], ca: bool| {
        let mut cmd = bin!();
        cmd.args(["approvals", "--admin", admin])
            .args(args)
            .env("PORTCULLIS_TOKEN", stack.token("bob", &["dba"], None));
        if ca {
            cmd.arg("--ca-file").arg(&cert_path);
        }
        cmd.env_remove("PORTCULLIS_ADMIN_CA").output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let out = approvals(&https, &["list", "--json"], true);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(id) = body["approvals"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no request opened: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // A certificate this machine does not trust, and plain HTTP on a TLS
    // port: not reached (exit 3).
    let untrusted = approvals(&https, &["list"], false);
    assert_eq!(untrusted.status.code(), Some(3), "{}", text(&untrusted.stderr));
    let plain = approvals(&format!("http://127.0.0.1:{admin}"), &["list"], false);
    assert_eq!(plain.status.code(), Some(3), "{}", text(&plain.stderr));

    let out = approvals(&https, &["approve", &id, "--reason", "over TLS"], true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = held.join().unwrap();
    assert_eq!(text(&out.stdout), "DELETE 1\n", "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("or at {https}/")), "{}", text(&out.stderr));
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// Every command names the configuration the same way (`--config FILE`,
/// or `PORTCULLIS_CONFIG`), and the long-running ones take the logging
/// switches; text logs written to a file or a pipe carry no colour codes.
#[test]
fn config_and_logging_switches() {
    let stack = Stack::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = stack.path("switches.toml");
    let text_config = std::fs::read_to_string(stack.path("gateway.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text_config).unwrap();

    let by_flag = bin!().args(["check", "--config"]).arg(&config).env_remove("PORTCULLIS_CONFIG").output().unwrap();
    assert_eq!(by_flag.status.code(), Some(0), "{}", text(&by_flag.stderr));
    let by_env = bin!().arg("check").env("PORTCULLIS_CONFIG", &config).output().unwrap();
    assert_eq!(by_env.status.code(), Some(0), "{}", text(&by_env.stderr));
    assert!(text(&by_env.stdout).contains(": ok"), "{}", text(&by_env.stdout));
    let none = bin!().arg("check").env_remove("PORTCULLIS_CONFIG").output().unwrap();
    assert_eq!(none.status.code(), Some(2), "a missing configuration is a usage error");
    assert!(text(&none.stderr).contains("give --config FILE or set PORTCULLIS_CONFIG"), "{}", text(&none.stderr));

    let bad_filter =
        bin!().args(["serve", "--log-level", "pg_proxy=[["]).env("PORTCULLIS_CONFIG", &config).output().unwrap();
    assert_eq!(bad_filter.status.code(), Some(2), "{}", text(&bad_filter.stderr));
    assert!(text(&bad_filter.stderr).contains("--log-level"), "{}", text(&bad_filter.stderr));

    let mut child = bin!()
        .args(["serve", "--log-format", "text", "--log-level", "debug"])
        .env("PORTCULLIS_CONFIG", &config)
        .env_remove("RUST_LOG")
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let psql = Command::new(stack.cluster.bin_dir().join("psql"))
        .args(["-X", "-At", "-d"])
        .arg(format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"))
        .args(["-c", "SELECT count(*) FROM orders"])
        .env("PGPASSWORD", stack.token("alice", &["developers"], None))
        .output()
        .unwrap();
    assert_eq!(text(&psql.stdout), "5000\n", "{}", text(&psql.stderr));
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.contains("pg-proxy listening") && logs.contains("DEBUG"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "no colour codes in a pipe: {logs:?}");
    assert!(!logs.lines().any(|l| l.starts_with('{')), "text, not JSON: {logs}");
}
