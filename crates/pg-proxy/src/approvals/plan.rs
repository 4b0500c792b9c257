//! The plan of a held statement, for its approvers: what PostgreSQL would
//! do, how many rows it expects to touch, and which relations.
//!
//! The approval handler asks a [`Planner`] once a request is open; the
//! gateway's planner is its catalog connection ([`crate::catalog::Catalog::explain`]:
//! `EXPLAIN`, never `ANALYZE`, in a read-only transaction). Which
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
use std::sync::Arc;

use serde_json::Value;

use crate::catalog::Catalog;

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
    /// Explain this text: one statement, with this many parameters.
    Explain {
        /// The statement's text.
        sql: String,
        /// Its parameters (`$1`...).
        parameters: usize,
    },
    /// Not to be planned, and why.
    Skip {
        /// The statement's text.
        sql: String,
        /// Why.
        why: String,
    },
}

/// What to plan, and in what session's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRequest {
    /// The database.
    pub database: String,
    /// The session's `search_path`.
    pub search_path: Vec<String>,
    /// The session's `standard_conforming_strings`.
    pub standard_conforming_strings: bool,
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

/// The gateway's planner: its catalog connections.
#[derive(Debug)]
pub struct CatalogPlanner(pub Arc<Catalog>);

impl Planner for CatalogPlanner {
    fn plan(&self, request: PlanRequest) -> Planning<'_> {
        Box::pin(async move {
            let mut plans = Vec::with_capacity(request.statements.len());
            for statement in request.statements {
                plans.push(match statement {
                    PlanStatement::Skip { sql, why } => StatementPlan::Unavailable { sql, why },
                    PlanStatement::Explain { sql, parameters } => {
                        let explained = self
                            .0
                            .explain(
                                &request.database,
                                &request.search_path,
                                request.standard_conforming_strings,
                                &sql,
                                parameters,
                            )
                            .await;
                        match explained {
                            Ok(plan) => summarise(&sql, plan),
                            Err(why) => StatementPlan::Unavailable { sql, why },
                        }
                    }
                });
            }
            plans
        })
    }
}

/// The commands `EXPLAIN` plans, by their tags.
const EXPLAINABLE: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"];

/// What to plan of one statement the engine decided: its text (`span` of
/// the held text), or why not.
pub fn statement(sql: &str, statement: &policy_core::StatementDecision, parameters: usize) -> PlanStatement {
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
    PlanStatement::Explain { sql: text, parameters }
}

/// The plan `explained` (EXPLAIN's JSON) of `sql`, with its estimates
/// and relations drawn out.
pub fn summarise(sql: &str, explained: Value) -> StatementPlan {
    let Some(root) = explained.pointer("/0/Plan") else {
        return StatementPlan::Unavailable { sql: sql.to_string(), why: "EXPLAIN gave no plan".to_string() };
    };
    let rows = |node: &Value| node.get("Plan Rows").and_then(Value::as_f64).unwrap_or(0.0);
    // A modifying statement's top node returns nothing (no RETURNING):
    // the rows it changes are those its input finds.
    let estimated = if root.get("Node Type").and_then(Value::as_str) == Some("ModifyTable") {
        root.get("Plans")
            .and_then(Value::as_array)
            .map_or(0.0, |children| children.iter().map(rows).fold(0.0, f64::max))
    } else {
        rows(root)
    };
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

    fn planned(sql: &str) -> Vec<PlanStatement> {
        let policy = Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"", "p.toml").unwrap();
        let engine = Engine::new(policy, Default::default()).unwrap();
        let decision = engine.decide(&Identity::new("alice"), &engine.new_session(), sql);
        decision.statements.iter().map(|s| statement(sql, s, 0)).collect()
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
    fn a_plan_without_a_plan_is_unavailable() {
        assert!(matches!(summarise("SELECT 1", serde_json::json!([])), StatementPlan::Unavailable { .. }));
    }
}
