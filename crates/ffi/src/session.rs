//! `portcullis_session`: the connection state a decision reads.

use std::ffi::c_char;
use std::sync::Arc;

use policy_core::{Prepared, Session};

use crate::boundary::{self, Out};
use crate::decision::portcullis_decision;
use crate::engine::portcullis_engine;
use crate::error::{portcullis_result, Error};

/// What a decision reads from the connection: its `search_path`, its
/// `standard_conforming_strings`, its user, and the statements prepared in
/// it with SQL `PREPARE` (an opaque handle). One per client connection.
/// Functions taking a `const portcullis_session *` may run on several
/// threads at once; the ones taking `portcullis_session *` change it and
/// need it to themselves.
pub struct portcullis_session {
    /// The state, with what `RESET search_path` returns to
    /// ([`Session::reset_search_path`]).
    pub(crate) session: Session,
}

/// A new session in the state the engine's policy starts connections in
/// (`[settings] search_path`, `standard_conforming_strings` on).
///
/// ```c
/// portcullis_session *session = NULL;
/// portcullis_session_new(engine, &session);
/// ```
///
/// # Safety
///
/// `engine` must be live; `out_session` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_new(
    engine: *const portcullis_engine,
    out_session: *mut *mut portcullis_session,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (out, engine) = unsafe { (Out::new(out_session)?, boundary::handle(engine)?) };
        let session = engine.engine.new_session();
        out.write(boundary::into_handle(portcullis_session { session }));
        Ok(())
    })
}

/// Sets the session's `search_path` (and what `RESET search_path` returns
/// to) from the setting's text as the server shows it, such as
/// `"$user", public`: quoted names keep their case, others are folded to
/// lower case. Text that does not parse gives
/// `PORTCULLIS_RESULT_INVALID_PARAMETER` and changes nothing.
///
/// ```c
/// portcullis_session_set_search_path(session, "app, public", 11);
/// ```
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `setting`
/// valid for reads of `setting_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_set_search_path(
    session: *mut portcullis_session,
    setting: *const c_char,
    setting_len: usize,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (session, text) =
            unsafe { (boundary::handle_mut(session)?, boundary::text(setting, setting_len, "the search_path")?) };
        let path = Session::search_path_from_setting(text).ok_or_else(|| {
            Error::new(portcullis_result::InvalidParameter, "the search_path setting does not parse as a list of names")
        })?;
        session.session.reset_search_path.clone_from(&path);
        session.session.search_path = path;
        Ok(())
    })
}

/// Sets `standard_conforming_strings` (on by default): whether `'\'` is a
/// whole string, as the server reads it. Statements prepared afterwards
/// are read with the new value.
///
/// # Safety
///
/// `session` must be live and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_set_standard_conforming_strings(
    session: *mut portcullis_session,
    on: bool,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        unsafe { boundary::handle_mut(session) }?.session.standard_conforming_strings = on;
        Ok(())
    })
}

/// Sets the database user the session logged in as (what `$user` in the
/// `search_path` names).
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `user` valid
/// for reads of `user_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_set_user(
    session: *mut portcullis_session,
    user: *const c_char,
    user_len: usize,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (session, user) = unsafe { (boundary::handle_mut(session)?, boundary::text(user, user_len, "the user")?) };
        session.session.user = Some(user.to_string());
        Ok(())
    })
}

/// Records a statement prepared with SQL `PREPARE name AS sql`, so that a
/// later `EXECUTE name` is judged by what `sql` does. The session's current
/// `standard_conforming_strings` is recorded with it.
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `name` and
/// `sql` valid for reads of their lengths.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_add_prepared(
    session: *mut portcullis_session,
    name: *const c_char,
    name_len: usize,
    sql: *const c_char,
    sql_len: usize,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (session, name, sql) = unsafe {
            (
                boundary::handle_mut(session)?,
                boundary::text(name, name_len, "the prepared statement's name")?,
                boundary::text(sql, sql_len, "the prepared statement's SQL")?,
            )
        };
        let prepared =
            Prepared { sql: Arc::from(sql), standard_conforming_strings: session.session.standard_conforming_strings };
        session.session.prepared.insert(name.to_string(), prepared);
        Ok(())
    })
}

/// Applies what the statements of `decision` do to the session, once they
/// ran: `SET search_path`, `RESET`, `PREPARE`, `DEALLOCATE`, `DISCARD`, and
/// `BEGIN`, `COMMIT`, `ROLLBACK` and savepoints, which the session follows:
/// a `COMMIT` or `ROLLBACK` in a later decision returns the path to what
/// the server returns it to (a `SET LOCAL` ends, a rolled-back `SET` is
/// undone). Call it after the server ran an allowed statement, with the
/// decision made for this session. Outside a transaction block, the
/// session cannot see where the server's transaction ends: a `SET LOCAL`
/// there leaves the schemas of both paths in the session.
///
/// ```c
/// portcullis_decide(engine, identity, session, "SET search_path = app", 21, &d);
/// // ... the server ran it ...
/// portcullis_session_apply(session, d);
/// ```
///
/// # Safety
///
/// `session` must be live and not in use by another thread; `decision` live.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_apply(
    session: *mut portcullis_session,
    decision: *const portcullis_decision,
) -> portcullis_result {
    boundary::call(|| {
        // SAFETY: the caller's contract.
        let (session, decision) = unsafe { (boundary::handle_mut(session)?, boundary::handle(decision)?) };
        for statement in decision.decision.statements.iter() {
            for effect in &statement.facts.session_effects {
                session.session.apply(effect);
            }
        }
        Ok(())
    })
}

/// Frees a session. NULL does nothing.
///
/// # Safety
///
/// `session` must be NULL or live, and not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn portcullis_session_free(session: *mut portcullis_session) {
    // SAFETY: forwarded contract.
    unsafe { boundary::free(session) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used, reason = "test code")]
    use super::*;
    use crate::decision::{
        portcullis_decide, portcullis_decision_free, portcullis_decision_verdict, portcullis_verdict,
    };
    use crate::engine::{portcullis_engine_free, portcullis_engine_new};
    use crate::identity::{portcullis_identity, portcullis_identity_free, portcullis_identity_new};

    const POLICY: &str = r#"
version = 1
[[rule]]
name = "public-and-transactions"
effect = "allow"
classes = ["read", "session", "transaction"]
tables = ["public.*"]
"#;

    /// Decides `sql` in `session`, applies it, and returns its verdict.
    fn run(
        engine: *const portcullis_engine,
        who: *const portcullis_identity,
        session: *mut portcullis_session,
        sql: &str,
    ) -> portcullis_verdict {
        let mut d = std::ptr::null_mut();
        // SAFETY: live handles, `sql` readable, `d` writable.
        unsafe {
            assert_eq!(
                portcullis_decide(engine, who, session, sql.as_ptr().cast(), sql.len(), &mut d),
                portcullis_result::Ok
            );
            let verdict = portcullis_decision_verdict(d);
            assert_eq!(portcullis_session_apply(session, d), portcullis_result::Ok);
            portcullis_decision_free(d);
            verdict
        }
    }

    /// A transaction opened by one decision and ended by a later one:
    /// the session returns the path to where the server does.
    #[test]
    fn a_later_commit_or_rollback_returns_the_path() {
        let (mut engine, mut who) = (std::ptr::null_mut(), std::ptr::null_mut());
        let identity = r#"{"subject": "ann"}"#;
        // SAFETY: the texts are readable, the out-pointers writable.
        unsafe {
            assert_eq!(
                portcullis_engine_new(
                    POLICY.as_ptr().cast(),
                    POLICY.len(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    &mut engine
                ),
                portcullis_result::Ok
            );
            assert_eq!(
                portcullis_identity_new(identity.as_ptr().cast(), identity.len(), &mut who),
                portcullis_result::Ok
            );
        }
        let read = "SELECT * FROM customers";
        for (opening, closing, reads_public) in [
            ("BEGIN; SET LOCAL search_path = public", "COMMIT", false),
            ("BEGIN; SET search_path = public", "ROLLBACK", false),
            ("BEGIN; SET search_path = public; SAVEPOINT s", "SET LOCAL search_path = private; ROLLBACK TO s", true),
            ("BEGIN; SAVEPOINT s; SET search_path = public", "ROLLBACK TO SAVEPOINT s", false),
            ("BEGIN; SET search_path = public", "SELECT 1; COMMIT", true),
            // Nothing before the COMMIT shows the transaction had not
            // failed (the server then rolls back): both paths count.
            ("BEGIN; SET search_path = public", "COMMIT", false),
        ] {
            let mut session = std::ptr::null_mut();
            // SAFETY: a live engine, a writable out-pointer.
            unsafe { assert_eq!(portcullis_session_new(engine, &mut session), portcullis_result::Ok) };
            let private = "private";
            // SAFETY: a live session, readable text.
            let set = unsafe { portcullis_session_set_search_path(session, private.as_ptr().cast(), private.len()) };
            assert_eq!(set, portcullis_result::Ok);
            assert_eq!(run(engine, who, session, opening), portcullis_verdict::Allow, "{opening}");
            assert_eq!(run(engine, who, session, read), portcullis_verdict::Allow, "{opening}: public.customers");
            let want = if reads_public { portcullis_verdict::Allow } else { portcullis_verdict::Deny };
            let sql = format!("{closing}; {read}");
            assert_eq!(run(engine, who, session, &sql), want, "{opening} / {sql}");
            assert_eq!(run(engine, who, session, read), want, "{opening} / {closing} / {read}");
            // SAFETY: the session is live and freed once.
            unsafe { portcullis_session_free(session) };
        }
        // SAFETY: live handles, freed once.
        unsafe {
            portcullis_identity_free(who);
            portcullis_engine_free(engine);
        }
    }
}
