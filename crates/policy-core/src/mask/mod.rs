//! Result masking (docs/policy.md §5): which result columns are masked, and how.
//!
//! The gateway describes the result's columns ([`ColumnInfo`]: the source
//! column the server reports for plain references, resolved through the
//! catalog, and whether the type is text) and asks the engine for a
//! [`RowMasker`] once per statement; it then calls
//! [`RowMasker::mask_row`] on every row. A statement with no masked column
//! gets a masker for which [`RowMasker::is_noop`] holds, and rows pass
//! untouched.
//!
//! A column is masked when one of its sources is covered by a mask the
//! caller is not exempt from:
//!
//! - a column the server reports as a plain reference has that source, and
//!   keeps the mask's strategy;
//! - a computed column takes the lineage of the statement's analysis
//!   ([`OutputColumn`](crate::OutputColumn)): a plain reference, alias or
//!   cast to text keeps the strategy, anything else derived from a masked
//!   column is masked whole ([`Masking::whole`]);
//! - a column whose lineage cannot be proven (a function in FROM, a star
//!   over a subquery) is masked whole as soon as any mask applies to the
//!   caller; a whole-row value is masked whole when a mask may cover a
//!   column of its table (the table parts of the mask's patterns match
//!   it), and left alone otherwise;
//! - a whole row written as JSON by a built-in function
//!   ([`WholeRow`](crate::WholeRow): `to_jsonb(t)`, `json_agg(t)`) is
//!   masked field by field: only the members a mask covers change, and the
//!   value keeps its JSON type.
//!
//! Masked values other than NULL are text: a masked column whose type is not
//! text is listed in [`RowMasker::retyped_columns`], and the gateway
//! describes it to the client as `text`.
//!
//! Every value of a column no mask covers then passes through the policy's
//! detectors the caller is not exempt from ([`crate::Detectors`]). Only the
//! matched span is replaced, written so the value still decodes for its
//! type ([`ColumnInfo::type_oid`]):
//!
//! - text-like types take any replacement;
//! - in `json` and `jsonb`, a replacement inside a JSON string is escaped,
//!   one outside a string (a bare number) becomes a JSON string, so the
//!   value stays valid JSON and the column keeps its type;
//! - in the text form of arrays, composites and types the engine does not
//!   know, a replacement holding `{}(),"\` or white space is written as
//!   [`REDACTED`];
//! - binary arrays and composites cannot be edited in place (their lengths
//!   are encoded): a value holding a match becomes NULL;
//! - numbers, dates, times, UUIDs, network addresses, booleans and `bytea`
//!   hold no free text and are not scanned: cover such columns with a mask.
//!
//! Server error and notice texts go through a [`MessageScrubber`].
//!
//! Masking a result is not enough if the caller can store the value and
//! read it back: `UPDATE orders SET note = c.ssn FROM customers c ...`,
//! then `SELECT note FROM orders`. So the engine refuses a statement that
//! may read a column masked for the caller (a covered column, a star, a
//! whole-row reference to a table a mask may reach, a column it cannot
//! resolve, an opaque statement)
//! and stores what it reads: `INSERT`, `UPDATE`, `MERGE` (also inside a
//! CTE), DDL that materialises a query (`CREATE TABLE AS`, `SELECT INTO`,
//! views), or a call to a function that stores a value (`set_config`,
//! `pg_notify`, large objects, dblink, `pg_file_write`,
//! `pg_logical_emit_message`). The decision is a deny with no rule and a
//! reason that says so; identities exempt from the masks are not affected.
//! Writing literal values into masked columns, deleting by them and
//! reading them (masked) stay allowed.
//!
//! ```
//! use std::borrow::Cow;
//! use policy_core::{ColumnInfo, Engine, Identity, Policy};
//! let policy = Policy::from_toml_str(r#"
//!     version = 1
//!     [[mask]]
//!     name = "ssn"
//!     columns = ["*.*.ssn"]
//!     strategy = "partial"
//!     show_last = 4
//! "#, "p.toml")?;
//! let engine = Engine::new(policy, Default::default())?;
//! let session = engine.new_session();
//! let analysis = engine.analyze(&session, "SELECT name, ssn FROM users");
//! let columns = [
//!     ColumnInfo::text("name", Some("public.users.name")),
//!     ColumnInfo::text("ssn", Some("public.users.ssn")),
//! ];
//! let masker = engine.masker(&Identity::new("bob"), &analysis.statements[0], &columns);
//! let mut row = vec![Some(Cow::Borrowed(&b"Bob"[..])), Some(Cow::Borrowed(&b"123-45-6789"[..]))];
//! masker.mask_row(&mut row);
//! assert_eq!(row[0].as_deref(), Some(&b"Bob"[..]));
//! assert_eq!(row[1].as_deref(), Some(&b"****6789"[..]));
//! # Ok::<(), policy_core::PolicyError>(())
//! ```

mod rows;
mod scrub;
mod strategy;
mod values;

use std::borrow::Cow;
use std::sync::Arc;

pub use scrub::{carries_no_values, MessageScrubber, Scrubbed};
pub use strategy::{Masking, REDACTED};

use crate::analyze::{Class, Clause, OutputColumn, RowLayout, StatementFacts, WholeRow};
use crate::detect::Detectors;
use crate::identity::Identity;
use crate::policy::{Mask, Patterns, Strategy};
use values::{Scanned, Syntax};

/// One result column, as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name in the result.
    pub name: String,
    /// `schema.table.column` when the server reports the column as a plain
    /// reference to a table column (RowDescription's table OID and
    /// attribute number, resolved through the catalog).
    pub source: Option<String>,
    /// The column's type OID, as RowDescription gives it (0 when unknown).
    /// It says whether masked text fits the column as it is, and how
    /// detectors read and rewrite its values.
    pub type_oid: u32,
    /// Whether values arrive in binary format.
    pub binary: bool,
    /// When the column holds whole rows of a table or view as composites
    /// (`SELECT u FROM users u`, `u::text`): the names of the row type's
    /// columns in order, as the catalog gives them, so that the masking can
    /// mask the values field by field ([`RowLayout::Composite`]); empty
    /// when unknown (such values are then masked whole).
    pub row_fields: Vec<String>,
}

impl ColumnInfo {
    /// A text-format column of type `text`.
    pub fn text(name: &str, source: Option<&str>) -> Self {
        ColumnInfo::new(name, source, values::oid::TEXT, false)
    }

    /// A column of any type and format.
    ///
    /// ```
    /// use policy_core::ColumnInfo;
    /// let salary = ColumnInfo::new("salary", Some("public.users.salary"), 1700, true);
    /// assert!(!salary.is_text_type());
    /// assert!(ColumnInfo::text("name", None).is_text_type());
    /// ```
    pub fn new(name: &str, source: Option<&str>, type_oid: u32, binary: bool) -> Self {
        ColumnInfo {
            name: name.to_string(),
            source: source.map(str::to_string),
            type_oid,
            binary,
            row_fields: Vec::new(),
        }
    }

    /// The name of a table column as masks and facts write it:
    /// `schema.table.column`, a part holding `.` or `"` double-quoted.
    ///
    /// ```
    /// use policy_core::ColumnInfo;
    /// assert_eq!(ColumnInfo::source_name("public", "users", "ssn"), "public.users.ssn");
    /// assert_eq!(ColumnInfo::source_name("public", "a.b", "c"), "public.\"a.b\".c");
    /// ```
    pub fn source_name(schema: &str, table: &str, column: &str) -> String {
        crate::analyze::dotted(&crate::analyze::qualified(schema, table), column)
    }

    /// Splits a name as facts and masks write it (`schema.table` or
    /// `schema.table.column`, a part holding `.` or `"` double-quoted) into
    /// its parts; `None` when it is not well-formed.
    ///
    /// ```
    /// use policy_core::ColumnInfo;
    /// assert_eq!(ColumnInfo::split_name("public.users"), Some(vec!["public".into(), "users".into()]));
    /// assert_eq!(ColumnInfo::split_name("public.\"a.b\""), Some(vec!["public".into(), "a.b".into()]));
    /// assert_eq!(ColumnInfo::split_name("public.\"open"), None);
    /// ```
    pub fn split_name(name: &str) -> Option<Vec<String>> {
        let mut parts = Vec::new();
        let mut chars = name.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        '"' => break,
                        c => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        return None;
                    }
                    part.push(c);
                    chars.next();
                }
                if part.is_empty() {
                    return None;
                }
            }
            parts.push(part);
            match chars.next() {
                None => return Some(parts),
                Some('.') => {}
                Some(_) => return None,
            }
        }
    }

    /// Whether the type is text-like (`text`, `varchar`, `bpchar`, `name`,
    /// `unknown`): masked values fit it as they are.
    pub fn is_text_type(&self) -> bool {
        values::is_text_type(self.type_oid)
    }
}

/// A mask rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ColumnMask {
    pub(crate) name: String,
    pub(crate) columns: Patterns,
    pub(crate) masking: Masking,
    pub(crate) exempt_groups: Vec<String>,
    pub(crate) inference: Vec<Clause>,
    /// The tables (`schema.table`) some column of which the mask may
    /// cover: the table parts of its patterns; `None` for every table.
    tables: Option<globset::GlobSet>,
}

impl ColumnMask {
    pub(crate) fn compile(mask: &Mask, key: Option<Arc<[u8]>>) -> Self {
        ColumnMask {
            name: mask.name.clone(),
            columns: mask.columns.clone(),
            masking: Masking {
                strategy: mask.strategy,
                show_last: mask.show_last,
                value: mask.value.clone().unwrap_or_else(|| REDACTED.to_string()),
                key,
            },
            exempt_groups: mask.exempt_groups.clone(),
            inference: mask.inference.clone(),
            tables: table_globs(&mask.columns.written),
        }
    }

    /// Whether the mask may cover a column of `table` (`schema.table`): a
    /// whole row of a table no mask reaches carries nothing masked.
    pub(crate) fn may_cover_table(&self, table: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.is_match(table))
    }

    fn applies_to(&self, identity: &Identity) -> bool {
        !self.exempt_groups.iter().any(|g| identity.groups.contains(g))
    }
}

/// The table parts of column patterns (`public.users` of
/// `public.users.ssn`, `*.*` of `*.*.ssn`); a pattern whose parts the
/// engine cannot tell apart stands for every table. Exclusions (`!`) are
/// left out: they only narrow what a pattern covers.
fn table_globs(written: &[String]) -> Option<globset::GlobSet> {
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in written.iter().filter(|p| !p.starts_with('!')) {
        builder.add(table_part(pattern).and_then(|t| globset::Glob::new(t).ok())?);
    }
    builder.build().ok()
}

/// `schema.table` of a written `schema.table.column` pattern: up to the
/// last `.` outside double quotes; `None` when there is none or a quote is
/// open.
fn table_part(pattern: &str) -> Option<&str> {
    let mut quoted = false;
    let mut last_dot = None;
    for (i, c) in pattern.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => last_dot = Some(i),
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    last_dot.map(|i| &pattern[..i]).filter(|t| !t.is_empty())
}

/// Whether a whole-row source (`schema.table.*`) may carry a value one of
/// `active` covers; `*` (a star over what the engine cannot name) always may.
fn whole_row_masked(active: &[&ColumnMask], source: &str) -> bool {
    match source.strip_suffix(".*") {
        Some(table) if !table.is_empty() => active.iter().any(|m| m.may_cover_table(table)),
        _ => true,
    }
}

/// The column masks that apply to `identity`.
pub(crate) fn active_masks<'m>(masks: &'m [ColumnMask], identity: &Identity) -> Vec<&'m ColumnMask> {
    masks.iter().filter(|m| m.applies_to(identity)).collect()
}

/// Whether a statement may read a column one of `active` covers: a
/// covered column, a column whose table is not resolved and could be
/// covered, a star or whole-row reference, lineage that is not proven, or a
/// statement the engine cannot see into.
pub(crate) fn reads_masked(active: &[&ColumnMask], facts: &StatementFacts) -> bool {
    if active.is_empty() {
        return false;
    }
    if facts.opaque || facts.class == Class::Unknown || facts.output_columns.iter().any(|o| o.unknown) {
        return true;
    }
    let covered = |c: &str| active.iter().any(|m| m.columns.covers(c));
    let sources = facts.output_columns.iter().flat_map(|o| o.sources.iter());
    facts.columns.iter().chain(sources).any(|c| {
        if c == "*" || c.ends_with(".*") {
            return whole_row_masked(active, c);
        }
        covered(c) || (c.matches('.').count() < 2 && facts.tables.iter().any(|t| covered(&format!("{t}.{c}"))))
    })
}

/// Inference control (a mask's `inference`): the reason for refusing a
/// statement that reads a column a mask covers for the caller in a clause
/// the mask forbids (`WHERE ssn LIKE '531%'`, `ORDER BY ssn`, `md5(ssn) =
/// '...'`). A clause column the engine cannot resolve to a table column
/// (one of a subquery in FROM, a `NATURAL JOIN`, a call it cannot follow)
/// counts as covered when the statement may read a covered column at all.
pub(crate) fn inference(active: &[&ColumnMask], facts: &StatementFacts) -> Option<String> {
    for mask in active.iter().filter(|m| !m.inference.is_empty()) {
        let covered = |c: &str| mask.columns.covers(c);
        let mut reads_covered: Option<bool> = None;
        for cc in facts.clause_columns.iter().filter(|c| mask.inference.contains(&c.clause)) {
            let hit = match ColumnInfo::split_name(&cc.column).as_deref() {
                Some([_, _, _]) => covered(&cc.column),
                Some([name]) if name != "*" => {
                    covered(&cc.column) || facts.tables.iter().any(|t| covered(&format!("{t}.{}", cc.column)))
                }
                // Not a table column: counts when the statement may read
                // a covered column at all.
                _ => *reads_covered.get_or_insert_with(|| reads_masked(&[*mask], facts)),
            };
            if hit {
                let column = if cc.column == "*" { "a column it cannot name".to_string() } else { cc.column.clone() };
                return Some(format!(
                    "mask `{}` does not allow {} for this identity: the statement reads {column} in its {} clause",
                    mask.name,
                    cc.clause.describe(),
                    cc.clause.as_str()
                ));
            }
        }
    }
    None
}

/// Functions that store a value where a later statement can read it back
/// unmasked: settings, notifications, large objects (their data, their
/// OIDs, a descriptor's position or length), sequences, advisory locks
/// (their keys show in `pg_locks`), the random seed (`random()` replays
/// it), other databases, files, the WAL. Drawn from PostgreSQL's volatile
/// built-in functions that take arguments; the others read, wait or
/// compute (`pg_sleep`, `currval`, `pg_relation_size`, ...).
const STORING_FUNCTIONS: [&str; 30] = [
    "set_config",
    "pg_notify",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_import",
    "lo_create",
    "lo_creat",
    "lo_lseek",
    "lo_lseek64",
    "lo_truncate",
    "lo_truncate64",
    "setval",
    "setseed",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "pg_file_write",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
];

/// The masking's data-flow check (docs/policy.md §5 extended to writes): a
/// statement that may read a column masked for the caller must not store
/// what it reads where the caller could read it back unmasked: an
/// `INSERT`, `UPDATE` or `MERGE` (`UPDATE orders SET note = c.ssn FROM
/// customers c ...`), DDL that materialises a query (`CREATE TABLE AS`,
/// `SELECT INTO`, a view), or a function that stores a value
/// (`set_config`, `pg_notify`, large objects, dblink). Returns the reason
/// for refusing it.
pub(crate) fn masked_write(active: &[&ColumnMask], facts: &StatementFacts) -> Option<String> {
    if active.is_empty() {
        return None;
    }
    let writes = facts.class == Class::Ddl
        || facts.commands.iter().any(|c| matches!(c.as_str(), "INSERT" | "UPDATE" | "MERGE"))
        || facts.functions.iter().any(|f| {
            let name = f.rsplit('.').next().unwrap_or(f);
            STORING_FUNCTIONS.contains(&name)
        });
    if !writes || !reads_masked(active, facts) {
        return None;
    }
    let masks: Vec<&str> = active.iter().map(|m| m.name.as_str()).collect();
    Some(format!(
        "the statement reads columns masked for this identity (masks: {}) and stores what it reads; \
         masked data may not be copied into tables, settings, notifications or other state",
        masks.join(", ")
    ))
}

/// The relations that hold values sampled from every column, masked ones
/// too: the planner's statistics (`most_common_vals`, `histogram_bounds`).
const STATISTICS: [&str; 5] = [
    "pg_catalog.pg_statistic",
    "pg_catalog.pg_stats",
    "pg_catalog.pg_stats_ext",
    "pg_catalog.pg_stats_ext_exprs",
    "pg_catalog.pg_statistic_ext_data",
];

/// The reason for refusing a statement that reads the planner's statistics
/// when a column mask applies to the caller: they show sampled values of
/// the masked columns as plain text, and the engine cannot tell which
/// column each row describes before the server answers.
pub(crate) fn masked_statistics(active: &[&ColumnMask], facts: &StatementFacts) -> Option<String> {
    if active.is_empty() {
        return None;
    }
    let table = facts.tables.iter().find(|t| STATISTICS.contains(&t.as_str()))?;
    let masks: Vec<&str> = active.iter().map(|m| m.name.as_str()).collect();
    Some(format!(
        "{table} holds values sampled from every column, masked ones included, and masks apply to this identity \
         (masks: {})",
        masks.join(", ")
    ))
}

/// A whole row written as JSON ([`WholeRow`]), masked field by field: a
/// member is masked when a mask the caller is not exempt from covers the
/// column it stands for (`schema.table.key` of the row's table, through
/// the view's lineage when the table is a view; the subquery's column of
/// that name), keeping the mask's strategy when the column is a plain
/// reference and masked whole otherwise.
#[derive(Debug, Clone)]
struct RowPlan {
    layout: RowLayout,
    /// Binary `jsonb`: a version byte before the JSON text.
    jsonb_binary: bool,
    /// A `json` or `jsonb` column (not JSON cast to text): a value masked
    /// whole is written as a JSON string.
    json_type: bool,
    /// A composite in binary format.
    record_binary: bool,
    /// A text-like column (a row cast to text).
    text_column: bool,
    /// The names of a table's composite fields, in order.
    positions: Vec<String>,
    tables: Vec<String>,
    fields: Vec<OutputColumn>,
    /// The view columns of the row's tables that are views.
    views: Vec<OutputColumn>,
    masks: Vec<ColumnMask>,
    /// How the value is masked when it is not laid out as a row.
    whole: ColumnPlan,
}

impl RowPlan {
    /// Whether values of `column` can be read and rewritten as `layout`
    /// says: JSON in a JSON or text column; a record in a column of any
    /// other type (its composite type) or text, whose fields the engine
    /// knows (a table's from the gateway, a subquery's from lineage).
    fn fits(column: &ColumnInfo, row: &WholeRow) -> bool {
        let json = column.type_oid == values::oid::JSON || column.type_oid == values::oid::JSONB;
        match row.layout {
            RowLayout::JsonObject | RowLayout::JsonArray => json || column.is_text_type(),
            RowLayout::Composite => !json && (!row.tables.is_empty() || !row.fields.is_empty()),
        }
    }

    /// The plan, or `whole` back when a mask covers a column the row's
    /// name may stand for instead.
    fn new(
        active: &[&ColumnMask],
        facts: &StatementFacts,
        row: &WholeRow,
        whole: ColumnPlan,
        column: &ColumnInfo,
    ) -> Result<RowPlan, ColumnPlan> {
        if row.alternatives.iter().any(|a| active.iter().any(|m| m.columns.covers(a))) {
            return Err(whole);
        }
        // A table's or view's composite: its fields are named by the
        // gateway, in order; without them the value is masked whole.
        let positions = match (row.layout, row.tables.is_empty()) {
            (RowLayout::Composite, false) if column.row_fields.is_empty() => return Err(whole),
            (RowLayout::Composite, false) => column.row_fields.clone(),
            _ => Vec::new(),
        };
        let views = facts
            .view_columns
            .iter()
            .filter(|v| row.tables.iter().any(|t| table_of(&v.name).is_some_and(|vt| vt == *t)))
            .cloned()
            .collect();
        Ok(RowPlan {
            layout: row.layout,
            jsonb_binary: column.type_oid == values::oid::JSONB && column.binary,
            record_binary: row.layout == RowLayout::Composite && column.binary && !column.is_text_type(),
            text_column: column.is_text_type(),
            positions,
            json_type: column.type_oid == values::oid::JSON || column.type_oid == values::oid::JSONB,
            tables: row.tables.clone(),
            fields: row.fields.clone(),
            views,
            masks: active.iter().map(|m| (*m).clone()).collect(),
            whole,
        })
    }

    /// How the composite's field `i` is masked (see [`RowPlan::field`]).
    fn field_at(&self, i: usize) -> Result<Option<Masking>, ()> {
        if self.tables.is_empty() {
            let f = self.fields.get(i).ok_or(())?;
            return Ok(self.decide(&f.sources, f.direct, f.unknown));
        }
        self.field(self.positions.get(i).ok_or(())?)
    }

    /// How many fields the composite has.
    fn width(&self) -> usize {
        if self.tables.is_empty() {
            self.fields.len()
        } else {
            self.positions.len()
        }
    }

    /// The masking of a value derived from `sources`.
    fn decide(&self, sources: &[String], direct: bool, unknown: bool) -> Option<Masking> {
        if unknown {
            return Some(Masking { strategy: Strategy::Redact, ..self.whole.masking.clone() });
        }
        self.masks.iter().find(|m| sources.iter().any(|s| m.columns.covers(s))).map(|m| {
            if direct {
                m.masking.clone()
            } else {
                m.masking.whole()
            }
        })
    }

    /// How the member `key` is masked: `Ok(None)` when it passes, `Err`
    /// when the key is no column of the row.
    fn field(&self, key: &str) -> Result<Option<Masking>, ()> {
        let mut sources = Vec::new();
        let (mut direct, mut unknown) = (true, false);
        if self.tables.is_empty() {
            let mut found = 0;
            for f in self.fields.iter().filter(|f| f.name == key) {
                found += 1;
                sources.extend(f.sources.iter().cloned());
                direct &= f.direct;
                unknown |= f.unknown;
            }
            match found {
                0 => return Err(()),
                1 => {}
                _ => direct = false,
            }
        } else {
            for t in &self.tables {
                let name = crate::analyze::dotted(t, key);
                if self.views.iter().any(|v| table_of(&v.name).is_some_and(|vt| vt == *t)) {
                    let v = self.views.iter().find(|v| v.name == name).ok_or(())?;
                    sources.extend(v.sources.iter().cloned());
                    direct &= v.direct;
                    unknown |= v.unknown;
                }
                sources.push(name);
            }
        }
        Ok(self.decide(&sources, direct, unknown))
    }

    /// The masked value: `None` when it passes as it is, `Some(None)` for
    /// NULL.
    fn mask(&self, value: &[u8]) -> Option<Option<Vec<u8>>> {
        if self.layout == RowLayout::Composite {
            return self.mask_record(value);
        }
        let body = if self.jsonb_binary {
            match value.split_first() {
                Some((1, rest)) => rest,
                _ => return Some(self.masked_whole("")),
            }
        } else {
            value
        };
        let Ok(text) = std::str::from_utf8(body) else { return Some(self.masked_whole("")) };
        let mut field = |key: &str| match self.field(key)? {
            Some(masking) => Ok(rows::Field::Mask(masking)),
            None => Ok(rows::Field::Keep),
        };
        match rows::mask_json(text, self.layout, &mut field) {
            Ok(None) => None,
            Ok(Some(masked)) => Some(Some(self.with_prefix(masked))),
            Err(()) => Some(self.masked_whole(text)),
        }
    }

    /// A composite value, masked field by field; masked whole (or NULL in
    /// binary, where text does not fit the composite type) when it is not
    /// laid out as the row.
    fn mask_record(&self, value: &[u8]) -> Option<Option<Vec<u8>>> {
        let mut field = |i: usize| match self.field_at(i)? {
            Some(masking) => Ok(rows::Field::Mask(masking)),
            None => Ok(rows::Field::Keep),
        };
        if self.record_binary {
            return match rows::mask_record_binary(value, self.width(), &mut field) {
                Ok(None) => None,
                Ok(Some(masked)) => Some(Some(masked)),
                Err(()) => Some(None),
            };
        }
        let Ok(text) = std::str::from_utf8(value) else { return Some(None) };
        match rows::mask_record_text(text, self.width(), &mut field) {
            Ok(None) => None,
            Ok(Some(masked)) => Some(Some(masked.into_bytes())),
            Err(()) if self.text_column => Some(self.masked_whole(text)),
            // Masked text is no value of a composite type: NULL is.
            Err(()) => Some(None),
        }
    }

    /// The value masked whole (or NULL), written as a JSON string in a
    /// JSON column.
    fn masked_whole(&self, text: &str) -> Option<Vec<u8>> {
        let masked = self.whole.masking.whole().apply(text)?;
        if !self.json_type {
            return Some(masked.into_bytes());
        }
        serde_json::to_string(&masked).ok().map(|json| self.with_prefix(json))
    }

    fn with_prefix(&self, json: String) -> Vec<u8> {
        if self.jsonb_binary {
            let mut out = Vec::with_capacity(json.len() + 1);
            out.push(1);
            out.extend_from_slice(json.as_bytes());
            out
        } else {
            json.into_bytes()
        }
    }
}

/// The lineage of each result column, when it lines up with the result.
///
/// Without a star, position by position. With one star over a table or
/// view (`SELECT * FROM (VALUES ...) v(id, label) JOIN users u ON ...`),
/// the star stands for the run of columns the others leave, and the
/// alignment is accepted only when it is proven: every other column's name
/// is the one the server gives, and every column of the run is one the
/// server reports as a column of the star's relations (those are decided
/// by that source, not by lineage). `USING` and `NATURAL` joins, which
/// move merged columns to the front, fail that test and stay unaligned.
fn align<'o>(lineage: &'o [OutputColumn], columns: &[ColumnInfo]) -> Option<Vec<Option<&'o OutputColumn>>> {
    let stars: Vec<usize> = lineage.iter().enumerate().filter(|(_, c)| c.name == "*").map(|(i, _)| i).collect();
    match stars.as_slice() {
        [] if lineage.len() == columns.len() => Some(lineage.iter().map(Some).collect()),
        [star] => {
            let star_column = lineage.get(*star)?;
            let tables: Vec<&str> = star_column.sources.iter().map(|s| s.strip_suffix(".*")).collect::<Option<_>>()?;
            if star_column.unknown || tables.is_empty() {
                return None;
            }
            let width = columns.len().checked_sub(lineage.len() - 1)?;
            let mut out = Vec::with_capacity(columns.len());
            for (i, c) in lineage.iter().enumerate() {
                if i == *star {
                    for column in columns.get(out.len()..out.len() + width)? {
                        let table = column.source.as_deref().and_then(table_of)?;
                        if !tables.contains(&table.as_str()) {
                            return None;
                        }
                    }
                    out.extend(std::iter::repeat_n(None, width));
                } else {
                    if columns.get(out.len())?.name != c.name {
                        return None;
                    }
                    out.push(Some(c));
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// `schema.table` of a `schema.table.column` name as facts write it.
fn table_of(name: &str) -> Option<String> {
    match ColumnInfo::split_name(name)?.as_slice() {
        [schema, table, _] => Some(crate::analyze::qualified(schema, table)),
        _ => None,
    }
}

/// What happens to one column.
#[derive(Debug, Clone)]
struct ColumnPlan {
    masking: Masking,
    /// The mask that decided it (for diagnostics).
    mask: String,
}

/// The detectors that apply to one caller.
#[derive(Debug, Clone)]
struct ActiveDetectors {
    detectors: Detectors,
    active: Vec<bool>,
}

impl ActiveDetectors {
    fn for_identity(detectors: &Detectors, identity: &Identity) -> Option<ActiveDetectors> {
        let active = detectors.active_for(identity);
        active.iter().any(|&a| a).then(|| ActiveDetectors { detectors: detectors.clone(), active })
    }
}

/// Masks the rows of one statement's result. Built by
/// [`Engine::masker`](crate::Engine::masker).
#[derive(Debug, Clone, Default)]
pub struct RowMasker {
    plan: Vec<Option<ColumnPlan>>,
    /// Whole rows written as JSON, masked field by field: by column index.
    rows: Vec<(usize, RowPlan)>,
    binary: Vec<bool>,
    retyped: Vec<usize>,
    masked: usize,
    /// How detectors read each column (`Skip` for masked columns).
    syntax: Vec<Syntax>,
    detectors: Option<ActiveDetectors>,
}

impl RowMasker {
    pub(crate) fn new(
        masks: &[ColumnMask],
        detectors: &Detectors,
        identity: &Identity,
        facts: &StatementFacts,
        columns: &[ColumnInfo],
    ) -> Self {
        let active = active_masks(masks, identity);
        let detectors = ActiveDetectors::for_identity(detectors, identity);
        if (active.is_empty() && detectors.is_none()) || columns.is_empty() {
            return RowMasker::default();
        }
        let lineage = align(&facts.output_columns, columns);
        let mut plan = Vec::with_capacity(columns.len());
        let mut rows = Vec::new();
        let mut retyped = Vec::new();
        for (i, column) in columns.iter().enumerate() {
            // A column the server reports as a view's takes the lineage of
            // that view column, followed to table columns.
            let through_view = column.source.as_ref().and_then(|s| facts.view_columns.iter().find(|v| v.name == *s));
            let (source, out) = match through_view {
                Some(v) => (None, Some(v)),
                None => (column.source.as_ref(), lineage.as_ref().and_then(|l| l.get(i).copied().flatten())),
            };
            let decided = match (source, out) {
                (Some(source), _) => active
                    .iter()
                    .find(|m| m.columns.covers(source))
                    .map(|m| ColumnPlan { masking: m.masking.clone(), mask: m.name.clone() }),
                (None, Some(out)) if !out.unknown => {
                    // A whole row carries every column of its table: masked
                    // whole when a mask may cover one of them.
                    let whole_row = out.sources.iter().any(|s| s.ends_with(".*") && whole_row_masked(&active, s));
                    match active.iter().find(|m| out.sources.iter().any(|s| m.columns.covers(s))) {
                        Some(m) if out.direct && !whole_row => {
                            Some(ColumnPlan { masking: m.masking.clone(), mask: m.name.clone() })
                        }
                        Some(m) => Some(ColumnPlan { masking: m.masking.whole(), mask: m.name.clone() }),
                        // A whole row carries every column of its table.
                        None if whole_row => {
                            active.first().map(|m| ColumnPlan { masking: m.masking.whole(), mask: m.name.clone() })
                        }
                        None => None,
                    }
                }
                // Lineage not proven: masked whole.
                _ => active.first().map(|m| ColumnPlan {
                    masking: Masking { strategy: Strategy::Redact, ..m.masking.clone() },
                    mask: m.name.clone(),
                }),
            };
            // A whole row written as JSON: masked field by field, and whole
            // (as a JSON string) only when it is not laid out as expected.
            let decided = match (decided, out.and_then(|o| o.row.as_ref())) {
                (Some(whole), Some(row)) if source.is_none() && RowPlan::fits(column, row) => {
                    match RowPlan::new(&active, facts, row, whole, column) {
                        Ok(row_plan) => {
                            rows.push((i, row_plan));
                            None
                        }
                        Err(whole) => Some(whole),
                    }
                }
                (decided, _) => decided,
            };
            if let Some(p) = &decided {
                if p.masking.strategy != Strategy::Null && !column.is_text_type() {
                    retyped.push(i);
                }
            }
            plan.push(decided);
        }
        let masked = plan.iter().filter(|p| p.is_some()).count() + rows.len();
        let syntax: Vec<Syntax> = columns
            .iter()
            .zip(&plan)
            .map(|(c, p)| match (p, &detectors) {
                (None, Some(_)) => Syntax::of(c.type_oid, c.binary),
                _ => Syntax::Skip,
            })
            .collect();
        let detectors = detectors.filter(|_| syntax.iter().any(|s| *s != Syntax::Skip));
        RowMasker { plan, rows, binary: columns.iter().map(|c| c.binary).collect(), retyped, masked, syntax, detectors }
    }

    /// Whether rows pass untouched: no column is masked and no detector
    /// scans any column.
    pub fn is_noop(&self) -> bool {
        self.masked == 0 && self.detectors.is_none()
    }

    /// Columns to describe to the client as `text` (masked values are text).
    pub fn retyped_columns(&self) -> &[usize] {
        &self.retyped
    }

    /// The mask deciding column `i`, if any.
    pub fn mask_of(&self, i: usize) -> Option<&str> {
        match self.plan.get(i).and_then(|p| p.as_ref()) {
            Some(p) => Some(p.mask.as_str()),
            None => self.rows.iter().find(|(c, _)| *c == i).map(|(_, r)| r.whole.mask.as_str()),
        }
    }

    /// Masks one row in place and returns how many values it changed;
    /// untouched values stay borrowed, and a row with nothing to change
    /// allocates nothing. Values are in the format [`ColumnInfo::binary`]
    /// said; column-masked ones come back as UTF-8 text (or NULL), and
    /// detector matches are replaced in the value's own syntax (see the
    /// crate docs on detectors).
    pub fn mask_row(&self, row: &mut [Option<Cow<'_, [u8]>>]) -> usize {
        if self.is_noop() {
            return 0;
        }
        let mut changed = 0;
        for (i, value) in row.iter_mut().enumerate() {
            let Some(bytes) = value.as_ref() else { continue };
            if let Some(Some(plan)) = self.plan.get(i) {
                *value = self.mask_value(i, plan, bytes).map(|m| Cow::Owned(m.into_bytes()));
                changed += 1;
                continue;
            }
            if let Some((_, row)) = self.rows.iter().find(|(c, _)| *c == i) {
                if let Some(masked) = row.mask(bytes) {
                    *value = masked.map(Cow::Owned);
                    changed += 1;
                }
            }
            let Some(bytes) = value.as_ref() else { continue };
            let (Some(d), Some(&syntax)) = (&self.detectors, self.syntax.get(i)) else { continue };
            match values::scan(&d.detectors, &d.active, syntax, bytes) {
                Scanned::Clean => {}
                Scanned::Replaced(v) => {
                    *value = Some(Cow::Owned(v));
                    changed += 1;
                }
                Scanned::Null => {
                    *value = None;
                    changed += 1;
                }
            }
        }
        changed
    }

    fn mask_value(&self, i: usize, plan: &ColumnPlan, bytes: &[u8]) -> Option<String> {
        let binary = self.binary.get(i).copied().unwrap_or(false);
        match std::str::from_utf8(bytes) {
            // Binary values of non-text types have no text to show a part
            // of: hashed on their bytes, otherwise masked whole.
            Ok(text) if !binary || self.retyped.binary_search(&i).is_err() => plan.masking.apply(text),
            _ => match plan.masking.strategy {
                Strategy::Hash => plan.masking.key.as_ref().map(|k| strategy::pseudonym(k, bytes)),
                Strategy::Null => None,
                _ => plan.masking.whole().apply(""),
            },
        }
    }
}
