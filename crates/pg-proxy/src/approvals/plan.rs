//! The plan of a held statement, for its approvers: what PostgreSQL would
//! do, how many rows it expects to touch, and which relations.
//!
//! The approval handler asks a [`Planner`] once a request is open; the
//! gateway's planner is [`ServerPlanner`] (`EXPLAIN`, never `ANALYZE`, in
//! a read-only transaction, on a connection of its own). Which
//! statements are explained is decided from the engine's facts: only those
//! EXPLAIN plans (SELECT, INSERT, UPDATE, DELETE, MERGE), and none that
//! calls code the engine cannot see, since planning may evaluate functions.
//!
//! ```
//! use pg_proxy::approvals::plan::{summarise, StatementPlan};
//! let explained = serde_json::json!([{"Plan": {
//!     "Node Type": "ModifyTable", "Operation": "Delete", "Schema": "public", "Relation Name": "orders",
//!     "Plan Rows": 0,
//!     "Plans": [{"Node Type": "Index Scan", "Schema": "public", "Relation Name": "orders", "Plan Rows": 1}]
//! }}]);
//! let StatementPlan::Planned { estimated_rows, relations, .. } = summarise("DELETE FROM orders WHERE id = 1", explained)
//! else { unreachable!() };
//! assert_eq!((estimated_rows, relations), (1, vec!["public.orders".to_string()]));
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::session::hold::{HeldStatement, Reading};
use crate::upstream::{self, Target, UpstreamError};

/// One held statement's plan, as approvers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StatementPlan {
    /// Planned.
    Planned {
        /// The statement.
        sql: String,
        /// The rows the planner expects the statement to return or change
        /// (for INSERT, UPDATE, DELETE and MERGE, those its scan finds).
        estimated_rows: u64,
        /// The planner's total cost estimate, as it writes it.
        estimated_cost: String,
        /// Every relation the plan reads or writes, `schema.name`, sorted.
        relations: Vec<String>,
        /// `EXPLAIN (FORMAT JSON, VERBOSE)`'s own answer.
        plan: Value,
    },
    /// Not planned, and why.
    Unavailable {
        /// The statement.
        sql: String,
        /// Why.
        why: String,
    },
}

/// One statement to plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStatement {
    /// Explain this text: one statement, with this many parameters, read
    /// as the server will read it.
    Explain {
        /// The statement's text.
        sql: String,
        /// Its parameters (`$1`...).
        parameters: usize,
        /// The `search_path` its names resolve through.
        search_path: Vec<String>,
        /// The `standard_conforming_strings` its text is read with.
        standard_conforming_strings: bool,
    },
    /// Not to be planned, and why.
    Skip {
        /// The statement's text.
        sql: String,
        /// Why.
        why: String,
    },
}

/// What to plan: the statements, in order, and their database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRequest {
    /// The database.
    pub database: String,
    /// The statements, in order.
    pub statements: Vec<PlanStatement>,
}

/// The future of a planner's answer.
pub type Planning<'a> = Pin<Box<dyn Future<Output = Vec<StatementPlan>> + Send + 'a>>;

/// Plans held statements.
pub trait Planner: Send + Sync + std::fmt::Debug {
    /// One plan per statement of `request`, in order.
    fn plan(&self, request: PlanRequest) -> Planning<'_>;
}

/// How many statements of one request are planned; the rest are shown
/// unplanned.
pub const MAX_PLANNED: usize = 16;

/// How many requests are planned at once (each on a connection of its
/// own); others wait their turn.
const CONCURRENT_PLANS: usize = 2;

/// How long planning one statement may take.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long planning waits for a lock a client's transaction holds.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The name a statement with parameters is prepared under, to be
/// explained with its generic plan.
const PLAN_NAME: &str = "portcullis_plan";

/// The gateway's planner: a connection of its own to the server for each
/// request, closed after it, so planning never holds up the sessions'
/// catalog lookups. Each statement is explained in a read-only
/// transaction that is rolled back, with a statement and a lock timeout,
/// the statement's own `search_path` and `standard_conforming_strings`,
/// and its text sent by the extended protocol, where the server takes one
/// statement and nothing else: a text that is more than its span (however
/// the gateway's reading and the server's differ) fails whole.
#[derive(Debug)]
pub struct ServerPlanner {
    target: Target,
    turns: Semaphore,
}

impl ServerPlanner {
    /// A planner connecting to `target`.
    pub fn new(target: Target) -> ServerPlanner {
        ServerPlanner { target, turns: Semaphore::new(CONCURRENT_PLANS) }
    }

    async fn connect(&self, database: &str) -> Result<upstream::Connection, String> {
        let params = [("application_name", "portcullis-plan"), ("client_encoding", "UTF8")];
        let mut conn = upstream::connect(&self.target, database, &params)
            .await
            .map_err(|e| format!("the gateway could not connect to plan it: {e}"))?;
        let setup = format!(
            "SET statement_timeout = '{}ms'; SET lock_timeout = '{}ms'; SET plan_cache_mode = force_generic_plan",
            EXPLAIN_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis()
        );
        self.run(&mut conn, &setup).await?;
        Ok(conn)
    }

    /// Runs one of the planner's own queries.
    async fn run(&self, conn: &mut upstream::Connection, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        conn.simple_query(sql, self.target.max_message_bytes).await.map_err(|e| server_said(&e))
    }

    /// Explains one statement, and leaves the connection idle outside a
    /// transaction (or says it is lost).
    async fn explain(
        &self,
        conn: &mut upstream::Connection,
        sql: &str,
        parameters: usize,
        search_path: &[String],
        standard_conforming_strings: bool,
    ) -> Result<Value, Unplanned> {
        let path = if search_path.is_empty() {
            "''".to_string()
        } else {
            search_path.iter().map(|s| format!("\"{}\"", s.replace('"', "\"\""))).collect::<Vec<_>>().join(", ")
        };
        let scs = if standard_conforming_strings { "on" } else { "off" };
        let begin =
            format!("BEGIN READ ONLY; SET LOCAL search_path = {path}; SET LOCAL standard_conforming_strings = {scs}");
        let max = self.target.max_message_bytes;
        let mut prepared = false;
        let explained = match self.run(conn, &begin).await {
            Err(why) => Err(why),
            Ok(_) if parameters == 0 => conn
                .extended_query(&format!("EXPLAIN (FORMAT JSON, VERBOSE) {sql}"), &[], None, max)
                .await
                .map_err(|e| server_said(&e)),
            // The generic plan: the values are never sent.
            Ok(_) => match conn.extended_query(sql, &[], Some(PLAN_NAME), max).await {
                Ok(_) => {
                    prepared = true;
                    let nulls = vec!["NULL"; parameters].join(", ");
                    let explain = format!("EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {PLAN_NAME}({nulls})");
                    self.run(conn, &explain).await
                }
                Err(e) => Err(server_said(&e)),
            },
        };
        // A prepared statement outlives the transaction.
        let undo = if prepared { format!("ROLLBACK; DEALLOCATE {PLAN_NAME}") } else { "ROLLBACK".to_string() };
        if let Err(why) = self.run(conn, &undo).await {
            return Err(Unplanned { why: explained.err().unwrap_or(why), connection_lost: true });
        }
        let rows = explained.map_err(|why| Unplanned { why, connection_lost: false })?;
        let text = rows.into_iter().next().and_then(|r| r.into_iter().next().flatten());
        let unreadable = |why: String| Unplanned { why, connection_lost: false };
        let text = text.ok_or_else(|| unreadable("EXPLAIN gave no plan".to_string()))?;
        serde_json::from_str(&text).map_err(|e| unreadable(format!("EXPLAIN gave a plan the gateway cannot read: {e}")))
    }
}

/// Why a statement was not planned, and whether the connection is still
/// fit for the next.
struct Unplanned {
    why: String,
    connection_lost: bool,
}

/// What an approver is told of a failure: the server's message (the
/// statement's, or the connection's), logged at debug with its SQLSTATE.
fn server_said(e: &UpstreamError) -> String {
    tracing::debug!("planning a held statement: {e}");
    match e {
        UpstreamError::Failed { message, .. } | UpstreamError::Refused { message, .. } => {
            format!("the server could not plan it: {message}")
        }
        other => format!("the server could not plan it: {other}"),
    }
}

impl Planner for ServerPlanner {
    fn plan(&self, request: PlanRequest) -> Planning<'_> {
        Box::pin(async move {
            let mut plans = Vec::with_capacity(request.statements.len());
            let wanted = request.statements.iter().any(|s| matches!(s, PlanStatement::Explain { .. }));
            // Closed only with the planner, which outlives its plans.
            let turn = if wanted { self.turns.acquire().await.ok() } else { None };
            let mut conn = match turn {
                Some(_) => Some(self.connect(&request.database).await),
                None => None,
            };
            for statement in request.statements {
                plans.push(match (statement, conn.as_mut()) {
                    (PlanStatement::Skip { sql, why }, _) => StatementPlan::Unavailable { sql, why },
                    (PlanStatement::Explain { sql, .. }, Some(Err(why))) => {
                        StatementPlan::Unavailable { sql, why: why.clone() }
                    }
                    (PlanStatement::Explain { sql, .. }, None) => {
                        StatementPlan::Unavailable { sql, why: "the planner is shutting down".to_string() }
                    }
                    (
                        PlanStatement::Explain { sql, parameters, search_path, standard_conforming_strings },
                        Some(Ok(c)),
                    ) => match self.explain(c, &sql, parameters, &search_path, standard_conforming_strings).await {
                        Ok(plan) => summarise(&sql, plan),
                        Err(Unplanned { why, connection_lost }) => {
                            if connection_lost {
                                conn = Some(Err(format!("not planned: the connection was lost ({why})")));
                            }
                            StatementPlan::Unavailable { sql, why }
                        }
                    },
                });
            }
            plans
        })
    }
}

/// The commands `EXPLAIN` plans, by their tags.
const EXPLAINABLE: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"];

/// What to plan of a held statement: each statement of its text, with the
/// settings the server will read it with. Nothing is planned when those
/// are unsure, nor after a statement of the same text that changes them
/// (the server reads what follows with settings the gateway has not seen
/// yet), nor beyond [`MAX_PLANNED`] statements in all (`planned_before`
/// counts those of the request's earlier held statements).
pub fn statements(held: &HeldStatement, planned_before: usize) -> Vec<PlanStatement> {
    let mut out = Vec::with_capacity(held.decision.statements.len());
    let mut unsure = match &held.reading {
        Reading::Known { .. } => None,
        Reading::Unsure => Some("a statement before it in the same batch changes the session's settings"),
    };
    for s in held.decision.statements.iter() {
        let text = || held.sql.get(s.span.clone()).unwrap_or(&held.sql).trim().to_string();
        let counted = planned_before + out.len();
        let plan = match (&held.reading, unsure) {
            (_, Some(why)) => PlanStatement::Skip { sql: text(), why: format!("not planned: {why}") },
            _ if counted >= MAX_PLANNED => PlanStatement::Skip {
                sql: text(),
                why: format!("not planned: only the first {MAX_PLANNED} statements of a request are"),
            },
            (Reading::Known { search_path, standard_conforming_strings }, None) => {
                statement(&held.sql, s, held.parameters.len(), search_path, *standard_conforming_strings)
            }
            (Reading::Unsure, None) => PlanStatement::Skip { sql: text(), why: "not planned".to_string() },
        };
        out.push(plan);
        let facts = &s.facts;
        if facts.changes_settings || facts.reverts_settings || !facts.session_effects.is_empty() {
            unsure = Some("a statement before it in the same text changes the session's settings");
        }
    }
    out
}

/// What to plan of one statement the engine decided: its text (`span` of
/// the held text), or why not.
pub fn statement(
    sql: &str,
    statement: &policy_core::StatementDecision,
    parameters: usize,
    search_path: &[String],
    standard_conforming_strings: bool,
) -> PlanStatement {
    let text = sql.get(statement.span.clone()).unwrap_or(sql).trim().to_string();
    let facts = &statement.facts;
    if facts.opaque {
        let why = "the statement calls code the engine cannot see, which planning could run".to_string();
        return PlanStatement::Skip { sql: text, why };
    }
    if !EXPLAINABLE.contains(&facts.command.as_str()) {
        let why = format!("EXPLAIN does not plan a {} statement", facts.command);
        return PlanStatement::Skip { sql: text, why };
    }
    PlanStatement::Explain { sql: text, parameters, search_path: search_path.to_vec(), standard_conforming_strings }
}

/// The plan `explained` (EXPLAIN's JSON) of `sql`, with its estimates
/// and relations drawn out.
pub fn summarise(sql: &str, explained: Value) -> StatementPlan {
    let Some(root) = explained.pointer("/0/Plan") else {
        return StatementPlan::Unavailable { sql: sql.to_string(), why: "EXPLAIN gave no plan".to_string() };
    };
    let rows = |node: &Value| node.get("Plan Rows").and_then(Value::as_f64).unwrap_or(0.0);
    // A modifying node returns nothing (no RETURNING): the rows it changes
    // are those its input finds. A statement that modifies (at its top, or
    // in a WITH) is estimated by the most any of its modifying nodes
    // changes, whatever the rest returns.
    let mut modified = None;
    most_modified(root, &rows, &mut modified);
    let estimated = modified.unwrap_or_else(|| rows(root));
    let mut relations = BTreeSet::new();
    collect_relations(root, &mut relations);
    let estimated_cost = root.get("Total Cost").map(Value::to_string).unwrap_or_default();
    StatementPlan::Planned {
        sql: sql.to_string(),
        // Estimates are whole rows; rounding a float that is one is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a non-negative row estimate")]
        estimated_rows: estimated.max(0.0).round() as u64,
        estimated_cost,
        relations: relations.into_iter().collect(),
        plan: explained,
    }
}

fn most_modified(node: &Value, rows: &impl Fn(&Value) -> f64, most: &mut Option<f64>) {
    let children = node.get("Plans").and_then(Value::as_array);
    if node.get("Node Type").and_then(Value::as_str) == Some("ModifyTable") {
        let changed = children.map_or(0.0, |c| c.iter().map(rows).fold(0.0, f64::max));
        *most = Some(most.map_or(changed, |m| m.max(changed)));
    }
    for child in children.into_iter().flatten() {
        most_modified(child, rows, most);
    }
}

fn collect_relations(node: &Value, into: &mut BTreeSet<String>) {
    if let Some(name) = node.get("Relation Name").and_then(Value::as_str) {
        let schema = node.get("Schema").and_then(Value::as_str).unwrap_or("?");
        into.insert(format!("{schema}.{name}"));
    }
    for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        collect_relations(child, into);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use policy_core::{Engine, Identity, Policy};
    use std::sync::Arc;

    fn planned(sql: &str) -> Vec<PlanStatement> {
        let policy = Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"", "p.toml").unwrap();
        let engine = Engine::new(policy, Default::default()).unwrap();
        let decision = engine.decide(&Identity::new("alice"), &engine.new_session(), sql);
        let reading = Reading::Known { search_path: vec!["public".into()], standard_conforming_strings: true };
        statements(&HeldStatement::new(Arc::from(sql), Vec::new(), Arc::new(decision), reading), 0)
    }

    #[test]
    fn each_statement_of_a_string_is_planned_on_its_own() {
        let plans = planned("DELETE FROM orders WHERE id = 1;  UPDATE orders SET note = 'a;b' WHERE id = 2 ; SELECT 1");
        let texts: Vec<&str> = plans
            .iter()
            .map(|p| match p {
                PlanStatement::Explain { sql, .. } => sql.as_str(),
                PlanStatement::Skip { sql, why } => panic!("{sql}: {why}"),
            })
            .collect();
        assert_eq!(
            texts,
            ["DELETE FROM orders WHERE id = 1", "UPDATE orders SET note = 'a;b' WHERE id = 2", "SELECT 1"]
        );
    }

    #[test]
    fn what_explain_cannot_plan_or_could_run_is_not_planned() {
        for (sql, why) in [
            ("TRUNCATE orders", "does not plan a TRUNCATE TABLE"),
            ("DROP TABLE orders", "does not plan a DROP TABLE"),
            ("SELECT mystery_function()", "cannot see"),
            ("DELETE FROM orders WHERE id = (SELECT my_lookup())", "cannot see"),
        ] {
            match planned(sql).as_slice() {
                [PlanStatement::Skip { why: said, .. }] => assert!(said.contains(why), "{sql}: {said}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_follows_a_change_of_settings_in_the_same_text_is_not_planned() {
        let plans = planned("DELETE FROM orders WHERE id = 1; SET search_path = staging; DELETE FROM orders");
        assert!(matches!(&plans[0], PlanStatement::Explain { search_path, .. } if search_path == &["public"]));
        assert!(matches!(&plans[1], PlanStatement::Skip { .. }));
        match &plans[2] {
            PlanStatement::Skip { why, .. } => assert!(why.contains("changes the session's settings"), "{why}"),
            other => panic!("{other:?}"),
        }
        let plans = planned("SET standard_conforming_strings = off; DELETE FROM orders WHERE note = 'a\\'");
        assert!(matches!(&plans[1], PlanStatement::Skip { .. }), "{plans:?}");
    }

    #[test]
    fn statements_are_planned_only_while_the_settings_are_sure_and_up_to_a_limit() {
        let policy = Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"", "p.toml").unwrap();
        let engine = Engine::new(policy, Default::default()).unwrap();
        let sql = "DELETE FROM orders; DELETE FROM orders";
        let decision = Arc::new(engine.decide(&Identity::new("alice"), &engine.new_session(), sql));
        let unsure = HeldStatement::new(Arc::from(sql), Vec::new(), Arc::clone(&decision), Reading::Unsure);
        assert!(statements(&unsure, 0).iter().all(|p| matches!(p, PlanStatement::Skip { .. })));
        let reading = Reading::Known { search_path: vec![], standard_conforming_strings: true };
        let known = HeldStatement::new(Arc::from(sql), Vec::new(), decision, reading);
        let plans = statements(&known, MAX_PLANNED - 1);
        assert!(matches!(&plans[0], PlanStatement::Explain { .. }));
        assert!(matches!(&plans[1], PlanStatement::Skip { why, .. } if why.contains("only the first")), "{plans:?}");
    }

    #[test]
    fn a_write_in_a_with_is_estimated_by_the_rows_it_changes() {
        let explained = serde_json::json!([{"Plan": {
            "Node Type": "Aggregate", "Plan Rows": 1,
            "Plans": [
                {"Node Type": "ModifyTable", "Operation": "Delete", "Schema": "public", "Relation Name": "orders",
                 "Plan Rows": 500, "Subplan Name": "CTE d",
                 "Plans": [{"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "orders", "Plan Rows": 500}]},
                {"Node Type": "CTE Scan", "Plan Rows": 500}
            ]
        }}]);
        let StatementPlan::Planned { estimated_rows, .. } =
            summarise("WITH d AS (...) SELECT count(*) FROM d", explained)
        else {
            panic!("planned")
        };
        assert_eq!(estimated_rows, 500);
    }

    #[test]
    fn a_plan_without_a_plan_is_unavailable() {
        assert!(matches!(summarise("SELECT 1", serde_json::json!([])), StatementPlan::Unavailable { .. }));
    }
}
