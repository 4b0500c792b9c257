//! Rule matching (docs/policy.md §4), decisions (§6) and the decision cache.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;

use policy_core::{
    Actor, ApprovalTerms, Context, Engine, EngineOptions, Identity, Policy, Prepared, SelfApproval, Session,
    SessionEffect, Verdict,
};

fn engine(policy: &str) -> Engine {
    let p = Policy::from_toml_str(policy, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Engine::new(p, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(e: &Engine, who: &Identity, sql: &str) -> (Verdict, Option<String>) {
    let d = e.decide(who, &e.new_session(), sql);
    (d.verdict, d.rule.as_deref().map(str::to_string))
}

fn anyone() -> Identity {
    Identity::new("someone")
}

const BASE: &str = r#"
version = 1
[settings]
max_rows = 500

[[rule]]
name = "read-public"
effect = "allow"
classes = ["read"]
tables = ["public.*", "!public.secrets"]
max_rows = 100

[[rule]]
name = "read-orders-small"
effect = "allow"
classes = ["read"]
tables = ["public.orders"]
max_rows = 10

[[rule]]
name = "no-secrets"
effect = "deny"
tables = ["public.secrets"]
"#;

#[test]
fn allow_rules_need_every_table_deny_rules_any() {
    let e = engine(BASE);
    assert_eq!(verdict(&e, &anyone(), "SELECT * FROM customers").0, Verdict::Allow);
    // An allowed table never launders a forbidden one.
    assert_eq!(verdict(&e, &anyone(), "SELECT * FROM customers, private.t").0, Verdict::Deny);
    assert_eq!(
        verdict(&e, &anyone(), "SELECT * FROM customers JOIN secrets USING (id)"),
        (Verdict::Deny, Some("no-secrets".into()))
    );
}

#[test]
fn opaque_statements_touch_every_table() {
    let e = engine(BASE);
    // Deny rules with tables match an opaque statement...
    assert_eq!(verdict(&e, &anyone(), "SELECT leak()"), (Verdict::Deny, Some("no-secrets".into())));
    // ...and allow rules with tables never do.
    let e = engine("version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\ntables = [\"*\"]\n");
    assert_eq!(verdict(&e, &anyone(), "SELECT leak()"), (Verdict::Deny, None));
    // An allow rule without table or function conditions can still allow it.
    let e = engine("version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"read\"]\n");
    assert_eq!(verdict(&e, &anyone(), "SELECT leak()"), (Verdict::Allow, Some("r".into())));
}

#[test]
fn operators_starting_with_a_hash_are_built_in() {
    // `#` opens a comment in the operator list's file format; these are
    // PostgreSQL's own operators all the same.
    let e = engine(BASE);
    for sql in [
        "SELECT metadata #>> '{a,b}' FROM customers",
        "SELECT metadata #> '{a}' FROM customers",
        "SELECT metadata #- '{a}' FROM customers",
        "SELECT 5 # 3",
        "SELECT point '(0,0)' ## lseg '[(1,1),(2,2)]'",
        "SELECT # path '((0,0),(1,1))'",
        "SELECT lseg '[(0,0),(1,1)]' ?# lseg '[(0,1),(1,0)]'",
        "SELECT metadata OPERATOR(pg_catalog.#>>) '{a}' FROM customers",
    ] {
        assert_eq!(verdict(&e, &anyone(), sql), (Verdict::Allow, Some("read-public".into())), "{sql}");
        let facts = e.analyze(&e.new_session(), sql);
        assert!(!facts.statements[0].opaque, "{sql}: {:?}", facts.statements[0].notes);
    }
    // An operator PostgreSQL does not define is still somebody's function.
    for sql in ["SELECT metadata #>>> '{a}' FROM customers", "SELECT 5 #@# 3", "SELECT 1 OPERATOR(public.#) 2"] {
        assert_eq!(verdict(&e, &anyone(), sql), (Verdict::Deny, Some("no-secrets".into())), "{sql}");
        assert!(e.analyze(&e.new_session(), sql).statements[0].opaque, "{sql}");
    }
}

#[test]
fn function_conditions_follow_the_same_asymmetry() {
    let e = engine(
        r#"
version = 1
[[rule]]
name = "allow-safe"
effect = "allow"
functions = ["lower", "upper"]
[[rule]]
name = "no-sleep"
effect = "deny"
functions = ["pg_sleep"]
"#,
    );
    assert_eq!(verdict(&e, &anyone(), "SELECT lower('a'), upper('b')").0, Verdict::Allow);
    assert_eq!(verdict(&e, &anyone(), "SELECT lower('a'), now()").0, Verdict::Deny);
    assert_eq!(verdict(&e, &anyone(), "SELECT lower('a'), pg_sleep(1)"), (Verdict::Deny, Some("no-sleep".into())));
}

#[test]
fn max_rows_is_the_tightest_cap() {
    let e = engine(BASE);
    let d = e.decide(&anyone(), &e.new_session(), "SELECT * FROM orders");
    assert_eq!(d.max_rows, 10);
    let d = e.decide(&anyone(), &e.new_session(), "SELECT * FROM customers");
    assert_eq!(d.max_rows, 100);
    let d = e.decide(&anyone(), &e.new_session(), "SELECT * FROM customers; SELECT * FROM orders");
    assert_eq!(d.max_rows, 10);
    let e =
        engine("version = 1\n[settings]\nmax_rows = 5\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nmax_rows = 50\n");
    assert_eq!(e.decide(&anyone(), &e.new_session(), "SELECT 1").max_rows, 5);
}

#[test]
fn deny_beats_approval_beats_allow_whatever_the_order() {
    let rules = [
        "[[rule]]\nname = \"a\"\neffect = \"allow\"\n",
        "[[rule]]\nname = \"q\"\neffect = \"require_approval\"\ncommands = [\"DELETE\"]\napprovers = [\"dba\"]\n",
        "[[rule]]\nname = \"q2\"\neffect = \"require_approval\"\ntables = [\"public.orders\"]\napprovers = [\"leads\", \"dba\"]\n",
        "[[rule]]\nname = \"d\"\neffect = \"deny\"\nwhere_missing = true\n",
    ];
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
        let text: String =
            std::iter::once("version = 1\n".to_string()).chain(order.iter().map(|&i| rules[i].to_string())).collect();
        let e = engine(&text);
        assert_eq!(verdict(&e, &anyone(), "SELECT 1").0, Verdict::Allow);
        let d = e.decide(&anyone(), &e.new_session(), "DELETE FROM orders WHERE id = 1");
        assert_eq!(d.verdict, Verdict::RequireApproval);
        let mut approvers = d.approvers.clone();
        approvers.sort();
        assert_eq!(approvers, ["dba", "leads"], "approvers are collected from every matching approval rule");
        assert_eq!(verdict(&e, &anyone(), "DELETE FROM orders"), (Verdict::Deny, Some("d".into())));
    }
}

#[test]
fn approval_terms_are_the_strictest_of_the_matching_rules() {
    let e = engine(
        r#"
version = 1
[[rule]]
name = "a"
effect = "allow"
[[rule]]
name = "deletes"
effect = "require_approval"
commands = ["DELETE"]
approvers = ["dba"]
approvals = 2
self_approval = "delegator"
[[rule]]
name = "orders"
effect = "require_approval"
tables = ["public.orders"]
approvers = ["leads"]
justification = true
[[rule]]
name = "updates"
effect = "require_approval"
commands = ["UPDATE"]
approvers = ["dba"]
self_approval = "delegator"
"#,
    );
    let terms = |sql: &str| e.decide(&anyone(), &e.new_session(), sql).approval;
    let t = |approvals, self_approval, justification| Some(ApprovalTerms { approvals, self_approval, justification });
    assert_eq!(terms("SELECT 1"), None, "an allowed statement has no terms");
    assert_eq!(terms("DELETE FROM customers WHERE id = 1"), t(2, SelfApproval::Delegator, false));
    assert_eq!(terms("UPDATE customers SET name = 'x' WHERE id = 1"), t(1, SelfApproval::Delegator, false));
    // One statement, two rules.
    assert_eq!(terms("DELETE FROM orders WHERE id = 1"), t(2, SelfApproval::Never, true));
    // Two statements, one rule each.
    assert_eq!(
        terms("UPDATE customers SET name = 'x' WHERE id = 1; DELETE FROM customers WHERE id = 2"),
        t(2, SelfApproval::Delegator, false)
    );
    assert_eq!(
        terms("UPDATE customers SET name = 'x' WHERE id = 1; SELECT * FROM orders FOR UPDATE"),
        t(1, SelfApproval::Never, true)
    );
    let d = e.decide(&anyone(), &e.new_session(), "DELETE FROM orders WHERE id = 1");
    assert!(
        d.to_json().contains(r#""approval":{"approvals":2,"self_approval":"never","justification":true}"#),
        "{}",
        d.to_json()
    );
    assert!(!e.decide(&anyone(), &e.new_session(), "SELECT 1").to_json().contains("approval\""));
}

#[test]
fn who_conditions() {
    let e = engine(
        r#"
version = 1
[[rule]]
name = "people-delete"
effect = "allow"
groups = ["developers"]
[[rule]]
name = "agents-approve"
effect = "require_approval"
groups = ["developers"]
actors = ["copilot-*"]
commands = ["DELETE"]
approvers = ["dba"]
[[rule]]
name = "alice-only"
effect = "deny"
subjects = ["mallory"]
"#,
    );
    let alice = Identity::new("alice").with_groups(["developers"]);
    let agent = alice.clone().with_actor(Actor::new("copilot-7"));
    let other_agent = alice.clone().with_actor(Actor::new("claude"));
    let sql = "DELETE FROM t WHERE id = 1";
    assert_eq!(verdict(&e, &alice, sql).0, Verdict::Allow);
    assert_eq!(verdict(&e, &agent, sql).0, Verdict::RequireApproval);
    assert_eq!(verdict(&e, &other_agent, sql).0, Verdict::Allow);
    let by_client =
        alice.clone().with_actor(Actor { subject: None, client_id: Some("copilot-x".into()), chain: vec![] });
    assert_eq!(verdict(&e, &by_client, sql).0, Verdict::RequireApproval);
    let mallory = Identity::new("mallory").with_groups(["developers"]);
    assert_eq!(verdict(&e, &mallory, "SELECT 1").0, Verdict::Deny);
    assert_eq!(verdict(&e, &Identity::new("nobody"), "SELECT 1"), (Verdict::Deny, None));
    // Both the person and the agent are named.
    let d = e.decide(&agent, &e.new_session(), sql);
    assert_eq!((&*d.subject, d.actor.as_deref()), ("alice", Some("copilot-7")));
}

#[test]
fn commands_match_what_runs_not_the_wrapper() {
    let e = engine(
        r#"
version = 1
[[rule]]
name = "reads"
effect = "allow"
commands = ["SELECT"]
[[rule]]
name = "no-delete"
effect = "deny"
commands = ["DELETE"]
"#,
    );
    assert_eq!(verdict(&e, &anyone(), "SELECT 1").0, Verdict::Allow);
    for sql in [
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        "PREPARE p AS DELETE FROM t WHERE id = $1",
    ] {
        assert_eq!(verdict(&e, &anyone(), sql), (Verdict::Deny, Some("no-delete".into())), "{sql}");
    }
    let mut s = e.new_session();
    s.prepared.insert(
        "p".into(),
        Prepared { sql: Arc::from("DELETE FROM t WHERE id = $1"), standard_conforming_strings: true },
    );
    let d = e.decide(&anyone(), &s, "EXECUTE p(1)");
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::Deny, Some("no-delete")));
    assert_eq!(d.statements[0].facts.command, "DELETE");
}

#[test]
fn where_limit_and_pattern_conditions() {
    let e = engine(
        r#"
version = 1
[settings]
default = "allow"
[[rule]]
name = "unbounded"
effect = "deny"
where_missing = true
[[rule]]
name = "big-read"
effect = "require_approval"
limit_missing = true
[[rule]]
name = "no-pg-sleep-text"
effect = "deny"
pattern = "(?i)pg_sleep"
"#,
    );
    assert_eq!(verdict(&e, &anyone(), "UPDATE t SET a = 1").1.as_deref(), Some("unbounded"));
    assert_eq!(verdict(&e, &anyone(), "UPDATE t SET a = 1 WHERE id = 3").0, Verdict::Allow);
    assert_eq!(verdict(&e, &anyone(), "SELECT * FROM t").1.as_deref(), Some("big-read"));
    assert_eq!(verdict(&e, &anyone(), "SELECT * FROM t LIMIT 5").0, Verdict::Allow);
    assert_eq!(verdict(&e, &anyone(), "INSERT INTO t VALUES (1)").0, Verdict::Allow);
    assert_eq!(verdict(&e, &anyone(), "SELECT PG_SLEEP(1) LIMIT 1").1.as_deref(), Some("no-pg-sleep-text"));
}

#[test]
fn unreadable_text_gets_on_parse_error_and_several_statements_the_strictest() {
    let e = engine(
        "version = 1\n[settings]\ndefault = \"allow\"\non_parse_error = \"require_approval\"\n[[rule]]\nname = \"d\"\neffect = \"deny\"\ncommands = [\"DROP TABLE\"]\n",
    );
    let d = e.decide(&anyone(), &e.new_session(), "SELEC 1");
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::RequireApproval, None));
    assert!(d.reason.contains("syntax error"), "{}", d.reason);
    let d = e.decide(&anyone(), &e.new_session(), "SELECT 1; DROP TABLE t; SELECT 2");
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule.as_deref(), Some("d"));
    let per: Vec<Verdict> = d.statements.iter().map(|s| s.verdict).collect();
    assert_eq!(per, [Verdict::Allow, Verdict::Deny, Verdict::Allow]);
    let d = e.decide(&anyone(), &e.new_session(), "  -- only a comment\n");
    assert_eq!((d.verdict, d.statements.len()), (Verdict::Allow, 0));
}

#[test]
fn decisions_serialise_as_the_spec_shows() {
    let e = engine(BASE);
    let d = e.decide(&anyone(), &e.new_session(), "DROP TABLE secrets");
    let v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
    for key in ["verdict", "reason", "rule", "max_rows", "approvers", "statements"] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    let s = &v["statements"][0];
    for key in ["index", "class", "command", "tables", "functions", "opaque", "fingerprint", "verdict", "rule"] {
        assert!(s.get(key).is_some(), "{key} missing: {s}");
    }
    assert_eq!(s["class"], "ddl");
    assert_eq!(s["command"], "DROP TABLE");
    assert_eq!(s["tables"][0], "public.secrets");
    assert_eq!(v["verdict"], "deny");
}

/// An engine whose one rule lets the `agents` group read `public`, an
/// agent, and a caller with the agent's subject and no group.
fn agents_and_strangers() -> (Engine, Identity, Identity) {
    let e = engine("version = 1\n[[rule]]\nname = \"agents\"\neffect = \"allow\"\ngroups = [\"agents\"]\ntables = [\"public.*\"]\n");
    (e, Identity::new("a").with_groups(["agents"]), Identity::new("a"))
}

#[test]
fn the_cache_keys_on_every_input() {
    let (e, agent, stranger) = agents_and_strangers();
    let mut s = e.new_session();
    let sql = "SELECT * FROM orders";
    for _ in 0..3 {
        assert_eq!(e.decide(&agent, &s, sql).verdict, Verdict::Allow);
        assert_eq!(e.decide(&stranger, &s, sql).verdict, Verdict::Deny);
    }
    s.search_path = vec!["private".into()];
    assert_eq!(e.decide(&agent, &s, sql).verdict, Verdict::Deny);
    s.search_path = vec!["public".into()];
    assert_eq!(e.decide(&agent, &s, sql).verdict, Verdict::Allow);

    let tricky = r"SELECT 'a\'; SELECT * FROM private.x; --'";
    let mut off = e.new_session();
    off.standard_conforming_strings = false;
    assert_eq!(e.decide(&agent, &e.new_session(), tricky).verdict, Verdict::Deny);
    assert_eq!(e.decide(&agent, &off, tricky).verdict, Verdict::Allow);
    assert_eq!(e.decide(&agent, &e.new_session(), tricky).verdict, Verdict::Deny);

    // EXECUTE depends on the prepared statements, which change under it.
    let mut p = e.new_session();
    p.prepared
        .insert("q".into(), Prepared { sql: Arc::from("SELECT * FROM orders"), standard_conforming_strings: true });
    assert_eq!(e.decide(&agent, &p, "EXECUTE q").verdict, Verdict::Allow);
    p.prepared
        .insert("q".into(), Prepared { sql: Arc::from("SELECT * FROM private.x"), standard_conforming_strings: true });
    assert_eq!(e.decide(&agent, &p, "EXECUTE q").verdict, Verdict::Deny);
}

/// A `Context` follows every change of its session: `decide_in` answers
/// as `decide` does for the session as it is now, whether the context's
/// cache key is new, taken back from before a change, or shared with
/// another context in the same state.
#[test]
fn a_context_decides_for_its_session_as_it_is_now() {
    let (e, agent, stranger) = agents_and_strangers();
    let mut mine = Context::new(agent.clone(), e.new_session());
    let mut twin = Context::new(agent.clone(), e.new_session());
    let mut other = Context::new(stranger.clone(), e.new_session());
    let set =
        |path: &str, local: bool| SessionEffect::SetSearchPath { path: vec![path.into()], local, uncertain: false };
    // Back and forth between states: the keys of the last two states are
    // taken back, so every one of these must still be checked.
    let changes = [
        set("private", false),
        set("public", false),
        SessionEffect::Begin { implicit: false },
        set("private", true),
        SessionEffect::Rollback { chain: false },
        SessionEffect::Begin { implicit: false },
        set("private", false),
        SessionEffect::Commit { chain: false, may_have_failed: false },
        set("public", false),
        SessionEffect::Begin { implicit: false },
        SessionEffect::Commit { chain: false, may_have_failed: false },
        set("private", false),
    ];
    // Exact texts, texts whose shape a template gives (new constants), and
    // one whose answer depends on the transaction's paths alone.
    let texts = |round: usize| {
        (0..4)
            .map(move |i| format!("SELECT * FROM orders WHERE id = {}", round * 10 + i))
            .chain(["TABLE orders".to_string(), "ROLLBACK; TABLE orders".to_string()])
    };
    for (round, change) in changes.iter().enumerate() {
        for sql in texts(round) {
            for context in [&mut mine, &mut twin, &mut other] {
                let expected = e.decide(context.identity(), context.session(), &sql);
                assert_eq!(*e.decide_in(context, &sql), expected, "{sql} in {:?}", context.session());
            }
        }
        mine.session_mut().apply(change);
    }
    let stats = e.cache_stats();
    assert!(stats.hits > 0 && stats.shape_hits > 0, "{stats:?}");
    // The last state denies the agent.
    assert_eq!(e.decide_in(&mut mine, "TABLE orders").verdict, Verdict::Deny);
    assert_eq!(e.decide_in(&mut twin, "TABLE orders").verdict, Verdict::Allow);
    // A transaction begun in `private` and moved to `public`: a ROLLBACK
    // returns to `private`, which only the transaction's paths tell.
    let mut moved = Context::new(agent.clone(), e.new_session());
    for effect in [set("private", false), SessionEffect::Begin { implicit: false }, set("public", false)] {
        moved.session_mut().apply(&effect);
    }
    for _ in 0..3 {
        assert_eq!(e.decide_in(&mut moved, "TABLE orders").verdict, Verdict::Allow);
        assert_eq!(e.decide_in(&mut moved, "ROLLBACK; TABLE orders").verdict, Verdict::Deny);
        assert_eq!(e.decide_in(&mut twin, "ROLLBACK; TABLE orders").verdict, Verdict::Allow);
    }
}

/// A context answers the texts of the shapes it was answered for lately
/// by itself, exactly as the shared cache would: the same decision, spans
/// in the text at hand, and never for a text that only looks alike (other
/// digits in a name, a constant too large for an integer, another state).
#[test]
fn a_context_answers_its_recent_shapes_as_the_cache_does() {
    let e = engine(
        "version = 1\n[[rule]]\nname = \"t1\"\neffect = \"allow\"\ntables = [\"public.t1\", \"public.orders\"]\n",
    );
    let who = anyone();
    let mut context = Context::new(who.clone(), e.new_session());
    let texts = |n: u64| {
        [
            format!("SELECT * FROM t1 WHERE id = {n}"),
            format!("SELECT * FROM t2 WHERE id = {n}"),
            format!("SELECT * FROM t1 WHERE id = {}", n * 1_000_003 + 3_000_000_000),
            format!("SELECT * FROM orders WHERE id = {n}; SELECT * FROM t1 WHERE id = {}", n * 7),
            format!("UPDATE t1 SET a = a + {n} WHERE id = {}", n + 5),
        ]
    };
    let begin = SessionEffect::Begin { implicit: false };
    let to_private = SessionEffect::SetSearchPath { path: vec!["private".into()], local: true, uncertain: false };
    let commit = SessionEffect::Commit { chain: false, may_have_failed: false };
    for n in 1..200u64 {
        // Another state now and then: a transaction that moves the path.
        match n % 50 {
            10 => context.session_mut().apply(&begin),
            20 => context.session_mut().apply(&to_private),
            30 => context.session_mut().apply(&commit),
            _ => {}
        }
        for sql in texts(n * 37 % 100_000) {
            let expected = e.decide(context.identity(), context.session(), &sql);
            assert_eq!(*e.decide_in(&mut context, &sql), expected, "{sql} in {:?}", context.session());
        }
    }
    // The verdicts themselves, in the starting state.
    let mut fresh = Context::new(who, e.new_session());
    for sql in texts(4_242) {
        e.decide_in(&mut fresh, &sql);
    }
    let verdicts: Vec<_> = texts(77).iter().map(|sql| e.decide_in(&mut fresh, sql).verdict).collect();
    assert_eq!(verdicts, [Verdict::Allow, Verdict::Deny, Verdict::Allow, Verdict::Allow, Verdict::Allow]);
}

/// A context answers the texts without digits it was answered for lately
/// (`BEGIN`, `COMMIT`, statements without constants) by itself, exactly as
/// the shared cache would, and only in the state they were answered for;
/// its answers reach the cache's statistics in batches.
#[test]
fn a_context_answers_its_recent_texts_as_the_cache_does() {
    let (e, agent, _) = agents_and_strangers();
    let mut context = Context::new(agent.clone(), e.new_session());
    let texts = ["BEGIN", "TABLE orders", "SELECT count(*) FROM orders", "TABLE private.x", "COMMIT"];
    // The cache keeps a text from its second sighting and answers the
    // third; the context remembers that answer.
    for _ in 0..3 {
        for sql in texts {
            e.decide_in(&mut context, sql);
        }
    }
    let before = e.cache_stats().hits;
    for _ in 0..16 {
        for sql in texts {
            let expected = e.decide(context.identity(), context.session(), sql);
            assert_eq!(*e.decide_in(&mut context, sql), expected, "{sql}");
        }
    }
    // 80 texts through `decide` (each a shared hit) and 80 through
    // `decide_in` (answered by the context: 64 of them counted so far).
    assert_eq!(e.cache_stats().hits - before, 80 + 64, "{:?}", e.cache_stats());
    // Another state: the same texts are decided for it, not recalled.
    let to_private = SessionEffect::SetSearchPath { path: vec!["private".into()], local: false, uncertain: false };
    context.session_mut().apply(&to_private);
    for _ in 0..4 {
        assert_eq!(e.decide_in(&mut context, "TABLE orders").verdict, Verdict::Deny);
        assert_eq!(e.decide_in(&mut context, "TABLE private.x").verdict, Verdict::Deny);
    }
    let to_public = SessionEffect::SetSearchPath { path: vec!["public".into()], local: false, uncertain: false };
    context.session_mut().apply(&to_public);
    assert_eq!(e.decide_in(&mut context, "TABLE orders").verdict, Verdict::Allow);
    // A text of the same length, or that differs by a byte, is not the one
    // remembered.
    assert_eq!(e.decide_in(&mut context, "TABLE priv.x").verdict, Verdict::Deny);
    assert_eq!(e.decide_in(&mut context, "TABLE orders_").verdict, Verdict::Allow);
    assert_eq!(e.decide_in(&mut context, "TABLE ordersx; TABLE private.x").verdict, Verdict::Deny);
}

/// Texts a context answers by itself skip the shared cache: they reach its
/// statistics in batches, not one by one.
#[test]
fn a_context_counts_its_own_answers_in_batches() {
    let e = engine("version = 1\n[settings]\ndefault = \"allow\"\n");
    let mut context = Context::new(anyone(), e.new_session());
    let text = |n: u32| format!("SELECT * FROM accounts WHERE aid = {n}");
    // The shape's first two texts (the second makes the template and the
    // shape's entry), and one answered by the shared cache for the shape,
    // which the context then remembers.
    for n in 11..=13 {
        e.decide_in(&mut context, &text(n));
    }
    let before = e.cache_stats().shape_hits;
    // Constants of the same length: the same spans, which the context has.
    for n in 20..83 {
        assert_eq!(*e.decide_in(&mut context, &text(n)), e.decide(&anyone(), context.session(), &text(n)));
    }
    let decided = e.cache_stats().shape_hits - before;
    // 63 texts through `decide_in` (not yet counted) and 63 through
    // `decide` (each a shared hit).
    assert_eq!(decided, 63, "{:?}", e.cache_stats());
    // A copy counts its own answers only: the 63 are counted once.
    let mut copy = context.clone();
    e.decide_in(&mut context, &text(99));
    assert_eq!(e.cache_stats().shape_hits - before, 63 + 64);
    for n in 20..83 {
        e.decide_in(&mut copy, &text(n));
    }
    assert_eq!(e.cache_stats().shape_hits - before, 63 + 64, "the copy's 63 are not counted yet");
    e.decide_in(&mut copy, &text(99));
    assert_eq!(e.cache_stats().shape_hits - before, 63 + 64 + 64);
}

/// A context answers the texts of a remembered shape whose constants
/// changed length (the statements' spans move) by itself, with the spans
/// of the text at hand.
#[test]
fn a_context_answers_texts_whose_constants_changed_length() {
    let policy = "version = 1\n[settings]\ndefault = \"allow\"\n";
    let (e, reference) = (engine(policy), engine(policy));
    let mut context = Context::new(anyone(), e.new_session());
    let text = |a: u64, b: u64| format!("UPDATE t SET x = x + {a} WHERE id = {b}; SELECT * FROM t WHERE id = {b}");
    // Three lengths of each constant, in every pairing: 9 texts, each
    // answered once by the shared cache and then remembered (a remembered
    // shape keeps the last four spans it was answered for, so the texts
    // come in groups of one length of `a`). The context's own answers
    // stay below the 64 it counts at once.
    let lengths = [7, 4_711, 99_999];
    for a in lengths {
        for b in lengths {
            e.decide_in(&mut context, &text(a, b));
        }
    }
    for a in lengths {
        for b in lengths {
            e.decide_in(&mut context, &text(a, b));
        }
        let before = e.cache_stats().shape_hits;
        for round in 0..2 {
            for b in lengths {
                // Other digits of the same lengths.
                let (a2, b2) = (a - round % 2, b - round % 2);
                let sql = text(a2, b2);
                let decision = e.decide_in(&mut context, &sql);
                assert_eq!(*decision, reference.decide(&anyone(), context.session(), &sql), "{sql}");
            }
        }
        assert_eq!(e.cache_stats().shape_hits, before, "answered by the shared cache, not by the context");
    }
}

/// `Context::apply`, which keeps a plain transaction's paths for the next
/// one, leaves the session exactly as `Session::apply` does, through every
/// kind of effect in a long pseudo-random run.
#[test]
fn a_context_applies_effects_as_the_session_does() {
    let e = engine("version = 1\n");
    let mut context = Context::new(anyone(), e.new_session().with_startup_search_path(vec!["app".into()]));
    let mut reference = context.session().clone();
    let path = |n: u64| match n % 3 {
        0 => vec!["public".to_string()],
        1 => vec!["app".to_string()],
        _ => vec!["private".to_string(), "public".to_string()],
    };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut kinds = [0usize; 10];
    for step in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (kind, a, b) = (seed % 10, (seed >> 8) % 2 == 0, (seed >> 9) % 2 == 0);
        // Transactions are opened and ended most often, as on a busy
        // connection.
        let effect = match kind {
            0..=2 => SessionEffect::Begin { implicit: a && b },
            3 => SessionEffect::Commit { chain: a && b, may_have_failed: a && !b },
            4 => SessionEffect::Rollback { chain: a && b },
            5 => SessionEffect::SetSearchPath { path: path(seed >> 12), local: a, uncertain: b && !a },
            6 => {
                if a {
                    SessionEffect::ResetSearchPath
                } else {
                    SessionEffect::ResetSearchPathLocal
                }
            }
            7 => SessionEffect::Savepoint { name: format!("s{}", (seed >> 16) % 2) },
            8 => {
                if a {
                    SessionEffect::Release { name: format!("s{}", (seed >> 16) % 2) }
                } else {
                    SessionEffect::RollbackTo { name: format!("s{}", (seed >> 16) % 2) }
                }
            }
            _ => {
                if a {
                    SessionEffect::EndImplicitTransaction
                } else {
                    SessionEffect::Commit { chain: false, may_have_failed: false }
                }
            }
        };
        kinds[kind as usize] += 1;
        context.apply(&effect);
        reference.apply(&effect);
        assert_eq!(*context.session(), reference, "step {step}: {effect:?}");
    }
    assert!(kinds.iter().all(|&n| n > 1_000), "{kinds:?}");
}

/// A context kept across a policy reload decides by the new engine.
#[test]
fn a_context_moved_to_another_engine_decides_by_that_engine() {
    let (e, agent, _) = agents_and_strangers();
    let mut context = Context::new(agent, e.new_session());
    // An exact text, and texts of one shape (the context remembers the
    // shape once the cache has answered it for it).
    let texts = |n: u32| ["TABLE orders".to_string(), format!("SELECT * FROM orders WHERE id = {n}")];
    for n in 0..6 {
        for sql in texts(n) {
            assert_eq!(e.decide_in(&mut context, &sql).verdict, Verdict::Allow, "{sql}");
        }
    }
    let stricter = engine("version = 1\n[[rule]]\nname = \"agents\"\neffect = \"deny\"\ngroups = [\"agents\"]\n");
    for n in 10..16 {
        for sql in texts(n) {
            assert_eq!(stricter.decide_in(&mut context, &sql).verdict, Verdict::Deny, "{sql}");
            assert_eq!(e.decide_in(&mut context, &sql).verdict, Verdict::Allow, "{sql}");
        }
    }
}

/// A reset returns to the session's startup search_path (what PostgreSQL
/// does), not to the policy's `settings.search_path`.
const RESETS: &[&str] = &[
    "RESET search_path; SELECT * FROM customers",
    "SET search_path TO DEFAULT; SELECT * FROM customers",
    "SET search_path = DEFAULT; SELECT * FROM customers",
    "SET SESSION search_path TO DEFAULT; SELECT * FROM customers",
    "RESET ALL; SELECT * FROM customers",
    "DISCARD ALL; SELECT * FROM customers",
    "BEGIN; SET LOCAL search_path TO DEFAULT; SELECT * FROM customers; COMMIT",
    "START TRANSACTION; SET LOCAL search_path = DEFAULT; SELECT * FROM customers; COMMIT",
    "SET search_path = public; RESET search_path; SELECT * FROM customers",
    "SET search_path = public; SET search_path TO DEFAULT; SELECT * FROM customers",
    "SET LOCAL search_path = public; RESET search_path; SELECT * FROM customers",
    "SELECT set_config('search_path', 'public', false); RESET search_path; SELECT * FROM customers",
    "SET search_path = public; RESET ALL; SELECT * FROM customers",
    "SET search_path = public; DISCARD ALL; SELECT * FROM customers",
];

/// The facts and verdict of the string's `SELECT * FROM customers`.
fn read_of_customers(e: &Engine, s: &Session, sql: &str) -> (Vec<String>, Verdict) {
    let d = e.decide(&anyone(), s, sql);
    let read = d.statements.iter().find(|st| st.facts.command == "SELECT" && st.facts.tables.len() == 1);
    let read = read.unwrap_or_else(|| panic!("{sql}: no read of customers in {}", d.to_json()));
    (read.facts.tables.clone(), read.verdict)
}

#[test]
fn resets_return_to_the_session_start_not_the_policy_default() {
    let e = engine(BASE);
    let private = e.new_session().with_startup_search_path(vec!["private".into()]);
    assert_eq!(private.search_path, ["private"]);
    assert_eq!(private.reset_search_path, ["private"]);
    for sql in RESETS {
        // The server reads private.customers, which no rule allows.
        assert_eq!(read_of_customers(&e, &private, sql), (vec!["private.customers".into()], Verdict::Deny), "{sql}");
        assert_eq!(e.decide(&anyone(), &private, sql).verdict, Verdict::Deny, "{sql}");
        // A session started at the policy's path resets to it.
        assert_eq!(
            read_of_customers(&e, &e.new_session(), sql),
            (vec!["public.customers".into()], Verdict::Allow),
            "{sql}"
        );
    }
    // And the other way round: a policy starting in `private`, a client
    // that logged in with `public`.
    let e = engine(&BASE.replace("max_rows = 500\n", "max_rows = 500\nsearch_path = [\"private\"]\n"));
    assert_eq!(e.new_session().reset_search_path, ["private"]);
    let public = e.new_session().with_startup_search_path(vec!["public".into()]);
    for sql in RESETS {
        let sql = sql.replace("= public", "= private").replace("'public'", "'private'");
        assert_eq!(read_of_customers(&e, &public, &sql), (vec!["public.customers".into()], Verdict::Allow), "{sql}");
        assert_eq!(read_of_customers(&e, &e.new_session(), &sql).0, ["private.customers"], "{sql}");
    }
}

#[test]
fn applying_a_reset_returns_to_the_session_start() {
    let e = engine(BASE);
    let mut s = e.new_session().with_startup_search_path(vec!["private".into()]);
    for sql in ["SET search_path = app, public", "RESET search_path"] {
        for st in e.analyze(&s, sql).statements {
            for effect in &st.session_effects {
                s.apply(effect);
            }
        }
        if sql.starts_with("SET") {
            assert_eq!(s.search_path, ["app", "public"]);
            // A SET does not move the reset value.
            assert_eq!(s.reset_search_path, ["private"]);
        }
    }
    assert_eq!(s.search_path, ["private"]);
    let mut fresh = e.new_session();
    fresh.apply(&policy_core::SessionEffect::SetSearchPath { path: vec!["x".into()], local: false, uncertain: false });
    fresh.apply(&policy_core::SessionEffect::ResetSearchPath);
    assert_eq!(fresh.search_path, ["public"]);
}

#[test]
fn the_cache_keys_on_the_reset_search_path() {
    let policy = format!("{BASE}\n[[rule]]\nname = \"settings\"\neffect = \"allow\"\nclasses = [\"session\", \"transaction\", \"dcl\"]\n");
    let e = engine(&policy);
    // The same search_path now, different values to reset to.
    let from_public = e.new_session();
    let mut from_private = e.new_session().with_startup_search_path(vec!["private".into()]);
    from_private.search_path = vec!["public".into()];
    assert_eq!(from_public.search_path, from_private.search_path);
    for sql in RESETS {
        for _ in 0..3 {
            assert_eq!(e.decide(&anyone(), &from_public, sql).verdict, Verdict::Allow, "{sql}");
            assert_eq!(e.decide(&anyone(), &from_private, sql).verdict, Verdict::Deny, "{sql}");
        }
    }
    // The other order: the private session's decision is cached first.
    let e = engine(&policy);
    let sql = "RESET search_path; SELECT * FROM customers";
    decide_twice(&e, &anyone(), &from_private, sql);
    assert_eq!(decide_twice(&e, &anyone(), &from_public, sql).verdict, Verdict::Allow);
    assert_eq!(decide_twice(&e, &anyone(), &from_private, sql).verdict, Verdict::Deny);
    assert!(e.cache_stats().hits >= 2, "{:?}", e.cache_stats());
}

#[test]
fn the_cache_stays_within_its_budget() {
    let budget = 64 * 1024;
    let p = Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"\n", "t.toml").unwrap();
    let e = Engine::with_options(p, Default::default(), EngineOptions { cache_bytes: budget }).unwrap();
    let s = e.new_session();
    // Texts decided once are not cached; the second time they are.
    e.decide(&anyone(), &s, "SELECT 1");
    assert_eq!(e.cache_bytes(), 0, "a text seen once is not cached");
    for i in 0..5_000 {
        for _ in 0..2 {
            let d = e.decide(&anyone(), &s, &format!("SELECT * FROM t{i} WHERE a = {i}"));
            assert_eq!(d.verdict, Verdict::Allow);
        }
        assert!(e.cache_bytes() <= budget, "{} > {budget} after {i}", e.cache_bytes());
    }
    assert!(e.cache_bytes() > 0);
    // Shape hits keep decisions restored for texts of other lengths, and a
    // hit does not sweep: those stay within the budget too. One shape in a
    // cache whose shards hold little more than its entry.
    let shard = 1_600;
    let small = Engine::with_options(
        Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"\n", "t.toml").unwrap(),
        Default::default(),
        EngineOptions { cache_bytes: 16 * shard },
    )
    .unwrap();
    let text = |n: usize| format!("SELECT * FROM u WHERE b = '{}'", "x".repeat(n));
    for _ in 0..2 {
        small.decide(&anyone(), &s, &text(1));
    }
    let held = small.cache_bytes();
    assert!(held > 0 && held + 400 < shard, "the test needs room for one restored decision: {held}");
    for n in 2..12 {
        small.decide(&anyone(), &s, &text(n));
        assert!(small.cache_bytes() <= shard, "{} > {shard} after {n}", small.cache_bytes());
    }
    assert!(small.cache_stats().shape_hits >= 10, "{:?}", small.cache_stats());
    assert!(small.cache_bytes() > held, "a restored decision was kept");
    let off = Engine::with_options(
        Policy::from_toml_str("version = 1\n", "t.toml").unwrap(),
        Default::default(),
        EngineOptions { cache_bytes: 0 },
    )
    .unwrap();
    off.decide(&anyone(), &Session::default(), "SELECT 1");
    assert_eq!(off.cache_bytes(), 0);
}

#[test]
fn engines_are_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Engine>();
    let e = engine(BASE);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                for j in 0..200 {
                    let sql = if (i + j) % 2 == 0 { "SELECT * FROM orders" } else { "SELECT * FROM secrets" };
                    let want = if (i + j) % 2 == 0 { Verdict::Allow } else { Verdict::Deny };
                    assert_eq!(e.decide(&anyone(), &e.new_session(), sql).verdict, want);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn policy_tests_run_and_report() {
    let e = engine(
        r#"
version = 1
[[rule]]
name = "r"
effect = "allow"
classes = ["read"]
[[test]]
sql = "SELECT 1"
expect = "allow"
rule = "r"
[[test]]
sql = "DROP TABLE t"
expect = "allow"
"#,
    );
    let out = e.run_tests();
    assert_eq!(out.len(), 2);
    assert!(out[0].passed);
    assert!(!out[1].passed);
    assert_eq!(out[1].decision.verdict, Verdict::Deny);
    assert_eq!(out[1].test.location.line, 11);
}

fn uncached(policy: &str) -> Engine {
    let p = Policy::from_toml_str(policy, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Engine::with_options(p, Default::default(), EngineOptions { cache_bytes: 0 }).unwrap_or_else(|e| panic!("{e}"))
}

/// Decides `sql` twice, so the cache has taken it.
fn decide_twice(e: &Engine, who: &Identity, s: &Session, sql: &str) -> policy_core::Decision {
    e.decide(who, s, sql);
    e.decide(who, s, sql)
}

#[test]
fn texts_differing_in_constants_share_one_cache_entry() {
    let e = engine(BASE);
    let (who, s) = (anyone(), e.new_session());
    decide_twice(&e, &who, &s, "SELECT * FROM orders WHERE id = 1 AND note = 'a'");
    let held = e.cache_bytes();
    assert!(held > 0);
    for (id, note) in [(2, "bb"), (123456, ""), (7, "it''s")] {
        let sql = format!("SELECT * FROM orders WHERE id = {id} AND note = '{note}'");
        let d = e.decide(&who, &s, &sql);
        assert_eq!(d, uncached(BASE).decide(&who, &s, &sql), "{sql}");
    }
    assert_eq!(e.cache_stats().shape_hits, 3, "each new constant was answered by the shape");
    // One entry serves every constant: it keeps a few decisions restored
    // for texts of other lengths, and no more.
    let grown = e.cache_bytes();
    assert!(grown >= held && grown < 2 * held, "{held} then {grown}");
    let more = |e: &Engine| {
        for id in 0..200 {
            let sql = format!("SELECT * FROM orders WHERE id = {} AND note = '{}'", id * 7919, "x".repeat(id % 13));
            e.decide(&who, &s, &sql);
        }
    };
    more(&e);
    let full = e.cache_bytes();
    more(&e);
    assert_eq!(e.cache_bytes(), full, "one entry serves every constant");
    assert!(full < 2 * held, "{held} then {full}");
    // A text met again needs no scan either: the template gives its shape.
    decide_twice(&e, &who, &s, "SELECT * FROM orders WHERE id = 2 AND note = 'bb'");
    let before = e.cache_stats();
    e.decide(&who, &s, "SELECT * FROM orders WHERE id = 2 AND note = 'bb'");
    assert_eq!(e.cache_stats().shape_hits, before.shape_hits + 1);
    assert_eq!(e.cache_stats().scans_skipped, before.scans_skipped + 1);
    // A text whose digits are no constant has no template: it is kept as
    // itself once its shape took the scanner (the cache keeps what it is
    // offered twice: the shape, then the text).
    for _ in 0..2 {
        decide_twice(&e, &who, &s, "SELECT * FROM orders2 WHERE note = 'x'");
    }
    let before = e.cache_stats();
    e.decide(&who, &s, "SELECT * FROM orders2 WHERE note = 'x'");
    assert_eq!(e.cache_stats().hits, before.hits + 1);
    let before = e.cache_stats();
    let held = e.cache_bytes();
    // Another constant kind, a keyword or an identifier is another shape.
    for sql in [
        "SELECT * FROM orders WHERE id = '1' AND note = 'a'",
        "SELECT * FROM orders WHERE id = NULL AND note = 'a'",
        "SELECT * FROM secrets WHERE id = 1 AND note = 'a'",
    ] {
        decide_twice(&e, &who, &s, sql);
    }
    assert!(e.cache_bytes() > held);
    assert_eq!(e.cache_stats().shape_hits, before.shape_hits, "other shapes were not answered by this one");
    // A third text of the `secrets` shape is answered by that shape.
    assert_eq!(verdict(&e, &who, "SELECT * FROM secrets WHERE id = 9 AND note = 'b'").0, Verdict::Deny);
    assert_eq!(e.cache_stats().shape_hits, before.shape_hits + 1);
}

/// A decision shared by a shape has its statements' spans in the text it
/// was asked for; texts whose constants have the same lengths get the very
/// same decision (no copy per text).
#[test]
fn shared_decisions_have_the_spans_of_their_own_text() {
    let e = engine(BASE);
    let (who, s) = (anyone(), e.new_session());
    let mut context = Context::new(who.clone(), s.clone());
    let text = |a: &str, b: &str| format!("SELECT * FROM orders WHERE id = {a}; SELECT * FROM orders WHERE id = {b}");
    // Warm up: the shape, then its template.
    for (a, b) in [("1", "2"), ("3", "4"), ("5", "6"), ("7", "8")] {
        e.decide_in(&mut context, &text(a, b));
    }
    let spans_of = |sql: &str| -> Vec<std::ops::Range<usize>> {
        let second = sql.find("; ").unwrap() + 2;
        vec![0..second - 2, second..sql.len()]
    };
    let mut seen = Vec::new();
    for (a, b) in [("10", "20"), ("30", "40"), ("100", "2"), ("5", "600"), ("2147483647", "0"), ("11", "22")] {
        let sql = text(a, b);
        let d = e.decide_in(&mut context, &sql);
        let spans: Vec<_> = d.statements.iter().map(|st| st.span.clone()).collect();
        assert_eq!(spans, spans_of(&sql), "{sql}");
        for st in d.statements.iter() {
            assert!(sql[st.span.clone()].starts_with("SELECT") && !sql[st.span.clone()].ends_with(';'), "{sql}");
        }
        assert_eq!(*d, e.decide(&who, &s, &sql), "{sql}");
        seen.push((sql.len(), d));
    }
    // Same lengths, same spans: one decision; other lengths: another.
    assert!(std::sync::Arc::ptr_eq(&seen[0].1, &seen[1].1));
    assert!(std::sync::Arc::ptr_eq(&seen[0].1, &seen[5].1));
    assert!(!std::sync::Arc::ptr_eq(&seen[0].1, &seen[2].1));
    assert!(!std::sync::Arc::ptr_eq(&seen[2].1, &seen[3].1), "the same length, other spans");
}

#[test]
fn a_decision_that_read_a_constant_is_not_shared() {
    // No `pattern` rule here: a pattern reads every text it is tried on,
    // which would keep every decision out of the shape cache.
    let policy = r#"
version = 1
[settings]
default = "allow"
[[rule]]
name = "unbounded"
effect = "deny"
where_missing = true
"#;
    let (who, s) = (anyone(), engine(policy).new_session());
    // Tautologies fold constants: a bounded DELETE and its tautological
    // twin of the same shape, each seen first.
    for (bounded, unbounded) in [
        ("DELETE FROM t WHERE id + 1 = id + 2", "DELETE FROM t WHERE id + 1 = id + 1"),
        ("DELETE FROM t WHERE id = 5 OR 1 = 2", "DELETE FROM t WHERE id = 5 OR 1 = 1"),
        ("DELETE FROM t WHERE id = 5 OR 'no'::bool", "DELETE FROM t WHERE id = 5 OR 'yes'::bool"),
        ("DELETE FROM t WHERE id = 5 OR 3 IN (1, 2)", "DELETE FROM t WHERE id = 5 OR 1 IN (1, 2)"),
    ] {
        for order in [[bounded, unbounded], [unbounded, bounded]] {
            let e = engine(policy);
            for sql in order {
                let want = if sql == bounded { Verdict::Allow } else { Verdict::Deny };
                assert_eq!(decide_twice(&e, &who, &s, sql).verdict, want, "{sql} (after {order:?})");
            }
            assert_eq!(e.cache_stats().shape_hits, 0, "{order:?}");
        }
    }
    // A rule's pattern reads the text, constants included.
    let e = engine(&format!("{policy}[[rule]]\nname = \"no-magic-word\"\neffect = \"deny\"\npattern = \"xyzzy\"\n"));
    assert_eq!(decide_twice(&e, &who, &s, "SELECT * FROM t WHERE w = 'plugh'").verdict, Verdict::Allow);
    assert_eq!(decide_twice(&e, &who, &s, "SELECT * FROM t WHERE w = 'xyzzy'").verdict, Verdict::Deny);
    assert_eq!(e.cache_stats().shape_hits, 0);
    // A search_path set through set_config is read from its constant.
    let e = engine(policy);
    let sp = |path: &str| {
        let sql = format!("SELECT set_config('search_path', '{path}', false)");
        let d = decide_twice(&e, &who, &s, &sql);
        d.statements[0].facts.session_effects.clone()
    };
    assert_ne!(sp("alpha"), sp("beta"));
    assert_eq!(e.cache_stats().shape_hits, 0);
}

#[test]
fn shared_decisions_carry_their_own_text_spans() {
    let e = engine(BASE);
    let (who, s) = (anyone(), e.new_session());
    decide_twice(&e, &who, &s, "SELECT 1 FROM orders; SELECT 'x' FROM orders WHERE id = 2");
    let sql = "SELECT 12345 FROM orders; SELECT 'a longer string' FROM orders WHERE id = 2";
    let d = e.decide(&who, &s, sql);
    assert_eq!(e.cache_stats().shape_hits, 1, "answered by the shape");
    let spans: Vec<&str> = d.statements.iter().map(|st| &sql[st.span.clone()]).collect();
    assert_eq!(spans, ["SELECT 12345 FROM orders", "SELECT 'a longer string' FROM orders WHERE id = 2"]);
    assert_eq!(d, uncached(BASE).decide(&who, &s, sql));
}

/// `SET portcullis.reason` is the gateway's: recognised in the parse tree
/// whatever way PostgreSQL's grammar lets it be written, kept out of the
/// policy's rules, and refused where the gateway could not keep it apart
/// from what goes to the server.
mod gateway_settings {
    use super::*;
    use policy_core::{Decision, GatewayCommand, MAX_REASON_BYTES};

    /// Every statement is denied but what the gateway keeps.
    const DENY_ALL: &str = r#"
version = 1
[settings]
default = "deny"
[[rule]]
name = "no-settings"
effect = "deny"
classes = ["session", "admin", "transaction"]
"#;

    fn decide(sql: &str) -> Decision {
        let e = engine(DENY_ALL);
        e.decide(&anyone(), &e.new_session(), sql)
    }

    fn command(sql: &str) -> Option<GatewayCommand> {
        decide(sql).statements.first().and_then(|s| s.facts.gateway.clone())
    }

    #[test]
    fn every_spelling_of_the_setting_is_the_gateways() {
        let reason = || Some(GatewayCommand::SetReason("INC-7".to_string()));
        for sql in [
            "SET portcullis.reason = 'INC-7'",
            "set portcullis.reason to 'INC-7'",
            "SET SESSION portcullis.reason = 'INC-7'",
            "SET LOCAL portcullis.reason = 'INC-7'",
            "SET PORTCULLIS.REASON = 'INC-7'",
            "SET \"portcullis\".\"Reason\" = 'INC-7'",
            "SET \"portcullis.reason\" = 'INC-7'",
            "SET portcullis.reason = E'INC-7'",
            "SET portcullis.reason = U&'INC\\002D7'",
            "SET portcullis.reason = $$INC-7$$",
            "SET portcullis.reason = '  INC-7  '",
            "/* why */ SET portcullis.reason = 'INC-7';",
        ] {
            assert_eq!(command(sql), reason(), "{sql}");
            let d = decide(sql);
            assert_eq!(d.verdict, Verdict::Allow, "{sql}: {}", d.reason);
            assert!(d.rule.is_none(), "{sql}: no rule of the policy applies");
            assert!(!d.statements[0].facts.changes_settings, "{sql}: the server's settings stay as they are");
        }
        // No reason; each answered as spelled (the server's tag is SET or RESET).
        for (sql, clears) in [
            ("RESET portcullis.reason", GatewayCommand::ResetReason),
            ("SET portcullis.reason TO DEFAULT", GatewayCommand::SetReason(String::new())),
            ("SET portcullis.reason = ''", GatewayCommand::SetReason(String::new())),
            ("SET portcullis.reason = '   '", GatewayCommand::SetReason(String::new())),
        ] {
            assert_eq!(command(sql).as_ref().map(GatewayCommand::substitute), Some(clears.substitute()), "{sql}");
            assert_eq!(command(sql), Some(clears), "{sql}");
            assert_eq!(decide(sql).verdict, Verdict::Allow, "{sql}");
        }
    }

    #[test]
    fn what_the_gateway_cannot_take_is_refused() {
        let long = format!("SET portcullis.reason = '{}'", "x".repeat(MAX_REASON_BYTES + 1));
        for sql in [
            "SET portcullis.reasons = 'typo'",
            "SET portcullis.approver = 'me'",
            "SET portcullis.reason = 42",
            "SET portcullis.reason = 'a', 'b'",
            "SET portcullis.reason FROM CURRENT",
            long.as_str(),
        ] {
            assert!(matches!(command(sql), Some(GatewayCommand::Invalid { .. })), "{sql}");
            assert_eq!(decide(sql).verdict, Verdict::Deny, "{sql}");
        }
    }

    #[test]
    fn a_misspelt_statement_of_the_gateways_is_refused_not_held() {
        // Unparsable text would go to the server once approved (or in
        // observe mode), and the reason with it.
        let e = engine("version = 1\n[settings]\ndefault = \"allow\"\non_parse_error = \"require_approval\"");
        for sql in [
            "SET portcullis.reason = 'INC-7' junk",
            "SET portcullis.reason 'INC-7'",
            "SET \"PORTCULLIS\".reason == 'INC-7'",
            "SET \"portcullis.reason\" 'INC-7'",
            "SET U&\"portcull\\0069s\".reason 'INC-7'",
            "SELECT 1; SET PortCullis.reason = 'INC-7' junk",
        ] {
            let d = e.decide(&anyone(), &e.new_session(), sql);
            assert_eq!(d.verdict, Verdict::Deny, "{sql}: {}", d.reason);
            assert!(matches!(d.statements[0].facts.gateway, Some(GatewayCommand::Invalid { .. })), "{sql}");
        }
        // Other unparsable text is the policy's to judge.
        for sql in ["SELEC 1", "SET portcullis_reason 'x'", "SELECT 'portcullis.reason' FROM"] {
            assert_eq!(e.decide(&anyone(), &e.new_session(), sql).verdict, Verdict::RequireApproval, "{sql}");
        }
    }

    #[test]
    fn a_reason_travels_alone() {
        // The gateway answers the whole query itself: the rest of the
        // string would be lost, or the reason sent to the server.
        for sql in [
            "SET portcullis.reason = 'x'; DELETE FROM orders",
            "SELECT 1; SET portcullis.reason = 'x'",
            "BEGIN; SET portcullis.reason = 'x'; COMMIT",
        ] {
            // Under a policy that allows everything else.
            let e = engine("version = 1\n[settings]\ndefault = \"allow\"");
            let d = e.decide(&anyone(), &e.new_session(), sql);
            assert_eq!(d.verdict, Verdict::Deny, "{sql}");
            assert!(d.reason.contains("query of its own"), "{sql}: {}", d.reason);
        }
    }

    #[test]
    fn other_settings_and_look_alikes_are_the_servers() {
        let e = engine(DENY_ALL);
        for sql in [
            "SET portcullis_reason = 'x'",
            "SET search_path = 'portcullis.reason'",
            "SELECT set_config('portcullis.reason', 'x', false)",
            "ALTER ROLE app SET portcullis.reason = 'x'",
            "SHOW portcullis.reason",
        ] {
            let d = e.decide(&anyone(), &e.new_session(), sql);
            assert!(d.statements.iter().all(|s| s.facts.gateway.is_none()), "{sql}");
            assert_eq!(d.verdict, Verdict::Deny, "{sql}: the policy decides it");
        }
    }

    #[test]
    fn reasons_are_not_shared_between_texts_of_one_shape() {
        // Decisions are cached by the text's shape when no constant was
        // read: the reason is read, so each text keeps its own.
        let e = engine(DENY_ALL);
        let mut context = Context::new(Identity::new("alice"), e.new_session());
        for reason in ["first", "second", "first"] {
            let d = e.decide_in(&mut context, &format!("SET portcullis.reason = '{reason}'"));
            assert_eq!(d.statements[0].facts.gateway, Some(GatewayCommand::SetReason(reason.to_string())));
        }
    }
}
