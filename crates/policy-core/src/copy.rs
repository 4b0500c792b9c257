//! `COPY ... TO STDOUT`: which columns the data has, how it is masked, and
//! when it cannot be.
//!
//! The server announces a COPY's data with `CopyOutResponse` (its overall
//! format, text or binary, and a column count), then sends one `CopyData`
//! message per line (per row in binary). The gateway asks
//! [`Engine::copy_out_plan`] what to do with them once, at the
//! `CopyOutResponse`:
//!
//! ```text
//!   CopyOutResponse ──▶ Engine::copy_out_lookups(facts, binary) ── [t, ...] ──▶ the caller looks up their columns
//!                            │                                                      │ (names, type OIDs)
//!                            └──────────────▶ Engine::copy_out_plan(.., table_columns) ◀─┘
//!                                                   │
//!                  Forward │ Mask(CopyLayout::Text | Csv | Binary) │ Refuse(reason)
//! ```

use crate::analyze::StatementFacts;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::mask::{ColumnInfo, RowMasker};

/// How the lines of a `COPY ... TO STDOUT` are laid out, as far as masking
/// reads them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CopyLayout {
    /// PostgreSQL's text format with its defaults: one line per row,
    /// columns separated by a tab, `\N` for NULL, backslash escapes, no
    /// header line.
    Text,
    /// PostgreSQL's CSV format, with the options the statement gave.
    Csv(CsvLayout),
    /// PostgreSQL's binary format: a header, then per row a field count
    /// and each field as a length word and the bytes of the type's binary
    /// form (`-1` for NULL), then `-1` as the end. A masked value of a
    /// text-like column ([`ColumnInfo::is_text_type`]) is written as its
    /// masked text; one of any other type, whose binary form masked text
    /// cannot take, becomes NULL ([`RowMasker::retyped_columns`] lists
    /// them). The masker's columns say `binary` and carry the types the
    /// caller knew ([`Engine::copy_out_plan`]).
    Binary,
}

/// PostgreSQL's CSV format as a `COPY ... TO STDOUT (FORMAT csv, ...)`
/// sets it: one `CopyData` message per row (a quoted value may hold line
/// breaks), and a header line first when [`CsvLayout::header`].
///
/// A masked value is written back quoted when the server quoted the value
/// it replaces (so `FORCE_QUOTE` columns stay quoted) or when it needs
/// quotes (it holds the delimiter, the quote, a line break, or equals the
/// NULL string, or is `\.` alone on its line); inside quotes, the quote and escape characters are
/// preceded by the escape character, as PostgreSQL writes them.
///
/// ```
/// use policy_core::{CopyLayout, CsvLayout};
/// let layout = CopyLayout::from_options(&["format=csv".into(), "header=true".into(), "delimiter=;".into()]);
/// let Ok(CopyLayout::Csv(csv)) = layout else { panic!("{layout:?}") };
/// assert_eq!((csv.delimiter, csv.quote, csv.escape, csv.header), (b';', b'"', b'"', true));
/// assert_eq!(&*csv.null, "");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CsvLayout {
    /// The byte between columns (`DELIMITER`, default `,`).
    pub delimiter: u8,
    /// The byte around quoted values (`QUOTE`, default `"`).
    pub quote: u8,
    /// The byte before a quote or escape byte inside a quoted value
    /// (`ESCAPE`, default the quote).
    pub escape: u8,
    /// How NULL is written, unquoted (`NULL`, default the empty string).
    pub null: Box<str>,
    /// Whether the first line is a header of column names (`HEADER`): it
    /// is passed on as it is.
    pub header: bool,
}

impl CopyLayout {
    /// The layout a `COPY ... TO STDOUT` with these options (as
    /// [`StatementFacts::copy_options`] gives them: `name` or
    /// `name=value`) sends its data in: [`CopyLayout::Text`] for the
    /// plain text format, [`CopyLayout::Csv`] for CSV. An option the
    /// gateway cannot read masked data under is an error that names it
    /// and says what to do; `binary` is not a layout of lines (the caller
    /// learns it from the server's `CopyOutResponse`) and is accepted
    /// here as the text layout's options.
    pub fn from_options(options: &[String]) -> Result<CopyLayout, String> {
        let mut csv = false;
        let mut layout = CsvLayout { delimiter: b',', quote: b'"', escape: b'"', null: "".into(), header: false };
        let mut escape = None;
        let mut text_options = Vec::new();
        for option in options {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (option.as_str(), None),
            };
            match (name, value) {
                ("format", Some(f)) if f.eq_ignore_ascii_case("csv") => csv = true,
                ("format", Some(f)) if f.eq_ignore_ascii_case("text") || f.eq_ignore_ascii_case("binary") => {}
                ("delimiter", Some(v)) => layout.delimiter = one_byte("DELIMITER", v)?,
                ("quote", Some(v)) => layout.quote = one_byte("QUOTE", v)?,
                ("escape", Some(v)) => escape = Some(one_byte("ESCAPE", v)?),
                ("null", Some(v)) => layout.null = v.into(),
                ("header", None) => layout.header = true,
                ("header", Some(v)) => match crate::analyze::parse_bool(v) {
                    Some(on) => layout.header = on,
                    None => return Err(refuse_option("HEADER", v)),
                },
                // Which columns are quoted: kept from what the server sent.
                ("force_quote", _) => {}
                ("encoding", _) => {
                    return Err("COPY of masked data is read in UTF-8, the encoding the gateway asks the server \
                                for; drop the ENCODING option"
                        .to_string())
                }
                (other, v) => return Err(refuse_option(&other.to_ascii_uppercase(), v.unwrap_or(""))),
            }
            if name != "format" {
                text_options.push(name.to_ascii_uppercase());
            }
        }
        if !csv {
            return match text_options.first() {
                None => Ok(CopyLayout::Text),
                Some(option) => Err(format!(
                    "COPY of masked data in the text format is read with its default options only; drop the \
                     {option} option, or use FORMAT csv"
                )),
            };
        }
        layout.escape = escape.unwrap_or(layout.quote);
        if [b'\r', b'\n'].contains(&layout.delimiter) || layout.delimiter == layout.quote {
            return Err(refuse_option("DELIMITER", &char::from(layout.delimiter).to_string()));
        }
        Ok(CopyLayout::Csv(layout))
    }
}

/// A one-byte option value (PostgreSQL accepts no other for these).
fn one_byte(option: &str, value: &str) -> Result<u8, String> {
    match value.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(refuse_option(option, value)),
    }
}

fn refuse_option(option: &str, value: &str) -> String {
    format!("COPY of masked data cannot be read with the option {option} {value:?}; drop the {option} option")
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

/// The one table column a result column is a plain reference to.
fn plain_source(c: &crate::OutputColumn) -> Option<&str> {
    match c.sources.as_slice() {
        [only] if c.direct && !c.unknown && !only.ends_with(".*") => Some(only),
        _ => None,
    }
}

/// `schema.table` of a `schema.table.column` name.
fn table_of_source(source: &str) -> Option<String> {
    match ColumnInfo::split_name(source)?.as_slice() {
        [schema, table, _] => Some(crate::analyze::qualified(schema, table)),
        _ => None,
    }
}

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

    /// The tables whose columns (names and type OIDs) the caller should
    /// look up before [`Engine::copy_out_plan`]: the table of
    /// [`Engine::copy_out_table`]; and for binary data, which is masked by
    /// type, every table a result column refers to plainly (`COPY users
    /// (id, ssn) TO STDOUT (FORMAT binary)`, `COPY (SELECT id, ssn AS s
    /// FROM users) TO ...`), so that a masked value of a text column keeps
    /// its masked text instead of becoming NULL. Empty without column
    /// masks.
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
    /// let facts = engine.analyze(&session, "COPY (SELECT id, ssn FROM users) TO STDOUT").statements.remove(0);
    /// assert!(engine.copy_out_lookups(&facts, false).is_empty());
    /// assert_eq!(engine.copy_out_lookups(&facts, true), ["public.users"]);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn copy_out_lookups(&self, facts: &StatementFacts, binary: bool) -> Vec<String> {
        if let Some(table) = self.copy_out_table(facts) {
            return vec![table.to_string()];
        }
        if !binary || self.policy().masks.is_empty() {
            return Vec::new();
        }
        let mut tables: Vec<String> =
            facts.output_columns.iter().filter_map(|c| plain_source(c).and_then(table_of_source)).collect();
        tables.sort();
        tables.dedup();
        tables
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
    /// the caller looked up for [`Engine::copy_out_table`]: each column's
    /// `schema.table.column` name as its source, and its type OID, or 0)
    /// names them and says which table column each one is, when it has
    /// `columns` entries.
    ///
    /// The text layout with its default options and CSV (with `HEADER`,
    /// `DELIMITER`, `NULL`, `QUOTE`, `ESCAPE`, `FORCE_QUOTE`) are masked
    /// line by line ([`CopyLayout::from_options`]), and the binary format
    /// row by row ([`CopyLayout::Binary`]: a masked value of a column not
    /// known to be text-like becomes NULL, so types matter there); when
    /// something must be masked or scanned and the options are ones the
    /// data cannot be read under (`ENCODING`, or text-format options), the
    /// plan is a refusal that names what to drop.
    ///
    /// ```
    /// use policy_core::{ColumnInfo, CopyLayout, CopyOutAction, Engine, Identity, Policy};
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
    /// let columns = [
    ///     ColumnInfo::new("id", Some("public.users.id"), 23, false),
    ///     ColumnInfo::new("ssn", Some("public.users.ssn"), 25, false),
    /// ];
    ///
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&facts), 2, false, Some(&columns));
    /// assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
    /// assert_eq!(plan.masker.mask_of(1), Some("ssn"));
    ///
    /// let csv = engine.analyze(&session, "COPY users TO STDOUT (FORMAT csv)").statements.remove(0);
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&csv), 2, false, Some(&columns));
    /// assert!(matches!(plan.action, CopyOutAction::Mask(CopyLayout::Csv(_))));
    ///
    /// let latin1 = engine.analyze(&session, "COPY users TO STDOUT (ENCODING 'LATIN1')").statements.remove(0);
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&latin1), 2, false, Some(&columns));
    /// assert!(plan.refusal().is_some_and(|r| r.contains("drop the ENCODING option")));
    ///
    /// let binary = engine.analyze(&session, "COPY users TO STDOUT (FORMAT binary)").statements.remove(0);
    /// let plan = engine.copy_out_plan(&Identity::new("bob"), Some(&binary), 2, true, Some(&columns));
    /// assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Binary));
    ///
    /// let reader = Identity::new("ann").with_groups(["pii-readers"]);
    /// let plan = engine.copy_out_plan(&reader, Some(&latin1), 2, false, Some(&columns));
    /// assert_eq!(plan.action, CopyOutAction::Forward);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn copy_out_plan(
        &self,
        identity: &Identity,
        facts: Option<&StatementFacts>,
        columns: usize,
        binary: bool,
        table_columns: Option<&[ColumnInfo]>,
    ) -> CopyOutPlan {
        // Lines hold text; binary rows hold each type's binary form, of a
        // type the caller may not know (0).
        let column = |name: &str| match binary {
            false => ColumnInfo::text(name, None),
            true => ColumnInfo::new(name, None, 0, true),
        };
        let mut fields: Vec<ColumnInfo> = match facts {
            Some(f) if f.output_columns.len() == columns && f.output_columns.iter().all(|c| c.name != "*") => {
                f.output_columns.iter().map(|c| column(&c.name)).collect()
            }
            _ => (1..=columns).map(|i| column(&format!("column{i}"))).collect(),
        };
        let whole = facts.and_then(|f| self.copy_out_table(f));
        match (table_columns, whole) {
            (Some(table), Some(_)) if table.len() == columns => {
                fields = table
                    .iter()
                    .map(|c| match binary {
                        false => ColumnInfo::text(&c.name, c.source.as_deref()),
                        true => ColumnInfo::new(&c.name, c.source.as_deref(), c.type_oid, true),
                    })
                    .collect();
            }
            // Binary: a plain reference has its table column's type (a
            // cast keeps a reference plain only when it is to text).
            (Some(looked_up), None) if binary => {
                if let Some(f) = facts.filter(|f| f.output_columns.len() == columns) {
                    for (field, out) in fields.iter_mut().zip(&f.output_columns) {
                        let typed =
                            plain_source(out).and_then(|s| looked_up.iter().find(|c| c.source.as_deref() == Some(s)));
                        if let Some(c) = typed {
                            field.type_oid = c.type_oid;
                        }
                    }
                }
            }
            _ => {}
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
        // The text layout with its defaults, CSV and binary are masked;
        // anything else with something to mask is refused, saying which
        // option to drop. Without facts the statement's options are unknown: the
        // lines are read as plain text, and one that does not split into
        // the announced columns stops the COPY.
        let layout = match facts {
            Some(f) => CopyLayout::from_options(&f.copy_options),
            None => Ok(CopyLayout::Text),
        };
        let action = match (masker.is_noop(), binary, layout) {
            (true, _, _) => CopyOutAction::Forward,
            (false, _, Err(reason)) => CopyOutAction::Refuse(reason),
            (false, true, Ok(_)) => CopyOutAction::Mask(CopyLayout::Binary),
            (false, false, Ok(layout)) => CopyOutAction::Mask(layout),
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

    /// The columns of `public.users` as the catalog gives them: `id int`,
    /// `name text`, `ssn text`.
    fn users() -> Vec<ColumnInfo> {
        [("id", 23), ("name", 25), ("ssn", 25)]
            .iter()
            .map(|(c, t)| {
                let source = ColumnInfo::source_name("public", "users", c);
                ColumnInfo::new(&source, Some(&source), *t, false)
            })
            .collect()
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

    fn csv(layout: &CopyLayout) -> &CsvLayout {
        match layout {
            CopyLayout::Csv(c) => c,
            other => panic!("not CSV: {other:?}"),
        }
    }

    #[test]
    fn csv_layouts_are_masked_with_their_options() {
        let e = engine(MASKS);
        let plan = |sql: &str| e.copy_out_plan(&bob(), Some(&facts(&e, sql)), 3, false, Some(&users()));
        let defaults = plan("COPY users TO STDOUT (FORMAT csv)");
        let CopyOutAction::Mask(layout) = &defaults.action else { panic!("{:?}", defaults.action) };
        assert_eq!(
            csv(layout),
            &CsvLayout { delimiter: b',', quote: b'"', escape: b'"', null: "".into(), header: false }
        );
        assert_eq!(defaults.masker.mask_of(2), Some("ssn"));
        // Every option the server writes CSV with, in both spellings.
        for sql in [
            r"COPY users TO STDOUT (FORMAT csv, HEADER, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\', FORCE_QUOTE *)",
            r"COPY users TO STDOUT WITH CSV HEADER DELIMITER ';' NULL 'NULL' QUOTE '''' ESCAPE '\' FORCE QUOTE *",
            r"COPY (SELECT * FROM users) TO STDOUT (FORMAT 'CSV', HEADER on, DELIMITER ';', NULL 'NULL', QUOTE '''',
              ESCAPE '\', FORCE_QUOTE (id, ssn))",
        ] {
            let p = plan(sql);
            let CopyOutAction::Mask(layout) = &p.action else { panic!("{sql}: {:?}", p.action) };
            assert_eq!(
                csv(layout),
                &CsvLayout { delimiter: b';', quote: b'\'', escape: b'\\', null: "NULL".into(), header: true },
                "{sql}"
            );
        }
        let off = plan("COPY users TO STDOUT (FORMAT csv, HEADER false)");
        assert!(matches!(&off.action, CopyOutAction::Mask(l) if !csv(l).header));
        let quote = plan("COPY users TO STDOUT (FORMAT csv, QUOTE '|')");
        assert!(matches!(&quote.action, CopyOutAction::Mask(l) if csv(l).escape == b'|'), "ESCAPE follows QUOTE");
    }

    #[test]
    fn options_the_lines_cannot_be_read_under_are_refused_by_name() {
        let e = engine(MASKS);
        for (sql, option) in [
            ("COPY users TO STDOUT (DELIMITER '|')", "DELIMITER"),
            ("COPY users TO STDOUT (NULL 'x')", "NULL"),
            ("COPY users TO STDOUT (HEADER)", "HEADER"),
            ("COPY users TO STDOUT (FORMAT text, HEADER)", "HEADER"),
            ("COPY users TO STDOUT (ENCODING 'LATIN1')", "ENCODING"),
            ("COPY users TO STDOUT (FORMAT csv, ENCODING 'UTF8')", "ENCODING"),
            ("COPY users TO STDOUT (FORMAT csv, HEADER match)", "HEADER"),
            (r#"COPY users TO STDOUT (FORMAT csv, DELIMITER '"')"#, "DELIMITER"),
            ("COPY users TO STDOUT (FORMAT csv, DELIMITER 'ab')", "DELIMITER"),
            ("COPY users TO STDOUT (FORMAT csv, QUOTE 'é')", "QUOTE"),
            ("COPY users TO STDOUT (FORMAT csv, FORCE_NOT_NULL (ssn))", "FORCE_NOT_NULL"),
        ] {
            let plan = e.copy_out_plan(&bob(), Some(&facts(&e, sql)), 3, false, Some(&users()));
            let reason = plan.refusal().unwrap_or_else(|| panic!("{sql}: {:?}", plan.action));
            assert!(reason.contains(&format!("drop the {option} option")), "{sql}: {reason}");
        }
        // FORMAT text spelled out is the plain layout.
        let f = facts(&e, "COPY users TO STDOUT (FORMAT text)");
        assert_eq!(
            e.copy_out_plan(&bob(), Some(&f), 3, false, Some(&users())).action,
            CopyOutAction::Mask(CopyLayout::Text)
        );
        // Binary: masked row by row, with the looked-up types: a masked
        // text column takes the masked text, any other becomes NULL.
        let f = facts(&e, "COPY users TO STDOUT (FORMAT binary)");
        let plan = e.copy_out_plan(&bob(), Some(&f), 3, true, Some(&users()));
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Binary));
        assert_eq!(masked(&plan, &["\0\0\0\x01", "Ann", "123-45-6789"])[2], "****6789");
        assert!(plan.masker.retyped_columns().is_empty());
        let f = facts(&e, "COPY (SELECT id, ssn FROM users) TO STDOUT (FORMAT binary)");
        let plan = e.copy_out_plan(&bob(), Some(&f), 2, true, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Binary));
        assert_eq!(plan.masker.retyped_columns(), [1], "the type is unknown: not known to take text");
        assert_eq!(e.copy_out_lookups(&f, true), ["public.users"]);
        let plan = e.copy_out_plan(&bob(), Some(&f), 2, true, Some(&users()));
        assert!(plan.masker.retyped_columns().is_empty(), "a plain reference to a text column takes text");
        assert_eq!(masked(&plan, &["\0\0\0\x01", "123-45-6789"])[1], "****6789");
        let f = facts(&e, "COPY (SELECT id, upper(ssn) AS s FROM users) TO STDOUT (FORMAT binary)");
        assert!(e.copy_out_lookups(&f, true) == ["public.users"], "id is a plain reference");
        let plan = e.copy_out_plan(&bob(), Some(&f), 2, true, Some(&users()));
        assert_eq!(plan.masker.retyped_columns(), [1], "a computed column's type is not known");
        let f = facts(&e, "COPY users (id, ssn) TO STDOUT (FORMAT binary)");
        assert_eq!(e.copy_out_lookups(&f, true), ["public.users"]);
        assert!(e.copy_out_lookups(&f, false).is_empty(), "text needs no types");
        let f = facts(&e, "COPY users TO STDOUT (FORMAT binary, ENCODING 'LATIN1')");
        assert!(e.copy_out_plan(&bob(), Some(&f), 3, true, Some(&users())).refusal().is_some());
        // Nothing to mask for this identity: every layout passes.
        let f = facts(&e, "COPY users TO STDOUT (ENCODING 'LATIN1')");
        assert_eq!(e.copy_out_plan(&reader(), Some(&f), 3, false, Some(&users())).action, CopyOutAction::Forward);
    }

    #[test]
    fn detectors_alone_need_a_layout_of_lines_too() {
        let e = engine(DETECTORS_ONLY);
        let f = facts(&e, "COPY (SELECT note FROM orders) TO STDOUT");
        let plan = e.copy_out_plan(&bob(), Some(&f), 1, false, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!(masked(&plan, &["card 4111 1111 1111 1111"])[0], format!("card {}", crate::mask::REDACTED));
        let plan = e.copy_out_plan(&bob(), Some(&f), 1, true, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Binary));
        let f = facts(&e, "COPY (SELECT note FROM orders) TO STDOUT (FORMAT csv)");
        let plan = e.copy_out_plan(&bob(), Some(&f), 1, false, None);
        assert!(matches!(plan.action, CopyOutAction::Mask(CopyLayout::Csv(_))), "{:?}", plan.action);
        let f = facts(&e, "COPY (SELECT note FROM orders) TO STDOUT (DELIMITER ',')");
        assert!(e.copy_out_plan(&bob(), Some(&f), 1, false, None).refusal().is_some());
    }

    #[test]
    fn unknown_statements_have_anonymous_columns() {
        // No facts: column1..n, plain text assumed, detectors still apply.
        let e = engine(DETECTORS_ONLY);
        let plan = e.copy_out_plan(&bob(), None, 2, false, None);
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert_eq!(e.copy_out_plan(&bob(), None, 2, true, None).action, CopyOutAction::Mask(CopyLayout::Binary));
        // Column masks: with no lineage, every column is masked whole (and
        // looked-up names are not taken without the facts that ask for them).
        let e = engine(MASKS);
        let plan = e.copy_out_plan(&bob(), None, 3, false, Some(&users()));
        assert_eq!(plan.action, CopyOutAction::Mask(CopyLayout::Text));
        assert!((0..3).all(|i| plan.masker.mask_of(i) == Some("ssn")));
        assert_eq!(e.copy_out_plan(&reader(), None, 3, true, None).action, CopyOutAction::Forward);
    }
}
