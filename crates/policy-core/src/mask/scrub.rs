//! Scrubbing server error and notice texts (docs/policy.md §5).
//!
//! PostgreSQL quotes values in some messages (`invalid input syntax for
//! type integer: "123-45-6789"`, `Key (ssn)=(123-45-6789) already exists`,
//! `Failing row contains (...)`, and whatever a `RAISE` prints). A client
//! could read a masked column through them: `SELECT ssn::int FROM users`.
//!
//! A value can reach a message in more ways than a list of error codes
//! can name: a cast to `regclass`, `current_setting(...)`, a privilege
//! function given a name, a broken `tsquery`, a `FETCH` from a cursor over
//! a masked column, the stored row a constraint quotes when an `UPDATE`
//! fails. So the rule starts from what the statement is, not from the
//! message. For every field of an `ErrorResponse` or `NoticeResponse` the
//! gateway relays, it asks a [`MessageScrubber`] (from
//! [`Engine::scrubber`](crate::Engine::scrubber)) what to send:
//!
//! - when a column mask applies to the caller and the statement is not
//!   proven to read no masked value (see [`MessageScrubber::withholds`]),
//!   every message becomes a generic one with the same SQLSTATE, and the
//!   detail, hint, context and internal query are dropped; only messages
//!   whose SQLSTATE carries no values ([`carries_no_values`]: the
//!   transaction's state, conflicts, resources, the operator, the
//!   connection, permission refusals) keep their text, through the
//!   detectors;
//! - otherwise the message, detail, hint, context and internal query pass
//!   through the detectors the caller is not exempt from;
//! - the other fields (severity, SQLSTATE, position, schema, table, column,
//!   type and constraint names, source file and line) carry no values and
//!   are kept.
//!
//! Texts that answer no statement of the caller's — a notification's
//! payload, the answer to a `Parse`, `Bind`, `Describe` or `Close`, which
//! run nothing — take [`Engine::text_scrubber`](crate::Engine::text_scrubber):
//! the detectors alone.

use crate::analyze::{Class, StatementFacts};
use crate::detect::Detectors;
use crate::identity::Identity;
use crate::mask::{active_masks, reads_masked, values, ActiveDetectors, ColumnMask};

/// What to send for one field of a server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    /// The field as the server sent it.
    Keep,
    /// This text instead.
    Replace(String),
    /// Leave the field out.
    Drop,
}

/// Whether messages of this SQLSTATE carry no value of the database, so a
/// withheld statement's message of it may still be shown: the
/// transaction's state (class `25`: "current transaction is aborted"),
/// conflicts (`40`: serialization failures, deadlocks), resources (`53`),
/// the operator (`57`: cancels, timeouts, shutdown), the connection
/// (`08`), and permission refusals (`42501`, which name catalog objects).
/// Every other code, even one whose usual texts are fixed, may quote a
/// value: `42704` names the setting `current_setting(ssn)` asked for.
///
/// ```
/// use policy_core::carries_no_values;
/// assert!(carries_no_values("25P02")); // in failed transaction
/// assert!(carries_no_values("42501")); // permission denied for table t
/// assert!(!carries_no_values("22P02")); // invalid input syntax: "..."
/// assert!(!carries_no_values("42704")); // unrecognized configuration parameter "..."
/// ```
pub fn carries_no_values(sqlstate: &str) -> bool {
    sqlstate.len() == 5 && (matches!(sqlstate.get(..2), Some("25" | "40" | "53" | "57" | "08")) || sqlstate == "42501")
}

/// Whether nothing `facts` runs can put a value of a column masked for the
/// caller (`active`) into a message: a read the engine follows whole that
/// reads no such column, a setting, a `PREPARE`, a transaction's start or
/// rollback. A `FETCH` or `MOVE` runs a cursor's query the statement does
/// not show, a `COMMIT` checks deferred constraints and fills `WITH HOLD`
/// cursors, and a write, DDL or opaque code can make the server quote a
/// stored row: none of them is proven.
fn proven_clean(active: &[&ColumnMask], facts: &StatementFacts) -> bool {
    if facts.opaque {
        return false;
    }
    match facts.class {
        // A `PREPARE` takes the class of what it prepares, and runs none of it.
        _ if facts.command == "PREPARE" => true,
        Class::Read => !matches!(facts.command.as_str(), "FETCH" | "MOVE") && !reads_masked(active, facts),
        Class::Session => true,
        Class::Transaction => !matches!(facts.command.as_str(), "COMMIT" | "COMMIT PREPARED" | "PREPARE TRANSACTION"),
        Class::Write | Class::Ddl | Class::Dcl | Class::Admin | Class::Procedural | Class::Unknown => false,
    }
}

/// Scrubs the error and notice texts of one statement for one caller.
#[derive(Debug, Clone, Default)]
pub struct MessageScrubber {
    withholds: bool,
    detectors: Option<ActiveDetectors>,
}

impl MessageScrubber {
    /// The scrubber for the messages of `statements` (all of one query
    /// string, or the one an `Execute` runs; none when the gateway cannot
    /// tell which statement a message answers, which withholds).
    pub(crate) fn new<'a>(
        masks: &[ColumnMask],
        detectors: &Detectors,
        identity: &Identity,
        statements: impl IntoIterator<Item = &'a StatementFacts>,
    ) -> Self {
        let active = active_masks(masks, identity);
        let withholds = !active.is_empty() && {
            let mut statements = statements.into_iter().peekable();
            statements.peek().is_none() || statements.any(|f| !proven_clean(&active, f))
        };
        MessageScrubber { withholds, detectors: ActiveDetectors::for_identity(detectors, identity) }
    }

    /// The scrubber for texts no statement of the caller produced: the
    /// detectors alone.
    pub(crate) fn text(detectors: &Detectors, identity: &Identity) -> Self {
        MessageScrubber { withholds: false, detectors: ActiveDetectors::for_identity(detectors, identity) }
    }

    /// Whether the messages are withheld (except those of SQLSTATEs that
    /// [carry no values](carries_no_values)): a column mask applies to
    /// the caller and the statement is not a read the engine follows whole
    /// that reads no masked column (nor a setting, a `PREPARE`, a
    /// transaction's start or rollback).
    pub fn withholds(&self) -> bool {
        self.withholds
    }

    /// What to send for field `code` (the protocol's field type byte: `M`
    /// message, `D` detail, `H` hint, `W` context, `q` internal query, ...)
    /// of a message with SQLSTATE `sqlstate`.
    ///
    /// ```
    /// use policy_core::{Engine, Identity, Policy, Scrubbed};
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[mask]]
    ///     name = "ssn"
    ///     columns = ["*.*.ssn"]
    ///     strategy = "redact"
    ///     [[detector]]
    ///     name = "ssns"
    ///     kinds = ["us_ssn"]
    ///     strategy = "redact"
    /// "#, "p.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let bob = Identity::new("bob");
    /// let session = engine.new_session();
    ///
    /// // A statement reading a masked column: the value-quoting message is replaced.
    /// let a = engine.analyze(&session, "SELECT ssn::int FROM users");
    /// let s = engine.scrubber(&bob, &a.statements);
    /// let msg = r#"invalid input syntax for type integer: "123-45-6789""#;
    /// assert!(matches!(s.scrub("22P02", b'M', msg), Scrubbed::Replace(m) if !m.contains("6789")));
    ///
    /// // Any other statement: the detectors cut the value out.
    /// let a = engine.analyze(&session, "SELECT '123-45-6789'::int");
    /// let s = engine.scrubber(&bob, &a.statements);
    /// assert_eq!(
    ///     s.scrub("22P02", b'M', msg),
    ///     Scrubbed::Replace(r#"invalid input syntax for type integer: "[redacted]""#.to_string()),
    /// );
    /// assert_eq!(s.scrub("42P01", b'M', r#"relation "x" does not exist"#), Scrubbed::Keep);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn scrub(&self, sqlstate: &str, code: u8, text: &str) -> Scrubbed {
        if !matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            return Scrubbed::Keep;
        }
        if self.withholds {
            if code != b'M' {
                return Scrubbed::Drop;
            }
            if !carries_no_values(sqlstate) {
                return Scrubbed::Replace(format!(
                    "the server's message (SQLSTATE {sqlstate}) is withheld: it may quote a value masked for you"
                ));
            }
        }
        let Some(d) = &self.detectors else { return Scrubbed::Keep };
        match values::scan(&d.detectors, &d.active, values::Syntax::Plain, text.as_bytes()) {
            values::Scanned::Clean => Scrubbed::Keep,
            values::Scanned::Replaced(v) => Scrubbed::Replace(String::from_utf8(v).unwrap_or_default()),
            values::Scanned::Null => Scrubbed::Drop,
        }
    }
}
