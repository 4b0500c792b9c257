//! Which table column a result column is.
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
//! A lookup that fails (the connection cannot be made, the query fails)
//! leaves the column unresolved: the engine then judges it by the
//! statement's lineage alone, and a column whose lineage cannot be proven
//! is masked whole.

use std::collections::HashMap;
use std::sync::Arc;

use policy_core::ColumnInfo;
use tokio::sync::Mutex;

use crate::upstream::{self, Connection, Target};

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
}

/// The catalog cache of a gateway, for every database it serves.
pub struct Catalog {
    target: Target,
    databases: Mutex<HashMap<String, Arc<Mutex<Database>>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// A catalog reaching the server through `target`.
    pub fn new(target: Target) -> Catalog {
        Catalog { target, databases: Mutex::new(HashMap::new()) }
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
    /// them: `table` is a name as facts write it (`schema.table`). `None`
    /// when the table cannot be looked up.
    pub async fn copy_columns(&self, database: &str, table: &str) -> Option<Vec<String>> {
        let parts = ColumnInfo::split_name(table)?;
        let [schema, name] = parts.as_slice() else { return None };
        let sql = format!(
            "SELECT a.attname FROM pg_catalog.pg_attribute a \
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
        Some(
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .map(|c| ColumnInfo::source_name(schema, name, &c))
                .collect(),
        )
    }

    /// Runs one of the gateway's catalog queries on the database's own
    /// connection (made when needed, dropped after a failure).
    async fn query(&self, db: &mut Database, database: &str, sql: &str) -> Option<Vec<Vec<Option<String>>>> {
        if db.conn.is_none() {
            let params = [("application_name", "portcullis-catalog"), ("client_encoding", "UTF8")];
            match upstream::connect(&self.target, database, &params).await {
                Ok(c) => db.conn = Some(c),
                Err(e) => {
                    tracing::warn!(database, "catalog connection failed: {e}");
                    return None;
                }
            }
        }
        match db.conn.as_mut()?.simple_query(sql, self.target.max_message_bytes).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::warn!(database, "catalog lookup failed: {e}");
                db.conn = None;
                None
            }
        }
    }

    /// Forgets what is cached for `database` (after DDL there).
    pub async fn invalidate(&self, database: &str) {
        let db = self.database(database).await;
        db.lock().await.tables.clear();
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
