//! Criterion benchmarks of the Portcullis engine (see `benches/README.md`).
#![allow(missing_docs)]
//! `decide` against PostgreSQL's parser alone, on the same texts.
//!
//! Run: `cargo bench -p portcullis-benches --bench decide`.
//! Each group measures, side by side in one run: `pg_query::parse` alone,
//! `Engine::decide` with the cache off (parse + analysis + rules),
//! `Engine::decide` served from the cache, and `Engine::decide` of texts
//! that differ from each other in a constant (the cache serves them by
//! shape: one scan, no parse).

use std::fmt::Write as _;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use policy_core::{Engine, EngineOptions, Identity, Policy, Verdict};

const POLICY: &str = include_str!("../../examples/policy.toml");

/// A 90-byte OLTP point query.
const OLTP: &str = "SELECT id, customer_id, total, status FROM orders WHERE id = 42 AND customer_id = 7 LIMIT 1";

/// A ~2 KB analytic query with CTEs, joins, window functions and a subquery.
const ANALYTIC: &str = r#"
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.total, o.status, o.created_at,
           row_number() OVER (PARTITION BY o.customer_id ORDER BY o.created_at DESC) AS rn
    FROM orders o
    WHERE o.created_at >= now() - interval '90 days'
      AND o.status IN ('paid', 'shipped', 'delivered')
),
customer_totals AS (
    SELECT r.customer_id, count(*) AS order_count, sum(r.total) AS revenue,
           avg(r.total) AS avg_order, max(r.created_at) AS last_order
    FROM recent_orders r
    GROUP BY r.customer_id
    HAVING count(*) > 2
),
top_items AS (
    SELECT oi.order_id, oi.product_id, oi.quantity * oi.unit_price AS line_total,
           rank() OVER (PARTITION BY oi.order_id ORDER BY oi.quantity * oi.unit_price DESC) AS item_rank
    FROM order_items oi
    JOIN recent_orders ro ON ro.id = oi.order_id
)
SELECT c.id, c.name, c.country, ct.order_count, ct.revenue, ct.avg_order, ct.last_order,
       coalesce(sum(ti.line_total) FILTER (WHERE ti.item_rank = 1), 0) AS best_item_revenue,
       CASE WHEN ct.revenue > 10000 THEN 'gold'
            WHEN ct.revenue > 1000 THEN 'silver'
            ELSE 'bronze' END AS tier,
       (SELECT count(*) FROM orders o2 WHERE o2.customer_id = c.id AND o2.status = 'returned') AS returns
FROM customers c
JOIN customer_totals ct ON ct.customer_id = c.id
LEFT JOIN recent_orders ro ON ro.customer_id = c.id AND ro.rn = 1
LEFT JOIN top_items ti ON ti.order_id = ro.id
WHERE c.country = ANY (ARRAY['DE', 'FR', 'NL', 'BE', 'AT'])
  AND c.created_at < now() - interval '30 days'
  AND NOT EXISTS (SELECT 1 FROM order_items x WHERE x.order_id = ro.id AND x.quantity < 0)
GROUP BY c.id, c.name, c.country, ct.order_count, ct.revenue, ct.avg_order, ct.last_order
ORDER BY ct.revenue DESC, c.id
LIMIT 100 OFFSET 0
"#;

/// Five statements in one string.
const MULTI: &str = "BEGIN; UPDATE orders SET status = 'paid' WHERE id = 42; \
INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (42, 7, 1, 9.99); \
SELECT id, total FROM orders WHERE id = 42; COMMIT";

fn bench(c: &mut Criterion) {
    let policy = match Policy::from_toml_str(POLICY, "examples/policy.toml") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let uncached = match Engine::with_options(policy.clone(), Default::default(), EngineOptions { cache_bytes: 0 }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let cached = match Engine::new(policy, Default::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let who = Identity::new("bench").with_groups(["developers"]);
    let session = cached.new_session();

    for (name, sql) in [("oltp_90b", OLTP), ("analytic_2kb", ANALYTIC), ("five_statements", MULTI)] {
        // The benchmark is also a correctness check.
        assert_eq!(uncached.decide(&who, &session, sql).verdict, Verdict::Allow, "{name}");
        let mut group = c.benchmark_group(name);
        group.bench_function("pg_query_parse", |b| {
            b.iter(|| pg_query::parse(black_box(sql), 0).map(|r| r.protobuf.stmts.len()))
        });
        group.bench_function("decide_uncached", |b| b.iter(|| uncached.decide(&who, &session, black_box(sql))));
        group.bench_function("decide_cached", |b| b.iter(|| cached.decide(&who, &session, black_box(sql))));
        // A new constant every time (`id = 1000000`, `id = 1000001`...): the
        // text is never seen twice, its shape always is. The text is built in
        // a reused buffer (part of the measured time, well under the scan).
        let (head, tail) = match sql.split_once("= 42") {
            Some((h, t)) => (format!("{h}= "), t.to_string()),
            None => sql
                .split_once("OFFSET 0")
                .map_or((sql.to_string(), String::new()), |(h, t)| (format!("{h}OFFSET "), t.to_string())),
        };
        let mut n = 1_000_000u64;
        let mut text = String::with_capacity(sql.len() + 16);
        group.bench_function("decide_new_constants", |b| {
            b.iter(|| {
                n += 1;
                text.clear();
                let _ = write!(text, "{head}{n}{tail}");
                cached.decide(&who, &session, black_box(&text))
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
