#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]
//! Load and faults, on loopback, bounded in count and time, against
//! `pg-proxy serve` as its own process (so its memory and file descriptors
//! are its own):
//!
//! - a thousand sessions at once, twice, each running reads and writes:
//!   every answer right, no protocol error, and the gateway's memory and
//!   file descriptors back where they were once the clients leave;
//! - PostgreSQL restarted under load: clean errors, no hang, new sessions
//!   as soon as the server is back, without restarting the gateway;
//! - the policy reloaded every second under load: no session dropped, and
//!   no statement decided by a mix of two policies;
//! - ten thousand connects, some abandoned mid-login or mid-query: no
//!   leaked connection, upstream or client side;
//! - a client that stops reading a large result: the gateway's memory stays
//!   bounded and other sessions go on.
//!
//! Figures are printed (`--nocapture`) and recorded in `benches/README.md`;
//! nothing here asserts how fast anything is. The tests run one at a time:
//! each wants the machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_proxy::cluster::{Auth, ClusterOptions};
use portcullis_testkit::stack::{Served, Stack};
use tokio_postgres::NoTls;

/// One test at a time.
static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long anything that should happen may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// A stack for `sessions` clients at once: the cluster trusts loopback
/// logins (the load is on the gateway, not on SCRAM's key stretching) and
/// takes that many connections and more.
fn stack(sessions: u32) -> Stack {
    let options = ClusterOptions {
        auth: Auth::Trust,
        max_connections: sessions + 50,
        extra_config: vec!["log_min_messages = 'fatal'".into(), "log_min_error_statement = 'panic'".into()],
        ..ClusterOptions::default()
    };
    Stack::builder().cluster(options).start()
}

fn serve(stack: &Stack, max_connections: u32) -> Served {
    stack.serve(portcullis_testkit::bin!(), &format!("[limits]\nmax_connections = {max_connections}\n"))
}

/// [`serve`] with [`PATIENCE`] for a login instead of the default 30 s:
/// for a thousand logins at once through a debug build on a shared
/// machine, where what is tested is the sessions, not how fast a burst of
/// logins gets through (the slowest one is printed).
fn serve_patiently(stack: &Stack, max_connections: u32) -> Served {
    stack.serve(
        portcullis_testkit::bin!(),
        &format!("[limits]\nmax_connections = {max_connections}\nlogin_timeout = \"{}s\"\n", PATIENCE.as_secs()),
    )
}

async fn connect(served: &Served, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&served.conninfo(token), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Waits until `f` holds (panics after [`PATIENCE`], naming `what`).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no session's upstream connection is left on the server
/// and the gateway holds no more file descriptors than `fds` (and two
/// for the slack of its runtime).
async fn nothing_left(direct: &tokio_postgres::Client, served: &Served, fds: usize) {
    let deadline = Instant::now() + PATIENCE;
    while upstream_backends(direct).await != 0 {
        assert!(Instant::now() < deadline, "upstream connections left behind: {}", backends_doing(direct).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until("the gateway's sockets to close", || served.open_fds() <= fds + 2).await;
}

/// What the role `app`'s backends are doing (for a failure's message).
async fn backends_doing(direct: &tokio_postgres::Client) -> String {
    let rows = direct
        .query(
            "SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity \
             WHERE usename = 'app' AND pid <> pg_backend_pid() AND application_name NOT LIKE 'portcullis-%' LIMIT 5",
            &[],
        )
        .await
        .unwrap();
    let shown: Vec<String> = rows
        .iter()
        .map(|r| {
            let field = |i: usize| r.get::<_, Option<String>>(i).unwrap_or_default();
            format!("{} {}:{} {:?}", field(0), field(1), field(2), field(3))
        })
        .collect();
    shown.join("; ")
}

/// Backends of the role `app` on the server (the gateway's upstream
/// connections).
async fn upstream_backends(direct: &tokio_postgres::Client) -> i64 {
    let row = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND pid <> pg_backend_pid() \
             AND application_name NOT LIKE 'portcullis-%'",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_at_once_get_right_answers_and_leave_nothing_behind() {
    let _machine = MACHINE.lock().await;
    const SESSIONS: usize = 1000;
    const ROUNDS: i32 = 5;
    let stack = stack(SESSIONS as u32);
    // The stack raised this process's limit as far as it goes.
    let files = portcullis_testkit::stack::raise_open_files_limit();
    assert!(
        files >= SESSIONS as u64 + 200,
        "{SESSIONS} clients at once need more open files than the hard limit allows ({files}): raise it (ulimit -Hn)"
    );
    let served = serve_patiently(&stack, SESSIONS as u32 + 50);
    let token = Arc::new(stack.token("load@example.com", &["ai-agents"], Some("load-agent")));
    let direct = stack.direct().await;
    // What the agents see of a masked column, once.
    let probe = connect(&served, &token).await.unwrap();
    let masked: String = probe.query_one("SELECT ssn FROM customers WHERE id = 1", &[]).await.unwrap().get(0);
    assert_ne!(masked, "123-45-6789");
    drop(probe);
    let cents = format!("SELECT (sum(total) * 100)::bigint FROM orders WHERE id <= {SESSIONS}");
    let cents_before: i64 = direct.query_one(&cents, &[]).await.unwrap().get(0);
    let before = (served.rss_kib(), served.open_fds());

    let mut figures = Vec::new();
    for wave in 1..=2 {
        let started = Instant::now();
        // Every session connects, then all run at once.
        let gate = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
        let wrong = Arc::new(AtomicU64::new(0));
        let slowest_login = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..SESSIONS {
            let (token, gate, wrong, masked, slowest_login) =
                (Arc::clone(&token), Arc::clone(&gate), Arc::clone(&wrong), masked.clone(), Arc::clone(&slowest_login));
            let port = served.port;
            tasks.push(tokio::spawn(async move {
                let conninfo =
                    format!("host=127.0.0.1 port={port} user=load dbname=app sslmode=disable password={token}");
                let began = Instant::now();
                let connected = tokio::time::timeout(PATIENCE, tokio_postgres::connect(&conninfo, NoTls)).await;
                slowest_login
                    .fetch_max(u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                // Every task comes to the gate, logged in or not: one that
                // did not would keep the others, and the test, waiting
                // there for ever.
                gate.wait().await;
                let (client, connection) = match connected {
                    Ok(Ok(connected)) => connected,
                    Ok(Err(e)) => return Err(format!("login: {e:?}")),
                    Err(_) => return Err(format!("login: no answer in {PATIENCE:?}")),
                };
                tokio::spawn(connection);
                let id = i32::try_from(i).unwrap() + 1;
                let update = client
                    .prepare("UPDATE orders SET total = total + 1 WHERE id = $1")
                    .await
                    .map_err(|e| e.to_string())?;
                for round in 0..ROUNDS {
                    let n: i64 = client
                        .query_one("SELECT count(*) FROM customers", &[])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    let ssn: String = client
                        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    let echoed: i32 = client
                        .query_one("SELECT $1::int + 1", &[&(id * 10 + round)])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    let updated = client.execute(&update, &[&id]).await.map_err(|e| e.to_string())?;
                    if n != 3 || ssn != masked || echoed != id * 10 + round + 1 || updated != 1 {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, String>(client)
            }));
        }
        tokio::time::timeout(PATIENCE * 2, gate.wait()).await.expect("the sessions never all came to the gate");
        let slowest_login = Duration::from_millis(slowest_login.load(Ordering::Relaxed));
        let during = (served.rss_kib(), served.open_fds());
        let mut clients = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            match tokio::time::timeout(PATIENCE, t).await.expect("a session hung").unwrap() {
                Ok(c) => clients.push(c),
                Err(e) => errors.push(e),
            }
        }
        assert!(errors.is_empty(), "{} sessions failed, e.g. {:?}", errors.len(), errors.first());
        assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong answers");
        let took = started.elapsed();
        drop(clients);
        nothing_left(&direct, &served, before.1).await;
        let after = (served.rss_kib(), served.open_fds());
        figures.push((wave, during, after, took, slowest_login));
    }
    // Every update landed, once per round.
    let cents_after: i64 = direct.query_one(&cents, &[]).await.unwrap().get(0);
    assert_eq!(cents_after - cents_before, i64::from(ROUNDS) * 2 * SESSIONS as i64 * 100, "updates lost or doubled");

    eprintln!("gateway before: {} KiB RSS, {} fds", before.0, before.1);
    for (wave, during, after, took, slowest_login) in &figures {
        eprintln!(
            "wave {wave}: {SESSIONS} sessions x {ROUNDS} rounds in {took:?} (slowest login {slowest_login:?}); \
             during {} KiB RSS, {} fds; after {} KiB, {} fds",
            during.0, during.1, after.0, after.1
        );
    }
    let (first, second) = (figures[0].2, figures[1].2);
    assert!(second.1 <= before.1 + 2, "file descriptors left open: {before:?} -> {second:?}");
    // Memory the allocator keeps after the first wave is reused by the
    // second: a leak would grow it by the second wave's share again.
    assert!(
        second.0 <= first.0 + first.0 / 5 + 16 * 1024,
        "memory grew from wave to wave: {} KiB after the first, {} KiB after the second",
        first.0,
        second.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_gives_clean_errors_and_the_gateway_carries_on() {
    let _machine = MACHINE.lock().await;
    const SESSIONS: usize = 50;
    let stack = stack(SESSIONS as u32);
    let served = serve(&stack, 200);
    let token = Arc::new(stack.token("load@example.com", &["ai-agents"], Some("load-agent")));
    let mut tasks = Vec::new();
    let running = Arc::new(AtomicU64::new(0));
    for _ in 0..SESSIONS {
        let client = connect(&served, &token).await.unwrap();
        let running = Arc::clone(&running);
        tasks.push(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(
                    PATIENCE,
                    client.query_one("SELECT count(*) FROM orders WHERE id < 100", &[]),
                )
                .await
                {
                    Err(_) => return Err("a statement hung".to_string()),
                    Ok(Ok(_)) => {
                        running.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        let code = e.code().map(|c| c.code().to_string());
                        return match code.as_deref() {
                            // The server's shutdown (57P01), or the gateway's
                            // word that the server went away (08006), or the
                            // connection closed after one of those.
                            Some("57P01" | "08006" | "08003" | "57P02" | "57P03") | None
                                if e.is_closed() || code.is_some() =>
                            {
                                Ok(code)
                            }
                            _ => Err(format!("not a clean error: {e:?}")),
                        };
                    }
                }
            }
        }));
    }
    until("the load to run", || running.load(Ordering::Relaxed) > 500).await;
    let stopped = Instant::now();
    tokio::task::block_in_place(|| stack.cluster.stop_server()).unwrap();
    let mut codes = std::collections::BTreeMap::new();
    for t in tasks {
        let outcome = tokio::time::timeout(PATIENCE, t).await.expect("a session hung after the restart").unwrap();
        let code = outcome.unwrap_or_else(|e| panic!("{e}"));
        *codes.entry(code.unwrap_or_else(|| "closed".into())).or_insert(0) += 1;
    }
    let ended = stopped.elapsed();
    // While the server is down: a clean refusal at login.
    let refused = connect(&served, &token).await.unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("08006"), "{refused:?}");
    tokio::task::block_in_place(|| stack.cluster.start_again()).unwrap();
    let back = Instant::now();
    let client = loop {
        match connect(&served, &token).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(back.elapsed() < PATIENCE, "no new session after the restart: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let n: i64 = client.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);
    assert!(served.child.id() > 0);
    eprintln!(
        "restart: {SESSIONS} sessions ended {codes:?} within {ended:?} of the stop; a new session {:?} after the start",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reloaded_every_second_under_load_drops_no_session_and_mixes_no_policies() {
    let _machine = MACHINE.lock().await;
    const SESSIONS: usize = 40;
    let stack = stack(SESSIONS as u32);
    let served = serve(&stack, 200);
    // Two policies: A lets agents read customers only, B orders only. A
    // statement reading both is refused by either; only a decision made of
    // both (customers judged by A, orders by B) would let it run.
    let policy = std::fs::read_to_string(stack.path("policy.toml")).unwrap();
    let a = policy.replacen("\"!public.secrets\",", "\"!public.secrets\", \"!public.orders\",", 1);
    let b = policy.replacen("\"!public.secrets\",", "\"!public.secrets\", \"!public.customers\",", 1);
    assert!(a != policy && b != policy);
    std::fs::write(stack.path("policy.toml"), &a).unwrap();
    served.signal("HUP");
    let token = Arc::new(stack.token("load@example.com", &["ai-agents"], Some("load-agent")));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let client = connect(&served, &token).await.unwrap();
        let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, sql) in [
                    "SELECT count(*) FROM customers",
                    "SELECT count(*) FROM orders WHERE id < 10",
                    "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM orders WHERE id < 10)",
                ]
                .iter()
                .enumerate()
                {
                    match client.simple_query(sql).await {
                        Ok(_) if i == 2 => return Err(format!("{sql} ran: decided by a mix of two policies")),
                        Ok(_) => {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                            counts[3].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(format!("{sql}: {e:?}")),
                    }
                }
            }
            Ok(())
        }));
    }
    let mut reloads = 0;
    for round in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::write(stack.path("policy.toml"), if round % 2 == 0 { &b } else { &a }).unwrap();
        served.signal("HUP");
        reloads += 1;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(PATIENCE, t).await.expect("a session hung").unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    let [customers, orders, _, refused] = &*counts;
    let (customers, orders, refused) =
        (customers.load(Ordering::Relaxed), orders.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    eprintln!("reloads: {reloads}; customers read {customers}, orders read {orders}, refused {refused}");
    assert!(customers > 0 && orders > 0, "both policies were in force at some point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connects_some_abandoned_leak_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _machine = MACHINE.lock().await;
    const CYCLES: usize = 10_000;
    const AT_ONCE: usize = 32;
    let stack = stack(200);
    let served = serve(&stack, 200);
    let token = Arc::new(stack.token("load@example.com", &["ai-agents"], Some("load-agent")));
    let direct = stack.direct().await;
    let before = (served.rss_kib(), served.open_fds());
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let kinds = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut workers = Vec::new();
    for _ in 0..AT_ONCE {
        let (next, kinds, token) = (Arc::clone(&next), Arc::clone(&kinds), Arc::clone(&token));
        let port = served.port;
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= CYCLES {
                    return Ok::<(), String>(());
                }
                let kind = n % 10;
                let addr = ("127.0.0.1", port);
                match kind {
                    // Gone before the startup message ends.
                    0 => {
                        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                        let _ = s.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u']).await;
                        kinds[0].fetch_add(1, Ordering::Relaxed);
                    }
                    // Gone at the password request.
                    1 => {
                        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                        s.write_all(&portcullis_testkit::wire::startup(&[
                            ("user", &b"load"[..]),
                            ("database", &b"app"[..]),
                        ]))
                        .await
                        .map_err(|e| e.to_string())?;
                        let mut b = [0u8; 16];
                        let _ = s.read(&mut b).await;
                        kinds[1].fetch_add(1, Ordering::Relaxed);
                    }
                    // Gone in the middle of a query.
                    2 => {
                        let conninfo =
                            format!("host=127.0.0.1 port={port} user=load dbname=app sslmode=disable password={token}");
                        let (client, connection) =
                            tokio_postgres::connect(&conninfo, NoTls).await.map_err(|e| e.to_string())?;
                        let conn = tokio::spawn(connection);
                        let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        sleeping.abort();
                        conn.abort();
                        kinds[2].fetch_add(1, Ordering::Relaxed);
                    }
                    // A whole session.
                    _ => {
                        let conninfo =
                            format!("host=127.0.0.1 port={port} user=load dbname=app sslmode=disable password={token}");
                        let (client, connection) =
                            tokio_postgres::connect(&conninfo, NoTls).await.map_err(|e| e.to_string())?;
                        tokio::spawn(connection);
                        let n: i64 = client
                            .query_one("SELECT count(*) FROM customers", &[])
                            .await
                            .map_err(|e| e.to_string())?
                            .get(0);
                        if n != 3 {
                            return Err(format!("count {n}"));
                        }
                        kinds[3].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        // Within the stack's watchdog (ten minutes), with room for the
        // message: about two minutes here.
        tokio::time::timeout(Duration::from_secs(480), w)
            .await
            .expect("the cycles hung")
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let took = started.elapsed();
    nothing_left(&direct, &served, before.1).await;
    let after = (served.rss_kib(), served.open_fds());
    let kinds: Vec<u64> = kinds.iter().map(|k| k.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{CYCLES} connects ({} cut in the startup, {} at the password, {} mid-query, {} whole) in {took:?}; \
         gateway {} KiB RSS, {} fds before; {} KiB, {} fds after",
        kinds[0], kinds[1], kinds[2], kinds[3], before.0, before.1, after.0, after.1
    );
    assert_eq!(kinds.iter().sum::<u64>(), CYCLES as u64);
    assert!(after.0 <= before.0 + 64 * 1024, "memory grew by more than 64 MiB: {before:?} -> {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_bounded_memory_and_others_go_on() {
    use tokio::io::AsyncWriteExt;
    let _machine = MACHINE.lock().await;
    let stack = stack(20);
    let served = serve(&stack, 50);
    let people = stack.token("dev@example.com", &["developers"], None);
    let token = stack.token("load@example.com", &["ai-agents"], Some("load-agent"));
    let before = served.rss_kib();
    // About 200 MB of result, asked for and never read.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", served.port)).await.unwrap();
    {
        let mut raw = portcullis_testkit::wire::Raw::new(&mut slow, "the slow client");
        raw.login(&[("user", "dev"), ("database", "app")], &people).await.unwrap();
    }
    let mut query = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT repeat('x', 20000) FROM generate_series(1, 10000)", &mut query)
        .unwrap();
    slow.write_all(&query).await.unwrap();
    let others = connect(&served, &token).await.unwrap();
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(served.rss_kib());
        let n: i64 = tokio::time::timeout(PATIENCE, others.query_one("SELECT count(*) FROM customers", &[]))
            .await
            .expect("another session waited on the slow one")
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
    }
    eprintln!("slow client: gateway {before} KiB RSS before, {peak} KiB at most while it did not read");
    assert!(peak <= before + 32 * 1024, "the gateway buffered the unread result: {before} -> {peak} KiB");
    drop(slow);
    let direct = stack.direct().await;
    let deadline = Instant::now() + PATIENCE;
    while upstream_backends(&direct).await > 1 {
        assert!(
            Instant::now() < deadline,
            "the slow session's upstream connection stayed: {}",
            backends_doing(&direct).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
