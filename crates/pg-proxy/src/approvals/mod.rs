//! Approvals: statements held on their live session until people decide.
//!
//! - [`ledger`]: requests, votes and grants, and the rules of who may
//!   approve what, with no I/O;
//! - [`store`]: one gateway's requests in memory, and the sessions' hold
//!   handler that opens them and waits;
//! - [`plan`]: the held statements' plans, for approvers;
//! - [`webhook`]: requests and outcomes posted to a webhook.
pub mod ledger;
pub mod plan;
pub mod shared;
pub mod store;
pub mod webhook;
