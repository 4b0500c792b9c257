//! The search path through transactions: what `COMMIT`, `ROLLBACK`,
//! savepoints and a string's implicit block do to it, within one string and
//! across strings through `Session::apply`.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use policy_core::{Engine, Identity, Policy, Session, SessionEffect, Verdict};

/// Reads of `public` are allowed, `private` is not; transaction control and
/// settings are.
const POLICY: &str = r#"
version = 1
[[rule]]
name = "read-public"
effect = "allow"
classes = ["read"]
tables = ["public.*"]

[[rule]]
name = "settings"
effect = "allow"
classes = ["session", "transaction"]
"#;

fn engine() -> Engine {
    Engine::new(Policy::from_toml_str(POLICY, "test.toml").unwrap(), Default::default()).unwrap()
}

fn anyone() -> Identity {
    Identity::new("someone")
}

/// A session that logged in with `search_path = private`.
fn private(e: &Engine) -> Session {
    e.new_session().with_startup_search_path(vec!["private".into()])
}

/// The tables and verdict of the string's last `SELECT * FROM customers`.
fn read_of_customers(e: &Engine, s: &Session, sql: &str) -> (Vec<String>, Verdict) {
    let d = e.decide(&anyone(), s, sql);
    let read = d.statements.iter().rev().find(|st| st.facts.command == "SELECT" && !st.facts.tables.is_empty());
    let read = read.unwrap_or_else(|| panic!("{sql}: no read of customers in {}", d.to_json()));
    (read.facts.tables.clone(), read.verdict)
}

/// Applies every effect of `sql` to `s`, as the gateway does once it ran.
fn run(e: &Engine, s: &mut Session, sql: &str) {
    for st in e.analyze(s, sql).statements {
        for effect in &st.session_effects {
            s.apply(effect);
        }
    }
}

fn private_read() -> (Vec<String>, Verdict) {
    (vec!["private.customers".into()], Verdict::Deny)
}

fn public_read() -> (Vec<String>, Verdict) {
    (vec!["public.customers".into()], Verdict::Allow)
}

fn both_read() -> (Vec<String>, Verdict) {
    (vec!["private.customers".into(), "public.customers".into()], Verdict::Deny)
}

/// Strings in which the server has gone back to `private` when it reads
/// `customers`.
const BACK_TO_PRIVATE: &[&str] = &[
    // SET LOCAL ends with the transaction.
    "BEGIN; SET LOCAL search_path = public; COMMIT; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path = public; END; SELECT * FROM customers",
    "START TRANSACTION; SET LOCAL search_path = public; COMMIT WORK; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path = public; COMMIT AND CHAIN; SELECT * FROM customers; COMMIT",
    "BEGIN; SET LOCAL search_path = public; PREPARE TRANSACTION 'x'; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path = public; SET LOCAL search_path = app; COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', true); COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', 'on'); COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', ' T '); COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', 1::boolean); COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', 'yes'::bool); END; SELECT * FROM customers",
    // A rollback undoes SET.
    "BEGIN; SET search_path = public; ROLLBACK; SELECT * FROM customers",
    "BEGIN; SET search_path = public; ABORT; SELECT * FROM customers",
    "BEGIN; SET search_path = public; ROLLBACK WORK; SELECT * FROM customers",
    "BEGIN; SET search_path = public; ROLLBACK AND CHAIN; SELECT * FROM customers; COMMIT",
    "BEGIN; SET search_path = public; COMMIT AND CHAIN; SET search_path = app; ROLLBACK; RESET search_path; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', false); ROLLBACK; SELECT * FROM customers",
    "BEGIN; SET SESSION search_path = public; ROLLBACK; SELECT * FROM customers",
    "BEGIN; SET search_path = public; SAVEPOINT s; SET search_path = app; ROLLBACK; SELECT * FROM customers",
    // ROLLBACK TO undoes what was done since the savepoint.
    "BEGIN; SAVEPOINT s; SET search_path = public; ROLLBACK TO s; SELECT * FROM customers; COMMIT",
    "BEGIN; SAVEPOINT s; SET search_path = public; ROLLBACK TO SAVEPOINT s; SELECT * FROM customers; COMMIT",
    "BEGIN; SAVEPOINT s; SET LOCAL search_path = public; ROLLBACK TO s; SELECT * FROM customers; COMMIT",
    "BEGIN; SAVEPOINT s; SET search_path = public; ROLLBACK TO s; COMMIT; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = public; ROLLBACK TO s; SET search_path = public; ROLLBACK TO s; SELECT * FROM customers",
    "BEGIN; SAVEPOINT \"S\"; SET search_path = public; ROLLBACK TO \"S\"; SELECT * FROM customers",
    // RELEASE keeps what was done, but not past an outer rollback.
    "BEGIN; SAVEPOINT s; SAVEPOINT t; SET search_path = public; RELEASE t; ROLLBACK TO s; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = public; RELEASE s; ROLLBACK; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = public; RELEASE SAVEPOINT s; ROLLBACK; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET LOCAL search_path = public; RELEASE s; COMMIT; SELECT * FROM customers",
    // The most recent savepoint of a name counts; RELEASE drops it, and
    // the older one of that name is there again.
    "BEGIN; SAVEPOINT s; SET search_path = public; SAVEPOINT s; RELEASE s; ROLLBACK TO s; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SAVEPOINT t; SET search_path = public; RELEASE s; ROLLBACK; SELECT * FROM customers",
    // A multi-statement string is one implicit transaction block: COMMIT
    // in it ends SET LOCAL, ROLLBACK undoes SET, and BEGIN makes it a
    // regular block that began with the string.
    "SET LOCAL search_path = public; COMMIT; SELECT * FROM customers",
    "SET LOCAL search_path = public; END; SELECT * FROM customers",
    "SET search_path = public; ROLLBACK; SELECT * FROM customers",
    "SET search_path = public; ABORT; SELECT * FROM customers",
    "SELECT set_config('search_path', 'public', false); ROLLBACK; SELECT * FROM customers",
    "SET search_path = public; BEGIN; ROLLBACK; SELECT * FROM customers",
    "SET LOCAL search_path = public; BEGIN; COMMIT; SELECT * FROM customers",
    "SET search_path = public; COMMIT; SET search_path = app; ROLLBACK; RESET search_path; SELECT * FROM customers",
    // SET LOCAL TO DEFAULT is local too.
    "SET search_path = public; BEGIN; SET LOCAL search_path TO DEFAULT; SELECT * FROM customers; COMMIT",
];

/// Strings in which the server still reads `public.customers`: a change
/// the end of the transaction keeps.
const STAYS_PUBLIC: &[&str] = &[
    "BEGIN; SET search_path = public; COMMIT; SELECT * FROM customers",
    "BEGIN; SET search_path = public; END; SELECT * FROM customers",
    "BEGIN; SET search_path = public; COMMIT AND CHAIN; SELECT * FROM customers; COMMIT",
    "BEGIN; SET search_path = public; COMMIT AND CHAIN; SET search_path = app; ROLLBACK; SELECT * FROM customers",
    "BEGIN; SET search_path = public; PREPARE TRANSACTION 'x'; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path = public; SELECT * FROM customers; COMMIT",
    "BEGIN; SELECT set_config('search_path', 'public', false); COMMIT; SELECT * FROM customers",
    "BEGIN; SELECT set_config('search_path', 'public', 'off'); COMMIT; SELECT * FROM customers",
    "BEGIN; SET search_path = public; SET LOCAL search_path = app; COMMIT; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path = app; SET search_path = public; COMMIT; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = public; RELEASE s; COMMIT; SELECT * FROM customers",
    "BEGIN; SET search_path = public; SAVEPOINT s; SET LOCAL search_path = app; ROLLBACK TO s; SELECT * FROM customers",
    "BEGIN; SET search_path = public; SAVEPOINT s; SET search_path = app; ROLLBACK TO s; COMMIT; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = public; SAVEPOINT s; SET search_path = app; ROLLBACK TO s; SELECT * FROM customers",
    "BEGIN; SAVEPOINT s; SET search_path = app; ROLLBACK TO s; SET search_path = public; COMMIT; SELECT * FROM customers",
    "SET LOCAL search_path = public; SELECT * FROM customers",
    "SET search_path = public; COMMIT; SELECT * FROM customers",
    "SET search_path = public; COMMIT; SET search_path = app; ROLLBACK; SELECT * FROM customers",
    "SET search_path = public; BEGIN; COMMIT; SELECT * FROM customers",
    "SELECT 1; BEGIN; SET search_path = public; COMMIT; SELECT * FROM customers",
    // A ROLLBACK outside any block (a single statement) rolls back nothing.
    "SET search_path = public; COMMIT; ROLLBACK; SELECT * FROM customers",
];

#[test]
fn the_end_of_a_transaction_returns_the_path_the_server_returns_to() {
    let e = engine();
    let s = private(&e);
    for sql in BACK_TO_PRIVATE {
        assert_eq!(read_of_customers(&e, &s, sql), private_read(), "{sql}");
        assert_eq!(e.decide(&anyone(), &s, sql).verdict, Verdict::Deny, "{sql}");
    }
    for sql in STAYS_PUBLIC {
        assert_eq!(read_of_customers(&e, &s, sql), public_read(), "{sql}");
    }
}

#[test]
fn a_change_that_may_not_have_happened_leaves_both_paths_after_the_end() {
    let e = engine();
    let s = private(&e);
    for sql in [
        // set_config where it may not run: what COMMIT keeps is uncertain.
        "BEGIN; SELECT set_config('search_path', 'public', false) FROM orders; COMMIT; SELECT * FROM customers",
        "BEGIN; EXPLAIN SELECT set_config('search_path', 'public', false); COMMIT; SELECT * FROM customers",
        // An is_local the engine cannot read: local or not.
        "BEGIN; SELECT set_config('search_path', 'public', now() IS NULL); COMMIT; SELECT * FROM customers",
        "BEGIN; SELECT set_config('search_path', 'public', NULL); COMMIT; SELECT * FROM customers",
        // A savepoint the engine does not know of (the server refuses it).
        "BEGIN; SET search_path = public; ROLLBACK TO nosuch; SELECT * FROM customers",
    ] {
        assert_eq!(read_of_customers(&e, &s, sql), both_read(), "{sql}");
    }
    // The unreadable is_local still moves the path now.
    let sql = "BEGIN; SELECT set_config('search_path', 'public', now() IS NULL); SELECT * FROM customers";
    assert_eq!(read_of_customers(&e, &s, sql), public_read());
}

/// (strings applied one after the other, then the string decided, and what
/// its read of customers is).
type Across = (&'static [&'static str], &'static str, fn() -> (Vec<String>, Verdict));

const ACROSS: &[Across] = &[
    // The gateway applied `BEGIN; SET LOCAL`: the path is public until the
    // transaction ends.
    (&["BEGIN; SET LOCAL search_path = public"], "SELECT * FROM customers", public_read),
    (&["BEGIN; SET LOCAL search_path = public"], "COMMIT; SELECT * FROM customers", private_read),
    (&["BEGIN; SET LOCAL search_path = public"], "END; SELECT * FROM customers", private_read),
    (&["BEGIN; SET LOCAL search_path = public"], "ROLLBACK; SELECT * FROM customers", private_read),
    (&["BEGIN; SET LOCAL search_path = public"], "PREPARE TRANSACTION 'x'; SELECT * FROM customers", private_read),
    (&["BEGIN; SET LOCAL search_path = public"], "COMMIT AND CHAIN; SELECT * FROM customers", private_read),
    (&["BEGIN", "SET LOCAL search_path = public", "SELECT 1"], "COMMIT; SELECT * FROM customers", private_read),
    (&["BEGIN; SET search_path = public"], "ROLLBACK; SELECT * FROM customers", private_read),
    (&["BEGIN; SET search_path = public"], "ABORT; SELECT * FROM customers", private_read),
    (&["BEGIN; SET search_path = public"], "ROLLBACK AND CHAIN; SELECT * FROM customers", private_read),
    (&["BEGIN"], "SET search_path = public; ROLLBACK; SELECT * FROM customers", private_read),
    (&["BEGIN", "SET search_path = public"], "ROLLBACK; SELECT * FROM customers", private_read),
    (&["BEGIN; SAVEPOINT s; SET search_path = public"], "ROLLBACK TO s; SELECT * FROM customers", private_read),
    (&["BEGIN; SAVEPOINT s", "SET search_path = public"], "ROLLBACK TO s; SELECT * FROM customers", private_read),
    (
        &["BEGIN; SAVEPOINT a", "SET search_path = public; SAVEPOINT b", "RELEASE b"],
        "ROLLBACK TO a; SELECT * FROM customers",
        private_read,
    ),
    (&["BEGIN; SAVEPOINT s; SET search_path = public; RELEASE s"], "ROLLBACK; SELECT * FROM customers", private_read),
    // A BEGIN in a string makes its implicit block a regular one that
    // began with the string: ROLLBACK returns to the string's start.
    (&["SET search_path = public; BEGIN"], "ROLLBACK; SELECT * FROM customers", private_read),
    (&["SET LOCAL search_path = public; BEGIN"], "COMMIT; SELECT * FROM customers", private_read),
    // A SET LOCAL in a string's implicit block ended with the string.
    (&["SET LOCAL search_path = public; SELECT 1"], "SELECT * FROM customers", private_read),
    (&["SET search_path = public; SET LOCAL search_path = app"], "SELECT * FROM customers", public_read),
    (&["SET search_path = public; ROLLBACK"], "SELECT * FROM customers", private_read),
    // What the end keeps.
    (&["BEGIN; SET search_path = public"], "SELECT 1; COMMIT; SELECT * FROM customers", public_read),
    (&["BEGIN; SET search_path = public"], "SELECT * FROM customers; COMMIT", public_read),
    (
        &["BEGIN; SET search_path = public; SAVEPOINT s", "SET search_path = app"],
        "ROLLBACK TO s; SELECT * FROM customers",
        public_read,
    ),
    (&["BEGIN; SET search_path = public; COMMIT AND CHAIN"], "ROLLBACK; SELECT * FROM customers", public_read),
    (&["BEGIN; SET search_path = public; COMMIT"], "SELECT * FROM customers", public_read),
    (&["BEGIN; SET search_path = public", "SELECT 1; COMMIT"], "SELECT * FROM customers", public_read),
    // A transaction an earlier string left open may have failed since
    // (the server then turns COMMIT into ROLLBACK): nothing before the
    // COMMIT in this string shows it had not, so both paths count.
    (&["BEGIN; SET search_path = public"], "COMMIT; SELECT * FROM customers", both_read),
    (&["BEGIN; SET search_path = public"], "END; SELECT * FROM customers", both_read),
    (&["BEGIN; SET search_path = public", "COMMIT"], "SELECT * FROM customers", both_read),
    // A set_config that may not have run: both, until the end returns to
    // a path the transaction was sure of.
    (
        &["BEGIN; SELECT CASE WHEN false THEN set_config('search_path', 'public', false) END"],
        "SELECT 1; COMMIT; SELECT * FROM customers",
        both_read,
    ),
    (
        &["BEGIN; SELECT CASE WHEN false THEN set_config('search_path', 'public', false) END"],
        "ROLLBACK; SELECT * FROM customers",
        private_read,
    ),
    (&["BEGIN; SET search_path = public"], "ROLLBACK TO nosuch; SELECT * FROM customers", both_read),
    // Outside a block the session knows of, it cannot see where a single
    // SET LOCAL's transaction ends (the string's end, or a Sync).
    (&["SET LOCAL search_path = public"], "SELECT * FROM customers", both_read),
];

#[test]
fn a_transaction_left_open_by_one_string_ends_in_a_later_one() {
    let e = engine();
    for (before, sql, want) in ACROSS {
        let mut s = private(&e);
        for earlier in *before {
            run(&e, &mut s, earlier);
        }
        assert_eq!(read_of_customers(&e, &s, sql), want(), "{before:?} then {sql}");
    }
}

#[test]
fn the_session_keeps_the_transaction_s_paths() {
    let e = engine();
    let mut s = private(&e);
    run(&e, &mut s, "BEGIN; SET LOCAL search_path = public");
    assert_eq!(s.search_path, ["public"]);
    let t = s.transaction.clone().unwrap();
    assert_eq!(
        (t.start.as_slice(), t.commit.as_slice(), t.implicit),
        (&["private".to_string()][..], &["private".to_string()][..], false)
    );
    run(&e, &mut s, "SET search_path = app; SAVEPOINT a; SET LOCAL search_path = x; SAVEPOINT a");
    let t = s.transaction.clone().unwrap();
    assert_eq!(t.commit, ["app"]);
    let points: Vec<_> =
        t.savepoints.iter().map(|p| (p.name.as_str(), p.search_path.clone(), p.commit.clone())).collect();
    assert_eq!(
        points,
        [
            ("a", vec!["app".to_string()], vec!["app".to_string()]),
            ("a", vec!["x".to_string()], vec!["app".to_string()])
        ]
    );
    assert_eq!(t.seen, ["private", "public", "app", "x"]);
    run(&e, &mut s, "RELEASE a");
    assert_eq!(s.transaction.as_ref().unwrap().savepoints.len(), 1);
    assert_eq!(s.search_path, ["x"]);
    run(&e, &mut s, "ROLLBACK TO a");
    assert_eq!(s.search_path, ["app"]);
    assert_eq!(s.transaction.as_ref().unwrap().savepoints.len(), 1, "ROLLBACK TO keeps the savepoint");
    run(&e, &mut s, "SELECT 1; COMMIT");
    assert_eq!((s.search_path.as_slice(), s.transaction.is_none()), (&["app".to_string()][..], true));
    // A string's implicit block does not outlive it.
    run(&e, &mut s, "SET LOCAL search_path = public; SELECT 1");
    assert_eq!((s.search_path.as_slice(), s.transaction.is_none()), (&["app".to_string()][..], true));
    // BEGIN in an open block does nothing.
    run(&e, &mut s, "BEGIN; SET search_path = public; BEGIN");
    assert_eq!(s.transaction.as_ref().unwrap().start, ["app"]);
    run(&e, &mut s, "ROLLBACK");
    assert_eq!(s.search_path, ["app"]);
    // Ends with no block do nothing; nor do savepoints outside one.
    for sql in ["COMMIT", "ROLLBACK", "SAVEPOINT a", "ROLLBACK TO a", "RELEASE a", "END"] {
        run(&e, &mut s, sql);
        assert_eq!((s.search_path.as_slice(), &s.transaction), (&["app".to_string()][..], &None), "{sql}");
    }
}

#[test]
fn transaction_statements_have_effects_that_a_decision_s_json_does_not_list() {
    let e = engine();
    let s = private(&e);
    let effects = |sql: &str| -> Vec<Vec<SessionEffect>> {
        e.analyze(&s, sql).statements.into_iter().map(|f| f.session_effects).collect()
    };
    let set = |path: &str, local| SessionEffect::SetSearchPath { path: vec![path.into()], local, uncertain: false };
    assert_eq!(
        effects(
            "BEGIN; SAVEPOINT \"A\"; RELEASE a; ROLLBACK TO SAVEPOINT b; COMMIT AND CHAIN; ROLLBACK AND CHAIN; END"
        ),
        [
            vec![SessionEffect::Begin { implicit: false }],
            vec![SessionEffect::Savepoint { name: "A".into() }],
            vec![SessionEffect::Release { name: "a".into() }],
            vec![SessionEffect::RollbackTo { name: "b".into() }],
            vec![SessionEffect::Commit { chain: true, may_have_failed: false }],
            vec![SessionEffect::Rollback { chain: true }],
            vec![SessionEffect::Commit { chain: false, may_have_failed: false }],
        ]
    );
    assert_eq!(effects("COMMIT"), [vec![SessionEffect::Commit { chain: false, may_have_failed: true }]]);
    assert_eq!(
        effects("PREPARE TRANSACTION 'x'; COMMIT PREPARED 'x'; ROLLBACK PREPARED 'y'"),
        [vec![SessionEffect::Commit { chain: false, may_have_failed: true }], vec![], vec![]]
    );
    // The implicit block is marked only where applying the effects needs
    // it: a SET LOCAL in it, or a path change it does not commit.
    assert_eq!(
        effects("SET LOCAL search_path = public; SELECT 1"),
        [
            vec![SessionEffect::Begin { implicit: true }, set("public", true)],
            vec![SessionEffect::EndImplicitTransaction]
        ]
    );
    assert_eq!(effects("SET search_path = public; SELECT 1"), [vec![set("public", false)], vec![]]);
    assert_eq!(
        effects("SELECT 1; SET search_path = public; ROLLBACK; SET LOCAL search_path = app"),
        [
            vec![SessionEffect::Begin { implicit: true }],
            vec![set("public", false)],
            vec![SessionEffect::Rollback { chain: false }],
            vec![SessionEffect::Begin { implicit: true }, set("app", true), SessionEffect::EndImplicitTransaction],
        ]
    );
    assert_eq!(effects("SET LOCAL search_path = public"), [vec![set("public", true)]]);
    assert_eq!(
        effects("BEGIN; SET LOCAL search_path TO DEFAULT"),
        [vec![SessionEffect::Begin { implicit: false }], vec![SessionEffect::ResetSearchPathLocal]]
    );
    // The JSON lists the changes to the path, as before.
    let d = e.decide(&anyone(), &s, "BEGIN; SET LOCAL search_path TO DEFAULT; SAVEPOINT a; ROLLBACK TO a; COMMIT");
    let json = d.to_json();
    assert!(json.contains(r#""session_effects":[{"effect":"reset_search_path"}]"#), "{json}");
    assert_eq!(json.matches("session_effects").count(), 1, "{json}");
    let d = e.decide(&anyone(), &s, "SET LOCAL search_path = public; SELECT 1");
    let json = d.to_json();
    assert!(
        json.contains(r#""session_effects":[{"effect":"set_search_path","path":["public"],"local":true}]"#),
        "{json}"
    );
    assert_eq!(json.matches("session_effects").count(), 1, "{json}");
    assert!(!json.contains("uncertain") && !json.contains("implicit"), "{json}");
}

#[test]
fn the_cache_keys_on_the_transaction() {
    let e = engine();
    // The same search_path, reset value and text; one session is in a
    // transaction that began on `public`.
    let plain = private(&e);
    let mut in_transaction = private(&e);
    run(&e, &mut in_transaction, "SET search_path = public");
    run(&e, &mut in_transaction, "BEGIN; SET LOCAL search_path = private");
    assert_eq!(plain.search_path, in_transaction.search_path);
    assert_eq!(plain.reset_search_path, in_transaction.reset_search_path);
    assert_ne!(plain.transaction, in_transaction.transaction);
    let sql = "ROLLBACK; SELECT * FROM customers";
    for _ in 0..3 {
        assert_eq!(read_of_customers(&e, &plain, sql), private_read());
        assert_eq!(read_of_customers(&e, &in_transaction, sql), public_read());
    }
    // Savepoints are part of it too.
    let mut one = private(&e);
    run(&e, &mut one, "BEGIN; SET search_path = public; SAVEPOINT s; SET search_path = private");
    let mut other = private(&e);
    run(&e, &mut other, "BEGIN; SAVEPOINT s; SET search_path = public; SET search_path = private");
    assert_eq!(
        (&one.search_path, &one.transaction.as_ref().unwrap().commit),
        (&other.search_path, &other.transaction.as_ref().unwrap().commit)
    );
    let sql = "ROLLBACK TO s; SELECT * FROM customers";
    for _ in 0..3 {
        assert_eq!(read_of_customers(&e, &one, sql), public_read());
        assert_eq!(read_of_customers(&e, &other, sql), private_read());
    }
    assert!(e.cache_stats().hits >= 4, "{:?}", e.cache_stats());
}

/// A copy of a session made into another's memory (`clone_from`, as the
/// gateway keeps one to restore should a batch not run) is the session,
/// whatever state either was in: in a block or not, with savepoints,
/// prepared statements and paths of other lengths.
#[test]
fn a_session_copied_into_another_is_the_session() {
    let e = engine();
    let scripts = [
        "",
        "SET search_path = app, public, private",
        "BEGIN",
        "BEGIN; SET search_path = app; SAVEPOINT s; SET LOCAL search_path = public",
        "BEGIN; SAVEPOINT a; SAVEPOINT b; SET search_path = x, y",
        "PREPARE q AS SELECT 1; SET search_path = z",
        "BEGIN; PREPARE r AS SELECT 2; SAVEPOINT s",
    ];
    let sessions: Vec<Session> = scripts
        .iter()
        .map(|sql| {
            let mut s = private(&e);
            run(&e, &mut s, sql);
            s
        })
        .chain([Session { user: Some("app_owner".into()), standard_conforming_strings: false, ..private(&e) }])
        .collect();
    for (i, source) in sessions.iter().enumerate() {
        for (j, target) in sessions.iter().enumerate() {
            let mut copy = target.clone();
            copy.clone_from(source);
            assert_eq!(&copy, source, "session {j} copied over with session {i}");
        }
        assert_eq!(&source.clone(), source, "session {i} cloned");
    }
    // The scripts made sessions that differ where a copy could go wrong.
    assert!(sessions.iter().filter(|s| s.transaction.is_some()).count() >= 3);
    assert!(sessions.iter().any(|s| !s.prepared.is_empty()));
    assert!(sessions.iter().any(|s| s.transaction.as_ref().is_some_and(|t| t.savepoints.len() == 2)));
}
