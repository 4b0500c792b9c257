//! One client session: every statement decided before it is sent, every
//! row masked before it comes back.
//!
//! The session reads the client and the server at once. Client messages are
//! decided and forwarded (or refused) in order; each forwarded message that
//! the server answers leaves an entry in a queue of what is expected back,
//! so every server message is matched with the statement it answers. A
//! refusal is an entry too: it is written to the client when everything
//! before it has been answered, so answers stay in order in a pipeline.
//!
//! - **Simple query**: the whole string is decided first. Refused: none of
//!   it is sent; the server runs a statement that fails while being parsed
//!   ((`REFUSED_SQL`)) in its place, and the client gets an
//!   `ErrorResponse` (`42501`, naming the rule and the reason) instead of
//!   that failure, then the server's `ReadyForQuery`. So a refusal does to
//!   a transaction what an error does in PostgreSQL: an open transaction is
//!   aborted, and a client that ignores the refusal cannot commit the rest.
//! - **Extended query**: `Parse` is decided. A refused `Parse` is answered
//!   the same way (the substitute is a `Parse`), and the client's messages
//!   up to `Sync` are dropped, as the server skips them after an error.
//!   `Bind`, `Describe` and `Execute` of a statement or portal the gateway
//!   does not know, or refused, fail the same way. `Close`, `Sync` and
//!   `Flush` pass.
//! - **Row cap**: when a result has sent `max_rows` rows and another
//!   arrives, the gateway stops forwarding, cancels the query upstream,
//!   drops what is left of the result and answers `54000`. In a
//!   multi-statement simple query, statements after the capped one may
//!   already have run on the server (the cancel interrupts whatever is
//!   running); their results are not forwarded.
//! - **Masking**: at each `RowDescription`, the columns' table OIDs are
//!   resolved through the [`catalog`](crate::catalog) and the engine plans
//!   the masking ([`policy_core::RowMasker`]); a column whose masked values
//!   no longer fit its type is described as `text`. Rows with nothing to
//!   mask are forwarded as the same bytes.
//! - **Errors and notices** from the server pass through the engine's
//!   [`policy_core::MessageScrubber`].
//! - **Session state**: `search_path` changes are applied to the engine's
//!   view when the statement is sent; after any statement that changes a
//!   setting, and after a transaction that did ends, the session holds
//!   the client's next messages, reads the server's `search_path` back and
//!   takes it as the truth (so a `SET LOCAL`, a rolled-back `SET` or a
//!   failed statement cannot leave the two views apart).
//!   `standard_conforming_strings` follows the server's `ParameterStatus`.
//! - **COPY**: `COPY ... FROM STDIN` data is forwarded only while the
//!   server is in COPY IN for an allowed statement. `COPY ... TO STDOUT`
//!   rows are masked like result rows (text format), column by column.
//! - `F` (function call) is refused; `require_approval` is refused with a
//!   message saying approval is not available in this version.
//!
//! ## Where audit and approvals fit
//!
//! Every statement passes one point before it is forwarded: `on_query` and
//! `on_parse` hold the decision and the frame, and nothing reaches the
//! server until they return. That is where the next pieces of PROXY.md go:
//!
//! - the durable audit record is written (awaited) there, and a failure to
//!   write it turns the statement into a refusal, with the same substitute
//!   statement as a policy refusal; results are recorded where the session
//!   already sees them (`CommandComplete`, the row counts of each result,
//!   the masked-cell counts `mask_row` returns, errors);
//! - a statement that needs approval becomes a held entry: its frame is
//!   kept, the session stops reading the client's next messages exactly as
//!   it does while it reads `search_path` back (the `barrier`), and the
//!   loop waits on the approval as well as the client and the server; a
//!   client `CancelRequest` reaches the session through the gateway's
//!   cancel registry and ends the wait with `57014`. Approved, the frame is
//!   forwarded as if it had just arrived; refused or timed out, it becomes
//!   a refusal. The session goes on either way;
//! - approvals and audit records shared by replicas live in PostgreSQL,
//!   reached through the same upstream connector as the catalog.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use policy_core::{
    ColumnInfo, Decision, Engine, Identity, RowMasker, Scrubbed, Session as EngineSession, SessionEffect,
    StatementFacts, Verdict,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{self, BackendFrame, FieldDescription, Frontend, FrontendMessage, Str};
use crate::server::{Gateway, Ready};
use crate::tls::Stream;
use crate::upstream::Connection;

/// Read size, and the most buffer capacity an idle session keeps.
const READ_BYTES: usize = 8 * 1024;
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// The largest read from the server while a result streams.
const MAX_READ_BYTES: usize = 256 * 1024;

/// SQLSTATE of a refusal by policy.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE of the row cap.
const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// SQLSTATE of a protocol violation.
const PROTOCOL_VIOLATION: &str = "08P01";

/// What the server runs in place of a refused statement: it fails while
/// being parsed, without touching anything, so the server's transaction
/// takes the failure exactly as it would the refused statement's own
/// error (an open transaction is aborted, as PostgreSQL does, and the
/// client cannot commit half of it by ignoring the refusal). The server's
/// log shows this text; the client sees the refusal instead.
const REFUSED_SQL: &str = "SELECT 'portcullis: statement refused by policy'::pg_catalog.int4";

/// A statement prepared with `Parse`, as the gateway knows it.
#[derive(Debug, Clone)]
struct Prepared {
    /// Unique in the session: answers are matched by id, not by name (a
    /// name is reused while answers about its previous holder are still
    /// on their way).
    id: u64,
    /// Facts of the statement (the first one of the text).
    facts: Option<Arc<StatementFacts>>,
    /// The whole decision.
    decision: Arc<Decision>,
    /// The columns, once a `Describe` showed them (formats not yet known).
    fields: Option<Arc<Vec<FieldDescription>>>,
}

/// A portal made by `Bind`.
#[derive(Debug, Clone)]
struct Portal {
    /// Unique in the session, as [`Prepared::id`].
    id: u64,
    prepared: Prepared,
    /// The columns with their formats, once known.
    fields: Option<Arc<Vec<FieldDescription>>>,
    /// Rows sent so far (across `Execute`s of the portal).
    rows: u64,
}

/// The result being relayed.
#[derive(Debug)]
struct Result_ {
    facts: Option<Arc<StatementFacts>>,
    masker: Option<Arc<RowMasker>>,
    rows: u64,
    cap: u64,
    rule: Option<String>,
    capped: bool,
    /// COPY TO STDOUT in text format: masked per line.
    copy_out: bool,
    /// Its number of columns.
    copy_columns: usize,
    /// The result may not be relayed (why): its rows are dropped and the
    /// client gets this as an error.
    refused: Option<String>,
}

impl Result_ {
    fn new(facts: Option<Arc<StatementFacts>>, decision: &Decision) -> Self {
        Result_ {
            facts,
            masker: None,
            rows: 0,
            cap: decision.max_rows,
            rule: decision.rule.clone(),
            capped: false,
            copy_out: false,
            copy_columns: 0,
            refused: None,
        }
    }
}

/// Most masking plans a session keeps (by statement shape).
const MASKER_CACHE_ENTRIES: usize = 256;

/// A masking plan, with what it was made from (under the session's
/// current engine: the cache is emptied when the policy changes).
#[derive(Debug)]
struct CachedMasker {
    lineage: Vec<policy_core::OutputColumn>,
    fields: Vec<FieldDescription>,
    masker: Arc<RowMasker>,
}

/// The masking plan of the last `Execute`.
#[derive(Debug)]
struct LastMasker {
    facts: Option<Arc<StatementFacts>>,
    fields: Arc<Vec<FieldDescription>>,
    masker: Arc<RowMasker>,
}

/// What the server is expected to answer, in order.
#[derive(Debug)]
enum Pending {
    /// A simple query, up to its `ReadyForQuery`.
    Query { decision: Arc<Decision>, index: usize, result: Result_, failed: bool, refusal: Option<String> },
    /// `ParseComplete`.
    Parse,
    /// `BindComplete`.
    Bind,
    /// `ParameterDescription` and `RowDescription` or `NoData`.
    DescribeStatement { name: String, id: u64 },
    /// `RowDescription` or `NoData`; `internal` when the gateway asked.
    DescribePortal { name: String, id: u64, internal: bool },
    /// Rows and the end of an `Execute`, with the portal's columns as
    /// known when it was sent (or filled in by the `Describe` before it).
    Execute { portal: String, id: u64, fields: Option<Arc<Vec<FieldDescription>>>, result: Result_ },
    /// `CloseComplete`.
    Close,
    /// `ReadyForQuery` after `Sync`.
    Sync,
    /// The server's failure of (`REFUSED_SQL`), sent in place of a refused
    /// message: the client gets this refusal instead. In the extended
    /// protocol the server then skips to `Sync`; a simple query's entry
    /// is a `Query` with a refusal.
    Refused { code: &'static str, message: String },
    /// The gateway's own `search_path` read-back; the client's
    /// `ReadyForQuery` is held until it is done.
    ReadSearchPath { held: BackendFrame, value: Option<String> },
}

/// Runs a session to its end.
pub async fn run(gw: Arc<Gateway>, ready: Ready, id: u64) {
    let Ready {
        client,
        client_buf,
        upstream,
        identity,
        database,
        start_search_path,
        standard_conforming_strings,
        user,
        gateway_pid,
    } = ready;
    let mut engine_session = EngineSession {
        search_path: start_search_path.clone(),
        reset_search_path: start_search_path.clone(),
        standard_conforming_strings,
        user: Some(user),
        ..EngineSession::default()
    };
    engine_session.prepared.clear();
    // The generation first: a reload in between is seen at the next look.
    let engine_generation = gw.generation();
    let engine = gw.engine();
    let mut s = SessionLoop {
        gw,
        engine,
        engine_generation,
        id,
        client,
        cbuf: client_buf,
        cout: BytesMut::new(),
        up: upstream,
        uout: BytesMut::new(),
        identity,
        database,
        state: engine_session,
        start_search_path,
        statements: HashMap::new(),
        portals: HashMap::new(),
        pending: VecDeque::new(),
        tx_status: b'I',
        discard_until_sync: false,
        block_failed: false,
        resync_after_sync: false,
        barrier: false,
        setting_touched_in_tx: false,
        copy_in: false,
        gateway_pid,
        closing: false,
        skip_until_ready: false,
        ids: 0,
        maskers: HashMap::new(),
        last_masker: None,
        row: RowScratch::default(),
    };
    let outcome = s.run().await;
    if !s.pending.is_empty() {
        // The client is gone with a statement in flight: the server would
        // run it to the end (it notices a vanished client only when it
        // writes), holding a connection and whatever it locks.
        tracing::info!("cancelling the statement of a session that ended");
        s.gw.cancel_session(s.gateway_pid).await;
    }
    match outcome {
        Ok(()) => tracing::info!("session ended"),
        Err(e) => tracing::info!("session ended: {e}"),
    }
}

struct SessionLoop {
    /// The engine in force, and the policy generation it belongs to
    /// ([`Gateway::generation`]).
    engine: Arc<Engine>,
    engine_generation: u64,
    gw: Arc<Gateway>,
    #[allow(dead_code)]
    id: u64,
    client: Stream,
    cbuf: BytesMut,
    cout: BytesMut,
    up: Connection,
    uout: BytesMut,
    identity: Identity,
    database: String,
    state: EngineSession,
    start_search_path: Vec<String>,
    statements: HashMap<String, Option<Prepared>>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<Pending>,
    /// The transaction status of the last `ReadyForQuery`.
    tx_status: u8,
    /// A client message failed: drop its messages up to `Sync`.
    discard_until_sync: bool,
    /// A failure was reported in the current `Sync` block.
    block_failed: bool,
    /// Hold the client's messages after its next `Sync` (an `Execute`
    /// changed a setting).
    resync_after_sync: bool,
    /// Hold the client's messages until the settings are read back.
    barrier: bool,
    /// A setting changed in the current transaction.
    setting_touched_in_tx: bool,
    /// The server is in COPY IN.
    copy_in: bool,
    gateway_pid: i32,
    closing: bool,
    /// Drop the server's messages up to its next `ReadyForQuery` (after a
    /// row cap ended a block early).
    skip_until_ready: bool,
    /// The last id given to a prepared statement or portal.
    ids: u64,
    /// Masking plans by statement fingerprint.
    maskers: HashMap<String, Vec<CachedMasker>>,
    /// The masker of the last Execute, with the statement and columns it
    /// was planned for (held, so that comparing pointers is sound).
    last_masker: Option<LastMasker>,
    /// Room for one row's values, reused.
    row: RowScratch,
}

type SessionResult = Result<(), String>;

impl SessionLoop {
    async fn run(&mut self) -> SessionResult {
        let max = self.gw.config.limits.max_message_bytes;
        // Bytes that came with the login.
        self.on_client_bytes(max).await?;
        self.on_upstream_bytes(max).await?;
        self.flush().await?;
        // Reads from the server grow while results stream (a read that
        // fills the space doubles it, up to MAX_READ_BYTES) and start small
        // again when the session is idle.
        let mut up_read = READ_BYTES;
        while !self.closing {
            self.cbuf.reserve(READ_BYTES);
            self.up.buf.reserve(up_read);
            let hold_client = self.barrier;
            tokio::select! {
                r = self.client.read_buf(&mut self.cbuf), if !hold_client => {
                    if r.map_err(|e| format!("client: {e}"))? == 0 {
                        let mut out = BytesMut::new();
                        frontend::terminate(&mut out);
                        let _ = self.up.stream.write_all(&out).await;
                        return Err("the client went away".to_string());
                    }
                    self.on_client_bytes(max).await?;
                }
                r = self.up.stream.read_buf(&mut self.up.buf) => {
                    let n = r.map_err(|e| format!("upstream: {e}"))?;
                    if n >= up_read {
                        up_read = (up_read * 2).min(MAX_READ_BYTES);
                    }
                    if n == 0 {
                        self.cout.clear();
                        let _ = codec::error_response(
                            &mut self.cout, "FATAL", "08006", "the database closed the connection", &[]);
                        let _ = self.client.write_all(&self.cout).await;
                        return Err("the database closed the connection".to_string());
                    }
                    self.on_upstream_bytes(max).await?;
                    if !self.barrier && !self.cbuf.is_empty() {
                        // Messages held while the settings were read back.
                        self.on_client_bytes(max).await?;
                    }
                }
            }
            self.flush().await?;
            if self.pending.is_empty() {
                up_read = READ_BYTES;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> SessionResult {
        if !self.uout.is_empty() {
            self.up.stream.write_all(&self.uout).await.map_err(|e| format!("upstream: {e}"))?;
            self.uout.clear();
        }
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await.map_err(|e| format!("client: {e}"))?;
            self.cout.clear();
        }
        // A large result leaves large buffers: an idle session gives them back.
        if !self.pending.is_empty() {
            return Ok(());
        }
        for buf in [&mut self.cout, &mut self.uout] {
            if buf.capacity() > KEEP_BUFFER_BYTES {
                *buf = BytesMut::new();
            }
        }
        if self.cbuf.is_empty() && self.cbuf.capacity() > KEEP_BUFFER_BYTES {
            self.cbuf = BytesMut::new();
        }
        if self.up.buf.is_empty() && self.up.buf.capacity() > KEEP_BUFFER_BYTES {
            self.up.buf = BytesMut::new();
        }
        Ok(())
    }

    // ----------------------------------------------------------------- client

    async fn on_client_bytes(&mut self, max: usize) -> SessionResult {
        while !self.barrier && !self.closing {
            let message = match codec::decode_frontend(&mut self.cbuf, max) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!("invalid client message: {e}");
                    self.emit_error("FATAL", PROTOCOL_VIOLATION, &format!("invalid message: {e}"))?;
                    self.closing = true;
                    break;
                }
            };
            self.on_client_message(message)?;
        }
        Ok(())
    }

    fn on_client_message(&mut self, m: FrontendMessage) -> SessionResult {
        if self.discard_until_sync && !matches!(m.message, Frontend::Sync | Frontend::Terminate) {
            return Ok(());
        }
        match m.message {
            Frontend::Query { sql } => self.on_query(&sql, m.frame),
            Frontend::Parse { name, sql, .. } => self.on_parse(name.as_str(), &sql, m.frame),
            Frontend::Bind { portal, statement, result_formats, .. } => {
                let Some(Some(prepared)) = self.statements.get(statement.as_str()).cloned() else {
                    return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_statement(statement.as_str()));
                };
                let fields = prepared.fields.as_ref().map(|f| {
                    // Columns already in the asked formats (text, the usual
                    // case) are shared, not copied.
                    if f.iter().enumerate().all(|(i, c)| c.format == format_at(&result_formats, i)) {
                        Arc::clone(f)
                    } else {
                        Arc::new(with_formats(f, &result_formats))
                    }
                });
                let id = self.next_id();
                self.portals.insert(portal.as_str().to_string(), Portal { id, prepared, fields, rows: 0 });
                self.forward(&m.frame, Some(Pending::Bind));
                Ok(())
            }
            Frontend::Describe { kind: b'S', name } => {
                let Some(Some(p)) = self.statements.get(name.as_str()) else {
                    return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_statement(name.as_str()));
                };
                let pending = Pending::DescribeStatement { name: name.as_str().to_string(), id: p.id };
                self.forward(&m.frame, Some(pending));
                Ok(())
            }
            Frontend::Describe { name, .. } => {
                let Some(p) = self.portals.get(name.as_str()) else {
                    return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_portal(name.as_str()));
                };
                let pending = Pending::DescribePortal { name: name.as_str().to_string(), id: p.id, internal: false };
                self.forward(&m.frame, Some(pending));
                Ok(())
            }
            Frontend::Execute { portal, .. } => self.on_execute(portal.as_str(), m.frame),
            Frontend::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(name.as_str());
                } else {
                    self.portals.remove(name.as_str());
                }
                self.forward(&m.frame, Some(Pending::Close));
                Ok(())
            }
            Frontend::Sync => {
                self.discard_until_sync = false;
                if self.resync_after_sync {
                    self.resync_after_sync = false;
                    self.barrier = true;
                }
                self.forward(&m.frame, Some(Pending::Sync));
                Ok(())
            }
            Frontend::Flush => {
                self.forward(&m.frame, None);
                Ok(())
            }
            Frontend::Terminate => {
                self.forward(&m.frame, None);
                self.closing = true;
                Ok(())
            }
            Frontend::CopyData(_) | Frontend::CopyDone | Frontend::CopyFail { .. } => {
                // Only while the server is in COPY IN for an allowed
                // statement; otherwise dropped, as the server would.
                if self.copy_in {
                    if !matches!(m.message, Frontend::CopyData(_)) {
                        self.copy_in = false;
                    }
                    self.forward(&m.frame, None);
                }
                Ok(())
            }
            Frontend::FunctionCall => self.refuse_query(
                "the function-call protocol message (F) is refused by the gateway: call the function in a \
                 statement"
                    .to_string(),
            ),
            Frontend::Password(_) => {
                self.emit_error("FATAL", PROTOCOL_VIOLATION, "unexpected password message")?;
                self.closing = true;
                Ok(())
            }
        }
    }

    fn forward(&mut self, frame: &Bytes, pending: Option<Pending>) {
        self.uout.extend_from_slice(frame);
        if let Some(p) = pending {
            self.pending.push_back(p);
        }
    }

    /// Refuses a message of the extended protocol: the error in turn, then
    /// the client's messages up to `Sync` are dropped.
    fn fail_block(&mut self, code: &'static str, message: String) -> SessionResult {
        self.discard_until_sync = true;
        if self.block_failed {
            // The server is already skipping to Sync: one error per block.
            return Ok(());
        }
        let mut substitute = BytesMut::new();
        frontend::parse("", REFUSED_SQL, std::iter::empty(), &mut substitute).map_err(|e| e.to_string())?;
        self.forward(&substitute.freeze(), Some(Pending::Refused { code, message }));
        Ok(())
    }

    /// Refuses a simple query (or a function call): the server runs
    /// (`REFUSED_SQL`) in its place, and the client gets the refusal and
    /// the server's `ReadyForQuery`.
    fn refuse_query(&mut self, message: String) -> SessionResult {
        let mut substitute = BytesMut::new();
        frontend::query(REFUSED_SQL, &mut substitute).map_err(|e| e.to_string())?;
        let pending = Pending::Query {
            decision: Arc::new(Decision {
                verdict: Verdict::Deny,
                reason: message.clone(),
                rule: None,
                max_rows: 0,
                approvers: Vec::new(),
                subject: self.identity.subject.clone(),
                actor: None,
                statements: Arc::from(Vec::new()),
                diagnostics: Vec::new(),
            }),
            index: 0,
            result: Result_::empty(),
            failed: false,
            refusal: Some(message),
        };
        self.forward(&substitute.freeze(), Some(pending));
        Ok(())
    }

    fn decide(&self, engine: &Engine, sql: &Str) -> Decision {
        let decision = engine.decide(&self.identity, &self.state, sql.as_str());
        // Refusals are logged at info; allowed statements at debug (a line
        // per statement is the audit log's job, not the process log's).
        macro_rules! decided {
            ($level:ident) => {
                tracing::$level!(
                    subject = %decision.subject,
                    actor = decision.actor.as_deref(),
                    verdict = %decision.verdict,
                    rule = decision.rule.as_deref(),
                    fingerprint = decision.statements.first().map(|s| s.facts.fingerprint.as_str()),
                    "statement decided"
                )
            };
        }
        if decision.verdict == Verdict::Allow {
            decided!(debug);
        } else {
            decided!(info);
        }
        decision
    }

    fn on_query(&mut self, sql: &Str, frame: Bytes) -> SessionResult {
        let engine = self.current_engine();
        let decision = self.decide(&engine, sql);
        if let Some(message) = refusal(&decision) {
            return self.refuse_query(message);
        }
        let mut settings = false;
        for s in decision.statements.iter() {
            settings |= self.apply_effects(&s.facts);
        }
        let decision = Arc::new(decision);
        let first = decision.statements.first().map(|s| Arc::clone(&s.facts));
        let result = Result_::new(first, &decision);
        self.forward(&frame, Some(Pending::Query { decision, index: 0, result, failed: false, refusal: None }));
        if settings {
            self.barrier = true;
        }
        Ok(())
    }

    /// Applies a statement's effects to the engine's view when it is sent;
    /// returns whether the settings must be read back afterwards.
    fn apply_effects(&mut self, facts: &StatementFacts) -> bool {
        for effect in &facts.session_effects {
            self.state.apply(effect);
        }
        let changes_setting = facts
            .session_effects
            .iter()
            .any(|e| matches!(e, SessionEffect::SetSearchPath { .. } | SessionEffect::ResetSearchPath))
            || facts.commands.iter().any(|c| matches!(c.as_str(), "SET" | "RESET" | "DISCARD ALL" | "DISCARD"));
        if changes_setting {
            self.setting_touched_in_tx = true;
        }
        let ends_tx = facts.commands.iter().any(|c| {
            matches!(
                c.as_str(),
                "COMMIT" | "ROLLBACK" | "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED"
            )
        });
        changes_setting || (ends_tx && self.setting_touched_in_tx)
    }

    fn on_parse(&mut self, name: &str, sql: &Str, frame: Bytes) -> SessionResult {
        let engine = self.current_engine();
        let decision = self.decide(&engine, sql);
        if let Some(message) = refusal(&decision) {
            // The unnamed statement, or a name in use, now stands for the
            // refused text: a later Bind must not reach what the server
            // still holds under that name. Other names are unknown anyway
            // (and are not kept: a client could pile them up).
            if name.is_empty() || self.statements.contains_key(name) {
                self.statements.insert(name.to_string(), None);
            }
            return self.fail_block(INSUFFICIENT_PRIVILEGE, message);
        }
        let facts = decision.statements.first().map(|s| Arc::clone(&s.facts));
        let prepared = Prepared { id: self.next_id(), facts, decision: Arc::new(decision), fields: None };
        self.statements.insert(name.to_string(), Some(prepared));
        self.forward(&frame, Some(Pending::Parse));
        Ok(())
    }

    fn on_execute(&mut self, portal: &str, frame: Bytes) -> SessionResult {
        let Some(p) = self.portals.get(portal).cloned() else {
            return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_portal(portal));
        };
        if let Some(facts) = &p.prepared.facts {
            if self.apply_effects(facts) {
                self.resync_after_sync = true;
            }
        }
        // The columns: known from a Describe, or about to be told by a
        // Describe of this portal already on its way; otherwise the
        // gateway asks (and keeps the answer from the client).
        let describing = self.pending.iter().any(|e| matches!(e, Pending::DescribePortal { id, .. } if *id == p.id));
        if p.fields.is_none() && !describing {
            let mut describe = BytesMut::new();
            frontend::describe(b'P', portal, &mut describe).map_err(|e| e.to_string())?;
            self.forward(
                &describe.freeze(),
                Some(Pending::DescribePortal { name: portal.to_string(), id: p.id, internal: true }),
            );
        }
        let mut result = Result_::new(p.prepared.facts.clone(), &p.prepared.decision);
        result.rows = p.rows;
        let pending = Pending::Execute { portal: portal.to_string(), id: p.id, fields: p.fields.clone(), result };
        self.forward(&frame, Some(pending));
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    // --------------------------------------------------------------- upstream

    async fn on_upstream_bytes(&mut self, max: usize) -> SessionResult {
        loop {
            let frame = match codec::decode_backend(&mut self.up.buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("invalid message from the database: {e}");
                    self.emit_error("FATAL", "08006", "the database sent an invalid message")?;
                    self.closing = true;
                    break;
                }
            };
            self.on_backend(frame).await?;
        }
        Ok(())
    }

    async fn on_backend(&mut self, frame: BackendFrame) -> SessionResult {
        // Messages that can come at any time.
        match frame.kind {
            b'S' => {
                if let Ok((name, value)) = codec::parse_parameter_status(&frame) {
                    if name.as_str() == "standard_conforming_strings" {
                        self.state.standard_conforming_strings = value.as_str() == "on";
                    }
                }
                self.cout.extend_from_slice(&frame.frame);
                return Ok(());
            }
            b'A' => return self.relay_notification(&frame),
            b'N' => return self.relay_report(&frame),
            _ => {}
        }
        if self.skip_until_ready {
            if frame.kind != b'Z' {
                return Ok(());
            }
            self.skip_until_ready = false;
        }
        let Some(head) = self.pending.front_mut() else {
            if frame.kind == b'E' {
                // A FATAL error outside any statement (shutdown, terminated backend).
                return self.relay_report(&frame);
            }
            return Err(format!("unexpected message '{}' from the database", frame.kind as char));
        };
        match head {
            Pending::Query { .. } => self.on_query_frame(frame).await,
            Pending::Execute { .. } => self.on_execute_frame(frame).await,
            Pending::Parse | Pending::Bind | Pending::Close => {
                if frame.kind == b'E' {
                    return self.on_block_error(&frame);
                }
                self.pending.pop_front();
                self.forward_to_client(&frame);
                Ok(())
            }
            Pending::DescribeStatement { .. } | Pending::DescribePortal { .. } => self.on_describe_frame(frame).await,
            Pending::Sync => {
                if frame.kind == b'E' {
                    return self.relay_report(&frame);
                }
                if frame.kind != b'Z' {
                    return Err(format!("unexpected message '{}' before ReadyForQuery", frame.kind as char));
                }
                self.pending.pop_front();
                self.on_ready(frame)
            }
            Pending::ReadSearchPath { .. } => self.on_read_search_path(frame),
            Pending::Refused { .. } => {
                let Some(Pending::Refused { code, message }) = self.pending.pop_front() else { return Ok(()) };
                // The substitute failed (as it always does): the client gets the refusal.
                self.emit_error("ERROR", code, &message)?;
                self.drop_block();
                // After its error the server skips to Sync by itself; had the
                // substitute not failed, what it answers next is not the client's.
                self.skip_until_ready = frame.kind != b'E';
                if frame.kind != b'E' {
                    tracing::warn!("the refusal's substitute statement did not fail; skipping to Sync");
                }
                Ok(())
            }
        }
    }

    /// A `ReadyForQuery` that ends a client's block.
    fn on_ready(&mut self, frame: BackendFrame) -> SessionResult {
        let status = codec::parse_ready_for_query(&frame).map_err(|e| e.to_string())?;
        self.block_failed = false;
        let tx_ended = status == b'I';
        if tx_ended && self.pending.is_empty() {
            // Portals do not outlive their transaction (unless messages
            // after this Sync already made new ones).
            self.portals.clear();
        }
        self.tx_status = status;
        if self.barrier && self.pending.is_empty() && status != b'E' {
            // Read the settings back before the client goes on.
            let mut q = BytesMut::new();
            frontend::query("SELECT pg_catalog.current_setting('search_path')", &mut q).map_err(|e| e.to_string())?;
            self.uout.extend_from_slice(&q);
            self.pending.push_back(Pending::ReadSearchPath { held: frame, value: None });
            return Ok(());
        }
        if self.barrier && self.pending.is_empty() {
            // A failed transaction: the settings are read back once it ends.
            self.barrier = false;
        }
        if tx_ended {
            self.setting_touched_in_tx = false;
        }
        self.forward_to_client(&frame);
        Ok(())
    }

    fn on_read_search_path(&mut self, frame: BackendFrame) -> SessionResult {
        let Some(Pending::ReadSearchPath { value, .. }) = self.pending.front_mut() else { return Ok(()) };
        match frame.kind {
            b'D' => {
                if let Ok(values) = codec::data_row_values(&frame) {
                    *value = values.into_iter().next().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
                }
                Ok(())
            }
            b'Z' => {
                let Some(Pending::ReadSearchPath { held, value }) = self.pending.pop_front() else { return Ok(()) };
                match value.as_deref().and_then(EngineSession::search_path_from_setting) {
                    Some(path) => self.state.search_path = path,
                    None => {
                        // Unknown: no schema is searched, so unqualified
                        // names resolve to nothing and are refused.
                        tracing::warn!("could not read the search_path back; unqualified names will be refused");
                        self.state.search_path.clear();
                    }
                }
                self.barrier = false;
                if held.kind == b'Z' && self.tx_status == b'I' {
                    self.setting_touched_in_tx = false;
                }
                self.forward_to_client(&held);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A server error inside a `Sync` block: relayed, and the entries up to
    /// the block's `Sync` are dropped (the server skips those messages).
    fn on_block_error(&mut self, frame: &BackendFrame) -> SessionResult {
        self.relay_report(frame)?;
        self.block_failed = true;
        while let Some(p) = self.pending.front() {
            if matches!(p, Pending::Sync | Pending::Query { .. } | Pending::ReadSearchPath { .. }) {
                break;
            }
            self.pending.pop_front();
        }
        Ok(())
    }

    async fn on_describe_frame(&mut self, frame: BackendFrame) -> SessionResult {
        let (name, id, statement, internal) = match self.pending.front() {
            Some(Pending::DescribeStatement { name, id }) => (name.clone(), *id, true, false),
            Some(Pending::DescribePortal { name, id, internal }) => (name.clone(), *id, false, *internal),
            _ => return Ok(()),
        };
        let fields = match frame.kind {
            b't' => {
                self.forward_to_client(&frame);
                return Ok(());
            }
            b'n' => Vec::new(),
            // Names copied out: kept fields must not pin the read buffer.
            b'T' => codec::parse_row_description(&frame)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|f| FieldDescription { name: Str::from(f.name.as_str().to_string()), ..f })
                .collect(),
            b'E' => return self.on_block_error(&frame),
            other => return Err(format!("unexpected message '{}' after Describe", other as char)),
        };
        self.pending.pop_front();
        let fields = Arc::new(fields);
        let facts = if statement {
            match self.statements.get_mut(&name) {
                Some(Some(p)) if p.id == id => {
                    p.fields = Some(Arc::clone(&fields));
                    p.facts.clone()
                }
                _ => None,
            }
        } else {
            for entry in self.pending.iter_mut() {
                if let Pending::Execute { id: e, fields: f @ None, .. } = entry {
                    if *e == id {
                        *f = Some(Arc::clone(&fields));
                    }
                }
            }
            match self.portals.get_mut(&name) {
                Some(p) if p.id == id => {
                    p.fields = Some(Arc::clone(&fields));
                    p.prepared.facts.clone()
                }
                _ => None,
            }
        };
        if internal {
            return Ok(());
        }
        if frame.kind == b'n' {
            self.forward_to_client(&frame);
            return Ok(());
        }
        let masker = self.masker(facts.as_deref(), &fields).await;
        self.forward_row_description(&frame, &fields, &masker)
    }

    async fn on_execute_frame(&mut self, frame: BackendFrame) -> SessionResult {
        let Some(Pending::Execute { portal, fields, result, .. }) = self.pending.front() else { return Ok(()) };
        let portal = portal.clone();
        // The masker is planned at the first row of the result.
        if result.masker.is_none() && frame.kind == b'D' {
            let facts = result.facts.clone();
            let masker = match fields.clone() {
                Some(fields) => self.execute_masker(facts, fields).await,
                None => {
                    // Columns unknown: every value is masked whole.
                    let n = codec::data_row_values(&frame).map_err(|e| e.to_string())?.len();
                    tracing::warn!("result columns unknown; masking every value");
                    self.unknown_columns_masker(n)
                }
            };
            if let Some(Pending::Execute { result, .. }) = self.pending.front_mut() {
                result.masker = Some(masker);
            }
        }
        match frame.kind {
            b'D' | b'd' => self.on_row(frame).await,
            b'H' => self.start_copy_out(&frame, None).await,
            b'c' => {
                self.forward_to_client(&frame);
                Ok(())
            }
            b'G' => {
                self.copy_in = true;
                self.forward_to_client(&frame);
                Ok(())
            }
            b'C' | b's' | b'I' => {
                let Some(Pending::Execute { result, .. }) = self.pending.pop_front() else { return Ok(()) };
                if let Some(p) = self.portals.get_mut(&portal) {
                    p.rows = result.rows;
                }
                if result.capped || result.refused.is_some() {
                    self.report_cap(&result)?;
                    self.drop_block();
                    return Ok(());
                }
                if frame.kind == b'C' {
                    self.after_command(result.facts.as_deref()).await;
                }
                self.forward_to_client(&frame);
                Ok(())
            }
            b'E' => {
                let capped = matches!(self.pending.front(),
                    Some(Pending::Execute { result, .. }) if result.capped || result.refused.is_some());
                if capped {
                    let Some(Pending::Execute { result, .. }) = self.pending.pop_front() else { return Ok(()) };
                    self.report_cap(&result)?;
                    self.drop_block();
                    return Ok(());
                }
                self.copy_in = false;
                self.on_block_error(&frame)
            }
            other => Err(format!("unexpected message '{}' during Execute", other as char)),
        }
    }

    /// After a capped result: the client sees the cap as the block's error.
    fn drop_block(&mut self) {
        self.block_failed = true;
        while let Some(p) = self.pending.front() {
            if matches!(p, Pending::Sync | Pending::Query { .. } | Pending::ReadSearchPath { .. }) {
                break;
            }
            self.pending.pop_front();
        }
        // The server still answers what was sent after the capped
        // Execute; those answers are not the client's.
        self.skip_until_ready = true;
    }
}

impl SessionLoop {
    async fn on_query_frame(&mut self, frame: BackendFrame) -> SessionResult {
        let Some(Pending::Query { decision, index, failed, refusal, .. }) = self.pending.front() else {
            return Ok(());
        };
        let (decision, index, failed, refusal) = (Arc::clone(decision), *index, *failed, refusal.clone());
        if frame.kind == b'Z' {
            self.pending.pop_front();
            self.copy_in = false;
            return self.on_ready(frame);
        }
        if let Some(message) = refusal {
            // The substitute's failure becomes the refusal; nothing else of it reaches the client.
            if frame.kind == b'E' && !failed {
                self.emit_error("ERROR", INSUFFICIENT_PRIVILEGE, &message)?;
                if let Some(Pending::Query { failed, .. }) = self.pending.front_mut() {
                    *failed = true;
                }
            }
            return Ok(());
        }
        if failed {
            return Ok(());
        }
        // Only the frames that start or end a result need the statement's facts
        // (not every row).
        let facts = || decision.statements.get(index).map(|s| Arc::clone(&s.facts));
        match frame.kind {
            b'T' => {
                let fields = codec::parse_row_description(&frame).map_err(|e| e.to_string())?;
                let facts = facts();
                let masker = self.masker(facts.as_deref(), &fields).await;
                self.forward_row_description(&frame, &fields, &masker)?;
                if let Some(Pending::Query { result, .. }) = self.pending.front_mut() {
                    let mut fresh = Result_::new(facts, &decision);
                    fresh.masker = Some(masker);
                    *result = fresh;
                }
                Ok(())
            }
            b'D' | b'd' => self.on_row(frame).await,
            b'H' => self.start_copy_out(&frame, facts()).await,
            b'G' => {
                self.copy_in = true;
                self.forward_to_client(&frame);
                Ok(())
            }
            b'c' | b'W' | b'I' => {
                self.forward_to_client(&frame);
                Ok(())
            }
            b'C' => {
                let capped = self.current_result().is_some_and(|r| r.capped || r.refused.is_some());
                if capped {
                    self.end_capped_query()?;
                    return Ok(());
                }
                self.copy_in = false;
                self.after_command(facts().as_deref()).await;
                self.forward_to_client(&frame);
                if let Some(Pending::Query { index, result, .. }) = self.pending.front_mut() {
                    *index += 1;
                    let next = decision.statements.get(*index).map(|s| Arc::clone(&s.facts));
                    *result = Result_::new(next, &decision);
                }
                Ok(())
            }
            b'E' => {
                let capped = self.current_result().is_some_and(|r| r.capped || r.refused.is_some());
                if capped {
                    self.end_capped_query()?;
                    return Ok(());
                }
                self.copy_in = false;
                self.relay_report(&frame)?;
                if let Some(Pending::Query { failed, .. }) = self.pending.front_mut() {
                    *failed = true;
                }
                Ok(())
            }
            other => Err(format!("unexpected message '{}' in a query result", other as char)),
        }
    }

    fn end_capped_query(&mut self) -> SessionResult {
        let report = match self.pending.front_mut() {
            Some(Pending::Query { result, failed, .. }) => {
                *failed = true;
                Some(std::mem::replace(result, Result_::empty()))
            }
            _ => None,
        };
        if let Some(r) = report {
            self.report_cap(&r)?;
        }
        Ok(())
    }

    fn current_result(&self) -> Option<&Result_> {
        match self.pending.front() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => Some(result),
            _ => None,
        }
    }

    fn current_result_mut(&mut self) -> Option<&mut Result_> {
        match self.pending.front_mut() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => Some(result),
            _ => None,
        }
    }

    /// A result row (`DataRow`, or `CopyData` of a COPY TO STDOUT).
    async fn on_row(&mut self, frame: BackendFrame) -> SessionResult {
        let result = match self.pending.front_mut() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => result,
            _ => return Ok(()),
        };
        if result.refused.is_some() {
            return Ok(());
        }
        if frame.kind == b'd' && !result.copy_out {
            // COPY data outside a COPY OUT: not ours to judge.
            self.forward_to_client(&frame);
            return Ok(());
        }
        result.rows += 1;
        if result.cap > 0 && result.rows > result.cap {
            if !result.capped {
                result.capped = true;
                tracing::info!(cap = result.cap, "row cap reached; cancelling the query");
                self.gw.cancel_session(self.gateway_pid).await;
            }
            return Ok(());
        }
        let Some(masker) = result.masker.as_ref().filter(|m| !m.is_noop()) else {
            self.cout.extend_from_slice(&frame.frame);
            return Ok(());
        };
        if frame.kind == b'd' {
            let columns = result.copy_columns;
            let outcome = mask_copy_line(masker, frame.body(), columns, &mut self.row, &mut self.cout);
            match outcome {
                Err(()) => {
                    // A line that does not split into the result's columns
                    // cannot be masked: the rest of the COPY is refused.
                    result.refused = Some(
                        "a COPY line did not split into the result's columns, so it could not be masked; the COPY \
                         is refused"
                            .to_string(),
                    );
                }
                Ok(true) => {}
                Ok(false) => self.cout.extend_from_slice(&frame.frame),
            }
            if outcome.is_err() {
                self.gw.cancel_session(self.gateway_pid).await;
            }
            return Ok(());
        }
        let mut row = self.row.lend();
        let outcome = codec::data_row_values_into(&frame, &mut row).map_err(|e| e.to_string()).and_then(|()| {
            if masker.mask_row(&mut row) == 0 {
                self.cout.extend_from_slice(&frame.frame);
                Ok(())
            } else {
                codec::data_row(&mut self.cout, row.iter().map(Option::as_deref)).map_err(|e| e.to_string())
            }
        });
        self.row.give_back(row);
        outcome
    }

    async fn start_copy_out(&mut self, frame: &BackendFrame, facts: Option<Arc<StatementFacts>>) -> SessionResult {
        let (format, columns) = codec::parse_copy_response(frame).map_err(|e| e.to_string())?;
        let facts = facts.or_else(|| self.current_result().and_then(|r| r.facts.clone()));
        let engine = self.current_engine();
        let mut fields: Vec<ColumnInfo> = match facts.as_deref() {
            Some(f) if f.output_columns.len() == columns.len() && f.output_columns.iter().all(|c| c.name != "*") => {
                f.output_columns.iter().map(|c| ColumnInfo::text(&c.name, None)).collect()
            }
            _ => (0..columns.len()).map(|i| ColumnInfo::text(&format!("column{}", i + 1), None)).collect(),
        };
        // `COPY table TO STDOUT`: the table's columns, from the catalog.
        let whole_table = facts.as_deref().and_then(|f| match f.output_columns.as_slice() {
            [only] if only.name == "*" && only.sources.len() == 1 => {
                only.sources.first().and_then(|s| s.strip_suffix(".*")).map(str::to_string)
            }
            _ => None,
        });
        if let Some(table) = whole_table.filter(|_| !engine.policy().masks.is_empty()) {
            if let Some(names) = self.gw.catalog.copy_columns(&self.database, &table).await {
                if names.len() == columns.len() {
                    fields = names.iter().map(|n| ColumnInfo::text(n, Some(n))).collect();
                }
            }
        }
        let masker = engine.masker(&self.identity, facts.as_deref().unwrap_or(&StatementFacts::default()), &fields);
        // Only the plain text layout is masked: tab-separated, `\N` for
        // NULL, no header. Anything else with something to mask is refused.
        let plain =
            facts.as_deref().is_none_or(|f| f.copy_options.iter().all(|o| o.eq_ignore_ascii_case("format=text")));
        let column_masks = (0..fields.len()).any(|i| masker.mask_of(i).is_some());
        let refuse = match (masker.is_noop(), format != 0, plain) {
            (true, _, _) => None,
            (false, true, _) if column_masks => {
                Some("COPY in binary format of a result with masked columns is refused; use the text format")
            }
            (false, true, _) => Some(
                "COPY in binary format cannot be scanned by the policy's PII detectors and is refused; use the text \
                 format",
            ),
            (false, false, false) => Some(
                "COPY of masked data is done in the plain text format only (no CSV, DELIMITER, HEADER, NULL, QUOTE, \
                 ESCAPE or ENCODING options); this one is refused",
            ),
            (false, false, true) => None,
        };
        if let Some(result) = self.current_result_mut() {
            result.copy_out = true;
            result.copy_columns = columns.len();
            result.masker = Some(Arc::new(masker));
            if let Some(reason) = refuse {
                result.refused = Some(reason.to_string());
            }
        }
        if refuse.is_some() {
            self.gw.cancel_session(self.gateway_pid).await;
            return Ok(());
        }
        self.forward_to_client(frame);
        Ok(())
    }

    fn report_cap(&mut self, result: &Result_) -> SessionResult {
        let message = match &result.refused {
            Some(reason) => reason.clone(),
            None => {
                let rule = result.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
                format!(
                    "row limit reached: the statement returned more than {} rows, the most this identity may read \
                     at once{rule}; add a LIMIT or narrow the query",
                    result.cap
                )
            }
        };
        let code = if result.refused.is_some() { INSUFFICIENT_PRIVILEGE } else { PROGRAM_LIMIT_EXCEEDED };
        self.emit_error("ERROR", code, &message)
    }

    async fn after_command(&mut self, facts: Option<&StatementFacts>) {
        if facts.is_some_and(|f| f.class == policy_core::Class::Ddl) {
            self.gw.catalog.invalidate(&self.database).await;
            self.maskers.clear();
        }
    }

    /// A masker for a result whose columns the gateway does not know.
    fn unknown_columns_masker(&mut self, n: usize) -> Arc<RowMasker> {
        let engine = self.current_engine();
        let columns: Vec<ColumnInfo> = (0..n).map(|i| ColumnInfo::new(&format!("column{i}"), None, 0, true)).collect();
        Arc::new(engine.masker(&self.identity, &StatementFacts::default(), &columns))
    }

    /// The engine in force (a reload is noticed here: the masking plans
    /// made under the previous policy are dropped).
    fn current_engine(&mut self) -> Arc<Engine> {
        self.refresh_engine();
        Arc::clone(&self.engine)
    }

    fn refresh_engine(&mut self) {
        let generation = self.gw.generation();
        if generation != self.engine_generation {
            self.engine_generation = generation;
            self.engine = self.gw.engine();
            self.maskers.clear();
            self.last_masker = None;
        }
    }

    /// The masking plan of an `Execute`'s result: the last one when the
    /// statement and its columns are the very same (the usual prepared
    /// statement run again and again), otherwise [`Self::masker`]'s.
    async fn execute_masker(
        &mut self,
        facts: Option<Arc<StatementFacts>>,
        fields: Arc<Vec<FieldDescription>>,
    ) -> Arc<RowMasker> {
        self.refresh_engine();
        if let Some(last) = &self.last_masker {
            let same_facts = match (&last.facts, &facts) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same_facts && Arc::ptr_eq(&last.fields, &fields) {
                return Arc::clone(&last.masker);
            }
        }
        let masker = self.masker(facts.as_deref(), &fields).await;
        self.last_masker = Some(LastMasker { facts, fields, masker: Arc::clone(&masker) });
        masker
    }

    /// Plans the masking of a result, or finds the plan made for the same
    /// statement shape, lineage and columns under the same policy.
    async fn masker(&mut self, facts: Option<&StatementFacts>, fields: &[FieldDescription]) -> Arc<RowMasker> {
        let engine = self.current_engine();
        if engine.policy().masks.is_empty() && engine.detectors().is_empty() {
            return Arc::new(RowMasker::default());
        }
        let key = facts.map(|f| f.fingerprint.clone()).unwrap_or_default();
        let lineage = facts.map(|f| f.output_columns.as_slice()).unwrap_or_default();
        if let Some(hit) = self
            .maskers
            .get(&key)
            .and_then(|entries| entries.iter().find(|e| e.lineage == lineage && e.fields == fields))
        {
            return Arc::clone(&hit.masker);
        }
        let mut oids: Vec<u32> = fields.iter().map(|f| f.table_oid).filter(|o| *o != 0).collect();
        oids.sort_unstable();
        oids.dedup();
        let tables = if engine.policy().masks.is_empty() || oids.is_empty() {
            HashMap::new()
        } else {
            self.gw.catalog.tables(&self.database, &oids).await
        };
        let columns: Vec<ColumnInfo> = fields
            .iter()
            .map(|f| {
                let source = tables.get(&f.table_oid).and_then(|t| t.column(f.column));
                ColumnInfo::new(f.name.as_str(), source.as_deref(), f.type_oid, f.format == 1)
            })
            .collect();
        let default = StatementFacts::default();
        let masker = Arc::new(engine.masker(&self.identity, facts.unwrap_or(&default), &columns));
        if self.maskers.len() >= MASKER_CACHE_ENTRIES {
            self.maskers.clear();
        }
        self.maskers.entry(key).or_default().push(CachedMasker {
            lineage: lineage.to_vec(),
            fields: fields.to_vec(),
            masker: Arc::clone(&masker),
        });
        masker
    }

    fn forward_row_description(
        &mut self,
        frame: &BackendFrame,
        fields: &[FieldDescription],
        masker: &RowMasker,
    ) -> SessionResult {
        if masker.retyped_columns().is_empty() {
            self.forward_to_client(frame);
            return Ok(());
        }
        let mut fields = fields.to_vec();
        for &i in masker.retyped_columns() {
            if let Some(f) = fields.get_mut(i) {
                f.type_oid = 25;
                f.type_size = -1;
                f.type_modifier = -1;
            }
        }
        codec::row_description(&mut self.cout, &fields).map_err(|e| e.to_string())
    }

    fn forward_to_client(&mut self, frame: &BackendFrame) {
        self.cout.extend_from_slice(&frame.frame);
    }

    /// Relays a `NotificationResponse` (LISTEN/NOTIFY); its payload is data
    /// any session may have sent, so it passes through the detectors.
    fn relay_notification(&mut self, frame: &BackendFrame) -> SessionResult {
        let body = frame.body();
        let parsed = body.get(4..).and_then(|rest| {
            let channel_end = rest.iter().position(|b| *b == 0)?;
            let payload = rest.get(channel_end + 1..)?.strip_suffix(b"\0")?;
            Some((rest.get(..channel_end)?, std::str::from_utf8(payload).ok()?))
        });
        let Some((channel, payload)) = parsed else {
            return Err("malformed NotificationResponse from the database".to_string());
        };
        let scrubber = self.current_engine().scrubber(&self.identity, []);
        let Scrubbed::Replace(clean) = scrubber.scrub("00000", b'M', payload) else {
            self.forward_to_client(frame);
            return Ok(());
        };
        let mut body = Vec::with_capacity(frame.frame.len());
        body.extend_from_slice(body_pid(frame));
        body.extend_from_slice(channel);
        body.push(0);
        body.extend_from_slice(clean.as_bytes());
        body.push(0);
        let len = i32::try_from(body.len() + 4).map_err(|_| "notification too long".to_string())?;
        self.cout.extend_from_slice(b"A");
        self.cout.extend_from_slice(&len.to_be_bytes());
        self.cout.extend_from_slice(&body);
        Ok(())
    }

    /// Relays a server error or notice, scrubbed for this client.
    fn relay_report(&mut self, frame: &BackendFrame) -> SessionResult {
        let fields = codec::parse_fields(frame).map_err(|e| e.to_string())?;
        let engine = self.current_engine();
        let facts: Vec<Arc<StatementFacts>> = match self.pending.front() {
            Some(Pending::Query { decision, .. }) => decision.statements.iter().map(|s| Arc::clone(&s.facts)).collect(),
            Some(Pending::Execute { result, .. }) => result.facts.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let scrubber = engine.scrubber(&self.identity, facts.iter().map(|f| &**f));
        let sqlstate = fields.iter().find(|(c, _)| *c == b'C').map(|(_, v)| v.as_str().to_string()).unwrap_or_default();
        let mut changed = false;
        let mut out: Vec<(u8, Cow<'_, str>)> = Vec::with_capacity(fields.len());
        for (code, value) in &fields {
            match scrubber.scrub(&sqlstate, *code, value.as_str()) {
                Scrubbed::Keep => out.push((*code, Cow::Borrowed(value.as_str()))),
                Scrubbed::Replace(v) => {
                    changed = true;
                    out.push((*code, Cow::Owned(v)));
                }
                Scrubbed::Drop => changed = true,
            }
        }
        if !changed {
            self.forward_to_client(frame);
            return Ok(());
        }
        let borrowed: Vec<(u8, &str)> = out.iter().map(|(c, v)| (*c, v.as_ref())).collect();
        codec::fields_message(&mut self.cout, frame.kind, &borrowed).map_err(|e| e.to_string())
    }

    fn emit_error(&mut self, severity: &str, code: &str, message: &str) -> SessionResult {
        codec::error_response(&mut self.cout, severity, code, message, &[]).map_err(|e| e.to_string())
    }
}

impl Result_ {
    fn empty() -> Self {
        Result_ {
            facts: None,
            masker: None,
            rows: 0,
            cap: 0,
            rule: None,
            capped: false,
            copy_out: false,
            copy_columns: 0,
            refused: None,
        }
    }
}

/// The sending backend's pid at the start of a `NotificationResponse`.
fn body_pid(frame: &BackendFrame) -> &[u8] {
    frame.body().get(..4).unwrap_or_default()
}

/// The refusal message of a decision that is not an allow.
fn refusal(decision: &Decision) -> Option<String> {
    let rule = decision.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
    match decision.verdict {
        Verdict::Allow => None,
        Verdict::Deny => Some(format!("refused by policy{rule}: {}", decision.reason)),
        Verdict::RequireApproval => Some(format!(
            "this statement needs approval{rule}: {}; approvals are not available in this version of the gateway, \
             so it is refused",
            decision.reason
        )),
    }
}

fn unknown_statement(name: &str) -> String {
    format!("prepared statement \"{name}\" does not exist or was refused by policy")
}

fn unknown_portal(name: &str) -> String {
    format!("portal \"{name}\" does not exist or its statement was refused by policy")
}

/// The statement's columns with the formats a `Bind` asked for.
fn with_formats(fields: &[FieldDescription], formats: &[i16]) -> Vec<FieldDescription> {
    fields.iter().enumerate().map(|(i, f)| FieldDescription { format: format_at(formats, i), ..f.clone() }).collect()
}

/// The format of result column `i` under a `Bind`'s format codes: none
/// (text), one for all, or one per column.
fn format_at(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// Masks one line of COPY text format (`\t`-separated, `\N` for NULL,
/// backslash escapes) and, when something changed, appends the masked
/// `CopyData` message to `out` and returns true. Fields without an escape
/// are not copied; an error when the line does not have `columns` fields.
fn mask_copy_line(
    masker: &RowMasker,
    line: &[u8],
    columns: usize,
    scratch: &mut RowScratch,
    out: &mut BytesMut,
) -> Result<bool, ()> {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    let mut row = scratch.lend();
    row.extend(body.split(|b| *b == b'\t').map(copy_unescape));
    let outcome = mask_copy_fields(masker, &mut row, columns, newline, out);
    scratch.give_back(row);
    outcome
}

fn mask_copy_fields(
    masker: &RowMasker,
    row: &mut [Option<Cow<'_, [u8]>>],
    columns: usize,
    newline: bool,
    out: &mut BytesMut,
) -> Result<bool, ()> {
    if row.len() != columns {
        return Err(());
    }
    if masker.mask_row(row) == 0 {
        return Ok(false);
    }
    let start = out.len();
    out.extend_from_slice(b"d\0\0\0\0");
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\t");
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => copy_escape(v, out),
        }
    }
    if newline {
        out.extend_from_slice(b"\n");
    }
    let Ok(len) = i32::try_from(out.len() - start - 1) else {
        out.truncate(start);
        return Err(());
    };
    if let Some(word) = out.get_mut(start + 1..start + 5) {
        word.copy_from_slice(&len.to_be_bytes());
    }
    Ok(true)
}

/// The room of one row's values, kept from row to row (a result of a
/// million rows allocates it once).
#[derive(Debug, Default)]
struct RowScratch(Vec<Option<Cow<'static, [u8]>>>);

impl RowScratch {
    /// An empty row to fill with values borrowed from one frame.
    fn lend<'a>(&mut self) -> Vec<Option<Cow<'a, [u8]>>> {
        std::mem::take(&mut self.0)
    }

    /// Takes the row's room back (the values are dropped; collecting an
    /// emptied vector into one of the same layout keeps its allocation).
    fn give_back(&mut self, mut row: Vec<Option<Cow<'_, [u8]>>>) {
        row.clear();
        self.0 = row.into_iter().map(|_| None).collect();
    }
}

/// One COPY text field: `None` for `\N`, borrowed when it has no escape.
fn copy_unescape(field: &[u8]) -> Option<Cow<'_, [u8]>> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'v') => out.push(11),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    Some(Cow::Owned(out))
}

fn copy_escape(value: &[u8], out: &mut BytesMut) {
    let mut plain = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(value.get(plain..i).unwrap_or_default());
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(value.get(plain..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_scratch_keeps_its_room() {
        let mut scratch = RowScratch::default();
        let line = b"a\tb\tc".to_vec();
        let mut row = scratch.lend();
        row.extend(line.split(|b| *b == b'\t').map(|f| Some(Cow::Borrowed(f))));
        let room = row.capacity();
        scratch.give_back(row);
        let again = scratch.lend();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
    }

    #[test]
    fn copy_text_round_trips() {
        for field in [&b"plain"[..], b"tab\\there", b"back\\\\slash", b"new\\nline"] {
            let decoded = copy_unescape(field).unwrap();
            let mut out = BytesMut::new();
            copy_escape(&decoded, &mut out);
            assert_eq!(&out[..], field);
        }
        assert_eq!(copy_unescape(b"\\N"), None);
    }
}
