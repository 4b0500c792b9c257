//! COPY through the extended protocol, as tokio-postgres does it.
//!
//! `Client::copy_in` prepares the statement, then sends `Bind, Execute,
//! Sync`, waits for CopyInResponse, and sends the data, `CopyDone` and a
//! second `Sync`: the gateway must keep the session in step across the
//! Sync that arrives while COPY is under way, and the connection must
//! answer the next query. The rows are written with tokio-postgres's
//! `BinaryCopyInWriter` (a binary COPY; a text-format sink needs the
//! futures `Sink` trait, which is not among pg-proxy's dependencies). A COPY
//! into a table the caller may not write is refused and the session goes on.
//!
//! `Client::copy_out` sends `Parse/Describe/Sync`, then `Bind` (binary
//! result formats) `/Execute/Sync`, and reads CopyOutResponse, CopyData,
//! CopyDone. tokio-postgres hands the data out as a futures `Stream`, which
//! this crate cannot poll without that trait; so the call itself is made
//! with tokio-postgres (a refusal comes back from it, and the connection
//! goes on), and the masked data is read by [`ExtendedCopyOut`], which sends
//! tokio-postgres's exact message sequence with `postgres-protocol`.
//!
//! Every wait is under `tokio::time::timeout`: a gateway that stops
//! answering fails the test with a message, it does not hang it.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use portcullis_testkit::stack::Stack;
use portcullis_testkit::wire::{Raw, ServerError};
use postgres_protocol::message::frontend;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// The longest any single step may take.
const STEP: Duration = Duration::from_secs(20);

/// Awaits `f` for at most [`STEP`]; fails the test naming `what` when it does not finish.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer in {STEP:?} (the gateway stopped answering or closed the session)"),
    }
}

/// A `numeric` with two decimal places, given in hundredths, in the binary
/// format (tokio-postgres has no numeric type of its own without features).
#[derive(Debug)]
struct Cents(i64);

impl ToSql for Cents {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if self.0 < 0 {
            return Err("Cents: only non-negative amounts".into());
        }
        let (mut whole, fraction) = (self.0 / 100, self.0 % 100);
        let mut digits = Vec::new(); // base 10000, most significant first
        while whole > 0 {
            digits.insert(0, i16::try_from(whole % 10_000)?);
            whole /= 10_000;
        }
        let weight = i16::try_from(digits.len())? - 1;
        if fraction != 0 {
            digits.push(i16::try_from(fraction * 100)?);
        }
        out.put_i16(i16::try_from(digits.len())?);
        out.put_i16(if digits.is_empty() { 0 } else { weight });
        out.put_u16(0); // positive
        out.put_u16(2); // display scale
        for d in digits {
            out.put_i16(d);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

async fn count(client: &tokio_postgres::Client, status: &str) -> i64 {
    within("counting orders", client.query_one("SELECT count(*) FROM orders WHERE status = $1", &[&status]))
        .await
        .unwrap_or_else(|e| panic!("counting orders: {e} (connection closed: {})", client.is_closed()))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_then_a_query_on_the_same_connection() {
    let stack = Stack::start();
    let developer = within("connecting", stack.connect_as("dave", &["developers"], None)).await;
    let before = count(&developer, "tp-copied").await;

    let copied = within("copy_in (Bind, Execute, Sync, data, CopyDone, Sync)", async {
        let sink = developer.copy_in("COPY orders (customer_id, total, status) FROM STDIN (FORMAT binary)").await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::NUMERIC, Type::TEXT]);
        tokio::pin!(writer);
        for (customer, cents) in [(1i32, 1050i64), (2, 2000), (3, 3025)] {
            writer.as_mut().write(&[&customer, &Cents(cents), &"tp-copied"]).await?;
        }
        writer.finish().await
    })
    .await
    .unwrap_or_else(|e| panic!("copy_in failed: {e} (connection closed: {})", developer.is_closed()));
    assert_eq!(copied, 3, "the command tag's row count");
    assert!(!developer.is_closed(), "the gateway closed the session after COPY");

    // The same connection answers the next query, and the rows are there.
    assert_eq!(count(&developer, "tp-copied").await - before, 3);
    let totals: Vec<String> = within(
        "reading the copied rows",
        developer.query("SELECT total::text FROM orders WHERE status = 'tp-copied' ORDER BY total", &[]),
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(totals, ["10.50", "20.00", "30.25"]);
}

/// A refused `copy_in` fails at the prepare (the Parse is decided), and
/// the connection goes on; an allowed one into orders follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_refused_then_the_session_goes_on() {
    let stack = Stack::start();
    let agent = within("connecting", stack.connect(&["ai-agents"])).await;
    let e = within("a refused copy_in", agent.copy_in::<_, bytes::Bytes>("COPY customers (id, name) FROM STDIN"))
        .await
        .err()
        .expect("an agent's COPY into customers is refused");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    let row = within("a query after the refusal", agent.query_one("SELECT count(*) FROM customers", &[]))
        .await
        .unwrap_or_else(|e| panic!("the query after a refused copy_in failed: {e}"));
    assert_eq!(row.get::<_, i64>(0), 3, "nothing was copied");
}

/// `copy_out` through tokio-postgres: a binary COPY of a masked column is
/// accepted (masked row by row), the stream dropped unread, and the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_of_a_masked_column_in_binary_is_accepted() {
    let stack = Stack::start();
    let agent = within("connecting", stack.connect(&["ai-agents"])).await;
    let stream = within(
        "a binary copy_out",
        agent.copy_out("COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT (FORMAT binary)"),
    )
    .await
    .unwrap_or_else(|e| panic!("binary copy_out: {e}"));
    drop(stream);
    let row = within("a query after copy_out", agent.query_one("SELECT ssn FROM customers WHERE id = $1", &[&2i32]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "****7890");
}

/// A text `copy_out` through tokio-postgres is accepted; the stream is
/// dropped unread, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_unread_then_the_session_goes_on() {
    let stack = Stack::start();
    let agent = within("connecting", stack.connect(&["ai-agents"])).await;
    let stream = within("a text copy_out", agent.copy_out("COPY customers (id, ssn) TO STDOUT"))
        .await
        .unwrap_or_else(|e| panic!("copy_out: {e}"));
    drop(stream);
    let row = within("a query after copy_out", agent.query_one("SELECT ssn FROM customers WHERE id = $1", &[&2i32]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "****7890");
}

/// The data of a `copy_out`, read with tokio-postgres's messages: the
/// masked column comes back masked, the others unchanged, and the
/// connection answers a query afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_data_is_masked() {
    let stack = Stack::start();
    let token = stack.token("alice", &["ai-agents"], None);
    let mut c = within("connecting", ExtendedCopyOut::connect(&stack, &token)).await;
    let data = within("copy_out", c.copy_out("s0", "COPY customers (id, name, ssn) TO STDOUT")).await;
    assert_eq!(
        data.map(CopyBytes::text),
        Ok("1\tAlice Martin\t****6789\n2\tBob Chen\t****7890\n3\tCarol Diaz\t****8901\n".to_string()),
        "COPY TO STDOUT through Bind/Execute"
    );
    let data =
        within("copy_out", c.copy_out("s1", "COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT")).await;
    assert_eq!(
        data.map(CopyBytes::text),
        Ok("1\t****6789\tprefers e-mail\n2\t****7890\tcard on file: ****1881\n3\t****8901\tVIP since 2019\n"
            .to_string())
    );
    // Binary: masked row by row, the text column keeping its type.
    let data = within("binary copy_out", c.copy_out("s2", "COPY customers (id, ssn) TO STDOUT (FORMAT binary)")).await;
    let rows = [(1, "****6789"), (2, "****7890"), (3, "****8901")];
    assert_eq!(data.map(CopyBytes::into_bytes), Ok(binary_copy(&rows)));
    // A COPY that refuses (an option the data cannot be read under), and the session goes on.
    let refused =
        within("refused copy_out", c.copy_out("s3", "COPY customers (id, ssn) TO STDOUT (DELIMITER '|')")).await;
    assert_eq!(refused.as_ref().err().map(|e| e.code.as_str()), Some("42501"), "{refused:?}");
    let data = within("copy_out after a refusal", c.copy_out("s4", "COPY (SELECT 1 AS one) TO STDOUT")).await;
    assert_eq!(data.map(CopyBytes::text), Ok("1\n".to_string()));
}

/// PostgreSQL's binary COPY data of `(int4, text)` rows.
fn binary_copy(rows: &[(i32, &str)]) -> Vec<u8> {
    let mut data = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for (id, value) in rows {
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&4i32.to_be_bytes());
        data.extend_from_slice(&id.to_be_bytes());
        data.extend_from_slice(&(value.len() as i32).to_be_bytes());
        data.extend_from_slice(value.as_bytes());
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

/// COPY data as it came.
#[derive(Debug, PartialEq)]
struct CopyBytes(Vec<u8>);

impl CopyBytes {
    fn text(self) -> String {
        String::from_utf8(self.0).unwrap()
    }

    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A bare connection that speaks the messages tokio-postgres's `copy_out`
/// sends, one step at a time.
struct ExtendedCopyOut {
    raw: Raw,
}

impl ExtendedCopyOut {
    async fn connect(stack: &Stack, token: &str) -> ExtendedCopyOut {
        let mut raw = Raw::connect(stack.addr, "copy_out").await.with_wait(STEP);
        raw.login(&[("user", "agent"), ("database", "app")], token)
            .await
            .unwrap_or_else(|e| panic!("login refused: {e:?}"));
        ExtendedCopyOut { raw }
    }

    /// Prepares `query` as statement `name` (Parse, Describe, Sync), then
    /// runs it (Bind with binary result formats, Execute, Sync) and
    /// returns the COPY data, or the first error.
    async fn copy_out(&mut self, name: &str, query: &str) -> Result<CopyBytes, ServerError> {
        let mut out = BytesMut::new();
        frontend::parse(name, query, std::iter::empty(), &mut out).unwrap();
        frontend::describe(b'S', name, &mut out).unwrap();
        frontend::sync(&mut out);
        self.raw.send(&out).await;
        if let Some(e) = self.raw.until_ready().await.errors.pop() {
            return Err(e);
        }
        let mut out = BytesMut::new();
        let bound = frontend::bind(
            "",
            name,
            [],
            std::iter::empty::<i32>(),
            |_, _| Ok(postgres_protocol::IsNull::No),
            [1],
            &mut out,
        );
        assert!(bound.is_ok(), "encoding Bind");
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        self.raw.send(&out).await;
        let reply = self.raw.until_ready().await;
        match reply.errors.into_iter().last() {
            Some(e) => Err(e),
            None => Ok(CopyBytes(reply.copy_data)),
        }
    }
}
