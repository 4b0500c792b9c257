//! Output-column lineage: which source columns each result column of a read
//! derives from.
//!
//! The masking engine consumes it: a result column whose sources include a
//! masked column is masked. Lineage errs towards "derived from more": a
//! column whose origin cannot be proven (a function in FROM, a correlated
//! reference, a star over a subquery of unknown shape, a forward reference
//! between the queries of a `WITH RECURSIVE`) is marked `unknown`, and a
//! consumer masks such a column whole.
//!
//! A recursive CTE (`WITH RECURSIVE t(x) AS (base UNION [ALL] step)`) is
//! followed to a fixed point: column `i` of `t` derives from column `i` of
//! `base` and of `step`, where `step` reads `t` as computed so far; the
//! sources only grow, so the rounds stop when one adds nothing. A
//! self-reference anywhere else (in `base`, under another set operation) is
//! not proven, and neither is a CTE whose rounds exceed their bounds (a
//! recursive CTE nested in another's recursive term is read again in every
//! round of the outer one, so all rounds of a statement share one budget).

use std::collections::BTreeSet;
use std::rc::Rc;

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};
use serde::{Deserialize, Serialize};

use crate::definitions::Definitions;

use super::{catalog, names, node, nodes, string_parts, walk};

/// Where one result column comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputColumn {
    /// The column's name in the result (`*` for an unexpanded star).
    pub name: String,
    /// Source columns, `schema.table.column`; `schema.table.*` for a whole
    /// row or an unexpanded star.
    pub sources: Vec<String>,
    /// A plain reference to its source (through aliases, subqueries, CTEs
    /// and casts to text), as opposed to a value computed from it.
    pub direct: bool,
    /// Lineage could not be proven: treat the column as derived from anything.
    pub unknown: bool,
    /// The value is a whole row written as JSON by a built-in function
    /// (`to_jsonb(t)`, `json_agg(t)`): the masking may then mask it field
    /// by field instead of whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<WholeRow>,
}

impl OutputColumn {
    /// A column with the given lineage and no whole row.
    ///
    /// ```
    /// use policy_core::OutputColumn;
    /// let c = OutputColumn::new("ssn", vec!["public.users.ssn".into()], true, false);
    /// assert!(c.direct && c.row.is_none());
    /// ```
    pub fn new(name: &str, sources: Vec<String>, direct: bool, unknown: bool) -> Self {
        OutputColumn { name: name.to_string(), sources, direct, unknown, row: None }
    }
}

/// A result value that is a whole row written as JSON, and where its
/// fields come from.
///
/// `SELECT to_jsonb(u) FROM users u` gives one JSON object per row whose
/// keys are the columns of `users`; `json_agg(u)` an array of them. The
/// engine records it for rows of a table or view in FROM (the keys are its
/// columns) and of a subquery or CTE (the keys are its result columns, each
/// with its own lineage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WholeRow {
    /// How the value lays the row out.
    pub layout: RowLayout,
    /// For a table or view: the relations (`schema.table`) the row may be
    /// of, more than one when an unqualified name resolves through the
    /// search path. A key `k` stands for the column `schema.table.k`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// For a subquery or CTE: its result columns, named as the keys are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<OutputColumn>,
    /// Columns the name may stand for instead of the row (PostgreSQL reads
    /// `to_jsonb(u)` as a column `u` when a relation in FROM has one): a
    /// mask covering one of them masks the value whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<String>,
}

/// How a JSON value lays out whole rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowLayout {
    /// One object, its keys the row's columns (`to_json`, `to_jsonb`,
    /// `row_to_json`).
    JsonObject,
    /// An array of such objects (`json_agg`, `jsonb_agg`).
    JsonArray,
    /// A composite value, the row's columns in order (`SELECT u FROM
    /// users u`, `u::text`, `ROW(u.*)`), in PostgreSQL's text or binary
    /// record format. The fields of a table's or view's row are named by
    /// the gateway ([`ColumnInfo::row_fields`](crate::ColumnInfo::row_fields)).
    Composite,
}

/// What lineage needs from the session.
pub(crate) struct Env<'d> {
    pub search_path: Vec<String>,
    pub user: Option<String>,
    /// The session's definitions, when the expansion follows SQL
    /// functions: a call's result then derives from a marker source
    /// ([`function_source`]) the expansion replaces.
    pub definitions: Option<&'d Definitions>,
}

/// The prefix of the marker source a call to a function that is not built
/// in gives its result, followed by every function the name may resolve
/// to, `|`-separated, until the expansion replaces it with what the
/// function's body reads. No name as facts write them starts so: a part
/// holding `:` is double-quoted.
pub(crate) const FUNCTION_SOURCE: &str = "function:";

/// The same for a call to a built-in name, which a function of the
/// database of that name may take over: the functions listed count when
/// the expansion followed them, and nothing is unproven when it did not.
pub(crate) const MAYBE_FUNCTION_SOURCE: &str = "function?:";

/// The marker source of a call to `fc`, when it is not a built-in function
/// or a function of the definitions may take its built-in name over.
fn function_source(fc: &pb::FuncCall, env: &Env<'_>, definitions: &Definitions) -> Option<String> {
    let parts = string_parts(&fc.funcname);
    let candidates = match parts.as_slice() {
        [name] if catalog::is_builtin_function(name) && crate::session::catalog_first(&env.search_path) => {
            let mut candidates = names::relation_candidates(&env.search_path, env.user.as_deref(), name);
            candidates.retain(|c| !definitions.functions(c).is_empty());
            return (!candidates.is_empty()).then(|| format!("{MAYBE_FUNCTION_SOURCE}{}", candidates.join("|")));
        }
        [name] => names::relation_candidates(&env.search_path, env.user.as_deref(), name),
        [schema, name] | [_, schema, name] => {
            if *schema == "pg_catalog" && catalog::is_builtin_function(name) {
                return None;
            }
            vec![names::qualified(schema, name)]
        }
        _ => Vec::new(),
    };
    Some(format!("{FUNCTION_SOURCE}{}", candidates.join("|")))
}

/// A FROM item as lineage sees it.
#[derive(Clone)]
enum Item {
    Relation { alias: String, tables: Vec<String> },
    Derived { alias: String, columns: Vec<OutputColumn> },
    Unknown { alias: String },
}

impl Item {
    fn alias(&self) -> &str {
        match self {
            Item::Relation { alias, .. } | Item::Derived { alias, .. } | Item::Unknown { alias } => alias,
        }
    }
}

#[derive(Default)]
struct Lin {
    sources: BTreeSet<String>,
    direct: bool,
    unknown: bool,
    contributors: usize,
    row: Option<WholeRow>,
}

impl Lin {
    fn merge(&mut self, other: Lin) {
        self.sources.extend(other.sources);
        self.unknown |= other.unknown;
        self.contributors += other.contributors;
        self.direct = false;
        self.row = None;
    }

    fn from_column(c: &OutputColumn) -> Lin {
        Lin {
            sources: c.sources.iter().cloned().collect(),
            direct: c.direct,
            unknown: c.unknown,
            contributors: 1,
            row: c.row.clone(),
        }
    }

    fn into_column(self, name: String) -> OutputColumn {
        let direct = self.direct && self.contributors == 1 && !self.unknown;
        let row = self.row.filter(|_| !self.unknown);
        OutputColumn { name, sources: self.sources.into_iter().collect(), direct, unknown: self.unknown, row }
    }
}

struct Ctx<'e> {
    env: &'e Env<'e>,
    /// The FROM items of the enclosing queries, innermost last: a bare
    /// column a subquery's table may lack is the outer query's (`SELECT
    /// (SELECT name FROM orders) FROM customers` reads `customers.name`
    /// when `orders` has no `name`).
    outer: Vec<Rc<Vec<Item>>>,
    /// CTE outputs in scope, innermost last.
    ctes: Vec<Vec<(String, Vec<OutputColumn>)>>,
    depth: usize,
    /// How many recursive terms are being evaluated (nested).
    in_step: usize,
    /// Expressions and queries the recursive terms may still evaluate: a
    /// recursive CTE inside another's recursive term is re-evaluated in
    /// every round of the outer one, so the rounds' work is bounded as a
    /// whole; once it runs out, recursive CTEs are not proven.
    budget: usize,
}

/// Rounds of a recursive CTE's fixed point before its lineage is given up.
const MAX_ROUNDS: usize = 32;

/// Evaluations (queries and expressions) the recursive terms of one
/// statement may take, all rounds together.
const STEP_BUDGET: usize = 100_000;

/// An output column standing for any column of unknown origin.
fn unknown_star() -> OutputColumn {
    OutputColumn::new("*", Vec::new(), false, true)
}

/// The columns of `SHOW name` (`SHOW ALL`: name, setting, description).
///
/// A setting is not table data: no column mask names it, and the same value
/// read as `SELECT current_setting('name')` already has a known lineage with
/// no source (a function over constants). Settings take their values from
/// literals (`SET`, `ALTER ROLE/DATABASE ... SET`, startup options) or from
/// `set_config()`, which the engine refuses in a statement that reads a
/// masked column; a server-side function that copies table data into a
/// setting could equally return it, which lineage trusts just as little or
/// as much. So the columns have a known, empty lineage: no column mask
/// applies, and the policy's detectors still scan their text.
fn show_columns(name: &str) -> Vec<OutputColumn> {
    let names: &[&str] = if name == "all" { &["name", "setting", "description"] } else { &[name] };
    names.iter().map(|n| OutputColumn::new(n, Vec::new(), false, false)).collect()
}

/// The one column of an `EXPLAIN` (in every format: text, JSON, XML,
/// YAML): the plan. A plan names tables, columns, functions and operators,
/// and holds the statement's own constants (its filters, as written or
/// folded by the planner) and counts (estimated rows, and with `ANALYZE`
/// the rows each step produced and removed); it never holds a value read
/// from a table, so it is judged like the statement's text, which the
/// client wrote, not like result rows: a known, empty lineage, no column
/// mask, and the policy's detectors still scan it. What counts can tell
/// about a masked column (how many rows match `ssn = '...'`) a `count(*)`
/// tells as well: the predicate channel the documentation describes.
fn explain_columns() -> Vec<OutputColumn> {
    vec![OutputColumn::new("QUERY PLAN", Vec::new(), false, false)]
}

/// Lineage of the result columns of a statement that returns rows.
pub(crate) fn outputs(stmt: NodeRef<'_>, env: &Env<'_>) -> Vec<OutputColumn> {
    let mut ctx = Ctx { env, outer: Vec::new(), ctes: Vec::new(), depth: 0, in_step: 0, budget: STEP_BUDGET };
    match stmt {
        NodeRef::SelectStmt(s) if s.into_clause.is_none() => ctx.select(s),
        NodeRef::DeclareCursorStmt(d) => node(&d.query).map_or_else(Vec::new, |q| outputs(q, env)),
        NodeRef::PrepareStmt(p) => node(&p.query).map_or_else(Vec::new, |q| outputs(q, env)),
        NodeRef::ExplainStmt(_) => explain_columns(),
        NodeRef::VariableShowStmt(s) => show_columns(&s.name),
        NodeRef::CopyStmt(c) => match (node(&c.query), &c.relation) {
            (Some(q), _) => outputs(q, env),
            (None, Some(rv)) if !c.is_from && !c.attlist.is_empty() => {
                // `COPY t (a, b) TO STDOUT`: the listed columns, in order.
                let tables = ctx.relation_tables(rv);
                nodes(&c.attlist)
                    .filter_map(|n| match n {
                        NodeRef::String(s) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .map(|col| {
                        OutputColumn::new(col, tables.iter().map(|t| names::dotted(t, col)).collect(), true, false)
                    })
                    .collect()
            }
            (None, Some(rv)) if !c.is_from => {
                let tables = ctx.relation_tables(rv);
                vec![OutputColumn::new("*", tables.iter().map(|t| format!("{t}.*")).collect(), true, false)]
            }
            _ => Vec::new(),
        },
        NodeRef::InsertStmt(s) => ctx.returning(s.relation.as_ref(), s.returning_clause.as_ref()),
        NodeRef::UpdateStmt(s) => ctx.returning(s.relation.as_ref(), s.returning_clause.as_ref()),
        NodeRef::DeleteStmt(s) => ctx.returning(s.relation.as_ref(), s.returning_clause.as_ref()),
        NodeRef::MergeStmt(s) => ctx.returning(s.relation.as_ref(), s.returning_clause.as_ref()),
        _ => Vec::new(),
    }
}

impl Ctx<'_> {
    fn relation_tables(&self, rv: &pb::RangeVar) -> Vec<String> {
        if rv.schemaname.is_empty() {
            names::relation_candidates(&self.env.search_path, self.env.user.as_deref(), &rv.relname)
        } else {
            vec![names::qualified(&rv.schemaname, &rv.relname)]
        }
    }

    fn cte(&self, name: &str) -> Option<&Vec<OutputColumn>> {
        self.ctes.iter().rev().flat_map(|scope| scope.iter().rev()).find(|(n, _)| n == name).map(|(_, c)| c)
    }

    fn returning(
        &mut self,
        target: Option<&pb::RangeVar>,
        returning: Option<&pb::ReturningClause>,
    ) -> Vec<OutputColumn> {
        let (Some(rv), Some(ret)) = (target, returning) else { return Vec::new() };
        let alias = rv.alias.as_ref().map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
        let items = Rc::new(vec![Item::Relation { alias, tables: self.relation_tables(rv) }]);
        self.outer.push(Rc::clone(&items));
        let out = self.target_list(&ret.exprs, &items, false);
        self.outer.pop();
        out
    }

    fn with(&mut self, with: Option<&pb::WithClause>) -> bool {
        let Some(with) = with else { return false };
        let mut scope = Vec::new();
        if with.recursive {
            // In a recursive WITH every query sees every name of the list
            // (later ones too): until its lineage is computed, a CTE reads
            // as a star of unknown origin.
            for c in nodes(&with.ctes) {
                if let NodeRef::CommonTableExpr(c) = c {
                    scope.push((c.ctename.clone(), vec![unknown_star()]));
                }
            }
        }
        self.ctes.push(scope);
        for c in nodes(&with.ctes) {
            let NodeRef::CommonTableExpr(c) = c else { continue };
            let mut cols = if with.recursive { self.recursive_cte(c) } else { self.cte_query(c) };
            rename(&mut cols, &c.aliascolnames);
            extra_cte_columns(&mut cols, c);
            self.bind(&c.ctename, cols);
        }
        true
    }

    /// A CTE's query, read once.
    fn cte_query(&mut self, c: &pb::CommonTableExpr) -> Vec<OutputColumn> {
        match node(&c.ctequery) {
            Some(NodeRef::SelectStmt(s)) => self.select(s),
            Some(other) => outputs(other, self.env),
            None => Vec::new(),
        }
    }

    /// Sets the columns of the CTE `name` of the innermost WITH.
    fn bind(&mut self, name: &str, cols: Vec<OutputColumn>) {
        let Some(scope) = self.ctes.last_mut() else { return };
        match scope.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c = cols,
            None => scope.push((name.to_string(), cols)),
        }
    }

    /// A CTE of a `WITH RECURSIVE` (its name bound to an unknown star):
    /// `base UNION [ALL] step` is followed to its fixed point, where `step`
    /// reads the CTE as computed so far. Any other query is read once, so
    /// that a self-reference in it stays unknown.
    fn recursive_cte(&mut self, c: &pb::CommonTableExpr) -> Vec<OutputColumn> {
        let terms = match node(&c.ctequery) {
            Some(NodeRef::SelectStmt(s)) if s.op == pb::SetOperation::SetopUnion as i32 && s.with_clause.is_none() => {
                s.larg.as_deref().zip(s.rarg.as_deref())
            }
            _ => None,
        };
        let Some((base, step)) = terms else { return self.cte_query(c) };
        // PostgreSQL refuses a self-reference in the non-recursive term;
        // here it would read the unknown star.
        let mut base = self.select(base);
        rename(&mut base, &c.aliascolnames);
        let mut current = base.clone();
        for _ in 0..MAX_ROUNDS {
            if self.budget == 0 {
                break;
            }
            self.bind(&c.ctename, current.clone());
            self.in_step += 1;
            let stepped = self.select(step);
            self.in_step -= 1;
            let next = union_columns(base.clone(), stepped);
            if next == current {
                return current;
            }
            current = next;
        }
        // No fixed point within the bounds: not proven.
        for col in &mut current {
            col.unknown = true;
            col.direct = false;
        }
        current
    }

    /// Charges one evaluation to the recursive terms' budget; false when
    /// it has run out.
    fn charge(&mut self) -> bool {
        if self.in_step == 0 {
            return true;
        }
        self.budget = self.budget.saturating_sub(1);
        self.budget > 0
    }

    fn select(&mut self, s: &pb::SelectStmt) -> Vec<OutputColumn> {
        if !self.charge() {
            return vec![unknown_star()];
        }
        self.depth += 1;
        if self.depth > 200 {
            self.depth -= 1;
            return vec![unknown_star()];
        }
        let pushed = self.with(s.with_clause.as_ref());
        let out = if let (Some(l), Some(r)) = (&s.larg, &s.rarg) {
            let left = self.select(l);
            let right = self.select(r);
            union_columns(left, right)
        } else if !s.values_lists.is_empty() {
            let mut cols: Vec<Lin> = Vec::new();
            for row in nodes(&s.values_lists) {
                let NodeRef::List(row) = row else { continue };
                for (i, e) in nodes(&row.items).enumerate() {
                    let lin = self.expr(e, &[]);
                    match cols.get_mut(i) {
                        Some(c) => c.merge(lin),
                        None => cols.push(Lin { direct: false, ..lin }),
                    }
                }
            }
            cols.into_iter().enumerate().map(|(i, l)| l.into_column(format!("column{}", i + 1))).collect()
        } else {
            let mut items = Vec::new();
            for f in nodes(&s.from_clause) {
                self.add_from_item(f, &mut items);
            }
            // The subqueries of the target list see these items as outer.
            let items = Rc::new(items);
            self.outer.push(Rc::clone(&items));
            let out = self.target_list(&s.target_list, &items, merged_join(&s.from_clause));
            self.outer.pop();
            out
        };
        if pushed {
            self.ctes.pop();
        }
        self.depth -= 1;
        out
    }

    fn add_from_item(&mut self, f: NodeRef<'_>, items: &mut Vec<Item>) {
        match f {
            NodeRef::RangeVar(rv) => {
                let alias = rv.alias.as_ref().map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
                let cte = if rv.schemaname.is_empty() { self.cte(&rv.relname).cloned() } else { None };
                match cte {
                    Some(mut columns) => {
                        if let Some(a) = &rv.alias {
                            rename(&mut columns, &a.colnames);
                        }
                        items.push(Item::Derived { alias, columns });
                    }
                    None => items.push(Item::Relation { alias, tables: self.relation_tables(rv) }),
                }
            }
            NodeRef::RangeSubselect(sub) => {
                let alias = sub.alias.as_ref().map_or_else(String::new, |a| a.aliasname.clone());
                // A LATERAL subquery sees the FROM items before it.
                if sub.lateral {
                    self.outer.push(Rc::new(items.clone()));
                }
                let mut columns = match node(&sub.subquery) {
                    Some(NodeRef::SelectStmt(s)) => self.select(s),
                    _ => vec![unknown_star()],
                };
                if sub.lateral {
                    self.outer.pop();
                }
                if let Some(a) = &sub.alias {
                    rename(&mut columns, &a.colnames);
                }
                items.push(Item::Derived { alias, columns });
            }
            NodeRef::JoinExpr(j) => {
                if let Some(l) = node(&j.larg) {
                    self.add_from_item(l, items);
                }
                if let Some(r) = node(&j.rarg) {
                    self.add_from_item(r, items);
                }
            }
            NodeRef::RangeFunction(rf) => {
                let alias = rf.alias.as_ref().map_or_else(String::new, |a| a.aliasname.clone());
                items.push(Item::Unknown { alias });
            }
            _ => items.push(Item::Unknown { alias: String::new() }),
        }
    }

    fn target_list(&mut self, targets: &[pb::Node], items: &[Item], merged: bool) -> Vec<OutputColumn> {
        let mut out = Vec::new();
        for t in nodes(targets) {
            let NodeRef::ResTarget(rt) = t else { continue };
            let Some(val) = node(&rt.val) else { continue };
            if let NodeRef::ColumnRef(c) = val {
                if let Some(star) = star_columns(c, items, merged) {
                    out.extend(star);
                    continue;
                }
            }
            let lin = self.expr(val, items);
            let name = if rt.name.is_empty() { default_name(val) } else { rt.name.clone() };
            out.push(lin.into_column(name));
        }
        out
    }

    fn column(&mut self, c: &pb::ColumnRef, items: &[Item]) -> Lin {
        let parts: Vec<&str> = nodes(&c.fields)
            .filter_map(|f| match f {
                NodeRef::String(s) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect();
        let mut lin = Lin::default();
        match parts.as_slice() {
            [col] => {
                let mut found = false;
                for item in items {
                    match item {
                        Item::Relation { tables, alias } => {
                            found = true;
                            lin.contributors += 1;
                            for t in tables {
                                lin.sources.insert(names::dotted(t, col));
                                if alias == col {
                                    // `SELECT u FROM users u`: a whole row.
                                    lin.sources.insert(format!("{t}.*"));
                                }
                            }
                            lin.direct = true;
                        }
                        Item::Derived { columns, alias } => {
                            for c in columns.iter().filter(|c| c.name == *col || c.name == "*" || alias == col) {
                                found = true;
                                lin.contributors += 1;
                                lin.sources.extend(c.sources.iter().cloned());
                                lin.direct = c.direct && c.name == *col;
                                lin.unknown |= c.unknown || c.name == "*";
                            }
                        }
                        Item::Unknown { .. } => {
                            found = true;
                            lin.unknown = true;
                        }
                    }
                }
                if !found {
                    // A correlated reference to an outer query.
                    lin.unknown = true;
                } else if items.iter().any(|i| matches!(i, Item::Relation { .. })) {
                    // A table here may lack the column: then it is the
                    // nearest outer query's that has it.
                    self.outer_candidates(col, &mut lin);
                }
            }
            [q, col] => match items.iter().find(|i| i.alias() == *q) {
                Some(Item::Relation { tables, .. }) => {
                    lin.contributors = 1;
                    lin.direct = true;
                    lin.sources = tables.iter().map(|t| names::dotted(t, col)).collect();
                    self.attribute_notation(tables, col, &mut lin);
                }
                Some(Item::Derived { columns, .. }) => match columns.iter().find(|c| c.name == *col) {
                    Some(c) => lin = Lin::from_column(c),
                    None => {
                        lin.unknown = true;
                        for c in columns {
                            lin.sources.extend(c.sources.iter().cloned());
                        }
                    }
                },
                Some(Item::Unknown { .. }) | None => lin.unknown = true,
            },
            [schema, table, col] | [_, schema, table, col] => {
                lin.contributors = 1;
                lin.direct = true;
                let table = names::qualified(schema, table);
                lin.sources.insert(format!("{}.{}", table, names::part(col)));
                self.attribute_notation(&[table], col, &mut lin);
            }
            _ => lin.unknown = true,
        }
        lin
    }

    /// What a bare column may stand for in the enclosing queries: the
    /// column of each of their tables, the whole row of one aliased so,
    /// the matching column of a subquery, anything of an item whose
    /// columns are unknown.
    fn outer_candidates(&self, col: &str, lin: &mut Lin) {
        // The last level is the query the column is in.
        for level in self.outer.iter().rev().skip(1) {
            for item in level.iter() {
                match item {
                    Item::Relation { tables, alias } => {
                        for t in tables {
                            lin.sources.insert(names::dotted(t, col));
                            if alias == col {
                                lin.sources.insert(format!("{t}.*"));
                            }
                        }
                    }
                    Item::Derived { columns, alias } => {
                        for c in columns.iter().filter(|c| c.name == *col || c.name == "*" || alias == col) {
                            lin.sources.extend(c.sources.iter().cloned());
                            lin.unknown |= c.unknown || c.name == "*";
                            if alias == col {
                                lin.direct = false;
                            }
                        }
                    }
                    Item::Unknown { .. } => lin.unknown = true,
                }
            }
        }
    }

    /// `t.f` where table `t` has no column `f` is PostgreSQL's attribute
    /// notation for `f(t)`: the engine does not know the table's columns,
    /// so when `f` is a built-in that takes a whole row, or a function of
    /// the database, the value may be derived from the whole row. (A
    /// column the server reports as a table's is masked by that column, so
    /// a real column of that name loses nothing.)
    fn attribute_notation(&self, tables: &[String], col: &str, lin: &mut Lin) {
        let database_function = self.env.definitions.is_some_and(|d| {
            names::relation_candidates(&self.env.search_path, self.env.user.as_deref(), col)
                .iter()
                .any(|f| !d.functions(f).is_empty())
        });
        if catalog::is_attribute_function(col) || database_function {
            lin.direct = false;
            lin.unknown |= database_function;
            lin.sources.extend(tables.iter().map(|t| format!("{t}.*")));
        }
    }

    fn expr(&mut self, e: NodeRef<'_>, items: &[Item]) -> Lin {
        if !self.charge() {
            return Lin { unknown: true, ..Lin::default() };
        }
        match e {
            NodeRef::ColumnRef(c) => {
                let mut lin = self.column(c, items);
                // `SELECT u FROM users u`: a whole row, as a composite.
                if c.fields.len() == 1 {
                    lin.row = row_reference(c, items, RowLayout::Composite);
                }
                lin
            }
            NodeRef::AConst(_) | NodeRef::ParamRef(_) => Lin::default(),
            NodeRef::TypeCast(tc) => {
                let mut lin = node(&tc.arg).map_or_else(Lin::default, |a| self.expr(a, items));
                let to_text = tc.type_name.as_ref().is_some_and(|t| {
                    let last = t.names.iter().rev().find_map(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    });
                    matches!(last, Some("text" | "varchar" | "bpchar" | "name")) && t.array_bounds.is_empty()
                });
                lin.direct &= to_text;
                // JSON stays JSON when cast to text or to the other JSON type.
                let keeps_json = tc.type_name.as_ref().is_some_and(|t| {
                    let last = t.names.iter().rev().find_map(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    });
                    matches!(last, Some("text" | "varchar" | "json" | "jsonb")) && t.array_bounds.is_empty()
                });
                if !keeps_json {
                    lin.row = None;
                }
                lin
            }
            NodeRef::CollateClause(c) => node(&c.arg).map_or_else(Lin::default, |a| self.expr(a, items)),
            NodeRef::SubLink(s) => {
                let mut lin = Lin::default();
                if let Some(NodeRef::SelectStmt(sel)) = node(&s.subselect) {
                    for c in self.select(sel) {
                        lin.merge(Lin::from_column(&c));
                    }
                }
                if let Some(t) = node(&s.testexpr) {
                    lin.merge(self.expr(t, items));
                }
                lin.direct = false;
                lin
            }
            NodeRef::SelectStmt(sel) => {
                let mut lin = Lin::default();
                for c in self.select(sel) {
                    lin.merge(Lin::from_column(&c));
                }
                lin
            }
            other => {
                let mut lin = Lin::default();
                if let NodeRef::FuncCall(fc) = other {
                    if let Some(definitions) = self.env.definitions {
                        lin.sources.extend(function_source(fc, self.env, definitions));
                    }
                }
                let mut parts = Vec::new();
                walk::for_each_child(other, &mut |_, child| parts.push(child));
                for child in parts {
                    lin.merge(self.expr(child, items));
                }
                lin.direct = false;
                let calls =
                    lin.sources.iter().any(|s| s.starts_with(FUNCTION_SOURCE) || s.starts_with(MAYBE_FUNCTION_SOURCE));
                lin.row = match other {
                    NodeRef::FuncCall(fc) if !calls => whole_row(fc, items, self.env),
                    NodeRef::RowExpr(r) => row_constructor(r, items),
                    _ => None,
                };
                lin
            }
        }
    }
}

/// A call that writes a whole row of a FROM item as JSON (`to_jsonb(u)`,
/// `row_to_json(u.*)`, `json_agg(u ORDER BY id)`): the built-in function
/// (unqualified only while `pg_catalog` comes first in the path) over a
/// reference to a table, view, subquery or CTE whose columns are known.
fn whole_row(fc: &pb::FuncCall, items: &[Item], env: &Env<'_>) -> Option<WholeRow> {
    let parts = string_parts(&fc.funcname);
    let name = match parts.as_slice() {
        [name] if crate::session::catalog_first(&env.search_path) => *name,
        ["pg_catalog", name] => *name,
        _ => return None,
    };
    let layout = match name {
        "to_json" | "to_jsonb" | "row_to_json" => RowLayout::JsonObject,
        "json_agg" | "jsonb_agg" => RowLayout::JsonArray,
        _ => return None,
    };
    if fc.agg_star || fc.func_variadic {
        return None;
    }
    let mut args = nodes(&fc.args);
    let Some(NodeRef::ColumnRef(c)) = args.next() else { return None };
    // `row_to_json(u, true)` pretty-prints: the same members.
    match args.next() {
        None => {}
        Some(NodeRef::AConst(_)) if name == "row_to_json" => {}
        Some(_) => return None,
    }
    if args.next().is_some() {
        return None;
    }
    row_reference(c, items, layout)
}

/// `ROW(u.*)`: a composite of every column of `u`.
fn row_constructor(r: &pb::RowExpr, items: &[Item]) -> Option<WholeRow> {
    let mut args = nodes(&r.args);
    let Some(NodeRef::ColumnRef(c)) = args.next() else { return None };
    if args.next().is_some() || !matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(NodeEnum::AStar(_))) {
        return None;
    }
    row_reference(c, items, RowLayout::Composite)
}

/// A reference to a whole row of a FROM item (`u`, or `u.*` where a row is
/// meant), laid out as `layout`.
fn row_reference(c: &pb::ColumnRef, items: &[Item], layout: RowLayout) -> Option<WholeRow> {
    let fields: Vec<Option<&NodeEnum>> = c.fields.iter().map(|f| f.node.as_ref()).collect();
    let (alias, star) = match fields.as_slice() {
        [Some(NodeEnum::String(a))] => (a.sval.as_str(), false),
        [Some(NodeEnum::String(a)), Some(NodeEnum::AStar(_))] => (a.sval.as_str(), true),
        _ => return None,
    };
    // A single name is a column first: every column of that name some
    // item may have is an alternative.
    let mut alternatives = BTreeSet::new();
    if !star {
        for item in items {
            match item {
                Item::Relation { tables, .. } => alternatives.extend(tables.iter().map(|t| names::dotted(t, alias))),
                Item::Derived { columns, .. } => {
                    for col in columns {
                        if col.name == "*" || col.unknown {
                            return None;
                        }
                        if col.name == alias {
                            alternatives.extend(col.sources.iter().cloned());
                        }
                    }
                }
                Item::Unknown { .. } => return None,
            }
        }
    }
    let alternatives = alternatives.into_iter().collect();
    match items.iter().find(|i| i.alias() == alias)? {
        Item::Relation { tables, .. } => {
            Some(WholeRow { layout, tables: tables.clone(), fields: Vec::new(), alternatives })
        }
        Item::Derived { columns, .. } if columns.iter().all(|c| c.name != "*") => {
            Some(WholeRow { layout, tables: Vec::new(), fields: columns.clone(), alternatives })
        }
        Item::Derived { .. } | Item::Unknown { .. } => None,
    }
}

/// Whether a FROM list joins with `USING` or `NATURAL`: `*` then starts
/// with the merged columns, which may come from either side (`FULL JOIN
/// ... USING (ssn)` gives `coalesce(l.ssn, r.ssn)`).
fn merged_join(from: &[pb::Node]) -> bool {
    fn merges(item: NodeRef<'_>) -> bool {
        match item {
            NodeRef::JoinExpr(j) => {
                j.is_natural
                    || !j.using_clause.is_empty()
                    || node(&j.larg).is_some_and(merges)
                    || node(&j.rarg).is_some_and(merges)
            }
            _ => false,
        }
    }
    nodes(from).any(merges)
}

/// `*` and `q.*` expand to the columns of the FROM items they name. With a
/// `USING` or `NATURAL` join (`merged`), an unqualified `*` starts with the
/// merged columns, whose number and sides the engine does not know: a
/// star of everything the FROM items hold stands for them.
fn star_columns(c: &pb::ColumnRef, items: &[Item], merged: bool) -> Option<Vec<OutputColumn>> {
    let last_is_star = matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(NodeEnum::AStar(_)));
    if !last_is_star {
        return None;
    }
    let qualifier = match c.fields.len() {
        1 => None,
        2 => match c.fields.first().and_then(|f| f.node.as_ref()) {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        },
        _ => None,
    };
    let mut out = Vec::new();
    if merged && qualifier.is_none() {
        let mut all = Lin::default();
        for item in items {
            match item {
                Item::Relation { tables, .. } => all.sources.extend(tables.iter().map(|t| format!("{t}.*"))),
                Item::Derived { columns, .. } => {
                    for c in columns {
                        all.merge(Lin::from_column(c));
                    }
                }
                Item::Unknown { .. } => all.unknown = true,
            }
        }
        all.direct = false;
        out.push(all.into_column("*".to_string()));
    }
    for item in items.iter().filter(|i| qualifier.is_none_or(|q| i.alias() == q)) {
        match item {
            Item::Relation { tables, .. } => {
                out.push(OutputColumn::new("*", tables.iter().map(|t| format!("{t}.*")).collect(), true, false))
            }
            Item::Derived { columns, .. } => out.extend(columns.iter().cloned()),
            Item::Unknown { .. } => {
                out.push(unknown_star());
            }
        }
    }
    if out.is_empty() {
        out.push(unknown_star());
    }
    Some(out)
}

/// The columns of a set operation: column `i` derives from column `i` of
/// both sides, named by the left. Not proven when the sides do not line up
/// (a star of unknown shape, different counts).
fn union_columns(left: Vec<OutputColumn>, right: Vec<OutputColumn>) -> Vec<OutputColumn> {
    if left.len() != right.len() || left.iter().chain(&right).any(|c| c.name == "*") {
        let mut cols = left;
        for c in &mut cols {
            c.unknown = true;
            c.direct = false;
        }
        return cols;
    }
    left.into_iter()
        .zip(right)
        .map(|(l, r)| {
            let mut lin = Lin::from_column(&l);
            let direct = l.direct && r.direct;
            lin.merge(Lin::from_column(&r));
            let mut col = lin.into_column(l.name);
            col.direct = direct && !col.unknown;
            col
        })
        .collect()
}

/// The columns a CTE's `SEARCH` and `CYCLE` clauses add after its own: the
/// sequence, cycle mark and path columns, each computed from the columns
/// the clause lists (unknown when one of them is not found).
fn extra_cte_columns(cols: &mut Vec<OutputColumn>, c: &pb::CommonTableExpr) {
    fn derived(cols: &[OutputColumn], listed: &[pb::Node], name: &str) -> OutputColumn {
        let mut lin = Lin::default();
        for n in nodes(listed) {
            let NodeRef::String(s) = n else {
                lin.unknown = true;
                continue;
            };
            match cols.iter().find(|c| c.name == s.sval && c.name != "*") {
                Some(c) => lin.merge(Lin::from_column(c)),
                None => lin.unknown = true,
            }
        }
        if cols.iter().any(|c| c.name == "*") {
            lin.unknown = true;
        }
        lin.direct = false;
        lin.into_column(name.to_string())
    }
    let mut added = Vec::new();
    if let Some(search) = &c.search_clause {
        added.push(derived(cols, &search.search_col_list, &search.search_seq_column));
    }
    if let Some(cycle) = &c.cycle_clause {
        added.push(derived(cols, &cycle.cycle_col_list, &cycle.cycle_mark_column));
        added.push(derived(cols, &cycle.cycle_col_list, &cycle.cycle_path_column));
    }
    cols.extend(added);
}

/// Renames columns by position (an alias list). A list holding a star is
/// left as it is: the star's width is not known, so neither are the
/// positions after it, and the star must go on standing for any name.
fn rename(columns: &mut [OutputColumn], names: &[pb::Node]) {
    if columns.iter().any(|c| c.name == "*") {
        return;
    }
    for (c, n) in columns.iter_mut().zip(names) {
        if let Some(NodeEnum::String(s)) = &n.node {
            c.name = s.sval.clone();
        }
    }
}

/// The name PostgreSQL gives an unnamed result column.
fn default_name(e: NodeRef<'_>) -> String {
    match e {
        NodeRef::ColumnRef(c) => match c.fields.last().and_then(|f| f.node.as_ref()) {
            Some(NodeEnum::String(s)) => s.sval.clone(),
            _ => "?column?".into(),
        },
        NodeRef::FuncCall(f) => match f.funcname.last().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::String(s)) => s.sval.clone(),
            _ => "?column?".into(),
        },
        NodeRef::TypeCast(tc) => match node(&tc.arg) {
            Some(inner @ (NodeRef::ColumnRef(_) | NodeRef::FuncCall(_))) => default_name(inner),
            _ => tc
                .type_name
                .as_ref()
                .and_then(|t| t.names.last())
                .and_then(|n| match &n.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "?column?".into()),
        },
        _ => "?column?".into(),
    }
}
