//! Does a WHERE clause bound the rows an UPDATE or DELETE touches?
//!
//! A clause bounds nothing when it is a tautology (`true`, `1 = 1`,
//! `'a' = 'a'`, `NOT false`, `x = x`, `x IS NULL OR x IS NOT NULL`, and
//! anything that folds to `true` through casts, AND/OR/NOT, IN-lists and
//! comparisons), or when it never looks at the target's rows (then it is
//! all-or-nothing: `WHERE EXISTS (SELECT 1)`, `WHERE now() > '2000-01-01'`).

use pg_query::protobuf::{self as pb, a_const::Val};
use pg_query::{NodeEnum, NodeRef};

use crate::fingerprint::same_tree;

use super::tree;

/// A constant the folding understands.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Null,
}

fn node(n: &Option<Box<pb::Node>>) -> Option<NodeRef<'_>> {
    n.as_ref().and_then(|n| n.node.as_ref()).map(NodeEnum::to_ref)
}

fn nodes(v: &[pb::Node]) -> impl Iterator<Item = NodeRef<'_>> {
    v.iter().filter_map(|n| n.node.as_ref()).map(NodeEnum::to_ref)
}

fn parse_bool(s: &str) -> Option<bool> {
    // PostgreSQL's boolin: case-insensitive prefixes of true/false/yes/no, on/off, 1/0.
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let prefix = |word: &str| word.starts_with(t.as_str());
    match t.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        "on" => Some(true),
        "of" | "off" => Some(false),
        _ if prefix("true") || prefix("yes") => Some(true),
        _ if prefix("false") || prefix("no") => Some(false),
        _ => None,
    }
}

fn const_value(c: &pb::AConst) -> Value {
    match super::literal::value(c) {
        Some(Val::Boolval(b)) => Value::Bool(b.boolval),
        Some(Val::Ival(i)) => Value::Int(i64::from(i.ival)),
        Some(Val::Fval(f)) => f.fval.parse::<f64>().map_or(Value::Null, Value::Float),
        Some(Val::Sval(s)) => Value::Text(s.sval.clone()),
        Some(Val::Bsval(s)) => Value::Text(s.bsval.clone()),
        None => Value::Null,
    }
}

fn type_name(t: &pb::TypeName) -> String {
    t.names
        .iter()
        .rev()
        .find_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Folds an expression to a constant, when it is one.
fn fold(e: NodeRef<'_>) -> Option<Value> {
    match e {
        NodeRef::AConst(c) => Some(const_value(c)),
        NodeRef::TypeCast(tc) => {
            let v = fold(node(&tc.arg)?)?;
            let ty = tc.type_name.as_ref().map(type_name).unwrap_or_default();
            match ty.as_str() {
                "bool" | "boolean" => match v {
                    Value::Bool(b) => Some(Value::Bool(b)),
                    Value::Int(i) => Some(Value::Bool(i != 0)),
                    Value::Text(s) => parse_bool(&s).map(Value::Bool),
                    Value::Null => Some(Value::Null),
                    Value::Float(_) => None,
                },
                "int2" | "int4" | "int8" | "integer" | "int" | "smallint" | "bigint" => match v {
                    Value::Int(i) => Some(Value::Int(i)),
                    Value::Text(s) => s.trim().parse().ok().map(Value::Int),
                    Value::Bool(b) => Some(Value::Int(i64::from(b))),
                    Value::Null => Some(Value::Null),
                    Value::Float(f) => Some(Value::Int(f.round() as i64)),
                },
                "text" | "varchar" | "bpchar" | "char" | "name" => match v {
                    Value::Text(s) => Some(Value::Text(s)),
                    Value::Int(i) => Some(Value::Text(i.to_string())),
                    Value::Bool(b) => Some(Value::Text(if b { "true".into() } else { "false".into() })),
                    Value::Null => Some(Value::Null),
                    Value::Float(_) => None,
                },
                _ => None,
            }
        }
        NodeRef::BoolExpr(b) => {
            let args: Vec<Option<Value>> = nodes(&b.args).map(truth).collect();
            match pb::BoolExprType::try_from(b.boolop).ok()? {
                pb::BoolExprType::AndExpr => {
                    if args.contains(&Some(Value::Bool(false))) {
                        Some(Value::Bool(false))
                    } else if args.iter().all(|a| *a == Some(Value::Bool(true))) {
                        Some(Value::Bool(true))
                    } else {
                        None
                    }
                }
                pb::BoolExprType::OrExpr => {
                    if args.contains(&Some(Value::Bool(true))) || complementary_null_tests(&b.args) {
                        Some(Value::Bool(true))
                    } else if args.iter().all(|a| *a == Some(Value::Bool(false))) {
                        Some(Value::Bool(false))
                    } else {
                        None
                    }
                }
                pb::BoolExprType::NotExpr => match args.first()? {
                    Some(Value::Bool(v)) => Some(Value::Bool(!v)),
                    Some(Value::Null) => Some(Value::Null),
                    _ => None,
                },
                pb::BoolExprType::Undefined => None,
            }
        }
        NodeRef::AExpr(a) => fold_a_expr(a),
        NodeRef::NullTest(t) => {
            let arg = node(&t.arg)?;
            let v = fold(arg)?;
            let is_null = v == Value::Null;
            match pb::NullTestType::try_from(t.nulltesttype).ok()? {
                pb::NullTestType::IsNull => Some(Value::Bool(is_null)),
                pb::NullTestType::IsNotNull => Some(Value::Bool(!is_null)),
                pb::NullTestType::Undefined => None,
            }
        }
        NodeRef::BooleanTest(t) => {
            let v = truth(node(&t.arg)?)?;
            let b = match v {
                Value::Bool(b) => Some(b),
                Value::Null => None,
                _ => return None,
            };
            let r = match pb::BoolTestType::try_from(t.booltesttype).ok()? {
                pb::BoolTestType::IsTrue => b == Some(true),
                pb::BoolTestType::IsNotTrue => b != Some(true),
                pb::BoolTestType::IsFalse => b == Some(false),
                pb::BoolTestType::IsNotFalse => b != Some(false),
                pb::BoolTestType::IsUnknown => b.is_none(),
                pb::BoolTestType::IsNotUnknown => b.is_some(),
                pb::BoolTestType::Undefined => return None,
            };
            Some(Value::Bool(r))
        }
        _ => None,
    }
}

/// Folds an expression used as a condition: a text constant there is read
/// as a boolean (`WHERE 'true'`), and a comparison of an expression with
/// itself is true for every row that is not NULL.
fn truth(e: NodeRef<'_>) -> Option<Value> {
    match fold(e)? {
        Value::Text(s) => parse_bool(&s).map(Value::Bool),
        v => Some(v),
    }
    .or(None)
}

fn operator(a: &pb::AExpr) -> Option<&str> {
    a.name.last().and_then(|n| match &n.node {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    })
}

fn compare(op: &str, l: &Value, r: &Value) -> Option<Value> {
    use std::cmp::Ordering;
    if *l == Value::Null || *r == Value::Null {
        return Some(Value::Null);
    }
    let ord = match (l, r) {
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b)?,
        (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64))?,
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b)?,
        (Value::Text(a), Value::Text(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Int(a), Value::Text(b)) => a.cmp(&b.trim().parse::<i64>().ok()?),
        (Value::Text(a), Value::Int(b)) => a.trim().parse::<i64>().ok()?.cmp(b),
        _ => return None,
    };
    let r = match op {
        "=" => ord == Ordering::Equal,
        "<>" | "!=" => ord != Ordering::Equal,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        ">=" => ord != Ordering::Less,
        _ => return None,
    };
    Some(Value::Bool(r))
}

fn fold_a_expr(a: &pb::AExpr) -> Option<Value> {
    let kind = pb::AExprKind::try_from(a.kind).ok()?;
    let op = operator(a)?;
    let (l, r) = (node(&a.lexpr), node(&a.rexpr));
    match kind {
        pb::AExprKind::AexprOp => {
            let (l, r) = (l?, r?);
            // The right side is folded only when the left one folds, so
            // `col = 5` reads no constant (and can share a decision with
            // `col = 6`).
            if let Some(lv) = fold(l) {
                if let Some(rv) = fold(r) {
                    return compare(op, &lv, &rv);
                }
            }
            // x = x, x >= x, x <= x: true for every non-NULL x; x <> x,
            // x < x, x > x: false.
            if matches!(op, "=" | ">=" | "<=" | "<>" | "<" | ">") && same_tree(l, r) {
                return Some(Value::Bool(matches!(op, "=" | ">=" | "<=")));
            }
            None
        }
        pb::AExprKind::AexprIn => {
            let lv = fold(l?)?;
            let NodeRef::List(list) = r? else { return None };
            let mut any = false;
            for item in nodes(&list.items) {
                if compare("=", &lv, &fold(item)?)? == Value::Bool(true) {
                    any = true;
                }
            }
            let negate = op == "<>";
            Some(Value::Bool(any != negate))
        }
        pb::AExprKind::AexprLike | pb::AExprKind::AexprIlike => {
            // anything LIKE '%' (or '%%...'): true for every non-NULL value.
            let pattern = fold(r?)?;
            match pattern {
                Value::Text(p) if !p.is_empty() && p.chars().all(|c| c == '%') && !op.starts_with('!') => {
                    Some(Value::Bool(true))
                }
                _ => None,
            }
        }
        pb::AExprKind::AexprNotDistinct => {
            let (l, r) = (l?, r?);
            if same_tree(l, r) {
                return Some(Value::Bool(true));
            }
            Some(Value::Bool(fold(l)? == fold(r)?))
        }
        _ => None,
    }
}

/// `x IS NULL OR x IS NOT NULL` (in any order, among other disjuncts).
fn complementary_null_tests(args: &[pb::Node]) -> bool {
    let tests: Vec<&pb::NullTest> = args
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::NullTest(t)) => Some(&**t),
            _ => None,
        })
        .collect();
    tests.iter().any(|a| {
        tests.iter().any(|b| {
            a.nulltesttype != b.nulltesttype
                && match (node(&a.arg), node(&b.arg)) {
                    (Some(x), Some(y)) => same_tree(x, y),
                    _ => false,
                }
        })
    })
}

/// Whether `expr` can tell one of the target's rows from another: it refers
/// to a column (qualified by one of `target_names`, or unqualified outside
/// any subquery) or is `WHERE CURRENT OF`.
fn looks_at_rows(expr: NodeRef<'_>, target_names: &[&str], in_subquery: bool) -> bool {
    match expr {
        NodeRef::CurrentOfExpr(_) => return true,
        NodeRef::ColumnRef(c) => {
            let fields: Vec<&str> = c
                .fields
                .iter()
                .filter_map(|f| match &f.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            return match fields.len() {
                1 => !in_subquery,
                n if n >= 2 => fields.get(n - 2).is_some_and(|q| target_names.contains(q)),
                _ => false,
            };
        }
        _ => {}
    }
    let nested = in_subquery || matches!(expr, NodeRef::SubLink(_) | NodeRef::SelectStmt(_));
    // Collected first: the generated walk's frame stays off the recursion.
    tree::children(expr).into_iter().any(|child| looks_at_rows(child, target_names, nested))
}

/// Whether `where_clause` bounds the rows of the target (named `target_names`:
/// its relation name and alias).
pub(crate) fn bounds_rows(where_clause: Option<NodeRef<'_>>, target_names: &[&str]) -> bool {
    let Some(w) = where_clause else { return false };
    if truth(w) == Some(Value::Bool(true)) {
        return false;
    }
    looks_at_rows(w, target_names, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn where_of(sql: &str) -> bool {
        let parsed = pg_query::parse(sql, 0).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()).map(NodeEnum::to_ref);
        match stmt {
            Some(NodeRef::DeleteStmt(d)) => bounds_rows(node(&d.where_clause), &["t", "x"]),
            Some(NodeRef::UpdateStmt(u)) => bounds_rows(node(&u.where_clause), &["t", "x"]),
            _ => panic!("not a DELETE/UPDATE: {sql}"),
        }
    }

    #[test]
    fn real_conditions_bound_rows() {
        for sql in [
            "DELETE FROM t WHERE id = 1",
            "DELETE FROM t WHERE id > 5 AND true",
            "DELETE FROM t x WHERE x.id IN (SELECT id FROM y)",
            "UPDATE t SET a = 1 WHERE a IS NULL",
            "DELETE FROM t WHERE CURRENT OF c",
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM y WHERE y.id = t.id)",
            "DELETE FROM t WHERE id = 1 OR false",
        ] {
            assert!(where_of(sql), "{sql}");
        }
    }

    #[test]
    fn tautologies_and_row_blind_clauses_do_not() {
        for sql in [
            "DELETE FROM t",
            "DELETE FROM t WHERE true",
            "DELETE FROM t WHERE 1 = 1",
            "DELETE FROM t WHERE 'a' = 'a'",
            "DELETE FROM t WHERE NOT false",
            "DELETE FROM t WHERE id = id",
            "DELETE FROM t WHERE t.id = t.id",
            "DELETE FROM t WHERE x IS NULL OR x IS NOT NULL",
            "DELETE FROM t WHERE x IS NOT NULL OR y = 3 OR x IS NULL",
            "DELETE FROM t WHERE 1::boolean",
            "DELETE FROM t WHERE 'yes'::bool",
            "DELETE FROM t WHERE 'true'",
            "DELETE FROM t WHERE (1 = 1) IS TRUE",
            "DELETE FROM t WHERE 2 > 1",
            "DELETE FROM t WHERE 1 IN (1, 2)",
            "DELETE FROM t WHERE id = 5 OR true",
            "DELETE FROM t WHERE name LIKE '%'",
            "DELETE FROM t WHERE EXISTS (SELECT 1)",
            "DELETE FROM t WHERE (SELECT true)",
            "DELETE FROM t WHERE now() > '2000-01-01'",
            "DELETE FROM t WHERE id IS NOT DISTINCT FROM id",
            "UPDATE t SET a = 1 WHERE NOT (1 = 2)",
            "UPDATE t SET a = 1 WHERE true AND 1 = 1",
            "UPDATE t SET a = 1 WHERE NOT (id <> id)",
            "UPDATE t SET a = 1 WHERE NOT (id < id)",
        ] {
            assert!(!where_of(sql), "{sql}");
        }
    }
}
