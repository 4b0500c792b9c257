//! Statement analysis: the facts of docs/policy.md §3, one construct at a time.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;

use policy_core::{Class, Engine, Policy, Prepared, Session, SessionEffect, StatementFacts};

fn engine() -> Engine {
    engine_with("version = 1\n")
}

fn engine_with(policy: &str) -> Engine {
    let p = Policy::from_toml_str(policy, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Engine::new(p, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn facts_in(session: &Session, sql: &str) -> Vec<StatementFacts> {
    engine().analyze(session, sql).statements
}

fn facts(sql: &str) -> Vec<StatementFacts> {
    let e = engine();
    e.analyze(&e.new_session(), sql).statements
}

fn one(sql: &str) -> StatementFacts {
    let mut v = facts(sql);
    assert_eq!(v.len(), 1, "{sql}: {v:?}");
    v.remove(0)
}

fn tables(sql: &str) -> Vec<String> {
    let mut all: Vec<String> = facts(sql).into_iter().flat_map(|f| f.tables).collect();
    all.sort();
    all.dedup();
    all
}

#[test]
fn relations_are_found_wherever_they_hide() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT * FROM orders", &["public.orders"]),
        ("TABLE secrets", &["public.secrets"]),
        ("SELECT * FROM ONLY secrets", &["public.secrets"]),
        ("SELECT * FROM secrets*", &["public.secrets"]),
        ("SELECT * FROM orders UNION ALL TABLE secrets", &["public.orders", "public.secrets"]),
        ("SELECT (SELECT max(v) FROM secrets) FROM orders", &["public.orders", "public.secrets"]),
        ("SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM secrets)", &["public.orders", "public.secrets"]),
        (
            "SELECT * FROM orders o, LATERAL (SELECT * FROM secrets s WHERE s.id = o.id) x",
            &["public.orders", "public.secrets"],
        ),
        ("SELECT 1 FROM orders ORDER BY (SELECT v FROM secrets LIMIT 1)", &["public.orders", "public.secrets"]),
        ("SELECT 1 FROM orders LIMIT (SELECT count(*) FROM secrets)", &["public.orders", "public.secrets"]),
        ("VALUES ((SELECT v FROM secrets))", &["public.secrets"]),
        ("INSERT INTO orders SELECT * FROM secrets", &["public.orders", "public.secrets"]),
        ("UPDATE orders SET x = s.v FROM secrets s WHERE s.id = orders.id", &["public.orders", "public.secrets"]),
        ("DELETE FROM orders USING secrets WHERE secrets.id = orders.id", &["public.orders", "public.secrets"]),
        (
            "MERGE INTO orders o USING secrets s ON s.id = o.id WHEN MATCHED THEN DELETE",
            &["public.orders", "public.secrets"],
        ),
        ("COPY (SELECT * FROM secrets) TO STDOUT", &["public.secrets"]),
        ("COPY secrets TO STDOUT", &["public.secrets"]),
        ("DECLARE c CURSOR FOR SELECT * FROM secrets", &["public.secrets"]),
        ("PREPARE p AS SELECT * FROM secrets", &["public.secrets"]),
        ("EXPLAIN SELECT * FROM secrets", &["public.secrets"]),
        ("CREATE VIEW v AS SELECT * FROM secrets", &["public.secrets", "public.v"]),
        ("CREATE TABLE t AS SELECT * FROM secrets", &["public.secrets", "public.t"]),
        ("SELECT * INTO t FROM secrets", &["public.secrets", "public.t"]),
        (
            "CREATE RULE r AS ON INSERT TO orders DO ALSO INSERT INTO secrets VALUES (1)",
            &["public.orders", "public.secrets"],
        ),
        ("DROP TABLE secrets, app.other", &["app.other", "public.secrets"]),
        ("TRUNCATE secrets", &["public.secrets"]),
        ("LOCK TABLE secrets", &["public.secrets"]),
        ("COMMENT ON TABLE secrets IS 'x'", &["public.secrets"]),
        ("ALTER TABLE secrets ADD COLUMN x int", &["public.secrets"]),
        ("GRANT SELECT ON secrets TO public", &["public.secrets"]),
        ("VACUUM secrets", &["public.secrets"]),
        ("SELECT * FROM mydb.public.secrets", &["public.secrets"]),
        ("SELECT * FROM XMLTABLE('/r' PASSING (SELECT x FROM secrets) COLUMNS a int)", &["public.secrets"]),
        ("SELECT * FROM orders TABLESAMPLE SYSTEM (10)", &["public.orders"]),
        ("CREATE TABLE t (LIKE secrets)", &["public.secrets", "public.t"]),
        ("SELECT * FROM orders JOIN secrets USING (id)", &["public.orders", "public.secrets"]),
        ("SELECT nextval('app.seq')", &["app.seq"]),
        ("SELECT lo_get(1)", &["pg_catalog.pg_largeobject"]),
    ];
    for (sql, want) in cases {
        assert_eq!(tables(sql), *want, "{sql}");
    }
}

#[test]
fn quoting_unicode_escapes_comments_and_truncation_follow_the_server() {
    assert_eq!(tables(r#"SELECT * FROM U&"\0073ecrets""#), ["public.secrets"]);
    assert_eq!(tables(r#"SELECT * FROM U&"!0073ecrets" UESCAPE '!'"#), ["public.secrets"]);
    assert_eq!(tables("SELECT * FROM SECRETS"), ["public.secrets"]);
    assert_eq!(tables(r#"SELECT * FROM "Secrets""#), ["public.Secrets"]);
    assert_eq!(tables(r#"SELECT * FROM "public.secrets""#), [r#"public."public.secrets""#]);
    assert_eq!(tables("SELECT * FROM /* a /* nested */ secrets */ orders"), ["public.orders"]);
    assert_eq!(tables("SELECT * FROM orders -- secrets\n"), ["public.orders"]);
    assert_eq!(tables("SELECT $x$ FROM secrets $x$ FROM orders"), ["public.orders"]);
    assert_eq!(tables("SELECT E'\\' FROM secrets' FROM orders"), ["public.orders"]);
    // 70 bytes become the first 63, as PostgreSQL truncates identifiers.
    let long = format!("{}{}", "a".repeat(63), "bcdefgh");
    assert_eq!(tables(&format!("SELECT * FROM {long}")), [format!("public.{}", "a".repeat(63))]);
    // Multi-byte characters are not split.
    let wide = "é".repeat(40);
    let t = tables(&format!("SELECT * FROM \"{wide}\""));
    assert_eq!(t, [format!("public.{}", "é".repeat(31))]);
}

#[test]
fn standard_conforming_strings_changes_what_is_a_statement() {
    let sql = r"SELECT 'a\'; SELECT * FROM secrets; --'";
    let on = facts(sql);
    assert_eq!(on.len(), 2);
    assert_eq!(on[1].tables, ["public.secrets"]);
    let off = Session { standard_conforming_strings: false, ..Session::default() };
    let f = facts_in(&off, sql);
    assert_eq!(f.len(), 1);
    assert!(f[0].tables.is_empty());
}

#[test]
fn cte_names_shadow_only_inside_their_scope() {
    assert!(tables("WITH secrets AS (SELECT 1) SELECT * FROM secrets").is_empty());
    // A non-recursive CTE's own body sees the real table.
    assert_eq!(tables("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets"), ["public.secrets"]);
    // A CTE in one branch does not hide the table in another.
    assert_eq!(
        tables("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets"),
        ["public.secrets"]
    );
    assert_eq!(
        tables("WITH a AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM a, secrets"),
        ["public.secrets"]
    );
    // Recursive CTEs see themselves.
    assert!(tables("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT * FROM t").is_empty());
    // DML targets are never CTEs.
    assert_eq!(tables("WITH orders AS (SELECT 1) DELETE FROM orders WHERE id = 1"), ["public.orders"]);
    // A qualified name is never a CTE.
    assert_eq!(tables("WITH secrets AS (SELECT 1) SELECT * FROM public.secrets"), ["public.secrets"]);
}

#[test]
fn names_resolve_through_the_search_path() {
    let two = Session { search_path: vec!["app".into(), "public".into()], ..Session::default() };
    assert_eq!(facts_in(&two, "SELECT * FROM orders")[0].tables, ["app.orders", "public.orders"]);
    assert_eq!(tables("SELECT * FROM pg_authid"), ["pg_catalog.pg_authid", "public.pg_authid"]);
    let user = Session {
        search_path: vec!["$user".into(), "public".into()],
        user: Some("alice".into()),
        ..Session::default()
    };
    assert_eq!(facts_in(&user, "SELECT * FROM t")[0].tables, ["alice.t", "public.t"]);
    let empty = Session { search_path: vec![], ..Session::default() };
    let f = facts_in(&empty, "SELECT * FROM t");
    assert!(f[0].opaque, "{f:?}");
    // Temporary tables.
    assert_eq!(tables("CREATE TEMP TABLE t (a int)"), ["pg_temp.t"]);
}

#[test]
fn search_path_changes_apply_to_later_statements() {
    let f = facts("SET search_path = private, public; SELECT * FROM orders");
    assert_eq!(f[0].class, Class::Session);
    assert_eq!(
        f[0].session_effects,
        [SessionEffect::SetSearchPath {
            path: vec!["private".into(), "public".into()],
            local: false,
            uncertain: false
        }]
    );
    assert_eq!(f[1].tables, ["private.orders", "public.orders"]);
    // Each SET argument is one schema name, even one holding a comma.
    let f = facts("SET search_path TO 'x, y', \"Z\"; SELECT * FROM t");
    assert_eq!(f[1].tables, ["Z.t", "x, y.t"]);
    // set_config's value is a list.
    let f = facts("SELECT set_config('search_path', 'x, \"Y\"', true); SELECT * FROM t");
    assert_eq!(f[1].tables, ["Y.t", "x.t"]);
    let f = facts("SELECT set_config('search_path', 'private', false); SELECT * FROM orders");
    assert_eq!(f[1].tables, ["private.orders"]);
    let f = facts("SET LOCAL search_path = private; RESET search_path; SELECT * FROM orders");
    assert_eq!(f[2].tables, ["public.orders"]);
    // A search_path the engine cannot read is not an ordinary setting.
    assert_eq!(one("SELECT set_config('search_path', current_user, false)").class, Class::Admin);
}

#[test]
fn a_set_config_that_may_not_run_leaves_both_paths_possible() {
    let private = Session::default().with_startup_search_path(vec!["private".into()]);
    // The call may run never (plain EXPLAIN, a PREPARE body, a CASE branch,
    // a WHERE or FROM over no rows), later, or more than once: later
    // statements see the tables of both paths.
    for sql in [
        "EXPLAIN SELECT set_config('search_path', 'public', false)",
        "PREPARE p AS SELECT set_config('search_path', 'public', false)",
        "SELECT CASE WHEN false THEN set_config('search_path', 'public', false) END",
        "SELECT 1 WHERE false AND set_config('search_path', 'public', false) IS NULL",
        "SELECT set_config('search_path', 'public', false) FROM orders",
        "SELECT set_config('search_path', 'public', false) LIMIT 0",
        "SELECT coalesce('x', set_config('search_path', 'public', false))",
        "DECLARE c CURSOR FOR SELECT set_config('search_path', 'public', false)",
        "CREATE VIEW v AS SELECT set_config('search_path', 'public', false)",
        "SELECT * FROM (SELECT set_config('search_path', 'public', false)) s",
    ] {
        let f = facts_in(&private, &format!("{sql}; SELECT * FROM customers"));
        let last = f.last().unwrap();
        assert_eq!(last.tables, ["private.customers", "public.customers"], "{sql}");
    }
    // A plain SELECT of the call runs it, once: the path is the new one.
    for sql in [
        "SELECT set_config('search_path', 'public', false)",
        "SELECT pg_catalog.set_config('search_path', 'public', true) AS p",
        "SELECT 1, set_config('search_path', 'x', false), set_config('search_path', 'public', false)",
    ] {
        let f = facts_in(&private, &format!("{sql}; SELECT * FROM customers"));
        assert_eq!(f.last().unwrap().tables, ["public.customers"], "{sql}");
    }
    // The gateway still hears of the change (and reads the path back).
    let f = facts_in(&private, "EXPLAIN SELECT set_config('search_path', 'public', false)");
    assert!(f[0].changes_settings);
    // pg_catalog comes first only when it does in both paths: else an
    // unqualified function could be somebody's.
    let catalog_last = Session::default().with_startup_search_path(vec!["public".into(), "pg_catalog".into()]);
    let f = facts_in(
        &catalog_last,
        "SELECT CASE WHEN false THEN set_config('search_path', 'pg_catalog, public', false) END; SELECT lower('x')",
    );
    assert!(f[1].opaque, "{:?}", f[1]);
    let f =
        facts_in(&Session::default(), "SELECT 1 WHERE set_config('search_path', 'app', false) = ''; SELECT lower('x')");
    assert!(!f[1].opaque, "{:?}", f[1]);
}

#[test]
fn a_set_inside_another_statement_leaves_the_session_alone() {
    for sql in [
        "ALTER ROLE app SET search_path = private",
        "ALTER ROLE app IN DATABASE app RESET search_path",
        "ALTER DATABASE app SET search_path TO private",
        "ALTER SYSTEM SET search_path = private",
        "ALTER FUNCTION f() SET search_path = private",
        "ALTER FUNCTION f() RESET ALL",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = private AS 'SELECT 1'",
        "CREATE PROCEDURE p() LANGUAGE sql SET search_path FROM CURRENT AS 'SELECT 1'",
    ] {
        let f = facts(&format!("{sql}; SELECT * FROM orders"));
        assert_eq!(f[0].session_effects, [], "{sql}");
        assert_eq!(f[1].tables, ["public.orders"], "{sql}");
    }
}

#[test]
fn classes_take_the_most_privileged_thing_done() {
    let cases: &[(&str, Class, &str)] = &[
        ("SELECT 1", Class::Read, "SELECT"),
        ("VALUES (1)", Class::Read, "SELECT"),
        ("SHOW search_path", Class::Read, "SHOW"),
        ("EXPLAIN DELETE FROM t", Class::Read, "EXPLAIN"),
        ("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1", Class::Write, "EXPLAIN"),
        ("EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1", Class::Read, "EXPLAIN"),
        ("COPY t TO STDOUT", Class::Read, "COPY"),
        ("COPY t FROM STDIN", Class::Write, "COPY"),
        ("COPY t TO '/tmp/x'", Class::Admin, "COPY"),
        ("COPY t FROM PROGRAM 'id'", Class::Admin, "COPY"),
        ("SELECT nextval('s')", Class::Write, "SELECT"),
        ("SELECT pg_terminate_backend(1)", Class::Admin, "SELECT"),
        ("SELECT pg_catalog.pg_read_file('/etc/passwd')", Class::Admin, "SELECT"),
        ("SELECT * FROM pg_ls_dir('.')", Class::Admin, "SELECT"),
        ("SELECT lo_import('/etc/passwd')", Class::Admin, "SELECT"),
        ("SELECT * FROM t FOR UPDATE", Class::Write, "SELECT"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Class::Write, "SELECT"),
        ("INSERT INTO t VALUES (1)", Class::Write, "INSERT"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", Class::Write, "MERGE"),
        ("NOTIFY ch", Class::Write, "NOTIFY"),
        ("CREATE TABLE t (a int)", Class::Ddl, "CREATE TABLE"),
        ("DROP TABLE t", Class::Ddl, "DROP TABLE"),
        ("DROP VIEW v", Class::Ddl, "DROP VIEW"),
        ("ALTER TABLE t ADD COLUMN b int", Class::Ddl, "ALTER TABLE"),
        ("TRUNCATE t", Class::Ddl, "TRUNCATE TABLE"),
        ("COMMENT ON TABLE t IS 'x'", Class::Ddl, "COMMENT"),
        ("SELECT * INTO t2 FROM t", Class::Ddl, "SELECT INTO"),
        ("CREATE TABLE t2 AS SELECT 1", Class::Ddl, "CREATE TABLE AS"),
        ("REFRESH MATERIALIZED VIEW m", Class::Ddl, "REFRESH MATERIALIZED VIEW"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", Class::Ddl, "CREATE FUNCTION"),
        ("GRANT SELECT ON t TO bob", Class::Dcl, "GRANT"),
        ("REVOKE SELECT ON t FROM bob", Class::Dcl, "REVOKE"),
        ("CREATE ROLE bob", Class::Dcl, "CREATE ROLE"),
        ("ALTER USER bob WITH SUPERUSER", Class::Dcl, "ALTER ROLE"),
        ("DROP ROLE bob", Class::Dcl, "DROP ROLE"),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", Class::Dcl, "ALTER DEFAULT PRIVILEGES"),
        ("SET ROLE postgres", Class::Dcl, "SET"),
        ("SET SESSION AUTHORIZATION postgres", Class::Dcl, "SET"),
        ("RESET ROLE", Class::Dcl, "RESET"),
        ("RESET ALL", Class::Dcl, "RESET"),
        ("SELECT set_config('role', 'postgres', false)", Class::Dcl, "SELECT"),
        ("ALTER TABLE t OWNER TO bob", Class::Ddl, "ALTER TABLE"),
        ("CREATE DATABASE d", Class::Admin, "CREATE DATABASE"),
        ("DROP DATABASE d", Class::Admin, "DROP DATABASE"),
        ("VACUUM t", Class::Admin, "VACUUM"),
        ("ANALYZE t", Class::Admin, "ANALYZE"),
        ("CLUSTER t", Class::Admin, "CLUSTER"),
        ("REINDEX TABLE t", Class::Admin, "REINDEX"),
        ("CHECKPOINT", Class::Admin, "CHECKPOINT"),
        ("LOAD 'x'", Class::Admin, "LOAD"),
        ("ALTER SYSTEM SET work_mem = '1GB'", Class::Admin, "ALTER SYSTEM"),
        ("LOCK TABLE t", Class::Admin, "LOCK TABLE"),
        ("CREATE EXTENSION dblink", Class::Admin, "CREATE EXTENSION"),
        ("SET standard_conforming_strings = off", Class::Admin, "SET"),
        ("SET backslash_quote = on", Class::Admin, "SET"),
        ("SET client_encoding = 'SJIS'", Class::Admin, "SET"),
        ("SET NAMES 'SJIS'", Class::Admin, "SET"),
        ("SELECT set_config('standard_conforming_strings', 'off', false)", Class::Admin, "SELECT"),
        ("SELECT set_config(current_user, 'x', false)", Class::Admin, "SELECT"),
        ("DO $$ BEGIN END $$", Class::Procedural, "DO"),
        ("CALL p()", Class::Procedural, "CALL"),
        ("BEGIN", Class::Transaction, "BEGIN"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", Class::Transaction, "BEGIN"),
        ("COMMIT", Class::Transaction, "COMMIT"),
        ("ROLLBACK TO SAVEPOINT a", Class::Transaction, "ROLLBACK"),
        ("SAVEPOINT a", Class::Transaction, "SAVEPOINT"),
        ("SET TRANSACTION READ ONLY", Class::Transaction, "SET"),
        ("PREPARE TRANSACTION 'x'", Class::Admin, "PREPARE TRANSACTION"),
        ("SET work_mem = '64MB'", Class::Session, "SET"),
        ("RESET work_mem", Class::Session, "RESET"),
        ("DISCARD ALL", Class::Session, "DISCARD"),
        ("LISTEN ch", Class::Session, "LISTEN"),
        ("UNLISTEN *", Class::Session, "UNLISTEN"),
        ("DEALLOCATE ALL", Class::Session, "DEALLOCATE"),
        ("PREPARE p AS SELECT 1", Class::Read, "PREPARE"),
        ("PREPARE p AS DELETE FROM t WHERE id = $1", Class::Write, "PREPARE"),
        ("DECLARE c CURSOR FOR SELECT 1", Class::Read, "DECLARE CURSOR"),
        ("FETCH 10 FROM c", Class::Read, "FETCH"),
        ("CLOSE c", Class::Session, "CLOSE CURSOR"),
        ("SELEC 1", Class::Unknown, ""),
    ];
    for (sql, class, command) in cases {
        let f = one(sql);
        assert_eq!((f.class, f.command.as_str()), (*class, *command), "{sql}");
    }
}

#[test]
fn functions_that_hide_sql_make_statements_opaque() {
    for sql in [
        "SELECT query_to_xml('select * from secrets', true, true, '')",
        "SELECT table_to_xml('secrets', true, false, '')",
        "SELECT * FROM ts_stat('select v from secrets')",
        "SELECT * FROM dblink('dbname=x', 'select 1') AS t(a int)",
        "SELECT leak()",
        "SELECT public.lower('x')",
        "SELECT \"LOWER\"('x')",
        "SELECT 1 OPERATOR(public.+) 2",
        "SELECT 'a' === 'b'",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL p()",
        "EXECUTE never_prepared",
        "SELECT nextval(current_user)",
    ] {
        let f = one(sql);
        assert!(f.opaque, "{sql}: {f:?}");
        assert!(!f.notes.is_empty(), "{sql}: opacity without a reason");
    }
    for sql in [
        "SELECT lower(name), count(*), now() FROM t GROUP BY 1",
        "SELECT pg_catalog.lower('x')",
        "SELECT a || b, a ~~ 'x%', a @> b FROM t",
        "SELECT * FROM generate_series(1, 10)",
        "SELECT extract(year FROM now()), substring('abc' FROM 2)",
    ] {
        let f = one(sql);
        assert!(!f.opaque, "{sql}: {f:?}");
    }
    // A search path that puts a schema before pg_catalog can shadow built-ins.
    let s = Session { search_path: vec!["public".into(), "pg_catalog".into()], ..Session::default() };
    assert!(facts_in(&s, "SELECT lower('x')")[0].opaque);
    // The policy can vouch for functions.
    let e = engine_with("version = 1\n[settings]\ntrusted_functions = [\"app.*\"]\n");
    let f = &e.analyze(&e.new_session(), "SELECT app.total(1)").statements[0];
    assert!(!f.opaque, "{f:?}");
    assert_eq!(f.functions, ["app.total"]);
}

#[test]
fn functions_are_listed_lower_cased_and_qualified_as_written() {
    let f = one("SELECT LOWER(x), pg_catalog.upper(x), \"Mixed\"(1), app.f() FROM t");
    assert_eq!(f.functions, ["Mixed", "app.f", "lower", "pg_catalog.upper"]);
}

#[test]
fn writes_are_found_in_every_nesting() {
    let cases: &[(&str, &[&str])] = &[
        ("INSERT INTO orders VALUES (1)", &["public.orders"]),
        ("UPDATE orders SET a = 1 WHERE id = 2", &["public.orders"]),
        ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d", &["public.orders"]),
        ("EXPLAIN ANALYZE UPDATE orders SET a = 1 WHERE id = 2", &["public.orders"]),
        ("PREPARE p AS INSERT INTO orders VALUES ($1)", &["public.orders"]),
        (
            "CREATE TABLE t2 AS WITH x AS (INSERT INTO orders VALUES (1) RETURNING *) SELECT * FROM x",
            &["public.orders", "public.t2"],
        ),
        ("COPY orders FROM STDIN", &["public.orders"]),
        ("TRUNCATE orders, items", &["public.items", "public.orders"]),
        ("MERGE INTO orders USING s ON orders.id = s.id WHEN MATCHED THEN UPDATE SET a = 1", &["public.orders"]),
        ("SELECT setval('orders_id_seq', 1)", &["public.orders_id_seq"]),
    ];
    for (sql, want) in cases {
        let f = one(sql);
        assert_eq!(f.written_tables, *want, "{sql}");
    }
    // Plain EXPLAIN runs nothing.
    assert!(one("EXPLAIN UPDATE orders SET a = 1").written_tables.is_empty());
    assert!(one("COPY orders TO STDOUT").written_tables.is_empty());
}

#[test]
fn where_is_judged_everywhere_an_update_or_delete_hides() {
    let missing = [
        "DELETE FROM t",
        "DELETE FROM t WHERE 1 = 1",
        "UPDATE t SET a = 1 WHERE true",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM t",
        "PREPARE p AS DELETE FROM t WHERE 'a' = 'a'",
        "CREATE RULE r AS ON INSERT TO a DO ALSO DELETE FROM t",
        "WITH a AS (DELETE FROM t WHERE id = 1 RETURNING *), b AS (DELETE FROM u RETURNING *) SELECT 1",
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        "DELETE FROM t WHERE EXISTS (SELECT 1)",
    ];
    for sql in missing {
        assert_eq!(one(sql).has_where, Some(false), "{sql}");
    }
    for sql in [
        "DELETE FROM t WHERE id = 1",
        "UPDATE t SET a = 1 WHERE a IS NULL",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        assert_eq!(one(sql).has_where, Some(true), "{sql}");
    }
    assert_eq!(one("SELECT * FROM t").has_where, None);
    assert_eq!(one("INSERT INTO t VALUES (1)").has_where, None);
}

#[test]
fn limits_bound_only_the_outer_result() {
    for (sql, bounded) in [
        ("SELECT * FROM t LIMIT 10", true),
        ("SELECT * FROM t FETCH FIRST 5 ROWS ONLY", true),
        ("SELECT * FROM t", false),
        ("SELECT * FROM t LIMIT ALL", false),
        ("SELECT * FROM t LIMIT NULL", false),
        ("SELECT * FROM t LIMIT $1", false),
        ("SELECT * FROM t LIMIT (SELECT 10)", false),
        ("SELECT * FROM (SELECT * FROM t LIMIT 5) x", false),
        ("(SELECT * FROM t LIMIT 5) UNION ALL SELECT * FROM u", false),
        ("SELECT * FROM t UNION ALL SELECT * FROM u LIMIT 5", true),
        ("SELECT * FROM t FETCH FIRST 5 ROWS WITH TIES", false),
        ("SHOW work_mem", true),
        ("FETCH 10 FROM c", true),
        ("FETCH ALL FROM c", false),
    ] {
        assert_eq!(one(sql).has_limit, bounded, "{sql}");
    }
}

#[test]
fn several_statements_are_each_analysed() {
    let f = facts("SELECT 1; COPY orders FROM STDIN;\nSELECT * FROM secrets");
    assert_eq!(f.len(), 3);
    assert_eq!(f[1].command, "COPY");
    assert_eq!(f[2].tables, ["public.secrets"]);
    assert_eq!(f[2].index, 2);
    assert!(facts("").is_empty());
    assert!(facts("-- nothing\n/* at all */").is_empty());
}

#[test]
fn prepared_statements_are_judged_by_what_they_run() {
    let e = engine();
    let f = &e.analyze(&e.new_session(), "PREPARE q AS SELECT * FROM secrets; EXECUTE q").statements;
    assert_eq!(f[1].tables, ["public.secrets"]);
    assert!(!f[1].opaque);
    match &f[0].session_effects[..] {
        [SessionEffect::Prepare { name, prepared }] => {
            assert_eq!(name, "q");
            assert_eq!(&*prepared.sql, "PREPARE q AS SELECT * FROM secrets");
        }
        other => panic!("{other:?}"),
    }
    let mut s = e.new_session();
    s.prepared.insert(
        "q".into(),
        Prepared { sql: Arc::from("PREPARE q AS DELETE FROM orders"), standard_conforming_strings: true },
    );
    let f = &e.analyze(&s, "EXECUTE q").statements[0];
    assert_eq!((f.class, f.has_where), (Class::Write, Some(false)));
    assert_eq!(f.written_tables, ["public.orders"]);
    // Parameters are expressions too.
    let f = &e.analyze(&s, "EXECUTE q((SELECT v FROM secrets))").statements[0];
    assert!(f.tables.contains(&"public.secrets".to_string()));
    // Deallocated earlier in the same string: unknown again.
    let f = &e.analyze(&s, "DEALLOCATE q; EXECUTE q").statements;
    assert!(f[1].opaque);
    let f = &e.analyze(&e.new_session(), "EXECUTE q").statements[0];
    assert!(f.opaque);
    assert_eq!(f.class, Class::Write);
    // A recorded text that is not preparable is not followed (no loop).
    let mut looping = e.new_session();
    looping.prepared.insert("q".into(), Prepared { sql: Arc::from("EXECUTE q"), standard_conforming_strings: true });
    let f = &e.analyze(&looping, "EXECUTE q").statements[0];
    assert!(f.opaque, "{f:?}");
    looping.prepared.insert("q".into(), Prepared { sql: Arc::from("DROP TABLE t"), standard_conforming_strings: true });
    assert!(e.analyze(&looping, "EXECUTE q").statements[0].opaque);
}

#[test]
fn fingerprints_fold_constants_whitespace_and_case() {
    let fp = |sql: &str| one(sql).fingerprint;
    let a = fp("SELECT * FROM t WHERE id = 1 AND name = 'x'");
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a, fp("select *\n from T where ID = 42 and NAME = 'yy' -- c"));
    assert_eq!(a, fp("SELECT * FROM t WHERE id = $1 AND name = $2"));
    assert_eq!(fp("SELECT * FROM t WHERE id IN (1, 2, 3)"), fp("SELECT * FROM t WHERE id IN (4)"));
    assert_ne!(a, fp("SELECT * FROM u WHERE id = 1 AND name = 'x'"));
    assert_ne!(a, fp("SELECT * FROM t WHERE id = 1 OR name = 'x'"));
    assert_ne!(fp("SELECT a - b FROM t"), fp("SELECT b - a FROM t"));
    // Pinned: the fingerprint is stable across releases within v1.
    assert_eq!(fp("SELECT 1"), fp("select 2"));
    assert_eq!(fp("SELECT 1"), "448a418dcf49869b");
}

#[test]
fn columns_resolve_through_aliases() {
    let f = one("SELECT o.id, c.email, total FROM orders o JOIN customers c ON c.id = o.customer_id");
    assert!(f.columns.contains(&"public.orders.id".to_string()), "{:?}", f.columns);
    assert!(f.columns.contains(&"public.customers.email".to_string()), "{:?}", f.columns);
    assert!(f.columns.contains(&"total".to_string()), "{:?}", f.columns);
    let f = one("SELECT email FROM customers");
    assert_eq!(f.columns, ["public.customers.email"]);
}

#[test]
fn lineage_follows_result_columns_to_their_sources() {
    let cols = |sql: &str| one(sql).output_columns;
    let c = cols("SELECT u.ssn AS id_number, name, upper(email) AS e, 1 AS one FROM users u");
    assert_eq!(c[0].name, "id_number");
    assert_eq!(c[0].sources, ["public.users.ssn"]);
    assert!(c[0].direct);
    assert_eq!(c[1].sources, ["public.users.name"]);
    assert_eq!(c[2].sources, ["public.users.email"]);
    assert!(!c[2].direct);
    assert!(c[3].sources.is_empty() && !c[3].unknown);

    let c = cols("SELECT ssn::text, ssn::int, substr(ssn, 1, 3) FROM users");
    assert!(c[0].direct);
    assert!(!c[1].direct);
    assert!(!c[2].direct);

    let c = cols("WITH x AS (SELECT ssn AS s FROM users) SELECT s FROM x");
    assert_eq!((c[0].sources.as_slice(), c[0].direct), (&["public.users.ssn".to_string()][..], true));

    let c = cols("SELECT q.a FROM (SELECT ssn AS a FROM users) q");
    assert_eq!(c[0].sources, ["public.users.ssn"]);

    let c = cols("SELECT ssn FROM users UNION SELECT tax_id FROM vendors");
    assert_eq!(c[0].sources, ["public.users.ssn", "public.vendors.tax_id"]);

    let c = cols("SELECT * FROM users");
    assert_eq!(c[0].sources, ["public.users.*"]);
    let c = cols("SELECT row_to_json(u), to_jsonb(u) FROM users u");
    assert_eq!(c[0].sources, ["public.users.*", "public.users.u"]);
    assert!(!c[0].direct);

    let c = cols("SELECT (SELECT ssn FROM users LIMIT 1) AS s");
    assert_eq!(c[0].sources, ["public.users.ssn"]);
    let c = cols("SELECT coalesce(a.ssn, 'x'), CASE WHEN true THEN ssn END, count(ssn), max(ssn) OVER () FROM users a");
    assert!(c.iter().all(|c| c.sources == ["public.users.ssn"] && !c.direct), "{c:?}");

    let c = cols("SELECT x FROM generate_series(1, 3) AS g(x)");
    assert!(c[0].unknown);
    let c = cols("WITH RECURSIVE r AS (SELECT ssn FROM users UNION SELECT ssn FROM r) SELECT * FROM r");
    assert_eq!((c[0].sources.as_slice(), c[0].unknown), (&["public.users.ssn".to_string()][..], false));
    let c = cols("WITH RECURSIVE r AS (SELECT ssn FROM r UNION SELECT ssn FROM users) SELECT * FROM r");
    assert!(c[0].unknown, "a self-reference in the non-recursive term");
    let c = cols("DELETE FROM users WHERE id = 1 RETURNING ssn");
    assert_eq!(c[0].sources, ["public.users.ssn"]);
}

/// The generic walk must see every relation and function call the parser
/// produced. This cross-checks the facts against a brute-force scan of the
/// serialised parse tree: every `RangeVar` name must appear among the
/// tables (unless a CTE of that name exists) and every `FuncCall` name among
/// the functions.
#[test]
fn no_relation_or_function_escapes_the_walk() {
    fn scan(v: &serde_json::Value, rels: &mut Vec<String>, funcs: &mut Vec<String>, ctes: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(rv)) = m.get("RangeVar") {
                    if let Some(serde_json::Value::String(n)) = rv.get("relname") {
                        rels.push(n.clone());
                    }
                }
                if let Some(serde_json::Value::Object(c)) = m.get("CommonTableExpr") {
                    if let Some(serde_json::Value::String(n)) = c.get("ctename") {
                        ctes.push(n.clone());
                    }
                }
                if let Some(serde_json::Value::Object(fc)) = m.get("FuncCall") {
                    if let Some(serde_json::Value::Array(parts)) = fc.get("funcname") {
                        if let Some(last) = parts.last() {
                            if let Some(s) = last.pointer("/node/String/sval").and_then(|s| s.as_str()) {
                                funcs.push(s.to_string());
                            }
                        }
                    }
                }
                for (_, child) in m {
                    scan(child, rels, funcs, ctes);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| scan(c, rels, funcs, ctes)),
            _ => {}
        }
    }
    let corpus = [
        "SELECT * FROM a JOIN b ON a.x = b.x WHERE EXISTS (SELECT f(1) FROM c) ORDER BY g(d.y)",
        "WITH w AS (SELECT * FROM e) INSERT INTO f SELECT h(x) FROM w RETURNING (SELECT i(1) FROM g)",
        "CREATE VIEW v AS SELECT j(a) FROM k UNION SELECT l(b) FROM m",
        "SELECT * FROM XMLTABLE('/r' PASSING (SELECT x FROM n) COLUMNS a int PATH o('x'))",
        "SELECT * FROM p, LATERAL q(p.a) AS r, ROWS FROM (s(1), t(2)) AS u",
        "MERGE INTO v1 USING v2 ON v1.a = v2.a WHEN MATCHED AND w1(1) THEN UPDATE SET a = w2(v2.a) WHEN NOT MATCHED THEN INSERT VALUES (w3(1))",
        "CREATE TABLE x1 (a int DEFAULT x2(), b int CHECK (x3(b) > 0)) INHERITS (x4)",
        "CREATE INDEX ON y1 (y2(a)) WHERE y3(b)",
        "CREATE TRIGGER tr AFTER INSERT ON z1 FOR EACH ROW WHEN (z2(NEW.a)) EXECUTE FUNCTION z3()",
        "CREATE RULE r1 AS ON UPDATE TO r2 DO INSTEAD (INSERT INTO r3 VALUES (r4(1)); DELETE FROM r5 WHERE r6(a))",
        "SELECT JSON_OBJECT('a' VALUE (SELECT j1(1) FROM j2)), JSON_ARRAYAGG(j3(x)) FROM j4",
        "SELECT * FROM JSON_TABLE((SELECT jt1 FROM jt2), '$' COLUMNS (a int PATH '$.a' DEFAULT jt3() ON EMPTY)) jt",
        "COPY (SELECT c1(a) FROM c2) TO STDOUT",
        "ALTER TABLE at1 ADD COLUMN a int DEFAULT at2(), ADD CONSTRAINT k CHECK (at3(a) > 0)",
        "CREATE POLICY po ON po1 USING (po2(a) AND EXISTS (SELECT 1 FROM po3))",
        "SELECT a FROM g1 GROUP BY GROUPING SETS ((g2(a)), ()) HAVING g3(count(*)) > 1 WINDOW w AS (ORDER BY g4(a))",
        "UPDATE u1 SET (a, b) = (SELECT u2(x), y FROM u3) WHERE u4(a)",
        "DELETE FROM d1 USING d2 WHERE d3(d1.a) RETURNING d4(a)",
        "CREATE MATERIALIZED VIEW mv AS SELECT mv1(a) FROM mv2 WITH NO DATA",
        "SELECT ARRAY(SELECT ar1(a) FROM ar2), (ar3(x))[1], (ar4(y)).z FROM ar5",
        "SELECT * FROM s1 WHERE a = ANY (SELECT s2(x) FROM s3) AND b IN (SELECT s4 FROM s5)",
        "DECLARE cur CURSOR FOR SELECT cu1(a) FROM cu2",
        "EXPLAIN ANALYZE SELECT ex1(a) FROM ex2",
        "CREATE FUNCTION fn1() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT fn2(a) FROM fn3; END",
        "CREATE SCHEMA sc CREATE TABLE sc1 (a int) CREATE VIEW sc2 AS SELECT sc3(a) FROM sc4",
        "SELECT xmlelement(name x, (SELECT xm1(a) FROM xm2)), xmlforest(xm3(b)) FROM xm4",
        "SELECT a FROM ts1 TABLESAMPLE BERNOULLI (ts2(1)) REPEATABLE (ts3())",
    ];
    let e = engine();
    for sql in corpus {
        let parsed = pg_query::parse(sql, 0).unwrap_or_else(|err| panic!("{sql}: {err}"));
        let tree = serde_json::to_value(&parsed.protobuf).unwrap_or_else(|err| panic!("{err}"));
        let (mut rels, mut funcs, mut ctes) = (Vec::new(), Vec::new(), Vec::new());
        scan(&tree, &mut rels, &mut funcs, &mut ctes);
        let facts = e.analyze(&e.new_session(), sql).statements;
        let seen_tables: Vec<String> = facts.iter().flat_map(|f| f.tables.clone()).collect();
        let seen_funcs: Vec<String> = facts.iter().flat_map(|f| f.functions.clone()).collect();
        for r in rels.iter().filter(|r| !ctes.contains(r)) {
            assert!(
                seen_tables.iter().any(|t| t.rsplit('.').next() == Some(r.as_str())),
                "{sql}: relation `{r}` missing from {seen_tables:?}"
            );
        }
        for f in &funcs {
            assert!(
                seen_funcs.iter().any(|s| s.rsplit('.').next() == Some(f.as_str())),
                "{sql}: function `{f}` missing from {seen_funcs:?}"
            );
        }
        assert!(!rels.is_empty() || !funcs.is_empty(), "{sql}: the scan found nothing");
    }
}

#[test]
fn statements_that_change_settings() {
    let changing = [
        "SET search_path = app",
        "SET LOCAL work_mem = '1MB'",
        "SET SESSION statement_timeout = 0",
        "RESET search_path",
        "RESET ALL",
        "SET search_path TO DEFAULT",
        "SET ROLE app",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION app",
        "SET TIME ZONE 'UTC'",
        "SET NAMES 'UTF8'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "DISCARD ALL",
        "DISCARD PLANS",
        "DISCARD TEMP",
        "SELECT set_config('work_mem', '1MB', false)",
        "SELECT pg_catalog.set_config('search_path', 'app', true)",
        "SELECT * FROM orders WHERE CASE WHEN id = 0 THEN set_config('work_mem', '1MB', false) IS NULL END",
        "PREPARE p AS SELECT set_config('work_mem', '1MB', false)",
        // Code the engine cannot see may set anything.
        "DO $$ BEGIN PERFORM set_config('search_path', 'x', false); END $$",
        "CALL refresh()",
        "SELECT my_function()",
        // Text the grammar rejects.
        "SELEC 1",
    ];
    for sql in changing {
        assert!(facts(sql)[0].changes_settings, "{sql}");
    }
    let not_changing = [
        "SELECT 1",
        "SHOW search_path",
        "SHOW ALL",
        "SELECT current_setting('search_path')",
        "SET CONSTRAINTS ALL DEFERRED",
        "ALTER ROLE app SET search_path = private",
        "ALTER DATABASE app SET work_mem = '1MB'",
        "ALTER SYSTEM SET work_mem = '1MB'",
        "ALTER FUNCTION f() SET search_path = private",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = private AS 'SELECT 1'",
        "BEGIN",
        "COMMIT",
        "ROLLBACK TO SAVEPOINT s",
        "DEALLOCATE ALL",
        "UPDATE orders SET total = 0 WHERE id = 1",
    ];
    for sql in not_changing {
        assert!(!facts(sql)[0].changes_settings, "{sql}");
    }
    // Each statement of a string on its own.
    let f = facts("SELECT 1; SET work_mem = '1MB'; SELECT 2");
    assert_eq!(f.iter().map(|s| s.changes_settings).collect::<Vec<_>>(), [false, true, false]);
    // EXECUTE of a statement that calls set_config runs it.
    let mut s = engine().new_session();
    s.prepared.insert(
        "p".into(),
        Prepared { sql: Arc::from("SELECT set_config('work_mem', '1MB', false)"), standard_conforming_strings: true },
    );
    assert!(facts_in(&s, "EXECUTE p")[0].changes_settings);
}

#[test]
fn statements_that_begin_and_end_transactions() {
    // (sql, begins, ends, reverts settings)
    let cases: &[(&str, bool, bool, bool)] = &[
        ("BEGIN", true, false, false),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", true, false, false),
        ("START TRANSACTION READ ONLY", true, false, false),
        ("COMMIT", false, true, true),
        ("END", false, true, true),
        ("COMMIT AND CHAIN", true, true, true),
        ("ROLLBACK", false, true, true),
        ("ABORT", false, true, true),
        ("ROLLBACK AND CHAIN", true, true, true),
        ("PREPARE TRANSACTION 'tx1'", false, true, true),
        ("COMMIT PREPARED 'tx1'", false, true, true),
        ("ROLLBACK PREPARED 'tx1'", false, true, true),
        ("ROLLBACK TO SAVEPOINT s", false, false, true),
        ("ROLLBACK TO s", false, false, true),
        ("SAVEPOINT s", false, false, false),
        ("RELEASE SAVEPOINT s", false, false, false),
        ("SET TRANSACTION READ ONLY", false, false, false),
        ("SELECT 1", false, false, false),
        ("PREPARE p AS SELECT 1", false, false, false),
        ("SELEC 1", false, false, false),
    ];
    for &(sql, begins, ends, reverts) in cases {
        let f = &facts(sql)[0];
        assert_eq!(
            (f.begins_transaction, f.ends_transaction, f.reverts_settings),
            (begins, ends, reverts),
            "{sql}: (begins, ends, reverts settings)"
        );
    }
    let f = facts("BEGIN; SELECT 1; COMMIT");
    assert_eq!(
        f.iter().map(|s| (s.begins_transaction, s.ends_transaction)).collect::<Vec<_>>(),
        [(true, false), (false, false), (false, true)]
    );
}

#[test]
fn derived_flags_stay_out_of_the_json() {
    let e = engine();
    let d = e.decide(&policy_core::Identity::new("a"), &e.new_session(), "BEGIN; SET work_mem = '1MB'; COMMIT");
    let json = d.to_json();
    for field in ["changes_settings", "ends_transaction", "begins_transaction", "reverts_settings"] {
        assert!(!json.contains(field), "{field} in {json}");
    }
}

/// Utility statements name every relation they create, rename or move, in
/// the schema the server puts it in (found by replaying PostgreSQL's
/// regression tests with event triggers reporting what each statement
/// changed).
#[test]
fn utility_statements_name_relations_where_the_server_puts_them() {
    // CREATE SCHEMA's elements are created in the new schema (and each
    // unqualified name counts every candidate on the path, as elsewhere).
    let t = tables("CREATE SCHEMA s2 CREATE TABLE t (a int) CREATE VIEW v AS SELECT a FROM t");
    assert!(t.contains(&"s2.t".to_string()) && t.contains(&"s2.v".to_string()), "{t:?}");
    let t = tables("CREATE SCHEMA AUTHORIZATION bob CREATE TABLE t (a int)");
    assert!(t.contains(&"bob.t".to_string()), "{t:?}");
    // A renamed relation is named under its new name too, in its schema.
    assert_eq!(tables("ALTER TABLE t RENAME TO u"), ["public.t", "public.u"]);
    assert_eq!(tables("ALTER VIEW app.v RENAME TO w"), ["app.v", "app.w"]);
    assert_eq!(tables("ALTER TABLE t RENAME COLUMN a TO b"), ["public.t"]);
    // A relation moved is named in its new schema.
    assert_eq!(tables("ALTER TABLE public.t SET SCHEMA private"), ["private.t", "public.t"]);
    assert_eq!(tables("ALTER MATERIALIZED VIEW m SET SCHEMA private"), ["private.m", "public.m"]);
    // A schema stands for every relation in it.
    assert_eq!(tables("DROP SCHEMA private CASCADE"), ["private.*"]);
    assert_eq!(tables("DROP SCHEMA a, b"), ["a.*", "b.*"]);
    assert_eq!(tables("ALTER SCHEMA private RENAME TO open"), ["open.*", "private.*"]);
    assert_eq!(tables("ALTER SCHEMA private OWNER TO bob"), ["private.*"]);
    // What a role owns, or a tablespace holds, the engine cannot list.
    assert!(one("ALTER TABLE ALL IN TABLESPACE t1 SET TABLESPACE pg_default").opaque);
    for sql in ["DROP OWNED BY bob", "REASSIGN OWNED BY bob TO alice"] {
        assert!(one(sql).opaque, "{sql}");
    }
    assert!(one("CREATE SCHEMA AUTHORIZATION CURRENT_USER CREATE TABLE t (a int)").opaque);
}

/// `DROP SCHEMA private CASCADE` drops every relation of `private`: a rule
/// granting schema changes on `public.*` does not cover it.
#[test]
fn a_schema_dropped_with_its_relations_needs_a_rule_for_them_all() {
    let e = engine_with(
        "version = 1\n[[rule]]\nname = \"ddl-public\"\neffect = \"allow\"\nclasses = [\"ddl\"]\ntables = [\"public.*\"]\n",
    );
    let s = e.new_session();
    let who = policy_core::Identity::new("agent");
    for sql in ["DROP SCHEMA private CASCADE", "ALTER SCHEMA private RENAME TO open", "DROP SCHEMA public, private"] {
        assert_eq!(e.decide(&who, &s, sql).verdict, policy_core::Verdict::Deny, "{sql}");
    }
    assert_eq!(e.decide(&who, &s, "DROP SCHEMA public CASCADE").verdict, policy_core::Verdict::Allow);
}

/// A statement runs the commands of its actions: `MERGE ... THEN DELETE`
/// deletes, `INSERT ... ON CONFLICT DO UPDATE` updates, and rules on
/// `commands` see them.
#[test]
fn merge_and_upsert_run_the_commands_of_their_actions() {
    let commands = |sql: &str| one(sql).commands;
    assert_eq!(
        commands(
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (1)"
        ),
        ["DELETE", "INSERT", "MERGE"]
    );
    assert_eq!(commands("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = 1"), ["MERGE", "UPDATE"]);
    assert_eq!(commands("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING"), ["MERGE"]);
    assert_eq!(commands("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2"), ["INSERT", "UPDATE"]);
    assert_eq!(commands("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"), ["INSERT"]);
    // The aliases of a MERGE name its tables.
    let f =
        one("MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET x = c.email");
    assert!(f.columns.contains(&"public.customers.email".to_string()), "{:?}", f.columns);
    assert!(f.columns.contains(&"public.orders.customer_id".to_string()), "{:?}", f.columns);
    // Under plain EXPLAIN nothing runs but the EXPLAIN.
    assert_eq!(commands("EXPLAIN MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"), ["EXPLAIN"]);
}
