//! The gateway: accepting clients, logging them in, and handing each to the
//! [`session`] module.
//!
//! A connection goes through:
//!
//! 1. the startup phase: `SSLRequest` (answered `S` and TLS when the
//!    configuration has a certificate, `N` otherwise), direct TLS (a TLS
//!    handshake as the first bytes, with ALPN `postgresql`),
//!    `GSSENCRequest` (answered `N`), `CancelRequest` (checked against the
//!    gateway's own keys and relayed to the right backend), then the
//!    `StartupMessage`;
//! 2. the login: the gateway asks for a cleartext password, which is the
//!    client's OIDC token, verified against the key set. Over plain TCP
//!    this is refused for non-loopback clients unless the configuration
//!    allows it, before the client sends anything. A failure gets `28P01`
//!    "invalid token"; the log says why;
//! 3. the upstream login with the held credential, then `AuthenticationOk`,
//!    the server's parameters, the gateway's own `BackendKeyData` and
//!    `ReadyForQuery` to the client.
//!
//! Startup parameters: `user` is required (as by PostgreSQL) but names no
//! one: the identity comes from the token, and the session runs as the
//! configured upstream role. `database` picks the database (or must match
//! the configured one). `application_name`, `DateStyle`, `TimeZone`,
//! `IntervalStyle`, `extra_float_digits` and `search_path` pass through;
//! `client_encoding` is accepted and ignored (the gateway speaks UTF-8 to
//! both sides, and the server reports it). Anything else (`options`,
//! `replication`, other settings) is refused: a startup parameter sets any
//! setting, out of the policy's sight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use policy_core::{Engine, Identity, Keys, Policy, Session as EngineSession};
use rand::RngCore;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::auth::KeySet;
use crate::catalog::Catalog;
use crate::codec::{self, Frontend, Startup};
use crate::config::Config;
use crate::session;
use crate::tls::{Stream, ALPN_POSTGRESQL};
use crate::upstream::{self, Target};

/// Startup parameters passed to the server as they are.
const PASSED_PARAMS: [&str; 5] = ["application_name", "DateStyle", "TimeZone", "IntervalStyle", "extra_float_digits"];

/// Where a client's cancel request goes.
#[derive(Debug, Clone)]
struct CancelTarget {
    secret: [u8; 4],
    addr: SocketAddr,
    pid: i32,
    upstream_secret: Vec<u8>,
}

/// A running gateway: configuration, engine, keys and the shared state of
/// its sessions.
pub struct Gateway {
    /// The configuration.
    pub config: Config,
    engine: RwLock<Arc<Engine>>,
    keys: KeySet,
    tls: Option<Arc<ServerConfig>>,
    /// How to reach the database.
    pub target: Target,
    /// Table names by OID.
    pub catalog: Catalog,
    cancels: Mutex<HashMap<i32, CancelTarget>>,
    next_pid: AtomicI32,
    next_session: AtomicU64,
    connections: Arc<Semaphore>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("listen", &self.config.listen).finish_non_exhaustive()
    }
}

/// Builds the engine from the policy file the configuration names.
pub fn load_engine(config: &Config) -> Result<Engine, String> {
    let text = std::fs::read_to_string(&config.policy).map_err(|e| format!("{}: {e}", config.policy.display()))?;
    let policy = Policy::from_toml_str(&text, &config.policy.display().to_string()).map_err(|e| e.to_string())?;
    let keys = Keys { pseudonym_key: config.pseudonym_key.as_ref().map(|k| k.expose().to_vec()) };
    Engine::new(policy, keys).map_err(|e| e.to_string())
}

impl Gateway {
    /// Loads everything the configuration names (policy, key set, TLS
    /// files) and checks it.
    pub fn new(config: Config) -> Result<Gateway, String> {
        let engine = load_engine(&config)?;
        let (keys, diagnostics) = KeySet::load(config.auth.jwks.clone(), config.auth.refresh)?;
        for d in diagnostics {
            tracing::warn!(source = %config.auth.jwks, "{d}");
        }
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::server_config(&t.cert, &t.key)?),
            None => None,
        };
        let target = Target::new(&config.upstream, config.limits.max_message_bytes)?;
        Ok(Gateway {
            generation: AtomicU64::new(0),
            catalog: Catalog::new(target.clone()),
            target,
            engine: RwLock::new(Arc::new(engine)),
            keys,
            tls,
            cancels: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
            next_session: AtomicU64::new(1),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
        })
    }

    /// The engine in force now.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(e) => Arc::clone(&e),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Sessions open now (logged in or logging in).
    pub fn active_sessions(&self) -> usize {
        self.config.limits.max_connections.saturating_sub(self.connections.available_permits())
    }

    /// Reloads the policy; a policy that does not load is rejected and the
    /// one in force is kept.
    pub fn reload_policy(&self) -> Result<(), String> {
        let engine = load_engine(&self.config)?;
        match self.engine.write() {
            Ok(mut e) => *e = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Counts policy reloads: a session compares it with the one it saw
    /// to know its engine is still the one in force, without a lock.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Verifies a client's token with the key set and the policy's
    /// identity rules.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, policy_core::IdentityError> {
        let rules = self.engine().policy().identity.rules();
        self.keys.verify(token, &rules).await
    }

    /// Accepts clients until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let gw = Arc::clone(&self);
            tokio::spawn(async move { gw.handle(tcp, peer).await });
        }
    }

    async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            let mut tcp = tcp;
            let mut out = BytesMut::new();
            let _ = codec::error_response(&mut out, "FATAL", "53300", "sorry, too many clients already", &[]);
            let _ = tcp.write_all(&out).await;
            return;
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id, %peer);
        let _enter = span.enter();
        let login = tokio::time::timeout(self.config.limits.login_timeout, self.login(tcp, peer));
        match login.await {
            Ok(Ok(Some(ready))) => {
                let pid = ready.gateway_pid;
                session::run(Arc::clone(&self), ready, id).await;
                self.forget_cancel(pid);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::info!("login ended: {e}"),
            Err(_) => tracing::info!("login timed out"),
        }
        drop(permit);
    }

    fn forget_cancel(&self, pid: i32) {
        if let Ok(mut c) = self.cancels.lock() {
            c.remove(&pid);
        }
    }

    /// Relays a client's cancel request when its key is one the gateway
    /// gave out; anything else is dropped without an answer, as
    /// PostgreSQL does.
    async fn cancel(&self, pid: i32, secret: &[u8]) {
        let target = match self.cancels.lock() {
            Ok(c) => c.get(&pid).cloned(),
            Err(_) => None,
        };
        let Some(t) = target.filter(|t| constant_time_eq(&t.secret, secret)) else {
            tracing::info!("cancel request with an unknown key ignored");
            return;
        };
        if let Err(e) = upstream::cancel(&self.target, t.addr, t.pid, &t.upstream_secret).await {
            tracing::warn!("relaying a cancel request: {e}");
        }
    }

    /// Sends a cancel request for the session with gateway pid `pid`.
    pub(crate) async fn cancel_session(&self, pid: i32) {
        let target = match self.cancels.lock() {
            Ok(c) => c.get(&pid).cloned(),
            Err(_) => None,
        };
        if let Some(t) = target {
            if let Err(e) = upstream::cancel(&self.target, t.addr, t.pid, &t.upstream_secret).await {
                tracing::warn!("cancelling the upstream query: {e}");
            }
        }
    }

    async fn login(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Option<Ready>, String> {
        let max = self.config.limits.max_message_bytes;
        let mut stream = Stream::Plain(tcp);
        let mut buf = BytesMut::with_capacity(1024);

        // Direct TLS: the first byte is a TLS handshake record.
        if let (Stream::Plain(tcp), Some(tls)) = (&stream, &self.tls) {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.map_err(|e| e.to_string())? == 1 && first == [0x16] {
                let Stream::Plain(tcp) = stream else { return Ok(None) };
                let tls_stream = tokio_rustls::TlsAcceptor::from(Arc::clone(tls))
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("direct TLS handshake: {e}"))?;
                if tls_stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                    return Err("direct TLS without ALPN \"postgresql\"".to_string());
                }
                stream = Stream::Server(Box::new(tls_stream));
            }
        }

        let (version, params) = loop {
            let packet = match codec::decode_startup(&mut buf, max) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => {
                    fatal(&mut stream, "08P01", &format!("invalid startup packet: {e}")).await;
                    return Err(format!("invalid startup packet: {e}"));
                }
            };
            match packet {
                Startup::SslRequest => {
                    if !buf.is_empty() {
                        // Bytes after an SSLRequest, before the answer, could be
                        // injected by a man in the middle (CVE-2021-23214).
                        return Err("data after SSLRequest before the TLS handshake".to_string());
                    }
                    match (&self.tls, stream) {
                        (Some(tls), Stream::Plain(mut tcp)) => {
                            tcp.write_all(b"S").await.map_err(|e| e.to_string())?;
                            let tls_stream = tokio_rustls::TlsAcceptor::from(Arc::clone(tls))
                                .accept(tcp)
                                .await
                                .map_err(|e| format!("TLS handshake: {e}"))?;
                            stream = Stream::Server(Box::new(tls_stream));
                        }
                        (_, mut other) => {
                            other.write_all(b"N").await.map_err(|e| e.to_string())?;
                            stream = other;
                        }
                    }
                }
                Startup::GssEncRequest => stream.write_all(b"N").await.map_err(|e| e.to_string())?,
                Startup::Cancel { pid, secret } => {
                    self.cancel(pid, &secret).await;
                    return Ok(None);
                }
                Startup::Startup { version, params } => break (version, params),
            }
        };

        let mut out = BytesMut::new();
        let minor = version & 0xffff;
        let unrecognised: Vec<&str> =
            params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_.")).collect();
        if minor > 0 || !unrecognised.is_empty() {
            codec::negotiate_protocol_version(&mut out, 0, &unrecognised).map_err(|e| e.to_string())?;
        }
        let get = |name: &str| params.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v.as_str());
        let Some(user) = get("user").filter(|u| !u.is_empty()) else {
            fatal(&mut stream, "28000", "no PostgreSQL user name specified in startup packet").await;
            return Err("startup packet without a user".to_string());
        };
        let user = user.to_string();
        for (key, _) in &params {
            let key = key.as_str();
            let known = matches!(key, "user" | "database" | "client_encoding" | "search_path")
                || PASSED_PARAMS.contains(&key)
                || key.starts_with("_pq_.");
            if !known {
                let message = format!("startup parameter \"{key}\" is not accepted by this gateway");
                fatal(&mut stream, "42704", &message).await;
                return Err(message);
            }
        }
        let engine = self.engine();
        let start_path = match get("search_path") {
            Some(v) => match EngineSession::search_path_from_setting(v) {
                Some(p) => p,
                None => {
                    fatal(&mut stream, "22023", "invalid value for startup parameter \"search_path\"").await;
                    return Err("unreadable search_path startup parameter".to_string());
                }
            },
            None => engine.policy().settings.search_path.clone(),
        };
        let database = match (&self.config.upstream.database, get("database").filter(|d| !d.is_empty())) {
            (Some(pinned), Some(asked)) if pinned != asked => {
                let message = format!("database \"{asked}\" is not served by this gateway");
                fatal(&mut stream, "3D000", &message).await;
                return Err(message);
            }
            (Some(pinned), _) => pinned.clone(),
            (None, Some(asked)) => asked.to_string(),
            (None, None) => user.clone(),
        };

        // The token travels in cleartext inside the connection: only over
        // TLS, from loopback, or where the configuration allows it.
        if !stream.is_tls() && !peer.ip().is_loopback() && !self.config.auth.allow_cleartext_without_tls {
            fatal(&mut stream, "28000", "this gateway accepts tokens only over TLS: connect with sslmode=require")
                .await;
            return Err("token refused over plain TCP from a non-loopback client".to_string());
        }
        codec::auth_cleartext_password(&mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let token = loop {
            match codec::decode_frontend(&mut buf, max) {
                Ok(Some(m)) => match m.message {
                    Frontend::Password(body) => break body,
                    _ => {
                        fatal(&mut stream, "08P01", "expected a password message").await;
                        return Err("expected a password message".to_string());
                    }
                },
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    fatal(&mut stream, "08P01", &format!("invalid message: {e}")).await;
                    return Err(e.to_string());
                }
            }
        };
        let token = token.strip_suffix(b"\0").unwrap_or(&token);
        let verified = match std::str::from_utf8(token) {
            Ok(t) => self.verify_token(t).await.map_err(|e| e.to_string()),
            Err(_) => Err("the token is not UTF-8".to_string()),
        };
        let identity = match verified {
            Ok(identity) => identity,
            Err(reason) => {
                tracing::warn!(user = %user, reason = %reason, "login refused");
                fatal(&mut stream, "28P01", "invalid token").await;
                return Err(format!("login refused: {reason}"));
            }
        };

        let mut upstream_params: Vec<(String, String)> =
            vec![("client_encoding".into(), "UTF8".into()), ("search_path".into(), render_search_path(&start_path))];
        for name in PASSED_PARAMS {
            if let Some(v) = get(name) {
                upstream_params.push((name.to_string(), v.to_string()));
            }
        }
        if get("application_name").is_none() {
            upstream_params.push(("application_name".into(), "pg-proxy".into()));
        }
        let borrowed: Vec<(&str, &str)> = upstream_params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let conn = match upstream::connect(&self.target, &database, &borrowed).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(database = %database, "upstream connection failed: {e}");
                let (code, message) = match &e {
                    upstream::UpstreamError::Refused { code, .. } if code == "3D000" => {
                        ("3D000", format!("database \"{database}\" does not exist"))
                    }
                    _ => ("08006", "the database is not available through this gateway".to_string()),
                };
                fatal(&mut stream, code, &message).await;
                return Err(e.to_string());
            }
        };

        let gateway_pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let mut secret = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut secret);
        if let Ok(mut c) = self.cancels.lock() {
            c.insert(
                gateway_pid,
                CancelTarget { secret, addr: conn.addr, pid: conn.pid, upstream_secret: conn.secret.clone() },
            );
        }
        codec::auth_ok(&mut out);
        for (name, value) in &conn.params {
            codec::parameter_status(&mut out, name, value).map_err(|e| e.to_string())?;
        }
        codec::backend_key_data(&mut out, gateway_pid, &secret).map_err(|e| e.to_string())?;
        codec::ready_for_query(&mut out, b'I');
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        tracing::info!(
            subject = %identity.subject,
            actor = identity.actor.as_ref().map(|a| a.name()),
            database = %database,
            application = get("application_name").unwrap_or_default(),
            "session started"
        );
        let scs = conn.params.iter().find(|(k, _)| k == "standard_conforming_strings").is_none_or(|(_, v)| v == "on");
        Ok(Some(Ready {
            client: stream,
            client_buf: buf,
            upstream: conn,
            identity,
            database,
            start_search_path: start_path,
            standard_conforming_strings: scs,
            user: self.config.upstream.user.clone(),
            gateway_pid,
        }))
    }
}

/// A logged-in client with its upstream connection.
#[derive(Debug)]
pub struct Ready {
    /// The client's stream.
    pub client: Stream,
    /// Bytes the client sent past its password.
    pub client_buf: BytesMut,
    /// The upstream connection.
    pub upstream: upstream::Connection,
    /// Who the client is.
    pub identity: Identity,
    /// The database.
    pub database: String,
    /// The session's starting search path.
    pub start_search_path: Vec<String>,
    /// The server's `standard_conforming_strings`.
    pub standard_conforming_strings: bool,
    /// The upstream role.
    pub user: String,
    /// The pid the client knows the session by.
    pub gateway_pid: i32,
}

/// A search path as a setting value: every element double-quoted.
fn render_search_path(path: &[String]) -> String {
    path.iter().map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(", ")
}

async fn fatal(stream: &mut Stream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    if codec::error_response(&mut out, "FATAL", code, message, &[]).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs the gateway until SIGTERM or Ctrl-C; SIGHUP reloads the policy.
/// On SIGTERM it stops accepting and waits for the sessions to end (at
/// most [`SHUTDOWN_GRACE`]).
pub async fn run(config: Config) -> Result<(), String> {
    let listen = config.listen;
    let gw = Arc::new(Gateway::new(config)?);
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("listening on {listen}: {e}"))?;
    tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "pg-proxy listening");
    let serve = tokio::spawn(Arc::clone(&gw).serve(listener));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("SIGHUP handler: {e}"))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            _ = hangup.recv() => match gw.reload_policy() {
                Ok(()) => tracing::info!("policy reloaded"),
                Err(e) => tracing::error!("policy not reloaded, keeping the one in force: {e}"),
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Stop accepting; sessions end when their clients leave, or when the
    // grace period is over.
    serve.abort();
    let grace = SHUTDOWN_GRACE;
    tracing::info!(sessions = gw.active_sessions(), "shutting down; waiting up to {}s for sessions", grace.as_secs());
    let all = u32::try_from(gw.config.limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, Arc::clone(&gw.connections).acquire_many_owned(all)).await {
        Ok(_) => tracing::info!("all sessions ended"),
        Err(_) => tracing::warn!(sessions = gw.active_sessions(), "grace period over; closing the remaining sessions"),
    }
    Ok(())
}

/// How long a stopping gateway waits for its sessions.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
