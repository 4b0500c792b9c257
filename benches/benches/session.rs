//! Criterion benchmarks of the gateway's session core (see `benches/README.md`).
#![allow(missing_docs)]
//! The session core (`pg_proxy::session::SessionCore`) on pgbench's
//! workloads, in memory: no sockets, no runtime, a scripted server.
//!
//! Run: `cargo bench -p portcullis-benches --bench session`.
//! Each iteration is one pgbench transaction as the gateway sees it: the
//! client's bytes in, the statements decided and passed to the server's
//! buffer, the server's answers in, checked and passed to the client's. What
//! is measured is the gateway's own work per transaction, without the
//! system calls and wake-ups that `gateway-bench` measures with it:
//!
//! - `select-prepared`: `pgbench -S -M prepared` (`Bind`, `Describe`,
//!   `Execute`, `Sync` of a statement parsed once);
//! - `select-simple`: `pgbench -S` (one simple query, its constant new each
//!   time);
//! - `tpcb-like`: pgbench's default transaction, seven simple queries.
//!
//! Each runs twice: `hot`, transaction after transaction (the gateway under
//! load, its code and data in the CPU's caches), and `cold`, with the caches
//! evicted before every transaction (the gateway at `-c 1`, where the CPU
//! ran PostgreSQL and pgbench while the gateway waited). The difference is
//! what the memory the core touches costs, beyond its instructions.
//!
//! The policy is `gateway-bench`'s (`benches/gateway/policy.toml`): every
//! result description is planned for masking, as in production.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::panic, reason = "benchmark setup: a failure is a bug")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use pg_proxy::catalog::Table;
use pg_proxy::codec::{self, FieldDescription, Str};
use pg_proxy::session::{CoreConfig, Need, SessionCore, SessionStart};
use policy_core::{Engine, Identity, Keys, Policy};

const POLICY: &str = include_str!("../gateway/policy.toml");

/// The OIDs the scripted catalog gives pgbench's tables.
const ACCOUNTS: u32 = 16_390;
const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

// ------------------------------------------------------------------ frames

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    let len = u32::try_from(body.len() + 4).expect("a small frame");
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(body: &mut Vec<u8>, s: &str) {
    body.extend_from_slice(s.as_bytes());
    body.push(0);
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    frame(b'Q', &body)
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0u16.to_be_bytes());
    frame(b'P', &body)
}

/// `Bind` of the unnamed portal, one text parameter, text results.
fn bind(statement: &str, param: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    let len = u32::try_from(param.len()).expect("a small parameter");
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(param.as_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    frame(b'B', &body)
}

fn describe_portal() -> Vec<u8> {
    frame(b'D', b"P\0")
}

fn execute() -> Vec<u8> {
    frame(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    frame(b'S', b"")
}

fn complete(tag: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::command_complete(&mut b, tag).expect("a tag");
    b.to_vec()
}

fn ready(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}

/// `RowDescription` of `pgbench_accounts.abalance` (int4, text format).
fn abalance() -> Vec<u8> {
    let field = FieldDescription {
        name: Str::from("abalance".to_string()),
        table_oid: ACCOUNTS,
        column: 3,
        type_oid: 23,
        type_size: 4,
        type_modifier: -1,
        format: 0,
    };
    let mut b = BytesMut::new();
    codec::row_description(&mut b, &[field]).expect("a description");
    b.to_vec()
}

fn row(value: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::data_row(&mut b, [Some(value.as_bytes())]).expect("a row");
    b.to_vec()
}

// ------------------------------------------------------------------ session

/// A logged-in session of group `bench` and its scripted catalog.
struct Session {
    core: SessionCore,
    tables: HashMap<u32, Arc<Table>>,
    now: Instant,
}

impl Session {
    fn new() -> Session {
        Session::with(CoreConfig::default())
    }

    /// A session whose core records what it does (`[audit]` on): its
    /// records are taken at once, as by a sink that costs nothing.
    fn recording() -> Session {
        Session::with(CoreConfig { record: true, ..CoreConfig::default() })
    }

    fn with(config: CoreConfig) -> Session {
        let policy = Policy::from_toml_str(POLICY, "policy.toml").expect("the bench policy");
        let engine = Arc::new(Engine::new(policy, Keys::default()).expect("an engine"));
        let now = Instant::now();
        let start = SessionStart {
            id: 1,
            identity: Identity::new("bench").with_groups(["bench"]),
            engine,
            search_path: vec!["public".into()],
            standard_conforming_strings: true,
            user: "bench".into(),
            database: "bench".into(),
            config,
            metrics: Arc::new(pg_proxy::metrics::Metrics::new()),
        };
        let columns = HashMap::from([(1, "aid".to_string()), (2, "bid".to_string()), (3, "abalance".to_string())]);
        let accounts = Table { schema: "public".into(), name: "pgbench_accounts".into(), columns };
        Session { core: SessionCore::new(start, now), tables: HashMap::from([(ACCOUNTS, Arc::new(accounts))]), now }
    }

    /// The client's bytes in: the bytes the server gets.
    fn client(&mut self, bytes: &[u8]) -> usize {
        self.core.client_buffer().put_slice(bytes);
        self.core.handle_client_data(self.now);
        self.answer_needs();
        let out = self.core.server_output();
        let n = out.len();
        out.clear();
        n
    }

    /// The server's bytes in: the bytes the client gets.
    fn server(&mut self, bytes: &[u8]) -> usize {
        self.core.server_buffer().put_slice(bytes);
        self.core.handle_server_data(self.now);
        self.answer_needs();
        let out = self.core.client_output();
        let n = out.len();
        out.clear();
        n
    }

    fn answer_needs(&mut self) {
        while let Some(need) = self.core.poll_need() {
            match need {
                Need::ResolveTables { .. } => self.core.handle_tables(self.tables.clone(), self.now),
                Need::Persist { batch, records } => {
                    std::hint::black_box(&records);
                    self.core.recycle(records);
                    self.core.handle_persisted(batch, Ok(()), self.now);
                }
                Need::Log { records } => {
                    std::hint::black_box(&records);
                    self.core.recycle(records);
                }
                other => panic!("the bench session asked for {other:?}"),
            }
        }
    }

    /// One statement or block, its answer checked: everything the client
    /// sent reached the server, and everything the server sent the client.
    /// (Not inlined: profilers count per call.)
    #[inline(never)]
    fn round(&mut self, request: &[u8], answer: &[u8]) {
        let sent = self.client(request);
        let got = self.server(answer);
        assert!(
            sent == request.len() && got == answer.len() && self.core.end().is_none(),
            "the session changed a message: {sent}/{} bytes to the server, {got}/{} to the client",
            request.len(),
            answer.len()
        );
    }
}

/// The texts of a pgbench transaction, constants drawn as pgbench draws
/// them (a fixed sequence here, so that runs compare).
struct Draws(u64);

impl Draws {
    fn next(&mut self, below: u64) -> u64 {
        // xorshift64: cheap, and every constant changes length now and then.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below + 1
    }
}

/// Memory written between cold transactions: more than the caches a core
/// has to itself (L1 and L2), so that what the core touches comes from
/// further away, as after a wait.
const EVICT_BYTES: usize = 8 << 20;

/// Runs `transaction` as `NAME/hot` and `NAME/cold`.
fn hot_and_cold(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut transaction: impl FnMut()) {
    group.bench_function(format!("{name}/hot"), |b| b.iter(&mut transaction));
    let mut junk = vec![0u8; EVICT_BYTES];
    group.bench_function(format!("{name}/cold"), |b| {
        b.iter_batched(
            || {
                for line in junk.chunks_mut(64) {
                    line[0] = line[0].wrapping_add(1);
                }
                std::hint::black_box(&junk);
            },
            |()| transaction(),
            BatchSize::PerIteration,
        );
    });
}

/// One request and the server's answer to it.
type Round = (Vec<u8>, Vec<u8>);

/// Runs `transactions` in turn on `session`, as `NAME/hot` and `NAME/cold`.
fn workload(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut session: Session, transactions: &[Vec<Round>]) {
    let mut i = 0;
    hot_and_cold(group, name, || {
        i = (i + 1) % transactions.len();
        for (request, answer) in &transactions[i] {
            session.round(request, answer);
        }
    });
}

fn session(c: &mut Criterion) {
    let mut group = c.benchmark_group("session");

    // pgbench -S -M prepared: the statement is parsed once. Also with the
    // core recording (its records taken at once): what building the
    // records costs the core, without the audit log's own work.
    let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
    let answer = [frame(b'2', b""), abalance(), row("0"), complete("SELECT 1"), ready(b'I')].concat();
    let transactions: Vec<Vec<Round>> = (0..1024)
        .map(|_| {
            let aid = draws.next(1_000_000).to_string();
            vec![([bind("P0_1", &aid), describe_portal(), execute(), sync()].concat(), answer.clone())]
        })
        .collect();
    for (name, mut s) in [("select-prepared", Session::new()), ("select-prepared-recorded", Session::recording())] {
        let mut first = parse("P0_1", SELECT);
        first.extend(bind("P0_1", "1"));
        first.extend(describe_portal());
        first.extend(execute());
        first.extend(sync());
        let head =
            [frame(b'1', b""), frame(b'2', b""), abalance(), row("0"), complete("SELECT 1"), ready(b'I')].concat();
        s.round(&first, &head);
        workload(&mut group, name, s, &transactions);
    }

    // pgbench -S: one simple query.
    let answer = [abalance(), row("0"), complete("SELECT 1"), ready(b'I')].concat();
    let transactions: Vec<Vec<Round>> = (0..1024)
        .map(|_| {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", draws.next(1_000_000));
            vec![(query(&sql), answer.clone())]
        })
        .collect();
    workload(&mut group, "select-simple", Session::new(), &transactions);

    // pgbench's tpcb-like transaction, seven statements.
    let transactions: Vec<Vec<Round>> = (0..256)
        .map(|_| {
            let (aid, bid, tid) = (draws.next(1_000_000), draws.next(10), draws.next(100));
            let delta = i64::try_from(draws.next(10_000)).unwrap_or(0) - 5000;
            let in_tx = |tag: &str| [complete(tag), ready(b'T')].concat();
            vec![
                (query("BEGIN;"), in_tx("BEGIN")),
                (
                    query(&format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};")),
                    in_tx("UPDATE 1"),
                ),
                (
                    query(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")),
                    [abalance(), row("0"), in_tx("SELECT 1")].concat(),
                ),
                (
                    query(&format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};")),
                    in_tx("UPDATE 1"),
                ),
                (
                    query(&format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};")),
                    in_tx("UPDATE 1"),
                ),
                (
                    query(&format!(
                        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, \
                         {delta}, CURRENT_TIMESTAMP);"
                    )),
                    in_tx("INSERT 0 1"),
                ),
                (query("END;"), [complete("COMMIT"), ready(b'I')].concat()),
            ]
        })
        .collect();
    workload(&mut group, "tpcb-like", Session::new(), &transactions);
    workload(&mut group, "tpcb-like-recorded", Session::recording(), &transactions);
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
