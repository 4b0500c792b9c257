//! Approvals: statements held on their live session until people decide.
//!
//! - [`ledger`]: requests, votes and grants, and the rules of who may
//!   approve what, with no I/O.
pub mod ledger;
