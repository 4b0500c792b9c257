//! Column masks by lineage (POLICY.md §5): which result columns are masked
//! and what they become.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::borrow::Cow;

use policy_core::{ColumnInfo, Engine, Identity, Keys, Policy, RowMasker, REDACTED};

const POLICY: &str = r#"
version = 1
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4
exempt_groups = ["pii-readers"]

[[mask]]
name = "email"
columns = ["public.users.email"]
strategy = "email"

[[mask]]
name = "salary"
columns = ["public.users.salary"]
strategy = "null"

[[mask]]
name = "name"
columns = ["public.users.name"]
strategy = "hash"
"#;

fn engine() -> Engine {
    let p = Policy::from_toml_str(POLICY, "mask.toml").unwrap();
    Engine::new(p, Keys { pseudonym_key: Some(b"test key".to_vec()) }).unwrap()
}

fn bob() -> Identity {
    Identity::new("bob")
}

/// The masker for `sql` when the server reports no sources (computed
/// columns), with `n` text columns.
fn computed(sql: &str, n: usize) -> RowMasker {
    let e = engine();
    let a = e.analyze(&e.new_session(), sql);
    let cols: Vec<ColumnInfo> = (0..n).map(|i| ColumnInfo::text(&format!("c{i}"), None)).collect();
    e.masker(&bob(), &a.statements[0], &cols)
}

fn apply(m: &RowMasker, values: &[&str]) -> Vec<Option<String>> {
    let mut row: Vec<Option<Cow<'_, [u8]>>> = values.iter().map(|v| Some(Cow::Borrowed(v.as_bytes()))).collect();
    m.mask_row(&mut row);
    row.into_iter().map(|v| v.map(|b| String::from_utf8(b.into_owned()).unwrap())).collect()
}

#[test]
fn plain_references_keep_the_strategy() {
    let e = engine();
    let a = e.analyze(&e.new_session(), "SELECT id, ssn, email, salary, name FROM users");
    let cols = [
        ColumnInfo::text("id", Some("public.users.id")),
        ColumnInfo::text("ssn", Some("public.users.ssn")),
        ColumnInfo::text("email", Some("public.users.email")),
        ColumnInfo { text_type: false, ..ColumnInfo::text("salary", Some("public.users.salary")) },
        ColumnInfo::text("name", Some("public.users.name")),
    ];
    let m = e.masker(&bob(), &a.statements[0], &cols);
    let out = apply(&m, &["7", "123-45-6789", "bob@example.com", "5000", "Bob"]);
    assert_eq!(out[0].as_deref(), Some("7"));
    assert_eq!(out[1].as_deref(), Some("****6789"));
    assert_eq!(out[2].as_deref(), Some("****@example.com"));
    assert_eq!(out[3], None, "null keeps the type");
    let pseudonym = out[4].clone().unwrap();
    assert_eq!(pseudonym.len(), 16);
    assert_eq!(apply(&m, &["1", "x", "y", "1", "Bob"])[4].as_deref(), Some(pseudonym.as_str()), "equal in, equal out");
    assert!(m.retyped_columns().is_empty(), "null on a non-text column keeps its type");
}

#[test]
fn exempt_groups_see_real_values() {
    let e = engine();
    let a = e.analyze(&e.new_session(), "SELECT ssn FROM users");
    let cols = [ColumnInfo::text("ssn", Some("public.users.ssn"))];
    let reader = Identity::new("carol").with_groups(["pii-readers"]);
    assert!(e.masker(&reader, &a.statements[0], &cols).is_noop());
    assert!(!e.masker(&bob(), &a.statements[0], &cols).is_noop());
}

#[test]
fn rows_without_masked_columns_are_untouched() {
    let e = engine();
    let a = e.analyze(&e.new_session(), "SELECT id, total FROM orders");
    let cols =
        [ColumnInfo::text("id", Some("public.orders.id")), ColumnInfo::text("total", Some("public.orders.total"))];
    let m = e.masker(&bob(), &a.statements[0], &cols);
    assert!(m.is_noop());
    let mut row = vec![Some(Cow::Borrowed(&b"1"[..])), None];
    m.mask_row(&mut row);
    assert!(matches!(row[0], Some(Cow::Borrowed(_))));
}

#[test]
fn lineage_carries_masks_through_expressions() {
    // (sql, column count, expected output of the first column for input "123-45-6789")
    let whole = [
        "SELECT upper(ssn) FROM users",
        "SELECT ssn || '' FROM users",
        "SELECT substr(ssn, 1, 3) FROM users",
        "SELECT CASE WHEN true THEN ssn END FROM users",
        "SELECT coalesce(ssn, 'x') FROM users",
        "SELECT max(ssn) FROM users",
        "SELECT first_value(ssn) OVER (ORDER BY id) FROM users",
        "SELECT ssn::bytea FROM users",
        "SELECT (SELECT ssn FROM users LIMIT 1)",
        "SELECT row_to_json(u) FROM users u",
        "SELECT to_jsonb(u) FROM users u",
        "SELECT json_agg(u) FROM users u",
        "SELECT u FROM users u",
        "SELECT x FROM json_to_recordset('[]') AS t(x text)",
    ];
    for sql in whole {
        let m = computed(sql, 1);
        assert_eq!(apply(&m, &["123-45-6789"])[0].as_deref(), Some(REDACTED), "{sql}");
    }
    let keeps_strategy = [
        "SELECT ssn AS id_number FROM users",
        "SELECT ssn::text FROM users",
        "SELECT x.s FROM (SELECT ssn AS s FROM users) x",
        "WITH c AS (SELECT ssn FROM users) SELECT ssn FROM c",
        "SELECT ssn FROM users UNION ALL SELECT ssn FROM contractors",
    ];
    for sql in keeps_strategy {
        let m = computed(sql, 1);
        assert_eq!(apply(&m, &["123-45-6789"])[0].as_deref(), Some("****6789"), "{sql}");
    }
    let clean = ["SELECT id FROM users", "SELECT 1", "SELECT count(*) FROM users", "SELECT lower(title) FROM books"];
    for sql in clean {
        assert!(computed(sql, 1).is_noop(), "{sql}");
    }
    // A star over a table: the columns' sources come from the server.
    let m = computed("SELECT * FROM users", 3);
    assert_eq!(m.mask_of(0), Some("ssn"), "no sources and a star: lineage unproven, masked whole");
}

#[test]
fn non_text_columns_are_retyped_and_binary_values_masked_whole() {
    let e = engine();
    let a = e.analyze(&e.new_session(), "SELECT ssn FROM users");
    let cols = [ColumnInfo { text_type: false, binary: true, ..ColumnInfo::text("ssn", Some("public.users.ssn")) }];
    let m = e.masker(&bob(), &a.statements[0], &cols);
    assert_eq!(m.retyped_columns(), [0]);
    let mut row = vec![Some(Cow::Borrowed(&[0u8, 0, 0, 42][..]))];
    m.mask_row(&mut row);
    assert_eq!(row[0].as_deref(), Some(REDACTED.as_bytes()));
    // NULL stays NULL.
    let mut row: Vec<Option<Cow<'_, [u8]>>> = vec![None];
    m.mask_row(&mut row);
    assert!(row[0].is_none());
}
