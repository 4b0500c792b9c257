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
    /// A statement about to be forwarded or refused.
    Statement(StatementRecord),
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
        StatementRecord { session, sequence, sql, parameters, decision }
    }
}

/// Why records could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// The future a sink returns.
pub type Persisting = Pin<Box<dyn Future<Output = Result<(), RecordError>> + Send>>;

/// Where records go. The session waits for the future before it forwards
/// the batch the records describe.
pub trait RecordSink: Send + Sync + std::fmt::Debug {
    /// Writes `records`; resolves once they are as durable as the sink
    /// promises.
    fn persist(&self, records: Vec<Record>) -> Persisting;

    /// Whether the sink records nothing: the session then builds no records
    /// and does not wait.
    fn is_noop(&self) -> bool {
        false
    }
}

/// A sink that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl RecordSink for NoopSink {
    fn persist(&self, _records: Vec<Record>) -> Persisting {
        Box::pin(std::future::ready(Ok(())))
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
/// let outcome = futures_lite_block_on(sink.persist(Vec::new()));
/// assert_eq!(outcome.unwrap_err().0, "disk full");
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
    fn persist(&self, records: Vec<Record>) -> Persisting {
        let mode = self.mode.lock().map(|m| m.clone()).unwrap_or(TestSinkMode::Fail("poisoned".into()));
        let kept = Arc::clone(&self.records);
        Box::pin(async move {
            let delay = match mode {
                TestSinkMode::Fail(message) => return Err(RecordError(message)),
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
        })
    }
}
