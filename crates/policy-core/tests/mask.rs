//! Column masks by lineage (docs/policy.md §5): which result columns are masked
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
        ColumnInfo { type_oid: 1700, ..ColumnInfo::text("salary", Some("public.users.salary")) },
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

/// A `hash` mask hashes the column itself, never a value computed from it:
/// with one key, the pseudonym of `substr(name, 1, 1)` would match the
/// pseudonym of a guess derived from the same column, one character at a
/// time.
#[test]
fn a_hash_mask_hashes_only_the_column_itself() {
    let direct = computed("SELECT name AS n FROM users", 1);
    let pseudonym = apply(&direct, &["Ann"])[0].clone().unwrap();
    assert_ne!(pseudonym, REDACTED);
    assert_eq!(apply(&computed("SELECT name::text FROM users", 1), &["Ann"])[0].as_deref(), Some(&*pseudonym));
    for sql in [
        "SELECT substr(name, 1, 1) FROM users",
        "SELECT CASE WHEN false THEN name ELSE 'A' END FROM users",
        "SELECT lower(name) FROM users",
        "SELECT u FROM users u",
    ] {
        assert_eq!(apply(&computed(sql, 1), &["A"])[0].as_deref(), Some(REDACTED), "{sql}");
    }
}

#[test]
fn non_text_columns_are_retyped_and_binary_values_masked_whole() {
    let e = engine();
    let a = e.analyze(&e.new_session(), "SELECT ssn FROM users");
    let cols = [ColumnInfo { type_oid: 23, binary: true, ..ColumnInfo::text("ssn", Some("public.users.ssn")) }];
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

const DETECTING: &str = r#"
version = 1
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4
exempt_groups = ["pii-readers"]

[[detector]]
name = "cards"
kinds = ["credit_card"]
strategy = "partial"
show_last = 4
exempt_groups = ["billing"]

[[detector]]
name = "contacts"
kinds = ["email", "us_ssn"]
strategy = "redact"
"#;

fn detecting() -> Engine {
    Engine::new(Policy::from_toml_str(DETECTING, "detect.toml").unwrap(), Keys::default()).unwrap()
}

fn typed(name: &str, source: Option<&str>, type_oid: u32, binary: bool) -> ColumnInfo {
    ColumnInfo::new(name, source, type_oid, binary)
}

#[test]
fn detectors_scan_every_unmasked_text_value() {
    let e = detecting();
    let a = e.analyze(&e.new_session(), "SELECT note, ssn, amount, doc, tags FROM notes");
    let cols = [
        typed("note", Some("public.notes.note"), 25, false),
        typed("ssn", Some("public.notes.ssn"), 25, false),
        typed("amount", Some("public.notes.amount"), 1700, false),
        typed("doc", Some("public.notes.doc"), 3802, true),
        typed("tags", Some("public.notes.tags"), 1009, false),
    ];
    let m = e.masker(&bob(), &a.statements[0], &cols);
    assert!(!m.is_noop());
    let mut row: Vec<Option<Cow<'_, [u8]>>> = vec![
        Some(Cow::Borrowed(b"card 4111 1111 1111 1111, mail bob@example.com")),
        Some(Cow::Borrowed(b"123-45-6789")),
        Some(Cow::Borrowed(b"4111111111111111")),
        Some(Cow::Borrowed(b"\x01{\"card\": 4111111111111111}")),
        Some(Cow::Borrowed(b"{\"ssn 123-45-6789\",plain}")),
    ];
    assert_eq!(m.mask_row(&mut row), 4);
    assert_eq!(row[0].as_deref(), Some(&b"card ****1111, mail [redacted]"[..]));
    // The column mask decides, the detectors do not run on top of it.
    assert_eq!(row[1].as_deref(), Some(&b"****6789"[..]));
    // Numbers hold no text: a numeric column is never rewritten by detectors.
    assert!(matches!(row[2], Some(Cow::Borrowed(b"4111111111111111"))));
    // Binary jsonb keeps its version byte and stays valid JSON.
    assert_eq!(row[3].as_deref(), Some(&b"\x01{\"card\": \"****1111\"}"[..]));
    assert_eq!(row[4].as_deref(), Some(&b"{\"ssn [redacted]\",plain}"[..]));
}

#[test]
fn detectors_honour_exempt_groups_and_leave_clean_rows_borrowed() {
    let e = detecting();
    let a = e.analyze(&e.new_session(), "SELECT note FROM notes");
    let cols = [typed("note", Some("public.notes.note"), 25, false)];
    let billing = Identity::new("ann").with_groups(["billing"]);
    let m = e.masker(&billing, &a.statements[0], &cols);
    let mut row = vec![Some(Cow::Borrowed(&b"4111 1111 1111 1111 / ann@example.com"[..]))];
    assert_eq!(m.mask_row(&mut row), 1);
    assert_eq!(row[0].as_deref(), Some(&b"4111 1111 1111 1111 / [redacted]"[..]), "billing sees cards only");

    let m = e.masker(&bob(), &a.statements[0], &cols);
    let mut row = vec![Some(Cow::Borrowed(&b"order 1234 shipped 2024-01-15"[..])), None];
    assert_eq!(m.mask_row(&mut row), 0);
    assert!(matches!(row[0], Some(Cow::Borrowed(_))), "nothing matched: the value is not copied");

    // Columns whose types hold no text leave nothing to scan.
    let a = e.analyze(&e.new_session(), "SELECT id, total FROM orders");
    let cols = [typed("id", None, 23, true), typed("total", None, 1700, false)];
    assert!(e.masker(&bob(), &a.statements[0], &cols).is_noop());
}

#[test]
fn binary_arrays_holding_a_match_become_null() {
    let e = detecting();
    let a = e.analyze(&e.new_session(), "SELECT tags FROM notes");
    let cols = [typed("tags", Some("public.notes.tags"), 1009, true)];
    let m = e.masker(&bob(), &a.statements[0], &cols);
    let mut value = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 15];
    value.extend_from_slice(b"bob@example.com");
    let mut row = vec![Some(Cow::Owned(value))];
    assert_eq!(m.mask_row(&mut row), 1);
    assert!(row[0].is_none(), "a binary array cannot be edited in place: NULL keeps it decodable");
}

mod scrub {
    use super::*;
    use policy_core::Scrubbed;

    const QUOTING: &str = r#"invalid input syntax for type integer: "123-45-6789""#;

    fn scrubber(sql: &str, who: &Identity) -> policy_core::MessageScrubber {
        let e = detecting();
        let a = e.analyze(&e.new_session(), sql);
        e.scrubber(who, &a.statements)
    }

    #[test]
    fn errors_of_statements_that_may_read_a_masked_value_are_withheld() {
        for sql in [
            "SELECT ssn::int FROM users",
            "SELECT 1 FROM users WHERE ssn::int = 1",
            "SELECT * FROM users",
            "SELECT 1 FROM users u WHERE u::text::int = 1",
            "SELECT ssn::int FROM users JOIN orders ON true",
            "SELECT current_setting(string_agg(ssn, ';')) FROM users",
            "SELECT ssn::regclass FROM users",
            "INSERT INTO archive SELECT ssn::int FROM users",
            "DO $$ BEGIN RAISE EXCEPTION '%', (SELECT ssn FROM users LIMIT 1); END $$",
            // Statements that show no masked column but may run one.
            "FETCH c",
            "MOVE ALL IN c",
            "COMMIT",
            "END",
            "UPDATE users SET id = NULL WHERE id = 1",
            "DELETE FROM orders WHERE id = 1",
            "ALTER TABLE users ADD CHECK (id > 0)",
            "this is not sql",
        ] {
            let s = scrubber(sql, &bob());
            assert!(s.withholds(), "{sql}");
            for (code, text) in [
                ("22P02", QUOTING),
                ("42704", r#"unrecognized configuration parameter "123-45-6789""#),
                ("42P01", r#"relation "123-45-6789" does not exist"#),
                ("3D000", r#"database "123-45-6789" does not exist"#),
                ("42601", r#"syntax error in tsquery: "123-45-6789""#),
                ("23502", r#"null value in column "id" of relation "users" violates not-null constraint"#),
                ("XX000", "anything"),
                ("0A000", "anything"),
                ("", "no code"),
            ] {
                match s.scrub(code, b'M', text) {
                    Scrubbed::Replace(m) => {
                        assert!(!m.contains("6789") && m.contains(code) && m.contains("withheld"), "{sql}: {m}")
                    }
                    other => panic!("{sql} {code}: {other:?}"),
                }
            }
            assert_eq!(s.scrub("23502", b'D', "Failing row contains (null, 123-45-6789)."), Scrubbed::Drop, "{sql}");
            assert_eq!(s.scrub("23505", b'D', "Key (ssn)=(123-45-6789) already exists."), Scrubbed::Drop, "{sql}");
            assert_eq!(s.scrub("P0001", b'W', "PL/pgSQL function inline_code_block"), Scrubbed::Drop, "{sql}");
            assert_eq!(s.scrub("42601", b'H', "hint"), Scrubbed::Drop, "{sql}");
            assert_eq!(s.scrub("42601", b'q', "SELECT 1"), Scrubbed::Drop, "{sql}");
            // Identifiers, positions and codes are kept.
            assert_eq!(s.scrub("22P02", b'C', "22P02"), Scrubbed::Keep, "{sql}");
            assert_eq!(s.scrub("23505", b'n', "users_ssn_key"), Scrubbed::Keep, "{sql}");
            assert_eq!(s.scrub("22P02", b'P', "8"), Scrubbed::Keep, "{sql}");
            // Messages that carry no value keep their text (through the
            // detectors), without their detail.
            for (code, text) in [
                ("25P02", "current transaction is aborted, commands ignored until end of transaction block"),
                ("40P01", "deadlock detected"),
                ("57014", "canceling statement due to statement timeout"),
                ("42501", "permission denied for table users"),
                ("53200", "out of memory"),
            ] {
                assert_eq!(s.scrub(code, b'M', text), Scrubbed::Keep, "{sql} {code}");
            }
            assert_eq!(s.scrub("40P01", b'D', "Process 1 waits for ShareLock"), Scrubbed::Drop, "{sql}");
            assert!(
                matches!(s.scrub("57014", b'M', "mail bob@example.com"), Scrubbed::Replace(m) if m == "mail [redacted]")
            );
        }
    }

    #[test]
    fn other_messages_pass_through_the_detectors() {
        for sql in [
            "SELECT '123-45-6789'::int",
            "SELECT id::int FROM orders",
            "SELECT name FROM users",
            "SELECT (id || 'x')::regclass FROM users",
            "SET search_path = app",
            "BEGIN",
            "ROLLBACK",
            "PREPARE p AS SELECT ssn FROM users",
            "SELECT 1; SELECT name FROM users",
        ] {
            let s = scrubber(sql, &bob());
            assert!(!s.withholds(), "{sql}");
            assert_eq!(
                s.scrub("22P02", b'M', QUOTING),
                Scrubbed::Replace(r#"invalid input syntax for type integer: "[redacted]""#.to_string()),
                "{sql}"
            );
            assert_eq!(s.scrub("22P02", b'M', r#"invalid input syntax for type integer: "abc""#), Scrubbed::Keep);
            assert_eq!(s.scrub("42P01", b'M', r#"relation "1x" does not exist"#), Scrubbed::Keep, "{sql}");
        }
        // One statement of a string that may read a masked value withholds
        // the messages of the whole string.
        assert!(scrubber("SELECT name FROM users; SELECT ssn::int FROM users", &bob()).withholds());
        // Exempt from the mask: the detectors still apply.
        let reader = Identity::new("carol").with_groups(["pii-readers"]);
        let s = scrubber("SELECT ssn::int FROM users", &reader);
        assert!(!s.withholds());
        assert!(matches!(s.scrub("22P02", b'M', QUOTING), Scrubbed::Replace(m) if m.contains("[redacted]")));
        let s = scrubber("UPDATE users SET id = NULL WHERE id = 1", &reader);
        assert!(!s.withholds());
        // A message tied to no statement is withheld from a masked caller;
        // a text that answers none (a notification, a Parse) is not.
        let e = detecting();
        let s = e.scrubber(&bob(), &[]);
        assert!(s.withholds());
        assert!(
            matches!(s.scrub("XX000", b'M', "mail bob@example.com"), Scrubbed::Replace(m) if m.contains("withheld"))
        );
        assert!(!e.scrubber(&reader, &[]).withholds());
        let s = e.text_scrubber(&bob());
        assert!(!s.withholds());
        assert_eq!(s.scrub("XX000", b'M', "mail bob@example.com"), Scrubbed::Replace("mail [redacted]".to_string()));
        assert_eq!(s.scrub("42703", b'M', r#"column "sn" does not exist"#), Scrubbed::Keep);
    }
}

mod data_flow {
    use super::*;
    use policy_core::Verdict;

    const POLICY: &str = r#"
version = 1
[[rule]]
name = "everything"
effect = "allow"
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
exempt_groups = ["pii-readers"]
"#;

    #[test]
    fn masked_values_may_not_be_stored_where_they_read_back_unmasked() {
        let e = Engine::new(Policy::from_toml_str(POLICY, "flow.toml").unwrap(), Keys::default()).unwrap();
        let s = e.new_session();
        let bob = Identity::new("bob");
        let reader = Identity::new("carol").with_groups(["pii-readers"]);
        for sql in [
            "UPDATE orders SET note = c.ssn FROM customers c WHERE c.id = orders.customer_id",
            "INSERT INTO notes (body) SELECT ssn FROM customers",
            "UPDATE customers SET name = ssn WHERE id = 1",
            "CREATE TABLE copy AS SELECT ssn FROM customers",
            "SELECT ssn INTO copy FROM customers",
            "CREATE VIEW v AS SELECT ssn AS x FROM customers",
            "SELECT set_config('my.v', ssn, false) FROM customers",
            "SELECT pg_catalog.pg_notify('c', ssn) FROM customers",
            "SELECT pg_advisory_lock(replace(ssn, '-', '')::bigint) FROM customers",
            "SELECT pg_try_advisory_xact_lock(length(ssn), ascii(ssn)) FROM customers",
            "SELECT setseed(ascii(ssn) / 256.0) FROM customers",
            "SELECT setval('orders_id_seq', replace(ssn, '-', '')::bigint) FROM customers",
            "SELECT lo_create(replace(ssn, '-', '')::oid) FROM customers",
            "SELECT lo_lseek64(0, replace(ssn, '-', '')::bigint, 0) FROM customers",
            "INSERT INTO notes SELECT * FROM customers",
            "WITH x AS (SELECT ssn FROM customers) INSERT INTO notes SELECT * FROM x",
            "MERGE INTO notes n USING customers c ON n.id = c.id WHEN MATCHED THEN UPDATE SET body = c.ssn",
            "MERGE INTO notes n USING (SELECT id, ssn FROM customers) c ON n.id = c.id \
             WHEN NOT MATCHED THEN INSERT (body) VALUES (c.ssn)",
        ] {
            let d = e.decide(&bob, &s, sql);
            assert_eq!(d.verdict, Verdict::Deny, "{sql}");
            assert!(d.reason.contains("masked"), "{sql}: {}", d.reason);
            assert_eq!(e.decide(&reader, &s, sql).verdict, Verdict::Allow, "exempt: {sql}");
        }
        for sql in [
            "UPDATE orders SET status = 'x' WHERE id = 1",
            "INSERT INTO customers (id, ssn) VALUES (9, '123-45-6789')",
            "UPDATE customers SET ssn = '000-00-0000' WHERE id = 1",
            "DELETE FROM customers WHERE id = 1",
            "SELECT ssn FROM customers",
            "SELECT set_config('my.v', 'x', false)",
            "SELECT pg_advisory_lock(42)",
            "SELECT ssn, pg_sleep(0) FROM customers",
        ] {
            assert_eq!(e.decide(&bob, &s, sql).verdict, Verdict::Allow, "{sql}");
        }
        // The planner's statistics sample every column's values.
        for sql in [
            "SELECT histogram_bounds FROM pg_stats WHERE tablename = 'customers'",
            "SELECT * FROM pg_catalog.pg_statistic",
            "SELECT count(*) FROM pg_stats_ext",
        ] {
            let d = e.decide(&bob, &s, sql);
            assert_eq!(d.verdict, Verdict::Deny, "{sql}");
            assert!(d.reason.contains("sampled"), "{sql}: {}", d.reason);
            assert_eq!(e.decide(&reader, &s, sql).verdict, Verdict::Allow, "exempt: {sql}");
        }
        assert_eq!(e.decide(&bob, &s, "SELECT relname FROM pg_class").verdict, Verdict::Allow);
    }
}

/// A whole row (`to_jsonb(t)`, `row_to_json(t)`, `t::text`) of a table no
/// mask reaches is left as it is, and may be stored; one of a table a mask
/// may reach is masked whole, and may not.
#[test]
fn whole_rows_of_tables_no_mask_reaches_are_untouched() {
    let policy = r#"
        version = 1
        [[rule]]
        name = "all"
        effect = "allow"
        classes = ["read", "write"]
        [[mask]]
        name = "ssn"
        columns = ["public.customers.ssn", "!public.customers.id"]
        strategy = "partial"
        show_last = 4
        [[mask]]
        name = "quoted"
        columns = ['audit."odd.table".secret']
        strategy = "redact"
    "#;
    let e = Engine::new(Policy::from_toml_str(policy, "p.toml").unwrap(), Keys::default()).unwrap();
    let s = e.new_session();
    let one = |sql: &str, value: &str| {
        let facts = e.analyze(&s, sql).statements.remove(0);
        let masker = e.masker(&bob(), &facts, &[ColumnInfo::text("j", None)]);
        let mut row = vec![Some(Cow::Borrowed(value.as_bytes()))];
        masker.mask_row(&mut row);
        row[0].as_deref().map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let order = r#"{"id": 1, "total": 9.99}"#;
    assert_eq!(one("SELECT to_jsonb(o) FROM orders o", order).as_deref(), Some(order));
    assert_eq!(one("SELECT o::text FROM orders o", "(1,9.99)").as_deref(), Some("(1,9.99)"));
    assert_eq!(one("SELECT json_agg(o) FROM public.orders o", order).as_deref(), Some(order));
    let customer = "(1,123-45-6789)";
    assert_eq!(one("SELECT c::text FROM customers c", customer).as_deref(), Some(REDACTED));
    // A quoted table name with a dot in it is still the table a pattern names.
    assert_eq!(one(r#"SELECT t::text FROM audit."odd.table" t"#, "(x)").as_deref(), Some(REDACTED));
    assert_eq!(one(r#"SELECT t::text FROM audit."odd" t"#, "(x)").as_deref(), Some("(x)"));
    // Storing: allowed for the clean table, refused for the masked one.
    let d = e.decide(&bob(), &s, "INSERT INTO archive SELECT to_jsonb(o) FROM orders o");
    assert_eq!(d.verdict, policy_core::Verdict::Allow, "{}", d.reason);
    let d = e.decide(&bob(), &s, "INSERT INTO archive SELECT to_jsonb(c) FROM customers c");
    assert_eq!(d.verdict, policy_core::Verdict::Deny, "{}", d.reason);
}

/// A whole row written as JSON (`to_jsonb(t)`, `row_to_json(t)`,
/// `json_agg(t)`) is masked field by field: only the members a mask
/// covers change, and the value stays JSON of its type.
#[test]
fn whole_rows_as_json_are_masked_field_by_field() {
    let policy = r#"
        version = 1
        [[mask]]
        name = "ssn"
        columns = ["public.customers.ssn", 'public.customers."Odd ""key"""']
        strategy = "partial"
        show_last = 4
    "#;
    let e = Engine::new(Policy::from_toml_str(policy, "p.toml").unwrap(), Keys::default()).unwrap();
    let s = e.new_session();
    let masked = |sql: &str, column: ColumnInfo, value: &[u8]| {
        let facts = e.analyze(&s, sql).statements.remove(0);
        let masker = e.masker(&bob(), &facts, &[column]);
        let mut row = vec![Some(Cow::Borrowed(value))];
        masker.mask_row(&mut row);
        (row[0].as_deref().map(|v| String::from_utf8_lossy(v).into_owned()), masker.retyped_columns().is_empty())
    };
    let json = |sql: &str, value: &str| {
        let (out, kept_type) = masked(sql, ColumnInfo::new("j", None, 114, false), value.as_bytes());
        assert!(kept_type, "{sql}: the value keeps its JSON type");
        out
    };
    let customer = r#"{"id": 1, "ssn": "123-45-6789", "note": {"ssn": "kept"}}"#;
    let want = r#"{"id": 1, "ssn": "****6789", "note": {"ssn": "kept"}}"#;
    for sql in [
        "SELECT row_to_json(c) FROM customers c",
        "SELECT row_to_json(c, true) FROM customers c",
        "SELECT to_json(c.*) FROM public.customers c",
        "SELECT pg_catalog.to_json(customers) FROM customers",
        "SELECT to_json(c)::text FROM customers c",
    ] {
        assert_eq!(json(sql, customer).as_deref(), Some(want), "{sql}");
    }
    // Aggregates: an array of rows; the order a clause gives them is
    // inference control's business, not the values'.
    assert_eq!(
        json("SELECT json_agg(c ORDER BY c.ssn) FROM customers c", r#"[{"ssn":"123-45-6789"}, {"ssn":null,"id":2}]"#)
            .as_deref(),
        Some(r#"[{"ssn":"****6789"}, {"ssn":null,"id":2}]"#)
    );
    // Binary jsonb: a version byte, then the text.
    let binary = masked(
        "SELECT to_jsonb(c) FROM customers c",
        ColumnInfo::new("j", None, 3802, true),
        b"\x01{\"id\": 1, \"ssn\": \"123-45-6789\"}",
    );
    assert_eq!(binary, (Some("\u{1}{\"id\": 1, \"ssn\": \"****6789\"}".to_string()), true));
    // A key that needs quoting as a name is the column of that name.
    assert_eq!(
        json("SELECT to_jsonb(c) FROM customers c", r#"{"Odd \"key\"": "123-45-6789"}"#).as_deref(),
        Some(r#"{"Odd \"key\"": "****6789"}"#)
    );
    // Rows of a subquery or CTE: each key has its column's lineage; a
    // computed one is masked whole.
    let row = r#"{"id": 1, "x": "123-45-6789", "y": "123-45-6789"}"#;
    let want = format!(r#"{{"id": 1, "x": "****6789", "y": "{REDACTED}"}}"#);
    assert_eq!(
        json("SELECT to_jsonb(s) FROM (SELECT id, ssn AS x, upper(ssn) AS y FROM customers) s", row).as_deref(),
        Some(want.as_str())
    );
    assert_eq!(
        json(
            "WITH s AS (SELECT id, ssn AS x, lower(ssn) y FROM customers) SELECT json_agg(s) FROM s",
            &format!("[{row}]")
        )
        .as_deref(),
        Some(format!("[{want}]").as_str())
    );
    // Not laid out as a row (or a key the row does not have): masked whole,
    // still JSON.
    let quoted = format!("\"{REDACTED}\"");
    assert_eq!(json("SELECT to_jsonb(c) FROM customers c", "[1]").as_deref(), Some(quoted.as_str()));
    assert_eq!(
        json("SELECT to_jsonb(s) FROM (SELECT id, ssn FROM customers) s", r#"{"id": 1, "other": "1"}"#).as_deref(),
        Some(quoted.as_str())
    );
    // What is not a whole row of a known shape stays masked whole.
    for sql in [
        // `ssn` is the column before it is the row.
        "SELECT to_jsonb(ssn) FROM customers ssn",
        "SELECT jsonb_build_object('c', c) FROM customers c",
        "SELECT to_jsonb(s) FROM (SELECT * FROM customers) s",
        "SELECT to_jsonb(f) FROM customers c, lateral unnest(ARRAY[c]) f",
        "SELECT public.to_jsonb(c) FROM customers c",
        "SELECT to_jsonb(c) || '{}' FROM customers c",
        "SELECT to_jsonb(c)::bytea FROM customers c",
    ] {
        let (out, kept_type) = masked(sql, ColumnInfo::new("j", None, 114, false), customer.as_bytes());
        assert_eq!(out.as_deref(), Some(REDACTED), "{sql}");
        assert!(!kept_type, "{sql}: masked whole, described as text");
    }
    // A path that puts another schema before pg_catalog may hold a
    // function of that name.
    let moved = e.new_session().with_startup_search_path(vec!["public".into(), "pg_catalog".into()]);
    let facts = e.analyze(&moved, "SELECT to_jsonb(c) FROM customers c").statements.remove(0);
    let masker = e.masker(&bob(), &facts, &[ColumnInfo::new("j", None, 114, false)]);
    let mut row = vec![Some(Cow::Borrowed(customer.as_bytes()))];
    masker.mask_row(&mut row);
    assert_eq!(row[0].as_deref(), Some(REDACTED.as_bytes()));
}

/// The columns of a `VALUES` list joined with a masked table come from the
/// list: with one star over the table, the result lines up with the
/// lineage when the server's names and sources prove it.
#[test]
fn columns_beside_a_star_keep_their_own_lineage() {
    let e = engine();
    let masked = |sql: &str, columns: &[ColumnInfo], row: &[&str]| {
        let a = e.analyze(&e.new_session(), sql);
        apply(&e.masker(&bob(), &a.statements[0], columns), row)
    };
    let users = |c: &str| ColumnInfo::text(c, Some(&format!("public.users.{c}")));
    let listed = [ColumnInfo::text("id", None), ColumnInfo::text("label", None), users("id"), users("ssn")];
    let row = ["1", "123-45-6789", "1", "123-45-6789"];
    let sql = "SELECT * FROM (VALUES (1, '123-45-6789')) v(id, label) JOIN users u ON u.id = v.id";
    assert_eq!(
        masked(sql, &listed, &row),
        [Some("1".into()), Some("123-45-6789".into()), Some("1".into()), Some("****6789".into())]
    );
    let sql = "SELECT v.*, u.*, upper(u.ssn) FROM (VALUES (1, 'x')) v(id, label), users u";
    let mut with_computed = listed.to_vec();
    with_computed.push(ColumnInfo::text("upper", None));
    let out = masked(sql, &with_computed, &["1", "x", "1", "123-45-6789", "123-45-6789"]);
    assert_eq!(out[1].as_deref(), Some("x"));
    assert_eq!(out[3].as_deref(), Some("****6789"));
    assert_eq!(out[4].as_deref(), Some(REDACTED));
    // `USING` moves the merged column to the front: the names do not line
    // up, and the columns without a source are masked whole.
    let sql = "SELECT * FROM users u JOIN (VALUES (1, 'x')) v(id, label) USING (id)";
    let merged = [users("id"), users("ssn"), ColumnInfo::text("label", None)];
    let out = masked(sql, &merged, &["1", "123-45-6789", "x"]);
    assert_eq!(out[2].as_deref(), Some(REDACTED), "not proven: masked whole");
    // A `FULL JOIN ... USING` merges the list's column with the table's
    // (`coalesce(v.ssn, u.ssn)`): never the list's alone.
    let sql = "SELECT * FROM (VALUES ('x')) v(ssn) FULL JOIN users u USING (ssn)";
    let out = masked(sql, &[ColumnInfo::text("ssn", None), users("id")], &["123-45-6789", "1"]);
    assert_eq!(out[0].as_deref(), Some(REDACTED));
    let sql = "SELECT * FROM (VALUES ('x')) v(ssn) NATURAL FULL JOIN (users u CROSS JOIN (VALUES (1)) w(k))";
    let out = masked(sql, &[ColumnInfo::text("ssn", None), users("id"), ColumnInfo::text("k", None)], &["1", "1", "1"]);
    assert_eq!(out[0].as_deref(), Some(REDACTED));
    // A column in the star's run the server does not report as the
    // table's is not proven either.
    let sql = "SELECT * FROM (VALUES (1)) v(id), users u";
    let out = masked(sql, &[ColumnInfo::text("id", None), ColumnInfo::text("ssn", None)], &["1", "123-45-6789"]);
    assert_eq!(out, [Some(REDACTED.into()), Some(REDACTED.into())]);
}

/// A whole row as a composite (`SELECT c FROM customers c`, `c::text`,
/// `ROW(c.*)`) is masked field by field when its fields are known: a
/// table's from the gateway (`ColumnInfo::row_fields`), a subquery's from
/// lineage. The value stays a record of its type.
#[test]
fn whole_rows_as_composites_are_masked_field_by_field() {
    let policy = r#"
        version = 1
        [[mask]]
        name = "ssn"
        columns = ["public.customers.ssn"]
        strategy = "partial"
        show_last = 4
    "#;
    let e = Engine::new(Policy::from_toml_str(policy, "p.toml").unwrap(), Keys::default()).unwrap();
    let s = e.new_session();
    let fields = ["id", "ssn", "note"].map(String::from).to_vec();
    let masked = |sql: &str, column: ColumnInfo, value: &[u8]| {
        let facts = e.analyze(&s, sql).statements.remove(0);
        let masker = e.masker(&bob(), &facts, &[column]);
        let mut row = vec![Some(Cow::Borrowed(value))];
        masker.mask_row(&mut row);
        assert!(masker.retyped_columns().is_empty(), "{sql}: the value keeps its type");
        row[0].as_deref().map(<[u8]>::to_vec)
    };
    let record = ColumnInfo { row_fields: fields.clone(), ..ColumnInfo::new("c", None, 16_390, false) };
    let text = ColumnInfo { row_fields: fields.clone(), ..ColumnInfo::new("c", None, 25, false) };
    let value = b"(1,123-45-6789,\"a, b\")";
    let want = Some(b"(1,****6789,\"a, b\")".to_vec());
    for (sql, column) in [
        ("SELECT c FROM customers c", &record),
        ("SELECT c::text FROM customers c", &text),
        ("SELECT ROW(c.*) FROM customers c", &record),
    ] {
        assert_eq!(masked(sql, column.clone(), value), want, "{sql}");
    }
    // A subquery's row: its own columns, by position.
    let derived = ColumnInfo::new("s", None, 2249, false);
    assert_eq!(
        masked("SELECT s FROM (SELECT id, upper(ssn) AS u, ssn FROM customers) s", derived, b"(1,X,123-45-6789)"),
        Some(format!("(1,{REDACTED},****6789)").into_bytes())
    );
    // Binary: text fields take the masked text, others become NULL.
    let binary = ColumnInfo { binary: true, ..record.clone() };
    let mut value = 3i32.to_be_bytes().to_vec();
    for (oid, v) in [(23u32, &[0u8, 0, 0, 1][..]), (25, b"123-45-6789"), (25, b"n")] {
        value.extend_from_slice(&oid.to_be_bytes());
        value.extend_from_slice(&(v.len() as i32).to_be_bytes());
        value.extend_from_slice(v);
    }
    let out = masked("SELECT c FROM customers c", binary.clone(), &value).unwrap();
    assert!(out.windows(8).any(|w| w == b"****6789") && !out.windows(6).any(|w| w == b"123-45"));
    // Not a record of the row's width: NULL (masked text is no composite).
    assert_eq!(masked("SELECT c FROM customers c", record.clone(), b"(1,2)"), None);
    assert_eq!(masked("SELECT c FROM customers c", binary, &value[..8]), None);
    // Without the fields (the gateway could not name them): masked whole, as text.
    let facts = e.analyze(&s, "SELECT c FROM customers c").statements.remove(0);
    let masker = e.masker(&bob(), &facts, &[ColumnInfo::new("c", None, 16_390, false)]);
    let mut row = vec![Some(Cow::Borrowed(&value[..]))];
    masker.mask_row(&mut row);
    assert_eq!(row[0].as_deref(), Some(REDACTED.as_bytes()));
    assert_eq!(masker.retyped_columns(), [0]);
}
