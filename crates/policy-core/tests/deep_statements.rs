//! Deeply nested and very long statements are decided within a gateway
//! worker's stack (2 MiB, tokio's default), in debug and release builds:
//! a stack overflow aborts the whole process, so one client could take the
//! gateway down for everyone.
//!
//! Each family below nests or chains one construct `n` times. The grammar
//! accepts some of them at any length (left-deep chains build no parser
//! stack), and libpg_query refuses trees deeper than the stack it has left
//! ("stack depth limit exceeded"); pg_query's protobuf decoder (prost) then
//! refuses trees more than 100 messages deep. Whatever reaches the engine
//! must be decided without overflowing, and what is refused is a deny.
//!
//! `measure` (ignored) prints, per family, the deepest statement the parser
//! accepts and the smallest thread stack `decide` needs for it, by running
//! this test binary again in child processes (an overflow aborts the child):
//!
//! ```text
//! cargo test [--release] -p policy-core --test deep_statements -- --ignored measure --nocapture
//! ```
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::OnceLock;

use policy_core::{Class, Decision, Engine, Identity, Keys, Policy, Verdict};

/// tokio's default worker stack, the smallest a gateway thread has.
const WORKER_STACK: usize = 2 << 20;

/// One construct nested or chained `n` times.
struct Family {
    name: &'static str,
    /// The deepest `n` the parser accepts on a 2 MiB thread (pg_query
    /// 18.1); `None`: every `n` the test tries.
    deepest: Option<usize>,
    sql: fn(usize) -> String,
}

/// The depths every family is decided at (and its deepest, and one more).
const SWEEP: &[usize] = &[1, 2, 3, 4, 5, 8, 16, 32, 64, 128, 1_000, 10_000, 100_000];

fn repeat(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// `nested_recursive(n, 8)` of the lineage tests: `n` scalar subqueries,
/// each a `WITH RECURSIVE` of eight columns whose step reads the next one.
fn recursive_ctes(n: usize) -> String {
    let width = 8;
    let names: Vec<String> = (0..width).map(|j| format!("c{j}")).collect();
    let base: Vec<String> = (0..width).map(|j| if j == 0 { "id".to_string() } else { j.to_string() }).collect();
    let (mut open, mut close) = (String::new(), String::new());
    for i in (0..n).rev() {
        open += &format!(
            "SELECT (WITH RECURSIVE t{i}({}) AS (SELECT {} FROM users UNION ALL SELECT {}, c0 + (",
            names.join(", "),
            base.join(", "),
            names[1..].join(", ")
        );
    }
    for i in 0..n {
        close += &format!(") FROM t{i}) SELECT c{} FROM t{i} LIMIT 1)", width - 1);
    }
    format!("{open}SELECT 1{close}")
}

/// `(id = 1 OR (id = 0 AND true))`, ...: alternating, so that the grammar
/// cannot flatten them into one list.
fn alternating(n: usize) -> String {
    let mut e = "true".to_string();
    for i in 0..n {
        let op = if i % 2 == 0 { "AND" } else { "OR" };
        e = format!("(id = {i} {op} {e})");
    }
    e
}

/// The families: each one a test of its own and a row of `measure`.
macro_rules! families {
    ($($test:ident: $name:literal, $deepest:expr, $sql:expr;)*) => {
        const FAMILIES: &[Family] = &[$(Family { name: $name, deepest: $deepest, sql: $sql }),*];
        $(
            #[test]
            fn $test() {
                check(&Family { name: $name, deepest: $deepest, sql: $sql });
            }
        )*
    };
}

families! {
    subqueries_in_from: "subqueries in FROM", Some(22),
        |n| format!("SELECT * FROM {}users{}", repeat("(SELECT * FROM ", n), repeat(") a", n));
    parentheses: "parentheses", Some(9993), |n| format!("SELECT {}1{}", repeat("(", n), repeat(")", n));
    right_deep_sums: "right-deep sums", Some(45),
        |n| format!("SELECT {}id{} FROM users", repeat("(1 + ", n), repeat(")", n));
    left_deep_sums: "left-deep sums", Some(45), |n| format!("SELECT id{} FROM users", repeat(" + id", n));
    case: "CASE", Some(22),
        |n| format!("SELECT {}1{} FROM users", repeat("CASE WHEN id > 0 THEN ", n), repeat(" END", n));
    function_calls: "function calls", Some(45),
        |n| format!("SELECT {}name{} FROM users", repeat("lower(", n), repeat(")", n));
    with_recursive: "WITH RECURSIVE", Some(4), recursive_ctes;
    with: "WITH", Some(18),
        |n| format!("{}SELECT * FROM users{}", repeat("WITH w AS (", n), repeat(") SELECT * FROM w", n));
    scalar_subqueries: "scalar subqueries", Some(15), |n| format!("SELECT {}1{}", repeat("(SELECT ", n), repeat(")", n));
    in_subqueries: "IN subqueries", Some(22), |n| {
        format!("SELECT id FROM users WHERE id IN {}(1){}", repeat("(SELECT id FROM users WHERE id IN ", n), repeat(")", n))
    };
    arrays: "arrays", Some(46), |n| format!("SELECT {}1{}", repeat("ARRAY[", n), repeat("]", n));
    union_all: "UNION ALL", Some(91),
        |n| format!("SELECT id FROM users{}", repeat(" UNION ALL SELECT id FROM users", n));
    right_nested_union: "right-nested UNION", Some(92),
        |n| format!("SELECT 1{}{}", repeat(" UNION (SELECT 1", n), repeat(")", n));
    and: "AND", None, |n| format!("SELECT id FROM users WHERE id = 1{}", repeat(" AND id = 1", n));
    or: "OR", None, |n| format!("SELECT id FROM users WHERE id = 1{}", repeat(" OR id = 1", n));
    and_or_nested: "AND/OR nested", Some(45), |n| format!("SELECT id FROM users WHERE {}", alternating(n));
    json_operators: "JSON operators", Some(45), |n| format!("SELECT doc{} FROM users", repeat(" -> 'a'", n));
    string_concatenation: "string concatenation", Some(45),
        |n| format!("SELECT name{} FROM users", repeat(" || 'a'", n));
    not: "NOT", Some(46), |n| format!("SELECT {}true", repeat("NOT ", n));
    unary_minus: "unary minus", Some(45), |n| format!("SELECT {}id FROM users", repeat("- ", n));
    casts: "casts", Some(45), |n| format!("SELECT id{} FROM users", repeat("::int", n));
    row_constructors: "row constructors", Some(46), |n| format!("SELECT {}1{}", repeat("ROW(", n), repeat(")", n));
    coalesce: "COALESCE", Some(45), |n| format!("SELECT {}id{} FROM users", repeat("coalesce(", n), repeat(", 1)", n));
    delete_where_nested: "DELETE WHERE nested", Some(45), |n| format!("DELETE FROM orders WHERE {}", alternating(n));
    delete_where_not: "DELETE WHERE NOT", Some(45), |n| format!("DELETE FROM orders WHERE {}id = 1", repeat("NOT ", n));
    update_set_right_deep: "UPDATE SET right-deep", Some(46),
        |n| format!("UPDATE orders SET total = {}1{} WHERE id = 1", repeat("(1 + ", n), repeat(")", n));
    insert_select_subqueries: "INSERT SELECT subqueries", Some(22), |n| {
        format!("INSERT INTO orders SELECT * FROM {}orders{}", repeat("(SELECT * FROM ", n), repeat(") a", n))
    };
    explain_subqueries: "EXPLAIN subqueries", Some(22), |n| {
        format!("EXPLAIN SELECT * FROM {}users{}", repeat("(SELECT * FROM ", n), repeat(") a", n))
    };
    prepare_execute: "PREPARE/EXECUTE", Some(44), |n| {
        format!("PREPARE p AS SELECT {}id{} FROM users; EXECUTE p", repeat("(1 + ", n), repeat(")", n))
    };
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let text = include_str!("../../../examples/policy.toml");
        let policy = Policy::from_toml_str(text, "examples/policy.toml").unwrap_or_else(|e| panic!("{e}"));
        Engine::new(policy, Keys::default()).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Decides `sql` for an agent on a fresh thread with `stack` bytes of stack.
fn decide_on(stack: usize, sql: String) -> Decision {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let e = engine();
            let agent = Identity::new("bot").with_groups(["ai-agents"]);
            e.decide(&agent, &e.new_session(), &sql)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Whether the parser accepted the statement (no statement is `unknown`).
fn parsed(d: &Decision) -> bool {
    !d.statements.is_empty() && d.statements.iter().all(|s| s.facts.class != Class::Unknown)
}

/// Decides `family` at every depth of the sweep on a worker-sized thread:
/// accepted up to its deepest, refused with a deny beyond.
fn check(family: &Family) {
    let mut depths = SWEEP.to_vec();
    if let Some(deepest) = family.deepest {
        depths.extend([deepest, deepest + 1]);
    }
    for n in depths {
        let d = decide_on(WORKER_STACK, (family.sql)(n));
        let notes: Vec<&str> = d.statements.iter().flat_map(|s| s.facts.notes.iter().map(String::as_str)).collect();
        let expected = family.deepest.is_none_or(|deepest| n <= deepest);
        assert_eq!(parsed(&d), expected, "{} at {n}: parsed? {:?} {notes:?}", family.name, d.verdict);
        if !expected {
            assert_eq!(d.verdict, Verdict::Deny, "{} at {n}: {notes:?}", family.name);
        }
    }
}

// ---------------------------------------------------------------- measure

/// Runs `decide` for one family at one depth in a child process on a
/// thread of `stack` bytes: `Some(parsed)` when it returned, `None` when
/// the child died (a stack overflow aborts it).
fn probe(family: usize, depth: usize, stack: usize) -> Option<bool> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "probe_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("DEEP_PROBE", format!("{family} {depth} {stack}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.split_once("PROBE ").map(|(_, r)| r))?;
    Some(line.starts_with("parsed"))
}

#[test]
#[ignore = "run by `measure` in a child process"]
fn probe_child() {
    let Ok(spec) = std::env::var("DEEP_PROBE") else { return };
    let v: Vec<usize> = spec.split(' ').map(|s| s.parse().unwrap()).collect();
    let d = decide_on(v[2], (FAMILIES[v[0]].sql)(v[1]));
    let reason = d.statements.first().map(|s| s.facts.notes.join("; ")).unwrap_or_default();
    println!("\nPROBE {} {:?} {}", if parsed(&d) { "parsed" } else { "refused" }, d.verdict, reason);
}

#[test]
#[ignore = "measurement: prints the deepest accepted statements and the stack they need"]
fn measure() {
    const BIG: usize = 256 << 20;
    const LIMIT: usize = 100_000;
    let only = std::env::var("DEEP_FAMILY").ok();
    for (i, family) in FAMILIES.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !family.name.contains(o)) {
            continue;
        }
        // The deepest statement the parser accepts on a worker-sized
        // thread (on a big one when a worker-sized one dies).
        let accepted = |n| probe(i, n, WORKER_STACK).or_else(|| probe(i, n, BIG)) == Some(true);
        let mut hi = 1;
        while hi < LIMIT && accepted(hi) {
            hi = (hi * 2).min(LIMIT);
        }
        let deepest = if hi == LIMIT && accepted(LIMIT) {
            LIMIT
        } else {
            let mut lo = hi / 2;
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if accepted(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        // The smallest stack `decide` needs (8 KiB steps).
        let need = |n: usize| {
            let (mut lo, mut hi) = (16usize << 10, BIG);
            if probe(i, n, hi).is_none() {
                return usize::MAX;
            }
            while hi - lo > 8 << 10 {
                let mid = (lo + hi) / 2;
                if probe(i, n, mid).is_some() {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        };
        let kib = |b: usize| if b == usize::MAX { "dies".to_string() } else { format!("{} KiB", b >> 10) };
        println!(
            "MEASURE {:<26} deepest accepted {deepest:>6}  stack needed: at it {:>9}, one deeper {:>9}, at {LIMIT} {:>9}",
            family.name,
            kib(need(deepest)),
            kib(need(deepest + 1)),
            kib(need(LIMIT))
        );
    }
}
