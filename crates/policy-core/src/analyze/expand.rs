//! Views expanded into the facts of the statements that name them (see
//! [`crate::Definitions`]).
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
use std::sync::Arc;

use pg_query::NodeRef;

use super::lineage::{FUNCTION_SOURCE, MAYBE_FUNCTION_SOURCE};
use super::{analyze, dotted, Analysis, AnalyzeOptions, Class, ClauseColumn, OutputColumn, StatementFacts};
use crate::definitions::{Definitions, Function, FunctionBody, SYSTEM_SCHEMAS};
use crate::session::{Session, SessionEffect};

/// Most views and functions one statement may reach, all levels together;
/// beyond it the statement is opaque.
const MAX_DEFINITIONS: usize = 256;

/// Most levels of views over views a column's lineage is followed through.
const MAX_DEPTH: usize = 32;

/// Whether a statement may create, replace or rename a view, or change
/// what a name resolves to: the statements after it in the same string
/// are judged before the caller can read the catalog again.
pub(crate) fn may_change_definitions(stmt: NodeRef<'_>) -> bool {
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

/// Whether the relations a statement names are read by it: not by a
/// utility statement that only drops, changes, describes or locks them
/// (`DROP VIEW v`, `ALTER VIEW v RENAME`, `COMMENT ON VIEW v`, `LOCK v`).
/// `GRANT ... ON v` is judged with what `v` reads: it gives those rows
/// away.
fn reads_named_relations(facts: &StatementFacts) -> bool {
    const NOT_READ: &[&str] = &["DROP ", "ALTER ", "COMMENT", "SECURITY LABEL", "LOCK TABLE"];
    !(matches!(facts.class, Class::Ddl | Class::Dcl | Class::Admin)
        && NOT_READ.iter().any(|p| facts.command.starts_with(p)))
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

/// Expands the views `facts` names and the SQL functions it calls.
/// `changed`: an earlier statement of the same string may have changed the
/// definitions. `search_path`: the path the statement runs with (SQL
/// function bodies resolve their names with it, unless they set their own).
pub(crate) fn expand(
    facts: &mut StatementFacts,
    definitions: &Arc<Definitions>,
    options: &AnalyzeOptions,
    changed: bool,
    search_path: &[String],
    user: Option<&str>,
) -> Vec<SessionEffect> {
    let mut x = Expansion {
        definitions,
        options,
        search_path,
        user,
        tables: facts.tables.iter().cloned().collect(),
        written: facts.written_tables.iter().cloned().collect(),
        functions: facts.functions.iter().cloned().collect(),
        columns: facts.columns.iter().cloned().collect(),
        commands: facts.commands.iter().cloned().collect(),
        lineage: BTreeMap::new(),
        view_columns: BTreeMap::new(),
        function_lineage: BTreeMap::new(),
        class: facts.class,
        has_where: facts.has_where,
        clause_columns: Vec::new(),
        opaque: Vec::new(),
        followed: false,
        changes_settings: false,
        path_effects: Vec::new(),
    };
    if facts.class != Class::Unknown {
        x.run(facts, changed);
    }
    for why in std::mem::take(&mut x.opaque) {
        make_opaque(facts, why);
    }
    facts.changes_settings |= x.changes_settings;
    let path_effects = std::mem::take(&mut x.path_effects);
    facts.clause_columns.append(&mut x.clause_columns);
    let resolver = Resolver { lineage: &x.lineage, views: &x.view_columns, functions: &x.function_lineage };
    // Clause columns read through views and functions: what they derive
    // from is read there too.
    let mut clause_columns = BTreeSet::new();
    for c in &facts.clause_columns {
        let resolved = resolver.one(&c.column, 0);
        if resolved.unknown {
            clause_columns.insert(ClauseColumn { clause: c.clause, column: "*".to_string() });
        }
        for column in resolved.sources {
            clause_columns.insert(ClauseColumn { clause: c.clause, column });
        }
    }
    facts.clause_columns = clause_columns.into_iter().collect();
    for out in &mut facts.output_columns {
        let resolved = resolver.all(&out.sources, 0);
        out.sources = resolved.sources.into_iter().collect();
        out.direct &= resolved.direct;
        out.unknown |= resolved.unknown;
        // The fields of a whole row of a subquery, and the columns its
        // name may stand for, are read through views and functions too.
        if let Some(row) = &mut out.row {
            for field in &mut row.fields {
                let resolved = resolver.all(&field.sources, 0);
                field.sources = resolved.sources.into_iter().collect();
                field.direct &= resolved.direct;
                field.unknown |= resolved.unknown;
            }
            let resolved = resolver.all(&row.alternatives, 0);
            row.alternatives = resolved.sources.into_iter().collect();
            if resolved.unknown {
                out.row = None;
            }
        }
    }
    if x.view_columns.is_empty() && x.function_lineage.is_empty() && !x.followed {
        return path_effects;
    }
    let mut expanded = Vec::with_capacity(x.lineage.len());
    for (name, out) in &x.lineage {
        let resolved = resolver.one(name, 0);
        x.columns.extend(resolved.sources.iter().filter(|s| !is_marker(s)).cloned());
        expanded.push(OutputColumn {
            name: name.clone(),
            sources: resolved.sources.into_iter().collect(),
            direct: out.direct && resolved.direct,
            unknown: out.unknown || resolved.unknown,
            row: None,
        });
    }
    for lin in x.function_lineage.values() {
        x.columns.extend(lin.sources.iter().filter(|s| !is_marker(s)).cloned());
    }
    facts.view_columns = expanded;
    facts.class = x.class;
    facts.has_where = x.has_where;
    facts.tables = x.tables.into_iter().collect();
    facts.written_tables = x.written.into_iter().collect();
    facts.functions = x.functions.into_iter().collect();
    facts.columns = x.columns.into_iter().collect();
    facts.commands = x.commands.into_iter().collect();
    path_effects
}

/// The state of one statement's expansion.
struct Expansion<'a> {
    definitions: &'a Arc<Definitions>,
    options: &'a AnalyzeOptions,
    search_path: &'a [String],
    user: Option<&'a str>,
    tables: BTreeSet<String>,
    written: BTreeSet<String>,
    functions: BTreeSet<String>,
    columns: BTreeSet<String>,
    commands: BTreeSet<String>,
    /// The raw lineage of every expanded view's columns, and their names.
    lineage: BTreeMap<String, OutputColumn>,
    view_columns: BTreeMap<String, Vec<String>>,
    /// What the result of each expanded function derives from.
    function_lineage: BTreeMap<String, OutputColumn>,
    class: Class,
    has_where: Option<bool>,
    /// What SQL function bodies read in their clauses: the caller's
    /// arguments reach them (`WHERE ssn LIKE $1 || '%'`).
    clause_columns: Vec<ClauseColumn>,
    /// Why the statement is opaque, in order.
    opaque: Vec<String>,
    /// Whether a rule or a row security policy was followed.
    followed: bool,
    /// A SQL function body changes settings (`set_config`, `SET`).
    changes_settings: bool,
    /// The `search_path` changes of the SQL function bodies, each as one
    /// that may or may not happen (a function runs once per row, or not
    /// at all).
    path_effects: Vec<SessionEffect>,
}

impl Expansion<'_> {
    fn run(&mut self, facts: &StatementFacts, changed: bool) {
        if let Some(table) = facts.tables.iter().find(|t| self.definitions.shadowed_by_catalog(t)) {
            self.opaque.push(format!(
                "pg_catalog, which the server searches first, holds a relation of the same name as {table} that is \
                 not the server's own"
            ));
            return;
        }
        // A view a statement drops, alters, comments on or locks is not
        // read: what is behind it is not either.
        let mut relations: VecDeque<String> =
            if reads_named_relations(facts) { facts.tables.iter().cloned().collect() } else { VecDeque::new() };
        let mut calls: VecDeque<String> = facts.sql_calls.iter().cloned().collect();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut called: BTreeSet<String> = BTreeSet::new();
        loop {
            if let Some(table) = relations.pop_front() {
                if is_system(&table) || !seen.insert(table.clone()) {
                    continue;
                }
                if changed {
                    self.opaque.push(format!(
                        "an earlier statement in the same string may create or change views or functions, and \
                         {table} may be one of them; send this statement on its own"
                    ));
                    return;
                }
                if let Some(reason) = self.definitions.unavailable_reason() {
                    self.opaque.push(format!(
                        "cannot tell whether {table} is a view: the catalog could not be read ({reason})"
                    ));
                    return;
                }
                if self.definitions.shadowed_by_catalog(&table) {
                    self.opaque.push(format!(
                        "pg_catalog, which the server searches first, holds a relation of the same name as {table} \
                         that is not the server's own"
                    ));
                    return;
                }
                self.follow_rules_and_policies(&table, &mut relations, &mut calls);
                let Some(view) = self.definitions.get(&table) else { continue };
                if self.view_columns.len() + self.function_lineage.len() >= MAX_DEFINITIONS {
                    self.opaque.push(format!("the statement reaches more than {MAX_DEFINITIONS} views and functions"));
                    return;
                }
                self.view_columns.insert(table.clone(), view.columns.clone());
                let def = match definition_facts(&view.definition, self.definitions, self.options) {
                    Ok(def) => def,
                    Err(why) => {
                        self.opaque.push(format!("the definition of view {table} cannot be read: {why}"));
                        for c in &view.columns {
                            self.lineage.insert(dotted(&table, c), unknown_column(dotted(&table, c)));
                        }
                        continue;
                    }
                };
                let writes_view = self.written.contains(&table);
                self.merge(&def, &format!("view {table}"), &mut relations, &mut calls);
                if writes_view {
                    self.written.extend(def.tables.iter().cloned());
                }
                let proven =
                    def.output_columns.len() == view.columns.len() && def.output_columns.iter().all(|c| c.name != "*");
                for (i, name) in view.columns.iter().enumerate() {
                    let column = dotted(&table, name);
                    let out = match def.output_columns.get(i) {
                        Some(out) if proven => OutputColumn { name: column.clone(), ..out.clone() },
                        _ => unknown_column(column.clone()),
                    };
                    self.lineage.insert(column, out);
                }
            } else if let Some(function) = calls.pop_front() {
                if !called.insert(function.clone()) {
                    continue;
                }
                if self.view_columns.len() + self.function_lineage.len() >= MAX_DEFINITIONS {
                    self.opaque.push(format!("the statement reaches more than {MAX_DEFINITIONS} views and functions"));
                    return;
                }
                let mut result = OutputColumn::new(&function, Vec::new(), false, false);
                for overload in self.definitions.functions(&function) {
                    match self.body_facts(overload) {
                        Ok(bodies) => {
                            for body in &bodies {
                                self.merge(body, &format!("function {function}"), &mut relations, &mut calls);
                                self.body_settings(&function, body);
                                self.clause_columns.extend(body.clause_columns.iter().cloned());
                                // A function's result: what its last statement returns, and
                                // whatever any statement reads (a body may compute from it).
                                for out in &body.output_columns {
                                    result.sources.extend(out.sources.iter().cloned());
                                    result.unknown |= out.unknown;
                                }
                                result.sources.extend(body.columns.iter().cloned());
                            }
                        }
                        Err(why) => {
                            self.opaque.push(format!("the body of function {function} cannot be read: {why}"));
                            result.unknown = true;
                        }
                    }
                }
                result.sources.sort();
                result.sources.dedup();
                self.function_lineage.insert(function, result);
            } else {
                return;
            }
        }
    }

    /// The settings a SQL function's body changes: the statement changes
    /// them too, so the caller reads them back once it ran, and a change
    /// of `search_path` leaves the path the union of the old and the new
    /// one for what follows in the same string.
    fn body_settings(&mut self, function: &str, body: &StatementFacts) {
        self.changes_settings |= body.changes_settings;
        for effect in &body.session_effects {
            match effect {
                SessionEffect::SetSearchPath { path, local, .. } => {
                    self.path_effects.push(SessionEffect::SetSearchPath {
                        path: path.clone(),
                        local: *local,
                        uncertain: true,
                    });
                }
                SessionEffect::ResetSearchPath | SessionEffect::ResetSearchPathLocal => {
                    self.opaque.push(format!("the body of function {function} resets search_path"));
                }
                _ => {}
            }
        }
    }

    /// What the server runs on its own with a statement that touches
    /// `table`: the actions of its rules when the statement writes it, the
    /// expressions of its row-level security policies whenever it is read
    /// or written. Their relations and functions are judged with the
    /// statement's; the columns they read reach nobody.
    fn follow_rules_and_policies(
        &mut self,
        table: &str,
        relations: &mut VecDeque<String>,
        calls: &mut VecDeque<String>,
    ) {
        if self.written.contains(table) {
            for function in self.definitions.triggers(table) {
                self.followed = true;
                self.functions.insert(function.clone());
                let bare = function.rsplit('.').next().unwrap_or(function);
                let trusted =
                    self.options.trusted_functions.as_ref().is_some_and(|g| g.is_match(function) || g.is_match(bare));
                if !trusted && !function.starts_with("pg_catalog.") {
                    self.opaque.push(format!(
                        "a trigger on {table} runs {function}, whose body the engine cannot see (list it in \
                         settings.trusted_functions if the policy's author vouches for it)"
                    ));
                }
            }
            for rule in self.definitions.rules(table) {
                match rule_facts(rule, self.definitions, self.options) {
                    Ok(def) => {
                        self.followed = true;
                        self.merge(&def, &format!("a rule on {table}"), relations, calls);
                    }
                    Err(why) => self.opaque.push(format!("a rule on {table} cannot be read: {why}")),
                }
            }
        }
        for policy in self.definitions.row_policies(table) {
            let expressions: Vec<String> =
                [&policy.using, &policy.check].into_iter().flatten().map(|e| format!("({e})")).collect();
            if expressions.is_empty() {
                continue;
            }
            let query = format!("SELECT {}", expressions.join(", "));
            match definition_facts(&query, self.definitions, self.options) {
                Ok(mut def) => {
                    def.columns.clear();
                    self.followed = true;
                    self.merge(&def, &format!("a row security policy on {table}"), relations, calls);
                }
                Err(why) => self.opaque.push(format!("a row security policy on {table} cannot be read: {why}")),
            }
        }
    }

    /// Adds what a definition does to the statement's facts.
    fn merge(
        &mut self,
        def: &StatementFacts,
        what: &str,
        relations: &mut VecDeque<String>,
        calls: &mut VecDeque<String>,
    ) {
        if def.opaque {
            let why = def.notes.first().cloned().unwrap_or_default();
            self.opaque.push(format!("{what} runs code the engine cannot see into: {why}"));
        }
        for t in &def.tables {
            if self.tables.insert(t.clone()) {
                relations.push_back(t.clone());
            }
        }
        self.written.extend(def.written_tables.iter().cloned());
        self.functions.extend(def.functions.iter().cloned());
        self.columns.extend(def.columns.iter().cloned());
        calls.extend(def.sql_calls.iter().cloned());
        self.class = self.class.max(def.class);
        if def.class != Class::Read {
            self.commands.extend(def.commands.iter().cloned());
        }
        self.has_where = match (self.has_where, def.has_where) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), _) | (_, Some(true)) => Some(true),
            (None, None) => None,
        };
    }

    /// The facts of every statement of a function's body.
    fn body_facts(&self, function: &Function) -> Result<Vec<StatementFacts>, String> {
        let (text, path) = match &function.body {
            FunctionBody::Sql(text) => {
                (text.as_str(), function.search_path.clone().unwrap_or_else(|| self.search_path.to_vec()))
            }
            FunctionBody::Standard(text) => (text.as_str(), vec!["pg_catalog".to_string()]),
            FunctionBody::Other { language } => return Err(format!("it is written in {language}")),
        };
        let mut session = Session::default().with_startup_search_path(path);
        session.user = self.user.map(str::to_string);
        let statements = inner_analysis(text, &session, self.definitions, self.options).statements;
        if statements.iter().any(|s| s.class == Class::Unknown) {
            let why = statements.iter().find_map(|s| s.notes.first().cloned());
            return Err(why.unwrap_or_else(|| "the parser rejects it".to_string()));
        }
        if matches!(function.body, FunctionBody::Standard(_)) {
            // The whole CREATE FUNCTION: what its body runs, not the DDL.
            return Ok(statements
                .into_iter()
                .map(|mut s| {
                    let writes =
                        s.commands.iter().any(|c| matches!(c.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE"));
                    s.class = if writes { Class::Write } else { Class::Read };
                    s.commands.retain(|c| c != "CREATE FUNCTION" && c != "CREATE PROCEDURE");
                    s
                })
                .collect());
        }
        Ok(statements)
    }
}

/// `sql` analysed for the expansion: calls to the definitions' SQL
/// functions are recognised, and the expansion of what it names is the
/// caller's.
fn inner_analysis(sql: &str, session: &Session, definitions: &Arc<Definitions>, options: &AnalyzeOptions) -> Analysis {
    let mut session = session.clone();
    session.definitions = Some(Arc::clone(definitions));
    let options = AnalyzeOptions { inner: true, ..options.clone() };
    analyze(sql, &session, &options)
}

/// Whether a source is a call's marker, not a column.
fn is_marker(source: &str) -> bool {
    source.starts_with(FUNCTION_SOURCE) || source.starts_with(MAYBE_FUNCTION_SOURCE)
}

fn unknown_column(name: String) -> OutputColumn {
    OutputColumn { name, sources: Vec::new(), direct: false, unknown: true, row: None }
}

/// The facts of one statement the catalog wrote (names qualified, read
/// with `pg_catalog` alone on the path); why it cannot be read otherwise.
fn catalog_statement(
    definition: &str,
    definitions: &Arc<Definitions>,
    options: &AnalyzeOptions,
) -> Result<StatementFacts, String> {
    let session = Session::default().with_startup_search_path(vec!["pg_catalog".to_string()]);
    let mut analysis = inner_analysis(definition, &session, definitions, options);
    if analysis.statements.len() != 1 {
        return Err(format!("it holds {} statements", analysis.statements.len()));
    }
    let facts = analysis.statements.remove(0);
    if facts.class == Class::Unknown {
        return Err(facts.notes.first().cloned().unwrap_or_else(|| "the parser rejects it".to_string()));
    }
    Ok(facts)
}

/// The facts of a view's query.
fn definition_facts(
    definition: &str,
    definitions: &Arc<Definitions>,
    options: &AnalyzeOptions,
) -> Result<StatementFacts, String> {
    let facts = catalog_statement(definition, definitions, options)?;
    match facts.class {
        Class::Read => Ok(facts),
        other => Err(format!("it is a {other} statement, not a query")),
    }
}

/// What a rule's actions do (`CREATE RULE ... DO [ALSO | INSTEAD] ...` as
/// `pg_get_ruledef` writes it): a write when an action writes, else a
/// read; the columns they read reach nobody.
fn rule_facts(
    definition: &str,
    definitions: &Arc<Definitions>,
    options: &AnalyzeOptions,
) -> Result<StatementFacts, String> {
    let mut facts = catalog_statement(definition, definitions, options)?;
    if facts.command != "CREATE RULE" {
        return Err(format!("it is {}, not a rule", facts.command));
    }
    facts.commands.retain(|c| c != "CREATE RULE");
    facts.class = if !facts.written_tables.is_empty() || facts.commands.iter().any(|c| c == "NOTIFY") {
        Class::Write
    } else {
        Class::Read
    };
    facts.columns.clear();
    facts.clause_columns.clear();
    Ok(facts)
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
    functions: &'a BTreeMap<String, OutputColumn>,
}

impl Resolver<'_> {
    /// Every source of `sources`, through the views; the sources named
    /// stay (a mask may name a view column).
    /// What a call to one of `candidates` (`|`-separated) derives from;
    /// unproven when none was followed and `needs_one`.
    fn call(&self, candidates: &str, depth: usize, needs_one: bool) -> Resolved {
        let mut all = Resolved { sources: BTreeSet::new(), direct: false, unknown: depth > MAX_DEPTH };
        if all.unknown {
            return all;
        }
        let mut found = false;
        for f in candidates.split('|').filter_map(|c| self.functions.get(c)) {
            let inner = self.all(&f.sources, depth + 1);
            all.sources.extend(inner.sources);
            all.unknown |= f.unknown || inner.unknown;
            found = true;
        }
        all.unknown |= needs_one && !found;
        all
    }

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
        // A built-in name: the database's functions of that name that were
        // followed, if any.
        if let Some(candidates) = source.strip_prefix(MAYBE_FUNCTION_SOURCE) {
            return self.call(candidates, depth, false);
        }
        // A call's result: what the bodies of the functions its name may
        // resolve to read; a call to none of them is not proven.
        if let Some(candidates) = source.strip_prefix(FUNCTION_SOURCE) {
            return self.call(candidates, depth, true);
        }
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
