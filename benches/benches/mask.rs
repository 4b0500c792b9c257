//! `RowMasker::mask_row` on a 10-column row of an orders-like table: no
//! masked column and no detector (the masker is a no-op), no masked column
//! with the policy's card detector scanning the six text columns (nothing
//! matches, nothing is allocated), and one masked column.
//!
//! Run: `cargo bench -p portcullis-benches --bench mask`.
#![allow(missing_docs)]

use std::borrow::Cow;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use policy_core::{ColumnInfo, Engine, Identity, Policy};

const POLICY: &str = include_str!("../../examples/policy.toml");

fn bench(c: &mut Criterion) {
    let Ok(policy) = Policy::from_toml_str(POLICY, "examples/policy.toml") else { return };
    let mut bare = policy.clone();
    bare.detectors.clear();
    let (Ok(engine), Ok(bare)) = (Engine::new(policy, Default::default()), Engine::new(bare, Default::default()))
    else {
        return;
    };
    let session = engine.new_session();
    let who = Identity::new("bench").with_groups(["developers"]);
    let names = ["id", "customer_id", "total", "status", "created_at", "note", "ref", "channel", "currency", "ssn"];
    let sql = format!("SELECT {} FROM customers", names.join(", "));
    let analysis = engine.analyze(&session, &sql);
    let Some(facts) = analysis.statements.first() else { return };
    // int4, int4, numeric, text, timestamptz, text x 5
    let types = [23, 23, 1700, 25, 1184, 25, 25, 25, 25, 25];
    let values: Vec<Vec<u8>> = [
        "1234",
        "42",
        "99.50",
        "shipped",
        "2024-01-15 10:30:00+00",
        "left at the door, ring twice",
        "ORD-2024-000123",
        "web",
        "EUR",
        "123-45-6789",
    ]
    .iter()
    .map(|v| v.as_bytes().to_vec())
    .collect();
    let columns = |table: &str, suffix: &str| -> Vec<ColumnInfo> {
        names
            .iter()
            .zip(types)
            .map(|(n, t)| ColumnInfo::new(n, Some(&format!("public.{table}.{n}{suffix}")), t, false))
            .collect()
    };

    // The same shape from a table no mask covers.
    let noop = bare.masker(&who, facts, &columns("orders", "_copy"));
    assert!(noop.is_noop());
    let scanned = engine.masker(&who, facts, &columns("orders", "_copy"));
    assert!(!scanned.is_noop() && scanned.mask_of(9).is_none());
    let masker = engine.masker(&who, facts, &columns("customers", ""));
    assert_eq!(masker.mask_of(9), Some("ssn"));

    let mut group = c.benchmark_group("mask_row_10_columns");
    let mut row: Vec<Option<Cow<'_, [u8]>>> = values.iter().map(|v| Some(Cow::Borrowed(v.as_slice()))).collect();
    group.bench_function("no_masked_column_no_detector", |b| b.iter(|| noop.mask_row(black_box(&mut row))));
    group.bench_function("no_masked_column_detector_scans", |b| {
        b.iter(|| assert_eq!(scanned.mask_row(black_box(&mut row)), 0))
    });
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
