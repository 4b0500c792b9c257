//! Holds: a statement kept on the live session until someone decides.
//!
//! When a decision is `require_approval` and the gateway has a
//! [`HoldHandler`], the session core holds the batch holding the statement
//! instead of refusing it: nothing of it reaches the server, the client's
//! further messages are read into a bounded buffer, and the core asks for
//! an outcome with a [`Need::Hold`](super::Need::Hold). The hold ends on
//!
//! - [`HoldOutcome::Release`]: the batch goes on (recorded, then
//!   forwarded) as if it had been allowed;
//! - [`HoldOutcome::Refuse`]: the client gets `42501` with the reason;
//! - the hold's timeout (an error naming it, `57014`), the client's
//!   `CancelRequest` (`57014`), or the client going away.
//!
//! The session goes on after each. Without a handler, `require_approval`
//! statements are refused, saying approvals are not available.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use policy_core::Decision;

/// One statement of a held batch, as an approver must see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HeldStatement {
    /// The SQL text.
    pub sql: Arc<str>,
    /// The bound parameters as text (binary ones as `\x` and hex; `None` is
    /// NULL); empty for a simple query.
    pub parameters: Vec<Option<String>>,
    /// The decision that asked for approval.
    pub decision: Arc<Decision>,
    /// How the server will read its text and resolve its names.
    pub reading: Reading,
}

impl HeldStatement {
    /// A held statement.
    pub fn new(
        sql: Arc<str>,
        parameters: Vec<Option<String>>,
        decision: Arc<Decision>,
        reading: Reading,
    ) -> HeldStatement {
        HeldStatement { sql, parameters, decision, reading }
    }
}

/// How the server will read a held statement: what a plan of it must be
/// made with, for the plan to be of what will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Known: the settings the server has when the statement arrives.
    Known {
        /// The `search_path`, `$user` replaced by the session's role.
        search_path: Vec<String>,
        /// `standard_conforming_strings`.
        standard_conforming_strings: bool,
    },
    /// The gateway cannot be sure of them (a statement before it in the
    /// same batch changes settings, and the server has not been asked
    /// since): nothing is planned.
    Unsure,
}

/// What is held: every statement of the batch that needs approval.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HoldRequest {
    /// The session holding it.
    pub session: u64,
    /// The statements needing approval, in order.
    pub statements: Vec<HeldStatement>,
    /// The client's reason for them (`SET portcullis.reason`), if it gave
    /// one.
    pub reason: Option<String>,
    /// The session's database.
    pub database: String,
}

/// How a hold ends, as told by its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Run it.
    Release,
    /// Do not run it; the client is told why.
    Refuse {
        /// The reason, shown to the client.
        reason: String,
    },
}

/// The future a handler returns.
pub type Deciding = Pin<Box<dyn Future<Output = HoldOutcome> + Send>>;

/// What a handler answers a hold with: what to tell the client at once,
/// and the outcome to come.
#[must_use = "the session waits for the outcome"]
pub struct Holding {
    /// Told to the client as a `NoticeResponse` when the hold begins: the
    /// request's id and how to approve it.
    pub notice: Option<String>,
    /// Resolves to the hold's outcome; dropped when the hold ends another
    /// way (timeout, cancel, client gone).
    pub outcome: Deciding,
}

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holding").field("notice", &self.notice).finish_non_exhaustive()
    }
}

/// Decides held statements (the approvals store plugs in here).
pub trait HoldHandler: Send + Sync + std::fmt::Debug {
    /// Starts deciding `request`.
    fn hold(&self, request: HoldRequest) -> Holding;
}
