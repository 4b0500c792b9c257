//! Statement analysis: SQL text → [`StatementFacts`], on PostgreSQL's own
//! grammar.
//!
//! The text is parsed once by libpg_query (the server's parser, through the
//! `pg_query` crate) with the session's `standard_conforming_strings`. Each
//! statement's tree is then walked completely: the generated walk in
//! [`walk`] visits every child of every node type, so a relation or a
//! function call hidden in a node the hand-written rules below do not
//! mention is still seen. The hand-written part gives meaning to the nodes
//! that carry it (relations, function calls, operators, CTE scopes, DML
//! targets, WHERE clauses), and an exhaustive `match` over the statement
//! kinds (no catch-all arm) decides the class and the command tag.
//!
//! ```
//! use policy_core::{Class, Engine, Policy};
//! let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
//! let session = engine.new_session();
//! let a = engine.analyze(&session, "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d");
//! let facts = &a.statements[0];
//! assert_eq!(facts.class, Class::Write);
//! assert_eq!(facts.written_tables, ["public.orders"]);
//! assert_eq!(facts.has_where, Some(false));
//! # Ok::<(), policy_core::PolicyError>(())
//! ```

mod catalog;
mod expand;
mod gateway;
mod lineage;
pub(crate) mod literal;
mod names;
mod predicate;
mod tree;
pub(crate) mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use pg_query::protobuf::{self as pb, a_const::Val};
use pg_query::{NodeEnum, NodeRef, ParserOptions};
use serde::{Deserialize, Serialize};

use crate::definitions::Definitions;
use crate::fingerprint;
use crate::mask::ColumnInfo;
use crate::session::{apply_to_path, catalog_first, Prepared, Session, SessionEffect, TransactionPaths};

pub use gateway::{GatewayCommand, MAX_REASON_BYTES};
pub use lineage::{OutputColumn, RowLayout, WholeRow};
pub(crate) use names::{dotted, qualified, split_identifiers};

/// What kind of thing a statement does. Ordered from least to most
/// privileged where that matters: `read < write < ddl < dcl < admin`;
/// a statement takes the most privileged class of anything it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// SELECT, VALUES, TABLE, SHOW, EXPLAIN, COPY ... TO STDOUT, cursors over reads.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN, data-modifying CTEs, sequences.
    Write,
    /// Schema changes, TRUNCATE, COMMENT, SELECT INTO, CREATE TABLE AS, REFRESH.
    Ddl,
    /// Roles and privileges.
    Dcl,
    /// The server itself: databases, maintenance, files, signals, `ALTER SYSTEM`.
    Admin,
    /// DO and CALL: code the engine cannot see.
    Procedural,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, SET TRANSACTION.
    Transaction,
    /// Ordinary settings, DISCARD, PREPARE/DEALLOCATE, LISTEN.
    Session,
    /// The grammar rejected the text.
    #[default]
    Unknown,
}

impl Class {
    /// The class names as the policy writes them.
    pub const ALL: [Class; 9] = [
        Class::Read,
        Class::Write,
        Class::Ddl,
        Class::Dcl,
        Class::Admin,
        Class::Procedural,
        Class::Transaction,
        Class::Session,
        Class::Unknown,
    ];

    /// The name used in policies and decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Admin => "admin",
            Class::Procedural => "procedural",
            Class::Transaction => "transaction",
            Class::Session => "session",
            Class::Unknown => "unknown",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Class::Transaction | Class::Session => 0,
            Class::Read => 1,
            Class::Write => 2,
            Class::Procedural => 3,
            Class::Ddl => 4,
            Class::Dcl => 5,
            Class::Admin => 6,
            Class::Unknown => 7,
        }
    }

    /// The more privileged of the two.
    fn max(self, other: Class) -> Class {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A part of a statement that reads a column without returning it, which
/// a mask's `inference` may forbid for the column it covers
/// (docs/policy.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clause {
    /// `WHERE`, `HAVING`, an aggregate's `FILTER (WHERE ...)`, the `WHERE`
    /// of `UPDATE` and `DELETE`, and the arguments of a function in `FROM`
    /// (they decide how many rows it returns).
    Filter,
    /// `ORDER BY`, in a query, an aggregate (`string_agg(x, ',' ORDER BY
    /// c)`) or a window (`OVER (ORDER BY c)`).
    Order,
    /// `GROUP BY`, `DISTINCT` / `DISTINCT ON`, a window's `PARTITION BY`.
    Group,
    /// A join's `ON` condition, its `USING` columns, a `NATURAL` join, and
    /// `MERGE ... ON`.
    Join,
}

impl Clause {
    /// The clause as a policy names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Clause::Filter => "filter",
            Clause::Order => "order",
            Clause::Group => "group",
            Clause::Join => "join",
        }
    }

    /// What it is, for a reason.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Clause::Filter => "filtering on it (WHERE, HAVING, FILTER)",
            Clause::Order => "ordering by it (ORDER BY, in a query, an aggregate or a window)",
            Clause::Group => "grouping by it (GROUP BY, DISTINCT, PARTITION BY)",
            Clause::Join => "joining on it (JOIN ... ON/USING, NATURAL JOIN, MERGE ... ON)",
        }
    }
}

/// A column a statement reads in a [`Clause`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClauseColumn {
    /// Where it is read.
    pub clause: Clause,
    /// The column, `schema.table.column` where resolvable (as
    /// [`StatementFacts::columns`] writes it); `*` when the clause reads
    /// columns the engine cannot name (`NATURAL JOIN`, an unresolved
    /// function's result).
    pub column: String,
}

/// Everything the rules look at about one statement (docs/policy.md §3).
///
/// The default is an `unknown` statement with no facts: lineage unproven.
/// Facts come from the analysis ([`crate::Engine::analyze`],
/// [`crate::Engine::decide`]); the struct is `#[non_exhaustive]`, so new
/// facts can be added without breaking callers (build one elsewhere from
/// [`StatementFacts::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct StatementFacts {
    /// Position of the statement in the string, from 0.
    pub index: usize,
    /// The statement's class.
    pub class: Class,
    /// PostgreSQL's command tag (`SELECT`, `DROP TABLE`, ...); empty for
    /// `unknown`. As in PostgreSQL, an `EXECUTE` reports the tag of the
    /// statement it runs.
    pub command: String,
    /// Every command the statement runs or prepares, sorted: the command
    /// itself, the statement a `PREPARE`, `EXECUTE` or `EXPLAIN ANALYZE`
    /// wraps (instead of the wrapper), and every data-modifying statement
    /// nested in it (`WITH d AS (DELETE ...) SELECT` runs `DELETE` and
    /// `SELECT`). Rules with `commands` match on these.
    pub commands: Vec<String>,
    /// Every relation read or written, schema-qualified, sorted.
    pub tables: Vec<String>,
    /// The relations written, sorted.
    pub written_tables: Vec<String>,
    /// Referenced columns, `schema.table.column` where resolvable, sorted.
    pub columns: Vec<String>,
    /// The columns read in filters, orderings, groupings and join
    /// conditions, sorted (see [`Clause`]); for views and SQL functions,
    /// the columns they derive from too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clause_columns: Vec<ClauseColumn>,
    /// Every function called, lower-cased, qualified when written so, sorted.
    pub functions: Vec<String>,
    /// The SQL functions of the session's [`Definitions`] the statement
    /// calls (every candidate of each name), qualified: the expansion
    /// judges their bodies. Not serialised.
    #[serde(skip)]
    pub(crate) sql_calls: Vec<String>,
    /// For statements holding an UPDATE or DELETE (anywhere): whether every
    /// one of them has a WHERE that bounds its rows. `None` otherwise.
    pub has_where: Option<bool>,
    /// Whether the outer result is bounded (constant LIMIT/FETCH FIRST, SHOW,
    /// EXPLAIN, counted FETCH).
    pub has_limit: bool,
    /// The options of a `COPY` (`format=csv`, `delimiter=|`, `header`...),
    /// names lower-cased, in order; empty for other statements. The
    /// gateway masks `COPY ... TO STDOUT` data only in the plain text
    /// layout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_options: Vec<String>,
    /// The statement runs SQL the engine cannot see.
    pub opaque: bool,
    /// 16 hex digits identifying the statement's normalised form.
    pub fingerprint: String,
    /// Lineage of each result column (reads only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_columns: Vec<OutputColumn>,
    /// The columns of every view the statement reads, each named
    /// `schema.view.column`, with their lineage followed through the views
    /// to table columns (see [`crate::Definitions`]); empty when no view was
    /// expanded. A result column the server reports as a view's column is
    /// masked by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub view_columns: Vec<OutputColumn>,
    /// Changes to the session state the engine reads, in order, for the
    /// caller to [apply](Session::apply) once the statement ran. The JSON
    /// lists the changes to the path and to prepared statements only (see
    /// [`SessionEffect`]).
    #[serde(
        default,
        skip_serializing_if = "crate::session::listed::none",
        serialize_with = "crate::session::listed::serialize"
    )]
    pub session_effects: Vec<SessionEffect>,
    /// Why the statement is opaque or unknown, and other findings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Whether running the statement changes, or may change, the session's
    /// settings, so that a caller tracking them (the gateway reads
    /// `search_path` back) must look again afterwards. From the parse tree:
    ///
    /// - `SET`, `SET LOCAL`, `SET SESSION`, `RESET`, `RESET ALL`, `SET ...
    ///   TO DEFAULT` of any setting, including `SET ROLE`, `SET SESSION
    ///   AUTHORIZATION`, `SET TIME ZONE`, `SET NAMES`, and `SET TRANSACTION`
    ///   / `SET SESSION CHARACTERISTICS AS TRANSACTION` (they set the
    ///   `transaction_*` settings);
    /// - `DISCARD` of any kind (`DISCARD ALL` resets every setting);
    /// - a statement calling `set_config(...)` anywhere in its tree (even
    ///   where the call may not run, as in a `CASE` branch or a `PREPARE`
    ///   body: asking again costs less than missing a change);
    /// - an `opaque` statement (`DO`, `CALL`, a function or operator the
    ///   engine cannot see into: hidden SQL can set anything) and an
    ///   `unknown` one.
    ///
    /// Not: `SET CONSTRAINTS` (not a setting), `ALTER ROLE/DATABASE/SYSTEM
    /// ... SET` and a function's `SET` clause (they change later sessions or
    /// the function's own calls, not this session now), `SHOW`. Not
    /// serialised: derived from the tree, for the caller.
    ///
    /// ```
    /// use policy_core::{Engine, Policy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let facts = |sql| engine.analyze(&engine.new_session(), sql).statements.remove(0);
    /// assert!(facts("SET statement_timeout = 0").changes_settings);
    /// assert!(facts("SELECT set_config('work_mem', '1MB', false)").changes_settings);
    /// assert!(!facts("SHOW work_mem").changes_settings);
    /// assert!(!facts("ALTER ROLE app SET work_mem = '1MB'").changes_settings);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    #[serde(skip)]
    pub changes_settings: bool,
    /// Whether the statement ends the session's transaction: `COMMIT` /
    /// `END` and `ROLLBACK` / `ABORT` (also `AND CHAIN`, which then begins
    /// the next one), and `PREPARE TRANSACTION`, which hands the
    /// transaction over. `COMMIT PREPARED` and `ROLLBACK PREPARED` count
    /// too (they finish a prepared transaction, and cannot run inside a
    /// transaction block). `ROLLBACK TO SAVEPOINT` does not end the
    /// transaction: see [`StatementFacts::reverts_settings`]. Code the
    /// engine cannot see (`CALL`, `DO`) may commit too; such statements are
    /// `opaque` and [`StatementFacts::changes_settings`]. Not serialised.
    ///
    /// ```
    /// use policy_core::{Engine, Policy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let facts = |sql| engine.analyze(&engine.new_session(), sql).statements.remove(0);
    /// assert!(facts("END").ends_transaction);
    /// assert!(facts("ROLLBACK AND CHAIN").ends_transaction);
    /// assert!(facts("ROLLBACK AND CHAIN").begins_transaction);
    /// assert!(!facts("ROLLBACK TO SAVEPOINT s").ends_transaction);
    /// assert!(facts("ROLLBACK TO SAVEPOINT s").reverts_settings);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    #[serde(skip)]
    pub ends_transaction: bool,
    /// Whether the statement begins a transaction block: `BEGIN`, `START
    /// TRANSACTION`, and `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN`. Not
    /// serialised.
    #[serde(skip)]
    pub begins_transaction: bool,
    /// Whether settings changed earlier in the transaction may go back to
    /// former values when the statement runs: it ends the transaction
    /// (`SET LOCAL` values end with it; a rollback undoes every `SET`), or
    /// it is `ROLLBACK TO SAVEPOINT` (which undoes the `SET`s made since
    /// the savepoint). A caller that saw a setting change inside the
    /// transaction reads the settings back after such a statement. Not
    /// serialised.
    #[serde(skip)]
    pub reverts_settings: bool,
    /// Whether the statement may create, replace or rename a view, or
    /// change what a name resolves to (`CREATE VIEW`, `CREATE RULE`,
    /// `ALTER ... RENAME`, `ALTER ... SET SCHEMA`, `CREATE SCHEMA`, `CREATE
    /// MATERIALIZED VIEW`, `CREATE FUNCTION`, `DO`, `CALL`, an opaque
    /// statement, an `unknown` one): a caller that
    /// gives the engine the database's [`crate::Definitions`] reads them again
    /// once it ran, and judges nothing that names a relation before that.
    /// Not serialised.
    #[serde(skip)]
    pub changes_definitions: bool,
    /// What the statement asks of the gateway, when it is one of the
    /// gateway's own: a `SET` or `RESET` of a `portcullis.*` setting (see
    /// [`GatewayCommand`]). The gateway keeps it and sends the server
    /// [`GatewayCommand::substitute`] instead; the policy's rules do not
    /// apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayCommand>,
}

/// The facts of every statement in one string.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// One entry per statement; a single `unknown` entry when the grammar
    /// rejected the text; none for an empty string.
    pub statements: Vec<StatementFacts>,
    /// Where each statement is in the text (facts hold no position: texts
    /// of one shape share them); [`crate::StatementDecision::span`] in a
    /// decision.
    pub(crate) spans: Vec<Range<usize>>,
    /// Whether an `EXECUTE` looked up the session's prepared statements:
    /// the facts then depend on them, not only on the text.
    pub reads_prepared: bool,
    /// Whether every statement is a plain SELECT, INSERT, UPDATE or DELETE
    /// (or a BEGIN, COMMIT, ROLLBACK or savepoint around them): the
    /// statements whose constants all reach the tree as `A_Const` nodes,
    /// where reading one is on the record (see [`literal`]).
    pub(crate) only_dml: bool,
}

/// Settings the analysis reads from the policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct AnalyzeOptions {
    /// Function names (globs, matched on the written name) the policy
    /// declares free of hidden SQL.
    pub trusted_functions: Option<globset::GlobSet>,
    /// `settings.views = "expand"`: statements naming views are judged
    /// with what the views read, when the session knows its views.
    pub expand_views: bool,
    /// The analysis of a definition for the expansion: calls to SQL
    /// functions are recognised, the expansion itself is the caller's.
    pub inner: bool,
    /// A mask has `inference`: `ORDER BY 2` and `GROUP BY 1` are read for
    /// the target they name (reading the constant, which keeps the
    /// decision from being shared by shape).
    pub inference: bool,
}

/// Analyses `sql` as the session would run it.
pub(crate) fn analyze(sql: &str, session: &Session, options: &AnalyzeOptions) -> Analysis {
    let parser_options = parser_options(session.standard_conforming_strings);
    let parsed = match pg_query::parse(sql, parser_options) {
        Ok(parsed) => parsed,
        Err(err) => {
            let mut facts = unknown(sql, &parse_failure(&err));
            if gateway::named_in_unparsed(sql) {
                let why = "a statement that may name a `portcullis.*` setting must be one PostgreSQL's grammar \
                           accepts (`SET portcullis.reason = '...'`)";
                facts.gateway = Some(GatewayCommand::Invalid { why: why.to_string() });
            }
            return Analysis {
                statements: vec![facts],
                spans: std::iter::once(0..sql.len()).collect(),
                reads_prepared: false,
                only_dml: false,
            };
        }
    };
    let mut state = State {
        search_path: session.search_path.clone(),
        transaction: session.transaction.clone(),
        reset_search_path: &session.reset_search_path,
        user: session.user.clone(),
        session_prepared: &session.prepared,
        prepared: BTreeMap::new(),
        scs: session.standard_conforming_strings,
        definitions: session.definitions.as_deref().filter(|_| options.expand_views),
    };
    let mut statements: Vec<StatementFacts> = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut spans = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut reads_prepared = false;
    let mut only_dml = true;
    // PostgreSQL runs the statements of a multi-statement string outside a
    // transaction block in one implicit block (exec_simple_query), up to a
    // COMMIT or ROLLBACK in the string or its end.
    let multi = parsed.protobuf.stmts.len() > 1;
    let mut block: Option<ImplicitBlock> = None;
    let views = session.definitions.as_ref().filter(|_| options.expand_views);
    // A statement before may have changed the views the session knows.
    let mut definitions_changed = false;
    for (index, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let Some(stmt) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else { continue };
        if multi && state.transaction.is_none() {
            state.apply(&SessionEffect::Begin { implicit: true });
            block = Some(ImplicitBlock { first: statements.len(), moved: false, local: false });
        }
        only_dml &= match stmt {
            NodeEnum::SelectStmt(_) | NodeEnum::InsertStmt(_) | NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_) => {
                true
            }
            // BEGIN ... COMMIT around them: no constant (savepoint names are
            // identifiers); PREPARE TRANSACTION 'gid' and its kin hold one.
            NodeEnum::TransactionStmt(t) => {
                use pb::TransactionStmtKind as K;
                !matches!(
                    K::try_from(t.kind),
                    Ok(K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared) | Err(_)
                )
            }
            _ => false,
        };
        let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len).min(sql.len()),
        };
        let text = sql.get(start..end).unwrap_or(sql);
        reads_prepared |= contains_execute(stmt.to_ref());
        // Refused before any recursive walk: their stack use grows with the depth.
        let mut facts = if tree::too_deep(stmt.to_ref()) {
            unknown(text, tree::TOO_DEEP)
        } else {
            analyze_statement(stmt.to_ref(), text, &mut state, options, index == 0)
        };
        if let Some(definitions) = views.filter(|_| !options.inner) {
            let path = state.search_path.clone();
            let path_effects =
                expand::expand(&mut facts, definitions, options, definitions_changed, &path, state.user.as_deref());
            // A called function's `search_path` change may happen: what
            // follows in the string is judged with both paths.
            for effect in path_effects {
                state.apply(&effect);
                facts.session_effects.push(effect);
            }
        }
        definitions_changed |= facts.changes_definitions;
        facts.index = index;
        spans.push(start..end);
        if let Some(b) = block.as_mut() {
            for effect in &facts.session_effects {
                b.moved |= effect.moves_path();
                b.local |= matches!(
                    effect,
                    SessionEffect::SetSearchPath { local: true, .. } | SessionEffect::ResetSearchPathLocal
                );
            }
        }
        // The block ends here (COMMIT, ROLLBACK), or a BEGIN made it a
        // regular one, which keeps its start.
        let ended = !state.transaction.as_ref().is_some_and(|t| t.implicit);
        let committed = facts.session_effects.iter().any(|e| matches!(e, SessionEffect::Commit { chain: false, .. }));
        statements.push(facts);
        if ended {
            if let Some(b) = block.take() {
                b.mark(&mut statements, committed);
            }
        }
    }
    // The string's end commits a block still implicit.
    if let Some(b) = block.take() {
        if b.mark(&mut statements, true) {
            if let Some(last) = statements.last_mut() {
                last.session_effects.push(SessionEffect::EndImplicitTransaction);
            }
        }
    }
    Analysis { statements, spans, reads_prepared, only_dml }
}

/// The implicit transaction block of a multi-statement string, while the
/// analysis is in it.
struct ImplicitBlock {
    /// The index of its first statement.
    first: usize,
    /// A statement in it changed the path.
    moved: bool,
    /// ... with `SET LOCAL` (or `set_config(..., true)`).
    local: bool,
}

impl ImplicitBlock {
    /// Puts the block's start among the effects of its first statement
    /// where a caller applying the effects needs it to reach the path the
    /// analysis did: when a `SET LOCAL` in the block ends with it, and when
    /// the block changed the path and does not end in a commit (a
    /// `ROLLBACK` undoes its `SET`s; a `BEGIN` keeps its start). Otherwise
    /// the effects leave the same path and transaction without it. Returns
    /// whether it did.
    fn mark(self, statements: &mut [StatementFacts], committed: bool) -> bool {
        let needed = if committed { self.local } else { self.moved };
        match statements.get_mut(self.first) {
            Some(first) if needed => {
                first.session_effects.insert(0, SessionEffect::Begin { implicit: true });
                true
            }
            _ => false,
        }
    }
}

fn contains_execute(stmt: NodeRef<'_>) -> bool {
    match stmt {
        NodeRef::ExecuteStmt(_) => true,
        NodeRef::ExplainStmt(e) => node(&e.query).is_some_and(contains_execute),
        NodeRef::CreateTableAsStmt(c) => node(&c.query).is_some_and(contains_execute),
        _ => false,
    }
}

/// Why the parser gave no tree, in words for the client.
fn parse_failure(err: &pg_query::Error) -> String {
    match err {
        pg_query::Error::Parse(message) => format!("the grammar rejects this text: {message}"),
        pg_query::Error::Conversion(_) => {
            "the text holds a NUL byte, which PostgreSQL would read as its end".to_string()
        }
        pg_query::Error::Decode(_) => {
            "the statement nests deeper than the engine reads (about 50 levels of expressions or subqueries)"
                .to_string()
        }
        other => format!("the parser failed: {other}"),
    }
}

fn parser_options(standard_conforming_strings: bool) -> ParserOptions {
    if standard_conforming_strings {
        ParserOptions::DEFAULT
    } else {
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    }
}

pub(crate) fn unknown(sql: &str, error: &str) -> StatementFacts {
    StatementFacts {
        index: 0,
        class: Class::Unknown,
        command: String::new(),
        commands: Vec::new(),
        tables: Vec::new(),
        written_tables: Vec::new(),
        columns: Vec::new(),
        clause_columns: Vec::new(),
        functions: Vec::new(),
        sql_calls: Vec::new(),
        has_where: None,
        has_limit: false,
        copy_options: Vec::new(),
        opaque: false,
        fingerprint: fingerprint::fingerprint_text(sql),
        output_columns: Vec::new(),
        view_columns: Vec::new(),
        session_effects: Vec::new(),
        notes: vec![error.to_string()],
        // Text the engine cannot read may do anything.
        changes_settings: true,
        ends_transaction: false,
        begins_transaction: false,
        reverts_settings: false,
        changes_definitions: true,
        gateway: None,
    }
}

/// Session state as it evolves through the statements of one string.
struct State<'s> {
    search_path: Vec<String>,
    /// The transaction block, if any, with the paths its end returns to.
    transaction: Option<TransactionPaths>,
    /// What a reset returns to: the session's startup value, as the server
    /// resets to it (not the policy's).
    reset_search_path: &'s [String],
    user: Option<String>,
    session_prepared: &'s BTreeMap<String, Prepared>,
    /// PREPARE/DEALLOCATE earlier in this string (`None` = deallocated).
    prepared: BTreeMap<String, Option<Prepared>>,
    scs: bool,
    /// The database's definitions, when the analysis expands them: calls
    /// to SQL functions they hold are judged by the functions' bodies.
    definitions: Option<&'s Definitions>,
}

impl State<'_> {
    fn lookup(&self, name: &str) -> Option<Prepared> {
        match self.prepared.get(name) {
            Some(local) => local.clone(),
            None => self.session_prepared.get(name).cloned(),
        }
    }

    fn apply(&mut self, effect: &SessionEffect) {
        match effect {
            SessionEffect::Prepare { name, prepared } => {
                self.prepared.insert(name.clone(), Some(prepared.clone()));
            }
            SessionEffect::Deallocate { name: Some(name) } => {
                self.prepared.insert(name.clone(), None);
            }
            SessionEffect::Deallocate { name: None } => {
                let names: Vec<String> = self.session_prepared.keys().chain(self.prepared.keys()).cloned().collect();
                for name in names {
                    self.prepared.insert(name, None);
                }
            }
            _ => apply_to_path(&mut self.search_path, &mut self.transaction, self.reset_search_path, effect),
        }
    }
}

/// Whether a target is a star (`*`, `t.*`).
fn is_star(rt: &pb::ResTarget) -> bool {
    matches!(node(&rt.val), Some(NodeRef::ColumnRef(c)) if nodes(&c.fields).any(|f| matches!(f, NodeRef::AStar(_))))
}

/// The facts of one statement, whose effects move `state`; `first`: it is
/// the string's first statement.
fn analyze_statement(
    stmt: NodeRef<'_>,
    text: &str,
    state: &mut State<'_>,
    options: &AnalyzeOptions,
    first: bool,
) -> StatementFacts {
    let (class, mut command) = classify(stmt);
    let mut w = Walker::new(state, options);
    w.class = class;
    w.certain_calls = certain_calls(stmt);
    w.visit(stmt);
    let mut commands = std::mem::take(&mut w.runs);
    match (stmt, w.executed.take()) {
        (NodeRef::ExecuteStmt(_), Some(inner)) => {
            command.clone_from(&inner);
            commands.insert(inner);
        }
        (NodeRef::PrepareStmt(p), _) => {
            if let Some(inner) = node(&p.query) {
                commands.insert(classify(inner).1);
            }
        }
        (NodeRef::ExplainStmt(e), _) if explain_analyzes(e) => {
            if let Some(inner) = node(&e.query) {
                commands.insert(classify(inner).1);
            }
        }
        _ => {
            commands.insert(command.clone());
        }
    }
    let has_limit = has_limit(stmt);
    let copy_options = copy_options(stmt);
    let bounds = transaction_bounds(stmt);
    let output_columns = lineage::outputs(stmt, &w.lineage_env());
    let Walker {
        class,
        tables,
        written,
        columns,
        clause_columns,
        functions,
        sql_calls,
        opaque,
        notes,
        modifies,
        unbounded,
        mut effects,
        set_config,
        ..
    } = w;
    let gateway = gateway::command(stmt);
    // A statement of the gateway's sets nothing the server reads.
    let changes_settings = gateway.is_none()
        && (set_config
            || opaque
            || class == Class::Unknown
            || matches!(stmt, NodeRef::VariableSetStmt(_) | NodeRef::DiscardStmt(_)));
    effects.extend(transaction_effect(stmt, first));
    for effect in &mut effects {
        if let SessionEffect::Prepare { prepared, .. } = effect {
            prepared.sql = Arc::from(text);
        }
        state.apply(effect);
    }
    StatementFacts {
        index: 0,
        class,
        command,
        commands: commands.into_iter().collect(),
        tables: tables.into_iter().collect(),
        written_tables: written.into_iter().collect(),
        columns: columns.into_iter().collect(),
        clause_columns: clause_columns.into_iter().map(|(clause, column)| ClauseColumn { clause, column }).collect(),
        functions: functions.into_iter().collect(),
        sql_calls: sql_calls.into_iter().collect(),
        has_where: modifies.then_some(!unbounded),
        has_limit,
        copy_options,
        opaque,
        fingerprint: fingerprint::fingerprint(stmt),
        output_columns,
        view_columns: Vec::new(),
        session_effects: effects,
        notes,
        changes_settings,
        ends_transaction: bounds.ends,
        begins_transaction: bounds.begins,
        reverts_settings: bounds.ends || bounds.rolls_back_to_savepoint,
        changes_definitions: opaque || expand::may_change_definitions(stmt),
        gateway,
    }
}

/// The function calls a statement certainly runs, exactly once, when it
/// runs: the direct targets of a `SELECT` that has nothing but its target
/// list (`SELECT set_config('search_path', 'app', false)`). A call anywhere
/// else may run once, never (a `CASE` branch, a `WHERE` over no rows, a
/// plain `EXPLAIN`, a `PREPARE` body), many times, or later (a view, a
/// cursor).
fn certain_calls(stmt: NodeRef<'_>) -> Vec<*const pb::FuncCall> {
    let NodeRef::SelectStmt(s) = stmt else { return Vec::new() };
    let pb::SelectStmt {
        distinct_clause,
        into_clause,
        target_list,
        from_clause,
        where_clause,
        group_clause,
        group_distinct: _,
        having_clause,
        window_clause,
        values_lists,
        sort_clause,
        limit_offset,
        limit_count,
        limit_option: _,
        locking_clause,
        with_clause,
        op,
        all: _,
        larg,
        rarg,
    } = s;
    let simple = distinct_clause.is_empty()
        && into_clause.is_none()
        && from_clause.is_empty()
        && where_clause.is_none()
        && group_clause.is_empty()
        && having_clause.is_none()
        && window_clause.is_empty()
        && values_lists.is_empty()
        && sort_clause.is_empty()
        && limit_offset.is_none()
        && limit_count.is_none()
        && locking_clause.is_empty()
        && with_clause.is_none()
        && *op == pb::SetOperation::SetopNone as i32
        && larg.is_none()
        && rarg.is_none();
    if !simple {
        return Vec::new();
    }
    nodes(target_list)
        .filter_map(|t| match t {
            NodeRef::ResTarget(rt) => match node(&rt.val) {
                Some(NodeRef::FuncCall(fc)) if fc.over.is_none() && fc.agg_filter.is_none() => {
                    Some(std::ptr::from_ref(fc))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Where a statement stands in the transaction's life.
#[derive(Debug, Clone, Copy, Default)]
struct TransactionBounds {
    begins: bool,
    ends: bool,
    rolls_back_to_savepoint: bool,
}

/// From the statement's kind: transaction control statements cannot be
/// nested in others (nor prepared), so the top level is all there is.
fn transaction_bounds(stmt: NodeRef<'_>) -> TransactionBounds {
    use pb::TransactionStmtKind as T;
    let NodeRef::TransactionStmt(t) = stmt else { return TransactionBounds::default() };
    let kind = T::try_from(t.kind).unwrap_or(T::Undefined);
    match kind {
        T::TransStmtBegin | T::TransStmtStart => TransactionBounds { begins: true, ..TransactionBounds::default() },
        T::TransStmtCommit | T::TransStmtRollback => {
            TransactionBounds { begins: t.chain, ends: true, ..TransactionBounds::default() }
        }
        T::TransStmtPrepare | T::TransStmtCommitPrepared | T::TransStmtRollbackPrepared => {
            TransactionBounds { ends: true, ..TransactionBounds::default() }
        }
        T::TransStmtRollbackTo => TransactionBounds { rolls_back_to_savepoint: true, ..TransactionBounds::default() },
        T::TransStmtSavepoint | T::TransStmtRelease | T::Undefined => TransactionBounds::default(),
    }
}

/// What a transaction control statement does to the transaction block
/// (`first`: it is the string's first statement, so the transaction may
/// have failed before it). `COMMIT PREPARED` and `ROLLBACK PREPARED`
/// finish another transaction and cannot run inside a block: nothing.
fn transaction_effect(stmt: NodeRef<'_>, first: bool) -> Option<SessionEffect> {
    use pb::TransactionStmtKind as T;
    let NodeRef::TransactionStmt(t) = stmt else { return None };
    let name = || t.savepoint_name.clone();
    match T::try_from(t.kind).unwrap_or(T::Undefined) {
        T::TransStmtBegin | T::TransStmtStart => Some(SessionEffect::Begin { implicit: false }),
        T::TransStmtCommit => Some(SessionEffect::Commit { chain: t.chain, may_have_failed: first }),
        // PREPARE TRANSACTION ends the session's transaction as COMMIT does.
        T::TransStmtPrepare => Some(SessionEffect::Commit { chain: false, may_have_failed: first }),
        T::TransStmtRollback => Some(SessionEffect::Rollback { chain: t.chain }),
        T::TransStmtSavepoint => Some(SessionEffect::Savepoint { name: name() }),
        T::TransStmtRelease => Some(SessionEffect::Release { name: name() }),
        T::TransStmtRollbackTo => Some(SessionEffect::RollbackTo { name: name() }),
        T::TransStmtCommitPrepared | T::TransStmtRollbackPrepared | T::Undefined => None,
    }
}

// ------------------------------------------------------------------ helpers

/// The options of a `COPY`, as `name` or `name=value` (names lower-cased).
fn copy_options(stmt: NodeRef<'_>) -> Vec<String> {
    let NodeRef::CopyStmt(c) = stmt else { return Vec::new() };
    nodes(&c.options)
        .filter_map(|n| match n {
            NodeRef::DefElem(d) => Some(match node(&d.arg) {
                None => d.defname.to_ascii_lowercase(),
                Some(NodeRef::String(v)) => format!("{}={}", d.defname.to_ascii_lowercase(), v.sval),
                Some(NodeRef::Integer(v)) => format!("{}={}", d.defname.to_ascii_lowercase(), v.ival),
                Some(NodeRef::Boolean(v)) => format!("{}={}", d.defname.to_ascii_lowercase(), v.boolval),
                Some(_) => format!("{}=(...)", d.defname.to_ascii_lowercase()),
            }),
            _ => None,
        })
        .collect()
}

fn node(n: &Option<Box<pb::Node>>) -> Option<NodeRef<'_>> {
    n.as_ref().and_then(|n| n.node.as_ref()).map(NodeEnum::to_ref)
}

fn nodes(v: &[pb::Node]) -> impl Iterator<Item = NodeRef<'_>> {
    v.iter().filter_map(|n| n.node.as_ref()).map(NodeEnum::to_ref)
}

fn string_parts(v: &[pb::Node]) -> Vec<&str> {
    v.iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The text of a constant string argument, looking through casts.
fn const_text(n: NodeRef<'_>) -> Option<&str> {
    match n {
        NodeRef::AConst(c) => match literal::value(c) {
            Some(Val::Sval(s)) => Some(s.sval.as_str()),
            _ => None,
        },
        NodeRef::TypeCast(tc) => node(&tc.arg).and_then(const_text),
        _ => None,
    }
}

/// The value of a constant boolean argument, as PostgreSQL reads one
/// (`true`, `'on'`, `'t'`, `1::boolean`, looking through casts); `None`
/// when it is not a constant or NULL.
fn const_bool(n: NodeRef<'_>) -> Option<bool> {
    match n {
        NodeRef::AConst(c) => match literal::value(c)? {
            Val::Boolval(b) => Some(b.boolval),
            Val::Ival(i) => Some(i.ival != 0),
            Val::Sval(s) => parse_bool(&s.sval),
            _ => None,
        },
        NodeRef::TypeCast(tc) => node(&tc.arg).and_then(const_bool),
        _ => None,
    }
}

/// PostgreSQL's `parse_bool`: `true`, `false`, `yes`, `no`, `on`, `off`,
/// `1`, `0`, any unambiguous prefix of them, in any case, blanks around.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace()).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

fn def_elem_is_true(d: &pb::DefElem) -> bool {
    match node(&d.arg) {
        None => true,
        Some(NodeRef::AConst(c)) => match literal::value(c) {
            Some(Val::Boolval(b)) => b.boolval,
            Some(Val::Ival(i)) => i.ival != 0,
            Some(Val::Sval(s)) => !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"),
            _ => true,
        },
        Some(NodeRef::String(s)) => !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"),
        Some(NodeRef::Boolean(b)) => b.boolval,
        Some(NodeRef::Integer(i)) => i.ival != 0,
        Some(_) => true,
    }
}

fn explain_analyzes(e: &pb::ExplainStmt) -> bool {
    nodes(&e.options).any(|o| match o {
        NodeRef::DefElem(d) => d.defname.eq_ignore_ascii_case("analyze") && def_elem_is_true(d),
        _ => false,
    })
}

// ------------------------------------------------------------------ walker

/// Accumulates the facts of one statement while walking its tree.
struct Walker<'st, 's> {
    state: &'st mut State<'s>,
    options: &'st AnalyzeOptions,
    class: Class,
    tables: BTreeSet<String>,
    written: BTreeSet<String>,
    columns: BTreeSet<String>,
    functions: BTreeSet<String>,
    /// Calls to functions the definitions hold as SQL: every candidate
    /// the name may resolve to, qualified.
    sql_calls: BTreeSet<String>,
    /// The clause being walked, if the columns read there count for
    /// inference control.
    clause: Option<Clause>,
    /// The columns read in each clause.
    clause_columns: BTreeSet<(Clause, String)>,
    /// The clause the next SELECT's targets are compared in: a branch of
    /// `INTERSECT` or `EXCEPT` (join) or of `UNION` (group: duplicates go).
    branch_clause: Option<Clause>,
    opaque: bool,
    notes: Vec<String>,
    /// An UPDATE/DELETE/MERGE was seen.
    modifies: bool,
    /// One of them has no bounding WHERE.
    unbounded: bool,
    /// CTE names in scope, innermost last.
    ctes: Vec<Vec<String>>,
    /// FROM items in scope (alias, relation), innermost last.
    from_scopes: Vec<Vec<(String, Option<String>)>>,
    /// Whether nested statements run now (false under plain EXPLAIN).
    executing: bool,
    effects: Vec<SessionEffect>,
    /// Command tags of the data-modifying statements run.
    runs: BTreeSet<String>,
    /// The command tag of the statement a resolved EXECUTE runs.
    executed: Option<String>,
    /// A `set_config(...)` call was seen.
    set_config: bool,
    /// The calls the statement certainly runs, once ([`certain_calls`]).
    certain_calls: Vec<*const pb::FuncCall>,
    depth: usize,
}

impl<'st, 's> Walker<'st, 's> {
    fn new(state: &'st mut State<'s>, options: &'st AnalyzeOptions) -> Self {
        Walker {
            state,
            options,
            class: Class::Read,
            tables: BTreeSet::new(),
            written: BTreeSet::new(),
            columns: BTreeSet::new(),
            functions: BTreeSet::new(),
            sql_calls: BTreeSet::new(),
            clause: None,
            clause_columns: BTreeSet::new(),
            branch_clause: None,
            opaque: false,
            notes: Vec::new(),
            modifies: false,
            unbounded: false,
            ctes: Vec::new(),
            from_scopes: Vec::new(),
            executing: true,
            effects: Vec::new(),
            runs: BTreeSet::new(),
            executed: None,
            set_config: false,
            certain_calls: Vec::new(),
            depth: 0,
        }
    }

    fn lineage_env(&self) -> lineage::Env<'s> {
        lineage::Env {
            search_path: self.state.search_path.clone(),
            user: self.state.user.clone(),
            definitions: self.state.definitions,
        }
    }

    fn raise(&mut self, class: Class) {
        self.class = self.class.max(class);
    }

    fn make_opaque(&mut self, why: String) {
        self.opaque = true;
        if !self.notes.contains(&why) {
            self.notes.push(why);
        }
    }

    fn note(&mut self, what: String) {
        if !self.notes.contains(&what) {
            self.notes.push(what);
        }
    }

    fn children(&mut self, n: NodeRef<'_>) {
        // Collected first: the generated walk's frame stays off the
        // recursion (see `tree`).
        for child in tree::children(n) {
            self.visit(child);
        }
    }

    fn opt(&mut self, n: &Option<Box<pb::Node>>) {
        if let Some(n) = node(n) {
            self.visit(n);
        }
    }

    fn list(&mut self, v: &[pb::Node]) {
        for n in nodes(v) {
            self.visit(n);
        }
    }

    fn cte_visible(&self, name: &str) -> bool {
        self.ctes.iter().any(|scope| scope.iter().any(|c| c == name))
    }

    /// Resolves a relation name to its candidates.
    fn resolve(&mut self, schema: &str, name: &str, temp: bool) -> Vec<String> {
        if !schema.is_empty() {
            return vec![names::qualified(schema, name)];
        }
        if temp {
            return vec![names::qualified("pg_temp", name)];
        }
        let candidates = names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), name);
        if candidates.is_empty() {
            self.make_opaque(format!("`{name}` cannot be resolved: the search_path names no schema"));
        }
        candidates
    }

    fn add_relation(&mut self, schema: &str, name: &str, temp: bool, written: bool) -> Vec<String> {
        let resolved = self.resolve(schema, name, temp);
        for t in &resolved {
            self.tables.insert(t.clone());
            if written && self.executing {
                self.written.insert(t.clone());
                if t.starts_with("pg_catalog.") {
                    // `UPDATE pg_settings SET setting = ...` is SET in
                    // disguise; other catalogs are the server's own.
                    self.raise(Class::Admin);
                    self.note(format!("writes `{t}`, a system catalog"));
                }
            }
        }
        resolved
    }

    /// A relation read where a CTE of the same name may shadow it.
    fn range_var(&mut self, rv: &pb::RangeVar, written: bool, may_be_cte: bool) {
        if may_be_cte && rv.schemaname.is_empty() && self.cte_visible(&rv.relname) {
            return;
        }
        self.add_relation(&rv.schemaname, &rv.relname, rv.relpersistence == "t", written);
    }

    /// A relation named by a list of strings (DROP, COMMENT, ...).
    fn named_relation(&mut self, parts: &[&str]) {
        match parts {
            [name] => {
                self.add_relation("", name, false, false);
            }
            [schema, name] | [_, schema, name] => {
                self.add_relation(schema, name, false, false);
            }
            _ => self.make_opaque("a relation name the engine cannot read".to_string()),
        }
    }

    /// A relation named inside a string (`nextval('s')`).
    fn relation_from_text(&mut self, text: &str, written: bool) -> bool {
        let Some(parts) = names::split_identifiers(text, '.') else { return false };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match parts.as_slice() {
            [name] => !self.add_relation("", name, false, written).is_empty(),
            [schema, name] | [_, schema, name] => !self.add_relation(schema, name, false, written).is_empty(),
            _ => false,
        }
    }

    fn with_clause(&mut self, with: Option<&pb::WithClause>) -> bool {
        let Some(with) = with else { return false };
        let names: Vec<String> = nodes(&with.ctes)
            .filter_map(|c| match c {
                NodeRef::CommonTableExpr(c) => Some(c.ctename.clone()),
                _ => None,
            })
            .collect();
        if with.recursive {
            self.ctes.push(names);
            for c in nodes(&with.ctes) {
                self.visit(c);
            }
        } else {
            // A non-recursive CTE sees the CTEs before it, not itself.
            self.ctes.push(Vec::new());
            for c in nodes(&with.ctes) {
                self.visit(c);
                if let (NodeRef::CommonTableExpr(c), Some(scope)) = (c, self.ctes.last_mut()) {
                    scope.push(c.ctename.clone());
                }
            }
        }
        true
    }

    fn end_with(&mut self, pushed: bool) {
        if pushed {
            self.ctes.pop();
        }
    }

    fn push_from(&mut self, from: &[pb::Node]) {
        self.push_from_with(from, None);
    }

    /// FROM items in scope, plus a DML target (which is one too).
    fn push_from_with(&mut self, from: &[pb::Node], target: Option<&pb::RangeVar>) {
        let mut scope = Vec::new();
        for item in nodes(from).chain(target.map(NodeRef::RangeVar)) {
            self.collect_from(item, &mut scope);
        }
        self.from_scopes.push(scope);
    }

    /// UPDATE and DELETE: a written target, more FROM/USING items, SET
    /// expressions, and a WHERE that has to bound the target's rows.
    #[expect(clippy::too_many_arguments, reason = "the two statements' parts, borrowed from different structs")]
    fn update_or_delete(
        &mut self,
        tag: &str,
        with: Option<&pb::WithClause>,
        target: Option<&pb::RangeVar>,
        from: &[pb::Node],
        set: &[pb::Node],
        where_clause: &Option<Box<pb::Node>>,
        returning: Option<&pb::ReturningClause>,
    ) {
        let pushed = self.with_clause(with);
        self.enter_dml(tag);
        if let Some(rv) = target {
            self.range_var(rv, true, false);
        }
        self.modify(target, node(where_clause));
        self.push_from_with(from, target);
        self.list(set);
        self.list(from);
        self.in_clause(Clause::Filter, node(where_clause));
        if let Some(r) = returning {
            self.visit(NodeRef::ReturningClause(r));
        }
        self.from_scopes.pop();
        self.end_with(pushed);
    }

    fn collect_from(&mut self, item: NodeRef<'_>, scope: &mut Vec<(String, Option<String>)>) {
        match item {
            NodeRef::RangeVar(rv) => {
                let alias = rv.alias.as_ref().map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
                let table = if rv.schemaname.is_empty() && self.cte_visible(&rv.relname) {
                    None
                } else if rv.schemaname.is_empty() {
                    names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), &rv.relname)
                        .into_iter()
                        .next()
                } else {
                    Some(names::qualified(&rv.schemaname, &rv.relname))
                };
                scope.push((alias, table));
            }
            NodeRef::JoinExpr(j) => {
                if let Some(l) = node(&j.larg) {
                    self.collect_from(l, scope);
                }
                if let Some(r) = node(&j.rarg) {
                    self.collect_from(r, scope);
                }
            }
            NodeRef::RangeSubselect(s) => {
                if let Some(a) = &s.alias {
                    scope.push((a.aliasname.clone(), None));
                }
            }
            NodeRef::RangeFunction(f) => {
                if let Some(a) = &f.alias {
                    scope.push((a.aliasname.clone(), None));
                }
            }
            _ => {}
        }
    }

    fn column_ref(&mut self, c: &pb::ColumnRef) {
        let Some((rendered, whole_rows)) = self.resolve_column(c) else { return };
        self.attribute_call(c);
        if let Some(clause) = self.clause {
            self.record_clause_column(clause, &rendered, &whole_rows);
        }
        self.columns.extend(whole_rows);
        self.columns.insert(rendered);
    }

    /// `t.f` is PostgreSQL's attribute notation for `f(t)` when the table
    /// `t` has no column `f`. The engine does not know the table's
    /// columns: when a function of the database is named `f` (a "computed
    /// field"), the reference may call it, whose body is not read here.
    fn attribute_call(&mut self, c: &pb::ColumnRef) {
        if c.fields.len() < 2 {
            return;
        }
        let Some(NodeRef::String(f)) = c.fields.last().and_then(|f| f.node.as_ref()).map(|n| n.to_ref()) else {
            return;
        };
        let Some(definitions) = self.state.definitions else { return };
        let candidates = names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), &f.sval);
        let Some(found) = candidates.into_iter().find(|q| !definitions.functions(q).is_empty()) else { return };
        self.functions.insert(found.clone());
        let trusted = self.options.trusted_functions.as_ref().is_some_and(|g| g.is_match(&found));
        if !trusted {
            self.make_opaque(format!(
                "reads `{}`, which PostgreSQL calls as the function `{found}` on the whole row when the table has \
                 no such column: its body is not judged here",
                c.fields
                    .iter()
                    .filter_map(|f| match f.node.as_ref() {
                        Some(pg_query::NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            ));
        }
    }

    /// Records a column read in `clause`. A bare name (several FROM items,
    /// or one that is not a table) stands for that column of every FROM
    /// item in scope: `t.x` for a subquery `t`, which the check cannot
    /// resolve and counts as possibly masked.
    fn record_clause_column(&mut self, clause: Clause, rendered: &str, whole_rows: &[String]) {
        for column in whole_rows {
            self.clause_columns.insert((clause, column.clone()));
        }
        let bare = ColumnInfo::split_name(rendered).is_some_and(|p| p.len() == 1) && rendered != "*";
        if bare {
            let items: Vec<String> = self
                .from_scopes
                .iter()
                .flatten()
                .map(|(alias, table)| match table {
                    Some(t) => names::dotted(t, rendered),
                    None => names::dotted(&names::part(alias), rendered),
                })
                .collect();
            self.clause_columns.extend(items.into_iter().map(|c| (clause, c)));
        }
        self.clause_columns.insert((clause, rendered.to_string()));
    }

    /// The name a column reference stands for, as facts write it, and the
    /// whole rows it reads when it names a FROM item.
    fn resolve_column(&self, c: &pb::ColumnRef) -> Option<(String, Vec<String>)> {
        let mut parts: Vec<&str> = Vec::with_capacity(c.fields.len());
        let mut star = false;
        for f in nodes(&c.fields) {
            match f {
                NodeRef::String(s) => parts.push(&s.sval),
                NodeRef::AStar(_) => star = true,
                _ => {}
            }
        }
        let column = if star { "*" } else { parts.pop().unwrap_or("*") };
        let mut whole = Vec::new();
        let rendered = match parts.as_slice() {
            [] => {
                // `u` naming a FROM item is the whole row: every column of
                // its table is read (`WHERE u::text LIKE ...`).
                let whole_rows: Vec<String> = self
                    .from_scopes
                    .iter()
                    .flatten()
                    .filter(|(alias, _)| !star && alias == column)
                    .filter_map(|(_, t)| t.as_ref().map(|t| names::dotted(t, "*")))
                    .collect();
                whole = whole_rows;
                if !star {
                    // A table of this query may lack the column: then it is
                    // an enclosing query's (`SELECT (SELECT name FROM
                    // orders) FROM customers` reads `customers.name`).
                    let outer = self.from_scopes.len().saturating_sub(1);
                    for (_, t) in self.from_scopes.iter().take(outer).flatten() {
                        if let Some(t) = t {
                            whole.push(names::dotted(t, column));
                        }
                    }
                }
                let tables: Vec<&String> =
                    self.from_scopes.last().into_iter().flatten().filter_map(|(_, t)| t.as_ref()).collect();
                match (tables.as_slice(), self.from_scopes.last().map_or(0, Vec::len)) {
                    ([t], 1) => names::dotted(t, column),
                    _ => names::part(column).into_owned(),
                }
            }
            [q] => {
                let hit = self.from_scopes.iter().rev().flatten().find(|(alias, _)| alias == q).map(|(_, t)| t.clone());
                let table = match hit {
                    Some(Some(t)) => Some(t),
                    Some(None) => None,
                    None => names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), q)
                        .into_iter()
                        .next(),
                };
                match table {
                    Some(t) => {
                        if !star && catalog::is_attribute_function(column) {
                            // `t.to_json` is `to_json(t)` when `t` has no
                            // such column: the whole row.
                            whole.push(names::dotted(&t, "*"));
                        }
                        names::dotted(&t, column)
                    }
                    None => names::dotted(&names::part(q), column),
                }
            }
            [schema, table] | [_, schema, table] => {
                let t = names::qualified(schema, table);
                if !star && catalog::is_attribute_function(column) {
                    whole.push(names::dotted(&t, "*"));
                }
                names::dotted(&t, column)
            }
            _ => return None,
        };
        Some((rendered, whole))
    }

    /// Walks `n` in `clause`: the columns it reads count for inference
    /// control.
    fn in_clause(&mut self, clause: Clause, n: Option<NodeRef<'_>>) {
        let Some(n) = n else { return };
        let outer = self.clause.replace(clause);
        self.visit(n);
        self.clause = outer;
    }

    /// Records the columns `n` reads in `clause`, without walking it again
    /// (it was walked as itself): an `ORDER BY 2` or `GROUP BY alias`
    /// reads the target it names.
    fn clause_refs(&mut self, clause: Clause, n: NodeRef<'_>) {
        if let NodeRef::ColumnRef(c) = n {
            if let Some((rendered, whole)) = self.resolve_column(c) {
                self.record_clause_column(clause, &rendered, &whole);
            }
            return;
        }
        if let NodeRef::SubLink(_) | NodeRef::SelectStmt(_) = n {
            // A subquery's columns resolve in its own scope, which is gone
            // here: it reads what the engine cannot name.
            self.clause_columns.insert((clause, "*".to_string()));
            return;
        }
        let mut children = Vec::new();
        walk::for_each_child(n, &mut |_, child| children.push(child));
        for child in children {
            self.clause_refs(clause, child);
        }
    }

    /// `ORDER BY` and `GROUP BY` items naming a target by position
    /// (`ORDER BY 2`) or by its output name (`GROUP BY s`, where `s` is
    /// not a column of the FROM items): the target's columns are read in
    /// `clause`.
    fn targets_named(&mut self, clause: Clause, items: &[pb::Node], targets: &[pb::Node]) {
        if !self.options.inference {
            return;
        }
        let targets: Vec<&pb::ResTarget> = nodes(targets)
            .filter_map(|t| match t {
                NodeRef::ResTarget(r) => Some(r),
                _ => None,
            })
            .collect();
        for item in nodes(items) {
            let item = match item {
                NodeRef::SortBy(sb) => match node(&sb.node) {
                    Some(n) => n,
                    None => continue,
                },
                other => other,
            };
            let named = match item {
                NodeRef::AConst(c) => match literal::value(c) {
                    Some(Val::Ival(i)) => {
                        let k = usize::try_from(i.ival).ok().and_then(|k| k.checked_sub(1));
                        // A position at or past a `*` names a column the
                        // engine cannot: any of the star's.
                        if k.is_some_and(|k| targets.iter().take(k.saturating_add(1)).any(|t| is_star(t))) {
                            self.clause_columns.insert((clause, "*".to_string()));
                            continue;
                        }
                        k.and_then(|k| targets.get(k))
                    }
                    _ => None,
                },
                NodeRef::ColumnRef(c) if c.fields.len() == 1 => match nodes(&c.fields).next() {
                    Some(NodeRef::String(name)) => targets.iter().find(|t| t.name == name.sval),
                    _ => None,
                },
                _ => None,
            };
            if let Some(target) = named.and_then(|rt| node(&rt.val)) {
                self.clause_refs(clause, target);
            }
        }
    }

    fn func_call(&mut self, fc: &pb::FuncCall) {
        let parts = string_parts(&fc.funcname);
        let written = parts.iter().map(|p| names::part(p)).collect::<Vec<_>>().join(".");
        self.functions.insert(written.clone());
        let (schema, name) = match parts.as_slice() {
            [name] => (None, *name),
            [schema, name] => (Some(*schema), *name),
            [_, schema, name] => (Some(*schema), *name),
            _ => {
                self.make_opaque(format!("calls `{written}`, a function name the engine cannot read"));
                return;
            }
        };
        let trusted = self.options.trusted_functions.as_ref().is_some_and(|g| g.is_match(&written));
        let builtin = match schema {
            None => catalog::is_builtin_function(name) && self.catalog_first(),
            Some("pg_catalog") => catalog::is_builtin_function(name),
            Some(_) => false,
        };
        if !builtin {
            if !trusted && !self.sql_call(schema, name) {
                self.make_opaque(format!(
                    "calls `{written}`, which is not a built-in function: its body is not visible"
                ));
            }
            return;
        }
        if schema.is_none() && !trusted && self.shadowed(name) && !self.sql_call(None, name) {
            // The server picks among same-named functions by argument
            // types: a function of the database may win over the built-in.
            self.make_opaque(format!(
                "calls `{written}`, which may resolve to a function of the database with the same name \
                 (by its argument types) whose body is not visible"
            ));
        }
        let args: Vec<NodeRef<'_>> = nodes(&fc.args).collect();
        match catalog::effect(name) {
            catalog::Effect::None => {}
            catalog::Effect::Opaque => {
                self.make_opaque(format!(
                    "calls `{written}`, which runs SQL text or reads a relation named by a string"
                ));
            }
            catalog::Effect::Write => self.raise(Class::Write),
            catalog::Effect::Admin => self.raise(Class::Admin),
            catalog::Effect::Sequence => {
                self.raise(Class::Write);
                let named = args.first().copied().and_then(const_text).map(str::to_string);
                let ok = named.is_some_and(|text| self.relation_from_text(&text, true));
                if !ok {
                    self.make_opaque(format!("calls `{written}` on a sequence that is not a constant name"));
                }
            }
            catalog::Effect::LargeObject(class) => {
                self.raise(class);
                self.tables.insert("pg_catalog.pg_largeobject".to_string());
                if class == Class::Write && self.executing {
                    self.written.insert("pg_catalog.pg_largeobject".to_string());
                }
            }
            catalog::Effect::SetConfig => self.set_config(fc, &args),
            catalog::Effect::Reads(relation) => {
                self.tables.insert(relation.to_string());
            }
        }
    }

    /// Whether a call to `schema.name` (`name` alone: through the path)
    /// reaches only functions the definitions hold as SQL, whose bodies the
    /// expansion judges; records them.
    fn sql_call(&mut self, schema: Option<&str>, name: &str) -> bool {
        let Some(definitions) = self.state.definitions else { return false };
        let candidates = match schema {
            Some(s) => vec![names::qualified(s, name)],
            None => names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), name),
        };
        let found: Vec<String> = candidates.into_iter().filter(|c| !definitions.functions(c).is_empty()).collect();
        let sql = !found.is_empty()
            && found.iter().all(|c| {
                definitions
                    .functions(c)
                    .iter()
                    .all(|f| !matches!(f.body, crate::definitions::FunctionBody::Other { .. }))
            });
        if sql {
            if let Some(clause) = self.clause {
                // The call's result derives from what its body reads.
                self.clause_columns.insert((clause, format!("{}{}", lineage::FUNCTION_SOURCE, found.join("|"))));
            }
            self.sql_calls.extend(found);
        }
        sql
    }

    /// Whether a function of the session's definitions has the name
    /// `name` in a schema of the path (the server may pick it over a
    /// built-in one of that name).
    fn shadowed(&self, name: &str) -> bool {
        self.state.definitions.is_some_and(|d| {
            names::relation_candidates(&self.state.search_path, self.state.user.as_deref(), name)
                .iter()
                .any(|c| !d.functions(c).is_empty())
        })
    }

    /// Whether unqualified function names reach `pg_catalog` before any
    /// other schema.
    fn catalog_first(&self) -> bool {
        catalog_first(&self.state.search_path)
    }

    fn set_config(&mut self, call: &pb::FuncCall, args: &[NodeRef<'_>]) {
        self.set_config = true;
        let Some(setting) = args.first().copied().and_then(const_text).map(str::to_ascii_lowercase) else {
            self.raise(Class::Admin);
            self.note("set_config of a setting named by a non-constant".to_string());
            return;
        };
        let class = catalog::setting_class(&setting);
        if class != Class::Session && class != Class::Transaction {
            self.raise(class);
        }
        if setting == "search_path" {
            let value = args.get(1).copied().and_then(const_text);
            match value.and_then(|v| names::split_identifiers(v, ',')) {
                Some(path) => {
                    let uncertain = !self.certain_calls.iter().any(|c| std::ptr::eq(*c, call));
                    match args.get(2).copied().map(const_bool) {
                        Some(Some(local)) => {
                            self.effects.push(SessionEffect::SetSearchPath { path, local, uncertain });
                        }
                        // `is_local` the engine cannot read: the path
                        // changes, and what a COMMIT leaves may or may not.
                        _ => {
                            self.effects.push(SessionEffect::SetSearchPath {
                                path: path.clone(),
                                local: true,
                                uncertain,
                            });
                            self.effects.push(SessionEffect::SetSearchPath { path, local: false, uncertain: true });
                        }
                    }
                }
                None => {
                    self.raise(Class::Admin);
                    self.note("set_config sets search_path to a value the engine cannot read".to_string());
                }
            }
        }
    }

    fn operator(&mut self, name: &[pb::Node]) {
        let parts = string_parts(name);
        let (schema, op) = match parts.as_slice() {
            [op] => (None, *op),
            [schema, op] => (Some(*schema), *op),
            _ => return,
        };
        let builtin = match schema {
            None => catalog::is_builtin_operator(op) && self.catalog_first(),
            Some("pg_catalog") => catalog::is_builtin_operator(op),
            Some(_) => false,
        };
        if !builtin {
            self.make_opaque(format!(
                "uses operator `{}`, which is not built in: its function is not visible",
                parts.join(".")
            ));
        }
    }

    fn modify(&mut self, target: Option<&pb::RangeVar>, where_clause: Option<NodeRef<'_>>) {
        self.modifies = true;
        let mut target_names: Vec<&str> = Vec::new();
        if let Some(rv) = target {
            target_names.push(&rv.relname);
            if let Some(a) = &rv.alias {
                target_names.push(&a.aliasname);
            }
        }
        if !predicate::bounds_rows(where_clause, &target_names) {
            self.unbounded = true;
        }
    }

    fn enter_dml(&mut self, tag: &str) {
        if self.executing {
            self.raise(Class::Write);
            self.runs.insert(tag.to_string());
        }
    }

    // -------------------------------------------------------------- visit

    fn visit(&mut self, n: NodeRef<'_>) {
        self.depth += 1;
        if self.depth > 10_000 {
            self.make_opaque("the statement nests deeper than the engine follows".to_string());
            self.depth -= 1;
            return;
        }
        self.visit_node(n);
        self.depth -= 1;
    }

    fn visit_node(&mut self, n: NodeRef<'_>) {
        match n {
            NodeRef::RangeVar(rv) => self.range_var(rv, false, true),
            NodeRef::ColumnRef(c) => self.column_ref(c),
            NodeRef::FuncCall(fc) => {
                self.func_call(fc);
                self.list(&fc.args);
                for o in nodes(&fc.agg_order) {
                    self.in_clause(Clause::Order, Some(o));
                }
                self.in_clause(Clause::Filter, node(&fc.agg_filter));
                if let Some(w) = &fc.over {
                    self.visit(NodeRef::WindowDef(w));
                }
            }
            NodeRef::WindowDef(w) => {
                for p in nodes(&w.partition_clause) {
                    self.in_clause(Clause::Group, Some(p));
                }
                for o in nodes(&w.order_clause) {
                    self.in_clause(Clause::Order, Some(o));
                }
                self.opt(&w.start_offset);
                self.opt(&w.end_offset);
            }
            NodeRef::JoinExpr(j) => {
                self.opt(&j.larg);
                self.opt(&j.rarg);
                self.in_clause(Clause::Join, node(&j.quals));
                if j.is_natural {
                    self.clause_columns.insert((Clause::Join, "*".to_string()));
                }
                // USING (c) compares c of both sides: every FROM item's c.
                let scope: Vec<String> = self
                    .from_scopes
                    .last()
                    .into_iter()
                    .flatten()
                    .map(|(alias, table)| table.clone().unwrap_or_else(|| names::part(alias).into_owned()))
                    .collect();
                for name in nodes(&j.using_clause) {
                    if let NodeRef::String(c) = name {
                        for item in &scope {
                            self.clause_columns.insert((Clause::Join, names::dotted(item, &c.sval)));
                        }
                    }
                }
            }
            NodeRef::AExpr(a) => {
                let kind = pb::AExprKind::try_from(a.kind).unwrap_or(pb::AExprKind::Undefined);
                if !matches!(
                    kind,
                    pb::AExprKind::AexprBetween
                        | pb::AExprKind::AexprNotBetween
                        | pb::AExprKind::AexprBetweenSym
                        | pb::AExprKind::AexprNotBetweenSym
                ) {
                    self.operator(&a.name);
                }
                self.children(n);
            }
            NodeRef::SortBy(s) => {
                self.operator(&s.use_op);
                self.children(n);
            }
            NodeRef::RangeFunction(_) => {
                // A function in FROM returns as many rows as its arguments
                // say (`generate_series(1, ascii(ssn))`): what they read
                // selects rows, as a filter does.
                let outer = self.clause.replace(Clause::Filter);
                self.children(n);
                self.clause = outer;
            }
            NodeRef::SubLink(s) => {
                self.operator(&s.oper_name);
                self.children(n);
            }
            NodeRef::SelectStmt(s) => self.select(s),
            NodeRef::InsertStmt(s) => {
                let pushed = self.with_clause(s.with_clause.as_ref());
                self.enter_dml("INSERT");
                if let Some(rv) = &s.relation {
                    self.range_var(rv, true, false);
                }
                self.list(&s.cols);
                self.opt(&s.select_stmt);
                if let Some(c) = &s.on_conflict_clause {
                    if c.action == pb::OnConflictAction::OnconflictUpdate as i32 {
                        // `ON CONFLICT DO UPDATE` updates the rows it meets.
                        self.enter_dml("UPDATE");
                    }
                    self.visit(NodeRef::OnConflictClause(c));
                }
                if let Some(r) = &s.returning_clause {
                    self.visit(NodeRef::ReturningClause(r));
                }
                self.end_with(pushed);
            }
            NodeRef::UpdateStmt(s) => self.update_or_delete(
                "UPDATE",
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                &s.from_clause,
                &s.target_list,
                &s.where_clause,
                s.returning_clause.as_ref(),
            ),
            NodeRef::DeleteStmt(s) => self.update_or_delete(
                "DELETE",
                s.with_clause.as_ref(),
                s.relation.as_ref(),
                &s.using_clause,
                &[],
                &s.where_clause,
                s.returning_clause.as_ref(),
            ),
            NodeRef::MergeStmt(s) => {
                let pushed = self.with_clause(s.with_clause.as_ref());
                self.enter_dml("MERGE");
                if let Some(rv) = &s.relation {
                    self.range_var(rv, true, false);
                }
                let changing: Vec<&pb::MergeWhenClause> = nodes(&s.merge_when_clauses)
                    .filter_map(|c| match c {
                        NodeRef::MergeWhenClause(w)
                            if w.command_type == pb::CmdType::CmdUpdate as i32
                                || w.command_type == pb::CmdType::CmdDelete as i32 =>
                        {
                            Some(w)
                        }
                        _ => None,
                    })
                    .collect();
                if !changing.is_empty() {
                    self.modify(s.relation.as_ref(), node(&s.join_condition));
                    // WHEN NOT MATCHED BY SOURCE changes the target rows the
                    // join did *not* find: with no condition of its own, all
                    // of them when the source is empty.
                    let by_source = pb::MergeMatchKind::MergeWhenNotMatchedBySource as i32;
                    if changing.iter().any(|w| w.match_kind == by_source && w.condition.is_none()) {
                        self.unbounded = true;
                    }
                }
                // Each action runs its command: a rule on `DELETE` holds for
                // `MERGE ... THEN DELETE` as for `DELETE`.
                for w in nodes(&s.merge_when_clauses) {
                    if let NodeRef::MergeWhenClause(w) = w {
                        match pb::CmdType::try_from(w.command_type) {
                            Ok(pb::CmdType::CmdUpdate) => self.enter_dml("UPDATE"),
                            Ok(pb::CmdType::CmdDelete) => self.enter_dml("DELETE"),
                            Ok(pb::CmdType::CmdInsert) => self.enter_dml("INSERT"),
                            _ => {}
                        }
                    }
                }
                // The target's and the source's aliases name their tables
                // in the condition, the actions and RETURNING.
                let source = s.source_relation.as_deref().map_or(&[][..], std::slice::from_ref);
                self.push_from_with(source, s.relation.as_ref());
                self.opt(&s.source_relation);
                self.in_clause(Clause::Join, node(&s.join_condition));
                self.list(&s.merge_when_clauses);
                if let Some(r) = &s.returning_clause {
                    self.visit(NodeRef::ReturningClause(r));
                }
                self.from_scopes.pop();
                self.end_with(pushed);
            }
            NodeRef::LockingClause(l) => {
                // `FOR UPDATE OF a` names FROM items, not new relations.
                let _ = l;
            }
            NodeRef::IntoClause(i) => {
                if let Some(rv) = &i.rel {
                    self.range_var(rv, true, false);
                }
                if let Some(q) = &i.view_query {
                    self.visit(NodeRef::Query(q));
                }
            }
            NodeRef::CopyStmt(c) => self.copy(c),
            NodeRef::TruncateStmt(t) => {
                for rel in nodes(&t.relations) {
                    match rel {
                        NodeRef::RangeVar(rv) => self.range_var(rv, true, false),
                        other => self.visit(other),
                    }
                }
            }
            NodeRef::ExplainStmt(e) => {
                let analyze = explain_analyzes(e);
                let was = self.executing;
                self.executing = was && analyze;
                self.opt(&e.query);
                self.executing = was;
            }
            NodeRef::DropStmt(d) => {
                self.drop_objects(d.remove_type, &d.objects);
            }
            NodeRef::CreateSchemaStmt(c) => {
                // Its elements are created in the new schema: the server
                // puts it first on the path while it runs them.
                let schema = if c.schemaname.is_empty() {
                    c.authrole.as_ref().map(|r| r.rolename.clone()).filter(|r| !r.is_empty())
                } else {
                    Some(c.schemaname.clone())
                };
                match schema {
                    Some(schema) => {
                        let saved = self.state.search_path.clone();
                        self.state.search_path.insert(0, schema);
                        self.children(n);
                        self.state.search_path = saved;
                    }
                    None => {
                        if !c.schema_elts.is_empty() {
                            self.make_opaque(
                                "CREATE SCHEMA AUTHORIZATION names its schema after a role the engine cannot tell"
                                    .to_string(),
                            );
                        }
                        self.children(n);
                    }
                }
            }
            NodeRef::RenameStmt(r) if r.rename_type == pb::ObjectType::ObjectSchema as i32 => {
                // Every relation of the schema changes its name.
                self.tables.insert(names::qualified(&r.subname, "*"));
                self.tables.insert(names::qualified(&r.newname, "*"));
            }
            NodeRef::AlterOwnerStmt(a) if a.object_type == pb::ObjectType::ObjectSchema as i32 => {
                if let Some(NodeRef::String(s)) = node(&a.object) {
                    self.tables.insert(names::qualified(&s.sval, "*"));
                }
                self.children(n);
            }
            NodeRef::AlterTableMoveAllStmt(_) => {
                self.make_opaque("it moves every relation of a tablespace, which the engine cannot list".to_string());
                self.children(n);
            }
            NodeRef::RenameStmt(r) => {
                self.children(n);
                // A relation renamed keeps its schema: the new name is
                // named there too.
                if let (true, Some(rv)) = (is_relation_object(r.rename_type), &r.relation) {
                    let old = self.resolve(&rv.schemaname, &rv.relname, rv.relpersistence == "t");
                    let suffix = format!(".{}", names::part(&rv.relname));
                    for q in old {
                        if let Some(schema) = q.strip_suffix(&suffix) {
                            self.tables.insert(names::dotted(schema, &r.newname));
                        }
                    }
                }
            }
            NodeRef::AlterObjectSchemaStmt(a) => {
                self.children(n);
                // A relation moved to another schema is named there too.
                if let (true, Some(rv)) = (is_relation_object(a.object_type), &a.relation) {
                    self.add_relation(&a.newschema, &rv.relname, false, false);
                }
            }
            NodeRef::DropOwnedStmt(_) | NodeRef::ReassignOwnedStmt(_) => {
                self.make_opaque(
                    "it drops or gives away every object a role owns, which the engine cannot list".to_string(),
                );
                self.children(n);
            }
            NodeRef::CommentStmt(c) => {
                if let Some(obj) = node(&c.object) {
                    self.object(c.objtype, obj);
                }
            }
            NodeRef::SecLabelStmt(c) => {
                if let Some(obj) = node(&c.object) {
                    self.object(c.objtype, obj);
                }
            }
            // Only a SET of its own changes this session: one inside `ALTER
            // ROLE/DATABASE/SYSTEM ... SET` or a function's `SET` clause sets
            // later sessions' or the function's own value.
            NodeRef::VariableSetStmt(v) if self.depth == 1 => self.variable_set(v),
            NodeRef::VariableSetStmt(v) => self.list(&v.args),
            NodeRef::PrepareStmt(p) => {
                self.list(&p.argtypes);
                self.opt(&p.query);
                self.effects.push(SessionEffect::Prepare {
                    name: p.name.clone(),
                    prepared: Prepared { sql: Arc::from(""), standard_conforming_strings: self.state.scs },
                });
            }
            NodeRef::ExecuteStmt(e) => self.execute(e),
            NodeRef::DeallocateStmt(d) => {
                let name = if d.isall || d.name.is_empty() { None } else { Some(d.name.clone()) };
                self.effects.push(SessionEffect::Deallocate { name });
            }
            NodeRef::DiscardStmt(d) => {
                if d.target == pb::DiscardMode::DiscardAll as i32 {
                    self.effects.push(SessionEffect::ResetSearchPath);
                    self.effects.push(SessionEffect::Deallocate { name: None });
                }
            }
            NodeRef::DoStmt(_) => {
                self.make_opaque("DO runs a code block the engine cannot see".to_string());
            }
            NodeRef::CallStmt(c) => {
                self.make_opaque("CALL runs a procedure whose body the engine cannot see".to_string());
                if let Some(fc) = &c.funccall {
                    self.visit(NodeRef::FuncCall(fc));
                }
            }
            NodeRef::CreateFunctionStmt(_) | NodeRef::CreateTrigStmt(_) | NodeRef::CreateEventTrigStmt(_) => {
                // Defining code is ddl; a function body given as a string is
                // not run now. A SQL-standard body (BEGIN ATOMIC) is a tree,
                // and its relations count.
                self.children(n);
            }
            _ => self.children(n),
        }
    }

    fn select(&mut self, s: &pb::SelectStmt) {
        let pb::SelectStmt {
            distinct_clause,
            into_clause,
            target_list,
            from_clause,
            where_clause,
            group_clause,
            group_distinct: _,
            having_clause,
            window_clause,
            values_lists,
            sort_clause,
            limit_offset,
            limit_count,
            limit_option: _,
            locking_clause,
            with_clause,
            op,
            all,
            larg,
            rarg,
        } = s;
        let branch = self.branch_clause.take();
        let pushed = self.with_clause(with_clause.as_ref());
        if let Some(into) = into_clause {
            self.raise(Class::Ddl);
            self.visit(NodeRef::IntoClause(into));
        }
        if !locking_clause.is_empty() && self.executing {
            // Row locks need UPDATE privilege and block writers.
            self.raise(Class::Write);
        }
        self.push_from(from_clause);
        self.list(from_clause);
        for d in nodes(distinct_clause) {
            self.in_clause(Clause::Group, Some(d));
        }
        // `DISTINCT ON (2)` names a target by position, as `ORDER BY 2` does.
        self.targets_named(Clause::Group, distinct_clause, target_list);
        if !distinct_clause.is_empty() && distinct_clause.iter().all(|d| d.node.is_none()) {
            // Plain DISTINCT groups by every target.
            for t in nodes(target_list) {
                self.clause_refs(Clause::Group, t);
            }
        }
        match branch {
            Some(clause) => {
                for t in nodes(target_list) {
                    self.in_clause(clause, Some(t));
                }
            }
            None => self.list(target_list),
        }
        self.in_clause(Clause::Filter, node(where_clause));
        for g in nodes(group_clause) {
            self.in_clause(Clause::Group, Some(g));
        }
        self.targets_named(Clause::Group, group_clause, target_list);
        self.in_clause(Clause::Filter, node(having_clause));
        self.list(window_clause);
        self.list(values_lists);
        for o in nodes(sort_clause) {
            self.in_clause(Clause::Order, Some(o));
        }
        self.targets_named(Clause::Order, sort_clause, target_list);
        self.opt(limit_offset);
        self.opt(limit_count);
        self.from_scopes.pop();
        // The branches' rows are compared with each other.
        let compared = match pb::SetOperation::try_from(*op) {
            Ok(pb::SetOperation::SetopIntersect | pb::SetOperation::SetopExcept) => Some(Clause::Join),
            Ok(pb::SetOperation::SetopUnion) if !*all => Some(Clause::Group),
            _ => branch,
        };
        if let Some(l) = larg {
            self.branch_clause = compared;
            self.select(l);
        }
        if let Some(r) = rarg {
            self.branch_clause = compared;
            self.select(r);
        }
        self.branch_clause = None;
        self.end_with(pushed);
    }

    fn copy(&mut self, c: &pb::CopyStmt) {
        let to_client = c.filename.is_empty() && !c.is_program;
        if !to_client {
            self.raise(Class::Admin);
        }
        if let Some(rv) = &c.relation {
            self.range_var(rv, c.is_from, false);
            if c.is_from {
                self.raise(Class::Write);
            }
        }
        self.opt(&c.query);
        self.list(&c.attlist);
        self.list(&c.options);
        self.opt(&c.where_clause);
    }

    fn drop_objects(&mut self, object_type: i32, objects: &[pb::Node]) {
        for obj in nodes(objects) {
            self.object(object_type, obj);
        }
    }

    /// An object named in DROP/COMMENT/SECURITY LABEL: relations count as tables.
    fn object(&mut self, object_type: i32, obj: NodeRef<'_>) {
        use pb::ObjectType as O;
        let relation_like =
            [O::ObjectTable, O::ObjectView, O::ObjectMatview, O::ObjectIndex, O::ObjectSequence, O::ObjectForeignTable]
                .iter()
                .any(|t| *t as i32 == object_type);
        let on_relation = [O::ObjectRule, O::ObjectTrigger, O::ObjectPolicy, O::ObjectTabconstraint, O::ObjectColumn]
            .iter()
            .any(|t| *t as i32 == object_type);
        match obj {
            NodeRef::List(l) if relation_like => self.named_relation(&string_parts(&l.items)),
            NodeRef::List(l) if on_relation => {
                // The last name is the rule/trigger/policy/column; the rest is the relation.
                let parts = string_parts(&l.items);
                if let Some((_, rel)) = parts.split_last() {
                    self.named_relation(rel);
                }
            }
            NodeRef::String(s) if relation_like => self.named_relation(&[s.sval.as_str()]),
            // A schema stands for every relation in it (`DROP SCHEMA s
            // CASCADE` drops them all): `s.*`, which only a rule granting
            // the whole schema covers.
            NodeRef::String(s) if object_type == O::ObjectSchema as i32 => {
                self.tables.insert(names::qualified(&s.sval, "*"));
            }
            other => self.children(other),
        }
    }

    fn variable_set(&mut self, v: &pb::VariableSetStmt) {
        use pb::VariableSetKind as K;
        let kind = K::try_from(v.kind).unwrap_or(K::Undefined);
        let name = v.name.to_ascii_lowercase();
        match kind {
            K::VarResetAll => {
                self.effects.push(SessionEffect::ResetSearchPath);
            }
            K::VarSetValue if name == "search_path" => {
                // Each argument is one schema name, verbatim: the server
                // quotes it as an identifier before splitting the list, so
                // `SET search_path = 'a, b'` names one schema called `a, b`.
                let mut path = Vec::new();
                let mut readable = true;
                for arg in nodes(&v.args) {
                    match const_text(arg) {
                        Some(text) if !text.is_empty() => path.push(names::truncate_identifier(text).to_string()),
                        _ => readable = false,
                    }
                }
                if readable {
                    self.effects.push(SessionEffect::SetSearchPath { path, local: v.is_local, uncertain: false });
                } else {
                    self.raise(Class::Admin);
                    self.note("SET search_path to a value the engine cannot read".to_string());
                }
            }
            K::VarSetDefault if name == "search_path" && v.is_local => {
                self.effects.push(SessionEffect::ResetSearchPathLocal);
            }
            K::VarSetDefault | K::VarReset if name == "search_path" => {
                self.effects.push(SessionEffect::ResetSearchPath);
            }
            _ => {}
        }
        self.list(&v.args);
    }

    fn execute(&mut self, e: &pb::ExecuteStmt) {
        self.list(&e.params);
        let Some(prepared) = self.state.lookup(&e.name) else {
            self.raise(Class::Write);
            self.make_opaque(format!("EXECUTE of `{}`, which this session did not prepare", e.name));
            return;
        };
        let parsed = match pg_query::parse(&prepared.sql, parser_options(prepared.standard_conforming_strings)) {
            Ok(p) => p,
            Err(err) => {
                self.raise(Class::Write);
                self.make_opaque(format!("EXECUTE of `{}`: {}", e.name, parse_failure(&err)));
                return;
            }
        };
        let mut stmts = parsed.protobuf.stmts.iter().filter_map(|r| r.stmt.as_ref().and_then(|n| n.node.as_ref()));
        let (Some(stmt), None) = (stmts.next(), stmts.next()) else {
            self.raise(Class::Write);
            self.make_opaque(format!("EXECUTE of `{}`, whose recorded text is not one statement", e.name));
            return;
        };
        let inner = match stmt.to_ref() {
            NodeRef::PrepareStmt(p) => node(&p.query),
            other => Some(other),
        };
        // Only what PREPARE accepts can have been prepared; anything else
        // (an EXECUTE recorded as the text of a statement, say) is refused
        // rather than followed.
        let inner = inner.filter(|i| {
            matches!(
                i,
                NodeRef::SelectStmt(_)
                    | NodeRef::InsertStmt(_)
                    | NodeRef::UpdateStmt(_)
                    | NodeRef::DeleteStmt(_)
                    | NodeRef::MergeStmt(_)
            )
        });
        let Some(inner) = inner else {
            self.raise(Class::Write);
            self.make_opaque(format!("EXECUTE of `{}`, whose recorded text is not a preparable statement", e.name));
            return;
        };
        if tree::too_deep(inner) {
            self.raise(Class::Write);
            self.make_opaque(format!("EXECUTE of `{}`: {}", e.name, tree::TOO_DEEP));
            return;
        }
        let (class, tag) = classify(inner);
        self.raise(class);
        self.executed = Some(tag);
        self.visit(inner);
    }
}

// ------------------------------------------------------------------ class

/// Whether a statement's outermost result is bounded.
fn has_limit(stmt: NodeRef<'_>) -> bool {
    match stmt {
        NodeRef::SelectStmt(s) => select_is_bounded(s),
        NodeRef::VariableShowStmt(_) | NodeRef::ExplainStmt(_) => true,
        NodeRef::FetchStmt(f) => f.how_many != i64::MAX && f.how_many >= 0,
        NodeRef::DeclareCursorStmt(d) => match node(&d.query) {
            Some(NodeRef::SelectStmt(s)) => select_is_bounded(s),
            _ => false,
        },
        NodeRef::PrepareStmt(p) => node(&p.query).is_some_and(has_limit),
        NodeRef::CopyStmt(c) => match node(&c.query) {
            Some(NodeRef::SelectStmt(s)) => select_is_bounded(s),
            _ => false,
        },
        _ => false,
    }
}

fn select_is_bounded(s: &pb::SelectStmt) -> bool {
    if s.limit_option == pb::LimitOption::WithTies as i32 {
        return false;
    }
    match node(&s.limit_count) {
        Some(NodeRef::AConst(c)) => matches!(literal::kind(c), literal::Kind::Integer | literal::Kind::Numeric),
        Some(NodeRef::TypeCast(tc)) => {
            matches!(node(&tc.arg), Some(NodeRef::AConst(c)) if literal::kind(c) == literal::Kind::Integer)
        }
        _ => false,
    }
}

fn object_name(object_type: i32) -> &'static str {
    use pb::ObjectType as O;
    match O::try_from(object_type).unwrap_or(O::Undefined) {
        O::Undefined => "OBJECT",
        O::ObjectAccessMethod => "ACCESS METHOD",
        O::ObjectAggregate => "AGGREGATE",
        O::ObjectAmop | O::ObjectAmproc | O::ObjectOpfamily => "OPERATOR FAMILY",
        O::ObjectAttribute => "ATTRIBUTE",
        O::ObjectCast => "CAST",
        O::ObjectColumn => "COLUMN",
        O::ObjectCollation => "COLLATION",
        O::ObjectConversion => "CONVERSION",
        O::ObjectDatabase => "DATABASE",
        O::ObjectDefault => "DEFAULT",
        O::ObjectDefacl => "DEFAULT PRIVILEGES",
        O::ObjectDomain => "DOMAIN",
        O::ObjectDomconstraint => "CONSTRAINT",
        O::ObjectEventTrigger => "EVENT TRIGGER",
        O::ObjectExtension => "EXTENSION",
        O::ObjectFdw => "FOREIGN DATA WRAPPER",
        O::ObjectForeignServer => "SERVER",
        O::ObjectForeignTable => "FOREIGN TABLE",
        O::ObjectFunction => "FUNCTION",
        O::ObjectIndex => "INDEX",
        O::ObjectLanguage => "LANGUAGE",
        O::ObjectLargeobject => "LARGE OBJECT",
        O::ObjectMatview => "MATERIALIZED VIEW",
        O::ObjectOpclass => "OPERATOR CLASS",
        O::ObjectOperator => "OPERATOR",
        O::ObjectParameterAcl => "PARAMETER",
        O::ObjectPolicy => "POLICY",
        O::ObjectProcedure => "PROCEDURE",
        O::ObjectPublication | O::ObjectPublicationNamespace | O::ObjectPublicationRel => "PUBLICATION",
        O::ObjectRole => "ROLE",
        O::ObjectRoutine => "ROUTINE",
        O::ObjectRule => "RULE",
        O::ObjectSchema => "SCHEMA",
        O::ObjectSequence => "SEQUENCE",
        O::ObjectSubscription => "SUBSCRIPTION",
        O::ObjectStatisticExt => "STATISTICS",
        O::ObjectTabconstraint => "CONSTRAINT",
        O::ObjectTable => "TABLE",
        O::ObjectTablespace => "TABLESPACE",
        O::ObjectTransform => "TRANSFORM",
        O::ObjectTrigger => "TRIGGER",
        O::ObjectTsconfiguration => "TEXT SEARCH CONFIGURATION",
        O::ObjectTsdictionary => "TEXT SEARCH DICTIONARY",
        O::ObjectTsparser => "TEXT SEARCH PARSER",
        O::ObjectTstemplate => "TEXT SEARCH TEMPLATE",
        O::ObjectType => "TYPE",
        O::ObjectUserMapping => "USER MAPPING",
        O::ObjectView => "VIEW",
    }
}

fn object_class(object_type: i32) -> Class {
    use pb::ObjectType as O;
    match O::try_from(object_type).unwrap_or(O::Undefined) {
        O::ObjectRole | O::ObjectDefacl | O::ObjectUserMapping | O::ObjectParameterAcl => Class::Dcl,
        O::ObjectDatabase
        | O::ObjectTablespace
        | O::ObjectExtension
        | O::ObjectLanguage
        | O::ObjectEventTrigger
        | O::ObjectSubscription
        | O::ObjectPublication
        | O::ObjectPublicationNamespace
        | O::ObjectPublicationRel
        | O::ObjectFdw
        | O::ObjectAccessMethod => Class::Admin,
        _ => Class::Ddl,
    }
}

// Every node kind that is not a statement, for the exhaustive match below.
macro_rules! not_a_statement {
    () => {
        NodeRef::Alias(_)
            | NodeRef::RangeVar(_)
            | NodeRef::TableFunc(_)
            | NodeRef::IntoClause(_)
            | NodeRef::Var(_)
            | NodeRef::Param(_)
            | NodeRef::Aggref(_)
            | NodeRef::GroupingFunc(_)
            | NodeRef::WindowFunc(_)
            | NodeRef::WindowFuncRunCondition(_)
            | NodeRef::MergeSupportFunc(_)
            | NodeRef::SubscriptingRef(_)
            | NodeRef::FuncExpr(_)
            | NodeRef::NamedArgExpr(_)
            | NodeRef::OpExpr(_)
            | NodeRef::DistinctExpr(_)
            | NodeRef::NullIfExpr(_)
            | NodeRef::ScalarArrayOpExpr(_)
            | NodeRef::BoolExpr(_)
            | NodeRef::SubLink(_)
            | NodeRef::SubPlan(_)
            | NodeRef::AlternativeSubPlan(_)
            | NodeRef::FieldSelect(_)
            | NodeRef::FieldStore(_)
            | NodeRef::RelabelType(_)
            | NodeRef::CoerceViaIo(_)
            | NodeRef::ArrayCoerceExpr(_)
            | NodeRef::ConvertRowtypeExpr(_)
            | NodeRef::CollateExpr(_)
            | NodeRef::CaseExpr(_)
            | NodeRef::CaseWhen(_)
            | NodeRef::CaseTestExpr(_)
            | NodeRef::ArrayExpr(_)
            | NodeRef::RowExpr(_)
            | NodeRef::RowCompareExpr(_)
            | NodeRef::CoalesceExpr(_)
            | NodeRef::MinMaxExpr(_)
            | NodeRef::SqlvalueFunction(_)
            | NodeRef::XmlExpr(_)
            | NodeRef::JsonFormat(_)
            | NodeRef::JsonReturning(_)
            | NodeRef::JsonValueExpr(_)
            | NodeRef::JsonConstructorExpr(_)
            | NodeRef::JsonIsPredicate(_)
            | NodeRef::JsonBehavior(_)
            | NodeRef::JsonExpr(_)
            | NodeRef::JsonTablePath(_)
            | NodeRef::JsonTablePathScan(_)
            | NodeRef::JsonTableSiblingJoin(_)
            | NodeRef::NullTest(_)
            | NodeRef::BooleanTest(_)
            | NodeRef::MergeAction(_)
            | NodeRef::CoerceToDomain(_)
            | NodeRef::CoerceToDomainValue(_)
            | NodeRef::SetToDefault(_)
            | NodeRef::CurrentOfExpr(_)
            | NodeRef::NextValueExpr(_)
            | NodeRef::InferenceElem(_)
            | NodeRef::ReturningExpr(_)
            | NodeRef::TargetEntry(_)
            | NodeRef::RangeTblRef(_)
            | NodeRef::JoinExpr(_)
            | NodeRef::FromExpr(_)
            | NodeRef::OnConflictExpr(_)
            | NodeRef::Query(_)
            | NodeRef::TypeName(_)
            | NodeRef::ColumnRef(_)
            | NodeRef::ParamRef(_)
            | NodeRef::AExpr(_)
            | NodeRef::TypeCast(_)
            | NodeRef::CollateClause(_)
            | NodeRef::RoleSpec(_)
            | NodeRef::FuncCall(_)
            | NodeRef::AStar(_)
            | NodeRef::AIndices(_)
            | NodeRef::AIndirection(_)
            | NodeRef::AArrayExpr(_)
            | NodeRef::ResTarget(_)
            | NodeRef::MultiAssignRef(_)
            | NodeRef::SortBy(_)
            | NodeRef::WindowDef(_)
            | NodeRef::RangeSubselect(_)
            | NodeRef::RangeFunction(_)
            | NodeRef::RangeTableFunc(_)
            | NodeRef::RangeTableFuncCol(_)
            | NodeRef::RangeTableSample(_)
            | NodeRef::ColumnDef(_)
            | NodeRef::TableLikeClause(_)
            | NodeRef::IndexElem(_)
            | NodeRef::DefElem(_)
            | NodeRef::LockingClause(_)
            | NodeRef::XmlSerialize(_)
            | NodeRef::PartitionElem(_)
            | NodeRef::PartitionSpec(_)
            | NodeRef::PartitionBoundSpec(_)
            | NodeRef::PartitionRangeDatum(_)
            | NodeRef::PartitionCmd(_)
            | NodeRef::AtalterConstraint(_)
            | NodeRef::RangeTblEntry(_)
            | NodeRef::RtepermissionInfo(_)
            | NodeRef::RangeTblFunction(_)
            | NodeRef::TableSampleClause(_)
            | NodeRef::WithCheckOption(_)
            | NodeRef::SortGroupClause(_)
            | NodeRef::GroupingSet(_)
            | NodeRef::WindowClause(_)
            | NodeRef::RowMarkClause(_)
            | NodeRef::WithClause(_)
            | NodeRef::InferClause(_)
            | NodeRef::OnConflictClause(_)
            | NodeRef::CtesearchClause(_)
            | NodeRef::CtecycleClause(_)
            | NodeRef::CommonTableExpr(_)
            | NodeRef::MergeWhenClause(_)
            | NodeRef::ReturningOption(_)
            | NodeRef::ReturningClause(_)
            | NodeRef::TriggerTransition(_)
            | NodeRef::JsonOutput(_)
            | NodeRef::JsonArgument(_)
            | NodeRef::JsonFuncExpr(_)
            | NodeRef::JsonTablePathSpec(_)
            | NodeRef::JsonTable(_)
            | NodeRef::JsonTableColumn(_)
            | NodeRef::JsonKeyValue(_)
            | NodeRef::JsonParseExpr(_)
            | NodeRef::JsonScalarExpr(_)
            | NodeRef::JsonSerializeExpr(_)
            | NodeRef::JsonObjectConstructor(_)
            | NodeRef::JsonArrayConstructor(_)
            | NodeRef::JsonArrayQueryConstructor(_)
            | NodeRef::JsonAggConstructor(_)
            | NodeRef::JsonObjectAgg(_)
            | NodeRef::JsonArrayAgg(_)
            | NodeRef::RawStmt(_)
            | NodeRef::SetOperationStmt(_)
            | NodeRef::ReturnStmt(_)
            | NodeRef::PlassignStmt(_)
            | NodeRef::AlterTableCmd(_)
            | NodeRef::ObjectWithArgs(_)
            | NodeRef::AccessPriv(_)
            | NodeRef::Constraint(_)
            | NodeRef::StatsElem(_)
            | NodeRef::FunctionParameter(_)
            | NodeRef::InlineCodeBlock(_)
            | NodeRef::CallContext(_)
            | NodeRef::CreateOpClassItem(_)
            | NodeRef::PublicationTable(_)
            | NodeRef::PublicationObjSpec(_)
            | NodeRef::VacuumRelation(_)
            | NodeRef::Integer(_)
            | NodeRef::Float(_)
            | NodeRef::Boolean(_)
            | NodeRef::String(_)
            | NodeRef::BitString(_)
            | NodeRef::List(_)
            | NodeRef::IntList(_)
            | NodeRef::OidList(_)
            | NodeRef::AConst(_)
    };
}

/// Whether an object type is a relation (what facts name as tables).
fn is_relation_object(object_type: i32) -> bool {
    use pb::ObjectType as O;
    matches!(
        O::try_from(object_type),
        Ok(O::ObjectTable
            | O::ObjectView
            | O::ObjectMatview
            | O::ObjectForeignTable
            | O::ObjectSequence
            | O::ObjectIndex)
    )
}

fn ddl(command: String) -> (Class, String) {
    (Class::Ddl, command)
}

/// The class and command tag of a statement, from its kind alone (what it
/// calls or nests raises the class later). Exhaustive on purpose: a new
/// statement kind in a grammar upgrade must be looked at before it builds.
fn classify(stmt: NodeRef<'_>) -> (Class, String) {
    use pb::TransactionStmtKind as T;
    let s = |x: &str| x.to_string();
    match stmt {
        NodeRef::SelectStmt(sel) => {
            if sel.into_clause.is_some() {
                (Class::Ddl, s("SELECT INTO"))
            } else {
                (Class::Read, s("SELECT"))
            }
        }
        NodeRef::InsertStmt(_) => (Class::Write, s("INSERT")),
        NodeRef::UpdateStmt(_) => (Class::Write, s("UPDATE")),
        NodeRef::DeleteStmt(_) => (Class::Write, s("DELETE")),
        NodeRef::MergeStmt(_) => (Class::Write, s("MERGE")),
        NodeRef::CopyStmt(c) => {
            if !c.filename.is_empty() || c.is_program {
                (Class::Admin, s("COPY"))
            } else if c.is_from {
                (Class::Write, s("COPY"))
            } else {
                (Class::Read, s("COPY"))
            }
        }
        NodeRef::ExplainStmt(e) => {
            if explain_analyzes(e) {
                let inner = node(&e.query).map_or(Class::Read, |q| classify(q).0);
                (inner.max(Class::Read), s("EXPLAIN"))
            } else {
                (Class::Read, s("EXPLAIN"))
            }
        }
        NodeRef::VariableShowStmt(_) => (Class::Read, s("SHOW")),
        NodeRef::DeclareCursorStmt(d) => {
            let inner = node(&d.query).map_or(Class::Read, |q| classify(q).0);
            (inner, s("DECLARE CURSOR"))
        }
        NodeRef::FetchStmt(f) => (Class::Read, s(if f.ismove { "MOVE" } else { "FETCH" })),
        NodeRef::ClosePortalStmt(_) => (Class::Session, s("CLOSE CURSOR")),
        NodeRef::PrepareStmt(p) => {
            let inner = node(&p.query).map_or(Class::Read, |q| classify(q).0);
            (inner, s("PREPARE"))
        }
        NodeRef::ExecuteStmt(_) => (Class::Read, s("EXECUTE")),
        NodeRef::DeallocateStmt(_) => (Class::Session, s("DEALLOCATE")),
        NodeRef::TransactionStmt(t) => {
            let tag = match T::try_from(t.kind).unwrap_or(T::Undefined) {
                T::TransStmtBegin | T::TransStmtStart => "BEGIN",
                T::TransStmtCommit => "COMMIT",
                T::TransStmtRollback => "ROLLBACK",
                T::TransStmtSavepoint => "SAVEPOINT",
                T::TransStmtRelease => "RELEASE",
                T::TransStmtRollbackTo => "ROLLBACK",
                // Two-phase commit outlives the session: an administrator's tool.
                T::TransStmtPrepare => return (Class::Admin, s("PREPARE TRANSACTION")),
                T::TransStmtCommitPrepared => return (Class::Admin, s("COMMIT PREPARED")),
                T::TransStmtRollbackPrepared => return (Class::Admin, s("ROLLBACK PREPARED")),
                T::Undefined => return (Class::Unknown, String::new()),
            };
            (Class::Transaction, s(tag))
        }
        NodeRef::VariableSetStmt(v) => {
            use pb::VariableSetKind as K;
            let kind = K::try_from(v.kind).unwrap_or(K::Undefined);
            let name = v.name.to_ascii_lowercase();
            let tag = if matches!(kind, K::VarReset | K::VarResetAll) { "RESET" } else { "SET" };
            match kind {
                // RESET ALL also resets the role.
                K::VarResetAll => (Class::Dcl, s(tag)),
                K::VarSetMulti if name == "transaction" || name == "session characteristics" => {
                    (Class::Transaction, s("SET"))
                }
                _ => (catalog::setting_class(&name), s(tag)),
            }
        }
        NodeRef::ConstraintsSetStmt(_) => (Class::Transaction, s("SET CONSTRAINTS")),
        NodeRef::DiscardStmt(_) => (Class::Session, s("DISCARD")),
        NodeRef::ListenStmt(_) => (Class::Session, s("LISTEN")),
        NodeRef::UnlistenStmt(_) => (Class::Session, s("UNLISTEN")),
        NodeRef::NotifyStmt(_) => (Class::Write, s("NOTIFY")),
        NodeRef::LockStmt(_) => (Class::Admin, s("LOCK TABLE")),
        NodeRef::DoStmt(_) => (Class::Procedural, s("DO")),
        NodeRef::CallStmt(_) => (Class::Procedural, s("CALL")),
        NodeRef::TruncateStmt(_) => (Class::Ddl, s("TRUNCATE TABLE")),
        NodeRef::CommentStmt(_) => (Class::Ddl, s("COMMENT")),
        NodeRef::SecLabelStmt(_) => (Class::Ddl, s("SECURITY LABEL")),
        NodeRef::CreateTableAsStmt(c) => {
            if c.objtype == pb::ObjectType::ObjectMatview as i32 {
                (Class::Ddl, s("CREATE MATERIALIZED VIEW"))
            } else if c.is_select_into {
                (Class::Ddl, s("SELECT INTO"))
            } else {
                (Class::Ddl, s("CREATE TABLE AS"))
            }
        }
        NodeRef::RefreshMatViewStmt(_) => (Class::Ddl, s("REFRESH MATERIALIZED VIEW")),
        NodeRef::CreateStmt(_) => (Class::Ddl, s("CREATE TABLE")),
        NodeRef::CreateForeignTableStmt(_) => (Class::Ddl, s("CREATE FOREIGN TABLE")),
        NodeRef::ViewStmt(_) => (Class::Ddl, s("CREATE VIEW")),
        NodeRef::IndexStmt(_) => (Class::Ddl, s("CREATE INDEX")),
        NodeRef::CreateSeqStmt(_) => (Class::Ddl, s("CREATE SEQUENCE")),
        NodeRef::AlterSeqStmt(_) => (Class::Ddl, s("ALTER SEQUENCE")),
        NodeRef::CreateSchemaStmt(c) => {
            // CREATE SCHEMA may carry GRANTs among its elements.
            let inner = nodes(&c.schema_elts).map(|e| classify(e).0).fold(Class::Ddl, Class::max);
            (inner, s("CREATE SCHEMA"))
        }
        NodeRef::CreateFunctionStmt(f) => ddl(s(if f.is_procedure { "CREATE PROCEDURE" } else { "CREATE FUNCTION" })),
        NodeRef::AlterFunctionStmt(f) => ddl(format!("ALTER {}", object_name(f.objtype))),
        NodeRef::CreateTrigStmt(_) => ddl(s("CREATE TRIGGER")),
        NodeRef::RuleStmt(_) => ddl(s("CREATE RULE")),
        NodeRef::CreatePolicyStmt(_) => ddl(s("CREATE POLICY")),
        NodeRef::AlterPolicyStmt(_) => ddl(s("ALTER POLICY")),
        NodeRef::CreateDomainStmt(_) => ddl(s("CREATE DOMAIN")),
        NodeRef::AlterDomainStmt(_) => ddl(s("ALTER DOMAIN")),
        NodeRef::CreateEnumStmt(_) => ddl(s("CREATE TYPE")),
        NodeRef::AlterEnumStmt(_) => ddl(s("ALTER TYPE")),
        NodeRef::CreateRangeStmt(_) => ddl(s("CREATE TYPE")),
        NodeRef::CompositeTypeStmt(_) => ddl(s("CREATE TYPE")),
        NodeRef::AlterTypeStmt(_) => ddl(s("ALTER TYPE")),
        NodeRef::DefineStmt(d) => ddl(format!("CREATE {}", object_name(d.kind))),
        NodeRef::CreateCastStmt(_) => ddl(s("CREATE CAST")),
        NodeRef::CreateConversionStmt(_) => ddl(s("CREATE CONVERSION")),
        NodeRef::CreateOpClassStmt(_) => ddl(s("CREATE OPERATOR CLASS")),
        NodeRef::CreateOpFamilyStmt(_) => ddl(s("CREATE OPERATOR FAMILY")),
        NodeRef::AlterOpFamilyStmt(_) => ddl(s("ALTER OPERATOR FAMILY")),
        NodeRef::AlterOperatorStmt(_) => ddl(s("ALTER OPERATOR")),
        NodeRef::CreateStatsStmt(_) => ddl(s("CREATE STATISTICS")),
        NodeRef::AlterStatsStmt(_) => ddl(s("ALTER STATISTICS")),
        NodeRef::CreateTransformStmt(_) => ddl(s("CREATE TRANSFORM")),
        NodeRef::CreateAmStmt(_) => (Class::Admin, s("CREATE ACCESS METHOD")),
        NodeRef::AlterCollationStmt(_) => ddl(s("ALTER COLLATION")),
        NodeRef::AlterTsconfigurationStmt(_) => ddl(s("ALTER TEXT SEARCH CONFIGURATION")),
        NodeRef::AlterTsdictionaryStmt(_) => ddl(s("ALTER TEXT SEARCH DICTIONARY")),
        NodeRef::AlterTableStmt(a) => {
            (object_class(a.objtype).max(Class::Ddl), format!("ALTER {}", object_name(a.objtype)))
        }
        NodeRef::AlterTableMoveAllStmt(_) => (Class::Admin, s("ALTER TABLE")),
        NodeRef::ReplicaIdentityStmt(_) => ddl(s("ALTER TABLE")),
        NodeRef::RenameStmt(r) => {
            (object_class(r.rename_type).max(Class::Ddl), format!("ALTER {}", object_name(r.rename_type)))
        }
        NodeRef::AlterObjectSchemaStmt(a) => {
            (object_class(a.object_type).max(Class::Ddl), format!("ALTER {}", object_name(a.object_type)))
        }
        NodeRef::AlterObjectDependsStmt(a) => {
            (object_class(a.object_type).max(Class::Ddl), format!("ALTER {}", object_name(a.object_type)))
        }
        NodeRef::AlterOwnerStmt(a) => (Class::Dcl, format!("ALTER {}", object_name(a.object_type))),
        NodeRef::DropStmt(d) => {
            (object_class(d.remove_type).max(Class::Ddl), format!("DROP {}", object_name(d.remove_type)))
        }
        NodeRef::CreateForeignServerStmt(_) => ddl(s("CREATE SERVER")),
        NodeRef::AlterForeignServerStmt(_) => ddl(s("ALTER SERVER")),
        NodeRef::ImportForeignSchemaStmt(_) => ddl(s("IMPORT FOREIGN SCHEMA")),
        NodeRef::CreateFdwStmt(_) => (Class::Admin, s("CREATE FOREIGN DATA WRAPPER")),
        NodeRef::AlterFdwStmt(_) => (Class::Admin, s("ALTER FOREIGN DATA WRAPPER")),
        NodeRef::CreateUserMappingStmt(_) => (Class::Dcl, s("CREATE USER MAPPING")),
        NodeRef::AlterUserMappingStmt(_) => (Class::Dcl, s("ALTER USER MAPPING")),
        NodeRef::DropUserMappingStmt(_) => (Class::Dcl, s("DROP USER MAPPING")),
        NodeRef::GrantStmt(g) => (Class::Dcl, s(if g.is_grant { "GRANT" } else { "REVOKE" })),
        NodeRef::GrantRoleStmt(g) => (Class::Dcl, s(if g.is_grant { "GRANT ROLE" } else { "REVOKE ROLE" })),
        NodeRef::AlterDefaultPrivilegesStmt(_) => (Class::Dcl, s("ALTER DEFAULT PRIVILEGES")),
        NodeRef::CreateRoleStmt(_) => (Class::Dcl, s("CREATE ROLE")),
        NodeRef::AlterRoleStmt(_) => (Class::Dcl, s("ALTER ROLE")),
        NodeRef::AlterRoleSetStmt(_) => (Class::Dcl, s("ALTER ROLE")),
        NodeRef::DropRoleStmt(_) => (Class::Dcl, s("DROP ROLE")),
        NodeRef::DropOwnedStmt(_) => (Class::Dcl, s("DROP OWNED")),
        NodeRef::ReassignOwnedStmt(_) => (Class::Dcl, s("REASSIGN OWNED")),
        NodeRef::CreatedbStmt(_) => (Class::Admin, s("CREATE DATABASE")),
        NodeRef::AlterDatabaseStmt(_) => (Class::Admin, s("ALTER DATABASE")),
        NodeRef::AlterDatabaseSetStmt(_) => (Class::Admin, s("ALTER DATABASE")),
        NodeRef::AlterDatabaseRefreshCollStmt(_) => (Class::Admin, s("ALTER DATABASE")),
        NodeRef::DropdbStmt(_) => (Class::Admin, s("DROP DATABASE")),
        NodeRef::VacuumStmt(v) => (Class::Admin, s(if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" })),
        NodeRef::ClusterStmt(_) => (Class::Admin, s("CLUSTER")),
        NodeRef::ReindexStmt(_) => (Class::Admin, s("REINDEX")),
        NodeRef::CheckPointStmt(_) => (Class::Admin, s("CHECKPOINT")),
        NodeRef::LoadStmt(_) => (Class::Admin, s("LOAD")),
        NodeRef::AlterSystemStmt(_) => (Class::Admin, s("ALTER SYSTEM")),
        NodeRef::CreateTableSpaceStmt(_) => (Class::Admin, s("CREATE TABLESPACE")),
        NodeRef::DropTableSpaceStmt(_) => (Class::Admin, s("DROP TABLESPACE")),
        NodeRef::AlterTableSpaceOptionsStmt(_) => (Class::Admin, s("ALTER TABLESPACE")),
        NodeRef::CreateExtensionStmt(_) => (Class::Admin, s("CREATE EXTENSION")),
        NodeRef::AlterExtensionStmt(_) => (Class::Admin, s("ALTER EXTENSION")),
        NodeRef::AlterExtensionContentsStmt(_) => (Class::Admin, s("ALTER EXTENSION")),
        NodeRef::CreatePlangStmt(_) => (Class::Admin, s("CREATE LANGUAGE")),
        NodeRef::CreateEventTrigStmt(_) => (Class::Admin, s("CREATE EVENT TRIGGER")),
        NodeRef::AlterEventTrigStmt(_) => (Class::Admin, s("ALTER EVENT TRIGGER")),
        NodeRef::CreatePublicationStmt(_) => (Class::Admin, s("CREATE PUBLICATION")),
        NodeRef::AlterPublicationStmt(_) => (Class::Admin, s("ALTER PUBLICATION")),
        NodeRef::CreateSubscriptionStmt(_) => (Class::Admin, s("CREATE SUBSCRIPTION")),
        NodeRef::AlterSubscriptionStmt(_) => (Class::Admin, s("ALTER SUBSCRIPTION")),
        NodeRef::DropSubscriptionStmt(_) => (Class::Admin, s("DROP SUBSCRIPTION")),
        not_a_statement!() => (Class::Unknown, String::new()),
    }
}
