//! A raw client: the PostgreSQL protocol byte by byte, for the tests that
//! send what no client library would (malformed packets, any startup
//! parameter, messages in any order) and read every frame the gateway
//! answers with.
//!
//! [`Raw`] owns a stream (plain TCP by default, or any `AsyncRead +
//! AsyncWrite` such as a TLS stream), sends bytes, and cuts the answer into
//! [`BackendFrame`]s with `pg_proxy::codec`. Every read has a deadline
//! ([`WAIT`] unless [`Raw::with_wait`] says otherwise): a gateway that
//! neither answers nor closes fails the test instead of hanging it. The
//! functions below build frontend messages, well-formed or not.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, token: &str) {
//! use portcullis_testkit::wire::Raw;
//!
//! let mut raw = Raw::connect(addr, "an agent").await;
//! raw.login(&[("user", "agent"), ("database", "app"), ("search_path", "private")], token).await.unwrap();
//! let reply = raw.query("SELECT * FROM customers").await;
//! assert_eq!(reply.codes(), ["42501"]);
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pg_proxy::codec::{self, Authentication, BackendFrame};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest a [`Raw`] waits, by default, for the gateway to answer or
/// close.
pub const WAIT: Duration = Duration::from_secs(10);

/// The largest backend frame a [`Raw`] accepts.
pub const MAX_FRAME: usize = 1 << 26;

/// An `ErrorResponse`'s severity, SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// `S`: `ERROR`, `FATAL`, ...
    pub severity: String,
    /// `C`: the SQLSTATE, such as `42501`.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
}

impl ServerError {
    /// The fields of an `ErrorResponse` (or `NoticeResponse`) frame; a
    /// missing field is empty. Fails the test when the frame is malformed.
    pub fn from_frame(frame: &BackendFrame) -> ServerError {
        let fields = codec::parse_fields(frame).unwrap_or_else(|e| panic!("a malformed error frame: {e}"));
        let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str().to_string()).unwrap_or_default();
        ServerError { severity: get(b'S'), code: get(b'C'), message: get(b'M') }
    }
}

/// `SEVERITY CODE: message`.
impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// What the gateway answered up to a `ReadyForQuery`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Every `DataRow`, its values as text (invalid UTF-8 replaced; `None`
    /// is NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Every `ErrorResponse`, in order.
    pub errors: Vec<ServerError>,
    /// The bytes of every `CopyData`, joined (a `COPY ... TO STDOUT`).
    pub copy_data: Vec<u8>,
    /// The transaction status of the `ReadyForQuery`: `b'I'`, `b'T'` or
    /// `b'E'`.
    pub status: u8,
}

impl Reply {
    /// The errors' SQLSTATEs.
    pub fn codes(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.code.clone()).collect()
    }

    /// The first value of every row.
    pub fn first_values(&self) -> Vec<Option<String>> {
        self.rows.iter().map(|row| row.first().cloned().flatten()).collect()
    }

    /// The short form tests compare: (the first value of every row, the
    /// errors' SQLSTATEs, the transaction status).
    pub fn brief(&self) -> (Vec<Option<String>>, Vec<String>, u8) {
        (self.first_values(), self.codes(), self.status)
    }
}

/// A raw client connection: a stream, the bytes read but not yet cut into
/// frames, a name for failure messages and a deadline for each wait.
pub struct Raw<S = TcpStream> {
    stream: S,
    buf: BytesMut,
    what: String,
    wait: Duration,
}

impl Raw<TcpStream> {
    /// Connects to `addr` over TCP; `what` names the connection in failure
    /// messages. Fails the test when the connection is refused or takes
    /// longer than [`WAIT`].
    pub async fn connect(addr: SocketAddr, what: &str) -> Raw<TcpStream> {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{what}: connect timed out"))
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        Raw::new(stream, what)
    }

    /// [`Raw::connect`] with a receive buffer of 4 KiB: what the peer
    /// writes to it stalls after a few megabytes left unread, as it does
    /// for a client that stops reading a large result.
    pub async fn connect_small_window(addr: SocketAddr, what: &str) -> Raw<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{what}: socket: {e}"));
        socket.set_recv_buffer_size(4096).unwrap_or_else(|e| panic!("{what}: SO_RCVBUF: {e}"));
        let stream = timeout(WAIT, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{what}: connect timed out"))
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        Raw::new(stream, what)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// A client over a stream that is already open (a TLS stream, or a
    /// `&mut` to one the caller goes on using afterwards).
    pub fn new(stream: S, what: &str) -> Raw<S> {
        Raw { stream, buf: BytesMut::new(), what: what.to_string(), wait: WAIT }
    }

    /// The same client, waiting at most `wait` (instead of [`WAIT`]) for
    /// each answer.
    pub fn with_wait(mut self, wait: Duration) -> Raw<S> {
        self.wait = wait;
        self
    }

    /// The stream, for what the client does not do itself (shut down the
    /// write side, set socket options).
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends bytes. A write error (the gateway already closed) is ignored:
    /// what the gateway answered is checked by reading.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = timeout(self.wait, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("{}: write timed out", self.what));
    }

    /// The next backend frame, or `None` once the gateway closed (end of
    /// stream or reset) between frames. Fails the test on a timeout, an
    /// invalid frame or a close in the middle of a frame.
    pub async fn next(&mut self) -> Option<BackendFrame> {
        loop {
            match codec::decode_backend(&mut self.buf, MAX_FRAME) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("{}: the gateway sent an invalid frame: {e}", self.what),
            }
            match timeout(self.wait, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("{}: no answer and no close within {:?}", self.what, self.wait),
                Ok(Ok(0) | Err(_)) => {
                    assert!(self.buf.is_empty(), "{}: closed in the middle of a frame: {:?}", self.what, self.buf);
                    return None;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn frame(&mut self) -> BackendFrame {
        match self.next().await {
            Some(f) => f,
            None => panic!("{}: the gateway closed the connection", self.what),
        }
    }

    /// The gateway closes without sending anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(f) = self.next().await {
            let detail = if f.kind == b'E' { format!("{:?}", ServerError::from_frame(&f)) } else { String::new() };
            panic!("{}: expected a close, got '{}' {detail}", self.what, char::from(f.kind));
        }
    }

    /// The gateway closes without having sent a single byte (a reset counts
    /// as a close).
    pub async fn expect_silent_close(&mut self) {
        let mut rest = Vec::new();
        let r = timeout(self.wait, self.stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{}: no close within {:?}", self.what, self.wait));
        if r.is_ok() {
            assert!(rest.is_empty(), "{}: expected a silent close, got {rest:?}", self.what);
        }
    }

    /// Skips to the next `ErrorResponse`, whose SQLSTATE must be one of
    /// `codes`; only login, status and result frames may come before it.
    pub async fn expect_error(&mut self, codes: &[&str]) -> ServerError {
        loop {
            let f = self.frame().await;
            if f.kind == b'E' {
                let e = ServerError::from_frame(&f);
                assert!(codes.contains(&e.code.as_str()), "{}: expected SQLSTATE {codes:?}, got {e:?}", self.what);
                return e;
            }
            assert!(
                matches!(f.kind, b'R' | b'S' | b'K' | b'v' | b'N' | b'Z' | b'T' | b'D' | b'C'),
                "{}: unexpected '{}' before the error",
                self.what,
                char::from(f.kind)
            );
        }
    }

    /// An `ErrorResponse` with one of `codes` (after any other frames),
    /// then a close.
    pub async fn expect_error_then_close(&mut self, codes: &[&str]) -> ServerError {
        let e = self.expect_error(codes).await;
        self.expect_closed().await;
        e
    }

    /// Either a close, or an error with one of `codes` then a close.
    pub async fn expect_error_or_close(&mut self, codes: &[&str]) {
        if let Some(f) = self.next().await {
            assert_eq!(f.kind, b'E', "{}: expected an error or a close, got '{}'", self.what, char::from(f.kind));
            let e = ServerError::from_frame(&f);
            assert!(codes.contains(&e.code.as_str()), "{}: expected SQLSTATE {codes:?}, got {e:?}", self.what);
            self.expect_closed().await;
        }
    }

    /// Logs in: sends a startup packet with `params` (such as `user`,
    /// `database`, `search_path`: any names, in this order), answers the
    /// cleartext password request with `password` (the token), and reads
    /// to `ReadyForQuery`. `Err` is the first `ErrorResponse`, at any step.
    /// Fails the test when the gateway asks for anything but a cleartext
    /// password first, or closes.
    pub async fn login(&mut self, params: &[(&str, &str)], password: &str) -> Result<(), ServerError> {
        let params: Vec<(&str, &[u8])> = params.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.send(&startup(&params)).await;
        let f = self.frame().await;
        match f.kind {
            b'E' => return Err(ServerError::from_frame(&f)),
            b'R' if codec::parse_authentication(&f).ok() == Some(Authentication::CleartextPassword) => {
                let mut out = BytesMut::new();
                frontend::password_message(password.as_bytes(), &mut out).unwrap();
                self.send(&out).await;
            }
            kind => panic!("{}: expected a cleartext password request, got '{}'", self.what, char::from(kind)),
        }
        loop {
            let f = self.frame().await;
            match f.kind {
                b'E' => return Err(ServerError::from_frame(&f)),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Reads to `ReadyForQuery` and returns what came: rows, errors, COPY
    /// data and the transaction status. A `CopyInResponse` is answered
    /// with `CopyFail` (this client sends no COPY data), so that a `COPY
    /// ... FROM STDIN` ends instead of waiting.
    pub async fn until_ready(&mut self) -> Reply {
        let mut reply = Reply::default();
        loop {
            let f = self.frame().await;
            match f.kind {
                b'D' => {
                    let row = codec::data_row_values(&f).unwrap_or_else(|e| panic!("{}: {e}", self.what));
                    reply
                        .rows
                        .push(row.into_iter().map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())).collect());
                }
                b'd' => reply.copy_data.extend_from_slice(f.body()),
                b'E' => reply.errors.push(ServerError::from_frame(&f)),
                b'G' => {
                    let mut out = BytesMut::new();
                    frontend::copy_fail("the raw client sends no COPY data", &mut out).unwrap();
                    self.send(&out).await;
                }
                b'Z' => {
                    reply.status = codec::parse_ready_for_query(&f).unwrap_or_else(|e| panic!("{}: {e}", self.what));
                    return reply;
                }
                _ => {}
            }
        }
    }

    /// Sends `sql` as one simple-protocol `Query` and reads its answer to
    /// `ReadyForQuery`.
    pub async fn query(&mut self, sql: &str) -> Reply {
        self.send(&query(sql)).await;
        self.until_ready().await
    }
}

/// A startup packet with the given length word and body (protocol code and
/// parameters); the length word is not checked, so it may lie.
pub fn startup_raw(word: i32, body: &[u8]) -> Vec<u8> {
    let mut v = word.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// The body of a protocol 3.0 `StartupMessage` with these parameters, in
/// this order (repeated names and any bytes allowed).
pub fn startup_body(params: &[(&str, &[u8])]) -> Vec<u8> {
    let mut v = codec::PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, val) in params {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val);
        v.push(0);
    }
    v.push(0);
    v
}

/// A well-formed startup packet with these parameters.
pub fn startup(params: &[(&str, &[u8])]) -> Vec<u8> {
    let body = startup_body(params);
    startup_raw(i32::try_from(body.len() + 4).unwrap(), &body)
}

/// A frontend message of type `kind` with a correct length word.
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A frontend header with any length word and no body.
pub fn header(kind: u8, word: i32) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&word.to_be_bytes());
    v
}

/// A simple-protocol `Query` message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap_or_else(|e| panic!("encoding a Query: {e}"));
    out.to_vec()
}
