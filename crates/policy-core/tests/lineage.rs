//! Lineage through CTEs (recursive ones too), subqueries in FROM, stars
//! over them, DISTINCT, casts and column alias lists, as the column masks
//! read it (docs/policy.md §5). The case that found it: asyncpg introspects the
//! types of array, enum and composite parameters with one recursive query
//! over `pg_catalog.pg_type`, and a caller any mask applied to saw every
//! column of its result `[redacted]`.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::borrow::Cow;

use policy_core::{ColumnInfo, Engine, Identity, Keys, OutputColumn, Policy, RowMasker, REDACTED};

const POLICY: &str = r#"
version = 1
[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4

[[mask]]
name = "email"
columns = ["public.customers.email"]
strategy = "email"

[[detector]]
name = "cards"
kinds = ["credit_card"]
strategy = "partial"
show_last = 4
"#;

/// asyncpg's `INTRO_LOOKUP_TYPES` (asyncpg/introspection.py, 0.31), as it
/// sends it to servers from PostgreSQL 14 on.
const ASYNCPG_LOOKUP_TYPES: &str = r#"WITH RECURSIVE typeinfo_tree(
    oid, ns, name, kind, basetype, elemtype, elemdelim,
    range_subtype, attrtypoids, attrnames, depth)
AS (
    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, 0
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            COALESCE(
                range_t.rngsubtype,
                multirange_t.rngsubtype)    AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
            LEFT JOIN pg_range multirange_t ON (
                t.oid = multirange_t.rngmultitypid
            )
    )
 AS ti
    WHERE
        ti.oid = any($1::oid[])

    UNION ALL

    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, tt.depth + 1
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            COALESCE(
                range_t.rngsubtype,
                multirange_t.rngsubtype)    AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
            LEFT JOIN pg_range multirange_t ON (
                t.oid = multirange_t.rngmultitypid
            )
    )
 ti,
        typeinfo_tree tt
    WHERE
        (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype)
        OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids))
        OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype)
        OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype)
)

SELECT DISTINCT
    *,
    basetype::regtype::text AS basetype_name,
    elemtype::regtype::text AS elemtype_name,
    range_subtype::regtype::text AS range_subtype_name
FROM
    typeinfo_tree
ORDER BY
    depth DESC
"#;

/// asyncpg's `INTRO_LOOKUP_TYPES_13`, for servers before PostgreSQL 14.
const ASYNCPG_LOOKUP_TYPES_13: &str = r#"WITH RECURSIVE typeinfo_tree(
    oid, ns, name, kind, basetype, elemtype, elemdelim,
    range_subtype, attrtypoids, attrnames, depth)
AS (
    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, 0
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            range_t.rngsubtype              AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
    )
 AS ti
    WHERE
        ti.oid = any($1::oid[])

    UNION ALL

    SELECT
        ti.oid, ti.ns, ti.name, ti.kind, ti.basetype,
        ti.elemtype, ti.elemdelim, ti.range_subtype,
        ti.attrtypoids, ti.attrnames, tt.depth + 1
    FROM
            (
        SELECT
            t.oid                           AS oid,
            ns.nspname                      AS ns,
            t.typname                       AS name,
            t.typtype                       AS kind,
            (CASE WHEN t.typtype = 'd' THEN
                (WITH RECURSIVE typebases(oid, depth) AS (
                    SELECT
                        t2.typbasetype      AS oid,
                        0                   AS depth
                    FROM
                        pg_type t2
                    WHERE
                        t2.oid = t.oid

                    UNION ALL

                    SELECT
                        t2.typbasetype      AS oid,
                        tb.depth + 1        AS depth
                    FROM
                        pg_type t2,
                        typebases tb
                    WHERE
                       tb.oid = t2.oid
                       AND t2.typbasetype != 0
               ) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)

               ELSE NULL
            END)                            AS basetype,
            t.typelem                       AS elemtype,
            elem_t.typdelim                 AS elemdelim,
            range_t.rngsubtype              AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.atttypid ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN
                (SELECT
                    array_agg(ia.attname::text ORDER BY ia.attnum)
                FROM
                    pg_attribute ia
                    INNER JOIN pg_class c
                        ON (ia.attrelid = c.oid)
                WHERE
                    ia.attnum > 0 AND NOT ia.attisdropped
                    AND c.reltype = t.oid)

                ELSE NULL
            END)                            AS attrnames
        FROM
            pg_catalog.pg_type AS t
            INNER JOIN pg_catalog.pg_namespace ns ON (
                ns.oid = t.typnamespace)
            LEFT JOIN pg_type elem_t ON (
                t.typlen = -1 AND
                t.typelem != 0 AND
                t.typelem = elem_t.oid
            )
            LEFT JOIN pg_range range_t ON (
                t.oid = range_t.rngtypid
            )
    )
 ti,
        typeinfo_tree tt
    WHERE
        (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype)
        OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids))
        OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype)
        OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype)
)

SELECT DISTINCT
    *,
    basetype::regtype::text AS basetype_name,
    elemtype::regtype::text AS elemtype_name,
    range_subtype::regtype::text AS range_subtype_name
FROM
    typeinfo_tree
ORDER BY
    depth DESC
"#;

/// asyncpg's `TYPE_BY_NAME`.
const ASYNCPG_TYPE_BY_NAME: &str = r#"SELECT
    t.oid,
    t.typelem     AS elemtype,
    t.typtype     AS kind
FROM
    pg_catalog.pg_type AS t
    INNER JOIN pg_catalog.pg_namespace ns ON (ns.oid = t.typnamespace)
WHERE
    t.typname = $1 AND ns.nspname = $2
"#;

fn engine() -> Engine {
    let p = Policy::from_toml_str(POLICY, "lineage.toml").unwrap();
    Engine::new(p, Keys::default()).unwrap()
}

fn bob() -> Identity {
    Identity::new("bob")
}

fn output_columns(sql: &str) -> Vec<OutputColumn> {
    let e = engine();
    let mut a = e.analyze(&e.new_session(), sql);
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements.remove(0).output_columns
}

/// The masker for `sql` when the server reports no sources (the columns of
/// a CTE or a computed value), with `n` text columns.
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

fn sources_of<'c>(cols: &'c [OutputColumn], name: &str) -> &'c [String] {
    &cols.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no column {name}: {cols:?}")).sources
}

#[test]
fn asyncpg_type_introspection_reads_only_the_catalog() {
    let names = [
        "oid",
        "ns",
        "name",
        "kind",
        "basetype",
        "elemtype",
        "elemdelim",
        "range_subtype",
        "attrtypoids",
        "attrnames",
        "depth",
        "basetype_name",
        "elemtype_name",
        "range_subtype_name",
    ];
    for sql in [ASYNCPG_LOOKUP_TYPES, ASYNCPG_LOOKUP_TYPES_13] {
        let cols = output_columns(sql);
        let got: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(got, names, "the star over the CTE expands by position: {cols:?}");
        for c in &cols {
            assert!(!c.unknown, "{}: lineage proven through the recursive CTE: {cols:?}", c.name);
            // `pg_type` unqualified may be any `pg_type` on the path; every
            // candidate is a `pg_*` relation.
            for s in &c.sources {
                let table = s.split('.').nth(1).unwrap_or_default();
                assert!(table.starts_with("pg_"), "{}: source {s} is not a catalog column", c.name);
            }
        }
        assert_eq!(sources_of(&cols, "oid"), ["pg_catalog.pg_type.oid"]);
        assert_eq!(sources_of(&cols, "ns"), ["pg_catalog.pg_namespace.nspname"]);
        assert!(sources_of(&cols, "basetype_name").contains(&"pg_catalog.pg_type.typbasetype".to_string()));
        assert!(sources_of(&cols, "attrnames").contains(&"pg_catalog.pg_attribute.attname".to_string()));
        assert!(sources_of(&cols, "depth").is_empty(), "a constant and its successors: {cols:?}");

        // The masks on customers apply to nothing here.
        let e = engine();
        let a = e.analyze(&e.new_session(), sql);
        let columns: Vec<ColumnInfo> = cols
            .iter()
            .map(|c| {
                let type_oid = if c.name == "oid" || c.name.ends_with("type") { 26 } else { 25 };
                ColumnInfo::new(&c.name, None, type_oid, false)
            })
            .collect();
        let m = e.masker(&bob(), &a.statements[0], &columns);
        for (i, c) in cols.iter().enumerate() {
            assert_eq!(m.mask_of(i), None, "{} masked", c.name);
        }
        assert!(m.retyped_columns().is_empty());
        let row = ["1007", "pg_catalog", "_int4", "b", "0", "23", ",", "0", "", "", "0", "-", "integer", "-"];
        let out = apply(&m, &row);
        assert_eq!(out.iter().map(|v| v.as_deref().unwrap()).collect::<Vec<_>>(), row);
    }
    let cols = output_columns(ASYNCPG_TYPE_BY_NAME);
    assert!(cols.iter().all(|c| !c.unknown && c.sources.iter().all(|s| s.starts_with("pg_catalog.pg_type."))));
}

#[test]
fn a_recursive_term_reading_a_masked_column_is_masked() {
    let whole = [
        // The example of the spec: the masked value enters in the recursive term.
        "WITH RECURSIVE t(x) AS (SELECT 1 UNION ALL SELECT ssn FROM people) SELECT x FROM t",
        "WITH RECURSIVE t(x) AS (SELECT 1 UNION SELECT ssn FROM people, t) SELECT x FROM t",
        // It reaches `a` only in the second round (b -> a), and in the third.
        "WITH RECURSIVE t(a, b) AS (SELECT 1, ssn FROM people UNION ALL SELECT b, a FROM t) SELECT a FROM t",
        "WITH RECURSIVE t(a, b, c) AS (SELECT 1, 2, ssn FROM people UNION ALL SELECT b, c, a FROM t) SELECT a FROM t",
        // Through an expression over the self-reference, a scalar subquery,
        // a subquery in FROM.
        "WITH RECURSIVE t(a, b) AS (SELECT 1, email FROM customers UNION ALL SELECT length(b), b FROM t) SELECT a FROM t",
        "WITH RECURSIVE t(x) AS (SELECT 1 UNION ALL SELECT (SELECT email FROM customers LIMIT 1) FROM t) SELECT x FROM t",
        "WITH RECURSIVE t(x) AS (SELECT 1 UNION ALL SELECT s.e FROM t, (SELECT email AS e FROM customers) s) SELECT x FROM t",
        // A recursive CTE inside another's recursive term.
        "WITH RECURSIVE t(x) AS (SELECT 1 UNION ALL SELECT (WITH RECURSIVE u(y) AS (SELECT 2 UNION ALL \
         SELECT ssn FROM people, u) SELECT y FROM u LIMIT 1) FROM t) SELECT x FROM t",
        // Not a fixed point PostgreSQL runs: lineage is not proven.
        "WITH RECURSIVE t(x) AS (SELECT x FROM t UNION ALL SELECT 1) SELECT x FROM t",
        "WITH RECURSIVE t(x) AS (SELECT 1 INTERSECT SELECT x FROM t) SELECT x FROM t",
        // A forward reference inside a recursive WITH is not proven.
        "WITH RECURSIVE a AS (SELECT e FROM b), b AS (SELECT email AS e FROM customers) SELECT e FROM a",
        "WITH RECURSIVE a AS (SELECT e FROM b), b AS (SELECT email AS e FROM customers) SELECT e FROM a, orders",
        // An alias list over a star of unknown shape names nothing: `e`
        // may still be one of its columns, not a column of `orders`.
        "WITH RECURSIVE a(x) AS (SELECT * FROM b), b AS (SELECT email AS e FROM customers) SELECT e FROM a, orders",
        "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT email AS e FROM customers) SELECT e FROM a AS c(x), orders",
        // CYCLE's path and SEARCH's sequence carry the listed columns' values.
        "WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t) \
         CYCLE x SET is_cycle USING path SELECT path FROM t, orders",
        "WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t) \
         SEARCH DEPTH FIRST BY x SET seq SELECT seq FROM t, orders",
    ];
    for sql in whole {
        let m = computed(sql, 1);
        assert!(m.mask_of(0).is_some(), "{sql}: not masked: {:?}", output_columns(sql));
        assert_eq!(apply(&m, &["123-45-6789"])[0].as_deref(), Some(REDACTED), "{sql}");
    }
    let cols = output_columns(whole[0]);
    assert_eq!((cols[0].sources.as_slice(), cols[0].unknown), (&["public.people.ssn".to_string()][..], false));

    // A recursive CTE that never reads a masked column is clean.
    let clean = [
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT n FROM t",
        "WITH RECURSIVE t(n, e) AS (SELECT id, email FROM customers UNION ALL SELECT n + 1, e FROM t) SELECT n FROM t",
        "WITH RECURSIVE a AS (SELECT 1 AS one), b AS (SELECT one FROM a) SELECT one FROM b",
    ];
    for sql in clean {
        let m = computed(sql, 1);
        assert_eq!(m.mask_of(0), None, "{sql}: {:?}", output_columns(sql));
    }
}

#[test]
fn a_cte_over_a_masked_column_keeps_its_mask_when_renamed_or_starred() {
    let email = "bob@example.com";
    let masked = "****@example.com";
    // (sql, columns, expected output of each for `email` in every column)
    let cases: [(&str, &[Option<&str>]); 10] = [
        ("WITH c(e) AS (SELECT email FROM customers) SELECT e FROM c", &[Some(masked)]),
        ("WITH c(e) AS (SELECT email FROM customers) SELECT * FROM c", &[Some(masked)]),
        ("WITH c(e) AS (SELECT email FROM customers) SELECT x FROM c AS d(x)", &[Some(masked)]),
        (
            "WITH c AS (SELECT id, email AS e FROM customers) SELECT DISTINCT *, e::text AS t FROM c",
            &[Some(email), Some(masked), Some(masked)],
        ),
        ("WITH c AS (SELECT email FROM customers) SELECT lower(email)::regtype::text FROM c", &[Some(REDACTED)]),
        ("SELECT * FROM (SELECT id, email FROM customers) AS s(a, b)", &[Some(email), Some(masked)]),
        ("SELECT s.* FROM (SELECT DISTINCT email FROM customers) s", &[Some(masked)]),
        ("WITH RECURSIVE c(e) AS (SELECT email FROM customers) SELECT * FROM c", &[Some(masked)]),
        (
            "WITH RECURSIVE t(x, d) AS (SELECT email, 0 FROM customers UNION ALL SELECT x, d + 1 FROM t WHERE d < 3) \
             SELECT DISTINCT * FROM t",
            &[Some(masked), Some(email)],
        ),
        (
            "WITH RECURSIVE t(x) AS (SELECT email FROM customers UNION ALL SELECT x FROM t) \
             CYCLE x SET is_cycle USING path SELECT * FROM t",
            &[Some(masked), Some(REDACTED), Some(REDACTED)],
        ),
    ];
    for (sql, expected) in cases {
        let m = computed(sql, expected.len());
        let values = vec![email; expected.len()];
        let out = apply(&m, &values);
        let out: Vec<Option<&str>> = out.iter().map(|v| v.as_deref()).collect();
        assert_eq!(out, expected, "{sql}: {:?}", output_columns(sql));
    }
    // A star over a CTE whose shape is not known stays unproven.
    let m = computed("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT email FROM customers) SELECT * FROM a", 1);
    assert_eq!(apply(&m, &[email])[0].as_deref(), Some(REDACTED));
}

#[test]
fn show_returns_a_setting_not_table_data() {
    for (sql, n) in [("SHOW search_path", 1), ("SHOW ALL", 3), ("SHOW TRANSACTION ISOLATION LEVEL", 1)] {
        let cols = output_columns(sql);
        assert_eq!(cols.len(), n, "{sql}: {cols:?}");
        assert!(cols.iter().all(|c| c.sources.is_empty() && !c.unknown), "{sql}: {cols:?}");
        let m = computed(sql, n);
        assert!((0..n).all(|i| m.mask_of(i).is_none()), "{sql}");
    }
    // As `current_setting()` reads it.
    assert!(computed("SELECT current_setting('search_path')", 1).mask_of(0).is_none());
    // The detectors still scan it.
    let m = computed("SHOW application_name", 1);
    assert_eq!(apply(&m, &["card 4111 1111 1111 1111"])[0].as_deref(), Some("card ****1111"));
    assert_eq!(apply(&m, &["\"$user\", public"])[0].as_deref(), Some("\"$user\", public"));
}

#[test]
fn explain_returns_a_plan_not_table_data() {
    for sql in [
        "EXPLAIN SELECT ssn FROM people",
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT ssn FROM people WHERE ssn = '123-45-6789'",
        "EXPLAIN ANALYZE SELECT * FROM people",
    ] {
        let cols = output_columns(sql);
        assert_eq!(cols.len(), 1, "{sql}: {cols:?}");
        assert_eq!(cols[0].name, "QUERY PLAN");
        assert!(cols[0].sources.is_empty() && !cols[0].unknown, "{sql}: {cols:?}");
        let m = computed(sql, 1);
        assert!(m.mask_of(0).is_none(), "{sql}: a plan is judged like the statement's text");
        let line = "Seq Scan on public.people  (cost=0.00..1.01 rows=1 width=32)";
        assert_eq!(apply(&m, &[line])[0].as_deref(), Some(line), "{sql}");
    }
    // The detectors still scan it (a constant the client wrote, echoed).
    let m = computed("EXPLAIN SELECT * FROM people WHERE card = '4111 1111 1111 1111'", 1);
    let filter = "Filter: (card = '4111 1111 1111 1111'::text)";
    assert_eq!(apply(&m, &[filter])[0].as_deref(), Some("Filter: (card = '****1111'::text)"));
}

/// `depth` recursive CTEs of `width` columns, each in a scalar subquery of
/// the recursive term of the one outside it. Each level's columns rotate,
/// so its fixed point takes about `width` rounds, each of which reads the
/// levels inside again: without a bound, width^depth evaluations.
fn nested_recursive(depth: usize, width: usize) -> String {
    let mut sql = "SELECT 1".to_string();
    for i in 0..depth {
        let names: Vec<String> = (0..width).map(|j| format!("c{j}")).collect();
        let base: Vec<String> = (0..width).map(|j| if j == 0 { "id".to_string() } else { j.to_string() }).collect();
        let mut step: Vec<String> = names[1..].to_vec();
        step.push(format!("c0 + ({sql})"));
        sql = format!(
            "SELECT (WITH RECURSIVE t{i}({}) AS (SELECT {} FROM users UNION ALL SELECT {} FROM t{i}) \
             SELECT c{} FROM t{i} LIMIT 1)",
            names.join(", "),
            base.join(", "),
            step.join(", "),
            width - 1
        );
    }
    sql
}

#[test]
fn nested_recursive_ctes_take_bounded_work() {
    // A large stack: in a debug build, pg_query's decoding of a tree this
    // deep comes close to a test thread's 2 MiB (the engine's own walks are
    // bounded: see tests/deep_statements.rs).
    let run = || {
        let cols = output_columns(&nested_recursive(3, 8));
        assert_eq!((cols[0].sources.as_slice(), cols[0].unknown), (&["public.users.id".to_string()][..], false));

        let sql = nested_recursive(4, 16);
        let started = std::time::Instant::now();
        let cols = output_columns(&sql);
        eprintln!("analysed in {:?}", started.elapsed());
        assert!(cols[0].unknown, "the bound was reached: not proven: {cols:?}");
        assert!(computed(&sql, 1).mask_of(0).is_some());
    };
    std::thread::Builder::new().stack_size(64 << 20).spawn(run).unwrap().join().unwrap();
}

#[test]
fn a_masked_value_through_a_recursive_cte_is_still_not_stored() {
    use policy_core::Verdict;
    let policy = format!("{POLICY}\n[[rule]]\nname = \"everything\"\neffect = \"allow\"\n");
    let e = Engine::new(Policy::from_toml_str(&policy, "flow.toml").unwrap(), Keys::default()).unwrap();
    let s = e.new_session();
    for sql in [
        "INSERT INTO notes (body) WITH RECURSIVE t(x) AS (SELECT '' UNION ALL SELECT ssn FROM people) SELECT x FROM t",
        "WITH RECURSIVE t(x) AS (SELECT '' UNION ALL SELECT ssn FROM people) INSERT INTO notes SELECT * FROM t",
        "CREATE TABLE copy AS WITH RECURSIVE t(x) AS (SELECT '' UNION ALL SELECT email FROM customers) SELECT x FROM t",
        "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT email FROM customers) INSERT INTO notes SELECT * FROM a",
    ] {
        let d = e.decide(&bob(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}");
        assert!(d.reason.contains("masked"), "{sql}: {}", d.reason);
    }
    let sql = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) \
               INSERT INTO notes (body) SELECT n::text FROM t";
    assert_eq!(e.decide(&bob(), &s, sql).verdict, Verdict::Allow, "{sql}");
}

/// `t.f`, where the table `t` has no column `f`, is PostgreSQL's attribute
/// notation for `f(t)`: `c.to_json` is the whole row as JSON. Lineage
/// takes the whole row as a source (a real column of that name is reported
/// by the server as the table's, and masked by its own name).
#[test]
fn attribute_notation_reads_the_whole_row() {
    for sql in [
        "SELECT c.to_json FROM customers c",
        "SELECT customers.to_jsonb ->> 'email' FROM customers",
        "SELECT c.concat FROM customers c",
        "SELECT c.record_out FROM customers c",
        "SELECT c.array_agg FROM customers c",
        "SELECT public.customers.row_to_json FROM customers",
    ] {
        let cols = output_columns(sql);
        assert!(cols[0].sources.iter().any(|s| s == "public.customers.*"), "{sql}: {cols:?}");
        assert!(!cols[0].direct, "{sql}: {cols:?}");
        let m = computed(sql, 1);
        assert_eq!(
            apply(&m, &[r#"{"ssn":"123-45-6789"}"#])[0].as_deref().map(|v| v.contains("6789")),
            Some(false),
            "{sql}"
        );
    }
    // Names that are never a function of a row stay plain columns.
    let cols = output_columns("SELECT c.upper, c.status FROM customers c");
    assert_eq!(sources_of(&cols, "upper"), ["public.customers.upper"]);
    assert!(cols.iter().all(|c| c.direct));
}

/// A bare column in a subquery whose table may lack it is the enclosing
/// query's: `(SELECT email FROM orders)` inside `FROM customers` reads
/// `customers.email` when `orders` has no `email`; `(SELECT c FROM
/// orders)` the whole row of `customers c`.
#[test]
fn a_subquery_column_may_be_the_outer_querys() {
    let cols = output_columns("SELECT (SELECT email FROM orders LIMIT 1) AS e FROM customers");
    let sources = sources_of(&cols, "e");
    assert!(sources.iter().any(|s| s == "public.customers.email"), "{sources:?}");
    let cols = output_columns("SELECT (SELECT c FROM orders LIMIT 1) AS r FROM customers c");
    assert!(sources_of(&cols, "r").iter().any(|s| s == "public.customers.*"), "{cols:?}");
    let cols = output_columns("SELECT x.v FROM customers c, LATERAL (SELECT ssn AS v FROM orders LIMIT 1) x");
    assert!(sources_of(&cols, "v").iter().any(|s| s == "public.customers.ssn"), "{cols:?}");
    let m = computed("SELECT (SELECT email FROM orders LIMIT 1) FROM customers", 1);
    assert!(m.mask_of(0).is_some());
    // The query's own columns are not its outer candidates.
    let cols = output_columns("SELECT status FROM orders");
    assert_eq!(sources_of(&cols, "status"), ["public.orders.status"]);
    // Nor are a sibling FROM subquery's (not LATERAL).
    let cols = output_columns("SELECT x.v FROM customers c, (SELECT status AS v FROM orders) x");
    assert_eq!(sources_of(&cols, "v"), ["public.orders.status"]);
    // Stored: a masked column of the outer query read through a subquery.
    use policy_core::Verdict;
    let policy = format!("{POLICY}\n[[rule]]\nname = \"everything\"\neffect = \"allow\"\n");
    let e = Engine::new(Policy::from_toml_str(&policy, "flow.toml").unwrap(), Keys::default()).unwrap();
    let s = e.new_session();
    for sql in [
        "INSERT INTO notes (body) SELECT (SELECT email FROM orders LIMIT 1) FROM customers",
        "UPDATE orders SET status = (SELECT email FROM order_items LIMIT 1) FROM customers WHERE orders.id = 1",
        "INSERT INTO notes (body) SELECT c.to_json::text FROM customers c",
    ] {
        let d = e.decide(&bob(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}");
        assert!(d.reason.contains("masked"), "{sql}: {}", d.reason);
    }
    assert_eq!(e.decide(&bob(), &s, "INSERT INTO notes (body) SELECT status FROM orders").verdict, Verdict::Allow);
}
