//! Hostile clients on raw TCP: garbage and malformed startup packets,
//! malformed messages after the login, the function-call message, a simple
//! query inside a failed extended-protocol block, a row cap inside an
//! unfinished one, clients that vanish
//! mid-query, and a thousand connections idling at the password prompt. Every attack must end in an `ErrorResponse` (with the expected
//! SQLSTATE) or a close, never a hang or a panic, and must not disturb the
//! other sessions: a healthy client stays open across each test and runs
//! `SELECT 1` after every attack.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pg_proxy::codec::{self, Authentication};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::wire::{header, message, query, startup, startup_body, startup_raw, Raw, WAIT};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The message limit of the stacks that test it.
const SMALL_LIMIT: usize = 65_536;

/// A function-call message for `pg_catalog.version()` (OID 89), no
/// arguments, text result.
fn function_call() -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(89);
    body.put_i16(0);
    body.put_i16(0);
    body.put_i16(0);
    message(b'F', &body)
}

/// Logs in on a raw connection with a token and extra startup parameters.
async fn login(addr: SocketAddr, token: &str, extra: &[(&str, &str)], what: &str) -> Raw {
    let mut raw = Raw::connect(addr, what).await;
    let mut params = vec![("user", "hostile"), ("database", "app")];
    params.extend_from_slice(extra);
    raw.login(&params, token).await.unwrap_or_else(|e| panic!("{what}: login failed: {e:?}"));
    raw
}

/// The healthy session still answers.
async fn healthy(client: &tokio_postgres::Client, after: &str) {
    let rows = timeout(WAIT, client.query_one("SELECT 1", &[]))
        .await
        .unwrap_or_else(|_| panic!("after {after}: the healthy session hangs"))
        .unwrap_or_else(|e| panic!("after {after}: the healthy session failed: {e}"));
    assert_eq!(rows.get::<_, i32>(0), 1, "after {after}");
}

/// Server connections with this `application_name`, as the superuser sees
/// them (`state` filter optional).
fn backends(stack: &Stack, application: &str, state: Option<&str>) -> i64 {
    let mut sql = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'");
    if let Some(s) = state {
        sql.push_str(&format!(" AND state = '{s}'"));
    }
    tokio::task::block_in_place(|| stack.cluster.psql("postgres", &sql)).unwrap().parse().unwrap()
}

/// Polls until `check` holds or `deadline` passes; returns whether it held.
async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn policy() -> String {
    std::fs::read_to_string(portcullis_testkit::repo("examples/policy.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_startup_packets_get_an_error_or_a_close() {
    let stack = Stack::start();
    let addr = stack.addr;
    let client = stack.connect(&["developers"]).await;
    healthy(&client, "the start").await;
    let token = stack.token("mallory", &["developers"], None);

    // 1. Another protocol's bytes: the length word 0x47455420 is far above
    //    the startup limit.
    let mut raw = Raw::connect(addr, "HTTP request").await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.expect_error_or_close(&["08P01"]).await;
    healthy(&client, "an HTTP request").await;

    // TLS ClientHello-looking bytes with TLS off.
    let mut raw = Raw::connect(addr, "TLS record without TLS").await;
    raw.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await;
    raw.expect_error_or_close(&["08P01"]).await;

    // 2. Bogus length words, with a plausible body behind them.
    let body = startup_body(&[("user", b"x"), ("database", b"app")]);
    for word in [0, 3, 7, 0x7fff_ffff, -1, i32::MIN, 10_001] {
        let what = format!("startup length word {word}");
        let mut raw = Raw::connect(addr, &what).await;
        raw.send(&startup_raw(word, &body)).await;
        let e = raw.expect_error_then_close(&["08P01"]).await;
        assert_eq!(e.severity, "FATAL", "{what}");
        healthy(&client, &what).await;
    }
    // A length word longer than what follows, then a close: the gateway
    // closes too, without an answer.
    let mut raw = Raw::connect(addr, "truncated startup").await;
    let full = startup(&[("user", b"x"), ("database", b"app")]);
    raw.send(&full[..full.len() - 5]).await;
    raw.stream().shutdown().await.unwrap();
    raw.expect_silent_close().await;
    // Only part of the length word.
    let mut raw = Raw::connect(addr, "half a length word").await;
    raw.send(&[0, 0]).await;
    raw.stream().shutdown().await.unwrap();
    raw.expect_silent_close().await;
    healthy(&client, "truncated startup packets").await;

    // Malformed bodies.
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("no user", startup(&[("database", b"app")]), &["28000"]),
        ("empty user", startup(&[("user", b""), ("database", b"app")]), &["28000"]),
        ("no parameters at all", startup(&[]), &["28000"]),
        ("options", startup(&[("user", b"x"), ("options", b"-c search_path=evil")]), &["42704"]),
        ("replication", startup(&[("user", b"x"), ("replication", b"database")]), &["42704"]),
        ("a server setting", startup(&[("user", b"x"), ("statement_timeout", b"0")]), &["42704"]),
        ("duplicate user", startup(&[("user", b"x"), ("user", b"y")]), &["08P01"]),
        ("non-UTF-8 value", startup(&[("user", b"\xff\xfe")]), &["08P01", "22021"]),
        ("invalid search_path", startup(&[("user", b"x"), ("search_path", b"\"unterminated")]), &["22023"]),
        ("protocol 2.0", startup_raw(8, &0x0002_0000u32.to_be_bytes()), &["08P01", "0A000"]),
        ("protocol 4.0", startup_raw(9, &[0, 4, 0, 0, 0]), &["08P01", "0A000"]),
        ("unknown request code", startup_raw(8, &1234u32.to_be_bytes()), &["08P01", "0A000"]),
        ("SSLRequest of 12 bytes", startup_raw(12, &[4, 0xd2, 0x16, 0x2f, 0, 0, 0, 0]), &["08P01"]),
        ("no final NUL", startup_raw(15, &[0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'x', 0]), &["08P01"]),
        ("name without a value", startup_raw(14, &[0, 3, 0, 0, b'u', b's', b'e', b'r', 0, 0]), &["08P01", "28000"]),
    ];
    for (what, bytes, codes) in cases {
        let mut raw = Raw::connect(addr, what).await;
        raw.send(&bytes).await;
        raw.expect_error_then_close(codes).await;
        healthy(&client, what).await;
    }

    // SSLRequest with bytes behind it (CVE-2021-23214): closed, no answer.
    let mut raw = Raw::connect(addr, "data after SSLRequest").await;
    let mut bytes = startup_raw(8, &codec::SSL_REQUEST_CODE.to_be_bytes());
    bytes.extend_from_slice(&startup(&[("user", b"x")]));
    raw.send(&bytes).await;
    raw.expect_silent_close().await;
    // A cancel request with a key the gateway never gave: closed, no answer.
    let mut raw = Raw::connect(addr, "unknown cancel key").await;
    let mut cancel = BytesMut::new();
    frontend::cancel_request(1, 12345, &mut cancel);
    raw.send(&cancel).await;
    raw.expect_silent_close().await;
    healthy(&client, "SSLRequest and cancel attacks").await;

    // The password phase: a query instead of the password, a bad token, a
    // token that is not UTF-8, an oversized password message, a close.
    let password_phase: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("a query instead of the password", message(b'Q', b"SELECT 1\0"), &["08P01"]),
        ("a forged token", message(b'p', b"eyJhbGciOiJub25lIn0.e30.\0"), &["28P01"]),
        ("a token that is not UTF-8", message(b'p', b"\xff\xfe\xfd\0"), &["28P01"]),
        ("an empty password message", message(b'p', b""), &["28P01"]),
        ("a password length word of 2", header(b'p', 2), &["08P01"]),
        ("a password length word of 2^31-1", header(b'p', i32::MAX), &["08P01"]),
        ("an unknown message type", message(b'!', b"x"), &["08P01"]),
    ];
    for (what, bytes, codes) in password_phase {
        let mut raw = Raw::connect(addr, what).await;
        raw.send(&startup(&[("user", b"x"), ("database", b"app")])).await;
        let f = raw.frame().await;
        assert_eq!(codec::parse_authentication(&f).unwrap(), Authentication::CleartextPassword, "{what}");
        let started = Instant::now();
        raw.send(&bytes).await;
        raw.expect_error_then_close(codes).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: answered only after {:?}", started.elapsed());
        healthy(&client, what).await;
    }
    let mut raw = Raw::connect(addr, "a close at the password prompt").await;
    raw.send(&startup(&[("user", b"x"), ("database", b"app")])).await;
    raw.frame().await;
    raw.stream().shutdown().await.unwrap();
    raw.expect_closed().await;

    // A database that does not exist.
    let mut raw = Raw::connect(addr, "unknown database").await;
    raw.send(&startup(&[("user", b"x"), ("database", b"no_such_db")])).await;
    raw.frame().await;
    let mut out = BytesMut::new();
    frontend::password_message(token.as_bytes(), &mut out).unwrap();
    raw.send(&out).await;
    raw.expect_error_then_close(&["3D000"]).await;

    // A whole login and a query in one write, then the same with garbage
    // after the password: the session starts, then ends on the garbage.
    let mut login_bytes = BytesMut::from(&startup(&[("user", b"x"), ("database", b"app")])[..]);
    frontend::password_message(token.as_bytes(), &mut login_bytes).unwrap();
    let mut bytes = login_bytes.clone();
    frontend::query("SELECT 7", &mut bytes).unwrap();
    let mut raw = Raw::connect(addr, "pipelined login").await;
    raw.send(&bytes).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![], vec![], b'I'), "the login");
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("7".to_string())], vec![], b'I'), "the query");
    let mut bytes = login_bytes.clone();
    bytes.extend_from_slice(b"\x07garbage");
    let mut raw = Raw::connect(addr, "pipelined login then garbage").await;
    raw.send(&bytes).await;
    assert_eq!(raw.until_ready().await.codes(), Vec::<String>::new(), "the login");
    raw.expect_error_then_close(&["08P01"]).await;
    healthy(&client, "pipelined logins").await;

    // The same token still logs in, and new sessions work.
    let mut raw = login(addr, &token, &[], "a login after the attacks").await;
    assert_eq!(raw.query("SELECT 1").await.brief(), (vec![Some("1".to_string())], vec![], b'I'));
    healthy(&client, "the startup attacks").await;
    healthy(&stack.connect(&["ai-agents"]).await, "the startup attacks (new client)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_after_login_end_the_session_and_only_it() {
    let extra = format!("[limits]\nmax_message_bytes = {SMALL_LIMIT}\nmax_connections = 2000");
    let stack = Stack::with(&policy(), &extra);
    let addr = stack.addr;
    let client = stack.connect(&["developers"]).await;
    healthy(&client, "the start").await;
    let token = stack.token("mallory", &["developers"], None);
    let app = [("application_name", "hostile-after-login")];

    let limit = i32::try_from(SMALL_LIMIT).unwrap();
    let mut big = message(b'Q', &vec![b' '; SMALL_LIMIT]);
    big.extend_from_slice(b"junk that must never be read as a message");
    let mut utf8 = b"SELECT '".to_vec();
    utf8.extend_from_slice(b"\xc3\x28\xff");
    utf8.extend_from_slice(b"'\0");
    let mut bind = vec![0, 0]; // portal "", statement ""
    bind.extend_from_slice(&[0, 0, 0xff, 0xff]); // no formats, 65535 values...
    bind.extend_from_slice(&[0, 0, 0, 1, b'x']); // ...of which one is there
    let mut parse = b"s\0SELECT 1\0".to_vec();
    parse.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 23]); // 65535 types, one given
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a Q with length word 2", header(b'Q', 2)),
        ("a Q with length word 0", header(b'Q', 0)),
        ("a Q with a negative length word", header(b'Q', -5)),
        ("a Q header above the limit, no body", header(b'Q', limit + 1)),
        ("a Q header of 2^31-1, no body", header(b'Q', i32::MAX)),
        ("a whole Q above the limit", big),
        ("an unknown message type", message(b'z', b"")),
        ("a NUL message type", message(0, b"")),
        ("a Q whose SQL is not UTF-8", message(b'Q', &utf8)),
        ("a Q without its NUL", message(b'Q', b"SELECT 1")),
        ("a Q with bytes after its NUL", message(b'Q', b"SELECT 1\0SELECT 2\0")),
        ("a Sync with a body", message(b'S', b"x")),
        ("a Terminate with a body", message(b'X', b"xx")),
        ("a Bind claiming 65535 values", message(b'B', &bind)),
        ("a Parse claiming 65535 types", message(b'P', &parse)),
        ("a Describe of kind X", message(b'D', b"Xname\0")),
        ("an Execute without its row limit", message(b'E', b"\0\0\0")),
        ("a password message mid-session", message(b'p', b"token\0")),
    ];
    for (what, bytes) in cases {
        let mut raw = login(addr, &token, &app, what).await;
        let started = Instant::now();
        raw.send(&bytes).await;
        let e = raw.expect_error_then_close(&["08P01", "22021"]).await;
        assert_eq!(e.severity, "FATAL", "{what}: {}", e.message);
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: answered only after {:?}", started.elapsed());
        healthy(&client, what).await;
    }

    // A valid message after an invalid one in the same write is not run.
    let mut raw = login(addr, &token, &app, "an unknown type then a query").await;
    let mut bytes = message(b'z', b"");
    bytes.extend_from_slice(&message(b'Q', b"SELECT 1\0"));
    raw.send(&bytes).await;
    raw.expect_error_then_close(&["08P01"]).await;

    // Truncated messages followed by a close: the session just ends.
    for (what, bytes) in [
        ("half a header", b"Q\0\0".to_vec()),
        ("a header only", header(b'Q', 100)),
        ("part of a body", message(b'Q', b"SELECT 1, 2, 3\0")[..10].to_vec()),
    ] {
        let mut raw = login(addr, &token, &app, what).await;
        raw.send(&bytes).await;
        raw.stream().shutdown().await.unwrap();
        raw.expect_closed().await;
        healthy(&client, what).await;
    }

    // 4. The function-call message: refused, the session goes on; in a
    //    transaction it aborts it like any error; pipelined with a query.
    let mut raw = login(addr, &token, &app, "function call").await;
    raw.send(&function_call()).await;
    let r = raw.until_ready().await;
    assert_eq!((r.codes(), r.status), (vec!["42501".to_string()], b'I'));
    assert_eq!(raw.query("SELECT 41 + 1").await.brief(), (vec![Some("42".to_string())], vec![], b'I'));
    assert_eq!(raw.query("BEGIN").await.status, b'T');
    raw.send(&function_call()).await;
    let r = raw.until_ready().await;
    assert_eq!(
        (r.codes(), r.status),
        (vec!["42501".to_string()], b'E'),
        "a refused F aborts the transaction, as an error does"
    );
    assert_eq!(
        raw.query("SELECT 2").await.brief(),
        (vec![], vec!["25P02".to_string()], b'E'),
        "nothing runs in an aborted transaction"
    );
    assert_eq!(raw.query("ROLLBACK").await.status, b'I');
    let mut bytes = message(b'Q', b"SELECT 3\0");
    bytes.extend_from_slice(&function_call());
    bytes.extend_from_slice(&message(b'Q', b"SELECT 4\0"));
    raw.send(&bytes).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("3".to_string())], vec![], b'I'));
    assert_eq!(raw.until_ready().await.brief(), (vec![], vec!["42501".to_string()], b'I'));
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("4".to_string())], vec![], b'I'));
    // An F with a hostile body is refused the same way (it is not decoded).
    raw.send(&message(b'F', &[0xff; 64])).await;
    assert_eq!(raw.until_ready().await.codes(), ["42501"]);
    // COPY messages outside COPY are dropped, as the server would.
    let mut bytes = message(b'd', b"1\tx\n");
    bytes.extend_from_slice(&message(b'c', b""));
    bytes.extend_from_slice(&message(b'f', b"why\0"));
    bytes.extend_from_slice(&message(b'Q', b"SELECT 5\0"));
    raw.send(&bytes).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("5".to_string())], vec![], b'I'));
    // A message exactly at the limit is accepted.
    let mut sql = b"SELECT 6".to_vec();
    sql.resize(SMALL_LIMIT - 5, b' ');
    sql.push(0);
    raw.send(&message(b'Q', &sql)).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("6".to_string())], vec![], b'I'));
    let mut out = BytesMut::new();
    frontend::terminate(&mut out);
    raw.send(&out).await;
    raw.expect_closed().await;
    healthy(&client, "function calls").await;

    // Every session above ended upstream too.
    let gone = eventually(Duration::from_secs(5), || backends(&stack, "hostile-after-login", None) == 0).await;
    assert!(gone, "server connections left behind: {}", backends(&stack, "hostile-after-login", None));
    healthy(&client, "all the attacks").await;
    healthy(&stack.connect(&["developers"]).await, "all the attacks (new client)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_query_leaves_nothing_behind() {
    let stack = Stack::start();
    let addr = stack.addr;
    let client = stack.connect(&["developers"]).await;
    healthy(&client, "the start").await;
    let token = stack.token("mallory", &["developers"], None);

    // A big result, the socket dropped right after the query (once with a
    // FIN, once with a reset).
    for (app, reset) in [("hostile-vanish-rows", false), ("hostile-vanish-rows-rst", true)] {
        let mut raw = login(addr, &token, &[("application_name", app)], app).await;
        raw.send(&query("SELECT o.*, repeat('x', 200) FROM orders o")).await;
        if reset {
            raw.stream().set_zero_linger().unwrap();
        }
        drop(raw);
        healthy(&client, app).await;
        let gone = eventually(Duration::from_secs(5), || backends(&stack, app, None) == 0).await;
        assert!(gone, "{app}: the server connection outlived its client");
    }

    // A short query running on the server when the client goes: the
    // gateway cancels it and the server connection ends.
    let app = "hostile-vanish-short";
    let mut raw = login(addr, &token, &[("application_name", app)], app).await;
    raw.send(&query("SELECT pg_sleep(1)")).await;
    assert!(eventually(WAIT, || backends(&stack, app, Some("active")) == 1).await, "pg_sleep(1) never ran");
    drop(raw);
    healthy(&client, app).await;
    let gone = eventually(Duration::from_secs(5), || backends(&stack, app, None) == 0).await;
    assert!(gone, "{app}: the server connection outlived its client and its query");

    // A client that vanishes at the password prompt.
    let mut raw = Raw::connect(addr, "vanish at the prompt").await;
    raw.send(&startup(&[("user", b"x"), ("database", b"app")])).await;
    raw.frame().await;
    drop(raw);
    healthy(&client, "the vanishing clients").await;
    healthy(&stack.connect(&["developers"]).await, "the vanishing clients (new client)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_gets_every_byte_in_order() {
    // A result far larger than the sockets' buffers, to a client that
    // reads nothing for a while: the gateway's writes to it are cut short
    // and finished later, and nothing may be lost, doubled or reordered.
    let stack = Stack::start();
    let token = stack.token("mallory", &["developers"], None);
    let mut raw = login(stack.addr, &token, &[("application_name", "slow-reader")], "slow reader").await;
    let sql = "SELECT o.id, repeat(o.id::text || ',', 2000) FROM orders o ORDER BY o.id";
    let client = stack.connect(&["developers"]).await;
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert!(count > 100, "orders has {count} rows");
    for round in 0..2 {
        raw.send(&query(sql)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = raw.until_ready().await;
        assert!(reply.errors.is_empty(), "round {round}: {:?}", reply.errors);
        assert_eq!(reply.rows.len() as i64, count, "round {round}");
        let mut last = i64::MIN;
        for row in &reply.rows {
            let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
            assert!(id > last, "round {round}: rows out of order");
            last = id;
            assert_eq!(row[1].as_deref().unwrap(), format!("{id},").repeat(2000), "round {round}: row {id}");
        }
    }
    // And the session goes on.
    assert_eq!(raw.query("SELECT 42").await.first_values(), [Some("42".to_string())]);
}

/// Starts `SELECT pg_sleep(60)` on a raw session named `app` and waits
/// until the server runs it.
async fn sleeping_session(stack: &Stack, token: &str, app: &str) -> Raw {
    let mut raw = login(stack.addr, token, &[("application_name", app)], app).await;
    raw.send(&query("SELECT pg_sleep(60)")).await;
    let running = eventually(WAIT, || backends(stack, app, Some("active")) == 1).await;
    assert!(running, "{app}: pg_sleep never started on the server");
    raw
}

/// Whether the server connections named `app` are gone within 5 s; they
/// are terminated either way, so that a failure does not hold the cluster.
async fn gone_or_terminated(stack: &Stack, app: &str) -> bool {
    let gone = eventually(Duration::from_secs(5), || backends(stack, app, None) == 0).await;
    if !gone {
        let sql = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'");
        tokio::task::block_in_place(|| stack.cluster.psql("postgres", &sql)).unwrap();
    }
    gone
}

/// Known gateway bug: when the client goes away (or its session ends on a
/// protocol error) while a query runs, `session.rs` sends `Terminate` (or
/// nothing) upstream and drops the connection, but does not cancel the
/// query: the server runs it to its end (here 60 s) before it notices. The
/// client's slot in `max_connections` is freed at once, so a client can
/// keep any number of server backends busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_of_a_vanished_client_is_cancelled_upstream() {
    let stack = Stack::start();
    let client = stack.connect(&["developers"]).await;
    let token = stack.token("mallory", &["developers"], None);

    let app = "hostile-vanish-sleep";
    let raw = sleeping_session(&stack, &token, app).await;
    drop(raw);
    healthy(&client, "a client vanishing during pg_sleep").await;
    let vanished = gone_or_terminated(&stack, app).await;

    let app = "hostile-fatal-sleep";
    let mut raw = sleeping_session(&stack, &token, app).await;
    raw.send(&message(b'z', b"")).await;
    raw.expect_error_then_close(&["08P01"]).await;
    healthy(&client, "a protocol error during pg_sleep").await;
    let failed = gone_or_terminated(&stack, app).await;

    assert!(
        vanished && failed,
        "a query still runs on the server 5 s after its session ended: when the client vanished: {}; after a \
         protocol error: {}",
        !vanished,
        !failed
    );
}

/// Known gateway bug: a refused `Parse` is remembered by name
/// (`SessionLoop::on_parse` in `session.rs` inserts `name -> None`) although
/// the server never sees it, so a client holds gateway memory without
/// bound: names as long as the message limit, as many as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_parse_messages_do_not_pile_up_in_the_gateway() {
    let stack = Stack::with(&policy(), "[limits]\nmax_message_bytes = 1100000\nmax_connections = 2000");
    let client = stack.connect(&["developers"]).await;
    let token = stack.token("mallory", &["ai-agents"], None);
    let mut raw = login(stack.addr, &token, &[], "refused parses").await;
    let before = rss_kib();
    for i in 0..200 {
        let mut body = format!("{i:08}").into_bytes();
        body.resize(1_000_000, b'n');
        body.extend_from_slice(b"\0DROP TABLE orders\0\0\0");
        let mut bytes = message(b'P', &body);
        bytes.extend_from_slice(&message(b'S', b""));
        raw.send(&bytes).await;
        assert_eq!(raw.until_ready().await.codes(), ["42501"]);
    }
    let grown = rss_kib().saturating_sub(before) / 1024;
    healthy(&client, "refused parses").await;
    assert!(grown < 50, "200 refused Parse messages with 1 MB names grew the gateway by {grown} MiB");
}

/// This process's resident set size in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens `n` connections that send a startup packet and wait at the
/// password prompt.
async fn at_password_prompt(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let packet = startup(&[("user", b"idle"), ("database", b"app")]);
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = timeout(WAIT, TcpStream::connect(addr)).await.expect("connect timed out").unwrap();
        s.write_all(&packet).await.unwrap();
        let mut answer = [0u8; 9];
        timeout(WAIT, s.read_exact(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("idle connection {i}: no password prompt"))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        assert_eq!(&answer, b"R\0\0\0\x08\0\0\0\x03", "idle connection {i}");
        streams.push(s);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_idle_at_the_password_prompt() {
    // Each connection costs two descriptors in this process (client and
    // gateway side).
    let fds = usize::try_from(portcullis_testkit::stack::raise_open_files_limit()).unwrap_or(usize::MAX);
    let n = 1000.min(fds.saturating_sub(300) / 2);
    println!("open files limit {fds}: {n} idle connections");
    assert!(n >= 100, "too few file descriptors ({fds}) for this test");
    // Room for the healthy client and two more at the prompt.
    let extra = format!("[limits]\nmax_connections = {}", n + 3);
    let stack = Stack::with(&policy(), &extra);
    let addr = stack.addr;
    let client = stack.connect(&["developers"]).await;
    healthy(&client, "the start").await;
    // Warm up the allocator and the runtime before measuring.
    drop(at_password_prompt(addr, 20).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = rss_kib();
    let started = Instant::now();
    let mut idle = at_password_prompt(addr, n).await;
    let opened_in = started.elapsed();
    let during = rss_kib();
    let per_connection = (during.saturating_sub(before) * 1024) / n;
    println!(
        "{n} connections at the password prompt in {opened_in:?}: VmRSS {before} KiB -> {during} KiB, \
         about {per_connection} bytes per connection (both ends, this process)"
    );
    healthy(&client, "opening the idle connections").await;

    // The limit: two more fit, the next is refused with 53300.
    idle.extend(at_password_prompt(addr, 2).await);
    let mut refused = Raw::connect(addr, "one connection too many").await;
    refused.send(&startup(&[("user", b"x"), ("database", b"app")])).await;
    refused.expect_error_then_close(&["53300"]).await;
    healthy(&client, "the connection limit").await;

    // Every idle connection gets a clean close when its client leaves.
    for s in &mut idle {
        s.shutdown().await.unwrap();
    }
    for (i, s) in idle.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let n = timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("idle connection {i}: not closed"))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        assert_eq!(n, 0, "idle connection {i}: unexpected bytes {rest:?}");
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("after closing them: VmRSS {} KiB", rss_kib());
    healthy(&client, "closing the idle connections").await;

    // Their slots were all given back: as many again fit.
    let again = at_password_prompt(addr, n + 1).await;
    drop(again);
    // A new client logs in once the slots are free.
    let token = stack.token("alice", &["developers"], None);
    let mut fresh = None;
    for _ in 0..50 {
        match tokio_postgres::connect(&stack.conninfo(&token), tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                fresh = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    healthy(&fresh.expect("no new session after the idle connections closed"), "the idle connections (new client)")
        .await;
    healthy(&client, "the end").await;
}

/// A `Bind` of `statement` to the unnamed portal, with no parameters, and
/// an `Execute` of it returning at most `max_rows` rows (0: all).
fn bind_execute(statement: &str, max_rows: i32, out: &mut BytesMut) {
    frontend::bind("", statement, [], [], |_: (), _| Ok(postgres_protocol::IsNull::No), [], out)
        .map_err(|_| "bind")
        .unwrap();
    frontend::execute("", max_rows, out).unwrap();
}

/// After an error in an extended-protocol block, PostgreSQL skips every
/// message up to `Sync`, a simple `Query` sent inside the block too, and
/// answers none of them; so does the gateway once the error is in. A query
/// sent before the error came back runs after a `Sync` of the gateway's.
/// Either way the session goes on in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_inside_a_failed_extended_block_is_skipped_as_the_server_skips_it() {
    let stack = Stack::with(&policy(), "");
    let client = stack.connect(&["developers"]).await;
    let token = stack.token("dave", &["developers"], None);
    let mut raw = login(stack.addr, &token, &[], "query in a failed block").await;
    let mut block = BytesMut::new();
    frontend::parse("", "SELECT * FROM no_such_table", [], &mut block).unwrap();
    bind_execute("", 0, &mut block);
    let mut sync = BytesMut::new();
    frontend::sync(&mut sync);
    // The query after the error came back (a Flush showed it).
    let mut flushed = block.clone();
    frontend::flush(&mut flushed);
    raw.send(&flushed).await;
    let error = raw.expect_error(&["42P01"]).await;
    assert!(error.message.contains("no_such_table"), "{}", error.message);
    raw.send(&[query("SELECT 2"), sync.to_vec()].concat()).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![], vec![], b'I'));
    assert_eq!(raw.query("SELECT 3").await.brief(), (vec![Some("3".into())], vec![], b'I'));
    // The query sent with the block, before the error: the gateway cannot
    // know yet that the server will skip it, ends the block with a Sync of
    // its own, and the query runs; the client's Sync is answered after it.
    raw.send(&[block.to_vec(), query("SELECT 2"), sync.to_vec()].concat()).await;
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("2".into())], vec!["42P01".to_string()], b'I'));
    assert_eq!(raw.until_ready().await.brief(), (vec![], vec![], b'I'));
    assert_eq!(raw.query("SELECT 4").await.brief(), (vec![Some("4".into())], vec![], b'I'));
    healthy(&client, "a query in a failed block").await;
}

/// A row cap inside an unfinished block is the block's error for the
/// client: what it sends up to its `Sync` is dropped (as PostgreSQL drops
/// it after an error), and the statements after the `Sync` are answered in
/// step, masked by their own plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_row_cap_in_an_open_block_the_rest_of_it_is_dropped() {
    let stack = Stack::with(&policy(), "");
    let token = stack.token("alice", &["ai-agents"], None);
    let mut raw = login(stack.addr, &token, &[], "row cap in an open block").await;
    let mut b = BytesMut::new();
    frontend::parse("", "SELECT id FROM orders", [], &mut b).unwrap();
    // One row more than the cap: the portal is suspended right after it.
    bind_execute("", 1001, &mut b);
    frontend::flush(&mut b);
    raw.send(&b).await;
    let mut rows = 0;
    loop {
        let f = raw.frame().await;
        match f.kind {
            b'1' | b'2' | b'T' => {}
            b'D' => rows += 1,
            b'E' => {
                assert_eq!(portcullis_testkit::wire::ServerError::from_frame(&f).code, "54000");
                break;
            }
            other => panic!("unexpected '{}' before the cap", char::from(other)),
        }
    }
    assert_eq!(rows, 1000, "the rows up to the cap");
    let mut rest = BytesMut::new();
    frontend::parse("a", "SELECT ssn FROM customers WHERE id = 1", [], &mut rest).unwrap();
    bind_execute("a", 0, &mut rest);
    frontend::sync(&mut rest);
    raw.send(&[rest.to_vec(), query("SELECT ssn FROM customers WHERE id = 2")].concat()).await;
    // The Sync's answer: nothing of the dropped statements.
    assert_eq!(raw.until_ready().await.brief(), (vec![], vec![], b'I'));
    assert_eq!(raw.until_ready().await.brief(), (vec![Some("****7890".into())], vec![], b'I'));
    // The statement the client prepared inside the block never ran: its
    // name is unknown.
    let mut again = BytesMut::new();
    bind_execute("a", 0, &mut again);
    frontend::sync(&mut again);
    raw.send(&again).await;
    let reply = raw.until_ready().await;
    assert_eq!((reply.rows.len(), reply.codes()), (0, vec!["42501".to_string()]), "{:?}", reply.errors);
    assert_eq!(raw.query("SELECT 1").await.brief(), (vec![Some("1".into())], vec![], b'I'));
}
