//! Approvals shared by replicas: a log of ledger commands in PostgreSQL.
//!
//! Every change to the approvals is a [`Command`]. With a shared log,
//! a replica changes nothing on its own: it appends the command to
//! `portcullis.approval_log` and every replica, itself included, applies
//! the log in order. The same commands applied in the same order at the
//! times they carry give the same ledger everywhere (a property the
//! ledger's tests check), so a request held on one replica is approved
//! through another's API, and a grant made on one is honoured by all.
//!
//! The log is written as a role of its own, never the upstream role that
//! client sessions run as: the schema is that role's, closed to others,
//! and a replica refuses to use it when the upstream role can reach it
//! (a client could otherwise forge an approval through the gateway).
//!
//! Appending is one transaction under an exclusive lock on the log
//! table: the replica reads and applies what others appended since it
//! last looked, tries its command on a copy of its ledger (a command the
//! ledger refuses, such as a vote on a decided request, is answered with
//! that error and never written), then writes it with the next number and
//! a `NOTIFY`. Other replicas `LISTEN` on a connection of their own and
//! read the log when told, and every second in any case (a notification
//! may be lost with its connection). Every wait on the server is bounded.
//!
//! The schema is created and migrated by the first replica that needs it
//! (under an advisory lock, so that replicas starting together do not
//! race); its version is kept in `portcullis.schema_version`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::ledger::{Applied, Command, LedgerError};
use super::store::{ApprovalStore, Origin};
use crate::upstream::{self, Connection, Target};

/// The channel replicas are told of new entries on.
const CHANNEL: &str = "portcullis_approvals";

/// How often a replica reads the log without being told.
const POLL: Duration = Duration::from_secs(1);

/// How long a replica waits before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(2);

/// The longest any one exchange with the server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on the log's connections: a statement or a lock wait gives up
/// before [`EXCHANGE_TIMEOUT`].
const SESSION_SETUP: &str = "SET standard_conforming_strings = on; SET search_path = ''; \
    SET statement_timeout = '5s'; SET lock_timeout = '5s'; SET idle_in_transaction_session_timeout = '30s'";

/// The largest entry written (a held batch, its decision and its plan,
/// as JSON): a larger command is refused.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// The largest message read from the log's connections.
const READ_LIMIT: usize = 4 * MAX_ENTRY_BYTES;

/// How long grants are trusted without a successful read of the log: a
/// replica cut off from it stops honouring them (a revoke elsewhere
/// would go unseen).
pub const GRANTS_TRUSTED_FOR: Duration = Duration::from_secs(5);

/// The entries' format.
const ENTRY_VERSION: u32 = 1;

/// Migrations, in order: the schema's version is how many have run.
const MIGRATIONS: [&str; 2] = [
    "CREATE TABLE portcullis.approval_log (\
        n bigint PRIMARY KEY, \
        at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
        replica text NOT NULL, \
        command text NOT NULL)",
    // Each replica's audit checkpoints, published once synced.
    "CREATE TABLE portcullis.audit_checkpoints (\
        replica text NOT NULL, \
        size bigint NOT NULL, \
        note text NOT NULL, \
        at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
        PRIMARY KEY (replica, size))",
];

/// One entry of the log: a command and the time it is applied at.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    v: u32,
    now: SystemTime,
    command: Command,
}

/// Where a replica's changes go and where it reads everyone's: the
/// storage of a shared [`ApprovalStore`]. A store without one keeps its
/// ledger in memory alone; [`PostgresLog`] is the log in PostgreSQL.
pub trait SharedLog: Send + Sync + std::fmt::Debug {
    /// This replica's name.
    fn replica(&self) -> &str;

    /// Whether the log was read whole lately enough for its grants to be
    /// trusted ([`GRANTS_TRUSTED_FOR`]).
    fn fresh(&self) -> bool;

    /// Appends `command`, made at `now`, once `store` has applied
    /// everything before it, and applies it there: what the ledger
    /// answered, or why it could not be written. A command the ledger
    /// refuses is never written.
    fn append<'a>(&'a self, store: &'a ApprovalStore, command: Command, now: SystemTime) -> Appending<'a>;

    /// Applies to `store` what others append, until the store is dropped.
    fn follow(self: Arc<Self>, store: std::sync::Weak<ApprovalStore>) -> Following;
}

/// The future of an append.
pub type Appending<'a> = Pin<Box<dyn Future<Output = Result<Applied, LedgerError>> + Send + 'a>>;

/// The future that follows a log.
pub type Following = Pin<Box<dyn Future<Output = ()> + Send>>;

impl SharedLog for PostgresLog {
    fn replica(&self) -> &str {
        PostgresLog::replica(self)
    }

    fn fresh(&self) -> bool {
        PostgresLog::fresh(self)
    }

    fn append<'a>(&'a self, store: &'a ApprovalStore, command: Command, now: SystemTime) -> Appending<'a> {
        Box::pin(PostgresLog::append(self, store, command, now))
    }

    fn follow(self: Arc<Self>, store: std::sync::Weak<ApprovalStore>) -> Following {
        Box::pin(PostgresLog::follow(self, store))
    }
}

/// The shared log in PostgreSQL, as one replica reaches it.
#[derive(Debug)]
pub struct PostgresLog {
    target: Target,
    database: String,
    replica: String,
    /// The role client sessions run as: it must not reach the log.
    clients_role: String,
    /// The connection appends go through (made when needed; taken out
    /// while in use, so that an append abandoned half-way leaves none
    /// behind in a transaction).
    writer: Mutex<Option<Connection>>,
    /// When the log was last read whole.
    last_read: std::sync::Mutex<Option<Instant>>,
    /// Whether the log has been read whole once: what is applied before
    /// (history, at start) is not announced or recorded again.
    caught_up: AtomicBool,
}

impl PostgresLog {
    /// The log in `database` of the server `target` names (with the log's
    /// own role), written as replica `replica`; `clients_role` is the
    /// upstream role, which must not reach it.
    pub fn new(
        target: Target,
        database: impl Into<String>,
        replica: impl Into<String>,
        clients_role: impl Into<String>,
    ) -> PostgresLog {
        PostgresLog {
            target,
            database: database.into(),
            replica: replica.into(),
            clients_role: clients_role.into(),
            writer: Mutex::new(None),
            last_read: std::sync::Mutex::new(None),
            caught_up: AtomicBool::new(false),
        }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the log was read whole within [`GRANTS_TRUSTED_FOR`].
    pub fn fresh(&self) -> bool {
        let last = *self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.is_some_and(|t| t.elapsed() < GRANTS_TRUSTED_FOR)
    }

    fn read_whole(&self) {
        *self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.caught_up.store(true, Ordering::Release);
    }

    /// A connection to the log's database, with the schema migrated and
    /// checked closed to the clients' role.
    async fn connect(&self, purpose: &str) -> Result<Connection, String> {
        let application = format!("portcullis-approvals-{purpose}");
        let params = [("application_name", application.as_str()), ("client_encoding", "UTF8")];
        let connecting = upstream::connect(&self.target, &self.database, &params);
        let mut conn = tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("connecting to database {}: timed out", self.database))?
            .map_err(|e| format!("connecting to database {}: {e}", self.database))?;
        self.run(&mut conn, SESSION_SETUP).await?;
        self.migrate(&mut conn).await?;
        self.check_closed(&mut conn).await?;
        Ok(conn)
    }

    async fn run(&self, conn: &mut Connection, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        self.exchange(conn, sql, &[]).await
    }

    /// One statement with `parameters`, bounded in time; the rows as text.
    async fn exchange(
        &self,
        conn: &mut Connection,
        sql: &str,
        parameters: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        let answer = if parameters.is_empty() {
            tokio::time::timeout(EXCHANGE_TIMEOUT, conn.simple_query(sql, READ_LIMIT)).await
        } else {
            tokio::time::timeout(EXCHANGE_TIMEOUT, conn.extended_query(sql, parameters, None, READ_LIMIT)).await
        };
        answer.map_err(|_| "the server did not answer in time".to_string())?.map_err(|e| e.to_string())
    }

    /// The schema's version, `None` before it exists.
    async fn version(&self, conn: &mut Connection) -> Result<Option<usize>, String> {
        let exists = self.run(conn, "SELECT pg_catalog.to_regclass('portcullis.schema_version') IS NOT NULL").await?;
        if exists.first().and_then(|r| r.first()).cloned().flatten().as_deref() != Some("t") {
            return Ok(None);
        }
        let rows = self.run(conn, "SELECT pg_catalog.max(version)::text FROM portcullis.schema_version").await?;
        match rows.first().and_then(|r| r.first()).cloned().flatten() {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| format!("portcullis.schema_version holds {v:?}")),
        }
    }

    /// Creates the schema, or brings it to this version: nothing is
    /// created (nor any privilege needed for it) when it is up to date.
    async fn migrate(&self, conn: &mut Connection) -> Result<(), String> {
        let current = self.version(conn).await.unwrap_or(None);
        if current == Some(MIGRATIONS.len()) {
            return Ok(());
        }
        let steps = async {
            // One replica at a time: the lock goes with the transaction.
            self.run(
                conn,
                "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('portcullis.approvals'))",
            )
            .await?;
            let version = match self.version(conn).await? {
                Some(v) => v,
                None => {
                    // A schema made beforehand (by an administrator, for
                    // the log's role) is used as it is.
                    let schema = self.run(conn, "SELECT pg_catalog.to_regnamespace('portcullis') IS NOT NULL").await?;
                    if schema.first().and_then(|r| r.first()).cloned().flatten().as_deref() != Some("t") {
                        self.run(conn, "CREATE SCHEMA portcullis; REVOKE ALL ON SCHEMA portcullis FROM PUBLIC").await?;
                    }
                    self.run(
                        conn,
                        "CREATE TABLE portcullis.schema_version (version int NOT NULL); \
                         INSERT INTO portcullis.schema_version VALUES (0)",
                    )
                    .await?;
                    0
                }
            };
            if version > MIGRATIONS.len() {
                return Err(format!(
                    "the portcullis schema is at version {version}, newer than this gateway knows ({}): \
                     upgrade this replica",
                    MIGRATIONS.len()
                ));
            }
            for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
                self.run(conn, step).await?;
                self.run(conn, &format!("UPDATE portcullis.schema_version SET version = {}", i + 1)).await?;
                tracing::info!(version = i + 1, "approvals schema migrated");
            }
            self.run(conn, "COMMIT").await.map(drop)
        };
        let outcome = steps.await;
        if outcome.is_err() {
            let _ = self.run(conn, "ROLLBACK").await;
        }
        outcome
    }

    /// Refuses a log the clients' role can reach.
    async fn check_closed(&self, conn: &mut Connection) -> Result<(), String> {
        let rows = self
            .exchange(
                conn,
                "SELECT pg_catalog.has_schema_privilege($1, 'portcullis', 'USAGE') \
                 OR pg_catalog.has_table_privilege($1, 'portcullis.approval_log', \
                 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
                &[&self.clients_role],
            )
            .await?;
        match rows.first().and_then(|r| r.first()).cloned().flatten().as_deref() {
            Some("f") => Ok(()),
            _ => Err(format!(
                "the upstream role {:?} can reach the portcullis schema, so clients could read or forge \
                 approvals through the gateway: revoke its privileges there (and do not make it a member \
                 of the log's role, or a superuser)",
                self.clients_role
            )),
        }
    }

    /// Publishes an audit checkpoint of this replica (its signed note,
    /// whose second line is the tree's size) beside the log, on a
    /// connection of its own; a checkpoint published already is kept as
    /// it was.
    pub async fn publish_checkpoint(&self, note: &str) -> Result<(), String> {
        let size = note
            .lines()
            .nth(1)
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| "a checkpoint without its tree size".to_string())?;
        let mut conn = self.connect("checkpoints").await?;
        self.exchange(
            &mut conn,
            "INSERT INTO portcullis.audit_checkpoints (replica, size, note) VALUES ($1, $2::bigint, $3) \
             ON CONFLICT (replica, size) DO NOTHING",
            &[&self.replica, &size.to_string(), note],
        )
        .await
        .map(drop)
    }

    /// Appends `command`, at `now`, once `store` has applied everything
    /// before it, and applies it: what the ledger answered, or why it
    /// could not be written.
    async fn append(&self, store: &ApprovalStore, command: Command, now: SystemTime) -> Result<Applied, LedgerError> {
        let text = serde_json::to_string(&Entry { v: ENTRY_VERSION, now, command })
            .map_err(|e| unavailable(format!("encoding a command: {e}")))?;
        if text.len() > MAX_ENTRY_BYTES {
            return Err(unavailable(format!(
                "a command of {} bytes is more than the log takes ({MAX_ENTRY_BYTES})",
                text.len()
            )));
        }
        // Applied here as every replica reads it back (times to the
        // microsecond), for the ledgers to stay the same.
        let entry: Entry = serde_json::from_str(&text).map_err(|e| unavailable(format!("decoding a command: {e}")))?;
        let now = entry.now;
        let mut position = store.position.lock().await;
        // Taken out while in use: dropped, not put back, if this is
        // abandoned half-way (the server then rolls the transaction back).
        let taken = self.writer.lock().await.take();
        let mut conn = match taken {
            Some(c) => c,
            None => self.connect("writer").await.map_err(|why| self.failed(why))?,
        };
        let outcome = async {
            self.run(&mut conn, "BEGIN; LOCK TABLE portcullis.approval_log IN EXCLUSIVE MODE").await?;
            let rows = self.rows_after(&mut conn, *position).await?;
            self.apply_rows(store, &mut position, rows)?;
            // Tried first: what the ledger refuses is never written.
            if let Err(e) = store.try_apply(&entry.command, now) {
                return Ok(Err(e));
            }
            let n = (*position + 1).to_string();
            self.exchange(
                &mut conn,
                "INSERT INTO portcullis.approval_log (n, replica, command) VALUES ($1::bigint, $2, $3)",
                &[&n, &self.replica, &text],
            )
            .await?;
            self.exchange(&mut conn, "SELECT pg_catalog.pg_notify($1, $2)", &[CHANNEL, &n]).await?;
            self.run(&mut conn, "COMMIT").await?;
            Ok(Ok(()))
        };
        match outcome.await {
            Ok(Ok(())) => {
                *self.writer.lock().await = Some(conn);
                self.read_whole();
                let n = *position + 1;
                store.apply_logged(&mut position, n, &entry.command, now, Origin::Here)
            }
            Ok(Err(refused)) => {
                if self.run(&mut conn, "ROLLBACK").await.is_ok() {
                    *self.writer.lock().await = Some(conn);
                }
                Err(refused)
            }
            Err(why) => Err(self.failed(why)),
        }
    }

    fn failed(&self, why: String) -> LedgerError {
        tracing::warn!(replica = %self.replica, "approvals log: {why}");
        unavailable(why)
    }

    /// The entries after `position`, as (number, text).
    async fn rows_after(&self, conn: &mut Connection, position: u64) -> Result<Vec<(u64, String)>, String> {
        let rows = self
            .exchange(
                conn,
                "SELECT n, command FROM portcullis.approval_log WHERE n > $1::bigint ORDER BY n",
                &[&position.to_string()],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let [Some(n), Some(text)] = <[Option<String>; 2]>::try_from(row).unwrap_or_default() else {
                return Err("an approvals log row the gateway cannot read".to_string());
            };
            out.push((n.parse().map_err(|_| format!("an approvals log number {n:?}"))?, text));
        }
        Ok(out)
    }

    /// Applies the entries that follow `position` in `rows`. An entry this
    /// replica cannot read (a newer gateway's, say) is passed over, with
    /// a warning: the rest of the log still applies.
    fn apply_rows(&self, store: &ApprovalStore, position: &mut u64, rows: Vec<(u64, String)>) -> Result<(), String> {
        // Before the log was first read whole: history, not news.
        let origin = if self.caught_up.load(Ordering::Acquire) { Origin::Elsewhere } else { Origin::History };
        for (n, text) in rows {
            if n <= *position {
                continue;
            }
            if n != *position + 1 {
                return Err(format!("the approvals log skips from {position} to {n}"));
            }
            match serde_json::from_str::<Entry>(&text) {
                Ok(entry) if entry.v == ENTRY_VERSION => {
                    // Refused here as where it was appended: nothing to do.
                    let _ = store.apply_logged(position, n, &entry.command, entry.now, origin);
                }
                Ok(entry) => {
                    tracing::warn!(entry = n, version = entry.v, "approvals log entry of another format passed over");
                    *position = n;
                }
                Err(e) => {
                    tracing::warn!(entry = n, "approvals log entry passed over: it cannot be read: {e}");
                    *position = n;
                }
            }
        }
        Ok(())
    }

    /// Follows the log for `store` until the store is dropped: wakes on a
    /// notification, or every [`POLL`].
    async fn follow(self: Arc<PostgresLog>, store: std::sync::Weak<ApprovalStore>) {
        let mut listener: Option<Connection> = None;
        loop {
            let Some(store) = store.upgrade() else { return };
            if listener.is_none() {
                match self.connect("listener").await {
                    Ok(mut c) => match self.run(&mut c, &format!("LISTEN {CHANNEL}")).await {
                        Ok(_) => listener = Some(c),
                        Err(why) => tracing::warn!(replica = %self.replica, "approvals log: LISTEN: {why}"),
                    },
                    Err(why) => tracing::warn!(replica = %self.replica, "approvals log: {why}"),
                }
            }
            let Some(conn) = listener.as_mut() else {
                drop(store);
                tokio::time::sleep(RETRY).await;
                continue;
            };
            // Read without holding the position (appends go on), then
            // applied from where the ledger is by then.
            let from = *store.position.lock().await;
            let read = match self.rows_after(conn, from).await {
                Ok(rows) => {
                    let mut position = store.position.lock().await;
                    self.apply_rows(&store, &mut position, rows)
                }
                Err(why) => Err(why),
            };
            if read.is_ok() {
                self.read_whole();
            }
            drop(store);
            let waited = match read {
                Ok(()) => conn.notification(POLL, READ_LIMIT).await.map(drop).map_err(|e| e.to_string()),
                Err(why) => Err(why),
            };
            if let Err(why) = waited {
                tracing::warn!(replica = %self.replica, "approvals log: {why}");
                listener = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn unavailable(why: String) -> LedgerError {
    LedgerError::Unavailable(why)
}
