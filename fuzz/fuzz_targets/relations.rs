//! Fuzz target `relations`: a differential check of what the engine says a
//! statement touches against what its parse tree reaches.
//!
//! Each input is SQL, either as text (the first byte even: the rest of the
//! input, so the seeds, taken from the decision corpus's shapes, are
//! mutated as text) or generated from a small grammar (the first byte odd:
//! queries over a fixed schema with joins, subqueries in every clause,
//! CTEs that shadow tables, set operations, data-modifying CTEs, DML with
//! `FROM`/`USING`/`RETURNING`, qualified and unqualified names).
//!
//! The invariant: whenever the engine allows a `read` or `write` statement
//! under a policy that allows those classes by name, every relation a
//! `RangeVar` of its parse tree names (with libpg_query's own tree, walked
//! here independently of the engine) is among the tables the engine
//! reported for the string. A name with no schema counts when some
//! reported table has that name (the engine qualifies it through the
//! path); a name that a `WITH` of the string defines may be the CTE and is
//! skipped. A miss panics: a relation the policy never judged.
//!
//! `PORTCULLIS_FUZZ_DEBUG=1 fuzz/target/*/release/relations FILE` prints
//! the SQL an input decodes to and the decision.

#![no_main]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pg_query::NodeRef;
use policy_core::{Class, ColumnInfo, Engine, Identity, Policy, Verdict};

const POLICY: &str = r#"
version = 1
[[rule]]
name = "reads-and-writes"
effect = "allow"
classes = ["read", "write", "session", "transaction"]
tables = ["*.*"]
"#;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let policy = Policy::from_toml_str(POLICY, "relations.toml").expect("the target's policy loads");
        Engine::new(policy, Default::default()).expect("the target's engine builds")
    })
}

// ------------------------------------------------------------------ grammar

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Table {
    Users,
    Orders,
    Secrets,
    PrivateSecrets,
    CatalogClass,
    Quoted,
}

impl Table {
    fn sql(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Orders => "public.orders",
            Table::Secrets => "secrets",
            Table::PrivateSecrets => "private.secrets",
            Table::CatalogClass => "pg_class",
            Table::Quoted => "\"Mixed Case\"",
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Expr {
    Column(u8),
    Const(i16),
    Call(Box<Expr>),
    Compare(Box<Expr>, Box<Expr>),
    Exists(Box<Query>),
    In(Box<Expr>, Box<Query>),
    Scalar(Box<Query>),
    Case(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Arbitrary)]
enum From {
    Table(Table),
    Join(Box<From>, Box<From>, Expr),
    Subquery(Box<Query>),
    Lateral(Box<Query>),
    Function(Table),
}

#[derive(Debug, Arbitrary)]
struct Select {
    targets: Vec<Expr>,
    from: Option<From>,
    filter: Option<Expr>,
    group: Option<Expr>,
    order: Option<Expr>,
}

#[derive(Debug, Arbitrary)]
enum Query {
    Select(Select),
    SetOp(Box<Query>, u8, Box<Query>),
    With(Table, Box<Query>, Box<Query>),
    Values(Vec<Expr>),
}

#[derive(Debug, Arbitrary)]
enum Statement {
    Query(Query),
    Insert(Table, Query),
    Update(Table, Option<From>, Expr),
    Delete(Table, Option<From>, Expr),
    ModifyingCte(Table, Query),
    Explain(Query),
    Many(Vec<Statement>),
}

/// Renders with a budget: deep inputs stop nesting instead of growing.
struct Out {
    sql: String,
    budget: usize,
}

impl Out {
    fn spend(&mut self) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        true
    }

    fn expr(&mut self, e: &Expr) {
        if !self.spend() {
            self.sql.push('1');
            return;
        }
        match e {
            Expr::Column(c) => {
                let _ =
                    write!(self.sql, "{}", ["id", "name", "t.id", "secret", "x.total", "\"Mixed\""][*c as usize % 6]);
            }
            Expr::Const(n) => {
                let _ = write!(self.sql, "{n}");
            }
            Expr::Call(a) => {
                self.sql.push_str("coalesce(");
                self.expr(a);
                self.sql.push_str(", 0)");
            }
            Expr::Compare(a, b) => {
                self.sql.push('(');
                self.expr(a);
                self.sql.push_str(" = ");
                self.expr(b);
                self.sql.push(')');
            }
            Expr::Exists(q) => {
                self.sql.push_str("EXISTS (");
                self.query(q);
                self.sql.push(')');
            }
            Expr::In(a, q) => {
                self.sql.push('(');
                self.expr(a);
                self.sql.push_str(" IN (");
                self.query(q);
                self.sql.push_str("))");
            }
            Expr::Scalar(q) => {
                self.sql.push('(');
                self.query(q);
                self.sql.push(')');
            }
            Expr::Case(a, b) => {
                self.sql.push_str("CASE WHEN ");
                self.expr(a);
                self.sql.push_str(" THEN ");
                self.expr(b);
                self.sql.push_str(" END");
            }
        }
    }

    fn from(&mut self, f: &From) {
        if !self.spend() {
            self.sql.push_str("users");
            return;
        }
        match f {
            From::Table(t) => self.sql.push_str(t.sql()),
            From::Join(a, b, on) => {
                self.from(a);
                self.sql.push_str(" JOIN ");
                self.from(b);
                self.sql.push_str(" ON ");
                self.expr(on);
            }
            From::Subquery(q) => {
                self.sql.push('(');
                self.query(q);
                self.sql.push_str(") AS t");
            }
            From::Lateral(q) => {
                self.sql.push_str("users, LATERAL (");
                self.query(q);
                self.sql.push_str(") AS x");
            }
            From::Function(t) => {
                let _ = write!(self.sql, "generate_series(1, (SELECT count(*) FROM {})) AS g", t.sql());
            }
        }
    }

    fn query(&mut self, q: &Query) {
        if !self.spend() {
            self.sql.push_str("SELECT 1");
            return;
        }
        match q {
            Query::Select(s) => {
                self.sql.push_str("SELECT ");
                if s.targets.is_empty() {
                    self.sql.push('*');
                }
                for (i, t) in s.targets.iter().take(4).enumerate() {
                    if i > 0 {
                        self.sql.push_str(", ");
                    }
                    self.expr(t);
                }
                if let Some(f) = &s.from {
                    self.sql.push_str(" FROM ");
                    self.from(f);
                }
                if let Some(w) = &s.filter {
                    self.sql.push_str(" WHERE ");
                    self.expr(w);
                }
                if let Some(g) = &s.group {
                    self.sql.push_str(" GROUP BY ");
                    self.expr(g);
                }
                if let Some(o) = &s.order {
                    self.sql.push_str(" ORDER BY ");
                    self.expr(o);
                }
            }
            Query::SetOp(a, op, b) => {
                self.sql.push('(');
                self.query(a);
                self.sql.push_str([") UNION (", ") UNION ALL (", ") INTERSECT (", ") EXCEPT ("][*op as usize % 4]);
                self.query(b);
                self.sql.push(')');
            }
            Query::With(name, def, body) => {
                // The CTE takes a table's own name: it shadows that table in its scope.
                let bare = name.sql().rsplit('.').next().unwrap_or("users");
                let _ = write!(self.sql, "WITH {bare} AS (");
                self.query(def);
                self.sql.push_str(") ");
                self.query(body);
            }
            Query::Values(v) => {
                self.sql.push_str("VALUES (");
                if v.is_empty() {
                    self.sql.push('1');
                }
                for (i, e) in v.iter().take(3).enumerate() {
                    if i > 0 {
                        self.sql.push_str("), (");
                    }
                    self.expr(e);
                }
                self.sql.push(')');
            }
        }
    }

    fn statement(&mut self, s: &Statement, depth: usize) {
        match s {
            Statement::Query(q) => self.query(q),
            Statement::Insert(t, q) => {
                let _ = write!(self.sql, "INSERT INTO {} ", t.sql());
                self.query(q);
            }
            Statement::Update(t, from, w) => {
                let _ = write!(self.sql, "UPDATE {} SET name = 'x'", t.sql());
                if let Some(f) = from {
                    self.sql.push_str(" FROM ");
                    self.from(f);
                }
                self.sql.push_str(" WHERE ");
                self.expr(w);
                self.sql.push_str(" RETURNING *");
            }
            Statement::Delete(t, using, w) => {
                let _ = write!(self.sql, "DELETE FROM {}", t.sql());
                if let Some(f) = using {
                    self.sql.push_str(" USING ");
                    self.from(f);
                }
                self.sql.push_str(" WHERE ");
                self.expr(w);
            }
            Statement::ModifyingCte(t, q) => {
                let _ = write!(self.sql, "WITH d AS (DELETE FROM {} RETURNING *) ", t.sql());
                self.query(q);
            }
            Statement::Explain(q) => {
                self.sql.push_str("EXPLAIN ");
                self.query(q);
            }
            Statement::Many(list) if depth == 0 => {
                for (i, s) in list.iter().take(3).enumerate() {
                    if i > 0 {
                        self.sql.push_str("; ");
                    }
                    self.statement(s, depth + 1);
                }
            }
            Statement::Many(_) => self.sql.push_str("SELECT 1"),
        }
    }
}

// ------------------------------------------------------------------ oracle

/// Every relation a `RangeVar` of the string names (schema or not), and
/// the names its `WITH` clauses define.
fn parse_tree_relations(parsed: &pg_query::ParseResult) -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut relations = Vec::new();
    let mut ctes = BTreeSet::new();
    for (node, _, _, _) in parsed.protobuf.nodes() {
        match node {
            NodeRef::RangeVar(v) => relations.push((v.schemaname.clone(), v.relname.clone())),
            NodeRef::CommonTableExpr(c) => {
                ctes.insert(c.ctename.clone());
            }
            _ => {}
        }
    }
    (relations, ctes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sql = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        }
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(statement) = Statement::arbitrary(&mut u) else { return };
        let mut out = Out { sql: String::new(), budget: 64 };
        out.statement(&statement, 0);
        out.sql
    };
    // The engine's own parse (with standard_conforming_strings on) is the
    // one compared.
    let Ok(parsed) = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT) else { return };
    let engine = engine();
    let decision = engine.decide(&Identity::new("fuzz"), &engine.new_session(), &sql);
    if std::env::var_os("PORTCULLIS_FUZZ_DEBUG").is_some() {
        eprintln!("SQL: {sql}\ndecision: {}", decision.to_json());
    }
    if decision.verdict != Verdict::Allow {
        return;
    }
    if decision.statements.iter().any(|s| !matches!(s.facts.class, Class::Read | Class::Write)) {
        return;
    }
    let reported: Vec<(String, String)> = decision
        .statements
        .iter()
        .flat_map(|s| s.facts.tables.iter())
        .filter_map(|t| match ColumnInfo::split_name(t).as_deref() {
            Some([schema, name]) => Some((schema.clone(), name.clone())),
            _ => None,
        })
        .collect();
    let (relations, ctes) = parse_tree_relations(&parsed);
    for (schema, name) in relations {
        let found = if schema.is_empty() {
            ctes.contains(&name) || reported.iter().any(|(_, n)| *n == name)
        } else {
            reported.iter().any(|(s, n)| *s == schema && *n == name)
        };
        assert!(
            found,
            "the engine allowed {sql:?} without judging the relation {schema}.{name}; it reported {:?}",
            decision.statements.iter().flat_map(|s| s.facts.tables.iter()).collect::<Vec<_>>()
        );
    }
});
