//! One client session: every statement decided, recorded and then
//! forwarded; every row masked before it comes back.
//!
//! ```text
//!              ┌──────────────────────── driver (run) ─────────────────────────┐
//!  client ───▶ │ read ─▶ ┌──────────────┐ ─▶ bytes for the server ─▶ write     │ ───▶ PostgreSQL
//!  client ◀─── │ write ◀─│ SessionCore  │ ◀─ read                              │ ◀─── PostgreSQL
//!              │         │  (no I/O)    │ ─▶ needs: catalog, cancel upstream,  │
//!              │         └──────────────┘    persist records, hold, timer      │
//!              │   registry (cancel, terminate) ─▶ core                        │
//!              └───────────────────────────────────────────────────────────────┘
//! ```
//!
//! The protocol logic is [`SessionCore`] (the quinn-proto shape): it takes
//! bytes and events and hands out bytes and [`Need`]s, and never touches a
//! socket or a clock, so it is tested in memory against a scripted server.
//! [`run`] is the thin tokio driver: it reads both sides into the core,
//! performs the needs (catalog lookups, upstream cancels, the
//! [`record::RecordSink`], the [`hold::HoldHandler`], the hold timer) and
//! writes what the core produced.
//!
//! ## Batches
//!
//! Client messages are taken up to what PostgreSQL executes as a unit: a
//! simple `Query` (or a function call), or extended-protocol messages up to
//! `Sync` or `Flush`. Each batch is staged:
//!
//! 1. **decide**: every statement is decided as its message arrives (a
//!    simple query's whole string first; a `Parse`'s text; an `Execute`
//!    takes its statement's decision with the `Bind` parameters);
//! 2. **hold**: when a decision is `require_approval` and the gateway has a
//!    hold handler, the batch is held (see [`hold`]); without one it is
//!    refused, saying approvals are not available;
//! 3. **record**: when the gateway records, the batch's records go to the
//!    [`record::RecordSink`]; the batch waits for the acknowledgement, and
//!    a sink failure refuses the batch with `58030`;
//! 4. **forward**.
//!
//! While a batch waits, the client's next messages are kept unread in a
//! bounded buffer (a held batch keeps reading the socket so that a client
//! that leaves is noticed at once, and one that floods is ended with
//! `53400`).
//!
//! ## Statements and results
//!
//! - **Refusals.** A refused simple query sends none of its statements; the
//!   server runs a statement that fails while being parsed
//!   ([`core::REFUSED_SQL`]) in its place, and the client gets an
//!   `ErrorResponse` (`42501`, naming the rule and the reason) instead of
//!   that failure, then the server's `ReadyForQuery`. So a refusal does to
//!   a transaction what an error does in PostgreSQL: an open transaction is
//!   aborted, and a client that ignores the refusal cannot commit the rest.
//!   A refused `Parse` is answered the same way (the substitute is a
//!   `Parse`), and the client's messages up to `Sync` are dropped, as the
//!   server skips them after an error. `Bind`, `Describe` and `Execute` of
//!   a statement or portal the gateway does not know, or refused, fail the
//!   same way. `Close`, `Sync` and `Flush` pass.
//! - **Row cap.** When a result has sent `max_rows` rows and another
//!   arrives, the gateway stops forwarding, cancels the query upstream,
//!   drops what is left of the result and answers `54000`.
//! - **Masking.** At each `RowDescription`, the columns' table OIDs are
//!   resolved through the [`catalog`](crate::catalog) and the engine plans
//!   the masking ([`policy_core::RowMasker`]); a column whose masked values
//!   no longer fit its type is described as `text`. Rows with nothing to
//!   mask are forwarded as the same bytes. Server errors and notices pass
//!   through the engine's [`policy_core::MessageScrubber`].
//! - **Session state.** The engine's session starts with the server
//!   session's own startup `search_path`, and a reset (`RESET`, `SET ... TO
//!   DEFAULT`, `RESET ALL`, `DISCARD ALL`) returns to it, as on the server.
//!   Changes are applied when a statement is staged (and undone if its
//!   batch is refused); after any statement that changes a setting, and
//!   after a transaction that did ends, the session holds the client's next
//!   messages, reads the server's `search_path` back and takes it as the
//!   truth (so a `SET LOCAL`, a rolled-back `SET` or a failed statement
//!   cannot leave the two views apart). `standard_conforming_strings`
//!   follows the server's `ParameterStatus`.
//! - **COPY.** Data that follows an allowed `COPY ... FROM STDIN` is
//!   forwarded in order, also when the client sends it before the server's
//!   `CopyInResponse` (asyncpg does); a refused COPY's data is dropped, as
//!   PostgreSQL drops it after an error. A `Sync` sent while the server may
//!   be in COPY IN (tokio-postgres sends one right after the `Execute`) is
//!   expected to be answered only if the COPY never started, as the server
//!   ignores it in COPY IN; one sent during the data is not forwarded (the
//!   server would answer it after data it already failed on, which the
//!   gateway cannot know in time). A client message other than COPY data during
//!   COPY IN ends the COPY with a `CopyFail`, then counts as itself.
//!   `COPY ... TO STDOUT` rows are masked like result rows (plain text
//!   format).
//! - **Unexpected states.** A server message the session did not expect is
//!   never dropped silently: the client gets a `FATAL` `08P01` saying so,
//!   and the log a warning.
//! - The function-call message (`F`) is refused.
//! - **Blocks.** A simple query sent inside an unfinished extended-protocol
//!   block is preceded by a `Sync` of the gateway's own (its
//!   `ReadyForQuery` is not relayed), so it runs in a state the gateway
//!   knows; once the server has failed the block, such a query is dropped,
//!   as the server drops it. After a row cap inside a block, the client's
//!   messages up to its `Sync` are dropped, as after any error.

pub mod core;
pub mod hold;
pub mod names;
pub mod record;
pub mod registry;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use self::core::{CoreConfig, Need, SessionCore, SessionEnd, SessionStart};
use self::hold::HoldOutcome;
use self::record::RecordError;
use self::registry::{Control, Registration};
use crate::server::{Gateway, Ready};

/// Read size of both sides when the session is idle: small, so that a
/// thousand idle sessions hold little; it doubles while reads fill it.
const READ_BYTES: usize = 2 * 1024;
/// The largest read from the client (a client streaming COPY data).
const MAX_CLIENT_READ_BYTES: usize = 64 * 1024;
/// The most buffer capacity an idle session keeps.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// The largest read from the server while a result streams.
const MAX_READ_BYTES: usize = 256 * 1024;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a gateway plugs into its sessions: the record sink, the hold
/// handler and the hold timeout. Sessions take them when they start.
#[derive(Debug, Clone)]
pub struct SessionHooks {
    /// Where records go before a batch is forwarded ([`record::NoopSink`]:
    /// nowhere, without waiting).
    pub record_sink: Arc<dyn record::RecordSink>,
    /// Who decides held statements; `None` refuses `require_approval`.
    pub hold_handler: Option<Arc<dyn hold::HoldHandler>>,
    /// How long a statement may be held.
    pub hold_timeout: std::time::Duration,
}

impl Default for SessionHooks {
    fn default() -> Self {
        SessionHooks {
            record_sink: Arc::new(record::NoopSink),
            hold_handler: None,
            hold_timeout: CoreConfig::default().hold_timeout,
        }
    }
}

/// Runs a logged-in session to its end.
pub async fn run(gw: Arc<Gateway>, ready: Ready, mut registration: Registration) {
    let Ready {
        mut client,
        client_buf,
        upstream,
        identity,
        database,
        start_search_path,
        standard_conforming_strings,
        user,
        gateway_pid,
        application_name,
        peer,
        tls,
        token_digest,
    } = ready;
    let hooks = gw.hooks();
    let started = Instant::now();
    let recording = !hooks.record_sink.is_noop();
    // One engine for the session's start record and its core: statement
    // records name the policy only when it is not the start's.
    let engine = gw.engine();
    if recording {
        let start = record::SessionStartRecord {
            session: registration.id(),
            identity: identity.clone(),
            token: token_digest,
            client: peer,
            tls,
            application_name,
            database: database.clone(),
            user: user.clone(),
            policy: Arc::from(engine.policy().digest.as_str()),
            search_path: start_search_path.clone(),
        };
        hooks.record_sink.log(&[record::Record::SessionStart(Box::new(start))]);
    }
    // The generation first: a reload in between is seen at the next look.
    let mut generation = gw.generation();
    let config = CoreConfig {
        max_message_bytes: gw.config.limits.max_message_bytes,
        record: !hooks.record_sink.is_noop(),
        holds: hooks.hold_handler.is_some(),
        hold_timeout: hooks.hold_timeout,
        max_buffered_bytes: gw.config.limits.max_message_bytes,
        observe: gw.config.mode == crate::config::Mode::Observe && recording,
        record_rows: if recording { gw.config.audit.as_ref().map_or(0, |a| a.record_rows) } else { 0 },
        // A sink other than the audit log (tests, embedders) gets them.
        record_parameters: recording && gw.config.audit.as_ref().is_none_or(|a| a.record_parameters),
        mark_durable: hooks.record_sink.marks_durable(),
    };
    let start = SessionStart {
        id: registration.id(),
        identity,
        engine,
        search_path: start_search_path,
        standard_conforming_strings,
        user,
        database: database.clone(),
        config,
        metrics: Arc::clone(&gw.metrics),
    };
    let mut core = SessionCore::new(start, Instant::now());
    // The database's views before the first statement is decided.
    let mut views = gw.catalog.definitions(&database).await;
    core.set_definitions(Arc::clone(&views.borrow_and_update()));
    let mut up = upstream;
    core.client_buffer().extend_from_slice(&client_buf);
    core.server_buffer().extend_from_slice(&up.buf);
    up.buf = bytes::BytesMut::new();
    core.handle_client_data(Instant::now());
    core.handle_server_data(Instant::now());

    let mut persisting: Option<(u64, Boxed<Result<(), RecordError>>)> = None;
    let mut holding: Option<(u64, Boxed<HoldOutcome>)> = None;
    // One timer for the session's life. It is moved only to a deadline
    // earlier than the one it is set for, or once it went off: a later
    // deadline (the results' wait, renewed at nearly every statement) is
    // met when the timer goes off early, the core finds nothing due, and
    // the timer is set again. A timer made and dropped per wait took the
    // timer wheel's lock twice per statement.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // Where the timer is set; `None` once it went off.
    let mut timer_at: Option<Instant> = None;
    // Whether the timer holds this task's waker since it was last set.
    let mut timer_armed = false;
    let mut up_read = READ_BYTES;
    let mut client_read = READ_BYTES;
    let outcome: Result<(), String> = loop {
        // Published first: a hold handler asked below sees the session held.
        registration.publish(core.activity(), || core.current_fingerprint());
        // What the core asked for, in order.
        while let Some(need) = core.poll_need() {
            match need {
                Need::ResolveTables { oids } => {
                    let tables = gw.catalog.tables(&database, &oids).await;
                    core.handle_tables(tables, Instant::now());
                }
                Need::CopyColumns { tables } => {
                    let mut columns = Some(Vec::new());
                    for table in &tables {
                        match (gw.catalog.copy_columns(&database, table).await, columns.as_mut()) {
                            (Some(found), Some(all)) => all.extend(found),
                            _ => columns = None,
                        }
                    }
                    core.handle_copy_columns(columns, Instant::now());
                }
                Need::RowFields { tables } => {
                    let mut found = HashMap::new();
                    for table in tables {
                        if let Some(fields) = gw.catalog.row_fields(&database, &table).await {
                            found.insert(table, fields);
                        }
                    }
                    core.handle_row_fields(found, Instant::now());
                }
                Need::InvalidateCatalog => gw.catalog.invalidate(&database).await,
                Need::CancelUpstream => gw.cancel_session(gateway_pid).await,
                Need::Log { records } => {
                    hooks.record_sink.log(&records);
                    core.recycle(records);
                }
                Need::Persist { batch, records } => {
                    // A sink that is done at once (the records are written
                    // and nothing waits for a sync) is answered here, with
                    // no turn of the loop, at the time the batch was
                    // decided: the results' durations start there anyway.
                    let persisted = hooks.record_sink.persist(&records);
                    core.recycle(records);
                    match persisted {
                        record::Persisting::Done(outcome) => {
                            let now = core.now();
                            core.handle_persisted(batch, outcome, now);
                        }
                        record::Persisting::Waiting(future) => persisting = Some((batch, future)),
                    }
                }
                Need::Hold { hold, request } => match &hooks.hold_handler {
                    Some(handler) => {
                        let started = handler.hold(request);
                        if let Some(notice) = &started.notice {
                            core.handle_hold_notice(hold, notice);
                        }
                        holding = Some((hold, started.outcome));
                    }
                    None => core.handle_hold_outcome(
                        hold,
                        HoldOutcome::Refuse { reason: "approvals are not available".to_string() },
                        Instant::now(),
                    ),
                },
                Need::EndHold { hold } => {
                    if holding.as_ref().is_some_and(|(h, _)| *h == hold) {
                        holding = None;
                    }
                }
            }
        }
        // The core's deadline, set before the write (which does not move
        // it): the wait for a client that does not read ends with it.
        let deadline = core.poll_timeout();
        if let Some(at) = deadline.filter(|at| timer_at.is_none_or(|set| *at < set)) {
            timer.as_mut().reset(at.into());
            timer_at = Some(at);
            timer_armed = false;
        }
        // While the write to a client that does not read waits, the
        // session still takes orders from the registry (a kill must reach
        // a session stuck writing a large result), its deadline (results
        // waiting to be handed over are not kept waiting by such a
        // client), and the answers of its sink and hold handler: a sink's
        // answer may hold what other sessions wait for (the audit log's
        // writer lock, handed to the next waiter when it is released),
        // so it is never left unpolled for as long as a client pleases.
        // The writes are cancel-safe.
        let ordered = tokio::select! {
            biased;
            control = registration.control() => Some(Event::Control(control)),
            written = write_out(&mut core, &mut client, &mut up.stream) => match written {
                Ok(()) => None,
                Err(e) => break Err(e),
            },
            outcome = poll_slot(&mut persisting), if persisting.is_some() => Some(Event::Persisted(outcome)),
            outcome = poll_slot(&mut holding), if holding.is_some() => Some(Event::Held(outcome)),
            () = timer_elapsed(timer.as_mut(), &mut timer_armed), if timer_at.is_some() => Some(Event::Timeout),
        };
        let event = match ordered {
            Some(Event::Control(Control::Terminate)) => {
                core.handle_terminate();
                break Ok(());
            }
            Some(event) => event,
            None => {
                registration.publish(core.activity(), || core.current_fingerprint());
                if let Some(end) = core.end() {
                    break match end {
                        SessionEnd::Terminated => Ok(()),
                        other => Err(other.to_string()),
                    };
                }
                if core.activity() == registry::Activity::Idle {
                    up_read = READ_BYTES;
                    client_read = READ_BYTES;
                    core.shrink_buffers(KEEP_BUFFER_BYTES);
                }
                let read_client = core.wants_client_data();
                let read_server = core.wants_server_data();
                // The side expected to speak next is polled first: while
                // the server owes answers, a wake-up is most often its
                // data, and the wait then ends without polling the
                // client's socket as well.
                let server_first = core.statement_in_flight();
                let (cbuf, sbuf) = core.read_buffers();
                cbuf.reserve(client_read);
                sbuf.reserve(up_read);
                macro_rules! wait {
                    ($($branch:tt)*) => {
                        tokio::select! {
                            // In this order, without drawing a random
                            // starting branch: orders first (one atomic
                            // load), so a session whose peers always have
                            // data is still told.
                            biased;
                            control = registration.control() => Event::Control(control),
                            $($branch)*
                            outcome = poll_slot(&mut persisting), if persisting.is_some() => Event::Persisted(outcome),
                            outcome = poll_slot(&mut holding), if holding.is_some() => Event::Held(outcome),
                            () = timer_elapsed(timer.as_mut(), &mut timer_armed), if deadline.is_some() => Event::Timeout,
                        }
                    };
                }
                if server_first {
                    wait! {
                        r = up.stream.read_buf(sbuf), if read_server => Event::Server(r),
                        r = client.read_buf(cbuf), if read_client => Event::Client(r),
                    }
                } else {
                    wait! {
                        r = client.read_buf(cbuf), if read_client => Event::Client(r),
                        r = up.stream.read_buf(sbuf), if read_server => Event::Server(r),
                    }
                }
            }
        };
        match event {
            Event::Client(r) => match r {
                Ok(0) => core.handle_client_eof(),
                Ok(n) => {
                    if n >= client_read {
                        client_read = (client_read * 2).min(MAX_CLIENT_READ_BYTES);
                    }
                    // A policy reload (taken by the core at its next
                    // batch, see `SessionCore::set_engine`), and views
                    // read again, are seen before the next statement is
                    // decided.
                    refresh_engine(&gw, &mut core, &mut generation);
                    refresh_definitions(&mut views, &mut core);
                    core.handle_client_data(Instant::now());
                }
                Err(e) => {
                    core.handle_client_eof();
                    tracing::debug!("client read: {e}");
                }
            },
            Event::Server(r) => match r {
                Ok(0) => core.handle_server_eof(),
                Ok(n) => {
                    if n >= up_read {
                        up_read = (up_read * 2).min(MAX_READ_BYTES);
                    }
                    refresh_engine(&gw, &mut core, &mut generation);
                    refresh_definitions(&mut views, &mut core);
                    core.handle_server_data(Instant::now());
                }
                Err(e) => {
                    tracing::warn!("upstream read: {e}");
                    core.handle_server_eof();
                }
            },
            Event::Control(Control::Cancel) => core.handle_cancel(Instant::now()),
            Event::Control(Control::Terminate) => core.handle_terminate(),
            Event::Persisted(outcome) => {
                if let Some((batch, _)) = persisting.take() {
                    core.handle_persisted(batch, outcome, Instant::now());
                }
            }
            Event::Held(outcome) => {
                if let Some((hold, _)) = holding.take() {
                    core.handle_hold_outcome(hold, outcome, Instant::now());
                }
            }
            Event::Timeout => {
                timer_at = None;
                core.handle_timeout(Instant::now());
            }
        }
    };
    // The last records first: a client that does not read, or a server
    // slow to take a cancel, does not hold them back (a stopping gateway
    // gives its sessions little time for them).
    if recording {
        // Results completed on the way out, then the end.
        core.release_results();
        let mut last = Vec::new();
        while let Some(need) = core.poll_need() {
            if let Need::Log { records } = need {
                last.extend(records);
            }
        }
        let reason = match &outcome {
            Ok(()) => "the client ended the session".to_string(),
            Err(e) => e.clone(),
        };
        let end = record::SessionEndRecord { session: registration.id(), reason, duration: started.elapsed() };
        last.push(record::Record::SessionEnd(end));
        hooks.record_sink.log(&last);
    }
    // Whatever the core still had for the client (a last error), for as
    // long as a client that reads takes.
    let _ = tokio::time::timeout(LAST_WRITE, write_out(&mut core, &mut client, &mut up.stream)).await;
    let _ = tokio::time::timeout(LAST_WRITE, client.shutdown()).await;
    if core.statement_in_flight() {
        // The client is gone with a statement in flight: the server would
        // run it to the end (it notices a vanished client only when it
        // writes), holding a connection and whatever it locks.
        tracing::info!("cancelling the statement of a session that ended");
        gw.cancel_session(gateway_pid).await;
    }
    match outcome {
        Ok(()) => tracing::info!("session ended"),
        Err(e) => tracing::info!("session ended: {e}"),
    }
}

/// What ended a wait of the driver.
enum Event {
    /// A read from the client (0 bytes: it closed).
    Client(std::io::Result<usize>),
    /// A read from the server.
    Server(std::io::Result<usize>),
    /// An order from the registry.
    Control(Control),
    /// The record sink's answer.
    Persisted(Result<(), RecordError>),
    /// The hold handler's answer.
    Held(HoldOutcome),
    /// The core's deadline passed.
    Timeout,
}

/// Gives the core the engine in force when a reload happened since it
/// last looked (one atomic load when nothing changed).
fn refresh_engine(gw: &Gateway, core: &mut SessionCore, seen: &mut u64) {
    let generation = gw.generation();
    if generation != *seen {
        *seen = generation;
        core.set_engine(gw.engine());
    }
}

/// Gives the core the database's views when they were read again since it
/// last looked (one atomic load when nothing changed).
fn refresh_definitions(
    views: &mut tokio::sync::watch::Receiver<Arc<policy_core::Definitions>>,
    core: &mut SessionCore,
) {
    if views.has_changed().unwrap_or(false) {
        core.set_definitions(Arc::clone(&views.borrow_and_update()));
    }
}

/// How long an ending session waits to hand its last words to the client.
const LAST_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes what the core produced: the server's share first. What the
/// sockets take at once is written without a future; the rest is awaited,
/// cancel-safely (what was written is gone from the buffer, so a write
/// dropped halfway resumes where it stopped).
async fn write_out(
    core: &mut SessionCore,
    client: &mut crate::tls::Stream,
    server: &mut crate::tls::Stream,
) -> Result<(), String> {
    let out = core.server_output();
    if !out.is_empty() && !write_now(server, out).map_err(|e| format!("upstream: {e}"))? {
        write_rest(server, out).await.map_err(|e| format!("upstream: {e}"))?;
    }
    let out = core.client_output();
    if !out.is_empty() && !write_now(client, out).map_err(|e| format!("client: {e}"))? {
        write_rest(client, out).await.map_err(|e| format!("client: {e}"))?;
    }
    Ok(())
}

/// Writes all of `out`, dropping from it what is written as it goes.
async fn write_rest(stream: &mut crate::tls::Stream, out: &mut bytes::BytesMut) -> std::io::Result<()> {
    while !out.is_empty() {
        if stream.write_buf(out).await? == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
    }
    stream.flush().await
}

/// Writes what `stream` takes of `out` now, and drops it from `out`;
/// whether all of it was written.
fn write_now(stream: &crate::tls::Stream, out: &mut bytes::BytesMut) -> std::io::Result<bool> {
    use bytes::Buf;
    match stream.try_write(out) {
        Ok(n) if n >= out.len() => {
            out.clear();
            Ok(true)
        }
        Ok(n) => {
            out.advance(n);
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for the session's timer to go off. The timer is polled (which
/// gives the timer wheel the task's waker) only in the first wait after
/// it was set, `armed` then noting that it holds the waker: later waits
/// only look whether it went off, with no poll of the timer (which took
/// its state's lock and looked at the task's waker in every wait of a
/// recording session, whose results' timer is nearly always set). The
/// waker stays the task's own for the session's life.
///
/// The arming poll is made outside the task's budget: a timer polled
/// when the budget is spent answers `Pending` without taking the waker,
/// and, noted as armed, would never go off.
fn timer_elapsed<'a>(mut timer: Pin<&'a mut tokio::time::Sleep>, armed: &'a mut bool) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        if *armed {
            if timer.is_elapsed() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        } else {
            let polled = Pin::new(&mut tokio::task::unconstrained(timer.as_mut())).poll(cx);
            *armed = polled.is_pending();
            polled
        }
    })
}

/// Awaits the future in a slot (the select guard makes sure there is one).
async fn poll_slot<T>(slot: &mut Option<(u64, Boxed<T>)>) -> T {
    match slot {
        Some((_, future)) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::timer_elapsed;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    /// The wait that arms the timer may come when the task has spent its
    /// budget (a session whose peers always had data): the timer is armed
    /// all the same, or it would never go off (a hold would never time
    /// out).
    #[tokio::test]
    async fn a_timer_armed_when_the_tasks_budget_is_spent_still_goes_off() {
        let timer = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(timer);
        let mut armed = false;
        // In one poll of this task: spend its budget, then arm the timer.
        std::future::poll_fn(|cx| {
            let mut spent = 0;
            while Pin::new(&mut Box::pin(tokio::task::consume_budget())).poll(cx).is_ready() {
                spent += 1;
                assert!(spent < 100_000, "the task's budget was never spent");
            }
            let first = Pin::new(&mut Box::pin(timer_elapsed(timer.as_mut(), &mut armed))).poll(cx);
            assert!(first.is_pending());
            Poll::Ready(())
        })
        .await;
        assert!(armed);
        let went_off = tokio::time::timeout(Duration::from_secs(10), timer_elapsed(timer.as_mut(), &mut armed)).await;
        assert!(went_off.is_ok(), "the timer never went off");
    }
}
