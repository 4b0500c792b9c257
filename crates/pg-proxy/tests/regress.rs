//! A differential test against PostgreSQL itself: the server's own
//! regression tests (`src/test/regress/sql/*.sql` of the Debian source
//! package of the server in use, fetched by `scripts/regress-fetch`, never
//! committed) replayed on a throwaway cluster in `parallel_schedule`'s
//! order, one statement at a time, as psql would send them, each judged by
//! the engine first (an allow-all policy: the comparison reads the facts)
//! with the session's `search_path` kept in step and the database's
//! definitions read from the catalog as the gateway reads them.
//!
//! - For every statement the server plans (`SELECT`, `INSERT`, `UPDATE`,
//!   `DELETE`, `MERGE`, `SELECT INTO`, `CREATE TABLE AS`, `CREATE
//!   MATERIALIZED VIEW`, `DECLARE`), the relations of its plan (`EXPLAIN
//!   (VERBOSE, FORMAT JSON)`, views already expanded) are compared with
//!   the relations the engine names.
//! - For every statement that creates, changes or drops a table, view,
//!   materialized view or foreign table, the relations event triggers
//!   report (`pg_event_trigger_ddl_commands`, and
//!   `pg_event_trigger_dropped_objects` for what it names) are compared
//!   the same way (a `FETCH` with what its cursor's `DECLARE` named).
//!
//! A relation the server read or changed that the engine did not name is a
//! *miss*, unless the engine failed closed (the statement is opaque or
//! `unknown`, which no rule with `tables` allows). A relation counts as
//! named when one of its ancestors is (partitions, inheritance children),
//! when the engine named its whole schema (`s.*`), when it is a system
//! catalog read through a system view the engine named (those are judged
//! by name), or when it is one of the session's temporary relations and
//! the engine named a relation of that name or a temporary view over it
//! (see `testdata/regress/README.md`).
//!
//! By default a bounded slice of the schedule runs (the setup and the
//! files of [`SLICE`]); `PORTCULLIS_REGRESS=all` runs the whole schedule,
//! and `PORTCULLIS_REGRESS=name,name` the files named (after `test_setup`).
//! The report (coverage per file and every miss) is printed and written to
//! `target/regress/report.md`. Misses listed in
//! `testdata/regress/known-misses.txt` are reported but do not fail the
//! test; any other miss fails it, and so does a listed miss that no longer
//! happens (the list stays exact).
//!
//! Without the regression sources the test says how to fetch them and
//! passes when run by hand; under CI (`CI` set) it fails.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_proxy::catalog::Catalog;
use pg_proxy::cluster::{Cluster, ClusterOptions};
use pg_proxy::config::Upstream;
use pg_proxy::upstream::Target;
use policy_core::{Class, Definitions, Engine, Identity, Policy};
use portcullis_testkit::repo;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Every statement allowed by name: the comparison reads the engine's
/// facts, not its verdicts.
const POLICY: &str = r#"
version = 1
[[rule]]
name = "everything"
effect = "allow"
"#;

/// The slice CI runs: the setup, then these files of the schedule.
const SLICE: &[&str] = &[
    "create_function_c",
    "create_misc",
    "create_operator",
    "create_procedure",
    "create_table",
    "create_type",
    "create_schema",
    "create_index",
    "create_view",
    "inherit",
    "triggers",
    "select",
    "select_into",
    "select_distinct",
    "select_distinct_on",
    "select_implicit",
    "select_having",
    "subselect",
    "union",
    "case",
    "join",
    "aggregates",
    "update",
    "delete",
    "insert",
    "insert_conflict",
    "merge",
    "with",
    "rules",
    "matview",
    "rowsecurity",
    "partition_join",
    "partition_prune",
];

/// Commands whose plan `EXPLAIN` shows (without running them).
const PLANNED: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "SELECT INTO",
    "CREATE TABLE AS",
    "CREATE MATERIALIZED VIEW",
    "DECLARE CURSOR",
];

#[test]
fn the_engine_names_every_relation_postgresql_reads_in_its_regression_tests() {
    let Some(regress) = regress_dir() else { return };
    let files = schedule(&regress);
    let started = Instant::now();
    let cluster = Cluster::start(&ClusterOptions::default()).expect("a throwaway cluster");
    cluster.create_database("regression", cluster.superuser()).expect("the regression database");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = rt.block_on(replay(&cluster, &regress, &files));
    let text = report.markdown(started.elapsed());
    println!("{text}");
    let out = repo("target/regress");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), &text).unwrap();

    // The slice and the whole schedule compare thousands; a few files
    // named by hand may compare few.
    let by_hand = std::env::var("PORTCULLIS_REGRESS").is_ok_and(|v| !v.is_empty() && v != "all");
    assert!(by_hand || report.total().compared >= 500, "too few statements compared to mean anything:\n{text}");
    let known = known_misses();
    let found: BTreeSet<String> = report.misses.iter().map(Miss::key).collect();
    let new: Vec<&Miss> = report.misses.iter().filter(|m| !known.contains(&m.key())).collect();
    let ran: BTreeSet<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
    let fixed: Vec<&String> =
        known.iter().filter(|k| !found.contains(*k) && ran.contains(k.split(':').next().unwrap_or_default())).collect();
    assert!(
        new.is_empty() && fixed.is_empty(),
        "misses not in testdata/regress/known-misses.txt: {new:#?}\nlisted misses that no longer happen (remove them): \
         {fixed:#?}\n{text}"
    );
}

// ------------------------------------------------------------ the sources

/// The regression directory, or `None` (after saying why) when it is not
/// there and the test may pass without it.
fn regress_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTCULLIS_REGRESS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/regress/postgresql-15/src/test/regress"));
    if dir.join("parallel_schedule").is_file() {
        return Some(dir.canonicalize().unwrap());
    }
    let message = format!(
        "PostgreSQL's regression tests are not in {}: run scripts/regress-fetch first (or set PORTCULLIS_REGRESS_DIR)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("the_engine_names_every_relation_postgresql_reads: SKIPPED: {message}");
    None
}

/// The files to replay, in the schedule's order.
fn schedule(regress: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(regress.join("parallel_schedule")).unwrap();
    let all: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("test:"))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect();
    let wanted: Option<Vec<String>> = match std::env::var("PORTCULLIS_REGRESS") {
        Ok(v) if v == "all" => None,
        Ok(v) if !v.is_empty() => Some(v.split(',').map(str::to_string).collect()),
        _ => Some(SLICE.iter().map(|s| s.to_string()).collect()),
    };
    match wanted {
        None => all,
        Some(names) => all.into_iter().filter(|f| f == "test_setup" || names.contains(f)).collect(),
    }
}

fn known_misses() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo("testdata/regress/known-misses.txt")).unwrap_or_default();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

// ------------------------------------------------------- psql's splitting

/// One statement of a file, as psql sends it.
struct Statement {
    line: usize,
    sql: String,
    /// The data lines of `COPY ... FROM stdin` (up to `\.`).
    copy_data: Option<String>,
}

/// The statements of a regression file: SQL split at top-level semicolons
/// (a `BEGIN ATOMIC` body is kept whole), psql variables (`\set`,
/// `\getenv`) substituted in `:var`, `:'var'` and `:"var"`, other
/// meta-commands and `COPY ... FROM stdin` data left out.
fn statements(text: &str, vars: &mut HashMap<String, String>) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut buffer = String::new();
    let mut start = 0;
    let mut in_copy_data = false;
    for (n, line) in text.lines().enumerate() {
        if in_copy_data {
            in_copy_data = line != "\\.";
            if let (true, Some(last)) = (in_copy_data, out.last_mut()) {
                let data: &mut String = last.copy_data.get_or_insert_with(String::new);
                data.push_str(line);
                data.push('\n');
            }
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(meta) = trimmed.strip_prefix('\\') {
            meta_command(meta, vars);
            // `\g` and friends send what is buffered.
            if meta.starts_with('g') && !buffer.trim().is_empty() {
                out.push(Statement { line: start + 1, sql: substitute(buffer.trim(), vars), copy_data: None });
                buffer.clear();
            }
            continue;
        }
        // SQL, possibly ended by a meta-command on the same line.
        let (sql, meta) = match find_meta(line) {
            Some(at) => (&line[..at], Some(&line[at + 1..])),
            None => (line, None),
        };
        if buffer.trim().is_empty() {
            buffer.clear();
            start = n;
        }
        buffer.push_str(sql);
        buffer.push('\n');
        if let Some(meta) = meta {
            meta_command(meta, vars);
            out.push(Statement { line: start + 1, sql: substitute(buffer.trim(), vars), copy_data: None });
            buffer.clear();
            continue;
        }
        for piece in complete(&buffer) {
            let sql = substitute(piece.trim(), vars);
            if is_copy_from_stdin(&sql) {
                in_copy_data = true;
            }
            out.push(Statement { line: start + 1, sql, copy_data: None });
        }
        if let Some(rest) = leftover(&buffer) {
            buffer = rest;
        }
    }
    if !buffer.trim().is_empty() {
        out.push(Statement { line: start + 1, sql: substitute(buffer.trim(), vars), copy_data: None });
    }
    out
}

/// The byte where a meta-command starts on a SQL line (a backslash outside
/// quotes followed by a letter), if any.
fn find_meta(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'\\') if bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic) => return Some(i),
            _ => {}
        }
    }
    None
}

fn meta_command(meta: &str, vars: &mut HashMap<String, String>) {
    let mut words = meta.split_whitespace();
    match words.next() {
        Some("set") => {
            let Some(name) = words.next() else { return };
            let value: String = words.map(|w| substitute(w, vars).trim_matches('\'').to_string()).collect();
            vars.insert(name.to_string(), value);
        }
        Some("getenv") => {
            if let (Some(name), Some(env)) = (words.next(), words.next()) {
                if let Some(value) = vars.get(&format!("env:{env}")).cloned() {
                    vars.insert(name.to_string(), value);
                }
            }
        }
        _ => {}
    }
}

/// The complete statements at the start of `buffer` (up to its last
/// top-level semicolon).
fn complete(buffer: &str) -> Vec<String> {
    let Some(ends) = statement_ends(buffer) else { return Vec::new() };
    let mut out = Vec::new();
    let mut from = 0;
    for end in ends {
        out.push(buffer[from..end].to_string());
        from = end;
    }
    out
}

/// What follows the last complete statement.
fn leftover(buffer: &str) -> Option<String> {
    let ends = statement_ends(buffer)?;
    ends.last().map(|&end| buffer[end..].to_string())
}

/// Where each complete statement of `buffer` ends (after its semicolon);
/// `None` while a literal or a `BEGIN ATOMIC` body is still open.
fn statement_ends(buffer: &str) -> Option<Vec<usize>> {
    use pg_query::protobuf::Token;
    // A trailing token: pg_query's scan_tokens builds a slice from a null
    // pointer when a string has no token at all (only comments).
    let tokens = pg_query::scan_tokens(&format!("{buffer}\nx")).ok()?;
    let tokens: Vec<_> =
        tokens.into_iter().filter(|t| usize::try_from(t.start).is_ok_and(|s| s < buffer.len())).collect();
    let atomic = tokens.iter().any(|t| t.token == Token::Atomic as i32);
    let mut depth = 0i32;
    let mut ends = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if atomic {
            let next = tokens.get(i + 1).map(|n| n.token);
            // `BEGIN ATOMIC` opens a body (`BEGIN` alone starts a
            // transaction); `CASE` ... `END` nests in it.
            if (t.token == Token::BeginP as i32 && next == Some(Token::Atomic as i32)) || t.token == Token::Case as i32
            {
                depth += 1;
            } else if t.token == Token::EndP as i32 {
                depth = (depth - 1).max(0);
            }
        }
        if t.token == Token::Ascii59 as i32 && depth == 0 {
            ends.push(usize::try_from(t.end).unwrap());
        }
    }
    (!ends.is_empty()).then_some(ends)
}

/// psql's variable substitution: `:'var'` a literal, `:"var"` an
/// identifier, `:var` the value; unknown names and `::` stay.
fn substitute(sql: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(':') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if after.starts_with(':') {
            out.push_str("::");
            rest = after.strip_prefix(':').unwrap_or(after);
            continue;
        }
        let (quote, body) = match after.chars().next() {
            Some(q @ ('\'' | '"')) => (Some(q), &after[1..]),
            _ => (None, after),
        };
        let len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
        let name = &body[..len];
        let closed = quote.is_none_or(|q| body[len..].starts_with(q));
        match vars.get(name).filter(|_| len > 0 && closed) {
            Some(value) => {
                match quote {
                    Some('\'') => write!(out, "'{}'", value.replace('\'', "''")).unwrap(),
                    Some(_) => write!(out, "\"{}\"", value.replace('"', "\"\"")).unwrap(),
                    None => out.push_str(value),
                }
                rest = &body[len + usize::from(quote.is_some())..];
            }
            None => {
                out.push(':');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_copy_from_stdin(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.starts_with("copy") && lower.contains("from stdin")
}

// -------------------------------------------------------------- replaying

#[derive(Default, Clone, Copy)]
struct Counts {
    statements: usize,
    executed: usize,
    planned: usize,
    compared: usize,
    accepted: usize,
    fail_closed: usize,
    misses: usize,
    system: usize,
    temporary: usize,
    utility: usize,
    utility_accepted: usize,
    utility_fail_closed: usize,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.statements += o.statements;
        self.executed += o.executed;
        self.planned += o.planned;
        self.compared += o.compared;
        self.accepted += o.accepted;
        self.fail_closed += o.fail_closed;
        self.misses += o.misses;
        self.system += o.system;
        self.temporary += o.temporary;
        self.utility += o.utility;
        self.utility_accepted += o.utility_accepted;
        self.utility_fail_closed += o.utility_fail_closed;
    }
}

struct FileReport {
    name: String,
    counts: Counts,
}

#[derive(Debug)]
struct Miss {
    file: String,
    line: usize,
    sql: String,
    relation: String,
    engine: Vec<String>,
}

impl Miss {
    /// How `known-misses.txt` names it: `file:line relation`.
    fn key(&self) -> String {
        format!("{}:{} {}", self.file, self.line, self.relation)
    }
}

#[derive(Default)]
struct Report {
    files: Vec<FileReport>,
    misses: Vec<Miss>,
}

impl Report {
    fn total(&self) -> Counts {
        let mut total = Counts::default();
        for f in &self.files {
            total.add(&f.counts);
        }
        total
    }

    fn markdown(&self, took: Duration) -> String {
        let mut s = String::new();
        let t = self.total();
        writeln!(s, "# Differential test against PostgreSQL's regression tests\n").unwrap();
        writeln!(s, "{} files, {:.0} s.\n", self.files.len(), took.as_secs_f64()).unwrap();
        writeln!(
            s,
            "| file | statements | executed | planned | compared | accepted | fail-closed | utility | utility accepted | \
             utility fail-closed | misses | system views | temporary |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        .unwrap();
        let row = |s: &mut String, name: &str, c: &Counts| {
            writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.statements,
                c.executed,
                c.planned,
                c.compared,
                c.accepted,
                c.fail_closed,
                c.utility,
                c.utility_accepted,
                c.utility_fail_closed,
                c.misses,
                c.system,
                c.temporary
            )
            .unwrap();
        };
        for f in &self.files {
            row(&mut s, &f.name, &f.counts);
        }
        row(&mut s, "**total**", &t);
        writeln!(s, "\n## Misses\n").unwrap();
        if self.misses.is_empty() {
            writeln!(s, "None.").unwrap();
        } else {
            writeln!(s, "| where | relation read | engine named | statement |\n|---|---|---|---|").unwrap();
            for m in &self.misses {
                let sql: String = m.sql.split_whitespace().collect::<Vec<_>>().join(" ");
                let sql: String = sql.chars().take(160).collect();
                writeln!(
                    s,
                    "| {}:{} | `{}` | {} | `{}` |",
                    m.file,
                    m.line,
                    m.relation,
                    m.engine.join(", "),
                    sql.replace('|', "\\|")
                )
                .unwrap();
            }
        }
        s
    }
}

/// The database's views and SQL functions, read from the catalog as the
/// gateway reads them.
struct Views {
    catalog: Catalog,
    watch: tokio::sync::watch::Receiver<Arc<Definitions>>,
}

impl Views {
    async fn new(cluster: &Cluster) -> Views {
        let upstream = Upstream::from_conninfo(&cluster.connection_string("regression"), |_| None)
            .expect("the cluster's conninfo");
        let target = Target::new(&upstream, pg_proxy::codec::DEFAULT_MAX_MESSAGE_BYTES).expect("a target");
        let catalog = Catalog::new(target, Duration::from_secs(3600));
        let watch = catalog.definitions("regression").await;
        Views { catalog, watch }
    }

    async fn reread(&mut self) {
        self.catalog.invalidate("regression").await;
    }

    fn current(&self) -> Arc<Definitions> {
        Arc::clone(&self.watch.borrow())
    }
}

/// A connection to the regression database, and the notices and warnings
/// it receives (among them what the event triggers report).
async fn connect(cluster: &Cluster) -> (Client, UnboundedReceiver<String>) {
    let (client, mut connection) =
        tokio_postgres::connect(&cluster.connection_string("regression"), NoTls).await.expect("connecting");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    let _ = tx.send(n.message().to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    client.batch_execute("SET statement_timeout = '60s'").await.expect("statement_timeout");
    (client, rx)
}

/// Event triggers that report, as warnings, every table, view,
/// materialized view and foreign table a utility statement creates,
/// changes or drops (by name, not by a dependency it cascades to).
const EVENT_TRIGGERS: &str = "
CREATE SCHEMA portcullis_regress;
CREATE FUNCTION portcullis_regress.changed() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.object_type, c.schema_name, k.relname FROM pg_catalog.pg_event_trigger_ddl_commands() c
      JOIN pg_catalog.pg_class k ON c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND k.oid = c.objid
      WHERE c.object_type IN ('table', 'view', 'materialized view', 'foreign table') LOOP
    RAISE WARNING 'portcullis-object|changed|%|%', r.schema_name, r.relname;
  END LOOP;
END $$;
CREATE FUNCTION portcullis_regress.dropped() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT d.schema_name, d.object_name FROM pg_catalog.pg_event_trigger_dropped_objects() d
      WHERE d.original AND d.object_type IN ('table', 'view', 'materialized view', 'foreign table') LOOP
    RAISE WARNING 'portcullis-object|dropped|%|%', r.schema_name, r.object_name;
  END LOOP;
END $$;
CREATE EVENT TRIGGER portcullis_regress_changed ON ddl_command_end EXECUTE FUNCTION portcullis_regress.changed();
CREATE EVENT TRIGGER portcullis_regress_dropped ON sql_drop EXECUTE FUNCTION portcullis_regress.dropped();
";

/// What the event triggers reported since the last call: `(what,
/// schema, relation)`, the session's temporary schema as `pg_temp`.
fn changed_objects(notices: &mut UnboundedReceiver<String>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    while let Ok(n) = notices.try_recv() {
        let mut parts = n.splitn(4, '|');
        if let (Some("portcullis-object"), Some(what), Some(schema), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let schema = if schema.starts_with("pg_temp") { "pg_temp" } else { schema };
            out.push((what.to_string(), schema.to_string(), name.to_string()));
        }
    }
    out
}

async fn replay(cluster: &Cluster, regress: &Path, files: &[String]) -> Report {
    let engine = Engine::new(Policy::from_toml_str(POLICY, "regress.toml").unwrap(), Default::default()).unwrap();
    let identity = Identity::new("regress");
    let mut views = Views::new(cluster).await;
    let mut report = Report::default();
    connect(cluster).await.0.batch_execute(EVENT_TRIGGERS).await.expect("the event triggers");
    let builddir = repo("target/regress/build");
    std::fs::create_dir_all(&builddir).unwrap();
    for file in files {
        let Ok(text) = std::fs::read_to_string(regress.join("sql").join(format!("{file}.sql"))) else { continue };
        let mut vars = HashMap::from([
            ("env:PG_ABS_SRCDIR".to_string(), regress.display().to_string()),
            ("env:PG_ABS_BUILDDIR".to_string(), builddir.display().to_string()),
            ("env:PG_LIBDIR".to_string(), cluster.bin_dir().display().to_string()),
            ("env:PG_DLSUFFIX".to_string(), ".so".to_string()),
        ]);
        let (mut client, mut notices) = connect(cluster).await;
        let mut session = engine.new_session();
        session.definitions = Some(views.current());
        let mut counts = Counts::default();
        let (mut stale, mut changed) = (false, false);
        let mut cursors: HashMap<String, Arc<policy_core::StatementFacts>> = HashMap::new();
        let file_started = Instant::now();
        for statement in statements(&text, &mut vars) {
            if statement.sql.trim_end_matches(';').trim().is_empty() {
                continue;
            }
            if client.is_closed() {
                (client, notices) = connect(cluster).await;
                session = engine.new_session();
                session.definitions = Some(views.current());
                (stale, changed) = (false, false);
            }
            counts.statements += 1;
            let decision = engine.decide(&identity, &session, &statement.sql);
            let facts = decision.statements.first().map(|s| Arc::clone(&s.facts));
            let planned =
                facts.as_ref().is_some_and(|f| decision.statements.len() == 1 && PLANNED.contains(&f.command.as_str()));
            // Compared before the statement runs: an error in a
            // transaction block would leave nothing to ask the catalog.
            let plan = if planned { explain(&client, &statement.sql).await } else { None };
            let outcome = match (plan, &facts) {
                (Some(_), Some(facts)) if facts.opaque || facts.class == Class::Unknown => Some(None),
                (Some(plan), Some(facts)) => Some(Some(compare(&client, facts, plan).await)),
                _ => None,
            };
            changed_objects(&mut notices);
            let ran = run(&client, &statement).await;
            let objects = changed_objects(&mut notices);
            if ran {
                counts.executed += 1;
                for s in decision.statements.iter() {
                    for effect in &s.facts.session_effects {
                        session.apply(effect);
                    }
                }
                // As the gateway does: the catalog is read again once what
                // changed it is committed; until then, in a transaction,
                // a change to views or functions leaves them unknown.
                stale |= decision.statements.iter().any(|s| {
                    !matches!(s.facts.class, Class::Read | Class::Write | Class::Transaction | Class::Session)
                });
                changed |= decision.statements.iter().any(|s| s.facts.changes_definitions);
            }
            if stale && session.transaction.is_none() {
                views.reread().await;
                (stale, changed) = (false, false);
            }
            session.definitions = Some(if changed {
                Arc::new(Definitions::unavailable("views or functions changed in this transaction"))
            } else {
                views.current()
            });
            // A cursor runs its query when fetched from: judged when it
            // was declared.
            let portal = portal_name(&statement.sql);
            let judged = match (&facts, &portal) {
                (Some(f), Some(name)) if f.command == "DECLARE CURSOR" => {
                    cursors.insert(name.clone(), Arc::clone(f));
                    facts.clone()
                }
                (Some(f), Some(name)) if f.command == "FETCH" || f.command == "MOVE" => {
                    cursors.get(name).cloned().or_else(|| facts.clone())
                }
                _ => facts.clone(),
            };
            if ran && !objects.is_empty() {
                counts.utility += 1;
                match &judged {
                    Some(f) if decision.statements.len() == 1 && !f.opaque && f.class != Class::Unknown => {
                        let named: BTreeSet<&str> = f.tables.iter().map(String::as_str).collect();
                        let bare: BTreeSet<&str> = named.iter().map(|t| t.rsplit('.').next().unwrap_or(t)).collect();
                        let mut missed = Vec::new();
                        for (what, schema, name) in &objects {
                            // REFRESH MATERIALIZED VIEW CONCURRENTLY's own
                            // scratch tables.
                            if schema == "pg_temp" && name.starts_with("pg_temp_") {
                                continue;
                            }
                            if named.contains(relation_name(schema, name).as_str())
                                || named.contains(relation_name(schema, "*").as_str())
                                || (schema == "pg_temp" && bare.contains(name.as_str()))
                            {
                                continue;
                            }
                            missed.push(format!("{what}: {schema}.{name}"));
                        }
                        if missed.is_empty() {
                            counts.utility_accepted += 1;
                        }
                        for relation in missed {
                            counts.misses += 1;
                            report.misses.push(Miss {
                                file: file.clone(),
                                line: statement.line,
                                sql: statement.sql.clone(),
                                relation,
                                engine: f.tables.clone(),
                            });
                        }
                    }
                    _ => counts.utility_fail_closed += 1,
                }
            }
            let Some(outcome) = outcome else { continue };
            counts.planned += 1;
            let Some(comparison) = outcome else {
                counts.fail_closed += 1;
                continue;
            };
            counts.compared += 1;
            counts.system += comparison.system;
            counts.temporary += comparison.temporary;
            if comparison.missed.is_empty() {
                counts.accepted += 1;
            }
            for relation in comparison.missed {
                counts.misses += 1;
                report.misses.push(Miss {
                    file: file.clone(),
                    line: statement.line,
                    sql: statement.sql.clone(),
                    relation,
                    engine: facts.as_ref().map(|f| f.tables.clone()).unwrap_or_default(),
                });
            }
        }
        eprintln!(
            "regress: {file}: {} statements, {} compared, {} utility, {} misses ({:.1} s)",
            counts.statements,
            counts.compared,
            counts.utility,
            counts.misses,
            file_started.elapsed().as_secs_f64()
        );
        report.files.push(FileReport { name: file.clone(), counts });
    }
    report
}

/// The cursor a `DECLARE`, `FETCH` or `MOVE` names.
fn portal_name(sql: &str) -> Option<String> {
    use pg_query::NodeEnum;
    let parsed = pg_query::parse(sql, 0).ok()?;
    let raw = parsed.protobuf.stmts.first()?;
    match raw.stmt.as_ref()?.node.as_ref()? {
        NodeEnum::DeclareCursorStmt(d) => Some(d.portalname.clone()),
        NodeEnum::FetchStmt(f) => Some(f.portalname.clone()),
        _ => None,
    }
}

/// Runs one statement as psql would (`COPY ... FROM stdin` with its data
/// lines); whether the server accepted it.
async fn run(client: &Client, statement: &Statement) -> bool {
    use futures_util::SinkExt as _;
    if !is_copy_from_stdin(&statement.sql) {
        return client.simple_query(&statement.sql).await.is_ok();
    }
    let Ok(sink) = client.copy_in::<_, bytes::Bytes>(&statement.sql).await else { return false };
    let mut sink = Box::pin(sink);
    let data = statement.copy_data.clone().unwrap_or_default();
    if sink.send(bytes::Bytes::from(data)).await.is_err() {
        return false;
    }
    sink.as_mut().finish().await.is_ok()
}

/// The relations the server's plan for `sql` reads, `None` when it cannot
/// plan it (an error, a statement that does not plan).
async fn explain(client: &Client, sql: &str) -> Option<BTreeSet<(String, String)>> {
    let messages = client.simple_query(&format!("EXPLAIN (VERBOSE, FORMAT JSON) {sql}")).await.ok()?;
    let text = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })?;
    let plan: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut out = BTreeSet::new();
    collect_relations(&plan, &mut out);
    Some(out)
}

fn collect_relations(v: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        serde_json::Value::Object(o) => {
            if let (Some(serde_json::Value::String(r)), Some(serde_json::Value::String(s))) =
                (o.get("Relation Name"), o.get("Schema"))
            {
                out.insert((s.clone(), r.clone()));
            }
            o.values().for_each(|x| collect_relations(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_relations(x, out)),
        _ => {}
    }
}

/// How the relations a plan reads compare with those the engine named.
struct Comparison {
    /// Read by the server, named by the engine neither themselves nor
    /// through an ancestor.
    missed: Vec<String>,
    /// System catalogs read through a system view the engine named (the
    /// engine judges system views by name).
    system: usize,
    /// Temporary relations of the session, named by the engine through the
    /// path's schemas, or read through a temporary view it named.
    temporary: usize,
}

async fn compare(client: &Client, facts: &policy_core::StatementFacts, plan: BTreeSet<(String, String)>) -> Comparison {
    let named: BTreeSet<&str> = facts.tables.iter().map(String::as_str).collect();
    let bare = |t: &str| t.rsplit('.').next().unwrap_or(t).to_string();
    let named_bare: BTreeSet<String> = named.iter().map(|t| bare(t)).collect();
    let names_system = named.iter().any(|t| t.starts_with("pg_catalog.") || t.starts_with("information_schema."));
    let mut temp_relations: Option<BTreeSet<String>> = None;
    let mut out = Comparison { missed: Vec::new(), system: 0, temporary: 0 };
    for (schema, relation) in plan {
        let lineage = ancestors(client, &schema, &relation).await;
        if lineage.iter().any(|r| named.contains(r.as_str())) {
            continue;
        }
        if schema == "pg_temp" {
            if lineage.iter().any(|r| named_bare.contains(&bare(r))) {
                out.temporary += 1;
                continue;
            }
            if temp_relations.is_none() {
                temp_relations = Some(query_names(client, TEMP_RELATIONS_SQL).await);
            }
            if temp_relations.as_ref().is_some_and(|t| named_bare.iter().any(|n| t.contains(n))) {
                out.temporary += 1;
                continue;
            }
        }
        if (schema == "pg_catalog" || schema == "information_schema") && names_system {
            out.system += 1;
            continue;
        }
        out.missed.push(format!("{schema}.{relation}"));
    }
    out
}

/// `schema.relation` as facts write it (a part holding `.` or `"` quoted).
fn relation_name(schema: &str, relation: &str) -> String {
    let column = policy_core::ColumnInfo::source_name(schema, relation, "x");
    column.strip_suffix(".x").unwrap_or(&column).to_string()
}

/// The relations in the session's temporary schema.
const TEMP_RELATIONS_SQL: &str =
    "SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()";

async fn query_names(client: &Client, sql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(messages) = client.simple_query(sql).await {
        for m in messages {
            if let SimpleQueryMessage::Row(r) = m {
                out.extend(r.get(0).map(str::to_string));
            }
        }
    }
    out
}

/// `schema.relation` and every relation it inherits from (a partition's
/// parents, an inheritance child's parents), as facts name them; the
/// session's temporary schema is `pg_temp`, as `EXPLAIN` writes it.
async fn ancestors(client: &Client, schema: &str, relation: &str) -> Vec<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let namespace = if schema == "pg_temp" {
        "pg_catalog.pg_my_temp_schema()".to_string()
    } else {
        format!("(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = {})", quote(schema))
    };
    let sql = format!(
        "WITH RECURSIVE up(oid) AS (SELECT c.oid FROM pg_catalog.pg_class c \
         WHERE c.relnamespace = {namespace} AND c.relname = {} \
         UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid) \
         SELECT CASE WHEN c.relnamespace = pg_catalog.pg_my_temp_schema() THEN 'pg_temp' ELSE n.nspname END, \
         c.relname FROM up JOIN pg_catalog.pg_class c ON c.oid = up.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        quote(relation)
    );
    let mut out = vec![relation_name(schema, relation)];
    if let Ok(messages) = client.simple_query(&sql).await {
        for m in messages {
            if let SimpleQueryMessage::Row(r) = m {
                if let (Some(s), Some(t)) = (r.get(0), r.get(1)) {
                    out.push(relation_name(s, t));
                }
            }
        }
    }
    out
}

#[test]
fn psql_splitting_of_regression_files() {
    let mut vars = HashMap::from([("env:PG_ABS_SRCDIR".to_string(), "/src".to_string())]);
    let text = "\\getenv abs_srcdir PG_ABS_SRCDIR\n\\set filename :abs_srcdir '/data/onek.data'\n\
                SELECT 1; SELECT ':x'::text,\n  2;\nCOPY t FROM :'filename';\nCOPY t FROM stdin;\n1\n\\.\n\
                CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;\n\
                SELECT 3 \\gset\nBEGIN;\nEND;\n";
    let got: Vec<String> = statements(text, &mut vars).into_iter().map(|s| s.sql).collect();
    assert_eq!(
        got,
        [
            "SELECT 1;",
            "SELECT ':x'::text,\n  2;",
            "COPY t FROM '/src/data/onek.data';",
            "COPY t FROM stdin;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;",
            "SELECT 3",
            "BEGIN;",
            "END;",
        ]
    );
}
