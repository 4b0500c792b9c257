//! Scrubbing server error and notice texts (docs/policy.md §5).
//!
//! PostgreSQL quotes values in some messages (`invalid input syntax for
//! type integer: "123-45-6789"`, `Key (ssn)=(123-45-6789) already exists`,
//! `Failing row contains (...)`, and whatever a `RAISE` prints). A client
//! could read a masked column through them: `SELECT ssn::int FROM users`.
//!
//! For every field of an `ErrorResponse` or `NoticeResponse` the gateway
//! relays, it asks a [`MessageScrubber`] (from
//! [`Engine::scrubber`](crate::Engine::scrubber)) what to send:
//!
//! - when the statement may read a column masked for the caller and the
//!   SQLSTATE is of a class whose messages quote values (see
//!   [`quotes_values`]), the message becomes a generic one with the same
//!   SQLSTATE and the detail, hint, context and internal query are
//!   dropped;
//! - otherwise the message, detail, hint, context and internal query pass
//!   through the detectors the caller is not exempt from;
//! - the other fields (severity, SQLSTATE, position, schema, table, column,
//!   type and constraint names, source file and line) carry no values and
//!   are kept.

use crate::analyze::StatementFacts;
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

/// Whether messages of this SQLSTATE's class may quote a value: data
/// exceptions (`22`), integrity constraint violations (`23`), `WITH CHECK
/// OPTION` violations (`44`), PL/pgSQL `RAISE` (`P0`), routine exceptions
/// (`2F`, `38`, `39`), notices and warnings (`00`, `01`: `RAISE NOTICE`
/// prints anything), and internal errors (`XX`).
///
/// ```
/// use policy_core::quotes_values;
/// assert!(quotes_values("22P02")); // invalid input syntax
/// assert!(quotes_values("23505")); // unique violation: "Key (x)=(...)"
/// assert!(!quotes_values("42P01")); // undefined table
/// ```
pub fn quotes_values(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("22" | "23" | "44" | "P0" | "2F" | "38" | "39" | "00" | "01" | "XX"))
        || sqlstate.len() != 5
}

/// Scrubs the error and notice texts of one statement for one caller.
#[derive(Debug, Clone, Default)]
pub struct MessageScrubber {
    reads_masked: bool,
    detectors: Option<ActiveDetectors>,
}

impl MessageScrubber {
    pub(crate) fn new<'a>(
        masks: &[ColumnMask],
        detectors: &Detectors,
        identity: &Identity,
        statements: impl IntoIterator<Item = &'a StatementFacts>,
    ) -> Self {
        let active = active_masks(masks, identity);
        MessageScrubber {
            reads_masked: statements.into_iter().any(|f| reads_masked(&active, f)),
            detectors: ActiveDetectors::for_identity(detectors, identity),
        }
    }

    /// Whether the statement may read a column masked for the caller.
    pub fn reads_masked(&self) -> bool {
        self.reads_masked
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
        if self.reads_masked && quotes_values(sqlstate) {
            return match code {
                b'M' => Scrubbed::Replace(format!(
                    "the server's message (SQLSTATE {sqlstate}) is withheld: the statement reads a masked column"
                )),
                _ => Scrubbed::Drop,
            };
        }
        let Some(d) = &self.detectors else { return Scrubbed::Keep };
        match values::scan(&d.detectors, &d.active, values::Syntax::Plain, text.as_bytes()) {
            values::Scanned::Clean => Scrubbed::Keep,
            values::Scanned::Replaced(v) => Scrubbed::Replace(String::from_utf8(v).unwrap_or_default()),
            values::Scanned::Null => Scrubbed::Drop,
        }
    }
}
