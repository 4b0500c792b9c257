//! The record sink: where a batch's records go before the batch is
//! forwarded.
//!
//! The session core stages every batch (decide, record, forward): when the
//! gateway records, the core hands the batch's [`Record`]s out as a
//! [`Need::Persist`](super::Need::Persist), and forwards the batch only
//! when the driver reports that the [`RecordSink`] took them. A sink that
//! fails turns the batch into a refusal (`58030`), and the session goes on.
//!
//! [`NoopSink`] records nothing and costs nothing: with it the core builds
//! no records and never waits. [`TestSink`] keeps what it is given and can
//! be told to delay or fail, for the tests of both paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy_core::Decision;

/// A record of something a session did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Record {
    /// A session began (written before its first statement).
    SessionStart(Box<SessionStartRecord>),
    /// A statement about to be forwarded or refused.
    Statement(StatementRecord),
    /// What became of a recorded statement.
    Result(ResultRecord),
    /// A session ended.
    SessionEnd(SessionEndRecord),
    /// Something happened to an approval request held for a session.
    Approval(ApprovalRecord),
}

/// An approval event: a request opened, a vote, the outcome, a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApprovalRecord {
    /// The session holding the request.
    pub session: u64,
    /// The request.
    pub request: String,
    /// What happened: `requested`, `vote`, `approved`, `denied`,
    /// `expired`, `withdrawn`, `granted`, `revoked`, `grant_expired`.
    pub event: &'static str,
    /// Who did it (approvers, a denier, a revoker), when someone did.
    pub by: Vec<String>,
    /// Their reason, or why the request was withdrawn.
    pub reason: Option<String>,
    /// The grant concerned, if any.
    pub grant: Option<String>,
}

impl ApprovalRecord {
    /// An event of `request`, held by `session`.
    pub fn new(session: u64, request: impl Into<String>, event: &'static str) -> ApprovalRecord {
        ApprovalRecord { session, request: request.into(), event, by: Vec::new(), reason: None, grant: None }
    }
}

// A session moves each record between its lists a few times per
// statement: at this size the moves are a few vector stores, not calls.
const _: () = assert!(std::mem::size_of::<Record>() <= 128, "Record grew past 128 bytes");

/// Who opened a session, from where.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionStartRecord {
    /// The session.
    pub session: u64,
    /// The identity the token proved.
    pub identity: policy_core::Identity,
    /// `sha256:` and the hex SHA-256 of the token (never the token).
    pub token: String,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// The client's `application_name`.
    pub application_name: String,
    /// The database.
    pub database: String,
    /// The upstream role the session runs as.
    pub user: String,
    /// The digest of the policy in force.
    pub policy: Arc<str>,
    /// The session's starting `search_path`.
    pub search_path: Vec<String>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionEndRecord {
    /// The session.
    pub session: u64,
    /// Why it ended.
    pub reason: String,
    /// How long it lasted.
    pub duration: Duration,
}

/// What became of a recorded statement: what its client was told.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ResultRecord {
    /// The session.
    pub session: u64,
    /// The statement's place in the session.
    pub sequence: u64,
    /// Command tags, in order (several for a simple query of many
    /// statements).
    pub tags: CommandTags,
    /// Rows sent to the client.
    pub rows: u64,
    /// Values the masks changed in them.
    pub masked: u64,
    /// From forwarding to the end of the answer.
    pub duration: Duration,
    /// The error the client got (after the gateway's scrubbing). Boxed:
    /// most results have none, and records are moved between the core's
    /// lists at every statement.
    pub error: Option<Box<ReportedError>>,
    /// Whether the server ran it (false: refused, or skipped after an
    /// earlier error in its block).
    pub ran: bool,
    /// The first result rows, as the client got them (masked), when the
    /// gateway keeps some (`[audit] record_rows`).
    pub kept_rows: Vec<Vec<Option<String>>>,
}

/// The command tags of a result, in order: kept in place while they are
/// short (one tag, most often), so that a result allocates nothing.
///
/// A tag is what the server's `CommandComplete` names, a C string: one
/// pushed with a NUL in it is cut there, as a client reading it would
/// cut it.
///
/// ```
/// use pg_proxy::session::record::CommandTags;
/// let mut tags = CommandTags::default();
/// tags.push("SELECT 1");
/// tags.push("UPDATE 12\0 and more");
/// assert_eq!(tags.iter().collect::<Vec<_>>(), ["SELECT 1", "UPDATE 12"]);
/// let many: CommandTags = ["INSERT 0 1"; 8].into_iter().collect();
/// assert_eq!(many.len(), 8);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CommandTags {
    /// The tags, each followed by a NUL: in `inline` while they fit.
    inline: [u8; INLINE_TAG_BYTES],
    /// How many bytes of `inline` are used.
    used: u8,
    /// The tags, once they no longer fit in place.
    #[allow(clippy::box_collection, reason = "a thin pointer: results are moved between lists at every statement")]
    spilled: Option<Box<String>>,
}

/// Room for tags in place: `SELECT 1`, `INSERT 0 1`, `UPDATE 12345678`,
/// or two short ones, each with its NUL.
const INLINE_TAG_BYTES: usize = 22;

impl CommandTags {
    /// Adds a tag (cut at a NUL, if it holds one).
    pub fn push(&mut self, tag: &str) {
        let tag = tag.get(..tag.bytes().position(|b| b == 0).unwrap_or(tag.len())).unwrap_or_default();
        let used = usize::from(self.used);
        let end = used + tag.len() + 1;
        if self.spilled.is_none() && end <= INLINE_TAG_BYTES {
            if let Some(room) = self.inline.get_mut(used..end) {
                let (text, nul) = room.split_at_mut(tag.len());
                text.copy_from_slice(tag.as_bytes());
                nul.fill(0);
                self.used = end as u8;
                return;
            }
        }
        if self.spilled.is_none() {
            let mut all = String::with_capacity(2 * INLINE_TAG_BYTES);
            all.push_str(self.as_str());
            self.spilled = Some(Box::new(all));
        }
        if let Some(all) = self.spilled.as_mut() {
            all.push_str(tag);
            all.push('\0');
        }
    }

    /// The tags, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        // Every tag ends with a NUL (an ASCII byte: the pieces between
        // them are whole `str`s).
        let mut rest = self.as_str();
        std::iter::from_fn(move || {
            let end = rest.bytes().position(|b| b == 0)?;
            let tag = rest.get(..end)?;
            rest = rest.get(end + 1..)?;
            Some(tag)
        })
    }

    /// How many tags there are.
    pub fn len(&self) -> usize {
        self.as_str().bytes().filter(|&b| b == 0).count()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// The tags, each followed by a NUL.
    fn as_str(&self) -> &str {
        match &self.spilled {
            Some(all) => all,
            // Only whole `&str`s and NULs are copied in.
            None => {
                std::str::from_utf8(self.inline.get(..usize::from(self.used)).unwrap_or_default()).unwrap_or_default()
            }
        }
    }
}

impl<'a> FromIterator<&'a str> for CommandTags {
    fn from_iter<I: IntoIterator<Item = &'a str>>(tags: I) -> CommandTags {
        let mut all = CommandTags::default();
        for tag in tags {
            all.push(tag);
        }
        all
    }
}

impl std::fmt::Debug for CommandTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// An error as the client got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedError {
    /// SQLSTATE.
    pub code: String,
    /// The message.
    pub message: String,
}

/// A statement as decided: a simple query's whole string, or an `Execute`
/// with the text of its prepared statement and its bound parameters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StatementRecord {
    /// The session.
    pub session: u64,
    /// The statement's place in the session, from 1.
    pub sequence: u64,
    /// The SQL text.
    pub sql: Arc<str>,
    /// The bound parameters as text (binary ones as `\x` and hex; `None` is
    /// NULL); empty for a simple query.
    pub parameters: Vec<Option<String>>,
    /// The engine's decision.
    pub decision: Arc<Decision>,
    /// The digest of the policy it was decided under.
    pub policy: Arc<str>,
    /// Whether that policy may not be the one in force when the session
    /// started (a reload since): when false, a sink that records the
    /// session's start (with its policy) need not repeat the digest.
    pub policy_changed: bool,
    /// Whether running it can make a change durable (a `COMMIT`, or
    /// anything but a plain read outside a transaction block): with
    /// `durability = "commit"` its record is synced before it runs.
    /// Worked out only for a sink that asks ([`RecordSink::marks_durable`]);
    /// `false` for the others.
    pub durable: bool,
    /// Observe mode let it run although the verdict is not `allow`.
    pub observed: bool,
    /// The decision is the one (or equal to the one) recorded in full with
    /// this earlier statement of the session (a prepared statement
    /// executed again, a query of the same shape): the record names it
    /// rather than repeating it.
    pub decision_as_in: Option<u64>,
}

impl StatementRecord {
    /// A statement record.
    pub fn new(
        session: u64,
        sequence: u64,
        sql: Arc<str>,
        parameters: Vec<Option<String>>,
        decision: Arc<Decision>,
    ) -> StatementRecord {
        StatementRecord {
            session,
            sequence,
            sql,
            parameters,
            decision,
            policy: Arc::from(""),
            policy_changed: true,
            durable: true,
            observed: false,
            decision_as_in: None,
        }
    }

    /// The same, naming the policy's digest and whether it can make a
    /// change durable.
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<str>, durable: bool) -> StatementRecord {
        self.policy = policy;
        self.durable = durable;
        self
    }
}

/// Why records could not be made as durable as the sink promises.
///
/// ```
/// use pg_proxy::session::record::RecordError;
/// let full = RecordError::unwritten("no space left on the audit log's disk");
/// assert!(!full.written);
/// let eio = RecordError::unsynced("syncing the audit log: Input/output error");
/// assert!(eio.written);
/// assert_eq!(eio.to_string(), "syncing the audit log: Input/output error");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    /// What went wrong.
    pub message: String,
    /// Whether the records are in the log all the same (handed to the OS,
    /// and only their sync failed): their statements' results are
    /// recorded then, as not run.
    pub written: bool,
}

impl RecordError {
    /// The records are not in the log.
    pub fn unwritten(message: impl Into<String>) -> RecordError {
        RecordError { message: message.into(), written: false }
    }

    /// The records were handed to the OS, but could not be synced.
    pub fn unsynced(message: impl Into<String>) -> RecordError {
        RecordError { message: message.into(), written: true }
    }
}

/// What a sink's [`RecordSink::persist`] answers: at once, or a future.
///
/// ```
/// use pg_proxy::session::record::Persisting;
/// let done = Persisting::Done(Ok(()));
/// assert!(matches!(done.now(), Some(Ok(()))));
/// ```
#[must_use = "the batch waits for the records to be persisted"]
pub enum Persisting {
    /// Persisted (or refused) already.
    Done(Result<(), RecordError>),
    /// Resolves once the records are as durable as the sink promises.
    Waiting(Pin<Box<dyn Future<Output = Result<(), RecordError>> + Send>>),
}

impl Persisting {
    /// The outcome, when it is known already (`Done`).
    pub fn now(self) -> Option<Result<(), RecordError>> {
        match self {
            Persisting::Done(outcome) => Some(outcome),
            Persisting::Waiting(_) => None,
        }
    }
}

impl std::fmt::Debug for Persisting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Persisting::Done(outcome) => f.debug_tuple("Done").field(outcome).finish(),
            Persisting::Waiting(_) => f.write_str("Waiting"),
        }
    }
}

impl Future for Persisting {
    type Output = Result<(), RecordError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Persisting::Done(outcome) => std::task::Poll::Ready(std::mem::replace(outcome, Ok(()))),
            Persisting::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// Where records go. The session waits for the answer before it forwards
/// the batch the records describe.
pub trait RecordSink: Send + Sync + std::fmt::Debug {
    /// Writes `records`; answers once they are as durable as the sink
    /// promises.
    ///
    /// `records` are a batch's statements (and approvals), which the
    /// session forwards only once the answer is `Ok`. The session's
    /// completed results not handed over yet may come first, in the same
    /// call, when they were waiting for its next statement (a result is
    /// held a few milliseconds for it). Nothing waits for those: when the
    /// write fails, they are still the sink's to write (the session
    /// refuses the statements and does not hand the results over again).
    fn persist(&self, records: &[Record]) -> Persisting;

    /// Writes `records` without waiting (results, session start and end):
    /// they follow, in order, what was persisted before them.
    fn log(&self, records: &[Record]) {
        let _ = records;
    }

    /// Whether the sink records nothing: the session then builds no records
    /// and does not wait.
    fn is_noop(&self) -> bool {
        false
    }

    /// Whether the sink tells statements that can make a change durable
    /// from the others ([`StatementRecord::durable`]): when it does not,
    /// the session does not work that out for every statement.
    fn marks_durable(&self) -> bool {
        true
    }
}

/// A sink that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl RecordSink for NoopSink {
    fn persist(&self, _records: &[Record]) -> Persisting {
        Persisting::Done(Ok(()))
    }

    fn is_noop(&self) -> bool {
        true
    }
}

/// How a [`TestSink`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSinkMode {
    /// Keep the records and acknowledge at once.
    Accept,
    /// Keep them and acknowledge after this long.
    Delay(Duration),
    /// Keep nothing and fail with this message.
    Fail(String),
}

/// A sink for tests: keeps the records it accepts, and can be told to
/// delay or fail.
///
/// ```
/// use pg_proxy::session::record::{RecordSink, TestSink, TestSinkMode};
/// let sink = TestSink::new(TestSinkMode::Fail("disk full".into()));
/// let outcome = futures_lite_block_on(sink.persist(&[]));
/// assert_eq!(outcome.unwrap_err().message, "disk full");
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestSink {
    mode: Arc<Mutex<TestSinkMode>>,
    records: Arc<Mutex<Vec<Record>>>,
}

impl TestSink {
    /// A sink answering as `mode` says.
    pub fn new(mode: TestSinkMode) -> TestSink {
        TestSink { mode: Arc::new(Mutex::new(mode)), records: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: TestSinkMode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }

    /// The records accepted so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl RecordSink for TestSink {
    fn log(&self, records: &[Record]) {
        if let Ok(mut k) = self.records.lock() {
            k.extend_from_slice(records);
        }
    }

    fn persist(&self, records: &[Record]) -> Persisting {
        let records = records.to_vec();
        let mode = self.mode.lock().map(|m| m.clone()).unwrap_or(TestSinkMode::Fail("poisoned".into()));
        let kept = Arc::clone(&self.records);
        Persisting::Waiting(Box::pin(async move {
            let delay = match mode {
                TestSinkMode::Fail(message) => return Err(RecordError::unwritten(message)),
                TestSinkMode::Accept => None,
                TestSinkMode::Delay(d) => Some(d),
            };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if let Ok(mut k) = kept.lock() {
                k.extend(records);
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::CommandTags;

    #[test]
    fn command_tags_read_back_in_order_in_place_and_past_it() {
        let tags = ["SELECT 1", "", "INSERT 0 1", "UPDATE 12345678", "COPY 7", "BEGIN", "COMMIT"];
        for n in 0..=tags.len() {
            let mut kept = CommandTags::default();
            for tag in &tags[..n] {
                kept.push(tag);
            }
            assert_eq!(kept.iter().collect::<Vec<_>>(), &tags[..n], "{n} tags");
            assert_eq!(kept.len(), n);
            assert_eq!(kept.is_empty(), n == 0);
            assert_eq!(format!("{kept:?}"), format!("{:?}", &tags[..n]));
        }
        // The first tag alone fills the room in place, exactly.
        let exact = "X".repeat(21);
        let mut kept = CommandTags::default();
        kept.push(&exact);
        assert!(kept.spilled.is_none());
        kept.push("Y");
        assert!(kept.spilled.is_some());
        assert_eq!(kept.iter().collect::<Vec<_>>(), [exact.as_str(), "Y"]);
    }
}
