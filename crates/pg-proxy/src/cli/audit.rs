//! `pg-proxy audit`: keys, verification, receipts, sessions and replay of
//! the gateway's audit log.
//!
//! Exit codes: `0` success (`verify`: the log is intact, a crash-cut tail
//! included); `1` the log or the receipt does not verify (tampered); `2`
//! bad usage or input that cannot be read.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::{report_line, say_line};
use clap::Subcommand;
use portcullis_audit::note::{NoteSigner, NoteVerifier};
use portcullis_audit::segment::Line;
use portcullis_audit::verify::{Published, VerifyError};
use serde_json::Value;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Write an Ed25519 key pair for signing the log's checkpoints.
    ///
    /// Writes DIR/audit-key.pem (PKCS#8, mode 0600: `[audit]
    /// signing_key_file`) and DIR/audit-key.pub, the verifier key in the
    /// C2SP note format (`origin+keyhash+key`) that `audit verify --key`
    /// and `audit check-proof --key` read. Keep the public key where the
    /// people who check the log can trust it.
    Keygen {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The key's name: the checkpoints' origin line (`[audit] origin`,
        /// default "portcullis").
        #[arg(long, default_value = "portcullis")]
        origin: String,
    },
    /// Prove a log untouched: recompute its hash chain and Merkle tree and
    /// check every signed checkpoint.
    ///
    /// Given checkpoints published earlier (--checkpoint, a file holding
    /// one signed note, e.g. from `audit checkpoint`), also proves that
    /// the log still produces them: a log cut and rewritten does not.
    /// Exit 0: intact (records after the last checkpoint, as a crash
    /// leaves them, are reported as a warning); 1: tampered, with the
    /// first broken place (file:line, record number, what is wrong); 2:
    /// usage, or a file that cannot be read.
    Verify {
        /// The verifier key written by `audit keygen` (DIR/audit-key.pub).
        #[arg(long, value_name = "PUBKEY")]
        key: PathBuf,
        /// A checkpoint published earlier (repeatable).
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// The log directory, or segment files (in order).
        #[arg(value_name = "DIR|FILE", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the latest signed checkpoint of a log, to publish elsewhere
    /// (a ticket, a witness, object storage).
    Checkpoint {
        /// The log directory.
        dir: PathBuf,
    },
    /// Print a receipt for one record: the record, its inclusion proof,
    /// and the signed checkpoint it is proven against (JSON).
    Prove {
        /// The record's number (`seq`).
        #[arg(long)]
        record: u64,
        /// The log directory.
        dir: PathBuf,
    },
    /// Check a receipt offline with the log's public key.
    ///
    /// Exit 0: the record is in the signed log; 1: it is not (or the
    /// checkpoint is not signed by the key); 2: unreadable input.
    CheckProof {
        /// The receipt (from `audit prove`); `-` reads standard input.
        proof: PathBuf,
        /// The verifier key (DIR/audit-key.pub).
        #[arg(long, value_name = "PUBKEY")]
        key: PathBuf,
    },
    /// List the sessions in a log: who, which agent, from where, when, and
    /// what they did.
    Sessions {
        /// Only sessions started since then: a time (2026-12-04T09:00:00Z,
        /// 2026-12-04) or an age (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only sessions of this person (the token's subject).
        #[arg(long)]
        subject: Option<String>,
        /// Only sessions of this agent.
        #[arg(long)]
        actor: Option<String>,
        /// One JSON object per session instead of a table.
        #[arg(long)]
        json: bool,
        /// The log directory.
        dir: PathBuf,
    },
    /// Print one session as a timeline: statements, verdicts and rules,
    /// rows, masked values, errors.
    Replay {
        /// The session id (as `audit sessions` lists it).
        #[arg(long)]
        session: String,
        /// Keep printing what the session does until it ends.
        #[arg(long)]
        follow: bool,
        /// The session's records as JSON lines.
        #[arg(long)]
        json: bool,
        /// The log directory.
        dir: PathBuf,
    },
}

pub(crate) fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Keygen { out, origin } => keygen(&out, &origin),
        AuditCommand::Verify { key, checkpoints, paths } => verify(&key, &checkpoints, &paths),
        AuditCommand::Checkpoint { dir } => checkpoint(&dir),
        AuditCommand::Prove { record, dir } => match portcullis_audit::proof::prove_dir(&dir, record) {
            Ok(receipt) => match serde_json::to_string_pretty(&receipt) {
                Ok(text) => {
                    say!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, &e.to_string()),
            },
            Err(e) => fail(2, &e.to_string()),
        },
        AuditCommand::CheckProof { proof, key } => check_proof(&proof, &key),
        AuditCommand::Sessions { since, subject, actor, json, dir } => {
            let since = match since.as_deref().map(parse_since).transpose() {
                Ok(s) => s,
                Err(e) => return fail(2, &format!("--since: {e}")),
            };
            sessions(&dir, since, subject.as_deref(), actor.as_deref(), json)
        }
        AuditCommand::Replay { session, follow, json, dir } => replay(&dir, &session, follow, json),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn keygen(out: &Path, origin: &str) -> ExitCode {
    if let Err(e) = NoteSigner::generate(origin) {
        return fail(2, &format!("--origin: {e}"));
    }
    match pg_proxy::audit::keygen(out, origin) {
        Ok((key, public)) => {
            say!("wrote {} (private: [audit] signing_key_file)", key.display());
            say!("wrote {} (public: audit verify --key)", public.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e),
    }
}

/// Reads a verifier key file (`origin+keyhash+key`).
fn read_key(path: &Path) -> Result<NoteVerifier, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--key {}: {e}", path.display()))?;
    NoteVerifier::from_vkey(text.trim()).map_err(|e| format!("--key {}: {e}", path.display()))
}

fn verify(key: &Path, checkpoints: &[PathBuf], paths: &[PathBuf]) -> ExitCode {
    let verifier = match read_key(key) {
        Ok(v) => v,
        Err(e) => return fail(2, &e),
    };
    let mut published = Vec::new();
    for file in checkpoints {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return fail(2, &format!("--checkpoint {}: {e}", file.display())),
        };
        // A note ends with one newline; a file saved by a tool (psql's
        // unaligned output, an editor) may add more.
        let text = format!("{}\n", text.trim_end_matches(['\n', '\r']));
        match portcullis_audit::note::open(&text, &verifier) {
            Ok(checkpoint) => published.push(Published { source: file.display().to_string(), checkpoint }),
            Err(e) => {
                report!("TAMPERED: {}: the published checkpoint does not verify with the key: {e}", file.display());
                return ExitCode::from(1);
            }
        }
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match portcullis_audit::writer::list_segments(path) {
                Ok(s) if s.is_empty() => return fail(2, &format!("{}: no audit log segments there", path.display())),
                Ok(s) => files.extend(s.into_iter().map(|(_, p)| p)),
                Err(e) => return fail(2, &format!("{}: {e}", path.display())),
            }
        } else {
            files.push(path.clone());
        }
    }
    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let mut progress = Progress::new(total);
    let started = std::time::Instant::now();
    let result = portcullis_audit::verify::verify_files(&files, &verifier, &published, &mut |n| progress.advance(n));
    progress.done();
    match result {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            let seconds = started.elapsed().as_secs_f64();
            say!(
                "intact: records {}..{} ({} records) in {} segment file(s), {} checkpoints signed by {}{}{}",
                report.first,
                report.size.saturating_sub(1),
                report.records(),
                report.files,
                report.checkpoints,
                verifier.name(),
                if report.published_checked > 0 {
                    format!(", {} published checkpoint(s) matched", report.published_checked)
                } else {
                    String::new()
                },
                if report.closed { ", closed" } else { "" },
            );
            if report.tail > 0 && !report.closed {
                say!(
                    "ends at record {}, {} records after checkpoint {}",
                    report.size.saturating_sub(1),
                    report.tail,
                    report.last_checkpoint
                );
            }
            if seconds > 0.0 && std::io::stderr().is_terminal() {
                eprintln!("{:.0} MB/s", report.bytes as f64 / seconds / 1e6);
            }
            ExitCode::SUCCESS
        }
        Err(VerifyError::Tampered { place, what }) => {
            report!("TAMPERED: {place}: {what}");
            ExitCode::from(1)
        }
        Err(e) => fail(2, &e.to_string()),
    }
}

/// A progress line on standard error, when it is a terminal.
struct Progress {
    total: u64,
    seen: u64,
    shown: u64,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { total, seen: 0, shown: 0, on: std::io::stderr().is_terminal() && total > 0 }
    }

    fn advance(&mut self, bytes: u64) {
        self.seen += bytes;
        let percent = self.seen * 100 / self.total.max(1);
        if self.on && percent != self.shown {
            self.shown = percent;
            eprint!("\rverifying: {percent:3}% ({} of {} MB)", self.seen / 1_000_000, self.total / 1_000_000);
        }
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

fn checkpoint(dir: &Path) -> ExitCode {
    let segments = match portcullis_audit::writer::list_segments(dir) {
        Ok(s) => s,
        Err(e) => return fail(2, &format!("{}: {e}", dir.display())),
    };
    let mut latest = None;
    for (_, path) in segments.iter().rev() {
        let Ok(bytes) = std::fs::read(path) else { continue };
        for line in portcullis_audit::segment::content(&bytes).split(|&b| b == b'\n') {
            match Line::classify(line) {
                Ok(Line::Checkpoint(c)) => latest = Some(c),
                Ok(Line::Header(h)) => latest = Some(h.checkpoint),
                _ => {}
            }
        }
        if latest.is_some() {
            break;
        }
    }
    match latest {
        Some(note) => {
            say!("{}", note.trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        None => fail(2, &format!("{}: no checkpoint found", dir.display())),
    }
}

fn check_proof(proof: &Path, key: &Path) -> ExitCode {
    let verifier = match read_key(key) {
        Ok(v) => v,
        Err(e) => return fail(2, &e),
    };
    let text = if proof == Path::new("-") {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => s,
            Err(e) => return fail(2, &format!("standard input: {e}")),
        }
    } else {
        match std::fs::read_to_string(proof) {
            Ok(t) => t,
            Err(e) => return fail(2, &format!("{}: {e}", proof.display())),
        }
    };
    let receipt: portcullis_audit::proof::Receipt = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => return fail(2, &format!("{}: not a receipt: {e}", proof.display())),
    };
    match portcullis_audit::proof::check(&receipt, &verifier) {
        Ok(()) => {
            say!(
                "ok: record {} is in the log signed by {} (tree of {} records)",
                receipt.record,
                verifier.name(),
                receipt.size
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report!("INVALID: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--since`: a time, or an age.
fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Some(t) = portcullis_audit::time::parse_utc(text) {
        return Ok(t);
    }
    let age = pg_proxy::config::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither a time (2026-12-04T09:00:00Z) nor an age (2h, 7d)"))?;
    Ok(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Every record of a log, in order, as JSON.
pub(crate) fn records(dir: &Path) -> Result<Vec<Value>, String> {
    pg_proxy::audit::read_records(dir)
}

/// One session, summed up from its records.
#[derive(Default, serde::Serialize)]
struct Session {
    session: String,
    subject: String,
    actor: Option<String>,
    client: String,
    application: String,
    start: String,
    end: Option<String>,
    seconds: Option<f64>,
    statements: u64,
    refused: u64,
    masked: u64,
    errors: u64,
}

fn summarise(records: &[Value]) -> Vec<Session> {
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut order = Vec::new();
    for r in records {
        let (Some(kind), Some(id)) = (r["type"].as_str(), r["session"].as_str()) else { continue };
        let s = sessions.entry(id.to_string()).or_insert_with(|| {
            order.push(id.to_string());
            Session { session: id.to_string(), start: str_of(&r["time"]), ..Session::default() }
        });
        match kind {
            "session_start" => {
                s.subject = str_of(&r["subject"]);
                s.actor = r["actor"].as_str().map(str::to_string);
                s.client = str_of(&r["client"]);
                s.application = str_of(&r["application"]);
                s.start = str_of(&r["time"]);
            }
            "statement" => {
                s.statements += 1;
                if r["verdict"].as_str() != Some("allow") {
                    s.refused += 1;
                }
            }
            "result" => {
                s.masked += r["masked"].as_u64().unwrap_or(0);
                if r["error"].is_object() {
                    s.errors += 1;
                }
            }
            "session_end" => {
                s.end = Some(str_of(&r["time"]));
                s.seconds = r["seconds"].as_f64();
            }
            _ => {}
        }
    }
    order.into_iter().filter_map(|id| sessions.remove(&id)).collect()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn sessions(dir: &Path, since: Option<SystemTime>, subject: Option<&str>, actor: Option<&str>, json: bool) -> ExitCode {
    let records = match records(dir) {
        Ok(r) => r,
        Err(e) => return fail(2, &e),
    };
    let list: Vec<Session> = summarise(&records)
        .into_iter()
        .filter(|s| since.is_none_or(|t| portcullis_audit::time::parse_utc(&s.start).is_some_and(|start| start >= t)))
        .filter(|s| subject.is_none_or(|w| s.subject == w))
        .filter(|s| actor.is_none_or(|w| s.actor.as_deref() == Some(w)))
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        for s in &list {
            let _ = writeln!(out, "{}", serde_json::to_string(s).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|s| {
            [
                s.session.clone(),
                s.subject.clone(),
                s.actor.clone().unwrap_or_else(|| "-".into()),
                s.client.clone(),
                s.start.get(..19).unwrap_or(&s.start).replace('T', " "),
                s.seconds.map_or_else(|| "open".to_string(), |d| format_duration(Duration::from_secs_f64(d))),
                s.statements.to_string(),
                s.refused.to_string(),
                s.masked.to_string(),
            ]
        })
        .collect();
    let header = ["SESSION", "PERSON", "AGENT", "CLIENT", "START (UTC)", "DURATION", "STATEMENTS", "REFUSED", "MASKED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_string)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    ExitCode::SUCCESS
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

/// Colours, on a terminal only (and not with NO_COLOR).
struct Paint {
    on: bool,
}

impl Paint {
    fn new() -> Paint {
        Paint { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

fn replay(dir: &Path, session: &str, follow: bool, json: bool) -> ExitCode {
    let paint = Paint::new();
    let mut start: Option<SystemTime> = None;
    // Only what is new is read on each turn.
    let mut tail = pg_proxy::audit::RecordTail::new(dir);
    let mut seen = false;
    loop {
        let records = match tail.read_new() {
            Ok(r) => r,
            Err(e) => return fail(2, &e),
        };
        let mine: Vec<&Value> = records.iter().filter(|r| r["session"].as_str() == Some(session)).collect();
        seen |= !mine.is_empty();
        if !seen && !follow {
            return fail(2, &format!("no session {session} in {}", dir.display()));
        }
        let mut ended = false;
        for r in &mine {
            if json {
                say!("{r}");
            } else {
                let time = portcullis_audit::time::parse_utc(&str_of(&r["time"]));
                if start.is_none() {
                    start = time;
                }
                let offset = match (start, time) {
                    (Some(s), Some(t)) => t.duration_since(s).unwrap_or_default().as_secs_f64(),
                    _ => 0.0,
                };
                say!("{}", timeline_line(r, offset, &paint));
            }
            ended |= r["type"].as_str() == Some("session_end");
        }
        if !follow || ended {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn timeline_line(r: &Value, offset: f64, paint: &Paint) -> String {
    let at = paint.wrap("2", &format!("{offset:>9.3}s"));
    match r["type"].as_str().unwrap_or_default() {
        "session_start" => {
            let agent = r["actor"].as_str().map(|a| format!(" (agent {a})")).unwrap_or_default();
            format!(
                "{at}  {} {}{agent} from {}, {}{}",
                paint.wrap("1", "session start:"),
                str_of(&r["subject"]),
                str_of(&r["client"]),
                if str_of(&r["application"]).is_empty() {
                    "no application name".into()
                } else {
                    str_of(&r["application"])
                },
                if r["tls"].as_bool() == Some(true) { ", TLS" } else { "" }
            )
        }
        "statement" => {
            let verdict = str_of(&r["verdict"]);
            let colour = match verdict.as_str() {
                "allow" => "32",
                "deny" => "31",
                _ => "33",
            };
            let rule = r["rule"].as_str().map(|x| format!(" [{x}]")).unwrap_or_default();
            let sql: String = str_of(&r["sql"]).split_whitespace().collect::<Vec<_>>().join(" ");
            let mut line = format!("{at}  #{} {}{rule}  {sql}", r["n"], paint.wrap(colour, &verdict.to_uppercase()));
            if verdict != "allow" {
                let reason = r.pointer("/decision/reason").and_then(Value::as_str).unwrap_or_default();
                line.push_str(&format!("\n{:>12}  {}", "", paint.wrap("2", &format!("why: {reason}"))));
            }
            line
        }
        "result" => {
            let mut parts = Vec::new();
            if let Some(tags) = r["tags"].as_array() {
                parts.extend(tags.iter().filter_map(Value::as_str).map(str::to_string));
            }
            parts.push(format!("{} rows", r["rows"]));
            if r["masked"].as_u64().unwrap_or(0) > 0 {
                parts.push(paint.wrap("35", &format!("{} masked", r["masked"])));
            }
            if let Some(ms) = r["ms"].as_f64() {
                parts.push(format!("{ms:.1} ms"));
            }
            if r["ran"].as_bool() == Some(false) && !r["error"].is_object() {
                parts.push("not run".into());
            }
            if r["error"].is_object() {
                parts.push(paint.wrap(
                    "31",
                    &format!(
                        "ERROR {}: {}",
                        r.pointer("/error/code").map(str_of).unwrap_or_default(),
                        r.pointer("/error/message").map(str_of).unwrap_or_default()
                    ),
                ));
            }
            format!("{at}    #{} → {}", r["n"], parts.join(" · "))
        }
        "session_end" => format!("{at}  {} {}", paint.wrap("1", "session end:"), str_of(&r["reason"])),
        "approval" => {
            let by: Vec<String> = r["by"].as_array().map_or(Vec::new(), |a| a.iter().map(str_of).collect());
            let mut line =
                format!("{at}  {} {} {}", paint.wrap("35", "approval"), str_of(&r["request"]), str_of(&r["event"]));
            if !by.is_empty() {
                line.push_str(&format!(" by {}", by.join(", ")));
            }
            if let Some(reason) = r["reason"].as_str() {
                line.push_str(&format!(": {reason}"));
            }
            if let Some(grant) = r["grant"].as_str() {
                line.push_str(&format!(" (grant {grant})"));
            }
            line
        }
        other => format!("{at}  {other}"),
    }
}
