//! Views judged by what they read (`settings.views`): rules see the
//! relations behind a view, masks follow view columns to table columns.
//! The definitions below are written as `pg_get_viewdef` writes them on a
//! connection with an empty `search_path`.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::borrow::Cow;
use std::sync::Arc;

use policy_core::{
    ColumnInfo, Definitions, Engine, Function, FunctionBody, Identity, Policy, RowPolicy, Session, Verdict, View,
    ViewKind, REDACTED,
};

const POLICY: &str = r#"
version = 1
[settings]
VIEWS
[[rule]]
name = "read-public"
effect = "allow"
classes = ["read"]
tables = ["public.*"]

[[rule]]
name = "write-public"
effect = "allow"
classes = ["write"]
tables = ["public.*"]

[[mask]]
name = "phone"
columns = ["public.users.phone"]
strategy = "partial"
show_last = 2
"#;

fn engine(views: &str) -> Engine {
    let policy = Policy::from_toml_str(&POLICY.replace("VIEWS", views), "views.toml").unwrap();
    Engine::new(policy, Default::default()).unwrap()
}

fn catalog() -> Definitions {
    let mut v = Definitions::new();
    let view = |columns: &[&str], definition: &str| {
        View::new(ViewKind::View, columns.iter().map(|c| c.to_string()).collect(), definition)
    };
    v.insert("public", "laundered", view(&["id", "secret"], " SELECT s.id,\n    s.secret\n   FROM private.secrets s;"));
    v.insert(
        "public",
        "contacts",
        view(&["id", "tel"], " SELECT users.id,\n    users.phone AS tel\n   FROM public.users;"),
    );
    v.insert(
        "public",
        "shouting",
        view(&["id", "tel"], " SELECT contacts.id,\n    upper(contacts.tel) AS tel\n   FROM public.contacts;"),
    );
    v.insert(
        "public",
        "docs",
        view(&["doc"], " SELECT json_build_object('id', users.id, 'phone', users.phone) AS doc\n   FROM public.users;"),
    );
    v.insert(
        "public",
        "nested",
        view(&["id", "secret"], " SELECT laundered.id,\n    laundered.secret\n   FROM public.laundered;"),
    );
    v.insert("public", "hidden_code", view(&["x"], " SELECT public.mystery() AS x;"));
    v.insert("public", "ids", view(&["id"], " SELECT users.id\n   FROM public.users;"));
    v.insert(
        "app",
        "rollup",
        View::new(
            ViewKind::Materialized,
            vec!["tel".into(), "n".into()],
            " SELECT users.phone AS tel,\n    count(*) AS n\n   FROM public.users\n  GROUP BY users.phone;",
        ),
    );
    v
}

fn session(e: &Engine, views: Definitions) -> Session {
    let mut s = e.new_session();
    s.definitions = Some(Arc::new(views));
    s
}

fn agent() -> Identity {
    Identity::new("agent")
}

#[test]
fn a_view_over_a_forbidden_table_is_judged_by_that_table() {
    let e = engine("");
    let s = session(&e, catalog());
    for sql in [
        "SELECT * FROM laundered",
        "TABLE laundered",
        "SELECT secret FROM public.nested",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM laundered)",
    ] {
        let d = e.decide(&agent(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}: {}", d.reason);
        assert!(d.statements[0].facts.tables.contains(&"private.secrets".to_string()), "{sql}");
    }
    // The view is judged too: a policy excluding it by name still does.
    let facts = &e.analyze(&s, "SELECT * FROM nested").statements[0];
    assert_eq!(facts.tables, ["private.secrets", "public.laundered", "public.nested"]);
    // A view over allowed tables stays allowed.
    assert_eq!(e.decide(&agent(), &s, "SELECT * FROM ids").verdict, Verdict::Allow);
}

#[test]
fn views_name_judges_the_view_by_its_name_alone() {
    let e = engine(r#"views = "name""#);
    let s = session(&e, catalog());
    let d = e.decide(&agent(), &s, "SELECT * FROM laundered");
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    assert_eq!(d.statements[0].facts.tables, ["public.laundered"]);
}

#[test]
fn without_views_the_session_judges_by_name_and_decisions_are_not_shared() {
    let e = engine("");
    let bare = e.new_session();
    let known = session(&e, catalog());
    // The same text, decided first without views: the cached answer must
    // not serve the session that knows them.
    assert_eq!(e.decide(&agent(), &bare, "SELECT * FROM laundered").verdict, Verdict::Allow);
    assert_eq!(e.decide(&agent(), &known, "SELECT * FROM laundered").verdict, Verdict::Deny);
    // Nor does a decision made with one catalog serve the next one.
    let replaced = session(&e, Definitions::new());
    assert_eq!(e.decide(&agent(), &replaced, "SELECT * FROM laundered").verdict, Verdict::Allow);
}

#[test]
fn a_view_running_code_the_engine_cannot_see_is_opaque() {
    let e = engine("");
    let s = session(&e, catalog());
    let d = e.decide(&agent(), &s, "SELECT x FROM hidden_code");
    assert_eq!(d.verdict, Verdict::Deny);
    let facts = &d.statements[0].facts;
    assert!(facts.opaque);
    assert!(facts.notes[0].contains("view public.hidden_code"), "{:?}", facts.notes);
}

#[test]
fn unreadable_definitions_and_an_unreadable_catalog_fail_closed() {
    let e = engine("");
    let mut views = Definitions::new();
    views.insert("public", "broken", View::new(ViewKind::View, vec!["a".into()], "SELEC 1"));
    views.insert("public", "writer", View::new(ViewKind::View, vec!["a".into()], "DELETE FROM public.users"));
    let s = session(&e, views);
    for sql in ["SELECT * FROM broken", "SELECT * FROM writer"] {
        let facts = e.analyze(&s, sql).statements.remove(0);
        assert!(facts.opaque, "{sql}");
        assert!(facts.notes[0].contains("cannot be read"), "{:?}", facts.notes);
    }
    let s = session(&e, Definitions::unavailable("connection refused"));
    let d = e.decide(&agent(), &s, "SELECT * FROM ids");
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("catalog could not be read"), "{}", d.reason);
    // Statements naming no relation, or only the server's own, are read as before.
    assert_eq!(e.decide(&agent(), &s, "SELECT 1").verdict, Verdict::Allow);
    assert!(!e.analyze(&s, "SELECT * FROM information_schema.tables").statements[0].opaque);
}

#[test]
fn a_view_created_earlier_in_the_same_string_is_not_judged_by_a_stale_catalog() {
    let e = engine("");
    let s = session(&e, catalog());
    let a = e.analyze(&s, "CREATE VIEW public.fresh AS SELECT * FROM private.secrets; SELECT * FROM fresh");
    assert!(!a.statements[0].opaque);
    assert!(a.statements[1].opaque, "{:?}", a.statements[1]);
    let a = e.analyze(&s, "ALTER VIEW laundered RENAME TO innocent; SELECT * FROM innocent");
    assert!(a.statements[1].opaque);
    // Other DDL leaves the statements after it as they were.
    let a = e.analyze(&s, "CREATE TABLE public.t (a int); SELECT * FROM t");
    assert!(!a.statements[1].opaque);
}

#[test]
fn unqualified_names_expand_every_candidate_on_the_path() {
    let e = engine("");
    let mut s = session(&e, catalog());
    s.search_path = vec!["app".into(), "public".into()];
    let facts = e.analyze(&s, "SELECT * FROM rollup").statements.remove(0);
    assert!(facts.tables.contains(&"app.rollup".to_string()));
    assert!(facts.tables.contains(&"public.users".to_string()), "{:?}", facts.tables);
}

#[test]
fn writing_through_a_view_writes_its_base_table() {
    let e = engine("");
    let s = session(&e, catalog());
    let facts = e.analyze(&s, "UPDATE laundered SET secret = 'x' WHERE id = 1").statements.remove(0);
    assert!(facts.written_tables.contains(&"private.secrets".to_string()), "{:?}", facts.written_tables);
    assert_eq!(e.decide(&agent(), &s, "UPDATE laundered SET secret = 'x' WHERE id = 1").verdict, Verdict::Deny);
}

/// Masks `value` as column `name` (reported by the server as `source`) of
/// `sql`'s result.
fn masked(e: &Engine, s: &Session, sql: &str, columns: &[ColumnInfo], row: &[&str]) -> Vec<Option<String>> {
    let facts = e.analyze(s, sql).statements.remove(0);
    let masker = e.masker(&agent(), &facts, columns);
    let mut values: Vec<Option<Cow<'_, [u8]>>> = row.iter().map(|v| Some(Cow::Borrowed(v.as_bytes()))).collect();
    masker.mask_row(&mut values);
    values.into_iter().map(|v| v.map(|b| String::from_utf8(b.into_owned()).unwrap())).collect()
}

#[test]
fn masks_follow_view_columns_to_table_columns() {
    let e = engine("");
    let s = session(&e, catalog());
    // Renamed: the server reports the view's column; the mask's strategy applies.
    let cols =
        [ColumnInfo::text("id", Some("public.contacts.id")), ColumnInfo::text("tel", Some("public.contacts.tel"))];
    assert_eq!(
        masked(&e, &s, "SELECT * FROM contacts", &cols, &["1", "555-1234"]),
        [Some("1".into()), Some("****34".to_string())]
    );
    // Computed in a view over a view: masked whole.
    let cols =
        [ColumnInfo::text("id", Some("public.shouting.id")), ColumnInfo::text("tel", Some("public.shouting.tel"))];
    assert_eq!(masked(&e, &s, "SELECT * FROM shouting", &cols, &["1", "555-1234"])[1].as_deref(), Some(REDACTED));
    // Nested in JSON: masked whole.
    let cols = [ColumnInfo::text("doc", Some("public.docs.doc"))];
    let doc = r#"{"id" : 1, "phone" : "555-1234"}"#;
    assert_eq!(masked(&e, &s, "SELECT doc FROM docs", &cols, &[doc])[0].as_deref(), Some(REDACTED));
    // Computed over a view column in the statement: lineage, not the server, says where it comes from.
    let cols = [ColumnInfo::text("t", None)];
    assert_eq!(
        masked(&e, &s, "SELECT lower(tel) AS t FROM contacts", &cols, &["555-1234"])[0].as_deref(),
        Some(REDACTED)
    );
    let cols = [ColumnInfo::text("tel", None)];
    assert_eq!(masked(&e, &s, "SELECT c.tel FROM contacts c", &cols, &["555-1234"])[0].as_deref(), Some("****34"));
    // A materialized view's column too.
    let mut s2 = s.clone();
    s2.search_path = vec!["app".into()];
    let cols = [ColumnInfo::text("tel", Some("app.rollup.tel")), ColumnInfo::text("n", Some("app.rollup.n"))];
    assert_eq!(
        masked(&e, &s2, "SELECT * FROM rollup", &cols, &["555-1234", "3"]),
        [Some("****34".to_string()), Some("3".into())]
    );
    // Columns of the view not derived from a masked one pass.
    let cols = [ColumnInfo::text("id", Some("public.contacts.id"))];
    assert_eq!(masked(&e, &s, "SELECT id FROM contacts", &cols, &["1"])[0].as_deref(), Some("1"));
    // With views = "name", the view's columns are not masked (the policy names views on purpose).
    let e = engine(r#"views = "name""#);
    let s = session(&e, catalog());
    let cols = [ColumnInfo::text("tel", Some("public.contacts.tel"))];
    assert_eq!(masked(&e, &s, "SELECT tel FROM contacts", &cols, &["555-1234"])[0].as_deref(), Some("555-1234"));
}

/// A whole row of a view written as JSON is masked field by field, each
/// key by the view column it stands for.
#[test]
fn whole_rows_of_views_are_masked_by_their_columns() {
    let e = engine("");
    let s = session(&e, catalog());
    let json = [ColumnInfo::new("j", None, 114, false)];
    let row = r#"{"id": 1, "tel": "555-1234"}"#;
    for (sql, want) in [
        ("SELECT to_json(c) FROM contacts c", r#"{"id": 1, "tel": "****34"}"#.to_string()),
        ("SELECT row_to_json(s) FROM shouting s", format!(r#"{{"id": 1, "tel": "{REDACTED}"}}"#)),
        ("SELECT json_agg(x) FROM (SELECT c.id, c.tel FROM contacts c) x", r#"{"id": 1, "tel": "****34"}"#.to_string()),
    ] {
        let value = if sql.contains("json_agg") { format!("[{row}]") } else { row.to_string() };
        let want = if sql.contains("json_agg") { format!("[{want}]") } else { want };
        assert_eq!(masked(&e, &s, sql, &json, &[&value])[0].as_deref(), Some(want.as_str()), "{sql}");
    }
    // A key the view does not have: not a row of it, masked whole.
    let odd = r#"{"id": 1, "phone": "555-1234"}"#;
    assert_eq!(
        masked(&e, &s, "SELECT to_json(c) FROM contacts c", &json, &[odd])[0].as_deref(),
        Some(format!("\"{REDACTED}\"").as_str())
    );
    // A view whose columns no mask reaches passes.
    assert_eq!(
        masked(&e, &s, "SELECT to_json(i) FROM ids i", &json, &[r#"{"id": 1}"#])[0].as_deref(),
        Some(r#"{"id": 1}"#)
    );
}

#[test]
fn masked_view_columns_may_not_be_stored() {
    let e = engine("");
    let s = session(&e, catalog());
    let d = e.decide(&agent(), &s, "INSERT INTO public.notes SELECT tel FROM contacts");
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("masked"), "{}", d.reason);
    assert_eq!(e.decide(&agent(), &s, "INSERT INTO public.notes SELECT id FROM ids").verdict, Verdict::Allow);
}

/// Dropping, renaming, commenting on or locking a view reads none of what
/// is behind it: it is judged by its name, and is not refused for masked
/// columns it does not read. Granting it gives its rows away: judged by
/// what it reads.
#[test]
fn statements_that_do_not_read_a_view_are_judged_by_its_name() {
    let e = engine("");
    let s = session(&e, catalog());
    for sql in [
        "DROP VIEW public.contacts",
        "ALTER VIEW public.laundered RENAME TO innocent",
        "COMMENT ON VIEW public.contacts IS 'phones'",
        "LOCK TABLE public.laundered",
    ] {
        let facts = &e.analyze(&s, sql).statements[0];
        assert!(!facts.opaque, "{sql}: {:?}", facts.notes);
        assert!(
            !facts.tables.iter().any(|t| t == "private.secrets" || t == "public.users"),
            "{sql}: {:?}",
            facts.tables
        );
        assert!(!facts.columns.iter().any(|c| c.ends_with(".phone")), "{sql}: {:?}", facts.columns);
    }
    let facts = &e.analyze(&s, "GRANT SELECT ON public.laundered TO someone").statements[0];
    assert!(facts.tables.contains(&"private.secrets".to_string()), "{:?}", facts.tables);
    // What creates from a view reads it.
    let facts = &e.analyze(&s, "CREATE TABLE public.copy AS SELECT * FROM laundered").statements[0];
    assert!(facts.tables.contains(&"private.secrets".to_string()), "{:?}", facts.tables);
    let facts = &e.analyze(&s, "CREATE VIEW public.again AS SELECT tel FROM contacts").statements[0];
    assert!(facts.columns.contains(&"public.users.phone".to_string()), "{:?}", facts.columns);
}

/// Rules and row-level security policies run with the statement: what
/// they read and write is judged with it.
#[test]
fn rules_and_row_security_policies_are_judged_with_the_statement() {
    let e = engine("");
    let mut defs = catalog();
    defs.insert_rule(
        "public",
        "orders",
        "CREATE RULE keep AS\n    ON DELETE TO public.orders DO  INSERT INTO private.deleted (id)\n  VALUES (old.id);",
    );
    defs.insert_rule(
        "public",
        "inbox",
        "CREATE RULE ins AS\n    ON INSERT TO public.inbox DO INSTEAD  INSERT INTO public.orders (id)\n  VALUES (new.id);",
    );
    defs.insert_row_policy(
        "public",
        "notes",
        RowPolicy::new(Some("(author IN ( SELECT s.owner\n   FROM private.secrets s))".into()), None),
    );
    defs.insert_row_policy("public", "docs", RowPolicy::new(None, Some("(level <= public.clearance())".into())));
    let s = session(&e, defs);
    // The rule writes private.deleted: the write-public rule does not cover it.
    let d = e.decide(&agent(), &s, "DELETE FROM orders WHERE id = 1");
    assert_eq!(d.verdict, Verdict::Deny, "{} {:?}", d.reason, d.statements[0].facts);
    assert!(d.statements[0].facts.written_tables.contains(&"private.deleted".to_string()));
    // Reading the table does not run its rules.
    let facts = &e.analyze(&s, "SELECT * FROM orders").statements[0];
    assert_eq!(facts.tables, ["public.orders"]);
    // Rules on the tables a rule writes run too (every rule of a written
    // table, whatever its event: a superset).
    let facts = &e.analyze(&s, "INSERT INTO inbox VALUES (1)").statements[0];
    assert_eq!(facts.written_tables, ["private.deleted", "public.inbox", "public.orders"]);
    // A policy's expression reads private.secrets on every read and write.
    for sql in ["SELECT * FROM notes", "UPDATE notes SET body = ''"] {
        let d = e.decide(&agent(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}: {}", d.reason);
        assert!(d.statements[0].facts.tables.contains(&"private.secrets".to_string()), "{sql}");
        // Its columns reach nobody: not read by the statement.
        assert!(!d.statements[0].facts.columns.iter().any(|c| c.starts_with("private.")), "{sql}");
    }
    // A policy calling a function the engine cannot see is opaque.
    let facts = &e.analyze(&s, "SELECT * FROM docs").statements[0];
    assert!(facts.opaque, "{:?}", facts.notes);
    // A rule the engine cannot read is opaque.
    let mut defs = catalog();
    defs.insert_rule("public", "orders", "CREATE RULE broken AS ON DELETE TO public.orders DO (");
    let s = session(&e, defs);
    let facts = &e.analyze(&s, "DELETE FROM orders").statements[0];
    assert!(facts.opaque && facts.notes.iter().any(|n| n.contains("rule on public.orders")), "{:?}", facts.notes);
}

/// A write to a table fires its triggers, whose functions are never SQL:
/// opaque, unless built in or trusted by the policy.
#[test]
fn triggers_make_writes_opaque_unless_their_functions_are_trusted() {
    let e = engine("");
    let mut defs = catalog();
    defs.insert_trigger("public", "orders", "audit", "log_change");
    defs.insert_trigger("public", "notes", "pg_catalog", "suppress_redundant_updates_trigger");
    let s = session(&e, defs.clone());
    for sql in ["UPDATE orders SET total = 0 WHERE id = 1", "DELETE FROM orders WHERE id = 1", "TRUNCATE orders"] {
        let facts = &e.analyze(&s, sql).statements[0];
        assert!(facts.opaque && facts.notes[0].contains("audit.log_change"), "{sql}: {:?}", facts.notes);
        assert!(facts.functions.contains(&"audit.log_change".to_string()), "{sql}");
    }
    // Reading does not fire them; a built-in trigger function is known.
    assert!(!e.analyze(&s, "SELECT * FROM orders").statements[0].opaque);
    assert!(!e.analyze(&s, "UPDATE notes SET body = '' WHERE id = 1").statements[0].opaque);
    // Trusted by its qualified or its bare name.
    for trusted in ["audit.log_change", "log_change", "audit.*"] {
        let policy = POLICY.replace("VIEWS", &format!("trusted_functions = [\"{trusted}\"]"));
        let e = Engine::new(Policy::from_toml_str(&policy, "views.toml").unwrap(), Default::default()).unwrap();
        let s = session(&e, defs.clone());
        let d = e.decide(&agent(), &s, "UPDATE orders SET total = 0 WHERE id = 1");
        assert_eq!(d.verdict, Verdict::Allow, "{trusted}: {}", d.reason);
    }
}

/// A relation a superuser moved into pg_catalog, which the server searches
/// first, shadows the relations of the same name on the path.
#[test]
fn relations_moved_into_pg_catalog_make_their_namesakes_opaque() {
    let e = engine("");
    let mut defs = catalog();
    defs.insert_catalog_relation("orders");
    let s = session(&e, defs);
    for sql in [
        "SELECT * FROM orders",
        "INSERT INTO orders VALUES (1)",
        "SELECT * FROM public.orders",
        "DROP TABLE orders",
        "ALTER TABLE orders RENAME TO o2",
    ] {
        let facts = &e.analyze(&s, sql).statements[0];
        assert!(facts.opaque && facts.notes[0].contains("pg_catalog"), "{sql}: {:?}", facts.notes);
    }
    for sql in ["SELECT * FROM pg_catalog.orders", "SELECT * FROM users", "SELECT * FROM public.orders_2024"] {
        assert!(!e.analyze(&s, sql).statements[0].opaque, "{sql}");
    }
}

fn functions() -> Definitions {
    let mut d = catalog();
    let sql = |body: &str| Function::new(FunctionBody::Sql(body.to_string()), None);
    // Unqualified names in a classic body resolve with the caller's path.
    d.insert_function("public", "api_key", sql("SELECT secret FROM private.secrets LIMIT 1"));
    d.insert_function("public", "phone_of", sql("SELECT phone FROM users WHERE id = $1"));
    d.insert_function("public", "user_count", sql("SELECT count(*) FROM users"));
    d.insert_function("public", "forget", sql("DELETE FROM public.users"));
    d.insert_function("public", "twice", sql("SELECT public.phone_of($1) || public.phone_of($1)"));
    d.insert_function("public", "looping", sql("SELECT public.looping()"));
    d.insert_function(
        "public",
        "standard",
        Function::new(
            FunctionBody::Standard(
                "CREATE OR REPLACE FUNCTION public.standard()\n RETURNS text\n LANGUAGE sql\nBEGIN ATOMIC\n SELECT secrets.secret\n    FROM private.secrets;\nEND".into(),
            ),
            None,
        ),
    );
    d.insert_function("public", "hidden", Function::new(FunctionBody::Other { language: "plpgsql".into() }, None));
    // An overload in another language makes the name opaque.
    d.insert_function("public", "mixed", sql("SELECT 1"));
    d.insert_function("public", "mixed", Function::new(FunctionBody::Other { language: "plpgsql".into() }, None));
    d.insert("public", "keys", View::new(ViewKind::View, vec!["k".into()], " SELECT public.api_key() AS k;"));
    d
}

#[test]
fn sql_functions_are_judged_by_their_bodies() {
    let e = engine("");
    let s = session(&e, functions());
    let facts = |sql: &str| e.analyze(&s, sql).statements.remove(0);
    for sql in
        ["SELECT api_key()", "SELECT public.standard()", "SELECT * FROM keys", "SELECT 1 WHERE api_key() IS NULL"]
    {
        let d = e.decide(&agent(), &s, sql);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}");
        let f = &d.statements[0].facts;
        assert!(!f.opaque, "{sql}: {:?}", f.notes);
        assert!(f.tables.contains(&"private.secrets".to_string()), "{sql}: {:?}", f.tables);
    }
    // A body over allowed tables is allowed, nested calls are followed, and
    // recursion ends.
    assert_eq!(e.decide(&agent(), &s, "SELECT user_count()").verdict, Verdict::Allow);
    let f = facts("SELECT twice(1)");
    assert!(!f.opaque && f.tables == ["public.users"], "{f:?}");
    assert!(!facts("SELECT looping()").opaque);
    // A body that writes makes the call a write, with the body's commands.
    let f = facts("SELECT forget()");
    assert_eq!(f.class, policy_core::Class::Write);
    assert!(f.commands.contains(&"DELETE".to_string()), "{:?}", f.commands);
    assert_eq!(f.has_where, Some(false));
    // Other languages, and names with an overload in one, stay opaque.
    for sql in ["SELECT hidden()", "SELECT mixed()", "SELECT nowhere()"] {
        assert!(facts(sql).opaque, "{sql}");
    }
    // Unqualified names in a classic body resolve with the caller's path.
    let mut elsewhere = s.clone();
    elsewhere.search_path = vec!["app".into(), "public".into()];
    let f = e.analyze(&elsewhere, "SELECT public.user_count()").statements.remove(0);
    assert!(f.tables.contains(&"app.users".to_string()) && f.tables.contains(&"public.users".to_string()), "{f:?}");
    // views = "name": functions are not expanded either.
    let e2 = engine(r#"views = "name""#);
    let s2 = session(&e2, functions());
    assert!(e2.analyze(&s2, "SELECT user_count()").statements[0].opaque);
}

#[test]
fn results_of_sql_functions_are_masked_by_what_the_body_reads() {
    let e = engine("");
    let s = session(&e, functions());
    let cols = [ColumnInfo::text("p", None)];
    assert_eq!(masked(&e, &s, "SELECT phone_of(1) AS p", &cols, &["555-1234"])[0].as_deref(), Some(REDACTED));
    assert_eq!(masked(&e, &s, "SELECT twice(id) AS p FROM ids", &cols, &["555-1234"])[0].as_deref(), Some(REDACTED));
    assert_eq!(masked(&e, &s, "SELECT user_count() AS p", &cols, &["3"])[0].as_deref(), Some("3"));
    let d = e.decide(&agent(), &s, "INSERT INTO public.notes SELECT phone_of(1)");
    assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
}

/// The server picks among same-named functions by argument types: a
/// function of the database named like a built-in one may be what an
/// unqualified call runs. It is followed when it is SQL, and makes the
/// call opaque otherwise.
#[test]
fn functions_named_like_built_in_ones_are_followed_or_opaque() {
    let e = engine("");
    let mut d = catalog();
    let sql = |body: &str| Function::new(FunctionBody::Sql(body.to_string()), None);
    d.insert_function("public", "lower", sql("SELECT phone FROM public.users LIMIT 1"));
    d.insert_function("public", "upper", Function::new(FunctionBody::Other { language: "plpgsql".into() }, None));
    let s = session(&e, d);
    let f = e.analyze(&s, "SELECT lower('X')").statements.remove(0);
    assert!(!f.opaque && f.tables == ["public.users"], "{f:?}");
    let cols = [ColumnInfo::text("l", None)];
    assert_eq!(masked(&e, &s, "SELECT lower('X') AS l", &cols, &["555-1234"])[0].as_deref(), Some(REDACTED));
    assert!(e.analyze(&s, "SELECT upper('x')").statements[0].opaque);
    // Built-in names no function of the database takes are read as before.
    let f = e.analyze(&s, "SELECT length(id::text) AS l FROM ids").statements.remove(0);
    assert!(!f.opaque, "{f:?}");
    assert_eq!(masked(&e, &s, "SELECT length(id::text) AS l FROM ids", &cols, &["1"])[0].as_deref(), Some("1"));
    // A qualified built-in call is the built-in.
    assert!(!e.analyze(&s, "SELECT pg_catalog.upper('x')").statements[0].opaque);
}

/// `u.forget`, where `users` has no column `forget`, is the call
/// `forget(u)` (PostgreSQL's attribute notation, a "computed field"): with
/// a function of that name in the database, the reference is opaque, as
/// the call itself would be, unless the policy trusts the function.
#[test]
fn attribute_notation_naming_a_database_function_is_opaque() {
    let e = engine("");
    let s = session(&e, functions());
    for sql in
        ["SELECT u.forget FROM users u", "SELECT users.hidden FROM users", "SELECT public.users.forget FROM users"]
    {
        let facts = e.analyze(&s, sql).statements.remove(0);
        assert!(facts.opaque, "{sql}");
        assert!(facts.notes.iter().any(|n| n.contains("on the whole row")), "{sql}: {:?}", facts.notes);
        assert_eq!(e.decide(&agent(), &s, sql).verdict, Verdict::Deny, "{sql}");
    }
    for sql in ["SELECT u.phone FROM users u", "SELECT u.to_json FROM users u"] {
        assert!(!e.analyze(&s, sql).statements[0].opaque, "{sql}");
    }
}

/// A SQL function whose body changes `search_path` changes the caller's
/// path: the statement calling it changes settings (the gateway reads the
/// path back once it ran), and what follows in the same string is judged
/// with the old and the new path both, as the function may or may not
/// have run.
#[test]
fn a_function_that_sets_search_path_moves_the_callers_path() {
    let e = engine("");
    let mut d = functions();
    let sql = |body: &str| Function::new(FunctionBody::Sql(body.to_string()), None);
    d.insert_function("public", "switch_path", sql("SELECT set_config('search_path', 'private', false)"));
    let s = session(&e, d);
    let a = e.analyze(&s, "SELECT switch_path(); SELECT * FROM orders");
    assert!(a.statements[0].changes_settings, "{:?}", a.statements[0]);
    assert!(a.statements[1].tables.contains(&"private.orders".to_string()), "{:?}", a.statements[1].tables);
    assert!(a.statements[1].tables.contains(&"public.orders".to_string()), "{:?}", a.statements[1].tables);
    assert!(!e.analyze(&s, "SELECT user_count()").statements[0].changes_settings);
}
