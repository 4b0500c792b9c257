//! What the gateway reads from the database's catalog: which table column
//! a result column is, and the database's views and functions.
//!
//! RowDescription gives, for a column that is a plain reference to a table
//! column, the table's OID and the column's attribute number. Masks are
//! written against `schema.table.column` names, so the gateway resolves the
//! OID through the catalog (`pg_class`, `pg_namespace`, `pg_attribute`)
//! once, over a connection of its own to the same database, and caches the
//! answer per database. The cache of a database is dropped whenever a
//! session there completes DDL (a renamed column must not keep its old
//! name's mask), and it holds at most [`MAX_TABLES`] tables per database.
//!
//! A connection the server ended since its last use is replaced, and the
//! lookup tried once more on the new one. A lookup that fails (the
//! connection cannot be made, the query fails) leaves the column
//! unresolved: the engine then judges it by the
//! statement's lineage alone, and a column whose lineage cannot be proven
//! is masked whole.
//!
//! The definitions of a database ([`Catalog::definitions`]) are read
//! whole, once, when its first session starts: every view and materialized
//! view outside `pg_catalog` and `information_schema`, with its columns and
//! its definition as `pg_get_viewdef` writes it, and every function there,
//! with its language, body (a SQL-standard body as `pg_get_functiondef`
//! writes it) and `SET search_path`, every rewrite rule that is not a
//! view's own (`pg_get_ruledef`), and the row-level security policies of
//! the tables whose row security is on (`pg_get_expr` of their `USING`
//! and `WITH CHECK`), the functions the tables' triggers run, and the
//! relations a superuser put in `pg_catalog`.
//! The catalog connection's `search_path`
//! is empty, so every name outside `pg_catalog` comes qualified. Sessions
//! share them through a watch channel. They are read again when a session
//! completes DDL (before that session's client hears back; when the
//! transaction it ran in ends, for DDL in a transaction block), and a task
//! checks every `[catalog] refresh_interval` whether another connection
//! changed them: it compares a fingerprint of `pg_class`, `pg_namespace`,
//! `pg_rewrite`, `pg_proc`, `pg_policy`, `pg_trigger` and the views' columns (row counts and the sum
//! of their `xmin`) and reads the definitions again when it moved. When
//! they cannot be read, sessions get [`Definitions::unavailable`], and
//! statements naming relations are not allowed until they can.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use policy_core::{ColumnInfo, Definitions, Function, FunctionBody, RowPolicy, Session, View, ViewKind};
use tokio::sync::{watch, Mutex};

use crate::upstream::{self, Connection, Target, UpstreamError};

/// Most tables cached per database before the cache is cleared.
pub const MAX_TABLES: usize = 10_000;

/// A table's qualified name and its columns by attribute number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Column names by attribute number.
    pub columns: HashMap<i16, String>,
}

impl Table {
    /// `schema.table.column` for attribute `attnum`, as masks name it.
    pub fn column(&self, attnum: i16) -> Option<String> {
        self.columns.get(&attnum).map(|c| ColumnInfo::source_name(&self.schema, &self.name, c))
    }
}

#[derive(Default)]
struct Database {
    conn: Option<Connection>,
    tables: HashMap<u32, Arc<Table>>,
    /// The views, while sessions watch them.
    views: Option<WatchedDefinitions>,
}

struct WatchedDefinitions {
    tx: watch::Sender<Arc<Definitions>>,
    /// The fingerprint the views were read at (`None` when they could not
    /// be read).
    fingerprint: Option<String>,
}

/// The catalog cache of a gateway, for every database it serves.
pub struct Catalog {
    target: Target,
    refresh_interval: Duration,
    databases: Mutex<HashMap<String, Arc<Mutex<Database>>>>,
}

/// What moves when a view or a function is created, replaced, dropped or
/// renamed, a view's columns renamed, a relation or a schema created,
/// renamed or moved: row counts and the sum of the rows' `xmin` (a changed
/// row is a new version with a newer one).
const FINGERPRINT_SQL: &str = "SELECT \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_class) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_namespace) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_rewrite) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_proc) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(a.xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
        WHERE c.relkind IN ('v', 'm')) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_policy) || ' ' || \
    (SELECT pg_catalog.count(*)::pg_catalog.text || '/' || \
        COALESCE(pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8), 0)::pg_catalog.text \
        FROM pg_catalog.pg_trigger)";

/// The triggers the server fires (not its internal ones, not disabled)
/// on relations outside the system schemas, with the function each runs.
const TRIGGERS_SQL: &str = "SELECT n.nspname, c.relname, fn.nspname, p.proname \
    FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid JOIN pg_catalog.pg_namespace fn ON fn.oid = p.pronamespace \
    WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Every rewrite rule outside the system schemas other than a view's own
/// (`_RETURN`), as a whole `CREATE RULE` (qualified).
const RULES_SQL: &str = "SELECT n.nspname, c.relname, pg_catalog.pg_get_ruledef(r.oid) \
    FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE r.rulename <> '_RETURN' AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// The relations in `pg_catalog` that are not the server's own (a
/// superuser moved them there).
const CATALOG_RELATIONS_SQL: &str = "SELECT c.relname FROM pg_catalog.pg_class c \
    WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.oid >= 16384";

/// The row-level security policies of every table whose row security is
/// on, outside the system schemas: their expressions (qualified).
const ROW_POLICIES_SQL: &str = "SELECT n.nspname, c.relname, \
    pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
    FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relrowsecurity AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Every view and materialized view outside the system schemas, with its
/// definition (qualified: the catalog connection's `search_path` is empty).
const VIEWS_SQL: &str = "SELECT n.nspname, c.relname, c.relkind, pg_catalog.pg_get_viewdef(c.oid) \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// How long a catalog read waits for a lock a client's transaction holds.
const LOCK_TIMEOUT_SQL: &str = "SET lock_timeout = '2s'";

/// Their columns, in order.
const VIEW_COLUMNS_SQL: &str = "SELECT n.nspname, c.relname, a.attname \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
    WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
    AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.oid, a.attnum";

/// Every function outside the system schemas: its language, its body (a
/// SQL-standard body as the whole `CREATE FUNCTION`, qualified), whether
/// the body is SQL-standard, and the `search_path` its `SET` clause gives
/// it. `{STANDARD}` stands for the test of a SQL-standard body, which
/// servers before 14 do not have.
const FUNCTIONS_SQL: &str = "SELECT n.nspname, p.proname, l.lanname, \
    CASE WHEN {STANDARD} THEN pg_catalog.pg_get_functiondef(p.oid) ELSE p.prosrc END, \
    CASE WHEN {STANDARD} THEN 't' ELSE 'f' END, \
    (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(p.proconfig) AS c WHERE c LIKE 'search_path=%') \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')";

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// A catalog reaching the server through `target`, checking for views
    /// changed by other connections every `refresh_interval`.
    pub fn new(target: Target, refresh_interval: Duration) -> Catalog {
        Catalog { target, refresh_interval, databases: Mutex::new(HashMap::new()) }
    }

    /// The views of `database`, kept current: read now if no session there
    /// watches them yet (see the module docs).
    pub async fn definitions(&self, database: &str) -> watch::Receiver<Arc<Definitions>> {
        let db = self.database(database).await;
        let mut guard = db.lock().await;
        if guard.views.as_ref().is_some_and(|w| w.fingerprint.is_none()) {
            // The last read failed (the server was away, or restarting): a
            // session starting now has just logged in, so the server is
            // back; read again before it decides anything, rather than at
            // the next refresh (every session of the database gets it).
            guard.refresh_definitions(&self.target, database, false).await;
        }
        if let Some(watched) = &guard.views {
            return watched.tx.subscribe();
        }
        let (views, fingerprint) = guard.read_definitions(&self.target, database).await;
        let (tx, rx) = watch::channel(views);
        guard.views = Some(WatchedDefinitions { tx, fingerprint });
        drop(guard);
        let (target, interval, name) = (self.target.clone(), self.refresh_interval, database.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let mut guard = db.lock().await;
                if guard.views.as_ref().is_none_or(|w| w.tx.receiver_count() == 0) {
                    // No session watches them any more.
                    guard.views = None;
                    return;
                }
                guard.refresh_definitions(&target, &name, false).await;
            }
        });
        rx
    }

    async fn database(&self, name: &str) -> Arc<Mutex<Database>> {
        let mut dbs = self.databases.lock().await;
        Arc::clone(dbs.entry(name.to_string()).or_default())
    }

    /// The tables with these OIDs in `database` (those that exist and could
    /// be looked up).
    pub async fn tables(&self, database: &str, oids: &[u32]) -> HashMap<u32, Arc<Table>> {
        let db = self.database(database).await;
        let mut db = db.lock().await;
        let missing: Vec<String> =
            oids.iter().filter(|o| **o != 0 && !db.tables.contains_key(o)).map(u32::to_string).collect();
        if !missing.is_empty() {
            // The OIDs are integers the gateway formats itself.
            let sql = format!(
                "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid IN ({}) AND a.attnum > 0 AND NOT a.attisdropped",
                missing.join(",")
            );
            if let Some(rows) = self.query(&mut db, database, &sql).await {
                if db.tables.len() + missing.len() > MAX_TABLES {
                    db.tables.clear();
                }
                let mut found: HashMap<u32, Table> = HashMap::new();
                for row in rows {
                    let [Some(oid), Some(schema), Some(name), Some(attnum), Some(attname)] = row.as_slice() else {
                        continue;
                    };
                    let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else { continue };
                    let table = found.entry(oid).or_insert_with(|| Table {
                        schema: schema.clone(),
                        name: name.clone(),
                        columns: HashMap::new(),
                    });
                    table.columns.insert(attnum, attname.clone());
                }
                for (oid, table) in found {
                    db.tables.insert(oid, Arc::new(table));
                }
            }
        }
        oids.iter().filter_map(|o| db.tables.get(o).map(|t| (*o, Arc::clone(t)))).collect()
    }

    /// The columns `COPY table TO STDOUT` writes, in order, as masks name
    /// them (name and source `schema.table.column`) with their type OIDs
    /// (which binary COPY needs): `table` is a name as facts write it
    /// (`schema.table`). `None` when the table cannot be looked up.
    pub async fn copy_columns(&self, database: &str, table: &str) -> Option<Vec<ColumnInfo>> {
        let parts = ColumnInfo::split_name(table)?;
        let [schema, name] = parts.as_slice() else { return None };
        let sql = format!(
            "SELECT a.attname, a.atttypid FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' ORDER BY a.attnum",
            literal(schema),
            literal(name)
        );
        let db = self.database(database).await;
        let mut db = db.lock().await;
        let rows = self.query(&mut db, database, &sql).await?;
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = row.into_iter();
            let (Some(Some(column)), Some(Some(type_oid))) = (values.next(), values.next()) else { return None };
            let source = ColumnInfo::source_name(schema, name, &column);
            columns.push(ColumnInfo::new(&source, Some(&source), type_oid.parse().ok()?, false));
        }
        Some(columns)
    }

    /// The names of the columns of `table` (`schema.table` as facts write
    /// it) in order, as a whole row of it lists them (every column that
    /// is not dropped, generated ones included). `None` when there is no
    /// such table or it cannot be looked up.
    pub async fn row_fields(&self, database: &str, table: &str) -> Option<Vec<String>> {
        let parts = ColumnInfo::split_name(table)?;
        let [schema, name] = parts.as_slice() else { return None };
        let sql = format!(
            "SELECT a.attname FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            literal(schema),
            literal(name)
        );
        let db = self.database(database).await;
        let mut db = db.lock().await;
        let rows = self.query(&mut db, database, &sql).await?;
        let names: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        (!names.is_empty()).then_some(names)
    }

    /// Runs one of the gateway's catalog queries on the database's own
    /// connection (made when needed, dropped after a failure).
    async fn query(&self, db: &mut Database, database: &str, sql: &str) -> Option<Vec<Vec<Option<String>>>> {
        db.query(&self.target, database, sql).await.ok()
    }

    /// Forgets what is cached for `database` (after DDL there), and reads
    /// its views again.
    pub async fn invalidate(&self, database: &str) {
        let db = self.database(database).await;
        let mut db = db.lock().await;
        db.tables.clear();
        db.refresh_definitions(&self.target, database, true).await;
    }
}

impl Database {
    /// Runs one catalog query on the connection (made when needed, dropped
    /// after a failure); the error says why, without the query's data.
    ///
    /// A connection kept from earlier may have been closed by the server
    /// since (a restart, an idle timeout, a terminated backend): when it
    /// fails as a connection rather than with the query's own error, the
    /// query is tried once more on a new one, so a stale connection is
    /// never what a session's decision waits on.
    async fn query(&mut self, target: &Target, database: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let kept = self.conn.is_some();
        let result = match self.query_once(target, database, sql).await {
            Err(Lookup::Connection(e)) if kept => {
                tracing::info!(database, "catalog connection lost ({e}); connecting again");
                self.query_once(target, database, sql).await
            }
            other => other,
        };
        result.map_err(|lookup| match lookup {
            Lookup::Connection(message) => {
                tracing::warn!(database, "{message}");
                message
            }
            Lookup::Query(message) => message,
        })
    }

    async fn query_once(
        &mut self,
        target: &Target,
        database: &str,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, Lookup> {
        if self.conn.is_none() {
            // An empty search_path: pg_get_viewdef qualifies every name
            // outside pg_catalog.
            let params = [("application_name", "portcullis-catalog"), ("client_encoding", "UTF8"), ("search_path", "")];
            match upstream::connect(target, database, &params).await {
                Ok(mut c) => {
                    // A client's open transaction may hold a lock on a
                    // view (ALTER VIEW, DROP ... CASCADE): the catalog
                    // read gives up after a while rather than wait for it
                    // (the views are unavailable meanwhile, and read again
                    // at the next refresh).
                    if let Err(e) = c.simple_query(LOCK_TIMEOUT_SQL, target.max_message_bytes).await {
                        tracing::warn!(database, "catalog connection setup failed: {e}");
                        return Err(Lookup::Query(format!("catalog connection setup failed: {e}")));
                    }
                    self.conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(database, "catalog connection failed: {e}");
                    return Err(Lookup::Query(format!("catalog connection failed: {e}")));
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else { return Err(Lookup::Query("no catalog connection".to_string())) };
        match conn.simple_query(sql, target.max_message_bytes).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                self.conn = None;
                let message = format!("catalog lookup failed: {e}");
                if is_connection_lost(&e) {
                    return Err(Lookup::Connection(message));
                }
                tracing::warn!(database, "{message}");
                Err(Lookup::Query(message))
            }
        }
    }

    /// Reads the views and the fingerprint they were read at.
    async fn read_definitions(&mut self, target: &Target, database: &str) -> (Arc<Definitions>, Option<String>) {
        match self.try_read_definitions(target, database).await {
            Ok((views, fingerprint)) => (Arc::new(views), Some(fingerprint)),
            Err(reason) => (Arc::new(Definitions::unavailable(reason)), None),
        }
    }

    async fn try_read_definitions(&mut self, target: &Target, database: &str) -> Result<(Definitions, String), String> {
        // The fingerprint first: a change after it is seen at the next check.
        let fingerprint = self.fingerprint(target, database).await?;
        let defs = self.query(target, database, VIEWS_SQL).await?;
        let column_rows = self.query(target, database, VIEW_COLUMNS_SQL).await?;
        let mut columns: HashMap<(String, String), Vec<String>> = HashMap::new();
        for row in column_rows {
            let [Some(schema), Some(name), Some(column)] = <[Option<String>; 3]>::try_from(row).unwrap_or_default()
            else {
                return Err("a view column row the gateway cannot read".to_string());
            };
            columns.entry((schema, name)).or_default().push(column);
        }
        let mut views = Definitions::new();
        for row in defs {
            let [Some(schema), Some(name), Some(kind), definition] =
                <[Option<String>; 4]>::try_from(row).unwrap_or_default()
            else {
                return Err("a view row the gateway cannot read".to_string());
            };
            let kind = if kind == "m" { ViewKind::Materialized } else { ViewKind::View };
            let cols = columns.remove(&(schema.clone(), name.clone())).unwrap_or_default();
            // A definition the server would not give reads as no query:
            // the engine then refuses what names the view.
            views.insert(&schema, &name, View::new(kind, cols, definition.unwrap_or_default()));
        }
        let version = self.query(target, database, "SELECT pg_catalog.current_setting('server_version_num')").await?;
        let version: u32 =
            version.first().and_then(|r| r.first()).cloned().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
        let standard = if version >= 140_000 { "p.prosqlbody IS NOT NULL" } else { "false" };
        for row in self.query(target, database, &FUNCTIONS_SQL.replace("{STANDARD}", standard)).await? {
            let [Some(schema), Some(name), Some(language), body, Some(standard), path] =
                <[Option<String>; 6]>::try_from(row).unwrap_or_default()
            else {
                return Err("a function row the gateway cannot read".to_string());
            };
            let body = match (language.as_str(), body) {
                ("sql", Some(text)) if standard == "t" => FunctionBody::Standard(text),
                ("sql", Some(text)) => FunctionBody::Sql(text),
                _ => FunctionBody::Other { language },
            };
            // A SET search_path the gateway cannot read: the body is read
            // with an empty path, where unqualified names are opaque.
            let path = path.map(|p| Session::search_path_from_setting(&p).unwrap_or_default());
            views.insert_function(&schema, &name, Function::new(body, path));
        }
        for row in self.query(target, database, RULES_SQL).await? {
            let [Some(schema), Some(name), definition] = <[Option<String>; 3]>::try_from(row).unwrap_or_default()
            else {
                return Err("a rule row the gateway cannot read".to_string());
            };
            // A rule the server would not write out reads as no statement:
            // the engine then refuses what writes its relation.
            views.insert_rule(&schema, &name, definition.unwrap_or_default());
        }
        for row in self.query(target, database, ROW_POLICIES_SQL).await? {
            let [Some(schema), Some(name), using, check] = <[Option<String>; 4]>::try_from(row).unwrap_or_default()
            else {
                return Err("a row security policy row the gateway cannot read".to_string());
            };
            views.insert_row_policy(&schema, &name, RowPolicy::new(using, check));
        }
        for row in self.query(target, database, TRIGGERS_SQL).await? {
            let [Some(schema), Some(name), Some(function_schema), Some(function)] =
                <[Option<String>; 4]>::try_from(row).unwrap_or_default()
            else {
                return Err("a trigger row the gateway cannot read".to_string());
            };
            views.insert_trigger(&schema, &name, &function_schema, &function);
        }
        for row in self.query(target, database, CATALOG_RELATIONS_SQL).await? {
            let [Some(name)] = <[Option<String>; 1]>::try_from(row).unwrap_or_default() else {
                return Err("a catalog relation row the gateway cannot read".to_string());
            };
            views.insert_catalog_relation(&name);
        }
        tracing::debug!(database, views = views.len(), "views, functions, rules and policies read from the catalog");
        Ok((views, fingerprint))
    }

    async fn fingerprint(&mut self, target: &Target, database: &str) -> Result<String, String> {
        let rows = self.query(target, database, FINGERPRINT_SQL).await?;
        rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).ok_or_else(|| "no fingerprint".to_string())
    }

    /// Reads the views again when they may have changed (always when
    /// `force`), and hands them to the sessions watching.
    async fn refresh_definitions(&mut self, target: &Target, database: &str, force: bool) {
        let Some(known) = self.views.as_ref().map(|w| w.fingerprint.clone()) else { return };
        if !force {
            match (self.fingerprint(target, database).await, known) {
                (Ok(now), Some(then)) if now == then => return,
                (Err(reason), None) => {
                    // Still unreadable: keep the sessions' refusal as it is.
                    tracing::debug!(database, "views still unavailable: {reason}");
                    return;
                }
                _ => {}
            }
        }
        let (views, fingerprint) = self.read_definitions(target, database).await;
        if let Some(watched) = self.views.as_mut() {
            watched.fingerprint = fingerprint;
            watched.tx.send_replace(views);
        }
    }
}

/// Why one try of a catalog query failed.
#[derive(Debug)]
enum Lookup {
    /// The connection went away (closed, reset, or ended by the server):
    /// worth one more try on a new connection when it was an old one.
    Connection(String),
    /// Anything else: the query's own error, or no connection to be had.
    Query(String),
}

/// Whether a catalog query failed because its connection is gone rather
/// than because of the query: an I/O error, the stream's end, or the
/// server ending the backend (`57P01` shutdown, `57P02` crash, `57P03`,
/// `57P05` idle session timeout; class `08`, connection exception). A
/// cancelled query (`57014`, a statement timeout) is the query's own.
fn is_connection_lost(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Io { .. } | UpstreamError::Protocol(_) => true,
        UpstreamError::Failed { code, .. } => code.starts_with("57P") || code.starts_with("08"),
        _ => false,
    }
}

/// A string literal for the gateway's own catalog queries (the connection
/// runs with `standard_conforming_strings` on, the server default, so only
/// quotes need doubling; a backslash or NUL is refused).
fn literal(s: &str) -> String {
    if s.contains(['\\', '\0']) {
        return "NULL".to_string();
    }
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_lost_when_it_ended_not_when_its_query_failed() {
        let failed = |code: &str| UpstreamError::Failed { code: code.into(), message: "m".into() };
        let io =
            UpstreamError::Io { addr: "127.0.0.1:5432".into(), source: std::io::ErrorKind::ConnectionReset.into() };
        for lost in [io, UpstreamError::Protocol("the server closed the connection".into())] {
            assert!(is_connection_lost(&lost), "{lost}");
        }
        for code in ["57P01", "57P02", "57P05", "08006"] {
            assert!(is_connection_lost(&failed(code)), "{code}");
        }
        // A statement timeout, a lock timeout, a missing relation: the
        // query's own errors, not tried again.
        for code in ["57014", "55P03", "42P01"] {
            assert!(!is_connection_lost(&failed(code)), "{code}");
        }
        assert!(!is_connection_lost(&UpstreamError::Timeout("127.0.0.1:5432".into())));
    }
}
