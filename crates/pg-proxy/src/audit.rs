//! The audit log behind the sessions' record sink.
//!
//! ```text
//!  session ─┐  persist(records) ──▶ ┌──────────── writer thread ────────────┐
//!  session ─┼─ log(records) ──────▶ │ drain the queue (many sessions' jobs) │
//!  session ─┘       ◀── ack ─────── │ append ─▶ write(2) ─▶ fdatasync?      │ ──▶ DIR/audit-*.jsonl
//!                                   │ checkpoint every interval, at the end │
//!                                   └───────────────────────────────────────┘
//! ```
//!
//! One thread owns the [`Writer`]: it takes every job queued since its last
//! turn, appends their records, hands them to the OS in one write, syncs
//! once if any job asked for it (group commit), then answers each job. A
//! session waits for its answer before it forwards the statements the
//! records describe; a failed write or sync refuses them
//! ([`RecordError`]), and the next job tries again (in a new segment).
//!
//! Records are serialised by the sessions (JSON objects starting with
//! their `"type"`); the writer puts the number, the previous hash and the
//! time in front. The schema: `docs/audit.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use portcullis_audit::note::NoteSigner;
use portcullis_audit::writer::{Writer, WriterOptions};
use serde::Serialize;

use crate::config::{AuditSettings, Durability};
use crate::session::record::{Persisting, Record, RecordError, RecordSink};

/// Values of parameters longer than this are cut in records.
const MAX_PARAMETER_BYTES: usize = 1024;

/// Jobs taken in one turn of the writer, at most.
const MAX_JOBS_PER_TURN: usize = 4096;

/// One session's records for the writer.
enum Job {
    Write { bodies: Vec<String>, sync: bool, ack: Option<tokio::sync::oneshot::Sender<Result<(), RecordError>>> },
    Close(mpsc::Sender<()>),
}

/// Counters of the writer, for the log line at close and for benchmarks.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records appended.
    pub records: AtomicU64,
    /// `write(2)` calls of record batches.
    pub writes: AtomicU64,
    /// `fdatasync` calls for statements.
    pub syncs: AtomicU64,
    /// Jobs refused because the log could not be written.
    pub failures: AtomicU64,
}

/// The gateway's audit log: a [`RecordSink`] backed by a writer thread.
#[derive(Debug)]
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    durability: Durability,
    record_parameters: bool,
    /// Prefix of session ids: this process's own, so that ids never repeat
    /// across restarts and replicas.
    boot: String,
    replica: String,
    /// The writer's counters.
    pub stats: Arc<AuditStats>,
    /// Whether the last write failed (for readiness).
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
    #[error("[audit] starting the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Every record of the log in `dir`, in order, as JSON (headers and
/// checkpoints left out; the log is not verified here).
pub fn read_records(dir: &std::path::Path) -> Result<Vec<serde_json::Value>, String> {
    use portcullis_audit::segment::Line;
    let segments = portcullis_audit::writer::list_segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if segments.is_empty() {
        return Err(format!("{}: no audit log segments there", dir.display()));
    }
    let mut out = Vec::new();
    for (_, path) in segments {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in bytes.split(|&b| b == b'\n') {
            if matches!(Line::classify(line), Ok(Line::Record { .. })) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

/// Reads an Ed25519 signing key (PKCS#8 PEM) for `origin`.
pub fn load_signer(path: &std::path::Path, origin: &str) -> Result<NoteSigner, AuditError> {
    let key = |message: String| AuditError::Key { path: path.to_path_buf(), message };
    let pem = std::fs::read_to_string(path).map_err(|e| key(e.to_string()))?;
    NoteSigner::from_pkcs8_pem(origin, &pem).map_err(|e| key(e.to_string()))
}

impl AuditLog {
    /// Opens (or continues) the log the settings name and starts its
    /// writer.
    pub fn open(settings: &AuditSettings) -> Result<AuditLog, AuditError> {
        let signer = load_signer(&settings.signing_key_file, &settings.origin)?;
        let mut options = WriterOptions::new(&settings.dir, signer);
        options.segment_bytes = settings.segment_bytes;
        options.keep = settings.keep;
        let writer = Writer::open(options)?;
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(AuditStats::default());
        let failing = Arc::new(AtomicBool::new(false));
        let interval = settings.checkpoint_interval;
        let thread = {
            let (stats, failing) = (Arc::clone(&stats), Arc::clone(&failing));
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write_loop(writer, &queue, interval, &stats, &failing))
                .map_err(AuditError::Thread)?
        };
        let boot = {
            use rand::RngCore;
            format!("{:08x}", rand::thread_rng().next_u32())
        };
        Ok(AuditLog {
            jobs,
            durability: settings.durability,
            record_parameters: settings.record_parameters,
            boot,
            replica: settings.replica.clone(),
            stats,
            failing,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes what is queued, a closing checkpoint, and stops the writer.
    /// Records sent after this are refused.
    pub fn close(&self) {
        let (done, wait) = mpsc::channel();
        if self.jobs.send(Job::Close(done)).is_ok() {
            let _ = wait.recv();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    /// The session id written in records: this process's prefix and the
    /// session's number.
    pub fn session_id(&self, session: u64) -> String {
        format!("{}-{session}", self.boot)
    }

    /// A record as the JSON object the writer appends.
    pub fn body(&self, record: &Record) -> String {
        let out = match record {
            Record::Statement(s) => serde_json::to_string(&StatementBody {
                kind: "statement",
                session: self.session_id(s.session),
                n: s.sequence,
                sql: &s.sql,
                params: self.record_parameters.then(|| s.parameters.iter().map(|p| Param::of(p.as_deref())).collect()),
                fingerprint: fingerprint(&s.decision),
                policy: &s.policy,
                verdict: s.decision.verdict,
                observed: s.observed,
                rule: s.decision.rule.as_deref(),
                decision: &s.decision,
            }),
            Record::Result(r) => serde_json::to_string(&ResultBody {
                kind: "result",
                session: self.session_id(r.session),
                n: r.sequence,
                ran: r.ran,
                tags: &r.tags,
                rows: r.rows,
                masked: r.masked,
                ms: r.duration.as_secs_f64() * 1000.0,
                error: r.error.as_ref().map(|e| ErrorBody { code: &e.code, message: &e.message }),
                kept_rows: &r.kept_rows,
            }),
            Record::SessionStart(s) => serde_json::to_string(&StartBody {
                kind: "session_start",
                session: self.session_id(s.session),
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
            }),
            Record::SessionEnd(e) => serde_json::to_string(&EndBody {
                kind: "session_end",
                session: self.session_id(e.session),
                reason: &e.reason,
                seconds: e.duration.as_secs_f64(),
            }),
        };
        // Serialising these types does not fail; should it, the record
        // still says what it was.
        out.unwrap_or_else(|e| format!("{{\"type\":\"unserialisable\",\"error\":{:?}}}", e.to_string()))
    }

    fn send(
        &self,
        records: &[Record],
        sync: bool,
        ack: Option<tokio::sync::oneshot::Sender<Result<(), RecordError>>>,
    ) -> bool {
        let bodies = records.iter().map(|r| self.body(r)).collect();
        self.jobs.send(Job::Write { bodies, sync, ack }).is_ok()
    }
}

impl RecordSink for AuditLog {
    fn persist(&self, records: Vec<Record>) -> Persisting {
        let sync = match self.durability {
            Durability::Every => true,
            Durability::None => false,
            Durability::Commit => records.iter().any(|r| matches!(r, Record::Statement(s) if s.durable)),
        };
        let (ack, answer) = tokio::sync::oneshot::channel();
        if !self.send(&records, sync, Some(ack)) {
            return Box::pin(std::future::ready(Err(RecordError("the audit log is closed".into()))));
        }
        Box::pin(
            async move { answer.await.unwrap_or_else(|_| Err(RecordError("the audit log's writer stopped".into()))) },
        )
    }

    fn log(&self, records: Vec<Record>) {
        if !records.is_empty() && !self.send(&records, false, None) {
            tracing::warn!(records = records.len(), "the audit log is closed; records dropped");
        }
    }
}

/// The writer thread: turns until the log is closed or every sender left.
fn write_loop(
    mut writer: Writer,
    queue: &mpsc::Receiver<Job>,
    interval: Duration,
    stats: &AuditStats,
    failing: &AtomicBool,
) {
    let mut next_checkpoint = Instant::now() + interval;
    let mut jobs = Vec::new();
    let closing = loop {
        let wait = next_checkpoint.saturating_duration_since(Instant::now());
        match queue.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        while jobs.len() < MAX_JOBS_PER_TURN {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let close = turn(&mut writer, &mut jobs, stats, failing);
        if close.is_some() {
            break close;
        }
        if Instant::now() >= next_checkpoint {
            if writer.needs_checkpoint() {
                if let Err(e) = writer.checkpoint() {
                    tracing::error!("audit log: writing a checkpoint: {e}");
                }
            }
            next_checkpoint = Instant::now() + interval;
        }
    };
    let records = stats.records.load(Ordering::Relaxed);
    match writer.close() {
        Ok(()) => tracing::info!(
            records,
            writes = stats.writes.load(Ordering::Relaxed),
            syncs = stats.syncs.load(Ordering::Relaxed),
            "audit log closed"
        ),
        Err(e) => tracing::error!("audit log: closing: {e}"),
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// One turn: the jobs' records appended, written, synced if asked, and
/// answered. Returns the closer's channel when a job asked to close.
fn turn(
    writer: &mut Writer,
    jobs: &mut Vec<Job>,
    stats: &AuditStats,
    failing: &AtomicBool,
) -> Option<mpsc::Sender<()>> {
    let mut close = None;
    let mut sync = false;
    let mut acks = Vec::new();
    let mut outcome: Result<(), String> = Ok(());
    let now = SystemTime::now();
    for job in jobs.drain(..) {
        match job {
            Job::Write { bodies, sync: s, ack } => {
                sync |= s;
                for body in &bodies {
                    if let Err(e) = writer.append(body, now) {
                        outcome = Err(e.to_string());
                    }
                }
                stats.records.fetch_add(bodies.len() as u64, Ordering::Relaxed);
                if let Some(ack) = ack {
                    acks.push((ack, s));
                }
            }
            Job::Close(done) => close = Some(done),
        }
    }
    if outcome.is_ok() {
        outcome = writer.write().map_err(|e| e.to_string());
        stats.writes.fetch_add(1, Ordering::Relaxed);
    }
    // What was written stays written: a failed sync refuses only the
    // statements that waited for it.
    let synced = match (&outcome, sync) {
        (Ok(()), true) => {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            writer.sync().map_err(|e| e.to_string())
        }
        _ => Ok(()),
    };
    let failed = outcome.is_err() || synced.is_err();
    if failed && !failing.swap(true, Ordering::Relaxed) {
        let e = outcome.as_ref().err().or(synced.as_ref().err()).cloned().unwrap_or_default();
        tracing::error!("audit log: {e}; statements are refused until it can be written again");
    } else if !failed && failing.swap(false, Ordering::Relaxed) {
        tracing::warn!("audit log: writing again");
    }
    for (ack, wanted_sync) in acks {
        let answer = match (&outcome, &synced) {
            (Err(e), _) => Err(RecordError(e.clone())),
            (Ok(()), Err(e)) if wanted_sync => Err(RecordError(e.clone())),
            _ => Ok(()),
        };
        if answer.is_err() {
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        let _ = ack.send(answer);
    }
    close
}

/// The fingerprints of a decision's statements, joined by `+`.
fn fingerprint(decision: &policy_core::Decision) -> String {
    let mut out = String::new();
    for (i, s) in decision.statements.iter().enumerate() {
        if i > 0 {
            out.push('+');
        }
        out.push_str(&s.facts.fingerprint);
    }
    out
}

#[derive(Serialize)]
struct StatementBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session: String,
    n: u64,
    sql: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Vec<Param<'a>>>,
    fingerprint: String,
    policy: &'a str,
    verdict: policy_core::Verdict,
    /// Observe mode forwarded it although the verdict is not `allow`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    observed: bool,
    rule: Option<&'a str>,
    decision: &'a policy_core::Decision,
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
struct ResultBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session: String,
    n: u64,
    ran: bool,
    tags: &'a [String],
    rows: u64,
    masked: u64,
    ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody<'a>>,
    /// The first rows as the client got them (masked), with `record_rows`.
    #[serde(rename = "rows_kept", skip_serializing_if = "<[_]>::is_empty")]
    kept_rows: &'a [Vec<Option<String>>],
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
    session: String,
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
    session: String,
    reason: &'a str,
    seconds: f64,
}
