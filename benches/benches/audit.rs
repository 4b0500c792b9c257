//! The audit log: appending records (hashing, chaining, formatting; the
//! file write is a buffer flush per 64 records, as a busy writer turn
//! does), and verifying a segment held in memory (the chain, the tree and
//! its checkpoints), in MB/s on one core.
//!
//! Run: `cargo bench -p portcullis-benches --bench audit`.
#![allow(missing_docs)]

use std::time::SystemTime;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use portcullis_audit::note::{NoteSigner, NoteVerifier};
use portcullis_audit::verify::verify_bytes;
use portcullis_audit::writer::{Writer, WriterOptions};

/// A statement record of a typical size (its decision JSON included).
fn body(i: u64) -> String {
    format!(
        r#"{{"type":"statement","session":"3fa2c1e0-{}","n":{i},"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = {}","fingerprint":"9c1e2f3a4b5c6d7e","policy":"sha256:5f0c8a2e9d1b7c3f4a6e8d0b2c4f6a8e0d2b4c6f8a0e2d4b6c8f0a2e4d6b8c0f","verdict":"allow","rule":"bench-all","decision":{{"verdict":"allow","reason":"allowed by rule bench-all","rule":"bench-all","max_rows":0,"approvers":[],"subject":"bench","statements":[{{"index":0,"class":"read","command":"SELECT","tables":["public.pgbench_accounts"],"columns":["public.pgbench_accounts.abalance","public.pgbench_accounts.aid"],"verdict":"allow","rule":"bench-all"}}]}}}}"#,
        i % 64,
        i * 7919 % 1_000_000
    )
}

/// A new log in `dir` (emptied first), in one segment, and its verifier.
fn fresh_log(dir: &std::path::Path) -> Option<(Writer, NoteVerifier)> {
    let _ = std::fs::remove_dir_all(dir);
    let signer = NoteSigner::generate("bench.example/audit").ok()?;
    let verifier = signer.verifier();
    let mut options = WriterOptions::new(dir, signer);
    options.segment_bytes = 1 << 40;
    Some((Writer::open(options).ok()?, verifier))
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-audit-bench-{}", std::process::id()));
    let Some((mut writer, _)) = fresh_log(&dir) else { return };

    let mut group = c.benchmark_group("audit");
    let sample = body(0);
    group.throughput(Throughput::Bytes(sample.len() as u64));
    let mut i = 0u64;
    group.bench_function("append a statement record", |b| {
        b.iter(|| {
            i += 1;
            let _ = black_box(writer.append(body(i), SystemTime::now()));
            if i.is_multiple_of(64) {
                let _ = writer.write();
            }
        })
    });
    // A 32 MiB segment with a checkpoint every 1,000 records.
    let _ = writer.close();
    let Some((mut writer, verifier)) = fresh_log(&dir) else { return };
    let mut n = 0u64;
    while std::fs::metadata(writer.path()).map(|m| m.len()).unwrap_or(u64::MAX) < 32 << 20 {
        n += 1;
        let _ = writer.append(body(n), SystemTime::now());
        if n.is_multiple_of(1000) {
            let _ = writer.checkpoint();
        }
    }
    let _ = writer.close();
    let Ok(Some((_, path))) = portcullis_audit::writer::list_segments(&dir).map(|s| s.into_iter().next()) else {
        return;
    };
    let Ok(bytes) = std::fs::read(&path) else { return };
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(10);
    group.bench_function("verify a 32 MiB segment", |b| {
        b.iter(|| black_box(verify_bytes(&path, &bytes, &verifier, &[]).map(|r| r.size)))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
