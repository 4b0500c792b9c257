//! `COPY ... TO STDOUT`: which columns the data has, how it is masked, and
//! when it cannot be.
//!
//! The server announces a COPY's data with `CopyOutResponse` (its overall
//! format, text or binary, and a column count), then sends one `CopyData`
//! message per line. The gateway asks [`Engine::copy_out_plan`] what to do
//! with them once, at the `CopyOutResponse`:
//!
//! ```text
//!   CopyOutResponse ──▶ Engine::copy_out_table(facts) ── Some(t) ──▶ the caller looks up t's columns
//!                            │                                                   │
//!                            └──────────────▶ Engine::copy_out_plan(.., table_columns) ◀─┘
//!                                                   │
//!                        Forward │ Mask(CopyLayout::Text) │ Refuse(reason)
//! ```

use crate::analyze::StatementFacts;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::mask::{ColumnInfo, RowMasker};

/// How the lines of a `COPY ... TO STDOUT` are laid out, as far as masking
/// reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CopyLayout {
    /// PostgreSQL's text format with its defaults: one line per row,
    /// columns separated by a tab, `\N` for NULL, backslash escapes, no
    /// header line.
    Text,
}

/// What to do with the data of a `COPY ... TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyOutAction {
    /// Nothing is masked or scanned for this identity: the data passes as
    /// it comes, whatever its format.
    Forward,
    /// Mask every line (with [`CopyOutPlan::masker`]), read in this layout.
    Mask(CopyLayout),
    /// Something would have to be masked, but the data's layout cannot be:
    /// stop the COPY (cancel it) and tell the client this reason.
    Refuse(String),
}

/// The engine's plan for one `COPY ... TO STDOUT` result, from
/// [`Engine::copy_out_plan`].
#[derive(Debug)]
#[non_exhaustive]
pub struct CopyOutPlan {
    /// The masker of the result's columns (every column text). Keep it
    /// even when the action is [`CopyOutAction::Forward`]: it is then a
    /// no-op ([`RowMasker::is_noop`]).
    pub masker: RowMasker,
    /// Forward, mask, or refuse.
    pub action: CopyOutAction,
}

impl CopyOutPlan {
    /// Why the COPY is refused, if it is.
    pub fn refusal(&self) -> Option<&str> {
        match &self.action {
            CopyOutAction::Refuse(reason) => Some(reason),
            CopyOutAction::Forward | CopyOutAction::Mask(_) => None,
        }
    }
}

const BINARY_MASKED_COLUMNS: &str =
    "COPY in binary format of a result with masked columns is refused; use the text format";
const BINARY_DETECTORS: &str =
    "COPY in binary format cannot be scanned by the policy's PII detectors and is refused; use the text format";
const NOT_PLAIN_TEXT: &str = "COPY of masked data is done in the plain text format only (no CSV, DELIMITER, \
                              HEADER, NULL, QUOTE, ESCAPE or ENCODING options); this one is refused";

/// The table a `COPY table TO STDOUT` copies whole (its facts have a single
/// `*` output column from one relation), as `schema.table`.
fn whole_table(facts: &StatementFacts) -> Option<&str> {
    match facts.output_columns.as_slice() {
        [only] if only.name == "*" && only.sources.len() == 1 => {
            only.sources.first().and_then(|s| s.strip_suffix(".*"))
        }
        _ => None,
    }
}

impl Engine {
    /// The table whose columns the caller should look up (in order, as
    /// `schema.table.column` names: [`ColumnInfo::source_name`]) before
    /// [`Engine::copy_out_plan`]: when the data is the whole rows of one
    /// table, which the analysis cannot name column by column (`COPY table
    /// TO STDOUT` without a column list, or `COPY (SELECT * FROM table) TO
    /// STDOUT`), `Some("schema.table")` if the policy has column masks
    /// (without masks the names change nothing, and no lookup is needed).
    /// `None` when the analysis knows the columns (`COPY users (id, ssn)
    /// TO STDOUT`, `COPY (SELECT id, ssn FROM users) TO STDOUT`).
    ///
    /// ```
    /// use policy_core::{Engine, Policy};
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[mask]]
    ///     name = "ssn"
    ///     columns = ["*.*.ssn"]
    ///     strategy = "redact"
    /// "#, "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let session = engine.new_session();
    /// let facts = engine.analyze(&session, "COPY users TO STDOUT").statements.remove(0);
    /// assert_eq!(engine.copy_out_table(&facts), Some("public.users"));
    /// let facts = engine.analyze(&session, "COPY (SELECT id, ssn FROM users) TO STDOUT").statements.remove(0);
    /// assert_eq!(engine.copy_out_table(&facts), None);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn copy_out_table<'f>(&self, facts: &'f StatementFacts) -> Option<&'f str> {
        whole_table(facts).filter(|_| !self.policy().masks.is_empty())
    }

    /// Plans the data of a `COPY ... TO STDOUT` for `identity`, when the
    /// server's `CopyOutResponse` announced `columns` columns, in binary
    /// when `binary` (its overall format is 1).
    ///
    /// `facts` is the statement's analysis (`None` when the caller does not
    /// know which statement the data belongs to: the columns are then
    /// anonymous, and only detectors can apply). The columns are named from
    /// the analysis when it knows every one of them, else `column1`,
    /// `column2`, ...; for `COPY table TO STDOUT`, `table_columns` (what
    /// the caller looked up for [`Engine::copy_out_table`]) names them and
    /// says which table column each one is, when it has `columns` entries.
    ///
    /// Only the plain text layout can be masked, line by line: when
    /// something must be masked or scanned and the data is binary, or text
    /// with options (CSV, DELIMITER, HEADER, NULL, QUOTE, ESCAPE, ENCODING),
    /// the plan is a refusal.
    ///
    /// ```
    /// use policy_core::{CopyLayout, CopyOutAction, Engine, Identity, Policy};
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[mask]]
    ///     name = "ssn"
    ///     columns = ["*.*.ssn"]
    ///     strategy = "redact"
    ///     exempt_groups = ["pii-readers"]
    /// "#, "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let session = engine.new_session();
    /// let facts = engine.analyze(&session, "COPY users TO STDOUT").statements.remove(0);
    /// let columns = ["public.users.id".to_string(), "public.users.ssn".to_string()];
    ///
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&facts), 2, false, Some(&columns));
    /// assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
    /// assert_eq!(plan.masker.mask_of(1), Some("ssn"));
    ///
    /// let csv = engine.analyze(&session, "COPY users TO STDOUT (FORMAT csv)").statements.remove(0);
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&csv), 2, false, Some(&columns));
    /// assert!(plan.refusal().is_some());
    ///
    /// let reader = Identity::new("ann").with_groups(["pii-readers"]);
    /// let plan = engine.copy_out_plan(&reader, Some(&csv), 2, false, Some(&columns));
    /// assert_eq!(plan.action, CopyOutAction::Forward);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn copy_out_plan(
        &self,
        identity: &Identity,
        facts: Option<&StatementFacts>,
        columns: usize,
        binary: bool,
        table_columns: Option<&[String]>,
    ) -> CopyOutPlan {
        let mut fields: Vec<ColumnInfo> = match facts {
            Some(f) if f.output_columns.len() == columns && f.output_columns.iter().all(|c| c.name != "*") => {
                f.output_columns.iter().map(|c| ColumnInfo::text(&c.name, None)).collect()
            }
            _ => (1..=columns).map(|i| ColumnInfo::text(&format!("column{i}"), None)).collect(),
        };
        if let Some(names) = table_columns.filter(|n| n.len() == columns) {
            if facts.and_then(|f| self.copy_out_table(f)).is_some() {
                fields = names.iter().map(|n| ColumnInfo::text(n, Some(n))).collect();
            }
        }
        let default_facts;
        let facts_for_masks = match facts {
            Some(f) => f,
            None => {
                default_facts = StatementFacts::default();
                &default_facts
            }
        };
        let masker = self.masker(identity, facts_for_masks, &fields);
        // Only the plain text layout is masked: tab-separated, `\N` for
        // NULL, no header. Anything else with something to mask is refused.
        let plain = facts.is_none_or(|f| f.copy_options.iter().all(|o| o.eq_ignore_ascii_case("format=text")));
        let column_masks = (0..fields.len()).any(|i| masker.mask_of(i).is_some());
        let action = match (masker.is_noop(), binary, plain) {
            (true, _, _) => CopyOutAction::Forward,
            (false, true, _) if column_masks => CopyOutAction::Refuse(BINARY_MASKED_COLUMNS.to_string()),
            (false, true, _) => CopyOutAction::Refuse(BINARY_DETECTORS.to_string()),
            (false, false, false) => CopyOutAction::Refuse(NOT_PLAIN_TEXT.to_string()),
            (false, false, true) => CopyOutAction::Mask(CopyLayout::Text),
        };
        CopyOutPlan { masker, action }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, reason = "test code")]

    use std::borrow::Cow;

    use super::*;
    use crate::engine::Keys;
    use crate::policy::Policy;

    const MASKS: &str = r#"
version = 1
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4
exempt_groups = ["pii-readers"]
"#;

    const DETECTORS_ONLY: &str = r#"
version = 1
[[detector]]
name = "cards"
kinds = ["credit_card"]
strategy = "redact"
"#;

    fn engine(policy: &str) -> Engine {
        Engine::new(Policy::from_toml_str(policy, "copy.toml").unwrap(), Keys::default()).unwrap()
    }

    fn facts(e: &Engine, sql: &str) -> StatementFacts {
        e.analyze(&e.new_session(), sql).statements.remove(0)
    }

    fn bob() -> Identity {
        Identity::new("bob")
    }

    fn reader() -> Identity {
        Identity::new("ann").with_groups(["pii-readers"])
    }

    fn users() -> Vec<String> {
        ["id", "name", "ssn"].iter().map(|c| ColumnInfo::source_name("public", "users", c)).collect()
    }

    /// Masks one text row with the plan's masker.
    fn masked(plan: &CopyOutPlan, values: &[&str]) -> Vec<String> {
        let mut row: Vec<Option<Cow<'_, [u8]>>> = values.iter().map(|v| Some(Cow::Borrowed(v.as_bytes()))).collect();
        plan.masker.mask_row(&mut row);
        row.into_iter().map(|v| String::from_utf8(v.unwrap().into_owned()).unwrap()).collect()
    }

    #[test]
    fn the_table_to_look_up() {
        let e = engine(MASKS);
        assert_eq!(e.copy_out_table(&facts(&e, "COPY users TO STDOUT")), Some("public.users"));
        assert_eq!(e.copy_out_table(&facts(&e, "COPY private.users TO STDOUT (FORMAT csv)")), Some("private.users"));
        assert_eq!(e.copy_out_table(&facts(&e, "COPY (SELECT * FROM users) TO STDOUT")), Some("public.users"));
        assert_eq!(e.copy_out_table(&facts(&e, "COPY (SELECT id, ssn FROM users) TO STDOUT")), None);
        assert_eq!(e.copy_out_table(&facts(&e, "COPY (SELECT * FROM users, orders) TO STDOUT")), None);
        // A column list names the columns.
        let f = facts(&e, "COPY users (id, ssn) TO STDOUT");
        assert_eq!(e.copy_out_table(&f), None);
        let plan = e.copy_out_plan(&bob(), Some(&f), 2, false, None);
        assert_eq!((plan.masker.mask_of(0), plan.masker.mask_of(1)), (None, Some("ssn")));
        // Without column masks the names change nothing.
        let e = engine(DETECTORS_ONLY);
        assert_eq!(e.copy_out_table(&facts(&e, "COPY users TO STDOUT")), None);
    }

    #[test]
    fn a_whole_table_is_masked_by_its_looked_up_columns() {
        let e = engine(MASKS);
        let f = facts(&e, "COPY users TO STDOUT");
        let plan = e.copy_out_plan(&bob(), Some(&f), 3, false, Some(&users()));
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!(plan.refusal(), None);
        assert_eq!((plan.masker.mask_of(0), plan.masker.mask_of(2)), (None, Some("ssn")));
        assert_eq!(masked(&plan, &["1", "Ann", "123-45-6789"])[2], "****6789");
        // Without the lookup (or with a count that does not match) the
        // columns are anonymous: a `*` whose lineage is unproven is masked
        // whole, in every column.
        for looked_up in [None, Some(&users()[..2])] {
            let plan = e.copy_out_plan(&bob(), Some(&f), 3, false, looked_up);
            assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        }
        // An exempt identity: nothing to do, whatever the layout.
        for binary in [false, true] {
            let plan = e.copy_out_plan(&reader(), Some(&f), 3, binary, Some(&users()));
            assert_eq!(plan.action, CopyOutAction::Forward);
            assert!(plan.masker.is_noop());
        }
    }

    #[test]
    fn a_query_is_masked_by_its_lineage() {
        let e = engine(MASKS);
        let f = facts(&e, "COPY (SELECT id, ssn AS s FROM users) TO STDOUT");
        let plan = e.copy_out_plan(&bob(), Some(&f), 2, false, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!((plan.masker.mask_of(0), plan.masker.mask_of(1)), (None, Some("ssn")));
        // Nothing masked in it: forwarded.
        let f = facts(&e, "COPY (SELECT id, name FROM users) TO STDOUT (FORMAT binary)");
        assert_eq!(e.copy_out_plan(&bob(), Some(&f), 2, true, None).action, CopyOutAction::Forward);
    }

    #[test]
    fn layouts_other_than_plain_text_are_refused_when_something_is_masked() {
        let e = engine(MASKS);
        for sql in [
            "COPY users TO STDOUT (FORMAT csv)",
            "COPY users TO STDOUT WITH CSV HEADER",
            "COPY users TO STDOUT (DELIMITER '|')",
            "COPY users TO STDOUT (NULL 'x')",
            "COPY users TO STDOUT (HEADER)",
            "COPY users TO STDOUT (ENCODING 'LATIN1')",
        ] {
            let plan = e.copy_out_plan(&bob(), Some(&facts(&e, sql)), 3, false, Some(&users()));
            assert_eq!(plan.refusal(), Some(NOT_PLAIN_TEXT), "{sql}");
        }
        // FORMAT text spelled out is the plain layout.
        let f = facts(&e, "COPY users TO STDOUT (FORMAT text)");
        assert_eq!(
            e.copy_out_plan(&bob(), Some(&f), 3, false, Some(&users())).action,
            CopyOutAction::Mask(CopyLayout::Text)
        );
        // Binary: the message says why.
        let f = facts(&e, "COPY users TO STDOUT (FORMAT binary)");
        let plan = e.copy_out_plan(&bob(), Some(&f), 3, true, Some(&users()));
        assert_eq!(plan.refusal(), Some(BINARY_MASKED_COLUMNS));
        assert!(plan.refusal().is_some_and(|r| r.contains("use the text format")));
    }

    #[test]
    fn detectors_alone_need_the_text_layout_too() {
        let e = engine(DETECTORS_ONLY);
        let f = facts(&e, "COPY (SELECT note FROM orders) TO STDOUT");
        let plan = e.copy_out_plan(&bob(), Some(&f), 1, false, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!(masked(&plan, &["card 4111 1111 1111 1111"])[0], format!("card {}", crate::mask::REDACTED));
        let plan = e.copy_out_plan(&bob(), Some(&f), 1, true, None);
        assert_eq!(plan.refusal(), Some(BINARY_DETECTORS));
        let f = facts(&e, "COPY (SELECT note FROM orders) TO STDOUT (FORMAT csv)");
        assert_eq!(e.copy_out_plan(&bob(), Some(&f), 1, false, None).refusal(), Some(NOT_PLAIN_TEXT));
    }

    #[test]
    fn unknown_statements_have_anonymous_columns() {
        // No facts: column1..n, plain text assumed, detectors still apply.
        let e = engine(DETECTORS_ONLY);
        let plan = e.copy_out_plan(&bob(), None, 2, false, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!(e.copy_out_plan(&bob(), None, 2, true, None).refusal(), Some(BINARY_DETECTORS));
        // Column masks: with no lineage, every column is masked whole (and
        // looked-up names are not taken without the facts that ask for them).
        let e = engine(MASKS);
        let plan = e.copy_out_plan(&bob(), None, 3, false, Some(&users()));
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert!((0..3).all(|i| plan.masker.mask_of(i) == Some("ssn")));
        assert_eq!(e.copy_out_plan(&reader(), None, 3, true, None).action, CopyOutAction::Forward);
    }
}
