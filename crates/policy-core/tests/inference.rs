//! Inference control: a mask's `inference` refuses statements that read
//! the column it covers in the clauses it names, for the identities it
//! applies to; everything else stays as it was.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;

use policy_core::{Clause, Definitions, Engine, Function, FunctionBody, Identity, Policy, Verdict, View, ViewKind};

const POLICY: &str = r#"
version = 1
[[rule]]
name = "read"
effect = "allow"
classes = ["read", "write"]

[[mask]]
name = "ssn"
columns = ["public.people.ssn"]
strategy = "partial"
show_last = 4
exempt_groups = ["auditors"]
inference = INFERENCE

[[mask]]
name = "email"
columns = ["public.people.email"]
strategy = "email"
"#;

fn engine(inference: &str) -> Engine {
    let policy = Policy::from_toml_str(&POLICY.replace("INFERENCE", inference), "inference.toml").unwrap();
    Engine::new(policy, Default::default()).unwrap()
}

fn verdict(e: &Engine, who: &Identity, sql: &str) -> (Verdict, String) {
    let d = e.decide(who, &e.new_session(), sql);
    (d.verdict, d.reason.to_string())
}

fn agent() -> Identity {
    Identity::new("agent")
}

#[test]
fn each_clause_is_refused_only_where_the_mask_names_it() {
    let cases: [(&str, Clause); 25] = [
        // A position inside a star's columns.
        ("SELECT * FROM people ORDER BY 2 LIMIT 5", Clause::Order),
        ("SELECT p.* FROM people p ORDER BY 3", Clause::Order),
        ("SELECT DISTINCT ON (2) * FROM people", Clause::Group),
        ("SELECT DISTINCT ON (2) id, ssn FROM people", Clause::Group),
        // A function in FROM returns rows its arguments count out.
        ("SELECT p.id, count(*) FROM people p, generate_series(1, ascii(p.ssn)) g GROUP BY p.id", Clause::Filter),
        ("SELECT p.id FROM people p CROSS JOIN LATERAL unnest(array_fill(0, ARRAY[length(p.ssn)])) u", Clause::Filter),
        ("SELECT ssn FROM people INTERSECT SELECT '123-45-6789'", Clause::Join),
        ("SELECT ssn FROM people EXCEPT SELECT ssn FROM leaked", Clause::Join),
        ("SELECT ssn FROM people UNION SELECT '123-45-6789'", Clause::Group),
        ("SELECT id FROM people WHERE ssn LIKE '531%'", Clause::Filter),
        ("SELECT id FROM people WHERE md5(ssn) = 'abc'", Clause::Filter),
        ("SELECT count(*) FROM people GROUP BY id HAVING max(ssn) > '5'", Clause::Filter),
        ("SELECT count(*) FILTER (WHERE ssn > '5') FROM people", Clause::Filter),
        ("SELECT id FROM people WHERE id IN (SELECT id FROM people WHERE ssn < '2')", Clause::Filter),
        ("DELETE FROM people WHERE ssn = '123-45-6789'", Clause::Filter),
        ("SELECT id FROM people ORDER BY ssn", Clause::Order),
        ("SELECT id, ssn FROM people ORDER BY 2", Clause::Order),
        ("SELECT id, ssn AS s FROM people ORDER BY s DESC", Clause::Order),
        ("SELECT string_agg(id::text, ',' ORDER BY ssn) FROM people", Clause::Order),
        ("SELECT row_number() OVER (ORDER BY ssn) FROM people", Clause::Order),
        ("SELECT count(*) FROM people GROUP BY ssn", Clause::Group),
        ("SELECT DISTINCT ssn FROM people", Clause::Group),
        ("SELECT rank() OVER (PARTITION BY left(ssn, 3)) FROM people", Clause::Group),
        ("SELECT p.id FROM people p JOIN people q ON p.ssn = q.ssn", Clause::Join),
        ("SELECT id FROM people JOIN leaked USING (ssn)", Clause::Join),
    ];
    for (sql, clause) in cases {
        let all = engine(r#"["filter", "order", "group", "join"]"#);
        let (v, reason) = verdict(&all, &agent(), sql);
        assert_eq!(v, Verdict::Deny, "{sql}");
        assert!(reason.contains("mask `ssn`") && reason.contains(clause.as_str()), "{sql}: {reason}");
        // Only the clause named: the others leave the statement alone.
        let others: Vec<&str> =
            ["filter", "order", "group", "join"].into_iter().filter(|c| *c != clause.as_str()).collect();
        let e = engine(&format!("{others:?}"));
        let (v, reason) = verdict(&e, &agent(), sql);
        assert_eq!(v, Verdict::Allow, "{sql} with {others:?}: {reason}");
        // The exempt are not affected, and no inference is the default.
        assert_eq!(verdict(&all, &Identity::new("ann").with_groups(["auditors"]), sql).0, Verdict::Allow, "{sql}");
        assert_eq!(verdict(&engine("[]"), &agent(), sql).0, Verdict::Allow, "{sql}");
    }
}

#[test]
fn statements_that_only_return_the_masked_column_stay_allowed() {
    let e = engine(r#"["filter", "order", "group", "join"]"#);
    for sql in [
        "SELECT ssn FROM people",
        "SELECT id, ssn FROM people WHERE id = 3 ORDER BY id",
        "SELECT id FROM people WHERE email LIKE '%@example.com' ORDER BY email",
        "SELECT p.ssn FROM people p JOIN orders o ON o.person = p.id GROUP BY p.ssn, o.id",
        "SELECT name FROM (SELECT name FROM people) t ORDER BY 1",
        "SELECT ssn FROM people UNION ALL SELECT '123-45-6789'",
    ] {
        let (v, reason) = verdict(&e, &agent(), sql);
        if sql.contains("GROUP BY p.ssn") {
            assert_eq!(v, Verdict::Deny, "{sql}: grouping by ssn");
            continue;
        }
        assert_eq!(v, Verdict::Allow, "{sql}: {reason}");
    }
}

#[test]
fn columns_it_cannot_name_count_when_the_statement_reads_a_masked_one() {
    let e = engine(r#"["filter", "order"]"#);
    // A derived table's column: it may be the SSN.
    let (v, reason) = verdict(&e, &agent(), "SELECT x FROM (SELECT ssn AS x FROM people) t WHERE x LIKE '5%'");
    assert_eq!(v, Verdict::Deny, "{reason}");
    assert!(reason.contains("t.x"), "{reason}");
    // ... and when nothing masked is read at all, it cannot be.
    let (v, reason) = verdict(&e, &agent(), "SELECT x FROM (SELECT id AS x FROM orders) t WHERE x > 5");
    assert_eq!(v, Verdict::Allow, "{reason}");
}

#[test]
fn views_and_sql_functions_do_not_hide_the_column() {
    let e = engine(r#"["filter", "order"]"#);
    let mut d = Definitions::new();
    d.insert(
        "public",
        "contacts",
        View::new(
            ViewKind::View,
            vec!["id".into(), "tax".into()],
            " SELECT people.id,\n    people.ssn AS tax\n   FROM public.people;",
        ),
    );
    d.insert_function(
        "public",
        "tax_of",
        Function::new(FunctionBody::Sql("SELECT ssn FROM public.people WHERE id = $1".into()), None),
    );
    d.insert_function(
        "public",
        "has_prefix",
        Function::new(
            FunctionBody::Sql("SELECT count(*) > 0 FROM public.people WHERE ssn LIKE $1 || '%'".into()),
            None,
        ),
    );
    let mut s = e.new_session();
    s.definitions = Some(Arc::new(d));
    for sql in [
        "SELECT id FROM contacts WHERE tax LIKE '5%'",
        "SELECT id FROM contacts ORDER BY tax",
        "SELECT id FROM people WHERE tax_of(id) LIKE '5%'",
        "SELECT has_prefix('531')",
    ] {
        let d = e.decide(&agent(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}: {}", d.reason);
        assert!(d.reason.contains("mask `ssn`"), "{sql}: {}", d.reason);
    }
    assert_eq!(e.decide(&agent(), &s, "SELECT tax FROM contacts WHERE id = 1").verdict, Verdict::Allow);
}

#[test]
fn an_unknown_clause_name_is_a_policy_error_with_its_place() {
    let err = Policy::from_toml_str(&POLICY.replace("INFERENCE", r#"["filtr"]"#), "p.toml").unwrap_err().to_string();
    assert!(err.starts_with("p.toml:"), "{err}");
    assert!(err.contains("filtr"), "{err}");
}
