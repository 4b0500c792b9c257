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
//! Appending is one transaction under an exclusive lock on the log
//! table: the replica reads and applies what others appended since it
//! last looked, tries its command on a copy of its ledger (a command the
//! ledger refuses, such as a vote on a decided request, is answered with
//! that error and never written), then writes it with the next number and
//! a `NOTIFY`. Other replicas `LISTEN` on a connection of their own and
//! read the log when told, and every second in any case (a notification
//! may be lost with its connection).
//!
//! The schema is created and migrated by the first replica that needs it
//! (under an advisory lock, so that replicas starting together do not
//! race); its version is kept in `portcullis.schema_version`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::ledger::{Applied, Command, LedgerError};
use super::store::ApprovalStore;
use crate::upstream::{self, Connection, Target, UpstreamError};

/// The channel replicas are told of new entries on.
const CHANNEL: &str = "portcullis_approvals";

/// How often a replica reads the log without being told.
const POLL: Duration = Duration::from_secs(1);

/// How long a replica waits before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(2);

/// Migrations, in order: the schema's version is how many have run.
const MIGRATIONS: [&str; 1] = ["CREATE TABLE portcullis.approval_log (\
        n bigint PRIMARY KEY, \
        at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
        replica text NOT NULL, \
        command jsonb NOT NULL)"];

/// One entry of the log: a command and the time it is applied at.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    now: SystemTime,
    command: Command,
}

/// The shared log, as one replica reaches it.
#[derive(Debug)]
pub struct SharedLog {
    target: Target,
    database: String,
    replica: String,
    /// The connection appends go through (made when needed, dropped after
    /// a failure).
    writer: Mutex<Option<Connection>>,
}

impl SharedLog {
    /// The log in `database` of the server `target` names, written as
    /// replica `replica`.
    pub fn new(target: Target, database: impl Into<String>, replica: impl Into<String>) -> SharedLog {
        SharedLog { target, database: database.into(), replica: replica.into(), writer: Mutex::new(None) }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A connection to the log's database, with the schema migrated.
    async fn connect(&self, purpose: &str) -> Result<Connection, String> {
        let application = format!("portcullis-approvals-{purpose}");
        let params = [("application_name", application.as_str()), ("client_encoding", "UTF8")];
        let mut conn = upstream::connect(&self.target, &self.database, &params)
            .await
            .map_err(|e| format!("connecting to database {}: {e}", self.database))?;
        self.run(&mut conn, "SET standard_conforming_strings = on; SET search_path = ''").await?;
        self.migrate(&mut conn).await?;
        Ok(conn)
    }

    async fn run(&self, conn: &mut Connection, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        conn.simple_query(sql, self.target.max_message_bytes).await.map_err(|e| said(&e))
    }

    /// Creates the schema, or brings it to this version.
    async fn migrate(&self, conn: &mut Connection) -> Result<(), String> {
        let steps = async {
            // One replica at a time: the lock goes with the transaction.
            self.run(
                conn,
                "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('portcullis.approvals')); \
                 CREATE SCHEMA IF NOT EXISTS portcullis; \
                 CREATE TABLE IF NOT EXISTS portcullis.schema_version (version int NOT NULL)",
            )
            .await?;
            let rows = self.run(conn, "SELECT version FROM portcullis.schema_version").await?;
            let version = match rows.first().and_then(|r| r.first()).cloned().flatten() {
                None => {
                    self.run(conn, "INSERT INTO portcullis.schema_version VALUES (0)").await?;
                    0
                }
                Some(v) => v.parse::<usize>().map_err(|_| format!("portcullis.schema_version holds {v:?}"))?,
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

    /// Appends `command`, at `now`, once `store` has applied everything
    /// before it, and applies it: what the ledger answered, or why it
    /// could not be written.
    pub(crate) async fn append(
        &self,
        store: &ApprovalStore,
        command: Command,
        now: SystemTime,
    ) -> Result<Applied, LedgerError> {
        let mut position = store.position.lock().await;
        let mut writer = self.writer.lock().await;
        if writer.is_none() {
            *writer = Some(self.connect("writer").await.map_err(unavailable)?);
        }
        let Some(conn) = writer.as_mut() else { return Err(unavailable("no connection".to_string())) };
        let text = serde_json::to_string(&Entry { now, command })
            .map_err(|e| unavailable(format!("encoding a command: {e}")))?;
        // Applied here as every replica reads it back (times to the
        // microsecond), for the ledgers to stay the same.
        let entry: Entry = serde_json::from_str(&text).map_err(|e| unavailable(format!("decoding a command: {e}")))?;
        let now = entry.now;
        let outcome = async {
            self.run(conn, "BEGIN; LOCK TABLE portcullis.approval_log IN EXCLUSIVE MODE").await?;
            self.catch_up_on(conn, store, &mut position).await?;
            // Tried first: what the ledger refuses is never written.
            if let Err(e) = store.try_apply(&entry.command, now) {
                return Ok(Err(e));
            }
            let n = (*position + 1).to_string();
            let max = self.target.max_message_bytes;
            conn.extended_query(
                "INSERT INTO portcullis.approval_log (n, replica, command) VALUES ($1::bigint, $2, $3::jsonb)",
                &[&n, &self.replica, &text],
                None,
                max,
            )
            .await
            .map_err(|e| said(&e))?;
            conn.extended_query("SELECT pg_catalog.pg_notify($1, $2)", &[CHANNEL, &n], None, max)
                .await
                .map_err(|e| said(&e))?;
            self.run(conn, "COMMIT").await?;
            Ok(Ok(()))
        };
        match outcome.await {
            Ok(Ok(())) => {
                let n = *position + 1;
                store.apply_logged(&mut position, n, &entry.command, now, true)
            }
            Ok(Err(refused)) => {
                let _ = self.run(conn, "ROLLBACK").await;
                Err(refused)
            }
            Err(why) => {
                tracing::warn!(replica = %self.replica, "approvals log: {why}");
                *writer = None;
                Err(unavailable(why))
            }
        }
    }

    /// Applies the entries after `position`.
    async fn catch_up_on(
        &self,
        conn: &mut Connection,
        store: &ApprovalStore,
        position: &mut u64,
    ) -> Result<(), String> {
        let rows = conn
            .extended_query(
                "SELECT n, command::text FROM portcullis.approval_log WHERE n > $1::bigint ORDER BY n",
                &[&position.to_string()],
                None,
                self.target.max_message_bytes,
            )
            .await
            .map_err(|e| said(&e))?;
        for row in rows {
            let [Some(n), Some(text)] = <[Option<String>; 2]>::try_from(row).unwrap_or_default() else {
                return Err("an approvals log row the gateway cannot read".to_string());
            };
            let n: u64 = n.parse().map_err(|_| format!("an approvals log number {n:?}"))?;
            if n != *position + 1 {
                return Err(format!("the approvals log skips from {position} to {n}"));
            }
            let entry: Entry =
                serde_json::from_str(&text).map_err(|e| format!("approvals log entry {n} cannot be read: {e}"))?;
            // Refused here as where it was appended: nothing to do.
            let _ = store.apply_logged(position, n, &entry.command, entry.now, false);
        }
        Ok(())
    }

    /// Follows the log for `store` until the store is dropped: wakes on a
    /// notification, or every [`POLL`].
    pub(crate) async fn follow(self: Arc<SharedLog>, store: std::sync::Weak<ApprovalStore>) {
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
            let caught_up = {
                let mut position = store.position.lock().await;
                self.catch_up_on(conn, &store, &mut position).await
            };
            drop(store);
            let waited = match caught_up {
                Ok(()) => conn.notification(POLL, self.target.max_message_bytes).await.map_err(|e| said(&e)),
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

/// What went wrong, without the server's data.
fn said(e: &UpstreamError) -> String {
    e.to_string()
}

fn unavailable(why: String) -> LedgerError {
    LedgerError::Unavailable(why)
}
