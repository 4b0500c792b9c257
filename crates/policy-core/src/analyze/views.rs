//! Views expanded into the facts of the statements that name them (see
//! [`crate::Views`]).
//!
//! A statement's facts name the relations it spells. For each one that is
//! a view, the view's definition is analysed (on a session whose
//! `search_path` is `pg_catalog` alone, as the definitions are written
//! qualified) and what it reads joins the statement's facts: its relations
//! (written ones too when the statement writes the view: the server writes
//! an updatable view's base relation), functions and columns, and the
//! opacity of anything it cannot see into. Views naming views are followed
//! the same way. Each view column gets the lineage of the definition's
//! output column at its position, followed through nested views, and the
//! statement's own lineage is rewritten with it, so a result column taken
//! from `public.v.tel` also derives from `public.users.phone`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use pg_query::NodeRef;

use super::{analyze, dotted, AnalyzeOptions, Class, OutputColumn, StatementFacts};
use crate::session::Session;
use crate::views::{Views, SYSTEM_SCHEMAS};

/// Most views one statement may reach, all levels together; beyond it the
/// statement is opaque.
const MAX_VIEWS: usize = 256;

/// Most levels of views over views a column's lineage is followed through.
const MAX_DEPTH: usize = 32;

/// Whether a statement may create, replace or rename a view, or change
/// what a name resolves to: the statements after it in the same string
/// are judged before the caller can read the catalog again.
pub(crate) fn may_change_views(stmt: NodeRef<'_>) -> bool {
    matches!(
        stmt,
        NodeRef::ViewStmt(_)
            | NodeRef::RuleStmt(_)
            | NodeRef::RenameStmt(_)
            | NodeRef::AlterObjectSchemaStmt(_)
            | NodeRef::CreateSchemaStmt(_)
            | NodeRef::CreateFunctionStmt(_)
            | NodeRef::DoStmt(_)
            | NodeRef::CallStmt(_)
    ) || matches!(stmt, NodeRef::CreateTableAsStmt(c) if c.objtype() == pg_query::protobuf::ObjectType::ObjectMatview)
}

/// Whether `table` (as facts write it) is in a system schema.
fn is_system(table: &str) -> bool {
    SYSTEM_SCHEMAS.iter().any(|s| table.strip_prefix(s).is_some_and(|rest| rest.starts_with('.')))
}

/// Marks `facts` opaque for `why`, the reason first among its notes when it
/// is the first reason it is opaque.
fn make_opaque(facts: &mut StatementFacts, why: String) {
    if facts.opaque {
        facts.notes.push(why);
    } else {
        facts.opaque = true;
        facts.notes.insert(0, why);
    }
}

/// Expands the views `facts` names. `changed`: an earlier statement of the
/// same string may have changed the views.
pub(crate) fn expand(facts: &mut StatementFacts, views: &Views, options: &AnalyzeOptions, changed: bool) {
    if facts.class == Class::Unknown {
        return;
    }
    let mut queue: VecDeque<String> = facts.tables.iter().cloned().collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut tables: BTreeSet<String> = facts.tables.iter().cloned().collect();
    let mut written: BTreeSet<String> = facts.written_tables.iter().cloned().collect();
    let mut functions: BTreeSet<String> = facts.functions.iter().cloned().collect();
    let mut columns: BTreeSet<String> = facts.columns.iter().cloned().collect();
    // The raw lineage of every expanded view's columns, and their names.
    let mut lineage: BTreeMap<String, OutputColumn> = BTreeMap::new();
    let mut view_columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(table) = queue.pop_front() {
        if is_system(&table) || !seen.insert(table.clone()) {
            continue;
        }
        if changed {
            make_opaque(
                facts,
                format!(
                    "an earlier statement in the same string may create or change views, and {table} may be one \
                     of them; send this statement on its own"
                ),
            );
            return;
        }
        if let Some(reason) = views.unavailable_reason() {
            make_opaque(
                facts,
                format!("cannot tell whether {table} is a view: the catalog could not be read ({reason})"),
            );
            return;
        }
        let Some(view) = views.get(&table) else { continue };
        if view_columns.len() >= MAX_VIEWS {
            make_opaque(facts, format!("the statement reaches more than {MAX_VIEWS} views"));
            return;
        }
        let def = match definition_facts(&view.definition, options) {
            Ok(def) => def,
            Err(why) => {
                make_opaque(facts, format!("the definition of view {table} cannot be read: {why}"));
                view_columns.insert(table.clone(), view.columns.clone());
                for c in &view.columns {
                    lineage.insert(dotted(&table, c), unknown_column(dotted(&table, c)));
                }
                continue;
            }
        };
        if def.opaque {
            let why = def.notes.first().cloned().unwrap_or_default();
            make_opaque(facts, format!("view {table} runs code the engine cannot see into: {why}"));
        }
        let writes_view = written.contains(&table);
        for t in &def.tables {
            if tables.insert(t.clone()) {
                queue.push_back(t.clone());
            }
            if writes_view {
                written.insert(t.clone());
            }
        }
        functions.extend(def.functions.iter().cloned());
        columns.extend(def.columns.iter().cloned());
        let proven = def.output_columns.len() == view.columns.len() && def.output_columns.iter().all(|c| c.name != "*");
        for (i, name) in view.columns.iter().enumerate() {
            let column = dotted(&table, name);
            let out = match def.output_columns.get(i) {
                Some(out) if proven => OutputColumn { name: column.clone(), ..out.clone() },
                _ => unknown_column(column.clone()),
            };
            lineage.insert(column, out);
        }
        view_columns.insert(table, view.columns.clone());
    }
    if view_columns.is_empty() {
        return;
    }
    let resolver = Resolver { lineage: &lineage, views: &view_columns };
    for out in &mut facts.output_columns {
        let resolved = resolver.all(&out.sources, 0);
        out.sources = resolved.sources.into_iter().collect();
        out.direct &= resolved.direct;
        out.unknown |= resolved.unknown;
    }
    let mut expanded = Vec::with_capacity(lineage.len());
    for (name, out) in &lineage {
        let resolved = resolver.one(name, 0);
        for s in &resolved.sources {
            columns.insert(s.clone());
        }
        expanded.push(OutputColumn {
            name: name.clone(),
            sources: resolved.sources.into_iter().collect(),
            direct: out.direct && resolved.direct,
            unknown: out.unknown || resolved.unknown,
        });
    }
    facts.view_columns = expanded;
    facts.tables = tables.into_iter().collect();
    facts.written_tables = written.into_iter().collect();
    facts.functions = functions.into_iter().collect();
    facts.columns = columns.into_iter().collect();
}

fn unknown_column(name: String) -> OutputColumn {
    OutputColumn { name, sources: Vec::new(), direct: false, unknown: true }
}

/// The facts of a view's query.
fn definition_facts(definition: &str, options: &AnalyzeOptions) -> Result<StatementFacts, String> {
    let session = Session::default().with_startup_search_path(vec!["pg_catalog".to_string()]);
    let options = AnalyzeOptions { expand_views: false, ..options.clone() };
    let mut analysis = analyze(definition, &session, &options);
    if analysis.statements.len() != 1 {
        return Err(format!("it holds {} statements", analysis.statements.len()));
    }
    let facts = analysis.statements.remove(0);
    match facts.class {
        Class::Read => Ok(facts),
        Class::Unknown => Err(facts.notes.first().cloned().unwrap_or_else(|| "the parser rejects it".to_string())),
        other => Err(format!("it is a {other} statement, not a query")),
    }
}

/// A column's lineage followed through views.
struct Resolved {
    sources: BTreeSet<String>,
    direct: bool,
    unknown: bool,
}

struct Resolver<'a> {
    lineage: &'a BTreeMap<String, OutputColumn>,
    views: &'a BTreeMap<String, Vec<String>>,
}

impl Resolver<'_> {
    /// Every source of `sources`, through the views; the sources named
    /// stay (a mask may name a view column).
    fn all(&self, sources: &[String], depth: usize) -> Resolved {
        let mut all = Resolved { sources: BTreeSet::new(), direct: true, unknown: false };
        for s in sources {
            let r = self.one(s, depth);
            all.sources.extend(r.sources);
            all.direct &= r.direct;
            all.unknown |= r.unknown;
        }
        all
    }

    fn one(&self, source: &str, depth: usize) -> Resolved {
        let mut sources = BTreeSet::from([source.to_string()]);
        if depth > MAX_DEPTH {
            return Resolved { sources, direct: false, unknown: true };
        }
        if let Some(out) = self.lineage.get(source) {
            let inner = self.all(&out.sources, depth + 1);
            sources.extend(inner.sources);
            return Resolved { sources, direct: out.direct && inner.direct, unknown: out.unknown || inner.unknown };
        }
        // A whole row of a view carries every one of its columns.
        if let Some(view) = source.strip_suffix(".*").and_then(|v| self.views.get_key_value(v)) {
            let columns: Vec<String> = view.1.iter().map(|c| dotted(view.0, c)).collect();
            let inner = self.all(&columns, depth + 1);
            sources.extend(inner.sources);
            return Resolved { sources, direct: false, unknown: inner.unknown };
        }
        Resolved { sources, direct: true, unknown: false }
    }
}
