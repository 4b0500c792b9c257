#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]
//! The admin server's connection limits, over raw sockets: connections
//! past the cap wait until one closes; an idle connection is closed; a
//! request head trickled in byte by byte is cut off at its deadline (on a
//! fresh connection and on a kept-alive one); requests and the event
//! stream still work, the stream past the idle time as long as it
//! carries something.
//!
//! The limits here are short ones set for the test; the timeouts the test
//! waits with are long (the machine is shared), and nothing asserts how
//! fast anything is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pg_proxy::admin::Limits;
use pg_proxy::approvals::ledger::{Request, Requester};
use pg_proxy::approvals::store::ApprovalStore;
use portcullis_testkit::stack::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the test waits for something that should happen (far longer
/// than it should take).
const PATIENCE: Duration = Duration::from_secs(60);

/// A gateway with approvals on, and its admin server on a port of its own
/// with `limits` (the defaults when `None`).
async fn admin(limits: Option<Limits>) -> (Stack, Arc<ApprovalStore>, SocketAddr) {
    let stack = Stack::builder().config("[admin]\nlisten = \"127.0.0.1:9\"\n[approvals]\ntimeout = \"60s\"\n").start();
    let store = stack.gateway.approvals.clone().expect("approvals are on with [admin]");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (gateway, s) = (Arc::clone(&stack.gateway), Arc::clone(&store));
    match limits {
        Some(limits) => tokio::spawn(pg_proxy::admin::serve_with_limits(listener, gateway, s, limits)),
        None => tokio::spawn(pg_proxy::admin::serve(listener, gateway, s)),
    };
    (stack, store, addr)
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}\r\n")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` (the connection stays
/// open): its status and body.
async fn response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |n| n.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                assert_eq!(buf.len(), end + 4 + length, "nothing after the response");
                return (status, String::from_utf8_lossy(&buf[end + 4..]).into_owned());
            }
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection on which one request was answered (and kept alive).
async fn served(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(get("/api/v1/openapi.json", None).as_bytes()).await.unwrap();
    let (status, body) = tokio::time::timeout(PATIENCE, response(&mut stream)).await.expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"openapi\""), "{body}");
    stream
}

/// Whether the server closes `stream` within [`PATIENCE`] (reading and
/// dropping whatever it sends first).
async fn closes(stream: &mut tokio::net::tcp::OwnedReadHalf) -> bool {
    let until_closed = async {
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            let _ = n;
        }
    };
    tokio::time::timeout(PATIENCE, until_closed).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_connection_waits_until_one_closes() {
    let limits = Limits { connections: 2, idle: PATIENCE * 10, header: PATIENCE * 10 };
    let (_stack, _, addr) = admin(Some(limits)).await;
    let first = served(addr).await;
    let mut second = served(addr).await;

    // The third connects (the kernel's backlog takes it) and asks, but
    // is not served while two are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(get("/api/v1/openapi.json", None).as_bytes()).await.unwrap();
    let mut byte = [0; 1];
    let early = tokio::time::timeout(Duration::from_secs(2), third.read(&mut byte)).await;
    assert!(early.is_err(), "the third connection was served with two open: {early:?}");

    // One closes: the third is served; the second still is.
    drop(first);
    let (status, _) = tokio::time::timeout(PATIENCE, response(&mut third)).await.expect("served once one closed");
    assert_eq!(status, 200);
    second.write_all(get("/api/v1/openapi.json", None).as_bytes()).await.unwrap();
    assert_eq!(tokio::time::timeout(PATIENCE, response(&mut second)).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let limits = Limits { connections: 8, idle: Duration::from_secs(1), header: PATIENCE * 10 };
    let (_stack, _, addr) = admin(Some(limits)).await;
    // Kept alive after an answer, then silent both ways.
    let (mut read, _write) = served(addr).await.into_split();
    assert!(closes(&mut read).await, "an idle connection stays open");
    // And one that never sends a byte.
    let (mut read, _write) = TcpStream::connect(addr).await.unwrap().into_split();
    assert!(closes(&mut read).await, "a silent connection stays open");
}

/// Sends a request head one byte every 100 ms (well within the idle
/// time), with no end, until the connection fails.
fn trickle(mut write: tokio::net::tcp::OwnedWriteHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let head = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: admin\r\n";
        let mut bytes = head.iter().copied().chain(std::iter::repeat(b"X-Slow: 1\r\n").flatten().copied());
        let stop = tokio::time::Instant::now() + PATIENCE * 2;
        while tokio::time::Instant::now() < stop {
            let byte = bytes.next().unwrap();
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_byte_by_byte_is_cut_off_at_its_deadline() {
    let limits = Limits { connections: 8, idle: Duration::from_secs(5), header: Duration::from_secs(2) };
    let (_stack, _, addr) = admin(Some(limits)).await;

    // The first request of a connection.
    let (mut read, write) = TcpStream::connect(addr).await.unwrap().into_split();
    let sender = trickle(write);
    assert!(closes(&mut read).await, "a trickled head is still being read");
    sender.abort();

    // A later request on a kept-alive connection.
    let (mut read, write) = served(addr).await.into_split();
    let sender = trickle(write);
    assert!(closes(&mut read).await, "a trickled second head is still being read");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_after_a_prompt_head_is_bounded_by_the_idle_time_only() {
    let limits = Limits { connections: 8, idle: Duration::from_secs(5), header: Duration::from_secs(2) };
    let (_stack, _, addr) = admin(Some(limits)).await;
    let body = br#"{"reason": "no longer needed, thank you"}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/approvals/r1/deny HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A byte every 150 ms: the body takes longer than the head's
    // deadline, never as long as the idle time between two bytes.
    for byte in body {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Answered (no token: 401), not cut off.
    let (status, answer) = tokio::time::timeout(PATIENCE, response(&mut stream)).await.expect("an answer");
    assert_eq!(status, 401, "{answer}");
}

fn request(n: usize) -> Request {
    let now = SystemTime::now();
    Request::new(
        format!("r{n}"),
        1,
        Requester::new("alice", Some("copilot-7")),
        format!("f{n}"),
        vec!["dba".into()],
        policy_core::ApprovalTerms::DEFAULT,
        now,
        now + Duration::from_secs(900),
    )
}

/// Opens the event stream as `token`; the stream and what came after the
/// response's head.
async fn events(addr: SocketAddr, token: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(get("/api/v1/events", Some(token)).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                return end;
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stream's head");
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    (stream, buf.split_off(end + 4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_the_event_stream_work_within_the_limits() {
    let limits = Limits { connections: 4, idle: Duration::from_secs(3), header: Duration::from_secs(2) };
    let (stack, store, addr) = admin(Some(limits)).await;
    let bob = stack.token("bob", &["dba"], None);
    drop(served(addr).await);

    // An event every 250 ms for 8 s: longer than the idle time and the
    // head's deadline, and the stream delivers every one.
    let (mut stream, mut got) = events(addr, &bob).await;
    let opener = tokio::spawn(async move {
        for n in 0..32 {
            store.open(request(n), SystemTime::now()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let all = tokio::time::timeout(PATIENCE, async {
        while got.windows(b"event: requested".len()).filter(|w| w == b"event: requested").count() < 32 {
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream was closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(all.is_ok(), "not all events came: {}", String::from_utf8_lossy(&got));
    opener.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_streams_keep_alive_comes_within_the_default_idle_time() {
    // The defaults, as `serve` has them: a quiet stream is kept up by its
    // keep-alive comments, which must come more often than the idle time
    // (they come every 15 s).
    let (stack, _, addr) = admin(None).await;
    let bob = stack.token("bob", &["dba"], None);
    let (mut stream, mut got) = events(addr, &bob).await;
    let kept_alive = tokio::time::timeout(pg_proxy::admin::IDLE_TIMEOUT, async {
        // Chunked: a `:` comment line and the blank line after it.
        while find(&got, b":\n\n").is_none() {
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream was closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(kept_alive.is_ok(), "no keep-alive within the idle time: {}", String::from_utf8_lossy(&got));
}
