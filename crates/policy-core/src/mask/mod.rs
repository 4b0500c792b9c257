//! Result masking (POLICY.md §5): column masks by lineage, and the values
//! they produce.

mod strategy;

pub use strategy::{Masking, REDACTED};
