//! Proving a log untouched: the chain, the tree and every checkpoint
//! recomputed from the files.
//!
//! Segments are read in order. Each segment's header must take the tree up
//! exactly where the segment before it left it (the same record number,
//! previous hash and frontier) and its signed checkpoint must match; each
//! record must carry the next number and the hash of the record before it;
//! each checkpoint must be signed by the given key and match the tree of
//! the records before it. Checkpoints published elsewhere are checked
//! against the tree at their size: a log cut and rewritten no longer
//! produces their roots.
//!
//! What is not tampering: a log whose last records come after its last
//! checkpoint (the gateway stopped without closing the log, e.g. a crash):
//! [`Report::tail`] says how many, and a torn last line (a write cut by
//! the crash) is ignored.
//!
//! ```
//! use portcullis_audit::note::NoteSigner;
//! use portcullis_audit::verify::{verify_dir, VerifyError};
//! use portcullis_audit::writer::{Writer, WriterOptions};
//! let dir = std::env::temp_dir().join(format!("audit-verify-doc-{}", std::process::id()));
//! let signer = NoteSigner::generate("example.org/audit").unwrap();
//! let verifier = signer.verifier();
//! let mut w = Writer::open(WriterOptions::new(&dir, signer)).unwrap();
//! for i in 0..3 {
//!     w.append(&format!(r#"{{"type":"note","n":{i}}}"#), std::time::SystemTime::now()).unwrap();
//! }
//! w.close().unwrap();
//! assert_eq!(verify_dir(&dir, &verifier, &[], &mut |_| {}).unwrap().records(), 3);
//!
//! // One changed byte is found, and where.
//! let file = dir.join("audit-000000000000.jsonl");
//! let text = std::fs::read_to_string(&file).unwrap().replace(r#""n":1"#, r#""n":7"#);
//! std::fs::write(&file, text).unwrap();
//! let Err(VerifyError::Tampered { place, .. }) = verify_dir(&dir, &verifier, &[], &mut |_| {}) else { panic!() };
//! assert_eq!(place.line, 4);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::path::{Path, PathBuf};

use crate::note::{self, Checkpoint, NoteVerifier};
use crate::segment::{hash_from_hex, hex, segment_index, Header, Line, NO_PREVIOUS, SCHEMA_VERSION};
use crate::tree::{leaf_hash, Frontier, Hash};
use crate::writer::CLOSED;

/// A place in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1 (0: the file as a whole).
    pub line: u64,
    /// The record expected there.
    pub record: Option<u64>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(r) = self.record {
            write!(f, " (record {r})")?;
        }
        Ok(())
    }
}

/// Why a log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log was altered: the first place found, and what is wrong.
    #[error("{place}: {what}")]
    Tampered {
        /// Where.
        place: Place,
        /// What is wrong there.
        what: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Nothing to verify.
    #[error("{0}: no audit log segments (audit-*.jsonl) there")]
    Empty(PathBuf),
}

/// A checkpoint published earlier (kept in a ticket, a witness, object
/// storage), opened with the key.
#[derive(Debug, Clone)]
pub struct Published {
    /// Where it came from, for messages.
    pub source: String,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
}

/// What a log that verifies holds.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Segment files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// The first record kept (older segments may have been deleted).
    pub first: u64,
    /// The tree's size at the end: the number after the last record.
    pub size: u64,
    /// The tree's root at the end.
    pub root: Hash,
    /// Checkpoints checked (headers included).
    pub checkpoints: u64,
    /// The size of the last checkpoint.
    pub last_checkpoint: u64,
    /// Records after the last checkpoint, when the log was not closed.
    pub tail: u64,
    /// Whether the log ends with a closing checkpoint.
    pub closed: bool,
    /// Published checkpoints matched against the tree.
    pub published_checked: usize,
    /// Things that are not tampering but worth saying (a crash, deleted
    /// segments, published checkpoints older than what is kept).
    pub warnings: Vec<String>,
}

impl Report {
    /// Records read.
    pub fn records(&self) -> u64 {
        self.size - self.first
    }
}

/// Where a log's last segment leaves the tree: what a writer continues.
#[derive(Debug, Clone)]
pub struct ResumeState {
    /// The tree.
    pub frontier: Frontier,
    /// The hash of the last record.
    pub prev: Hash,
    /// Bytes of log in the segment: the zeros a writer had reserved after
    /// them are not.
    pub length: u64,
}

/// Verifies every segment in `dir`.
pub fn verify_dir(
    dir: &Path,
    verifier: &NoteVerifier,
    published: &[Published],
    progress: &mut dyn FnMut(u64),
) -> Result<Report, VerifyError> {
    let segments = crate::writer::list_segments(dir)
        .map_err(|source| VerifyError::Unreadable { path: dir.to_path_buf(), source })?;
    if segments.is_empty() {
        return Err(VerifyError::Empty(dir.to_path_buf()));
    }
    let files: Vec<PathBuf> = segments.into_iter().map(|(_, p)| p).collect();
    verify_files(&files, verifier, published, progress)
}

/// Verifies segment files, in the order of their indices; they must be
/// consecutive.
pub fn verify_files(
    files: &[PathBuf],
    verifier: &NoteVerifier,
    published: &[Published],
    progress: &mut dyn FnMut(u64),
) -> Result<Report, VerifyError> {
    let mut replay = Replay::new(verifier, published);
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| VerifyError::Unreadable { path: path.clone(), source })?;
        replay.segment(path, &bytes)?;
        progress(bytes.len() as u64);
    }
    replay.finish()
}

/// Verifies one segment held in memory, named `name` in messages (the
/// fuzz target's entry, and a reader's of a segment received elsewhere).
pub fn verify_bytes(
    name: &Path,
    bytes: &[u8],
    verifier: &NoteVerifier,
    published: &[Published],
) -> Result<Report, VerifyError> {
    let mut replay = Replay::new(verifier, published);
    replay.segment(name, bytes)?;
    replay.finish()
}

/// Reads the last segment of a log to continue it: it must verify on its
/// own (from its header), and may end in a crash's torn line.
pub fn resume_state(path: &Path, verifier: &NoteVerifier) -> Result<ResumeState, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut replay = Replay::new(verifier, &[]);
    replay.segment(path, &bytes).map_err(|e| e.to_string())?;
    let length = crate::segment::content(&bytes).len() as u64;
    Ok(ResumeState { frontier: replay.frontier, prev: replay.prev, length })
}

/// The most bytes a write cut short by a crash can leave part-copied at
/// the end of a segment: one batch of records (the writer copies a batch
/// in pieces of at most its mapping's chunk, 1 MiB; a batch of many
/// sessions' records spans a few).
pub const MAX_TORN_BYTES: usize = 4 << 20;

/// The verifier's state between lines.
struct Replay<'a> {
    verifier: &'a NoteVerifier,
    published: &'a [Published],
    report: Report,
    frontier: Frontier,
    prev: Hash,
    /// The segment read last.
    segment: Option<u64>,
}

impl<'a> Replay<'a> {
    fn new(verifier: &'a NoteVerifier, published: &'a [Published]) -> Replay<'a> {
        Replay {
            verifier,
            published,
            report: Report::default(),
            frontier: Frontier::new(),
            prev: NO_PREVIOUS,
            segment: None,
        }
    }

    fn segment(&mut self, path: &Path, bytes: &[u8]) -> Result<(), VerifyError> {
        let bytes = crate::segment::content(bytes);
        self.report.files += 1;
        self.report.bytes += bytes.len() as u64;
        let mut rest = bytes;
        let mut line_no = 0u64;
        let tampered = |line: u64, record: Option<u64>, what: String| VerifyError::Tampered {
            place: Place { file: path.to_path_buf(), line, record },
            what,
        };
        while !rest.is_empty() {
            line_no += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                // A last line without its newline: a write cut short. The
                // segment after it, if any, must take the log up from the
                // last whole record.
                self.report.warnings.push(format!(
                    "{}:{line_no}: the last line is incomplete ({} bytes): a write cut short by a crash",
                    path.display(),
                    rest.len()
                ));
                break;
            };
            let (line, after) = rest.split_at(end);
            if line.contains(&0) {
                // A NUL byte is never in a line the writer wrote (records
                // are JSON text): it is a byte of a copy the writer had not
                // finished when the process died, which fills a batch's
                // place in the reserved zeros in no fixed order. The log
                // ends before it, as after an incomplete last line; more
                // than one batch's worth after it is no crash.
                if rest.len() > MAX_TORN_BYTES {
                    return Err(tampered(
                        line_no,
                        Some(self.frontier.size()),
                        format!(
                            "a NUL byte in a line followed by {} more bytes: a crash tears only the last write",
                            rest.len() - line.len()
                        ),
                    ));
                }
                self.report.warnings.push(format!(
                    "{}:{line_no}: the last {} bytes hold records copied in part (zeros where the copy had not \
                     reached): a write cut short by a crash",
                    path.display(),
                    rest.len()
                ));
                break;
            }
            rest = after.get(1..).unwrap_or_default();
            let record = Some(self.frontier.size());
            let kind = Line::classify(line).map_err(|e| tampered(line_no, record, e.to_string()))?;
            match kind {
                Line::Header(header) if line_no == 1 => {
                    self.header(path, &header).map_err(|what| tampered(1, record, what))?;
                }
                Line::Header(_) => {
                    return Err(tampered(line_no, record, "a segment header in the middle of a segment".into()))
                }
                _ if line_no == 1 => {
                    return Err(tampered(1, None, "the segment does not begin with its header".into()))
                }
                Line::Record { seq, prev } => {
                    let expected = self.frontier.size();
                    if self.report.closed {
                        return Err(tampered(
                            line_no,
                            record,
                            "a record after the checkpoint that closed the log".into(),
                        ));
                    }
                    if seq != expected {
                        return Err(tampered(line_no, record, format!("record number {seq} where {expected} was due")));
                    }
                    if prev != self.prev {
                        return Err(tampered(
                            line_no,
                            record,
                            format!(
                                "the chain is broken: it names {} as the record before it, which hashes to {}",
                                hex(&prev),
                                hex(&self.prev)
                            ),
                        ));
                    }
                    let leaf = leaf_hash(line);
                    self.frontier.push(leaf);
                    self.prev = leaf;
                    self.report.tail += 1;
                    self.check_published().map_err(|what| tampered(line_no, record, what))?;
                }
                Line::Checkpoint(text) => {
                    let c = self.open(&text).map_err(|what| tampered(line_no, record, what))?;
                    self.match_tree(&c).map_err(|what| tampered(line_no, record, what))?;
                    if c.extensions.iter().any(|e| e == CLOSED) {
                        self.report.closed = true;
                    }
                }
            }
        }
        if line_no == 0 {
            return Err(tampered(0, None, "an empty segment (its header is missing)".into()));
        }
        Ok(())
    }

    fn header(&mut self, path: &Path, header: &Header) -> Result<(), String> {
        if header.kind != "segment" || header.v != SCHEMA_VERSION {
            return Err(format!("a header of kind {:?}, version {}", header.kind, header.v));
        }
        if let Some(named) = path.file_name().and_then(|n| n.to_str()).and_then(segment_index) {
            if named != header.segment {
                return Err(format!("the file is named for segment {named} but its header says {}", header.segment));
            }
        }
        let nodes = header
            .frontier
            .iter()
            .map(|h| hash_from_hex(h).ok_or_else(|| format!("an unreadable frontier hash {h:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let frontier = Frontier::from_parts(header.first, nodes).map_err(|e| e.to_string())?;
        let prev = hash_from_hex(&header.prev).ok_or("an unreadable previous hash")?;
        let c = self.open(&header.checkpoint)?;
        if c.size != frontier.size() || c.root != frontier.root() {
            return Err(format!(
                "the header's checkpoint (size {}) does not match its frontier (size {})",
                c.size,
                frontier.size()
            ));
        }
        match self.segment {
            Some(before) => {
                if header.segment != before + 1 {
                    return Err(format!(
                        "segment {} follows segment {before}: {} missing",
                        header.segment,
                        if header.segment > before + 1 {
                            "segments are"
                        } else {
                            "the order is wrong, or segments are"
                        }
                    ));
                }
                if header.first != self.frontier.size() || prev != self.prev || frontier != self.frontier {
                    return Err(format!(
                        "the segment takes the log up at record {} but the segment before it ends at record {}, \
                         or with other hashes",
                        header.first,
                        self.frontier.size()
                    ));
                }
                if self.report.tail > 0 && !self.report.closed {
                    self.report.warnings.push(format!(
                        "the log was not closed at record {} (a crash?); the gateway resumed in segment {}",
                        header.first, header.segment
                    ));
                }
            }
            None => {
                self.frontier = frontier;
                self.prev = prev;
                self.report.first = header.first;
                if header.first > 0 {
                    self.report.warnings.push(format!(
                        "the log kept here starts at record {} (older segments were deleted or not given)",
                        header.first
                    ));
                }
                for p in self.published {
                    if p.checkpoint.size < header.first {
                        self.report.warnings.push(format!(
                            "{}: pins {} records, before the kept log starts: not checked",
                            p.source, p.checkpoint.size
                        ));
                    }
                }
                self.check_published()?;
            }
        }
        self.segment = Some(header.segment);
        self.report.closed = false;
        self.report.checkpoints += 1;
        self.report.last_checkpoint = header.first;
        self.report.tail = 0;
        Ok(())
    }

    fn open(&self, text: &str) -> Result<Checkpoint, String> {
        match note::open(text, self.verifier) {
            Ok(c) => Ok(c),
            Err(e) => {
                let signers = note::signers(text)
                    .map(|s| s.into_iter().map(|(name, _)| name).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                Err(format!(
                    "a checkpoint that does not verify with the key {}: {e} (signed by: {signers})",
                    self.verifier.name()
                ))
            }
        }
    }

    fn match_tree(&mut self, c: &Checkpoint) -> Result<(), String> {
        if c.size != self.frontier.size() {
            return Err(format!("a checkpoint of {} records where the log has {}", c.size, self.frontier.size()));
        }
        if c.root != self.frontier.root() {
            return Err(format!("a checkpoint whose root does not match the {} records before it", c.size));
        }
        self.report.checkpoints += 1;
        self.report.last_checkpoint = c.size;
        self.report.tail = 0;
        Ok(())
    }

    fn check_published(&mut self) -> Result<(), String> {
        let size = self.frontier.size();
        for p in self.published.iter().filter(|p| p.checkpoint.size == size) {
            if p.checkpoint.root != self.frontier.root() {
                return Err(format!(
                    "the log no longer produces the checkpoint in {} (size {size}): it was rewritten",
                    p.source
                ));
            }
            self.report.published_checked += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Report, VerifyError> {
        let size = self.frontier.size();
        if let Some(p) = self.published.iter().find(|p| p.checkpoint.size > size) {
            return Err(VerifyError::Tampered {
                place: Place { file: PathBuf::from(&p.source), line: 0, record: Some(size) },
                what: format!(
                    "the log ends at record {size} but this checkpoint pins {} records: records were removed",
                    p.checkpoint.size
                ),
            });
        }
        self.report.size = size;
        self.report.root = self.frontier.root();
        if !self.report.closed && self.report.tail > 0 {
            self.report.warnings.push(format!(
                "the log ends at record {}, {} records after the checkpoint of size {} (the gateway did not close it: a crash, or it is running)",
                size.saturating_sub(1),
                self.report.tail,
                self.report.last_checkpoint
            ));
        }
        Ok(self.report)
    }
}
