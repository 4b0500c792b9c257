//! The session core in memory, against a scripted server: no PostgreSQL,
//! no sockets, a simulated clock. Each test feeds the core client and
//! server messages and asserts on exactly what it emits to each side and
//! what it asks the driver for.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pg_proxy::catalog::Table;
use pg_proxy::codec::{self, BackendFrame, BackendMessage, FieldDescription, Frontend, Str};
use pg_proxy::session::core::RESULTS_WAIT;
use pg_proxy::session::hold::HoldOutcome;
use pg_proxy::session::record::{Record, RecordError, StatementRecord};
use pg_proxy::session::registry::Activity;
use pg_proxy::session::{CoreConfig, Need, SessionCore, SessionEnd, SessionStart};
use policy_core::{ColumnInfo, Definitions, Engine, Identity, Keys, Policy, View, ViewKind};
use postgres_protocol::message::frontend;

const POLICY: &str = r#"
version = 1
[settings]
default = "deny"
search_path = ["public"]

[[rule]]
name = "no-private"
effect = "deny"
tables = ["private.*"]
reason = "private is off limits"

[[rule]]
name = "read-public"
effect = "allow"
classes = ["read"]
tables = ["public.*", "pg_catalog.*"]
max_rows = 3

[[rule]]
name = "write-orders"
effect = "allow"
classes = ["write"]
tables = ["public.orders"]

[[rule]]
name = "session"
effect = "allow"
classes = ["session", "transaction"]

[[rule]]
name = "deletes-need-approval"
effect = "require_approval"
commands = ["DELETE"]
approvers = ["dba"]
reason = "a person approves deletes"

[[mask]]
name = "ssn"
columns = ["*.*.ssn"]
strategy = "partial"
show_last = 4
"#;

/// The OID the scripted catalog gives `public.people`.
const PEOPLE: u32 = 16_400;

struct Harness {
    core: SessionCore,
    now: Instant,
}

fn harness(config: CoreConfig) -> Harness {
    harness_with(config, vec!["public".into()])
}

fn harness_with(config: CoreConfig, search_path: Vec<String>) -> Harness {
    harness_of(POLICY, config, search_path)
}

fn harness_of(policy: &str, config: CoreConfig, search_path: Vec<String>) -> Harness {
    let policy = Policy::from_toml_str(policy, "policy.toml").unwrap();
    let engine = Arc::new(Engine::new(policy, Keys::default()).unwrap());
    let now = Instant::now();
    let start = SessionStart {
        id: 7,
        identity: Identity::new("alice@example.com"),
        engine,
        search_path,
        standard_conforming_strings: true,
        user: "app".into(),
        database: "app".into(),
        config,
        metrics: Arc::new(pg_proxy::metrics::Metrics::new()),
    };
    Harness { core: SessionCore::new(start, now), now }
}

fn recording() -> CoreConfig {
    CoreConfig { record: true, record_parameters: true, ..CoreConfig::default() }
}

fn holding() -> CoreConfig {
    CoreConfig { holds: true, hold_timeout: Duration::from_secs(60), ..CoreConfig::default() }
}

impl Harness {
    fn client(&mut self, bytes: &[u8]) {
        self.core.client_buffer().extend_from_slice(bytes);
        self.core.handle_client_data(self.now);
    }

    fn server(&mut self, bytes: &[u8]) {
        self.core.server_buffer().extend_from_slice(bytes);
        self.core.handle_server_data(self.now);
    }

    /// What the core sent the server, decoded.
    fn sent(&mut self) -> Vec<Frontend> {
        let out = self.core.server_output();
        let mut messages = Vec::new();
        while let Some(m) = codec::decode_frontend(out, 1 << 20).unwrap() {
            messages.push(m.message);
        }
        assert!(out.is_empty());
        messages
    }

    /// What the core sent the client, as (type, SQLSTATE or tag or first value).
    fn got(&mut self) -> Vec<(char, String)> {
        let out = self.core.client_output();
        let mut frames = Vec::new();
        while let Some(f) = codec::decode_backend(out, 1 << 20).unwrap() {
            frames.push(describe(&f));
        }
        assert!(out.is_empty());
        frames
    }

    fn needs(&mut self) -> Vec<Need> {
        std::iter::from_fn(|| self.core.poll_need()).collect()
    }

    /// What the core asks for once completed results waited their time
    /// for a statement record to go with.
    fn needs_after_results_wait(&mut self) -> Vec<Need> {
        let due = self.core.poll_timeout().expect("results waiting");
        assert!(due <= self.now + RESULTS_WAIT);
        self.core.handle_timeout(due);
        self.needs()
    }
}

/// The statement record of a [`Need::Persist`]'s records: the last, after
/// the session's completed results.
fn statement_of(records: &[Record]) -> &StatementRecord {
    let Some((Record::Statement(r), results)) = records.split_last() else { panic!("{records:?}") };
    assert!(results.iter().all(|r| matches!(r, Record::Result(_))), "{records:?}");
    r
}

fn describe(f: &BackendFrame) -> (char, String) {
    let detail = match f.message().unwrap() {
        BackendMessage::ErrorResponse | BackendMessage::NoticeResponse => {
            let fields = codec::parse_fields(f).unwrap();
            let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_str().to_string()).unwrap();
            format!("{} {}", get(b'C'), get(b'M'))
        }
        BackendMessage::CommandComplete => codec::parse_command_complete(f).unwrap().as_str().to_string(),
        BackendMessage::DataRow => codec::data_row_values(f)
            .unwrap()
            .iter()
            .map(|v| v.as_ref().map_or("NULL".to_string(), |b| String::from_utf8_lossy(b).into_owned()))
            .collect::<Vec<_>>()
            .join(","),
        BackendMessage::CopyData => String::from_utf8_lossy(f.body()).into_owned(),
        BackendMessage::ReadyForQuery => (f.body()[0] as char).to_string(),
        _ => String::new(),
    };
    (f.kind as char, detail)
}

// ------------------------------------------------------------ client side

fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b.to_vec()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut b).unwrap();
    b.to_vec()
}

fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        params.iter(),
        |p, buf| {
            buf.put_slice(p.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty::<i16>(),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    b.to_vec()
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::execute(portal, 0, &mut b).unwrap();
    b.to_vec()
}

fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::describe(b'P', portal, &mut b).unwrap();
    b.to_vec()
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::describe(b'S', name, &mut b).unwrap();
    b.to_vec()
}

fn sync() -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::sync(&mut b);
    b.to_vec()
}

fn flush() -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::flush(&mut b);
    b.to_vec()
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    let mut v = vec![b'd'];
    v.extend_from_slice(&i32::try_from(data.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn copy_done() -> Vec<u8> {
    b"c\0\0\0\x04".to_vec()
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ------------------------------------------------------------ server side

fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ready(status: u8) -> Vec<u8> {
    raw(b'Z', &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::command_complete(&mut b, tag).unwrap();
    b.to_vec()
}

fn error(code: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::error_response(&mut b, "ERROR", code, "server error", &[]).unwrap();
    b.to_vec()
}

fn rows_of(values: &[&[&str]]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for row in values {
        codec::data_row(&mut b, row.iter().map(|v| Some(v.as_bytes()))).unwrap();
    }
    b.to_vec()
}

fn row_description(columns: &[(&str, u32, i16)]) -> Vec<u8> {
    let fields: Vec<FieldDescription> = columns
        .iter()
        .map(|(name, table, column)| FieldDescription {
            name: Str::from(name.to_string()),
            table_oid: *table,
            column: *column,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        })
        .collect();
    let mut b = BytesMut::new();
    codec::row_description(&mut b, &fields).unwrap();
    b.to_vec()
}

fn copy_in_response(columns: u16) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&columns.to_be_bytes());
    for _ in 0..columns {
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    raw(b'G', &body)
}

fn copy_out_response(columns: u16) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&columns.to_be_bytes());
    for _ in 0..columns {
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    raw(b'H', &body)
}

fn people_table() -> HashMap<u32, Arc<Table>> {
    let columns = HashMap::from([(1, "id".to_string()), (2, "name".to_string()), (3, "ssn".to_string())]);
    HashMap::from([(PEOPLE, Arc::new(Table { schema: "public".into(), name: "people".into(), columns }))])
}

/// A simple query's answer: one column `x`, one row holding `value`.
fn one_value_answer(value: &str) -> Vec<u8> {
    cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&[value]]), complete("SELECT 1"), ready(b'I')])
}

/// The gateway reads the server's `search_path` back: the server answers
/// `path`.
fn read_back(h: &mut Harness, path: &str) {
    let sent = h.sent();
    assert!(is_query(&sent[0], READ_BACK), "{sent:?}");
    h.server(&cat(&[
        row_description(&[("search_path", 0, 0), ("current_user", 0, 0)]),
        rows_of(&[&[path, "app"]]),
        complete("SELECT 1"),
        ready(b'I'),
    ]));
}

fn is_query(m: &Frontend, sql: &str) -> bool {
    matches!(m, Frontend::Query { sql: s } if s.as_str() == sql)
}

fn is_substitute(m: &Frontend) -> bool {
    match m {
        Frontend::Query { sql } | Frontend::Parse { sql, .. } => sql.as_str() == pg_proxy::session::core::REFUSED_SQL,
        _ => false,
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn an_allowed_query_is_forwarded_and_its_answer_relayed() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("SELECT 1"));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert!(is_query(&sent[0], "SELECT 1"));
    assert_eq!(h.core.activity(), Activity::Running);
    h.server(&cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&["1"]]), complete("SELECT 1"), ready(b'I')]));
    assert_eq!(h.got(), vec![('T', String::new()), ('D', "1".into()), ('C', "SELECT 1".into()), ('Z', "I".into())]);
    assert_eq!(h.core.activity(), Activity::Idle);
    assert!(h.needs().is_empty());
}

#[test]
fn a_refused_query_sends_the_substitute_and_the_client_gets_42501() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("SELECT * FROM private.secrets"));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert_eq!(got.len(), 2);
    assert!(got[0].1.starts_with("42501 refused by policy (rule no-private)"), "{got:?}");
    assert_eq!(got[1], ('Z', "I".into()));
    // The session goes on.
    h.client(&query("SELECT 2"));
    assert!(is_query(&h.sent()[0], "SELECT 2"));
}

#[test]
fn a_refusal_inside_a_transaction_aborts_it_as_an_error_would() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("BEGIN"));
    h.sent();
    h.server(&cat(&[complete("BEGIN"), ready(b'T')]));
    h.got();
    h.client(&query("UPDATE people SET name = 'x' WHERE id = 1"));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]));
    // The server fails the substitute; the transaction is now aborted.
    h.server(&cat(&[error("22P02"), ready(b'E')]));
    let got = h.got();
    assert!(got[0].1.starts_with("42501"), "{got:?}");
    assert_eq!(got[1], ('Z', "E".into()));
}

#[test]
fn a_pipeline_with_an_error_mid_batch_drops_the_rest_up_to_sync() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[
        parse("a", "SELECT 1"),
        bind("", "a", &[]),
        describe_portal(""),
        execute(""),
        parse("b", "SELECT 1/0"),
        bind("", "b", &[]),
        describe_portal(""),
        execute(""),
        parse("c", "SELECT 3"),
        bind("", "c", &[]),
        describe_portal(""),
        execute(""),
        sync(),
    ]));
    assert_eq!(h.sent().len(), 13);
    h.server(&cat(&[
        raw(b'1', b""),
        raw(b'2', b""),
        row_description(&[("?column?", 0, 0)]),
        rows_of(&[&["1"]]),
        complete("SELECT 1"),
        raw(b'1', b""),
        raw(b'2', b""),
        row_description(&[("?column?", 0, 0)]),
        error("22012"),
        ready(b'I'),
    ]));
    let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, vec!['1', '2', 'T', 'D', 'C', '1', '2', 'T', 'E', 'Z']);
    assert_eq!(h.core.activity(), Activity::Idle);
}

#[test]
fn a_refused_parse_fails_the_block_and_the_rest_up_to_sync_is_dropped() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("", "SELECT * FROM private.secrets"), bind("", "", &[]), execute(""), sync()]));
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(is_substitute(&sent[0]));
    assert!(matches!(sent[1], Frontend::Sync));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got[0].1.starts_with("42501"), "{got:?}");
    assert_eq!(got[1], ('Z', "I".into()));
    // Binding the refused (unnamed) statement later fails too.
    h.client(&cat(&[bind("", "", &[]), execute(""), sync()]));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
}

#[test]
fn a_refused_parse_followed_by_flush_is_answered_without_waiting_for_sync() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("s", "SELECT * FROM private.secrets"), flush()]));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
    assert!(matches!(sent[1], Frontend::Flush));
    h.server(&error("22P02"));
    let got = h.got();
    assert!(got[0].1.starts_with("42501"), "{got:?}");
    // Up to Sync, the client's messages are dropped, as the server drops them.
    h.client(&cat(&[bind("", "s", &[]), execute(""), sync()]));
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(matches!(sent[0], Frontend::Sync));
    h.server(&ready(b'I'));
    assert_eq!(h.got(), vec![('Z', "I".into())]);
}

/// A server error in one block says nothing of the next: a refusal in a
/// block read while the server reports an earlier block's error is still
/// answered (tokio-postgres pipelines blocks back to back).
#[test]
fn a_refusal_read_while_the_server_fails_an_earlier_block_is_still_answered() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("a", "SELECT 1/0"), bind("", "a", &[]), execute(""), sync()]));
    assert_eq!(h.sent().len(), 5);
    h.server(&cat(&[raw(b'1', b""), raw(b'2', b""), row_description(&[("?column?", 0, 0)]), error("22012")]));
    // (The row description answers the gateway's own Describe.)
    assert_eq!(h.got().into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!['1', '2', 'E']);
    // The next block arrives before the first one's ReadyForQuery.
    h.client(&cat(&[parse("b", "SELECT * FROM private.secrets"), describe_statement("b"), sync()]));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
    assert!(matches!(sent[1], Frontend::Sync));
    h.server(&cat(&[ready(b'I'), error("22P02"), ready(b'I')]));
    let got = h.got();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], ('Z', "I".into()));
    assert!(got[1].1.starts_with("42501"), "{got:?}");
    assert_eq!(got[2], ('Z', "I".into()));
    assert_eq!(h.core.activity(), Activity::Idle);
    assert!(h.core.end().is_none());
}

/// After a Flush, the server may fail a block before the client sends the
/// rest of it: what the server then skips is owed no answer.
#[test]
fn messages_of_a_block_the_server_already_failed_are_owed_no_answer() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("a", "SELECT * FROM public.missing"), flush()]));
    h.sent();
    h.server(&error("42P01"));
    assert_eq!(h.got().len(), 1);
    // The gateway allowed the text; the client goes on with the block.
    h.client(&cat(&[bind("", "a", &[]), execute(""), parse("b", "SELECT * FROM private.secrets"), sync()]));
    let sent = h.sent();
    assert!(sent.iter().any(is_substitute), "{sent:?}");
    // The server skips all of it up to Sync.
    h.server(&ready(b'I'));
    assert_eq!(h.got(), vec![('Z', "I".into())]);
    assert!(h.core.end().is_none(), "{:?}", h.core.end());
    assert_eq!(h.core.activity(), Activity::Idle);
    // And the session goes on.
    h.client(&query("SELECT 2"));
    assert!(is_query(&h.sent()[0], "SELECT 2"));
}

/// PostgreSQL skips every message but `Sync` after an error in an
/// extended-protocol block, a simple `Query` too. Once the server's error
/// is in, the gateway skips such a query as well (it is owed no answer).
/// Sent before the error came back, it runs: the gateway ends the block
/// with a `Sync` of its own first, as it cannot know yet whether the
/// server will skip it.
#[test]
fn a_query_inside_a_failed_block_is_skipped_as_the_server_skips_it() {
    for query_first in [true, false] {
        let mut h = harness(CoreConfig::default());
        h.client(&cat(&[parse("", "SELECT * FROM public.missing"), bind("", "", &[]), execute(""), flush()]));
        if query_first {
            h.client(&query("SELECT 2"));
        }
        h.sent();
        h.server(&error("42P01"));
        if !query_first {
            h.client(&query("SELECT 2"));
        }
        h.client(&sync());
        let sent = kinds(&h.sent());
        if query_first {
            // The gateway's Sync ends the failed block; its answer is the gateway's.
            h.server(&cat(&[
                ready(b'I'),
                row_description(&[("x", 0, 0)]),
                rows_of(&[&["2"]]),
                complete("SELECT 1"),
                ready(b'I'),
                ready(b'I'),
            ]));
            let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
            assert_eq!(got, vec!['E', 'T', 'D', 'C', 'Z', 'Z']);
        } else {
            assert_eq!(sent, ["S"], "the query is not sent");
            h.server(&ready(b'I'));
            let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
            assert_eq!(got, vec!['E', 'Z']);
        }
        assert!(h.core.end().is_none(), "{:?}", h.core.end());
        assert_eq!(h.core.activity(), Activity::Idle);
        // The session goes on in step.
        h.client(&query("SELECT 3"));
        h.sent();
        h.server(&cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&["3"]]), complete("SELECT 1"), ready(b'I')]));
        assert_eq!(h.got().into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!['T', 'D', 'C', 'Z']);
    }
}

/// A simple query inside a block that did not fail runs, as on the server
/// (asyncpg prepares with Parse, Describe and Flush, then sends its COPY as
/// a simple query before any Sync).
#[test]
fn a_query_inside_an_open_block_that_did_not_fail_runs() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("s", "SELECT 1"), describe_statement("s"), flush()]));
    h.sent();
    h.server(&cat(&[raw(b'1', b""), raw(b't', &[0, 0]), row_description(&[("x", 0, 0)])]));
    assert_eq!(h.got().into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!['1', 't', 'T']);
    h.client(&query("SELECT 2"));
    // The gateway ends the block first, with a Sync of its own.
    assert_eq!(kinds(&h.sent()), ["S", "Q"]);
    h.server(&cat(&[
        ready(b'I'),
        row_description(&[("x", 0, 0)]),
        rows_of(&[&["2"]]),
        complete("SELECT 1"),
        ready(b'I'),
    ]));
    assert_eq!(h.got().into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!['T', 'D', 'C', 'Z']);
    assert!(h.core.end().is_none(), "{:?}", h.core.end());
    // The client's own Sync is answered as usual.
    h.client(&sync());
    assert_eq!(kinds(&h.sent()), ["S"]);
    h.server(&ready(b'I'));
    assert_eq!(h.got(), vec![('Z', "I".into())]);
}

/// Simple queries the client sent right behind an Execute whose result the
/// row cap stopped, in the same block, before it saw the cap: the gateway
/// ended the block with its own Sync before them, so their answers are
/// matched in step, each masked by its own plan.
#[test]
fn queries_behind_a_capped_execute_in_its_block_are_answered_in_step() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[
        parse("", "SELECT id FROM orders"),
        bind("", "", &[]),
        execute(""),
        flush(),
        query("SELECT 1"),
        query("SELECT ssn || '' AS x FROM people"),
        sync(),
        query("SELECT name AS x FROM people"),
    ]));
    assert_eq!(kinds(&h.sent()), ["P", "B", "D", "E", "H", "S", "Q", "Q", "S", "Q"]);
    h.server(&cat(&[
        raw(b'1', b""),
        raw(b'2', b""),
        row_description(&[("id", 0, 0)]),
        rows_of(&[&["1"], &["2"], &["3"], &["4"], &["5"]]),
        complete("SELECT 5"),
        ready(b'I'),
        row_description(&[("?column?", 0, 0)]),
        rows_of(&[&["1"]]),
        complete("SELECT 1"),
        ready(b'I'),
    ]));
    h.server(&cat(&[one_value_answer("123-45-6789"), ready(b'I'), one_value_answer("Ada")]));
    let got = h.got();
    assert!(got.iter().any(|(k, d)| *k == 'E' && d.starts_with("54000")), "{got:?}");
    assert!(!got.iter().any(|(_, d)| d.contains("6789")), "{got:?}");
    assert!(got.contains(&('D', "[redacted]".into())), "{got:?}");
    assert_eq!(got.last(), Some(&('Z', "I".into())), "{got:?}");
    assert!(got.contains(&('D', "Ada".into())), "{got:?}");
    assert!(h.core.end().is_none(), "{:?}", h.core.end());
}

/// After a row cap inside a block the client was told of an error, so what
/// it sends up to its Sync is dropped, as the server would drop it; the
/// answers stay in step and a later query is masked by its own plan.
#[test]
fn after_a_row_cap_in_an_open_block_the_rest_of_it_is_dropped() {
    for suspended in [false, true] {
        let mut h = harness(CoreConfig::default());
        let mut exec = BytesMut::new();
        frontend::execute("", if suspended { 4 } else { 0 }, &mut exec).unwrap();
        h.client(&cat(&[parse("", "SELECT id FROM orders"), bind("", "", &[]), exec.to_vec(), flush()]));
        h.sent();
        let end = if suspended { raw(b's', b"") } else { complete("SELECT 5") };
        let rows: &[&[&str]] =
            if suspended { &[&["1"], &["2"], &["3"], &["4"]] } else { &[&["1"], &["2"], &["3"], &["4"], &["5"]] };
        h.server(&cat(&[raw(b'1', b""), raw(b'2', b""), row_description(&[("id", 0, 0)]), rows_of(rows), end]));
        assert!(h.needs().iter().any(|n| matches!(n, Need::CancelUpstream)));
        let got = h.got();
        assert!(got.iter().any(|(k, d)| *k == 'E' && d.starts_with("54000")), "{got:?}");
        // The client goes on in the same block, then syncs and reads.
        h.client(&cat(&[
            parse("a", "SELECT ssn || '' AS x FROM people"),
            bind("", "a", &[]),
            execute(""),
            sync(),
            query("SELECT name AS x FROM people"),
        ]));
        assert_eq!(kinds(&h.sent()), ["S", "Q"], "the rest of the block is dropped");
        assert!(h.core.end().is_none());
        h.server(&cat(&[
            ready(b'I'),
            row_description(&[("x", 0, 0)]),
            rows_of(&[&["Ada"]]),
            complete("SELECT 1"),
            ready(b'I'),
        ]));
        let got = h.got();
        assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ['Z', 'T', 'D', 'C', 'Z'], "{got:?}");
        assert_eq!(got[2], ('D', "Ada".into()));
        assert!(h.core.end().is_none(), "{:?}", h.core.end());
    }
}

#[test]
fn copy_data_sent_ahead_of_copy_in_response_is_kept_in_order() {
    // asyncpg's copy_records_to_table: the COPY, its data and CopyDone in one write.
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[query("COPY orders FROM STDIN"), copy_data(b"1\t10\n"), copy_data(b"2\t20\n"), copy_done()]));
    let sent = h.sent();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(is_query(&sent[0], "COPY orders FROM STDIN"));
    assert!(matches!(&sent[1], Frontend::CopyData(d) if &d[..] == b"1\t10\n"));
    assert!(matches!(&sent[2], Frontend::CopyData(d) if &d[..] == b"2\t20\n"));
    assert!(matches!(sent[3], Frontend::CopyDone));
    h.server(&cat(&[copy_in_response(2), complete("COPY 2"), ready(b'I')]));
    assert_eq!(h.got(), vec![('G', String::new()), ('C', "COPY 2".into()), ('Z', "I".into())]);
    h.client(&query("SELECT 1"));
    assert!(is_query(&h.sent()[0], "SELECT 1"));
}

#[test]
fn a_refused_copy_s_data_is_dropped() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[query("COPY people FROM STDIN"), copy_data(b"1\tx\n"), copy_done(), query("SELECT 1")]));
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(is_substitute(&sent[0]));
    assert!(is_query(&sent[1], "SELECT 1"));
}

#[test]
fn a_sync_inside_copy_in_is_not_counted_as_owing_a_ready_for_query() {
    // tokio-postgres copy_in: Bind, Execute, Sync, <data>, CopyDone, Sync.
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("c", "COPY orders FROM STDIN"), sync()]));
    h.sent();
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    h.client(&cat(&[bind("", "c", &[]), execute(""), sync(), copy_data(b"1\t10\n"), copy_done(), sync()]));
    let sent = h.sent();
    let kinds: Vec<&str> = sent
        .iter()
        .map(|m| match m {
            Frontend::Bind { .. } => "B",
            Frontend::Describe { .. } => "D",
            Frontend::Execute { .. } => "E",
            Frontend::Sync => "S",
            Frontend::CopyData(_) => "d",
            Frontend::CopyDone => "c",
            _ => "?",
        })
        .collect();
    assert_eq!(kinds, ["B", "D", "E", "S", "d", "c", "S"]);
    // The server ignores the first Sync in COPY IN: one ReadyForQuery.
    h.server(&cat(&[raw(b'2', b""), raw(b'n', b""), copy_in_response(2), complete("COPY 1"), ready(b'I')]));
    assert_eq!(h.got(), vec![('2', String::new()), ('G', String::new()), ('C', "COPY 1".into()), ('Z', "I".into())]);
    assert_eq!(h.core.activity(), Activity::Idle);
    assert!(h.core.end().is_none());
    h.client(&query("SELECT 1"));
    assert!(is_query(&h.sent()[0], "SELECT 1"));
    h.server(&cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&["1"]]), complete("SELECT 1"), ready(b'I')]));
    assert_eq!(h.got().len(), 4);
}

fn kinds(sent: &[Frontend]) -> Vec<&'static str> {
    sent.iter()
        .map(|m| match m {
            Frontend::Query { .. } => "Q",
            Frontend::Parse { .. } => "P",
            Frontend::Bind { .. } => "B",
            Frontend::Describe { .. } => "D",
            Frontend::Execute { .. } => "E",
            Frontend::Sync => "S",
            Frontend::Flush => "H",
            Frontend::CopyData(_) => "d",
            Frontend::CopyDone => "c",
            _ => "?",
        })
        .collect()
}

#[test]
fn copy_data_right_after_execute_without_sync_follows_it() {
    for config in [CoreConfig::default(), recording()] {
        let mut h = harness(config.clone());
        h.client(&cat(&[
            parse("", "COPY orders FROM STDIN"),
            bind("", "", &[]),
            execute(""),
            copy_data(b"1\t10\n"),
            copy_done(),
            sync(),
        ]));
        if config.record {
            assert!(h.sent().is_empty(), "recorded first");
            let needs = h.needs();
            let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
            h.core.handle_persisted(*batch, Ok(()), h.now);
        }
        assert_eq!(kinds(&h.sent()), ["P", "B", "D", "E", "d", "c", "S"]);
        h.server(&cat(&[
            raw(b'1', b""),
            raw(b'2', b""),
            raw(b'n', b""),
            copy_in_response(2),
            complete("COPY 1"),
            ready(b'I'),
        ]));
        let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec!['1', '2', 'G', 'C', 'Z']);
        assert_eq!(h.core.activity(), Activity::Idle);
    }
}

#[test]
fn a_sync_during_a_simple_query_copy_is_ignored_as_the_server_ignores_it() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[query("COPY orders FROM STDIN"), copy_data(b"1\t10\n"), sync(), copy_done()]));
    // Not even sent: had the COPY failed on the data before it, the server
    // would answer it, and the gateway could not tell.
    assert_eq!(kinds(&h.sent()), ["Q", "d", "c"]);
    h.server(&cat(&[copy_in_response(2), complete("COPY 1"), ready(b'I')]));
    assert_eq!(h.got(), vec![('G', String::new()), ('C', "COPY 1".into()), ('Z', "I".into())]);
    h.client(&query("SELECT 1"));
    assert!(is_query(&h.sent()[0], "SELECT 1"));
    h.server(&cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&["1"]]), complete("SELECT 1"), ready(b'I')]));
    assert_eq!(h.got().len(), 4, "the session is in step");
    assert!(h.core.end().is_none());
}

#[test]
fn a_copy_that_fails_before_copy_in_answers_both_syncs() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("c", "COPY orders FROM STDIN"), sync()]));
    h.sent();
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    h.client(&cat(&[bind("", "c", &[]), execute(""), sync(), copy_data(b"1\t10\n"), copy_done(), sync()]));
    h.sent();
    // The Execute fails: the server answers the first Sync, drops the data,
    // answers the second. (NoData answers the gateway's own Describe.)
    h.server(&cat(&[raw(b'2', b""), raw(b'n', b""), error("42P01"), ready(b'I'), ready(b'I')]));
    let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, vec!['2', 'E', 'Z', 'Z']);
    assert_eq!(h.core.activity(), Activity::Idle);
}

#[test]
fn copy_out_rows_are_masked() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("COPY (SELECT name, ssn FROM people) TO STDOUT"));
    h.sent();
    h.server(&cat(&[copy_out_response(2), raw(b'd', b"Ada\t123-45-6789\n"), raw(b'c', b""), complete("COPY 1")]));
    let got = h.got();
    assert_eq!(got[1], ('d', "Ada\t****6789\n".into()), "{got:?}");
}

#[test]
fn csv_copy_out_rows_are_masked_and_the_header_passes() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("COPY (SELECT name, ssn FROM people) TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)"));
    h.sent();
    h.server(&cat(&[
        copy_out_response(2),
        raw(b'd', b"\"name\",\"ssn\"\n"),
        raw(b'd', b"\"Ada, \"\"L\"\"\",\"123-45-6789\"\n"),
        raw(b'd', b"\"Bob\",\n"),
        raw(b'c', b""),
        complete("COPY 2"),
    ]));
    let got = h.got();
    assert_eq!(got[1], ('d', "\"name\",\"ssn\"\n".into()), "the header as it came: {got:?}");
    assert_eq!(got[2], ('d', "\"Ada, \"\"L\"\"\",\"****6789\"\n".into()), "{got:?}");
    assert_eq!(got[3], ('d', "\"Bob\",\n".into()), "NULL stays NULL: {got:?}");
}

#[test]
fn a_csv_line_the_gateway_cannot_read_stops_the_copy() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("COPY (SELECT name, ssn FROM people) TO STDOUT (FORMAT csv)"));
    h.sent();
    h.server(&cat(&[copy_out_response(2), raw(b'd', b"Ada,\"123-45-6789\n")]));
    assert!(matches!(h.needs().as_slice(), [Need::CancelUpstream]));
    h.server(&cat(&[raw(b'c', b""), complete("COPY 1"), ready(b'I')]));
    let got = h.got();
    assert!(got.iter().all(|(_, body)| !body.contains("6789")), "{got:?}");
    assert!(got.iter().any(|(t, body)| *t == 'E' && body.contains("could not be masked")), "{got:?}");
    assert_eq!(got.last(), Some(&('Z', "I".into())));
}

#[test]
fn a_refused_copy_out_sends_the_client_nothing_of_it_but_the_error() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("COPY (SELECT ssn FROM people) TO STDOUT (DELIMITER '|')"));
    h.sent();
    h.server(&copy_out_response(1));
    assert!(matches!(h.needs().as_slice(), [Need::CancelUpstream]));
    h.server(&cat(&[raw(b'd', b"123-45-6789\n"), raw(b'c', b""), complete("COPY 1"), ready(b'I')]));
    let got = h.got();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].1.starts_with("42501 COPY of masked data"), "{got:?}");
    assert!(got[0].1.contains("drop the DELIMITER option"), "{got:?}");
    assert_eq!(got[1], ('Z', "I".into()));
}

fn binary_copy_out_response(columns: u16) -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend_from_slice(&columns.to_be_bytes());
    for _ in 0..columns {
        body.extend_from_slice(&1i16.to_be_bytes());
    }
    raw(b'H', &body)
}

/// Binary COPY data of text rows, as PostgreSQL writes it.
fn binary_rows(rows: &[[Option<&str>; 2]]) -> Vec<u8> {
    let mut data = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for row in rows {
        data.extend_from_slice(&2i16.to_be_bytes());
        for value in row {
            match value {
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    data.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

/// A binary COPY of `data` in `CopyData` messages of `piece` bytes, then
/// `CopyDone`: the COPY data the client got, and the kinds of its messages.
fn binary_copy_out(data: &[u8], piece: usize) -> (Vec<u8>, Vec<char>) {
    let mut h = harness(CoreConfig::default());
    h.client(&query("COPY people (name, ssn) TO STDOUT (FORMAT binary)"));
    h.sent();
    let mut server = binary_copy_out_response(2);
    for part in data.chunks(piece) {
        server.extend_from_slice(&raw(b'd', part));
    }
    server.extend_from_slice(&cat(&[raw(b'c', b""), complete("COPY 2"), ready(b'I')]));
    h.server(&server);
    // The column types come from the catalog.
    answer_catalog(&mut h);
    let out = h.core.client_output();
    let (mut copied, mut kinds) = (Vec::new(), Vec::new());
    while let Some(f) = codec::decode_backend(out, 1 << 20).unwrap() {
        if f.kind == b'd' {
            copied.extend_from_slice(f.body());
        }
        kinds.push(f.kind as char);
    }
    (copied, kinds)
}

#[test]
fn binary_copy_out_rows_are_masked_wherever_the_messages_split_them() {
    let data = binary_rows(&[[Some("Ada"), Some("123-45-6789")], [Some("Bob"), None]]);
    let want = binary_rows(&[[Some("Ada"), Some("****6789")], [Some("Bob"), None]]);
    for piece in [1, 7, 19, 26, data.len()] {
        let (copied, kinds) = binary_copy_out(&data, piece);
        assert_eq!(copied, want, "pieces of {piece}: {kinds:?}");
        assert_eq!(kinds.first(), Some(&'H'));
        assert!(kinds.ends_with(&['c', 'C', 'Z']), "{kinds:?}");
    }
}

#[test]
fn the_row_cap_counts_the_rows_of_binary_copy_data_not_its_messages() {
    let row = [Some("Ada"), Some("123-45-6789")];
    // Three rows in four messages (the end marker alone): under the cap of 3.
    let (copied, kinds) = binary_copy_out(&binary_rows(&[row; 3]), 41);
    assert_eq!(copied, binary_rows(&[[Some("Ada"), Some("****6789")]; 3]));
    assert!(kinds.ends_with(&['c', 'C', 'Z']), "{kinds:?}");
    // Five rows: the header and three rows, then the cap's error.
    let (copied, kinds) = binary_copy_out(&binary_rows(&[row; 5]), 41);
    let three = binary_rows(&[[Some("Ada"), Some("****6789")]; 3]);
    assert_eq!(copied, three[..three.len() - 2], "the header and three rows");
    assert!(kinds.ends_with(&['E', 'Z']), "the cap's error instead of CommandComplete: {kinds:?}");
}

#[test]
fn binary_copy_data_that_ends_inside_a_row_is_an_error_not_a_copy_done() {
    let data = binary_rows(&[[Some("Ada"), Some("123-45-6789")], [Some("Bob"), Some("234-56-7890")]]);
    let (copied, kinds) = binary_copy_out(&data[..data.len() - 6], 64);
    assert!(!copied.windows(6).any(|w| w == b"123-45" || w == b"234-56"), "nothing unmasked");
    assert!(!kinds.contains(&'c'), "no CopyDone: {kinds:?}");
    assert!(kinds.ends_with(&['E', 'Z']), "{kinds:?}");
}

#[test]
fn the_row_cap_cancels_upstream_and_answers_54000() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("SELECT id FROM orders"));
    h.sent();
    h.server(&cat(&[row_description(&[("id", 0, 0)]), rows_of(&[&["1"], &["2"], &["3"], &["4"], &["5"]])]));
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::CancelUpstream]), "{needs:?}");
    h.server(&cat(&[error("57014"), ready(b'I')]));
    let got = h.got();
    assert_eq!(got.iter().filter(|(k, _)| *k == 'D').count(), 3);
    assert!(got.iter().any(|(k, d)| *k == 'E' && d.starts_with("54000 row limit reached")), "{got:?}");
    assert_eq!(got.last().unwrap(), &('Z', "I".into()));
}

#[test]
fn masking_waits_for_the_catalog_then_masks() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("SELECT id, ssn FROM people"));
    h.sent();
    h.server(&cat(&[
        row_description(&[("id", PEOPLE, 1), ("ssn", PEOPLE, 3)]),
        rows_of(&[&["1", "123-45-6789"]]),
        complete("SELECT 1"),
        ready(b'I'),
    ]));
    // Nothing reaches the client until the catalog answered.
    assert!(h.got().is_empty());
    assert!(!h.core.wants_server_data());
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::ResolveTables { oids }] if oids == &[PEOPLE]), "{needs:?}");
    h.core.handle_tables(people_table(), h.now);
    let got = h.got();
    assert_eq!(got[1], ('D', "1,****6789".into()), "{got:?}");
    assert_eq!(got.last().unwrap(), &('Z', "I".into()));
    // The plan is kept: the same statement needs no catalog again.
    h.client(&query("SELECT id, ssn FROM people"));
    h.sent();
    h.server(&cat(&[
        row_description(&[("id", PEOPLE, 1), ("ssn", PEOPLE, 3)]),
        rows_of(&[&["2", "987-65-4321"]]),
        complete("SELECT 1"),
        ready(b'I'),
    ]));
    assert!(h.needs().is_empty());
    assert_eq!(h.got()[1], ('D', "2,****4321".into()));
}

#[test]
fn a_query_run_again_with_other_constants_keeps_its_plan_only_for_the_same_columns() {
    let mut h = harness(CoreConfig::default());
    let run = |h: &mut Harness, sql: &str, columns: &[(&str, u32, i16)], row: &[&str]| {
        h.client(&query(sql));
        h.sent();
        h.server(&cat(&[row_description(columns), rows_of(&[row]), complete("SELECT 1"), ready(b'I')]));
        let needs = h.needs();
        if !needs.is_empty() {
            assert!(matches!(needs.as_slice(), [Need::ResolveTables { .. }]), "{needs:?}");
            h.core.handle_tables(people_table(), h.now);
        }
        (needs.len(), h.got())
    };
    let masked = [("id", PEOPLE, 1), ("ssn", PEOPLE, 3)];
    let (asked, got) = run(&mut h, "SELECT id, ssn FROM people WHERE id = 1", &masked, &["1", "123-45-6789"]);
    assert_eq!((asked, &got[1]), (1, &('D', "1,****6789".into())), "{got:?}");
    // The same statement with another constant: the same plan, no catalog.
    let (asked, got) = run(&mut h, "SELECT id, ssn FROM people WHERE id = 2", &masked, &["2", "987-65-4321"]);
    assert_eq!((asked, &got[1]), (0, &('D', "2,****4321".into())), "{got:?}");
    // The server describes other columns for the same text (the table
    // changed under it): planned again, not taken from the last result.
    let other = [("id", PEOPLE, 1), ("name", PEOPLE, 2)];
    let (_, got) = run(&mut h, "SELECT id, ssn FROM people WHERE id = 3", &other, &["3", "Ada"]);
    assert_eq!(got[1], ('D', "3,Ada".into()), "{got:?}");
}

/// One run of a prepared statement: Bind, Describe, Execute, Sync, and the
/// server's answer with one row (`ssn` an `int8` column); returns the type
/// the client was told for `ssn` and the row it got.
fn run_prepared(h: &mut Harness, ssn: &str) -> (u32, String) {
    h.client(&cat(&[bind("", "p", &[]), describe_portal(""), execute(""), sync()]));
    h.sent();
    let mut description = BytesMut::new();
    let fields = [("id", 1, 23), ("ssn", 3, 20)].map(|(name, column, type_oid)| FieldDescription {
        name: Str::from(name.to_string()),
        table_oid: PEOPLE,
        column,
        type_oid,
        type_size: 4,
        type_modifier: -1,
        format: 0,
    });
    codec::row_description(&mut description, &fields).unwrap();
    h.server(&cat(&[raw(b'2', b""), description.to_vec(), rows_of(&[&["1", ssn]]), complete("SELECT 1"), ready(b'I')]));
    if let [Need::ResolveTables { .. }] = h.needs().as_slice() {
        h.core.handle_tables(people_table(), h.now);
    }
    let out = h.core.client_output();
    let mut ssn_type = 0;
    let mut row = String::new();
    while let Some(f) = codec::decode_backend(out, 1 << 20).unwrap() {
        match f.message().unwrap() {
            BackendMessage::RowDescription => ssn_type = codec::parse_row_description(&f).unwrap()[1].type_oid,
            BackendMessage::DataRow => row = describe(&f).1,
            _ => {}
        }
    }
    (ssn_type, row)
}

#[test]
fn a_prepared_statement_described_again_keeps_its_plan_until_the_policy_changes() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("p", "SELECT id, ssn FROM people"), sync()]));
    h.sent();
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    // The masked int8 is described as text: its masked value is no number.
    assert_eq!(run_prepared(&mut h, "123456789"), (25, "1,****6789".to_string()));
    assert_eq!(run_prepared(&mut h, "987654321"), (25, "1,****4321".to_string()));
    // A reload without the mask: the next run is planned anew.
    let unmasked = POLICY.split("[[mask]]").next().unwrap();
    let policy = Policy::from_toml_str(unmasked, "policy.toml").unwrap();
    h.core.set_engine(Arc::new(Engine::new(policy, Keys::default()).unwrap()));
    assert_eq!(run_prepared(&mut h, "987654321"), (20, "1,987654321".to_string()));
}

/// Executions of the unnamed portal pipelined before one Sync, each bound
/// anew (`Parse`, `Bind`, `Execute`, N times): the gateway asks the columns
/// of each with a `Describe` of its own, and each answer reaches its
/// `Execute` although the portal was bound again by then, so every result
/// is masked by its plan (the SSN partly, the id not at all), not whole.
#[test]
fn pipelined_executions_of_a_rebound_portal_each_get_their_columns() {
    let mut h = harness(CoreConfig::default());
    let masked = [("id", PEOPLE, 1), ("ssn", PEOPLE, 3)];
    let one = [parse("", "SELECT id, ssn FROM people"), bind("", "", &[]), execute("")];
    let mut batch: Vec<Vec<u8>> = (0..3).flat_map(|_| one.clone()).collect();
    batch.push(sync());
    h.client(&cat(&batch));
    let kinds = kinds(&h.sent());
    assert_eq!(kinds.iter().filter(|k| **k == "D").count(), 3, "{kinds:?}");
    let mut answer = Vec::new();
    for ssn in ["111-11-1111", "222-22-2222", "333-33-3333"] {
        answer.extend([raw(b'1', b""), raw(b'2', b""), row_description(&masked), rows_of(&[&["7", ssn]])]);
        answer.push(complete("SELECT 1"));
    }
    answer.push(ready(b'I'));
    h.server(&cat(&answer));
    if let [Need::ResolveTables { .. }] = h.needs().as_slice() {
        h.core.handle_tables(people_table(), h.now);
    }
    let rows: Vec<String> = h.got().into_iter().filter(|(k, _)| *k == 'D').map(|(_, v)| v).collect();
    assert_eq!(rows, ["7,****1111", "7,****2222", "7,****3333"]);
}

#[test]
fn a_reload_waits_for_the_statements_in_flight_and_the_next_batch_waits_for_the_reload() {
    let mut h = harness(CoreConfig::default());
    let masked = [("id", PEOPLE, 1), ("ssn", PEOPLE, 3)];
    // Two queries pipelined; the reload (without the mask) lands while both
    // are owed by the server.
    h.client(&query("SELECT id, ssn FROM people"));
    assert_eq!(h.sent().len(), 1);
    let unmasked = POLICY.split("[[mask]]").next().unwrap();
    let policy = Policy::from_toml_str(unmasked, "policy.toml").unwrap();
    h.core.set_engine(Arc::new(Engine::new(policy, Keys::default()).unwrap()));
    h.client(&query("SELECT id, ssn FROM people WHERE id = 2"));
    assert!(h.sent().is_empty(), "the next batch waits for the statement decided by the old engine");
    // The first result is masked by the engine that allowed it.
    h.server(&cat(&[row_description(&masked), rows_of(&[&["1", "123-45-6789"]]), complete("SELECT 1"), ready(b'I')]));
    if let [Need::ResolveTables { .. }] = h.needs().as_slice() {
        h.core.handle_tables(people_table(), h.now);
    }
    let got = h.got();
    assert_eq!(got[1], ('D', "1,****6789".into()), "{got:?}");
    // Then the waiting batch goes, decided and masked by the new one.
    assert_eq!(h.sent().len(), 1, "the waiting batch goes once the first is done");
    h.server(&cat(&[row_description(&masked), rows_of(&[&["2", "987-65-4321"]]), complete("SELECT 1"), ready(b'I')]));
    if let [Need::ResolveTables { .. }] = h.needs().as_slice() {
        h.core.handle_tables(people_table(), h.now);
    }
    let got = h.got();
    assert_eq!(got[1], ('D', "2,987-65-4321".into()), "{got:?}");
}

#[test]
fn an_unexpected_server_message_ends_the_session_with_an_error() {
    let mut h = harness(CoreConfig::default());
    h.server(&complete("SELECT 1"));
    let got = h.got();
    assert_eq!(got.len(), 1);
    assert!(got[0].1.starts_with("08P01 the gateway lost track of the protocol"), "{got:?}");
    assert!(matches!(h.core.end(), Some(SessionEnd::Unexpected(_))));
}

#[test]
fn a_reset_returns_to_the_startup_search_path_not_the_policy_s() {
    let mut h = harness_with(CoreConfig::default(), vec!["private".into()]);
    for sql in [
        "RESET search_path; SELECT * FROM customers",
        "SET search_path TO DEFAULT; SELECT * FROM customers",
        "SET search_path = public; RESET search_path; SELECT * FROM customers",
        "BEGIN; SET LOCAL search_path TO DEFAULT; SELECT * FROM customers; COMMIT",
    ] {
        h.client(&query(sql));
        let sent = h.sent();
        assert!(is_substitute(&sent[0]), "{sql}: {sent:?}");
        h.server(&cat(&[error("22P02"), ready(b'I')]));
        let got = h.got();
        assert!(got[0].1.contains("no-private"), "{sql}: {got:?}");
    }
}

const READ_BACK: &str = "SELECT pg_catalog.current_setting('search_path'), current_user";

/// Runs a simple query that the server answers with `tag` and status.
fn simple(h: &mut Harness, sql: &str, tag: &str, status: u8) {
    h.client(&query(sql));
    let sent = h.sent();
    assert!(is_query(&sent[0], sql), "{sent:?}");
    h.server(&cat(&[complete(tag), ready(status)]));
}

#[test]
fn settings_are_read_back_after_a_rollback_to_savepoint_that_undid_one() {
    let mut h = harness(CoreConfig::default());
    simple(&mut h, "BEGIN", "BEGIN", b'T');
    simple(&mut h, "SAVEPOINT s", "SAVEPOINT", b'T');
    h.got();
    simple(&mut h, "SET search_path = private", "SET", b'T');
    // The session reads the setting back before the client goes on.
    let sent = h.sent();
    assert!(is_query(&sent[0], READ_BACK), "{sent:?}");
    h.server(&cat(&[row_description(&[("current_setting", 0, 0)]), rows_of(&[&["private"]]), complete("SELECT 1")]));
    h.server(&ready(b'T'));
    assert_eq!(h.got(), vec![('C', "SET".into()), ('Z', "T".into())]);
    simple(&mut h, "ROLLBACK TO s", "ROLLBACK", b'T');
    let sent = h.sent();
    assert!(is_query(&sent[0], READ_BACK), "a ROLLBACK TO undid the SET: read it back: {sent:?}");
    h.server(&cat(&[row_description(&[("current_setting", 0, 0)]), rows_of(&[&["public"]]), complete("SELECT 1")]));
    h.server(&ready(b'T'));
    assert_eq!(h.got(), vec![('C', "ROLLBACK".into()), ('Z', "T".into())]);
    h.client(&query("SELECT * FROM customers"));
    assert!(is_query(&h.sent()[0], "SELECT * FROM customers"), "back on public");
}

#[test]
fn a_rollback_in_an_extended_batch_undoes_its_set_as_the_implicit_block_does() {
    let mut h = harness_with(CoreConfig::default(), vec!["private".into()]);
    h.client(&cat(&[
        parse("", "SET search_path = public"),
        bind("", "", &[]),
        execute(""),
        parse("r", "ROLLBACK"),
        bind("", "r", &[]),
        execute(""),
        parse("s", "SELECT * FROM customers"),
        bind("", "s", &[]),
        execute(""),
        sync(),
    ]));
    let sent = h.sent();
    assert!(
        sent.iter().any(is_substitute),
        "the SELECT reads private.customers on the server (the ROLLBACK undid the SET): {sent:?}"
    );
    assert!(!sent
        .iter()
        .any(|m| matches!(m, Frontend::Parse { sql, .. } if sql.as_str() == "SELECT * FROM customers")));
}

#[test]
fn statements_the_server_skipped_leave_no_transaction_behind() {
    let mut h = harness_with(CoreConfig::default(), vec!["private".into()]);
    h.client(&query("SELECT 1/0; BEGIN; SET search_path = public"));
    assert!(is_query(&h.sent()[0], "SELECT 1/0; BEGIN; SET search_path = public"));
    // The first statement fails: nothing after it runs, the server is idle.
    h.server(&cat(&[error("22012"), ready(b'I')]));
    let sent = h.sent();
    assert!(is_query(&sent[0], READ_BACK), "{sent:?}");
    h.server(&cat(&[row_description(&[("current_setting", 0, 0)]), rows_of(&[&["private"]]), complete("SELECT 1")]));
    h.server(&ready(b'I'));
    h.got();
    h.client(&query("SELECT 1; COMMIT; SELECT * FROM customers"));
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "the server reads private.customers: {sent:?}");
}

// ----------------------------------------------------------------- records

#[test]
fn a_batch_is_forwarded_only_when_its_records_are_persisted() {
    let mut h = harness(recording());
    h.client(&cat(&[parse("", "SELECT id FROM orders WHERE id = $1"), bind("", "", &["42"]), execute(""), sync()]));
    assert!(h.sent().is_empty(), "nothing is forwarded before the records are written");
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Statement(r)] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!(&*r.sql, "SELECT id FROM orders WHERE id = $1");
    assert_eq!(r.parameters, vec![Some("42".to_string())]);
    assert_eq!(r.session, 7);
    // Messages sent meanwhile wait too.
    h.client(&query("SELECT 2"));
    assert!(h.sent().is_empty());
    h.core.handle_persisted(*batch, Ok(()), h.now);
    let sent = h.sent();
    assert!(matches!(sent[0], Frontend::Parse { .. }), "{sent:?}");
    assert!(matches!(sent.last().unwrap(), Frontend::Sync));
    assert!(!sent.iter().any(|m| is_query(m, "SELECT 2")), "the next batch waits for its own records");
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::Persist { .. }]), "{needs:?}");
}

/// Sends a simple query whose records the sink fails to write (a full
/// disk): the substitute goes instead, the server fails it and answers
/// `status`, and the client gets 58030. Returns the batch's records and
/// the client's error.
fn refused_by_the_sink(h: &mut Harness, sql: &str, status: u8) -> (Vec<Record>, String) {
    h.client(&query(sql));
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{sql}: {needs:?}") };
    h.core.handle_persisted(*batch, Err(RecordError::unwritten("disk full")), h.now);
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sql}: {sent:?}");
    h.server(&cat(&[error("22P02"), ready(status)]));
    let got = h.got();
    assert!(got[0].1.starts_with("58030"), "{sql}: {got:?}");
    (records.clone(), got[0].1.clone())
}

/// Runs a simple query in a recording session: its records persisted,
/// then the server gives `answer`. Returns the statement's record.
fn recorded(h: &mut Harness, sql: &str, answer: &[u8]) -> StatementRecord {
    h.client(&query(sql));
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{sql}: {needs:?}") };
    let r = statement_of(records).clone();
    h.core.handle_persisted(*batch, Ok(()), h.now);
    let sent = h.sent();
    assert!(sent.iter().any(|m| is_query(m, sql)), "{sql}: {sent:?}");
    h.server(answer);
    h.got();
    r
}

#[test]
fn a_sink_failure_refuses_the_batch_with_58030_and_the_session_goes_on() {
    let mut h = harness(recording());
    let (_, message) = refused_by_the_sink(&mut h, "SET search_path = private", b'I');
    assert!(message.contains("disk full"), "{message}");
    // The settings the batch would have changed are read back.
    read_back(&mut h, "public");
    h.got();
    // The SET never ran: unqualified names still resolve in public.
    h.client(&query("SELECT * FROM customers"));
    let needs = h.needs();
    let [Need::Persist { records, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Statement(r)] = records.as_slice() else { panic!() };
    assert_eq!(r.decision.statements[0].facts.tables, vec!["public.customers".to_string()]);
}

#[test]
fn pipelined_batches_wait_their_turn_and_a_refused_one_leaves_nothing_to_the_next() {
    // One batch waits for its records at a time; the next is read only
    // once it went, into the memory the one before it left.
    let mut h = harness(recording());
    h.client(&cat(&[
        query("SELECT 1"),
        parse("", "SELECT 2"),
        bind("", "", &[]),
        execute(""),
        flush(),
        sync(),
        parse("", "SELECT 3"),
        bind("", "", &[]),
        execute(""),
        flush(),
    ]));
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    assert!(h.sent().is_empty(), "nothing goes before its records");
    h.core.handle_persisted(*batch, Ok(()), h.now);
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(is_query(&sent[0], "SELECT 1"), "{sent:?}");
    // The extended block up to its Flush is the next batch: refused.
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_persisted(*batch, Err(RecordError::unwritten("disk full")), h.now);
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
    // The Sync after it goes at once (nothing to record), and the last
    // block waits for its records as the first did: nothing of the
    // refused one's failure is left to it.
    assert_eq!(kinds(&sent[1..]), vec!["H", "S"], "Flush, Sync: {sent:?}");
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{needs:?}") };
    assert_eq!(&*statement_of(records).sql, "SELECT 3");
    h.core.handle_persisted(*batch, Ok(()), h.now);
    assert_eq!(kinds(&h.sent()), vec!["P", "B", "D", "E", "H"]);
    h.client(&cat(&[bind("", "", &[]), execute(""), sync()]));
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_persisted(*batch, Ok(()), h.now);
    assert_eq!(kinds(&h.sent()), vec!["B", "D", "E", "S"]);
}

#[test]
fn a_refused_commit_restores_the_transaction_it_ended_not_an_earlier_one() {
    // The copy of the session a COMMIT keeps is made in the memory of an
    // earlier COMMIT's copy, which holds that transaction's paths.
    let mut h = harness(recording());
    recorded(&mut h, "BEGIN", &cat(&[complete("BEGIN"), ready(b'T')]));
    recorded(&mut h, "COMMIT", &cat(&[complete("COMMIT"), ready(b'I')]));
    recorded(&mut h, "SET search_path = private", &cat(&[complete("SET"), ready(b'I')]));
    read_back(&mut h, "private");
    h.got();
    recorded(&mut h, "BEGIN", &cat(&[complete("BEGIN"), ready(b'T')]));
    refused_by_the_sink(&mut h, "COMMIT", b'E');
    // Still in the second transaction, begun on `private`: its ROLLBACK
    // returns there, not to the first one's `public`.
    recorded(&mut h, "ROLLBACK", &cat(&[complete("ROLLBACK"), ready(b'I')]));
    h.client(&query("SELECT * FROM customers"));
    let needs = h.needs();
    let [Need::Persist { records, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    let r = statement_of(records);
    assert_eq!(r.decision.statements[0].facts.tables, vec!["private.customers".to_string()]);
}

#[test]
fn a_refused_batch_restores_the_session_as_the_batches_before_it_left_it() {
    // Each batch that changes the engine's session keeps a copy of it from
    // before, to restore should the batch not run; the copy of a batch
    // that ran is the memory the next copy is made in.
    let mut h = harness(recording());
    recorded(&mut h, "PREPARE a AS SELECT * FROM customers", &cat(&[complete("PREPARE"), ready(b'I')]));
    refused_by_the_sink(&mut h, "PREPARE b AS SELECT * FROM orders", b'I');
    // `a` is known as the first batch left it; `b` never ran.
    for (sql, known) in [("EXECUTE a", true), ("EXECUTE b", false)] {
        let (records, _) = refused_by_the_sink(&mut h, sql, b'I');
        let [Record::Statement(r)] = records.as_slice() else { panic!("{records:?}") };
        let tables = &r.decision.statements[0].facts.tables;
        assert_eq!(tables.contains(&"public.customers".to_string()), known, "{sql}: {}", r.decision.to_json());
        assert!(!tables.contains(&"public.orders".to_string()), "{sql}: {}", r.decision.to_json());
    }
}

#[test]
fn a_refused_batch_whose_records_are_in_the_log_has_results_that_say_it_did_not_run() {
    // Not written (a full disk): nothing names the statement afterwards.
    let mut h = harness(recording());
    refused_by_the_sink(&mut h, "UPDATE orders SET total = 0 WHERE id = 1", b'I');
    let needs = h.needs();
    assert!(
        !needs
            .iter()
            .any(|n| matches!(n, Need::Log { records } if records.iter().any(|r| matches!(r, Record::Result(_))))),
        "{needs:?}"
    );
    // Written, not synced: the statement's record is in the log, and its
    // result says it did not run, and why.
    h.client(&query("UPDATE orders SET total = 1 WHERE id = 1"));
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Statement(statement)] = records.as_slice() else { panic!("{records:?}") };
    let sequence = statement.sequence;
    h.core.handle_persisted(*batch, Err(RecordError::unsynced("syncing the audit log: I/O error")), h.now);
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    assert!(h.got()[0].1.starts_with("58030"));
    let needs = h.needs_after_results_wait();
    let results: Vec<_> = needs
        .iter()
        .filter_map(|n| match n {
            Need::Log { records } => Some(records.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|r| match r {
            Record::Result(r) => Some(r),
            _ => None,
        })
        .collect();
    let [result] = results.as_slice() else { panic!("{needs:?}") };
    assert_eq!(result.sequence, sequence);
    assert!(!result.ran);
    let error = result.error.as_ref().expect("the refusal");
    assert_eq!(error.code, "58030");
    assert!(error.message.contains("I/O error"), "{}", error.message);
}

#[test]
fn a_cancel_while_the_records_are_written_refuses_the_batch() {
    let mut h = harness(recording());
    h.client(&query("UPDATE orders SET total = 0 WHERE id = 1"));
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_cancel(h.now);
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "the UPDATE never reaches the server: {sent:?}");
    // The sink's late acknowledgement changes nothing.
    h.core.handle_persisted(*batch, Ok(()), h.now);
    assert!(h.sent().is_empty());
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    assert!(h.got()[0].1.starts_with("57014"));
}

#[test]
fn a_refused_extended_batch_forgets_the_statements_it_defined() {
    let mut h = harness(recording());
    h.client(&cat(&[parse("s1", "SELECT 1"), sync()]));
    let needs = h.needs();
    // A Parse alone has no record (the Execute has): the batch is forwarded at once.
    assert!(needs.is_empty(), "{needs:?}");
    h.sent();
    h.client(&cat(&[parse("s2", "SELECT 2"), bind("", "s2", &[]), execute(""), sync()]));
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_persisted(*batch, Err(RecordError::unwritten("no space")), h.now);
    let sent = h.sent();
    assert!(is_substitute(&sent[0]));
    assert!(matches!(sent[1], Frontend::Sync));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    h.got();
    h.client(&cat(&[bind("", "s2", &[]), execute(""), sync()]));
    assert!(is_substitute(&h.sent()[0]), "s2 never reached the server");
}

/// One execution of prepared statement `s` through a recording core:
/// its statement record, after the sink answered `outcome`.
fn execute_recorded(h: &mut Harness, id: &str, outcome: Result<(), RecordError>) -> StatementRecord {
    h.client(&cat(&[bind("", "s", &[id]), execute(""), sync()]));
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{needs:?}") };
    let r = statement_of(records);
    let failed = outcome.is_err();
    h.core.handle_persisted(*batch, outcome, h.now);
    h.sent();
    if failed {
        h.server(&cat(&[error("22P02"), ready(b'I')]));
    } else {
        // The gateway asked for the portal's description.
        h.server(&cat(&[raw(b'2', b""), row_description(&[("total", 0, 0)]), complete("SELECT 0"), ready(b'I')]));
    }
    h.got();
    r.clone()
}

/// The statement record of a simple query, written at once; the server
/// then answers `tag` and is left in transaction status `status`.
fn recorded_and_answered(h: &mut Harness, sql: &str, tag: &str, status: u8) -> StatementRecord {
    h.client(&query(sql));
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{sql}: {needs:?}") };
    let r = statement_of(records).clone();
    h.core.handle_persisted(*batch, Ok(()), h.now);
    h.sent();
    h.server(&cat(&[complete(tag), ready(status)]));
    h.got();
    r
}

/// With `durability = "commit"` a record is synced before a statement
/// that can make a change durable: a `COMMIT`, or a write outside a
/// transaction block; not a read, nor a write inside a block. A sink that
/// syncs alike before every statement, or never, does not ask, and the
/// session does not work it out.
#[test]
fn records_say_which_statements_can_make_a_change_durable_when_the_sink_asks() {
    let script = [
        ("SELECT total FROM orders WHERE id = 1", "SELECT 1", b'I', false),
        ("UPDATE orders SET total = 2 WHERE id = 1", "UPDATE 1", b'I', true),
        ("BEGIN", "BEGIN", b'T', false),
        ("UPDATE orders SET total = 3 WHERE id = 1", "UPDATE 1", b'T', false),
        ("COMMIT", "COMMIT", b'I', true),
    ];
    for marks in [true, false] {
        let mut h = harness(CoreConfig { mark_durable: marks, ..recording() });
        for (sql, tag, status, durable) in script {
            let record = recorded_and_answered(&mut h, sql, tag, status);
            assert_eq!(record.durable, durable && marks, "{sql} (marks: {marks})");
        }
    }
}

/// Statement records say whether their policy may differ from the one
/// the session started with: not before a reload, nor after one to the
/// same policy; after one to another policy, yes.
#[test]
fn records_say_when_their_policy_is_not_the_session_s_first() {
    let mut h = harness(recording());
    let sql = "SELECT total FROM orders WHERE id = 1";
    let first = query_recorded(&mut h, sql);
    assert!(!first.policy_changed, "{first:?}");
    let same = Policy::from_toml_str(POLICY, "policy.toml").unwrap();
    h.core.set_engine(Arc::new(Engine::new(same, Keys::default()).unwrap()));
    let after_same = query_recorded(&mut h, sql);
    assert!(!after_same.policy_changed, "the same policy reloaded");
    assert_eq!(after_same.policy, first.policy);
    let other = POLICY.split("[[mask]]").next().unwrap();
    let other = Policy::from_toml_str(other, "policy.toml").unwrap();
    h.core.set_engine(Arc::new(Engine::new(other, Keys::default()).unwrap()));
    let after_other = query_recorded(&mut h, sql);
    assert!(after_other.policy_changed, "{after_other:?}");
    assert_ne!(after_other.policy, first.policy);
}

#[test]
fn a_prepared_statement_executed_again_names_the_record_of_its_decision() {
    let mut h = harness(recording());
    h.client(&cat(&[parse("s", "SELECT total FROM orders WHERE id = $1"), sync()]));
    h.sent();
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    let first = execute_recorded(&mut h, "1", Ok(()));
    assert_eq!(first.decision_as_in, None);
    let second = execute_recorded(&mut h, "2", Ok(()));
    assert!(Arc::ptr_eq(&first.decision, &second.decision));
    assert_eq!(second.decision_as_in, Some(first.sequence));
    // A batch whose records were not written: later records cannot name
    // them, so the next one carries the decision again.
    let lost = execute_recorded(&mut h, "3", Err(RecordError::unwritten("no space")));
    assert_eq!(lost.decision_as_in, Some(first.sequence));
    let after = execute_recorded(&mut h, "4", Ok(()));
    assert_eq!(after.decision_as_in, None);
    let again = execute_recorded(&mut h, "5", Ok(()));
    assert_eq!(again.decision_as_in, Some(after.sequence));
}

/// A simple query through a recording core: its statement record.
fn query_recorded(h: &mut Harness, sql: &str) -> StatementRecord {
    recorded(h, sql, &cat(&[row_description(&[("total", 0, 0)]), complete("SELECT 0"), ready(b'I')]))
}

/// A completed result goes with the session's next statement record,
/// ahead of it, in one hand-over: nothing is handed over alone meanwhile.
#[test]
fn a_result_goes_with_the_next_statement_record() {
    let mut h = harness(recording());
    let first = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 1");
    let needs = h.needs();
    assert!(needs.is_empty(), "{needs:?}");
    assert_eq!(h.core.poll_timeout(), Some(h.now + RESULTS_WAIT));
    h.client(&query("SELECT total FROM orders WHERE id = 2"));
    let needs = h.needs();
    let [Need::Persist { records, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Result(result), Record::Statement(next)] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!(
        (result.sequence, result.ran, result.tags.iter().collect::<Vec<_>>()),
        (first.sequence, true, vec!["SELECT 0"])
    );
    assert_eq!(next.sequence, first.sequence + 1);
    assert_eq!(h.core.poll_timeout(), None, "nothing waits any more");
}

/// A result no statement follows is handed over alone once it waited
/// [`RESULTS_WAIT`], or at once when the driver releases it (its session
/// ends).
#[test]
fn a_result_no_statement_follows_is_handed_over_alone() {
    let mut h = harness(recording());
    let first = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 1");
    h.core.handle_timeout(h.now + RESULTS_WAIT - Duration::from_millis(1));
    let needs = h.needs();
    assert!(needs.is_empty(), "not yet: {needs:?}");
    let needs = h.needs_after_results_wait();
    let [Need::Log { records }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Result(result)] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!(result.sequence, first.sequence);
    assert_eq!(h.core.poll_timeout(), None);

    let second = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 2");
    h.core.release_results();
    let needs = h.needs();
    let [Need::Log { records }] = needs.as_slice() else { panic!("{needs:?}") };
    let [Record::Result(result)] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!(result.sequence, second.sequence);
}

#[test]
fn a_query_of_a_shape_seen_before_names_the_record_of_its_decision() {
    let mut h = harness(recording());
    let first = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 7");
    assert_eq!(first.decision_as_in, None);
    // Another constant, of another length: the same decision but for where
    // the statement lies in its text, which records do not hold.
    let second = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 123456");
    assert_ne!(first.decision.statements[0].span, second.decision.statements[0].span);
    assert_eq!(second.decision_as_in, Some(first.sequence));
    // The engine's cache keeps a shape from its second text on, and
    // answers later ones from that: each still names the first record,
    // whichever decision the session compares them with.
    for sql in [
        "SELECT total FROM orders WHERE id = 8",
        "SELECT total FROM orders WHERE id = 123457",
        "SELECT total FROM orders WHERE id = 99",
        "SELECT total FROM orders WHERE id = 9",
    ] {
        let later = query_recorded(&mut h, sql);
        assert_eq!(later.decision_as_in, Some(first.sequence), "{sql}");
        assert!(later.decision.same_apart_from_spans(&first.decision), "{sql}");
    }
    // Another column read: a decision of its own.
    let other = query_recorded(&mut h, "SELECT id FROM orders WHERE id = 7");
    assert_eq!(other.decision_as_in, None);
}

/// The session remembers the decisions it recorded in full that it used
/// last: one named again is remembered longer than one not used since.
#[test]
fn the_decisions_a_session_used_last_are_the_ones_it_remembers() {
    let mut h = harness(recording());
    let a = query_recorded(&mut h, "SELECT total FROM orders WHERE id = 1");
    let b = query_recorded(&mut h, "SELECT id FROM orders WHERE id = 1");
    assert_eq!((a.decision_as_in, b.decision_as_in), (None, None));
    assert_eq!(query_recorded(&mut h, "SELECT total FROM orders WHERE id = 2").decision_as_in, Some(a.sequence));
    // Seven shapes more: with the two above, one more than a session
    // remembers.
    for sql in [
        "SELECT id, total FROM orders WHERE id = 1",
        "SELECT total FROM orders WHERE id > 1",
        "SELECT total FROM orders WHERE id < 1",
        "SELECT total FROM orders ORDER BY id LIMIT 1",
        "SELECT count(*) FROM orders",
        "SELECT max(total) FROM orders",
        "SELECT min(total) FROM orders",
    ] {
        assert_eq!(query_recorded(&mut h, sql).decision_as_in, None, "{sql}");
    }
    // The first shape was named again after the second: it is kept, the
    // second is not.
    assert_eq!(query_recorded(&mut h, "SELECT total FROM orders WHERE id = 3").decision_as_in, Some(a.sequence));
    assert_eq!(query_recorded(&mut h, "SELECT id FROM orders WHERE id = 3").decision_as_in, None);
}

// ------------------------------------------------------------------- holds

fn held_delete(h: &mut Harness) -> u64 {
    h.client(&query("DELETE FROM orders WHERE id = 1"));
    assert!(h.sent().is_empty(), "a held statement is not forwarded");
    assert_eq!(h.core.activity(), Activity::Held);
    let needs = h.needs();
    let [Need::Hold { hold, request }] = needs.as_slice() else { panic!("{needs:?}") };
    assert_eq!(&*request.statements[0].sql, "DELETE FROM orders WHERE id = 1");
    assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    // The registry shows what the session waits on.
    let fingerprint = &request.statements[0].decision.statements[0].facts.fingerprint;
    assert_eq!(h.core.current_fingerprint(), u64::from_str_radix(fingerprint, 16).ok());
    assert!(h.core.current_fingerprint().is_some());
    *hold
}

#[test]
fn a_released_hold_is_forwarded() {
    let mut h = harness(holding());
    let hold = held_delete(&mut h);
    // The client's next message waits behind the hold.
    h.client(&query("SELECT 1"));
    assert!(h.sent().is_empty());
    h.core.handle_hold_outcome(hold, HoldOutcome::Release, h.now);
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(is_query(&sent[0], "DELETE FROM orders WHERE id = 1"), "{sent:?}");
    assert!(is_query(&sent[1], "SELECT 1"), "{sent:?}");
    h.server(&cat(&[complete("DELETE 1"), ready(b'I')]));
    assert_eq!(h.got(), vec![('C', "DELETE 1".into()), ('Z', "I".into())]);
}

#[test]
fn a_refused_hold_answers_42501_and_the_session_goes_on() {
    let mut h = harness(holding());
    let hold = held_delete(&mut h);
    h.core.handle_hold_outcome(hold, HoldOutcome::Refuse { reason: "not today (bob)".into() }, h.now);
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got[0].1.starts_with("42501 the statement was not approved: not today (bob)"), "{got:?}");
    assert_eq!(h.core.activity(), Activity::Idle);
}

#[test]
fn a_refused_hold_is_recorded_as_not_run() {
    let mut h = harness(CoreConfig { record: true, ..holding() });
    let hold = held_delete(&mut h);
    h.core.handle_hold_outcome(hold, HoldOutcome::Refuse { reason: "not today (bob)".into() }, h.now);
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    h.got();
    let logged: Vec<Record> = h
        .needs_after_results_wait()
        .into_iter()
        .filter_map(|n| match n {
            Need::Log { records } => Some(records),
            _ => None,
        })
        .flatten()
        .collect();
    let [Record::Statement(statement), Record::Result(result)] = logged.as_slice() else { panic!("{logged:?}") };
    assert_eq!(&*statement.sql, "DELETE FROM orders WHERE id = 1");
    assert_eq!(result.sequence, statement.sequence);
    assert!(!result.ran);
    let error = result.error.as_ref().expect("the refusal");
    assert_eq!(error.code, "42501");
    assert!(error.message.contains("not today (bob)"), "{}", error.message);
}

#[test]
fn a_hold_times_out_with_an_error_naming_the_timeout() {
    let mut h = harness(holding());
    let hold = held_delete(&mut h);
    h.core.handle_timeout(h.now + Duration::from_secs(59));
    assert!(h.sent().is_empty(), "not yet");
    h.core.handle_timeout(h.now + Duration::from_secs(60));
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::EndHold { hold: e }] if *e == hold), "{needs:?}");
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got[0].1.starts_with("57014"), "{got:?}");
    assert!(got[0].1.contains("hold timeout (1m)"), "{got:?}");
    // A late outcome is ignored.
    h.core.handle_hold_outcome(hold, HoldOutcome::Release, h.now);
    assert!(h.sent().is_empty());
}

#[test]
fn a_cancel_ends_a_hold_with_57014() {
    let mut h = harness(holding());
    let hold = held_delete(&mut h);
    h.core.handle_cancel(h.now);
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::EndHold { hold: e }] if *e == hold), "{needs:?}");
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    assert!(h.got()[0].1.starts_with("57014 canceling statement due to user request"));
}

#[test]
fn a_client_that_leaves_during_a_hold_is_noticed_at_once() {
    let mut h = harness(holding());
    let hold = held_delete(&mut h);
    assert!(h.core.wants_client_data(), "a held session keeps reading the client");
    h.core.handle_client_eof();
    assert_eq!(h.core.end(), Some(&SessionEnd::ClientGone));
    let needs = h.needs();
    assert!(matches!(needs.as_slice(), [Need::EndHold { hold: e }] if *e == hold), "{needs:?}");
    let sent = h.sent();
    assert!(matches!(sent.as_slice(), [Frontend::Terminate]), "the held statement never ran: {sent:?}");
}

/// A batch the client ends with `Terminate` instead of `Sync` (`Parse`,
/// `Bind`, `Execute`, `Terminate`): a statement in it that needs approval
/// does not run, nor does anything else of the batch, and the server gets
/// the Terminate.
#[test]
fn a_batch_ended_by_terminate_does_not_skip_the_hold() {
    let mut h = harness(holding());
    let terminate = raw(b'X', b"");
    h.client(&cat(&[parse("", "DELETE FROM orders WHERE id = 1"), bind("", "", &[]), execute(""), terminate]));
    assert_eq!(h.core.end(), Some(&SessionEnd::Terminated));
    assert!(h.needs().iter().all(|n| !matches!(n, Need::Hold { .. })), "no hold for a client that left");
    let sent = h.sent();
    assert!(matches!(sent.last(), Some(Frontend::Terminate)), "{sent:?}");
    assert!(
        !sent.iter().any(|m| matches!(m, Frontend::Parse { sql, .. } if sql.contains("DELETE"))),
        "the statement that needs approval never ran: {sent:?}"
    );
}

/// The same batch in a recording session: its records are written before
/// any of it is forwarded, as for a batch ended by `Sync`.
#[test]
fn a_batch_ended_by_terminate_is_recorded_before_it_runs() {
    let mut h = harness(recording());
    let terminate = raw(b'X', b"");
    h.client(&cat(&[parse("", "SELECT id FROM orders WHERE id = $1"), bind("", "", &["3"]), execute(""), terminate]));
    assert!(h.sent().is_empty(), "nothing is forwarded before the records are written");
    let needs = h.needs();
    let [Need::Persist { batch, records }] = needs.as_slice() else { panic!("{needs:?}") };
    assert_eq!(&*statement_of(records).sql, "SELECT id FROM orders WHERE id = $1");
    assert_eq!(h.core.end(), None);
    h.core.handle_persisted(*batch, Ok(()), h.now);
    let sent = h.sent();
    assert!(matches!(sent.first(), Some(Frontend::Parse { .. })), "{sent:?}");
    assert!(matches!(sent.last(), Some(Frontend::Terminate)), "{sent:?}");
    assert_eq!(h.core.end(), Some(&SessionEnd::Terminated));
}

#[test]
fn a_client_that_floods_during_a_hold_gets_an_error() {
    let mut h = harness(CoreConfig { max_buffered_bytes: 1024, ..holding() });
    held_delete(&mut h);
    h.client(&query(&format!("SELECT '{}'", "x".repeat(2000))));
    let got = h.got();
    assert!(got[0].1.starts_with("53400"), "{got:?}");
    assert_eq!(h.core.end(), Some(&SessionEnd::Flooded(1024)));
}

#[test]
fn an_execute_is_held_with_its_parameters() {
    let mut h = harness(holding());
    h.client(&cat(&[parse("d", "DELETE FROM orders WHERE id = $1"), sync()]));
    assert!(h.needs().is_empty(), "Parse alone is not held");
    h.sent();
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    h.client(&cat(&[bind("", "d", &["2"]), execute(""), sync()]));
    let needs = h.needs();
    let [Need::Hold { request, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    assert_eq!(request.statements[0].parameters, vec![Some("2".to_string())]);
    assert!(h.sent().is_empty());
}

#[test]
fn without_holds_require_approval_is_refused() {
    let mut h = harness(CoreConfig::default());
    h.client(&query("DELETE FROM orders WHERE id = 1"));
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    assert!(h.got()[0].1.contains("approvals are not available"));
}

#[test]
fn invalid_client_bytes_end_the_session_with_08p01() {
    let mut h = harness(CoreConfig::default());
    h.client(b"?\0\0\0\x04");
    let got = h.got();
    assert!(got[0].1.starts_with("08P01 invalid message"), "{got:?}");
    assert!(matches!(h.core.end(), Some(SessionEnd::ClientProtocol(_))));
}

// ------------------------------------------------- simple queries inside blocks

/// A settings-changing simple query inside a block the server fails. Sent
/// before the error came back, it runs after the gateway's own Sync and the
/// settings are read back; sent after, it is skipped (as the server skips
/// it). Either way the client's Sync reaches the server.
#[test]
fn a_set_inside_a_failed_block_does_not_stall_the_session() {
    for query_first in [true, false] {
        let mut h = harness(CoreConfig::default());
        h.client(&cat(&[parse("", "SELECT * FROM public.missing"), bind("", "", &[]), execute(""), flush()]));
        h.sent();
        if query_first {
            h.client(&cat(&[query("SET search_path TO public"), sync()]));
            assert_eq!(kinds(&h.sent()), ["S", "Q"]);
            h.server(&cat(&[error("42P01"), ready(b'I'), complete("SET"), ready(b'I')]));
            // The settings are read back before the client's Sync goes on.
            read_back(&mut h, "public");
        } else {
            h.server(&error("42P01"));
            h.client(&cat(&[query("SET search_path TO public"), sync()]));
        }
        assert_eq!(kinds(&h.sent()), ["S"], "query first: {query_first}");
        h.server(&ready(b'I'));
        let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
        let expected = if query_first { vec!['E', 'C', 'Z', 'Z'] } else { vec!['E', 'Z'] };
        assert_eq!(got, expected, "query first: {query_first}");
        assert_eq!(h.core.activity(), Activity::Idle);
    }
}

/// A simple query inside a block ends the block's implicit transaction, as
/// on the server: a `SET LOCAL` made in the block ends there, and a
/// `ROLLBACK` after it cannot undo a `SET` it committed. What follows is
/// judged on the path the server has.
#[test]
fn a_simple_query_inside_a_block_ends_its_implicit_transaction() {
    /// `set` in a block a simple query ends (after the gateway's Sync), the
    /// server reading `path` back, then `rest`: what the core sent then.
    fn after_set_and_query(h: &mut Harness, set: &str, rest: &[Vec<u8>], path: &str) -> Vec<Frontend> {
        let mut messages = vec![parse("", set), bind("", "", &[]), execute(""), flush(), query("SELECT 1")];
        messages.extend_from_slice(rest);
        h.client(&cat(&messages));
        assert_eq!(kinds(&h.sent()), ["P", "B", "D", "E", "H", "S"]);
        // The settings are read back before the query goes on.
        h.server(&cat(&[raw(b'1', b""), raw(b'2', b""), raw(b'n', b""), complete("SET"), ready(b'I')]));
        read_back(h, path);
        h.sent()
    }
    let read = [parse("s", "SELECT * FROM customers"), bind("", "s", &[]), execute(""), sync()];
    let mut h = harness_with(CoreConfig::default(), vec!["private".into()]);
    let sent = after_set_and_query(&mut h, "SET LOCAL search_path TO public", &read, "private");
    assert!(is_query(&sent[0], "SELECT 1"), "{sent:?}");
    assert!(sent.iter().any(is_substitute), "the path is private again: {:?}", kinds(&sent));

    let mut h = harness(CoreConfig::default());
    let rollback_and_read = [&[parse("", "ROLLBACK"), bind("", "", &[]), execute("")][..], &read[..]].concat();
    let sent = after_set_and_query(&mut h, "SET search_path TO private", &rollback_and_read, "private");
    assert!(sent.iter().any(is_substitute), "the SET was committed: {:?}", kinds(&sent));
}

/// A recorded block ended by a simple query, whose records cannot be
/// written: the block is refused and the gateway's Sync is answered to the
/// gateway; the query and the client's Sync are then answered as usual.
#[test]
fn a_refused_block_ended_by_a_simple_query_answers_one_ready_per_client_sync() {
    let mut h = harness(recording());
    h.client(&cat(&[parse("", "SELECT 2"), bind("", "", &[]), execute(""), query("SELECT 3")]));
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_persisted(*batch, Err(RecordError::unwritten("disk full")), h.now);
    let sent = h.sent();
    assert!(is_substitute(&sent[0]), "{sent:?}");
    assert_eq!(kinds(&sent), ["P", "S"]);
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert_eq!(got.len(), 1, "the refusal, and no ReadyForQuery: {got:?}");
    assert!(got[0].1.starts_with("58030"), "{got:?}");
    // The query, now a batch of its own.
    let needs = h.needs();
    let [Need::Persist { batch, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_persisted(*batch, Ok(()), h.now);
    assert_eq!(kinds(&h.sent()), ["Q"]);
    h.server(&cat(&[row_description(&[("x", 0, 0)]), rows_of(&[&["3"]]), complete("SELECT 1"), ready(b'I')]));
    assert_eq!(h.got().into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!['T', 'D', 'C', 'Z']);
}

/// A Sync sent during COPY FROM STDIN after data the server fails on: the
/// server would answer it (it left COPY before reading it), the gateway
/// could not know, and every later answer would be one statement off. The
/// Sync is not sent (the server ignores it during COPY anyway).
#[test]
fn a_sync_after_bad_copy_data_keeps_the_answers_in_step() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[
        query("COPY orders FROM STDIN"),
        copy_data(b"x\t1\n"),
        sync(),
        copy_done(),
        query("SELECT ssn || '' AS x FROM people"),
        query("SELECT name AS x FROM people"),
    ]));
    assert_eq!(kinds(&h.sent()), ["Q", "d", "c", "Q", "Q"]);
    h.server(&cat(&[
        copy_in_response(2),
        error("22P02"),
        ready(b'I'),
        one_value_answer("123-45-6789"),
        one_value_answer("Ada"),
    ]));
    let got = h.got();
    assert!(!got.iter().any(|(_, d)| d.contains("6789")), "{got:?}");
    assert!(got.contains(&('D', "[redacted]".into())) && got.contains(&('D', "Ada".into())), "{got:?}");
    assert!(h.core.end().is_none(), "{:?}", h.core.end());
}

/// A held statement refused after a `SET` earlier in its block (before a
/// Flush): the refusal fails the block on the server, which undoes the
/// `SET`, so the settings are read back before anything else is judged.
#[test]
fn a_refused_hold_after_a_set_in_its_block_reads_the_settings_back() {
    let mut h = harness_with(holding(), vec!["private".into()]);
    h.client(&cat(&[parse("", "SET search_path TO public"), bind("", "", &[]), execute(""), flush()]));
    assert_eq!(kinds(&h.sent()), ["P", "B", "D", "E", "H"]);
    h.server(&cat(&[raw(b'1', b""), raw(b'2', b""), raw(b'n', b""), complete("SET")]));
    h.got();
    h.client(&cat(&[
        parse("d", "DELETE FROM orders WHERE id = 1"),
        bind("", "d", &[]),
        execute(""),
        query("SELECT * FROM customers"),
    ]));
    assert!(h.sent().is_empty());
    let needs = h.needs();
    let [Need::Hold { hold, .. }] = needs.as_slice() else { panic!("{needs:?}") };
    h.core.handle_hold_outcome(*hold, HoldOutcome::Refuse { reason: "no".into() }, h.now);
    let sent = h.sent();
    assert_eq!(kinds(&sent), ["P", "S"], "only the refusal's substitute and the gateway's Sync");
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    // The path is read back: the server is on `private` again.
    read_back(&mut h, "private");
    let sent = h.sent();
    assert!(sent.iter().any(is_substitute), "customers is private.customers now: {:?}", kinds(&sent));
}

/// An extended-protocol COPY that fails on its data: the server drops
/// everything up to a Sync. A Sync the client sends after the error, or
/// sent during the data before it (held back then), ends it.
#[test]
fn a_failed_extended_copy_is_ended_by_the_client_s_sync() {
    for sync_first in [false, true] {
        let mut h = harness(CoreConfig::default());
        h.client(&cat(&[parse("", "COPY orders FROM STDIN"), bind("", "", &[]), execute(""), flush()]));
        h.sent();
        h.server(&cat(&[raw(b'1', b""), raw(b'2', b""), raw(b'n', b""), copy_in_response(2)]));
        h.got();
        h.client(&copy_data(b"x\t1\n"));
        if sync_first {
            h.client(&sync());
        }
        assert_eq!(kinds(&h.sent()), ["d"], "a Sync during the data is held back");
        h.server(&error("22P02"));
        if !sync_first {
            h.client(&sync());
        }
        assert_eq!(kinds(&h.sent()), ["S"], "the server waits for this Sync (sync first: {sync_first})");
        h.server(&ready(b'I'));
        let got: Vec<char> = h.got().into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec!['E', 'Z']);
        // Stray COPY messages after it are dropped, and the session goes on.
        h.client(&cat(&[copy_done(), query("SELECT 1")]));
        assert_eq!(kinds(&h.sent()), ["Q"]);
        assert!(h.core.end().is_none(), "{:?}", h.core.end());
    }
}

// --------------------------------------------------- server bytes in pieces

fn notice() -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::error_response(&mut b, "NOTICE", "00000", "a notice", &[]).unwrap();
    let mut v = b.to_vec();
    v[0] = b'N';
    v
}

fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    raw(b'S', format!("{name}\0{value}\0").as_bytes())
}

/// Answers what the core asks of the catalog until it asks nothing more.
fn answer_catalog(h: &mut Harness) {
    for _ in 0..16 {
        let needs = h.needs();
        if needs.is_empty() {
            return;
        }
        for need in needs {
            match need {
                Need::ResolveTables { .. } => h.core.handle_tables(people_table(), h.now),
                Need::CopyColumns { .. } => {
                    // As the catalog names them: qualified.
                    let columns = [("id", 23), ("name", 25), ("ssn", 25)]
                        .map(|(c, t)| {
                            let source = format!("public.people.{c}");
                            ColumnInfo::new(&source, Some(&source), t, false)
                        })
                        .to_vec();
                    h.core.handle_copy_columns(Some(columns), h.now)
                }
                _ => {}
            }
        }
    }
    panic!("the core kept asking the catalog");
}

/// Sends `client`, then the server's `server` in pieces of `piece` bytes,
/// answering the catalog after every `lag` pieces: what the client got.
fn in_pieces(client: &[u8], server: &[u8], piece: usize, lag: usize) -> Vec<u8> {
    let mut h = harness(CoreConfig::default());
    h.client(client);
    h.sent();
    let mut out = Vec::new();
    for (i, part) in server.chunks(piece).enumerate() {
        h.server(part);
        if (i + 1) % lag == 0 {
            answer_catalog(&mut h);
        }
        out.extend_from_slice(&h.core.client_output().split());
    }
    answer_catalog(&mut h);
    out.extend_from_slice(&h.core.client_output().split());
    assert!(h.core.end().is_none(), "{:?}", h.core.end());
    assert!(h.core.server_buffer().is_empty(), "left over: {:?}", h.core.server_buffer());
    out
}

/// The server's frames are read where they lie in the read buffer: however
/// its bytes are cut, and whenever the catalog answers (more bytes arrive
/// while a frame waits for it), the client gets the same bytes, masked.
#[test]
fn server_bytes_in_any_pieces_give_the_client_the_same_bytes() {
    let people = [("id", PEOPLE, 1), ("ssn", PEOPLE, 3)];
    let rows: &[&[&str]] = &[&["1", "123-45-6789"], &["2", "222-22-2222"]];
    let scenarios: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            query("SELECT id, ssn FROM people"),
            cat(&[
                parameter_status("application_name", "x"),
                notice(),
                row_description(&people),
                notice(),
                rows_of(rows),
                parameter_status("standard_conforming_strings", "on"),
                complete("SELECT 2"),
                ready(b'I'),
            ]),
        ),
        (
            query("COPY people TO STDOUT"),
            cat(&[
                notice(),
                copy_out_response(3),
                raw(b'd', b"1\tAda\t123-45-6789\n"),
                raw(b'd', b"2\tBob\t222-22-2222\n"),
                raw(b'c', b""),
                complete("COPY 2"),
                ready(b'I'),
            ]),
        ),
        (
            cat(&[
                parse("", "SELECT id, ssn FROM people"),
                bind("", "", &[]),
                describe_portal(""),
                execute(""),
                sync(),
            ]),
            cat(&[
                raw(b'1', b""),
                raw(b'2', b""),
                notice(),
                row_description(&people),
                rows_of(rows),
                complete("SELECT 2"),
                ready(b'I'),
            ]),
        ),
        (
            // The gateway's own Describe of the portal.
            cat(&[parse("", "SELECT id, ssn FROM people"), bind("", "", &[]), execute(""), sync()]),
            cat(&[
                raw(b'1', b""),
                raw(b'2', b""),
                row_description(&people),
                rows_of(rows),
                complete("SELECT 2"),
                ready(b'I'),
            ]),
        ),
        (
            // The settings read back, the client's ReadyForQuery held meanwhile.
            cat(&[query("BEGIN"), query("SAVEPOINT s"), query("SET search_path = private")]),
            cat(&[
                complete("BEGIN"),
                ready(b'T'),
                complete("SAVEPOINT"),
                ready(b'T'),
                complete("SET"),
                ready(b'T'),
                row_description(&[("current_setting", 0, 0)]),
                rows_of(&[&["private"]]),
                complete("SELECT 1"),
                notice(),
                ready(b'T'),
            ]),
        ),
    ];
    for (i, (client, server)) in scenarios.iter().enumerate() {
        let whole = in_pieces(client, server, server.len(), 1);
        assert!(!whole.is_empty(), "scenario {i}");
        for secret in ["123-45-6789", "222-22-2222"] {
            assert!(!whole.windows(secret.len()).any(|w| w == secret.as_bytes()), "scenario {i} leaked {secret}");
        }
        for piece in [1, 2, 3, 5, 7, 11, 13, 64] {
            for lag in [1, 2, 3, 1000] {
                assert_eq!(in_pieces(client, server, piece, lag), whole, "scenario {i}, pieces of {piece}, lag {lag}");
            }
        }
    }
}

/// The server reports `standard_conforming_strings` when it changes, and
/// the engine then reads texts as the server will; other reported settings
/// are only relayed.
#[test]
fn a_reported_standard_conforming_strings_changes_how_texts_are_read() {
    // With the setting on, the string ends at the second quote and the
    // text reads `private.secrets`; with it off, it is all one string.
    let sql = r"SELECT 'x\' UNION SELECT * FROM private.secrets --'";
    let mut h = harness(CoreConfig::default());
    h.client(&query(sql));
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    h.got();
    h.server(&parameter_status("application_name", "x"));
    assert_eq!(h.got().len(), 1, "relayed");
    h.client(&query(sql));
    assert!(is_substitute(&h.sent()[0]), "another setting changes nothing");
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    h.got();
    h.server(&parameter_status("standard_conforming_strings", "off"));
    h.got();
    h.client(&query(sql));
    assert!(is_query(&h.sent()[0], sql), "read as the server reads it");
}

/// A statement that may create or change views is let through: what comes
/// after it, before it completes, is judged as if any relation could be a
/// view nobody has read yet (refused); once every statement is answered the
/// core asks for the views again, and judges by them.
#[test]
fn statements_pipelined_after_one_that_may_change_views_are_not_judged_by_stale_views() {
    let policy = format!(
        "{POLICY}\n[[rule]]\nname = \"ddl\"\neffect = \"allow\"\nclasses = [\"ddl\"]\ntables = [\"public.*\"]\n"
    );
    let mut h = harness_of(&policy, CoreConfig::default(), vec!["public".into()]);
    h.core.set_definitions(Arc::new(Definitions::new()));
    h.client(&cat(&[query("CREATE VIEW public.v AS SELECT 1 AS one"), query("SELECT * FROM v")]));
    let sent = h.sent();
    assert!(is_query(&sent[0], "CREATE VIEW public.v AS SELECT 1 AS one"), "{sent:?}");
    assert!(is_substitute(&sent[1]), "{sent:?}");
    assert!(h.needs().is_empty());
    // Views read before the CREATE VIEW completed do not lift the refusal.
    h.core.set_definitions(Arc::new(Definitions::new()));
    h.server(&cat(&[complete("CREATE VIEW"), ready(b'I')]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got[2].1.contains("has not completed"), "{got:?}");
    assert!(h.needs().iter().any(|n| matches!(n, Need::InvalidateCatalog)));
    // The views read again: `v` is one, over a table the policy forbids.
    let mut views = Definitions::new();
    views.insert("public", "v", View::new(ViewKind::View, vec!["id".into()], " SELECT s.id FROM private.secrets s;"));
    h.core.set_definitions(Arc::new(views));
    h.client(&query("SELECT * FROM v"));
    assert!(is_substitute(&h.sent()[0]));
    h.server(&cat(&[error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got[0].1.contains("private is off limits"), "{got:?}");
    // And a plain table is read as before.
    h.client(&query("SELECT * FROM people"));
    assert!(is_query(&h.sent()[0], "SELECT * FROM people"));
}

/// The server analyses a prepared statement again when `search_path`
/// changed since its `Parse`: so does the gateway, at `Execute`.
#[test]
fn a_prepared_statement_is_judged_again_when_the_path_changed() {
    let mut h = harness(CoreConfig::default());
    h.client(&cat(&[parse("s", "SELECT * FROM customers"), sync()]));
    let sent = h.sent();
    assert!(matches!(&sent[0], Frontend::Parse { sql, .. } if sql.as_str() == "SELECT * FROM customers"), "{sent:?}");
    h.server(&cat(&[raw(b'1', b""), ready(b'I')]));
    h.got();
    simple(&mut h, "SET search_path = private", "SET", b'I');
    read_back(&mut h, "private");
    h.got();
    // public.customers when prepared, private.customers now.
    h.client(&cat(&[bind("", "s", &[]), execute(""), sync()]));
    let sent = h.sent();
    assert!(sent.iter().any(is_substitute), "{sent:?}");
    assert!(!sent.iter().any(|m| matches!(m, Frontend::Execute { .. })), "{sent:?}");
    h.server(&cat(&[raw(b'2', b""), error("22P02"), ready(b'I')]));
    let got = h.got();
    assert!(got.iter().any(|(_, m)| m.contains("no-private")), "{got:?}");
    // Back on public, the same statement runs.
    simple(&mut h, "SET search_path = public", "SET", b'I');
    read_back(&mut h, "public");
    h.got();
    h.client(&cat(&[bind("", "s", &[]), execute(""), sync()]));
    let sent = h.sent();
    assert!(sent.iter().any(|m| matches!(m, Frontend::Execute { .. })), "{sent:?}");
    assert!(!sent.iter().any(is_substitute), "{sent:?}");
}
