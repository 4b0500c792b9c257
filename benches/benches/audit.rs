//! The audit log: appending records (hashing, chaining, formatting; the
//! file write is a buffer flush per 64 records, as a busy writer turn
//! does), and verifying a segment held in memory (the chain, the tree and
//! its checkpoints), in MB/s on one core.
//!
//! The gateway's sink (`audit/sink`): a statement's record persisted and
//! its result's logged, as a session of `pgbench -S -M prepared` hands
//! them over, serialising and queueing included (`durability = "none"`:
//! no sync), per statement; and the same statement with the result of
//! the one before it handed over with it, written inside its record, as
//! the gateway's sessions hand results over. And that record written by
//! two threads in turn, beside the turn passed with no write: what a write
//! costs when the write before it ran on the other core (the log's state
//! in that core's cache), as with the gateway's two runtime threads.
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

/// The sink of a gateway, as `pgbench -S -M prepared` feeds it.
fn sink(c: &mut Criterion) {
    use pg_proxy::audit::AuditLog;
    use pg_proxy::config::{AuditSettings, Durability};
    use pg_proxy::session::record::{Record, RecordSink, ResultRecord, StatementRecord};
    use policy_core::{Engine, Identity, Keys, Policy};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("portcullis-audit-sink-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let origin = "bench.example/audit";
    let Ok((key, _)) = pg_proxy::audit::keygen(&dir.join("keys"), origin) else { return };
    let settings = AuditSettings {
        dir: dir.join("log"),
        durability: Durability::None,
        segment_bytes: 64 << 20,
        keep: None,
        signing_key_file: key,
        origin: origin.into(),
        checkpoint_interval: Duration::from_secs(10),
        commit_delay: Duration::ZERO,
        record_parameters: false,
        record_rows: 0,
        replica: "bench".into(),
    };
    let Ok(log) = AuditLog::open(&settings) else { return };
    let Ok(policy) = Policy::from_toml_str(include_str!("../gateway/policy.toml"), "policy.toml") else { return };
    let Ok(engine) = Engine::new(policy, Keys::default()) else { return };
    let identity = Identity::new("bench").with_groups(["bench"]);
    let sql: Arc<str> = Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    let decision = Arc::new(engine.decide(&identity, &engine.new_session(), &sql));
    let digest: Arc<str> = Arc::from("sha256:5f0c8a2e9d1b7c3f4a6e8d0b2c4f6a8e0d2b4c6f8a0e2d4b6c8f0a2e4d6b8c0f");
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);

    // A prepared read's statement record of session `session`, number
    // `n`, as in a session whose policy was not reloaded since it began
    // (its start record names the policy, its statements do not), and the
    // read's result.
    let statement = |session: u64, n: u64| {
        let mut statement = StatementRecord::new(session, n, Arc::clone(&sql), Vec::new(), Arc::clone(&decision))
            .with_policy(Arc::clone(&digest), false);
        statement.policy_changed = false;
        statement.decision_as_in = (n > 1).then_some(1);
        Record::Statement(statement)
    };
    let result = |session: u64, n: u64| {
        let mut result = ResultRecord::default();
        result.session = session;
        result.sequence = n;
        result.tags = ["SELECT 1"].into_iter().collect();
        result.rows = 1;
        result.ran = true;
        result.duration = Duration::from_micros(180);
        Record::Result(result)
    };

    let mut group = c.benchmark_group("audit/sink");
    let mut n = 0u64;
    group.bench_function("a prepared read: its statement and its result", |b| {
        b.iter(|| {
            n += 1;
            let mut persisting = log.persist(&[statement(1, n)]);
            let _ = black_box(std::future::Future::poll(std::pin::Pin::new(&mut persisting), &mut context));
            log.log(&[result(1, n)]);
        })
    });
    let mut n = 0u64;
    group.bench_function("a prepared read, the result before it inside its record", |b| {
        b.iter(|| {
            n += 1;
            let records = [result(2, n.saturating_sub(1)), statement(2, n)];
            let mut persisting = log.persist(if n > 1 { &records } else { &records[1..] });
            let _ = black_box(std::future::Future::poll(std::pin::Pin::new(&mut persisting), &mut context));
        })
    });
    // The same record with the caches cold, as in a gateway under load,
    // where PostgreSQL's backends and the kernel run on the same core
    // between a session's statements: before each write a sweep through
    // 8 MiB of other memory (a line at a time, written) pushes the log's
    // code and data out of the core's caches. Only the write is timed.
    let mut sweep = vec![0u8; 8 << 20];
    let mut n = 0u64;
    group.bench_function("a prepared read, the result before it inside its record, caches cold", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                for line in sweep.chunks_mut(64) {
                    if let Some(byte) = line.first_mut() {
                        *byte = byte.wrapping_add(1);
                    }
                }
                black_box(&mut sweep);
                n += 1;
                let records = [result(5, n.saturating_sub(1)), statement(5, n)];
                let start = std::time::Instant::now();
                let mut persisting = log.persist(if n > 1 { &records } else { &records[1..] });
                let _ = black_box(std::future::Future::poll(std::pin::Pin::new(&mut persisting), &mut context));
                took += start.elapsed();
            }
            took
        })
    });
    // The same record, written by two threads in turn: each write follows
    // one made on the other core, as when the gateway's sessions run on
    // two runtime threads. Beside it, the turn passed with no write: the
    // difference is what a write costs when the log's state was last
    // touched elsewhere.
    for write in [false, true] {
        let name = if write { "two threads in turn, a prepared read each" } else { "two threads in turn, no write" };
        let log = &log;
        let statement = &statement;
        let result = &result;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let turn = std::sync::atomic::AtomicU64::new(0);
                let write_one = |session: u64, n: u64| {
                    if write {
                        let records = [result(session, n.saturating_sub(1)), statement(session, n)];
                        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                        let mut persisting = log.persist(if n > 1 { &records } else { &records[1..] });
                        let _ = black_box(std::future::Future::poll(std::pin::Pin::new(&mut persisting), &mut context));
                    }
                };
                std::thread::scope(|scope| {
                    // Turns 0, 2, 4, ... are this thread's; 1, 3, 5, ... the other's.
                    let turn = &turn;
                    scope.spawn(move || {
                        for i in 0..iters {
                            while turn.load(std::sync::atomic::Ordering::Acquire) != 2 * i + 1 {
                                std::hint::spin_loop();
                            }
                            write_one(4, i + 1);
                            turn.store(2 * i + 2, std::sync::atomic::Ordering::Release);
                        }
                    });
                    let start = std::time::Instant::now();
                    for i in 0..iters {
                        while turn.load(std::sync::atomic::Ordering::Acquire) != 2 * i {
                            std::hint::spin_loop();
                        }
                        write_one(3, i + 1);
                        turn.store(2 * i + 1, std::sync::atomic::Ordering::Release);
                    }
                    while turn.load(std::sync::atomic::Ordering::Acquire) != 2 * iters {
                        std::hint::spin_loop();
                    }
                    // Two writes per iteration: the time of one.
                    start.elapsed() / 2
                })
            })
        });
    }
    group.finish();
    log.close();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench, sink);
criterion_main!(benches);
