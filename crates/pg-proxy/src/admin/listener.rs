//! The admin server's listeners.
//!
//! [`TlsListener`]: TCP connections accepted and their TLS handshakes
//! done off the accept loop (a client that stalls in its handshake holds
//! up no one else), then handed to the HTTP server.
//!
//! [`Limited`]: around either listener, the admin server's [`Limits`]: at
//! most so many connections at once, each closed when it goes idle or
//! takes too long to send a request's head. axum's `serve` sets no
//! timeouts of its own (hyper's `header_read_timeout` needs a timer that
//! `serve` does not give it), so they are kept here, on the connection's
//! bytes (after TLS, when there is TLS).

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes done but not yet taken by the server.
const QUEUE: usize = 64;

/// Handshakes under way at once; the next connection waits to be accepted
/// (in the kernel's backlog) until one ends.
const HANDSHAKES: usize = 128;

/// The server side of the admin address with TLS: the gateway's own
/// certificate, offering HTTP/1.1 (not the PostgreSQL protocol name the
/// gateway's port offers).
///
/// The listener's task accepts until the listener is dropped.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` (its ALPN replaced by `http/1.1`) on
    /// `listener`.
    pub fn new(listener: TcpListener, config: &ServerConfig) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let mut config = config.clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(QUEUE);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: wait, then go on.
                        tracing::warn!("admin server: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "admin server: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "admin server: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone only when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Connections the admin server serves at once ([`Limits::DEFAULT`]).
pub const MAX_CONNECTIONS: usize = 256;

/// How long an admin connection may go with no byte read or written
/// ([`Limits::DEFAULT`]). Above the 15 s between the keep-alive comments
/// of the event stream (`GET /api/v1/events`), so an open stream is never
/// idle this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request's head (request line and headers) may take to
/// arrive ([`Limits::DEFAULT`]).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a limit's time is taken to be (a longer one is cut to it).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the admin server allows its connections ([`serve`](super::serve)
/// has [`Limits::DEFAULT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (at least 1). The next one is not
    /// accepted until one of them closes: it waits in the kernel's
    /// backlog (with TLS, its handshake may be done meanwhile).
    pub connections: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
    /// A request's head must have arrived this long after the connection
    /// was accepted (the first request) or after its first byte (a later
    /// request on a kept-alive connection), else the connection is closed.
    pub header: Duration,
}

impl Limits {
    /// [`MAX_CONNECTIONS`], [`IDLE_TIMEOUT`], [`HEADER_TIMEOUT`].
    pub const DEFAULT: Limits = Limits { connections: MAX_CONNECTIONS, idle: IDLE_TIMEOUT, header: HEADER_TIMEOUT };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// A listener (plain TCP or [`TlsListener`]) serving at most
/// [`Limits::connections`] connections at once: it accepts the next one
/// only when a connection it handed out ([`LimitedIo`]) is dropped.
#[derive(Debug)]
pub struct Limited<L> {
    inner: L,
    slots: Arc<Semaphore>,
    idle: Duration,
    header: Duration,
}

impl<L> Limited<L> {
    /// `inner` with `limits`.
    pub fn new(inner: L, limits: Limits) -> Limited<L> {
        let connections = limits.connections.clamp(1, Semaphore::MAX_PERMITS);
        Limited {
            inner,
            slots: Arc::new(Semaphore::new(connections)),
            idle: limits.idle.min(LONGEST),
            header: limits.header.min(LONGEST),
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Limited<L> {
    type Io = LimitedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else { return std::future::pending().await };
        let (io, addr) = self.inner.accept().await;
        (LimitedIo::new(io, slot, self.idle, self.header), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One connection from [`Limited`]: it holds its place among the
/// connections served until dropped, and fails with `TimedOut` (which
/// makes the server close it) when it has been idle too long or a
/// request's head is late.
///
/// It knows HTTP/1 only as far as the blank line ending a request's head:
/// the first request's head is due [`Limits::header`] after the
/// connection was accepted; a later one's after its first byte, a byte
/// read once the server has written (answered the request before). Until
/// the server writes again, what follows the head is the request's body,
/// bounded by the idle timeout only.
#[derive(Debug)]
pub struct LimitedIo<I> {
    inner: I,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    header: Duration,
    /// The last byte read or written.
    last: Instant,
    head: Head,
    /// Set to the next deadline whenever a read or write has to wait.
    timer: Pin<Box<Sleep>>,
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Reading a request's head, due by the deadline.
    Reading(Scan, Instant),
    /// The head is read; the server has not written since.
    Read,
    /// The server has written since the last head: the next byte read
    /// starts a new request.
    Answered,
}

/// Looking for the blank line that ends a request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// No byte but line ends yet (blank lines before a request line are
    /// skipped, as hyper does).
    Start,
    /// Within a line.
    Line,
    /// Just after a line's `\n`.
    LineEnd,
    /// After a line's `\n` and a `\r`.
    LineEndCr,
    /// The blank line is read.
    Done,
}

impl Scan {
    fn feed(self, byte: u8) -> Scan {
        match (self, byte) {
            (Scan::Done, _) => Scan::Done,
            (Scan::Start, b'\r' | b'\n') => Scan::Start,
            (Scan::LineEnd | Scan::LineEndCr, b'\n') => Scan::Done,
            (Scan::LineEnd, b'\r') => Scan::LineEndCr,
            (_, b'\n') => Scan::LineEnd,
            (Scan::Start | Scan::Line | Scan::LineEnd | Scan::LineEndCr, _) => Scan::Line,
        }
    }
}

/// `d` after `t` (`d` is at most [`LONGEST`]: no clock runs long enough
/// for this to overflow).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl<I> LimitedIo<I> {
    fn new(inner: I, slot: OwnedSemaphorePermit, idle: Duration, header: Duration) -> LimitedIo<I> {
        let now = Instant::now();
        let deadline = after(now, header);
        LimitedIo {
            inner,
            _slot: slot,
            idle,
            header,
            last: now,
            head: Head::Reading(Scan::Start, deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline.min(after(now, idle)))),
        }
    }

    /// `bytes` were read.
    fn read(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.last = Instant::now();
        let (mut scan, due) = match self.head {
            Head::Reading(scan, due) => (scan, due),
            Head::Read => return Ok(()),
            Head::Answered => (Scan::Start, after(self.last, self.header)),
        };
        if self.last >= due {
            return Err(timed_out("request head not read in time"));
        }
        for &byte in bytes {
            scan = scan.feed(byte);
            if scan == Scan::Done {
                break;
            }
        }
        self.head = if scan == Scan::Done { Head::Read } else { Head::Reading(scan, due) };
        Ok(())
    }

    /// `n` bytes were written.
    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.last = Instant::now();
            self.head = Head::Answered;
        }
    }

    /// Waits for the next deadline (the idle one, or the head's); the
    /// error once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let idle = after(self.last, self.idle);
        let (deadline, what) = match self.head {
            Head::Reading(_, due) if due < idle => (due, "request head not read in time"),
            _ => (idle, "connection idle"),
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).map(|()| timed_out(what))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for LimitedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.read(buf.filled().get(before..).unwrap_or_default())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for LimitedIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }
}
