//! The session core: the protocol logic of one client session, with no I/O.
//!
//! [`SessionCore`] is fed what arrives ([`SessionCore::client_buffer`] and
//! [`SessionCore::handle_client_data`], the same for the server, catalog
//! answers, record acknowledgements, hold outcomes, timer expiries and
//! cancels) and hands out what to do: bytes for the client
//! ([`SessionCore::client_output`]), bytes for the server
//! ([`SessionCore::server_output`]) and [`Need`]s for the driver to perform.
//! It never touches a socket or a clock: time comes in as an argument.
//!
//! See the [module docs](super) for what it does with each message.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use policy_core::{
    Class, ColumnInfo, Context, CopyLayout, CopyOutAction, Decision, Definitions, Engine, GatewayCommand, Identity,
    RowMasker, Scrubbed, Session as EngineSession, SessionEffect, StatementFacts, Verdict,
};
use postgres_protocol::message::frontend;

use super::hold::{HeldStatement, HoldOutcome, HoldRequest, Reading};
use super::names::NameMap;
use super::record::{Record, RecordError, ReportedError, ResultRecord, StatementRecord};
use super::registry::Activity;
use crate::catalog::Table;
use crate::codec::{
    self, copy, BackendFrame, BackendMessage, BackendView, BindView, CodecError, FieldDescription, FormatCodes,
    FrontendFrame, FrontendView,
};
use crate::metrics::{HoldEnd, Metrics, StatementCounters};

/// Hashing of the masking plans' keys: foldhash, seeded per map (see
/// [`super::names`]).
type Names = foldhash::quality::RandomState;

/// SQLSTATE of a refusal by policy.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE of the row cap.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// SQLSTATE of a protocol violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE of a batch whose records could not be written.
pub const IO_ERROR: &str = "58030";
/// SQLSTATE of a cancelled (or timed-out) held statement.
pub const QUERY_CANCELED: &str = "57014";
/// SQLSTATE of a client that sent too much while a batch waited.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// SQLSTATE of a `portcullis.*` setting the gateway cannot take.
pub const INVALID_PARAMETER_VALUE: &str = "22023";

/// What the server runs in place of a refused statement: it fails while
/// being parsed, without touching anything, so the server's transaction
/// takes the failure exactly as it would the refused statement's own
/// error (an open transaction is aborted, as PostgreSQL does, and the
/// client cannot commit half of it by ignoring the refusal). The server's
/// log shows this text; the client sees the refusal instead.
pub const REFUSED_SQL: &str = "SELECT 'portcullis: statement refused by policy'::pg_catalog.int4";

/// Most masking plans a session keeps.
const MASKER_CACHE_ENTRIES: usize = 256;

/// How the core behaves; fixed for a session.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The largest message accepted from either side.
    pub max_message_bytes: usize,
    /// Whether batches are recorded before they are forwarded (false with
    /// a no-op record sink: no record is built, nothing waits).
    pub record: bool,
    /// Whether `require_approval` statements are held (a hold handler is
    /// there) or refused.
    pub holds: bool,
    /// How long a statement may be held.
    pub hold_timeout: Duration,
    /// The most client bytes kept while a batch waits (for the record sink,
    /// an approval or the settings read-back).
    pub max_buffered_bytes: usize,
    /// Observe mode: statements the policy refuses or would hold are
    /// forwarded, and their records say so (`record` must be on).
    pub observe: bool,
    /// Result rows kept in each result record, as the client got them
    /// (masked); 0 keeps none.
    pub record_rows: usize,
    /// Records carry the bound parameters.
    pub record_parameters: bool,
    /// Statement records say whether running them can make a change
    /// durable ([`StatementRecord::durable`](crate::session::record::StatementRecord::durable)),
    /// for a sink that syncs before those alone
    /// ([`RecordSink::marks_durable`](crate::session::record::RecordSink::marks_durable)).
    pub mark_durable: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_message_bytes: codec::DEFAULT_MAX_MESSAGE_BYTES,
            record: false,
            holds: false,
            hold_timeout: Duration::from_secs(15 * 60),
            max_buffered_bytes: codec::DEFAULT_MAX_MESSAGE_BYTES,
            observe: false,
            record_rows: 0,
            record_parameters: false,
            mark_durable: true,
        }
    }
}

/// What a session starts with.
#[derive(Debug, Clone)]
pub struct SessionStart {
    /// The session id (the registry's, as in the logs and records).
    pub id: u64,
    /// Who the client is.
    pub identity: Identity,
    /// The engine in force.
    pub engine: Arc<Engine>,
    /// The `search_path` the server session started with (the startup
    /// parameter, or the policy's): what a reset returns to.
    pub search_path: Vec<String>,
    /// The server's `standard_conforming_strings` at startup.
    pub standard_conforming_strings: bool,
    /// The upstream role (for `$user` in the search path).
    pub user: String,
    /// The database the session uses.
    pub database: String,
    /// How the core behaves.
    pub config: CoreConfig,
    /// Where it counts its statements, masked values, row caps and holds.
    pub metrics: Arc<Metrics>,
}

/// Something the driver must do for the core.
#[derive(Debug)]
pub enum Need {
    /// Resolve these table OIDs through the catalog and answer with
    /// [`SessionCore::handle_tables`]. Server messages wait until then.
    ResolveTables {
        /// The OIDs.
        oids: Vec<u32>,
    },
    /// Read the columns of `tables` (`schema.name`: names and types, in
    /// order, one table after the other) and answer with
    /// [`SessionCore::handle_copy_columns`]. Server messages wait.
    CopyColumns {
        /// The tables.
        tables: Vec<String>,
    },
    /// Read the column names of `tables` (`schema.name`), in order, for
    /// whole rows of them in a result, and answer with
    /// [`SessionCore::handle_row_fields`]. Server messages wait.
    RowFields {
        /// The tables.
        tables: Vec<String>,
    },
    /// The catalog changed (DDL ran, or a statement that may change views
    /// completed): forget cached table names and read the views again
    /// before the client hears back.
    InvalidateCatalog,
    /// Cancel what the upstream connection runs.
    CancelUpstream,
    /// Write these records without waiting (the results of statements
    /// that ran).
    Log {
        /// The records, in order.
        records: Vec<Record>,
    },
    /// Persist these records and answer with
    /// [`SessionCore::handle_persisted`]; the batch waits.
    Persist {
        /// The batch.
        batch: u64,
        /// Its records.
        records: Vec<Record>,
    },
    /// Start deciding a held batch; answer with
    /// [`SessionCore::handle_hold_outcome`].
    Hold {
        /// The hold.
        hold: u64,
        /// What is held.
        request: HoldRequest,
    },
    /// The hold ended another way (timeout, cancel): stop deciding it.
    EndHold {
        /// The hold.
        hold: u64,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    /// The client sent `Terminate`.
    #[error("the client terminated the session")]
    Terminated,
    /// The client closed the connection.
    #[error("the client went away")]
    ClientGone,
    /// The server closed the connection.
    #[error("the database closed the connection")]
    ServerGone,
    /// The client sent bytes that are not a valid message.
    #[error("invalid client message: {0}")]
    ClientProtocol(CodecError),
    /// The server sent bytes that are not a valid message.
    #[error("invalid message from the database: {0}")]
    ServerProtocol(CodecError),
    /// A message came in a protocol state the gateway did not expect.
    #[error("unexpected protocol state: {0}")]
    Unexpected(String),
    /// The client sent more than the gateway keeps while a batch waits.
    #[error("the client sent more than {0} bytes while a statement waited")]
    Flooded(usize),
    /// The session was ended through the registry.
    #[error("the session was ended by an administrator")]
    Killed,
}

/// How a batch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchEnd {
    /// A simple query (or a function call), answered up to its
    /// `ReadyForQuery`.
    Query,
    /// `Sync`: the client's, or the gateway's own (its `ReadyForQuery` is
    /// not the client's).
    Sync { from_client: bool },
    /// `Flush`.
    Flush,
    /// `Terminate`.
    Terminate,
}

/// Client messages up to what PostgreSQL executes as a unit, decided and
/// waiting to be recorded and forwarded.
#[derive(Debug, Default)]
struct Batch {
    /// The bytes for the server.
    bytes: BytesMut,
    /// What the server will answer, in order.
    pending: Vec<Pending>,
    /// Records of the batch's statements.
    records: Vec<Record>,
    /// How many statements of it were recorded (their results are open).
    recorded: usize,
    /// Statements needing approval.
    held: Vec<HeldStatement>,
    /// The engine's session before the batch changed it.
    snapshot: Option<Box<EngineSession>>,
    /// Statement and portal names the batch defined.
    statements: Vec<String>,
    portals: Vec<String>,
    /// An allowed `COPY ... FROM STDIN` is in it: data follows.
    copy_in: bool,
    /// A statement in it changes settings: read them back after it.
    settings: bool,
    /// How it ended.
    end: Option<BatchEnd>,
    /// A message of it was refused: the client's messages after it are
    /// dropped up to `Sync`.
    failed: bool,
}

/// Snapshots of the engine's session that forwarded batches no longer
/// need, kept for their memory: one taken outside a transaction block and
/// one inside, since a transaction's `BEGIN` and its `COMMIT` each take a
/// snapshot, and a copy into one of the other kind would drop or allocate
/// the transaction's paths every time.
#[derive(Debug, Default)]
struct SpareSnapshots {
    outside: Option<Box<EngineSession>>,
    inside: Option<Box<EngineSession>>,
}

impl SpareSnapshots {
    /// The spare for a copy of `session`: one of its kind, not the other
    /// (taken, it would leave the next copy of the other kind none: each
    /// kind gets its own at its first copy).
    fn take_for(&mut self, session: &EngineSession) -> Option<Box<EngineSession>> {
        match session.transaction {
            Some(_) => self.inside.take(),
            None => self.outside.take(),
        }
    }

    /// Keeps a snapshot no batch needs any more as the spare of its kind,
    /// in place of the one kept before (if any: one of each is enough).
    fn keep(&mut self, snapshot: Box<EngineSession>) {
        match snapshot.transaction {
            Some(_) => self.inside = Some(snapshot),
            None => self.outside = Some(snapshot),
        }
    }
}

impl Batch {
    /// Empties a forwarded batch for a later one: its lists keep their
    /// memory unless a rare large batch grew them (the snapshot is the
    /// caller's to keep or drop).
    fn empty(&mut self) {
        fn keep<T>(list: &mut Vec<T>) {
            if list.capacity() <= SPARE_RECORD_CAPACITY {
                list.clear();
            } else {
                *list = Vec::new();
            }
        }
        // Destructured, so that a field added later is emptied too.
        let Batch {
            bytes,
            pending,
            records,
            recorded,
            held,
            snapshot: _,
            statements,
            portals,
            copy_in,
            settings,
            end,
            failed,
        } = self;
        if bytes.capacity() <= SPARE_BATCH_BYTES {
            bytes.clear();
        } else {
            *bytes = BytesMut::new();
        }
        keep(pending);
        keep(records);
        keep(held);
        keep(statements);
        keep(portals);
        *recorded = 0;
        *copy_in = false;
        *settings = false;
        *end = None;
        *failed = false;
    }
}

/// How client messages are taken.
#[derive(Debug)]
enum ClientState {
    /// Read, decided and staged into the current batch.
    Reading,
    /// An allowed `COPY ... FROM STDIN` was forwarded: COPY messages pass.
    CopyIn,
    /// A message of this extended-protocol batch failed: the rest is
    /// dropped up to `Sync`, as the server does.
    DiscardingUntilSync,
    /// The batch (in [`SessionCore`]'s `waiting`) waits for its records
    /// to be persisted.
    Recording { id: u64 },
    /// The batch (in `waiting`) is held until someone decides.
    Held { id: u64, deadline: Instant },
    /// The settings are read back from the server before the client goes
    /// on.
    ReadingSettingsBack,
    /// The session is over.
    Closed(SessionEnd),
}

/// How server messages are taken.
#[derive(Debug)]
enum BackendState {
    /// Relayed in order.
    Relaying,
    /// Dropped up to the next `ReadyForQuery` (after a row cap ended a
    /// block early).
    SkippingToReady,
    /// This frame waits for a catalog answer.
    WaitingCatalog(BackendFrame),
}

/// What the server does with the rest of the extended-protocol block it is
/// answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// It runs it.
    Running,
    /// It failed it (an `ErrorResponse`): it skips every message up to
    /// `Sync`, a simple query sent inside the block too, and answers none.
    Failed,
    /// The gateway stopped relaying it (a row cap, a result it may not
    /// relay) and told the client of an error; the server, which did not
    /// fail, runs the rest, whose answers are dropped up to the block's
    /// `ReadyForQuery`.
    Dropped,
}

/// What a prepared statement was judged with: the server analyses it
/// again with the `search_path` of the moment when that changed (and after
/// DDL, with the views of the moment), still reading its text as it was
/// lexed at `Parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Judged {
    search_path: Vec<String>,
    definitions: Option<u64>,
    /// The digest of the policy it was decided under: a reload judges it
    /// again.
    policy: Arc<str>,
}

/// A statement prepared with `Parse`, as the gateway knows it.
#[derive(Debug, Clone)]
struct Prepared {
    /// Unique in the session: answers are matched by id, not by name.
    id: u64,
    /// The text (copied: a kept frame would pin the client's read
    /// buffer): records and holds show it, and it is judged again when
    /// the session's path or views change before an `Execute`.
    sql: Arc<str>,
    /// What it was judged with.
    judged: Judged,
    /// The `standard_conforming_strings` its text was lexed with.
    standard_conforming_strings: bool,
    /// Facts of the statement (the first one of the text).
    facts: Option<Arc<StatementFacts>>,
    /// The whole decision.
    decision: Arc<Decision>,
    /// The columns, once a `Describe` showed them.
    fields: Option<Arc<Vec<FieldDescription>>>,
}

/// A portal made by `Bind`.
#[derive(Debug, Clone)]
struct Portal {
    id: u64,
    prepared: Arc<Prepared>,
    fields: Option<Arc<Vec<FieldDescription>>>,
    /// Rows sent so far (across `Execute`s of the portal).
    rows: u64,
    /// Parameter formats and values, for records and holds.
    param_formats: Vec<i16>,
    params: Vec<Option<Bytes>>,
    /// Set once a `Describe` of the portal is sent (the client's or the
    /// gateway's): where its answer puts the columns, shared with the
    /// `Execute`s staged before it comes, so an `Execute` neither asks
    /// again nor searches what is in flight (a pipeline of executions costs
    /// each the same).
    told: Option<ToldFields>,
}

/// The columns a `Describe` of a portal tells, once it does: shared by the
/// `Describe` in flight and the portal's `Execute`s staged before its
/// answer, so the answer reaches them without a search.
type ToldFields = Arc<OnceLock<Arc<Vec<FieldDescription>>>>;

/// The lines of a COPY TO STDOUT being relayed.
#[derive(Debug)]
struct CopyOut {
    /// Columns announced by the `CopyOutResponse`.
    columns: usize,
    layout: CopyLayout,
    /// A CSV header line is still to come (passed on as it is).
    header: bool,
    /// Which fields of the CSV line being masked were quoted.
    quoted: Vec<bool>,
    /// The binary layout's reader (rows may span `CopyData` messages).
    binary: Option<copy::BinaryCopy>,
}

/// The result being relayed.
#[derive(Debug)]
struct ResultState {
    facts: Option<Arc<StatementFacts>>,
    masker: Option<Arc<RowMasker>>,
    rows: u64,
    cap: u64,
    /// The decision whose rule the row cap names.
    decision: Option<Arc<Decision>>,
    capped: bool,
    /// COPY TO STDOUT: its lines' layout, masked per line.
    copy_out: Option<Box<CopyOut>>,
    /// The result may not be relayed (why): its rows are dropped and the
    /// client gets this as an error.
    refused: Option<Box<str>>,
}

impl ResultState {
    fn new(facts: Option<Arc<StatementFacts>>, decision: &Arc<Decision>) -> Self {
        ResultState {
            facts,
            masker: None,
            rows: 0,
            cap: decision.max_rows,
            decision: Some(Arc::clone(decision)),
            capped: false,
            copy_out: None,
            refused: None,
        }
    }

    fn empty() -> Self {
        ResultState {
            facts: None,
            masker: None,
            rows: 0,
            cap: 0,
            decision: None,
            capped: false,
            copy_out: None,
            refused: None,
        }
    }

    fn stopped(&self) -> bool {
        self.capped || self.refused.is_some()
    }
}

/// A refusal the client gets in place of the server's failure of
/// [`REFUSED_SQL`].
#[derive(Debug, Clone)]
struct Refusal {
    code: &'static str,
    message: String,
    /// The refused statement has a record, whose result this refusal is.
    recorded: bool,
}

/// What the server is expected to answer, in order.
#[derive(Debug)]
enum Pending {
    /// A simple query, up to its `ReadyForQuery`.
    Query { decision: Arc<Decision>, index: usize, result: ResultState, failed: bool, refusal: Option<Box<Refusal>> },
    /// `ParseComplete`.
    Parse,
    /// `BindComplete`.
    Bind,
    /// `ParameterDescription` and `RowDescription` or `NoData`.
    DescribeStatement { name: String, id: u64 },
    /// `RowDescription` or `NoData`; `internal` when the gateway asked.
    DescribePortal { name: String, id: u64, internal: bool, told: ToldFields },
    /// Rows and the end of an `Execute`; `told`: where a `Describe` in
    /// flight puts the columns when they are not known yet.
    Execute {
        portal: String,
        fields: Option<Arc<Vec<FieldDescription>>>,
        told: Option<ToldFields>,
        result: ResultState,
    },
    /// `CloseComplete`.
    Close,
    /// `ReadyForQuery` after `Sync`: the client's, or the gateway's own
    /// (see [`SessionCore::end_block_before_query`]), whose answer the
    /// client does not see.
    Sync { from_client: bool },
    /// A `Sync` sent while the server may be in COPY IN, where it ignores
    /// it: answered only when the COPY never started.
    MaybeSync,
    /// The server's failure of [`REFUSED_SQL`], sent in place of a refused
    /// extended-protocol message.
    Refused(Refusal),
    /// The gateway's own `search_path` read-back; the client's
    /// `ReadyForQuery` is held until it is done.
    ReadSearchPath { held: Option<BackendFrame>, value: Option<String>, role: Option<String> },
}

// Every message of the extended protocol moves one of these in and out of
// the queue: kept within two cache lines, a move is a few stores and not a
// `memcpy` call.
const _: () = assert!(std::mem::size_of::<Pending>() <= 128);

/// A masking plan, with what it was made from.
#[derive(Debug)]
struct CachedMasker {
    lineage: Vec<policy_core::OutputColumn>,
    fields: Vec<FieldDescription>,
    masker: Arc<RowMasker>,
}

/// The last `RowDescription` answering a client's `Describe`, as read and
/// planned (under the session's current engine).
#[derive(Debug)]
struct LastDescription {
    frame: Bytes,
    facts: Option<Arc<StatementFacts>>,
    fields: Arc<Vec<FieldDescription>>,
    masker: Arc<RowMasker>,
}

/// Whether two results belong to the very same statement facts.
/// Drops the first `taken` bytes of a read buffer. A buffer read to its
/// end is emptied where it starts, keeping all its room for the next
/// read (advancing past the end would leave the room behind, to be
/// reclaimed by the next reservation).
fn consume(buf: &mut BytesMut, taken: usize) {
    if taken >= buf.len() {
        buf.clear();
    } else {
        buf.advance(taken);
    }
}

fn same_facts(a: &Option<Arc<StatementFacts>>, b: &Option<Arc<StatementFacts>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The masking plan of the last `Execute`.
#[derive(Debug)]
struct LastMasker {
    facts: Option<Arc<StatementFacts>>,
    fields: Arc<Vec<FieldDescription>>,
    masker: Arc<RowMasker>,
}

/// The caller and the engine's view of the server session, kept together
/// ([`Context`]) so that the decision cache's key for them is made once per
/// change of the session: every mutable access to the session (`DerefMut`)
/// drops it, and a decision by another engine (a policy reload) makes it
/// again.
#[derive(Debug)]
struct EngineState {
    context: Context,
}

impl EngineState {
    fn identity(&self) -> &Identity {
        self.context.identity()
    }

    /// Applies a statement's effect to the engine's session.
    fn apply(&mut self, effect: &SessionEffect) {
        self.context.apply(effect);
    }
}

impl std::ops::Deref for EngineState {
    type Target = EngineSession;
    fn deref(&self) -> &EngineSession {
        self.context.session()
    }
}

impl std::ops::DerefMut for EngineState {
    fn deref_mut(&mut self) -> &mut EngineSession {
        self.context.session_mut()
    }
}

/// One client session's protocol logic. See the [module docs](super).
#[derive(Debug)]
pub struct SessionCore {
    id: u64,
    database: String,
    config: CoreConfig,
    engine: Arc<Engine>,
    /// An engine a reload brought, waiting for the statements in flight to
    /// finish ([`SessionCore::set_engine`]).
    next_engine: Option<Arc<Engine>>,
    metrics: Arc<Metrics>,
    state: EngineState,
    /// The client's `SET portcullis.reason`, kept for its next held
    /// statement.
    reason: Option<String>,
    client: ClientState,
    backend: BackendState,
    client_in: BytesMut,
    backend_in: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    needs: VecDeque<Need>,
    /// The batch being read.
    batch: Batch,
    /// The batch that waits for its records or an approval
    /// ([`ClientState::Recording`], [`ClientState::Held`]); otherwise an
    /// emptied one whose buffers the next batch takes. The two trade
    /// places rather than a batch being moved from state to state.
    waiting: Batch,
    statements: NameMap<Option<Arc<Prepared>>>,
    portals: NameMap<Portal>,
    pending: VecDeque<Pending>,
    /// The transaction status of the last `ReadyForQuery`.
    tx_status: u8,
    /// What the server does with the rest of the block it is answering
    /// (the one up to the first `Sync` outstanding).
    block: Block,
    /// The client has sent extended-protocol messages since its last
    /// `Sync`: the block is open.
    block_open: bool,
    /// Read the settings back after the next `Sync` (a batch that changed
    /// one ended with `Flush`).
    resync_after_sync: bool,
    /// Read the settings back when the client's COPY ends.
    settings_after_copy: bool,
    /// The client sent a `Sync` during its COPY data (not forwarded).
    sync_held_in_copy: bool,
    /// A setting changed in the current transaction.
    setting_touched_in_tx: bool,
    /// The engine's session opened the implicit transaction block of the
    /// extended-protocol messages up to the next `Sync`.
    implicit_until_sync: bool,
    /// The last `Execute` answered put the server in COPY IN (so a
    /// [`Pending::MaybeSync`] after it gets no answer).
    copy_in_started: bool,
    ids: u64,
    batches: u64,
    sequence: u64,
    maskers: HashMap<String, Vec<CachedMasker>, Names>,
    last_masker: Option<LastMasker>,
    last_description: Option<LastDescription>,
    /// A catalog answer for the frame that waits for it.
    tables: Option<HashMap<u32, Arc<Table>>>,
    copy_columns: Option<Option<Vec<ColumnInfo>>>,
    /// The catalog's answer to [`Need::RowFields`]: each table found, with
    /// its columns in order.
    row_fields: Option<HashMap<String, Vec<String>>>,
    /// Room for one row's values, reused.
    row: RowScratch,
    /// A statement that may change the database's views was let through
    /// and the views were not read again since: the engine's session holds
    /// [`Definitions::unavailable`] until every statement sent so far is
    /// answered and the transaction it ran in has ended (the gateway's
    /// catalog connection sees only what is committed).
    definitions_pending: bool,
    /// A schema change ran in the open transaction: the catalog is read
    /// again when it ends.
    catalog_stale: bool,
    now: Instant,
    /// Recorded statements whose results are not complete, oldest first:
    /// the server answers in order, so the front is the one answered now.
    open: VecDeque<ResultRecord>,
    /// When each statement of `open` was forwarded (decided).
    open_since: VecDeque<Instant>,
    /// Completed results (and records of refused holds): they go with
    /// the session's next [`Need::Persist`], ahead of its statements, or
    /// as a [`Need::Log`] once they are due.
    finished: Vec<Record>,
    /// When `finished` stopped being empty; `None` while it is.
    finished_since: Option<Instant>,
    /// `finished` waited [`RESULTS_WAIT`]: it goes out as a [`Need::Log`].
    finished_due: bool,
    /// Emptied record lists the driver gave back ([`SessionCore::recycle`]),
    /// for the next batch's records: a session that records allocates no
    /// list per statement.
    spare_records: Vec<Vec<Record>>,
    /// Snapshots of the engine's session forwarded batches no longer
    /// need, for the next batch that changes the session: copied into,
    /// not allocated again (a transaction's `BEGIN` and `COMMIT` each take
    /// one while batches can be refused).
    spare_snapshots: SpareSnapshots,
    /// The digest of the policy in force, for records.
    policy_digest: Arc<str>,
    /// The digest of the policy in force when the session started (the
    /// one its start record names).
    start_digest: Arc<str>,
    /// The session's handles on the statement counters.
    statement_counters: StatementCounters,
    /// Decisions recorded in full lately, newest first, with the statement
    /// whose record holds each: a statement decided the same way again (a
    /// prepared statement executed again, a query of a shape seen before)
    /// names that record instead. Each is kept with its
    /// [`fingerprints_key`], so that the list is scanned without reaching
    /// into every decision.
    recorded_decisions: Vec<RecordedDecision>,
}

/// A decision recorded in full, and where.
#[derive(Debug)]
struct RecordedDecision {
    /// [`fingerprints_key`] of `decision`.
    key: u64,
    decision: Arc<Decision>,
    /// The statement whose record holds it.
    sequence: u64,
}

/// A key of a decision's statement fingerprints (FNV-1a over them, each
/// followed by a separator). Decisions alike apart from their spans have
/// equal fingerprints, so equal keys; decisions with unequal keys are
/// not alike, and only an equal key is worth comparing whole.
fn fingerprints_key(decision: &Decision) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    for statement in decision.statements.iter() {
        for &b in statement.facts.fingerprint.as_bytes() {
            key = (key ^ u64::from(b)).wrapping_mul(PRIME);
        }
        key = (key ^ 0x100).wrapping_mul(PRIME);
    }
    key
}

/// How many recorded decisions a session remembers.
const RECORDED_DECISIONS: usize = 8;

/// How long completed results wait for the session's next statement
/// record to go with (one write for both) before they are handed over
/// on their own.
///
/// The driver's timer for it is not moved to a later deadline at every
/// statement (that takes the timer wheel's lock), so a busy session's
/// timer goes off about once per wait to find nothing due: the wait sets
/// how often (at 10 ms, a third of a wake-up per tpcb transaction at
/// `-c 8`).
pub const RESULTS_WAIT: Duration = Duration::from_millis(50);
/// The most completed results that wait so.
const RESULTS_WAITING: usize = 64;

/// Record lists a session keeps for reuse, and the largest it keeps.
const SPARE_RECORD_LISTS: usize = 4;
const SPARE_RECORD_CAPACITY: usize = 64;
/// The largest buffer of a forwarded batch kept for the next one.
const SPARE_BATCH_BYTES: usize = 64 * 1024;

impl SessionCore {
    /// A session that has just logged in (the client saw `ReadyForQuery`).
    pub fn new(start: SessionStart, now: Instant) -> SessionCore {
        let start_digest: Arc<str> = Arc::from(start.engine.policy().digest.as_str());
        let state = EngineSession {
            standard_conforming_strings: start.standard_conforming_strings,
            user: Some(start.user),
            ..EngineSession::default()
        }
        .with_startup_search_path(start.search_path);
        SessionCore {
            id: start.id,
            database: start.database,
            config: start.config,
            engine: start.engine,
            next_engine: None,
            metrics: start.metrics,
            state: EngineState { context: Context::new(start.identity, state) },
            client: ClientState::Reading,
            backend: BackendState::Relaying,
            client_in: BytesMut::new(),
            backend_in: BytesMut::new(),
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            needs: VecDeque::new(),
            batch: Batch::default(),
            waiting: Batch::default(),
            statements: NameMap::default(),
            portals: NameMap::default(),
            pending: VecDeque::new(),
            tx_status: b'I',
            block: Block::Running,
            block_open: false,
            resync_after_sync: false,
            settings_after_copy: false,
            sync_held_in_copy: false,
            setting_touched_in_tx: false,
            implicit_until_sync: false,
            copy_in_started: false,
            ids: 0,
            batches: 0,
            reason: None,
            sequence: 0,
            maskers: HashMap::default(),
            last_masker: None,
            last_description: None,
            tables: None,
            copy_columns: None,
            row_fields: None,
            row: RowScratch::default(),
            definitions_pending: false,
            catalog_stale: false,
            now,
            open: VecDeque::new(),
            open_since: VecDeque::new(),
            finished: Vec::new(),
            finished_since: None,
            finished_due: false,
            spare_records: Vec::new(),
            spare_snapshots: SpareSnapshots::default(),
            policy_digest: Arc::clone(&start_digest),
            start_digest,
            statement_counters: StatementCounters::default(),
            recorded_decisions: Vec::new(),
        }
    }

    // ------------------------------------------------------------ outputs

    /// Bytes to write to the client; the driver writes them all and
    /// clears the buffer.
    pub fn client_output(&mut self) -> &mut BytesMut {
        &mut self.to_client
    }

    /// Bytes to write to the server; the driver writes them all and clears
    /// the buffer.
    pub fn server_output(&mut self) -> &mut BytesMut {
        &mut self.to_server
    }

    /// The next thing to do for the core.
    pub fn poll_need(&mut self) -> Option<Need> {
        match self.needs.pop_front() {
            Some(need) => Some(need),
            None if !self.finished.is_empty() && self.finished_go_now() => {
                let spare = self.spare_records.pop().unwrap_or_default();
                self.finished_since = None;
                self.finished_due = false;
                Some(Need::Log { records: std::mem::replace(&mut self.finished, spare) })
            }
            None => None,
        }
    }

    /// Gives back the list of a [`Need::Persist`] or [`Need::Log`] once the
    /// sink has taken its records, to be used again.
    pub fn recycle(&mut self, mut records: Vec<Record>) {
        records.clear();
        if self.spare_records.len() < SPARE_RECORD_LISTS && records.capacity() <= SPARE_RECORD_CAPACITY {
            self.spare_records.push(records);
        }
    }

    /// The time of the last event the core was given: for an answer the
    /// driver has at once, with no wait that would make another clock
    /// read worth its cost (a sink done at once).
    ///
    /// ```
    /// # use pg_proxy::session::core::SessionCore;
    /// # fn answer(core: &mut SessionCore, batch: u64) {
    /// let now = core.now();
    /// core.handle_persisted(batch, Ok(()), now);
    /// # }
    /// ```
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When [`SessionCore::handle_timeout`] must be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let results = self.finished_since.filter(|_| !self.finished_due).map(|since| since + RESULTS_WAIT);
        match &self.client {
            ClientState::Held { deadline, .. } => Some(results.map_or(*deadline, |r| r.min(*deadline))),
            _ => results,
        }
    }

    /// Hands completed results over at the next [`SessionCore::poll_need`]
    /// without waiting for a statement to go with: for a driver whose
    /// session ends.
    pub fn release_results(&mut self) {
        self.finished_due = true;
    }

    /// Whether the completed results go out now, on their own.
    fn finished_go_now(&self) -> bool {
        self.finished_due
            || self.finished.len() >= RESULTS_WAITING
            || matches!(self.client, ClientState::Closed(_))
            || self.finished_since.is_some_and(|since| self.now >= since + RESULTS_WAIT)
    }

    /// Notes that `finished` may have grown.
    fn finished_grew(&mut self) {
        if self.finished_since.is_none() && !self.finished.is_empty() {
            self.finished_since = Some(self.now);
        }
    }

    /// Why the session is over, once it is.
    pub fn end(&self) -> Option<&SessionEnd> {
        match &self.client {
            ClientState::Closed(end) => Some(end),
            _ => None,
        }
    }

    /// What the session is doing, for the registry.
    pub fn activity(&self) -> Activity {
        match &self.client {
            ClientState::Held { .. } => Activity::Held,
            ClientState::Recording { .. } => Activity::Running,
            _ if !self.pending.is_empty() => Activity::Running,
            _ => Activity::Idle,
        }
    }

    /// The fingerprint of the statement the session runs or holds now (the
    /// first of its batch), for the registry; `None` when idle.
    pub fn current_fingerprint(&self) -> Option<u64> {
        fn decision_of(p: &Pending) -> Option<&Decision> {
            match p {
                Pending::Query { decision, .. } => Some(decision),
                Pending::Execute { result, .. } => result.decision.as_deref(),
                _ => None,
            }
        }
        let decision = match &self.client {
            ClientState::Held { .. } => self.waiting.held.first().map(|h| &*h.decision),
            ClientState::Recording { .. } => self.waiting.pending.iter().find_map(decision_of),
            _ => self.pending.iter().find_map(decision_of),
        }?;
        let statement = decision.statements.first()?;
        fingerprint_number(&statement.facts.fingerprint)
    }

    /// Whether the server may be running something of this session (so a
    /// session ending now should cancel it).
    pub fn statement_in_flight(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the driver should read more from the client. False only
    /// while a batch waits briefly (records, settings read-back) and the
    /// client already sent as much as the core keeps: the client then
    /// waits. While a statement is held the client is always read, so a
    /// disconnect is seen at once and a flood is refused.
    pub fn wants_client_data(&self) -> bool {
        match &self.client {
            ClientState::Closed(_) => false,
            ClientState::Recording { .. } | ClientState::ReadingSettingsBack => {
                self.client_in.len() < self.config.max_buffered_bytes
            }
            ClientState::Reading if self.next_engine.is_some() => self.client_in.len() < self.config.max_buffered_bytes,
            _ => true,
        }
    }

    /// Whether the driver should read more from the server (false while a
    /// server message waits for the catalog).
    pub fn wants_server_data(&self) -> bool {
        !matches!(self.backend, BackendState::WaitingCatalog(_)) && self.end().is_none()
    }

    /// Gives back large buffers when the session is idle.
    pub fn shrink_buffers(&mut self, keep: usize) {
        if !self.pending.is_empty() {
            return;
        }
        for buf in [&mut self.to_client, &mut self.to_server] {
            if buf.is_empty() && buf.capacity() > keep {
                *buf = BytesMut::new();
            }
        }
        if self.client_in.is_empty() && self.client_in.capacity() > keep {
            self.client_in = BytesMut::new();
        }
        if self.backend_in.is_empty() && self.backend_in.capacity() > keep {
            self.backend_in = BytesMut::new();
        }
    }

    // ------------------------------------------------------------- inputs

    /// Where the driver puts what it reads from the client.
    pub fn client_buffer(&mut self) -> &mut BytesMut {
        &mut self.client_in
    }

    /// Both read buffers at once (client, server), for a driver that reads
    /// the two sides concurrently.
    pub fn read_buffers(&mut self) -> (&mut BytesMut, &mut BytesMut) {
        (&mut self.client_in, &mut self.backend_in)
    }

    /// Where the driver puts what it reads from the server.
    pub fn server_buffer(&mut self) -> &mut BytesMut {
        &mut self.backend_in
    }

    /// Takes what the client sent (in [`SessionCore::client_buffer`]).
    pub fn handle_client_data(&mut self, now: Instant) {
        self.now = now;
        self.process_client();
    }

    /// Takes what the server sent (in [`SessionCore::server_buffer`]).
    pub fn handle_server_data(&mut self, now: Instant) {
        self.now = now;
        self.process_backend();
    }

    /// The client closed its side.
    pub fn handle_client_eof(&mut self) {
        if self.end().is_some() {
            return;
        }
        if let ClientState::Held { id, .. } = &self.client {
            self.needs.push_back(Need::EndHold { hold: *id });
            self.metrics.hold_ended(HoldEnd::SessionEnded);
        }
        let mut terminate = BytesMut::new();
        frontend::terminate(&mut terminate);
        self.to_server.extend_from_slice(&terminate);
        self.close(SessionEnd::ClientGone);
    }

    /// The server closed its side.
    pub fn handle_server_eof(&mut self) {
        if self.end().is_some() {
            return;
        }
        self.emit_error("FATAL", "08006", "the database closed the connection");
        self.close(SessionEnd::ServerGone);
    }

    /// The engine in force changed (a policy reload): masking plans made
    /// under the old one are dropped.
    ///
    /// A statement is decided and its result masked by one engine: while
    /// statements the engine in force decided are staged, held or running,
    /// the new one waits, and the client's next batch waits for them to
    /// finish (a pipelining client cannot keep an old policy by never
    /// letting its pipeline drain). Prepared statements are judged again
    /// by the new engine at their next `Execute`.
    pub fn set_engine(&mut self, engine: Arc<Engine>) {
        self.next_engine = Some(engine);
        if self.between_statements() {
            self.apply_next_engine();
        }
    }

    /// Nothing the engine in force decided is staged, held or owed by the
    /// server.
    fn between_statements(&self) -> bool {
        matches!(self.client, ClientState::Reading)
            && self.pending.is_empty()
            && self.batch.bytes.is_empty()
            && self.batch.pending.is_empty()
    }

    fn apply_next_engine(&mut self) {
        let Some(engine) = self.next_engine.take() else { return };
        if *self.policy_digest != *engine.policy().digest {
            self.policy_digest = Arc::from(engine.policy().digest.as_str());
        }
        self.engine = engine;
        self.maskers.clear();
        self.last_masker = None;
        self.last_description = None;
    }

    /// The database's views, read (again) from the catalog. While a
    /// statement that may change them is in flight, the session keeps
    /// refusing what names a relation: the views it reads again after
    /// that statement come next.
    pub fn set_definitions(&mut self, views: Arc<Definitions>) {
        if self.definitions_pending {
            return;
        }
        self.state.definitions = Some(views);
        self.maskers.clear();
        self.last_masker = None;
        self.last_description = None;
    }

    /// The catalog's answer to [`Need::ResolveTables`].
    pub fn handle_tables(&mut self, tables: HashMap<u32, Arc<Table>>, now: Instant) {
        self.now = now;
        self.tables = Some(tables);
        self.resume_backend();
    }

    /// The catalog's answer to [`Need::CopyColumns`].
    pub fn handle_copy_columns(&mut self, columns: Option<Vec<ColumnInfo>>, now: Instant) {
        self.now = now;
        self.copy_columns = Some(columns);
        self.resume_backend();
    }

    /// The catalog's answer to [`Need::RowFields`]: the tables found.
    pub fn handle_row_fields(&mut self, fields: HashMap<String, Vec<String>>, now: Instant) {
        self.now = now;
        self.row_fields = Some(fields);
        self.resume_backend();
    }

    /// The record sink's answer to [`Need::Persist`].
    pub fn handle_persisted(&mut self, batch: u64, outcome: Result<(), RecordError>, now: Instant) {
        self.now = now;
        let ClientState::Recording { id, .. } = &self.client else { return };
        if *id != batch {
            return;
        }
        self.client = ClientState::Reading;
        match outcome {
            Ok(()) => self.commit_waiting(),
            Err(e) => {
                tracing::warn!("a batch's records could not be written; refusing it: {e}");
                // Records not written cannot be named by later ones.
                self.recorded_decisions.clear();
                let message =
                    format!("the gateway could not write the audit record of this statement, so it was not run: {e}");
                self.refuse_waiting(IO_ERROR, message, e.written);
            }
        }
        self.process_client();
    }

    /// What the hold's handler tells the client while it waits (the
    /// request's id, how to approve): a `NoticeResponse` now.
    pub fn handle_hold_notice(&mut self, hold: u64, message: &str) {
        let ClientState::Held { id, .. } = &self.client else { return };
        if *id != hold {
            return;
        }
        if codec::notice_response(&mut self.to_client, "NOTICE", "00000", message, &[]).is_err() {
            tracing::warn!("a hold's notice could not be sent (a NUL byte in it)");
        }
    }

    /// A hold's outcome, from its handler.
    pub fn handle_hold_outcome(&mut self, hold: u64, outcome: HoldOutcome, now: Instant) {
        self.now = now;
        let ClientState::Held { id, .. } = &self.client else { return };
        if *id != hold {
            return;
        }
        match outcome {
            HoldOutcome::Release => {
                self.client = ClientState::Reading;
                tracing::info!("held statement released");
                self.metrics.hold_ended(HoldEnd::Released);
                self.record_or_commit();
            }
            HoldOutcome::Refuse { reason } => {
                tracing::info!("held statement refused");
                self.metrics.hold_ended(HoldEnd::Refused);
                self.end_hold(INSUFFICIENT_PRIVILEGE, format!("the statement was not approved: {reason}"), false);
            }
        }
        self.process_client();
    }

    /// Time passed ([`SessionCore::poll_timeout`]'s deadline, or earlier:
    /// nothing happens before a deadline): completed results that waited
    /// long enough for the session's next statement are handed over on
    /// their own, and a hold past its deadline ends.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.finished_since.is_some_and(|since| now >= since + RESULTS_WAIT) {
            self.finished_due = true;
        }
        let ClientState::Held { deadline, .. } = &self.client else { return };
        if now < *deadline {
            return;
        }
        tracing::info!("held statement timed out");
        self.metrics.hold_ended(HoldEnd::TimedOut);
        let message = format!(
            "the statement waited for approval longer than the hold timeout ({}) and was not run",
            humantime(self.config.hold_timeout)
        );
        self.end_hold(QUERY_CANCELED, message, true);
        self.process_client();
    }

    /// The client's `CancelRequest` (through the registry): a held
    /// statement ends with `57014`; anything else is cancelled upstream.
    pub fn handle_cancel(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.client, ClientState::Held { .. }) {
            tracing::info!("held statement cancelled by the client");
            self.metrics.hold_ended(HoldEnd::Cancelled);
            self.end_hold(QUERY_CANCELED, "canceling statement due to user request".to_string(), true);
            self.process_client();
            return;
        }
        if matches!(self.client, ClientState::Recording { .. }) {
            // Not on the server yet: the batch never runs.
            self.client = ClientState::Reading;
            tracing::info!("statement cancelled by the client before it was forwarded");
            // Its records went to the sink already: they are in the log
            // unless writing them fails.
            self.refuse_waiting(QUERY_CANCELED, "canceling statement due to user request".to_string(), true);
            self.process_client();
            return;
        }
        if !self.pending.is_empty() {
            self.needs.push_back(Need::CancelUpstream);
        }
    }

    /// Ends the session from outside (the registry's terminate).
    pub fn handle_terminate(&mut self) {
        if self.end().is_some() {
            return;
        }
        if let ClientState::Held { id, .. } = &self.client {
            self.needs.push_back(Need::EndHold { hold: *id });
            self.metrics.hold_ended(HoldEnd::SessionEnded);
        }
        self.emit_error("FATAL", "57P01", "terminating connection due to administrator command");
        let mut terminate = BytesMut::new();
        frontend::terminate(&mut terminate);
        self.to_server.extend_from_slice(&terminate);
        self.close(SessionEnd::Killed);
    }

    // ------------------------------------------------------------- client

    #[cold]
    fn close(&mut self, end: SessionEnd) {
        self.client = ClientState::Closed(end);
    }

    /// A protocol state the gateway did not expect: the client is told,
    /// the log warns, and the session ends.
    #[cold]
    fn unexpected(&mut self, what: String) {
        tracing::warn!("unexpected protocol state, ending the session: {what}");
        self.emit_error(
            "FATAL",
            PROTOCOL_VIOLATION,
            &format!("the gateway lost track of the protocol ({what}); the session ends"),
        );
        self.close(SessionEnd::Unexpected(what));
    }

    fn process_client(&mut self) {
        // Read in place: the buffer is taken out while messages borrow it,
        // and advanced once past every message taken.
        let mut input = std::mem::take(&mut self.client_in);
        let taken = self.take_client_messages(&input);
        consume(&mut input, taken);
        self.client_in = input;
    }

    /// Handles the messages at the front of `input` while the state lets
    /// them in; returns how many bytes were taken.
    fn take_client_messages(&mut self, input: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let rest = input.get(taken..).unwrap_or_default();
            if self.next_engine.is_some()
                && matches!(self.client, ClientState::Reading)
                && self.batch.bytes.is_empty()
                && self.batch.pending.is_empty()
            {
                // A new batch begins: under the new engine, once the
                // old one's statements are done.
                if !self.pending.is_empty() {
                    return taken;
                }
                self.apply_next_engine();
            }
            match &self.client {
                ClientState::Reading | ClientState::CopyIn | ClientState::DiscardingUntilSync => {}
                ClientState::Held { id, .. } => {
                    let max = self.config.max_buffered_bytes;
                    if rest.len() > max {
                        self.needs.push_back(Need::EndHold { hold: *id });
                        self.emit_error(
                            "FATAL",
                            CONFIGURATION_LIMIT_EXCEEDED,
                            &format!(
                                "the client sent more than {max} bytes while a statement was held for approval; the \
                                 session ends"
                            ),
                        );
                        self.close(SessionEnd::Flooded(max));
                    }
                    return taken;
                }
                _ => return taken,
            }
            match codec::view_frontend(rest, self.config.max_message_bytes) {
                Ok(Some(m)) => {
                    let len = m.frame.len();
                    if self.on_client_message(m) {
                        taken += len;
                    }
                }
                Ok(None) => return taken,
                Err(e) => {
                    tracing::info!("invalid client message: {e}");
                    self.emit_error("FATAL", PROTOCOL_VIOLATION, &format!("invalid message: {e}"));
                    self.close(SessionEnd::ClientProtocol(e));
                    return taken;
                }
            }
        }
    }

    /// Handles one client message; false when it is left for later (COPY
    /// data that ends the batch before it: read again once the batch is
    /// forwarded).
    fn on_client_message(&mut self, m: FrontendFrame<'_>) -> bool {
        match self.client {
            ClientState::CopyIn => match m.message {
                FrontendView::CopyData(_) => {
                    self.to_server.extend_from_slice(m.frame);
                    return true;
                }
                FrontendView::CopyDone | FrontendView::CopyFail { .. } => {
                    self.to_server.extend_from_slice(m.frame);
                    self.leave_copy_in();
                    return true;
                }
                FrontendView::Flush => {
                    // Ignored by the server in COPY IN.
                    self.to_server.extend_from_slice(m.frame);
                    return true;
                }
                FrontendView::Sync => {
                    // The server ignores a Sync in COPY IN, but answers it
                    // when the COPY failed on data before it, which the
                    // gateway cannot know in time: it is not sent now, so
                    // the server's answers stay countable. Should this COPY
                    // fail, it is sent then (see `on_block_error`).
                    self.sync_held_in_copy = true;
                    return true;
                }
                _ => {
                    // Anything else ends the COPY, as the server would end it
                    // with an error; the message then counts as itself.
                    tracing::info!("client message during COPY FROM STDIN; ending the COPY");
                    let mut fail = BytesMut::new();
                    if frontend::copy_fail("the client sent another message during COPY", &mut fail).is_ok() {
                        self.to_server.extend_from_slice(&fail);
                    }
                    self.leave_copy_in();
                }
            },
            ClientState::DiscardingUntilSync => match m.message {
                FrontendView::Sync | FrontendView::Terminate => self.client = ClientState::Reading,
                FrontendView::Flush => {
                    // The refusal already staged reaches the client now.
                    self.stage(m.frame, None);
                    self.finish_batch(BatchEnd::Flush);
                    return true;
                }
                _ => return true,
            },
            _ => {}
        }
        if matches!(
            m.message,
            FrontendView::Parse { .. }
                | FrontendView::Bind(_)
                | FrontendView::Describe { .. }
                | FrontendView::Execute { .. }
                | FrontendView::Close { .. }
        ) {
            self.block_open = true;
        } else if self.block_open
            && !self.batch.copy_in
            && matches!(m.message, FrontendView::Query { .. } | FrontendView::FunctionCall)
        {
            if self.block == Block::Failed
                && !self.pending.iter().any(|p| matches!(p, Pending::Sync { .. } | Pending::MaybeSync))
            {
                // The server already failed this very block: it skips the
                // query, and so does the gateway.
                return true;
            }
            self.end_block_before_query();
            if !matches!(self.client, ClientState::Reading) {
                // Read again once the block's batch is through.
                return false;
            }
        }
        match m.message {
            FrontendView::Query { sql } => {
                self.on_query(sql, m.frame);
                self.finish_batch(BatchEnd::Query);
            }
            FrontendView::Parse { name, sql, param_types } => self.on_parse(name, sql, param_types, m.frame),
            FrontendView::Bind(bind) => self.on_bind(&bind, m.frame),
            FrontendView::Describe { kind: b'S', name } => {
                let Some(Some(p)) = self.statements.get(name) else {
                    self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_statement(name));
                    return true;
                };
                let pending = Pending::DescribeStatement { name: name.to_string(), id: p.id };
                self.stage(m.frame, Some(pending));
            }
            FrontendView::Describe { name, .. } => {
                let Some(p) = self.portals.get_mut(name) else {
                    self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_portal(name));
                    return true;
                };
                let told = Arc::clone(p.told.get_or_insert_with(Arc::default));
                let pending = Pending::DescribePortal { name: name.to_string(), id: p.id, internal: false, told };
                self.stage(m.frame, Some(pending));
            }
            FrontendView::Execute { portal, .. } => self.on_execute(portal, m.frame),
            FrontendView::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                self.stage(m.frame, Some(Pending::Close));
            }
            FrontendView::Sync => {
                self.block_open = false;
                // A Sync right after an Execute of COPY FROM STDIN is ignored
                // by the server once it is in COPY IN.
                let pending = if self.batch.copy_in { Pending::MaybeSync } else { Pending::Sync { from_client: true } };
                if std::mem::take(&mut self.implicit_until_sync) {
                    self.state.apply(&SessionEffect::EndImplicitTransaction);
                }
                if self.resync_after_sync {
                    self.resync_after_sync = false;
                    self.batch.settings = true;
                }
                self.stage(m.frame, Some(pending));
                self.finish_batch(BatchEnd::Sync { from_client: true });
            }
            FrontendView::Flush => {
                self.stage(m.frame, None);
                self.finish_batch(BatchEnd::Flush);
            }
            FrontendView::Terminate => {
                self.stage(m.frame, None);
                self.finish_batch(BatchEnd::Terminate);
            }
            FrontendView::CopyData(_) | FrontendView::CopyDone | FrontendView::CopyFail { .. }
                if self.batch.copy_in =>
            {
                // Data right after an allowed COPY's Execute, before any Sync
                // or Flush: the batch ends here (recorded, then forwarded),
                // and the data is read again in COPY IN.
                self.finish_batch(BatchEnd::Flush);
                return false;
            }
            FrontendView::CopyData(_) | FrontendView::CopyDone | FrontendView::CopyFail { .. } => {
                // Not in COPY IN for an allowed statement (a refused COPY's
                // data, or stray data): dropped, as the server drops it.
            }
            FrontendView::FunctionCall => {
                let refusal = Refusal {
                    code: INSUFFICIENT_PRIVILEGE,
                    message: "the function-call protocol message (F) is refused by the gateway: call the function \
                              in a statement"
                        .to_string(),
                    recorded: false,
                };
                self.stage_refused_query(refusal);
                self.finish_batch(BatchEnd::Query);
            }
            FrontendView::Password(_) => {
                self.emit_error("FATAL", PROTOCOL_VIOLATION, "unexpected password message");
                self.close(SessionEnd::Unexpected("a password message after login".to_string()));
            }
        }
        true
    }

    /// A simple query inside an unfinished extended-protocol block:
    /// PostgreSQL ends the block's implicit transaction there, or skips the
    /// query when the block failed, which the gateway cannot always know
    /// in time. So the gateway ends the block first, with a `Sync` of its
    /// own whose `ReadyForQuery` the client does not see: the query then
    /// runs on its own, in a state the gateway knows (the client's `Sync`
    /// after it is answered as usual). A query the server would have
    /// skipped after an error it had not reported yet therefore runs.
    #[cold]
    fn end_block_before_query(&mut self) {
        self.block_open = false;
        if std::mem::take(&mut self.implicit_until_sync) {
            self.state.apply(&SessionEffect::EndImplicitTransaction);
        }
        if self.resync_after_sync {
            self.resync_after_sync = false;
            self.batch.settings = true;
        }
        let mut sync = BytesMut::new();
        frontend::sync(&mut sync);
        self.stage(&sync, Some(Pending::Sync { from_client: false }));
        self.finish_batch(BatchEnd::Sync { from_client: false });
    }

    fn on_bind(&mut self, bind: &BindView<'_>, frame: &[u8]) {
        let Some(Some(prepared)) = self.statements.get(bind.statement) else {
            return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_statement(bind.statement));
        };
        let prepared = Arc::clone(prepared);
        let fields = prepared.fields.as_ref().map(|f| {
            // Columns already in the asked formats (text, the usual case)
            // are shared, not copied.
            if f.iter().enumerate().all(|(i, c)| c.format == bind.result_formats.at(i)) {
                Arc::clone(f)
            } else {
                Arc::new(with_formats(f, bind.result_formats))
            }
        });
        let id = self.next_id();
        if self.batches_can_be_refused() {
            self.batch.portals.push(bind.portal.to_string());
        }
        // The parameters are kept (copied) only when records or holds need
        // them: records that show them, or a hold (the statement may need
        // approval by the time it runs, after a reload).
        let (param_formats, params) = if (self.config.record && self.config.record_parameters) || self.config.holds {
            (bind.param_formats.to_vec(), bind.params.iter().map(|v| v.map(Bytes::copy_from_slice)).collect())
        } else {
            (Vec::new(), Vec::new())
        };
        let portal = Portal { id, prepared, fields, rows: 0, param_formats, params, told: None };
        self.portals.insert(bind.portal, portal);
        self.stage(frame, Some(Pending::Bind));
    }

    #[cold]
    fn leave_copy_in(&mut self) {
        self.sync_held_in_copy = false;
        if std::mem::take(&mut self.settings_after_copy) {
            self.client = ClientState::ReadingSettingsBack;
        } else {
            self.client = ClientState::Reading;
        }
    }

    /// Adds a message to the current batch.
    ///
    /// When no batch can be refused once taken (nothing is recorded or
    /// held), the message goes straight to the server's buffer: the batch
    /// is then forwarded as it is read, with no copy.
    fn stage(&mut self, frame: &[u8], pending: Option<Pending>) {
        if self.batches_can_be_refused() {
            self.batch.bytes.extend_from_slice(frame);
            if let Some(p) = pending {
                self.batch.pending.push(p);
            }
        } else {
            self.to_server.extend_from_slice(frame);
            if let Some(p) = pending {
                self.pending.push_back(p);
            }
        }
    }

    /// The batch is complete: held, recorded, or forwarded.
    fn finish_batch(&mut self, end: BatchEnd) {
        if !self.batches_can_be_refused() {
            // Its messages went straight to the server's buffer, and
            // nothing was kept to record or hold: only what it leaves the
            // client in (COPY IN, the settings read-back) is left to set.
            let b = &mut self.batch;
            let (copy_in, settings, failed) =
                (std::mem::take(&mut b.copy_in), std::mem::take(&mut b.settings), std::mem::take(&mut b.failed));
            self.after_batch(end, copy_in, settings, failed);
            if end == BatchEnd::Terminate {
                self.close(SessionEnd::Terminated);
            }
            return;
        }
        // The batch waits in place; the emptied one that waited before
        // takes its place, with its buffers. (No batch waits now: the
        // client's messages are not read while one does.)
        debug_assert!(self.waiting.end.is_none() && self.waiting.bytes.is_empty(), "a batch is waiting already");
        std::mem::swap(&mut self.batch, &mut self.waiting);
        if self.batch.records.capacity() == 0 {
            if let Some(spare) = self.spare_records.pop() {
                self.batch.records = spare;
            }
        }
        self.waiting.end = Some(end);
        if end == BatchEnd::Terminate && !self.waiting.held.is_empty() {
            // The client leaves without waiting for an approval: nothing of
            // the batch runs, as when it leaves during a hold, and its
            // statements are recorded as not run.
            self.finished.append(&mut self.waiting.records);
            self.finished_grew();
            self.refuse_waiting(
                QUERY_CANCELED,
                "the client ended the session before the statement was approved".to_string(),
                true,
            );
            let mut terminate = BytesMut::new();
            frontend::terminate(&mut terminate);
            self.to_server.extend_from_slice(&terminate);
            self.close(SessionEnd::Terminated);
            return;
        }
        if !self.waiting.held.is_empty() {
            self.batches += 1;
            let id = self.batches;
            // The reason goes with this hold, whatever its outcome.
            let request = HoldRequest {
                session: self.id,
                statements: self.waiting.held.clone(),
                reason: self.reason.take(),
                database: self.database.clone(),
            };
            let deadline = self.now + self.config.hold_timeout;
            self.needs.push_back(Need::Hold { hold: id, request });
            self.client = ClientState::Held { id, deadline };
            return;
        }
        self.record_or_commit();
    }

    /// Hands the waiting batch's records to the sink, or forwards it when
    /// it has none to persist.
    fn record_or_commit(&mut self) {
        if self.config.record && !self.waiting.records.is_empty() {
            self.batches += 1;
            let id = self.batches;
            let mut records = std::mem::take(&mut self.waiting.records);
            // Completed results go first, in the same write.
            if !self.finished.is_empty() {
                let spare = self.spare_records.pop().unwrap_or_default();
                let mut all = std::mem::replace(&mut self.finished, spare);
                all.append(&mut records);
                self.recycle(std::mem::replace(&mut records, all));
                self.finished_since = None;
                self.finished_due = false;
            }
            self.needs.push_back(Need::Persist { batch: id, records });
            self.client = ClientState::Recording { id };
            return;
        }
        self.commit_waiting();
    }

    /// Forwards the waiting batch, and empties it for the next.
    fn commit_waiting(&mut self) {
        let batch = &mut self.waiting;
        if self.to_server.is_empty() {
            std::mem::swap(&mut self.to_server, &mut batch.bytes);
        } else {
            self.to_server.extend_from_slice(&batch.bytes);
        }
        if self.pending.is_empty() {
            // Nothing in flight (the usual case): the batch's list becomes
            // the queue, and the queue's emptied memory the batch's, with
            // no element moved.
            let batch_pending = VecDeque::from(std::mem::take(&mut batch.pending));
            batch.pending = Vec::from(std::mem::replace(&mut self.pending, batch_pending));
        } else {
            self.pending.extend(batch.pending.drain(..));
        }
        // A batch without an end (never the case once finished) is taken as
        // a whole query: nothing of a Flush applies to it.
        let end = batch.end.take().unwrap_or(BatchEnd::Query);
        let (copy_in, settings, failed) = (batch.copy_in, batch.settings, batch.failed);
        // Its buffers serve a later batch, unless a rare large one made
        // them large; the names it defined matter only to a refusal.
        batch.empty();
        if let Some(mut snapshot) = batch.snapshot.take() {
            // Kept for its memory only: it lets go of the views it named,
            // which a catalog read since may have replaced.
            snapshot.definitions = None;
            self.spare_snapshots.keep(snapshot);
        }
        self.after_batch(end, copy_in, settings, failed);
        if end == BatchEnd::Terminate {
            // Forwarded (once its records were written) with the client's
            // Terminate: the session is over.
            self.close(SessionEnd::Terminated);
        }
    }

    /// Refuses the waiting batch (its records failed, or it was cancelled
    /// or not approved), and forwards what stands in for it.
    #[cold]
    fn refuse_waiting(&mut self, code: &'static str, message: String, records_written: bool) {
        let batch = std::mem::take(&mut self.waiting);
        self.waiting = self.refuse_batch(batch, code, message, records_written);
        self.commit_waiting();
    }

    /// The state a forwarded batch leaves the client in.
    fn after_batch(&mut self, end: BatchEnd, copy_in: bool, settings: bool, failed: bool) {
        if matches!(self.client, ClientState::Closed(_)) {
            return;
        }
        let flush = end == BatchEnd::Flush;
        if settings && flush {
            // Read back after the next Sync instead.
            self.resync_after_sync = true;
        }
        let settings = settings && !flush;
        self.client = if copy_in {
            self.settings_after_copy = settings;
            ClientState::CopyIn
        } else if settings {
            ClientState::ReadingSettingsBack
        } else if flush && failed {
            ClientState::DiscardingUntilSync
        } else {
            ClientState::Reading
        };
    }

    /// Turns a waiting batch into a refusal: nothing of it runs, the
    /// engine's session is as before it, and the names it defined are
    /// unknown.
    #[cold]
    fn refuse_batch(&mut self, batch: Batch, code: &'static str, message: String, records_written: bool) -> Batch {
        if let Some(snapshot) = batch.snapshot {
            *self.state = *snapshot;
        }
        for name in batch.statements {
            self.statements.insert(&name, None);
        }
        for name in batch.portals {
            self.portals.remove(&name);
        }
        // The batch's results: none when its statements' records are not in
        // the log; when they are (only their sync failed), each says that
        // its statement did not run, and why.
        let mut results = Vec::new();
        for _ in 0..batch.recorded {
            let (Some(mut r), Some(since)) = (self.open.pop_back(), self.open_since.pop_back()) else { break };
            if records_written {
                r.ran = false;
                r.duration = self.now.saturating_duration_since(since);
                r.error = Some(Box::new(ReportedError { code: code.to_string(), message: message.clone() }));
                results.push(Record::Result(r));
            }
        }
        self.finished.extend(results.into_iter().rev());
        self.finished_grew();
        let refusal = Refusal { code, message, recorded: false };
        // A read-back the batch owed is still owed: the refusal fails the
        // block on the server, which may undo a setting an earlier part of
        // the block (sent before a Flush) changed.
        let mut out = Batch { end: batch.end, settings: batch.settings, ..Batch::default() };
        match batch.end {
            Some(BatchEnd::Query) | Some(BatchEnd::Terminate) | None => {
                push_substitute_query(&mut out, refusal);
            }
            Some(BatchEnd::Sync { from_client }) => {
                push_substitute_parse(&mut out, refusal);
                let mut sync = BytesMut::new();
                frontend::sync(&mut sync);
                out.bytes.extend_from_slice(&sync);
                out.pending.push(Pending::Sync { from_client });
            }
            Some(BatchEnd::Flush) => {
                push_substitute_parse(&mut out, refusal);
                let mut flush = BytesMut::new();
                frontend::flush(&mut flush);
                out.bytes.extend_from_slice(&flush);
                out.failed = true;
            }
        }
        out
    }

    /// Ends a hold with a refusal.
    #[cold]
    fn end_hold(&mut self, code: &'static str, message: String, tell_handler: bool) {
        let ClientState::Held { id, .. } = std::mem::replace(&mut self.client, ClientState::Reading) else {
            return;
        };
        if tell_handler {
            self.needs.push_back(Need::EndHold { hold: id });
        }
        // A held batch's records were kept for its release: its statements
        // are recorded now (nothing of them runs, so nothing waits for the
        // records), with results saying they did not run, and why.
        self.finished.append(&mut self.waiting.records);
        self.finished_grew();
        self.refuse_waiting(code, message, true);
    }

    /// Refuses a message of the extended protocol: the error in turn, then
    /// the client's messages up to `Sync` are dropped.
    #[cold]
    fn fail_block(&mut self, code: &'static str, message: String) {
        self.fail_block_as(Refusal { code, message, recorded: false });
    }

    /// [`SessionCore::fail_block`] with the refusal as it is.
    fn fail_block_as(&mut self, refusal: Refusal) {
        self.client = ClientState::DiscardingUntilSync;
        self.batch.failed = true;
        // Staged even when the server already failed this block (after a
        // Flush): it then skips the substitute, and the entry is dropped
        // at the block's ReadyForQuery. Whether the server failed an
        // earlier block says nothing of this one.
        if let Some((bytes, pending)) = substitute_parse(refusal) {
            self.stage(&bytes, Some(pending));
        }
    }

    #[cold]
    fn stage_refused_query(&mut self, refusal: Refusal) {
        if let Some((bytes, pending)) = substitute_query(refusal) {
            self.stage(&bytes, Some(pending));
        }
    }

    fn decide(&mut self, sql: &str) -> Arc<Decision> {
        let decision = self.metrics.time_decision(|| self.engine.decide_in(&mut self.state.context, sql));
        self.metrics.count_statement(&mut self.statement_counters, decision.verdict, decision.rule.as_ref());
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

    /// Whether a decision lets the statement on: allowed, or held when
    /// holds are on. `None` with the refusal otherwise. In observe mode
    /// everything goes on, unheld (the record keeps the verdict).
    fn admit(&self, decision: &Decision) -> Result<bool, String> {
        match decision.verdict {
            Verdict::Allow => Ok(false),
            _ if self.config.observe => Ok(false),
            Verdict::RequireApproval if self.config.holds => Ok(true),
            _ => Err(refusal(decision)),
        }
    }

    fn record(&mut self, sql: impl FnOnce() -> Arc<str>, parameters: Vec<Option<String>>, decision: &Arc<Decision>) {
        if !self.config.record {
            return;
        }
        self.sequence += 1;
        let durable = self.config.mark_durable && self.can_make_durable(decision);
        let mut record = StatementRecord {
            session: self.id,
            sequence: self.sequence,
            sql: sql(),
            parameters,
            decision: Arc::clone(decision),
            policy: Arc::clone(&self.policy_digest),
            // A reload to another policy makes another digest (and back
            // to the first, another copy of it: named again, harmlessly).
            policy_changed: !Arc::ptr_eq(&self.policy_digest, &self.start_digest),
            durable,
            observed: self.config.observe && decision.verdict != Verdict::Allow,
            decision_as_in: None,
        };
        // The same decision (a prepared statement executed again: most
        // often the one recorded last), or one recorded alike (a statement
        // of a known shape, with constants of other lengths).
        let found = match self.recorded_decisions.iter().position(|r| Arc::ptr_eq(&r.decision, decision)) {
            Some(i) => Ok(i),
            None => {
                let key = fingerprints_key(decision);
                let alike = self
                    .recorded_decisions
                    .iter()
                    .position(|r| r.key == key && r.decision.same_apart_from_spans(decision));
                if let Some(entry) = alike.and_then(|i| self.recorded_decisions.get_mut(i)) {
                    // The engine's cache answers later texts of the shape
                    // with decisions made from this one (sharing its facts,
                    // often this very one): compared with it, they are
                    // equal at a glance.
                    entry.decision = Arc::clone(decision);
                }
                alike.ok_or(key)
            }
        };
        match found {
            Ok(i) => {
                // Moved to the front (most recently used first).
                if let Some(up_to) = self.recorded_decisions.get_mut(..=i) {
                    up_to.rotate_right(1);
                }
                record.decision_as_in = self.recorded_decisions.first().map(|r| r.sequence);
            }
            Err(key) => {
                let entry = RecordedDecision { key, decision: Arc::clone(decision), sequence: self.sequence };
                self.recorded_decisions.insert(0, entry);
                self.recorded_decisions.truncate(RECORDED_DECISIONS);
            }
        }
        self.batch.records.push(Record::Statement(record));
        self.batch.recorded += 1;
        self.open.push_back(ResultRecord { session: self.id, sequence: self.sequence, ..ResultRecord::default() });
        self.open_since.push_back(self.now);
    }

    /// Whether running a decided statement can make a change durable: a
    /// `COMMIT` (or `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK
    /// PREPARED`), or, outside a transaction block, anything but a plain
    /// read, a transaction statement or a session setting. Inside a block,
    /// nothing else is durable before the block commits. While earlier
    /// statements are still in flight the block the server is in is not
    /// known, and the statement is taken as outside one.
    fn can_make_durable(&self, decision: &Decision) -> bool {
        if decision.verdict == Verdict::Deny && !self.config.observe {
            return false;
        }
        // The server's last word, when nothing is in flight that could
        // have changed it since.
        let in_block = self.tx_status != b'I' && self.pending.is_empty();
        decision.statements.iter().any(|s| {
            let facts = &s.facts;
            let commits = matches!(
                facts.command.as_str(),
                "COMMIT" | "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED"
            );
            let plain = !facts.opaque && matches!(facts.class, Class::Read | Class::Transaction | Class::Session);
            commits || (!in_block && !plain)
        })
    }

    /// The result of the statement being answered takes an error the
    /// client got.
    fn note_error(&mut self, code: &str, message: &str) {
        if let Some(r) = self.open.front_mut() {
            if r.error.is_none() {
                r.error = Some(Box::new(ReportedError { code: code.to_string(), message: message.to_string() }));
            }
        }
    }

    /// The result of the statement being answered takes a command tag and
    /// the rows relayed for it.
    fn note_tag(&mut self, frame: &BackendView<'_>, rows: u64) {
        if let Some(r) = self.open.front_mut() {
            let body = frame.body();
            let tag = body.strip_suffix(b"\0").unwrap_or(body);
            match std::str::from_utf8(tag) {
                Ok(tag) => r.tags.push(tag),
                Err(_) => r.tags.push(&String::from_utf8_lossy(tag)),
            }
            r.rows += rows;
        }
    }

    /// Open results of statements not sent yet (the batch being read, or
    /// one waiting for its records or its approval).
    fn undecided_opens(&self) -> usize {
        let waiting = match &self.client {
            ClientState::Recording { .. } | ClientState::Held { .. } => self.waiting.recorded,
            _ => 0,
        };
        self.batch.recorded + waiting
    }

    /// Completes the result of the statement answered (the oldest open).
    fn finish_open(&mut self, ran: bool) {
        let (Some(mut r), Some(since)) = (self.open.pop_front(), self.open_since.pop_front()) else { return };
        r.ran = ran;
        r.duration = self.now.saturating_duration_since(since);
        self.finished.push(Record::Result(r));
        self.finished_grew();
    }

    /// Whether the statement being answered is one with an open result:
    /// errors the server reports for it are its result's.
    fn answering_recorded(&self) -> bool {
        match self.pending.front() {
            Some(Pending::Query { refusal, .. }) => refusal.as_ref().is_none_or(|r| r.recorded),
            Some(Pending::Execute { .. }) => true,
            Some(Pending::Refused(r)) => r.recorded,
            _ => false,
        }
    }

    fn on_query(&mut self, sql: &str, frame: &[u8]) {
        let decision = self.decide(sql);
        self.record(|| Arc::from(sql), Vec::new(), &decision);
        if let Some(command) = gateway_command(&decision) {
            return self.on_gateway_query(command.clone(), decision);
        }
        let held = match self.admit(&decision) {
            Ok(held) => held,
            Err(message) => {
                let recorded = self.config.record;
                return self.stage_refused_query(Refusal { code: INSUFFICIENT_PRIVILEGE, message, recorded });
            }
        };
        if held {
            let reading = self.reading();
            self.batch.held.push(HeldStatement::new(Arc::from(sql), Vec::new(), Arc::clone(&decision), reading));
        }
        let mut settings = false;
        for s in decision.statements.iter() {
            settings |= self.apply_effects(&s.facts, false);
            if is_copy_from_stdin(&s.facts) {
                self.batch.copy_in = true;
            }
        }
        let first = decision.statements.first().map(|s| Arc::clone(&s.facts));
        let result = ResultState::new(first, &decision);
        self.stage(frame, Some(Pending::Query { decision, index: 0, result, failed: false, refusal: None }));
        if settings {
            self.batch.settings = true;
        }
    }

    /// A query of the gateway's own (`SET portcullis.reason`): kept here,
    /// and the server sent [`GatewayCommand::substitute`], whose answer
    /// (`SET`, or the failure of an aborted transaction) the client gets in
    /// turn. Refused, even in observe mode, when the engine says the
    /// gateway cannot take it: then nothing of the text reaches the server.
    #[cold]
    fn on_gateway_query(&mut self, command: GatewayCommand, decision: Arc<Decision>) {
        let recorded = self.config.record;
        if decision.verdict != Verdict::Allow {
            let message = decision.reason.to_string();
            return self.stage_refused_query(Refusal { code: INVALID_PARAMETER_VALUE, message, recorded });
        }
        self.keep_reason(&command);
        let mut substitute = BytesMut::new();
        if frontend::query(command.substitute(), &mut substitute).is_err() {
            return self.stage_refused_query(Refusal {
                code: INVALID_PARAMETER_VALUE,
                message: "the gateway could not answer this setting".to_string(),
                recorded,
            });
        }
        let first = decision.statements.first().map(|s| Arc::clone(&s.facts));
        let result = ResultState::new(first, &decision);
        self.stage(&substitute, Some(Pending::Query { decision, index: 0, result, failed: false, refusal: None }));
    }

    /// Keeps (or forgets) the client's reason.
    fn keep_reason(&mut self, command: &GatewayCommand) {
        match command {
            GatewayCommand::SetReason(reason) if !reason.is_empty() => self.reason = Some(reason.clone()),
            _ => self.reason = None,
        }
    }

    /// The server failed the substitute of a statement of the gateway's
    /// (in an aborted transaction): the client was told it failed, so no
    /// reason is kept from it (nor one from before: the client asked for
    /// a change).
    fn forget_refused_reason(&mut self, facts: Option<&StatementFacts>) {
        if facts.is_some_and(|f| f.gateway.is_some()) {
            self.reason = None;
        }
    }

    /// Applies a statement's effects to the engine's view (keeping the
    /// view from before the batch, to restore should the batch not run);
    /// returns whether the settings must be read back afterwards.
    fn apply_effects(&mut self, facts: &StatementFacts, extended: bool) -> bool {
        if !facts.session_effects.is_empty() && self.batch.snapshot.is_none() && self.batches_can_be_refused() {
            let session = self.state.context.session();
            self.batch.snapshot = Some(match self.spare_snapshots.take_for(session) {
                Some(mut snapshot) => {
                    (*snapshot).clone_from(session);
                    snapshot
                }
                None => Box::new(session.clone()),
            });
        }
        if extended && !facts.session_effects.is_empty() && self.state.transaction.is_none() {
            // Outside a transaction, what the extended protocol runs up to
            // Sync is one implicit transaction block, as a simple query's
            // statements are: a SET LOCAL lasts until the Sync, and a
            // ROLLBACK in it undoes an earlier SET.
            self.state.apply(&SessionEffect::Begin { implicit: true });
            self.implicit_until_sync = true;
        }
        for effect in &facts.session_effects {
            self.state.apply(effect);
        }
        if facts.changes_definitions && self.state.definitions.is_some() {
            // Until the views are read again, what names a relation may
            // name one this statement creates or changes.
            self.definitions_pending = true;
            self.state.definitions = Some(Arc::new(Definitions::unavailable(
                "a statement that may create or change views has not completed",
            )));
        }
        let changes_setting = facts.changes_settings
            || facts
                .session_effects
                .iter()
                .any(|e| matches!(e, SessionEffect::SetSearchPath { .. } | SessionEffect::ResetSearchPath));
        if changes_setting {
            self.setting_touched_in_tx = true;
        }
        changes_setting || (facts.reverts_settings && self.setting_touched_in_tx)
    }

    fn on_parse(&mut self, name: &str, sql: &str, param_types: &[u8], frame: &[u8]) {
        let decision = self.decide(sql);
        // A statement of the gateway's reaches the server as its
        // substitute; one the gateway cannot take is refused, even in
        // observe mode.
        let gateway = gateway_command(&decision).map(|c| (c.substitute(), decision.verdict == Verdict::Allow));
        let substitute = gateway.and_then(|(text, _)| {
            let types = param_types.chunks_exact(4).map(|c| <[u8; 4]>::try_from(c).map_or(0, u32::from_be_bytes));
            let mut parse = BytesMut::new();
            frontend::parse(name, text, types, &mut parse).ok().map(|()| parse)
        });
        let admitted = match gateway {
            Some((_, false)) => Err((INVALID_PARAMETER_VALUE, decision.reason.to_string())),
            // Never the client's own text in its place.
            Some(_) if substitute.is_none() => {
                Err((INVALID_PARAMETER_VALUE, "the gateway could not take this statement here".to_string()))
            }
            _ => self.admit(&decision).map_err(|m| (INSUFFICIENT_PRIVILEGE, m)),
        };
        if let Err((code, message)) = admitted {
            // A refusal is recorded where it happens: the statement never
            // reaches an Execute.
            self.record(|| Arc::from(sql), Vec::new(), &decision);
            // The unnamed statement, or a name in use, now stands for the
            // refused text: a later Bind must not reach what the server
            // still holds under that name. Other names are unknown anyway
            // (and are not kept: a client could pile them up).
            if name.is_empty() || self.statements.contains(name) {
                self.statements.insert(name, None);
            }
            let recorded = self.config.record;
            return self.fail_block_as(Refusal { code, message, recorded });
        }
        let facts = decision.statements.first().map(|s| Arc::clone(&s.facts));
        let prepared = Arc::new(Prepared {
            id: self.next_id(),
            sql: Arc::from(sql),
            judged: self.judged(),
            standard_conforming_strings: self.state.standard_conforming_strings,
            facts,
            decision,
            fields: None,
        });
        if self.batches_can_be_refused() {
            self.batch.statements.push(name.to_string());
        }
        self.statements.insert(name, Some(prepared));
        match substitute {
            Some(parse) => self.stage(&parse, Some(Pending::Parse)),
            None => self.stage(frame, Some(Pending::Parse)),
        }
    }

    fn on_execute(&mut self, portal: &str, frame: &[u8]) {
        let Some(bound) = self.portals.get(portal) else {
            return self.fail_block(INSUFFICIENT_PRIVILEGE, unknown_portal(portal));
        };
        // What this needs of the portal, without copying its parameters.
        let wants_parameters = (self.config.record && self.config.record_parameters)
            || bound.prepared.decision.verdict == Verdict::RequireApproval;
        let parameters =
            if wants_parameters { parameters_as_text(&bound.param_formats, &bound.params) } else { Vec::new() };
        let (id, rows, fields, mut prepared) =
            (bound.id, bound.rows, bound.fields.clone(), Arc::clone(&bound.prepared));
        if !self.still_judged(&prepared.judged) {
            // The server reads it again with the path and views of now.
            match self.judge_again(&prepared) {
                Ok(again) => prepared = again,
                Err((message, decision)) => {
                    // Refused now: recorded as the refusal it is.
                    let sql = Arc::clone(&prepared.sql);
                    self.record(|| sql, parameters, &decision);
                    let recorded = self.config.record;
                    return self.fail_block_as(Refusal { code: INSUFFICIENT_PRIVILEGE, message, recorded });
                }
            }
        }
        if prepared.decision.verdict == Verdict::RequireApproval && self.config.holds && !self.config.observe {
            let reading = self.reading_as(prepared.standard_conforming_strings);
            self.batch.held.push(HeldStatement::new(
                Arc::clone(&prepared.sql),
                parameters.clone(),
                Arc::clone(&prepared.decision),
                reading,
            ));
        }
        if self.config.record {
            let sql = Arc::clone(&prepared.sql);
            self.record(|| sql, parameters, &prepared.decision);
        }
        if let Some(facts) = &prepared.facts {
            if let Some(command) = &facts.gateway {
                self.keep_reason(command);
            }
            if self.apply_effects(facts, true) {
                self.resync_after_sync = true;
            }
            if is_copy_from_stdin(facts) {
                self.batch.copy_in = true;
            }
        }
        // The columns: known from a Describe, or about to be told by a
        // Describe of this portal already on its way; otherwise the
        // gateway asks (and keeps the answer from the client).
        let told = match self.portals.get_mut(portal) {
            Some(p) if fields.is_none() => {
                let asked = p.told.is_some();
                Some((asked, Arc::clone(p.told.get_or_insert_with(Arc::default))))
            }
            _ => None,
        };
        if let Some((false, told)) = &told {
            let mut describe = BytesMut::new();
            if frontend::describe(b'P', portal, &mut describe).is_ok() {
                let pending =
                    Pending::DescribePortal { name: portal.to_string(), id, internal: true, told: Arc::clone(told) };
                self.stage(&describe, Some(pending));
            }
        }
        let told = told.map(|(_, told)| told);
        let mut result = ResultState::new(prepared.facts.clone(), &prepared.decision);
        result.rows = rows;
        let pending = Pending::Execute { portal: portal.to_string(), fields, told, result };
        self.stage(frame, Some(pending));
    }

    /// How the server will read a statement arriving now.
    fn reading(&self) -> Reading {
        self.reading_as(self.state.standard_conforming_strings)
    }

    /// The same, for a text lexed with `standard_conforming_strings` as
    /// given (a prepared statement's, read when it was parsed): unsure
    /// while a change of settings in this batch, or before it, has not
    /// been read back from the server.
    fn reading_as(&self, standard_conforming_strings: bool) -> Reading {
        let reading_back = || self.pending.iter().any(|p| matches!(p, Pending::ReadSearchPath { .. }));
        if self.batch.settings || self.resync_after_sync || reading_back() {
            return Reading::Unsure;
        }
        let user = self.state.user.as_deref();
        let search_path = self
            .state
            .search_path
            .iter()
            .filter_map(|s| if s == "$user" { user.map(str::to_string) } else { Some(s.clone()) })
            .collect();
        Reading::Known { search_path, standard_conforming_strings }
    }

    /// What a statement decided now is judged with.
    fn judged(&self) -> Judged {
        Judged {
            search_path: self.state.search_path.clone(),
            definitions: self.state.definitions.as_ref().map(|d| d.id()),
            policy: Arc::clone(&self.policy_digest),
        }
    }

    /// Whether the session's path and views are still those a statement
    /// was judged with (compared in place: this runs at every `Execute`).
    fn still_judged(&self, judged: &Judged) -> bool {
        judged.search_path == self.state.search_path
            && judged.definitions == self.state.definitions.as_ref().map(|d| d.id())
            && (Arc::ptr_eq(&judged.policy, &self.policy_digest) || *judged.policy == *self.policy_digest)
    }

    /// A prepared statement decided again with the session's path and
    /// views, its text read as it was at `Parse`; the refusal when it is
    /// no longer allowed.
    fn judge_again(&mut self, prepared: &Prepared) -> Result<Arc<Prepared>, (String, Arc<Decision>)> {
        let sql = Arc::clone(&prepared.sql);
        let now = self.state.standard_conforming_strings;
        let lexed = prepared.standard_conforming_strings;
        if now != lexed {
            self.state.standard_conforming_strings = lexed;
        }
        let decision = self.decide(&sql);
        if now != lexed {
            self.state.standard_conforming_strings = now;
        }
        if let Err(message) = self.admit(&decision) {
            return Err((message, decision));
        }
        let facts = decision.statements.first().map(|s| Arc::clone(&s.facts));
        Ok(Arc::new(Prepared {
            id: prepared.id,
            sql,
            judged: self.judged(),
            standard_conforming_strings: lexed,
            facts,
            decision,
            fields: prepared.fields.clone(),
        }))
    }

    /// Whether a staged batch can still be refused after its messages were
    /// taken (a record that cannot be written, a hold that ends in a
    /// refusal): the names it defines are then kept to be forgotten.
    fn batches_can_be_refused(&self) -> bool {
        self.config.record || self.config.holds
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    // ------------------------------------------------------------ backend

    fn resume_backend(&mut self) {
        let BackendState::WaitingCatalog(frame) = std::mem::replace(&mut self.backend, BackendState::Relaying) else {
            return;
        };
        if !self.on_backend(frame.view()) {
            return;
        }
        self.tables = None;
        self.copy_columns = None;
        self.row_fields = None;
        self.process_backend();
    }

    fn process_backend(&mut self) {
        // Read in place, as the client's messages are: the buffer is taken
        // out while frames borrow it, and advanced once past every frame
        // handled (one handed to the catalog wait keeps a copy).
        let input = std::mem::take(&mut self.backend_in);
        let mut taken = 0;
        let more = loop {
            if !matches!(self.backend, BackendState::Relaying | BackendState::SkippingToReady) || self.end().is_some() {
                break false;
            }
            let rest = input.get(taken..).unwrap_or_default();
            let frame = match codec::view_backend(rest, self.config.max_message_bytes) {
                Ok(Some(f)) => f,
                Ok(None) => break true,
                Err(e) => {
                    tracing::warn!("invalid message from the database: {e}");
                    self.emit_error("FATAL", "08006", "the database sent an invalid message");
                    self.close(SessionEnd::ServerProtocol(e));
                    break false;
                }
            };
            taken += frame.bytes().len();
            if !self.on_backend(frame) {
                break false;
            }
        };
        let mut input = input;
        consume(&mut input, taken);
        self.backend_in = input;
        if !more {
            return;
        }
        if self.next_engine.is_some() && self.between_statements() {
            self.apply_next_engine();
        }
        // Messages held while the settings were read back, while a batch
        // waited, or while a new engine waited, are taken now.
        if matches!(self.client, ClientState::Reading) && !self.client_in.is_empty() {
            self.process_client();
        }
    }

    /// Handles one server frame; false when it waits for the catalog (it
    /// is kept, and handled again when the answer comes).
    fn on_backend(&mut self, frame: BackendView<'_>) -> bool {
        let Some(message) = frame.message() else {
            self.unexpected(format!("unknown message type '{}' from the database", char::from(frame.kind)));
            return true;
        };
        // Messages that can come at any time.
        match message {
            BackendMessage::ParameterStatus => {
                // The one setting the engine reads (the others are only
                // relayed, without a copy to parse them).
                if frame.body().starts_with(b"standard_conforming_strings\0") {
                    if let Ok((_, value)) = codec::parse_parameter_status(&frame.to_owned_frame()) {
                        self.state.standard_conforming_strings = value.as_str() == "on";
                    }
                }
                self.forward_to_client(&frame);
                return true;
            }
            BackendMessage::NotificationResponse => {
                self.relay_notification(&frame);
                return true;
            }
            BackendMessage::NoticeResponse => {
                self.relay_report(&frame);
                return true;
            }
            _ => {}
        }
        if matches!(self.backend, BackendState::SkippingToReady) {
            if message != BackendMessage::ReadyForQuery {
                return true;
            }
            self.backend = BackendState::Relaying;
        }
        if self.block != Block::Running && message == BackendMessage::ReadyForQuery {
            // The block's end. What the client sent in it after the server
            // failed it (after a Flush) was skipped, and answers of a
            // dropped block were dropped: none of it is owed an answer.
            self.pop_to_block_end();
            if self.end().is_some() {
                return true;
            }
        }
        let Some(head) = self.pending.front() else {
            if message == BackendMessage::ErrorResponse {
                // A FATAL error outside any statement (shutdown, terminated backend).
                self.relay_report(&frame);
                return true;
            }
            self.unexpected(format!("{message:?} from the database with nothing outstanding"));
            return true;
        };
        match head {
            Pending::Query { .. } => self.on_query_frame(message, frame),
            Pending::Execute { .. } => self.on_execute_frame(message, frame),
            Pending::Parse | Pending::Bind | Pending::Close => {
                let expected = match head {
                    Pending::Parse => BackendMessage::ParseComplete,
                    Pending::Bind => BackendMessage::BindComplete,
                    _ => BackendMessage::CloseComplete,
                };
                if message == BackendMessage::ErrorResponse {
                    self.on_block_error(&frame);
                } else if message == expected {
                    self.pending.pop_front();
                    self.forward_to_client(&frame);
                } else {
                    self.unexpected(format!("{message:?} where {expected:?} was due"));
                }
                true
            }
            Pending::DescribeStatement { .. } | Pending::DescribePortal { .. } => {
                self.on_describe_frame(message, frame)
            }
            Pending::MaybeSync => {
                if std::mem::take(&mut self.copy_in_started) {
                    // The server was in COPY IN and ignored this Sync.
                    self.pending.pop_front();
                    return self.on_backend(frame);
                }
                self.on_sync_frame(message, frame);
                true
            }
            Pending::Sync { .. } => {
                self.on_sync_frame(message, frame);
                true
            }
            Pending::ReadSearchPath { .. } => {
                self.on_read_search_path(message, &frame);
                true
            }
            Pending::Refused(_) => {
                let Some(Pending::Refused(refusal)) = self.pending.pop_front() else { return true };
                // The substitute failed (as it always does): the client gets the refusal.
                self.emit_error("ERROR", refusal.code, &refusal.message);
                if refusal.recorded {
                    self.note_error(refusal.code, &refusal.message);
                    self.finish_open(false);
                }
                if message == BackendMessage::ErrorResponse {
                    // The server skips the rest of the block by itself.
                    self.block = Block::Failed;
                    self.pop_to_block_end();
                } else {
                    // Had it not failed, what the server answers next is not
                    // the client's.
                    tracing::warn!("the refusal's substitute statement did not fail; skipping to Sync");
                    self.drop_block();
                }
                true
            }
        }
    }

    fn on_sync_frame(&mut self, message: BackendMessage, frame: BackendView<'_>) {
        match message {
            BackendMessage::ErrorResponse => self.relay_report(&frame),
            BackendMessage::ReadyForQuery => {
                let forward = !matches!(self.pending.pop_front(), Some(Pending::Sync { from_client: false }));
                self.on_ready(frame, forward);
            }
            other => self.unexpected(format!("{other:?} where ReadyForQuery was due")),
        }
    }

    /// A `ReadyForQuery` that ends a block; forwarded to the client unless
    /// it answers the gateway's own `Sync`.
    fn on_ready(&mut self, frame: BackendView<'_>, forward: bool) {
        let status = match codec::parse_ready_for_query(&frame) {
            Ok(s) => s,
            Err(e) => {
                self.emit_error("FATAL", "08006", "the database sent an invalid message");
                self.close(SessionEnd::ServerProtocol(e));
                return;
            }
        };
        self.block = Block::Running;
        // A Sync the client sent during this COPY IN comes next, and the
        // mark tells it was ignored.
        if !matches!(self.pending.front(), Some(Pending::MaybeSync)) {
            self.copy_in_started = false;
        }
        if matches!(self.client, ClientState::CopyIn) && self.pending.is_empty() {
            // The COPY ended on the server's side (an error before any data
            // was taken, or data sent ahead): what the client still sends
            // for it is dropped.
            self.leave_copy_in();
        }
        let tx_ended = status == b'I';
        if tx_ended && self.pending.is_empty() {
            // Portals do not outlive their transaction (unless messages
            // after this Sync already made new ones).
            self.portals.clear();
            // Nor does the engine's view of it: statements the server
            // skipped after an error may have left the session believing
            // it is in a transaction the server is not in.
            if self.state.transaction.is_some() && !self.implicit_until_sync {
                self.state.transaction = None;
            }
        }
        self.tx_status = status;
        if self.pending.is_empty() && self.open.len() > self.undecided_opens() {
            // Everything sent was answered: a recorded statement still open
            // was not run (skipped in a block the server failed).
            while self.open.len() > self.undecided_opens() {
                self.finish_open(false);
            }
        }
        if self.pending.is_empty() && (self.definitions_pending || self.catalog_stale) {
            if status == b'I' {
                // Everything sent so far is answered and committed (or
                // rolled back): read the catalog again.
                self.definitions_pending = false;
                self.catalog_stale = false;
                if !self.needs.iter().any(|n| matches!(n, Need::InvalidateCatalog)) {
                    self.needs.push_back(Need::InvalidateCatalog);
                }
            } else if self.definitions_pending {
                // The gateway reads the catalog on a connection of its own,
                // which sees what this transaction changed only once it
                // commits: until it ends, what names a relation may name a
                // view or function it created or changed.
                self.state.definitions = Some(Arc::new(Definitions::unavailable(
                    "views or functions may have changed in this transaction, and the gateway reads them again only \
                     once it ends: COMMIT or ROLLBACK first",
                )));
            }
        }
        let reading_back = matches!(self.client, ClientState::ReadingSettingsBack);
        if reading_back && self.pending.is_empty() && status != b'E' {
            // Read the settings back before the client goes on.
            let mut q = BytesMut::new();
            // The role too: `$user` in the path is the current role's
            // schema, which SET ROLE and SET SESSION AUTHORIZATION move.
            if frontend::query("SELECT pg_catalog.current_setting('search_path'), current_user", &mut q).is_ok() {
                self.to_server.extend_from_slice(&q);
                let held = forward.then(|| frame.to_owned_frame());
                self.pending.push_back(Pending::ReadSearchPath { held, value: None, role: None });
                return;
            }
        }
        if reading_back && self.pending.is_empty() {
            // A failed transaction: the settings are read back once it ends.
            self.client = ClientState::Reading;
        }
        if tx_ended {
            self.setting_touched_in_tx = false;
        }
        if forward {
            self.forward_to_client(&frame);
        }
    }

    #[cold]
    fn on_read_search_path(&mut self, message: BackendMessage, frame: &BackendView<'_>) {
        let Some(Pending::ReadSearchPath { value, role, .. }) = self.pending.front_mut() else { return };
        match message {
            BackendMessage::DataRow => {
                let mut values: Vec<Option<&[u8]>> = Vec::new();
                if codec::data_row_values_into(frame, &mut values).is_ok() {
                    let text =
                        |i: usize| values.get(i).copied().flatten().map(|b| String::from_utf8_lossy(b).into_owned());
                    *value = text(0);
                    *role = text(1);
                }
            }
            BackendMessage::ReadyForQuery => {
                let Some(Pending::ReadSearchPath { held, value, role }) = self.pending.pop_front() else { return };
                // Unknown: `$user` then names no schema the engine counts.
                self.state.user = role;
                match value.as_deref().and_then(EngineSession::search_path_from_setting) {
                    Some(path) => self.state.search_path = path,
                    None => {
                        // Unknown: no schema is searched, so unqualified
                        // names resolve to nothing and are refused.
                        tracing::warn!("could not read the search_path back; unqualified names will be refused");
                        self.state.search_path.clear();
                    }
                }
                if matches!(self.client, ClientState::ReadingSettingsBack) {
                    self.client = ClientState::Reading;
                }
                if self.tx_status == b'I' {
                    self.setting_touched_in_tx = false;
                }
                if let Some(held) = held {
                    self.forward_to_client(&held.view());
                }
            }
            _ => {}
        }
    }

    /// A server error inside a `Sync` block: relayed, and the entries up to
    /// the block's `Sync` are dropped (the server skips those messages).
    #[cold]
    fn on_block_error(&mut self, frame: &BackendView<'_>) {
        self.relay_report(frame);
        self.block = Block::Failed;
        self.pop_to_block_end();
        if matches!(self.client, ClientState::CopyIn) {
            // The COPY of an extended-protocol block failed: the server now
            // drops everything up to a Sync. A Sync the client sent during
            // the data is that Sync; otherwise the client's next one is.
            if std::mem::take(&mut self.settings_after_copy) {
                self.resync_after_sync = true;
            }
            if std::mem::take(&mut self.sync_held_in_copy) {
                let mut sync = BytesMut::new();
                frontend::sync(&mut sync);
                self.to_server.extend_from_slice(&sync);
                self.pending.push_back(Pending::Sync { from_client: true });
                self.block_open = false;
                self.client = ClientState::Reading;
            } else {
                self.client = ClientState::DiscardingUntilSync;
            }
        }
    }

    /// Drops the entries of the block being answered, up to its `Sync`.
    ///
    /// A failed block's simple queries go too: the server skips them. A
    /// dropped block's may not: the server runs such a query, unless the
    /// row cap's cancel failed the block first, and which one it did cannot
    /// be told from here, so its answers could not be matched to the right
    /// statement. The session ends instead (with `08P01`).
    #[cold]
    fn pop_to_block_end(&mut self) {
        while let Some(p) = self.pending.front() {
            match p {
                Pending::Sync { .. } | Pending::MaybeSync | Pending::ReadSearchPath { .. } => break,
                Pending::Query { .. } if self.block != Block::Failed => {
                    return self.unexpected(
                        "a simple query sent inside an extended-protocol block whose result the gateway stopped"
                            .to_string(),
                    );
                }
                _ => {
                    match self.pending.pop_front() {
                        // The one that failed ran; those after it did not.
                        Some(Pending::Execute { .. }) => {
                            let ran = self.open.front().is_some_and(|r| r.error.is_some());
                            self.finish_open(ran);
                        }
                        Some(Pending::Refused(r)) if r.recorded => self.finish_open(false),
                        _ => {}
                    }
                }
            }
        }
    }

    /// After a capped result: the client sees the cap as the block's error.
    #[cold]
    fn drop_block(&mut self) {
        self.block = Block::Dropped;
        self.pop_to_block_end();
        if self.pending.is_empty() && self.block_open && matches!(self.client, ClientState::Reading) {
            // The client has not ended the block yet: what it sends up to
            // its Sync is dropped, as the server would drop it after an
            // error (which is what the client was told).
            self.client = ClientState::DiscardingUntilSync;
            self.batch.failed = true;
        }
        // The server still answers what was sent after the capped
        // Execute; those answers are not the client's.
        self.backend = BackendState::SkippingToReady;
    }

    fn on_describe_frame(&mut self, message: BackendMessage, frame: BackendView<'_>) -> bool {
        let (facts, id, told, internal) = match self.pending.front() {
            Some(Pending::DescribeStatement { name, id }) => {
                let facts = match self.statements.get(name) {
                    Some(Some(p)) if p.id == *id => p.facts.clone(),
                    _ => None,
                };
                (facts, *id, None, false)
            }
            Some(Pending::DescribePortal { name, id, internal, told }) => {
                let facts = match self.portals.get(name) {
                    Some(p) if p.id == *id => p.prepared.facts.clone(),
                    _ => None,
                };
                (facts, *id, Some(Arc::clone(told)), *internal)
            }
            _ => return true,
        };
        // The same columns as the last description of the same statement
        // (a prepared statement described at every run): its parse and its
        // masking plan are taken again.
        let again = self.last_description.as_ref().filter(|last| {
            message == BackendMessage::RowDescription && last.frame == frame.frame && same_facts(&last.facts, &facts)
        });
        if let Some(last) = again {
            let (fields, masker) = (Arc::clone(&last.fields), Arc::clone(&last.masker));
            let name = self.pop_described();
            self.remember_fields(told.as_ref(), &name, id, &fields);
            if !internal {
                self.forward_row_description(&frame, &fields, &masker);
            }
            return true;
        }
        // Read from a copy, which the plan keeps: kept fields must not pin
        // the read buffer.
        let owned = (message == BackendMessage::RowDescription).then(|| frame.to_owned_frame());
        let fields: Vec<FieldDescription> = match (message, &owned) {
            (BackendMessage::ParameterDescription, _) => {
                self.forward_to_client(&frame);
                return true;
            }
            (BackendMessage::NoData, _) => Vec::new(),
            (BackendMessage::RowDescription, Some(owned)) => match codec::parse_row_description(owned) {
                Ok(fields) => fields,
                Err(e) => {
                    self.emit_error("FATAL", "08006", "the database sent an invalid message");
                    self.close(SessionEnd::ServerProtocol(e));
                    return true;
                }
            },
            (BackendMessage::ErrorResponse, _) => {
                self.on_block_error(&frame);
                return true;
            }
            (other, _) => {
                self.unexpected(format!("{other:?} after Describe"));
                return true;
            }
        };
        // The masking plan first (it may wait for the catalog): nothing is
        // changed before it is there.
        let masker = if !internal && message == BackendMessage::RowDescription {
            match self.masker(facts.as_deref(), &fields) {
                Some(m) => Some(m),
                None => {
                    self.backend = BackendState::WaitingCatalog(frame.to_owned_frame());
                    return false;
                }
            }
        } else {
            None
        };
        let name = self.pop_described();
        let fields = Arc::new(fields);
        self.remember_fields(told.as_ref(), &name, id, &fields);
        if let (Some((masker, true)), Some(owned)) = (&masker, owned) {
            self.last_description = Some(LastDescription {
                frame: owned.frame,
                facts: facts.clone(),
                fields: Arc::clone(&fields),
                masker: Arc::clone(masker),
            });
        }
        if internal {
            return true;
        }
        match masker {
            Some((masker, _)) => self.forward_row_description(&frame, &fields, &masker),
            None => self.forward_to_client(&frame),
        }
        true
    }

    /// Takes the `Describe` answered from the queue: the name described.
    fn pop_described(&mut self) -> String {
        match self.pending.pop_front() {
            Some(Pending::DescribeStatement { name, .. } | Pending::DescribePortal { name, .. }) => name,
            _ => String::new(),
        }
    }

    /// Keeps the columns a `Describe` told for its statement, or for its
    /// portal (`told`, which the portal's `Execute`s already on their way
    /// share).
    fn remember_fields(&mut self, told: Option<&ToldFields>, name: &str, id: u64, fields: &Arc<Vec<FieldDescription>>) {
        let Some(told) = told else {
            if let Some(Some(p)) = self.statements.get_mut(name) {
                if p.id == id {
                    // Portals bound before keep the columns they had.
                    Arc::make_mut(p).fields = Some(Arc::clone(fields));
                }
            }
            return;
        };
        let _ = told.set(Arc::clone(fields));
        if let Some(p) = self.portals.get_mut(name) {
            if p.id == id {
                p.fields = Some(Arc::clone(fields));
            }
        }
    }

    fn on_execute_frame(&mut self, message: BackendMessage, frame: BackendView<'_>) -> bool {
        let Some(Pending::Execute { fields, told, result, .. }) = self.pending.front() else { return true };
        // The masker is planned at the first row of the result.
        if result.masker.is_none() && message == BackendMessage::DataRow {
            let facts = result.facts.clone();
            let fields = fields.clone().or_else(|| told.as_ref().and_then(|t| t.get().cloned()));
            let masker = match fields {
                Some(fields) => match self.execute_masker(facts, fields) {
                    Some(m) => m,
                    None => {
                        self.backend = BackendState::WaitingCatalog(frame.to_owned_frame());
                        return false;
                    }
                },
                None => {
                    // Columns unknown: every value is masked whole.
                    let mut values: Vec<Option<&[u8]>> = Vec::new();
                    let n = codec::data_row_values_into(&frame, &mut values).map(|()| values.len()).unwrap_or(0);
                    tracing::warn!("result columns unknown; masking every value");
                    self.unknown_columns_masker(n)
                }
            };
            if let Some(Pending::Execute { result, .. }) = self.pending.front_mut() {
                result.masker = Some(masker);
            }
        }
        match message {
            BackendMessage::DataRow | BackendMessage::CopyData => self.on_row(message, frame),
            BackendMessage::CopyOutResponse => return self.start_copy_out(&frame, None),
            BackendMessage::CopyDone => {
                self.end_binary_copy();
                // A refused COPY's client never saw its CopyOutResponse.
                if self.current_result().is_none_or(|r| r.refused.is_none()) {
                    self.forward_to_client(&frame);
                }
            }
            BackendMessage::CopyInResponse => {
                self.copy_in_started = true;
                self.forward_to_client(&frame);
            }
            BackendMessage::CommandComplete | BackendMessage::PortalSuspended | BackendMessage::EmptyQueryResponse => {
                let Some(Pending::Execute { portal, result, .. }) = self.pending.pop_front() else { return true };
                if let Some(p) = self.portals.get_mut(&portal) {
                    p.rows = result.rows;
                }
                if result.stopped() {
                    self.report_stop(&result);
                    self.finish_open(true);
                    self.drop_block();
                    return true;
                }
                if !self.open.is_empty() {
                    self.note_tag(&frame, result.rows);
                    self.finish_open(true);
                }
                if message == BackendMessage::CommandComplete {
                    self.after_command(result.facts.as_deref());
                }
                self.forward_to_client(&frame);
            }
            BackendMessage::ErrorResponse => {
                let stopped = matches!(self.pending.front(), Some(Pending::Execute { result, .. }) if result.stopped());
                if stopped {
                    let Some(Pending::Execute { result, .. }) = self.pending.pop_front() else { return true };
                    self.report_stop(&result);
                    self.finish_open(true);
                    self.drop_block();
                    return true;
                }
                let facts = match self.pending.front() {
                    Some(Pending::Execute { result, .. }) => result.facts.clone(),
                    _ => None,
                };
                self.forget_refused_reason(facts.as_deref());
                self.on_block_error(&frame);
            }
            other => self.unexpected(format!("{other:?} during Execute")),
        }
        true
    }

    fn on_query_frame(&mut self, message: BackendMessage, frame: BackendView<'_>) -> bool {
        let Some(Pending::Query { decision, index, failed, refusal, .. }) = self.pending.front() else {
            return true;
        };
        if message == BackendMessage::ReadyForQuery {
            let (recorded, ran) = (refusal.as_ref().is_none_or(|r| r.recorded), refusal.is_none());
            self.pending.pop_front();
            if recorded {
                self.finish_open(ran);
            }
            self.on_ready(frame, true);
            return true;
        }
        if let Some(refusal) = refusal.clone() {
            // The substitute's failure becomes the refusal; nothing else of it reaches the client.
            if message == BackendMessage::ErrorResponse && !*failed {
                self.emit_error("ERROR", refusal.code, &refusal.message);
                if refusal.recorded {
                    self.note_error(refusal.code, &refusal.message);
                }
                if let Some(Pending::Query { failed, .. }) = self.pending.front_mut() {
                    *failed = true;
                }
            }
            return true;
        }
        if *failed {
            return true;
        }
        if matches!(message, BackendMessage::DataRow | BackendMessage::CopyData) {
            // The row path: nothing of the decision is needed.
            self.on_row(message, frame);
            return true;
        }
        // Only the frames that start or end a result need the statement's facts.
        let (decision, index) = (Arc::clone(decision), *index);
        let facts = || decision.statements.get(index).map(|s| Arc::clone(&s.facts));
        match message {
            BackendMessage::RowDescription => {
                let facts = facts();
                // The same columns as the last result of the same statement
                // facts (a query run again with other constants): its parse
                // and masking plan are taken again.
                let again = self
                    .last_description
                    .as_ref()
                    .filter(|last| last.frame == frame.frame && same_facts(&last.facts, &facts))
                    .map(|last| (Arc::clone(&last.fields), Arc::clone(&last.masker)));
                let (fields, masker) = match again {
                    Some(again) => again,
                    None => {
                        // Read from a copy, which the plan keeps: kept
                        // fields must not pin the read buffer.
                        let owned = frame.to_owned_frame();
                        let fields = match codec::parse_row_description(&owned) {
                            Ok(f) => f,
                            Err(e) => {
                                self.emit_error("FATAL", "08006", "the database sent an invalid message");
                                self.close(SessionEnd::ServerProtocol(e));
                                return true;
                            }
                        };
                        let Some((masker, cacheable)) = self.masker(facts.as_deref(), &fields) else {
                            self.backend = BackendState::WaitingCatalog(frame.to_owned_frame());
                            return false;
                        };
                        let fields = Arc::new(fields);
                        if cacheable {
                            self.last_description = Some(LastDescription {
                                frame: owned.frame,
                                facts: facts.clone(),
                                fields: Arc::clone(&fields),
                                masker: Arc::clone(&masker),
                            });
                        }
                        (fields, masker)
                    }
                };
                self.forward_row_description(&frame, &fields, &masker);
                if let Some(Pending::Query { result, .. }) = self.pending.front_mut() {
                    let mut fresh = ResultState::new(facts, &decision);
                    fresh.masker = Some(masker);
                    *result = fresh;
                }
            }
            BackendMessage::CopyOutResponse => return self.start_copy_out(&frame, facts()),
            BackendMessage::CopyInResponse => {
                self.copy_in_started = true;
                self.forward_to_client(&frame);
            }
            BackendMessage::CopyDone
                if self.end_binary_copy() || self.current_result().is_some_and(|r| r.refused.is_some()) =>
            {
                // A refused COPY's client never saw its CopyOutResponse.
            }
            BackendMessage::CopyDone | BackendMessage::CopyBothResponse | BackendMessage::EmptyQueryResponse => {
                self.forward_to_client(&frame);
            }
            BackendMessage::CommandComplete => {
                if self.current_result().is_some_and(ResultState::stopped) {
                    self.end_stopped_query();
                    return true;
                }
                self.after_command(facts().as_deref());
                self.forward_to_client(&frame);
                if !self.open.is_empty() {
                    let rows = self.current_result().map_or(0, |r| r.rows);
                    self.note_tag(&frame, rows);
                }
                if let Some(Pending::Query { index, result, .. }) = self.pending.front_mut() {
                    *index += 1;
                    let next = decision.statements.get(*index).map(|s| Arc::clone(&s.facts));
                    *result = ResultState::new(next, &decision);
                }
            }
            BackendMessage::ErrorResponse => {
                if self.current_result().is_some_and(ResultState::stopped) {
                    self.end_stopped_query();
                    return true;
                }
                self.forget_refused_reason(facts().as_deref());
                self.relay_report(&frame);
                if let Some(Pending::Query { failed, .. }) = self.pending.front_mut() {
                    *failed = true;
                }
            }
            other => self.unexpected(format!("{other:?} in a query result")),
        }
        true
    }

    #[cold]
    fn end_stopped_query(&mut self) {
        let report = match self.pending.front_mut() {
            Some(Pending::Query { result, failed, .. }) => {
                *failed = true;
                Some(std::mem::replace(result, ResultState::empty()))
            }
            _ => None,
        };
        if let Some(r) = report {
            self.report_stop(&r);
        }
    }

    fn current_result(&self) -> Option<&ResultState> {
        match self.pending.front() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => Some(result),
            _ => None,
        }
    }

    fn current_result_mut(&mut self) -> Option<&mut ResultState> {
        match self.pending.front_mut() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => Some(result),
            _ => None,
        }
    }

    /// A result row (`DataRow`, or `CopyData` of a COPY TO STDOUT).
    fn on_row(&mut self, message: BackendMessage, frame: BackendView<'_>) {
        let Some(result) = (match self.pending.front_mut() {
            Some(Pending::Query { result, .. }) | Some(Pending::Execute { result, .. }) => Some(result),
            _ => None,
        }) else {
            return;
        };
        if result.refused.is_some() {
            return;
        }
        let copy = message == BackendMessage::CopyData;
        if copy && result.copy_out.is_none() {
            // COPY data outside a COPY OUT: not ours to judge.
            self.to_client.extend_from_slice(frame.frame);
            return;
        }
        // Binary COPY data is counted by the rows read out of it (a
        // message may hold the header or the end marker, or split a row).
        let binary_copy = result.copy_out.as_ref().is_some_and(|c| c.binary.is_some());
        if binary_copy && result.capped {
            return;
        }
        if !binary_copy {
            result.rows += 1;
        }
        if !binary_copy && result.cap > 0 && result.rows > result.cap {
            if !result.capped {
                result.capped = true;
                tracing::info!(cap = result.cap, "row cap reached; cancelling the query");
                self.metrics.row_cap_hit();
                self.needs.push_back(Need::CancelUpstream);
            }
            return;
        }
        let Some(masker) = result.masker.as_ref().filter(|m| !m.is_noop()) else {
            self.to_client.extend_from_slice(frame.frame);
            if self.config.record_rows > 0 && !copy {
                let mut row: Vec<Option<&[u8]>> = Vec::new();
                if codec::data_row_values_into(&frame, &mut row).is_ok() {
                    keep_row(&mut self.open, self.config.record_rows, row.iter().copied());
                }
            }
            return;
        };
        if let Some(copy_out) = result.copy_out.as_deref_mut() {
            let outcome = match &copy_out.layout {
                CopyLayout::Csv(_) if copy_out.header => {
                    // Column names, as the server wrote them.
                    copy_out.header = false;
                    self.to_client.extend_from_slice(frame.frame);
                    Ok(())
                }
                CopyLayout::Csv(layout) => {
                    let csv = copy::Csv {
                        delimiter: layout.delimiter,
                        quote: layout.quote,
                        escape: layout.escape,
                        null: layout.null.as_bytes(),
                    };
                    let mut row = self.row.lend();
                    let quoted = &mut copy_out.quoted;
                    let outcome = match copy::split_csv_line(frame.body(), &csv, &mut row, quoted) {
                        Ok(_) if row.len() != copy_out.columns => Err(()),
                        Ok(newline) => {
                            let changed = masker.mask_row(&mut row);
                            note_masked(&mut self.open, &self.metrics, changed as u64);
                            if changed == 0 {
                                self.to_client.extend_from_slice(frame.frame);
                                Ok(())
                            } else {
                                copy::csv_data_line(&mut self.to_client, &row, quoted, &csv, newline).map_err(|_| ())
                            }
                        }
                        Err(_) => Err(()),
                    };
                    self.row.give_back(row);
                    outcome
                }
                CopyLayout::Binary => match copy_out.binary.as_mut() {
                    Some(reader) => {
                        // A masked value of a column not known to take text
                        // becomes NULL: its binary form cannot hold text.
                        let retyped = masker.retyped_columns();
                        let (cap, rows) = (result.cap, &mut result.rows);
                        let mut over = false;
                        let mut masked = 0u64;
                        let mut mask = |row: &mut copy::BinaryRow<'_>| {
                            *rows += 1;
                            if cap > 0 && *rows > cap {
                                over = true;
                                return None;
                            }
                            let changed = masker.mask_row(row);
                            masked += changed as u64;
                            for &i in retyped {
                                if let Some(v) = row.get_mut(i) {
                                    *v = None;
                                }
                            }
                            Some(changed)
                        };
                        let fed = reader.feed(frame.body(), &mut mask, &mut self.to_client).map_err(|e| {
                            tracing::warn!(error = %e, "binary COPY data the gateway cannot read; refusing the COPY");
                        });
                        note_masked(&mut self.open, &self.metrics, masked);
                        if over {
                            result.capped = true;
                            tracing::info!(cap = result.cap, "row cap reached; cancelling the query");
                            self.metrics.row_cap_hit();
                            self.needs.push_back(Need::CancelUpstream);
                        }
                        fed
                    }
                    None => Err(()),
                },
                _ => {
                    let mut row = self.row.lend();
                    let newline = copy::split_line(frame.body(), &mut row);
                    let changed = if row.len() != copy_out.columns { None } else { Some(masker.mask_row(&mut row)) };
                    note_masked(&mut self.open, &self.metrics, changed.unwrap_or(0) as u64);
                    let outcome = match changed {
                        None => Err(()),
                        Some(0) => {
                            self.to_client.extend_from_slice(frame.frame);
                            Ok(())
                        }
                        Some(_) => copy::copy_data_line(&mut self.to_client, &row, newline).map_err(|_| ()),
                    };
                    self.row.give_back(row);
                    outcome
                }
            };
            if outcome.is_err() {
                // A line that does not split into the result's columns
                // cannot be masked: the rest of the COPY is refused.
                result.refused = Some(
                    "a COPY line did not split into the result's columns, so it could not be masked; the COPY is \
                     refused"
                        .into(),
                );
                if copy_out.binary.is_some() {
                    result.refused = Some(
                        "the COPY's binary data could not be read row by row, so it could not be masked; the COPY \
                         is refused"
                            .into(),
                    );
                }
                self.needs.push_back(Need::CancelUpstream);
            }
            return;
        }
        let mut row = self.row.lend();
        let outcome = codec::data_row_values_into(&frame, &mut row).and_then(|()| {
            let changed = masker.mask_row(&mut row);
            if self.config.record_rows > 0 {
                keep_row(&mut self.open, self.config.record_rows, row.iter().map(Option::as_deref));
            }
            if changed == 0 {
                self.to_client.extend_from_slice(frame.frame);
                Ok(())
            } else {
                note_masked(&mut self.open, &self.metrics, changed as u64);
                codec::data_row(&mut self.to_client, row.iter().map(Option::as_deref))
            }
        });
        self.row.give_back(row);
        if let Err(e) = outcome {
            self.emit_error("FATAL", "08006", "the database sent an invalid message");
            self.close(SessionEnd::ServerProtocol(e));
        }
    }

    /// At a `CopyDone`: a binary COPY being masked must have ended after
    /// its end marker; one that did not is refused (the client gets an
    /// error instead of `CopyDone`). Returns whether it was refused here.
    fn end_binary_copy(&mut self) -> bool {
        let Some(result) = self.current_result_mut() else { return false };
        let Some(reader) = result.copy_out.as_ref().and_then(|c| c.binary.as_ref()) else { return false };
        if result.refused.is_some() {
            return false;
        }
        match reader.finish() {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(error = %e, "binary COPY data ended where it may not; refusing the COPY");
                result.refused =
                    Some(format!("the COPY's binary data could not be masked ({e}); the COPY is refused").into());
                true
            }
        }
    }

    #[cold]
    fn start_copy_out(&mut self, frame: &BackendView<'_>, facts: Option<Arc<StatementFacts>>) -> bool {
        let (format, columns) = match codec::parse_copy_response(frame) {
            Ok(c) => c,
            Err(e) => {
                self.emit_error("FATAL", "08006", "the database sent an invalid message");
                self.close(SessionEnd::ServerProtocol(e));
                return true;
            }
        };
        let facts = facts.or_else(|| self.current_result().and_then(|r| r.facts.clone()));
        let engine = Arc::clone(&self.engine);
        // `COPY table TO STDOUT`: the table's columns, from the catalog;
        // binary data: the types of the columns it refers to.
        let mut table_columns = None;
        let lookups = facts.as_deref().map(|f| engine.copy_out_lookups(f, format != 0)).unwrap_or_default();
        if !lookups.is_empty() {
            match self.copy_columns.take() {
                Some(answer) => table_columns = answer,
                None => {
                    self.needs.push_back(Need::CopyColumns { tables: lookups });
                    self.backend = BackendState::WaitingCatalog(frame.to_owned_frame());
                    return false;
                }
            }
        }
        let plan = engine.copy_out_plan(
            self.state.identity(),
            facts.as_deref(),
            columns.len(),
            format != 0,
            table_columns.as_deref(),
        );
        // Forwarded, masked as text, or refused; a plan this gateway does
        // not know how to carry out is refused (fail closed).
        let (masker, layout, refusal) = match plan.action {
            CopyOutAction::Forward => (RowMasker::default(), CopyLayout::Text, None),
            CopyOutAction::Mask(layout @ (CopyLayout::Text | CopyLayout::Csv(_) | CopyLayout::Binary)) => {
                (plan.masker, layout, None)
            }
            CopyOutAction::Refuse(reason) => (plan.masker, CopyLayout::Text, Some(reason)),
            other => (
                plan.masker,
                CopyLayout::Text,
                Some(format!("COPY data the gateway cannot mask in this layout ({other:?}) is refused")),
            ),
        };
        let max_row = self.config.max_message_bytes;
        if let Some(result) = self.current_result_mut() {
            let header = matches!(&layout, CopyLayout::Csv(csv) if csv.header);
            let binary = (layout == CopyLayout::Binary).then(|| copy::BinaryCopy::new(columns.len(), max_row));
            result.copy_out =
                Some(Box::new(CopyOut { columns: columns.len(), layout, header, quoted: Vec::new(), binary }));
            result.masker = Some(Arc::new(masker));
            if let Some(reason) = &refusal {
                result.refused = Some(reason.as_str().into());
            }
        }
        if refusal.is_some() {
            self.needs.push_back(Need::CancelUpstream);
            return true;
        }
        self.forward_to_client(frame);
        true
    }

    #[cold]
    fn report_stop(&mut self, result: &ResultState) {
        let message = match &result.refused {
            Some(reason) => reason.to_string(),
            None => {
                let rule = result
                    .decision
                    .as_ref()
                    .and_then(|d| d.rule.as_deref())
                    .map(|r| format!(" (rule {r})"))
                    .unwrap_or_default();
                format!(
                    "row limit reached: the statement returned more than {} rows, the most this identity may read \
                     at once{rule}; add a LIMIT or narrow the query",
                    result.cap
                )
            }
        };
        let code = if result.refused.is_some() { INSUFFICIENT_PRIVILEGE } else { PROGRAM_LIMIT_EXCEEDED };
        self.emit_error("ERROR", code, &message);
        self.note_error(code, &message);
        if let Some(r) = self.open.front_mut() {
            r.rows += result.rows.min(result.cap);
        }
    }

    fn after_command(&mut self, facts: Option<&StatementFacts>) {
        if facts.is_some_and(|f| f.class == policy_core::Class::Ddl) {
            if self.state.transaction.is_some() {
                // Its catalog connection sees the change once the
                // transaction commits; reading it now would read the old
                // catalog, or wait on the locks the transaction holds.
                self.catalog_stale = true;
            } else {
                self.needs.push_back(Need::InvalidateCatalog);
            }
            self.maskers.clear();
            self.last_masker = None;
            self.last_description = None;
        }
    }

    /// A masker for a result whose columns the gateway does not know.
    #[cold]
    fn unknown_columns_masker(&mut self, n: usize) -> Arc<RowMasker> {
        let columns: Vec<ColumnInfo> = (0..n).map(|i| ColumnInfo::new(&format!("column{i}"), None, 0, true)).collect();
        Arc::new(self.engine.masker(self.state.identity(), &StatementFacts::default(), &columns))
    }

    /// The masking plan of an `Execute`'s result: the last one when the
    /// statement and its columns are the very same (the usual prepared
    /// statement run again and again), otherwise [`Self::masker`]'s.
    fn execute_masker(
        &mut self,
        facts: Option<Arc<StatementFacts>>,
        fields: Arc<Vec<FieldDescription>>,
    ) -> Option<Arc<RowMasker>> {
        if let Some(last) = &self.last_masker {
            let same_facts = match (&last.facts, &facts) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same_facts && Arc::ptr_eq(&last.fields, &fields) {
                return Some(Arc::clone(&last.masker));
            }
        }
        let (masker, cacheable) = self.masker(facts.as_deref(), &fields)?;
        if cacheable {
            self.last_masker = Some(LastMasker { facts, fields, masker: Arc::clone(&masker) });
        }
        Some(masker)
    }

    /// Plans the masking of a result, or finds the plan made for the same
    /// statement shape, lineage and columns under the same policy; `None`
    /// when the catalog must be asked first (the [`Need`] is queued). The
    /// flag says whether the plan may be kept for the next such result.
    #[cold]
    fn masker(
        &mut self,
        facts: Option<&StatementFacts>,
        fields: &[FieldDescription],
    ) -> Option<(Arc<RowMasker>, bool)> {
        let engine = Arc::clone(&self.engine);
        if engine.policy().masks.is_empty() && engine.detectors().is_empty() {
            return Some((Arc::new(RowMasker::default()), true));
        }
        let key = facts.map(|f| f.fingerprint.as_str()).unwrap_or_default();
        let lineage = facts.map(|f| f.output_columns.as_slice()).unwrap_or_default();
        if let Some(hit) = self
            .maskers
            .get(key)
            .and_then(|entries| entries.iter().find(|e| e.lineage == lineage && e.fields == fields))
        {
            return Some((Arc::clone(&hit.masker), true));
        }
        let mut oids: Vec<u32> = fields.iter().map(|f| f.table_oid).filter(|o| *o != 0).collect();
        oids.sort_unstable();
        oids.dedup();
        let tables = if engine.policy().masks.is_empty() || oids.is_empty() {
            HashMap::new()
        } else {
            match self.tables.take() {
                Some(t) => t,
                None => {
                    self.needs.push_back(Need::ResolveTables { oids });
                    return None;
                }
            }
        };
        // Whole rows of tables as composites: their fields, by name, from
        // the catalog (read for each such statement, not kept: a table's
        // columns may change under a cached plan).
        let rows: Vec<Option<&[String]>> = match facts {
            Some(f) if f.output_columns.len() == fields.len() && !engine.policy().masks.is_empty() => f
                .output_columns
                .iter()
                .map(|o| match &o.row {
                    Some(row) if row.layout == policy_core::RowLayout::Composite && !row.tables.is_empty() => {
                        Some(row.tables.as_slice())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut wanted: Vec<String> = rows.iter().flatten().flat_map(|t| t.iter().cloned()).collect();
        wanted.sort();
        wanted.dedup();
        let row_fields = if wanted.is_empty() {
            HashMap::new()
        } else {
            match self.row_fields.take() {
                Some(found) => found,
                None => {
                    self.tables = Some(tables);
                    self.needs.push_back(Need::RowFields { tables: wanted });
                    return None;
                }
            }
        };
        let columns: Vec<ColumnInfo> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let source = tables.get(&f.table_oid).and_then(|t| t.column(f.column));
                let mut column = ColumnInfo::new(f.name.as_str(), source.as_deref(), f.type_oid, f.format == 1);
                // The row's table is the one of its candidates that exists;
                // with more than one, which one the server read is not known.
                if let Some(Some(candidates)) = rows.get(i) {
                    let mut found = candidates.iter().filter_map(|t| row_fields.get(t));
                    if let (Some(names), None) = (found.next(), found.next()) {
                        column.row_fields = names.clone();
                    }
                }
                column
            })
            .collect();
        let default = StatementFacts::default();
        let masker = Arc::new(engine.masker(self.state.identity(), facts.unwrap_or(&default), &columns));
        if !wanted.is_empty() {
            return Some((masker, false));
        }
        if self.maskers.len() >= MASKER_CACHE_ENTRIES {
            self.maskers.clear();
        }
        self.maskers.entry(key.to_string()).or_default().push(CachedMasker {
            lineage: lineage.to_vec(),
            fields: fields.to_vec(),
            masker: Arc::clone(&masker),
        });
        Some((masker, true))
    }

    fn forward_row_description(&mut self, frame: &BackendView<'_>, fields: &[FieldDescription], masker: &RowMasker) {
        if masker.retyped_columns().is_empty() {
            self.forward_to_client(frame);
            return;
        }
        let mut fields = fields.to_vec();
        for &i in masker.retyped_columns() {
            if let Some(f) = fields.get_mut(i) {
                f.type_oid = 25;
                f.type_size = -1;
                f.type_modifier = -1;
            }
        }
        if let Err(e) = codec::row_description(&mut self.to_client, &fields) {
            self.unexpected(format!("a RowDescription could not be rewritten: {e}"));
        }
    }

    fn forward_to_client(&mut self, frame: &BackendView<'_>) {
        self.to_client.extend_from_slice(frame.frame);
    }

    /// Relays a `NotificationResponse` (LISTEN/NOTIFY); its payload is data
    /// any session may have sent, so it passes through the detectors.
    #[cold]
    fn relay_notification(&mut self, frame: &BackendView<'_>) {
        let body = frame.body();
        let parsed = body.get(4..).and_then(|rest| {
            let channel_end = rest.iter().position(|b| *b == 0)?;
            let payload = rest.get(channel_end + 1..)?.strip_suffix(b"\0")?;
            Some((rest.get(..channel_end)?, std::str::from_utf8(payload).ok()?))
        });
        let Some((channel, payload)) = parsed else {
            self.unexpected("a malformed NotificationResponse from the database".to_string());
            return;
        };
        let scrubber = self.engine.text_scrubber(self.state.identity());
        let Scrubbed::Replace(clean) = scrubber.scrub("00000", b'M', payload) else {
            self.forward_to_client(frame);
            return;
        };
        let mut out = Vec::with_capacity(frame.frame.len());
        out.extend_from_slice(body.get(..4).unwrap_or_default());
        out.extend_from_slice(channel);
        out.push(0);
        out.extend_from_slice(clean.as_bytes());
        out.push(0);
        let Ok(len) = i32::try_from(out.len() + 4) else { return };
        self.to_client.extend_from_slice(b"A");
        self.to_client.extend_from_slice(&len.to_be_bytes());
        self.to_client.extend_from_slice(&out);
    }

    /// Relays a server error or notice, scrubbed for this client.
    #[cold]
    fn relay_report(&mut self, frame: &BackendView<'_>) {
        let fields = match codec::parse_fields(&frame.to_owned_frame()) {
            Ok(f) => f,
            Err(e) => {
                self.emit_error("FATAL", "08006", "the database sent an invalid message");
                self.close(SessionEnd::ServerProtocol(e));
                return;
            }
        };
        // A message answers the statements of a query string, the one an
        // `Execute` runs, or a message that runs nothing (`Parse`, `Bind`,
        // `Describe`, `Close`). Anything else (a `Sync` committing the
        // implicit transaction, a message the server sends unasked) is
        // tied to no statement, which the scrubber takes as unproven.
        let identity = self.state.identity();
        let scrubber = match self.pending.front() {
            Some(Pending::Query { decision, .. }) => {
                self.engine.scrubber(identity, decision.statements.iter().map(|s| &*s.facts))
            }
            Some(Pending::Execute { result, .. }) => self.engine.scrubber(identity, result.facts.as_deref()),
            Some(
                Pending::Parse
                | Pending::Bind
                | Pending::DescribeStatement { .. }
                | Pending::DescribePortal { .. }
                | Pending::Close
                | Pending::Refused(_),
            ) => self.engine.text_scrubber(identity),
            Some(Pending::Sync { .. } | Pending::MaybeSync | Pending::ReadSearchPath { .. }) | None => {
                self.engine.scrubber(identity, [])
            }
        };
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
        if frame.kind == b'E' && self.answering_recorded() {
            let field = |code: u8| out.iter().find(|(c, _)| *c == code).map(|(_, v)| v.to_string()).unwrap_or_default();
            let (code, message) = (field(b'C'), field(b'M'));
            self.note_error(&code, &message);
        }
        if !changed {
            self.forward_to_client(frame);
            return;
        }
        let borrowed: Vec<(u8, &str)> = out.iter().map(|(c, v)| (*c, v.as_ref())).collect();
        if codec::fields_message(&mut self.to_client, frame.kind, &borrowed).is_err() {
            self.emit_error("ERROR", "XX000", "the database reported an error the gateway could not relay");
        }
    }

    #[cold]
    fn emit_error(&mut self, severity: &str, code: &str, message: &str) {
        if codec::error_response(&mut self.to_client, severity, code, message, &[]).is_err() {
            // Only a NUL byte in the text can fail; say it without the text.
            let _ = codec::error_response(&mut self.to_client, severity, code, "error", &[]);
        }
    }
}

/// The statement of the gateway's in `decision`, if any (alone in its
/// text, or refused for not being so).
fn gateway_command(decision: &Decision) -> Option<&GatewayCommand> {
    decision.statements.iter().find_map(|s| s.facts.gateway.as_ref())
}

/// Stages [`REFUSED_SQL`] as a simple query, answered with `refusal`.
fn push_substitute_query(batch: &mut Batch, refusal: Refusal) {
    if let Some((bytes, pending)) = substitute_query(refusal) {
        batch.bytes.extend_from_slice(&bytes);
        batch.pending.push(pending);
    }
}

/// Stages [`REFUSED_SQL`] as a `Parse`, answered with `refusal`.
fn push_substitute_parse(batch: &mut Batch, refusal: Refusal) {
    if let Some((bytes, pending)) = substitute_parse(refusal) {
        batch.bytes.extend_from_slice(&bytes);
        batch.pending.push(pending);
    }
}

/// [`REFUSED_SQL`] as a simple query, and what its answer becomes.
fn substitute_query(refusal: Refusal) -> Option<(BytesMut, Pending)> {
    let mut substitute = BytesMut::new();
    frontend::query(REFUSED_SQL, &mut substitute).ok()?;
    let pending = Pending::Query {
        decision: Arc::new(Decision::refusal("", refusal.message.clone())),
        index: 0,
        result: ResultState::empty(),
        failed: false,
        refusal: Some(Box::new(refusal)),
    };
    Some((substitute, pending))
}

/// [`REFUSED_SQL`] as a `Parse`, and what its answer becomes.
fn substitute_parse(refusal: Refusal) -> Option<(BytesMut, Pending)> {
    let mut substitute = BytesMut::new();
    frontend::parse("", REFUSED_SQL, std::iter::empty(), &mut substitute).ok()?;
    Some((substitute, Pending::Refused(refusal)))
}

/// Keeps a result row, as the client got it, in the result record of the
/// statement being answered, up to `limit` rows: text values as they are
/// (lossy UTF-8), values that are not text (binary format) as `\x` and hex.
fn keep_row<'a>(open: &mut VecDeque<ResultRecord>, limit: usize, values: impl Iterator<Item = Option<&'a [u8]>>) {
    let Some(r) = open.front_mut() else { return };
    if r.kept_rows.len() >= limit {
        return;
    }
    let row = values
        .map(|v| {
            v.map(|bytes| match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => text.to_string(),
                _ => {
                    let mut hex = String::with_capacity(2 + bytes.len() * 2);
                    hex.push_str("\\x");
                    for b in bytes {
                        let _ = write!(hex, "{b:02x}");
                    }
                    hex
                }
            })
        })
        .collect();
    r.kept_rows.push(row);
}

/// Whether a statement is a `COPY ... FROM STDIN` (data follows from the
/// client).
fn is_copy_from_stdin(facts: &StatementFacts) -> bool {
    facts.command == "COPY" && !facts.written_tables.is_empty()
}

/// The bound parameters as text: text-format values as they are (lossy
/// UTF-8), binary ones as `\x` and hex, `None` for NULL.
pub fn parameters_as_text(formats: &[i16], params: &[Option<Bytes>]) -> Vec<Option<String>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.as_ref().map(|v| {
                if format_at(formats, i) == 1 {
                    let mut s = String::with_capacity(2 + v.len() * 2);
                    s.push_str("\\x");
                    for b in v.iter() {
                        s.push_str(&format!("{b:02x}"));
                    }
                    s
                } else {
                    String::from_utf8_lossy(v).into_owned()
                }
            })
        })
        .collect()
}

/// Counts `cells` values the masks changed: in the result being recorded
/// (if any) and in the metrics.
fn note_masked(open: &mut VecDeque<ResultRecord>, metrics: &Metrics, cells: u64) {
    if let Some(r) = open.front_mut() {
        r.masked += cells;
    }
    metrics.masked(cells);
}

/// A duration as the config writes it (`15m`, `90s`, `1h30m`).
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The refusal message of a decision that is not an allow.
fn refusal(decision: &Decision) -> String {
    let rule = decision.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
    match decision.verdict {
        Verdict::Allow | Verdict::Deny => format!("refused by policy{rule}: {}", decision.reason),
        Verdict::RequireApproval => format!(
            "this statement needs approval{rule}: {}; approvals are not available in this version of the gateway, so \
             it is refused",
            decision.reason
        ),
    }
}

fn unknown_statement(name: &str) -> String {
    format!("prepared statement \"{name}\" does not exist or was refused by policy")
}

fn unknown_portal(name: &str) -> String {
    format!("portal \"{name}\" does not exist or its statement was refused by policy")
}

/// The statement's columns with the formats a `Bind` asked for.
fn with_formats(fields: &[FieldDescription], formats: FormatCodes<'_>) -> Vec<FieldDescription> {
    fields.iter().enumerate().map(|(i, f)| FieldDescription { format: formats.at(i), ..f.clone() }).collect()
}

/// The format of column or parameter `i` under format codes: none (text),
/// one for all, or one per column.
fn format_at(formats: &[i16], i: usize) -> i16 {
    formats.get(codec::format_index(formats.len(), i)).copied().unwrap_or(0)
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

/// A fingerprint's hex digits (at most 16) as a number: what
/// `u64::from_str_radix(text, 16)` gives for them, in about 120
/// instructions where it took about 200 (the registry asks for it twice
/// per statement).
fn fingerprint_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.bytes().try_fold(0u64, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    #[test]
    fn a_fingerprint_reads_as_its_hex_number() {
        for text in ["0", "7", "a", "F", "00ff", "deadBEEF", "0123456789abcdef", "ffffffffffffffff", "8000000000000000"]
        {
            assert_eq!(fingerprint_number(text), u64::from_str_radix(text, 16).ok(), "{text}");
        }
        for text in ["", "g", "12 3", "-1", "+1", "0x10", "1ffffffffffffffff", "é"] {
            assert_eq!(fingerprint_number(text), None, "{text:?}");
        }
    }

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
    fn binary_parameters_are_shown_as_hex() {
        let params = vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::from_static(&[0, 255]))];
        assert_eq!(
            parameters_as_text(&[0, 0, 1], &params),
            vec![Some("42".to_string()), None, Some("\\x00ff".to_string())]
        );
        assert_eq!(parameters_as_text(&[1], &params[..1]), vec![Some("\\x3432".to_string())]);
    }

    #[test]
    fn durations_read_as_in_the_config() {
        assert_eq!(humantime(Duration::from_secs(900)), "15m");
        assert_eq!(humantime(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humantime(Duration::from_millis(200)), "200ms");
    }
}
