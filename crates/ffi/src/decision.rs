//! `portcullis_decide` and `portcullis_decision`: the engine's answer.

use std::ffi::c_char;
use std::sync::OnceLock;

use policy_core::{Decision, Verdict};

use crate::boundary::{self, portcullis_str, Out};
use crate::engine::portcullis_engine;
use crate::error::portcullis_result;
use crate::identity::portcullis_identity;
use crate::session::portcullis_session;

/// A verdict. 0 is none of them, so zeroed memory never reads as "allow".
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum portcullis_verdict {
    /// Let the statement run.
    Allow = 1,
    /// Refuse it.
    Deny = 2,
    /// Hold it until a person approves.
    RequireApproval = 3,
}

impl From<Verdict> for portcullis_verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => portcullis_verdict::Allow,
            Verdict::RequireApproval => portcullis_verdict::RequireApproval,
            _ => portcullis_verdict::Deny,
        }
    }
}

/// The engine's answer for one SQL text (an opaque, immutable handle:
/// share it between threads freely). Read it with the
/// `portcullis_decision_*` accessors; free it with
/// `portcullis_decision_free`.
pub struct portcullis_decision {
    pub(crate) decision: Decision,
    json: OnceLock<String>,
}

/// Decides one SQL text (one or more statements) for `identity` in
/// `session`, with PostgreSQL's own grammar. Every text gets a decision:
/// what the engine cannot read is denied, so the result is
/// `PORTCULLIS_RESULT_OK` whenever the arguments are usable. `session` may
/// be NULL for a fresh session in the policy's starting state.
///
/// ```c
/// portcullis_decision *d = NULL;
/// const char *sql = "DELETE FROM orders";
/// if (portcullis_decide(engine, identity, session, sql, strlen(sql), &d) == PORTCULLIS_RESULT_OK
///     && portcullis_decision_verdict(d) == PORTCULLIS_VERDICT_ALLOW) {
///     // forward it
/// }
/// portcullis_decision_free(d);
/// ```
///
/// # Safety
///
/// `engine` and `identity` must be live, `session` NULL or live (and not
/// being changed by another thread), `sql` valid for reads of `sql_len`
/// bytes, `out_decision` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decide(
    engine: *const portcullis_engine,
    identity: *const portcullis_identity,
    session: *const portcullis_session,
    sql: *const c_char,
    sql_len: usize,
    out_decision: *mut *mut portcullis_decision,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, engine, identity, sql) = unsafe {
            (
                Out::new(out_decision)?,
                boundary::handle(engine)?,
                boundary::handle(identity)?,
                boundary::text(sql, sql_len, "the SQL")?,
            )
        };
        let engine = &engine.engine;
        let decision = if session.is_null() {
            engine.decide(&identity.identity, &engine.new_session(), sql)
        } else {
            // SAFETY: the caller's contract.
            let session = unsafe { boundary::handle(session) }?;
            engine.decide(&identity.identity, &session.session, sql)
        };
        out.write(boundary::into_handle(portcullis_decision { decision, json: OnceLock::new() }));
        Ok(())
    })
}

/// Runs `f` on a live decision, or gives `fallback`.
fn with<T>(decision: *const portcullis_decision, fallback: T, f: impl FnOnce(&portcullis_decision) -> T) -> T
where
    T: Copy,
{
    boundary::value(fallback, || {
        // SAFETY: every accessor's contract: `decision` is NULL or live.
        match unsafe { boundary::handle(decision) } {
            Ok(d) => f(d),
            Err(_) => fallback,
        }
    })
}

/// The verdict: the strictest of the text's statements. NULL gives
/// `PORTCULLIS_VERDICT_DENY`.
///
/// # Safety
///
/// `decision` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_verdict(decision: *const portcullis_decision) -> portcullis_verdict {
    with(decision, portcullis_verdict::Deny, |d| d.decision.verdict.into())
}

/// The name of the rule behind the verdict; a NULL string when no rule
/// matched (the policy's default decided).
///
/// # Safety
///
/// `decision` must be NULL or live; the string lives as long as it.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_rule(decision: *const portcullis_decision) -> portcullis_str {
    with(decision, portcullis_str::NONE, |d| {
        d.decision.rule.as_deref().map_or(portcullis_str::NONE, portcullis_str::of)
    })
}

/// Why, in words fit to show the client.
///
/// # Safety
///
/// `decision` must be NULL or live; the string lives as long as it.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_reason(decision: *const portcullis_decision) -> portcullis_str {
    with(decision, portcullis_str::NONE, |d| portcullis_str::of(&d.decision.reason))
}

/// The most rows any statement may return; 0 means no cap.
///
/// # Safety
///
/// `decision` must be NULL (gives 0) or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_max_rows(decision: *const portcullis_decision) -> u64 {
    with(decision, 0, |d| d.decision.max_rows)
}

/// How many statements the text held.
///
/// # Safety
///
/// `decision` must be NULL (gives 0) or live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_statement_count(decision: *const portcullis_decision) -> usize {
    with(decision, 0, |d| d.decision.statements.len())
}

/// The whole decision as one line of JSON (docs/policy.md §6 decision format:
/// verdict, reason, rule, max_rows, approvers, subject, actor, and every
/// statement with its class, tables, columns and functions). Built on the
/// first call.
///
/// # Safety
///
/// `decision` must be NULL or live; the string lives as long as it.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_json(decision: *const portcullis_decision) -> portcullis_str {
    with(decision, portcullis_str::NONE, |d| portcullis_str::of(d.json.get_or_init(|| d.decision.to_json())))
}

/// Frees a decision. NULL does nothing.
///
/// # Safety
///
/// `decision` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_decision_free(decision: *mut portcullis_decision) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(decision) }
}
