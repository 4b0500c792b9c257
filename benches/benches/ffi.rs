//! Criterion benchmarks of the Portcullis engine (see `benches/README.md`).
//! The C ABI's cost over the Rust API, on the same engine and inputs.
//!
//! Run: `cargo bench -p portcullis-benches --bench ffi`.
//! Side by side in one run: `Engine::decide` and `portcullis_decide` (+
//! `portcullis_decision_free`) of one cached statement; `RowMasker::mask_row`
//! and `portcullis_mask_row` of one four-column row with three masked values.
#![allow(missing_docs)]
#![allow(unsafe_code, reason = "the benchmark calls the C ABI")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, reason = "benchmark setup: a failure is a bug")]

use std::borrow::Cow;
use std::ptr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use policy_core::{Actor, ColumnInfo, Engine, Identity, Policy};
use portcullis::*;

const POLICY: &str = include_str!("../../examples/policy.toml");
const SQL: &str = "SELECT id, customer_id, total, status FROM orders WHERE id = 42 AND customer_id = 7 LIMIT 1";
const WHO: &str = r#"{"subject": "alice@example.com", "groups": ["ai-agents"], "actor": "copilot-7"}"#;
const MASKED_SQL: &str = "SELECT name, email, ssn, note FROM customers";
const COLUMNS: [&str; 4] = ["name", "email", "ssn", "note"];
const ROW: [&str; 4] = ["Alice Martin", "alice@example.com", "123-45-6789", "card on file: 4012888888881881"];

fn ok(r: portcullis_result) {
    assert_eq!(r, portcullis_result::Ok);
}

fn bench(c: &mut Criterion) {
    let engine = Engine::new(Policy::from_toml_str(POLICY, "policy.toml").unwrap(), Default::default()).unwrap();
    let agent = Identity::new("alice@example.com").with_groups(["ai-agents"]).with_actor(Actor::new("copilot-7"));
    let session = engine.new_session();

    let (mut e, mut who, mut s) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: every pointer is to live local data with its exact length.
    unsafe {
        ok(portcullis_engine_new(POLICY.as_ptr().cast(), POLICY.len(), ptr::null(), 0, ptr::null(), 0, &mut e));
        ok(portcullis_identity_new(WHO.as_ptr().cast(), WHO.len(), &mut who));
        ok(portcullis_session_new(e, &mut s));
    }

    let mut group = c.benchmark_group("ffi/decide");
    group.bench_function("rust", |b| b.iter(|| black_box(engine.decide(&agent, &session, black_box(SQL)))));
    group.bench_function("c_abi", |b| {
        b.iter(|| {
            let mut d = ptr::null_mut();
            // SAFETY: live handles, `SQL` with its length, a local out-pointer.
            unsafe {
                ok(portcullis_decide(e, who, s, black_box(SQL).as_ptr().cast(), SQL.len(), &mut d));
                black_box(portcullis_decision_verdict(d));
                portcullis_decision_free(d);
            }
        })
    });
    group.finish();

    // One masker per API, for the same statement, identity and columns.
    let decision = engine.decide(&agent, &session, MASKED_SQL);
    let infos: Vec<ColumnInfo> =
        COLUMNS.iter().map(|c| ColumnInfo::text(c, Some(&format!("public.customers.{c}")))).collect();
    let masker = engine.masker(&agent, &decision.statements[0].facts, &infos);
    let sources: Vec<String> = COLUMNS.iter().map(|c| format!("public.customers.{c}")).collect();
    let columns: Vec<portcullis_column> = COLUMNS
        .iter()
        .zip(&sources)
        .map(|(n, s)| portcullis_column {
            name: n.as_ptr().cast(),
            name_len: n.len(),
            source: s.as_ptr().cast(),
            source_len: s.len(),
            type_oid: 25,
            binary: 0,
        })
        .collect();
    let (mut d, mut m) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: as above; `columns` points into `sources`, alive for the whole benchmark.
    unsafe {
        ok(portcullis_decide(e, who, s, MASKED_SQL.as_ptr().cast(), MASKED_SQL.len(), &mut d));
        ok(portcullis_masker_new(e, who, d, 0, columns.as_ptr(), columns.len(), &mut m));
    }

    let mut group = c.benchmark_group("ffi/mask_row");
    group.bench_function("rust", |b| {
        b.iter(|| {
            let mut row: Vec<Option<Cow<'_, [u8]>>> = ROW.iter().map(|v| Some(Cow::Borrowed(v.as_bytes()))).collect();
            black_box(masker.mask_row(&mut row));
            black_box(row);
        })
    });
    let mut buf = vec![0u8; 1024];
    group.bench_function("c_abi", |b| {
        b.iter(|| {
            let mut cells: Vec<portcullis_cell> =
                ROW.iter().map(|v| portcullis_cell { data: v.as_ptr(), len: v.len(), is_null: 0 }).collect();
            let (mut used, mut changed) = (0usize, 0usize);
            // SAFETY: a live masker, cells over static strings, a buffer of its length.
            unsafe {
                ok(portcullis_mask_row(
                    m,
                    cells.as_mut_ptr(),
                    cells.len(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut used,
                    &mut changed,
                ));
            }
            assert_eq!(changed, 3);
            black_box(cells);
        })
    });
    group.finish();

    // SAFETY: each handle freed once, after its last use.
    unsafe {
        portcullis_masker_free(m);
        portcullis_decision_free(d);
        portcullis_session_free(s);
        portcullis_identity_free(who);
        portcullis_engine_free(e);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
