//! Appending to a log: records, checkpoints, segments, retention.
//!
//! The [`Writer`] is plain blocking file I/O, meant to be owned by one
//! thread at a time that takes many sessions' records in batches (group
//! commit): [`Writer::append`] adds records to a buffer,
//! [`Writer::write`] hands the buffer to the OS, [`Writer::sync`] makes it
//! durable. Handing a batch to the OS is a copy into a shared mapping of
//! the segment file, into space reserved ahead (see `mapped.rs`): the
//! kernel's page cache holds it from then on, as after `write(2)`, at the
//! cost of a copy rather than a system call. A batch that cannot be
//! written (no space can be reserved) is taken back whole (the tree
//! forgets it), and the next batch goes to a new segment, so what is in
//! the files is always a log that verifies.
//!
//! ```
//! use portcullis_audit::note::NoteSigner;
//! use portcullis_audit::writer::{Writer, WriterOptions};
//! let dir = std::env::temp_dir().join(format!("audit-doc-{}", std::process::id()));
//! let signer = NoteSigner::generate("example.org/audit").unwrap();
//! let verifier = signer.verifier();
//! let mut w = Writer::open(WriterOptions::new(&dir, signer)).unwrap();
//! w.append(r#"{"type":"session_end","session":"a-1","reason":"client left"}"#, std::time::SystemTime::now()).unwrap();
//! w.write().unwrap();
//! w.close().unwrap();
//! let report = portcullis_audit::verify::verify_dir(&dir, &verifier, &[], &mut |_| {}).unwrap();
//! assert_eq!(report.records(), 1);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::body::push_decimal;
use crate::mapped::MappedFile;
use crate::note::{Checkpoint, NoteSigner};
use crate::segment::{
    hex, push_hex, segment_file_name, segment_index, CheckpointLine, Header, NO_PREVIOUS, SCHEMA_VERSION,
};
use crate::tree::{leaf_hash, Frontier, Hash, Rewind};

/// The extension line of the checkpoint a writer closes the log with: a
/// record after it is not the writer's.
pub const CLOSED: &str = "closed";

/// Default size at which a segment is closed and the next one begun.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where a buffered record's body begins: after the writer's leading
/// fields.
const TYPE_KEY: &[u8] = b",\"type\":";

/// How a [`Writer`] is set up.
#[derive(Debug)]
pub struct WriterOptions {
    /// The log's directory (created when missing, mode 0700).
    pub dir: PathBuf,
    /// The size at which a segment is closed.
    pub segment_bytes: u64,
    /// Segments older than this (by their last write) are deleted, oldest
    /// first; `None` keeps everything.
    pub keep: Option<Duration>,
    /// Signs checkpoints; its name is the checkpoints' origin.
    pub signer: NoteSigner,
}

impl WriterOptions {
    /// Options with the defaults: 64 MiB segments, nothing deleted.
    pub fn new(dir: impl Into<PathBuf>, signer: NoteSigner) -> WriterOptions {
        WriterOptions { dir: dir.into(), segment_bytes: DEFAULT_SEGMENT_BYTES, keep: None, signer }
    }
}

/// Why the log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The log found in the directory does not verify: the writer does
    /// not continue a log it cannot vouch for.
    #[error("the audit log in {dir} does not verify, so it is not continued: {problem}")]
    Existing {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A record body that is not a one-line UTF-8 JSON object starting
    /// with its `type`.
    #[error("a record must be a JSON object on one line of UTF-8, whose first field is \"type\"")]
    RecordForm,
    /// The batch was written, and then ending its full segment failed: the
    /// batch's records are in the log, not synced; the next write begins a
    /// new segment.
    #[error("the records were written, but ending the full segment failed: {0}")]
    Rotation(Box<WriteError>),
}

/// The state of the tree that a batch may have to be taken back to.
#[derive(Debug, Clone)]
struct Mark {
    rewind: Rewind,
    prev: Hash,
}

/// Appends records to a log directory.
#[derive(Debug)]
pub struct Writer {
    options: WriterOptions,
    origin: String,
    /// The current segment (shared with whoever syncs it, see
    /// [`Writer::sync_handle`]).
    file: Option<MappedFile>,
    path: PathBuf,
    segment: u64,
    /// Bytes in the current segment file.
    written: u64,
    buf: Vec<u8>,
    frontier: Frontier,
    prev: Hash,
    /// Tree size at the last checkpoint written.
    checkpointed: u64,
    /// The signed note of the last checkpoint written.
    last_checkpoint: Option<String>,
    /// What the batch being written started from.
    mark: Option<Mark>,
    /// A mark no longer in use, kept for its memory.
    spare_mark: Option<Mark>,
    /// The records of the last batch taken back, as they were buffered
    /// (see [`Writer::append_again`]).
    taken_back: Vec<u8>,
    /// The last time written, formatted (a batch's records share it).
    time: crate::time::TimeText,
}

impl Writer {
    /// Opens the log in `options.dir`: a new log, or the existing one
    /// continued in a new segment after its last one has been verified
    /// (a crash's torn last line is left where it is; the new segment's
    /// signed header vouches for the records before it).
    pub fn open(options: WriterOptions) -> Result<Writer, WriteError> {
        let dir = options.dir.clone();
        create_dir(&dir)?;
        let origin = options.signer.name().to_string();
        let segments =
            list_segments(&dir).map_err(|source| WriteError::Io { what: "reading", path: dir.clone(), source })?;
        let (segment, frontier, prev) = match segments.last() {
            None => (0, Frontier::new(), NO_PREVIOUS),
            Some((index, path)) => {
                let verifier = options.signer.verifier();
                let state = crate::verify::resume_state(path, &verifier)
                    .map_err(|problem| WriteError::Existing { dir: dir.clone(), problem })?;
                // The space a writer that stopped without closing had
                // reserved holds zeros only: it goes.
                if std::fs::metadata(path).is_ok_and(|m| m.len() > state.length) {
                    let cut = OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(state.length));
                    cut.map_err(|source| WriteError::Io { what: "trimming", path: path.clone(), source })?;
                }
                (index + 1, state.frontier, state.prev)
            }
        };
        let mut writer = Writer {
            origin,
            file: None,
            path: PathBuf::new(),
            segment: 0,
            written: 0,
            buf: Vec::with_capacity(64 * 1024),
            checkpointed: frontier.size(),
            last_checkpoint: None,
            frontier,
            prev,
            mark: None,
            spare_mark: None,
            taken_back: Vec::new(),
            time: crate::time::TimeText::default(),
            options,
        };
        let (frontier, prev) = (writer.frontier.clone(), writer.prev);
        writer.begin_segment(segment, &frontier, &prev)?;
        writer.prune(SystemTime::now());
        Ok(writer)
    }

    /// Where the log's end is: the current segment's number and the bytes
    /// written to its file so far. Whoever syncs the segment from
    /// elsewhere ([`Writer::sync_handle`]) can tell from it how much was
    /// written since its last sync.
    ///
    /// ```
    /// # use portcullis_audit::{note::NoteSigner, writer::{Writer, WriterOptions}};
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-position-{}", std::process::id()));
    /// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
    /// let (segment, header) = writer.position();
    /// writer.append(r#"{"type":"note","n":1}"#, std::time::SystemTime::now())?;
    /// assert_eq!(writer.position(), (segment, header)); // appended, not written
    /// writer.write()?;
    /// assert!(writer.position().1 > header);
    /// # writer.close()?; std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn position(&self) -> (u64, u64) {
        (self.segment, self.written)
    }

    /// Whether records were appended and not yet written.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Lends the writer `other`'s memory for its buffer, and takes the
    /// buffer's in exchange, when both are empty: returns whether it did.
    /// A writer that threads take in turn can append in the memory of the
    /// thread appending now, in that core's cache (the buffer the thread
    /// before wrote to is in the other core's), and give it back, empty,
    /// once written.
    ///
    /// ```
    /// # use portcullis_audit::{note::NoteSigner, writer::{Writer, WriterOptions}};
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-exchange-{}", std::process::id()));
    /// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
    /// let mut mine = Vec::with_capacity(4096);
    /// let memory = mine.as_ptr();
    /// assert!(writer.exchange_buffer(&mut mine));
    /// writer.append(r#"{"type":"note","n":1}"#, std::time::SystemTime::now())?;
    /// // Not written yet: the buffer is not empty, and stays.
    /// assert!(!writer.exchange_buffer(&mut mine));
    /// writer.write()?;
    /// // Written: the buffer is empty again, and `mine` gets its memory back.
    /// assert!(writer.exchange_buffer(&mut mine));
    /// assert_eq!(mine.as_ptr(), memory);
    /// # writer.close()?; std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exchange_buffer(&mut self, other: &mut Vec<u8>) -> bool {
        if !self.buf.is_empty() || !other.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.buf, other);
        true
    }

    /// Forgets the records appended since the last write: the next record
    /// takes the first one's number, and what was written stays as it is.
    /// For a batch that cannot be written whole.
    ///
    /// ```
    /// # use portcullis_audit::{note::NoteSigner, writer::{Writer, WriterOptions}};
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-discard-{}", std::process::id()));
    /// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
    /// writer.append(r#"{"type":"note","n":1}"#, std::time::SystemTime::now())?;
    /// writer.discard_buffered();
    /// assert_eq!(writer.size(), 0);
    /// # writer.close()?; std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn discard_buffered(&mut self) {
        self.restore_mark();
        self.keep_taken_back();
    }

    /// Appends again records of the batch the last failed write (or
    /// [`Writer::discard_buffered`]) took back: those whose place in that
    /// batch (from 0) `keep` names, in their order, with new numbers and
    /// the time `time`. Returns how many were appended. For records that
    /// nobody waits for, which a failure must not lose: they are written
    /// with the next batch that can be.
    ///
    /// ```
    /// # use portcullis_audit::{note::NoteSigner, writer::{Writer, WriterOptions}};
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-again-{}", std::process::id()));
    /// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
    /// let now = std::time::SystemTime::now();
    /// writer.append(r#"{"type":"note","n":1}"#, now)?;
    /// writer.append(r#"{"type":"note","n":2}"#, now)?;
    /// writer.discard_buffered();
    /// assert_eq!(writer.append_again(|i| i == 1, now)?, 1);
    /// writer.write()?;
    /// assert_eq!(writer.size(), 1);
    /// # writer.close()?; std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_again(&mut self, mut keep: impl FnMut(usize) -> bool, time: SystemTime) -> Result<u64, WriteError> {
        let taken = std::mem::take(&mut self.taken_back);
        let mut again = 0;
        let mut outcome = Ok(());
        for (i, line) in taken.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            if !keep(i) {
                continue;
            }
            // The writer's own leading fields (numbers, hex, the time)
            // come before the body's type: the first `,"type":` is it.
            let Some(at) = line.windows(TYPE_KEY.len()).position(|w| w == TYPE_KEY) else { continue };
            let fields = line.get(at + TYPE_KEY.len()..).unwrap_or_default();
            outcome = self.append_with(time, |buf| buf.extend_from_slice(fields)).map(|_| ());
            if outcome.is_err() {
                break;
            }
            again += 1;
        }
        self.taken_back = taken;
        self.taken_back.clear();
        outcome.map(|()| again)
    }

    /// Moves the buffer's records to `taken_back` (emptying the buffer).
    fn keep_taken_back(&mut self) {
        self.taken_back.clear();
        std::mem::swap(&mut self.taken_back, &mut self.buf);
    }

    /// Records in the log (the tree's size), including buffered ones.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The current segment's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a record to the buffer and returns its number. `body` is the
    /// record's own JSON object, `{"type":"...", ...}`; the writer puts
    /// the schema version, the number, the previous record's hash and
    /// `time` in front.
    pub fn append(&mut self, body: impl AsRef<[u8]>, time: SystemTime) -> Result<u64, WriteError> {
        let body = body.as_ref();
        if body.contains(&b'\n') || std::str::from_utf8(body).is_err() {
            return Err(WriteError::RecordForm);
        }
        self.append_unchecked(body, time)
    }

    /// [`Writer::append`] for a body known to be one line of UTF-8 JSON,
    /// as a [`Body`](crate::body::Body) writes them: only its first field
    /// and its end are checked. (A body that is not one line of JSON after
    /// all makes a log that does not verify, and nothing worse.)
    pub fn append_unchecked(&mut self, body: &[u8], time: SystemTime) -> Result<u64, WriteError> {
        let fields = body.strip_prefix(b"{\"type\":").filter(|_| body.ends_with(b"}")).ok_or(WriteError::RecordForm)?;
        self.append_with(time, |buf| buf.extend_from_slice(fields))
    }

    /// [`Writer::append_unchecked`] for a body written in place, with no
    /// copy: `body` is given the buffer, which ends with the record's
    /// `"type":` key, and writes the type's value, the body's other
    /// fields and the closing brace (as a [`Body`](crate::body::Body)
    /// begun with [`Body::after_type`](crate::body::Body::after_type)
    /// does). A body that does not end with `}` is taken out again and
    /// refused.
    ///
    /// ```
    /// # use portcullis_audit::{body::Body, note::NoteSigner, writer::{Writer, WriterOptions}};
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-append-with-{}", std::process::id()));
    /// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
    /// let seq = writer.append_with(std::time::SystemTime::now(), |buf| {
    ///     let mut body = Body::after_type(buf, "note");
    ///     body.u64("n", 1);
    ///     body.end();
    /// })?;
    /// assert_eq!(seq, 0);
    /// # writer.close()?; std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_with(&mut self, time: SystemTime, body: impl FnOnce(&mut Vec<u8>)) -> Result<u64, WriteError> {
        let seq = self.frontier.size();
        let start = self.buf.len();
        // The record's first fields, written in place (this is per
        // record: no formatting machinery, no allocation).
        let buf = &mut self.buf;
        buf.extend_from_slice(b"{\"v\":");
        push_decimal(buf, u64::from(SCHEMA_VERSION));
        buf.extend_from_slice(b",\"seq\":");
        push_decimal(buf, seq);
        buf.extend_from_slice(b",\"prev\":\"");
        push_hex(buf, &self.prev);
        buf.extend_from_slice(b"\",\"time\":\"");
        buf.extend_from_slice(self.time.format(time));
        buf.extend_from_slice(b"\",\"type\":");
        let fields = buf.len();
        body(buf);
        if buf.len() == fields || !buf.ends_with(b"}") {
            buf.truncate(start);
            return Err(WriteError::RecordForm);
        }
        self.mark_batch();
        let leaf = leaf_hash(self.buf.get(start..).unwrap_or_default());
        self.buf.push(b'\n');
        match self.mark.as_mut() {
            Some(mark) => self.frontier.push_rewindable(leaf, &mut mark.rewind),
            // Unreachable: the batch was just marked.
            None => self.frontier.push(leaf),
        }
        self.prev = leaf;
        Ok(seq)
    }

    /// Hands what is buffered to the OS: one copy into the mapped
    /// segment, after space for it is reserved. When no space can be
    /// reserved, the whole batch since the last successful write is taken
    /// back: nothing of it was copied, the tree forgets it, and the next
    /// write begins a new segment.
    pub fn write(&mut self) -> Result<(), WriteError> {
        if self.buf.is_empty() {
            self.clear_mark();
            return Ok(());
        }
        if self.file.is_none() {
            // The segment a failure left behind is not written to again;
            // the new one takes the log up where the batch begins.
            let (frontier, prev) = match &self.mark {
                Some(m) => (self.frontier.as_at(&m.rewind), m.prev),
                None => (self.frontier.clone(), self.prev),
            };
            if let Err(e) = self.begin_segment(self.segment + 1, &frontier, &prev) {
                self.take_back();
                return Err(e);
            }
        }
        let outcome = match self.file.as_mut() {
            Some(f) => f.append(&self.buf),
            None => Err(std::io::Error::other("no segment open")),
        };
        match outcome {
            Ok(()) => {
                self.written += self.buf.len() as u64;
                self.buf.clear();
                self.clear_mark();
                if self.written >= self.options.segment_bytes {
                    if let Err(e) = self.end_segment() {
                        self.abandon_segment();
                        return Err(WriteError::Rotation(Box::new(e)));
                    }
                }
                Ok(())
            }
            Err(source) => {
                let error = WriteError::Io { what: "writing", path: self.path.clone(), source };
                self.take_back();
                Err(error)
            }
        }
    }

    /// Makes what was written durable (`fdatasync`). After a failure the
    /// file's state is unknown: the next write begins a new segment.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        let Some(f) = self.file.as_ref() else { return Ok(()) };
        if let Err(source) = f.file().sync_data() {
            self.abandon_segment();
            return Err(WriteError::Io { what: "syncing", path: self.path.clone(), source });
        }
        Ok(())
    }

    /// The current segment file, for syncing it outside the writer (a
    /// thread that syncs while others go on writing: group commit). A
    /// segment is synced in full before the next one begins, so syncing
    /// this file makes everything written so far durable.
    pub fn sync_handle(&self) -> Option<Arc<File>> {
        self.file.as_ref().map(|f| Arc::clone(f.file()))
    }

    /// After a failed sync of [`Writer::sync_handle`]'s file: the file's
    /// state is unknown, and the next write begins a new segment.
    pub fn abandon_segment(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.finish();
        }
    }

    /// Whether records were added since the last checkpoint.
    pub fn needs_checkpoint(&self) -> bool {
        self.frontier.size() != self.checkpointed
    }

    /// Writes a signed checkpoint of everything appended so far, and
    /// syncs it.
    pub fn checkpoint(&mut self) -> Result<(), WriteError> {
        self.write_checkpoint(Vec::new(), true)
    }

    /// Writes a signed checkpoint of everything appended so far, without
    /// syncing it (the caller syncs [`Writer::sync_handle`]).
    pub fn checkpoint_unsynced(&mut self) -> Result<(), WriteError> {
        self.write_checkpoint(Vec::new(), false)
    }

    /// Ends the log cleanly: a closing checkpoint, synced. A record after
    /// it in this segment is reported as forged by the verifier.
    pub fn close(mut self) -> Result<(), WriteError> {
        self.write_checkpoint(vec![CLOSED.to_string()], false)?;
        self.finish_segment()
    }

    /// Appends a signed checkpoint of the tree as it is, writes it, and
    /// syncs it when `sync`.
    fn write_checkpoint(&mut self, extensions: Vec<String>, sync: bool) -> Result<(), WriteError> {
        let note = self.sign(extensions);
        let bytes = checkpoint_line(&note);
        self.mark_batch();
        self.buf.extend_from_slice(&bytes);
        self.write()?;
        if sync {
            self.sync()?;
        }
        self.checkpointed = self.frontier.size();
        self.last_checkpoint = Some(note);
        Ok(())
    }

    /// The signed note of the last checkpoint this writer wrote (synced
    /// only when the writer synced it, or its caller did since).
    pub fn last_checkpoint(&self) -> Option<&str> {
        self.last_checkpoint.as_deref()
    }

    /// Deletes whole segments older than `keep`, oldest first, never the
    /// current one; returns how many.
    pub fn prune(&mut self, now: SystemTime) -> usize {
        let Some(keep) = self.options.keep else { return 0 };
        let Ok(segments) = list_segments(&self.options.dir) else { return 0 };
        let mut removed = 0;
        for (index, path) in segments {
            if index >= self.segment {
                break;
            }
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > keep));
            if !old || std::fs::remove_file(&path).is_err() {
                break;
            }
            removed += 1;
        }
        removed
    }

    fn sign(&self, extensions: Vec<String>) -> String {
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: self.frontier.size(),
            root: self.frontier.root(),
            extensions,
        };
        self.options.signer.sign(&checkpoint)
    }

    fn mark_batch(&mut self) {
        if self.mark.is_none() {
            // Nothing of the frontier is copied: the pushes of the batch
            // keep what they merge away.
            let mut mark =
                self.spare_mark.take().unwrap_or_else(|| Mark { rewind: Rewind::default(), prev: self.prev });
            self.frontier.set_rewind(&mut mark.rewind);
            mark.prev = self.prev;
            self.mark = Some(mark);
        }
    }

    /// The batch is written: its mark is not needed any more.
    fn clear_mark(&mut self) {
        if let Some(mark) = self.mark.take() {
            self.spare_mark = Some(mark);
        }
    }

    /// Takes the tree back to where the batch began.
    fn restore_mark(&mut self) {
        if let Some(mark) = self.mark.take() {
            self.frontier.rewind(&mark.rewind);
            self.prev = mark.prev;
            self.spare_mark = Some(mark);
        }
    }

    /// Forgets the batch being written.
    fn take_back(&mut self) {
        self.restore_mark();
        self.keep_taken_back();
        self.abandon_segment();
    }

    /// Closes the current segment with a checkpoint and begins the next.
    fn end_segment(&mut self) -> Result<(), WriteError> {
        let bytes = checkpoint_line(&self.sign(Vec::new()));
        if let Some(f) = self.file.as_mut() {
            if let Err(source) = f.append(&bytes) {
                self.abandon_segment();
                return Err(WriteError::Io { what: "writing", path: self.path.clone(), source });
            }
            self.written += bytes.len() as u64;
        }
        self.checkpointed = self.frontier.size();
        self.finish_segment()?;
        let (frontier, prev) = (self.frontier.clone(), self.prev);
        self.begin_segment(self.segment + 1, &frontier, &prev)?;
        self.prune(SystemTime::now());
        Ok(())
    }

    /// Cuts the current segment to its length (the space reserved after
    /// it goes) and syncs it, size and all. Its pages then leave the page
    /// cache: the writer is done with them, and what of them the sync
    /// thread had not dropped yet (up to a write-back's worth) would
    /// otherwise stay, one segment's tail after another.
    fn finish_segment(&mut self) -> Result<(), WriteError> {
        let Some(f) = self.file.take() else { return Ok(()) };
        let file = f.finish().and_then(|file| file.sync_data().map(|()| file)).map_err(|source| WriteError::Io {
            what: "finishing",
            path: self.path.clone(),
            source,
        })?;
        // Advice only: a file system that keeps its pages keeps them.
        let _ = rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed);
        Ok(())
    }

    /// Creates segment `index` with its header (the tree as `frontier`
    /// and `prev` leave it), synced with its directory; it becomes the
    /// current one.
    fn begin_segment(&mut self, index: u64, frontier: &Frontier, prev: &Hash) -> Result<(), WriteError> {
        let dir = self.options.dir.clone();
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: frontier.size(),
            root: frontier.root(),
            extensions: Vec::new(),
        };
        let header = Header {
            kind: "segment".into(),
            v: SCHEMA_VERSION,
            segment: index,
            first: frontier.size(),
            prev: hex(prev),
            frontier: frontier.nodes().iter().map(hex).collect(),
            checkpoint: self.options.signer.sign(&checkpoint),
        };
        let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
        bytes.push(b'\n');
        let path = dir.join(segment_file_name(index));
        let mut options = OpenOptions::new();
        // Read as well: the file is mapped.
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let io = |what, source| WriteError::Io { what, path: path.clone(), source };
        let mut file = MappedFile::new(options.open(&path).map_err(|e| io("creating", e))?);
        if let Err(e) = file.append(&bytes).and_then(|()| file.file().sync_data()) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(io("writing", e));
        }
        sync_dir(&dir);
        self.written = bytes.len() as u64;
        self.checkpointed = frontier.size();
        self.file = Some(file);
        self.path = path;
        self.segment = index;
        Ok(())
    }
}

fn create_dir(dir: &Path) -> Result<(), WriteError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| WriteError::Io { what: "creating", path: dir.to_path_buf(), source })
}

/// Makes a new file's name durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A checkpoint line (with its newline) holding the signed `note`.
fn checkpoint_line(note: &str) -> Vec<u8> {
    let line = CheckpointLine { kind: "checkpoint".into(), checkpoint: note.to_string() };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Drops from the kernel's page cache the pages of a segment file (a
/// [`Writer::sync_handle`]) from `from` up to where the writer still
/// appends, once a sync covered its first `synced` bytes
/// ([`Writer::position`] when the handle was taken); returns where the
/// next call starts. The log is written once and read rarely: its pages
/// would otherwise push the database's out of the cache, and a busy log
/// would keep taking memory the machine has not touched in a while. Only
/// whole chunks the writer no longer maps are dropped (1 MiB); it is
/// advice, and a failure leaves the pages where they are.
///
/// ```
/// # use portcullis_audit::{note::NoteSigner, writer::{drop_synced, Writer, WriterOptions}};
/// # let dir = std::env::temp_dir().join(format!("portcullis-doc-drop-{}", std::process::id()));
/// let mut writer = Writer::open(WriterOptions::new(&dir, NoteSigner::generate("example.com/log")?))?;
/// writer.append(r#"{"type":"note","n":1}"#, std::time::SystemTime::now())?;
/// writer.write()?;
/// let (file, (_, bytes)) = (writer.sync_handle().unwrap(), writer.position());
/// file.sync_data()?;
/// // Less than a chunk written: nothing the writer has done with.
/// assert_eq!(drop_synced(&file, 0, bytes), 0);
/// # writer.close()?; std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn drop_synced(file: &File, from: u64, synced: u64) -> u64 {
    let to = synced - synced % crate::mapped::CHUNK;
    if let Some(len) = to.checked_sub(from).and_then(std::num::NonZeroU64::new) {
        if rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed).is_err() {
            return from;
        }
        return to;
    }
    from.max(to)
}

/// The segment files of a directory, in index order.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(index) = entry.file_name().to_str().and_then(segment_index) {
            out.push((index, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_testkit::scratch::ScratchDir;

    #[test]
    fn numbers_and_hashes_are_written_in_place() {
        let mut powers: Vec<u64> = (0..20).map(|e| 10u64.pow(e)).collect();
        powers.extend(powers.clone().iter().filter(|&&p| p > 1).map(|p| p - 1));
        for n in powers.into_iter().chain([0u64, 7, 12_345, u64::MAX]) {
            // After other bytes, as in a record.
            let mut buf = b"x".to_vec();
            push_decimal(&mut buf, n);
            assert_eq!(buf, format!("x{n}").into_bytes());
        }
        for seed in [3usize, 29, 101] {
            let mut hash = [0u8; 32];
            for (i, b) in hash.iter_mut().enumerate() {
                *b = (i * seed + 3) as u8;
            }
            let mut buf = b"x".to_vec();
            push_hex(&mut buf, &hash);
            let expected: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(buf, format!("x{expected}").into_bytes());
            assert_eq!(hex(&hash), expected);
        }
    }

    /// A writer of a new log in a fresh directory named for `test`, with
    /// segments of `segment_bytes`, and the log's verifier key.
    fn scratch_log(test: &str, segment_bytes: Option<u64>) -> (ScratchDir, Writer, crate::note::NoteVerifier) {
        let dir = ScratchDir::new(&format!("writer-{test}"));
        let Ok(signer) = NoteSigner::generate("example.org/audit") else { panic!("a key") };
        let verifier = signer.verifier();
        let mut options = WriterOptions::new(&*dir, signer);
        if let Some(bytes) = segment_bytes {
            options.segment_bytes = bytes;
        }
        let Ok(w) = Writer::open(options) else { panic!("a writer") };
        (dir, w, verifier)
    }

    /// A segment that ended, and the last one once the log is closed,
    /// leave nothing of themselves in the page cache.
    #[test]
    fn finished_segments_leave_the_page_cache() {
        let (dir, mut w, _) = scratch_log("uncached", Some(2 << 20));
        let body = format!("{{\"type\":\"note\",\"text\":\"{}\"}}", "x".repeat(1000));
        let now = SystemTime::now();
        // Two segments ended by rotation, and a third by closing.
        let first = w.position().0;
        while w.position().0 < first + 2 {
            assert!(w.append(&body, now).is_ok());
            assert!(w.write().is_ok());
        }
        assert!(w.close().is_ok());
        let segments = list_segments(&dir).unwrap_or_default();
        assert_eq!(segments.len(), 3);
        for (_, path) in &segments {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            assert!(size > 0);
            assert_eq!(
                portcullis_testkit::scratch::cached_bytes(path),
                0,
                "{} ({size} bytes) is still cached",
                path.display()
            );
        }
    }

    #[test]
    fn a_body_that_is_not_one_line_of_json_is_refused() {
        let (_dir, mut w, _) = scratch_log("form", None);
        let now = SystemTime::now();
        for bad in [
            &b"{\"sql\":\"x\"}"[..],
            b"{\"type\":\"statement\"",
            b"{\"type\":\"statement\",\"sql\":\"a\nb\"}",
            b"{\"type\":\"statement\",\"sql\":\"\xff\"}",
        ] {
            assert!(matches!(w.append(bad, now), Err(WriteError::RecordForm)), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(w.size(), 0);
        assert!(matches!(w.append(b"{\"type\":\"statement\"}", now), Ok(0)));
    }

    #[test]
    fn a_body_written_in_place_is_checked_and_leaves_no_trace_when_refused() {
        let (dir, mut w, verifier) = scratch_log("in-place", None);
        let now = SystemTime::now();
        let good = |buf: &mut Vec<u8>| {
            let mut body = crate::body::Body::after_type(buf, "note");
            body.str("text", "a \"quoted\" word");
            body.end();
        };
        assert!(matches!(w.append_with(now, good), Ok(0)));
        assert!(matches!(w.append_with(now, |_| {}), Err(WriteError::RecordForm)));
        assert!(matches!(
            w.append_with(now, |buf| buf.extend_from_slice(b"\"note\",\"n\":1")),
            Err(WriteError::RecordForm)
        ));
        assert!(matches!(w.append_with(now, good), Ok(1)));
        assert!(w.write().is_ok());
        assert!(w.close().is_ok());
        let Ok(report) = crate::verify::verify_dir(&dir, &verifier, &[], &mut |_| {}) else {
            panic!("the log verifies")
        };
        assert_eq!(report.records(), 2);
        let Ok(text) = std::fs::read_to_string(dir.join(segment_file_name(0))) else { panic!("the segment") };
        let records: Vec<serde_json::Value> = text
            .lines()
            .skip(1)
            .filter(|l| l.contains("\"note\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1]["seq"], 1);
        assert_eq!(records[1]["text"], "a \"quoted\" word");
    }

    #[test]
    fn a_failed_rotation_keeps_the_batch_and_the_log_goes_on() {
        let (dir, mut w, verifier) = scratch_log("rotation", Some(1));
        // The next segment's name is taken (by a directory: even root cannot
        // create the file), so ending the first one fails.
        let blocker = dir.join(segment_file_name(1));
        assert!(std::fs::create_dir(&blocker).is_ok());
        let now = SystemTime::now();
        assert!(matches!(w.append(b"{\"type\":\"first\"}", now), Ok(0)));
        let e = w.write();
        assert!(matches!(&e, Err(WriteError::Rotation(_))), "{e:?}");
        assert!(e.is_err_and(|e| e.to_string().contains("records were written")));
        // The record stays in the log; the next write begins the new segment.
        assert!(std::fs::remove_dir(&blocker).is_ok());
        assert!(matches!(w.append(b"{\"type\":\"second\"}", now), Ok(1)));
        assert!(w.write().is_ok());
        assert!(w.close().is_ok());
        let report = crate::verify::verify_dir(&dir, &verifier, &[], &mut |_| {});
        assert!(matches!(&report, Ok(r) if r.size == 2), "{report:?}");
    }

    #[test]
    fn a_discarded_batch_leaves_no_trace_in_the_log() {
        let (dir, mut w, verifier) = scratch_log("discard", None);
        let now = SystemTime::now();
        assert!(matches!(w.append(b"{\"type\":\"kept\",\"n\":0}", now), Ok(0)));
        assert!(w.write().is_ok());
        // A batch of two, discarded after the first was appended.
        assert!(matches!(w.append(b"{\"type\":\"dropped\",\"n\":1}", now), Ok(1)));
        assert!(matches!(w.append(b"not json", now), Err(WriteError::RecordForm)));
        w.discard_buffered();
        assert!(!w.has_buffered());
        assert!(matches!(w.append(b"{\"type\":\"kept\",\"n\":2}", now), Ok(1)));
        assert!(w.write().is_ok());
        assert!(w.close().is_ok());
        let report = crate::verify::verify_dir(&dir, &verifier, &[], &mut |_| {});
        assert!(matches!(&report, Ok(r) if r.size == 2), "{report:?}");
        let Ok(Some((_, path))) = list_segments(&dir).map(|s| s.into_iter().next()) else { panic!("a segment") };
        let Ok(text) = std::fs::read_to_string(&path) else { panic!("readable") };
        assert!(!text.contains("dropped"), "{text}");
    }
}
