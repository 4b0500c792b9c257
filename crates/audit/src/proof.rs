//! Receipts: an inclusion proof of one record against a signed
//! checkpoint, checked offline with the public key alone.
//!
//! ```
//! use portcullis_audit::note::NoteSigner;
//! use portcullis_audit::proof::{check, prove_dir};
//! use portcullis_audit::writer::{Writer, WriterOptions};
//! let dir = std::env::temp_dir().join(format!("audit-proof-doc-{}", std::process::id()));
//! let signer = NoteSigner::generate("example.org/audit").unwrap();
//! let verifier = signer.verifier();
//! let mut w = Writer::open(WriterOptions::new(&dir, signer)).unwrap();
//! for i in 0..5 {
//!     w.append(&format!(r#"{{"type":"note","n":{i}}}"#), std::time::SystemTime::now()).unwrap();
//! }
//! w.close().unwrap();
//! let receipt = prove_dir(&dir, 3).unwrap();
//! assert!(receipt.leaf.contains(r#""n":3"#));
//! check(&receipt, &verifier).unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::note::{self, NoteVerifier};
use crate::segment::{hash_from_hex, Line};
use crate::tree::{leaf_hash, node_hash, verify_inclusion, Hash};

/// One record's proof of inclusion in a signed tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always `"portcullis-audit-receipt/1"`.
    pub format: String,
    /// The record's number.
    pub record: u64,
    /// The record as written (its bytes are the leaf).
    pub leaf: String,
    /// The size of the tree the proof is against.
    pub size: u64,
    /// The audit path, base64.
    pub proof: Vec<String>,
    /// The signed checkpoint of that tree.
    pub checkpoint: String,
}

/// The format name receipts carry.
pub const RECEIPT_FORMAT: &str = "portcullis-audit-receipt/1";

/// Why a receipt could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The log does not hold what the proof needs.
    #[error("{0}")]
    Log(String),
}

/// A receipt for record `record` of the log in `dir`, against the latest
/// checkpoint that covers it. The log is not verified here: run
/// [`crate::verify`] for that; the receipt stands on its own.
pub fn prove_dir(dir: &Path, record: u64) -> Result<Receipt, ProveError> {
    let segments = crate::writer::list_segments(dir)
        .map_err(|source| ProveError::Unreadable { path: dir.to_path_buf(), source })?;
    let files: Vec<PathBuf> = segments.into_iter().map(|(_, p)| p).collect();
    prove_files(&files, record)
}

/// [`prove_dir`] over segment files given in order.
pub fn prove_files(files: &[PathBuf], record: u64) -> Result<Receipt, ProveError> {
    let mut first: Option<(u64, Vec<Hash>)> = None;
    let mut leaves: Vec<Hash> = Vec::new();
    let mut leaf: Option<String> = None;
    let mut latest: Option<(u64, String)> = None;
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| ProveError::Unreadable { path: path.clone(), source })?;
        for line in crate::segment::content(&bytes).split(|&b| b == b'\n') {
            match Line::classify(line) {
                Ok(Line::Header(h)) => {
                    if first.is_none() {
                        let nodes = h.frontier.iter().filter_map(|x| hash_from_hex(x)).collect::<Vec<_>>();
                        first = Some((h.first, nodes));
                    }
                    latest = Some((h.first, h.checkpoint));
                }
                Ok(Line::Record { seq, .. }) => {
                    if seq == record {
                        leaf = Some(String::from_utf8_lossy(line).into_owned());
                    }
                    leaves.push(leaf_hash(line));
                }
                Ok(Line::Checkpoint(c)) => {
                    let size = note::Checkpoint::parse_body(note_body(&c)).map(|c| c.size).unwrap_or(0);
                    latest = Some((size, c));
                }
                Err(_) => {}
            }
        }
    }
    let (start, frontier) = first.ok_or_else(|| ProveError::Log("no segment header: not an audit log".into()))?;
    let leaf = leaf.ok_or_else(|| ProveError::Log(format!("record {record} is not in this log")))?;
    let (size, checkpoint) = latest
        .filter(|(size, _)| *size > record)
        .ok_or_else(|| ProveError::Log(format!("no checkpoint covers record {record} yet: the next one will")))?;
    let end = usize::try_from(size - start).map_err(|_| ProveError::Log("the log is too large".into()))?;
    let known = leaves.get(..end).ok_or_else(|| ProveError::Log("the checkpoint is past the records".into()))?;
    let tree = Known { start, frontier: &frontier, leaves: known };
    let path = tree.path(record, 0, size)?;
    Ok(Receipt {
        format: RECEIPT_FORMAT.into(),
        record,
        leaf,
        size,
        proof: path.iter().map(|h| STANDARD.encode(h)).collect(),
        checkpoint,
    })
}

/// The body of a note (up to its blank line), for reading its size
/// before its signature is checked.
fn note_body(note: &str) -> &str {
    match note.rfind("\n\n") {
        Some(i) => note.get(..=i).unwrap_or(note),
        None => note,
    }
}

/// Checks a receipt with the log's public key: the checkpoint's
/// signature, its size, and the record's path to its root.
pub fn check(receipt: &Receipt, verifier: &NoteVerifier) -> Result<(), String> {
    if receipt.format != RECEIPT_FORMAT {
        return Err(format!("not a receipt of this format: {:?}", receipt.format));
    }
    let c = note::open(&receipt.checkpoint, verifier).map_err(|e| format!("the checkpoint: {e}"))?;
    if c.size != receipt.size {
        return Err(format!("the checkpoint is of {} records, the receipt says {}", c.size, receipt.size));
    }
    let Some(rest) = receipt.leaf.strip_prefix("{\"v\":1,\"seq\":") else {
        return Err("the leaf is not a record".into());
    };
    if !rest.starts_with(&format!("{},", receipt.record)) {
        return Err(format!("the leaf is not record {}", receipt.record));
    }
    let proof = receipt
        .proof
        .iter()
        .map(|p| {
            STANDARD.decode(p).ok().and_then(|b| <Hash>::try_from(b.as_slice()).ok()).ok_or("an unreadable proof hash")
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    verify_inclusion(&leaf_hash(receipt.leaf.as_bytes()), receipt.record, receipt.size, &proof, &c.root)
        .map_err(|e| format!("the record is not in the signed tree: {e}"))
}

/// A tree known by the frontier of its first `start` leaves and the
/// leaves after them.
struct Known<'a> {
    start: u64,
    frontier: &'a [Hash],
    leaves: &'a [Hash],
}

impl Known<'_> {
    /// The audit path of leaf `m` in the subtree of leaves `lo..hi`
    /// (RFC 9162, 2.1.3.1).
    fn path(&self, m: u64, lo: u64, hi: u64) -> Result<Vec<Hash>, ProveError> {
        let n = hi - lo;
        if n <= 1 {
            return Ok(Vec::new());
        }
        let k = largest_power_of_two_below(n);
        if m < lo + k {
            let mut p = self.path(m, lo, lo + k)?;
            p.push(self.hash(lo + k, hi)?);
            Ok(p)
        } else {
            let mut p = self.path(m, lo + k, hi)?;
            p.push(self.hash(lo, lo + k)?);
            Ok(p)
        }
    }

    /// The hash of the subtree of leaves `lo..hi`.
    fn hash(&self, lo: u64, hi: u64) -> Result<Hash, ProveError> {
        if lo >= self.start {
            let (a, b) = (usize::try_from(lo - self.start), usize::try_from(hi - self.start));
            let leaves = match (a, b) {
                (Ok(a), Ok(b)) => self.leaves.get(a..b),
                _ => None,
            };
            return leaves.map(crate::tree::root).ok_or_else(|| ProveError::Log("a leaf is missing".into()));
        }
        // A subtree of the deleted part: one of the frontier's nodes.
        let mut at = 0u64;
        for (bit, node) in (0..64u32).rev().filter(|b| self.start & (1u64 << b) != 0).zip(self.frontier) {
            let size = 1u64 << bit;
            if at == lo && at + size == hi {
                return Ok(*node);
            }
            at += size;
        }
        if hi <= self.start {
            return Err(ProveError::Log(
                "the proof needs records from segments that were deleted; prove a later record".into(),
            ));
        }
        let n = hi - lo;
        let k = largest_power_of_two_below(n);
        Ok(node_hash(&self.hash(lo, lo + k)?, &self.hash(lo + k, hi)?))
    }
}

fn largest_power_of_two_below(n: u64) -> u64 {
    // n >= 2
    1u64 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{inclusion_proof, Frontier};

    #[test]
    fn paths_from_a_frontier_and_the_leaves_after_it_are_the_full_trees() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for size in 1..=40u64 {
            for start in 0..size {
                let mut f = Frontier::new();
                for l in &leaves[..start as usize] {
                    f.push(*l);
                }
                let known = Known { start, frontier: f.nodes(), leaves: &leaves[start as usize..size as usize] };
                for m in start..size {
                    let full = inclusion_proof(&leaves[..size as usize], m).unwrap();
                    assert_eq!(known.path(m, 0, size).unwrap(), full, "size {size}, start {start}, leaf {m}");
                }
            }
        }
    }
}
