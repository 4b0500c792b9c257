//! `RowMasker::mask_row` on a 10-column row: no masked column (the common
//! case, which must cost next to nothing and allocate nothing) and one
//! masked column.
//!
//! Run: `cargo bench -p portcullis-benches --bench mask`.
#![allow(missing_docs)]

use std::borrow::Cow;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use policy_core::{ColumnInfo, Engine, Identity, Policy};

const POLICY: &str = include_str!("../../examples/policy.toml");

fn bench(c: &mut Criterion) {
    let engine = match Policy::from_toml_str(POLICY, "examples/policy.toml").map(|p| Engine::new(p, Default::default()))
    {
        Ok(Ok(e)) => e,
        _ => return,
    };
    let session = engine.new_session();
    let who = Identity::new("bench").with_groups(["developers"]);
    let names = ["id", "customer_id", "total", "status", "created_at", "note", "ref", "channel", "currency", "ssn"];
    let sql = format!("SELECT {} FROM customers", names.join(", "));
    let analysis = engine.analyze(&session, &sql);
    let Some(facts) = analysis.statements.first() else { return };
    let values: Vec<Vec<u8>> = (0..10).map(|i| format!("value-{i}-123-45-6789").into_bytes()).collect();

    // The same shape from a table no mask covers.
    let clean: Vec<ColumnInfo> =
        names.iter().map(|n| ColumnInfo::text(n, Some(&format!("public.orders.{n}_copy")))).collect();
    let noop = engine.masker(&who, facts, &clean);
    assert!(noop.is_noop());
    let one: Vec<ColumnInfo> =
        names.iter().map(|n| ColumnInfo::text(n, Some(&format!("public.customers.{n}")))).collect();
    let masker = engine.masker(&who, facts, &one);
    assert_eq!(masker.mask_of(9), Some("ssn"));

    let mut group = c.benchmark_group("mask_row_10_columns");
    let mut row: Vec<Option<Cow<'_, [u8]>>> = values.iter().map(|v| Some(Cow::Borrowed(v.as_slice()))).collect();
    group.bench_function("no_masked_column", |b| b.iter(|| noop.mask_row(black_box(&mut row))));
    group.bench_function("one_masked_column", |b| {
        b.iter(|| {
            let mut row: Vec<Option<Cow<'_, [u8]>>> =
                values.iter().map(|v| Some(Cow::Borrowed(v.as_slice()))).collect();
            masker.mask_row(black_box(&mut row));
            row
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
