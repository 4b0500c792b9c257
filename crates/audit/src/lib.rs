//! # portcullis-audit: the gateway's tamper-evident record
//!
//! Every session the gateway serves is written as JSON lines into
//! size-bounded segment files. Each record is a leaf of an append-only
//! Merkle tree hashed as in RFC 9162 ([`tree`]), and carries the hash of
//! the record before it; at intervals the writer signs the tree's size and
//! root as a checkpoint in the C2SP signed-note format ([`note`]), with
//! Ed25519. A checkpoint kept elsewhere pins every record before it.

pub mod body;
mod mapped;
pub mod note;
pub mod proof;
pub mod segment;
pub mod time;
pub mod tree;
pub mod verify;
pub mod writer;
