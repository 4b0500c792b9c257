//! The audit log behind the sessions' record sink.
//!
//! ```text
//!  session ─┐ persist(records): writer's lock free? serialise them into its
//!  session ─┤   buffer after everything queued, and hand all to the OS in one
//!  session ─┘   copy; lock taken? queue them (a ticket), wait for the lock, and
//!             find them written by the holder, or write them; then, if they
//!             must be durable, wait ─────────────────────────────────────────┐
//!             log(records): the same without a wait, left in the buffer     │
//!                           for the next write                              ▼
//!             sync thread: takes every waiter, one fdatasync, answers them all
//!                          (group commit); what is left unwritten is written
//!                          within 20 ms; a checkpoint every interval; a sync
//!                          of its own after an eighth of a segment; what a
//!                          sync made durable leaves the page cache
//! ```
//!
//! Sessions hand their statements' records to the OS themselves, before
//! they forward the statements. A session that finds the writer's
//! (asynchronous) lock free serialises its records straight into the
//! writer's buffer, after the records other sessions queued meanwhile, and
//! writes them all in one copy into the mapped segment (the page cache:
//! see [`portcullis_audit::writer`]). A session that finds the lock taken
//! queues its records and waits for the lock: the holder, or whoever had
//! it before, most often wrote them already. Records nothing waits for
//! (results, session starts and ends) take the same path and are left in
//! the buffer for the next write. When the batch must also be durable
//! (`durability = "commit"` and a statement that can make a change
//! durable, or `"every"`), the session waits for the sync thread: it takes
//! every session waiting at that moment (after up to `commit_delay` for
//! more to join), syncs the segment once, and answers them all. A failed
//! write refuses the batches it carried ([`RecordError`]); a failed sync
//! refuses the batches that waited for it, and the next write begins a new
//! segment.
//!
//! Records are serialised by the sessions (JSON objects starting with
//! their `"type"`); the writer puts the number, the previous hash and the
//! time in front. A session hands its completed results over with its next
//! statement's records, and they are written inside that statement's record
//! (`"results"`: one record, one leaf hash, instead of two or more);
//! [`RecordTail`] reads them back as records of their own. The schema:
//! `docs/audit.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use portcullis_audit::body::Body;
use portcullis_audit::note::NoteSigner;
use portcullis_audit::writer::{WriteError, Writer, WriterOptions};
use serde::Serialize;

use crate::config::{AuditSettings, Durability};
use crate::metrics::Metrics;
use crate::session::record::{Persisting, Record, RecordError, RecordSink, ResultRecord};

/// Values of parameters longer than this are cut in records.
const MAX_PARAMETER_BYTES: usize = 1024;

/// How long records that nothing waits for (results, session starts and
/// ends) may stay appended and unwritten when no batch writes them first.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

type Ack = tokio::sync::oneshot::Sender<Result<(), RecordError>>;

/// Counters of the log, for the line it logs when closed and for
/// benchmarks.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records written (a statement's record with the results it carries
    /// counts once). Counted by the writer and published here by the sync
    /// thread: at its flush (every 20 ms while records arrive and no one
    /// waits for a sync), before each sync, and when the log is closed.
    pub records: AtomicU64,
    /// Writes of record batches (each hands many records to the OS),
    /// published as `records` is.
    pub writes: AtomicU64,
    /// `fdatasync` calls for statements waiting on one.
    pub syncs: AtomicU64,
    /// Writes and syncs that failed (each refuses the batches it carried
    /// or that waited for it).
    pub failures: AtomicU64,
    /// Batches whose session found the writer's lock taken and waited for
    /// it.
    pub lock_waits: AtomicU64,
    /// Syncs the sync thread made on its own because much was written
    /// since the last sync (an eighth of a segment, at most 8 MiB).
    pub writebacks: AtomicU64,
}

/// How much may be written to a segment and not synced before the sync
/// thread syncs it on its own: an eighth of a segment, at most 8 MiB. A
/// segment is synced when it ends, by the write that fills it, holding
/// the writer's lock; this leaves that sync little to do, whatever the
/// durability (with `"none"`, a full segment's worth took 140–240 ms
/// here, and every session waited for it).
fn writeback_bytes(segment_bytes: u64) -> u64 {
    (segment_bytes / 8).clamp(4096, 8 << 20)
}

/// What the sessions and the sync thread share.
#[derive(Debug)]
struct Shared {
    /// `None` once the log is closed. An asynchronous lock: a session that
    /// finds it taken waits without holding its thread, and often finds
    /// its records written by the session before it.
    writer: tokio::sync::Mutex<Option<Writing>>,
    /// Records queued for the writer, in the order of their tickets.
    queue: Mutex<Queue>,
    /// How many records the queue holds (set under its lock): a write
    /// that finds none leaves the queue's lock alone.
    queued: std::sync::atomic::AtomicUsize,
    /// Records taken from the queue and written, or failed: a session's
    /// records are done when this reaches its ticket.
    processed: AtomicU64,
    /// Ticket ranges whose write failed (recent ones), with why.
    failures: Mutex<std::collections::VecDeque<(u64, u64, RecordError)>>,
    /// The last ticket of the latest failed range (0: none): a later
    /// ticket needs no look at `failures`.
    failed_through: AtomicU64,
    board: Mutex<Board>,
    wake: Condvar,
    stats: Arc<AuditStats>,
    failing: Arc<AtomicBool>,
    /// Sessions recorded now (started and not ended).
    live: std::sync::atomic::AtomicUsize,
    /// How long a sync may wait for more sessions to join it.
    commit_delay: Duration,
    /// Bytes written to a segment since its last sync that make the sync
    /// thread sync it ([`writeback_bytes`]).
    writeback_bytes: u64,
    /// Syncs still to fail on purpose ([`AuditLog::fail_next_syncs`]).
    failing_syncs: std::sync::atomic::AtomicU32,
    /// Whether syncs wait until released ([`AuditLog::hold_syncs`]).
    holding_syncs: AtomicBool,
    /// Where write and sync times and failures are counted.
    metrics: Arc<Metrics>,
    /// The signed note of the last checkpoint known synced (what may be
    /// published elsewhere: a checkpoint the disk may still lose would
    /// later read as a log cut and rewritten).
    durable_checkpoint: Mutex<Option<String>>,
}

/// The writer's queue: records numbered as they are queued.
#[derive(Debug, Default)]
struct Queue {
    /// Record bodies waiting for the writer, one after the other.
    pending: Vec<u8>,
    /// Where each body in `pending` ends.
    ends: Vec<usize>,
    /// Whether each body's record is one nothing waits for (a result, a
    /// session's start or end): kept for the next write when this one
    /// fails.
    unwaited: Vec<bool>,
    /// Records queued so far.
    tickets: u64,
    /// Set once the log is closed.
    closed: bool,
}

/// Failed ranges kept for the sessions that wait on them.
const FAILURES_KEPT: usize = 256;

/// The most records nothing waits for that the log keeps, unwritten,
/// while it cannot be written (beyond them, they are lost, and the log
/// says how many).
const UNWRITTEN_KEPT: u64 = 16 * 1024;

/// The writer, and the buffers it swaps with the queue's.
#[derive(Debug)]
struct Writing {
    writer: Writer,
    taken: Vec<u8>,
    taken_ends: Vec<usize>,
    taken_unwaited: Vec<bool>,
    /// The lines appended and not handed to the OS yet, queued records'
    /// and the writing sessions' own: fewer than the records when results
    /// went inside a statement's record.
    lines: u64,
    /// Records nothing waits for that a failed write took back, appended
    /// again (no tickets: nobody asks how they went), before the lines
    /// `lines` counts.
    again: u64,
    /// Records written and writes made, counted here (under the writer's
    /// lock, in memory the writing thread has in its cache) and published
    /// to [`AuditStats`] by [`Writing::publish`]: no shared counter moves
    /// between the cores on every write.
    records: u64,
    writes: u64,
}

impl Writing {
    /// Publishes the counts to `stats` (at each flush of the sync thread,
    /// and when the log is closed).
    fn publish(&self, stats: &AuditStats) {
        stats.records.store(self.records, Ordering::Relaxed);
        stats.writes.store(self.writes, Ordering::Relaxed);
    }
}

/// When [`Shared::write`] hands what it appended to the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hand {
    /// At once.
    Now,
    /// With the next write, unless it took queued records (results and
    /// session records: nothing waits for them, and the next batch, or
    /// the flush interval, writes them).
    Later,
}

/// Sessions waiting for a sync.
#[derive(Debug, Default)]
struct Board {
    waiters: Vec<Ack>,
    closing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Queues records for the writer: their bodies one after the other,
    /// and where each ends; returns their last ticket.
    ///
    /// When nothing is queued (most often: whoever queued last wrote it
    /// at once), the buffers are swapped rather than copied, and `bodies`
    /// and `ends` come back empty with the queue's memory.
    fn queue(
        &self,
        bodies: &mut Vec<u8>,
        ends: &mut Vec<usize>,
        records: &[Record],
        waited: bool,
    ) -> Result<u64, RecordError> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Err(RecordError::unwritten("the audit log is closed"));
        }
        let count = ends.len() as u64;
        queue.unwaited.extend(records.iter().map(|r| !waited || !matches!(r, Record::Statement(_))));
        if queue.ends.is_empty() {
            let queue = &mut *queue;
            queue.pending.clear();
            std::mem::swap(&mut queue.pending, bodies);
            std::mem::swap(&mut queue.ends, ends);
        } else {
            let base = queue.pending.len();
            queue.pending.extend_from_slice(bodies);
            queue.ends.extend(ends.iter().map(|end| base + end));
        }
        queue.tickets += count;
        self.queued.store(queue.ends.len(), Ordering::Release);
        Ok(queue.tickets)
    }

    /// Whether the records up to `ticket` were written: `None` while they
    /// are not processed yet.
    fn outcome(&self, ticket: u64) -> Option<Result<(), RecordError>> {
        if self.processed.load(Ordering::Acquire) < ticket {
            return None;
        }
        if ticket > self.failed_through.load(Ordering::Acquire) {
            return Some(Ok(()));
        }
        let failures = lock(&self.failures);
        match failures.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&ticket)) {
            Some((_, _, error)) => Some(Err(error.clone())),
            None => Some(Ok(())),
        }
    }

    /// How the write of the records up to `ticket` went, once it was done.
    fn written(&self, ticket: u64) -> Result<(), RecordError> {
        self.outcome(ticket).unwrap_or_else(|| Err(RecordError::unwritten("the audit log is closed")))
    }

    /// Waits for the sync thread's next sync of what is written.
    async fn synced(self: Arc<Self>) -> Result<(), RecordError> {
        let (ack, answer) = tokio::sync::oneshot::channel();
        {
            let mut board = lock(&self.board);
            if board.closing {
                return Err(RecordError::unwritten("the audit log is closed"));
            }
            board.waiters.push(ack);
        }
        self.wake.notify_one();
        answer.await.unwrap_or_else(|_| Err(RecordError::unsynced("the audit log's sync thread stopped")))
    }

    /// Writes what is queued (from a thread of its own: it blocks), and
    /// returns where the log's end is then ([`Writer::position`]).
    /// While the log cannot be written, it does not try: what is queued
    /// or buffered then goes with the next statement's write, which
    /// tries.
    fn flush(&self) -> Option<(u64, u64)> {
        let mut guard = self.writer.blocking_lock();
        if !self.failing.load(Ordering::Relaxed) {
            let _ = self.write(&mut guard, None, Hand::Now);
        }
        let writing = guard.as_ref()?;
        writing.publish(&self.stats);
        Some(writing.writer.position())
    }

    /// Writes what is queued or buffered, then a signed checkpoint of the
    /// log (from the sync thread: it blocks), unsynced: returns whether
    /// one was written. Also while the log cannot be written (the flush
    /// does not try then): a write that fails keeps what it must not
    /// lose, and one that works writes what was kept, with no statement
    /// needed to try.
    fn checkpoint(&self) -> bool {
        let mut guard = self.writer.blocking_lock();
        // Through `write`, which keeps what a failure must not lose; after
        // it the writer's buffer is empty, and the checkpoint goes alone.
        if self.write(&mut guard, None, Hand::Now).is_err() {
            return false;
        }
        let Some(writing) = guard.as_mut() else { return false };
        if !writing.writer.needs_checkpoint() {
            return false;
        }
        match writing.writer.checkpoint_unsynced() {
            Ok(()) => true,
            Err(e) => {
                self.failed(format!("writing a checkpoint: {e}"));
                false
            }
        }
    }

    /// Appends every queued record, then `own`'s (serialised in place;
    /// they take no tickets), and hands them to the OS
    /// at once, or, with [`Hand::Later`] and nothing queued, leaves them
    /// to the next write. The sessions whose records were queued learn how
    /// it went through [`Shared::outcome`]; the caller, from the answer.
    ///
    /// The records are appended in memory of this thread's
    /// ([`Writer::exchange_buffer`]): a session on another runtime thread
    /// wrote the writer's own buffer last, and its lines would have to
    /// move from that core's cache to this one's.
    fn write(
        &self,
        guard: &mut Option<Writing>,
        own: Option<(&[Record], &Bodies)>,
        hand: Hand,
    ) -> Result<(), RecordError> {
        LENT.with(|lent| {
            let mut lent = lent.try_borrow_mut().ok();
            if let (Some(writing), Some(memory)) = (guard.as_mut(), lent.as_deref_mut()) {
                writing.writer.exchange_buffer(memory);
            }
            let outcome = self.write_batch(guard, own, hand);
            // Back once written (the buffer empty); left with the writer
            // otherwise, for the write that hands the buffer over.
            if let (Some(writing), Some(memory)) = (guard.as_mut(), lent.as_deref_mut()) {
                writing.writer.exchange_buffer(memory);
                if memory.capacity() > LENT_KEPT {
                    *memory = Vec::new();
                }
            }
            outcome
        })
    }

    /// [`Shared::write`], in whatever memory the writer's buffer has.
    fn write_batch(
        &self,
        guard: &mut Option<Writing>,
        own: Option<(&[Record], &Bodies)>,
        hand: Hand,
    ) -> Result<(), RecordError> {
        let Some(writing) = guard.as_mut() else { return Err(RecordError::unwritten("the audit log is closed")) };
        let own_count = own.map_or(0, |(records, _)| records.len() as u64);
        // Only queued records have tickets: the caller learns how its own
        // went from the answer. A session that queued records after the
        // look below waits for the writer's lock, and then takes them
        // itself (or the sync thread's flush does).
        if self.queued.load(Ordering::Acquire) > 0 {
            let mut queue = lock(&self.queue);
            let queue = &mut *queue;
            std::mem::swap(&mut queue.pending, &mut writing.taken);
            std::mem::swap(&mut queue.ends, &mut writing.taken_ends);
            std::mem::swap(&mut queue.unwaited, &mut writing.taken_unwaited);
            self.queued.store(0, Ordering::Release);
        }
        let taken = writing.taken_ends.len() as u64;
        if taken == 0 && own_count == 0 && !writing.writer.has_buffered() {
            return Ok(());
        }
        // The lines the buffer holds before the queued records: records
        // nothing waits for (kept from a failed write, and left by
        // `Hand::Later`).
        let before_taken = writing.again + writing.lines;
        let mut own_lines = 0;
        let now = SystemTime::now();
        let mut appended = Ok(());
        let mut start = 0;
        for &end in &writing.taken_ends {
            let body = writing.taken.get(start..end).unwrap_or_default();
            start = end;
            // Every body was written by serde_json or a `Body`: one line of
            // UTF-8 JSON.
            appended = writing.writer.append_unchecked(body, now).map(|_| ());
            if appended.is_err() {
                break;
            }
        }
        writing.taken.clear();
        writing.taken_ends.clear();
        let taken_unwaited = std::mem::take(&mut writing.taken_unwaited);
        if let (Ok(()), Some((records, bodies))) = (&appended, own) {
            // A session's completed results go inside its statement's
            // record when they come with it: one record, not three.
            let mut rest = records;
            while !rest.is_empty() {
                let (results, after) = rest.split_at(carried(rest));
                let Some((record, after)) = after.split_first() else { break };
                appended = writing
                    .writer
                    .append_with(now, |buf| bodies.write(record, results, buf, Form::AfterType))
                    .map(|_| ());
                if appended.is_err() {
                    break;
                }
                own_lines += 1;
                rest = after;
            }
        }
        writing.lines += taken + own_lines;
        if appended.is_ok() && hand == Hand::Later && taken == 0 {
            return Ok(());
        }
        // Queued records are handed over in the call that took them: those
        // of this call are all there are.
        let count = taken;
        let lines = std::mem::take(&mut writing.lines);
        let again = std::mem::take(&mut writing.again);
        let written = match appended {
            Ok(()) => {
                writing.writes += 1;
                let written = writing.writer.write();
                // Timed from the clock read the records' time came from
                // (one read fewer per write): appending and handing over.
                // A wall clock stepped back meanwhile leaves it untimed.
                if let Ok(took) = SystemTime::now().duration_since(now) {
                    self.metrics.audit_write(took);
                }
                if written.as_ref().is_err_and(|e| !matches!(e, WriteError::Rotation(_))) {
                    // Records nothing waits for are not lost with the
                    // batch: they go with the next write that works.
                    // Those before this call's own are taken from the
                    // lines taken back; this call's own (written as one
                    // record with the statement they came with) again
                    // from `own`.
                    let unwaited = |i: usize| match (i as u64).checked_sub(before_taken) {
                        // Left by `Hand::Later`, or kept from a failure.
                        None => true,
                        Some(q) => taken_unwaited.get(q as usize).copied().unwrap_or(false),
                    };
                    let mut kept = 0;
                    let mut lost = 0;
                    let keep = |i| {
                        let keep = unwaited(i) && kept < UNWRITTEN_KEPT;
                        kept += u64::from(keep);
                        lost += u64::from(unwaited(i) && !keep);
                        keep
                    };
                    let mut again = writing.writer.append_again(keep, now).unwrap_or(0);
                    if let Some((records, bodies)) = own {
                        let unwaited =
                            records.iter().filter(|r| hand == Hand::Later || !matches!(r, Record::Statement(_)));
                        for record in unwaited {
                            if again >= UNWRITTEN_KEPT {
                                lost += 1;
                                continue;
                            }
                            let appended =
                                writing.writer.append_with(now, |buf| bodies.write(record, &[], buf, Form::AfterType));
                            again += u64::from(appended.is_ok());
                        }
                    }
                    writing.again = again;
                    if lost > 0 {
                        tracing::warn!(lost, "audit log: records of results and session starts and ends lost while the log cannot be written");
                    }
                }
                written
            }
            Err(e) => {
                // The batch is refused whole: none of it is written later.
                writing.writer.discard_buffered();
                Err(e)
            }
        };
        writing.taken_unwaited = taken_unwaited;
        writing.taken_unwaited.clear();
        let before = if count > 0 { self.processed.load(Ordering::Acquire) } else { 0 };
        let outcome = match written {
            Ok(()) => {
                writing.records += lines + again;
                self.recovered();
                Ok(())
            }
            Err(e) => {
                // After a failed rotation the records are in the log, not
                // synced; otherwise none of them is.
                let written = matches!(e, WriteError::Rotation(_));
                let error = RecordError { message: self.failed(e.to_string()), written };
                if count > 0 {
                    let mut failures = lock(&self.failures);
                    failures.push_back((before + 1, before + count, error.clone()));
                    self.failed_through.store(before + count, Ordering::Release);
                    while failures.len() > FAILURES_KEPT {
                        failures.pop_front();
                    }
                }
                Err(error)
            }
        };
        // Only when queued records were taken: a store would take the
        // line from the cores that look at it.
        if count > 0 {
            self.processed.store(before + count, Ordering::Release);
        }
        outcome
    }

    /// Notes a failure (the log says it once until writing works again).
    fn failed(&self, message: String) -> String {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.audit_failure();
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!("audit log: {message}; statements are refused until it can be written again");
        }
        message
    }

    fn recovered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!("audit log: writing again");
        }
    }
}

/// The gateway's audit log: a [`RecordSink`] that writes in the
/// session's own task and syncs on a thread of its own.
#[derive(Debug)]
pub struct AuditLog {
    shared: Arc<Shared>,
    durability: Durability,
    bodies: Bodies,
    /// The log's counters.
    pub stats: Arc<AuditStats>,
    /// Whether the last write or sync failed (for readiness).
    pub failing: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The signing key.
    #[error("[audit] signing_key_file {path}: {message}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The log directory.
    #[error("[audit] {0}")]
    Open(#[from] portcullis_audit::writer::WriteError),
    /// The thread.
    #[error("[audit] starting the sync thread: {0}")]
    Thread(std::io::Error),
}

/// Every record of the log in `dir`, in order, as JSON (headers and
/// checkpoints left out; the log is not verified here).
pub fn read_records(dir: &std::path::Path) -> Result<Vec<serde_json::Value>, String> {
    RecordTail::new(dir).read_new()
}

/// Reads a log's records as they are written: each
/// [`RecordTail::read_new`] returns the records added since the one
/// before, reading only what is new (a segment being written ends in the
/// zeros reserved for the next records, and its last line may not be
/// whole yet: it is read when it is).
///
/// ```no_run
/// let mut tail = pg_proxy::audit::RecordTail::new(std::path::Path::new("/var/lib/portcullis/audit"));
/// loop {
///     for record in tail.read_new()? {
///         println!("{record}");
///     }
///     std::thread::sleep(std::time::Duration::from_millis(500));
/// }
/// # Ok::<(), String>(())
/// ```
#[derive(Debug)]
pub struct RecordTail {
    dir: std::path::PathBuf,
    /// The segment read last, and how far (whole lines).
    at: Option<(u64, u64)>,
}

impl RecordTail {
    /// A reader from the start of the log in `dir`.
    pub fn new(dir: &std::path::Path) -> RecordTail {
        RecordTail { dir: dir.to_path_buf(), at: None }
    }

    /// The records written since the last call (all of them, the first
    /// time).
    pub fn read_new(&mut self) -> Result<Vec<serde_json::Value>, String> {
        use portcullis_audit::segment::Line;
        use std::io::{Read, Seek};
        let dir = &self.dir;
        let segments = portcullis_audit::writer::list_segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if segments.is_empty() {
            return Err(format!("{}: no audit log segments there", dir.display()));
        }
        let mut out = Vec::new();
        for (index, path) in segments {
            let from = match self.at {
                Some((last, _)) if index < last => continue,
                Some((last, offset)) if index == last => offset,
                _ => 0,
            };
            let mut bytes = Vec::new();
            let read = std::fs::File::open(&path).and_then(|mut f| {
                f.seek(std::io::SeekFrom::Start(from))?;
                f.read_to_end(&mut bytes)
            });
            read.map_err(|e| format!("{}: {e}", path.display()))?;
            let content = portcullis_audit::segment::content(&bytes);
            let whole = content.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for line in content.get(..whole).unwrap_or_default().split(|&b| b == b'\n') {
                if matches!(Line::classify(line), Ok(Line::Record { .. })) {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                        expand(v, &mut out);
                    }
                }
            }
            self.at = Some((index, from + whole as u64));
        }
        Ok(out)
    }
}

/// Adds a record to `out` as readers take it: the results a statement
/// record carries (its session's earlier results, completed when it was
/// recorded) come first, each as a `result` record of their own with the
/// carrying record's `seq` and `time`; the statement follows without them.
fn expand(mut record: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    use serde_json::Value;
    let carried = match record.as_object_mut() {
        Some(fields) if fields.get("type").and_then(Value::as_str) == Some("statement") => fields.remove("results"),
        _ => None,
    };
    if let Some(Value::Array(results)) = carried {
        for result in results {
            let Value::Object(fields) = result else { continue };
            let mut expanded = serde_json::Map::new();
            for key in ["v", "seq", "time"] {
                if let Some(value) = record.get(key) {
                    expanded.insert(key.to_string(), value.clone());
                }
            }
            expanded.insert("type".to_string(), Value::from("result"));
            expanded.insert("session".to_string(), record.get("session").cloned().unwrap_or(Value::Null));
            expanded.extend(fields);
            out.push(Value::Object(expanded));
        }
    }
    out.push(record);
}

/// The file names [`keygen`] writes in its directory.
pub const KEY_FILE: &str = "audit-key.pem";
/// The public key's file name (the C2SP verifier key, one line).
pub const PUBLIC_KEY_FILE: &str = "audit-key.pub";

/// Writes a new checkpoint signing key into `dir` (created when missing):
/// `audit-key.pem` (PKCS#8, mode 0600) and `audit-key.pub` (the verifier
/// key, `origin+keyhash+key`). Existing files are not overwritten.
/// Returns both paths.
pub fn keygen(dir: &std::path::Path, origin: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    use std::io::Write;
    let signer = NoteSigner::generate(origin).map_err(|e| e.to_string())?;
    let pem = signer.to_pkcs8_pem().map_err(|e| e.to_string())?;
    let (key, public) = (dir.join(KEY_FILE), dir.join(PUBLIC_KEY_FILE));
    for path in [&key, &public] {
        if path.exists() {
            return Err(format!("{} exists; not overwritten", path.display()));
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::fs::create_dir_all(dir)
        .and_then(|()| options.open(&key)?.write_all(pem.as_bytes()))
        .and_then(|()| std::fs::write(&public, format!("{}\n", signer.verifier().to_vkey())))
        .map_err(|e| format!("writing into {}: {e}", dir.display()))?;
    Ok((key, public))
}

/// Reads an Ed25519 signing key (PKCS#8 PEM) for `origin`.
pub fn load_signer(path: &std::path::Path, origin: &str) -> Result<NoteSigner, AuditError> {
    let key = |message: String| AuditError::Key { path: path.to_path_buf(), message };
    let pem = std::fs::read_to_string(path).map_err(|e| key(e.to_string()))?;
    NoteSigner::from_pkcs8_pem(origin, &pem).map_err(|e| key(e.to_string()))
}

impl AuditLog {
    /// Opens (or continues) the log the settings name and starts its sync
    /// thread.
    pub fn open(settings: &AuditSettings) -> Result<AuditLog, AuditError> {
        AuditLog::open_with_metrics(settings, Arc::new(Metrics::new()))
    }

    /// [`AuditLog::open`], timing its writes and syncs into `metrics`.
    pub fn open_with_metrics(settings: &AuditSettings, metrics: Arc<Metrics>) -> Result<AuditLog, AuditError> {
        let signer = load_signer(&settings.signing_key_file, &settings.origin)?;
        let mut options = WriterOptions::new(&settings.dir, signer);
        options.segment_bytes = settings.segment_bytes;
        options.keep = settings.keep;
        let writer = Writer::open(options)?;
        let stats = Arc::new(AuditStats::default());
        let failing = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Some(Writing {
                writer,
                taken: Vec::new(),
                taken_ends: Vec::new(),
                taken_unwaited: Vec::new(),
                lines: 0,
                again: 0,
                records: 0,
                writes: 0,
            })),
            queue: Mutex::new(Queue::default()),
            queued: std::sync::atomic::AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            failures: Mutex::new(std::collections::VecDeque::new()),
            failed_through: AtomicU64::new(0),
            board: Mutex::new(Board::default()),
            wake: Condvar::new(),
            stats: Arc::clone(&stats),
            failing: Arc::clone(&failing),
            live: std::sync::atomic::AtomicUsize::new(0),
            commit_delay: settings.commit_delay,
            writeback_bytes: writeback_bytes(settings.segment_bytes),
            failing_syncs: std::sync::atomic::AtomicU32::new(0),
            holding_syncs: AtomicBool::new(false),
            metrics,
            durable_checkpoint: Mutex::new(None),
        });
        let interval = settings.checkpoint_interval;
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || sync_loop(&shared, interval))
                .map_err(AuditError::Thread)?
        };
        let boot = {
            use rand::RngCore;
            format!("{:08x}", rand::thread_rng().next_u32())
        };
        Ok(AuditLog {
            shared,
            durability: settings.durability,
            bodies: Bodies { record_parameters: settings.record_parameters, boot, replica: settings.replica.clone() },
            stats,
            failing,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The signed note (C2SP signed-note text) of the newest checkpoint
    /// known to be synced to disk, if one was written since the log
    /// opened: what replicas publish so that a log cut and rewritten
    /// later is caught (`pg-proxy audit verify --checkpoint`).
    pub fn durable_checkpoint(&self) -> Option<String> {
        lock(&self.shared.durable_checkpoint).clone()
    }

    /// Whether the log cannot be written now (the last write or sync
    /// failed, and none has worked since): statements that need a record
    /// are refused meanwhile.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Makes the next `n` syncs of the log fail as an I/O error would, for
    /// tests of what a failing disk does to sessions (the file is not
    /// synced then, and the next write begins a new segment, as after a
    /// real failure).
    #[doc(hidden)]
    pub fn fail_next_syncs(&self, n: u32) {
        self.shared.failing_syncs.store(n, Ordering::Relaxed);
    }

    /// Makes the sync thread's syncs wait while `hold` (until
    /// `hold_syncs(false)` or [`AuditLog::close`]), as a slow disk would,
    /// for tests of what a session waiting for a sync does to the others.
    #[doc(hidden)]
    pub fn hold_syncs(&self, hold: bool) {
        self.shared.holding_syncs.store(hold, Ordering::Relaxed);
    }

    /// Answers whoever waits for a sync, writes a closing checkpoint, and
    /// stops the sync thread. Records sent after this are refused.
    pub fn close(&self) {
        lock(&self.shared.board).closing = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        // What was queued is written; nothing more is taken. (Waiting for
        // the lock by polling: this may be called from a task.)
        lock(&self.shared.queue).closed = true;
        let mut guard = loop {
            match self.shared.writer.try_lock() {
                Ok(g) => break g,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let _ = self.shared.write(&mut guard, None, Hand::Now);
        let Some(writing) = guard.take() else { return };
        drop(guard);
        let stats = &self.shared.stats;
        writing.publish(stats);
        match writing.writer.close() {
            Ok(()) => tracing::info!(
                records = stats.records.load(Ordering::Relaxed),
                writes = stats.writes.load(Ordering::Relaxed),
                syncs = stats.syncs.load(Ordering::Relaxed),
                lock_waits = stats.lock_waits.load(Ordering::Relaxed),
                writebacks = stats.writebacks.load(Ordering::Relaxed),
                "audit log closed"
            ),
            Err(e) => tracing::error!("audit log: closing: {e}"),
        }
    }

    /// Serialises records into this thread's scratch buffer and queues
    /// them; returns their last ticket.
    fn queue(&self, records: &[Record], waited: bool) -> Result<u64, RecordError> {
        SCRATCH.with(|scratch| {
            let (out, ends) = &mut *scratch.borrow_mut();
            out.clear();
            ends.clear();
            for r in records {
                self.bodies.write(r, &[], out, Form::Whole);
                ends.push(out.len());
            }
            let queued = self.shared.queue(out, ends, records, waited);
            out.clear();
            ends.clear();
            // A rare large batch does not keep its memory.
            if out.capacity() > SCRATCH_KEPT {
                *out = Vec::new();
            }
            queued
        })
    }
}

/// How records are written as JSON bodies.
#[derive(Debug)]
struct Bodies {
    record_parameters: bool,
    /// Prefix of session ids: this process's own, so that ids never repeat
    /// across restarts and replicas.
    boot: String,
    replica: String,
}

/// How much of a record's body [`Bodies::write`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// The whole JSON object, `{"type":...}`, for the queue.
    Whole,
    /// From the type's value on, into the writer's buffer
    /// ([`Writer::append_with`](portcullis_audit::writer::Writer::append_with)).
    AfterType,
}

impl Form {
    #[inline]
    fn begin<'a>(self, out: &'a mut Vec<u8>, kind: &str) -> Body<'a> {
        match self {
            Form::Whole => Body::begin(out, kind),
            Form::AfterType => Body::after_type(out, kind),
        }
    }
}

/// Writes a body serialised with serde (`{"type":...}`, its first field
/// the type) in `form`.
fn serde_body<T: Serialize>(out: &mut Vec<u8>, form: Form, body: &T) -> Result<(), serde_json::Error> {
    match form {
        Form::Whole => serde_json::to_writer(out, body),
        Form::AfterType => {
            let whole = serde_json::to_vec(body)?;
            out.extend_from_slice(whole.strip_prefix(b"{\"type\":".as_slice()).unwrap_or(&whole));
            Ok(())
        }
    }
}

impl Bodies {
    /// Appends a record's JSON object to `out`, whole or from its type's
    /// value on.
    fn write(&self, record: &Record, carried: &[Record], out: &mut Vec<u8>, form: Form) {
        let start = out.len();
        let written = match record {
            // Statements and results are written field by field: there is
            // one of each for every statement the gateway forwards.
            Record::Statement(s) => {
                let mut body = form.begin(out, "statement");
                body.id("session", &self.boot, s.session);
                body.u64("n", s.sequence);
                body.str("sql", &s.sql);
                let mut written = Ok(());
                if self.record_parameters {
                    let params: Vec<Param<'_>> = s.parameters.iter().map(|p| Param::of(p.as_deref())).collect();
                    written = body.serde("params", &params);
                }
                body.joined("fingerprint", s.decision.statements.iter().map(|x| x.facts.fingerprint.as_str()), "+");
                // The session's start record names the policy it
                // started with; a statement names it only after a reload.
                if s.policy_changed {
                    body.str("policy", &s.policy);
                }
                body.word("verdict", s.decision.verdict.as_str());
                if s.observed {
                    body.bool("observed", true);
                }
                body.opt_str("rule", s.decision.rule.as_deref());
                match s.decision_as_in {
                    Some(n) => body.u64("decision_as_in", n),
                    None => written = written.and(body.serde("decision", &*s.decision)),
                }
                if !carried.is_empty() {
                    let results = carried.iter().filter_map(|r| match r {
                        Record::Result(r) => Some(r),
                        _ => None,
                    });
                    body.objects("results", results, |item, r| {
                        let mut result = item.u64("n", r.sequence);
                        written = std::mem::replace(&mut written, Ok(())).and(result_fields(&mut result, r));
                        result.end();
                    });
                }
                body.end();
                written
            }
            Record::Result(r) => {
                let mut body = form.begin(out, "result");
                body.id("session", &self.boot, r.session);
                body.u64("n", r.sequence);
                let written = result_fields(&mut body, r);
                body.end();
                written
            }
            Record::Approval(a) => {
                let mut body = form.begin(out, "approval");
                body.id("session", &self.boot, a.session);
                body.str("request", &a.request);
                body.word("event", a.event);
                if !a.by.is_empty() {
                    body.strs("by", a.by.iter().map(String::as_str));
                }
                if let Some(reason) = &a.reason {
                    body.str("reason", reason);
                }
                if let Some(grant) = &a.grant {
                    body.str("grant", grant);
                }
                body.end();
                Ok(())
            }
            Record::SessionStart(s) => serde_body(
                out,
                form,
                &StartBody {
                    kind: "session_start",
                    session: SessionId(&self.boot, s.session),
                    replica: &self.replica,
                    subject: &s.identity.subject,
                    groups: &s.identity.groups,
                    actor: s.identity.actor.as_ref().map(|a| a.name()),
                    act: s.identity.actor.as_ref(),
                    token: &s.token,
                    client: s.client.to_string(),
                    tls: s.tls,
                    application: &s.application_name,
                    database: &s.database,
                    user: &s.user,
                    policy: &s.policy,
                    search_path: &s.search_path,
                },
            ),
            Record::SessionEnd(e) => serde_body(
                out,
                form,
                &EndBody {
                    kind: "session_end",
                    session: SessionId(&self.boot, e.session),
                    reason: &e.reason,
                    seconds: e.duration.as_secs_f64(),
                },
            ),
        };
        // Serialising these types does not fail; should it, the record
        // still says what it was.
        if let Err(e) = written {
            tracing::warn!("audit record not serialisable: {e}");
            out.truncate(start);
            let mut body = form.begin(out, "unserialisable");
            body.str("error", &e.to_string());
            body.end();
        }
    }
}

/// A result's own fields (after its session and number).
fn result_fields(body: &mut Body<'_>, r: &ResultRecord) -> Result<(), serde_json::Error> {
    body.bool("ran", r.ran);
    body.strs("tags", r.tags.iter());
    body.u64("rows", r.rows);
    body.u64("masked", r.masked);
    body.millis("ms", u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX));
    let mut written = Ok(());
    if let Some(e) = &r.error {
        written = body.serde("error", &ErrorBody { code: &e.code, message: &e.message });
    }
    if !r.kept_rows.is_empty() {
        written = written.and(body.serde("rows_kept", &r.kept_rows));
    }
    written
}

/// How many records at the start of `records` are results that go inside
/// the statement record after them: results of the session whose
/// statement that is (a session hands its completed results over with its
/// next statement). Zero when no such statement follows.
fn carried(records: &[Record]) -> usize {
    let mut session = None;
    for (i, record) in records.iter().enumerate() {
        match record {
            Record::Result(r) if session.is_none_or(|s| s == r.session) => session = Some(r.session),
            Record::Statement(s) if i > 0 && session == Some(s.session) => return i,
            _ => return 0,
        }
    }
    0
}

thread_local! {
    /// Where a session's records are serialised before they are queued.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<usize>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The most scratch memory a thread keeps between batches.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// The memory a thread lends the writer's buffer while it writes
    /// ([`Shared::write`]).
    static LENT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most memory a thread keeps to lend the writer between writes.
const LENT_KEPT: usize = 256 * 1024;

impl RecordSink for AuditLog {
    fn persist(&self, records: &[Record]) -> Persisting {
        let sync = match self.durability {
            Durability::Every => true,
            Durability::None => false,
            Durability::Commit => records.iter().any(|r| matches!(r, Record::Statement(s) if s.durable)),
        };
        // When the writer's lock is free (the common case), the records
        // are serialised into its buffer and handed to the OS here and
        // then, after whatever others queued.
        if let Ok(mut guard) = self.shared.writer.try_lock() {
            let written = self.shared.write(&mut guard, Some((records, &self.bodies)), Hand::Now);
            drop(guard);
            return match written {
                Ok(()) if sync => Persisting::Waiting(Box::pin(Arc::clone(&self.shared).synced())),
                done => Persisting::Done(done),
            };
        }
        // Otherwise they are queued: whoever holds the lock writes
        // everything queued, and this session may find its records
        // written already once it has the lock.
        let ticket = match self.queue(records, true) {
            Ok(ticket) => ticket,
            Err(e) => return Persisting::Done(Err(e)),
        };
        self.stats.lock_waits.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&self.shared);
        Persisting::Waiting(Box::pin(async move {
            {
                let mut guard = shared.writer.lock().await;
                if shared.outcome(ticket).is_none() {
                    let _ = shared.write(&mut guard, None, Hand::Now);
                }
            }
            shared.written(ticket)?;
            if sync {
                shared.synced().await
            } else {
                Ok(())
            }
        }))
    }

    /// Only `"commit"` syncs before some statements and not others.
    fn marks_durable(&self) -> bool {
        self.durability == Durability::Commit
    }

    fn log(&self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        for r in records {
            match r {
                Record::SessionStart(_) => {
                    self.shared.live.fetch_add(1, Ordering::Relaxed);
                }
                Record::SessionEnd(_) => {
                    let _ = self.shared.live.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
                _ => {}
            }
        }
        let logged = match self.shared.writer.try_lock() {
            Ok(mut guard) => self.shared.write(&mut guard, Some((records, &self.bodies)), Hand::Later),
            Err(_) => self.queue(records, false).map(|_| ()),
        };
        if let Err(e) = logged {
            tracing::warn!(records = records.len(), "audit records not written: {e}");
        }
    }
}

/// The sync thread: every session waiting is answered after one sync; a
/// checkpoint is written every `interval` while records arrive.
fn sync_loop(shared: &Shared, interval: Duration) {
    let mut next_checkpoint = Instant::now() + interval;
    // Where the log's end was when the segment was last synced, and up to
    // where its pages were dropped from the page cache since.
    let mut synced_at = (0, 0);
    let mut dropped_at = (0, 0);
    loop {
        let mut writeback = false;
        let (waiters, closing) = {
            let mut board = lock(&shared.board);
            while board.waiters.is_empty() && !board.closing && Instant::now() < next_checkpoint {
                // Records appended without a write are written within
                // the flush interval.
                let wait = next_checkpoint.saturating_duration_since(Instant::now()).min(FLUSH_INTERVAL);
                drop(board);
                let end = shared.flush();
                // Much written since the last sync: synced now, so that
                // the sync that ends the segment has little left to do.
                writeback = end.is_some_and(|(segment, bytes)| {
                    let since = if segment == synced_at.0 { bytes.saturating_sub(synced_at.1) } else { bytes };
                    since >= shared.writeback_bytes
                });
                board = lock(&shared.board);
                if !board.waiters.is_empty() || board.closing || writeback {
                    break;
                }
                board = match shared.wake.wait_timeout(board, wait) {
                    Ok((b, _)) => b,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            // Group commit: while other sessions are at work, the sync
            // waits a moment for them to join it, until every live session
            // waits or the delay is over. A sync costs the machine more
            // than the wait costs a commit.
            let live = shared.live.load(Ordering::Relaxed);
            if !board.waiters.is_empty() && live > 1 && !shared.commit_delay.is_zero() {
                let deadline = Instant::now() + shared.commit_delay;
                while board.waiters.len() < live && !board.closing {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    board = match shared.wake.wait_timeout(board, left) {
                        Ok((b, _)) => b,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
            }
            (std::mem::take(&mut board.waiters), board.closing)
        };
        let mut checkpointed = false;
        if !closing && Instant::now() >= next_checkpoint {
            next_checkpoint = Instant::now() + interval;
            checkpointed = shared.checkpoint();
        }
        if !waiters.is_empty() || checkpointed || writeback {
            let (handle, at) = match shared.writer.blocking_lock().as_ref() {
                Some(w) => {
                    // What this sync covers is counted before anyone
                    // waiting for it hears back (under steady syncs the
                    // flush above does not run).
                    w.publish(&shared.stats);
                    (w.writer.sync_handle(), Some(w.writer.position()))
                }
                None => (None, None),
            };
            let synced = match &handle {
                Some(file) => {
                    let injected = shared
                        .failing_syncs
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok();
                    // A hold ends when it is released or the log closes.
                    while shared.holding_syncs.load(Ordering::Relaxed) && !lock(&shared.board).closing {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let start = Instant::now();
                    let synced = if injected {
                        Err(std::io::Error::from_raw_os_error(5)) // EIO
                    } else {
                        file.sync_data()
                    };
                    shared.metrics.audit_sync(start.elapsed());
                    synced.map_err(|e| format!("syncing the audit log: {e}"))
                }
                None => Ok(()),
            };
            if !waiters.is_empty() {
                shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            } else if writeback && !checkpointed {
                shared.stats.writebacks.fetch_add(1, Ordering::Relaxed);
            }
            if let (Ok(()), Some(at)) = (&synced, at) {
                synced_at = at;
            }
            if synced.is_ok() && checkpointed {
                let note =
                    shared.writer.blocking_lock().as_ref().and_then(|w| w.writer.last_checkpoint().map(str::to_string));
                if note.is_some() {
                    *lock(&shared.durable_checkpoint) = note;
                }
            }
            let answer = match synced {
                Ok(()) => Ok(()),
                Err(message) => {
                    // The file's state is unknown: the next write begins a
                    // new segment.
                    if let Some(w) = shared.writer.blocking_lock().as_mut() {
                        w.writer.abandon_segment();
                    }
                    Err(RecordError::unsynced(shared.failed(message)))
                }
            };
            for ack in waiters {
                let _ = ack.send(answer.clone());
            }
            // What this sync made durable leaves the page cache (the
            // chunks the writer is done with).
            if let (Ok(()), Some(at), Some(file)) = (&answer, at, &handle) {
                let from = if dropped_at.0 == at.0 { dropped_at.1 } else { 0 };
                dropped_at = (at.0, portcullis_audit::writer::drop_synced(file, from, at.1));
            }
        }
        if closing {
            return;
        }
    }
}

/// Whether a file can be written and synced in `dir` now (the audit log's
/// directory, checked when the log failed and nothing has been written
/// since): writes, syncs and removes a small file of its own.
pub fn probe_directory(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write as _;
    let path = dir.join(".readiness-probe");
    let written = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"portcullis readiness probe\n").and_then(|()| f.sync_data()));
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| format!("{}: {e}", dir.display()))
}

/// A session id as records write it: the process's prefix and the
/// session's number (written in place, no string built).
struct SessionId<'a>(&'a str, u64);

impl std::fmt::Display for SessionId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl Serialize for SessionId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Joined on the stack (this runs for every record): the prefix is
        // 8 hex digits, the number at most 20 digits.
        let mut number = itoa::Buffer::new();
        let number = number.format(self.1);
        let mut text = [0u8; 64];
        let len = self.0.len() + 1 + number.len();
        let Some(out) = text.get_mut(..len) else { return serializer.collect_str(self) };
        let (prefix, rest) = out.split_at_mut(self.0.len());
        prefix.copy_from_slice(self.0.as_bytes());
        if let Some((dash, digits)) = rest.split_first_mut() {
            *dash = b'-';
            digits.copy_from_slice(number.as_bytes());
        }
        match std::str::from_utf8(out) {
            Ok(id) => serializer.serialize_str(id),
            Err(_) => serializer.collect_str(self),
        }
    }
}

/// A parameter: NULL, its text, or its first bytes and its length.
#[derive(Serialize)]
#[serde(untagged)]
enum Param<'a> {
    Null,
    Text(&'a str),
    Cut { prefix: &'a str, bytes: usize },
}

impl<'a> Param<'a> {
    fn of(value: Option<&'a str>) -> Param<'a> {
        match value {
            None => Param::Null,
            Some(v) if v.len() <= MAX_PARAMETER_BYTES => Param::Text(v),
            Some(v) => {
                let mut end = MAX_PARAMETER_BYTES;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                Param::Cut { prefix: v.get(..end).unwrap_or_default(), bytes: v.len() }
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct StartBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session: SessionId<'a>,
    replica: &'a str,
    subject: &'a str,
    groups: &'a [String],
    /// The agent's name.
    actor: Option<&'a str>,
    /// The whole actor claim: subject, client id, earlier actors.
    act: Option<&'a policy_core::Actor>,
    token: &'a str,
    client: String,
    tls: bool,
    application: &'a str,
    database: &'a str,
    user: &'a str,
    policy: &'a str,
    search_path: &'a [String],
}

#[derive(Serialize)]
struct EndBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session: SessionId<'a>,
    reason: &'a str,
    seconds: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::session::record::{ReportedError, ResultRecord, StatementRecord};
    use portcullis_testkit::scratch::ScratchDir;

    #[test]
    fn session_ids_are_written_as_their_text() {
        for (prefix, n) in [("3fa2c1e0", 0u64), ("3fa2c1e0", 7), ("00000000", 1_234_567), ("ffffffff", u64::MAX)] {
            let id = SessionId(prefix, n);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{prefix}-{n}\""));
        }
    }

    fn bodies(record_parameters: bool) -> Bodies {
        Bodies { record_parameters, boot: "0a1b2c3d".into(), replica: "r1".into() }
    }

    fn written(bodies: &Bodies, record: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        bodies.write(record, &[], &mut out, Form::Whole);
        assert!(out.starts_with(b"{\"type\":") && !out.contains(&b'\n'), "{}", String::from_utf8_lossy(&out));
        // Written in place, after the writer's `"type":`, it is the same.
        let mut in_place = b"{\"type\":".to_vec();
        bodies.write(record, &[], &mut in_place, Form::AfterType);
        assert_eq!(String::from_utf8_lossy(&in_place), String::from_utf8_lossy(&out));
        serde_json::from_slice(&out).unwrap()
    }

    /// Persists `records` and waits for the answer. They are written in
    /// place when the writer's lock is free, or queued when the sync
    /// thread's periodic flush holds it (it starts with one, and may
    /// hold it a moment).
    fn persisted(log: &AuditLog, records: &[Record]) -> Result<(), RecordError> {
        match log.persist(records) {
            Persisting::Done(outcome) => outcome,
            Persisting::Waiting(wait) => tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(wait),
        }
    }

    /// A log in a fresh directory, with nothing synced.
    fn scratch_log(test: &str) -> (ScratchDir, AuditLog) {
        scratch_log_of(test, 1 << 20)
    }

    /// [`scratch_log`] with segments of `segment_bytes`.
    fn scratch_log_of(test: &str, segment_bytes: u64) -> (ScratchDir, AuditLog) {
        scratch_log_with(test, segment_bytes, Durability::None)
    }

    /// [`scratch_log_of`] with `durability`.
    fn scratch_log_with(test: &str, segment_bytes: u64, durability: Durability) -> (ScratchDir, AuditLog) {
        let dir = ScratchDir::new(&format!("audit-{test}"));
        let origin = "test.example/audit";
        let (key, _) = keygen(&dir.join("keys"), origin).unwrap();
        let settings = AuditSettings {
            dir: dir.join("log"),
            durability,
            segment_bytes,
            keep: None,
            signing_key_file: key,
            origin: origin.into(),
            checkpoint_interval: Duration::from_secs(3600),
            commit_delay: Duration::ZERO,
            record_parameters: false,
            record_rows: 0,
            replica: "r1".into(),
        };
        (dir, AuditLog::open(&settings).unwrap())
    }

    /// An engine whose policy allows everything.
    fn allow_all() -> policy_core::Engine {
        let policy =
            policy_core::Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"\n", "policy.toml")
                .unwrap();
        policy_core::Engine::new(policy, policy_core::Keys::default()).unwrap()
    }

    fn statement(policy: &policy_core::Engine, session: u64, n: u64) -> Record {
        let sql: std::sync::Arc<str> = std::sync::Arc::from(format!("SELECT {n}"));
        let decision = policy.decide(&policy_core::Identity::new("alice"), &policy.new_session(), &sql);
        Record::Statement(StatementRecord::new(session, n, sql, Vec::new(), std::sync::Arc::new(decision)))
    }

    fn result(session: u64, n: u64) -> Record {
        Record::Result(ResultRecord { session, sequence: n, ran: true, ..ResultRecord::default() })
    }

    /// The writer counts records and writes in memory of its own; the
    /// sync thread's flush publishes the counts, and closing the log
    /// publishes the last ones.
    #[test]
    fn the_counts_are_published_by_the_flush_and_when_the_log_closes() {
        let engine = allow_all();
        let (dir, log) = scratch_log("counts");
        for n in 1..=3 {
            assert!(persisted(&log, &[statement(&engine, 1, n)]).is_ok());
        }
        let stats = Arc::clone(&log.stats);
        // Within a few flush intervals (the log has no other traffic).
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.records.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(FLUSH_INTERVAL);
        }
        assert_eq!(stats.records.load(Ordering::Relaxed), 3);
        assert!((1..=3).contains(&stats.writes.load(Ordering::Relaxed)));
        // A result left for the next write (the statement's after it);
        // closing publishes the counts of both.
        log.log(&[result(1, 3)]);
        assert!(persisted(&log, &[statement(&engine, 1, 4)]).is_ok());
        log.close();
        assert_eq!(stats.records.load(Ordering::Relaxed), 5, "every record the log holds is counted");
        assert_eq!(read_lines(&dir.join("log")).len(), 5);
    }

    /// Under `"every"`, with sessions that always wait for a sync, the
    /// sync thread goes from one sync to the next and its flush does not
    /// run: the counts are published before each sync, so every statement
    /// whose sync returned is counted.
    ///
    /// The loads are relaxed, and exact all the same on any machine: the
    /// session's record was counted under the writer's lock before it
    /// joined the sync's waiters, the sync thread published the count
    /// under that lock after taking them, and the acknowledgement that
    /// wakes the session follows the publication through the channel.
    /// The store thus happens before the load, which must see it or a
    /// later one.
    #[test]
    fn a_statement_whose_sync_returned_is_counted() {
        let engine = allow_all();
        let (_dir, log) = scratch_log_with("counted-synced", 64 << 20, Durability::Every);
        let returned = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for session in 1..=4 {
                let (log, engine, returned) = (&log, &engine, &returned);
                scope.spawn(move || {
                    for n in 1..=100 {
                        assert!(persisted(log, &[statement(engine, session, n)]).is_ok());
                        let returned = returned.fetch_add(1, Ordering::Relaxed) + 1;
                        let counted = log.stats.records.load(Ordering::Relaxed);
                        assert!(counted >= returned, "{returned} statements synced, {counted} counted");
                    }
                });
            }
        });
        log.close();
    }

    /// The records of both paths (the writer's lock free: written in
    /// place; taken: queued, and written by whoever has the lock next) are
    /// in the log in the order they were handed over, and it verifies.
    #[test]
    fn records_queued_behind_the_lock_and_written_in_place_keep_their_order() {
        let engine = allow_all();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (dir, log) = scratch_log("order");

        // Session 1 finds the lock free: its statement is written at once,
        // its result left for the next write.
        assert!(persisted(&log, &[statement(&engine, 1, 1)]).is_ok());
        log.log(&[result(1, 1)]);
        // Session 2 finds the lock taken: its records are queued.
        let held = log.shared.writer.blocking_lock();
        let waiting = log.persist(&[statement(&engine, 2, 1)]);
        assert!(matches!(waiting, Persisting::Waiting(_)));
        log.log(&[result(2, 1)]);
        drop(held);
        // Session 1 again, the lock free: what was queued goes first.
        assert!(persisted(&log, &[statement(&engine, 1, 2)]).is_ok());
        // Session 2's wait ends with its records written.
        assert!(runtime.block_on(waiting).is_ok());
        log.log(&[result(1, 2)]);
        log.close();

        let records = read_records(&dir.join("log")).unwrap();
        let order: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r["type"].as_str().unwrap(), r["session"].as_str().unwrap_or(""), r["n"]))
            .collect();
        let boot = &log.bodies.boot;
        let expected: Vec<String> = [
            ("statement", 1, 1),
            ("result", 1, 1),
            ("statement", 2, 1),
            ("result", 2, 1),
            ("statement", 1, 2),
            ("result", 1, 2),
        ]
        .iter()
        .map(|(kind, session, n)| format!("{kind} {boot}-{session} {n}"))
        .collect();
        assert_eq!(order, expected);
        let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(seqs, (0..6).collect::<Vec<u64>>());
        let verifier = load_signer(&dir.join("keys").join(KEY_FILE), "test.example/audit").unwrap().verifier();
        let report = portcullis_audit::verify::verify_dir(&dir.join("log"), &verifier, &[], &mut |_| {}).unwrap();
        assert_eq!(report.records(), 6);
    }

    /// Much written and nothing waiting for a sync (`"none"`): the sync
    /// thread syncs the segment on its own once an eighth of it was
    /// written since its last sync, and not before.
    #[test]
    fn the_sync_thread_syncs_what_much_writing_left_unsynced() {
        let engine = allow_all();
        let segment_bytes = 1 << 20;
        let (_dir, log) = scratch_log_with("writeback", segment_bytes, Durability::None);
        let threshold = writeback_bytes(segment_bytes);
        assert_eq!(threshold, segment_bytes / 8);
        let end = |log: &AuditLog| log.shared.writer.blocking_lock().as_ref().map(|w| w.writer.position()).unwrap();
        let (segment, start) = end(&log);
        let writebacks = || log.stats.writebacks.load(Ordering::Relaxed);

        // Less than the threshold: no sync of its own, however long.
        let mut n = 0;
        while end(&log).1 - start < threshold / 2 {
            n += 1;
            assert!(persisted(&log, &[statement(&engine, 1, n)]).is_ok());
        }
        std::thread::sleep(FLUSH_INTERVAL * 5);
        assert_eq!(writebacks(), 0);

        // Past it (in the same segment): synced within a few flush
        // intervals.
        while end(&log).1 - start < threshold + 1024 {
            n += 1;
            assert!(persisted(&log, &[statement(&engine, 1, n)]).is_ok());
        }
        assert_eq!(end(&log).0, segment, "the test's records stay in one segment");
        let deadline = Instant::now() + Duration::from_secs(10);
        while writebacks() == 0 && Instant::now() < deadline {
            std::thread::sleep(FLUSH_INTERVAL);
        }
        assert_eq!(writebacks(), 1);
        assert_eq!(log.stats.syncs.load(Ordering::Relaxed), 0, "no statement waited for a sync");
        log.close();
    }

    /// What a sync made durable leaves the page cache, chunk by chunk,
    /// once the writer is past it: a busy log does not take the memory
    /// the database's pages would use. (`fincore`, from util-linux,
    /// counts a file's cached bytes.)
    #[test]
    fn synced_chunks_leave_the_page_cache() {
        let engine = allow_all();
        let (_dir, log) =
            scratch_log_with("uncached", portcullis_audit::writer::DEFAULT_SEGMENT_BYTES, Durability::None);
        let threshold = writeback_bytes(portcullis_audit::writer::DEFAULT_SEGMENT_BYTES);
        let end = |log: &AuditLog| log.shared.writer.blocking_lock().as_ref().map(|w| w.writer.position()).unwrap();
        let mut n = 0;
        while end(&log).1 < threshold + (1 << 20) {
            n += 1;
            assert!(persisted(&log, &[statement(&engine, 1, n)]).is_ok());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.stats.writebacks.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(FLUSH_INTERVAL);
        }
        assert_eq!(log.stats.writebacks.load(Ordering::Relaxed), 1);
        let path = log.shared.writer.blocking_lock().as_ref().map(|w| w.writer.path().to_path_buf()).unwrap();
        let cached = portcullis_testkit::scratch::cached_bytes(&path);
        let written = end(&log).1;
        // Synced past 8 MiB: the first 8 chunks dropped, at most the last
        // couple of MiB (and the space reserved after them) left.
        assert!(cached + threshold <= written + (1 << 20), "cached {cached} of {written} written");
        log.close();
    }

    /// A log whose segment could not end (the next segments' names are
    /// taken): its next write, which needs a new segment, fails until
    /// [`Outage::end`].
    struct Outage {
        log: AuditLog,
        engine: policy_core::Engine,
        blockers: Vec<std::path::PathBuf>,
        /// The last statement's number (its write ended the segment).
        n: u64,
        /// Last: removed after the log is dropped.
        dir: ScratchDir,
    }

    impl Outage {
        fn begin(test: &str) -> Outage {
            let engine = allow_all();
            let (dir, log) = scratch_log_of(test, 4096);
            let logs = dir.join("log");
            let blockers: Vec<_> = (1..4).map(|i| logs.join(portcullis_audit::segment::segment_file_name(i))).collect();
            for b in &blockers {
                std::fs::create_dir(b).unwrap();
            }
            let mut outage = Outage { log, engine, blockers, n: 0, dir };
            let rotation = loop {
                outage.n += 1;
                assert!(outage.n < 100, "the segment never ended");
                let n = outage.n;
                match outage.persist(&[statement(&outage.engine, 1, n)]) {
                    Ok(()) => outage.log.log(&[result(1, n)]),
                    Err(e) => break e,
                }
            };
            // The segment could not end: its records are written, and the
            // next write needs a new segment.
            assert!(rotation.written, "{rotation:?}");
            outage
        }

        fn persist(&self, records: &[Record]) -> Result<(), RecordError> {
            persisted(&self.log, records)
        }

        fn statement(&self, n: u64) -> Record {
            statement(&self.engine, 1, n)
        }

        /// Lets segments begin again.
        fn lift(&self) {
            for b in &self.blockers {
                let _ = std::fs::remove_dir(b);
            }
        }

        /// A write that must be refused whole.
        fn refused(&self, records: &[Record]) {
            let refused = self.persist(records);
            assert!(refused.as_ref().is_err_and(|e| !e.written), "{refused:?}");
        }

        /// Lets segments begin again, closes the log, and returns its
        /// records (verified first).
        fn end(self) -> Vec<serde_json::Value> {
            self.lift();
            self.persist(&[self.statement(10_000)]).unwrap();
            self.log.close();
            let logs = self.dir.join("log");
            let verifier = load_signer(&self.dir.join("keys").join(KEY_FILE), "test.example/audit").unwrap().verifier();
            portcullis_audit::verify::verify_dir(&logs, &verifier, &[], &mut |_| {}).unwrap();
            read_records(&logs).unwrap()
        }
    }

    /// How many records of `kind` numbered `n` are in `records`.
    fn count(records: &[serde_json::Value], kind: &str, n: u64) -> usize {
        records.iter().filter(|r| r["type"] == kind && r["n"] == n).count()
    }

    /// A write that fails refuses the statements it carried, and keeps the
    /// records nothing waits for (a result left for the next write) for
    /// the next write that works.
    #[test]
    fn a_failed_write_keeps_the_results_it_carried_for_the_next() {
        let outage = Outage::begin("again");
        let n = outage.n;
        outage.log.log(&[result(1, n)]);
        // This write cannot begin a segment: its statement is refused, and
        // the results before it (left for this write, and carried with the
        // statement) are kept.
        outage.refused(&[result(1, 1000), outage.statement(n + 1)]);
        outage.refused(&[outage.statement(n + 2)]);
        let records = outage.end();
        assert_eq!(count(&records, "result", n), 1, "the kept result is written once");
        assert_eq!(count(&records, "result", 1000), 1, "the carried result is written once");
        assert_eq!(count(&records, "statement", n + 1), 0, "the refused statement is not in the log");
        assert_eq!(count(&records, "statement", n + 2), 0, "the refused statement is not in the log");
        assert_eq!(count(&records, "statement", 10_000), 1);
    }

    /// Records handed over without a wait, results inside a statement's
    /// record among them, are told from the next batch's statements when a
    /// write fails: the results are kept, the refused statement is not.
    #[test]
    fn a_failed_write_tells_kept_lines_from_refused_ones_when_results_were_carried() {
        let outage = Outage::begin("again-carried");
        let n = outage.n;
        // Three records, two lines (the first result goes inside the
        // statement's record).
        outage.log.log(&[result(1, n), outage.statement(n + 1), result(1, n + 1)]);
        outage.refused(&[outage.statement(n + 2)]);
        outage.refused(&[outage.statement(n + 3)]);
        let records = outage.end();
        for (kind, k) in [("result", n), ("statement", n + 1), ("result", n + 1)] {
            assert_eq!(count(&records, kind, k), 1, "{kind} {k} is written once");
        }
        for k in [n + 2, n + 3] {
            assert_eq!(count(&records, "statement", k), 0, "the refused statement {k} is not in the log");
        }
    }

    /// A checkpoint due while the log cannot be written neither loses the
    /// records kept for the next write nor makes a later failed write
    /// keep the statements it refused; once the disk is back, it writes
    /// them, with no statement coming.
    #[test]
    fn a_checkpoint_during_an_outage_keeps_what_the_next_write_owes() {
        let outage = Outage::begin("again-checkpoint");
        let n = outage.n;
        outage.log.log(&[result(1, n)]);
        outage.refused(&[result(1, 1000), outage.statement(n + 1)]);
        assert!(!outage.log.shared.checkpoint(), "no checkpoint while the log cannot be written");
        outage.refused(&[outage.statement(n + 2)]);
        assert!(!outage.log.shared.checkpoint());
        assert!(outage.log.is_failing());
        outage.lift();
        assert!(outage.log.shared.checkpoint(), "the disk is back");
        assert!(!outage.log.is_failing());
        let written = read_records(&outage.dir.join("log")).unwrap();
        assert_eq!(count(&written, "result", n), 1, "the kept result is written by the checkpoint");
        let records = outage.end();
        assert_eq!(count(&records, "result", n), 1, "the kept result is written once");
        assert_eq!(count(&records, "result", 1000), 1, "the carried result is written once");
        for k in [n + 1, n + 2] {
            assert_eq!(count(&records, "statement", k), 0, "the refused statement {k} is not in the log");
        }
    }

    /// A checkpoint writes what waits in the buffer first, then itself.
    #[test]
    fn a_checkpoint_writes_the_records_before_it() {
        let engine = allow_all();
        let (dir, log) = scratch_log("checkpoint");
        assert!(persisted(&log, &[statement(&engine, 1, 1)]).is_ok());
        log.log(&[result(1, 1)]);
        assert!(log.shared.checkpoint());
        assert!(!log.shared.checkpoint(), "nothing new to checkpoint");
        let segment = portcullis_audit::writer::list_segments(&dir.join("log")).unwrap().pop().unwrap().1;
        let text =
            String::from_utf8(portcullis_audit::segment::content(&std::fs::read(segment).unwrap()).to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("\"type\":")).collect();
        let kinds: Vec<&str> =
            lines.iter().map(|l| l.split("\"type\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
        assert_eq!(&kinds[kinds.len() - 3..], ["statement", "result", "checkpoint"], "{text}");
        assert!(lines.last().unwrap().contains("\\n2\\n"), "the checkpoint is of both records: {text}");
        log.close();
    }

    /// Only `"commit"` needs to know which statements can make a change
    /// durable; with the others the sessions do not work it out.
    #[test]
    fn only_commit_durability_asks_which_statements_make_changes_durable() {
        for (durability, marks) in [(Durability::Commit, true), (Durability::Every, false), (Durability::None, false)] {
            let (_dir, log) = scratch_log_with(&format!("marks-{durability:?}"), 1 << 20, durability);
            assert_eq!(log.marks_durable(), marks, "{durability:?}");
            log.close();
        }
    }

    #[test]
    fn statements_are_written_with_every_field() {
        let engine = allow_all();
        let identity = policy_core::Identity::new("alice");
        let sql = "SELECT 1; SELECT '\"\\\n\u{1}é' FROM pg_class";
        let decision = std::sync::Arc::new(engine.decide(&identity, &engine.new_session(), sql));
        let [b, c] = &*decision.statements else { panic!("two statements") };
        let long = "x".repeat(MAX_PARAMETER_BYTES + 5);
        let parameters = vec![None, Some("7".to_string()), Some(long)];
        let mut record =
            StatementRecord::new(9, 4, std::sync::Arc::from(sql), parameters, std::sync::Arc::clone(&decision))
                .with_policy(std::sync::Arc::from("sha256:ab"), true);
        record.observed = true;
        let v = written(&bodies(true), &Record::Statement(record.clone()));
        assert_eq!(v["type"], "statement");
        assert_eq!(v["session"], "0a1b2c3d-9");
        assert_eq!(v["n"], 4);
        assert_eq!(v["sql"], sql);
        assert_eq!(v["params"][0], serde_json::Value::Null);
        assert_eq!(v["params"][1], "7");
        assert_eq!(v["params"][2]["bytes"], MAX_PARAMETER_BYTES + 5);
        assert_eq!(v["fingerprint"], format!("{}+{}", b.facts.fingerprint, c.facts.fingerprint));
        assert_eq!(v["policy"], "sha256:ab");
        assert_eq!(v["verdict"], decision.verdict.as_str());
        assert_eq!(v["observed"], true);
        assert_eq!(v["rule"], serde_json::to_value(decision.rule.as_deref()).unwrap());
        assert_eq!(v["decision"], serde_json::to_value(&*decision).unwrap());
        assert!(v.get("decision_as_in").is_none());

        record.observed = false;
        record.decision_as_in = Some(2);
        // The session's start record names the policy it began with.
        record.policy_changed = false;
        let v = written(&bodies(false), &Record::Statement(record));
        assert!(v.get("params").is_none() && v.get("observed").is_none() && v.get("decision").is_none());
        assert!(v.get("policy").is_none(), "{v}");
        assert_eq!(v["decision_as_in"], 2);
    }

    #[test]
    fn results_are_written_with_every_field() {
        let mut result = ResultRecord {
            session: 3,
            sequence: 8,
            ran: true,
            tags: ["SELECT 2", "UPDATE \"1\""].into_iter().collect(),
            rows: 2,
            masked: 1,
            duration: Duration::from_micros(12_345),
            ..ResultRecord::default()
        };
        let v = written(&bodies(false), &Record::Result(result.clone()));
        assert_eq!(
            v,
            serde_json::json!({"type": "result", "session": "0a1b2c3d-3", "n": 8, "ran": true,
                "tags": ["SELECT 2", "UPDATE \"1\""], "rows": 2, "masked": 1, "ms": 12.345})
        );
        result.error = Some(Box::new(ReportedError { code: "42501".into(), message: "no \"way\"".into() }));
        result.kept_rows = vec![vec![Some("a".into()), None]];
        let v = written(&bodies(false), &Record::Result(result));
        assert_eq!(v["error"], serde_json::json!({"code": "42501", "message": "no \"way\""}));
        assert_eq!(v["rows_kept"], serde_json::json!([["a", null]]));
    }

    /// A session's results handed over with its next statement are
    /// written inside that statement's record, every field of them; the
    /// tools read them as result records of their own, ahead of it.
    /// Results of another session are records of their own.
    #[test]
    fn results_handed_over_with_a_statement_are_written_inside_its_record() {
        let engine = allow_all();
        let (dir, log) = scratch_log("carried");
        let mut failed = result(1, 1);
        if let Record::Result(r) = &mut failed {
            r.ran = false;
            r.error = Some(Box::new(ReportedError { code: "22012".into(), message: "division by zero".into() }));
            r.duration = Duration::from_micros(1_500);
        }
        let records = [failed, result(1, 2), statement(&engine, 1, 3), result(2, 1), statement(&engine, 1, 4)];
        assert!(persisted(&log, &records).is_ok());
        log.close();

        let logs = dir.join("log");
        let lines = read_lines(&logs);
        let kinds: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
        assert_eq!(kinds, ["statement", "result", "statement"]);
        let boot = &log.bodies.boot;
        assert_eq!(
            lines[0]["results"],
            serde_json::json!([
                {"n": 1, "ran": false, "tags": [], "rows": 0, "masked": 0, "ms": 1.5,
                    "error": {"code": "22012", "message": "division by zero"}},
                {"n": 2, "ran": true, "tags": [], "rows": 0, "masked": 0, "ms": 0.0},
            ])
        );
        assert!(lines[2].get("results").is_none(), "{}", lines[2]);

        let records = read_records(&logs).unwrap();
        let read: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r["type"].as_str().unwrap(), r["session"].as_str().unwrap(), r["n"]))
            .collect();
        let expected: Vec<String> =
            [("result", 1, 1), ("result", 1, 2), ("statement", 1, 3), ("result", 2, 1), ("statement", 1, 4)]
                .iter()
                .map(|(kind, session, n)| format!("{kind} {boot}-{session} {n}"))
                .collect();
        assert_eq!(read, expected);
        assert_eq!(records[0]["error"]["code"], "22012");
        assert_eq!((&records[0]["seq"], &records[0]["time"]), (&records[2]["seq"], &records[2]["time"]));
        assert!(records[2].get("results").is_none());
        let verifier = load_signer(&dir.join("keys").join(KEY_FILE), "test.example/audit").unwrap().verifier();
        let report = portcullis_audit::verify::verify_dir(&logs, &verifier, &[], &mut |_| {}).unwrap();
        assert_eq!(report.records(), 3);
    }

    /// The record lines of a log as written.
    fn read_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (_, path) in portcullis_audit::writer::list_segments(dir).unwrap() {
            let bytes = std::fs::read(path).unwrap();
            for line in portcullis_audit::segment::content(&bytes).split(|&b| b == b'\n') {
                if let Ok(portcullis_audit::segment::Line::Record { .. }) =
                    portcullis_audit::segment::Line::classify(line)
                {
                    out.push(serde_json::from_slice(line).unwrap());
                }
            }
        }
        out
    }
}
