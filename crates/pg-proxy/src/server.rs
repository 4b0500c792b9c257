//! The gateway: accepting clients, logging them in, and handing each to the
//! [`session`] module.
//!
//! A connection goes through:
//!
//! 1. the startup phase: `SSLRequest` (answered `S` and TLS when the
//!    configuration has a certificate, `N` otherwise), direct TLS (a TLS
//!    handshake as the first bytes, with ALPN `postgresql`),
//!    `GSSENCRequest` (answered `N`), `CancelRequest` (checked against the
//!    gateway's own keys and handed to the session through the
//!    [`registry`](crate::session::registry): a held statement ends with
//!    `57014`, a running one is cancelled on its backend), then the
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
//!
//! Names are matched as PostgreSQL matches them: `user` and `database` (like
//! `options` and `replication`) exactly, the settings without regard to
//! ASCII case (libpq sends `datestyle` and `timezone` for `PGDATESTYLE` and
//! `PGTZ`). A setting is passed upstream under PostgreSQL's spelling of its
//! name. A setting given twice under different spellings (`DateStyle` and
//! `datestyle`) is refused as a duplicate, as a name given twice is (where
//! PostgreSQL would let the last one win).
//!
//! A connection that ends during the login (a cancel request, a refusal, a
//! client that left) is closed as PostgreSQL closes it: over TLS with a
//! `close_notify` alert, then the TCP close. libpq's cancel over TLS
//! (psycopg's `cancel_safe`) reports an error when the connection just
//! drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use policy_core::{Engine, Identity, Keys, Policy, Session as EngineSession};
use rand::RngCore;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::auth::KeySet;
use crate::catalog::Catalog;
use crate::codec::{self, Frontend, Startup, Str};
use crate::config::Config;
use crate::metrics::Reloaded;
use crate::session;
use crate::tls::{Stream, ALPN_POSTGRESQL};
use crate::upstream::{self, Target};

/// The settings a client may give in its startup packet, under
/// PostgreSQL's spelling of their names. A client's name is matched to
/// these without regard to ASCII case, as PostgreSQL matches setting names.
const STARTUP_SETTINGS: [&str; 7] = [
    "application_name",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
    "client_encoding",
];

/// Of [`STARTUP_SETTINGS`], those passed to the server as they are.
const PASSED_SETTINGS: [&str; 5] = ["application_name", "DateStyle", "TimeZone", "IntervalStyle", "extra_float_digits"];

/// How long closing a connection the login did not hand on may take
/// (sending TLS's `close_notify` to a client that does not read).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a client's cancel request goes.
#[derive(Debug, Clone)]
struct CancelTarget {
    secret: [u8; 4],
    addr: SocketAddr,
    pid: i32,
    upstream_secret: Vec<u8>,
    /// The session, once it runs: cancels go through it (a held statement
    /// is not on the server).
    session: Option<u64>,
}

/// A running gateway: configuration, engine, keys and the shared state of
/// its sessions.
pub struct Gateway {
    /// The configuration.
    pub config: Config,
    engine: RwLock<Arc<Engine>>,
    keys: KeySet,
    tls: Option<Arc<ServerConfig>>,
    /// The certificate the TLS configuration presents (reloadable).
    cert: Option<Arc<crate::tls::ServerCert>>,
    /// The metrics the admin server serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The last check of the database for readiness: when, and what it
    /// found.
    upstream_check: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// The database of the last session that logged in (where the
    /// readiness check logs in when `[upstream] database` is not set).
    last_database: Mutex<Option<String>>,
    /// What each readiness check found last (a change is logged).
    readiness_seen: Mutex<HashMap<&'static str, bool>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Where the audit log's checkpoints are published: the approvals log
    /// in PostgreSQL, when replicas share one.
    checkpoints_to: Option<Arc<crate::approvals::shared::PostgresLog>>,
    /// How to reach the database.
    pub target: Target,
    /// Table names by OID, and the databases' views.
    pub catalog: Arc<Catalog>,
    cancels: Mutex<HashMap<i32, CancelTarget>>,
    next_pid: AtomicI32,
    next_session: AtomicU64,
    connections: Arc<Semaphore>,
    generation: AtomicU64,
    /// The live sessions.
    pub sessions: Arc<session::registry::Registry>,
    hooks: RwLock<session::SessionHooks>,
    /// The audit log, when the configuration keeps one.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// The approvals, when the admin server is configured (the place
    /// people approve held statements).
    pub approvals: Option<Arc<crate::approvals::store::ApprovalStore>>,
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
        let (tls, cert) = match &config.tls {
            Some(t) => {
                let (tls, cert) = crate::tls::server_config(&t.cert, &t.key)?;
                (Some(tls), Some(cert))
            }
            None => (None, None),
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let target = Target::new(&config.upstream, config.limits.max_message_bytes)?;
        let audit = match &config.audit {
            Some(settings) => Some(Arc::new(
                crate::audit::AuditLog::open_with_metrics(settings, Arc::clone(&metrics)).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let mut hooks = session::SessionHooks::default();
        if let Some(a) = &audit {
            hooks.record_sink = Arc::clone(a) as Arc<dyn session::record::RecordSink>;
        }
        let catalog = Arc::new(Catalog::new(target.clone(), config.catalog.refresh_interval));
        let mut checkpoints_to = None;
        let approvals = config.admin.as_ref().map(|admin| {
            use crate::approvals::store::{ApprovalHandler, ApprovalStore, HandlerSettings};
            let mut store = ApprovalStore::new(config.approvals.max_grant);
            if let crate::config::StoreKind::Postgres { database, user, password } = &config.approvals.store {
                // The log's own role, on the same server.
                let mut log_target = target.clone();
                log_target.config.user.clone_from(user);
                log_target.config.password.clone_from(password);
                let log = Arc::new(crate::approvals::shared::PostgresLog::new(
                    log_target,
                    database.clone(),
                    config.approvals.replica.clone(),
                    config.upstream.user.clone(),
                ));
                if audit.is_some() {
                    checkpoints_to = Some(Arc::clone(&log));
                }
                store = store.with_shared_log(log);
            }
            if let Some(a) = &audit {
                store = store.with_sink(Arc::clone(a) as Arc<dyn session::record::RecordSink>);
            }
            if let Some(url) = &config.approvals.webhook_url {
                let url = String::from_utf8_lossy(url.expose()).into_owned();
                match crate::approvals::webhook::Webhook::start(url, Some(admin.url.clone())) {
                    Ok(webhook) => store = store.with_webhook(webhook),
                    Err(e) => tracing::error!("approvals webhook: starting its thread: {e}; no notifications"),
                }
            }
            let store = Arc::new(store);
            let settings = HandlerSettings { timeout: config.approvals.timeout, admin_url: Some(admin.url.clone()) };
            let planner = Arc::new(crate::approvals::plan::ServerPlanner::new(target.clone()));
            hooks.hold_handler =
                Some(Arc::new(ApprovalHandler::new(Arc::clone(&store), settings).with_planner(planner)));
            hooks.hold_timeout = config.approvals.timeout;
            store
        });
        Ok(Gateway {
            audit,
            approvals,
            generation: AtomicU64::new(0),
            catalog,
            target,
            engine: RwLock::new(Arc::new(engine)),
            keys,
            tls,
            cert,
            metrics,
            upstream_check: tokio::sync::Mutex::new(None),
            last_database: Mutex::new(None),
            readiness_seen: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            checkpoints_to,
            cancels: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
            next_session: AtomicU64::new(1),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            sessions: Arc::default(),
            hooks: RwLock::new(hooks),
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

    /// What sessions starting now plug in (record sink, hold handler).
    pub fn hooks(&self) -> session::SessionHooks {
        match self.hooks.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sets what sessions starting from now on plug in.
    pub fn set_hooks(&self, hooks: session::SessionHooks) {
        match self.hooks.write() {
            Ok(mut h) => *h = hooks,
            Err(poisoned) => *poisoned.into_inner() = hooks,
        }
    }

    /// Sessions open now (logged in or logging in).
    pub fn active_sessions(&self) -> usize {
        self.config.limits.max_connections.saturating_sub(self.connections.available_permits())
    }

    /// Reloads the policy; a policy that does not load is rejected and the
    /// one in force is kept. Sessions take the new one before their next
    /// statement; a statement being decided keeps the one it started with.
    pub fn reload_policy(&self) -> Result<(), String> {
        let loaded = load_engine(&self.config);
        self.metrics.reload(Reloaded::Policy, loaded.is_ok());
        self.install_engine(loaded?);
        Ok(())
    }

    /// Puts `engine` in force: sessions take it before their next batch.
    fn install_engine(&self, engine: Engine) {
        match self.engine.write() {
            Ok(mut e) => *e = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Reloads the policy, the identity provider's key set and the TLS
    /// certificate (SIGHUP, `POST /api/v1/reload`), each on its own: a
    /// file that does not load is refused, the one in force kept, and the
    /// failure logged and counted. No session is dropped. What each part
    /// came to, in that order (the key set and the certificate only when
    /// configured: a key set from a URL is fetched again too).
    pub async fn reload(&self) -> Vec<(Reloaded, Result<(), String>)> {
        // Two reloads at once could install the older file last.
        let _one_at_a_time = self.reloading.lock().await;
        // Reading files and building the engine is blocking work.
        let config = self.config.clone();
        let loaded = tokio::task::spawn_blocking(move || load_engine(&config))
            .await
            .unwrap_or_else(|e| Err(format!("loading the policy: {e}")));
        self.metrics.reload(Reloaded::Policy, loaded.is_ok());
        let policy = loaded.map(|engine| self.install_engine(engine));
        let mut report = vec![(Reloaded::Policy, policy)];
        let keys = self.keys.reload_now().await;
        self.metrics.reload(Reloaded::Keys, keys.is_ok());
        report.push((Reloaded::Keys, keys));
        if let (Some(cert), Some(files)) = (&self.cert, &self.config.tls) {
            let (cert, files) = (Arc::clone(cert), files.clone());
            let reloaded = tokio::task::spawn_blocking(move || cert.reload(&files.cert, &files.key))
                .await
                .unwrap_or_else(|e| Err(format!("loading the certificate: {e}")));
            self.metrics.reload(Reloaded::Tls, reloaded.is_ok());
            report.push((Reloaded::Tls, reloaded));
        }
        for (what, outcome) in &report {
            match outcome {
                Ok(()) => tracing::info!("{} reloaded", what.as_str()),
                Err(e) => tracing::error!("{} not reloaded, keeping the one in force: {e}", what.as_str()),
            }
        }
        report
    }

    /// Whether the gateway can serve: each check by name, with what it
    /// found (for `/readyz`). The policy is always loaded (a gateway
    /// without one does not start); the database is reached and logged
    /// into with the gateway's credential (at most once per
    /// [`UPSTREAM_CHECK_INTERVAL`]; checks in between reuse the answer);
    /// the audit log, when kept, is writing; the key set is fresh enough.
    ///
    /// What a failing check found is logged (at `warn`, when the check
    /// turns from passing to failing; at `info` when it passes again), not
    /// answered: `/readyz` answers without a token.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut checks = vec![("policy", Ok(()))];
        checks.push(("upstream", self.check_upstream().await));
        if let (Some(audit), Some(settings)) = (&self.audit, &self.config.audit) {
            let writing = if audit.is_failing() {
                // Failing since the last write: the disk may be back, and
                // a gateway taken out of service writes nothing to find
                // out. A file written and synced in the log's directory
                // tells.
                let dir = settings.dir.clone();
                tokio::task::spawn_blocking(move || crate::audit::probe_directory(&dir))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    .map_err(|e| format!("the audit log cannot be written: {e}"))
            } else {
                Ok(())
            };
            checks.push(("audit", writing));
        }
        checks.push(("keys", self.keys.check_fresh().await));
        if let Ok(mut seen) = self.readiness_seen.lock() {
            for (name, outcome) in &checks {
                let was = seen.insert(name, outcome.is_ok()).unwrap_or(true);
                match outcome {
                    Err(e) if was => tracing::warn!(check = name, "not ready: {e}"),
                    Ok(()) if !was => tracing::info!(check = name, "ready again"),
                    _ => {}
                }
            }
        }
        checks
    }

    async fn check_upstream(&self) -> Result<(), String> {
        let mut last = self.upstream_check.lock().await;
        if let Some((at, outcome)) = last.as_ref() {
            if at.elapsed() < UPSTREAM_CHECK_INTERVAL {
                return outcome.clone();
            }
        }
        let database = match &self.config.upstream.database {
            Some(pinned) => pinned.clone(),
            None => self.last_database.lock().ok().and_then(|d| d.clone()).unwrap_or_else(|| "postgres".into()),
        };
        let params = [("application_name", "portcullis-readiness")];
        let attempt = tokio::time::timeout(UPSTREAM_CHECK_TIMEOUT, upstream::connect(&self.target, &database, &params));
        let outcome = match attempt.await {
            Ok(Ok(mut conn)) => {
                let mut bye = BytesMut::new();
                postgres_protocol::message::frontend::terminate(&mut bye);
                let _ = conn.stream.write_all(&bye).await;
                Ok(())
            }
            // The server answered and checked the credential: only the
            // database is missing (a gateway that serves several), or it is
            // busy (too many connections: taking the gateway out of
            // service would not help).
            Ok(Err(upstream::UpstreamError::Refused { code, .. })) if code == "3D000" || code == "53300" => Ok(()),
            Ok(Err(e)) => {
                self.metrics.upstream_connect_error();
                Err(e.to_string())
            }
            Err(_) => {
                self.metrics.upstream_connect_error();
                Err(format!("the database did not answer within {}s", UPSTREAM_CHECK_TIMEOUT.as_secs()))
            }
        };
        *last = Some((std::time::Instant::now(), outcome.clone()));
        outcome
    }

    /// Counts policy reloads: a session compares it with the one it saw
    /// to know its engine is still the one in force, without a lock.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The gateway's server-side TLS configuration (`[tls]`), which the
    /// admin server serves too.
    pub fn server_tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.clone()
    }

    /// Verifies a client's token with the key set and the policy's
    /// identity rules.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, policy_core::IdentityError> {
        let rules = self.engine().policy().identity.rules();
        self.keys.verify(token, &rules).await
    }

    /// Accepts clients until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        if let Some(store) = &self.approvals {
            store.follow();
        }
        if let (Some(audit), Some(log), Some(settings)) = (&self.audit, &self.checkpoints_to, &self.config.audit) {
            tokio::spawn(publish_checkpoints(Arc::downgrade(audit), Arc::clone(log), settings.checkpoint_interval));
        }
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
            // The session's own future is the task: every wake-up of a
            // session polls no wrapper but its span.
            match Arc::clone(&self).session(tcp, peer) {
                Ok(session) => tokio::spawn(session),
                Err(mut tcp) => tokio::spawn(async move {
                    let mut out = BytesMut::new();
                    let _ = codec::error_response(&mut out, "FATAL", "53300", "sorry, too many clients already", &[]);
                    let _ = tcp.write_all(&out).await;
                }),
            };
        }
    }

    /// A connection's session, in its span; the connection back when the
    /// gateway has as many as it takes.
    fn session(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, TcpStream> {
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            return Err(tcp);
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id, %peer);
        // The span is entered each time the session's future is polled and
        // left when it yields: a guard held across an `.await` would stay
        // entered on the worker thread while other sessions run there, and
        // their lines would land in this session's span.
        Ok(async move {
            match self.login(tcp, peer).await {
                Ok(Some(ready)) => {
                    let pid = ready.gateway_pid;
                    let info = session::registry::SessionInfo::new(
                        &ready.identity.subject,
                        ready.identity.groups.clone(),
                        ready.identity.actor.as_ref().map(|a| a.name().to_string()),
                        peer,
                        &ready.application_name,
                    );
                    let registration = self.sessions.register_as(id, info);
                    if let Ok(mut c) = self.cancels.lock() {
                        if let Some(t) = c.get_mut(&pid) {
                            t.session = Some(id);
                        }
                    }
                    session::run(Arc::clone(&self), ready, registration).await;
                    self.forget_cancel(pid);
                }
                Ok(None) => {}
                Err(e) => tracing::info!("login ended: {e}"),
            }
            drop(permit);
        }
        .instrument(span))
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
        // Through the session: it cancels a held statement itself and
        // relays the rest upstream.
        if t.session.is_some_and(|s| self.sessions.cancel(s)) {
            return;
        }
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

    /// Logs a client in (within the configured login timeout) and connects
    /// it upstream; `None` when the connection ended without a session (a
    /// cancel request, a client that left). A connection that ends here is
    /// closed with [`close`] once its transport is settled.
    async fn login(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Option<Ready>, String> {
        let deadline = tokio::time::Instant::now() + self.config.limits.login_timeout;
        // A client that does not finish its startup packets in time is
        // dropped, as PostgreSQL drops it (it exits without a word).
        let (mut stream, mut buf, opening) =
            tokio::time::timeout_at(deadline, self.open(tcp)).await.map_err(|_| "login timed out".to_string())??;
        let outcome = match opening {
            Opening::Closed => Ok(None),
            Opening::Refused(reason) => Err(reason),
            Opening::Cancel { pid, secret } => {
                self.cancel(pid, &secret).await;
                Ok(None)
            }
            Opening::Startup { version, params } => {
                // The client's own waits end at the deadline, inside
                // `admit`; the grace past it is for telling a client whose
                // database did not answer in time.
                let admitted = tokio::time::timeout_at(
                    deadline + LOGIN_GRACE,
                    self.admit(&mut stream, &mut buf, peer, version, &params, deadline),
                )
                .await;
                match admitted {
                    Ok(Ok(Some(a))) => {
                        let tls = stream.is_tls();
                        return Ok(Some(Ready {
                            peer,
                            tls,
                            token_digest: a.token_digest,
                            client: stream,
                            client_buf: buf,
                            upstream: a.upstream,
                            identity: a.identity,
                            database: a.database,
                            start_search_path: a.start_search_path,
                            standard_conforming_strings: a.standard_conforming_strings,
                            user: self.config.upstream.user.clone(),
                            gateway_pid: a.gateway_pid,
                            application_name: a.application_name,
                        }));
                    }
                    Ok(Ok(None)) => Ok(None),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("login timed out".to_string()),
                }
            }
        };
        close(&mut stream).await;
        outcome
    }

    /// The startup phase up to the first packet that is not a negotiation:
    /// `SSLRequest` and direct TLS (the stream becomes TLS),
    /// `GSSENCRequest` (answered `N`), then a startup message or a cancel
    /// request. An `Err` is a connection with nothing left to close (broken,
    /// or a failed TLS handshake).
    async fn open(&self, tcp: TcpStream) -> Result<(Stream, BytesMut, Opening), String> {
        let max = self.config.limits.max_message_bytes;
        let mut stream = Stream::Plain(tcp);
        let mut buf = BytesMut::with_capacity(1024);

        // Direct TLS: the first byte is a TLS handshake record.
        if let (Stream::Plain(tcp), Some(tls)) = (&stream, &self.tls) {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.map_err(|e| e.to_string())? == 1 && first == [0x16] {
                let Stream::Plain(tcp) = stream else {
                    return Err("direct TLS on a stream that is not plain TCP".to_string());
                };
                let tls_stream = tokio_rustls::TlsAcceptor::from(Arc::clone(tls))
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("direct TLS handshake: {e}"))?;
                let alpn = tls_stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
                stream = Stream::Server(Box::new(tls_stream));
                if !alpn {
                    return Ok((stream, buf, Opening::Refused("direct TLS without ALPN \"postgresql\"".to_string())));
                }
            }
        }

        loop {
            let packet = match codec::decode_startup(&mut buf, max) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Ok((stream, buf, Opening::Closed));
                    }
                    continue;
                }
                Err(e) => {
                    let message = format!("invalid startup packet: {e}");
                    fatal(&mut stream, "08P01", &message).await;
                    return Ok((stream, buf, Opening::Refused(message)));
                }
            };
            match packet {
                Startup::SslRequest => {
                    if !buf.is_empty() {
                        // Bytes after an SSLRequest, before the answer, could be
                        // injected by a man in the middle (CVE-2021-23214).
                        let reason = "data after SSLRequest before the TLS handshake".to_string();
                        return Ok((stream, buf, Opening::Refused(reason)));
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
                Startup::Cancel { pid, secret } => return Ok((stream, buf, Opening::Cancel { pid, secret })),
                Startup::Startup { version, params } => return Ok((stream, buf, Opening::Startup { version, params })),
            }
        }
    }

    /// The login proper, after the startup message: the parameters, the
    /// token, the upstream connection, and the client's welcome. `None`
    /// when the client left.
    async fn admit(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        peer: SocketAddr,
        version: u32,
        params: &[(Str, Str)],
        deadline: tokio::time::Instant,
    ) -> Result<Option<Admitted>, String> {
        let max = self.config.limits.max_message_bytes;
        let mut out = BytesMut::new();
        let minor = version & 0xffff;
        let unrecognised: Vec<&str> =
            params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_.")).collect();
        if minor > 0 || !unrecognised.is_empty() {
            codec::negotiate_protocol_version(&mut out, 0, &unrecognised).map_err(|e| e.to_string())?;
        }
        let startup = match StartupParams::read(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(s) => s,
            Err(refusal) => {
                fatal(stream, refusal.code, &refusal.message).await;
                return Err(refusal.message);
            }
        };
        let engine = self.engine();
        let start_path = match startup.setting("search_path") {
            Some(v) => match EngineSession::search_path_from_setting(v) {
                Some(p) => p,
                None => {
                    fatal(stream, "22023", "invalid value for startup parameter \"search_path\"").await;
                    return Err("unreadable search_path startup parameter".to_string());
                }
            },
            None => engine.policy().settings.search_path.clone(),
        };
        let database = match (&self.config.upstream.database, &startup.database) {
            (Some(pinned), Some(asked)) if pinned != asked => {
                let message = format!("database \"{asked}\" is not served by this gateway");
                fatal(stream, "3D000", &message).await;
                return Err(message);
            }
            (Some(pinned), _) => pinned.clone(),
            (None, Some(asked)) => asked.clone(),
            (None, None) => startup.user.clone(),
        };

        // The token travels in cleartext inside the connection: only over
        // TLS, from loopback, or where the configuration allows it.
        if !stream.is_tls() && !peer.ip().is_loopback() && !self.config.auth.allow_cleartext_without_tls {
            fatal(stream, "28000", "this gateway accepts tokens only over TLS: connect with sslmode=require").await;
            return Err("token refused over plain TCP from a non-loopback client".to_string());
        }
        codec::auth_cleartext_password(&mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let token = loop {
            match codec::decode_frontend(buf, max) {
                Ok(Some(m)) => match m.message {
                    Frontend::Password(body) => break body,
                    _ => {
                        fatal(stream, "08P01", "expected a password message").await;
                        return Err("expected a password message".to_string());
                    }
                },
                Ok(None) => {
                    // A client that does not answer in time is dropped
                    // without a word, as at the startup packet.
                    let read = tokio::time::timeout_at(deadline, stream.read_buf(buf))
                        .await
                        .map_err(|_| "login timed out".to_string())?;
                    if read.map_err(|e| e.to_string())? == 0 {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    fatal(stream, "08P01", &format!("invalid message: {e}")).await;
                    return Err(e.to_string());
                }
            }
        };
        let token = token.strip_suffix(b"\0").unwrap_or(&token);
        let token_digest = {
            use sha2::Digest;
            format!("sha256:{:x}", sha2::Sha256::digest(token))
        };
        let verified = match std::str::from_utf8(token) {
            // A token naming a key the gateway does not hold loads the key
            // set again: an identity provider that does not answer in time
            // is the gateway's side of the login, and the client is told.
            Ok(t) => match tokio::time::timeout_at(deadline, self.verify_token(t)).await {
                Ok(verified) => verified.map_err(|e| e.to_string()),
                Err(_) => {
                    self.metrics.login(false);
                    let timeout = self.config.limits.login_timeout;
                    tracing::warn!(
                        user = %startup.user,
                        source = %self.config.auth.jwks,
                        "the key set was not loaded within login_timeout ({timeout:?}) to check a token"
                    );
                    let message = format!(
                        "the identity provider's keys could not be loaded within the login timeout ({timeout:?})"
                    );
                    fatal(stream, "08006", &message).await;
                    return Err("the key set was not loaded within the login timeout".to_string());
                }
            },
            Err(_) => Err("the token is not UTF-8".to_string()),
        };
        let identity = match verified {
            Ok(identity) => identity,
            Err(reason) => {
                self.metrics.login(false);
                tracing::warn!(user = %startup.user, reason = %reason, "login refused");
                fatal(stream, "28P01", "invalid token").await;
                return Err(format!("login refused: {reason}"));
            }
        };

        let mut upstream_params: Vec<(&str, &str)> = vec![("client_encoding", "UTF8")];
        let search_path = render_search_path(&start_path);
        upstream_params.push(("search_path", &search_path));
        for name in PASSED_SETTINGS {
            if let Some(v) = startup.setting(name) {
                upstream_params.push((name, v));
            }
        }
        if startup.setting("application_name").is_none() {
            upstream_params.push(("application_name", "pg-proxy"));
        }
        // A database that accepts the connection and then says nothing
        // (overloaded, or a pooler that is stuck) is the gateway's side of
        // the login: the client, which did its part, is told.
        let connected = tokio::time::timeout_at(deadline, upstream::connect(&self.target, &database, &upstream_params));
        let conn = match connected.await {
            Ok(Ok(c)) => c,
            Err(_) => {
                self.metrics.upstream_connect_error();
                let timeout = self.config.limits.login_timeout;
                tracing::warn!(database = %database, "upstream connection not ready within login_timeout ({timeout:?})");
                let message = format!("the database did not answer within the login timeout ({timeout:?})");
                fatal(stream, "08006", &message).await;
                return Err("the upstream connection was not ready within the login timeout".to_string());
            }
            Ok(Err(e)) => {
                self.metrics.upstream_connect_error();
                tracing::warn!(database = %database, "upstream connection failed: {e}");
                let (code, message) = match &e {
                    upstream::UpstreamError::Refused { code, .. } if code == "3D000" => {
                        ("3D000", format!("database \"{database}\" does not exist"))
                    }
                    _ => ("08006", "the database is not available through this gateway".to_string()),
                };
                fatal(stream, code, &message).await;
                return Err(e.to_string());
            }
        };

        let gateway_pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let mut secret = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut secret);
        codec::auth_ok(&mut out);
        for (name, value) in &conn.params {
            codec::parameter_status(&mut out, name, value).map_err(|e| e.to_string())?;
        }
        codec::backend_key_data(&mut out, gateway_pid, &secret).map_err(|e| e.to_string())?;
        codec::ready_for_query(&mut out, b'I');
        // Known before the client can read its key, so that an immediate
        // cancel request finds it.
        if let Ok(mut c) = self.cancels.lock() {
            c.insert(
                gateway_pid,
                CancelTarget {
                    secret,
                    addr: conn.addr,
                    pid: conn.pid,
                    upstream_secret: conn.secret.clone(),
                    session: None,
                },
            );
        }
        if let Err(e) = stream.write_all(&out).await {
            self.forget_cancel(gateway_pid);
            return Err(e.to_string());
        }
        self.metrics.login(true);
        if self.config.upstream.database.is_none() {
            if let Ok(mut last) = self.last_database.lock() {
                if last.as_deref() != Some(database.as_str()) {
                    *last = Some(database.clone());
                }
            }
        }
        tracing::info!(
            subject = %identity.subject,
            actor = identity.actor.as_ref().map(|a| a.name()),
            database = %database,
            application = startup.setting("application_name").unwrap_or_default(),
            "session started"
        );
        let scs = conn.params.iter().find(|(k, _)| k == "standard_conforming_strings").is_none_or(|(_, v)| v == "on");
        Ok(Some(Admitted {
            upstream: conn,
            identity,
            database,
            start_search_path: start_path,
            standard_conforming_strings: scs,
            gateway_pid,
            application_name: startup.setting("application_name").unwrap_or_default().to_string(),
            token_digest,
        }))
    }
}

/// How long past the login deadline the gateway takes to tell a client
/// that its database, or the identity provider, did not answer in time (a
/// few bytes, to a client that is waiting for them).
const LOGIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a client's first packets asked for, once its transport is settled.
enum Opening {
    /// The client left before sending a startup message.
    Closed,
    /// A cancel request: it is relayed, and the connection ends.
    Cancel {
        /// The pid the gateway gave the session.
        pid: i32,
        /// The key the gateway gave the session.
        secret: Bytes,
    },
    /// A startup message.
    Startup {
        /// The protocol version.
        version: u32,
        /// The parameters, in order.
        params: Vec<(Str, Str)>,
    },
    /// The connection is refused (the client was told, where it could be):
    /// why, for the log.
    Refused(String),
}

/// A client the login let in, and its upstream connection.
struct Admitted {
    upstream: upstream::Connection,
    identity: Identity,
    database: String,
    start_search_path: Vec<String>,
    standard_conforming_strings: bool,
    gateway_pid: i32,
    application_name: String,
    token_digest: String,
}

/// The parameters of a client's startup message, sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StartupParams {
    /// `user` (never empty).
    user: String,
    /// `database`, when given and not empty.
    database: Option<String>,
    /// The settings, under the names of [`STARTUP_SETTINGS`], in the
    /// client's order.
    settings: Vec<(&'static str, String)>,
}

/// A startup message the gateway refuses: the SQLSTATE and the message
/// for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl StartupParams {
    /// Sorts out a startup message's parameters (names unique, as the
    /// codec checks). `user` and `database` are matched exactly, as
    /// PostgreSQL's `ProcessStartupPacket` does (`strcmp`); settings
    /// without regard to ASCII case, as PostgreSQL looks settings up; a
    /// name starting `_pq_.` is a protocol option (answered by
    /// NegotiateProtocolVersion, not here).
    fn read<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<StartupParams, Refusal> {
        let mut user = None;
        let mut database = None;
        let mut settings: Vec<(&'static str, String)> = Vec::new();
        let mut spellings: Vec<&str> = Vec::new();
        let mut problem = None;
        for (name, value) in params {
            match name {
                "user" => user = Some(value),
                "database" => database = Some(value),
                _ if name.starts_with("_pq_.") => {}
                _ => match STARTUP_SETTINGS.iter().find(|s| s.eq_ignore_ascii_case(name)) {
                    Some(&canonical) => match settings.iter().position(|(k, _)| *k == canonical) {
                        Some(i) => {
                            let first = spellings.get(i).copied().unwrap_or(canonical);
                            problem.get_or_insert(Refusal {
                                code: "08P01",
                                message: format!(
                                    "invalid startup packet: parameter \"{name}\" repeats \"{first}\" (setting names \
                                     are case-insensitive)"
                                ),
                            });
                        }
                        None => {
                            settings.push((canonical, value.to_string()));
                            spellings.push(name);
                        }
                    },
                    None => {
                        problem.get_or_insert(Refusal {
                            code: "42704",
                            message: format!("startup parameter \"{name}\" is not accepted by this gateway"),
                        });
                    }
                },
            }
        }
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            return Err(Refusal {
                code: "28000",
                message: "no PostgreSQL user name specified in startup packet".to_string(),
            });
        };
        if let Some(p) = problem {
            return Err(p);
        }
        Ok(StartupParams {
            user: user.to_string(),
            database: database.filter(|d| !d.is_empty()).map(str::to_string),
            settings,
        })
    }

    /// A setting by its name in [`STARTUP_SETTINGS`].
    fn setting(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
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
    /// The client's `application_name` (empty when it gave none).
    pub application_name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// `sha256:` and the hex SHA-256 of the client's token, for the audit
    /// record (the token itself is never kept).
    pub token_digest: String,
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

/// Ends a connection the login did not hand on as PostgreSQL ends it: over
/// TLS a `close_notify` alert first (a client that sees the TCP close
/// without it reports a truncated connection), then the TCP close. Bounded
/// by [`CLOSE_TIMEOUT`].
async fn close(stream: &mut Stream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs the gateway until SIGTERM or Ctrl-C; SIGHUP reloads the policy,
/// the key set and the TLS certificate ([`Gateway::reload`]).
/// On SIGTERM it stops accepting and waits for the sessions to end (at
/// most [`SHUTDOWN_GRACE`]).
pub async fn run(config: Config) -> Result<(), String> {
    let listen = config.listen;
    raise_file_limit(config.limits.max_connections);
    let gw = Arc::new(Gateway::new(config)?);
    for warning in gw.config.upstream.warnings() {
        tracing::warn!("{warning}");
    }
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("listening on {listen}: {e}"))?;
    tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "pg-proxy listening");
    let serve = tokio::spawn(Arc::clone(&gw).serve(listener));
    let admin = match (&gw.config.admin, &gw.approvals) {
        (Some(settings), Some(store)) => {
            let listener = TcpListener::bind(settings.listen)
                .await
                .map_err(|e| format!("[admin] listening on {}: {e}", settings.listen))?;
            tracing::info!(address = %settings.listen, url = %settings.url, "admin server listening");
            let (gw, store) = (Arc::clone(&gw), Arc::clone(store));
            Some(tokio::spawn(async move {
                if let Err(e) = crate::admin::serve(listener, gw, store).await {
                    tracing::error!("admin server: {e}");
                }
            }))
        }
        _ => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("SIGHUP handler: {e}"))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                gw.reload().await;
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Stop accepting; sessions end when their clients leave, or when the
    // grace period is over.
    serve.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    let grace = SHUTDOWN_GRACE;
    tracing::info!(sessions = gw.active_sessions(), "shutting down; waiting up to {}s for sessions", grace.as_secs());
    let all = u32::try_from(gw.config.limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, Arc::clone(&gw.connections).acquire_many_owned(all)).await {
        Ok(_) => tracing::info!("all sessions ended"),
        Err(_) => {
            tracing::warn!(sessions = gw.active_sessions(), "grace period over; closing the remaining sessions");
            // Each is told to end, so that its last records (its results,
            // its end) are in the audit log before it closes.
            for session in gw.sessions.list() {
                gw.sessions.terminate(session.id);
            }
            let ended = tokio::time::timeout(LAST_RECORDS, Arc::clone(&gw.connections).acquire_many_owned(all)).await;
            if ended.is_err() {
                // Connections still logging in have no records to lose.
                let sessions = gw.sessions.list().len();
                if sessions > 0 {
                    tracing::warn!(sessions, "sessions still open; their last records are not logged");
                } else {
                    tracing::info!(connections = gw.active_sessions(), "closing connections still logging in");
                }
            }
        }
    }
    if let Some(audit) = gw.audit.clone() {
        // Whatever is queued, then the closing checkpoint.
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    }
    Ok(())
}

/// Publishes the audit log's synced checkpoints to the approvals log in
/// PostgreSQL, each once, every `interval`, for as long as the log lives: a
/// checkpoint kept off the gateway's disk is what catches a log cut and
/// rewritten there (`pg-proxy audit verify --checkpoint`). A failure is
/// logged when it begins and when it ends, and tried again at the next
/// tick.
async fn publish_checkpoints(
    audit: std::sync::Weak<crate::audit::AuditLog>,
    log: Arc<crate::approvals::shared::PostgresLog>,
    interval: std::time::Duration,
) {
    let mut published: Option<String> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(audit) = audit.upgrade() else { return };
        let Some(note) = audit.durable_checkpoint().filter(|n| published.as_ref() != Some(n)) else { continue };
        drop(audit);
        match log.publish_checkpoint(&note).await {
            Ok(()) => {
                if failing {
                    tracing::info!("audit checkpoints published again");
                    failing = false;
                }
                published = Some(note);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("publishing an audit checkpoint: {e}; trying again");
                    failing = true;
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each session
/// holds two sockets (the client's and the server's), and the common
/// default soft limit (1024) would refuse connections long before
/// `[limits] max_connections`. Says so when even the hard limit is too low.
fn raise_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is no limit.
    let raise = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if raise {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("raising the open-file limit: {e}");
        }
    }
    let needed = (max_connections as u64).saturating_mul(2).saturating_add(64);
    if let Some(current) = getrlimit(Resource::Nofile).current.filter(|&c| c < needed) {
        tracing::warn!(
            limit = current,
            needed,
            "the open-file limit is below what [limits] max_connections takes (two sockets a session): \
             raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
}

/// How long a readiness check reuses its look at the database.
pub const UPSTREAM_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a readiness check waits for the database.
pub const UPSTREAM_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a stopping gateway waits for its sessions.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long sessions still open after [`SHUTDOWN_GRACE`], told to end,
/// have to record their last results and their end.
const LAST_RECORDS: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn read(params: &[(&str, &str)]) -> Result<StartupParams, Refusal> {
        StartupParams::read(params.iter().copied())
    }

    #[test]
    fn settings_are_matched_without_regard_to_case_and_passed_under_postgresql_names() {
        // What libpq sends for PGDATESTYLE, PGTZ and PGOPTIONS-free PGAPPNAME.
        let p = read(&[
            ("user", "agent"),
            ("database", "app"),
            ("datestyle", "ISO, DMY"),
            ("timezone", "Europe/Paris"),
            ("APPLICATION_NAME", "psql"),
            ("Search_Path", "public"),
            ("client_encoding", "UTF8"),
            ("intervalstyle", "iso_8601"),
            ("Extra_Float_Digits", "3"),
            ("_pq_.something", "on"),
        ])
        .unwrap();
        assert_eq!(p.user, "agent");
        assert_eq!(p.database.as_deref(), Some("app"));
        assert_eq!(p.setting("DateStyle"), Some("ISO, DMY"));
        assert_eq!(p.setting("TimeZone"), Some("Europe/Paris"));
        assert_eq!(p.setting("application_name"), Some("psql"));
        assert_eq!(p.setting("search_path"), Some("public"));
        assert_eq!(p.setting("IntervalStyle"), Some("iso_8601"));
        assert_eq!(p.setting("extra_float_digits"), Some("3"));
        assert_eq!(p.setting("datestyle"), None, "looked up by the canonical name only");
        let names: Vec<&str> = p.settings.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "DateStyle",
                "TimeZone",
                "application_name",
                "search_path",
                "client_encoding",
                "IntervalStyle",
                "extra_float_digits"
            ]
        );
    }

    #[test]
    fn a_setting_given_twice_in_different_cases_is_refused() {
        let e = read(&[("user", "u"), ("DateStyle", "ISO"), ("datestyle", "SQL")]).unwrap_err();
        assert_eq!(e.code, "08P01");
        assert!(e.message.contains("\"datestyle\" repeats \"DateStyle\""), "{}", e.message);
    }

    #[test]
    fn user_and_database_are_matched_exactly_as_postgresql_does() {
        // ProcessStartupPacket compares these names with strcmp: `User` is a
        // setting name to PostgreSQL (an unknown one), and not one this
        // gateway accepts.
        let e = read(&[("User", "u")]).unwrap_err();
        assert_eq!(e.code, "28000", "no `user`: {}", e.message);
        let e = read(&[("user", "u"), ("Database", "app")]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("42704", "startup parameter \"Database\" is not accepted by this gateway")
        );
        let e = read(&[("user", "u"), ("OPTIONS", "-c x=y")]).unwrap_err();
        assert_eq!(e.code, "42704");
        let e = read(&[("user", "u"), ("options", "-c x=y")]).unwrap_err();
        assert_eq!(e.code, "42704");
        let e = read(&[("user", "u"), ("statement_timeout", "0")]).unwrap_err();
        assert_eq!(e.code, "42704");
        let e = read(&[("user", ""), ("database", "app")]).unwrap_err();
        assert_eq!(e.code, "28000");
        let p = read(&[("user", "u"), ("database", "")]).unwrap();
        assert_eq!(p.database, None, "an empty database is the default, as in PostgreSQL");
    }

    /// Records each event's message with the `peer` field of the span it
    /// happened in.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Line>>>);

    /// An event's message, and the `peer` of its span.
    type Line = (String, Option<String>);

    #[derive(Default)]
    struct Fields {
        message: Option<String>,
        peer: Option<String>,
    }

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => self.message = Some(format!("{value:?}")),
                "peer" => self.peer = Some(format!("{value:?}")),
                _ => {}
            }
        }
    }

    struct Peer(Option<String>);

    impl<S> tracing_subscriber::Layer<S> for Capture
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Peer(fields.peer));
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let peer = ctx.lookup_current().and_then(|s| s.extensions().get::<Peer>().and_then(|p| p.0.clone()));
            self.0.lock().unwrap().push((fields.message.unwrap_or_default(), peer));
        }
    }

    fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("policy.toml"), "version = 1\n").unwrap();
        std::fs::write(dir.join("jwks.json"), r#"{"keys": []}"#).unwrap();
        let text = "listen = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[auth]\njwks_file = \"jwks.json\"\n\
                    [upstream]\nport = 1\nuser = \"app\"\ntls = \"disable\"\n";
        let config = Config::from_toml_str(text, &dir.join("gateway.toml"), |_| None).unwrap();
        Arc::new(Gateway::new(config).unwrap())
    }

    /// Two sessions waiting in their login on one thread: what one of them
    /// logs lands in its own span, not in the span of the session polled
    /// before it.
    #[test]
    fn log_lines_land_in_their_own_sessions_span() {
        use tracing_subscriber::layer::SubscriberExt;

        let dir = portcullis_testkit::scratch::ScratchDir::new("server-spans");
        let gw = gateway(&dir);
        let capture = Capture::default();
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(Arc::clone(&gw).serve(listener));
            let pause = || tokio::time::sleep(std::time::Duration::from_millis(100));
            // Both wait for a startup packet, each in its own session span.
            let mut first = TcpStream::connect(addr).await.unwrap();
            pause().await;
            let mut second = TcpStream::connect(addr).await.unwrap();
            pause().await;
            // The first one sends an invalid packet and is refused.
            first.write_all(&[0, 0, 0, 8, 0, 0, 0, 0]).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), first.read_to_end(&mut answer))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
            pause().await;
            let events = capture.0.lock().unwrap().clone();
            let ended: Vec<_> = events.iter().filter(|(m, _)| m.starts_with("login ended")).collect();
            let first_peer = first.local_addr().unwrap().to_string();
            assert_eq!(ended.len(), 1, "{events:?}");
            assert_eq!(ended[0].1.as_deref(), Some(first_peer.as_str()), "{events:?}");
            second.shutdown().await.unwrap();
        });
    }
}
