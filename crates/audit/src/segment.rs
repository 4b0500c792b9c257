//! The files of a log and the lines in them.
//!
//! A log is a directory of segment files, `audit-<index>.jsonl` with the
//! index in twelve digits, written in order. Every line is one JSON object
//! ending in `\n`, of one of three kinds:
//!
//! - the **header**, first line of every segment: where the segment takes
//!   the tree up (the record number it starts at, the hash of the record
//!   before it, the frontier of the tree so far) and a signed checkpoint
//!   of the tree at that size, so that a segment read alone, or the first
//!   one kept after older ones were deleted, is verified from there;
//! - a **record**: a leaf of the tree. Its first fields are always, in
//!   this order and form, `{"v":1,"seq":N,"prev":"<64 hex>","time":"..."`,
//!   then `"type"` and the fields of its type. Its bytes (without the
//!   newline) are the leaf;
//! - a **checkpoint**: a signed note of the tree's size and root.
//!
//! ```
//! use portcullis_audit::segment::{Line, segment_file_name, segment_index};
//! assert_eq!(segment_file_name(7), "audit-000000000007.jsonl");
//! assert_eq!(segment_index("audit-000000000007.jsonl"), Some(7));
//! let line = br#"{"v":1,"seq":0,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-12-04T07:44:46.000000Z","type":"session_end","session":"1-1","reason":"client left"}"#;
//! assert!(matches!(Line::classify(line), Ok(Line::Record { seq: 0, .. })));
//! ```

use serde::{Deserialize, Serialize};

use crate::tree::Hash;

/// The schema version records carry (`"v"`).
pub const SCHEMA_VERSION: u32 = 1;

/// The hash a first record names as the one before it.
pub const NO_PREVIOUS: Hash = [0; 32];

/// A segment's file name.
pub fn segment_file_name(index: u64) -> String {
    format!("audit-{index:012}.jsonl")
}

/// The index of a segment file name; `None` for other names.
pub fn segment_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log in a segment file's bytes: what comes before the zeros a
/// writer reserves after the log while it appends (a segment being
/// written, or left by a writer that stopped without closing it, ends in
/// them; a record never holds a zero byte).
///
/// ```
/// use portcullis_audit::segment::content;
/// assert_eq!(content(b"{\"type\":\"segment\"}\n\0\0\0"), b"{\"type\":\"segment\"}\n");
/// assert_eq!(content(b"no padding\n"), b"no padding\n");
/// ```
pub fn content(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

/// The first line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `"segment"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The schema version.
    pub v: u32,
    /// The segment's index.
    pub segment: u64,
    /// The number of the segment's first record (the tree's size before it).
    pub first: u64,
    /// Hex hash of the record before `first` (zeros when `first` is 0).
    pub prev: String,
    /// Hex roots of the tree's perfect subtrees along its right edge at
    /// size `first`, largest first.
    pub frontier: Vec<String>,
    /// The signed checkpoint of the tree at size `first`.
    pub checkpoint: String,
}

/// A checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointLine {
    /// Always `"checkpoint"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The signed note.
    pub checkpoint: String,
}

/// What a line is, read without parsing a record's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A segment header.
    Header(Box<Header>),
    /// A record.
    Record {
        /// Its number.
        seq: u64,
        /// The hash of the record before it, as written.
        prev: Hash,
    },
    /// A checkpoint.
    Checkpoint(String),
}

/// Why a line is not a line of a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A record whose first fields are not in the form the writer uses.
    #[error("not a record in the log's form ({0})")]
    RecordForm(&'static str),
    /// A header or checkpoint that does not parse.
    #[error("unreadable {kind} line: {message}")]
    Unreadable {
        /// `header` or `checkpoint`.
        kind: &'static str,
        /// What the parser said.
        message: String,
    },
    /// Neither kind.
    #[error("not a line of an audit log")]
    Unknown,
}

const RECORD_START: &[u8] = b"{\"v\":1,\"seq\":";

impl Line {
    /// Tells a line's kind and reads what verification needs of it; a
    /// record is not parsed beyond its first fields (its bytes are hashed
    /// as they are).
    pub fn classify(line: &[u8]) -> Result<Line, LineError> {
        if let Some(rest) = line.strip_prefix(RECORD_START) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let (number, rest) = rest.split_at_checked(digits).ok_or(LineError::RecordForm("seq"))?;
            if number.is_empty() || (number.len() > 1 && number.first() == Some(&b'0')) {
                return Err(LineError::RecordForm("seq"));
            }
            let seq = std::str::from_utf8(number)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or(LineError::RecordForm("seq"))?;
            let rest = rest.strip_prefix(b",\"prev\":\"").ok_or(LineError::RecordForm("prev"))?;
            let (hex, rest) = rest.split_at_checked(64).ok_or(LineError::RecordForm("prev"))?;
            let prev = hash_from_hex_bytes(hex).ok_or(LineError::RecordForm("prev"))?;
            if !rest.starts_with(b"\",\"time\":\"") || !line.ends_with(b"}") {
                return Err(LineError::RecordForm("time"));
            }
            return Ok(Line::Record { seq, prev });
        }
        if line.starts_with(b"{\"type\":\"segment\"") {
            let header: Header = serde_json::from_slice(line)
                .map_err(|e| LineError::Unreadable { kind: "header", message: e.to_string() })?;
            return Ok(Line::Header(Box::new(header)));
        }
        if line.starts_with(b"{\"type\":\"checkpoint\"") {
            let c: CheckpointLine = serde_json::from_slice(line)
                .map_err(|e| LineError::Unreadable { kind: "checkpoint", message: e.to_string() })?;
            return Ok(Line::Checkpoint(c.checkpoint));
        }
        Err(LineError::Unknown)
    }
}

/// Lower-case hex of a hash.
pub fn hex(hash: &Hash) -> String {
    let mut out = Vec::with_capacity(64);
    push_hex(&mut out, hash);
    String::from_utf8(out).unwrap_or_default()
}

/// Every byte's two lower-case hex digits.
#[allow(clippy::indexing_slicing, reason = "a constant's initialiser: an index out of range fails the build")]
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
        b += 1;
    }
    pairs
};

/// Appends a hash in lower-case hex (no allocation: the writer's per-record
/// path).
pub(crate) fn push_hex(buf: &mut Vec<u8>, hash: &Hash) {
    // Filled on the stack, a byte's two digits at a time from a table, and
    // appended at once: one capacity check, not one per digit (this runs
    // for every record).
    let mut text = [0u8; 64];
    for (pair, &b) in text.chunks_exact_mut(2).zip(hash) {
        if let Some(digits) = HEX_PAIRS.get(usize::from(b)) {
            pair.copy_from_slice(digits);
        }
    }
    buf.extend_from_slice(&text);
}

/// A hash from 64 lower-case hex digits.
pub fn hash_from_hex(text: &str) -> Option<Hash> {
    hash_from_hex_bytes(text.as_bytes())
}

fn hash_from_hex_bytes(text: &[u8]) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *o = (digit(*pair.first()?)? << 4) | digit(*pair.get(1)?)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = (i * 37) as u8;
        }
        assert_eq!(hash_from_hex(&hex(&h)), Some(h));
        assert_eq!(hash_from_hex(&hex(&h).to_uppercase()), None);
        assert_eq!(hash_from_hex("00"), None);
    }

    #[test]
    fn records_must_have_the_writers_form() {
        let zeros = "0".repeat(64);
        let good = format!(r#"{{"v":1,"seq":12,"prev":"{zeros}","time":"x","type":"t"}}"#);
        assert_eq!(Line::classify(good.as_bytes()), Ok(Line::Record { seq: 12, prev: [0; 32] }));
        for bad in [
            format!(r#"{{"v":1,"seq":012,"prev":"{zeros}","time":"x"}}"#),
            format!(r#"{{"v":1,"seq":,"prev":"{zeros}","time":"x"}}"#),
            format!(r#"{{"v":1,"seq":1, "prev":"{zeros}","time":"x"}}"#),
            format!(r#"{{"v":1,"seq":1,"prev":"{}","time":"x"}}"#, "0".repeat(63)),
            format!(r#"{{"v":1,"seq":1,"prev":"{zeros}","time":"x""#),
            format!(r#"{{"seq":1,"v":1,"prev":"{zeros}","time":"x"}}"#),
            format!(r#"{{"v":1,"seq":99999999999999999999999,"prev":"{zeros}","time":"x"}}"#),
        ] {
            assert!(Line::classify(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
